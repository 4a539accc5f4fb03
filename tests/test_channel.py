"""Secure channels between nodes over loopback TCP (``tether.channel``, ``tether.node``).

* Channels over a direct TCP link, across a middle node (a -> m -> b), and inside another
  channel (route strings with two ``/secure/`` segments, and explicit ``create_secure_channel``
  calls); both ends know the other's identifier.
* A middle node that records every message it forwards never sees a plaintext marker sent
  through a channel (request or reply), and does see it without one (control).
* Refusals, on either side of the handshake: untrusted identifiers, a wrong attested key, a
  credential-signing key offered as the channel key, an expired or superseded attestation, a
  history that does not verify, and ``trust_credential(role=...)`` with missing, untrusted,
  expired, misdirected or wrong credentials. Each is a ChannelRefusedError for the initiator, no
  channel on either node, a counted refusal on the listener, and the nodes go on working.
* Interop: the ``noiseprotocol`` package drives the initiator side over a raw TCP connection
  speaking the node protocol, against a real node's listener, then sends an encrypted request
  to ``echo`` and decrypts the reply; and the reverse roles in memory.
* An active attacker on the wire (a framing-aware TCP proxy) flips bits in, truncates,
  duplicates, replays, reorders and drops frames, in the handshake (HS1-3 and the ACK) and
  after it: the handshake fails cleanly (no channel on either node) or the channel works; a
  channel delivers only genuine payloads, each once, in wire order, or fails visibly on both
  ends. A lost first fragment never lets the rest of a message be delivered as a message; a
  third party cannot close a channel; a rewritten step byte is a forgery like any other.
* A Hypothesis state machine: two channel ends (the real ``SecureChannel`` code over a capturing
  node) and a hostile wire (deliver in or out of order, drop, duplicate, replay, bit flips,
  truncation, jumps to rekey boundaries with the smallest rekey interval, close), against an
  exact model of what must be delivered.
* Close from either end: both learn it, and the closed channel fails visibly.

Each test is a plain function running its scenario with ``anyio.run`` (trio). Waits are bounded
and short; nothing asserts on speed. The initiating node ``a`` trusts any identity, explicitly
(``trust=trust_anyone``): these tests are about the handshake and the transport; who an initiator
expects by default is ``tests/test_attack_default_trust.py``'s subject.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskGroup
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from noise.connection import Keypair, NoiseConnection

from tether.api import Node
from tether.channel.channel import (
    MAX_MESSAGE,
    PROLOGUE,
    PROTOCOL,
    ChannelClosedError,
    SecureChannel,
    Step,
)
from tether.core import noise
from tether.core.message import (
    KIND_DATA,
    KIND_ERROR,
    LOCAL_ORIGIN,
    TCP,
    Address,
    Message,
    Origin,
    RoutedMessage,
    WorkerContext,
)
from tether.identity import identity as ident
from tether.identity.credential import Credential, issue
from tether.identity.identity import Attestation, Identity, Purpose
from tether.identity.trust import (
    ChannelIdentity,
    ChannelRefusedError,
    Peer,
    TrustPolicy,
    ephemeral_identity,
    trust_anyone,
    trust_credential,
    trust_identifiers,
    verify_peer,
)
from tether.identity.vault import KeyType, MemoryVault, SecretBytes
from tether.node.node import ReplyTimeoutError, UnreachableError
from trio_run import run

HOST = "127.0.0.1"
SENTINEL = b"sentinel: everything before me was handled"


def at(port: int, rest: str = "") -> str:
    return f"/ip4/{HOST}/tcp/{port}{rest}"


def tcp(port: int) -> Address:
    return Address(TCP, f"{HOST}:{port}".encode())


def through(channel: SecureChannel, *rest: str) -> list[Address]:
    """A route into ``channel`` (its encryptor), then the workers ``rest`` on the far side."""
    return [Address.local(channel.address), *(Address.local(r) for r in rest)]


def now() -> int:
    return int(time.time())


async def eventually(
    condition: Callable[[], bool], what: str | Callable[[], str], within: float = 5.0
) -> None:
    """Wait (bounded) until ``condition()`` holds; fail with ``what`` otherwise."""
    with anyio.move_on_after(within):
        while not condition():
            await anyio.sleep(0.01)
    assert condition(), f"not within {within:g} s: {what() if callable(what) else what}"


def channel_workers(node: Node) -> list[str]:
    return [str(w["address"]) for w in node.workers() if w["kind"] == "secure-channel"]


async def assert_no_channel(*nodes: Node) -> None:
    """No channel on any of ``nodes``, and (within a bounded wait) no channel workers left."""
    for node in nodes:
        assert node.channels == {}, f"{node.name} holds channels {list(node.channels)}"
    await eventually(
        lambda: not any(channel_workers(n) for n in nodes),
        lambda: "channel workers left: " + repr({n.name: channel_workers(n) for n in nodes}),
    )
    for node in nodes:
        assert node.channels == {}, f"{node.name} holds channels {list(node.channels)}"


def only_channel(node: Node) -> SecureChannel:
    (channel,) = node.channels.values()
    assert isinstance(channel, SecureChannel)
    return channel


def recording(node: Node) -> list[bytes]:
    """Record every message ``node`` routes (delivers locally or forwards), fully encoded."""
    seen: list[bytes] = []
    original = node.route

    async def route(msg: RoutedMessage, origin: Origin = LOCAL_ORIGIN, **kw: Any) -> None:
        seen.append(msg.encode())
        await original(msg, origin, **kw)

    node.route = route  # type: ignore[method-assign]
    return seen


class Sink:
    """A worker that records what it receives; a SENTINEL is answered instead (so its reply
    means every message before it has been handled)."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    async def __call__(self, ctx: WorkerContext, msg: Message) -> None:
        if msg.payload == SENTINEL:
            await ctx.reply(msg, SENTINEL)
        else:
            self.got.append(msg.payload)


# --- identities, authorities, credentials ------------------------------------------------------


@dataclass
class Authority:
    """An identity with an attested credential-signing key, in a memory vault."""

    vault: MemoryVault
    identity: Identity
    key_id: str
    attestation: Attestation

    @classmethod
    def create(cls) -> Authority:
        v = MemoryVault()
        t = now() - 3 * 3600  # old enough to have signed the "expired" credentials below
        identity, primary = ident.create(v, t)
        key_id = v.generate(KeyType.ED25519)
        att = ident.attest(
            v, identity, primary, Purpose.CREDENTIAL_SIGNING, v.public_key(key_id), t, now() + 3600
        )
        return cls(v, identity, key_id, att)

    @property
    def trusted(self) -> dict[str, Identity]:
        return {self.identity.identifier: self.identity}

    def issue(
        self,
        subject: ChannelIdentity,
        attributes: Mapping[str, str],
        *,
        created_at: int | None = None,
        ttl: int = 3600,
    ) -> Credential:
        return issue(
            self.vault,
            self.key_id,
            self.attestation,
            subject.identity.identifier,
            attributes,
            now=now() if created_at is None else created_at,
            ttl=ttl,
        )


def holding(me: ChannelIdentity, *credentials: Credential) -> ChannelIdentity:
    return dataclasses.replace(me, credentials=tuple(credentials))


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def bad_identity(kind: str) -> ChannelIdentity:
    """A ChannelIdentity that must not verify, for the reason ``kind``."""
    v = MemoryVault()
    t = now()
    identity, primary = ident.create(v, t - 600)
    key_id = v.generate(KeyType.X25519)
    static = v.noise_static_key(key_id)
    attested = v.public_key(key_id)
    purpose = Purpose.SECURE_CHANNEL
    created, expires = t - 60, t + 3600
    if kind == "wrong-attested-key":
        attested = v.public_key(v.generate(KeyType.X25519))
    elif kind == "credential-signing-key":
        purpose = Purpose.CREDENTIAL_SIGNING
    elif kind == "expired-attestation":
        created, expires = t - 7200, t - 3600
    att = ident.attest(v, identity, primary, purpose, attested, created, expires)
    if kind == "broken-history":  # the self-signature of the only change no longer verifies
        identity = Identity(identity.identifier, identity.changes, flip_last_byte(identity.history))
    elif kind == "superseded-attestation":  # attested, then the identity rotated its key
        identity, _ = ident.rotate(v, identity, primary, t)
    elif kind == "someone-elses-attestation":
        identity, _ = ident.create(v, t - 600)
    return ChannelIdentity(identity, static, att)


