"""Both demos run to the end and report success (their own checks: intact data, no plaintext at
the middle node, the unauthorised identity refused)."""

from __future__ import annotations

import subprocess
import sys


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_product_demo() -> None:
    p = _run("tether.demo", "--megabytes", "4")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "plaintext nowhere in them" in p.stdout
    assert "refused:" in p.stdout
    assert "demo passed" in p.stdout


def test_core_demo() -> None:
    p = _run("tether.demo_core", "--megabytes", "4")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SHA-256 matches" in p.stdout
    assert "DecryptError, ReplayError" in p.stdout
