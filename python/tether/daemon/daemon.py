"""A node running as a daemon: its listeners and services from the stored configuration, its
control API (``tether.daemon.control``; the resources are :mod:`tether.daemon.node_resources`'
and :mod:`tether.daemon.authority_resources`'), its runtime file, and a clean stop on
SIGTERM/SIGINT or ``POST /shutdown``. SIGHUP re-reads the node's file when it runs with one
(``tether node run NAME --config FILE``: :attr:`Daemon.reload`). With a drain period
(``tether node run --drain``), SIGTERM first drains: no new link or portal session, the open
sessions finish (for up to the period), then the node stops; a second SIGTERM, or SIGINT,
stops it at once.

Started by ``tether node create|start`` as ``python -m tether.daemon --home HOME NAME``
(:mod:`tether.daemon.main`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from tether.api import Node
from tether.core.errors import InvalidArgumentError, NotFoundError, TetherError
from tether.daemon import saved_nodes
from tether.daemon.control import ApiError, ControlServer, Router
from tether.daemon.metrics import Metrics
from tether.daemon.restore import Restorer
from tether.daemon.saved_nodes import NodeConfig
from tether.daemon.specs import SERVICE_KINDS, identity_and_trust, trust_of
from tether.identity.credential import Credential
from tether.identity.identity import verify_history
from tether.identity.registry import Registry
from tether.identity.trust import ChannelIdentity
from tether.node import limits
from tether.node.routing import host_and_port
from tether.node.transport.nats import NatsOptions
from tether.pipelines.stream import key_service
from tether.services.authority import DEFAULT_ADMIN_POLICY, DEFAULT_CREDENTIAL_TTL, Authority
from tether.services.membership import Membership
from tether.services.stream_keys import StreamKeyRing
from tether.store.authority_backend import open_shared
from tether.store.local import Store

log = logging.getLogger("tether.daemon")


def notify(state: str) -> None:
    """Tell the service manager (systemd's ``Type=notify``: ``$NOTIFY_SOCKET``, a Unix datagram
    socket, ``@`` for the abstract namespace) ``state`` (``READY=1``, ``STOPPING=1``); nothing
    without one."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as e:
        log.warning("could not notify the service manager at %s: %s", path, e.strerror or e)


