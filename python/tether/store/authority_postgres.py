"""The PostgreSQL backend of an authority's shared state (:mod:`tether.store.authority`, where the
contract, its operations and the failure rules are): connections (reopened once when broken),
retries only when safe, the schema, and database passwords kept out of every message and repr.
"""

from __future__ import annotations

import contextlib
import re
import threading
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tether.core.errors import InvalidArgumentError, StateError

if TYPE_CHECKING:
    import psycopg


from tether.store.authority import DatabaseError, Row, SharedBase, Transaction

T = TypeVar("T")

PG_SCHEMA_VERSION = 1
#: Serialises schema creation between processes starting at once (CREATE TABLE IF NOT EXISTS
#: alone can fail with a duplicate-key error when two sessions race). Any fixed 64-bit value.
PG_SCHEMA_LOCK = 0x7465_7468_6572_0001  # "tether" 0001

PG_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS authority_schema (
        component TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS authority_members (
        authority TEXT NOT NULL,
        identifier TEXT NOT NULL,
        attributes TEXT NOT NULL,
        added_by TEXT,
        added_at BIGINT NOT NULL,
        PRIMARY KEY (authority, identifier)
    )""",
    """CREATE TABLE IF NOT EXISTS authority_tickets (
        authority TEXT NOT NULL,
        hash BYTEA NOT NULL,
        attributes TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        remaining INTEGER NOT NULL CHECK (remaining >= 0),
        created_by TEXT,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (authority, hash)
    )""",
    """CREATE TABLE IF NOT EXISTS authority_credentials_issued (
        authority TEXT NOT NULL,
        credential_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        issued_at BIGINT NOT NULL,
        revoked_at BIGINT,
        PRIMARY KEY (authority, credential_id)
    )""",
    """CREATE INDEX IF NOT EXISTS authority_credentials_issued_by_subject
        ON authority_credentials_issued (authority, subject)""",
]

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^@/?#]*)@")
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)([^&#]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) replaced by
    ``***``, for messages and reprs."""

    def userinfo(m: re.Match[str]) -> str:
        user, colon, _ = m.group(2).partition(":")
        return f"{m.group(1)}{user}{':***' if colon else ''}@"

    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(userinfo, url, count=1))


def _url_secrets(url: str) -> list[str]:
    """Every form in which the URL's passwords could appear in a message."""
    found: list[str] = []
    m = _USERINFO.match(url)
    if m and ":" in m.group(2):
        found.append(m.group(2).partition(":")[2])
    found += [q.group(2) for q in _QUERY_PASSWORD.finditer(url)]
    out: set[str] = set()
    for s in found:
        if s:
            out.add(s)
            out.add(urllib.parse.unquote(s))
    return sorted(out, key=len, reverse=True)


