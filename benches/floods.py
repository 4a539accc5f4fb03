"""Flood benchmark: what each class of flood costs a tether node, and what its legitimate clients
see meanwhile.

Run from the repository root, in the project's virtualenv::

    python benches/floods.py                  # every flood, 5 s each (about 75 s on 2 cores)
    python benches/floods.py --quick          # 2 s each (about 40 s)
    python benches/floods.py --only hello-slots,handshakes --duration 10
    python benches/floods.py --json           # also floods.json next to floods.md
    python benches/floods.py --dataplane python   # the victim without the Rust data plane

For each flood, a fresh *victim* node runs in its own process (``flood_victim.py victim``: an
identity, so a secure-channel listener at ``api``; ``echo``; a TCP listener; the default caps),
and a *legitimate client* in another (``flood_victim.py client``) keeps a secure channel to it
(``trust=trust_identifiers(victim)``). The client sends a 64-byte echo through its channel every
5 ms, one at a time, and every 0.25 s opens a *fresh* channel on a new TCP connection and gets
one echo through it; each is bounded by ``--timeout`` (a late reply is a failure, reported as
such). That runs BEFORE the flood (the baseline), DURING it and AFTER it; meanwhile the victim's
RSS (``VmRSS``), open descriptors (``/proc/PID/fd``) and CPU time are read from ``/proc``, and
the victim reports its counters (``node.counters``, half-open handshakes, the ``api`` listener,
bytes queued toward peers, events waiting for Python) and how long its event loop was busy
without a break (*stall*: its own 50 ms probe) every 0.25 s.

The attackers are raw sockets in this process (threads), speaking the wire format written out by
hand below: no tether code on the attacking side. They connect from 127.0.0.2 and up, so they
are other sources than the client (127.0.0.1). The floods:

* ``hello-slots``: silent connections (never a hello) from 16 addresses, re-opened as soon as the
  node closes them;
* ``link-slots``: 1,100 connections from 10 addresses that do the hello, then send only
  keepalives (re-opened when the node drops them);
* ``handshakes``: first secure-channel handshake messages (``HS1``: 32 random bytes) to ``api``
  as fast as 40 links can send them;
* ``worker-wedge``: 240 KiB echo requests from 8 links that never read (tiny receive buffers),
  each link reset and re-opened when its sends stall or every 2 s;
* ``address-probe``: messages to ``sc#1..50`` (channel encryptors) and ``tcp#1..50`` (links),
  each followed by ``echo``: every one must be refused as an unknown address;
* ``connect-anywhere``: messages whose next hop is a TCP address (ports 1..65535 in turn, a
  listening canary port, ``localhost``): the node must refuse them all and connect nowhere.

The victim must survive every flood; if it dies, or if a probe is answered with data or the node
connects anywhere, the report says so in capitals and the exit status is 1. Timing never fails
the run. See ``benches/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import os
import platform
import queue
import re
import resource
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from harness import fmt_ratio, markdown_table, signals_exit
from portal import SETUP_TIMEOUT, BenchError, Processes, _die_with_parent

HOST = "127.0.0.1"
BENCHES = Path(__file__).resolve().parent
OUT_DIR = BENCHES / "out" / "floods"
MIB = 1 << 20
STATS_EVERY = 0.25
"""Seconds between the victim's stats lines."""
STATS_TIMEOUT = 3.0
"""How long the victim may take to report after a flood."""


@dataclass(frozen=True)
class Mode:
    before: float
    during: float
    after: float
    timeout: float = 2.0
    """Per legitimate echo request, and per fresh open."""


FULL = Mode(before=2.0, during=5.0, after=2.0)
QUICK = Mode(before=1.0, during=2.0, after=1.0)


# --- the wire, by hand -----------------------------------------------------------------------
# This mirrors docs/wire-format.md and deliberately uses no tether code: an attacker has only a
# socket, and a bug shared by tether's encoder and decoder must not hide from this benchmark.

HELLO = b"tether\x00\x01"
LOCAL, TCP = 0, 1  # address transport types
KIND_DATA, KIND_ERROR = 0, 1  # the first payload byte
HS1, HS2 = 1, 2  # secure-channel steps (the byte after the kind)
KEEPALIVE = b"\0\0\0\0"  # an empty frame
ATTACKER = ((LOCAL, b"attacker"),)  # the return route every attacker gives

Route = Sequence[tuple[int, bytes]]


def frame(body: bytes) -> bytes:
    """A frame: 4-byte big-endian length, then the body."""
    return struct.pack(">I", len(body)) + body


def encode_route(route: Route) -> bytes:
    """count:u8, then per address transport:u16 len:u8 value."""
    out = bytes([len(route)])
    for transport, value in route:
        out += struct.pack(">HB", transport, len(value)) + value
    return out


def message(onward: Route, payload: bytes, return_route: Route = ATTACKER) -> bytes:
    """One routed message (version 1), framed."""
    body = b"\x01" + encode_route(onward) + encode_route(return_route)
    return frame(body + struct.pack(">I", len(payload)) + payload)


def payload_of(body: bytes) -> bytes:
    """The payload of a routed message (its routes skipped)."""
    pos = 1  # the version byte
    for _ in range(2):
        count = body[pos]
        pos += 1
        for _ in range(count):
            pos += 3 + body[pos + 2]  # transport:u16, len:u8, value
    (n,) = struct.unpack_from(">I", body, pos)
    return body[pos + 4 : pos + 4 + n]


