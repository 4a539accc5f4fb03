"""The control API's HTTP/1.1 (``tether.daemon.control``: h11 over anyio streams), as the clients
people use see it: the standard library's ``http.client``, curl, and a raw socket.

* Against a real node daemon (``tether node create``): several requests on one connection
  (keep-alive), ``Expect: 100-continue`` with curl, chunked request bodies, a body over 1 MiB
  (413, then the node serves on), a head over 16 KiB (431), percent-encoded paths (a name with
  ``#``, and ``%2F`` kept inside a segment) with a query string, ``HEAD``, and the ``tether``
  command's own client with such a name.
* Against an in-process ``ControlServer`` on a Unix socket of the test's, with a small router
  and the timers patched small: a request that stalls gets 408 after the timeout and is closed,
  an idle keep-alive connection is closed without an answer, the longest-open idle connections
  make room for new ones beyond the bound, handlers all busy turn a new connection away with
  503, pipelined requests, HTTP/1.0, a body that is not JSON (400, the connection goes on), a
  handler's bug (500, the connection goes on), an absolute URL as the target, and percent-
  decoding that is not UTF-8 (400).

Raw-socket attacks on a real daemon are in ``test_attack_control_api.py``.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from cli_run import Cli
from tether.cli.control_client import call
from tether.daemon import control
from tether.daemon.control import ControlServer, Raw, Router

# --- clients ------------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket (as ``tether.cli.control_client`` does)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__("node", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def ask(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any, http.client.HTTPResponse]:
    """One request on ``conn``; the status, the parsed JSON (or the text) and the response."""
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    conn.request(method, path, body=data, **kw)
    r = conn.getresponse()
    raw = r.read()
    ctype = r.getheader("Content-Type", "")
    return r.status, json.loads(raw) if raw and ctype == "application/json" else raw, r


def raw_connect(sock: Path, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(sock))
    return s


def read_to_end(s: socket.socket) -> bytes:
    """Everything until the server closes (a reset after the answer counts as the end)."""
    got = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def json_of(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def closed_by_server(s: socket.socket, within: float) -> bool:
    """Did the server close ``s`` (EOF or reset) within ``within`` seconds, sending nothing?"""
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


def curl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--unix-socket", str(sock), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- a real node daemon -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_sock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """n1, running: its control socket. The module's tests only add what they name."""
    cli = Cli(tmp_path_factory.mktemp("control-http") / "home")
    try:
        yield Path(cli.js("node", "create", "n1")["api"])
        assert "Traceback" not in cli.run("node", "logs", "n1").stdout
    finally:
        cli.run("node", "delete", "--all", ok=False)


def echo_body(size: int) -> dict[str, Any]:
    """A ``POST /messages`` body of more than ``size`` bytes, to the node's echo service."""
    return {"to": "/service/echo", "message": "x" * size}


def test_several_requests_on_one_connection(node_sock: Path) -> None:
    conn = UnixHTTPConnection(node_sock)
    try:
        status, info, r = ask(conn, "GET", "/node")
        assert status == 200
        assert info["name"] == "n1"
        assert r.getheader("Connection") is None  # kept open
        first = conn.sock
        for _ in range(3):
            assert ask(conn, "GET", "/listeners")[0] == 200
        status, reply, _ = ask(conn, "POST", "/messages", echo_body(3000))
        assert status == 200
        assert reply["reply"] == "x" * 3000
        assert ask(conn, "GET", "/nowhere")[0] == 404
        assert ask(conn, "GET", "/services")[0] == 200
        assert conn.sock is first, "http.client had to reconnect: the connection was not kept"
    finally:
        conn.close()


def test_curl_expect_100_continue(node_sock: Path, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps(echo_body(20_000)))
    p = curl(
        node_sock, "-v", "-H", "Expect: 100-continue", "-d", f"@{body}", "http://node/messages"
    )
    assert p.returncode == 0, p.stderr
    assert "< HTTP/1.1 100 Continue" in p.stderr
    assert "< HTTP/1.1 200 OK" in p.stderr
    assert json.loads(p.stdout)["reply"] == "x" * 20_000
    # Two requests, one connection.
    p = curl(node_sock, "-v", "http://node/listeners", "http://node/services")
    assert p.returncode == 0, p.stderr
    assert "Re-using existing connection" in p.stderr


