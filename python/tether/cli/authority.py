"""``tether authority …``, ``tether ticket create``, ``tether enroll``, ``tether membership
list`` and ``tether policy …``: a project's members, their enrollment, and the policies that
use their attributes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from tether.api import Node
from tether.cli.common import (
    attribute,
    delete_saved,
    deleter,
    node_api,
    running_node,
    seconds,
    shower,
    timestamp,
    ttl,
)
from tether.cli.control_client import call
from tether.cli.parser import Context, Renamed, add_command, add_group, rename
from tether.core.errors import InvalidArgumentError, TetherError
from tether.daemon import saved_nodes
from tether.identity.trust import format_attributes
from tether.node.policies import matches
from tether.services.authority import TICKET_PREFIX, Ticket
from tether.store.authority_backend import database_url
from tether.store.local import default_home


def _trusted(text: str) -> dict[str, Any]:
    """``IDENTIFIER=key=value,key=value`` (or just ``IDENTIFIER``)."""
    identifier, _, rest = text.partition("=")
    attrs: dict[str, str] = {}
    for pair in filter(None, rest.split(",")):
        k, v = attribute(pair)
        attrs[k] = v
    if not identifier.startswith("I"):
        raise argparse.ArgumentTypeError(
            f"invalid --trusted {text!r}: use IDENTIFIER=key=value,key=value"
        )
    return {"identifier": identifier, "attributes": attrs}


def _at(ctx: Context) -> str:
    return running_node(ctx, ctx.args.at, "--at", "runs the authority")


def _authority_create(ctx: Context) -> int:
    a = ctx.args

    body = {
        "name": a.name,
        "database": database_url(a.database),  # --database, else $TETHER_DATABASE_URL
        "credential_ttl": a.credential_ttl,
        "admin_policy": a.admin_policy,
        "trusted": a.trusted or [],
    }
    node = _at(ctx)
    info = call(node_api(ctx, node), "POST", "/authority", body, timeout=60)
    ctx.emit(
        f"authority {info['name']} ({info['identifier']}) runs at {node}\n"
        f"  members' state: {info['database']}\n"
        f"  admins: {info['admin_policy']}; credentials for {info['credential_ttl'] // 86400} d\n"
        f"  enroll members: tether ticket create --at {node} --attribute KEY=VALUE",
        info,
    )
    return 0


def _authority_show(ctx: Context) -> int:
    info = call(node_api(ctx, _at(ctx)), "GET", "/authority")
    ctx.emit(
        "\n".join(f"{k:15} {v}" for k, v in info.items()),
        info,
    )
    return 0


def _members(ctx: Context) -> int:
    items = call(node_api(ctx, _at(ctx)), "GET", "/authority/members")
    lines = [
        f"{m['identifier']}  {format_attributes(m['attributes']) or '-'}  "
        f"(added {timestamp(m['added_at'])})"
        for m in items
    ]
    ctx.emit("\n".join(lines) or "no members", items)
    return 0


def _add_member(ctx: Context) -> int:
    a = ctx.args
    body = {"identifier": a.identifier, "attributes": dict(a.attribute or [])}
    r = call(node_api(ctx, _at(ctx)), "POST", "/authority/members", body)
    ctx.emit(f"member {a.identifier} with {format_attributes(r['attributes']) or '-'}", r)
    return 0


def _delete_member(ctx: Context) -> int:
    r = call(node_api(ctx, _at(ctx)), "DELETE", f"/authority/members/{ctx.args.identifier}")
    ctx.emit(f"deleted member {ctx.args.identifier}; revoked {len(r['revoked'])} credential(s)", r)
    return 0


def _ticket_create(ctx: Context) -> int:
    a = ctx.args
    node = running_node(ctx, a.at, "--at", "runs the authority")
    body = {
        "attributes": dict(a.attribute or []),
        "expires_in": a.expires_in,
        "usage_count": a.usage_count,
        "relay": a.relay_name,
        "route": a.route,
    }
    r = call(node_api(ctx, node), "POST", "/authority/tickets", body)
    if "expires_at" in r:  # epoch seconds, from the node; and the same instant for people
        r["expires"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["expires_at"]))
    ctx.emit(r["ticket"], r)
    return 0


def _enroll(ctx: Context) -> int:
    a = ctx.args
    if (a.ticket is None) == (a.ticket_file is None):
        raise InvalidArgumentError(
            "give the ticket as --ticket-file PATH, or - to read it from standard input (on the "
            "command line it is readable by other local users, from /proc/PID/cmdline)"
        )
    if a.ticket_file is not None:
        try:
            text = Path(a.ticket_file).read_text()
        except OSError as e:
            raise InvalidArgumentError(
                f"cannot read the ticket file {a.ticket_file}: {e.strerror or e}"
            ) from None
    elif a.ticket == "-":
        import sys

        text = sys.stdin.read()
    else:
        text = a.ticket
    _check_ticket(text, a.ticket)  # the ticket itself first, then which node presents it
    if a.identity:
        if a.at:
            raise InvalidArgumentError("enroll either --at NODE or --identity, not both")
        return _enroll_identity(ctx, a.identity, text.strip())
    node = running_node(ctx, a.at, "--at", "enrolls")
    body = {"ticket": text.strip(), "poll_interval": a.poll_interval}
    m = call(node_api(ctx, node), "POST", "/enroll", body, timeout=60)
    ctx.emit(
        f"{node} is a member of {m['authority']} with "
        f"{format_attributes(m['attributes']) or 'no attributes'}\n"
        f"  credential {m['credential']} until {timestamp(m['expires_at'])} (refreshed "
        "automatically)",
        m,
    )
    return 0


def _check_ticket(text: str, given: str | None) -> None:
    """Refuse what is not a ticket before any node is asked (a path given where the ticket
    goes gets a hint to use --ticket-file)."""

    if given not in (None, "-") and not text.strip().startswith(TICKET_PREFIX):
        assert given is not None
        try:
            is_file = Path(given).is_file()
        except OSError:
            is_file = False
        if is_file:
            raise InvalidArgumentError(
                f"not a ticket: {given!r} is a file; read the ticket from it with "
                f"--ticket-file {given}"
            )
    Ticket.decode(text)


def _enroll_identity(ctx: Context, name: str, text: str) -> int:
    """Enroll an identity (no running node): a node in this process presents the ticket; the
    credential and the authority's identity are stored for the identity's later use."""
    import anyio

    registry = ctx.registry()
    ticket = Ticket.decode(text)
    home = ctx.home or default_home()

    async def run() -> Any:
        # The outcome leaves the node's task group as a value, so a refusal reaches the user
        # as its own error (not wrapped in an exception group).
        async with Node(
            "enroll",
            identity=registry.channel_identity(name),
            resolve_node=saved_nodes.resolver(home),
        ) as node:
            try:
                outcome: Any = await node.enroll(ticket)
            except (TetherError, TimeoutError) as e:
                outcome = e
            node.task_group.cancel_scope.cancel()
        return outcome

    m = anyio.run(run, backend="trio")
    if isinstance(m, BaseException):
        raise m
    registry.import_identity(ticket.authority.history)
    registry.store_credential(m.credential)
    info = m.info()
    ctx.emit(
        f"identity {name} is a member of {info['authority']} with "
        f"{format_attributes(info['attributes']) or 'no attributes'}\n"
        f"  credential {info['credential']} until {timestamp(int(str(info['expires_at'])))}",
        info,
    )
    return 0


def _memberships(ctx: Context) -> int:
    node = running_node(ctx, ctx.args.at, "--at", "holds the memberships")
    items = call(node_api(ctx, node), "GET", "/memberships")
    lines = [
        f"{m['authority']}  {format_attributes(m['attributes']) or '-'}  until "
        f"{timestamp(m['expires_at']) if m['expires_at'] else '-'}"
        + (f"  (last error: {m['last_error']})" if m["last_error"] else "")
        for m in items
    ]
    ctx.emit("\n".join(lines) or "no memberships", items)
    return 0


def _membership_node(ctx: Context) -> str:
    return running_node(ctx, ctx.args.at, "--at", "holds the membership")


_membership_delete = deleter(
    _membership_node, "/memberships", "authority", "left the authority {} (credential dropped)"
)


def _authority_delete(ctx: Context) -> int:
    """Stop running the authority (on a stopped node: drop it from the saved configuration)."""
    at = _at(ctx)
    if delete_saved(ctx, at, "/authority", "authority"):
        ctx.emit(f"node {at} runs no authority any more (saved configuration)", {"deleted": at})
        return 0
    call(node_api(ctx, at), "DELETE", "/authority")
    ctx.emit(
        f"node {at} runs no authority any more; its members' state stays in its database "
        "(`tether authority create` with the same identity and database takes it up again)",
        {"deleted": at},
    )
    return 0


def _policy_create(ctx: Context) -> int:
    a = ctx.args
    if not a.resource and not a.resource_type:
        raise InvalidArgumentError("say what the policy is for: --resource NAME or --resource-type")
    body = {"resource": a.resource, "resource_type": a.resource_type, "expression": a.expression}
    r = call(node_api(ctx, _policy_node(ctx)), "POST", "/policies", body)
    ctx.emit(f"created {_policy_line(r)}\n  {_ALL_APPLY}", r)
    return 0


_ALL_APPLY = (
    "every policy that applies to a resource (its type's, its name's, its --allow) must allow"
)


def _policy_node(ctx: Context) -> str:
    return running_node(ctx, ctx.args.at, "--at", "holds the policy")


def _policy_line(p: dict[str, Any]) -> str:
    target = p["resource"] or f"every {p['resource_type']}"
    if p["resource"] and p["resource_type"]:
        target = f"{p['resource_type']} {p['resource']}"
    return f"{p['id']}  {target}: {p['expression']}"


def _policy_list(ctx: Context) -> int:
    """Every policy on the node, or those that govern one resource (``--resource`` and
    ``--resource-type``, by the rule of :func:`tether.node.policies.matches`), or those attached to
    a name or a type."""

    a = ctx.args
    items = call(node_api(ctx, _policy_node(ctx)), "GET", "/policies")
    if a.resource and a.resource_type:
        items = [
            p
            for p in items
            if matches(p["resource"], p["resource_type"], a.resource_type, a.resource)
        ]
    elif a.resource or a.resource_type:
        key, value = ("resource", a.resource) if a.resource else ("resource_type", a.resource_type)
        items = [p for p in items if p[key] == value]
    human = "\n".join(_policy_line(p) for p in items) or "no policies"
    if items and a.resource and a.resource_type:
        human = f"{a.resource_type} {a.resource}: {_ALL_APPLY}\n" + human
    ctx.emit(human, items)
    return 0


_policy_show = shower(_policy_node, "/policies", _policy_line, "id")
_policy_delete = deleter(_policy_node, "/policies", "id", "deleted policy {}")


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands of authorities, tickets, enrollment, memberships and policies."""
    _register_authority(groups)
    _register_ticket(groups)
    _register_enroll(groups)
    _register_membership(groups)
    _register_policy(groups)


