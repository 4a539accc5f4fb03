"""A secure channel end as its node keeps it (:class:`ChannelEnd`): the node's routing, its
policy checks, its transports and its data plane know channels only by this, and the channel
layer's :class:`~tether.channel.channel.SecureChannel` is one."""

from __future__ import annotations

from typing import Protocol

import anyio

from tether.core.message import Address
from tether.identity.trust import Peer


class ChannelEnd(Protocol):
    """One end of a secure channel, as its node keeps it: what routing, the policy checks and
    the data plane ask of it."""

    @property
    def address(self) -> str:
        """Its encryptor's local address (``sc#N``)."""

    @property
    def peer(self) -> Peer: ...

    @property
    def remote_route(self) -> tuple[Address, ...]: ...

    @property
    def closed(self) -> anyio.Event: ...

    async def close(self, notify: bool = True) -> None: ...
