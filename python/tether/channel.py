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

Transport messages use the Rust core's explicit-nonce :class:`~tether.noise.ChannelCipher`:
replay window, rekey every 65536 messages, and a forged, replayed or truncated message changes
nothing (it is dropped and logged; the channel goes on).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from tether import noise
from tether.credential import DEFAULT_SKEW, Credential
from tether.credential import verify as verify_credential
from tether.encoding import Reader, Writer
from tether.errors import (
    CredentialError,
    CryptoError,
    EncodingError,
    HandshakeError,
    IdentityError,
    TetherError,
)
from tether.identity import (
    ATTESTATION_SIZE,
    MAX_HISTORY_SIZE,
    VERSION,
    Attestation,
    Identity,
    Purpose,
    verify_attestation,
    verify_history,
)
from tether.message import LOCAL, TCP, Address, Origin, RoutedMessage
from tether.vault import SecretBytes

if TYPE_CHECKING:
    from tether.node import Message, Node, WorkerContext

log = logging.getLogger("tether.channel")

PROTOCOL = "Noise_XX_25519_AESGCM_SHA256"
PROLOGUE = b"tether secure channel v1"
T_HANDSHAKE_PAYLOAD = 0x06
MAX_CREDENTIALS = 8
MAX_CREDENTIAL_BYTES = 8192
HANDSHAKE_TIMEOUT = 30.0
LISTENER_HANDSHAKE_TIMEOUT = 10.0
"""How long a listener keeps a half-open handshake (its first reply sent) for the third
message; a real initiator answers within a round trip."""
MAX_PENDING_HANDSHAKES = 256
"""Half-open handshakes a node keeps, all listeners together; a newcomer evicts the oldest.
Dropped first messages get no reply (no reflection)."""
MAX_PENDING_PER_PEER = 8
"""Half-open handshakes one peer (a link, or a remote link behind a relay's channel) may hold."""
MAX_PENDING_PER_SOURCE = 32
"""Half-open handshakes the links from one IP address may hold together."""
DEFAULT_IDLE_TIMEOUT = 600.0
#: Largest message a channel carries (split into fragments of FRAGMENT bytes on the wire).
MAX_MESSAGE = 16 << 20
BULK_FRAME = (256 - 4) * 1024
"""The wire size a fragment aims at: under the TCP transport's 256 KiB frame limit, with room
for the return route that grows at each hop on the way."""
MIN_FRAGMENT = 1024
#: The first byte of every DATA plaintext: this fragment starts and/or ends its message.
FIRST = 0b10
LAST = 0b01


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
_AD = {step: bytes([step]) for step in Step}
_WHOLE = bytes([FIRST | LAST])
_DATA_PREFIX = bytes([0, Step.DATA])  # KIND_DATA, then the step


class ChannelRefusedError(HandshakeError):
    """The peer (or our trust policy) refused the channel; the reason says why."""


class ChannelClosedError(TetherError):
    """The channel was closed (by either end) and carries nothing more."""


@dataclass(frozen=True, slots=True)
class ChannelIdentity:
    """What one side brings to a handshake: its identity, the Noise static key (from the vault)
    with its attestation, and its credentials."""

    identity: Identity
    static_key: SecretBytes
    attestation: Attestation
    credentials: tuple[Credential, ...] = ()

    def payload(self) -> bytes:
        w = Writer().u8(T_HANDSHAKE_PAYLOAD).u8(VERSION)
        w.var(self.identity.history, MAX_HISTORY_SIZE)
        w.fixed(self.attestation.encode(), ATTESTATION_SIZE)
        if len(self.credentials) > MAX_CREDENTIALS:
            raise EncodingError(f"at most {MAX_CREDENTIALS} credentials per handshake")
        w.u8(len(self.credentials))
        for c in self.credentials:
            w.var(c.encode(), MAX_CREDENTIAL_BYTES)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class Peer:
    """The verified other side of a channel."""

    identity: Identity
    attributes: Mapping[str, str] = field(default_factory=dict)
    credentials: tuple[Credential, ...] = ()

    @property
    def identifier(self) -> str:
        return self.identity.identifier


def parse_payload(data: bytes) -> tuple[Identity, Attestation, list[bytes]]:
    r = Reader(
        data,
        "handshake payload",
        2
        + 2
        + MAX_HISTORY_SIZE
        + ATTESTATION_SIZE
        + 1
        + MAX_CREDENTIALS * (2 + MAX_CREDENTIAL_BYTES),
    )
    r.expect(T_HANDSHAKE_PAYLOAD, "structure type")
    r.expect(VERSION, "version")
    identity = verify_history(r.var(MAX_HISTORY_SIZE, "identity history"))
    attestation = Attestation.decode(r.fixed(ATTESTATION_SIZE, "attestation"))
    count = r.u8("credential count")
    if count > MAX_CREDENTIALS:
        raise EncodingError(f"handshake payload: {count} credentials (at most {MAX_CREDENTIALS})")
    creds = [r.var(MAX_CREDENTIAL_BYTES, "credential") for _ in range(count)]
    r.end()
    return identity, attestation, creds


