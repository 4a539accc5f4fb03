"""The shared state of an authority: its member registry, its enrollment tickets, and the
credentials it issued (for revocation).

Several authority instances — the same identity, on different machines — may serve one project,
so this state lives in a database they share. Two backends keep one contract
(:class:`SharedStore`):

* :class:`SqliteShared`: the node's own SQLite store (:mod:`tether.store.local`, tables added by its
  migration 3 -> 4); enough for one authority instance, or several processes on one machine.
* :class:`~tether.store.authority_postgres.PostgresShared`: a PostgreSQL database (``postgresql://``
  URL, psycopg 3; the ``postgres`` extra), for instances on several machines.

One database can serve several authorities: every row carries the authority's identifier, and
every call names it.

**Tickets.** The store never sees a ticket's secret, only its hash (the caller hashes), with the
attributes a member enrolling with it gets, an expiry and the uses left. :meth:`use_ticket` is the
one operation that must be atomic across machines: a single conditional decrement
(``UPDATE ... SET remaining = remaining - 1 WHERE ... remaining > 0 AND expires_at > now``). Under
PostgreSQL's READ COMMITTED, concurrent updates of one row queue on its row lock and each
re-checks the condition on the row as the previous one left it, so a ticket with ``k`` uses
succeeds exactly ``k`` times whatever the number of racing processes. On SQLite the decrement
runs in a ``BEGIN IMMEDIATE`` transaction, which holds the database's write lock. A second read in
the same transaction gives the ticket's attributes, or, when no use happened, says why (unknown,
expired, or used up); an unknown ticket's error says nothing about the tickets that do exist.

Each operation (its arguments, SQL, results and refusals) is written once, in a base class; a
backend supplies only how a transaction runs and a few dialect details.

**Failures.** Every call is one transaction: it happens entirely or not at all. A PostgreSQL
connection that broke is reopened once. A call is retried on the new connection when that is safe:
reads always, writes only when the connection failed before the write was sent. A write whose
outcome is unknown (the connection failed after sending it) is never retried — retrying a ticket
use could spend a use twice — and raises :class:`DatabaseError` saying so.

**Secrets.** Database passwords never appear in errors, logs or reprs: URLs are shown with the
password masked, and database messages are scrubbed of it.

Times are integer Unix seconds, passed in by the caller (no clock in here). Calls are
synchronous; an async caller runs them in a worker thread. A store object may be shared by
threads: calls on it are serialised.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from tether.core.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    StateError,
    StoreError,
    TetherError,
)
from tether.store.local import Store

__all__ = [
    "DATABASE_URL_ENV",
    "DatabaseError",
    "Member",
    "SharedStore",
    "SqliteShared",
    "TicketError",
    "TicketExpiredError",
    "TicketInfo",
    "TicketUnknownError",
    "TicketUsedError",
]

#: The environment variable naming the shared database when no URL is given explicitly.
DATABASE_URL_ENV = "TETHER_DATABASE_URL"

MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY = 128  # bytes of UTF-8
MAX_ATTRIBUTE_VALUE = 1024  # bytes of UTF-8
MAX_IDENTIFIER = 64  # characters: authorities, members, credential ids, subjects, added_by...
MAX_TICKET_HASH = 64  # bytes
MAX_USAGE_COUNT = 2**31 - 1  # PostgreSQL INTEGER
MAX_TIME = 2**63 - 1  # PostgreSQL BIGINT

T = TypeVar("T")


# --- results and errors ----------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A member of an authority: an identity's identifier and its attributes."""

    identifier: str
    attributes: dict[str, str] = field(hash=False)
    added_by: str | None
    added_at: int


@dataclass(frozen=True)
class TicketInfo:
    """What a successful :meth:`SharedStore.use_ticket` returns: the ticket's attributes and
    what is left of it (``remaining`` counts the uses left after this one)."""

    attributes: dict[str, str] = field(hash=False)
    expires_at: int
    remaining: int
    created_by: str | None


class TicketError(TetherError):
    """A ticket cannot be used. Subclasses say why."""


