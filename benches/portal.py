"""Portal benchmark: TCP through a tether portal side by side with ssh -L, stunnel and socat.

Run from the repository root, in the project's virtualenv (the extension built in release mode)::

    python benches/portal.py                       # 1 GiB per transfer, 5 rounds (~5 min)
    python benches/portal.py --quick               # 256 MiB, 3 rounds (CI smoke)
    python benches/portal.py --size 512M --rounds 3 --out benches/out/portal
    python benches/portal.py --json                # also portal.json next to portal.md
    python benches/portal.py --contenders direct,tether,ssh

Contenders (every process on 127.0.0.1, started by this script in a private temporary directory,
and stopped when it ends, also on Ctrl-C and errors):

* ``direct``: the client talks to the sink/echo servers itself: the physical limit of the
  machine and the load generator;
* ``tether``: inlet node -> secure channel -> outlet node (two node processes,
  ``portal_node.py``);
* ``tether via relay``: the same through a relay node (three node processes; the outlet node
  opens no port and is reached at ``/service/forward_to_db`` on the relay);
* ``tether via NATS fabric``: the same through a three-server NATS cluster (``nats-server``,
  clustered on loopback, with users and passwords): both nodes connect out to it and open no
  port; the route is ``/nats/db/...`` (``docs/routing.md``, "The NATS fabric"). Its CPU
  includes the three servers';
* ``ssh -L``: OpenSSH's local port forwarding, ``aes256-gcm@openssh.com``, no compression, to
  an sshd started here (temporary host and client keys, its own config);
* ``stunnel``: a TLS 1.3 client/server pair (``TLS_AES_256_GCM_SHA384``, a temporary
  self-signed certificate, verified by the client);
* ``socat``: a plain TCP forwarder (no encryption), one process per forwarded port.

Each round runs every contender once, in an order that rotates from round to round; each row
is the median over the rounds. Per contender and round: the time to move SIZE bytes to the sink
(and the CPU time the forwarding processes spent on it, read from ``/proc/PID/stat``), the
median round trip of 64-byte ping-pong on one connection, and the median time to open a new
connection and complete its first 64-byte round trip. See ``benches/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import getpass
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import portal_load
from harness import fmt_ratio, markdown_table, signals_exit

HOST = "127.0.0.1"
BENCHES = Path(__file__).resolve().parent
OUT_DIR = BENCHES / "out" / "portal"
MB = 1e6
GB = 1e9
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Mode:
    size: int
    rounds: int
    rtts: int
    """64-byte round trips per latency measurement."""
    opens: int
    """Connections opened per open-time measurement."""


FULL = Mode(size=1 << 30, rounds=5, rtts=2000, opens=200)
QUICK = Mode(size=256 << 20, rounds=3, rtts=1000, opens=100)
WARMUP_SIZE = 64 << 20
WARMUP_RTTS = 200
WARMUP_OPENS = 20
SETUP_TIMEOUT = 30.0

# key -> display name, in report order
CONTENDERS = {
    "direct": "direct",
    "tether": "tether",
    "tether-py": "tether, Python data plane",
    "relay": "tether via relay",
    "fabric": "tether via NATS fabric",
    "ssh": "ssh -L",
    "stunnel": "stunnel",
    "socat": "socat",
}
BASELINE = "ssh -L"
SUBJECTS = ("tether", "tether via relay", "tether via NATS fabric", "tether, Python data plane")
FABRIC_GOAL = 0.7
"""The NATS fabric's throughput, at least this times the relay's."""
SSH_CIPHER = "aes256-gcm@openssh.com"
TLS_SUITE = "TLS_AES_256_GCM_SHA384"
SOCAT_BUFFER = 256 * 1024
"""socat's read size (``-b``; its default is 8 KiB): the same as a tether portal's reads."""


class BenchError(Exception):
    """Setting up or running a contender failed (the message says what and where to look)."""


# --- binaries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binary:
    name: str
    candidates: tuple[str, ...]
    package: str
    """The Debian package that installs it."""

    def find(self) -> str | None:
        for c in self.candidates:
            found = shutil.which(c, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
            if found:
                return found
        return None


SSHD = Binary("sshd", ("/usr/sbin/sshd", "sshd"), "openssh-server")
SSH = Binary("ssh", ("ssh",), "openssh-client")
SSH_KEYGEN = Binary("ssh-keygen", ("ssh-keygen",), "openssh-client")
STUNNEL = Binary("stunnel", ("stunnel4", "stunnel"), "stunnel4")
SOCAT = Binary("socat", ("socat",), "socat")
NATS = Binary("nats-server", ("nats-server", "/usr/sbin/nats-server"), "nats-server")
NEEDS: dict[str, tuple[Binary, ...]] = {
    "fabric": (NATS,),
    "ssh": (SSHD, SSH, SSH_KEYGEN),
    "stunnel": (STUNNEL,),
    "socat": (SOCAT,),
}


def missing_binaries(keys: Sequence[str]) -> list[Binary]:
    out: list[Binary] = []
    for key in keys:
        out += [b for b in NEEDS.get(key, ()) if b.find() is None and b not in out]
    return out


def _which(binary: Binary) -> str:
    path = binary.find()
    if path is None:
        raise BenchError(f"{binary.name} not found: install the Debian package {binary.package}")
    return path


# --- processes -------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this script dies, however it dies."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks: utime + stime + cutime + cstime) of every process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # Fields after "(comm)": state ppid ... utime(14) stime(15) cutime(16) cstime(17).
        rest = stat[stat.rfind(b")") + 2 :].split()
        ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
        table[int(entry)] = (int(rest[1]), ticks)
    return table


def _tree(table: dict[int, tuple[int, int]], root: int) -> list[int]:
    """``root`` and all its descendants in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
            todo += children.get(pid, [])
    return out


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each root process and its descendants, the
    ones still running and the ones it has reaped (``cutime``/``cstime``)."""
    table = _proc_table()
    return {
        label: sum(table[pid][1] for pid in _tree(table, root)) / CLOCK_TICKS
        for label, root in roots.items()
    }


class Processes:
    """The child processes of one benchmark run: started with their output in log files in
    ``tmp``, all stopped by :meth:`close` (SIGTERM to each and its descendants, SIGKILL after
    a grace period), and each one told by the kernel to exit if this script dies first."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], *, ready_line: bool = False
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Start ``argv``; with ``ready_line``, wait for its first stdout line, which must start
        with ``ready``, and return the rest of it."""
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if ready_line else log,
                stderr=log,
                cwd=self.tmp,
                preexec_fn=_die_with_parent,  # no threads here to make this unsafe
                process_group=0,  # Ctrl-C reaches this script only; it stops the others
            )
        finally:
            log.close()
        self.started.append((name, proc))
        if not ready_line:
            return proc, ""
        assert proc.stdout is not None
        line = self._first_line(name, proc, proc.stdout)
        if not line.startswith("ready"):
            raise BenchError(f"{name} did not start: {line!r}\n{self.log_tail(name)}")
        return proc, line[len("ready") :].strip()

    def _first_line(self, name: str, proc: subprocess.Popen[bytes], out: IO[bytes]) -> str:
        deadline = time.monotonic() + SETUP_TIMEOUT
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"{name} not ready after {SETUP_TIMEOUT:g} s\n{self.log_tail(name)}"
                    )
                if sel.select(min(left, 0.5)):
                    chunk = os.read(out.fileno(), 4096)
                    if not chunk:
                        proc.wait(5)
                        raise BenchError(
                            f"{name} exited with status {proc.returncode} before it was ready\n"
                            f"{self.log_tail(name)}"
                        )
                    buf += chunk
        return buf.split(b"\n", 1)[0].decode(errors="replace")

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.tmp / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log for {name})"
        tail = "\n".join(f"    {x}" for x in text[-lines:])
        return f"  {name}'s log:\n{tail}" if tail else f"  ({name} logged nothing)"

    def check(self) -> None:
        """Every started process must still run."""
        for name, proc in self.started:
            if proc.poll() is not None:
                raise BenchError(
                    f"{name} exited with status {proc.returncode}\n{self.log_tail(name)}"
                )

    def close(self) -> None:
        table = _proc_table()
        pids: list[int] = []
        for _, proc in reversed(self.started):  # clients before servers
            if proc.poll() is None:
                pids += [p for p in _tree(table, proc.pid) if p not in pids]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            if proc.stdout is not None:
                proc.stdout.close()
        for pid in pids:  # whatever ignored SIGTERM (descendants included)
            if os.path.exists(f"/proc/{pid}") and _tree(_proc_table(), pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for _, proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
        self.started.clear()


_ports_given: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (never the same one twice)."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def probe(port: int, timeout: float = 5.0) -> bool:
    """One connection to the echo path at ``port`` and one 64-byte round trip through it."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"p" * 64)
            got = b""
            while len(got) < 64:
                chunk = s.recv(64 - len(got))
                if not chunk:
                    return False
                got += chunk
            return got == b"p" * 64
    except OSError:
        return False


