"""Relays: reach a node that has no open port.

A node in a private network opens no listener. It connects out to a relay node, opens a secure
channel to it, and **claims a name** there; the relay node then runs a forwarder
``forward_to_NAME`` that sends whatever reaches it back along the claimer's own outgoing
connection (through that channel). Any node can then reach the claimer at
``ROUTE_TO_RELAY_NODE/service/forward_to_NAME/...`` — and a secure channel opened *through* the
relay to the claimer keeps the relay blind: it forwards ciphertext only.

* **Who may claim**: a claim must arrive through a secure channel, so the relay knows the
  claimer's identity. The first identity to claim a name owns it; only that identity may claim it
  again (after a reconnect or a relay restart, when the owners are persisted). An authority can
  grant names with a credential attribute ``relay`` (a name, or ``*``). A refused claim is a
  clear error for the claimer; nobody can hijack a name.
* **Recovery**: the claimer pings the relay through the channel; when the relay path dies (the
  relay node restarts, a connection drops, pings go unanswered) it reconnects with exponential
  backoff and jitter, logging state changes only, and claims again. Senders whose messages reach
  a relay whose claimer is gone get an error report ("relay NAME is offline"), never silence.
* **Bounds**: the forwarder holds nothing: each message is routed on at once, and the node's
  bounded queues push back on senders.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus

from tether._core import forward_onward
from tether.channel.channel import SecureChannel, origin_channel
from tether.channel.secure_channels import SecureChannels
from tether.core.errors import TetherError
from tether.core.message import (
    KIND_DATA,
    Address,
    Message,
    Origin,
    RawHandler,
    RoutedMessage,
    WorkerContext,
)
from tether.identity.trust import (
    ChannelRefusedError,
    TrustPolicy,
    has_valid_credential,
    initiator_trust,
    refusal_notes,
)
from tether.node import policies
from tether.node.node import BaseNode
from tether.node.routing import format_route, listener_node

log = logging.getLogger("tether.relay")

SERVICE = "relay"
FORWARD_PREFIX = "forward_to_"
_RELAY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")

CLAIM = 1
CLAIMED = 2
DENIED = 3
PING = 4
PONG = 5


class RelayClaimError(TetherError):
    """The relay refused the claim (the name belongs to another identity, or a bad name)."""


@dataclass
class Claim:
    name: str
    owner: str
    route: tuple[Address, ...]
    """From the relay node back to the claimer node (through the claimer's channel)."""
    channel: str
    claimed_at: float = field(default_factory=time.time)
    forwarded: int = 0
    forwarded_bytes: int = 0
    """The payload bytes of the messages forwarded (as they reached the forwarder: for a
    message of a secure channel, its ciphertext; no routes or framing)."""

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "owner": self.owner,
            "channel": self.channel,
            "forwarded": self.forwarded,
            "forwarded_bytes": self.forwarded_bytes,
            "claimed_at": int(self.claimed_at),
        }


