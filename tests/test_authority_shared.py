"""Two authority processes, one project: two node daemons started with the real ``tether``
command share the authority's identity (one ``TETHER_HOME``) and keep its member registry in one
real PostgreSQL (the ``postgres_url`` fixture). A ticket made by one enrolls through the other,
members and revocations made through one are seen through the other, and a single-use ticket
raced through both at once enrolls exactly one node.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tether.api import Node
from tether.identity.trust import ephemeral_identity, trust_identifiers
from tether.services.authority import AuthorityError, Ticket
from trio_run import run

TETHER = [sys.executable, "-m", "tether.cli"]
HOST = "127.0.0.1"


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TETHER_HOME": str(self.home)}
        env.pop("TETHER_DATABASE_URL", None)
        p = subprocess.run(
            [*TETHER, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        if ok:
            assert p.returncode == 0, f"tether {' '.join(args)}: {p.stderr}"
        return p

    def js(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def route(self, name: str) -> str:
        info = self.js("node", "show", name)
        port = int(info["listeners"][0]["address"].rsplit(":", 1)[1])
        return f"/ip4/{HOST}/tcp/{port}"


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    c = Cli(tmp_path_factory.mktemp("shared") / "home")
    try:
        yield c
    finally:
        c.run("node", "delete", "--all", ok=False)


@pytest.fixture(scope="module")
def two_authorities(cli: Cli, postgres_url: str) -> tuple[str, str]:
    """auth1 and auth2: one identity, one PostgreSQL; their routes. The tests of this module
    share them, so each looks only at its own nodes and at counters' changes."""
    authority = cli.run("identity", "create", "authority").stdout.strip()
    for name in ("auth1", "auth2"):
        cli.js("node", "create", name, "--identity", "authority", "--tcp-listener", f"{HOST}:0")
        info = cli.js("authority", "create", "acme", "--at", name, "--database", postgres_url)
        assert info["identifier"] == authority
        assert info["database"].startswith("PostgresShared("), info
    return cli.route("auth1"), cli.route("auth2")


def counters(cli: Cli, key: str) -> tuple[int, int]:
    a, b = (cli.js("authority", "show", "--at", at)[key] for at in ("auth1", "auth2"))
    return int(a), int(b)


def identifier(node: Node) -> str:
    assert node.identity is not None
    return str(node.identity.identity.identifier)


def members(cli: Cli, at: str) -> dict[str, dict[str, str]]:
    return {m["identifier"]: m["attributes"] for m in cli.js("authority", "members", "--at", at)}


def test_a_ticket_from_one_instance_enrolls_through_the_other(
    cli: Cli, two_authorities: tuple[str, str]
) -> None:
    route1, route2 = two_authorities
    t = cli.js(
        "ticket",
        "create",
        "--at",
        "auth1",
        "--attribute",
        "role=db-client",
        "--route",
        route2,
    )
    assert t["route"] == route2
    assert Ticket.decode(t["ticket"]).route == route2

    enrolled = counters(cli, "enrolled")
    client = cli.js("node", "create", "client")["identifier"]
    m = cli.js("enroll", t["ticket"], "--at", "client")
    assert m["authority"] == t["authority"]
    assert m["attributes"] == {"role": "db-client"}
    assert m["route"] == route2
    (held,) = cli.js("membership", "list", "--at", "client")
    assert held["credential"] == m["credential"]
    assert counters(cli, "enrolled") == (enrolled[0], enrolled[1] + 1)

    # Both instances list the member; a second use of the ticket, through either, is refused.
    for at in ("auth1", "auth2"):
        assert members(cli, at)[client] == {"role": "db-client"}
    cli.run("node", "create", "late")
    again = cli.run("enroll", t["ticket"], "--at", "late", ok=False)
    assert again.returncode == 1
    assert "the ticket was already used as many times as it allows" in again.stderr
    assert "Traceback" not in again.stderr

    # A member added through auth2 is listed by auth1; deleting it through auth1 revokes.
    other = cli.js("node", "create", "other")["identifier"]
    cli.js("authority", "add-member", other, "--attribute", "role=web", "--at", "auth2")
    assert members(cli, "auth1")[other] == {"role": "web"}
    deleted = cli.js("authority", "delete-member", client, "--at", "auth1")
    assert m["credential"] in deleted["revoked"]
    assert client not in members(cli, "auth2")
    assert route1 != route2


