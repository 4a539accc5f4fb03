"""The node: workers at addresses, source routing between them, and transports to other nodes.

    async with tether.Node("n1") as node:
        await node.start_worker("echo", echo)
        listener = await node.listen_tcp("127.0.0.1", 0)
        reply = await node.request("/ip4/127.0.0.1/tcp/4000/service/echo", b"hi")

A message carries an onward and a return route (``docs/routing.md``); the first onward address
is a worker here (popped on delivery) or a TCP hop (a connection, made or reused), and a reply
retraces the return route. Where a message enters the node decides what it may reach
(:mod:`tether.node.reach`). Every queue is bounded and a hand-off awaits room, so a slow consumer
slows its producers; replies and error reports never wait on a peer. An undeliverable message is
answered along its return route with an error report, so the sender gets a precise error instead
of a timeout. Runs on anyio: trio by default, asyncio too.

:class:`BaseNode` is the node without the features built on it: it keeps the secure channels
it is given (:class:`~tether.node.channel_end.ChannelEnd`) for routing, policy checks and its data
plane, and the features register what they need on it (a resolver of ``/secure/`` hops, a hook on
each policy added). :class:`tether.Node` (:mod:`tether.api`) is the node with every feature.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Self, cast

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from tether.core.errors import InvalidArgumentError, RouteError, TetherError
from tether.core.message import (
    KIND_DATA,
    KIND_ERROR,
    LOCAL,
    LOCAL_ORIGIN,
    NATS,
    TCP,
    Address,
    Handler,
    Message,
    Origin,
    RawHandler,
    RoutedMessage,
    WorkerContext,
    encode_payload,
)
from tether.identity.identity import Identity
from tether.identity.trust import ChannelIdentity, TrustPolicy
from tether.node import limits, policies, routing
from tether.node.channel_end import ChannelEnd
from tether.node.data_plane import BACKPRESSURE, Channel, DataPlane, PythonDataPlane, enabled
from tether.node.handshakes import Handshakes
from tether.node.policies import PolicyRule
from tether.node.reach import Reach
from tether.node.rust_data_plane import RustDataPlane
from tether.node.transport.connection import Connection, TcpOptions
from tether.node.transport.nats import NatsOptions, NatsTransport
from tether.node.transport.tcp import Listener, TcpTransport
from tether.node.worker import MAILBOX_SIZE, Worker, echo

log = logging.getLogger("tether.node")

#: Worker kinds whose policies are checked where they make sense rather than per message: a
#: listener's in the handshake (its first messages come through no channel yet), a channel's
#: own workers never (they are the channel).
_OWN_ENFORCEMENT = frozenset({"secure-channel-listener", "secure-channel"})


class UnreachableError(RouteError):
    """A hop could not deliver the message; the reason names the hop and the problem."""


class ReplyTimeoutError(TetherError, TimeoutError):
    """No reply arrived in time."""


SecureRouteResolver = Callable[
    [str | Sequence[Address], TrustPolicy | None, Sequence[str | None] | None],
    Awaitable[tuple[Address, ...]],
]
"""Resolves the ``/secure/NAME`` hops of a route into secure channels (the channel layer's
:meth:`~tether.channel.secure_channels.SecureChannels.resolve_route`)."""


class BaseNode:
    """See the module documentation."""

    def __init__(
        self,
        name: str = "node",
        *,
        resolve_node: routing.NodeResolver | None = None,
        tcp_options: TcpOptions | None = None,
        identity: ChannelIdentity | None = None,
        authorities: Mapping[str, Identity] | None = None,
        trust: TrustPolicy | None = None,
        data_plane: bool | None = None,
        transit: Sequence[str] = (),
        identify_node: Callable[[str], str | None] | None = None,
        nats: NatsOptions | None = None,
    ) -> None:
        self.name = name
        self.identity = identity
        """The node's :class:`~tether.identity.trust.ChannelIdentity`, if it has one (then it
        accepts secure channels at ``api``)."""
        self.authorities: dict[str, Identity] = dict(authorities or {})
        self.trust = trust
        """Who may answer the channels this node opens, unless a call says (None: see
        :func:`~tether.identity.trust.initiator_trust`)."""
        self.channels: dict[str, ChannelEnd] = {}
        """The node's open secure channel ends, by their local address."""
        self._carriers: dict[str, Connection] = {}
        """Channel address → the TCP connection of its first hop, while it is open."""
        self._workers: dict[str, Worker] = {}
        self._replies: dict[
            str, tuple[MemoryObjectSendStream[Message], Callable[[Origin], bool] | None]
        ] = {}
        self._sinks: dict[str, Callable[[RoutedMessage], None]] = {}
        self.revoked_credentials: dict[str, frozenset[str]] = {}
        """Authority identifier → ids of its credentials revoked (from its signed lists)."""
        self.policies: dict[str, PolicyRule] = {}
        """Policy id → :class:`~tether.node.policies.PolicyRule`: policies attached to
        resources by name or type."""
        self.policy_serial = 0
        """The number of the last policy named (``policyN``); never given again."""
        self.policy_added: list[Callable[[PolicyRule], None]] = []
        """Called with each policy added: the features whose resources decide again at once
        (the portals)."""
        self.path_restored_hooks: set[Callable[[], None]] = set()
        """Called when a transport of this node is back after a loss (a NATS server replaced):
        what waits for a lost path (a portal session's resends) goes on at once."""
        self.secure_route_resolver: SecureRouteResolver | None = None
        """Resolves the ``/secure/NAME`` hops of routes (the channel layer registers it);
        without one a route is only parsed."""
        self._tg: TaskGroup | None = None
        self._ids = itertools.count(1)
        self._resolve_node = resolve_node
        self._identify_node = identify_node
        self.transit = frozenset(transit)
        """TCP addresses (``host:port``, or ``*`` for any) this node forwards to for remote
        senders. Empty by default: only local callers make a node open connections."""
        self.reach = Reach(self)
        """Who may reach this node's links and channel encryptors (:mod:`tether.node.reach`)."""
        self.counters: dict[str, int] = {}
        """What the node refused or dropped, by reason (``GET /node`` shows them)."""
        self.backpressure: dict[str, int] = dict.fromkeys(BACKPRESSURE, 0)
        """How often the node's own tasks applied back-pressure, by kind (the Rust data plane
        counts its own: :meth:`~tether.node.data_plane.DataPlane.backpressure`)."""
        self.policy_refusals: dict[tuple[str, str], int] = {}
        """Refusals by a policy, by the resource that refused (:func:`policies.check`)."""
        self.handshakes = Handshakes()
        """How its secure-channel handshakes ended (:mod:`tether.node.handshakes`)."""
        self.tcp = TcpTransport(self, tcp_options or TcpOptions())
        self.nats: NatsTransport | None = None
        """The node's NATS fabric connection (``nats=NatsOptions(...)``; the node needs an
        identity: its identifier is its name there)."""
        if nats is not None:
            if identity is None:
                raise TetherError("a node on a NATS fabric needs an identity (its name there)")
            self.nats = NatsTransport(self, nats, identity.identity.identifier)
        self._use_data_plane = enabled() if data_plane is None else data_plane
        self.data_plane: DataPlane = PythonDataPlane()
        """The driver that carries the node's established traffic (:mod:`tether.node.data_plane`):
        the Rust one while the node runs, unless disabled (``data_plane=False`` or
        ``TETHER_DATAPLANE=python``)."""

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        limits.raise_nofile()  # once per process: caps follow the limit in force
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if self._use_data_plane:
            self.data_plane = RustDataPlane(self)
        await self._tg.start(self.data_plane.run)
        await self.start_worker("echo", echo, kind="echo")
        if self.nats is not None:
            await self._tg.start(self.nats.run)
            # Usually connected when the node is up; if not, it goes on trying (and says so).
            with anyio.move_on_after(self.nats.options.connect_timeout):
                await self.nats.wait_connected()
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(*exc)  # type: ignore[arg-type]

    @property
    def task_group(self) -> TaskGroup:
        if self._tg is None:
            raise TetherError("the node is not running: use `async with Node(...)`")
        return self._tg

    def next_id(self, prefix: str) -> str:
        return f"{prefix}#{next(self._ids)}"

    # --- workers ------------------------------------------------------------------------

    async def start_worker(
        self,
        address: str,
        handler: Handler | RawHandler,
        *,
        kind: str = "custom",
        mailbox: int = MAILBOX_SIZE,
        inline: bool = False,
        raw: bool = False,
        reach: str = "any",
    ) -> None:
        """Run ``handler`` for each message to ``address``: in the worker's own task, one message
        at a time from a bounded mailbox; or, with ``inline``, directly in the task that routes
        the message (no mailbox, no task switch: for handlers that are quick and keep their own
        order, such as a channel's decryptor fed by one connection). An inline worker with
        ``raw`` gets the :class:`RoutedMessage` as it arrived instead (its own address still at
        the head of ``onward``, the kind byte still first in the payload: nothing copied).
        ``reach`` says who may send to it: ``any`` origin (its policy decides), or ``local``
        callers and granted origins only."""
        if reach not in ("any", "local"):
            raise InvalidArgumentError(f"reach must be 'any' or 'local', not {reach!r}")
        if raw and not inline:
            raise TetherError("only an inline worker can take raw messages")
        if self.has_worker(address):
            raise TetherError(f"a worker already listens at {address!r} on {self.name}")
        send, receive = anyio.create_memory_object_stream[Message](0 if inline else mailbox)
        w = Worker(address, handler, send, receive, kind=kind, inline=inline, raw=raw, reach=reach)
        self._workers[address] = w
        if not inline:
            await self.task_group.start(self._run_worker, w)

    async def _run_worker(
        self, w: Worker, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        ctx = WorkerContext(self, w.address)
        handler = cast(Handler, w.handler)  # a worker with a mailbox is never raw
        with w.scope:
            task_status.started()
            async with w.receive:
                async for msg in w.receive:
                    w.busy = True
                    try:
                        await handler(ctx, msg)
                    except TetherError as e:
                        log.warning(
                            "%s: worker %s could not handle a message: %s", self.name, w.address, e
                        )
                    except Exception:
                        log.exception("%s: worker %s failed on a message", self.name, w.address)
                    finally:
                        w.busy = False

    async def stop_worker(self, address: str) -> None:
        w = self._workers.pop(address, None)
        if w is None:
            raise TetherError(f"no worker at {address!r} on {self.name}")
        w.scope.cancel()
        await w.send.aclose()

    def workers(self) -> list[dict[str, object]]:
        return [
            {"address": w.address, "kind": w.kind, "delivered": w.delivered}
            for w in self._workers.values()
        ]

    async def drain_worker(self, address: str, timeout: float = 5.0) -> bool:
        """Wait until the worker has handled everything in its mailbox (True), or ``timeout``
        passed (False)."""
        w = self._workers.get(address)
        if w is None:
            return True
        with anyio.move_on_after(timeout):
            while w.busy or w.receive.statistics().current_buffer_used:
                await anyio.sleep(0.001)
            return True
        return False

    def has_worker(self, address: str) -> bool:
        return address in self._workers or address in self._sinks

    def add_sink(self, address: str, handler: Callable[[RoutedMessage], None]) -> None:
        """Deliver messages for ``address`` by calling ``handler`` inline (no mailbox, no task):
        for handlers that never block, such as portal sessions queueing bytes. The handler gets
        the routed message as it arrived (``onward`` still starting with ``address``, the
        payload still starting with its kind byte: nothing is copied)."""
        if self.has_worker(address):
            raise TetherError(f"a worker already listens at {address!r} on {self.name}")
        self._sinks[address] = handler

    def remove_sink(self, address: str) -> None:
        self._sinks.pop(address, None)

    # --- routing ------------------------------------------------------------------------

    def parse_route(self, route: str | Sequence[Address]) -> tuple[Address, ...]:
        if isinstance(route, str):
            return routing.parse(route, self._resolve_node)
        return tuple(route)

    async def resolve_route(
        self,
        route: str | Sequence[Address],
        *,
        trust: TrustPolicy | None = None,
        expect: Sequence[str | None] | None = None,
    ) -> tuple[Address, ...]:
        """Parse, and replace each ``/secure/NAME`` with a secure channel (opened to the listener
        NAME at the end of the route so far, or reused). Each channel's peer must be who this
        node expects there (:func:`~tether.identity.trust.initiator_trust`): ``trust`` for the last
        one (the end-to-end peer), and for each the identity of the node named right before it
        (``expect``: one node name or None per ``/secure/``; by default read off a route
        string). Without a resolver (no channel layer) the route is only parsed."""
        if self.secure_route_resolver is None:
            return self.parse_route(route)
        return await self.secure_route_resolver(route, trust, expect)

    def node_identifier(self, name: str | None) -> str | None:
        """The identifier of the local node ``name`` (a ``/node/NAME`` in a route), if known."""
        if name is None or self._identify_node is None:
            return None
        return self._identify_node(name)

    async def send(
        self,
        route: str | Sequence[Address],
        payload: bytes,
        *,
        return_route: Sequence[Address] = (),
        kind: int = KIND_DATA,
        trust: TrustPolicy | None = None,
    ) -> None:
        """Send ``payload`` along ``route`` (a route string or addresses; ``trust``: who may
        answer its last secure channel, see :meth:`resolve_route`)."""
        onward = await self.resolve_route(route, trust=trust)
        await self.route(RoutedMessage(onward, tuple(return_route), encode_payload(kind, payload)))

    async def route(
        self, msg: RoutedMessage, origin: Origin = LOCAL_ORIGIN, *, block: bool = True
    ) -> None:
        """Deliver or forward one message (``payload`` includes its kind byte) that entered the
        node at ``origin``. The address at the head of its onward route decides whether that
        origin may reach it (``docs/routing.md``): a refusal is answered as an unknown address
        would be. With ``block`` False nothing waits for room (a full mailbox or a congested
        link drops the message, counted): replies and error reports never wait on a peer."""
        if not msg.onward:
            log.info("%s: dropped a message with an empty onward route", self.name)
            return
        if not msg.payload:
            log.info("%s: dropped a message without its kind byte", self.name)
            return
        if msg.payload[0] == KIND_ERROR:
            block = False  # a report is best effort: it never waits (and never deadlocks)
        head = msg.onward[0]
        if head.transport == LOCAL:
            name = head.value.decode("utf-8", errors="replace")
            w = self._workers.get(name)
            if w is None:
                await self._route_other(name, msg, origin, block)
                return
            if w.reach != "any" and not self.reach.may_reach(name, origin):
                self.reach.refuse(origin, name)
                await self.report(msg, f"no worker {name!r} on node {self.name}")
                return
            if self.policies and not w.inline and w.kind not in _OWN_ENFORCEMENT:
                # Every policy for its kind and its name must allow (tether.node.policies.check).
                channel = self.origin_channel(origin)
                refusal = policies.check(
                    self, w.kind, name, "send", channel.peer if channel else None
                )
                if refusal is not None:
                    log.info("%s: %s %r: %s", self.name, w.kind, name, refusal)
                    await self.report(
                        msg,
                        f"{w.kind} {name!r} on node {self.name} refused "
                        f"{channel.peer.identifier if channel else policies.NO_PEER} by its "
                        "policy",
                    )
                    return
            if w.inline:
                w.delivered += 1
                try:
                    ctx = WorkerContext(self, w.address, origin)
                    if w.raw:
                        await cast(RawHandler, w.handler)(ctx, msg)
                    else:
                        await cast(Handler, w.handler)(ctx, Message.delivered(msg, origin))
                except TetherError as e:
                    log.warning("%s: worker %s could not handle a message: %s", self.name, name, e)
                except Exception:
                    log.exception("%s: worker %s failed on a message", self.name, name)
                return
            await self._to_mailbox(w, msg, origin, block)
        elif head.transport == TCP:
            if not origin.is_local and not self.reach.transit_allows(head.value):
                target = head.value.decode("utf-8", errors="replace")
                self.reach.refuse(origin, target)
                await self.report(
                    msg,
                    f"node {self.name} opens connections only for its own callers: it is no "
                    f"transit node for {target}",
                )
                return
            await self.tcp.forward(head, msg, origin, block=block)
        elif head.transport == NATS:
            if self.nats is None:
                await self.report(msg, f"node {self.name} is on no NATS fabric")
                return
            await self.nats.forward(head, msg, origin, block=block)
        else:
            await self.report(msg, f"unknown transport type {head.transport} at node {self.name}")

    async def _route_other(
        self, name: str, msg: RoutedMessage, origin: Origin, block: bool
    ) -> None:
        """``msg`` to a local name that is no worker: a sink, a reply address, or a link."""
        sink = self._sinks.get(name)
        if sink is not None:
            try:
                sink(msg)
            except Exception:
                log.exception("%s: %s failed on a message", self.name, name)
            return
        reply = self._replies.get(name)
        if reply is not None:
            send, expected = reply
            if origin.is_local or expected is None or expected(origin):
                with contextlib.suppress(anyio.WouldBlock):  # only the first reply counts
                    send.send_nowait(Message.delivered(msg, origin))
            else:
                self.reach.refuse(origin, name)
            return
        conn = self.tcp.connection(name)
        if conn is not None:  # a link back to where a message came from
            if self.reach.may_reach(name, origin):
                await self.tcp.send_via(conn, msg, block=block)
                return
            self.reach.refuse(origin, name)
        await self.report(msg, f"no worker {name!r} on node {self.name}")

    async def _to_mailbox(self, w: Worker, msg: RoutedMessage, origin: Origin, block: bool) -> None:
        """Hand ``msg`` to a worker's mailbox: at once if there is room; else, when ``block``,
        wait — but never longer than ``TcpOptions.drain_timeout``: a worker that takes nothing
        for that long is wedged, and its senders are told so instead of waiting with it."""
        delivered = Message.delivered(msg, origin)
        try:
            try:
                w.send.send_nowait(delivered)
            except anyio.WouldBlock:
                if not block:
                    self.count("dropped: worker mailbox full")
                    return
                bound = self.tcp.options.drain_timeout
                with anyio.move_on_after(bound):
                    await w.send.send(delivered)
                    w.delivered += 1
                    return
                self.count("dropped: worker mailbox full")
                await self.report(
                    msg,
                    f"worker {w.address!r} on node {self.name} is busy: it took no message "
                    f"for {bound:g} s",
                )
                return
            w.delivered += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self.report(msg, f"worker {w.address!r} on node {self.name} stopped")

    def origin_channel(self, origin: Origin) -> ChannelEnd | None:
        """The open secure channel a message came out of (None: it came through none)."""
        if origin.kind != "channel":
            return None
        ch = self.channels.get(origin.address)
        return None if ch is None or ch.closed.is_set() else ch

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def backpressure_events(self) -> dict[str, int]:
        """How often back-pressure was applied, by kind: by the node's own tasks and by its
        data plane (read from the engine now)."""
        plane = self.data_plane.backpressure()
        return {kind: self.backpressure[kind] + plane.get(kind, 0) for kind in BACKPRESSURE}

    def policy_refusal_counts(self) -> dict[str, dict[str, int]]:
        """Refusals by a policy, by resource type, then resource name (``*``: a name the peer
        chose that no policy names)."""
        out: dict[str, dict[str, int]] = {}
        for (resource_type, resource), n in sorted(self.policy_refusals.items()):
            out.setdefault(resource_type, {})[resource] = n
        return out

    async def route_batch(self, msgs: Sequence[RoutedMessage]) -> None:
        """Route messages that share their first hop, in order; over TCP they are queued as one
        unit, so no other message comes between them."""
        head = msgs[0].onward[0] if msgs and msgs[0].onward else None
        conn = None
        if head is not None and head.transport == TCP:
            try:
                conn = await self.tcp.connect(head.value)
            except TetherError as e:
                for m in msgs:
                    await self.report(m, f"at node {self.name}: {e}")
                return
        elif head is not None and head.transport == LOCAL:
            name = head.value.decode("utf-8", errors="replace")
            if not self.has_worker(name):
                conn = self.tcp.connection(name)
        if conn is None or any(m.onward[:1] != (head,) for m in msgs):
            for m in msgs:
                await self.route(m)
            return
        await self.tcp.send_many_via(conn, msgs)

    async def report(self, msg: RoutedMessage, reason: str) -> None:
        """Tell the sender (along the return route) that ``msg`` could not be delivered."""
        log.info("%s: undeliverable message: %s", self.name, reason)
        if not msg.return_route or (msg.payload and msg.payload[0] == KIND_ERROR):
            return  # never report about a report (no loops)
        try:
            await self.route(
                RoutedMessage(msg.return_route, (), encode_payload(KIND_ERROR, reason.encode()))
            )
        except TetherError as e:
            log.info("%s: could not report an undeliverable message: %s", self.name, e)

    async def request(
        self,
        route: str | Sequence[Address],
        payload: bytes,
        *,
        timeout: float = 10.0,
        trust: TrustPolicy | None = None,
    ) -> bytes:
        """Send ``payload`` and wait for the reply (UnreachableError if a hop reports failure,
        ReplyTimeoutError if nothing comes back within ``timeout`` seconds; ``trust``: who may
        answer the route's last secure channel, see :meth:`resolve_route`)."""
        onward = await self.resolve_route(route, trust=trust)
        # Unguessable (a reply address is reachable from the path the request takes), and
        # it answers only the origin the reply must come from, when that is known.
        address = f"reply#{secrets.token_hex(8)}"
        send, receive = anyio.create_memory_object_stream[Message](1)
        # A reply address is a one-slot mailbox, not a worker task: no task per request.
        self._replies[address] = (send, self.expected_origin(onward[0]))
        try:
            await self.route(
                RoutedMessage(onward, (Address.local(address),), encode_payload(KIND_DATA, payload))
            )
            with anyio.fail_after(timeout if timeout > 0 else math.inf):
                reply = await receive.receive()
        except TimeoutError:
            raise ReplyTimeoutError(
                f"no reply from {routing.format_route(onward)} within {timeout:g} s; is the "
                "route right and the peer up?"
            ) from None
        finally:
            del self._replies[address]
            send.close()
            receive.close()
        if reply.kind == KIND_ERROR:
            raise UnreachableError(reply.payload.decode("utf-8", errors="replace"))
        return reply.payload

    def expected_origin(self, head: Address) -> Callable[[Origin], bool] | None:
        """Which remote origins may answer what this node sends by the first hop ``head``: its
        channel, its link, or the connection to its TCP address (None: any, the path is a
        worker's). Reply addresses and channel handshakes listen only to that origin."""
        if head.transport == TCP:
            key = head.value.decode("utf-8", errors="replace")

            def by_tcp(origin: Origin) -> bool:
                conn = self.tcp.connection(origin.address) if origin.kind == "link" else None
                return conn is not None and conn.key == key

            return by_tcp
        if head.transport == NATS:  # a name there may be any node's: any fabric peer answers
            return lambda origin: origin.kind == "link" and origin.address.startswith("nats:")
        name = head.value.decode("utf-8", errors="replace")
        if name in self.channels:
            return lambda origin: origin == Origin.channel(name)
        if self.tcp.connection(name) is not None and not self.has_worker(name):
            return lambda origin: origin == Origin.link(name)
        return None

    async def listen_tcp(self, host: str = "127.0.0.1", port: int = 0) -> Listener:
        return await self.tcp.listen(host, port)

    def arrival_channel(self, return_route: Sequence[Address]) -> ChannelEnd | None:
        """The open secure channel a message came through (the head of its return route), if
        any."""
        if not return_route or return_route[0].transport != LOCAL:
            return None
        ch = self.channels.get(return_route[0].value.decode("utf-8", errors="replace"))
        return None if ch is None or ch.closed.is_set() else ch

    # --- policies: see tether.node.policies ------------------------------------------------

    def path_restored(self) -> None:
        """A transport of this node is connected again (see :attr:`path_restored_hooks`)."""
        for hook in list(self.path_restored_hooks):
            hook()

    def add_policy(
        self,
        expression: str,
        *,
        resource: str | None = None,
        resource_type: str | None = None,
        policy_id: str | None = None,
    ) -> PolicyRule:
        return policies.add_policy(
            self,
            expression,
            resource=resource,
            resource_type=resource_type,
            policy_id=policy_id,
        )

    def delete_policy(self, policy_id: str) -> None:
        policies.delete_policy(self, policy_id)

    # --- secure channels: their table, their carriers, their data plane ------------------

    def first_hop_connection(self, route: Sequence[Address]) -> Connection | None:
        """The open TCP connection of ``route``'s first hop, if there is one (no connect): a
        TCP address with a connection, or a link's local address."""
        head = route[0] if route else None
        conn = None
        if head is not None and head.transport == TCP:
            conn = self.tcp.outgoing.get(head.value.decode("utf-8", errors="replace"))
        elif head is not None and head.transport == LOCAL:
            name = head.value.decode("utf-8", errors="replace")
            if not self.has_worker(name):
                conn = self.tcp.connection(name)
        return conn if conn is not None and not conn.closed.is_set() else None

    def connection_closed(self, address: str, peer: str | None) -> None:
        """A TCP connection closed: secure channels whose first hop it was can carry nothing
        more; close them now (their users learn it at once, not at their next timeout)."""
        self.reach.drop(address)
        hops = {Address.local(address)}
        if peer is not None:
            hops.add(Address(TCP, peer.encode()))
        for channel in list(self.channels.values()):
            if channel.remote_route and channel.remote_route[0] in hops:
                self.task_group.start_soon(channel.close, False)

    def remember_channel(self, channel: Channel) -> None:
        """An established channel: routes, policies and the data plane know it from now on."""
        self.channels[channel.address] = channel
        conn = self.first_hop_connection(channel.remote_route)
        if conn is not None:  # a link that carries a secure channel is kept while idle
            conn.channels.add(channel.address)
            self._carriers[channel.address] = conn
        self.data_plane.add_channel(channel)

    def forget_channel(self, channel: ChannelEnd) -> None:
        self.channels.pop(channel.address, None)
        self.reach.drop(channel.address)
        carrier = self._carriers.pop(channel.address, None)
        if carrier is not None:
            carrier.channels.discard(channel.address)
        self.data_plane.remove_channel(channel)
