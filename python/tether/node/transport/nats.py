"""The NATS transport: a node that connects *out* to a NATS cluster and is reachable there by
its identifier and by the names it may claim, with no listener of its own (``docs/routing.md``,
"The NATS fabric"). The cluster carries routed messages, ciphertext once a secure channel runs
over them; identities, channels and policies stay tether's.

A message from node ``S`` to ``D`` (an identifier or a claimed name) is one NATS message on the
subject ``tether.D.S``. The cluster's authorization (``tests/nats_cluster.py`` writes one) gives
each node's NATS user the right to publish only to ``tether.*.SELF`` and to subscribe only to
``tether.SELF.*`` and ``tether.NAME.*`` for the names its operator grants: so the subject names
the true sender, nobody reads what is addressed to another, and a name is claimed only where
the operator allowed it (a refused claim is the server's permissions violation, reported in
:attr:`NatsTransport.claims`).

The protocol is the core's codec (``rust/src/nats.rs``). The connection is kept: on a lost
server the transport connects to the next one of the list (and re-subscribes), and what
travels end to end over it (secure channels) goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
from anyio.abc import SocketStream, TaskStatus

from tether._core import (
    NATS_PING,
    NATS_PONG,
    NatsDecoder,
    nats_connect,
    nats_publish,
    nats_subscribe,
)
from tether.core.errors import FrameError, InvalidArgumentError, RouteError, TetherError
from tether.core.message import NATS, Address, Origin, RoutedMessage
from tether.node.reach import Reach
from tether.node.routing import FABRIC_NAME

log = logging.getLogger("tether.nats")

PREFIX = "tether"
MAX_PAYLOAD = 64 << 20
"""The largest ``max_payload`` a server may announce (the NATS server's own hard limit): what
the decoder may be made to allocate for one message, whatever a server says."""


class NatsError(TetherError):
    """The NATS fabric could not be used: the message says why and what to do."""


@dataclass
class NatsOptions:
    servers: Sequence[str]
    """``nats://HOST:PORT`` URLs of the cluster's servers (tried in turn)."""
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    names: Sequence[str] = ()
    """Names to claim on the fabric (as the cluster's authorization allows)."""
    connect_timeout: float = 5.0
    ping_interval: float = 5.0
    """A PING this often; two unanswered in a row: the server is gone, connect to another."""
    reconnect_wait: float = 0.25
    max_frame_len: int = 256 * 1024


class NatsHost(Protocol):
    """What the transport asks of its node."""

    @property
    def name(self) -> str: ...

    @property
    def reach(self) -> Reach: ...

    def count(self, what: str, n: int = 1) -> None: ...

    async def route(
        self, msg: RoutedMessage, origin: Origin = ..., *, block: bool = True
    ) -> None: ...

    async def report(self, msg: RoutedMessage, reason: str) -> None: ...

    def path_restored(self) -> None: ...


def check_token(name: str, what: str) -> str:
    if not FABRIC_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"{what} {name!r} is not a fabric name: 1 to 64 letters, digits, '-' or '_'"
        )
    return name


def server_address(url: str) -> tuple[str, int]:
    """``nats://HOST:PORT`` → ``(HOST, PORT)``, or InvalidArgumentError saying what to write."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "nats" or not parts.hostname or not port:
        raise InvalidArgumentError(f"{url!r} is not a NATS server URL; write nats://HOST:PORT")
    return parts.hostname, port


def _max_payload(info: str) -> int:
    """The ``max_payload`` of a server's INFO (at most :data:`MAX_PAYLOAD`)."""
    try:
        value = json.loads(info).get("max_payload", 1 << 20)
        if not isinstance(value, int) or value < 1:
            raise ValueError(value)
    except (ValueError, AttributeError) as e:
        raise NatsError(f"the server's INFO is not what a NATS server sends ({e})") from None
    return min(value, MAX_PAYLOAD)


