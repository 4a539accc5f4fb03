"""The Rust data plane (:mod:`tether.node.data_plane`): what it does by itself, and what it refuses.

* portal sessions open in the engine without a round through Python once the inlet's route
  and the outlet's policy have been checked for a channel, and both fall back to Python when
  that no longer holds (the channel closed, the policy changed);
* bad input on a link the engine reads (garbage, an oversized frame, a malformed message,
  forged or replayed channel messages) is refused with the precise reason, and the node goes on
  serving everyone else;
* any split of a stream of frames across TCP segments delivers the same messages (a
  hypothesis property over the engine's reader).

The portal behaviours themselves (bytes, half-close, resets, flow control, faults, real
programs) are tested with both data planes in ``test_portal.py`` and ``test_portal_programs.py``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskGroup
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from peers import allow_claims, expect
from test_portal import Portal, echo, portal, serve
from tether.api import Node
from tether.core.message import (
    KIND_DATA,
    LOCAL_ORIGIN,
    Address,
    Message,
    Origin,
    RoutedMessage,
    WorkerContext,
)
from tether.identity.policy import Policy
from tether.identity.trust import ephemeral_identity
from tether.node.rust_data_plane import RustDataPlane
from tether.node.transport.connection import HELLO, Connection, TcpOptions
from tether.services.session import (
    MAX_DATA,
    T_ACK,
    T_CLOSE,
    T_DATA,
    T_EOF,
    T_OPEN,
    EngineSession,
    PortalOptions,
)
from trio_run import run, until, within

HOST = "127.0.0.1"


@contextlib.asynccontextmanager
async def echo_portal(
    options: PortalOptions | None = None,
) -> AsyncIterator[tuple[TaskGroup, Portal]]:
    """An echo server and a portal to it (``test_portal``'s two nodes), in a task group."""
    async with anyio.create_task_group() as tg, portal(await serve(tg, echo), options=options) as p:
        yield tg, p


async def ping(port: int, data: bytes) -> bytes:
    """One connection through the inlet: send, shut the write half, read to the end (or a
    reset, even one that beats the connect call: then what arrived before it)."""
    try:
        stream = await anyio.connect_tcp(HOST, port)
    except OSError:
        return b""  # reset before the connect call returned
    async with stream:
        got = b""
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            await stream.send(data)
            await stream.send_eof()
            while True:
                got += await stream.receive()
        return got


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def raw_link(port: int) -> socket.socket:
    """A plain socket that has done a tether hello with the node at ``port``."""
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(frame(HELLO))
    got = b""
    while len(got) < 4 + len(HELLO):
        chunk = sock.recv(4 + len(HELLO) - len(got))
        assert chunk, "the node closed the connection during the hello"
        got += chunk
    assert got == frame(HELLO)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the node closed this connection (EOF or reset) within the socket's timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# --- sessions opened by the engine ------------------------------------------------------------


def test_after_the_first_connection_sessions_open_in_the_engine_alone() -> None:
    """The first connection goes the slow way (route, channel, policies in Python); from then
    on the inlet's and the outlet's sessions are opened by the engine: Python's outlet handler
    sees no more OPENs, and the sessions still count and end in both tables."""

    async def main() -> None:
        async with echo_portal() as (tg, p):
            far, inlet, outlet = p.far, p.inlet, p.outlet
            handled: list[int] = []
            real = outlet.handle

            def counting(msg: RoutedMessage) -> None:
                handled.append(msg.payload[1] if len(msg.payload) > 1 else -1)
                real(msg)

            far._sinks["outlet"] = counting
            with within(10, "the first connection"):
                assert await ping(inlet.port, b"first") == b"first"
            opens = handled.count(1)
            assert opens <= 1  # the first OPEN (unless it arrived before the handler swap)
            for i in range(20):
                with within(10, "a connection through the engine"):
                    assert await ping(inlet.port, b"x%d" % i) == b"x%d" % i
            assert handled.count(1) == opens  # no OPEN reached Python again
            # The engine tells Python of the sessions it opened and ended with its next tick:
            # the books settle shortly after the last byte.
            await until(
                lambda: all(
                    (s.info()["sessions"], s.info()["total"]) == (0, 21) for s in (inlet, outlet)
                ),
                5,
                "every session counted and ended",
            )
            assert inlet.info()["failed"] == 0
            assert outlet.info()["failed"] == 0
            assert outlet.info()["bytes_in"] == sum(len(b"x%d" % i) for i in range(20)) + 5
            tg.cancel_scope.cancel()

    run(main)


def test_a_policy_change_stops_the_engine_opening_sessions_for_that_peer() -> None:
    """The outlet's authorization of a channel is rechecked with its sessions: once the policy
    no longer admits the peer, its open sessions are reset and new ones are refused (through
    Python again, which says why)."""

    async def main() -> None:
        options = PortalOptions(recheck_interval=0.1)
        async with echo_portal(options) as (tg, p):
            inlet, outlet = p.inlet, p.outlet
            me = p.near.identity.identity.identifier
            outlet.policy = Policy.parse(f'subject.identifier = "{me}"')  # before any session
            for _ in range(3):
                with within(10, "an admitted connection"):
                    assert await ping(inlet.port, b"ok") == b"ok"
            held = await anyio.connect_tcp(HOST, inlet.port)
            await held.send(b"open")
            with within(10, "the held connection's echo"):
                assert await held.receive() == b"open"
            outlet.policy = Policy.parse('subject.identifier = "someone else"')
            with (
                within(10, "the open session reset by the recheck"),
                contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError),
            ):
                while await held.receive():
                    pass
            await held.aclose()
            refused_before = outlet.info()["refused"]
            with within(10, "a refused connection"):
                assert await ping(inlet.port, b"no") == b""
            info = outlet.info()
            assert info["refused"] > refused_before, info
            assert "refused" in str(info["last_error"]), info
            tg.cancel_scope.cancel()

    run(main)


