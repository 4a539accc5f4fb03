"""A node's Prometheus metrics (``docs/metrics.md``), scraped as Prometheus would: with curl on
the control socket and over HTTP on ``--metrics``, parsed by ``prometheus_client``'s parser.
Counters move by exactly the traffic sent, and agree with ``show --json``."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli_run import TETHER, Cli, echo_server, exchange
from peers import allow_claims, expect, identifier
from rawwire import HS1, HS2, KIND_DATA, local, raw
from test_credential import Authority
from tether.api import Node
from tether.core.message import Message, WorkerContext
from tether.daemon.metrics import Metrics
from tether.identity.trust import ChannelRefusedError, ephemeral_identity
from tether.node import policies
from tether.services.session import PortalOptions
from trio_run import run, until

HOST = "127.0.0.1"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(cli: Cli, node: str) -> Samples:
    """``GET /metrics`` on the node's control socket, with curl."""
    sock = cli.home / "nodes" / node / "api.sock"
    p = subprocess.run(
        ["curl", "-sS", "--fail", "--unix-socket", str(sock), "http://node/metrics"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return parse(p.stdout)


def portal(kind: str, name: str) -> tuple[tuple[str, str], ...]:
    return (("kind", kind), ("name", name))


def through(port: int, data: bytes) -> bytes:
    """Send ``data`` through the inlet at ``port`` and read the echo to the end."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
    return got


def wait_closed(cli: Cli) -> None:
    deadline = time.monotonic() + 10
    while cli.js("tcp-inlet", "show", "web", "--at", "app")["sessions"]:
        assert time.monotonic() < deadline, "the session did not end"
        time.sleep(0.05)


def test_counters_move_by_exactly_the_traffic_sent_and_agree_with_show(cli: Cli) -> None:
    with echo_server() as target:
        cli.run("node", "create", "db")
        cli.run("tcp-outlet", "create", "--at", "db", "--to", f"{HOST}:{target}", "--name", "pg")
        cli.run("node", "create", "app")
        inlet = cli.js(
            "tcp-inlet", "create", "--at", "app", "--from", f"{HOST}:0",
            "--to", "/node/db/secure/api/service/pg", "--name", "web",
        )  # fmt: skip
        port = int(inlet["from"].rsplit(":", 1)[1])
        assert through(port, b"warm-up") == b"warm-up"
        wait_closed(cli)

        before_app, before_db = scrape(cli, "app"), scrape(cli, "db")
        data = os.urandom(300_000)
        for _ in range(3):
            assert through(port, data) == data
        wait_closed(cli)
        after_app, after_db = scrape(cli, "app"), scrape(cli, "db")

        web, pg = portal("tcp-inlet", "web"), portal("tcp-outlet", "pg")
        moved = 3 * len(data)
        for samples0, samples1, labels in ((before_app, after_app, web), (before_db, after_db, pg)):
            delta = {
                name: samples1[(name, labels)] - samples0[(name, labels)]
                for name in (
                    "tether_portal_received_bytes_total",
                    "tether_portal_sent_bytes_total",
                    "tether_portal_sessions_opened_total",
                )
            }
            assert delta == {
                "tether_portal_received_bytes_total": moved,
                "tether_portal_sent_bytes_total": moved,
                "tether_portal_sessions_opened_total": 3,
            }, labels
            assert samples1[("tether_portal_sessions", labels)] == 0
        shown = cli.js("tcp-inlet", "show", "web", "--at", "app")
        assert after_app[("tether_portal_received_bytes_total", web)] == shown["bytes_in"]
        assert after_app[("tether_portal_sessions_opened_total", web)] == shown["total"]
        assert after_app[("tether_links", (("direction", "outgoing"),))] >= 1
        assert after_db[("tether_secure_channels", ())] >= 1
        # A stranger's message to a channel encryptor, from a raw socket: refused and counted,
        # in node show and in the metrics alike.
        (channel, *_) = cli.js("node", "show", "db")["secure_channels"]
        with raw(cli.port("db")) as r:
            r.send([local(channel["address"])], bytes([KIND_DATA]) + b"x")
            deadline = time.monotonic() + 10
            while not cli.js("node", "show", "db")["counters"]:
                assert time.monotonic() < deadline, "the refusal was not counted"
                time.sleep(0.05)
        counters = cli.js("node", "show", "db")["counters"]
        refusals = {
            labels[0][1]: value
            for (name, labels), value in scrape(cli, "db").items()
            if name == "tether_refusals_total"
        }
        assert refusals == counters
        assert any("not reachable" in reason for reason in refusals), refusals


def test_metrics_on_a_tcp_address_serve_only_metrics(cli: Cli) -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    cli.run("node", "create", "db")
    cli.run("node", "stop", "db")
    env = {**os.environ, "TETHER_HOME": str(cli.home)}
    proc = subprocess.Popen(
        [*TETHER, "node", "run", "db", "--drain", "0", "--metrics", f"{HOST}:{port}"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=5)
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "no metrics listener"
                time.sleep(0.1)
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain")
        samples = parse(response.read().decode())
        assert samples[("tether_links", (("direction", "incoming"),))] == 0
        conn.close()
        # Only the metrics: the control API stays on the 0600 Unix socket.
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        conn.request("GET", "/node")
        assert conn.getresponse().status == 404
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr


def test_a_bad_or_taken_metrics_address_is_refused(cli: Cli) -> None:
    cli.run("node", "create", "db")
    cli.run("node", "stop", "db")
    cli.fails("node", "run", "db", "--metrics", "nowhere", reason="use HOST:PORT", code=2)
    with socket.create_server((HOST, 0)) as taken:
        address = f"{HOST}:{taken.getsockname()[1]}"
        cli.fails(
            "node", "run", "db", "--metrics", address,
            reason=f"cannot serve metrics on {address}: Address already in use",
        )  # fmt: skip
    assert not any(n["running"] for n in cli.js("node", "list"))


@dataclass
class _Host:
    node: Node
    started_at: int = 0


def test_the_expiry_of_each_presented_credential_is_exposed() -> None:
    """A credential the node presents appears with its issuer and exact expiry, and is
    replaced by the next one from the same issuer."""

    async def main() -> None:
        async with Node("member", identity=ephemeral_identity()) as node:
            metrics = Metrics(_Host(node))
            authority = Authority()
            issuer = (("issuer", authority.identifier),)
            metric = "tether_credential_expiry_timestamp_seconds"
            assert not any(m == metric for m, _ in parse(metrics.exposition().decode()))
            now = int(time.time())
            for ttl in (3600, 7200):
                credential = authority.issue(identifier(node), now=now, ttl=ttl)
                node.use_credential(credential)
                samples = parse(metrics.exposition().decode())
                assert samples[(metric, issuer)] == now + ttl
                assert [k for k in samples if k[0] == metric] == [(metric, issuer)]

    run(main)


def test_handshakes_are_counted_by_role_and_outcome_with_their_durations() -> None:
    """Three channels (ok on both sides, three durations each), one the initiator refuses (it
    expects another identity: refused on both sides), a malformed first message from a raw
    socket (failed, at the responder) and a forged second message (failed, at the
    initiator)."""

    async def main() -> None:
        async with (
            Node("db", identity=ephemeral_identity()) as db,
            Node("client", identity=ephemeral_identity()) as client,
            Node("other", identity=ephemeral_identity()) as other,
        ):
            port = (await db.listen_tcp(HOST)).port
            route = f"/ip4/{HOST}/tcp/{port}/service/api"
            for _ in range(3):
                await client.create_secure_channel(route, trust=expect(db))
            with pytest.raises(ChannelRefusedError):
                await client.create_secure_channel(route, trust=expect(other))

            def malformed() -> None:
                with raw(port) as r:
                    r.send([local("api")], bytes([KIND_DATA, HS1]) + b"short")

            await anyio.to_thread.run_sync(malformed)

            async def forger(ctx: WorkerContext, msg: Message) -> None:
                """A listener whose second handshake message is random bytes."""
                if msg.payload[:1] == bytes([HS1]):
                    await ctx.reply(msg, bytes([HS2]) + os.urandom(96))

            await other.start_worker("forger", forger)
            other_port = (await other.listen_tcp(HOST)).port
            with pytest.raises(ChannelRefusedError, match="handshake failed"):
                await client.create_secure_channel(
                    f"/ip4/{HOST}/tcp/{other_port}/service/forger", trust=expect(other)
                )
            await until(
                lambda: db.handshakes.outcomes[("responder", "failed")] == 1, 5, "the failure"
            )
            await until(
                lambda: db.handshakes.outcomes[("responder", "refused")] == 1, 5, "the refusal"
            )
            at_client = parse(Metrics(_Host(client)).exposition().decode())
            at_db = parse(Metrics(_Host(db)).exposition().decode())

            def outcomes(samples: Samples, role: str) -> dict[str, float]:
                return {
                    outcome: samples[
                        ("tether_handshakes_total", (("outcome", outcome), ("role", role)))
                    ]
                    for outcome in ("ok", "refused", "failed", "timeout")
                }

            assert outcomes(at_client, "initiator") == {
                "ok": 3, "refused": 1, "failed": 1, "timeout": 0
            }  # fmt: skip
            assert outcomes(at_db, "responder") == {
                "ok": 3, "refused": 1, "failed": 1, "timeout": 0
            }  # fmt: skip
            for samples, role in ((at_client, "initiator"), (at_db, "responder")):
                labels = (("role", role),)
                assert samples[("tether_handshake_duration_seconds_count", labels)] == 3
                assert samples[("tether_handshake_duration_seconds_sum", labels)] > 0
                inf = (("le", "+Inf"), ("role", role))
                assert samples[("tether_handshake_duration_seconds_bucket", inf)] == 3

    run(main)


@pytest.mark.usefixtures("data_plane")
def test_a_relays_forwarded_messages_and_bytes_with_either_data_plane() -> None:
    """``tether_relay_forwarded_messages_total`` moves by one per request and
    ``tether_relay_forwarded_bytes_total`` by exactly the payload bytes of the messages
    forwarded (a request's payload is its kind byte and body: no routes, no
    framing), whichever data plane forwards them, and agrees with the claim's info."""

    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("db", identity=ephemeral_identity()) as db,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await relay.listen_tcp(HOST)).port
            allow_claims(relay, db)
            rc = await db.create_relay("db", f"/ip4/{HOST}/tcp/{port}", trust=expect(relay))
            route = rc.forward_route + "/service/echo"
            metrics = Metrics(_Host(relay))
            name = (("name", "db"),)

            def sample(metric: str) -> float:
                return parse(metrics.exposition().decode())[(metric, name)]

            assert await client.request(route, b"first") == b"first"
            assert sample("tether_relay_online") == 1
            before = sample("tether_relay_forwarded_bytes_total")
            assert before == 1 + len(b"first")
            messages = sample("tether_relay_forwarded_messages_total")
            sizes = [0, 1, 100, 1000, 20_000, 60_000, 7]
            for size in sizes:
                body = os.urandom(size)
                assert await client.request(route, body) == body
            moved = sample("tether_relay_forwarded_bytes_total") - before
            assert moved == sum(1 + size for size in sizes)  # KIND_DATA and the body
            assert sample("tether_relay_forwarded_messages_total") - messages == len(sizes)
            (claim,) = relay.relay_service.info() if relay.relay_service else []
            assert sample("tether_relay_forwarded_bytes_total") == claim["forwarded_bytes"]
            assert sample("tether_relay_forwarded_messages_total") == claim["forwarded"]

    run(main)


@pytest.mark.usefixtures("data_plane")
def test_the_open_latency_histograms_count_every_session_opened() -> None:
    """Each session opened through an inlet is timed at the inlet (accepted → the outlet's
    answer) and at the outlet (OPEN → target connected): the histograms' counts equal the
    sessions opened, whether Python or the data plane opened them."""

    async def main() -> None:
        with echo_server() as target:
            async with (
                Node("db", identity=ephemeral_identity()) as db,
                Node("app", identity=ephemeral_identity()) as app,
            ):
                port = (await db.listen_tcp(HOST)).port
                outlet = await db.create_tcp_outlet(f"{HOST}:{target}", name="pg")
                inlet = await app.create_tcp_inlet(
                    f"{HOST}:0",
                    f"/ip4/{HOST}/tcp/{port}/secure/api/service/pg",
                    name="web",
                    trust=expect(db),
                )
                n = 6
                for i in range(n):
                    data = b"session %d" % i
                    got = await anyio.to_thread.run_sync(through, inlet.port, data)
                    assert got == data
                await until(lambda: not inlet.sessions and not outlet.sessions, 10, "the end")
                for node, labels, portal_ in ((app, ("tcp-inlet", "web"), inlet),
                                              (db, ("tcp-outlet", "pg"), outlet)):  # fmt: skip
                    await until(lambda p=portal_: p.open_latency.count == n, 5, f"{labels} opened")
                    samples = parse(Metrics(_Host(node)).exposition().decode())
                    key = portal(*labels)
                    assert samples[("tether_portal_session_open_seconds_count", key)] == n
                    assert samples[("tether_portal_sessions_opened_total", key)] == n
                    assert samples[("tether_portal_session_open_seconds_sum", key)] > 0
                    inf = (*key[:1], ("le", "+Inf"), *key[1:])
                    assert samples[("tether_portal_session_open_seconds_bucket", inf)] == n

    run(main)


def test_a_policy_refusal_is_counted_under_its_resource() -> None:
    """A session the outlet's policy refuses counts once under ``tcp-outlet``/its name; a
    relay name the peer chose counts as ``*`` unless a policy names it."""

    async def main() -> None:
        with echo_server() as target:
            async with (
                Node("db", identity=ephemeral_identity()) as db,
                Node("app", identity=ephemeral_identity()) as app,
            ):
                port = (await db.listen_tcp(HOST)).port
                await db.create_tcp_outlet(
                    f"{HOST}:{target}", name="pg", allow='subject.identifier = "nobody"'
                )
                inlet = await app.create_tcp_inlet(
                    f"{HOST}:0",
                    f"/ip4/{HOST}/tcp/{port}/secure/api/service/pg",
                    name="web",
                    trust=expect(db),
                )
                for _ in range(2):
                    assert await anyio.to_thread.run_sync(exchange, inlet.port) == b""
                await until(
                    lambda: db.policy_refusals.get(("tcp-outlet", "pg")) == 2, 10, "refusals"
                )
                samples = parse(Metrics(_Host(db)).exposition().decode())
                metric = "tether_policy_refusals_total"
                key = (("resource", "pg"), ("resource_type", "tcp-outlet"))
                assert samples[(metric, key)] == 2
                assert [k for k in samples if k[0] == metric] == [(metric, key)]
                # A relay name is the claimer's choice: counted as "*" until a policy names it.
                db.add_policy('subject.identifier = "nobody"', resource_type="relay")
                for claimed in ("a", "b", "c"):
                    assert policies.check(db, "relay", claimed, "claim", None, peer_named=True)
                db.add_policy('subject.identifier = "nobody"', resource="c", resource_type="relay")
                assert policies.check(db, "relay", "c", "claim", None, peer_named=True)
                samples = parse(Metrics(_Host(db)).exposition().decode())
                relay = {
                    dict(labels)["resource"]: value
                    for (name, labels), value in samples.items()
                    if name == metric and dict(labels)["resource_type"] == "relay"
                }
                assert relay == {"*": 3, "c": 1}

    run(main)


def _firehose() -> tuple[int, threading.Event, threading.Thread]:
    """A target that sends as fast as it can to its one client until it cannot (the window and
    every buffer on the way are full) or it is told to stop."""
    server = socket.create_server((HOST, 0))
    stop = threading.Event()

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(0.2)
                chunk = b"x" * 65536
                while not stop.is_set():
                    try:
                        conn.sendall(chunk)
                    except TimeoutError:
                        continue
                    except OSError:
                        return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], stop, thread


