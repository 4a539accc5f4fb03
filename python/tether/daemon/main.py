"""``python -m tether.daemon --home HOME NAME``: run the node NAME of HOME as a daemon, serving
the control API's resources (:mod:`tether.daemon.node_resources`,
:mod:`tether.daemon.authority_resources`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import anyio

from tether.core.errors import TetherError
from tether.daemon import authority_resources, logs, node_resources, saved_nodes
from tether.daemon.control import Router
from tether.daemon.daemon import Daemon
from tether.node.alloc import tune_for_bulk
from tether.store.local import Store

log = logging.getLogger("tether.daemon")


def control_api() -> Router[Daemon]:
    """Every resource of the control API."""
    api: Router[Daemon] = Router()
    api.include(node_resources.api)
    api.include(authority_resources.api)
    return api


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tether.daemon",
        description="Run a tether node (normally started by `tether node create|start`).",
    )
    parser.add_argument("--home", required=True)
    parser.add_argument(
        "--log-file", help="log here, rotated by size (default: standard error)", type=Path
    )
    parser.add_argument("name")
    args = parser.parse_args(argv)
    home = Path(args.home)
    try:
        store = Store(home)
        config = saved_nodes.load_config(store, args.name)
        saved_nodes.ensure_dir(home, args.name)
    except TetherError as e:
        print(f"tether node: {e}", file=sys.stderr)
        return 1
    logs.configure(args.log_file, sys.stderr)
    daemon = Daemon(home, store, config, control_api())
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
    return 0
