"""Portal sessions: one TCP connection carried through a secure channel, in Python
(:class:`Session`) or in the data plane (:class:`EngineSession`). The inlets and outlets that
make them are :mod:`tether.portal`'s.

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
import logging
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.abc import SocketAttribute, SocketStream

from tether import engine as dp
from tether._core import ENGINE_MAX_DATA
from tether.errors import TetherError
from tether.message import Address, RoutedMessage
from tether.worker import KIND_DATA, KIND_ERROR

if TYPE_CHECKING:
    from tether.channel import SecureChannel
    from tether.node import Node

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
HEAD = {t: bytes((KIND_DATA, t)) for t in _NAMES}
DATA_PREFIX = bytes((KIND_DATA,))
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


def os_reason(e: BaseException) -> str:
    cause = e.__cause__ if isinstance(e.__cause__, OSError) else e
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return type(e).__name__


def _charge(n: int) -> int:
    return max(n, MIN_CHARGE)


async def turn_away(stream: SocketStream) -> None:
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
                    self.abort(f"the local connection failed: {os_reason(e)}", notify=True)
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
        await self.channel.send_parts(self.peer_route[1:], self._return, HEAD[t], body)

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
                self.abort(f"the local connection failed: {os_reason(e)}", notify=True)
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
                self.abort(f"the local connection failed: {os_reason(e)}", notify=True)
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


def nodelay(stream: SocketStream) -> None:
    with contextlib.suppress(Exception):
        stream.extra(SocketAttribute.raw_socket).setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
