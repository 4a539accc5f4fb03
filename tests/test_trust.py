"""What a peer's presented credentials are worth on a node, judged at each decision
(``tether.identity.trust.standing``): against the authorities the node trusts *now* (so trusting one
after a channel opened counts at once), its expiry and the revocations the node holds now, with a
reason kept for each credential that does not count; a signature verified once is never taken for a
forged copy; and the notes a refusal carries (``refusal_notes``). In memory: real credentials and
identities, and an unstarted :class:`~tether.Node` for the node's trust."""

from __future__ import annotations

import dataclasses
import time

import pytest

from test_credential import DAY, T0, Authority
from tether.api import Node
from tether.core.errors import CredentialError
from tether.identity import credential, identity
from tether.identity.credential import check_current, check_issued
from tether.identity.policy import Policy
from tether.identity.trust import (
    ChannelRefusedError,
    Peer,
    format_attributes,
    has_valid_credential,
    refusal_notes,
    standing,
    trust_members,
    valid_attributes,
    with_credentials,
)
from tether.identity.vault import MemoryVault

NOW = T0 + 2 * DAY


def subject() -> identity.Identity:
    made, _ = identity.create(MemoryVault(), T0)
    return made


def peer_of(me: identity.Identity, *presented: credential.Credential, node: Node) -> Peer:
    """A peer as a channel on ``node`` keeps it: judged against the node's (live) authorities."""
    return with_credentials(Peer(me, authorities=node.authorities), presented, NOW)


def test_a_credential_counts_while_its_issuer_is_trusted_and_not_before() -> None:
    a = Authority()
    me = subject()
    c = a.issue(me.identifier, {"role": "db-client"})
    node = Node("db")
    peer = peer_of(me, c, node=node)
    assert peer.credentials == ()  # the node trusted nobody when it was presented
    (note,) = standing(peer, node, NOW).ignored
    assert note.startswith(f"credential {c.id} from {a.identifier} ignored: node db does not trust")
    assert "tether enroll --at db" in note
    assert not has_valid_credential(peer, node, NOW)

    node.authorities[a.identifier] = a.identity  # it enrolls: the same peer, judged again
    s = standing(peer, node, NOW)
    assert s.credentials == (c,)
    assert s.attributes == {"role": "db-client"}
    assert s.ignored == ()
    del node.authorities[a.identifier]
    assert valid_attributes(peer, node, NOW) == {}


def test_expiry_and_revocation_are_judged_at_each_call() -> None:
    a = Authority()
    me = subject()
    c = a.issue(me.identifier, {"role": "db-client"}, now=T0 + DAY, ttl=10 * DAY)
    node = Node("db", authorities=a.trusted)
    peer = peer_of(me, c, node=node)
    assert standing(peer, node, NOW).attributes == {"role": "db-client"}
    (late,) = standing(peer, node, T0 + 11 * DAY + 61).ignored
    assert late.endswith("ignored: it expired at 2023-11-25 22:13:20 UTC")
    (early,) = standing(peer, node, T0).ignored
    assert "ignored: it is valid only from " in early
    node.revoked_credentials[a.identifier] = frozenset({c.id})
    (revoked,) = standing(peer, node, NOW).ignored
    assert revoked == f"credential {c.id} from {a.identifier} ignored: its authority revoked it"
    # Only the issuer's own revocations count.
    node.revoked_credentials = {Authority().identifier: frozenset({c.id})}
    assert standing(peer, node, NOW).credentials == (c,)


@pytest.mark.parametrize(
    "change",
    [
        {"attributes": {"role": "admin"}},
        {"expires_at": T0 + 365 * DAY},
        {"signature": bytes(64)},
    ],
)
def test_a_forged_copy_never_rides_on_a_verified_credential(change: dict[str, object]) -> None:
    """The peer presents a genuine credential (verified, its verdict remembered), then a copy
    altered after issue in its place: the copy is judged on its own, and ignored."""
    a = Authority()
    me = subject()
    genuine = a.issue(me.identifier, {"role": "web"})
    node = Node("db", authorities=a.trusted)
    peer = peer_of(me, genuine, node=node)
    assert standing(peer, node, NOW).credentials == (genuine,)
    forged = dataclasses.replace(genuine, **change)  # type: ignore[arg-type]
    again = with_credentials(peer, [forged], NOW)
    assert again.presented == (forged,)  # it replaces the genuine one (same issuer)
    assert again.credentials == ()
    (note,) = standing(again, node, NOW).ignored
    assert note.startswith(f"credential {forged.id} from {a.identifier} ignored: it does not ")


