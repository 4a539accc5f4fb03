"""Node benchmarks for ``benches/run.py``: tether nodes over loopback TCP vs plain trio.

What runs where:

* **Server processes.** Two ``benches/node_server.py`` processes, A and B, each one trio event
  loop with a tether node (built-in ``echo`` worker, a ``count`` worker) and the plain trio
  baseline servers (an echo server and a counting server for length-prefixed frames). They are
  started once, when the first node group is built, and stopped by :func:`close` (``run.py``
  calls it when the run ends, also on errors; ``atexit`` is the fallback, and a server also exits
  by itself when its stdin reaches end of file, which the kernel ensures if this process dies).
* **This process.** The client side of every variant — the client tether node and the trio
  client connections — runs in one trio event loop in a background thread (an anyio blocking
  portal). A variant's ``run(n)`` hands its ``n`` iterations to that loop and blocks until they
  are done, so the main thread holds no GIL while a round is timed.

So client and server never share a GIL; on 2 cores each side has about one core. Only one variant
runs at a time: the other side's servers sit idle in ``receive``.

Groups (all on 127.0.0.1; ``TCP_NODELAY`` on every socket, trio's default):

* ``node/request-64``: 64-byte request/reply round trips, 32 in flight. tether: 32 tasks calling
  ``Node.request`` on A's ``echo`` (the node carries all of them over its one connection to A).
  trio: one connection to A's echo server with 32 frames pipelined (a reply read lets as many new
  frames be sent, in one write), the like-for-like counterpart of tether's single multiplexed
  connection; 32 connections with one message each would instead compare against a different
  socket pattern (one syscall per message on each side, no coalescing).
* ``node/latency-64``: one 64-byte request at a time. tether over two TCP hops, client → A → B's
  ``echo`` (and, for context, one hop, client → A's ``echo``); trio: a round trip on one
  connection to A's echo server. Rates count hops, so one over the median is the time per hop.
* ``node/bulk-65536``: one-way 64 KiB messages. tether: ``Node.send`` to A's ``count`` worker in a
  loop, then one ``request`` that returns the worker's totals, which must equal what was sent
  (the worker handles its mailbox in order, so the answer comes after the last message); trio:
  frames written to A's counting server, then an empty frame that returns its totals.

Routes are parsed once, outside the timed loop (``Node.request`` and ``Node.send`` take parsed
routes as well as strings), so the rows measure messaging, not the route-string parser.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from cases import BenchmarkError, _check
from harness import Group, Measurement, Runner, Variant
from node_server import HEADER, READ_SIZE, TOTALS, FrameReader, encode
from tether.api import Node
from tether.core.message import Address

SERVER = Path(__file__).resolve().parent / "node_server.py"
CONCURRENCY = 32
SMALL = 64
BULK = 65536
HOPS = 2
TIMEOUT = 30.0
"""Reply timeout of every tether request (a stuck benchmark fails instead of hanging)."""
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

KEY_REQUEST = f"node/request-{SMALL}"
KEY_LATENCY = f"node/latency-{SMALL}"
KEY_BULK = f"node/bulk-{BULK}"

TETHER_REQUEST = f"tether request x{CONCURRENCY}"
TRIO_REQUEST = f"trio echo, {CONCURRENCY} pipelined"
TETHER_2HOP = "tether 2 hops (c-A-B)"
TETHER_1HOP = "tether 1 hop (c-A)"
TRIO_1HOP = "trio echo (1 hop)"
TETHER_BULK = "tether send"
TRIO_BULK = "trio send"


# --- processes and the client event loop ------------------------------------------------------


def _read_ready(proc: subprocess.Popen[bytes], name: str) -> dict[str, Any]:
    """The JSON line a server prints when it listens (its ports, and more with ``--channel``)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], STARTUP_TIMEOUT)
    line = proc.stdout.readline() if ready else b""
    if not line:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(1)
        raise BenchmarkError(
            f"node server {name} did not start (exit status {proc.poll()}); see its stderr above"
        )
    info: dict[str, Any] = json.loads(line)
    return info


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close the server's stdin (its signal to stop), wait, kill it if it does not exit."""
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            with suppress(OSError):
                f.close()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def _server(name: str, *options: str) -> Iterator[dict[str, Any]]:
    """Server process ``name`` (``node_server.py NAME [OPTIONS]``) and its start-up line."""
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), name, *options], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        yield _read_ready(proc, name)
    finally:
        _stop(proc)


