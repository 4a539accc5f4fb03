"""The demos run to the end and report success (their own checks), and the product demo leaves
nothing behind: no temporary home, no daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tether.demo import portals as demo


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _daemons_of(home: str) -> list[int]:
    """Processes still running `tether.daemon --home HOME`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][:1]
        except OSError:
            continue
        if b"tether.daemon" in cmd and home.encode() in cmd and state != "Z":
            found.append(int(entry.name))
    return found


def test_product_demo() -> None:
    p = _run("tether.demo", "--megabytes", "16", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads(p.stdout)
    assert summary["ok"] is True, p.stderr
    assert summary["checks"], summary
    assert all(summary["checks"].values()), summary
    assert summary["failures"] == []
    assert summary["megabytes"] == 16
    assert set(summary["identifiers"]) == {"relay", "db", "app", "intruder"}
    # The story (stderr) shows the real commands.
    assert "$ tether tcp-outlet create --at db" in p.stderr
    assert "$ tether node delete --all" in p.stderr
    home = summary["home"]
    assert not os.path.exists(home)
    if Path("/proc/self").exists():
        assert _daemons_of(home) == []


def test_product_demo_cli_usage() -> None:
    p = _run("tether.cli", "demo", "--help")
    assert p.returncode == 0
    assert "--megabytes" in p.stdout
    assert "example:" in p.stdout
    assert f"(default {demo.DEFAULT_MEGABYTES})" in p.stdout  # the CLI's default is the demo's
    p = _run("tether.cli", "demo", "--megabytes", "0")
    assert p.returncode == 2
    assert "--megabytes" in p.stderr


def test_channel_demo() -> None:
    p = _run("tether.demo.channel", "--megabytes", "4")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "plaintext nowhere in them" in p.stdout
    assert "refused:" in p.stdout
    assert "demo passed" in p.stdout


def test_core_demo() -> None:
    p = _run("tether.demo.core", "--megabytes", "4")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SHA-256 matches" in p.stdout
    assert "DecryptError, ReplayError" in p.stdout
