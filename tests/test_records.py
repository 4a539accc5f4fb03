"""Sealed records for brokers (``tether._core.RecordSealer`` / ``RecordOpener``): the format
checked against an independent implementation (pyca/cryptography), round trips, headers, large
batches, tampering, wrong streams and producers, unknown keys, replay, reorder and gaps, and
inputs that are not what they should be.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from tether._core import (
    MAX_RECORD,
    RECORD_KEY_ID_LEN,
    RECORD_MAX_HEADERS,
    RECORD_OVERHEAD,
    RECORD_VERSION,
    OpenedRecord,
    RecordOpener,
    RecordRefused,
    RecordSealer,
    record_key_id,
)
from tether.core.errors import InvalidArgumentError, NonceExhaustedError

STREAM = "orders.eu"
PRODUCER = "I" + "0123456789abcdef" * 2 + "01234567"
KEY = bytes(range(32))
KEY_ID = bytes.fromhex("a1" * 16)
ALGORITHMS = ["AES-256-GCM", "ChaCha20-Poly1305"]

Headers = Sequence[tuple[str, bytes]]


def pair(
    algorithm: str = "AES-256-GCM", next_position: int = 0
) -> tuple[RecordSealer, RecordOpener]:
    sealer = RecordSealer(STREAM, PRODUCER, KEY_ID, KEY, algorithm, next_position)
    opener = RecordOpener(STREAM)
    opener.add_key(KEY_ID, KEY, PRODUCER, algorithm)
    return sealer, opener


def opened(outcome: OpenedRecord | RecordRefused) -> OpenedRecord:
    assert isinstance(outcome, OpenedRecord), outcome
    return outcome


def refused(outcome: OpenedRecord | RecordRefused) -> RecordRefused:
    assert isinstance(outcome, RecordRefused), outcome
    return outcome


# --- an independent implementation of the format (the spec, in Python) ------------------------


def spec_aad(stream: str, producer: str, header: bytes) -> bytes:
    s, p = stream.encode(), producer.encode("ascii")
    return b"tether-record/1" + struct.pack(">H", len(s)) + s + bytes([len(p)]) + p + header


def spec_nonce(position: int) -> bytes:
    return b"\0\0\0\0" + struct.pack(">Q", position)


def spec_envelope(headers: Headers, body: bytes) -> bytes:
    out = struct.pack(">H", len(headers))
    for name, value in headers:
        n = name.encode()
        out += struct.pack(">H", len(n)) + n + struct.pack(">I", len(value)) + value
    return out + body


def spec_cipher(algorithm: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(key) if algorithm == "AES-256-GCM" else ChaCha20Poly1305(key)


def spec_seal(
    envelope: bytes,
    position: int,
    *,
    algorithm: str = "AES-256-GCM",
    stream: str = STREAM,
    producer: str = PRODUCER,
) -> bytes:
    header = bytes([RECORD_VERSION]) + KEY_ID + struct.pack(">Q", position)
    aad = spec_aad(stream, producer, header)
    return header + spec_cipher(algorithm, KEY).encrypt(spec_nonce(position), envelope, aad)


def spec_open(record: bytes, algorithm: str) -> tuple[bytes, int, bytes]:
    assert record[0] == 1
    key_id, (position,) = record[1:17], struct.unpack(">Q", record[17:25])
    aad = spec_aad(STREAM, PRODUCER, record[:25])
    plain = spec_cipher(algorithm, KEY).decrypt(spec_nonce(position), record[25:], aad)
    return key_id, position, plain


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_format_matches_an_independent_implementation(algorithm: str) -> None:
    sealer, opener = pair(algorithm, next_position=41)
    headers = [("content-type", b"application/json"), ("ünïcode", b""), ("dup", b"1")]
    [record] = sealer.seal_many([b'{"a": 1}'], [headers])
    assert record_key_id(record) == KEY_ID
    assert len(record) == RECORD_OVERHEAD + len(spec_envelope(headers, b'{"a": 1}'))
    key_id, position, plain = spec_open(record, algorithm)
    assert (key_id, position) == (KEY_ID, 41)
    assert plain == spec_envelope(headers, b'{"a": 1}')
    # And the other way: a record sealed by the Python implementation opens.
    mine = spec_seal(spec_envelope([("x", b"y")], b"body"), 42, algorithm=algorithm)
    r = opened(opener.open_many([mine])[0])
    assert (r.position, r.gap, r.headers, r.body) == (42, 0, [("x", b"y")], b"body")
    assert (r.producer, r.key_id) == (PRODUCER, KEY_ID)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_round_trip_accepts_any_buffer(algorithm: str, kind: Callable[[bytes], object]) -> None:
    sealer, opener = pair(algorithm)
    bodies = [b"", b"one", os.urandom(5000)]
    records = sealer.seal_many([kind(b) for b in bodies], [None, [("h", kind(b"v"))], None])
    assert sealer.next_position == 3
    out = [opened(o) for o in opener.open_many([kind(r) for r in records])]
    assert [o.body for o in out] == bodies
    assert [o.position for o in out] == [0, 1, 2]
    assert [o.headers for o in out] == [[], [("h", b"v")], []]
    assert all(o.gap == 0 for o in out)


header_names = st.text(min_size=1, max_size=30).filter(lambda s: len(s.encode()) <= 255)
header_lists = st.lists(st.tuples(header_names, st.binary(max_size=50)), max_size=8)


@given(
    records=st.lists(st.tuples(header_lists, st.binary(max_size=400)), min_size=1, max_size=10),
    algorithm=st.sampled_from(ALGORITHMS),
    start=st.integers(min_value=0, max_value=2**63),
)
def test_any_headers_and_bodies_round_trip(
    records: list[tuple[list[tuple[str, bytes]], bytes]], algorithm: str, start: int
) -> None:
    sealer, opener = pair(algorithm, start)
    sealed = sealer.seal_many([b for _, b in records], [h for h, _ in records])
    for (headers, body), record, outcome in zip(
        records, sealed, opener.open_many(sealed), strict=True
    ):
        r = opened(outcome)
        assert (r.headers, r.body) == (headers, body)
        assert spec_open(record, algorithm)[2] == spec_envelope(headers, body)
    assert sealer.next_position == start + len(records)


def test_headers_are_checked_and_a_refused_batch_seals_nothing() -> None:
    sealer, _ = pair()
    sealer.seal_many([b"a"])
    bad: list[Sequence[tuple[str, bytes]] | None] = [
        [("", b"v")],
        [("n" * 256, b"v")],
        [("h", b"")] * (RECORD_MAX_HEADERS + 1),
    ]
    for headers in bad:
        with pytest.raises(InvalidArgumentError):
            sealer.seal_many([b"ok", b"bad"], [None, headers])
        assert sealer.next_position == 1
    with pytest.raises(InvalidArgumentError, match="one entry"):
        sealer.seal_many([b"a", b"b"], [None])
    with pytest.raises(InvalidArgumentError):
        sealer.seal_many([bytes(MAX_RECORD - RECORD_OVERHEAD - 1)])
    assert sealer.next_position == 1
    # 64 headers with the longest names are fine, and so is the largest body.
    many = [(f"{i:0>255}", b"v") for i in range(RECORD_MAX_HEADERS)]
    [record] = sealer.seal_many([b"x"], [many])
    assert len(record) == RECORD_OVERHEAD + 2 + 64 * (2 + 255 + 4 + 1) + 1
    [largest] = sealer.seal_many([bytes(MAX_RECORD - RECORD_OVERHEAD - 2)])
    assert len(largest) == MAX_RECORD


def test_a_batch_of_ten_thousand_small_records() -> None:
    sealer, opener = pair()
    bodies = [i.to_bytes(4, "big") * 4 for i in range(10_000)]
    headers = [[("seq", str(i).encode())] for i in range(10_000)]
    records = sealer.seal_many(bodies, headers)
    assert len(records) == 10_000
    assert sealer.next_position == 10_000
    out = opener.open_many(records)
    assert [opened(o).body for o in out] == bodies
    assert [opened(o).headers for o in out] == headers
    assert opener.last_position(PRODUCER) == 9_999


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_large_mixed_batches_match_the_spec_and_each_other(algorithm: str) -> None:
    """Batches big enough to be sealed and opened with the GIL released: every sealed record is
    its own bytes object and matches the spec byte for byte; refused records in the middle of a
    batch leave the records after them intact, in one call and in the next."""
    sealer, opener = pair(algorithm)
    bodies = [os.urandom(n) for n in (65536, 0, 1, 70_000, 4096, 65536)]
    headers: list[Headers | None] = [None, [("a", b"1")], None, [("b", b""), ("b", b"2")], None, []]
    records = sealer.seal_many(bodies, headers)
    assert all(type(r) is bytes for r in records)
    assert len({id(r) for r in records}) == len(records)
    for position, (body, hs, record) in enumerate(zip(bodies, headers, records, strict=True)):
        assert record == spec_seal(spec_envelope(hs or [], body), position, algorithm=algorithm)
    forged = bytearray(records[2])
    forged[-1] ^= 1
    batch = [records[0], bytes(forged), records[1], records[0], b"\x01", *records[2:]]
    out = opener.open_many(batch)
    assert [type(o).__name__ for o in out] == [
        "OpenedRecord",
        "RecordRefused",
        "OpenedRecord",
        "RecordRefused",
        "RecordRefused",
        "OpenedRecord",
        "OpenedRecord",
        "OpenedRecord",
        "OpenedRecord",
    ]
    assert [refused(o).reason for o in (out[1], out[3], out[4])] == [
        "forged",
        "replayed",
        "malformed",
    ]
    good = [opened(o) for o in out if isinstance(o, OpenedRecord)]
    assert [o.body for o in good] == bodies
    assert [o.headers for o in good] == [hs or [] for hs in headers]
    # The opener's scratch space is reused: the records of the first call are unchanged.
    more = sealer.seal_many([b"x" * 100_000] * 3)
    assert [opened(o).body for o in opener.open_many(more)] == [b"x" * 100_000] * 3
    assert [o.body for o in good] == bodies


def test_every_single_byte_flip_is_refused_and_changes_nothing() -> None:
    sealer, opener = pair()
    first, record, after = sealer.seal_many(
        [b"first", b"the record", b"after"], [None, [("k", b"v")], None]
    )
    opened(opener.open_many([first])[0])
    flipped = []
    for i in range(len(record)):
        bad = bytearray(record)
        bad[i] ^= 0x01
        flipped.append(bytes(bad))
    outcomes = opener.open_many(flipped)
    for i, (bad, outcome) in enumerate(zip(flipped, outcomes, strict=True)):
        r = refused(outcome)
        if 1 <= i <= RECORD_KEY_ID_LEN:
            # A changed key id names a key the opener does not have.
            assert (r.reason, r.key_id) == ("unknown-key", bad[1:17]), i
        else:
            assert r.reason in {"forged", "malformed"}, (i, r)
            assert r.reason == ("malformed" if i == 0 else "forged"), (i, r)
        assert KEY.hex() not in r.message
    assert opener.last_position(PRODUCER) == 0
    good = [opened(o) for o in opener.open_many([record, after])]
    assert [(g.position, g.gap, g.body) for g in good] == [(1, 0, b"the record"), (2, 0, b"after")]


def test_a_record_for_another_stream_or_producer_is_forged() -> None:
    sealer, _ = pair()
    [record] = sealer.seal_many([b"secret"])
    other_stream = RecordOpener("orders.us")
    other_stream.add_key(KEY_ID, KEY, PRODUCER)
    r = refused(other_stream.open_many([record])[0])
    assert (r.reason, r.key_id, r.position) == ("forged", KEY_ID, None)
    assert "forged" in r.message
    other_producer = RecordOpener(STREAM)
    other_producer.add_key(KEY_ID, KEY, "Imallory")
    assert refused(other_producer.open_many([record])[0]).reason == "forged"
    # A broker that relabels the stream in the AAD's place cannot: the Python implementation
    # sealing for another stream is refused too.
    _, opener = pair()
    moved = spec_seal(spec_envelope([], b"x"), 5, stream="orders.us")
    assert refused(opener.open_many([moved])[0]).reason == "forged"
    assert opened(opener.open_many([record])[0]).body == b"secret"


def test_an_unknown_key_is_reported_with_its_id() -> None:
    sealer, _ = pair()
    records = sealer.seal_many([b"a", b"b"])
    opener = RecordOpener(STREAM)
    outcomes = opener.open_many(records)
    for outcome in outcomes:
        r = refused(outcome)
        assert (r.reason, r.key_id, r.position) == ("unknown-key", KEY_ID, None)
        assert KEY_ID.hex() in r.message
        assert "add_key" in r.message
    # The consumer fetches the key named by the record and tries again.
    assert record_key_id(records[0]) == KEY_ID
    assert not opener.has_key(KEY_ID)
    opener.add_key(KEY_ID, KEY, PRODUCER)
    assert opener.has_key(KEY_ID)
    assert [opened(o).body for o in opener.open_many(records)] == [b"a", b"b"]
    opener.remove_key(KEY_ID)
    opener.remove_key(KEY_ID)
    assert not opener.has_key(KEY_ID)


def test_replay_and_reorder_are_refused_and_gaps_counted() -> None:
    sealer, opener = pair(next_position=100)
    r = sealer.seal_many([b"%d" % i for i in range(6)])
    # The broker drops 101 and 102, then delivers 102 late and replays 100.
    out = opener.open_many([r[0], r[3], r[2], r[0], r[3], r[4], r[5]])
    a, d, late, replay, again, e, f = out
    assert (opened(a).position, opened(a).gap) == (100, 0)
    assert (opened(d).position, opened(d).gap) == (103, 2)
    for outcome, position in [(late, 102), (replay, 100), (again, 103)]:
        x = refused(outcome)
        assert (x.reason, x.position, x.last, x.key_id) == ("replayed", position, 103, KEY_ID)
        assert "replayed or reordered" in x.message
    assert [(opened(x).position, opened(x).gap) for x in (e, f)] == [(104, 0), (105, 0)]
    # The first record seen from a producer sets the baseline.
    fresh = RecordOpener(STREAM)
    fresh.add_key(KEY_ID, KEY, PRODUCER)
    assert fresh.last_position(PRODUCER) is None
    assert opened(fresh.open_many([r[4]])[0]).gap == 0


@settings(max_examples=30)
@given(order=st.lists(st.integers(min_value=0, max_value=19), max_size=40))
def test_any_delivery_order_matches_the_model(order: list[int]) -> None:
    sealer, opener = pair()
    records = sealer.seal_many([bytes([i]) for i in range(20)])
    last: int | None = None
    for i, outcome in zip(order, opener.open_many([records[i] for i in order]), strict=True):
        if last is None or i > last:
            r = opened(outcome)
            assert (r.position, r.gap, r.body) == (
                i,
                0 if last is None else i - last - 1,
                bytes([i]),
            )
            last = i
        else:
            assert (refused(outcome).reason, refused(outcome).last) == ("replayed", last)


def test_inputs_that_are_not_bytes() -> None:
    sealer, opener = pair()
    for not_a_batch in [b"abc", bytearray(b"abc"), memoryview(b"abc"), "abc"]:
        with pytest.raises(TypeError, match="wrap it in a list"):
            sealer.seal_many(not_a_batch)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="wrap it in a list"):
            opener.open_many(not_a_batch)  # type: ignore[arg-type]
    for bad_item in [1, None, "text", [b"a"]]:
        with pytest.raises(TypeError):
            sealer.seal_many([bad_item])  # type: ignore[list-item]
        with pytest.raises(TypeError):
            opener.open_many([bad_item])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        sealer.seal_many([b"a"], [[("name", "not bytes")]])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        sealer.seal_many([b"a"], [[(b"name", b"v")]])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        sealer.seal_many([b"a"], [["ab"]])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        record_key_id("abc")  # type: ignore[arg-type]
    assert sealer.next_position == 0
    with pytest.raises(InvalidArgumentError, match="key id is 16 bytes"):
        RecordSealer(STREAM, PRODUCER, b"short", KEY)
    with pytest.raises(InvalidArgumentError, match="32 bytes"):
        RecordSealer(STREAM, PRODUCER, KEY_ID, KEY[:16])
    with pytest.raises(InvalidArgumentError, match="unknown AEAD algorithm"):
        RecordSealer(STREAM, PRODUCER, KEY_ID, KEY, "rot13")
    with pytest.raises(InvalidArgumentError, match="stream name"):
        RecordSealer("", PRODUCER, KEY_ID, KEY)
    with pytest.raises(InvalidArgumentError, match="producer identifier"):
        RecordSealer(STREAM, "not ascii é", KEY_ID, KEY)
    with pytest.raises(InvalidArgumentError, match="stream name"):
        RecordOpener("s" * 256)
    with pytest.raises(InvalidArgumentError, match="key id is 16 bytes"):
        opener.add_key(b"", KEY, PRODUCER)
    with pytest.raises(InvalidArgumentError, match="key id is 16 bytes"):
        opener.has_key(b"x" * 17)
    with pytest.raises(OverflowError):
        RecordSealer(STREAM, PRODUCER, KEY_ID, KEY, next_position=-1)
    with pytest.raises(OverflowError):
        RecordSealer(STREAM, PRODUCER, KEY_ID, KEY, next_position=2**64)


def test_the_last_position_is_never_used() -> None:
    sealer, opener = pair(next_position=2**64 - 3)
    with pytest.raises(NonceExhaustedError):
        sealer.seal_many([b"a", b"b", b"c"])
    records = sealer.seal_many([b"a", b"b"])
    assert sealer.next_position == 2**64 - 1
    with pytest.raises(NonceExhaustedError):
        sealer.seal_many([b""])
    assert [opened(o).position for o in opener.open_many(records)] == [2**64 - 3, 2**64 - 2]


def test_short_truncated_and_huge_claimed_lengths_are_malformed() -> None:
    _, opener = pair()
    # 30 bytes: shorter than any record (header and tag alone are RECORD_OVERHEAD bytes).
    short = bytes([RECORD_VERSION]) + KEY_ID + struct.pack(">Q", 0) + b"\xff" * 5
    assert len(short) == 30
    r = refused(opener.open_many([short])[0])
    assert (r.reason, r.key_id) == ("malformed", None)
    assert record_key_id(short) is None
    # An authentic record (its producer is faulty) whose envelope claims a 4 GiB header value
    # in 30 bytes: refused from the lengths alone, nothing allocated from the claim.
    envelope = struct.pack(">HH", 1, 1) + b"a" + struct.pack(">I", 0xFFFF_FFFF)
    envelope += b"\0" * (30 - len(envelope))
    assert len(envelope) == 30
    huge = spec_seal(envelope, 7)
    r = refused(opener.open_many([huge])[0])
    assert (r.reason, r.key_id, r.position) == ("malformed", KEY_ID, 7)
    assert "runs past the end" in r.message
    # 65535 headers claimed, and a header name longer than 255 bytes.
    for env in [struct.pack(">H", 0xFFFF), struct.pack(">HH", 1, 0xFFFF) + b"n" * 20]:
        assert refused(opener.open_many([spec_seal(env, 8)])[0]).reason == "malformed"
    # Nothing was counted: position 7 still opens.
    assert opened(opener.open_many([spec_seal(spec_envelope([], b""), 7)])[0]).gap == 0
    # Other malformed records: a bad version, too long, empty.
    bad_version = bytearray(huge)
    bad_version[0] = 2
    too_long = bytes([RECORD_VERSION]) + bytes(MAX_RECORD)
    outcomes = opener.open_many([bytes(bad_version), too_long, b""])
    assert [refused(o).reason for o in outcomes] == ["malformed"] * 3
    assert "version 2" in refused(outcomes[0]).message
    assert record_key_id(too_long) is None


def test_keys_stay_out_of_reprs_and_messages() -> None:
    sealer, opener = pair()
    text = repr(sealer) + repr(opener)
    assert KEY.hex() not in text
    assert "key=<hidden>" in repr(sealer)
    assert KEY_ID.hex() in repr(sealer)
    [record] = sealer.seal_many([b"body"], [[("h", b"v")]])
    r = opened(opener.open_many([record])[0])
    assert "body=<4 bytes>" in repr(r)
    other = RecordOpener(STREAM)
    other.add_key(KEY_ID, os.urandom(32), PRODUCER)
    refusal = refused(other.open_many([record])[0])
    assert 'RecordRefused(reason="forged"' in repr(refusal)


def test_outcomes_are_frozen() -> None:
    sealer, opener = pair()
    r = opened(opener.open_many(sealer.seal_many([b"x"]))[0])
    with pytest.raises(AttributeError):
        r.body = b"y"  # type: ignore[misc]
