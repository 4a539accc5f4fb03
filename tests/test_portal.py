"""Portals with in-process nodes and plain sockets: bytes complete and in order both ways,
half-close, closes and resets that reach the other side, a target that is down, flow control,
many connections at once, an outlet node that restarts, a relay in the path, refusal of
sessions outside a secure channel, and a fault proxy (latency, 1-byte slices, a bandwidth cap, a
reset, a blackhole) between the nodes.

Every test runs twice: with the Rust data plane (the default: the engine carries the sessions)
and with ``TETHER_DATAPLANE=python`` (every byte through Python, the fallback).

Every wait has a deadline (:func:`within`): a portal that hangs fails the test instead of
hanging it, and a failure must be visible (a reset, or an end of stream before the data is
complete, caught by the length and hash checks), never a silent truncation.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import resource
import socket
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskGroup

from faultproxy import FaultProxy, Faults, reset
from peers import allow_claims, expect
from tether.api import Node
from tether.core.errors import InvalidArgumentError
from tether.identity.trust import ephemeral_identity, trust_identifiers
from tether.node.transport.connection import TcpOptions
from tether.services.session import MAX_DATA, T_CLOSE, T_DATA, T_OPEN, EngineSession, PortalOptions
from trio_run import run, until, within

HOST = "127.0.0.1"
MB = 1 << 20

Handler = Callable[[SocketStream], Awaitable[None]]


# Every test with either data plane (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("data_plane")


# --- servers (the portal's targets) ---------------------------------------------------------


async def serve(tg: TaskGroup, handler: Handler) -> int:
    """Serve ``handler`` on a loopback port in ``tg``; returns the port."""
    listener = await anyio.create_tcp_listener(local_host=HOST)
    tg.start_soon(listener.serve, handler)
    port: int = listener.extra(SocketAttribute.local_port)
    return port


def unused_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Ended:
    """How a stream ended for the side that read it."""

    data: bytes
    error: BaseException | None = None  # None: an orderly end of stream

    @property
    def reset(self) -> bool:
        return self.error is not None


async def read_to_end(stream: SocketStream) -> Ended:
    buf = bytearray()
    try:
        while True:
            buf += await stream.receive(MAX_DATA)
    except anyio.EndOfStream:
        return Ended(bytes(buf))
    except (anyio.BrokenResourceError, OSError) as e:
        return Ended(bytes(buf), e)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Seen:
    """What a server read from one connection."""

    length: int
    digest: str
    error: BaseException | None


@dataclass
class DuplexServer:
    """Sends ``response`` then shuts its write half, while reading to the end of the stream at
    the same time (both directions at once); records what it read."""

    response: bytes
    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, stream: SocketStream) -> None:
        async with stream:
            ended = Ended(b"")
            async with anyio.create_task_group() as tg:

                async def read() -> None:
                    nonlocal ended
                    ended = await read_to_end(stream)

                tg.start_soon(read)
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await stream.send(self.response)
                    await stream.send_eof()
            self.seen.append(Seen(len(ended.data), sha(ended.data), ended.error))


async def echo(stream: SocketStream) -> None:
    async with stream:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while True:
                await stream.send(await stream.receive())


async def exchange(port: int, request: bytes) -> Ended:
    """Connect, send ``request`` and shut the write half while reading to the end."""
    stream = await anyio.connect_tcp(HOST, port)
    async with stream, anyio.create_task_group() as tg:

        async def write() -> None:
            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                await stream.send(request)
                await stream.send_eof()

        tg.start_soon(write)
        ended = await read_to_end(stream)
        if ended.error is not None:
            tg.cancel_scope.cancel()  # the connection is gone: so is the rest of the request
    return ended


# --- nodes ------------------------------------------------------------------------------------


@dataclass
class Portal:
    near: Node  # the inlet's node
    far: Node  # the outlet's node
    listen_port: int  # the far node's TCP listener
    inlet: Any
    outlet: Any

    @property
    def port(self) -> int:
        port: int = self.inlet.port
        return port


@contextlib.asynccontextmanager
async def portal(
    target_port: int,
    *,
    through: Callable[[int], Awaitable[int]] | None = None,
    tcp_options: TcpOptions | None = None,
    options: PortalOptions | None = None,
) -> AsyncIterator[Portal]:
    """Two nodes: the far one listens and has the outlet to ``target_port``; the near one has
    an inlet whose route goes (directly, or to the port ``through`` returns for the far node's
    port) to it through a secure channel."""
    far_identity = ephemeral_identity()
    async with (
        Node("near", identity=ephemeral_identity(), tcp_options=tcp_options) as near,
        Node("far", identity=far_identity, tcp_options=tcp_options) as far,
    ):
        listen_port = (await far.listen_tcp(HOST)).port
        outlet = await far.create_tcp_outlet(f"{HOST}:{target_port}", options=options)
        hop = await through(listen_port) if through is not None else listen_port
        inlet = await near.create_tcp_inlet(
            f"{HOST}:0",
            f"/ip4/{HOST}/tcp/{hop}/secure/api/service/outlet",
            options=options,
            trust=trust_identifiers(far_identity.identity.identifier),
        )
        yield Portal(near, far, listen_port, inlet, outlet)


async def sessions_end(p: Portal, timeout: float = 5.0) -> None:
    await until(
        lambda: p.inlet.info()["sessions"] == 0 and p.outlet.info()["sessions"] == 0,
        timeout,
        f"every portal session ended (inlet {p.inlet.info()}, outlet {p.outlet.info()})",
    )


# --- bytes ------------------------------------------------------------------------------------


def test_bytes_arrive_complete_and_in_order_both_ways() -> None:
    """Two connections at once, each carrying several MB each way at the same time."""

    async def main() -> None:
        responses = [os.urandom(6 * MB), os.urandom(5 * MB)]
        requests = [os.urandom(5 * MB + 12345), os.urandom(7 * MB)]
        async with anyio.create_task_group() as tg:
            servers = [DuplexServer(r) for r in responses]
            ports = [await serve(tg, s) for s in servers]
            async with portal(ports[0]) as p0, portal(ports[1]) as p1:
                results: list[Ended] = [Ended(b""), Ended(b"")]

                async def one(i: int, port: int) -> None:
                    results[i] = await exchange(port, requests[i])

                with within(20, "both exchanges ended"):
                    async with anyio.create_task_group() as clients:
                        clients.start_soon(one, 0, p0.port)
                        clients.start_soon(one, 1, p1.port)
                for i in range(2):
                    r = results[i]
                    assert r.error is None, f"connection {i}: {r.error!r}"
                    assert len(r.data) == len(responses[i])
                    assert sha(r.data) == sha(responses[i])
                    with within(5, "the server read the request"):
                        while not servers[i].seen:
                            await anyio.sleep(0.01)
                    (seen,) = servers[i].seen
                    assert seen.error is None
                    assert (seen.length, seen.digest) == (len(requests[i]), sha(requests[i]))
                for p, req, resp in zip((p0, p1), requests, responses, strict=True):
                    await sessions_end(p)
                    info = p.inlet.info()
                    assert (info["total"], info["failed"], info["last_error"]) == (1, 0, "")
                    assert (info["bytes_out"], info["bytes_in"]) == (len(req), len(resp))
            tg.cancel_scope.cancel()

    run(main)


def test_half_close_the_response_follows_the_clients_end_of_stream() -> None:
    """The server answers only once it has read the client's EOF, and its multi-MB answer still
    reaches the client, whose write half is already shut."""
    request = os.urandom(3 * MB)
    response = os.urandom(9 * MB)

    async def answer_after_eof(stream: SocketStream) -> None:
        async with stream:
            ended = await read_to_end(stream)
            if ended.error is None:
                await stream.send(hashlib.sha256(ended.data).digest() + response)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await serve(tg, answer_after_eof)
            async with portal(port) as p:
                with within(15, "the exchange ended"):
                    got = await exchange(p.port, request)
                assert got.error is None
                assert got.data[:32] == hashlib.sha256(request).digest(), "request incomplete"
                assert len(got.data) == 32 + len(response)
                assert sha(got.data[32:]) == sha(response)
                await sessions_end(p)
                assert p.inlet.info()["failed"] == 0
            tg.cancel_scope.cancel()

    run(main)


# --- ends ---------------------------------------------------------------------------------------


def test_an_orderly_close_reaches_the_other_side() -> None:
    """The server closes: the client reads the last bytes then the end of the stream; the
    client closes: the server reads the end of the stream. Promptly, and counted as no failure."""
    server_ended: list[Ended] = []

    async def hello_then_close(stream: SocketStream) -> None:
        async with stream:
            first = await stream.receive()
            if first == b"close-first":
                await stream.send(b"bye")
                return  # closes
            await stream.send(b"ok")
            server_ended.append(await read_to_end(stream))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await serve(tg, hello_then_close)
            async with portal(port) as p:
                client = await anyio.connect_tcp(HOST, p.port)
                async with client:
                    await client.send(b"close-first")
                    with within(5, "the client read the server's close"):
                        got = await read_to_end(client)
                    assert got == Ended(b"bye")

                client = await anyio.connect_tcp(HOST, p.port)
                await client.send(b"stay")
                with within(5, "the server's answer arrived"):
                    assert await client.receive() == b"ok"
                await client.aclose()
                await until(lambda: bool(server_ended), 5, "the server saw the client's close")
                assert server_ended == [Ended(b"")]
                await sessions_end(p)
                for info in (p.inlet.info(), p.outlet.info()):
                    assert (info["total"], info["failed"]) == (2, 0), info
            tg.cancel_scope.cancel()

    run(main)


def test_a_reset_reaches_the_other_side_as_a_reset() -> None:
    """A reset (RST) is not an orderly close: a server that resets its connection after some of
    its answer must not look to the client like a server that finished it (for a protocol that
    ends its answer with the end of the stream, that would be a silent truncation); the same the
    other way round. The portal protocol has CLOSE for this ("the session is over (reset...)")."""
    server_ended: list[Ended] = []

    async def handler(stream: SocketStream) -> None:
        async with stream:
            first = await stream.receive()
            if first == b"server-resets":
                await stream.send(b"partial answer")
                await stream.receive()  # the client got it
                reset(stream)
                return
            await stream.send(b"ok")
            server_ended.append(await read_to_end(stream))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await serve(tg, handler)
            async with portal(port) as p:
                client = await anyio.connect_tcp(HOST, p.port)
                async with client:
                    await client.send(b"server-resets")
                    with within(
                        5, "the server's partial answer arrived, and then the end of the connection"
                    ):
                        assert await client.receive() == b"partial answer"
                        await client.send(b"got it")
                        got = await read_to_end(client)
                assert got.data == b""
                assert got.reset, "the server reset its connection; the client saw an orderly EOF"

                client = await anyio.connect_tcp(HOST, p.port)
                await client.send(b"client-resets")
                with within(5, "the server's answer arrived"):
                    assert await client.receive() == b"ok"
                reset(client)
                await client.aclose()
                await until(lambda: bool(server_ended), 5, "the server saw the client's reset")
                assert server_ended[0].reset, "the client reset; the server saw an orderly EOF"
                await sessions_end(p)
            tg.cancel_scope.cancel()

    run(main)


def test_a_target_that_is_down_closes_the_client_promptly_and_says_why() -> None:
    async def main() -> None:
        down = unused_port()
        async with portal(down) as p:
            for _ in range(2):
                try:
                    client = await anyio.connect_tcp(HOST, p.port)
                except OSError:
                    # Reset before the client's connect call returned (the data plane can fail
                    # the session that fast): as visible a failure as a reset after it.
                    continue
                async with client:
                    with within(
                        3, "the client's connection closed after the outlet failed to connect"
                    ):
                        got = await read_to_end(client)
                assert got.data == b""
            # (The data plane tells Python of sessions it ended with its next tick.)
            await until(
                lambda: p.inlet.info()["failed"] == p.outlet.info()["failed"] == 2,
                3,
                "the inlet and the outlet counted 2 failures",
            )
            info = p.inlet.info()
            assert info["sessions"] == 0
            error = str(info["last_error"])
            assert f"{HOST}:{down}" in error, error
            assert "could not connect" in error, error
            assert "refused" in error.lower(), error
            assert p.outlet.info()["failed"] == 2
            assert p.outlet.info()["sessions"] == 0

    run(main)


def test_a_channel_that_closes_while_a_connection_opens_fails_that_connection_only() -> None:
    """The inlet's route resolved to a secure channel that is gone by the time the session
    starts: that client is turned away with the reason recorded, and the inlet goes on serving
    (the failure must not escape into the inlet's accept loop and end it)."""

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            target = await serve(tg, echo)
            async with portal(target) as p:
                assert (await exchange(p.port, b"first")).data == b"first"
                real = p.near.resolve_route

                async def gone(route: Any, **kw: Any) -> Any:
                    onward = await real(route, **kw)
                    await p.near.channels[onward[0].value.decode()].close()
                    return onward

                # The channel the first connection opened (and the data plane's binding of the
                # inlet to it) goes first, so the next connection resolves its route again.
                for channel in list(p.near.channels.values()):
                    await channel.close()
                p.near.resolve_route = gone  # type: ignore[method-assign]
                got = await exchange(p.port, b"lost")
                assert got.data == b""
                info = p.inlet.info()
                assert info["failed"] == 1, info
                assert "secure channel closed while opening" in str(info["last_error"])
                assert info["state"] == "listening"
                p.near.resolve_route = real  # type: ignore[method-assign]
                assert (await exchange(p.port, b"again")).data == b"again"
            tg.cancel_scope.cancel()

    run(main)


# --- flow control -----------------------------------------------------------------------------


def queued(sock: socket.socket, request: int) -> int:
    """Bytes in a socket's receive (FIONREAD) or send (TIOCOUTQ) queue (Linux)."""
    buf = bytearray(4)
    fcntl.ioctl(sock.fileno(), request, buf)
    return int.from_bytes(buf, "little")


def kernel_max(name: str) -> int:
    """The largest buffer TCP autotuning gives a socket (``tcp_rmem`` / ``tcp_wmem``)."""
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return int(f.read().split()[2])


def test_flow_control_a_server_that_reads_nothing_stalls_the_client() -> None:
    """While the server reads nothing, the client's writes stall after a bounded amount (the
    window plus socket buffers, not the 64 MB it has to send), and the outlet's node holds at
    most a window of it; once the server reads, every byte arrives intact."""
    data = os.urandom(96 * MB)
    small = 64 * 1024  # the client's and server's own socket buffers: what is left is the portal's
    go = anyio.Event()
    server: list[SocketStream] = []
    seen: list[Seen] = []

    async def slow_reader(stream: SocketStream) -> None:
        server.append(stream)
        await go.wait()
        async with stream:
            ended = await read_to_end(stream)
        seen.append(Seen(len(ended.data), sha(ended.data), ended.error))

    async def main() -> None:
        options = PortalOptions()
        async with anyio.create_task_group() as tg:
            listener = await anyio.create_tcp_listener(local_host=HOST)
            raw = listener.extra(SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, small)  # accepted sockets inherit
            tg.start_soon(listener.serve, slow_reader)
            async with portal(listener.extra(SocketAttribute.local_port), options=options) as p:
                client = await anyio.connect_tcp(HOST, p.port)
                client.extra(SocketAttribute.raw_socket).setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, small
                )
                sent = 0

                async def write() -> None:
                    nonlocal sent
                    for i in range(0, len(data), small):
                        await client.send(data[i : i + small])
                        sent += len(data[i : i + small])
                    await client.send_eof()

                tg.start_soon(write)
                # Wait until the writes stall: no progress for 0.5 s.
                with within(10, "the client's writes stalled (the portal kept taking its bytes)"):
                    last = -1
                    while sent != last:
                        last = sent
                        await anyio.sleep(0.5)
                # What may be in flight: the window, one DATA, and what the kernel buffers on
                # the way (the inlet's socket receives up to tcp_rmem's maximum, the outlet's
                # socket to the server sends up to tcp_wmem's; autotuning decides how much).
                kernel = kernel_max("tcp_rmem") + kernel_max("tcp_wmem") + 4 * small
                bound = options.window + MAX_DATA + kernel
                assert sent <= bound < len(data), (
                    f"the client wrote {sent / MB:.1f} MB into a stalled portal "
                    f"(bound {bound / MB:.1f} MB)"
                )
                (session,) = p.outlet.sessions.values()
                (target,) = server
                if isinstance(session, EngineSession):
                    held = session.held_bytes  # the engine's own count of what it holds
                else:
                    in_sockets = queued(
                        session.stream.extra(SocketAttribute.raw_socket), termios.TIOCOUTQ
                    ) + queued(target.extra(SocketAttribute.raw_socket), termios.FIONREAD)
                    held = session.received_bytes - in_sockets
                assert 0 <= held <= options.window + MAX_DATA, (
                    f"the outlet's node holds {held / MB:.1f} MB for one session "
                    f"(window {options.window / MB:.1f} MB)"
                )
                in_flight = p.inlet.info()["bytes_out"] - p.outlet.info()["bytes_in"]
                assert 0 <= in_flight <= options.window + MAX_DATA, in_flight

                go.set()
                await until(lambda: bool(seen), 20, "the server read everything")
                assert seen[0].error is None
                assert (seen[0].length, seen[0].digest) == (len(data), sha(data))
                await client.aclose()
                await sessions_end(p)
                assert p.inlet.info()["failed"] == 0
            tg.cancel_scope.cancel()

    run(main)


