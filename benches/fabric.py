"""The NATS fabric when its servers die: how long a portal session stalls when the server one
of its nodes uses is killed (SIGKILL), over several kills, and whether it survives them all.

Run from the repository root, in the project's virtualenv (the extension built in release
mode)::

    python benches/fabric.py                  # 8 kills, about a minute
    python benches/fabric.py --kills 16 --json

What runs (every process on 127.0.0.1, started here in a temporary directory and stopped at
the end, also on Ctrl-C and errors): a three-server NATS cluster (``nats-server``, clustered,
with users), two tether nodes as their own processes (``benches/portal_node.py``: ``db`` with
an outlet, and a client node with an inlet to ``/nats/db/secure/api/service/to-source``), and
a source server in this process that streams a counter pattern to each connection.

One client connection reads through the portal for the whole run. For each kill, the script
finds the server that the node in turn uses (the inlet node, then the outlet node, ...; read
from ``ss``), kills it with SIGKILL, keeps reading for a few seconds, then restarts the server
(it rejoins the cluster) and lets the stream settle. The stall of a kill is the longest time
without a byte arriving from just before the kill to the end of that window. Every byte is
checked against the pattern: a lost, repeated or reordered byte fails the run, as does the
connection ending.

The goal (``docs/routing.md``, "The NATS fabric"): no session lost, a stall under 2 s.
Portal throughput over the fabric against the relay and ``ssh -L`` is measured by
``python benches/portal.py --contenders tether,relay,fabric,ssh``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import markdown_table, signals_exit
from portal import (
    HOST,
    BenchError,
    NatsServer,
    Processes,
    free_port,
    start_fabric_nodes,
    start_nats_cluster,
)

STALL_GOAL = 2.0
"""Seconds: the longest a session may stall when a server dies."""
WINDOW = 5.0
"""Seconds read after each kill (the stall is measured in it)."""
SETTLE = 2.0
"""Seconds read after a restart, before the next kill."""
PATTERN = bytes(range(256)) * 8192  # 2 MiB of the counter pattern
READ = 1 << 20


def serve_source(listener: socket.socket, stop: threading.Event) -> None:
    """Stream the counter pattern (byte i is i % 256) to each connection until it closes."""
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return

        def pump(c: socket.socket) -> None:
            with c:
                try:
                    while not stop.is_set():
                        c.sendall(PATTERN)
                except OSError:
                    return

        threading.Thread(target=pump, args=(conn,), daemon=True).start()


def server_of(pid: int, servers: list[NatsServer]) -> NatsServer | None:
    """The NATS server that process ``pid`` has an established connection to (from ``ss``)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=False
    ).stdout
    by_port = {s.port: s for s in servers}
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        fields = line.split()
        peer = fields[3] if len(fields) > 3 else ""
        m = re.search(r":(\d+)$", peer)
        if m and int(m.group(1)) in by_port:
            return by_port[int(m.group(1))]
    return None


