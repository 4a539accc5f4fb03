"""Cacophony's Noise vectors for every XX suite tether speaks: byte-identical messages and hash.

Message i is written by the initiator when i is even and by the responder when it is odd; the
first three are the XX handshake, the rest transport messages (implicit nonces).
"""

from __future__ import annotations

from typing import Any

import pytest

from tether.core import noise
from tether.core.errors import DecryptError
from vector_files import load

ALL = load("noise/cacophony-subset.json")["vectors"]
XX = [v for v in ALL if v["protocol_name"] in noise.PROTOCOL_NAMES]


def test_every_supported_suite_has_a_vector() -> None:
    assert sorted(v["protocol_name"] for v in XX) == sorted(noise.PROTOCOL_NAMES)
    assert len(noise.PROTOCOL_NAMES) == 4


def _pair(v: dict[str, Any]) -> tuple[noise.Handshake, noise.Handshake]:
    h = bytes.fromhex
    i = noise.Handshake(
        v["protocol_name"],
        initiator=True,
        static_key=h(v["init_static"]),
        prologue=h(v["init_prologue"]),
        ephemeral_key=h(v["init_ephemeral"]),
    )
    r = noise.Handshake(
        v["protocol_name"],
        initiator=False,
        static_key=h(v["resp_static"]),
        prologue=h(v["resp_prologue"]),
        ephemeral_key=h(v["resp_ephemeral"]),
    )
    return i, r


@pytest.mark.parametrize("v", XX, ids=[v["protocol_name"] for v in XX])
def test_vector(v: dict[str, Any]) -> None:
    i, r = _pair(v)
    messages = v["messages"]
    assert len(messages) > 3
    for n, m in enumerate(messages[:3]):
        writer, reader = (i, r) if n % 2 == 0 else (r, i)
        payload, expected = bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])
        assert writer.write_message(payload) == expected, f"handshake message {n}"
        assert reader.read_message(expected) == payload
    assert i.finished
    assert r.finished
    assert i.handshake_hash.hex() == v["handshake_hash"]
    assert r.handshake_hash.hex() == v["handshake_hash"]
    assert i.remote_static == noise.public_key(bytes.fromhex(v["resp_static"]))
    assert r.remote_static == noise.public_key(bytes.fromhex(v["init_static"]))

    ti, tr = i.into_transport(), r.into_transport()
    for n, m in enumerate(messages[3:], start=3):
        writer, reader = (ti, tr) if n % 2 == 0 else (tr, ti)
        payload, expected = bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])
        assert writer.encrypt(payload) == expected, f"transport message {n}"
        assert reader.decrypt(expected) == payload
        with pytest.raises(DecryptError):  # the same message again is under the next nonce
            reader.decrypt(expected)


@pytest.mark.parametrize("v", XX[:1], ids=[XX[0]["protocol_name"]])
def test_vector_keys_are_used_not_ignored(v: dict[str, Any]) -> None:
    """A different ephemeral key must change message 0: the vector check above is not vacuous."""
    i, _ = _pair(v)
    other = noise.Handshake(
        v["protocol_name"], initiator=True, static_key=bytes(32), ephemeral_key=bytes([1] * 32)
    )
    assert i.write_message(b"") != other.write_message(b"")
