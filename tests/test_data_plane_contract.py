"""The data-plane contract: what every driver of a node's data plane must do, the Rust engine
(``TETHER_DATAPLANE=rust``, the default) and the Python driver (``TETHER_DATAPLANE=python``,
which drives the same Rust state machines from Python tasks) alike. Every test runs once with
each (the ``data_plane`` fixture); a difference between them is a bug in one of the drivers.

Checked with in-process nodes on real loopback TCP, the hostile sides written by hand on plain
sockets from the wire format (``docs/wire-format.md``, ``docs/routing.md``; ``tests/rawwire.py``),
with no tether code:

* Channels: a secure channel carries messages of every size both ways intact, in order —
  empty, around the fragment size (one fragment, two), several fragments, and exactly
  ``CHANNEL_MAX_MESSAGE``; fragmented messages sent concurrently from both ends never mix; one
  byte over the maximum is refused with its precise reason, from either end, and the channel
  goes on.
* Link protocol errors from a raw socket after its hello (an oversized frame header, one byte
  over ``max_frame_len``, garbage, malformed routed messages, a frame cut short by the end of
  the stream): that link alone is closed, with its precise reason in the node's log, while an
  established peer's traffic flows on over its own link and a new peer is served; a frame of
  exactly ``max_frame_len`` is accepted; messages that arrived complete before the error are
  delivered, whatever the TCP segments.
* Link timers: a peer silent after its hello is dropped after ``dead_after`` (not before); a
  frame left half sent, or dripping in, is dropped after ``frame_timeout``; an idle link between
  healthy peers outlives ``dead_after`` several times over (keepalives, visible on the wire),
  and a raw peer that sends only keepalives is kept.
* Forged and replayed ciphertext on an established channel (tampered with by a frame-aware
  proxy between the nodes, and injected from another link): a forgery, a DATA rewritten as a
  CLOSE, a duplicate and an old message replayed are each refused and counted, neither burns
  the genuine message's nonce nor closes the channel, and legitimate messages go on; a forged
  fragment (first or middle) drops its whole message, never a part of it, and is counted once.
* A relay hop: a node with no listener, reached through a relay, exchanges messages of every
  size (fragmented ones among them) with a client, both ways, each end initiating.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskGroup

import rawwire
from node_logs import close_reasons
from peers import allow_claims, expect, identifier
from rawwire import Raw, frame, local
from tether._core import CHANNEL_MAX_MESSAGE
from tether.api import Node
from tether.channel.channel import SecureChannel
from tether.core.message import KIND_DATA, KIND_ERROR, Address, RoutedMessage
from tether.identity.trust import ephemeral_identity
from tether.node.transport.connection import TcpOptions
from trio_run import run, until, within

HOST = "127.0.0.1"
MB = 1 << 20
DATA, CLOSE = 4, 5  # the secure-channel steps (docs/secure-channels.md)

# Every test with either data plane (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("data_plane")


def at(port: int, rest: str = "") -> str:
    return f"/ip4/{HOST}/tcp/{port}{rest}"


@contextmanager
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.INFO, logger="tether.tcp"):
        yield


# --- what arrives -------------------------------------------------------------------------------


class Inbox:
    """A sink (``Node.add_sink``): records the payloads (without their kind byte) and the kinds
    of the messages routed to it, in arrival order."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.kinds: list[int] = []

    def __call__(self, msg: RoutedMessage) -> None:
        self.kinds.append(msg.payload[0])
        self.payloads.append(bytes(msg.payload[1:]))

    def __len__(self) -> int:
        return len(self.payloads)


def inner_len(onward: str, ret: str, payload_len: int) -> int:
    """The encoded length of the routed message a channel seals for a message to the worker
    ``onward`` with the return route ``[ret]`` (its kind byte, then ``payload_len`` bytes)."""
    return len(rawwire.encode_message([local(onward)], [local(ret)], b"\0")) + payload_len


def summary(payloads: list[bytes]) -> list[tuple[int, bytes]]:
    """Lengths and heads, for readable assertion failures on multi-megabyte payloads."""
    return [(len(p), p[:8]) for p in payloads]


# --- two nodes and a channel ---------------------------------------------------------------------


@dataclass
class Pair:
    near: Node
    far: Node
    port: int  # the far node's listener
    near_end: SecureChannel
    far_end: SecureChannel

    def into(self, end: SecureChannel, worker: str) -> list[Address]:
        """A route into ``end`` (its encryptor), then ``worker`` on the other node."""
        return [Address.local(end.address), Address.local(worker)]


