"""Portals: carry any TCP protocol through a secure channel.

A **TCP outlet** sits on the node near the target (a database, a web server): it is a service
at an address (``outlet`` by default) that, for each portal session opened through a secure
channel, connects to ``HOST:PORT`` and pumps bytes both ways. A **TCP inlet** sits on the node
near the client: it listens on a local TCP port and turns each accepted connection into a portal
session to the outlet at the end of its route (``/node/relay/service/forward_to_db/secure/api/
service/outlet``: through the relay, inside a secure channel to the database side's ``api``
listener, to its ``outlet``).

The sessions and their protocol are :mod:`tether.services.session`'s.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

from tether._core import SyncMode
from tether.channel.channel import SecureChannel, arrival_channel
from tether.core.errors import InvalidArgumentError, TetherError
from tether.core.message import Address, RoutedMessage
from tether.identity.policy import Policy
from tether.identity.trust import TrustPolicy, trust_policy
from tether.node import limits, policies, routing
from tether.node.data_plane import encoded_route, hand_over
from tether.node.histogram import Histogram
from tether.node.node import BaseNode
from tether.services.session import (
    DATA_PREFIX,
    ENDED_MEMORY,
    HEAD,
    MAX_DATA,
    MAX_REASON,
    OPEN_BUCKETS,
    T_ACK,
    T_CLOSE,
    T_EOF,
    T_OPEN,
    EngineSession,
    PortalError,
    PortalOptions,
    Session,
    nodelay,
    os_reason,
    turn_away,
)

log = logging.getLogger("tether.portal")

__all__ = [  # the sessions' names, re-exported for the portals' users
    "MAX_DATA",
    "EngineSession",
    "Inlet",
    "Outlet",
    "PortalError",
    "PortalOptions",
    "Session",
]


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _policy(allow: str | Policy | None) -> Policy | None:
    if allow is None or allow == "":
        return None
    return allow if isinstance(allow, Policy) else Policy.parse(allow)


def _host_port(spec: str, what: str) -> tuple[str, int]:
    try:
        return routing.host_and_port(spec, any_port=True)
    except ValueError as e:
        raise InvalidArgumentError(
            f"{what} must be HOST:PORT (for example 127.0.0.1:5432), not {spec!r}: {e}"
        ) from None


class _Portal:
    """What inlets and outlets share: the session table and counters."""

    kind = ""

    def __init__(self, node: BaseNode, name: str, options: PortalOptions | None) -> None:
        self.node = node
        self.name = name
        self.options = options or PortalOptions()
        self.policy: Policy | None = None
        self.sessions: dict[Any, Session | EngineSession] = {}
        self._ended: OrderedDict[Any, None] = OrderedDict()  # recently ended session keys
        self.total = 0
        self.refused = 0
        self.failed = 0
        self.last_error = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.created_at = time.time()
        self.open_latency = Histogram(OPEN_BUCKETS)
        """How long its sessions took to open (``tether_portal_session_open_seconds``): an
        inlet's from the accepted connection to the outlet's answer that its target is
        connected, an outlet's from the OPEN to the target connected."""

    def record_open(self, seconds: float) -> None:
        """One of its sessions is open, ``seconds`` after its opening began."""
        self.open_latency.record(seconds)

    async def recheck(self) -> None:
        """Re-evaluate the policy for open sessions every ``recheck_interval`` seconds: a peer
        whose credential expired (or was replaced by one without the attributes) loses its
        sessions within that bound."""
        while True:
            await anyio.sleep(self.options.recheck_interval)
            self.reauthorize()

    def reauthorize(self) -> None:
        """Decide again, now, for what is open: the data plane stops opening sessions alone for
        a channel whose peer is no longer allowed, and that peer's sessions end (each
        ``recheck_interval``, and at once when a policy is added: ``tether.node.policies``)."""
        if policies.applicable(self.node, self.kind, self.name, self.policy):
            self._recheck_engine()
            for session in list(self.sessions.values()):
                refusal = self.refusal(session.channel)
                if refusal is not None:
                    self.refused += 1
                    session.abort(
                        f"{self.kind} {self.name!r}: the peer no longer satisfies its policy (a "
                        f"credential expired or was revoked, or a policy was added): {refusal}",
                        notify=True,
                    )

    async def stop_accepting(self) -> None:
        """Open no new session (the node drains; see the subclasses); the open ones go on."""

    def _recheck_engine(self) -> None:
        """Withdraw what the data plane was allowed to do alone for a channel whose peer no
        longer satisfies the policy."""

    def engine_session(self, session: int, channel: Any, route: Any) -> None:
        """The data plane opened a session by itself, through ``channel`` (see the
        subclasses)."""

    def _adopt(
        self,
        session_id: int,
        channel: SecureChannel,
        address: str,
        key: Any,
        peer: tuple[Address, ...],
    ) -> None:
        """Keep the books of a session the data plane opened by itself."""
        session = EngineSession(self.node, address, channel, peer, self.options, self)
        session.id = session_id
        session.key = key
        self.sessions[key] = session
        self.total += 1
        self.node.data_plane.adopt_session(session_id, session)

    def effective_policy(self) -> dict[str, object]:
        """What its ``show`` says of its policy: every policy that applies (the node's for
        its type and its name, and its own ``allow``), all of which must allow."""
        default = (
            "any peer with a secure channel to this node may connect"
            if self.kind == "tcp-outlet"
            else "the route's secure channels decide whom it talks to"
        )
        return policies.effective(self.node, self.kind, self.name, self.policy, default=default)

    def refusal(self, channel: SecureChannel) -> str | None:
        """Why the channel's peer, with the attributes that count now, may not
        ``connect`` to this resource: every applicable policy must allow it
        (:func:`tether.node.policies.check`). None: it may."""
        return policies.check(
            self.node, self.kind, self.name, "connect", channel.peer, own=self.policy
        )

    def allowed(self, channel: SecureChannel) -> bool:
        return self.refusal(channel) is None

    def _remember_ended(self, key: Any) -> None:
        self._ended[key] = None
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    def forget(self, session: Session | EngineSession) -> None:
        key = session.key
        if self.sessions.get(key) is not session:
            return  # forgotten already
        del self.sessions[key]
        self._remember_ended(key)
        self.node.remove_sink(session.address)
        self.bytes_in += session.received_bytes
        self.bytes_out += session.sent_bytes
        if session.close_reason:
            self.failed += 1
            self.last_error = session.close_reason

    def _stats(self) -> dict[str, object]:
        return {
            "sessions": len(self.sessions),
            "total": self.total,
            "refused": self.refused,
            "failed": self.failed,
            "last_error": self.last_error,
            "bytes_in": self.bytes_in + sum(s.received_bytes for s in self.sessions.values()),
            "bytes_out": self.bytes_out + sum(s.sent_bytes for s in self.sessions.values()),
        }


