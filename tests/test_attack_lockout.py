"""Attack: inbound connections locked out.

Before per-source admission and idle closing, (a) 64 silent connections (never sending the hello,
re-opened as soon as they were closed) filled a node's hello slots so that no one else could
connect; and (b) 1,100 connections that sent the 8-byte hello and then nothing but keepalives held
every link slot for as long as they kept alive.

Shown, with both data planes, from raw sockets (``tests/rawwire.py``; attackers bound to
127.0.0.2, 127.0.0.3, ... so that the per-source caps and the node's own caps both bite) against a
node with small caps (40 links, 16 in their hello, 1 s of idleness without a secure channel):

* while 64 silent sockets churn through the hello slots, a legitimate client from 127.0.0.1 gets
  in and its echo and secure-channel requests are answered; the flood only ever got the node's
  hello frame, and newcomers pushed the oldest of them out;
* one source holds at most 8 connections in their hello and at most its link cap: the next is
  closed at once with nothing sent to it, counted, while other sources still get in;
* links that send the hello and then only keepalives are closed after ``unauthenticated_idle``
  (counted), while a legitimate secure channel left idle for three times as long goes on over
  the same link; a legitimate client still gets in during that flood;
* a node full of idle hello-only links lets a newcomer in by dropping the longest idle one (not
  the oldest: one that used its link recently keeps it);
* a link whose only secure channel has closed is idle like any other: it is closed after
  ``unauthenticated_idle`` and does not keep a newcomer out.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import anyio
import pytest

from node_logs import close_reasons
from peers import expect
from rawwire import HELLO, KIND_DATA, Raw, frame, local
from tether.api import Node
from tether.identity.trust import ephemeral_identity
from tether.node.transport.connection import Connection, TcpOptions
from trio_run import run, until, within

HOST = "127.0.0.1"
HELLO_FRAME = frame(HELLO)
KEEPALIVE = b"\0\0\0\0"
IDLE = 1.0
NEWCOMER_DROPS_WAITING = "dropped for a newcomer: the node is full of connections in their hello"
NEWCOMER_DROPS_IDLE = "dropped for a newcomer: idle, with no secure channel, on a full node"


# Every test with either data plane (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("data_plane")


def sources(n: int, first: int = 2) -> list[str]:
    return [f"127.0.0.{first + i}" for i in range(n)]


def at(port: int, rest: str = "/service/echo") -> str:
    return f"/ip4/{HOST}/tcp/{port}{rest}"


def until_closed(sock: socket.socket, timeout: float) -> bytes | None:
    """Everything the node sends on ``sock`` until it closes it; None if still open after
    ``timeout`` seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    except TimeoutError:
        return None
    except OSError:
        return data


def receive_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    data = b""
    sock.settimeout(timeout)
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed by the node after {data!r}")
        data += chunk
    return data


