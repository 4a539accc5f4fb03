"""Attack: relay names claimed first-come, forever, by any fresh identity.

A relay node used to give a name to the first identity that claimed it, whoever that was, and
keep it for that identity forever: a fresh identity claimed 300 names in 0.3 s, ``api`` and
``relay`` among them.

The claim travels in a secure channel (the relay must know who claims), so the squatter here is a
tether node with a fresh identity; a raw socket shows the claim outside a channel. Shown, with
both data planes:

* a relay with no claim policy refuses every claim by a fresh identity (through a channel: with
  a message that says how its operator would allow it; from a raw socket: it must come through a
  secure channel) and holds nothing;
* an allowed identity holds at most ``max_names_per_identity`` names (the next is refused with
  the limit in the message) while another allowed identity can still claim; names like ``api``
  and ``relay`` become ``forward_to_api`` and ``forward_to_relay``, and the relay's own listener
  and relay service go on as before;
* the names of a claimer that is gone stay its own until ``ownership_ttl`` has passed (another
  identity cannot take them; senders are told the name is offline), then they are free: the
  forwarders are gone and another identity claims them;
* the legitimate claimer's route through the relay keeps working throughout;
* a name that no route can name (non-ASCII) is refused as invalid;
* a message to a claimed name with the longest route there is, from a raw socket, is forwarded
  whole by the relay rule, and the link and the claimer go on.
"""

from __future__ import annotations

import time

import anyio
import pytest

from peers import allow_claims, expect, identifier
from rawwire import KIND_DATA, Raw, local, raw
from tether.api import Node
from tether.core.message import Address
from tether.identity.trust import ChannelRefusedError, ephemeral_identity
from tether.node.node import UnreachableError
from tether.services.relay import CLAIM, DENIED, FORWARD_PREFIX, RelayClaimError, RelayClient
from trio_run import run, until

HOST = "127.0.0.1"
SQUATTED = ["api", "relay", "node", "db2", "admin", "www", "mail", "vpn"]


# Every test with either data plane (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("data_plane")


def forwarders(relay: Node) -> set[str]:
    return {
        str(w["address"]) for w in relay.workers() if str(w["address"]).startswith(FORWARD_PREFIX)
    }


async def db_reachable(client: Node, db: Node, rc: RelayClient, label: str) -> None:
    """The legitimate claimer answers through the relay, end to end."""
    route = rc.forward_route + "/secure/api/service/echo"
    assert await client.request(route, label.encode(), trust=expect(db)) == label.encode()


async def relay_serves(client: Node, relay: Node, port: int) -> None:
    """The relay's own ``api`` listener (and its echo behind it) still answer as the relay."""
    route = f"/ip4/{HOST}/tcp/{port}/secure/api/service/echo"
    assert await client.request(route, b"relay", trust=expect(relay)) == b"relay"
    kinds = {str(w["address"]): w["kind"] for w in relay.workers()}
    assert kinds["api"] == "secure-channel-listener"
    assert kinds["relay"] == "relay-service"


def test_a_relay_with_no_policy_takes_no_claim() -> None:
    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("squatter", identity=ephemeral_identity()) as squatter,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await relay.listen_tcp(HOST)).port
            route = f"/ip4/{HOST}/tcp/{port}"
            me = identifier(squatter)
            for name in ("api", "relay"):
                with pytest.raises(RelayClaimError) as refused:
                    await squatter.create_relay(name, route, trust=expect(relay))
                assert "tether policy create" in str(refused.value)
                assert me in str(refused.value)

            # Claims as fast as they can go, over one channel: every one refused.
            channel = await squatter.create_secure_channel(
                route + "/service/api", trust=expect(relay)
            )
            to_service = [Address.local(channel.address), Address.local("relay")]
            for i in range(100):
                reply = await squatter.request(to_service, bytes([CLAIM]) + f"n{i}".encode())
                assert reply[:1] == bytes([DENIED])
                assert b"tether policy create" in reply

            # From a raw socket: no channel, no claim.
            def raw_claim() -> bytes:
                r = Raw(port, source="127.0.0.2")
                try:
                    r.send([local("relay")], bytes([KIND_DATA, CLAIM]) + b"api")
                    return r.message(5.0).payload
                finally:
                    r.close()

            reply = await anyio.to_thread.run_sync(raw_claim)
            assert reply[:2] == bytes([KIND_DATA, DENIED])
            assert b"must come through a secure channel" in reply

            assert relay.relay_service.claims == {}
            assert dict(relay.relay_service.owners) == {}
            assert forwarders(relay) == set()
            await relay_serves(client, relay, port)

    run(main)


