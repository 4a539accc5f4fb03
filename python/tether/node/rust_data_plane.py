"""The Rust driver of the data plane: the engine (:class:`tether._core.Engine`) carries a
node's established traffic on a thread of its own, and a task hands its events to the node.

Once a TCP connection's hello is done, its socket belongs to the engine (``Connection`` keeps
only its bookkeeping): the engine reads the frames, opens the ``DATA`` of every secure channel
registered with it (with the channel's own cipher object, so the replay window and the nonces
stay one), forwards a relay's ciphertext, and runs the portal sessions registered with it
entirely in Rust: socket → sealed frame → link, and back, with the flow control, half-close and
resets of the session protocol (the same state machine the Python driver runs,
``rust/src/portal/session.rs``). Python keeps every decision (routes, handshakes, policies,
refusals); what the engine does not handle reaches Python as events, in order per connection:

====================  ===================================================================
``LinkMessage``       a routed message from a link (``message``: onward, return route, payload)
``ChannelMessage``    an inner message opened from channel ``channel``, for the node to route
``Fragment``          a fragment whose message Python began, for Python to join
``LinkClosed``        the link closed (``unsent``: its frames that never left)
``Drained``           a congested link drained (senders waiting on it go on)
``SessionOpened``     a session is open (``seconds`` after it was registered)
``SessionClosed``     a session ended (``reason`` empty: an orderly end both ways)
``Sync``              every event before this one is delivered: the session may go on
``Refused``           a channel refused ``count`` messages (forged, replayed, malformed)
``InletSession``      an inlet opened a session through a channel
``InletAccepted``     an inlet accepted a connection it cannot open alone (``fd`` is Python's)
``OutletSession``     an outlet opened a session for the inlet session at ``return_route``
====================  ===================================================================

The event classes are ``tether._core``'s (typed in ``_core.pyi``). ``charge`` of the first
three is what the event counts against its link's limit of bytes waiting in Python; the link
is read again once Python has delivered it (``Connection`` acknowledges with :meth:`ack`).
Once stopped, every method answers as the Python driver does (it carries nothing).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Protocol

import anyio

from tether._core import (
    ChannelMessage,
    Drained,
    Engine,
    Fragment,
    InletAccepted,
    InletSession,
    LinkClosed,
    LinkMessage,
    OutletSession,
    Refused,
    SendStatus,
    SessionClosed,
    SessionOpened,
    Sync,
    SyncMode,
)
from tether.core.message import LOCAL, Address
from tether.node.channel_end import ChannelEnd
from tether.node.data_plane import (
    Channel,
    DataPlane,
    Inlet,
    Link,
    Portal,
    Session,
    encoded_header,
    hand_over,
)

log = logging.getLogger("tether.engine")


class DataPlaneHost(Protocol):
    """What the data plane asks of its node (a :class:`~tether.node.node.BaseNode`): its name
    (for the log)."""

    @property
    def name(self) -> str: ...


class RustDataPlane(DataPlane):
    """One node's engine and its event task."""

    kind = "rust"

    def __init__(self, node: DataPlaneHost) -> None:
        self.node = node
        r, w = socket.socketpair()
        r.setblocking(False)
        self._wake = r
        try:
            self.engine = Engine(w)  # the engine takes (and closes) the write end
        except BaseException:
            r.close()
            raise
        self._links: dict[int, Link] = {}
        self._link_ids: dict[str, int] = {}
        """A carried link's address → its id."""
        self._sessions: dict[int, Session] = {}
        self._channels: dict[int, Channel] = {}
        self._channel_ids: dict[str, int] = {}
        """A registered channel's address → its id in the engine."""
        self._channel_links: dict[int, int | None] = {}
        """A channel's id → the engine's link its messages go out on (None: none of its)."""
        self._inlets: dict[int, Inlet] = {}
        self._outlets: dict[int, Portal] = {}
        self.stopped = False

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Hand the engine's events on until the node stops; then stop the engine (its
        sockets close with it)."""
        task_status.started()
        try:
            while True:
                await anyio.wait_readable(self._wake)
                try:
                    if not self._wake.recv(65536):
                        return  # the engine is gone
                except BlockingIOError:
                    pass
                for event in self.engine.take_events():
                    try:
                        self._dispatch(event)
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
            self._wake.close()

    def _dispatch(self, event: object) -> None:
        match event:
            case LinkMessage(link=link) | ChannelMessage(link=link) | Fragment(link=link):
                conn = self._links.get(link)
                if conn is not None:
                    conn.engine_event(event)
            case Sync(link=link, session=session):
                conn = self._links.get(link) if link is not None else None
                if conn is None:
                    self.engine.session_synced(session)
                else:
                    conn.engine_event(event)
            case SessionOpened(session=session, seconds=seconds):
                opened = self._sessions.get(session)
                if opened is not None:
                    opened.engine_opened(seconds)
            case SessionClosed(session=session, reason=reason, sent=sent, received=received):
                closed = self._sessions.pop(session, None)
                if closed is not None:
                    closed.engine_closed(reason, sent, received)
            case LinkClosed(link=link, reason=reason, unsent=unsent):
                conn = self._links.pop(link, None)
                if conn is not None:
                    self._link_ids.pop(conn.address, None)
                    conn.engine_closed(reason, unsent)
            case Drained(link=link):
                conn = self._links.get(link)
                if conn is not None:
                    conn.engine_drained()
            case InletSession(inlet=iid, session=session, channel=cid, address=address):
                self._opened(self._inlets.get(iid), "tcp-inlet", session, cid, address)
            case InletAccepted(inlet=iid, fd=fd):
                inlet = self._inlets.get(iid)
                if inlet is not None:
                    inlet.accepted(fd)
                else:
                    os.close(fd)
            case OutletSession(outlet=oid, session=session, channel=cid, return_route=route):
                self._opened(self._outlets.get(oid), "tcp-outlet", session, cid, route)
            case Refused(channel=cid, reason=reason, count=count):
                channel = self._channels.get(cid)
                if channel is not None:
                    channel.refused += count
                    log.info(
                        "secure channel %s refused %d message(s), the last: %s",
                        channel.address,
                        count,
                        reason,
                    )

    def _opened(self, portal: Portal | None, kind: str, session: int, cid: int, route: Any) -> None:
        """The engine opened a session by itself: its portal keeps the books (or, if the
        portal or the channel is gone meanwhile, the session ends)."""
        channel = self._channels.get(cid)
        if portal is None:
            self.engine.close_session(session, f"its {kind} was deleted", True)
        elif channel is None:
            self.engine.close_session(session, "its secure channel closed", False)
        else:
            portal.engine_session(session, channel, route)

    # --- links -------------------------------------------------------------------------

    def add_link(self, conn: Link, sock: Any, rest: bytes, options: Any) -> int | None:
        if self.stopped or sock is None:
            return None
        link = int(
            self.engine.add_link(
                hand_over(sock),
                conn.address.encode(),
                rest,
                options.max_frame_len,
                options.keepalive,
                options.dead_after,
                options.frame_timeout,
                options.drain_timeout,
            )
        )
        self._links[link] = conn
        self._link_ids[conn.address] = link
        return link

    def send(self, link: int, framed: bytes) -> SendStatus:
        if self.stopped:
            return SendStatus.CLOSED
        return self.engine.send(link, framed)

    def ack(self, link: int, charge: int) -> None:
        if not self.stopped:
            self.engine.ack(link, charge)

    def close_link(self, link: int, reason: str) -> None:
        conn = self._links.pop(link, None)
        if conn is not None:
            self._link_ids.pop(conn.address, None)
        if not self.stopped:
            self.engine.close_link(link, reason)

    def link_stats(self, link: int) -> tuple[int, int, int] | None:
        return None if self.stopped else self.engine.link_stats(link)

    def link_has_grants(self, link: int) -> bool:
        return not self.stopped and bool(self.engine.has_grants(link))

    # --- channels ----------------------------------------------------------------------

    def add_channel(self, channel: Channel) -> None:
        if self.stopped:
            return
        head = channel.remote_route[0] if channel.remote_route else None
        via = (
            self._channel_ids.get(head.value.decode("utf-8", "replace"))
            if head is not None and head.transport == LOCAL
            else None
        )
        conn = channel.first_hop_connection()
        link = self._link_ids.get(conn.address) if conn is not None else None
        header = encoded_header(channel.remote_route[1:], (Address.local(channel.decryptor),))
        cid = int(
            self.engine.add_channel(channel.address.encode(), channel.cipher, header, link, via)
        )
        self._channels[cid] = channel
        self._channel_ids[channel.address] = cid
        self._channel_links[cid] = self._channel_links.get(via) if via is not None else link

    def remove_channel(self, channel: ChannelEnd) -> None:
        cid = self._channel_ids.pop(channel.address, None)
        if cid is None:
            return
        self._channels.pop(cid, None)
        self._channel_links.pop(cid, None)
        if not self.stopped:
            self.engine.remove_channel(cid, f"secure channel {channel.address} closed")

    def channel(self, channel_id: int) -> Any:
        return self._channels.get(channel_id)

    def _channel_id(self, channel: Channel) -> int | None:
        return None if self.stopped else self._channel_ids.get(channel.address)

    def carries(self, channel: Channel) -> bool:
        cid = self._channel_id(channel)
        link = self._channel_links.get(cid) if cid is not None else None
        return link is not None and link in self._links

    def channel_idle(self, channel: Channel) -> float | None:
        cid = self._channel_id(channel)
        idle = self.engine.channel_idle(cid) if cid is not None else None
        return None if idle is None else float(idle)

    def pending_events(self, channel: Channel) -> bool:
        cid = self._channel_id(channel)
        link = self._channel_links.get(cid) if cid is not None else None
        conn = self._links.get(link) if link is not None else None
        pending = getattr(conn, "pending_events", None)
        return bool(pending()) if pending is not None else False

    # --- reach -------------------------------------------------------------------------

    def grant(self, link_address: str, channel_address: str) -> None:
        link, cid = self._link_ids.get(link_address), self._channel_ids.get(channel_address)
        if link is not None and cid is not None and not self.stopped:
            self.engine.grant(link, cid)

    def granted(self, link_address: str, channel_address: str) -> bool:
        link, cid = self._link_ids.get(link_address), self._channel_ids.get(channel_address)
        return (
            link is not None
            and cid is not None
            and not self.stopped
            and bool(self.engine.granted(link, cid))
        )

    # --- relays ------------------------------------------------------------------------

    def set_forward(self, name: str, channel: Channel | None, route: tuple[Address, ...]) -> None:
        if self.stopped:
            return
        cid = self._channel_ids.get(channel.address) if channel is not None else None
        self.engine.set_forward(name.encode(), cid, [(a.transport, a.value) for a in route])

    def forwarded(self, name: str) -> tuple[int, int]:
        if self.stopped:
            return 0, 0
        messages, size = self.engine.forwarded(name.encode())
        return int(messages), int(size)

    # --- counters ----------------------------------------------------------------------

    def backpressure(self) -> dict[str, int]:
        if self.stopped:
            return super().backpressure()
        stats = self.engine.stats()
        return {
            "session_credit": stats.session_credit,
            "session_congested": stats.session_congested,
            "link_congested": stats.link_congested,
            "link_up_limit": stats.link_up_limit,
        }

    # --- portal sessions -----------------------------------------------------------------

    def add_session(
        self,
        session: Session,
        channel: Channel,
        sock: socket.socket | None,
        header: bytes,
        match: bytes,
        match_return: bytes | None,
        options: Any,
        *,
        open: bool,
        sync: SyncMode,
        connect_prefix: str,
    ) -> int:
        cid = self._channel_id(channel)
        if cid is None:
            return super().add_session(
                session,
                channel,
                sock,
                header,
                match,
                match_return,
                options,
                open=open,
                sync=sync,
                connect_prefix=connect_prefix,
            )
        sid = int(
            self.engine.add_session(
                cid,
                sock,
                header,
                match,
                match_return,
                options.window,
                options.resume_timeout,
                open,
                sync,
                options.connect_timeout,
                connect_prefix,
            )
        )
        self._sessions[sid] = session
        return sid

    def adopt_session(self, session_id: int, session: Session) -> None:
        self._sessions[session_id] = session

    def session_synced(self, session: int) -> None:
        if not self.stopped:
            self.engine.session_synced(session)

    def session_stats(self, session: int) -> tuple[int, int, int] | None:
        stats = None if self.stopped else self.engine.session_stats(session)
        return None if stats is None else (int(stats[0]), int(stats[1]), int(stats[2]))

    def session_deliver(self, session: int, payload: bytes) -> None:
        if not self.stopped:
            self.engine.session_deliver(session, payload)

    def session_connect(self, session: int, host: str, port: int) -> None:
        if not self.stopped:
            self.engine.session_connect(session, host, port)

    def close_session(self, session: int, reason: str, notify: bool) -> None:
        if not self.stopped:
            self.engine.close_session(session, reason, notify)

    # --- outlets and inlets ----------------------------------------------------------------

    def add_outlet(
        self, outlet: Portal, name: str, options: Any, connect_prefix: str
    ) -> int | None:
        if self.stopped:
            return None
        oid = int(
            self.engine.add_outlet(
                name.encode(),
                options.window,
                options.resume_timeout,
                options.max_sessions,
                options.connect_timeout,
                connect_prefix,
            )
        )
        self._outlets[oid] = outlet
        return oid

    def set_outlet_target(self, outlet: int, host: str, port: int) -> None:
        if not self.stopped:
            self.engine.set_outlet_target(outlet, host, port)

    def allow_outlet(self, outlet: int, channel: Channel, allowed: bool) -> None:
        cid = self._channel_id(channel)
        if cid is not None:
            self.engine.allow_outlet(outlet, cid, allowed)

    def remove_outlet(self, outlet: int) -> None:
        if self._outlets.pop(outlet, None) is not None and not self.stopped:
            self.engine.remove_outlet(outlet)

    def add_inlet(self, inlet: Inlet, listener: Any, options: Any) -> int | None:
        if self.stopped:
            return None
        iid = int(
            self.engine.add_inlet(
                hand_over(listener),
                b"inlet#r",
                options.window,
                options.resume_timeout,
                options.max_sessions,
            )
        )
        self._inlets[iid] = inlet
        return iid

    def bind_inlet(self, inlet: int, channel: Channel | None, onward: bytes | None) -> None:
        if self.stopped:
            return
        cid = self._channel_ids.get(channel.address) if channel is not None else None
        if channel is not None and cid is None:
            return  # the channel closed meanwhile: nothing to bind to
        self.engine.bind_inlet(inlet, cid, onward)

    def remove_inlet(self, inlet: int) -> None:
        if self._inlets.pop(inlet, None) is not None and not self.stopped:
            self.engine.remove_inlet(inlet)
