"""A histogram of durations in fixed buckets, for a node's metrics (``docs/metrics.md``): one
``bisect`` and two additions per observation, a few integers per histogram whatever is
recorded, read at scrape time in Prometheus' cumulative form. The secure-channel handshakes
(:mod:`tether.node.handshakes`) and the portals' session opens use it."""

from __future__ import annotations

import bisect
from collections.abc import Sequence


class Histogram:
    """Durations (seconds) counted in the buckets whose upper bounds are ``bounds`` (sorted;
    ``+Inf`` is implied), and their sum."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def record(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """The cumulative buckets (``le``, count), ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self._counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out
