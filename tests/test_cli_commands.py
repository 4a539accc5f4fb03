"""Consistent commands, driven through the real ``tether`` command and node daemons in a
temporary ``TETHER_HOME``: ``--at`` always names the node a resource lives on (a relay's route
is ``--relay``), ``--name`` names outlets as it does inlets, and each old spelling still works for
one release with a one-line note on stderr; a mistake in a command prints that command's usage;
validation reports the first real mistake, before any state is looked at; durations need a
unit; a ticket says when it expires, and garbage is "not a ticket"."""

from __future__ import annotations

import json
import shlex
import socket
import time
from pathlib import Path
from typing import Any

from cli_run import Cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new(cli: Cli, command: str, stdin: str | None = None) -> Any:
    """``tether COMMAND --json`` in today's spelling: it works and notes nothing."""
    p = cli.run(*shlex.split(command), "--json", stdin=stdin)
    assert "deprecated" not in p.stderr, (command, p.stderr)
    return json.loads(p.stdout)


def old(cli: Cli, command: str, *notes: str) -> Any:
    """``tether COMMAND --json`` in last release's spelling: it works, with one line on stderr
    for each old option (``notes``)."""
    p = cli.run(*shlex.split(command), "--json")
    lines = [line for line in p.stderr.splitlines() if "deprecated" in line]
    assert len(lines) == len(notes), (command, p.stderr)
    for note in notes:
        assert [line for line in lines if note in line and "the next release" in line], note
    return json.loads(p.stdout)


def usage_error(cli: Cli, command: str | list[str], usage: str, reason: str) -> str:
    """A usage mistake: exit 2, the usage of ``usage`` (the command it was made in, never the
    top-level one unless it was made there), and ``reason``."""
    args = shlex.split(command) if isinstance(command, str) else command
    err = cli.fails(*args, reason=reason, code=2)
    assert err.startswith(f"usage: tether {usage} " if usage else "usage: tether [-h]"), err
    assert len(err.splitlines()) <= 8, err  # the usage and one line: no help text, no traceback
    return err


TO_AT = "--to is deprecated, use --at"
FROM_AT = "--from is deprecated, use --at"


def test_relay_at_names_the_claiming_node_and_relay_the_route(cli: Cli) -> None:
    port = _free_port()
    cli.run("node", "create", "relay", "--tcp-listener", f"127.0.0.1:{port}")
    protected = cli.js("node", "create", "protected", "--no-tcp-listener")
    claimer = f'subject.identifier = "{protected["identifier"]}"'
    cli.run("policy", "create", "--at", "relay", "--resource-type", "relay", claimer)

    assert new(cli, "relay create db --relay /node/relay --at protected")["name"] == "db"
    assert [r["name"] for r in new(cli, "relay list --at protected")] == ["db"]
    shown = new(cli, "relay show db --at protected")
    assert shown["forward_route"].endswith("/service/forward_to_db")

    # Last release's spelling: --to was the claiming node, --at the relay's route.
    assert [r["name"] for r in old(cli, "relay list --to protected", TO_AT)] == ["db"]
    assert old(cli, "relay show db --to=protected", TO_AT) == shown
    old(cli, "relay delete db --to protected", TO_AT)
    assert new(cli, "relay list --at protected") == []
    again = old(
        cli,
        "relay create db --at /node/relay --to protected",
        "--at ROUTE is deprecated, use --relay ROUTE",
        TO_AT,
    )
    assert again["name"] == "db"
    new(cli, "relay delete db --at protected")

    # A secure channel lives on a node too: --at, as in `secure-channel list`.
    now = new(cli, "secure-channel create --at protected --to /node/relay/service/api")
    then = old(cli, "secure-channel create --from protected --to /node/relay/service/api", FROM_AT)
    listed = {c["address"] for c in new(cli, "secure-channel list --at protected")}
    assert {now["address"], then["address"]} <= listed


def test_outlets_and_inlets_are_named_with_name_and_messages_sent_at_a_node(cli: Cli) -> None:
    cli.run("node", "create", "n1")
    target = f"127.0.0.1:{_free_port()}"
    assert new(cli, f"tcp-outlet create --at n1 --to {target} --name db")["name"] == "db"
    then = old(
        cli,
        f"tcp-outlet create --at n1 --to {target} --from db2",
        "--from is deprecated, use --name",
    )
    assert then["name"] == "db2"
    route = "/node/n1/secure/api/service/db"
    inlet = new(cli, f"tcp-inlet create --at n1 --from 127.0.0.1:0 --to {route} --name web")
    assert inlet["name"] == "web"
    assert {o["name"] for o in new(cli, "tcp-outlet list --at n1")} == {"db", "db2"}
    assert [i["name"] for i in new(cli, "tcp-inlet list --at n1")] == ["web"]

    # The node a message is sent from is --at, as everywhere (--from is where an inlet listens).
    assert new(cli, "message send --at n1 --to /service/echo hi")["reply"] == "hi"
    assert old(cli, "message send --from n1 --to /service/echo again", FROM_AT)["reply"] == "again"


