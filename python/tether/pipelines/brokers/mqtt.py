"""MQTT 5 (``mqtt://HOST:PORT``), with paho-mqtt and its network thread.

* A tether stream ``S`` is the topic ``S`` (no wildcards ``+`` ``#``, not starting with ``$``);
  records are QoS 1 PUBLISHes. ``publish`` returns when every record's PUBACK came back.
* A consumer ``C`` of ``S`` is a persistent session: client id ``tether-`` + 16 hex digits of a
  hash of (``S``, ``C``) (23 characters, the most every server must accept), ``clean_start``
  False, a session expiry of :data:`SESSION_EXPIRY`, a QoS 1 subscription to ``S``. The broker
  keeps what the session has not acknowledged while it is offline, and sends it again on the next
  connection (with DUP set: ``redelivered``). Acks are manual (``client.ack``), sent only by
  ``Subscription.ack``, after the application took the records; it returns once the broker
  processed them (an UNSUBSCRIBE round trip behind the PUBACKs: MQTT acknowledges no PUBACK).
* **Subscribe once before publishing.** MQTT keeps messages for the subscriptions that exist
  when they are published: records published before the consumer's first ``subscribe`` are not
  delivered to it. (The broker's ``max_queued_messages`` bounds what an offline session keeps;
  mosquitto's default, 1000, is small: raise it.)
* Order. The publisher has at most one PUBLISH in flight (:data:`PUBLISH_INFLIGHT`): if the
  connection drops with several unacknowledged, a resend puts earlier records after later ones
  already stored (1 2 3 2 3 4); with one in flight only the last can repeat (1 2 3 3 4). The
  consumer lets the broker have :data:`RECEIVE_MAXIMUM` in flight (MQTT 5 Receive Maximum) so
  that a batch can be fetched before it is acknowledged; the broker resends those only when the
  session resumes, in their order, marked DUP, before newer records.
* Payloads are checked against the broker's Maximum Packet Size (CONNACK; mosquitto's
  ``max_packet_size``), less the overhead of a PUBLISH with the longest topic; without one, MQTT's
  limit (256 MiB).
* A lost connection is not retried: the broker (or subscription) is broken; connect again.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import urllib.parse
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.to_thread
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from tether.core.errors import InvalidArgumentError
from tether.pipelines.brokers.bridge import Signal
from tether.pipelines.brokers.interface import (
    MAX_NAME_BYTES,
    BrokerError,
    Delivery,
    check_fetch,
    check_name,
    check_payloads,
)

__all__ = [
    "PUBLISH_INFLIGHT",
    "RECEIVE_MAXIMUM",
    "SESSION_EXPIRY",
    "MqttBroker",
    "MqttSubscription",
]

SESSION_EXPIRY = 7 * 24 * 3600
"""Seconds the broker keeps a consumer's session (and its records) while it is offline."""
PUBLISH_INFLIGHT = 1
RECEIVE_MAXIMUM = 256
"""Records the broker may send a consumer before it acknowledges any."""
CONNECT_TIMEOUT = 5.0
PUBLISH_TIMEOUT = 30.0
KEEPALIVE = 30
MQTT_MAX_PACKET = 268_435_455
# A PUBLISH's bytes besides the payload: fixed header (1 + up to 4 length bytes), topic (2 +
# its bytes), packet id (2), properties length (1, no properties).
PUBLISH_OVERHEAD = 5 + 2 + MAX_NAME_BYTES + 2 + 1
BARRIER_FILTER = "tether/barrier/none"  # never subscribed (see _Link.barrier)
CHUNK = 10_000  # records per round of packet ids (they are 16-bit)


def topic_of(stream: str) -> str:
    check_name("stream", stream, "MQTT")
    if "+" in stream or "#" in stream or "\0" in stream or stream.startswith("$"):
        raise BrokerError(
            f"MQTT: the stream name {stream!r} is not a plain topic: no + or #, not starting "
            "with $ (for example 'orders/eu')"
        )
    return stream


def session_id(stream: str, consumer: str) -> str:
    digest = hashlib.sha256(f"{stream}\0{consumer}".encode("utf-8", "surrogatepass"))
    return "tether-" + digest.hexdigest()[:16]


