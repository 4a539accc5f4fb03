"""Policies attached to a node's resources (``docs/authority.md``, "Policies"): a policy on a
resource by name, or on every resource of a type, evaluated for the verified peer of the channel
a request came through (deny by default). ``Node`` has these as methods (its
``policies``: id → :class:`PolicyRule`).

**Every policy that applies must allow.** A resource is governed by every policy attached to its
type (``--resource-type TYPE``), every policy attached to its name (``--resource NAME``, of its
type or of no type) and its own ``--allow``; the caller must satisfy all of them. None is more
specific than another and none replaces another: a type-wide policy is a floor that a resource's
own rules can only narrow. :func:`check` is that rule, for every resource that has policies (the
portals, the secure-channel listeners, relay names, the services); :func:`effective` describes
it for a resource's ``show``.

Policy names are sequential per node (``policy1``, ``policy2``, …): the node's
``policy_serial`` is the last number given, and a deleted policy's name is never given again
(the daemon saves the serial with the node's configuration).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tether.core.errors import AlreadyExistsError, InvalidArgumentError, TetherError
from tether.identity.policy import Policy
from tether.identity.trust import Peer, TrustContext, environment, explain

_POLICY_ID = re.compile(r"policy([1-9][0-9]*)")

NO_PEER = "a sender without a secure channel"
"""Who a message that came through no secure channel is, in a refusal."""


@dataclass(frozen=True)
class PolicyRule:
    """A policy attached to a resource (by name) or to a resource type."""

    id: str
    resource: str | None
    resource_type: str | None
    policy: Policy

    def matches(self, resource_type: str, name: str) -> bool:
        """Does this rule govern resource ``name`` of ``resource_type``?"""
        return matches(self.resource, self.resource_type, resource_type, name)

    def scope(self) -> str:
        """What the rule is attached to: ``every tcp-outlet``, ``tcp-outlet 'db'``."""
        if self.resource is None:
            return f"every {self.resource_type}"
        return f"{self.resource_type or 'resource'} {self.resource!r}"

    def info(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.id,
            "resource": self.resource,
            "resource_type": self.resource_type,
            "expression": str(self.policy),
        }


def matches(resource: str | None, rule_type: str | None, resource_type: str, name: str) -> bool:
    """Does a rule attached to ``resource`` (a name, or None: every resource of its type) and
    ``rule_type`` (None: any type) govern resource ``name`` of ``resource_type``? The one
    definition, which the command line uses to list the policies of one resource too."""
    if resource is None:
        return rule_type == resource_type
    return resource == name and rule_type in (None, resource_type)


@dataclass(frozen=True)
class Applicable:
    """One policy that governs a resource: a node's :class:`PolicyRule` (``id`` set), or the
    resource's own ``--allow`` (``id`` None)."""

    id: str | None
    scope: str
    policy: Policy

    @property
    def label(self) -> str:
        """How a refusal names it: ``the policy policy2 (every tcp-outlet)``."""
        if self.id is None:
            return f"the --allow of {self.scope}"
        return f"the policy {self.id} ({self.scope})"

    def info(self) -> dict[str, object]:
        return {
            "id": self.id,
            "applies_to": f"its --allow ({self.scope})" if self.id is None else self.scope,
            "expression": str(self.policy),
        }


RESOURCE_TYPES = (
    "tcp-outlet",
    "tcp-inlet",
    "relay",
    "secure-channel-listener",
    "authority",
    "relay-service",
    "stream",
)
"""The resource types a policy can govern besides service kinds (``echo``, …): what
``tether policy create --resource-type`` accepts."""


class PolicyHolder(TrustContext, Protocol):
    """What the node's policies are kept on (a :class:`~tether.node.node.BaseNode`): its
    policies by id, the number of the last one named, and who is told of each one added
    (``policy_added``: the features whose resources decide again, such as the portals)."""

    policies: dict[str, PolicyRule]
    policy_serial: int
    policy_refusals: dict[tuple[str, str], int]

    @property
    def policy_added(self) -> list[Callable[[PolicyRule], None]]: ...


def add_policy(
    node: PolicyHolder,
    expression: str,
    *,
    resource: str | None = None,
    resource_type: str | None = None,
    policy_id: str | None = None,
) -> PolicyRule:
    """Attach a policy to the resource named ``resource`` (optionally of ``resource_type``)
    or to every resource of ``resource_type``: tcp-outlet, tcp-inlet, relay,
    secure-channel-listener, or a worker kind (echo, authority, …). It adds to those that
    already apply (all must allow). Named ``policyN``, the node's next number, unless
    ``policy_id`` restores a saved one."""
    if not resource and not resource_type:
        raise InvalidArgumentError("a policy needs a resource name or a resource type")
    parsed = Policy.parse(expression)  # before a number is taken: a refused text takes none
    if policy_id is None:
        node.policy_serial += 1
        while f"policy{node.policy_serial}" in node.policies:
            node.policy_serial += 1
        policy_id = f"policy{node.policy_serial}"
    elif policy_id in node.policies:
        raise AlreadyExistsError(f"a policy {policy_id!r} already exists on node {node.name}")
    else:
        number = _POLICY_ID.fullmatch(policy_id)
        if number is not None:
            node.policy_serial = max(node.policy_serial, int(number.group(1)))
    rule = PolicyRule(policy_id, resource or None, resource_type or None, parsed)
    node.policies[rule.id] = rule
    # Stricter from now on: what the resources it governs let run (the data plane opens portal
    # sessions alone for a channel once allowed) is decided again at once, not at the next
    # periodic recheck.
    for added in list(node.policy_added):
        added(rule)
    return rule


