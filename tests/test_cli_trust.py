"""Credentials and trust, driven as a user would through the real ``tether`` command and node
daemons in a temporary ``TETHER_HOME``: an authority's members reach an outlet whose policy reads
their attributes once the outlet's node enrolls too; a refusal says why the peer's credential did
not count (an issuer the node does not trust, expired, revoked, forged, someone else's, or an
attribute it lacks) in ``tcp-outlet show``, its ``--json`` and the node's log; what a channel's
peer is granted follows what the node trusts now (enrolling after the channel opened, on either
side, serves the next connection on that same channel; a revocation refuses it); and
``secure-channel list`` shows the peer's attributes as ``role=db-client``. Attackers presenting
forged, expired, stolen or untrusted credentials are refused, each with its precise reason, while
the node goes on serving its members."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import anyio

from cli_run import Cli, echo_server, exchange
from tether.api import Node
from tether.identity.registry import Registry
from tether.identity.trust import ephemeral_identity, trust_identifiers
from tether.store.local import Store
from trio_run import run

HOST = "127.0.0.1"
ROLE = 'subject.role = "db-client"'
OUTLET = "/node/db/secure/api/service/outlet"


def enroll(cli: Cli, node: str, *attributes: str, poll: str | None = None) -> Any:
    """A ticket from the authority at ``auth`` with ``attributes``, presented by ``node``
    (from a file, as the README does)."""
    args = [a for kv in attributes for a in ("--attribute", kv)]
    ticket = cli.js("ticket", "create", "--at", "auth", *args)["ticket"]
    path = cli.home.parent / f"{node}.ticket"
    path.write_text(ticket + "\n")
    extra = ("--poll-interval", poll) if poll else ()
    return cli.js("enroll", "--ticket-file", str(path), "--at", node, *extra)


def channel_with(cli: Cli, node: str, peer: str) -> dict[str, Any]:
    """The one secure channel of ``node`` whose peer is ``peer``."""
    (found,) = [c for c in cli.js("secure-channel", "list", "--at", node) if c["peer"] == peer]
    return dict(found)


def inlet_port(inlet: dict[str, Any]) -> int:
    return int(str(inlet["from"]).rsplit(":", 1)[1])


def wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.2)


def test_the_readme_flow_the_outlet_node_enrolls_too_and_the_refusal_says_why(cli: Cli) -> None:
    """The README's authority example: the client enrolls with a role, the outlet's policy asks
    for it. While the outlet's node trusts no authority, every connection is refused, and the
    refusal says the credential was ignored because that node does not trust its issuer (and
    what to run); once the outlet's node enrolls too, the next connection on the same channel
    is served."""
    auth = cli.js("node", "create", "auth", "--tcp-listener", f"{HOST}:0")
    cli.js("authority", "create", "acme", "--at", "auth")
    cli.js("node", "create", "db", "--tcp-listener", f"{HOST}:0")
    app = cli.js("node", "create", "app")
    with echo_server() as target:
        cli.js("tcp-outlet", "create", "--at", "db", "--to", f"{HOST}:{target}")
        rule = cli.js("policy", "create", "--at", "db", "--resource", "outlet", ROLE)
        member = enroll(cli, "app", "role=db-client")
        inlet = cli.js("tcp-inlet", "create", "--at", "app", "--from", f"{HOST}:0", "--to", OUTLET)
        port = inlet_port(inlet)

        assert exchange(port) == b""
        why = (
            f"credential {member['credential']} from {auth['identifier']} ignored: node db "
            "does not trust that issuer"
        )
        shown = cli.js("tcp-outlet", "show", "outlet", "--at", "db")
        assert shown["refused"] >= 1
        last = shown["last_error"]
        assert why in last, last
        assert "tether enroll --at db --ticket-file" in last  # what to run
        assert f"the policy {rule['id']} " in last  # which policy refused
        assert ROLE in last
        assert f"{app['identifier']} holds no attribute role (its attributes: none)" in last
        assert why in cli.run("tcp-outlet", "show", "outlet", "--at", "db").stdout
        assert why in cli.run("node", "logs", "db").stdout
        # The channel remembers what its peer presented and why it does not count.
        channel = channel_with(cli, "db", app["identifier"])
        assert channel["attributes"] == {}
        assert channel["credentials"] == []
        (ignored,) = channel["ignored"]
        assert ignored.startswith(why)
        listing = cli.run("secure-channel", "list", "--at", "db").stdout
        assert f"peer {app['identifier']}  (responder, " in listing
        assert "attributes: none" in listing
        assert why in listing
        shown_channel = cli.run("secure-channel", "show", channel["address"], "--at", "db").stdout
        assert why in shown_channel

        # The outlet's node enrolls (no attributes needed): the same channel, served now.
        enroll(cli, "db")
        assert exchange(port) == b"ping"
        after = channel_with(cli, "db", app["identifier"])
        assert after["address"] == channel["address"]
        assert after["attributes"] == {"role": "db-client"}
        assert after["credentials"] == [member["credential"]]
        assert after["ignored"] == []
        listing = cli.run("secure-channel", "list", "--at", "db").stdout
        assert "attributes: role=db-client" in listing
        assert "{" not in listing  # attributes never print as a Python dict
        assert exchange(port, b"again") == b"again"
        assert cli.js("tcp-outlet", "show", "outlet", "--at", "db")["refused"] == shown["refused"]


def test_a_client_enrolled_after_its_channel_opened_is_served_on_it_until_revoked(
    cli: Cli,
) -> None:
    """The client has no credential when its channel opens: refused, with the reason (it
    presented none; the policy reads an attribute it lacks). It enrolls: it presents the new
    credential on its open channels, and the next connection on that channel is served (and
    its own end of the channel, opened before it trusted the authority, now honours the outlet
    node's credential too). Its authority then deletes it (revoking the credential): once the
    outlet's node learns the revocation, the client is refused again, saying so."""
    cli.js("node", "create", "auth", "--tcp-listener", f"{HOST}:0")
    cli.js("authority", "create", "acme", "--at", "auth")
    cli.js("node", "create", "db", "--tcp-listener", f"{HOST}:0")
    app = cli.js("node", "create", "app")["identifier"]
    db = enroll(cli, "db", "role=db-server", poll="1")
    with echo_server() as target:
        cli.js("tcp-outlet", "create", "--at", "db", "--to", f"{HOST}:{target}", "--allow", ROLE)
        inlet = cli.js("tcp-inlet", "create", "--at", "app", "--from", f"{HOST}:0", "--to", OUTLET)
        port = inlet_port(inlet)

        assert exchange(port) == b""
        last = cli.js("tcp-outlet", "show", "outlet", "--at", "db")["last_error"]
        assert f"{app} presented no credential" in last, last
        assert f"{app} holds no attribute role (its attributes: none)" in last
        before = channel_with(cli, "db", app)
        # The client's end of that channel (it opened it) trusted no authority either.
        db_id = cli.js("node", "show", "db")["identifier"]
        (mine,) = channel_with(cli, "app", db_id)["ignored"]
        assert f"credential {db['credential']} from " in mine
        assert "ignored: node app does not trust that issuer" in mine

        member = enroll(cli, "app", "role=db-client")
        assert "  role=db-client  until " in cli.run("membership", "list", "--at", "app").stdout
        assert exchange(port) == b"ping"
        after = channel_with(cli, "db", app)
        assert after["address"] == before["address"]
        assert after["attributes"] == {"role": "db-client"}
        assert channel_with(cli, "app", db_id)["attributes"] == {"role": "db-server"}

        gone = cli.js("authority", "delete-member", app, "--at", "auth")
        assert gone["revoked"] == [member["credential"]]
        wait_for(lambda: exchange(port) == b"", "the revoked client is refused")
        last = cli.js("tcp-outlet", "show", "outlet", "--at", "db")["last_error"]
        assert f"credential {member['credential']} from " in last, last
        assert "ignored: its authority revoked it" in last
        assert channel_with(cli, "db", app)["attributes"] == {}


def test_attributes_print_as_key_value_everywhere(cli: Cli) -> None:
    """Members, memberships, enrollment and credentials print attributes as ``role=db-client``
    (sorted, comma separated), never as a Python dict."""
    cli.js("node", "create", "auth", "--tcp-listener", f"{HOST}:0")
    cli.js("authority", "create", "acme", "--at", "auth")
    cli.js("node", "create", "app")
    ticket = cli.js(
        "ticket", "create", "--at", "auth", "--attribute", "team=ops", "--attribute", "role=web"
    )["ticket"]
    out = cli.run("enroll", "-", "--at", "app", stdin=ticket).stdout
    assert "with role=web, team=ops" in out, out
    outputs = [
        out,
        cli.run("membership", "list", "--at", "app").stdout,
        cli.run("authority", "members", "--at", "auth").stdout,
    ]
    assert "role=web, team=ops" in outputs[1]
    assert "role=web, team=ops" in outputs[2]
    cli.run("identity", "create", "issuer")
    subject = cli.js("identity", "create", "someone")["identifier"]
    cli.run(
        "credential", "issue", "--issuer", "issuer", "--for", subject,
        "--attribute", "role=db-client", "--ttl", "1d",
    )  # fmt: skip
    listed = cli.run("credential", "list").stdout
    assert "role=db-client" in listed
    outputs.append(listed)
    for text in outputs:
        assert "{'" not in text, text


# --- attackers ------------------------------------------------------------------------------


def test_forged_expired_stolen_and_untrusted_credentials_are_refused_each_with_its_reason(
    cli: Cli,
) -> None:
    """Attackers (nodes of their own, with a TCP connection to the outlet's node) present a
    credential with the role the outlet asks for: one with its attributes altered after issue,
    one that expired, one issued to someone else, one from an issuer the node does not trust.
    Each is refused, ``tcp-outlet show`` names the credential and the precise reason, and the
    outlet goes on serving the real member."""
    role = {"role": "db-client"}
    forger, late, thief, stranger = (ephemeral_identity() for _ in range(4))
    # The authority's identity and its credential-signing key are made two hours in the past,
    # so that it can have issued a credential that has expired since.
    past = Registry(Store(cli.home), clock=lambda: time.time() - 7200)
    past.create_identity("acme")
    expired = past.issue_credential("acme", late.identity.identifier, role, 600)
    registry = Registry(Store(cli.home))
    registry.create_identity("rogue")
    db = cli.js("node", "create", "db", "--tcp-listener", f"{HOST}:0")
    db_port = int(db["listeners"][0]["address"].rsplit(":", 1)[1])
    cli.js("node", "create", "auth", "--tcp-listener", f"{HOST}:0", "--identity", "acme")
    cli.js("authority", "create", "acme", "--at", "auth")
    app = cli.js("node", "create", "app")["identifier"]
    enroll(cli, "db")
    enroll(cli, "app", "role=db-client")
    issued = registry.issue_credential("acme", forger.identity.identifier, {"role": "web"}, 3600)
    cases = [
        (
            "forged",
            forger,
            dataclasses.replace(issued, attributes=role),
            "it does not verify: the credential's signature does not verify: it was altered "
            "after issue",
        ),
        ("expired", late, expired, "it expired at "),
        (
            "stolen",
            thief,
            registry.issue_credential("acme", app, role, 3600),
            f"it does not verify: the credential is about {app}, not {thief.identity.identifier}",
        ),
        (
            "untrusted",
            stranger,
            registry.issue_credential("rogue", stranger.identity.identifier, role, 3600),
            "node db does not trust that issuer",
        ),
    ]
    with echo_server() as target:
        cli.js("tcp-outlet", "create", "--at", "db", "--to", f"{HOST}:{target}", "--allow", ROLE)
        inlet = cli.js("tcp-inlet", "create", "--at", "app", "--from", f"{HOST}:0", "--to", OUTLET)
        port = inlet_port(inlet)
        assert exchange(port) == b"ping"
        for label, attacker, presented, reason in cases:
            identity = dataclasses.replace(attacker, credentials=(presented,))
            run(functools.partial(attack, identity, db_port, db["identifier"]))
            last = cli.js("tcp-outlet", "show", "outlet", "--at", "db")["last_error"]
            assert f"{attacker.identity.identifier} is refused by " in last, (label, last)
            assert f"credential {presented.id} from {presented.issuer} ignored: {reason}" in last, (
                label,
                last,
            )
            assert exchange(port) == b"ping", label  # the member is still served
        logs = cli.run("node", "logs", "db").stdout
        assert "altered after issue" in logs
        assert "does not trust that issuer" in logs


async def attack(identity: Any, port: int, db: str) -> None:
    """A node of the attacker's with ``identity`` opens a portal to the outlet at ``port``
    (whose node is ``db``) and tries one connection through it: refused."""
    async with Node("mallory", identity=identity) as node:
        inlet = await node.create_tcp_inlet(
            f"{HOST}:0",
            f"/ip4/{HOST}/tcp/{port}/secure/api/service/outlet",
            trust=trust_identifiers(db),
        )
        got = await anyio.to_thread.run_sync(exchange, inlet.port)
        assert got == b"", got
        node.task_group.cancel_scope.cancel()
