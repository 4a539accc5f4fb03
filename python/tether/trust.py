"""Who is at the other end of a secure channel: what each side proves in the handshake, and
whom a side accepts (``docs/secure-channels.md``, ``docs/security.md``).

A side brings a :class:`ChannelIdentity`: its identity's change history, the attestation binding
its Noise static key to that identity, and its credentials. The other side verifies all of it
(:func:`verify_peer`: the static key must be exactly the attested one, for the secure-channel
purpose, by the identity's current key; credentials against the authorities it trusts) and then
asks its **trust policy**, which raises :class:`ChannelRefusedError` to refuse the verified
:class:`Peer`. An initiator never trusts anyone by default (``tether.trust.initiator_trust``);
:func:`trust_anyone` is the explicit opt-out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tether import policies
from tether.credential import DEFAULT_SKEW, Credential
from tether.credential import verify as verify_credential
from tether.encoding import Reader, Writer
from tether.errors import CredentialError, EncodingError, HandshakeError, IdentityError
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
from tether.vault import SecretBytes

if TYPE_CHECKING:
    from tether.node import Node

log = logging.getLogger("tether.channel")

T_HANDSHAKE_PAYLOAD = 0x06
MAX_CREDENTIALS = 8
MAX_CREDENTIAL_BYTES = 8192


class ChannelRefusedError(HandshakeError):
    """The peer (or our trust policy) refused the channel; the reason says why."""


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
        if not policies.peer_allows(node, policy, peer, resource_type, name, "connect"):
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


def initiator_trust(
    node: Node, trust: TrustPolicy | None, expected: str | None, target: str
) -> TrustPolicy:
    """Who may answer a secure channel ``node`` opens to ``target``: ``trust`` when given (or
    the node's own ``trust``); else the identity ``expected`` there (the node named in the
    route); else any member of an authority the node trusts (a valid credential from it). Never
    anyone by default: with none of these the channel is refused before a byte is sent, since a
    relay or anything else on the path could answer the handshake."""
    given: TrustPolicy | None = trust if trust is not None else node.trust
    if given is not None:
        return given
    if expected:
        return trust_identifiers(expected)
    if node.authorities:
        return trust_members(node.authorities)
    raise ChannelRefusedError(
        f"no identity to expect at {target}: name the peer with --authorized IDENTIFIER "
        "(Python: trust=trust_identifiers(...)), reach it as /node/NAME/secure/..., or "
        "enroll this node with an authority; --trust-any accepts any identity (anything "
        "on the path could then answer)"
    )


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