class _Link:
    """One paho client and what its network thread reports (under ``signal.lock``)."""

    def __init__(self, url: str, client_id: str, consumer: bool) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 1883
        self.signal = Signal()
        self.connack: tuple[ReasonCode, Properties | None] | None = None
        self.lost: str | None = None  # why the connection ended, once it did
        self.acked: dict[int, ReasonCode] = {}  # PUBACKs: mid -> reason
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.unsubacks: set[int] = set()
        self.received: collections.deque[MQTTMessage] = collections.deque()
        self.client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=consumer,
            reconnect_on_failure=False,
        )
        self.client.max_inflight_messages_set(PUBLISH_INFLIGHT)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message
        self.consumer = consumer
        self.started = False

    # --- paho's thread ---

    def _update(self, change: Any) -> None:
        with self.signal.lock:
            change()
        self.signal.notify()

    def _on_connect(
        self, c: Client, u: Any, f: ConnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        self._update(lambda: setattr(self, "connack", (rc, p)))

    def _on_disconnect(
        self, c: Client, u: Any, f: DisconnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        self._update(lambda: setattr(self, "lost", str(rc)))

    def _on_publish(
        self, c: Client, u: Any, mid: int, rc: ReasonCode, p: Properties | None
    ) -> None:
        self._update(lambda: self.acked.__setitem__(mid, rc))

    def _on_subscribe(
        self, c: Client, u: Any, mid: int, rcs: list[ReasonCode], p: Properties | None
    ) -> None:
        self._update(lambda: self.subacks.__setitem__(mid, rcs))

    def _on_unsubscribe(
        self, c: Client, u: Any, mid: int, rcs: list[ReasonCode], p: Properties | None
    ) -> None:
        self._update(lambda: self.unsubacks.add(mid))

    def _on_message(self, c: Client, u: Any, message: MQTTMessage) -> None:
        self._update(lambda: self.received.append(message))

    # --- the caller's loop ---

    async def connect(self) -> int:
        """Connect and start the network thread; the largest payload the broker takes."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.consumer:
            props.SessionExpiryInterval = SESSION_EXPIRY
            props.ReceiveMaximum = RECEIVE_MAXIMUM
        unreachable = (
            f"cannot reach the MQTT broker at {self.url}: check that it runs there (for "
            "example mosquitto) and the address is right"
        )
        try:
            await anyio.to_thread.run_sync(
                lambda: self.client.connect(
                    self.host,
                    self.port,
                    keepalive=KEEPALIVE,
                    clean_start=not self.consumer,
                    properties=props,
                )
            )
        except (OSError, ValueError) as e:
            raise BrokerError(f"{unreachable} ({type(e).__name__}: {e})") from None
        self.client.loop_start()
        self.started = True
        if not await self.signal.wait(
            lambda: self.connack is not None or self.lost is not None, CONNECT_TIMEOUT
        ):
            raise BrokerError(f"{unreachable} (no CONNACK within {CONNECT_TIMEOUT:g} s)")
        if self.connack is None or self.connack[0].is_failure:
            why = self.connack[0] if self.connack else self.lost
            raise BrokerError(f"the MQTT broker at {self.url} refused the connection: {why}")
        p = self.connack[1]
        packet = getattr(p, "MaximumPacketSize", None) or MQTT_MAX_PACKET
        return int(packet) - PUBLISH_OVERHEAD

    def check(self) -> None:
        if self.lost is not None:
            raise BrokerError(
                f"MQTT: the connection to {self.url} was lost ({self.lost}); connect again "
                "(what was not acknowledged will be delivered again)"
            )

    async def wait(self, condition: Any, timeout: float, what: str) -> None:
        if not await self.signal.wait(lambda: condition() or self.lost is not None, timeout):
            raise BrokerError(f"MQTT: no {what} from {self.url} within {timeout:g} s; try again")
        with self.signal.lock:
            if not condition():
                self.check()

    async def barrier(self) -> None:
        """Return once the broker processed every packet sent before: MQTT acknowledges no
        PUBACK, so an UNSUBSCRIBE from a filter nobody subscribes to, and its UNSUBACK, stand
        in (a broker handles a connection's packets in order)."""
        rc, mid = self.client.unsubscribe(BARRIER_FILTER)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            self.check()
            raise BrokerError(f"MQTT: sending to {self.url} failed: {rc.name}")
        await self.wait(lambda: mid in self.unsubacks, CONNECT_TIMEOUT, "UNSUBACK")
        with self.signal.lock:
            self.unsubacks.discard(mid)

    async def aclose(self) -> None:
        if self.started:
            self.client.disconnect()
            self.started = False
            with anyio.CancelScope(shield=True):
                # Until DISCONNECT is written: loop_stop ends the thread at once, and PUBACKs
                # queued before it would be lost (those records delivered again).
                await self.signal.wait(lambda: self.lost is not None, CONNECT_TIMEOUT)
                await anyio.to_thread.run_sync(self.client.loop_stop)
            # paho closes the socketpair that wakes its thread only when the client is
            # collected (and our callbacks make a cycle with it): close it now.
            with contextlib.suppress(AttributeError):
                self.client._reset_sockets()
        else:
            self.client.disconnect()
        if self.lost is None:
            self.lost = "closed"


def _all_acked(link: _Link, mids: list[int]) -> bool:
    return all(m in link.acked for m in mids)


class MqttBroker:
    """A publishing connection to an MQTT 5 broker (a clean session)."""

    scheme = "mqtt"

    def __init__(self, url: str, link: _Link, max_payload: int) -> None:
        self._url = url
        self._link = link
        self._max_payload = max_payload
        self._subscriptions: set[MqttSubscription] = set()
        self._closed = False

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @classmethod
    async def open(cls, url: str) -> MqttBroker:
        link = _Link(url, "", consumer=False)
        try:
            limit = await link.connect()
        except BaseException:
            await link.aclose()
            raise
        return cls(url, link, limit)

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError(f"MQTT: the connection to {self._url} is closed: connect again")
        self._link.check()

    async def publish(self, stream: str, payloads: Sequence[bytes]) -> None:
        topic = topic_of(stream)
        check_payloads(payloads, self._max_payload, "MQTT")
        self._check_open()
        link = self._link
        for start in range(0, len(payloads), CHUNK):
            mids = []
            for p in payloads[start : start + CHUNK]:
                info = link.client.publish(topic, p, qos=1)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS,):
                    link.check()
                    raise BrokerError(f"MQTT: publishing to {topic!r} failed: {info.rc.name}")
                mids.append(info.mid)
            await link.wait(functools.partial(_all_acked, link, mids), PUBLISH_TIMEOUT, "PUBACK")
            with link.signal.lock:
                reasons = [link.acked.pop(m) for m in mids]
            refused = [r for r in reasons if r.is_failure]
            if refused:
                raise BrokerError(
                    f"MQTT: the broker refused {len(refused)} records of {topic!r}: {refused[0]}"
                )

    async def subscribe(self, stream: str, consumer: str) -> MqttSubscription:
        topic = topic_of(stream)
        check_name("consumer", consumer, "MQTT")
        self._check_open()
        link = _Link(self._url, session_id(stream, consumer), consumer=True)
        try:
            await link.connect()
            rc, mid = link.client.subscribe(topic, options=SubscribeOptions(qos=1))
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                link.check()
                raise BrokerError(f"MQTT: subscribing to {topic!r} failed: {rc.name}")
            await link.wait(lambda: mid in link.subacks, CONNECT_TIMEOUT, "SUBACK")
            granted = link.subacks.pop(mid)
            if not granted or granted[0].is_failure or granted[0].value != 1:
                raise BrokerError(
                    f"MQTT: the broker did not grant QoS 1 on {topic!r} ({granted}): records "
                    "could be lost; check the broker's ACLs and max_qos"
                )
        except BaseException:
            await link.aclose()
            raise
        s = MqttSubscription(self, link)
        self._subscriptions.add(s)
        return s

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for s in list(self._subscriptions):
            await s.aclose()
        await self._link.aclose()


class MqttSubscription:
    """A consumer's persistent session, connected."""

    def __init__(self, broker: MqttBroker, link: _Link) -> None:
        self._broker = broker
        self._link = link
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("MQTT: this subscription is closed: subscribe again")

    async def fetch(self, max_records: int, timeout: float) -> list[Delivery]:
        check_fetch(max_records, timeout)
        self._check_open()
        link = self._link
        await link.signal.wait(lambda: bool(link.received) or link.lost is not None, timeout)
        with link.signal.lock:
            n = min(max_records, len(link.received))
            messages = [link.received.popleft() for _ in range(n)]
        if not messages:
            link.check()
        return [Delivery(bytes(m.payload), m.mid, bool(m.dup)) for m in messages]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._check_open()
        link = self._link
        mids = []
        for d in deliveries:
            if not isinstance(d.token, int):
                raise InvalidArgumentError("MQTT: not a delivery of an MQTT subscription")
            mids.append(d.token)
        link.check()
        for mid in mids:
            link.client.ack(mid, 1)
        # Wait until the broker has the PUBACKs: closing a socket with unread data in it sends
        # a reset, and the broker drops what it had not read yet (those records would come
        # again).
        await link.barrier()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._broker._subscriptions.discard(self)
        await self._link.aclose()
