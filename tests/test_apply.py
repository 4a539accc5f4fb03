"""``tether apply`` (docs/apply.md): the three-site example of the docs applied (each site in a
home of its own), then psql through it to a real PostgreSQL; a second apply that changes
nothing; edited files that add, change and remove; what a set manages and nothing else;
``--dry-run``; errors that name the file, line and field; and ``tether node run --config``
re-reading its file at SIGHUP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_run import TETHER, Cli, echo_server
from pgserver import HOST, require, running, unused_port

DOC = Path(__file__).resolve().parent.parent / "docs" / "apply.md"
PG_ENV = {"PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable", "PGUSER": "postgres"}


def doc_files() -> dict[str, str]:
    """The example's files, as docs/apply.md writes them (``cat > NAME <<'EOF'``)."""
    found = dict(re.findall(r"cat > (\w+\.yaml) <<'EOF'\n(.*?)^EOF$", DOC.read_text(), re.S | re.M))
    assert set(found) == {"relay.yaml", "db.yaml", "app.yaml"}, found.keys()
    return found


@pytest.fixture
def sites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, text in doc_files().items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("RELAY_PORT", str(unused_port()))
    monkeypatch.setenv("APP_PORT", str(unused_port()))
    return tmp_path


@pytest.fixture
def postgres() -> Iterator[tuple[int, Path]]:
    with running() as server:
        yield server.port, server.bindir


def apply(cli: Cli, path: Path, *more: str) -> Any:
    return cli.js("apply", str(path), *more)