class Daemon:
    def __init__(self, home: Path, store: Store, config: NodeConfig, api: Router[Daemon]) -> None:
        self.home = home
        self.store = store
        self.config = config
        self.api = api
        """The control API's resources."""
        self.registry = Registry(store)
        self._node: Node | None = None
        self.started_at = int(time.time())
        self.stop = anyio.Event()
        self.identifier: str | None = None
        self.listener_specs: dict[str, str] = {}
        self.running = False
        """The node is up and its runtime file written."""
        self.restorer = Restorer(config.name, self._restored)
        self.drain = 0.0
        """Seconds SIGTERM lets open portal sessions finish (0: stop at once)."""
        self.draining = False
        self.cut = 0
        """Portal sessions still open when the drain period ran out (closed then)."""
        self.metrics = Metrics(self)
        self.metrics_address: tuple[str, int] | None = None
        """Where to serve ``GET /metrics`` over TCP too (``--metrics HOST:PORT``)."""
        self.reload: Callable[[], str] | None = None
        """Converges the node to its file (``node run --config``), in a worker thread through
        the control API: once when the node is up (before it says READY), and at each SIGHUP.
        Returns what it changed, in a line for the log."""
        self.reloads = 0
        """Reloads that completed (a failed one is logged, and the node goes on as it was)."""
        self._reloading = anyio.Lock()

    def _restored(self) -> None:
        """A saved resource started late, or stopped waiting: the runtime file follows."""
        if self.running:
            self.write_runtime()

    @property
    def node(self) -> Node:
        """The running node (the control API serves only while it runs)."""
        assert self._node is not None
        return self._node

    def persist(self) -> None:
        saved_nodes.save_config(self.store, self.config)

    def unsave(self, section: str, key: str, value: str) -> None:
        """Drop the entries of configuration ``section`` whose ``key`` is ``value`` (entries
        that are strings: equal to ``value``); save."""
        kept = [x for x in getattr(self.config, section) if _named(x, key) != value]
        setattr(self.config, section, kept)
        self.persist()

    async def forget_waiting(self, section: str, key: str, value: str) -> bool:
        """Delete the saved resource ``value`` of ``section`` if it waits to start: True if
        so."""
        if await self.restorer.take(section, value) is None:
            return False
        self.unsave(section, key, value)
        return True

    def runtime(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "identifier": self.identifier,
            "api": str(saved_nodes.api_socket(self.home, self.config.name)),
            "listeners": [lst.info() for lst in self.node.tcp.listeners.values()],
            "waiting": self.restorer.summary(),
        }

    def write_runtime(self) -> None:
        saved_nodes.write_runtime(self.home, self.config.name, self.runtime())

    def _identity(self) -> tuple[ChannelIdentity | None, str]:
        """The node's identity, or why it has none: the node still starts (to be inspected,
        fixed or deleted), with no identity."""
        cfg = self.config
        if not cfg.identity:
            return None, ""
        try:
            self.identifier = self.registry.get(cfg.identity).identifier
            return self.registry.channel_identity(cfg.identity), ""
        except TetherError as e:
            problem = "no longer exists" if isinstance(e, NotFoundError) else f"is unusable ({e})"
            return None, (
                f"the identity {cfg.identity!r} of this node {problem}: it opens and accepts no "
                f"secure channels; `tether node delete {cfg.name}` and create it again"
            )

    def _nats_options(self, has_identity: bool) -> NatsOptions | None:
        """The node's NATS fabric, from its configuration (``--nats``); its password is read
        from its file at each start (never kept in the store)."""
        spec = self.config.nats
        if not spec:
            return None
        if not has_identity:
            raise TetherError("a node on a NATS fabric needs its identity (its name there)")
        password = None
        if spec.get("password_file"):
            path = Path(spec["password_file"])
            try:
                password = path.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise TetherError(
                    f"cannot read the NATS password file {path} ({e.strerror}): put the "
                    "password the cluster's operator gave this node there"
                ) from None
        return NatsOptions(
            list(spec["servers"]),
            user=spec.get("user") or self.identifier,
            password=password,
            names=list(spec.get("names") or []),
        )

    async def run(self) -> None:
        cfg = self.config
        channel_identity, identity_error = self._identity()
        # Bound first (outside the node's task group): a taken --metrics address fails the start
        # with its one-line reason, before the node says it is up.
        metrics_listener = await self._metrics_listener()
        async with Node(
            cfg.name,
            relay_owners=saved_nodes.RelayOwners(self.store, cfg.name),
            resolve_node=saved_nodes.resolver(self.home),
            identify_node=saved_nodes.identifier_resolver(self.home),
            identity=channel_identity,
            transit=cfg.transit,
            nats=self._nats_options(channel_identity is not None),
        ) as node:
            self._node = node
            # Credentials this node receives (enrollment, refresh) are kept in its store.
            node.on_credential = self.registry.store_credential
            node.policy_serial = cfg.policy_serial  # names of deleted policies stay taken
            self.restorer.attach(node)
            if identity_error:
                self.restorer.fail("identity", str(cfg.identity), {}, identity_error)
            # Each saved resource on its own: one that cannot start waits (tether.daemon.restore).
            await self.restore()
            sock = saved_nodes.api_socket(self.home, cfg.name)
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            old_umask = os.umask(0o177)
            try:
                listener = await anyio.create_unix_listener(sock)
            finally:
                os.umask(old_umask)
            os.chmod(sock, 0o600)
            self.write_runtime()
            self.running = True
            if self.reload is None:
                notify(f"READY=1\nMAINPID={os.getpid()}")
            log.info(
                "node %s up (pid %d), listeners %s",
                cfg.name,
                os.getpid(),
                [lst.address for lst in node.tcp.listeners.values()],
            )
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(self._signals, tg)
                if self.reload is not None:
                    tg.start_soon(self._first_reload)
                if metrics_listener is not None:
                    tg.start_soon(self._serve_metrics, metrics_listener, tg)

                # (out of descriptors, a control request is refused, never the daemon ended)
                control = ControlServer(self, self.api)
                tg.start_soon(limits.serve, listener, control.serve_connection, tg, lambda: None)
                await self.stop.wait()
                tg.cancel_scope.cancel()
            node.task_group.cancel_scope.cancel()
        log.info("node %s stopped", cfg.name)

    async def _metrics_listener(self) -> Any:
        if self.metrics_address is None:
            return None
        host, port = self.metrics_address
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as e:
            raise TetherError(
                f"cannot serve metrics on {host}:{port}: {e.strerror or e}; choose another "
                "--metrics address"
            ) from None
        log.info("node %s: metrics on http://%s:%d/metrics", self.config.name, host, port)
        return listener

    async def _serve_metrics(self, listener: Any, tg: TaskGroup) -> None:
        """``GET /metrics`` (and nothing else) on the TCP address asked for."""
        only: Router[Daemon] = Router()
        only.add("GET", "/metrics")(self.api.match("GET", "/metrics")[0])

        metrics = ControlServer(self, only)
        async with listener:
            await limits.serve(listener, metrics.serve_connection, tg, lambda: None)

    async def start_authority(self, spec: dict[str, Any]) -> Authority:
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

    async def _first_reload(self) -> None:
        await self._reload("start")
        notify(f"READY=1\nMAINPID={os.getpid()}")

    async def _reload(self, why: str) -> None:
        """Converge to the node's file (see :attr:`reload`); one reload at a time."""
        assert self.reload is not None
        async with self._reloading:
            try:
                changed = await anyio.to_thread.run_sync(self.reload)
            except TetherError as e:
                log.error("node %s: %s: the file was not applied: %s", self.config.name, why, e)
                return
            self.reloads += 1
            log.info("node %s: %s: applied its file: %s", self.config.name, why, changed)

    async def _signals(self, tg: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for sig in signals:
                if sig == signal.SIGHUP:
                    if self.reload is None:
                        log.warning(
                            "node %s: SIGHUP: no file to re-read (run it with `tether node run "
                            "%s --config FILE`); nothing changed",
                            self.config.name,
                            self.config.name,
                        )
                    else:
                        notify("RELOADING=1")
                        tg.start_soon(self._hup)
                    continue
                if sig == signal.SIGTERM and self.drain > 0 and not self.draining:
                    self.draining = True
                    tg.start_soon(self._drain)
                    continue
                log.info("node %s: %s, stopping", self.config.name, signal.Signals(sig).name)
                notify("STOPPING=1")
                self.stop.set()
                return

    async def _hup(self) -> None:
        await self._reload("SIGHUP")
        notify("READY=1")

    async def _drain(self) -> None:
        """Open nothing new; stop once the open portal sessions have finished, or when the
        drain period is over (closing what is still open)."""
        node = self.node
        notify("STOPPING=1")
        await node.stop_accepting()
        log.info(
            "node %s: SIGTERM, draining: %d portal session(s) open, stopping when they finish "
            "or in %g s (SIGTERM again or SIGINT: stop now)",
            self.config.name,
            node.open_sessions(),
            self.drain,
        )
        with anyio.move_on_after(self.drain):
            while node.open_sessions():
                await anyio.sleep(0.05)
        self.cut = node.open_sessions()
        if self.cut:
            log.warning(
                "node %s: the drain period (%g s) is over: closing %d open portal session(s)",
                self.config.name,
                self.drain,
                self.cut,
            )
        else:
            log.info("node %s: drained, every portal session finished", self.config.name)
        self.stop.set()

    # --- the saved resources ----------------------------------------------------------------

    async def _rejoin(self, spec: dict[str, Any]) -> Membership:
        """Join again the authority of a saved membership, with the credential held from it."""
        authority = verify_history(bytes.fromhex(spec["authority"]))
        return await self.node.join(
            authority,
            spec["route"],
            poll_interval=float(spec.get("poll_interval", 60.0)),
            credential=self.held_credential(authority.identifier),
        )

    def held_credential(self, issuer: str) -> Credential | None:
        """The latest stored credential of the node's identity from ``issuer``, if valid."""
        if not self.identifier:
            return None
        row = self.store.query_one(
            "SELECT data FROM credentials WHERE subject = ? AND issuer = ? "
            "ORDER BY expires_at DESC LIMIT 1",
            (self.identifier, issuer),
        )
        if row is None:
            return None
        c = Credential.decode(bytes(row[0]))
        return c if c.expires_at > time.time() else None

    async def restore(self) -> None:
        """Start everything the configuration saves: policies first (nothing is served before
        the policies that guard it), then listeners, channel listeners, relays, the authority,
        memberships, outlets, inlets and services. What cannot start waits
        (:mod:`tether.daemon.restore`)."""
        await self._restore_policies()
        await self._restore_listeners()
        await self._restore_channel_listeners()
        await self._restore_relays()
        await self._restore_authority()
        await self._restore_memberships()
        await self._restore_outlets()
        await self._restore_inlets()
        await self._restore_services()
        await self._restore_streams()

    async def _restore_policies(self) -> None:
        """Its policies, first: nothing is served before the policies that guard it."""
        cfg, node, r = self.config, self.node, self.restorer
        for rule in cfg.policies:

            async def policy(rule: dict[str, Any] = rule) -> None:
                try:
                    node.add_policy(
                        rule["expression"],
                        resource=rule.get("resource"),
                        resource_type=rule.get("resource_type"),
                        policy_id=rule["id"],
                    )
                except Exception:
                    # Fail closed: what the policy guarded admits nobody until it is fixed.
                    if rule.get("id") and (rule.get("resource") or rule.get("resource_type")):
                        node.add_policy(
                            "false",
                            resource=rule.get("resource"),
                            resource_type=rule.get("resource_type"),
                            policy_id=str(rule["id"]),
                        )
                    raise

            await r.start("policies", _key(rule, "id"), rule, policy, retry=False)

    async def _restore_listeners(self) -> None:
        """Its TCP listeners."""
        cfg, node, r = self.config, self.node, self.restorer
        for spec in cfg.tcp_listeners:

            async def listen(spec: str = spec) -> None:
                host, port = listen_address(spec)
                lst = await node.listen_tcp(host, port)
                self.listener_specs[lst.id] = spec

            await r.start("tcp_listeners", _key(spec, ""), spec, listen)

    async def _restore_channel_listeners(self) -> None:
        """Its secure-channel listeners (``api``, the node's own, runs already)."""
        cfg, node, r = self.config, self.node, self.restorer
        for lspec in cfg.channel_listeners:
            if lspec.get("address") == "api" and node.has_worker("api"):
                continue

            async def channel_listener(lspec: dict[str, Any] = lspec) -> None:
                identity, trust = identity_and_trust(self.registry, lspec)
                await node.create_secure_channel_listener(
                    lspec["address"], identity=identity, trust=trust
                )

            await r.start("channel_listeners", _key(lspec, "address"), lspec, channel_listener)

    async def _restore_streams(self) -> None:
        """The streams it produces, each with a new key (consumers see a producer's restart as
        a gap: ``docs/pipelines.md``)."""
        for spec in self.config.streams:

            async def start(spec: dict[str, Any] = spec) -> None:
                await self.start_stream(spec)

            await self.restorer.start("streams", _key(spec, "stream"), spec, start)

    async def start_stream(self, spec: dict[str, Any]) -> StreamKeyRing:
        """Produce the stream ``spec`` names: its key ring, served by the node's
        ``stream_keys`` service to the peers its policy allows."""
        if self.identifier is None:
            raise ApiError(400, "a node without an identity produces no stream (records name it)")
        try:
            ring = StreamKeyRing(
                str(spec["stream"]),
                self.identifier,
                rotate_after_records=int(spec.get("rotate_after_records") or 1_000_000),
                rotate_after_seconds=float(spec.get("rotate_after_seconds") or 3600.0),
                algorithm=str(spec.get("algorithm") or "AES-256-GCM"),
            )
            (await key_service(self.node)).add(ring, spec.get("allow"))
        except TetherError as e:
            raise ApiError(400, str(e), type(e).__name__) from None
        return ring

    async def _restore_relays(self) -> None:
        """The relay names it keeps claimed."""
        cfg, node, r = self.config, self.node, self.restorer
        for relay in cfg.relays:
            # A relay node that is not up is retried by the relay itself (it starts "reconnecting");
            # a relay that refuses the claim waits here.
            async def claim(relay: dict[str, str] = relay) -> None:
                await node.create_relay(relay["name"], relay["at"], trust=trust_of(relay))

            await r.start("relays", _key(relay, "name"), relay, claim)

    async def _restore_authority(self) -> None:
        """The authority it runs."""
        cfg, r = self.config, self.restorer
        if cfg.authority is not None:
            auth = cfg.authority

            async def authority() -> None:
                await self.start_authority(auth)

            await r.start("authority", str(auth.get("name", "authority")), auth, authority)

    async def _restore_memberships(self) -> None:
        """Its memberships of authorities."""
        cfg, r = self.config, self.restorer
        for m in cfg.memberships:
            # Back to each authority this node enrolled with: its stored credential now, a
            # fresh one (and revocations) as soon as the authority answers.
            async def join(m: dict[str, Any] = m) -> None:
                await self._rejoin(m)

            await r.start("memberships", _key(m, "identifier"), m, join)

    async def _restore_outlets(self) -> None:
        """Its tcp-outlets."""
        cfg, node, r = self.config, self.node, self.restorer
        for o in cfg.tcp_outlets:

            async def outlet(o: dict[str, Any] = o) -> None:
                await node.create_tcp_outlet(o["to"], name=o["name"], allow=o.get("allow"))

            await r.start("tcp_outlets", _key(o, "name"), o, outlet)

    async def _restore_inlets(self) -> None:
        """Its tcp-inlets."""
        cfg, node, r = self.config, self.node, self.restorer
        for i in cfg.tcp_inlets:
            # An inlet listens at once; its route is reached per connection, so a path that is
            # not up yet only fails the connections made before it is. One whose route names a
            # node that is missing or stopped waits until it is there.
            async def inlet(i: dict[str, Any] = i) -> None:
                await node.create_tcp_inlet(
                    i["from"], i["to"], name=i["name"], allow=i.get("allow"), trust=trust_of(i)
                )

            await r.start("tcp_inlets", _key(i, "name"), i, inlet)

    async def _restore_services(self) -> None:
        """Its services."""
        cfg, node, r = self.config, self.node, self.restorer
        for svc in cfg.services:

            async def service(svc: dict[str, str] = svc) -> None:
                kind, address = svc["kind"], svc["address"]
                if kind not in SERVICE_KINDS:
                    raise TetherError(
                        f"unknown service kind {kind!r}; known: {sorted(SERVICE_KINDS)}"
                    )
                if not node.has_worker(address):
                    await node.start_worker(address, SERVICE_KINDS[kind], kind=kind)

            await r.start("services", _key(svc, "address"), svc, service)


def listen_address(spec: str) -> tuple[str, int]:
    """A TCP listener's ``HOST:PORT`` (``:PORT``: on 127.0.0.1; port 0: any free one)."""
    try:
        return host_and_port("127.0.0.1" + spec if spec.startswith(":") else spec, any_port=True)
    except ValueError as e:
        raise InvalidArgumentError(f"listener {spec!r}: {e}; use HOST:PORT (port 0: any)") from None


def _key(entry: Any, name: str) -> str:
    return str(entry.get(name, "?")) if isinstance(entry, dict) else str(entry)


def _named(entry: Any, key: str) -> Any:
    return entry.get(key) if isinstance(entry, dict) else entry
