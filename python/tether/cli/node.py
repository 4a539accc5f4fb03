"""``tether node …`` and ``tether message send``."""

from __future__ import annotations

import argparse
import shutil
from functools import partial
from pathlib import Path
from typing import Any

from tether.cli import apply, apply_file
from tether.cli.common import (
    add_trust_arguments,
    check_host_port,
    check_route,
    duration,
    seconds,
    trust_body,
)
from tether.cli.control_client import call
from tether.cli.node_process import spawn, stop_one, tail
from tether.cli.parser import Context, Renamed, add_command, add_group, rename
from tether.core.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    StoreError,
    TetherError,
)
from tether.daemon import saved_nodes
from tether.daemon.main import main as run_daemon
from tether.daemon.saved_nodes import NodeConfig
from tether.node.transport.nats import check_token, server_address
from tether.store.local import default_home


def _home(ctx: Context) -> Path:
    return ctx.home or default_home()


def _summary(info: dict[str, Any]) -> str:
    listeners = ", ".join(lst["address"] for lst in info.get("listeners", [])) or "none"
    return (
        f"node {info['name']} running (pid {info['pid']})\n"
        f"  identity   {info.get('identity')} {info.get('identifier') or ''}\n"
        f"  listeners  {listeners}\n"
        f"  api        {info.get('api')}"
    ) + "".join(f"\n  {_waiting_line(w)}" for w in info.get("waiting") or [])


def _waiting_line(w: dict[str, Any]) -> str:
    """A saved resource that could not start (``tether.daemon.restore``)."""
    retrying = " (retrying)" if w.get("retrying") else ""
    return f"not started: {w['resource']} {w['name']}: {w['error']}{retrying}"


def _nats_spec(a: Any) -> dict[str, Any] | None:
    """``--nats`` and its options, checked (None: no fabric)."""
    servers = [u.strip() for spec in a.nats or [] for u in spec.split(",") if u.strip()]
    if not servers:
        if a.nats_claim or a.nats_user or a.nats_password_file:
            raise InvalidArgumentError(
                "--nats-claim, --nats-user and --nats-password-file need --nats URL"
            )
        return None
    for url in servers:
        try:
            server_address(url)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(
                f"--nats: {e} (several: comma-separated or --nats again)"
            ) from None
    for name in a.nats_claim or []:
        check_token(name, "--nats-claim:")
    password_file = None
    if a.nats_password_file:
        path = Path(a.nats_password_file).expanduser().absolute()
        if not path.is_file():
            raise InvalidArgumentError(
                f"--nats-password-file: no file {path}; put the password the cluster's operator "
                "gave this node there"
            )
        password_file = str(path)
    return {
        "servers": servers,
        "user": a.nats_user,
        "password_file": password_file,
        "names": list(a.nats_claim or []),
    }


def _create(ctx: Context) -> int:
    a = ctx.args
    reg = ctx.registry()
    identity = a.identity or a.name
    made_identity = False
    try:
        reg.get(identity)
    except NotFoundError:
        if a.identity:
            raise
        made_identity = True
    listeners = [] if a.no_tcp_listener else (a.tcp_listener or ["127.0.0.1:0"])
    for spec in listeners:
        check_host_port("--tcp-listener", spec, any_port=True)
    for spec in a.transit or []:
        if spec != "*":
            check_host_port("--transit", spec)  # (or * for any)
    cfg = NodeConfig(a.name, identity, listeners, transit=list(a.transit or []))
    cfg.nats = _nats_spec(a)
    saved_nodes.save_config(reg.store, cfg, create=True)
    if made_identity:
        reg.create_identity(identity)
    if a.foreground:
        ctx.close()
        return run_daemon(["--home", str(_home(ctx)), a.name])
    try:
        info = spawn(_home(ctx), a.name)
        busy = [w for w in info.get("waiting") or [] if w["resource"] == "listener"]
        if busy:  # the listener asked for cannot be had: no node, one line
            raise InvalidArgumentError(
                f"cannot create node {a.name!r}: {busy[0]['error']}; choose another "
                "--tcp-listener (port 0 picks a free one)"
            )
    except TetherError:
        stop_one(_home(ctx), a.name)
        saved_nodes.delete_config(reg.store, a.name)
        shutil.rmtree(saved_nodes.node_dir(_home(ctx), a.name), ignore_errors=True)
        if made_identity:
            reg.delete(identity)
        raise
    ctx.emit(_summary(info), info)
    return 0


