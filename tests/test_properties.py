"""Property tests (Hypothesis) for tether's wire formats and cryptographic state machines.

* Frames: any split of a stream decodes to the same frames; arbitrary input decodes exactly as a
  reference decoder says, or fails with FrameTooLargeError at exactly the right point.
* Routed messages: round trips, strict decoding (prefixes, extensions, arbitrary bytes).
* Noise XX handshakes: tampered messages are refused (or, for the unauthenticated message 1,
  caught exactly when Noise says they must be), which ends that handshake (``broken``, then
  BrokenError) without exposing anything from the refused message; a new handshake works.
* Transports (Transport and ChannelCipher): tampered messages are refused and change nothing.
* Anti-replay: arbitrary delivery orders, across rekey boundaries, and a stateful model.
* The AEAD layer: round trips (checked against pyca/cryptography) and single-bit tampering.

Examples per test come from the Hypothesis profile selected in ``conftest.py``; expensive tests
use a fraction of it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tether._core import Aead, FrameDecoder, encode_frame, encode_frames
from tether.core import noise
from tether.core.aead import NONCE_LEN, TAG_LEN
from tether.core.errors import (
    BrokenError,
    DecryptError,
    FrameTooLargeError,
    HandshakeError,
    InvalidArgumentError,
    ReplayError,
    RouteError,
    StateError,
)
from tether.core.frame import HEADER_LEN
from tether.core.message import MAX_HOPS, VERSION, Address, RoutedMessage

EXAMPLES = settings().max_examples  # the loaded profile's value (see conftest.py)


def scaled(fraction: float) -> settings:
    """Settings for a test that is expensive per example: a fraction of the profile's examples."""
    return settings(max_examples=max(5, int(EXAMPLES * fraction)))


def _as_buffer(kind: str, data: bytes) -> bytes | bytearray | memoryview:
    """The same bytes as another bytes-like type (every API takes any buffer)."""
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    return data


BUFFER_KINDS = st.sampled_from(["bytes", "bytearray", "memoryview"])


def _tampered(data: st.DataObject, message: bytes) -> bytes:
    """A changed copy of ``message``: one bit flipped, truncated, or extended."""
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]), label="tampering")
    if kind == "flip":
        bit = data.draw(st.integers(0, 8 * len(message) - 1), label="flipped bit")
        out = bytearray(message)
        out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)
    if kind == "truncate":
        return message[: data.draw(st.integers(0, len(message) - 1), label="truncated to")]
    return message + data.draw(st.binary(min_size=1, max_size=40), label="extra bytes")


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


