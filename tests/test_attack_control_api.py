"""Attack: the control API's connections, from raw sockets (no tether code on the attacker's
side), against a real node daemon (``tether node create``).

Its HTTP used to take one request per connection with a 10 s deadline and no bound on
connections; h11 now parses it (``tether.daemon.control``) with keep-alive, and a listener serves
at most ``MAX_CONNECTIONS`` at once, a newcomer beyond that closing the longest-open connection
not running a handler. Shown here:

* hundreds of idle connections, and more that sent half a head and stall, beyond the bound: a
  legitimate request (the ``tether`` command's client, and ``tether node show``) is answered at
  once, the oldest of the attacker's connections are closed, and the daemon's descriptors stay
  within the bound;
* a body announced as huge (Content-Length 10^18), a chunked body whose chunk claims 1 TiB, a
  head of endless header lines, and garbage: each gets its 4xx at once, the connection is
  closed, nothing near the claimed size is held, and a client connected all along is served
  between them;
* afterwards the daemon is up and its log holds no traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_run import Cli
from test_control_http import raw_connect as connect
from test_control_http import read_to_end as answer_of
from test_control_http import status_of as status
from tether.cli.control_client import call
from tether.daemon.control import MAX_CONNECTIONS


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """n1, running, shared by the module's attacks."""
    c = Cli(tmp_path_factory.mktemp("control-attack") / "home")
    try:
        c.run("node", "create", "n1")
        yield c
    finally:
        c.run("node", "delete", "--all", ok=False)


def api_sock(cli: Cli) -> Path:
    return cli.home / "nodes" / "n1" / "api.sock"


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_and_stalled_connections_do_not_lock_the_user_out(cli: Cli) -> None:
    sock = api_sock(cli)
    pid = int(cli.js("node", "show", "n1")["pid"])
    before = descriptors(pid)
    idle = [connect(sock) for _ in range(2 * MAX_CONNECTIONS)]
    stalled = [connect(sock) for _ in range(MAX_CONNECTIONS)]
    try:
        for s in stalled:
            s.sendall(b"POST /messages HTTP/1.1\r\nHost: node\r\nContent-Le")
        assert call(sock, "GET", "/node", timeout=5)["name"] == "n1"
        assert cli.js("node", "show", "n1")["name"] == "n1"
        # The node kept at most its bound of them (each a descriptor), and closed the rest.
        assert descriptors(pid) <= before + MAX_CONNECTIONS + 8
        closed = 0
        for s in idle + stalled:
            s.settimeout(0.01)
            try:
                closed += s.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= 3 * MAX_CONNECTIONS - MAX_CONNECTIONS
    finally:
        for s in idle + stalled:
            s.close()
    assert call(sock, "GET", "/listeners", timeout=5)


def test_claimed_sizes_and_garbage_are_refused_at_once(cli: Cli) -> None:
    sock = api_sock(cli)
    bystander = connect(sock)  # connected all along, served between the attacks
    cases = [
        (b"POST /messages HTTP/1.1\r\nHost: n\r\nContent-Length: 1000000000000000000\r\n\r\n", 413),
        (
            b"POST /messages HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"10000000000\r\n" + b"x" * (2 << 20),
            413,
        ),
        (b"GET /node HTTP/1.1\r\nHost: n\r\n" + b"X-Endless: header\r\n" * 2000, 431),
        (b"\x00\xff" * 1000 + b"\r\n\r\n", 400),
        (b"GET /node HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET /node SMTP/1.1\r\n\r\n", 400),
    ]
    for request, expected in cases:
        with connect(sock) as s:
            # (closed while sending: the answer is waiting)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(request)
            answer = answer_of(s)
        assert status(answer) == expected, (request[:60], answer[:200])
        error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert error["message"], error
        assert b"Connection: close" in answer
        bystander.sendall(b"GET /node HTTP/1.1\r\nHost: node\r\n\r\n")
        head = bystander.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 OK"), head[:100]
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = head.partition(b"\r\n\r\n")[2]
        while len(body) < length:
            body += bystander.recv(65536)
    bystander.close()
    logs = cli.run("node", "logs", "n1").stdout
    assert "Traceback" not in logs
    assert call(sock, "GET", "/node")["name"] == "n1"
