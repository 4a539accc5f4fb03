"""Attack: running out of file descriptors kills the daemon.

Each link used to cost the daemon two descriptors (the socket and a duplicate for the data plane)
and the link cap was 1,024 whatever the process's limit: under the common soft limit of 1,024 a
flood of connections made ``os.dup`` fail with EMFILE outside any guard, and the process exited.
Now a node raises its soft limit to the hard one when it starts
(``tether.node.limits.raise_nofile``), derives its link cap from the limit in force
(``tether.node.limits.link_budget``: half of what is not reserved), keeps one descriptor per link
(the engine takes the socket), and treats EMFILE and ENFILE on ``accept``/``socket`` as "refuse this
connection".

Shown against a real daemon (``tether node create``) whose descriptor limit is 1,024 soft *and*
hard (so it cannot raise it), with both data planes, from raw sockets in the test process:

* 1,100+ connections that send the hello: the daemon stays up and answers its control API; it
  holds at most ``(1024 - RESERVED) // 2`` = 480 links (its reported cap), the connections
  beyond that are closed by the node as they come (the longest idle ones make room), its
  descriptor count stays within one per link plus the reserve, and a legitimate ``tether message
  send`` from another node is answered during the flood and after it;
* every descriptor taken, to the last one (the link cap full after a flood of 1,100, then portal
  sessions through a tcp-inlet and tcp-outlet pair on the daemon, to an echo server of the
  test's): a new link, and then a new portal client, meet EMFILE in an accept loop; each is
  refused at once, the daemon stays up, and once descriptors are free again the very next link
  (a ``tether message send``) and the very next portal session are served;
* a control API request with every descriptor taken may be turned away, but the daemon stays
  up and serves again afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_run import TETHER, Cli
from rawwire import HELLO, frame
from tether.cli.control_client import call
from tether.core.errors import TetherError
from tether.daemon.saved_nodes import pid_alive
from tether.node.limits import RESERVED

HOST = "127.0.0.1"
LIMIT = 1024
BUDGET = (LIMIT - RESERVED) // 2  # tether.node.limits.link_budget() under a limit of 1,024
NEEDED = 2500  # descriptors the test process needs for its side of the floods
SOURCES = [f"127.0.0.{k}" for k in range(2, 42)]  # attackers: 40 addresses, none the client's
CLOSING = 16  # links dropped for newcomers and not yet closed, at any one instant (a few)
NO_DESCRIPTOR = "refused connection: no descriptor left"
HELLO_FRAME = frame(HELLO)


# Every test with either data plane (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("data_plane")


@pytest.fixture(autouse=True)
def descriptors() -> Iterator[None]:
    """The test process holds the attacker's side of thousands of connections: its own soft
    limit goes up to its hard limit, which must allow ``NEEDED``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, NEEDED)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if now != resource.RLIM_INFINITY and now < NEEDED:
        pytest.fail(
            f"this test needs {NEEDED} descriptors in the test process, but its hard limit is "
            f"{hard}: raise it (ulimit -Hn {NEEDED}) to run the descriptor attacks"
        )
    yield
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _limit_descriptors() -> None:  # in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def run_limited(cli: Cli, *args: str) -> Any:
    """``tether ARGS --json`` with its descriptor limit (and so its daemon's) at 1,024 soft and
    hard; the parsed output."""
    env = {**os.environ, "TETHER_HOME": str(cli.home)}
    env.pop("TETHER_DATABASE_URL", None)
    p = subprocess.run(
        [*TETHER, *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_limit_descriptors,
    )
    assert p.returncode == 0, f"tether {' '.join(args)} failed: {p.stderr}"
    return json.loads(p.stdout)


@dataclass
class Victim:
    cli: Cli
    pid: int
    port: int
    api: Path

    def fds(self) -> int:
        """How many descriptors the daemon has open now."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def show(self) -> Any:
        """``GET /node`` from its control API, or fail within 5 s."""
        return call(self.api, "GET", "/node", timeout=5)

    def send(self, text: str) -> subprocess.CompletedProcess[str]:
        """``tether message send`` from node ``client`` to the victim's echo."""
        return self.cli.run(
            "message", "send", "--at", "client", "--to", "/node/victim/service/echo", text,
            ok=False,
        )  # fmt: skip

    def echo(self, text: str, when: str) -> None:
        """A legitimate message to the victim's echo is answered."""
        p = self.send(text)
        assert (p.returncode, p.stdout.strip()) == (0, text), (
            f"a legitimate message {when} was not answered: {p.stderr.strip()}\n" + self.diagnosis()
        )

    def log(self) -> str:
        return str(self.cli.run("node", "logs", "victim", "--lines", "100000").stdout)

    def diagnosis(self) -> str:
        """What the daemon is doing, for failure messages: whether it lives, its descriptors,
        its threads' state and CPU time, and the end of its log (without the flood's closes)."""
        if not self.alive():
            return "the daemon is gone; its log ends:\n" + self.log()[-3000:]
        threads = []
        for stat in sorted(Path(f"/proc/{self.pid}/task").glob("*/stat")):
            with contextlib.suppress(OSError):
                name, rest = stat.read_text().rsplit(")", 1)
                fields = rest.split()
                threads.append(
                    f"{name.split('(', 1)[1]} {fields[0]} cpu {int(fields[11]) + int(fields[12])}"
                )
        lines = [x for x in self.log().splitlines() if "closed connection" not in x]
        return (
            f"daemon {self.pid}: {self.fds()} descriptors; threads (state, CPU ticks): "
            + "; ".join(threads)
            + "\nits log ends:\n"
            + "\n".join(lines[-15:])
        )


@pytest.fixture
def victim(cli: Cli) -> Victim:
    """Node ``victim``, its daemon limited to 1,024 descriptors; node ``client``, not limited."""
    info = run_limited(cli, "node", "create", "victim", "--tcp-listener", f"{HOST}:0")
    port = int(info["listeners"][0]["address"].rsplit(":", 1)[1])
    v = Victim(cli, int(info["pid"]), port, Path(info["api"]))
    limits = Path(f"/proc/{v.pid}/limits").read_text().splitlines()
    (line,) = [x for x in limits if x.startswith("Max open files")]
    assert line.split()[3:5] == [str(LIMIT), str(LIMIT)], line
    cli.run("node", "create", "client")
    v.echo("before", "before the flood")
    assert v.show()["limits"]["max_connections"] == BUDGET
    return v


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the node closed ``sock`` (what it sent before is read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536, socket.MSG_DONTWAIT):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


class LinkFlood(threading.Thread):
    """Raw connections that send the hello, one after another (``pace`` seconds apart), from
    40 source addresses in turn, until stopped (and at least ``least`` of them; never more than
    ``most``). The newest ``keep`` sockets are kept open (all of them if None)."""

    def __init__(
        self, port: int, *, least: int, most: int, keep: int | None = None, pace: float = 0.003
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.pace = pace
        self.least = least
        self.most = most
        self.socks: deque[socket.socket] = deque(maxlen=keep)
        self.opened = 0
        self.done = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            for k in range(4 * self.most):  # (not forever if the node refuses them all)
                if self.opened >= self.most or (self._halt.is_set() and self.opened >= self.least):
                    return
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind((SOURCES[k % len(SOURCES)], 0))
                    s.settimeout(5)
                    s.connect((HOST, self.port))
                    s.sendall(HELLO_FRAME)
                except OSError:  # refused before the hello: the node is at its limit
                    s.close()
                    continue
                if self.socks.maxlen is not None and len(self.socks) == self.socks.maxlen:
                    self.socks[0].close()
                self.socks.append(s)
                self.opened += 1
                time.sleep(self.pace)
        finally:
            self.done.set()

    def stop(self) -> None:
        self._halt.set()
        assert self.done.wait(30), "the flood did not stop"

    def close(self) -> None:
        for s in self.socks:
            s.close()


class FdSampler(threading.Thread):
    """The daemon's descriptor count, sampled every 20 ms until stopped."""

    def __init__(self, victim: Victim) -> None:
        super().__init__(daemon=True)
        self.victim = victim
        self.samples: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(OSError):  # the process is gone: others say so
                self.samples.append(self.victim.fds())
            time.sleep(0.02)

    def stop(self) -> list[int]:
        self._halt.set()
        self.join()
        return self.samples


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)


def test_a_link_flood_under_1024_descriptors_leaves_the_daemon_serving(victim: Victim) -> None:
    flood = LinkFlood(victim.port, least=1100, most=2000)
    sampler = FdSampler(victim)
    sampler.start()
    flood.start()
    try:
        wait_for(lambda: flood.opened >= BUDGET + 200, 20, "the flood past the link cap")
        # During the flood: the daemon answers its control API and a legitimate message.
        victim.echo("during the flood", "during the flood")
        info = victim.cli.js("node", "show", "victim")
        # The cap counts live links; one the node has just dropped for a newcomer is listed
        # until its socket is closed, a moment later.
        assert BUDGET // 2 <= len(info["connections"]) <= BUDGET + CLOSING, len(info["connections"])
        assert info["limits"]["max_connections"] == BUDGET
        assert not flood.done.is_set(), "the flood ended before the checks made during it"
        assert victim.alive()
        flood.stop()
        # The connections beyond the cap were closed by the node as they came.
        closed: set[int] = set()

        def beyond_the_cap_closed() -> bool:
            closed.update(i for i, s in enumerate(flood.socks) if closed_by_peer(s))
            return len(closed) >= flood.opened - BUDGET

        wait_for(beyond_the_cap_closed, 3, "the connections beyond the cap closed by the node")
        assert flood.opened >= 1100
        info = victim.show()
        assert len(info["connections"]) <= BUDGET + CLOSING
        # ... each counted, by why: the longest idle link dropped for a newcomer (or a newcomer
        # refused, by the per-address caps).
        turned_away = sum(
            n
            for what, n in info["counters"].items()
            if what.startswith(("dropped for a newcomer", "refused connection"))
        )
        assert turned_away >= flood.opened - BUDGET, info["counters"]
        assert info["counters"].get("dropped for a newcomer: idle without a secure channel")
    finally:
        flood.stop()
        samples = sampler.stop()
        flood.close()
    # One descriptor per link: never more than the cap plus the reserve (two per link would
    # have been twice the cap).
    assert len(samples) >= 10
    assert max(samples) <= BUDGET + RESERVED, max(samples)
    assert victim.alive()
    victim.echo("after the flood", "after the flood")
    wait_for(lambda: victim.fds() < RESERVED, 15, "the flood's descriptors released")


@contextlib.contextmanager
def echo_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP echo server on loopback, on a thread; yields its port and its open connections."""
    srv = socket.create_server((HOST, 0), backlog=4096)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, _ in sel.select(0.05):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if s is srv:
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            c, _ = srv.accept()
                            c.setblocking(False)
                            sel.register(c, selectors.EVENT_READ)
                            conns.append(c)
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    with contextlib.suppress(OSError):
                        s.send(data)
                else:
                    sel.unregister(s)
                    conns.remove(s)
                    s.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], conns
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        srv.close()
        sel.close()


def exchange(port: int, data: bytes, timeout: float = 2.0) -> tuple[socket.socket, bytes]:
    """Connect to a tcp-inlet, send ``data``, read its echo; the open socket and the reply."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except BaseException:
        s.close()
        raise
    return s, got


class Portal:
    """A tcp-outlet on the victim to an echo server of the test's, and a tcp-inlet on the
    victim to that outlet (through a secure channel to the victim's own ``api``): each session
    costs the daemon two descriptors (the client's connection, the outlet's to the target)."""

    def __init__(self, victim: Victim, target: int) -> None:
        cli = victim.cli
        cli.js("tcp-outlet", "create", "--at", "victim", "--to", f"{HOST}:{target}")
        inlet = cli.js(
            "tcp-inlet", "create", "--at", "victim", "--from", f"{HOST}:0",
            "--to", "/node/victim/secure/api/service/outlet",
        )  # fmt: skip
        self.victim = victim
        self.port = int(inlet["from"].rsplit(":", 1)[1])
        self.sessions: list[socket.socket] = []
        assert self.works("before the flood") == ""

    def works(self, when: str) -> str:
        """A legitimate portal session: "" if its bytes come back from the target, else what
        went wrong."""
        data = b"portal " + when.encode()
        try:
            s, got = exchange(self.port, data, timeout=5)
            s.close()
        except OSError as e:
            got = repr(e).encode()
        return "" if got == data else f"a legitimate portal session {when} failed: {got!r}"

    def open(self) -> None:
        """One more session, kept open."""
        data = b"session %d" % len(self.sessions)
        s, got = exchange(self.port, data)
        if got != data:
            s.close()
            raise AssertionError(f"a portal session before the limit failed: {got!r}")
        self.sessions.append(s)

    def close(self) -> None:
        for s in self.sessions:
            s.close()
        self.sessions.clear()


def settled(victim: Victim) -> int:
    """The daemon's descriptor count once it stops changing (what it was closing is closed)."""
    last = victim.fds()
    while True:
        time.sleep(0.05)
        now = victim.fds()
        if now == last:
            return now
        last = now


def exhaust(victim: Victim, portal: Portal, flood: LinkFlood) -> None:
    """Take every descriptor of the daemon, exactly: portal sessions (two each) up to its limit,
    after closing one of the flood's links if the count is odd. Nothing else in the daemon is
    busy then: each of its accept loops still holds its spare descriptor."""
    while LIMIT - victim.fds() > 8:
        portal.open()
    # The count may drift meanwhile (the node closes idle links of the flood): go on until it
    # is exactly at the limit, a bounded number of times.
    deadline = time.monotonic() + 30
    while (n := settled(victim)) != LIMIT:
        assert time.monotonic() < deadline, victim.diagnosis()
        if (LIMIT - n) % 2:
            live = next(s for s in reversed(flood.socks) if not closed_by_peer(s))
            flood.socks.remove(live)
            live.close()
            wait_for(lambda: settled(victim) < n, 5, "one flood link closed")
        else:
            portal.open()


def refused(port: int, first: bytes) -> bool:
    """Whether the daemon closes a new connection to ``port`` (that sends ``first``) within
    5 s without a byte of answer (a reset that arrives before the connect returns counts)."""
    try:
        s = socket.create_connection((HOST, port), timeout=5)
    except ConnectionResetError:
        return True
    with s:
        with contextlib.suppress(OSError):
            s.sendall(first)
        try:
            return s.recv(1 << 16) == b""
        except TimeoutError:
            return False
        except OSError:  # reset
            return True


@pytest.fixture
def flooded(victim: Victim) -> Iterator[tuple[Victim, Portal, LinkFlood]]:
    """The victim with a portal (to an echo server of the test's) and a link flood of 1,100
    connections past its cap (the newest 600 of the flood's sockets kept open)."""
    with echo_server() as (target, _):
        portal = Portal(victim, target)
        flood = LinkFlood(victim.port, least=1100, most=1100, keep=600, pace=0)
        flood.start()
        try:
            assert flood.done.wait(30), "the flood did not finish"
            wait_for(
                lambda: len(victim.show()["connections"]) >= BUDGET - 8, 10, "the link cap full"
            )
            yield victim, portal, flood
        finally:
            flood.stop()
            portal.close()
            flood.close()
            if victim.alive():
                try:
                    call(victim.api, "GET", "/node", timeout=1)
                except (TetherError, OSError):  # frozen: do not wait for it to stop itself
                    os.kill(victim.pid, signal.SIGKILL)


def test_accept_loops_out_of_descriptors_refuse_and_recover(
    flooded: tuple[Victim, Portal, LinkFlood],
) -> None:
    """With every descriptor of the daemon taken (links at their cap, portal sessions for the
    rest), a new link and a new portal client meet EMFILE in the accept loops: each is refused,
    the daemon stays up, and once descriptors are free again the very next link and portal
    session are served."""
    victim, portal, flood = flooded
    problems: list[str] = []

    # The link listener at EMFILE.
    exhaust(victim, portal, flood)
    assert refused(victim.port, HELLO_FRAME), "a link accepted with no descriptor left"
    assert victim.alive(), victim.diagnosis()
    portal.close()
    wait_for(lambda: victim.fds() < LIMIT - 200, 10, "the sessions' descriptors released")
    p = victim.send("after the shortage")
    if (p.returncode, p.stdout.strip()) != (0, "after the shortage"):
        problems.append(
            f"the first link after the shortage was refused (message send: {p.stderr.strip()})"
        )

    # The inlet at EMFILE.
    exhaust(victim, portal, flood)
    assert refused(portal.port, b"x"), "a portal client accepted with no descriptor left"
    assert victim.alive(), victim.diagnosis()
    portal.close()
    try:
        wait_for(lambda: victim.fds() < LIMIT - 200, 5, "the sessions' descriptors released")
        counters = victim.show()["counters"]
    except (AssertionError, TetherError, OSError) as e:
        problems.append(f"the daemon is stuck after the inlet met EMFILE: {e}")
        raise AssertionError("\n".join(problems) + "\n" + victim.diagnosis()) from None
    problems.append(portal.works("after the shortage"))
    problems = [x for x in problems if x]
    assert problems == [], "\n".join(problems) + "\n" + victim.diagnosis()
    assert counters.get(NO_DESCRIPTOR, 0) > 0, counters
    victim.echo("after the flood", "after the flood")
    assert portal.works("after the flood") == ""


def test_a_control_request_out_of_descriptors_leaves_the_daemon_up(
    flooded: tuple[Victim, Portal, LinkFlood],
) -> None:
    """The control API is asked for while every descriptor is taken: the request may be turned
    away, but the daemon must not exit (its control listener is one more accept loop that meets
    EMFILE)."""
    victim, portal, flood = flooded
    exhaust(victim, portal, flood)
    with contextlib.suppress(TetherError, OSError):
        victim.show()
    time.sleep(0.3)
    assert victim.alive(), "a control API request at EMFILE: " + victim.diagnosis()
    portal.close()
    wait_for(lambda: victim.fds() < LIMIT - 200, 10, "the sessions' descriptors released")
    assert len(victim.show()["connections"]) <= BUDGET
    victim.echo("after the shortage", "after the shortage")