def _split(data: st.DataObject, stream: bytes) -> list[bytes]:
    """Cut ``stream`` into chunks at arbitrary points (empty chunks included)."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@dataclass(frozen=True)
class ModelDecode:
    """What a correct decoder makes of a whole stream."""

    frames: list[tuple[int, bytes]]  # (stream offset where the frame is complete, payload)
    error_at: int | None  # offset where an over-limit header is complete, if any
    tail_start: int  # where the unfinished remainder starts (when there is no error)


def _model_decode(stream: bytes, max_frame_len: int) -> ModelDecode:
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while len(stream) - pos >= HEADER_LEN:
        n = int.from_bytes(stream[pos : pos + HEADER_LEN], "big")
        if n > max_frame_len:
            return ModelDecode(frames, pos + HEADER_LEN, pos)
        end = pos + HEADER_LEN + n
        if end > len(stream):
            break
        frames.append((end, stream[pos + HEADER_LEN : end]))
        pos = end
    return ModelDecode(frames, None, pos)


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    slack=st.integers(0, 16),
    kind=BUFFER_KINDS,
    data=st.data(),
)
def test_frames_survive_any_split(
    payloads: list[bytes], slack: int, kind: str, data: st.DataObject
) -> None:
    stream = encode_frames(payloads)
    assert stream == b"".join(encode_frame(p) for p in payloads)
    assert stream == b"".join(len(p).to_bytes(HEADER_LEN, "big") + p for p in payloads)
    # The limit is inclusive: a limit equal to the longest frame accepts it.
    dec = FrameDecoder(max_frame_len=max(map(len, payloads), default=0) + slack)
    got: list[bytes] = []
    for chunk in _split(data, stream):
        got.extend(dec.feed(_as_buffer(kind, chunk)))
    assert got == payloads
    assert dec.buffered == 0
    assert not dec.broken


@st.composite
def wild_streams(draw: st.DrawFn) -> tuple[bytes, int]:
    """A limit and a stream mixing valid frames (some over the limit), bare headers of any size
    and noise, so that frames, partial frames and oversized headers all occur."""
    max_frame_len = draw(st.integers(0, 64), label="max_frame_len")
    near_limit = st.integers(max(0, max_frame_len - 2), max_frame_len + 2)
    part = st.one_of(
        st.binary(max_size=max_frame_len + 8).map(encode_frame),
        near_limit.flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(encode_frame),
        st.one_of(near_limit, st.integers(0, 2**32 - 1)).map(
            lambda n: n.to_bytes(HEADER_LEN, "big")
        ),
        st.binary(max_size=12),
    )
    return b"".join(draw(st.lists(part, max_size=12), label="parts")), max_frame_len


@given(case=wild_streams(), data=st.data())
def test_arbitrary_stream_decodes_like_the_model_or_fails_cleanly(
    case: tuple[bytes, int], data: st.DataObject
) -> None:
    stream, max_frame_len = case
    model = _model_decode(stream, max_frame_len)
    dec = FrameDecoder(max_frame_len=max_frame_len)
    chunks = _split(data, stream)
    got: list[bytes] = []
    offset = 0
    for index, chunk in enumerate(chunks):
        end = offset + len(chunk)
        completed_here = [f for at, f in model.frames if offset < at <= end]
        if model.error_at is not None and offset < model.error_at <= end:
            event("over-limit header", "after frames" if got or completed_here else "first")
            with pytest.raises(FrameTooLargeError) as excinfo:
                dec.feed(chunk)
            # The frames this call completed before the bad header are not lost.
            assert excinfo.value.frames == completed_here
            got.extend(excinfo.value.frames)
            assert dec.broken
            # The stream cannot be resynchronised: all further input is refused.
            for later in [*chunks[index + 1 :], b"", b"\x00\x00\x00\x00"]:
                with pytest.raises(BrokenError):
                    dec.feed(later)
            break
        assert dec.feed(chunk) == completed_here
        got.extend(completed_here)
        offset = end
    else:
        assert model.error_at is None
        assert not dec.broken
        assert dec.buffered == len(stream) - model.tail_start
    assert got == [f for _, f in model.frames]
    assert all(len(f) <= max_frame_len for f in got)


# ---------------------------------------------------------------------------------------------
# Routed messages
# ---------------------------------------------------------------------------------------------

addresses = st.builds(Address, st.integers(0, 65535), st.binary(min_size=1, max_size=255))
routes = st.lists(addresses, max_size=MAX_HOPS).map(tuple)
routed_messages = st.builds(
    RoutedMessage, onward=routes, return_route=routes, payload=st.binary(max_size=512)
)


def _reference_encode(m: RoutedMessage) -> bytes:
    """The version-1 encoding, written out from the format description."""

    def route(r: Sequence[Address]) -> bytes:
        return bytes([len(r)]) + b"".join(
            a.transport.to_bytes(2, "big") + bytes([len(a.value)]) + a.value for a in r
        )

    return (
        bytes([VERSION])
        + route(m.onward)
        + route(m.return_route)
        + len(m.payload).to_bytes(4, "big")
        + m.payload
    )


@given(msg=routed_messages, kind=BUFFER_KINDS)
def test_routed_message_round_trip(msg: RoutedMessage, kind: str) -> None:
    encoded = msg.encode()
    assert encoded == _reference_encode(msg)
    assert RoutedMessage.decode(_as_buffer(kind, encoded)) == msg


@given(msg=routed_messages)
def test_encode_frame_is_the_framed_encoding(msg: RoutedMessage) -> None:
    assert msg.encode_frame() == encode_frame(_reference_encode(msg))


@given(
    items=st.lists(st.one_of(routed_messages, st.binary(max_size=64)), max_size=8),
    cuts=st.lists(st.integers(0, 4096), max_size=8),
)
def test_feed_messages_agrees_with_feed_then_decode(
    items: list[RoutedMessage | bytes], cuts: list[int]
) -> None:
    """Messages decoded straight from the stream are exactly what feeding frames and decoding
    each gives: malformed ones become a RouteError in their place, keepalives (empty frames)
    are skipped, and any split of the stream gives the same result."""
    frames = [m.encode() if isinstance(m, RoutedMessage) else m for m in items]
    stream = encode_frames(frames)
    expected: list[RoutedMessage | type[RouteError]] = []
    for f in frames:
        if not f:
            continue
        try:
            expected.append(RoutedMessage.decode(f))
        except RouteError:
            expected.append(RouteError)
    dec = FrameDecoder(max_frame_len=1 << 16)
    got: list[RoutedMessage | type[RouteError]] = []
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for a, b in itertools.pairwise(points):
        for m in dec.feed_messages(stream[a:b]):
            if isinstance(m, RouteError):
                got.append(RouteError)
            else:
                onward, ret, payload = m
                got.append(
                    RoutedMessage(
                        tuple(Address(t, v) for t, v in onward),
                        tuple(Address(t, v) for t, v in ret),
                        payload,
                    )
                )
    assert got == expected
    assert dec.buffered == 0


@given(msg=routed_messages)
def test_every_strict_prefix_of_a_routed_message_is_refused(msg: RoutedMessage) -> None:
    encoded = memoryview(msg.encode())
    for n in range(len(encoded)):
        with pytest.raises(RouteError):
            RoutedMessage.decode(encoded[:n])


@given(msg=routed_messages, extra=st.binary(min_size=1, max_size=64))
def test_any_extension_of_a_routed_message_is_refused(msg: RoutedMessage, extra: bytes) -> None:
    with pytest.raises(RouteError):
        RoutedMessage.decode(msg.encode() + extra)


@st.composite
def mangled_encodings(draw: st.DrawFn) -> bytes:
    """Valid encodings with a few random edits: near misses exercise every check."""
    out = bytearray(draw(routed_messages).encode())
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["set", "delete", "insert"]))
        pos = draw(st.integers(0, len(out)))
        if edit == "set" and pos < len(out):
            out[pos] = draw(st.integers(0, 255))
        elif edit == "delete":
            del out[pos : pos + draw(st.integers(1, 8))]
        else:
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


@given(data=st.one_of(st.binary(max_size=300), mangled_encodings()))
def test_arbitrary_bytes_decode_to_a_message_or_route_error(data: bytes) -> None:
    try:
        msg = RoutedMessage.decode(data)
    except RouteError:
        return
    assert isinstance(msg, RoutedMessage)
    assert len(msg.onward) <= MAX_HOPS
    assert len(msg.return_route) <= MAX_HOPS
    assert all(1 <= len(a.value) <= 255 for a in (*msg.onward, *msg.return_route))
    # Decoding is strict, so the encoding is canonical: what decodes re-encodes to itself.
    assert msg.encode() == data


@pytest.mark.parametrize(
    ("onward", "return_route"),
    [
        pytest.param((Address(0, b"x"),) * (MAX_HOPS + 1), (), id="onward-too-long"),
        pytest.param((), (Address(0, b"x"),) * (MAX_HOPS + 1), id="return-too-long"),
        pytest.param((Address(1, b""),), (), id="empty-address"),
        pytest.param((), (Address(1, bytes(256)),), id="address-too-long"),
    ],
)
def test_encoding_refuses_what_decoding_would_refuse(
    onward: tuple[Address, ...], return_route: tuple[Address, ...]
) -> None:
    with pytest.raises(RouteError):
        RoutedMessage(onward, return_route, b"payload").encode()


def test_decoding_refuses_too_many_hops_even_when_the_bytes_are_there() -> None:
    hop = (0).to_bytes(2, "big") + b"\x01x"
    data = bytes([VERSION, MAX_HOPS + 1]) + hop * (MAX_HOPS + 1) + b"\x00" + bytes(4)
    with pytest.raises(RouteError):
        RoutedMessage.decode(data)
    ok = bytes([VERSION, MAX_HOPS]) + hop * MAX_HOPS + b"\x00" + bytes(4)
    assert len(RoutedMessage.decode(ok).onward) == MAX_HOPS


# ---------------------------------------------------------------------------------------------
# Noise handshakes
# ---------------------------------------------------------------------------------------------

DH_LEN = 32  # X25519 public key: XX message 1 is e (32 bytes) || payload, in the clear
NAMES = st.sampled_from(noise.PROTOCOL_NAMES)
SEEDS = st.integers(0, 2**32 - 1)
HS_PAYLOADS = st.lists(st.binary(max_size=48), min_size=3, max_size=3)


def _key(seed: int, label: str) -> bytes:
    """Deterministic key material, so that every failing example replays exactly."""
    return hashlib.sha256(f"tether-test:{seed}:{label}".encode()).digest()


def _handshake(
    name: str, seed: int, initiator: bool, prologue: bytes = b"", ephemeral: str = "e"
) -> noise.Handshake:
    role = "initiator" if initiator else "responder"
    return noise.Handshake(
        name,
        initiator=initiator,
        static_key=_key(seed, f"{role}-static"),
        prologue=prologue,
        ephemeral_key=_key(seed, f"{role}-{ephemeral}"),
    )


def _public(seed: int, role: str) -> bytes:
    return noise.public_key(_key(seed, f"{role}-static"))


def _exchange(
    i: noise.Handshake, r: noise.Handshake, payloads: Sequence[bytes], start: int, stop: int
) -> None:
    """Run XX messages ``start..stop-1`` genuinely (even ones initiator -> responder)."""
    for k in range(start, stop):
        writer, reader = (i, r) if k % 2 == 0 else (r, i)
        assert reader.read_message(writer.write_message(payloads[k])) == payloads[k]


def _check_transports(i: noise.Handshake, r: noise.Handshake, seed: int | None) -> None:
    """Both sides finished and agree; the transports work both ways."""
    assert i.finished
    assert r.finished
    assert i.handshake_hash == r.handshake_hash
    if seed is not None:
        assert i.remote_static == _public(seed, "responder")
        assert r.remote_static == _public(seed, "initiator")
    ti, tr = i.into_transport(), r.into_transport()
    assert tr.decrypt(ti.encrypt(b"ping")) == b"ping"
    assert ti.decrypt(tr.encrypt(b"pong")) == b"pong"


def _fresh_handshake_succeeds(name: str) -> None:
    sk_i, _ = noise.generate_keypair()
    sk_r, _ = noise.generate_keypair()
    i = noise.Handshake(name, initiator=True, static_key=sk_i, prologue=b"")
    r = noise.Handshake(name, initiator=False, static_key=sk_r, prologue=b"")
    _exchange(i, r, [b"1", b"2", b"3"], 0, 3)
    _check_transports(i, r, None)


MESSAGE_INDEX = pytest.mark.parametrize("index", [0, 1, 2], ids=["msg1", "msg2", "msg3"])


@dataclass
class Refusal:
    """A handshake that refused a tampered message, and the genuine message it then got."""

    victim: noise.Handshake
    genuine: bytes  # what the victim should have received instead
    remote_static_before: bytes | None  # the victim's remote_static before the refusal


def _refuse_tampered(
    name: str,
    seed: int,
    index: int,
    payloads: Sequence[bytes],
    prologue: bytes,
    data: st.DataObject,
) -> Refusal:
    """Run XX up to message ``index``, tamper with it, and check that Noise refuses it where it
    must. Returns the handshake that refused it."""
    i = _handshake(name, seed, True, prologue)
    r = _handshake(name, seed, False, prologue)
    _exchange(i, r, payloads, 0, index)
    writer, reader = (i, r) if index % 2 == 0 else (r, i)
    genuine = writer.write_message(payloads[index])
    tampered = _tampered(data, genuine)
    note(f"message {index + 1}: {len(genuine)} bytes, tampered to {len(tampered)} bytes")

    if index == 0 and len(tampered) >= DH_LEN:
        # Message 1 is `e || payload` with no key yet: nothing in it can be checked, so any change
        # that leaves a full `e` is accepted, and the responder sees the changed payload...
        assert r.read_message(tampered) == tampered[DH_LEN:]
        assert not r.broken
        # ...but the change is in the handshake hash h (MixHash(e), MixHash(payload)), and
        # message 2 carries AEAD ciphertexts with h as associated data (and keys from DH(e, re),
        # which a changed `e` also changes), so the initiator must refuse message 2. Exactly
        # message 2: no tampered handshake can get past it. (This holds even for the top bit of
        # `e`, which X25519 ignores: h still differs.)
        bad_reply = r.write_message(payloads[1])
        before = i.remote_static
        with pytest.raises(HandshakeError):
            i.read_message(bad_reply)
        # The reply the initiator should have had: from a responder that got the genuine message.
        r2 = _handshake(name, seed, False, prologue, ephemeral="e-retry")
        assert r2.read_message(genuine) == payloads[0]
        return Refusal(i, r2.write_message(payloads[1]), before)

    # Authenticated messages (2 and 3), and a message 1 too short to hold `e`, are refused on
    # the spot.
    before = reader.remote_static
    with pytest.raises(HandshakeError):
        reader.read_message(tampered)
    return Refusal(reader, genuine, before)


@MESSAGE_INDEX
@given(
    name=NAMES,
    seed=SEEDS,
    payloads=HS_PAYLOADS,
    prologue=st.binary(max_size=16),
    data=st.data(),
)
def test_tampered_handshake_message_is_refused_and_ends_the_handshake(
    index: int,
    name: str,
    seed: int,
    payloads: list[bytes],
    prologue: bytes,
    data: st.DataObject,
) -> None:
    """``tether.core.noise``: a refused handshake message ends that handshake (``broken``, then
    BrokenError, even for the genuine message); a new handshake between the same parties works."""
    refusal = _refuse_tampered(name, seed, index, payloads, prologue, data)
    victim = refusal.victim
    assert victim.broken
    assert not victim.finished
    assert not victim.my_turn
    with pytest.raises(BrokenError):
        victim.read_message(refusal.genuine)
    with pytest.raises(BrokenError):
        victim.write_message(b"")
    assert victim.broken

    i = _handshake(name, seed, True, prologue, ephemeral="e-new")
    r = _handshake(name, seed, False, prologue, ephemeral="e-new")
    _exchange(i, r, payloads, 0, 3)
    _check_transports(i, r, seed)
    _fresh_handshake_succeeds(name)


@MESSAGE_INDEX
@given(name=NAMES, seed=SEEDS, payloads=HS_PAYLOADS, data=st.data())
def test_broken_handshake_cannot_become_a_transport(
    index: int, name: str, seed: int, payloads: list[bytes], data: st.DataObject
) -> None:
    """``Handshake.broken``: "every later call raises BrokenError" -- including the calls that
    would turn it into a transport."""
    victim = _refuse_tampered(name, seed, index, payloads, b"", data).victim
    with pytest.raises(BrokenError):
        victim.into_transport()
    with pytest.raises(BrokenError):
        victim.into_channel_cipher()


@MESSAGE_INDEX
@given(name=NAMES, seed=SEEDS, payloads=HS_PAYLOADS, data=st.data())
def test_refused_handshake_message_never_exposes_its_static_key(
    index: int, name: str, seed: int, payloads: list[bytes], data: st.DataObject
) -> None:
    """A static key decrypted from a message that was then refused is not an authenticated peer
    identity, and must not show as ``remote_static``: a peer that substitutes its own `e` and `s`
    (and spoils the payload) could otherwise make ``remote_static`` report a key of its choosing
    on a handshake that failed. After the refusal it is what it was before, or BrokenError."""
    refusal = _refuse_tampered(name, seed, index, payloads, b"", data)
    try:
        after = refusal.victim.remote_static
    except BrokenError:
        return
    assert after == refusal.remote_static_before


def test_misuse_is_not_terminal() -> None:
    """Calls out of turn are our own mistake, not the peer's: StateError, and nothing changes."""
    name = noise.PROTOCOL_NAMES[0]
    i = _handshake(name, 1, True)
    r = _handshake(name, 1, False)
    with pytest.raises(StateError):
        i.read_message(bytes(DH_LEN))
    with pytest.raises(StateError):
        r.write_message(b"")
    assert not i.broken
    assert not r.broken
    _exchange(i, r, [b"a", b"b", b"c"], 0, 3)
    _check_transports(i, r, 1)


