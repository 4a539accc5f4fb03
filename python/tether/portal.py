"""Portals: carry any TCP protocol through a secure channel.

A **TCP outlet** sits on the node near the target (a database, a web server): it is a service
at an address (``outlet`` by default) that, for each portal session opened through a secure
channel, connects to ``HOST:PORT`` and pumps bytes both ways. A **TCP inlet** sits on the node
near the client: it listens on a local TCP port and turns each accepted connection into a portal
session to the outlet at the end of its route (``/node/relay/service/forward_to_db/secure/api/
service/outlet``: through the relay, inside a secure channel to the database side's ``api``
listener, to its ``outlet``).

The session protocol (the payload of each message, inside the secure channel) is one type byte
and a body:

========  ======================================================================================
OPEN      the inlet opens a session (the outlet connects to its target)
DATA      bytes of the stream, at most :data:`MAX_DATA` per message
EOF       the sender's side shut its write half (half-close): the receiver shuts its own write
          side once everything before it is written
CLOSE     the session is over (reset, refusal, error); the body is the reason
CREDIT    flow control: the receiver wrote this many credit units to its socket
========  ======================================================================================

Sessions are keyed by their return route, which starts with the secure channel the message
came through: a peer can only ever address the sessions of its own channel. All inlet→outlet
messages go to the outlet's address (so DATA can follow OPEN at once, with no round trip before
the first byte); outlet→inlet messages go to the inlet session's own address.

**Flow control**: each direction has a window of :attr:`PortalOptions.window` credit units; a DATA
message costs ``max(len, MIN_CHARGE)`` units. A sender with no credit stops reading its socket
(so a slow reader slows the writer through TCP itself), and a receiver refuses a peer that
overruns its window: memory per session is bounded by the window, whatever the peer does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.abc import SocketAttribute, SocketStream

from tether import engine as dp
from tether import limits, policies, routing
from tether._core import ENGINE_MAX_DATA
from tether.errors import InvalidArgumentError, TetherError
from tether.message import Address, RoutedMessage
from tether.trust import trust_policy
from tether.worker import KIND_DATA, KIND_ERROR

if TYPE_CHECKING:
    from tether.channel import SecureChannel
    from tether.node import Node
    from tether.policy import Policy

log = logging.getLogger("tether.portal")

T_OPEN = 1
T_DATA = 2
T_EOF = 3
T_CLOSE = 4
T_CREDIT = 5
_NAMES = {T_OPEN: "OPEN", T_DATA: "DATA", T_EOF: "EOF", T_CLOSE: "CLOSE", T_CREDIT: "CREDIT"}

MAX_DATA: int = ENGINE_MAX_DATA  # 240 KiB, the data plane's own limit (one definition)
"""The largest DATA body, and the size of one read from a portal's socket: small enough that a
DATA message is one channel fragment on the wire."""
_HEAD = {t: bytes((KIND_DATA, t)) for t in _NAMES}
_DATA = bytes((KIND_DATA,))
_ERROR = bytes((KIND_ERROR,))
MIN_CHARGE = 512
"""A DATA message costs at least this many credit units (small messages cost memory too)."""
MAX_REASON = 1024
ENDED_MEMORY = 4096
"""How many ended sessions an outlet remembers, so that what their inlets still send is dropped
quietly instead of answered with a second CLOSE."""


class PortalError(TetherError):
    """A portal session failed: refused, the target unreachable, or the path lost."""


@dataclass
class PortalOptions:
    window: int = 4 << 20
    """Credit units (bytes) one side may send before the other has written them out."""
    connect_timeout: float = 10.0
    """The outlet's limit for connecting to its target."""
    open_timeout: float = 15.0
    """The inlet's limit for reaching the outlet (route and secure channel) per connection."""
    max_sessions: int = 10_000
    recheck_interval: float = 1.0
    """How often open sessions are checked against the policy again (credentials expire)."""


def _why(e: BaseException) -> str:
    cause = e.__cause__ if isinstance(e.__cause__, OSError) else e
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return type(e).__name__


def _charge(n: int) -> int:
    return max(n, MIN_CHARGE)


async def _turn_away(stream: SocketStream) -> None:
    """Close a client connection with a reset."""
    _reset(stream)
    await stream.aclose()


