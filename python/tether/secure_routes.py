"""The secure channels a node's ``/secure/NAME`` routes go through: opened on first use, then
reused for every later route to the same listener (``tether message send --to
/node/n2/secure/api/...`` twice is one channel), including a channel opened explicitly with
``Node.create_secure_channel`` (``tether secure-channel create``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from tether import routing
from tether.message import LOCAL, Address
from tether.trust import initiator_trust

if TYPE_CHECKING:
    from tether.node import Node


class ChannelRoutes:
    """A node's open channels by the route of their listener (``(hops..., local NAME)``)."""

    def __init__(self) -> None:
        self._by_target: dict[tuple[Address, ...], Any] = {}
        self._lock = anyio.Lock()

    def remember(self, target: tuple[Address, ...], channel: Any) -> None:
        """``channel`` (to the listener at ``target``) is the one routes there reuse, unless an
        open one is already remembered; closed ones are forgotten."""
        current = self._by_target.get(target)
        if current is not None and not current.closed.is_set():
            return
        for key in [k for k, c in self._by_target.items() if c.closed.is_set()]:
            del self._by_target[key]
        self._by_target[target] = channel

    def open_channel(self, target: tuple[Address, ...]) -> Any:
        channel = self._by_target.get(target)
        return None if channel is None or channel.closed.is_set() else channel

    async def resolve(
        self,
        node: Node,
        route: str | Sequence[Address],
        trust: Any,
        expect: Sequence[str | None] | None,
    ) -> tuple[Address, ...]:
        """``route`` with each ``/secure/NAME`` replaced by a channel (see
        :meth:`tether.node.Node.resolve_route`)."""
        from tether.trust import trust_anyone

        names = (
            list(expect)
            if expect is not None
            else (routing.named_peers(route) if isinstance(route, str) else [])
        )
        addresses = node.parse_route(route)
        remaining = sum(1 for a in addresses if a.transport == routing.SECURE)
        while True:
            k = next((i for i, a in enumerate(addresses) if a.transport == routing.SECURE), None)
            if k is None:
                return addresses
            target = (*addresses[:k], Address(LOCAL, addresses[k].value))
            name = names.pop(0) if names else None
            remaining -= 1
            policy = initiator_trust(
                node,
                # the caller's trust is for the last channel (trusting anyone, for all)
                trust if remaining == 0 or trust is trust_anyone else None,
                node.node_identifier(name),
                routing.format_route(target),
            )
            channel = self.open_channel(target)
            if channel is None:
                async with self._lock:
                    channel = self.open_channel(target)
                    if channel is None:
                        # remembered by create_secure_channel (the node's own identity)
                        channel = await node.create_secure_channel(target, trust=policy)
            else:
                policy(channel.peer)  # an open channel is reused only with the peer expected
            addresses = (Address.local(channel.address), *addresses[k + 1 :])
