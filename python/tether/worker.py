"""Workers: what a handler gets (:class:`Message`, :class:`WorkerContext`) and how a node keeps
each worker (:class:`Worker`); the payload envelope (``KIND_DATA``, ``KIND_ERROR``) and the
built-in ``echo`` service. The node that runs them is :mod:`tether.node`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tether.message import LOCAL_ORIGIN, Address, Origin, RoutedMessage

if TYPE_CHECKING:
    from tether.node import Node

#: Payload envelope: the first byte of every routed payload says what it is.
KIND_DATA = 0
KIND_ERROR = 1

MAILBOX_SIZE = 64


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


Handler = Callable[["WorkerContext", Message], Awaitable[None]]
RawHandler = Callable[["WorkerContext", RoutedMessage], Awaitable[None]]


@dataclass
class Worker:
    address: str
    handler: Any  # Handler, or RawHandler for a raw inline worker
    send: MemoryObjectSendStream[Message]
    receive: MemoryObjectReceiveStream[Message]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    kind: str = "custom"
    delivered: int = 0
    busy: bool = False
    inline: bool = False
    raw: bool = False
    reach: str = "any"
    """Who may send to it: ``any`` origin (a service; its policy decides), or only ``local``
    callers and the origins granted to it (a channel's encryptor: ``tether.reach``)."""


class WorkerContext:
    """What a handler gets: its node, its own address, and (for inline workers) where the
    message it handles entered the node."""

    def __init__(self, node: Node, address: str, origin: Origin = LOCAL_ORIGIN) -> None:
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


async def echo(ctx: WorkerContext, msg: Message) -> None:
    """The built-in ``echo`` service: replies with what it received."""
    if msg.kind == KIND_DATA and msg.return_route:
        await ctx.reply(msg, msg.payload)


def encode_payload(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + body