def test_sessions_through_a_relay_run_in_the_engine_on_every_node() -> None:
    """Inlet node → relay → outlet node (no listener): the channel to the outlet runs inside
    the outlet node's channel to the relay; the engine opens and seals both layers, and the
    relay forwards without Python."""

    async def main() -> None:
        async with (
            anyio.create_task_group() as tg,
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("db", identity=ephemeral_identity()) as db,
            Node("app", identity=ephemeral_identity()) as app,
        ):
            target = await serve(tg, echo)
            port = (await relay.listen_tcp(HOST)).port
            allow_claims(relay, db)
            rc = await db.create_relay("db", f"/ip4/{HOST}/tcp/{port}", trust=expect(relay))
            outlet = await db.create_tcp_outlet(f"{HOST}:{target}")
            inlet = await app.create_tcp_inlet(
                f"{HOST}:0", rc.forward_route + "/secure/api/service/outlet", trust=expect(db)
            )
            routed: list[RoutedMessage] = []
            real_route = relay.route

            async def recording(
                msg: RoutedMessage, origin: Origin = LOCAL_ORIGIN, **kw: Any
            ) -> None:
                routed.append(msg)
                await real_route(msg, origin, **kw)

            with within(10, "the first connection"):
                assert await ping(inlet.port, b"first") == b"first"
            relay.route = recording  # type: ignore[method-assign]
            data = bytes(range(256)) * 4096  # 1 MiB each way
            with within(20, "a megabyte through the relay"):
                assert await ping(inlet.port, data) == data
            assert routed == []  # the relay's Python router saw none of it
            sessions = list(outlet.sessions.values())
            assert all(isinstance(s, EngineSession) for s in sessions)
            tg.cancel_scope.cancel()

    run(main)


