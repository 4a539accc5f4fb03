"""tether's exceptions: one hierarchy for the whole package.

Every error tether raises is a :class:`TetherError`. The Rust core maps each of its error kinds to
exactly one class here (``rust/src/py/errors.rs``). Messages say what happened and what to do;
they never contain keys or plaintext, and authentication failures carry no detail at all.

Two families, in the manner of h11: :class:`StateError` and :class:`InvalidArgumentError` mean
*this program* misused an object; :class:`CryptoError`, :class:`FrameError` and
:class:`RouteError` mean *the peer* (or the wire) sent something that is refused.
"""

from __future__ import annotations

__all__ = [
    "BrokenError",
    "CryptoError",
    "DecryptError",
    "FrameError",
    "FrameTooLargeError",
    "HandshakeError",
    "InvalidArgumentError",
    "NonceExhaustedError",
    "ReplayError",
    "RouteError",
    "StateError",
    "TetherError",
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

    ``frames`` holds the frames completed, in the same call, before the error: nothing that
    arrived intact is lost.
    """

    frames: list[bytes]

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
