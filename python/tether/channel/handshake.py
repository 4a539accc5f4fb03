"""Opening and accepting secure channels: the Noise XX handshake over the node's routes
(``docs/secure-channels.md``), and the bounds on handshakes a stranger can leave half open
(``docs/security.md``).

:func:`open_channel` initiates a channel to a listener and returns only after the listener
acknowledged it (a refusal on either side leaves no channel on either side). A
:class:`ChannelListener` answers first messages, keeping each half-open handshake in its node's
:class:`HalfOpenTable` (capped per peer, per source address and per node) until the third
message, a refusal, a timeout, or a newcomer evicts it. Handshake answers are taken only from the
origin the handshake goes by.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from tether.channel.channel import PROLOGUE, PROTOCOL, STEP_AD, Decryptor, SecureChannel, Step
from tether.core import noise
from tether.core.errors import CryptoError, TetherError
from tether.core.message import KIND_DATA, Address, Message, RoutedMessage, WorkerContext
from tether.identity.identity import Identity
from tether.identity.trust import (
    ChannelIdentity,
    ChannelRefusedError,
    Peer,
    TrustPolicy,
    trust_anyone,
    verify_peer,
)
from tether.node import policies
from tether.node.node import BaseNode

log = logging.getLogger("tether.channel")

HANDSHAKE_TIMEOUT = 30.0
LISTENER_HANDSHAKE_TIMEOUT = 10.0
"""How long a listener keeps a half-open handshake (its first reply sent) for the third
message; a real initiator answers within a round trip."""
MAX_PENDING_HANDSHAKES = 256
"""Half-open handshakes a node keeps, all listeners together; a newcomer evicts the oldest
of the address holding the most.
Dropped first messages get no reply (no reflection)."""
MAX_PENDING_PER_PEER = 8
"""Half-open handshakes one peer (a link, or a remote link behind a relay's channel) may hold."""
MAX_PENDING_PER_SOURCE = 32
"""Half-open handshakes the links from one IP address may hold together."""


class _Handshaker:
    """Runs one side of the XX handshake over the node's routes."""

    def __init__(
        self,
        me: ChannelIdentity,
        initiator: bool,
        authorities: Mapping[str, Identity],
        trust: TrustPolicy,
    ) -> None:
        self.me = me
        self.authorities = authorities
        self.trust = trust
        self.hs = noise.Handshake(
            PROTOCOL, initiator=initiator, static_key=me.static_key.reveal(), prologue=PROLOGUE
        )

    def verify(self, payload: bytes) -> Peer:
        remote = self.hs.remote_static
        assert remote is not None
        return verify_peer(
            payload, remote, authorities=self.authorities, trust=self.trust, now=int(time.time())
        )


async def _refuse(node: BaseNode, route: Sequence[Address], reason: str) -> None:
    await node.route(
        RoutedMessage(tuple(route), (), bytes([KIND_DATA, Step.REFUSED]) + reason.encode()[:1024]),
        block=False,
    )


# --- the initiator ----------------------------------------------------------------------------


async def open_channel(
    node: BaseNode,
    route: Sequence[Address],
    me: ChannelIdentity,
    *,
    authorities: Mapping[str, Identity] | None = None,
    trust: TrustPolicy,
    timeout: float = 10.0,
) -> SecureChannel:
    """Initiate a channel to the listener at the end of ``route``, to a peer ``trust``
    accepts (there is no default: see ``tether.identity.trust.initiator_trust``)."""
    # The map itself, not a copy (an empty one too): authorities trusted later count as well.
    trusted: Mapping[str, Identity] = authorities if authorities is not None else {}
    started = time.monotonic()
    hsk = _Handshaker(me, True, trusted, trust)
    address = node.next_id("sc")
    decryptor, inbox = await _initiator_inbox(node, route, address)
    try:
        reply = await _first_reply(node, route, hsk, address, inbox, timeout)
        channel = await _send_third(node, hsk, address, reply, trusted)
        await _acknowledgement(channel, inbox, timeout)
    except TimeoutError:
        node.handshakes.record("initiator", "timeout")
        await node.stop_worker(address + ".in")
        raise ChannelRefusedError(f"no handshake reply within {timeout:g} s") from None
    except BaseException as e:
        if isinstance(e, TetherError):
            refused = isinstance(e, ChannelRefusedError) and not isinstance(
                e.__cause__, CryptoError
            )
            node.handshakes.record("initiator", "refused" if refused else "failed")
        await node.stop_worker(address + ".in")
        raise
    node.handshakes.record("initiator", "ok", time.monotonic() - started)
    await node.start_worker(address, channel.encrypt, kind="secure-channel", reach="local")
    decryptor.channel = channel  # from now on the inbox decrypts
    node.remember_channel(channel)
    node.task_group.start_soon(channel.watch_idle)
    return channel


async def _initiator_inbox(
    node: BaseNode, route: Sequence[Address], address: str
) -> tuple[Decryptor, MemoryObjectReceiveStream[Message]]:
    """The channel's ``.in`` worker, taking the handshake's answers into an inbox until the
    channel is established. The answers come back the way the first message goes: anything
    from elsewhere (a stranger's forged REFUSED, say) is not the listener's and is ignored."""
    inbox_send, inbox = anyio.create_memory_object_stream[Message](4)
    decryptor = Decryptor()
    expected = node.expected_origin(route[0]) if route else None

    async def handshake_inbox(ctx: WorkerContext, msg: Message) -> None:
        if expected is not None and not msg.origin.is_local and not expected(msg.origin):
            return
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
            inbox_send.send_nowait(msg)

    decryptor.handshake = handshake_inbox
    await node.start_worker(
        address + ".in", decryptor, kind="secure-channel", inline=True, raw=True
    )
    return decryptor, inbox


async def _first_reply(
    node: BaseNode,
    route: Sequence[Address],
    hsk: _Handshaker,
    address: str,
    inbox: MemoryObjectReceiveStream[Message],
    timeout: float,
) -> Message:
    """Send the first handshake message; the listener's answer (its second message)."""
    await node.route(
        RoutedMessage(
            tuple(route),
            (Address.local(address + ".in"),),
            bytes([KIND_DATA, Step.HS1]) + hsk.hs.write_message(b""),
        )
    )
    with anyio.fail_after(timeout):
        while True:
            msg = await inbox.receive()
            if msg.kind != KIND_DATA:
                raise ChannelRefusedError(
                    f"cannot reach the listener: {msg.payload.decode('utf-8', 'replace')}"
                )
            if msg.payload[:1] == bytes([Step.REFUSED]):
                raise ChannelRefusedError(msg.payload[1:].decode("utf-8", "replace"))
            if msg.payload[:1] == bytes([Step.HS2]):
                return msg


async def _send_third(
    node: BaseNode,
    hsk: _Handshaker,
    address: str,
    reply: Message,
    trusted: Mapping[str, Identity],
) -> SecureChannel:
    """Verify the listener (its second message) and send the third: the channel, not yet
    acknowledged by the listener."""
    try:
        peer = hsk.verify(hsk.hs.read_message(reply.payload[1:]))
    except ChannelRefusedError as e:
        await _refuse(node, reply.return_route, f"the initiator refused: {e}")
        raise
    except CryptoError as e:  # a malformed or forged reply (counted as "failed", by its cause)
        raise ChannelRefusedError(f"handshake failed: {e}") from e
    hs3 = hsk.hs.write_message(hsk.me.payload())
    cipher = hsk.hs.into_channel_cipher()
    channel = SecureChannel(
        node, address, peer, reply.return_route, cipher, True, authorities=trusted
    )
    await node.route(
        RoutedMessage(
            reply.return_route,
            (Address.local(address + ".in"),),
            bytes([KIND_DATA, Step.HS3]) + hs3,
        )
    )
    return channel


async def _acknowledgement(
    channel: SecureChannel, inbox: MemoryObjectReceiveStream[Message], timeout: float
) -> None:
    """XX completes for the initiator when it sends message 3, but the listener still has to
    verify it: wait for its (authenticated) acknowledgement or its refusal, so that a refused
    channel exists on neither side."""
    cipher = channel.cipher
    try:
        with anyio.fail_after(timeout):
            while True:
                ack = await inbox.receive()
                if ack.kind != KIND_DATA:
                    raise ChannelRefusedError(
                        "the listener is unreachable: " + ack.payload.decode("utf-8", "replace")
                    )
                if ack.payload[:1] == bytes([Step.REFUSED]):
                    raise ChannelRefusedError(ack.payload[1:].decode("utf-8", "replace"))
                if ack.payload[:1] == bytes([Step.ACK]):
                    try:
                        cipher.open(ack.payload[1:], aad=STEP_AD[Step.ACK])
                    except CryptoError:
                        continue  # not from the peer: keep waiting
                    return
    except (ChannelRefusedError, TimeoutError):
        # A refusal is unauthenticated and an ACK can be lost: if the listener did accept,
        # tell it (authenticated) that this side gave up, so no half-open channel is left.
        with anyio.move_on_after(1):
            await channel._send_wire(Step.CLOSE, cipher.seal(b"", aad=STEP_AD[Step.CLOSE]))
        cipher.erase()
        raise


# --- the listener -----------------------------------------------------------------------------


class HalfOpen:
    """One half-open handshake at a listener: its first reply sent, its third message awaited.
    ``done`` is set when it ends (completed, refused, timed out, or evicted for a newcomer)."""

    def __init__(
        self,
        table: HalfOpenTable,
        listener: ChannelListener,
        peer: tuple[object, ...],
        source: str | None,
    ) -> None:
        self.table = table
        self.share = ("source", source) if source is not None else peer
        """Whose share of the node's half-open handshakes this counts against: its source
        address (or, for one that came out of a channel, its peer)."""
        self.keys = (("listener", listener.address), *dict.fromkeys((peer, self.share)))
        self.done = anyio.Event()
        self.evicted = False

    def release(self) -> None:
        self.table.remove(self)


class HalfOpenTable:
    """A node's half-open handshakes, oldest first, with counts by listener, peer and source
    address (``ChannelListener._admit`` caps them)."""

    def __init__(self) -> None:
        self._all: dict[HalfOpen, None] = {}
        self._counts: dict[object, int] = {}

    def __len__(self) -> int:
        return len(self._all)

    def count(self, key: object) -> int:
        return self._counts.get(key, 0)

    def add(
        self, listener: ChannelListener, peer: tuple[object, ...], source: str | None
    ) -> HalfOpen:
        half = HalfOpen(self, listener, peer, source)
        self._all[half] = None
        for k in half.keys:
            self._counts[k] = self._counts.get(k, 0) + 1
        return half

    def remove(self, half: HalfOpen) -> None:
        if self._all.pop(half, 0) is None:
            for k in half.keys:
                n = self._counts[k] - 1
                if n:
                    self._counts[k] = n
                else:
                    del self._counts[k]

    def evict(self) -> None:
        """Make room: the oldest half-open handshake of the share (source address) that holds
        the most gives way, so a flood from a few addresses evicts its own, not a newcomer's."""
        heaviest = max(self._all, key=lambda h: self._counts[h.share]).share
        oldest = next(h for h in self._all if h.share == heaviest)
        oldest.evicted = True
        self.remove(oldest)
        oldest.done.set()  # its listener stops waiting for it and drops its state


@dataclass
class ChannelListener:
    """Accepts channels at ``address`` on a node."""

    node: BaseNode
    address: str
    me: ChannelIdentity
    authorities: Mapping[str, Identity] = field(default_factory=dict)
    trust: TrustPolicy = trust_anyone
    half_open: HalfOpenTable = field(default_factory=HalfOpenTable)
    """The node's half-open handshakes (shared by its listeners: the caps are the node's)."""
    accepted: int = 0
    refused: int = 0
    dropped: int = 0
    """First messages dropped because too many handshakes were half open."""
    _last_drop_log: float = 0.0

    def info(self) -> dict[str, object]:
        return {
            "address": self.address,
            "identifier": self.me.identity.identifier,
            "accepted": self.accepted,
            "refused": self.refused,
            "pending": self.half_open.count(("listener", self.address)),
            "dropped": self.dropped,
            "policy": policies.effective(
                self.node,
                "secure-channel-listener",
                self.address,
                default="its trust decides (--authorized, else any authenticated identity)",
            ),
        }

    def _admit(self, msg: Message) -> HalfOpen | None:
        """Keep a new half-open handshake, or None to drop its first message. A peer (the
        link a message came by; for one that came out of a channel, through a relay, the relay's
        link it entered by) may hold MAX_PENDING_PER_PEER, a source address
        MAX_PENDING_PER_SOURCE: beyond them the newcomer is dropped (it is the flooder). When
        the node holds MAX_PENDING_HANDSHAKES, the oldest handshake of the address holding the
        most gives way to the newcomer, so a flood that stays under the per-source caps cannot
        keep a newcomer out, nor evict a handshake of an address with fewer."""
        peer: tuple[object, ...] = (msg.origin,)
        source = None
        if msg.origin.kind == "channel" and len(msg.return_route) > 1:
            peer = (msg.origin, msg.return_route[1])
        elif msg.origin.kind == "link":
            conn = self.node.tcp.connection(msg.origin.address)
            source = conn.source if conn is not None else None
        table = self.half_open
        if table.count(peer) >= MAX_PENDING_PER_PEER or (
            source is not None and table.count(("source", source)) >= MAX_PENDING_PER_SOURCE
        ):
            self._drop(msg, "too many half open from there")
            return None
        if len(table) >= MAX_PENDING_HANDSHAKES:
            table.evict()
            self.node.count("dropped: oldest half-open handshake, for a newcomer")
        return table.add(self, peer, source)

    def _drop(self, msg: Message, reason: str) -> None:
        self.dropped += 1
        self.node.count("dropped: too many half-open handshakes")
        now = time.monotonic()
        if now - self._last_drop_log >= 1.0:
            self._last_drop_log = now
            log.warning(
                "listener %s: dropping first handshake messages from %s: %s (%d on the node; "
                "%d dropped so far)",
                self.address,
                msg.origin,
                reason,
                len(self.half_open),
                self.dropped,
            )

    def _check_policy(self, peer: Peer) -> None:
        """The node's policies for this listener (its name's and ``secure-channel-listener``'s:
        every one must allow, :func:`tether.node.policies.check`)."""
        refusal = policies.check(
            self.node, "secure-channel-listener", self.address, "connect", peer
        )
        if refusal is not None:
            raise ChannelRefusedError(refusal)

    async def handle(self, ctx: WorkerContext, msg: Message) -> None:
        if msg.kind != KIND_DATA or msg.payload[:1] != bytes([Step.HS1]):
            return
        half = self._admit(msg)
        if half is not None:
            await self._respond(msg, half)

    async def _respond(self, msg: Message, half: HalfOpen) -> None:
        """Answer a first handshake message, and keep the handshake (``half``, in the node's
        table) until its third message, a refusal, the timeout, or a newcomer evicts it."""
        hsk = _Handshaker(self.me, False, self.authorities, self.trust)
        try:
            hsk.hs.read_message(msg.payload[1:])
            hs2 = hsk.hs.write_message(self.me.payload())
        except CryptoError as e:
            half.release()
            self.refused += 1
            self.node.handshakes.record("responder", "failed")
            log.info("listener %s: bad first handshake message: %s", self.address, e)
            return
        pending = _PendingHandshake(self, hsk, self.node.next_id("sc"), msg, half)
        try:
            await self.node.start_worker(
                pending.inbox, pending.decryptor, kind="secure-channel", inline=True, raw=True
            )
        except BaseException:
            half.release()
            raise
        # From here on `finish` owns the handshake's count and its worker.
        self.node.task_group.start_soon(pending.finish)
        with contextlib.suppress(TetherError):
            await self.node.route(
                RoutedMessage(
                    msg.return_route,
                    (Address.local(pending.inbox),),
                    bytes([KIND_DATA, Step.HS2]) + hs2,
                ),
                block=False,  # the listener serves everyone: it never waits on one peer
            )


class _PendingHandshake:
    """A handshake a listener answered (its second message sent): the third message, or a
    refusal, makes it a channel or ends it; :meth:`finish` ends it after the timeout."""

    def __init__(
        self,
        listener: ChannelListener,
        hsk: _Handshaker,
        address: str,
        first: Message,
        half: HalfOpen,
    ) -> None:
        self.listener = listener
        self.hsk = hsk
        self.address = address
        self.inbox = address + ".in"
        self.first = first
        """The first handshake message (its origin is the only one that may go on)."""
        self.half = half
        self.done = half.done
        self.decryptor = Decryptor()
        self.decryptor.handshake = self.on_third
        self.started = time.monotonic()

    async def on_third(self, ctx: WorkerContext, m3: Message) -> None:
        # Only from where the first message came (when a remote origin brought it; one a
        # local forwarder handed over is answered along its route): a stranger cannot refuse
        # (or finish) someone else's handshake.
        listener = self.listener
        if self.done.is_set() or m3.kind != KIND_DATA:
            return
        if not self.first.origin.is_local and m3.origin != self.first.origin:
            return
        if m3.payload[:1] == bytes([Step.REFUSED]):
            listener.refused += 1
            listener.node.handshakes.record("responder", "refused")
            log.info("listener %s: %s", listener.address, m3.payload[1:].decode("utf-8", "replace"))
            self.done.set()
            return
        if m3.payload[:1] != bytes([Step.HS3]):
            return
        try:
            peer = self.hsk.verify(self.hsk.hs.read_message(m3.payload[1:]))
            listener._check_policy(peer)
            cipher = self.hsk.hs.into_channel_cipher()
        except ChannelRefusedError as e:
            listener.refused += 1
            listener.node.handshakes.record("responder", "refused")
            log.info("listener %s: refused a channel: %s", listener.address, e)
            await _refuse(listener.node, m3.return_route, f"the listener refused: {e}")
            self.done.set()
            return
        except CryptoError as e:
            listener.refused += 1
            listener.node.handshakes.record("responder", "failed")
            log.info("listener %s: handshake failed: %s", listener.address, e)
            self.done.set()
            return
        await self._establish(peer, cipher, m3.return_route)

    async def _establish(
        self, peer: Peer, cipher: noise.ChannelCipher, route: tuple[Address, ...]
    ) -> None:
        """The initiator verified: the channel exists, its initiator is told (ACK)."""
        listener, node = self.listener, self.listener.node
        channel = SecureChannel(
            node, self.address, peer, route, cipher, False, authorities=listener.authorities
        )
        await node.start_worker(self.address, channel.encrypt, kind="secure-channel", reach="local")
        self.decryptor.channel = channel  # from now on the inbox decrypts
        await channel._send_wire(Step.ACK, cipher.seal(b"", aad=STEP_AD[Step.ACK]))
        node.remember_channel(channel)
        node.task_group.start_soon(channel.watch_idle)
        listener.accepted += 1
        node.handshakes.record("responder", "ok", time.monotonic() - self.started)
        self.done.set()
        log.info(
            "listener %s: secure channel %s with %s",
            listener.address,
            self.address,
            peer.identifier,
        )

    async def finish(self) -> None:
        """End the handshake when it is done, or after LISTENER_HANDSHAKE_TIMEOUT: a channel
        that was not established leaves no worker behind, and the handshake no count."""
        listener, node = self.listener, self.listener.node
        try:
            with anyio.move_on_after(LISTENER_HANDSHAKE_TIMEOUT):
                await self.done.wait()
            if self.decryptor.channel is None and node.has_worker(self.inbox):
                if not self.done.is_set():
                    listener.refused += 1
                    node.handshakes.record("responder", "timeout")
                    log.debug(
                        "listener %s: no third handshake message within %g s",
                        listener.address,
                        LISTENER_HANDSHAKE_TIMEOUT,
                    )
                await node.stop_worker(self.inbox)
        finally:
            self.half.release()
