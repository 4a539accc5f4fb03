"""Routed messages: an onward route, a return route and a payload (``docs/wire-format.md``);
the payload envelope (its first byte: ``KIND_DATA``, ``KIND_ERROR``); and a message as a
worker gets it (:class:`Message`, with its :class:`WorkerContext`).

Each hop pops itself from the onward route and pushes itself onto the return route; a reply
follows the return route. The encoding is the Rust core's (version 1); decoding is strict:
truncated input, trailing bytes, over-long routes and empty addresses are
:class:`~tether.core.errors.RouteError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from tether import _core

VERSION = _core.ROUTE_VERSION
MAX_HOPS = _core.MAX_HOPS

#: Transport types of addresses. 0 is a worker on the node that holds the message.
LOCAL = 0
TCP = 1
NATS = 2
"""A node on a NATS fabric, by its identifier or a name it claimed (``docs/routing.md``)."""


class Address(NamedTuple):
    """One hop: a transport type and that transport's address bytes (1 to 255 of them)."""

    transport: int
    value: bytes

    @classmethod
    def local(cls, name: str) -> Address:
        return cls(LOCAL, name.encode())

    def __str__(self) -> str:
        text = self.value.decode(errors="backslashreplace")
        return text if self.transport == LOCAL else f"{self.transport}#{text}"


@dataclass(frozen=True, slots=True)
class RoutedMessage:
    """A message on its way: where it goes next, how to answer it, and what it carries."""

    onward: tuple[Address, ...]
    return_route: tuple[Address, ...] = ()
    payload: bytes = field(default=b"", repr=False)

    def encode(self) -> bytes:
        return _core.encode_message(self.onward, self.return_route, self.payload)

    def encode_frame(self) -> bytes:
        """The message as one frame of a stream (4-byte length first), in one copy."""
        return _core.encode_message_frame(self.onward, self.return_route, self.payload)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> RoutedMessage:
        onward, ret, payload = _core.decode_message(data)
        return cls(
            tuple(Address(t, v) for t, v in onward),
            tuple(Address(t, v) for t, v in ret),
            payload,
        )


class Origin(NamedTuple):
    """Where a message entered this node (``docs/routing.md``, "Who may reach what"): a local
    caller (a worker or the application on this node), one TCP link, or one secure channel.
    Every address declares which origins may reach it, and the node decides once, where the
    message enters."""

    kind: str
    """``local``, ``link`` or ``channel``."""
    address: str = ""
    """The link's (``tcp#N``) or the channel's (``sc#N``) local address; empty for local."""

    @classmethod
    def link(cls, address: str) -> Origin:
        return cls("link", address)

    @classmethod
    def channel(cls, address: str) -> Origin:
        return cls("channel", address)

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def __str__(self) -> str:
        return "a local caller" if self.is_local else f"{self.kind} {self.address}"


LOCAL_ORIGIN = Origin("local")


#: Payload envelope: the first byte of every routed payload says what it is.
KIND_DATA = 0
KIND_ERROR = 1


def encode_payload(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + body


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a worker receives it."""

    onward: tuple[Address, ...]
    return_route: tuple[Address, ...]
    payload: bytes
    kind: int = KIND_DATA
    origin: Origin = LOCAL_ORIGIN
    """Where it entered this node: a local caller, a TCP link or a secure channel."""

    @classmethod
    def delivered(cls, msg: RoutedMessage, origin: Origin = LOCAL_ORIGIN) -> Message:
        """``msg`` as the worker at its first onward address gets it: that address popped, the
        kind byte split off the payload."""
        return cls(msg.onward[1:], msg.return_route, msg.payload[1:], msg.payload[0], origin)


class Router(Protocol):
    """What routes a message on (a node: :meth:`tether.node.node.BaseNode.route`)."""

    async def route(
        self, msg: RoutedMessage, origin: Origin = ..., *, block: bool = True
    ) -> None: ...


class WorkerContext:
    """What a handler gets: the node that runs it (as its router), its own address, and (for
    inline workers) where the message it handles entered the node."""

    def __init__(self, node: Router, address: str, origin: Origin = LOCAL_ORIGIN) -> None:
        self.node = node
        self.address = address
        self.origin = origin

    async def reply(self, msg: Message, payload: bytes) -> None:
        """Send ``payload`` back along the message's return route. A reply never waits for a
        peer: one that cannot be queued at once (the peer does not read) is dropped and counted,
        so a shared service's progress never depends on one peer."""
        await self.node.route(
            RoutedMessage(
                msg.return_route,
                (Address.local(self.address),),
                encode_payload(KIND_DATA, payload),
            ),
            block=False,
        )

    async def forward(self, msg: Message) -> None:
        """Pass the message on along its onward route: this worker was popped from the onward
        route on delivery and now pushes itself onto the return route, so replies come back
        through it."""
        await self.node.route(
            RoutedMessage(
                msg.onward,
                (Address.local(self.address), *msg.return_route),
                encode_payload(msg.kind, msg.payload),
            )
        )


Handler = Callable[[WorkerContext, Message], Awaitable[None]]
"""A worker's handler: each message, with the worker's context."""
RawHandler = Callable[[WorkerContext, RoutedMessage], Awaitable[None]]
"""A raw inline worker's handler: each message as it arrived (its own address still first in
``onward``, the kind byte still first in the payload)."""