def test_chunked_bodies(node_sock: Path, tmp_path: Path) -> None:
    data = json.dumps(echo_body(5000)).encode()
    conn = UnixHTTPConnection(node_sock)
    try:
        pieces = iter([data[:7], data[7:4000], data[4000:]])
        status, reply, _ = ask(conn, "POST", "/messages", pieces, encode_chunked=True)
        assert status == 200
        assert reply["reply"] == "x" * 5000
        assert ask(conn, "GET", "/node")[0] == 200  # and the connection goes on
    finally:
        conn.close()
    body = tmp_path / "body.json"
    body.write_bytes(data)
    p = curl(
        node_sock, "-H", "Transfer-Encoding: chunked", "-d", f"@{body}", "http://node/messages"
    )
    assert json.loads(p.stdout)["reply"] == "x" * 5000, p.stderr


def test_a_body_over_1_mib_gets_413_and_the_node_serves_on(node_sock: Path, tmp_path: Path) -> None:
    big = json.dumps(echo_body(control.MAX_BODY)).encode()
    # Announced (Content-Length), from a client that sends it all without waiting.
    conn = UnixHTTPConnection(node_sock)
    try:
        status, error, r = ask(conn, "POST", "/messages", big)
        assert status == 413
        assert error["error"]["type"] == "TooLarge"
        assert r.getheader("Connection") == "close"
    finally:
        conn.close()
    # With curl, which waits for 100 Continue first: it never comes.
    body = tmp_path / "big.json"
    body.write_bytes(big)
    p = curl(node_sock, "-v", "-d", f"@{body}", "http://node/messages")
    assert "< HTTP/1.1 413" in p.stderr, p.stderr
    assert "< HTTP/1.1 100" not in p.stderr
    # Chunked: found out while reading.
    conn = UnixHTTPConnection(node_sock)
    try:
        pieces = (big[i : i + 65536] for i in range(0, len(big), 65536))
        status, error, _ = ask(conn, "POST", "/messages", pieces, encode_chunked=True)
        assert status == 413
        assert "over 1048576 bytes" in error["error"]["message"]
    finally:
        conn.close()
    assert call(node_sock, "GET", "/node")["name"] == "n1"


def test_a_head_over_16_kib_gets_431(node_sock: Path) -> None:
    with raw_connect(node_sock) as s:
        s.sendall(b"GET /node HTTP/1.1\r\nHost: node\r\nX-Pad: " + b"a" * 17_000 + b"\r\n\r\n")
        answer = read_to_end(s)
    assert status_of(answer) == 431
    assert json_of(answer)["error"]["type"] == "TooLarge"
    # Just under the limit is served.
    with raw_connect(node_sock) as s:
        s.sendall(b"GET /node HTTP/1.1\r\nHost: node\r\nX-Pad: " + b"a" * 16_000 + b"\r\n\r\n")
        assert s.recv(12) == b"HTTP/1.1 200"