# --- many connections -----------------------------------------------------------------------


def test_a_thousand_concurrent_connections_through_one_inlet() -> None:
    n = 1000
    needed = 4 * n + 200  # client, inlet, outlet and server sockets, all in this process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= needed, (
        f"this test needs {needed} open files; the hard limit is {hard} (raise `ulimit -Hn`)"
    )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await serve(tg, echo)
            async with portal(port) as p:
                ok = 0
                failures: list[str] = []

                async def one(i: int) -> None:
                    nonlocal ok
                    message = f"connection {i:04d} ".encode() * 4
                    try:
                        stream = await anyio.connect_tcp(HOST, p.port)
                        async with stream:
                            await stream.send(message)
                            got = b""
                            while len(got) < len(message):
                                got += await stream.receive()
                            await stream.send_eof()
                            rest = await read_to_end(stream)
                        if got + rest.data != message or rest.error is not None:
                            failures.append(f"{i}: {got + rest.data!r} {rest.error!r}")
                        else:
                            ok += 1
                    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as e:
                        failures.append(f"{i}: {e!r}")

                with within(30, "1000 echo exchanges ended"):
                    async with anyio.create_task_group() as clients:
                        for i in range(n):
                            clients.start_soon(one, i)
                assert not failures, f"{len(failures)} failed, e.g. {failures[:3]}"
                assert ok == n
                await sessions_end(p, 10)
                info = p.inlet.info()
                assert (info["total"], info["failed"], info["refused"]) == (n, 0, 0), info
                assert len(p.near.channels) == 1  # one secure channel carries every session
            tg.cancel_scope.cancel()

    run(main)