@dataclass
class RefusalCase:
    bad: ChannelIdentity
    """Refused by the verifying side."""
    good: ChannelIdentity
    """Accepted by the same verifying side (the node goes on working)."""
    reason: str
    """A fragment of the refusal's message."""
    trust: TrustPolicy = trust_anyone
    authorities: dict[str, Identity] = field(default_factory=dict)


def refusal_case(name: str) -> RefusalCase:
    if name == "untrusted-identifier":
        good = ephemeral_identity()
        return RefusalCase(
            ephemeral_identity(),
            good,
            "is not an authorized identity",
            trust_identifiers(good.identity.identifier),
        )
    reasons = {
        "wrong-attested-key": "attestation is for a different key",
        "credential-signing-key": "attested for CREDENTIAL_SIGNING, not SECURE_CHANNEL",
        "expired-attestation": "the attestation expired",
        "broken-history": "is not signed by its own key",
        "superseded-attestation": "signed by a superseded key",
        "someone-elses-attestation": "the attestation is for",
    }
    if name in reasons:
        return RefusalCase(bad_identity(name), ephemeral_identity(), reasons[name])
    authority = Authority.create()
    good = ephemeral_identity()
    good = holding(good, authority.issue(good, {"role": "db-client"}))
    bad = ephemeral_identity()
    creds: list[Credential] = []
    reason = "presented no valid credential from a trusted authority"
    if name == "credential-untrusted-authority":
        creds = [Authority.create().issue(bad, {"role": "db-client"})]
    elif name == "credential-expired":
        creds = [authority.issue(bad, {"role": "db-client"}, created_at=now() - 7200, ttl=3600)]
    elif name == "credential-for-another-subject":
        creds = [authority.issue(ephemeral_identity(), {"role": "db-client"})]
    elif name == "credential-wrong-attribute":
        creds = [authority.issue(bad, {"role": "web-client"})]
        reason = "lacks the attribute role=db-client"
    else:
        assert name == "credential-missing", name
    return RefusalCase(
        holding(bad, *creds),
        good,
        reason,
        trust_credential(role="db-client"),
        authority.trusted,
    )


# --- channels over direct links, across nodes, inside channels ---------------------------------


def test_channel_over_a_direct_tcp_link() -> None:
    ia, ib = ephemeral_identity(), ephemeral_identity()

    async def main() -> None:
        async with Node("a", trust=trust_anyone, identity=ia) as a, Node("b", identity=ib) as b:
            port = (await b.listen_tcp(HOST, 0)).port
            ch = await a.create_secure_channel(at(port, "/service/api"), timeout=5)
            await eventually(lambda: len(b.channels) == 1, "b holds its end")
            far = only_channel(b)
            assert ch.peer.identifier == ib.identity.identifier
            assert far.peer.identifier == ia.identity.identifier
            assert ch.initiator
            assert not far.initiator
            assert ch.cipher.handshake_hash == far.cipher.handshake_hash
            assert b.channel_listeners["api"].accepted == 1

            # both directions: a -> b's echo, and b -> a's echo through b's end
            assert await a.request(through(ch, "echo"), b"a to b", timeout=5) == b"a to b"
            assert await b.request(through(far, "echo"), b"b to a", timeout=5) == b"b to a"
            big = os.urandom(200_000)  # several fragments
            assert await a.request(through(ch, "echo"), big, timeout=5) == big
            with pytest.raises(UnreachableError, match="too large"):
                await a.request(through(ch, "echo"), bytes(MAX_MESSAGE), timeout=5)

            # a route string to the same listener reuses the channel opened above
            route = at(port, "/secure/api/service/echo")
            assert await a.request(route, b"by route", timeout=5) == b"by route"
            assert await a.request(route, b"again", timeout=5) == b"again"
            assert list(a.channels.values()) == [ch]
            assert len(b.channels) == 1
            for c in a.channels.values():
                assert c.peer.identifier == ib.identity.identifier

    run(main)


def test_channel_across_a_middle_node() -> None:
    ia, ib = ephemeral_identity(), ephemeral_identity()

    async def main() -> None:
        async with (
            Node("a", trust=trust_anyone, identity=ia) as a,
            Node("m", transit=["*"]) as m,
            Node("b", identity=ib) as b,
        ):
            pm = (await m.listen_tcp(HOST, 0)).port
            pb = (await b.listen_tcp(HOST, 0)).port
            ch = await a.create_secure_channel(at(pm) + at(pb, "/service/api"), timeout=5)
            await eventually(lambda: len(b.channels) == 1, "b holds its end")
            far = only_channel(b)
            assert ch.peer.identifier == ib.identity.identifier
            assert far.peer.identifier == ia.identity.identifier
            assert m.channels == {}
            # the way to b's end: a's link to m, m's link to b, then b's decryptor
            assert [h.value.split(b"#")[0] for h in ch.remote_route] == [b"tcp", b"tcp", b"sc"]
            assert await a.request(through(ch, "echo"), b"via m", timeout=5) == b"via m"
            assert await b.request(through(far, "echo"), b"back via m", timeout=5) == b"back via m"
            route = at(pm) + at(pb, "/secure/api/service/echo")
            assert await a.request(route, b"by route", timeout=5) == b"by route"
            assert m.channels == {}

    run(main)


def test_channel_inside_a_channel_by_route_string() -> None:
    ia, im, ib = ephemeral_identity(), ephemeral_identity(), ephemeral_identity()
    marker = b"NESTED-MARKER-" + os.urandom(8).hex().encode()

    async def main() -> None:
        async with (
            Node("a", trust=trust_anyone, identity=ia) as a,
            Node("m", identity=im, transit=["*"]) as m,
            Node("b", identity=ib) as b,
        ):
            pm = (await m.listen_tcp(HOST, 0)).port
            pb = (await b.listen_tcp(HOST, 0)).port
            seen = recording(m)
            route = at(pm, "/secure/api") + at(pb, "/secure/api/service/echo")
            assert await a.request(route, marker, timeout=5) == marker
            assert await a.request(route, b"reused", timeout=5) == b"reused"

            assert len(a.channels) == 2  # outer (to m) and inner (to b), both reused
            outer = next(
                c for c in a.channels.values() if c.peer.identifier == im.identity.identifier
            )
            inner = next(
                c for c in a.channels.values() if c.peer.identifier == ib.identity.identifier
            )
            assert inner.remote_route[0] == Address.local(outer.address)  # inner runs in outer
            assert only_channel(m).peer.identifier == ia.identity.identifier
            assert only_channel(b).peer.identifier == ia.identity.identifier
            # m is an end of the outer channel, so it decrypts it; what it finds inside is the
            # inner channel's ciphertext, never the marker
            assert seen
            assert not any(marker in s for s in seen)

    run(main)


