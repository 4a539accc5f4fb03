"""The two tether processes of the flood benchmark (``benches/floods.py``).

    python benches/flood_victim.py victim [--dataplane rust|python]
    python benches/flood_victim.py client --port PORT --identifier ID [--timeout S]

``victim``: a node with a secure-channel identity (so a listener at ``api``), its built-in
``echo``, listening on 127.0.0.1 (an ephemeral port), with the default caps. It prints one line
``ready {JSON}`` (its pid, port, identifier and the caps in force), then runs until SIGTERM or
SIGINT. Every ``--stats-every`` seconds (when its event loop lets it) it prints one line
``stats {JSON}``: ``node.counters``, ``node.pending_handshakes``, the ``api`` listener's
``info()``, its links, workers and channels, the bytes queued toward peers and the events
waiting for Python, and ``stall``: the longest its event loop made a 50 ms sleep wait beyond
its time since the previous line (how long the loop ran something else without a break).

``client``: the legitimate client. A node (its own identity) that opens a secure channel to the
victim's ``api`` with ``trust=trust_identifiers(ID)`` and prints ``ready {}`` once an echo
through it has come back. It then reads commands on stdin, one a line, and answers each with
one line on stdout:

* ``run SECONDS``: for that long, a 64-byte echo request through the channel every
  ``--interval`` seconds (one at a time; each bounded by ``--timeout``: a late reply is a
  failure), and meanwhile, every ``--open-interval`` seconds, a *fresh open*: a new node (a new
  TCP connection) opens a channel to the victim and gets one echo through it, bounded by
  ``--open-timeout``. Answer: ``result {JSON}`` (latencies, failures by reason).
* ``quit``.

Warnings and errors of either node go to stderr (the benchmark keeps them in a log file).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio

from tether.api import Node
from tether.channel import channel as tchannel
from tether.core.message import Address
from tether.identity.trust import ephemeral_identity, trust_identifiers
from tether.node import limits
from tether.node.worker import MAILBOX_SIZE

HOST = "127.0.0.1"
PAYLOAD = b"x" * 64


# --- victim ----------------------------------------------------------------------------------


def _get(fn: Callable[[], Any], default: Any = None) -> Any:
    """``fn()``, or ``default`` if it fails: the figures read here are the node's internals,
    and a benchmark must not take the victim down when one of them changes."""
    try:
        return fn()
    except Exception:
        return default


def caps(node: Node) -> dict[str, Any]:
    """The limits in force on ``node``."""
    o = node.tcp.options
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out = {
        "max_connections": lambda: node.tcp.max_connections,
        "max_connections (configured)": lambda: o.max_connections,
        "link_budget": limits.link_budget,
        "RLIMIT_NOFILE": lambda: f"{soft}/{hard}",
        "max_pending": lambda: o.max_pending,
        "max_pending_per_source": lambda: o.max_pending_per_source,
        "max_connections_per_source": lambda: o.max_connections_per_source,
        "unauthenticated_idle": lambda: o.unauthenticated_idle,
        "hello_timeout": lambda: o.hello_timeout,
        "max_frame_len": lambda: o.max_frame_len,
        "send_queue": lambda: o.send_queue,
        "drain_timeout": lambda: o.drain_timeout,
        "MAILBOX_SIZE": lambda: MAILBOX_SIZE,
        "MAX_PENDING_HANDSHAKES": lambda: tchannel.MAX_PENDING_HANDSHAKES,
        "MAX_PENDING_PER_PEER": lambda: tchannel.MAX_PENDING_PER_PEER,
        "LISTENER_HANDSHAKE_TIMEOUT": lambda: tchannel.LISTENER_HANDSHAKE_TIMEOUT,
        "dataplane": lambda: "rust" if node.data_plane is not None else "python",
    }
    return {k: _get(fn, "?") for k, fn in out.items()}


def queued(node: Node) -> tuple[int, int, int]:
    """Bytes queued toward peers (in all, and on the fullest link) and events waiting for Python
    (with the Rust data plane: its link queues and each connection's inbox; with the Python one,
    each connection's send queue)."""
    total = top = events = 0
    plane = node.data_plane
    for conn in list(node.tcp.connections.values()):
        out = 0
        link_id = getattr(conn, "_link", None)
        if plane is not None and link_id is not None and not plane.stopped:
            link = _get(lambda link_id=link_id: plane.engine.link_stats(link_id))
            out = 0 if link is None else link[2]
            events += _get(lambda conn=conn: len(conn._inbox), 0)
        else:  # the frames in the connection's send queue (anyio's memory stream)
            out = _get(lambda conn=conn: sum(len(f) for f in conn._send._state.buffer), 0)
        total += out
        top = max(top, out)
    return total, top, events


def stats(node: Node) -> dict[str, Any]:
    tcp = node.tcp
    out, out_top, events = _get(lambda: queued(node), (0, 0, 0))
    listener = node.channel_listeners.get("api")
    return {
        "queued_out": out,
        "queued_out_top": out_top,
        "events_waiting": events,
        "time": time.monotonic(),
        "counters": dict(node.counters),
        "pending_handshakes": _get(lambda: int(node.pending_handshakes), 0),
        "listener": _get(lambda: listener.info(), {}) if listener is not None else {},
        "links": len(tcp.connections),
        "links_in_hello": _get(lambda: int(tcp.pending), 0),
        "outgoing": len(tcp.outgoing),
        "workers": _get(lambda: len(node._workers), 0),
        "channels": len(node.channels),
    }


TICK = 0.05
"""The victim's own event-loop probe: a task that sleeps this long, and notes how late it wakes."""


async def _report(node: Node, every: float) -> None:
    """Every ``every`` seconds, one ``stats`` line; ``stall`` is the longest the event loop
    kept a ``TICK``-second sleep waiting beyond its time since the previous line."""
    stall, last, next_line = 0.0, time.monotonic(), time.monotonic() + every
    while True:
        await anyio.sleep(TICK)
        now = time.monotonic()
        stall, last = max(stall, now - last - TICK), now
        if now >= next_line:
            next_line = now + every
            try:
                line = json.dumps(stats(node) | {"stall": stall})
            except Exception as e:  # the node's internals changed: say so, keep the victim
                line = json.dumps({"stall": stall, "error": f"{type(e).__name__}: {e}"})
            print("stats " + line, flush=True)
            stall = 0.0


async def victim(args: argparse.Namespace) -> None:
    data_plane = args.dataplane == "rust"
    async with Node("victim", identity=ephemeral_identity(), data_plane=data_plane) as node:
        assert node.identity is not None
        listener = await node.listen_tcp(HOST, 0)
        info = {
            "pid": os.getpid(),
            "port": listener.port,
            "identifier": node.identity.identity.identifier,
            "caps": caps(node),
        }
        print("ready " + json.dumps(info), flush=True)
        node.task_group.start_soon(_report, node, args.stats_every)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for _ in sigs:
                break
        node.task_group.cancel_scope.cancel()


# --- client ----------------------------------------------------------------------------------


def _percentile(sorted_xs: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of an ascending list (not empty)."""
    return sorted_xs[min(len(sorted_xs) - 1, max(0, math.ceil(q * len(sorted_xs)) - 1))]


def summary(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    s = sorted(xs)
    return {
        "median": _percentile(s, 0.5),
        "p99": _percentile(s, 0.99),
        "max": s[-1],
    }


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timeout"
    text = str(e).split("\n")[0]
    return f"{type(e).__name__}: {text[:120]}"


class Client:
    def __init__(self, args: argparse.Namespace, node: Node) -> None:
        self.args = args
        self.node = node
        self.port = args.port
        self.trust = trust_identifiers(args.identifier)
        self.identity = ephemeral_identity()  # for the fresh opens (one node each)
        self.route: tuple[Address, ...] = ()
        self.reopened = 0

    def _listener_route(self) -> str:
        return f"/ip4/{HOST}/tcp/{self.port}/service/api"

    async def open(self) -> None:
        ch = await self.node.create_secure_channel(
            self._listener_route(), trust=self.trust, timeout=self.args.open_timeout
        )
        self.route = (Address.local(ch.address), Address.local("echo"))

    async def echo(self) -> None:
        reply = await self.node.request(self.route, PAYLOAD, timeout=self.args.timeout)
        if reply != PAYLOAD:
            raise RuntimeError("wrong echo")

    async def fresh_open(self) -> None:
        """A new node, so a new TCP connection: open a channel and get one echo through it."""
        async with Node("probe", identity=self.identity, data_plane=False) as probe:
            ch = await probe.create_secure_channel(
                self._listener_route(), trust=self.trust, timeout=self.args.open_timeout
            )
            route = (Address.local(ch.address), Address.local("echo"))
            if await probe.request(route, PAYLOAD, timeout=self.args.open_timeout) != PAYLOAD:
                raise RuntimeError("wrong echo")
            probe.task_group.cancel_scope.cancel()

    async def run(self, seconds: float) -> dict[str, Any]:
        latencies: list[float] = []
        failures: dict[str, int] = {}
        opens: list[float] = []
        open_failures: dict[str, int] = {}
        end = time.monotonic() + seconds
        broken = 0  # consecutive failures of the long-lived channel

        async def requests() -> None:
            nonlocal broken
            tick = time.monotonic()
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    if broken >= 3:  # the channel is gone (its link closed?): a new one
                        with anyio.fail_after(self.args.open_timeout):
                            await self.open()
                        self.reopened += 1
                        broken = 0
                    await self.echo()
                    latencies.append(time.monotonic() - t0)
                    broken = 0
                except Exception as e:
                    failures[_reason(e)] = failures.get(_reason(e), 0) + 1
                    broken += 1
                tick = max(tick + self.args.interval, time.monotonic())
                await anyio.sleep(max(0.0, tick - time.monotonic()))

        async def fresh() -> None:
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    with anyio.fail_after(self.args.open_timeout):
                        await self.fresh_open()
                    opens.append(time.monotonic() - t0)
                except Exception as e:
                    open_failures[_reason(e)] = open_failures.get(_reason(e), 0) + 1
                await anyio.sleep(max(0.0, t0 + self.args.open_interval - time.monotonic()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(requests)
            tg.start_soon(fresh)
        return {
            "requests": len(latencies) + sum(failures.values()),
            "ok": len(latencies),
            "failures": failures,
            "latency_s": summary(latencies),
            "opens": len(opens) + sum(open_failures.values()),
            "opens_ok": len(opens),
            "open_failures": open_failures,
            "open_s": summary(opens),
            "reopened": self.reopened,
        }


async def client(args: argparse.Namespace) -> None:
    async with Node("client", identity=ephemeral_identity()) as node:
        c = Client(args, node)
        with anyio.fail_after(30):
            await c.open()
            await c.echo()
        print("ready {}", flush=True)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            words = line.split()
            if not words or words[0] == "quit":
                break
            if words[0] == "run":
                result = await c.run(float(words[1]))
                print("result " + json.dumps(result), flush=True)
            else:
                print("error unknown command " + json.dumps(line.strip()), flush=True)
        node.task_group.cancel_scope.cancel()


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("role", choices=["victim", "client"])
    p.add_argument("--dataplane", choices=["rust", "python"], default="rust")
    p.add_argument(
        "--stats-every", type=float, default=0.25, help="victim: seconds between stats lines"
    )
    p.add_argument("--port", type=int, help="client: the victim's port")
    p.add_argument("--identifier", help="client: the victim's identifier")
    p.add_argument("--timeout", type=float, default=2.0, help="client: per echo request (s)")
    p.add_argument("--interval", type=float, default=0.005, help="client: between requests (s)")
    p.add_argument("--open-interval", type=float, default=0.25, help="client: between opens (s)")
    p.add_argument("--open-timeout", type=float, default=5.0, help="client: per fresh open (s)")
    p.add_argument("--log-level", default="WARNING", help="of the node's log on stderr")
    args = p.parse_args(argv)
    if args.role == "client" and (args.port is None or args.identifier is None):
        p.error("client needs --port and --identifier")
    return args


def main() -> int:
    args = parse_args(sys.argv[1:])
    logging.basicConfig(
        level=args.log_level.upper(), format=f"[{args.role}] %(levelname)s %(name)s: %(message)s"
    )
    try:
        anyio.run(victim if args.role == "victim" else client, args, backend="trio")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
