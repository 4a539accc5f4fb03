"""No saved state may wedge a node, driven through the real ``tether`` command and node daemons
in a temporary ``TETHER_HOME``:

* a node always starts: a saved resource that cannot start (its route names a node that is
  deleted or stopped, its port is taken, its identity is gone, its relay refuses the claim, its
  policy no longer parses) waits in the state ``error`` that ``list``/``show`` (human and
  ``--json``) and ``node show``/``node list`` report, is retried, and can be deleted;
* an inlet whose target node comes back (on another port) starts, and carries connections;
* a resource is deleted from a stopped node's saved configuration;
* ``identity delete`` refuses while a node (or its authority) uses the identity, saying which;
  with ``--force`` the node still starts, and says what is missing.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from cli_run import Cli, exchange

OUTLET = "/secure/api/service/outlet"


def eventually(check: Callable[[], Any], what: str, deadline: float = 90.0) -> Any:
    """Poll ``check`` until it returns something true (a deadline only to fail, never timed)."""
    end = time.monotonic() + deadline
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def waiting(cli: Cli, node: str) -> dict[tuple[str, str], str]:
    """``node show``'s resources that did not start: (kind, name) → why."""
    return {(w["resource"], w["name"]): w["error"] for w in cli.js("node", "show", node)["waiting"]}


def test_a_node_starts_when_its_inlet_names_a_deleted_node(cli: Cli) -> None:
    cli.run("node", "create", "app")
    cli.run("node", "create", "db")
    route = f"/node/db{OUTLET}"
    inlet = cli.js("tcp-inlet", "create", "--at", "app", "--from", "127.0.0.1:0", "--to", route)
    cli.run("node", "stop", "app")
    cli.run("node", "delete", "db")

    started = cli.run("node", "start", "app").stdout
    assert "not started: tcp-inlet inlet1: no node named 'db'" in started
    shown = cli.js("tcp-inlet", "show", "inlet1", "--at", "app")
    assert shown["state"] == "error"
    assert "no node named 'db'" in shown["last_error"]
    assert shown["from"] == inlet["from"]
    assert shown["to"] == route
    assert [i["name"] for i in cli.js("tcp-inlet", "list", "--at", "app")] == ["inlet1"]
    human = cli.run("tcp-inlet", "list", "--at", "app").stdout
    assert "(error)" in human
    assert "last error: no node named 'db'" in human
    assert "no node named 'db'" in waiting(cli, "app")[("tcp-inlet", "inlet1")]
    listed = cli.js("node", "list")[0]
    assert listed["running"] is True
    assert listed["waiting"][0]["name"] == "inlet1"
    assert "1 not started" in cli.run("node", "list").stdout

    # A second inlet does not take the waiting one's name.
    cli.run("node", "create", "other")
    other = f"/node/other{OUTLET}"
    second = cli.js("tcp-inlet", "create", "--at", "app", "--from", "127.0.0.1:0", "--to", other)
    assert second["name"] == "inlet2"
    cli.fails(
        "tcp-inlet", "create", "--at", "app", "--from", "127.0.0.1:0", "--to", other,
        "--name", "inlet1",
        reason="already has a tcp-inlet 'inlet1', saved but not running",
    )  # fmt: skip

    # It can be deleted, and stays deleted across a restart.
    assert cli.js("tcp-inlet", "delete", "inlet1", "--at", "app") == {"deleted": "inlet1"}
    cli.fails("tcp-inlet", "show", "inlet1", "--at", "app", reason="no tcp-inlet 'inlet1'")
    assert waiting(cli, "app") == {}
    cli.run("node", "stop", "app")
    cli.run("node", "start", "app")
    assert [i["name"] for i in cli.js("tcp-inlet", "list", "--at", "app")] == ["inlet2"]