# --- an outlet node that restarts -----------------------------------------------------------


def test_the_inlet_works_again_after_the_outlet_node_restarts() -> None:
    """The outlet's node stops: a connection open through it fails visibly (promptly, not at
    some timeout); a new node with the same identity, port and outlet starts: new connections
    succeed again (within a bounded retry time) through the same inlet."""

    async def main() -> None:
        identity = ephemeral_identity()
        async with anyio.create_task_group() as tg:
            port = await serve(tg, echo)
            async with Node("near", identity=ephemeral_identity()) as near:
                async with Node("far", identity=identity) as far:
                    listen_port = (await far.listen_tcp(HOST)).port
                    await far.create_tcp_outlet(f"{HOST}:{port}")
                    route = f"/ip4/{HOST}/tcp/{listen_port}/secure/api/service/outlet"
                    inlet = await near.create_tcp_inlet(
                        f"{HOST}:0", route, trust=trust_identifiers(identity.identity.identifier)
                    )
                    old = await anyio.connect_tcp(HOST, inlet.port)
                    await old.send(b"before")
                    with within(5, "the echo came back"):
                        assert await old.receive() == b"before"
                # The far node is gone.
                with within(5, "the open connection failed once the outlet's node stopped"):
                    got = await read_to_end(old)
                await old.aclose()
                assert got.data == b""
                assert got.reset, "the path to the outlet was lost; the client saw an orderly EOF"
                await until(lambda: inlet.info()["sessions"] == 0, 5, "the old session ended")
                assert inlet.info()["failed"] == 1
                assert inlet.info()["last_error"]

                async with Node("far", identity=identity) as far:
                    await far.listen_tcp(HOST, listen_port)
                    await far.create_tcp_outlet(f"{HOST}:{port}")
                    attempts = 0
                    with within(10, "a new connection worked after the outlet's node restarted"):
                        while True:
                            attempts += 1
                            got = await exchange(inlet.port, b"after")
                            if got == Ended(b"after"):
                                break
                            await anyio.sleep(0.1)
                    assert attempts <= 3, f"{attempts} connections failed after the restart"
                    for i in range(3):
                        assert await exchange(inlet.port, b"again %d" % i) == Ended(b"again %d" % i)
            tg.cancel_scope.cancel()

    run(main)