class TicketUnknownError(TicketError):
    """No such ticket: forged, mistyped, or for another authority."""


class TicketExpiredError(TicketError):
    """The ticket expired before it was used."""


class TicketUsedError(TicketError):
    """The ticket was already used as many times as it allows."""


class DatabaseError(StoreError):
    """The shared database cannot be reached, its connection failed, or it refused a statement.
    The message names the database (host, port, name) but never its password."""


# --- the contract ----------------------------------------------------------------------------


@runtime_checkable
class SharedStore(Protocol):
    """An authority's shared state. See the module documentation."""

    def add_member(
        self,
        authority: str,
        identifier: str,
        attributes: Mapping[str, str],
        *,
        added_by: str | None,
        now: int,
    ) -> None:
        """Add a member, or replace an existing member's attributes (and who added it, when)."""
        ...

    def get_member(self, authority: str, identifier: str) -> Member | None: ...

    def list_members(self, authority: str) -> list[Member]:
        """All members, ordered by identifier (code point order)."""
        ...

    def delete_member(self, authority: str, identifier: str) -> bool:
        """Remove a member; False if it was not one. Its credentials stay valid: revoke them
        with :meth:`revoke_subject`."""
        ...

    def add_ticket(
        self,
        authority: str,
        ticket_hash: bytes,
        attributes: Mapping[str, str],
        *,
        expires_at: int,
        usage_count: int,
        created_by: str | None,
        now: int,
    ) -> None:
        """Store a new ticket (by the hash of its secret); AlreadyExistsError if that hash is
        already a ticket of this authority."""
        ...

    def use_ticket(self, authority: str, ticket_hash: bytes, *, now: int) -> TicketInfo:
        """Spend one use of a ticket, atomically. TicketUnknownError, TicketExpiredError
        (``now >= expires_at``) or TicketUsedError, and then nothing changed."""
        ...

    def record_credential(
        self, authority: str, credential_id: str, subject: str, *, expires_at: int, now: int
    ) -> None:
        """Remember an issued credential so that :meth:`revoke_subject` can revoke it."""
        ...

    def revoke_subject(self, authority: str, subject: str, *, now: int) -> list[str]:
        """Revoke every unexpired credential recorded for ``subject``; the ids newly revoked,
        sorted."""
        ...

    def revoked(self, authority: str, *, now: int) -> list[str]:
        """The ids of revoked credentials that have not expired yet, sorted."""
        ...

    def purge(self, authority: str, *, now: int) -> int:
        """Delete expired tickets and the records of expired credentials (a revoked one is
        kept until it expires, so the revocation list covers it); the number of rows deleted."""
        ...

    def close(self) -> None: ...


