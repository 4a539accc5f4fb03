"""tether.store.authority: an authority's shared state (members, tickets, issued credentials).

The same contract tests run on both backends — the node's SQLite store and a real PostgreSQL
(``postgres_url``, a throwaway server started once per session by tests/pgserver.py). Each test
works in authorities of its own (random identifiers), so tests share the PostgreSQL database
without seeing each other.

Atomicity of ticket use is tested where it matters, under real concurrency: threads with
connections of their own (both backends), and separate OS processes (python -c workers).
PostgreSQL connection failures are real too: the server terminates the store's backend
(``pg_terminate_backend``), idle or in the middle of a ticket use.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, rule, run_state_machine_as_test

from pgserver import unused_port
from tether.core.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    StateError,
    StoreError,
    TetherError,
)
from tether.store.authority import (
    DATABASE_URL_ENV,
    MAX_ATTRIBUTE_KEY,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
    MAX_IDENTIFIER,
    DatabaseError,
    Member,
    SharedStore,
    SqliteShared,
    TicketError,
    TicketExpiredError,
    TicketInfo,
    TicketUnknownError,
    TicketUsedError,
)
from tether.store.authority_backend import database_url, open_shared
from tether.store.authority_postgres import PostgresShared, mask_url
from tether.store.local import Store

NOW = 1_700_000_000
PASSWORD = "hunter2-Sup3rSecret"  # noqa: S105 - a test value that must never be shown


def fresh_id() -> str:
    """An identifier-shaped name no other test uses (authorities, members)."""
    return "I" + secrets.token_hex(20)


def ticket_hash() -> bytes:
    return secrets.token_bytes(32)


@dataclass
class Backend:
    """One backend under test: ``open()`` gives another store object on the same database (its
    own connection), as a second authority instance would have."""

    kind: str
    target: str  # what a worker process opens: a postgresql:// URL, or a tether home
    opener: Callable[[], SharedStore]
    opened: list[SharedStore] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)

    def open(self) -> SharedStore:
        s = self.opener()
        self.opened.append(s)
        return s

    def close(self) -> None:
        for s in self.opened:
            s.close()
        for st_ in self.stores:
            st_.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        home = tmp_path / "home"
        b: Backend

        def open_sqlite() -> SharedStore:
            store = Store(home)
            b.stores.append(store)
            return open_shared(None, store)

        b = Backend("sqlite", str(home), open_sqlite)
    else:
        url: str = request.getfixturevalue("postgres_url")
        b = Backend("postgres", url, lambda: open_shared(url))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def shared(backend: Backend) -> SharedStore:
    return backend.open()


@pytest.fixture
def authority() -> str:
    return fresh_id()


# --- members ---------------------------------------------------------------------------------


def test_backend_types(backend: Backend, shared: SharedStore) -> None:
    assert isinstance(shared, SharedStore)
    assert isinstance(shared, SqliteShared if backend.kind == "sqlite" else PostgresShared)


def test_members(shared: SharedStore, authority: str) -> None:
    assert shared.get_member(authority, "Ia") is None
    assert shared.list_members(authority) == []
    shared.add_member(authority, "Ia", {"role": "db", "é": "ü"}, added_by="Iadmin", now=NOW)
    assert shared.get_member(authority, "Ia") == Member(
        "Ia", {"role": "db", "é": "ü"}, "Iadmin", NOW
    )
    # Adding again replaces the attributes (and who added it, when).
    shared.add_member(authority, "Ia", {"role": "web"}, added_by=None, now=NOW + 5)
    assert shared.get_member(authority, "Ia") == Member("Ia", {"role": "web"}, None, NOW + 5)
    # Ordered by identifier in code point order, whatever the database's locale.
    for ident in ["Ib", "IB", "I_", "Iä", "I0"]:
        shared.add_member(authority, ident, {}, added_by=None, now=NOW)
    listed = shared.list_members(authority)
    assert [m.identifier for m in listed] == sorted(["Ia", "Ib", "IB", "I_", "Iä", "I0"])
    assert listed[[m.identifier for m in listed].index("Ia")].attributes == {"role": "web"}
    assert shared.delete_member(authority, "Ia") is True
    assert shared.delete_member(authority, "Ia") is False
    assert shared.get_member(authority, "Ia") is None
    assert len(shared.list_members(authority)) == 5


def test_authorities_are_namespaces(shared: SharedStore) -> None:
    a, b = fresh_id(), fresh_id()
    h = ticket_hash()
    shared.add_member(a, "Im", {"in": "a"}, added_by=None, now=NOW)
    shared.add_member(b, "Im", {"in": "b"}, added_by=None, now=NOW)
    shared.add_ticket(
        a, h, {"t": "a"}, expires_at=NOW + 60, usage_count=1, created_by=None, now=NOW
    )
    shared.add_ticket(
        b, h, {"t": "b"}, expires_at=NOW + 60, usage_count=1, created_by=None, now=NOW
    )
    shared.record_credential(a, "c1", "Im", expires_at=NOW + 60, now=NOW)
    shared.record_credential(b, "c1", "Im", expires_at=NOW + 60, now=NOW)

    assert shared.get_member(a, "Im") == Member("Im", {"in": "a"}, None, NOW)
    assert [m.attributes for m in shared.list_members(b)] == [{"in": "b"}]
    assert shared.use_ticket(a, h, now=NOW).attributes == {"t": "a"}
    assert shared.use_ticket(b, h, now=NOW).attributes == {"t": "b"}  # b's is still unused
    assert shared.revoke_subject(a, "Im", now=NOW) == ["c1"]
    assert shared.revoked(a, now=NOW) == ["c1"]
    assert shared.revoked(b, now=NOW) == []
    assert shared.delete_member(a, "Im")
    assert shared.get_member(b, "Im") is not None
    # Another authority's ticket reads exactly like a forged one.
    other = fresh_id()
    with pytest.raises(TicketUnknownError) as known_elsewhere:
        shared.use_ticket(other, h, now=NOW)
    with pytest.raises(TicketUnknownError) as forged:
        shared.use_ticket(other, ticket_hash(), now=NOW)
    assert str(known_elsewhere.value) == str(forged.value)


# --- tickets ---------------------------------------------------------------------------------


def test_ticket_with_three_uses(shared: SharedStore, authority: str) -> None:
    h = ticket_hash()
    attrs = {"role": "db", "env": "prod"}
    shared.add_ticket(
        authority, h, attrs, expires_at=NOW + 600, usage_count=3, created_by="Iadmin", now=NOW
    )
    for left in (2, 1, 0):
        info = shared.use_ticket(authority, h, now=NOW + 10)
        assert info == TicketInfo(attrs, NOW + 600, left, "Iadmin")
    with pytest.raises(TicketUsedError, match="already used"):
        shared.use_ticket(authority, h, now=NOW + 10)
    # Used up and expired: "used" is the answer.
    with pytest.raises(TicketUsedError):
        shared.use_ticket(authority, h, now=NOW + 10_000)


def test_ticket_refusals(shared: SharedStore, authority: str) -> None:
    h = ticket_hash()
    shared.add_ticket(
        authority, h, {}, expires_at=NOW + 60, usage_count=2, created_by=None, now=NOW
    )
    # Expiry is exclusive: at expires_at the ticket is already expired.
    with pytest.raises(TicketExpiredError, match="expired"):
        shared.use_ticket(authority, h, now=NOW + 60)
    with pytest.raises(TicketExpiredError):
        shared.use_ticket(authority, h, now=NOW + 3600)
    # A refused use changes nothing: both uses are still there before the expiry.
    assert shared.use_ticket(authority, h, now=NOW + 59).remaining == 1
    assert shared.use_ticket(authority, h, now=NOW + 59).remaining == 0

    forged = ticket_hash()
    with pytest.raises(TicketUnknownError) as e:
        shared.use_ticket(authority, forged, now=NOW)
    message = str(e.value)
    assert forged.hex() not in message
    assert h.hex() not in message
    assert message == "unknown ticket: this authority never issued it"
    # A prefix of a real hash is just as unknown.
    with pytest.raises(TicketUnknownError):
        shared.use_ticket(authority, h[:16], now=NOW)
    assert issubclass(TicketUnknownError, TicketError)
    assert issubclass(TicketError, TetherError)

    with pytest.raises(AlreadyExistsError):
        shared.add_ticket(
            authority, h, {}, expires_at=NOW + 60, usage_count=1, created_by=None, now=NOW
        )
    with pytest.raises(InvalidArgumentError, match="expire after"):
        shared.add_ticket(
            authority, ticket_hash(), {}, expires_at=NOW, usage_count=1, created_by=None, now=NOW
        )


# --- credentials and revocation --------------------------------------------------------------


def test_revocations(shared: SharedStore, authority: str) -> None:
    s, t = fresh_id(), fresh_id()
    shared.record_credential(authority, "c2", s, expires_at=NOW + 2000, now=NOW)
    shared.record_credential(authority, "c1", s, expires_at=NOW + 1000, now=NOW)
    shared.record_credential(authority, "c0", s, expires_at=NOW + 400, now=NOW)
    shared.record_credential(authority, "c3", t, expires_at=NOW + 2000, now=NOW)
    with pytest.raises(AlreadyExistsError):
        shared.record_credential(authority, "c1", s, expires_at=NOW + 1000, now=NOW)
    assert shared.revoked(authority, now=NOW) == []
    # c0 has expired by then: nothing to revoke there.
    assert shared.revoke_subject(authority, s, now=NOW + 500) == ["c1", "c2"]
    assert shared.revoke_subject(authority, s, now=NOW + 500) == []  # already revoked
    assert shared.revoke_subject(authority, fresh_id(), now=NOW) == []
    assert shared.revoked(authority, now=NOW + 500) == ["c1", "c2"]
    # Expired credentials drop out of the list: they are refused anyway.
    assert shared.revoked(authority, now=NOW + 999) == ["c1", "c2"]
    assert shared.revoked(authority, now=NOW + 1000) == ["c2"]
    assert shared.revoked(authority, now=NOW + 2000) == []
    # A credential issued after the revocation is not revoked by it.
    shared.record_credential(authority, "c4", s, expires_at=NOW + 3000, now=NOW + 600)
    assert shared.revoked(authority, now=NOW + 600) == ["c1", "c2"]
    assert shared.revoke_subject(authority, t, now=NOW + 600) == ["c3"]
    assert shared.revoked(authority, now=NOW + 600) == ["c1", "c2", "c3"]


def test_purge_forgets_only_what_expired(shared: SharedStore, authority: str) -> None:
    """Expired tickets and expired credential records go; live ones, and revoked credentials
    that have not expired (the revocation list still needs them), stay; other authorities'
    records are untouched."""
    other = fresh_id()
    s = fresh_id()
    for a in (authority, other):
        shared.add_ticket(
            a, b"\x01" * 32, {}, expires_at=NOW + 100, usage_count=1, created_by=None, now=NOW
        )
        shared.add_ticket(
            a, b"\x02" * 32, {}, expires_at=NOW + 900, usage_count=1, created_by=None, now=NOW
        )
        shared.record_credential(a, "c-old", s, expires_at=NOW + 100, now=NOW)
        shared.record_credential(a, "c-new", s, expires_at=NOW + 900, now=NOW)
    assert shared.revoke_subject(authority, s, now=NOW + 50) == ["c-new", "c-old"]
    assert shared.purge(authority, now=NOW + 100) == 2  # the first ticket and c-old
    assert shared.purge(authority, now=NOW + 100) == 0
    with pytest.raises(TicketUnknownError):
        shared.use_ticket(authority, b"\x01" * 32, now=NOW + 50)
    assert shared.use_ticket(authority, b"\x02" * 32, now=NOW + 150).remaining == 0
    assert shared.revoked(authority, now=NOW + 150) == ["c-new"]
    # The other authority's records are all still there.
    with pytest.raises(TicketExpiredError):
        shared.use_ticket(other, b"\x01" * 32, now=NOW + 150)
    assert shared.purge(other, now=NOW + 1000) == 4


# --- argument limits -------------------------------------------------------------------------


def _limit_cases() -> list[tuple[str, Callable[[SharedStore, str], object]]]:
    h = b"\x01" * 32

    def member(ident: object = "Im", attrs: object = None, added_by: object = None) -> Any:
        return lambda s, a: s.add_member(
            a, ident, {} if attrs is None else attrs, added_by=added_by, now=NOW
        )

    def ticket(**kw: Any) -> Any:
        args: dict[str, Any] = {
            "ticket_hash": h,
            "attributes": {},
            "expires_at": NOW + 60,
            "usage_count": 1,
            "created_by": None,
            "now": NOW,
        }
        args.update(kw)
        rest = {k: v for k, v in args.items() if k not in ("ticket_hash", "attributes")}
        return lambda s, a: s.add_ticket(a, args["ticket_hash"], args["attributes"], **rest)

    return [
        ("identifier too long", member("I" * MAX_IDENTIFIER + "x")),
        ("identifier empty", member("")),
        ("identifier not text", member(42)),
        ("identifier with NUL", member("I\0x")),
        ("identifier with a lone surrogate", member("I\ud800")),
        ("added_by too long", member(added_by="x" * (MAX_IDENTIFIER + 1))),
        ("too many attributes", member(attrs={f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)})),
        ("attribute name too long", member(attrs={"k" * (MAX_ATTRIBUTE_KEY + 1): "v"})),
        ("attribute name too long in UTF-8", member(attrs={"é" * 65: "v"})),
        ("attribute name empty", member(attrs={"": "v"})),
        ("attribute value too long", member(attrs={"k": "v" * (MAX_ATTRIBUTE_VALUE + 1)})),
        ("attribute value too long in UTF-8", member(attrs={"k": "€" * 342})),
        ("attribute value not text", member(attrs={"k": 1})),
        ("attribute value with NUL", member(attrs={"k": "a\0b"})),
        ("attributes not a mapping", member(attrs=[("k", "v")])),
        ("authority too long", lambda s, a: s.list_members("I" * (MAX_IDENTIFIER + 1))),
        ("authority empty", lambda s, a: s.get_member("", "Im")),
        ("ticket hash empty", ticket(ticket_hash=b"")),
        ("ticket hash too long", ticket(ticket_hash=b"\0" * 65)),
        ("ticket hash not bytes", ticket(ticket_hash="00" * 32)),
        ("usage count 0", ticket(usage_count=0)),
        ("usage count too large", ticket(usage_count=2**31)),
        ("usage count a bool", ticket(usage_count=True)),
        ("time negative", ticket(now=-1)),
        ("time a float", ticket(now=float(NOW))),
        ("time too large", ticket(expires_at=2**63)),
        ("created_by too long", ticket(created_by="x" * (MAX_IDENTIFIER + 1))),
        ("ticket attributes too many", ticket(attributes={str(i): "" for i in range(65)})),
        ("use: hash too long", lambda s, a: s.use_ticket(a, b"\0" * 65, now=NOW)),
        ("use: time not an int", lambda s, a: s.use_ticket(a, h, now="now")),
        (
            "credential id too long",
            lambda s, a: s.record_credential(a, "c" * 65, "Is", expires_at=NOW, now=NOW),
        ),
        (
            "subject too long",
            lambda s, a: s.record_credential(a, "c1", "I" * 65, expires_at=NOW, now=NOW),
        ),
        ("revoke: subject empty", lambda s, a: s.revoke_subject(a, "", now=NOW)),
        ("revoked: bad time", lambda s, a: s.revoked(a, now=None)),
    ]


LIMIT_CASES = _limit_cases()


@pytest.mark.parametrize("case", LIMIT_CASES, ids=[name for name, _ in LIMIT_CASES])
def test_limits_are_checked_before_writing(
    shared: SharedStore, authority: str, case: tuple[str, Callable[[SharedStore, str], object]]
) -> None:
    with pytest.raises(InvalidArgumentError):
        case[1](shared, authority)
    assert shared.list_members(authority) == []
    with pytest.raises(TicketUnknownError):
        shared.use_ticket(authority, b"\x01" * 32, now=NOW)
    assert shared.revoke_subject(authority, "Is", now=NOW) == []


def test_limits_themselves_are_allowed(shared: SharedStore, authority: str) -> None:
    big = {f"{i:03d}" + "k" * (MAX_ATTRIBUTE_KEY - 3): "v" * MAX_ATTRIBUTE_VALUE for i in range(64)}
    ident = "I" * MAX_IDENTIFIER
    shared.add_member(authority, ident, big, added_by="x" * MAX_IDENTIFIER, now=NOW)
    m = shared.get_member(authority, ident)
    assert m is not None
    assert m.attributes == big
    multibyte = {"é" * (MAX_ATTRIBUTE_KEY // 2): "€" * (MAX_ATTRIBUTE_VALUE // 3), "k": ""}
    shared.add_member(authority, "Iu", multibyte, added_by=None, now=NOW)
    assert shared.get_member(authority, "Iu") == Member("Iu", multibyte, None, NOW)
    h = b"\xff" * 64
    shared.add_ticket(
        authority, h, big, expires_at=2**63 - 1, usage_count=2**31 - 1, created_by=None, now=0
    )
    assert shared.use_ticket(authority, h, now=NOW).remaining == 2**31 - 2
    shared.record_credential(authority, "c" * 64, ident, expires_at=2**63 - 1, now=NOW)
    assert shared.revoke_subject(authority, ident, now=NOW) == ["c" * 64]


def test_closed_store_refuses(backend: Backend, authority: str) -> None:
    s = backend.open()
    s.close()
    with pytest.raises(StateError, match="closed"):
        s.get_member(authority, "Im")
    s.close()  # twice is fine


# --- concurrency: threads --------------------------------------------------------------------


def _race(stores: list[SharedStore], authority: str, h: bytes) -> list[str]:
    """Every store uses ticket ``h`` at once (a barrier); each outcome's name."""
    barrier = threading.Barrier(len(stores))

    def use(s: SharedStore) -> str:
        barrier.wait(timeout=10)
        try:
            s.use_ticket(authority, h, now=NOW)
        except TicketError as e:
            return type(e).__name__
        return "ok"

    with ThreadPoolExecutor(len(stores)) as pool:
        return list(pool.map(use, stores))


