"""Credentials: attribute sets an authority signs about a subject identity, with a validity
window — and revocation lists, so an authority can withdraw a credential before it expires.

A credential carries the attestation of the key that signed it (the authority's
credential-signing purpose key), so a verifier that trusts the authority's *identity* can check
the whole chain: authority identity → attested signing key → credential. Verification
(:func:`verify`) refuses, each with its own error class: a wrong or untrusted issuer, a wrong
subject, tampering (bad signature), a credential not yet valid or expired (beyond a small clock
skew), a signing key whose attestation did not cover the signing time or has expired, and a
revoked credential. Formats: ``docs/identity-format.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from tether.core.encoding import Reader, Writer
from tether.core.errors import (
    AttestationError,
    CredentialExpiredError,
    CredentialNotYetValidError,
    CredentialRevokedError,
    CredentialSignatureError,
    EncodingError,
    SigningKeyError,
    UntrustedIssuerError,
    WrongIssuerError,
    WrongSubjectError,
)
from tether.identity.identity import (
    ATTESTATION_SIZE,
    IDENTIFIER_LEN,
    SIGNATURE_LEN,
    VERSION,
    Attestation,
    Identity,
    Purpose,
    ed25519_verify,
    identifier_bytes,
    identifier_text,
    verify_attestation,
)
from tether.identity.vault import Vault

T_CREDENTIAL = 0x04
T_REVOCATIONS = 0x05
MAX_ATTRIBUTES = 64
MAX_KEY_LEN = 64
MAX_VALUE_LEN = 1024
MAX_CREDENTIAL_SIZE = (
    4
    + 2 * IDENTIFIER_LEN
    + 1
    + MAX_ATTRIBUTES * (4 + MAX_KEY_LEN + MAX_VALUE_LEN)
    + 16
    + ATTESTATION_SIZE
    + SIGNATURE_LEN
)
MAX_REVOKED = 100_000
ID_LEN = 16
MAX_REVOCATIONS_SIZE = 2 + IDENTIFIER_LEN + 16 + 4 + MAX_REVOKED * ID_LEN + ATTESTATION_SIZE + 64
DEFAULT_SKEW = 60

_CREDENTIAL_DOMAIN = b"tether/credential/v1\0"
_REVOCATIONS_DOMAIN = b"tether/revocations/v1\0"


@dataclass(frozen=True, slots=True)
class Credential:
    subject: str
    issuer: str
    attributes: Mapping[str, str] = field(hash=False)
    created_at: int
    expires_at: int
    signing_attestation: Attestation
    signature: bytes

    def _body(self) -> bytes:
        return (
            Writer()
            .u8(T_CREDENTIAL)
            .u8(VERSION)
            .fixed(identifier_bytes(self.subject), IDENTIFIER_LEN)
            .fixed(identifier_bytes(self.issuer), IDENTIFIER_LEN)
            .attributes(self.attributes, MAX_ATTRIBUTES, MAX_KEY_LEN, MAX_VALUE_LEN)
            .u64(self.created_at)
            .u64(self.expires_at)
            .getvalue()
        )

    def signed_message(self) -> bytes:
        return _CREDENTIAL_DOMAIN + self._body()

    def encode(self) -> bytes:
        return self._body() + self.signing_attestation.encode() + self.signature

    @property
    def id(self) -> str:
        """A stable short id (hex) naming this credential, e.g. in revocation lists."""
        return hashlib.sha256(self._body()).digest()[:ID_LEN].hex()

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Credential:
        r = Reader(data, "credential", MAX_CREDENTIAL_SIZE)
        r.expect(T_CREDENTIAL, "structure type")
        r.expect(VERSION, "version")
        subject = identifier_text(r.fixed(IDENTIFIER_LEN, "subject"))
        issuer = identifier_text(r.fixed(IDENTIFIER_LEN, "issuer"))
        attrs = r.attributes(MAX_ATTRIBUTES, MAX_KEY_LEN, MAX_VALUE_LEN)
        created_at = r.u64("created_at")
        expires_at = r.u64("expires_at")
        attestation = Attestation._read(r)
        signature = r.fixed(SIGNATURE_LEN, "signature")
        r.end()
        return cls(subject, issuer, attrs, created_at, expires_at, attestation, signature)

    def __repr__(self) -> str:
        return (
            f"Credential({self.id}, subject={self.subject}, issuer={self.issuer}, "
            f"attributes={dict(self.attributes)!r}, valid {self.created_at}..{self.expires_at})"
        )


def issue(
    vault: Vault,
    signing_key_id: str,
    signing_attestation: Attestation,
    subject: str,
    attributes: Mapping[str, str],
    *,
    now: int,
    ttl: int,
) -> Credential:
    """Sign a credential about ``subject`` with the issuer's attested credential-signing key."""
    if ttl <= 0:
        raise EncodingError("a credential's time to live must be positive")
    if signing_attestation.purpose is not Purpose.CREDENTIAL_SIGNING:
        raise AttestationError("credentials are signed only with a credential-signing key")
    if vault.public_key(signing_key_id) != signing_attestation.public_key:
        raise AttestationError("the signing key is not the attested one")
    identifier_bytes(subject)  # refuse a malformed subject up front
    unsigned = Credential(
        subject,
        signing_attestation.subject,
        dict(attributes),
        now,
        now + ttl,
        signing_attestation,
        b"\0" * SIGNATURE_LEN,
    )
    unsigned.encode()  # checks every limit before signing
    signature = vault.sign(signing_key_id, unsigned.signed_message())
    return Credential(
        subject,
        signing_attestation.subject,
        dict(attributes),
        now,
        now + ttl,
        signing_attestation,
        signature,
    )


