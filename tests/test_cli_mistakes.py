"""The common mistakes a user makes with the real ``tether`` command: each gets one clear line
on stderr that says what went wrong (and, where it helps, what to do), a non-zero exit, and never
a Python traceback. Where the mistake would have created something, nothing is left behind."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_run import Cli

OUTLET = "/secure/api/service/outlet"
IN_CLEAR = "/node/n2/service/outlet"  # (no /secure/: a portal's route must have one)


def one_clear_line(stderr: str, reason: str) -> None:
    """Exactly one error line (``tether: …``, or ``tether CMD: error: …`` after a usage), with
    ``reason`` in it; what follows it may only point at the mistake (a route or policy with a
    caret under it); no traceback."""
    assert "Traceback" not in stderr, stderr
    assert 'File "' not in stderr, stderr
    errors = [
        line
        for line in stderr.splitlines()
        if line.startswith("tether") and "is deprecated" not in line
    ]
    assert len(errors) == 1, stderr
    assert reason in errors[0], stderr
    assert len(stderr.splitlines()) <= 8, stderr  # (a usage above a usage error at most)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """n1 and n2 running (n2 on a known port), n3 stopped: shared by the module's cases, which
    change nothing that lasts."""
    c = Cli(tmp_path_factory.mktemp("mistakes") / "home")
    try:
        c.run("node", "create", "n1")
        c.run("node", "create", "n2")
        c.run("node", "create", "n3")
        c.run("node", "stop", "n3")
        yield c
    finally:
        c.run("node", "delete", "--all", ok=False)


def _busy(cli: Cli) -> str:
    return f"127.0.0.1:{cli.port('n2')}"


MISTAKES: list[tuple[str, tuple[str, ...], str, int]] = [
    # (what, the command's arguments ({busy}: a port in use), the reason it must give, exit)
    ("unknown node", ("node", "show", "ghost"), "no node named 'ghost'", 1),
    ("unknown node", ("node", "start", "ghost"), "no node named 'ghost'", 1),
    ("unknown node", ("tcp-inlet", "list", "--at", "ghost"), "no node named 'ghost'", 1),
    (
        "unknown node in a route",
        ("message", "send", "--at", "n1", "--to", "/node/ghost/service/echo", "hi"),
        "no node named 'ghost'",
        1,
    ),
    ("start twice", ("node", "start", "n1"), "node 'n1' is already running", 1),
    ("create twice", ("node", "create", "n1"), "a node named 'n1' already exists", 1),
    (
        "stopped node",
        ("message", "send", "--at", "n3", "--to", "/service/echo", "hi"),
        "node 'n3' is not running (`tether node start n3`)",
        1,
    ),
    (
        "busy port (node)",
        ("node", "create", "n4", "--tcp-listener", "{busy}"),
        "cannot create node 'n4': cannot listen on {busy}: Address already in use; choose "
        "another --tcp-listener",
        1,
    ),
    (
        "busy port (inlet)",
        ("tcp-inlet", "create", "--at", "n1", "--from", "{busy}", "--to", f"/node/n2{OUTLET}"),
        "cannot listen on {busy}: Address already in use",
        1,
    ),
    ("missing argument", ("node", "create"), "the following arguments are required: name", 2),
    (
        "not a NATS URL",
        ("node", "create", "f1", "--nats", "http://127.0.0.1:4222"),
        "--nats: 'http://127.0.0.1:4222' is not a NATS server URL; write nats://HOST:PORT",
        1,
    ),
    (
        "a fabric option without --nats",
        ("node", "create", "f2", "--nats-claim", "db"),
        "--nats-claim, --nats-user and --nats-password-file need --nats URL",
        1,
    ),
    (
        "a claim that is no fabric name",
        ("node", "create", "f3", "--nats", "nats://127.0.0.1:4222", "--nats-claim", "a.b"),
        "--nats-claim: 'a.b' is not a fabric name",
        1,
    ),
    (
        "a missing NATS password file",
        ("node", "create", "f4", "--nats", "nats://127.0.0.1:4222", "--nats-password-file", "no"),
        "--nats-password-file: no file",
        1,
    ),
    (
        "fabric users at a node with no authority",
        ("fabric", "users", "--at", "n1", "--password-dir", "pw", "--output", "u.conf"),
        "this node runs no authority (`tether authority create`)",
        1,
    ),
    ("missing option", ("tcp-outlet", "create", "--at", "n1"), "are required: --to", 2),
    ("unknown option", ("node", "list", "--bogus"), "unrecognized arguments: --bogus", 2),
    ("unknown command", ("bogus",), "invalid choice: 'bogus'", 2),
    (
        "bad route",
        ("message", "send", "--at", "n1", "--to", "/bogus/x", "hi"),
        "bad route '/bogus/x': unknown segment 'bogus'",
        1,
    ),
    (
        "a route with no secure channel for an inlet",
        ("tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0", "--to", IN_CLEAR),
        "has no secure channel: portal data must be end-to-end encrypted",
        1,
    ),
    ("bad ticket", ("enroll", "garbage", "--at", "n1"), "not a tether ticket", 1),
    (
        "missing ticket file",
        ("enroll", "--ticket-file", "/nonexistent/ticket.txt", "--at", "n1"),
        "cannot read",
        1,
    ),
    ("no authority", ("ticket", "create", "--at", "n1"), "runs no authority", 1),
    ("deleting an identity in use", ("identity", "delete", "n1"), "in use by node n1", 1),
    (
        "deleting an identity a stopped node uses",
        ("identity", "delete", "n3"),
        "in use by node n3 (stopped",
        1,
    ),
    ("deleting what is not there", ("tcp-inlet", "delete", "no", "--at", "n1"), "no tcp-inlet", 1),
    (
        "deleting what is not there, node stopped",
        ("tcp-outlet", "delete", "no", "--at", "n3"),
        "node 'n3' is stopped and has no tcp-outlet 'no' saved",
        1,
    ),
    ("unknown identity", ("node", "create", "x", "--identity", "ghost"), "no identity named", 1),
    (
        "an outlet with no port",
        ("tcp-outlet", "create", "--at", "n1", "--to", "127.0.0.1"),
        "the port is missing",
        1,
    ),
    (
        "a listener name that cannot be in a route",
        ("secure-channel-listener", "create", "a/b", "--at", "n1"),
        "invalid secure-channel listener name 'a/b'",
        1,
    ),
    (
        "a policy that does not parse",
        ("policy", "create", "--at", "n1", "--resource", "x", "((("),
        "unbalanced '('",
        1,
    ),
    (
        "not an identifier",
        ("credential", "issue", "--issuer", "n1", "--for", "nope", "--attribute", "a=b"),
        "not an identifier",
        1,
    ),
    ("not hex", ("identity", "import", "zz"), "not hex", 1),
    (
        "a resource type that does not exist",
        ("policy", "create", "--at", "n1", "--resource-type", "tcp_outlet", "true"),
        "unknown resource type 'tcp_outlet'",
        1,
    ),
    (
        "an --authorized that is no identifier",
        (
            "tcp-inlet",
            "create",
            "--at",
            "n1",
            "--from",
            "127.0.0.1:0",
            "--to",
            f"/node/n2{OUTLET}",
            "--authorized",
            "garbage",
        ),
        "not an identifier: 'garbage'",
        2,
    ),
    (
        "a negative timeout",
        ("message", "send", "--at", "n1", "--to", "/service/echo", "--timeout", "-1", "hi"),
        "'-1' is not a positive number of seconds",
        2,
    ),
]


@pytest.mark.parametrize(
    ("args", "reason", "code"),
    [pytest.param(a, r, c, id=what) for what, a, r, c in MISTAKES],
)
def test_a_mistake_gets_one_clear_line_and_a_nonzero_exit(
    cli: Cli, args: tuple[str, ...], reason: str, code: int
) -> None:
    busy = _busy(cli)
    args = tuple(a.replace("{busy}", busy) for a in args)
    p = cli.run(*args, ok=False)
    assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)
    one_clear_line(p.stderr, reason.replace("{busy}", busy))


def test_a_mistake_with_json_prints_the_error_as_json_too(cli: Cli) -> None:
    p = cli.run("tcp-inlet", "show", "nope", "--at", "n1", "--json", ok=False)
    assert p.returncode == 1
    assert json.loads(p.stdout)["error"]["message"] == "no tcp-inlet 'nope'"
    one_clear_line(p.stderr, "no tcp-inlet 'nope'")


def test_a_failed_node_create_leaves_nothing_behind(cli: Cli) -> None:
    before = {i["name"] for i in cli.js("identity", "list")}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        p = cli.run("node", "create", "n5", "--tcp-listener", taken, ok=False)
    assert p.returncode == 1
    one_clear_line(p.stderr, f"cannot listen on {taken}")
    assert "n5" not in {n["name"] for n in cli.js("node", "list")}
    assert {i["name"] for i in cli.js("identity", "list")} == before
    cli.fails("node", "logs", "n5", reason="no node named 'n5'")


def test_a_home_too_long_for_the_control_socket_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / ("h" * 120)
    p = Cli(home).run("node", "create", "n1", ok=False)
    assert p.returncode == 1
    one_clear_line(p.stderr, "over the 107 a Unix socket allows: use a shorter TETHER_HOME")
    assert Cli(home).js("node", "list") == []
