"""The data plane: the interface through which a node's links, channels, relays and portals hand
their established traffic to whichever driver carries it.

There is one protocol (the session, reassembly, link-timer and forwarding rules are Rust state
machines: ``rust/src/portal/``, reached as ``tether._core.PortalSession``, ``Reassembler`` and
``LinkTimers``) and two drivers of it:

- :class:`PythonDataPlane`: the node's own tasks read and write every socket and drive the state
  machines (``TETHER_DATAPLANE=python``, or ``Node(data_plane=False)``). It *carries nothing*:
  each method below answers "not mine", and the caller serves the traffic in Python.
- :class:`~tether.node.rust_data_plane.RustDataPlane` (the default): the engine
  (``tether._core.Engine``) drives the same state machines on a thread of its own, off the GIL;
  its events come back to the node typed (``tether._core.LinkMessage`` …).

Feature code holds a :class:`DataPlane` and never asks which one it has: it offers the plane a
link, a channel, a session, an outlet or an inlet, and serves in Python what the plane does not
take (``add_link`` → None, ``carries`` → False, ``add_inlet`` → None …). Once stopped, the Rust
driver answers as the Python one does.

What the plane asks of the objects it is handed is typed by the protocols :class:`Link`,
:class:`Channel`, :class:`Session`, :class:`Portal` and :class:`Inlet`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from typing import Any, Protocol

import anyio

from tether._core import (
    ChannelMessage,
    Fragment,
    LinkMessage,
    SendStatus,
    Sync,
    SyncMode,
)
from tether.core.errors import TetherError
from tether.core.message import Address, RoutedMessage
from tether.node.channel_end import ChannelEnd


class Link(Protocol):
    """A link a plane may carry (a TCP :class:`~tether.node.transport.connection.Connection`)."""

    @property
    def address(self) -> str: ...

    def engine_event(self, event: LinkMessage | ChannelMessage | Fragment | Sync) -> None: ...

    def engine_drained(self) -> None: ...

    def engine_closed(self, reason: str, unsent: list[bytes]) -> None: ...

    def pending_events(self) -> bool: ...


class Channel(ChannelEnd, Protocol):
    """A secure channel whose DATA a plane may open
    (a :class:`~tether.channel.channel.SecureChannel`)."""

    refused: int

    @property
    def decryptor(self) -> str: ...

    @property
    def cipher(self) -> Any: ...

    def first_hop_connection(self) -> Link | None: ...

    async def deliver_inner(
        self,
        onward: Sequence[tuple[int, bytes]],
        return_route: Sequence[tuple[int, bytes]],
        payload: bytes,
    ) -> None: ...

    async def deliver_plain(self, plain: bytes, nonce: int) -> None: ...


class Session(Protocol):
    """A portal session a plane carries (a :class:`~tether.services.session.EngineSession`)."""

    def engine_closed(self, reason: str, sent: int, received: int) -> None: ...

    def engine_opened(self, seconds: float) -> None: ...


class Portal(Protocol):
    """An outlet or an inlet: the plane opened a session by itself, through ``channel``."""

    def engine_session(self, session: int, channel: Any, route: Any) -> None: ...


class Inlet(Portal, Protocol):
    def accepted(self, fd: int) -> None: ...


def enabled() -> bool:
    """Whether nodes use the Rust driver (``TETHER_DATAPLANE``: ``rust``, the default, or
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


BACKPRESSURE = ("session_credit", "session_congested", "link_congested", "link_up_limit")
"""The kinds of back-pressure a node counts (``docs/metrics.md``, ``tether_backpressure_events``):
a portal session stopped reading its socket for lack of credit (its peer's window used up) or
because its channel's link is congested; a link's send queue went over its high-water mark; a
link stopped being read while too many of its messages waited for Python."""


class DataPlane:
    """The interface, and the plane that carries nothing: every offer is declined, so the
    caller serves the traffic in Python (see the module's documentation). Drivers override
    what they carry."""

    kind = "python"
    """What ``info`` reports as a link's or a session's ``data_plane``."""

    stopped = False

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """The plane's task while the node runs (this one has nothing to do)."""
        task_status.started()

    def stop(self) -> None:
        self.stopped = True

    # --- links -------------------------------------------------------------------------

    def add_link(self, conn: Link, sock: Any, rest: bytes, options: Any) -> int | None:
        """Carry a connection once its hello is done (``sock``: its socket, taken by the plane;
        ``rest``: what was read after the hello). None: not carried, serve it in Python."""
        return None

    def send(self, link: int, framed: bytes) -> SendStatus:
        """Queue frames on a carried link."""
        return SendStatus.CLOSED

    def ack(self, link: int, charge: int) -> None:
        """An event of the link was delivered: ``charge`` bytes no longer wait in Python."""

    def close_link(self, link: int, reason: str) -> None:
        """Close a carried link (its frames already queued are flushed first)."""

    def link_stats(self, link: int) -> tuple[int, int, int] | None:
        """A carried link's (frames received, frames sent, bytes queued to send)."""
        return None

    def link_has_grants(self, link: int) -> bool:
        """Whether a forwarder granted a channel this link (``tether.node.reach``)."""
        return False

    # --- channels ----------------------------------------------------------------------

    def add_channel(self, channel: Channel) -> None:
        """Open the channel's DATA in the plane (when its first hop is a carried link)."""

    def remove_channel(self, channel: ChannelEnd) -> None:
        """The channel closed."""

    def channel(self, channel_id: int) -> Any:
        """The channel with this id in the plane (None: no longer)."""
        return None

    def carries(self, channel: Channel) -> bool:
        """Can the plane run portal sessions in ``channel`` (it sends through a carried link)?"""
        return False

    def channel_idle(self, channel: Channel) -> float | None:
        """Seconds since the plane last opened a message of ``channel`` (None: not its)."""
        return None

    def pending_events(self, channel: Channel) -> bool:
        """Whether events of the channel's link wait in Python (a session opened now must let
        them go first)."""
        return False

    # --- reach -------------------------------------------------------------------------

    def grant(self, link_address: str, channel_address: str) -> None:
        """Let a channel send on a link (a forwarder sent the link's messages into it)."""

    def granted(self, link_address: str, channel_address: str) -> bool:
        """Whether the plane granted the channel the link (its forwarder did the forwarding)."""
        return False

    # --- relays ------------------------------------------------------------------------

    def set_forward(self, name: str, channel: Channel | None, route: tuple[Address, ...]) -> None:
        """Forward what reaches ``name`` inside ``channel`` to ``route`` + the rest of its
        onward route, in the plane (a relay's forwarder; ``channel`` None: stop)."""

    def forwarded(self, name: str) -> tuple[int, int]:
        """How many messages the plane forwarded for ``name``, and their payload bytes."""
        return 0, 0

    # --- counters ----------------------------------------------------------------------

    def backpressure(self) -> dict[str, int]:
        """How often the plane applied back-pressure, by kind (``BACKPRESSURE``): what it
        carries itself; the Python driver's tasks count theirs on the node."""
        return dict.fromkeys(BACKPRESSURE, 0)

    # --- portal sessions ---------------------------------------------------------------

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
        """Run a portal session in the plane (only for a channel it :meth:`carries`): its id."""
        raise TetherError(f"the data plane does not carry secure channel {channel.address}")

    def adopt_session(self, session_id: int, session: Session) -> None:
        """Keep the books of a session the plane opened by itself."""

    def session_synced(self, session: int) -> None:
        """Every event before the session's sync marker is delivered."""

    def session_stats(self, session: int) -> tuple[int, int, int] | None:
        """A carried session's (bytes sent, bytes received, bytes held)."""
        return None

    def session_deliver(self, session: int, payload: bytes) -> None:
        """A message of the session that reached Python before the plane took it over."""

    def session_connect(self, session: int, host: str, port: int) -> None:
        """Connect an outlet's session to its target (an IP address)."""

    def close_session(self, session: int, reason: str, notify: bool) -> None:
        """End a carried session (and tell the peer if ``notify``)."""

    # --- outlets and inlets ------------------------------------------------------------

    def add_outlet(
        self, outlet: Portal, name: str, options: Any, connect_prefix: str
    ) -> int | None:
        """Let the plane open sessions of an outlet by itself (None: it does not)."""
        return None

    def set_outlet_target(self, outlet: int, host: str, port: int) -> None:
        """The outlet's target, an IP address (a host name is resolved per session)."""

    def allow_outlet(self, outlet: int, channel: Channel, allowed: bool) -> None:
        """Whether OPENs through ``channel`` open in the plane directly (the policy allows)."""

    def remove_outlet(self, outlet: int) -> None:
        """The outlet is deleted."""

    def add_inlet(self, inlet: Inlet, listener: Any, options: Any) -> int | None:
        """Take an inlet's listening socket (None: not taken, serve it in Python)."""
        return None

    def bind_inlet(self, inlet: int, channel: Channel | None, onward: bytes | None) -> None:
        """Open the inlet's next connections through ``channel`` to ``onward`` (None: each
        goes to Python first)."""

    def remove_inlet(self, inlet: int) -> None:
        """The inlet is deleted (its listening socket closes)."""


class PythonDataPlane(DataPlane):
    """The Python driver: the node's tasks carry every byte (``TETHER_DATAPLANE=python``)."""