# --- arguments -------------------------------------------------------------------------------


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidArgumentError(f"{what} contains a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return value


def _name(value: object, what: str) -> str:
    s = _text(value, what)
    if not 0 < len(s) <= MAX_IDENTIFIER:
        raise InvalidArgumentError(f"{what} must be 1 to {MAX_IDENTIFIER} characters, not {len(s)}")
    return s


def _optional_name(value: object, what: str) -> str | None:
    return None if value is None else _name(value, what)


def _time(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be an integer (Unix seconds)")
    if not 0 <= value <= MAX_TIME:
        raise InvalidArgumentError(f"{what} is out of range: {value}")
    return value


def _hash(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgumentError("a ticket hash must be bytes")
    raw = bytes(value)
    if not 0 < len(raw) <= MAX_TICKET_HASH:
        raise InvalidArgumentError(
            f"a ticket hash must be 1 to {MAX_TICKET_HASH} bytes, not {len(raw)}"
        )
    return raw


def _attributes(value: object) -> str:
    """Check attributes and encode them as canonical JSON (sorted keys)."""
    if not isinstance(value, Mapping):
        raise InvalidArgumentError("attributes must be a mapping of strings to strings")
    if len(value) > MAX_ATTRIBUTES:
        raise InvalidArgumentError(f"{len(value)} attributes exceed the limit of {MAX_ATTRIBUTES}")
    checked: dict[str, str] = {}
    for k, v in value.items():
        key = _text(k, "an attribute name")
        if not 0 < len(key.encode()) <= MAX_ATTRIBUTE_KEY:
            raise InvalidArgumentError(
                f"an attribute name must be 1 to {MAX_ATTRIBUTE_KEY} bytes of UTF-8, "
                f"not {len(key.encode())}"
            )
        val = _text(v, f"attribute {key!r}")
        if len(val.encode()) > MAX_ATTRIBUTE_VALUE:
            raise InvalidArgumentError(
                f"attribute {key!r} is {len(val.encode())} bytes; the limit is "
                f"{MAX_ATTRIBUTE_VALUE}"
            )
        checked[key] = val
    return json.dumps(checked, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _decode_attributes(text: str) -> dict[str, str]:
    attrs: dict[str, str] = json.loads(text)
    return attrs


def _ticket_refusal(row: tuple[Any, ...] | None, now: int) -> TicketError:
    """Why a ticket could not be used, from its (remaining, expires_at) row or its absence."""
    if row is None:
        # The same words whatever exists (another authority's ticket, a hash prefix...).
        return TicketUnknownError("unknown ticket: this authority never issued it")
    remaining, expires_at = int(row[0]), int(row[1])
    if remaining <= 0:
        return TicketUsedError("the ticket was already used as many times as it allows")
    return TicketExpiredError(f"the ticket expired ({now - expires_at} s ago); ask for a new one")


def _member(row: tuple[Any, ...]) -> Member:
    return Member(
        identifier=row[0],
        attributes=_decode_attributes(row[1]),
        added_by=row[2],
        added_at=int(row[3]),
    )


def _ticket(row: tuple[Any, ...]) -> TicketInfo:
    return TicketInfo(
        attributes=_decode_attributes(row[0]),
        expires_at=int(row[1]),
        remaining=int(row[2]),
        created_by=row[3],
    )


# --- the contract, written once --------------------------------------------------------------

Row = tuple[Any, ...]


class Transaction(Protocol):
    """What a backend offers the operations inside one of its transactions. SQL is written with
    ``?`` placeholders (the PostgreSQL backend translates them)."""

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]: ...

    def read_one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None: ...

    def write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run a write; the number of rows it changed."""
        ...

    def update_returning(
        self, table: str, assignments: str, where: str, params: tuple[Any, ...], key: str
    ) -> list[Row]:
        """``UPDATE table SET assignments WHERE where`` (``params`` fill the assignments, then
        the condition); the ``key`` column (which the update must not change) of each row it
        changed."""
        ...


class SharedBase:
    """The operations of :class:`SharedStore` — arguments, SQL, results, refusals — on top of
    a backend's two ways of running a transaction (:meth:`_read`, :meth:`_write`)."""

    #: What makes ``ORDER BY`` sort text by code point (as Python does) on this backend.
    _BY_CODE_POINT = ""

    def _read(self, what: str, fn: Callable[[Transaction], T]) -> T:
        """Run ``fn`` (reads only) in one transaction; ``what`` names it for errors."""
        raise NotImplementedError

    def _write(self, what: str, fn: Callable[[Transaction], T]) -> T:
        """Run ``fn`` (which writes) in one transaction; ``what`` names it for errors."""
        raise NotImplementedError

    def add_member(
        self,
        authority: str,
        identifier: str,
        attributes: Mapping[str, str],
        *,
        added_by: str | None,
        now: int,
    ) -> None:
        params = (
            _name(authority, "the authority"),
            _name(identifier, "a member's identifier"),
            _attributes(attributes),
            _optional_name(added_by, "added_by"),
            _time(now, "now"),
        )
        self._write(
            "add a member",
            lambda tx: tx.write(
                "INSERT INTO authority_members (authority, identifier, attributes, added_by, "
                "added_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (authority, identifier) DO UPDATE "
                "SET attributes = excluded.attributes, added_by = excluded.added_by, "
                "added_at = excluded.added_at",
                params,
            ),
        )

    def get_member(self, authority: str, identifier: str) -> Member | None:
        params = (_name(authority, "the authority"), _name(identifier, "a member's identifier"))
        row = self._read(
            "read a member",
            lambda tx: tx.read_one(
                "SELECT identifier, attributes, added_by, added_at FROM authority_members "
                "WHERE authority = ? AND identifier = ?",
                params,
            ),
        )
        return None if row is None else _member(row)

    def list_members(self, authority: str) -> list[Member]:
        params = (_name(authority, "the authority"),)
        rows = self._read(
            "list members",
            lambda tx: tx.read(
                "SELECT identifier, attributes, added_by, added_at FROM authority_members "  # noqa: S608
                f"WHERE authority = ? ORDER BY identifier{self._BY_CODE_POINT}",
                params,
            ),
        )
        return [_member(r) for r in rows]

    def delete_member(self, authority: str, identifier: str) -> bool:
        params = (_name(authority, "the authority"), _name(identifier, "a member's identifier"))
        deleted = self._write(
            "delete a member",
            lambda tx: tx.write(
                "DELETE FROM authority_members WHERE authority = ? AND identifier = ?", params
            ),
        )
        return deleted > 0

    def add_ticket(
        self,
        authority: str,
        ticket_hash: bytes,
        attributes: Mapping[str, str],
        *,
        expires_at: int,
        usage_count: int,
        created_by: str | None,
        now: int,
    ) -> None:
        params = _ticket_params(
            authority, ticket_hash, attributes, expires_at, usage_count, created_by, now
        )
        added = self._write(
            "add a ticket",
            lambda tx: tx.write(
                "INSERT INTO authority_tickets (authority, hash, attributes, expires_at, "
                "remaining, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (authority, hash) DO NOTHING",
                params,
            ),
        )
        if not added:
            raise AlreadyExistsError("a ticket with this hash already exists")

    def use_ticket(self, authority: str, ticket_hash: bytes, *, now: int) -> TicketInfo:
        key = (_name(authority, "the authority"), _hash(ticket_hash))
        t = _time(now, "now")

        def use(tx: Transaction) -> TicketInfo | TicketError:
            # The conditional decrement is the atomic step (see the module documentation).
            used = tx.write(
                "UPDATE authority_tickets SET remaining = remaining - 1 "
                "WHERE authority = ? AND hash = ? AND remaining > 0 AND expires_at > ?",
                (*key, t),
            )
            # Read in the same transaction: after a use, the row is this transaction's (locked
            # until it ends); otherwise it says why nothing changed (the row may have moved on
            # since; that changes nothing).
            row = tx.read_one(
                "SELECT attributes, expires_at, remaining, created_by FROM authority_tickets "
                "WHERE authority = ? AND hash = ?",
                key,
            )
            if used and row is not None:
                return _ticket(row)
            return _ticket_refusal(None if row is None else (row[2], row[1]), t)

        result = self._write("use a ticket", use)
        if isinstance(result, TicketError):
            raise result
        return result

    def record_credential(
        self, authority: str, credential_id: str, subject: str, *, expires_at: int, now: int
    ) -> None:
        params = _credential_params(authority, credential_id, subject, expires_at, now)
        added = self._write(
            "record a credential",
            lambda tx: tx.write(
                "INSERT INTO authority_credentials_issued (authority, credential_id, subject, "
                "expires_at, issued_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (authority, credential_id) DO NOTHING",
                params,
            ),
        )
        if not added:
            raise AlreadyExistsError(f"credential {credential_id} is already recorded")

    def revoke_subject(self, authority: str, subject: str, *, now: int) -> list[str]:
        a, subj, t = (
            _name(authority, "the authority"),
            _name(subject, "the subject"),
            _time(now, "now"),
        )
        rows = self._write(
            "revoke credentials",
            lambda tx: tx.update_returning(
                "authority_credentials_issued",
                "revoked_at = ?",
                "authority = ? AND subject = ? AND expires_at > ? AND revoked_at IS NULL",
                (t, a, subj, t),
                "credential_id",
            ),
        )
        return sorted(r[0] for r in rows)

    def revoked(self, authority: str, *, now: int) -> list[str]:
        params = (_name(authority, "the authority"), _time(now, "now"))
        rows = self._read(
            "read revocations",
            lambda tx: tx.read(
                "SELECT credential_id FROM authority_credentials_issued WHERE authority = ? "  # noqa: S608
                "AND revoked_at IS NOT NULL AND expires_at > ? "
                f"ORDER BY credential_id{self._BY_CODE_POINT}",
                params,
            ),
        )
        return [r[0] for r in rows]

    def purge(self, authority: str, *, now: int) -> int:
        params = (_name(authority, "the authority"), _time(now, "now"))

        def run(tx: Transaction) -> int:
            return tx.write(
                "DELETE FROM authority_tickets WHERE authority = ? AND expires_at <= ?", params
            ) + tx.write(
                "DELETE FROM authority_credentials_issued WHERE authority = ? AND expires_at <= ?",
                params,
            )

        return self._write("purge expired tickets and credentials", run)


def _ticket_params(
    authority: object,
    ticket_hash: object,
    attributes: object,
    expires_at: object,
    usage_count: object,
    created_by: object,
    now: object,
) -> tuple[str, bytes, str, int, int, str | None, int]:
    t = _time(now, "now")
    e = _time(expires_at, "expires_at")
    if e <= t:
        raise InvalidArgumentError("a ticket must expire after it is created (expires_at > now)")
    if (
        not isinstance(usage_count, int)
        or isinstance(usage_count, bool)
        or not 0 < usage_count <= MAX_USAGE_COUNT
    ):
        raise InvalidArgumentError(f"usage_count must be an integer from 1 to {MAX_USAGE_COUNT}")
    return (
        _name(authority, "the authority"),
        _hash(ticket_hash),
        _attributes(attributes),
        e,
        usage_count,
        _optional_name(created_by, "created_by"),
        t,
    )


def _credential_params(
    authority: object, credential_id: object, subject: object, expires_at: object, now: object
) -> tuple[str, str, str, int, int]:
    return (
        _name(authority, "the authority"),
        _name(credential_id, "the credential id"),
        _name(subject, "the subject"),
        _time(expires_at, "expires_at"),
        _time(now, "now"),
    )


# --- SQLite: the node's store ----------------------------------------------------------------


class SqliteShared(SharedBase):
    """The shared state in the node's SQLite store (tables ``authority_*``). Closing it leaves
    the store open: the node owns the store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteShared({str(self._store.path)!r})"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[Store]:
        if self._closed:
            raise StateError("the shared store is closed")
        try:
            yield self._store
        except sqlite3.Error as e:
            raise StoreError(f"the state store {self._store.path} failed: {e}") from None

    def _read(self, what: str, fn: Callable[[Transaction], T]) -> T:
        with self._guard() as s:
            return fn(_SqliteTx(s))

    def _write(self, what: str, fn: Callable[[Transaction], T]) -> T:
        # BEGIN IMMEDIATE takes the write lock first: nobody else (thread or process) writes
        # between this transaction's reads and writes.
        with self._guard() as s, s.transaction():
            return fn(_SqliteTx(s))

    def close(self) -> None:
        self._closed = True


class _SqliteTx:
    """:class:`Transaction` on the node's store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        return self.store.query(sql, params)

    def read_one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        return self.store.query_one(sql, params)

    def write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return self.store.execute(sql, params)

    def update_returning(
        self, table: str, assignments: str, where: str, params: tuple[Any, ...], key: str
    ) -> list[Row]:
        # No RETURNING (older SQLite): look, then update; the write lock that _write holds
        # keeps the two in agreement.
        where_params = params[assignments.count("?") :]
        rows = self.read(f"SELECT {key} FROM {table} WHERE {where}", where_params)  # noqa: S608
        self.write(f"UPDATE {table} SET {assignments} WHERE {where}", params)  # noqa: S608
        return rows