def test_a_waiting_inlet_starts_when_its_node_comes_back(cli: Cli, echo_port: int) -> None:
    cli.run("node", "create", "app")
    cli.run("node", "create", "db")  # its listener: any free port, another one at each start
    cli.run("tcp-outlet", "create", "--at", "db", "--to", f"127.0.0.1:{echo_port}")
    inlet = cli.js(
        "tcp-inlet", "create", "--at", "app", "--from", "127.0.0.1:0", "--to", f"/node/db{OUTLET}"
    )
    port = int(inlet["from"].rsplit(":", 1)[1])
    assert exchange(port) == b"ping"
    cli.run("node", "stop", "app")
    cli.run("node", "stop", "db")

    cli.run("node", "start", "app")
    shown = cli.js("tcp-inlet", "show", "inlet1", "--at", "app")
    assert shown["state"] == "error"
    assert "node 'db' is not running (`tether node start db`)" in shown["last_error"]
    assert shown["retrying"] is True

    cli.run("node", "start", "db")
    eventually(
        lambda: cli.js("tcp-inlet", "show", "inlet1", "--at", "app")["state"] == "listening",
        "the inlet starts once db runs",
    )
    assert waiting(cli, "app") == {}
    assert exchange(port) == b"ping"
    assert "tcp-inlet inlet1 started" in cli.run("node", "logs", "app").stdout

    # db restarts elsewhere (a new port): the inlet follows it, as a relay follows its node.
    before = cli.port("db")
    cli.run("node", "stop", "db")
    cli.run("node", "start", "db")
    assert cli.port("db") != before
    assert exchange(port) == b"ping"


def test_resources_are_deleted_from_a_stopped_node(cli: Cli) -> None:
    n1 = cli.js("node", "create", "n1")["identifier"]
    cli.run("node", "create", "n2")
    claims = f'subject.identifier = "{n1}"'
    cli.run("policy", "create", "--at", "n2", "--resource-type", "relay", claims)
    cli.run("tcp-outlet", "create", "--at", "n1", "--to", "127.0.0.1:5432", "--name", "db")
    cli.run(
        "tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0", "--to", f"/node/n2{OUTLET}"
    )
    cli.run("secure-channel-listener", "create", "extra", "--at", "n1")
    policy = cli.js("policy", "create", "--at", "n1", "--resource", "db", "true")["id"]
    cli.run("relay", "create", "r1", "--relay", "/node/n2", "--at", "n1")
    cli.run("node", "stop", "n1")

    for args in (
        ("tcp-outlet", "delete", "db"),
        ("tcp-inlet", "delete", "inlet1"),
        ("secure-channel-listener", "delete", "extra"),
        ("policy", "delete", policy),
        ("relay", "delete", "r1"),
    ):
        out = cli.run(*args, "--at", "n1").stdout
        assert "from n1's saved configuration" in out, (args, out)
    cli.fails(
        "tcp-inlet", "delete", "inlet1", "--at", "n1",
        reason="node 'n1' is stopped and has no tcp-inlet 'inlet1' saved",
    )  # fmt: skip
    # Still a clear line where a stopped node cannot answer.
    cli.fails("tcp-inlet", "list", "--at", "n1", reason="`tether node start n1`")

    cli.run("node", "start", "n1")
    assert cli.js("tcp-outlet", "list", "--at", "n1") == []
    assert cli.js("tcp-inlet", "list", "--at", "n1") == []
    assert cli.js("relay", "list", "--at", "n1") == []
    assert [p["id"] for p in cli.js("policy", "list", "--at", "n1")] == []
    listeners = cli.js("secure-channel-listener", "list", "--at", "n1")
    assert [lst["address"] for lst in listeners] == ["api"]


def test_a_taken_port_leaves_the_node_up_and_is_retried(cli: Cli) -> None:
    port, inlet_port = free_port(), free_port()
    cli.run("node", "create", "n1", "--tcp-listener", f"127.0.0.1:{port}")
    cli.run("node", "create", "n2")
    cli.run(
        "tcp-inlet", "create", "--at", "n1", "--from", f"127.0.0.1:{inlet_port}",
        "--to", f"/node/n2{OUTLET}",
    )  # fmt: skip
    cli.run("node", "stop", "n1")
    squatters = []
    for p in (port, inlet_port):
        s = socket.socket()
        s.bind(("127.0.0.1", p))
        s.listen()
        squatters.append(s)
    try:
        started = cli.run("node", "start", "n1").stdout
        assert "not started: listener" in started
        assert "Address already in use (retrying)" in started
        assert "not started: tcp-inlet inlet1" in started
        why = waiting(cli, "n1")
        assert f"cannot listen on 127.0.0.1:{port}" in why[("listener", f"127.0.0.1:{port}")]
        assert "Address already in use" in why[("tcp-inlet", "inlet1")]
        assert cli.js("node", "show", "n1")["listeners"] == []
        shown = cli.run("node", "show", "n1").stdout
        assert f"not started: listener 127.0.0.1:{port}" in shown
    finally:
        for s in squatters:
            s.close()
    eventually(lambda: not waiting(cli, "n1"), "the listener and the inlet start")
    assert cli.port("n1") == port
    assert cli.js("tcp-inlet", "show", "inlet1", "--at", "n1")["state"] == "listening"


