"""Routed messages: an onward route, a return route and a payload (``docs/wire-format.md``).

Each hop pops itself from the onward route and pushes itself onto the return route; a reply
follows the return route. The encoding is the Rust core's (version 1); decoding is strict:
truncated input, trailing bytes, over-long routes and empty addresses are
:class:`~tether.errors.RouteError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from tether import _core

VERSION = _core.ROUTE_VERSION
MAX_HOPS = _core.MAX_HOPS

#: Transport types of addresses. 0 is a worker on the node that holds the message.
LOCAL = 0
TCP = 1


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
