"""``tether secure-channel …`` and ``tether secure-channel-listener …``."""

from __future__ import annotations

import argparse
from typing import Any

from tether.cli.common import (
    add_trust_arguments,
    check_route,
    delete_saved,
    node_api,
    seconds,
    trust_body,
)
from tether.cli.control_client import call
from tether.cli.parser import Context, Renamed, add_command, add_group, rename
from tether.identity.trust import format_attributes
from tether.node.policies import describe


def _describe(c: dict[str, Any]) -> str:
    """One line per channel: its address, peer, side and the peer's attributes that count now
    (``role=db-client``); then a line for each credential of the peer's that does not, and
    why."""
    role = "initiator" if c.get("initiator") else "responder"
    attrs = format_attributes(c.get("attributes") or {}) or "none"
    line = f"{c['address']}  peer {c['peer']}  ({role}, {c['sent']} sent)  attributes: {attrs}"
    return "\n".join([line, *(f"  {note}" for note in c.get("ignored") or ())])


def _create(ctx: Context) -> int:
    a = ctx.args
    check_route(a.to)
    body: dict[str, Any] = {"to": a.to, "timeout": a.timeout, **trust_body(a)}
    if a.identity:
        body["identity"] = a.identity
    c = call(node_api(ctx, a.at), "POST", "/secure-channels", body, timeout=a.timeout + 5)
    ctx.emit(
        f"secure channel {c['address']} to {c['peer']}\n"
        f"  use it in routes: /service/{c['address']}/…",
        c,
    )
    return 0


def _list(ctx: Context) -> int:
    items = call(node_api(ctx, ctx.args.at), "GET", "/secure-channels")
    ctx.emit("\n".join(_describe(c) for c in items) or "no secure channels", items)
    return 0


def _show(ctx: Context) -> int:
    c = call(node_api(ctx, ctx.args.at), "GET", f"/secure-channels/{ctx.args.address}")
    ctx.emit(_describe(c), c)
    return 0


def _delete(ctx: Context) -> int:
    call(node_api(ctx, ctx.args.at), "DELETE", f"/secure-channels/{ctx.args.address}")
    ctx.emit(f"closed secure channel {ctx.args.address}", {"closed": ctx.args.address})
    return 0


def _listener_create(ctx: Context) -> int:
    a = ctx.args
    body: dict[str, Any] = {"address": a.name}
    if a.identity:
        body["identity"] = a.identity
    if a.authorized:
        body["authorized"] = a.authorized
    if a.allow:
        body["allow"] = a.allow
    lst = call(node_api(ctx, a.at), "POST", "/secure-channel-listeners", body)
    ctx.emit(f"secure-channel listener {lst['address']} on {a.at} as {lst['identifier']}", lst)
    return 0


def _listener_list(ctx: Context) -> int:
    items = call(node_api(ctx, ctx.args.at), "GET", "/secure-channel-listeners")
    ctx.emit(
        "\n".join(
            f"{i['address']}  {i['identifier']}  accepted {i['accepted']}, refused {i['refused']}"
            for i in items
        )
        or "no listeners",
        items,
    )
    return 0


def _listener_show(ctx: Context) -> int:
    i = call(node_api(ctx, ctx.args.at), "GET", f"/secure-channel-listeners/{ctx.args.name}")
    human = (
        f"secure-channel listener {i['address']} as {i['identifier']}\n"
        f"  accepted {i['accepted']}, refused {i['refused']}, pending {i['pending']}"
    )
    policy = describe(i.get("policy"))
    ctx.emit(human + (f"\n{policy}" if policy else ""), i)
    return 0


def _listener_delete(ctx: Context) -> int:
    path, where = "/secure-channel-listeners", ""
    if delete_saved(ctx, ctx.args.at, path, ctx.args.name):  # the node is stopped
        where = f" (from {ctx.args.at}'s saved configuration)"
    else:
        call(node_api(ctx, ctx.args.at), "DELETE", f"{path}/{ctx.args.name}")
    ctx.emit(f"deleted listener {ctx.args.name}{where}", {"deleted": ctx.args.name})
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = add_group(
        groups,
        "secure-channel",
        "open, list and close secure channels",
        (
            "Secure channels: mutually authenticated, end-to-end encrypted Noise XX channels over"
            " any route."
        ),
        "tether secure-channel create --at n1 --to /node/n2/service/api",
    )
    p = add_command(
        sub,
        "create",
        "open a secure channel to a listener at the end of ROUTE",
        "tether secure-channel create --at n1 --to /node/n2/service/api",
        _create,
    )
    rename(p, Renamed("--from", "--at"))  # --at: the node the channel lives on, as in `list`
    p.add_argument("--at", required=True, metavar="NODE", help="the node opening it")
    p.add_argument(
        "--to",
        required=True,
        metavar="ROUTE",
        help="route to the listener, e.g. /node/n2/service/api",
    )
    p.add_argument("--identity", help="identity to present (default: the node's)")
    add_trust_arguments(p)
    p.add_argument("--timeout", type=seconds, default=10.0)
    p = add_command(
        sub,
        "list",
        "list a node's secure channels, with the attributes each peer's credentials give it",
        "tether secure-channel list --at n1",
        _list,
    )
    p.add_argument("--at", required=True, help="the node")
    for name, help_text, handler in (
        ("show", "show one secure channel", _show),
        ("delete", "close a secure channel (both ends learn it)", _delete),
    ):
        p = add_command(sub, name, help_text, f"tether secure-channel {name} sc#2 --at n1", handler)
        p.add_argument("address")
        p.add_argument("--at", required=True, help="the node")

    sub = add_group(
        groups,
        "secure-channel-listener",
        "accept secure channels on a node",
        (
            "Secure-channel listeners accept channels from authenticated identities (every node "
            "with an identity has one at 'api')."
        ),
        "tether secure-channel-listener create db --at n2 --authorized I0123...",
    )
    p = add_command(
        sub,
        "create",
        "accept secure channels at NAME on a node",
        "tether secure-channel-listener create db --at n2 --authorized I0123...",
        _listener_create,
    )
    p.add_argument("name")
    p.add_argument("--at", required=True, help="the node")
    p.add_argument("--identity", help="identity to present (default: the node's)")
    p.add_argument(
        "--authorized",
        action="append",
        metavar="IDENTIFIER",
        help="admit only this identity (repeatable; default: any authenticated)",
    )
    p.add_argument(
        "--allow",
        metavar="EXPR",
        help="policy a peer must satisfy in the handshake, e.g. 'subject.role = \"db\"'",
    )
    p = add_command(
        sub,
        "list",
        "list a node's secure-channel listeners",
        "tether secure-channel-listener list --at n2",
        _listener_list,
    )
    p.add_argument("--at", required=True, help="the node")
    p = add_command(
        sub,
        "show",
        "show a secure-channel listener: its counters and the policies that apply",
        "tether secure-channel-listener show api --at n2",
        _listener_show,
    )
    p.add_argument("name")
    p.add_argument("--at", required=True, help="the node")
    p = add_command(
        sub,
        "delete",
        "stop a secure-channel listener",
        "tether secure-channel-listener delete db --at n2",
        _listener_delete,
    )
    p.add_argument("name")
    p.add_argument("--at", required=True, help="the node")
