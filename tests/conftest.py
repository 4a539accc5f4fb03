"""Shared test configuration: Hypothesis settings profiles.

Select one with ``HYPOTHESIS_PROFILE`` (default ``ci``):

* ``ci``: the default; every property runs enough examples to be meaningful while the whole
  suite stays well under a minute on two cores.
* ``dev``: quick feedback while editing.
* ``thorough``: a long soak (run it locally or nightly, not on every push).

No profile has a deadline: the machines running the suite vary too much for per-example timing to
mean anything. Tests that are expensive per example scale their own ``max_examples`` down from
the selected profile (``settings().max_examples`` is the profile's value at import time).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from cli_run import Cli, echo_server

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --- the real `tether` command -----------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """The real ``tether`` command in a throwaway home; every node it started is deleted after
    the test (a module may define its own ``cli``, e.g. one shared by its tests)."""
    c = Cli(tmp_path / "home")
    try:
        yield c
    finally:
        c.run("node", "delete", "--all", ok=False)


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo service on a free loopback port (the target behind an outlet)."""
    with echo_server() as port:
        yield port


# --- a throwaway PostgreSQL, shared by the session -------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a fresh database on a throwaway PostgreSQL server (tests/pgserver.py), started
    the first time a test asks for it and stopped when the session ends. Tests share it: each
    keeps to its own names (for tether.store.authority, its own authority identifiers)."""
    from pgserver import running

    with running() as server:
        yield server.create_database("tether_test")


# --- both data planes -------------------------------------------------------------------------


@pytest.fixture(params=["rust", "python"])
def data_plane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test with either data plane: nodes (and daemons, which inherit the environment) read
    ``TETHER_DATAPLANE`` when they are created. A module uses it for every test with
    ``pytestmark = pytest.mark.usefixtures("data_plane")``."""
    data_plane: str = request.param
    monkeypatch.setenv("TETHER_DATAPLANE", data_plane)
    return data_plane


# --- no node outlives the tests --------------------------------------------------------------


def _leftover_daemons(base: str) -> list[tuple[int, str]]:
    """The node daemons (pid, command line) started under the session's temporary directory
    that still run."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(a.decode("utf-8", "replace") for a in argv if a)
        if "tether.daemon" in line and base in line:
            found.append((int(entry.name), line))
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that leaves a node running fails the run (it would hold ports and CPU for the
    tests after it, and on a user's machine): the leftovers are named, then killed."""
    import signal

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or not Path("/proc").is_dir():
        return
    left = _leftover_daemons(str(factory.getbasetemp()))
    for pid, _ in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if left:
        lines = "\n".join(f"  {pid}: {line}" for pid, line in left)
        print(f"\n{len(left)} node daemon(s) outlived the tests (killed now):\n{lines}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
