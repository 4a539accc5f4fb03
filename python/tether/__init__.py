"""tether: trusted connections between applications.

Mutually authenticated, end-to-end encrypted, policy-checked connections over any path of hops.
The Rust core (:mod:`tether._core`) implements framing, AEAD and the Noise state machines; the
Python package builds identities, routing, channels and policy on top.

Modules: :mod:`tether.noise` (handshakes and transports), :mod:`tether.aead`,
:mod:`tether.frame`, :mod:`tether.message`, :mod:`tether.errors`, :mod:`tether.identity`,
:mod:`tether.credential`, :mod:`tether.vault`, :mod:`tether.state`, :mod:`tether.node`
(:class:`tether.Node`), :mod:`tether.routing`.
"""

from __future__ import annotations

from tether import _core
from tether.errors import TetherError
from tether.node import Node

__version__: str = _core.__version__

__all__ = ["Node", "TetherError", "__version__"]
