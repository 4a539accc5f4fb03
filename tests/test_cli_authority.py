"""``tether authority``, ``tether ticket``, ``tether enroll``, ``tether membership`` and ``tether
policy`` driven as a user would, through the real command and node daemons in a temporary
``TETHER_HOME``: an authority with a trusted admin, a ticket, enrollment (by argument and on
stdin), memberships, a policy that the daemon enforces and keeps across a restart, help with an
example for every command, and clear errors with a nonzero exit for bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import tether.cli
from cli_run import Cli

ROLE = 'subject.role = "db-client"'


def test_authority_ticket_enroll_membership_and_policy_flow(cli: Cli) -> None:
    ops = cli.js("node", "create", "ops")["identifier"]
    auth = cli.js("node", "create", "auth", "--tcp-listener", "127.0.0.1:0")
    port = int(auth["listeners"][0]["address"].rsplit(":", 1)[1])
    info = cli.js(
        "authority",
        "create",
        "acme",
        "--at",
        "auth",
        "--trusted",
        f"{ops}=admin=true,team=ops",
        "--credential-ttl",
        "1d",
    )
    assert info["name"] == "acme"
    assert info["identifier"] == auth["identifier"]
    assert info["credential_ttl"] == 86400
    assert info["admin_policy"] == 'subject.admin = "true"'
    assert info["database"].startswith("SqliteShared(")
    assert cli.js("authority", "show", "--at", "auth")["identifier"] == auth["identifier"]
    (admin,) = cli.js("authority", "members", "--at", "auth")
    assert admin["identifier"] == ops
    assert admin["attributes"] == {"admin": "true", "team": "ops"}
    assert admin["added_by"] == "operator"

    t = cli.js(
        "ticket",
        "create",
        "--at",
        "auth",
        "--attribute",
        "role=db-client",
        "--expires-in",
        "5m",
    )
    assert t["ticket"].startswith("tether-ticket1:")
    assert t["authority"] == auth["identifier"]
    assert t["route"] == f"/ip4/127.0.0.1/tcp/{port}"
    assert t["attributes"] == {"role": "db-client"}
    # Without --json the ticket alone is printed: one line to copy.
    plain = cli.run("ticket", "create", "--at", "auth", "--attribute", "role=web").stdout
    assert plain.count("\n") == 1
    assert plain.startswith("tether-ticket1:")

    app = cli.js("node", "create", "app")["identifier"]
    web = cli.js("node", "create", "web")["identifier"]
    db = cli.js("node", "create", "db")["identifier"]
    before = time.time()
    m = cli.js("enroll", t["ticket"], "--at", "app")
    assert m["authority"] == auth["identifier"]
    assert m["attributes"] == {"role": "db-client"}
    assert before + 86400 - 5 <= m["expires_at"] <= time.time() + 86400 + 5
    # From a file (not the command line, where other local users can read it), and stdin below.
    ticket_file = cli.home.parent / "web.ticket"
    ticket_file.write_text(plain)
    human = cli.run("enroll", "--ticket-file", str(ticket_file), "--at", "web").stdout
    assert f"web is a member of {auth['identifier']} with role=web" in human
    db_ticket = cli.js("ticket", "create", "--at", "auth", "--attribute", "role=db")
    cli.js("enroll", "-", "--at", "db", stdin=db_ticket["ticket"] + "\n")

    (held,) = cli.js("membership", "list", "--at", "app")
    assert held["authority"] == auth["identifier"]
    assert held["attributes"] == {"role": "db-client"}
    assert held["credential"] == m["credential"]
    assert held["route"] == t["route"]
    assert held["last_error"] == ""
    assert cli.run("membership", "list", "--at", "auth").stdout.strip() == "no memberships"
    listed = {
        x["identifier"]: x["attributes"] for x in cli.js("authority", "members", "--at", "auth")
    }
    assert listed == {
        ops: {"admin": "true", "team": "ops"},
        app: {"role": "db-client"},
        web: {"role": "web"},
        db: {"role": "db"},
    }

    # A policy on db: its echo service answers only db-clients.
    rule = cli.js("policy", "create", "--at", "db", "--resource-type", "echo", ROLE)
    assert rule["resource"] is None
    assert rule["resource_type"] == "echo"
    assert rule["expression"] == ROLE
    assert cli.js("policy", "list", "--at", "db") == [rule]
    assert cli.js("policy", "show", rule["id"], "--at", "db") == rule
    assert f"{rule['id']}  every echo: {ROLE}" in cli.run("policy", "list", "--at", "db").stdout
    echo = "/node/db/secure/api/service/echo"
    assert cli.run("message", "send", "--at", "app", "--to", echo, "hi").stdout.strip() == "hi"
    cli.fails(
        "message",
        "send",
        "--at",
        "web",
        "--to",
        echo,
        "hi",
        reason=f"echo 'echo' on node db refused {web} by its policy",
    )

    # The policy and the membership survive a restart of db.
    cli.js("node", "stop", "db")
    cli.js("node", "start", "db")
    assert cli.js("policy", "list", "--at", "db") == [rule]
    (kept,) = cli.js("membership", "list", "--at", "db")
    assert kept["attributes"] == {"role": "db"}
    assert cli.run("message", "send", "--at", "app", "--to", echo, "again").stdout.strip() == (
        "again"
    )
    cli.fails("message", "send", "--at", "web", "--to", echo, "x", reason="by its policy")

    assert cli.js("policy", "delete", rule["id"], "--at", "db") == {"deleted": rule["id"]}
    assert cli.js("policy", "list", "--at", "db") == []
    assert cli.run("policy", "list", "--at", "db").stdout.strip() == "no policies"
    assert cli.run("message", "send", "--at", "web", "--to", echo, "ok").stdout.strip() == "ok"

    # A used ticket, and admin removal of a member.
    cli.fails("enroll", t["ticket"], "--at", "ops", reason="already used")
    gone = cli.js("authority", "delete-member", web, "--at", "auth")
    assert gone["deleted"] == web
    assert len(gone["revoked"]) == 1
    added = cli.js("authority", "add-member", web, "--attribute", "role=db-client", "--at", "auth")
    assert added == {"identifier": web, "attributes": {"role": "db-client"}}


def test_bad_input_gets_clear_errors_and_a_nonzero_exit(cli: Cli) -> None:
    cli.js("node", "create", "auth", "--tcp-listener", "127.0.0.1:0")
    cli.js("node", "create", "app")
    cli.js("authority", "create", "acme", "--at", "auth")
    ticket = cli.js("ticket", "create", "--at", "auth")["ticket"]

    cli.fails("enroll", "not-a-ticket", "--at", "app", reason="not a tether ticket")
    cli.fails("enroll", ticket[:-30], "--at", "app", reason="the ticket is damaged")
    cli.fails("enroll", "--at", "app", reason="--ticket-file PATH, or - to read it")
    cli.fails("enroll", "--ticket-file", "/nonexistent/t", "--at", "app", reason="cannot read")

    # A bad policy expression: the reason, the column, and a caret under the problem.
    expression = 'subject.role = "db-client" and or subject.x = "1"'
    err = cli.fails(
        "policy",
        "create",
        "--at",
        "app",
        "--resource",
        "outlet",
        expression,
        reason="expected a condition, got 'or' at column 32",
    )
    lines = err.splitlines()
    k = next(i for i, line in enumerate(lines) if line.strip() == expression)
    assert lines[k + 1].index("^") - lines[k].index(expression) == expression.index(" or ") + 1
    p = cli.run(
        "policy", "create", "--at", "app", "--resource", "x", "subject.role =", "--json", ok=False
    )
    assert p.returncode == 1
    assert "at column 15" in json.loads(p.stdout)["error"]["message"]
    assert cli.js("policy", "list", "--at", "app") == []
    cli.fails(
        "authority",
        "create",
        "again",
        "--at",
        "app",
        "--admin-policy",
        "subject.admin =",
        reason="expected a value, got the end of the policy at column 16",
    )
    cli.fails("authority", "show", "--at", "app", reason="this node runs no authority")

    cli.fails("policy", "show", "policy99", "--at", "app", reason="no policy 'policy99'")
    cli.fails("policy", "delete", "policy99", "--at", "app", reason="no policy 'policy99'")
    cli.fails("policy", "create", "--at", "app", "true", reason="say what the policy is for")

    cli.fails("ticket", "create", "--at", "app", reason="this node runs no authority")
    cli.fails(
        "ticket",
        "create",
        "--at",
        "auth",
        "--usage-count",
        "-1",
        reason="usage count must be 1 to 1000000",
    )
    cli.fails("ticket", "create", "--at", "auth", "--expires-in", "soon", reason="", code=2)
    cli.fails("authority", "create", "acme", "--at", "auth", reason="already runs an authority")
    cli.fails(
        "authority",
        "create",
        "acme",
        "--at",
        "app",
        "--database",
        "mysql://u@h/d",
        reason="unsupported database 'mysql'",
    )
    cli.fails(
        "authority",
        "create",
        "acme",
        "--at",
        "app",
        "--trusted",
        "bad",
        reason="invalid --trusted 'bad'",
        code=2,
    )
    cli.fails(
        "authority",
        "add-member",
        "Inot-an-identifier",
        "--at",
        "auth",
        reason="not an identifier",
    )


def test_a_ticket_with_usage_count_zero_is_refused(cli: Cli) -> None:
    """``--usage-count 0`` asks for a ticket nobody can use: it must be refused like -1, not
    turned into a single-use ticket.

    Fails while the daemon's POST /authority/tickets reads ``int(body.get("usage_count") or
    1)``: 0 is falsy and becomes 1 (``expires_in`` and the authority's ``credential_ttl`` have
    the same ``or default`` pattern: 0 silently becomes the default)."""
    cli.js("node", "create", "auth", "--tcp-listener", "127.0.0.1:0")
    cli.js("authority", "create", "acme", "--at", "auth")
    cli.fails(
        "ticket",
        "create",
        "--at",
        "auth",
        "--usage-count",
        "0",
        reason="usage count must be 1 to 1000000",
    )


COMMANDS = [
    ["authority"],
    ["authority", "create"],
    ["authority", "show"],
    ["authority", "members"],
    ["authority", "add-member"],
    ["authority", "delete-member"],
    ["ticket"],
    ["ticket", "create"],
    ["enroll"],
    ["membership"],
    ["membership", "list"],
    ["policy"],
    ["policy", "create"],
    ["policy", "list"],
    ["policy", "show"],
    ["policy", "delete"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_new_command_has_help_with_an_example(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        tether.cli.main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tether {' '.join(command)}")
    assert "example:\n  tether " in out, out
    example = out.split("example:\n", 1)[1].strip().splitlines()[0]
    assert example.split()[0] == "tether", example


def test_allow_on_listener_and_service_creation_attaches_a_policy(cli: Cli) -> None:
    """`--allow` on the commands that create a listener (and `allow` on the control API's
    services) attaches a policy by name, listed with the others and enforced."""
    from tether.cli.control_client import call

    listener = cli.js("node", "create", "far", "--tcp-listener", "127.0.0.1:0")
    port = listener["listeners"][0]["address"].rpartition(":")[2]
    cli.js("node", "create", "near")
    cli.js("secure-channel-listener", "create", "guarded", "--at", "far", "--allow", ROLE)
    api = Path(cli.js("node", "show", "far")["api"])
    svc = call(api, "POST", "/services", {"kind": "echo", "address": "echo2", "allow": ROLE})
    assert svc["policy"]["resource"] == "echo2"
    policies = {p["resource"]: p for p in cli.js("policy", "list", "--at", "far")}
    assert policies["guarded"]["resource_type"] == "secure-channel-listener"
    assert policies["guarded"]["expression"] == ROLE
    assert policies["echo2"]["resource_type"] == "echo"
    # Enforced: near has no credential, so the listener refuses it in the handshake, and the
    # echo2 service refuses it through the node's own api listener (no policy there).
    cli.fails(
        "secure-channel",
        "create",
        "--at",
        "near",
        "--to",
        f"/ip4/127.0.0.1/tcp/{port}/service/guarded",
        "--authorized",
        listener["identifier"],
        reason="refused by the policy",
    )
    cli.fails(
        "message",
        "send",
        "--at",
        "near",
        "--to",
        f"/ip4/127.0.0.1/tcp/{port}/secure/api/service/echo2",
        "--authorized",
        listener["identifier"],
        "hi",
        reason="refused",
    )
    cli.fails(
        "secure-channel-listener",
        "create",
        "bad",
        "--at",
        "far",
        "--allow",
        "subject.role =",
        reason="column",
    )


def test_enroll_an_identity_with_no_running_node(cli: Cli) -> None:
    """`tether enroll TICKET --identity NAME`: the identity becomes a member; its credential is
    stored and verifies against the authority, whose identity is now known here; a second use of
    the ticket is refused with the authority's reason."""
    cli.js("node", "create", "auth", "--tcp-listener", "127.0.0.1:0")
    cli.js("authority", "create", "acme", "--at", "auth")
    cli.js("identity", "create", "alice")
    ticket = cli.js("ticket", "create", "--at", "auth", "--attribute", "role=ops")["ticket"]
    m = cli.js("enroll", ticket, "--identity", "alice")
    assert m["attributes"] == {"role": "ops"}
    alice = cli.js("identity", "show", "alice")["identifier"]
    members = {
        x["identifier"]: x["attributes"] for x in cli.js("authority", "members", "--at", "auth")
    }
    assert members[alice] == {"role": "ops"}
    held = [c for c in cli.js("credential", "list") if c.get("subject") == alice]
    assert held
    assert held[0]["attributes"] == {"role": "ops"}
    cli.fails("enroll", ticket, "--identity", "alice", reason="already used")
    cli.fails("enroll", ticket, "--identity", "alice", "--at", "auth", reason="not both")


