"""End-to-end encrypted pipelines (docs/pipelines.md) through real brokers (NATS JetStream,
Redis Streams, MQTT), each started on loopback: records flow in order with their headers, the
broker (read with its own client library) holds no plaintext, keys follow the stream's policy
(an unauthorized consumer and a revoked one open nothing new), and a record altered in the broker
is refused, counted, and the stream goes on."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from brokers import running
from test_authority import Auth, member, route_of, running_authority
from tether.api import Node
from tether.identity.trust import ephemeral_identity
from tether.pipelines.brokers import Broker, connect
from tether.pipelines.stream import Consumer, Producer
from tether.services.stream_keys import StreamKeyError
from trio_run import run, until

MARKER = b"PLAINTEXT-MARKER-7f3a91"
READERS = 'subject.role = "orders-reader"'
KINDS = ("redis", "nats", "mqtt")


@pytest.fixture(params=KINDS, scope="module")
def broker_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running(request.param, tmp_path_factory.mktemp(request.param)) as server:
        yield request.param, server.url


# --- the broker's own client, reading what it stores ------------------------------------------


@contextlib.contextmanager
def raw_reader(kind: str, url: str, stream: str) -> Iterator[list[bytes]]:
    """Everything the broker stores or delivers for ``stream``, read with its own client (no
    tether code): payloads, and headers/properties flattened into bytes. For MQTT, a subscriber
    that is there before anything is published (MQTT keeps nothing for later subscribers)."""
    seen: list[bytes] = []
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    if kind == "mqtt":
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            props = getattr(msg.properties, "UserProperty", None) or []
            seen.append(msg.payload + b"".join(k.encode() + v.encode() for k, v in props))

        client.on_message = on_message
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect(host, int(port))
        client.loop_start()
        client.subscribe(stream, qos=1)
        assert subscribed.wait(10)
        try:
            yield seen
        finally:
            client.loop_stop()
            client.disconnect()
        return
    yield seen  # the stored records are read at the end
    if kind == "redis":
        import redis

        r = redis.Redis(host=host, port=int(port))
        for _id, fields in r.xrange(stream):
            seen.append(b"".join(k + v for k, v in fields.items()))
        r.close()
    else:
        import asyncio

        import nats

        async def read() -> None:
            nc = await nats.connect(f"nats://{host}:{port}")
            js = nc.jetstream()
            name = await js.find_stream_name_by_subject(stream)
            info = await js.stream_info(name)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                headers = b"".join(k.encode() + v.encode() for k, v in (msg.headers or {}).items())
                seen.append((msg.data or b"") + headers)
            await nc.close()

        asyncio.run(read())


# --- helpers ------------------------------------------------------------------------------------


async def take(consumer: Consumer, n: int, timeout: float = 20.0) -> list[Any]:
    got: list[Any] = []
    with anyio.fail_after(timeout):
        while len(got) < n:
            got += await consumer.fetch(max_records=n - len(got), timeout=0.5)
    return got


@contextlib.asynccontextmanager
async def site(
    tmp_path: Path, *, poll_interval: float = 60.0
) -> AsyncIterator[tuple[Auth, contextlib.AsyncExitStack, Node, Node]]:
    """An authority; the producer's node (``orders``, listening) and a reader's, members with
    the roles ``orders-writer`` and ``orders-reader``."""
    async with (
        running_authority(tmp_path / "auth") as auth,
        contextlib.AsyncExitStack() as stack,
    ):
        orders = await member(
            stack, auth, "orders", listen=True, poll_interval=poll_interval, role="orders-writer"
        )
        reader = await member(stack, auth, "reader", role="orders-reader")
        yield auth, stack, orders, reader


def keys_route(node: Node) -> str:
    return f"{route_of(node)}/secure/api"


# --- the tests ----------------------------------------------------------------------------------


def test_records_flow_in_order_and_the_broker_reads_nothing(
    broker_url: tuple[str, str], tmp_path: Path
) -> None:
    kind, url = broker_url
    stream = f"orders-flow-{kind}"

    async def main() -> None:
        async with site(tmp_path) as (_, _, orders, reader):
            pub: Broker = await connect(url)
            sub: Broker = await connect(url)
            try:
                async with Consumer(reader, sub, stream, keys_route(orders), "reader") as c:
                    async with Producer(
                        orders, pub, stream, allow=READERS, rotate_after_records=128
                    ) as p:
                        bodies = [MARKER + b" record %d" % i + bytes(i % 7) for i in range(400)]
                        headers = [[("trace", MARKER + b"%d" % i)] for i in range(400)]
                        for i in range(0, 400, 100):
                            await p.publish(bodies[i : i + 100], headers[i : i + 100])
                        assert p.ring.rotations == 3  # 400 records, 128 per key
                    got = await take(c, 400)
                    assert [r.body for r in got] == bodies
                    assert [r.headers for r in got] == headers
                    positions = [r.position for r in got]
                    assert positions == sorted(positions)
                    assert len(set(positions)) == 400
                    assert c.refused == {}
                    assert {r.producer for r in got} == {orders.identity.identity.identifier}

                    # The producer restarted (a new key ring) and publishing from several tasks
                    # at once: its positions go on above the old ones (a gap, not replays), and
                    # each batch reaches the broker in the order of its positions.
                    async with Producer(orders, pub, stream, allow=READERS) as p2:
                        more = [b"task %d record %d" % (t, i) for t in range(4) for i in range(25)]
                        async with anyio.create_task_group() as tg:
                            for i in range(0, 100, 5):
                                tg.start_soon(p2.publish, more[i : i + 5])
                    got = await take(c, 100)
                    assert sorted(r.body for r in got) == sorted(more)
                    assert c.refused == {}
                    assert got[0].gap > 0
                    assert sum(r.gap for r in got[1:]) == 0
                    positions = [r.position for r in got]
                    assert positions == sorted(positions)
            finally:
                await pub.aclose()
                await sub.aclose()

    with raw_reader(kind, url, stream) as stored:
        run(main)
    assert len(stored) >= 400
    assert not any(MARKER in s for s in stored), "plaintext in the broker"
    assert not any(b"record 1" in s for s in stored)


def test_keys_follow_the_policy_unauthorized_and_revoked_open_nothing_new(
    broker_url: tuple[str, str], tmp_path: Path
) -> None:
    kind, url = broker_url
    stream = f"orders-policy-{kind}"

    async def main() -> None:
        async with site(tmp_path, poll_interval=0.5) as (auth, stack, orders, reader):
            stranger = await member(stack, auth, "stranger", role="billing")
            brokers = [await connect(url) for _ in range(3)]
            try:
                async with (
                    Consumer(reader, brokers[1], stream, keys_route(orders), "reader") as good,
                    Consumer(stranger, brokers[2], stream, keys_route(orders), "stranger") as bad,
                    Producer(orders, brokers[0], stream, allow=READERS) as p,
                ):
                    await p.publish([b"before %d" % i for i in range(10)])
                    assert [r.body for r in await take(good, 10)] == [
                        b"before %d" % i for i in range(10)
                    ]
                    # The stranger's node was refused the keys: it opens nothing.
                    with anyio.move_on_after(3):
                        while sum(bad.refused.values()) < 10:
                            assert await bad.fetch(timeout=0.5) == []
                    assert bad.refused == {"not-allowed": 10}
                    assert "orders-reader" in bad.last_refusal
                    assert bad.opened == 0

                    # The reader is revoked; the producer's node learns it; the key rotates.
                    credential = reader.memberships[auth.identifier].credential
                    await auth.authority.delete_member(reader.identity.identity.identifier)
                    await until(
                        lambda: (
                            credential.id in orders.revoked_credentials.get(auth.identifier, ())
                        ),
                        10,
                        "the producer's node learned the revocation",
                    )
                    p.ring.rotate()
                    await p.publish([b"after %d" % i for i in range(5)])
                    with anyio.move_on_after(5):
                        while good.refused["not-allowed"] < 5:
                            assert await good.fetch(timeout=0.5) == []
                    assert good.refused == {"not-allowed": 5}
                    assert good.opened == 10
            finally:
                for b in brokers:
                    await b.aclose()

    run(main)


def test_an_altered_record_is_refused_counted_and_the_stream_goes_on(
    broker_url: tuple[str, str], tmp_path: Path
) -> None:
    kind, url = broker_url
    stream = f"orders-tamper-{kind}"

    async def main() -> None:
        async with site(tmp_path) as (_, _, orders, reader):
            pub, sub = await connect(url), await connect(url)
            try:
                async with (
                    Consumer(reader, sub, stream, keys_route(orders), "reader") as c,
                    Producer(orders, pub, stream, allow=READERS) as p,
                ):
                    await p.publish([b"one", b"two"])
                    # What a broker could do: alter a stored record, replay one, move one.
                    three, four, five = (
                        p.ring.lease(3).sealer().seal_many([b"three", b"four", b"five"])
                    )
                    altered = bytearray(four)
                    altered[-20] ^= 1
                    await pub.publish(stream, [three, bytes(altered), three, five, b"junk"])
                    got = await take(c, 4)
                    with anyio.move_on_after(2):
                        while sum(c.refused.values()) < 3:
                            await c.fetch(timeout=0.5)
                    assert [r.body for r in got] == [b"one", b"two", b"three", b"five"]
                    assert got[3].gap == 1  # "four" never opened: one position skipped
                    assert c.refused == {"forged": 1, "replayed": 1, "malformed": 1}
                    assert c.gaps == 1
                    # The stream goes on.
                    await p.publish([b"six"])
                    assert [r.body for r in await take(c, 1)] == [b"six"]
            finally:
                await pub.aclose()
                await sub.aclose()

    run(main)


def test_a_record_is_acknowledged_only_after_the_application_took_it(
    broker_url: tuple[str, str], tmp_path: Path
) -> None:
    kind, url = broker_url
    stream = f"orders-ack-{kind}"

    async def main() -> None:
        async with site(tmp_path) as (_, _, orders, reader):
            pub = await connect(url)
            try:
                sub = await connect(url)
                c = Consumer(reader, sub, stream, keys_route(orders), "reader", batch=5)
                await c.__aenter__()
                async with Producer(orders, pub, stream, allow=READERS) as p:
                    bodies = [b"r%d" % i for i in range(10)]
                    await p.publish(bodies)
                    # The application takes batches (each fetch acknowledges the batch before
                    # it) until it holds five records or more...
                    batches: list[list[Any]] = []
                    with anyio.fail_after(20):
                        while sum(map(len, batches)) < 5:
                            if batch := await c.fetch(max_records=5, timeout=0.5):
                                batches.append(batch)
                    taken = [r.body for b in batches for r in b]
                    assert taken == bodies[: len(taken)]
                    acked = sum(map(len, batches[:-1]))
                    # ...and dies with the last batch in hand: it was not acknowledged.
                    await c.aclose(ack=False)
                    await sub.aclose()
                    sub = await connect(url)
                    async with Consumer(
                        reader, sub, stream, keys_route(orders), "reader", batch=20
                    ) as again:
                        got = await take(again, 10 - acked)
                        assert [r.body for r in got] == bodies[acked:]
                    await sub.aclose()
                    # Everything was acknowledged when that consumer closed: nothing comes back.
                    sub = await connect(url)
                    async with Consumer(reader, sub, stream, keys_route(orders), "reader") as last:
                        assert await last.fetch(timeout=1.0) == []
                    await sub.aclose()
            finally:
                await pub.aclose()

    run(main)


def test_a_producer_needs_an_identity_and_a_stream_name() -> None:
    async def main() -> None:
        async with Node("anon") as node:
            with pytest.raises(StreamKeyError, match="needs an identity"):
                Producer(node, None, "s", allow=READERS)  # type: ignore[arg-type]
        async with Node("named", identity=ephemeral_identity()) as node:
            for bad in ("", "two words", "x" * 256):
                with pytest.raises(StreamKeyError, match="invalid stream name"):
                    Producer(node, None, bad, allow=READERS)  # type: ignore[arg-type]

    run(main)
