"""Who trusts whom in tests: the explicit trust a test's nodes need (nodes never trust an
unnamed peer by default, and a relay takes claims only from whom its operator allows)."""

from __future__ import annotations

from tether.api import Node
from tether.identity.trust import TrustPolicy, trust_identifiers


def identifier(node: Node) -> str:
    assert node.identity is not None, f"node {node.name} has no identity"
    return node.identity.identity.identifier


def expect(*nodes: Node) -> TrustPolicy:
    """Trust exactly the identities of ``nodes`` at the far end of a channel."""
    return trust_identifiers(*(identifier(n) for n in nodes))


def allow_claims(relay: Node, *claimers: Node) -> None:
    """Let ``claimers`` claim relay names at ``relay`` (its operator's policy)."""
    ids = ", ".join(f'"{identifier(c)}"' for c in claimers)
    relay.add_policy(f"subject.identifier member? [{ids}]", resource_type="relay")
