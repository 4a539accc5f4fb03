"""Redis Streams (``redis://HOST:PORT[/DB]``), with redis.asyncio on its own asyncio thread.

* A tether stream ``S`` is the Redis stream at key ``S``; each record is one entry
  ``XADD S * r PAYLOAD``. ``publish`` pipelines a batch's XADDs on one connection (so they are
  stored in order) and returns with their replies. Payloads are checked against the server's
  ``proto-max-bulk-len`` (512 MiB unless configured; read at connect) first.
* A consumer ``C`` is the consumer group ``C`` of the stream (created from the stream's start,
  ``MKSTREAM``), read by its one consumer ``C``. A subscription first reads ``C``'s pending
  entries (``XREADGROUP ... 0``: fetched before and never acknowledged; ``redelivered``), then
  new ones (``>``). ``ack`` is ``XACK``. Pending entries stay pending until acknowledged, with no
  timeout: a consumer that went away gets them again when it subscribes again.
* Acknowledged entries stay in the stream (trim it with ``XTRIM`` if need be).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import anyio
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tether.core.errors import InvalidArgumentError
from tether.pipelines.brokers.bridge import AsyncioThread
from tether.pipelines.brokers.interface import (
    BrokerError,
    Delivery,
    check_fetch,
    check_name,
    check_payloads,
)

__all__ = ["RedisBroker", "RedisSubscription"]

T = TypeVar("T")

FIELD = b"r"
CONNECT_TIMEOUT = 5
DEFAULT_MAX_BULK = 512 * 1024 * 1024
"""Redis's default ``proto-max-bulk-len``, used when ``CONFIG GET`` is not allowed."""


class RedisBroker:
    """A connection (pool) to a Redis server."""

    scheme = "redis"

    def __init__(
        self, url: str, thread: AsyncioThread, client: redis.asyncio.Redis, max_payload: int
    ) -> None:
        self._url = url
        self._thread = thread
        self._client = client
        self._max_payload = max_payload
        self._closed = False

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @classmethod
    async def open(cls, url: str) -> RedisBroker:
        thread = await AsyncioThread.start("tether-broker-redis")
        try:
            client, limit = await thread.run(_connect(url))
        except redis.exceptions.RedisError as e:
            await thread.aclose()
            raise BrokerError(
                f"cannot reach the Redis server at {url} ({type(e).__name__}: {e}): check that "
                "redis-server runs there and the address is right"
            ) from None
        except BaseException:
            await thread.aclose()
            raise
        return cls(url, thread, client, limit)

    async def _call(self, aw: Awaitable[T]) -> T:
        if self._closed:
            raise BrokerError(f"Redis: the connection to {self._url} is closed: connect again")
        try:
            return await self._thread.run(_awaited(aw))
        except redis.exceptions.ConnectionError as e:
            raise BrokerError(
                f"Redis: the connection to {self._url} failed ({e}); check that the server "
                "runs, and try again (what was not acknowledged will be delivered again)"
            ) from None
        except redis.exceptions.ResponseError as e:
            if str(e).startswith("WRONGTYPE"):
                raise BrokerError(
                    "Redis: the key holds another type than a stream: choose another stream name"
                ) from None
            raise BrokerError(f"Redis refused: {e}") from None
        except redis.exceptions.RedisError as e:
            raise BrokerError(f"Redis: {type(e).__name__}: {e}") from None

    async def publish(self, stream: str, payloads: Sequence[bytes]) -> None:
        check_name("stream", stream, "Redis")
        check_payloads(payloads, self._max_payload, "Redis")
        if not payloads:
            return
        pipe = self._client.pipeline(transaction=False)
        for p in payloads:
            pipe.xadd(stream, {FIELD: p})
        await self._call(pipe.execute())

    async def subscribe(self, stream: str, consumer: str) -> RedisSubscription:
        check_name("stream", stream, "Redis")
        check_name("consumer", consumer, "Redis")
        await self._call(_create_group(self._client, stream, consumer))
        return RedisSubscription(self, stream, consumer)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with anyio.CancelScope(shield=True), contextlib.suppress(redis.exceptions.RedisError):
                await self._thread.run(self._client.aclose())
        finally:
            await self._thread.aclose()


class RedisSubscription:
    """A consumer group's one consumer."""

    def __init__(self, broker: RedisBroker, stream: str, consumer: str) -> None:
        self._broker = broker
        self._stream = stream
        self._consumer = consumer
        self._pending_after: bytes | None = b"0"  # None: the pending entries were all read
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("Redis: this subscription is closed: subscribe again")

    async def fetch(self, max_records: int, timeout: float) -> list[Delivery]:
        check_fetch(max_records, timeout)
        self._check_open()
        client = self._broker._client
        while self._pending_after is not None:
            entries = _entries(
                await self._broker._call(
                    client.xreadgroup(
                        self._consumer,
                        self._consumer,
                        {self._stream: self._pending_after},
                        count=max_records,
                    )
                )
            )
            if not entries:
                self._pending_after = None
                break
            self._pending_after = entries[-1][0]
            out = await self._deliveries(entries, redelivered=True)
            if out:
                return out
        block = max(1, round(timeout * 1000)) if timeout > 0 else None
        entries = _entries(
            await self._broker._call(
                client.xreadgroup(
                    self._consumer,
                    self._consumer,
                    {self._stream: ">"},
                    count=max_records,
                    block=block,
                )
            )
        )
        return await self._deliveries(entries, redelivered=False)

    async def _deliveries(
        self, entries: list[tuple[bytes, dict[bytes, bytes] | None]], redelivered: bool
    ) -> list[Delivery]:
        out, gone = [], []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream (XDEL, XTRIM) while pending
                gone.append(entry_id)
            elif FIELD not in fields:
                raise BrokerError(
                    f"Redis: the entry {entry_id.decode()} of {self._stream!r} has no field "
                    f"{FIELD.decode()!r}: the stream holds entries tether did not write"
                )
            else:
                out.append(Delivery(fields[FIELD], entry_id, redelivered))
        if gone:
            await self._xack(gone)
        return out

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._check_open()
        ids = []
        for d in deliveries:
            if not isinstance(d.token, bytes):
                raise InvalidArgumentError("Redis: not a delivery of a Redis subscription")
            ids.append(d.token)
        if ids:
            await self._xack(ids)

    async def _xack(self, ids: list[bytes]) -> None:
        await self._broker._call(self._broker._client.xack(self._stream, self._consumer, *ids))

    async def aclose(self) -> None:
        # Nothing to release: the pending entries stay with the consumer until acknowledged.
        self._closed = True


async def _connect(url: str) -> tuple[redis.asyncio.Redis, int]:
    # No retries: a failed call is reported (BrokerError) and the caller decides; a later call
    # reconnects by itself.
    client = redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, retry=Retry(NoBackoff(), 0)
    )
    try:
        await client.ping()
        try:
            config: Any = await client.config_get("proto-max-bulk-len")
            limit = int(next(iter(config.values())))
        except (redis.exceptions.ResponseError, StopIteration, TypeError, ValueError):
            limit = DEFAULT_MAX_BULK
    except BaseException:
        await client.aclose()
        raise
    return client, limit


async def _create_group(client: redis.asyncio.Redis, stream: str, group: str) -> None:
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.exceptions.ResponseError as e:
        if not str(e).startswith("BUSYGROUP"):
            raise


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """The entries of an XREADGROUP reply on one stream (RESP2: ``[[stream, entries]]``)."""
    if not reply:
        return []
    entries: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[0][1]
    return entries
