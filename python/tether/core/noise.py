"""Noise XX handshakes and transports, from tether's Rust core.

The handshake is standard Noise (revision 34), pattern XX over Curve25519, with AES-256-GCM or
ChaCha20-Poly1305 and SHA-256 or BLAKE2s, under the standard protocol names
(:data:`PROTOCOL_NAMES`), so any conforming implementation can be the peer::

    from tether import noise

    sk_i, _ = noise.generate_keypair()
    sk_r, _ = noise.generate_keypair()
    i = noise.Handshake("Noise_XX_25519_AESGCM_SHA256", initiator=True, static_key=sk_i)
    r = noise.Handshake("Noise_XX_25519_AESGCM_SHA256", initiator=False, static_key=sk_r)
    r.read_message(i.write_message(b""))           # -> e
    i.read_message(r.write_message(b""))           # <- e, ee, s, es
    r.read_message(i.write_message(b""))           # -> s, se
    ti, tr = i.into_transport(), r.into_transport()
    assert tr.decrypt(ti.encrypt(b"hello")) == b"hello"

Two transports come out of a finished handshake:

* :meth:`Handshake.into_transport` gives :class:`Transport`, the standard Noise transport with
  implicit nonces (messages must arrive in order, once) and ``rekey_outgoing``/``rekey_incoming``.
* :meth:`Handshake.into_channel_cipher` gives :class:`ChannelCipher`, the transport of tether's
  secure channels: every message carries its 64-bit nonce, a sliding window accepts in-window
  reordering and refuses replays, and keys roll forward (Noise ``REKEY``) every
  ``rekey_interval`` messages without any signalling. ``seal_many``/``open_many``/``seal_chunks``
  handle many messages in one call; ``seal_frames``/``seal_stream`` seal straight into a stream of
  length-prefixed frames ready for a socket, with the GIL released once.

Failures are atomic or terminal. A refused *handshake* message ends that handshake (as the Noise
spec aborts a handshake on any error): it raises :class:`~tether.core.errors.HandshakeError`, then
``broken`` is true and every later call raises :class:`~tether.core.errors.BrokenError`; start a new
handshake. A forged, replayed or truncated *transport* message changes nothing: no nonce and no
window moves, and the next genuine message decrypts. Misuse (writing out of turn, an oversized
payload) raises :class:`~tether.core.errors.StateError` or
:class:`~tether.core.errors.InvalidArgumentError` and changes nothing. Errors are
:mod:`tether.core.errors` classes.
"""

from __future__ import annotations

from tether._core import (
    CHANNEL_MAX_PAYLOAD_LEN,
    CHANNEL_OVERHEAD,
    DEFAULT_REKEY_INTERVAL,
    MAX_MESSAGE_LEN,
    MAX_PAYLOAD_LEN,
    PROTOCOL_NAMES,
    REPLAY_WINDOW,
    ChannelCipher,
    Handshake,
    Transport,
    generate_keypair,
    public_key,
    x25519,
)

__all__ = [
    "CHANNEL_MAX_PAYLOAD_LEN",
    "CHANNEL_OVERHEAD",
    "DEFAULT_REKEY_INTERVAL",
    "MAX_MESSAGE_LEN",
    "MAX_PAYLOAD_LEN",
    "PROTOCOL_NAMES",
    "REPLAY_WINDOW",
    "ChannelCipher",
    "Handshake",
    "Transport",
    "generate_keypair",
    "public_key",
    "x25519",
]
