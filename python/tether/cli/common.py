"""Helpers shared by the command modules: argument types and readers."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.cli.control_client import call
from tether.cli.parser import Context, Handler
from tether.core.errors import InvalidArgumentError, StoreError, TetherError
from tether.core.message import LOCAL, Address
from tether.daemon import saved_nodes
from tether.identity.identity import identifier_bytes
from tether.identity.policy import Policy
from tether.identity.registry import check_name as check_registry_name
from tether.node.routing import host_port_problem, parse
from tether.store.local import default_home

TRUST_HELP = (
    "Who must answer the secure channel: by default the node a route names "
    "(/node/NAME/secure/...), else a member of an authority this node is enrolled with; "
    "a route through a relay or an address names nobody, so give --authorized"
)


def add_trust_arguments(p: argparse.ArgumentParser, *, authorized: bool = True) -> None:
    """``--authorized IDENTIFIER`` (repeatable) and ``--trust-any``: who may answer the secure
    channel a command opens (``tether.identity.trust.initiator_trust`` decides when neither is
    given)."""
    if authorized:
        p.add_argument(
            "--authorized",
            action="append",
            type=identifier,
            metavar="IDENTIFIER",
            help="accept only this peer identity at the far end (repeatable). " + TRUST_HELP,
        )
    p.add_argument(
        "--trust-any",
        action="store_true",
        help="accept any identity at the far end (development only: anything on the path, "
        "a relay included, could then answer the handshake and read the traffic)",
    )


def identifier(text: str) -> str:
    """An identity's identifier (``I`` and 40 lowercase hex digits), as an argument type."""
    try:
        identifier_bytes(text)
    except TetherError as e:
        raise argparse.ArgumentTypeError(
            f"{e}; `tether identity list` or `tether node show NAME` print identifiers"
        ) from None
    return text


def seconds(text: str) -> float:
    """A positive number of seconds, as an argument type (``--timeout``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def duration(text: str) -> float:
    """A duration, as an argument type (``--drain``): seconds, plain or with ``s``, or minutes
    with ``m`` (``30``, ``30s``, ``2m``; 0 allowed)."""
    unit = {"s": 1.0, "m": 60.0}.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (30, 30s or 2m)")
    return value


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
    home = ctx.home or default_home()
    saved_nodes.load_config(ctx.registry().store, node)
    if saved_nodes.read_runtime(home, node) is None:
        raise StoreError(f"node {node!r} is not running (`tether node start {node}`)")
    return saved_nodes.api_socket(home, node)


def running_node(ctx: Context, given: str | None, flag: str, role: str) -> str:
    """The node the user named with ``flag``, or the only running node."""
    if given:
        return given
    home = ctx.home or default_home()
    running = [
        c.name
        for c in saved_nodes.list_configs(ctx.registry().store)
        if saved_nodes.read_runtime(home, c.name) is not None
    ]
    if len(running) != 1:
        raise InvalidArgumentError(
            f"say which node {role} with {flag} NODE ({len(running)} nodes are running)"
        )
    return running[0]


Describe = Callable[[dict[str, Any]], str]

_TTL = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def ttl(text: str) -> int:
    """A duration → seconds: ``90s``, ``15m``, ``12h``, ``30d`` or ``2w``, the one parser of
    every duration option (``--ttl``, ``--credential-ttl``, ``--expires-in``). A bare number is
    refused: ``10`` could mean seconds or minutes, and a ticket or credential that lives 60
    times shorter or longer than meant is a mistake found too late."""
    text = text.strip()
    if text.isdigit() and int(text) > 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: give a unit, e.g. {text}s, {text}m, {text}h or {text}d"
        )
    m = _TTL.fullmatch(text)
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a positive number with s, m, h, d or w (e.g. 30d)"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def check_host_port(flag: str, text: str, *, any_port: bool = False) -> str:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6), checked before any node is asked, so the first
    mistake reported is the argument's; port 0 only where ``any_port`` (a listener: any free
    port)."""
    problem = host_port_problem(text, any_port=any_port)
    if problem is None:
        return text
    example = "127.0.0.1:0 (port 0: any free port)" if any_port else "127.0.0.1:5432"
    raise InvalidArgumentError(f"{flag} {text!r}: {problem}; use HOST:PORT, e.g. {example}")


def check_name(flag: str, name: str | None, what: str) -> None:
    """A resource's name, when given: ``what`` is its kind, e.g. ``tcp-outlet``."""
    if name is not None:
        try:
            check_registry_name(name, what)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"{flag}: {e}") from None


def check_policy(expression: str | None) -> None:
    """An ``--allow`` expression, when given (a bad one raises ``PolicyError``, which shows
    where and how to fix it)."""
    if expression:
        Policy.parse(expression)


def check_route(text: str) -> str:
    """A route's syntax, checked before any node is asked (a ``/node/NAME`` in it is looked up
    later, by the node that uses the route); a bad one raises ``RouteSyntaxError``, which shows
    where."""
    parse(text, resolve_node=lambda name: (Address(LOCAL, name.encode()),))
    return text


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
        at = node(ctx)
        if delete_saved(ctx, at, path, name):
            ctx.emit(done.format(name) + f" (from {at}'s saved configuration)", {"deleted": name})
            return 0
        call(node_api(ctx, at), "DELETE", f"{path}/{name}")
        ctx.emit(done.format(name), {"deleted": name})
        return 0

    return run


def delete_saved(ctx: Context, node: str, path: str, name: str) -> bool:
    """When ``node`` is stopped, delete resource ``name`` (served at ``path``) from its saved
    configuration and return True; when it runs, False (its control API deletes it)."""
    store = ctx.registry().store
    saved_nodes.load_config(store, node)
    if saved_nodes.read_runtime(ctx.home or default_home(), node) is not None:
        return False
    saved_nodes.delete_saved(store, node, path, name)
    return True
