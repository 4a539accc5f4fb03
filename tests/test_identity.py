"""Identities (change histories, identifiers, check_update) and purpose-key attestations.

The code in ``tether/identity.py`` is the spec. A history is
``type(0x02) version(1) count(u8)`` then per change
``flag(has previous) [previous hash(32)] key(32) created_at(u64) signature(64) [previous-key
signature(64)]``; an attestation is ``type(0x03) version(1) subject(20) purpose(u8) key(32)
created_at(u64) expires_at(u64) signer change(32) signature(64)``.

Every rejection is checked with its precise error class. Hand-built histories are signed
correctly by a :class:`~tether.identity.vault.MemoryVault`, so only the check under test can fail.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.core.encoding import Writer
from tether.core.errors import (
    AttestationError,
    BrokenLinkError,
    ChangeOrderError,
    DowngradeError,
    EncodingError,
    ForkError,
    IdentityError,
    SignatureError,
)
from tether.identity import identity
from tether.identity.identity import (
    ATTESTATION_SIZE,
    HASH_LEN,
    KEY_LEN,
    MAX_CHANGES,
    MAX_HISTORY_SIZE,
    SIGNATURE_LEN,
    Attestation,
    Change,
    Identity,
    Purpose,
    SignedChange,
    decode_history,
    encode_history,
    verify_attestation,
    verify_history,
)
from tether.identity.vault import KeyType, MemoryVault

EXAMPLES = settings().max_examples  # the loaded profile's value (see conftest.py)
T0 = 1_700_000_000
IDENTIFIER = re.compile(r"^I[0-9a-f]{40}$")

# Byte layout of a history (see the module docstring).
HEADER_LEN = 3
FIRST_CHANGE_LEN = 1 + KEY_LEN + 8 + SIGNATURE_LEN
LATER_CHANGE_LEN = 1 + HASH_LEN + KEY_LEN + 8 + 2 * SIGNATURE_LEN


def scaled(fraction: float) -> settings:
    """Settings for a test that is expensive per example: a fraction of the profile's examples."""
    return settings(max_examples=max(5, int(EXAMPLES * fraction)))


# ---------------------------------------------------------------------------------------------
# Helpers: genuine identities, and histories built by hand (correctly signed)
# ---------------------------------------------------------------------------------------------


def make_identity(rotations: int, vault: MemoryVault | None = None) -> tuple[Identity, str, list]:
    """An identity rotated ``rotations`` times; returns it, its current key id and every
    intermediate Identity (index i has i+1 changes)."""
    vault = vault or MemoryVault()
    ident, key_id = identity.create(vault, T0)
    versions = [ident]
    for i in range(rotations):
        ident, key_id = identity.rotate(vault, ident, key_id, T0 + 10 * (i + 1))
        versions.append(ident)
    return ident, key_id, versions


def sign_change(
    vault: MemoryVault, change: Change, own_key_id: str, previous_key_id: str | None
) -> SignedChange:
    message = change.signed_message()
    return SignedChange(
        change,
        vault.sign(own_key_id, message),
        None if previous_key_id is None else vault.sign(previous_key_id, message),
    )


