"""Smoke test of the portal benchmark harness (``benches/portal.py``): a small transfer through
the direct path and through a tether portal (two node processes) moves exactly the bytes sent,
and every process the harness started is gone afterwards. Timings are not checked."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parents[1] / "benches"
if str(BENCHES) not in sys.path:
    sys.path.append(str(BENCHES))

import portal  # noqa: E402 - lives in benches/, added to the path just above

SIZE = 16 << 20

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="the harness reads CPU times from /proc"
)


def test_throughput_moves_exactly_size() -> None:
    with portal.Bench(["direct", "tether"]) as bench:
        pids = [proc.pid for _, proc in bench.procs.started]
        tmp = bench.tmp
        for name in ("direct", "tether"):
            transfer = portal.measure_throughput(bench.contenders[name], SIZE, bench.load.pid)
            assert transfer.moved == SIZE, name
        assert set(transfer.cpu) == {"inlet node", "outlet node"}
        assert set(transfer.load_cpu) == {portal.LOAD_CLIENT, portal.LOAD_SINK}
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} outlived the harness"
    assert not tmp.exists()