def only_channel(node: Node) -> SecureChannel:
    (end,) = node.channels.values()
    assert isinstance(end, SecureChannel)
    return end


@asynccontextmanager
async def channel_pair(
    *, through: Callable[[int], Awaitable[int]] | None = None
) -> AsyncIterator[Pair]:
    """``near`` opens a secure channel to ``far``'s listener (directly, or to the port
    ``through`` returns for far's port)."""
    async with (
        Node("near", identity=ephemeral_identity()) as near,
        Node("far", identity=ephemeral_identity()) as far,
    ):
        port = (await far.listen_tcp(HOST)).port
        hop = await through(port) if through is not None else port
        with within(10, "the secure channel opened"):
            near_end = await near.create_secure_channel(
                at(hop, "/service/api"), trust=expect(far), timeout=5
            )
        await until(lambda: len(far.channels) == 1, 5, "far holds its end of the channel")
        yield Pair(near, far, port, near_end, only_channel(far))


# --- 1. channels: sizes, fragments, the maximum -------------------------------------------------


def test_a_channel_carries_messages_of_every_size_both_ways_intact() -> None:
    """Each message goes to ``echo`` on the far node and its echo comes back (the same size
    on the wire both ways: the routes swap), in order and byte for byte, from one byte to
    exactly the channel's maximum, across every fragment boundary."""

    async def main() -> None:
        async with channel_pair() as p:
            back = Inbox()
            p.near.add_sink("back", back)
            per = p.near_end.fragment_size - 1  # message bytes in one fragment
            base = inner_len("echo", "back", 0)
            lengths = [
                base,  # an empty payload
                base + 1,
                4096,
                per - 1,
                per,  # the largest message in one fragment
                per + 1,  # the smallest in two
                2 * per,
                2 * per + 1,
                5 * per + 77,
                MB + 3,
                CHANNEL_MAX_MESSAGE,  # exactly the largest a channel carries
            ]
            payloads = [os.urandom(n - base) for n in lengths]
            assert inner_len("echo", "back", len(payloads[-1])) == CHANNEL_MAX_MESSAGE
            route = p.into(p.near_end, "echo")
            with within(20, "every echo came back"):
                for payload in payloads:
                    await p.near.send(route, payload, return_route=(Address.local("back"),))
                await until(lambda: len(back) == len(payloads), 20, "every echo came back")
            assert back.kinds == [KIND_DATA] * len(payloads)
            assert summary(back.payloads) == summary(payloads)
            assert back.payloads == payloads
            for end in (p.near_end, p.far_end):
                assert end.info()["refused"] == 0
                assert not end.closed.is_set()

    run(main)


def test_fragmented_messages_sent_concurrently_from_both_ends_never_mix() -> None:
    """Four tasks on each node send multi-fragment messages into the channel at once (both
    directions at the same time): every message arrives whole, and each task's in its order."""
    tasks, each = 4, 3

    async def main() -> None:
        async with channel_pair() as p:
            inboxes = {"near": Inbox(), "far": Inbox()}
            p.near.add_sink("sink", inboxes["near"])
            p.far.add_sink("sink", inboxes["far"])
            per = p.near_end.fragment_size - 1
            sent: dict[str, list[bytes]] = {"near": [], "far": []}

            async def sender(node: Node, end: SecureChannel, name: str, task: int) -> None:
                for i in range(each):
                    tag = b"%s %d %d|" % (name.encode(), task, i)
                    payload = tag + os.urandom((task + 1) * per + 1000 * i)
                    sent[name].append(payload)
                    await node.send(p.into(end, "sink"), payload)

            with within(20, "every message arrived"):
                async with anyio.create_task_group() as tg:
                    for task in range(tasks):
                        tg.start_soon(sender, p.near, p.near_end, "near", task)
                        tg.start_soon(sender, p.far, p.far_end, "far", task)
                for receiver in ("far", "near"):
                    box = inboxes[receiver]
                    await until(lambda b=box: len(b) == tasks * each, 20, f"{receiver}'s messages")
            for receiver, sender_name in (("far", "near"), ("near", "far")):
                got = inboxes[receiver].payloads
                assert sorted(got) == sorted(sent[sender_name])
                for task in range(tasks):
                    prefix = b"%s %d " % (sender_name.encode(), task)
                    mine = [m for m in sent[sender_name] if m.startswith(prefix)]
                    assert [m for m in got if m.startswith(prefix)] == mine

    run(main)