def test_tickets_and_enrollment_name_the_node_with_at(cli: Cli) -> None:
    cli.run("node", "create", "auth")
    cli.run("node", "create", "app")
    cli.run("authority", "create", "acme", "--at", "auth")

    start = int(time.time())
    ticket = new(cli, "ticket create --at auth --expires-in 5m")
    end = int(time.time())
    assert start + 300 <= ticket["expires_at"] <= end + 300  # epoch seconds
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ticket["expires_at"]))
    assert ticket["expires"] == iso
    member = new(cli, "enroll - --at app", stdin=ticket["ticket"])
    (membership,) = new(cli, "membership list --at app")
    assert membership["authority"] == member["authority"]

    # --relay is a relay's route (`relay create`): the relay name a ticket grants is --relay-name.
    assert new(cli, "ticket create --at auth --relay-name db")["attributes"] == {"relay": "db"}
    named = old(
        cli, "ticket create --at auth --relay db", "--relay is deprecated, use --relay-name"
    )
    assert named["attributes"] == {"relay": "db"}

    then = old(cli, "ticket create --authority auth", "--authority is deprecated, use --at")
    again = old(cli, f"enroll {then['ticket']} --node app", "--node is deprecated, use --at")
    assert again["authority"] == member["authority"]


def test_a_mistake_in_a_command_prints_that_commands_usage(cli: Cli) -> None:
    unknown = "unrecognized arguments: --bogus"
    usage_error(cli, "tcp-inlet create --bogus", "tcp-inlet create", unknown)
    usage_error(cli, "relay list --bogus x", "relay list", unknown)
    usage_error(cli, "relay --bogus", "relay", unknown)
    usage_error(cli, "--bogus", "", unknown)
    # A misspelt option is the mistake, not the option it was meant to be.
    err = usage_error(
        cli,
        "tcp-inlet create --form 127.0.0.1:0 --to /service/outlet",
        "tcp-inlet create",
        "unrecognized arguments: --form",
    )
    assert "required" not in err
    usage_error(cli, "tcp-outlet create --at n1", "tcp-outlet create", "required: --to")
    usage_error(cli, "message send --to /service/echo hi", "message send", "required: --at")
    # --at is a node now: a relay's route must be given as --relay.
    usage_error(cli, "relay create db --at protected", "relay create", "required: --relay")


def test_validation_reports_the_first_real_mistake(cli: Cli) -> None:
    cli.run("node", "create", "n1")
    cli.run("tcp-outlet", "create", "--at", "n1", "--to", "127.0.0.1:5432")  # named outlet
    outlet = "/node/n1/secure/api/service/outlet"
    new(cli, f"tcp-inlet create --at n1 --from 127.0.0.1:0 --to {outlet} --name i1")

    outlet_cases = [
        (["--to", "127.0.0.1"], "--to '127.0.0.1': the port is missing; use HOST:PORT"),
        (["--to", ":5432"], "the host is missing"),
        (["--to", "127.0.0.1:0"], "the port must be 1 to 65535"),
        (["--to", "127.0.0.1:5432", "--name", "a b"], "invalid tcp-outlet name 'a b'"),
        (["--to", "127.0.0.1:5432", "--allow", "subject.role ="], "subject.role ="),
    ]
    for args, reason in outlet_cases:
        err = cli.fails("tcp-outlet", "create", "--at", "n1", *args, reason=reason)
        assert "already" not in err, (args, err)
    inlet_cases = [
        (["--from", "127.0.0.1", "--to", outlet], "--from '127.0.0.1': the port is missing"),
        (["--from", "127.0.0.1:0", "--to", "/node/n1/bogus"], "bad route '/node/n1/bogus'"),
        (["--from", "127.0.0.1:0", "--to", outlet, "--allow", "subject.role ="], "subject.role ="),
    ]
    for args, reason in inlet_cases:
        err = cli.fails("tcp-inlet", "create", "--at", "n1", "--name", "i1", *args, reason=reason)
        assert "already" not in err, (args, err)

    # The arguments are checked before the node is looked for.
    cases = [
        ("secure-channel create --at ghost --to /bogus", "bad route '/bogus'"),
        ("message send --at ghost --to service/echo x", "bad route 'service/echo'"),
        ("relay create db --relay relay --at ghost", "bad route 'relay'"),
        ("enroll tether-ticket1:garbage --at ghost", "not a ticket"),
    ]
    for command, reason in cases:
        err = cli.fails(*shlex.split(command), reason=reason)
        assert "ghost" not in err, err


def test_garbage_is_not_a_ticket(cli: Cli, tmp_path: Path) -> None:
    err = cli.fails("enroll", "tether-ticket1:garbage", reason="not a ticket")
    assert "version" not in err
    cli.fails("enroll", "garbage", reason="not a tether ticket")
    path = tmp_path / "ticket.txt"
    path.write_text("what I meant to paste\n")
    cli.fails("enroll", str(path), reason="is a file; read the ticket from it with --ticket-file")
    cli.fails("enroll", "--ticket-file", str(path), reason="not a tether ticket")


def test_durations_need_a_unit(cli: Cli) -> None:
    cases = [
        ("ticket create --expires-in 10", "10"),
        ("authority create acme --credential-ttl 30", "30"),
        (f"credential issue --issuer x --for I{'0' * 40} --ttl 90", "90"),
    ]
    for command, value in cases:
        usage = " ".join(command.split()[:2])
        usage_error(cli, command, usage, f"invalid duration '{value}': give a unit, e.g. {value}s")
    usage_error(
        cli, "ticket create --expires-in soon", "ticket create", "use a positive number with s, m"
    )