# --- bad input on an engine link --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("garbage", b"\xff" * 64, "bad framing"),
        ("oversized frame", struct.pack(">I", 1 << 30), "bad framing"),
        ("malformed message", frame(b"\x07not a routed message"), "malformed message"),
    ],
)
def test_bad_input_closes_that_link_only(name: str, payload: bytes, reason: str) -> None:
    """Each is refused with its reason (in the log and the connection's close reason); a portal
    session on another link of the same node keeps carrying bytes meanwhile."""

    async def main() -> None:
        async with echo_portal() as (tg, p):
            far, inlet = p.far, p.inlet
            port = p.listen_port
            held = await anyio.connect_tcp(HOST, inlet.port)
            await held.send(b"before")
            with within(10, "the echo before"):
                assert await held.receive() == b"before"
            closed: list[str] = []
            real_forget = far.tcp._forget

            def forget(conn: Any) -> None:
                closed.append(conn.close_reason)
                real_forget(conn)

            far.tcp._forget = forget  # type: ignore[method-assign]
            sock = await anyio.to_thread.run_sync(raw_link, port)
            sock.sendall(payload)
            sock.settimeout(5)
            assert await anyio.to_thread.run_sync(closed_by_peer, sock), name
            sock.close()
            await until(lambda: bool(closed), 5, "the bad link closed")
            assert any(reason in r for r in closed), closed
            await held.send(b"after")
            with within(10, "the echo after"):
                assert await held.receive() == b"after"
            await held.aclose()
            tg.cancel_scope.cancel()

    run(main)


def test_a_failure_in_the_engine_stays_with_its_link_or_session() -> None:
    """A bug that panics the engine while it handles one link (or one portal session) fails that
    link (session) alone, with the reason "internal error in the data plane": a portal session
    on another link, and the other sessions, keep carrying bytes (injected with the engine's
    test hook, as a panic in a real bug would happen)."""

    async def main() -> None:
        async with echo_portal() as (tg, p):
            far, inlet = p.far, p.inlet
            plane = far.data_plane
            assert isinstance(plane, RustDataPlane)
            held = await anyio.connect_tcp(HOST, inlet.port)
            await held.send(b"before")
            with within(10, "the echo before"):
                assert await held.receive() == b"before"

            # A second link into the far node, whose next event panics.
            def links() -> dict[str, Connection]:
                return {c.address: c for c in far.tcp.connections.values() if c._link is not None}

            before = set(links())
            sock = await anyio.to_thread.run_sync(raw_link, p.listen_port)
            await until(lambda: len(links()) == 2, 5, "the far node has two engine links")
            (victim,) = [c for a, c in links().items() if a not in before]
            assert victim._link is not None
            plane.engine.inject_fault(victim._link)
            sock.sendall(frame(b""))  # any event of that link: a keepalive
            sock.settimeout(5)
            assert await anyio.to_thread.run_sync(closed_by_peer, sock)
            sock.close()
            await until(lambda: bool(victim.close_reason), 5, "the faulty link closed")
            assert victim.close_reason == "internal error in the data plane"
            await held.send(b"after")
            with within(10, "the echo after, on the other link"):
                assert await held.receive() == b"after"

            # A session whose next event panics: it alone ends.
            other = await anyio.connect_tcp(HOST, inlet.port)
            await other.send(b"x")
            with within(10, "the second session's echo"):
                assert await other.receive() == b"x"
            await until(lambda: len(p.outlet.sessions) == 2, 5, "the outlet's two sessions")
            _first, target = p.outlet.sessions.values()
            plane.engine.inject_fault(target.id)
            await other.send(b"boom")  # reaches the far session: its event panics
            await until(lambda: bool(target.close_reason), 5, "the faulty session ended")
            assert "internal error in the data plane" in target.close_reason
            await held.send(b"still")
            with within(10, "the first session still echoes"):
                assert await held.receive() == b"still"
            for s in (held, other):
                await s.aclose()
            tg.cancel_scope.cancel()

    run(main)


def test_forged_and_replayed_channel_messages_are_refused_and_the_channel_goes_on() -> None:
    """Ciphertext for a channel the engine opens, sent by someone else on another link: forged
    (random bytes), and replayed (a copy of a real message seen on the wire) are dropped and
    counted; the channel's sessions carry on."""

    async def main() -> None:
        async with echo_portal() as (tg, p):
            far, inlet = p.far, p.inlet
            port = p.listen_port
            with within(10, "a first connection"):
                assert await ping(inlet.port, b"hello") == b"hello"
            (channel,) = far.channels.values()
            assert far.data_plane.carries(channel)
            to = (Address.local(channel.decryptor),)
            forged = RoutedMessage(to, (), bytes([KIND_DATA, 4]) + bytes(range(200))).encode()
            # A replay: the cipher's next nonce is past what was used; nonce 0 was delivered.
            replay_body = (0).to_bytes(8, "big") + bytes(64)
            replayed = RoutedMessage(to, (), bytes([KIND_DATA, 4]) + replay_body).encode()
            sock = await anyio.to_thread.run_sync(raw_link, port)
            before = channel.refused
            sock.sendall(frame(forged) + frame(replayed))
            await until(lambda: channel.refused >= before + 2, 5, "both refused")
            with within(10, "the channel still carries sessions"):
                assert await ping(inlet.port, b"still") == b"still"
            sock.close()
            tg.cancel_scope.cancel()

    run(main)


