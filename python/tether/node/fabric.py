"""Who may claim which name on a NATS fabric, decided by tether's policy and compiled into the
NATS servers' authorization (``tether fabric users``; ``docs/routing.md``, "The NATS fabric").

The cluster enforces what a node may do on it through each node's NATS user: publish only to
``tether.*.ID`` (so a message's subject names its true sender) and subscribe only to
``tether.ID.*`` and ``tether.NAME.*`` for each name it may claim. Which names those are is
tether's decision, the same as for a relay name (``docs/relays.md``): the ``relay`` policies of
the node that runs the authority, evaluated for each member with the attributes the authority
gives it; with no policy for a name, the members whose ticket granted it (``tether ticket
create --relay-name NAME``, the credential attribute ``relay``, or ``*`` for any). Never first
come: a name no member may claim is claimed by nobody.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tether.identity.policy import subject_attributes
from tether.node.policies import PolicyHolder, applicable
from tether.node.routing import FABRIC_NAME
from tether.node.transport.nats import PREFIX

CLAIM = "claim"
RESOURCE_TYPE = "relay"
"""Fabric names are claimed under the same policies as relay names."""


@dataclass(frozen=True)
class FabricUser:
    """One node's NATS user: its identifier, and the names it may claim (and why others not)."""

    identifier: str
    claims: tuple[str, ...]
    refused: Mapping[str, str] = field(default_factory=dict)

    def permissions(self) -> dict[str, object]:
        """The NATS permissions that make the subjects trustworthy (see the module)."""
        subscribe = [f"{PREFIX}.{self.identifier}.*", *(f"{PREFIX}.{n}.*" for n in self.claims)]
        return {
            "publish": {"allow": [f"{PREFIX}.*.{self.identifier}"]},
            "subscribe": {"allow": subscribe},
        }

    def info(self) -> dict[str, object]:
        return {
            "identifier": self.identifier,
            "claims": list(self.claims),
            "refused": dict(self.refused),
            "permissions": self.permissions(),
        }


def claim_refusal(
    node: PolicyHolder, identifier: str, attributes: Mapping[str, str], name: str
) -> str | None:
    """Why the member ``identifier`` with ``attributes`` may not claim ``name`` on the fabric
    (None: it may)."""
    found = applicable(node, RESOURCE_TYPE, name)
    if found:
        env = subject_attributes(identifier, attributes)
        env.update({"resource.type": RESOURCE_TYPE, "resource.name": name, "action.name": CLAIM})
        refusing = [a for a in found if not a.policy.allows(env)]
        if not refusing:
            return None
        return "refused by " + ", and by ".join(f"{a.label}: {a.policy}" for a in refusing)
    if attributes.get("relay") in (name, "*"):
        return None
    return (
        f"no relay policy on node {node.name} governs {name!r} and no ticket granted it "
        f"(`tether policy create --at {node.name} --resource-type relay --resource {name} "
        "EXPR`, or `tether ticket create --relay-name NAME`)"
    )


def fabric_users(
    node: PolicyHolder, members: Sequence[Mapping[str, object]], names: Sequence[str]
) -> list[FabricUser]:
    """Each member's NATS user: the ``names`` (and the names its ticket granted) it may claim.
    ``members`` as the authority lists them (``identifier``, ``attributes``)."""
    for name in names:
        if not FABRIC_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a fabric name: use 1 to 64 ASCII letters, digits, '-' or '_'"
            )
    users = []
    for m in members:
        identifier = str(m["identifier"])
        raw = m.get("attributes")
        attributes = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
        candidates = list(names)
        granted = attributes.get("relay", "")
        if FABRIC_NAME.fullmatch(granted) and granted not in candidates:
            candidates.append(granted)
        claims: list[str] = []
        refused: dict[str, str] = {}
        for name in candidates:
            why = claim_refusal(node, identifier, attributes, name)
            if why is None:
                claims.append(name)
            else:
                refused[name] = why
        users.append(FabricUser(identifier, tuple(claims), refused))
    return users


def authorization_block(users: Sequence[FabricUser], passwords: Mapping[str, str]) -> str:
    """The ``authorization`` block of a ``nats-server`` configuration (the same on every server
    of the cluster) for ``users``, each with its password from ``passwords`` (by identifier)."""
    entries = [
        {"user": u.identifier, "password": passwords[u.identifier], "permissions": u.permissions()}
        for u in users
    ]
    lines = ",\n  ".join(json.dumps(e) for e in entries)
    return f"authorization {{ users: [\n  {lines}\n] }}\n"
