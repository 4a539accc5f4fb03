"""Nodes in one process, talking over real loopback TCP (``tether.node``,
``tether.node.transport.tcp``).

* Request/reply with local and remote workers, a forwarding worker (replies retrace the route),
  and precise errors: no such worker, nothing listening, no reply in time.
* Multi-hop routes (n1 -> n2 -> n3 and back): 1,000 concurrent requests, per-connection order,
  one reused connection per peer.
* Hostile peers (raw sockets): garbage, oversized frame headers, bad hellos, malformed and
  undeliverable routed messages, slow-drip and silent peers, a flood of idle connections. Each is
  closed within a bounded time with a logged reason, and the node goes on serving a good client.
* Back-pressure: a worker that does not consume stops its sender, with bounded buffering between.
* Keepalives keep an idle connection alive past ``dead_after``.

Each test is a plain function that runs its scenario with ``anyio.run`` (trio; a few under
asyncio too). Timeouts are short and set through the options objects; nothing waits for long.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from peers import expect
from tether._core import FrameDecoder, encode_frame
from tether.api import Node
from tether.core.message import (
    KIND_DATA,
    KIND_ERROR,
    LOCAL,
    TCP,
    Address,
    Message,
    RoutedMessage,
    WorkerContext,
)
from tether.identity.trust import ephemeral_identity
from tether.node.node import ReplyTimeoutError, UnreachableError
from tether.node.transport.connection import HELLO, MAGIC, PROTOCOL_VERSION, TcpOptions
from tether.node.worker import MAILBOX_SIZE
from trio_run import run

BACKENDS = ["trio", "asyncio"]
HOST = "127.0.0.1"
HELLO_FRAME = encode_frame(HELLO)
ME = Address(LOCAL, b"me")  # the return address a raw client puts on its messages

# Attack victims: timeouts long enough that a connection closed within ATTACK_CLOSE_WITHIN was
# closed for what it sent, not because some timer ran out.
PATIENT = TcpOptions(hello_timeout=20, frame_timeout=20, keepalive=20, dead_after=20)
ATTACK_CLOSE_WITHIN = 3.0


def at(port: int, rest: str = "/service/echo") -> str:
    return f"/ip4/{HOST}/tcp/{port}{rest}"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tcp_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tether.tcp"]


def closed_before_stop(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Connections closed for a reason other than a node stopping: when the nodes stop at the
    end of a test, each one's sockets close and the other logs "closed by peer"."""
    benign = ("node stopped", "closed by peer")
    return [
        m for m in tcp_logs(caplog) if "closed connection" in m and not any(b in m for b in benign)
    ]


@contextmanager
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.INFO, logger="tether.tcp"):
        yield


async def read_until_closed(stream: SocketStream, within: float) -> bytes:
    """Everything the peer sends until it closes the connection (EOF or reset); fails if the
    connection is still open after ``within`` seconds."""
    data = bytearray()
    with anyio.fail_after(within):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return bytes(data)


async def send_quietly(stream: SocketStream, data: bytes) -> None:
    """Send, ignoring a peer that already closed (an attacker does not care)."""
    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await stream.send(data)