class Frames:
    """Splits a byte stream into frame bodies."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (n,) = struct.unpack_from(">I", self.buf)
            if len(self.buf) < 4 + n:
                break
            out.append(bytes(self.buf[4 : 4 + n]))
            del self.buf[: 4 + n]
        return out


def source(i: int) -> str:
    """The i-th attacker address (127.0.0.2 and up: never the client's 127.0.0.1)."""
    return f"127.0.{i // 250}.{2 + i % 250}"


def connect(
    port: int, src: str, *, hello: bool = True, rcvbuf: int = 0, timeout: float = 5.0
) -> socket.socket:
    """A blocking connection from ``src`` to the victim; with ``hello``, the hello exchanged (the
    node sends its own first, at once)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((src, 0))
        s.settimeout(timeout)
        s.connect((HOST, port))
        if hello:
            s.sendall(frame(HELLO))
            got = b""
            while len(got) < 4 + len(HELLO):
                chunk = s.recv(4 + len(HELLO) - len(got))
                if not chunk:
                    raise ConnectionError("closed during the hello")
                got += chunk
            if got != frame(HELLO):
                raise ConnectionError(f"unexpected hello {got!r}")
    except BaseException:
        s.close()
        raise
    return s


def reset(s: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): no FIN, no TIME_WAIT, whatever was unsent is dropped."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.close()


def drain(s: socket.socket, frames: Frames) -> list[bytes] | None:
    """Whatever the node has sent, without waiting; None when it has closed the connection."""
    out: list[bytes] = []
    timeout = s.gettimeout()
    s.setblocking(False)  # a socket with a timeout would wait for data, MSG_DONTWAIT or not
    try:
        while True:
            try:
                data = s.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return None
            if not data:
                return None
            out += frames.feed(data)
    finally:
        with contextlib.suppress(OSError):
            s.settimeout(timeout)


# --- floods ----------------------------------------------------------------------------------


class Flood:
    """One attack: threads that run until :meth:`stop`, counting what they did."""

    key = ""
    title = ""
    what = ""
    threads = 1
    ramp_timeout = 20.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.counts: dict[str, int] = {}
        self.samples: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._ramped = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.ramp_seconds = 0.0

    def add(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def sample(self, what: str, text: str) -> None:
        """Keep a few examples of ``what`` (report texts)."""
        with self._lock:
            texts = self.samples.setdefault(what, [])
            if len(texts) < 3 and text not in texts:
                texts.append(text)

    def ramped(self) -> None:
        """A thread has set its attack up (its connections are open)."""
        self._ramped.release()

    def open(self, src: str, *, timeout: float = 1.0, rcvbuf: int = 0) -> socket.socket | None:
        """A link to the victim (hello done within ``timeout``, which then bounds each send),
        or None (counted, after a pause) if the victim does not take it: a starved victim may
        not answer the hello in time."""
        try:
            s = connect(self.port, src, rcvbuf=rcvbuf, timeout=timeout)
        except OSError as e:
            self.add("opens failed")
            self.sample("opens failed", f"{type(e).__name__}: {e}")
            time.sleep(0.1)
            return None
        s.settimeout(timeout)
        self.add("links opened")
        return s

    def start(self) -> None:
        t0 = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"{self.key}-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        deadline = t0 + self.ramp_timeout
        for _ in range(self.threads):
            if not self._ramped.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self.errors.append(f"not set up after {self.ramp_timeout:g} s")
                break
        self.ramp_seconds = time.monotonic() - t0

    def _run(self, i: int) -> None:
        try:
            self.attack(i)
        except Exception as e:  # reported, never hidden
            self.errors.append(f"thread {i}: {type(e).__name__}: {e}")
            self.ramped()

    def attack(self, i: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join(10)
            if t.is_alive():
                self.errors.append(f"{t.name} did not stop")

    def finish(self) -> None:
        """After the after phase: whatever watched the victim beyond the flood stops."""

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def check(self, peaks: dict[str, int]) -> list[str]:
        """Security findings (a probe answered, a connection made), given the peaks of the
        victim's figures during the flood: empty when all is well."""
        return []


class HelloSlots(Flood):
    key = "hello-slots"
    title = "hello-slot lockout"
    sources = 16
    per_source = 12
    threads = 4
    what = (
        f"{sources * per_source} silent TCP connections (no hello) from {sources} addresses, "
        f"{per_source} each, every one re-opened as soon as the node closes it"
    )

    def attack(self, i: int) -> None:
        mine = [source(k) for k in range(self.sources) if k % self.threads == i]
        slots: dict[int, tuple[str, socket.socket | None]] = {}
        for n, src in enumerate(s for s in mine for _ in range(self.per_source)):
            slots[n] = (src, None)
        with selectors.DefaultSelector() as sel:

            def open_slot(n: int) -> None:
                src = slots[n][0]
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind((src, 0))
                except OSError as e:
                    s.close()
                    self.add(f"could not bind ({errno.errorcode.get(e.errno or 0, e)})")
                    return
                s.setblocking(False)
                err = s.connect_ex((HOST, self.port))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    self.add(f"connect failed ({errno.errorcode.get(err, err)})")
                    return
                self.add("connections opened")
                slots[n] = (src, s)
                sel.register(s, selectors.EVENT_READ, n)

            for n in slots:
                open_slot(n)
            self.ramped()
            while not self.stopping.is_set():
                for n, (_, s) in slots.items():
                    if s is None:
                        open_slot(n)
                for key, _ in sel.select(0.05):
                    n, s = key.data, key.fileobj
                    assert isinstance(s, socket.socket)
                    try:
                        data = s.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        continue  # the node's hello: never answered
                    self.add("closed by the node")
                    sel.unregister(s)
                    s.close()
                    slots[n] = (slots[n][0], None)
                if all(s is None for _, s in slots.values()):
                    time.sleep(0.001)  # nothing could be opened: do not spin
            for _, s in slots.values():
                if s is not None:
                    reset(s)


class LinkSlots(Flood):
    key = "link-slots"
    title = "link-slot lockout"
    total = 1100
    sources = 10
    threads = sources
    keepalive = 1.0
    what = (
        f"{total} connections from {sources} addresses that do the hello, then send only a "
        f"keepalive every {keepalive:g} s; each re-opened when the node drops it"
    )

    def attack(self, i: int) -> None:
        src = source(i)
        n = self.total // self.sources + (1 if i < self.total % self.sources else 0)
        links: list[socket.socket] = []

        def open_one() -> None:
            try:
                s = connect(self.port, src)
                s.setblocking(False)
                links.append(s)
                self.add("links opened (hello done)")
            except OSError as e:
                self.add("opens refused or failed")
                self.sample("opens refused or failed", f"{type(e).__name__}: {e}")

        for _ in range(n):
            if self.stopping.is_set():
                break
            open_one()
        self.ramped()
        next_keepalive = time.monotonic()
        with selectors.DefaultSelector() as sel:
            for s in links:
                sel.register(s, selectors.EVENT_READ)
            while not self.stopping.is_set():
                if time.monotonic() >= next_keepalive:
                    next_keepalive += self.keepalive
                    for s in links:
                        with contextlib.suppress(OSError):
                            s.send(KEEPALIVE)
                    self.add("keepalives sent", len(links))
                for key, _ in sel.select(0.05):
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    try:
                        data = s.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        continue  # the node's keepalives
                    self.add("dropped by the node")
                    sel.unregister(s)
                    links.remove(s)
                    s.close()
                while len(links) < n and not self.stopping.is_set():
                    before = len(links)
                    open_one()
                    if len(links) == before:
                        time.sleep(0.01)
                        break
                    sel.register(links[-1], selectors.EVENT_READ)
        for s in links:
            reset(s)


class Handshakes(Flood):
    key = "handshakes"
    title = "handshake flood"
    links_per_thread = 10
    threads = 4
    batch = 16
    what = (
        f"first handshake messages (HS1: 32 random bytes) to `api`, {batch} per write, as fast "
        f"as {links_per_thread * threads} links from 5 addresses can send them (replies drained)"
    )

    def attack(self, i: int) -> None:
        def src(k: int) -> str:
            return source((i * self.links_per_thread + k) % 5)

        links = [(self.open(src(k)), Frames()) for k in range(self.links_per_thread)]
        self.ramped()
        api = ((LOCAL, b"api"),)
        while not self.stopping.is_set():
            for k, (s, frames) in enumerate(links):
                if s is None:
                    links[k] = (self.open(src(k)), Frames())
                    continue
                keys = os.urandom(32 * self.batch)
                batch = b"".join(
                    message(api, bytes([KIND_DATA, HS1]) + keys[32 * j : 32 * j + 32])
                    for j in range(self.batch)
                )
                try:
                    s.sendall(batch)
                    self.add("HS1 sent", self.batch)
                    got = drain(s, frames)
                except TimeoutError:  # part of a frame may be out: this link is done
                    got = None
                    self.add("sends stalled 1 s (links reset)")
                except OSError:
                    got = None
                    self.add("links closed by the node")
                if got is None:
                    reset(s)
                    links[k] = (None, Frames())
                    continue
                for body in got:
                    p = payload_of(body)
                    if p[:2] == bytes([KIND_DATA, HS2]):
                        self.add("HS2 answers")
                    elif p[:1] == bytes([KIND_ERROR]):
                        self.add("error reports")
                        self.sample("error reports", p[1:].decode("utf-8", "replace"))
                    else:
                        self.add("other replies")
        for s, _ in links:
            if s is not None:
                reset(s)


class WorkerWedge(Flood):
    key = "worker-wedge"
    title = "worker wedge"
    links = 8
    threads = links
    size = 240 * 1024
    cycle = 2.0
    what = (
        f"{size // 1024} KiB echo requests from {links} links that never read (4 KiB receive "
        f"buffers); each link reset and re-opened when a send stalls 1 s, or after {cycle:g} s"
    )

    def attack(self, i: int) -> None:
        request = message(((LOCAL, b"echo"),), bytes([KIND_DATA]) + os.urandom(self.size))
        first = True
        while not self.stopping.is_set():
            s = self.open(source(i), rcvbuf=4096)
            if first:
                first = False
                self.ramped()
            if s is None:
                continue
            end = time.monotonic() + self.cycle
            try:
                while time.monotonic() < end and not self.stopping.is_set():
                    s.sendall(request)
                    self.add("requests sent")
            except TimeoutError:
                self.add("sends stalled 1 s")
            except OSError:
                self.add("closed by the node")
            reset(s)
            self.add("links reset")


class _Probing(Flood):
    """Links that send batches of probe messages and classify every answer."""

    threads = 4
    refusal = ""  # the start of the expected report text

    def batch(self, n: int) -> tuple[bytes, int]:
        raise NotImplementedError

    def attack(self, i: int) -> None:
        s = self.open(source(i))
        frames = Frames()
        self.ramped()
        n = 0
        while not self.stopping.is_set():
            if s is None:
                s, frames = self.open(source(i)), Frames()
                continue
            data, count = self.batch(n)
            n += 1
            try:
                s.sendall(data)
                self.add("probes sent", count)
                got = drain(s, frames)
            except TimeoutError:  # part of a frame may be out: this link is done
                self.add("sends stalled 1 s (links reset)")
                got = None
            except OSError:
                self.add("links closed by the node")
                got = None
            if got is None:
                reset(s)
                s = None
                continue
            self.classify(got)
        if s is None:
            return
        deadline = time.monotonic() + 0.3  # the answers still on their way
        with contextlib.suppress(OSError):
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                data = s.recv(1 << 16)
                if not data:
                    break
                self.classify(frames.feed(data))
        reset(s)

    def classify(self, bodies: list[bytes]) -> None:
        for body in bodies:
            p = payload_of(body)
            text = p[1:].decode("utf-8", "replace")
            if p[:1] == bytes([KIND_ERROR]) and text.startswith(self.refusal):
                self.add("refused")
                self.sample("refused", text)
            elif p[:1] == bytes([KIND_ERROR]):
                self.add("other reports")
                self.sample("other reports", text)
            else:
                self.add("ANSWERED WITH DATA")
                self.sample("ANSWERED WITH DATA", repr(p[:60]))

    def check(self, peaks: dict[str, int]) -> list[str]:
        out = []
        if self.counts.get("ANSWERED WITH DATA"):
            out.append(f"{self.counts['ANSWERED WITH DATA']} probes were answered with data")
        return out


class AddressProbe(_Probing):
    key = "address-probe"
    title = "channel-address injection, link-address probing"
    refusal = "no worker '"
    what = (
        "batches of 100 messages to `sc#1..50` (channel encryptors) and `tcp#1..50` (links), "
        "each then to `echo`, from 4 links; every one must be refused as an unknown address"
    )

    def batch(self, n: int) -> tuple[bytes, int]:
        echo = (LOCAL, b"echo")
        out = [
            message(((LOCAL, f"{prefix}#{k}".encode()), echo), bytes([KIND_DATA]) + b"probe")
            for prefix in ("sc", "tcp")
            for k in range(1, 51)
        ]
        return b"".join(out), len(out)


class ConnectAnywhere(_Probing):
    key = "connect-anywhere"
    title = "connect-anywhere"
    refusal = "node victim opens connections only for its own callers"
    what = (
        "batches of 100 messages whose next hop is a TCP address (127.0.0.1, ports 1..65535 in "
        "turn; a listening canary port; `localhost`), then `echo`, from 4 links; the node must "
        "refuse all and connect nowhere"
    )

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.canary = socket.create_server((HOST, 0))
        self.canary.settimeout(0.05)
        self.canary_port = self.canary.getsockname()[1]
        self.accepted = 0
        self._closing = threading.Event()  # the canary listens until the after phase is over
        self._canary_thread = threading.Thread(target=self._watch, daemon=True)
        self._canary_thread.start()

    def _watch(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self.canary.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def batch(self, n: int) -> tuple[bytes, int]:
        echo = (LOCAL, b"echo")
        hops = [f"127.0.0.1:{1 + (n * 98 + k) % 65535}" for k in range(98)]
        hops += [f"127.0.0.1:{self.canary_port}", f"localhost:{self.canary_port}"]
        out = [message(((TCP, h.encode()), echo), bytes([KIND_DATA]) + b"probe") for h in hops]
        return b"".join(out), len(out)

    def finish(self) -> None:
        self._closing.set()
        self._canary_thread.join(2)
        self.canary.close()
        self.add("canary connections accepted (until the after phase ended)", self.accepted)

    def check(self, peaks: dict[str, int]) -> list[str]:
        out = super().check(peaks)
        if self.accepted:
            out.append(f"the victim connected to the canary port {self.accepted} times")
        if peaks.get("outgoing"):
            out.append(f"the victim opened {peaks['outgoing']} outgoing connections")
        return out


FLOODS: dict[str, type[Flood]] = {
    f.key: f
    for f in (HelloSlots, LinkSlots, Handshakes, WorkerWedge, AddressProbe, ConnectAnywhere)
}


# --- the victim and the legitimate client ----------------------------------------------------


class Lines:
    """The lines a child writes on a pipe, read by a thread: each goes to ``on_line`` (which
    returns True when it took it), the others into a queue."""

    def __init__(self, out: IO[bytes], on_line: Callable[[str], bool] | None = None) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self._out = out
        self._on_line = on_line
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._out.fileno(), 1 << 16)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                self.queue.put(None)
                return
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace")
                if self._on_line is None or not self._on_line(line):
                    self.queue.put(line)

    def expect(self, prefix: str, timeout: float) -> str | None:
        """The rest of the next line that starts with ``prefix`` (others are skipped); None if
        none comes within ``timeout`` or the pipe closes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if line is None:
                self.queue.put(None)
                return None
            if line.startswith(prefix):
                return line[len(prefix) :].strip()


class Victim:
    """The victim process: its ``stats`` lines (kept with the time they arrived) and what
    ``/proc`` says about it."""

    def __init__(self, proc: subprocess.Popen[bytes], info: dict[str, Any], log: Path) -> None:
        self.proc = proc
        self.info = info
        self.pid = int(info["pid"])
        self.log = log
        self.history: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        assert proc.stdout is not None
        self.lines = Lines(proc.stdout, self._on_line)

    def _on_line(self, line: str) -> bool:
        if not line.startswith("stats "):
            return False
        try:
            stats = json.loads(line[len("stats ") :])
        except ValueError:
            return False
        with self._cond:
            self.history.append((time.monotonic(), stats))
            self._cond.notify_all()
        return True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def latest(self) -> dict[str, Any] | None:
        with self._cond:
            return self.history[-1][1] if self.history else None

    def stats_after(self, t: float, timeout: float) -> dict[str, Any] | None:
        """The first stats line that arrives after ``t`` (None if none within ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, s in self.history:
                    if at > t:
                        return s
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    return None
                self._cond.wait(min(left, 0.1))

    def between(self, t0: float, t1: float) -> list[tuple[float, dict[str, Any]]]:
        with self._cond:
            return [(at, s) for at, s in self.history if t0 <= at <= t1]

    def rss(self) -> int | None:
        """Resident set size in bytes (VmRSS)."""
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def fds(self) -> int | None:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None

    def cpu(self) -> float | None:
        """CPU seconds (user + system) so far."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return None
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> list[str]:
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a second: a victim still chewing through a backlog
        need not be waited for."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(1)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


def start_victim(procs: Processes, dataplane: str) -> Victim:
    argv = [
        sys.executable,
        str(BENCHES / "flood_victim.py"),
        "victim",
        "--dataplane",
        dataplane,
        "--stats-every",
        str(STATS_EVERY),
    ]
    proc, rest = procs.start("victim", argv, ready_line=True)
    return Victim(proc, json.loads(rest), procs.tmp / "victim.log")


class Client:
    """The legitimate client process, driven line by line on its stdin."""

    def __init__(self, procs: Processes, victim: Victim, timeout: float) -> None:
        argv = [
            sys.executable,
            str(BENCHES / "flood_victim.py"),
            "client",
            "--port",
            str(victim.info["port"]),
            "--identifier",
            victim.info["identifier"],
            "--timeout",
            str(timeout),
            "--open-timeout",
            str(timeout),
        ]
        self.procs = procs
        with open(procs.tmp / "client.log", "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=procs.tmp,
                preexec_fn=_die_with_parent,  # no threads yet that this could upset
                process_group=0,
            )
        procs.started.append(("client", self.proc))
        assert self.proc.stdout is not None
        self.lines = Lines(self.proc.stdout)
        if self.lines.expect("ready", SETUP_TIMEOUT) is None:
            raise BenchError(f"the client did not start\n{procs.log_tail('client')}")

    def run(self, seconds: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"run {seconds}\n".encode())
            self.proc.stdin.flush()
        except OSError as e:
            raise BenchError(f"the client is gone: {e}\n{self.procs.log_tail('client')}") from e
        line = self.lines.expect("result", seconds + 30)
        if line is None:
            raise BenchError(
                f"the client did not report after {seconds + 30:g} s\n"
                f"{self.procs.log_tail('client')}"
            )
        return dict(json.loads(line))


class Sampler:
    """The victim's RSS and descriptors, read every 0.1 s while a phase runs (peaks)."""

    def __init__(self, victim: Victim) -> None:
        self.victim = victim
        self.peak_rss = 0
        self.peak_fds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, self.victim.rss() or 0)
            self.peak_fds = max(self.peak_fds, self.victim.fds() or 0)
            if self._stop.wait(0.1):
                return


# --- one flood, three phases -----------------------------------------------------------------


PEAKS = (
    "links",
    "links_in_hello",
    "pending_handshakes",
    "workers",
    "channels",
    "outgoing",
    "queued_out",
    "queued_out_top",
    "events_waiting",
)
"""Figures of the victim's stats lines whose peak each phase reports."""


@dataclass
class Phase:
    name: str
    seconds: float
    wall: float
    client: dict[str, Any]
    rss: int | None
    """At the end of the phase (bytes)."""
    fds: int | None
    peak_rss: int
    peak_fds: int
    cpu_busy: float | None
    """The victim's CPU seconds per second of the phase."""
    attacker_busy: float
    """This process's CPU seconds per second (the attackers' threads, during a flood)."""
    stall: float
    """The longest the victim's event loop was busy without a break (its own probe, and the
    gaps between its stats lines)."""
    peaks: dict[str, int]
    stats_lines: int
    log_lines: list[str]
    """What the victim logged during the phase (warnings)."""


@dataclass
class FloodResult:
    key: str
    title: str
    what: str
    dataplane: str
    phases: dict[str, Phase] = field(default_factory=dict)
    attacker: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    """The victim's counters that grew during the flood (delta)."""
    listener: dict[str, Any] = field(default_factory=dict)
    """The ``api`` listener's figures after the flood."""
    ramp_seconds: float = 0.0
    died: str | None = None
    findings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    caps: dict[str, Any] = field(default_factory=dict)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _rusage_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(name: str, seconds: float, victim: Victim, client: Client) -> Phase:
    t0, cpu0, log0, me0 = time.monotonic(), victim.cpu(), victim.log_size(), _rusage_cpu()
    with Sampler(victim) as sampler:
        result = client.run(seconds)
    t1 = time.monotonic()
    wall = t1 - t0
    cpu1 = victim.cpu()
    lines = victim.between(t0, t1)
    times = [t0, *(at for at, _ in lines), t1]
    gaps = max(b - a for a, b in itertools.pairwise(times)) - STATS_EVERY
    reported = max((s.get("stall", 0.0) for _, s in lines), default=0.0)
    peaks = {k: max((int(s.get(k, 0)) for _, s in lines), default=0) for k in PEAKS}
    return Phase(
        name,
        seconds,
        wall,
        result,
        victim.rss(),
        victim.fds(),
        max(sampler.peak_rss, victim.rss() or 0),
        max(sampler.peak_fds, victim.fds() or 0),
        None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall,
        (_rusage_cpu() - me0) / wall,
        max(0.0, gaps, reported),
        peaks,
        len(lines),
        victim.log_since(log0),
    )


def _died(victim: Victim, procs: Processes, when: str) -> str | None:
    if victim.alive():
        return None
    return (
        f"THE VICTIM DIED {when} (exit status {victim.proc.returncode})\n"
        f"{procs.log_tail('victim', 25)}"
    )


def run_flood(kind: type[Flood], mode: Mode, dataplane: str) -> FloodResult:
    res = FloodResult(kind.key, kind.title, kind.what, dataplane)
    with tempfile.TemporaryDirectory(prefix="tether-floods-") as tmp:
        procs = Processes(Path(tmp))
        victim: Victim | None = None
        flood: Flood | None = None
        try:
            victim = start_victim(procs, dataplane)
            res.caps = victim.info["caps"]
            client = Client(procs, victim, mode.timeout)
            res.phases["before"] = measure("before", mode.before, victim, client)
            first = victim.latest()
            flood = kind(victim.info["port"])
            _progress(f"  {kind.key}: flooding for {mode.during:g} s")
            try:
                flood.start()
                res.ramp_seconds = flood.ramp_seconds
                res.phases["during"] = measure("during", mode.during, victim, client)
            finally:
                flood.stop()
                flooded = time.monotonic()
            res.died = _died(victim, procs, "during the flood")
            last = victim.stats_after(flooded, STATS_TIMEOUT)
            during = res.phases["during"]
            if last is not None:  # its first report after the flood counts for the flood
                for k in PEAKS:
                    during.peaks[k] = max(during.peaks[k], int(last.get(k, 0)))
                during.stats_lines += 1
            elif res.died is None:
                res.errors.append(
                    f"the victim reported nothing for {STATS_TIMEOUT:g} s after the flood: its "
                    "counters are from its last report"
                )
                last = victim.latest()
            if first is not None and last is not None:
                before_c, after_c = first.get("counters", {}), last.get("counters", {})
                res.counters = {
                    k: v - before_c.get(k, 0)
                    for k, v in sorted(after_c.items())
                    if v != before_c.get(k, 0)
                }
                res.listener = last.get("listener") or {}
            if res.died is None:
                res.phases["after"] = measure("after", mode.after, victim, client)
                res.died = _died(victim, procs, "after the flood")
        except BenchError:
            # the client failing is an error of the run; the victim dying is the finding
            died = None if victim is None else _died(victim, procs, "(the client gave up)")
            if died is None:
                raise
            res.died = died
        finally:
            if flood is not None:
                flood.finish()
                res.attacker, res.samples = flood.snapshot(), flood.samples
                res.errors = flood.errors + res.errors
                seen = [p.peaks for name, p in res.phases.items() if name != "before"]
                peaks = {k: max((p[k] for p in seen), default=0) for k in PEAKS}
                res.findings = flood.check(peaks)
            if victim is not None:
                victim.stop()
            procs.close()
    return res


# --- report ----------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.2f}"


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / MIB:.1f}"