# --- trust policies -----------------------------------------------------------------------

TrustPolicy = Callable[[Peer], None]
"""Raises ChannelRefusedError (with the reason) to refuse a verified peer."""


def trust_anyone(peer: Peer) -> None:
    """Any authenticated identity (development)."""


def trust_identifiers(*identifiers: str) -> TrustPolicy:
    allowed = frozenset(identifiers)

    def policy(peer: Peer) -> None:
        if peer.identifier not in allowed:
            raise ChannelRefusedError(f"{peer.identifier} is not an authorized identity")

    return policy


def trust_policy(policy: Any, node: Node, resource_type: str, name: str) -> TrustPolicy:
    """Peers that ``policy`` (a :class:`~tether.policy.Policy`) allows as subjects of
    ``resource_type`` ``name`` on ``node`` (an inlet's ``--allow``, checked in the handshake:
    a peer it refuses never learns who opened the channel)."""

    def check(peer: Peer) -> None:
        if not node.peer_allows(policy, peer, resource_type, name, "connect"):
            raise ChannelRefusedError(f"{peer.identifier} is refused by the policy {policy}")

    return check


def trust_members(authorities: Mapping[str, Identity]) -> TrustPolicy:
    """The members of ``authorities`` (a valid credential from one of them: only such survive
    the handshake's verification) and those authorities themselves: what a node enrolled with
    an authority trusts by default. ``authorities`` is read at each handshake (a live map)."""

    def policy(peer: Peer) -> None:
        if peer.identifier in authorities or peer.credentials:
            return
        raise ChannelRefusedError(
            f"{peer.identifier} is no member of an authority this node trusts (it presented no "
            "valid credential from one); name it with --authorized if it is the peer you want"
        )

    return policy


def trust_credential(**required: str) -> TrustPolicy:
    """Holders of a valid credential (from a trusted authority) with these attributes."""

    def policy(peer: Peer) -> None:
        if not peer.credentials:
            raise ChannelRefusedError(
                f"{peer.identifier} presented no valid credential from a trusted authority"
            )
        for k, v in required.items():
            if peer.attributes.get(k) != v:
                raise ChannelRefusedError(f"{peer.identifier} lacks the attribute {k}={v}")

    return policy


def verify_peer(
    payload: bytes,
    remote_static: bytes,
    *,
    authorities: Mapping[str, Identity],
    trust: TrustPolicy,
    now: int,
) -> Peer:
    """Everything a handshake payload must prove, then the trust policy."""
    try:
        identity, attestation, raw_creds = parse_payload(payload)
        verify_attestation(
            attestation, identity, Purpose.SECURE_CHANNEL, at=now, public_key=remote_static
        )
    except (IdentityError, EncodingError) as e:
        raise ChannelRefusedError(f"the peer's identity does not verify: {e}") from None
    creds: list[Credential] = []
    attributes: dict[str, str] = {}
    for raw in raw_creds:
        try:
            c = verify_credential(
                raw, authorities=authorities, now=now, subject=identity.identifier
            )
        except (CredentialError, EncodingError) as e:
            log.info("ignoring a credential of %s: %s", identity.identifier, e)
            continue
        creds.append(c)
        attributes.update(c.attributes)
    peer = Peer(identity, attributes, tuple(creds))
    trust(peer)
    return peer


# --- the channel ends -----------------------------------------------------------------------


def valid_credentials(peer: Peer, node: Any, now: int | None = None) -> list[Credential]:
    """``peer``'s credentials that are still valid now: not expired, and not revoked by their
    authority (``node.revoked_credentials``)."""
    t = int(time.time()) if now is None else now
    revoked: Mapping[str, frozenset[str]] = getattr(node, "revoked_credentials", {})
    return [
        c
        for c in peer.credentials
        if c.expires_at + DEFAULT_SKEW >= t and c.id not in revoked.get(c.issuer, ())
    ]


def valid_attributes(peer: Peer, node: Any, now: int | None = None) -> dict[str, str]:
    """The attributes of ``peer``'s credentials that are still valid now."""
    out: dict[str, str] = {}
    for c in valid_credentials(peer, node, now):
        out.update(c.attributes)
    return out


def has_valid_credential(peer: Peer, node: Any, now: int | None = None) -> bool:
    """Whether ``peer`` is, now, a member of an authority ``node`` trusts (it holds a valid
    credential from it: only those survive the handshake's verification)."""
    return bool(valid_credentials(peer, node, now))