def psql(bindir: Path, port: int, sql: str) -> str:
    exe = require("psql", "postgresql-client-15", str(bindir))
    p = subprocess.run(
        [exe, "-h", HOST, "-p", str(port), "-d", "postgres", "-X", "-A", "-t", "-c", sql],
        env={**os.environ, **PG_ENV},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def actions(plan: Any) -> set[tuple[str, str, str]]:
    return {(c["action"], c["kind"], c["name"]) for c in plan["changes"]}


def test_three_sites_then_psql_then_no_change_then_edits(
    sites: Path, postgres: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_port, bindir = postgres
    monkeypatch.setenv("DB_PORT", str(pg_port))
    app_port = int(os.environ["APP_PORT"])
    relay, db, app = (Cli(sites / f"{n}-home") for n in ("relay", "db", "app"))
    try:
        plan = apply(relay, sites / "relay.yaml", "--dry-run")
        assert actions(plan) == {
            ("create", "node", "relay"),
            ("create", "authority", "acme"),
            ("create", "ticket", "db.ticket"),
            ("create", "ticket", "app.ticket"),
        }
        assert relay.js("node", "list") == []  # a dry run changes nothing
        assert not (sites / "tickets").exists()
        assert apply(relay, sites / "relay.yaml")["create"] == 4
        assert oct((sites / "tickets" / "db.ticket").stat().st_mode & 0o777) == "0o600"
        assert apply(db, sites / "db.yaml")["create"] == 5
        assert apply(app, sites / "app.yaml")["create"] == 3
        assert psql(bindir, app_port, "SELECT 6 * 7") == "42"
        # no inbound port on either protected side
        assert db.js("node", "show", "db")["listeners"] == []
        assert app.js("node", "show", "app")["listeners"] == []

        # A second apply changes nothing, and says so.
        for cli, name in ((relay, "relay"), (db, "db"), (app, "app")):
            again = apply(cli, sites / f"{name}.yaml")
            assert again["changes"] == [], again
            assert again["unchanged"] >= 3
            text = cli.run("apply", str(sites / f"{name}.yaml")).stdout
            assert "no changes" in text

        # Something made by hand on a managed node is not the set's: it stays.
        with echo_server() as echo:
            db.run(
                "tcp-outlet", "create", "--at", "db", "--name", "manual", "--to", f"{HOST}:{echo}"
            )
            # The edited file renames the outlet and adds one: one delete, two creates.
            text = (sites / "db.yaml").read_text().replace("name: postgres", "name: pg")
            text += f"      - name: mirror\n        to: {HOST}:{echo}\n"
            (sites / "db.yaml").write_text(text)
            plan = apply(db, sites / "db.yaml", "--dry-run")
            assert actions(plan) == {
                ("delete", "tcp-outlet", "postgres"),
                ("create", "tcp-outlet", "pg"),
                ("create", "tcp-outlet", "mirror"),
            }
            assert plan["unchanged"] == 4  # the node, its membership, the policy, the relay
            apply(db, sites / "db.yaml")
            names = {o["name"] for o in db.js("tcp-outlet", "list", "--at", "db")}
            assert names == {"pg", "mirror", "manual"}
            # The app's inlet now goes to the new name: a change (deleted and made again).
            (sites / "app.yaml").write_text(
                (sites / "app.yaml").read_text().replace("service/postgres", "service/pg")
            )
            plan = apply(app, sites / "app.yaml")
            assert actions(plan) == {("change", "tcp-inlet", "postgres")}
            assert psql(bindir, app_port, "SELECT 'again'") == "again"
            assert apply(db, sites / "db.yaml")["changes"] == []
    finally:
        for cli in (app, db, relay):
            cli.run("node", "delete", "--all", ok=False)


def test_a_set_deletes_only_what_it_made(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    site = tmp_path / "site.yaml"
    site.write_text("nodes:\n  a: {}\n  b:\n    tcp-listeners: []\n")
    try:
        assert apply(cli, site)["create"] == 2
        # Another file may not take a node this one manages.
        other = tmp_path / "other.yaml"
        other.write_text("nodes:\n  b: {}\n")
        cli.fails(
            "apply",
            str(other),
            reason="other.yaml:2: nodes.b: node 'b' is managed by the set 'site'",
        )
        # A node made by hand is not the set's, even with the same name pattern.
        cli.run("node", "create", "c", "--no-tcp-listener")
        site.write_text("nodes:\n  a: {}\n")
        plan = apply(cli, site)
        assert actions(plan) == {("delete", "node", "b")}
        assert {n["name"] for n in cli.js("node", "list")} == {"a", "c"}
        assert "b" in {i["name"] for i in cli.js("identity", "list")}  # identities stay
        # A stopped node is started again.
        cli.run("node", "stop", "a")
        assert actions(apply(cli, site)) == {("start", "node", "a")}
        assert {n["name"]: n["running"] for n in cli.js("node", "list")}["a"] is True
    finally:
        cli.run("node", "delete", "--all", ok=False)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "nodes:\n  x:\n    tcp-outlets:\n      - name: a\n"
            "        to: 127.0.0.1:${NOT_SET_HERE}\n",
            "f.yaml:5: nodes.x.tcp-outlets[0].to: the environment variable NOT_SET_HERE is not set",
        ),
        (
            "nodes:\n  x:\n    tcp-outlet: []\n",
            "f.yaml:3: nodes.x.tcp-outlet: unknown field; did you mean 'tcp-outlets'?",
        ),
        (
            "nodes:\n  x:\n    tcp-outlets:\n      - to: 127.0.0.1:99999\n",
            "f.yaml:4: nodes.x.tcp-outlets[0].to: '127.0.0.1:99999': the port must be 1 to 65535",
        ),
        (
            "nodes:\n  x:\n    policies:\n      - resource-type: tcp-outlet\n"
            "        expression: subject.role =\n",
            "f.yaml:5: nodes.x.policies[0].expression: not a policy expression",
        ),
        (
            "nodes:\n  x:\n    tcp-listeners: [no]\n",
            "f.yaml:3: nodes.x.tcp-listeners[0]: expected text, got False",
        ),
        ("nodes: [\n", "f.yaml:2: not valid YAML"),
        (
            "nodes:\n  x:\n    tickets:\n      - file: t\n",
            "f.yaml:3: nodes.x.tickets: tickets need an authority",
        ),
        (
            "nodes:\n  x:\n    tcp-outlets:\n"
            "      - {name: a, to: '1.2.3.4:5'}\n      - {name: a, to: '1.2.3.4:6'}\n",
            "f.yaml:5: nodes.x.tcp-outlets[1]: a second tcp-outlet 'a' (the first is at line 4)",
        ),
        ("nodes:\n  'bad name':\n", "f.yaml:2: nodes.bad name: invalid node name"),
        (
            "nodes:\n  x:\n    enroll: {}\n",
            "f.yaml:3: nodes.x.enroll: give the ticket as 'ticket-file'",
        ),
        ("set: x\n", "f.yaml:1: (top): 'nodes' is required"),
    ],
)
def test_a_mistake_names_file_line_and_field(tmp_path: Path, text: str, error: str) -> None:
    cli = Cli(tmp_path / "home")
    (tmp_path / "f.yaml").write_text(text)
    p = subprocess.run(
        [*TETHER, "apply", "f.yaml"],
        cwd=tmp_path,
        env={**os.environ, "TETHER_HOME": str(cli.home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1, p
    assert error in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not (cli.home / "applied").exists()  # nothing was changed


def test_values_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = Cli(tmp_path / "home")
    monkeypatch.setenv("TARGET_PORT", "5432")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    site = tmp_path / "s.yaml"
    site.write_text(
        "nodes:\n  x:\n    tcp-outlets:\n"
        "      - {name: a, to: '127.0.0.1:${TARGET_PORT}'}\n"
        "      - {name: b, to: '127.0.0.1:${UNSET_VAR:-6379}'}\n"
        "    policies:\n      - {resource: a, expression: 'subject.note = \"$$5\"'}\n"
    )
    plan = apply(cli, site, "--dry-run")
    details = {c["name"]: c["detail"] for c in plan["changes"]}
    assert details["a"] == "→ 127.0.0.1:5432"
    assert details["b"] == "→ 127.0.0.1:6379"
    assert '(a: subject.note = "$5")' in details


def test_hostile_files_are_refused(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    # YAML aliases that expand to billions of values ("billion laughs")
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        text += f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]\n"
    (tmp_path / "bomb.yaml").write_text(text + "nodes: {x: {}}\n")
    cli.fails("apply", str(tmp_path / "bomb.yaml"), reason="over 100000 values")
    (tmp_path / "big.yaml").write_text("#" * (2 << 20))
    cli.fails("apply", str(tmp_path / "big.yaml"), reason="over 1048576 bytes")
    (tmp_path / "bin.yaml").write_bytes(b"nodes:\n  x: \xff\n")
    cli.fails("apply", str(tmp_path / "bin.yaml"), reason="not UTF-8")
    # a Python object tag is not a value (the safe loader)
    (tmp_path / "obj.yaml").write_text("nodes: !!python/object/apply:os.system ['true']\n")
    cli.fails("apply", str(tmp_path / "obj.yaml"), reason="obj.yaml:1")


def _wait(check: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_node_run_config_applies_at_start_and_at_sighup(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    site = tmp_path / "edge.yaml"
    with echo_server() as echo:
        site.write_text(
            f"nodes:\n  edge:\n    tcp-outlets:\n      - {{name: one, to: '{HOST}:{echo}'}}\n"
        )
        log = tmp_path / "run.log"
        with log.open("w") as out:
            proc = subprocess.Popen(  # a fresh home: the node is made from the file
                [*TETHER, "node", "run", "edge", "--config", str(site), "--drain", "0"],
                env={**os.environ, "TETHER_HOME": str(cli.home)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:

            def outlets() -> set[str]:
                p = cli.run("tcp-outlet", "list", "--at", "edge", "--json", ok=False)
                return {o["name"] for o in json.loads(p.stdout)} if p.returncode == 0 else set()

            _wait(lambda: outlets() == {"one"}, "the file applied at the start")
            site.write_text(
                site.read_text().replace("one", "two")
                + f"      - {{name: three, to: '{HOST}:{echo}'}}\n"
            )
            proc.send_signal(signal.SIGHUP)
            _wait(lambda: outlets() == {"two", "three"}, "the file applied at SIGHUP")
            # A broken file: logged with its line, and the node goes on as it was.
            site.write_text("nodes:\n  edge:\n    tcp-outlets:\n      - {to: 'nowhere'}\n")
            proc.send_signal(signal.SIGHUP)
            _wait(lambda: "was not applied" in log.read_text(), "the refusal in the log")
            assert "edge.yaml:4: nodes.edge.tcp-outlets[0].to" in log.read_text()
            assert outlets() == {"two", "three"}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert "SIGHUP: applied its file: 2 created, 0 changed, 1 deleted" in text, text


def test_node_run_config_refuses_a_file_without_the_node(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    site = tmp_path / "s.yaml"
    site.write_text("nodes:\n  a: {}\n")
    cli.fails("node", "run", "b", "--config", str(site), reason="declares no node 'b'")
    site.write_text("nodes:\n  b:\n    bogus: 1\n")
    cli.fails(
        "node", "run", "b", "--config", str(site), reason="s.yaml:3: nodes.b.bogus: unknown field"
    )
    assert sys.executable  # (the command ran with this interpreter: cli_run.TETHER)
