"""The authorization model the NATS fabric rests on, checked on a real three-server
cluster with credentials (``tests/nats_cluster.py``), through tether's own NATS codec: a node's
NATS user publishes only as itself (``tether.DEST.SELF``), subscribes only to its own subjects
and to the names granted to it, and a wrong password is refused; messages cross the cluster's
routes; a client whose server is killed reconnects to another and its messages flow again."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import anyio

from nats_cluster import Cluster, running_cluster
from nats_cluster import FabricUser as ClusterUser
from tether._core import NATS_PING, NatsDecoder, nats_connect, nats_publish, nats_subscribe
from tether.api import Node
from tether.identity.trust import ephemeral_identity
from tether.node.fabric import FabricUser, authorization_block, fabric_users
from tether.node.transport.nats import NatsOptions
from trio_run import run

USERS = [ClusterUser("A", "secret-a", ["db"]), ClusterUser("B", "secret-b")]
MAX = 1 << 20


class Client:
    def __init__(self, url: str, user: str, password: str) -> None:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.decoder = NatsDecoder()
        self.pending: list[tuple[object, ...]] = []
        self.until("INFO")
        hello = {"verbose": False, "pedantic": False, "user": user, "pass": password}
        self.sock.sendall(nats_connect(json.dumps({**hello, "protocol": 1})) + NATS_PING)

    def until(self, kind: str) -> list[tuple[object, ...]]:
        """Operations up to the first of ``kind`` (or up to the server closing); the server's
        later INFO updates (the cluster's addresses) are left out unless ``kind`` is INFO."""
        ops: list[tuple[object, ...]] = []
        while True:
            while self.pending:
                op = self.pending.pop(0)
                if op[0] != "INFO" or kind == "INFO":
                    ops.append(op)
                if op[0] == kind:
                    return ops
            data = self.sock.recv(65536)
            if not data:
                return [*ops, ("CLOSED",)]
            self.pending += self.decoder.feed(data)

    def send(self, data: bytes) -> list[tuple[object, ...]]:
        """Send, then a PING: what the server said up to its PONG."""
        self.sock.sendall(data + NATS_PING)
        return self.until("PONG")

    def close(self) -> None:
        self.sock.close()


def errors(ops: list[tuple[object, ...]]) -> list[str]:
    return [str(op[1]) for op in ops if op[0] == "-ERR"]


def wait_for_interest(cluster: Cluster, sender: Client, subject: str, receiver: Client) -> None:
    """Routes carry subscriptions asynchronously: publish probes until one arrives."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sender.send(nats_publish(subject, b"probe", MAX))
        got = [op for op in receiver.send(b"") if op[0] == "MSG"]
        if got:
            return
        time.sleep(0.1)
    raise AssertionError(f"no route for {subject} across {cluster.urls}")


def test_the_subject_names_the_sender_and_only_granted_names_are_claimed(tmp_path: Path) -> None:
    with running_cluster(tmp_path, USERS) as cluster:
        a = Client(cluster.urls[0], "A", "secret-a")
        b = Client(cluster.urls[2], "B", "secret-b")
        assert a.until("PONG") == [("PONG",)]
        assert b.until("PONG") == [("PONG",)]

        stranger = Client(cluster.urls[1], "B", "wrong")
        assert stranger.until("PONG") == [("-ERR", "Authorization Violation"), ("CLOSED",)]
        anonymous = socket.create_connection(("127.0.0.1", cluster.servers[1].port), timeout=10)
        anonymous.sendall(nats_connect("{}") + NATS_PING)
        assert b"Authorization Violation" in anonymous.recv(65536) + anonymous.recv(65536)
        anonymous.close()

        assert not errors(
            a.send(nats_subscribe("tether.A.*", 1) + nats_subscribe("tether.db.*", 2))
        )
        # B may not claim db, nor listen to A's subjects.
        assert errors(b.send(nats_subscribe("tether.db.*", 3))) == [
            'Permissions Violation for Subscription to "tether.db.*"'
        ]
        assert errors(b.send(nats_subscribe("tether.A.*", 4))) == [
            'Permissions Violation for Subscription to "tether.A.*"'
        ]
        assert not errors(b.send(nats_subscribe("tether.B.*", 5)))
        wait_for_interest(cluster, b, "tether.A.B", a)

        # B cannot pass itself off as A: the subject names the sender.
        said = b.send(
            nats_publish("tether.A.B", b"from B", MAX)
            + nats_publish("tether.A.A", b"forged", MAX)
            + nats_publish("tether.db.B", b"to db", MAX)
        )
        assert errors(said) == ['Permissions Violation for Publish to "tether.A.A"']
        time.sleep(0.2)
        got = [op for op in a.send(b"") if op[0] == "MSG"]
        assert [(op[1], op[4]) for op in got if op[4] != b"probe"] == [
            ("tether.A.B", b"from B"),
            ("tether.db.B", b"to db"),
        ]
        for c in (a, b):
            c.close()


def test_a_client_whose_server_dies_reconnects_to_another(tmp_path: Path) -> None:
    with running_cluster(tmp_path, USERS) as cluster:
        a = Client(cluster.urls[0], "A", "secret-a")
        b = Client(cluster.urls[1], "B", "secret-b")
        for c in (a, b):
            c.until("PONG")
        assert not errors(a.send(nats_subscribe("tether.A.*", 1)))
        wait_for_interest(cluster, b, "tether.A.B", a)

        cluster.kill(cluster.servers[1])  # B's server, with SIGKILL
        b.close()
        b = Client(cluster.urls[2], "B", "secret-b")
        b.until("PONG")
        wait_for_interest(cluster, b, "tether.A.B", a)
        b.send(nats_publish("tether.A.B", b"after the failover", MAX))
        time.sleep(0.2)
        got = [op[4] for op in a.send(b"") if op[0] == "MSG"]
        assert b"after the failover" in got
        for c in (a, b):
            c.close()


def test_claims_are_tethers_policy_compiled_into_the_cluster(tmp_path: Path) -> None:
    """Who may claim a fabric name is decided by tether's policy, not by who comes first: the
    relay policy of the authority's node (role db may claim db) and the names tickets granted
    (relay=cache) are compiled into each member's NATS permissions; on a cluster running that
    authorization block, the member the policy allows claims db, the one it refuses is refused
    by the cluster with the reason, and the ticket's name is claimed with no policy."""
    ids = {role: ephemeral_identity() for role in ("db", "app", "cache")}
    ident = {role: i.identity.identifier for role, i in ids.items()}
    members = [
        {"identifier": ident["db"], "attributes": {"role": "db"}},
        {"identifier": ident["app"], "attributes": {"role": "app"}},
        {"identifier": ident["cache"], "attributes": {"role": "cache", "relay": "cache"}},
    ]

    compiled: list[FabricUser] = []

    async def compile_policy() -> None:
        async with Node("auth") as auth:
            auth.add_policy('subject.role = "db"', resource_type="relay", resource="db")
            compiled.extend(fabric_users(auth, members, ["db"]))

    run(compile_policy)
    users = {u.identifier: u for u in compiled}
    assert users[ident["db"]].claims == ("db",)
    assert users[ident["app"]].claims == ()
    why = users[ident["app"]].refused["db"]
    assert why == "refused by the policy policy1 (relay 'db'): subject.role = \"db\"", why
    assert users[ident["cache"]].claims == ("cache",)
    passwords = {i: f"pw-{role}" for role, i in ident.items()}
    block = authorization_block(list(users.values()), passwords)

    async def join(cluster: Cluster) -> None:
        def options(role: str, claims: list[str]) -> NatsOptions:
            user = ident[role]
            return NatsOptions(cluster.urls, user=user, password=passwords[user], names=claims)

        async with (
            Node("db", identity=ids["db"], nats=options("db", ["db"])) as db,
            Node("app", identity=ids["app"], nats=options("app", ["db"])) as app,
            Node("cache", identity=ids["cache"], nats=options("cache", ["cache"])) as cache,
        ):
            assert db.nats is not None
            assert app.nats is not None
            assert cache.nats is not None
            with anyio.fail_after(15):
                for node in (db, app, cache):
                    await node.nats.wait_connected()
            assert db.nats.claims == {"db": "claimed"}
            assert cache.nats.claims == {"cache": "claimed"}
            refusal = app.nats.claims["db"]
            assert refusal.startswith("refused by the cluster"), refusal
            assert "tether fabric users" in refusal

    with running_cluster(tmp_path, [], authorization=block) as cluster:
        run(lambda: join(cluster))
