"""Starting and stopping a node's daemon process (``tether node start|stop``, ``tether apply``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tether.cli.control_client import call
from tether.core.errors import AlreadyExistsError, StoreError, TetherError
from tether.daemon import saved_nodes

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def spawn(home: Path, name: str) -> dict[str, Any]:
    """Start the node's daemon in the background and wait until its control API answers."""
    if saved_nodes.read_runtime(home, name) is not None:
        raise AlreadyExistsError(f"node {name!r} is already running")
    saved_nodes.ensure_dir(home, name)
    log_path = saved_nodes.log_file(home, name)
    out_path = saved_nodes.output_file(home, name)
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [
                sys.executable,
                "-m",
                "tether.daemon",
                "--home",
                str(home),
                "--log-file",
                str(log_path),
                name,
            ],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        info = saved_nodes.read_runtime(home, name)
        if info is not None:
            with contextlib.suppress(StoreError):
                return dict(call(saved_nodes.api_socket(home, name), "GET", "/node", timeout=5))
        if proc.poll() is not None:
            end = "\n".join(t for t in (tail(log_path, 5), tail(out_path, 10)) if t)
            raise StoreError(f"node {name!r} failed to start (exit {proc.returncode}):\n{end}")
        time.sleep(0.05)
    raise StoreError(
        f"node {name!r} did not come up within {START_TIMEOUT:g} s; see `tether node logs {name}`"
    )


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_one(home: Path, name: str) -> bool:
    info = saved_nodes.read_runtime(home, name)
    if info is None:
        return False
    pid = int(info["pid"])
    with contextlib.suppress(TetherError):
        call(saved_nodes.api_socket(home, name), "POST", "/shutdown", timeout=5)
    deadline = time.monotonic() + STOP_TIMEOUT
    while saved_nodes.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if saved_nodes.pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        saved_nodes.runtime_file(home, name).unlink()
    return True
