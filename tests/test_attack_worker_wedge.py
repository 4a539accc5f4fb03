"""Attack: one unauthenticated connection wedges a shared worker forever.

Before replies stopped waiting on peers, a stranger with a socket sent large requests to a shared
worker (the built-in ``echo``; the relay service's ``PING``) and read none of the replies: the
worker blocked on its reply to the congested link, its mailbox filled behind it, and every other
sender's request to it hung. Resetting the connection then made the queued replies
undeliverable, and their error reports went along their return route, which is the worker
itself: it waited forever on its own full mailbox.

Shown, with both data planes, from raw sockets (``tests/rawwire.py``) against a node with an
identity (so ``api`` and ``relay`` exist):

* an attacker sends 300 echo requests and 300 relay PINGs of 200 KiB each and reads nothing;
  meanwhile, and after it has sent everything, a legitimate client's echo request over TCP and
  its relay ``PING`` through a secure channel are answered within seconds, again and again; the
  node counts the replies it dropped for the congested link; then the attacker resets its
  connection, and both workers go on serving, their mailboxes drained;
* a peer that reads nothing while replies are queued for it is closed after ``drain_timeout``,
  though it keeps sending requests and keepalives (it learns it by a reset);
* a worker that takes no message for ``drain_timeout`` (its mailbox full) makes the node tell the
  next sender that it is busy, instead of holding that sender's link forever; other workers keep
  serving other senders meanwhile, and the wedged one serves again once it moves (its replies to
  the sender, gone by then, come back to it as reports, which never wait on its own mailbox).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import anyio
import pytest

from node_logs import close_reasons
from peers import expect
from rawwire import KIND_DATA, KIND_ERROR, Raw, encode_message, frame, local
from tether.api import Node
from tether.channel.channel import SecureChannel
from tether.core.message import Address, Message, WorkerContext
from tether.identity.trust import ephemeral_identity
from tether.node.transport.connection import TcpOptions
from tether.services.relay import PING, PONG
from trio_run import run, until, within

HOST = "127.0.0.1"
BIG = 200 * 1024
KEEPALIVE = b"\0\0\0\0"
CONGESTED = "dropped: link congested"
MAILBOX_FULL = "dropped: worker mailbox full"


# Every test with either data plane (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("data_plane")


def at(port: int, rest: str = "/service/echo") -> str:
    return f"/ip4/{HOST}/tcp/{port}{rest}"


def links_from(node: Node, source: str) -> list[str]:
    """The node's live links from IP address ``source``."""
    return [
        c.address
        for c in node.tcp.connections.values()
        if c.source == source and not c.close_reason
    ]


def queued_for(node: Node, source: str) -> str:
    """What the node holds for the links from ``source``, unsent (for failure messages)."""
    out = []
    for c in node.tcp.connections.values():
        if c.source != source:
            continue
        stats = node.data_plane.link_stats(c._link) if c._link is not None else None
        out.append(f"{stats[2]} bytes" if stats else f"{c._pending} frames")
    return ", ".join(out) or "nothing"


def delivered(node: Node, worker: str) -> int:
    """How many messages ``worker`` was handed (into its mailbox)."""
    return int(next(w["delivered"] for w in node.workers() if w["address"] == worker))


class Legit:
    """A legitimate client of the victim: echo over a plain TCP route, and the relay
    service's PING through a secure channel to the victim's ``api``."""

    def __init__(self, client: Node, port: int, channel: SecureChannel) -> None:
        self.client = client
        self.port = port
        self.channel = channel
        self.rounds = 0

    async def once(self, label: str) -> None:
        payload = f"{label} #{self.rounds}".encode()
        with within(5, f"the legitimate echo request ({label}) answered"):
            assert await self.client.request(at(self.port), payload, timeout=5) == payload
        route = [Address.local(self.channel.address), Address.local("relay")]
        with within(5, f"the legitimate relay PING through a secure channel ({label}) answered"):
            pong = await self.client.request(route, bytes([PING]) + payload, timeout=5)
        assert pong == bytes([PONG]) + payload
        self.rounds += 1


def test_an_attacker_that_reads_nothing_does_not_wedge_shared_workers() -> None:
    async def main() -> None:
        async with (
            Node("victim", identity=ephemeral_identity()) as victim,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await victim.listen_tcp(HOST)).port
            channel = await client.create_secure_channel(
                at(port, "/service/api"), trust=expect(victim)
            )
            legit = Legit(client, port, channel)
            await legit.once("before")

            sent = threading.Event()
            reset = threading.Event()
            body = os.urandom(BIG)

            def attack() -> None:
                r = Raw(port, source="127.0.0.2")
                try:
                    for _ in range(300):
                        r.send([local("echo")], bytes([KIND_DATA]) + body)
                        r.send([local("relay")], bytes([KIND_DATA, PING]) + body)
                    sent.set()
                    assert reset.wait(60), "the test never said to reset"
                finally:
                    r.reset()

            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, attack)
                try:
                    # While the attacker sends (its replies pile up unread) ...
                    while not sent.is_set():
                        await legit.once("during the flood")
                    # ... and once the link to it is congested with replies it never reads.
                    assert links_from(victim, "127.0.0.2"), "the attacker is still connected"
                    for _ in range(3):
                        await legit.once("attacker connected, reading nothing")
                    await until(
                        lambda: victim.counters.get(CONGESTED, 0) > 0,
                        5,
                        "replies to the attacker dropped for its congested link (the node "
                        f"holds {queued_for(victim, '127.0.0.2')} for a peer that reads nothing)",
                    )
                finally:
                    reset.set()

            # The reset made the replies still queued for the attacker undeliverable.
            await until(
                lambda: not links_from(victim, "127.0.0.2"), 10, "the attacker's link closed"
            )
            for _ in range(3):
                await legit.once("after the reset")
            for worker in ("echo", "relay"):
                assert await victim.drain_worker(worker, 5), f"{worker} is wedged"
            assert victim.counters[CONGESTED] > 0

    run(main)


