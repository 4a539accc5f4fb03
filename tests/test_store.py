"""The node's state store (``tether.store.local``) and the registry kept in it
(``tether.identity.registry``).

* Files: the home is 0700 and the database (with its ``-wal``/``-shm``) 0600 even under an open
  umask; reopening; schema versions and migrations (a newer store is refused untouched, a failed
  migration leaves nothing behind).
* The registry across reopen: identities, rotation, deletion, and the errors for duplicate,
  unknown and invalid names. No secret shows up in any repr or error message.
* Crash safety: worker processes (``tests/store_worker.py``) churn one home and are SIGKILLed at
  random moments; afterwards the store must pass ``PRAGMA integrity_check`` and every invariant
  the registry relies on (each identity complete and verifiable, every credential verifiable, no
  orphan secret).
* Concurrency: processes started at the same moment on one (not yet existing) home all succeed;
  two processes racing for one name get one success and one AlreadyExistsError.
"""

from __future__ import annotations

import base64
import os
import pickle
import random
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tether.core.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    StoreError,
    TetherError,
)
from tether.identity import credential as cred
from tether.identity import identity as ident
from tether.identity.identity import Attestation, Purpose
from tether.identity.registry import Registry
from tether.identity.vault import KeyType, SqliteVault
from tether.store.local import DB_NAME, SCHEMA_VERSION, Store

WORKER = Path(__file__).resolve().parent / "store_worker.py"
VERSION_1_TABLES = {
    "secrets",
    "identities",
    "local_identities",
    "purpose_keys",
    "credentials",
    "revoked",
    "revocation_lists",
}


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000: any private mode seen is then the store's doing, not the umask's."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secrets(store: Store) -> dict[str, tuple[str, bytes, bytes]]:
    return {
        str(k): (str(t), bytes(s), bytes(p))
        for k, t, s, p in store.query("SELECT key_id, key_type, secret, public FROM secrets")
    }


def _public_from_secret(key_type: str, secret: bytes) -> bytes:
    if key_type == KeyType.ED25519.value:
        return Ed25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
    assert key_type == KeyType.X25519.value, key_type
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def check_store(home: Path) -> dict[str, int]:
    """Open the store and check every invariant the registry relies on; returns row counts."""
    now = int(time.time())
    with Store(home) as store:
        assert store.integrity_check() == "ok"
        assert store.query("PRAGMA foreign_key_check") == []
        assert store.schema_version == SCHEMA_VERSION

        secrets = _secrets(store)
        for key_id, (key_type, secret, public) in secrets.items():
            assert _public_from_secret(key_type, secret) == public, key_id

        histories = {
            str(i): bytes(h) for i, h in store.query("SELECT identifier, history FROM identities")
        }
        identities = {}
        for identifier, history in histories.items():
            identity = ident.verify_history(history)  # every hash link and signature
            assert identity.identifier == identifier
            identities[identifier] = identity

        referenced: set[str] = set()
        locals_ = store.query("SELECT name, identifier, primary_key_id FROM local_identities")
        local_identifiers = set()
        for name, identifier, primary_key_id in locals_:
            assert identifier in identities, f"{name}: no identities row"
            identity = identities[identifier]
            local_identifiers.add(identifier)
            assert primary_key_id in secrets, f"{name}: primary secret missing"
            key_type, _, public = secrets[primary_key_id]
            assert key_type == KeyType.ED25519.value
            assert public == identity.primary_key, f"{name}: primary secret is not the current key"
            referenced.add(primary_key_id)

            purposes = {
                Purpose(p): (str(k), Attestation.decode(bytes(a)))
                for p, k, a in store.query(
                    "SELECT purpose, key_id, attestation FROM purpose_keys WHERE identifier = ?",
                    (identifier,),
                )
            }
            assert Purpose.SECURE_CHANNEL in purposes, f"{name}: no secure-channel key"
            for purpose, (key_id, att) in purposes.items():
                assert key_id in secrets, f"{name}: {purpose.name} secret missing"
                key_type, _, public = secrets[key_id]
                expected_type = (
                    KeyType.X25519 if purpose is Purpose.SECURE_CHANNEL else KeyType.ED25519
                )
                assert key_type == expected_type.value
                ident.verify_attestation(att, identity, purpose, at=now, public_key=public)
                referenced.add(key_id)

        orphan_purpose_keys = store.query(
            "SELECT identifier, purpose FROM purpose_keys WHERE identifier NOT IN "
            "(SELECT identifier FROM local_identities)"
        )
        assert orphan_purpose_keys == []
        orphans = set(secrets) - referenced
        assert not orphans, f"{len(orphans)} orphan secrets"

        credentials = store.query("SELECT credential_id, subject, issuer, data FROM credentials")
        for credential_id, subject, issuer, data in credentials:
            c = cred.Credential.decode(bytes(data))
            assert (c.id, c.subject, c.issuer) == (credential_id, subject, issuer)
            assert issuer in identities, f"credential {credential_id}: issuer unknown"
            cred.verify(c, authorities={issuer: identities[issuer]}, now=now, issuer=issuer)

        for issuer, sequence, data in store.query(
            "SELECT issuer, sequence, data FROM revocation_lists"
        ):
            rl = cred.verify_revocations(bytes(data), identities[issuer], now=now)
            assert rl.sequence == sequence >= 1
            revoked = {
                str(r[0])
                for r in store.query(
                    "SELECT credential_id FROM revoked WHERE issuer = ?", (issuer,)
                )
            }
            assert rl.revoked == revoked, "revoked rows and the signed list disagree"

        return {
            "local_identities": len(locals_),
            "secrets": len(secrets),
            "credentials": len(credentials),
            "revoked": len(store.query("SELECT 1 FROM revoked")),
        }


