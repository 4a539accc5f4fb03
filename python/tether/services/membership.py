"""A node's memberships (``docs/authority.md``): running an authority, enrolling with one (a
ticket), joining one (a stored credential), leaving one, and presenting the credentials it holds
— refreshed before they expire, with the revocations of each authority polled.
The authority itself (the service, its tickets) is :mod:`tether.services.authority`'s.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from tether.channel.channel import SecureChannel, open_channels
from tether.channel.secure_channels import SecureChannels
from tether.core.errors import CredentialError, EncodingError, TetherError
from tether.core.message import Address
from tether.identity.credential import Credential, verify, verify_revocations
from tether.identity.identity import Identity
from tether.identity.registry import Registry
from tether.identity.trust import ChannelIdentity, ChannelRefusedError, trust_identifiers
from tether.node.node import BaseNode
from tether.services.authority import (
    DEFAULT_ADMIN_POLICY,
    DEFAULT_CREDENTIAL_TTL,
    SERVICE,
    Authority,
    AuthorityError,
    Ticket,
    call,
)
from tether.store.authority import SharedStore

log = logging.getLogger("tether.authority")

PRESENT_TIMEOUT = 2.0
"""How long presenting credentials on one channel may wait for room on its path."""


class Memberships:
    """One node's memberships, and the authority it runs (see the module documentation)."""

    def __init__(self, node: BaseNode, channels: SecureChannels) -> None:
        self.node = node
        self.channels = channels
        """The node's secure channels: the listeners that present its credentials, and where
        the channels to its authorities are opened."""
        self.authority: Authority | None = None
        """The authority this node runs, if any."""
        self.by_authority: dict[str, Membership] = {}
        """This node's memberships, by the identifier of their authority."""
        self.on_credential: Callable[[Credential], None] | None = None
        """Called with each credential this node starts presenting (the daemon stores it)."""

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
        """Run an authority (:mod:`tether.services.authority`) as the service ``authority``,
        with the identity ``identity_name`` of ``registry`` and the member registry in
        ``shared``."""
        node = self.node
        if self.authority is not None:
            raise TetherError(f"node {node.name} already runs an authority")
        authority = Authority(
            node,
            registry,
            identity_name,
            shared,
            name=name,
            credential_ttl=credential_ttl,
            admin_policy=admin_policy,
        )
        await node.start_worker(SERVICE, authority.handle, kind="authority")
        self.authority = authority
        # This node honours the credentials it issues (its own policies see members' roles).
        node.authorities[authority.identifier] = authority.identity
        node.task_group.start_soon(authority.run_maintenance)
        return authority

    async def enroll(self, ticket: Ticket | str, *, poll_interval: float = 60.0) -> Membership:
        """Present a :class:`~tether.services.authority.Ticket` (or its text) to its authority:
        this node becomes a member, trusts the authority, and from now on presents the
        credential and keeps it fresh. Returns the :class:`Membership`. Nothing about this node
        changes unless the enrollment succeeds (a refused ticket leaves no trust in its
        authority behind, and an existing membership as it was)."""
        t = Ticket.decode(ticket) if isinstance(ticket, str) else ticket
        if self.node.identity is None:
            raise TetherError(f"node {self.node.name} has no identity to enroll")
        m = Membership(self, t.authority, t.route, poll_interval=poll_interval)
        try:
            await m.enroll(t.secret)
        except BaseException:
            m.stop()
            raise
        await self.adopt(m)
        return m

    async def join(
        self,
        authority: Identity,
        route: str,
        *,
        poll_interval: float = 60.0,
        credential: Credential | None = None,
    ) -> Membership:
        """Trust ``authority`` and keep a membership of it at ``route`` (when a node restarts
        with a stored credential, or was made a member by an admin)."""
        m = Membership(self, authority, route, poll_interval=poll_interval)
        m.credential = credential
        await self.adopt(m)
        return m

    async def adopt(self, m: Membership) -> None:
        """Make ``m`` this node's membership of its authority: trust the authority (on the
        channels already open too: their peers' credentials from it count from now on),
        present the credential (also on the open channels, so that their peers decide on it
        at once), keep it fresh."""
        self.node.authorities[m.identifier] = m.authority
        old = self.by_authority.pop(m.identifier, None)
        if old is not None:
            old.stop()
        self.by_authority[m.identifier] = m
        m.active = True
        if m.credential is not None:
            self.use_credential(m.credential)
            await self.present_credentials()
        await self.node.task_group.start(m.run)

    def use_credential(self, credential: Credential) -> None:
        """Present ``credential`` in this node's handshakes from now on (replacing one from
        the same issuer)."""
        me = self.node.identity
        if me is None:
            raise TetherError(f"node {self.node.name} has no identity")
        creds = tuple(c for c in me.credentials if c.issuer != credential.issuer)
        self._present((*creds, credential))
        if self.on_credential is not None:
            self.on_credential(credential)

    def _present(self, credentials: tuple[Credential, ...]) -> None:
        """The node's identity (and its listeners' that use it) presents ``credentials`` in
        the handshakes from now on."""
        node = self.node
        me = node.identity
        assert me is not None
        node.identity = ChannelIdentity(me.identity, me.static_key, me.attestation, credentials)
        for listener in self.channels.listeners.values():
            if listener.me.identity.identifier == me.identity.identifier:
                listener.me = node.identity

    def leave(self, identifier: str) -> None:
        """End this node's membership of the authority ``identifier``: it stops refreshing and
        presenting its credential from it (peers that already hold that credential keep it
        until it expires: leaving is not revoking), and, unless the node runs that authority
        itself, it stops trusting the credentials that authority issues, on open channels
        too."""
        node = self.node
        m = self.by_authority.pop(identifier, None)
        if m is None:
            raise TetherError(f"node {node.name} is no member of {identifier}")
        m.stop()
        m.active = False
        if self.authority is None or self.authority.identifier != identifier:
            node.authorities.pop(identifier, None)
            node.revoked_credentials.pop(identifier, None)
        if node.identity is not None:
            self._present(tuple(c for c in node.identity.credentials if c.issuer != identifier))

    async def present_credentials(self) -> None:
        """Send this node's current credentials on every open channel (after an enrollment or
        a refresh); a channel whose path is congested or broken is skipped (its peer decides on
        what it has, and gets the credentials with the next refresh or a new channel)."""
        if self.node.identity is None:
            return
        for channel in list(open_channels(self.node).values()):
            me = self.node.identity
            if not channel.closed.is_set() and me is not None:
                with contextlib.suppress(TetherError), anyio.move_on_after(PRESENT_TIMEOUT):
                    await channel.present_credentials(me.credentials)