def delete_policy(node: PolicyHolder, policy_id: str) -> None:
    if node.policies.pop(policy_id, None) is None:
        raise TetherError(f"no policy {policy_id!r} on node {node.name}")


def applicable(
    node: PolicyHolder, resource_type: str, name: str, own: Policy | None = None
) -> list[Applicable]:
    """Every policy that governs resource ``name`` of ``resource_type``: the node's policies
    for its type, then those for its name, then ``own`` (its ``--allow``), each in the order
    they were added. Empty: no policy applies (the resource's default decides)."""
    rules = [r for r in node.policies.values() if r.matches(resource_type, name)]
    rules.sort(key=lambda r: r.resource is not None)  # type-wide first; stable otherwise
    found = [Applicable(r.id, r.scope(), r.policy) for r in rules]
    if own is not None:
        found.append(Applicable(None, f"{resource_type} {name!r}", own))
    return found


def check(
    node: PolicyHolder,
    resource_type: str,
    name: str,
    action: str,
    peer: Peer | None,
    *,
    own: Policy | None = None,
    peer_named: bool = False,
) -> str | None:
    """The decision for ``peer`` (a verified :class:`~tether.identity.trust.Peer`, with the
    attributes of its credentials still valid now; None: a sender that came through no secure
    channel) doing ``action`` on resource ``name`` of ``resource_type`` whose own ``--allow`` is
    ``own``: None when every applicable policy allows it (or none applies), else why not, in
    one line naming each policy that refuses and its expression, e.g. ``I… is refused by the
    policy policy2 (every tcp-outlet): subject.role = "db-client"``, followed by why the
    peer's credentials did not give the attributes those policies read
    (:func:`tether.identity.trust.refusal_notes`: untrusted issuer, expired, revoked, missing).

    Each refusal is counted on the node (``policy_refusals``, by resource type and name: the
    metric ``tether_policy_refusals_total``). A name the peer chose (``peer_named``: a relay
    name it claims) is counted as ``*`` unless a policy names it, so that peers cannot add
    labels: the names counted are the operator's."""
    found = applicable(node, resource_type, name, own)
    if not found:
        return None
    env = environment(node, peer, resource_type, name, action)
    refusing = [a for a in found if not a.policy.allows(env)]
    if not refusing:
        return None
    named = not peer_named or any(
        r.resource == name for r in node.policies.values() if r.matches(resource_type, name)
    )
    key = (resource_type, name if named else "*")
    node.policy_refusals[key] = node.policy_refusals.get(key, 0) + 1
    who = NO_PEER if peer is None else peer.identifier
    reason = f"{who} is refused by " + ", and by ".join(f"{a.label}: {a.policy}" for a in refusing)
    # Why its credentials did not give what the policies read (tether.identity.trust.refusal_notes).
    notes = explain(peer, node, [a.policy for a in refusing])
    return f"{reason}; {notes}" if notes else reason


def effective(
    node: PolicyHolder, resource_type: str, name: str, own: Policy | None = None, *, default: str
) -> dict[str, object]:
    """The effective policy of a resource, for its ``show``: the policies that apply (each
    with its id, what it is attached to and its expression), how they combine (``all``: every
    one must allow), the combined expression, and ``default``: who may use the resource when
    no policy applies."""
    found = applicable(node, resource_type, name, own)
    texts = [str(a.policy) for a in found]
    combined = texts[0] if len(texts) == 1 else " and ".join(f"({t})" for t in texts) or None
    return {
        "combine": "all",
        "policies": [a.info() for a in found],
        "expression": combined,
        "default": default,
    }


def describe(effective: Mapping[str, Any] | None, indent: str = "  ") -> str:
    """The human lines of an :func:`effective` policy (as a resource's ``show`` prints it)."""
    if not effective:
        return ""
    found = effective.get("policies") or []
    if not found:
        return f"{indent}policy: none applies; {effective.get('default')}"
    lines = [f"{indent}policy: every one of these must allow the peer"]
    for p in found:
        source = f"{p['id']} ({p['applies_to']})" if p.get("id") else p["applies_to"]
        lines.append(f"{indent}  {source}: {p['expression']}")
    return "\n".join(lines)