class RawPeer:
    """A hand-written tether peer on a raw socket: frames in, routed messages out."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame_len=1 << 20)
        self.frames: list[bytes] = []

    @classmethod
    async def connect(cls, port: int, *, hello: bool = True) -> RawPeer:
        peer = cls(await anyio.connect_tcp(HOST, port))
        if hello:
            await peer.stream.send(HELLO_FRAME)
            assert await peer.frame() == HELLO
        return peer

    async def frame(self, within: float = 5.0) -> bytes:
        with anyio.fail_after(within):
            while not self.frames:
                self.frames.extend(self.decoder.feed(await self.stream.receive()))
        return self.frames.pop(0)

    async def message(self, within: float = 5.0) -> RoutedMessage:
        """The next routed message (keepalives skipped)."""
        while True:
            frame = await self.frame(within)
            if frame:
                return RoutedMessage.decode(frame)

    async def send(self, onward: tuple[Address, ...], payload: bytes) -> None:
        await self.stream.send(encode_frame(RoutedMessage(onward, (ME,), payload).encode()))


async def assert_still_serving(port: int, label: str = "good") -> None:
    """A fresh, well-behaved node can connect to ``port`` and gets its echo back."""
    async with Node(label, tcp_options=TcpOptions(connect_timeout=5, hello_timeout=5)) as good:
        payload = f"{label} still served".encode()
        assert await good.request(at(port), payload, timeout=5) == payload


# --- request/reply, forwarding, errors ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_request_reply(backend: str) -> None:
    async def upper(ctx: WorkerContext, msg: Message) -> None:
        await ctx.reply(msg, msg.payload.upper())

    async def main() -> None:
        async with Node("n1") as node:
            await node.start_worker("upper", upper)
            assert await node.request("/service/echo", b"hello", timeout=5) == b"hello"
            assert await node.request("/service/upper", b"hello", timeout=5) == b"HELLO"
            assert await node.request("/service/echo", b"", timeout=5) == b""
            assert await node.request([Address.local("echo")], b"x" * 100_000) == b"x" * 100_000
            assert {w["address"] for w in node.workers()} == {"echo", "upper"}

    run(main, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_remote_request_reply(backend: str) -> None:
    async def main() -> None:
        async with Node("n1") as n1, Node("n2") as n2:
            listener = await n2.listen_tcp(HOST, 0)
            assert await n1.request(at(listener.port), b"over tcp", timeout=5) == b"over tcp"
            big = bytes(range(256)) * 800  # 200 KiB: under max_frame_len (256 KiB)
            assert await n1.request(at(listener.port), big, timeout=5) == big

    run(main, backend)


def test_forwarding_worker_sees_the_reply_come_back() -> None:
    seen: list[tuple[tuple[Address, ...], bytes, int]] = []
    returned: list[Message] = []
    got_reply = anyio.Event()

    async def fwd(ctx: WorkerContext, msg: Message) -> None:
        seen.append((msg.onward, msg.payload, msg.kind))
        await ctx.forward(msg)

    async def sink(ctx: WorkerContext, msg: Message) -> None:
        returned.append(msg)
        got_reply.set()

    async def main() -> None:
        async with Node("n1") as n1, Node("n2") as n2, Node("n3") as n3:
            l2 = await n2.listen_tcp(HOST, 0)
            l3 = await n3.listen_tcp(HOST, 0)
            await n2.start_worker("fwd", fwd)
            await n1.start_worker("sink", sink)
            # a request through the forwarder: n1 -> n2:fwd -> n3:echo, and back through fwd
            route = at(l2.port, "/service/fwd") + at(l3.port)
            assert await n1.request(route, b"via fwd", timeout=5) == b"via fwd"
            assert len(seen) == 2
            request_onward, _, _ = seen[0]
            assert request_onward == (
                Address(TCP, f"{HOST}:{l3.port}".encode()),
                Address.local("echo"),
            )
            reply_onward, reply_payload, _ = seen[1]
            assert reply_payload == b"via fwd"
            assert reply_onward[-1].value.startswith(b"reply#")  # the requester's reply worker
            assert not n1.has_worker(reply_onward[-1].value.decode())  # gone once answered

            # the same with a plain send and a return address: the reply's return route names
            # every hop it came through, the forwarder included
            await n1.send(route, b"traced", return_route=(Address.local("sink"),))
            with anyio.fail_after(5):
                await got_reply.wait()
            (reply,) = returned
            assert reply.payload == b"traced"
            assert reply.kind == KIND_DATA
            hops = reply.return_route
            assert len(hops) == 4
            assert hops[0].value.startswith(b"tcp#")  # n1's end of the link from n2
            assert hops[1] == Address.local("fwd")  # the forwarder on n2
            assert hops[2].value.startswith(b"tcp#")  # n2's end of the link from n3
            assert hops[3] == Address.local("echo")  # the service that answered

            # a local forwarder: /service/fwd/service/echo on one node
            await n1.start_worker("fwd", fwd)
            seen.clear()
            assert await n1.request("/service/fwd/service/echo", b"local", timeout=5) == b"local"
            assert [s[1] for s in seen] == [b"local", b"local"]

    run(main)


def test_unknown_worker_is_reported_with_worker_and_node() -> None:
    async def main() -> None:
        async with Node("n1") as n1, Node("n2", transit=["*"]) as n2, Node("n3") as n3:
            l2 = await n2.listen_tcp(HOST, 0)
            l3 = await n3.listen_tcp(HOST, 0)
            with pytest.raises(UnreachableError) as info:
                await n1.request("/service/nope", b"x", timeout=5)
            assert "'nope'" in str(info.value)
            assert "n1" in str(info.value)

            with pytest.raises(UnreachableError) as info:
                await n1.request(at(l2.port, "/service/missing"), b"x", timeout=5)
            assert "'missing'" in str(info.value)
            assert "node n2" in str(info.value)

            # two hops away: the report travels back through n2
            with pytest.raises(UnreachableError) as info:
                await n1.request(at(l2.port, "") + at(l3.port, "/service/gone"), b"x", timeout=5)
            assert "'gone'" in str(info.value)
            assert "node n3" in str(info.value)

            # a stopped worker is gone too
            await n2.stop_worker("echo")
            with pytest.raises(UnreachableError, match="'echo' on node n2"):
                await n1.request(at(l2.port), b"x", timeout=5)

    run(main)


def test_unreachable_tcp_port_is_reported() -> None:
    async def main() -> None:
        port = closed_port()
        options = TcpOptions(connect_timeout=3)
        async with Node("n1", tcp_options=options) as n1, Node("n2", tcp_options=options) as n2:
            with pytest.raises(UnreachableError) as info:
                await n1.request(at(port), b"x", timeout=5)
            assert f"{HOST}:{port}" in str(info.value)
            assert "n1" in str(info.value)

            # from the second hop: n2 says it could not connect
            l2 = await n2.listen_tcp(HOST, 0)
            with pytest.raises(UnreachableError) as info:
                await n1.request(at(l2.port, "") + at(port), b"x", timeout=5)
            assert f"{HOST}:{port}" in str(info.value)
            assert "node n2" in str(info.value)

            # and the working path still works
            assert await n1.request(at(l2.port), b"ok", timeout=5) == b"ok"

    run(main)


def test_request_times_out_when_the_worker_never_replies() -> None:
    late = anyio.Event()

    async def silent(ctx: WorkerContext, msg: Message) -> None:
        pass

    async def slow(ctx: WorkerContext, msg: Message) -> None:
        await anyio.sleep(0.4)
        await ctx.reply(msg, msg.payload)
        late.set()

    async def main() -> None:
        async with Node("n1") as n1, Node("n2") as n2:
            l2 = await n2.listen_tcp(HOST, 0)
            await n2.start_worker("silent", silent)
            await n2.start_worker("slow", slow)
            with pytest.raises(ReplyTimeoutError) as info:
                await n1.request(at(l2.port, "/service/silent"), b"x", timeout=0.3)
            assert isinstance(info.value, TimeoutError)
            assert "0.3 s" in str(info.value)
            assert f"tcp/{l2.port}/service/silent" in str(info.value)

            # a reply that arrives after the timeout is dropped without harm
            with pytest.raises(ReplyTimeoutError):
                await n1.request(at(l2.port, "/service/slow"), b"x", timeout=0.1)
            with anyio.fail_after(5):
                await late.wait()
            assert await n1.request(at(l2.port), b"after", timeout=5) == b"after"

    run(main)


def test_local_request_timeout() -> None:
    async def silent(ctx: WorkerContext, msg: Message) -> None:
        pass

    async def main() -> None:
        async with Node("n1") as n1:
            await n1.start_worker("silent", silent)
            with pytest.raises(ReplyTimeoutError, match="/service/silent"):
                await n1.request("/service/silent", b"x", timeout=0.2)

    run(main, "asyncio")


# --- multi-hop ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_nodes_echo_and_back(backend: str) -> None:
    async def main() -> None:
        async with Node("n1") as n1, Node("n2", transit=["*"]) as n2, Node("n3") as n3:
            l2 = await n2.listen_tcp(HOST, 0)
            l3 = await n3.listen_tcp(HOST, 0)
            route = at(l2.port, "") + at(l3.port)
            assert await n1.request(route, b"two hops", timeout=5) == b"two hops"
            # n1 has one connection (to n2); n3 never saw n1
            assert [c.peer for c in n1.tcp.connections.values()] == [f"{HOST}:{l2.port}"]
            assert len(n3.tcp.connections) == 1
            (n3_in,) = n3.tcp.connections.values()
            assert not n3_in.outgoing
            assert n3_in.received == 1

    run(main, backend)


def test_thousand_concurrent_requests_over_two_hops() -> None:
    n = 1000
    results: dict[int, bytes] = {}

    async def main() -> None:
        async with Node("n1") as n1, Node("n2", transit=["*"]) as n2, Node("n3") as n3:
            l2 = await n2.listen_tcp(HOST, 0)
            l3 = await n3.listen_tcp(HOST, 0)
            route = n1.parse_route(at(l2.port, "") + at(l3.port))

            async def one(i: int) -> None:
                results[i] = await n1.request(
                    route, b"req %d " % i + bytes([i % 256]) * i, timeout=30
                )

            with anyio.fail_after(40):
                async with anyio.create_task_group() as tg:
                    for i in range(n):
                        tg.start_soon(one, i)
            assert len(n1.tcp.outgoing) == 1

    run(main)
    assert sorted(results) == list(range(n))
    for i, reply in results.items():
        assert reply == b"req %d " % i + bytes([i % 256]) * i


def test_per_connection_order_over_two_hops() -> None:
    n = 2000
    got: list[int] = []
    done = anyio.Event()

    async def record(ctx: WorkerContext, msg: Message) -> None:
        got.append(int.from_bytes(msg.payload[:4], "big"))
        if len(got) == n:
            done.set()

    async def main() -> None:
        async with Node("n1") as n1, Node("n2", transit=["*"]) as n2, Node("n3") as n3:
            l2 = await n2.listen_tcp(HOST, 0)
            l3 = await n3.listen_tcp(HOST, 0)
            await n3.start_worker("record", record)
            route = n1.parse_route(at(l2.port, "") + at(l3.port, "/service/record"))
            for i in range(n):
                # sizes vary so that batches and socket reads split differently
                await n1.send(route, i.to_bytes(4, "big") + b"." * ((i * 7919) % 3000))
            with anyio.fail_after(30):
                await done.wait()

    run(main)
    assert got == list(range(n))


def test_connections_are_reused() -> None:
    async def main() -> None:
        async with Node("n1") as n1, Node("n2") as n2:
            l2 = await n2.listen_tcp(HOST, 0)
            route = at(l2.port)
            # concurrent first requests race to connect: still one connection
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(n1.request, route, b"%d" % i)
            for i in range(100):
                assert await n1.request(route, b"%d" % i, timeout=5) == b"%d" % i
            for _ in range(200):
                await n1.send(route, b"fire and forget")
            assert await n1.request(route, b"last", timeout=5) == b"last"

            assert len(n1.tcp.connections) == 1
            assert list(n1.tcp.outgoing) == [f"{HOST}:{l2.port}"]
            (conn,) = n1.tcp.connections.values()
            assert conn.outgoing
            assert conn.sent == 50 + 100 + 200 + 1
            assert len(n2.tcp.connections) == 1
            (incoming,) = n2.tcp.connections.values()
            assert incoming.received == conn.sent

    run(main)


# --- hostile peers --------------------------------------------------------------------------------


def valid_message() -> bytes:
    return RoutedMessage((Address.local("echo"),), (ME,), b"\0hi").encode()


ATTACKS = {
    "http request": ([b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"], "bad framing"),
    "garbage bytes": ([bytes(range(255, 0, -1)) * 4], "bad framing"),
    "1 GiB header before hello": ([struct.pack(">I", 1 << 30)], "bad framing"),
    "1 GiB header after hello": ([HELLO_FRAME, struct.pack(">I", 1 << 30)], "bad framing"),
    "1 GiB header after hello, same segment": (
        [HELLO_FRAME + struct.pack(">I", 1 << 30) + b"x" * 100],
        "bad framing",
    ),
    "hello wrong magic": ([encode_frame(b"tither\0" + bytes([PROTOCOL_VERSION]))], "bad hello"),
    "hello wrong version": ([encode_frame(MAGIC + bytes([PROTOCOL_VERSION + 1]))], "version 2"),
    "hello version 0": ([encode_frame(MAGIC + b"\0")], "version 0"),
    "hello too long": ([encode_frame(HELLO + b"\0")], "bad hello"),
    "hello empty": ([encode_frame(b"")], "bad hello"),
    "hello just over the hello limit": ([struct.pack(">I", 65) + b"t" * 65], "bad framing"),
    "message: unknown version": (
        [HELLO_FRAME, encode_frame(b"\x09" + valid_message()[1:])],
        "malformed",
    ),
    "message: junk": ([HELLO_FRAME, encode_frame(b"\x01\xff\xff\xff")], "malformed"),
    "message: truncated": ([HELLO_FRAME, encode_frame(valid_message()[:-1])], "malformed"),
    "message: trailing bytes": ([HELLO_FRAME, encode_frame(valid_message() + b"!")], "malformed"),
    "message: after a good one": (
        [HELLO_FRAME, encode_frame(valid_message()) + encode_frame(b"\x01")],
        "malformed",
    ),
    "hello then EOF mid-frame": ([HELLO_FRAME, b"\0\0\0\x10abc"], "closed by peer"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_hostile_bytes_close_the_connection(attack: str, caplog: pytest.LogCaptureFixture) -> None:
    chunks, reason = ATTACKS[attack]
    half_close = reason == "closed by peer"
    attacker_address = ""

    async def main() -> None:
        async with Node("victim", tcp_options=PATIENT) as victim:
            listener = await victim.listen_tcp(HOST, 0)
            attacker = await anyio.connect_tcp(HOST, listener.port)
            nonlocal attacker_address
            attacker_address = "{}:{}".format(*attacker.extra(SocketAttribute.local_address))
            for chunk in chunks:
                await send_quietly(attacker, chunk)
                await anyio.sleep(0.05)
            if half_close:
                await attacker.send_eof()
            received = await read_until_closed(attacker, ATTACK_CLOSE_WITHIN)
            await attacker.aclose()
            # the victim said hello and nothing else (its echo service answered nothing forged,
            # except the one valid message some attacks send first)
            assert received.startswith(HELLO_FRAME)
            with anyio.fail_after(5):
                while victim.tcp.connections:
                    await anyio.sleep(0.01)
            assert victim.tcp.pending == 0
            await assert_still_serving(listener.port)

    with logged(caplog):
        run(main)
    closes = [m for m in tcp_logs(caplog) if f"({attacker_address}): " in m]
    assert len(closes) == 1, closes
    assert reason in closes[0]


def test_raw_peer_speaks_the_protocol() -> None:
    """The raw client used by the attacks is a correct peer: its echo comes back, also when its
    frame arrives in pieces, and keepalives it sends are ignored."""

    async def main() -> None:
        async with Node("n", tcp_options=TcpOptions(frame_timeout=2)) as node:
            listener = await node.listen_tcp(HOST, 0)
            peer = await RawPeer.connect(listener.port)
            await peer.send((Address.local("echo"),), b"\0ping")
            reply = await peer.message()
            assert reply.onward == (ME,)
            assert reply.return_route == (Address.local("echo"),)
            assert reply.payload == b"\0ping"

            frame = encode_frame(RoutedMessage((Address.local("echo"),), (ME,), b"\0slow").encode())
            await peer.stream.send(b"\0\0\0\0")  # a keepalive
            for i in range(0, len(frame), 7):
                await peer.stream.send(frame[i : i + 7])
                await anyio.sleep(0.05)
            assert (await peer.message()).payload == b"\0slow"
            await peer.stream.aclose()

    run(main)


@pytest.mark.parametrize(
    "tcp_address",
    [
        b"no-port-here",
        b"127.0.0.1:99999",
        "127.0.0.1:\u00b2".encode(),
        b"127.0.0.1:" + b"9" * 240,
        b"\xff\xfe:1",
        b"127.0.0.1:0",
    ],
    ids=["no port", "port > 65535", "superscript port", "240-digit port", "not utf-8", "port 0"],
)
def test_undeliverable_tcp_hop_from_a_peer_is_reported_back(
    tcp_address: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer may ask a transit node to forward to any TCP address. One that is not a usable
    host:port is an undeliverable message: the node answers with an error report along the
    return route (back over the same connection) and keeps the connection."""

    async def main() -> None:
        async with Node("relay", tcp_options=TcpOptions(connect_timeout=2), transit=["*"]) as relay:
            listener = await relay.listen_tcp(HOST, 0)
            peer = await RawPeer.connect(listener.port)
            await peer.send((Address(TCP, tcp_address), Address.local("echo")), b"\0hi")
            report = await peer.message()
            assert report.onward == (ME,)
            assert report.payload[0] == KIND_ERROR
            assert b"at node relay" in report.payload
            # the connection is still good
            await peer.send((Address.local("echo"),), b"\0still here")
            assert (await peer.message()).payload == b"\0still here"
            assert len(relay.tcp.connections) == 1
            await peer.stream.aclose()

    with logged(caplog):
        run(main)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_unknown_transport_type_is_reported_back() -> None:
    async def main() -> None:
        async with Node("n") as node:
            listener = await node.listen_tcp(HOST, 0)
            peer = await RawPeer.connect(listener.port)
            await peer.send((Address(77, b"somewhere"),), b"\0x")
            report = await peer.message()
            assert report.payload[0] == KIND_ERROR
            assert b"unknown transport type 77" in report.payload
            await peer.send((Address.local("nope"),), b"\0x")
            assert b"no worker 'nope' on node n" in (await peer.message()).payload
            await peer.stream.aclose()

    run(main)


