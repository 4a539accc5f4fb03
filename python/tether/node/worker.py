"""Workers: how a node keeps each worker (:class:`Worker`), and the built-in ``echo`` service.
What a handler gets (:class:`~tether.core.message.Message`,
:class:`~tether.core.message.WorkerContext`) is :mod:`tether.core.message`'s; the node that
runs the workers is :mod:`tether.node.node`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tether.core.message import KIND_DATA, Handler, Message, RawHandler, WorkerContext

MAILBOX_SIZE = 64


@dataclass
class Worker:
    address: str
    handler: Handler | RawHandler
    """A :data:`~tether.core.message.Handler`, or a raw inline worker's
    :data:`~tether.core.message.RawHandler`."""
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
    callers and the origins granted to it (a channel's encryptor: ``tether.node.reach``)."""


async def echo(ctx: WorkerContext, msg: Message) -> None:
    """The built-in ``echo`` service: replies with what it received."""
    if msg.kind == KIND_DATA and msg.return_route:
        await ctx.reply(msg, msg.payload)
