"""The ``tether`` command.

Every command takes ``--home`` (default ``$TETHER_HOME`` or ``~/.tether``), prints results for
people by default and as JSON with ``--json``, writes errors to stderr as one line saying what went
wrong and what to do, and exits 0 on success, 1 when the operation was refused or failed, and 2 on
a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from tether._core import __version__
from tether.cli import (
    apply,
    authority,
    channel,
    credential,
    fabric,
    identity,
    node,
    portal,
    relay,
    stream,
)
from tether.cli.parser import Context, Handler, Parser, add_command
from tether.core.errors import TetherError
from tether.demo import portals

EXAMPLES = """\
examples:
  tether demo                                  # portals end to end on loopback, under a minute
  tether identity create alice
  tether credential issue --issuer authority --for I0123...cdef --attribute role=db-client
  tether credential verify --issuer I4567...89ab --credential-file alice.cred --json
"""


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(
        prog="tether",
        description="tether: trusted connections between applications.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    parser.add_argument(
        "--home", help="state directory (default: $TETHER_HOME, or ~/.tether)", default=None
    )
    groups = parser.add_subparsers(title="commands", metavar="COMMAND")
    identity.register(groups)
    credential.register(groups)
    node.register(groups)
    channel.register(groups)
    relay.register(groups)
    fabric.register(groups)
    portal.register(groups)
    authority.register(groups)
    apply.register(groups)
    stream.register(groups)
    _register_demo(groups)
    return parser


def _demo(ctx: Context) -> int:
    return portals.run(ctx.args.megabytes, json_output=ctx.json)


def _register_demo(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(
        groups,
        "demo",
        "show portals end to end on loopback, in under a minute",
        "tether demo --megabytes 64 --json",
        _demo,
    )
    p.description = (
        "Runs real tether commands (each printed before it runs) in a temporary TETHER_HOME: an "
        "app reaches a database that has no open port, through a relay that forwards only "
        "ciphertext; a download is SHA-256 checked; an intruder with its own identity is "
        "refused. Everything is removed at the end (--home is not used). Exit 0 when every "
        "check held, 1 otherwise; with --json the story goes to stderr and a summary to stdout."
    )
    p.add_argument(
        "--megabytes",
        type=portals.megabytes_arg,
        default=portals.DEFAULT_MEGABYTES,
        metavar="N",
        help=f"size of the download through the portal, MiB (default {portals.DEFAULT_MEGABYTES})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    # The parser of the innermost command or group given: its usage is the one to show.
    innermost: argparse.ArgumentParser = (
        getattr(args, "command_parser", None) or getattr(args, "group_parser", None) or parser
    )
    if extras:  # a command's own parser reports its unknown arguments; this is a group's
        innermost.error(f"unrecognized arguments: {' '.join(extras)}")
    if handler is None:
        # A group without a command: show that group's help.
        innermost.print_help(sys.stderr)
        return 2
    ctx = Context(args)
    try:
        return handler(ctx)
    except TetherError as e:
        if ctx.json:
            print(json.dumps({"error": {"type": type(e).__name__, "message": str(e)}}))
        print(f"tether: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tether: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        ctx.close()