def test_slow_drip_peer_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    options = TcpOptions(hello_timeout=20, frame_timeout=1, dead_after=20)
    dripped = 0

    async def main() -> None:
        async with Node("victim", tcp_options=options) as victim:
            listener = await victim.listen_tcp(HOST, 0)
            attacker = await anyio.connect_tcp(HOST, listener.port)
            await attacker.send(HELLO_FRAME)
            frame = struct.pack(">I", 1000) + b"d" * 1000

            async def drip() -> None:
                nonlocal dripped
                for byte in frame:
                    try:
                        await attacker.send(bytes([byte]))
                    except (anyio.BrokenResourceError, OSError):
                        return
                    dripped += 1
                    await anyio.sleep(0.2)

            async with anyio.create_task_group() as tg:
                tg.start_soon(drip)
                received = await read_until_closed(attacker, 1 + ATTACK_CLOSE_WITHIN)
                tg.cancel_scope.cancel()
            await attacker.aclose()
            assert received == HELLO_FRAME
            await assert_still_serving(listener.port)

    with logged(caplog):
        run(main)
    assert dripped < 30  # closed long before the frame could complete
    assert any("slow peer" in m and "1 s" in m for m in tcp_logs(caplog)), tcp_logs(caplog)


def test_silent_peer_after_hello_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    options = TcpOptions(hello_timeout=20, frame_timeout=20, keepalive=20, dead_after=1)

    async def main() -> None:
        async with Node("victim", tcp_options=options) as victim:
            listener = await victim.listen_tcp(HOST, 0)
            attacker = await anyio.connect_tcp(HOST, listener.port)
            await attacker.send(HELLO_FRAME)
            received = await read_until_closed(attacker, 1 + ATTACK_CLOSE_WITHIN)
            await attacker.aclose()
            assert received == HELLO_FRAME
            await assert_still_serving(listener.port)

    with logged(caplog):
        run(main)
    assert any("presumed dead" in m for m in tcp_logs(caplog)), tcp_logs(caplog)


