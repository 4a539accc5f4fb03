"""Attack: injecting messages into another node's secure channel through its address.

A channel's local address (``sc#N``) is small and sequential. Before origins decided reach, a frame
from any TCP link with onward route ``[sc#N, outlet]`` was sealed into the channel (by the data
plane's forwarding or by Python, where channel workers were exempt from policy) and arrived at the
far outlet as the channel owner's own authenticated session: an outlet that allows only the app's
identity served a stranger its data.

Set-up, as the review reproduced it: a relay; a ``db`` node with no listener that claims the name
``db`` at the relay and runs an outlet (to a "database" that answers every connection with a
secret) allowing only the app's identity; an ``app`` node, with a listener, whose inlet reaches the
outlet through the relay inside a secure channel to ``db``. The attacker has only TCP connections
(``tests/rawwire.py``, no tether code) to the app node and to the relay.

Shown, with both data planes:

* every ``sc#N`` the attacker names at the app node (OPEN and DATA for the outlet, a request for
  ``echo``) is answered with exactly the report an unknown name gets, so channels cannot even be
  enumerated; the database sees no connection but the legitimate ones and the attacker never
  receives its secret;
* at the relay, naming its channel to ``db`` directly is refused the same way; going through the
  public forwarder reaches ``db`` only as the relay's own identity, which the outlet refuses by its
  policy (a CLOSE naming the relay's identifier) — again no database connection;
* the legitimate client's sessions work before, during and after.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest

import rawwire
from peers import allow_claims, expect, identifier
from rawwire import KIND_DATA, KIND_ERROR, OPEN, PDATA, Raw, local
from test_portal import DuplexServer, exchange, serve
from tether.api import Node
from tether.identity.trust import ephemeral_identity
from trio_run import run, until

HOST = "127.0.0.1"
SECRET = b"the database's secret rows " * 64
PROBE = 24  # channel addresses tried: far more than the nodes hold


# Every test with either data plane (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("data_plane")


@dataclass
class Site:
    relay: Node
    db: Node
    app: Node
    relay_port: int
    app_port: int
    inlet_port: int
    database: DuplexServer
    served: int = 0  # legitimate exchanges so far


@asynccontextmanager
async def site() -> AsyncIterator[Site]:
    async with (
        anyio.create_task_group() as tg,
        Node("relay", identity=ephemeral_identity()) as relay,
        Node("db", identity=ephemeral_identity()) as db,
        Node("app", identity=ephemeral_identity()) as app,
    ):
        database = DuplexServer(SECRET)
        target = await serve(tg, database)
        relay_port = (await relay.listen_tcp(HOST)).port
        app_port = (await app.listen_tcp(HOST)).port
        allow_claims(relay, db)
        rc = await db.create_relay("db", f"/ip4/{HOST}/tcp/{relay_port}", trust=expect(relay))
        await db.create_tcp_outlet(
            f"{HOST}:{target}", allow=f'subject.identifier = "{identifier(app)}"'
        )
        inlet = await app.create_tcp_inlet(
            f"{HOST}:0", rc.forward_route + "/secure/api/service/outlet", trust=expect(db)
        )
        yield Site(relay, db, app, relay_port, app_port, inlet.port, database)
        tg.cancel_scope.cancel()


async def legit(s: Site) -> None:
    """The app's client gets the database's answer through the portal."""
    s.served += 1
    got = await exchange(s.inlet_port, b"SELECT")
    assert got.error is None
    assert got.data == SECRET


async def only_legitimate_connections(s: Site) -> None:
    """The database served the legitimate exchanges, and no other connection."""
    await until(lambda: len(s.database.seen) >= s.served, 5, "the database's records")
    await anyio.sleep(0.2)
    assert len(s.database.seen) == s.served


def session_messages(onward_head: str, ret: str) -> list[tuple[list[rawwire.Address], bytes]]:
    """What an attacker sends for one guessed address: a portal OPEN and DATA for the outlet
    behind it, and a request for the echo behind it."""
    return [
        ([local(onward_head), local("outlet")], bytes([KIND_DATA, OPEN])),
        ([local(onward_head), local("outlet")], bytes([KIND_DATA, PDATA]) + b"SELECT *"),
        ([local(onward_head), local("echo")], bytes([KIND_DATA]) + b"echo me"),
    ]


def probe(port: int, names: list[str], source: str) -> list[rawwire.Message]:
    """Send every message of ``session_messages`` for each name; what came back."""
    r = Raw(port, source=source)
    try:
        for name in names:
            for onward, payload in session_messages(name, "attacker"):
                r.send(onward, payload)
        return r.messages(2.0)
    finally:
        r.close()


def test_a_stranger_cannot_send_through_a_nodes_channels() -> None:
    async def main() -> None:
        async with site() as s:
            await legit(s)
            held = sorted(s.app.channels)  # the app's channel to db is among these
            assert held
            names = [f"sc#{n}" for n in range(1, PROBE)]
            unknown = [f"zz#{n}" for n in range(1, 4)]
            got = await anyio.to_thread.run_sync(probe, s.app_port, names + unknown, "127.0.0.2")
            await legit(s)  # during the attack too

            assert all(m.kind == KIND_ERROR for m in got), [m.payload[:80] for m in got]
            assert not any(SECRET[:20] in m.payload for m in got)
            reports = [m.text for m in got]
            # Three messages per name, each answered as if the name did not exist.
            for name in names + unknown:
                assert reports.count(f"no worker {name!r} on node app") == 3, (name, reports)
            assert len(reports) == 3 * (len(names) + len(unknown))
            assert s.app.counters["refused: address not reachable from there"] >= 3 * len(held)
            await only_legitimate_connections(s)
            await legit(s)

    run(main)


def test_a_stranger_at_the_relay_reaches_db_only_as_the_relay() -> None:
    async def main() -> None:
        async with site() as s:
            await legit(s)

            def attack() -> tuple[list[rawwire.Message], list[rawwire.Message]]:
                direct = probe(s.relay_port, [f"sc#{n}" for n in range(1, PROBE)], "127.0.0.3")
                r = Raw(s.relay_port, source="127.0.0.4")
                try:
                    for onward, payload in session_messages("forward_to_db", "attacker"):
                        r.send(onward, payload)
                    forwarded = r.messages(3.0)
                finally:
                    r.close()
                return direct, forwarded

            direct, forwarded = await anyio.to_thread.run_sync(attack)
            await legit(s)

            assert direct
            assert all(m.kind == KIND_ERROR for m in direct)
            assert all(re.fullmatch(r"no worker 'sc#\d+' on node relay", m.text) for m in direct)
            # Through the public forwarder the attacker arrives at db inside the relay's own
            # channel: the outlet refuses the relay's identity (CLOSE with the reason), and the
            # echo answers (it has no policy): nothing of the database.
            closes = [m for m in forwarded if m.payload[:2] == bytes([KIND_DATA, 4])]
            assert closes, [m.payload[:80] for m in forwarded]
            assert f"refused {identifier(s.relay)} by its policy" in closes[0].text
            assert any(m.payload == bytes([KIND_DATA]) + b"echo me" for m in forwarded)
            assert not any(SECRET[:20] in m.payload for m in forwarded + direct)
            await only_legitimate_connections(s)
            await legit(s)

    run(main)


def test_a_stranger_cannot_refuse_someone_elses_handshake() -> None:
    """A half-open handshake at a listener listens only to the link its first message came by:
    a stranger who names its decryptor (``sc#K.in``, learnt here from the honest side's reply,
    the worst case) cannot end it with a REFUSED; the honest side still can."""

    async def main() -> None:
        async with Node("victim", identity=ephemeral_identity()) as victim:
            port = (await victim.listen_tcp(HOST)).port
            listener = victim.channel_listeners["api"]

            def handshake_then_attack() -> str:
                honest = Raw(port, source="127.0.0.2")
                stranger = Raw(port, source="127.0.0.3")
                try:
                    honest.send([local("api")], rawwire.channel_hs1_payload())
                    hs2 = honest.message()
                    assert hs2.payload[:2] == bytes([KIND_DATA, rawwire.HS2])
                    decryptor = hs2.return_route[0][1].decode()
                    refused = bytes([KIND_DATA, 6]) + b"forged refusal"
                    for _ in range(5):
                        stranger.send([local(decryptor)], refused)
                    stranger.send([local("echo")], b"\0sync")  # handled after the above
                    assert stranger.message().payload == b"\0sync"
                    return decryptor
                finally:
                    stranger.close()
                    honest.close()

            decryptor = await anyio.to_thread.run_sync(handshake_then_attack)
            assert decryptor.endswith(".in")
            assert listener.info()["refused"] == 0
            assert listener.info()["pending"] == 1  # still waiting for the honest side

    run(main)
