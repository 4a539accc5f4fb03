"""``tether tcp-outlet …`` and ``tether tcp-inlet …``: portals that carry any TCP protocol through
a secure channel."""

from __future__ import annotations

import argparse
from typing import Any

from tether.cli.common import (
    add_trust_arguments,
    check_host_port,
    check_name,
    check_policy,
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
from tether.node.policies import describe


def _at(ctx: Context) -> str:
    return running_node(ctx, ctx.args.at, "--at", "runs it")


def _stats(p: dict[str, Any]) -> str:
    line = (
        f"  sessions {p['sessions']} open, {p['total']} in all, {p['refused']} refused, "
        f"{p['failed']} failed; {p['bytes_out']} bytes out, {p['bytes_in']} bytes in"
    )
    if p.get("last_error"):
        line += f"\n  last error: {p['last_error']}"
    return line


def _policy(p: dict[str, Any]) -> str:
    """Its effective policy (every policy that applies), as ``tether.node.policies`` describes
    it."""

    text = describe(p.get("policy"))
    return f"\n{text}" if text else ""


def _outlet(o: dict[str, Any]) -> str:
    return f"tcp-outlet {o['name']} → {o['to']}{_policy(o)}\n{_stats(o)}"


def _inlet(i: dict[str, Any]) -> str:
    head = f"tcp-inlet {i['name']}  {i['from']} → {i['to']}  ({i['state']})"
    return f"{head}{_policy(i)}\n{_stats(i)}"


def _outlet_create(ctx: Context) -> int:
    a = ctx.args
    check_host_port("--to", a.to)
    check_name("--name", a.name, "tcp-outlet")
    check_policy(a.allow)
    body = {"to": a.to, "name": a.name, "allow": a.allow}
    o = call(node_api(ctx, _at(ctx)), "POST", "/tcp-outlets", body)
    ctx.emit(
        _outlet(o) + f"\n  reach it through a secure channel: …/secure/api/service/{o['name']}", o
    )
    return 0


def _inlet_create(ctx: Context) -> int:
    a = ctx.args
    check_host_port("--from", a.from_addr, any_port=True)
    check_route(a.to)
    check_name("--name", a.name, "tcp-inlet")
    check_policy(a.allow)
    body = {"from": a.from_addr, "to": a.to, "name": a.name, "allow": a.allow, **trust_body(a)}
    i = call(node_api(ctx, _at(ctx)), "POST", "/tcp-inlets", body, timeout=60)
    ctx.emit(_inlet(i) + f"\n  clients connect to {i['from']}", i)
    return 0


ALLOW_HELP = (
    "policy the peer must satisfy, e.g. 'subject.role = \"db-client\"' or "
    "'subject.identifier = \"I…\"' (default: any authenticated peer)"
)


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = add_group(
        groups,
        "tcp-outlet",
        "connect portal sessions to a TCP service near this node",
        (
            "A tcp-outlet is a service (default address: outlet) on the node near the target. "
            "Each portal session that reaches it through a secure channel becomes a TCP "
            "connection to --to. Pair it with a tcp-inlet near the client."
        ),
        "tether tcp-outlet create --at db --to 127.0.0.1:5432",
    )
    p = add_command(
        sub,
        "create",
        "start an outlet to HOST:PORT",
        "tether tcp-outlet create --at db --to 127.0.0.1:5432 --allow 'subject.role = \"db\"'",
        _outlet_create,
    )
    # Until this release an outlet's name was --from (an inlet's --name: one flag now).
    rename(p, Renamed("--from", "--name"))
    p.add_argument(
        "--at", metavar="NODE", help="the node near the target (default: the only running one)"
    )
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the TCP service")
    p.add_argument("--name", help="the outlet's name, its service address (default: outlet)")
    p.add_argument("--allow", metavar="EXPR", help=ALLOW_HELP)
    _common(sub, "tcp-outlet", _outlet, "outlet")

    sub = add_group(
        groups,
        "tcp-inlet",
        "accept local TCP connections and carry them to a tcp-outlet",
        (
            "A tcp-inlet listens on --from near the client. Each connection becomes a portal "
            "session along --to, a route that must pass through a secure channel "
            "(/secure/LISTENER) and end at a tcp-outlet: for example "
            "/node/relay/service/forward_to_db/secure/api/service/outlet."
        ),
        "tether tcp-inlet create --at app --from 127.0.0.1:15432 "
        "--to /node/relay/service/forward_to_db/secure/api/service/outlet --authorized I0123…",
    )
    p = add_command(
        sub,
        "create",
        "listen on HOST:PORT and carry connections along ROUTE",
        "tether tcp-inlet create --at app --from 127.0.0.1:15432 "
        "--to /node/db/secure/api/service/outlet",
        _inlet_create,
    )
    p.add_argument(
        "--at", metavar="NODE", help="the node near the client (default: the only running one)"
    )
    p.add_argument(
        "--from",
        dest="from_addr",
        required=True,
        metavar="HOST:PORT",
        help="where to listen (port 0: any free port)",
    )
    p.add_argument("--to", required=True, metavar="ROUTE", help="route to the outlet")
    p.add_argument("--name", help="the inlet's name (default: inletN)")
    p.add_argument(
        "--allow",
        metavar="EXPR",
        help="policy the outlet side must satisfy, checked in the handshake, e.g. "
        "'subject.identifier = \"I…\"'",
    )
    add_trust_arguments(p)
    _common(sub, "tcp-inlet", _inlet, "inlet1")


def _common(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], kind: str, describe: Any, eg: str
) -> None:

    p = add_command(
        sub,
        "list",
        f"list a node's {kind}s",
        f"tether {kind} list --at NODE",
        lister(_at, f"/{kind}s", describe, f"no {kind}s"),
    )
    p.add_argument("--at", metavar="NODE", help="the node (default: the only running one)")
    for name, help_text, handler in (
        ("show", f"show one {kind} and its counters", shower(_at, f"/{kind}s", describe, "name")),
        (
            "delete",
            f"delete a {kind} (its open sessions are closed)",
            deleter(_at, f"/{kind}s", "name", f"deleted {kind} {{}}"),
        ),
    ):
        p = add_command(sub, name, help_text, f"tether {kind} {name} {eg} --at NODE", handler)
        p.add_argument("name")
        p.add_argument("--at", metavar="NODE", help="the node (default: the only running one)")