class Reader:
    """Reads the client connection in a thread, checks every byte against the pattern, and
    keeps the arrival times of its reads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.position = 0
        self.arrivals: list[tuple[float, int]] = []
        self.error = ""
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        buf = bytearray(READ)
        view = memoryview(buf)
        while True:
            try:
                n = self.sock.recv_into(buf)
            except OSError as e:
                self.error = f"the connection failed: {e}"
                return
            if n == 0:
                self.error = "the connection ended"
                return
            start = self.position % 256
            if view[:n] != PATTERN[start : start + n]:
                self.error = f"a byte out of place near offset {self.position}"
                return
            with self.lock:
                self.position += n
                self.arrivals.append((time.monotonic(), self.position))

    def stall(self, since: float, until: float) -> float:
        """The longest time without a byte in [since, until]."""
        with self.lock:
            times = [t for t, _ in self.arrivals if since <= t <= until]
        edges = [since, *times, until]
        return max(b - a for a, b in itertools.pairwise(edges))

    def rate(self, since: float, until: float) -> float:
        """MB/s in [since, until]."""
        with self.lock:
            inside = [(t, p) for t, p in self.arrivals if since <= t <= until]
        if len(inside) < 2:
            return 0.0
        (t0, p0), (t1, p1) = inside[0], inside[-1]
        return (p1 - p0) / (t1 - t0) / 1e6 if t1 > t0 else 0.0


@dataclass
class Kill:
    node: str
    server: str
    stall: float
    """Seconds without a byte around the kill."""
    recovered_mb_s: float
    """Throughput in the window after the stall."""


def run(kills: int) -> tuple[list[Kill], float, str]:
    with tempfile.TemporaryDirectory(prefix="tether-fabric-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(tmp)
        stop = threading.Event()
        try:
            listener = socket.create_server((HOST, 0))
            source_port = listener.getsockname()[1]
            threading.Thread(target=serve_source, args=(listener, stop), daemon=True).start()
            servers = start_nats_cluster(procs, tmp)
            inlet = free_port()
            db, client = start_fabric_nodes(
                procs,
                servers,
                ["--outlet", "to-source", f"{HOST}:{source_port}"],
                ["--inlet", f"{HOST}:{inlet}", "/nats/db/secure/api/service/to-source"],
            )
            print("waiting for the route over the fabric ...", file=sys.stderr, flush=True)
            wait_ready_stream(procs, inlet)
            sock = socket.create_connection((HOST, inlet))
            reader = Reader(sock)
            reader.thread.start()
            time.sleep(SETTLE)
            steady = reader.rate(time.monotonic() - SETTLE / 2, time.monotonic())
            done: list[Kill] = []
            nodes = [("inlet node", client.pid), ("outlet node", db.pid)]
            for k in range(kills):
                label, pid = nodes[k % 2]
                server = server_of(pid, servers)
                if server is None:
                    raise BenchError(f"the {label} has no connection to a NATS server now")
                t = time.monotonic()
                server.kill(procs)
                time.sleep(WINDOW)
                if reader.error:
                    raise BenchError(f"after killing {server.name}: {reader.error}")
                stall = reader.stall(t - 0.05, t + WINDOW)
                after = reader.rate(t + WINDOW / 2, t + WINDOW)
                done.append(Kill(label, server.name, stall, after))
                print(
                    f"kill {k + 1}/{kills}: {server.name} ({label}'s): stalled {stall:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
                server.restart(procs, f"{server.name}-again{k}")
                time.sleep(SETTLE)
            if reader.error:
                raise BenchError(reader.error)
            sock.close()
            return done, steady, f"{reader.position / 1e6:,.0f} MB checked"
        finally:
            stop.set()
            procs.close()


def wait_ready_stream(procs: Processes, port: int) -> None:
    """Until a connection through the inlet delivers the pattern's first bytes."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        procs.check()
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                got = b""
                while len(got) < 256:
                    chunk = s.recv(256 - len(got))
                    if not chunk:
                        break
                    got += chunk
                if got == PATTERN[:256]:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError("no stream through the inlet after 30 s")


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=8, help="servers to kill, in turn (default 8)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args()
    if args.kills < 1:
        p.error("--kills must be at least 1")
    with signals_exit():
        try:
            kills, steady, checked = run(args.kills)
        except BenchError as e:
            print(f"fabric bench failed: {e}", file=sys.stderr)
            return 1
    stalls = [k.stall for k in kills]
    p50, p99, worst = percentile(stalls, 0.5), percentile(stalls, 0.99), max(stalls)
    print(
        markdown_table(
            ["Kill", "Server", "Node", "Stall, s", "MB/s after"],
            [
                [str(i + 1), k.server, k.node, f"{k.stall:.2f}", f"{k.recovered_mb_s:.1f}"]
                for i, k in enumerate(kills)
            ],
            "rllrr",
        )
    )
    print()
    print(f"session: survived all {len(kills)} kills; {checked}, every byte in place")
    print(f"steady throughput before the kills: {steady:.1f} MB/s (one session, download)")
    print(
        f"stall: p50 {p50:.2f} s, p99 {p99:.2f} s, max {worst:.2f} s "
        f"(goal < {STALL_GOAL:g} s: {'met' if p99 < STALL_GOAL else 'NOT met'})"
    )
    if args.json:
        print(json.dumps({"kills": [asdict(k) for k in kills], "p50": p50, "p99": p99}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