# --- framing property ----------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads=st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), min_size=0, max_size=40),
)
def test_any_split_of_the_frame_stream_delivers_the_same_messages(
    payloads: list[bytes], cuts: list[int]
) -> None:
    """Messages to a worker, sent over a raw link in segments cut anywhere (keepalives mixed
    in), arrive complete and in order."""
    stream = b""
    for i, p in enumerate(payloads):
        msg = RoutedMessage((Address.local("sink"),), (), bytes([KIND_DATA]) + p).encode()
        stream += frame(msg)
        if i % 3 == 0:
            stream += frame(b"")  # a keepalive
    segments = []
    pos = 0
    for c in cuts:
        if pos >= len(stream):
            break
        segments.append(stream[pos : pos + c])
        pos += c
    segments.append(stream[pos:])

    async def main() -> None:
        got: list[bytes] = []
        async with Node("n", tcp_options=TcpOptions()) as node:
            assert node.data_plane.kind == "rust"

            async def sink(ctx: WorkerContext, msg: Message) -> None:
                got.append(msg.payload)

            await node.start_worker("sink", sink)
            port = (await node.listen_tcp(HOST)).port
            sock = await anyio.to_thread.run_sync(raw_link, port)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for seg in segments:
                sock.sendall(seg)
                await anyio.sleep(0)
            await until(lambda: len(got) == len(payloads), 10, "every message")
            assert got == payloads
            sock.close()
            node.task_group.cancel_scope.cancel()

    run(main)


# --- the session state machine (hypothesis) ---------------------------------------------------

Op = tuple[str, int]
"""A portal message the peer sends: ``("data", n)`` (the next in sequence), ``("dup", 0)`` (the
last DATA again), ``("ack", body length)``, ``("eof", 0)``, ``("close", 0)``, ``("open", 0)``
or ``("type", t)`` (a type this protocol does not speak)."""

ops = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.integers(min_value=0, max_value=4096)),
        st.tuples(st.just("data"), st.just(MAX_DATA + 1)),
        st.tuples(st.just("dup"), st.just(0)),
        st.tuples(st.just("ack"), st.sampled_from([17, 17, 16, 18])),
        st.tuples(st.just("eof"), st.just(0)),
        st.tuples(st.just("close"), st.just(0)),
        st.tuples(st.just("open"), st.just(0)),
        st.tuples(st.just("type"), st.sampled_from([2, 3, 5, 9, 200, 255])),
    ),
    max_size=12,
)


def expected(seq: list[Op]) -> tuple[bytes, str | None, bool, bool]:
    """What the outlet's session must do with ``seq`` (after OPEN): the bytes the target gets,
    the protocol error it resets with (None: none), whether the peer closed it, and whether
    an EOF came first (then the session may already have ended in order, when the target
    answered the EOF by closing, before a later violation or CLOSE arrives)."""
    data, eof = b"", False
    for i, (kind, n) in enumerate(seq):
        if kind == "data":
            if n > MAX_DATA:  # the message's size is checked before the session's state
                return data, f"DATA of {n} bytes", False, eof
            if eof:
                return data, "DATA after EOF", False, eof
            data += payload_bytes(i, n)
        elif kind == "ack" and n != 17:
            return data, f"malformed ACK ({n} bytes)", False, eof
        elif kind == "eof":
            if eof:
                return data, "DATA after EOF", False, eof  # a second EOF, numbered after it
            eof = True
        elif kind == "close":
            return data, None, True, eof
        elif kind == "type":
            old = "from an older tether" if n in (2, 3, 5) else f"unknown portal message type {n}"
            return data, old, False, eof
    return data, None, False, eof


def payload_bytes(i: int, n: int) -> bytes:
    return bytes((i + k) % 251 for k in range(n))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=ops)
