"""Producers and consumers of end-to-end encrypted streams (``docs/pipelines.md``).

A :class:`Producer` seals records with its stream's current data key, in batches (one call into
the Rust core per batch, the GIL released) and publishes them to a broker; the broker stores
ciphertext only: the body, the application's headers, everything but the key id and the
position. A :class:`Consumer` fetches them, opens them in batches with the keys its node got
from the producer's node over a secure channel (only if a policy on the stream allows it:
:mod:`tether.services.stream_keys`), yields them in order, and acknowledges them to the broker
only once the application has taken them: when it asks for the next batch, or closes.

A record the consumer cannot open (altered in the broker, for another stream, replayed or
reordered, sealed with a key it may not have) is refused with its reason, counted in
:attr:`Consumer.refused`, logged, and acknowledged, so the stream goes on.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self

import anyio

from tether._core import OpenedRecord, RecordOpener, record_key_id
from tether.api import Node
from tether.core.errors import TetherError
from tether.identity.policy import Policy
from tether.identity.trust import TrustPolicy
from tether.pipelines.brokers import Broker, Delivery, Subscription
from tether.services.stream_keys import (
    SERVICE,
    DataKey,
    Lease,
    StreamKeyError,
    StreamKeyRing,
    StreamKeyService,
    check_stream,
    key_request,
    parse_keys,
)

log = logging.getLogger("tether.streams")

DENIED_BACKOFF = 5.0
"""Seconds a consumer whose keys were refused waits before it asks again."""

Headers = Sequence[tuple[str, bytes]]

_services: weakref.WeakKeyDictionary[Node, StreamKeyService] = weakref.WeakKeyDictionary()


async def key_service(node: Node) -> StreamKeyService:
    """The node's ``stream_keys`` service (started the first time a producer asks)."""
    service = _services.get(node)
    if service is None:
        service = _services[node] = StreamKeyService(node)
        await service.start()
    return service


Record = OpenedRecord
"""An opened record, as the core made it (no per-record Python work): ``body``, ``headers``
(``(name, value)`` pairs), ``producer``, ``position``, ``key_id``, and ``gap``: positions skipped
before this one (records the broker lost or dropped, or a producer's restart:
``docs/pipelines.md``)."""


LeaseSource = Callable[[int], Awaitable[Lease]]
"""Positions to seal with, for up to N records: a key ring's (in this process), or the node's
(``tether stream publish`` asks it over the control API)."""
KeySource = Callable[[], Awaitable[tuple[str, list[DataKey]]]]
"""The producer and the keys of the stream this consumer may read (or StreamKeyError)."""


class Publisher:
    """Seals records with positions from ``leases`` and publishes them to ``broker``: one Rust
    call per batch (per lease), then one publish, which returns once the broker has them."""

    def __init__(self, broker: Broker, stream: str, leases: LeaseSource) -> None:
        self.broker = broker
        self.stream = check_stream(stream)
        self.leases = leases
        self.published = 0
        self._order = anyio.Lock()  # concurrent publish calls reach the broker in position order

    async def publish(
        self, bodies: Sequence[bytes], headers: Sequence[Headers | None] | None = None
    ) -> None:
        """Seal ``bodies`` (with their ``headers``, sealed too) and publish them, in order;
        returns once the broker has accepted them all."""
        if headers is not None and len(headers) != len(bodies):
            raise TetherError(f"{len(bodies)} records but {len(headers)} header lists")
        done = 0
        async with self._order:
            while done < len(bodies):
                lease = await self.leases(len(bodies) - done)
                n = lease.count
                part = None if headers is None else headers[done : done + n]
                sealed = lease.sealer().seal_many(bodies[done : done + n], part)
                await self.broker.publish(self.stream, sealed)
                done += n
                self.published += n