@pytest.mark.parametrize("connections", ["own", "shared"])
def test_threads_race_on_a_ticket(backend: Backend, authority: str, connections: str) -> None:
    """8 threads, each with its own connection (as separate authority instances have) or all
    on one store object; a single-use ticket is used once, a three-use ticket three times."""
    first = backend.open()
    stores = [backend.open() for _ in range(8)] if connections == "own" else [first] * 8
    for _ in range(5):
        h = ticket_hash()
        first.add_ticket(
            authority, h, {}, expires_at=NOW + 60, usage_count=1, created_by=None, now=NOW
        )
        outcomes = _race(stores, authority, h)
        assert sorted(outcomes) == ["TicketUsedError"] * 7 + ["ok"], outcomes
    h = ticket_hash()
    first.add_ticket(authority, h, {}, expires_at=NOW + 60, usage_count=3, created_by=None, now=NOW)
    outcomes = _race(stores, authority, h)
    assert sorted(outcomes) == ["TicketUsedError"] * 5 + ["ok"] * 3, outcomes


# --- concurrency: processes ------------------------------------------------------------------

WORKER = f"""
import json, sys
from tether.store.authority import TicketError
from tether.store.authority_backend import open_shared
from tether.store.local import Store

target, authority, mode, *args = sys.argv[1:]
shared = open_shared(target) if "://" in target else open_shared(None, Store(target))
if mode == "race":
    hashes = [bytes.fromhex(a) for a in args]
    print("ready", flush=True)
    sys.stdin.readline()
    outcomes = []
    for h in hashes:
        try:
            shared.use_ticket(authority, h, now={NOW})
            outcomes.append("ok")
        except TicketError as e:
            outcomes.append(type(e).__name__)
    print(json.dumps(outcomes), flush=True)
elif mode == "add":
    shared.add_member(authority, args[0], json.loads(args[1]), added_by="proc", now={NOW})
    print("added", flush=True)
elif mode == "get":
    m = shared.get_member(authority, args[0])
    print(json.dumps(m and [m.identifier, m.attributes, m.added_by, m.added_at]), flush=True)
shared.close()
"""