@dataclass
class Membership:
    """This node's membership of one authority: its credential, kept fresh."""

    memberships: Memberships
    """The node's memberships (this one is presented and refreshed through them)."""
    authority: Identity
    route: str
    """Route to the authority's node (``/node/auth``, ``/ip4/…/tcp/…``, a relay's forwarder):
    a secure channel to its ``api`` listener carries the requests, and must end at the
    authority's own identity."""
    credential: Credential | None = None
    active: bool = False
    """Adopted by the node (after a successful enrollment): credentials it receives are
    presented from then on."""
    _channel: SecureChannel | None = None
    poll_interval: float = 60.0
    revoked: frozenset[str] = frozenset()
    last_error: str = ""
    refreshed: int = 0
    _scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    @property
    def node(self) -> BaseNode:
        return self.memberships.node

    @property
    def identifier(self) -> str:
        return self.authority.identifier

    def info(self) -> dict[str, object]:
        c = self.credential
        return {
            "authority": self.identifier,
            "route": self.route,
            "attributes": dict(c.attributes) if c else {},
            "credential": c.id if c else None,
            "expires_at": c.expires_at if c else None,
            "refreshed": self.refreshed,
            "revoked_known": len(self.revoked),
            "last_error": self.last_error,
        }

    def _accept(self, hex_credential: str) -> Credential:
        try:
            c = verify(
                bytes.fromhex(hex_credential),
                authorities={self.identifier: self.authority},
                now=int(time.time()),
                subject=self._my_identifier(),
            )
        except (CredentialError, EncodingError, ValueError) as e:
            raise AuthorityError(
                f"the authority sent a credential that does not verify: {e}"
            ) from None
        self.credential = c
        if self.active:
            self.memberships.use_credential(c)
        return c

    def _my_identifier(self) -> str:
        me = self.node.identity
        if me is None:
            raise TetherError(f"node {self.node.name} has no identity")
        return me.identity.identifier

    async def request(self, request: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        """One request to the authority, through a secure channel that must end at the
        authority's identity (the one in the ticket)."""
        ch = self._channel
        if ch is None or ch.closed.is_set():
            try:
                ch = await self.memberships.channels.open(
                    f"{self.route.rstrip('/')}/service/api",
                    trust=trust_identifiers(self.identifier),
                    timeout=timeout,
                )
            except ChannelRefusedError as e:
                raise ChannelRefusedError(
                    f"could not reach the authority {self.identifier} at {self.route}: {e}"
                ) from None
            self._channel = ch
        return await call(
            self.node, (Address.local(ch.address), Address.local(SERVICE)), request, timeout
        )

    async def enroll(self, secret: bytes) -> Credential:
        r = await self.request({"op": "enroll", "secret": secret.hex()})
        return self._accept(str(r.get("credential", "")))

    async def refresh(self) -> Credential:
        r = await self.request({"op": "credential"})
        c = self._accept(str(r.get("credential", "")))
        self.refreshed += 1
        await self.memberships.present_credentials()
        return c

    async def poll_revocations(self) -> None:
        r = await self.request({"op": "revocations"})
        rl = verify_revocations(
            bytes.fromhex(str(r.get("revocations", ""))), self.authority, now=int(time.time())
        )
        self.revoked = rl.revoked
        self.node.revoked_credentials[self.identifier] = rl.revoked

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Refresh the credential when a third of its life is left (or it is missing), and
        poll revocations every ``poll_interval`` seconds; errors are retried, and logged."""
        task_status.started()
        with self._scope:
            next_poll = 0.0
            while True:
                now = time.time()
                c = self.credential
                try:
                    if c is None or c.expires_at - now < (c.expires_at - c.created_at) / 3:
                        await self.refresh()
                    if time.monotonic() >= next_poll:
                        await self.poll_revocations()
                        next_poll = time.monotonic() + self.poll_interval
                    self.last_error = ""
                except (TetherError, TimeoutError) as e:
                    self.last_error = str(e)
                    log.warning("membership of %s: %s (retrying)", self.identifier, e)
                c = self.credential
                wait = self.poll_interval
                if c is not None:
                    refresh_at = c.expires_at - (c.expires_at - c.created_at) / 3
                    wait = min(wait, max(1.0, refresh_at - time.time()))
                await anyio.sleep(min(wait, max(0.2, next_poll - time.monotonic())))

    def stop(self) -> None:
        self._scope.cancel()
        if self._channel is not None and not self._channel.closed.is_set():
            self.node.task_group.start_soon(self._channel.close)