def _failed(client: dict[str, Any], total: str, ok: str, failures: str) -> str:
    n, good = client[total], client[ok]
    text = f"{n - good}/{n}"
    if client[failures]:
        reasons = ", ".join(f"{v} {k}" for k, v in sorted(client[failures].items()))
        text += f" ({reasons})"
    return text


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    return fmt_ratio(a / b)


def phase_rows(results: Sequence[FloodResult]) -> list[list[str]]:
    rows = []
    for r in results:
        for name, p in r.phases.items():
            c = p.client
            lat, opens = c["latency_s"] or {}, c["open_s"] or {}
            rows.append(
                [
                    r.key if name == "before" else "",
                    name,
                    _ms(lat.get("median")),
                    _ms(lat.get("p99")),
                    _ms(lat.get("max")),
                    _failed(c, "requests", "ok", "failures"),
                    _ms(opens.get("median")),
                    _failed(c, "opens", "opens_ok", "open_failures"),
                    _mib(p.peak_rss),
                    str(p.peak_fds),
                    "-" if p.cpu_busy is None else f"{p.cpu_busy:.2f}",
                    _ms(p.stall),
                    str(len(p.log_lines)),
                ]
            )
    return rows


def ratio_rows(results: Sequence[FloodResult]) -> list[list[str]]:
    rows = []
    for r in results:
        b, d = r.phases.get("before"), r.phases.get("during")
        if b is None or d is None:
            rows.append([r.key, "-", "-", "-", "-", "-", "-", "-", "DIED" if r.died else "?"])
            continue
        bl, dl = b.client["latency_s"] or {}, d.client["latency_s"] or {}
        bo, do = b.client["open_s"] or {}, d.client["open_s"] or {}
        a = r.phases.get("after")
        rows.append(
            [
                r.key,
                _ratio(dl.get("median"), bl.get("median")),
                _ratio(dl.get("p99"), bl.get("p99")),
                _ratio(do.get("median"), bo.get("median")),
                _ratio(d.peak_rss, b.peak_rss),
                _ratio(d.peak_fds, b.peak_fds),
                "-" if a is None else _ratio(a.rss, b.peak_rss),
                "-"
                if a is None
                else _ratio((a.client["latency_s"] or {}).get("median"), bl.get("median")),
                "DIED" if r.died else "alive",
            ]
        )
    return rows