def _reset(stream: SocketStream) -> None:
    """Close with RST: the other end sees a reset, not an orderly end of the stream."""
    with contextlib.suppress(Exception):
        sock = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _SessionBase:
    """What a portal session is to its owner, whichever data plane carries its bytes."""

    data_plane = ""

    def __init__(
        self,
        node: Node,
        address: str,
        channel: SecureChannel,
        peer_route: tuple[Address, ...],
        options: PortalOptions,
        owner: Any,
    ) -> None:
        self.node = node
        self.address = address
        self.channel = channel
        self.peer_route = peer_route
        self.options = options
        self.owner = owner
        self.key: Any = None  # the owner's key for it (the return route, or the address)
        self.started = time.monotonic()
        self.close_reason = ""

    def _counts(self) -> tuple[int, int]:
        """Bytes (sent, received)."""
        raise NotImplementedError

    def info(self) -> dict[str, object]:
        sent, received = self._counts()
        return {
            "address": self.address,
            "peer": self.channel.peer.identifier,
            "sent": sent,
            "received": received,
            "age": round(time.monotonic() - self.started, 3),
            "data_plane": self.data_plane,
        }


class Session(_SessionBase):
    """One TCP connection carried through a portal: pumps its socket to the peer session and the
    peer's bytes to its socket, with half-close, flow control and a bounded close."""

    data_plane = "python"

    def __init__(
        self,
        node: Node,
        address: str,
        channel: SecureChannel,
        peer_route: tuple[Address, ...],
        options: PortalOptions,
        owner: Any,
    ) -> None:
        super().__init__(node, address, channel, peer_route, options, owner)
        self.stream: SocketStream | None = None
        self.sent_bytes = 0
        self.received_bytes = 0
        self._return = (Address.local(address),)
        self._queue: deque[tuple[bytes | memoryview, int]] = deque()  # (bytes, credit units)
        self._writer_idle = False  # the writer waits with nothing to do
        self._grant = max(options.window // 4, 1)  # credit is returned in steps of this
        self._raw: Any = None  # the socket, for direct non-blocking writes (trio only)
        self._queued = 0  # credit units in _queue
        self._credit = options.window  # what we may still send
        self._consumed = 0  # written to our socket, not yet credited back
        self._peer_eof = False
        self._wake_writer = anyio.Event()
        self._wake_reader = anyio.Event()
        self._scope = anyio.CancelScope()
        self._closed = False
        self._aborted = False

    # --- from the peer (synchronous: called inline by the node's router) --------------------

    def deliver(self, msg: RoutedMessage) -> None:
        """One message from the peer session (payload: kind byte, type byte, body)."""
        if self._closed:
            return
        payload = msg.payload
        if payload[:1] == _ERROR:
            reason = payload[1 : 1 + MAX_REASON].decode(errors="replace")
            self.abort(f"the path to the peer failed: {reason}")
            return
        if len(payload) < 2:
            self.abort("protocol error: empty portal message", notify=True)
            return
        t, body = payload[1], memoryview(payload)[2:]  # no copy of the data
        if t == T_DATA:
            if self._peer_eof:
                self.abort("protocol error: DATA after EOF", notify=True)
                return
            if len(body) > MAX_DATA:
                self.abort(f"protocol error: DATA of {len(body)} bytes (at most {MAX_DATA})", True)
                return
            charge = _charge(len(body))
            self.received_bytes += len(body)
            if self._writer_idle and not self._queue and self._raw is not None:
                # The writer waits with nothing queued: write now, in this task (the socket is
                # non-blocking); only what the kernel does not take is queued for the writer.
                try:
                    n = self._raw.send(body)
                except BlockingIOError:
                    n = 0
                except OSError as e:
                    self.abort(f"the local connection failed: {_why(e)}", notify=True)
                    return
                if n == len(body):
                    self._consumed += charge
                    if self._consumed >= self._grant:
                        self._wake_writer.set()  # the writer returns the credit
                    return
                body = body[n:]
            self._queued += charge
            if self._queued > self.options.window + _charge(MAX_DATA):
                self.abort("protocol error: the peer overran its flow-control window", True)
                return
            self._queue.append((body, charge))
            self._wake_writer.set()
        elif t == T_CREDIT:
            if len(body) != 4:
                self.abort("protocol error: malformed CREDIT", notify=True)
                return
            self._credit += int.from_bytes(body, "big")
            self._wake_reader.set()
        elif t == T_EOF:
            self._peer_eof = True
            self._wake_writer.set()
        elif t == T_CLOSE:
            self.abort(bytes(body[:MAX_REASON]).decode("utf-8", "replace") or "closed by the peer")
        elif t != T_OPEN:  # a repeated OPEN is harmless
            self.abort(f"protocol error: unknown portal message type {t}", notify=True)

    # --- to the peer --------------------------------------------------------------------------

    async def _send(self, t: int, body: bytes = b"") -> None:
        # Every message of a session takes the same ordered path (the channel's bulk path, in
        # this task): an EOF or CLOSE can never overtake the DATA before it.
        await self.channel.send_parts(self.peer_route[1:], self._return, _HEAD[t], body)

    def abort(self, reason: str, notify: bool = False) -> None:
        """End the session now: reset the socket, and tell the peer if ``notify``."""
        if self._closed:
            return
        self._closed = True
        self._aborted = True
        self.close_reason = reason
        log.info("portal session %s closed: %s", self.address, reason)
        if notify:
            self.node.task_group.start_soon(self._notify_close, reason)
        if self.stream is not None:
            _reset(self.stream)
        self._scope.cancel()

    async def _notify_close(self, reason: str) -> None:
        with contextlib.suppress(TetherError):
            await self._send(T_CLOSE, reason.encode()[:MAX_REASON])

    # --- the pumps ----------------------------------------------------------------------------

    async def run(self, stream: SocketStream) -> None:
        """Pump until both directions ended (or the session was aborted); always closes the
        socket and leaves the owner's table."""
        self.stream = stream
        raw = stream.extra(SocketAttribute.raw_socket, None)
        if type(raw) is socket.socket and not raw.getblocking():
            self._raw = raw  # trio's: no buffering of its own that a direct write could overtake
        if self._aborted:
            _reset(stream)
        try:
            # A closed channel resets the session (a callback, not a task per session).
            self.channel.on_close(self._channel_closed)
            if self.channel.closed.is_set():
                self._channel_closed()
            with self._scope:
                async with anyio.create_task_group() as tg:
                    reader_done = anyio.Event()

                    async def reader() -> None:
                        await self._reader()
                        reader_done.set()

                    tg.start_soon(reader)
                    await self._writer()
                    await reader_done.wait()
                    tg.cancel_scope.cancel()
                self._closed = True
        finally:
            self.channel.remove_on_close(self._channel_closed)
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            self.owner.forget(self)

    def _channel_closed(self) -> None:
        self.abort(f"secure channel {self.channel.address} closed")

    async def _reader(self) -> None:
        """Our socket → the peer, while we have credit."""
        assert self.stream is not None
        while True:
            while self._credit <= 0:
                self._wake_reader = anyio.Event()
                await self._wake_reader.wait()
            try:
                data = await self.stream.receive(MAX_DATA)
            except anyio.EndOfStream:
                data = b""
            except (anyio.BrokenResourceError, OSError) as e:
                # A reset is not an orderly end: the peer's socket is reset too.
                self.abort(f"the local connection failed: {_why(e)}", notify=True)
                return
            except anyio.ClosedResourceError:
                return
            if not data:
                await self._send_or_abort(T_EOF)
                return
            self._credit -= _charge(len(data))
            self.sent_bytes += len(data)
            if not await self._send_or_abort(T_DATA, data):
                return

    async def _send_or_abort(self, t: int, body: bytes = b"") -> bool:
        try:
            await self._send(t, body)
            return True
        except TetherError as e:
            self.abort(f"could not send to the peer: {e}")
            return False

    async def _writer(self) -> None:
        """The peer's bytes → our socket (what ``deliver`` could not write at once); credit back
        to the peer; then our socket's write half is shut on EOF."""
        assert self.stream is not None
        while True:
            if self._consumed >= self._grant:
                n, self._consumed = self._consumed, 0
                if not await self._send_or_abort(T_CREDIT, n.to_bytes(4, "big")):
                    return
            if not self._queue:
                if self._peer_eof:
                    with contextlib.suppress(Exception):
                        await self.stream.send_eof()
                    return
                self._wake_writer = anyio.Event()
                self._writer_idle = True
                await self._wake_writer.wait()
                self._writer_idle = False
                continue
            chunks = list(self._queue)
            self._queue.clear()
            charge = sum(c for _, c in chunks)
            self._queued -= charge
            try:
                # anyio sends any bytes-like object (it takes a memoryview of it)
                data = chunks[0][0] if len(chunks) == 1 else b"".join(c for c, _ in chunks)
                await self.stream.send(cast(bytes, data))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
                self.abort(f"the local connection failed: {_why(e)}", notify=True)
                return
            self._consumed += charge

    def _counts(self) -> tuple[int, int]:
        return self.sent_bytes, self.received_bytes


class EngineSession(_SessionBase):
    """A portal session that the data plane (:mod:`tether.engine`) carries: its socket, its
    bytes, flow control, half-close and resets are the engine's (in Rust, off the GIL); this
    object keeps the session's place in its owner's table and its counters, and ends it when
    Python decides to (a policy recheck, the inlet deleted)."""

    data_plane = "rust"

    def __init__(
        self,
        node: Node,
        address: str,
        channel: SecureChannel,
        peer_route: tuple[Address, ...],
        options: PortalOptions,
        owner: Any,
    ) -> None:
        super().__init__(node, address, channel, peer_route, options, owner)
        self.id: int | None = None
        self._sent = 0
        self._received = 0
        self._closed = False

    def register(
        self,
        sock: socket.socket | None,
        *,
        match: str,
        match_return: bytes | None,
        open: bool,
        sync: int,
        connect_prefix: str = "",
    ) -> None:
        """Hand the session to the engine (``sock``, if given, becomes the engine's: see
        :func:`tether.engine.hand_over`)."""
        plane = self.node.dataplane
        assert plane is not None
        assert self.channel._engine_id is not None
        header = dp.encoded_header(self.peer_route[1:], (Address.local(self.address),))
        self.id = int(
            plane.engine.add_session(
                self.channel._engine_id,
                sock,
                header,
                match.encode(),
                match_return,
                self.options.window,
                open,
                sync,
                self.options.connect_timeout,
                connect_prefix,
            )
        )
        plane.sessions[self.id] = self

    @property
    def sent_bytes(self) -> int:
        return self._stats()[0]

    @property
    def received_bytes(self) -> int:
        return self._stats()[1]

    @property
    def held_bytes(self) -> int:
        """What the engine holds in memory for this session (received from the peer, not yet
        written to the socket)."""
        return self._stats()[2]

    def _stats(self) -> tuple[int, int, int]:
        plane = self.node.dataplane
        if not self._closed and self.id is not None and plane is not None and not plane.stopped:
            stats = plane.engine.session_stats(self.id)
            if stats is not None:
                return int(stats[0]), int(stats[1]), int(stats[2])
        return self._sent, self._received, 0

    def deliver(self, msg: RoutedMessage) -> None:
        """A message of the session that reached Python before the engine took it over."""
        plane = self.node.dataplane
        if not self._closed and self.id is not None and plane is not None and not plane.stopped:
            plane.engine.session_deliver(self.id, msg.payload)

    def abort(self, reason: str, notify: bool = False) -> None:
        """End the session now: the engine resets its socket (and tells the peer if
        ``notify``); the owner forgets it when the engine reports it ended."""
        if self._closed:
            return
        sent, received, _ = self._stats()
        plane = self.node.dataplane
        if self.id is not None and plane is not None and not plane.stopped:
            plane.engine.close_session(self.id, reason, notify)
        # Recorded now (the engine's report of the end comes later and is then ignored).
        self.engine_closed(reason, sent, received)

    def engine_closed(self, reason: str, sent: int, received: int) -> None:
        """The engine ended the session (``reason`` empty: both directions ended in order)."""
        if self._closed:
            return
        self._closed = True
        self._sent, self._received = sent, received
        self.close_reason = reason
        if reason:
            log.info("portal session %s closed: %s", self.address, reason)
        self.owner.forget(self)

    def _counts(self) -> tuple[int, int]:
        sent, received, _ = self._stats()
        return sent, received


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _policy(allow: str | Policy | None) -> Policy | None:
    if allow is None or allow == "":
        return None
    from tether.policy import Policy

    return allow if isinstance(allow, Policy) else Policy.parse(allow)


def _host_port(spec: str, what: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgumentError(
            f"{what} must be HOST:PORT (for example 127.0.0.1:5432), not {spec!r}"
        )
    return host.strip("[]"), int(port)


class _Portal:
    """What inlets and outlets share: the session table and counters."""

    kind = ""

    def __init__(self, node: Node, name: str, options: PortalOptions | None) -> None:
        self.node = node
        self.name = name
        self.options = options or PortalOptions()
        self.policy: Policy | None = None
        self.sessions: dict[Any, Session | EngineSession] = {}
        self._ended: OrderedDict[Any, None] = OrderedDict()  # recently ended session keys
        self.total = 0
        self.refused = 0
        self.failed = 0
        self.last_error = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.created_at = time.time()

    async def recheck(self) -> None:
        """Re-evaluate the policy for open sessions every ``recheck_interval`` seconds: a peer
        whose credential expired (or was replaced by one without the attributes) loses its
        sessions within that bound."""
        while True:
            await anyio.sleep(self.options.recheck_interval)
            if self.effective_policy() is None:
                continue
            self._recheck_engine()
            for session in list(self.sessions.values()):
                if not self.allowed(session.channel):
                    self.refused += 1
                    session.abort(
                        f"{self.kind} {self.name!r}: {session.channel.peer.identifier} no longer "
                        f"satisfies its policy {self.effective_policy()} (a credential expired or "
                        "was revoked)",
                        notify=True,
                    )

    def _recheck_engine(self) -> None:
        """Withdraw what the data plane was allowed to do alone for a channel whose peer no
        longer satisfies the policy."""

    def engine_session(self, session_id: int, channel_id: int, route: Any) -> None:
        """The data plane opened a session by itself (see the subclasses)."""

    def _adopt(
        self, session_id: int, channel_id: int, address: str, key: Any, peer: tuple[Address, ...]
    ) -> None:
        """Keep the books of a session the data plane opened by itself."""
        plane = self.node.dataplane
        channel = plane.channels.get(channel_id) if plane is not None else None
        if plane is None or channel is None:
            if plane is not None and not plane.stopped:
                plane.engine.close_session(session_id, "its secure channel closed", False)
            return
        session = EngineSession(self.node, address, channel, peer, self.options, self)
        session.id = session_id
        session.key = key
        self.sessions[key] = session
        self.total += 1
        plane.sessions[session_id] = session

    def effective_policy(self) -> Policy | None:
        """Its own ``allow``, else the node's policy for its name, else for its type."""
        return self.policy or policies.policy_for(self.node, self.kind, self.name)

    def allowed(self, channel: SecureChannel) -> bool:
        """Does the channel's peer, with the attributes still valid now, satisfy the policy
        for ``action.name = "connect"`` on this resource? (No policy: yes.)"""
        policy = self.effective_policy()
        return policy is None or policies.allows(
            self.node, policy, channel, self.kind, self.name, "connect"
        )

    def _remember_ended(self, key: Any) -> None:
        self._ended[key] = None
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    def forget(self, session: Session | EngineSession) -> None:
        key = session.key
        if self.sessions.get(key) is not session:
            return  # forgotten already
        del self.sessions[key]
        self._remember_ended(key)
        self.node.remove_sink(session.address)
        self.bytes_in += session.received_bytes
        self.bytes_out += session.sent_bytes
        if session.close_reason:
            self.failed += 1
            self.last_error = session.close_reason

    def _stats(self) -> dict[str, object]:
        return {
            "sessions": len(self.sessions),
            "total": self.total,
            "refused": self.refused,
            "failed": self.failed,
            "last_error": self.last_error,
            "bytes_in": self.bytes_in + sum(s.received_bytes for s in self.sessions.values()),
            "bytes_out": self.bytes_out + sum(s.sent_bytes for s in self.sessions.values()),
        }


class Outlet(_Portal):
    """The service at ``name`` that connects each portal session to ``HOST:PORT``."""

    kind = "tcp-outlet"

    def __init__(
        self,
        node: Node,
        name: str,
        to: str,
        *,
        allow: str | Policy | None = None,
        options: PortalOptions | None = None,
    ) -> None:
        super().__init__(node, name, options)
        self.to = to
        self.host, self.port = _host_port(to, "the outlet's target")
        self._scope = anyio.CancelScope()
        self.policy: Policy | None = _policy(allow)
        self._engine_id: int | None = None
        self._authorized: set[int] = set()  # channels the data plane may open sessions for
        plane = node.dataplane
        if plane is not None and not plane.stopped:
            # OPENs through a channel Python has authorized are served in the data plane
            # without a round through Python (IP targets; a host name is resolved per session).
            self._engine_id = int(
                plane.engine.add_outlet(
                    name.encode(),
                    self.options.window,
                    self.options.max_sessions,
                    self.options.connect_timeout,
                    self._connect_prefix(),
                )
            )
            if _ip_literal(self.host):
                plane.engine.set_outlet_target(self._engine_id, self.host, self.port)
            plane.outlets[self._engine_id] = self

    def info(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "to": self.to,
            "allow": str(self.policy) if self.policy else None,
            **self._stats(),
        }

    async def run(self) -> None:
        try:
            with self._scope:
                await self.recheck()
        finally:
            self._leave_engine()

    def stop(self) -> None:
        self._scope.cancel()
        self._leave_engine()

    def _out_of_descriptors(self) -> None:
        self.refused += 1
        self.last_error = "refused a connection: the process has no descriptor left"

    def _leave_engine(self) -> None:
        plane, oid = self.node.dataplane, self._engine_id
        if plane is not None and oid is not None:
            self._engine_id = None
            plane.outlets.pop(oid, None)
            if not plane.stopped:
                plane.engine.remove_outlet(oid)

    def _connect_prefix(self) -> str:
        return f"tcp-outlet {self.name!r} could not connect to {self.to}"

    def _recheck_engine(self) -> None:
        plane, oid = self.node.dataplane, self._engine_id
        if plane is None or oid is None or plane.stopped:
            return
        for cid in list(self._authorized):
            channel = plane.channels.get(cid)
            if channel is None or not self.allowed(channel):
                self._authorized.discard(cid)
                plane.engine.allow_outlet(oid, cid, False)

    def engine_session(self, session_id: int, channel_id: int, route: Any) -> None:
        plane = self.node.dataplane
        channel = plane.channels.get(channel_id) if plane is not None else None
        ret = tuple(Address(t, v) for t, v in route)
        key = (Address.local(channel.address), *ret) if channel is not None else ret
        self._adopt(session_id, channel_id, self.node.next_id("outlet"), key, key)

    def handle(self, msg: RoutedMessage) -> None:
        """Every inlet→outlet message (sync, inline in the router)."""
        if msg.payload[:1] != _DATA or not msg.return_route:
            return  # error reports about our own messages: the session's channel handles loss
        key = msg.return_route
        session = self.sessions.get(key)
        if session is not None:
            session.deliver(msg)
            return
        t = msg.payload[1] if len(msg.payload) > 1 else 0
        if key in self._ended:
            return  # the rest of a session already refused or ended: it was told, once
        if t != T_OPEN:
            if t not in (T_CLOSE, T_CREDIT, T_EOF):  # a late message after the session ended
                self._refuse(key, f"no portal session at tcp-outlet {self.name!r} (it ended)")
            return
        channel = self.node.arrival_channel(key)
        if channel is None:
            self.refused += 1
            self._refuse(
                key,
                f"tcp-outlet {self.name!r} accepts sessions only through a secure channel: "
                "add /secure/LISTENER to the inlet's route",
            )
            return
        if not self.allowed(channel):
            self.refused += 1
            self.last_error = f"refused {channel.peer.identifier}: policy {self.effective_policy()}"
            log.info("tcp-outlet %s: %s", self.name, self.last_error)
            self._refuse(
                key, f"tcp-outlet {self.name!r} refused {channel.peer.identifier} by its policy"
            )
            return
        if len(self.sessions) >= self.options.max_sessions:
            self.refused += 1
            self._refuse(key, f"tcp-outlet {self.name!r} has {self.options.max_sessions} sessions")
            return
        plane = self.node.dataplane
        if plane is not None and plane.carries(channel):
            if self._engine_id is not None and channel._engine_id is not None:
                # The next OPENs through this channel open in the data plane directly.
                self._authorized.add(channel._engine_id)
                plane.engine.allow_outlet(self._engine_id, channel._engine_id, True)
            self._open_in_engine(channel, key)
            return
        session = Session(self.node, self.node.next_id("outlet"), channel, key, self.options, self)
        session.key = key
        self.sessions[key] = session
        self.total += 1
        self.node.task_group.start_soon(self._connect, session)

    def _open_in_engine(self, channel: SecureChannel, key: tuple[Address, ...]) -> None:
        """The session in the data plane: it connects to the target itself (an IP address;
        a host name is resolved here first), holding what arrives meanwhile."""
        session = EngineSession(
            self.node, self.node.next_id("outlet"), channel, key, self.options, self
        )
        session.key = key
        self.sessions[key] = session
        self.total += 1
        # Messages of this session that Python already holds (in the connection's queue) go
        # first: then the engine waits for the sync marker before taking the rest.
        plane, link = self.node.dataplane, channel._engine_link
        conn = plane.links.get(link) if plane is not None and link is not None else None
        sync = 2 if conn is not None and conn.pending_events() else 1
        prefix = self._connect_prefix()
        try:
            session.register(
                None,
                match=self.name,
                match_return=dp.encoded_route(key[1:]),
                open=False,
                sync=sync,
                connect_prefix=prefix,
            )
        except TetherError as e:
            session.engine_closed(f"tcp-outlet {self.name!r} could not open a session: {e}", 0, 0)
            return
        if _ip_literal(self.host):
            self._engine_connect(session, self.host)
        else:
            self.node.task_group.start_soon(self._resolve_and_connect, session, prefix)

    def _engine_connect(self, session: EngineSession, host: str) -> None:
        plane = self.node.dataplane
        if plane is not None and not plane.stopped and session.id is not None:
            plane.engine.session_connect(session.id, host, self.port)

    async def _resolve_and_connect(self, session: EngineSession, prefix: str) -> None:
        try:
            with anyio.fail_after(self.options.connect_timeout):
                infos = await anyio.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as e:
            why = "timed out" if isinstance(e, TimeoutError) else _why(e)
            session.abort(f"{prefix}: {why}", notify=True)
            return
        if not infos:
            session.abort(f"{prefix}: the name has no address", notify=True)
            return
        self._engine_connect(session, str(infos[0][4][0]))

    def _refuse(self, route: tuple[Address, ...], reason: str) -> None:
        self._remember_ended(route)

        async def send() -> None:
            with contextlib.suppress(TetherError):
                await self.node.route(
                    RoutedMessage(
                        route,
                        (Address.local(self.name),),
                        _HEAD[T_CLOSE] + reason.encode()[:MAX_REASON],
                    )
                )

        self.node.task_group.start_soon(send)

    async def _connect(self, session: Session) -> None:
        try:
            with anyio.fail_after(self.options.connect_timeout):
                stream = await anyio.connect_tcp(self.host, self.port)
        except (OSError, TimeoutError) as e:
            why = "timed out" if isinstance(e, TimeoutError) else _why(e)
            session.abort(f"tcp-outlet {self.name!r} could not connect to {self.to}: {why}", True)
            self.forget(session)
            return
        _nodelay(stream)
        await session.run(stream)


def _nodelay(stream: SocketStream) -> None:
    with contextlib.suppress(Exception):
        stream.extra(SocketAttribute.raw_socket).setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )


class Inlet(_Portal):
    """A local TCP listener whose connections become portal sessions along ``route``."""

    kind = "tcp-inlet"

    def __init__(
        self,
        node: Node,
        name: str,
        bind: str,
        route: str | Sequence[Address],
        *,
        allow: str | Policy | None = None,
        options: PortalOptions | None = None,
        trust: Any = None,
    ) -> None:
        super().__init__(node, name, options)
        self.bind = bind
        self.host, self.port = _host_port(bind, "the inlet's listening address")
        self.route = route if isinstance(route, str) else routing.format_route(route)
        self._parsed = node.parse_route(route)  # errors now, not at the first connection
        if not any(a.transport == routing.SECURE for a in self._parsed):
            raise InvalidArgumentError(
                f"the inlet's route {self.route} has no secure channel: portal data must be "
                "end-to-end encrypted; insert /secure/LISTENER before the outlet (for example "
                "/node/db/secure/api/service/outlet)"
            )
        self.policy: Policy | None = _policy(allow)
        # Who must answer the route's secure channels: ``trust``, else the inlet's own policy
        # (checked in the handshake), else the nodes the route names (tether.trust.initiator_trust).
        self._expect = routing.named_peers(route) if isinstance(route, str) else None
        self._trust = trust
        if trust is None and self.policy is not None:
            self._trust = trust_policy(self.policy, node, self.kind, name)
        self._listener: Any = None
        self._scope = anyio.CancelScope()
        self.state = "starting"
        self._engine_id: int | None = None
        self._bound: int | None = None  # the channel the data plane opens connections through
        self._tg: Any = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def info(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "from": self.address,
            "to": self.route,
            "allow": str(self.policy) if self.policy else None,
            "state": self.state,
            **self._stats(),
        }

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        plane = self.node.dataplane
        if plane is not None and not plane.stopped:
            await self._run_in_engine(task_status)
            return
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self.port, reuse_port=False
            )
        except OSError as e:
            raise InvalidArgumentError(
                f"tcp-inlet {self.name!r} cannot listen on {self.bind}: {e.strerror or e}"
            ) from None
        self._listener = listener
        self.port = listener.extra(SocketAttribute.local_port)
        self.state = "listening"
        task_status.started()
        try:
            with self._scope:
                async with listener, anyio.create_task_group() as tg:
                    tg.start_soon(self.recheck)
                    await limits.serve(listener, self._accept, tg, self._out_of_descriptors)
        finally:
            self.state = "stopped"
            for session in list(self.sessions.values()):
                session.abort(f"tcp-inlet {self.name!r} deleted", notify=True)

    def stop(self) -> None:
        self._scope.cancel()
        self._leave_engine()

    def _out_of_descriptors(self) -> None:
        self.refused += 1
        self.last_error = "refused a connection: the process has no descriptor left"

    async def _listen(self) -> Any:
        try:
            return await anyio.create_tcp_listener(
                local_host=self.host, local_port=self.port, reuse_port=False
            )
        except OSError as e:
            raise InvalidArgumentError(
                f"tcp-inlet {self.name!r} cannot listen on {self.bind}: {e.strerror or e}"
            ) from None

    async def _run_in_engine(self, task_status: Any) -> None:
        """The listening socket is the data plane's: once a connection has gone the slow way
        (the route resolved, the policy checked, here), the next ones through the same channel
        open in the engine with no round through Python."""
        plane = self.node.dataplane
        assert plane is not None
        listener = await self._listen()
        raw = listener.extra(SocketAttribute.raw_socket)
        self.port = listener.extra(SocketAttribute.local_port)
        try:
            self._engine_id = int(
                plane.engine.add_inlet(
                    dp.hand_over(raw),
                    b"inlet#r",
                    self.options.window,
                    self.options.max_sessions,
                )
            )
        finally:
            await listener.aclose()  # closes nothing now: the descriptor is the engine's
        plane.inlets[self._engine_id] = self
        self.state = "listening"
        task_status.started()
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    await self.recheck()
        finally:
            self._tg = None
            self._leave_engine()
            self.state = "stopped"
            for session in list(self.sessions.values()):
                session.abort(f"tcp-inlet {self.name!r} deleted", notify=True)

    def _leave_engine(self) -> None:
        plane, iid = self.node.dataplane, self._engine_id
        if plane is not None and iid is not None:
            self._engine_id = None
            plane.inlets.pop(iid, None)
            if not plane.stopped:
                plane.engine.remove_inlet(iid)

    def accepted(self, fd: int) -> None:
        """The data plane accepted a connection it cannot open alone: the slow way."""
        if self._tg is None:
            os.close(fd)
            return
        self._tg.start_soon(self._accept_fd, fd)

    async def _accept_fd(self, fd: int) -> None:
        try:
            # anyio's socket object owns fd from here (and closes it, also when this fails).
            stream = await SocketStream.from_socket(fd)
        except (OSError, ValueError) as e:  # the client went away meanwhile
            self.failed += 1
            self.last_error = f"an accepted connection could not be taken over: {e}"
            log.warning("tcp-inlet %s: %s", self.name, self.last_error)
            return
        await self._accept(stream)

    def _recheck_engine(self) -> None:
        plane, iid, bound = self.node.dataplane, self._engine_id, self._bound
        if plane is None or iid is None or plane.stopped or bound is None:
            return
        channel = plane.channels.get(bound)
        if channel is None or not self.allowed(channel):
            self._bound = None
            plane.engine.bind_inlet(iid, None, None)

    def engine_session(self, session_id: int, channel_id: int, route: Any) -> None:
        address = bytes(route).decode()
        self._adopt(session_id, channel_id, address, address, ())

    async def _fail(self, stream: SocketStream, reason: str, *, count: bool = True) -> None:
        """Turn one client connection away (reset), recording why."""
        if count:
            self.failed += 1
        self.last_error = reason
        log.warning("tcp-inlet %s: %s", self.name, reason)
        await _turn_away(stream)

    async def _accept(self, stream: SocketStream) -> None:
        _nodelay(stream)
        if len(self.sessions) >= self.options.max_sessions:
            self.refused += 1
            await _turn_away(stream)
            return
        self.total += 1
        address = self.node.next_id("inlet")
        try:
            with anyio.fail_after(self.options.open_timeout):
                onward = await self.node.resolve_route(
                    self._parsed, trust=self._trust, expect=self._expect
                )
        except (TetherError, TimeoutError) as e:
            why = "timed out" if isinstance(e, TimeoutError) else str(e)
            await self._fail(stream, f"could not reach {self.route}: {why}")
            return
        # The route resolves to a secure channel first; it may have closed meanwhile. Either
        # way only this connection fails: an exception here would end the whole inlet.
        channel = self.node.arrival_channel(onward)
        if channel is None:
            await self._fail(
                stream, f"could not reach {self.route}: its secure channel closed while opening"
            )
            return
        if not self.allowed(channel):
            self.refused += 1
            await self._fail(
                stream,
                f"refused the outlet side {channel.peer.identifier}: "
                f"policy {self.effective_policy()}",
                count=False,
            )
            return
        plane = self.node.dataplane
        if plane is not None and plane.carries(channel):
            await self._open_in_engine(stream, address, channel, onward)
            return
        session = Session(self.node, address, channel, onward, self.options, self)
        expected = channel.address

        def deliver(msg: RoutedMessage) -> None:
            # Only the channel this session runs in may speak for its outlet.
            if msg.return_route and msg.return_route[0] == Address.local(expected):
                session.deliver(msg)

        session.key = address
        self.sessions[address] = session
        self.node.add_sink(address, deliver)
        try:
            await session._send(T_OPEN)
        except TetherError as e:
            session.abort(f"could not open a session through {self.route}: {e}")
        await session.run(stream)

    async def _open_in_engine(
        self,
        stream: SocketStream,
        address: str,
        channel: SecureChannel,
        onward: tuple[Address, ...],
    ) -> None:
        """The session in the data plane: the engine sends OPEN and pumps the socket (a
        duplicate of it: Python's copy is closed here)."""
        session = EngineSession(self.node, address, channel, onward, self.options, self)
        session.key = address
        self.sessions[address] = session
        try:
            raw = stream.extra(SocketAttribute.raw_socket)
            session.register(dp.hand_over(raw), match=address, match_return=None, open=True, sync=0)
        except (TetherError, OSError) as e:
            session.engine_closed(f"could not open a session through {self.route}: {e}", 0, 0)
            await self._fail(stream, session.close_reason, count=False)
            return
        plane = self.node.dataplane
        if self._engine_id is not None and plane is not None and not plane.stopped:
            # The route and the policy hold for this channel: the next connections open in
            # the data plane directly (until the channel closes or the policy says no).
            self._bound = channel._engine_id
            plane.engine.bind_inlet(
                self._engine_id, channel._engine_id, dp.encoded_route(onward[1:])
            )
        with anyio.CancelScope(shield=True):
            await stream.aclose()
