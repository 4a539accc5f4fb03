"""Nodes as the ``tether`` command manages them: configuration in the state store, and each
running node's files under ``$TETHER_HOME/nodes/NAME/`` (0700): ``api.sock`` (the control API,
0600), ``runtime.json`` (pid, listeners; written atomically when the node is up) and
``node.log``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import ItemsView, Iterator, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tether.core.errors import AlreadyExistsError, NotFoundError, StoreError
from tether.core.message import TCP, Address
from tether.identity.registry import check_name
from tether.store.local import Store


@dataclass
class NodeConfig:
    name: str
    identity: str | None = None
    tcp_listeners: list[str] = field(default_factory=list)
    services: list[dict[str, str]] = field(
        default_factory=lambda: [{"kind": "echo", "address": "echo"}]
    )
    channel_listeners: list[dict[str, Any]] = field(default_factory=list)
    relays: list[dict[str, str]] = field(default_factory=list)
    tcp_outlets: list[dict[str, Any]] = field(default_factory=list)
    tcp_inlets: list[dict[str, Any]] = field(default_factory=list)
    authority: dict[str, Any] | None = None
    memberships: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    transit: list[str] = field(default_factory=list)
    """TCP addresses (or ``*``) the node forwards to for remote senders (``--transit``)."""
    policy_serial: int = 0
    """The number of the last policy named (``policyN``): a deleted name is never reused."""
    streams: list[dict[str, Any]] = field(default_factory=list)
    """The streams it produces (``tether stream create``): each gets a new key at a start."""
    nats: dict[str, Any] | None = None
    """Its NATS fabric (``--nats``): ``servers``, ``user``, ``password_file``, ``names``."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NodeConfig:
        d = json.loads(text)
        return cls(
            d["name"],
            d.get("identity"),
            list(d.get("tcp_listeners", [])),
            list(d.get("services", [])),
            list(d.get("channel_listeners", [])),
            list(d.get("relays", [])),
            list(d.get("tcp_outlets", [])),
            list(d.get("tcp_inlets", [])),
            d.get("authority"),
            list(d.get("memberships", [])),
            list(d.get("policies", [])),
            list(d.get("transit", [])),
            int(d.get("policy_serial", 0)),
            list(d.get("streams", [])),
            d.get("nats"),
        )


def node_dir(home: Path, name: str) -> Path:
    return home / "nodes" / name


def api_socket(home: Path, name: str) -> Path:
    return node_dir(home, name) / "api.sock"


def runtime_file(home: Path, name: str) -> Path:
    return node_dir(home, name) / "runtime.json"


def log_file(home: Path, name: str) -> Path:
    """The node's log (rotated by size: ``node.log.1`` … are older; ``tether.daemon.logs``)."""
    return node_dir(home, name) / "node.log"


def output_file(home: Path, name: str) -> Path:
    """What the node's process writes outside its log (a crash before logging starts),
    rewritten at each start."""
    return node_dir(home, name) / "output.txt"


#: The longest path a Unix socket may have (``sun_path`` is 108 bytes, with the final NUL).
MAX_SOCKET_PATH = 107


def ensure_dir(home: Path, name: str) -> Path:
    sock = api_socket(home.absolute(), name)
    if len(os.fsencode(sock)) > MAX_SOCKET_PATH:
        raise StoreError(
            f"the node's control socket {sock} would be {len(os.fsencode(sock))} bytes long, "
            f"over the {MAX_SOCKET_PATH} a Unix socket allows: use a shorter TETHER_HOME (or "
            "--home), or a shorter node name"
        )
    d = node_dir(home, name)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d.parent, 0o700)
    os.chmod(d, 0o700)
    return d


