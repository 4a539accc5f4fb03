"""``tether node run``: a node in the foreground, as systemd or a container runs it.

Shown with the real command and real sockets: logs go to standard error as JSON lines; SIGTERM
drains (a download in flight through a portal completes, a new connection is refused, saying
why, and the node then exits 0); a drain period that runs out closes what is still open and
exits 3; a node that already runs is not run twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from cli_run import TETHER, Cli
from test_portal import echo, portal, serve
from tether.daemon.logs import JsonFormatter
from trio_run import run, until

HOST = "127.0.0.1"
CHUNK = 64 << 10
PATTERN = bytes(range(256)) * (CHUNK // 256)


@contextlib.contextmanager
def slow_server(chunks: int, pause: float) -> Iterator[int]:
    """A TCP server that sends ``chunks`` chunks of 64 KiB to each client, ``pause`` seconds
    apart, then closes (``chunks`` 0: forever)."""
    listener = socket.create_server((HOST, 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            sent = 0
            while not stop.is_set() and (chunks == 0 or sent < chunks):
                conn.sendall(PATTERN)
                sent += 1
                time.sleep(pause)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def setup(cli: Cli, target: int) -> int:
    """Node ``db`` (stopped) with an outlet to ``target``, node ``app`` with an inlet to it:
    the inlet's port."""
    cli.run("node", "create", "db")
    cli.run("tcp-outlet", "create", "--at", "db", "--to", f"{HOST}:{target}", "--name", "files")
    cli.run("node", "create", "app")
    inlet = cli.js(
        "tcp-inlet", "create", "--at", "app", "--from", f"{HOST}:0",
        "--to", "/node/db/secure/api/service/files", "--name", "web",
    )  # fmt: skip
    cli.run("node", "stop", "db")
    return int(inlet["from"].rsplit(":", 1)[1])


def run_in_foreground(cli: Cli, *args: str, notify: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "TETHER_HOME": str(cli.home)}
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify
    proc = subprocess.Popen(
        [*TETHER, "node", "run", "db", "--log-format", "json", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not any(n["name"] == "db" and n["running"] for n in cli.js("node", "list")):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "node run did not start"
        time.sleep(0.1)
    return proc


def log_lines(stderr: str) -> list[dict[str, str]]:
    """Every line of standard error, each of which must be one JSON object."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "message"}, line
    return lines


def refused_at_once(port: int) -> bool:
    """A new client of the inlet is closed or reset without a byte."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True


def notifications(sock: socket.socket) -> list[str]:
    """What the node told the service manager (``$NOTIFY_SOCKET``) so far."""
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(4096).decode())
    return out


def test_sigterm_lets_a_download_finish_refuses_new_sessions_and_exits_0(
    cli: Cli, tmp_path: Path
) -> None:
    """And systemd's ``Type=notify`` hears READY=1 once the node is up, STOPPING=1 on
    SIGTERM."""
    chunks = 40  # 2.5 MiB over about 1.2 s
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.setblocking(False)
    with manager, slow_server(chunks, 0.03) as target:
        port = setup(cli, target)
        proc = run_in_foreground(cli, "--drain", "20s", notify=str(tmp_path / "notify"))
        manager.settimeout(10)
        told = [manager.recv(4096).decode()]  # sent just after the runtime file is written
        manager.setblocking(False)
        told += notifications(manager)
        assert told == [f"READY=1\nMAINPID={proc.pid}"], told
        try:
            with socket.create_connection((HOST, port), timeout=10) as client:
                got = bytearray(client.recv(CHUNK))
                assert got, "the download did not start"
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)  # the node drains now
                assert refused_at_once(port), "a new session was opened while draining"
                while chunk := client.recv(1 << 16):
                    got += chunk
            assert len(got) == chunks * CHUNK
            assert bytes(got) == PATTERN * chunks
            _, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert notifications(manager) == ["STOPPING=1"]
    assert proc.returncode == 0, stderr
    messages = [line["message"] for line in log_lines(stderr)]
    assert any("SIGTERM, draining: 1 portal session(s) open" in m for m in messages), messages
    # The client the outlet refused is told why (in the inlet's node's log).
    app_log = cli.run("node", "logs", "app").stdout
    assert "node db is shutting down: tcp-outlet 'files' opens no new session" in app_log, app_log
    assert "node db: drained, every portal session finished" in messages


