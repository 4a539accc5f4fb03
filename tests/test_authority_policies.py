"""Policies on workers, secure-channel listeners and relay names, with in-process nodes whose
members an authority enrolled (the helpers are ``test_authority``'s): every policy that applies
to a resource (its type's and its name's) must allow, and a refusal names the policy."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from test_authority import (
    ROLE,
    identifier,
    member,
    route_of,
    running_authority,
    server_and_clients,
)
from tether.identity.trust import ChannelRefusedError
from tether.node.node import UnreachableError
from tether.node.worker import echo
from tether.services.relay import RelayClaimError
from trio_run import run, within


def test_worker_policies_by_type_and_by_name(tmp_path: Path) -> None:
    """Messages to a worker from a channel peer without the attributes get an error report; the
    worker keeps serving the others. A policy for the worker's name applies with its type's:
    both must allow."""

    async def main() -> None:
        async with (
            running_authority(tmp_path / "auth") as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            far, good, web, at = await server_and_clients(stack, auth)

            far.add_policy(ROLE, resource_type="echo")
            await far.start_worker("echo2", echo, kind="echo")
            far.add_policy('subject.role = "web"', resource="echo2")
            await far.start_worker("echo3", echo, kind="echo")
            far.add_policy('subject.role member? ["db-client", "web"]', resource="echo3")
            for i in range(3):  # the refusals do not stop it serving the others
                assert await good.request(f"{at}/secure/api/service/echo", b"a%d" % i) == b"a%d" % i
                with pytest.raises(UnreachableError) as caught:
                    await web.request(f"{at}/secure/api/service/echo", b"b")
                assert str(caught.value) == (
                    f"echo 'echo' on node far refused {identifier(web)} by its policy"
                )
                # echo2's own policy admits web, but the one for every echo does not: refused,
                # and good, which the type-wide one admits, is refused by echo2's own.
                for who in (web, good):
                    with pytest.raises(UnreachableError, match="echo 'echo2' on node far refused"):
                        await who.request(f"{at}/secure/api/service/echo2", b"c")
                # echo3's admits both; every echo's only good.
                assert await good.request(f"{at}/secure/api/service/echo3", b"d") == b"d"
                with pytest.raises(UnreachableError, match="echo 'echo3' on node far refused"):
                    await web.request(f"{at}/secure/api/service/echo3", b"d")
            with pytest.raises(UnreachableError, match="a sender without a secure channel"):
                await good.request(f"{at}/service/echo", b"plain")

            # Deleting the type policy lets web reach echo again.
            (rule,) = [r for r in far.policies.values() if r.resource_type == "echo"]
            far.delete_policy(rule.id)
            assert await web.request(f"{at}/secure/api/service/echo", b"e") == b"e"

    run(main)


def test_a_listener_policy_refuses_at_the_handshake_and_admits_the_others(tmp_path: Path) -> None:
    """A policy attached to a secure-channel listener (by name) is checked at the handshake:
    a peer without the attribute is refused, one with it gets its channel.

    Fails while Node.route also applies the listener's policy per message to the listener's
    *worker* (kind ``secure-channel-listener``): the first handshake message never comes
    through a secure channel, so every handshake is refused with "secure-channel-listener
    'guarded' on node far refused a sender without a secure channel by its policy"."""

    async def main() -> None:
        async with (
            running_authority(tmp_path / "auth") as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            far, good, web, at = await server_and_clients(stack, auth)
            await far.create_secure_channel_listener("guarded")
            far.add_policy(ROLE, resource="guarded", resource_type="secure-channel-listener")

            ch = await good.create_secure_channel(f"{at}/service/guarded")
            assert ch.peer.identifier == identifier(far)
            assert await good.request((*_local(ch.address), *_local("echo")), b"in") == b"in"
            with pytest.raises(ChannelRefusedError) as refused:
                await web.create_secure_channel(f"{at}/service/guarded")
            assert (
                f"{identifier(web)} is refused by the policy policy1 "
                f"(secure-channel-listener 'guarded'): {ROLE}"
            ) in str(refused.value)
            listener = far.channel_listeners["guarded"].info()
            assert (listener["accepted"], listener["refused"]) == (1, 1), listener
            # The api listener has no policy: web still reaches the node.
            await web.create_secure_channel(f"{at}/service/api")

    run(main)


def _local(name: str) -> tuple[Any, ...]:
    from tether.core.message import Address

    return (Address.local(name),)


def test_a_relay_name_policy_refuses_the_claim(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            running_authority(tmp_path / "auth") as auth,
            contextlib.AsyncExitStack() as stack,
        ):
            far = await member(stack, auth, "far", listen=True, role="relay")
            good = await member(stack, auth, "good", role="db-client")
            web = await member(stack, auth, "web", role="web")
            at = route_of(far)
            far.add_policy(ROLE, resource="db-relay", resource_type="relay")

            with pytest.raises(RelayClaimError) as caught:
                await web.create_relay("db-relay", at)
            assert str(caught.value).startswith(
                f"claiming the relay name 'db-relay': {identifier(web)} is refused by the "
                f"policy policy1 (relay 'db-relay'): {ROLE}"
            ), caught.value
            assert "db-relay" not in far.relay_service.claims
            client = await good.create_relay("db-relay", at)
            with within(5, "the relay name was claimed"):
                await client.ready.wait()
            assert far.relay_service.claims["db-relay"].owner == identifier(good)
            # The claimed name forwards to good's node.
            assert await web.request(f"{client.forward_route}/service/echo", b"via") == b"via"
            # A name without a policy is free to claim.
            other = await web.create_relay("web-relay", at)
            with within(5, "the unprotected name was claimed"):
                await other.ready.wait()

            # A policy for every relay name is a floor: a name's own policy that admits web
            # does not override it.
            floor = far.add_policy(ROLE, resource_type="relay")
            far.add_policy('subject.role = "web"', resource="web2", resource_type="relay")
            with pytest.raises(RelayClaimError) as caught:
                await web.create_relay("web2", at)
            assert str(caught.value).startswith(
                f"claiming the relay name 'web2': {identifier(web)} is refused by the policy "
                f"{floor.id} (every relay): {ROLE}"
            ), caught.value
            assert "policy3" not in str(caught.value)  # web2's own admitted web
            info = {c["name"]: c for c in far.relay_service.info()}
            assert [p["id"] for p in info["db-relay"]["policy"]["policies"]] == [
                floor.id,
                "policy1",
            ]

    run(main)