# --- a relay in the path ------------------------------------------------------------------------


def test_through_a_relay_to_a_node_with_no_listener() -> None:
    response = os.urandom(4 * MB)
    request = os.urandom(3 * MB)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            server = DuplexServer(response)
            port = await serve(tg, server)
            async with (
                Node("relay", identity=ephemeral_identity()) as relay,
                Node("protected", identity=ephemeral_identity()) as protected,
                Node("client", identity=ephemeral_identity()) as client,
            ):
                relay_port = (await relay.listen_tcp(HOST)).port
                await protected.create_tcp_outlet(f"{HOST}:{port}")
                allow_claims(relay, protected)
                rc = await protected.create_relay(
                    "db", f"/ip4/{HOST}/tcp/{relay_port}", trust=expect(relay)
                )
                assert protected.tcp.listeners == {}
                inlet = await client.create_tcp_inlet(
                    f"{HOST}:0",
                    rc.forward_route + "/secure/api/service/outlet",
                    trust=expect(protected),
                )
                with within(15, "the exchange through the relay ended"):
                    got = await exchange(inlet.port, request)
                assert got.error is None
                assert (len(got.data), sha(got.data)) == (len(response), sha(response))
                await until(lambda: bool(server.seen), 5, "the server read the request")
                assert (server.seen[0].length, server.seen[0].digest) == (
                    len(request),
                    sha(request),
                )
                (channel,) = client.channels.values()
                assert channel.peer.identifier == protected.identity.identity.identifier
            tg.cancel_scope.cancel()

    run(main)