def _worker(target: str, authority: str, mode: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, target, authority, mode, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p: subprocess.Popen[str]) -> str:
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, f"worker exit {p.returncode}: {err}"
    return out


def test_processes_race_on_tickets(backend: Backend, authority: str) -> None:
    """Two OS processes use the same 20 single-use tickets, in the same order, from a common
    start: every ticket has exactly one winner."""
    shared = backend.open()
    hashes = [ticket_hash() for _ in range(20)]
    for h in hashes:
        shared.add_ticket(
            authority, h, {}, expires_at=NOW + 60, usage_count=1, created_by=None, now=NOW
        )
    procs = [_worker(backend.target, authority, "race", *(h.hex() for h in hashes)) for _ in "ab"]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready", _finish(p)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(_finish(p)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, pair in enumerate(zip(*results, strict=True)):
        assert sorted(pair) == ["TicketUsedError", "ok"], (i, results)


def test_members_are_visible_across_processes(backend: Backend, authority: str) -> None:
    shared = backend.open()
    ident = fresh_id()
    assert _finish(_worker(backend.target, authority, "add", ident, '{"role": "db"}')).strip() == (
        "added"
    )
    assert shared.get_member(authority, ident) == Member(ident, {"role": "db"}, "proc", NOW)
    shared.add_member(authority, ident, {"role": "web"}, added_by=None, now=NOW + 1)
    seen = json.loads(_finish(_worker(backend.target, authority, "get", ident)))
    assert seen == [ident, {"role": "web"}, None, NOW + 1]