def test_someone_elses_credential_and_a_stranger_authority() -> None:
    a = Authority()
    me, other = subject(), subject()
    stolen = a.issue(other.identifier, {"role": "db-client"})
    node = Node("db", authorities=a.trusted)
    peer = peer_of(me, stolen, node=node)
    (note,) = standing(peer, node, NOW).ignored
    assert f"the credential is about {other.identifier}, not {me.identifier}" in note
    # An identity posing as the authority under its identifier vouches for nothing.
    impostor = Authority()
    node.authorities[a.identifier] = impostor.identity
    genuine = peer_of(me, a.issue(me.identifier), node=node)
    assert "signing key is not validly attested" in standing(genuine, node, NOW).ignored[0]


def test_re_presenting_replaces_by_issuer_and_keeps_a_bounded_number() -> None:
    a, b = Authority(), Authority()
    me = subject()
    node = Node("db", authorities={**a.trusted, **b.trusted})
    first = a.issue(me.identifier, {"role": "web"})
    other = b.issue(me.identifier, {"team": "ops"})
    peer = peer_of(me, first, other, node=node)
    assert standing(peer, node, NOW).attributes == {"role": "web", "team": "ops"}
    refreshed = a.issue(me.identifier, {"role": "db-client"}, now=T0 + DAY + 1)
    peer = with_credentials(peer, [refreshed], NOW)
    assert peer.presented == (other, refreshed)
    assert standing(peer, node, NOW).attributes == {"role": "db-client", "team": "ops"}
    many = [Authority() for _ in range(12)]
    flood = with_credentials(peer, [x.issue(me.identifier) for x in many], NOW)
    assert len(flood.presented) == 8  # MAX_CREDENTIALS, the newest


def test_refusal_notes_say_what_the_policy_reads_and_the_peer_lacks() -> None:
    a = Authority()
    me = subject()
    node = Node("db", authorities=a.trusted)
    role = Policy.parse('subject.role = "db-client" and subject.team exists?')
    nobody = peer_of(me, node=node)
    assert refusal_notes(nobody, node, role, NOW) == [
        f"{me.identifier} presented no credential",
        f"{me.identifier} holds no attribute role, team (its attributes: none)",
    ]
    web = peer_of(me, a.issue(me.identifier, {"role": "web", "team": "x"}), node=node)
    assert refusal_notes(web, node, role, NOW) == ["its attributes: role=web, team=x"]
    # A policy on the identifier alone: credentials are beside the point.
    by_id = Policy.parse(f'subject.identifier = "{a.identifier}"')
    assert refusal_notes(nobody, node, by_id, NOW) == []
    assert refusal_notes(None, node, role, NOW) == []
    # Several refusing policies: what any of them reads.
    both = [Policy.parse('subject.role = "x"'), Policy.parse('subject.env = "prod"')]
    assert refusal_notes(web, node, both, NOW)[-1].startswith(f"{me.identifier} holds no attr")


def test_format_attributes() -> None:
    assert format_attributes({}) == ""
    assert format_attributes({"team": "ops", "role": "db-client"}) == "role=db-client, team=ops"


def test_check_issued_then_check_current_is_verify() -> None:
    """The two halves a verifier may split (the first remembered, the second at each use)
    refuse exactly what ``verify`` refuses."""
    a = Authority()
    me = subject()
    good = a.issue(me.identifier, now=T0 + DAY, ttl=10 * DAY)
    cases = [
        (good, NOW),
        (good, T0 + 30 * DAY),  # expired
        (good, T0),  # not valid yet
        (dataclasses.replace(good, attributes={"role": "x"}), NOW),  # altered
        (a.issue(subject().identifier), NOW),  # someone else's
    ]
    for c, now in cases:
        try:
            credential.verify(c, authorities=a.trusted, now=now, subject=me.identifier)
            whole: type[Exception] | None = None
        except CredentialError as e:
            whole = type(e)
        try:
            check_issued(c, a.identity, subject=me.identifier)
            check_current(c, now=now)
            split: type[Exception] | None = None
        except CredentialError as e:
            split = type(e)
        assert whole is split, (c, now)


def test_a_revoked_member_is_no_member_to_answer_a_channel() -> None:
    """The default trust of an enrolled node (a member of its authority must answer) judges the
    answering peer's credential now: once the node holds its revocation, it is refused."""
    a = Authority()
    me = subject()
    now = int(time.time())
    attestation = a.attest(now - DAY, now + DAY)  # (the helper's own is of 2023)
    c = a.issue(me.identifier, {"role": "db"}, now=now - 60, ttl=DAY, attestation=attestation)
    node = Node("app", authorities=a.trusted)
    peer = with_credentials(Peer(me, authorities=node.authorities), [c], now)
    check = trust_members(node.authorities, node)
    check(peer)  # a member
    node.revoked_credentials[a.identifier] = frozenset({c.id})
    with pytest.raises(ChannelRefusedError, match="its authority revoked it"):
        check(peer)