# --- revocation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevocationList:
    """The credentials an authority has revoked (ids), as of ``sequence``; signed like a
    credential, so anyone holding it can prove a revocation to any verifier."""

    issuer: str
    sequence: int
    created_at: int
    revoked: frozenset[str]
    signing_attestation: Attestation
    signature: bytes

    def _body(self) -> bytes:
        ids = sorted(bytes.fromhex(i) for i in self.revoked)
        if len(ids) > MAX_REVOKED:
            raise EncodingError(f"{len(ids)} revocations exceed the limit of {MAX_REVOKED}")
        w = (
            Writer()
            .u8(T_REVOCATIONS)
            .u8(VERSION)
            .fixed(identifier_bytes(self.issuer), IDENTIFIER_LEN)
            .u64(self.sequence)
            .u64(self.created_at)
            .u32(len(ids))
        )
        for i in ids:
            w.fixed(i, ID_LEN)
        return w.getvalue()

    def signed_message(self) -> bytes:
        return _REVOCATIONS_DOMAIN + self._body()

    def encode(self) -> bytes:
        return self._body() + self.signing_attestation.encode() + self.signature

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> RevocationList:
        r = Reader(data, "revocation list", MAX_REVOCATIONS_SIZE)
        r.expect(T_REVOCATIONS, "structure type")
        r.expect(VERSION, "version")
        issuer = identifier_text(r.fixed(IDENTIFIER_LEN, "issuer"))
        sequence = r.u64("sequence")
        created_at = r.u64("created_at")
        count = r.u32("count")
        if count > MAX_REVOKED:
            raise EncodingError(f"revocation list: {count} ids exceed the limit of {MAX_REVOKED}")
        ids: list[bytes] = []
        for _ in range(count):
            i = r.fixed(ID_LEN, "credential id")
            if ids and i <= ids[-1]:
                raise EncodingError("revocation list: ids must be sorted and unique")
            ids.append(i)
        attestation = Attestation._read(r)
        signature = r.fixed(SIGNATURE_LEN, "signature")
        r.end()
        return cls(
            issuer, sequence, created_at, frozenset(i.hex() for i in ids), attestation, signature
        )


def sign_revocations(
    vault: Vault,
    signing_key_id: str,
    signing_attestation: Attestation,
    revoked: Iterable[str],
    *,
    sequence: int,
    now: int,
) -> RevocationList:
    ids = frozenset(revoked)
    for i in ids:
        try:
            valid = len(i) == 2 * ID_LEN and bytes.fromhex(i).hex() == i
        except ValueError:
            valid = False
        if not valid:
            raise EncodingError(f"not a credential id: {i!r} (32 lowercase hex digits)")
    unsigned = RevocationList(
        signing_attestation.subject, sequence, now, ids, signing_attestation, b"\0" * SIGNATURE_LEN
    )
    signature = vault.sign(signing_key_id, unsigned.signed_message())
    return RevocationList(
        signing_attestation.subject, sequence, now, ids, signing_attestation, signature
    )


def _check_signing_key(
    att: Attestation, issuer: Identity, signed_at: int, now: int, skew: int
) -> None:
    _check_signing_attestation(att, issuer, signed_at, skew)
    _check_signing_key_current(att, now, skew)


def _check_signing_attestation(
    att: Attestation, issuer: Identity, signed_at: int, skew: int
) -> None:
    try:
        verify_attestation(att, issuer, Purpose.CREDENTIAL_SIGNING, at=signed_at, skew=skew)
    except AttestationError as e:
        raise SigningKeyError(
            f"the signing key is not validly attested by the issuer: {e}"
        ) from None


