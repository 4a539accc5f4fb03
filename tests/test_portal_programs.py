"""Portals carrying real programs' protocols: curl downloading 100 MB over HTTP through a relay,
psql and pgbench against PostgreSQL, redis-benchmark against Redis.

Each test starts its server on loopback (a free port, a temporary directory), runs the nodes in
this process on trio, runs the client program as a subprocess while the nodes serve it, and
tears everything down. A missing program fails the test and names the Debian package to install
(CI installs them): these tests exist to run, not to be skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from peers import allow_claims, expect
from pgserver import require, running, unused_port
from tether.api import Node
from tether.identity.trust import ephemeral_identity
from trio_run import run

HOST = "127.0.0.1"
MB = 1 << 20


def wait_for_port(port: int, timeout: float, what: str, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        assert proc.poll() is None, f"{what} exited with status {proc.returncode}"
        assert time.monotonic() < deadline, f"{what} not listening on {port} after {timeout} s"
        time.sleep(0.05)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def program(
    args: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a client program while this event loop (and its nodes) goes on; kill it at
    ``timeout`` seconds and fail."""
    try:
        with anyio.fail_after(timeout):
            return await anyio.run_process(
                args, check=False, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL
            )
    except TimeoutError:
        raise AssertionError(f"{args[0]} did not finish within {timeout} s: {args}") from None


def done(p: subprocess.CompletedProcess[bytes]) -> str:
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 0, f"{p.args} exited with {p.returncode}:\n{out}\n{err}"
    return out


@contextlib.asynccontextmanager
async def direct_portal(target_port: int) -> AsyncIterator[Any]:
    """Two nodes, the outlet's listening; yields the inlet (its ``port`` is the client's)."""
    async with (
        Node("client-side", identity=ephemeral_identity()) as near,
        Node("server-side", identity=ephemeral_identity()) as far,
    ):
        listen_port = (await far.listen_tcp(HOST)).port
        await far.create_tcp_outlet(f"{HOST}:{target_port}")
        yield await near.create_tcp_inlet(
            f"{HOST}:0",
            f"/ip4/{HOST}/tcp/{listen_port}/secure/api/service/outlet",
            trust=expect(far),
        )


@contextlib.asynccontextmanager
async def relayed_portal(target_port: int) -> AsyncIterator[Any]:
    """Three nodes: a relay, the server's node (no listener, it claims a name at the relay),
    and the client's node, whose inlet reaches the outlet through the relay."""
    async with (
        Node("relay", identity=ephemeral_identity()) as relay,
        Node("server-side", identity=ephemeral_identity()) as protected,
        Node("client-side", identity=ephemeral_identity()) as near,
    ):
        relay_port = (await relay.listen_tcp(HOST)).port
        await protected.create_tcp_outlet(f"{HOST}:{target_port}")
        allow_claims(relay, protected)
        rc = await protected.create_relay(
            "web", f"/ip4/{HOST}/tcp/{relay_port}", trust=expect(relay)
        )
        assert protected.tcp.listeners == {}
        yield await near.create_tcp_inlet(
            f"{HOST}:0", rc.forward_route + "/secure/api/service/outlet", trust=expect(protected)
        )


async def sessions_end(inlet: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while inlet.info()["sessions"]:
            await anyio.sleep(0.02)


# --- curl, HTTP, 100 MB, through a relay --------------------------------------------------------


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[int, Path, str]]:
    """``python -m http.server`` serving a 100 MB file of random bytes; yields its port, the
    file, and the file's SHA-256."""
    root = tmp_path / "www"
    root.mkdir()
    blob = root / "blob.bin"
    digest = hashlib.sha256()
    with blob.open("wb") as f:
        for _ in range(100):
            chunk = os.urandom(MB)
            digest.update(chunk)
            f.write(chunk)
    port = unused_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", HOST, "--directory", root],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 10, "python -m http.server", proc)
        yield port, blob, digest.hexdigest()
    finally:
        stop(proc)
        blob.unlink()  # pytest keeps recent tmp dirs: not 100 MB files in each


