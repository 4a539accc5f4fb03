"""The real ``tether`` command, run as a user would in a temporary ``$TETHER_HOME``: the one
helper of the CLI test files (``test_cli*.py``)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TETHER = [sys.executable, "-m", "tether.cli"]


class Cli:
    """``tether`` with ``TETHER_HOME=home`` (and no ``TETHER_DATABASE_URL`` from the test's
    environment: a command uses a database only when the test says so)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def run(
        self, *args: str, ok: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TETHER_HOME": str(self.home)}
        env.pop("TETHER_DATABASE_URL", None)
        p = subprocess.run(
            [*TETHER, *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if ok:
            assert p.returncode == 0, f"tether {' '.join(args)} failed: {p.stderr}"
        return p

    def js(self, *args: str, stdin: str | None = None) -> Any:
        """Run with ``--json``; the parsed output."""
        return json.loads(self.run(*args, "--json", stdin=stdin).stdout)

    def fails(self, *args: str, reason: str, code: int = 1) -> str:
        """Run a command that must fail with exit ``code`` and ``reason`` on stderr (no
        traceback); returns stderr."""
        p = self.run(*args, ok=False)
        assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)
        assert reason in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr, p.stderr
        return p.stderr

    def port(self, node: str) -> int:
        """The port of ``node``'s first TCP listener."""
        info = self.js("node", "show", node)
        return int(info["listeners"][0]["address"].rsplit(":", 1)[1])


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP echo service on a free loopback port (the target behind an outlet); yields its
    port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def exchange(port: int, data: bytes = b"ping") -> bytes:
    """Send ``data`` through the inlet at loopback ``port``; what comes back before the
    connection ends (``b""``: turned away, the connection closed or reset — a reset may even
    beat the connect call)."""
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(data)
            while len(got) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
    except (ConnectionResetError, BrokenPipeError):
        return b""
    return got