def test_a_message_over_the_maximum_is_refused_and_the_channel_goes_on() -> None:
    """One byte over ``CHANNEL_MAX_MESSAGE``, from either end: the sender gets an error report
    naming the size, the channel and the limit; nothing of it reaches the other node; the
    channel then carries the largest allowed message and small ones, both ways."""

    async def main() -> None:
        async with channel_pair() as p:
            for node, end, other in (
                (p.near, p.near_end, p.far),
                (p.far, p.far_end, p.near),
            ):
                back = Inbox()
                node.add_sink("back", back)
                seen = Inbox()
                other.add_sink("sink", seen)
                over = os.urandom(CHANNEL_MAX_MESSAGE + 1 - inner_len("sink", "back", 0))
                assert inner_len("sink", "back", len(over)) == CHANNEL_MAX_MESSAGE + 1
                await node.send(p.into(end, "sink"), over, return_route=(Address.local("back"),))
                await until(lambda b=back: len(b) == 1, 10, "the refusal came back")
                assert back.kinds == [KIND_ERROR]
                assert back.payloads[0].decode() == (
                    f"message of {CHANNEL_MAX_MESSAGE + 1} bytes is too large for secure "
                    f"channel {end.address} (at most {CHANNEL_MAX_MESSAGE})"
                )
                # The channel goes on: the largest message, then a small one, arrive in order.
                largest = over[:-1]
                for payload in (largest, b"small"):
                    await node.send(p.into(end, "sink"), payload)
                await until(lambda s=seen: len(s) == 2, 20, "the messages after the refusal")
                assert summary(seen.payloads) == summary([largest, b"small"])
                assert seen.payloads == [largest, b"small"]
                assert not end.closed.is_set()
                node.remove_sink("back")
                other.remove_sink("sink")
            for end in (p.near_end, p.far_end):
                assert end.info()["refused"] == 0

    run(main)


# --- 2. link protocol errors from a raw socket -------------------------------------------------

LIMIT = 4096  # the victim's max_frame_len


def message(onward: str, payload: bytes) -> bytes:
    """A framed routed message to the worker ``onward``, its kind byte DATA."""
    return frame(rawwire.encode_message([local(onward)], [local("me")], b"\0" + payload))


def echo_request(payload: bytes) -> bytes:
    return message("echo", payload)


PROTOCOL_ERRORS: dict[str, tuple[bytes, str]] = {
    "oversized frame header": (
        struct.pack(">I", 1 << 30),
        f"bad framing: frame of {1 << 30} bytes exceeds the limit of {LIMIT} bytes",
    ),
    "one byte over max_frame_len": (
        struct.pack(">I", LIMIT + 1) + b"\0" * (LIMIT + 1),
        f"bad framing: frame of {LIMIT + 1} bytes exceeds the limit of {LIMIT} bytes",
    ),
    "garbage": (
        bytes(range(255, 0, -1)),
        f"bad framing: frame of {0xFFFEFDFC} bytes exceeds the limit of {LIMIT} bytes",
    ),
    "unknown message version": (
        frame(b"\x09" + echo_request(b"x")[5:]),
        "malformed message from the peer: malformed routed message: unsupported version 9 "
        "(this node speaks version 1)",
    ),
    "trailing bytes after the payload": (
        frame(echo_request(b"x")[4:] + b"!"),
        "malformed message from the peer: malformed routed message: 1 trailing bytes after "
        "the payload",
    ),
    "too many hops": (
        frame(rawwire.encode_message([local("echo")] * 65, [local("me")], b"\0x")),
        "malformed message from the peer: malformed routed message: onward route has 65 "
        "addresses, the limit is 64",
    ),
    "a frame cut short by the end of the stream": (
        struct.pack(">I", 100) + b"x" * 10,  # then the attacker shuts its write half
        "closed by peer",
    ),
}
VICTIM = TcpOptions(
    max_frame_len=LIMIT, hello_timeout=20, frame_timeout=20, keepalive=20, dead_after=20
)


