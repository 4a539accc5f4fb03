"""A throwaway PostgreSQL server for tests, and the small helpers tests that run real programs
share (``require``, ``unused_port``).

``running()`` starts a cluster in a temporary directory (trust authentication on 127.0.0.1, a free
port, no fsync) and stops it on exit; ``PostgresServer.create_database`` makes a database and
returns its URL. PostgreSQL refuses to run as root: as root, it runs as the ``postgres`` user
(which the Debian package creates) through ``runuser``, in a directory that user owns.

Missing binaries fail the test (naming the Debian package to install) rather than skip it: these
tests exist to run, and CI installs the packages (.ci/run).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
PG_ROOT = Path("/usr/lib/postgresql")
PG_PACKAGES = "postgresql-15 postgresql-client-15"


def require(program: str, package: str, path: str | None = None) -> str:
    found = shutil.which(program, path=path)
    assert found, (
        f"{program} is not installed (looked in {path or 'PATH'}): this test runs it; install "
        f"the Debian package {package} (apt-get install {package})"
    )
    return found


def pg_bindir() -> Path:
    """The newest PostgreSQL server's bin directory (Debian puts them under PG_ROOT)."""
    found = sorted(
        (d for d in PG_ROOT.glob("*/bin") if (d / "initdb").exists() and d.parent.name.isdigit()),
        key=lambda d: int(d.parent.name),
    )
    assert found, (
        f"no PostgreSQL server under {PG_ROOT}: install the Debian package postgresql-15 "
        f"(apt-get install {PG_PACKAGES})"
    )
    return found[-1]


def unused_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class PostgresServer:
    port: int
    bindir: Path
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (owned by the superuser); its URL."""
        createdb = require("createdb", "postgresql-client-15", str(self.bindir))
        p = subprocess.run(
            [createdb, "-h", HOST, "-p", str(self.port), "-U", self.user, name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable"},
        )
        assert p.returncode == 0, f"createdb {name}: exit {p.returncode}\n{p.stdout}{p.stderr}"
        return self.url(name)


@contextlib.contextmanager
def running() -> Iterator[PostgresServer]:
    """Start a throwaway cluster; yield it; stop it (immediate shutdown) and remove its files."""
    bindir = pg_bindir()
    as_pg: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        require("runuser", "util-linux")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(
                "running as root, PostgreSQL needs the postgres user to run as: install the "
                "Debian package postgresql-15, which creates it"
            )
        as_pg = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp_path: the postgres user must be able to reach it.
    with tempfile.TemporaryDirectory(prefix="tether-pg-") as tmp:
        if owner is not None:
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        data = f"{tmp}/data"
        log = Path(tmp) / "server.log"

        def pg(*args: str, timeout: float = 60) -> None:
            p = subprocess.run(
                [*as_pg, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
            assert p.returncode == 0, (
                f"{' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}\n"
                + (log.read_text() if log.exists() else "")
            )

        pg(
            str(bindir / "initdb"),
            "-D",
            data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )
        port = unused_port()
        settings = (
            f"-p {port} -k {tmp} -c listen_addresses={HOST} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        pg(
            str(bindir / "pg_ctl"),
            "-D",
            data,
            "-l",
            str(log),
            "-o",
            settings,
            "-w",
            "-t",
            "30",
            "start",
        )
        try:
            yield PostgresServer(port, bindir)
        finally:
            pg(str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop")