def build_history(
    vault: MemoryVault, steps: list[tuple[str, int]], *, previous: dict[int, bytes] | None = None
) -> list[SignedChange]:
    """Changes for ``steps`` = [(key id, created_at), ...], each linked to the one before and
    signed by its own key and the previous one. ``previous`` overrides the named previous hash
    of a change (by index); everything is still signed correctly."""
    previous = previous or {}
    out: list[SignedChange] = []
    for i, (key_id, created_at) in enumerate(steps):
        prev_hash = out[-1].change.hash if out else None
        prev_hash = previous.get(i, prev_hash)
        change = Change(prev_hash, vault.public_key(key_id), created_at)
        prev_key_id = steps[i - 1][0] if i > 0 else None
        if i == 0 and prev_hash is not None:
            prev_key_id = key_id  # a first change that names a previous needs some signature
        out.append(sign_change(vault, change, key_id, prev_key_id))
    return out


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def flip_bit(signature: bytes, bit: int) -> bytes:
    return flip(signature, bit // 8, 1 << (bit % 8))


@pytest.fixture
def vault() -> MemoryVault:
    return MemoryVault()


# ---------------------------------------------------------------------------------------------
# Encoding round trips
# ---------------------------------------------------------------------------------------------


@st.composite
def signed_changes(draw: st.DrawFn) -> list[SignedChange]:
    """Structurally valid (not cryptographically valid) change lists."""
    n = draw(st.integers(1, 6))
    out = []
    for i in range(n):
        has_previous = draw(st.booleans()) if i == 0 else True
        out.append(
            SignedChange(
                Change(
                    draw(st.binary(min_size=HASH_LEN, max_size=HASH_LEN)) if has_previous else None,
                    draw(st.binary(min_size=KEY_LEN, max_size=KEY_LEN)),
                    draw(st.integers(0, 2**64 - 1)),
                ),
                draw(st.binary(min_size=SIGNATURE_LEN, max_size=SIGNATURE_LEN)),
                draw(st.binary(min_size=SIGNATURE_LEN, max_size=SIGNATURE_LEN))
                if has_previous
                else None,
            )
        )
    return out


@given(signed_changes())
def test_history_encoding_round_trip(changes: list[SignedChange]) -> None:
    data = encode_history(changes)
    assert decode_history(data) == tuple(changes)
    assert encode_history(decode_history(data)) == data
    expected_len = HEADER_LEN + sum(
        FIRST_CHANGE_LEN if sc.change.previous is None else LATER_CHANGE_LEN for sc in changes
    )
    assert len(data) == expected_len


def test_genuine_history_round_trip() -> None:
    ident, _, _ = make_identity(3)
    assert encode_history(decode_history(ident.history)) == ident.history
    assert decode_history(ident.history) == ident.changes
    assert verify_history(bytearray(ident.history)) == ident
    assert verify_history(memoryview(ident.history)) == ident


def test_encode_history_refuses_bad_shapes(vault: MemoryVault) -> None:
    ident, _, _ = make_identity(1, vault)
    first, second = ident.changes
    with pytest.raises(EncodingError):
        encode_history([])
    with pytest.raises(EncodingError):
        encode_history([first] * (MAX_CHANGES + 1))
    with pytest.raises(EncodingError):  # a previous without a previous-key signature
        encode_history([first, dataclasses.replace(second, previous_signature=None)])
    with pytest.raises(EncodingError):  # a previous-key signature without a previous
        encode_history([dataclasses.replace(first, previous_signature=b"\0" * SIGNATURE_LEN)])
    short_key = Change(None, b"\1" * (KEY_LEN - 1), T0)
    with pytest.raises(EncodingError):
        encode_history([SignedChange(short_key, b"\0" * SIGNATURE_LEN, None)])


# ---------------------------------------------------------------------------------------------
# Genuine histories verify; the identifier is stable
# ---------------------------------------------------------------------------------------------


@scaled(0.3)
@given(times=st.lists(st.integers(0, 2**40), min_size=1, max_size=8))
def test_genuine_histories_verify_with_a_stable_identifier(times: list[int]) -> None:
    vault = MemoryVault()
    ident, key_id = identity.create(vault, times[0])
    identifier = ident.identifier
    assert IDENTIFIER.match(identifier)
    seen_keys = {ident.primary_key}
    for n, now in enumerate(times[1:], start=2):
        before = ident
        ident, key_id = identity.rotate(vault, ident, key_id, now)
        assert ident.identifier == identifier
        assert len(ident.changes) == n
        assert ident.primary_key == vault.public_key(key_id)
        assert ident.primary_key not in seen_keys
        seen_keys.add(ident.primary_key)
        assert ident.changes[-1].change.created_at > before.changes[-1].change.created_at
        assert ident.changes[:-1] == before.changes
        before.check_update(ident)  # an extension is accepted
    # From scratch, with no cache: a fresh bytes object of the same value.
    fresh = verify_history(bytes(bytearray(ident.history)))
    assert fresh == ident
    assert fresh.identifier == identifier
    assert fresh.created_at == times[0]


def test_identifier_is_derived_from_the_first_change_only() -> None:
    a, _, versions = make_identity(4)
    assert {v.identifier for v in versions} == {a.identifier}
    b, _, _ = make_identity(0)
    assert a.identifier != b.identifier
    assert a.identifier == identity.identifier_from_first_change(a.changes[0].change.encode())


def test_maximum_length_history_verifies_and_one_more_is_refused() -> None:
    vault = MemoryVault()
    steps = [(vault.generate(KeyType.ED25519), T0 + i) for i in range(MAX_CHANGES)]
    changes = build_history(vault, steps)
    data = encode_history(changes)
    # The size limit assumes every change at its largest; a genuine first change names no
    # previous change (no hash, no previous-key signature).
    assert len(data) == MAX_HISTORY_SIZE - HASH_LEN - SIGNATURE_LEN
    ident = verify_history(data)
    assert len(ident.changes) == MAX_CHANGES
    # A 65th change: refused on encode, and (hand-built) on decode.
    extra_key = vault.generate(KeyType.ED25519)
    extra = sign_change(
        vault,
        Change(changes[-1].change.hash, vault.public_key(extra_key), T0 + MAX_CHANGES),
        extra_key,
        steps[-1][0],
    )
    with pytest.raises(EncodingError):
        encode_history([*changes, extra])
    body = encode_history([*changes[1:], extra])[HEADER_LEN:]
    forged = bytes([0x02, 0x01, MAX_CHANGES + 1]) + encode_history(changes[:1])[HEADER_LEN:] + body
    with pytest.raises(EncodingError):  # also over MAX_HISTORY_SIZE
        verify_history(forged)
    with pytest.raises(EncodingError):  # count over the limit, checked before the size matters
        verify_history(bytes([0x02, 0x01, MAX_CHANGES + 1]) + data[HEADER_LEN:])


# ---------------------------------------------------------------------------------------------
# Broken links
# ---------------------------------------------------------------------------------------------


def test_edited_previous_hash_is_a_broken_link(vault: MemoryVault) -> None:
    k1, k2, k3 = (vault.generate(KeyType.ED25519) for _ in range(3))
    steps = [(k1, T0), (k2, T0 + 1), (k3, T0 + 2)]
    assert verify_history(encode_history(build_history(vault, steps)))  # the control
    for index in (1, 2):
        changes = build_history(vault, steps, previous={index: b"\x42" * HASH_LEN})
        with pytest.raises(BrokenLinkError):
            verify_history(encode_history(changes))


def test_first_change_naming_a_previous_is_a_broken_link(vault: MemoryVault) -> None:
    k1 = vault.generate(KeyType.ED25519)
    changes = build_history(vault, [(k1, T0)], previous={0: b"\x42" * HASH_LEN})
    with pytest.raises(BrokenLinkError):
        verify_history(encode_history(changes))


def test_change_spliced_from_another_identity_is_a_broken_link() -> None:
    a, _, _ = make_identity(1)
    b, _, _ = make_identity(1)
    # b's rotation is validly signed (by b's keys) but names b's first change.
    with pytest.raises(BrokenLinkError):
        verify_history(encode_history([a.changes[0], b.changes[1]]))
    with pytest.raises(BrokenLinkError):
        verify_history(encode_history([*a.changes, b.changes[1]]))


def test_swapped_changes_are_refused() -> None:
    ident, _, _ = make_identity(3)
    c = list(ident.changes)
    for i, j in [(0, 1), (1, 2), (2, 3), (1, 3)]:
        swapped = c.copy()
        swapped[i], swapped[j] = swapped[j], swapped[i]
        with pytest.raises(BrokenLinkError):
            verify_history(encode_history(swapped))


# ---------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------


@scaled(0.5)
@given(
    which=st.sampled_from(["first own", "later own", "later previous"]),
    bit=st.integers(0, 8 * SIGNATURE_LEN - 1),
)
def test_flipped_signature_bit_is_a_signature_error(which: str, bit: int) -> None:
    ident, _, _ = make_identity(1)
    first, second = ident.changes
    if which == "first own":
        first = dataclasses.replace(first, signature=flip_bit(first.signature, bit))
    elif which == "later own":
        second = dataclasses.replace(second, signature=flip_bit(second.signature, bit))
    else:
        assert second.previous_signature is not None
        second = dataclasses.replace(
            second, previous_signature=flip_bit(second.previous_signature, bit)
        )
    with pytest.raises(SignatureError):
        verify_history(encode_history([first, second]))


def test_previous_key_signature_by_another_key_is_a_signature_error(vault: MemoryVault) -> None:
    k1, k2, stranger = (vault.generate(KeyType.ED25519) for _ in range(3))
    first = build_history(vault, [(k1, T0)])[0]
    change = Change(first.change.hash, vault.public_key(k2), T0 + 1)
    assert verify_history(encode_history([first, sign_change(vault, change, k2, k1)]))
    with pytest.raises(SignatureError):
        verify_history(encode_history([first, sign_change(vault, change, k2, stranger)]))
    # The new key's own signature missing (signed by the previous key twice).
    with pytest.raises(SignatureError):
        verify_history(encode_history([first, sign_change(vault, change, k1, k1)]))


def test_signature_over_another_change_is_a_signature_error(vault: MemoryVault) -> None:
    k1 = vault.generate(KeyType.ED25519)
    genuine = build_history(vault, [(k1, T0)])[0]
    moved = dataclasses.replace(
        genuine, change=dataclasses.replace(genuine.change, created_at=T0 + 1)
    )
    with pytest.raises(SignatureError):
        verify_history(encode_history([moved]))


def test_rotate_refuses_a_key_that_is_not_current() -> None:
    vault = MemoryVault()
    ident, old_key = identity.create(vault, T0)
    rotated, _ = identity.rotate(vault, ident, old_key, T0 + 1)
    with pytest.raises(SignatureError):
        identity.rotate(vault, rotated, old_key, T0 + 2)


# ---------------------------------------------------------------------------------------------
# Order: timestamps and keys
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [0, -1, -T0])
def test_timestamp_not_increasing_is_a_change_order_error(vault: MemoryVault, delta: int) -> None:
    k1, k2, k3 = (vault.generate(KeyType.ED25519) for _ in range(3))
    good = [(k1, T0), (k2, T0 + 5), (k3, T0 + 6)]
    assert verify_history(encode_history(build_history(vault, good)))
    with pytest.raises(ChangeOrderError):
        verify_history(encode_history(build_history(vault, [(k1, T0), (k2, T0 + delta)])))
    steps = [(k1, T0), (k2, T0 + 5), (k3, T0 + 5 + delta)]
    with pytest.raises(ChangeOrderError):
        verify_history(encode_history(build_history(vault, steps)))