# --- only through a secure channel --------------------------------------------------------------


def test_outlets_accept_sessions_only_through_a_secure_channel() -> None:
    connections: list[SocketStream] = []

    async def record(stream: SocketStream) -> None:
        connections.append(stream)
        await echo(stream)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await serve(tg, record)
            async with portal(port) as p:
                plain = f"/ip4/{HOST}/tcp/{p.listen_port}/service/outlet"
                with pytest.raises(InvalidArgumentError, match="secure channel"):
                    await p.near.create_tcp_inlet(f"{HOST}:0", plain)
                assert len(p.near.inlets) == 1

                # Hand-crafted session messages over the plain route: refused with a CLOSE,
                # and the target never hears of them.
                reply = await p.near.request(plain, bytes([T_OPEN]), timeout=5)
                assert reply[:1] == bytes([T_CLOSE]), reply
                assert b"secure channel" in reply, reply
                data = bytes([T_DATA]) + bytes(8) + b"GET / HTTP/1.0\r\n\r\n"
                reply = await p.near.request(plain, data, timeout=5)
                assert reply[:1] == bytes([T_CLOSE]), reply
                info = p.outlet.info()
                assert info["refused"] >= 1, info
                assert (info["sessions"], info["total"]) == (0, 0), info
                assert connections == []  # the target never saw a connection

                # Through the secure channel, it works.
                assert await exchange(p.port, b"secure") == Ended(b"secure")
                assert len(connections) == 1
            tg.cancel_scope.cancel()

    run(main)


