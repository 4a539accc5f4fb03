"""Timing machinery for ``benches/run.py``: warm-up and calibration, interleaved rounds, medians.

Nothing here knows what is being measured. A :class:`Variant` is one implementation of one
benchmark, reduced to ``run(n)`` (do ``n`` iterations); a :class:`Group` is the variants that are
compared with each other. :func:`measure_group` warms every variant up, picks an iteration count
that makes one round last about ``round_time`` seconds, then times the variants in interleaved
rounds (A, B, C, A, B, C, ...) so that drift of the machine (frequency, other load) hits all of
them alike. Results are medians over the rounds.
"""

from __future__ import annotations

import contextlib
import gc
import math
import signal
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType

Runner = Callable[[int], None]
"""``run(n)`` performs ``n`` iterations of the measured operation."""


@dataclass(frozen=True)
class Variant:
    """One implementation under test."""

    name: str
    run: Runner
    items_per_iter: int = 1
    """Counted units (handshakes, messages, frames) that one iteration processes."""
    bytes_per_iter: int = 0
    """Payload bytes one iteration processes (0 when throughput in bytes is meaningless)."""


@dataclass(frozen=True)
class Group:
    """Variants measured side by side, in interleaved rounds."""

    key: str
    """Stable identifier, e.g. ``transport/1024`` (used by ``--only`` and in the JSON)."""
    title: str
    unit: str
    """Unit of the counted items per second, e.g. ``msg/s``."""
    variants: Sequence[Variant]


@dataclass(frozen=True)
class Settings:
    rounds: int
    round_time: float
    """Target duration of one timed round of one variant, in seconds."""
    warmup_time: float
    """Minimum time spent running each variant before it is timed, in seconds."""


@dataclass(frozen=True)
class Measurement:
    group: str
    name: str
    unit: str
    iterations: int
    """Iterations per round."""
    items_per_iter: int
    bytes_per_iter: int
    seconds: tuple[float, ...]
    """Duration of each round."""

    @property
    def rates(self) -> list[float]:
        """Items per second, one value per round."""
        return [self.iterations * self.items_per_iter / s for s in self.seconds]

    @property
    def median(self) -> float:
        """Median items per second."""
        return statistics.median(self.rates)

    @property
    def median_mb_s(self) -> float | None:
        """Median payload throughput in MB/s (10^6 bytes), if the benchmark moves bytes."""
        if not self.bytes_per_iter:
            return None
        return statistics.median(
            self.iterations * self.bytes_per_iter / s / 1e6 for s in self.seconds
        )

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-round rates: how noisy the rounds were."""
        rates = self.rates
        return (max(rates) - min(rates)) / statistics.median(rates)


def _timed(run: Runner, n: int) -> float:
    """Seconds taken by ``run(n)``, with the cyclic GC off (as :mod:`timeit` does)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        run(n)
        return time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()


def calibrate(run: Runner, settings: Settings) -> int:
    """Warm ``run`` up and return the iteration count that makes a round last ``round_time``.

    The count grows until one batch lasts at least a tenth of a round (enough for a stable
    per-iteration estimate), and batches keep running until ``warmup_time`` has been spent; the
    estimate of the last (warmest) batch decides.
    """
    resolution = settings.round_time / 10
    n, spent = 1, 0.0
    while True:
        dt = _timed(run, n)
        spent += dt
        if dt >= resolution:
            if spent >= settings.warmup_time:
                return max(1, round(n * settings.round_time / dt))
        elif dt <= 0:
            n *= 10
        else:
            # Aim a little past the resolution threshold, growing at most tenfold per step.
            n = max(n + 1, min(n * 10, math.ceil(n * 2 * resolution / dt)))


def measure_group(group: Group, settings: Settings) -> list[Measurement]:
    """Calibrate each variant, then time all of them in interleaved rounds."""
    counts = [calibrate(v.run, settings) for v in group.variants]
    seconds: list[list[float]] = [[] for _ in group.variants]
    for _ in range(settings.rounds):
        for v, n, out in zip(group.variants, counts, seconds, strict=True):
            out.append(_timed(v.run, n))
    return [
        Measurement(
            group=group.key,
            name=v.name,
            unit=group.unit,
            iterations=n,
            items_per_iter=v.items_per_iter,
            bytes_per_iter=v.bytes_per_iter,
            seconds=tuple(s),
        )
        for v, n, s in zip(group.variants, counts, seconds, strict=True)
    ]


# --- formatting ------------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    """A rate for humans: thousands separators, three significant digits below 100."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: str) -> str:
    """A Markdown table padded to align in a terminal too.

    ``right`` has one character per column: ``r`` for right-aligned, anything else for left.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if a == "r" else c.ljust(w)
            for c, w, a in zip(cells, widths, right, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if a == "r" else "-" * (w + 2)
        for w, a in zip(widths, right, strict=True)
    )
    return "\n".join([line(headers), rule + "|", *(line(r) for r in rows)])


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def signals_exit() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C does, so a benchmark's child processes are
    stopped."""
    old = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