def test_rotating_back_to_an_earlier_key_is_a_change_order_error(vault: MemoryVault) -> None:
    k1, k2, k3 = (vault.generate(KeyType.ED25519) for _ in range(3))
    for steps in (
        [(k1, T0), (k2, T0 + 1), (k1, T0 + 2)],  # back to the first key
        [(k1, T0), (k2, T0 + 1), (k3, T0 + 2), (k2, T0 + 3)],  # back to a middle key
        [(k1, T0), (k1, T0 + 1)],  # "rotating" to the same key
    ):
        changes = build_history(vault, steps)
        with pytest.raises(ChangeOrderError):
            verify_history(encode_history(changes))


# ---------------------------------------------------------------------------------------------
# check_update: downgrades and forks
# ---------------------------------------------------------------------------------------------


def test_check_update_accepts_the_same_and_newer_histories() -> None:
    latest, _, versions = make_identity(3)
    for older in versions:
        older.check_update(latest)
        older.check_update(older)


def test_older_prefix_is_a_downgrade() -> None:
    latest, _, versions = make_identity(3)
    for older in versions[:-1]:
        with pytest.raises(DowngradeError):
            latest.check_update(older)
        # The same bytes as someone else would send them, verified from scratch.
        with pytest.raises(DowngradeError):
            latest.check_update(verify_history(bytes(bytearray(older.history))))


