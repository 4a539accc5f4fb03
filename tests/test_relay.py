"""Relays: a node with no listener reached through a relay node that sees only ciphertext;
names that cannot be squatted or hijacked; recovery when the relay restarts, with every lost
message reported; and a network-namespace topology where the protected node can reach only the
relay."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from faultproxy import FaultProxy
from peers import allow_claims, expect, identifier
from tether.api import Node
from tether.core.message import LOCAL_ORIGIN, Origin, RoutedMessage
from tether.identity.trust import ephemeral_identity, trust_identifiers
from tether.node.node import ReplyTimeoutError, UnreachableError
from tether.services.relay import RelayClaimError

MARKER = b"confidential: the relay must never see this"
HERE = Path(__file__).resolve().parent


def test_no_inbound_port_and_a_blind_relay() -> None:
    """What the relay node routes (recorded at its router: the Python data plane, so every
    message passes there) is ciphertext when the route has a secure channel."""

    async def main() -> None:
        recorded: list[bytes] = []
        async with (
            Node("relay", identity=ephemeral_identity(), data_plane=False) as relay,
            Node("protected", identity=ephemeral_identity()) as protected,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            port = (await relay.listen_tcp()).port
            assert protected.tcp.listeners == {}  # no inbound port on the protected side
            forward = relay.route

            async def recording(
                msg: RoutedMessage, origin: Origin = LOCAL_ORIGIN, **kw: Any
            ) -> None:
                recorded.append(msg.payload)
                await forward(msg, origin, **kw)

            relay.route = recording  # type: ignore[method-assign]
            allow_claims(relay, protected)
            rc = await protected.create_relay(
                "db", f"/ip4/127.0.0.1/tcp/{port}", trust=expect(relay)
            )
            assert rc.state == "claimed"
            assert rc.forward_route == f"/ip4/127.0.0.1/tcp/{port}/service/forward_to_db"
            reply = await client.request(
                rc.forward_route + "/secure/api/service/echo", MARKER, trust=expect(protected)
            )
            assert reply == MARKER
            (channel,) = client.channels.values()
            assert channel.peer.identifier == protected.identity.identity.identifier
            assert recorded  # the relay did forward the traffic...
            assert not any(MARKER in p for p in recorded)  # ...and saw only ciphertext
            # Control: without the channel the relay would see it.
            await client.request(rc.forward_route + "/service/echo", MARKER)
            assert any(MARKER in p for p in recorded)
            client.task_group.cancel_scope.cancel()

    anyio.run(main, backend="trio")


def test_a_blind_relay_in_the_data_plane() -> None:
    """With the Rust data plane the relay forwards by itself: what reaches it from the client
    (recorded on the wire by a proxy in front of it) is ciphertext when the route has a secure
    channel, and the plaintext otherwise (the control); the forwarded count includes what the
    engine forwarded."""

    async def main() -> None:
        wire: list[bytes] = []
        async with (
            anyio.create_task_group() as tg,
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("protected", identity=ephemeral_identity()) as protected,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            assert relay.data_plane.kind == "rust"
            port = (await relay.listen_tcp()).port
            proxy = FaultProxy("127.0.0.1", port, record=wire)
            await tg.start(proxy.serve)
            allow_claims(relay, protected)
            rc = await protected.create_relay(
                "db", f"/ip4/127.0.0.1/tcp/{port}", trust=expect(relay)
            )
            via_proxy = f"/ip4/127.0.0.1/tcp/{proxy.port}/service/forward_to_db"
            for _ in range(3):
                reply = await client.request(
                    via_proxy + "/secure/api/service/echo", MARKER, trust=expect(protected)
                )
                assert reply == MARKER
            assert wire
            assert MARKER not in b"".join(wire)
            (claim,) = relay.relay_service.info()
            assert int(claim["forwarded"]) >= 1  # at least the handshake's first message
            assert rc.state == "claimed"
            await client.request(via_proxy + "/service/echo", MARKER)
            assert MARKER in b"".join(wire)
            tg.cancel_scope.cancel()

    anyio.run(main, backend="trio")


def test_names_cannot_be_squatted_or_hijacked() -> None:
    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("owner", identity=ephemeral_identity()) as owner,
            Node("thief", identity=ephemeral_identity()) as thief,
        ):
            port = (await relay.listen_tcp()).port
            route = f"/ip4/127.0.0.1/tcp/{port}"
            allow_claims(relay, owner, thief)
            await owner.create_relay("db", route, trust=expect(relay))
            with pytest.raises(RelayClaimError, match="belongs to"):
                await thief.create_relay("db", route, trust=expect(relay))
            # A claim that does not come through a secure channel is refused too.
            reply = await thief.request(f"{route}/service/relay", b"\x01db")
            assert reply[:1] == b"\x03"
            assert b"secure channel" in reply
            # Bad names are refused.
            with pytest.raises(RelayClaimError, match="invalid relay name"):
                await thief.create_relay("no spaces", route, trust=expect(relay))
            # The owner's relay still works and still belongs to the owner.
            claims = relay.relay_service.info()
            assert [(c["name"], c["owner"]) for c in claims] == [
                ("db", owner.identity.identity.identifier)
            ]
            assert (
                await thief.request(f"{route}/service/forward_to_db/service/echo", b"hi") == b"hi"
            )
            # The owner may re-claim (as after a reconnect).
            await owner.delete_relay("db")
            again = await owner.create_relay("db", route, trust=expect(relay))
            assert again.state == "claimed"
            owner.task_group.cancel_scope.cancel()

    anyio.run(main, backend="trio")


def test_an_offline_relay_is_reported_not_silent() -> None:
    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("protected", identity=ephemeral_identity()) as protected,
            Node("client") as client,
        ):
            port = (await relay.listen_tcp()).port
            allow_claims(relay, protected)
            rc = await protected.create_relay(
                "db",
                f"/ip4/127.0.0.1/tcp/{port}",
                backoff_min=5,
                backoff_max=5,
                trust=expect(relay),
            )
            assert await client.request(rc.forward_route + "/service/echo", b"up") == b"up"
            # The protected node stops keeping the relay and its connection drops: the relay
            # learns its claimer is offline.
            await protected.delete_relay("db")
            for conn in list(protected.tcp.connections.values()):
                conn.close("test: cut")
            with anyio.fail_after(5):
                while relay.relay_service.info()[0]["online"]:
                    await anyio.sleep(0.02)
            with pytest.raises(UnreachableError, match="relay 'db' on node relay is offline"):
                await client.request(rc.forward_route + "/service/echo", b"down", timeout=5)
            client.task_group.cancel_scope.cancel()

    anyio.run(main, backend="trio")


class Cli:
    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "TETHER_HOME": str(home)}

    def run(self, *args: str) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "tether.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert p.returncode == 0, f"tether {' '.join(args)}: {p.stderr}"
        return p.stdout


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    c = Cli(tmp_path / "home")
    yield c
    subprocess.run(
        [sys.executable, "-m", "tether.cli", "node", "delete", "--all"],
        env=c.env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_relay_killed_and_restarted_during_use(cli: Cli, tmp_path: Path) -> None:
    port = _free_port()
    cli.run("node", "create", "relay", "--tcp-listener", f"127.0.0.1:{port}")
    protected = json.loads(cli.run("node", "create", "protected", "--no-tcp-listener", "--json"))
    claimer = f'subject.identifier = "{protected["identifier"]}"'
    cli.run("policy", "create", "--at", "relay", "--resource-type", "relay", claimer)
    cli.run("relay", "create", "db", "--relay", "/node/relay", "--at", "protected")
    runtime = tmp_path / "home" / "nodes" / "relay" / "runtime.json"
    route = f"/ip4/127.0.0.1/tcp/{port}/service/forward_to_db/service/echo"

    async def stream() -> tuple[int, int, float]:
        ok = reported = 0
        outcome: list[str] = []
        async with Node("client") as client:
            killed_at = 0.0
            recovered_at = 0.0
            for i in range(400):
                if i == 60:  # kill the relay mid-stream, start it again a moment later
                    import json

                    pid = json.loads(runtime.read_text())["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                if i == 80:
                    await anyio.to_thread.run_sync(cli.run, "node", "start", "relay")
                try:
                    reply = await client.request(route, b"%d" % i, timeout=2)
                    assert reply == b"%d" % i
                    ok += 1
                    outcome.append("ok")
                    if killed_at and not recovered_at and i > 80:
                        recovered_at = time.monotonic()
                        break
                except (UnreachableError, ReplyTimeoutError):
                    reported += 1  # the loss is visible to the sender, never silent
                    outcome.append("reported")
                    await anyio.sleep(0.1)
                await anyio.sleep(0.01)
            client.task_group.cancel_scope.cancel()
            return ok, reported, recovered_at - killed_at

    ok, reported, recovery = anyio.run(stream, backend="trio")
    # Every request had a definite outcome; some failed while the relay was down, visibly; and
    # the stream recovered after the restart within a bounded time.
    assert ok >= 61
    assert reported >= 1
    assert 0 < recovery < 30


def _netns_available() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    p = subprocess.run(
        ["ip", "netns", "add", "tether-probe"], capture_output=True, text=True, check=False
    )
    if p.returncode != 0:
        return f"cannot create a network namespace here: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "tether-probe"], capture_output=True, check=False)
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _netns_available()
    if reason is not None:
        print(f"skipping the namespace topology test: {reason}")
        pytest.skip(reason)
    ns = f"tether-prot-{os.getpid()}"
    host_if, ns_if = f"tth{os.getpid() % 10000}", f"ttn{os.getpid() % 10000}"
    cmds = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", ns],
        ["ip", "addr", "add", "10.201.0.1/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", "10.201.0.2/30", "dev", ns_if],
        ["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_protected_node_in_a_namespace_reaches_only_the_relay(netns: str) -> None:
    """The protected node runs in its own network namespace whose only link leads to the relay
    (10.201.0.1); it opens no port; a client on the host reaches its echo over a secure channel
    through the relay."""

    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            relay_port = (await relay.listen_tcp("10.201.0.1", 0)).port
            client_port = (await client.listen_tcp("127.0.0.1", 0)).port
            # The child's identity is made in the child: this relay takes any claimer.
            relay.add_policy("true", resource_type="relay")
            proc = await anyio.open_process(
                [
                    "ip",
                    "netns",
                    "exec",
                    netns,
                    sys.executable,
                    str(HERE / "relay_protected.py"),
                    f"/ip4/10.201.0.1/tcp/{relay_port}",
                    "db",
                    identifier(relay),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                assert proc.stdout is not None
                out = b""
                with anyio.fail_after(30):
                    while b"\n" not in out:  # the child's line may arrive in pieces
                        out += await proc.stdout.receive()
                line = out.decode()
                assert line.startswith("ready"), line
                protected_id = line.split()[1]
                # The namespace cannot reach the host's loopback services (only the relay).
                probe = subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        netns,
                        sys.executable,
                        "-c",
                        f"import socket; socket.create_connection(('127.0.0.1', {client_port}), 2)",
                    ],
                    capture_output=True,
                    check=False,
                )
                assert probe.returncode != 0
                route = (
                    f"/ip4/10.201.0.1/tcp/{relay_port}/service/forward_to_db"
                    "/secure/api/service/echo"
                )
                reply = await client.request(
                    route, MARKER, timeout=20, trust=trust_identifiers(protected_id)
                )
                assert reply == MARKER
                (channel,) = client.channels.values()
                assert channel.peer.identifier == protected_id
            finally:
                if proc.stdin is not None:
                    await proc.stdin.aclose()
                with anyio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
            client.task_group.cancel_scope.cancel()

    anyio.run(main, backend="trio")
