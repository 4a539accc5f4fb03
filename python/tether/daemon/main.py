"""``python -m tether.daemon --home HOME NAME``: run the node NAME of HOME as a daemon, serving
the control API's resources (:mod:`tether.daemon.node_resources`,
:mod:`tether.daemon.authority_resources`). ``tether node run`` runs it in the foreground.

Exit status: 0 stopped on request (a signal, ``POST /shutdown``) with every portal session
finished; 1 could not start, or failed; 2 usage; 3 stopped on request after the drain period
ran out, closing portal sessions still open. SIGHUP re-reads the node's file, when it has one
(``tether node run NAME --config FILE``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import anyio

from tether.core.errors import TetherError
from tether.daemon import authority_resources, logs, node_resources, saved_nodes, stream_resources
from tether.daemon.control import Router
from tether.daemon.daemon import Daemon
from tether.node.alloc import tune_for_bulk
from tether.node.routing import host_and_port
from tether.store.local import Store

log = logging.getLogger("tether.daemon")

DRAIN_CUT = 3
"""The exit status of a node stopped after its drain period ran out (sessions were cut)."""


def control_api() -> Router[Daemon]:
    """Every resource of the control API."""
    api: Router[Daemon] = Router()
    api.include(node_resources.api)
    api.include(authority_resources.api)
    api.include(stream_resources.api)
    return api


def main(argv: list[str] | None = None, reload: Callable[[], str] | None = None) -> int:
    """Run the node; ``reload`` converges it to its file (``tether node run --config``: at the
    start and at each SIGHUP; :attr:`Daemon.reload`)."""
    parser = argparse.ArgumentParser(
        prog="python -m tether.daemon",
        description="Run a tether node (normally started by `tether node create|start`).",
    )
    parser.add_argument("--home", required=True)
    parser.add_argument(
        "--log-file", help="log here, rotated by size (default: standard error)", type=Path
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object per line (for log collectors)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on SIGTERM, let open portal sessions finish for up to this long (default 0)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve GET /metrics (Prometheus) here too, besides the control socket",
    )
    parser.add_argument("name")
    args = parser.parse_args(argv)
    metrics_address = None
    if args.metrics:
        try:
            metrics_address = host_and_port(args.metrics, any_port=True)
        except ValueError as e:
            parser.error(f"--metrics {args.metrics!r}: {e}; use HOST:PORT (e.g. 127.0.0.1:9464)")
    home = Path(args.home)
    try:
        store = Store(home)
        config = saved_nodes.load_config(store, args.name)
        saved_nodes.ensure_dir(home, args.name)
        saved_nodes.hold_lock(home, args.name)  # one process per node, until this one ends
        rotate = logs.rotation(os.environ)
    except TetherError as e:
        print(f"tether node: {e}", file=sys.stderr)
        return 1
    logs.configure(args.log_file, sys.stderr, json_lines=args.log_format == "json", rotate=rotate)
    daemon = Daemon(home, store, config, control_api())
    daemon.drain = max(0.0, args.drain)
    daemon.metrics_address = metrics_address
    daemon.reload = reload
    try:
        tune_for_bulk()
        anyio.run(daemon.run, backend="trio")
    except TetherError as e:
        log.error("node %s failed: %s", args.name, e)
        return 1
    finally:
        with contextlib.suppress(OSError):
            saved_nodes.runtime_file(home, args.name).unlink()
        with contextlib.suppress(OSError):
            saved_nodes.api_socket(home, args.name).unlink()
        store.close()
    return DRAIN_CUT if daemon.cut else 0