def test_channel_inside_a_channel_by_explicit_calls() -> None:
    ia, im, ib = ephemeral_identity(), ephemeral_identity(), ephemeral_identity()

    async def main() -> None:
        async with (
            Node("a", trust=trust_anyone, identity=ia) as a,
            Node("m", identity=im, transit=["*"]) as m,
            Node("b", identity=ib, transit=["*"]) as b,  # the third level goes back out to m
        ):
            pm = (await m.listen_tcp(HOST, 0)).port
            pb = (await b.listen_tcp(HOST, 0)).port
            outer = await a.create_secure_channel(at(pm, "/service/api"), timeout=5)
            inner = await a.create_secure_channel(
                [Address.local(outer.address), tcp(pb), Address.local("api")], timeout=5
            )
            assert outer.peer.identifier == im.identity.identifier
            assert inner.peer.identifier == ib.identity.identifier
            assert inner.remote_route[0] == Address.local(outer.address)
            await eventually(lambda: len(b.channels) == 1, "b holds the inner channel's end")
            far = only_channel(b)
            assert far.peer.identifier == ia.identity.identifier
            assert only_channel(m).peer.identifier == ia.identity.identifier

            assert await a.request(through(inner, "echo"), b"inner", timeout=5) == b"inner"
            assert await a.request(through(outer, "echo"), b"outer", timeout=5) == b"outer"
            assert await b.request(through(far, "echo"), b"b to a", timeout=5) == b"b to a"
            # a third level: inside the inner channel, back out to m's listener
            third = await a.create_secure_channel(
                [*through(inner), tcp(pm), Address.local("api")], timeout=5
            )
            assert third.peer.identifier == im.identity.identifier
            assert await a.request(through(third, "echo"), b"third", timeout=5) == b"third"

    run(main)


# --- what a middle node sees -------------------------------------------------------------------


def test_a_middle_node_sees_no_plaintext() -> None:
    ia, ib = ephemeral_identity(), ephemeral_identity()
    request_marker = b"REQUEST-MARKER-" + os.urandom(8).hex().encode()
    reply_marker = b"REPLY-MARKER-" + os.urandom(8).hex().encode()

    async def answer(ctx: WorkerContext, msg: Message) -> None:
        assert msg.payload == request_marker
        await ctx.reply(msg, reply_marker)

    async def main() -> None:
        async with (
            Node("a", trust=trust_anyone, identity=ia) as a,
            Node("m", transit=["*"]) as m,
            Node("b", identity=ib) as b,
        ):
            pm = (await m.listen_tcp(HOST, 0)).port
            pb = (await b.listen_tcp(HOST, 0)).port
            await b.start_worker("answer", answer)
            seen = recording(m)

            secure = at(pm) + at(pb, "/secure/api/service/answer")
            assert await a.request(secure, request_marker, timeout=5) == reply_marker
            assert await a.request(secure, request_marker, timeout=5) == reply_marker
            assert len(seen) >= 7  # three handshake messages, two requests, two replies
            assert not any(request_marker in s for s in seen)
            assert not any(reply_marker in s for s in seen)

            # control: the same exchange without the channel is in the clear at m
            seen.clear()
            plain = at(pm) + at(pb, "/service/answer")
            assert await a.request(plain, request_marker, timeout=5) == reply_marker
            assert any(request_marker in s for s in seen)
            assert any(reply_marker in s for s in seen)

    run(main)


# --- refusals ----------------------------------------------------------------------------------

REFUSALS = [
    "untrusted-identifier",
    "wrong-attested-key",
    "credential-signing-key",
    "expired-attestation",
    "broken-history",
    "superseded-attestation",
    "someone-elses-attestation",
    "credential-missing",
    "credential-untrusted-authority",
    "credential-expired",
    "credential-for-another-subject",
    "credential-wrong-attribute",
]


@pytest.mark.parametrize("case_name", REFUSALS)
@pytest.mark.parametrize(
    "verifier",
    ["listener", "initiator"],
    ids=["listener-refuses-initiator", "initiator-refuses-listener"],
)
def test_refusal(case_name: str, verifier: str) -> None:
    case = refusal_case(case_name)

    async def main() -> None:
        async with (
            Node("a", trust=trust_anyone, identity=ephemeral_identity()) as a,
            Node("b", identity=ephemeral_identity()) as b,
        ):
            port = (await b.listen_tcp(HOST, 0)).port
            if verifier == "listener":
                guarded = await b.create_secure_channel_listener(
                    "guarded", trust=case.trust, authorities=case.authorities
                )
                refused_route = good_route = at(port, "/service/guarded")
                refused_opts: dict[str, Any] = {"identity": case.bad}
                good_opts: dict[str, Any] = {"identity": case.good}
            else:
                guarded = await b.create_secure_channel_listener("bad", identity=case.bad)
                await b.create_secure_channel_listener("good", identity=case.good)
                refused_route = at(port, "/service/bad")
                good_route = at(port, "/service/good")
                refused_opts = good_opts = {"trust": case.trust, "authorities": case.authorities}

            with pytest.raises(ChannelRefusedError, match=re.escape(case.reason)):
                await a.create_secure_channel(refused_route, timeout=5, **refused_opts)
            await eventually(lambda: guarded.refused == 1, "the listener counted the refusal")
            assert guarded.accepted == 0
            await assert_no_channel(a, b)

            # the nodes keep working: plain requests, and the same verifier accepts a good peer
            assert await a.request(at(port, "/service/echo"), b"plain", timeout=5) == b"plain"
            ch = await a.create_secure_channel(good_route, timeout=5, **good_opts)
            assert ch.peer.identifier == (
                b.channel_listeners["good"].me.identity.identifier
                if verifier == "initiator"
                else b.identity.identity.identifier
            )
            await eventually(lambda: len(b.channels) == 1, "b holds the good channel's end")
            initiator = case.good if verifier == "listener" else a.identity
            assert only_channel(b).peer.identifier == initiator.identity.identifier
            assert await a.request(through(ch, "echo"), b"secure", timeout=5) == b"secure"
            assert guarded.refused == 1

    run(main)


@pytest.mark.parametrize(
    "verifier",
    ["listener", "initiator"],
    ids=["listener-checks-initiator", "initiator-checks-listener"],
)
def test_valid_credential_is_accepted(verifier: str) -> None:
    authority = Authority.create()
    holder = ephemeral_identity()
    holder = holding(holder, authority.issue(holder, {"role": "db-client", "team": "storage"}))
    policy = trust_credential(role="db-client")

    async def main() -> None:
        async with (
            Node("a", trust=trust_anyone, identity=ephemeral_identity()) as a,
            Node("b", identity=ephemeral_identity()) as b,
        ):
            port = (await b.listen_tcp(HOST, 0)).port
            if verifier == "listener":
                listener = await b.create_secure_channel_listener(
                    "db", trust=policy, authorities=authority.trusted
                )
                ch = await a.create_secure_channel(
                    at(port, "/service/db"), identity=holder, timeout=5
                )
                await eventually(lambda: len(b.channels) == 1, "b holds its end")
                verified = only_channel(b).peer
            else:
                listener = await b.create_secure_channel_listener("db", identity=holder)
                ch = await a.create_secure_channel(
                    at(port, "/service/db"),
                    trust=policy,
                    authorities=authority.trusted,
                    timeout=5,
                )
                verified = ch.peer
            assert verified.identifier == holder.identity.identifier
            assert dict(verified.attributes) == {"role": "db-client", "team": "storage"}
            assert [c.issuer for c in verified.credentials] == [authority.identity.identifier]
            assert listener.accepted == 1
            assert listener.refused == 0
            assert await a.request(through(ch, "echo"), b"query", timeout=5) == b"query"

    run(main)


# --- interop with an independent Noise implementation ------------------------------------------


class RawLink:
    """A hand-written node-protocol client: 4-byte big-endian length frames, the hello frame,
    then routed messages."""

    HELLO = b"tether\0\x01"

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> RawLink:
        link = cls(await anyio.connect_tcp(HOST, port))
        await link.send_frame(cls.HELLO)
        assert await link.frame() == cls.HELLO
        return link

    async def send_frame(self, data: bytes) -> None:
        await self.stream.send(len(data).to_bytes(4, "big") + data)

    async def frame(self, within: float = 5.0) -> bytes:
        with anyio.fail_after(within):
            while True:
                if len(self.buffer) >= 4:
                    n = int.from_bytes(self.buffer[:4], "big")
                    if len(self.buffer) >= 4 + n:
                        data, self.buffer = self.buffer[4 : 4 + n], self.buffer[4 + n :]
                        return data
                self.buffer += await self.stream.receive()

    async def send(self, msg: RoutedMessage) -> None:
        await self.send_frame(msg.encode())

    async def receive(self) -> RoutedMessage:
        while True:
            data = await self.frame()
            if data:  # empty frames are keepalives
                return RoutedMessage.decode(data)


