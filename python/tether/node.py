"""A node: workers at addresses, source routing between them, and transports to other nodes.

    async with tether.Node("n1") as node:
        await node.start_worker("echo", echo)
        listener = await node.listen_tcp("127.0.0.1", 0)
        reply = await node.request("/ip4/127.0.0.1/tcp/4000/service/echo", b"hi")

Routing (``docs/routing.md``): a message carries an onward route and a return route. The node
looks at the first onward address: a worker name on this node gets the message with that address
popped; a TCP address is a connection (made or reused), which pops it and carries the message to
the peer node, whose end of the connection pushes its own address onto the return route. A worker
that forwards a message pushes itself onto the return route; one that sends a message puts itself
there. A reply is sent to the return route, and so retraces the hops.

Every queue is bounded (a worker's mailbox, a connection's send queue), and every hand-off awaits
room, so a slow consumer slows its producers — back to the TCP sender, whose socket stops being
read — and a node's memory stays bounded. A message that cannot be delivered (no such worker, a
connection that cannot be made or died) is answered along its return route with an error report,
so the sender gets a precise error instead of a timeout.

Runs on anyio: trio by default, asyncio too.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tether import routing
from tether.errors import InvalidArgumentError, RouteError, TetherError
from tether.message import LOCAL, TCP, Address, RoutedMessage

log = logging.getLogger("tether.node")

#: Payload envelope: the first byte of every routed payload says what it is.
KIND_DATA = 0
KIND_ERROR = 1

MAILBOX_SIZE = 64

#: Worker kinds whose policies are checked where they make sense rather than per message: a
#: listener's in the handshake (its first messages come through no channel yet), a channel's
#: own workers never (they are the channel).
_OWN_ENFORCEMENT = frozenset({"secure-channel-listener", "secure-channel"})


class UnreachableError(RouteError):
    """A hop could not deliver the message; the reason names the hop and the problem."""


class ReplyTimeoutError(TetherError, TimeoutError):
    """No reply arrived in time."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a worker receives it."""

    onward: tuple[Address, ...]
    return_route: tuple[Address, ...]
    payload: bytes
    kind: int = KIND_DATA

    @classmethod
    def delivered(cls, msg: RoutedMessage) -> Message:
        """``msg`` as the worker at its first onward address gets it: that address popped, the
        kind byte split off the payload."""
        return cls(msg.onward[1:], msg.return_route, msg.payload[1:], msg.payload[0])


Handler = Callable[["WorkerContext", Message], Awaitable[None]]
RawHandler = Callable[["WorkerContext", RoutedMessage], Awaitable[None]]


@dataclass
class Worker:
    address: str
    handler: Any  # Handler, or RawHandler for a raw inline worker
    send: MemoryObjectSendStream[Message]
    receive: MemoryObjectReceiveStream[Message]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    kind: str = "custom"
    delivered: int = 0
    busy: bool = False
    inline: bool = False
    raw: bool = False


class WorkerContext:
    """What a handler gets: its node and its own address."""

    def __init__(self, node: Node, address: str) -> None:
        self.node = node
        self.address = address

    async def reply(self, msg: Message, payload: bytes) -> None:
        """Send ``payload`` back along the message's return route."""
        await self.node.send(msg.return_route, payload, return_route=(Address.local(self.address),))

    async def forward(self, msg: Message) -> None:
        """Pass the message on along its onward route: this worker was popped from the onward
        route on delivery and now pushes itself onto the return route, so replies come back
        through it."""
        await self.node.route(
            RoutedMessage(
                msg.onward,
                (Address.local(self.address), *msg.return_route),
                encode_payload(msg.kind, msg.payload),
            )
        )


async def echo(ctx: WorkerContext, msg: Message) -> None:
    """The built-in ``echo`` service: replies with what it received."""
    if msg.kind == KIND_DATA and msg.return_route:
        await ctx.reply(msg, msg.payload)


