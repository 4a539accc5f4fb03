"""A protected node for the relay tests: no listener at all; it claims a relay name at the
relay node given on the command line (whose identifier is the third argument), prints "ready"
and its identifier, and runs until its stdin closes. Run with
`python tests/relay_protected.py ROUTE NAME RELAY_IDENTIFIER`."""

from __future__ import annotations

import sys

import anyio

from tether.api import Node
from tether.identity.trust import ephemeral_identity, trust_identifiers


async def main(route: str, name: str, relay_identifier: str) -> None:
    async with Node("protected", identity=ephemeral_identity()) as node:
        relay = await node.create_relay(
            name,
            route,
            ping_interval=1.0,
            ping_timeout=2.0,
            backoff_max=1.0,
            trust=trust_identifiers(relay_identifier),
        )
        with anyio.fail_after(20):
            await relay.ready.wait()
        print("ready", node.identity.identity.identifier, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
        node.task_group.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], backend="trio")
