"""Secure-channel benchmarks for ``benches/run.py``: tether channels over loopback TCP vs the bare
Noise handshake, the same route without a channel, and TLS 1.3.

What runs where (the machinery of ``node_cases.py``):

* **One server process**, S: ``benches/node_server.py bench-s --channel``, one trio event loop
  with a tether node that has a secure-channel identity (listeners ``api`` and ``api-cold``, the
  built-in ``echo`` worker, a ``count`` worker, a ``stats`` worker) and the TLS 1.3 baseline
  servers (echo and counting servers for length-prefixed frames behind trio's ``SSLStream``,
  with a self-signed ECDSA P-256 certificate generated at start-up; nothing is read from or
  committed to the repository). It is started when the first channel group is built and stopped
  by :func:`close` (``run.py`` calls it when the run ends, also on errors; ``atexit`` is the
  fallback, and the server exits by itself when its stdin reaches end of file).
* **This process.** The client node (with its own ephemeral identity) and the TLS client
  connections run in one trio event loop in a background thread (an anyio blocking portal), as in
  ``node_cases``; the bare handshake variant runs in the main thread, both sides in one process.

Groups (all on 127.0.0.1):

* ``channel/establish``: authenticated channels opened per second. One iteration is
  ``Node.create_secure_channel`` to S's listener (Noise XX with the prologue; each side's identity
  history, the attestation of its static key and the trust policy verified inside the
  handshake; the initiator waits for the listener's authenticated acknowledgement), then
  ``SecureChannel.close()`` (which sends the sealed close message and stops the client's two
  workers; S stops its end when the message arrives). Every channel is closed, so neither node
  accumulates channels. Two tether rows: ``uncached`` clears this process's ``verify_history``
  cache before each open and talks to ``api-cold``, whose trust policy clears S's after each
  handshake, so both histories are verified from scratch every time (the cost for a new peer);
  ``history cached`` talks to ``api`` and keeps the caches (a peer seen before). The baseline is
  the bare ``tether.core.noise.Handshake`` XX pair of ``cases.handshake_group`` (both sides in this
  process, empty payloads, no I/O), measured in the same run. After every ``run(n)`` the
  listener's accepted count, from ``stats``, must have grown by exactly n.
* ``channel/request-64``: 64-byte request/reply round trips, 32 in flight. tether channel: 32
  tasks calling ``Node.request`` on ``[channel, echo]`` (sealed on the client, opened on S, the
  reply sealed back); tether plain route: the same to S's ``echo`` over the same TCP connection,
  no channel; TLS 1.3: one TLS connection to S's TLS echo server, 32 frames pipelined (as
  ``node_cases.trio_pipelined``).
* ``channel/bulk-65536``: one-way 64 KiB messages. tether channel: ``Node.send`` to
  ``[channel, count]`` in a loop, then one ``request`` through the channel returns the count
  worker's totals, which must equal everything sent; tether plain route: the same to S's
  ``count`` without the channel; TLS 1.3: frames written to S's TLS counting server, then an
  empty frame that returns its totals.

The two channel-traffic groups use one channel each, opened when the group is built (to ``api``)
and closed by :func:`close`.
"""

from __future__ import annotations

import itertools
import json
import os
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

import cases
from cases import _check
from harness import Group, Variant
from node_cases import (
    BULK,
    CONCURRENCY,
    SMALL,
    TIMEOUT,
    ClientLoop,
    Singleton,
    Totals,
    tether_bulk,
    tether_requests,
    trio_bulk,
    trio_pipelined,
)
from node_cases import (
    _server as node_server,
)
from node_server import COLD_LISTENER, HOST, TOTALS
from tether.api import Node
from tether.channel.channel import SecureChannel
from tether.core.message import Address
from tether.identity import identity
from tether.identity.trust import ChannelIdentity, ephemeral_identity

WARM_LISTENER = "api"
"""S's default listener (``Node(..., identity=...)`` starts it); verified histories stay cached."""
STATS_TIMEOUT = 5.0
"""How long the correctness check waits for S to have closed its end of a channel."""

KEY_ESTABLISH = "channel/establish"
KEY_REQUEST = f"channel/request-{SMALL}"
KEY_BULK = f"channel/bulk-{BULK}"

ESTABLISH_COLD = "tether channel, uncached"
ESTABLISH_WARM = "tether channel, history cached"
NOISE_PAIR = "bare Noise XX pair, 1 process"
REQUEST_CHANNEL = f"tether channel x{CONCURRENCY}"
REQUEST_PLAIN = f"tether plain route x{CONCURRENCY}"
REQUEST_TLS = f"TLS 1.3, {CONCURRENCY} pipelined"
BULK_CHANNEL = "tether channel send"
BULK_PLAIN = "tether plain send"
BULK_TLS = "TLS 1.3 send"