def test_peer_without_hello_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    options = TcpOptions(hello_timeout=1, frame_timeout=20, dead_after=20)

    async def main() -> None:
        async with Node("victim", tcp_options=options) as victim:
            listener = await victim.listen_tcp(HOST, 0)
            attacker = await anyio.connect_tcp(HOST, listener.port)
            await attacker.send(b"\0\0")  # half a header, then nothing
            received = await read_until_closed(attacker, 1 + ATTACK_CLOSE_WITHIN)
            await attacker.aclose()
            assert received == HELLO_FRAME
            with anyio.fail_after(5):
                while victim.tcp.pending or victim.tcp.connections:
                    await anyio.sleep(0.01)
            await assert_still_serving(listener.port)

    with logged(caplog):
        run(main)
    assert any("no hello within 1 s" in m for m in tcp_logs(caplog)), tcp_logs(caplog)


def test_flood_of_idle_connections(caplog: pytest.LogCaptureFixture) -> None:
    """200 sockets that never say hello, against max_pending=50 (and no per-source cap): 150 are
    closed at once (each newcomer drops the oldest still in its hello, so they got at most the
    node's hello), 50 wait in their hello; an established connection keeps working meanwhile,
    and once the flood goes away new connections are accepted again."""
    options = TcpOptions(
        hello_timeout=20, dead_after=20, max_pending=50, max_pending_per_source=1000
    )
    flood = 200

    async def main() -> None:
        async with (
            Node("victim", tcp_options=options) as victim,
            Node("friend") as friend,
        ):
            listener = await victim.listen_tcp(HOST, 0)
            assert await friend.request(at(listener.port), b"before", timeout=5) == b"before"

            sockets = [await anyio.connect_tcp(HOST, listener.port) for _ in range(flood)]
            outcome: dict[int, bytes] = {}

            async def watch(i: int, s: SocketStream) -> None:
                outcome[i] = await read_until_closed(s, 60)

            async with anyio.create_task_group() as tg:
                for i, s in enumerate(sockets):
                    tg.start_soon(watch, i, s)
                with anyio.fail_after(ATTACK_CLOSE_WITHIN):
                    while len(outcome) < flood - 50:
                        await anyio.sleep(0.02)
                await anyio.sleep(0.3)  # nothing more is closed: the 50 are within their hello
                assert len(outcome) == flood - 50
                # dropped in their hello: nothing but the node's own hello was sent to them
                assert all(data in (b"", HELLO_FRAME) for data in outcome.values())
                assert victim.tcp.pending == 50
                assert victim.counters["dropped for a newcomer: in its hello"] == flood - 50
                # the friend's established connection is not affected
                assert await friend.request(at(listener.port), b"during", timeout=5) == b"during"
                tg.cancel_scope.cancel()

            for s in sockets:
                await s.aclose()
            with anyio.fail_after(5):
                while victim.tcp.pending or len(victim.tcp.connections) > 1:
                    await anyio.sleep(0.02)
            await assert_still_serving(listener.port)
            assert await friend.request(at(listener.port), b"after", timeout=5) == b"after"

    with logged(caplog):
        run(main)


