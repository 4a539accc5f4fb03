"""Attack: half-open secure-channel handshakes without a limit.

A node's secure-channel listener used to keep a state, a worker and a timer for every first
handshake message it answered: 38,600 of them in 20 s left 38,600 of each behind (memory never
returned), and each 38-byte message drew a 403-byte reply to a route of the attacker's choosing.

Shown, with both data planes, from raw sockets (``tests/rawwire.py``) against an in-process node
(``LISTENER_HANDSHAKE_TIMEOUT`` shortened to keep it quick):

* one link sending 2,000 first messages draws ``MAX_PENDING_PER_PEER`` replies; the listener
  never holds more than that for it, the rest are dropped with no reply and counted; a
  legitimate client opens a secure channel meanwhile;
* the replies go back over the attacker's own link only: its return routes name other links
  (``tcp#K``) and a second connection receives nothing at all;
* 60 links from 10 sources sending 30 each: the node never holds more than
  ``MAX_PENDING_HANDSHAKES`` (a source at most ``MAX_PENDING_PER_SOURCE``); at the cap the
  oldest gives way to the newcomer, and only admitted messages draw a reply;
* after the handshake timeout the half-open states are gone: the count is 0 and no decryptor
  worker is left but those of real channels;
* a legitimate client opens a channel while 32 links keep the node's half-open handshakes at
  their cap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import anyio
import pytest

import tether.channel.handshake
from peers import expect
from rawwire import (
    HS2,
    KIND_DATA,
    Address,
    Message,
    Raw,
    channel_hs1_payload,
    encode_message,
    frame,
    local,
)
from tether.api import Node
from tether.channel.handshake import (
    MAX_PENDING_HANDSHAKES,
    MAX_PENDING_PER_PEER,
    MAX_PENDING_PER_SOURCE,
)
from tether.core.message import Address as TetherAddress
from tether.identity.trust import ephemeral_identity
from trio_run import run, until, within

HOST = "127.0.0.1"
TIMEOUT = 2.0  # the listener's handshake timeout here (10 s by default)
DROPPED = "dropped: too many half-open handshakes"


# Every test with either data plane (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("data_plane")


@pytest.fixture(autouse=True)
def short_handshake_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tether.channel.handshake, "LISTENER_HANDSHAKE_TIMEOUT", TIMEOUT)


def at(port: int, rest: str) -> str:
    return f"/ip4/{HOST}/tcp/{port}{rest}"


def hs1s(n: int, return_routes: Sequence[Sequence[Address]] = ((local("attacker"),),)) -> bytes:
    """``n`` framed first handshake messages for the ``api`` listener (return routes in turn)."""
    return b"".join(
        frame(
            encode_message(
                [local("api")], return_routes[i % len(return_routes)], channel_hs1_payload()
            )
        )
        for i in range(n)
    )


def is_hs2(m: Message) -> bool:
    return m.kind == KIND_DATA and m.payload[1:2] == bytes([HS2])


def drain(raws: Sequence[Raw], quiet: float = 0.05) -> list[list[Message]]:
    """The messages each connection has received (read until it is quiet for ``quiet`` s)."""
    return [r.messages(quiet) for r in raws]


def drain_until(raws: Sequence[Raw], expected: int, timeout: float = 10.0) -> list[Message]:
    """Every message the connections received, read until ``expected`` came (or ``timeout``
    passed), then once more (each until quiet for 50 ms): a count above ``expected`` shows.
    (Quick: the node closes links idle and unauthenticated for 10 s.)"""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got += [m for each in drain(raws) for m in each]
    got += [m for each in drain(raws) for m in each]
    return got


def pending(node: Node) -> int:
    """Half-open handshakes on the node's ``api`` listener (its ``info()``)."""
    n = node.channel_listeners["api"].info()["pending"]
    assert isinstance(n, int)
    return n


def half_open_workers(node: Node) -> set[str]:
    """Secure-channel workers that belong to no open channel: half-open handshakes."""
    real = {a for c in node.channels for a in (c, c + ".in")}
    return {
        str(w["address"])
        for w in node.workers()
        if w["kind"] == "secure-channel" and w["address"] not in real
    }