def _run(ctx: Context) -> int:
    """Run a created node in this process, in the foreground (for systemd and containers);
    with ``--config FILE``, the node's part of an apply file (``docs/apply.md``), applied when
    it is up and again at each SIGHUP (a node the store has not seen yet is created from it)."""
    a = ctx.args
    home = _home(ctx)
    reload = None
    if a.config:
        path = Path(a.config)
        spec = apply_file.load(path)  # a mistake in the file stops it here, with its line
        if a.name not in spec.nodes:
            raise InvalidArgumentError(
                f"{a.config} declares no node {a.name!r} (it declares: "
                f"{', '.join(spec.nodes)}); name one of them, or add it to the file"
            )
        apply.create_config(home, ctx.registry(), spec, a.name)
        reload = partial(apply.converge_node, home, path.absolute(), a.name)
    saved_nodes.load_config(ctx.registry().store, a.name)
    running = saved_nodes.read_runtime(home, a.name)
    if running is not None:
        raise AlreadyExistsError(
            f"node {a.name!r} is already running (pid {running['pid']}); stop it first: "
            f"tether node stop {a.name}"
        )
    ctx.close()
    metrics = ["--metrics", a.metrics] if a.metrics else []
    return run_daemon(
        [
            *("--home", str(home), "--log-format", a.log_format, "--drain", repr(a.drain)),
            *metrics,
            a.name,
        ],
        reload=reload,
    )


def _status(home: Path, cfg: NodeConfig) -> dict[str, Any]:
    info = saved_nodes.read_runtime(home, cfg.name)
    return {
        "name": cfg.name,
        "running": info is not None,
        "pid": info["pid"] if info else None,
        "listeners": [lst["address"] for lst in info["listeners"]] if info else [],
        "configured_listeners": cfg.tcp_listeners,
        "identity": cfg.identity,
        "waiting": info.get("waiting", []) if info else [],
    }


def _list(ctx: Context) -> int:
    home = _home(ctx)
    items = [_status(home, c) for c in saved_nodes.list_configs(ctx.registry().store)]
    lines = [
        f"{i['name']:<16} {'running' if i['running'] else 'stopped':<8} "
        f"{', '.join(i['listeners']) or '-'}"
        + (
            f"  ({len(i['waiting'])} not started: `tether node show {i['name']}`)"
            if i["waiting"]
            else ""
        )
        for i in items
    ]
    ctx.emit("\n".join(lines) or "no nodes: `tether node create NAME` starts one", items)
    return 0


def _show(ctx: Context) -> int:
    home = _home(ctx)
    cfg = saved_nodes.load_config(ctx.registry().store, ctx.args.name)
    if saved_nodes.read_runtime(home, cfg.name) is None:
        st = _status(home, cfg)
        ctx.emit(f"node {cfg.name} stopped (`tether node start {cfg.name}`)", st)
        return 0
    info = call(saved_nodes.api_socket(home, cfg.name), "GET", "/node")
    human = (
        _summary(info)
        + "\n  workers    "
        + ", ".join(w["address"] for w in info["workers"])
        + f"\n  connections {len(info['connections'])} (at most "
        + f"{info.get('limits', {}).get('max_connections', '?')})"
    )
    if info.get("transit"):
        human += "\n  transit    " + ", ".join(info["transit"])
    fabric = info.get("nats")
    if fabric:
        claims = ", ".join(f"{n} ({state})" for n, state in fabric["claims"].items()) or "none"
        human += (
            f"\n  nats       {fabric['server'] or 'connecting'} as {fabric['name']}; "
            f"claims: {claims}"
        )
        if fabric.get("last_error") and not fabric["server"]:
            human += f"\n  nats error {fabric['last_error']}"
    for what, n in sorted((info.get("counters") or {}).items()):
        human += f"\n  {what}: {n}"
    ctx.emit(human, info)
    return 0


def _stop(ctx: Context) -> int:
    home = _home(ctx)
    saved_nodes.load_config(ctx.registry().store, ctx.args.name)
    was = stop_one(home, ctx.args.name)
    ctx.emit(
        f"node {ctx.args.name} {'stopped' if was else 'was not running'}",
        {"name": ctx.args.name, "stopped": was},
    )
    return 0


def _start(ctx: Context) -> int:
    saved_nodes.load_config(ctx.registry().store, ctx.args.name)
    info = spawn(_home(ctx), ctx.args.name)
    ctx.emit(_summary(info), info)
    return 0


def _delete(ctx: Context) -> int:
    home = _home(ctx)
    store = ctx.registry().store
    if ctx.args.all:
        names = [c.name for c in saved_nodes.list_configs(store)]
    elif ctx.args.name:
        names = [saved_nodes.load_config(store, ctx.args.name).name]
    else:
        raise InvalidArgumentError("name a node, or use --all")
    for name in names:
        stop_one(home, name)
        saved_nodes.delete_config(store, name)
        shutil.rmtree(saved_nodes.node_dir(home, name), ignore_errors=True)
    ctx.emit("\n".join(f"deleted node {n}" for n in names) or "no nodes", {"deleted": names})
    return 0


def _logs(ctx: Context) -> int:
    home = _home(ctx)
    saved_nodes.load_config(ctx.registry().store, ctx.args.name)
    text = tail(saved_nodes.log_file(home, ctx.args.name), ctx.args.lines)
    output = tail(saved_nodes.output_file(home, ctx.args.name), ctx.args.lines)
    if output:  # what the process wrote outside its log (a crash, say) comes last
        text = f"{text}\n--- output of the process outside its log:\n{output}".lstrip("\n")
    ctx.emit(text, {"name": ctx.args.name, "log": text.splitlines()})
    return 0