def wait_listening(procs: Processes, name: str, port: int) -> None:
    """Until something accepts connections on ``port``."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        procs.check()
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: nothing listens on port {port} after {SETUP_TIMEOUT:g} s")
        time.sleep(0.05)


def wait_ready(procs: Processes, name: str, port: int) -> None:
    """Until a round trip through the echo path at ``port`` works (for tether, the first one
    also opens the secure channel)."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while not probe(port):
        procs.check()
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: no echo through port {port} after {SETUP_TIMEOUT:g} s")
        time.sleep(0.05)


# --- contenders ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    sink: int
    echo: int
    pid: int


@dataclass(frozen=True)
class Contender:
    name: str
    sink: int
    """Port where the client connects to reach the sink."""
    echo: int
    """Port where the client connects to reach the echo server."""
    cpu: dict[str, int]
    """Forwarding processes: label -> pid (each counted with its descendants)."""
    detail: str
    logs: tuple[str, ...] = ()
    """Names of its processes' logs (shown when it fails)."""


def start_load(procs: Processes) -> Load:
    proc, info = procs.start(
        "load", [sys.executable, str(BENCHES / "portal_load.py"), "0", "0"], ready_line=True
    )
    ports = json.loads(info)
    return Load(int(ports["sink"]), int(ports["echo"]), proc.pid)


def start_direct(procs: Processes, tmp: Path, load: Load) -> Contender:
    return Contender(
        "direct", load.sink, load.echo, {}, "the client to the servers, no hop", ("load",)
    )