def test_connection_cap(caplog: pytest.LogCaptureFixture) -> None:
    """With two links allowed: a newcomer takes the slot of the longest idle link that carries
    no secure channel; when both carry one, the newcomer is refused and they go on."""
    options = TcpOptions(max_connections=2, hello_timeout=20, dead_after=20)

    async def main() -> None:
        async with Node("victim", identity=ephemeral_identity(), tcp_options=options) as victim:
            listener = await victim.listen_tcp(HOST, 0)
            first = await RawPeer.connect(listener.port)
            second = await RawPeer.connect(listener.port)
            await second.send((Address.local("echo"),), b"\0two")  # second was active last
            assert (await second.message()).payload == b"\0two"
            third = await RawPeer.connect(listener.port)  # the idle first gives way
            assert await read_until_closed(first.stream, ATTACK_CLOSE_WITHIN) == b""
            await third.send((Address.local("echo"),), b"\0three")
            assert (await third.message()).payload == b"\0three"
            for peer in (second, third):
                await peer.stream.aclose()
            with anyio.fail_after(5):
                while victim.tcp.connections:
                    await anyio.sleep(0.02)

            # Both slots carry a secure channel: a newcomer is refused, the channels go on.
            async with (
                Node("a", identity=ephemeral_identity()) as a,
                Node("b", identity=ephemeral_identity()) as b,
            ):
                route = at(listener.port, "/secure/api/service/echo")
                for n in (a, b):
                    assert await n.request(route, b"in", trust=expect(victim)) == b"in"
                newcomer = await anyio.connect_tcp(HOST, listener.port)
                assert await read_until_closed(newcomer, ATTACK_CLOSE_WITHIN) == b""
                await newcomer.aclose()
                for n in (a, b):
                    assert await n.request(route, b"still", trust=expect(victim)) == b"still"

    with logged(caplog):
        run(main)
    assert any("2 connections (the limit)" in m for m in tcp_logs(caplog)), tcp_logs(caplog)


