"""The authority with in-process nodes: enrollment end to end through a policy-protected portal,
credentials that expire, are revoked or are refreshed while a download runs, tickets that are
replayed, forged, tampered with, expired or over-used, and admin operations over the secure
channel (policies attached to workers, secure-channel listeners and relay names:
``test_authority_policies.py``, with these helpers).

The authority's identity lives in a Registry over a Store in ``tmp_path`` (as the daemon keeps
it); every other node has an ephemeral identity. Every wait has a deadline: a session that should
close and does not fails the test, and a download that ends must end in a reset (never an
orderly, silently truncated end of stream).

Credentials stay valid for :data:`tether.identity.credential.DEFAULT_SKEW` (60 s) past their expiry,
so the tests that need a credential to lapse within seconds run the authority with a clock set back
(its Registry's ``clock``): what it issues expired a minute ago by its own stamp and lapses,
skew included, a few seconds after it is issued.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskGroup

from peers import expect
from tether.api import Node
from tether.core.errors import InvalidArgumentError, TetherError
from tether.identity.credential import DEFAULT_SKEW
from tether.identity.registry import Registry
from tether.identity.trust import ChannelRefusedError, ephemeral_identity
from tether.node.node import UnreachableError
from tether.services.authority import AuthorityError, Ticket, call
from tether.services.session import PortalOptions
from tether.store.authority_backend import open_shared
from tether.store.local import Store
from trio_run import run, until, within

HOST = "127.0.0.1"
ROLE = 'subject.role = "db-client"'
KB = 1024


# --- plumbing -------------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the authority and its members ----------------------------------------------------------------


@dataclass
class Auth:
    node: Node
    authority: Any
    store: Store
    route: str  # to the authority's node: /ip4/127.0.0.1/tcp/PORT

    @property
    def identifier(self) -> str:
        return str(self.authority.identifier)

    @property
    def service(self) -> str:
        """The route to the authority service, through a secure channel to its node."""
        return f"{self.route}/secure/api/service/authority"

    async def ticket(self, usage_count: int = 1, expires_in: int = 600, **attributes: str) -> str:
        t = await self.authority.create_ticket(
            attributes, route=self.route, usage_count=usage_count, expires_in=expires_in
        )
        return str(t.encode())


@contextlib.asynccontextmanager
async def running_authority(
    home: Path, *, name: str = "auth", clock_offset: float = 0.0, **options: Any
) -> AsyncIterator[Auth]:
    """A node running an authority whose identity, credential keys and member registry are in
    a Store at ``home``; with ``clock_offset``, its clock is that many seconds behind."""
    store = Store(home)
    try:
        registry = Registry(store, clock=lambda: time.time() - clock_offset)
        registry.create_identity("authority")
        async with Node(name, identity=registry.channel_identity("authority")) as node:
            port = (await node.listen_tcp(HOST)).port
            authority = await node.create_authority(
                registry, "authority", open_shared(None, store), **options
            )
            yield Auth(node, authority, store, f"/ip4/{HOST}/tcp/{port}")
    finally:
        store.close()


async def new_node(stack: contextlib.AsyncExitStack, name: str, listen: bool = False) -> Node:
    node = await stack.enter_async_context(Node(name, identity=ephemeral_identity()))
    if listen:
        await node.listen_tcp(HOST)
    return node


def route_of(node: Node) -> str:
    (listener,) = node.tcp.listeners.values()
    return f"/ip4/{HOST}/tcp/{listener.port}"


def identifier(node: Node) -> str:
    assert node.identity is not None
    return str(node.identity.identity.identifier)


async def member(
    stack: contextlib.AsyncExitStack,
    auth: Auth,
    name: str,
    *,
    listen: bool = False,
    poll_interval: float = 60.0,
    **attributes: str,
) -> Node:
    """A node enrolled with ``auth`` with ``attributes`` (through a ticket)."""
    node = await new_node(stack, name, listen)
    ticket = await auth.authority.create_ticket(attributes, route=auth.route)
    await node.enroll(ticket, poll_interval=poll_interval)
    return node


# --- portal targets and clients -------------------------------------------------------------------


async def server_and_clients(
    stack: contextlib.AsyncExitStack, auth: Auth
) -> tuple[Node, Node, Node, str]:
    """Members ``far`` (listening, role server), ``good`` (role db-client) and ``web`` (role
    web), and the route to ``far``."""
    far = await member(stack, auth, "far", listen=True, role="server")
    good = await member(stack, auth, "good", role="db-client")
    web = await member(stack, auth, "web", role="web")
    return far, good, web, route_of(far)


async def serve(tg: TaskGroup, handler: Callable[[SocketStream], Awaitable[None]]) -> int:
    listener = await anyio.create_tcp_listener(local_host=HOST)
    tg.start_soon(listener.serve, handler)
    port: int = listener.extra(SocketAttribute.local_port)
    return port


def sender(data: bytes, *, chunk: int = 64 * KB, pace: float = 0.0) -> Any:
    """A server that sends ``data`` (``chunk`` bytes every ``pace`` seconds) and closes."""

    async def handler(stream: SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                for i in range(0, len(data), chunk):
                    await stream.send(data[i : i + chunk])
                    if pace:
                        await anyio.sleep(pace)

    return handler


@dataclass
class Download:
    """A client reading one connection to its end: the bytes, and how and when it ended."""

    data: bytearray = field(default_factory=bytearray)
    error: BaseException | None = None
    ended_at: float = 0.0
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def reset(self) -> bool:
        return self.error is not None

    def __repr__(self) -> str:
        how = f"reset ({self.error!r})" if self.error else "an orderly end"
        return f"Download({len(self.data)} bytes, ended by {how})"

    async def run(self, port: int) -> None:
        try:
            stream = await anyio.connect_tcp(HOST, port)
        except OSError as e:
            self.error = e
        else:
            async with stream:
                try:
                    while True:
                        self.data += await stream.receive(256 * KB)
                except anyio.EndOfStream:
                    pass
                except (anyio.BrokenResourceError, OSError) as e:
                    self.error = e
        self.ended_at = time.time()
        self.done.set()


async def download(port: int, timeout: float = 10.0) -> Download:
    d = Download()
    with within(timeout, f"a download from 127.0.0.1:{port} ended"):
        await d.run(port)
    return d


async def protected_outlet(
    stack: contextlib.AsyncExitStack,
    auth: Auth,
    target: int,
    *,
    poll_interval: float = 60.0,
    recheck: float = 1.0,
) -> tuple[Node, Any]:
    """The database side: a member (so it trusts the authority and learns its revocations) with
    an outlet to ``target`` that allows only ``subject.role = "db-client"``."""
    db = await member(stack, auth, "db", listen=True, poll_interval=poll_interval, role="db")
    outlet = await db.create_tcp_outlet(
        f"{HOST}:{target}", allow=ROLE, options=PortalOptions(recheck_interval=recheck)
    )
    return db, outlet


async def inlet_to(client: Node, db: Node) -> int:
    inlet = await client.create_tcp_inlet(
        f"{HOST}:0", f"{route_of(db)}/secure/api/service/outlet", trust=expect(db)
    )
    port: int = inlet.port
    return port


def only_session(outlet: Any) -> Any:
    assert len(outlet.sessions) == 1, outlet.info()
    return next(iter(outlet.sessions.values()))


# --- enrollment end to end ------------------------------------------------------------------------


def test_enrolled_member_reaches_the_protected_outlet_others_are_reset(tmp_path: Path) -> None:
    payload = os.urandom(3 << 20)

    async def main() -> None:
        async with (
            anyio.create_task_group() as tg,
            running_authority(tmp_path / "auth") as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            target = await serve(tg, sender(payload))
            db, outlet = await protected_outlet(stack, auth, target)
            client = await member(stack, auth, "client", role="db-client")
            web = await member(stack, auth, "web", role="web")
            stranger = await new_node(stack, "stranger")
            assert client.memberships[auth.identifier].info()["attributes"] == {"role": "db-client"}

            got = await download(await inlet_to(client, db))
            assert got.error is None, f"the member's download failed: {got.error!r}"
            assert len(got.data) == len(payload)
            assert sha(bytes(got.data)) == sha(payload)

            for n, (who, why) in enumerate(
                [(web, "role=web"), (stranger, "no credential")], start=1
            ):
                refused = await download(await inlet_to(who, db))
                assert refused.reset, f"{why}: the connection must be reset, not {refused}"
                assert refused.data == b"", f"{why}: got {len(refused.data)} bytes"
                info = outlet.info()
                assert info["refused"] == n, info
                assert info["last_error"].startswith(
                    f"{identifier(who)} is refused by the --allow of tcp-outlet 'outlet': {ROLE}"
                ), info
            assert outlet.info()["total"] == 1
            members = {m["identifier"]: m["attributes"] for m in await auth.authority.members()}
            assert members[identifier(client)] == {"role": "db-client"}
            assert members[identifier(web)] == {"role": "web"}
            assert identifier(stranger) not in members
            tg.cancel_scope.cancel()

    run(main)


# --- credentials that lapse mid-download ----------------------------------------------------------


def test_refreshed_credential_keeps_a_download_open_until_the_authority_is_gone(
    tmp_path: Path,
) -> None:
    """The authority's clock is 120 s behind and its credentials last 64 s: each one lapses
    (skew included) about 5 s after it is issued. While the member refreshes, the new credential
    reaches the open channel and the download goes on past the first credential's end; once the
    authority is gone the refresh fails and the download is reset within the recheck interval
    of the last credential's end, never completed."""
    offset, ttl, recheck = 120, 64, 0.5
    payload = os.urandom(64 * KB) * 800  # 50 MB at 64 KB per 50 ms: 40 s, far longer than this

    async def main() -> None:
        async with (
            anyio.create_task_group() as tg,
            running_authority(tmp_path / "auth", clock_offset=offset, credential_ttl=ttl) as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            target = await serve(tg, sender(payload, pace=0.05))
            db, outlet = await protected_outlet(stack, auth, target, recheck=recheck)
            client = await member(stack, auth, "client", role="db-client")
            m = client.memberships[auth.identifier]
            d = Download()
            tg.start_soon(d.run, await inlet_to(client, db))
            await until(lambda: len(d.data) > 0, 10, "the download started")
            first = only_session(outlet).channel.peer.credentials
            first_end = max(c.expires_at for c in first) + DEFAULT_SKEW + 1
            assert first_end - time.time() < 8, "the clock offset did not shorten the credential"

            # Past the first credential's end (and a recheck), the session is still open.
            with anyio.move_on_after(first_end + 2 * recheck + 0.5 - time.time()):
                await d.done.wait()
            assert not d.done.is_set(), (
                f"the download ended ({d.error!r}) although the member refreshed its credential "
                f"{m.refreshed} times; outlet: {outlet.info()}"
            )
            assert m.refreshed >= 1
            current = only_session(outlet).channel.peer.credentials
            assert {c.id for c in current}.isdisjoint({c.id for c in first}), (
                "the refreshed credential never reached the outlet's end of the channel"
            )

            # The authority goes away: refreshes fail, and the last credential lapses.
            await auth.node.stop_worker("authority")
            await until(lambda: m.last_error != "", 5, "a refresh failed")
            presented = only_session(outlet).channel.peer.credentials
            deadline = max(c.expires_at for c in presented) + DEFAULT_SKEW + 1
            with within(
                deadline - time.time() + recheck + 3, "the lapsed credential closed the download"
            ):
                await d.done.wait()
            assert d.reset, f"the download must end in a reset, not an orderly end: {d}"
            assert len(d.data) < len(payload)
            assert d.ended_at >= deadline - 0.2, (
                f"closed {deadline - d.ended_at:.1f} s before the credential lapsed"
            )
            assert d.ended_at <= deadline + recheck + 1.5, (
                f"closed {d.ended_at - deadline:.1f} s after the credential lapsed"
            )
            info = outlet.info()
            assert "no longer satisfies its policy" in info["last_error"], info
            assert identifier(client) in info["last_error"], info
            tg.cancel_scope.cancel()

    run(main)


def test_a_short_credential_is_refreshed_before_it_expires_with_a_session_open(
    tmp_path: Path,
) -> None:
    """credential_ttl=3: the membership refreshes with a third of the life left, re-presents
    the new credential on the open channel, and a download running across it completes."""
    payload = os.urandom(32 * KB) * 100  # 3.2 MB at 32 KB per 30 ms: about 3 s

    async def main() -> None:
        async with (
            anyio.create_task_group() as tg,
            running_authority(tmp_path / "auth", credential_ttl=3) as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            target = await serve(tg, sender(payload, chunk=32 * KB, pace=0.03))
            db, outlet = await protected_outlet(stack, auth, target)
            client = await member(stack, auth, "client", role="db-client")
            m = client.memberships[auth.identifier]
            old = m.credential
            assert old is not None
            assert old.expires_at - old.created_at == 3
            d = Download()
            tg.start_soon(d.run, await inlet_to(client, db))
            await until(lambda: m.refreshed >= 1, 4, "the membership refreshed its credential")
            assert time.time() < old.expires_at, "refreshed only after the credential expired"
            new = m.credential
            assert new is not None
            assert new.id != old.id
            assert new.attributes == {"role": "db-client"}
            assert client.identity is not None
            assert [c.id for c in client.identity.credentials] == [new.id]
            await until(
                lambda: (
                    bool(outlet.sessions)
                    and new.id in {c.id for c in only_session(outlet).channel.peer.credentials}
                ),
                3,
                "the outlet's end of the channel holds the refreshed credential",
            )
            with within(10, "the download ended"):
                await d.done.wait()
            assert d.error is None, f"the download failed across the refresh: {d.error!r}"
            assert sha(bytes(d.data)) == sha(payload)
            assert outlet.info()["failed"] == 0, outlet.info()
            assert m.last_error == ""
            tg.cancel_scope.cancel()

    run(main)


# --- revocation -----------------------------------------------------------------------------------


def test_a_revoked_member_loses_its_download_within_poll_plus_recheck(tmp_path: Path) -> None:
    poll, recheck = 0.5, 1.0
    payload = os.urandom(64 * KB) * 400  # 25 MB at 64 KB per 50 ms: 20 s

    async def main() -> None:
        async with (
            anyio.create_task_group() as tg,
            running_authority(tmp_path / "auth") as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            target = await serve(tg, sender(payload, pace=0.05))
            db, outlet = await protected_outlet(
                stack, auth, target, poll_interval=poll, recheck=recheck
            )
            client = await member(stack, auth, "client", role="db-client")
            other = await member(stack, auth, "other", role="db-client")
            credential = client.memberships[auth.identifier].credential
            d = Download()
            tg.start_soon(d.run, await inlet_to(client, db))
            await until(lambda: len(d.data) > 0, 10, "the download started")

            revoked_at = time.time()
            ids = await auth.authority.delete_member(identifier(client))
            assert credential.id in ids
            with within(poll + recheck + 2.5, "the revocation closed the download"):
                await d.done.wait()
            assert d.reset, f"the download must end in a reset: {d}"
            assert len(d.data) < len(payload)
            assert credential.id in db.revoked_credentials[auth.identifier]
            info = outlet.info()
            assert "no longer satisfies its policy" in info["last_error"], info
            print(f"revocation closed the download in {d.ended_at - revoked_at:.2f} s")

            # A new connection by the revoked member is refused; another member still gets in.
            again = await download(await inlet_to(client, db), timeout=20)
            assert again.reset, again
            assert again.data == b""
            ok = Download()
            tg.start_soon(ok.run, await inlet_to(other, db))
            await until(lambda: len(ok.data) > 0, 10, "another member's download started")
            tg.cancel_scope.cancel()

    run(main)


def test_a_revoked_member_is_refused_by_a_listener_policy(tmp_path: Path) -> None:
    """A listener's policy is checked at the handshake: a credential the node knows is revoked
    must not grant its attributes there, as it does not at an outlet or a worker.

    Fails while ChannelListener._check_policy evaluates ``peer.attributes`` (every credential
    that verified, revoked or not) instead of the attributes still valid
    (``SecureChannel.current_attributes`` filters the node's revocation lists)."""

    async def main() -> None:
        async with (
            running_authority(tmp_path / "auth") as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            db = await member(stack, auth, "db", listen=True, poll_interval=0.5, role="db")
            await db.create_secure_channel_listener("guarded")
            db.add_policy(ROLE, resource="guarded")
            client = await member(stack, auth, "client", role="db-client")
            try:
                ch = await client.create_secure_channel(f"{route_of(db)}/service/guarded")
            except ChannelRefusedError as e:
                raise AssertionError(
                    f"the member was refused before any revocation: {e} (the listener-policy "
                    "bug of test_a_listener_policy_refuses_at_the_handshake_and_admits_the_others)"
                ) from None
            await ch.close()

            credential = client.memberships[auth.identifier].credential
            await auth.authority.delete_member(identifier(client))
            await until(
                lambda: credential.id in db.revoked_credentials.get(auth.identifier, ()),
                5,
                "the db node learned the revocation",
            )
            # The worker policy (per message) already refuses it on a fresh channel...
            db.add_policy(ROLE, resource="echo")
            with pytest.raises(UnreachableError, match="by its policy"):
                await client.request(f"{route_of(db)}/secure/api/service/echo", b"x")
            # ...and so must the listener, at the handshake.
            with pytest.raises(ChannelRefusedError, match="refused by the policy"):
                await client.create_secure_channel(f"{route_of(db)}/service/guarded")

    run(main)


# --- tickets --------------------------------------------------------------------------------------


def test_tickets_replayed_overused_forged_tampered_expired_or_misrouted_are_refused(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with (
            running_authority(tmp_path / "auth") as auth,
            running_authority(tmp_path / "impostor", name="impostor") as impostor,
            contextlib.AsyncExitStack() as stack,
        ):
            created = time.time()
            expiring = await auth.ticket(expires_in=1, role="late")
            nodes = [await new_node(stack, f"n{i}") for i in range(9)]

            async def refused(node: Node, ticket: str | Ticket, reason: str) -> AuthorityError:
                with pytest.raises(AuthorityError) as caught:
                    await node.enroll(ticket)
                assert str(caught.value) == f"the authority refused: {reason}"
                assert auth.identifier not in node.memberships
                return caught.value

            # Replay: a single-use ticket works once.
            once = await auth.ticket(role="db-client")
            await nodes[0].enroll(once)
            used = "the ticket was already used as many times as it allows"
            await refused(nodes[1], once, used)

            # Over-use: usage_count=2 works twice, not a third time.
            twice = await auth.ticket(usage_count=2, role="web")
            await nodes[2].enroll(twice)
            await nodes[3].enroll(twice)
            await refused(nodes[4], twice, used)

            # Forged: the right authority and route, a random secret.
            unknown = "unknown ticket: this authority never issued it"
            await refused(
                nodes[4], Ticket(auth.authority.identity, auth.route, os.urandom(32)), unknown
            )
            # Tampered: one bit of a genuine ticket's secret flipped.
            genuine = Ticket.decode(await auth.ticket(role="db-client"))
            flipped = bytes([genuine.secret[0] ^ 1]) + genuine.secret[1:]
            tampered = Ticket(genuine.authority, genuine.route, flipped).encode()
            await refused(nodes[4], tampered, unknown)
            # Tampered text: a character inside the authority's identity history, a cut, junk.
            text = genuine.encode()
            k = len("tether-ticket1:") + 40
            bad_char = text[:k] + ("A" if text[k] != "A" else "B") + text[k + 1 :]
            for bad, why in [
                (bad_char, "the ticket is damaged"),
                (text[:-20], "the ticket is damaged"),
                ("tether-ticket2:" + text[15:], "not a tether ticket"),
            ]:
                with pytest.raises(InvalidArgumentError, match=why):
                    await nodes[4].enroll(bad)

            # Misrouted: the ticket names the authority, the route leads to another identity.
            # The channel is refused before the secret is sent; the ticket still works after.
            other_port = impostor.route.rsplit("/", 1)[1]
            misrouted = Ticket(genuine.authority, f"/ip4/{HOST}/tcp/{other_port}", genuine.secret)
            with pytest.raises(ChannelRefusedError) as caught:
                await nodes[5].enroll(misrouted)
            assert f"{impostor.identifier} is not an authorized identity" in str(caught.value)
            assert impostor.authority.info()["enrolled"] == 0
            assert impostor.authority.info()["refused"] == 0, "the impostor got a request"
            m = await nodes[5].enroll(genuine)
            assert m.info()["attributes"] == {"role": "db-client"}

            # Expired: created 1 s before it expires, used after.
            await until(lambda: time.time() >= int(created) + 1.05, 3, "the ticket expired")
            with pytest.raises(AuthorityError, match=r"the ticket expired \(\d+ s ago\)"):
                await nodes[6].enroll(expiring)

            info = auth.authority.info()
            assert info["enrolled"] == 4, info
            assert info["refused"] == 5, info
            assert "the ticket expired" in info["last_error"]
            members = {m["identifier"] for m in await auth.authority.members()}
            assert members == {identifier(nodes[i]) for i in (0, 2, 3, 5)}

    run(main)


def test_ticket_text_with_characters_outside_base64url_is_refused() -> None:
    """Ticket.decode refuses text that is not base64url, whatever its length.

    Fails while Ticket.decode uses the lenient ``base64.urlsafe_b64decode`` (which discards
    characters outside the alphabet): one or two stray characters are refused as "not
    base64url", three or four are silently dropped and the ticket decodes."""
    genuine = Ticket(ephemeral_identity().identity, f"/ip4/{HOST}/tcp/4000", os.urandom(32))
    text = genuine.encode()
    k = len("tether-ticket1:") + 40
    for junk in ("!", "!!", "!!!", "!!!!", "*$*$"):
        with pytest.raises(InvalidArgumentError, match=r"the ticket is damaged \(not base64url\)"):
            Ticket.decode(text[:k] + junk + text[k:])


def test_a_refused_enrollment_keeps_the_existing_membership(tmp_path: Path) -> None:
    """A member that presents a used ticket for its own authority is refused, and that is all:
    it stays a member that refreshes and polls.

    Fails while Node.enroll calls Node.join before the enrollment succeeds: join pops (and
    stops) the existing membership of that authority, and enroll's error path only removes the
    new one, so the node is left with no membership at all."""

    async def main() -> None:
        async with (
            running_authority(tmp_path / "auth") as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            node = await member(stack, auth, "node", role="db-client")
            m = node.memberships[auth.identifier]
            used = await auth.ticket(role="admin")
            await (await new_node(stack, "first")).enroll(used)
            with pytest.raises(AuthorityError, match="already used"):
                await node.enroll(used)
            assert node.memberships.get(auth.identifier) is m, (
                f"the refused enrollment dropped the membership: {node.memberships}"
            )

    run(main)


def test_a_refused_enrollment_leaves_no_trust_behind(tmp_path: Path) -> None:
    """A ticket whose enrollment fails must not make the node trust the identity it names: else
    anyone who gets a node to try a ticket of theirs (pointing anywhere) can then issue
    credentials the node's policies accept.

    Fails while Node.join adds the ticket's authority to ``node.authorities`` before the
    enrollment, and Node.enroll's error path does not remove it."""

    async def main() -> None:
        async with (
            anyio.create_task_group() as tg,
            running_authority(tmp_path / "auth") as auth,
            running_authority(tmp_path / "evil", name="evil") as evil,
            contextlib.AsyncExitStack() as stack,
        ):
            target = await serve(tg, sender(b"secret rows"))
            db, _ = await protected_outlet(stack, auth, target)
            # evil's ticket names evil but routes to the real authority: refused.
            t = Ticket.decode(await evil.ticket(role="db-client"))
            with pytest.raises(TetherError):
                await db.enroll(Ticket(t.authority, auth.route, t.secret))
            assert evil.identifier not in db.memberships
            assert evil.identifier not in db.authorities, (
                "the refused enrollment left the node trusting the ticket's authority"
            )
            # So a credential from evil grants nothing at db's outlet.
            mallory = await new_node(stack, "mallory")
            mallory.use_credential(
                await evil.authority.issue(identifier(mallory), {"role": "db-client"})
            )
            got = await download(await inlet_to(mallory, db))
            assert got.reset, "a credential from an untrusted issuer got in"
            assert got.data == b""
            tg.cancel_scope.cancel()

    run(main)


def test_the_authority_node_honours_the_credentials_it_issues(tmp_path: Path) -> None:
    """A policy on the node that runs the authority sees its members' attributes, as on any
    member node.

    Fails while Node.create_authority does not trust the authority's own identity (it is not in
    ``node.authorities``): the node's handshakes drop its own members' credentials as from an
    untrusted issuer, so its policies refuse every member ("echo 'echo' on node auth refused
    I… by its policy")."""

    async def main() -> None:
        async with (
            running_authority(tmp_path / "auth") as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            auth.node.add_policy(ROLE, resource_type="echo")
            client = await member(stack, auth, "client", role="db-client")
            web = await member(stack, auth, "web", role="web")
            with pytest.raises(UnreachableError, match="by its policy"):
                await web.request(f"{auth.route}/secure/api/service/echo", b"no")
            assert await client.request(f"{auth.route}/secure/api/service/echo", b"hi") == b"hi"

    run(main)


def test_the_same_credential_asked_twice_in_one_second_is_issued_twice(tmp_path: Path) -> None:
    """Two issues for one subject with the same attributes (a member enrolling twice in a
    second) are two distinct credentials, each recorded (so each can be revoked), not "already
    recorded"."""

    async def main() -> None:
        async with running_authority(tmp_path / "auth") as auth:
            subject = ephemeral_identity().identity.identifier
            first = await auth.authority.issue(subject, {"role": "db-client"})
            second = await auth.authority.issue(subject, {"role": "db-client"})
            assert first.id != second.id
            assert first.attributes == second.attributes == {"role": "db-client"}
            assert auth.authority.issued == 2

    run(main)


# --- admin operations -----------------------------------------------------------------------------


def test_admin_operations_over_the_secure_channel(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            running_authority(tmp_path / "auth") as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            admin = await member(stack, auth, "admin", admin="true")
            plain = await member(stack, auth, "plain", role="web", admin="false")
            outsider = await new_node(stack, "outsider")
            newcomer = await new_node(stack, "newcomer")
            added = await new_node(stack, "added")

            r = await call(
                admin,
                auth.service,
                {
                    "op": "create_ticket",
                    "attributes": {"role": "db-client"},
                    "route": auth.route,
                    "usage_count": 1,
                },
            )
            m = await newcomer.enroll(r["ticket"])
            assert m.info()["attributes"] == {"role": "db-client"}

            await call(
                admin,
                auth.service,
                {"op": "add_member", "identifier": identifier(added), "attributes": {"x": "1"}},
            )
            joined = await added.join(auth.authority.identity, auth.route)
            await until(lambda: joined.credential is not None, 5, "the added member's credential")
            assert joined.credential is not None
            assert dict(joined.credential.attributes) == {"x": "1"}

            listed = await call(admin, auth.service, {"op": "members"})
            by_id = {m["identifier"]: m for m in listed["members"]}
            assert by_id[identifier(newcomer)]["added_by"] == identifier(admin)
            assert by_id[identifier(added)]["added_by"] == identifier(admin)

            policy = 'subject.admin = "true"'
            for who in (plain, outsider):
                for op in ("create_ticket", "add_member", "delete_member", "members"):
                    request: dict[str, Any] = {"op": op, "route": auth.route}
                    if op != "create_ticket":
                        request["identifier"] = identifier(newcomer)
                    with pytest.raises(AuthorityError) as caught:
                        # (the outsider is no member: it names the authority it calls)
                        await call(who, auth.service, request, trust=expect(auth.node))
                    assert str(caught.value) == (
                        f"the authority refused: {identifier(who)} may not {op}: the "
                        f"authority's admin policy is {policy}"
                    )
            assert identifier(outsider) not in {
                m["identifier"] for m in await auth.authority.members()
            }
            assert identifier(newcomer) in {m["identifier"] for m in await auth.authority.members()}

            # The admin can delete a member (its credential is revoked).
            r = await call(
                admin, auth.service, {"op": "delete_member", "identifier": identifier(newcomer)}
            )
            assert m.credential is not None
            assert r["revoked"] == [m.credential.id]

            # Requests outside a secure channel, and bad requests, get clear errors.
            with pytest.raises(AuthorityError, match="only through a secure channel"):
                await call(admin, f"{auth.route}/service/authority", {"op": "members"})
            with pytest.raises(AuthorityError, match="unknown operation 'nope'"):
                await call(admin, auth.service, {"op": "nope"})
            with pytest.raises(AuthorityError, match='must be a JSON object with an "op"'):
                await call(admin, auth.service, {"no": "op"})

    run(main)
