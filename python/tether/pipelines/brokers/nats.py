"""NATS JetStream (``nats://HOST:PORT``), with nats-py on its own asyncio thread.

* A tether stream ``S`` is the JetStream stream whose one subject is ``S`` (so ``S`` must be a
  valid NATS subject: no wildcards ``*`` ``>``, no empty token, not starting with ``$``), named
  ``S`` escaped (every character but ``A-Z a-z 0-9 -`` written ``_XX``, its UTF-8 bytes in hex:
  one name per stream, never shared). It is created when missing: file storage, the server's
  default limits (records stay after they are acknowledged, until those limits drop them).
* ``publish`` sends the whole batch without waiting (``publish_async``: one connection, so the
  server stores them in the order sent), then waits for every PubAck. Payloads are checked
  against the server's ``max_payload`` (1 MiB unless configured) first.
* A consumer is a durable pull consumer with explicit acks, delivering from the stream's start.
  ``ack`` acks each record then flushes (the server has the acks when it returns). ``aclose``
  naks what was fetched and not acked, so the next subscription gets it at once, marked
  redelivered, before newer records; a consumer that vanished without closing gets its records
  again after :data:`ACK_WAIT`. At most :data:`MAX_ACK_PENDING` records can be out unacked.
* A lost connection is not retried: the broker is broken (:class:`BrokerError`); connect again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import anyio
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from tether.core.errors import InvalidArgumentError
from tether.pipelines.brokers.bridge import AsyncioThread
from tether.pipelines.brokers.interface import (
    BrokerError,
    Delivery,
    check_fetch,
    check_name,
    check_payloads,
)

__all__ = ["ACK_WAIT", "MAX_ACK_PENDING", "NatsBroker", "NatsSubscription"]

T = TypeVar("T")

ACK_WAIT = 60.0
"""Seconds a fetched record may stay unacknowledged before the server delivers it again."""
MAX_ACK_PENDING = 10_000
"""Records a consumer may have fetched and not acknowledged; beyond it, fetch returns nothing."""
CONNECT_TIMEOUT = 5
PUBLISH_TIMEOUT = 30.0
"""Seconds to wait for a batch's PubAcks."""

_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
NATS_ERRORS = (nats.errors.Error, OSError, TimeoutError)


def _escaped(what: str, name: str) -> str:
    """A JetStream stream or consumer name for ``name``: injective, and without the characters
    JetStream refuses (``.`` ``*`` ``>``, whitespace, path separators)."""
    check_name(what, name, "NATS")
    out = "".join(c if c in _NAME_CHARS else "".join(f"_{b:02X}" for b in c.encode()) for c in name)
    if len(out) > 255:  # the server makes a directory of it
        raise BrokerError(
            f"NATS: the {what} name {name[:40]!r}... is {len(out)} characters once escaped for "
            "JetStream (at most 255): use a shorter name, or fewer characters other than "
            "letters, digits and -"
        )
    return out


def subject_of(stream: str) -> str:
    """``stream`` as a NATS subject, if it is a valid one."""
    check_name("stream", stream, "NATS")
    if (
        stream.startswith("$")
        or any(t in ("", "*", ">") for t in stream.split("."))
        or any(c in "*>" for c in stream)
    ):
        raise BrokerError(
            f"NATS: the stream name {stream!r} is not a plain NATS subject: use dot-separated "
            "non-empty tokens without * or >, not starting with $ (for example 'orders.eu')"
        )
    return stream


