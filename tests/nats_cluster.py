"""A three-server NATS cluster on loopback for the fabric tests: each server on its own client
and route port, routes to the others, and an authorization block with one user per tether node,
whose permissions make the subject name the sender (:class:`tether.node.fabric.FabricUser`):

* node ``S`` may publish only to ``tether.*.S`` (a message to ``D`` from ``S`` is
  ``tether.D.S``) and subscribe only to ``tether.S.*``, plus ``tether.NAME.*`` for each name it
  may claim;
* nobody connects without a user (no anonymous access).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from brokers import SEARCH_PATH
from pgserver import HOST, require, unused_port
from test_portal_programs import wait_for_port
from tether.node import fabric


@dataclass(frozen=True)
class FabricUser:
    """A node's NATS user: its identifier (or any token), password, and the names it may claim."""

    node: str
    password: str
    names: Sequence[str] = ()
    tap: bool = False
    """An operator's user that may read every subject (and publish nothing): what the cluster
    itself can see."""

    def permissions(self) -> dict[str, object]:
        if self.tap:
            return {"publish": {"deny": [">"]}, "subscribe": {"allow": [">"]}}
        return fabric.FabricUser(self.node, tuple(self.names)).permissions()


@dataclass
class ClusterServer:
    name: str
    port: int
    route_port: int
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"


@dataclass
class Cluster:
    servers: list[ClusterServer] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self, s: ClusterServer) -> None:
        command = [require("nats-server", "nats-server", SEARCH_PATH), "-c", str(s.conf)]
        with s.log.open("ab") as out:
            s.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(s.port, 15, " ".join(command), s.proc)

    def kill(self, s: ClusterServer) -> None:
        """SIGKILL: the server dies without telling its clients."""
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)

    def stop_all(self) -> None:
        for s in self.servers:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.terminate()
                try:
                    s.proc.wait(10)
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait(10)


def _conf(s: ClusterServer, routes: Sequence[int], authorization: str, route_password: str) -> str:
    route_urls = json.dumps([f"nats-route://route:{route_password}@{HOST}:{p}" for p in routes])
    return (
        f"server_name: {s.name}\n"
        f"listen: {HOST}:{s.port}\n"
        "max_payload: 1048576\n"
        f"{authorization}\n"
        f"cluster {{\n  name: tether-fabric\n  listen: {HOST}:{s.route_port}\n"
        f"  authorization {{ user: route, password: {route_password} }}\n"
        f"  routes: {route_urls}\n}}\n"
    )


@contextlib.contextmanager
def running_cluster(
    directory: Path,
    users: Sequence[FabricUser],
    *,
    size: int = 3,
    authorization: str | None = None,
) -> Iterator[Cluster]:
    """Start ``size`` clustered servers with ``users`` (or with the ``authorization`` block
    given, as ``tether fabric users`` writes it); yield once all accept connections."""
    if authorization is None:
        # nats-server's configuration format accepts JSON values.
        entries = [
            {"user": u.node, "password": u.password, "permissions": u.permissions()} for u in users
        ]
        authorization = f"authorization {{ users: {json.dumps(entries)} }}"
    directory.mkdir(parents=True, exist_ok=True)
    cluster = Cluster()
    for i in range(size):
        cluster.servers.append(
            ClusterServer(
                f"fabric-{i}",
                unused_port(),
                unused_port(),
                directory / f"fabric-{i}.conf",
                directory / f"fabric-{i}.log",
            )
        )
    for s in cluster.servers:
        others = [o.route_port for o in cluster.servers if o is not s]
        s.conf.write_text(_conf(s, others, authorization, "route-secret"))
    try:
        for s in cluster.servers:
            cluster.start(s)
        yield cluster
    finally:
        cluster.stop_all()


def users_by_node(users: Sequence[FabricUser]) -> Mapping[str, FabricUser]:
    return {u.node: u for u in users}