# ---------------------------------------------------------------------------------------------
# Transports
# ---------------------------------------------------------------------------------------------

W = noise.REPLAY_WINDOW


def _finished_pair(name: str, seed: int) -> tuple[noise.Handshake, noise.Handshake]:
    i = _handshake(name, seed, True)
    r = _handshake(name, seed, False)
    _exchange(i, r, [b"", b"", b""], 0, 3)
    return i, r


def _channel_pair(
    name: str, seed: int, rekey_interval: int
) -> tuple[noise.ChannelCipher, noise.ChannelCipher]:
    i, r = _finished_pair(name, seed)
    return (
        i.into_channel_cipher(rekey_interval=rekey_interval),
        r.into_channel_cipher(rekey_interval=rekey_interval),
    )


@given(
    name=NAMES,
    seed=SEEDS,
    responder_sends=st.booleans(),
    before=st.lists(st.binary(max_size=64), max_size=6),
    payload=st.binary(max_size=200),
    after=st.binary(max_size=64),
    data=st.data(),
)
def test_tampered_transport_message_is_refused_and_changes_nothing(
    name: str,
    seed: int,
    responder_sends: bool,
    before: list[bytes],
    payload: bytes,
    after: bytes,
    data: st.DataObject,
) -> None:
    i, r = _finished_pair(name, seed)
    sender, receiver = i.into_transport(), r.into_transport()
    if responder_sends:
        sender, receiver = receiver, sender
    for p in before:
        assert receiver.decrypt(sender.encrypt(p)) == p
    genuine = sender.encrypt(payload)
    tampered = _tampered(data, genuine)
    nonce = receiver.receiving_nonce
    with pytest.raises(DecryptError):
        receiver.decrypt(tampered)
    assert receiver.receiving_nonce == nonce
    assert receiver.decrypt(genuine) == payload
    assert receiver.receiving_nonce == nonce + 1
    assert receiver.decrypt(sender.encrypt(after)) == after