def test_curl_downloads_100_mb_through_a_relay(
    http_server: tuple[int, Path, str], tmp_path: Path
) -> None:
    curl = require("curl", "curl")
    port, blob, digest = http_server
    out = tmp_path / "download.bin"

    async def main() -> None:
        async with relayed_portal(port) as inlet:
            p = await program(
                [
                    curl,
                    "--silent",
                    "--show-error",
                    "--fail",
                    "--max-time",
                    "60",
                    "--output",
                    str(out),
                    "--write-out",
                    "%{size_download}",
                    f"http://{HOST}:{inlet.port}/{blob.name}",
                ],
                timeout=90,
            )
            assert done(p).strip() == str(100 * MB)
            await sessions_end(inlet)
            info = inlet.info()
            assert (info["total"], info["failed"]) == (1, 0), info
            assert info["bytes_in"] > 100 * MB

    try:
        run(main)
        h = hashlib.sha256()
        with out.open("rb") as f:
            while chunk := f.read(MB):
                h.update(chunk)
        assert out.stat().st_size == 100 * MB
        assert h.hexdigest() == digest
    finally:
        out.unlink(missing_ok=True)


# --- PostgreSQL: psql and pgbench ---------------------------------------------------------------


@pytest.fixture
def postgres() -> Iterator[tuple[int, Path]]:
    """A throwaway PostgreSQL cluster (trust authentication on 127.0.0.1, no fsync); yields its
    port and the bin directory. PostgreSQL refuses to run as root: as root, it runs as the
    ``postgres`` user (which the Debian package creates) in a directory that user owns."""
    with running() as server:
        yield server.port, server.bindir


PG_ENV = {"PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable", "PGUSER": "postgres"}


def test_psql_and_pgbench_through_a_portal(postgres: tuple[int, Path]) -> None:
    port, bindir = postgres
    psql = require("psql", "postgresql-client-15", str(bindir))
    pgbench = require("pgbench", "postgresql-15", str(bindir))

    async def main() -> None:
        async with direct_portal(port) as inlet:
            at = ["-h", HOST, "-p", str(inlet.port)]
            out = done(
                await program(
                    [
                        psql,
                        *at,
                        "-d",
                        "postgres",
                        "-X",
                        "-A",
                        "-t",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-c",
                        "SELECT sum(g) FROM generate_series(1, 100000) g",
                        "-c",
                        "SELECT md5(string_agg(repeat(g::text, 100), ',')) "
                        "FROM generate_series(1, 20000) g",
                        "-c",
                        "SELECT repeat('x', 1000) FROM generate_series(1, 5000)",
                    ],
                    timeout=30,
                    env=PG_ENV,
                )
            )
            lines = out.splitlines()
            assert lines[0] == "5000050000"
            expected = ",".join(str(g) * 100 for g in range(1, 20001))
            assert lines[1] == hashlib.md5(expected.encode(), usedforsecurity=False).hexdigest()
            assert lines[2:] == ["x" * 1000] * 5000  # 5 MB of rows, all of them

            done(
                await program(
                    [pgbench, *at, "-i", "-s", "1", "-q", "postgres"], timeout=60, env=PG_ENV
                )
            )
            out = done(
                await program(
                    [pgbench, *at, "-c", "4", "-j", "2", "-t", "200", "-n", "postgres"],
                    timeout=90,
                    env=PG_ENV,
                )
            )
            processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
            assert processed, out
            assert processed.group(1) == processed.group(2) == "800", out
            failed = re.search(r"number of failed transactions: (\d+)", out)
            assert failed, out
            assert failed.group(1) == "0", out
            await sessions_end(inlet)
            info = inlet.info()
            assert info["failed"] == 0, info
            assert info["total"] >= 4 + 2  # psql, pgbench -i, and pgbench's four clients

    run(main)


# --- Redis: redis-benchmark ---------------------------------------------------------------------


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[int]:
    server = require("redis-server", "redis-server")
    port = unused_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 10, "redis-server", proc)
        yield port
    finally:
        stop(proc)


def test_redis_benchmark_through_a_portal(redis: int) -> None:
    benchmark = require("redis-benchmark", "redis-tools")

    async def main() -> None:
        async with direct_portal(redis) as inlet:
            p = await program(
                [
                    benchmark,
                    "-h",
                    HOST,
                    "-p",
                    str(inlet.port),
                    "-n",
                    "20000",
                    "-q",
                    "-t",
                    "set,get",
                    "-P",
                    "1",
                ],
                timeout=90,
            )
            out = done(p)
            text = out + p.stderr.decode(errors="replace")
            # -q prints progress with carriage returns, then one result line per test.
            results = [
                line.strip() for line in re.split(r"[\r\n]", out) if "requests per second" in line
            ]
            assert [r.split(":")[0] for r in results] == ["SET", "GET"], text
            assert not re.search(r"error|ERR\b|reset|refused", text, re.IGNORECASE), text
            await sessions_end(inlet)
            info = inlet.info()
            assert info["failed"] == 0, info
            assert info["total"] >= 50  # redis-benchmark's 50 clients (at least once each)

    run(main)
