"""A node's saved resources, started one by one when its daemon starts
(:meth:`tether.daemon.daemon.Daemon.restore`), so that no saved state can keep a node from
starting: what cannot start waits here (:class:`Restorer`).

Each entry of the saved configuration starts on its own. One that cannot start now — the node its
route names is deleted or stopped, its port is taken, its identity is gone, its authority's
database does not answer — *waits*: ``list`` and ``show`` (and ``tether node show``) report it in
the state ``error`` with the reason, it is tried again with backoff (1 s doubling to 30 s, as a
lost relay connection is), and it can be deleted like any running one (its saved entry goes). The
node starts with whatever could start.

A saved policy that no longer parses waits too, and in the meantime the node holds ``false`` in
its place: what the policy guarded stays closed (fail closed), never open.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from tether.core.errors import TetherError
from tether.daemon.control import ApiError
from tether.node.node import BaseNode

log = logging.getLogger("tether.daemon")

BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
FIRST_TRY = 10.0
"""Seconds a resource may take to start while the node starts; a slower one waits and is tried
again in the background (the node's control API must come up)."""

#: What one entry of each configuration section is called in messages.
KINDS = {
    "identity": "identity",
    "tcp_listeners": "listener",
    "policies": "policy",
    "channel_listeners": "secure-channel-listener",
    "relays": "relay",
    "authority": "authority",
    "memberships": "membership",
    "tcp_outlets": "tcp-outlet",
    "tcp_inlets": "tcp-inlet",
    "services": "service",
}

_STATS = {"sessions": 0, "total": 0, "refused": 0, "failed": 0, "bytes_in": 0, "bytes_out": 0}


def _shape(section: str, key: str, spec: Any) -> dict[str, object]:
    """What a waiting resource shows: the fields its running self's ``info()`` has."""
    s: dict[str, Any] = spec if isinstance(spec, dict) else {}
    if section == "tcp_inlets":
        return {"kind": "tcp-inlet", "name": key, "from": s.get("from"), "to": s.get("to")}
    if section == "tcp_outlets":
        return {"kind": "tcp-outlet", "name": key, "to": s.get("to"), "allow": s.get("allow")}
    if section == "relays":
        route = f"{s.get('at', '')}/service/forward_to_{key}"
        return {"name": key, "claims": 0, "forward_route": route}
    if section == "channel_listeners":
        return {"address": key, "identifier": None, "accepted": 0, "refused": 0, "dropped": 0}
    if section == "policies":
        keep = ("resource", "resource_type", "expression")
        return {"id": key, **{k: s.get(k) for k in keep}}
    if section == "tcp_listeners":
        return {"id": key, "address": key}
    if section == "services":
        return {"address": key, "kind": s.get("kind"), "delivered": 0}
    if section == "memberships":
        return {
            "authority": key,
            "route": s.get("route"),
            "attributes": {},
            "credential": None,
            "expires_at": None,
        }
    if section == "authority":
        return {"name": s.get("name", "authority"), "identifier": None}
    return {"name": key}


def reason(e: BaseException) -> str:
    """One line saying why a resource did not start."""
    if isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        return reason(e.exceptions[0])
    if isinstance(e, TetherError):
        return str(e)
    if isinstance(e, TimeoutError):
        return str(e) or "it timed out"
    if isinstance(e, OSError):
        return e.strerror or str(e)
    if isinstance(e, KeyError):
        return f"its saved entry has no {e}"
    return f"{type(e).__name__}: {e}"


@dataclass(eq=False)
class Waiting:
    """A saved resource that could not start: why, since when, and its next try."""

    section: str
    key: str
    spec: Any
    start: Callable[[], Awaitable[Any]] | None
    """How to start it; None: nothing to retry (the reason says what to do)."""
    error: str = ""
    since: float = field(default_factory=time.time)
    tries: int = 1
    delay: float = BACKOFF_MIN
    starting: bool = False
    dropped: bool = False
    settled: anyio.Event = field(default_factory=anyio.Event)
    _sleep: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def info(self) -> dict[str, object]:
        """The resource as ``list``/``show`` report it, in the state ``error``."""
        stats = _STATS if self.section in ("tcp_inlets", "tcp_outlets") else {}
        return {
            **stats,
            **_shape(self.section, self.key, self.spec),
            "state": "error",
            "last_error": self.error,
            "waiting_since": int(self.since),
            "tries": self.tries,
            "retrying": self.start is not None,
        }

    def summary(self) -> dict[str, object]:
        """One line of ``tether node show``'s list of waiting resources."""
        return {
            "resource": KINDS.get(self.section, self.section),
            "name": self.key,
            "error": self.error,
            "since": int(self.since),
            "retrying": self.start is not None,
        }


class Restorer:
    """The node's waiting resources, by (section, key), and their retries."""

    def __init__(self, node_name: str, on_change: Callable[[], None]) -> None:
        self.node_name = node_name
        self.on_change = on_change
        self.waiting: dict[tuple[str, str], Waiting] = {}
        self._node: BaseNode | None = None

    def attach(self, node: BaseNode) -> None:
        """Retries run in ``node``'s task group (they end with it)."""
        self._node = node

    async def start(
        self,
        section: str,
        key: str,
        spec: Any,
        start: Callable[[], Awaitable[Any]],
        *,
        retry: bool = True,
    ) -> bool:
        """Start one saved resource now; if it cannot start, it waits (and is retried unless
        ``retry`` is false). True if it started."""
        try:
            with anyio.move_on_after(FIRST_TRY) as budget:
                await start()
            if budget.cancelled_caught:
                raise TetherError(f"it did not start within {FIRST_TRY:g} s")
        except Exception as e:  # any failure: this resource waits, the node starts
            self._log_failure(section, key, e, first=True)
            self.fail(section, key, spec, reason(e), start if retry else None)
            return False
        return True

    def fail(
        self,
        section: str,
        key: str,
        spec: Any,
        error: str,
        start: Callable[[], Awaitable[Any]] | None = None,
    ) -> Waiting:
        """Record a resource that waits (retried with ``start``, if given)."""
        w = Waiting(section, key, spec, start, error)
        self.waiting[(section, key)] = w
        if start is not None and self._node is not None:
            self._node.task_group.start_soon(self._retry, w)
        self.on_change()
        return w

    def get(self, section: str, key: str) -> Waiting | None:
        return self.waiting.get((section, key))

    def of(self, section: str) -> list[Waiting]:
        return [w for (s, _), w in self.waiting.items() if s == section]

    def infos(self, section: str) -> list[dict[str, object]]:
        """What ``list`` shows of the waiting resources of ``section``."""
        return [w.info() for w in self.of(section)]

    def check_free(self, section: str, key: str, what: str) -> None:
        """409 if a saved ``what`` named ``key`` waits to start (a new one would shadow it)."""
        w = self.get(section, key)
        if w is not None:
            raise ApiError(
                409,
                f"this node already has a {what} {key!r}, saved but not running ({w.error}); "
                "delete it first",
            )

    def summary(self) -> list[dict[str, object]]:
        return [w.summary() for w in self.waiting.values()]

    async def take(self, section: str, key: str) -> Waiting | None:
        """Stop waiting for a resource (it is being deleted): the entry, or None when it is not
        waiting (it runs, or never existed). A try under way ends first; if it started the
        resource, that one runs and this returns None."""
        w = self.waiting.get((section, key))
        while w is not None and w.starting:
            await w.settled.wait()
            w = self.waiting.get((section, key))
        if w is None:
            return None
        w.dropped = True
        w._sleep.cancel()
        del self.waiting[(section, key)]
        self.on_change()
        return w

    async def _retry(self, w: Waiting) -> None:
        assert w.start is not None
        while not w.dropped:
            w._sleep = anyio.CancelScope()
            with w._sleep:
                await anyio.sleep(w.delay * random.uniform(0.75, 1.25))  # noqa: S311 - jitter
            if w.dropped:
                return
            w.starting, w.settled = True, anyio.Event()
            try:
                await w.start()
            except Exception as e:  # still not: wait longer
                w.tries += 1
                w.delay = min(w.delay * 2, BACKOFF_MAX)
                if reason(e) != w.error:
                    self._log_failure(w.section, w.key, e, first=False)
                    w.error = reason(e)
                continue
            finally:
                w.starting = False
                w.settled.set()
            if self.waiting.get((w.section, w.key)) is w:
                del self.waiting[(w.section, w.key)]
            log.info(
                "node %s: %s %s started (after %d tries)",
                self.node_name,
                KINDS.get(w.section, w.section),
                w.key,
                w.tries + 1,
            )
            self.on_change()
            return

    def _log_failure(self, section: str, key: str, e: BaseException, *, first: bool) -> None:
        what = KINDS.get(section, section)
        if not isinstance(e, (TetherError, OSError, TimeoutError, KeyError)):
            # Not a condition of the world: a bug or a damaged entry; its traceback helps.
            log.error("node %s: %s %s cannot start", self.node_name, what, key, exc_info=e)
        log.warning(
            "node %s: %s %s %s: %s; it waits%s",
            self.node_name,
            what,
            key,
            "cannot start" if first else "still cannot start",
            reason(e),
            ", retrying" if first else "",
        )
