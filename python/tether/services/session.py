"""Portal sessions: one TCP connection carried through a secure channel, in Python
(:class:`Session`) or in the data plane (:class:`EngineSession`). The inlets and outlets that
make them are :mod:`tether.services.portal`'s.

The session protocol (the payload of each message, inside the secure channel) is one type byte
and a body (``docs/portals.md``, "Protocol", has the bytes):

========  ======================================================================================
OPEN      the inlet opens a session (the outlet connects to its target); the outlet sends it back
          once its target is connected (the session is open: the inlet times it, and ignores
          it otherwise)
DATA      a sequence number, then bytes of the stream, at most :data:`MAX_DATA` per message
EOF       a sequence number: the sender's side shut its write half (half-close): the receiver
          shuts its own write side once everything before it is written
ACK       what the receiver holds (every DATA and EOF before a number) and has written (credit
          units, in all); it may ask for a resend
CLOSE     the session is over (reset, refusal, error); the body is the reason
========  ======================================================================================

Sessions are keyed by their return route, which starts with the secure channel the message
came through: a peer can only ever address the sessions of its own channel. All inlet→outlet
messages go to the outlet's address (so DATA can follow OPEN at once, with no round trip before
the first byte); outlet→inlet messages go to the inlet session's own address.

**Flow control**: each direction has a window of :attr:`PortalOptions.window` credit units; a DATA
message costs ``max(len, MIN_CHARGE)`` units. A sender with no credit stops reading its socket
(so a slow reader slows the writer through TCP itself), and a receiver refuses a peer that
overruns its window: memory per session is bounded by the window, whatever the peer does.

**Nothing is lost**: the sender keeps what the receiver has not acknowledged (within the window)
and sends it again when asked or when no ACK comes in time; the receiver takes DATA in order
only. A path that fails for a while (a NATS server killed, a hop restarting) pauses a session
instead of ending it, for up to :attr:`PortalOptions.resume_timeout` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

from tether._core import (
    KIND_DATA,
    PORTAL_ACK,
    PORTAL_CLOSE,
    PORTAL_DATA,
    PORTAL_ENDED_MEMORY,
    PORTAL_EOF,
    PORTAL_MAX_DATA,
    PORTAL_MAX_REASON,
    PORTAL_OPEN,
    ActionKind,
    PortalAction,
    PortalSession,
    SyncMode,
)
from tether.channel.channel import SecureChannel
from tether.core.errors import TetherError
from tether.core.message import Address, RoutedMessage
from tether.node.data_plane import encoded_header
from tether.node.node import BaseNode

log = logging.getLogger("tether.portal")

T_OPEN = PORTAL_OPEN
T_DATA = PORTAL_DATA
T_EOF = PORTAL_EOF
T_CLOSE = PORTAL_CLOSE
T_ACK = PORTAL_ACK
MAX_DATA: int = PORTAL_MAX_DATA
"""The largest DATA body, and the size of one read from a portal's socket: small enough that a
DATA message is one channel fragment on the wire."""
MAX_REASON: int = PORTAL_MAX_REASON
ENDED_MEMORY: int = PORTAL_ENDED_MEMORY
"""How many ended sessions an outlet remembers, so that what their inlets still send is dropped
quietly instead of answered with a second CLOSE."""
HEAD = {t: bytes((KIND_DATA, t)) for t in (T_OPEN, T_CLOSE)}
DATA_PREFIX = bytes((KIND_DATA,))
_OPEN_TYPE = bytes((T_OPEN,))
OPEN_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
"""Upper bounds, in seconds, of a portal's session-open latency histogram (``docs/metrics.md``:
``tether_portal_session_open_seconds``)."""


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
    resume_timeout: float = 30.0
    """How long a session whose path failed (a hop down for a while) goes on resending what the
    peer has not acknowledged before it gives up and ends."""


def os_reason(e: BaseException) -> str:
    cause = e.__cause__ if isinstance(e.__cause__, OSError) else e
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return type(e).__name__


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
        node: BaseNode,
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
        self.opening = self.started
        """When its opening began: an inlet's accepted connection, an outlet's OPEN."""
        self.awaits_open = False
        """An inlet's session until the outlet answers OPEN (its target connected)."""
        self.close_reason = ""

    def _counts(self) -> tuple[int, int]:
        """Bytes (sent, received)."""
        raise NotImplementedError

    def opened(self) -> None:
        """The session is open (an inlet's: the outlet answered OPEN; an outlet's: the target
        is connected): its owner's open-latency histogram records how long that took."""
        self.awaits_open = False
        self.owner.record_open(time.monotonic() - self.opening)

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
    """One TCP connection carried through a portal by the Python data plane: the driver of the
    session's rules (:class:`tether._core.PortalSession`, the same state machine the Rust
    engine drives) over an anyio stream. ``deliver`` (inline in the node's router) hands it
    the peer's messages; a reader task pumps the socket to the peer, a writer task writes what
    the socket did not take at once and sends what the rules ask for."""

    data_plane = "python"

    def __init__(
        self,
        node: BaseNode,
        address: str,
        channel: SecureChannel,
        peer_route: tuple[Address, ...],
        options: PortalOptions,
        owner: Any,
        *,
        established: bool = False,
    ) -> None:
        super().__init__(node, address, channel, peer_route, options, owner)
        self.stream: SocketStream | None = None
        # `established`: an outlet's session, which answers an OPEN (the peer is there).
        self.rules = PortalSession(options.window, options.resume_timeout, established)
        self._return = (Address.local(address),)
        self._outbox: deque[PortalAction] = deque()  # ACKs and resends: the control task's
        self._shut_write = False  # the writer shuts the write half once it wrote what is queued
        self._writer_idle = False  # the writer waits with nothing to do
        self._raw: Any = None  # the socket, for direct non-blocking writes (trio only)
        self._wake_writer = anyio.Event()
        self._wake_reader = anyio.Event()
        self._wake_control = anyio.Event()
        self._control_until: float | None = None  # the deadline the control task waits for
        self._resending = anyio.Lock()  # new DATA waits while a resend goes out: in order
        self._scope = anyio.CancelScope()
        self._closed = False
        self._aborted = False

    @property
    def sent_bytes(self) -> int:
        return int(self.rules.sent)

    @property
    def received_bytes(self) -> int:
        return int(self.rules.received)

    # --- from the peer (synchronous: called inline by the node's router) --------------------

    def deliver(self, msg: RoutedMessage) -> None:
        """One message from the peer session (payload: kind byte, type byte, body)."""
        if self._closed:
            return
        payload = msg.payload
        span, actions = self.rules.on_peer(payload, time.monotonic())
        if self.awaits_open and payload[1:2] == _OPEN_TYPE and payload[:1] == DATA_PREFIX:
            self.opened()  # the outlet's answer: its target is connected
        if span is not None:
            body = memoryview(payload)[span[0] : span[1]]  # no copy of the data
            written = 0
            if self._writer_idle and self.rules.queue_empty and self._raw is not None:
                # The writer waits with nothing queued: write now, in this task (the socket is
                # non-blocking); only what the kernel does not take is queued for the writer.
                try:
                    written = self._raw.send(body)
                except BlockingIOError:
                    written = 0
                except OSError as e:
                    actions = self.rules.fail(
                        f"the local connection failed: {os_reason(e)}", True, True
                    )
            actions += self.rules.data(body, written)
        self._apply(actions)

    def _timer_changed(self) -> None:
        """Wake the control task if the rules' next deadline is earlier than its own."""
        d = self.rules.deadline
        if d is not None and (self._control_until is None or d < self._control_until):
            self._wake_control.set()

    def _apply(self, actions: list[PortalAction]) -> None:
        """Do what the rules answered: sends and the write side go to the writer task (in
        order), a resumed read wakes the reader, the end ends the session."""
        for action in actions:
            match action.kind:
                case ActionKind.CLOSED:
                    self._end(action.reason, action.abort)
                case ActionKind.RESUME_READ:
                    self._wake_reader.set()
                case ActionKind.SEND_CLOSE:
                    self.node.task_group.start_soon(self._notify_close, action.message)
                case ActionKind.WRITE:
                    self._wake_writer.set()
                case ActionKind.SHUT_WRITE:
                    self._shut_write = True
                    self._wake_writer.set()
                case _:  # SEND_ACK, RESEND (SEND_EOF goes out from the reader, after its DATA)
                    self._outbox.append(action)
                    self._wake_control.set()
        self._timer_changed()

    # --- to the peer --------------------------------------------------------------------------

    async def _send(self, head: bytes, body: bytes = b"") -> None:
        # Every message of a session takes the same ordered path (the channel's bulk path):
        # an EOF or CLOSE can never overtake the DATA before it.
        await self.channel.send_parts(self.peer_route[1:], self._return, head, body)

    def abort(self, reason: str, notify: bool = False) -> None:
        """End the session now: reset the socket, and tell the peer if ``notify``."""
        self._apply(self.rules.fail(reason, True, notify))

    def _end(self, reason: str, abort: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        if reason:
            log.info("portal session %s closed: %s", self.address, reason)
        self._wake_writer.set()  # the pumps see the end
        self._wake_reader.set()
        self._wake_control.set()
        if abort:
            self._aborted = True
            if self.stream is not None:
                _reset(self.stream)
            self._scope.cancel()

    async def _notify_close(self, message: bytes) -> None:
        with contextlib.suppress(TetherError):
            await self._send(message)

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
            # A closed channel resets the session (a callback, not a task per session); a
            # path back after a loss resends at once.
            self.channel.on_close(self._channel_closed)
            self.node.path_restored_hooks.add(self._path_restored)
            if self.channel.closed.is_set():
                self._channel_closed()
            with self._scope:
                async with anyio.create_task_group() as tg:
                    reader_done, control_done = anyio.Event(), anyio.Event()

                    async def reader() -> None:
                        await self._reader()
                        reader_done.set()

                    async def control() -> None:
                        try:
                            await self._control()
                        finally:
                            control_done.set()

                    tg.start_soon(reader)
                    tg.start_soon(control)
                    await self._writer()
                    await reader_done.wait()
                    with anyio.move_on_after(5):  # its last ACK, unless the way on is stuck
                        await control_done.wait()
                    tg.cancel_scope.cancel()
                self._closed = True
        finally:
            self.channel.remove_on_close(self._channel_closed)
            self.node.path_restored_hooks.discard(self._path_restored)
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            self.owner.forget(self)

    def _path_restored(self) -> None:
        self._apply(self.rules.path_restored(time.monotonic()))

    def _channel_closed(self) -> None:
        self.abort(f"secure channel {self.channel.address} closed")

    async def _reader(self) -> None:
        """Our socket → the peer, within the allowance the rules give."""
        assert self.stream is not None
        while True:
            if (allowed := self.rules.read_allowance()) == 0 and not self.rules.closed:
                # No credit: the peer's window is used up; the reader waits (back-pressure).
                self.node.backpressure["session_credit"] += 1
            while allowed == 0:
                if self.rules.closed:
                    return
                self._wake_reader = anyio.Event()
                await self._wake_reader.wait()
                allowed = self.rules.read_allowance()
            try:
                data = await self.stream.receive(allowed)
            except anyio.EndOfStream:
                data = b""
            except (anyio.BrokenResourceError, OSError) as e:
                # A reset is not an orderly end: the peer's socket is reset too.
                self.abort(f"the local connection failed: {os_reason(e)}", notify=True)
                return
            except anyio.ClosedResourceError:
                return
            if not data:
                actions = self.rules.on_read_eof(time.monotonic())
                self._timer_changed()  # its timer now waits for the EOF's ACK too
                # EOF goes out from this task, after the DATA before it.
                for a in actions:
                    if a.kind == ActionKind.SEND_EOF and not await self._send_or_abort(a.message):
                        return
                self._apply([a for a in actions if a.kind != ActionKind.SEND_EOF])
                return
            async with self._resending:
                head = self.rules.on_read(data, time.monotonic())
                self._timer_changed()  # its timer waits for the ACK
                if not await self._send_or_abort(head, data):
                    return

    async def _send_or_abort(self, head: bytes, body: bytes = b"") -> bool:
        try:
            await self._send(head, body)
            return True
        except TetherError as e:
            self.abort(f"could not send to the peer: {e}")
            return False

    async def _control(self) -> None:
        """ACKs, resends and the rules' timers, apart from the writer (a socket slow to take
        bytes must not hold back the ACKs that tell the peer what arrived). At an orderly end it
        still sends what is queued (the ACK of the peer's EOF)."""
        while True:
            while self._outbox:
                action = self._outbox.popleft()
                if action.kind == ActionKind.RESEND:
                    async with self._resending:
                        for head, body in self.rules.retained():
                            if not await self._send_or_abort(head, body):
                                return
                elif not await self._send_or_abort(action.message):
                    return
            if self.rules.closed:
                return
            self._wake_control = anyio.Event()
            self._control_until = self.rules.deadline
            if self._control_until is None:
                await self._wake_control.wait()
            else:
                with anyio.move_on_after(self._control_until - time.monotonic()):
                    await self._wake_control.wait()
            self._control_until = None
            self._apply(self.rules.on_tick(time.monotonic()))

    async def _writer(self) -> None:
        """The peer's bytes → our socket (what ``deliver`` could not write at once), and the
        write half shut after the peer's EOF."""
        assert self.stream is not None
        while not self.rules.closed:
            if self._shut_write:
                self._shut_write = False
                with contextlib.suppress(Exception):
                    await self.stream.send_eof()
            pending = self.rules.pending()
            if pending is None:
                actions = self.rules.flushed()
                if actions:
                    self._apply(actions)
                    continue
                if self.rules.closed:
                    return
                self._wake_writer = anyio.Event()
                self._writer_idle = True
                await self._wake_writer.wait()
                self._writer_idle = False
                continue
            try:
                await self.stream.send(pending)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
                self.abort(f"the local connection failed: {os_reason(e)}", notify=True)
                return
            self.rules.wrote(len(pending))

    def _counts(self) -> tuple[int, int]:
        return self.sent_bytes, self.received_bytes


class EngineSession(_SessionBase):
    """A portal session that the data plane (:mod:`tether.node.data_plane`) carries: its socket, its
    bytes, flow control, half-close and resets are the engine's (in Rust, off the GIL); this
    object keeps the session's place in its owner's table and its counters, and ends it when
    Python decides to (a policy recheck, the inlet deleted)."""

    data_plane = "rust"

    def __init__(
        self,
        node: BaseNode,
        address: str,
        channel: SecureChannel,
        peer_route: tuple[Address, ...],
        options: PortalOptions,
        owner: Any,
    ) -> None:
        super().__init__(node, address, channel, peer_route, options, owner)
        self.id: int | None = None
        self.registered: float | None = None  # when Python handed it to the engine
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
        sync: SyncMode,
        connect_prefix: str = "",
    ) -> None:
        """Hand the session to the engine (``sock``, if given, becomes the engine's: see
        :func:`tether.node.data_plane.hand_over`)."""
        header = encoded_header(self.peer_route[1:], (Address.local(self.address),))
        self.registered = time.monotonic()
        self.id = self.node.data_plane.add_session(
            self,
            self.channel,
            sock,
            header,
            match.encode(),
            match_return,
            self.options,
            open=open,
            sync=sync,
            connect_prefix=connect_prefix,
        )

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
        if not self._closed and self.id is not None:
            stats = self.node.data_plane.session_stats(self.id)
            if stats is not None:
                return stats
        return self._sent, self._received, 0

    def deliver(self, msg: RoutedMessage) -> None:
        """A message of the session that reached Python before the engine took it over."""
        if not self._closed and self.id is not None:
            self.node.data_plane.session_deliver(self.id, msg.payload)

    def abort(self, reason: str, notify: bool = False) -> None:
        """End the session now: the engine resets its socket (and tells the peer if
        ``notify``); the owner forgets it when the engine reports it ended."""
        if self._closed:
            return
        sent, received, _ = self._stats()
        if self.id is not None:
            self.node.data_plane.close_session(self.id, reason, notify)
        # Recorded now (the engine's report of the end comes later and is then ignored).
        self.engine_closed(reason, sent, received)

    def engine_opened(self, seconds: float) -> None:
        """The engine says the session is open, ``seconds`` after it was registered there (a
        session the engine opened by itself was registered when its opening began)."""
        if self._closed:
            return
        before = 0.0 if self.registered is None else max(0.0, self.registered - self.opening)
        self.awaits_open = False
        self.owner.record_open(before + seconds)

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
