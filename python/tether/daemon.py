"""A node running as a daemon: its listeners and services from the stored configuration, its
control API (``tether.control``), its runtime file, and a clean stop on SIGTERM/SIGINT or
``POST /shutdown``.

Started by ``tether node create|start`` as ``python -m tether.daemon --home HOME NAME``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from tether import limits, logs, nodes, policies
from tether.authority import (
    DEFAULT_ADMIN_POLICY,
    DEFAULT_CREDENTIAL_TTL,
)
from tether.control import ApiError, Router, serve_connection
from tether.errors import NotFoundError, TetherError
from tether.node import Node, ReplyTimeoutError, UnreachableError
from tether.nodes import NodeConfig
from tether.registry import Registry, check_name
from tether.relay import RelayClaimError
from tether.restore import Restorer, restore
from tether.routing import format_route
from tether.state import Store
from tether.trust import ChannelRefusedError, trust_anyone, trust_identifiers
from tether.worker import echo

log = logging.getLogger("tether.daemon")
api = Router()

SERVICE_KINDS = {"echo": echo}


class Daemon:
    def __init__(self, home: Path, store: Store, config: NodeConfig) -> None:
        self.home = home
        self.store = store
        self.config = config
        self.registry = Registry(store)
        self._node: Node | None = None
        self.started_at = int(time.time())
        self.stop = anyio.Event()
        self.identifier: str | None = None
        self.listener_specs: dict[str, str] = {}
        self.up = False
        self.restorer = Restorer(config.name, self._restored)

    def _restored(self) -> None:
        """A saved resource started late, or stopped waiting: the runtime file follows."""
        if self.up:
            self.write_runtime()

    @property
    def node(self) -> Node:
        """The running node (the control API serves only while it runs)."""
        assert self._node is not None
        return self._node

    def persist(self) -> None:
        nodes.save_config(self.store, self.config)

    def runtime(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "identifier": self.identifier,
            "api": str(nodes.api_socket(self.home, self.config.name)),
            "listeners": [lst.info() for lst in self.node.tcp.listeners.values()],
            "waiting": self.restorer.summary(),
        }

    def write_runtime(self) -> None:
        nodes.write_runtime(self.home, self.config.name, self.runtime())

    async def run(self) -> None:
        cfg = self.config
        channel_identity, identity_error = None, ""
        if cfg.identity:
            try:
                self.identifier = self.registry.get(cfg.identity).identifier
                channel_identity = self.registry.channel_identity(cfg.identity)
            except TetherError as e:
                # The node still starts (to be inspected, fixed or deleted), with no identity.
                why = "no longer exists" if isinstance(e, NotFoundError) else f"is unusable ({e})"
                identity_error = (
                    f"the identity {cfg.identity!r} of this node {why}: it opens and accepts no "
                    f"secure channels; `tether node delete {cfg.name}` and create it again"
                )
        async with Node(
            cfg.name,
            relay_owners=nodes.RelayOwners(self.store, cfg.name),
            resolve_node=nodes.resolver(self.home),
            identify_node=nodes.identifier_resolver(self.home),
            identity=channel_identity,
            transit=cfg.transit,
        ) as node:
            self._node = node
            # Credentials this node receives (enrollment, refresh) are kept in its store.
            node.on_credential = self.registry.store_credential
            node.policy_serial = cfg.policy_serial  # names of deleted policies stay taken
            self.restorer.attach(node)
            if identity_error:
                self.restorer.fail("identity", str(cfg.identity), {}, identity_error)
            # Each saved resource on its own: one that cannot start waits (tether.restore).
            await restore(self)
            sock = nodes.api_socket(self.home, cfg.name)
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            old_umask = os.umask(0o177)
            try:
                listener = await anyio.create_unix_listener(sock)
            finally:
                os.umask(old_umask)
            os.chmod(sock, 0o600)
            self.write_runtime()
            self.up = True
            log.info(
                "node %s up (pid %d), listeners %s",
                cfg.name,
                os.getpid(),
                [lst.address for lst in node.tcp.listeners.values()],
            )
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(self._signals, tg)

                async def handle(stream: Any) -> None:
                    await serve_connection(self, api, stream)

                # (out of descriptors, a control request is refused, never the daemon ended)
                tg.start_soon(limits.serve, listener, handle, tg, lambda: None)
                await self.stop.wait()
                tg.cancel_scope.cancel()
            node.task_group.cancel_scope.cancel()
        log.info("node %s stopped", cfg.name)

    async def _start_authority(self, spec: dict[str, Any]) -> Any:
        from tether.shared import open_shared

        if not self.config.identity:
            raise ApiError(400, "a node without an identity cannot run an authority")
        shared = await anyio.to_thread.run_sync(open_shared, spec.get("database"), self.store)
        return await self.node.create_authority(
            self.registry,
            self.config.identity,
            shared,
            name=spec.get("name", "authority"),
            credential_ttl=int(spec.get("credential_ttl", DEFAULT_CREDENTIAL_TTL)),
            admin_policy=spec.get("admin_policy") or DEFAULT_ADMIN_POLICY,
        )

    async def _signals(self, tg: Any) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                log.info("node %s: signal %s, stopping", self.config.name, sig)
                self.stop.set()
                return


# --- the control API's resources ------------------------------------------------------------


@api.add("GET", "/node")
async def get_node(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    return 200, {
        **d.runtime(),
        "identity": d.config.identity,
        "workers": d.node.workers(),
        "connections": [c.info() for c in d.node.tcp.connections.values()],
        "secure_channels": [c.info() for c in d.node.channels.values()],
        "secure_channel_listeners": [lst.info() for lst in d.node.channel_listeners.values()],
        "transit": sorted(d.node.transit),
        "limits": {
            "max_connections": d.node.tcp.max_connections,
            "pending_handshakes": d.node.pending_handshakes,
        },
        "counters": dict(d.node.counters),
    }


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
    host, _sep, port = address.rpartition(":")
    if not port.isdigit():
        raise ApiError(400, f"address {address!r} is not host:port")
    lst = await d.node.listen_tcp(host.strip("[]") or "127.0.0.1", int(port))
    d.listener_specs[lst.id] = address
    d.config.tcp_listeners.append(address)
    d.persist()
    d.write_runtime()
    return 201, lst.info()


@api.add("DELETE", "/listeners/{id}")
async def delete_listener(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    if await d.restorer.take("tcp_listeners", p["id"]):  # one that waits: its id is its spec
        unsave(d, "tcp_listeners", "", p["id"])
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
    if await forget_waiting(d, "services", "address", p["address"]):
        return 204, None
    if not d.node.has_worker(p["address"]):
        raise ApiError(404, f"no service at {p['address']!r}")
    await d.node.stop_worker(p["address"])
    unsave(d, "services", "address", p["address"])
    return 204, None


@api.add("POST", "/secure-channels")
async def create_channel(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    to = body_field(body, "to")
    identity, trust = _identity_and_trust(d, body)
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
    identity, trust = _identity_and_trust(d, body)
    _allow_policy(d, body_optional(body, "allow"), address, "secure-channel-listener")
    listener = await d.node.create_secure_channel_listener(address, identity=identity, trust=trust)
    d.config.channel_listeners.append(
        {k: v for k, v in body.items() if k in ("address", "identity", "authorized")}
    )
    d.persist()
    return 201, listener.info()


@api.add("DELETE", "/secure-channel-listeners/{address}")
async def delete_channel_listener(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    if await forget_waiting(d, "channel_listeners", "address", p["address"]):
        return 204, None
    found(d.node.channel_listeners, p["address"], "secure-channel listener")
    del d.node.channel_listeners[p["address"]]
    await d.node.stop_worker(p["address"])
    unsave(d, "channel_listeners", "address", p["address"])
    return 204, None


def _identity_and_trust(d: Daemon, body: Any) -> tuple[Any, Any]:
    name = body.get("identity")
    identity = d.registry.channel_identity(str(name)) if name else None
    return identity, _trust(body)


def _trust(body: Any) -> Any:
    """The trust policy a request names: ``authorized`` identifiers, or ``trust_any`` (any
    identity, explicitly); None leaves it to the node's defaults
    (``tether.trust.initiator_trust``)."""
    authorized = body.get("authorized") or []
    if not isinstance(authorized, list) or not all(isinstance(a, str) for a in authorized):
        raise ApiError(400, "'authorized' must be a list of identifiers")
    trust_any = body.get("trust_any", False)
    if not isinstance(trust_any, bool):
        raise ApiError(400, "'trust_any' must be true or false")
    if trust_any and authorized:
        raise ApiError(400, "give 'authorized' identifiers or 'trust_any', not both")
    if trust_any:
        return trust_anyone
    return trust_identifiers(*authorized) if authorized else None


@api.add("POST", "/relays")
async def create_relay(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    name = body_field(body, "name")
    at = body_field(body, "at")
    if name in d.node.relays:
        raise ApiError(409, f"this node already keeps a relay named {name!r}")
    d.restorer.check_free("relays", name, "relay")
    trust_spec = {k: body[k] for k in ("authorized", "trust_any") if body.get(k)}
    try:
        relay = await d.node.create_relay(name, at, trust=_trust(body))
    except RelayClaimError as e:
        raise ApiError(422, str(e), "RelayClaimError") from None
    d.config.relays.append({"name": name, "at": at, **trust_spec})
    d.persist()
    return 201, relay.info()


@api.add("DELETE", "/relays/{name}")
async def delete_relay(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    if await forget_waiting(d, "relays", "name", p["name"]):
        return 204, None
    found(d.node.relays, p["name"], "relay")
    await d.node.delete_relay(p["name"])
    unsave(d, "relays", "name", p["name"])
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
    if await forget_waiting(d, "tcp_outlets", "name", p["name"]):
        return 204, None
    found(d.node.outlets, p["name"], "tcp-outlet")
    await d.node.delete_tcp_outlet(p["name"])
    unsave(d, "tcp_outlets", "name", p["name"])
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
        inlet = await d.node.create_tcp_inlet(bind, to, name=name, allow=allow, trust=_trust(body))
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
    if await forget_waiting(d, "tcp_inlets", "name", p["name"]):
        return 204, None
    found(d.node.inlets, p["name"], "tcp-inlet")
    await d.node.delete_tcp_inlet(p["name"])
    unsave(d, "tcp_inlets", "name", p["name"])
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
    if await forget_waiting(d, "policies", "id", p["id"]):
        d.node.policies.pop(p["id"], None)  # the ``false`` it held in its place
        return 204, None
    found(d.node.policies, p["id"], "policy")
    d.node.delete_policy(p["id"])
    unsave(d, "policies", "id", p["id"])
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
        reply = await d.node.request(to, payload, timeout=timeout, trust=_trust(body))
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
    path: str, what: str, table: Callable[[Daemon], Mapping[str, Any]], section: str = ""
) -> None:
    """``GET /path`` (every item's ``info()``) and ``GET /path/{key}`` (one, or 404) for a
    table of the node's resources, with the saved ones of configuration ``section`` that wait
    to start (``tether.restore``: in the state ``error``, with the reason)."""

    @api.add("GET", path)
    async def list_all(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
        waiting = {w.key: w.info() for w in d.restorer.of(section)}
        live = [waiting.pop(k, x.info()) for k, x in table(d).items()]
        return 200, live + list(waiting.values())

    @api.add("GET", path + "/{key}")
    async def get_one(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
        w = d.restorer.get(section, p["key"])
        return 200, w.info() if w is not None else found(table(d), p["key"], what).info()


_readable("/secure-channels", "secure channel", lambda d: d.node.channels)
_readable("/relays", "relay", lambda d: d.node.relays, "relays")
_readable("/tcp-outlets", "tcp-outlet", lambda d: d.node.outlets, "tcp_outlets")
_readable("/tcp-inlets", "tcp-inlet", lambda d: d.node.inlets, "tcp_inlets")
_readable("/policies", "policy", lambda d: d.node.policies, "policies")


def found(table: Mapping[str, Any], key: str, what: str) -> Any:
    """``table[key]``, or 404 naming what is missing."""
    if key not in table:
        raise ApiError(404, f"no {what} {key!r}")
    return table[key]


def _allow_policy(d: Daemon, allow: str | None, name: str, resource_type: str) -> Any:
    """``--allow EXPR`` on a command that creates a resource: a policy attached to it by name
    (saved like any policy; `tether policy list` shows it)."""
    return _add_policy(d, allow, name, resource_type) if allow else None


def _add_policy(d: Daemon, expression: str, resource: str | None, resource_type: str | None) -> Any:
    """Add a policy to the node and save it (400 if the expression does not parse)."""
    try:
        rule = d.node.add_policy(expression, resource=resource, resource_type=resource_type)
    except TetherError as e:
        raise ApiError(400, str(e), type(e).__name__) from None
    d.config.policies.append(rule.info())
    d.config.policy_serial = d.node.policy_serial
    d.persist()
    return rule


def unsave(d: Daemon, section: str, key: str, value: str) -> None:
    """Drop the entries of configuration ``section`` whose ``key`` is ``value`` (entries that
    are strings: equal to ``value``); save."""
    setattr(d.config, section, [x for x in getattr(d.config, section) if _named(x, key) != value])
    d.persist()


def _named(entry: Any, key: str) -> Any:
    return entry.get(key) if isinstance(entry, dict) else entry


async def forget_waiting(d: Daemon, section: str, key: str, value: str) -> bool:
    """Delete the saved resource ``value`` of ``section`` if it waits to start: True if so."""
    if await d.restorer.take(section, value) is None:
        return False
    unsave(d, section, key, value)
    return True


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tether.daemon",
        description="Run a tether node (normally started by `tether node create|start`).",
    )
    parser.add_argument("--home", required=True)
    parser.add_argument(
        "--log-file", help="log here, rotated by size (default: standard error)", type=Path
    )
    parser.add_argument("name")
    args = parser.parse_args(argv)
    home = Path(args.home)
    try:
        store = Store(home)
        config = nodes.load_config(store, args.name)
        nodes.ensure_dir(home, args.name)
    except TetherError as e:
        print(f"tether node: {e}", file=sys.stderr)
        return 1
    logs.configure(args.log_file, sys.stderr)
    daemon = Daemon(home, store, config)
    try:
        from tether.alloc import tune_for_bulk

        tune_for_bulk()
        anyio.run(daemon.run, backend="trio")
    except TetherError as e:
        log.error("node %s failed: %s", args.name, e)
        return 1
    finally:
        with contextlib.suppress(OSError):
            nodes.runtime_file(home, args.name).unlink()
        with contextlib.suppress(OSError):
            nodes.api_socket(home, args.name).unlink()
        store.close()
    return 0


# The authority's and memberships' resources register themselves on `api` (a module of their own).
from tether import daemon_authority  # noqa: E402, F401

if __name__ == "__main__":
    # `python -m tether.daemon` runs this file as __main__, a second copy of the module: run the
    # one registered as tether.daemon, whose `api` has every resource on it.
    from tether.daemon import main as daemon_main

    sys.exit(daemon_main())