# --- the server process and the client event loop ---------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """What ``node_server.py NAME --channel`` prints when it listens."""

    node: int
    tls_echo: int
    tls_count: int
    identifier: str
    """The server node's identity, which the channel's peer must be."""
    cert: str
    """The TLS server's self-signed certificate (PEM), the only one the TLS clients trust."""


@contextmanager
def _server(name: str) -> Iterator[ServerInfo]:
    with node_server(name, "--channel") as info:
        yield ServerInfo(
            node=int(info["node"]),
            tls_echo=int(info["tls_echo"]),
            tls_count=int(info["tls_count"]),
            identifier=str(info["identifier"]),
            cert=str(info["cert"]),
        )


def tls_client_context(cert_pem: str) -> ssl.SSLContext:
    """Trusts only ``cert_pem``, checks the host name (127.0.0.1, an IP SAN), TLS 1.3 only."""
    ctx = ssl.create_default_context(cadata=cert_pem)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class Session(ClientLoop):
    """Server S, and the client event loop with its tether node; closed by :func:`close`."""

    def __init__(self) -> None:
        super().__init__()
        try:
            self.s = self._stack.enter_context(_server("bench-s"))
            self._start_loop()
            self.node: Node = self._stack.enter_context(
                self.portal.wrap_async_context_manager(
                    Node("bench-channel-client", identity=ephemeral_identity())
                )
            )
            self.cold_identity = ephemeral_identity()
            """The client's identity towards ``api-cold`` (the node's own goes to ``api``): S
            never holds it in its history cache between two handshakes."""
            self.tls = tls_client_context(self.s.cert)
            self.stats_route = self.route("stats")
            # Opens the client's TCP connection to S, outside any timed code.
            echo = self.portal.call(self.node.request, self.route("echo"), b"")
            _check(echo == b"", "plain echo to S")
        except BaseException:
            self._stack.close()
            raise

    def route(self, service: str) -> tuple[Address, ...]:
        """The plain route to ``service`` on S, parsed (outside the timed code)."""
        return self.node.parse_route(f"/ip4/{HOST}/tcp/{self.s.node}/service/{service}")

    def stats(self) -> dict[str, Any]:
        """S's ``stats`` answer (see ``node_server.stats_worker``)."""
        answer: dict[str, Any] = json.loads(
            self.portal.call(partial(self.node.request, self.stats_route, b"", timeout=TIMEOUT))
        )
        return answer

    def channel(self) -> SecureChannel:
        """A channel to S's ``api`` listener, closed (before the event loop stops) by
        :meth:`close`."""
        channel: SecureChannel = self.portal.call(
            partial(self.node.create_secure_channel, self.route(WARM_LISTENER), timeout=TIMEOUT)
        )

        def close_channel() -> None:
            self.portal.call(channel.close)

        self._stack.callback(close_channel)
        _check(channel.peer.identifier == self.s.identifier, "the channel's peer is S")
        return channel

    def connect_tls(self, port: int) -> trio.SSLStream[trio.SocketStream]:
        """A TLS 1.3 client connection (handshake done), closed by :meth:`close`."""
        connect = partial(trio.open_ssl_over_tcp_stream, HOST, port, ssl_context=self.tls)
        stream: trio.SSLStream[trio.SocketStream] = self.portal.call(connect)
        self._stack.callback(self.portal.call, stream.aclose)
        self.portal.call(stream.do_handshake)
        _check(stream.version() == "TLSv1.3", f"TLS 1.3 negotiated (got {stream.version()})")
        return stream


_sessions = Singleton(Session)


def session() -> Session:
    return _sessions.get()


def close() -> None:
    """Close the channels, stop the client node and event loop and the server (idempotent)."""
    _sessions.close()


# --- establishment -----------------------------------------------------------------------------


@dataclass
class Accepted:
    """Channels S's listener ``listener`` must have accepted: its count when first asked, plus
    every channel opened to it since. For ``api-cold``, each of them must also have verified
    the initiator's history anew (not from S's cache)."""

    listener: str
    count: int
    reverified: int

    @classmethod
    def now(cls, listener: str, stats: dict[str, Any]) -> Accepted:
        return cls(listener, stats["accepted"][listener], stats["cold_reverified"])

    def expect(self, n: int, stats: dict[str, Any]) -> None:
        self.count += n
        got = stats["accepted"][self.listener]
        _check(got == self.count, f"listener {self.listener} accepted {got}, not {self.count}")
        if self.listener == COLD_LISTENER:
            self.reverified += n
            got = stats["cold_reverified"]
            _check(
                got == self.reverified, f"S verified {got} histories anew, not {self.reverified}"
            )


