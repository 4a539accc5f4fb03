"""The node's state store: one directory (``$TETHER_HOME``, default ``~/.tether``) holding an
embedded SQLite database with identities, secrets (through the vault), credentials, revocation
lists, and later policies and services.

* The directory is created 0700 and the database 0600 (SQLite gives its ``-wal``/``-shm`` files
  the database's mode).
* WAL journal, ``synchronous=FULL``: a committed transaction survives a crash, and one cut short
  by SIGKILL or power loss leaves no trace — every multi-row change (an identity and its keys, a
  rotation) is one transaction.
* Concurrent processes on one home serialise their writes (``BEGIN IMMEDIATE`` with a busy
  timeout) instead of failing or corrupting it.
* Schema versions with migrations (``PRAGMA user_version``): opening an older store upgrades it
  in one transaction; opening a store from a newer tether is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tether.core.errors import StoreError

DB_NAME = "state.sqlite3"

#: Migrations: entry i upgrades schema version i to i + 1.
MIGRATIONS: list[str] = [
    # 0 -> 1: identities, secrets, credentials, revocations.
    """
    CREATE TABLE secrets (
        key_id TEXT PRIMARY KEY,
        key_type TEXT NOT NULL,
        secret BLOB NOT NULL,
        public BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE identities (
        identifier TEXT PRIMARY KEY,
        history BLOB NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE local_identities (
        name TEXT PRIMARY KEY,
        identifier TEXT NOT NULL UNIQUE REFERENCES identities(identifier),
        primary_key_id TEXT NOT NULL REFERENCES secrets(key_id),
        created_at INTEGER NOT NULL
    );
    CREATE TABLE purpose_keys (
        identifier TEXT NOT NULL REFERENCES identities(identifier),
        purpose INTEGER NOT NULL,
        key_id TEXT NOT NULL REFERENCES secrets(key_id),
        attestation BLOB NOT NULL,
        PRIMARY KEY (identifier, purpose)
    );
    CREATE TABLE credentials (
        credential_id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        issuer TEXT NOT NULL,
        data BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        stored_at INTEGER NOT NULL
    );
    CREATE INDEX credentials_by_subject ON credentials(subject);
    CREATE TABLE revoked (
        issuer TEXT NOT NULL,
        credential_id TEXT NOT NULL,
        revoked_at INTEGER NOT NULL,
        PRIMARY KEY (issuer, credential_id)
    );
    CREATE TABLE revocation_lists (
        issuer TEXT PRIMARY KEY,
        sequence INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    """,
    # 1 -> 2: nodes and their configuration (listeners, services) as JSON.
    """
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    """,
    # 2 -> 3: relay names and the identities that own them, per relay node.
    """
    CREATE TABLE relay_owners (
        node TEXT NOT NULL,
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        PRIMARY KEY (node, name)
    );
    """,
    # 3 -> 4: an authority's shared state (tether.store.authority.SqliteShared), namespaced by the
    # authority's identifier: members, tickets (only the secret's hash), credentials issued.
    """
    CREATE TABLE authority_members (
        authority TEXT NOT NULL,
        identifier TEXT NOT NULL,
        attributes TEXT NOT NULL,
        added_by TEXT,
        added_at INTEGER NOT NULL,
        PRIMARY KEY (authority, identifier)
    );
    CREATE TABLE authority_tickets (
        authority TEXT NOT NULL,
        hash BLOB NOT NULL,
        attributes TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        remaining INTEGER NOT NULL CHECK (remaining >= 0),
        created_by TEXT,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (authority, hash)
    );
    CREATE TABLE authority_credentials_issued (
        authority TEXT NOT NULL,
        credential_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        issued_at INTEGER NOT NULL,
        revoked_at INTEGER,
        PRIMARY KEY (authority, credential_id)
    );
    CREATE INDEX authority_credentials_issued_by_subject
        ON authority_credentials_issued(authority, subject);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def default_home() -> Path:
    env = os.environ.get("TETHER_HOME")
    return Path(env).expanduser().absolute() if env else Path.home() / ".tether"


class Store:
    """An open state store. Use as a context manager, or call :meth:`close`."""

    def __init__(self, home: Path | str | None = None, *, busy_timeout: float = 30.0) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.path = self.home / DB_NAME
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.home, 0o700)
            if not self.path.exists():
                # Create the file 0600 before SQLite opens it (its -wal/-shm follow its mode).
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
        except FileExistsError:
            pass
        except OSError as e:
            raise StoreError(
                f"cannot create the tether home {self.home}: {e.strerror}; set TETHER_HOME to a "
                "writable directory"
            ) from None
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._enable_wal(busy_timeout)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open the state store {self.path}: {e}") from None

    def _enable_wal(self, timeout: float) -> None:
        """Switch a new database to WAL. Several processes opening a new home at once race for
        the exclusive lock this needs, and SQLite answers "locked" at once rather than wait
        (waiting could deadlock), so retry until the mode is WAL or the timeout passes."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() == "wal":
                    return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{self.path} stayed locked for {timeout:g} s while switching "
                    "to WAL; is another process holding it?"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _migrate(self) -> None:
        with self.transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this tether "
                    f"({SCHEMA_VERSION}); upgrade tether"
                )
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {v + 1}")

    @property
    def schema_version(self) -> int:
        v: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        return v

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work (nested calls join the outer transaction)."""
        with self._lock:
            if self._depth == 0:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a write; returns the number of rows changed."""
        with self._lock:
            try:
                return self._db.execute(sql, params).rowcount
            except sqlite3.IntegrityError as e:
                raise StoreError(f"the store refused the change: {e}") from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._db.execute(sql, params).fetchone()
            return row

    def integrity_check(self) -> str:
        row = self.query_one("PRAGMA integrity_check")
        return str(row[0]) if row else "no answer"

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.home)!r}, schema={SCHEMA_VERSION})"
