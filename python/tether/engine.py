"""The data plane: the Rust engine (:class:`tether._core.Engine`) that carries a node's
established traffic on a thread of its own, and the task that hands its events to the node.

Once a TCP connection's hello is done, its socket belongs to the engine (``Connection`` keeps
only its bookkeeping): the engine reads the frames, opens the ``DATA`` of every secure channel
registered with it (:meth:`DataPlane.add_channel`, with the channel's own cipher object, so
the replay window and the nonces stay one), and runs the portal sessions registered with it
(:class:`tether.portal.EngineSession`) entirely in Rust: socket → sealed frame → link, and
back, with the flow control, half-close and resets of the session protocol. Python keeps every
decision (routes, handshakes, policies, refusals) and everything else the node does; what the
engine does not handle reaches Python as events, in order per connection:

=====================  =================================================================
``(0, link, n, msg)``  a routed message from the link, as the reader used to decode it
``(1, link, n, c, m)``  an inner message opened from channel ``c``, for the node to route
``(2, link, why, u)``  the link closed (``u``: its frames that never left)
``(3, link)``          a congested link drained (senders waiting on it go on)
``(4, s, why, o, i)``  session ``s`` ended (``why`` empty: an orderly end both ways)
``(5, link, s)``       every event before this one is delivered: session ``s`` may go on
``(6, c, why, k)``     channel ``c`` refused ``k`` messages (forged, replayed, malformed)
``(7, link, n, c, p, nonce)``  a fragment whose message Python began, for Python to join
``(8, i, s, c, addr)``  inlet ``i`` opened session ``s`` (address ``addr``) through channel ``c``
``(9, i, fd)``         inlet ``i`` accepted a connection it cannot open alone (Python's now)
``(10, o, s, c, ret)``  outlet ``o`` opened session ``s`` for the inlet session at ``ret``
=====================  =================================================================

``n`` is what the event counts against its link's limit of bytes waiting in Python; the link
is read again once Python has delivered it (:meth:`Connection._engine_reader` acknowledges).
``TETHER_DATAPLANE=python`` turns the engine off (every byte then goes through Python, as
before it existed): for comparisons and as a fallback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import anyio

from tether._core import Engine
from tether.message import LOCAL, Address, RoutedMessage

if TYPE_CHECKING:
    from tether.node import Node

log = logging.getLogger("tether.engine")

EV_MESSAGE = 0
EV_INNER = 1
EV_LINK_CLOSED = 2
EV_DRAINED = 3
EV_SESSION_CLOSED = 4
EV_SYNC = 5
EV_REFUSED = 6
EV_PLAIN = 7
EV_INLET_SESSION = 8
EV_INLET_ACCEPTED = 9
EV_OUTLET_SESSION = 10

SEND_OK = 0
SEND_CONGESTED = 1
SEND_CLOSED = 2


def enabled() -> bool:
    """Whether nodes use the engine (``TETHER_DATAPLANE``: ``rust``, the default, or
    ``python``)."""
    value = os.environ.get("TETHER_DATAPLANE", "rust").strip().lower()
    if value not in ("rust", "python"):
        raise ValueError(f"TETHER_DATAPLANE must be 'rust' or 'python', not {value!r}")
    return value == "rust"


def hand_over(sock: Any) -> socket.socket:
    """A socket for the engine, which takes its descriptor (``detach()``): the event loop is
    told first that the descriptor leaves it (``anyio.notify_closing``), so nothing of it stays
    registered there. A socket object of another kind (asyncio's transport socket) is
    duplicated into a plain one instead."""
    if type(sock) is not socket.socket:
        return socket.socket(fileno=os.dup(sock.fileno()))
    with contextlib.suppress(Exception):  # no loop, or not one of anyio's: nothing to tell
        anyio.notify_closing(sock)
    return sock


def encoded_header(onward: tuple[Address, ...], return_route: tuple[Address, ...]) -> bytes:
    """An encoded routed message up to (not including) its 4-byte payload length."""
    return RoutedMessage(onward, return_route, b"").encode()[:-4]


def encoded_route(route: tuple[Address, ...]) -> bytes:
    """One encoded route (its count byte, then its addresses), as inside a routed message."""
    return RoutedMessage((), route, b"").encode()[2:-4]


class DataPlane:
    """One node's engine and its event task."""

    def __init__(self, node: Node) -> None:
        self.node = node
        r, w = socket.socketpair()
        r.setblocking(False)
        self._r = r
        try:
            self.engine = Engine(w)  # the engine takes (and closes) the write end
        except BaseException:
            r.close()
            raise
        self.links: dict[int, Any] = {}
        """Link id → its :class:`~tether.transport.tcp.Connection`."""
        self.sessions: dict[int, Any] = {}
        self.channels: dict[int, Any] = {}
        self.inlets: dict[int, Any] = {}
        self.outlets: dict[int, Any] = {}
        self.stopped = False

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Hand the engine's events on until the node stops; then stop the engine (its
        sockets close with it)."""
        task_status.started()
        try:
            while True:
                await anyio.wait_readable(self._r)
                try:
                    if not self._r.recv(65536):
                        return  # the engine is gone
                except BlockingIOError:
                    pass
                for ev in self.engine.take_events():
                    try:
                        self._dispatch(ev)
                    except Exception:  # a bug: log it and keep the node
                        log.exception(
                            "%s: the data plane could not hand on an event", self.node.name
                        )
        finally:
            self.stop()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.engine.stop()
            self._r.close()

    def _dispatch(self, ev: tuple[Any, ...]) -> None:
        t = ev[0]
        if t in (EV_MESSAGE, EV_INNER, EV_PLAIN):
            conn = self.links.get(ev[1])
            if conn is not None:
                conn.engine_event(ev)
        elif t == EV_SESSION_CLOSED:
            session = self.sessions.pop(ev[1], None)
            if session is not None:
                session.engine_closed(ev[2], ev[3], ev[4])
        elif t == EV_SYNC:
            conn = self.links.get(ev[1]) if ev[1] is not None else None
            if conn is None:
                self.engine.session_synced(ev[2])
            else:
                conn.engine_event(ev)
        elif t == EV_LINK_CLOSED:
            conn = self.links.pop(ev[1], None)
            if conn is not None:
                conn.engine_closed(ev[2], ev[3])
        elif t == EV_DRAINED:
            conn = self.links.get(ev[1])
            if conn is not None:
                conn.engine_drained()
        elif t == EV_INLET_SESSION:
            inlet = self.inlets.get(ev[1])
            if inlet is not None:
                inlet.engine_session(ev[2], ev[3], ev[4])
            else:
                self.engine.close_session(ev[2], "its tcp-inlet was deleted", True)
        elif t == EV_INLET_ACCEPTED:
            inlet = self.inlets.get(ev[1])
            if inlet is not None:
                inlet.accepted(ev[2])
            else:
                os.close(ev[2])
        elif t == EV_OUTLET_SESSION:
            outlet = self.outlets.get(ev[1])
            if outlet is not None:
                outlet.engine_session(ev[2], ev[3], ev[4])
            else:
                self.engine.close_session(ev[2], "its tcp-outlet was deleted", True)
        elif t == EV_REFUSED:
            channel = self.channels.get(ev[1])
            if channel is not None:
                channel.refused += ev[3]
                log.info(
                    "secure channel %s refused %d message(s), the last: %s",
                    channel.address,
                    ev[3],
                    ev[2],
                )

    # --- links ---------------------------------------------------------------------------

    def add_link(self, conn: Any, rest: bytes) -> int:
        """Give the engine a connection's socket once its hello is done (one descriptor per
        link: the engine takes it from the socket object, see :func:`hand_over`); ``rest`` is
        what was read after the hello."""
        o = conn.options
        link = int(
            self.engine.add_link(
                hand_over(conn._raw),
                conn.address.encode(),
                rest,
                o.max_frame_len,
                o.keepalive,
                o.dead_after,
                o.frame_timeout,
                o.drain_timeout,
            )
        )
        self.links[link] = conn
        return link

    # --- channels --------------------------------------------------------------------------

    def add_channel(self, channel: Any) -> None:
        """Let the engine open the channel's DATA (and send for its portal sessions, when its
        first hop is one of the engine's links, or a channel the engine has)."""
        head = channel.remote_route[0] if channel.remote_route else None
        outer = (
            self.node.channels.get(head.value.decode("utf-8", "replace"))
            if head is not None and head.transport == LOCAL
            else None
        )
        conn = channel.first_hop_connection()
        link = conn._link if conn is not None else None
        via = outer._engine_id if outer is not None else None
        header = encoded_header(channel.remote_route[1:], (Address.local(channel.decryptor),))
        cid = int(
            self.engine.add_channel(channel.address.encode(), channel.cipher, header, link, via)
        )
        channel._engine_id = cid
        channel._engine_link = outer._engine_link if outer is not None else link
        self.channels[cid] = channel

    def remove_channel(self, channel: Any) -> None:
        cid = channel._engine_id
        if cid is None or self.stopped:
            return
        channel._engine_id = None
        self.channels.pop(cid, None)
        self.engine.remove_channel(cid, f"secure channel {channel.address} closed")

    def set_forward(self, name: str, channel: Any, route: tuple[Address, ...]) -> None:
        """Forward what reaches ``name`` inside ``channel`` to ``route`` + the rest of its onward
        route, in the engine (a relay's forwarder; ``channel`` None: stop)."""
        if self.stopped:
            return
        cid = channel._engine_id if channel is not None else None
        self.engine.set_forward(name.encode(), cid, [(a.transport, a.value) for a in route])

    def _link_id(self, address: str) -> int | None:
        conn = self.node.tcp.connection(address)
        return conn._link if conn is not None else None

    def grant(self, link_address: str, channel_address: str) -> None:
        """Let the channel at ``channel_address`` send on the link at ``link_address`` (a
        forwarder sent the link's messages into it; see ``tether.reach.Reach.grant``)."""
        link, channel = self._link_id(link_address), self.node.channels.get(channel_address)
        cid = channel._engine_id if channel is not None else None
        if link is not None and cid is not None and not self.stopped:
            self.engine.grant(link, cid)

    def granted(self, link_address: str, channel_address: str) -> bool:
        """Whether the engine granted the channel the link (its forwarder did the forwarding)."""
        link, channel = self._link_id(link_address), self.node.channels.get(channel_address)
        cid = channel._engine_id if channel is not None else None
        return (
            link is not None
            and cid is not None
            and not self.stopped
            and bool(self.engine.granted(link, cid))
        )

    def channel_idle(self, channel: Any) -> float | None:
        """Seconds since the engine last opened a message of ``channel`` (None: not its)."""
        cid = channel._engine_id
        if cid is None or self.stopped:
            return None
        idle = self.engine.channel_idle(cid)
        return None if idle is None else float(idle)

    def carries(self, channel: Any) -> bool:
        """Can the engine run portal sessions in ``channel`` (it sends through one of its
        links)?"""
        return (
            not self.stopped
            and getattr(channel, "_engine_id", None) is not None
            and channel._engine_link is not None
            and channel._engine_link in self.links
        )
