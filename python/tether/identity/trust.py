"""Who is at the other end of a secure channel: what each side proves in the handshake, and
whom a side accepts (``docs/secure-channels.md``, ``docs/security.md``).

A side brings a :class:`ChannelIdentity`: its identity's change history, the attestation binding
its Noise static key to that identity, and its credentials. The other side verifies all of it
(:func:`verify_peer`: the static key must be exactly the attested one, for the secure-channel
purpose, by the identity's current key; credentials against the authorities it trusts) and then
asks its **trust policy**, which raises :class:`ChannelRefusedError` to refuse the verified
:class:`Peer`. An initiator never trusts anyone by default
(``tether.identity.trust.initiator_trust``);
:func:`trust_anyone` is the explicit opt-out.

The peer keeps every credential it presented. What they grant is judged again at each access
decision (:func:`standing`): against the authorities the node trusts and the revocations it holds
at that moment, so a node that comes to trust an authority after a channel opened honours its
peer's credentials at once, and one that does not count is reported with the reason
(:func:`refusal_notes`: an issuer the node does not trust, expired, revoked, forged, or an
attribute the refusing policy reads and the peer lacks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Protocol

from tether.core.encoding import Reader, Writer
from tether.core.errors import (
    CredentialError,
    CredentialExpiredError,
    CredentialNotYetValidError,
    CredentialRevokedError,
    EncodingError,
    HandshakeError,
    IdentityError,
)
from tether.identity import identity as ident
from tether.identity.credential import Credential, check_current, check_issued
from tether.identity.identity import (
    ATTESTATION_SIZE,
    MAX_HISTORY_SIZE,
    VERSION,
    Attestation,
    Identity,
    Purpose,
    verify_attestation,
    verify_history,
)
from tether.identity.policy import Policy, subject_attributes
from tether.identity.policy_syntax import Attribute, Condition
from tether.identity.vault import KeyType, MemoryVault, SecretBytes, Vault

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
    """The verified other side of a channel: its identity, and the credentials it presented.

    ``credentials`` (and their ``attributes``) are those that verified when it presented them
    (in the handshake, or since inside the channel): what a trust policy decides on.
    ``presented`` is every credential it presented, parsed but not necessarily trusted, and
    ``authorities`` the (live) map of authorities they are judged against: :func:`standing`
    judges ``presented`` again at each decision, so what a peer's credentials grant follows
    what the node trusts and revokes now, for as long as the channel lives."""

    identity: Identity
    attributes: Mapping[str, str] = field(default_factory=dict)
    credentials: tuple[Credential, ...] = ()
    presented: tuple[Credential, ...] = ()
    authorities: Mapping[str, Identity] | None = field(default=None, compare=False, repr=False)
    verdicts: dict[tuple[Credential, bytes], str | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    """The time-independent checks of a presented credential against one version of its
    issuer's identity (None: passed; else why not): signatures are verified once, not at
    every decision."""

    def __post_init__(self) -> None:
        if not self.presented and self.credentials:
            object.__setattr__(self, "presented", self.credentials)

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


class TrustContext(Protocol):
    """What deciding on a peer reads of the node that decides (a
    :class:`~tether.node.node.BaseNode`): its name, the authorities it trusts now, the
    revocations it holds, and its own trust policy."""

    @property
    def name(self) -> str: ...

    @property
    def authorities(self) -> Mapping[str, Identity]: ...

    @property
    def revoked_credentials(self) -> Mapping[str, frozenset[str]]: ...

    @property
    def trust(self) -> TrustPolicy | None: ...


def trust_anyone(peer: Peer) -> None:
    """Any authenticated identity (development)."""


def trust_identifiers(*identifiers: str) -> TrustPolicy:
    allowed = frozenset(identifiers)

    def policy(peer: Peer) -> None:
        if peer.identifier not in allowed:
            raise ChannelRefusedError(f"{peer.identifier} is not an authorized identity")

    return policy


def trust_policy(policy: Policy, node: TrustContext, resource_type: str, name: str) -> TrustPolicy:
    """Peers that ``policy`` (a :class:`~tether.identity.policy.Policy`) allows as subjects of
    ``resource_type`` ``name`` on ``node`` (an inlet's ``--allow``, checked in the handshake:
    a peer it refuses never learns who opened the channel)."""

    def check(peer: Peer) -> None:
        if not peer_allows(node, policy, peer, resource_type, name, "connect"):
            notes = explain(peer, node, policy)
            raise ChannelRefusedError(
                f"{peer.identifier} is refused by the policy {policy}"
                + (f"; {notes}" if notes else "")
            )

    return check


def trust_members(
    authorities: Mapping[str, Identity], node: TrustContext | None = None
) -> TrustPolicy:
    """The members of ``authorities`` (a credential from one of them that counts now: not
    expired, and not revoked by ``node``'s revocation lists) and those authorities
    themselves: what a node enrolled with an authority trusts by default. ``authorities`` is
    read at each handshake (a live map)."""

    def policy(peer: Peer) -> None:
        if peer.identifier in authorities:
            return
        if standing(peer, node, authorities=authorities).credentials:
            return
        raise ChannelRefusedError(
            f"{peer.identifier} is no member of an authority this node trusts (it presented no "
            "valid credential from one); name it with --authorized if it is the peer you want"
            + _notes(peer, node, authorities)
        )

    return policy


def _notes(
    peer: Peer, node: TrustContext | None = None, authorities: Mapping[str, Identity] | None = None
) -> str:
    """Why each credential ``peer`` presented does not count, each after "; " ("" if none)."""
    return "".join(f"; {line}" for line in standing(peer, node, authorities=authorities).ignored)


def initiator_trust(
    node: TrustContext, trust: TrustPolicy | None, expected: str | None, target: str
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
        return trust_members(node.authorities, node)
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
                + _notes(peer)
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
    presented: list[Credential] = []
    for raw in raw_creds:
        try:
            presented.append(Credential.decode(raw))
        except EncodingError as e:
            log.info("ignoring a credential of %s: %s", identity.identifier, e)
    peer = with_credentials(Peer(identity, authorities=authorities), presented, now)
    trust(peer)
    return peer


def with_credentials(peer: Peer, presented: Sequence[Credential], now: int) -> Peer:
    """``peer`` having presented ``presented`` (parsed): they replace what it presented before
    from the same issuers (at most MAX_CREDENTIALS kept, the newest), and those that verify
    now against its authorities are its ``credentials``. Each one that does not is logged with
    the reason (and :func:`standing` says it again at each decision)."""
    issuers = {c.issuer for c in presented}
    kept = [old for old in peer.presented if old.issuer not in issuers] + list(presented)
    kept = kept[-MAX_CREDENTIALS:]
    fresh = replace(peer, presented=tuple(kept), attributes={}, credentials=())
    judged = _judge(fresh, peer.authorities if peer.authorities is not None else {}, {}, now, None)
    for c, reason in zip(fresh.presented, judged, strict=True):
        if reason is not None and c in presented:
            log.info("%s: %s", peer.identifier, _ignored(c, reason))
    counted = _tally(fresh, judged)
    return replace(fresh, attributes=dict(counted.attributes), credentials=counted.credentials)


# --- the channel ends -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Standing:
    """What a peer's presented credentials are worth on a node at one time."""

    credentials: tuple[Credential, ...]
    """Those that count: from an authority the node trusts, intact, about the peer, valid
    now and not revoked."""
    attributes: Mapping[str, str]
    """Their attributes (a later credential's value wins)."""
    ignored: tuple[str, ...]
    """For each presented credential that does not count, one line saying which and why."""


def standing(
    peer: Peer,
    node: TrustContext | None,
    now: int | None = None,
    *,
    authorities: Mapping[str, Identity] | None = None,
) -> Standing:
    """Judge every credential ``peer`` presented, now, against the authorities ``node``
    trusts for it (``peer.authorities``, else ``node.authorities``: live, so one trusted
    after the channel opened counts at once) and the revocations it holds
    (``node.revoked_credentials``). Signatures are checked once per credential and issuer
    identity; expiry and revocation at every call."""
    t = int(time.time()) if now is None else now
    if authorities is None:
        authorities = (
            peer.authorities if peer.authorities is not None else getattr(node, "authorities", {})
        )
    revoked: Mapping[str, frozenset[str]] = getattr(node, "revoked_credentials", {})
    return _tally(peer, _judge(peer, authorities, revoked, t, getattr(node, "name", None)))


def _tally(peer: Peer, judged: Sequence[str | None]) -> Standing:
    """The :class:`Standing` of ``peer`` given a verdict per presented credential."""
    creds: list[Credential] = []
    ignored: list[str] = []
    attributes: dict[str, str] = {}
    for c, reason in zip(peer.presented, judged, strict=True):
        if reason is None:
            creds.append(c)
            attributes.update(c.attributes)
        else:
            ignored.append(_ignored(c, reason))
    return Standing(tuple(creds), attributes, tuple(ignored))


def _ignored(c: Credential, reason: str) -> str:
    return f"credential {c.id} from {c.issuer} ignored: {reason}"


def _judge(
    peer: Peer,
    authorities: Mapping[str, Identity],
    revoked: Mapping[str, frozenset[str]],
    now: int,
    node_name: str | None,
) -> list[str | None]:
    """For each credential ``peer`` presented: None if it counts now, else why not."""
    out: list[str | None] = []
    for c in peer.presented:
        authority = authorities.get(c.issuer)
        if authority is None:
            out.append(_untrusted(node_name))
            continue
        key = (c, authority.history)
        if key in peer.verdicts:
            reason = peer.verdicts[key]
        else:
            try:
                check_issued(c, authority, subject=peer.identifier)
                reason = None
            except CredentialError as e:
                reason = f"it does not verify: {e}"
            if len(peer.verdicts) >= 4 * MAX_CREDENTIALS:
                peer.verdicts.clear()  # issuers' identities changed many times: start afresh
            peer.verdicts[key] = reason
        if reason is None:
            try:
                check_current(c, now=now, revoked=revoked.get(c.issuer, ()))
            except CredentialExpiredError:
                reason = f"it expired at {_when(c.expires_at)}"
            except CredentialNotYetValidError:
                reason = f"it is valid only from {_when(c.created_at)}"
            except CredentialRevokedError:
                reason = "its authority revoked it"
            except CredentialError as e:
                reason = str(e)
        out.append(reason)
    return out


def _untrusted(node_name: str | None) -> str:
    if node_name is None:
        return "this node does not trust that issuer"
    return (
        f"node {node_name} does not trust that issuer; to trust it, enroll {node_name} with "
        f"that authority (`tether enroll --at {node_name} --ticket-file TICKET`, with a "
        "ticket from `tether ticket create --at AUTHORITY_NODE`)"
    )


def _when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def valid_credentials(
    peer: Peer, node: TrustContext | None, now: int | None = None
) -> list[Credential]:
    """``peer``'s credentials that count now (:func:`standing`): from an authority ``node``
    trusts now, not expired, and not revoked by their authority."""
    return list(standing(peer, node, now).credentials)


def valid_attributes(
    peer: Peer, node: TrustContext | None, now: int | None = None
) -> dict[str, str]:
    """The attributes of ``peer``'s credentials that count now."""
    return dict(standing(peer, node, now).attributes)


def has_valid_credential(peer: Peer, node: TrustContext | None, now: int | None = None) -> bool:
    """Whether ``peer`` is, now, a member of an authority ``node`` trusts (it presented a
    credential from it that counts now)."""
    return bool(standing(peer, node, now).credentials)


def refusal_notes(
    peer: Peer | None,
    node: TrustContext | None,
    policy: Policy | Sequence[Policy] | None = None,
    now: int | None = None,
) -> list[str]:
    """Why ``peer``, refused on ``node`` by ``policy`` (a :class:`~tether.identity.policy.Policy`,
    or a list of those that refused; None: by a rule that needs a credential), may have expected
    otherwise: a line for each credential it presented that does not count now (untrusted
    issuer, expired, revoked, forged), and for the subject attributes the policies read that
    it does not hold. Nothing when they read no attribute a credential gives
    (``subject.identifier`` alone)."""
    if peer is None:
        return []
    keys = None
    if policy is not None:
        refusing = [policy] if isinstance(policy, Policy) else list(policy)
        keys = _subject_keys([p.expression for p in refusing])
    if keys is not None and not keys:
        return []
    s = standing(peer, node, now)
    notes = list(s.ignored)
    if not peer.presented:
        notes.append(f"{peer.identifier} presented no credential")
    missing = [k for k in keys or () if k not in s.attributes]
    held = format_attributes(s.attributes) or "none"
    if missing:
        notes.append(
            f"{peer.identifier} holds no attribute {', '.join(missing)} (its attributes: {held})"
        )
    elif keys and peer.presented:
        notes.append(f"its attributes: {held}")
    return notes


def explain(
    peer: Peer | None,
    node: TrustContext | None,
    policy: Policy | Sequence[Policy] | None = None,
    now: int | None = None,
) -> str:
    """:func:`refusal_notes` as one line ("" if none)."""
    return "; ".join(refusal_notes(peer, node, policy, now))


def _subject_keys(expressions: Sequence[Condition]) -> list[str]:
    """The credential attributes (``subject.KEY``, but ``subject.identifier``) an expression
    reads, in order, once each."""
    found: dict[str, None] = {}

    def walk(node: object) -> None:
        if isinstance(node, tuple | list):
            for item in node:
                walk(item)
        elif isinstance(node, Attribute):
            if node.name.startswith("subject.") and node.name != "subject.identifier":
                found[node.name.removeprefix("subject.")] = None
        elif is_dataclass(node) and not isinstance(node, type):
            for f in fields(node):
                walk(getattr(node, f.name))

    walk(expressions)
    return list(found)


def format_attributes(attributes: Mapping[str, str]) -> str:
    """Attributes as a person reads them: ``role=db-client, team=ops`` (sorted; "" if none)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(attributes.items()))


def ephemeral_identity(vault: Vault | None = None, *, ttl: int = 24 * 3600) -> ChannelIdentity:
    """A fresh identity with an attested channel key, in a memory vault (tests, embedding)."""
    v = vault if vault is not None else MemoryVault()
    now = int(time.time())
    identity, primary = ident.create(v, now)
    key_id = v.generate(KeyType.X25519)
    att = ident.attest(
        v, identity, primary, Purpose.SECURE_CHANNEL, v.public_key(key_id), now - 60, now + ttl
    )
    return ChannelIdentity(identity, v.noise_static_key(key_id), att)


# --- what a policy sees of a peer ----------------------------------------------------------


def environment(
    node: TrustContext | None, peer: Peer | None, resource_type: str, name: str, action: str
) -> dict[str, object]:
    """What a policy sees: the peer's identifier and the attributes of its credentials still
    valid now (nothing for no peer), and the resource and action."""
    env: dict[str, object] = (
        subject_attributes(peer.identifier, valid_attributes(peer, node))
        if peer is not None
        else {}
    )
    env.update({"resource.type": resource_type, "resource.name": name, "action.name": action})
    return env


def peer_allows(
    node: TrustContext | None,
    policy: Policy,
    peer: Peer | None,
    resource_type: str,
    name: str,
    action: str,
) -> bool:
    """Does the one ``policy`` allow the verified :class:`Peer` (None: no peer), with the
    attributes of its credentials still valid now? (A check made before the rest, such as an
    inlet's ``--allow`` in the handshake; :func:`tether.node.policies.check` decides on every
    policy.)"""
    return bool(policy.allows(environment(node, peer, resource_type, name, action)))