async def _stats(node: Node, route: Sequence[Address]) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(await node.request(route, b"", timeout=TIMEOUT))
    return answer


async def establish(
    node: Node,
    route: Sequence[Address],
    me: ChannelIdentity,
    uncached: bool,
    stats_route: Sequence[Address],
    accepted: Accepted,
    n: int,
) -> None:
    """Open ``n`` channels one after the other, closing each; then check S's counts."""
    create, clear = node.create_secure_channel, identity._verify_history_cached.cache_clear
    for _ in range(n):
        if uncached:
            clear()
        channel = await create(route, identity=me, timeout=TIMEOUT)
        await channel.close()
    accepted.expect(n, await _stats(node, stats_route))


def _check_channel(s: Session, listener: str, me: ChannelIdentity, uncached: bool) -> None:
    """One channel to ``listener``, checked end to end, closed, and gone on both sides."""
    cache = identity._verify_history_cached
    if uncached:
        cache.cache_clear()
    before = s.stats()
    channel: SecureChannel = s.portal.call(
        partial(s.node.create_secure_channel, s.route(listener), identity=me, timeout=TIMEOUT)
    )
    _check(channel.peer.identifier == s.s.identifier, f"{listener}: the peer is S's identity")
    if uncached:
        info = cache.cache_info()
        _check((info.hits, info.misses) == (0, 1), "client: S's history verified uncached")
    nonce = channel.cipher.sending_nonce
    probe = os.urandom(SMALL)
    echo = (Address.local(channel.address), Address.local("echo"))
    _check(s.portal.call(s.node.request, echo, probe) == probe, f"{listener}: echo via channel")
    _check(channel.cipher.sending_nonce > nonce, f"{listener}: the request was sealed")
    s.portal.call(channel.close)
    _check(channel.address not in s.node.channels, f"{listener}: closed on the client")
    _check(not s.node.has_worker(channel.address), f"{listener}: the encryptor stopped")
    deadline = time.monotonic() + STATS_TIMEOUT
    while (after := s.stats())["channels"] != before["channels"] or (
        after["workers"] != before["workers"]
    ):
        _check(time.monotonic() < deadline, f"{listener}: S closed its end (channel, workers)")
        time.sleep(0.01)
    _check(after["refused"] == before["refused"], f"{listener}: nothing refused")
    Accepted.now(listener, before).expect(1, after)


def establish_group() -> Group:
    """Authenticated channel establishments per second vs bare XX handshakes."""
    s = session()
    warm_identity = s.node.identity
    assert isinstance(warm_identity, ChannelIdentity)
    for _ in range(2):  # the second time, a cache could have served the cold one
        _check_channel(s, COLD_LISTENER, s.cold_identity, True)
        _check_channel(s, WARM_LISTENER, warm_identity, False)
    stats = s.stats()
    cold, warm = Accepted.now(COLD_LISTENER, stats), Accepted.now(WARM_LISTENER, stats)

    keys = cases._static_keys(cases.KEY_POOL)
    i, r = cases._tether_handshake(*keys[0])
    _check(i.finished and r.finished, "bare handshake finished")
    ti, tr = i.into_transport(), r.into_transport()
    _check(ti.handshake_hash == tr.handshake_hash, "bare handshake hashes agree")

    def run_noise(n: int) -> None:  # as cases.handshake_group's "tether" row
        for sk_i, sk_r in itertools.islice(itertools.cycle(keys), n):
            i, r = cases._tether_handshake(sk_i, sk_r)
            i.into_transport()
            r.into_transport()

    return Group(
        key=KEY_ESTABLISH,
        title="Secure channel open + close over TCP, client -> node S",
        unit="channels/s",
        variants=[
            Variant(
                ESTABLISH_COLD,
                s.runner(
                    establish,
                    s.node,
                    s.route(COLD_LISTENER),
                    s.cold_identity,
                    True,
                    s.stats_route,
                    cold,
                ),
            ),
            Variant(
                ESTABLISH_WARM,
                s.runner(
                    establish,
                    s.node,
                    s.route(WARM_LISTENER),
                    warm_identity,
                    False,
                    s.stats_route,
                    warm,
                ),
            ),
            Variant(NOISE_PAIR, run_noise),
        ],
    )


# --- traffic -----------------------------------------------------------------------------------


def _tls(stream: trio.SSLStream[trio.SocketStream]) -> str:
    """The negotiated TLS version and cipher suite, for the group's title."""
    cipher = stream.cipher()
    return f"{stream.version()} {cipher[0]}" if cipher else str(stream.version())


