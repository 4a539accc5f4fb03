"""``tether relay …``: claim a name at a relay node so a node with no open port is reachable."""

from __future__ import annotations

import argparse
from typing import Any

from tether.cli.common import (
    add_trust_arguments,
    check_route,
    deleter,
    lister,
    node_api,
    running_node,
    shower,
    trust_body,
)
from tether.cli.control_client import call
from tether.cli.parser import Context, Renamed, add_command, add_group, rename


def _node(ctx: Context) -> str:
    """--at, or the only running node."""
    return running_node(ctx, ctx.args.at, "--at", "keeps the relay")


# Until this release `--to NODE` named the node that claims and `--at ROUTE` the relay node; now
# `--at` is the node a resource lives on, as in every command, and the relay has --relay.
_OLD_TO = Renamed("--to", "--at")
_OLD_AT = Renamed(
    "--at",
    "--relay",
    when=lambda value: value.startswith("/"),  # a route: a node's name never has a '/'
    note="--at ROUTE is deprecated, use --relay ROUTE (--at now names the node that claims; "
    "the old meaning will be removed in the next release)",
)


def _describe(r: dict[str, Any]) -> str:
    extra = f" ({r['last_error']})" if r.get("last_error") else ""
    return f"{r['name']}  {r['state']}{extra}\n  reach it at {r['forward_route']}/…"


def _create(ctx: Context) -> int:
    check_route(ctx.args.relay)
    node = _node(ctx)
    r = call(
        node_api(ctx, node),
        "POST",
        "/relays",
        {"name": ctx.args.name, "at": ctx.args.relay, **trust_body(ctx.args)},
        timeout=60,
    )
    ctx.emit(_describe(r), r)
    return 0


_list = lister(_node, "/relays", _describe, "no relays")
_show = shower(_node, "/relays", _describe, "name")
_delete = deleter(_node, "/relays", "name", "stopped keeping relay {}")


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = add_group(
        groups,
        "relay",
        "make a node with no open port reachable through a relay node",
        (
            "Relays: a node connects out to a relay node, claims a name there, and is reachable "
            "at ROUTE_TO_RELAY/service/forward_to_NAME. Secure channels through the relay keep it"
            " blind."
        ),
        "tether relay create db --relay /node/relay --at protected",
    )
    p = add_command(
        sub,
        "create",
        "claim NAME at the relay node reached by --relay",
        "tether relay create db --relay /node/relay --at protected",
        _create,
    )
    rename(p, _OLD_TO, _OLD_AT)
    p.add_argument("name")
    p.add_argument(
        "--relay",
        required=True,
        metavar="ROUTE",
        help="route to the relay node, e.g. /node/relay or /ip4/RELAY_IP/tcp/4000",
    )
    p.add_argument(
        "--at", metavar="NODE", help="the node that claims the name (default: the only running one)"
    )
    add_trust_arguments(p)
    p = add_command(
        sub, "list", "list the relays a node keeps", "tether relay list --at protected", _list
    )
    rename(p, _OLD_TO)
    p.add_argument("--at", metavar="NODE", help="the node (default: the only running one)")
    for name, help_text, handler in (
        ("show", "show one relay", _show),
        ("delete", "stop keeping a relay", _delete),
    ):
        p = add_command(sub, name, help_text, f"tether relay {name} db --at protected", handler)
        rename(p, _OLD_TO)
        p.add_argument("name")
        p.add_argument("--at", metavar="NODE", help="the node (default: the only running one)")
