"""tether's exceptions: one hierarchy for the whole package.

Every error tether raises is a :class:`TetherError`. The Rust core maps each of its error kinds to
exactly one class here (``rust/src/py/errors.rs``). Messages say what happened and what to do;
they never contain keys or plaintext, and authentication failures carry no detail at all.

Two families, in the manner of h11: :class:`StateError` and :class:`InvalidArgumentError` mean
*this program* misused an object; :class:`CryptoError`, :class:`FrameError` and
:class:`RouteError` mean *the peer* (or the wire) sent something that is refused.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyExistsError",
    "AttestationError",
    "BrokenError",
    "BrokenLinkError",
    "ChangeOrderError",
    "CredentialError",
    "CredentialExpiredError",
    "CredentialNotYetValidError",
    "CredentialRevokedError",
    "CredentialSignatureError",
    "CryptoError",
    "DecryptError",
    "DowngradeError",
    "EncodingError",
    "ForkError",
    "FrameError",
    "FrameTooLargeError",
    "HandshakeError",
    "IdentityError",
    "InvalidArgumentError",
    "NonceExhaustedError",
    "NotFoundError",
    "ReplayError",
    "RouteError",
    "SignatureError",
    "SigningKeyError",
    "StateError",
    "StoreError",
    "TetherError",
    "UntrustedIssuerError",
    "VaultError",
    "WrongIssuerError",
    "WrongSubjectError",
]


class TetherError(Exception):
    """Base class of every error tether raises."""


class InvalidArgumentError(TetherError, ValueError):
    """An argument has the wrong size or value (a 31-byte key, an unknown algorithm name...)."""


class StateError(TetherError):
    """The call is not allowed in the object's current state (our misuse, not the peer's)."""


class BrokenError(StateError):
    """The object failed earlier in a way it cannot recover from; it refuses all further use."""


class FrameError(TetherError):
    """The byte stream is not valid framing.

    ``frames`` holds what the same call completed before the error (the frames; from
    ``FrameDecoder.feed_messages``, the decoded messages): nothing that arrived intact is lost.
    """

    frames: list[Any]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.frames = []


class FrameTooLargeError(FrameError):
    """A frame announced more bytes than the decoder's limit; refused before any allocation."""


class RouteError(TetherError):
    """A routed message is malformed (truncated, trailing bytes, bad lengths, unknown version)."""


class CryptoError(TetherError):
    """A cryptographic check refused a message."""


class HandshakeError(CryptoError):
    """The Noise handshake failed: a tampered or malformed message, or a peer with other keys."""


class DecryptError(CryptoError):
    """A message did not authenticate: forged, corrupted, truncated, or under another key."""


class ReplayError(CryptoError):
    """A message repeats a nonce already delivered, or is older than the anti-replay window."""


class NonceExhaustedError(CryptoError):
    """A cipher state used its last nonce (2^64-1 is never used); open a new channel."""


class EncodingError(TetherError, ValueError):
    """Bytes that are not a valid encoding: truncated, trailing bytes, non-canonical (a field
    that has exactly one valid encoding was encoded otherwise), out-of-range values, or larger
    than the format allows. Raised before anything is allocated for an oversized field."""


class IdentityError(TetherError):
    """An identity's change history, or a purpose-key attestation, does not verify."""


class BrokenLinkError(IdentityError):
    """A change does not name the hash of the change before it (or the first change names one)."""


class SignatureError(IdentityError):
    """A signature does not verify under the key that must have made it."""


class ChangeOrderError(IdentityError):
    """Changes are out of order: a timestamp that does not increase, or a key reused."""


class DowngradeError(IdentityError):
    """A history older than (a prefix of) the one already known for this identifier."""


class ForkError(IdentityError):
    """A history that diverges from the one already known for this identifier."""


class AttestationError(IdentityError):
    """A purpose key is not validly attested by the identity: wrong key, wrong purpose, wrong
    subject, expired, not yet valid, or signed by a key that is not the identity's current one."""


class CredentialError(TetherError):
    """A credential does not verify. Subclasses say exactly why."""


class UntrustedIssuerError(CredentialError):
    """The credential's issuer is not one of the trusted authorities."""


class WrongIssuerError(CredentialError):
    """The credential was issued by another authority than the one required."""


class WrongSubjectError(CredentialError):
    """The credential is about another identity than the one presenting it."""


class CredentialSignatureError(CredentialError):
    """The credential's signature does not verify: its attributes or fields were changed."""


class CredentialNotYetValidError(CredentialError):
    """The credential's validity starts in the future (beyond the allowed clock skew)."""


class CredentialExpiredError(CredentialError):
    """The credential expired (beyond the allowed clock skew)."""


class CredentialRevokedError(CredentialError):
    """The issuer revoked the credential before its expiry."""


class SigningKeyError(CredentialError):
    """The key that signed the credential was not validly attested by the issuer when it signed
    (or its attestation has expired)."""


class StoreError(TetherError):
    """The node's state store cannot do what was asked (not found, already exists, locked...)."""


class NotFoundError(StoreError, LookupError):
    """No such identity, credential or other resource in the store."""


class AlreadyExistsError(StoreError):
    """A resource with this name already exists."""


class VaultError(TetherError):
    """The vault cannot perform an operation with a secret (unknown key, wrong key type)."""
