"""Policies attached to a node's resources (``docs/authority.md``, "Policies"): a policy on a
resource by name, or on every resource of a type, evaluated for the verified peer of the channel
a request came through (deny by default). ``Node`` has these as methods (its
``policies``: id → :class:`PolicyRule`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.errors import InvalidArgumentError, TetherError

if TYPE_CHECKING:
    from tether.node import Node


@dataclass(frozen=True)
class PolicyRule:
    """A policy attached to a resource (by name) or to a resource type."""

    id: str
    resource: str | None
    resource_type: str | None
    policy: Any

    def info(self) -> dict[str, object]:
        return {
            "id": self.id,
            "resource": self.resource,
            "resource_type": self.resource_type,
            "expression": str(self.policy),
        }


def add_policy(
    node: Node,
    expression: str,
    *,
    resource: str | None = None,
    resource_type: str | None = None,
    policy_id: str | None = None,
) -> PolicyRule:
    """Attach a policy to the resource named ``resource`` (optionally of ``resource_type``)
    or to every resource of ``resource_type``: tcp-outlet, tcp-inlet, relay,
    secure-channel-listener, or a worker kind (echo, authority, …). A resource's own
    ``allow`` comes first, then a policy for its name, then one for its type."""
    from tether.policy import Policy

    if not resource and not resource_type:
        raise InvalidArgumentError("a policy needs a resource name or a resource type")
    rule = PolicyRule(
        policy_id or node.next_id("policy").replace("#", ""),
        resource,
        resource_type,
        Policy.parse(expression),
    )
    node.policies[rule.id] = rule
    return rule


def delete_policy(node: Node, policy_id: str) -> None:
    if node.policies.pop(policy_id, None) is None:
        raise TetherError(f"no policy {policy_id!r} on node {node.name}")


def policy_for(node: Node, resource_type: str, name: str) -> Any:
    """The policy that applies to resource ``name`` of ``resource_type`` (None: none)."""
    by_type = None
    for rule in node.policies.values():
        if rule.resource == name and rule.resource_type in (None, resource_type):
            return rule.policy
        if rule.resource is None and rule.resource_type == resource_type:
            by_type = rule.policy
    return by_type


def allows(
    node: Node,
    policy: Any,
    channel: Any,
    resource_type: str,
    name: str,
    action: str,
) -> bool:
    """Evaluate ``policy`` for the peer of ``channel`` (None: a message that came through
    no secure channel, so with no authenticated attributes at all)."""
    return peer_allows(
        node, policy, None if channel is None else channel.peer, resource_type, name, action
    )


def peer_allows(
    node: Node,
    policy: Any,
    peer: Any,
    resource_type: str,
    name: str,
    action: str,
) -> bool:
    """:meth:`allows` for a verified :class:`~tether.channel.Peer` (None: no peer), with
    the attributes of its credentials still valid now."""
    from tether.policy import subject_attributes
    from tether.trust import valid_attributes

    env: dict[str, object] = (
        subject_attributes(peer.identifier, valid_attributes(peer, node))
        if peer is not None
        else {}
    )
    env.update({"resource.type": resource_type, "resource.name": name, "action.name": action})
    return bool(policy.allows(env))
