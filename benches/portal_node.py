"""One tether node of the portal benchmark (``benches/portal.py``), run as its own process.

    python benches/portal_node.py relay  --listen PORT
    python benches/portal_node.py db     --listen PORT        --outlet NAME HOST:PORT [...]
    python benches/portal_node.py db     --relay RELAY_PORT   --outlet NAME HOST:PORT [...]
    python benches/portal_node.py db     --nats URL,URL,... --nats-claim db --outlet ... [...]
    python benches/portal_node.py client --inlet HOST:PORT ROUTE [--inlet ...] [--nats URL,...]

Roles, all on 127.0.0.1, each node with a secure-channel identity
(:func:`tether.identity.trust.ephemeral_identity`, so it accepts channels at ``api``):

* ``relay``: a node that listens on TCP and serves relay claims (its built-in relay service);
* ``db``: the target side: one TCP outlet per ``--outlet NAME HOST:PORT`` (the service ``NAME``
  connects each portal session to ``HOST:PORT``). With ``--listen`` it listens on TCP itself;
  with ``--relay`` it opens no port and claims the name ``db`` at the relay node on
  127.0.0.1:RELAY_PORT, so it is reachable at ``/ip4/127.0.0.1/tcp/RELAY_PORT/service/
  forward_to_db``; with ``--nats`` it opens no port either and joins the NATS fabric (claiming
  the ``--nats-claim`` names), reachable at ``/nats/db``;
* ``client``: one TCP inlet per ``--inlet HOST:PORT ROUTE`` (listening on ``HOST:PORT``, each
  connection carried to the outlet at the end of ``ROUTE``, which must contain
  ``/secure/api``).

When everything is set up (for ``db --relay``: the name is claimed; with ``--nats``: connected,
and the names claimed) the process prints one line
``ready {JSON}`` on stdout (the listening port and the inlets' addresses), then runs until
SIGTERM or SIGINT. Warnings and errors of the node go to stderr. Like the node daemon, the
process tunes malloc for bulk buffers (:mod:`tether.node.alloc`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

import anyio

from tether.api import Node
from tether.identity.trust import ephemeral_identity, trust_identifiers
from tether.node.alloc import tune_for_bulk
from tether.node.transport.nats import NatsOptions

HOST = "127.0.0.1"


async def _until_signalled() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def serve(args: argparse.Namespace) -> None:
    info: dict[str, Any] = {"role": args.role}
    data_plane = args.dataplane == "rust"
    nats = None
    if args.nats:
        nats = NatsOptions(
            args.nats.split(","),
            user=args.nats_user,
            password=args.nats_password,
            names=args.nats_claim or [],
        )
    async with Node(
        args.role, identity=ephemeral_identity(), data_plane=data_plane, nats=nats
    ) as node:
        assert node.identity is not None
        info["identifier"] = node.identity.identity.identifier
        trust = trust_identifiers(*args.authorized) if args.authorized else None
        if args.role == "relay":
            node.add_policy("true", resource_type="relay")  # a benchmark: any claimer
        if args.listen is not None:
            listener = await node.listen_tcp(HOST, args.listen)
            info["listen"] = listener.port
        if node.nats is not None:
            with anyio.fail_after(30):
                await node.nats.wait_connected()
                while any(state == "pending" for state in node.nats.claims.values()):
                    await anyio.sleep(0.02)
            info["nats"] = {"server": node.nats.server, "claims": node.nats.claims}
        if args.role == "db":
            for name, target in args.outlet or []:
                await node.create_tcp_outlet(target, name=name)
            if args.relay is not None:
                client = await node.create_relay("db", f"/ip4/{HOST}/tcp/{args.relay}", trust=trust)
                with anyio.fail_after(30):
                    await client.ready.wait()
                info["forward_route"] = client.forward_route
        elif args.role == "client":
            info["inlets"] = []
            for bind, route in args.inlet or []:
                inlet = await node.create_tcp_inlet(bind, route, trust=trust)
                info["inlets"].append(inlet.address)
        print("ready " + json.dumps(info), flush=True)
        await _until_signalled()
        node.task_group.cancel_scope.cancel()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("role", choices=["relay", "db", "client"])
    p.add_argument("--listen", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT")
    p.add_argument("--relay", type=int, metavar="PORT", help="db: claim 'db' at this relay")
    p.add_argument(
        "--authorized",
        action="append",
        metavar="IDENTIFIER",
        help="the identity the secure channels this node opens must reach (the relay's for db, "
        "the outlet node's for client)",
    )
    p.add_argument("--nats", metavar="URL,URL,...", help="join this NATS cluster (the fabric)")
    p.add_argument("--nats-user", help="the node's NATS user")
    p.add_argument("--nats-password", help="its password (a benchmark's throwaway)")
    p.add_argument("--nats-claim", action="append", metavar="NAME", help="claim NAME on it")
    p.add_argument("--outlet", nargs=2, action="append", metavar=("NAME", "HOST:PORT"))
    p.add_argument("--inlet", nargs=2, action="append", metavar=("HOST:PORT", "ROUTE"))
    p.add_argument("--log-level", default="WARNING", help="of the node's log on stderr")
    p.add_argument(
        "--dataplane",
        choices=["rust", "python"],
        default="rust",
        help="rust (the default): the engine carries established traffic; python: all in Python",
    )
    args = p.parse_args(argv)
    if args.role == "relay" and args.listen is None:
        p.error("relay needs --listen PORT")
    if args.role == "db" and [args.listen, args.relay, args.nats].count(None) != 2:
        p.error("db needs exactly one of --listen PORT, --relay PORT and --nats URL,...")
    if args.role == "db" and not args.outlet:
        p.error("db needs at least one --outlet NAME HOST:PORT")
    if args.role == "client" and not args.inlet:
        p.error("client needs at least one --inlet HOST:PORT ROUTE")
    return args


def main() -> int:
    args = parse_args(sys.argv[1:])
    logging.basicConfig(
        level=args.log_level.upper(), format=f"[{args.role}] %(levelname)s %(name)s: %(message)s"
    )
    try:
        tune_for_bulk()  # as the node daemon does (tether.node.alloc)
        anyio.run(serve, args, backend="trio")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