def test_an_identity_holds_a_few_names_and_cannot_shadow_the_relay() -> None:
    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("db", identity=ephemeral_identity()) as db,
            Node("squatter", identity=ephemeral_identity()) as squatter,
            Node("other", identity=ephemeral_identity()) as other,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await relay.listen_tcp(HOST)).port
            route = f"/ip4/{HOST}/tcp/{port}"
            allow_claims(relay, db, squatter, other)
            listener = relay.channel_listeners["api"]
            rc = await db.create_relay("db", route, trust=expect(relay))
            await db_reachable(client, db, rc, "before")

            limit = relay.relay_service.max_names_per_identity
            assert len(SQUATTED) == limit
            for name in SQUATTED:
                await squatter.create_relay(name, route, trust=expect(relay))
            with pytest.raises(RelayClaimError) as refused:
                await squatter.create_relay("one-more", route, trust=expect(relay))
            assert str(refused.value) == (
                f"{identifier(squatter)} already holds {limit} relay names at relay (the limit); "
                f"names expire once their claimer has been gone for "
                f"{relay.relay_service.ownership_ttl:g} s"
            )
            # The limit is the squatter's, not the relay's.
            await other.create_relay("one-more", route, trust=expect(relay))
            owners = dict(relay.relay_service.owners)
            assert sorted(n for n, o in owners.items() if o == identifier(squatter)) == sorted(
                SQUATTED
            )
            assert owners["one-more"] == identifier(other)
            assert "one-more" not in [n for n, o in owners.items() if o == identifier(squatter)]

            # `api` and `relay` were claimed as forwarders; the relay's own services are intact.
            assert {FORWARD_PREFIX + "api", FORWARD_PREFIX + "relay"} <= forwarders(relay)
            assert relay.channel_listeners["api"] is listener
            await relay_serves(client, relay, port)
            # What the squatter got is reached only by its own name, and is the squatter's: a
            # client that expects the relay there is refused, not fooled.
            squat = f"{route}/service/{FORWARD_PREFIX}api"
            assert await client.request(squat + "/service/echo", b"squat") == b"squat"
            with pytest.raises(ChannelRefusedError):
                await client.request(
                    squat + "/secure/api/service/echo", b"x", trust=expect(relay), timeout=5
                )
            # The relay service still takes claims and pings (the db claimer is still on).
            assert db.relays["db"].state == "claimed"
            await db_reachable(client, db, rc, "after the squatter")

    run(main)


