"""The secure-channel demo: a client reaches a service two networks away, through a node in the
middle that forwards its traffic but can read none of it — and an identity without the right
credential is turned away.

    python -m tether.demo.channel

(``python -m tether.demo``, or ``tether demo``, is the product demo: portals through a relay.)

What happens (three nodes in this process, joined by real loopback TCP):

1. An **authority** identity issues the client a credential ``role=db-client``.
2. The **server** node trusts that authority and admits only holders of ``role=db-client`` to its
   secure-channel listener; it runs an ``echo`` service.
3. The **client** node opens a secure channel to the server *through* the **middle** node
   (``client → middle → server``): Noise XX, identities and credentials verified inside the
   handshake. The middle node records everything it forwards.
4. A request, then a bulk transfer (SHA-256 checked), go through the channel; the middle node's
   recording is searched for the plaintext: it is not there.
5. Another identity, with no credential, tries the same: refused, on both sides.

``python -m tether.demo.core`` shows the Rust core alone (Noise over a raw socket).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from typing import Any

import anyio

from tether.api import Node
from tether.core.errors import TetherError
from tether.core.message import LOCAL_ORIGIN, Address, Message, Origin, RoutedMessage, WorkerContext
from tether.identity import credential, identity
from tether.identity.trust import (
    ChannelIdentity,
    ChannelRefusedError,
    ephemeral_identity,
    format_attributes,
    trust_credential,
    trust_identifiers,
)
from tether.identity.vault import KeyType, MemoryVault

MARKER = b"SELECT secret_column FROM accounts -- plaintext marker"


def _short(identifier: str) -> str:
    return identifier[:12] + "…"


async def _run(megabytes: int) -> bool:
    # 1. The authority and the client's credential.
    vault = MemoryVault()
    now = int(time.time())
    authority, primary = identity.create(vault, now)
    signing_key = vault.generate(KeyType.ED25519)
    signing = identity.attest(
        vault,
        authority,
        primary,
        identity.Purpose.CREDENTIAL_SIGNING,
        vault.public_key(signing_key),
        now - 60,
        now + 3600,
    )
    client_id = ephemeral_identity()
    cred = credential.issue(
        vault,
        signing_key,
        signing,
        client_id.identity.identifier,
        {"role": "db-client"},
        now=now,
        ttl=600,
    )
    client_id = ChannelIdentity(
        client_id.identity, client_id.static_key, client_id.attestation, (cred,)
    )
    server_id = ephemeral_identity()
    print("tether channel demo — a secure channel through a node that cannot read it\n")
    print(f"  authority  {_short(authority.identifier)} issued the client role=db-client")
    print(f"  client     {_short(client_id.identity.identifier)}")
    print(
        f"  server     {_short(server_id.identity.identifier)} admits role=db-client holders only"
    )

    recorded: list[bytes] = []
    async with (
        Node(
            "server",
            identity=server_id,
            authorities={authority.identifier: authority},
            trust=trust_credential(role="db-client"),
        ) as server,
        Node("middle") as middle,
        Node("client", identity=client_id) as client,
    ):
        server_port = (await server.listen_tcp("127.0.0.1", 0)).port
        middle_port = (await middle.listen_tcp("127.0.0.1", 0)).port
        # The middle node forwards to the server for remote senders (it is a transit node for
        # that one address; by default a node opens connections only for its own callers).
        middle.transit = frozenset({f"127.0.0.1:{server_port}"})

        # 3. The middle node records every message it routes.
        forward = middle.route

        async def recording_route(
            msg: RoutedMessage, origin: Origin = LOCAL_ORIGIN, **kw: Any
        ) -> None:
            recorded.append(msg.payload)
            await forward(msg, origin, **kw)

        middle.route = recording_route  # type: ignore[method-assign]

        received = {"bytes": 0}
        digest = hashlib.sha256()

        async def sink(ctx: WorkerContext, msg: Message) -> None:
            if msg.payload == b"done?":
                await ctx.reply(msg, digest.hexdigest().encode())
                return
            digest.update(msg.payload)
            received["bytes"] += len(msg.payload)

        await server.start_worker("sink", sink)

        route = f"/ip4/127.0.0.1/tcp/{middle_port}/ip4/127.0.0.1/tcp/{server_port}/service/api"
        print(f"\n1. client opens a secure channel along {route}")
        t0 = time.perf_counter()
        # The client names the identity it expects at the far end: a route of addresses names
        # no node, and the middle node must not be able to answer in the server's place.
        server_only = trust_identifiers(server_id.identity.identifier)
        channel = await client.create_secure_channel(route, trust=server_only)
        ms = (time.perf_counter() - t0) * 1000
        print(
            f"   established in {ms:.1f} ms: the client verified the server's identity "
            f"{_short(channel.peer.identifier)},"
        )
        await anyio.sleep(0.05)
        (server_end,) = server.channels.values()
        print(
            f"   the server verified the client {_short(server_end.peer.identifier)} and its "
            f"credential {format_attributes(server_end.peer.attributes)}"
        )

        inside = [Address.local(channel.address)]
        reply = await client.request([*inside, Address.local("echo")], MARKER)
        print(
            f"\n2. request through the channel to the server's echo: "
            f"{'echoed intact' if reply == MARKER else 'WRONG REPLY'}"
        )

        total = megabytes << 20
        block = os.urandom(1 << 20)
        local = hashlib.sha256()
        t0 = time.perf_counter()
        for _ in range(megabytes):
            await client.send([*inside, Address.local("sink")], block)
            local.update(block)
        remote = await client.request([*inside, Address.local("sink")], b"done?", timeout=60)
        seconds = time.perf_counter() - t0
        intact = remote.decode() == local.hexdigest() and received["bytes"] == total
        print(
            f"3. sent {megabytes} MiB through the channel in {seconds:.2f} s "
            f"({total / seconds / 1e6:.0f} MB/s); SHA-256 {'matches' if intact else 'DIFFERS'}"
        )

        seen = b"".join(recorded)
        leaked = MARKER in seen or block[:64] in seen
        print(
            f"4. the middle node forwarded {len(recorded)} messages, {len(seen):,} bytes: "
            f"plaintext {'FOUND' if leaked else 'nowhere in them'}"
        )

        print("\n5. an identity without a credential tries the same route")
        try:
            await client.create_secure_channel(
                route, identity=ephemeral_identity(), trust=server_only
            )
            refused = False
            print("   ADMITTED (this is a failure)")
        except ChannelRefusedError as e:
            refused = True
            print(f"   refused: {e}")
        await anyio.sleep(0.05)
        print(
            f"   channels at the server: {len(server.channels)} (the refused one was never created)"
        )
        await channel.close()
        client.task_group.cancel_scope.cancel()
    return reply == MARKER and intact and not leaked and refused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tether.demo.channel",
        description="A secure channel through a node that cannot read it, with credentials.",
        epilog="example: python -m tether.demo.channel --megabytes 64",
    )
    parser.add_argument("--megabytes", type=int, default=32, help="bulk transfer size (MiB)")
    args = parser.parse_args(argv)
    try:
        ok = anyio.run(_run, args.megabytes, backend="trio")
    except TetherError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print("\ndemo " + ("passed: every check held" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
