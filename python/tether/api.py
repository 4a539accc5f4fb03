"""The node with every feature: :class:`Node` (``tether.Node``).

    async with tether.Node("n1", identity=ephemeral_identity()) as node:
        channel = await node.create_secure_channel("/ip4/127.0.0.1/tcp/4000/service/api")
        inlet = await node.create_tcp_inlet("127.0.0.1:0", "/node/db/secure/api/service/db")

:class:`~tether.node.node.BaseNode` routes, runs workers and transports; each feature is built
on it in its own layer and knows nothing of this class: secure channels
(:class:`~tether.channel.secure_channels.SecureChannels`), relays
(:mod:`tether.services.relay`), portals (:mod:`tether.services.portal`) and memberships and
the authority (:class:`~tether.services.membership.Memberships`). This class puts them
together, with one method per operation, as the daemon and applications use them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Self

from tether.channel.channel import SecureChannel
from tether.channel.handshake import ChannelListener, HalfOpenTable
from tether.channel.secure_channels import SecureChannels
from tether.core.errors import TetherError
from tether.core.message import Address
from tether.identity.credential import Credential
from tether.identity.identity import Identity
from tether.identity.policy import Policy
from tether.identity.registry import Registry
from tether.identity.trust import ChannelIdentity, TrustPolicy
from tether.node import routing
from tether.node.node import BaseNode
from tether.node.policies import PolicyRule
from tether.node.transport.connection import TcpOptions
from tether.node.transport.nats import NatsOptions
from tether.services.authority import (
    DEFAULT_ADMIN_POLICY,
    DEFAULT_CREDENTIAL_TTL,
    Authority,
    Ticket,
)
from tether.services.membership import Membership, Memberships
from tether.services.portal import Inlet, Outlet
from tether.services.relay import SERVICE as RELAY_SERVICE
from tether.services.relay import RelayClient, RelayService
from tether.services.session import PortalOptions
from tether.store.authority import SharedStore


class Node(BaseNode):
    """A node with secure channels, relays, portals and memberships (see the module
    documentation). With an identity it accepts secure channels at ``api`` and runs the relay
    service."""

    def __init__(
        self,
        name: str = "node",
        *,
        resolve_node: routing.NodeResolver | None = None,
        tcp_options: TcpOptions | None = None,
        identity: ChannelIdentity | None = None,
        authorities: Mapping[str, Identity] | None = None,
        trust: TrustPolicy | None = None,
        relay_owners: MutableMapping[str, str] | None = None,
        data_plane: bool | None = None,
        transit: Sequence[str] = (),
        identify_node: Callable[[str], str | None] | None = None,
        nats: NatsOptions | None = None,
    ) -> None:
        super().__init__(
            name,
            resolve_node=resolve_node,
            tcp_options=tcp_options,
            identity=identity,
            authorities=authorities,
            trust=trust,
            data_plane=data_plane,
            transit=transit,
            identify_node=identify_node,
            nats=nats,
        )
        self.secure_channels = SecureChannels(self)
        """Its listeners, half-open handshakes and the channels its ``/secure/`` routes reuse."""
        self.membership = Memberships(self, self.secure_channels)
        """The authority it runs and the authorities it is a member of."""
        self.relay_service: RelayService | None = None
        """The relay service it runs (with an identity): names claimed here by others."""
        self._relay_owners = relay_owners
        self.relays: dict[str, RelayClient] = {}
        """The names this node keeps claimed at relay nodes, by name."""
        self.inlets: dict[str, Inlet] = {}
        self.outlets: dict[str, Outlet] = {}
        self.policy_added.append(self._reauthorize_portals)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        if self.identity is not None:
            await self.create_secure_channel_listener("api")
            self.relay_service = RelayService(self, self._relay_owners)
            await self.start_worker(RELAY_SERVICE, self.relay_service.handle, kind="relay-service")
            self.task_group.start_soon(self.relay_service.run_maintenance)
        return self

    # --- secure channels ----------------------------------------------------------------

    @property
    def channel_listeners(self) -> dict[str, ChannelListener]:
        return self.secure_channels.listeners

    @property
    def half_open(self) -> HalfOpenTable:
        """Half-open secure-channel handshakes on this node's listeners (capped)."""
        return self.secure_channels.half_open

    @property
    def pending_handshakes(self) -> int:
        """Half-open secure-channel handshakes on this node's listeners now."""
        return len(self.secure_channels.half_open)

    async def create_secure_channel_listener(
        self,
        address: str,
        *,
        identity: ChannelIdentity | None = None,
        trust: TrustPolicy | None = None,
        authorities: Mapping[str, Identity] | None = None,
    ) -> ChannelListener:
        """Accept secure channels at ``address``
        (:meth:`~tether.channel.secure_channels.SecureChannels.listen`)."""
        return await self.secure_channels.listen(
            address, identity=identity, trust=trust, authorities=authorities
        )

    async def create_secure_channel(
        self,
        route: str | Sequence[Address],
        *,
        identity: ChannelIdentity | None = None,
        trust: TrustPolicy | None = None,
        authorities: Mapping[str, Identity] | None = None,
        timeout: float = 10.0,
        expect: str | None = None,
    ) -> SecureChannel:
        """Open a secure channel to the listener at the end of ``route``
        (:meth:`~tether.channel.secure_channels.SecureChannels.open`)."""
        return await self.secure_channels.open(
            route,
            identity=identity,
            trust=trust,
            authorities=authorities,
            timeout=timeout,
            expect=expect,
        )

    # --- relays -------------------------------------------------------------------------

    async def create_relay(
        self,
        name: str,
        at: str | Sequence[Address],
        *,
        trust: TrustPolicy | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 5.0,
        backoff_min: float = 0.2,
        backoff_max: float = 30.0,
    ) -> RelayClient:
        """Claim ``name`` at the relay node at the end of route ``at`` (a route to the node, or
        to its ``api`` listener) and keep it claimed; returns the
        :class:`~tether.services.relay.RelayClient` (its ``forward_route`` reaches this
        node)."""
        if name in self.relays:
            raise TetherError(f"node {self.name} already keeps a relay named {name!r}")
        client = RelayClient(
            self,
            name,
            at if isinstance(at, str) else tuple(at),
            self.secure_channels,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            backoff_min=backoff_min,
            backoff_max=backoff_max,
            trust=trust,
        )
        await self.task_group.start(client.run)
        self.relays[name] = client
        return client

    async def delete_relay(self, name: str) -> None:
        client = self.relays.pop(name, None)
        if client is None:
            raise TetherError(f"no relay named {name!r} on node {self.name}")
        client.stop()

    # --- portals ------------------------------------------------------------------------

    async def create_tcp_outlet(
        self,
        to: str,
        *,
        name: str = "outlet",
        allow: str | Policy | None = None,
        options: PortalOptions | None = None,
    ) -> Outlet:
        """Serve portal sessions at ``name`` by connecting each to ``to`` (``HOST:PORT``);
        returns the :class:`~tether.services.portal.Outlet`."""
        outlet = Outlet(self, name, to, allow=allow, options=options)
        self.add_sink(name, outlet.handle)
        self.outlets[name] = outlet
        self.task_group.start_soon(outlet.run)
        return outlet

    async def delete_tcp_outlet(self, name: str) -> None:
        outlet = self.outlets.pop(name, None)
        if outlet is None:
            raise TetherError(f"no tcp-outlet named {name!r} on node {self.name}")
        self.remove_sink(name)
        outlet.stop()
        for session in list(outlet.sessions.values()):
            session.abort(f"tcp-outlet {name!r} deleted", notify=True)

    async def create_tcp_inlet(
        self,
        bind: str,
        route: str | Sequence[Address],
        *,
        name: str | None = None,
        allow: str | Policy | None = None,
        options: PortalOptions | None = None,
        trust: TrustPolicy | None = None,
    ) -> Inlet:
        """Listen on ``bind`` (``HOST:PORT``, port 0 for any) and carry each connection to the
        outlet at the end of ``route``; returns the :class:`~tether.services.portal.Inlet` (its
        ``address`` is where clients connect). ``trust`` (else ``allow``, else the nodes the
        route names) says who must answer its secure channel."""
        name = name or next(
            f"inlet{k}" for k in itertools.count(1) if f"inlet{k}" not in self.inlets
        )
        if name in self.inlets:
            raise TetherError(f"node {self.name} already has a tcp-inlet named {name!r}")
        inlet = Inlet(self, name, bind, route, allow=allow, options=options, trust=trust)
        await self.task_group.start(inlet.run)
        self.inlets[name] = inlet
        return inlet

    async def delete_tcp_inlet(self, name: str) -> None:
        inlet = self.inlets.pop(name, None)
        if inlet is None:
            raise TetherError(f"no tcp-inlet named {name!r} on node {self.name}")
        inlet.stop()

    async def stop_accepting(self) -> None:
        """Drain: open no new link or portal session (the TCP listeners close, the inlets stop
        listening, the outlets refuse OPEN, saying why); what is open goes on."""
        for listener_id in list(self.tcp.listeners):
            await self.tcp.stop_listener(listener_id)
        for portal in (*self.outlets.values(), *self.inlets.values()):
            await portal.stop_accepting()

    def open_sessions(self) -> int:
        """The portal sessions open now, in every inlet and outlet."""
        return sum(len(p.sessions) for p in (*self.outlets.values(), *self.inlets.values()))

    def _reauthorize_portals(self, rule: PolicyRule) -> None:
        """A policy was added: the portals it governs decide again at once."""
        for portal in (*self.outlets.values(), *self.inlets.values()):
            if rule.matches(portal.kind, portal.name):
                portal.reauthorize()

    # --- memberships and the authority: see tether.services.membership --------------------

    @property
    def authority(self) -> Authority | None:
        return self.membership.authority

    @property
    def memberships(self) -> dict[str, Membership]:
        return self.membership.by_authority

    @property
    def on_credential(self) -> Callable[[Credential], None] | None:
        """Called with each credential this node starts presenting (the daemon stores it)."""
        return self.membership.on_credential

    @on_credential.setter
    def on_credential(self, callback: Callable[[Credential], None] | None) -> None:
        self.membership.on_credential = callback

    async def create_authority(
        self,
        registry: Registry,
        identity_name: str,
        shared: SharedStore,
        *,
        name: str = "authority",
        credential_ttl: int = DEFAULT_CREDENTIAL_TTL,
        admin_policy: str = DEFAULT_ADMIN_POLICY,
    ) -> Authority:
        return await self.membership.create_authority(
            registry,
            identity_name,
            shared,
            name=name,
            credential_ttl=credential_ttl,
            admin_policy=admin_policy,
        )

    async def enroll(self, ticket: Ticket | str, *, poll_interval: float = 60.0) -> Membership:
        return await self.membership.enroll(ticket, poll_interval=poll_interval)

    async def join(
        self,
        authority: Identity,
        route: str,
        *,
        poll_interval: float = 60.0,
        credential: Credential | None = None,
    ) -> Membership:
        return await self.membership.join(
            authority, route, poll_interval=poll_interval, credential=credential
        )

    def use_credential(self, credential: Credential) -> None:
        self.membership.use_credential(credential)

    async def present_credentials(self) -> None:
        await self.membership.present_credentials()