def test_a_gone_claimers_names_are_free_after_the_ttl() -> None:
    names = ["api", "relay", "shop"]

    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("db", identity=ephemeral_identity()) as db,
            Node("other", identity=ephemeral_identity()) as other,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await relay.listen_tcp(HOST)).port
            route = f"/ip4/{HOST}/tcp/{port}"
            service = relay.relay_service
            ttl = service.ownership_ttl
            squatter = Node("squatter", identity=ephemeral_identity())
            gone = identifier(squatter)
            allow_claims(relay, db, squatter, other)
            rc = await db.create_relay("db", route, trust=expect(relay))

            async with squatter:
                for name in names:
                    await squatter.create_relay(name, route, trust=expect(relay))
                await db_reachable(client, db, rc, "with the squatter on")
            # The squatter is gone: its names are offline, and still its own.
            await until(
                lambda: not any(c["online"] for c in service.info() if c["name"] in names),
                5,
                "the squatter's claims offline",
            )
            with pytest.raises(RelayClaimError, match=f"belongs to {gone}"):
                await other.create_relay("api", route, trust=expect(relay))
            with pytest.raises(UnreachableError, match="relay 'api' on node relay is offline"):
                await client.request(f"{route}/service/{FORWARD_PREFIX}api/service/echo", b"x")

            assert service.expire() == []  # gone from now on
            assert service.expire(now=time.monotonic() + ttl - 60) == []
            assert {n for n, o in service.owners.items() if o == gone} == set(names)
            await db_reachable(client, db, rc, "with the names reserved")

            assert sorted(service.expire(now=time.monotonic() + ttl + 1)) == sorted(names)
            await until(
                lambda: not forwarders(relay) & {FORWARD_PREFIX + n for n in names},
                5,
                "the squatter's forwarders gone",
            )
            assert forwarders(relay) == {FORWARD_PREFIX + "db"}
            assert set(service.claims) == {"db"}
            assert dict(service.owners) == {"db": identifier(db)}

            # Free: another identity claims them, and is reached there.
            for name in names:
                await other.create_relay(name, route, trust=expect(relay))
            via = f"{route}/service/{FORWARD_PREFIX}api/secure/api/service/echo"
            assert await client.request(via, b"new owner", trust=expect(other)) == b"new owner"
            await db_reachable(client, db, rc, "after the names changed hands")
            assert db.relays["db"].claims == 1  # never lost its own claim

    run(main)


def test_a_name_no_route_can_name_is_refused() -> None:
    """Relay names are checked with ``str.isalnum`` (any script), routes accept ASCII worker
    names only: ``api`` spelt with a Cyrillic a (U+0430), or 128 e-acutes (256 bytes), must be
    refused as invalid, not take one of the claimer's slots with a forwarder no route can
    reach."""

    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("squatter", identity=ephemeral_identity()) as squatter,
        ):
            port = (await relay.listen_tcp(HOST)).port
            route = f"/ip4/{HOST}/tcp/{port}"
            allow_claims(relay, squatter)
            for name in ("\u0430pi", "\u00e9" * 128):
                with pytest.raises(RelayClaimError, match="invalid relay name"):
                    await squatter.create_relay(name, route, trust=expect(relay))
            assert relay.relay_service.claims == {}
            assert forwarders(relay) == set()

    run(main)


def test_the_longest_route_a_sender_can_give_is_forwarded_whole() -> None:
    """A raw socket sends a message to a claimed name with the longest onward route there is
    (64 addresses): the forwarder is replaced by the claimer's route (``rust/src/relay.rs``,
    which refuses a result over the limit; a claimer reached in one hop keeps it within), the
    rest goes on whole (the claimer reports its first missing worker, not a truncated route),
    the link goes on, and the claimer is still reached through the relay."""

    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("db", identity=ephemeral_identity()) as db,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await relay.listen_tcp(HOST)).port
            allow_claims(relay, db)
            rc = await db.create_relay("db", f"/ip4/{HOST}/tcp/{port}", trust=expect(relay))
            await db_reachable(client, db, rc, "before")
            assert len(relay.relay_service.claims["db"].route) == 1

            def attack() -> tuple[list[str], bytes]:
                with raw(port) as r:
                    onward = [local(FORWARD_PREFIX + "db")] + [local("x")] * 63
                    r.send(onward, bytes([KIND_DATA]) + b"long")
                    reports = [m.text for m in r.messages(3) if m.kind == 1]
                    # The same link still works: the relay's echo answers.
                    r.send([local("echo")], bytes([KIND_DATA]) + b"still")
                    return reports, r.message().payload

            reports, echoed = await anyio.to_thread.run_sync(attack)
            assert reports == ["no worker 'x' on node db"]
            assert echoed == bytes([KIND_DATA]) + b"still"
            await db_reachable(client, db, rc, "after")

    run(main)
