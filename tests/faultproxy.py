"""A loopback TCP proxy that injects network faults, for tests of what runs over TCP.

Put it between two endpoints (a node and another node's TCP listener, say) and set its
:class:`Faults`: each byte still goes through in order unless the fault says otherwise.

* ``latency``: every chunk is delivered this many seconds after it was read (pipelined: the
  bandwidth stays, only the delay is added).
* ``slice``: chunks are written this many bytes at a time (1: one byte per segment, with
  ``TCP_NODELAY``), so the receiver sees its stream cut at every possible place.
* ``bandwidth``: at most this many bytes per second in each direction.
* ``reset_after``: once this many bytes went through (both directions together), the proxy
  resets both connections (RST, not an orderly close) and counts it in ``resets``.
* ``blackhole_after``: once this many bytes went through, the proxy forwards nothing more but
  keeps both connections open, reading and dropping what arrives, like a path that silently
  lost its packets (after ACKs: the senders see no back-pressure either).

``record`` (a list) collects every chunk that goes through, both directions, as it was read:
what a node on the other side of the proxy sent and received on the wire.

Faults apply to every connection, and may be changed while the proxy runs (``proxy.faults =
Faults()`` heals it for new bytes; the byte count is per connection).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

CHUNK = 65536


@dataclass
class Faults:
    latency: float = 0.0
    slice: int = 0
    bandwidth: float = 0.0
    reset_after: int | None = None
    blackhole_after: int | None = None


def _raw(stream: SocketStream) -> socket.socket:
    sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
    return sock


def reset(stream: SocketStream) -> None:
    """Make the next close of ``stream`` send RST (SO_LINGER with a zero timeout)."""
    with contextlib.suppress(Exception):
        _raw(stream).setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Link:
    """One proxied connection: two streams and the bytes that went through."""

    def __init__(self, proxy: FaultProxy, a: SocketStream, b: SocketStream) -> None:
        self.proxy = proxy
        self.a = a
        self.b = b
        self.forwarded = 0
        self.cut = anyio.Event()
        self.blackholed = False

    def allowance(self, n: int) -> int:
        """How many of the next ``n`` bytes may go through before a fault fires."""
        f = self.proxy.faults
        limits = [x for x in (f.reset_after, f.blackhole_after) if x is not None]
        if not limits:
            return n
        return max(0, min(n, min(limits) - self.forwarded))

    def fire(self) -> None:
        f = self.proxy.faults
        if f.reset_after is not None and self.forwarded >= f.reset_after:
            if not self.cut.is_set():
                self.proxy.resets += 1
                reset(self.a)
                reset(self.b)
                self.cut.set()
        elif f.blackhole_after is not None and self.forwarded >= f.blackhole_after:
            if not self.blackholed:
                self.proxy.blackholes += 1
            self.blackholed = True


class FaultProxy:
    """Listens on ``127.0.0.1`` (``port`` once started) and forwards to ``target``."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        faults: Faults | None = None,
        record: list[bytes] | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.record = record
        self.faults = faults or Faults()
        self.port = 0
        self.connections = 0
        self.resets = 0
        self.blackholes = 0
        self._scope = anyio.CancelScope()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` (start it with ``await task_group.start(proxy.serve)``)."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(SocketAttribute.local_port)
        task_status.started()
        with self._scope:
            async with listener:
                await listener.serve(self._handle)

    def stop(self) -> None:
        self._scope.cancel()

    async def _handle(self, client: SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await anyio.connect_tcp(*self.target)
        except OSError:
            reset(client)
            await client.aclose()
            return
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                _raw(s).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(self, client, upstream)
        try:
            async with anyio.create_task_group() as tg:

                async def watch_cut() -> None:
                    await link.cut.wait()
                    tg.cancel_scope.cancel()

                async def both_done() -> None:
                    async with anyio.create_task_group() as pumps:
                        pumps.start_soon(self._pump, link, client, upstream)
                        pumps.start_soon(self._pump, link, upstream, client)
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_cut)
                tg.start_soon(both_done)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()
                await upstream.aclose()

    async def _pump(self, link: _Link, src: SocketStream, dst: SocketStream) -> None:
        """src → dst with the faults; a delay line (a bounded queue of timed chunks) between the
        reader and the writer gives latency without lowering the bandwidth."""
        send, receive = anyio.create_memory_object_stream[tuple[float, bytes]](64)
        clock = [time.monotonic()]  # the bandwidth cap's schedule: when the next byte may go

        async def writer() -> None:
            async with receive:
                async for due, chunk in receive:
                    delay = due - time.monotonic()
                    if delay > 0:
                        await anyio.sleep(delay)
                    await self._write(dst, chunk, clock)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                async with send:
                    while True:
                        try:
                            data = await src.receive(CHUNK)
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            break
                        if self.record is not None:
                            self.record.append(data)
                        if link.blackholed:
                            continue  # read and drop: the sender sees no back-pressure
                        n = link.allowance(len(data))
                        if n:
                            link.forwarded += n
                            await send.send((time.monotonic() + self.faults.latency, data[:n]))
                        link.fire()
                # The writer drains what is queued; the end of the stream follows it.
            if link.blackholed:
                await anyio.sleep_forever()  # keep the connection open, and silent
            if not link.cut.is_set():
                with contextlib.suppress(Exception):
                    await dst.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            link.cut.set()  # the other side failed: end this link

    async def _write(self, dst: SocketStream, chunk: bytes, clock: list[float]) -> None:
        f = self.faults
        step = f.slice if f.slice > 0 else len(chunk)
        if f.bandwidth > 0:
            step = min(step, max(1, int(f.bandwidth / 50)))  # ~20 ms of data per write
            clock[0] = max(clock[0], time.monotonic() - 0.05)  # no credit saved up while idle
        for i in range(0, len(chunk), step):
            piece = chunk[i : i + step]
            await dst.send(piece)
            if f.bandwidth > 0:
                clock[0] += len(piece) / f.bandwidth
                await anyio.sleep(max(0.0, clock[0] - time.monotonic()))