def _node(procs: Processes, name: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """A tether node (benches/portal_node.py) and its identifier."""
    argv = [sys.executable, str(BENCHES / "portal_node.py"), *args]
    proc, info = procs.start(name, argv, ready_line=True)
    return proc, str(json.loads(info)["identifier"])


def _outlets(load: Load) -> list[str]:
    return [
        *("--outlet", "to-sink", f"{HOST}:{load.sink}"),
        *("--outlet", "to-echo", f"{HOST}:{load.echo}"),
    ]


def _inlets(route: str) -> tuple[int, int, list[str]]:
    sink, echo = free_port(), free_port()
    args = [
        *("--inlet", f"{HOST}:{sink}", f"{route}/secure/api/service/to-sink"),
        *("--inlet", f"{HOST}:{echo}", f"{route}/secure/api/service/to-echo"),
    ]
    return sink, echo, args


def _start_pair(
    procs: Processes, load: Load, name: str, prefix: str, path: str, *node_args: str
) -> Contender:
    """An inlet node and an outlet node (listening), each started with ``node_args``."""
    port = free_port()
    db, db_id = _node(
        procs, f"{prefix}-db", "db", *node_args, "--listen", str(port), *_outlets(load)
    )
    sink, echo, inlets = _inlets(f"/ip4/{HOST}/tcp/{port}")
    client, _ = _node(
        procs, f"{prefix}-client", "client", *node_args, *inlets, "--authorized", db_id
    )
    wait_ready(procs, name, echo)
    return Contender(
        name,
        sink,
        echo,
        {"inlet node": client.pid, "outlet node": db.pid},
        path,
        (f"{prefix}-client", f"{prefix}-db", "load"),
    )


def start_tether(procs: Processes, tmp: Path, load: Load) -> Contender:
    return _start_pair(
        procs, load, "tether", "tether", "inlet node -> secure channel over TCP -> outlet node"
    )


def start_tether_python(procs: Processes, tmp: Path, load: Load) -> Contender:
    """tether with the Rust data plane off (``--dataplane python``): every byte through Python,
    as before the engine existed; the before/after of the data plane in the same run."""
    return _start_pair(
        procs,
        load,
        "tether, Python data plane",
        "py",
        "as tether, with TETHER_DATAPLANE=python (no Rust data plane)",
        "--dataplane",
        "python",
    )


def start_relay(procs: Processes, tmp: Path, load: Load) -> Contender:
    port = free_port()
    relay, relay_id = _node(procs, "relay-relay", "relay", "--listen", str(port))
    db, db_id = _node(
        procs, "relay-db", "db", "--relay", str(port), "--authorized", relay_id, *_outlets(load)
    )
    sink, echo, inlets = _inlets(f"/ip4/{HOST}/tcp/{port}/service/forward_to_db")
    client, _ = _node(procs, "relay-client", "client", *inlets, "--authorized", db_id)
    wait_ready(procs, "tether via relay", echo)
    return Contender(
        "tether via relay",
        sink,
        echo,
        {"inlet node": client.pid, "relay node": relay.pid, "outlet node": db.pid},
        "inlet node -> relay node -> outlet node, secure channel end to end",
        ("relay-client", "relay-relay", "relay-db", "load"),
    )


def nats_cluster_conf(name: str, port: int, route_port: int, routes: Sequence[int]) -> str:
    """One server of a loopback NATS cluster for the fabric: a user per node role whose
    password is a throwaway; both may use every ``tether.`` subject (the benchmark measures the
    data path; ``docs/routing.md`` shows the per-node permissions of a real deployment)."""
    open_perms = {"publish": {"allow": ["tether.>"]}, "subscribe": {"allow": ["tether.>"]}}
    users = [
        {"user": role, "password": f"bench-{role}", "permissions": open_perms}
        for role in ("db", "client")
    ]
    route_urls = [f"nats-route://route:bench-route@{HOST}:{p}" for p in routes]
    return (
        f"server_name: {name}\nlisten: {HOST}:{port}\nmax_payload: 1048576\n"
        f"authorization {{ users: {json.dumps(users)} }}\n"
        f"cluster {{\n  name: bench-fabric\n  listen: {HOST}:{route_port}\n"
        "  authorization { user: route, password: bench-route }\n"
        f"  routes: {json.dumps(route_urls)}\n}}\n"
    )


@dataclass
class NatsServer:
    name: str
    port: int
    conf: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def kill(self, procs: Processes) -> None:
        """SIGKILL, as a crash: it is no longer one of the processes that must run."""
        self.proc.kill()
        self.proc.wait(10)
        procs.started = [(n, p) for n, p in procs.started if p is not self.proc]

    def restart(self, procs: Processes, label: str) -> None:
        """Start it again (after a kill) with its configuration; it rejoins the cluster."""
        self.proc, _ = procs.start(label, [_which(NATS), "-c", str(self.conf)])
        wait_listening(procs, label, self.port)


def start_nats_cluster(procs: Processes, tmp: Path, size: int = 3) -> list[NatsServer]:
    """``size`` clustered nats-server processes, all accepting connections."""
    d = tmp / "nats"
    d.mkdir(exist_ok=True)
    ports = [(free_port(), free_port()) for _ in range(size)]
    servers = []
    for i, (port, route_port) in enumerate(ports):
        name = f"nats-{i}"
        conf = d / f"{name}.conf"
        others = [r for j, (_, r) in enumerate(ports) if j != i]
        conf.write_text(nats_cluster_conf(name, port, route_port, others))
        proc, _ = procs.start(name, [_which(NATS), "-c", str(conf)])
        servers.append(NatsServer(name, port, conf, proc))
    for server in servers:
        wait_listening(procs, server.name, server.port)
    return servers


def start_fabric_nodes(
    procs: Processes, servers: Sequence[NatsServer], outlets: Sequence[str], inlets: Sequence[str]
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """The outlet node ``db`` (claiming ``db``) and the inlet node on the fabric of
    ``servers``, with ``portal_node.py``'s ``--outlet``/``--inlet`` arguments; (db, client).
    The client starts on the first server, db on the second: the cluster carries between
    them."""
    urls = [server.url for server in servers]
    db, db_id = _node(
        procs,
        "fabric-db",
        "db",
        *("--nats", ",".join(urls[1:] + urls[:1]), "--nats-claim", "db"),
        *("--nats-user", "db", "--nats-password", "bench-db"),
        *outlets,
    )
    client, _ = _node(
        procs,
        "fabric-client",
        "client",
        *("--nats", ",".join(urls), "--nats-user", "client", "--nats-password", "bench-client"),
        *inlets,
        *("--authorized", db_id),
    )
    return db, client


def start_fabric(procs: Processes, tmp: Path, load: Load) -> Contender:
    servers = start_nats_cluster(procs, tmp)
    sink, echo, inlets = _inlets("/nats/db")
    db, client = start_fabric_nodes(procs, servers, _outlets(load), inlets)
    wait_ready(procs, "tether via NATS fabric", echo)
    pids = {"inlet node": client.pid, "outlet node": db.pid}
    pids.update({server.name: server.proc.pid for server in servers})
    return Contender(
        "tether via NATS fabric",
        sink,
        echo,
        pids,
        "inlet node -> NATS server -> NATS server -> outlet node, secure channel end to end",
        ("fabric-client", "fabric-db", *(server.name for server in servers), "load"),
    )


def _run_quiet(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout + done.stderr


def start_ssh(procs: Processes, tmp: Path, load: Load) -> Contender:
    sshd_bin, ssh_bin, keygen = _which(SSHD), _which(SSH), _which(SSH_KEYGEN)
    d = tmp / "ssh"
    d.mkdir(mode=0o700)
    for key in ("host_key", "client_key"):
        _run_quiet([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(d / key)])
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    host_pub = " ".join((d / "host_key.pub").read_text().split()[:2])
    (d / "known_hosts").write_text(f"[{HOST}]:{port} {host_pub}\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    config = d / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                f"ListenAddress {HOST}",
                f"HostKey {d / 'host_key'}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "AuthenticationMethods publickey",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "AllowTcpForwarding local",
                "X11Forwarding no",
                "PermitTTY no",
                f"Ciphers {SSH_CIPHER}",
                "Compression no",
                "UseDNS no",
                "MaxStartups 100",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    _run_quiet([sshd_bin, "-t", "-f", str(config)])
    sshd, _ = procs.start("sshd", [sshd_bin, "-D", "-e", "-f", str(config)])
    wait_listening(procs, "sshd", port)
    sink, echo = free_port(), free_port()
    ssh, _ = procs.start(
        "ssh",
        [
            ssh_bin,
            "-N",
            *("-F", "/dev/null"),
            *("-i", str(d / "client_key")),
            *("-p", str(port)),
            *("-c", SSH_CIPHER),
            *("-o", "Compression=no"),
            *("-o", "BatchMode=yes"),
            *("-o", "IdentitiesOnly=yes"),
            *("-o", f"UserKnownHostsFile={d / 'known_hosts'}"),
            *("-o", "StrictHostKeyChecking=yes"),
            *("-o", "ExitOnForwardFailure=yes"),
            *("-L", f"{HOST}:{sink}:{HOST}:{load.sink}"),
            *("-L", f"{HOST}:{echo}:{HOST}:{load.echo}"),
            f"{getpass.getuser()}@{HOST}",
        ],
    )
    wait_ready(procs, "ssh -L", echo)
    return Contender(
        "ssh -L",
        sink,
        echo,
        {"ssh": ssh.pid, "sshd": sshd.pid},
        f"ssh -L -> sshd, {SSH_CIPHER}, no compression",
        ("ssh", "sshd", "load"),
    )


def _certificate(d: Path) -> None:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (the TLS baseline's of
    ``node_server.py``) as ``cert.pem`` and ``key.pem`` in ``d``."""
    from node_server import self_signed_certificate

    cert, key = self_signed_certificate()
    (d / "cert.pem").write_bytes(cert)
    (d / "key.pem").touch(0o600)
    (d / "key.pem").write_bytes(key)


def start_stunnel(procs: Processes, tmp: Path, load: Load) -> Contender:
    binary = _which(STUNNEL)
    d = tmp / "stunnel"
    d.mkdir(mode=0o700)
    _certificate(d)
    common = [
        "sslVersionMin = TLSv1.3",
        "sslVersionMax = TLSv1.3",
        f"ciphersuites = {TLS_SUITE}",
        "socket = l:TCP_NODELAY=1",
        "socket = r:TCP_NODELAY=1",
        "TIMEOUTclose = 0",
    ]
    head = ["foreground = yes", "pid =", "syslog = no", "debug = 4", ""]
    server, client, ports = list(head), list(head), {}
    for service, target in (("sink", load.sink), ("echo", load.echo)):
        tls, ports[service] = free_port(), free_port()
        server += [
            f"[{service}]",
            f"accept = {HOST}:{tls}",
            f"connect = {HOST}:{target}",
            f"cert = {d / 'cert.pem'}",
            f"key = {d / 'key.pem'}",
            *common,
            "",
        ]
        client += [
            f"[{service}]",
            "client = yes",
            f"accept = {HOST}:{ports[service]}",
            f"connect = {HOST}:{tls}",
            f"CAfile = {d / 'cert.pem'}",
            "verifyChain = yes",
            f"checkIP = {HOST}",
            *common,
            "",
        ]
    (d / "server.conf").write_text("\n".join(server))
    (d / "client.conf").write_text("\n".join(client))
    srv, _ = procs.start("stunnel-server", [binary, str(d / "server.conf")])
    cli, _ = procs.start("stunnel-client", [binary, str(d / "client.conf")])
    wait_ready(procs, "stunnel", ports["echo"])
    return Contender(
        "stunnel",
        ports["sink"],
        ports["echo"],
        {"stunnel client": cli.pid, "stunnel server": srv.pid},
        f"stunnel client -> stunnel server, TLS 1.3 {TLS_SUITE}",
        ("stunnel-client", "stunnel-server", "load"),
    )


def start_socat(procs: Processes, tmp: Path, load: Load) -> Contender:
    binary = _which(SOCAT)
    ports, pids = {}, {}
    for service, target in (("sink", load.sink), ("echo", load.echo)):
        ports[service] = free_port()
        proc, _ = procs.start(
            f"socat-{service}",
            [
                binary,
                *("-b", str(SOCAT_BUFFER)),
                f"TCP-LISTEN:{ports[service]},bind={HOST},reuseaddr,fork,nodelay,backlog=512",
                f"TCP:{HOST}:{target},nodelay",
            ],
        )
        pids[f"socat ({service})"] = proc.pid
    wait_ready(procs, "socat", ports["echo"])
    return Contender(
        "socat",
        ports["sink"],
        ports["echo"],
        pids,
        "plain TCP forwarder, a process per connection",
        ("socat-sink", "socat-echo", "load"),
    )


STARTERS: dict[str, Callable[[Processes, Path, Load], Contender]] = {
    "direct": start_direct,
    "tether": start_tether,
    "tether-py": start_tether_python,
    "relay": start_relay,
    "fabric": start_fabric,
    "ssh": start_ssh,
    "stunnel": start_stunnel,
    "socat": start_socat,
}


class Bench:
    """The load servers and the chosen contenders, in a temporary directory; everything is
    stopped and removed on exit::

        with Bench(["direct", "tether"]) as bench:
            transfer = measure_throughput(bench.contenders["tether"], 16 << 20)
    """

    def __init__(self, keys: Sequence[str]) -> None:
        unknown = [k for k in keys if k not in STARTERS]
        if unknown:
            raise ValueError(f"unknown contenders {unknown}; choose from {list(STARTERS)}")
        self.keys = list(keys)
        self.contenders: dict[str, Contender] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Bench:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tether-portal-")))
            self.tmp = tmp
            self.procs = Processes(tmp)
            stack.callback(self.procs.close)
            self.load = start_load(self.procs)
            for key in self.keys:
                print(f"starting {CONTENDERS[key]} ...", file=sys.stderr, flush=True)
                self.contenders[CONTENDERS[key]] = STARTERS[key](self.procs, tmp, self.load)
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()


# --- measurements ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    seconds: float
    moved: int
    """Bytes the sink received."""
    cpu: dict[str, float]
    """CPU seconds each forwarding process (with its descendants) spent during the transfer."""
    load_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of the load generator: the client (this process) and the sink (if known)."""


LOAD_CLIENT = "load: client"
LOAD_SINK = "load: sink"


def measure_throughput(c: Contender, size: int, sink_pid: int | None = None) -> Transfer:
    """Move ``size`` bytes from a client connection through ``c`` to the sink (``sink_pid``:
    the sink's process, to count its CPU time too)."""
    load = {LOAD_SINK: sink_pid} if sink_pid else {}
    before, before_load, client = cpu_seconds(c.cpu), cpu_seconds(load), time.process_time()
    seconds, moved = portal_load.send_bulk(c.sink, size)
    client = time.process_time() - client
    after, after_load = cpu_seconds(c.cpu), cpu_seconds(load)
    load_cpu = {LOAD_CLIENT: client} | {k: after_load[k] - before_load[k] for k in load}
    return Transfer(seconds, moved, {k: after[k] - before[k] for k in before}, load_cpu)


def measure_latency(c: Contender, count: int) -> tuple[float, float]:
    """Median seconds of ``count`` 64-byte round trips on one connection through ``c``, and the
    CPU seconds per round trip its forwarding processes spent meanwhile."""
    before = cpu_seconds(c.cpu)
    times = portal_load.ping_pong(c.echo, count)
    after = cpu_seconds(c.cpu)
    return statistics.median(times), sum(after[k] - before[k] for k in before) / count


def measure_open(c: Contender, count: int) -> tuple[float, list[str]]:
    """Median seconds of connect + first 64-byte round trip over ``count`` new connections,
    and the errors of those that failed (they are counted, not timed)."""
    times, errors = portal_load.open_times(c.echo, count)
    if not times:
        raise BenchError(f"{c.name}: all {count} new connections failed: {errors[0]}")
    return statistics.median(times), errors


@dataclass
class Rounds:
    """One contender's results, one entry per round."""

    transfers: list[Transfer] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    latency_cpu: list[float] = field(default_factory=list)
    """CPU seconds per round trip of the forwarding processes."""
    open: list[float] = field(default_factory=list)
    open_errors: list[list[str]] = field(default_factory=list)

    @property
    def failed_opens(self) -> int:
        return sum(len(e) for e in self.open_errors)

    @property
    def mb_s(self) -> float:
        return statistics.median(t.moved / t.seconds / MB for t in self.transfers)

    @property
    def spread(self) -> float:
        rates = [t.moved / t.seconds for t in self.transfers]
        return (max(rates) - min(rates)) / statistics.median(rates)

    def cpu_per_gb(self, label: str | None = None) -> float:
        """Median CPU seconds per GB (10^9 bytes) of one process, or of all of them."""
        return statistics.median(
            (t.cpu[label] if label else sum(t.cpu.values())) / (t.moved / GB)
            for t in self.transfers
        )

    def busy(self, label: str) -> float:
        """Median CPU seconds / wall seconds of one process during the transfers (about 1.0: a
        single-threaded process that was the bottleneck)."""
        return statistics.median((t.cpu | t.load_cpu)[label] / t.seconds for t in self.transfers)

    def load_cpu_per_gb(self, label: str) -> float:
        return statistics.median(t.load_cpu[label] / (t.moved / GB) for t in self.transfers)


def _check(c: Contender, t: Transfer, size: int) -> None:
    if t.moved != size:
        raise BenchError(f"{c.name}: the sink received {t.moved:,} of {size:,} bytes")


@contextlib.contextmanager
def _failing(bench: Bench, c: Contender) -> Iterator[None]:
    """A socket error while measuring ``c`` fails the run, with the logs of its processes."""
    try:
        yield
    except OSError as e:
        logs = "\n".join(bench.procs.log_tail(name) for name in c.logs)
        raise BenchError(f"{c.name}: {type(e).__name__}: {e}\n{logs}") from e


def run_rounds(bench: Bench, mode: Mode) -> dict[str, Rounds]:
    contenders = list(bench.contenders.values())
    for c in contenders:
        print(f"warming up {c.name} ...", file=sys.stderr, flush=True)
        size = min(mode.size, WARMUP_SIZE)
        with _failing(bench, c):
            _check(c, measure_throughput(c, size), size)
            measure_latency(c, WARMUP_RTTS)
            measure_open(c, WARMUP_OPENS)
    results = {c.name: Rounds() for c in contenders}
    for r in range(mode.rounds):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            bench.procs.check()
            with _failing(bench, c):
                t = measure_throughput(c, mode.size, bench.load.pid)
                _check(c, t, mode.size)
                lat, lat_cpu = measure_latency(c, mode.rtts)
                opened, errors = measure_open(c, mode.opens)
            out = results[c.name]
            out.transfers.append(t)
            out.latency.append(lat)
            out.latency_cpu.append(lat_cpu)
            out.open.append(opened)
            out.open_errors.append(errors)
            if errors:
                print(
                    f"warning: {c.name}: {len(errors)} of {mode.opens} new connections failed "
                    f"({errors[0]})",
                    file=sys.stderr,
                )
            cpu = sum(t.cpu.values())
            print(
                f"[round {r + 1}/{mode.rounds}] {c.name:<17} {t.moved / t.seconds / MB:9,.1f} MB/s"
                f"  cpu {cpu / (t.moved / GB):6.2f} s/GB  rtt {lat * 1e6:8.1f} us"
                f"  open {opened * 1e3:6.3f} ms",
                file=sys.stderr,
                flush=True,
            )
    bench.procs.check()
    return results


# --- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    metric: str
    higher_is_better: bool
    target: float | None
    """Ratio tether / ssh -L to reach (at least, or at most if lower is better)."""
    aim: float | None
    absolute: float | None = None
    """For the open time: the limit in ms for tether itself (not a ratio)."""


TARGETS = (
    Target("throughput", True, 1.0, 1.2),
    Target("cpu", False, 1.0, 0.7),
    Target("latency", False, 1.0, None),
    Target("open", False, None, None, absolute=0.5),
)
METRIC_TITLES = {
    "throughput": "Throughput (MB/s)",
    "cpu": "CPU per GB (s)",
    "latency": "64-B round trip (us)",
    "open": "Open + first round trip (ms)",
}


def metric_values(rounds: Rounds) -> dict[str, float | None]:
    return {
        "throughput": rounds.mb_s,
        "cpu": rounds.cpu_per_gb() if rounds.transfers and rounds.transfers[0].cpu else None,
        "latency": statistics.median(rounds.latency) * 1e6,
        "open": statistics.median(rounds.open) * 1e3,
    }


def _fmt(metric: str, x: float | None) -> str:
    if x is None:
        return "-"
    if metric == "throughput":
        return f"{x:,.0f}"
    if metric == "latency":
        return f"{x:,.1f}"
    if metric == "open":
        return f"{x:.3f}"
    return f"{x:.2f}"


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def comparisons(values: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    """tether (and tether via relay) against ssh -L, metric by metric, with the targets (for
    tether only; the relay's rows are for tracking)."""
    out: list[dict[str, Any]] = []
    base = values.get(BASELINE)
    for subject in SUBJECTS:
        mine = values.get(subject)
        if mine is None:
            continue
        for t in TARGETS:
            x = mine[t.metric]
            b = base[t.metric] if base else None
            ratio = x / b if x is not None and b else None
            targeted = subject == "tether"
            met = aim_met = None
            if targeted and t.absolute is not None and x is not None:
                met = x <= t.absolute
            elif targeted and t.target is not None and ratio is not None:
                met = ratio >= t.target if t.higher_is_better else ratio <= t.target
                if t.aim is not None:
                    aim_met = ratio >= t.aim if t.higher_is_better else ratio <= t.aim
            out.append(
                {
                    "subject": subject,
                    "metric": t.metric,
                    "value": x,
                    "baseline": b,
                    "ratio": ratio,
                    "target": (t.target if t.absolute is None else None) if targeted else None,
                    "aim": t.aim if targeted else None,
                    "absolute_limit": t.absolute if targeted else None,
                    "higher_is_better": t.higher_is_better,
                    "met": met,
                    "aim_met": aim_met,
                }
            )
    return out


def _target_text(row: dict[str, Any]) -> tuple[str, str]:
    sign = ">=" if row["higher_is_better"] else "<="
    if row["absolute_limit"] is not None:
        return f"<= {row['absolute_limit']:g} ms", "-"
    target = "-" if row["target"] is None else f"{sign} {row['target']:g}x"
    aim = "-" if row["aim"] is None else f"{sign} {row['aim']:g}x"
    return target, aim


def _versions() -> dict[str, str]:
    out = {}
    for binary, args in ((SSH, ["-V"]), (STUNNEL, ["-version"]), (SOCAT, ["-V"])):
        path = binary.find()
        if path is None:
            continue
        try:
            done = subprocess.run(
                [path, *args], capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = done.stdout + done.stderr
        pattern = {
            "ssh": r"OpenSSH_\S+",
            "stunnel": r"stunnel \S+",
            "socat": r"socat version \S+",
        }[binary.name]
        m = re.search(pattern, text)
        if m:
            out[binary.name] = m.group(0).rstrip(",")
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _openssl_version() -> str:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        return str(backend.openssl_version_text())
    except Exception:  # only informational
        return "unknown"


def environment() -> dict[str, str]:
    import tether

    env = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical CPUs)",
        "tether": tether.__version__,
        "cryptography": f"{version('cryptography')} ({_openssl_version()})",
        "trio": version("trio"),
    }
    return env | _versions()


def _load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Report:
    mode: Mode
    mode_name: str
    contenders: dict[str, Contender]
    results: dict[str, Rounds]
    wall_seconds: float
    load_before: str
    load_after: str

    def values(self) -> dict[str, dict[str, float | None]]:
        return {name: metric_values(r) for name, r in self.results.items()}


def _size_text(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size:,} bytes"


def markdown(report: Report, env: dict[str, str]) -> str:
    m = report.mode
    values = report.values()
    rows = comparisons(values)
    targeted = [r for r in rows if r["met"] is not None]
    direct = values.get("direct", {}).get("throughput")
    parts = [
        "# tether portal benchmark",
        "",
        *(f"- {k}: {v}" for k, v in env.items()),
        f"- run: {report.mode_name}, {_size_text(m.size)} per transfer, median of {m.rounds} "
        f"interleaved rounds (order rotating), {m.rtts} round trips and {m.opens} connections "
        f"per round, {report.wall_seconds:.0f} s in all",
        f"- load average (1/5/15 min): {report.load_before} before, {report.load_after} after",
        "",
    ]
    if rows:
        heading = f"## tether / {BASELINE}"
        if targeted:
            met = sum(1 for r in targeted if r["met"])
            heading += f": {met} of {len(targeted)} targets met"
        table_rows = []
        for r in rows:
            target, aim = _target_text(r)
            table_rows.append(
                [
                    r["subject"],
                    METRIC_TITLES[r["metric"]],
                    _fmt(r["metric"], r["value"]),
                    _fmt(r["metric"], r["baseline"]),
                    "-" if r["ratio"] is None else fmt_ratio(r["ratio"]),
                    target,
                    "-" if r["met"] is None else _met(r["met"]),
                    aim,
                    "-" if r["aim_met"] is None else _met(r["aim_met"]),
                ]
            )
        parts += [
            heading,
            "",
            markdown_table(
                [
                    "Subject",
                    "Metric",
                    "Value",
                    BASELINE,
                    "Ratio",
                    "Target",
                    "Met",
                    "Aim",
                    "Aim met",
                ],
                table_rows,
                "llrrrllll",
            ),
            "",
            "Ratio: subject / ssh -L of the medians (throughput: higher is better; CPU, round "
            "trip and open time: lower is better). The open-time target is an absolute limit. "
            "tether via relay and tether with the Python data plane (the before of the Rust "
            "data plane, in the same run) have no targets; their ratios are for tracking.",
            "",
        ]
    fabric, relay = values.get("tether via NATS fabric"), values.get("tether via relay")
    if fabric and relay and fabric["throughput"] and relay["throughput"]:
        ratio = fabric["throughput"] / relay["throughput"]
        parts += [
            "## The NATS fabric against the relay",
            "",
            f"Throughput {_fmt('throughput', fabric['throughput'])} / "
            f"{_fmt('throughput', relay['throughput'])} MB/s = {fmt_ratio(ratio)} "
            f"(goal >= {FABRIC_GOAL:g}x: {_met(ratio >= FABRIC_GOAL)}). The stall when a "
            "server dies is measured by `benches/fabric.py`.",
            "",
        ]
    meas_rows = []
    for name, res in report.results.items():
        v = values[name]
        c = report.contenders[name]
        meas_rows.append(
            [
                name,
                str(len(c.cpu)) if c.cpu else "-",
                _fmt("throughput", v["throughput"]),
                f"{100 * res.spread:.1f}%",
                "-" if not direct else f"{100 * (v['throughput'] or 0) / direct:.0f}%",
                _fmt("cpu", v["cpu"]),
                _fmt("latency", v["latency"]),
                "-" if not c.cpu else f"{statistics.median(res.latency_cpu) * 1e6:,.0f}",
                _fmt("open", v["open"]),
                f"{res.failed_opens} / {m.opens * len(res.open)}",
            ]
        )
    parts += [
        f"## Measurements (medians of {m.rounds} rounds)",
        "",
        markdown_table(
            [
                "Contender",
                "Processes",
                "MB/s",
                "Spread",
                "Of direct",
                "CPU s/GB",
                "64-B RTT (us)",
                "CPU/RTT (us)",
                "Open (ms)",
                "Failed opens",
            ],
            meas_rows,
            "lrrrrrrrrr",
        ),
        "",
        "MB/s: 10^6 payload bytes per second from the client's first byte to the sink's answer. "
        "Spread: (max - min) / median of the rounds' rates. CPU s/GB: user + system CPU "
        "seconds of the forwarding processes (all of them, from /proc/PID/stat) per 10^9 bytes "
        "moved. 64-B RTT: median of one-at-a-time round trips on one connection; CPU/RTT: the "
        "forwarding processes' CPU time per round trip meanwhile. Open: connect plus the first "
        "64-byte round trip on a new connection, the path already established; failed opens "
        "(reset or closed before the reply) are counted, not timed.",
        "",
    ]
    cpu_rows = []
    for name, res in report.results.items():
        for label in report.contenders[name].cpu:
            cpu_rows.append([name, label, f"{res.cpu_per_gb(label):.2f}", f"{res.busy(label):.2f}"])
        for label in res.transfers[0].load_cpu:
            cpu_rows.append(
                [name, label, f"{res.load_cpu_per_gb(label):.2f}", f"{res.busy(label):.2f}"]
            )
    if cpu_rows:
        parts += [
            "## CPU by process (medians)",
            "",
            markdown_table(["Contender", "Process", "CPU s/GB", "Busy"], cpu_rows, "llrr"),
            "",
            "Busy: CPU seconds / wall seconds during the transfer. Near 1.00, a single-threaded "
            "process had a whole core and is the bottleneck (stunnel runs a thread per "
            "connection direction; the others are single-threaded per connection). The load "
            "rows are the load generator (the sending client in the benchmark process, the "
            "sink in its own), not counted in the contender's CPU s/GB.",
            "",
        ]
    parts += [
        "## Contenders",
        "",
        markdown_table(
            ["Contender", "Path"], [[c.name, c.detail] for c in report.contenders.values()], "ll"
        ),
        "",
    ]
    return "\n".join(parts)


def document(report: Report, env: dict[str, str]) -> dict[str, Any]:
    values = report.values()
    return {
        "environment": env,
        "settings": {
            "mode": report.mode_name,
            "size": report.mode.size,
            "rounds": report.mode.rounds,
            "round_trips": report.mode.rtts,
            "opens": report.mode.opens,
        },
        "wall_seconds": report.wall_seconds,
        "load_average_before": report.load_before,
        "load_average_after": report.load_after,
        "contenders": {
            name: {
                "detail": report.contenders[name].detail,
                "processes": list(report.contenders[name].cpu),
                "throughput_mb_s": values[name]["throughput"],
                "throughput_spread": r.spread,
                "cpu_s_per_gb": values[name]["cpu"],
                "cpu_s_per_gb_by_process": {
                    label: r.cpu_per_gb(label) for label in report.contenders[name].cpu
                },
                "load_generator_cpu_s_per_gb": {
                    label: r.load_cpu_per_gb(label) for label in r.transfers[0].load_cpu
                },
                "latency_us": values[name]["latency"],
                "open_ms": values[name]["open"],
                "rounds": {
                    "seconds": [t.seconds for t in r.transfers],
                    "moved": [t.moved for t in r.transfers],
                    "cpu_seconds": [t.cpu for t in r.transfers],
                    "load_generator_cpu_seconds": [t.load_cpu for t in r.transfers],
                    "latency_s": r.latency,
                    "latency_cpu_s_per_round_trip": r.latency_cpu,
                    "open_s": r.open,
                    "open_errors": r.open_errors,
                },
            }
            for name, r in report.results.items()
        },
        "comparisons": comparisons(values),
    }


def chart(report: Report, path: Path) -> None:
    """Four bar charts (throughput, CPU per GB, round trip, open time), one bar per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = report.values()
    names = list(values)
    colors = {
        "tether": "#1f77b4",
        "tether via relay": "#6baed6",
        "tether via NATS fabric": "#3182bd",
        "tether, Python data plane": "#9ecae1",
        "direct": "#444444",
    }
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    for ax, metric in zip(axes.flat, ("throughput", "cpu", "latency", "open"), strict=True):
        shown = [n for n in names if values[n][metric] is not None]
        heights = [float(values[n][metric] or 0.0) for n in shown]
        bars = ax.barh(shown, heights, color=[colors.get(n, "#bbbbbb") for n in shown])
        ax.invert_yaxis()
        ax.set_title(
            METRIC_TITLES[metric]
            + (" - higher is better" if metric == "throughput" else " - lower is better"),
            fontsize=10,
        )
        ax.bar_label(bars, labels=[_fmt(metric, h) for h in heights], padding=3, fontsize=8)
        ax.margins(x=0.18)
        if metric == "open":
            ax.axvline(0.5, color="#d62728", linestyle="--", linewidth=1, label="target 0.5 ms")
            ax.legend(fontsize=8, loc="lower right")
    m = report.mode
    fig.suptitle(
        f"tether portal vs ssh -L, stunnel, socat on 127.0.0.1: {_size_text(m.size)} per "
        f"transfer, median of {m.rounds} rounds",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line ----------------------------------------------------------------------------


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (for example 1G, 256M, 65536)")
    factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]
    size = int(float(m.group(1)) * factor)
    if size <= 0:
        raise argparse.ArgumentTypeError("the size must be positive")
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, help="bytes per transfer (default 1G; 256M)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="256 MiB, 3 rounds (CI smoke)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the results")
    parser.add_argument(
        "--json",
        nargs="?",
        type=Path,
        const=True,
        metavar="PATH",
        help="also write JSON (to PATH, default OUT/portal.json)",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all)",
    )
    args = parser.parse_args(argv)

    base = QUICK if args.quick else FULL
    mode = Mode(
        size=args.size or base.size,
        rounds=args.rounds or base.rounds,
        rtts=base.rtts,
        opens=base.opens,
    )
    if mode.rounds < 1:
        parser.error("--rounds must be positive")
    keys = [k.strip() for k in args.contenders.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CONTENDERS]
    if unknown or not keys:
        parser.error(f"unknown contenders {unknown}: choose from {','.join(CONTENDERS)}")
    missing = missing_binaries(keys)
    if missing:
        for b in missing:
            print(f"error: {b.name} not found (Debian package: {b.package})", file=sys.stderr)
        packages = " ".join(sorted({b.package for b in missing}))
        print(
            f"install them with `apt-get install {packages}`, or leave their contenders out "
            "with --contenders",
            file=sys.stderr,
        )
        return 2

    env = environment()
    start, load_before = time.perf_counter(), _load_average()
    try:
        with signals_exit(), Bench(keys) as bench:
            results = run_rounds(bench, mode)
            contenders = dict(bench.contenders)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: all child processes stopped", file=sys.stderr)
        return 130
    report = Report(
        mode,
        "quick" if args.quick else "full",
        contenders,
        results,
        time.perf_counter() - start,
        load_before,
        _load_average(),
    )
    text = markdown(report, env)
    print()
    print(text, end="")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "portal.md").write_text(text, encoding="utf-8")
    chart(report, args.out / "portal.png")
    print(f"\nwritten: {args.out / 'portal.md'}, {args.out / 'portal.png'}", file=sys.stderr)
    if args.json is not None:
        path = args.out / "portal.json" if args.json is True else args.json
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document(report, env), indent=2) + "\n", encoding="utf-8")
        print(f"written: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
