"""A node's memberships: running an authority, enrolling with one (a ticket), joining one (a
stored credential), and presenting the credentials it holds (``docs/authority.md``).
``Node`` has these as methods; the authority and the
membership themselves are :mod:`tether.authority`'s.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio

from tether.errors import TetherError

PRESENT_TIMEOUT = 2.0
"""How long presenting credentials on one channel may wait for room on its path."""

if TYPE_CHECKING:
    from tether.node import Node


async def create_authority(
    node: Node, registry: Any, identity_name: str, shared: Any, **options: Any
) -> Any:
    """Run an authority (:mod:`tether.authority`) as the service ``authority``, with the
    identity ``identity_name`` of ``registry`` and the member registry in ``shared``."""
    from tether.authority import SERVICE, Authority

    if node.authority is not None:
        raise TetherError(f"node {node.name} already runs an authority")
    authority = Authority(node, registry, identity_name, shared, **options)
    await node.start_worker(SERVICE, authority.handle, kind="authority")
    node.authority = authority
    # This node honours the credentials it issues (its own policies see members' roles).
    node.authorities[authority.identifier] = authority.identity
    node.task_group.start_soon(authority.run_maintenance)
    return authority


async def enroll(node: Node, ticket: Any, *, poll_interval: float = 60.0) -> Any:
    """Present a :class:`~tether.authority.Ticket` (or its text) to its authority: this
    node becomes a member, trusts the authority, and from now on presents the credential
    and keeps it fresh. Returns the :class:`~tether.authority.Membership`. Nothing about
    this node changes unless the enrollment succeeds (a refused ticket leaves no trust in
    its authority behind, and an existing membership as it was)."""
    from tether.authority import Membership, Ticket

    t = Ticket.decode(ticket) if isinstance(ticket, str) else ticket
    if node.identity is None:
        raise TetherError(f"node {node.name} has no identity to enroll")
    m = Membership(node, t.authority, t.route, poll_interval=poll_interval)
    try:
        await m.enroll(t.secret)
    except BaseException:
        m.stop()
        raise
    await adopt(node, m)
    return m


async def join(
    node: Node,
    authority: Any,
    route: str,
    *,
    poll_interval: float = 60.0,
    credential: Any = None,
) -> Any:
    """Trust ``authority`` (an Identity) and keep a membership of it at ``route`` (when a
    node restarts with a stored credential, or was made a member by an admin)."""
    from tether.authority import Membership

    m = Membership(node, authority, route, poll_interval=poll_interval)
    m.credential = credential
    await adopt(node, m)
    return m


async def adopt(node: Node, m: Any) -> None:
    """Make ``m`` this node's membership of its authority: trust the authority (on the
    channels already open too: their peers' credentials from it count from now on), present
    the credential (also on the open channels, so that their peers decide on it at once),
    keep it fresh."""
    node.authorities[m.identifier] = m.authority
    old = node.memberships.pop(m.identifier, None)
    if old is not None:
        old.stop()
    node.memberships[m.identifier] = m
    m.active = True
    if m.credential is not None:
        use_credential(node, m.credential)
        await present_credentials(node)
    await node.task_group.start(m.run)


def use_credential(node: Node, credential: Any) -> None:
    """Present ``credential`` in this node's handshakes from now on (replacing one from
    the same issuer)."""
    me = node.identity
    if me is None:
        raise TetherError(f"node {node.name} has no identity")
    creds = tuple(c for c in me.credentials if c.issuer != credential.issuer)
    _present(node, (*creds, credential))
    if node.on_credential is not None:
        node.on_credential(credential)


def _present(node: Node, credentials: tuple[Any, ...]) -> None:
    """The node's identity (and its listeners' that use it) presents ``credentials`` in the
    handshakes from now on."""
    from tether.trust import ChannelIdentity

    me = node.identity
    assert me is not None
    node.identity = ChannelIdentity(me.identity, me.static_key, me.attestation, credentials)
    for listener in node.channel_listeners.values():
        if listener.me.identity.identifier == me.identity.identifier:
            listener.me = node.identity


def leave(node: Node, identifier: str) -> None:
    """End this node's membership of the authority ``identifier``: it stops refreshing and
    presenting its credential from it (peers that already hold that credential keep it until
    it expires: leaving is not revoking), and, unless the node runs that authority itself, it
    stops trusting the credentials that authority issues, on open channels too."""
    m = node.memberships.pop(identifier, None)
    if m is None:
        raise TetherError(f"node {node.name} is no member of {identifier}")
    m.stop()
    m.active = False
    if node.authority is None or node.authority.identifier != identifier:
        node.authorities.pop(identifier, None)
        node.revoked_credentials.pop(identifier, None)
    if node.identity is not None:
        _present(node, tuple(c for c in node.identity.credentials if c.issuer != identifier))


async def present_credentials(node: Node) -> None:
    """Send this node's current credentials on every open channel (after an enrollment or a
    refresh); a channel whose path is congested or broken is skipped (its peer decides on what
    it has, and gets the credentials with the next refresh or a new channel)."""
    if node.identity is None:
        return
    for channel in list(node.channels.values()):
        if not channel.closed.is_set():
            with contextlib.suppress(TetherError), anyio.move_on_after(PRESENT_TIMEOUT):
                await channel.present_credentials(node.identity.credentials)