@asynccontextmanager
async def victim_with_a_friend(
    options: TcpOptions = VICTIM,
) -> AsyncIterator[tuple[Node, int, Node]]:
    """A node listening (``options``), and a well-behaved node with an established link to it."""
    async with (
        Node("victim", tcp_options=options) as victim,
        Node("friend", tcp_options=options) as friend,
    ):
        port = (await victim.listen_tcp(HOST)).port
        assert await friend.request(at(port, "/service/echo"), b"before", timeout=5) == b"before"
        yield victim, port, friend


async def friend_still_served(victim: Node, port: int, friend: Node, links: list[Any]) -> None:
    """The friend's link (the same one as before) still carries its requests, and a new raw
    peer is served too."""
    assert await friend.request(at(port, "/service/echo"), b"after", timeout=5) == b"after"
    assert list(friend.tcp.connections.values()) == links

    def newcomer() -> bytes:
        r = Raw(port, source="127.0.0.9")
        try:
            r.sock.sendall(echo_request(b"newcomer"))
            return r.message(5).payload
        finally:
            r.close()

    assert await anyio.to_thread.run_sync(newcomer) == b"\0newcomer"


@pytest.mark.parametrize("error", list(PROTOCOL_ERRORS))
def test_a_protocol_error_closes_that_link_with_its_reason(
    error: str, caplog: pytest.LogCaptureFixture
) -> None:
    data, reason = PROTOCOL_ERRORS[error]
    source = "127.0.0.2"

    def attack(port: int) -> tuple[bool, list[bytes]]:
        r = Raw(port, source=source)
        try:
            r.sock.sendall(echo_request(b"first"))  # a good message first: served
            replies = [r.message(5).payload]
            r.sock.sendall(data)
            if reason == "closed by peer":
                r.sock.shutdown(socket.SHUT_WR)
            return r.closed_within(3), replies
        finally:
            r.close()

    async def main() -> None:
        async with victim_with_a_friend() as (victim, port, friend):
            links = list(friend.tcp.connections.values())
            closed, replies = await anyio.to_thread.run_sync(attack, port)
            assert closed, f"{error}: the node kept the link open"
            assert replies == [b"\0first"]
            await until(
                lambda: bool(close_reasons(caplog, source)), 5, "the node logged why it closed"
            )
            await friend_still_served(victim, port, friend, links)

    with logged(caplog):
        run(main)
    (logged_reason,) = close_reasons(caplog, source)
    assert logged_reason.startswith(reason), logged_reason


def test_a_frame_of_exactly_max_frame_len_is_accepted() -> None:
    """The limit is inclusive: a routed message of exactly ``max_frame_len`` bytes is delivered
    (and its echo, as large, comes back on the same link)."""
    source = "127.0.0.3"

    def peer(port: int) -> tuple[bytes, bool]:
        r = Raw(port, source=source)
        try:
            payload = b"L" * (LIMIT - len(echo_request(b"")) + 4)
            request = echo_request(payload)
            assert len(request) == 4 + LIMIT
            r.sock.sendall(request)
            reply = r.message(5).payload
            return reply, r.closed_within(0.2)
        finally:
            r.close()

    async def main() -> None:
        async with victim_with_a_friend() as (_, port, _):
            reply, closed = await anyio.to_thread.run_sync(peer, port)
            assert reply == b"\0" + b"L" * (LIMIT - len(echo_request(b"")) + 4)
            assert not closed

    run(main)


@pytest.mark.parametrize(
    "error",
    ["oversized frame header", "garbage", "unknown message version", "too many hops"],
)
def test_messages_before_a_protocol_error_in_the_same_segment_are_delivered(error: str) -> None:
    """Two complete messages, then the bad bytes, in one ``send``: the node received the two
    whole before the error, so they are delivered, as they are when they arrive in an earlier
    segment (what TCP puts in one read is not the peer's choice). The link is closed anyway."""
    data, _ = PROTOCOL_ERRORS[error]

    def attack(port: int) -> bool:
        r = Raw(port, source="127.0.0.4")
        try:
            r.sock.sendall(message("sink", b"one") + message("sink", b"two") + data)
            return r.closed_within(3)
        finally:
            r.close()

    async def main() -> None:
        async with victim_with_a_friend() as (victim, port, _):
            inbox = Inbox()
            victim.add_sink("sink", inbox)
            assert await anyio.to_thread.run_sync(attack, port)
            await until(lambda: len(inbox) == 2, 3, "the two complete messages delivered")
            assert inbox.payloads == [b"one", b"two"]

    run(main)


