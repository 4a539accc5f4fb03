"""Real brokers for tests, on loopback, each on a free port in a temporary directory: nats-server
with JetStream, mosquitto (persistence on) and redis-server. ``running(kind, directory)`` starts
one, waits until it accepts connections, and stops it on exit.

A missing server fails the test naming the Debian package to install (``ci/packages test``
installs them), it is not skipped.

The limits are set so that the payload-limit tests stay cheap: about 1 MiB on each broker
(NATS's default max_payload; Redis's smallest proto-max-bulk-len; mosquitto's max_packet_size
so that an adapter's max_payload is 1 MiB).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgserver import HOST, require, unused_port
from test_portal_programs import wait_for_port

KINDS = ("nats", "redis", "mqtt")
# Debian installs nats-server and mosquitto in /usr/sbin, which is not on a user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/usr/local/sbin"])

MQTT_MAX_PACKET = 1024 * 1024 + 5 + 2 + 255 + 2 + 1  # a 1 MiB payload with the longest topic
MOSQUITTO_CONF = """\
listener {port} {host}
allow_anonymous true
persistence true
persistence_location {dir}/
max_queued_messages 1000000
max_queued_bytes 0
max_packet_size {max_packet}
user {user}
log_dest file {dir}/mosquitto.log
"""


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[Any]
    log: Path

    @property
    def url(self) -> str:
        return f"{self.kind}://{HOST}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _command(kind: str, port: int, directory: Path) -> list[str]:
    if kind == "nats":
        server = require("nats-server", "nats-server", SEARCH_PATH)
        store = directory / "jetstream"
        return [server, "-js", "-a", HOST, "-p", str(port), "-sd", str(store)]
    if kind == "redis":
        server = require("redis-server", "redis-server", SEARCH_PATH)
        return [
            server,
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--proto-max-bulk-len",
            str(1024 * 1024),
            "--loglevel",
            "warning",
        ]
    if kind == "mqtt":
        server = require("mosquitto", "mosquitto", SEARCH_PATH)
        conf = directory / "mosquitto.conf"
        conf.write_text(
            MOSQUITTO_CONF.format(
                port=port,
                host=HOST,
                dir=directory,
                max_packet=MQTT_MAX_PACKET,
                user=pwd.getpwuid(os.getuid()).pw_name,  # as root: stay root (no setuid)
            )
        )
        return [server, "-c", str(conf)]
    raise ValueError(f"no such broker kind: {kind}")


@contextlib.contextmanager
def running(kind: str, directory: Path) -> Iterator[Server]:
    """Start the ``kind`` broker (``nats``, ``redis``, ``mqtt``) with its files in
    ``directory``; yield it once it accepts connections; stop it."""
    directory.mkdir(parents=True, exist_ok=True)
    port = unused_port()
    command = _command(kind, port, directory)
    log = directory / f"{kind}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = Server(kind, port, proc, log if kind != "mqtt" else directory / "mosquitto.log")
    try:
        try:
            wait_for_port(port, 15, " ".join(command), proc)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{server.output()}") from None
        yield server
    finally:
        server.stop()
