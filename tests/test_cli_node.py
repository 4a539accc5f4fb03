"""Node daemons driven through the real ``tether`` command: lifecycle, the control API, and
messages routed across three node processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from cli_run import Cli
from tether.api import Node
from tether.cli.control_client import call
from tether.core.message import Message, WorkerContext


def test_node_lifecycle(cli: Cli) -> None:
    created = cli.js("node", "create", "n1", "--tcp-listener", "127.0.0.1:0")
    assert created["name"] == "n1"
    assert created["identifier"].startswith("I")
    sock = Path(created["api"])
    assert (sock.stat().st_mode & 0o777) == 0o600
    assert (sock.parent.stat().st_mode & 0o777) == 0o700
    assert [n["name"] for n in cli.js("node", "list")] == ["n1"]
    assert cli.js("node", "list")[0]["running"] is True

    dup = cli.run("node", "create", "n1", ok=False)
    assert dup.returncode == 1
    assert "already exists" in dup.stderr

    # CRUD through the control API, persisted across a restart.
    assert call(sock, "POST", "/services", {"kind": "echo", "address": "echo2"})["address"] == (
        "echo2"
    )
    extra = call(sock, "POST", "/listeners", {"address": "127.0.0.1:0"})
    assert len(call(sock, "GET", "/listeners")) == 2
    assert {w["address"] for w in call(sock, "GET", "/services")} >= {"echo", "echo2"}
    call(sock, "DELETE", f"/listeners/{extra['id']}")
    assert len(call(sock, "GET", "/listeners")) == 1

    assert cli.js("node", "stop", "n1")["stopped"] is True
    assert cli.js("node", "list")[0]["running"] is False
    stopped = cli.run("message", "send", "--at", "n1", "--to", "/service/echo", "x", ok=False)
    assert "not running" in stopped.stderr
    cli.js("node", "start", "n1")
    assert {w["address"] for w in call(sock, "GET", "/services")} >= {"echo", "echo2"}
    assert len(call(sock, "GET", "/listeners")) == 1
    assert (
        cli.run("message", "send", "--at", "n1", "--to", "/service/echo2", "again").stdout.strip()
        == "again"
    )

    logs = cli.run("node", "logs", "n1").stdout
    assert "node n1 up" in logs
    cli.run("node", "delete", "n1")
    assert cli.js("node", "list") == []
    assert not sock.parent.exists()


def test_message_errors_are_clear(cli: Cli) -> None:
    cli.run("node", "create", "n1")
    cases = [
        ("/service/nope", "no worker 'nope' on node n1"),
        ("/ip4/127.0.0.1/tcp/1/service/echo", "cannot connect to 127.0.0.1:1"),
        ("/ip4/127.0.0.1/tcp/abc/service/echo", "'abc' is not a TCP port"),
        ("/node/ghost/service/echo", "no node named 'ghost'"),
    ]
    for route, reason in cases:
        p = cli.run("message", "send", "--at", "n1", "--to", route, "hi", ok=False)
        assert p.returncode == 1, route
        assert reason in p.stderr, (route, p.stderr)


def test_three_node_processes(cli: Cli) -> None:
    for name in ("n1", "n2"):  # in the middle of routes: they forward for other nodes
        cli.run("node", "create", name, "--transit", "*")
    cli.run("node", "create", "n3")
    ports = {name: cli.port(name) for name in ("n1", "n2", "n3")}
    reply = cli.run(
        "message",
        "send",
        "--at",
        "n1",
        "--to",
        f"/node/n2/ip4/127.0.0.1/tcp/{ports['n3']}/service/echo",
        "three hops",
    )
    assert reply.stdout.strip() == "three hops"

    hops = "".join(f"/ip4/127.0.0.1/tcp/{ports[n]}" for n in ("n1", "n2", "n3"))

    async def drive() -> tuple[list[bytes], list[bytes], Any]:
        async with Node("client") as client:
            # 1,000 concurrent requests through n1 -> n2 -> n3's echo and back.
            replies: dict[int, bytes] = {}

            async def one(i: int) -> None:
                replies[i] = await client.request(f"{hops}/service/echo", b"msg %d" % i, timeout=60)

            async with anyio.create_task_group() as tg:
                for i in range(1000):
                    tg.start_soon(one, i)
            # Per-connection order: 500 messages sent one after another through n1 and n2
            # come back to a recorder on this node in the order they were sent.
            listener = await client.listen_tcp("127.0.0.1", 0)
            got: list[bytes] = []
            done = anyio.Event()

            async def record(ctx: WorkerContext, msg: Message) -> None:
                got.append(msg.payload)
                if len(got) == 500:
                    done.set()

            await client.start_worker("recorder", record)
            route = (
                f"/ip4/127.0.0.1/tcp/{ports['n1']}/ip4/127.0.0.1/tcp/{ports['n2']}"
                f"/ip4/127.0.0.1/tcp/{listener.port}/service/recorder"
            )
            sent = [b"%05d" % i for i in range(500)]
            for payload in sent:
                await client.send(route, payload)
            with anyio.fail_after(60):
                await done.wait()
            # While the client still runs: n2 has one connection out to n3 and one to the client
            # (when the client stops, its connections close and n2 forgets them).
            api = Path(cli.js("node", "show", "n2")["api"])
            conns = await anyio.to_thread.run_sync(call, api, "GET", "/connections")
            client.task_group.cancel_scope.cancel()
            return [replies[i] for i in range(1000)], got, conns

    replies, got, conns = anyio.run(drive, backend="trio")
    assert replies == [b"msg %d" % i for i in range(1000)]
    assert got == [b"%05d" % i for i in range(500)]
    assert len([c for c in conns if c["direction"] == "outgoing"]) == 2  # to n3 and the client


def test_message_send_reuses_the_open_channel(cli: Cli) -> None:
    """`message send --to /node/n2/secure/api/...` goes through the channel already open to that
    listener: one opened by `secure-channel create`, or by the first send; a closed one is
    replaced."""
    cli.run("node", "create", "n1")
    cli.run("node", "create", "n2")
    created = cli.js("secure-channel", "create", "--at", "n1", "--to", "/node/n2/service/api")
    for text in ("one", "two", "three"):
        sent = cli.js(
            "message", "send", "--at", "n1", "--to", "/node/n2/secure/api/service/echo", text
        )
        assert sent["reply"] == text
    channels = cli.js("secure-channel", "list", "--at", "n1")
    assert [c["address"] for c in channels] == [created["address"]]
    assert channels[0]["sent"] == 3

    cli.run("secure-channel", "delete", created["address"], "--at", "n1")
    for text in ("four", "five"):
        cli.run("message", "send", "--at", "n1", "--to", "/node/n2/secure/api/service/echo", text)
    channels = cli.js("secure-channel", "list", "--at", "n1")
    assert len(channels) == 1
    assert channels[0]["address"] != created["address"]
    assert channels[0]["sent"] == 2


def test_a_relative_home_is_taken_from_where_the_command_runs(tmp_path: Path) -> None:
    """`--home DIR` and `TETHER_HOME=DIR` relative to the working directory: the node's paths
    (its control socket) are printed absolute, and later commands from there find it."""
    import json
    import os
    import subprocess
    import sys

    def tether(*args: str, home: str | None = None) -> Any:
        env = {k: v for k, v in os.environ.items() if k != "TETHER_HOME"}
        if home is not None:
            env["TETHER_HOME"] = home
        p = subprocess.run(
            [sys.executable, "-m", "tether.cli", *args, "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return json.loads(p.stdout)

    try:
        made = tether("--home", "m2", "node", "create", "a")
        assert made["api"] == str(tmp_path / "m2" / "nodes" / "a" / "api.sock")
        assert tether("--home", "m2", "node", "show", "a")["identity"] == "a"
        made = tether("node", "create", "b", home="m3")
        assert made["api"] == str(tmp_path / "m3" / "nodes" / "b" / "api.sock")
    finally:
        for home in ("m2", "m3"):
            subprocess.run(
                [sys.executable, "-m", "tether.cli", "--home", home, "node", "delete", "--all"],
                cwd=tmp_path, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