# --- faults between the nodes -------------------------------------------------------------------


@dataclass
class Case:
    faults: Faults
    request: int  # bytes each way
    intact: bool  # True: the data must arrive intact; False: the client must see a failure
    within: float  # seconds: the exchange ends (intact or failed) by then
    tcp: TcpOptions | None = None


FAULTS = {
    "latency": Case(Faults(latency=0.03), 2 * MB, intact=True, within=10),
    "one-byte-slices": Case(Faults(slice=1), 16 * 1024, intact=True, within=10),
    "bandwidth-cap": Case(Faults(bandwidth=4 * MB), 1 * MB, intact=True, within=10),
    "reset-mid-stream": Case(Faults(reset_after=MB), 4 * MB, intact=False, within=3),
    # The nodes must notice a silent path by themselves: their keepalives stop arriving.
    "blackhole": Case(
        Faults(blackhole_after=MB),
        4 * MB,
        intact=False,
        within=2 + 4,  # dead_after, and a margin
        tcp=TcpOptions(keepalive=0.5, dead_after=2),
    ),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_faults_between_the_nodes_never_hang_or_truncate_silently(name: str) -> None:
    case = FAULTS[name]
    request = os.urandom(case.request)
    response = os.urandom(case.request)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            server = DuplexServer(response)
            port = await serve(tg, server)
            proxy: FaultProxy | None = None

            async def through(listen_port: int) -> int:
                nonlocal proxy
                proxy = FaultProxy(HOST, listen_port, case.faults)
                await tg.start(proxy.serve)
                return proxy.port

            async with portal(port, through=through, tcp_options=case.tcp) as p:
                assert proxy is not None
                started = time.monotonic()
                with within(20, f"the exchange through the {name} proxy ended"):
                    got = await exchange(p.port, request)
                took = time.monotonic() - started
                assert took < case.within, f"{name}: the exchange took {took:.1f} s"
                complete = got.error is None and len(got.data) == len(response)
                if case.intact:
                    assert complete, f"{name}: {len(got.data)} of {len(response)}, {got.error!r}"
                    assert sha(got.data) == sha(response)
                    await until(lambda: bool(server.seen), 5, "the server read the request")
                    assert (server.seen[0].length, server.seen[0].digest) == (
                        len(request),
                        sha(request),
                    )
                    await sessions_end(p)
                    assert p.inlet.info()["failed"] == 0
                else:
                    assert not complete, f"{name}: the data went through a broken path?"
                    assert proxy.resets + proxy.blackholes == 1
                    # Whatever arrived is a prefix of the truth, and the path's loss reached the
                    # client as a reset: an orderly end would pass a truncated answer for a
                    # whole one to a protocol that ends its answers with the end of the stream.
                    assert got.data == response[: len(got.data)]
                    assert got.reset, f"{name}: the client saw an orderly end of the stream"
                    await until(lambda: p.inlet.info()["failed"] >= 1, 5, "the inlet counted it")
                    assert p.inlet.info()["last_error"], p.inlet.info()
                    await sessions_end(p)
                    # The path heals: new connections work again.
                    proxy.faults = Faults()
                    with within(10, "a new connection worked once the path healed"):
                        while True:
                            again = await exchange(p.port, request)
                            if again.error is None and len(again.data) == len(response):
                                break
                            await anyio.sleep(0.1)
                    assert sha(again.data) == sha(response)
                proxy.stop()
            tg.cancel_scope.cancel()

    run(main)