# --- files, schema, migrations -------------------------------------------------------------


def test_nested_home_from_env_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None
) -> None:
    home = tmp_path / "does" / "not" / "exist" / "yet"
    monkeypatch.setenv("TETHER_HOME", str(home))
    with Store() as store:
        assert store.home == home
        assert store.path == home / DB_NAME
        Registry(store).create_identity("alice")  # something written through the WAL
        assert _mode(home) == 0o700
        files = {p.name: _mode(p) for p in home.iterdir()}
        # In WAL mode the -wal and -shm files exist while a connection is open.
        assert set(files) == {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"}
        assert files == dict.fromkeys(files, 0o600)


def test_tilde_home_and_default_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TETHER_HOME", "~/nested/th")
    with Store() as store:
        assert store.home == tmp_path / "nested" / "th"
    assert _mode(tmp_path / "nested" / "th") == 0o700
    assert _mode(tmp_path / "nested" / "th" / DB_NAME) == 0o600

    monkeypatch.delenv("TETHER_HOME")
    with Store() as store:
        assert store.home == tmp_path / ".tether"
    assert _mode(tmp_path / ".tether") == 0o700


def test_existing_home_is_made_private(tmp_path: Path, open_umask: None) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    assert _mode(home) == 0o755
    with Store(home):
        pass
    assert _mode(home) == 0o700
    assert _mode(home / DB_NAME) == 0o600


def test_reopen_keeps_data_and_settings(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Store(home) as store:
        assert store.schema_version == SCHEMA_VERSION
        alice = Registry(store).create_identity("alice")
    with Store(home) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.query_one("PRAGMA journal_mode") == ("wal",)
        assert store.query_one("PRAGMA synchronous") == (2,)  # FULL
        assert store.query_one("PRAGMA foreign_keys") == (1,)
        assert Registry(store).get("alice") == alice
        assert store.integrity_check() == "ok"
    # The version is the file's, not just what the Store object reports.
    raw = sqlite3.connect(home / DB_NAME)
    try:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        raw.close()


def _raw(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path)
    try:
        for s in statements:
            db.execute(s)
        db.commit()
    finally:
        db.close()


def _tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        v: int = db.execute("PRAGMA user_version").fetchone()[0]
        return v
    finally:
        db.close()


def test_newer_store_is_refused_untouched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Store(home) as store:
        alice = Registry(store).create_identity("alice")
    newer = SCHEMA_VERSION + 1
    _raw(home / DB_NAME, f"PRAGMA user_version = {newer}")

    with pytest.raises(StoreError) as e:
        Store(home)
    message = str(e.value)
    assert re.search(rf"\b{newer}\b", message), message
    assert re.search(rf"\b{SCHEMA_VERSION}\b", message), message
    assert "upgrade" in message

    assert _user_version(home / DB_NAME) == newer
    db = sqlite3.connect(home / DB_NAME)
    try:
        assert db.execute("SELECT identifier FROM local_identities").fetchall() == [
            (alice.identifier,)
        ]
    finally:
        db.close()


@pytest.mark.parametrize("start", ["empty-file", "empty-database"])
def test_migration_from_version_0(tmp_path: Path, start: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    path = home / DB_NAME
    if start == "empty-file":
        path.touch()
    else:
        _raw(path, "PRAGMA user_version = 0", "CREATE TABLE unrelated (x)", "DROP TABLE unrelated")
    assert _user_version(path) == 0

    with Store(home) as store:
        assert store.schema_version == SCHEMA_VERSION
        # Every table the registry uses exists and works.
        r = Registry(store)
        r.create_identity("authority")
        b = r.create_identity("bob")
        c = r.issue_credential("authority", b.identifier, {"k": "v"}, ttl=60)
        r.revoke("authority", c.id)
        r.rotate("bob")
    assert _tables(path) >= VERSION_1_TABLES
    assert _user_version(path) == SCHEMA_VERSION
    check_store(home)


def test_failed_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    """Migration 0 -> 1 is one transaction: when its last statement fails, nothing remains."""
    home = tmp_path / "home"
    home.mkdir()
    path = home / DB_NAME
    _raw(path, "CREATE TABLE revocation_lists (unexpected TEXT)")
    assert _user_version(path) == 0

    with pytest.raises(StoreError):
        Store(home)
    assert _tables(path) == {"revocation_lists"}
    assert _user_version(path) == 0


# --- the registry, persisted -----------------------------------------------------------------


def test_identities_persist_across_reopen(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Store(home) as store:
        r = Registry(store)
        alice, bob = r.create_identity("alice"), r.create_identity("bob")
        _, alice_channel = r.channel_key("alice")
    assert alice.identifier != bob.identifier

    with Store(home) as store:
        r = Registry(store)
        assert [x.name for x in r.list_identities()] == ["alice", "bob"]
        assert r.get("alice") == alice
        assert r.get("bob") == bob
        assert r.known_identity(alice.identifier) == alice.identity
        sk, att = r.channel_key("alice")
        assert att == alice_channel
        public = X25519PrivateKey.from_private_bytes(sk.reveal()).public_key()
        assert public.public_bytes_raw() == att.public_key
        ident.verify_attestation(att, alice.identity, Purpose.SECURE_CHANNEL, at=int(time.time()))
    check_store(home)


def test_rotation_keeps_identifier_and_retires_old_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Store(home) as store:
        r = Registry(store)
        alice = r.create_identity("alice")
        r.credential_signer("alice")  # a second purpose key, re-attested on rotation too
        purpose_keys_before = store.query(
            "SELECT purpose, key_id FROM purpose_keys WHERE identifier = ? ORDER BY purpose",
            (alice.identifier,),
        )
        assert len(purpose_keys_before) == 2

    with Store(home) as store:
        rotated = Registry(store).rotate("alice")
    assert rotated.identifier == alice.identifier
    assert rotated.primary_key_id != alice.primary_key_id
    assert rotated.identity.primary_key != alice.identity.primary_key
    assert len(rotated.identity.changes) == 2
    alice.identity.check_update(rotated.identity)  # extends the old history

    with Store(home) as store:
        r = Registry(store)
        assert r.get("alice") == rotated
        secrets = _secrets(store)
        assert alice.primary_key_id not in secrets
        assert secrets[rotated.primary_key_id][2] == rotated.identity.primary_key
        # Same purpose keys, attested again by the new primary key.
        assert (
            store.query(
                "SELECT purpose, key_id FROM purpose_keys WHERE identifier = ? ORDER BY purpose",
                (alice.identifier,),
            )
            == purpose_keys_before
        )
        for purpose in Purpose:
            att = r.purpose_attestation(alice.identifier, purpose)
            assert att is not None
            assert att.signer_change == rotated.identity.latest_change_hash
            ident.verify_attestation(att, rotated.identity, purpose, at=int(time.time()))
        assert len(secrets) == 3
    check_store(home)


def test_delete_removes_identity_and_all_its_secrets(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Store(home) as store:
        r = Registry(store)
        alice, bob = r.create_identity("alice"), r.create_identity("bob")
        r.credential_signer("alice")
        r.rotate("alice")
        bob_keys = {bob.primary_key_id} | {
            str(k[0])
            for k in store.query(
                "SELECT key_id FROM purpose_keys WHERE identifier = ?", (bob.identifier,)
            )
        }
        assert len(_secrets(store)) == 3 + 2

    with Store(home) as store:
        assert Registry(store).delete("alice") == alice.identifier

    with Store(home) as store:
        r = Registry(store)
        with pytest.raises(NotFoundError):
            r.get("alice")
        assert [x.name for x in r.list_identities()] == ["bob"]
        assert r.known_identity(alice.identifier) is None
        assert set(_secrets(store)) == bob_keys
        for table in ("identities", "local_identities", "purpose_keys"):
            assert (
                store.query(f"SELECT 1 FROM {table} WHERE identifier = ?", (alice.identifier,))  # noqa: S608
                == []
            )
        again = r.create_identity("alice")  # the name is free again, for a new identity
        assert again.identifier != alice.identifier
    check_store(home)


def test_duplicate_name_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Store(home) as store:
        original = Registry(store).create_identity("alice")
    with Store(home) as store:
        r = Registry(store)
        before = _secrets(store)
        with pytest.raises(AlreadyExistsError, match="alice"):
            r.create_identity("alice")
        assert _secrets(store) == before
        assert r.get("alice") == original
        assert len(r.list_identities()) == 1
    check_store(home)


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.get("nobody"),
        lambda r: r.rotate("nobody"),
        lambda r: r.delete("nobody"),
        lambda r: r.channel_key("nobody"),
        lambda r: r.credential_signer("nobody"),
        lambda r: r.issue_credential("nobody", "I" + "00" * 20, {"a": "b"}, 60),
        lambda r: r.revoke("nobody", "00" * 16),
    ],
    ids=["get", "rotate", "delete", "channel_key", "credential_signer", "issue", "revoke"],
)
def test_unknown_name(tmp_path: Path, call: Callable[[Registry], Any]) -> None:
    home = tmp_path / "home"
    with Store(home) as store:
        r = Registry(store)
        r.create_identity("somebody")
        before = _secrets(store)
        with pytest.raises(NotFoundError, match="nobody") as e:
            call(r)
        assert isinstance(e.value, LookupError)
        assert _secrets(store) == before
        assert store.query("SELECT 1 FROM revoked") == []
        assert store.query("SELECT 1 FROM credentials") == []
    check_store(home)


INVALID_NAMES = [
    "",
    "-alice",
    ".alice",
    "_alice",
    "al ice",
    "alice/bob",
    "../alice",
    "alice\n",
    "\nalice",
    "ali\nce",
    "alice\0",
    "ålice",
    "alice\u0661",  # ARABIC-INDIC DIGIT ONE: a digit, but not an ASCII one
    "x" * 65,
]


@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_invalid_name_is_refused(tmp_path: Path, name: str) -> None:
    with Store(tmp_path / "home") as store:
        r = Registry(store)
        with pytest.raises(InvalidArgumentError):
            r.create_identity(name)
        assert r.list_identities() == []
        assert _secrets(store) == {}


@pytest.mark.parametrize("name", ["a", "7", "A.b_c-9", "x" * 64])
def test_valid_name_edge_cases(tmp_path: Path, name: str) -> None:
    with Store(tmp_path / "home") as store:
        assert Registry(store).create_identity(name).name == name


# --- no secret in any repr or message --------------------------------------------------------


def _leak_forms(secret: bytes) -> list[str]:
    """Text forms a secret could leak in: hex (every 8-byte window), base64, Python repr."""
    forms = [secret.hex(), secret.hex().upper(), repr(secret)[2:-1]]
    forms += [secret[i : i + 8].hex() for i in range(len(secret) - 7)]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms.append(encode(secret).decode().rstrip("="))
    return forms


def test_no_secret_in_reprs_or_error_messages(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store(home)
    try:
        r = Registry(store)
        alice, bob = r.create_identity("alice"), r.create_identity("bob")
        rotated = r.rotate("alice")
        signing_key_id, signing_att = r.credential_signer("alice")
        c = r.issue_credential("alice", bob.identifier, {"role": "admin"}, ttl=60)
        rl = r.revoke("alice", c.id)
        static_key, channel_att = r.channel_key("alice")
        x_key_id = str(
            store.query_one(
                "SELECT key_id FROM purpose_keys WHERE identifier = ? AND purpose = ?",
                (alice.identifier, int(Purpose.SECURE_CHANNEL)),
            )[0]  # type: ignore[index]
        )
        vault = r.vault
        assert isinstance(vault, SqliteVault)
        secrets = [s for _, s, _ in _secrets(store).values()]
        assert len(secrets) == 5
        assert static_key.reveal() in secrets

        objects: list[object] = [
            store,
            r,
            vault,
            alice,
            bob,
            rotated,
            rotated.identity,
            signing_att,
            channel_att,
            c,
            rl,
            static_key,
            r.list_identities(),
        ]
        texts = [f(o) for o in objects for f in (repr, str)]

        tampered = bytearray(c.encode())
        tampered[-1] ^= 1
        failing: list[Callable[[], object]] = [
            lambda: r.get("nobody"),
            lambda: r.create_identity("alice"),
            lambda: r.create_identity("bad name"),
            lambda: vault.sign(x_key_id, b"message"),
            lambda: vault.derive(rotated.primary_key_id, b"\x09" + bytes(31)),
            lambda: vault.derive(x_key_id, b"short"),
            lambda: vault.derive(x_key_id, bytes(32)),  # low-order point
            lambda: vault.noise_static_key(signing_key_id),
            lambda: vault.sign("Kenot-a-key", b"message"),
            lambda: ident.rotate(vault, rotated.identity, x_key_id, int(time.time())),
            lambda: ident.rotate(vault, alice.identity, rotated.primary_key_id, 0),
            lambda: r.verify_credential(bytes(tampered), issuer=alice.identifier),
            lambda: r.verify_credential(c.encode(), issuer=alice.identifier),  # revoked
            lambda: r.issue_credential("alice", "not an identifier", {}, ttl=60),
            lambda: store.execute(
                "INSERT INTO secrets (key_id, key_type, secret, public, created_at) "
                "SELECT key_id, key_type, secret, public, created_at FROM secrets"
            ),
            lambda: pickle.dumps(static_key),
        ]
        for call in failing:
            with pytest.raises((TetherError, TypeError)) as e:
                call()
            texts += [str(e.value), repr(e.value), repr(e.value.args)]

        for text in texts:
            raw = text.encode("utf-8", "surrogateescape")
            for secret in secrets:
                assert secret not in raw, text
                for form in _leak_forms(secret):
                    assert form not in text, text
    finally:
        store.close()


# --- crash safety ----------------------------------------------------------------------------

CHURN_WORKERS = 3
KILLS = 20


def _churn(home: Path, seed: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, str(WORKER), "churn", str(home), str(seed)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def test_sigkill_at_random_moments_leaves_a_consistent_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = tmp_path / "workers.log"
    with Store(home) as store:
        Registry(store).create_identity("authority")

    seed = random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    workers = [_churn(home, rng.randrange(1 << 32), log) for _ in range(CHURN_WORKERS)]
    try:
        for _ in range(KILLS):
            # Long enough for a new worker to import and start; random so kills land anywhere
            # (in a key generation, between statements of a transaction, in a commit's fsync).
            time.sleep(rng.uniform(0.15, 0.5))
            victim = rng.randrange(len(workers))
            worker = workers[victim]
            assert worker.poll() is None, (
                f"a worker exited by itself (status {worker.returncode}, seed {seed}):\n"
                + log.read_text(errors="replace")
            )
            worker.kill()  # SIGKILL: no cleanup, no rollback, no atexit
            assert worker.wait() == -9
            workers[victim] = _churn(home, rng.randrange(1 << 32), log)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()

    assert log.read_text(errors="replace") == ""
    counts = check_store(home)
    # The workers did real work between the kills (otherwise this test proves nothing).
    assert counts["local_identities"] >= 10, counts
    assert counts["credentials"] >= 5, counts

    # And the store is still fully usable.
    with Store(home) as store:
        r = Registry(store)
        r.rotate(r.create_identity("after-the-crashes").name)
        r.issue_credential("authority", r.get("after-the-crashes").identifier, {}, ttl=60)
    check_store(home)


# --- concurrency -----------------------------------------------------------------------------


def _start_creators(home: Path, name_lists: list[list[str]]) -> list[tuple[str, str]]:
    """Start one ``create`` worker per name list, release them at once, return their output
    (stdout after ``ready``, stderr); every worker must exit 0."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "create", str(home), *names],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for names in name_lists
    ]
    try:
        for p in procs:  # all imported and waiting
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert err == "", err
    return outputs


def test_concurrent_creators_on_a_new_home_all_succeed(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"  # the processes race to create it, too
    n, m = 6, 8
    name_lists = [[f"p{i}-{j}" for j in range(m)] for i in range(n)]
    outputs = _start_creators(home, name_lists)

    created = {}
    for names, (out, _) in zip(name_lists, outputs, strict=True):
        lines = out.splitlines()
        assert [line.split()[:2] for line in lines] == [["ok", name] for name in names], out
        created.update(line.split()[1:] for line in lines)
    assert len(created) == n * m
    assert len(set(created.values())) == n * m

    counts = check_store(home)
    assert counts["local_identities"] == n * m
    assert counts["secrets"] == 2 * n * m
    with Store(home) as store:
        listed = {x.name: x.identifier for x in Registry(store).list_identities()}
    assert listed == created


def test_simultaneous_first_open_of_new_homes(tmp_path: Path) -> None:
    """Several connections opening a home that does not exist yet, at the same moment (a node
    and CLI commands started together on a fresh machine), must all open it.

    Threads, one Store (one SQLite connection) each, released by a barrier: the same race as
    between processes, but cheap enough to repeat on many fresh homes."""
    homes, per_home = 200, 4
    failures: list[str] = []

    def open_store(home: Path, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            Store(home).close()
        except StoreError as e:
            failures.append(str(e))

    for k in range(homes):
        barrier = threading.Barrier(per_home)
        threads = [
            threading.Thread(target=open_store, args=(tmp_path / f"home{k}", barrier))
            for _ in range(per_home)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == [], f"{len(failures)} of {homes * per_home} opens failed: {failures[0]}"
    for k in range(homes):
        assert _user_version(tmp_path / f"home{k}" / DB_NAME) == SCHEMA_VERSION


def test_racing_for_one_name_one_wins(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for round_ in range(3):  # the first round also races to create the home
        name = f"contested-{round_}"
        outputs = _start_creators(home, [[name], [name]])
        results = sorted(out.split()[0::2] for out, _ in outputs)
        assert [r[0] for r in results] == ["error", "ok"], outputs
        assert results[0][1] == "AlreadyExistsError", outputs

        winner = next(out.split()[-1] for out, _ in outputs if "ok" in out.split())
        with Store(home) as store:
            assert Registry(store).get(name).identifier == winner
        counts = check_store(home)  # the loser left no half-made identity or orphan secret
        assert counts["local_identities"] == round_ + 1
        assert counts["secrets"] == 2 * (round_ + 1)
