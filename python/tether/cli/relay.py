"""``tether relay …``: claim a name at a relay node so a node with no open port is reachable."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from tether.cli.api import call
from tether.cli.common import (
    add_trust_arguments,
    deleter,
    lister,
    node_api,
    running_node,
    shower,
    trust_body,
)

if TYPE_CHECKING:
    from tether.cli import Context


def _node(ctx: Context) -> str:
    """--to, or the only running node."""
    return running_node(ctx, ctx.args.to, "--to", "keeps the relay")


def _describe(r: dict[str, Any]) -> str:
    extra = f" ({r['last_error']})" if r.get("last_error") else ""
    return f"{r['name']}  {r['state']}{extra}\n  reach it at {r['forward_route']}/…"


def _create(ctx: Context) -> int:
    node = _node(ctx)
    r = call(
        node_api(ctx, node),
        "POST",
        "/relays",
        {"name": ctx.args.name, "at": ctx.args.at, **trust_body(ctx.args)},
        timeout=60,
    )
    ctx.emit(_describe(r), r)
    return 0


_list = lister(_node, "/relays", _describe, "no relays")
_show = shower(_node, "/relays", _describe, "name")
_delete = deleter(_node, "/relays", "name", "stopped keeping relay {}")


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tether.cli import add_command, add_group

    sub = add_group(
        groups,
        "relay",
        "make a node with no open port reachable through a relay node",
        (
            "Relays: a node connects out to a relay node, claims a name there, and is reachable "
            "at ROUTE_TO_RELAY/service/forward_to_NAME. Secure channels through the relay keep it"
            " blind."
        ),
        "tether relay create db --at /node/relay --to protected",
    )
    p = add_command(
        sub,
        "create",
        "claim NAME at the relay node reached by --at",
        "tether relay create db --at /node/relay --to protected",
        _create,
    )
    p.add_argument("name")
    p.add_argument("--at", required=True, help="route to the relay node, e.g. /node/relay")
    p.add_argument("--to", help="the node that claims the name (default: the only running one)")
    add_trust_arguments(p)
    p = add_command(
        sub, "list", "list the relays a node keeps", "tether relay list --to protected", _list
    )
    p.add_argument("--to", help="the node (default: the only running one)")
    for name, help_text, handler in (
        ("show", "show one relay", _show),
        ("delete", "stop keeping a relay", _delete),
    ):
        p = add_command(sub, name, help_text, f"tether relay {name} db --to protected", handler)
        p.add_argument("name")
        p.add_argument("--to", help="the node (default: the only running one)")