class NatsTransport:
    """See the module documentation."""

    def __init__(self, node: NatsHost, options: NatsOptions, me: str) -> None:
        if not options.servers:
            raise InvalidArgumentError("a NATS fabric needs at least one server URL")
        self.node = node
        self.options = options
        self.me = check_token(me, "this node's fabric name")
        self.servers = [server_address(u) for u in options.servers]
        for n in options.names:
            check_token(n, "the name")
        self.claims: dict[str, str] = dict.fromkeys(options.names, "pending")
        """Name → ``claimed``, ``pending``, or why the cluster refused it."""
        self.server: str | None = None
        """The server in use (``host:port``), None while disconnected."""
        self.connections = 0
        self.last_error = ""
        self._stream: SocketStream | None = None
        self._send_lock = anyio.Lock()
        self._max_payload = 1 << 20
        self._pings_out = 0
        self._connected = anyio.Event()

    def info(self) -> dict[str, Any]:
        return {
            "name": self.me,
            "server": self.server,
            "claims": dict(self.claims),
            "connections": self.connections,
            "last_error": self.last_error,
        }

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # --- the connection -------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection to one of the servers, forever (cancel to stop)."""
        task_status.started()
        turn = 0
        failures = 0  # in a row: after a whole round of them, wait longer
        while True:
            host, port = self.servers[turn % len(self.servers)]
            turn += 1
            connections = self.connections
            try:
                await self._session(host, port)
            except (
                OSError,
                TimeoutError,
                FrameError,
                NatsError,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
            ) as e:
                self.last_error = f"{host}:{port}: {e}"
                log.warning("%s: NATS server %s:%d: %s", self.node.name, host, port, e)
            finally:
                self._stream, self.server = None, None
                self._connected = anyio.Event()
            failures = 0 if self.connections > connections else failures + 1
            round_failed = failures and failures % len(self.servers) == 0
            await anyio.sleep(1.0 if round_failed else self.options.reconnect_wait)

    async def _session(self, host: str, port: int) -> None:
        with anyio.fail_after(self.options.connect_timeout):
            stream = await anyio.connect_tcp(host, port)
        async with stream:
            decoder = NatsDecoder()
            pending: list[tuple[Any, ...]] = []

            async def until(kind: str) -> list[tuple[Any, ...]]:
                got: list[tuple[Any, ...]] = []
                while True:
                    while pending:
                        op = pending.pop(0)
                        got.append(op)
                        if op[0] == kind:
                            return got
                    try:
                        data = await stream.receive()
                    except anyio.EndOfStream:
                        return [*got, ("CLOSED",)]
                    pending.extend(decoder.feed(data))

            with anyio.fail_after(self.options.connect_timeout):
                info = (await until("INFO"))[-1]
                if info[0] != "INFO":
                    raise NatsError("the server closed the connection before its INFO")
                self._max_payload = _max_payload(info[1])
                decoder.set_max_payload(self._max_payload)
                hello: dict[str, Any] = {
                    "verbose": False,
                    "pedantic": False,
                    "protocol": 1,
                    "name": f"tether {self.node.name}",
                    "lang": "tether",
                    "version": "1",
                }
                if self.options.user is not None:
                    hello |= {"user": self.options.user, "pass": self.options.password or ""}
                subs = nats_subscribe(f"{PREFIX}.{self.me}.*", 1)
                for i, name in enumerate(self.claims, start=2):
                    subs += nats_subscribe(f"{PREFIX}.{name}.*", i)
                await stream.send(nats_connect(json.dumps(hello)) + subs + NATS_PING)
                said = await until("PONG")
            errors = [str(op[1]) for op in said if op[0] == "-ERR"]
            if any("Authorization" in e for e in errors):
                raise NatsError(
                    "the server refused this node's NATS user (Authorization Violation): check "
                    "the user and password the cluster's operator gave it"
                )
            if any(f'"{PREFIX}.{self.me}.*"' in e for e in errors):
                raise NatsError(
                    f"the cluster does not let this node's NATS user receive its own messages "
                    f"({PREFIX}.{self.me}.*): its user is not this node's"
                )
            for name in self.claims:
                refused = [e for e in errors if f'"{PREFIX}.{name}.*"' in e]
                self.claims[name] = (
                    f"refused by the cluster ({refused[0]}): its authorization does not grant "
                    "this node the name (`tether fabric users` grants a name to the members "
                    "the policy allows)"
                    if refused
                    else "claimed"
                )
                if refused:
                    log.warning(
                        "%s: NATS claim of %r refused: %s", self.node.name, name, refused[0]
                    )
            self._stream, self.server = stream, f"{host}:{port}"
            self.connections += 1
            self._pings_out = 0
            self._connected.set()
            log.info("%s: connected to NATS server %s:%d", self.node.name, host, port)
            if self.connections > 1:
                self.node.path_restored()  # what waited for the fabric goes on now
            why = "the server closed the connection"
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pinger, stream, tg.cancel_scope)
                try:
                    for op in pending:
                        await self._handle(stream, op)
                    pending.clear()
                    async for data in stream:
                        for op in decoder.feed(data):
                            await self._handle(stream, op)
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
                    why = f"the connection failed ({e or type(e).__name__})"
                except FrameError as e:
                    why = str(e)
                tg.cancel_scope.cancel()
            raise NatsError(why)

    async def _pinger(self, stream: SocketStream, scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(self.options.ping_interval)
            if self._pings_out >= 2:
                log.warning("%s: the NATS server answers no PING: reconnecting", self.node.name)
                scope.cancel()
                await stream.aclose()
                return
            self._pings_out += 1
            try:
                await self._send(stream, NATS_PING)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                scope.cancel()
                return

    async def _send(self, stream: SocketStream, data: bytes) -> None:
        async with self._send_lock:
            await stream.send(data)

    async def _handle(self, stream: SocketStream, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "MSG":
            await self._deliver(op[1], op[4])
        elif kind == "PING":
            await self._send(stream, NATS_PONG)
        elif kind == "PONG":
            self._pings_out = 0
        elif kind == "-ERR":
            log.warning("%s: the NATS server said: %s", self.node.name, op[1])
        # A later INFO only tells of the cluster's other servers: the configured list is used.

    async def _deliver(self, subject: str, payload: bytes) -> None:
        """A message from the fabric: ``tether.TO.FROM`` (the cluster checked FROM)."""
        parts = subject.split(".")
        if len(parts) != 3 or parts[0] != PREFIX or not FABRIC_NAME.fullmatch(parts[2]):
            self.node.count("dropped: a NATS message on a foreign subject")
            return
        to, sender = parts[1], parts[2]
        if to != self.me and self.claims.get(to) != "claimed":
            self.node.count("dropped: a NATS message for another name")
            return
        if len(payload) > self.options.max_frame_len:
            self.node.count("dropped: an oversized NATS message")
            return
        try:
            msg = RoutedMessage.decode(payload)
        except RouteError as e:
            self.node.count("dropped: a malformed NATS message")
            log.info("%s: a malformed message from %s over NATS: %s", self.node.name, sender, e)
            return
        back = Address(NATS, sender.encode())
        await self.node.route(
            RoutedMessage(msg.onward, (back, *msg.return_route), msg.payload),
            Origin.link(f"nats:{sender}"),
        )

    # --- sending ------------------------------------------------------------------------

    async def forward(
        self, head: Address, msg: RoutedMessage, origin: Origin, *, block: bool = True
    ) -> None:
        """Send ``msg`` (addressed to the fabric name ``head``) over the cluster."""
        assert head.transport == NATS
        dest = head.value.decode("ascii", errors="replace")
        if not origin.is_local and not self.node.reach.may_reach(f"nats:{dest}", origin):
            self.node.reach.refuse(origin, f"nats:{dest}")
            await self.node.report(
                msg, f"node {self.node.name} sends on the NATS fabric only for its own callers"
            )
            return
        if not FABRIC_NAME.fullmatch(dest):
            await self.node.report(msg, f"{dest!r} is not a fabric name")
            return
        stream = self._stream
        if stream is None:
            await self.node.report(
                msg,
                f"node {self.node.name} is not connected to its NATS fabric now "
                f"({self.last_error or 'connecting'})",
            )
            return
        data = RoutedMessage(msg.onward[1:], msg.return_route, msg.payload).encode()
        try:
            frame = nats_publish(f"{PREFIX}.{dest}.{self.me}", data, self._max_payload)
        except InvalidArgumentError as e:
            await self.node.report(msg, f"at node {self.node.name}: {e}")
            return
        try:
            await self._send(stream, frame)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
            await self.node.report(msg, f"at node {self.node.name}: the NATS server is gone ({e})")