def test_a_relay_that_refuses_the_claim_at_start_waits(cli: Cli) -> None:
    relay = cli.js("node", "create", "relay")["identifier"]
    db = cli.js("node", "create", "db", "--no-tcp-listener")["identifier"]
    assert relay
    allow = cli.js(
        "policy", "create", "--at", "relay", "--resource-type", "relay",
        f'subject.identifier = "{db}"',
    )  # fmt: skip
    assert cli.js("relay", "create", "db", "--relay", "/node/relay", "--at", "db")["state"] == (
        "claimed"
    )
    cli.run("node", "stop", "db")
    cli.run("policy", "delete", allow["id"], "--at", "relay")  # the relay admits nobody now

    started = cli.run("node", "start", "db").stdout
    assert "not started: relay db" in started
    shown = cli.js("relay", "show", "db", "--at", "db")
    assert shown["state"] == "error"
    assert shown["last_error"]
    listed = cli.run("relay", "list", "--at", "db").stdout
    assert "db  error (relay node relay allows no claim" in listed
    cli.run("relay", "delete", "db", "--at", "db")
    assert cli.js("relay", "list", "--at", "db") == []


def test_a_saved_policy_that_no_longer_parses_fails_closed(cli: Cli) -> None:
    from tether.daemon import saved_nodes
    from tether.store.local import Store

    cli.run("node", "create", "n1")
    client = cli.js("node", "create", "n2")["identifier"]
    me = f'subject.identifier = "{client}"'
    policy = cli.js("policy", "create", "--at", "n1", "--resource", "echo", me)["id"]
    echo = ("message", "send", "--at", "n2", "--to", "/node/n1/secure/api/service/echo", "hi")
    assert cli.run(*echo).stdout.strip() == "hi"
    cli.run("node", "stop", "n1")
    store = Store(cli.home)  # damage the saved expression, as an older or newer version might
    try:
        cfg = saved_nodes.load_config(store, "n1")
        cfg.policies[0]["expression"] = "subject.identifier ="
        saved_nodes.save_config(store, cfg)
    finally:
        store.close()

    assert f"not started: policy {policy}" in cli.run("node", "start", "n1").stdout
    shown = cli.js("policy", "show", policy, "--at", "n1")
    assert shown["state"] == "error"
    assert shown["expression"] == "subject.identifier ="
    assert shown["retrying"] is False
    # What it guarded admits nobody meanwhile (never everybody).
    refused = cli.run(*echo, ok=False)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    cli.run("policy", "delete", policy, "--at", "n1")
    assert cli.run(*echo).stdout.strip() == "hi"


def test_identity_delete_refuses_while_a_node_uses_it(cli: Cli) -> None:
    cli.run("node", "create", "auth")
    cli.run("authority", "create", "acme", "--at", "auth")
    cli.run("node", "create", "idle")
    cli.run("node", "stop", "idle")

    cli.fails(
        "identity", "delete", "auth",
        reason="identity 'auth' is in use by node auth (running; its identity and its "
        "authority): delete the node first (`tether node delete auth`), or give --force",
    )  # fmt: skip
    cli.fails("identity", "delete", "idle", reason="node idle (stopped; its identity)")
    assert {i["name"] for i in cli.js("identity", "list")} == {"auth", "idle"}

    forced = cli.run("identity", "delete", "auth", "--force", "--json")
    assert json.loads(forced.stdout)["was_used_by"] == ["auth"]
    assert "warning: deleted an identity in use by node auth" in forced.stderr

    # The node still starts: it says what is missing, and what waits for it.
    cli.run("node", "stop", "auth")
    started = cli.run("node", "start", "auth").stdout
    assert "not started: identity auth: the identity 'auth' of this node no longer exists" in (
        started
    )
    why = waiting(cli, "auth")
    assert "no identity" in why[("authority", "acme")]
    authority = cli.js("authority", "show", "--at", "auth")
    assert authority["state"] == "error"
    cli.fails("ticket", "create", "--at", "auth", reason="this node's authority is not running")
    cli.run("node", "delete", "auth")
    cli.run("identity", "delete", "idle", "--force")
    cli.run("node", "start", "idle")
    assert ("identity", "idle") in waiting(cli, "idle")
