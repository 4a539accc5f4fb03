"""Which backend holds an authority's shared state (``docs/authority.md``): the node's SQLite
store (:class:`~tether.store.authority.SqliteShared`), or the PostgreSQL database a URL names
(:class:`~tether.store.authority_postgres.PostgresShared`)."""

from __future__ import annotations

import os

from tether.core.errors import InvalidArgumentError
from tether.store.authority import DATABASE_URL_ENV, SharedStore, SqliteShared
from tether.store.authority_postgres import PostgresShared
from tether.store.local import Store


def database_url(explicit: str | None) -> str | None:
    """The shared database's URL: ``explicit`` if given (an empty string means "the node's
    SQLite store", overriding the environment), else ``$TETHER_DATABASE_URL``, else None."""
    if explicit is not None:
        return explicit or None
    return os.environ.get(DATABASE_URL_ENV) or None


def open_shared(url: str | None, store: Store | None = None) -> SharedStore:
    """Open the shared state: PostgreSQL for a ``postgresql://`` (or ``postgres://``) URL, else
    the node's SQLite ``store``."""
    if not url:
        if store is None:
            raise InvalidArgumentError(
                "no shared database: give a postgresql:// URL (or set "
                f"{DATABASE_URL_ENV}), or the node's store"
            )
        return SqliteShared(store)
    if not isinstance(url, str):
        raise InvalidArgumentError("the database URL must be a string")
    scheme, sep, _ = url.partition("://")
    if not sep:
        # Not echoed: it may be a key=value connection string with a password in it.
        raise InvalidArgumentError(
            "not a database URL: use postgresql://user:password@host:port/database"
        )
    if scheme.lower() not in ("postgresql", "postgres"):
        raise InvalidArgumentError(
            f"unsupported database {scheme!r}: tether shares state in PostgreSQL "
            "(postgresql://user:password@host:port/database)"
        )
    return PostgresShared(url)  # (psycopg, an optional extra, is loaded when it connects)