def test_identity_export_secret_and_import_secret(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands that move an identity to another machine: a 0600 file never overwritten,
    the passphrase from TETHER_PASSPHRASE, the same identifier on the other side, a wrong
    passphrase refused."""
    cli.js("identity", "create", "authority")
    secret = tmp_path / "authority.secret"
    monkeypatch.setenv("TETHER_PASSPHRASE", "a long passphrase")
    cli.js("identity", "export-secret", "authority", "--file", str(secret))
    assert secret.stat().st_mode & 0o777 == 0o600
    cli.fails(
        "identity", "export-secret", "authority", "--file", str(secret), reason="never replaced"
    )
    got = Cli(tmp_path / "other").js(
        "identity", "import-secret", "authority", "--file", str(secret)
    )
    assert got["identifier"] == cli.js("identity", "show", "authority")["identifier"]
    monkeypatch.setenv("TETHER_PASSPHRASE", "not the passphrase")
    Cli(tmp_path / "third").fails(
        "identity", "import-secret", "authority", "--file", str(secret), reason="wrong passphrase"
    )


def test_a_member_leaves_and_an_authority_stops_running_or_stopped(cli: Cli) -> None:
    """`membership delete` ends a membership (no credential presented, the authority no longer
    trusted, and it stays gone across a restart); `authority delete` stops an authority, on a
    running node or from a stopped node's saved configuration."""
    cli.run("node", "create", "auth")
    cli.run("node", "create", "app")
    authority = cli.js("authority", "create", "acme", "--at", "auth")["identifier"]
    ticket = cli.js("ticket", "create", "--at", "auth", "--attribute", "role=db-client")
    cli.run("enroll", ticket["ticket"], "--at", "app")
    assert [m["authority"] for m in cli.js("membership", "list", "--at", "app")] == [authority]

    left = cli.js("membership", "delete", authority, "--at", "app")
    assert left == {"deleted": authority}
    assert cli.js("membership", "list", "--at", "app") == []
    # No credential and no trust left: a route through a relay names nobody to expect again.
    cli.fails(
        "message", "send", "--at", "app", "--to", "/node/auth/service/forward_to_x/secure/api",
        "hi", reason="no identity to expect",
    )  # fmt: skip
    cli.fails("membership", "delete", authority, "--at", "app", reason="no membership of")
    cli.run("node", "stop", "app")
    cli.run("node", "start", "app")
    assert cli.js("membership", "list", "--at", "app") == []

    cli.run("authority", "delete", "--at", "auth")
    cli.fails("authority", "show", "--at", "auth", reason="runs no authority")
    cli.fails("ticket", "create", "--at", "auth", reason="runs no authority")
    cli.run("authority", "create", "acme", "--at", "auth")  # taken up again
    cli.run("node", "stop", "auth")
    stopped = cli.run("authority", "delete", "--at", "auth").stdout
    assert "saved configuration" in stopped
    cli.run("node", "start", "auth")
    cli.fails("authority", "show", "--at", "auth", reason="runs no authority")