@dataclass
class SecureChannel:
    """One end of an established channel."""

    node: Node
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
    _partial: list[bytes] = field(default_factory=list)
    _partial_size: int = 0
    _next_fragment: int = 0
    _fragment: int = 0
    _frame_header: bytes | None = None
    _conn: Any = None
    _engine_id: int | None = None  # its id in the data plane (tether.engine), if there
    _engine_link: int | None = None  # the data plane's link of its first hop, if one
    _carrier: Any = None  # the TCP connection of its first hop, while it is open
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
            "attributes": dict(self.peer.attributes),
        }

    async def _send_wire(self, step: Step, body: bytes) -> None:
        from tether.node import KIND_DATA

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
        sealed = self.cipher.seal_many(parts, aad=_AD[Step.DATA])
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
            aad=_AD[Step.DATA],
        )
        await conn.send_framed(frame)
        self.sent_messages += 1
        self.last_activity = time.monotonic()

    async def _first_hop(self) -> Any:
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

    def first_hop_connection(self) -> Any:
        """The open TCP connection of the channel's first hop, if there is one (no connect)."""
        head = self.remote_route[0] if self.remote_route else None
        conn = None
        if head is not None and head.transport == TCP:
            conn = self.node.tcp.outgoing.get(head.value.decode("utf-8", errors="replace"))
        elif head is not None and head.transport == LOCAL:
            name = head.value.decode("utf-8", errors="replace")
            if not self.node.has_worker(name):
                conn = self.node.tcp.connection(name)
        return conn if conn is not None and not conn.closed.is_set() else None

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
        """The attributes of the peer's credentials that are still valid now: a credential that
        expired (and was not refreshed), or that its authority revoked (the node holds the
        authority's latest revocation list), no longer grants anything."""
        return valid_attributes(self.peer, self.node, now)

    async def present_credentials(self, credentials: Sequence[Credential]) -> None:
        """Send fresh credentials to the peer inside the channel (before the old ones expire)."""
        if len(credentials) > MAX_CREDENTIALS:
            raise EncodingError(f"at most {MAX_CREDENTIALS} credentials at once")
        w = Writer().u8(len(credentials))
        for c in credentials:
            w.var(c.encode(), MAX_CREDENTIAL_BYTES)
        await self._send_wire(
            Step.CREDENTIALS, self.cipher.seal(w.getvalue(), aad=_AD[Step.CREDENTIALS])
        )

    def _accept_credentials(self, plain: bytes) -> None:
        r = Reader(plain, "credentials", 1 + MAX_CREDENTIALS * (2 + MAX_CREDENTIAL_BYTES))
        raw = [r.var(MAX_CREDENTIAL_BYTES, "credential") for _ in range(r.u8("count"))]
        r.end()
        now = int(time.time())
        creds = list(self.peer.credentials)
        for data in raw:
            try:
                c = verify_credential(
                    data, authorities=self.authorities, now=now, subject=self.peer.identifier
                )
            except (CredentialError, EncodingError) as e:
                log.info("secure channel %s: refused a refreshed credential: %s", self.address, e)
                continue
            creds = [old for old in creds if old.issuer != c.issuer] + [c]
        attributes: dict[str, str] = {}
        for c in creds:
            attributes.update(c.attributes)
        self.peer = Peer(self.peer.identity, attributes, tuple(creds))

    def _last_activity(self) -> float:
        """When the channel last carried anything (here or in the data plane)."""
        plane = self.node.dataplane
        idle = plane.channel_idle(self) if plane is not None else None
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
        from tether.node import KIND_ERROR

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
                self._accept_credentials(self.cipher.open(body, aad=_AD[Step.CREDENTIALS]))
            except (CryptoError, EncodingError):
                self.refused += 1
            return
        if step == Step.CLOSE:
            try:
                self.cipher.open(body, aad=_AD[Step.CLOSE])
            except CryptoError:
                self.refused += 1
                return
            log.info("secure channel %s closed by the peer", self.address)
            await self.close(notify=False)
            return
        if step != Step.DATA:
            return  # a late or repeated handshake message: ignore
        try:
            plain = self.cipher.open(body, aad=_AD[Step.DATA])
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
        if not plain or plain[0] > FIRST | LAST:
            self.refused += 1
            return
        flags = plain[0]
        whole: bytes | memoryview | None
        if flags == FIRST | LAST and not self._partial:
            whole = memoryview(plain)[1:]  # a whole message in one fragment: the common case
        else:
            whole = self._reassemble(flags, plain, nonce)
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

    def _reassemble(self, flags: int, plain: bytes, nonce: int) -> bytes | None:
        """Collect fragments; the whole message once its last fragment arrived, else None."""
        if flags & FIRST:
            if self._partial:
                log.info(
                    "secure channel %s: a fragmented message lost its end; dropped", self.address
                )
            self._drop_partial()
        elif not self._partial or nonce != self._next_fragment:
            # A continuation that does not continue anything: its message lost a part (or the
            # parts were reordered). Never deliver what is left of it.
            log.info("secure channel %s: a fragmented message lost a part; dropped", self.address)
            self._drop_partial()
            return None
        self._partial.append(plain[1:])
        self._partial_size += len(plain) - 1
        self._next_fragment = nonce + 1
        if self._partial_size > MAX_MESSAGE:
            log.info("secure channel %s: message over %d bytes dropped", self.address, MAX_MESSAGE)
            self._drop_partial()
            return None
        if not flags & LAST:
            return None  # more fragments follow
        data = b"".join(self._partial)
        self._drop_partial()
        return data

    def _drop_partial(self) -> None:
        self._partial.clear()
        self._partial_size = 0

    async def close(self, notify: bool = True) -> None:
        if self.closed.is_set():
            return
        if notify:
            # Messages already accepted for the channel go out first; CLOSE follows them.
            if not await self.node.drain_worker(self.address):
                log.info("secure channel %s: closing with messages still queued", self.address)
            try:
                await self._send_wire(Step.CLOSE, self.cipher.seal(b"", aad=_AD[Step.CLOSE]))
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
        self._drop_partial()
        for address in (self.address, self.decryptor):
            if self.node.has_worker(address):
                await self.node.stop_worker(address)