def their_initiator(static_private: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL.encode())
    conn.set_as_initiator()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    conn.set_prologue(PROLOGUE)
    conn.start_handshake()
    return conn


def outside_identity() -> tuple[ChannelIdentity, bytes]:
    """An identity whose channel key was made outside tether (``os.urandom``)."""
    v = MemoryVault()
    t = now()
    identity, primary = ident.create(v, t)
    private = os.urandom(32)
    att = ident.attest(
        v, identity, primary, Purpose.SECURE_CHANNEL, noise.public_key(private), t - 60, t + 3600
    )
    return ChannelIdentity(identity, SecretBytes(private), att), private


def test_noiseprotocol_initiator_against_a_node_listener() -> None:
    ib = ephemeral_identity()
    me, private = outside_identity()
    x = Address.local("x")

    def data_message(conn: NoiseConnection, nonce: int, inner: RoutedMessage) -> bytes:
        """A DATA channel message: 8-byte nonce, then AES-GCM (Noise nonce layout, the step byte
        as associated data) over the fragment flags (0b11: the first and last, here the only,
        fragment) and the inner message."""
        cs = conn.noise_protocol.cipher_state_encrypt
        cs.set_nonce(nonce)
        sealed = cs.encrypt_with_ad(bytes([Step.DATA]), b"\x03" + inner.encode())
        return bytes([KIND_DATA, Step.DATA]) + nonce.to_bytes(8, "big") + sealed

    def open_channel_message(
        conn: NoiseConnection, msg: RoutedMessage, step: Step
    ) -> tuple[int, bytes]:
        assert msg.onward == (x,)
        assert msg.payload[:2] == bytes([KIND_DATA, step])
        nonce = int.from_bytes(msg.payload[2:10], "big")
        cs = conn.noise_protocol.cipher_state_decrypt
        cs.set_nonce(nonce)
        return nonce, bytes(cs.decrypt_with_ad(bytes([step]), msg.payload[10:]))

    def open_reply(conn: NoiseConnection, reply: RoutedMessage) -> tuple[int, RoutedMessage]:
        nonce, plain = open_channel_message(conn, reply, Step.DATA)
        assert plain[:1] == b"\x03"  # a single fragment: the first and the last
        return nonce, RoutedMessage.decode(plain[1:])

    async def main() -> None:
        async with Node("b", identity=ib) as b:
            port = (await b.listen_tcp(HOST, 0)).port
            link = await RawLink.connect(port)
            conn = their_initiator(private)

            await link.send(
                RoutedMessage(
                    (Address.local("api"),),
                    (x,),
                    bytes([KIND_DATA, Step.HS1]) + conn.write_message(b""),
                )
            )
            hs2 = await link.receive()
            assert hs2.onward == (x,)
            assert hs2.payload[:2] == bytes([KIND_DATA, Step.HS2])
            their_payload = conn.read_message(hs2.payload[2:])
            remote_static = conn.noise_protocol.handshake_state.rs.public_bytes
            assert remote_static == ib.attestation.public_key
            peer = verify_peer(
                bytes(their_payload),
                remote_static,
                authorities={},
                trust=trust_identifiers(ib.identity.identifier),
                now=now(),
            )
            assert peer.identifier == ib.identity.identifier

            decryptor = hs2.return_route  # the listener's new channel end
            await link.send(
                RoutedMessage(
                    decryptor, (x,), bytes([KIND_DATA, Step.HS3]) + conn.write_message(me.payload())
                )
            )
            assert conn.handshake_finished
            # the listener acknowledges, sealed with the first nonce of its direction
            assert open_channel_message(conn, await link.receive(), Step.ACK) == (0, b"")
            await eventually(lambda: len(b.channels) == 1, "the node accepted the channel")
            far = only_channel(b)
            assert far.peer.identifier == me.identity.identifier
            assert far.cipher.handshake_hash == conn.get_handshake_hash()

            request = RoutedMessage(
                (Address.local("echo"),), (Address.local("me"),), bytes([KIND_DATA]) + b"hello"
            )
            await link.send(RoutedMessage(decryptor, (x,), data_message(conn, 0, request)))
            nonce, reply = open_reply(conn, await link.receive())
            assert nonce == 1
            assert reply.onward == (Address.local("me"),)
            assert reply.return_route == (Address.local("echo"),)
            assert reply.payload == bytes([KIND_DATA]) + b"hello"

            # explicit nonces: a later one is fine, a replayed one is refused (no reply)
            again = RoutedMessage(request.onward, request.return_route, b"\0again")
            await link.send(RoutedMessage(decryptor, (x,), data_message(conn, 7, again)))
            await link.send(RoutedMessage(decryptor, (x,), data_message(conn, 0, request)))
            await link.send(RoutedMessage(decryptor, (x,), data_message(conn, 8, request)))
            nonce, reply = open_reply(conn, await link.receive())
            assert (nonce, reply.payload) == (2, b"\0again")
            nonce, reply = open_reply(conn, await link.receive())
            assert (nonce, reply.payload) == (3, b"\0hello")
            assert far.refused == 1
            await link.stream.aclose()

    run(main)


def test_noiseprotocol_responder_against_tether_initiator_in_memory() -> None:
    """The reverse roles at the handshake level: tether initiates, noiseprotocol responds, and
    each side's payload verifies on the other."""
    ours = ephemeral_identity()
    theirs, private = outside_identity()
    hs = noise.Handshake(
        PROTOCOL, initiator=True, static_key=ours.static_key.reveal(), prologue=PROLOGUE
    )
    conn = NoiseConnection.from_name(PROTOCOL.encode())
    conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, private)
    conn.set_prologue(PROLOGUE)
    conn.start_handshake()

    assert conn.read_message(hs.write_message(b"")) == b""
    peer = verify_peer(
        hs.read_message(conn.write_message(theirs.payload())),
        hs.remote_static,
        authorities={},
        trust=trust_anyone,
        now=now(),
    )
    assert peer.identifier == theirs.identity.identifier
    state = conn.noise_protocol.handshake_state  # dropped by noiseprotocol once finished
    our_payload = conn.read_message(hs.write_message(ours.payload()))
    assert state.rs.public_bytes == noise.public_key(ours.static_key.reveal())
    peer = verify_peer(
        bytes(our_payload),
        state.rs.public_bytes,
        authorities={},
        trust=trust_identifiers(ours.identity.identifier),
        now=now(),
    )
    assert peer.identifier == ours.identity.identifier
    assert conn.handshake_finished
    cipher = hs.into_channel_cipher()
    assert cipher.handshake_hash == conn.get_handshake_hash()
    sealed = cipher.seal(b"to them")
    dec = conn.noise_protocol.cipher_state_decrypt
    dec.set_nonce(int.from_bytes(sealed[:8], "big"))
    assert dec.decrypt_with_ad(b"", sealed[8:]) == b"to them"

    # a payload made for another static key does not verify against this one
    with pytest.raises(ChannelRefusedError, match="different key"):
        verify_peer(
            theirs.payload(),
            noise.generate_keypair()[1],
            authorities={},
            trust=trust_anyone,
            now=now(),
        )


# --- an active attacker on the wire ------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    direction: str
    """'a2b' (initiator to listener) or 'b2a'."""
    step: Step
    action: str
    """flip:kind|step|nonce|body|tag, truncate, drop, duplicate, replay, reorder."""
    index: int = 0
    """Which frame carrying ``step`` in ``direction`` (0 = the first)."""


def flip(payload: bytes, where: str) -> bytes:
    """Flip one bit of a channel message's payload (kind byte, step byte, then the body)."""
    positions = {
        "kind": 0,
        "step": 1,
        "nonce": 2 + 7,  # the low byte of a DATA message's explicit nonce
        "body": len(payload) // 2,
        "tag": len(payload) - 1,
    }
    b = bytearray(payload)
    b[positions[where]] ^= 0x01
    return bytes(b)