# --- a model of ticket use (hypothesis, stateful) --------------------------------------------


def test_ticket_uses_agree_with_a_model(tmp_path: Path) -> None:
    """Random sequences of ticket creations, uses (of known and unknown tickets) and clock
    steps: the store agrees with a dictionary of (uses left, expiry) at every step."""
    store = Store(tmp_path / "home")
    shared = open_shared(None, store)

    class Tickets(RuleBasedStateMachine):
        tickets = Bundle("tickets")

        def __init__(self) -> None:
            super().__init__()
            self.authority = fresh_id()
            self.now = NOW
            self.model: dict[bytes, list[int]] = {}

        @rule(target=tickets, uses=st.integers(1, 3), ttl=st.integers(1, 40))
        def add(self, uses: int, ttl: int) -> bytes:
            h = len(self.model).to_bytes(4, "big")
            shared.add_ticket(
                self.authority,
                h,
                {"n": str(len(self.model))},
                expires_at=self.now + ttl,
                usage_count=uses,
                created_by=None,
                now=self.now,
            )
            self.model[h] = [uses, self.now + ttl]
            return h

        @rule(h=tickets)
        def use(self, h: bytes) -> None:
            remaining, expires_at = self.model[h]
            if remaining == 0:
                with pytest.raises(TicketUsedError):
                    shared.use_ticket(self.authority, h, now=self.now)
            elif self.now >= expires_at:
                with pytest.raises(TicketExpiredError):
                    shared.use_ticket(self.authority, h, now=self.now)
            else:
                info = shared.use_ticket(self.authority, h, now=self.now)
                self.model[h][0] -= 1
                assert info.remaining == remaining - 1
                assert info.expires_at == expires_at
                assert info.attributes == {"n": str(int.from_bytes(h, "big"))}

        @rule(h=st.binary(min_size=1, max_size=6))
        def use_unknown(self, h: bytes) -> None:
            if h in self.model:
                return
            with pytest.raises(TicketUnknownError):
                shared.use_ticket(self.authority, h, now=self.now)

        @rule(seconds=st.integers(0, 30))
        def tick(self, seconds: int) -> None:
            self.now += seconds

    try:
        run_state_machine_as_test(
            Tickets,
            settings=settings(
                max_examples=max(10, settings().max_examples // 2), stateful_step_count=30
            ),
        )
    finally:
        store.close()


# --- PostgreSQL: connections, failures, secrets ----------------------------------------------


def _admin(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True)


def _terminate(url: str, application_name: str) -> int:
    with _admin(url) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_postgres_reconnects_when_safe(postgres_url: str, authority: str) -> None:
    """The server drops the store's idle connection: the next call reconnects and goes
    through — reads, and writes too (the failure came before anything was written)."""
    name = "victim-" + secrets.token_hex(4)
    shared = open_shared(f"{postgres_url}?application_name={name}")
    try:
        shared.add_member(authority, "Im", {"k": "v"}, added_by=None, now=NOW)
        h = ticket_hash()
        shared.add_ticket(
            authority, h, {}, expires_at=NOW + 60, usage_count=3, created_by=None, now=NOW
        )

        assert _terminate(postgres_url, name) == 1
        assert shared.get_member(authority, "Im") == Member("Im", {"k": "v"}, None, NOW)
        assert _terminate(postgres_url, name) == 1
        assert shared.use_ticket(authority, h, now=NOW).remaining == 2
        assert shared.use_ticket(authority, h, now=NOW).remaining == 1  # counted once
        assert _terminate(postgres_url, name) == 1
        shared.add_member(authority, "In", {}, added_by=None, now=NOW)
        assert [m.identifier for m in shared.list_members(authority)] == ["Im", "In"]
    finally:
        shared.close()


def test_postgres_ticket_use_with_unknown_outcome_is_not_retried(
    postgres_url: str, authority: str
) -> None:
    """The connection dies while the ticket's UPDATE is in flight (blocked on a row lock another
    session holds): the call says the outcome is unknown rather than retry and maybe spend a
    second use; the server rolled it back, so the use is still there."""
    name = "victim-" + secrets.token_hex(4)
    shared = open_shared(f"{postgres_url}?application_name={name}")
    h = ticket_hash()
    shared.add_ticket(
        authority, h, {}, expires_at=NOW + 60, usage_count=2, created_by=None, now=NOW
    )
    outcome: list[BaseException | TicketInfo] = []
    try:
        # Activity is read from another session: inside a transaction it is a snapshot.
        with _admin(postgres_url) as watcher, _admin(postgres_url) as locker, locker.transaction():
            locker.execute(
                "SELECT 1 FROM authority_tickets WHERE authority = %s AND hash = %s FOR UPDATE",
                (authority, h),
            )

            def use() -> None:
                try:
                    outcome.append(shared.use_ticket(authority, h, now=NOW))
                except BaseException as e:
                    outcome.append(e)

            t = threading.Thread(target=use)
            t.start()
            deadline = time.monotonic() + 10
            while True:
                row = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                    "AND wait_event_type = 'Lock'",
                    (name,),
                ).fetchone()
                if row and row[0]:
                    break
                assert time.monotonic() < deadline, "the ticket use never waited on the lock"
                time.sleep(0.01)
            assert _terminate(postgres_url, name) == 1
            t.join(10)
        assert len(outcome) == 1
        e = outcome[0]
        assert isinstance(e, DatabaseError), e
        assert "unknown" in str(e)
        assert "use a ticket" in str(e)
        assert isinstance(e, StoreError)
        # Rolled back by the server: both uses are still there, on a new connection.
        assert shared.use_ticket(authority, h, now=NOW).remaining == 1
    finally:
        shared.close()