class RelayService:
    """The relay side: the ``relay`` worker, the claims, and a forwarder per claimed name."""

    def __init__(
        self,
        node: BaseNode,
        owners: MutableMapping[str, str] | None = None,
        *,
        ownership_ttl: float = 3600.0,
        max_names_per_identity: int = 8,
        max_claims: int = 10_000,
    ) -> None:
        self.node = node
        self.owners: MutableMapping[str, str] = owners if owners is not None else {}
        """name -> identifier of the identity that owns it (persisted by the daemon)."""
        self.claims: dict[str, Claim] = {}
        self.ownership_ttl = ownership_ttl
        """A name whose claimer has been gone this long is free again."""
        self.max_names_per_identity = max_names_per_identity
        self.max_claims = max_claims
        self._offline_since: dict[str, float] = {}

    async def handle(self, ctx: WorkerContext, msg: Message) -> None:
        if msg.kind != KIND_DATA or not msg.payload or not msg.return_route:
            return
        op, body = msg.payload[0], msg.payload[1:]
        if op == PING:
            await ctx.reply(msg, bytes([PONG]) + body)
            return
        if op != CLAIM:
            return
        name = body.decode("utf-8", errors="replace")
        channel = origin_channel(self.node, msg.origin)
        reason = self._refusal(name, channel)
        if reason is not None:
            log.info("%s: refused a claim of %r: %s", self.node.name, name, reason)
            await ctx.reply(msg, bytes([DENIED]) + reason.encode())
            return
        assert channel is not None
        owner = channel.peer.identifier
        self.owners.setdefault(name, owner)
        old = self.claims.get(name)
        self.claims[name] = Claim(name, owner, tuple(msg.return_route[:-1]), channel.address)
        forwarder = FORWARD_PREFIX + name
        if not self.node.has_worker(forwarder):
            await self.node.start_worker(
                forwarder, self._forwarder(name), kind="relay", inline=True, raw=True
            )
        # What the data plane reads for the forwarder it forwards itself (ciphertext into the
        # claimer's channel); the worker handles the rest (and reports an offline name).
        self.node.data_plane.set_forward(forwarder, channel, self.claims[name].route[1:])
        log.info(
            "%s: %s relay %r for %s",
            self.node.name,
            "re-claimed" if old else "claimed",
            name,
            owner,
        )
        await ctx.reply(msg, bytes([CLAIMED]) + name.encode())

    def _refusal(self, name: str, channel: SecureChannel | None) -> str | None:
        if not _RELAY_NAME.fullmatch(name):
            return (
                f"invalid relay name {name!r}: use 1 to 128 ASCII letters, digits, '-', '_' or "
                "'.' (the name goes in routes: /service/forward_to_NAME)"
            )
        if channel is None:
            return (
                "claims must come through a secure channel to the relay node "
                "(route …/secure/api/service/relay), so the relay knows who claims"
            )
        me = channel.peer.identifier
        if policies.applicable(self.node, "relay", name):
            # Every policy for relay names and for this one must allow (tether.node.policies.check).
            refusal = policies.check(
                self.node, "relay", name, "claim", channel.peer, peer_named=True
            )
            if refusal is not None:
                return f"claiming the relay name {name!r}: {refusal}"
        elif not has_valid_credential(channel.peer, self.node):
            # No policy: only members of an authority the relay node trusts may claim.
            return (
                f"relay node {self.node.name} allows no claim by {me}: its operator allows it "
                f"with `tether policy create --at {self.node.name} --resource-type relay "
                f"'subject.identifier = \"{me}\"'`, or enrolls both nodes with one authority"
                + "".join(f"; {note}" for note in refusal_notes(channel.peer, self.node))
            )
        owner = self.owners.get(name)
        if owner is not None and owner != me:
            granted = channel.current_attributes().get("relay")
            if granted not in (name, "*"):
                return f"the name {name!r} belongs to {owner}; it cannot be claimed by {me}"
        if owner != me:
            owned = sum(1 for _, owner in self.owners.items() if owner == me)
            if owned >= self.max_names_per_identity:
                return (
                    f"{me} already holds {owned} relay names at {self.node.name} (the limit); "
                    "names expire once their claimer has been gone for "
                    f"{self.ownership_ttl:g} s"
                )
            if len(self.claims) >= self.max_claims and name not in self.claims:
                return f"relay node {self.node.name} holds {self.max_claims} names (its limit)"
        return None

    async def run_maintenance(self, interval: float = 10.0) -> None:
        """Expire names whose claimer has been gone for ``ownership_ttl`` seconds: the claim,
        its forwarder and its owner record (persisted owners with no claim since the relay
        started count as gone from then)."""
        while True:
            self.expire()
            await anyio.sleep(min(interval, self.ownership_ttl))

    def expire(self, now: float | None = None) -> list[str]:
        """One round of :meth:`run_maintenance`; the names that expired."""
        t = time.monotonic() if now is None else now
        gone: list[str] = []
        for name in set(self.owners) | set(self.claims):
            claim = self.claims.get(name)
            channel = self.node.channels.get(claim.channel) if claim is not None else None
            if channel is not None and not channel.closed.is_set():
                self._offline_since.pop(name, None)
                continue
            since = self._offline_since.setdefault(name, t)
            if t - since >= self.ownership_ttl:
                gone.append(name)
        for name in gone:
            self._offline_since.pop(name, None)
            self.claims.pop(name, None)
            self.owners.pop(name, None)
            forwarder = FORWARD_PREFIX + name
            if self.node.has_worker(forwarder):
                self.node.task_group.start_soon(self.node.stop_worker, forwarder)
            self.node.data_plane.set_forward(forwarder, None, ())
            log.info("%s: relay name %r expired (its claimer was gone)", self.node.name, name)
        return gone

    def _forwarder(self, name: str) -> RawHandler:
        # A raw inline worker: it runs in the task that delivered the message and forwards the
        # payload as it arrived (no copy, no mailbox hop): relays carry bulk ciphertext.
        async def forward(ctx: WorkerContext, msg: RoutedMessage) -> None:
            claim = self.claims.get(name)
            channel = self.node.channels.get(claim.channel) if claim else None
            if claim is None or channel is None or channel.closed.is_set():
                await self.node.report(
                    RoutedMessage(msg.onward[1:], msg.return_route, msg.payload[:1]),
                    f"relay {name!r} on node {self.node.name} is offline (its node is not "
                    "connected); try again when it reconnects",
                )
                return
            try:  # the relay rule, shared with the engine (rust/src/relay.rs)
                onward = forward_onward(claim.route, msg.onward)
            except TetherError as e:
                await self.node.report(
                    RoutedMessage(msg.onward[1:], msg.return_route, msg.payload[:1]),
                    f"relay {name!r} on node {self.node.name} cannot forward it: {e}",
                )
                return
            claim.forwarded += 1
            claim.forwarded_bytes += len(msg.payload)
            # The claimer's replies go back where this came from (and only there).
            self.node.reach.grant(ctx.origin, Origin.channel(claim.channel))
            await self.node.route(
                RoutedMessage(tuple(map(Address._make, onward)), msg.return_route, msg.payload)
            )

        return forward

    def info(self) -> list[dict[str, object]]:
        out = []
        data_plane = self.node.data_plane
        for claim in self.claims.values():
            channel = self.node.channels.get(claim.channel)
            info = claim.info()
            # What the worker forwarded, and what the data plane forwarded itself.
            messages, size = data_plane.forwarded(FORWARD_PREFIX + claim.name)
            info["forwarded"] = claim.forwarded + messages
            info["forwarded_bytes"] = claim.forwarded_bytes + size
            online = channel is not None and not channel.closed.is_set()
            policy = policies.effective(
                self.node,
                "relay",
                claim.name,
                default="a member of an authority this node trusts may claim it",
            )
            out.append({**info, "online": online, "policy": policy})
        return out