def test_diverging_histories_are_forks() -> None:
    vault = MemoryVault()
    base, base_key, _ = make_identity(1, vault)
    a, a_key = identity.rotate(vault, base, base_key, T0 + 100)
    a2, _ = identity.rotate(vault, a, a_key, T0 + 200)
    b, b_key = identity.rotate(vault, base, base_key, T0 + 100)
    b2, _ = identity.rotate(vault, b, b_key, T0 + 200)
    assert a.identifier == b.identifier
    with pytest.raises(ForkError):  # same length
        a.check_update(b)
    with pytest.raises(ForkError):  # longer
        a.check_update(b2)
    with pytest.raises(ForkError):  # shorter, but not a prefix
        a2.check_update(b)
    with pytest.raises(ForkError):
        b2.check_update(a)


def test_another_identity_is_not_an_update() -> None:
    a, _, _ = make_identity(1)
    b, _, _ = make_identity(2)
    with pytest.raises(ForkError):
        a.check_update(b)


# ---------------------------------------------------------------------------------------------
# Strict decoding
# ---------------------------------------------------------------------------------------------


def genuine_history(rotations: int = 2) -> bytes:
    return make_identity(rotations)[0].history


def test_trailing_bytes_are_refused() -> None:
    data = genuine_history()
    verify_history(data)
    for extra in (b"\0", b"\x01", data[-LATER_CHANGE_LEN:]):
        with pytest.raises(EncodingError):
            verify_history(data + extra)


