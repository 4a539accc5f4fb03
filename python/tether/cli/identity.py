"""``tether identity …``: create, list, show, rotate, delete and import identities."""

from __future__ import annotations

import argparse
from typing import Any

from tether.cli.common import hex_input, timestamp
from tether.cli.parser import Context, add_command, add_group
from tether.core.errors import InvalidArgumentError
from tether.daemon import saved_nodes
from tether.identity.identity import Purpose
from tether.identity.registry import LocalIdentity, Registry
from tether.store.local import default_home


def describe(reg: Registry, local: LocalIdentity, full: bool = False) -> dict[str, Any]:
    """What `show` and `list` print: public facts only, never a secret."""
    out: dict[str, Any] = {
        "name": local.name,
        "identifier": local.identifier,
        "created_at": local.created_at,
        "changes": len(local.identity.changes),
        "primary_key": local.identity.primary_key.hex(),
    }
    for purpose, label in (
        (Purpose.SECURE_CHANNEL, "secure_channel_key"),
        (Purpose.CREDENTIAL_SIGNING, "credential_signing_key"),
    ):
        att = reg.purpose_attestation(local.identifier, purpose)
        if att is not None:
            out[label] = {"public_key": att.public_key.hex(), "expires_at": att.expires_at}
    if full:
        out["history"] = local.identity.history.hex()
    return out


def _create(ctx: Context) -> int:
    local = ctx.registry().create_identity(ctx.args.name)
    ctx.emit(local.identifier, {"name": local.name, "identifier": local.identifier})
    return 0


def _list(ctx: Context) -> int:
    reg = ctx.registry()
    items = [describe(reg, i) for i in reg.list_identities()]
    if not items:
        ctx.emit("no identities yet: `tether identity create NAME` makes one", [])
        return 0
    width = max(len(i["name"]) for i in items)
    lines = [f"{i['name']:<{width}}  {i['identifier']}  changes={i['changes']}" for i in items]
    ctx.emit("\n".join(lines), items)
    return 0


def _show(ctx: Context) -> int:
    reg = ctx.registry()
    d = describe(reg, reg.get(ctx.args.name), full=ctx.args.full)
    lines = [
        f"name           {d['name']}",
        f"identifier     {d['identifier']}",
        f"created        {timestamp(d['created_at'])}",
        f"changes        {d['changes']} (primary key {d['primary_key'][:16]}…)",
    ]
    for label, key in (
        ("channel key", "secure_channel_key"),
        ("signing key", "credential_signing_key"),
    ):
        if key in d:
            lines.append(
                f"{label:<14} {d[key]['public_key'][:16]}… attested until "
                f"{timestamp(d[key]['expires_at'])}"
            )
    if ctx.args.full:
        lines.append(f"history        {d['history']}")
    ctx.emit("\n".join(lines), d)
    return 0


def _rotate(ctx: Context) -> int:
    local = ctx.registry().rotate(ctx.args.name)
    ctx.emit(
        f"{local.identifier} rotated: change {len(local.identity.changes)}, new primary key "
        f"{local.identity.primary_key.hex()[:16]}…",
        {
            "name": local.name,
            "identifier": local.identifier,
            "changes": len(local.identity.changes),
            "primary_key": local.identity.primary_key.hex(),
        },
    )
    return 0


def _delete(ctx: Context) -> int:
    import sys

    reg, name = ctx.registry(), ctx.args.name
    reg.get(name)  # (no such identity: say so first)
    users = saved_nodes.identity_users(reg.store, ctx.home or default_home(), name)
    used_by = ", ".join(how for _, how in users)
    if users and not ctx.args.force:
        raise InvalidArgumentError(
            f"identity {name!r} is in use by {used_by}: delete the node first (`tether node "
            f"delete {users[0][0]}`), or give --force to delete the identity anyway (the node "
            "then starts with no identity)"
        )
    identifier = reg.delete(name)
    if users:
        print(f"tether: warning: deleted an identity in use by {used_by}", file=sys.stderr)
    ctx.emit(
        f"deleted {name} ({identifier}) and its keys",
        {
            "name": name,
            "identifier": identifier,
            "deleted": True,
            "was_used_by": [node for node, _ in users],
        },
    )
    return 0


