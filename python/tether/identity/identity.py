"""Identities: Ed25519 keys with a change history, identifiers, and purpose-key attestations.

An identity is defined by its first *change*; each later change (a key rotation) names the hash of
the change before it and is signed by both the previous key and the new one, so only the holder of
the current key can rotate, and the identity's **identifier** — derived from the first change —
never changes. Identifiers read ``I`` + 40 hex digits.

An identity *attests* purpose keys: an X25519 key for secure channels, an Ed25519 key for signing
credentials. An attestation names its subject, purpose, key, validity window and the change whose
key signed it; it verifies only against that identity's *current* key (a rotation retires the
attestations made by older keys: re-attest after rotating).

Everything here is pure: secrets are used only through a :class:`~tether.identity.vault.Vault`.
Formats: ``docs/identity-format.md``. Verification of a history from scratch checks every hash link,
both signatures of every rotation, increasing timestamps and fresh keys, and is cached by the
exact bytes (a verified history need not be verified again).
"""

from __future__ import annotations

import enum
import functools
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tether.core.encoding import Reader, Writer
from tether.core.errors import (
    AttestationError,
    BrokenLinkError,
    ChangeOrderError,
    DowngradeError,
    EncodingError,
    ForkError,
    SignatureError,
)
from tether.identity.vault import KeyType, Vault

VERSION = 1
KEY_LEN = 32
HASH_LEN = 32
SIGNATURE_LEN = 64
IDENTIFIER_LEN = 20
MAX_CHANGES = 64

# Structure types (first byte of every encoding).
T_CHANGE = 0x01
T_HISTORY = 0x02
T_ATTESTATION = 0x03

_CHANGE_DOMAIN = b"tether/change/v1\0"
_IDENTIFIER_DOMAIN = b"tether/identifier/v1\0"
_ATTESTATION_DOMAIN = b"tether/attestation/v1\0"

_MAX_CHANGE_IN_HISTORY = 1 + HASH_LEN + KEY_LEN + 8 + 2 * SIGNATURE_LEN
MAX_HISTORY_SIZE = 3 + MAX_CHANGES * _MAX_CHANGE_IN_HISTORY
ATTESTATION_SIZE = 2 + IDENTIFIER_LEN + 1 + KEY_LEN + 8 + 8 + HASH_LEN + SIGNATURE_LEN


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message`` (RFC 8032, OpenSSL)."""
    if len(public_key) != KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- identifiers ----------------------------------------------------------------------------


def identifier_from_first_change(change_bytes: bytes) -> str:
    digest = hashlib.sha256(_IDENTIFIER_DOMAIN + change_bytes).digest()
    return "I" + digest[:IDENTIFIER_LEN].hex()


def identifier_bytes(identifier: str) -> bytes:
    """The 20 bytes of an identifier's text form; EncodingError with what is wrong otherwise."""
    if len(identifier) != 1 + 2 * IDENTIFIER_LEN or not identifier.startswith("I"):
        raise EncodingError(
            f"not an identifier: {identifier!r} (an identifier is 'I' and 40 hex digits)"
        )
    try:
        raw = bytes.fromhex(identifier[1:])
    except ValueError:
        raise EncodingError(f"not an identifier: {identifier!r} (non-hex digits)") from None
    if raw.hex() != identifier[1:]:
        raise EncodingError(f"not an identifier: {identifier!r} (use lowercase hex)")
    return raw


def identifier_text(raw: bytes) -> str:
    return "I" + raw.hex()


# --- changes and histories ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a change history: the primary key from ``created_at`` on."""

    previous: bytes | None
    primary_key: bytes
    created_at: int

    def encode(self) -> bytes:
        w = Writer().u8(T_CHANGE).u8(VERSION).flag(self.previous is not None)
        if self.previous is not None:
            w.fixed(self.previous, HASH_LEN)
        return w.fixed(self.primary_key, KEY_LEN).u64(self.created_at).getvalue()

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    def signed_message(self) -> bytes:
        return _CHANGE_DOMAIN + self.encode()


@dataclass(frozen=True, slots=True)
class SignedChange:
    change: Change
    signature: bytes
    """By the change's own (new) primary key."""
    previous_signature: bytes | None
    """By the previous change's primary key (every change but the first)."""


def encode_history(changes: list[SignedChange] | tuple[SignedChange, ...]) -> bytes:
    if not 1 <= len(changes) <= MAX_CHANGES:
        raise EncodingError(f"a history has 1 to {MAX_CHANGES} changes, got {len(changes)}")
    w = Writer().u8(T_HISTORY).u8(VERSION).u8(len(changes))
    for sc in changes:
        c = sc.change
        if (c.previous is None) != (sc.previous_signature is None):
            raise EncodingError("a change has a previous-key signature iff it names a previous")
        w.flag(c.previous is not None)
        if c.previous is not None:
            w.fixed(c.previous, HASH_LEN)
        w.fixed(c.primary_key, KEY_LEN).u64(c.created_at).fixed(sc.signature, SIGNATURE_LEN)
        if sc.previous_signature is not None:
            w.fixed(sc.previous_signature, SIGNATURE_LEN)
    return w.getvalue()