def test_every_truncation_is_refused() -> None:
    data = genuine_history()
    for n in range(len(data)):
        with pytest.raises(EncodingError):
            verify_history(data[:n])


def test_non_canonical_flag_is_refused() -> None:
    data = genuine_history(1)
    for offset in (HEADER_LEN, HEADER_LEN + FIRST_CHANGE_LEN):
        assert data[offset] in (0, 1)
        for value in (2, 0x80, 0xFF):
            forged = bytearray(data)
            forged[offset] = value
            with pytest.raises(EncodingError):
                decode_history(bytes(forged))
            with pytest.raises(EncodingError):
                verify_history(bytes(forged))


@pytest.mark.parametrize("value", [0x00, 0x01, 0x03, 0xFF])
def test_wrong_structure_type_is_refused(value: int) -> None:
    forged = bytearray(genuine_history())
    forged[0] = value
    with pytest.raises(EncodingError):
        verify_history(bytes(forged))


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_wrong_version_is_refused(version: int) -> None:
    forged = bytearray(genuine_history())
    forged[1] = version
    with pytest.raises(EncodingError):
        verify_history(bytes(forged))


@pytest.mark.parametrize("count", [0, MAX_CHANGES + 1, 0xFF])
def test_change_count_out_of_range_is_refused(count: int) -> None:
    data = genuine_history(0)
    with pytest.raises(EncodingError):
        verify_history(bytes([0x02, 0x01, count]) + data[HEADER_LEN:])


def test_oversized_input_is_refused_before_parsing() -> None:
    data = genuine_history(0)
    # A genuine history followed by padding: over the limit, refused as such.
    padded = data + b"\0" * (MAX_HISTORY_SIZE + 1 - len(data))
    with pytest.raises(EncodingError, match="exceeds the limit"):
        verify_history(padded)
    with pytest.raises(EncodingError, match="exceeds the limit"):
        decode_history(b"\x02" * (10 * MAX_HISTORY_SIZE))


def test_wrong_count_for_the_bytes_is_refused() -> None:
    data = genuine_history(2)  # three changes
    for count in (1, 2, 4):
        with pytest.raises(EncodingError):
            verify_history(bytes([0x02, 0x01, count]) + data[HEADER_LEN:])