@example(seq=[("eof", 0), ("data", MAX_DATA + 1)])  # the size's error before the state's
@example(seq=[("data", 3), ("dup", 0), ("data", 2)])  # a repeat is dropped
def test_the_engine_session_follows_the_portal_protocol(seq: list[Op]) -> None:
    """Any sequence of portal messages from the inlet side, sent to an outlet session that the
    engine opened by itself (the channel was authorized by an earlier session): valid ones
    deliver exactly their bytes to the target (and its end of stream after EOF), a CLOSE ends
    the session quietly, and the first protocol violation resets it with its precise reason,
    told to the peer; the target never gets bytes that were not sent, in order."""
    want, violation, closed, after_eof = expected(seq)

    async def main() -> None:
        ends: list[bytes] = []  # what the target got, per connection, when it ended
        to_peer: list[bytes] = []

        async def target(stream: SocketStream) -> None:
            got = bytearray()
            async with stream:
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    while True:
                        got.extend(await stream.receive())
            ends.append(bytes(got))

        async with (
            anyio.create_task_group() as tg,
            Node("near", identity=ephemeral_identity()) as near,
            Node("far", identity=ephemeral_identity()) as far,
        ):
            listener = await anyio.create_tcp_listener(local_host=HOST)
            tg.start_soon(listener.serve, target)
            target_port = listener.extra(SocketAttribute.local_port)
            port = (await far.listen_tcp(HOST)).port
            outlet = await far.create_tcp_outlet(f"{HOST}:{target_port}")
            near.add_sink("x", lambda m: to_peer.append(bytes(m.payload)))
            near.add_sink("w", lambda m: None)
            (sc,) = await near.resolve_route(
                f"/ip4/{HOST}/tcp/{port}/secure/api", trust=expect(far)
            )
            onward = (sc, Address.local("outlet"))

            async def send(ret: str, t: int, body: bytes = b"") -> None:
                await near.route(
                    RoutedMessage(onward, (Address.local(ret),), bytes([KIND_DATA, t]) + body)
                )

            def numbered(n: int) -> bytes:
                return n.to_bytes(8, "big")

            # A first session authorizes the channel: the next one opens in the engine alone.
            await send("w", T_OPEN)
            await send("w", T_EOF, numbered(0))
            await until(lambda: len(ends) == 1, 5, "the first session's connection ended")
            await send("x", T_OPEN)
            sent = 0  # DATA and EOF so far: the next one's number
            last = b""
            for i, (kind, n) in enumerate(seq):
                if kind == "data":
                    last = numbered(sent) + payload_bytes(i, n)
                    await send("x", T_DATA, last)
                    sent += 1
                elif kind == "dup" and last:
                    await send("x", T_DATA, last)
                elif kind == "ack":
                    await send("x", T_ACK, bytes(n))
                elif kind == "eof":
                    await send("x", T_EOF, numbered(sent))
                    sent += 1
                elif kind == "close":
                    await send("x", T_CLOSE, b"bye")
                elif kind == "open":
                    await send("x", T_OPEN)
                elif kind == "type":
                    await send("x", n)
            if violation is None and not closed and not after_eof:
                # The orderly end: the target sees its end of stream.
                await send("x", T_EOF, numbered(sent))
            await until(lambda: len(ends) == 2, 10, "the session's connection to the target ended")
            got = ends[1]
            if violation is None and not closed:
                assert got == want
            else:
                assert want.startswith(got)  # a reset may drop what was in flight
            if violation is not None and not after_eof:
                await until(
                    lambda: any(p[1:2] == bytes([T_CLOSE]) for p in to_peer), 5, "a CLOSE back"
                )
            reasons = [p[2:].decode() for p in to_peer if p[1:2] == bytes([T_CLOSE])]
            if violation is not None:
                assert len(reasons) <= 1, reasons  # one CLOSE, or none if it had ended
                for reason in reasons:
                    assert "protocol error" in reason, reason
                    assert violation in reason, reason
            else:
                assert not reasons, reasons  # an orderly end, or the peer's own CLOSE
            # The engine opened the second session itself: Python hears of it at its next tick.
            await until(lambda: outlet.info()["total"] == 2, 5, "the session in the books")
            tg.cancel_scope.cancel()

    run(main)
