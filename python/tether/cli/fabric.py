"""``tether fabric users``: the NATS servers' authorization for a fabric, compiled from tether's
policy (:mod:`tether.node.fabric`; ``docs/routing.md``, "The NATS fabric")."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from tether.cli.common import node_api, running_node
from tether.cli.control_client import call
from tether.cli.parser import Context, add_command, add_group
from tether.core.errors import InvalidArgumentError
from tether.node.fabric import FabricUser, authorization_block


def _password(directory: Path, identifier: str) -> str:
    """The member's NATS password, from DIR/IDENTIFIER.password (made, 0600, if missing)."""
    path = directory / f"{identifier}.password"
    if path.exists():
        password = path.read_text().strip()
        if not password:
            raise InvalidArgumentError(f"{path} is empty: write a password in it, or delete it")
        return password
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password)
    return password


def _users(ctx: Context) -> int:
    a = ctx.args
    node = running_node(ctx, a.at, "--at", "runs the authority")
    rows = call(node_api(ctx, node), "POST", "/authority/fabric-users", {"names": a.name or []})
    users = [FabricUser(r["identifier"], tuple(r["claims"]), dict(r["refused"])) for r in rows]
    directory = Path(a.password_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    passwords = {u.identifier: _password(directory, u.identifier) for u in users}
    block = authorization_block(users, passwords)
    out = Path(a.output)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds passwords
    with os.fdopen(fd, "w") as f:
        f.write(block)
    lines = [
        f"wrote {out}: the authorization block for {len(users)} member(s) of {node}'s "
        "authority (the same on every NATS server of the cluster)"
    ]
    for u in users:
        claims = ", ".join(u.claims) or "none"
        lines.append(
            f"  {u.identifier}: claims {claims}; password in "
            f"{directory / (u.identifier + '.password')}"
        )
        lines += [f"    not {name}: {why}" for name, why in u.refused.items()]
    ctx.emit("\n".join(lines), {"output": str(out), "users": rows})
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    example = "tether fabric users --at auth --name db --password-dir fabric-pw --output users.conf"
    sub = add_group(
        groups,
        "fabric",
        "the NATS fabric's authorization, from tether's policy",
        (
            "A NATS fabric's servers decide what each node may publish and subscribe to; "
            "tether decides who may claim which name. `fabric users` compiles the second into "
            "the first: one NATS user per member of an authority, with the names the relay "
            "policies of its node let it claim."
        ),
        example,
    )
    p = add_command(
        sub,
        "users",
        "write the nats-server authorization block for an authority's members",
        example,
        _users,
    )
    p.add_argument(
        "--at", metavar="NODE", help="the node that runs the authority (default: the only one)"
    )
    p.add_argument(
        "--name",
        action="append",
        metavar="NAME",
        help="a fabric name to give to the members the policy allows (repeatable; names a "
        "member's ticket granted are added)",
    )
    p.add_argument(
        "--password-dir",
        required=True,
        metavar="DIR",
        help="where each member's NATS password is (IDENTIFIER.password, made if missing): "
        "give each node its file (tether node create --nats-password-file)",
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="FILE",
        help="the authorization block, to include in each server's configuration",
    )
