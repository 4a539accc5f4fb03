"""``tether policy`` and the policies of a node's resources, driven as a user would, through the
real command and node daemons in a temporary ``TETHER_HOME``:

* every policy that applies must allow: a tcp-outlet's own ``--allow`` does not override a
  type-wide ``--resource-type tcp-outlet`` policy that refuses the caller (nor one attached to
  its name); with all of them satisfied the caller is served;
* a refusal names the policy that refused (its name and its expression) in ``tcp-outlet show``,
  its ``--json`` and the node's log; the same rule for a secure-channel listener (the refusal
  reaches the peer that opened the channel) and for a service;
* ``show`` prints the effective policy: every policy that applies and how they combine;
* policy names are sequential (policy1, policy2, …), never reused after a delete, and stable
  across a restart of the node;
* a policy with an unquoted text value is refused with a hint that adds the quotes.
"""

from __future__ import annotations

import json

import pytest

from cli_run import Cli, exchange

ADMIN = 'subject.role = "admin"'


def test_every_applicable_policy_must_allow_and_a_refusal_names_it(
    cli: Cli, echo_port: int
) -> None:
    db = cli.js("node", "create", "db", "--tcp-listener", "127.0.0.1:0")["identifier"]
    app = cli.js("node", "create", "app")["identifier"]
    me = f'subject.identifier = "{app}"'
    outlet = cli.js(
        "tcp-outlet", "create", "--at", "db", "--to", f"127.0.0.1:{echo_port}", "--allow", me
    )
    assert outlet["policy"]["combine"] == "all"
    assert outlet["policy"]["policies"] == [
        {"id": None, "applies_to": "its --allow (tcp-outlet 'outlet')", "expression": me}
    ]
    inlet = cli.js(
        "tcp-inlet",
        "create",
        "--at",
        "app",
        "--from",
        "127.0.0.1:0",
        "--to",
        "/node/db/secure/api/service/outlet",
        "--authorized",
        db,
    )
    port = int(inlet["from"].rsplit(":", 1)[1])
    assert exchange(port) == b"ping"  # its --allow admits app: served

    # A type-wide policy that refuses app: the outlet's own --allow does not override it.
    floor = cli.js("policy", "create", "--at", "db", "--resource-type", "tcp-outlet", ADMIN)
    assert floor["name"] == floor["id"] == "policy1"
    assert exchange(port) == b""
    shown = cli.js("tcp-outlet", "show", "outlet", "--at", "db")
    assert shown["refused"] == 1
    assert shown["total"] == 1
    refusal = f"{app} is refused by the policy policy1 (every tcp-outlet): {ADMIN}"
    assert shown["last_error"].startswith(refusal)  # then why its credentials did not count
    assert [p["id"] for p in shown["policy"]["policies"]] == ["policy1", None]
    assert shown["policy"]["expression"] == f"({ADMIN}) and ({me})"
    human = cli.run("tcp-outlet", "show", "outlet", "--at", "db").stdout
    assert "policy: every one of these must allow the peer" in human
    assert f"policy1 (every tcp-outlet): {ADMIN}" in human
    assert f"its --allow (tcp-outlet 'outlet'): {me}" in human
    assert f"last error: {refusal}" in human
    assert refusal in cli.run("node", "logs", "db").stdout

    # One that allows app instead: both satisfied, served. policy1's name is not given again.
    cli.run("policy", "delete", "policy1", "--at", "db")
    floor = cli.js("policy", "create", "--at", "db", "--resource-type", "tcp-outlet", me)
    assert floor["id"] == "policy2"
    assert exchange(port) == b"ping"

    # A policy attached to the outlet's name applies too, with the other two.
    named = cli.js(
        "policy",
        "create",
        "--at",
        "db",
        "--resource",
        "outlet",
        "--resource-type",
        "tcp-outlet",
        ADMIN,
    )
    assert named["id"] == "policy3"
    assert exchange(port) == b""
    shown = cli.js("tcp-outlet", "show", "outlet", "--at", "db")
    assert shown["last_error"].startswith(
        f"{app} is refused by the policy policy3 (tcp-outlet 'outlet'): {ADMIN}"
    )
    assert [p["id"] for p in shown["policy"]["policies"]] == ["policy2", "policy3", None]
    listed = cli.js(
        "policy", "list", "--at", "db", "--resource", "outlet", "--resource-type", "tcp-outlet"
    )
    assert [p["id"] for p in listed] == ["policy2", "policy3"]
    assert (
        "must allow"
        in cli.run(
            "policy", "list", "--at", "db", "--resource", "outlet", "--resource-type", "tcp-outlet"
        ).stdout
    )
    # A policy for another resource does not apply to this one.
    cli.js("policy", "create", "--at", "db", "--resource", "other", ADMIN)  # policy4
    cli.run("policy", "delete", "policy3", "--at", "db")
    assert exchange(port) == b"ping"
    assert cli.js("tcp-outlet", "show", "outlet", "--at", "db")["total"] == 3  # served

    # Names stay as they are across a restart, and the next one is the next number.
    cli.run("node", "stop", "db")
    cli.run("node", "start", "db")
    assert [p["id"] for p in cli.js("policy", "list", "--at", "db")] == ["policy2", "policy4"]
    assert cli.js("policy", "create", "--at", "db", "--resource", "x", "true")["id"] == "policy5"
    cli.run("policy", "delete", "policy5", "--at", "db")
    cli.run("node", "stop", "db")
    cli.run("node", "start", "db")
    assert cli.js("policy", "create", "--at", "db", "--resource", "x", "true")["id"] == "policy6"
    human = cli.run("policy", "create", "--at", "db", "--resource", "y", "true").stdout
    assert human.startswith("created policy7  y: true\n"), human