class Outlet(_Portal):
    """The service at ``name`` that connects each portal session to ``HOST:PORT``."""

    kind = "tcp-outlet"

    def __init__(
        self,
        node: BaseNode,
        name: str,
        to: str,
        *,
        allow: str | Policy | None = None,
        options: PortalOptions | None = None,
    ) -> None:
        super().__init__(node, name, options)
        self.to = to
        self.host, self.port = _host_port(to, "the outlet's target")
        self._scope = anyio.CancelScope()
        self.policy: Policy | None = _policy(allow)
        # Channels the data plane may open sessions for by itself (their peers are allowed).
        self._authorized: dict[str, SecureChannel] = {}
        self.draining = False
        # OPENs through a channel Python has authorized are served in the data plane without
        # a round through Python (IP targets; a host name is resolved per session).
        self._engine_id = node.data_plane.add_outlet(
            self, name, self.options, self._connect_prefix()
        )
        if self._engine_id is not None and _ip_literal(self.host):
            node.data_plane.set_outlet_target(self._engine_id, self.host, self.port)

    def info(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "to": self.to,
            "allow": str(self.policy) if self.policy else None,
            "policy": self.effective_policy(),
            **self._stats(),
        }

    async def run(self) -> None:
        try:
            with self._scope:
                await self.recheck()
        finally:
            self._leave_engine()

    def stop(self) -> None:
        self._scope.cancel()
        self._leave_engine()

    def _out_of_descriptors(self) -> None:
        self.refused += 1
        self.last_error = "refused a connection: the process has no descriptor left"

    async def stop_accepting(self) -> None:
        """Open no new session (the node drains); the open ones go on."""
        self.draining = True
        oid = self._engine_id
        if oid is not None:
            for channel in self._authorized.values():
                self.node.data_plane.allow_outlet(oid, channel, False)
        self._authorized.clear()

    def _leave_engine(self) -> None:
        oid, self._engine_id = self._engine_id, None
        if oid is not None:
            self.node.data_plane.remove_outlet(oid)

    def _connect_prefix(self) -> str:
        return f"tcp-outlet {self.name!r} could not connect to {self.to}"

    def _recheck_engine(self) -> None:
        oid = self._engine_id
        if oid is None:
            return
        for address, channel in list(self._authorized.items()):
            if channel.closed.is_set() or not self.allowed(channel):
                del self._authorized[address]
                self.node.data_plane.allow_outlet(oid, channel, False)

    def engine_session(self, session: int, channel: Any, route: Any) -> None:
        key = (Address.local(channel.address), *(Address(t, v) for t, v in route))
        self._adopt(session, channel, self.node.next_id("outlet"), key, key)

    def handle(self, msg: RoutedMessage) -> None:
        """Every inlet→outlet message (sync, inline in the router)."""
        if msg.payload[:1] != DATA_PREFIX or not msg.return_route:
            return  # error reports about our own messages: the session's channel handles loss
        key = msg.return_route
        session = self.sessions.get(key)
        if session is not None:
            session.deliver(msg)
            return
        t = msg.payload[1] if len(msg.payload) > 1 else 0
        if key in self._ended:
            return  # the rest of a session already refused or ended: it was told, once
        if t != T_OPEN:
            if t not in (T_CLOSE, T_ACK, T_EOF):  # a late message after the session ended
                self._refuse(key, f"no portal session at tcp-outlet {self.name!r} (it ended)")
            return
        if self.draining:
            self.refused += 1
            self._refuse(
                key,
                f"node {self.node.name} is shutting down: tcp-outlet {self.name!r} opens no "
                "new session; try again when it is back",
            )
            return
        channel = arrival_channel(self.node, key)
        if channel is None:
            self.refused += 1
            self._refuse(
                key,
                f"tcp-outlet {self.name!r} accepts sessions only through a secure channel: "
                "add /secure/LISTENER to the inlet's route",
            )
            return
        refusal = self.refusal(channel)
        if refusal is not None:
            self.refused += 1
            self.last_error = refusal
            log.info("tcp-outlet %s: %s", self.name, self.last_error)
            self._refuse(
                key, f"tcp-outlet {self.name!r} refused {channel.peer.identifier} by its policy"
            )
            return
        if len(self.sessions) >= self.options.max_sessions:
            self.refused += 1
            self._refuse(key, f"tcp-outlet {self.name!r} has {self.options.max_sessions} sessions")
            return
        data_plane = self.node.data_plane
        if data_plane.carries(channel):
            if self._engine_id is not None:
                # The next OPENs through this channel open in the data plane directly.
                self._authorized[channel.address] = channel
                data_plane.allow_outlet(self._engine_id, channel, True)
            self._open_in_engine(channel, key)
            return
        session = Session(
            self.node,
            self.node.next_id("outlet"),
            channel,
            key,
            self.options,
            self,
            established=True,
        )
        session.key = key
        self.sessions[key] = session
        self.total += 1
        self.node.task_group.start_soon(self._connect, session)

    def _open_in_engine(self, channel: SecureChannel, key: tuple[Address, ...]) -> None:
        """The session in the data plane: it connects to the target itself (an IP address;
        a host name is resolved here first), holding what arrives meanwhile."""
        session = EngineSession(
            self.node, self.node.next_id("outlet"), channel, key, self.options, self
        )
        session.key = key
        self.sessions[key] = session
        self.total += 1
        # Messages of this session that Python already holds (in the connection's queue) go
        # first: then the engine waits for the sync marker before taking the rest.
        pending = self.node.data_plane.pending_events(channel)
        sync = SyncMode.ALWAYS if pending else SyncMode.IF_QUEUED
        prefix = self._connect_prefix()
        try:
            session.register(
                None,
                match=self.name,
                match_return=encoded_route(key[1:]),
                open=False,
                sync=sync,
                connect_prefix=prefix,
            )
        except TetherError as e:
            session.engine_closed(f"tcp-outlet {self.name!r} could not open a session: {e}", 0, 0)
            return
        if _ip_literal(self.host):
            self._engine_connect(session, self.host)
        else:
            self.node.task_group.start_soon(self._resolve_and_connect, session, prefix)

    def _engine_connect(self, session: EngineSession, host: str) -> None:
        if session.id is not None:
            self.node.data_plane.session_connect(session.id, host, self.port)

    async def _resolve_and_connect(self, session: EngineSession, prefix: str) -> None:
        try:
            with anyio.fail_after(self.options.connect_timeout):
                infos = await anyio.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as e:
            problem = "timed out" if isinstance(e, TimeoutError) else os_reason(e)
            session.abort(f"{prefix}: {problem}", notify=True)
            return
        if not infos:
            session.abort(f"{prefix}: the name has no address", notify=True)
            return
        self._engine_connect(session, str(infos[0][4][0]))

    def _refuse(self, route: tuple[Address, ...], reason: str) -> None:
        self._remember_ended(route)

        async def send() -> None:
            with contextlib.suppress(TetherError):
                await self.node.route(
                    RoutedMessage(
                        route,
                        (Address.local(self.name),),
                        HEAD[T_CLOSE] + reason.encode()[:MAX_REASON],
                    )
                )

        self.node.task_group.start_soon(send)

    async def _connect(self, session: Session) -> None:
        try:
            with anyio.fail_after(self.options.connect_timeout):
                stream = await anyio.connect_tcp(self.host, self.port)
        except (OSError, TimeoutError) as e:
            problem = "timed out" if isinstance(e, TimeoutError) else os_reason(e)
            session.abort(
                f"tcp-outlet {self.name!r} could not connect to {self.to}: {problem}", True
            )
            self.forget(session)
            return
        nodelay(stream)
        session.opened()
        # The inlet learns that the session is open (before any byte of the target's).
        await session._send_or_abort(HEAD[T_OPEN])
        await session.run(stream)


