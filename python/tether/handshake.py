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
from typing import TYPE_CHECKING, Any

import anyio

from tether import noise, policies
from tether.channel import PROLOGUE, PROTOCOL, STEP_AD, Decryptor, SecureChannel, Step
from tether.errors import CryptoError, TetherError
from tether.identity import Identity
from tether.message import Address, RoutedMessage
from tether.trust import (
    ChannelIdentity,
    ChannelRefusedError,
    Peer,
    TrustPolicy,
    trust_anyone,
    verify_peer,
)
from tether.worker import KIND_DATA, Message, WorkerContext

if TYPE_CHECKING:
    from tether.node import Node

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
        node: Node,
        me: ChannelIdentity,
        initiator: bool,
        authorities: Mapping[str, Identity],
        trust: TrustPolicy,
    ) -> None:
        self.node = node
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


async def _refuse(node: Node, route: Sequence[Address], reason: str) -> None:
    await node.route(
        RoutedMessage(tuple(route), (), bytes([KIND_DATA, Step.REFUSED]) + reason.encode()[:1024]),
        block=False,
    )


async def open_channel(
    node: Node,
    route: Sequence[Address],
    me: ChannelIdentity,
    *,
    authorities: Mapping[str, Identity] | None = None,
    trust: TrustPolicy,
    timeout: float = 10.0,
) -> SecureChannel:
    """Initiate a channel to the listener at the end of ``route``, to a peer ``trust``
    accepts (there is no default: see ``tether.trust.initiator_trust``)."""
    # The map itself, not a copy (an empty one too): authorities trusted later count as well.
    trusted: Mapping[str, Identity] = authorities if authorities is not None else {}
    hsk = _Handshaker(node, me, True, trusted, trust)
    address = node.next_id("sc")
    inbox_send, inbox = anyio.create_memory_object_stream[Any](4)
    decryptor = Decryptor()

    # The answers come back the way the first message goes: anything from elsewhere (a
    # stranger's forged REFUSED, say) is not the listener's and is ignored.
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
    try:
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
                    break
        try:
            peer_payload = hsk.hs.read_message(msg.payload[1:])
            peer = hsk.verify(peer_payload)
        except ChannelRefusedError as e:
            await _refuse(node, msg.return_route, f"the initiator refused: {e}")
            raise
        except CryptoError as e:
            raise ChannelRefusedError(f"handshake failed: {e}") from None
        hs3 = hsk.hs.write_message(me.payload())
        cipher = hsk.hs.into_channel_cipher()
        channel = SecureChannel(
            node, address, peer, msg.return_route, cipher, True, authorities=trusted
        )
        await node.route(
            RoutedMessage(
                msg.return_route,
                (Address.local(address + ".in"),),
                bytes([KIND_DATA, Step.HS3]) + hs3,
            )
        )
        # XX completes for the initiator when it sends message 3, but the listener still has to
        # verify it: wait for its (authenticated) acknowledgement or its refusal, so that a
        # refused channel exists on neither side.
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
                        break
        except (ChannelRefusedError, TimeoutError):
            # A refusal is unauthenticated and an ACK can be lost: if the listener did accept,
            # tell it (authenticated) that this side gave up, so no half-open channel is left.
            with anyio.move_on_after(1):
                await channel._send_wire(Step.CLOSE, cipher.seal(b"", aad=STEP_AD[Step.CLOSE]))
            cipher.erase()
            raise
    except TimeoutError:
        await node.stop_worker(address + ".in")
        raise ChannelRefusedError(f"no handshake reply within {timeout:g} s") from None
    except BaseException:
        await node.stop_worker(address + ".in")
        raise
    await node.start_worker(address, channel.encrypt, kind="secure-channel", reach="local")
    decryptor.channel = channel  # from now on the inbox decrypts
    node.remember_channel(channel)
    return channel


