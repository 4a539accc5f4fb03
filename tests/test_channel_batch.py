"""The channel cipher's framed batch calls: ``seal_frames`` and ``seal_stream`` produce a stream
of length-prefixed frames that the frame decoder and ``open``/``open_many`` read back, and they
are all-or-nothing."""

from __future__ import annotations

import os

import pytest

from tether._core import FrameDecoder
from tether.core import noise
from tether.core.errors import InvalidArgumentError, NonceExhaustedError


def _pair(
    rekey_interval: int = noise.DEFAULT_REKEY_INTERVAL,
) -> tuple[noise.ChannelCipher, noise.ChannelCipher]:
    name = noise.PROTOCOL_NAMES[0]
    i = noise.Handshake(name, initiator=True, static_key=noise.generate_keypair()[0])
    r = noise.Handshake(name, initiator=False, static_key=noise.generate_keypair()[0])
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    r.read_message(i.write_message())
    return (
        i.into_channel_cipher(rekey_interval=rekey_interval),
        r.into_channel_cipher(rekey_interval=rekey_interval),
    )


def test_seal_frames_round_trip_through_any_split() -> None:
    tx, rx = _pair()
    payloads = [b"", b"a", os.urandom(3000), os.urandom(noise.MAX_PAYLOAD_LEN)]
    wire = tx.seal_frames([bytearray(p) for p in payloads])  # any buffer type
    assert tx.sending_nonce == len(payloads)
    decoder = FrameDecoder(max_frame_len=noise.MAX_MESSAGE_LEN + 8)
    frames: list[bytes] = []
    for k in range(0, len(wire), 777):
        frames += decoder.feed(memoryview(wire)[k : k + 777])
    assert rx.open_many(frames) == payloads


def test_seal_stream_chunks_and_frames() -> None:
    tx, rx = _pair()
    data = os.urandom(200_000)
    wire = tx.seal_stream(data, chunk_size=50_000)
    frames = FrameDecoder(max_frame_len=1 << 17).feed(wire)
    assert len(frames) == 4
    assert b"".join(rx.open(f) for f in frames) == data
    default = tx.seal_stream(data)
    frames = FrameDecoder(max_frame_len=1 << 17).feed(default)
    assert [len(f) for f in frames] == [noise.MAX_PAYLOAD_LEN + noise.CHANNEL_OVERHEAD] * 3 + [
        200_000 - 3 * noise.MAX_PAYLOAD_LEN + noise.CHANNEL_OVERHEAD
    ]
    assert b"".join(rx.open(f) for f in frames) == data


def test_seal_frames_is_all_or_nothing() -> None:
    tx, _ = _pair(rekey_interval=2**62)  # so that skipping to the last nonces needs few rekeys
    with pytest.raises(InvalidArgumentError):
        tx.seal_frames([b"fine", bytes(noise.CHANNEL_MAX_PAYLOAD_LEN + 1)])
    assert tx.sending_nonce == 0
    with pytest.raises(InvalidArgumentError):
        tx.seal_stream(b"x", chunk_size=0)
    tx.skip_sending_nonce_to(2**64 - 3)
    with pytest.raises(NonceExhaustedError):
        tx.seal_frames([b"a", b"b", b"c"])
    assert tx.sending_nonce == 2**64 - 3
    assert len(tx.seal_frames([b"a", b"b"])) == 2 * (4 + 1 + noise.CHANNEL_OVERHEAD)
    with pytest.raises(NonceExhaustedError):
        tx.seal(b"last")


def test_skipping_nonces_is_bounded_by_the_rekey_epochs() -> None:
    tx, rx = _pair(rekey_interval=noise.REPLAY_WINDOW)
    with pytest.raises(InvalidArgumentError, match="rekey epochs"):
        tx.skip_sending_nonce_to(2**64 - 3)
    tx.skip_sending_nonce_to(3 * noise.REPLAY_WINDOW + 5)
    assert rx.open(tx.seal(b"three epochs on")) == b"three epochs on"
    assert rx.receiving_epoch == 3