class PostgresShared(SharedBase):
    """The shared state in a PostgreSQL database (tables ``authority_*``, created when missing).
    One connection, reopened when it breaks; calls from several threads take turns on it."""

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise DatabaseError(
                "PostgreSQL support needs psycopg 3: pip install 'tether[postgres]'"
            ) from None
        self._url = url
        self._masked = mask_url(url)
        self._secrets = _url_secrets(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as e:
            raise InvalidArgumentError(
                f"not a valid PostgreSQL URL: {self._scrub(e)} (the form is "
                "postgresql://user:password@host:port/database)"
            ) from None
        self._secrets = sorted(
            {
                *self._secrets,
                *(str(params[k]) for k in ("password", "sslpassword") if params.get(k)),
            },
            key=len,
            reverse=True,
        )
        host = str(params.get("host") or params.get("hostaddr") or "the local socket")
        self._where = (
            f"database {params.get('dbname') or '(default)'} at {host} port "
            f"{params.get('port') or 5432}"
        )
        self._options: dict[str, Any] = {"autocommit": False}
        if "connect_timeout" not in params:
            self._options["connect_timeout"] = connect_timeout
        if "application_name" not in params:
            self._options["application_name"] = "tether-authority"
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._closed = False
        with self._lock:
            try:
                self._create_schema()
            except BaseException:
                self._drop()
                raise

    def __repr__(self) -> str:
        return f"PostgresShared({self._masked!r})"

    def _scrub(self, e: BaseException | str) -> str:
        text = " ".join(str(e).split())  # libpq's messages span lines
        text = text.replace(self._url, self._masked)
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    # --- connection and transactions ----------------------------------------------------

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        import psycopg

        if self._closed:
            raise StateError("the shared store is closed")
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken):
            return conn
        self._drop()
        try:
            self._conn = psycopg.connect(self._url, **self._options)
        except psycopg.Error as e:
            raise DatabaseError(f"cannot connect to the {self._where}: {self._scrub(e)}") from None
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # A broken connection may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self, what: str, fn: Callable[[_Attempt], T], *, idempotent: bool) -> T:
        """Run ``fn`` in one transaction (call with the lock held). A broken connection is
        reopened and ``fn`` retried once if that cannot do anything twice."""
        import psycopg

        for attempt in (1, 2):
            conn = self._connection()
            a = _Attempt(conn)
            try:
                # BEGIN goes out (and comes back) on entering: a connection that died while
                # idle fails here, before anything was written.
                with conn.transaction():
                    return fn(a)
            except psycopg.Error as e:
                if not (conn.closed or conn.broken):
                    raise DatabaseError(
                        f"the {self._where} refused to {what}: {self._scrub(e)}"
                    ) from None
                self._drop()
                if attempt == 1 and (idempotent or not a.wrote):
                    continue
                if a.wrote:
                    raise DatabaseError(
                        f"the connection to the {self._where} failed while trying to {what}; "
                        f"whether it took effect is unknown ({self._scrub(e)})"
                    ) from None
                raise DatabaseError(
                    f"the connection to the {self._where} failed: {self._scrub(e)}"
                ) from None
        raise AssertionError("unreachable")

    def _create_schema(self) -> None:
        def version(a: _Attempt) -> int | None:
            row = a.read_one("SELECT to_regclass('authority_schema') IS NOT NULL")
            if not (row and row[0]):
                return None
            row = a.read_one("SELECT version FROM authority_schema WHERE component = 'authority'")
            return None if row is None else int(row[0])

        def create(a: _Attempt) -> int | None:
            a.write("SELECT pg_advisory_xact_lock(?)", (PG_SCHEMA_LOCK,))
            for statement in PG_SCHEMA:
                a.write(statement)
            a.write(
                "INSERT INTO authority_schema (component, version) VALUES ('authority', ?) "
                "ON CONFLICT (component) DO NOTHING",
                (PG_SCHEMA_VERSION,),
            )
            return version(a)

        # Looking first lets a role without CREATE rights use tables another role made.
        found = self._run("read the authority schema version", version, idempotent=True)
        if found is None or found < PG_SCHEMA_VERSION:
            found = self._run("create the authority tables", create, idempotent=True)
        if found is not None and found > PG_SCHEMA_VERSION:
            raise DatabaseError(
                f"the {self._where} has authority schema version {found}, newer than this "
                f"tether ({PG_SCHEMA_VERSION}); upgrade tether"
            )

    # --- the backend's transactions ------------------------------------------------------

    _BY_CODE_POINT = ' COLLATE "C"'  # whatever the database's locale

    def _read(self, what: str, fn: Callable[[Transaction], T]) -> T:
        with self._lock:
            return self._run(what, fn, idempotent=True)

    def _write(self, what: str, fn: Callable[[Transaction], T]) -> T:
        with self._lock:
            return self._run(what, fn, idempotent=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()


def _pg(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (the SQL here has no other ``?`` or ``%``)."""
    return sql.replace("?", "%s")


class _Attempt:
    """One try at a transaction (:class:`~tether.store.authority.Transaction` on PostgreSQL):
    remembers whether a write was sent (then a broken connection leaves the outcome unknown, and the
    call is not retried)."""

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.conn = conn
        self.wrote = False

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        return self.conn.execute(_pg(sql), params).fetchall()

    def read_one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        return self.conn.execute(_pg(sql), params).fetchone()

    def write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        self.wrote = True
        return self.conn.execute(_pg(sql), params).rowcount

    def update_returning(
        self, table: str, assignments: str, where: str, params: tuple[Any, ...], key: str
    ) -> list[Row]:
        self.wrote = True
        sql = f"UPDATE {table} SET {assignments} WHERE {where} RETURNING {key}"  # noqa: S608
        return self.conn.execute(_pg(sql), params).fetchall()


# --- choosing a backend ----------------------------------------------------------------------