def test_revocations_and_tickets_are_shared_between_instances(
    cli: Cli, two_authorities: tuple[str, str]
) -> None:
    """A two-use ticket from auth2 enrolls once through each instance, not a third time; a
    credential issued and revoked through auth2 is on the list auth1 signs."""
    route1, route2 = two_authorities
    text = cli.js("ticket", "create", "--at", "auth2", "--usage-count", "2")["ticket"]
    t = Ticket.decode(text)
    assert t.route == route2

    async def main() -> None:
        async with (
            Node("x", identity=ephemeral_identity()) as x,
            Node("y", identity=ephemeral_identity()) as y,
            Node("z", identity=ephemeral_identity()) as z,
        ):
            mx = await x.enroll(Ticket(t.authority, route2, t.secret))
            my = await y.enroll(Ticket(t.authority, route1, t.secret))
            with pytest.raises(AuthorityError, match="already used"):
                await z.enroll(Ticket(t.authority, route2, t.secret))
            assert mx.credential is not None
            gone = identifier(x)
            r = await anyio.to_thread.run_sync(
                lambda: cli.js("authority", "delete-member", gone, "--at", "auth2")
            )
            assert r["revoked"] == [mx.credential.id]
            assert my.route == route1
            await my.poll_revocations()  # through auth1
            assert mx.credential.id in my.revoked
            assert mx.credential.id in y.revoked_credentials[t.authority.identifier]

    run(main)


def test_one_single_use_ticket_raced_through_both_instances_enrolls_exactly_one(
    cli: Cli, two_authorities: tuple[str, str]
) -> None:
    """Racers enroll with one single-use ticket at the same moment, half through auth1 and half
    through auth2 (their channels already open): one wins, every other is told it was used."""
    route1, route2 = two_authorities
    rounds, racers = 4, 8
    used = "the authority refused: the ticket was already used as many times as it allows"

    async def one_round(k: int) -> None:
        text = await anyio.to_thread.run_sync(
            lambda: cli.js("ticket", "create", "--at", "auth1", "--attribute", "r=1")
        )
        t = Ticket.decode(text["ticket"])
        results: dict[int, BaseException | str] = {}
        ready: list[int] = []
        go = anyio.Event()

        async def race(i: int, node: Node) -> None:
            route = route1 if i % 2 else route2
            # TCP and handshake warm (the node is no member yet: it names the authority)
            await node.create_secure_channel(
                f"{route}/service/api", trust=trust_identifiers(t.authority.identifier)
            )
            ready.append(i)
            await go.wait()
            try:
                results[i] = (await node.enroll(Ticket(t.authority, route, t.secret))).identifier
            except AuthorityError as e:
                results[i] = e

        async with contextlib.AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(Node(f"r{k}-{i}", identity=ephemeral_identity()))
                for i in range(racers)
            ]
            async with anyio.create_task_group() as tg:
                for i, node in enumerate(nodes):
                    tg.start_soon(race, i, node)
                with anyio.fail_after(10):
                    while len(ready) < racers:
                        await anyio.sleep(0.005)
                go.set()
            winners = [i for i, r in results.items() if isinstance(r, str)]
            assert len(results) == racers
            assert len(winners) == 1, f"round {k}: {results}"
            for i, r in results.items():
                if i not in winners:
                    assert str(r) == used, (k, i, r)
            won = identifier(nodes[winners[0]])
            listed = await anyio.to_thread.run_sync(lambda: members(cli, "auth2"))
            assert set(listed) & {identifier(n) for n in nodes} == {won}, k
            assert listed[won] == {"r": "1"}

    async def main() -> None:
        with anyio.fail_after(60):
            for k in range(rounds):
                await one_round(k)

    enrolled, refused = counters(cli, "enrolled"), counters(cli, "refused")
    run(main)
    assert sum(counters(cli, "enrolled")) - sum(enrolled) == rounds
    assert sum(counters(cli, "refused")) - sum(refused) == rounds * (racers - 1)