class Wiretap:
    """A man in the middle on one TCP hop: forwards both directions frame by frame (the node
    framing: 4-byte big-endian length), and applies its rules to the frames of channel
    messages, which it recognises by their (clear) routing envelope."""

    def __init__(self, target_port: int, rules: Sequence[Rule] = ()) -> None:
        self.target_port = target_port
        self.rules = list(rules)
        self.counts: Counter[tuple[str, int]] = Counter()
        self.applied: list[Rule] = []
        self.port = 0

    async def start(self, tg: TaskGroup) -> None:
        listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
        self.port = int(listener.extra(SocketAttribute.local_port))
        tg.start_soon(listener.serve, self._handle)

    async def _handle(self, client: SocketStream) -> None:
        async with (
            client,
            await anyio.connect_tcp(HOST, self.target_port) as server,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self._pump, client, server, "a2b", tg.cancel_scope)
            tg.start_soon(self._pump, server, client, "b2a", tg.cancel_scope)

    async def _pump(
        self, src: SocketStream, dst: SocketStream, direction: str, scope: anyio.CancelScope
    ) -> None:
        buffer = b""
        hello = True
        pending: list[list[Any]] = []  # [frames still to pass, frame] for reorder and replay
        try:
            while True:
                buffer += await src.receive()
                while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                    n = int.from_bytes(buffer[:4], "big")
                    frame, buffer = buffer[4 : 4 + n], buffer[4 + n :]
                    if hello or not frame:  # the hello and keepalives pass untouched
                        out = [frame]
                        hello = False
                    else:
                        out = self._tamper(direction, frame, pending)
                    for f in out:
                        await dst.send(len(f).to_bytes(4, "big") + f)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            scope.cancel()

    def _tamper(self, direction: str, frame: bytes, pending: list[list[Any]]) -> list[bytes]:
        msg: RoutedMessage | None
        try:
            msg = RoutedMessage.decode(frame)
        except Exception:
            msg = None
        rule = None
        if msg is not None and len(msg.payload) >= 2 and msg.payload[0] == KIND_DATA:
            key = (direction, msg.payload[1])
            for r in self.rules:
                if (r.direction, r.step, r.index) == (*key, self.counts[key]):
                    rule = r
            self.counts[key] += 1
        if rule is None or msg is None:
            out = [frame]
        else:
            self.applied.append(rule)
            out = self._apply(rule, frame, msg, pending)
        if rule is None:  # a frame that passed: release what waits for it
            for item in pending:
                item[0] -= 1
            out += [f for left, f in pending if left <= 0]
            pending[:] = [item for item in pending if item[0] > 0]
        return out

    @staticmethod
    def _apply(
        rule: Rule, frame: bytes, msg: RoutedMessage, pending: list[list[Any]]
    ) -> list[bytes]:
        def reencode(payload: bytes) -> bytes:
            return RoutedMessage(msg.onward, msg.return_route, payload).encode()

        if rule.action.startswith("flip:"):
            return [reencode(flip(msg.payload, rule.action[5:]))]
        if rule.action == "truncate":
            return [reencode(msg.payload[:-5])]
        if rule.action == "drop":
            return []
        if rule.action == "duplicate":
            return [frame, frame]
        if rule.action == "replay":  # again, two frames later
            pending.append([2, frame])
            return [frame]
        if rule.action == "reorder":  # after the next frame
            pending.append([1, frame])
            return []
        raise AssertionError(rule.action)


@asynccontextmanager
async def tapped(rules: Sequence[Rule]) -> AsyncIterator[tuple[Node, Node, Wiretap, Sink, Sink]]:
    """Nodes a and b, b listening behind a wiretap, and a sink worker on each."""
    async with (
        Node("a", trust=trust_anyone, identity=ephemeral_identity()) as a,
        Node("b", identity=ephemeral_identity()) as b,
        anyio.create_task_group() as tg,
    ):
        port = (await b.listen_tcp(HOST, 0)).port
        tap = Wiretap(port, rules)
        await tap.start(tg)
        sa, sb = Sink(), Sink()
        await a.start_worker("sink", sa)
        await b.start_worker("sink", sb)
        yield a, b, tap, sa, sb
        tg.cancel_scope.cancel()


async def assert_working(a: Node, b: Node, a_end: SecureChannel) -> None:
    """The channel is established on both nodes and carries requests both ways."""
    await eventually(lambda: len(b.channels) == 1, "b holds the channel's end (a does)")
    b_end = only_channel(b)
    assert a_end.peer.identifier == b.identity.identity.identifier
    assert b_end.peer.identifier == a.identity.identity.identifier
    assert await a.request(through(a_end, "echo"), b"a->b", timeout=5) == b"a->b"
    assert await b.request(through(b_end, "echo"), b"b->a", timeout=5) == b"b->a"


HANDSHAKE_ATTACKS = [
    (Step.HS1, "flip:body"),
    (Step.HS1, "truncate"),
    (Step.HS1, "drop"),
    (Step.HS1, "duplicate"),
    (Step.HS2, "flip:body"),
    (Step.HS2, "flip:tag"),
    (Step.HS2, "truncate"),
    (Step.HS2, "drop"),
    (Step.HS2, "duplicate"),
    (Step.HS3, "flip:body"),
    (Step.HS3, "flip:tag"),
    (Step.HS3, "truncate"),
    (Step.HS3, "drop"),
    (Step.HS3, "duplicate"),
    (Step.ACK, "flip:step"),  # ACK (7) becomes REFUSED (6): an unauthenticated refusal
    (Step.ACK, "flip:body"),
    (Step.ACK, "truncate"),
    (Step.ACK, "drop"),
    (Step.ACK, "duplicate"),
]


@pytest.mark.parametrize(
    ("step", "action"), HANDSHAKE_ATTACKS, ids=[f"{s.name}-{a}" for s, a in HANDSHAKE_ATTACKS]
)
def test_attacker_in_the_handshake(step: Step, action: str) -> None:
    rule = Rule("b2a" if step in (Step.HS2, Step.ACK) else "a2b", step, action)

    async def main() -> None:
        async with tapped([rule]) as (a, b, tap, _, _):
            route = at(tap.port, "/service/api")
            try:
                a_end = await a.create_secure_channel(route, timeout=1.5)
            except ChannelRefusedError:
                # a clean failure: no channel anywhere (a listener that accepted must not be
                # left holding a channel the initiator gave up on)
                await eventually(lambda: not channel_workers(a), "a's handshake workers gone")
                assert a.channels == {}
                await eventually(
                    lambda: b.channels == {},
                    lambda: f"b still holds {list(b.channels)}, a channel the initiator gave up on",
                    within=2,
                )
            else:
                # an established channel: on both ends, and it works
                await assert_working(a, b, a_end)
            assert tap.applied == [rule]
            # either way the nodes go on: a fresh channel through the same wire works
            again = await a.create_secure_channel(route, timeout=5)
            await eventually(lambda: again.address in a.channels, "the new channel")
            assert await a.request(through(again, "echo"), b"fresh", timeout=5) == b"fresh"

    run(main)


AFTER_ATTACKS = [
    "flip:kind",
    "flip:step",
    "flip:nonce",
    "flip:body",
    "flip:tag",
    "truncate",
    "drop",
    "duplicate",
    "replay",
    "reorder",
]
NEVER_DELIVERED = {"flip:nonce", "flip:body", "flip:tag", "truncate", "drop"}
DELIVERED_ONCE = {"duplicate", "replay", "reorder"}


