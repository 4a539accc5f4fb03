"""What a control request, or a saved configuration entry, says about a resource: the fields of
a JSON body, the identity and trust a spec names, and the kinds of service a daemon runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from tether.core.message import Handler
from tether.daemon.control import ApiError
from tether.identity.registry import Registry
from tether.identity.trust import ChannelIdentity, TrustPolicy, trust_anyone, trust_identifiers
from tether.node.worker import echo

SERVICE_KINDS: dict[str, Handler] = {"echo": echo}
"""The services a daemon runs by kind (``tether service create --kind``)."""

ItemT = TypeVar("ItemT")


def found(table: Mapping[str, ItemT], key: str, what: str) -> ItemT:
    """``table[key]``, or 404 naming what is missing."""
    if key not in table:
        raise ApiError(404, f"no {what} {key!r}")
    return table[key]


def or_default(value: Any, default: Any) -> Any:
    """``value`` unless it is absent (None): 0 is a value, and is checked as one."""
    return default if value is None else value


def body_optional(body: Any, name: str) -> str | None:
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name!r} must be a string")
    return value or None


def body_field(body: Any, name: str) -> str:
    if not isinstance(body, dict) or not isinstance(body.get(name), str):
        raise ApiError(400, f"the body must be a JSON object with a string {name!r}")
    return str(body[name])


def identity_and_trust(
    registry: Registry, spec: Mapping[str, Any]
) -> tuple[ChannelIdentity | None, TrustPolicy | None]:
    """The identity a spec names (``identity``: a name in ``registry``; None: the node's) and
    its trust (:func:`trust_of`)."""
    name = spec.get("identity")
    identity = registry.channel_identity(str(name)) if name else None
    return identity, trust_of(spec)


def trust_of(spec: Mapping[str, Any]) -> TrustPolicy | None:
    """The trust policy a spec names: ``authorized`` identifiers, or ``trust_any`` (any
    identity, explicitly); None leaves it to the node's defaults
    (``tether.identity.trust.initiator_trust``)."""
    authorized = spec.get("authorized") or []
    if not isinstance(authorized, list) or not all(isinstance(a, str) for a in authorized):
        raise ApiError(400, "'authorized' must be a list of identifiers")
    trust_any = spec.get("trust_any", False)
    if not isinstance(trust_any, bool):
        raise ApiError(400, "'trust_any' must be true or false")
    if trust_any and authorized:
        raise ApiError(400, "give 'authorized' identifiers or 'trust_any', not both")
    if trust_any:
        return trust_anyone
    return trust_identifiers(*authorized) if authorized else None
