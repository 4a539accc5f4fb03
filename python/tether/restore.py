"""A node's saved resources, started one by one when its daemon starts (``tether.daemon``), so
that no saved state can keep a node from starting.

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
from typing import TYPE_CHECKING, Any

import anyio

from tether.control import ApiError
from tether.errors import TetherError

if TYPE_CHECKING:
    from tether.daemon import Daemon
    from tether.node import Node

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
        self._node: Node | None = None

    def attach(self, node: Node) -> None:
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


async def rejoin(d: Daemon, spec: dict[str, Any]) -> Any:
    """Join again the authority of a saved membership, with the credential held from it."""
    from tether.identity import verify_history

    authority = verify_history(bytes.fromhex(spec["authority"]))
    return await d.node.join(
        authority,
        spec["route"],
        poll_interval=float(spec.get("poll_interval", 60.0)),
        credential=held_credential(d, authority.identifier),
    )


def held_credential(d: Daemon, issuer: str) -> Any:
    """The latest stored credential of the node's identity from ``issuer``, if valid."""
    from tether.credential import Credential

    if not d.identifier:
        return None
    row = d.store.query_one(
        "SELECT data FROM credentials WHERE subject = ? AND issuer = ? "
        "ORDER BY expires_at DESC LIMIT 1",
        (d.identifier, issuer),
    )
    if row is None:
        return None
    c = Credential.decode(bytes(row[0]))
    return c if c.expires_at > time.time() else None


def _key(entry: Any, name: str) -> str:
    return str(entry.get(name, "?")) if isinstance(entry, dict) else str(entry)


async def restore(d: Daemon) -> None:
    """Start everything ``d.config`` saves: policies first (nothing is served before the
    policies that guard it), then listeners, channel listeners, relays, the authority,
    memberships, outlets, inlets and services. What cannot start waits (see the module)."""
    from tether.daemon import SERVICE_KINDS, _identity_and_trust, _trust

    cfg, node, r = d.config, d.node, d.restorer

    for rule in cfg.policies:

        async def policy(rule: Any = rule) -> None:
            try:
                node.add_policy(
                    rule["expression"],
                    resource=rule.get("resource"),
                    resource_type=rule.get("resource_type"),
                    policy_id=rule["id"],
                )
            except Exception:
                # Fail closed: what the policy guarded admits nobody until it is fixed.
                if rule.get("id") and (rule.get("resource") or rule.get("resource_type")):
                    node.add_policy(
                        "false",
                        resource=rule.get("resource"),
                        resource_type=rule.get("resource_type"),
                        policy_id=str(rule["id"]),
                    )
                raise

        await r.start("policies", _key(rule, "id"), rule, policy, retry=False)

    for spec in cfg.tcp_listeners:

        async def listen(spec: str = spec) -> None:
            host, _, port = spec.rpartition(":")
            lst = await node.listen_tcp(host.strip("[]") or "127.0.0.1", int(port))
            d.listener_specs[lst.id] = spec

        await r.start("tcp_listeners", _key(spec, ""), spec, listen)

    for lspec in cfg.channel_listeners:
        if lspec.get("address") == "api" and node.has_worker("api"):
            continue

        async def channel_listener(lspec: Any = lspec) -> None:
            identity, trust = _identity_and_trust(d, lspec)
            await node.create_secure_channel_listener(
                lspec["address"], identity=identity, trust=trust
            )

        await r.start("channel_listeners", _key(lspec, "address"), lspec, channel_listener)

    for relay in cfg.relays:
        # A relay node that is not up is retried by the relay itself (it starts "reconnecting");
        # a relay that refuses the claim waits here.
        async def claim(relay: Any = relay) -> None:
            await node.create_relay(relay["name"], relay["at"], trust=_trust(relay))

        await r.start("relays", _key(relay, "name"), relay, claim)

    if cfg.authority is not None:
        auth = cfg.authority

        async def authority() -> None:
            await d._start_authority(auth)

        await r.start("authority", str(auth.get("name", "authority")), auth, authority)

    for m in cfg.memberships:
        # Back to each authority this node enrolled with: its stored credential now, a
        # fresh one (and revocations) as soon as the authority answers.
        async def join(m: Any = m) -> None:
            await rejoin(d, m)

        await r.start("memberships", _key(m, "identifier"), m, join)

    for o in cfg.tcp_outlets:

        async def outlet(o: Any = o) -> None:
            await node.create_tcp_outlet(o["to"], name=o["name"], allow=o.get("allow"))

        await r.start("tcp_outlets", _key(o, "name"), o, outlet)

    for i in cfg.tcp_inlets:
        # An inlet listens at once; its route is reached per connection, so a path that is
        # not up yet only fails the connections made before it is. One whose route names a
        # node that is missing or stopped waits until it is there.
        async def inlet(i: Any = i) -> None:
            await node.create_tcp_inlet(
                i["from"], i["to"], name=i["name"], allow=i.get("allow"), trust=_trust(i)
            )

        await r.start("tcp_inlets", _key(i, "name"), i, inlet)

    for svc in cfg.services:

        async def service(svc: Any = svc) -> None:
            kind, address = svc["kind"], svc["address"]
            if kind not in SERVICE_KINDS:
                raise TetherError(f"unknown service kind {kind!r}; known: {sorted(SERVICE_KINDS)}")
            if not node.has_worker(address):
                await node.start_worker(address, SERVICE_KINDS[kind], kind=kind)

        await r.start("services", _key(svc, "address"), svc, service)