def decode_history(data: bytes | bytearray | memoryview) -> tuple[SignedChange, ...]:
    """Decode only (strict, canonical); :func:`verify_history` also checks links and signatures."""
    r = Reader(data, "identity history", MAX_HISTORY_SIZE)
    r.expect(T_HISTORY, "structure type")
    r.expect(VERSION, "version")
    count = r.u8("change count")
    if not 1 <= count <= MAX_CHANGES:
        raise EncodingError(f"identity history: {count} changes (1 to {MAX_CHANGES} allowed)")
    out = []
    for _ in range(count):
        has_previous = r.flag("has-previous flag")
        previous = r.fixed(HASH_LEN, "previous change hash") if has_previous else None
        key = r.fixed(KEY_LEN, "primary key")
        created_at = r.u64("created_at")
        signature = r.fixed(SIGNATURE_LEN, "signature")
        prev_sig = r.fixed(SIGNATURE_LEN, "previous-key signature") if has_previous else None
        out.append(SignedChange(Change(previous, key, created_at), signature, prev_sig))
    r.end()
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified identity: its identifier, its changes, and its exported history."""

    identifier: str
    changes: tuple[SignedChange, ...]
    history: bytes

    @property
    def primary_key(self) -> bytes:
        """The current (latest) primary public key."""
        return self.changes[-1].change.primary_key

    @property
    def latest_change_hash(self) -> bytes:
        return self.changes[-1].change.hash

    @property
    def created_at(self) -> int:
        return self.changes[0].change.created_at

    def __repr__(self) -> str:
        return f"Identity({self.identifier}, changes={len(self.changes)})"

    def check_update(self, newer: Identity) -> None:
        """Accept ``newer`` as this identity's next known history only if it extends this one.

        DowngradeError for an older history (a strict prefix of this one), ForkError for one that
        diverges, IdentityError subclasses for another identifier."""
        if newer.identifier != self.identifier:
            raise ForkError(f"history is for {newer.identifier}, not {self.identifier}")
        n = len(self.changes)
        if len(newer.changes) < n:
            if newer.changes == self.changes[: len(newer.changes)]:
                raise DowngradeError(
                    f"{self.identifier}: this history has {len(newer.changes)} changes, an older "
                    f"version of the {n} already known; refusing to go back"
                )
            raise ForkError(f"{self.identifier}: this history diverges from the known one")
        if newer.changes[:n] != self.changes:
            raise ForkError(f"{self.identifier}: this history diverges from the known one")


@functools.lru_cache(maxsize=4096)
def _verify_history_cached(data: bytes) -> Identity:
    changes = decode_history(data)
    first = changes[0].change
    if first.previous is not None:
        raise BrokenLinkError("change 1 names a previous change: a history starts with its first")
    for i, sc in enumerate(changes):
        c = sc.change
        message = c.signed_message()
        if i > 0:
            before = changes[i - 1].change
            if c.previous != before.hash:
                raise BrokenLinkError(
                    f"change {i + 1} does not name the hash of change {i} (reordered, edited "
                    "or from another identity)"
                )
            if c.created_at <= before.created_at:
                raise ChangeOrderError(
                    f"change {i + 1} is not later than change {i} "
                    f"({c.created_at} <= {before.created_at})"
                )
            if any(c.primary_key == e.change.primary_key for e in changes[:i]):
                raise ChangeOrderError(f"change {i + 1} returns to an earlier key (a downgrade)")
            assert sc.previous_signature is not None  # decode pairs it with `previous`
            if not ed25519_verify(before.primary_key, message, sc.previous_signature):
                raise SignatureError(f"change {i + 1} is not signed by the previous key")
        if not ed25519_verify(c.primary_key, message, sc.signature):
            raise SignatureError(f"change {i + 1} is not signed by its own key")
    identifier = identifier_from_first_change(first.encode())
    return Identity(identifier, changes, data)


def verify_history(data: bytes | bytearray | memoryview) -> Identity:
    """Verify an exported change history from scratch (cached by its exact bytes)."""
    return _verify_history_cached(bytes(data))


def create(vault: Vault, now: int) -> tuple[Identity, str]:
    """A new identity: returns it and the vault key id of its primary key."""
    key_id = vault.generate(KeyType.ED25519)
    change = Change(None, vault.public_key(key_id), now)
    signed = SignedChange(change, vault.sign(key_id, change.signed_message()), None)
    return verify_history(encode_history([signed])), key_id


def rotate(vault: Vault, identity: Identity, current_key_id: str, now: int) -> tuple[Identity, str]:
    """Rotate to a new primary key (same identifier); returns the new identity and key id."""
    if vault.public_key(current_key_id) != identity.primary_key:
        raise SignatureError(f"{identity.identifier}: the given key is not the current key")
    key_id = vault.generate(KeyType.ED25519)
    last = identity.changes[-1].change
    change = Change(last.hash, vault.public_key(key_id), max(now, last.created_at + 1))
    message = change.signed_message()
    signed = SignedChange(change, vault.sign(key_id, message), vault.sign(current_key_id, message))
    return verify_history(encode_history([*identity.changes, signed])), key_id


# --- purpose keys ---------------------------------------------------------------------------


class Purpose(enum.IntEnum):
    SECURE_CHANNEL = 1
    """An X25519 static key for Noise secure channels."""
    CREDENTIAL_SIGNING = 2
    """An Ed25519 key for signing credentials (an authority's)."""


@dataclass(frozen=True, slots=True)
class Attestation:
    subject: str
    purpose: Purpose
    public_key: bytes
    created_at: int
    expires_at: int
    signer_change: bytes
    signature: bytes

    def _body(self) -> bytes:
        return (
            Writer()
            .u8(T_ATTESTATION)
            .u8(VERSION)
            .fixed(identifier_bytes(self.subject), IDENTIFIER_LEN)
            .u8(int(self.purpose))
            .fixed(self.public_key, KEY_LEN)
            .u64(self.created_at)
            .u64(self.expires_at)
            .fixed(self.signer_change, HASH_LEN)
            .getvalue()
        )

    def signed_message(self) -> bytes:
        return _ATTESTATION_DOMAIN + self._body()

    def encode(self) -> bytes:
        return self._body() + self.signature

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Attestation:
        r = Reader(data, "attestation", ATTESTATION_SIZE)
        att = cls._read(r)
        r.end()
        return att

    @classmethod
    def _read(cls, r: Reader) -> Attestation:
        r.expect(T_ATTESTATION, "structure type")
        r.expect(VERSION, "version")
        subject = identifier_text(r.fixed(IDENTIFIER_LEN, "subject"))
        purpose_value = r.u8("purpose")
        try:
            purpose = Purpose(purpose_value)
        except ValueError:
            raise EncodingError(f"attestation: unknown purpose {purpose_value}") from None
        key = r.fixed(KEY_LEN, "public key")
        created_at = r.u64("created_at")
        expires_at = r.u64("expires_at")
        signer = r.fixed(HASH_LEN, "signer change")
        signature = r.fixed(SIGNATURE_LEN, "signature")
        return cls(subject, purpose, key, created_at, expires_at, signer, signature)

    def __repr__(self) -> str:
        return (
            f"Attestation({self.subject}, {self.purpose.name}, key={self.public_key.hex()[:16]}…, "
            f"valid {self.created_at}..{self.expires_at})"
        )


def attest(
    vault: Vault,
    identity: Identity,
    primary_key_id: str,
    purpose: Purpose,
    public_key: bytes,
    created_at: int,
    expires_at: int,
) -> Attestation:
    """The identity (through its current primary key in the vault) attests ``public_key``."""
    if vault.public_key(primary_key_id) != identity.primary_key:
        raise SignatureError(f"{identity.identifier}: the given key is not the current key")
    if expires_at <= created_at:
        raise AttestationError("an attestation must expire after it is created")
    unsigned = Attestation(
        identity.identifier,
        purpose,
        public_key,
        created_at,
        expires_at,
        identity.latest_change_hash,
        b"\0" * SIGNATURE_LEN,
    )
    signature = vault.sign(primary_key_id, unsigned.signed_message())
    return Attestation(
        identity.identifier,
        purpose,
        public_key,
        created_at,
        expires_at,
        identity.latest_change_hash,
        signature,
    )


def verify_attestation(
    attestation: Attestation,
    identity: Identity,
    purpose: Purpose,
    *,
    at: int,
    public_key: bytes | None = None,
    skew: int = 60,
) -> None:
    """Check that ``identity`` attests ``attestation.public_key`` for ``purpose`` at time ``at``
    (and that it is exactly ``public_key``, when given). AttestationError says what is wrong."""
    a = attestation
    if a.subject != identity.identifier:
        raise AttestationError(f"the attestation is for {a.subject}, not {identity.identifier}")
    if a.purpose != purpose:
        raise AttestationError(
            f"the key is attested for {a.purpose.name}, not {purpose.name}; a key is only "
            "accepted for the purpose it was attested for"
        )
    if public_key is not None and a.public_key != public_key:
        raise AttestationError("the attestation is for a different key than the one presented")
    if a.signer_change != identity.latest_change_hash:
        raise AttestationError(
            f"{identity.identifier}: the attestation was signed by a superseded key (the identity "
            "rotated since); it must be attested again with the current key"
        )
    if not ed25519_verify(identity.primary_key, a.signed_message(), a.signature):
        raise AttestationError(f"the attestation is not signed by {identity.identifier}")
    if a.expires_at <= a.created_at:
        raise AttestationError("the attestation expires before it starts")
    if at + skew < a.created_at:
        raise AttestationError(f"the attested key is not valid yet (from {a.created_at})")
    if at - skew > a.expires_at:
        raise AttestationError(f"the attestation expired at {a.expires_at}")
