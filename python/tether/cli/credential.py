"""``tether credential …``: issue, verify, revoke and list credentials."""

from __future__ import annotations

import argparse

from tether.cli.common import attribute, hex_input, timestamp, ttl
from tether.cli.parser import Context, add_command, add_group
from tether.core.errors import InvalidArgumentError
from tether.identity.credential import Credential
from tether.identity.trust import format_attributes


def _issue(ctx: Context) -> int:
    a = ctx.args
    attrs: dict[str, str] = {}
    for key, value in a.attribute or []:
        if key in attrs:
            raise InvalidArgumentError(f"attribute {key!r} given twice")
        attrs[key] = value
    c = ctx.registry().issue_credential(a.issuer, a.subject, attrs, a.ttl)
    ctx.emit(c.encode().hex(), {"credential": c.encode().hex(), **_facts(c)})
    return 0


def _facts(c: Credential) -> dict[str, object]:
    """What `--json` says about a credential."""
    return {
        "id": c.id,
        "subject": c.subject,
        "issuer": c.issuer,
        "attributes": dict(c.attributes),
        "created_at": c.created_at,
        "expires_at": c.expires_at,
    }


def _verify(ctx: Context) -> int:
    a = ctx.args
    data = hex_input(a.credential, a.credential_file, "credential")
    issuer = a.issuer
    if not issuer.startswith("I") or len(issuer) != 41:  # a local identity's name, as for issue
        issuer = ctx.registry().get(issuer).identifier
    c = ctx.registry().verify_credential(data, issuer=issuer, subject=a.subject)
    human = [
        f"valid: credential {c.id} about {c.subject}",
        f"issued by {c.issuer}, expires {timestamp(c.expires_at)}",
    ]
    human += [f"  {k}={v}" for k, v in sorted(c.attributes.items())]
    ctx.emit("\n".join(human), {"valid": True, **_facts(c)})
    return 0


def _revoke(ctx: Context) -> int:
    a = ctx.args
    if a.id is not None:
        if a.credential is not None or a.credential_file is not None:
            raise InvalidArgumentError("give the credential or its --id, not both")
        credential_id = a.id.lower()
    else:
        credential_id = Credential.decode(
            hex_input(a.credential, a.credential_file, "credential")
        ).id
    rl = ctx.registry().revoke(a.issuer, credential_id)
    ctx.emit(
        rl.encode().hex(),
        {
            "revoked": credential_id,
            "issuer": rl.issuer,
            "sequence": rl.sequence,
            "revocation_list": rl.encode().hex(),
            "count": len(rl.revoked),
        },
    )
    return 0


def _import_revocations(ctx: Context) -> int:
    rl = ctx.registry().import_revocations(
        hex_input(ctx.args.revocation_list, ctx.args.file, "revocation list")
    )
    ctx.emit(
        f"revocation list #{rl.sequence} from {rl.issuer}: {len(rl.revoked)} revoked",
        {"issuer": rl.issuer, "sequence": rl.sequence, "revoked": sorted(rl.revoked)},
    )
    return 0


def _list(ctx: Context) -> int:
    rows = ctx.registry().store.query(
        "SELECT data FROM credentials ORDER BY stored_at, credential_id"
    )
    creds = [Credential.decode(bytes(r[0])) for r in rows]
    items = [
        {
            "id": c.id,
            "subject": c.subject,
            "issuer": c.issuer,
            "attributes": dict(c.attributes),
            "expires_at": c.expires_at,
        }
        for c in creds
    ]
    lines = [
        f"{c.id}  {c.subject} from {c.issuer}  {format_attributes(c.attributes) or '-'}  "
        f"expires {timestamp(c.expires_at)}"
        for c in creds
    ]
    ctx.emit("\n".join(lines) or "no credentials", items)
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = add_group(
        groups,
        "credential",
        "issue, verify and revoke credentials",
        "Credentials: attributes an authority signs about an identity, with expiry and revocation.",
        "tether credential issue --issuer authority --for I0123... ",
    )

    p = add_command(
        sub,
        "issue",
        "issue a credential and print it (hex)",
        "tether credential issue --issuer authority --for I0123... "
        "--attribute role=db-client --ttl 30d",
        _issue,
    )
    p.add_argument("--issuer", required=True, help="name of the issuing identity (local)")
    p.add_argument("--for", dest="subject", required=True, help="subject identifier (I…)")
    p.add_argument(
        "--attribute",
        action="append",
        type=attribute,
        metavar="KEY=VALUE",
        help="an attribute (repeat for more)",
    )
    p.add_argument(
        "--ttl",
        type=ttl,
        default=ttl("30d"),
        help="time to live: 90s, 15m, 12h, 30d, 2w (default 30d)",
    )

    p = add_command(
        sub,
        "verify",
        "verify a credential: exit 0 and its attributes if valid",
        "tether credential verify --issuer I4567... --credential-file alice.cred",
        _verify,
    )
    p.add_argument(
        "--issuer",
        required=True,
        help="the authority to trust: its identifier, or the name of a local identity",
    )
    p.add_argument("--credential", help="the credential, hex")
    p.add_argument("--credential-file", help="a file holding the credential hex ('-': stdin)")
    p.add_argument("--for", dest="subject", help="also require this subject identifier")

    p = add_command(
        sub,
        "revoke",
        "revoke a credential before its expiry; prints the signed revocation list",
        "tether credential revoke --issuer authority --credential-file alice.cred",
        _revoke,
    )
    p.add_argument("--issuer", required=True, help="name of the issuing identity (local)")
    p.add_argument("--credential", help="the credential, hex")
    p.add_argument("--credential-file", help="a file holding the credential hex")
    p.add_argument("--id", help="the credential's id (from `issue --json` or `list`)")

    p = add_command(
        sub,
        "import-revocations",
        "accept an authority's signed revocation list (from `revoke`)",
        "tether credential import-revocations --file authority.revocations",
        _import_revocations,
    )
    p.add_argument("revocation_list", nargs="?", help="the signed list, hex")
    p.add_argument("--file", help="a file holding the hex list ('-': stdin)")

    add_command(
        sub,
        "list",
        "list the credentials this node issued or holds",
        "tether credential list --json",
        _list,
    )
