"""The TCP transport: listeners (with their admission limits: ``docs/security.md``) and outgoing
connections (made on demand and reused). One connection and its protocol is
:mod:`tether.node.transport.connection`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import SocketAttribute, SocketStream, TaskGroup

from tether.core.errors import RouteError, TetherError
from tether.core.message import TCP, Address, Origin, RoutedMessage
from tether.node import limits
from tether.node.data_plane import DataPlane
from tether.node.reach import Reach
from tether.node.routing import split_host_port
from tether.node.transport.connection import (
    Connection,
    ConnectionClosed,
    TcpOptions,
)

log = logging.getLogger("tether.tcp")


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


class Listener:
    def __init__(self, transport: TcpTransport, listener: Any, host: str, port: int) -> None:
        self.transport = transport
        self.listener = listener
        self.host = host
        self.port = port
        self.id = transport.node.next_id("listener")
        self.scope = anyio.CancelScope()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def info(self) -> dict[str, object]:
        return {"id": self.id, "address": self.address}


class TransportHost(Protocol):
    """What the TCP transport asks of its node (a :class:`~tether.node.node.BaseNode`): what
    its connections ask (:class:`~tether.node.transport.connection.LinkHost`), its task
    group, who may reach what, and to hear of each connection that closes."""

    @property
    def name(self) -> str: ...

    @property
    def counters(self) -> dict[str, int]: ...

    @property
    def backpressure(self) -> dict[str, int]: ...

    @property
    def data_plane(self) -> DataPlane: ...

    @property
    def task_group(self) -> TaskGroup: ...

    @property
    def reach(self) -> Reach: ...

    def count(self, what: str, n: int = 1) -> None: ...

    def next_id(self, prefix: str) -> str: ...

    async def route(
        self, msg: RoutedMessage, origin: Origin = ..., *, block: bool = True
    ) -> None: ...

    async def report(self, msg: RoutedMessage, reason: str) -> None: ...

    def connection_closed(self, address: str, peer: str | None) -> None: ...


class TcpTransport:
    def __init__(self, node: TransportHost, options: TcpOptions) -> None:
        self.node = node
        self.options = options
        self.connections: dict[str, Connection] = {}
        self.outgoing: dict[str, Connection] = {}
        self.listeners: dict[str, Listener] = {}
        self._connecting: dict[str, anyio.Lock] = {}
        self.pending = 0
        self._sources: dict[str, int] = {}  # incoming connections per source address
        self._pending_sources: dict[str, int] = {}  # of which still in their hello
        self._sweeping = False
        self._last_refusal_log = 0.0

    @property
    def max_connections(self) -> int:
        """The link cap in force: the configured one, within the descriptor budget."""
        return min(self.options.max_connections, limits.link_budget())

    def connection(self, address: str) -> Connection | None:
        return self.connections.get(address)

    def _forget(self, conn: Connection) -> None:
        if not conn.outgoing and self.connections.get(conn.address) is conn:
            _decrement(self._sources, conn.source)
        self.connections.pop(conn.address, None)
        if conn.key is not None and self.outgoing.get(conn.key) is conn:
            del self.outgoing[conn.key]
        self.node.connection_closed(conn.address, conn.key)

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> Listener:
        try:
            lst = await anyio.create_tcp_listener(
                local_host=host, local_port=port, reuse_port=False
            )
        except OSError as e:
            raise TetherError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        bound = lst.extra(SocketAttribute.local_address)
        listener = Listener(self, lst, host, int(bound[1]))
        self.listeners[listener.id] = listener
        await self.node.task_group.start(self._serve, listener)
        if not self._sweeping:
            self._sweeping = True
            self.node.task_group.start_soon(self._sweep)
        log.info("%s: listening on %s", self.node.name, listener.address)
        return listener

    async def _serve(
        self, listener: Listener, *, task_status: Any = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with listener.scope:
            task_status.started()
            async with listener.listener:
                await limits.serve(
                    listener.listener,
                    self._accept,
                    self.node.task_group,
                    lambda: self._refused(
                        "?", "the process has no descriptor left", "no descriptor left"
                    ),
                )

    async def stop_listener(self, listener_id: str) -> None:
        listener = self.listeners.pop(listener_id, None)
        if listener is None:
            raise TetherError(f"no listener {listener_id!r} on {self.node.name}")
        listener.scope.cancel()

    def _refused(self, peer: str, reason: str, counter: str) -> None:
        """A connection turned away: counted (under ``counter``, which names no address: an
        attacker with many addresses cannot grow the counters), and logged with ``reason`` at
        most once a second (a flood chooses how often this happens)."""
        self.node.count(f"refused connection: {counter}")
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:
            self._last_refusal_log = now
            log.warning("%s: refused connection from %s: %s", self.node.name, peer, reason)

    def _admit(self, source: str) -> tuple[str, str] | None:
        """Make room for a new incoming connection from ``source``, or say why there is none:
        per-source caps first (one address cannot take every slot), then the node's caps, where
        the oldest connection still in its hello, or the longest idle link without a secure
        channel, gives way to the newcomer."""
        o = self.options
        if self._pending_sources.get(source, 0) >= o.max_pending_per_source:
            return (
                f"{o.max_pending_per_source} connections from {source} in their hello",
                "too many from one address in their hello",
            )
        if self._sources.get(source, 0) >= o.max_connections_per_source:
            return (
                f"{o.max_connections_per_source} connections from {source}",
                "too many from one address",
            )
        live = [c for c in self.connections.values() if not c.close_reason]
        waiting = [c for c in live if not c.outgoing and not c.ready_at]
        if len(waiting) >= o.max_pending:
            min(waiting, key=lambda c: c.opened_at).close(
                "dropped for a newcomer: the node is full of connections in their hello",
                quiet=True,
            )
            self.node.count("dropped for a newcomer: in its hello")
            live = [c for c in live if not c.close_reason]
        if len(live) >= self.max_connections:
            idle = [c for c in live if not c.outgoing and c.ready_at and not self._trusted(c)]
            if not idle:
                return f"{self.max_connections} connections (the limit)", "the node is full"
            min(idle, key=lambda c: c.active_at).close(
                "dropped for a newcomer: idle, with no secure channel, on a full node",
                quiet=True,
            )
            self.node.count("dropped for a newcomer: idle without a secure channel")
        return None

    def _trusted(self, conn: Connection) -> bool:
        """Whether ``conn`` is outgoing, carries an open secure channel, or forwards for one
        (here, or in the data plane), now; also notes the messages the data plane delivered
        on it."""
        if conn.outgoing or conn.channels or self.node.reach.has_grants(conn.address):
            return True
        return conn.plane_grants()

    async def _sweep(self) -> None:
        """Close incoming links that carry no secure channel once they have been idle for
        ``unauthenticated_idle`` (checked a few times per period)."""
        while True:
            idle = self.options.unauthenticated_idle
            await anyio.sleep(max(0.05, min(1.0, idle / 4)))
            now = time.monotonic()
            for conn in list(self.connections.values()):
                if conn.outgoing or not conn.ready_at or self._trusted(conn):
                    continue
                if now - conn.active_at >= idle:
                    self.node.count("closed: idle without a secure channel")
                    conn.close(f"idle for {idle:g} s with no secure channel", quiet=True)

    async def _accept(self, stream: SocketStream) -> None:
        try:
            peer_addr = stream.extra(SocketAttribute.remote_address)
            peer = f"{peer_addr[0]}:{peer_addr[1]}"
        except Exception:
            peer = "?"
        conn = Connection(self, stream, outgoing=False, peer=peer)
        refusal = self._admit(conn.source)
        if refusal is not None:
            self._refused(peer, *refusal)
            await stream.aclose()
            return
        self.connections[conn.address] = conn
        self._sources[conn.source] = self._sources.get(conn.source, 0) + 1
        await self._run_counted(conn)

    async def _run_counted(self, conn: Connection) -> None:
        self.pending += 1
        self._pending_sources[conn.source] = self._pending_sources.get(conn.source, 0) + 1
        counted = True

        def uncount() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.pending -= 1
                _decrement(self._pending_sources, conn.source)

        async def ready() -> None:
            await conn.ready.wait()
            uncount()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ready)
            await conn.run()
            tg.cancel_scope.cancel()
        uncount()

    async def connect(self, host_port: bytes) -> Connection:
        key = host_port.decode("utf-8", errors="replace")
        conn = self.outgoing.get(key)
        if conn is not None and not conn.closed.is_set():
            return conn
        lock = self._connecting.setdefault(key, anyio.Lock())
        try:
            return await self._connect_locked(key, host_port, lock)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._connecting.pop(key, None)  # (an entry per address ever tried: no)

    async def _connect_locked(self, key: str, host_port: bytes, lock: anyio.Lock) -> Connection:
        async with lock:
            conn = self.outgoing.get(key)
            if conn is not None and not conn.closed.is_set():
                return conn
            host, port = split_host_port(host_port)
            try:
                with anyio.fail_after(self.options.connect_timeout):
                    stream = await anyio.connect_tcp(host, port)
            except TimeoutError:
                raise ConnectionClosed(
                    f"cannot connect to {key}: no answer within {self.options.connect_timeout:g} s"
                ) from None
            except OSError as e:
                raise ConnectionClosed(f"cannot connect to {key}: {e.strerror or e}") from None
            conn = Connection(self, stream, outgoing=True, peer=key)
            conn.key = key
            self.connections[conn.address] = conn
            self.outgoing[key] = conn
            self.node.task_group.start_soon(conn.run)
            with anyio.move_on_after(self.options.hello_timeout + 1):
                async with anyio.create_task_group() as tg:

                    async def closed() -> None:
                        await conn.closed.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(closed)
                    await conn.ready.wait()
                    tg.cancel_scope.cancel()
            if not conn.ready.is_set():
                raise ConnectionClosed(
                    f"cannot connect to {key}: {conn.close_reason or 'no hello from the peer'}"
                )
            return conn

    async def forward(
        self, head: Address, msg: RoutedMessage, origin: Origin, *, block: bool = True
    ) -> None:
        """Send ``msg`` (addressed to the TCP hop ``head``) over a connection to that address.
        For a remote ``origin`` (a transit node) the connection is granted the way back."""
        assert head.transport == TCP
        try:
            conn = await self.connect(head.value)
        except (ConnectionClosed, RouteError) as e:
            await self.node.report(msg, f"at node {self.node.name}: {e}")
            return
        self.node.reach.grant(origin, conn.origin)
        await self.send_via(conn, msg, block=block)

    async def send_many_via(self, conn: Connection, msgs: Sequence[RoutedMessage]) -> None:
        try:
            await conn.send_many(
                [RoutedMessage(m.onward[1:], m.return_route, m.payload) for m in msgs]
            )
        except (ConnectionClosed, RouteError) as e:
            for m in msgs:
                await self.node.report(m, f"at node {self.node.name}: {e}")

    async def send_via(self, conn: Connection, msg: RoutedMessage, *, block: bool = True) -> None:
        try:
            await conn.send(
                RoutedMessage(msg.onward[1:], msg.return_route, msg.payload), block=block
            )
        except (ConnectionClosed, RouteError) as e:
            await self.node.report(msg, f"at node {self.node.name}: {e}")
