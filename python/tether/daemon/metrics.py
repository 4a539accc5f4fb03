"""A node's Prometheus metrics (``docs/metrics.md``): ``GET /metrics`` on its control socket,
and on a TCP address when asked (``tether node run --metrics HOST:PORT``).

The values are read when scraped, from what ``tether node show --json`` and the portals' and
relays' ``show`` report (one source, so the two agree): no per-message Python work, and what the
Rust data plane counts (its sessions' bytes, what it forwarded for a relay) is read from it then.
The exposition format is ``prometheus_client``'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from tether.api import Node
from tether.channel.channel import open_channels
from tether.node.handshakes import ROLES
from tether.services.portal import Inlet, Outlet

PORTAL = ["kind", "name"]


class _Host(Protocol):
    """What the metrics read of a daemon (:class:`~tether.daemon.daemon.Daemon`)."""

    started_at: int

    @property
    def node(self) -> Node: ...


class NodeCollector(Collector):
    """Every metric of one node, read at each scrape."""

    def __init__(self, host: _Host) -> None:
        self.host = host

    def collect(self) -> Iterator[Metric]:
        node = self.host.node
        yield GaugeMetricFamily(
            "tether_node_start_time_seconds",
            "When the node started (Unix time).",
            value=self.host.started_at,
        )
        links = GaugeMetricFamily("tether_links", "Open TCP links.", labels=["direction"])
        counts = {"incoming": 0, "outgoing": 0}
        for conn in node.tcp.connections.values():
            counts["outgoing" if conn.outgoing else "incoming"] += 1
        for direction, n in counts.items():
            links.add_metric([direction], n)
        yield links
        yield GaugeMetricFamily(
            "tether_secure_channels", "Open secure channels.", value=len(open_channels(node))
        )
        yield GaugeMetricFamily(
            "tether_pending_handshakes",
            "Secure-channel handshakes in progress.",
            value=node.pending_handshakes,
        )
        handshakes = CounterMetricFamily(
            "tether_handshakes",
            "Secure-channel handshakes, by role and how they ended.",
            labels=["role", "outcome"],
        )
        for (role, outcome), n in node.handshakes.outcomes.items():
            handshakes.add_metric([role, outcome], n)
        yield handshakes
        duration = HistogramMetricFamily(
            "tether_handshake_duration_seconds",
            "How long the completed secure-channel handshakes took, by role.",
            labels=["role"],
        )
        for role in ROLES:
            buckets, total = node.handshakes.histogram(role)
            duration.add_metric([role], buckets, total)
        yield duration
        refusals = CounterMetricFamily(
            "tether_refusals",
            "What the node refused or dropped, by reason (as node show's counters).",
            labels=["reason"],
        )
        for reason, n in sorted(node.counters.items()):
            refusals.add_metric([reason], n)
        yield refusals
        by_policy = CounterMetricFamily(
            "tether_policy_refusals",
            "Refusals by a policy, by the resource that refused (type and name).",
            labels=["resource_type", "resource"],
        )
        for resource_type, names in node.policy_refusal_counts().items():
            for resource, n in names.items():
                by_policy.add_metric([resource_type, resource], n)
        yield by_policy
        pressure = CounterMetricFamily(
            "tether_backpressure_events",
            "Times back-pressure was applied, by kind (Python tasks and the Rust data plane).",
            labels=["kind"],
        )
        for kind, n in node.backpressure_events().items():
            pressure.add_metric([kind], n)
        yield pressure
        expiry = GaugeMetricFamily(
            "tether_credential_expiry_timestamp_seconds",
            "When each credential the node presents expires (Unix time), by its issuer.",
            labels=["issuer"],
        )
        for credential in node.identity.credentials if node.identity is not None else ():
            expiry.add_metric([credential.issuer], credential.expires_at)
        yield expiry
        yield from self._portals(node)
        yield from self._relays(node)

    def _portals(self, node: Node) -> Iterator[Metric]:
        open_now = GaugeMetricFamily(
            "tether_portal_sessions", "Open portal sessions.", labels=PORTAL
        )
        opened = CounterMetricFamily(
            "tether_portal_sessions_opened", "Portal sessions opened.", labels=PORTAL
        )
        refused = CounterMetricFamily(
            "tether_portal_refused",
            "Portal sessions refused (policy, session limit, draining).",
            labels=PORTAL,
        )
        failed = CounterMetricFamily(
            "tether_portal_failed", "Portal sessions that failed to open.", labels=PORTAL
        )
        received = CounterMetricFamily(
            "tether_portal_received_bytes",
            "Bytes read from the portal's TCP side (inlet: its clients; outlet: its target).",
            labels=PORTAL,
        )
        sent = CounterMetricFamily(
            "tether_portal_sent_bytes",
            "Bytes written to the portal's TCP side.",
            labels=PORTAL,
        )
        open_seconds = HistogramMetricFamily(
            "tether_portal_session_open_seconds",
            "How long portal sessions took to open (inlet: accepted connection to the outlet's "
            "answer that its target is connected; outlet: OPEN to the target connected).",
            labels=PORTAL,
        )
        portals: list[Outlet | Inlet] = [*node.outlets.values(), *node.inlets.values()]
        for portal in portals:
            info = portal.info()
            labels = [portal.kind, portal.name]
            open_now.add_metric(labels, _number(info["sessions"]))
            opened.add_metric(labels, _number(info["total"]))
            refused.add_metric(labels, _number(info["refused"]))
            failed.add_metric(labels, _number(info["failed"]))
            received.add_metric(labels, _number(info["bytes_in"]))
            sent.add_metric(labels, _number(info["bytes_out"]))
            latency = portal.open_latency
            open_seconds.add_metric(labels, latency.buckets(), latency.sum)
        yield from (open_now, opened, refused, failed, received, sent, open_seconds)

    def _relays(self, node: Node) -> Iterator[Metric]:
        forwarded = CounterMetricFamily(
            "tether_relay_forwarded_messages",
            "Messages forwarded to a relay name's claimer.",
            labels=["name"],
        )
        forwarded_bytes = CounterMetricFamily(
            "tether_relay_forwarded_bytes",
            "Payload bytes of the messages forwarded to a relay name's claimer.",
            labels=["name"],
        )
        online = GaugeMetricFamily(
            "tether_relay_online", "Whether a relay name's claimer is connected.", labels=["name"]
        )
        for claim in node.relay_service.info() if node.relay_service is not None else []:
            name = str(claim["name"])
            forwarded.add_metric([name], _number(claim["forwarded"]))
            forwarded_bytes.add_metric([name], _number(claim["forwarded_bytes"]))
            online.add_metric([name], 1 if claim["online"] else 0)
        yield from (forwarded, forwarded_bytes, online)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class Metrics:
    """One node's registry, and its text exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, host: _Host) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(host))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
