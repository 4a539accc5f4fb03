"""Authenticated encryption: AES-256-GCM and ChaCha20-Poly1305 (``ring`` in the Rust core).

    from tether.core.aead import Aead
    key = Aead("AES-256-GCM", key32)
    ct = key.seal(nonce12, b"data", aad=b"header")   # ciphertext || 16-byte tag
    key.open(nonce12, ct, aad=b"header")              # DecryptError if anything was changed

Inputs may be any bytes-like object (read without copying); outputs are new ``bytes``. Large
inputs are processed with the GIL released.
"""

from __future__ import annotations

from tether._core import AEAD_NONCE_LEN, AEAD_TAG_LEN, Aead

NONCE_LEN = AEAD_NONCE_LEN
TAG_LEN = AEAD_TAG_LEN

__all__ = ["NONCE_LEN", "TAG_LEN", "Aead"]
