"""One suite for every broker adapter (tether.pipelines.brokers), against real brokers on
loopback (tests/brokers.py): order, acknowledgement and redelivery, independent streams, payload
limits, a broker that is down, and nothing left running after ``aclose``."""

from __future__ import annotations

import itertools
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from brokers import KINDS, Server, running
from pgserver import HOST, unused_port
from tether.pipelines.brokers import Broker, BrokerError, Delivery, Subscription, connect
from tether.pipelines.brokers.mqtt import MqttBroker
from tether.pipelines.brokers.nats import NatsBroker
from tether.pipelines.brokers.redis import RedisBroker
from trio_run import run, within

_names = itertools.count()

# The threads an adapter starts (the asyncio loops' threads, paho's network threads).
THREAD_PREFIXES = ("tether-broker", "paho-mqtt-client")


@pytest.fixture(scope="module", params=KINDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One broker of each kind, shared by the module's tests (each keeps to its own names)."""
    kind: str = request.param
    with running(kind, tmp_path_factory.mktemp(kind)) as s:
        yield s


def fresh(what: str) -> str:
    return f"t{os.getpid()}-{what}-{next(_names)}"


def records(n: int, seed: int = 1) -> list[bytes]:
    """Binary records of varied sizes: empty, 1 byte, 1 KiB, 64 KiB, a few hundred bytes."""
    rng = random.Random(seed)
    sizes = (0, 1, 1024, 65536, 300)
    return [rng.randbytes(sizes[i % len(sizes)]) for i in range(n)]


async def take(
    sub: Subscription, n: int, *, ack: bool = False, timeout: float = 20
) -> list[Delivery]:
    """Fetch exactly ``n`` records (acknowledging each batch if ``ack``)."""
    got: list[Delivery] = []
    with within(timeout, f"{n} records fetched (got {len(got)})"):
        while len(got) < n:
            batch = await sub.fetch(min(100, n - len(got)), 5)
            got += batch
            if ack:
                await sub.ack(batch)
    assert len(got) == n
    return got


def our_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIXES))