_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")


def _grouped(counters: dict[str, int]) -> dict[str, int]:
    """Counters with the addresses in their names folded together (``<addr>``)."""
    out: dict[str, int] = {}
    for k, v in counters.items():
        g = _ADDRESS.sub("<addr>", k)
        out[g] = out.get(g, 0) + v
    return out


def _counts(d: dict[str, int]) -> str:
    return "; ".join(f"{k}: {v:,}" for k, v in d.items()) or "-"


def attack_rows(results: Sequence[FloodResult]) -> list[list[str]]:
    rows = []
    for r in results:
        d = r.phases.get("during")
        victim = "-"
        if d is not None and not d.stats_lines:
            victim = "no report: its event loop never got to it"
        elif d is not None:
            pk = d.peaks
            victim = (
                f"links {pk['links']:,} ({pk['links_in_hello']} in hello); half-open "
                f"handshakes {pk['pending_handshakes']}; workers {pk['workers']}; outgoing "
                f"{pk['outgoing']}; queued toward peers {_mib(pk['queued_out'])} MiB (one link: "
                f"{_mib(pk['queued_out_top'])}); events waiting for Python "
                f"{pk['events_waiting']:,} ({d.stats_lines} reports)"
            )
        if r.listener:
            victim += "; `api` after: " + ", ".join(
                f"{k} {r.listener[k]:,}"
                for k in ("accepted", "refused", "dropped")
                if isinstance(r.listener.get(k), int)
            )
        counters = _counts(_grouped(r.counters))
        if len(r.counters) > len(_grouped(r.counters)):
            counters += f" ({len(r.counters)} distinct counter names)"
        rows.append([r.key, _counts(r.attacker), counters, victim])
    return rows


