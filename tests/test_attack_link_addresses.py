"""Attack: using a node as a router — its links by their local names, and new connections to any
``host:port``.

Before origins decided reach, (a) a node's TCP links were addressable by their local names
(``tcp#K``) from any peer: connected to a relay alone, an attacker reached every node linked to
it, including nodes with no listener, on any service; and (b) a message whose next hop was
``host:port`` made the node connect anywhere for anyone: a port-scan oracle from the node's
network position (closed, open and banner ports were told apart by the error reports).

Shown, with both data planes, from raw sockets (``tests/rawwire.py``):

* every ``tcp#K`` named at the relay (a first handshake message for the far node's listener, a
  request for its echo) is answered as an unknown name; the node with no listener behind the
  relay receives nothing (its listener and echo count nothing new) and its relay claim keeps
  working for a legitimate client;
* ``host:port`` hops from a peer are refused with one report whether the port is open, closed or
  sends a banner (no oracle), no connection is attempted (a listening socket accepts nothing),
  and the node keeps no state for them; a transit node forwards exactly to the addresses it was
  given and to no other;
* a node's map of connection attempts does not grow with every address it ever tried.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest

from peers import allow_claims, expect
from rawwire import KIND_DATA, KIND_ERROR, Raw, channel_hs1_payload, local, tcp
from tether.api import Node
from tether.identity.trust import ephemeral_identity
from tether.node.node import UnreachableError
from tether.node.transport.connection import TcpOptions
from trio_run import run

HOST = "127.0.0.1"
PROBE = 24


# Every test with either data plane (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("data_plane")


@contextmanager
def counting_server(banner: bytes = b"") -> Iterator[tuple[int, list[int]]]:
    """A plain TCP server on loopback that counts the connections it accepts (and sends each
    ``banner``); yields its port and the count (a one-item list)."""
    srv = socket.create_server((HOST, 0))
    srv.settimeout(0.05)
    count = [0]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            count[0] += 1
            if banner:
                conn.sendall(banner)
            conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], count
    finally:
        stop.set()
        t.join()
        srv.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


def test_a_peer_cannot_reach_other_links_by_their_names() -> None:
    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("db", identity=ephemeral_identity()) as db,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await relay.listen_tcp(HOST)).port
            allow_claims(relay, db)
            rc = await db.create_relay("db", f"/ip4/{HOST}/tcp/{port}", trust=expect(relay))
            route = rc.forward_route + "/secure/api/service/echo"
            assert await client.request(route, b"before", trust=expect(db)) == b"before"
            links = sorted(relay.tcp.connections)
            api = db.channel_listeners["api"].info()
            echoed = next(w["delivered"] for w in db.workers() if w["address"] == "echo")

            def attack() -> list[str]:
                r = Raw(port, source="127.0.0.2")
                try:
                    for k in range(1, PROBE):
                        r.send([local(f"tcp#{k}"), local("api")], channel_hs1_payload())
                        r.send([local(f"tcp#{k}"), local("echo")], bytes([KIND_DATA]) + b"hi")
                    got = r.messages(2.0)
                finally:
                    r.close()
                assert all(m.kind == KIND_ERROR for m in got)
                return [m.text for m in got]

            reports = await anyio.to_thread.run_sync(attack)
            assert len(reports) == 2 * (PROBE - 1)
            for k in range(1, PROBE):
                assert reports.count(f"no worker 'tcp#{k}' on node relay") == 2, reports
            assert any(name in links for name in (f"tcp#{k}" for k in range(1, PROBE)))
            # Nothing reached the node behind the relay.
            assert db.channel_listeners["api"].info() == api
            assert next(w["delivered"] for w in db.workers() if w["address"] == "echo") == echoed
            assert relay.counters["refused: address not reachable from there"] >= len(links)
            assert await client.request(route, b"after", trust=expect(db)) == b"after"

    run(main)


def test_a_peer_cannot_make_a_node_connect_anywhere() -> None:
    async def main() -> None:
        async with Node("relay", tcp_options=TcpOptions(connect_timeout=2)) as relay:
            port = (await relay.listen_tcp(HOST)).port
            with (
                counting_server() as (open_port, accepted),
                counting_server(b"SSH-2.0\r\n") as (
                    banner_port,
                    banner_accepted,
                ),
            ):
                targets = {
                    "open": open_port,
                    "banner": banner_port,
                    "closed": closed_port(),
                }

                def attack() -> dict[str, str]:
                    out = {}
                    r = Raw(port, source="127.0.0.2")
                    try:
                        for what, p in targets.items():
                            r.send([tcp(f"{HOST}:{p}"), local("echo")], bytes([KIND_DATA]) + b"x")
                            m = r.message(5.0)
                            assert m.kind == KIND_ERROR
                            out[what] = m.text.replace(str(p), "PORT")
                    finally:
                        r.close()
                    return out

                reports = await anyio.to_thread.run_sync(attack)
                assert len(set(reports.values())) == 1, reports  # no oracle
                assert reports["open"] == (
                    f"node relay opens connections only for its own callers: it is no transit "
                    f"node for {HOST}:PORT"
                )
                await anyio.sleep(0.3)
                assert accepted[0] == 0
                assert banner_accepted[0] == 0
                assert relay.tcp.outgoing == {}
                assert relay.tcp._connecting == {}
                # The node still serves the peer's own requests.
                async with Node("friend") as friend:
                    assert await friend.request(f"/ip4/{HOST}/tcp/{port}/service/echo", b"ok") == (
                        b"ok"
                    )

    run(main)


def test_a_transit_node_forwards_only_to_what_it_was_given() -> None:
    async def main() -> None:
        async with Node("far") as far, Node("other") as other:
            far_port = (await far.listen_tcp(HOST)).port
            other_port = (await other.listen_tcp(HOST)).port
            async with Node("middle", transit=[f"{HOST}:{far_port}"]) as middle:
                port = (await middle.listen_tcp(HOST)).port

                def attack() -> tuple[bytes, str]:
                    r = Raw(port, source="127.0.0.2")
                    try:
                        r.send([tcp(f"{HOST}:{far_port}"), local("echo")], b"\0via transit")
                        allowed = r.message(5.0).payload
                        r.send([tcp(f"{HOST}:{other_port}"), local("echo")], b"\0elsewhere")
                        refused = r.message(5.0)
                    finally:
                        r.close()
                    assert refused.kind == KIND_ERROR
                    return allowed, refused.text

                allowed, refused = await anyio.to_thread.run_sync(attack)
                assert allowed == b"\0via transit"
                assert refused == (
                    "node middle opens connections only for its own callers: it is no transit "
                    f"node for {HOST}:{other_port}"
                )
                assert list(middle.tcp.outgoing) == [f"{HOST}:{far_port}"]
                assert other.tcp.connections == {}

    run(main)


def test_connection_attempts_leave_no_state_behind() -> None:
    """A local caller's requests to 50 distinct unreachable addresses: each is reported, and
    the node keeps no entry for any of them afterwards."""

    async def main() -> None:
        async with Node("n", tcp_options=TcpOptions(connect_timeout=2)) as node:
            for _ in range(50):
                with pytest.raises(UnreachableError, match="cannot connect"):
                    await node.request(f"/ip4/{HOST}/tcp/{closed_port()}/service/echo", b"x")
            assert node.tcp._connecting == {}
            assert node.tcp.outgoing == {}

    run(main)
