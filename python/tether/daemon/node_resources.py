"""The control API's resources of a node (``docs/control-api.md``): the node itself, its
listeners, services, secure channels and their listeners, relays, tcp-outlets and tcp-inlets,
policies, relay claims, connections, and messages. Each creates, deletes or shows what the
running node has, and saves the change in its configuration; a saved one that waits to start
(:mod:`tether.daemon.restore`) shows and deletes like a running one."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tether.channel.channel import open_channels
from tether.core.errors import InvalidArgumentError, TetherError
from tether.daemon.control import ApiError, Raw, Router
from tether.daemon.daemon import Daemon, listen_address
from tether.daemon.specs import (
    SERVICE_KINDS,
    body_field,
    body_optional,
    found,
    identity_and_trust,
    trust_of,
)
from tether.identity.registry import check_name
from tether.identity.trust import ChannelRefusedError
from tether.node import policies
from tether.node.node import ReplyTimeoutError, UnreachableError
from tether.node.policies import PolicyRule
from tether.node.routing import format_route
from tether.services.relay import RelayClaimError

api: Router[Daemon] = Router()


class _Resource(Protocol):
    def info(self) -> dict[str, object]: ...


@api.add("GET", "/node")
async def get_node(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    return 200, {
        **d.runtime(),
        "identity": d.config.identity,
        "workers": d.node.workers(),
        "connections": [c.info() for c in d.node.tcp.connections.values()],
        "secure_channels": [c.info() for c in open_channels(d.node).values()],
        "secure_channel_listeners": [lst.info() for lst in d.node.channel_listeners.values()],
        "transit": sorted(d.node.transit),
        "nats": d.node.nats.info() if d.node.nats is not None else None,
        "limits": {
            "max_connections": d.node.tcp.max_connections,
            "pending_handshakes": d.node.pending_handshakes,
        },
        "counters": dict(d.node.counters),
        "policy_refusals": d.node.policy_refusal_counts(),
        "backpressure": d.node.backpressure_events(),
    }


@api.add("GET", "/metrics")
async def get_metrics(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    """The node's Prometheus metrics (docs/metrics.md), in the text exposition format."""
    return 200, Raw(d.metrics.content_type, d.metrics.exposition())


