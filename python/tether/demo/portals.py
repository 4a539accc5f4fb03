"""The tether demo: an application reaches a database that has no open port, through a relay that
forwards only ciphertext — and an intruder with its own identity is turned away.

    tether demo                      # or: python -m tether.demo, or ci/demo from a fresh checkout
    tether demo --megabytes 64 --json

Everything runs on loopback, with the real ``tether`` command (each command line is printed
before it runs), in a temporary ``TETHER_HOME`` that is removed at the end:

1. A small "database" (an HTTP server in this process) serves ``GET /rows`` and ``GET /blob``.
2. Nodes: a **relay** with a TCP listener; a **db** node with no listener at all that claims the
   name ``db`` at the relay and runs a **tcp-outlet** to the database, allowing the app's identity
   only; an **app** node with a **tcp-inlet** whose route goes through the relay, inside a secure
   channel to the db node, to the outlet.
3. A request through the inlet; the secure channels listed at both ends show who authenticated
   whom (the relay holds no channel with the app: it forwarded ciphertext it cannot read).
4. A bulk download through the inlet, SHA-256 checked.
5. An **intruder** node with its own identity opens its own inlet along the same route: its
   connection is reset with no data, and the outlet counts the refusal, naming the intruder.
6. Clean up (``tether node delete --all``; the database stopped; the home removed) and a summary:
   exit 0 when every check held, 1 otherwise.

``python -m tether.demo.channel`` shows secure channels and credentials inside one process;
``python -m tether.demo.core`` shows the Rust core alone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from tether.daemon.saved_nodes import pid_alive

if TYPE_CHECKING:
    import http.server

DEFAULT_MEGABYTES = 256
MAX_MEGABYTES = 2048
COMMAND_TIMEOUT = 30.0
"""Limit for one ``tether`` command (starting a node waits up to 20 s for its daemon)."""
SOCKET_TIMEOUT = 15.0
"""Limit for any single connect, send or receive through the portal."""
DOWNLOAD_TIMEOUT = 120.0
LOG_LINES = 12

CHECKS = {
    "request": "GET /rows through the portal returned the database's rows",
    "mutual_authentication": "app and db authenticated each other's identity",
    "relay_blind": "the secure channel runs end to end: the relay holds none with the app",
    "bulk_sha256": "the download through the portal arrived intact (SHA-256)",
    "intruder_refused": "the intruder's connection was reset with no data",
    "outlet_refused": "the outlet counted the refusal, naming the intruder",
    "cleanup": "nodes deleted, no daemon left, database stopped, home removed",
}

ROWS = {
    "table": "customers",
    "rows": [
        {"id": 1, "name": "Ada Lovelace", "city": "London"},
        {"id": 2, "name": "Grace Hopper", "city": "Arlington"},
        {"id": 3, "name": "Katherine Johnson", "city": "Hampton"},
    ],
}

_IDENTIFIER = re.compile(r"\bI[0-9a-f]{40}\b")


class DemoError(Exception):
    """A step could not go on; ``nodes`` are the nodes whose logs explain it."""

    def __init__(self, message: str, nodes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.nodes = nodes


def short(identifier: str) -> str:
    return identifier[:11] + "…"


def shorten(text: str) -> str:
    """Every identifier in ``text`` shortened, for display."""
    return _IDENTIFIER.sub(lambda m: short(m.group(0)), text)


def free_port() -> int:
    """A free loopback port (for commands that show a real port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def megabytes_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_MEGABYTES:
        raise argparse.ArgumentTypeError(f"use a whole number of MiB from 1 to {MAX_MEGABYTES}")
    return n


# --- the "database" ---------------------------------------------------------------------------


class Database:
    """A threaded HTTP server on 127.0.0.1: ``GET /rows`` (small JSON) and ``GET /blob``
    (``megabytes`` MiB of random bytes, generated once in the background, with their SHA-256)."""

    def __init__(self, megabytes: int) -> None:
        import http.server

        self.size = megabytes << 20
        self.blob = b""
        self.sha256 = ""
        self.ready = threading.Event()
        threading.Thread(target=self._generate, name="demo-blob", daemon=True).start()
        db = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = SOCKET_TIMEOUT
            server_version = "demo-db/1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with contextlib.suppress(OSError):
                    db.serve(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="demo-db", kwargs={"poll_interval": 0.1}
        )
        self._thread.daemon = True
        self._thread.start()

    def _generate(self) -> None:
        blob = os.urandom(self.size)
        self.sha256 = hashlib.sha256(blob).hexdigest()
        self.blob = blob
        self.ready.set()

    def serve(self, req: http.server.BaseHTTPRequestHandler) -> None:
        if req.path == "/rows":
            body = json.dumps(ROWS).encode()
            ctype = "application/json"
        elif req.path == "/blob" and self.ready.wait(60):
            body, ctype = self.blob, "application/octet-stream"
        else:
            req.send_error(404)
            return
        req.send_response(200)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        view = memoryview(body)
        for i in range(0, len(view), 1 << 20):
            req.wfile.write(view[i : i + (1 << 20)])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


# --- the demo ---------------------------------------------------------------------------------


class Demo:
    def __init__(self, megabytes: int, out: TextIO) -> None:
        self.megabytes = megabytes
        self.out = out
        self.tty = out.isatty()
        self.home = Path(tempfile.mkdtemp(prefix="tether-demo-"))
        self.env = {**os.environ, "TETHER_HOME": str(self.home)}
        self.db: Database | None = None
        self.ids: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.checks: dict[str, bool | None] = dict.fromkeys(CHECKS)  # None: not reached
        self.failures: list[str] = []
        self.facts: dict[str, Any] = {}

    # --- output ---

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def show(self, *lines: str) -> None:
        for line in lines:
            self.say("    " + line)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks[name] = ok
        if not ok:
            self.failures.append(f"{name}: {detail}")
        self.show(("✓ " if ok else "✗ ") + detail)

    # --- running tether ---

    def tether(self, *args: str, nodes: tuple[str, ...] = (), quiet: bool = False) -> Any:
        """Run ``tether ARGS --json``, printing the command line; its parsed output."""
        argv = [*args, "--json"]
        what = "tether " + " ".join(args[:2])
        if not quiet:
            self.say("$ tether " + shlex.join(argv))
        try:
            p = subprocess.run(  # noqa: S603 - our interpreter, our CLI, no shell
                [sys.executable, "-m", "tether.cli", *argv],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=COMMAND_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise DemoError(
                f"`{what}` did not finish within {COMMAND_TIMEOUT:g} s", nodes
            ) from None
        if p.returncode != 0:
            reasons = p.stderr.strip().splitlines()[:8] or [f"exit status {p.returncode}"]
            raise DemoError(f"`{what}` failed: " + "\n    ".join(reasons), nodes)
        try:
            return json.loads(p.stdout)
        except ValueError:
            raise DemoError(f"`{what}` printed no JSON", nodes) from None

    def logs(self, name: str) -> None:
        """The end of a node's log (for a step that failed)."""
        argv = ["node", "logs", name, "--lines", str(LOG_LINES)]
        self.say("$ tether " + shlex.join(argv))
        try:
            p = subprocess.run(  # noqa: S603
                [sys.executable, "-m", "tether.cli", *argv],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=10,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            text = (p.stdout + p.stderr).strip() or "(empty)"
        except subprocess.TimeoutExpired:
            text = "(timed out)"
        self.show(*text.splitlines())

    def node(self, name: str, *flags: str) -> list[str]:
        """Create and start a node; its listeners' addresses."""
        info = self.tether("node", "create", name, *flags, nodes=(name,))
        self.ids[name] = info["identifier"]
        self.pids[name] = int(info["pid"])
        listeners = [str(x["address"]) for x in info.get("listeners", [])]
        self.show(
            f"{name}: identity {short(info['identifier'])}, "
            f"{', '.join(listeners) or 'no listener'} (pid {info['pid']})"
        )
        return listeners

    # --- the story ---

    def story(self) -> None:
        self.db = db = Database(self.megabytes)
        self.say("tether demo: an app reaches a database with no open port, through a relay")
        self.say("that forwards only ciphertext; an intruder is turned away.\n")
        self.show(
            f"database  127.0.0.1:{db.port} in this process: GET /rows, GET /blob "
            f"({self.megabytes} MiB)",
            f"commands  run with TETHER_HOME={self.home} (removed at the end)",
        )

        self.say("\n1. A relay, and a db node with no open port that connects out to it")
        listeners = self.node("relay", "--tcp-listener", f"127.0.0.1:{free_port()}")
        if not listeners:
            raise DemoError("the relay node started with no TCP listener", ("relay",))
        relay_host, relay_port = listeners[0].rsplit(":", 1)
        relay = f"/ip4/{relay_host}/tcp/{relay_port}"
        self.node("db", "--no-tcp-listener")
        # The relay takes claims only from whom its operator allows; db names the relay it
        # expects (its channel to the relay must end there, not at whoever answers).
        self.tether(
            "policy", "create", "--at", "relay", "--resource-type", "relay",
            f'subject.identifier = "{self.ids["db"]}"', nodes=("relay",),
        )  # fmt: skip
        claim = self.tether(
            "relay", "create", "db", "--relay", relay, "--at", "db",
            "--authorized", self.ids["relay"], nodes=("db", "relay"),
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while claim["state"] == "reconnecting" and time.monotonic() < deadline:
            # The first claim failed; the node retries with backoff: give it a few seconds.
            self.show(f"{claim['state']}: {shorten(claim.get('last_error') or '')}")
            time.sleep(1)
            claim = self.tether("relay", "show", "db", "--at", "db", nodes=("db", "relay"))
        if claim["state"] != "claimed":
            raise DemoError(
                f"db could not claim its name at the relay: {claim['state']}"
                + (f" ({claim['last_error']})" if claim.get("last_error") else ""),
                ("db", "relay"),
            )
        self.show(f"claimed the name db: db is reachable at {claim['forward_route']}")
        self.node("app", "--no-tcp-listener")

        self.say(
            "\n2. A portal: an outlet at db to the database, for the app only; an inlet at app"
        )
        policy = f'subject.identifier = "{self.ids["app"]}"'
        outlet = self.tether(
            "tcp-outlet", "create", "--at", "db", "--to", f"127.0.0.1:{db.port}",
            "--allow", policy, nodes=("db",),
        )  # fmt: skip
        self.show(
            f"tcp-outlet {outlet['name']} → {outlet['to']}, allows {shorten(outlet['allow'])}"
        )
        route = f"{relay}/service/forward_to_db/secure/api/service/outlet"
        inlet = self.tether(
            "tcp-inlet", "create", "--at", "app", "--from", f"127.0.0.1:{free_port()}",
            "--to", route, "--authorized", self.ids["db"], nodes=("app",),
        )  # fmt: skip
        host, port = inlet["from"].rsplit(":", 1)
        self.show(f"tcp-inlet {inlet['name']} listening on {inlet['from']}")
        self.facts.update(route=route, inlet=inlet["from"], database=f"127.0.0.1:{db.port}")

        self.say("\n3. A request through the portal")
        self._request(host, int(port))
        self._route(relay, db.port)
        self._who_authenticated_whom()

        self.say(f"\n4. {self.megabytes} MiB through the portal")
        self._download(host, int(port))

        self.say("\n5. An intruder, with its own identity, takes the same route")
        self.node("intruder", "--no-tcp-listener")
        bad = self.tether(
            "tcp-inlet", "create", "--at", "intruder", "--from", f"127.0.0.1:{free_port()}",
            "--to", route, "--authorized", self.ids["db"], nodes=("intruder",),
        )  # fmt: skip
        self.show(f"tcp-inlet {bad['name']} listening on {bad['from']}")
        bad_host, bad_port = bad["from"].rsplit(":", 1)
        self._intrude(bad_host, int(bad_port))

    def _request(self, host: str, port: int) -> None:
        import http.client

        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=SOCKET_TIMEOUT)
            try:
                conn.request("GET", "/rows")
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            raise DemoError(
                f"GET /rows through the inlet failed: {e!r}", ("app", "relay", "db")
            ) from None
        ms = (time.perf_counter() - t0) * 1000
        text = body.decode(errors="replace")
        self.show(
            f"GET http://{host}:{port}/rows → {resp.status} {resp.reason} in {ms:.0f} ms "
            "(the first connection opens the secure channel)",
            f"  {text if len(text) <= 88 else text[:87] + '…'}",
        )
        try:
            ok = resp.status == 200 and json.loads(body) == ROWS
        except ValueError:
            ok = False
        self.check("request", ok, "the database's rows, through the portal")
        if not ok:
            raise DemoError("the request through the portal returned the wrong answer", ("db",))

    def _route(self, relay: str, db_port: int) -> None:
        parts = [
            (relay, "TCP to the relay"),
            ("/service/forward_to_db", "relay forwards to db"),
            ("/secure/api", "secure channel to db"),
            ("/service/outlet", f"outlet → 127.0.0.1:{db_port}"),
        ]
        widths = [max(len(a), len(b)) for a, b in parts]
        self.show(
            "route  "
            + " ".join(a.ljust(w) for (a, _), w in zip(parts, widths, strict=True)).rstrip(),
            "       "
            + " ".join(b.ljust(w) for (_, b), w in zip(parts, widths, strict=True)).rstrip(),
        )

    def _who_authenticated_whom(self) -> None:
        app_id, db_id = self.ids["app"], self.ids["db"]
        at_app, at_db, at_relay = (self._channels(name) for name in ("app", "db", "relay"))
        app_sees_db = any(c["peer"] == db_id and c.get("initiator") for c in at_app)
        db_sees_app = any(c["peer"] == app_id and not c.get("initiator") for c in at_db)
        self.check(
            "mutual_authentication",
            app_sees_db and db_sees_app,
            "app verified db's identity and db verified app's, in one channel through the relay"
            if app_sees_db and db_sees_app
            else f"app's channel is to db: {app_sees_db}; db's is from app: {db_sees_app}",
        )
        blind = app_sees_db and not any(c["peer"] == app_id for c in at_relay)
        self.check(
            "relay_blind",
            blind,
            "the relay holds no channel with app: it forwarded ciphertext it cannot read"
            if blind
            else "the relay holds a channel with app (or app's channel does not reach db)",
        )

    def _channels(self, name: str) -> list[dict[str, Any]]:
        """The node's secure channels, listed with who is at the other end."""
        channels: list[dict[str, Any]] = self.tether(
            "secure-channel", "list", "--at", name, nodes=(name,)
        )
        for c in channels:
            peer = [n for n, i in self.ids.items() if i == c["peer"]]
            self.show(
                f"{c['address']}  peer {short(c['peer'])}"
                + (f" = {peer[0]}" if peer else " (unknown)")
                + ("  opened by " + name if c.get("initiator") else "  accepted by " + name)
            )
        return channels

    def _download(self, host: str, port: int) -> None:
        import http.client

        assert self.db is not None
        if not self.db.ready.wait(60):
            raise DemoError("the database did not generate its blob within 60 s")
        expected = self.db.sha256
        digest = hashlib.sha256()
        got = 0
        total = self.db.size
        t0 = last = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=SOCKET_TIMEOUT)
            try:
                conn.request("GET", "/blob")
                resp = conn.getresponse()
                if resp.status != 200:
                    raise DemoError(f"GET /blob answered {resp.status}", ("db",))
                buf = bytearray(1 << 20)
                view = memoryview(buf)
                while got < total:
                    n = resp.readinto(view)
                    if not n:
                        break
                    digest.update(view[:n])
                    got += n
                    now = time.perf_counter()
                    if now - t0 > DOWNLOAD_TIMEOUT:
                        raise DemoError(
                            f"the download took over {DOWNLOAD_TIMEOUT:g} s", ("app", "relay", "db")
                        )
                    if self.tty and now - last >= 0.25:
                        last = now
                        rate = got / (now - t0) / 1e6
                        print(
                            f"\r    {got >> 20:>5}/{total >> 20} MiB  {rate:5.0f} MB/s",
                            end="",
                            file=self.out,
                            flush=True,
                        )
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            raise DemoError(
                f"the download failed after {got:,} bytes: {e!r}", ("app", "relay", "db")
            ) from None
        finally:
            if self.tty:
                print("\r\x1b[K", end="", file=self.out, flush=True)
        seconds = time.perf_counter() - t0
        rate = got / seconds / 1e6 if seconds > 0 else 0.0
        self.facts.update(seconds_download=round(seconds, 3), mb_per_s=round(rate, 1))
        ok = got == total and digest.hexdigest() == expected
        self.show(f"GET /blob: {got >> 20} MiB in {seconds:.2f} s, {rate:.0f} MB/s")
        self.check(
            "bulk_sha256",
            ok,
            f"SHA-256 {expected[:16]}… matches the database's"
            if ok
            else f"received {got:,} of {total:,} bytes, SHA-256 {digest.hexdigest()[:16]}… "
            f"(expected {expected[:16]}…)",
        )

    def _intrude(self, host: str, port: int) -> None:
        received = b""
        t0 = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=SOCKET_TIMEOUT) as s:
                s.sendall(b"GET /rows HTTP/1.0\r\nHost: db\r\n\r\n")
                while chunk := s.recv(65536):
                    received += chunk
            ending = "closed"
        except (ConnectionResetError, BrokenPipeError):
            ending = "reset"
        except TimeoutError:
            ending = f"still open after {SOCKET_TIMEOUT:g} s"
        except OSError as e:
            ending = f"failed: {e.strerror or e!r}"
        ms = (time.perf_counter() - t0) * 1000
        self.show(f"GET http://{host}:{port}/rows → connection {ending} after {ms:.0f} ms, "
                  f"{len(received)} bytes received")  # fmt: skip
        refused = not received and ending in ("closed", "reset")
        self.check(
            "intruder_refused",
            refused,
            "the intruder got nothing" if refused else "the intruder was not refused cleanly",
        )
        outlet = self.tether("tcp-outlet", "show", "outlet", "--at", "db", nodes=("db",))
        intruder = self.ids["intruder"]
        self.show(
            f"{outlet['total']} sessions served, {outlet['refused']} refused",
            f"last error: {shorten(outlet['last_error'] or '(none)')}",
        )
        named = outlet["refused"] >= 1 and intruder in outlet["last_error"]
        self.check(
            "outlet_refused",
            named,
            f"db's outlet refused the intruder {short(intruder)} by its policy"
            if named
            else "the outlet does not report refusing the intruder",
        )
        if not (refused and named):
            raise DemoError("the intruder was not refused as expected", ("db", "intruder"))

    # --- cleaning up ---

    def _daemons(self) -> set[int]:
        """Daemon processes of this demo's home still running: the ones we started."""

        pids = set(self.pids.values())
        with contextlib.suppress(OSError):
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                    if b"tether.daemon" in cmd and str(self.home).encode() in cmd:
                        pids.add(int(entry))
        return {pid for pid in pids if pid_alive(pid)}

    def cleanup(self, step: str) -> None:
        self.say(f"\n{step}. Clean up")
        deleted = False
        try:
            out = self.tether("node", "delete", "--all")
            self.show("deleted " + (", ".join(out["deleted"]) or "no nodes"))
            deleted = True
        except DemoError as e:
            self.show(f"✗ {e}")
        left = self._daemons()
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self._daemons()
        for pid in left:  # only daemons of our own temporary home
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if left:
            self.show(f"✗ killed daemons still running: {sorted(left)}")
        stopped = True
        if self.db is not None:
            try:
                self.db.close()
            except Exception as e:  # report it, keep cleaning up
                stopped = False
                self.show(f"✗ stopping the database: {e!r}")
        shutil.rmtree(self.home, ignore_errors=True)
        gone = not self.home.exists()
        self.check(
            "cleanup",
            deleted and not left and stopped and gone,
            f"database stopped, {self.home} removed" if gone else f"could not remove {self.home}",
        )


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Ctrl-C does not stop the clean-up (which has its own time limits)."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(megabytes: int = DEFAULT_MEGABYTES, *, json_output: bool = False) -> int:
    """Run the demo; 0 when every check held. With ``json_output`` the story goes to stderr and
    a summary (JSON) to stdout."""
    out = sys.stderr if json_output else sys.stdout
    with contextlib.suppress(AttributeError, ValueError):
        out.reconfigure(errors="replace")  # type: ignore[union-attr]
    t0 = time.perf_counter()
    demo = Demo(megabytes, out)
    error: str | None = None
    interrupted = False
    old_term: Any = None
    with contextlib.suppress(ValueError):
        old_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            demo.story()
        except DemoError as e:
            error = str(e)
            demo.say(f"\n✗ {e}")
            for name in e.nodes:
                if name in demo.ids:
                    demo.logs(name)
        except KeyboardInterrupt:
            interrupted = True
            error = "interrupted"
            demo.say("\n✗ interrupted")
        except Exception as e:  # a bug in the demo: say so, still clean up
            error = f"unexpected {type(e).__name__}: {e}"
            demo.say("\n✗ " + error)
            demo.say(traceback.format_exc().rstrip())
        finally:
            with _uninterruptible():
                demo.cleanup("6")
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    seconds = time.perf_counter() - t0
    failed = [name for name, ok in demo.checks.items() if not ok]
    mark = {True: "✓", False: "✗", None: "·"}
    ok = not failed and error is None
    demo.say()
    if ok:
        demo.say(f"✓ every check held ({seconds:.1f} s):")
        for name in CHECKS:
            demo.show(f"{name:<22} {CHECKS[name]}")
    else:
        demo.say(f"✗ the demo FAILED ({seconds:.1f} s)" + (f": {error}" if error else ""))
        for name in CHECKS:
            demo.show(f"{mark[demo.checks[name]]} {name:<22} {CHECKS[name]}")
        if any(ok is None for ok in demo.checks.values()):
            demo.show("(· not reached)")
    if json_output:
        summary = {
            "ok": ok,
            "checks": {name: bool(ok) for name, ok in demo.checks.items()},
            "not_reached": [name for name, ok in demo.checks.items() if ok is None],
            "failures": demo.failures,
            "error": error,
            "megabytes": megabytes,
            "seconds": round(seconds, 3),
            "home": str(demo.home),
            "identifiers": demo.ids,
            **demo.facts,
        }
        print(json.dumps(summary, indent=2, sort_keys=True), flush=True)
    if interrupted:
        return 130
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tether.demo",
        description=(
            "Portals end to end on loopback, with the real tether command: an app reaches a "
            "database with no open port through a relay that sees only ciphertext, and an "
            "intruder is refused. Cleans up after itself."
        ),
        epilog="example: python -m tether.demo --megabytes 64 --json",
    )
    parser.add_argument(
        "--megabytes",
        type=megabytes_arg,
        default=DEFAULT_MEGABYTES,
        metavar="N",
        help=f"size of the download through the portal, MiB (default {DEFAULT_MEGABYTES})",
    )
    parser.add_argument(
        "--json", action="store_true", help="story on stderr, a JSON summary on stdout"
    )
    args = parser.parse_args(argv)
    return run(args.megabytes, json_output=args.json)


if __name__ == "__main__":
    sys.exit(main())
