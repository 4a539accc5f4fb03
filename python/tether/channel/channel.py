"""Secure channels: mutually authenticated, end-to-end encrypted, over any route.

Two identities run a Noise XX handshake (``Noise_XX_25519_AESGCM_SHA256``) through any route —
a direct TCP link, several nodes, a relay, another channel — and every hop in between sees only
ciphertext. Inside the handshake each side presents, encrypted, its identity's change history,
the attestation binding its Noise static key to that identity, and its credentials; the peer
verifies all of it (the static key must be exactly the attested one, for the secure-channel
purpose, by the identity's current key) and then asks its trust policy. A refusal ends the
handshake on both sides and no channel exists.

Each end of a channel is two workers on its node (as in ``docs/secure-channels.md``):

* the **encryptor** (``sc#N``), the channel's local address: a message routed to
  ``[sc#N, rest…]`` is sealed whole (onward ``rest``, its return route and payload) and sent to
  the peer;
* the **decryptor** (``sc#N.in``), where the peer's ciphertext arrives: a message that opens is
  routed on the peer's node with the channel's encryptor pushed onto its return route, so replies
  are encrypted back.

The handshake is :mod:`tether.channel.handshake`'s (``open_channel``, ``ChannelListener``), the
identities and trust policies :mod:`tether.identity.trust`'s. Transport messages use the Rust core's
explicit-nonce :class:`~tether.core.noise.ChannelCipher`: replay window, rekey every 65536 messages,
and a forged, replayed or truncated message changes nothing (it is dropped and logged; the
channel goes on).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import anyio

from tether._core import CHANNEL_MAX_MESSAGE, FRAGMENT_FIRST, FRAGMENT_LAST, Reassembler
from tether.core import noise
from tether.core.encoding import Reader, Writer
from tether.core.errors import CryptoError, EncodingError, TetherError
from tether.core.message import (
    KIND_DATA,
    KIND_ERROR,
    TCP,
    Address,
    Handler,
    Message,
    Origin,
    RoutedMessage,
    WorkerContext,
)
from tether.identity.credential import Credential
from tether.identity.identity import Identity
from tether.identity.trust import (
    MAX_CREDENTIAL_BYTES,
    MAX_CREDENTIALS,
    Peer,
    standing,
    valid_attributes,
    with_credentials,
)
from tether.node.channel_end import ChannelEnd
from tether.node.node import BaseNode
from tether.node.transport.connection import Connection

log = logging.getLogger("tether.channel")


PROTOCOL = "Noise_XX_25519_AESGCM_SHA256"
PROLOGUE = b"tether secure channel v1"
DEFAULT_IDLE_TIMEOUT = 600.0
#: Largest message a channel carries (split into fragments of FRAGMENT bytes on the wire).
MAX_MESSAGE: int = CHANNEL_MAX_MESSAGE
BULK_FRAME = (256 - 4) * 1024
"""The wire size a fragment aims at: under the TCP transport's 256 KiB frame limit, with room
for the return route that grows at each hop on the way."""
MIN_FRAGMENT = 1024
#: The first byte of every DATA plaintext: this fragment starts and/or ends its message.
FIRST: int = FRAGMENT_FIRST
LAST: int = FRAGMENT_LAST


class Step(enum.IntEnum):
    """The first byte of every channel message."""

    HS1 = 1
    HS2 = 2
    HS3 = 3
    DATA = 4
    CLOSE = 5
    REFUSED = 6
    ACK = 7
    CREDENTIALS = 8


#: Every sealed channel message authenticates its step byte as associated data, so a step
#: rewritten on the wire (a DATA turned into a CLOSE, say) fails authentication and changes
#: nothing.
STEP_AD = {step: bytes([step]) for step in Step}
_WHOLE = bytes([FIRST | LAST])
_DATA_PREFIX = bytes([0, Step.DATA])  # KIND_DATA, then the step


class ChannelClosedError(TetherError):
    """The channel was closed (by either end) and carries nothing more."""


@dataclass
class SecureChannel:
    """One end of an established channel."""

    node: BaseNode
    address: str
    """The encryptor: route messages to ``[address, ...]`` to send them through the channel."""
    peer: Peer
    remote_route: tuple[Address, ...]
    cipher: noise.ChannelCipher
    initiator: bool
    authorities: Mapping[str, Identity] = field(default_factory=dict)
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    established_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.monotonic)
    closed: anyio.Event = field(default_factory=anyio.Event)
    refused: int = 0
    sent_messages: int = 0
    _reassembler: Reassembler = field(default_factory=Reassembler)
    _fragment: int = 0
    _frame_header: bytes | None = None
    _conn: Connection | None = None
    _close_callbacks: dict[Callable[[], None], None] = field(default_factory=dict)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (synchronously) when the channel closes."""
        self._close_callbacks[callback] = None

    def remove_on_close(self, callback: Callable[[], None]) -> None:
        self._close_callbacks.pop(callback, None)

    @property
    def decryptor(self) -> str:
        return self.address + ".in"

    def info(self) -> dict[str, object]:
        return {
            "address": self.address,
            "peer": self.peer.identifier,
            "initiator": self.initiator,
            "sent": self.sent_messages,
            "closed": self.closed.is_set(),
            "refused": self.refused,
            **self.credentials_info(),
        }

    def credentials_info(self) -> dict[str, object]:
        """What the peer's credentials are worth here now: ``attributes`` (of those that
        count), ``credentials`` (their ids) and ``ignored`` (a line for each presented one that
        does not count, with the reason)."""
        s = standing(self.peer, self.node)
        return {
            "attributes": dict(s.attributes),
            "credentials": [c.id for c in s.credentials],
            "ignored": list(s.ignored),
        }

    async def _send_wire(self, step: Step, body: bytes) -> None:
        await self.node.route(
            RoutedMessage(
                self.remote_route,
                (Address.local(self.decryptor),),
                bytes([KIND_DATA, step]) + body,
            )
        )

    async def encrypt(self, ctx: WorkerContext, msg: Message) -> None:
        """Encryptor: seal a local message and send it to the peer."""
        if self.closed.is_set():
            raise ChannelClosedError(f"secure channel {self.address} is closed")
        inner = RoutedMessage(msg.onward, msg.return_route, bytes([msg.kind]) + msg.payload)
        data = inner.encode()
        if len(data) > MAX_MESSAGE:
            await self.node.report(
                RoutedMessage((), msg.return_route, bytes([msg.kind])),
                f"message of {len(data)} bytes is too large for secure channel {self.address} "
                f"(at most {MAX_MESSAGE})",
            )
            return
        await self._seal_and_send(data)

    async def _seal_and_send(self, data: bytes) -> None:
        """Seal an encoded inner message as one or more fragments and send them (in the calling
        task: messages leave in the order their callers send them)."""
        # Bulk data: split into fragments, sealed in one batch call. Each plaintext starts with
        # a flag: FIRST and/or LAST fragment of its message.
        n = len(data)
        size = self._fragment_size()
        if n <= size:
            parts = [_WHOLE + data]
        else:
            parts = [
                bytes([(FIRST if start == 0 else 0) | (LAST if end >= n else 0)]) + data[start:end]
                for start in range(0, n, size)
                for end in (min(start + size, n),)
            ]
        sealed = self.cipher.seal_many(parts, aad=STEP_AD[Step.DATA])
        if len(sealed) == 1:
            await self._send_wire(Step.DATA, sealed[0])
        else:
            # All fragments in one go: nothing else can come between them on the wire.
            ret = (Address.local(self.decryptor),)
            await self.node.route_batch(
                [RoutedMessage(self.remote_route, ret, _DATA_PREFIX + part) for part in sealed]
            )
        self.sent_messages += 1
        self.last_activity = time.monotonic()

    async def send_parts(
        self,
        onward: tuple[Address, ...],
        return_route: tuple[Address, ...],
        head: bytes,
        body: bytes,
    ) -> None:
        """Send the message ``head + body`` (its kind byte first) to ``onward`` beyond the peer:
        the bulk path. When the channel's first hop is a TCP connection and the message fits one
        fragment, the plaintext is copied once, straight into a sealed, ready-to-send frame;
        otherwise it is fragmented like any message — still in the calling task, so a caller's
        messages always leave in the order it sent them."""
        if self.closed.is_set():
            raise ChannelClosedError(f"secure channel {self.address} is closed")
        conn = await self._first_hop()
        inner = RoutedMessage(onward, return_route, b"").encode()
        n = len(head) + len(body)
        if conn is None or len(inner) + n >= self._fragment_size():
            data = RoutedMessage(onward, return_route, head + body).encode()
            if len(data) > MAX_MESSAGE:
                raise EncodingError(
                    f"message of {len(data)} bytes is too large for secure channel "
                    f"{self.address} (at most {MAX_MESSAGE})"
                )
            await self._seal_and_send(data)
            return
        if self._frame_header is None:
            self._frame_header = RoutedMessage(
                self.remote_route[1:], (Address.local(self.decryptor),), b""
            ).encode()[:-4]
        frame = self.cipher.seal_routed_frame(
            self._frame_header,
            _DATA_PREFIX,
            [_WHOLE + inner[:-4] + n.to_bytes(4, "big") + head, body],
            aad=STEP_AD[Step.DATA],
        )
        await conn.send_framed(frame)
        self.sent_messages += 1
        self.last_activity = time.monotonic()

    async def _first_hop(self) -> Connection | None:
        """The TCP connection of the channel's first hop (None if it is not one), connecting
        if it is a TCP address with no open connection."""
        conn = self._conn
        if conn is not None and not conn.closed.is_set():
            return conn
        conn = self.first_hop_connection()
        head = self.remote_route[0] if self.remote_route else None
        if conn is None and head is not None and head.transport == TCP:
            conn = await self.node.tcp.connect(head.value)
        self._conn = conn
        return conn

    def first_hop_connection(self) -> Connection | None:
        """The open TCP connection of the channel's first hop, if there is one (no connect)."""
        return self.node.first_hop_connection(self.remote_route)

    @property
    def fragment_size(self) -> int:
        """The plaintext bytes of one fragment (a flag byte, then the message's bytes)."""
        return self._fragment_size() + 1

    def _fragment_size(self) -> int:
        if not self._fragment:
            headers = len(
                RoutedMessage(self.remote_route, (Address.local(self.decryptor),), b"").encode()
            )
            overhead = headers + 2 + noise.CHANNEL_OVERHEAD + 1
            self._fragment = max(
                MIN_FRAGMENT, min(noise.CHANNEL_MAX_PAYLOAD_LEN - 1, BULK_FRAME - overhead)
            )
        return self._fragment

    def current_attributes(self, now: int | None = None) -> dict[str, str]:
        """The attributes of the peer's credentials that count now: a credential that expired
        (and was not refreshed), or that its authority revoked (the node holds the authority's
        latest revocation list), no longer grants anything; one from an authority the node came
        to trust after the channel opened grants its attributes from then on."""
        return valid_attributes(self.peer, self.node, now)

    async def present_credentials(self, credentials: Sequence[Credential]) -> None:
        """Send fresh credentials to the peer inside the channel (before the old ones expire)."""
        if len(credentials) > MAX_CREDENTIALS:
            raise EncodingError(f"at most {MAX_CREDENTIALS} credentials at once")
        w = Writer().u8(len(credentials))
        for c in credentials:
            w.var(c.encode(), MAX_CREDENTIAL_BYTES)
        await self._send_wire(
            Step.CREDENTIALS, self.cipher.seal(w.getvalue(), aad=STEP_AD[Step.CREDENTIALS])
        )

    def _accept_credentials(self, plain: bytes) -> None:
        """The peer presents credentials again (refreshed, or new since it enrolled): they
        replace those it presented from the same issuers; each is judged at every decision
        (:func:`~tether.identity.trust.standing`), like those of the handshake."""
        r = Reader(plain, "credentials", 1 + MAX_CREDENTIALS * (2 + MAX_CREDENTIAL_BYTES))
        raw = [r.var(MAX_CREDENTIAL_BYTES, "credential") for _ in range(r.u8("count"))]
        r.end()
        presented: list[Credential] = []
        for data in raw:
            try:
                presented.append(Credential.decode(data))
            except EncodingError as e:
                log.info("secure channel %s: a presented credential: %s", self.address, e)
        peer = self.peer
        if peer.authorities is None:
            peer = replace(peer, authorities=self.authorities)
        self.peer = with_credentials(peer, presented, int(time.time()))

    def _last_activity(self) -> float:
        """When the channel last carried anything (here or in the data plane)."""
        idle = self.node.data_plane.channel_idle(self)
        if idle is None:
            return self.last_activity
        return max(self.last_activity, time.monotonic() - idle)

    async def watch_idle(self) -> None:
        """Close the channel after ``idle_timeout`` seconds without traffic either way."""
        while not self.closed.is_set():
            remaining = self._last_activity() + self.idle_timeout - time.monotonic()
            if remaining <= 0:
                log.info(
                    "secure channel %s idle for %g s: closing", self.address, self.idle_timeout
                )
                await self.close()
                return
            with anyio.move_on_after(min(remaining, 1.0)):  # re-read idle_timeout each second
                await self.closed.wait()

    async def decrypt(self, ctx: WorkerContext, msg: Message) -> None:
        """Decryptor: open the peer's ciphertext and route the inner message here."""
        await self.decrypt_wire(msg.kind, msg.payload)

    async def decrypt_wire(self, kind: int, data: bytes | memoryview) -> None:
        """:meth:`decrypt` for a payload as it arrived (``data`` after the kind byte; a
        memoryview is read in place)."""
        if kind == KIND_ERROR:
            # A hop reports that the path to the peer failed. Reports are not authenticated
            # (anyone who can reach this node could send one), so it does not close the channel:
            # a closed first-hop connection does (Node.connection_closed), as do the idle timeout
            # and the relay's pings.
            log.info(
                "secure channel %s: a hop reported the path broken: %s",
                self.address,
                bytes(data[:200]).decode("utf-8", "replace"),
            )
            return
        if not data:
            return
        step, body = data[0], memoryview(data)[1:]  # no copy: Rust reads it
        if step == Step.CREDENTIALS:
            try:
                self._accept_credentials(self.cipher.open(body, aad=STEP_AD[Step.CREDENTIALS]))
            except (CryptoError, EncodingError):
                self.refused += 1
            return
        if step == Step.CLOSE:
            try:
                self.cipher.open(body, aad=STEP_AD[Step.CLOSE])
            except CryptoError:
                self.refused += 1
                return
            log.info("secure channel %s closed by the peer", self.address)
            await self.close(notify=False)
            return
        if step != Step.DATA:
            return  # a late or repeated handshake message: ignore
        try:
            plain = self.cipher.open(body, aad=STEP_AD[Step.DATA])
        except CryptoError as e:
            self.refused += 1
            log.info("secure channel %s refused a message: %s", self.address, type(e).__name__)
            return
        await self.deliver_plain(plain, int.from_bytes(body[:8], "big"))

    async def deliver_plain(self, plain: bytes, nonce: int) -> None:
        """An opened DATA plaintext (its flag byte first) with its nonce: join fragments and
        route the inner message. (The data plane hands over the continuations of a message
        whose start arrived here.)"""
        self.last_activity = time.monotonic()
        whole, note, refused = self._reassembler.push(plain, nonce)
        if note is not None:
            log.info("secure channel %s: %s", self.address, note)
        if refused:
            self.refused += 1
        if whole is None:
            return
        try:
            inner = RoutedMessage.decode(whole)
        except TetherError as e:
            self.refused += 1
            log.info("secure channel %s: malformed inner message: %s", self.address, e)
            return
        await self._route_inner(inner.onward, inner.return_route, inner.payload)

    async def deliver_inner(
        self,
        onward: Sequence[tuple[int, bytes]],
        return_route: Sequence[tuple[int, bytes]],
        payload: bytes,
    ) -> None:
        """An inner message the data plane opened (as its ``(onward, return_route, payload)``
        tuples)."""
        if self.closed.is_set():
            return
        self.last_activity = time.monotonic()
        await self._route_inner(
            tuple(Address(t, v) for t, v in onward),
            tuple(Address(t, v) for t, v in return_route),
            payload,
        )

    async def _route_inner(
        self, onward: Sequence[Address], return_route: Sequence[Address], payload: bytes
    ) -> None:
        """Route a message that came out of the channel, with the channel pushed onto its
        return route (so replies are encrypted back)."""
        await self.node.route(
            RoutedMessage(tuple(onward), (Address.local(self.address), *return_route), payload),
            Origin.channel(self.address),
        )

    async def close(self, notify: bool = True) -> None:
        if self.closed.is_set():
            return
        if notify:
            # Messages already accepted for the channel go out first; CLOSE follows them.
            if not await self.node.drain_worker(self.address):
                log.info("secure channel %s: closing with messages still queued", self.address)
            try:
                await self._send_wire(Step.CLOSE, self.cipher.seal(b"", aad=STEP_AD[Step.CLOSE]))
            except TetherError as e:
                log.info("could not tell the peer that %s closed: %s", self.address, e)
        self.closed.set()
        self.cipher.erase()  # keys dropped now, not whenever this object is collected
        callbacks, self._close_callbacks = list(self._close_callbacks), {}
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("secure channel %s: a close callback failed", self.address)
        self.node.forget_channel(self)
        self._reassembler.clear()
        for address in (self.address, self.decryptor):
            if self.node.has_worker(address):
                await self.node.stop_worker(address)