@pytest.mark.parametrize("interval", [0, 1, W - 1])
def test_rekey_interval_must_cover_the_replay_window(interval: int) -> None:
    # A shorter interval would let the window reach back past the previous epoch's key.
    i, r = _finished_pair(noise.PROTOCOL_NAMES[0], 0)
    with pytest.raises(InvalidArgumentError):
        i.into_channel_cipher(rekey_interval=interval)
    assert r.into_channel_cipher(rekey_interval=W).rekey_interval == W


MAX_NONCE = 2**64 - 1


class ReceiverModel:
    """What a ChannelCipher receiver must do with a message carrying nonce ``n``.

    A message is refused with ReplayError when its nonce was already delivered or is at least
    REPLAY_WINDOW behind the highest one delivered; any other message is opened, and refused with
    DecryptError if it does not authenticate. (The window is checked first, so a forgery that
    carries a replayed or too-old nonce is a ReplayError. Nonce 2^64-1 is never valid.) Callers
    keep nonces within fewer epochs than the receiver may skip, so no genuine message is refused.
    """

    def __init__(self) -> None:
        self.highest: int | None = None
        self.delivered: set[int] = set()

    def refusal(self, n: int, *, genuine: bool) -> type[Exception] | None:
        if n == MAX_NONCE:
            return DecryptError
        h = self.highest
        if h is not None and n <= h and (h - n >= W or n in self.delivered):
            return ReplayError
        return None if genuine else DecryptError

    def accept(self, n: int) -> None:
        self.delivered.add(n)
        self.highest = n if self.highest is None else max(self.highest, n)