def save_config(store: Store, cfg: NodeConfig, *, create: bool = False) -> None:
    check_name(cfg.name, "node")
    with store.transaction():
        exists = store.query_one("SELECT 1 FROM nodes WHERE name = ?", (cfg.name,))
        if create and exists:
            raise AlreadyExistsError(
                f"a node named {cfg.name!r} already exists; `tether node start {cfg.name}` "
                "starts it"
            )
        if not create and not exists:
            raise NotFoundError(f"no node named {cfg.name!r}")
        store.execute(
            "INSERT OR REPLACE INTO nodes (name, config, created_at) VALUES (?, ?, "
            "COALESCE((SELECT created_at FROM nodes WHERE name = ?), ?))",
            (cfg.name, cfg.to_json(), cfg.name, int(time.time())),
        )


def load_config(store: Store, name: str) -> NodeConfig:
    row = store.query_one("SELECT config FROM nodes WHERE name = ?", (name,))
    if row is None:
        raise NotFoundError(f"no node named {name!r}; `tether node list` shows the ones there are")
    return NodeConfig.from_json(str(row[0]))


def list_configs(store: Store) -> list[NodeConfig]:
    return [
        NodeConfig.from_json(str(r[0]))
        for r in store.query("SELECT config FROM nodes ORDER BY name")
    ]


def delete_config(store: Store, name: str) -> None:
    if store.execute("DELETE FROM nodes WHERE name = ?", (name,)) == 0:
        raise NotFoundError(f"no node named {name!r}")


#: The saved configuration's section of each kind of resource the control API serves at a path,
#: the field that names one there, and what one is called (:func:`delete_saved`).
SAVED = {
    "/tcp-inlets": ("tcp_inlets", "name", "tcp-inlet"),
    "/tcp-outlets": ("tcp_outlets", "name", "tcp-outlet"),
    "/relays": ("relays", "name", "relay"),
    "/policies": ("policies", "id", "policy"),
    "/secure-channel-listeners": ("channel_listeners", "address", "secure-channel listener"),
    "/services": ("services", "address", "service"),
    "/memberships": ("memberships", "identifier", "membership of"),
    "/streams": ("streams", "stream", "stream"),
}


def delete_saved(store: Store, node: str, path: str, key: str) -> None:
    """Delete the resource ``key`` (of the kind the control API serves at ``path``) from the
    saved configuration of ``node``, which is stopped: its next start goes without it."""
    with store.transaction():
        cfg = load_config(store, node)
        if path == "/authority":
            if cfg.authority is None:
                raise NotFoundError(f"node {node!r} is stopped and runs no authority")
            cfg.authority = None
            save_config(store, cfg)
            return
        section, field_name, what = SAVED[path]
        entries = getattr(cfg, section)
        kept = [e for e in entries if not (isinstance(e, dict) and e.get(field_name) == key)]
        if len(kept) == len(entries):
            raise NotFoundError(f"node {node!r} is stopped and has no {what} {key!r} saved")
        setattr(cfg, section, kept)
        save_config(store, cfg)


def identity_users(store: Store, home: Path, identity: str) -> list[tuple[str, str]]:
    """The nodes that use the local identity ``identity`` (as their own, for their authority,
    or for a secure-channel listener): each node's name, and how, in a few words."""
    users = []
    for cfg in list_configs(store):
        roles = []
        if cfg.identity == identity:
            roles.append("its identity")
            if cfg.authority is not None:
                roles.append("its authority")
        if any(lst.get("identity") == identity for lst in cfg.channel_listeners):
            roles.append("a secure-channel listener")
        if roles:
            state = "running" if read_runtime(home, cfg.name) is not None else "stopped"
            users.append((cfg.name, f"node {cfg.name} ({state}; {' and '.join(roles)})"))
    return users


def write_runtime(home: Path, name: str, info: dict[str, Any]) -> None:
    path = runtime_file(home, name)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def lock_file(home: Path, name: str) -> Path:
    """Held (``flock``) by the node's process while it runs: the kernel lets it go when the
    process ends, however it ends, so whether a node runs never depends on a pid that another
    process may have been given since."""
    return node_dir(home, name) / "lock"