def _send(ctx: Context) -> int:
    a = ctx.args
    check_route(a.to)
    home = _home(ctx)
    saved_nodes.load_config(ctx.registry().store, a.from_node)
    if saved_nodes.read_runtime(home, a.from_node) is None:
        raise StoreError(f"node {a.from_node!r} is not running (`tether node start {a.from_node}`)")
    out = call(
        saved_nodes.api_socket(home, a.from_node),
        "POST",
        "/messages",
        {"to": a.to, "message": a.message, "timeout": a.timeout, **trust_body(a)},
        timeout=a.timeout + 5,
    )
    ctx.emit(out["reply"], out)
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = add_group(
        groups,
        "node",
        "create, start, stop and inspect nodes",
        (
            "Nodes: tether processes that host workers and route messages. Each runs as a daemon "
            "with a control API on a Unix socket."
        ),
        "tether node create n1 --tcp-listener 127.0.0.1:4000",
    )
    p = add_command(
        sub,
        "create",
        "create a node and start it in the background",
        "tether node create n1 --tcp-listener 127.0.0.1:4000",
        _create,
    )
    p.add_argument("name")
    p.add_argument(
        "--tcp-listener",
        action="append",
        metavar="HOST:PORT",
        help="listen for other nodes here (default 127.0.0.1:0, any free port)",
    )
    p.add_argument(
        "--no-tcp-listener",
        action="store_true",
        help="open no listener (the node connects out only)",
    )
    p.add_argument("--identity", help="identity name (default: one named after the node)")
    p.add_argument(
        "--transit",
        action="append",
        metavar="HOST:PORT",
        help="forward messages from other nodes on to this TCP address (repeatable; * for "
        "any): a node in the middle of a multi-hop route. By default a node opens connections "
        "only for its own callers, so a stranger cannot use it to reach or probe its network",
    )
    p.add_argument(
        "--nats",
        action="append",
        metavar="URL[,URL...]",
        help="connect out to this NATS cluster (nats://HOST:PORT, comma-separated or repeated: "
        "the servers tried in turn); the node is reachable there as /nats/IDENTIFIER "
        "(docs/routing.md, 'The NATS fabric')",
    )
    p.add_argument(
        "--nats-claim",
        action="append",
        metavar="NAME",
        help="claim this name on the NATS fabric (/nats/NAME), as its operator allows",
    )
    p.add_argument(
        "--nats-user",
        metavar="USER",
        help="the NATS user the cluster's operator gave this node (default: its identifier)",
    )
    p.add_argument(
        "--nats-password-file",
        metavar="FILE",
        help="a file holding that user's password (read at each start; never stored)",
    )
    p.add_argument("--foreground", action="store_true", help="run in this terminal")
    p = add_command(
        sub,
        "run",
        "run a created node in the foreground (systemd, containers): logs to standard error; "
        "SIGTERM drains, SIGINT stops, SIGHUP re-reads --config; exit status 0 stopped on "
        "request, 1 failed, 3 stopped after the drain period cut sessions",
        "tether node run db --drain 30s --log-format json",
        _run,
    )
    p.add_argument("name")
    p.add_argument(
        "--drain",
        type=duration,
        default=30.0,
        metavar="DURATION",
        help="on SIGTERM, open nothing new and let open portal sessions finish for up to this "
        "long, then stop (default 30s; 0: stop at once)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object per line (time, level, logger, message)",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics too (always on the control "
        "socket: GET /metrics)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the node's apply file (docs/apply.md): applied when the node is up, and again "
        "at each SIGHUP (systemd: ExecReload=kill -HUP $MAINPID)",
    )
    add_command(sub, "list", "list nodes and whether they run", "tether node list --json", _list)
    for name, help_text, handler in (
        ("show", "show a node: listeners, workers, connections", _show),
        ("stop", "stop a running node (its configuration stays)", _stop),
        ("start", "start a stopped node with its configuration", _start),
    ):
        p = add_command(sub, name, help_text, f"tether node {name} n1", handler)
        p.add_argument("name")
    p = add_command(
        sub, "delete", "stop and delete a node (or --all)", "tether node delete --all", _delete
    )
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="delete every node")
    p = add_command(sub, "logs", "print the end of a node's log", "tether node logs n1", _logs)
    p.add_argument("name")
    p.add_argument("--lines", type=int, default=50)

    sub = add_group(
        groups,
        "message",
        "send messages through nodes",
        "Send a message from a node along a route and print the reply.",
        "tether message send --at n1 --to /node/n2/service/echo hello",
    )
    p = add_command(
        sub,
        "send",
        "send MESSAGE from a node along ROUTE; print the reply",
        "tether message send --at n1 --to /node/n2/service/echo hello",
        _send,
    )
    # --at names a node in every command (--from was the sending node until this release)
    rename(p, Renamed("--from", "--at"))
    p.add_argument("--at", dest="from_node", required=True, metavar="NODE", help="the sending node")
    p.add_argument(
        "--to",
        required=True,
        metavar="ROUTE",
        help="the route, e.g. /node/n2/service/echo",
    )
    p.add_argument("--timeout", type=seconds, default=10.0, help="seconds to wait for the reply")
    add_trust_arguments(p)
    p.add_argument("message")