class HalfOpen:
    """One half-open handshake at a listener: its first reply sent, its third message awaited.
    ``done`` is set when it ends (completed, refused, timed out, or evicted for a newcomer)."""

    def __init__(self, table: HalfOpenTable, listener: Any, peer: tuple[Any, ...], source: Any):
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
        self._counts: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self._all)

    def count(self, key: Any) -> int:
        return self._counts.get(key, 0)

    def add(self, listener: Any, peer: tuple[Any, ...], source: Any) -> HalfOpen:
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

    node: Node
    address: str
    me: ChannelIdentity
    authorities: Mapping[str, Identity] = field(default_factory=dict)
    trust: TrustPolicy = trust_anyone
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
            "pending": self.node.half_open.count(("listener", self.address)),
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
        peer: tuple[Any, ...] = (msg.origin,)
        source = None
        if msg.origin.kind == "channel" and len(msg.return_route) > 1:
            peer = (msg.origin, msg.return_route[1])
        elif msg.origin.kind == "link":
            conn = self.node.tcp.connection(msg.origin.address)
            source = conn.source if conn is not None else None
        table = self.node.half_open
        if table.count(peer) >= MAX_PENDING_PER_PEER or (
            source is not None and table.count(("source", source)) >= MAX_PENDING_PER_SOURCE
        ):
            self._drop(msg, "too many half open from there")
            return None
        if len(table) >= MAX_PENDING_HANDSHAKES:
            table.evict()
            self.node.count("dropped: oldest half-open handshake, for a newcomer")
        return table.add(self, peer, source)

    def _drop(self, msg: Message, why: str) -> None:
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
                why,
                len(self.node.half_open),
                self.dropped,
            )

    def _check_policy(self, peer: Peer) -> None:
        """The node's policies for this listener (its name's and ``secure-channel-listener``'s:
        every one must allow, :func:`tether.policies.check`)."""
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
        hsk = _Handshaker(self.node, self.me, False, self.authorities, self.trust)
        try:
            hsk.hs.read_message(msg.payload[1:])
            hs2 = hsk.hs.write_message(self.me.payload())
        except CryptoError as e:
            half.release()
            self.refused += 1
            log.info("listener %s: bad first handshake message: %s", self.address, e)
            return
        address = self.node.next_id("sc")
        done = half.done
        decryptor = Decryptor()

        async def on_hs3(ctx2: WorkerContext, m3: Message) -> None:
            # Only from where the first message came (when a remote origin brought it; one a
            # local forwarder handed over is answered along its route): a stranger cannot
            # refuse (or finish) someone else's handshake.
            if done.is_set() or m3.kind != KIND_DATA:
                return
            if not msg.origin.is_local and m3.origin != msg.origin:
                return
            if m3.payload[:1] == bytes([Step.REFUSED]):
                self.refused += 1
                log.info(
                    "listener %s: %s",
                    self.address,
                    m3.payload[1:].decode("utf-8", "replace"),
                )
                done.set()
                return
            if m3.payload[:1] != bytes([Step.HS3]):
                return
            try:
                payload = hsk.hs.read_message(m3.payload[1:])
                peer = hsk.verify(payload)
                self._check_policy(peer)
                cipher = hsk.hs.into_channel_cipher()
            except ChannelRefusedError as e:
                self.refused += 1
                log.info("listener %s: refused a channel: %s", self.address, e)
                await _refuse(self.node, m3.return_route, f"the listener refused: {e}")
                done.set()
                return
            except CryptoError as e:
                self.refused += 1
                log.info("listener %s: handshake failed: %s", self.address, e)
                done.set()
                return
            channel = SecureChannel(
                self.node,
                address,
                peer,
                m3.return_route,
                cipher,
                False,
                authorities=self.authorities,
            )
            await self.node.start_worker(
                address, channel.encrypt, kind="secure-channel", reach="local"
            )
            decryptor.channel = channel  # from now on the inbox decrypts
            await channel._send_wire(Step.ACK, cipher.seal(b"", aad=STEP_AD[Step.ACK]))
            self.node.remember_channel(channel)
            self.accepted += 1
            done.set()
            log.info(
                "listener %s: secure channel %s with %s", self.address, address, peer.identifier
            )

        decryptor.handshake = on_hs3
        try:
            await self.node.start_worker(
                address + ".in", decryptor, kind="secure-channel", inline=True, raw=True
            )
        except BaseException:
            half.release()
            raise

        async def finish() -> None:
            try:
                with anyio.move_on_after(LISTENER_HANDSHAKE_TIMEOUT):
                    await done.wait()
                if decryptor.channel is None and self.node.has_worker(address + ".in"):
                    if not done.is_set():
                        self.refused += 1
                        log.debug(
                            "listener %s: no third handshake message within %g s",
                            self.address,
                            LISTENER_HANDSHAKE_TIMEOUT,
                        )
                    await self.node.stop_worker(address + ".in")
            finally:
                half.release()

        # From here on `finish` owns the handshake's count and its worker.
        self.node.task_group.start_soon(finish)
        with contextlib.suppress(TetherError):
            await self.node.route(
                RoutedMessage(
                    msg.return_route,
                    (Address.local(address + ".in"),),
                    bytes([KIND_DATA, Step.HS2]) + hs2,
                ),
                block=False,  # the listener serves everyone: it never waits on one peer
            )