def _register_authority(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``authority`` commands: run an authority, its members."""
    sub = add_group(
        groups,
        "authority",
        "run a project's authority: its members and their credentials",
        (
            "An authority keeps the member registry (identifier → attributes), enrolls members "
            "with one-time tickets and issues their credentials (30 days by default) over "
            "secure channels. Its state is the node's SQLite store, or PostgreSQL with "
            "--database (or TETHER_DATABASE_URL), so several authority nodes with the same "
            "identity serve one project."
        ),
        "tether authority create acme --at auth --trusted I0123…=admin=true",
    )
    p = add_command(
        sub,
        "create",
        "run an authority on a node (its identity is the authority's)",
        "tether authority create acme --at auth --database postgresql://tether@127.0.0.1/acme",
        _authority_create,
    )
    p.add_argument("name", help="the project's name (a label)")
    p.add_argument("--at", help="the node (default: the only running one)")
    p.add_argument(
        "--trusted",
        type=_trusted,
        action="append",
        metavar="IDENTIFIER=K=V,…",
        help="a member from the start, e.g. an admin: I0123…=admin=true (repeatable)",
    )
    p.add_argument("--database", metavar="URL", help="PostgreSQL URL (default: the node's store)")
    p.add_argument(
        "--credential-ttl",
        type=ttl,
        default=30 * 86400,
        metavar="DURATION",
        help="credential lifetime, with a unit: s, m, h or d (default 30d)",
    )
    p.add_argument(
        "--admin-policy",
        metavar="EXPR",
        help='who may create tickets and manage members (default: subject.admin = "true")',
    )
    p = add_command(
        sub, "show", "show the authority", "tether authority show --at auth", _authority_show
    )
    p.add_argument("--at", help="the node (default: the only running one)")
    p = add_command(
        sub,
        "delete",
        "stop running the authority (its members' state stays in its database)",
        "tether authority delete --at auth",
        _authority_delete,
    )
    p.add_argument("--at", help="the node (default: the only running one)")
    p = add_command(
        sub, "members", "list the members", "tether authority members --at auth", _members
    )
    p.add_argument("--at", help="the node (default: the only running one)")
    p = add_command(
        sub,
        "add-member",
        "make an identity a member with attributes",
        "tether authority add-member I0123… --attribute role=db-client --at auth",
        _add_member,
    )
    p.add_argument("identifier")
    p.add_argument("--attribute", type=attribute, action="append", metavar="KEY=VALUE")
    p.add_argument("--at", help="the node (default: the only running one)")
    p = add_command(
        sub,
        "delete-member",
        "remove a member and revoke its credentials",
        "tether authority delete-member I0123… --at auth",
        _delete_member,
    )
    p.add_argument("identifier")
    p.add_argument("--at", help="the node (default: the only running one)")


def _register_ticket(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``ticket`` commands: enrollment tickets."""
    sub = add_group(
        groups,
        "ticket",
        "one-time enrollment tickets",
        "A ticket lets whoever presents it become a member with the ticket's attributes.",
        "tether ticket create --at auth --attribute role=db-client",
    )
    p = add_command(
        sub,
        "create",
        "print a ticket (single-use, 10 minutes by default)",
        "tether ticket create --at auth --attribute role=db-client --expires-in 10m",
        _ticket_create,
    )
    rename(p, Renamed("--authority", "--at"))  # --at: the node, as in `tether authority …`
    p.add_argument(
        "--at",
        metavar="NODE",
        help="the node running the authority (default: the only running one)",
    )
    p.add_argument("--attribute", type=attribute, action="append", metavar="KEY=VALUE")
    p.add_argument(
        "--expires-in",
        type=ttl,
        default=600,
        metavar="DURATION",
        help="lifetime, with a unit: s, m, h or d (default 10m)",
    )
    p.add_argument("--usage-count", type=int, default=1, help="how many enrollments (default 1)")
    # --relay is a relay's route in `tether relay create`; here it was a name (until this release)
    rename(p, Renamed("--relay", "--relay-name"))
    p.add_argument("--relay-name", metavar="NAME", help="also let the member claim this relay name")
    p.add_argument(
        "--route", help="route by which members reach the authority's node (default: its listener)"
    )


def _register_enroll(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``enroll`` command: present a ticket."""
    p = add_command(
        groups,
        "enroll",
        "present a ticket: the node becomes a member and gets its credential",
        "tether enroll --ticket-file ticket.txt --at app   (or: … | tether enroll - …)",
        _enroll,
    )
    p.add_argument(
        "ticket",
        nargs="?",
        help="- to read the ticket from standard input (preferred, as is --ticket-file: a "
        "ticket written here is readable by other local users in /proc/PID/cmdline while the "
        "command runs)",
    )
    p.add_argument("--ticket-file", metavar="PATH", help="read the ticket from this file")
    rename(p, Renamed("--node", "--at"))  # --at: the node the membership lives on
    p.add_argument(
        "--at", metavar="NODE", help="the node that enrolls (default: the only running one)"
    )
    p.add_argument("--identity", help="enroll this identity instead (no node needs to run)")
    p.add_argument(
        "--poll-interval",
        type=seconds,
        default=60.0,
        help="seconds between revocation checks (default 60)",
    )


def _register_membership(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``membership`` commands: a node's memberships."""
    sub = add_group(
        groups,
        "membership",
        "a node's memberships of authorities",
        "The authorities a node enrolled with, and its credentials from them.",
        "tether membership list --at app",
    )
    p = add_command(
        sub, "list", "list memberships", "tether membership list --at app", _memberships
    )
    p.add_argument("--at", help="the node (default: the only running one)")
    p = add_command(
        sub,
        "delete",
        "leave an authority: stop presenting its credential and trusting its members",
        "tether membership delete I0123… --at app",
        _membership_delete,
    )
    p.add_argument("authority", metavar="AUTHORITY", help="the authority's identifier")
    p.add_argument("--at", help="the node (default: the only running one)")


def _register_policy(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``policy`` commands: policies on a node's resources."""
    sub = add_group(
        groups,
        "policy",
        "attribute-based access control for a node's resources",
        (
            "A policy is an expression over the peer's authenticated attributes (subject.*), "
            "the resource (resource.type, resource.name) and the action (action.name), e.g. "
            "'subject.role = \"db-client\"' or the short form 'web and not test'. It attaches to "
            "a resource by name (--resource) or to every resource of a type (--resource-type: "
            "tcp-outlet, tcp-inlet, relay, secure-channel-listener, or a service kind such as "
            "echo). Every policy that applies to a resource must allow the peer: its type's, "
            "its name's and its own --allow (a type-wide policy is a floor). Deny by default: a "
            "missing attribute makes a comparison false."
        ),
        "tether policy create --at db --resource outlet 'subject.role = \"db-client\"'",
    )
    p = add_command(
        sub,
        "create",
        "attach a policy",
        "tether policy create --at db --resource-type tcp-outlet 'subject.role = \"db-client\"'",
        _policy_create,
    )
    p.add_argument("expression", help="e.g. 'subject.role = \"db-client\"' (quote text values)")
    p.add_argument("--resource", metavar="NAME", help="attach it to the resource of this name")
    p.add_argument("--resource-type", metavar="TYPE", help="to every resource of this type")
    p.add_argument("--at", help="the node (default: the only running one)")
    p = add_command(
        sub,
        "list",
        "list policies (all of them, or those that apply to one resource)",
        "tether policy list --at db --resource-type tcp-outlet --resource outlet",
        _policy_list,
    )
    p.add_argument("--resource", metavar="NAME", help="only those attached to this name")
    p.add_argument("--resource-type", metavar="TYPE", help="only those of this type")
    p.add_argument("--at", help="the node (default: the only running one)")
    for name, help_text, handler in (
        ("show", "show one policy", _policy_show),
        ("delete", "delete a policy", _policy_delete),
    ):
        p = add_command(sub, name, help_text, f"tether policy {name} policy1 --at db", handler)
        p.add_argument("id")
        p.add_argument("--at", help="the node (default: the only running one)")