def test_percent_encoded_paths_and_queries(node_sock: Path, tmp_path: Path) -> None:
    made = call(node_sock, "POST", "/tcp-outlets", {"to": "127.0.0.1:9", "name": "web#1"})
    assert made["name"] == "web#1"
    conn = UnixHTTPConnection(node_sock)
    try:
        status, outlet, _ = ask(conn, "GET", "/tcp-outlets/web%231?verbose=1&x=%2F")
        assert status == 200
        assert outlet["name"] == "web#1"
        # %2F stays inside its segment: a name with a slash, not another resource.
        status, error, _ = ask(conn, "GET", "/tcp-outlets/web%2F1")
        assert status == 404
        assert error["error"]["message"] == "no tcp-outlet 'web/1'"
        assert ask(conn, "GET", "/tcp-%6Futlets?x=1")[0] == 200
        # HEAD: the GET's headers, no body; a method a resource lacks: 405 and Allow.
        status, body, r = ask(conn, "HEAD", "/tcp-outlets/web%231")
        assert (status, body) == (200, b"")
        assert int(r.getheader("Content-Length", "0")) > 0
        status, _, r = ask(conn, "PUT", "/tcp-outlets/web%231")
        assert status == 405
        assert r.getheader("Allow") == "DELETE, GET, HEAD"
        assert ask(conn, "GET", "/node")[0] == 200  # (the bodiless 405 kept the connection)
    finally:
        conn.close()
    # The tether command's client encodes what it is given.
    assert call(node_sock, "GET", "/tcp-outlets/web#1")["name"] == "web#1"
    p = curl(node_sock, "http://node/tcp-outlets/web%231")
    assert json.loads(p.stdout)["name"] == "web#1"
    call(node_sock, "DELETE", "/tcp-outlets/web#1")


# --- an in-process server ------------------------------------------------------------------------


@dataclass
class Context:
    gate: anyio.Event


api: Router[Context] = Router()


@api.add("GET", "/things/{name}")
async def _thing(_: Context, p: dict[str, str], __: Any) -> tuple[int, Any]:
    return 200, {"name": p["name"]}