class NatsBroker:
    """A connection to a NATS server with JetStream."""

    scheme = "nats"

    def __init__(self, url: str, thread: AsyncioThread, nc: NatsClient) -> None:
        self._url = url
        self._thread = thread
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=CONNECT_TIMEOUT)
        self._streams: set[str] = set()
        self._subscriptions: set[NatsSubscription] = set()
        self._lost: asyncio.Event | None = None  # set on the thread's loop when the link drops
        self._closed = False

    @property
    def max_payload(self) -> int:
        return self._nc.max_payload

    @classmethod
    async def open(cls, url: str) -> NatsBroker:
        thread = await AsyncioThread.start("tether-broker-nats")
        try:
            lost = await thread.run(_new_event())

            async def on_disconnect() -> None:
                lost.set()

            async def on_error(e: Exception) -> None:  # nats-py would log it; we raise it
                pass

            try:
                nc = await thread.run(
                    nats.connect(
                        servers=[url],
                        # Two tries, then NoServersError (0 would mean: try forever).
                        allow_reconnect=False,
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0.1,
                        connect_timeout=CONNECT_TIMEOUT,
                        disconnected_cb=on_disconnect,
                        error_cb=on_error,
                    )
                )
            except NATS_ERRORS as e:
                raise BrokerError(
                    f"cannot reach the NATS server at {url} ({type(e).__name__}: {e}): check "
                    "that nats-server runs there (with JetStream: -js) and the address is right"
                ) from None
            self = cls(url, thread, nc)
            self._lost = lost
            try:
                await self._call(self._js.account_info())
            except BrokerError:
                await self.aclose()
                raise BrokerError(
                    f"the NATS server at {url} has no JetStream: start nats-server with -js "
                    "(and a storage directory, -sd DIR)"
                ) from None
            return self
        except BaseException:
            await thread.aclose()
            raise

    async def _call(self, aw: Awaitable[T]) -> T:
        """Run ``aw`` on the client's thread; nats-py's errors become :class:`BrokerError`."""
        if self._closed:
            if asyncio.iscoroutine(aw):
                aw.close()
            raise BrokerError(f"NATS: the connection to {self._url} is closed: connect again")
        return await self._thread.run(self._guarded(aw))

    async def _guarded(self, aw: Awaitable[T]) -> T:
        # Races `aw` with the loss of the connection: nats-py leaves some futures (PubAcks)
        # pending forever when the connection drops.
        assert self._lost is not None
        work = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait([work, lost], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the caller was cancelled: so is the work
            work.cancel()
            raise
        finally:
            lost.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            raise BrokerError(
                f"NATS: the connection to {self._url} was lost; connect again (what was not "
                "acknowledged will be delivered again; a batch being published may be partly "
                "stored)"
            )
        try:
            return work.result()
        except nats.js.errors.APIError as e:
            raise BrokerError(f"NATS JetStream refused: {e.description or e}") from None
        except NATS_ERRORS as e:
            if self._nc.is_closed or self._lost.is_set():
                raise BrokerError(
                    f"NATS: the connection to {self._url} was lost ({type(e).__name__}); "
                    "connect again"
                ) from None
            raise BrokerError(f"NATS: {type(e).__name__}: {e}") from None

    async def _ensure_stream(self, stream: str) -> str:
        name = _escaped("stream", stream)
        if stream in self._streams:
            return name
        try:
            info = await self._js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(
                StreamConfig(name=name, subjects=[stream], storage=StorageType.FILE)
            )
        else:
            if stream not in (info.config.subjects or []):
                raise BrokerError(
                    f"NATS: the JetStream stream {name} exists but does not hold the subject "
                    f"{stream!r} (it holds {info.config.subjects}): delete or fix that stream"
                )
        self._streams.add(stream)
        return name

    async def publish(self, stream: str, payloads: Sequence[bytes]) -> None:
        subject = subject_of(stream)
        check_payloads(payloads, self.max_payload, "NATS")
        if payloads:
            await self._call(self._publish(subject, list(payloads)))

    async def _publish(self, subject: str, payloads: list[bytes]) -> None:
        await self._ensure_stream(subject)
        acks = [await self._js.publish_async(subject, p) for p in payloads]
        try:
            await asyncio.wait_for(asyncio.gather(*acks), PUBLISH_TIMEOUT)
        except TimeoutError:
            raise BrokerError(
                f"NATS: no PubAck within {PUBLISH_TIMEOUT:g} s for records of {subject!r}: the "
                "server or its storage is overloaded; publish the batch again"
            ) from None
        finally:
            for a in acks:
                a.cancel()

    async def subscribe(self, stream: str, consumer: str) -> NatsSubscription:
        subject = subject_of(stream)
        durable = _escaped("consumer", consumer)
        sub = await self._call(self._subscribe(subject, durable))
        s = NatsSubscription(self, sub)
        self._subscriptions.add(s)
        return s

    async def _subscribe(self, subject: str, durable: str) -> JetStreamContext.PullSubscription:
        name = await self._ensure_stream(subject)
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT,
            max_ack_pending=MAX_ACK_PENDING,
        )
        return await self._js.pull_subscribe(subject, durable=durable, stream=name, config=config)

    async def aclose(self) -> None:
        if self._closed:
            return
        for s in list(self._subscriptions):
            await s.aclose()
        self._closed = True
        try:
            with anyio.CancelScope(shield=True), contextlib.suppress(*NATS_ERRORS):
                await self._thread.run(self._nc.close())
        finally:
            await self._thread.aclose()


class NatsSubscription:
    """A durable pull consumer."""

    def __init__(self, broker: NatsBroker, sub: JetStreamContext.PullSubscription) -> None:
        self._broker = broker
        self._sub = sub
        self._unacked: dict[int, Msg] = {}  # by stream sequence, in fetch order
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("NATS: this subscription is closed: subscribe again")

    async def fetch(self, max_records: int, timeout: float) -> list[Delivery]:
        check_fetch(max_records, timeout)
        self._check_open()
        msgs = await self._broker._call(self._fetch(max_records, max(timeout, 0.001)))
        out = []
        for m in msgs:
            meta = m.metadata
            self._unacked[meta.sequence.stream] = m
            out.append(Delivery(m.data, m, meta.num_delivered > 1))
        return out

    async def _fetch(self, n: int, timeout: float) -> list[Msg]:
        try:
            return await self._sub.fetch(n, timeout)
        except TimeoutError:  # nats-py's own, or asyncio's when its pull request lingered
            return []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._check_open()
        msgs = []
        for d in deliveries:
            if not isinstance(d.token, Msg):
                raise InvalidArgumentError("NATS: not a delivery of a NATS subscription")
            msgs.append(d.token)
        if msgs:
            await self._broker._call(self._ack(msgs))
        for m in msgs:
            self._unacked.pop(m.metadata.sequence.stream, None)

    async def _ack(self, msgs: list[Msg]) -> None:
        for m in msgs:
            await m.ack()
        await self._broker._nc.flush(CONNECT_TIMEOUT)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._broker._subscriptions.discard(self)
        unacked, self._unacked = list(self._unacked.values()), {}
        # A lost connection closes nothing more: the server delivers those again after ACK_WAIT.
        with anyio.CancelScope(shield=True), contextlib.suppress(BrokerError):
            await self._broker._call(self._close(unacked))

    async def _close(self, unacked: list[Msg]) -> None:
        for m in unacked:  # in fetch order: delivered again in that order, at once
            await m.nak()
        await self._sub.unsubscribe()
        await self._broker._nc.flush(CONNECT_TIMEOUT)


async def _new_event() -> asyncio.Event:
    return asyncio.Event()  # made on (bound to) the client's loop