# --- 3. link timers --------------------------------------------------------------------------

QUICK = 0.5  # the timeout under test, in seconds


def test_a_peer_silent_after_its_hello_is_dropped_after_dead_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The node keeps a link whose peer sends nothing for ``dead_after`` (not less), then
    closes it, saying so; its healthy link to the friend (keepalives) is kept meanwhile."""
    options = TcpOptions(keepalive=0.1, dead_after=QUICK, frame_timeout=20, hello_timeout=20)
    source = "127.0.0.5"

    def silent(port: int) -> tuple[bool, float]:
        r = Raw(port, source=source)
        try:
            started = time.monotonic()
            closed = r.closed_within(QUICK + 3)
            return closed, time.monotonic() - started
        finally:
            r.close()

    async def main() -> None:
        async with victim_with_a_friend(options) as (victim, port, friend):
            links = list(friend.tcp.connections.values())
            closed, after = await anyio.to_thread.run_sync(silent, port)
            assert closed, "a silent peer was kept"
            assert QUICK * 0.8 <= after <= QUICK + 2, f"closed after {after:.2f} s"
            await until(lambda: bool(close_reasons(caplog, source)), 5, "the logged reason")
            await friend_still_served(victim, port, friend, links)

    with logged(caplog):
        run(main)
    assert close_reasons(caplog, source) == [f"peer silent for {QUICK:g} s: presumed dead"]


@pytest.mark.parametrize("how", ["stalls", "drips"])
def test_a_frame_not_completed_in_time_is_dropped_after_frame_timeout(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a frame, then nothing (``stalls``) or a byte every 0.1 s (``drips``: the peer is
    never silent long enough to be dead): the link is closed once ``frame_timeout`` has passed
    since the frame began, with the slow-peer reason; the friend's link is kept."""
    options = TcpOptions(keepalive=0.1, dead_after=5, frame_timeout=QUICK, hello_timeout=20)
    source = "127.0.0.6"

    def slow(port: int) -> tuple[bool, float, int]:
        r = Raw(port, source=source)
        dripped = 0
        try:
            started = time.monotonic()
            r.sock.sendall(struct.pack(">I", 1000) + b"h" * 500)
            deadline = started + QUICK + 3
            while time.monotonic() < deadline:
                if r.closed_within(0.1):
                    return True, time.monotonic() - started, dripped
                if how == "drips":
                    try:
                        r.sock.sendall(b"d")
                    except OSError:
                        return True, time.monotonic() - started, dripped
                    dripped += 1
            return False, time.monotonic() - started, dripped
        finally:
            r.close()

    async def main() -> None:
        async with victim_with_a_friend(options) as (victim, port, friend):
            links = list(friend.tcp.connections.values())
            closed, after, dripped = await anyio.to_thread.run_sync(slow, port)
            assert closed, f"a slow peer was kept ({dripped} bytes dripped)"
            assert QUICK * 0.8 <= after <= QUICK + 2, f"closed after {after:.2f} s"
            await until(lambda: bool(close_reasons(caplog, source)), 5, "the logged reason")
            await friend_still_served(victim, port, friend, links)

    with logged(caplog):
        run(main)
    assert close_reasons(caplog, source) == [
        f"a frame was not completed within {QUICK:g} s (slow peer)"
    ]