class Inlet(_Portal):
    """A local TCP listener whose connections become portal sessions along ``route``."""

    kind = "tcp-inlet"

    def __init__(
        self,
        node: BaseNode,
        name: str,
        bind: str,
        route: str | Sequence[Address],
        *,
        allow: str | Policy | None = None,
        options: PortalOptions | None = None,
        trust: TrustPolicy | None = None,
    ) -> None:
        super().__init__(node, name, options)
        self.bind = bind
        self.host, self.port = _host_port(bind, "the inlet's listening address")
        self.route = route if isinstance(route, str) else routing.format_route(route)
        self._parsed = node.parse_route(route)  # errors now, not at the first connection
        if not any(a.transport == routing.SECURE for a in self._parsed):
            raise InvalidArgumentError(
                f"the inlet's route {self.route} has no secure channel: portal data must be "
                "end-to-end encrypted; insert /secure/LISTENER before the outlet (for example "
                "/node/db/secure/api/service/outlet)"
            )
        self.policy: Policy | None = _policy(allow)
        # Who must answer the route's secure channels: ``trust``, else the inlet's own policy
        # (checked in the handshake), else the nodes the route names
        # (tether.identity.trust.initiator_trust).
        self._expect = routing.named_peers(route) if isinstance(route, str) else None
        self._trust = trust
        if trust is None and self.policy is not None:
            self._trust = trust_policy(self.policy, node, self.kind, name)
        self._scope = anyio.CancelScope()
        self.state = "starting"
        self._accepting = anyio.CancelScope()
        self._listener_closed: anyio.Event | None = None  # while Python serves the listener
        self._engine_id: int | None = None
        self._bound: SecureChannel | None = None  # the data plane opens connections through it
        self._tg: Any = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def info(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "from": self.address,
            "to": self.route,
            "allow": str(self.policy) if self.policy else None,
            "policy": self.effective_policy(),
            "state": self.state,
            **self._stats(),
        }

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until deleted. When the data plane takes the listening socket, it accepts:
        once a connection has gone the slow way (the route resolved, the policy checked, here),
        the next ones through the same channel open in the plane with no round through Python,
        and the rest come here (:meth:`accepted`)."""
        listener: Any = await self._listen()
        self.port = listener.extra(SocketAttribute.local_port)
        try:
            self._engine_id = self.node.data_plane.add_inlet(
                self, listener.extra(SocketAttribute.raw_socket), self.options
            )
        except BaseException:
            await listener.aclose()
            raise
        if self._engine_id is not None:
            await listener.aclose()  # closes nothing now: the descriptor is the plane's
            listener = None
        self.state = "listening"
        task_status.started()
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    if listener is None:
                        await self.recheck()
                    else:
                        tg.start_soon(self.recheck)
                        self._listener_closed = anyio.Event()
                        try:
                            async with listener:
                                with self._accepting:
                                    await limits.serve(
                                        listener, self._accept, tg, self._out_of_descriptors
                                    )
                        finally:
                            self._listener_closed.set()
                        # No longer accepting (the node drains): the sessions go on in tg.
        finally:
            self._tg = None
            self._leave_engine()
            self.state = "stopped"
            for session in list(self.sessions.values()):
                session.abort(f"tcp-inlet {self.name!r} deleted", notify=True)

    def stop(self) -> None:
        self._scope.cancel()
        self._leave_engine()

    def _out_of_descriptors(self) -> None:
        self.refused += 1
        self.last_error = "refused a connection: the process has no descriptor left"

    async def _listen(self) -> Any:
        try:
            return await anyio.create_tcp_listener(
                local_host=self.host, local_port=self.port, reuse_port=False
            )
        except OSError as e:
            raise InvalidArgumentError(
                f"tcp-inlet {self.name!r} cannot listen on {self.bind}: {e.strerror or e}"
            ) from None

    async def stop_accepting(self) -> None:
        """Close the listening socket (the node drains), and return once it is closed; the
        open sessions go on."""
        if self.state == "listening":
            self.state = "draining"
        self._accepting.cancel()
        self._leave_engine()
        if self._listener_closed is not None:
            await self._listener_closed.wait()

    def _leave_engine(self) -> None:
        iid, self._engine_id = self._engine_id, None
        if iid is not None:
            self.node.data_plane.remove_inlet(iid)

    def accepted(self, fd: int) -> None:
        """The data plane accepted a connection it cannot open alone: the slow way."""
        if self._tg is None:
            os.close(fd)
            return
        self._tg.start_soon(self._accept_fd, fd)

    async def _accept_fd(self, fd: int) -> None:
        try:
            # anyio's socket object owns fd from here (and closes it, also when this fails).
            stream = await SocketStream.from_socket(fd)
        except (OSError, ValueError) as e:  # the client went away meanwhile
            self.failed += 1
            self.last_error = f"an accepted connection could not be taken over: {e}"
            log.warning("tcp-inlet %s: %s", self.name, self.last_error)
            return
        await self._accept(stream)

    def _recheck_engine(self) -> None:
        iid, bound = self._engine_id, self._bound
        if iid is None or bound is None:
            return
        if bound.closed.is_set() or not self.allowed(bound):
            self._bound = None
            self.node.data_plane.bind_inlet(iid, None, None)

    def engine_session(self, session: int, channel: Any, route: Any) -> None:
        address = bytes(route).decode()
        self._adopt(session, channel, address, address, ())

    async def _fail(self, stream: SocketStream, reason: str, *, count: bool = True) -> None:
        """Turn one client connection away (reset), recording why."""
        if count:
            self.failed += 1
        self.last_error = reason
        log.warning("tcp-inlet %s: %s", self.name, reason)
        await turn_away(stream)

    async def _accept(self, stream: SocketStream) -> None:
        accepted = time.monotonic()
        nodelay(stream)
        if len(self.sessions) >= self.options.max_sessions:
            self.refused += 1
            await turn_away(stream)
            return
        self.total += 1
        address = self.node.next_id("inlet")
        try:
            with anyio.fail_after(self.options.open_timeout):
                # A route string is read again for each connection: its /node/NAME follows a
                # node that restarted elsewhere (a new port), as a relay's reconnect does.
                route = self.route if self._expect is not None else self._parsed
                onward = await self.node.resolve_route(
                    route, trust=self._trust, expect=self._expect
                )
        except (TetherError, TimeoutError) as e:
            problem = "timed out" if isinstance(e, TimeoutError) else str(e)
            await self._fail(stream, f"could not reach {self.route}: {problem}")
            return
        # The route resolves to a secure channel first; it may have closed meanwhile. Either
        # way only this connection fails: an exception here would end the whole inlet.
        channel = arrival_channel(self.node, onward)
        if channel is None:
            await self._fail(
                stream, f"could not reach {self.route}: its secure channel closed while opening"
            )
            return
        refusal = self.refusal(channel)
        if refusal is not None:
            self.refused += 1
            await self._fail(stream, f"the outlet side: {refusal}", count=False)
            return
        if self.node.data_plane.carries(channel):
            await self._open_in_engine(stream, address, channel, onward, accepted)
            return
        session = Session(self.node, address, channel, onward, self.options, self)
        session.opening, session.awaits_open = accepted, True
        expected = channel.address

        def deliver(msg: RoutedMessage) -> None:
            # Only the channel this session runs in may speak for its outlet.
            if msg.return_route and msg.return_route[0] == Address.local(expected):
                session.deliver(msg)

        session.key = address
        self.sessions[address] = session
        self.node.add_sink(address, deliver)
        try:
            await session._send(HEAD[T_OPEN])
        except TetherError as e:
            session.abort(f"could not open a session through {self.route}: {e}")
        await session.run(stream)

    async def _open_in_engine(
        self,
        stream: SocketStream,
        address: str,
        channel: SecureChannel,
        onward: tuple[Address, ...],
        accepted: float,
    ) -> None:
        """The session in the data plane: the engine sends OPEN and pumps the socket (a
        duplicate of it: Python's copy is closed here)."""
        session = EngineSession(self.node, address, channel, onward, self.options, self)
        session.opening, session.awaits_open = accepted, True
        session.key = address
        self.sessions[address] = session
        try:
            raw = stream.extra(SocketAttribute.raw_socket)
            session.register(
                hand_over(raw), match=address, match_return=None, open=True, sync=SyncMode.SYNCED
            )
        except (TetherError, OSError) as e:
            session.engine_closed(f"could not open a session through {self.route}: {e}", 0, 0)
            await self._fail(stream, session.close_reason, count=False)
            return
        if self._engine_id is not None:
            # The route and the policy hold for this channel: the next connections open in
            # the data plane directly (until the channel closes or the policy says no).
            self._bound = channel
            self.node.data_plane.bind_inlet(self._engine_id, channel, encoded_route(onward[1:]))
        with anyio.CancelScope(shield=True):
            await stream.aclose()