_NUMBERS = re.compile(r"\d+(\.\d+)*")


def log_patterns(lines: Sequence[str], top: int = 2) -> list[tuple[str, int]]:
    """The most frequent log lines, numbers and addresses folded together."""
    counts: dict[str, int] = {}
    for line in lines:
        k = _NUMBERS.sub("N", line)[:160]
        counts[k] = counts.get(k, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])[:top]


def environment() -> dict[str, str]:
    import tether

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": f"{model} ({os.cpu_count()} logical CPUs)",
        "tether": f"{tether.__version__}, {_source_state()}",
    }


def _source_state() -> str:
    """The commit measured, and whether the library's sources differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=BENCHES.parent, capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--", "python", "rust")
    except (OSError, subprocess.TimeoutExpired):
        return "source state unknown"
    if not commit:
        return "not a git checkout"
    n = len(dirty.splitlines())
    return f"commit {commit}" + (
        f" + uncommitted changes to {n} files under python/, rust/" if n else ""
    )


def _load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def markdown(
    results: Sequence[FloodResult], mode: Mode, mode_name: str, env: dict[str, str], wall: float
) -> str:
    out = ["# Floods against one tether node", ""]
    out += [f"- {k}: {v}" for k, v in env.items()]
    out += [
        f"- mode: {mode_name}: {mode.before:g} s before, {mode.during:g} s of flood, "
        f"{mode.after:g} s after; timeout {mode.timeout:g} s; {wall:.0f} s in all; load average "
        f"{_load_average()}",
        "",
    ]
    died = [r for r in results if r.died]
    findings = [(r, f) for r in results for f in r.findings]
    if died or findings:
        out += ["## FAILURES", ""]
        out += [f"- **{r.key}**: {r.died}" for r in died]
        out += [f"- **{r.key}: {f}**" for r, f in findings]
        out.append("")
    caps = next((r.caps for r in results if r.caps), {})
    if caps:
        out += [
            "## The victim's caps in force",
            "",
            markdown_table(["Cap", "Value"], [[k, str(v)] for k, v in caps.items()], right="lr"),
            "",
        ]
    out += [
        "## What the legitimate client saw",
        "",
        f"*Echo*: 64-byte requests through the client's secure channel, one every 5 ms, each "
        f"bounded by the {mode.timeout:g} s timeout (a late reply is a failure). *Open*: a new "
        "TCP connection, a new secure channel and one echo through it, every 0.25 s, bounded "
        "alike. *RSS*, *FDs*: the victim's peak in the phase (sampled every 0.1 s). *CPU*: the "
        "victim's CPU seconds per second. *Stall*: the longest the victim's event loop ran "
        "without a break (its own 50 ms probe, and the gaps between its reports). "
        "*Log*: lines the victim logged (warnings).",
        "",
        markdown_table(
            [
                "Flood",
                "Phase",
                "Echo median ms",
                "p99 ms",
                "max ms",
                "Echo failed",
                "Open median ms",
                "Opens failed",
                "RSS MiB",
                "FDs",
                "CPU",
                "Stall ms",
                "Log",
            ],
            phase_rows(results),
            right="llrrrlrlrrrrr",
        ),
        "",
        "## During / before",
        "",
        "Ratios of the flood phase to the baseline just before it, same victim (RSS and FDs: "
        "peaks). *RSS after*: at the end of the after phase; *Echo after*: the after phase's "
        "median echo.",
        "",
        markdown_table(
            [
                "Flood",
                "Echo median",
                "Echo p99",
                "Open median",
                "RSS",
                "FDs",
                "RSS after",
                "Echo after",
                "Victim",
            ],
            ratio_rows(results),
            right="lrrrrrrrl",
        ),
        "",
        "## What the attackers did, and how the victim answered",
        "",
    ]
    for r in results:
        out.append(f"- **{r.key}** ({r.title}, {r.dataplane} data plane): {r.what}.")
    out += [
        "",
        "*Victim during*: peaks of its own reports (every 0.25 s when its event loop lets it) "
        "during the flood and the first one after it.",
        "",
        markdown_table(
            ["Flood", "Attackers (counts)", "Victim's counters (growth)", "Victim during"],
            attack_rows(results),
            right="llll",
        ),
        "",
    ]
    notes = []
    for r in results:
        for what, texts in r.samples.items():
            notes += [f"- {r.key}, {what}: `{t}`" for t in texts[:1]]
        notes += [f"- {r.key}: {e}" for e in r.errors]
        if r.ramp_seconds >= 1.0:
            notes.append(f"- {r.key}: the attack took {r.ramp_seconds:.1f} s to set up")
        d = r.phases.get("during")
        for line, n in log_patterns(d.log_lines if d else []):
            notes.append(f"- {r.key}, logged {n:,} times during the flood: `{line}`")
    if notes:
        out += ["Answers, log lines and notes:", "", *notes, ""]
    return "\n".join(out)


def document(
    results: Sequence[FloodResult], mode: Mode, mode_name: str, env: dict[str, str], wall: float
) -> dict[str, Any]:
    def phase(p: Phase) -> dict[str, Any]:
        return {
            "seconds": p.seconds,
            "wall_seconds": p.wall,
            "client": p.client,
            "rss_bytes": p.rss,
            "fds": p.fds,
            "peak_rss_bytes": p.peak_rss,
            "peak_fds": p.peak_fds,
            "victim_cpu_busy": p.cpu_busy,
            "attacker_cpu_busy": p.attacker_busy,
            "victim_stall_seconds": p.stall,
            "victim_peaks": p.peaks,
            "victim_stats_lines": p.stats_lines,
            "victim_log_lines": len(p.log_lines),
            "victim_log_top": log_patterns(p.log_lines, 5),
        }

    return {
        "benchmark": "floods",
        "mode": mode_name,
        "durations": {"before": mode.before, "during": mode.during, "after": mode.after},
        "timeout": mode.timeout,
        "environment": env,
        "wall_seconds": wall,
        "floods": [
            {
                "key": r.key,
                "title": r.title,
                "what": r.what,
                "dataplane": r.dataplane,
                "caps": r.caps,
                "phases": {k: phase(p) for k, p in r.phases.items()},
                "attacker": r.attacker,
                "answers": r.samples,
                "victim_counters": r.counters,
                "victim_listener": r.listener,
                "ramp_seconds": r.ramp_seconds,
                "died": r.died,
                "findings": r.findings,
                "errors": r.errors,
            }
            for r in results
        ],
    }


def summary(results: Sequence[FloodResult]) -> str:
    """The short table for stdout: one row per flood."""
    rows = []
    for r, ratios in zip(results, ratio_rows(results), strict=True):
        d = r.phases.get("during")
        c = d.client if d else None
        lat = (c or {}).get("latency_s") or {}
        rows.append(
            [
                r.key if len({x.dataplane for x in results}) == 1 else f"{r.key} ({r.dataplane})",
                _ms(lat.get("median")),
                _ms(lat.get("p99")),
                _failed(c, "requests", "ok", "failures").split(" ")[0] if c else "-",
                _failed(c, "opens", "opens_ok", "open_failures").split(" ")[0] if c else "-",
                _mib(d.peak_rss) if d else "-",
                _ms(d.stall) if d else "-",
                *ratios[1:8],
                ratios[8],
            ]
        )
    return markdown_table(
        [
            "Flood",
            "Echo ms",
            "p99 ms",
            "Failed",
            "Opens failed",
            "RSS MiB",
            "Stall ms",
            "Echo x",
            "p99 x",
            "Open x",
            "RSS x",
            "FDs x",
            "RSS after x",
            "Echo after x",
            "Victim",
        ],
        rows,
        right="lrrllrrrrrrrrrl",
    )


# --- command line ----------------------------------------------------------------------------


def _raise_nofile() -> None:
    """The link-slot flood holds 1,100 sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python benches/floods.py --quick\n"
        "  python benches/floods.py --only handshakes,worker-wedge --duration 10 --json\n"
        "  python benches/floods.py --quick --dataplane both",
    )
    parser.add_argument("--quick", action="store_true", help="2 s floods, 1 s before and after")
    parser.add_argument("--duration", type=float, help="seconds of each flood (default 5; 2)")
    parser.add_argument(
        "--only",
        metavar="KEYS",
        help=f"comma-separated floods to run, of {','.join(FLOODS)} (default: all)",
    )
    parser.add_argument(
        "--dataplane",
        choices=["rust", "python", "both"],
        default="rust",
        help="the victim's data plane (default rust; both: every flood twice)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="per legitimate echo request and per fresh open (default 2 s)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the results")
    parser.add_argument(
        "--json",
        nargs="?",
        type=Path,
        const=True,
        metavar="PATH",
        help="also write JSON (to PATH, default OUT/floods.json)",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    mode = Mode(base.before, args.duration or base.during, base.after, args.timeout)
    if mode.during <= 0 or mode.timeout <= 0:
        parser.error("--duration and --timeout must be positive")
    keys = list(FLOODS) if not args.only else [k.strip() for k in args.only.split(",")]
    unknown = [k for k in keys if k not in FLOODS]
    if unknown or not keys:
        parser.error(f"unknown floods {unknown}: choose from {','.join(FLOODS)}")
    planes = ["rust", "python"] if args.dataplane == "both" else [args.dataplane]
    _raise_nofile()

    env = environment()
    start = time.monotonic()
    results: list[FloodResult] = []
    try:
        with signals_exit():
            for plane in planes:
                for key in keys:
                    _progress(f"{key} ({plane} data plane)")
                    r = run_flood(FLOODS[key], mode, plane)
                    if r.died:
                        _progress(f"!!! {r.died}")
                    results.append(r)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: all child processes stopped", file=sys.stderr)
        return 130
    wall = time.monotonic() - start
    mode_name = "quick" if args.quick else "full"
    text = markdown(results, mode, mode_name, env, wall)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "floods.md").write_text(text, encoding="utf-8")
    print(summary(results))
    print(f"\nwritten: {args.out / 'floods.md'}", file=sys.stderr)
    if args.json is not None:
        path = args.out / "floods.json" if args.json is True else args.json
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = document(results, mode, mode_name, env, wall)
        path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"written: {path}", file=sys.stderr)
    failed = [r for r in results if r.died or r.findings]
    for r in failed:
        print(f"\nFAILED: {r.key}: {r.died or '; '.join(r.findings)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