def test_keepalives_keep_an_idle_link_between_healthy_nodes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two nodes with ``keepalive`` 0.1 s and ``dead_after`` 0.5 s, idle for three times
    ``dead_after``: the same link (on both nodes) then carries the next request, and no link
    was closed."""
    options = TcpOptions(keepalive=0.1, dead_after=QUICK)

    async def main() -> None:
        async with Node("a", tcp_options=options) as a, Node("b", tcp_options=options) as b:
            port = (await b.listen_tcp(HOST)).port
            assert await a.request(at(port, "/service/echo"), b"first", timeout=5) == b"first"
            links = (list(a.tcp.connections.values()), list(b.tcp.connections.values()))
            assert all(len(side) == 1 for side in links)
            await anyio.sleep(3 * QUICK)  # idle: only keepalives cross the link
            assert not close_reasons(caplog), close_reasons(caplog)
            assert await a.request(at(port, "/service/echo"), b"second", timeout=5) == b"second"
            assert (list(a.tcp.connections.values()), list(b.tcp.connections.values())) == links
            assert not close_reasons(caplog), close_reasons(caplog)

    with logged(caplog):
        run(main)


def test_the_node_sends_keepalives_and_takes_them_as_life() -> None:
    """A raw peer that sends nothing but empty frames is kept past ``dead_after``, and the
    node's own keepalives (empty frames) reach it while the link is otherwise idle."""
    options = TcpOptions(keepalive=0.1, dead_after=QUICK)

    def idle_peer(port: int) -> tuple[int, bool, bytes]:
        r = Raw(port, source="127.0.0.7")
        keepalives = 0
        try:
            deadline = time.monotonic() + 3 * QUICK
            while time.monotonic() < deadline:
                r.sock.sendall(b"\0\0\0\0")
                try:
                    while True:
                        if r.frame(0.1) == b"":
                            keepalives += 1
                except TimeoutError:
                    pass
            r.sock.sendall(echo_request(b"still here"))
            return keepalives, r.closed_within(0), r.message(5).payload
        finally:
            r.close()

    async def main() -> None:
        async with Node("victim", tcp_options=options) as victim:
            port = (await victim.listen_tcp(HOST)).port
            keepalives, closed, reply = await anyio.to_thread.run_sync(idle_peer, port)
            assert not closed
            assert reply == b"\0still here"
            # 1.5 s idle at one keepalive per 0.1 s: about 15; far fewer means none are sent
            assert keepalives >= 5, keepalives

    run(main)


# --- 4. forged and replayed ciphertext ---------------------------------------------------------


def is_channel_data(body: bytes) -> bool:
    """Whether a frame's body is a routed message carrying a channel DATA message."""
    try:
        return rawwire.decode_message(body).payload[:2] == bytes([KIND_DATA, DATA])
    except ValueError:
        return False


def with_payload(body: bytes, change: Callable[[bytearray], None]) -> bytes:
    """The routed message ``body`` with its payload changed in place by ``change``."""
    msg = rawwire.decode_message(body)
    payload = bytearray(msg.payload)
    change(payload)
    return rawwire.encode_message(msg.onward, msg.return_route, bytes(payload))


def forged(body: bytes) -> bytes:
    """The DATA message with one bit of its authentication tag flipped."""

    def flip(p: bytearray) -> None:
        p[-1] ^= 0x01

    return with_payload(body, flip)


def as_close(body: bytes) -> bytes:
    """The DATA message with its step byte rewritten to CLOSE (the step is authenticated)."""

    def rewrite(p: bytearray) -> None:
        p[1] = CLOSE

    return with_payload(body, rewrite)