def test_a_drain_period_that_runs_out_closes_what_is_open_and_exits_3(cli: Cli) -> None:
    with slow_server(0, 0.05) as target:  # a download that never ends
        port = setup(cli, target)
        proc = run_in_foreground(cli, "--drain", "0.5")
        try:
            with socket.create_connection((HOST, port), timeout=10) as client:
                assert client.recv(CHUNK), "the download did not start"
                proc.send_signal(signal.SIGTERM)
                _, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 3, stderr
    warnings = [line for line in log_lines(stderr) if line["level"] == "WARNING"]
    assert any(
        "the drain period (0.5 s) is over: closing 1 open portal session(s)" in w["message"]
        for w in warnings
    ), warnings


def test_a_running_node_is_not_run_twice_and_bad_durations_are_refused(cli: Cli) -> None:
    cli.run("node", "create", "db")
    cli.fails("node", "run", "db", reason="node 'db' is already running (pid ")
    cli.fails("node", "run", "db", "--drain", "soon", reason="'soon' is not a duration", code=2)
    cli.fails("node", "run", "nowhere", reason="no node named 'nowhere'")


@pytest.mark.parametrize("hostile", ["\x1b[31mred\n2026 INFO forged", "\u2028tab\t"])
def test_json_log_lines_keep_a_peers_bytes_inside_their_string(hostile: str) -> None:
    """What a peer chose (a relay name, a reason) cannot end a JSON log line or color a
    terminal: every control and non-ASCII character is escaped."""
    record = logging.LogRecord("tether.test", logging.INFO, __file__, 1, "got %s", (hostile,), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "\x1b" not in line
    assert line.isascii()
    assert json.loads(line)["message"] == f"got {hostile}"


@pytest.mark.usefixtures("data_plane")
def test_an_inlets_node_that_drains_closes_its_listener_and_keeps_its_sessions() -> None:
    """``Node.stop_accepting`` on the inlet's side, with either data plane: a new client of
    the inlet is refused at connect (its listening socket is closed), an open session goes on
    echoing, and both nodes' TCP listeners are closed."""

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            target = await serve(tg, echo)
            async with portal(target) as p:
                stream = await anyio.connect_tcp(HOST, p.port)
                await stream.send(b"before")
                assert await stream.receive() == b"before"
                await p.near.stop_accepting()
                assert p.inlet.state == "draining"
                assert p.near.tcp.listeners == {}
                with pytest.raises(OSError, match=r"connection attempts failed|refused"):
                    await anyio.connect_tcp(HOST, p.port)
                await stream.send(b"after")
                assert await stream.receive() == b"after"
                assert p.near.open_sessions() == 1
                await stream.aclose()
                await until(lambda: p.near.open_sessions() == 0, 5, "the session ended")
            tg.cancel_scope.cancel()

    run(main)


def test_whether_a_node_runs_is_its_lock_not_a_pid(tmp_path: Path) -> None:
    """A node runs while its process holds its lock (``saved_nodes.lock_file``): a runtime file
    left by a killed node whose pid now belongs to another live process does not make it look
    running, and a second process for a running node is refused."""
    cli = Cli(tmp_path / "home")
    cli.run("node", "create", "n1")
    try:
        runtime = tmp_path / "home" / "nodes" / "n1" / "runtime.json"
        info = json.loads(runtime.read_text())
        p = cli.run("node", "run", "n1", ok=False)  # a second process for the running node
        assert p.returncode == 1
        assert f"node 'n1' is already running (pid {info['pid']})" in p.stderr
        assert cli.js("node", "list")[0]["running"] is True
        os.kill(info["pid"], signal.SIGKILL)  # no cleanup: the runtime file stays
        deadline = time.monotonic() + 10
        while Path(f"/proc/{info['pid']}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        info["pid"] = os.getpid()  # a live process, not the node: what a reused pid looks like
        runtime.write_text(json.dumps(info))
        assert cli.js("node", "list")[0]["running"] is False
        assert not runtime.exists()  # the stale file is gone
        cli.run("node", "start", "n1")
        assert cli.js("node", "list")[0]["running"] is True
    finally:
        cli.run("node", "delete", "--all", ok=False)