def encode_payload(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + body


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


class Node:
    """See the module documentation."""

    def __init__(
        self,
        name: str = "node",
        *,
        resolve_node: routing.NodeResolver | None = None,
        tcp_options: Any = None,
        identity: Any = None,
        authorities: Any = None,
        trust: Any = None,
        relay_owners: Any = None,
        dataplane: bool | None = None,
    ) -> None:
        from tether.transport.tcp import TcpOptions, TcpTransport

        self.name = name
        self.identity = identity
        """The node's :class:`~tether.channel.ChannelIdentity`, if it has one (then it starts
        a secure-channel listener at ``api``)."""
        self.authorities = dict(authorities or {})
        self.trust = trust
        self.channels: dict[str, Any] = {}
        self.relay_service: Any = None
        self.relays: dict[str, Any] = {}
        self._relay_owners: Any = relay_owners
        self.channel_listeners: dict[str, Any] = {}
        self._channel_routes: dict[tuple[Address, ...], Any] = {}
        self._channel_lock = anyio.Lock()
        self._workers: dict[str, Worker] = {}
        self._replies: dict[str, MemoryObjectSendStream[Message]] = {}
        self._sinks: dict[str, Callable[[RoutedMessage], None]] = {}
        self.inlets: dict[str, Any] = {}
        self.outlets: dict[str, Any] = {}
        self.authority: Any = None
        self.memberships: dict[str, Any] = {}
        self.revoked_credentials: dict[str, frozenset[str]] = {}
        """Authority identifier → ids of its credentials revoked (from its signed lists)."""
        self.on_credential: Callable[[Any], None] | None = None
        """Called with each credential this node starts presenting (the daemon stores it)."""
        self.policies: dict[str, Any] = {}
        """Policy id → :class:`PolicyRule`: policies attached to resources by name or type."""
        self._tg: TaskGroup | None = None
        self._ids = itertools.count(1)
        self._resolve_node = resolve_node
        self.tcp = TcpTransport(self, tcp_options or TcpOptions())
        from tether import engine

        self._use_dataplane = engine.enabled() if dataplane is None else dataplane
        self.dataplane: engine.DataPlane | None = None
        """The Rust data plane (:mod:`tether.engine`) while the node runs, unless disabled
        (``dataplane=False`` or ``TETHER_DATAPLANE=python``)."""

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if self._use_dataplane:
            from tether.engine import DataPlane

            self.dataplane = DataPlane(self)
            await self._tg.start(self.dataplane.run)
        await self.start_worker("echo", echo, kind="echo")
        if self.identity is not None:
            await self.create_secure_channel_listener("api")
            from tether.relay import SERVICE, RelayService

            self.relay_service = RelayService(self, self._relay_owners)
            await self.start_worker(SERVICE, self.relay_service.handle, kind="relay-service")
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
    ) -> None:
        """Run ``handler`` for each message to ``address``: in the worker's own task, one message
        at a time from a bounded mailbox; or, with ``inline``, directly in the task that routes
        the message (no mailbox, no task switch: for handlers that are quick and keep their own
        order, such as a channel's decryptor fed by one connection). An inline worker with
        ``raw`` gets the :class:`RoutedMessage` as it arrived instead (its own address still at
        the head of ``onward``, the kind byte still first in the payload: nothing copied)."""
        if raw and not inline:
            raise TetherError("only an inline worker can take raw messages")
        if self.has_worker(address):
            raise TetherError(f"a worker already listens at {address!r} on {self.name}")
        send, receive = anyio.create_memory_object_stream[Message](0 if inline else mailbox)
        w = Worker(address, handler, send, receive, kind=kind, inline=inline, raw=raw)
        self._workers[address] = w
        if not inline:
            await self.task_group.start(self._run_worker, w)

    async def _run_worker(self, w: Worker, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        ctx = WorkerContext(self, w.address)
        with w.scope:
            task_status.started()
            async with w.receive:
                async for msg in w.receive:
                    w.busy = True
                    try:
                        await w.handler(ctx, msg)
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

    async def resolve_route(self, route: str | Sequence[Address]) -> tuple[Address, ...]:
        """Parse, and replace each ``/secure/NAME`` with a secure channel (opened to the listener
        NAME at the end of the route so far, or reused)."""
        addresses = self.parse_route(route)
        while True:
            k = next((i for i, a in enumerate(addresses) if a.transport == routing.SECURE), None)
            if k is None:
                return addresses
            target = (*addresses[:k], Address(LOCAL, addresses[k].value))
            channel = self._channel_routes.get(target)
            if channel is None or channel.closed.is_set():
                async with self._channel_lock:
                    channel = self._channel_routes.get(target)
                    if channel is None or channel.closed.is_set():
                        channel = await self.create_secure_channel(target)
                        self._channel_routes[target] = channel
            addresses = (Address.local(channel.address), *addresses[k + 1 :])

    async def send(
        self,
        route: str | Sequence[Address],
        payload: bytes,
        *,
        return_route: Sequence[Address] = (),
        kind: int = KIND_DATA,
    ) -> None:
        """Send ``payload`` along ``route`` (a route string or addresses)."""
        onward = await self.resolve_route(route)
        await self.route(RoutedMessage(onward, tuple(return_route), encode_payload(kind, payload)))

    async def route(self, msg: RoutedMessage, via: str | None = None) -> None:
        """Deliver or forward one message (``payload`` includes its kind byte)."""
        if not msg.onward:
            log.info("%s: dropped a message with an empty onward route", self.name)
            return
        if not msg.payload:
            log.info("%s: dropped a message without its kind byte", self.name)
            return
        head = msg.onward[0]
        if head.transport == LOCAL:
            name = head.value.decode("utf-8", errors="replace")
            w = self._workers.get(name)
            if w is None:
                sink = self._sinks.get(name)
                if sink is not None:
                    try:
                        sink(msg)
                    except Exception:
                        log.exception("%s: %s failed on a message", self.name, name)
                    return
                reply = self._replies.get(name)
                if reply is not None:
                    with contextlib.suppress(anyio.WouldBlock):  # only the first reply counts
                        reply.send_nowait(Message.delivered(msg))
                    return
                conn = self.tcp.connection(name)
                if conn is not None:  # a link back to where a message came from
                    await self.tcp.send_via(conn, msg)
                else:
                    await self.report(msg, f"no worker {name!r} on node {self.name}")
                return
            if self.policies and not w.inline and w.kind not in _OWN_ENFORCEMENT:
                policy = self.policy_for(w.kind, name)
                who = self.arrival_channel(msg.return_route) if policy is not None else None
                if policy is not None and not self.allows(policy, who, w.kind, name, "send"):
                    await self.report(
                        msg,
                        f"{w.kind} {name!r} on node {self.name} refused "
                        f"{who.peer.identifier if who else 'a sender without a secure channel'} "
                        f"by its policy",
                    )
                    return
            if w.inline:
                w.delivered += 1
                try:
                    await w.handler(
                        WorkerContext(self, w.address),
                        msg if w.raw else Message.delivered(msg),
                    )
                except TetherError as e:
                    log.warning("%s: worker %s could not handle a message: %s", self.name, name, e)
                except Exception:
                    log.exception("%s: worker %s failed on a message", self.name, name)
                return
            try:
                await w.send.send(Message.delivered(msg))
                w.delivered += 1
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self.report(msg, f"worker {name!r} on node {self.name} stopped")
        elif head.transport == TCP:
            await self.tcp.forward(head, msg)
        else:
            await self.report(msg, f"unknown transport type {head.transport} at node {self.name}")

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
        self, route: str | Sequence[Address], payload: bytes, *, timeout: float = 10.0
    ) -> bytes:
        """Send ``payload`` and wait for the reply (UnreachableError if a hop reports failure,
        ReplyTimeoutError if nothing comes back within ``timeout`` seconds)."""
        onward = await self.resolve_route(route)
        address = self.next_id("reply")
        send, receive = anyio.create_memory_object_stream[Message](1)
        # A reply address is a one-slot mailbox, not a worker task: no task per request.
        self._replies[address] = send
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

    async def listen_tcp(self, host: str = "127.0.0.1", port: int = 0) -> Any:
        return await self.tcp.listen(host, port)

    # --- secure channels ----------------------------------------------------------------

    async def create_secure_channel_listener(
        self,
        address: str,
        *,
        identity: Any = None,
        trust: Any = None,
        authorities: Any = None,
    ) -> Any:
        """Accept secure channels at ``address`` (see :mod:`tether.channel`)."""
        from tether.channel import ChannelListener, trust_anyone

        me = identity or self.identity
        if me is None:
            raise TetherError(f"node {self.name} has no identity to accept channels with")
        listener = ChannelListener(
            self,
            address,
            me,
            # the node's own dict, not a copy: authorities trusted later (enrollment) count too
            authorities if authorities is not None else self.authorities,
            trust or self.trust or trust_anyone,
        )
        await self.start_worker(address, listener.handle, kind="secure-channel-listener")
        self.channel_listeners[address] = listener
        return listener

    async def create_secure_channel(
        self,
        route: str | Sequence[Address],
        *,
        identity: Any = None,
        trust: Any = None,
        authorities: Any = None,
        timeout: float = 10.0,
    ) -> Any:
        """Open a secure channel to the listener at the end of ``route``; returns the
        :class:`~tether.channel.SecureChannel` (its ``address`` goes in routes)."""
        from tether.channel import open_channel, trust_anyone

        me = identity or self.identity
        if me is None:
            raise TetherError(f"node {self.name} has no identity to open channels with")
        return await open_channel(
            self,
            self.parse_route(route),
            me,
            authorities=authorities if authorities is not None else self.authorities,
            trust=trust or self.trust or trust_anyone,
            timeout=timeout,
        )

    async def create_relay(self, name: str, at: str | Sequence[Address], **options: Any) -> Any:
        """Claim ``name`` at the relay node at the end of route ``at`` (a route to the node, or
        to its ``api`` listener) and keep it claimed; returns the
        :class:`~tether.relay.RelayClient` (its ``forward_route`` reaches this node)."""
        from tether.relay import RelayClient

        if name in self.relays:
            raise TetherError(f"node {self.name} already keeps a relay named {name!r}")
        client = RelayClient(self, name, at if isinstance(at, str) else tuple(at), **options)
        await self.task_group.start(client.run)
        self.relays[name] = client
        return client

    async def delete_relay(self, name: str) -> None:
        client = self.relays.pop(name, None)
        if client is None:
            raise TetherError(f"no relay named {name!r} on node {self.name}")
        client.stop()

    # --- portals ------------------------------------------------------------------------

    async def create_tcp_outlet(
        self, to: str, *, name: str = "outlet", allow: Any = None, options: Any = None
    ) -> Any:
        """Serve portal sessions at ``name`` by connecting each to ``to`` (``HOST:PORT``);
        returns the :class:`~tether.portal.Outlet`."""
        from tether.portal import Outlet

        outlet = Outlet(self, name, to, allow=allow, options=options)
        self.add_sink(name, outlet.handle)
        self.outlets[name] = outlet
        self.task_group.start_soon(outlet.run)
        return outlet

    async def delete_tcp_outlet(self, name: str) -> None:
        outlet = self.outlets.pop(name, None)
        if outlet is None:
            raise TetherError(f"no tcp-outlet named {name!r} on node {self.name}")
        self.remove_sink(name)
        outlet.stop()
        for session in list(outlet.sessions.values()):
            session.abort(f"tcp-outlet {name!r} deleted", notify=True)

    async def create_tcp_inlet(
        self,
        bind: str,
        route: str | Sequence[Address],
        *,
        name: str | None = None,
        allow: Any = None,
        options: Any = None,
    ) -> Any:
        """Listen on ``bind`` (``HOST:PORT``, port 0 for any) and carry each connection to the
        outlet at the end of ``route``; returns the :class:`~tether.portal.Inlet` (its
        ``address`` is where clients connect)."""
        from tether.portal import Inlet

        name = name or next(
            f"inlet{k}" for k in itertools.count(1) if f"inlet{k}" not in self.inlets
        )
        if name in self.inlets:
            raise TetherError(f"node {self.name} already has a tcp-inlet named {name!r}")
        inlet = Inlet(self, name, bind, route, allow=allow, options=options)
        await self.task_group.start(inlet.run)
        self.inlets[name] = inlet
        return inlet

    async def delete_tcp_inlet(self, name: str) -> None:
        inlet = self.inlets.pop(name, None)
        if inlet is None:
            raise TetherError(f"no tcp-inlet named {name!r} on node {self.name}")
        inlet.stop()

    # --- policies -----------------------------------------------------------------------------

    def add_policy(
        self,
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
            policy_id or self.next_id("policy").replace("#", ""),
            resource,
            resource_type,
            Policy.parse(expression),
        )
        self.policies[rule.id] = rule
        return rule

    def delete_policy(self, policy_id: str) -> None:
        if self.policies.pop(policy_id, None) is None:
            raise TetherError(f"no policy {policy_id!r} on node {self.name}")

    def policy_for(self, resource_type: str, name: str) -> Any:
        """The policy that applies to resource ``name`` of ``resource_type`` (None: none)."""
        by_type = None
        for rule in self.policies.values():
            if rule.resource == name and rule.resource_type in (None, resource_type):
                return rule.policy
            if rule.resource is None and rule.resource_type == resource_type:
                by_type = rule.policy
        return by_type

    def allows(
        self,
        policy: Any,
        channel: Any,
        resource_type: str,
        name: str,
        action: str,
    ) -> bool:
        """Evaluate ``policy`` for the peer of ``channel`` (None: a message that came through
        no secure channel, so with no authenticated attributes at all)."""
        return self.peer_allows(
            policy, None if channel is None else channel.peer, resource_type, name, action
        )

    def peer_allows(
        self,
        policy: Any,
        peer: Any,
        resource_type: str,
        name: str,
        action: str,
    ) -> bool:
        """:meth:`allows` for a verified :class:`~tether.channel.Peer` (None: no peer), with
        the attributes of its credentials still valid now."""
        from tether.channel import valid_attributes
        from tether.policy import subject_attributes

        env: dict[str, object] = (
            subject_attributes(peer.identifier, valid_attributes(peer, self))
            if peer is not None
            else {}
        )
        env.update({"resource.type": resource_type, "resource.name": name, "action.name": action})
        return bool(policy.allows(env))

    def arrival_channel(self, return_route: Sequence[Address]) -> Any:
        """The secure channel a message came through (the head of its return route), if any."""
        if not return_route or return_route[0].transport != LOCAL:
            return None
        ch = self.channels.get(return_route[0].value.decode("utf-8", errors="replace"))
        return None if ch is None or ch.closed.is_set() else ch

    # --- authority and membership -----------------------------------------------------------

    async def create_authority(
        self, registry: Any, identity_name: str, shared: Any, **options: Any
    ) -> Any:
        """Run an authority (:mod:`tether.authority`) as the service ``authority``, with the
        identity ``identity_name`` of ``registry`` and the member registry in ``shared``."""
        from tether.authority import SERVICE, Authority

        if self.authority is not None:
            raise TetherError(f"node {self.name} already runs an authority")
        authority = Authority(self, registry, identity_name, shared, **options)
        await self.start_worker(SERVICE, authority.handle, kind="authority")
        self.authority = authority
        # This node honours the credentials it issues (its own policies see members' roles).
        self.authorities[authority.identifier] = authority.identity
        self.task_group.start_soon(authority.run_maintenance)
        return authority

    async def enroll(self, ticket: Any, *, poll_interval: float = 60.0) -> Any:
        """Present a :class:`~tether.authority.Ticket` (or its text) to its authority: this
        node becomes a member, trusts the authority, and from now on presents the credential
        and keeps it fresh. Returns the :class:`~tether.authority.Membership`. Nothing about
        this node changes unless the enrollment succeeds (a refused ticket leaves no trust in
        its authority behind, and an existing membership as it was)."""
        from tether.authority import Membership, Ticket

        t = Ticket.decode(ticket) if isinstance(ticket, str) else ticket
        if self.identity is None:
            raise TetherError(f"node {self.name} has no identity to enroll")
        m = Membership(self, t.authority, t.route, poll_interval=poll_interval)
        try:
            await m.enroll(t.secret)
        except BaseException:
            m.stop()
            raise
        await self._adopt(m)
        return m

    async def join(
        self,
        authority: Any,
        route: str,
        *,
        poll_interval: float = 60.0,
        credential: Any = None,
    ) -> Any:
        """Trust ``authority`` (an Identity) and keep a membership of it at ``route`` (when a
        node restarts with a stored credential, or was made a member by an admin)."""
        from tether.authority import Membership

        m = Membership(self, authority, route, poll_interval=poll_interval)
        m.credential = credential
        await self._adopt(m)
        return m

    async def _adopt(self, m: Any) -> None:
        """Make ``m`` this node's membership of its authority: trust the authority, present
        the credential, keep it fresh."""
        self.authorities[m.identifier] = m.authority
        old = self.memberships.pop(m.identifier, None)
        if old is not None:
            old.stop()
        self.memberships[m.identifier] = m
        m.active = True
        if m.credential is not None:
            self.use_credential(m.credential)
        await self.task_group.start(m.run)

    def use_credential(self, credential: Any) -> None:
        """Present ``credential`` in this node's handshakes from now on (replacing one from
        the same issuer)."""
        from tether.channel import ChannelIdentity

        me = self.identity
        if me is None:
            raise TetherError(f"node {self.name} has no identity")
        creds = tuple(c for c in me.credentials if c.issuer != credential.issuer)
        self.identity = ChannelIdentity(
            me.identity, me.static_key, me.attestation, (*creds, credential)
        )
        for listener in self.channel_listeners.values():
            if listener.me.identity.identifier == me.identity.identifier:
                listener.me = self.identity
        if self.on_credential is not None:
            self.on_credential(credential)

    async def present_credentials(self) -> None:
        """Send this node's current credentials on every open channel (after a refresh)."""
        if self.identity is None:
            return
        for channel in list(self.channels.values()):
            if not channel.closed.is_set():
                with contextlib.suppress(TetherError):
                    await channel.present_credentials(self.identity.credentials)

    def connection_closed(self, address: str, peer: str | None) -> None:
        """A TCP connection closed: secure channels whose first hop it was can carry nothing
        more; close them now (their users learn it at once, not at their next timeout)."""
        hops = {Address.local(address)}
        if peer is not None:
            hops.add(Address(TCP, peer.encode()))
        for channel in list(self.channels.values()):
            if channel.remote_route and channel.remote_route[0] in hops:
                self.task_group.start_soon(channel.close, False)

    def remember_channel(self, channel: Any) -> None:
        self.channels[channel.address] = channel
        if self.dataplane is not None and not self.dataplane.stopped:
            self.dataplane.add_channel(channel)
        self.task_group.start_soon(channel.watch_idle)

    def forget_channel(self, channel: Any) -> None:
        self.channels.pop(channel.address, None)
        if self.dataplane is not None:
            self.dataplane.remove_channel(channel)
