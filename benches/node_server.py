"""Server side of the node benchmarks (``benches/node_cases.py``), run as its own process.

    python benches/node_server.py NAME

One trio event loop (one process, so its own GIL) runs, all on 127.0.0.1 with ports the kernel
picks:

* a tether :class:`~tether.node.Node` named NAME with a TCP listener, its built-in ``echo``
  worker and a ``count`` worker (counts data messages and their bytes; a message with an empty
  payload is a query, answered along its return route with the totals);
* the plain trio baselines: an echo server (echoes every length-prefixed frame it receives, one
  write per read) and a counting server (counts frames and bytes per connection; an empty frame
  is a query, answered with the totals).

Frames are a 4-byte big-endian length and the payload, decoded with the usual pure-Python
``bytearray`` + ``struct.unpack_from`` idiom (the same as ``cases.PyFrameDecoder``).

When everything listens, the process prints one JSON line ``{"node": PORT, "echo": PORT,
"count": PORT}`` on stdout, then serves until its stdin reaches end of file: the parent closes it
to stop the server, and the kernel closes it if the parent dies, so a server never outlives the
benchmark run.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from dataclasses import dataclass
from functools import partial

import trio

from tether.node import Message, Node, WorkerContext

HOST = "127.0.0.1"
HEADER = struct.Struct(">I")
TOTALS = struct.Struct(">QQ")
"""Answer to a count query: messages counted, payload bytes counted."""
READ_SIZE = 65536
MAX_FRAME_LEN = 1 << 20


class FrameReader:
    """Length-prefixed frames from a byte stream: a ``bytearray`` buffer and ``unpack_from``."""

    def __init__(self, max_frame_len: int = MAX_FRAME_LEN) -> None:
        self._buf = bytearray()
        self._max = max_frame_len

    def feed(self, data: bytes) -> list[bytearray]:
        buf = self._buf
        buf += data
        unpack_from = HEADER.unpack_from
        frames = []
        pos, end_of_data = 0, len(buf)
        while end_of_data - pos >= 4:
            (length,) = unpack_from(buf, pos)
            if length > self._max:
                raise ValueError(f"frame of {length} bytes exceeds {self._max}")
            end = pos + 4 + length
            if end > end_of_data:
                break
            frames.append(buf[pos + 4 : end])
            pos = end
        if pos:
            del buf[:pos]
        return frames


def encode(frames: list[bytes] | list[bytearray]) -> bytes:
    """Frames as one buffer: each payload behind its 4-byte length."""
    pack = HEADER.pack
    return b"".join([part for f in frames for part in (pack(len(f)), f)])


# --- trio baselines --------------------------------------------------------------------------


async def echo_server(stream: trio.SocketStream) -> None:
    reader = FrameReader()
    async with stream:
        while chunk := await stream.receive_some(READ_SIZE):
            frames = reader.feed(chunk)
            if frames:
                await stream.send_all(encode(frames))


async def count_server(stream: trio.SocketStream) -> None:
    reader = FrameReader()
    count = nbytes = 0
    async with stream:
        while chunk := await stream.receive_some(READ_SIZE):
            for f in reader.feed(chunk):
                if f:
                    count += 1
                    nbytes += len(f)
                else:
                    await stream.send_all(TOTALS.pack(count, nbytes))


# --- tether ----------------------------------------------------------------------------------


@dataclass
class Counter:
    count: int = 0
    nbytes: int = 0

    async def __call__(self, ctx: WorkerContext, msg: Message) -> None:
        if msg.payload:
            self.count += 1
            self.nbytes += len(msg.payload)
        else:
            await ctx.reply(msg, TOTALS.pack(self.count, self.nbytes))


async def _until_stdin_closes() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(4096):
            pass


async def serve(name: str) -> None:
    async with Node(name) as node, trio.open_nursery() as nursery:
        await node.start_worker("count", Counter())
        listener = await node.listen_tcp(HOST, 0)
        echo = (await nursery.start(partial(trio.serve_tcp, echo_server, 0, host=HOST)))[0]
        count = (await nursery.start(partial(trio.serve_tcp, count_server, 0, host=HOST)))[0]
        ports = {
            "node": listener.port,
            "echo": echo.socket.getsockname()[1],
            "count": count.socket.getsockname()[1],
        }
        print(json.dumps(ports), flush=True)
        await _until_stdin_closes()
        nursery.cancel_scope.cancel()


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        trio.run(serve, sys.argv[1])
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
