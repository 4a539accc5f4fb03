"""The distributions install where a user would install them.

* The x86_64 manylinux2014 wheel installs into a clean virtualenv (no system site-packages) on a
  PATH with no Rust toolchain, its dependencies from PyPI as binary wheels, and ``tether demo``
  runs from it to the end.
* The sdist builds (with cargo, as ``pip install`` of a source distribution does) and installs
  into another clean virtualenv, and the extension imports there.

The wheel and the sdist are the ones in ``dist/`` when they are newer than every source file;
otherwise ``ci/wheels`` builds them first (minutes on a fresh checkout; later runs reuse the cargo
target directory). These tests need the network (PyPI), as any ``pip install`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
WHEEL = DIST / f"tether-{VERSION}-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
SDIST = DIST / f"tether-{VERSION}.tar.gz"
# What goes into the distributions: a change to any of them makes a built one stale.
SOURCES = ["rust", "python", "Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "LICENSE"]
RUST_TOOLS = ("cargo", "rustc", "rustup")


def _newest_source() -> float:
    """The latest modification time of the files that go into the distributions."""
    newest = 0.0
    for name in SOURCES:
        top = ROOT / name
        if top.is_file():
            newest = max(newest, top.stat().st_mtime)
            continue
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in {"target", "__pycache__"}]  # cargo's, bytecode
            for file in files:
                if not file.endswith((".so", ".pyc")):  # maturin develop's extension, bytecode
                    newest = max(newest, os.stat(os.path.join(folder, file)).st_mtime)
    return newest


@pytest.fixture(scope="session")
def dists() -> tuple[Path, Path]:
    """The x86_64 wheel and the sdist, built by ci/wheels unless dist/ has fresh ones."""
    newest = _newest_source()
    stale = [
        target
        for target, path in (("x86_64", WHEEL), ("sdist", SDIST))
        if not path.exists() or path.stat().st_mtime <= newest
    ]
    if stale:
        p = subprocess.run(
            [str(ROOT / "ci" / "wheels"), *stale],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert p.returncode == 0, f"ci/wheels {' '.join(stale)} failed:\n{p.stdout}{p.stderr}"
    assert WHEEL.exists(), WHEEL
    assert SDIST.exists(), SDIST
    return WHEEL, SDIST


@pytest.fixture
def home() -> Iterator[Path]:
    """A short HOME: the demo's nodes have Unix sockets under it, whose paths must stay within
    107 bytes (pytest's tmp_path is too deep)."""
    path = Path(tempfile.mkdtemp(prefix="tw-"))
    yield path
    # The demo stops its nodes; if it failed half-way, none may outlive the test.
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if str(path).encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def _clean_env(path: str, venv: Path, home: Path) -> dict[str, str]:
    """This process's environment for a program of VENV: no trace of the repository's venv,
    of cargo's settings or of a Python path; HOME (and temporary files) under HOME."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "TETHER_HOME"}
        and not key.startswith(("CARGO", "RUSTUP", "PYO3"))
    }
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(
        PATH=os.pathsep.join([str(venv / "bin"), path]),
        VIRTUAL_ENV=str(venv),
        HOME=str(home),
        TMPDIR=str(home / "tmp"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


def _path_without_rust() -> str:
    """PATH without a directory that holds cargo, rustc or rustup (nor ~/.cargo/bin), nor the
    virtualenv these tests run in."""
    keep = []
    here = Path(sys.executable).parent
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or ".cargo" in Path(entry).parts or Path(entry) == here:
            continue
        if any(shutil.which(tool, path=entry) for tool in RUST_TOOLS):
            continue
        keep.append(entry)
    return os.pathsep.join(keep)


def _venv(where: Path) -> Path:
    """A fresh virtualenv (its own site-packages only) from this Python."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    assert "include-system-site-packages = false" in (where / "pyvenv.cfg").read_text()
    return where


def _run(
    argv: list[str | Path], env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


WHERE = """
import json, importlib.metadata as md, pathlib, tether, tether._core
pkg = pathlib.Path(tether.__file__).parent
print(json.dumps({
    "tether": tether.__file__,
    "core": tether._core.__file__,
    "typed": (pkg / "py.typed").is_file() and (pkg / "_core.pyi").is_file(),
    "license": md.metadata("tether")["License-Expression"],
    "version": md.version("tether"),
}))
"""


def _installed(venv: Path, env: dict[str, str], cwd: Path) -> dict[str, object]:
    """Where VENV's tether and its extension come from, and what ships with them."""
    p = _run([venv / "bin" / "python", "-c", WHERE], env, cwd, 60)
    assert p.returncode == 0, p.stderr
    found: dict[str, object] = json.loads(p.stdout)
    site = str(venv / "lib")
    assert str(found["tether"]).startswith(site), found  # not the checkout's python/tether
    assert str(found["core"]).startswith(site), found
    assert str(found["core"]).endswith("_core.abi3.so"), found
    assert found["typed"] is True, found
    assert found["license"] == "Apache-2.0", found
    assert found["version"] == VERSION, found
    return found


def test_wheel_installs_and_runs_the_demo_without_rust(
    dists: tuple[Path, Path], tmp_path: Path, home: Path
) -> None:
    wheel, _ = dists
    path = _path_without_rust()
    for tool in RUST_TOOLS:
        assert shutil.which(tool, path=path) is None, tool
    venv = _venv(tmp_path / "venv")
    env = _clean_env(path, venv, home)
    for tool in RUST_TOOLS:
        assert shutil.which(tool, path=env["PATH"]) is None, tool

    # --only-binary: neither tether nor a dependency may be compiled here.
    p = _run(
        [venv / "bin" / "python", "-m", "pip", "install", "--only-binary", ":all:", wheel],
        env,
        tmp_path,
        600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Successfully installed" in p.stdout
    _installed(venv, env, tmp_path)

    p = _run([venv / "bin" / "tether", "demo", "--megabytes", "4", "--json"], env, tmp_path, 300)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads(p.stdout)
    assert summary["ok"] is True, p.stderr
    assert summary["checks"], summary
    assert all(summary["checks"].values()), summary
    assert summary["failures"] == []
    assert summary["megabytes"] == 4
    assert set(summary["identifiers"]) == {"relay", "db", "app", "intruder"}
    assert "$ tether tcp-outlet create --at db" in p.stderr
    assert "every check held" in p.stderr
    # The demo's TETHER_HOME was a temporary directory of this home, and it is gone.
    assert Path(summary["home"]).parent == home / "tmp"
    assert not Path(summary["home"]).exists()


def test_sdist_builds_and_installs(dists: tuple[Path, Path], tmp_path: Path) -> None:
    _, sdist = dists
    cargo = shutil.which("cargo")
    assert cargo is not None, "building the sdist needs cargo on PATH"
    venv = _venv(tmp_path / "venv")
    env = _clean_env(os.environ.get("PATH", ""), venv, tmp_path / "home")
    # This user's Rust toolchains and crate cache (HOME is another one here), and the
    # repository's target directory, so the dependency crates built for the checkout are reused.
    env["RUSTUP_HOME"] = os.environ.get("RUSTUP_HOME", str(Path.home() / ".rustup"))
    env["CARGO_HOME"] = os.environ.get("CARGO_HOME", str(Path.home() / ".cargo"))
    env["CARGO_TARGET_DIR"] = str(ROOT / "target")
    p = _run([venv / "bin" / "python", "-m", "pip", "install", sdist], env, tmp_path, 1800)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Successfully installed" in p.stdout
    _installed(venv, env, tmp_path)

    p = _run([venv / "bin" / "tether", "--help"], env, tmp_path, 60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: tether")
    assert "demo" in p.stdout
