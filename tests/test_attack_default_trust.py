"""Attack: a malicious relay answers an "end-to-end" handshake itself and reads the traffic.

The side that opens a secure channel used to trust any responder unless ``--authorized`` or
``--allow`` was given, and that was the default for ``message send`` and ``tcp-inlet create``: a
relay that answered the handshake itself read ``password=…``. Now the default is never "anyone":
an initiator expects the identity of a node named in the route (``/node/NAME/secure/…``), or a
member of an authority it is enrolled with, or what ``--authorized``/``--allow`` say; otherwise it
refuses at once, before a byte leaves, with one line that says how to name the peer. Trusting
anyone is the explicit ``--trust-any``.

The malicious relay here is a tether node whose ``forward_to_db`` hands everything to its own
secure-channel listener and records what it sees. Shown through the Python API and through the
real ``tether`` command (``message send``, ``tcp-inlet create``):

* with no trust named, nothing reaches the relay and the refusal names ``--authorized``;
* naming the real database's identity, the relay's handshake is refused and it never sees the
  secret;
* ``--trust-any`` is the explicit opt-in, and with it the relay does read the secret (the control:
  the attack is real);
* a route that names the node (``/node/NAME/secure/api``) needs no flag, and the channel is to
  that node's identity.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from cli_run import Cli
from peers import expect, identifier
from test_engine import ping
from test_portal import serve
from tether.api import Node
from tether.core.message import Message, RoutedMessage, WorkerContext
from tether.identity.trust import ChannelRefusedError, ephemeral_identity, trust_anyone
from trio_run import run, until

HOST = "127.0.0.1"
SECRET = b"password=hunter2"


@asynccontextmanager
async def evil_relay() -> AsyncIterator[tuple[Node, int, list[bytes]]]:
    """A relay node whose ``forward_to_db`` leads to its own ``api`` listener; what reaches the
    forwarder (ciphertext or not) and every plaintext its echo serves are recorded."""
    seen: list[bytes] = []
    async with Node("evil", identity=ephemeral_identity()) as evil:
        port = (await evil.listen_tcp(HOST)).port

        async def forward(ctx: WorkerContext, msg: RoutedMessage) -> None:
            seen.append(msg.payload)
            await evil.route(RoutedMessage(msg.onward[1:], msg.return_route, msg.payload))

        await evil.start_worker("forward_to_db", forward, inline=True, raw=True)

        async def echo(ctx: WorkerContext, msg: Message) -> None:
            seen.append(msg.payload)
            await ctx.reply(msg, msg.payload)

        await evil.stop_worker("echo")
        await evil.start_worker("echo", echo)
        yield evil, port, seen


def read(seen: list[bytes]) -> bool:
    return any(SECRET in p for p in seen)


def test_the_api_refuses_to_guess_who_answers() -> None:
    async def main() -> None:
        async with (
            evil_relay() as (evil, port, seen),
            Node("app", identity=ephemeral_identity()) as app,
            Node("db", identity=ephemeral_identity()) as db,
        ):
            route = f"/ip4/{HOST}/tcp/{port}/service/forward_to_db/secure/api/service/echo"
            with pytest.raises(ChannelRefusedError, match="--authorized") as refused:
                await app.request(route, SECRET, timeout=5)
            assert "\n" not in str(refused.value)
            assert seen == []  # refused before a byte left
            assert app.channels == {}

            with pytest.raises(ChannelRefusedError, match="not an authorized identity"):
                await app.request(route, SECRET, timeout=5, trust=expect(db))
            assert seen  # the handshake went out...
            assert not read(seen)  # ...and the relay read nothing
            assert app.channels == {}

            # The explicit opt-in: the relay answers and reads it (the attack is real).
            assert await app.request(route, SECRET, timeout=5, trust=trust_anyone) == SECRET
            assert read(seen)
            (channel,) = app.channels.values()
            assert channel.peer.identifier == identifier(evil)

    run(main)


@asynccontextmanager
async def cli_home(tmp_path: Path) -> AsyncIterator[Cli]:
    cli = Cli(tmp_path / "home")
    try:
        yield cli
    finally:
        # shielded: the test ends by cancelling its task group, and the nodes must go anyway
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: cli.run("node", "delete", "--all", ok=False))


def test_the_command_refuses_to_guess_who_answers(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            anyio.create_task_group() as tg,
            evil_relay() as (_evil, port, seen),
            cli_home(tmp_path) as cli,
        ):
            target = await serve(tg, _database)
            made: dict[str, str] = {}

            def commands() -> None:
                app = cli.js("node", "create", "app")
                db = cli.js("node", "create", "db")
                relayed = f"/ip4/{HOST}/tcp/{port}/service/forward_to_db/secure/api/service/echo"
                err = cli.fails(
                    "message", "send", "--at", "app", "--to", relayed, SECRET.decode(),
                    reason="no identity to expect",
                )  # fmt: skip
                assert "--authorized" in err
                assert len(err.strip().splitlines()) == 1, err
                assert seen == []
                cli.fails(
                    "message", "send", "--at", "app", "--to", relayed,
                    "--authorized", db["identifier"], SECRET.decode(),
                    reason="not an authorized identity",
                )  # fmt: skip
                assert not read(seen)

                # A route that names the node: no flag, and the channel is to that node.
                named = "/node/db/secure/api/service/echo"
                out = cli.js("message", "send", "--at", "app", "--to", named, "hello")
                assert out["reply"] == "hello"
                peers = {c["peer"] for c in cli.js("secure-channel", "list", "--at", "app")}
                assert peers == {db["identifier"]}

                # A portal through the malicious relay, with no trust named: every connection
                # fails visibly, with the reason in `tcp-inlet show`.
                cli.js(
                    "tcp-outlet", "create", "--at", "db", "--to", f"{HOST}:{target}",
                    "--allow", f'subject.identifier = "{app["identifier"]}"',
                )  # fmt: skip
                inlet = cli.js(
                    "tcp-inlet", "create", "--at", "app", "--from", f"{HOST}:0",
                    "--to", relayed.replace("service/echo", "service/outlet"),
                )  # fmt: skip
                made["inlet"] = inlet["from"]

                # --trust-any is the explicit opt-in (and the relay then reads the secret).
                cli.js(
                    "message", "send", "--at", "app", "--to", relayed, "--trust-any",
                    SECRET.decode(),
                )  # fmt: skip
                assert read(seen)

            await anyio.to_thread.run_sync(commands)
            inlet_port = int(made["inlet"].rsplit(":", 1)[1])
            # (the reset may even beat the client's connect call)
            assert await ping(inlet_port, b"SELECT") == b""
            shown = await anyio.to_thread.run_sync(
                lambda: cli.js("tcp-inlet", "show", "inlet1", "--at", "app")
            )
            assert "no identity to expect" in shown["last_error"], shown
            tg.cancel_scope.cancel()

    run(main)


async def _database(stream: SocketStream) -> None:
    """A target that answers with its rows (never reached by the refused portal)."""
    async with stream:
        await stream.send(b"rows")


def test_a_reused_channel_must_be_to_the_expected_peer() -> None:
    """A channel opened to a listener with one trust is reused only when the peer also
    satisfies the next caller's trust."""

    async def main() -> None:
        async with (
            Node("app", identity=ephemeral_identity()) as app,
            Node("db", identity=ephemeral_identity()) as db,
            Node("other", identity=ephemeral_identity()) as other,
        ):
            port = (await db.listen_tcp(HOST)).port
            route = f"/ip4/{HOST}/tcp/{port}/secure/api/service/echo"
            assert await app.request(route, b"one", trust=expect(db)) == b"one"
            with pytest.raises(ChannelRefusedError, match="not an authorized identity"):
                await app.request(route, b"two", trust=expect(other))
            await until(lambda: len(app.channels) == 1, 2, "one channel, reused")

    run(main)
