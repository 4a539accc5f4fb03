"""``tether stream …`` (docs/pipelines.md) with daemons and a real Redis started on loopback:
records from standard input, sealed with keys leased from the producer's node, through Redis
Streams, opened with keys the consumer's node fetched over a secure channel, to standard output;
lines and ``--binary``; what Redis stores holds no plaintext; a node the policy does not allow
opens nothing; ``show``, ``key rotate``, ``policy`` and the mistakes a user can make."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers import running
from cli_run import TETHER, Cli

MARKER = "PLAINTEXT-MARKER-41d9"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def pipe(cli: Cli, args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*TETHER, *args],
        env={**os.environ, "TETHER_HOME": str(cli.home)},
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_publish_and_consume_through_redis(tmp_path: Path, redis_url: str) -> None:
    cli = Cli(tmp_path / "home")
    try:
        bi = cli.run("identity", "create", "bi").stdout.strip()
        cli.run("node", "create", "shop")
        cli.run("node", "create", "bi")
        cli.run("node", "create", "intruder")
        made = cli.js(
            "stream", "create", "orders", "--at", "shop",
            "--allow", f'subject.identifier = "{bi}"', "--rotate-after-records", "1000",
        )  # fmt: skip
        assert made["records"] == 0
        assert len(made["keys"]) == 1
        assert "key" not in made["keys"][0]  # ids only: no key material in show
        lines = "".join(f"{MARKER} {i}\n" for i in range(2500)).encode()
        p = pipe(cli, ["stream", "publish", "--at", "shop", "--broker", redis_url,
                       "--stream", "orders"], lines)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert b"published 2500 records" in p.stderr
        consume = ["stream", "consume", "--broker", redis_url, "--stream", "orders",
                   "--keys-from", "/node/shop/secure/api"]  # fmt: skip
        p = pipe(cli, [*consume, "--at", "bi", "--name", "bi", "--count", "2500", "--json"])
        assert p.returncode == 0, p.stderr
        assert p.stdout == lines
        assert json.loads(p.stderr.splitlines()[-1]) == {"consumed": 2500, "refused": {}, "gaps": 0}
        # The same consumer again: everything was acknowledged, nothing comes back.
        p = pipe(cli, [*consume, "--at", "bi", "--name", "bi", "--idle", "1"])
        assert p.returncode == 0, p.stderr
        assert p.stdout == b""
        # A node the policy does not allow opens nothing.
        p = pipe(cli, [*consume, "--at", "intruder", "--name", "intruder", "--idle", "2", "--json"])
        assert p.returncode == 0, p.stderr
        assert p.stdout == b""
        assert json.loads(p.stderr.splitlines()[-1])["refused"] == {"not-allowed": 2500}
        # What Redis stores, read with its own client: no plaintext.
        import redis

        host, port = redis_url.split("//")[1].rsplit(":", 1)
        stored = redis.Redis(host=host, port=int(port)).xrange("orders")
        assert len(stored) == 2500
        assert not any(MARKER.encode() in b"".join(f.values()) for _, f in stored)

        shown = cli.js("stream", "show", "orders", "--at", "shop")
        assert shown["records"] == 2500
        assert shown["rotations"] == 2  # 2500 records, 1000 per key
        assert shown["served"] >= 1
        assert shown["refused"] >= 1
        rotated = cli.js("stream", "key", "rotate", "orders", "--at", "shop")
        assert len(rotated["keys"]) == 4
        assert cli.js("stream", "list", "--at", "shop")[0]["stream"] == "orders"

        # --binary: length-prefixed records, any bytes, newlines included.
        records = [b"", b"\n\x00\xff" * 100, os.urandom(70_000)]
        framed = b"".join(struct.pack(">I", len(r)) + r for r in records)
        p = pipe(cli, ["stream", "publish", "--at", "shop", "--broker", redis_url, "--stream",
                       "orders", "--binary"], framed)  # fmt: skip
        assert p.returncode == 0, p.stderr
        p = pipe(cli, [*consume, "--at", "bi", "--name", "bi", "--binary", "--count", "3"])
        assert p.returncode == 0, p.stderr
        assert p.stdout == framed
    finally:
        cli.run("node", "delete", "--all", ok=False)


def test_stream_mistakes_are_refused_with_their_reason(tmp_path: Path, redis_url: str) -> None:
    cli = Cli(tmp_path / "home")
    try:
        cli.run("node", "create", "shop")
        cli.run("stream", "create", "orders", "--at", "shop", "--allow", 'subject.role = "r"')
        cli.fails("stream", "create", "orders", "--at", "shop", reason="already produces")
        cli.fails("stream", "create", "two words", "--at", "shop", reason="invalid stream name")
        cli.fails("stream", "show", "nope", "--at", "shop", reason="no stream produced here 'nope'")
        cli.fails(
            "stream", "create", "x", "--at", "shop", "--rotate-after", "10",
            reason="give a unit", code=2,
        )  # fmt: skip
        publish = ["stream", "publish", "--at", "shop", "--stream", "orders"]
        cli.fails(*publish, "--broker", redis_url, "--batch", "0", reason="invalid batch", code=2)
        p = pipe(cli, [*publish, "--broker", redis_url, "--binary"], struct.pack(">I", 1 << 30))
        assert p.returncode == 1
        assert b"--binary: a record of 1073741824 bytes" in p.stderr
        p = pipe(cli, [*publish, "--broker", redis_url, "--binary"], b"\x00\x00")
        assert b"ends inside a record's length" in p.stderr
        p = pipe(cli, [*publish, "--broker", "kafka://127.0.0.1:9092"], b"x\n")
        assert p.returncode == 1
        assert b"not a broker URL" in p.stderr
        p = pipe(cli, [*publish, "--broker", "redis://127.0.0.1:1"], b"x\n")
        assert p.returncode == 1
        assert b"Traceback" not in p.stderr
        p = pipe(cli, ["stream", "publish", "--at", "shop", "--stream", "unknown", "--broker",
                       redis_url], b"x\n")  # fmt: skip
        assert p.returncode == 1
        assert b"no stream produced here 'unknown'" in p.stderr
        assert b"Traceback" not in p.stderr
    finally:
        cli.run("node", "delete", "--all", ok=False)