@pytest.mark.usefixtures("data_plane")
def test_back_pressure_under_a_client_that_does_not_read() -> None:
    """A client that reads nothing while the target sends: the inlet's socket and queue fill,
    no credit comes back, and the outlet stops reading the target: a back-pressure event of
    kind ``session_credit`` at the outlet's node, in the metrics and ``node show`` alike."""

    async def main() -> None:
        target, stop, thread = _firehose()
        options = PortalOptions(window=64 * 1024)
        try:
            async with (
                Node("db", identity=ephemeral_identity()) as db,
                Node("app", identity=ephemeral_identity()) as app,
            ):
                port = (await db.listen_tcp(HOST)).port
                await db.create_tcp_outlet(f"{HOST}:{target}", name="pg", options=options)
                inlet = await app.create_tcp_inlet(
                    f"{HOST}:0",
                    f"/ip4/{HOST}/tcp/{port}/secure/api/service/pg",
                    name="web",
                    trust=expect(db),
                    options=options,
                )
                metrics = Metrics(_Host(db))
                key = ("tether_backpressure_events_total", (("kind", "session_credit"),))
                assert parse(metrics.exposition().decode())[key] == 0
                client = socket.create_connection((HOST, inlet.port), timeout=10)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                try:
                    await until(
                        lambda: db.backpressure_events()["session_credit"] >= 1,
                        30,
                        "the outlet ran out of credit",
                    )
                    samples = parse(metrics.exposition().decode())
                    assert samples[key] >= 1
                    # The engine's thread may still be pausing and resuming as the client's
                    # kernel buffer takes the last bytes: once that settles, the two agree.
                    await until(
                        lambda: (
                            parse(metrics.exposition().decode())[key]
                            == db.backpressure_events()["session_credit"]
                        ),
                        30,
                        "the scrape to agree with the node's count",
                    )
                finally:
                    client.close()
        finally:
            stop.set()
            await anyio.to_thread.run_sync(thread.join, 10)

    run(main)