class _Decryptor:
    """The ``.in`` worker of a channel end: handshake messages until the channel is
    established, then the channel's decryption — one worker, so nothing falls between."""

    def __init__(self) -> None:
        self.channel: SecureChannel | None = None
        self.handshake: Callable[[WorkerContext, Message], Any] | None = None

    async def __call__(self, ctx: WorkerContext, raw: RoutedMessage) -> None:
        """A raw inline worker: the message as it arrived, its payload not copied."""
        if not raw.payload:
            return
        if self.channel is not None:
            await self.channel.decrypt_wire(raw.payload[0], memoryview(raw.payload)[1:])
        elif self.handshake is not None:
            from tether.node import Message

            await self.handshake(ctx, Message.delivered(raw, ctx.origin))


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
    from tether.node import KIND_DATA

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
    accepts (there is no default: see ``Node.channel_trust``)."""
    from tether.node import KIND_DATA

    hsk = _Handshaker(node, me, True, authorities or {}, trust)
    address = node.next_id("sc")
    inbox_send, inbox = anyio.create_memory_object_stream[Any](4)
    decryptor = _Decryptor()

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
            node, address, peer, msg.return_route, cipher, True, authorities=authorities or {}
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
                            cipher.open(ack.payload[1:], aad=_AD[Step.ACK])
                        except CryptoError:
                            continue  # not from the peer: keep waiting
                        break
        except (ChannelRefusedError, TimeoutError):
            # A refusal is unauthenticated and an ACK can be lost: if the listener did accept,
            # tell it (authenticated) that this side gave up, so no half-open channel is left.
            with anyio.move_on_after(1):
                await channel._send_wire(Step.CLOSE, cipher.seal(b"", aad=_AD[Step.CLOSE]))
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
        """The node's policy for this listener (by name or ``secure-channel-listener``)."""
        kind = "secure-channel-listener"
        policy = self.node.policy_for(kind, self.address)
        if policy is not None and not self.node.peer_allows(
            policy, peer, kind, self.address, "connect"
        ):
            raise ChannelRefusedError(f"{peer.identifier} is refused by the policy {policy}")

    async def handle(self, ctx: WorkerContext, msg: Message) -> None:
        from tether.node import KIND_DATA

        if msg.kind != KIND_DATA or msg.payload[:1] != bytes([Step.HS1]):
            return
        half = self._admit(msg)
        if half is not None:
            await self._respond(msg, half)

    async def _respond(self, msg: Message, half: HalfOpen) -> None:
        """Answer a first handshake message, and keep the handshake (``half``, in the node's
        table) until its third message, a refusal, the timeout, or a newcomer evicts it."""
        from tether.node import KIND_DATA

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
        decryptor = _Decryptor()

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
            await channel._send_wire(Step.ACK, cipher.seal(b"", aad=_AD[Step.ACK]))
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


def ephemeral_identity(vault: Any = None, *, ttl: int = 24 * 3600) -> ChannelIdentity:
    """A fresh identity with an attested channel key, in a memory vault (tests, embedding)."""
    from tether import identity as ident
    from tether.vault import KeyType, MemoryVault

    v = vault if vault is not None else MemoryVault()
    now = int(time.time())
    identity, primary = ident.create(v, now)
    key_id = v.generate(KeyType.X25519)
    att = ident.attest(
        v, identity, primary, Purpose.SECURE_CHANNEL, v.public_key(key_id), now - 60, now + ttl
    )
    return ChannelIdentity(identity, v.noise_static_key(key_id), att)