class Decryptor:
    """The ``.in`` worker of a channel end: handshake messages until the channel is
    established, then the channel's decryption — one worker, so nothing falls between."""

    def __init__(self) -> None:
        self.channel: SecureChannel | None = None
        self.handshake: Handler | None = None

    async def __call__(self, ctx: WorkerContext, raw: RoutedMessage) -> None:
        """A raw inline worker: the message as it arrived, its payload not copied."""
        if not raw.payload:
            return
        if self.channel is not None:
            await self.channel.decrypt_wire(raw.payload[0], memoryview(raw.payload)[1:])
        elif self.handshake is not None:
            await self.handshake(ctx, Message.delivered(raw, ctx.origin))


# --- a node's channels, as secure channels ----------------------------------------------------


def secure_channel(end: ChannelEnd | None) -> SecureChannel | None:
    """A channel end the node keeps, as the :class:`SecureChannel` it is (None for None)."""
    return end if isinstance(end, SecureChannel) else None


def origin_channel(node: BaseNode, origin: Origin) -> SecureChannel | None:
    """The open secure channel a message came out of (None: it came through none)."""
    return secure_channel(node.origin_channel(origin))


def arrival_channel(node: BaseNode, return_route: Sequence[Address]) -> SecureChannel | None:
    """The open secure channel a message came through (the head of its return route), if
    any."""
    return secure_channel(node.arrival_channel(return_route))


def open_channels(node: BaseNode) -> dict[str, SecureChannel]:
    """The node's secure channels, by their local address."""
    return {address: c for address, c in node.channels.items() if isinstance(c, SecureChannel)}