def connect(port: int, source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect((HOST, port))
    return s


def peer_of(r: Raw) -> str:
    host, port = r.sock.getsockname()
    return f"{host}:{port}"


def incoming(node: Node) -> dict[str, Connection]:
    """The node's incoming links, by peer address."""
    return {c.peer: c for c in node.tcp.connections.values() if not c.outgoing}


def in_their_hello(node: Node) -> list[Connection]:
    """Incoming connections still in their hello (not those the node is closing: those hold
    their socket only until it is closed)."""
    return [
        c
        for c in node.tcp.connections.values()
        if not c.outgoing and not c.ready_at and not c.close_reason
    ]


# --- a churning flood --------------------------------------------------------------------------


@dataclass
class _Slot:
    source: str
    sock: socket.socket | None = None
    opened_at: float = 0.0
    received: int = 0
    next_keepalive: float = 0.0
    reopen_at: float = 0.0


@dataclass
class Flood:
    """``per_source`` connections from each of ``sources``, all in one thread: each sends the
    hello (or nothing), then keepalives only; one the node closes is opened again ``reopen``
    seconds later. Counts what the node did to them."""

    port: int
    sources: Sequence[str]
    per_source: int
    hello: bool
    keepalive: float = 0.2
    reopen: float = 0.5
    stop: threading.Event = field(default_factory=threading.Event)
    opened: int = 0
    refused: int = 0
    """Closed with nothing sent to them (turned away before the node's hello)."""
    closed: int = 0
    """Closed after the node's hello."""
    most_received: int = 0
    """The most bytes any closed connection got from the node."""

    def run(self) -> None:
        slots = [_Slot(src) for src in self.sources for _ in range(self.per_source)]
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                for slot in slots:
                    if slot.sock is None:
                        if now >= slot.reopen_at:
                            self._open(slot, now)
                    else:
                        self._poll(slot, now)
                self.stop.wait(0.05)
        finally:
            for slot in slots:
                if slot.sock is not None:
                    slot.sock.close()

    def _open(self, slot: _Slot, now: float) -> None:
        try:
            s = connect(self.port, slot.source)
            if self.hello:
                s.sendall(HELLO_FRAME)
        except OSError:
            slot.reopen_at = now + self.reopen
            return
        s.setblocking(False)
        slot.sock, slot.opened_at, slot.received = s, now, 0
        slot.next_keepalive = now + self.keepalive
        self.opened += 1

    def _poll(self, slot: _Slot, now: float) -> None:
        assert slot.sock is not None
        try:
            while True:
                data = slot.sock.recv(1 << 16)
                if not data:
                    self._closed(slot, now)
                    return
                slot.received += len(data)
        except BlockingIOError:
            pass
        except OSError:
            self._closed(slot, now)
            return
        if self.hello and now >= slot.next_keepalive:
            slot.next_keepalive = now + self.keepalive
            try:
                slot.sock.send(KEEPALIVE)
            except BlockingIOError:
                pass
            except OSError:
                self._closed(slot, now)

    def _closed(self, slot: _Slot, now: float) -> None:
        assert slot.sock is not None
        slot.sock.close()
        slot.sock = None
        slot.reopen_at = now + self.reopen
        if slot.received:
            self.closed += 1
        else:
            self.refused += 1
        self.most_received = max(self.most_received, slot.received)


@asynccontextmanager
async def flooding(flood: Flood) -> AsyncIterator[Flood]:
    """Run ``flood`` in a thread for the duration of the block."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(anyio.to_thread.run_sync, flood.run))
        try:
            yield flood
        finally:
            flood.stop.set()


async def legitimate_requests(client: Node, victim: Node, port: int, label: str) -> None:
    """A client from 127.0.0.1: its echo and its secure-channel echo are answered."""
    with within(10, f"the legitimate client's requests answered {label}"):
        assert await client.request(at(port), label.encode(), timeout=5) == label.encode()
        secure = at(port, "/secure/api/service/echo")
        got = await client.request(secure, label.encode(), timeout=5, trust=expect(victim))
        assert got == label.encode()


# --- the tests ---------------------------------------------------------------------------------


def test_silent_connections_cannot_hold_the_hello_slots(caplog: pytest.LogCaptureFixture) -> None:
    """64 sockets that never send the hello, from 8 sources, re-opened as the node closes them,
    against 16 hello slots: a legitimate client gets in and is answered meanwhile."""
    options = TcpOptions(max_connections=40, max_pending=16, unauthenticated_idle=IDLE)

    async def main() -> None:
        async with (
            Node("victim", identity=ephemeral_identity(), tcp_options=options) as victim,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await victim.listen_tcp(HOST)).port
            flood = Flood(port, sources(8), per_source=8, hello=False)
            most_waiting = 0

            async def sample() -> None:
                nonlocal most_waiting
                while True:
                    most_waiting = max(most_waiting, len(in_their_hello(victim)))
                    await anyio.sleep(0.005)

            async with flooding(flood), anyio.create_task_group() as sampler:
                sampler.start_soon(sample)
                # 64 against 16 slots: at least 48 pushed out by newcomers, and re-opened.
                await until(lambda: flood.closed >= 64, 10, "the flood churning the hello slots")
                await legitimate_requests(client, victim, port, "during the flood")
                opened = flood.opened
                await until(lambda: flood.opened >= opened + 32, 10, "the flood going on")
                await legitimate_requests(client, victim, port, "still during the flood")
                sampler.cancel_scope.cancel()

            assert most_waiting == options.max_pending  # filled, never more
            # What a silent connection ever got: the node's hello, and then its end.
            assert flood.most_received == len(HELLO_FRAME)
            await legitimate_requests(client, victim, port, "after the flood")

    with caplog.at_level(logging.DEBUG, logger="tether.tcp"):
        run(main)
    reasons = close_reasons(caplog)
    assert reasons.count(NEWCOMER_DROPS_WAITING) >= 64, reasons[:20]


def test_one_source_gets_a_share_of_the_slots() -> None:
    """One source address: its 9th connection in the hello and its 11th link (the caps here: 8
    and 10) are closed at once with nothing sent, and counted; other sources still get in, and
    a freed slot can be used again."""
    options = TcpOptions(
        max_connections=40,
        max_pending=16,
        max_pending_per_source=8,
        max_connections_per_source=10,
        unauthenticated_idle=30,
    )
    waiting, linked, other = "127.0.0.9", "127.0.0.11", "127.0.0.12"

    async def main() -> None:
        async with (
            Node("victim", identity=ephemeral_identity(), tcp_options=options) as victim,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await victim.listen_tcp(HOST)).port

            def silent() -> tuple[bytes | None, bytes]:
                held = [connect(port, waiting) for _ in range(8)]
                try:
                    for s in held:  # each admitted: the node said its hello
                        assert receive_exactly(s, len(HELLO_FRAME)) == HELLO_FRAME
                    ninth = connect(port, waiting)
                    try:
                        refused = until_closed(ninth, 3.0)
                    finally:
                        ninth.close()
                    elsewhere = connect(port, other)
                    try:
                        admitted = receive_exactly(elsewhere, len(HELLO_FRAME))
                    finally:
                        elsewhere.close()
                    return refused, admitted
                finally:
                    for s in held:
                        s.close()

            refused, admitted = await anyio.to_thread.run_sync(silent)
            assert refused == b""  # closed, and nothing was sent to it
            assert admitted == HELLO_FRAME
            hello_cap = "refused connection: too many from one address in their hello"
            assert victim.counters[hello_cap] == 1  # (counters name no address)
            await legitimate_requests(client, victim, port, "with one source at its hello cap")

            def links() -> tuple[bytes | None, bytes, bytes | None]:
                held = [Raw(port, source=linked) for _ in range(10)]
                try:
                    held[0].send([local("echo")], bytes([KIND_DATA]) + b"a real link")
                    echoed = held[0].message(5.0).payload
                    eleventh = connect(port, linked)
                    try:
                        refused = until_closed(eleventh, 3.0)
                    finally:
                        eleventh.close()
                    # One link given up: that source may connect again.
                    held.pop().close()
                    deadline = time.monotonic() + 5
                    while True:
                        again = connect(port, linked)
                        try:
                            again.sendall(HELLO_FRAME)
                            answer = until_closed(again, 0.5)
                        finally:
                            again.close()
                        if answer is None or time.monotonic() > deadline:
                            return refused, echoed, answer
                finally:
                    for r in held:
                        r.close()

            refused, echoed, answer = await anyio.to_thread.run_sync(links)
            assert echoed == bytes([KIND_DATA]) + b"a real link"
            assert refused == b""
            assert answer is None  # admitted again (and still open)
            assert victim.counters["refused connection: too many from one address"] >= 1
            await legitimate_requests(client, victim, port, "with one source at its link cap")

    run(main)


def test_keepalives_do_not_hold_link_slots(caplog: pytest.LogCaptureFixture) -> None:
    """64 connections that send the hello and then keepalives every 0.2 s, from 8 sources (6
    links each allowed), re-opened as they are closed, against 40 links: each is closed after
    1 s without a message; a legitimate client gets in, and its secure channel, idle for 3 s
    meanwhile, is used again over the same link."""
    options = TcpOptions(
        max_connections=40,
        max_pending=16,
        max_connections_per_source=6,
        unauthenticated_idle=IDLE,
        hello_timeout=5,
    )

    async def main() -> None:
        async with (
            Node("victim", identity=ephemeral_identity(), tcp_options=options) as victim,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await victim.listen_tcp(HOST)).port
            flood = Flood(port, sources(8), per_source=8, hello=True)

            def live() -> int:
                return sum(1 for c in victim.tcp.connections.values() if not c.close_reason)

            async with flooding(flood):
                await until(lambda: live() >= options.max_connections, 10, "the node full")
                await legitimate_requests(client, victim, port, "during the flood")
                link = incoming(victim)
                (mine,) = [c for c in link.values() if c.source == HOST]
                channels = dict(client.channels)
                assert len(channels) == 1
                outgoing = client.tcp.outgoing[f"{HOST}:{port}"]
                await anyio.sleep(3 * IDLE)  # the channel idle, the flood going on
                await legitimate_requests(client, victim, port, "after 3 s idle")
                assert mine.close_reason == ""
                assert victim.tcp.connections.get(mine.address) is mine
                assert client.tcp.outgoing[f"{HOST}:{port}"] is outgoing
                assert dict(client.channels) == channels  # the same channel, not a new one

            # Attacker links were closed for idleness, keepalives notwithstanding (the others
            # made room for newcomers): 40 slots over 3 s of flood, 1 s each at most.
            idle_closed = victim.counters["closed: idle without a secure channel"]
            assert idle_closed >= options.max_connections // 2, victim.counters
            # the per-source link cap turned some away
            assert victim.counters.get("refused connection: too many from one address"), (
                victim.counters
            )
            assert flood.closed >= idle_closed
            await legitimate_requests(client, victim, port, "after the flood")

    with caplog.at_level(logging.DEBUG, logger="tether.tcp"):
        run(main)
    reasons = close_reasons(caplog)
    idle = f"idle for {IDLE:g} s with no secure channel"
    assert idle in reasons
    assert NEWCOMER_DROPS_IDLE in reasons  # 48 admitted (6 from each of 8) for 40 slots
    # No link was closed for anything else while the flood went on (only its end, by the
    # attacker or the nodes stopping).
    expected = {idle, NEWCOMER_DROPS_IDLE, NEWCOMER_DROPS_WAITING, "closed by peer", "node stopped"}
    assert set(reasons) <= expected, set(reasons) - expected


def test_a_full_node_drops_its_longest_idle_link_for_a_newcomer() -> None:
    """40 hello-only links fill the node; the first one then sends a message. A legitimate
    client gets in: the second link (now the longest idle) is dropped, not the first; a later
    newcomer drops the third. The client's secure channel goes on."""
    options = TcpOptions(max_connections=40, max_pending=16, unauthenticated_idle=8)

    async def main() -> None:
        async with (
            Node("victim", identity=ephemeral_identity(), tcp_options=options) as victim,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await victim.listen_tcp(HOST)).port

            def fill() -> list[Raw]:
                raws = [Raw(port, source=src) for src in sources(5) for _ in range(8)]
                time.sleep(0.05)
                raws[0].send([local("echo")], bytes([KIND_DATA]) + b"busy")
                assert raws[0].message(5.0).payload == bytes([KIND_DATA]) + b"busy"
                return raws

            raws = await anyio.to_thread.run_sync(fill)
            try:
                await until(
                    lambda: len(victim.tcp.connections) == options.max_connections,
                    5,
                    "the node full",
                )
                held = incoming(victim)
                first, second, third = (held[peer_of(r)] for r in raws[:3])

                await legitimate_requests(client, victim, port, "on a full node")
                assert second.close_reason == NEWCOMER_DROPS_IDLE
                assert first.close_reason == ""
                assert third.close_reason == ""
                assert await anyio.to_thread.run_sync(raws[1].closed_within, 3.0)

                def newcomer() -> bytes:
                    r = Raw(port, source="127.0.0.20")
                    try:
                        r.send([local("echo")], bytes([KIND_DATA]) + b"newcomer")
                        return r.message(5.0).payload
                    finally:
                        r.close()

                assert await anyio.to_thread.run_sync(newcomer) == bytes([KIND_DATA]) + b"newcomer"
                assert third.close_reason == NEWCOMER_DROPS_IDLE
                assert first.close_reason == ""
                assert [c for c in held.values() if c.close_reason] == [second, third]

                def first_still_served() -> bytes:
                    raws[0].send([local("echo")], bytes([KIND_DATA]) + b"still")
                    return raws[0].message(5.0).payload

                assert await anyio.to_thread.run_sync(first_still_served) == (
                    bytes([KIND_DATA]) + b"still"
                )
                await legitimate_requests(client, victim, port, "after two newcomers")
            finally:
                for r in raws:
                    r.close()

    run(main)


def test_a_link_whose_secure_channel_closed_is_idle_again() -> None:
    """Four attackers with fresh identities (the ``api`` listener takes anyone) each open a
    secure channel over their own link, close it at once, and keep the link: it no longer
    carries a secure channel, so after ``unauthenticated_idle`` it must be closed (or give way to
    a newcomer) like any hello-only link, and a legitimate client gets in."""
    options = TcpOptions(max_connections=4, unauthenticated_idle=IDLE)

    async def main() -> None:
        async with (
            Node("victim", identity=ephemeral_identity(), tcp_options=options) as victim,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await victim.listen_tcp(HOST)).port
            async with (
                Node("a1", identity=ephemeral_identity()) as a1,
                Node("a2", identity=ephemeral_identity()) as a2,
                Node("a3", identity=ephemeral_identity()) as a3,
                Node("a4", identity=ephemeral_identity()) as a4,
            ):
                for attacker in (a1, a2, a3, a4):
                    channel = await attacker.create_secure_channel(
                        at(port, "/service/api"), trust=expect(victim)
                    )
                    await channel.close()
                await until(lambda: not victim.channels, 5, "the attackers' channels closed")
                await anyio.sleep(3 * IDLE)
                # The attackers' links are still up (their nodes run, keepalives go on).
                await legitimate_requests(client, victim, port, "after the channels closed")
                assert victim.counters.get("closed: idle without a secure channel") == 4, (
                    victim.counters
                )

    run(main)