# --- back-pressure --------------------------------------------------------------------------------


def kernel_buffer_bytes() -> int:
    """The most one loopback connection can hold in kernel buffers: the sender's send buffer plus
    the receiver's receive buffer, at their autotuning maxima (Linux), else a generous 64 MiB."""
    try:
        rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
        wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        rmem = max(rmem, int(Path("/proc/sys/net/core/rmem_max").read_text()))
        wmem = max(wmem, int(Path("/proc/sys/net/core/wmem_max").read_text()))
    except (OSError, ValueError, IndexError):
        return 64 << 20
    return rmem + wmem


async def wait_until_stalled(progress: Callable[[], int], quiet: float = 0.5) -> int:
    """Wait until ``progress()`` has not changed for ``quiet`` seconds; return its value."""
    last = progress()
    still_since = anyio.current_time()
    while anyio.current_time() - still_since < quiet:
        await anyio.sleep(0.05)
        now = progress()
        if now != last:
            last, still_since = now, anyio.current_time()
    return last


def backpressure_scenario(n: int, size: int, options: TcpOptions, stall: float) -> None:
    """Node A sends ``n`` messages of ``size`` bytes to a worker on B that blocks until released.

    While the worker blocks, what B holds is bounded by counts: the worker has taken one message
    (blocked in its handler) and its mailbox holds MAILBOX_SIZE, so the connection's reader has
    delivered MAILBOX_SIZE + 1 and is blocked handing over one more (``received`` =
    MAILBOX_SIZE + 2); besides those, it holds at most one socket read (64 KiB) and one partial
    frame (< max_frame_len). It stops reading, so the rest waits in the kernel (B's receive
    buffer, A's send buffer: ``kernel_buffer_bytes``), then in A's connection queue (send_queue
    messages plus one batch being written, <= batch_bytes + one message), and then A's sender
    blocks. So A completes at most
        (MAILBOX_SIZE + 2) + 64 KiB/size + 1 + kernel/size + send_queue + (batch/size + 1) + 2
    sends, whatever n is; with 16 KiB messages that is a few thousand at most, far below n.
    """
    sent = 0
    got: list[int] = []
    release = anyio.Event()
    all_in = anyio.Event()
    filler = b"\xa5" * (size - 4)

    async def blocked(ctx: WorkerContext, msg: Message) -> None:
        await release.wait()
        got.append(int.from_bytes(msg.payload[:4], "big"))
        if len(got) == n:
            all_in.set()

    async def main() -> None:
        nonlocal sent
        async with Node("A", tcp_options=options) as a, Node("B", tcp_options=options) as b:
            listener = await b.listen_tcp(HOST, 0)
            await b.start_worker("blocked", blocked)
            route = a.parse_route(at(listener.port, "/service/blocked"))

            async def sender() -> None:
                nonlocal sent
                for i in range(n):
                    await a.send(route, i.to_bytes(4, "big") + filler)
                    sent += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                with anyio.fail_after(30):
                    stalled_at = await wait_until_stalled(lambda: sent)
                msg_len = len(RoutedMessage(route[1:], (), b"\0" + filler + b"1234").encode()) + 4
                bound = (
                    (MAILBOX_SIZE + 2)
                    + math.ceil(65536 / msg_len)
                    + 1
                    + math.ceil(kernel_buffer_bytes() / msg_len)
                    + options.send_queue
                    + (batch := math.ceil(options.batch_bytes / msg_len) + 1)
                    + 2
                )
                assert 0 < stalled_at <= bound < n, (stalled_at, bound, n)
                (a_conn,) = a.tcp.connections.values()
                # A holds at most its queue and the batch its writer is blocked on
                queued_in_a = stalled_at - a_conn.sent
                assert 0 <= queued_in_a <= options.send_queue + batch + 1
                (worker,) = [w for w in b.workers() if w["address"] == "blocked"]
                assert worker["delivered"] == MAILBOX_SIZE + 1  # one in the handler, mailbox full
                (b_conn,) = b.tcp.connections.values()
                assert b_conn.received == MAILBOX_SIZE + 2  # and one waiting for mailbox room
                in_kernel = a_conn.sent - b_conn.received
                assert 0 <= in_kernel * msg_len <= kernel_buffer_bytes() + 2 * 65536
                assert not got

                if stall:  # keep the connection stalled for a while (longer than dead_after)
                    await anyio.sleep(stall)
                    assert sent == stalled_at
                release.set()
                with anyio.fail_after(30):
                    async with anyio.create_task_group() as waiting:

                        async def first(event: anyio.Event) -> None:
                            await event.wait()
                            waiting.cancel_scope.cancel()

                        waiting.start_soon(first, all_in)
                        waiting.start_soon(first, b_conn.closed)
                assert not b_conn.closed.is_set(), f"B closed the link: {b_conn.close_reason}"
                assert all_in.is_set()
            assert sent == n
            assert got == list(range(n))
            # the same connection carried everything
            assert len(b.tcp.connections) == 1
            assert b_conn.received == n
            assert a_conn.sent == n

    run(main)


