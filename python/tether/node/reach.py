"""Who may reach what on a node (``docs/routing.md``, "Who may reach what: origins").

A node's channel encryptors (``sc#N``) and links (``tcp#N``) take local callers, and the remote
origins granted to them: when a forwarder (a relay's, a transit hop) sends what came from origin
A on into B, A and B may reach each other's address from then on, and until either closes. A TCP
hop is opened for a remote origin only on a transit node, for the addresses it was given. The
node asks :class:`Reach` where a message enters; the data plane keeps (and is asked about) the
grants of the links it owns.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from tether.core.message import Origin
from tether.node.data_plane import DataPlane

log = logging.getLogger("tether.node")

REFUSED = "refused: address not reachable from there"


class ReachHost(Protocol):
    """What :class:`Reach` asks of its node (a :class:`~tether.node.node.BaseNode`)."""

    @property
    def name(self) -> str: ...

    @property
    def transit(self) -> frozenset[str]: ...

    @property
    def counters(self) -> dict[str, int]: ...

    @property
    def data_plane(self) -> DataPlane: ...

    def count(self, what: str, n: int = 1) -> None: ...


class Reach:
    """One node's grants, and its transit addresses (``BaseNode.transit``)."""

    def __init__(self, node: ReachHost) -> None:
        self.node = node
        self._grants: dict[str, set[Origin]] = {}
        """Link or encryptor address → the remote origins granted to reach it."""
        self._last_log = 0.0

    def may_reach(self, address: str, origin: Origin) -> bool:
        """Whether ``origin`` may send to the link or channel encryptor at ``address``: local
        callers always; a remote origin only when it was granted (its requests were forwarded
        from there, so its replies go back)."""
        if origin.is_local:
            return True
        if origin in self._grants.get(address, ()):
            return True
        data_plane = self.node.data_plane
        if origin.kind == "channel":  # a channel's reply to a link the engine forwarded for
            return data_plane.granted(address, origin.address)
        return data_plane.granted(origin.address, address)  # that link to that channel

    def grant(self, a: Origin, b: Origin) -> None:
        """Let two remote origins reach each other's address (a link's ``tcp#N``, a channel's
        encryptor): a forwarder sent what came from ``a`` on to ``b`` (a relay's claimer, a
        transit hop), so ``b``'s replies go back to ``a`` and ``a`` may go on talking to ``b``
        directly along the return route it was given — which it could do through the forwarder
        anyway. Grants end with either side."""
        if a.is_local or b.is_local or a == b:
            return
        self._grants.setdefault(a.address, set()).add(b)
        self._grants.setdefault(b.address, set()).add(a)
        if a.kind == "link" and b.kind == "channel":
            self.node.data_plane.grant(a.address, b.address)
        elif b.kind == "link" and a.kind == "channel":
            self.node.data_plane.grant(b.address, a.address)

    def has_grants(self, address: str) -> bool:
        """Whether the link or encryptor at ``address`` forwards for another origin now."""
        return bool(self._grants.get(address))

    def drop(self, address: str) -> None:
        """``address`` (a link or a channel) is gone: its grants, both ways."""
        self._grants.pop(address, None)
        for kind in ("link", "channel"):
            gone = Origin(kind, address)
            for target in [t for t, origins in self._grants.items() if gone in origins]:
                self._grants[target].discard(gone)
                if not self._grants[target]:
                    del self._grants[target]

    def transit_allows(self, host_port: bytes) -> bool:
        """Whether the node forwards to the TCP address ``host_port`` for remote senders."""
        transit = self.node.transit
        return bool(transit) and ("*" in transit or host_port.decode("utf-8", "replace") in transit)

    def refuse(self, origin: Origin, address: str) -> None:
        """A remote origin asked for an address it may not reach: counted and logged (at most
        once a second: an attacker chooses how often)."""
        node = self.node
        node.count(REFUSED)
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            self._last_log = now
            log.warning(
                "%s: refused a message from %s to %s (not reachable from there; %d so far)",
                node.name,
                origin,
                address,
                node.counters[REFUSED],
            )
