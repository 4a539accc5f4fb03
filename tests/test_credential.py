"""Credentials and revocation lists (``tether/credential.py`` is the spec).

A credential is ``type(0x04) version(1) subject(20) issuer(20) attributes created_at(u64)
expires_at(u64)`` then the signing key's attestation and the signature; attributes are a u8 count
then (u16-length key, u16-length value) UTF-8 pairs sorted by the key's bytes, no duplicates.
Every rejection is checked with its precise error class.
"""

from __future__ import annotations

import dataclasses
import functools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.core.encoding import Writer
from tether.core.errors import (
    AttestationError,
    CredentialExpiredError,
    CredentialNotYetValidError,
    CredentialRevokedError,
    CredentialSignatureError,
    EncodingError,
    SigningKeyError,
    TetherError,
    UntrustedIssuerError,
    WrongIssuerError,
    WrongSubjectError,
)
from tether.identity import credential, identity
from tether.identity.credential import (
    ID_LEN,
    MAX_ATTRIBUTES,
    MAX_CREDENTIAL_SIZE,
    MAX_KEY_LEN,
    MAX_REVOKED,
    MAX_VALUE_LEN,
    Credential,
    RevocationList,
)
from tether.identity.identity import Attestation, Identity, Purpose
from tether.identity.vault import KeyType, MemoryVault

EXAMPLES = settings().max_examples  # the loaded profile's value (see conftest.py)
T0 = 1_700_000_000
DAY = 86_400
YEAR = 365 * DAY


class Authority:
    """An identity with an attested credential-signing key (valid for a year from T0)."""

    def __init__(self, vault: MemoryVault | None = None) -> None:
        self.vault = vault or MemoryVault()
        self.identity, self.key_id = identity.create(self.vault, T0 - DAY)
        self.signing_key_id = self.vault.generate(KeyType.ED25519)
        self.attestation = self.attest(T0, T0 + YEAR)

    def attest(
        self, created_at: int, expires_at: int, purpose: Purpose = Purpose.CREDENTIAL_SIGNING
    ) -> Attestation:
        return identity.attest(
            self.vault,
            self.identity,
            self.key_id,
            purpose,
            self.vault.public_key(self.signing_key_id),
            created_at,
            expires_at,
        )

    @property
    def identifier(self) -> str:
        return self.identity.identifier

    @property
    def trusted(self) -> dict[str, Identity]:
        return {self.identifier: self.identity}

    def issue(
        self,
        subject: str,
        attributes: dict[str, str] | None = None,
        *,
        now: int = T0 + DAY,
        ttl: int = 30 * DAY,
        attestation: Attestation | None = None,
    ) -> Credential:
        return credential.issue(
            self.vault,
            self.signing_key_id,
            attestation or self.attestation,
            subject,
            {"role": "admin"} if attributes is None else attributes,
            now=now,
            ttl=ttl,
        )

    def revoke(self, ids: list[str], *, sequence: int = 1, now: int = T0 + 2 * DAY):
        return credential.sign_revocations(
            self.vault, self.signing_key_id, self.attestation, ids, sequence=sequence, now=now
        )


@functools.cache
def world() -> tuple[Authority, Authority, str, str]:
    """Two authorities and two subject identifiers (shared, read-only)."""
    a, b = Authority(), Authority()
    vault = MemoryVault()
    s1, _ = identity.create(vault, T0)
    s2, _ = identity.create(vault, T0)
    return a, b, s1.identifier, s2.identifier