def test_backpressure_stops_the_sender_with_bounded_buffering() -> None:
    backpressure_scenario(n=20_000, size=16 * 1024, options=TcpOptions(), stall=0)


def test_backpressure_stall_is_not_a_dead_peer(caplog: pytest.LogCaptureFixture) -> None:
    """A connection whose reader is held up by a full mailbox for longer than dead_after (while
    the peer keeps trying to send) is not dead: once the worker drains, everything arrives over
    the same connection."""
    options = TcpOptions(keepalive=0.2, dead_after=1, frame_timeout=1)
    with logged(caplog):
        backpressure_scenario(n=3000, size=16 * 1024, options=options, stall=2)
    assert not closed_before_stop(caplog)


# --- keepalive ------------------------------------------------------------------------------------


def test_keepalives_keep_an_idle_connection_open(caplog: pytest.LogCaptureFixture) -> None:
    options = TcpOptions(keepalive=0.2, dead_after=1)

    async def main() -> None:
        async with Node("n1", tcp_options=options) as n1, Node("n2", tcp_options=options) as n2:
            listener = await n2.listen_tcp(HOST, 0)
            assert await n1.request(at(listener.port), b"first", timeout=5) == b"first"
            (conn,) = n1.tcp.connections.values()
            (incoming,) = n2.tcp.connections.values()
            await anyio.sleep(2)  # idle for twice dead_after
            assert not conn.closed.is_set()
            assert not incoming.closed.is_set()
            assert await n1.request(at(listener.port), b"second", timeout=5) == b"second"
            assert list(n1.tcp.connections.values()) == [conn]
            assert list(n2.tcp.connections.values()) == [incoming]
            assert conn.sent == 2  # keepalives are not messages
            assert incoming.received == 2

    with logged(caplog):
        run(main)
    assert not closed_before_stop(caplog)


def test_without_keepalives_an_idle_connection_is_dead() -> None:
    """The control for the keepalive test: keepalives slower than dead_after, and the idle
    connection is closed (and a later request makes a new one)."""
    options = TcpOptions(keepalive=5, dead_after=1)

    async def main() -> None:
        async with Node("n1", tcp_options=options) as n1, Node("n2", tcp_options=options) as n2:
            listener = await n2.listen_tcp(HOST, 0)
            assert await n1.request(at(listener.port), b"first", timeout=5) == b"first"
            (conn,) = n1.tcp.connections.values()
            (incoming,) = n2.tcp.connections.values()
            with anyio.fail_after(4):
                await conn.closed.wait()
                await incoming.closed.wait()
            # Both ends time out after the same second: whichever is first closes, and the other
            # then sees the close.
            reasons = {conn.close_reason, incoming.close_reason}
            assert any("presumed dead" in r for r in reasons), reasons
            assert await n1.request(at(listener.port), b"again", timeout=5) == b"again"
            assert conn not in n1.tcp.connections.values()

    run(main)