def _nonce_of(message: bytes) -> int | None:
    """The nonce a channel message claims, or None if it is too short or too long to be one."""
    if not noise.CHANNEL_OVERHEAD <= len(message) <= 8 + noise.MAX_MESSAGE_LEN:
        return None
    return int.from_bytes(message[:8], "big")


def _flip_nonce_bit(message: bytes, bit: int) -> bytes:
    """Flip bit ``bit`` (0 = least significant) of the big-endian nonce a message carries."""
    out = bytearray(message)
    out[7 - bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _tamper_refusal(model: ReceiverModel, tampered: bytes) -> type[Exception]:
    n = _nonce_of(tampered)
    if n is None:
        return DecryptError
    refusal = model.refusal(n, genuine=False)
    assert refusal is not None
    return refusal


@given(
    name=NAMES,
    seed=SEEDS,
    start=st.integers(0, 3 * W),
    delivered_first=st.integers(0, 10),
    in_nonce=st.booleans(),
    payload=st.binary(max_size=200),
    after=st.binary(max_size=64),
    data=st.data(),
)
def test_tampered_channel_message_is_refused_and_changes_nothing(
    name: str,
    seed: int,
    start: int,
    delivered_first: int,
    in_nonce: bool,
    payload: bytes,
    after: bytes,
    data: st.DataObject,
) -> None:
    sender, receiver = _channel_pair(name, seed, rekey_interval=W)
    model = ReceiverModel()
    # Start anywhere in the first epochs (a jump the receiver follows, rekeying), and deliver a
    # few messages in any order just below the one that will be tampered with.
    sender.skip_sending_nonce_to(start)
    earlier = sender.seal_many([b"%d" % k for k in range(delivered_first)])
    for k in data.draw(st.permutations(range(delivered_first)), label="delivery order"):
        assert receiver.open(earlier[k]) == b"%d" % k
        model.accept(start + k)
    genuine = sender.seal(payload)
    if in_nonce:
        # Clearing a set bit moves the nonce back: onto a delivered message or behind the window
        # (the window is checked before decryption, so those are ReplayError), or onto a nonce
        # never seen (DecryptError); setting a clear bit moves it ahead, possibly epochs ahead.
        n = start + delivered_first
        set_bits = [b for b in range(64) if n >> b & 1]
        any_bit = st.integers(0, 63)
        bits = st.one_of(st.sampled_from(set_bits), any_bit) if set_bits else any_bit
        bit = data.draw(bits, label="nonce bit")
        tampered = _flip_nonce_bit(genuine, bit)
    else:
        tampered = _tampered(data, genuine)
    expected = _tamper_refusal(model, tampered)
    note(f"tampered nonce {_nonce_of(tampered)}, expected {expected.__name__}")
    event("tampered channel message refused with", expected.__name__)
    state = (receiver.highest_received, receiver.receiving_epoch, receiver.sending_nonce)

    with pytest.raises(expected):
        receiver.open(tampered)
    [result] = receiver.open_many([tampered])
    assert isinstance(result, expected)
    assert (receiver.highest_received, receiver.receiving_epoch, receiver.sending_nonce) == state

    assert receiver.open(genuine) == payload
    assert receiver.highest_received == start + delivered_first
    assert receiver.receiving_epoch == (start + delivered_first) // W
    assert receiver.open(sender.seal(after)) == after


# ---------------------------------------------------------------------------------------------
# Anti-replay
# ---------------------------------------------------------------------------------------------


def _payload(n: int) -> bytes:
    return b"message %d" % n


def _outcome(model: ReceiverModel, n: int) -> str:
    """A label for statistics (``--hypothesis-show-statistics``)."""
    if model.refusal(n, genuine=True) is not None:
        return "duplicate" if n in model.delivered else "too old"
    if model.highest is None or n > model.highest:
        return "new highest"
    return "late, in window"


def _deliver(receiver: noise.ChannelCipher, model: ReceiverModel, n: int, message: bytes) -> bool:
    """Deliver a genuine message and check the outcome against the model; True if delivered."""
    refusal = model.refusal(n, genuine=True)
    event("delivery", _outcome(model, n))
    if refusal is None:
        assert receiver.open(message) == _payload(n), f"nonce {n}"
        model.accept(n)
        return True
    with pytest.raises(refusal):
        receiver.open(message)
    return False


@given(
    name=NAMES,
    seed=SEEDS,
    count=st.integers(1, 64),
    data=st.data(),
)
def test_replay_any_delivery_sequence(
    name: str, seed: int, count: int, data: st.DataObject
) -> None:
    sender, receiver = _channel_pair(name, seed, rekey_interval=noise.DEFAULT_REKEY_INTERVAL)
    messages = sender.seal_many([_payload(n) for n in range(count)])
    sequence = data.draw(st.lists(st.integers(0, count - 1), max_size=3 * count), label="seq")
    model = ReceiverModel()
    delivered = [n for n in sequence if _deliver(receiver, model, n, messages[n])]
    # All in one window: each message is delivered exactly once, on its first arrival.
    assert delivered == list(dict.fromkeys(sequence))
    assert receiver.highest_received == (max(sequence) if sequence else None)


EPOCHS = 4


@scaled(0.5)
@given(name=NAMES, seed=SEEDS, data=st.data())
def test_replay_and_reordering_across_rekey_boundaries(
    name: str, seed: int, data: st.DataObject
) -> None:
    # The smallest interval allowed: epochs are exactly one window long, so messages delivered
    # late from the previous epoch and replays from two epochs back both occur.
    sender, receiver = _channel_pair(name, seed, rekey_interval=W)
    count = EPOCHS * W + 50
    messages = sender.seal_many([_payload(n) for n in range(count)])
    assert sender.sending_epoch == EPOCHS

    def clamp(n: int) -> int:
        return min(max(n, 0), count - 1)

    near_boundary = st.builds(
        lambda e, d: clamp(e * W + d), st.integers(1, EPOCHS), st.integers(-24, 24)
    )
    model = ReceiverModel()
    delivered: list[int] = []
    for _ in range(data.draw(st.integers(1, 80), label="deliveries")):
        h = model.highest if model.highest is not None else 0
        around_window = st.integers(h - W - 8, h + 300).map(clamp)
        window_edge = st.integers(h - W - 3, h - W + 3).map(clamp)
        n = data.draw(
            st.one_of(near_boundary, around_window, window_edge, st.sampled_from(delivered or [0])),
            label="nonce",
        )
        if _deliver(receiver, model, n, messages[n]):
            delivered.append(n)
    assert len(delivered) == len(set(delivered))
    assert receiver.highest_received == model.highest
    if model.highest is not None:
        assert receiver.receiving_epoch == model.highest // W


@dataclass
class Sent:
    nonce: int
    payload: bytes
    message: bytes


class ChannelReplayMachine(RuleBasedStateMachine):
    """A sender and a receiver ChannelCipher; messages are sent, delivered in any order and any
    number of times, tampered with, and delivered in batches."""

    # Keep every nonce within a few epochs of the receiver (see ReceiverModel): skips stop here,
    # and sends move one nonce per step.
    MAX_SPAN_EPOCHS = 5

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Sent] = []
        self.by_nonce: dict[int, Sent] = {}
        self.model = ReceiverModel()
        self.delivered_log: list[tuple[int, bytes]] = []

    @initialize(
        name=NAMES,
        seed=SEEDS,
        interval=st.sampled_from([W, 2 * W, noise.DEFAULT_REKEY_INTERVAL]),
    )
    def setup(self, name: str, seed: int, interval: int) -> None:
        self.interval = interval
        self.sender, self.receiver = _channel_pair(name, seed, rekey_interval=interval)

    def _pick(self, i: int) -> Sent:
        # Index from the most recent: small indices (what shrinking prefers) are the newest.
        return self.sent[-1 - i % len(self.sent)]

    def _open_and_check(self, sent: Sent, result: bytes | Exception) -> None:
        event("machine: delivery", _outcome(self.model, sent.nonce))
        refusal = self.model.refusal(sent.nonce, genuine=True)
        if refusal is None:
            assert result == sent.payload, f"nonce {sent.nonce}: {result!r}"
            self.model.accept(sent.nonce)
            assert isinstance(result, bytes)
            self.delivered_log.append((sent.nonce, result))
        else:
            assert isinstance(result, refusal), f"nonce {sent.nonce}: {result!r}"

    def _open(self, message: bytes) -> bytes | Exception:
        try:
            return self.receiver.open(message)
        except (DecryptError, ReplayError) as e:
            return e

    @rule(payload=st.binary(max_size=32))
    def send(self, payload: bytes) -> None:
        n = self.sender.sending_nonce
        message = self.sender.seal(payload)
        assert self.sender.sending_nonce == n + 1
        assert message[:8] == n.to_bytes(8, "big")
        assert len(message) == len(payload) + noise.CHANNEL_OVERHEAD
        sent = Sent(n, payload, message)
        self.sent.append(sent)
        self.by_nonce[n] = sent

    @precondition(lambda self: self.sender.sending_nonce < self.MAX_SPAN_EPOCHS * self.interval)
    @rule(gap=st.one_of(st.integers(1, 8), st.integers(W - 8, W + 8)))
    def skip(self, gap: int) -> None:
        """Nonces never sent (lost messages): pushes the window and crosses epochs."""
        self.sender.skip_sending_nonce_to(self.sender.sending_nonce + gap)

    @precondition(lambda self: self.sent)
    @rule(i=st.integers(0, 2**16))
    def deliver(self, i: int) -> None:
        sent = self._pick(i)
        self._open_and_check(sent, self._open(sent.message))

    @precondition(lambda self: self.sent)
    @rule(i=st.integers(0, 2**16), in_nonce=st.booleans(), data=st.data())
    def tamper(self, i: int, in_nonce: bool, data: st.DataObject) -> None:
        sent = self._pick(i)
        if in_nonce:
            bad = _flip_nonce_bit(sent.message, data.draw(st.integers(0, 63), label="nonce bit"))
        else:
            bit = data.draw(st.integers(0, 8 * len(sent.message) - 1), label="flipped bit")
            flipped = bytearray(sent.message)
            flipped[bit // 8] ^= 1 << (bit % 8)
            bad = bytes(flipped)
        expected = _tamper_refusal(self.model, bad)
        event("machine: tampered message refused with", expected.__name__)
        state = (self.receiver.highest_received, self.receiver.receiving_epoch)
        with pytest.raises(expected):
            self.receiver.open(bad)
        assert (self.receiver.highest_received, self.receiver.receiving_epoch) == state

    @precondition(lambda self: self.sent)
    @rule(picks=st.lists(st.tuples(st.integers(0, 2**16), st.booleans()), max_size=8))
    def deliver_batch(self, picks: list[tuple[int, bool]]) -> None:
        """open_many: every entry is judged on its own, in order; a tampered entry (last byte of
        the tag flipped) is refused without affecting the others."""
        batch: list[tuple[Sent, bool]] = [(self._pick(i), bad) for i, bad in picks]
        messages = []
        for sent, bad in batch:
            m = sent.message
            messages.append(m[:-1] + bytes([m[-1] ^ 1]) if bad else m)
        results = self.receiver.open_many(messages)
        assert len(results) == len(batch)
        for (sent, bad), result in zip(batch, results, strict=True):
            if bad:
                assert isinstance(result, _tamper_refusal(self.model, sent.message))
            else:
                self._open_and_check(sent, result)

    @invariant()
    def delivered_once_and_genuine(self) -> None:
        nonces = [n for n, _ in self.delivered_log]
        assert len(nonces) == len(set(nonces))
        for n, payload in self.delivered_log:
            assert payload == self.by_nonce[n].payload
        if hasattr(self, "receiver"):
            assert self.receiver.highest_received == self.model.highest


ChannelReplayMachine.TestCase.settings = settings(
    max_examples=max(5, EXAMPLES // 2), stateful_step_count=40
)
TestChannelReplay = ChannelReplayMachine.TestCase


# ---------------------------------------------------------------------------------------------
# The AEAD layer
# ---------------------------------------------------------------------------------------------

ALGORITHMS = ["AES-256-GCM", "ChaCha20-Poly1305"]
REFERENCE: dict[str, Callable[[bytes], AESGCM | ChaCha20Poly1305]] = {
    "AES-256-GCM": AESGCM,
    "ChaCha20-Poly1305": ChaCha20Poly1305,
}
KEYS = st.binary(min_size=32, max_size=32)
NONCES = st.binary(min_size=NONCE_LEN, max_size=NONCE_LEN)


@given(
    algorithm=st.sampled_from(ALGORITHMS),
    key=KEYS,
    nonce=NONCES,
    aad=st.binary(max_size=64),
    plaintext=st.binary(max_size=1024),
    kind=BUFFER_KINDS,
)
def test_aead_round_trip(
    algorithm: str, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes, kind: str
) -> None:
    aead = Aead(algorithm, _as_buffer(kind, key))
    sealed = aead.seal(nonce, plaintext, aad=aad)
    assert len(sealed) == len(plaintext) + TAG_LEN
    # An independent implementation (OpenSSL via pyca/cryptography) agrees byte for byte.
    assert sealed == REFERENCE[algorithm](key).encrypt(nonce, plaintext, aad)
    buf = _as_buffer(kind, sealed)
    assert aead.open(_as_buffer(kind, nonce), buf, aad=_as_buffer(kind, aad)) == plaintext
    if not aad:
        assert aead.seal(nonce, plaintext) == sealed
        assert aead.open(nonce, sealed) == plaintext


@given(
    algorithm=st.sampled_from(ALGORITHMS),
    key=KEYS,
    nonce=NONCES,
    aad=st.binary(max_size=64),
    plaintext=st.binary(max_size=256),
    data=st.data(),
)
def test_aead_any_single_bit_flip_is_refused(
    algorithm: str, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes, data: st.DataObject
) -> None:
    aead = Aead(algorithm, key)
    sealed = aead.seal(nonce, plaintext, aad=aad)
    fields = {"ct": sealed[:-TAG_LEN], "tag": sealed[-TAG_LEN:], "nonce": nonce, "aad": aad}
    target = data.draw(st.sampled_from([k for k, v in fields.items() if v]), label="field")
    bit = data.draw(st.integers(0, 8 * len(fields[target]) - 1), label="bit")
    flipped = bytearray(fields[target])
    flipped[bit // 8] ^= 1 << (bit % 8)
    fields[target] = bytes(flipped)
    with pytest.raises(DecryptError):
        aead.open(fields["nonce"], fields["ct"] + fields["tag"], aad=fields["aad"])
    assert aead.open(nonce, sealed, aad=aad) == plaintext


@given(
    algorithm=st.sampled_from(ALGORITHMS),
    key=KEYS,
    nonce=NONCES,
    plaintext=st.binary(max_size=64),
    data=st.data(),
)
def test_aead_truncated_or_extended_is_refused(
    algorithm: str, key: bytes, nonce: bytes, plaintext: bytes, data: st.DataObject
) -> None:
    aead = Aead(algorithm, key)
    sealed = aead.seal(nonce, plaintext)
    if data.draw(st.booleans(), label="truncate"):
        changed = sealed[: data.draw(st.integers(0, len(sealed) - 1), label="length")]
    else:
        changed = sealed + data.draw(st.binary(min_size=1, max_size=32), label="extra")
    with pytest.raises(DecryptError):
        aead.open(nonce, changed)


@given(
    algorithm=st.sampled_from(ALGORITHMS),
    key=st.binary(max_size=64).filter(lambda k: len(k) != 32),
)
def test_aead_refuses_wrong_key_sizes(algorithm: str, key: bytes) -> None:
    with pytest.raises(InvalidArgumentError):
        Aead(algorithm, key)


@given(
    algorithm=st.sampled_from(ALGORITHMS),
    key=KEYS,
    nonce=st.binary(max_size=32).filter(lambda n: len(n) != NONCE_LEN),
    plaintext=st.binary(max_size=64),
)
def test_aead_refuses_wrong_nonce_sizes(
    algorithm: str, key: bytes, nonce: bytes, plaintext: bytes
) -> None:
    aead = Aead(algorithm, key)
    with pytest.raises(InvalidArgumentError):
        aead.seal(nonce, plaintext)
    with pytest.raises(InvalidArgumentError):
        aead.open(nonce, plaintext + bytes(TAG_LEN))
