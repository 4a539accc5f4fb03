"""What every broker adapter is: :class:`Broker`, :class:`Subscription`, :class:`Delivery` and
:class:`BrokerError`, and the checks all adapters make before anything is sent.

The contract (each adapter's module says how its broker meets it):

* ``publish(stream, payloads)`` sends the payloads in order and returns once the broker accepted
  every one of them. It checks every length against :attr:`Broker.max_payload` first: a batch with
  one payload too large is refused whole, nothing of it sent. A batch that fails half-way (the
  connection dropped) may be partly stored: publishing it again may store duplicates.
* ``subscribe(stream, consumer)`` opens the durable consumer ``consumer`` of ``stream``; what it
  fetched and did not acknowledge is delivered again to the next subscription of the same name
  (at least once). First deliveries come in the stream's order; a record delivered again is
  marked ``redelivered`` where the broker says so, and may come after records that followed it.
* A broker or subscription whose connection is lost is broken: every later call raises
  :class:`BrokerError`; connect (or subscribe) again, and nothing unacknowledged is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tether.core.errors import InvalidArgumentError, TetherError

__all__ = [
    "MAX_NAME_BYTES",
    "Broker",
    "BrokerError",
    "Delivery",
    "Subscription",
    "check_fetch",
    "check_name",
    "check_payloads",
]

MAX_NAME_BYTES = 255
"""The longest stream or consumer name (UTF-8 bytes) any adapter takes: the same names work on
every broker, and an adapter can bound the overhead a name adds to a packet."""


class BrokerError(TetherError):
    """A broker refused, or could not be reached: the message says which, and what to do."""


@dataclass(frozen=True)
class Delivery:
    """A record as a subscription fetched it."""

    payload: bytes = field(repr=False)
    token: object = field(repr=False)
    """What the adapter needs to acknowledge it (opaque to callers)."""
    redelivered: bool
    """The broker delivered it before without an acknowledgement (when the broker says so)."""


class Subscription(Protocol):
    """A durable consumer of one stream, open on one connection."""

    async def fetch(self, max_records: int, timeout: float) -> list[Delivery]:
        """Up to ``max_records`` records, in the stream's order, as soon as there is at least
        one; ``[]`` after ``timeout`` seconds with none."""
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge records this subscription fetched (after the application took them):
        the broker will not deliver them to this consumer again."""
        ...

    async def aclose(self) -> None:
        """Close; what was fetched and not acknowledged is delivered again to the next
        subscription of the same consumer."""
        ...


class Broker(Protocol):
    """A connection to one broker."""

    scheme: str
    """The URL scheme it was opened with: ``nats``, ``redis`` or ``mqtt``."""

    @property
    def max_payload(self) -> int:
        """The largest payload ``publish`` sends (bytes), for any valid stream name."""
        ...

    async def publish(self, stream: str, payloads: Sequence[bytes]) -> None:
        """Append ``payloads`` to ``stream`` in order; returns once the broker accepted all."""
        ...

    async def subscribe(self, stream: str, consumer: str) -> Subscription:
        """Open the durable consumer ``consumer`` of ``stream`` (created if new)."""
        ...

    async def aclose(self) -> None:
        """Close the connection, its subscriptions and its threads."""
        ...


def check_name(what: str, name: str, broker: str) -> bytes:
    """``name`` (a stream or consumer name) as UTF-8, if it is one every adapter can take: not
    empty, at most :data:`MAX_NAME_BYTES` bytes, no whitespace or control characters."""
    if not isinstance(name, str) or not name:
        raise BrokerError(f"{broker}: a {what} name must be a non-empty string, not {name!r}")
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_NAME_BYTES:
        raise BrokerError(
            f"{broker}: the {what} name {name[:40]!r}... is {len(encoded)} bytes long; "
            f"use at most {MAX_NAME_BYTES} bytes"
        )
    if any(not c.isprintable() or c.isspace() for c in name):
        raise BrokerError(
            f"{broker}: the {what} name {name!r} holds whitespace or control characters; "
            "use letters, digits and punctuation such as - _ ."
        )
    return encoded


def check_payloads(payloads: Sequence[bytes], limit: int, broker: str) -> None:
    """Refuse the whole batch, before anything is sent, if one payload is not bytes or is
    longer than ``limit``."""
    for i, p in enumerate(payloads):
        if not isinstance(p, bytes):
            raise InvalidArgumentError(
                f"{broker}: payload {i} is a {type(p).__name__}, not bytes; nothing was sent"
            )
        if len(p) > limit:
            raise BrokerError(
                f"{broker}: payload {i} is {len(p)} bytes, over the broker's limit of {limit} "
                "bytes; nothing of this batch was sent. Check lengths against "
                "Broker.max_payload before publishing (split the record, or raise the "
                "broker's limit)"
            )


def check_fetch(max_records: int, timeout: float) -> None:
    if max_records < 1:
        raise InvalidArgumentError(f"max_records must be at least 1, not {max_records}")
    if not timeout >= 0:
        raise InvalidArgumentError(f"timeout must be 0 or more seconds, not {timeout}")