def request_group() -> Group:
    """64-byte request/reply, 32 in flight: through a channel, plain route, TLS 1.3."""
    s = session()
    channel = s.channel()
    through = (Address.local(channel.address), Address.local("echo"))
    plain = s.route("echo")
    payload = os.urandom(SMALL)
    stream = s.connect_tls(s.s.tls_echo)

    for route, what in ((through, "channel"), (plain, "plain route")):
        probe = os.urandom(SMALL)
        _check(s.portal.call(s.node.request, route, probe) == probe, f"tether echo, {what}")
    nonce = channel.cipher.sending_nonce
    s.portal.call(tether_requests, s.node, through, payload, CONCURRENCY, 4 * CONCURRENCY)
    _check(channel.cipher.sending_nonce == nonce + 4 * CONCURRENCY, "one sealed message each")
    s.portal.call(tether_requests, s.node, plain, payload, CONCURRENCY, 4 * CONCURRENCY)
    replies: list[bytes] = []
    s.portal.call(trio_pipelined, stream, payload, CONCURRENCY, 4 * CONCURRENCY, replies)
    _check(replies == [payload] * (4 * CONCURRENCY), "TLS pipelined echo")

    return Group(
        key=KEY_REQUEST,
        title=f"Channel request/reply, {SMALL} B, {CONCURRENCY} in flight ({_tls(stream)})",
        unit="round trips/s",
        variants=[
            Variant(
                REQUEST_CHANNEL, s.runner(tether_requests, s.node, through, payload, CONCURRENCY)
            ),
            Variant(REQUEST_PLAIN, s.runner(tether_requests, s.node, plain, payload, CONCURRENCY)),
            Variant(REQUEST_TLS, s.runner(trio_pipelined, stream, payload, CONCURRENCY)),
        ],
    )


def bulk_group() -> Group:
    """One-way 64 KiB messages to a counter: through a channel, plain route, TLS 1.3."""
    s = session()
    channel = s.channel()
    through = (Address.local(channel.address), Address.local("count"))
    plain = s.route("count")
    payload = os.urandom(BULK)
    stream = s.connect_tls(s.s.tls_count)
    # Both tether rows feed the same count worker (never at the same time): one running total.
    tether_totals, tls_totals = Totals(), Totals()
    tether_totals.count, tether_totals.nbytes = TOTALS.unpack(
        s.portal.call(s.node.request, plain, b"")
    )
    # Correctness: the totals are checked after every run(n), these included.
    nonce = channel.cipher.sending_nonce
    s.portal.call(tether_bulk, s.node, through, payload, tether_totals, 8)
    _check(channel.cipher.sending_nonce > nonce + 8, "the bulk messages were sealed")
    s.portal.call(tether_bulk, s.node, plain, payload, tether_totals, 8)
    s.portal.call(trio_bulk, stream, payload, tls_totals, 8)

    return Group(
        key=KEY_BULK,
        title=f"Channel one-way bulk, {BULK // 1024} KiB messages ({_tls(stream)})",
        unit="msg/s",
        variants=[
            Variant(
                BULK_CHANNEL,
                s.runner(tether_bulk, s.node, through, payload, tether_totals),
                bytes_per_iter=BULK,
            ),
            Variant(
                BULK_PLAIN,
                s.runner(tether_bulk, s.node, plain, payload, tether_totals),
                bytes_per_iter=BULK,
            ),
            Variant(
                BULK_TLS, s.runner(trio_bulk, stream, payload, tls_totals), bytes_per_iter=BULK
            ),
        ],
    )


def all_groups() -> list[tuple[str, Callable[[], Group]]]:
    """(key, builder) of the channel groups, in run order."""
    return [
        (KEY_ESTABLISH, establish_group),
        (KEY_REQUEST, request_group),
        (KEY_BULK, bulk_group),
    ]


def comparisons() -> list[tuple[str, str, str, float | None]]:
    """(group, subject, baseline, target) for ``run.Comparison``; no targets."""
    return [
        (KEY_ESTABLISH, ESTABLISH_COLD, NOISE_PAIR, None),
        (KEY_ESTABLISH, ESTABLISH_WARM, NOISE_PAIR, None),
        (KEY_REQUEST, REQUEST_CHANNEL, REQUEST_PLAIN, None),
        (KEY_REQUEST, REQUEST_CHANNEL, REQUEST_TLS, None),
        (KEY_BULK, BULK_CHANNEL, BULK_PLAIN, None),
        (KEY_BULK, BULK_CHANNEL, BULK_TLS, None),
    ]


def _main() -> int:
    """Smoke test: build each group and time every variant once, briefly."""
    try:
        for _, build in all_groups():
            group = build()
            for v in group.variants:
                start = time.perf_counter()
                v.run(50)
                dt = time.perf_counter() - start
                print(f"{group.key:<20} {v.name:<32} {50 * v.items_per_iter / dt:12,.0f}")
    finally:
        close()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