def sockets_to(port: int) -> list[str]:
    """This process's TCP connections to ``port`` on loopback (from /proc)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[9] in inodes:
            found.append(line.strip())
    return found


def open_fds() -> list[str]:
    out = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            out.append(os.readlink(fd))
        except OSError:
            continue
    return sorted(out)


async def assert_nothing_left(port: int, fds_before: list[str] | None = None) -> None:
    with within(5, "the adapter's threads ended"):
        while our_threads():
            await anyio.sleep(0.01)
    assert sockets_to(port) == [], "sockets to the broker left open"
    if fds_before is not None:
        assert len(open_fds()) <= len(fds_before), "file descriptors left open"


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_records_come_in_order(server: Server, backend: str) -> None:
    """1 000 records of varied sizes (empty to 64 KiB, binary), published in batches, come
    back whole and in order; then the adapter leaves no thread or socket behind."""
    stream, consumer = fresh("order"), fresh("c")
    sent = records(1000)

    async def main() -> None:
        assert our_threads() == []
        fds = open_fds()
        broker = await connect(server.url)
        assert broker.scheme == server.kind
        sub = await broker.subscribe(stream, consumer)  # MQTT keeps only subscribed records
        for i in range(0, len(sent), 100):
            await broker.publish(stream, sent[i : i + 100])
        got = await take(sub, len(sent), ack=True)
        assert [d.payload for d in got] == sent
        assert not any(d.redelivered for d in got)
        assert await sub.fetch(10, 0.2) == []
        await sub.aclose()
        await broker.aclose()
        await assert_nothing_left(server.port, fds)

    run(main, backend)


def test_unacked_records_come_again(server: Server) -> None:
    """Fetch 10, ack 5, close: the next subscription of that consumer gets the 5 others first
    (marked redelivered), then the rest; nothing acknowledged comes again."""
    stream, consumer = fresh("acks"), fresh("c")
    sent = [f"record {i}".encode() for i in range(20)]

    async def main() -> None:
        broker = await connect(server.url)
        try:
            sub = await broker.subscribe(stream, consumer)
            await broker.publish(stream, sent)
            first = await take(sub, 10)
            assert [d.payload for d in first] == sent[:10]
            await sub.ack(first[:5])
            await sub.aclose()

            sub = await broker.subscribe(stream, consumer)
            again = await take(sub, 15)
            assert [d.payload for d in again] == sent[5:]
            assert all(d.redelivered for d in again[:5]), "records 5-9 were delivered before"
            if server.kind != "mqtt":  # the broker had sent them all to the MQTT session
                assert not any(d.redelivered for d in again[5:])
            await sub.ack(again)
            await sub.aclose()

            sub = await broker.subscribe(stream, consumer)
            assert await sub.fetch(10, 0.5) == [], "acknowledged records came again"
            await sub.aclose()
        finally:
            await broker.aclose()

    run(main)


def test_streams_and_consumers_are_independent(server: Server) -> None:
    """Two streams with consumers of the same name: each gets its own records only, and acks
    on one do not touch the other."""
    a, b, consumer = fresh("a"), fresh("b"), fresh("c")

    async def main() -> None:
        broker = await connect(server.url)
        try:
            sub_a = await broker.subscribe(a, consumer)
            sub_b = await broker.subscribe(b, consumer)
            await broker.publish(a, [b"a1", b"a2"])
            await broker.publish(b, [b"b1"])
            got_a = await take(sub_a, 2)
            got_b = await take(sub_b, 1)
            assert [d.payload for d in got_a] == [b"a1", b"a2"]
            assert [d.payload for d in got_b] == [b"b1"]
            await sub_a.ack(got_a)
            assert await sub_a.fetch(10, 0.3) == []
            assert await sub_b.fetch(10, 0.3) == []
            await sub_b.aclose()  # b's record was not acked: it comes again, a's do not
            sub_b = await broker.subscribe(b, consumer)
            assert [d.payload for d in await take(sub_b, 1)] == [b"b1"]
        finally:
            await broker.aclose()

    run(main)


def test_payload_over_the_limit_is_refused_before_sending(server: Server) -> None:
    """A batch with one payload over the broker's limit is refused whole, nothing sent; a
    payload of exactly the limit goes through."""
    stream, consumer = fresh("limit"), fresh("c")

    async def main() -> None:
        broker = await connect(server.url)
        try:
            limit = broker.max_payload
            assert 1024 * 1024 <= limit <= 2 * 1024 * 1024, f"the test server's limit: {limit}"
            sub = await broker.subscribe(stream, consumer)
            with pytest.raises(BrokerError, match="over the broker's limit") as e:
                await broker.publish(stream, [b"before", bytes(limit + 1), b"after"])
            assert "nothing of this batch was sent" in str(e.value)
            assert "max_payload" in str(e.value)
            biggest = random.Random(2).randbytes(limit)
            await broker.publish(stream, [biggest])
            got = await take(sub, 1)
            assert got[0].payload == biggest  # the refused batch's first record is not there
            await sub.ack(got)
            assert await sub.fetch(10, 0.3) == []
        finally:
            await broker.aclose()

    run(main)


@pytest.mark.parametrize(
    "stream", ["", "with space", "x" * 256, "tab\there", "nul\0"], ids=lambda s: repr(s)[:12]
)
def test_invalid_stream_names_are_refused(server: Server, stream: str) -> None:
    async def main() -> None:
        broker = await connect(server.url)
        try:
            with pytest.raises(BrokerError, match="name"):
                await broker.publish(stream, [b"x"])
            with pytest.raises(BrokerError, match="name"):
                await broker.subscribe(stream, "c")
        finally:
            await broker.aclose()

    run(main)


BROKER_SPECIFIC_BAD = {
    "nats": ["a.*", "a.>", "a..b", ".a", "$JS.x"],
    "mqtt": ["a/+", "a/#", "$SYS/x"],
    "redis": [],
}


def test_names_the_broker_cannot_take_are_refused(server: Server) -> None:
    async def main() -> None:
        broker = await connect(server.url)
        try:
            for stream in BROKER_SPECIFIC_BAD[server.kind]:
                with pytest.raises(BrokerError, match="stream name"):
                    await broker.publish(stream, [b"x"])
            # What one broker refuses, another may take: dots and slashes are fine everywhere.
            sub = await broker.subscribe(fresh("dotted.and/slashed"), fresh("c.d/e"))
            await sub.aclose()
        finally:
            await broker.aclose()

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_a_broker_that_is_not_there(kind: str) -> None:
    async def main() -> None:
        with within(20, "connect to a closed port failed"), pytest.raises(BrokerError) as e:
            await connect(f"{kind}://{HOST}:{unused_port()}")
        assert "cannot reach" in str(e.value)
        assert "check that" in str(e.value)
        assert our_threads() == []

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_a_broker_that_stops(kind: str, tmp_path: Path) -> None:
    """The broker goes away under a connection: the next call says so, and closing works."""

    async def main() -> None:
        with running(kind, tmp_path) as server:
            broker = await connect(server.url)
            stream = fresh("stops")
            sub = await broker.subscribe(stream, "c")
            await broker.publish(stream, [b"one"])
            server.stop()

            async def publish_until_refused() -> None:
                while True:  # until the client notices (the first call may be buffered)
                    await broker.publish(stream, [b"two"])
                    await anyio.sleep(0.05)

            with within(15, "the lost connection reported"), pytest.raises(BrokerError) as e:
                await publish_until_refused()
            assert "connect again" in str(e.value) or "check that the server runs" in str(e.value)
            await sub.aclose()
            await broker.aclose()
            await assert_nothing_left(server.port)

    run(main)


def test_connect_refuses_other_urls() -> None:
    async def main() -> None:
        for url in ["http://127.0.0.1:1", "nats://", "127.0.0.1:4222", "mqtt://h:1/path"]:
            with pytest.raises(BrokerError, match="URL"):
                await connect(url)

    run(main)


def test_broker_is_the_protocol() -> None:
    """Every adapter satisfies the interface (mypy checks it too, where connect returns them)."""
    adapters: list[type[Broker]] = [NatsBroker, RedisBroker, MqttBroker]
    assert [a.scheme for a in adapters] == list(KINDS)