class Producer(Publisher):
    """A :class:`Publisher` whose node (in this process) owns the stream's keys and serves
    them to the consumers ``allow`` (and the node's policies for resource type ``stream``)
    admit."""

    def __init__(
        self,
        node: Node,
        broker: Broker,
        stream: str,
        *,
        allow: str | Policy | None,
        rotate_after_records: int = 1_000_000,
        rotate_after_seconds: float = 3600.0,
        algorithm: str = "AES-256-GCM",
    ) -> None:
        if node.identity is None:
            raise StreamKeyError("a producer's node needs an identity (its records name it)")
        self.node = node
        self.ring = StreamKeyRing(
            stream,
            node.identity.identity.identifier,
            rotate_after_records=rotate_after_records,
            rotate_after_seconds=rotate_after_seconds,
            algorithm=algorithm,
        )
        self.allow = allow

        async def lease(records: int) -> Lease:
            return self.ring.lease(records)

        super().__init__(broker, stream, lease)

    async def __aenter__(self) -> Self:
        (await key_service(self.node)).add(self.ring, self.allow)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class Subscriber:
    """Fetches, opens and hands over the records of ``stream`` as the durable consumer
    ``name`` of ``broker``, with the keys ``keys`` gives (asked again when a record names a key
    it does not have); acknowledges a batch once the application has it (the next
    :meth:`fetch`, or :meth:`aclose`)."""

    def __init__(
        self,
        broker: Broker,
        stream: str,
        name: str,
        keys: KeySource,
        *,
        batch: int = 512,
        timeout: float = 1.0,
    ) -> None:
        self.broker = broker
        self.stream = check_stream(stream)
        self.name = name
        self.keys = keys
        self.batch = batch
        self.timeout = timeout
        self.refused: Counter[str] = Counter()
        """Records refused, by reason (``malformed``, ``unknown-key``, ``forged``,
        ``replayed``, ``not-allowed``)."""
        self.gaps = 0
        """Positions skipped in all (see :attr:`Record.gap`)."""
        self.opened = 0
        self.last_refusal = ""
        self._sub: Subscription | None = None
        self._opener = RecordOpener(self.stream)
        self._unacked: list[Delivery] = []
        self._denied = ""
        self._denied_at = -math.inf

    async def __aenter__(self) -> Self:
        self._sub = await self.broker.subscribe(self.stream, self.name)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose(ack=et is None)

    async def aclose(self, *, ack: bool = True) -> None:
        """Acknowledge what the application took (unless ``ack`` is false), and unsubscribe."""
        if self._sub is None:
            return
        if ack and self._unacked:
            await self._sub.ack(self._unacked)
        self._unacked = []
        await self._sub.aclose()
        self._sub = None

    async def _fetch_keys(self) -> None:
        if time.monotonic() - self._denied_at < DENIED_BACKOFF:
            return  # refused a moment ago: not asked again for every batch
        try:
            producer, keys = await self.keys()
        except StreamKeyError as e:
            self._denied, self._denied_at = str(e), time.monotonic()
            log.warning("stream %s: no keys: %s", self.stream, e)
            return
        self._denied, self._denied_at = "", -math.inf
        for k in keys:
            if not self._opener.has_key(k.key_id):
                self._opener.add_key(k.key_id, k.key, producer, k.algorithm)

    async def fetch(
        self, max_records: int | None = None, timeout: float | None = None
    ) -> list[Record]:
        """The next records (``[]`` if none came within ``timeout``); the ones returned by the
        previous call are acknowledged to the broker first (the application has them)."""
        if self._sub is None:
            raise TetherError("open the consumer first: `async with …(…) as consumer`")
        if self._unacked:
            await self._sub.ack(self._unacked)
            self._unacked = []
        deliveries = await self._sub.fetch(max_records or self.batch, timeout or self.timeout)
        if not deliveries:
            return []
        payloads = [d.payload for d in deliveries]
        needed = {k for p in payloads if (k := record_key_id(p)) is not None}
        if any(not self._opener.has_key(k) for k in needed):
            await self._fetch_keys()
        out: list[Record] = []
        for outcome in self._opener.open_many(payloads):
            if isinstance(outcome, OpenedRecord):
                out.append(outcome)
                self.gaps += outcome.gap
                continue
            reason, message = outcome.reason, outcome.message
            if reason == "unknown-key" and self._denied:
                reason, message = "not-allowed", f"{message}; the producer's node: {self._denied}"
            self.refused[reason] += 1
            self.last_refusal = message
            n = self.refused[reason]
            if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th… of each reason: the log stays small
                log.warning(
                    "stream %s: refused %d record(s) (%s): %s", self.stream, n, reason, message
                )
        self.opened += len(out)
        self._unacked = deliveries  # refused ones too: the stream goes on
        return out

    async def records(self) -> AsyncIterator[Record]:
        """Every record, as it comes (forever: break out of the loop to stop)."""
        while True:
            for record in await self.fetch():
                yield record


class Consumer(Subscriber):
    """A :class:`Subscriber` whose keys its node (in this process) gets from the producer's
    node at ``keys_from`` (a route ending at its secure channel listener, e.g.
    ``/node/orders/secure/api``), over a secure channel, as the stream's policy allows."""

    def __init__(
        self,
        node: Node,
        broker: Broker,
        stream: str,
        keys_from: str,
        name: str,
        *,
        trust: TrustPolicy | None = None,
        batch: int = 512,
        timeout: float = 1.0,
    ) -> None:
        self.node = node

        async def keys() -> tuple[str, list[DataKey]]:
            return await fetch_keys(node, keys_from, stream, trust=trust)

        super().__init__(broker, stream, name, keys, batch=batch, timeout=timeout)


async def fetch_keys(
    node: Node, keys_from: str, stream: str, *, trust: TrustPolicy | None = None
) -> tuple[str, list[DataKey]]:
    """The producer and keys of ``stream`` from the ``stream_keys`` service at ``keys_from``
    (through a secure channel: the route ends at one), as ``node``; StreamKeyError says why
    not."""
    route = f"{keys_from.rstrip('/')}/service/{SERVICE}"
    try:
        answer = await node.request(route, key_request(stream), trust=trust)
    except TetherError as e:
        if isinstance(e, StreamKeyError):
            raise
        raise StreamKeyError(f"asking {route} for the keys of {stream!r}: {e}") from None
    try:
        return parse_keys(answer)
    except StreamKeyError:
        raise
    except TetherError as e:  # a malformed answer: the producer's node is not one we can read
        raise StreamKeyError(f"the answer of {route} is not a stream key answer: {e}") from None
