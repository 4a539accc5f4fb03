"""The node's identities, purpose keys, credentials and revocations, kept in its store.

:class:`Registry` is what the CLI and the node use: every operation that writes more than one row
(an identity and its keys; a rotation and its re-attestations; a revocation and the re-signed
list) is one store transaction, so a crash leaves either all of it or none of it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tether.core.encoding import Reader, Writer, from_base64url, to_base64url
from tether.core.errors import (
    AlreadyExistsError,
    IdentityError,
    InvalidArgumentError,
    NotFoundError,
    UntrustedIssuerError,
)
from tether.identity import credential as cred
from tether.identity import identity as ident
from tether.identity.credential import Credential, RevocationList
from tether.identity.identity import Attestation, Identity, Purpose
from tether.identity.trust import ChannelIdentity
from tether.identity.vault import KeyType, SecretBytes, SqliteVault, Vault
from tether.store.local import Store

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Purpose keys are attested for a year and re-attested on rotation.
PURPOSE_KEY_TTL = 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """An identity whose keys this node holds."""

    name: str
    identity: Identity
    primary_key_id: str
    created_at: int

    @property
    def identifier(self) -> str:
        return self.identity.identifier


SECRET_EXPORT_PREFIX = "tether-identity-secret1:"  # noqa: S105 (a format tag, not a secret)
SECRET_EXPORT_MAX_HISTORY = 60_000
SCRYPT_LOG2_N = 15  # 32 MiB and about 0.1 s per derivation
_EXPORT_AAD = b"tether identity export v1"
MIN_PASSPHRASE = 8


def _export_key(passphrase: str, salt: bytes, log2_n: int) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise InvalidArgumentError(f"the passphrase must have at least {MIN_PASSPHRASE} characters")
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=8, p=1).derive(passphrase.encode())


def check_name(name: str, what: str = "identity") -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidArgumentError(
            f"invalid {what} name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


class Registry:
    def __init__(
        self, store: Store, vault: Vault | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.vault: Vault = vault if vault is not None else SqliteVault(store)
        self._clock = clock

    def now(self) -> int:
        return int(self._clock())

    # --- identities ---------------------------------------------------------------------

    def create_identity(self, name: str) -> LocalIdentity:
        check_name(name)
        now = self.now()
        with self.store.transaction():
            if self.store.query_one("SELECT 1 FROM local_identities WHERE name = ?", (name,)):
                raise AlreadyExistsError(f"an identity named {name!r} already exists")
            identity, key_id = ident.create(self.vault, now)
            self.store.execute(
                "INSERT INTO identities (identifier, history, updated_at) VALUES (?, ?, ?)",
                (identity.identifier, identity.history, now),
            )
            self.store.execute(
                "INSERT INTO local_identities (name, identifier, primary_key_id, created_at) "
                "VALUES (?, ?, ?, ?)",
                (name, identity.identifier, key_id, now),
            )
            self._new_purpose_key(identity, key_id, Purpose.SECURE_CHANNEL, now)
        return LocalIdentity(name, identity, key_id, now)

    def _new_purpose_key(
        self, identity: Identity, primary_key_id: str, purpose: Purpose, now: int
    ) -> tuple[str, Attestation]:
        key_type = KeyType.X25519 if purpose is Purpose.SECURE_CHANNEL else KeyType.ED25519
        key_id = self.vault.generate(key_type)
        att = ident.attest(
            self.vault,
            identity,
            primary_key_id,
            purpose,
            self.vault.public_key(key_id),
            now,
            now + PURPOSE_KEY_TTL,
        )
        old = self.store.query_one(
            "SELECT key_id FROM purpose_keys WHERE identifier = ? AND purpose = ?",
            (identity.identifier, int(purpose)),
        )
        self.store.execute(
            "INSERT OR REPLACE INTO purpose_keys (identifier, purpose, key_id, attestation) "
            "VALUES (?, ?, ?, ?)",
            (identity.identifier, int(purpose), key_id, att.encode()),
        )
        if old is not None:
            self.vault.delete(old[0])
        return key_id, att

    def _row_to_local(self, row: tuple[Any, ...]) -> LocalIdentity:
        name, history, key_id, created_at = row
        return LocalIdentity(
            str(name), ident.verify_history(bytes(history)), str(key_id), int(created_at)
        )

    def get(self, name: str) -> LocalIdentity:
        row = self.store.query_one(
            "SELECT l.name, i.history, l.primary_key_id, l.created_at FROM local_identities l "
            "JOIN identities i USING (identifier) WHERE l.name = ?",
            (name,),
        )
        if row is None:
            raise NotFoundError(
                f"no identity named {name!r}; `tether identity list` shows the ones there are"
            )
        return self._row_to_local(row)

    def list_identities(self) -> list[LocalIdentity]:
        rows = self.store.query(
            "SELECT l.name, i.history, l.primary_key_id, l.created_at FROM local_identities l "
            "JOIN identities i USING (identifier) ORDER BY l.name"
        )
        return [self._row_to_local(r) for r in rows]

    def rotate(self, name: str) -> LocalIdentity:
        """New primary key, same identifier; purpose keys are re-attested by the new key."""
        now = self.now()
        with self.store.transaction():
            local = self.get(name)
            identity, key_id = ident.rotate(self.vault, local.identity, local.primary_key_id, now)
            for purpose_value, pk_id, att_bytes in self.store.query(
                "SELECT purpose, key_id, attestation FROM purpose_keys WHERE identifier = ?",
                (identity.identifier,),
            ):
                old = Attestation.decode(bytes(att_bytes))
                att = ident.attest(
                    self.vault,
                    identity,
                    key_id,
                    Purpose(purpose_value),
                    old.public_key,
                    now,
                    max(old.expires_at, now + 1),
                )
                self.store.execute(
                    "UPDATE purpose_keys SET attestation = ? WHERE identifier = ? AND purpose = ?",
                    (att.encode(), identity.identifier, purpose_value),
                )
                del pk_id
            self.store.execute(
                "UPDATE identities SET history = ?, updated_at = ? WHERE identifier = ?",
                (identity.history, now, identity.identifier),
            )
            self.store.execute(
                "UPDATE local_identities SET primary_key_id = ? WHERE name = ?", (key_id, name)
            )
            self.vault.delete(local.primary_key_id)
        return LocalIdentity(name, identity, key_id, local.created_at)

    def export_secret(self, name: str, passphrase: str) -> str:
        """The identity ``name`` with its primary private key, encrypted under ``passphrase``
        (scrypt, then ChaCha20-Poly1305): for running the same identity on another machine, such
        as a second instance of an authority. Its purpose keys are not exported; the importing
        side makes its own, attested by the primary key."""
        local = self.get(name)
        secret = self.vault.export_secret(local.primary_key_id)
        w = Writer()
        w.var(local.identity.history, SECRET_EXPORT_MAX_HISTORY)
        w.var(secret.reveal(), 32)
        salt, nonce = os.urandom(16), os.urandom(12)
        key = _export_key(passphrase, salt, SCRYPT_LOG2_N)
        sealed = ChaCha20Poly1305(key).encrypt(nonce, w.getvalue(), _EXPORT_AAD)
        body = bytes([1, SCRYPT_LOG2_N]) + salt + nonce + sealed
        return SECRET_EXPORT_PREFIX + to_base64url(body)

    def import_secret(self, name: str, text: str, passphrase: str) -> LocalIdentity:
        """Make an exported identity a local identity here, named ``name``."""
        check_name(name)
        text = text.strip()
        if not text.startswith(SECRET_EXPORT_PREFIX):
            raise InvalidArgumentError(
                f"not an identity export: it starts with {SECRET_EXPORT_PREFIX!r} "
                "(`tether identity export-secret NAME` writes one)"
            )
        body_text = text[len(SECRET_EXPORT_PREFIX) :]
        if len(body_text) > 4 * SECRET_EXPORT_MAX_HISTORY:
            raise InvalidArgumentError("the identity export is damaged")
        try:
            body = from_base64url(body_text)
        except ValueError:
            raise InvalidArgumentError("the identity export is damaged") from None
        if len(body) < 2 + 16 + 12 + 16 or body[0] != 1:
            raise InvalidArgumentError("the identity export is damaged or of another version")
        log2_n, salt, nonce, sealed = body[1], body[2:18], body[18:30], body[30:]
        if not 14 <= log2_n <= 20:
            raise InvalidArgumentError("the identity export has implausible scrypt parameters")
        try:
            plain = ChaCha20Poly1305(_export_key(passphrase, salt, log2_n)).decrypt(
                nonce, sealed, _EXPORT_AAD
            )
        except InvalidTag:
            raise InvalidArgumentError(
                "cannot open the identity export: wrong passphrase, or the file is damaged"
            ) from None
        r = Reader(plain, "identity export", len(plain))
        history = r.var(SECRET_EXPORT_MAX_HISTORY, "history")
        secret = SecretBytes(r.var(32, "private key"))
        r.end()
        identity = ident.verify_history(history)
        now = self.now()
        with self.store.transaction():
            if self.store.query_one("SELECT 1 FROM local_identities WHERE name = ?", (name,)):
                raise AlreadyExistsError(f"an identity named {name!r} already exists")
            if self.store.query_one(
                "SELECT 1 FROM local_identities WHERE identifier = ?", (identity.identifier,)
            ):
                raise AlreadyExistsError(f"{identity.identifier} is already a local identity here")
            key_id = self.vault.import_key(KeyType.ED25519, secret)
            if self.vault.public_key(key_id) != identity.primary_key:
                raise IdentityError(
                    "the exported private key is not the identity's current primary key (the "
                    "identity was rotated after the export): export it again"
                )
            self.import_identity(identity.history)
            self.store.execute(
                "INSERT INTO local_identities (name, identifier, primary_key_id, created_at) "
                "VALUES (?, ?, ?, ?)",
                (name, identity.identifier, key_id, now),
            )
            self._new_purpose_key(identity, key_id, Purpose.SECURE_CHANNEL, now)
        return LocalIdentity(name, identity, key_id, now)

    def delete(self, name: str) -> str:
        """Delete an identity and its keys; returns its identifier."""
        with self.store.transaction():
            local = self.get(name)
            keys = [local.primary_key_id] + [
                str(r[0])
                for r in self.store.query(
                    "SELECT key_id FROM purpose_keys WHERE identifier = ?", (local.identifier,)
                )
            ]
            self.store.execute("DELETE FROM purpose_keys WHERE identifier = ?", (local.identifier,))
            self.store.execute("DELETE FROM local_identities WHERE name = ?", (name,))
            self.store.execute("DELETE FROM identities WHERE identifier = ?", (local.identifier,))
            for k in keys:
                self.vault.delete(k)
        return local.identifier

    def known_identity(self, identifier: str) -> Identity | None:
        row = self.store.query_one(
            "SELECT history FROM identities WHERE identifier = ?", (identifier,)
        )
        return None if row is None else ident.verify_history(bytes(row[0]))

    def import_identity(self, history: bytes) -> Identity:
        """Remember another party's identity (its verified history). A known identity is only
        replaced by a history that extends it (no downgrade, no fork)."""
        identity = ident.verify_history(history)
        with self.store.transaction():
            known = self.known_identity(identity.identifier)
            if known is not None:
                known.check_update(identity)
            self.store.execute(
                "INSERT OR REPLACE INTO identities (identifier, history, updated_at) "
                "VALUES (?, ?, ?)",
                (identity.identifier, identity.history, self.now()),
            )
        return identity

    # --- purpose keys -------------------------------------------------------------------

    def purpose_attestation(self, identifier: str, purpose: Purpose) -> Attestation | None:
        row = self.store.query_one(
            "SELECT attestation FROM purpose_keys WHERE identifier = ? AND purpose = ?",
            (identifier, int(purpose)),
        )
        return None if row is None else Attestation.decode(bytes(row[0]))

    def channel_key(self, name: str) -> tuple[SecretBytes, Attestation]:
        """The identity's secure-channel static key (for the Noise core) and its attestation."""
        local = self.get(name)
        row = self.store.query_one(
            "SELECT key_id, attestation FROM purpose_keys WHERE identifier = ? AND purpose = ?",
            (local.identifier, int(Purpose.SECURE_CHANNEL)),
        )
        if row is None:
            raise NotFoundError(f"{name} has no secure-channel key")
        return self.vault.noise_static_key(str(row[0])), Attestation.decode(bytes(row[1]))

    def channel_identity(
        self, name: str, credentials: Sequence[Credential] = ()
    ) -> ChannelIdentity:
        """What the identity presents in secure-channel handshakes."""
        secret, att = self.channel_key(name)
        return ChannelIdentity(self.get(name).identity, secret, att, tuple(credentials))

    def credential_signer(self, name: str) -> tuple[str, Attestation]:
        """The identity's credential-signing key (made on first use, renewed when its
        attestation has under a day left)."""
        now = self.now()
        with self.store.transaction():
            local = self.get(name)
            row = self.store.query_one(
                "SELECT key_id, attestation FROM purpose_keys WHERE identifier = ? AND purpose = ?",
                (local.identifier, int(Purpose.CREDENTIAL_SIGNING)),
            )
            if row is not None:
                att = Attestation.decode(bytes(row[1]))
                if att.expires_at - now > 24 * 3600:
                    return str(row[0]), att
            return self._new_purpose_key(
                local.identity, local.primary_key_id, Purpose.CREDENTIAL_SIGNING, now
            )

    # --- credentials --------------------------------------------------------------------

    def issue_credential(
        self, issuer_name: str, subject: str, attributes: Mapping[str, str], ttl: int
    ) -> Credential:
        now = self.now()
        with self.store.transaction():
            key_id, att = self.credential_signer(issuer_name)
            c = cred.issue(self.vault, key_id, att, subject, attributes, now=now, ttl=ttl)
            self.store_credential(c)
        return c

    def store_credential(self, c: Credential) -> None:
        self.store.execute(
            "INSERT OR REPLACE INTO credentials "
            "(credential_id, subject, issuer, data, expires_at, stored_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (c.id, c.subject, c.issuer, c.encode(), c.expires_at, self.now()),
        )

    def revoke(self, issuer_name: str, credential_id: str) -> RevocationList:
        """Add a credential to the issuer's revocation list and re-sign the list."""
        now = self.now()
        with self.store.transaction():
            local = self.get(issuer_name)
            key_id, att = self.credential_signer(issuer_name)
            self.store.execute(
                "INSERT OR IGNORE INTO revoked (issuer, credential_id, revoked_at) "
                "VALUES (?, ?, ?)",
                (local.identifier, credential_id, now),
            )
            ids = [
                str(r[0])
                for r in self.store.query(
                    "SELECT credential_id FROM revoked WHERE issuer = ?", (local.identifier,)
                )
            ]
            row = self.store.query_one(
                "SELECT sequence FROM revocation_lists WHERE issuer = ?", (local.identifier,)
            )
            sequence = 1 if row is None else int(row[0]) + 1
            rl = cred.sign_revocations(self.vault, key_id, att, ids, sequence=sequence, now=now)
            self._store_revocations(rl)
        return rl

    def _store_revocations(self, rl: RevocationList) -> None:
        self.store.execute(
            "INSERT OR REPLACE INTO revocation_lists (issuer, sequence, data) VALUES (?, ?, ?)",
            (rl.issuer, rl.sequence, rl.encode()),
        )

    def import_revocations(self, data: bytes) -> RevocationList:
        """Accept an issuer's signed revocation list (newer than the one held)."""
        rl = RevocationList.decode(data)
        issuer = self.known_identity(rl.issuer)
        if issuer is None:
            raise UntrustedIssuerError(
                f"revocation list from unknown issuer {rl.issuer}; import its identity first"
            )
        cred.verify_revocations(rl, issuer, now=self.now())
        with self.store.transaction():
            held = self.revocations(rl.issuer)
            if held is not None and held.sequence >= rl.sequence:
                raise InvalidArgumentError(
                    f"revocation list #{rl.sequence} is not newer than the held #{held.sequence}"
                )
            self._store_revocations(rl)
        return rl

    def revocations(self, issuer: str) -> RevocationList | None:
        row = self.store.query_one("SELECT data FROM revocation_lists WHERE issuer = ?", (issuer,))
        return None if row is None else RevocationList.decode(bytes(row[0]))

    def verify_credential(
        self, data: bytes, *, issuer: str, subject: str | None = None
    ) -> Credential:
        """Verify with ``issuer`` as the one trusted authority (its identity must be known here)
        and consult the issuer's revocation list held here."""
        authority = self.known_identity(issuer)
        authorities = {} if authority is None else {issuer: authority}
        c = Credential.decode(data)
        if authority is None and c.issuer == issuer:
            raise UntrustedIssuerError(
                f"the issuer {issuer} is not known here: import its identity "
                "(`tether identity import`) to trust it"
            )
        rl = self.revocations(c.issuer)
        revocations = {} if rl is None else {c.issuer: rl}
        return cred.verify(
            c,
            authorities=authorities,
            now=self.now(),
            issuer=issuer,
            subject=subject,
            revocations=revocations,
        )