class ClientLoop:
    """A trio event loop on a background thread, and everything opened in it or for it (an
    ExitStack); :meth:`close` closes it all, in reverse order."""

    def __init__(self) -> None:
        self._stack = ExitStack()

    def _start_loop(self) -> None:
        self.portal: BlockingPortal = self._stack.enter_context(start_blocking_portal("trio"))

    def runner(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Runner:
        """``run(n)``: ``fn(*args, n)`` in the client event loop."""
        call, bound = self.portal.call, partial(fn, *args)

        def run(n: int) -> None:
            call(bound, n)

        return run

    def close(self) -> None:
        self._stack.close()


L = TypeVar("L", bound=ClientLoop)


class Singleton(Generic[L]):
    """One lazily made instance, closed at exit or by :meth:`close` (idempotent)."""

    def __init__(self, make: Callable[[], L]) -> None:
        self._make = make
        self._value: L | None = None

    def get(self) -> L:
        if self._value is None:
            self._value = self._make()
            atexit.register(self.close)
        return self._value

    def close(self) -> None:
        if self._value is not None:
            value, self._value = self._value, None
            value.close()


class Session(ClientLoop):
    """Servers A and B, and the client event loop with its tether node; closed by :func:`close`."""

    def __init__(self) -> None:
        super().__init__()
        try:
            self.a = self._stack.enter_context(_server("bench-a"))
            self.b = self._stack.enter_context(_server("bench-b"))
            self._start_loop()
            self.node: Node = self._stack.enter_context(
                self.portal.wrap_async_context_manager(Node("bench-client"))
            )
        except BaseException:
            self._stack.close()
            raise

    def route(self, text: str) -> tuple[Address, ...]:
        """``text`` parsed, after one request with an empty payload has opened its connections
        (so connection set-up stays out of the timed code)."""
        route = self.node.parse_route(text)
        self.portal.call(self.node.request, route, b"")
        return route

    def connect(self, port: int) -> trio.SocketStream:
        """A trio client connection, closed (before the event loop stops) by :meth:`close`."""
        stream: trio.SocketStream = self.portal.call(trio.open_tcp_stream, "127.0.0.1", port)
        self._stack.callback(self.portal.call, stream.aclose)
        return stream


_sessions = Singleton(Session)


def session() -> Session:
    return _sessions.get()


def close() -> None:
    """Stop the client node, the client event loop and the server processes (idempotent)."""
    _sessions.close()


# --- the operations, run in the client event loop ---------------------------------------------


async def _receive_frames(stream: trio.abc.Stream, reader: FrameReader) -> list[bytearray]:
    """At least one frame."""
    while True:
        chunk = await stream.receive_some(READ_SIZE)
        if not chunk:
            raise BenchmarkError("the trio server closed the connection")
        frames = reader.feed(chunk)
        if frames:
            return frames


async def _receive_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise BenchmarkError("the trio server closed the connection")
        data += chunk
    return data


async def tether_requests(
    node: Node, route: Sequence[Address], payload: bytes, concurrency: int, n: int
) -> None:
    """``n`` requests from ``concurrency`` tasks (each sends its next one when its reply came)."""
    remaining = n

    async def caller() -> None:
        nonlocal remaining
        request = node.request
        while remaining > 0:
            remaining -= 1
            await request(route, payload, timeout=TIMEOUT)

    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, n)):
            nursery.start_soon(caller)


