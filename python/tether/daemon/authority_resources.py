"""The node daemon's control API for the authority it runs and the authorities it is a member
of: ``/authority`` (create, show, stop), its members and tickets, ``/enroll`` and
``/memberships`` (list, leave); see ``docs/control-api.md``. The daemon serves them with the
node's (:mod:`tether.daemon.main`)."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from tether.core.errors import TetherError
from tether.daemon.control import ApiError, Router
from tether.daemon.daemon import Daemon
from tether.daemon.specs import body_field, body_optional, found, or_default
from tether.node.fabric import fabric_users
from tether.services.authority import (
    DEFAULT_ADMIN_POLICY,
    DEFAULT_CREDENTIAL_TTL,
    DEFAULT_TICKET_TTL,
    Authority,
    AuthorityError,
)

api: Router[Daemon] = Router()


@api.add("GET", "/authority")
async def get_authority(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    waiting = d.restorer.infos("authority")
    return 200, waiting[0] if waiting and d.node.authority is None else _authority(d).info()


@api.add("POST", "/authority")
async def create_authority(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    if d.node.authority is not None:
        raise ApiError(409, "this node already runs an authority")
    for w in d.restorer.of("authority"):  # a saved one that could not start: this replaces it
        await d.restorer.take(w.section, w.key)
    spec = {
        "name": body_optional(body, "name") or "authority",
        "database": body_optional(body, "database"),
        "credential_ttl": int(or_default(body.get("credential_ttl"), DEFAULT_CREDENTIAL_TTL)),
        "admin_policy": body_optional(body, "admin_policy") or DEFAULT_ADMIN_POLICY,
    }
    trusted = body.get("trusted") or []
    if not isinstance(trusted, list):
        raise ApiError(400, "'trusted' must be a list of {identifier, attributes}")
    try:
        authority = await d.start_authority(spec)
        for t in trusted:
            await authority.add_member(
                str(t.get("identifier", "")), dict(t.get("attributes") or {}), added_by="operator"
            )
    except TetherError as e:
        if d.node.authority is not None:
            d.node.authority.stop()
            await d.node.stop_worker("authority")
            d.node.membership.authority = None
        raise ApiError(400, str(e), type(e).__name__) from None
    d.config.authority = spec
    d.persist()
    return 201, authority.info()


def _authority(d: Daemon) -> Authority:
    waiting = d.restorer.of("authority")
    if waiting:
        raise ApiError(409, f"this node's authority is not running: {waiting[0].error} (retrying)")
    if d.node.authority is None:
        raise ApiError(404, "this node runs no authority (`tether authority create`)")
    return d.node.authority


@api.add("GET", "/authority/members")
async def list_members(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    return 200, await _authority(d).members()


@api.add("POST", "/authority/members")
async def add_member(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    identifier = body_field(body, "identifier")
    attributes = body.get("attributes") or {}
    try:
        await _authority(d).add_member(identifier, attributes, added_by="operator")
    except TetherError as e:
        raise ApiError(400, str(e), type(e).__name__) from None
    return 201, {"identifier": identifier, "attributes": attributes}


@api.add("DELETE", "/authority/members/{identifier}")
async def delete_member(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    revoked = await _authority(d).delete_member(p["identifier"])
    return 200, {"deleted": p["identifier"], "revoked": revoked}


@api.add("POST", "/authority/fabric-users")
async def fabric_users_of(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    """Each member's NATS user on the fabric: the names it may claim by this node's policy."""
    names = body.get("names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ApiError(400, "'names' must be a list of fabric names")
    members = await _authority(d).members()
    try:
        users = fabric_users(d.node, members, names)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    return 200, [u.info() for u in users]


@api.add("POST", "/authority/tickets")
async def create_ticket(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    authority = _authority(d)
    attributes = dict(body.get("attributes") or {})
    relay = body_optional(body, "relay") or ""
    if relay:
        attributes["relay"] = relay  # the member may claim this relay name
    route = body_optional(body, "route") or _own_route(d)
    try:
        expires_in = int(or_default(body.get("expires_in"), DEFAULT_TICKET_TTL))
        # The authority counts from now or a second later: the expiry reported is never late.
        expires_at = int(time.time()) + expires_in
        ticket = await authority.create_ticket(
            attributes,
            expires_in=expires_in,
            usage_count=int(or_default(body.get("usage_count"), 1)),
            relay=relay,
            route=route,
            created_by="operator",
        )
    except (TetherError, ValueError) as e:
        raise ApiError(400, str(e), type(e).__name__) from None
    return 201, {
        "ticket": ticket.encode(),
        "authority": authority.identifier,
        "route": route,
        "attributes": attributes,
        "expires_at": expires_at,
    }


def _own_route(d: Daemon) -> str:
    """A route to this node for a ticket: its first TCP listener."""
    listeners = list(d.node.tcp.listeners.values())
    if not listeners:
        raise ApiError(
            400,
            "this node has no TCP listener to put in the ticket: give --route (for example the "
            "relay forwarder that reaches it)",
        )
    host, port = listeners[0].host, listeners[0].port
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host  # noqa: S104
    try:
        kind = "ip6" if ipaddress.ip_address(host).version == 6 else "ip4"
    except ValueError:
        kind = "dnsaddr"
    return f"/{kind}/{host}/tcp/{port}"


@api.add("POST", "/enroll")
async def enroll(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    text = body_field(body, "ticket")
    poll = float(or_default(body.get("poll_interval"), 60.0))
    try:
        m = await d.node.enroll(text, poll_interval=poll)
    except AuthorityError as e:
        raise ApiError(422, str(e), "AuthorityError") from None
    except (TetherError, TimeoutError) as e:
        raise ApiError(400, f"enrollment failed: {e}", type(e).__name__) from None
    await d.restorer.take("memberships", m.identifier)  # a saved one that waited: replaced
    d.config.memberships = [x for x in d.config.memberships if x.get("identifier") != m.identifier]
    d.config.memberships.append(
        {
            "identifier": m.identifier,
            "authority": m.authority.history.hex(),
            "route": m.route,
            "poll_interval": poll,
        }
    )
    d.persist()
    return 201, m.info()


@api.add("DELETE", "/memberships/{identifier}")
async def delete_membership(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    identifier = p["identifier"]
    if not await d.forget_waiting("memberships", "identifier", identifier):
        found(d.node.memberships, identifier, "membership of")
        d.node.membership.leave(identifier)
        d.unsave("memberships", "identifier", identifier)
    return 204, None


@api.add("DELETE", "/authority")
async def delete_authority(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    """Stop running the node's authority (its members' state stays in its database: creating
    it again with the same identity and database takes it up)."""
    spec = d.config.authority
    name = str((spec or {}).get("name", "authority"))
    if spec is None or await d.restorer.take("authority", name) is None:
        a = d.node.authority
        if a is None:
            raise ApiError(404, f"node {d.node.name} runs no authority")
        a.stop()
        await d.node.stop_worker("authority")
        d.node.membership.authority = None
        if a.identifier not in d.node.memberships:
            d.node.authorities.pop(a.identifier, None)
    d.config.authority = None
    d.persist()
    return 204, None


@api.add("GET", "/memberships")
async def list_memberships(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    return 200, [m.info() for m in d.node.memberships.values()] + d.restorer.infos("memberships")
