"""The vault: the only way to use a secret key.

Code outside this module never sees a private key: it asks a :class:`Vault` to *generate* a key
(and gets back a key id), to *sign* with it, or to *derive* with it (X25519). The one exception is
the Noise core, which needs the X25519 static key itself; it receives it wrapped in
:class:`SecretBytes`, whose ``repr``/``str`` never show the bytes. A KMS or HSM backend is a class
with these methods.

Backends: :class:`MemoryVault` (tests, embedding) and :class:`SqliteVault` (a node's store, file
mode 0600).
"""

from __future__ import annotations

import enum
import hashlib
import sqlite3
import time
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether import _core
from tether.core.errors import NotFoundError, VaultError
from tether.store.local import Store


class KeyType(enum.StrEnum):
    ED25519 = "ed25519"
    X25519 = "x25519"


class SecretBytes:
    """Secret key material on its way to the Noise core. Never printed."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "SecretBytes(<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("secrets cannot be pickled")


class Vault(Protocol):
    def generate(self, key_type: KeyType) -> str:
        """Generate a key; returns its id."""

    def public_key(self, key_id: str) -> bytes: ...

    def key_type(self, key_id: str) -> KeyType: ...

    def sign(self, key_id: str, message: bytes) -> bytes:
        """Ed25519 signature (RFC 8032)."""

    def derive(self, key_id: str, peer_public_key: bytes) -> bytes:
        """X25519 shared secret (RFC 7748)."""

    def noise_static_key(self, key_id: str) -> SecretBytes:
        """The X25519 private key, for the Noise handshake only."""

    def delete(self, key_id: str) -> None: ...

    def export_secret(self, key_id: str) -> SecretBytes:
        """The private key, for an encrypted identity export only."""

    def import_key(self, key_type: KeyType, secret: SecretBytes) -> str:
        """Store a private key (from an identity export); returns its id."""


def _key_id(key_type: KeyType, public: bytes) -> str:
    return f"K{key_type.value[0]}" + hashlib.sha256(public).hexdigest()[:24]


def _new_key(key_type: KeyType) -> tuple[bytes, bytes]:
    if key_type is KeyType.ED25519:
        sk = Ed25519PrivateKey.generate()
        secret = sk.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = sk.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return secret, public
    secret, public = _core.generate_keypair()
    return secret, public


def _public_of(key_type: KeyType, secret: bytes) -> bytes:
    """The public key of a private key (refusing one of the wrong size)."""
    if len(secret) != 32:
        raise VaultError(f"an {key_type.value} private key is 32 bytes, not {len(secret)}")
    if key_type is KeyType.ED25519:
        return (
            Ed25519PrivateKey.from_private_bytes(secret)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
    return _core.public_key(secret)


def _sign(secret: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(secret).sign(message)


class _Base:
    def _load(self, key_id: str) -> tuple[KeyType, bytes, bytes]:
        raise NotImplementedError

    def public_key(self, key_id: str) -> bytes:
        return self._load(key_id)[2]

    def key_type(self, key_id: str) -> KeyType:
        return self._load(key_id)[0]

    def sign(self, key_id: str, message: bytes) -> bytes:
        kt, secret, _ = self._load(key_id)
        if kt is not KeyType.ED25519:
            raise VaultError(f"key {key_id} is an {kt.value} key; only Ed25519 keys sign")
        return _sign(secret, message)

    def derive(self, key_id: str, peer_public_key: bytes) -> bytes:
        kt, secret, _ = self._load(key_id)
        if kt is not KeyType.X25519:
            raise VaultError(f"key {key_id} is an {kt.value} key; only X25519 keys derive")
        return _core.x25519(secret, peer_public_key)

    def noise_static_key(self, key_id: str) -> SecretBytes:
        kt, secret, _ = self._load(key_id)
        if kt is not KeyType.X25519:
            raise VaultError(f"key {key_id} is an {kt.value} key, not a Noise static key")
        return SecretBytes(secret)

    def export_secret(self, key_id: str) -> SecretBytes:
        return SecretBytes(self._load(key_id)[1])

    def import_key(self, key_type: KeyType, secret: SecretBytes) -> str:
        public = _public_of(key_type, secret.reveal())
        key_id = _key_id(key_type, public)
        self._store_key(key_id, key_type, secret.reveal(), public)
        return key_id

    def _store_key(self, key_id: str, key_type: KeyType, secret: bytes, public: bytes) -> None:
        raise NotImplementedError


class MemoryVault(_Base):
    """Keys in this process's memory only."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[KeyType, bytes, bytes]] = {}

    def generate(self, key_type: KeyType) -> str:
        secret, public = _new_key(key_type)
        key_id = _key_id(key_type, public)
        self._keys[key_id] = (key_type, secret, public)
        return key_id

    def _load(self, key_id: str) -> tuple[KeyType, bytes, bytes]:
        try:
            return self._keys[key_id]
        except KeyError:
            raise NotFoundError(f"no key {key_id} in this vault") from None

    def delete(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    def _store_key(self, key_id: str, key_type: KeyType, secret: bytes, public: bytes) -> None:
        self._keys[key_id] = (key_type, secret, public)

    def __repr__(self) -> str:
        return f"MemoryVault({len(self._keys)} keys)"


class SqliteVault(_Base):
    """Keys in the node's SQLite store (``secrets`` table; the file is 0600).

    ``generate`` writes inside the caller's transaction when one is open, so a key and the
    identity that uses it are committed together or not at all."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def generate(self, key_type: KeyType) -> str:
        secret, public = _new_key(key_type)
        key_id = _key_id(key_type, public)
        self._store.execute(
            "INSERT INTO secrets (key_id, key_type, secret, public, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key_id, key_type.value, secret, public, int(time.time())),
        )
        return key_id

    def _load(self, key_id: str) -> tuple[KeyType, bytes, bytes]:
        row = self._store.query_one(
            "SELECT key_type, secret, public FROM secrets WHERE key_id = ?", (key_id,)
        )
        if row is None:
            raise NotFoundError(f"no key {key_id} in the vault")
        try:
            return KeyType(row[0]), bytes(row[1]), bytes(row[2])
        except (ValueError, sqlite3.Error):
            raise VaultError(f"key {key_id} is stored with an unknown type") from None

    def delete(self, key_id: str) -> None:
        self._store.execute("DELETE FROM secrets WHERE key_id = ?", (key_id,))

    def _store_key(self, key_id: str, key_type: KeyType, secret: bytes, public: bytes) -> None:
        self._store.execute(
            "INSERT OR IGNORE INTO secrets (key_id, key_type, secret, public, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key_id, key_type.value, secret, public, int(time.time())),
        )

    def __repr__(self) -> str:
        return f"SqliteVault({self._store.path})"
