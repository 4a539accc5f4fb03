"""What a node's secure-channel handshakes came to, for its metrics (``docs/metrics.md``):
how many ended each way, by role, and how long the ones that completed took.

The channel layer records each handshake once, when it ends: as the initiator or the responder
(a listener), ``ok`` (the channel exists), ``refused`` (a trust or policy check said no, on
either side), ``failed`` (a malformed or forged handshake message) or ``timeout`` (no reply in
time). The counts are a few integers per node, whatever peers send.
"""

from __future__ import annotations

from tether.node.histogram import Histogram

ROLES = ("initiator", "responder")
OUTCOMES = ("ok", "refused", "failed", "timeout")
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds, in seconds, of the completed handshakes' duration histogram."""


class Handshakes:
    """The handshake outcomes of one node, and the durations of the completed ones."""

    def __init__(self) -> None:
        self.outcomes = {(role, outcome): 0 for role in ROLES for outcome in OUTCOMES}
        self._durations = {role: Histogram(BUCKETS) for role in ROLES}

    def record(self, role: str, outcome: str, seconds: float = 0.0) -> None:
        """One handshake ended (``seconds``: how long it took, for one that completed)."""
        self.outcomes[(role, outcome)] += 1
        if outcome == "ok":
            self._durations[role].record(seconds)

    def histogram(self, role: str) -> tuple[list[tuple[str, float]], float]:
        """The cumulative buckets (``le``, count; ``+Inf`` last) and the sum of the completed
        handshakes' durations."""
        durations = self._durations[role]
        return durations.buckets(), durations.sum