@pytest.mark.parametrize("action", AFTER_ATTACKS)
@pytest.mark.parametrize("direction", ["a2b", "b2a"])
def test_attacker_on_an_established_channel(direction: str, action: str) -> None:
    k, n = 3, 8  # tamper with the 4th of 8 one-way messages
    rule = Rule(direction, Step.DATA, action, k)

    async def main() -> None:
        async with tapped([rule]) as (a, b, tap, sink_a, sink_b):
            a_end = await a.create_secure_channel(at(tap.port, "/service/api"), timeout=5)
            await eventually(lambda: len(b.channels) == 1, "b holds its end")
            b_end = only_channel(b)
            if direction == "a2b":
                sender, end, receiver, far, sink = a, a_end, b, b_end, sink_b
            else:
                sender, end, receiver, far, sink = b, b_end, a, a_end, sink_a
            sent = [b"genuine %d " % i + os.urandom(6).hex().encode() for i in range(n)]
            for p in sent:
                await sender.send(through(end, "sink"), p)
            try:
                reply = await sender.request(through(end, "sink"), SENTINEL, timeout=2)
            except (UnreachableError, ReplyTimeoutError) as e:
                # the channel failed: visibly, i.e. gone from both ends, and what is sent
                # through it now fails at once
                failure = f"{type(e).__name__}: {e}"
                await eventually(
                    lambda: (
                        end.address not in sender.channels and far.address not in receiver.channels
                    ),
                    lambda: (
                        f"after {action} on {direction} the channel does not work "
                        f"({failure}) yet a holds {list(a.channels)} and b holds "
                        f"{list(b.channels)}"
                    ),
                    within=2,
                )
                with pytest.raises(UnreachableError):
                    await sender.request(through(end, "sink"), SENTINEL, timeout=2)
                working = False
            else:
                assert reply == SENTINEL
                working = True

            assert tap.applied == [rule]
            got = sink.got
            # never a corrupted or repeated delivery, and the order is the one on the wire
            assert set(got) <= set(sent), "a delivered payload was never sent"
            assert len(got) == len(set(got)), "a payload was delivered twice"
            order = list(sent)
            if action == "reorder":
                order[k], order[k + 1] = order[k + 1], order[k]
            assert got == [p for p in order if p in got]
            if action in NEVER_DELIVERED:
                assert sent[k] not in got
            if working:
                assert [p for p in got if p != sent[k]] == [p for p in order if p != sent[k]]
                if action in DELIVERED_ONCE:
                    assert got == order
                if action in NEVER_DELIVERED - {"drop"} or action in {"duplicate", "replay"}:
                    assert far.refused == 1
                assert end.address in sender.channels
                assert far.address in receiver.channels
                back = await receiver.request(through(far, "echo"), b"still there", timeout=5)
                assert back == b"still there"

    run(main)


def test_a_third_party_cannot_close_a_channel() -> None:
    """Only the peer (an authenticated CLOSE) ends a channel: anyone else who can reach the node
    and names the decryptor's address (they are sequential) with an error report, a forged
    CLOSE or forged data changes nothing."""

    async def main() -> None:
        async with (
            Node("a", trust=trust_anyone, identity=ephemeral_identity()) as a,
            Node("b", identity=ephemeral_identity()) as b,
        ):
            port = (await b.listen_tcp(HOST, 0)).port
            ch = await a.create_secure_channel(at(port, "/service/api"), timeout=5)
            await eventually(lambda: len(b.channels) == 1, "b holds its end")
            far = only_channel(b)
            third = await RawLink.connect(port)  # its own connection, not the channel's path
            to = (Address.local(far.decryptor),)
            x = (Address.local("x"),)
            await third.send(RoutedMessage(to, x, bytes([KIND_ERROR]) + b"path broken (a lie)"))
            await third.send(RoutedMessage(to, x, bytes([KIND_DATA, Step.CLOSE]) + bytes(24)))
            await third.send(RoutedMessage(to, x, bytes([KIND_DATA, Step.DATA]) + bytes(40)))
            await eventually(
                lambda: far.refused == 2 or far.closed.is_set(), "b handled the forgeries"
            )
            assert not far.closed.is_set(), "a third party's forged message closed the channel"
            assert far.refused == 2
            assert await a.request(through(ch, "echo"), b"still", timeout=5) == b"still"
            assert ch.address in a.channels
            assert far.address in b.channels
            await third.stream.aclose()

    run(main)


FRAGMENT_ATTACKS = ["none", "drop", "flip:body", "reorder"]


@pytest.mark.parametrize("action", FRAGMENT_ATTACKS)
def test_a_lost_fragment_never_delivers_the_rest(action: str) -> None:
    """A two-fragment message whose second fragment happens to be, byte for byte, a complete
    routed message (application data can be anything). If the first fragment is lost, forged or
    late, the message is not delivered — and its second fragment must not be delivered as a
    message of its own."""
    sink_address = Address.local("sink")
    injected = RoutedMessage((sink_address,), (), bytes([KIND_DATA]) + b"INJECTED").encode()
    header = len(RoutedMessage((sink_address,), (), b"").encode())
    rules = [] if action == "none" else [Rule("a2b", Step.DATA, action, 0)]

    async def main() -> None:
        async with tapped(rules) as (a, _b, tap, _, sink):
            ch = await a.create_secure_channel(at(tap.port, "/service/api"), timeout=5)
            fragment = ch.fragment_size - 1  # message bytes per fragment
            payload = os.urandom(fragment - header - 1) + injected
            data = RoutedMessage((sink_address,), (), bytes([KIND_DATA]) + payload).encode()
            assert data[fragment:] == injected  # what the second fragment carries
            await a.send(through(ch, "sink"), payload)
            await a.send(through(ch, "sink"), b"after")
            assert await a.request(through(ch, "sink"), SENTINEL, timeout=5) == SENTINEL
            assert b"INJECTED" not in sink.got, "a lone fragment was delivered as a message"
            if action == "none":
                assert sink.got == [payload, b"after"]
            else:
                assert tap.applied == rules
                assert sink.got in ([b"after"], [payload, b"after"])
                if action != "reorder":
                    assert sink.got == [b"after"]

    run(main)


# --- a hostile wire, modelled ------------------------------------------------------------------

INTERVAL = noise.REPLAY_WINDOW  # the smallest rekey interval: epochs come quickly
MAX_EPOCH_SKIP = 8  # a message may be at most this many rekey epochs ahead of its receiver
SINK = Address.local("sink")
APP = Address.local("app")


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (the capturing node below never waits)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")


