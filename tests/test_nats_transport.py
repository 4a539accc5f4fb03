"""Nodes on a NATS fabric (``tether.node.transport.nats``): a real three-server cluster with
credentials (``tests/nats_cluster.py``), two nodes with no listener connected to different
servers, routed messages and a secure channel between them by identifier and by a claimed name,
a claim the cluster refuses, a tap on the cluster that sees no plaintext, and a killed server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from nats_cluster import Cluster, FabricUser, running_cluster
from tether._core import NATS_PING, NatsDecoder, nats_connect, nats_subscribe
from tether.api import Node
from tether.identity.trust import ChannelIdentity, ephemeral_identity, trust_identifiers
from tether.node import routing
from tether.node.node import ReplyTimeoutError, UnreachableError
from tether.node.routing import RouteSyntaxError
from tether.node.transport.nats import NatsOptions
from trio_run import run

MARKER = b"plaintext-marker-7f3a"


async def reachable(node: Node, route: str) -> None:
    """Wait until ``route`` answers: the cluster's routes carry subscriptions to the other
    servers asynchronously, and a message with no subscriber yet is dropped."""
    with anyio.fail_after(15):
        while True:
            with contextlib.suppress(ReplyTimeoutError, UnreachableError):  # or still connecting
                if await node.request(route, b"ping", timeout=0.5) == b"ping":
                    return
            await anyio.sleep(0.05)


def identifier(node: Node) -> str:
    assert node.identity is not None
    return node.identity.identity.identifier


def test_routes_name_fabric_nodes() -> None:
    assert routing.format_route(routing.parse("/nats/db/secure/api/service/echo")) == (
        "/nats/db/secure/api/service/echo"
    )
    for bad in ["/nats", "/nats/a.b/service/echo", "/nats/" + "x" * 65]:
        with pytest.raises(RouteSyntaxError, match="fabric name"):
            routing.parse(bad)


def test_two_nodes_talk_over_the_fabric_and_it_reads_nothing(tmp_path: Path) -> None:
    db_id, app_id, other_id = (ephemeral_identity() for _ in range(3))
    secret = {"db": "pw-db", "app": "pw-app", "other": "pw-other"}
    users = [
        FabricUser(db_id.identity.identifier, secret["db"], ["db"]),
        FabricUser(app_id.identity.identifier, secret["app"]),
        FabricUser(other_id.identity.identifier, secret["other"]),
    ]

    async def main(urls: list[str]) -> None:
        # Each on its own server first: their messages cross the cluster's routes.
        db_opts = NatsOptions(
            urls[2:] + urls[:2], user=users[0].node, password=secret["db"], names=["db"]
        )
        app_opts = NatsOptions(urls, user=users[1].node, password=secret["app"])
        other_opts = NatsOptions(
            urls[1:], user=users[2].node, password=secret["other"], names=["db"]
        )
        async with (
            Node("db", identity=db_id, nats=db_opts) as db,
            Node("app", identity=app_id, nats=app_opts) as app,
            Node("other", identity=other_id, nats=other_opts) as other,
        ):
            for n in (db, app, other):
                assert n.nats is not None
                with anyio.fail_after(10):
                    await n.nats.wait_connected()
            assert db.nats is not None
            assert other.nats is not None
            assert db.nats.claims == {"db": "claimed"}
            assert "refused by the cluster" in other.nats.claims["db"]
            await reachable(app, f"/nats/{identifier(db)}/service/echo")
            await reachable(app, "/nats/db/service/echo")

            # By identifier and by name, plain and through a secure channel.
            plain = await app.request(f"/nats/{identifier(db)}/service/echo", b"hi", timeout=10)
            assert plain == b"hi"
            assert await app.request("/nats/db/service/echo", b"by name", timeout=10) == b"by name"
            trust = trust_identifiers(identifier(db))
            for i in range(20):
                answer = await app.request(
                    "/nats/db/secure/api/service/echo", MARKER + b" %d" % i, trust=trust, timeout=10
                )
                assert answer == MARKER + b" %d" % i
            # A name nobody claimed, and a node on no fabric.
            with pytest.raises(ReplyTimeoutError):  # nobody subscribes: nothing comes back
                await app.request("/nats/nobody/service/echo", b"x", timeout=1)
            async with Node("loner", identity=ephemeral_identity()) as loner:
                with pytest.raises(UnreachableError, match="on no NATS fabric"):
                    await loner.request("/nats/db/service/echo", b"x", timeout=5)

    with running_cluster(tmp_path, [*users, FabricUser("tap", "pw-tap", tap=True)]) as cluster:
        # The operator's tap: a user that may read every subject.
        tap = socket.create_connection(("127.0.0.1", cluster.servers[0].port), timeout=10)
        decoder = NatsDecoder()
        hello = {"verbose": False, "user": "tap", "pass": "pw-tap", "protocol": 1}
        tap.sendall(nats_connect(json.dumps(hello)) + nats_subscribe(">", 1) + NATS_PING)
        run(lambda: main(cluster.urls))
        seen: list[bytes] = []
        tap.settimeout(1.0)
        try:
            while True:
                data = tap.recv(1 << 20)
                if not data:
                    break
                seen += [op[4] for op in decoder.feed(data) if op[0] == "MSG"]
        except TimeoutError:
            pass
        tap.close()
        assert len(seen) > 40, "the tap saw the fabric's traffic"
        assert any(b"by name" in m for m in seen), "plain messages are readable, as expected"
        assert not any(MARKER in m for m in seen), "plaintext of a secure channel on the fabric"


def test_a_secure_channel_survives_the_loss_of_a_server(tmp_path: Path) -> None:
    db_id, app_id = ephemeral_identity(), ephemeral_identity()
    secret = {"db": "pw-db", "app": "pw-app"}
    users = [
        FabricUser(db_id.identity.identifier, secret["db"], ["db"]),
        FabricUser(app_id.identity.identifier, secret["app"]),
    ]

    async def main(cluster: Cluster) -> None:
        urls = cluster.urls
        db_opts = NatsOptions(
            urls[1:] + urls[:1], user=users[0].node, password=secret["db"], names=["db"]
        )
        app_opts = NatsOptions(urls, user=users[1].node, password=secret["app"])
        async with (
            Node("db", identity=db_id, nats=db_opts) as db,
            Node("app", identity=app_id, nats=app_opts) as app,
        ):
            assert db.nats is not None
            assert app.nats is not None
            with anyio.fail_after(10):
                await db.nats.wait_connected()
                await app.nats.wait_connected()
            assert db.nats.server == urls[1].split("//")[1]
            await reachable(app, "/nats/db/service/echo")
            trust = trust_identifiers(identifier(db))
            route = "/nats/db/secure/api/service/echo"
            assert await app.request(route, b"before", trust=trust, timeout=10) == b"before"
            channels = set(app.channels)

            cluster.kill(cluster.servers[1])  # db's server, SIGKILL
            answer = b""
            with anyio.fail_after(20):
                while answer != b"after":
                    with contextlib.suppress(ReplyTimeoutError, UnreachableError):
                        answer = await app.request(route, b"after", trust=trust, timeout=1)
            assert db.nats.connections == 2
            assert db.nats.server == urls[2].split("//")[1]
            assert set(app.channels) == channels, "the same secure channel carried on"

    with running_cluster(tmp_path, users) as cluster:
        run(lambda: main(cluster))


def test_garbage_from_a_fabric_peer_is_dropped_and_counted(tmp_path: Path) -> None:
    """A peer on the cluster (its own user: it can only send as itself) sends, from a raw
    socket with no tether code, a payload that is no routed message, an empty one and one to a
    worker that does not exist: each is dropped or answered, counted, and the node goes on."""
    db_id, app_id = ephemeral_identity(), ephemeral_identity()
    db_name = db_id.identity.identifier
    users = [
        FabricUser(db_name, "pw-db"),
        FabricUser(app_id.identity.identifier, "pw-app"),
        FabricUser("mallory", "pw-mallory"),
    ]

    async def main(urls: list[str]) -> None:
        async with (
            Node(
                "db",
                identity=db_id,
                nats=NatsOptions(urls, user=db_name, password=users[0].password),
            ) as db,
            Node(
                "app",
                identity=app_id,
                nats=NatsOptions(urls, user=users[1].node, password=users[1].password),
            ) as app,
        ):
            assert db.nats is not None
            with anyio.fail_after(10):
                await db.nats.wait_connected()
            await reachable(app, f"/nats/{db_name}/service/echo")
            host, port = urls[0].split("//")[1].rsplit(":", 1)
            raw = socket.create_connection((host, int(port)), timeout=10)
            subject = f"tether.{db_name}.mallory".encode()
            raw.sendall(
                b'CONNECT {"verbose":false,"user":"mallory","pass":"pw-mallory"}\r\n'
                + b"PUB "
                + subject
                + b" 7\r\ngarbage\r\n"
                + b"PUB "
                + subject
                + b" 0\r\n\r\n"
                + b"PUB tether."
                + db_name.encode()
                + b".forged 3\r\nabc\r\nPING\r\n"
            )
            reply = b""
            while b"PONG" not in reply:
                reply += raw.recv(65536)
            assert b"Permissions Violation for Publish" in reply  # it cannot pose as another
            raw.close()
            with anyio.fail_after(10):
                while db.counters.get("dropped: a malformed NATS message", 0) < 2:
                    await anyio.sleep(0.05)
            route = f"/nats/{db_name}/service/echo"
            assert await app.request(route, b"still here", timeout=10) == b"still here"

    with running_cluster(tmp_path, users) as cluster:
        run(lambda: main(cluster.urls))


@contextlib.asynccontextmanager
async def fabric_portal(
    db_urls: list[str],
    app_urls: list[str],
    users: tuple[FabricUser, FabricUser],
    ids: tuple[ChannelIdentity, ChannelIdentity],
    service: Callable[[SocketStream], Awaitable[None]],
) -> AsyncIterator[tuple[Node, Node, Any, Any]]:
    """db (claiming ``db``) and app on the fabric, neither with a listener, and a portal from
    app to ``service`` next to db: yields (db, app, inlet, outlet)."""
    (db_user, app_user), (db_id, app_id) = users, ids
    db_opts = NatsOptions(db_urls, user=db_user.node, password=db_user.password, names=["db"])
    app_opts = NatsOptions(app_urls, user=app_user.node, password=app_user.password)
    async with (
        Node("db", identity=db_id, nats=db_opts) as db,
        Node("app", identity=app_id, nats=app_opts) as app,
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.serve, service)
        await reachable(app, "/nats/db/service/echo")
        port = listener.extra(SocketAttribute.local_port)
        outlet = await db.create_tcp_outlet(f"127.0.0.1:{port}", name="outlet", allow=None)
        inlet = await app.create_tcp_inlet(
            "127.0.0.1:0",
            "/nats/db/secure/api/service/outlet",
            trust=trust_identifiers(identifier(db)),
        )
        yield db, app, inlet, outlet
        tg.cancel_scope.cancel()


def test_a_portal_over_the_fabric_carries_bytes_intact(tmp_path: Path) -> None:
    """An inlet on app, an outlet on db, neither with a listener: the portal's secure channel
    runs over the cluster, and 4 MB echoed through it come back unaltered."""
    db_id, app_id = ephemeral_identity(), ephemeral_identity()
    users = (
        FabricUser(db_id.identity.identifier, "pw-db", ["db"]),
        FabricUser(app_id.identity.identifier, "pw-app"),
    )

    async def echo(stream: SocketStream) -> None:
        async with stream:
            async for data in stream:
                await stream.send(data)

    async def main(urls: list[str]) -> None:
        async with fabric_portal(urls[1:], urls, users, (db_id, app_id), echo) as (_, _, inlet, _):
            data = os.urandom(4 << 20)
            got = bytearray()
            async with await anyio.connect_tcp("127.0.0.1", inlet.port) as client:

                async def read() -> None:
                    while len(got) < len(data):
                        got.extend(await client.receive())

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as io:
                        io.start_soon(read)
                        for i in range(0, len(data), 65536):
                            await client.send(data[i : i + 65536])
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

    with running_cluster(tmp_path, users) as cluster:
        run(lambda: main(cluster.urls))


DOWNLOAD = 200 << 20


def test_a_download_survives_killing_the_server_of_each_side(tmp_path: Path) -> None:
    """200 MB from a service on db to a client on app through a portal over the fabric; the
    server app uses is killed (SIGKILL) a third of the way, then the one db uses: both nodes
    move to another server, the portal session resends what the dead servers lost, and the
    client gets every byte (SHA-256) on the same connection, with nothing reset."""
    db_id, app_id = ephemeral_identity(), ephemeral_identity()
    users = (
        FabricUser(db_id.identity.identifier, "pw-db", ["db"]),
        FabricUser(app_id.identity.identifier, "pw-app"),
    )
    blob = hashlib.shake_256(b"tether download").digest(DOWNLOAD)

    async def serve(stream: SocketStream) -> None:
        async with stream:
            view = memoryview(blob)
            for i in range(0, len(blob), 1 << 20):
                await stream.send(view[i : i + (1 << 20)])

    async def main(cluster: Cluster) -> None:
        urls = cluster.urls
        # app starts on server 0, db on server 1; each fails over along its list.
        async with fabric_portal(urls[1:] + urls[:1], urls, users, (db_id, app_id), serve) as (
            db,
            app,
            inlet,
            outlet,
        ):
            assert db.nats is not None
            assert app.nats is not None
            digest = hashlib.sha256()
            got = 0
            kills = [(DOWNLOAD // 3, cluster.servers[0]), (2 * DOWNLOAD // 3, cluster.servers[1])]
            with anyio.fail_after(240):
                async with await anyio.connect_tcp("127.0.0.1", inlet.port) as client:
                    async for chunk in client:
                        digest.update(chunk)
                        got += len(chunk)
                        if kills and got >= kills[0][0]:
                            cluster.kill(kills.pop(0)[1])
            assert got == DOWNLOAD
            assert digest.digest() == hashlib.sha256(blob).digest()
            assert not kills
            assert app.nats.connections >= 2
            assert db.nats.connections >= 2
            assert app.nats.server == db.nats.server == urls[2].split("//")[1]
            for portal in (inlet, outlet):
                info = portal.info()
                assert (info["total"], info["failed"]) == (1, 0), info

    with running_cluster(tmp_path, users) as cluster:
        run(lambda: main(cluster))


def test_a_server_that_breaks_the_protocol_is_left_for_the_next(tmp_path: Path) -> None:
    """A "server" on a raw socket that answers with an INFO that is no JSON, or with garbage:
    the node logs why, keeps no connection to it, and goes on to the next server, where it
    works."""
    db_id = ephemeral_identity()
    user = FabricUser(db_id.identity.identifier, "pw-db")
    bad_answers = [b"INFO {not json\r\n", b"\x00\x01garbage\r\n", b"INFO []\r\n"]

    async def main(real: str) -> None:
        async with anyio.create_task_group() as tg:
            fakes = []
            for answer in bad_answers:
                listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

                async def serve(stream: SocketStream, answer: bytes = answer) -> None:
                    async with stream:
                        await stream.send(answer)
                        await anyio.sleep(5)

                tg.start_soon(listener.serve, serve)
                fakes.append(f"nats://127.0.0.1:{listener.extra(SocketAttribute.local_port)}")
            options = NatsOptions([*fakes, real], user=user.node, password=user.password)
            async with Node("db", identity=db_id, nats=options) as db:
                assert db.nats is not None
                with anyio.fail_after(20):
                    while db.nats.server != real.split("//")[1]:
                        await anyio.sleep(0.05)
                assert db.nats.connections == 1
                answer = await db.request(f"/nats/{identifier(db)}/service/echo", b"hi", timeout=10)
                assert answer == b"hi"
            tg.cancel_scope.cancel()

    with running_cluster(tmp_path, [user], size=1) as cluster:
        run(lambda: main(cluster.urls[0]))
