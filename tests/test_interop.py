"""Live interop with an independent Noise implementation, the ``noiseprotocol`` package.

Both roles (it initiates and tether responds, and the reverse), every suite, payloads in the
handshake, transport messages both ways, and REKEY on both sides at the same point.
"""

from __future__ import annotations

import os
from typing import Protocol

import pytest
from noise.connection import Keypair, NoiseConnection

from tether.core import noise


class _Transport(Protocol):
    def encrypt(self, data: bytes) -> bytes: ...
    def decrypt(self, data: bytes) -> bytes: ...


def _theirs(name: str, initiator: bool, sk: bytes) -> NoiseConnection:
    c = NoiseConnection.from_name(name.encode())
    if initiator:
        c.set_as_initiator()
    else:
        c.set_as_responder()
    c.set_keypair_from_private_bytes(Keypair.STATIC, sk)
    c.set_prologue(b"tether interop")
    c.start_handshake()
    return c


@pytest.mark.parametrize("name", noise.PROTOCOL_NAMES)
@pytest.mark.parametrize(
    "tether_initiates", [True, False], ids=["tether-initiates", "it-initiates"]
)
def test_handshake_and_transport(name: str, tether_initiates: bool) -> None:
    our_sk, _ = noise.generate_keypair()
    their_sk = os.urandom(32)
    ours = noise.Handshake(
        name, initiator=tether_initiates, static_key=our_sk, prologue=b"tether interop"
    )
    theirs = _theirs(name, not tether_initiates, their_sk)

    # The three XX messages, each with a payload, alternating writers.
    for n in range(3):
        payload = f"handshake payload {n}".encode()
        if (n % 2 == 0) == tether_initiates:
            assert theirs.read_message(ours.write_message(payload)) == payload
        else:
            assert ours.read_message(theirs.write_message(payload)) == payload
    assert ours.finished
    assert theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    assert ours.remote_static == noise.public_key(their_sk)

    t = ours.into_transport()
    for size in (0, 1, 1000, noise.MAX_PAYLOAD_LEN):
        data = os.urandom(size)
        assert theirs.decrypt(t.encrypt(data)) == data
        assert t.decrypt(theirs.encrypt(data)) == data

    # REKEY on both sides, both directions; then messages still flow and old keys no longer work.
    t.rekey_outgoing()
    theirs.rekey_inbound_cipher()
    t.rekey_incoming()
    theirs.rekey_outbound_cipher()
    for _ in range(3):
        assert theirs.decrypt(t.encrypt(b"after rekey")) == b"after rekey"
        assert t.decrypt(theirs.encrypt(b"and back")) == b"and back"
    assert t.sending_nonce == 7
    assert t.receiving_nonce == 7