@api.add("POST", "/shutdown")
async def shutdown(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    d.stop.set()
    return 200, {"stopping": d.config.name}


@api.add("GET", "/listeners")
async def list_listeners(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    live = [lst.info() for lst in d.node.tcp.listeners.values()]
    return 200, live + d.restorer.infos("tcp_listeners")


@api.add("POST", "/listeners")
async def create_listener(d: Daemon, _params: dict[str, str], body: Any) -> tuple[int, Any]:
    address = body_field(body, "address")
    try:
        host, port = listen_address(address)
    except InvalidArgumentError as e:
        raise ApiError(400, str(e)) from None
    lst = await d.node.listen_tcp(host, port)
    d.listener_specs[lst.id] = address
    d.config.tcp_listeners.append(address)
    d.persist()
    d.write_runtime()
    return 201, lst.info()


@api.add("DELETE", "/listeners/{id}")
async def delete_listener(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    if await d.restorer.take("tcp_listeners", p["id"]):  # one that waits: its id is its spec
        d.unsave("tcp_listeners", "", p["id"])
        return 204, None
    found(d.node.tcp.listeners, p["id"], "listener")
    await d.node.tcp.stop_listener(p["id"])
    spec = d.listener_specs.pop(p["id"], None)
    if spec in d.config.tcp_listeners:
        d.config.tcp_listeners.remove(spec)
    d.persist()
    d.write_runtime()
    return 204, None


@api.add("GET", "/services")
async def list_services(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    return 200, d.node.workers()


@api.add("POST", "/services")
async def create_service(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    kind = body_field(body, "kind")
    address = check_name(body_field(body, "address"), "service")
    if kind not in SERVICE_KINDS:
        raise ApiError(400, f"unknown service kind {kind!r}; known: {sorted(SERVICE_KINDS)}")
    if d.node.has_worker(address):
        raise ApiError(409, f"a worker already listens at {address!r}")
    d.restorer.check_free("services", address, "service")
    allow = body_optional(body, "allow")
    rule = _allow_policy(d, allow, address, kind)
    await d.node.start_worker(address, SERVICE_KINDS[kind], kind=kind)
    d.config.services.append({"kind": kind, "address": address})
    d.persist()
    return 201, {"kind": kind, "address": address, "policy": rule.info() if rule else None}


@api.add("DELETE", "/services/{address}")
async def delete_service(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    if await d.forget_waiting("services", "address", p["address"]):
        return 204, None
    if not d.node.has_worker(p["address"]):
        raise ApiError(404, f"no service at {p['address']!r}")
    await d.node.stop_worker(p["address"])
    d.unsave("services", "address", p["address"])
    return 204, None


@api.add("POST", "/secure-channels")
async def create_channel(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    to = body_field(body, "to")
    identity, trust = identity_and_trust(d.registry, body)
    try:
        channel = await d.node.create_secure_channel(
            to, identity=identity, trust=trust, timeout=float(body.get("timeout", 10))
        )
    except ChannelRefusedError as e:
        raise ApiError(422, str(e), "ChannelRefusedError") from None
    return 201, channel.info()


@api.add("DELETE", "/secure-channels/{address}")
async def delete_channel(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    await found(d.node.channels, p["address"], "secure channel").close()
    return 204, None


@api.add("GET", "/secure-channel-listeners")
async def list_channel_listeners(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    live = [lst.info() for lst in d.node.channel_listeners.values()]
    return 200, live + d.restorer.infos("channel_listeners")


@api.add("GET", "/secure-channel-listeners/{address}")
async def get_channel_listener(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    w = d.restorer.get("channel_listeners", p["address"])  # saved, waiting to start
    if w is not None:
        return 200, w.info()
    return 200, found(d.node.channel_listeners, p["address"], "secure-channel listener").info()


@api.add("POST", "/secure-channel-listeners")
async def create_channel_listener(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    # (a name that goes in routes and URLs)
    address = check_name(body_field(body, "address"), "secure-channel listener")
    if d.node.has_worker(address):
        raise ApiError(409, f"a worker already listens at {address!r}")
    d.restorer.check_free("channel_listeners", address, "secure-channel listener")
    identity, trust = identity_and_trust(d.registry, body)
    _allow_policy(d, body_optional(body, "allow"), address, "secure-channel-listener")
    listener = await d.node.create_secure_channel_listener(address, identity=identity, trust=trust)
    d.config.channel_listeners.append(
        {k: v for k, v in body.items() if k in ("address", "identity", "authorized")}
    )
    d.persist()
    return 201, listener.info()


@api.add("DELETE", "/secure-channel-listeners/{address}")
async def delete_channel_listener(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    if await d.forget_waiting("channel_listeners", "address", p["address"]):
        return 204, None
    found(d.node.channel_listeners, p["address"], "secure-channel listener")
    del d.node.channel_listeners[p["address"]]
    await d.node.stop_worker(p["address"])
    d.unsave("channel_listeners", "address", p["address"])
    return 204, None


@api.add("POST", "/relays")
async def create_relay(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    name = body_field(body, "name")
    at = body_field(body, "at")
    if name in d.node.relays:
        raise ApiError(409, f"this node already keeps a relay named {name!r}")
    d.restorer.check_free("relays", name, "relay")
    trust_spec = {k: body[k] for k in ("authorized", "trust_any") if body.get(k)}
    try:
        relay = await d.node.create_relay(name, at, trust=trust_of(body))
    except RelayClaimError as e:
        raise ApiError(422, str(e), "RelayClaimError") from None
    d.config.relays.append({"name": name, "at": at, **trust_spec})
    d.persist()
    return 201, relay.info()


@api.add("DELETE", "/relays/{name}")
async def delete_relay(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    if await d.forget_waiting("relays", "name", p["name"]):
        return 204, None
    found(d.node.relays, p["name"], "relay")
    await d.node.delete_relay(p["name"])
    d.unsave("relays", "name", p["name"])
    return 204, None


@api.add("POST", "/tcp-outlets")
async def create_outlet(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    to = body_field(body, "to")
    name = body_optional(body, "name") or "outlet"
    allow = body_optional(body, "allow")
    if d.node.has_worker(name):
        raise ApiError(409, f"this node already has a service at {name!r}; choose another --name")
    d.restorer.check_free("tcp_outlets", name, "tcp-outlet")
    try:
        outlet = await d.node.create_tcp_outlet(to, name=name, allow=allow)
    except TetherError as e:
        raise ApiError(400, str(e), type(e).__name__) from None
    d.config.tcp_outlets.append({"name": name, "to": to, "allow": allow})
    d.persist()
    return 201, outlet.info()


@api.add("DELETE", "/tcp-outlets/{name}")
async def delete_outlet(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    if await d.forget_waiting("tcp_outlets", "name", p["name"]):
        return 204, None
    found(d.node.outlets, p["name"], "tcp-outlet")
    await d.node.delete_tcp_outlet(p["name"])
    d.unsave("tcp_outlets", "name", p["name"])
    return 204, None


@api.add("POST", "/tcp-inlets")
async def create_inlet(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    bind = body_field(body, "from")
    to = body_field(body, "to")
    name = body_optional(body, "name")
    allow = body_optional(body, "allow")
    if name is not None and name in d.node.inlets:
        raise ApiError(409, f"this node already has a tcp-inlet named {name!r}")
    if name is not None:
        d.restorer.check_free("tcp_inlets", name, "tcp-inlet")
    else:  # inletN: not the name of a saved one that waits either
        taken = {*d.node.inlets, *(w.key for w in d.restorer.of("tcp_inlets"))}
        name = next(f"inlet{k}" for k in itertools.count(1) if f"inlet{k}" not in taken)
    trust_spec = {k: body[k] for k in ("authorized", "trust_any") if body.get(k)}
    try:
        inlet = await d.node.create_tcp_inlet(
            bind, to, name=name, allow=allow, trust=trust_of(body)
        )
    except TetherError as e:
        raise ApiError(400, str(e), type(e).__name__) from None
    # Persist the port actually bound (port 0 picks one): a restart listens there again.
    d.config.tcp_inlets.append(
        {"name": inlet.name, "from": inlet.address, "to": to, "allow": allow, **trust_spec}
    )
    d.persist()
    return 201, inlet.info()


@api.add("DELETE", "/tcp-inlets/{name}")
async def delete_inlet(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    if await d.forget_waiting("tcp_inlets", "name", p["name"]):
        return 204, None
    found(d.node.inlets, p["name"], "tcp-inlet")
    await d.node.delete_tcp_inlet(p["name"])
    d.unsave("tcp_inlets", "name", p["name"])
    return 204, None


@api.add("POST", "/policies")
async def create_policy(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    expression = body_field(body, "expression")
    resource_type = body_optional(body, "resource_type")
    if resource_type is not None:
        kinds = (str(w["kind"]) for w in d.node.workers())
        known = {*policies.RESOURCE_TYPES, *SERVICE_KINDS, *kinds}
        if resource_type not in known:
            raise ApiError(
                400,
                f"unknown resource type {resource_type!r} (a policy for it would never apply); "
                f"use one of: {', '.join(sorted(known))}",
            )
    rule = _add_policy(d, expression, body_optional(body, "resource"), resource_type)
    return 201, rule.info()


@api.add("DELETE", "/policies/{id}")
async def delete_policy(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    if await d.forget_waiting("policies", "id", p["id"]):
        d.node.policies.pop(p["id"], None)  # the ``false`` it held in its place
        return 204, None
    found(d.node.policies, p["id"], "policy")
    d.node.delete_policy(p["id"])
    d.unsave("policies", "id", p["id"])
    return 204, None


@api.add("GET", "/relay-claims")
async def list_claims(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    return 200, d.node.relay_service.info() if d.node.relay_service else []


@api.add("GET", "/connections")
async def list_connections(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    return 200, [c.info() for c in d.node.tcp.connections.values()]


@api.add("POST", "/messages")
async def send_message(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    to = body_field(body, "to")
    payload = body_field(body, "message").encode()
    timeout = float(body.get("timeout", 10))
    route = d.node.parse_route(to)
    try:
        # The route as written: a /node/NAME in it says whose identity its channels expect.
        reply = await d.node.request(to, payload, timeout=timeout, trust=trust_of(body))
    except UnreachableError as e:
        raise ApiError(502, str(e), "UnreachableError") from None
    except ReplyTimeoutError as e:
        raise ApiError(504, str(e), "ReplyTimeoutError") from None
    except ChannelRefusedError as e:
        raise ApiError(422, str(e), "ChannelRefusedError") from None
    return 200, {
        "route": format_route(route),
        "reply": reply.decode("utf-8", "replace"),
        "reply_hex": reply.hex(),
    }


def _readable(
    path: str, what: str, table: Callable[[Daemon], Mapping[str, _Resource]], section: str = ""
) -> None:
    """``GET /path`` (every item's ``info()``) and ``GET /path/{key}`` (one, or 404) for a
    table of the node's resources, with the saved ones of configuration ``section`` that wait
    to start (``tether.daemon.restore``: in the state ``error``, with the reason)."""

    @api.add("GET", path)
    async def list_all(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
        waiting = {w.key: w.info() for w in d.restorer.of(section)}
        live = [waiting.pop(k, x.info()) for k, x in table(d).items()]
        return 200, live + list(waiting.values())

    @api.add("GET", path + "/{key}")
    async def get_one(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
        w = d.restorer.get(section, p["key"])
        return 200, w.info() if w is not None else found(table(d), p["key"], what).info()


_readable("/secure-channels", "secure channel", lambda d: open_channels(d.node))
_readable("/relays", "relay", lambda d: d.node.relays, "relays")
_readable("/tcp-outlets", "tcp-outlet", lambda d: d.node.outlets, "tcp_outlets")
_readable("/tcp-inlets", "tcp-inlet", lambda d: d.node.inlets, "tcp_inlets")
_readable("/policies", "policy", lambda d: d.node.policies, "policies")


def _allow_policy(d: Daemon, allow: str | None, name: str, resource_type: str) -> PolicyRule | None:
    """``--allow EXPR`` on a command that creates a resource: a policy attached to it by name
    (saved like any policy; `tether policy list` shows it)."""
    return _add_policy(d, allow, name, resource_type) if allow else None


def _add_policy(
    d: Daemon, expression: str, resource: str | None, resource_type: str | None
) -> PolicyRule:
    """Add a policy to the node and save it (400 if the expression does not parse)."""
    try:
        rule = d.node.add_policy(expression, resource=resource, resource_type=resource_type)
    except TetherError as e:
        raise ApiError(400, str(e), type(e).__name__) from None
    d.config.policies.append(rule.info())
    d.config.policy_serial = d.node.policy_serial
    d.persist()
    return rule
