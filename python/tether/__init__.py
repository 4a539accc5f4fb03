"""tether: trusted connections between applications.

Mutually authenticated, end-to-end encrypted, policy-checked connections over any path of hops.
The Rust core (:mod:`tether._core`) implements framing, AEAD and the Noise state machines; the
Python package builds identities, routing, channels and policy on top, in layers, each a folder
that imports only from the ones below it (``docs/architecture.md``):

* :mod:`tether.core`: the Python faces of the Rust core and the wire (AEAD, frames, Noise,
  routed messages, the encoding, the errors);
* :mod:`tether.store`: the local SQLite store, and an authority's shared store;
* :mod:`tether.identity`: identities, credentials, the vault, trust, the policy language;
* :mod:`tether.node`: workers, routing, policies, transports, the data plane;
* :mod:`tether.channel`: secure channels;
* :mod:`tether.services`: relays, portals, the authority and memberships;
* :mod:`tether.api`: :class:`tether.Node`, the node with all of them;
* :mod:`tether.daemon`, :mod:`tether.demo` and :mod:`tether.cli`: the daemon, the demos, the
  ``tether`` command.
"""

from __future__ import annotations

from tether._core import __version__
from tether.api import Node
from tether.core.errors import TetherError

__all__ = ["Node", "TetherError", "__version__"]