def reencode(cred: Credential, **changes: object) -> bytes:
    """The credential with some fields changed and its signature kept, encoded."""
    return dataclasses.replace(cred, **changes).encode()  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_issue_verify_round_trip() -> None:
    a, _, subject, _ = world()
    cred = a.issue(subject, {"role": "admin", "team": "blue"})
    data = cred.encode()
    decoded = Credential.decode(data)
    assert decoded == cred
    assert decoded.encode() == data
    assert decoded.id == cred.id
    assert len(cred.id) == 2 * ID_LEN
    out = credential.verify(
        data, authorities=a.trusted, now=T0 + 2 * DAY, issuer=a.identifier, subject=subject
    )
    assert out == cred
    assert dict(out.attributes) == {"role": "admin", "team": "blue"}
    assert out.issuer == a.identifier
    assert out.subject == subject
    assert out.created_at == T0 + DAY
    assert out.expires_at == T0 + 31 * DAY
    # A Credential object verifies as its bytes do.
    assert credential.verify(cred, authorities=a.trusted, now=T0 + 2 * DAY) == cred


KEYS = st.text(min_size=1, max_size=MAX_KEY_LEN // 4)  # at most 4 UTF-8 bytes per character
VALUES = st.text(max_size=MAX_VALUE_LEN // 4)


@settings(max_examples=max(5, EXAMPLES // 2))
@given(st.dictionaries(KEYS, VALUES, max_size=MAX_ATTRIBUTES))
def test_any_attributes_within_limits_round_trip(attributes: dict[str, str]) -> None:
    a, _, subject, _ = world()
    cred = a.issue(subject, attributes)
    data = cred.encode()
    out = credential.verify(data, authorities=a.trusted, now=T0 + 2 * DAY)
    assert dict(out.attributes) == attributes
    assert Credential.decode(data) == cred


@st.composite
def utf8_text_of_length(draw: st.DrawFn, n: int) -> str:
    """A string of exactly ``n`` UTF-8 bytes, mixing 1-, 2-, 3- and 4-byte characters."""
    four = draw(st.integers(0, n // 4))
    three = draw(st.integers(0, (n - 4 * four) // 3))
    two = draw(st.integers(0, (n - 4 * four - 3 * three) // 2))
    one = n - 4 * four - 3 * three - 2 * two
    chars = list("😀" * four + "€" * three + "é" * two + "a" * one)
    random.Random(draw(st.integers(0, 2**32 - 1), label="shuffle seed")).shuffle(chars)
    return "".join(chars)


def test_attributes_at_the_limits_round_trip() -> None:
    a, _, subject, _ = world()
    attributes = {
        f"{i:02d}" + "é" * ((MAX_KEY_LEN - 2) // 2): "😀" * (MAX_VALUE_LEN // 4)
        for i in range(MAX_ATTRIBUTES)
    }
    assert all(len(k.encode()) == MAX_KEY_LEN for k in attributes)
    cred = a.issue(subject, attributes)
    data = cred.encode()
    assert len(data) <= MAX_CREDENTIAL_SIZE
    out = credential.verify(data, authorities=a.trusted, now=T0 + 2 * DAY)
    assert dict(out.attributes) == attributes


@given(st.data())
def test_byte_lengths_not_characters_are_limited(data: st.DataObject) -> None:
    a, _, subject, _ = world()
    key = data.draw(utf8_text_of_length(MAX_KEY_LEN))
    value = data.draw(utf8_text_of_length(MAX_VALUE_LEN))
    assert dict(a.issue(subject, {key: value}).attributes) == {key: value}
    long_key = data.draw(utf8_text_of_length(MAX_KEY_LEN + data.draw(st.integers(1, 4))))
    long_value = data.draw(utf8_text_of_length(MAX_VALUE_LEN + data.draw(st.integers(1, 4))))
    with pytest.raises(EncodingError):
        a.issue(subject, {long_key: "v"})
    with pytest.raises(EncodingError):
        a.issue(subject, {"k": long_value})


# ---------------------------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------------------------


def test_wrong_issuer() -> None:
    a, b, subject, _ = world()
    data = a.issue(subject).encode()
    trusted = {**a.trusted, **b.trusted}
    with pytest.raises(WrongIssuerError):
        credential.verify(data, authorities=trusted, now=T0 + 2 * DAY, issuer=b.identifier)


def test_untrusted_issuer() -> None:
    a, b, subject, _ = world()
    data = a.issue(subject).encode()
    with pytest.raises(UntrustedIssuerError):
        credential.verify(data, authorities=b.trusted, now=T0 + 2 * DAY)
    with pytest.raises(UntrustedIssuerError):
        credential.verify(data, authorities={}, now=T0 + 2 * DAY)


def test_issuer_identity_under_another_name_is_not_trusted() -> None:
    """Trust is by identifier: b's identity under a's identifier does not vouch for a's keys."""
    a, b, subject, _ = world()
    data = a.issue(subject).encode()
    with pytest.raises(SigningKeyError):
        credential.verify(data, authorities={a.identifier: b.identity}, now=T0 + 2 * DAY)


def test_wrong_subject() -> None:
    a, _, subject, other = world()
    data = a.issue(subject).encode()
    with pytest.raises(WrongSubjectError):
        credential.verify(data, authorities=a.trusted, now=T0 + 2 * DAY, subject=other)


@pytest.mark.parametrize(
    "change",
    [
        {"attributes": {"role": "root"}},
        {"attributes": {"role": "admin", "extra": "x"}},
        {"attributes": {}},
        {"created_at": T0 + DAY - 1},
        {"expires_at": T0 + 365 * DAY},
        {"subject": "second subject"},
        {"signature": None},
    ],
    ids=["value", "added", "removed", "created_at", "expires_at", "subject", "signature"],
)
def test_tampering_is_a_signature_error(change: dict[str, object]) -> None:
    a, _, subject, other = world()
    cred = a.issue(subject)
    if change.get("subject") == "second subject":
        change = {"subject": other}
    if "signature" in change:
        change = {"signature": bytes([cred.signature[0] ^ 1]) + cred.signature[1:]}
    data = reencode(cred, **change)
    with pytest.raises(CredentialSignatureError):
        credential.verify(data, authorities=a.trusted, now=T0 + 2 * DAY)


@settings(max_examples=max(5, EXAMPLES // 2))
@given(st.dictionaries(KEYS, VALUES, min_size=1, max_size=8), st.data())
def test_any_changed_attribute_value_is_a_signature_error(
    attributes: dict[str, str], data: st.DataObject
) -> None:
    a, _, subject, _ = world()
    cred = a.issue(subject, attributes)
    key = data.draw(st.sampled_from(sorted(attributes)))
    new_value = data.draw(VALUES.filter(lambda v: v != attributes[key]))
    data_bytes = reencode(cred, attributes={**attributes, key: new_value})
    with pytest.raises(CredentialSignatureError):
        credential.verify(data_bytes, authorities=a.trusted, now=T0 + 2 * DAY)


def test_validity_edges_with_exact_skew() -> None:
    a, _, subject, _ = world()
    created, ttl = T0 + DAY, 10 * DAY
    cred = a.issue(subject, now=created, ttl=ttl)
    expires = created + ttl
    data = cred.encode()

    def check(now: int, skew: int = 60) -> Credential:
        return credential.verify(data, authorities=a.trusted, now=now, skew=skew)

    for now in (created - 60, created, expires, expires + 60):
        assert check(now) == cred
    with pytest.raises(CredentialNotYetValidError):
        check(created - 61)
    with pytest.raises(CredentialExpiredError):
        check(expires + 61)
    # The same edges with another skew, and with none.
    assert check(created - 300, skew=300) == cred
    assert check(expires + 300, skew=300) == cred
    with pytest.raises(CredentialNotYetValidError):
        check(created - 301, skew=300)
    with pytest.raises(CredentialExpiredError):
        check(expires + 301, skew=300)
    assert check(created, skew=0) == cred
    assert check(expires, skew=0) == cred
    with pytest.raises(CredentialNotYetValidError):
        check(created - 1, skew=0)
    with pytest.raises(CredentialExpiredError):
        check(expires + 1, skew=0)


@pytest.mark.parametrize("length", [0, -1])
def test_credential_ending_before_it_starts_is_refused(length: int) -> None:
    a, _, subject, _ = world()
    genuine = a.issue(subject)
    unsigned = dataclasses.replace(genuine, expires_at=genuine.created_at + length)
    cred = dataclasses.replace(
        unsigned, signature=a.vault.sign(a.signing_key_id, unsigned.signed_message())
    )
    with pytest.raises(CredentialExpiredError):
        credential.verify(cred.encode(), authorities=a.trusted, now=genuine.created_at)


def test_issue_refuses_a_non_positive_ttl() -> None:
    a, _, subject, _ = world()
    for ttl in (0, -1):
        with pytest.raises(EncodingError):
            a.issue(subject, ttl=ttl)


# --- the signing key and its attestation ------------------------------------------------------


def test_credential_signed_before_the_attestation_starts() -> None:
    a, _, subject, _ = world()
    att = a.attest(T0 + 10 * DAY, T0 + YEAR)
    # Within the skew: accepted; one second more: refused.
    ok = a.issue(subject, now=T0 + 10 * DAY - 60, attestation=att)
    assert credential.verify(ok.encode(), authorities=a.trusted, now=T0 + 11 * DAY) == ok
    early = a.issue(subject, now=T0 + 10 * DAY - 61, attestation=att)
    with pytest.raises(SigningKeyError):
        credential.verify(early.encode(), authorities=a.trusted, now=T0 + 11 * DAY)
    early = a.issue(subject, now=T0, attestation=att)
    with pytest.raises(SigningKeyError):
        credential.verify(early.encode(), authorities=a.trusted, now=T0 + 11 * DAY)


def test_credential_signed_after_the_attestation_expired() -> None:
    a, _, subject, _ = world()
    att = a.attest(T0, T0 + 10 * DAY)
    late = a.issue(subject, now=T0 + 10 * DAY + 61, ttl=DAY, attestation=att)
    # Verified while the credential itself is valid.
    with pytest.raises(SigningKeyError):
        credential.verify(late.encode(), authorities=a.trusted, now=T0 + 10 * DAY + 100)


def test_attestation_expired_at_verification_time() -> None:
    a, _, subject, _ = world()
    att = a.attest(T0, T0 + 10 * DAY)
    cred = a.issue(subject, now=T0 + DAY, ttl=30 * DAY, attestation=att)
    data = cred.encode()
    # The credential is valid until T0 + 31 days, its signing key's attestation only until
    # T0 + 10 days (+ skew).
    assert credential.verify(data, authorities=a.trusted, now=T0 + 10 * DAY + 60) == cred
    with pytest.raises(SigningKeyError):
        credential.verify(data, authorities=a.trusted, now=T0 + 10 * DAY + 61)
    with pytest.raises(SigningKeyError):
        credential.verify(data, authorities=a.trusted, now=T0 + 20 * DAY)


def test_signing_key_attested_for_another_purpose() -> None:
    a, _, subject, _ = world()
    channel_att = a.attest(T0, T0 + YEAR, Purpose.SECURE_CHANNEL)
    with pytest.raises(AttestationError):
        a.issue(subject, attestation=channel_att)
    # Built by hand and signed correctly all the same.
    genuine = a.issue(subject)
    unsigned = dataclasses.replace(genuine, signing_attestation=channel_att)
    forged = dataclasses.replace(
        unsigned, signature=a.vault.sign(a.signing_key_id, unsigned.signed_message())
    )
    with pytest.raises(SigningKeyError):
        credential.verify(forged.encode(), authorities=a.trusted, now=T0 + 2 * DAY)


def test_signing_key_attested_by_another_identity() -> None:
    a, b, subject, _ = world()
    # b's own attested key signs a credential claiming a as its issuer.
    genuine = b.issue(subject)
    unsigned = dataclasses.replace(genuine, issuer=a.identifier)
    forged = dataclasses.replace(
        unsigned, signature=b.vault.sign(b.signing_key_id, unsigned.signed_message())
    )
    trusted = {**a.trusted, **b.trusted}
    with pytest.raises(SigningKeyError):
        credential.verify(forged.encode(), authorities=trusted, now=T0 + 2 * DAY)


def test_issuer_rotation_retires_the_signing_attestation() -> None:
    a = Authority()
    _, _, subject, _ = world()
    cred = a.issue(subject)
    rotated, _ = identity.rotate(a.vault, a.identity, a.key_id, T0 + DAY)
    assert credential.verify(cred.encode(), authorities=a.trusted, now=T0 + 2 * DAY) == cred
    with pytest.raises(SigningKeyError):
        credential.verify(cred.encode(), authorities={a.identifier: rotated}, now=T0 + 2 * DAY)


def test_tampered_signing_attestation() -> None:
    a, _, subject, _ = world()
    cred = a.issue(subject)
    att = cred.signing_attestation
    tampered = dataclasses.replace(att, expires_at=att.expires_at + YEAR)
    with pytest.raises(SigningKeyError):
        credential.verify(
            reencode(cred, signing_attestation=tampered), authorities=a.trusted, now=T0 + DAY
        )


def test_issue_refuses_a_key_that_is_not_the_attested_one() -> None:
    a, _, subject, _ = world()
    other = a.vault.generate(KeyType.ED25519)
    with pytest.raises(AttestationError):
        credential.issue(a.vault, other, a.attestation, subject, {"k": "v"}, now=T0 + DAY, ttl=DAY)


# --- revocation -------------------------------------------------------------------------------


def test_revoked_credential() -> None:
    a, _, subject, _ = world()
    cred = a.issue(subject)
    keep = a.issue(subject, {"role": "reader"})
    rl = credential.verify_revocations(a.revoke([cred.id]).encode(), a.identity, now=T0 + 3 * DAY)
    with pytest.raises(CredentialRevokedError):
        credential.verify(
            cred.encode(),
            authorities=a.trusted,
            now=T0 + 3 * DAY,
            revocations={a.identifier: rl},
        )
    # A list that does not contain its id revokes nothing.
    assert (
        credential.verify(
            keep.encode(),
            authorities=a.trusted,
            now=T0 + 3 * DAY,
            revocations={a.identifier: rl},
        )
        == keep
    )


def test_not_revoked_by_a_list_of_another_issuer() -> None:
    a, b, subject, _ = world()
    cred = a.issue(subject)
    # b "revokes" a's credential id in its own (genuine) list.
    rl_b = credential.verify_revocations(b.revoke([cred.id]).encode(), b.identity, now=T0 + DAY)
    assert rl_b.issuer == b.identifier
    assert cred.id in rl_b.revoked
    out = credential.verify(
        cred.encode(),
        authorities={**a.trusted, **b.trusted},
        now=T0 + 3 * DAY,
        revocations={b.identifier: rl_b},
    )
    assert out == cred


def test_a_list_of_another_issuer_never_revokes_even_when_filed_under_the_issuer() -> None:
    """``revocations`` is keyed by issuer, but each list names its own issuer: b's list filed
    under a's identifier must not revoke a's credential (ignoring it or refusing it with
    WrongIssuerError are both acceptable; CredentialRevokedError is not)."""
    a, b, subject, _ = world()
    cred = a.issue(subject)
    rl_b = credential.verify_revocations(b.revoke([cred.id]).encode(), b.identity, now=T0 + DAY)
    try:
        out = credential.verify(
            cred.encode(),
            authorities={**a.trusted, **b.trusted},
            now=T0 + 3 * DAY,
            revocations={a.identifier: rl_b},
        )
    except WrongIssuerError:
        return
    assert out == cred


def test_revocation_list_round_trip() -> None:
    a, _, subject, _ = world()
    ids = [a.issue(subject, {"n": str(i)}).id for i in range(5)]
    rl = a.revoke(ids, sequence=7, now=T0 + 3 * DAY)
    data = rl.encode()
    decoded = RevocationList.decode(data)
    assert decoded == rl
    assert decoded.encode() == data
    assert decoded.revoked == frozenset(ids)
    assert decoded.sequence == 7
    assert decoded.created_at == T0 + 3 * DAY
    assert decoded.issuer == a.identifier
    assert credential.verify_revocations(data, a.identity, now=T0 + 3 * DAY) == rl
    assert credential.verify_revocations(rl, a.identity, now=T0 + 3 * DAY) == rl
    empty = a.revoke([])
    assert RevocationList.decode(empty.encode()) == empty
    assert credential.verify_revocations(empty.encode(), a.identity, now=T0 + 3 * DAY) == empty


def _ids_offset() -> int:
    return 2 + 20 + 8 + 8 + 4


def test_revocation_list_signature_tamper() -> None:
    a, _, _, _ = world()
    ids = ["00" * ID_LEN, "11" * ID_LEN]
    data = a.revoke(ids).encode()
    credential.verify_revocations(data, a.identity, now=T0 + 3 * DAY)
    for index in (
        len(data) - 1,  # the signature
        2 + 20 + 7,  # the sequence
        2 + 20 + 8 + 7,  # created_at
        _ids_offset() + ID_LEN - 1,  # the first id (still sorted)
        _ids_offset() + 2 * ID_LEN - 1,  # the second id
    ):
        tampered = bytearray(data)
        tampered[index] ^= 0x01
        with pytest.raises(CredentialSignatureError):
            credential.verify_revocations(bytes(tampered), a.identity, now=T0 + 3 * DAY)


def test_revocation_list_of_another_issuer_is_refused() -> None:
    a, b, _, _ = world()
    data = a.revoke(["00" * ID_LEN]).encode()
    with pytest.raises(WrongIssuerError):
        credential.verify_revocations(data, b.identity, now=T0 + 3 * DAY)


def test_revocation_list_signing_key_must_be_attested() -> None:
    a, _, _, _ = world()
    # Signed before the signing key's attestation starts (T0), beyond the skew.
    rl = a.revoke(["00" * ID_LEN], now=T0 - 61)
    with pytest.raises(SigningKeyError):
        credential.verify_revocations(rl.encode(), a.identity, now=T0 + DAY)
    # Verified after the attestation expired.
    rl = a.revoke(["00" * ID_LEN], now=T0 + DAY)
    with pytest.raises(SigningKeyError):
        credential.verify_revocations(rl.encode(), a.identity, now=T0 + YEAR + 61)


def test_revocation_list_ids_must_be_sorted_and_unique() -> None:
    a, _, _, _ = world()
    low, high = "00" * ID_LEN, "ff" * ID_LEN
    data = a.revoke([low, high]).encode()
    start = _ids_offset()
    first, second = data[start : start + ID_LEN], data[start + ID_LEN : start + 2 * ID_LEN]
    assert (first, second) == (bytes.fromhex(low), bytes.fromhex(high))
    swapped = data[:start] + second + first + data[start + 2 * ID_LEN :]
    with pytest.raises(EncodingError):
        RevocationList.decode(swapped)
    duplicated = data[:start] + first + first + data[start + 2 * ID_LEN :]
    with pytest.raises(EncodingError):
        RevocationList.decode(duplicated)


def test_revocation_list_decode_rejections() -> None:
    a, _, _, _ = world()
    data = a.revoke(["00" * ID_LEN]).encode()
    for n in range(len(data)):
        with pytest.raises(EncodingError):
            RevocationList.decode(data[:n])
    with pytest.raises(EncodingError):
        RevocationList.decode(data + b"\0")
    for offset, value in [(0, 0x04), (1, 2)]:
        forged = bytearray(data)
        forged[offset] = value
        with pytest.raises(EncodingError):
            RevocationList.decode(bytes(forged))
    # A count over the limit is refused before any id is read.
    over = data[: _ids_offset() - 4] + (MAX_REVOKED + 1).to_bytes(4, "big")
    with pytest.raises(EncodingError, match="exceed the limit"):
        RevocationList.decode(over)


@pytest.mark.parametrize(
    "bad_id",
    [
        "00" * (ID_LEN - 1),
        "00" * (ID_LEN + 1),
        "AB" * ID_LEN,  # uppercase
        "zz" * ID_LEN,  # not hex at all
        "0 " * ID_LEN,
    ],
)
def test_sign_revocations_refuses_malformed_ids(bad_id: str) -> None:
    a, _, _, _ = world()
    with pytest.raises(EncodingError):
        a.revoke([bad_id])


# ---------------------------------------------------------------------------------------------
# Strict decoding: attributes built by hand
# ---------------------------------------------------------------------------------------------


def credential_bytes(cred: Credential, write_attributes) -> bytes:
    """``cred`` encoded with its attribute block written by ``write_attributes(writer)``."""
    w = (
        Writer()
        .u8(0x04)
        .u8(1)
        .fixed(identity.identifier_bytes(cred.subject), 20)
        .fixed(identity.identifier_bytes(cred.issuer), 20)
    )
    write_attributes(w)
    w.u64(cred.created_at).u64(cred.expires_at)
    return w.getvalue() + cred.signing_attestation.encode() + cred.signature


def raw_attributes(pairs: list[tuple[bytes, bytes]], count: int | None = None):
    def write(w: Writer) -> None:
        w.u8(len(pairs) if count is None else count)
        for k, v in pairs:
            w.u16(len(k)).raw(k).u16(len(v)).raw(v)

    return write


def test_hand_built_canonical_attributes_decode_as_a_control() -> None:
    a, _, subject, _ = world()
    cred = a.issue(subject, {"a": "1", "b": "2"})
    data = credential_bytes(cred, raw_attributes([(b"a", b"1"), (b"b", b"2")]))
    assert data == cred.encode()
    assert credential.verify(data, authorities=a.trusted, now=T0 + 2 * DAY) == cred


@pytest.mark.parametrize(
    "pairs",
    [
        [(b"b", b"2"), (b"a", b"1")],  # unsorted
        [(b"a", b"1"), (b"a", b"1")],  # duplicate
        [(b"a", b"1"), (b"a", b"2")],  # duplicate key, other value
        [(b"ab", b"1"), (b"a", b"2")],  # a prefix after its extension
        [("é".encode(), b"1"), (b"z", b"2")],  # sorted as text would be, not by bytes
    ],
    ids=["unsorted", "duplicate", "duplicate-key", "prefix", "bytes-order"],
)
def test_non_canonical_attributes_are_refused(pairs: list[tuple[bytes, bytes]]) -> None:
    a, _, subject, _ = world()
    cred = a.issue(subject, {"a": "1"})
    with pytest.raises(EncodingError):
        Credential.decode(credential_bytes(cred, raw_attributes(pairs)))


def test_invalid_attribute_encodings_are_refused() -> None:
    a, _, subject, _ = world()
    cred = a.issue(subject, {"a": "1"})
    for pairs in (
        [(b"", b"1")],  # empty key
        [(b"\xff", b"1")],  # key not UTF-8
        [(b"a", b"\xc3")],  # value not UTF-8
        [(b"a", b"\xed\xa0\x80")],  # an encoded surrogate
        [(b"k" * (MAX_KEY_LEN + 1), b"v")],
        [(b"k", b"v" * (MAX_VALUE_LEN + 1))],
    ):
        with pytest.raises(EncodingError):
            Credential.decode(credential_bytes(cred, raw_attributes(pairs)))
    # A count that does not match the pairs that follow.
    for count in (0, 2):
        with pytest.raises(EncodingError):
            Credential.decode(credential_bytes(cred, raw_attributes([(b"a", b"1")], count)))


def test_too_many_attributes_are_refused_on_encode_and_decode() -> None:
    a, _, subject, _ = world()
    too_many = {f"k{i:03d}": "v" for i in range(MAX_ATTRIBUTES + 1)}
    with pytest.raises(EncodingError):
        a.issue(subject, too_many)
    cred = a.issue(subject, {"a": "1"})
    with pytest.raises(EncodingError):
        dataclasses.replace(cred, attributes=too_many).encode()
    pairs = [(k.encode(), b"v") for k in sorted(too_many)]
    with pytest.raises(EncodingError, match="exceed the limit"):
        Credential.decode(credential_bytes(cred, raw_attributes(pairs)))


def test_over_long_keys_and_values_are_refused_on_encode() -> None:
    a, _, subject, _ = world()
    cred = a.issue(subject, {"a": "1"})
    for attributes in (
        {"k" * (MAX_KEY_LEN + 1): "v"},
        {"é" * (MAX_KEY_LEN // 2 + 1): "v"},
        {"k": "v" * (MAX_VALUE_LEN + 1)},
        {"k": "€" * (MAX_VALUE_LEN // 3 + 1)},
        {"": "v"},
    ):
        with pytest.raises(EncodingError):
            a.issue(subject, attributes)
        with pytest.raises(EncodingError):
            dataclasses.replace(cred, attributes=attributes).encode()


def test_unencodable_text_is_an_encoding_error() -> None:
    """A lone surrogate has no UTF-8 encoding: tether refuses it with its own error class
    (``errors.py``: every error tether raises is a TetherError), like any other bad attribute."""
    a, _, subject, _ = world()
    for attributes in ({"k": "\ud800"}, {"\udfff": "v"}):
        with pytest.raises(EncodingError):
            a.issue(subject, attributes)


def test_credential_decode_rejections() -> None:
    a, _, subject, _ = world()
    data = a.issue(subject).encode()
    for n in range(len(data)):
        with pytest.raises(EncodingError):
            Credential.decode(data[:n])
    with pytest.raises(EncodingError):
        Credential.decode(data + b"\0")
    for offset, value in [(0, 0x03), (0, 0x05), (1, 0), (1, 2)]:
        forged = bytearray(data)
        forged[offset] = value
        with pytest.raises(EncodingError):
            Credential.decode(bytes(forged))
    with pytest.raises(EncodingError, match="exceeds the limit"):
        Credential.decode(b"\x04" * (MAX_CREDENTIAL_SIZE + 1))


CRED_BYTES = world()[0].issue(world()[2]).encode()


@given(index=st.integers(0, len(CRED_BYTES) - 1), mask=st.integers(1, 0xFF))
def test_any_single_byte_change_to_a_credential_is_refused(index: int, mask: int) -> None:
    a, _, _, _ = world()
    tampered = bytearray(CRED_BYTES)
    tampered[index] ^= mask
    with pytest.raises(TetherError) as info:
        credential.verify(bytes(tampered), authorities=a.trusted, now=T0 + 2 * DAY)
    assert isinstance(
        info.value,
        EncodingError | UntrustedIssuerError | SigningKeyError | CredentialSignatureError,
    )


@given(st.binary(max_size=400))
def test_arbitrary_bytes_fail_cleanly(data: bytes) -> None:
    a, _, _, _ = world()
    with pytest.raises(TetherError):
        credential.verify(data, authorities=a.trusted, now=T0 + 2 * DAY)
    with pytest.raises(EncodingError):
        RevocationList.decode(data)
