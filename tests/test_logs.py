"""A node's log (``tether.daemon.logs``): what peers send cannot forge log lines or terminal
escapes, and the log is rotated by size, so what an attacker makes a node write is bounded on disk.

* ``escape`` (a property over any text): the result has no control character, and text without
  one is unchanged.
* A node's log rotates at ``MAX_BYTES`` and keeps ``BACKUPS`` old files.
* End to end: an attacker with a raw socket sends error reports full of newlines and terminal
  escapes to a running daemon's channel decryptors (which log the reports they get); the daemon's
  ``node.log`` has no forged line, and shows the bytes as visible escapes.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli_run import Cli
from rawwire import KIND_ERROR, Raw, local
from tether.core.errors import InvalidArgumentError
from tether.daemon import logs

FORGED = "\n2020-01-01 00:00:00,000 INFO tether.node: forged line\x1b[2J\r"


@given(st.text())
def test_escape_leaves_no_control_character(text: str) -> None:
    out = logs.escape(text)
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", out)
    if not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", text):
        assert out == text


def test_escape_shows_each_byte() -> None:
    assert logs.escape("a\nb\x1b[1mc\u2028") == "a\\nb\\x1b[1mc\\u2028"


def test_the_log_rotates_by_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "MAX_BYTES", 4096)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    path = tmp_path / "node.log"
    try:
        logs.configure(path)
        log = logging.getLogger("tether.test")
        for i in range(2000):
            log.info("line %d: %s", i, "x" * 40)
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = saved
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["node.log", "node.log.1", "node.log.2", "node.log.3"]
    assert all(p.stat().st_size <= 4096 + 200 for p in tmp_path.iterdir())
    assert "line 1999" in path.read_text()


def test_a_peer_cannot_forge_lines_in_a_daemons_log(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    try:
        n2 = cli.js("node", "create", "n2")
        cli.js("node", "create", "n1")
        # A channel n1 -> n2: n2 holds a decryptor, which logs the error reports it gets.
        assert cli.js("message", "send", "--at", "n1", "--to",
                      "/node/n2/secure/api/service/echo", "hi")["reply"] == "hi"  # fmt: skip
        port = int(n2["listeners"][0]["address"].rsplit(":", 1)[1])
        r = Raw(port, source="127.0.0.2")
        try:
            for k in range(1, 12):
                r.send([local(f"sc#{k}.in")], bytes([KIND_ERROR]) + FORGED.encode())
            r.send([local("echo")], b"\0sync")  # answered after the reports were handled
            assert r.message().payload == b"\0sync"
        finally:
            r.close()
        text = (tmp_path / "home" / "nodes" / "n2" / "node.log").read_text()
        assert "the path broken" in text  # the reports were logged...
        assert not any(line.startswith("2020-01-01") for line in text.splitlines())
        assert "\x1b" not in text
        assert "\\n2020-01-01 00:00:00,000 INFO tether.node: forged line\\x1b[2J\\r" in text
    finally:
        cli.run("node", "delete", "--all", ok=False)


def test_rotation_is_chosen_in_the_environment(tmp_path: Path) -> None:
    assert logs.rotation({}) == (logs.MAX_BYTES, logs.BACKUPS)
    assert logs.rotation({"TETHER_LOG_MAX_SIZE": "512k", "TETHER_LOG_KEEP": "7"}) == (512 << 10, 7)
    assert logs.rotation({"TETHER_LOG_MAX_SIZE": "10MB"}) == (10 << 20, logs.BACKUPS)
    assert logs.rotation({"TETHER_LOG_MAX_SIZE": "8192"})[0] == 8192
    for size in ("10X", "1K", "-5M", "lots", "99999999999999M"):
        with pytest.raises(InvalidArgumentError, match="TETHER_LOG_MAX_SIZE"):
            logs.rotation({"TETHER_LOG_MAX_SIZE": size})
    for keep in ("0", "101", "two", "-1"):
        with pytest.raises(InvalidArgumentError, match="TETHER_LOG_KEEP"):
            logs.rotation({"TETHER_LOG_KEEP": keep})
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure(tmp_path / "node.log", rotate=(4096, 1))
        for i in range(500):
            logging.getLogger("tether.test").info("line %d: %s", i, "x" * 40)
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.log", "node.log.1"]


def test_a_bad_rotation_setting_stops_the_node_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_LOG_KEEP", "0")
    cli = Cli(tmp_path / "home")
    err = cli.fails("node", "create", "n1", reason="TETHER_LOG_KEEP='0'")
    assert "1 to 100" in err
    monkeypatch.setenv("TETHER_LOG_KEEP", "2")
    cli.run("node", "create", "n2")
    cli.run("node", "delete", "--all")