def _import(ctx: Context) -> int:
    data = hex_input(ctx.args.history, ctx.args.file, "identity history")
    identity = ctx.registry().import_identity(data)
    ctx.emit(
        f"{identity.identifier} imported ({len(identity.changes)} changes)",
        {"identifier": identity.identifier, "changes": len(identity.changes)},
    )
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = add_group(
        groups,
        "identity",
        "create and manage identities",
        (
            "Identities: Ed25519 keys with a change history. The identifier stays the same across"
            " key rotations."
        ),
        "tether identity create alice",
    )

    p = add_command(
        sub,
        "create",
        "create an identity and print its identifier",
        "tether identity create alice",
        _create,
    )
    p.add_argument("name", help="a local name for the identity")
    add_command(sub, "list", "list this node's identities", "tether identity list --json", _list)
    p = add_command(
        sub,
        "show",
        "show an identity (never its secrets)",
        "tether identity show alice --full",
        _show,
    )
    p.add_argument("name")
    p.add_argument(
        "--full",
        action="store_true",
        help="include the exported change history (hex), for `identity import`",
    )
    p = add_command(
        sub,
        "rotate",
        "rotate to a new primary key; the identifier stays",
        "tether identity rotate alice",
        _rotate,
    )
    p.add_argument("name")
    p = add_command(
        sub, "delete", "delete an identity and its keys", "tether identity delete alice", _delete
    )
    p.description = (
        "Delete an identity and its keys. Refused while a node uses it (as its own identity, "
        "for its authority or for a secure-channel listener), running or stopped: that node "
        "could no longer open or accept secure channels."
    )
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="delete it even though a node uses it")
    p = add_command(
        sub,
        "import",
        "remember another party's identity (its change history)",
        "tether identity import --file authority.history",
        _import,
    )
    p.add_argument("history", nargs="?", help="the change history, hex (from `show --full`)")
    p.add_argument("--file", help="read the hex history from a file ('-' for stdin)")
    p = add_command(
        sub,
        "export-secret",
        "write an identity with its private key, encrypted under a passphrase",
        "TETHER_PASSPHRASE=… tether identity export-secret authority --file authority.secret",
        _export_secret,
    )
    p.add_argument("name")
    p.add_argument("--file", required=True, help="where to write it (created 0600, never replaced)")
    p = add_command(
        sub,
        "import-secret",
        "make an exported identity a local one here (e.g. a second authority instance)",
        "TETHER_PASSPHRASE=… tether identity import-secret authority --file authority.secret",
        _import_secret,
    )
    p.add_argument("name", help="a local name for the identity")
    p.add_argument("--file", required=True, help="the file `export-secret` wrote")


def _passphrase(confirm: bool) -> str:
    """From $TETHER_PASSPHRASE, else asked on the terminal (twice when choosing one)."""
    import getpass
    import os
    import sys

    value = os.environ.get("TETHER_PASSPHRASE")
    if value is not None:
        return value
    if not sys.stdin.isatty():
        raise InvalidArgumentError("set TETHER_PASSPHRASE, or run this in a terminal to type it")
    value = getpass.getpass("passphrase: ")
    if confirm and getpass.getpass("passphrase again: ") != value:
        raise InvalidArgumentError("the passphrases differ")
    return value


def _export_secret(ctx: Context) -> int:
    import os

    text = ctx.registry().export_secret(ctx.args.name, _passphrase(confirm=True))
    try:
        fd = os.open(ctx.args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidArgumentError(f"{ctx.args.file} exists; it is never replaced") from None
    except OSError as e:
        raise InvalidArgumentError(f"cannot write {ctx.args.file}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    ctx.emit(
        f"wrote {ctx.args.name} with its private key, encrypted, to {ctx.args.file}\n"
        "  keep it like the key itself; import it with `tether identity import-secret`",
        {"name": ctx.args.name, "file": ctx.args.file},
    )
    return 0


def _import_secret(ctx: Context) -> int:
    from pathlib import Path

    try:
        text = Path(ctx.args.file).read_text()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read {ctx.args.file}: {e.strerror}") from None
    local = ctx.registry().import_secret(ctx.args.name, text, _passphrase(confirm=False))
    ctx.emit(
        f"{local.name} {local.identifier} is a local identity here now",
        {"name": local.name, "identifier": local.identifier},
    )
    return 0
