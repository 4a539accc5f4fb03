"""Brokers that carry sealed records and read nothing of them: one interface, three adapters.

``await connect(url)`` opens a :class:`Broker`: ``nats://HOST:PORT`` (NATS JetStream,
:mod:`.nats`), ``redis://HOST:PORT[/DB]`` (Redis Streams, :mod:`.redis`) or ``mqtt://HOST:PORT``
(MQTT 5 QoS 1 with persistent sessions, :mod:`.mqtt`). Producers ``publish`` opaque payloads to a
stream; consumers ``subscribe`` as a durable consumer, ``fetch`` records in order and ``ack``
them once the application took them; what was not acknowledged comes again to the next
subscription of that consumer. :mod:`.interface` states the contract, each adapter how its broker
meets it (limits, ordering, redelivery). Works on trio and asyncio alike (:mod:`.bridge`).
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import cast

from tether.pipelines.brokers.interface import Broker, BrokerError, Delivery, Subscription

__all__ = ["Broker", "BrokerError", "Delivery", "Subscription", "connect"]

ADAPTERS = {
    "nats": ("tether.pipelines.brokers.nats", "NatsBroker"),
    "redis": ("tether.pipelines.brokers.redis", "RedisBroker"),
    "mqtt": ("tether.pipelines.brokers.mqtt", "MqttBroker"),
}
"""Each scheme's adapter (module, class). An adapter and its client library are imported when
a URL first asks for it: the three clients together take about 0.2 s to import, which every
``tether`` command and every node daemon would otherwise pay at start."""
SCHEMES = tuple(ADAPTERS)


def opener(scheme: str) -> Callable[[str], Awaitable[Broker]]:
    """The ``open`` of the adapter for ``scheme`` (imported now if it was not)."""
    module, name = ADAPTERS[scheme]
    cls = getattr(importlib.import_module(module), name)
    return cast(Callable[[str], Awaitable[Broker]], cls.open)


async def connect(url: str) -> Broker:
    """Open a connection to the broker at ``url``: ``nats://HOST:PORT`` (JetStream),
    ``redis://HOST:PORT[/DB]`` (Streams) or ``mqtt://HOST:PORT`` (MQTT 5)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as e:
        raise BrokerError(f"not a broker URL: {url!r} ({e})") from None
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise BrokerError(
            f"not a broker URL: {url!r}; use nats://HOST:PORT, redis://HOST:PORT[/DB] or "
            "mqtt://HOST:PORT"
        )
    if parts.scheme == "mqtt" and (parts.path not in ("", "/") or parts.query):
        raise BrokerError(f"an MQTT URL has no path or query: {url!r}; use mqtt://HOST:PORT")
    return await opener(parts.scheme)(url)