@dataclass
class RelayClient:
    """The claimer side: keeps a name claimed at a relay node, reconnecting as needed."""

    node: BaseNode
    name: str
    at: str | tuple[Address, ...]
    """Route to the relay node (resolved again on every reconnect, so ``/node/NAME`` follows a
    relay node that restarted elsewhere)."""
    channels: SecureChannels
    """The node's secure channels: the one to the relay node is opened there."""
    ping_interval: float = 5.0
    ping_timeout: float = 5.0
    backoff_min: float = 0.2
    backoff_max: float = 30.0
    state: str = "connecting"
    claims: int = 0
    last_error: str = ""
    ready: anyio.Event = field(default_factory=anyio.Event)
    _scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    relay_route: tuple[Address, ...] = ()
    """The route in use: to the relay node's secure-channel listener (``…/api``)."""
    trust: TrustPolicy | None = None
    """Who the relay node must be (a trust policy); by default the node named in ``at``
    (``/node/NAME``), else an authority's member (``tether.identity.trust.initiator_trust``)."""

    async def _resolve(self) -> tuple[Address, ...]:
        route = await self.node.resolve_route(self.at)
        if not route or route[-1] != Address.local("api"):
            route = (*route, Address.local("api"))
        return route

    @property
    def forward_route(self) -> str:
        return format_route(self.relay_route[:-1]) + f"/service/{FORWARD_PREFIX}{self.name}"

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "claims": self.claims,
            "last_error": self.last_error,
            "forward_route": self.forward_route,
        }

    async def claim_once(self) -> SecureChannel:
        """Open a channel to the relay node and claim the name; returns the channel."""
        self.relay_route = await self._resolve()
        name = listener_node(self.at) if isinstance(self.at, str) else None
        try:
            policy = initiator_trust(
                self.node,
                self.trust,
                self.node.node_identifier(name),
                format_route(self.relay_route),
            )
        except ChannelRefusedError as e:  # nothing to expect: a mistake, not a lost path
            raise RelayClaimError(str(e)) from None
        channel = await self.channels.open(
            self.relay_route, trust=policy, timeout=self.ping_timeout * 2
        )
        reply = await self.node.request(
            [Address.local(channel.address), Address.local(SERVICE)],
            bytes([CLAIM]) + self.name.encode(),
            timeout=self.ping_timeout * 2,
        )
        if reply[:1] == bytes([DENIED]):
            await channel.close()
            raise RelayClaimError(reply[1:].decode("utf-8", "replace"))
        if reply[:1] != bytes([CLAIMED]):
            await channel.close()
            raise RelayClaimError("the relay gave an unexpected answer")
        return channel

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Claim, watch, reconnect; until stopped. A refused claim ends it (raised at start)."""

        delay = self.backoff_min
        started = False
        with self._scope:
            while True:
                try:
                    channel = await self.claim_once()
                except RelayClaimError as e:
                    self.state, self.last_error = "refused", str(e)
                    log.warning("%s: relay %r refused: %s", self.node.name, self.name, e)
                    if not started:
                        raise
                    await anyio.sleep(self.backoff_max)
                    continue
                except (TetherError, OSError) as e:
                    if self.state != "reconnecting":
                        log.warning(
                            "%s: relay %r unreachable (%s); retrying with backoff",
                            self.node.name,
                            self.name,
                            e,
                        )
                    self.state, self.last_error = "reconnecting", str(e)
                    if not started:
                        started = True
                        task_status.started()
                    await anyio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not crypto
                    delay = min(delay * 2, self.backoff_max)
                    continue
                delay = self.backoff_min
                self.claims += 1
                if self.state != "claimed":
                    log.info(
                        "%s: relay %r claimed (%s)", self.node.name, self.name, self.forward_route
                    )
                self.state, self.last_error = "claimed", ""
                self.ready.set()
                if not started:
                    started = True
                    task_status.started()
                # Watch: ping through the channel until the path dies.
                while not channel.closed.is_set():
                    with anyio.move_on_after(self.ping_interval):
                        await channel.closed.wait()
                    if channel.closed.is_set():
                        break
                    problem = await self._ping(channel)
                    if problem is not None:
                        self.last_error = problem
                        break
                self.ready = anyio.Event()
                self.state = "reconnecting"
                log.warning(
                    "%s: relay %r lost (%s); reconnecting",
                    self.node.name,
                    self.name,
                    self.last_error or "channel closed",
                )
                if not channel.closed.is_set():
                    await channel.close(notify=False)

    async def _ping(self, channel: SecureChannel) -> str | None:
        """One ping through the channel; the reason if the relay path is lost. Returns at once
        when the channel closes meanwhile (its connection died)."""
        result: list[str | None] = ["the channel closed"]

        async def ping(scope: anyio.CancelScope) -> None:
            try:
                await self.node.request(
                    [Address.local(channel.address), Address.local(SERVICE)],
                    bytes([PING]),
                    timeout=self.ping_timeout,
                )
                result[0] = None
            except TetherError as e:
                result[0] = f"relay path lost: {e}"
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ping, tg.cancel_scope)
            await channel.closed.wait()
            tg.cancel_scope.cancel()
        return result[0]

    def stop(self) -> None:
        self._scope.cancel()