def hold_lock(home: Path, name: str) -> int:
    """Take the node's lock for this process (its descriptor, open until the process ends), or
    :class:`AlreadyExistsError` if another process runs the node."""
    fd = os.open(lock_file(home, name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        info = _runtime_info(home, name)
        pid = f" (pid {info.get('pid')})" if info else ""
        raise AlreadyExistsError(
            f"node {name!r} is already running{pid}; stop it first: tether node stop {name}"
        ) from None
    return fd


def lock_held(home: Path, name: str) -> bool | None:
    """Whether a process holds the node's lock (None: there is no lock file)."""
    try:
        fd = os.open(lock_file(home, name), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (closing lets our shared lock go)
    return False


def _runtime_info(home: Path, name: str) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads(runtime_file(home, name).read_text())
    except (OSError, ValueError):
        return None
    return info


def read_runtime(home: Path, name: str) -> dict[str, Any] | None:
    """The running node's runtime facts, or None if it is not running (its process holds its
    lock: :func:`lock_file`)."""
    path = runtime_file(home, name)
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    except OSError as e:  # (no descriptor left, say): not "not running"
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None
    held = lock_held(home, name)
    if held is False or (held is None and not pid_alive(int(info.get("pid", 0)))):
        with contextlib.suppress(OSError):
            runtime_file(home, name).unlink()
        return None
    return info


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def resolver(home: Path) -> Any:
    """Resolve ``/node/NAME`` to that node's first TCP listener (it must be running)."""

    def resolve(name: str) -> tuple[Address, ...]:
        info = read_runtime(home, name)
        if info is None:
            if not node_dir(home, name).is_dir():
                raise NotFoundError(f"no node named {name!r} (`tether node list`)")
            raise NotFoundError(f"node {name!r} is not running (`tether node start {name}`)")
        listeners = info.get("listeners") or []
        if not listeners:
            raise StoreError(f"node {name!r} has no TCP listener to reach it by")
        return (Address(TCP, str(listeners[0]["address"]).encode()),)

    return resolve


def identifier_resolver(home: Path) -> Any:
    """The identifier of the local node NAME (a ``/node/NAME`` in a route), or None: what a
    secure channel to that node must authenticate as."""

    def identify(name: str) -> str | None:
        info = read_runtime(home, name)
        identifier = info.get("identifier") if info is not None else None
        return str(identifier) if identifier else None

    return identify


class RelayOwners(MutableMapping[str, str]):
    """Who owns which relay name at a relay node, kept in the store so ownership survives the
    relay node's restart."""

    def __init__(self, store: Store, node: str) -> None:
        self.store = store
        self.node = node

    def __getitem__(self, name: str) -> str:
        row = self.store.query_one(
            "SELECT owner FROM relay_owners WHERE node = ? AND name = ?", (self.node, name)
        )
        if row is None:
            raise KeyError(name)
        return str(row[0])

    def __setitem__(self, name: str, owner: str) -> None:
        self.store.execute(
            "INSERT OR REPLACE INTO relay_owners (node, name, owner) VALUES (?, ?, ?)",
            (self.node, name, owner),
        )

    def __delitem__(self, name: str) -> None:
        if not self.store.execute(
            "DELETE FROM relay_owners WHERE node = ? AND name = ?", (self.node, name)
        ):
            raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        rows = self.store.query("SELECT name FROM relay_owners WHERE node = ?", (self.node,))
        return iter([str(r[0]) for r in rows])

    def items(self) -> ItemsView[str, str]:
        """Every (name, owner) in one query (the mixin's would query once per name)."""
        rows = self.store.query("SELECT name, owner FROM relay_owners WHERE node = ?", (self.node,))
        return dict((str(r[0]), str(r[1])) for r in rows).items()

    def __len__(self) -> int:
        row = self.store.query_one("SELECT COUNT(*) FROM relay_owners WHERE node = ?", (self.node,))
        return int(row[0]) if row else 0