def _check_signing_key_current(att: Attestation, now: int, skew: int) -> None:
    if now - skew > att.expires_at:
        raise SigningKeyError(
            f"the signing key's attestation expired at {att.expires_at}; the issuer must "
            "re-attest it and re-issue"
        )


def verify_revocations(
    data: bytes | RevocationList, issuer: Identity, *, now: int, skew: int = DEFAULT_SKEW
) -> RevocationList:
    rl = data if isinstance(data, RevocationList) else RevocationList.decode(data)
    if rl.issuer != issuer.identifier:
        raise WrongIssuerError(f"the revocation list is from {rl.issuer}, not {issuer.identifier}")
    _check_signing_key(rl.signing_attestation, issuer, rl.created_at, now, skew)
    if not ed25519_verify(rl.signing_attestation.public_key, rl.signed_message(), rl.signature):
        raise CredentialSignatureError("the revocation list's signature does not verify")
    return rl


# --- verification ---------------------------------------------------------------------------


def verify(
    data: bytes | Credential,
    *,
    authorities: Mapping[str, Identity],
    now: int,
    issuer: str | None = None,
    subject: str | None = None,
    revocations: Mapping[str, RevocationList] | None = None,
    skew: int = DEFAULT_SKEW,
) -> Credential:
    """Verify a credential against the trusted ``authorities`` (identifier → verified identity).

    ``issuer``/``subject``, when given, are required values. ``revocations`` maps an issuer's
    identifier to its latest verified revocation list. Returns the credential; raises the
    precise :class:`~tether.core.errors.CredentialError` subclass otherwise."""
    cred = data if isinstance(data, Credential) else Credential.decode(data)
    if issuer is not None and cred.issuer != issuer:
        raise WrongIssuerError(f"the credential was issued by {cred.issuer}, not {issuer}")
    authority = authorities.get(cred.issuer)
    if authority is None:
        raise UntrustedIssuerError(
            f"the credential's issuer {cred.issuer} is not a trusted authority"
        )
    check_issued(cred, authority, subject=subject, skew=skew)
    check_current(cred, now=now, skew=skew)
    if revocations is not None:
        rl = revocations.get(cred.issuer)
        # Only the issuer's own list can revoke its credentials.
        if rl is not None and rl.issuer == cred.issuer and cred.id in rl.revoked:
            raise CredentialRevokedError(
                f"credential {cred.id} was revoked by {cred.issuer} (revocation list "
                f"#{rl.sequence})"
            )
    return cred


def check_issued(
    cred: Credential, authority: Identity, *, subject: str | None = None, skew: int = DEFAULT_SKEW
) -> None:
    """The checks of :func:`verify` that do not depend on the time: ``cred`` was signed by
    ``authority`` (the trusted issuer's verified identity) with a key it attested for signing
    credentials when the credential was made, unaltered, and (when given) about ``subject``.
    Their outcome holds for as long as the authority's identity does not change, so a verifier
    may remember it; :func:`check_current` is the rest, at a given time."""
    if subject is not None and cred.subject != subject:
        raise WrongSubjectError(f"the credential is about {cred.subject}, not {subject}")
    att = cred.signing_attestation
    if att.subject != cred.issuer:
        raise SigningKeyError(f"the signing key is attested by {att.subject}, not the issuer")
    if not ed25519_verify(att.public_key, cred.signed_message(), cred.signature):
        raise CredentialSignatureError(
            "the credential's signature does not verify: it was altered after issue"
        )
    _check_signing_attestation(att, authority, cred.created_at, skew)
    if cred.expires_at <= cred.created_at:
        raise CredentialExpiredError("the credential expires before it starts")


def check_current(
    cred: Credential, *, now: int, skew: int = DEFAULT_SKEW, revoked: Collection[str] = ()
) -> None:
    """The checks of :func:`verify` that depend on the time ``now``, for a credential that
    passed :func:`check_issued`: its signing key's attestation has not expired, it is valid
    now (within ``skew``), and its id is not in ``revoked`` (the issuer's revoked ids, from
    its latest verified revocation list)."""
    _check_signing_key_current(cred.signing_attestation, now, skew)
    if now + skew < cred.created_at:
        raise CredentialNotYetValidError(
            f"the credential is valid from {cred.created_at}, {cred.created_at - now} s from now"
        )
    if now - skew > cred.expires_at:
        raise CredentialExpiredError(
            f"the credential expired at {cred.expires_at}, {now - cred.expires_at} s ago"
        )
    if revoked and cred.id in revoked:
        raise CredentialRevokedError(f"credential {cred.id} was revoked by {cred.issuer}")