class Tamperer:
    """A man in the middle on the TCP hop from ``near`` to ``far``: it forwards both directions,
    cutting the near-to-far stream into frames (4-byte length, then the body) so that it can
    record the channel's DATA frames, replace the ``index``-th one from now (``arm``) by what a
    rewrite makes of it, and inject frames between frames (``inject``)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.data: list[bytes] = []
        """The bodies of the channel DATA frames it forwarded near to far (as near sent them)."""
        self._rewrite: Callable[[bytes], list[bytes]] | None = None
        self._skip = 0
        self.applied = 0
        self._upstream: SocketStream | None = None
        self._lock = anyio.Lock()

    def arm(self, rewrite: Callable[[bytes], list[bytes]], index: int = 0) -> None:
        self._rewrite, self._skip = rewrite, index

    async def start(self, tg: TaskGroup) -> None:
        listener = await anyio.create_tcp_listener(local_host=HOST)
        self.port = int(listener.extra(SocketAttribute.local_port))
        tg.start_soon(listener.serve, self._handle)

    async def inject(self, body: bytes) -> None:
        assert self._upstream is not None
        async with self._lock:
            await self._upstream.send(frame(body))

    async def _handle(self, client: SocketStream) -> None:
        async with (
            client,
            await anyio.connect_tcp(HOST, self.target_port) as server,
            anyio.create_task_group() as tg,
        ):
            self._upstream = server
            tg.start_soon(self._near_to_far, client, server, tg.cancel_scope)
            tg.start_soon(self._far_to_near, server, client, tg.cancel_scope)

    async def _far_to_near(
        self, src: SocketStream, dst: SocketStream, scope: anyio.CancelScope
    ) -> None:
        try:
            while True:
                await dst.send(await src.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            scope.cancel()

    async def _near_to_far(
        self, src: SocketStream, dst: SocketStream, scope: anyio.CancelScope
    ) -> None:
        buffer = b""
        try:
            while True:
                buffer += await src.receive()
                while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                    n = int.from_bytes(buffer[:4], "big")
                    body, buffer = buffer[4 : 4 + n], buffer[4 + n :]
                    out = [body]
                    if body and is_channel_data(body):
                        self.data.append(body)
                        if self._rewrite is not None:
                            if self._skip == 0:
                                out, self._rewrite = self._rewrite(body), None
                                self.applied += 1
                            else:
                                self._skip -= 1
                    async with self._lock:
                        await dst.send(b"".join(frame(f) for f in out))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            scope.cancel()


@asynccontextmanager
async def tampered_pair() -> AsyncIterator[tuple[Pair, Tamperer, Inbox]]:
    """A channel from near to far through a :class:`Tamperer`, and a sink on far."""
    async with anyio.create_task_group() as tg:
        tamperer: Tamperer | None = None

        async def through(port: int) -> int:
            nonlocal tamperer
            tamperer = Tamperer(port)
            await tamperer.start(tg)
            return tamperer.port

        async with channel_pair(through=through) as p:
            assert tamperer is not None
            sink = Inbox()
            p.far.add_sink("sink", sink)
            yield p, tamperer, sink
        tg.cancel_scope.cancel()


def refused(end: SecureChannel) -> int:
    count = end.info()["refused"]
    assert isinstance(count, int)
    return count


def test_forged_and_replayed_ciphertext_is_refused_and_the_channel_goes_on() -> None:
    """On the channel's own link: a DATA message with a flipped tag bit is refused (its message
    is lost); a forgery, the same message rewritten as a CLOSE, then the genuine message and a
    duplicate of it: the genuine one is delivered once (neither forgery burnt its nonce, nor
    closed the channel), the other three are refused; an old message replayed is refused. From
    another link (a raw socket that names far's decryptor): a replay and random bytes are
    refused. Every refusal is counted, exactly; what is delivered is exactly the genuine
    messages, in order; the channel then carries requests both ways."""

    async def main() -> None:
        async with tampered_pair() as (p, tamperer, sink):
            route = p.into(p.near_end, "sink")
            delivered: list[bytes] = []

            async def send(payload: bytes, delivers: bool = True) -> None:
                await p.near.send(route, payload)
                if delivers:
                    delivered.append(payload)

            async def settled(refusals: int, what: str) -> None:
                """Every message sent so far was handled: a final genuine one arrived after
                them, and the refusals were counted."""
                await send(b"sync %d" % len(delivered))
                await until(lambda: len(sink) == len(delivered), 5, f"{what}: the deliveries")
                await until(lambda: refused(p.far_end) >= refusals, 5, f"{what}: the refusals")
                assert sink.payloads == delivered, what
                assert refused(p.far_end) == refusals, what
                assert not p.far_end.closed.is_set(), what

            await send(b"one")
            await settled(0, "genuine messages")

            tamperer.arm(lambda body: [forged(body)])
            await send(b"two (forged on the way)", delivers=False)
            await settled(1, "a forged tag")

            tamperer.arm(lambda body: [forged(body), as_close(body), body, body])
            await send(b"three")
            await settled(4, "a forgery, a CLOSE rewrite, the genuine message and a duplicate")

            await tamperer.inject(tamperer.data[0])  # "one" again, on the same link
            await settled(5, "an old message replayed on the channel's link")

            decryptor = p.far_end.decryptor
            replay = tamperer.data[-1]  # the last "sync": delivered already
            random_data = rawwire.encode_message(
                [local(decryptor)], [local("x")], bytes([KIND_DATA, DATA]) + os.urandom(64)
            )

            def stranger() -> None:
                r = Raw(p.port, source="127.0.0.8")
                try:
                    r.sock.sendall(frame(replay) + frame(random_data))
                    r.sock.sendall(echo_request(b"done"))  # handled after the two above
                    assert r.message(5).payload == b"\0done"
                finally:
                    r.close()

            await anyio.to_thread.run_sync(stranger)
            await settled(7, "a replay and random bytes from another link")

            assert tamperer.applied == 2
            assert refused(p.near_end) == 0
            assert not p.near_end.closed.is_set()
            assert await p.near.request(p.into(p.near_end, "echo"), b"n", timeout=5) == b"n"
            assert await p.far.request(p.into(p.far_end, "echo"), b"f", timeout=5) == b"f"

    run(main)


@pytest.mark.parametrize(("which", "index"), [("first", 0), ("middle", 1)])
def test_a_forged_fragment_drops_its_whole_message(which: str, index: int) -> None:
    """A message of three fragments whose first or middle fragment is forged on the way: no
    part of it is delivered (not the fragments before the forgery, not the rest as a message
    of its own), and the next message, fragmented too, arrives whole. ``refused`` counts the
    forgery, once: the genuine fragments dropped with its message are no forgeries (and are
    not counted when the first fragment is the forged one)."""

    async def main() -> None:
        async with tampered_pair() as (p, tamperer, sink):
            route = p.into(p.near_end, "sink")
            per = p.near_end.fragment_size - 1
            lost = os.urandom(3 * per - 100)
            after = os.urandom(2 * per + 100)
            tamperer.arm(lambda body: [forged(body)], index=index)
            await p.near.send(route, lost)
            await p.near.send(route, after)
            await p.near.send(route, b"last")
            await until(lambda: len(sink) >= 2, 10, "the messages after the forged one")
            await until(lambda: refused(p.far_end) >= 1, 5, "the forgery counted")
            await anyio.sleep(0.3)  # room for anything more to arrive (it must not)
            assert tamperer.applied == 1
            assert summary(sink.payloads) == summary([after, b"last"])
            assert sink.payloads == [after, b"last"]
            assert refused(p.far_end) == 1, f"a forged {which} fragment"
            assert await p.near.request(p.into(p.near_end, "echo"), b"ok", timeout=5) == b"ok"

    run(main)


# --- 5. a relay hop ----------------------------------------------------------------------------


def test_through_a_relay_to_a_node_with_no_listener_both_ways() -> None:
    """``protected`` has no listener and claims ``db`` at ``relay``; ``client`` opens a secure
    channel to it through the relay's forwarder. Messages of many sizes (several fragments
    among them) go client → protected → client (echo) and protected → client (protected
    initiating, inside the same channel), intact and in order, over the client's one link, to
    the relay."""

    async def main() -> None:
        async with (
            Node("relay", identity=ephemeral_identity()) as relay,
            Node("protected", identity=ephemeral_identity()) as protected,
            Node("client", identity=ephemeral_identity()) as client,
        ):
            relay_port = (await relay.listen_tcp(HOST)).port
            allow_claims(relay, protected)
            with within(10, "the relay name claimed"):
                rc = await protected.create_relay("db", at(relay_port), trust=expect(relay))
            assert protected.tcp.listeners == {}
            with within(10, "the channel through the relay opened"):
                near = await client.create_secure_channel(
                    rc.forward_route + "/service/api", trust=expect(protected), timeout=5
                )
            await until(
                lambda: any(
                    c.peer.identifier == identifier(client) for c in protected.channels.values()
                ),
                5,
                "protected holds its end",
            )
            (far,) = [
                c for c in protected.channels.values() if c.peer.identifier == identifier(client)
            ]
            assert isinstance(far, SecureChannel)

            per = near.fragment_size - 1
            payloads = [b"", b"x", os.urandom(per - 50), os.urandom(per + 50), os.urandom(MB)]
            back, sink = Inbox(), Inbox()
            client.add_sink("back", back)
            client.add_sink("sink", sink)
            with within(20, "the echoes through the relay"):
                for payload in payloads:
                    await client.send(
                        [Address.local(near.address), Address.local("echo")],
                        payload,
                        return_route=(Address.local("back"),),
                    )
                await until(lambda: len(back) == len(payloads), 20, "the echoes")
            assert summary(back.payloads) == summary(payloads)
            assert back.payloads == payloads
            with within(20, "protected's messages to the client"):
                for payload in payloads:
                    await protected.send(
                        [Address.local(far.address), Address.local("sink")], payload
                    )
                await until(lambda: len(sink) == len(payloads), 20, "protected's messages")
            assert sink.payloads == payloads
            # The client's one link is to the relay: everything went through it.
            links = [c.peer for c in client.tcp.connections.values()]
            assert links == [f"{HOST}:{relay_port}"]
            (claim,) = relay.relay_service.info()
            assert claim["online"] is True
            assert refused(near) == 0
            assert refused(far) == 0

    run(main)