def _fresh_database(postgres_url: str) -> str:
    name = "db_" + secrets.token_hex(6)
    with _admin(postgres_url) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + "/" + name


def test_postgres_schema_created_once_under_a_race(postgres_url: str) -> None:
    """Six instances start at once on an empty database: all open, one schema."""
    url = _fresh_database(postgres_url)
    barrier = threading.Barrier(6)

    def start(_: int) -> SharedStore:
        barrier.wait(timeout=10)
        return open_shared(url)

    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(start, range(6)))
    a = fresh_id()
    stores[0].add_member(a, "Im", {}, added_by=None, now=NOW)
    assert all(len(s.list_members(a)) == 1 for s in stores)
    for s in stores:
        s.close()
    with _admin(url) as admin:
        assert admin.execute("SELECT component, version FROM authority_schema").fetchall() == [
            ("authority", 1)
        ]
        admin.execute("UPDATE authority_schema SET version = 2")
    with pytest.raises(DatabaseError, match=r"newer than this tether \(1\); upgrade tether"):
        open_shared(url)


def test_postgres_password_never_shown(postgres_url: str) -> None:
    # Trust authentication ignores the password, so these connect.
    rest = postgres_url.split("://", 1)[1].split("@", 1)[1]
    for url in [
        f"postgresql://postgres:{PASSWORD}@{rest}",
        f"postgres://postgres@{rest}?password={PASSWORD}&connect_timeout=5",
    ]:
        s = open_shared(url)
        try:
            assert PASSWORD not in repr(s), repr(s)
            assert "***" in repr(s), repr(s)
            assert isinstance(s, PostgresShared)
            s.list_members(fresh_id())
        finally:
            s.close()
    port = unused_port()  # nothing listens there
    for url, error in [
        (f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db", DatabaseError),
        (f"postgresql://u@127.0.0.1:{port}/db?password={PASSWORD}", DatabaseError),
        (f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/db", DatabaseError),
        (f"postgresql://u:{PASSWORD}@[::1/db", InvalidArgumentError),
    ]:
        with pytest.raises(error) as e:
            open_shared(url)
        message = str(e.value)
        assert PASSWORD not in message, message
        if error is DatabaseError and "notaport" not in url:
            assert f"127.0.0.1 port {port}" in message, message
            assert "database db" in message, message


def test_postgres_refuses_a_missing_database(postgres_url: str) -> None:
    base = postgres_url.rsplit("/", 1)[0]
    with pytest.raises(DatabaseError, match=r"cannot connect to the database nosuchdb at 127\."):
        open_shared(base + "/nosuchdb")


# --- choosing a backend ----------------------------------------------------------------------


def test_open_shared_and_database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(tmp_path / "home") as store:
        s = open_shared(None, store)
        assert isinstance(s, SqliteShared)
        assert "state.sqlite3" in repr(s)
        assert isinstance(open_shared("", store), SqliteShared)
    with pytest.raises(InvalidArgumentError, match=DATABASE_URL_ENV):
        open_shared(None)
    for url in ["mysql://u:pw@h/db", "sqlite:///x"]:
        with pytest.raises(InvalidArgumentError, match="unsupported database"):
            open_shared(url)
    with pytest.raises(InvalidArgumentError, match="not a database URL") as e:
        open_shared(f"host=h password={PASSWORD}")
    assert PASSWORD not in str(e.value)

    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    assert database_url(None) is None
    assert database_url("postgresql://h/db") == "postgresql://h/db"
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://env/db")
    assert database_url(None) == "postgresql://env/db"
    assert database_url("postgresql://h/db") == "postgresql://h/db"
    assert database_url("") is None  # explicitly the node's store, whatever the environment
    monkeypatch.setenv(DATABASE_URL_ENV, "")
    assert database_url(None) is None


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://u:p%40ss@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://:pw@h/db", "postgresql://:***@h/db"),
        ("postgresql://h/db?password=pw&x=1", "postgresql://h/db?password=***&x=1"),
        ("postgresql://h/db?a=1&sslpassword=pw", "postgresql://h/db?a=1&sslpassword=***"),
        ("postgresql:///db", "postgresql:///db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_sqlite_schema_is_a_migration(tmp_path: Path) -> None:
    with Store(tmp_path / "home") as store:
        tables = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {
        "authority_members",
        "authority_tickets",
        "authority_credentials_issued",
    } <= tables
    assert os.stat(tmp_path / "home" / "state.sqlite3").st_mode & 0o077 == 0
