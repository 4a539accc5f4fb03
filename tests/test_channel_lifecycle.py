"""Secure-channel lifecycle: bulk messages split and reassembled, credentials refreshed inside
the channel, an expired credential no longer granting its attributes, idle timeout closing both
ends."""

from __future__ import annotations

import hashlib
import os
import time

import anyio
import pytest

from peers import expect
from tether.api import Node
from tether.core.message import Address, RoutedMessage
from tether.identity import credential as cred
from tether.identity import identity as ident
from tether.identity.trust import ChannelIdentity, ephemeral_identity, trust_credential
from tether.identity.vault import KeyType, MemoryVault
from tether.node.node import UnreachableError


class Authority:
    def __init__(self) -> None:
        self.vault = MemoryVault()
        now = int(time.time())
        self.identity, primary = ident.create(self.vault, now)
        self.key = self.vault.generate(KeyType.ED25519)
        self.attestation = ident.attest(
            self.vault,
            self.identity,
            primary,
            ident.Purpose.CREDENTIAL_SIGNING,
            self.vault.public_key(self.key),
            now - 10,
            now + 3600,
        )

    def issue(self, subject: str, ttl: int, **attrs: str) -> cred.Credential:
        return cred.issue(
            self.vault, self.key, self.attestation, subject, attrs, now=int(time.time()), ttl=ttl
        )


def test_bulk_messages_are_split_and_reassembled() -> None:
    async def main() -> None:
        async with (
            Node("b", identity=ephemeral_identity()) as b,
            Node("a", identity=ephemeral_identity()) as a,
        ):
            lb = await b.listen_tcp()
            ch = await a.create_secure_channel(
                f"/ip4/127.0.0.1/tcp/{lb.port}/service/api", trust=expect(b)
            )
            route = [Address.local(ch.address), Address.local("echo")]
            f = ch.fragment_size
            header = len(
                RoutedMessage(tuple(route[1:]), (Address.local("reply#" + "0" * 16),), b"").encode()
            )
            # around the one-fragment boundary (the payload's kind byte and the inner header count)
            edge = f - 1 - header - 1
            for size in (0, 1, edge - 1, edge, edge + 1, edge + 2, 300_000, 2_000_000):
                data = os.urandom(size)
                reply = await a.request(route, data, timeout=30)
                assert hashlib.sha256(reply).digest() == hashlib.sha256(data).digest(), size
            # Without the channel the same bulk message is refused with a clear error.
            with pytest.raises(UnreachableError, match="frame limit"):
                await a.request(f"/ip4/127.0.0.1/tcp/{lb.port}/service/echo", os.urandom(300_000))
            a.task_group.cancel_scope.cancel()

    anyio.run(main, backend="trio")


def test_credentials_expire_and_are_refreshed_inside_the_channel() -> None:
    authority = Authority()

    async def main() -> None:
        me = ephemeral_identity()
        short = authority.issue(me.identity.identifier, ttl=5, role="db-client")
        me = ChannelIdentity(me.identity, me.static_key, me.attestation, (short,))
        async with (
            Node(
                "b",
                identity=ephemeral_identity(),
                authorities={authority.identity.identifier: authority.identity},
                trust=trust_credential(role="db-client"),
            ) as b,
            Node("a", identity=me) as a,
        ):
            lb = await b.listen_tcp()
            ch = await a.create_secure_channel(
                f"/ip4/127.0.0.1/tcp/{lb.port}/service/api", trust=expect(b)
            )
            with anyio.fail_after(5):
                while not b.channels:
                    await anyio.sleep(0.01)
            (theirs,) = b.channels.values()
            now = int(time.time())
            assert theirs.current_attributes(now) == {"role": "db-client"}
            later = now + 5 + 61  # past expiry and the clock skew
            assert theirs.current_attributes(later) == {}
            fresh = authority.issue(me.identity.identifier, ttl=3600, role="db-client", tier="gold")
            await ch.present_credentials([fresh])
            with anyio.fail_after(5):
                while theirs.current_attributes(later) == {}:
                    await anyio.sleep(0.01)
            assert theirs.current_attributes(later) == {"role": "db-client", "tier": "gold"}
            # A credential about someone else is not accepted as a refresh.
            other = authority.issue("I" + "1" * 40, ttl=3600, role="admin")
            await ch.present_credentials([other])
            await anyio.sleep(0.2)
            assert "admin" not in theirs.current_attributes(later).values()
            a.task_group.cancel_scope.cancel()

    anyio.run(main, backend="trio")


def test_idle_channels_close_on_both_ends() -> None:
    async def main() -> None:
        async with (
            Node("b", identity=ephemeral_identity()) as b,
            Node("a", identity=ephemeral_identity()) as a,
        ):
            lb = await b.listen_tcp()
            ch = await a.create_secure_channel(
                f"/ip4/127.0.0.1/tcp/{lb.port}/service/api", trust=expect(b)
            )
            ch.idle_timeout = 0.5
            route = [Address.local(ch.address), Address.local("echo")]
            for _ in range(3):  # traffic keeps it open
                assert await a.request(route, b"ping") == b"ping"
                await anyio.sleep(0.2)
            with anyio.fail_after(5):
                await ch.closed.wait()
                while b.channels:
                    await anyio.sleep(0.01)
            assert a.channels == {}
            with pytest.raises(UnreachableError):
                await a.request(route, b"after close", timeout=5)
            a.task_group.cancel_scope.cancel()

    anyio.run(main, backend="trio")


def test_close_sends_what_was_already_accepted_first() -> None:
    async def main() -> None:
        async with (
            Node("b", identity=ephemeral_identity()) as b,
            Node("a", identity=ephemeral_identity()) as a,
        ):
            lb = await b.listen_tcp()
            got: list[bytes] = []

            async def count(ctx: object, msg: object) -> None:
                got.append(msg.payload)  # type: ignore[attr-defined]

            await b.start_worker("count", count)
            ch = await a.create_secure_channel(
                f"/ip4/127.0.0.1/tcp/{lb.port}/service/api", trust=expect(b)
            )
            sent = [b"%d" % i for i in range(20)] + [os.urandom(100_000)]
            for payload in sent:
                await a.send([Address.local(ch.address), Address.local("count")], payload)
            await ch.close()
            with anyio.fail_after(5):
                while b.channels:
                    await anyio.sleep(0.01)
            assert got == sent
            a.task_group.cancel_scope.cancel()

    anyio.run(main, backend="trio")