class CaptureNode:
    """Just enough of a node for a SecureChannel: what it routes is captured."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.out: list[RoutedMessage] = []
        self.workers = {address, address + ".in"}
        self.forgotten: list[str] = []

    async def route(self, msg: RoutedMessage, origin: Origin = LOCAL_ORIGIN, **kw: Any) -> None:
        self.out.append(msg)

    async def route_batch(self, msgs: list[RoutedMessage]) -> None:
        self.out.extend(msgs)

    async def report(self, msg: RoutedMessage, reason: str) -> None:
        raise AssertionError(reason)

    def forget_channel(self, channel: SecureChannel) -> None:
        self.forgotten.append(channel.address)

    def has_worker(self, address: str) -> bool:
        return address in self.workers

    async def drain_worker(self, address: str, timeout: float = 5.0) -> bool:
        return True  # the encryptor is driven directly: nothing is ever queued

    async def stop_worker(self, address: str) -> None:
        self.workers.remove(address)


@dataclass(frozen=True)
class Packet:
    to: int
    payload: bytes
    genuine: int | None
    """The index of the genuine wire message it is (byte for byte), or None for a forgery."""


@dataclass(frozen=True)
class Sent:
    """One genuine wire message: a CLOSE, or fragment ``index`` of ``count`` of a message."""

    sender: int
    nonce: int
    message: int | None  # None for a CLOSE
    index: int = 0
    count: int = 1


_PEER_IDENTITIES: list[Identity] = []


def capture_pair() -> tuple[list[CaptureNode], list[SecureChannel]]:
    if not _PEER_IDENTITIES:
        _PEER_IDENTITIES.extend(ephemeral_identity().identity for _ in range(2))
    keys = [noise.generate_keypair()[0] for _ in range(2)]
    i = noise.Handshake(PROTOCOL, initiator=True, static_key=keys[0], prologue=PROLOGUE)
    r = noise.Handshake(PROTOCOL, initiator=False, static_key=keys[1], prologue=PROLOGUE)
    r.read_message(i.write_message(b""))
    i.read_message(r.write_message(b""))
    r.read_message(i.write_message(b""))
    nodes = [CaptureNode("a", "sc#1"), CaptureNode("b", "sc#1")]
    ciphers = [
        i.into_channel_cipher(rekey_interval=INTERVAL),
        r.into_channel_cipher(rekey_interval=INTERVAL),
    ]
    ends = [
        SecureChannel(
            nodes[k],  # type: ignore[arg-type]
            "sc#1",
            Peer(_PEER_IDENTITIES[1 - k]),
            (Address.local(f"to-{'ba'[k]}"),),
            ciphers[k],
            k == 0,
        )
        for k in range(2)
    ]
    return nodes, ends


def two_fragment_payload(label: bytes, fragment_size: int) -> bytes:
    """A message payload that needs two fragments, the second of which is, byte for byte, a
    complete routed message to SINK (as application data may well be)."""
    tail = RoutedMessage((SINK,), (), bytes([KIND_DATA]) + b"tail of " + label).encode()
    header = len(RoutedMessage((SINK,), (APP,), b"").encode())
    return label.ljust(fragment_size - 1 - header - 1, b".") + tail


class HostileWire(RuleBasedStateMachine):
    """Two ends of a channel (the real SecureChannel code, over capturing nodes); every message
    between them sits on a wire the attacker controls.

    The model says exactly what must happen when a packet arrives: a forgery (any packet that is
    not byte for byte a genuine message) changes nothing; a genuine message is accepted once if
    its nonce is new, within the replay window below the highest accepted nonce, and at most
    MAX_EPOCH_SKIP rekey epochs ahead; an accepted CLOSE closes the receiver; a message is
    delivered when its fragments were accepted one after the other, and never otherwise;
    nothing reaches a closed end, and a closed end sends nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes, self.ends = capture_pair()
        self.ctx = [WorkerContext(n, "sc#1") for n in self.nodes]  # type: ignore[arg-type]
        self.wire: list[Packet] = []
        self.history: list[Packet] = []
        self.genuine: dict[tuple[int, bytes], int] = {}
        self.sent: list[Sent] = []
        self.messages: list[bytes] = []  # what each message delivers (its inner payload)
        self.delivered: list[list[int]] = [[], []]
        self.closed = [False, False]
        self.highest: list[int | None] = [None, None]
        self.accepted: list[set[int]] = [set(), set()]
        self.partial: list[tuple[int, int] | None] = [None, None]  # (message, next index)

    @initialize()
    def start(self) -> None:
        assert self.ends[0].cipher.rekey_interval == INTERVAL

    # -- the ends

    def _collect(self, sender: int, records: list[Sent]) -> None:
        out = list(self.nodes[sender].out)
        self.nodes[sender].out.clear()
        assert len(out) == len(records)
        for msg, record in zip(out, records, strict=True):
            step = Step.CLOSE if record.message is None else Step.DATA
            assert msg.onward == self.ends[sender].remote_route
            assert msg.payload[:2] == bytes([KIND_DATA, step])
            assert int.from_bytes(msg.payload[2:10], "big") == record.nonce
            gid = len(self.sent)
            self.sent.append(record)
            packet = Packet(1 - sender, msg.payload, gid)
            self.genuine[(packet.to, packet.payload)] = gid
            self.wire.append(packet)
            self.history.append(packet)

    def _send(self, sender: int, data: bytes, count: int) -> None:
        end = self.ends[sender]
        msg = Message((SINK,), (APP,), data, KIND_DATA)
        nonce = end.cipher.sending_nonce
        if self.closed[sender]:
            with pytest.raises(ChannelClosedError):
                drive(end.encrypt(self.ctx[sender], msg))
            assert self.nodes[sender].out == []
            return
        drive(end.encrypt(self.ctx[sender], msg))
        m = len(self.messages)
        self.messages.append(bytes([KIND_DATA]) + data)
        self._collect(sender, [Sent(sender, nonce + k, m, k, count) for k in range(count)])

    @rule(sender=st.integers(0, 1), size=st.integers(0, 40))
    def send(self, sender: int, size: int) -> None:
        self._send(sender, b"message %d:" % len(self.messages) + bytes(range(size)), 1)

    @rule(sender=st.integers(0, 1))
    def send_two_fragments(self, sender: int) -> None:
        label = b"message %d" % len(self.messages)
        self._send(sender, two_fragment_payload(label, self.ends[sender].fragment_size), 2)

    @rule(end=st.integers(0, 1))
    def close(self, end: int) -> None:
        nonce = self.ends[end].cipher.sending_nonce
        drive(self.ends[end].close())
        if self.closed[end]:
            assert self.nodes[end].out == []  # already closed: nothing more is sent
            return
        self.closed[end] = True
        self._collect(end, [Sent(end, nonce, None)])

    @rule(
        sender=st.integers(0, 1),
        epochs=st.integers(1, MAX_EPOCH_SKIP),
        before=st.integers(0, 2),
    )
    def rekey_boundary(self, sender: int, epochs: int, before: int) -> None:
        """Jump the sender's nonce to just before (or onto) a later rekey epoch."""
        cipher = self.ends[sender].cipher
        target = (cipher.sending_nonce // INTERVAL + epochs) * INTERVAL - before
        # a jump may cross at most MAX_EPOCH_SKIP epochs from the sender's current key
        furthest = (cipher.sending_epoch + MAX_EPOCH_SKIP + 1) * INTERVAL - 1
        cipher.skip_sending_nonce_to(max(min(target, furthest), cipher.sending_nonce))

    # -- the wire

    def _forged(self, to: int, payload: bytes) -> Packet:
        return Packet(to, payload, self.genuine.get((to, payload)))

    @rule(count=st.integers(1, 4), newest=st.booleans())
    def deliver(self, count: int, newest: bool) -> None:
        """Deliver the oldest packets on the wire (in order), or the newest (out of order)."""
        for _ in range(min(count, len(self.wire))):
            self._arrive(self.wire.pop(-1 if newest else 0))

    @rule(i=st.integers(0, 63))
    def drop(self, i: int) -> None:
        if not self.wire:
            return
        del self.wire[i % len(self.wire)]

    @rule(i=st.integers(0, 63))
    def duplicate(self, i: int) -> None:
        if not self.wire:
            return
        self.wire.insert(0, self.wire[i % len(self.wire)])

    @rule(i=st.integers(0, 63), j=st.integers(0, 63))
    def reorder(self, i: int, j: int) -> None:
        if not self.wire:
            return
        i, j = i % len(self.wire), j % len(self.wire)
        self.wire[i], self.wire[j] = self.wire[j], self.wire[i]

    @rule(i=st.integers(0, 63))
    def replay(self, i: int) -> None:
        if not self.history:
            return
        self.wire.insert(0, self.history[i % len(self.history)])

    @rule(i=st.integers(0, 63), pos=st.integers(0, 1 << 16), bit=st.integers(0, 7))
    def bitflip(self, i: int, pos: int, bit: int) -> None:
        """Flip a bit anywhere from the step byte on (the kind byte before it is the node's
        envelope, not the channel's)."""
        if not self.wire:
            return
        k = i % len(self.wire)
        p = self.wire[k]
        b = bytearray(p.payload)
        if len(b) < 2:
            return  # truncated to the kind byte: nothing of the channel's left to flip
        b[1 + pos % (len(b) - 1)] ^= 1 << bit
        self.wire[k] = self._forged(p.to, bytes(b))

    @rule(i=st.integers(0, 63), step=st.sampled_from(Step))
    def rewrite_step(self, i: int, step: Step) -> None:
        """Rewrite the step byte (it travels in the clear, beside the sealed body)."""
        if not self.wire:
            return
        k = i % len(self.wire)
        p = self.wire[k]
        if len(p.payload) >= 2:
            self.wire[k] = self._forged(p.to, p.payload[:1] + bytes([step]) + p.payload[2:])

    @rule(i=st.integers(0, 63), cut=st.integers(1, 1 << 16))
    def truncate(self, i: int, cut: int) -> None:
        if not self.wire:
            return
        k = i % len(self.wire)
        p = self.wire[k]
        self.wire[k] = self._forged(p.to, p.payload[: max(1, len(p.payload) - cut)])

    # -- the model

    def _accepts(self, p: Packet) -> bool:
        if p.genuine is None:
            event("refused: a forgery")
            return False
        to, n = p.to, self.sent[p.genuine].nonce
        highest = self.highest[to]
        if n in self.accepted[to]:
            event("refused: a replay")
            return False
        if highest is not None and n < highest and highest - n >= noise.REPLAY_WINDOW:
            event("refused: too old for the window")
            return False
        if n // INTERVAL - (0 if highest is None else highest // INTERVAL) > MAX_EPOCH_SKIP:
            event("refused: too many epochs ahead")
            return False
        if highest is not None and n // INTERVAL > highest // INTERVAL:
            event("accepted: in a later epoch")
        if highest is not None and n < highest:
            event("accepted: out of order")
        self.accepted[to].add(n)
        self.highest[to] = n if highest is None else max(n, highest)
        return True

    def _completes(self, to: int, s: Sent) -> bool:
        """An accepted fragment: does it complete its message?"""
        assert s.message is not None
        if s.index == 0 or self.partial[to] == (s.message, s.index):
            if s.index + 1 == s.count:
                self.partial[to] = None
                return True
            self.partial[to] = (s.message, s.index + 1)
            return False
        event("dropped: a fragment after a gap")
        self.partial[to] = None  # a gap: the partial message is lost, and so is this fragment
        return False

    def _arrive(self, p: Packet) -> None:
        end, node = self.ends[p.to], self.nodes[p.to]
        if not node.has_worker(end.decryptor):
            assert self.closed[p.to], "a decryptor stopped on an open channel"
            return  # the node would report "no worker"; nothing reaches a closed end
        assert not self.closed[p.to], "a closed channel still has its decryptor"
        msg = Message((), (Address.local("wire"),), p.payload[1:], p.payload[0])
        drive(end.decrypt(self.ctx[p.to], msg))
        routed = list(node.out)
        node.out.clear()
        if not self._accepts(p):
            assert routed == [], f"a forged or replayed packet delivered {routed}"
            assert not end.closed.is_set(), "a forged or replayed packet closed the channel"
            return
        assert p.genuine is not None
        s = self.sent[p.genuine]
        if s.message is None:
            assert routed == []
            assert end.closed.is_set(), "a genuine CLOSE did not close the receiver"
            self.closed[p.to] = True
            return
        if not self._completes(p.to, s):
            assert routed == [], f"a message was delivered from an incomplete one: {routed}"
            return
        assert len(routed) == 1, f"a complete message was not delivered: {routed}"
        (delivered,) = routed
        assert delivered.onward == (SINK,)
        assert delivered.return_route == (Address.local(end.address), APP)
        assert delivered.payload == self.messages[s.message]
        self.delivered[p.to].append(s.message)

    @invariant()
    def ends_agree_with_the_model(self) -> None:
        for k in range(2):
            assert self.ends[k].closed.is_set() == self.closed[k]
            assert (self.nodes[k].forgotten == ["sc#1"]) == self.closed[k]
            ids = self.delivered[k]
            assert len(ids) == len(set(ids)), "a message was delivered twice"


TestHostileWire = HostileWire.TestCase
TestHostileWire.settings = settings(
    settings(),  # the selected profile (see conftest.py)
    max_examples=2 * settings().max_examples,
    stateful_step_count=60,
    report_multiple_bugs=False,
)


FORGED_STEPS = [(Step.DATA, Step.CLOSE), (Step.CLOSE, Step.DATA), (Step.DATA, Step.CREDENTIALS)]


@pytest.mark.parametrize(
    ("genuine", "forged"), FORGED_STEPS, ids=[f"{g.name}-as-{f.name}" for g, f in FORGED_STEPS]
)
def test_a_rewritten_step_byte_is_a_forgery(genuine: Step, forged: Step) -> None:
    """The step byte travels in the clear, beside the sealed body. A message whose step was
    rewritten on the wire is a forgery like any other: refused and counted, acting neither as
    the forged step (a DATA made CLOSE must not close the channel) nor as the genuine one, and
    not using up the genuine message's nonce (the untouched copy still does its job)."""
    nodes, (a, b) = capture_pair()
    if genuine == Step.DATA:
        msg = Message((SINK,), (APP,), b"hello", KIND_DATA)
        drive(a.encrypt(WorkerContext(nodes[0], a.address), msg))  # type: ignore[arg-type]
    else:
        drive(a.close())
    (wire,) = nodes[0].out
    assert wire.payload[1] == genuine

    def arrive(payload: bytes) -> None:
        msg = Message((), (Address.local("wire"),), payload[1:], payload[0])
        drive(b.decrypt(WorkerContext(nodes[1], b.decryptor), msg))  # type: ignore[arg-type]

    arrive(wire.payload[:1] + bytes([forged]) + wire.payload[2:])
    assert not b.closed.is_set(), f"a {genuine.name} rewritten as {forged.name} closed the channel"
    assert nodes[1].out == []
    assert b.refused == 1

    arrive(wire.payload)  # the genuine message, as it was sent
    if genuine == Step.DATA:
        assert not b.closed.is_set()
        assert len(nodes[1].out) == 1, "the genuine DATA was refused after its forged copy"
        (delivered,) = nodes[1].out
        assert delivered.payload == bytes([KIND_DATA]) + b"hello"
    else:
        assert b.closed.is_set(), "the genuine CLOSE was refused after its forged copy"
    assert b.refused == 1


# --- close -------------------------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["initiator", "listener"])
def test_close_from_either_end(closer: str) -> None:
    async def main() -> None:
        async with (
            Node("a", trust=trust_anyone, identity=ephemeral_identity()) as a,
            Node("b", identity=ephemeral_identity()) as b,
        ):
            port = (await b.listen_tcp(HOST, 0)).port
            route = at(port, "/secure/api/service/echo")
            assert await a.request(route, b"open", timeout=5) == b"open"
            a_end = only_channel(a)
            await eventually(lambda: len(b.channels) == 1, "b holds its end")
            b_end = only_channel(b)
            assert await b.request(through(b_end, "echo"), b"b to a", timeout=5) == b"b to a"

            closing, other = (a_end, b_end) if closer == "initiator" else (b_end, a_end)
            await closing.close()
            assert closing.closed.is_set()
            assert closing.address not in closing.node.channels
            await eventually(
                lambda: other.address not in other.node.channels and other.closed.is_set(),
                "the other end learned of the close",
            )
            for node, end in ((a, a_end), (b, b_end)):
                with pytest.raises(UnreachableError, match=re.escape(repr(end.address))):
                    await node.request(through(end, "echo"), b"after close", timeout=5)
                assert not node.has_worker(end.address)
                assert not node.has_worker(end.decryptor)
            await closing.close()  # closing again changes nothing
            await other.close()

            # the route string opens a fresh channel; the nodes go on
            assert await a.request(route, b"reopened", timeout=5) == b"reopened"
            fresh = only_channel(a)
            assert fresh.address != a_end.address
            await eventually(lambda: len(b.channels) == 1, "b holds the fresh channel's end")

    run(main)


def test_close_is_heard_across_a_middle_node() -> None:
    async def main() -> None:
        async with (
            Node("a", trust=trust_anyone, identity=ephemeral_identity()) as a,
            Node("m", transit=["*"]) as m,
            Node("b", identity=ephemeral_identity()) as b,
        ):
            pm = (await m.listen_tcp(HOST, 0)).port
            pb = (await b.listen_tcp(HOST, 0)).port
            ch = await a.create_secure_channel(at(pm) + at(pb, "/service/api"), timeout=5)
            await eventually(lambda: len(b.channels) == 1, "b holds its end")
            await only_channel(b).close()
            await eventually(lambda: ch.address not in a.channels, "a learned of the close")
            with pytest.raises(UnreachableError):
                await a.request(through(ch, "echo"), b"x", timeout=5)
            with suppress(ChannelClosedError):
                await ch.close()

    run(main)