class Sampler:
    """The largest pending counts seen (the listener's and the node's), sampled every 5 ms."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.listener = 0
        self.node_wide = 0

    async def run(self) -> None:
        while True:
            self.listener = max(self.listener, pending(self.node))
            self.node_wide = max(self.node_wide, self.node.pending_handshakes)
            await anyio.sleep(0.005)


@asynccontextmanager
async def sampling(node: Node) -> AsyncIterator[Sampler]:
    sampler = Sampler(node)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.run)
        yield sampler
        tg.cancel_scope.cancel()


async def secure_echo(client: Node, victim: Node, port: int, payload: bytes) -> None:
    """A legitimate client opens a secure channel to the victim and gets its echo through it."""
    channel = await client.create_secure_channel(
        at(port, "/service/api"), trust=expect(victim), timeout=4
    )
    route = [TetherAddress.local(channel.address), TetherAddress.local("echo")]
    assert await client.request(route, payload, timeout=4) == payload
    await channel.close()


async def states_released(victim: Node) -> None:
    """After the handshake timeout: no half-open state and no decryptor worker left."""
    await until(
        lambda: victim.pending_handshakes == 0 and pending(victim) == 0,
        TIMEOUT + 5,
        "the half-open handshakes timed out",
    )
    await until(lambda: not half_open_workers(victim), 5, "their decryptor workers gone")


def test_one_link_holds_a_few_half_open_handshakes_and_draws_a_few_replies() -> None:
    """2,000 first messages on one link (their return routes naming ``tcp#1``..``tcp#20``):
    ``MAX_PENDING_PER_PEER`` replies, back over that link; a second connection gets nothing."""
    flood = 2000

    async def main() -> None:
        async with (
            Node("victim", identity=ephemeral_identity()) as victim,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await victim.listen_tcp(HOST)).port
            listener = victim.channel_listeners["api"]
            routes = [[local(f"tcp#{k}"), local("attacker")] for k in range(1, 21)]

            def connect() -> tuple[Raw, Raw]:
                return Raw(port, source="127.0.0.2"), Raw(port, source="127.0.0.3")

            attacker, bystander = await anyio.to_thread.run_sync(connect)
            try:
                # The bystander's link is one of those the attacker's return routes name.
                (seen,) = [
                    c.address
                    for c in victim.tcp.connections.values()
                    if c.peer == "{}:{}".format(*bystander.sock.getsockname())
                ]
                assert [local(seen), local("attacker")] in routes
                async with sampling(victim) as sampled:
                    await anyio.to_thread.run_sync(attacker.sock.sendall, hs1s(flood, routes))
                    await until(
                        lambda: listener.dropped >= flood - MAX_PENDING_PER_PEER,
                        TIMEOUT,
                        "the flood handled",
                    )
                assert sampled.listener <= MAX_PENDING_PER_PEER
                assert sampled.node_wide <= MAX_PENDING_PER_PEER
                assert pending(victim) == MAX_PENDING_PER_PEER
                assert listener.dropped == flood - MAX_PENDING_PER_PEER
                assert victim.counters[DROPPED] == flood - MAX_PENDING_PER_PEER

                # Another peer still opens a channel while these are half open.
                with within(8, "a legitimate secure channel during the flood"):
                    await secure_echo(client, victim, port, b"during")

                got, nothing = await anyio.to_thread.run_sync(drain, [attacker, bystander], 0.5)
                assert len(got) == MAX_PENDING_PER_PEER
                assert all(is_hs2(m) for m in got)
                # Back over the attacker's own link, its return route as the onward route: the
                # node did not follow the route it named.
                assert all(m.onward in routes for m in got)
                assert nothing == []

                await states_released(victim)
                assert listener.accepted == 1  # the legitimate channel
                await secure_echo(client, victim, port, b"after")
                assert await anyio.to_thread.run_sync(bystander.messages, 0.2) == []
            finally:
                attacker.close()
                bystander.close()

    run(main)


def test_many_links_cannot_exceed_the_node_cap() -> None:
    """60 links from 10 sources, 30 first messages each: at most ``MAX_PENDING_HANDSHAKES``
    held at any time (each link at most ``MAX_PENDING_PER_PEER``, each source at most
    ``MAX_PENDING_PER_SOURCE``); beyond the per-peer and per-source caps first messages are
    dropped with no reply, and at the node's cap the oldest half-open handshake gives way to the
    newcomer; every message is accounted for, and only admitted ones drew a reply; all released
    after the timeout, and then a legitimate channel opens."""
    links, each = 60, 30

    async def main() -> None:
        async with (
            Node("victim", identity=ephemeral_identity()) as victim,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await victim.listen_tcp(HOST)).port
            listener = victim.channel_listeners["api"]

            def connect() -> list[Raw]:
                return [Raw(port, source=f"127.0.0.{2 + i % 10}") for i in range(links)]

            raws = await anyio.to_thread.run_sync(connect)
            try:

                def attack() -> None:
                    for r in raws:
                        r.sock.sendall(hs1s(each))

                async with sampling(victim) as sampled:
                    await anyio.to_thread.run_sync(attack)
                    await until(
                        lambda: (
                            listener.dropped + pending(victim) + evicted(victim) == links * each
                        ),
                        TIMEOUT,
                        "the flood handled",
                    )
                assert sampled.node_wide <= MAX_PENDING_HANDSHAKES
                assert sampled.listener <= MAX_PENDING_HANDSHAKES
                # 10 sources could hold 320 (32 each): the node's cap binds, oldest out first.
                assert victim.pending_handshakes == MAX_PENDING_HANDSHAKES
                assert evicted(victim) > 0
                assert victim.counters[DROPPED] == listener.dropped
                for source in {c.source for c in victim.tcp.connections.values()}:
                    assert victim.half_open.count(("source", source)) <= MAX_PENDING_PER_SOURCE

                # A reply for each admitted message (held, or held and then evicted), no more:
                # read until that many came (replies still queued under load are waited for),
                # then a last read finds no extra one.
                admitted = MAX_PENDING_HANDSHAKES + evicted(victim)
                replies = await anyio.to_thread.run_sync(drain_until, raws, admitted)
                assert all(is_hs2(m) for m in replies)
                assert len(replies) == admitted

                await states_released(victim)
                with within(8, "a legitimate secure channel after the flood"):
                    await secure_echo(client, victim, port, b"after")
            finally:
                for r in raws:
                    r.close()

    run(main)


def evicted(victim: Node) -> int:
    return victim.counters.get("dropped: oldest half-open handshake, for a newcomer", 0)


def test_one_source_holds_at_most_its_share() -> None:
    """40 links from one address, 8 first messages each (each link within its own cap): the
    address holds at most ``MAX_PENDING_PER_SOURCE`` half-open handshakes; the rest are
    dropped with no reply."""
    links = 40

    async def main() -> None:
        async with Node("victim", identity=ephemeral_identity()) as victim:
            port = (await victim.listen_tcp(HOST)).port

            def connect() -> list[Raw]:
                return [Raw(port, source="127.0.0.2") for _ in range(links)]

            raws = await anyio.to_thread.run_sync(connect)
            try:
                async with sampling(victim) as sampled:
                    burst = hs1s(MAX_PENDING_PER_PEER)
                    for r in raws:
                        await anyio.to_thread.run_sync(r.sock.sendall, burst)
                    await until(
                        lambda: (
                            victim.channel_listeners["api"].dropped + pending(victim)
                            == links * MAX_PENDING_PER_PEER
                        ),
                        TIMEOUT,
                        "the flood handled",
                    )
                assert sampled.node_wide <= MAX_PENDING_PER_SOURCE
                assert victim.half_open.count(("source", "127.0.0.2")) == MAX_PENDING_PER_SOURCE
                replies = await anyio.to_thread.run_sync(drain_until, raws, MAX_PENDING_PER_SOURCE)
                assert len(replies) == MAX_PENDING_PER_SOURCE
            finally:
                for r in raws:
                    r.close()

    run(main)


def test_a_legitimate_channel_opens_while_the_node_cap_is_held() -> None:
    """32 links from 8 addresses (4 each, far under their link caps) each keep 8 first messages
    pending, sent again as they time out: the node's half-open handshakes stay at their cap. A
    legitimate client opening a channel meanwhile must still get one: its handshake is never
    the one evicted (its address holds the fewest)."""
    links = MAX_PENDING_HANDSHAKES // MAX_PENDING_PER_PEER

    async def main() -> None:
        async with (
            Node("victim", identity=ephemeral_identity()) as victim,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await victim.listen_tcp(HOST)).port
            stop = threading.Event()

            def connect() -> list[Raw]:
                return [Raw(port, source=f"127.0.0.{2 + i % 8}") for i in range(links)]

            raws = await anyio.to_thread.run_sync(connect)

            def attack() -> None:
                burst = hs1s(MAX_PENDING_PER_PEER)
                while not stop.is_set():
                    for r in raws:
                        r.sock.sendall(burst)
                    drain(raws, 0.001)
                    stop.wait(TIMEOUT / 4)

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(partial(anyio.to_thread.run_sync, attack))
                    try:
                        await until(
                            lambda: victim.pending_handshakes == MAX_PENDING_HANDSHAKES,
                            5,
                            "the node's half-open handshakes at their cap",
                        )
                        with within(10, "a legitimate secure channel during the flood"):
                            await secure_echo(client, victim, port, b"during")
                    finally:
                        stop.set()
            finally:
                for r in raws:
                    r.close()

    run(main)