@api.add("POST", "/echo")
async def _echo(_: Context, __: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, {"body": body}


@api.add("GET", "/text")
async def _text(_: Context, __: dict[str, str], ___: Any) -> tuple[int, Any]:
    return 200, Raw("text/plain; version=0.0.4", b"up 1\n")


@api.add("POST", "/wait")
async def _wait(ctx: Context, __: dict[str, str], ___: Any) -> tuple[int, Any]:
    await ctx.gate.wait()
    return 200, {"waited": True}


@api.add("GET", "/bug")
async def _bug(_: Context, __: dict[str, str], ___: Any) -> tuple[int, Any]:
    raise RuntimeError("a bug")


@dataclass
class Served:
    sock: Path
    control: ControlServer[Context]
    portal: BlockingPortal

    def open_gate(self) -> None:
        self.portal.call(self.control.context.gate.set)


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    """``api`` on a Unix socket, served on trio in a thread; ``max_connections`` 8, or the
    test's indirect parameter."""
    limit = getattr(request, "param", 8)
    sock = tmp_path / "api.sock"
    with start_blocking_portal("trio") as portal:
        listener = portal.call(anyio.create_unix_listener, sock)
        server = ControlServer(Context(portal.call(anyio.Event)), api, max_connections=limit)

        async def serve() -> None:
            async with listener:
                await listener.serve(server.serve_connection)

        future = portal.start_task_soon(serve)
        try:
            yield Served(sock, server, portal)
        finally:
            future.cancel()


def test_a_request_that_stalls_is_answered_408_and_closed(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 0.5)
    for partial in (
        b"GET /things/a HTTP/1.1\r\nHo",  # half a head
        b'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{"half": ',  # half a body
    ):
        with raw_connect(served.sock) as s:
            started = time.monotonic()
            s.sendall(partial)
            answer = read_to_end(s)
            took = time.monotonic() - started
        assert status_of(answer) == 408, answer
        assert json_of(answer)["error"]["type"] == "Timeout"
        assert b"Connection: close" in answer
        assert 0.4 < took < 5, took
    # Nothing at all: closed after the same time, with no answer (there is no request).
    with raw_connect(served.sock) as s:
        assert closed_by_server(s, within=5)
    # Others were served meanwhile and after.
    conn = UnixHTTPConnection(served.sock)
    assert ask(conn, "GET", "/things/b")[1] == {"name": "b"}
    conn.close()


def test_an_idle_keep_alive_connection_is_closed(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "KEEPALIVE_TIMEOUT", 0.3)
    with raw_connect(served.sock) as s:
        s.sendall(b"GET /things/a HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        answer = s.recv(65536)
        assert status_of(answer) == 200
        started = time.monotonic()
        assert closed_by_server(s, within=5)
        assert 0.2 < time.monotonic() - started < 4


def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    with raw_connect(served.sock) as s:
        s.sendall(
            b"GET /things/one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n[1]"
            b"GET /things/two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answers = read_to_end(s)
    assert answers.count(b"HTTP/1.1 200 OK") == 3
    assert answers.index(b'"one"') < answers.index(b"[1]") < answers.index(b'"two"')


def test_http_1_0_is_answered_and_closed(served: Served) -> None:
    with raw_connect(served.sock) as s:
        s.sendall(b"GET /text HTTP/1.0\r\n\r\n")
        answer = read_to_end(s)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/plain; version=0.0.4" in answer
    assert answer.endswith(b"\r\n\r\nup 1\n")


def test_bad_requests_and_bugs(served: Served) -> None:
    conn = UnixHTTPConnection(served.sock)
    try:
        status, error, _ = ask(conn, "POST", "/echo", b"{not json")
        assert (status, error["error"]["type"]) == (400, "BadRequest")
        status, error, _ = ask(conn, "GET", "/bug")
        assert status == 500
        assert error["error"] == {"type": "RuntimeError", "message": "a bug"}
        status, error, _ = ask(conn, "GET", "/things/%ff")
        assert (status, error["error"]["type"]) == (400, "BadRequest")
        assert ask(conn, "GET", "/things/%e2%9c%93")[1] == {"name": "\u2713"}
        assert ask(conn, "GET", "/things/a%20b")[1] == {"name": "a b"}
        assert ask(conn, "GET", "/things/")[0] == 404  # (a parameter is never empty)
        assert ask(conn, "POST", "/echo", {"a": [1]})[1] == {"body": {"a": [1]}}
    finally:
        conn.close()
    # An absolute URL as the target (any HTTP/1.1 server takes one).
    with raw_connect(served.sock) as s:
        s.sendall(
            b"GET http://node/things/abs?q HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
        )
        assert json_of(read_to_end(s)) == {"name": "abs"}
    # Garbage: 400, closed; the server serves on.
    with raw_connect(served.sock) as s:
        s.sendall(b"\x16\x03\x01\x02\x00 hello\r\n\r\n")
        answer = read_to_end(s)
    assert status_of(answer) == 400
    assert json_of(answer)["error"]["type"] == "BadRequest"
    conn = UnixHTTPConnection(served.sock)
    assert ask(conn, "GET", "/things/after")[1] == {"name": "after"}
    conn.close()


@pytest.mark.parametrize("served", [4], indirect=True)
def test_idle_connections_make_room_for_new_ones(served: Served) -> None:
    idle = [raw_connect(served.sock) for _ in range(4)]
    wait_for(lambda: served.control.connections == 4)
    half = [raw_connect(served.sock) for _ in range(4)]
    for s in half:
        s.sendall(b"GET /things/x HTTP/1.1\r\nHo")
    try:
        # The longest-open went first: every idle one.
        assert all(closed_by_server(s, within=5) for s in idle)
        conn = UnixHTTPConnection(served.sock)
        assert ask(conn, "GET", "/things/legit")[1] == {"name": "legit"}
        conn.close()
        # Then one half-sent one; the bound held all along.
        assert sum(closed_by_server(s, within=0.3) for s in half) == 1
        assert served.control.connections <= 4
    finally:
        for s in idle + half:
            s.close()


@pytest.mark.parametrize("served", [2], indirect=True)
def test_every_connection_busy_turns_a_new_one_away_with_503(served: Served) -> None:
    waiting = [raw_connect(served.sock) for _ in range(2)]
    for s in waiting:
        s.sendall(b"POST /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: served.control.connections == 2)
    wait_for(lambda: all(c.busy for c in served.control._open))
    with raw_connect(served.sock) as s:
        s.sendall(b"GET /things/x HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_to_end(s)
    assert status_of(answer) == 503
    assert json_of(answer)["error"]["type"] == "Busy"
    served.open_gate()
    for s in waiting:
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
        s.close()
    conn = UnixHTTPConnection(served.sock)
    assert ask(conn, "GET", "/things/then")[1] == {"name": "then"}
    conn.close()
