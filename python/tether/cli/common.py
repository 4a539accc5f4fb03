"""Helpers shared by the command modules: argument types and readers."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether import nodes
from tether.cli.api import call
from tether.errors import InvalidArgumentError, StoreError

if TYPE_CHECKING:
    from tether.cli import Context, Handler


TRUST_HELP = (
    "Who must answer the secure channel: by default the node a route names "
    "(/node/NAME/secure/...), else a member of an authority this node is enrolled with; "
    "a route through a relay or an address names nobody, so give --authorized"
)


def add_trust_arguments(p: argparse.ArgumentParser, *, authorized: bool = True) -> None:
    """``--authorized IDENTIFIER`` (repeatable) and ``--trust-any``: who may answer the secure
    channel a command opens (``tether.trust.initiator_trust`` decides when neither is given)."""
    if authorized:
        p.add_argument(
            "--authorized",
            action="append",
            metavar="IDENTIFIER",
            help="accept only this peer identity at the far end (repeatable). " + TRUST_HELP,
        )
    p.add_argument(
        "--trust-any",
        action="store_true",
        help="accept any identity at the far end (development only: anything on the path, "
        "a relay included, could then answer the handshake and read the traffic)",
    )


def trust_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request-body fields of :func:`add_trust_arguments`' flags."""
    body: dict[str, Any] = {}
    if getattr(args, "authorized", None):
        body["authorized"] = args.authorized
    if args.trust_any:
        body["trust_any"] = True
    return body


def node_api(ctx: Context, node: str) -> Path:
    """The control-API socket of ``node``, which must be running."""
    from tether.state import default_home

    home = ctx.home or default_home()
    nodes.load_config(ctx.registry().store, node)
    if nodes.read_runtime(home, node) is None:
        raise StoreError(f"node {node!r} is not running (`tether node start {node}`)")
    return nodes.api_socket(home, node)


def running_node(ctx: Context, given: str | None, flag: str, role: str) -> str:
    """The node the user named with ``flag``, or the only running node."""
    if given:
        return given
    from tether.state import default_home

    home = ctx.home or default_home()
    running = [
        c.name
        for c in nodes.list_configs(ctx.registry().store)
        if nodes.read_runtime(home, c.name) is not None
    ]
    if len(running) != 1:
        raise InvalidArgumentError(
            f"say which node {role} with {flag} NODE ({len(running)} nodes are running)"
        )
    return running[0]


Describe = Callable[[dict[str, Any]], str]

_TTL = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def ttl(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` → seconds."""
    m = _TTL.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a positive number with s, m, h, d or w (e.g. 30d)"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid attribute {text!r}: use KEY=VALUE")
    return key, value


def hex_input(value: str | None, path: str | None, what: str) -> bytes:
    """Bytes from a hex argument, or a file holding hex (``-`` for stdin)."""
    if (value is None) == (path is None):
        raise InvalidArgumentError(f"give the {what} either as hex or as a file, not both")
    if path is not None:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as e:
            raise InvalidArgumentError(f"cannot read {path}: {e.strerror}") from None
    else:
        assert value is not None
        text = value
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise InvalidArgumentError(f"the {what} is not hex") from None


def timestamp(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


# ``list``, ``show`` and ``delete`` of a node's resources at ``path`` (e.g. ``/relays``), on the
# node that ``node`` picks from the arguments; ``key`` is the argument naming one resource.


def lister(node: Callable[[Context], str], path: str, describe: Describe, empty: str) -> Handler:
    def run(ctx: Context) -> int:
        items = call(node_api(ctx, node(ctx)), "GET", path)
        ctx.emit("\n".join(describe(x) for x in items) or empty, items)
        return 0

    return run


def shower(node: Callable[[Context], str], path: str, describe: Describe, key: str) -> Handler:
    def run(ctx: Context) -> int:
        x = call(node_api(ctx, node(ctx)), "GET", f"{path}/{getattr(ctx.args, key)}")
        ctx.emit(describe(x), x)
        return 0

    return run


def deleter(node: Callable[[Context], str], path: str, key: str, done: str) -> Handler:
    """``done`` is what is printed, with ``{}`` for the deleted resource."""

    def run(ctx: Context) -> int:
        name = getattr(ctx.args, key)
        call(node_api(ctx, node(ctx)), "DELETE", f"{path}/{name}")
        ctx.emit(done.format(name), {"deleted": name})
        return 0

    return run