async def trio_pipelined(
    stream: trio.abc.Stream,
    payload: bytes,
    window: int,
    n: int,
    replies: list[bytes] | None = None,
) -> None:
    """``n`` echo round trips on one connection, ``window`` frames in flight."""
    reader = FrameReader()
    sent = min(window, n)
    await stream.send_all(encode([payload] * sent))
    received = 0
    while received < n:
        frames = await _receive_frames(stream, reader)
        received += len(frames)
        if replies is not None:
            replies.extend(bytes(f) for f in frames)
        more = min(len(frames), n - sent)
        if more:
            await stream.send_all(encode([payload] * more))
            sent += more
    if received != n:
        raise BenchmarkError(f"trio echo: {received} replies to {n} messages")


async def tether_serial(node: Node, route: Sequence[Address], payload: bytes, n: int) -> None:
    request = node.request
    for _ in range(n):
        await request(route, payload, timeout=TIMEOUT)


async def trio_serial(stream: trio.abc.Stream, payload: bytes, n: int) -> bytes:
    """``n`` echo round trips, one at a time; returns the last reply."""
    reader = FrameReader()
    frames: list[bytearray] = []
    for _ in range(n):
        await stream.send_all(encode([payload]))
        frames = await _receive_frames(stream, reader)
    _check(len(frames) <= 1, "trio echo: one reply per message")
    return bytes(frames[0]) if frames else b""


@dataclass
class Totals:
    """What a counting server must have counted: everything this client sent it."""

    count: int = 0
    nbytes: int = 0

    def expect(self, n: int, size: int, answer: bytes, who: str) -> None:
        self.count += n
        self.nbytes += n * size
        got = TOTALS.unpack(answer)
        _check(got == (self.count, self.nbytes), f"{who} counted {got}, sent {self.astuple()}")

    def astuple(self) -> tuple[int, int]:
        return self.count, self.nbytes


async def tether_bulk(
    node: Node, route: Sequence[Address], payload: bytes, totals: Totals, n: int
) -> None:
    send = node.send
    for _ in range(n):
        await send(route, payload)
    totals.expect(n, len(payload), await node.request(route, b"", timeout=TIMEOUT), "count worker")


async def trio_bulk(stream: trio.abc.Stream, payload: bytes, totals: Totals, n: int) -> None:
    pack = HEADER.pack
    for _ in range(n):
        await stream.send_all(pack(len(payload)) + payload)
    await stream.send_all(pack(0))
    totals.expect(
        n, len(payload), await _receive_exactly(stream, TOTALS.size), "trio counting server"
    )


# --- groups ------------------------------------------------------------------------------------


def request_group() -> Group:
    """64-byte request/reply round trips through two nodes, 32 in flight."""
    s = session()
    route = s.route(f"/ip4/127.0.0.1/tcp/{s.a['node']}/service/echo")
    payload = os.urandom(SMALL)
    stream = s.connect(s.a["echo"])

    probe = os.urandom(SMALL)
    _check(s.portal.call(s.node.request, route, probe) == probe, "tether echo over TCP")
    s.portal.call(tether_requests, s.node, route, payload, CONCURRENCY, 4 * CONCURRENCY)
    replies: list[bytes] = []
    s.portal.call(trio_pipelined, stream, payload, CONCURRENCY, 4 * CONCURRENCY, replies)
    _check(replies == [payload] * (4 * CONCURRENCY), "trio pipelined echo")

    return Group(
        key=KEY_REQUEST,
        title=f"Request/reply, {SMALL} B, {CONCURRENCY} in flight, client -> node A echo",
        unit="round trips/s",
        variants=[
            Variant(TETHER_REQUEST, s.runner(tether_requests, s.node, route, payload, CONCURRENCY)),
            Variant(TRIO_REQUEST, s.runner(trio_pipelined, stream, payload, CONCURRENCY)),
        ],
    )


