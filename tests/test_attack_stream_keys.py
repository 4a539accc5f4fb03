"""Attacks on a producer's ``stream_keys`` service (docs/pipelines.md) from a raw socket, with
no tether code on the attacker's side: a key request that does not come through a secure
channel, malformed requests of every shape, and a flood of them. Each is refused with a reason
that carries no key material, and a consumer the stream's policy allows still gets its keys.
And the consumer's side: whatever bytes come back as an answer, parsing it raises
StreamKeyError (or EncodingError) and nothing else."""

from __future__ import annotations

import contextlib
import struct

import anyio
from hypothesis import given
from hypothesis import strategies as st

from peers import identifier
from rawwire import KIND_DATA, Raw, local
from tether.api import Node
from tether.core.errors import TetherError
from tether.identity.trust import ephemeral_identity, trust_identifiers
from tether.pipelines.stream import fetch_keys, key_service
from tether.services.stream_keys import DENIED, SERVICE, StreamKeyRing, parse_keys
from trio_run import run

HOST = "127.0.0.1"


def request(stream: bytes) -> bytes:
    return bytes([KIND_DATA, 1]) + struct.pack(">H", len(stream)) + stream


def test_key_requests_from_a_raw_socket_are_refused_and_consumers_still_served() -> None:
    async def main() -> None:
        async with (
            Node("producer", identity=ephemeral_identity()) as producer,
            Node("reader", identity=ephemeral_identity()) as reader,
        ):
            port = (await producer.listen_tcp(HOST)).port
            assert producer.identity is not None
            ring = StreamKeyRing("orders", producer.identity.identity.identifier)
            service = await key_service(producer)
            service.add(ring, f'subject.identifier = "{identifier(reader)}"')
            secret = ring.current.key

            def attack() -> list[bytes]:
                answers = []
                r = Raw(port)
                try:
                    bad = [
                        request(b"orders"),  # a good request, but through no secure channel
                        request(b"nope"),
                        bytes([KIND_DATA]),  # no op
                        bytes([KIND_DATA, 9]) + b"orders",  # unknown op
                        bytes([KIND_DATA, 1, 0, 200]) + b"short",  # a length past the end
                        request(b"orders") + b"trailing",
                        request(b""),  # an empty name
                        bytes([KIND_DATA, 1, 0xFF, 0xFF]) + b"x" * 300,  # over the limit
                        bytes([KIND_DATA, 1, 0x7F]),  # half a length
                    ]
                    for payload in bad:
                        r.send([local(SERVICE)], payload)
                        answers.append(r.message().payload)
                    for _ in range(500):  # a flood of valid-looking requests
                        r.send([local(SERVICE)], request(b"orders"))
                    answers += [m.payload for m in r.messages(3.0)]
                finally:
                    r.close()
                return answers

            answers = await anyio.to_thread.run_sync(attack)
            assert len(answers) >= 9 + 450
            for a in answers:
                assert a[:2] == bytes([KIND_DATA, DENIED]), a[:40]
                assert secret not in a
            assert b"only through a secure channel" in answers[0]
            assert b"malformed request" in answers[2]
            assert sum(service.refused.values()) >= 459
            assert service.served["orders"] == 0
            # A consumer the policy allows still gets the keys, through a secure channel.
            producer_id = producer.identity.identity.identifier
            got_producer, keys = await fetch_keys(
                reader,
                f"/ip4/{HOST}/tcp/{port}/secure/api",
                "orders",
                trust=trust_identifiers(producer_id),
            )
            assert got_producer == producer_id
            assert [k.key for k in keys] == [secret]

    run(main)


@given(st.binary(max_size=600))
def test_any_answer_parses_or_raises_a_tether_error(data: bytes) -> None:
    with contextlib.suppress(TetherError):
        parse_keys(data)
