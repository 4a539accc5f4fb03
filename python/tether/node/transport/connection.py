"""One TCP link between nodes and its protocol (``docs/routing.md``, "The TCP connection
protocol"): the hello, frames of routed messages, keepalives, the dead-peer, slow-frame and
drain timeouts, and the hand-over of an established link to the data plane. The listeners and
outgoing connections are :mod:`tether.node.transport.tcp`'s.

A connection starts with both sides sending a hello frame (``tether\\0`` + protocol version); until
a peer's hello has arrived, its frames may be at most ``hello_max_frame_len`` bytes and it has
``hello_timeout`` seconds. After that, frames are routed messages up to ``max_frame_len`` bytes
(checked before allocation by the Rust frame decoder), and an empty frame is a keepalive, sent
when the connection has been idle for ``keepalive`` seconds. A peer that sends nothing for
``dead_after`` seconds is dead; a frame that has started must be complete within
``frame_timeout`` seconds (a slow-drip peer cannot hold a connection open forever); a peer that
reads nothing for ``drain_timeout`` is stuck. Garbage, oversized frames, malformed messages and
those timeouts close that connection with a logged reason; the node goes on serving everyone
else.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tether._core import (
    ChannelMessage,
    Fragment,
    FrameDecoder,
    LinkMessage,
    LinkTimers,
    SendStatus,
    Sync,
    encode_frame,
    encode_frames,
)
from tether.core.errors import FrameError, RouteError, TetherError
from tether.core.message import Address, Origin, RoutedMessage
from tether.node.data_plane import DataPlane


class LinkHost(Protocol):
    """What a connection asks of its node (a :class:`~tether.node.node.BaseNode`): it names
    itself, counts what it drops, routes and reports what it receives, and hands its socket
    to the data plane."""

    @property
    def name(self) -> str: ...

    @property
    def counters(self) -> dict[str, int]: ...

    @property
    def backpressure(self) -> dict[str, int]: ...

    @property
    def data_plane(self) -> DataPlane: ...

    def count(self, what: str, n: int = 1) -> None: ...

    def next_id(self, prefix: str) -> str: ...

    async def route(
        self, msg: RoutedMessage, origin: Origin = ..., *, block: bool = True
    ) -> None: ...

    async def report(self, msg: RoutedMessage, reason: str) -> None: ...


class LinkOwner(Protocol):
    """What a connection asks of its transport (a
    :class:`~tether.node.transport.tcp.TcpTransport`)."""

    @property
    def node(self) -> LinkHost: ...

    @property
    def options(self) -> TcpOptions: ...

    def _forget(self, conn: Connection) -> None: ...


log = logging.getLogger("tether.tcp")

PROTOCOL_VERSION = 1
MAGIC = b"tether\0"
HELLO = MAGIC + bytes([PROTOCOL_VERSION])
FRAME_HEADER = 4
RECEIVE_SIZE = 256 * 1024
YIELD_EVERY = 16
"""A link's reader lets the event loop run other tasks at least every this many messages
(a quarter of the send queue: trio may run the reader twice before the writer, and the
replies it makes must fit the queue meanwhile)."""


@dataclass
class TcpOptions:
    max_frame_len: int = 256 * 1024
    hello_max_frame_len: int = 64
    hello_timeout: float = 5.0
    frame_timeout: float = 30.0
    keepalive: float = 10.0
    dead_after: float = 35.0
    connect_timeout: float = 10.0
    max_connections: int = 1024
    """At most this many links; never more than the descriptor limit in force allows
    (:func:`tether.node.limits.link_budget`)."""
    max_pending: int = 64
    """Connections still in their hello; when full, the oldest is dropped for a newcomer."""
    max_pending_per_source: int = 8
    max_connections_per_source: int = 128
    """Incoming connections from one IP address (in their hello, and in all)."""
    unauthenticated_idle: float = 10.0
    """An incoming link that carries no secure channel (and forwards for none) is closed once
    it has delivered nothing for this long: it cannot hold a slot by keeping alive. When the
    node is full, the longest idle such link makes room for a newcomer."""
    send_queue: int = 64
    batch_bytes: int = 256 * 1024
    drain_timeout: float = 60.0
    """A peer that takes none of the bytes queued for it for this long is closed (it is not
    reading: back-pressure is for slow peers, not for stuck ones), and a worker that takes no
    message for this long is reported busy to its senders."""


class ConnectionClosed(TetherError):
    pass


class Connection:
    def __init__(
        self, transport: LinkOwner, stream: SocketStream, outgoing: bool, peer: str
    ) -> None:
        self.transport = transport
        self.node = transport.node
        self.options = transport.options
        self.stream = stream
        self.outgoing = outgoing
        self.peer = peer
        self.address = self.node.next_id("tcp")
        self.key: str | None = None  # "host:port" for outgoing connections (reuse)
        self.sent = 0
        self.received = 0
        self.closed = anyio.Event()
        self.close_reason = ""
        self.ready = anyio.Event()
        self.ready_at: float | None = None  # when its hello was done
        self._send: MemoryObjectSendStream[bytes]
        self._recv: MemoryObjectReceiveStream[bytes]
        self._send, self._recv = anyio.create_memory_object_stream[bytes](self.options.send_queue)
        self._scope = anyio.CancelScope()
        self._me = Address.local(self.address)
        self.origin = Origin.link(self.address)
        self.source = peer.rpartition(":")[0].strip("[]")  # the peer's IP address
        self.channels: set[str] = set()
        """The open secure channels whose first hop this link is (``BaseNode.remember_channel``):
        while it carries one (or forwards for one, see ``tether.node.reach.Reach.grant``) it is
        kept while idle."""
        self.opened_at = time.monotonic()
        self.active_at = self.opened_at  # when it last delivered a message
        self._engine_received = 0  # the engine's count of its messages, when last looked at
        # Keepalives, dead peers, slow frames, stuck peers: the same rules as the engine's.
        self.timers = LinkTimers(
            self.options.keepalive,
            self.options.dead_after,
            self.options.frame_timeout,
            self.options.drain_timeout,
            time.monotonic(),
        )
        self._pending = 0  # frames given to the writer and not yet written
        self._wlock = anyio.Lock()  # held while a task writes to the socket
        self._raw: Any = None  # the socket, for non-blocking sends (after the hello)
        # When the data plane (tether.node.data_plane) carries it, the socket is the plane's
        # after the hello:
        self._link: int | None = None  # its link id there
        self._inbox: deque[LinkMessage | ChannelMessage | Fragment | Sync] = deque()
        self._inbox_wake = anyio.Event()
        self._congested = False  # the engine's queue is over its high-water mark
        self._drained = anyio.Event()
        self._unsent: list[bytes] = []  # frames the engine could not send before closing

    def info(self) -> dict[str, object]:
        sent, received = self.sent, self.received
        stats = self.node.data_plane.link_stats(self._link) if self._link is not None else None
        if stats is not None:
            received, sent, _queued = stats
        return {
            "address": self.address,
            "peer": self.peer,
            "direction": "outgoing" if self.outgoing else "incoming",
            "sent": sent,
            "received": received,
            "data_plane": self.node.data_plane.kind if self._link is not None else "python",
        }

    async def send(self, msg: RoutedMessage, *, block: bool = True) -> None:
        """Queue a message (waits while the queue is full: back-pressure). With ``block``
        False nothing waits: a message that cannot be queued at once is dropped (counted)."""
        framed = msg.encode_frame()
        self._check_len(len(framed) - FRAME_HEADER)
        if block:
            await self._queue(framed)
        else:
            self.send_nowait(framed)

    def send_nowait(self, framed: bytes) -> bool:
        """Queue one frame if that needs no waiting (False: dropped, and counted, because the
        peer is not reading fast enough; raises if the connection is closed)."""
        if self.close_reason:
            raise self._closed_error()
        if self._link is not None:
            if self._congested:
                self.node.count("dropped: link congested")
                return False
            status = self.node.data_plane.send(self._link, framed)
            if status == SendStatus.CLOSED:
                raise self._closed_error()
            if status == SendStatus.CONGESTED:  # queued; what follows is dropped until it drains
                self._congested = True
                self._drained = anyio.Event()
            self.sent += 1
            return True
        try:
            self._send.send_nowait(framed)
        except anyio.WouldBlock:
            self.node.count("dropped: link congested")
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise self._closed_error() from None
        self._pending += 1
        return True

    async def send_many(self, msgs: Sequence[RoutedMessage]) -> None:
        """Queue messages as one unit (nothing else is sent between them)."""
        frames = []
        for msg in msgs:
            data = msg.encode()
            self._check_len(len(data))
            frames.append(data)
        await self._queue(encode_frames(frames))

    async def send_framed(self, framed: bytes) -> None:
        """Queue one ready-made frame (its 4-byte length included) carrying a routed message."""
        self._check_len(len(framed) - FRAME_HEADER)
        await self._queue(framed)

    def _check_len(self, n: int) -> None:
        if n > self.options.max_frame_len:
            # The peer would refuse the frame and drop the connection: refuse it here instead.
            raise RouteError(
                f"message of {n} bytes exceeds the {self.options.max_frame_len}-byte "
                f"frame limit of connection {self.address}; send bulk data through a secure "
                "channel, which splits it"
            )

    async def _queue(self, framed: bytes) -> None:
        if self._link is not None:
            await self._engine_send(framed)
            return
        if self._raw is not None and not self._pending and not self._wlock.locked():
            # Nothing is queued, in the writer's hands or being written: send now, with no task
            # switch (the socket is non-blocking). If the kernel takes only part, finish this
            # frame here, holding the write lock (taken without an await, so nothing overtakes).
            sent = self._send_now(framed)
            if sent < len(framed):
                self._wlock.acquire_nowait()
                self.timers.send_blocked(time.monotonic())
                try:
                    await self.stream.send(framed[sent:])
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
                    self.close(f"send failed: {e}")
                    raise self._closed_error() from None
                finally:
                    self.timers.sent(time.monotonic())
                    self._wlock.release()
            self.sent += 1
            return
        self._pending += 1  # counted until the writer has written it: no direct send meanwhile
        try:
            try:
                self._send.send_nowait(framed)
            except anyio.WouldBlock:
                # The link's queue is full: this sender waits (back-pressure, counted).
                self.node.backpressure["link_congested"] += 1
                await self._send.send(framed)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._pending -= 1
            raise self._closed_error() from None

    async def _engine_send(self, framed: bytes) -> None:
        """Hand frames to the engine (it writes at once when nothing is queued); while its
        queue for this link is over the high-water mark, wait for it to drain."""
        while self._congested and not self.close_reason:
            await self._drained.wait()
        link = self._link
        if self.close_reason or link is None:
            raise self._closed_error()
        status = self.node.data_plane.send(link, framed)
        if status == SendStatus.CLOSED:
            raise self._closed_error()
        if status == SendStatus.CONGESTED and not self._congested:
            self._congested = True
            self._drained = anyio.Event()
        self.sent += 1

    def engine_event(self, ev: LinkMessage | ChannelMessage | Fragment | Sync) -> None:
        """An event of this connection from the data plane (delivered in order by its
        reader)."""
        self._inbox.append(ev)
        self._inbox_wake.set()

    def engine_drained(self) -> None:
        self._congested = False
        self._drained.set()

    def engine_closed(self, reason: str, unsent: list[bytes]) -> None:
        """The engine closed the link (the peer, a timeout, bad input): close this too."""
        self._unsent = unsent
        self.close(reason)

    async def _engine_reader(self) -> None:
        """Deliver the engine's events for this connection, in order; each is acknowledged
        once delivered (the engine stops reading the link while too much waits here)."""
        data_plane = self.node.data_plane
        assert self._link is not None
        link = self._link
        handled = 0
        while True:
            while not self._inbox:
                self._inbox_wake = anyio.Event()
                await self._inbox_wake.wait()
            handled += 1
            if handled % YIELD_EVERY == 0:
                await anyio.lowlevel.checkpoint()  # one peer's backlog never hogs the loop
            match self._inbox.popleft():
                case LinkMessage(message=message, charge=charge):
                    await self._forward(*message)  # decoded and checked by the engine already
                case ChannelMessage(channel=cid, message=message, charge=charge):
                    channel = data_plane.channel(cid)
                    if channel is not None:
                        await channel.deliver_inner(*message)
                case Fragment(channel=cid, plain=plain, nonce=nonce, charge=charge):
                    channel = data_plane.channel(cid)
                    if channel is not None:
                        await channel.deliver_plain(plain, nonce)
                case Sync(session=session):
                    data_plane.session_synced(session)
                    continue
            data_plane.ack(link, charge)

    def plane_grants(self) -> bool:
        """Whether a forwarder granted a channel this link in the data plane; also notes the
        messages the plane delivered on it since last asked (``active_at``)."""
        if self._link is None:
            return False
        stats = self.node.data_plane.link_stats(self._link)
        if stats is not None and stats[0] != self._engine_received:
            self._engine_received = stats[0]
            self.active_at = time.monotonic()
        return self.node.data_plane.link_has_grants(self._link)

    def pending_events(self) -> bool:
        """Whether events of this connection wait to be delivered."""
        return bool(self._inbox)

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(
            f"connection {self.address} to {self.peer} is closed"
            f"{': ' + self.close_reason if self.close_reason else ''}"
        )

    def _send_now(self, data: bytes) -> int:
        """A non-blocking send straight to the socket: the bytes the kernel took."""
        if self.close_reason:
            return 0
        try:
            return int(self._raw.send(data))
        except BlockingIOError:
            return 0
        except OSError as e:
            self.close(f"send failed: {e.strerror or e}")
            raise ConnectionClosed(
                f"connection {self.address} to {self.peer} failed: {e}"
            ) from None

    def close(self, reason: str, *, quiet: bool = False) -> None:
        """Close with ``reason`` (logged; at debug level when ``quiet``: a close a flood
        causes by the thousand, counted in ``node.counters`` instead)."""
        if not self.close_reason:
            self.close_reason = reason
            level = (
                logging.DEBUG
                if quiet
                else logging.INFO
                if reason in ("closed by peer", "node stopped")
                else logging.WARNING
            )
            log.log(
                level,
                "%s: closed connection %s (%s): %s",
                self.node.name,
                self.address,
                self.peer,
                reason,
            )
        self._scope.cancel()
        self._drained.set()

    async def run(self) -> None:
        """Hello, then read and write until closed. Never raises: every failure becomes the
        connection's logged close reason (and each task catches its own, so nothing crosses a
        task group as an exception group)."""
        try:
            with self._scope:
                decoder = FrameDecoder(max_frame_len=self.options.hello_max_frame_len)
                rest = await self._guarded(self._hello, decoder)
                if rest is not None:
                    self._link = self.node.data_plane.add_link(self, self._raw, rest, self.options)
                    self._ready()
                    if self._link is not None:
                        await self._guarded(self._engine_reader)
                    else:
                        await self._guarded(self._serve, decoder, rest)
        finally:
            if self._link is not None:
                self.node.data_plane.close_link(self._link, self.close_reason)
            # Also when the node stops (its task group cancelled): the socket is closed now, so
            # the peer learns at once rather than after its dead-peer timeout.
            self.closed.set()
            self._send.close()
            with anyio.CancelScope(shield=True):
                await self._report_unsent()
                self._recv.close()
                with anyio.move_on_after(1):
                    await self.stream.aclose()
            self.transport._forget(self)

    def _ready(self) -> None:
        self.ready_at = self.active_at = time.monotonic()
        self.ready.set()

    async def _serve(self, decoder: FrameDecoder, rest: bytes) -> None:
        """The connection in Python (no data plane): a reader, a writer and a watchdog."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._guarded, self._writer)
            tg.start_soon(self._guarded, self._watchdog)
            await self._guarded(self._reader, decoder, rest)
            tg.cancel_scope.cancel()

    async def _report_unsent(self) -> None:
        """Messages still queued when the connection closed: tell their senders."""
        reason = f"connection {self.address} to {self.peer} closed: {self.close_reason}"
        unsent, self._unsent = self._unsent, []
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            while True:
                if unsent:
                    data = unsent.pop(0)
                else:
                    try:
                        data = self._recv.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                        return
                # A queue item is one or more frames (see send_many).
                for frame in FrameDecoder(max_frame_len=self.options.max_frame_len).feed(data):
                    try:
                        msg = RoutedMessage.decode(frame)
                    except RouteError:
                        continue
                    # Already popped past this hop: report along its return route.
                    await self.node.report(msg, f"at node {self.node.name}: {reason}")

    async def _guarded(self, fn: Any, *args: Any) -> Any:
        try:
            return await fn(*args)
        except TimeoutError:
            self.close(f"no hello within {self.options.hello_timeout:g} s")
        except FrameError as e:
            self.close(f"bad framing: {e}")
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.close("closed by peer")
        except OSError as e:
            self.close(f"socket error: {e.strerror or e}")
        except ConnectionClosed as e:
            self.close(str(e))
        except TetherError as e:
            self.close(f"error: {e}")
        except Exception as e:  # a bug: log it, lose this connection, keep the node
            log.exception("%s: connection %s failed", self.node.name, self.address)
            self.close(f"internal error: {type(e).__name__}")
        return None

    async def _hello(self, decoder: FrameDecoder) -> bytes:
        await self.stream.send(encode_frame(HELLO))
        with anyio.fail_after(self.options.hello_timeout):
            hello, rest = await self._read_hello(decoder)
        self._check_hello(hello)
        # Only the hello frame is held to the small limit: the peer's first messages may
        # arrive in the same read, and are decoded with the full one.
        decoder.max_frame_len = self.options.max_frame_len
        raw = self.stream.extra(SocketAttribute.raw_socket, None)
        # Only a plain non-blocking socket that the event loop does not buffer for (trio's):
        # asyncio's transports keep their own write buffer, which a direct send would overtake.
        if type(raw) is socket.socket and not raw.getblocking():
            self._raw = raw
        return rest

    async def _read_hello(self, decoder: FrameDecoder) -> tuple[bytes, bytes]:
        """Read exactly the hello frame (through ``decoder`` and its small limit); return it
        and the bytes that followed it in the same reads."""
        buf = b""
        while len(buf) < FRAME_HEADER:
            buf += await self.stream.receive(4096)
        length = int.from_bytes(buf[:FRAME_HEADER], "big")
        if length > decoder.max_frame_len:
            decoder.feed(buf[:FRAME_HEADER])  # raises FrameTooLargeError, before any allocation
        while len(buf) < FRAME_HEADER + length:
            buf += await self.stream.receive(4096)
        (hello,) = decoder.feed(buf[: FRAME_HEADER + length])
        return hello, buf[FRAME_HEADER + length :]

    def _check_hello(self, hello: bytes) -> None:
        if not hello.startswith(MAGIC) or len(hello) != len(HELLO):
            raise ConnectionClosed("the peer is not a tether node (bad hello)")
        if hello[-1] != PROTOCOL_VERSION:
            raise ConnectionClosed(
                f"the peer speaks tether protocol version {hello[-1]}, this node "
                f"{PROTOCOL_VERSION}; upgrade the older one"
            )

    async def _reader(self, decoder: FrameDecoder, rest: bytes) -> None:
        """Read and deliver frames, beginning with ``rest`` (what was read with the hello).
        The messages a read completed before a framing error are delivered before the error
        closes the link. The timeouts (a silent peer, a frame dripping in too slowly) are the
        watchdog's: no cancel scope per read on the hot path."""
        timers = self.timers
        chunk = rest
        while True:
            if not chunk:
                chunk = await self.stream.receive(RECEIVE_SIZE)
            broken: FrameError | None = None
            # Frames decoded straight into messages (one copy of each payload, in Rust).
            try:
                messages = decoder.feed_messages(chunk)
            except FrameError as e:
                messages, broken = e.frames, e
            chunk = b""
            now = time.monotonic()
            timers.received(now, bool(decoder.buffered))
            if messages:
                # Time blocked handing frames on (back-pressure) is not peer silence.
                timers.delivering(True, now)
                try:
                    for i, m in enumerate(messages, 1):
                        if isinstance(m, TetherError):  # a RouteError in its place
                            raise ConnectionClosed(f"malformed message from the peer: {m}")
                        await self._forward(*m)
                        if i % YIELD_EVERY == 0:
                            # Handling may never suspend (refusals, reports): let the others,
                            # this link's writer among them, have a turn.
                            await anyio.lowlevel.checkpoint()
                finally:
                    timers.delivering(False, time.monotonic())
            if broken is not None:
                raise broken

    async def _watchdog(self) -> None:
        """Close the connection when its timers say so (``tether._core.LinkTimers``, the
        engine's rules: a silent peer, a frame not completed in time, a write the peer does
        not drain)."""
        while True:
            reason, _, wait = self.timers.check(time.monotonic(), self._wlock.locked())
            if reason is not None:
                raise ConnectionClosed(reason)
            await anyio.sleep(max(0.01, wait))

    async def _forward(
        self,
        onward: Sequence[tuple[int, bytes]],
        return_route: Sequence[tuple[int, bytes]],
        payload: bytes,
    ) -> None:
        self.received += 1
        self.active_at = time.monotonic()
        # The receiving end of a link is the hop that pushes itself onto the return route.
        await self.node.route(
            RoutedMessage(
                tuple(Address(t, v) for t, v in onward),
                (self._me, *(Address(t, v) for t, v in return_route)),
                payload,
            ),
            self.origin,
        )

    async def _writer(self) -> None:
        o = self.options
        while True:
            item = None
            with anyio.move_on_after(self.timers.keepalive_in(time.monotonic())):
                item = await self._recv.receive()
            if item is None:
                async with self._wlock:  # never inside another frame
                    await self.stream.send(b"\0\0\0\0")  # keepalive: an empty frame
                self.timers.sent(time.monotonic())
                continue
            batch = [item]
            size = len(item)
            while size < o.batch_bytes:
                try:
                    more = self._recv.receive_nowait()
                except anyio.WouldBlock:
                    break
                batch.append(more)
                size += len(more)
            async with self._wlock:
                self.timers.send_blocked(time.monotonic())
                try:
                    await self.stream.send(batch[0] if len(batch) == 1 else b"".join(batch))
                finally:
                    self.timers.sent(time.monotonic())
            self.sent += len(batch)
            self._pending -= len(batch)