def test_a_peer_that_reads_nothing_is_closed_after_drain_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It keeps sending echo requests and keepalives (never silent, never idle), yet it is
    closed: the node had replies queued for it that it did not take for ``drain_timeout``."""

    async def main() -> None:
        options = TcpOptions(drain_timeout=2)
        async with Node("victim", tcp_options=options) as victim, Node("client") as client:
            port = (await victim.listen_tcp(HOST)).port
            stop = threading.Event()

            def attack() -> float | None:
                """Seconds until a send fails because the node closed the connection; None if
                it is still open after 15 s."""
                r = Raw(port, source="127.0.0.3")
                r.sock.settimeout(5)
                payload = bytes([KIND_DATA]) + os.urandom(64 * 1024)
                request = frame(encode_message([local("echo")], [local("attacker")], payload))
                start = time.monotonic()
                try:
                    while not stop.is_set() and time.monotonic() - start < 15:
                        r.sock.sendall(request + KEEPALIVE)
                        time.sleep(0.01)
                except TimeoutError:
                    raise AssertionError("the node stopped reading the attacker") from None
                except OSError:
                    return time.monotonic() - start
                finally:
                    r.close()
                return None

            with caplog.at_level(logging.INFO, logger="tether.tcp"):
                async with anyio.create_task_group() as tg:
                    closed_after: list[float | None] = []

                    async def attacker() -> None:
                        closed_after.append(await anyio.to_thread.run_sync(attack))

                    tg.start_soon(attacker)
                    try:
                        await until(
                            lambda: bool(links_from(victim, "127.0.0.3")), 5, "attacker connected"
                        )
                        # Legitimate traffic is served meanwhile.
                        with within(5, "a legitimate echo while the attacker reads nothing"):
                            assert await client.request(at(port), b"meanwhile", timeout=5) == (
                                b"meanwhile"
                            )
                        await until(
                            lambda: not links_from(victim, "127.0.0.3"),
                            10,
                            "the peer that reads nothing closed",
                        )
                        await until(lambda: bool(closed_after), 10, "the attacker saw it closed")
                    finally:
                        stop.set()
                (elapsed,) = closed_after
                assert elapsed is not None, "the attacker's socket was never closed"
                assert elapsed < 10, elapsed
                assert close_reasons(caplog, "127.0.0.3") == [
                    "the peer read nothing for 2 s: presumed stuck"
                ]
                # Meanwhile its replies were dropped, not piled up for it.
                assert victim.counters.get(CONGESTED, 0) > 0, victim.counters
                assert await client.request(at(port), b"after", timeout=5) == b"after"

    run(main)


def test_a_wedged_worker_is_reported_busy_instead_of_holding_its_senders() -> None:
    release = anyio.Event()
    handled: list[bytes] = []

    async def stuck(ctx: WorkerContext, msg: Message) -> None:
        await release.wait()
        handled.append(msg.payload)
        await ctx.reply(msg, msg.payload)

    async def main() -> None:
        options = TcpOptions(drain_timeout=2)
        async with Node("victim", tcp_options=options) as victim, Node("client") as client:
            port = (await victim.listen_tcp(HOST)).port
            await victim.start_worker("stuck", stuck, mailbox=4)
            sent = 4 + 3  # the mailbox, and more than the worker's one in hand

            def flood() -> list[tuple[int, str]]:
                """Fill the stuck worker's mailbox; the reports that come back."""
                r = Raw(port, source="127.0.0.2")
                try:
                    for i in range(sent):
                        r.send([local("stuck")], bytes([KIND_DATA]) + b"job %d" % i)
                    first = r.message(8.0)  # not forever: within drain_timeout and a margin
                    return [(first.kind, first.text)]
                finally:
                    r.close()

            def other_sender() -> bytes:
                """Another raw sender, from another address, to another worker."""
                r = Raw(port, source="127.0.0.3")
                try:
                    r.send([local("echo")], bytes([KIND_DATA]) + b"other worker")
                    m = r.message(5.0)
                    assert m.kind == KIND_DATA
                    return m.payload[1:]
                finally:
                    r.close()

            async with anyio.create_task_group() as tg:
                reports: list[tuple[int, str]] = []

                async def flooder() -> None:
                    reports.extend(await anyio.to_thread.run_sync(flood))

                tg.start_soon(flooder)
                await until(
                    lambda: delivered(victim, "stuck") == 1 + 4,
                    10,
                    "the stuck worker holding one message and its mailbox full",
                )
                # While the stuck worker holds the flooder's link, others are served.
                with within(5, "another raw sender served by another worker"):
                    assert await anyio.to_thread.run_sync(other_sender) == b"other worker"
                with within(5, "a legitimate echo while a worker is wedged"):
                    assert await client.request(at(port), b"meanwhile", timeout=5) == b"meanwhile"
                await until(lambda: bool(reports), 10, "the sender told the worker is busy")

            assert reports == [
                (KIND_ERROR, "worker 'stuck' on node victim is busy: it took no message for 2 s")
            ]
            assert victim.counters[MAILBOX_FULL] >= 1
            # Once the worker moves, it serves again: a local request gets its answer.
            release.set()
            assert await victim.request("/service/stuck", b"moving", timeout=5) == b"moving"
            assert handled[0] == b"job 0"
            assert await client.request(at(port), b"after", timeout=5) == b"after"

    run(main)