def _history_like() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, and arbitrary bytes behind a plausible header (to get past it)."""
    return st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda count, body: bytes([0x02, 0x01, count]) + body,
            st.integers(0, 4),
            st.binary(max_size=600),
        ),
        st.builds(
            lambda flag, body: bytes([0x02, 0x01, 1, flag]) + body,
            st.integers(0, 2),
            st.binary(min_size=FIRST_CHANGE_LEN - 1, max_size=FIRST_CHANGE_LEN + 1),
        ),
    )


@given(_history_like())
def test_arbitrary_bytes_verify_or_fail_cleanly(data: bytes) -> None:
    try:
        ident = verify_history(data)
    except (IdentityError, EncodingError):
        return
    # Anything accepted is a self-consistent identity over exactly these bytes.
    assert ident.history == data
    assert IDENTIFIER.match(ident.identifier)


@scaled(1.0)
@given(data=st.data())
def test_any_single_byte_change_to_a_genuine_history_is_refused(data: st.DataObject) -> None:
    """Every byte of a history is covered by structure or a signature: no edit goes through."""
    history = GENUINE_HISTORY
    index = data.draw(st.integers(0, len(history) - 1), label="index")
    mask = data.draw(st.integers(1, 0xFF), label="xor mask")
    with pytest.raises((IdentityError, EncodingError)):
        verify_history(flip(history, index, mask))


GENUINE_HISTORY = genuine_history(2)


def test_verify_history_is_cached_by_exact_bytes() -> None:
    data = genuine_history(1)
    assert verify_history(data) is verify_history(bytes(bytearray(data)))
    with pytest.raises(SignatureError):  # a failure is not cached as a success
        verify_history(flip(data, len(data) - 1))
    with pytest.raises(SignatureError):
        verify_history(flip(data, len(data) - 1))


# ---------------------------------------------------------------------------------------------
# Attestations
# ---------------------------------------------------------------------------------------------


class Attested:
    """An identity, its current key id, and a channel key and a signing key it attests."""

    def __init__(self) -> None:
        self.vault = MemoryVault()
        self.identity, self.key_id = identity.create(self.vault, T0)
        self.channel_key_id = self.vault.generate(KeyType.X25519)
        self.signing_key_id = self.vault.generate(KeyType.ED25519)
        self.channel = self.attest(Purpose.SECURE_CHANNEL, self.channel_key_id)
        self.signing = self.attest(Purpose.CREDENTIAL_SIGNING, self.signing_key_id)

    def attest(
        self, purpose: Purpose, key_id: str, created_at: int = T0, expires_at: int = T0 + 3600
    ) -> Attestation:
        return identity.attest(
            self.vault,
            self.identity,
            self.key_id,
            purpose,
            self.vault.public_key(key_id),
            created_at,
            expires_at,
        )


@pytest.fixture
def attested() -> Attested:
    return Attested()


def test_valid_attestations_verify(attested: Attested) -> None:
    a = attested
    channel_pub = a.vault.public_key(a.channel_key_id)
    signing_pub = a.vault.public_key(a.signing_key_id)
    verify_attestation(a.channel, a.identity, Purpose.SECURE_CHANNEL, at=T0 + 10)
    verify_attestation(
        a.channel, a.identity, Purpose.SECURE_CHANNEL, at=T0 + 10, public_key=channel_pub
    )
    verify_attestation(
        a.signing, a.identity, Purpose.CREDENTIAL_SIGNING, at=T0 + 10, public_key=signing_pub
    )
    assert a.channel.subject == a.identity.identifier
    assert a.channel.signer_change == a.identity.latest_change_hash
    assert len(a.channel.encode()) == ATTESTATION_SIZE


def test_attestation_round_trip(attested: Attested) -> None:
    for att in (attested.channel, attested.signing):
        data = att.encode()
        decoded = Attestation.decode(data)
        assert decoded == att
        assert decoded.encode() == data
        assert isinstance(decoded.purpose, Purpose)
        verify_attestation(decoded, attested.identity, att.purpose, at=T0)


def test_attestation_for_another_subject_is_refused(attested: Attested) -> None:
    other, _, _ = make_identity(0)
    with pytest.raises(AttestationError):
        verify_attestation(attested.channel, other, Purpose.SECURE_CHANNEL, at=T0)


def test_attestation_for_another_purpose_is_refused(attested: Attested) -> None:
    signing_pub = attested.vault.public_key(attested.signing_key_id)
    with pytest.raises(AttestationError):  # a credential-signing key offered as a channel key
        verify_attestation(
            attested.signing,
            attested.identity,
            Purpose.SECURE_CHANNEL,
            at=T0,
            public_key=signing_pub,
        )
    with pytest.raises(AttestationError):
        verify_attestation(attested.channel, attested.identity, Purpose.CREDENTIAL_SIGNING, at=T0)


def test_attestation_of_a_different_key_is_refused(attested: Attested) -> None:
    other_key = attested.vault.public_key(attested.vault.generate(KeyType.X25519))
    with pytest.raises(AttestationError):
        verify_attestation(
            attested.channel, attested.identity, Purpose.SECURE_CHANNEL, at=T0, public_key=other_key
        )


def test_attestation_validity_window_with_skew(attested: Attested) -> None:
    att = attested.attest(Purpose.SECURE_CHANNEL, attested.channel_key_id, T0 + 1000, T0 + 2000)
    check = attested.identity, Purpose.SECURE_CHANNEL
    for at in (T0 + 1000 - 60, T0 + 1000, T0 + 1500, T0 + 2000, T0 + 2000 + 60):
        verify_attestation(att, *check, at=at)
    with pytest.raises(AttestationError, match="not valid yet"):
        verify_attestation(att, *check, at=T0 + 1000 - 61)
    with pytest.raises(AttestationError, match="expired"):
        verify_attestation(att, *check, at=T0 + 2000 + 61)
    with pytest.raises(AttestationError):
        verify_attestation(att, *check, at=T0 + 1000 - 1, skew=0)
    with pytest.raises(AttestationError):
        verify_attestation(att, *check, at=T0 + 2000 + 1, skew=0)


def test_attestation_by_a_superseded_key_is_refused(attested: Attested) -> None:
    rotated, new_key_id = identity.rotate(
        attested.vault, attested.identity, attested.key_id, T0 + 5
    )
    assert rotated.identifier == attested.identity.identifier
    with pytest.raises(AttestationError):
        verify_attestation(attested.channel, rotated, Purpose.SECURE_CHANNEL, at=T0 + 10)
    # Relabelling the old attestation with the new change does not help: the signature is the
    # old key's.
    relabelled = dataclasses.replace(attested.channel, signer_change=rotated.latest_change_hash)
    with pytest.raises(AttestationError):
        verify_attestation(relabelled, rotated, Purpose.SECURE_CHANNEL, at=T0 + 10)
    # The old key can no longer attest; the new one can.
    with pytest.raises(SignatureError):
        identity.attest(
            attested.vault,
            rotated,
            attested.key_id,
            Purpose.SECURE_CHANNEL,
            attested.channel.public_key,
            T0,
            T0 + 3600,
        )
    fresh = identity.attest(
        attested.vault,
        rotated,
        new_key_id,
        Purpose.SECURE_CHANNEL,
        attested.channel.public_key,
        T0,
        T0 + 3600,
    )
    verify_attestation(fresh, rotated, Purpose.SECURE_CHANNEL, at=T0 + 10)
    # ... and the fresh one does not verify against the older history.
    with pytest.raises(AttestationError):
        verify_attestation(fresh, attested.identity, Purpose.SECURE_CHANNEL, at=T0 + 10)


def test_attestation_naming_another_change_is_refused_even_if_signed_by_the_current_key() -> None:
    a = Attested()
    rotated, new_key_id = identity.rotate(a.vault, a.identity, a.key_id, T0 + 5)
    for signer_change in (a.identity.latest_change_hash, b"\x42" * HASH_LEN):
        unsigned = dataclasses.replace(a.channel, signer_change=signer_change)
        att = dataclasses.replace(
            unsigned, signature=a.vault.sign(new_key_id, unsigned.signed_message())
        )
        with pytest.raises(AttestationError, match="superseded"):
            verify_attestation(att, rotated, Purpose.SECURE_CHANNEL, at=T0 + 10)


def test_attestation_signed_by_another_key_is_refused(attested: Attested) -> None:
    stranger = attested.vault.generate(KeyType.ED25519)
    signature = attested.vault.sign(stranger, attested.channel.signed_message())
    forged = dataclasses.replace(attested.channel, signature=signature)
    with pytest.raises(AttestationError):
        verify_attestation(forged, attested.identity, Purpose.SECURE_CHANNEL, at=T0)


def test_attestation_expiring_before_it_starts_is_refused(attested: Attested) -> None:
    with pytest.raises(AttestationError):
        attested.attest(Purpose.SECURE_CHANNEL, attested.channel_key_id, T0, T0)
    # Signed by hand (correctly) all the same.
    unsigned = dataclasses.replace(attested.channel, created_at=T0 + 10, expires_at=T0 + 10)
    signature = attested.vault.sign(attested.key_id, unsigned.signed_message())
    att = dataclasses.replace(unsigned, signature=signature)
    with pytest.raises(AttestationError):
        verify_attestation(att, attested.identity, Purpose.SECURE_CHANNEL, at=T0 + 10)


@pytest.mark.parametrize(
    "field",
    ["subject", "purpose", "public_key", "created_at", "expires_at", "signer_change", "signature"],
)
def test_tampered_attestation_field_is_refused(attested: Attested, field: str) -> None:
    att = attested.channel
    other, _, _ = make_identity(0)
    changed = {
        "subject": other.identifier,
        "purpose": Purpose.CREDENTIAL_SIGNING,
        "public_key": flip(att.public_key, 0),
        "created_at": att.created_at - 1,
        "expires_at": att.expires_at + 1,
        "signer_change": flip(att.signer_change, 5),
        "signature": flip(att.signature, 7),
    }[field]
    tampered = dataclasses.replace(att, **{field: changed})
    purpose = tampered.purpose
    with pytest.raises(AttestationError):
        verify_attestation(Attestation.decode(tampered.encode()), attested.identity, purpose, at=T0)


ATTESTED = Attested()


@given(index=st.integers(0, ATTESTATION_SIZE - 1), mask=st.integers(1, 0xFF))
def test_any_single_byte_change_to_an_attestation_is_refused(index: int, mask: int) -> None:
    data = flip(ATTESTED.channel.encode(), index, mask)
    try:
        att = Attestation.decode(data)
    except EncodingError:
        assert index in (0, 1, 22)  # type, version, purpose: the only bytes decode checks
        return
    for purpose in Purpose:
        with pytest.raises(AttestationError):
            verify_attestation(att, ATTESTED.identity, purpose, at=T0)


def test_attestation_decode_rejections(attested: Attested) -> None:
    data = attested.channel.encode()
    for n in range(len(data)):
        with pytest.raises(EncodingError):
            Attestation.decode(data[:n])
    with pytest.raises(EncodingError):
        Attestation.decode(data + b"\0")
    for offset, value in [(0, 0x02), (0, 0x04), (1, 0), (1, 2), (22, 0), (22, 3), (22, 0xFF)]:
        forged = bytearray(data)
        forged[offset] = value
        with pytest.raises(EncodingError):
            Attestation.decode(bytes(forged))
    with pytest.raises(EncodingError, match="exceeds the limit"):
        Attestation.decode(b"\x03" * (ATTESTATION_SIZE + 1))


def test_attest_refuses_a_key_that_is_not_current(attested: Attested) -> None:
    stranger = attested.vault.generate(KeyType.ED25519)
    with pytest.raises(SignatureError):
        identity.attest(
            attested.vault,
            attested.identity,
            stranger,
            Purpose.SECURE_CHANNEL,
            attested.channel.public_key,
            T0,
            T0 + 1,
        )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I",
        "I" + "0" * 39,
        "I" + "0" * 41,
        "J" + "0" * 40,
        "I" + "A" * 40,  # uppercase hex
        "I" + "g" * 40,
        "I" + "0" * 38 + " 0",
    ],
)
def test_identifier_bytes_refuses_malformed_identifiers(text: str) -> None:
    with pytest.raises(EncodingError):
        identity.identifier_bytes(text)


def test_identifier_text_round_trip() -> None:
    ident, _, _ = make_identity(0)
    raw = identity.identifier_bytes(ident.identifier)
    assert len(raw) == identity.IDENTIFIER_LEN
    assert identity.identifier_text(raw) == ident.identifier


def test_histories_built_by_hand_verify_as_a_control(vault: MemoryVault) -> None:
    """The hand-building helper makes genuine histories: the negative tests above are about
    exactly the check they target, not about a helper that signs wrongly."""
    keys = [vault.generate(KeyType.ED25519) for _ in range(4)]
    changes = build_history(vault, [(k, T0 + i) for i, k in enumerate(keys)])
    ident = verify_history(encode_history(changes))
    assert ident.primary_key == vault.public_key(keys[-1])
    assert [sc.change.created_at for sc in ident.changes] == [T0, T0 + 1, T0 + 2, T0 + 3]
    # Writer-built header agrees with the encoder's.
    assert ident.history[:HEADER_LEN] == Writer().u8(0x02).u8(1).u8(4).getvalue()
