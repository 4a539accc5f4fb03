"""A node's secure channels as a feature of the node: the listeners that accept them (with the
node's half-open handshakes), the channels it opens, and the ``/secure/NAME`` hops of its
routes — opened on first use, then reused for every later route to the same listener
(``tether message send --to /node/n2/secure/api/...`` twice is one channel), including a
channel opened explicitly (``tether secure-channel create``).

:class:`SecureChannels` registers itself on its node as the resolver of ``/secure/`` hops
(:attr:`tether.node.node.BaseNode.secure_route_resolver`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio

from tether.channel.channel import SecureChannel
from tether.channel.handshake import ChannelListener, HalfOpenTable, open_channel
from tether.core.errors import TetherError
from tether.core.message import LOCAL, Address
from tether.identity.identity import Identity
from tether.identity.trust import ChannelIdentity, TrustPolicy, initiator_trust, trust_anyone
from tether.node import routing
from tether.node.node import BaseNode


class SecureChannels:
    """One node's secure channels: see the module documentation."""

    def __init__(self, node: BaseNode) -> None:
        self.node = node
        self.listeners: dict[str, ChannelListener] = {}
        """The node's secure-channel listeners, by address."""
        self.half_open = HalfOpenTable()
        """Half-open secure-channel handshakes on the node's listeners (capped)."""
        self._by_target: dict[tuple[Address, ...], SecureChannel] = {}
        """The channels routes reuse, by the route of their listener (``(hops..., NAME)``)."""
        self._lock = anyio.Lock()
        node.secure_route_resolver = self.resolve_route

    async def listen(
        self,
        address: str,
        *,
        identity: ChannelIdentity | None = None,
        trust: TrustPolicy | None = None,
        authorities: Mapping[str, Identity] | None = None,
    ) -> ChannelListener:
        """Accept secure channels at ``address`` (see :mod:`tether.channel.channel`), as
        ``identity`` (by default the node's)."""
        node = self.node
        me = identity or node.identity
        if me is None:
            raise TetherError(f"node {node.name} has no identity to accept channels with")
        listener = ChannelListener(
            node,
            address,
            me,
            # the node's own dict, not a copy: authorities trusted later (enrollment) count too
            authorities if authorities is not None else node.authorities,
            trust or node.trust or trust_anyone,
            self.half_open,
        )
        await node.start_worker(address, listener.handle, kind="secure-channel-listener")
        self.listeners[address] = listener
        return listener

    async def open(
        self,
        route: str | Sequence[Address],
        *,
        identity: ChannelIdentity | None = None,
        trust: TrustPolicy | None = None,
        authorities: Mapping[str, Identity] | None = None,
        timeout: float = 10.0,
        expect: str | None = None,
    ) -> SecureChannel:
        """Open a secure channel to the listener at the end of ``route``; returns the
        :class:`~tether.channel.channel.SecureChannel` (its ``address`` goes in routes). The
        peer must be who :func:`~tether.identity.trust.initiator_trust` expects: ``trust``,
        else the node named in a route string (``/node/NAME/service/api``) or ``expect`` (an
        identifier), else an authority's member; otherwise
        :class:`~tether.identity.trust.ChannelRefusedError` at once."""
        node = self.node
        me = identity or node.identity
        if me is None:
            raise TetherError(f"node {node.name} has no identity to open channels with")
        parsed = node.parse_route(route)
        if expect is None and isinstance(route, str):
            expect = node.node_identifier(routing.listener_node(route))
        policy = initiator_trust(node, trust, expect, routing.format_route(parsed))
        channel = await open_channel(
            node,
            parsed,
            me,
            authorities=authorities if authorities is not None else node.authorities,
            trust=policy,
            timeout=timeout,
        )
        if identity is None:  # the node's own channel: routes through /secure/ may reuse it
            self._remember(parsed, channel)
        return channel

    def _remember(self, target: tuple[Address, ...], channel: SecureChannel) -> None:
        """``channel`` (to the listener at ``target``) is the one routes there reuse, unless an
        open one is already remembered; closed ones are forgotten."""
        current = self._by_target.get(target)
        if current is not None and not current.closed.is_set():
            return
        for key in [k for k, c in self._by_target.items() if c.closed.is_set()]:
            del self._by_target[key]
        self._by_target[target] = channel

    def _reusable(self, target: tuple[Address, ...]) -> SecureChannel | None:
        channel = self._by_target.get(target)
        return None if channel is None or channel.closed.is_set() else channel

    async def resolve_route(
        self,
        route: str | Sequence[Address],
        trust: TrustPolicy | None,
        expect: Sequence[str | None] | None,
    ) -> tuple[Address, ...]:
        """``route`` with each ``/secure/NAME`` replaced by a channel (see
        :meth:`tether.node.node.BaseNode.resolve_route`)."""
        node = self.node
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
            channel = self._reusable(target)
            if channel is None:
                async with self._lock:
                    channel = self._reusable(target)
                    if channel is None:
                        channel = await self.open(target, trust=policy)  # remembered by open
            else:
                policy(channel.peer)  # an open channel is reused only with the peer expected
            addresses = (Address.local(channel.address), *addresses[k + 1 :])