def test_listener_and_service_policies_combine(cli: Cli) -> None:
    """A secure-channel listener's --allow and a type-wide policy both apply: the peer the
    type-wide one refuses gets no channel, and the refusal it gets names that policy;
    ``secure-channel-listener show`` prints both. A service: its kind's policy and its name's."""
    db = cli.js("node", "create", "db", "--tcp-listener", "127.0.0.1:0")["identifier"]
    app = cli.js("node", "create", "app")["identifier"]
    me = f'subject.identifier = "{app}"'
    cli.js("secure-channel-listener", "create", "guarded", "--at", "db", "--allow", me)
    floor = cli.js(
        "policy", "create", "--at", "db", "--resource-type", "secure-channel-listener", ADMIN
    )
    shown = cli.js("secure-channel-listener", "show", "guarded", "--at", "db")
    assert [(p["id"], p["expression"]) for p in shown["policy"]["policies"]] == [
        (floor["id"], ADMIN),
        ("policy1", me),
    ]
    human = cli.run("secure-channel-listener", "show", "guarded", "--at", "db").stdout
    assert f"{floor['id']} (every secure-channel-listener): {ADMIN}" in human
    assert f"policy1 (secure-channel-listener 'guarded'): {me}" in human
    assert "every one of these must allow" in human
    err = cli.fails(
        "secure-channel",
        "create",
        "--at",
        "app",
        "--to",
        "/node/db/service/guarded",
        "--authorized",
        db,
        reason=f"the policy {floor['id']} (every secure-channel-listener): {ADMIN}",
    )
    assert "policy1" not in err  # the --allow admitted app: only the refusing one is named
    # Every listener gets the type-wide policy: the api listener too.
    api = cli.js("secure-channel-listener", "show", "api", "--at", "db")
    assert [p["id"] for p in api["policy"]["policies"]] == [floor["id"]]
    cli.run("policy", "delete", floor["id"], "--at", "db")
    cli.js(
        "secure-channel",
        "create",
        "--at",
        "app",
        "--to",
        "/node/db/service/guarded",
        "--authorized",
        db,
    )

    # The echo service: a policy on its kind that admits app, and one on its name that does not.
    cli.js("policy", "create", "--at", "db", "--resource-type", "echo", me)
    sent = cli.js(
        "message", "send", "--at", "app", "--to", "/node/db/secure/api/service/echo", "hi"
    )
    assert sent["reply"] == "hi"
    named = cli.js("policy", "create", "--at", "db", "--resource", "echo", ADMIN)
    cli.fails(
        "message",
        "send",
        "--from",
        "app",
        "--to",
        "/node/db/secure/api/service/echo",
        "hi",
        reason=f"echo 'echo' on node db refused {app} by its policy",
    )
    log = cli.run("node", "logs", "db").stdout
    assert f"{app} is refused by the policy {named['id']} (resource 'echo'): {ADMIN}" in log


def test_an_unquoted_value_is_refused_with_a_hint(cli: Cli) -> None:
    cli.js("node", "create", "db")
    err = cli.fails(
        "policy",
        "create",
        "--at",
        "db",
        "--resource-type",
        "tcp-outlet",
        "subject.role = db-client",
        reason="quote text values at column 16",
    )
    assert 'did you mean subject.role = "db-client"?' in err
    assert len(err.strip().splitlines()) <= 5, err
    p = cli.run(
        "policy",
        "create",
        "--at",
        "db",
        "--resource-type",
        "tcp-outlet",
        "subject.role = db-client",
        "--json",
        ok=False,
    )
    assert p.returncode == 1
    message = json.loads(p.stdout)["error"]["message"]
    assert message.endswith('\ndid you mean subject.role = "db-client"?'), message
    cli.fails(
        "tcp-outlet",
        "create",
        "--at",
        "db",
        "--to",
        "127.0.0.1:5432",
        "--allow",
        "subject.team member? [ops, dev]",
        reason='did you mean ["ops", "dev"]?',
    )
    # Nothing was created, and no number was used up by the refusals.
    assert cli.js("policy", "list", "--at", "db") == []
    assert cli.js("policy", "create", "--at", "db", "--resource", "x", "true")["id"] == "policy1"


@pytest.mark.parametrize(
    "command",
    [["policy", "create"], ["policy", "list"], ["secure-channel-listener", "show"]],
    ids=" ".join,
)
def test_help_has_an_example(cli: Cli, command: list[str]) -> None:
    out = cli.run(*command, "--help").stdout
    assert "example:\n  tether " in out, out