def latency_group() -> Group:
    """One 64-byte request at a time: two tether hops, one tether hop, one trio round trip."""
    s = session()
    a, b = s.a["node"], s.b["node"]
    two = s.route(f"/ip4/127.0.0.1/tcp/{a}/ip4/127.0.0.1/tcp/{b}/service/echo")
    one = s.route(f"/ip4/127.0.0.1/tcp/{a}/service/echo")
    payload = os.urandom(SMALL)
    stream = s.connect(s.a["echo"])

    for route, what in ((two, "2 hops"), (one, "1 hop")):
        probe = os.urandom(SMALL)
        _check(s.portal.call(s.node.request, route, probe) == probe, f"tether echo, {what}")
    probe = os.urandom(SMALL)
    _check(s.portal.call(trio_serial, stream, probe, 1) == probe, "trio echo")

    return Group(
        key=KEY_LATENCY,
        title=f"Round-trip latency per TCP hop, {SMALL} B, one request at a time",
        unit="hops/s",
        variants=[
            Variant(TETHER_2HOP, s.runner(tether_serial, s.node, two, payload), HOPS),
            Variant(TETHER_1HOP, s.runner(tether_serial, s.node, one, payload)),
            Variant(TRIO_1HOP, s.runner(trio_serial, stream, payload)),
        ],
    )


def bulk_group() -> Group:
    """One-way 64 KiB messages to a counting worker / counting server."""
    s = session()
    route = s.route(f"/ip4/127.0.0.1/tcp/{s.a['node']}/service/count")
    payload = os.urandom(BULK)
    stream = s.connect(s.a["count"])
    tether_totals, trio_totals = Totals(), Totals()
    # The first answers set the baseline: the count worker keeps counting across connections.
    tether_totals.count, tether_totals.nbytes = TOTALS.unpack(
        s.portal.call(s.node.request, route, b"")
    )
    # Correctness: the totals are checked after every run(n), these included.
    s.portal.call(tether_bulk, s.node, route, payload, tether_totals, 8)
    s.portal.call(trio_bulk, stream, payload, trio_totals, 8)

    return Group(
        key=KEY_BULK,
        title=f"One-way bulk, {BULK // 1024} KiB messages, client -> node A counter",
        unit="msg/s",
        variants=[
            Variant(
                TETHER_BULK,
                s.runner(tether_bulk, s.node, route, payload, tether_totals),
                bytes_per_iter=BULK,
            ),
            Variant(
                TRIO_BULK, s.runner(trio_bulk, stream, payload, trio_totals), bytes_per_iter=BULK
            ),
        ],
    )


def all_groups() -> list[tuple[str, Callable[[], Group]]]:
    """(key, builder) of the node groups, in run order."""
    return [(KEY_REQUEST, request_group), (KEY_LATENCY, latency_group), (KEY_BULK, bulk_group)]


def comparisons() -> list[tuple[str, str, str, float | None]]:
    """(group, subject, baseline, target) for ``run.Comparison``; no targets."""
    return [
        (KEY_REQUEST, TETHER_REQUEST, TRIO_REQUEST, None),
        (KEY_LATENCY, TETHER_2HOP, TRIO_1HOP, None),
        (KEY_LATENCY, TETHER_1HOP, TRIO_1HOP, None),
        (KEY_BULK, TETHER_BULK, TRIO_BULK, None),
    ]


def latency(measurements: Sequence[Measurement]) -> tuple[list[list[str]], dict[str, float]]:
    """Rows (implementation, hops, round trip µs, µs per hop), and µs per hop by implementation."""
    rows: list[list[str]] = []
    context: dict[str, float] = {}
    for m in measurements:
        if m.group != KEY_LATENCY:
            continue
        per_hop = statistics.median(s / (m.iterations * m.items_per_iter) for s in m.seconds)
        rows.append(
            [
                m.name,
                str(m.items_per_iter),
                f"{1e6 * per_hop * m.items_per_iter:,.1f}",
                f"{1e6 * per_hop:,.1f}",
            ]
        )
        context[m.name] = 1e6 * per_hop
    return rows, context


def _main() -> int:
    """Smoke test: build each group and time every variant once, briefly."""
    try:
        for _, build in all_groups():
            group = build()
            for v in group.variants:
                start = time.perf_counter()
                v.run(200)
                dt = time.perf_counter() - start
                print(f"{group.key:<18} {v.name:<26} {200 * v.items_per_iter / dt:12,.0f}")
    finally:
        close()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
