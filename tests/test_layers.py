"""The package is a house without circles (``docs/architecture.md``, "The layers"): every
module of ``python/tether`` is read with ``ast`` (nothing is imported) and

* no function imports a tether module (every tether import is at module level, where it shows);
* the import graph of the package's modules, imports under ``if TYPE_CHECKING:`` included, has
  no cycle;
* each module belongs to a layer of :data:`LAYERS`, and imports only from its own layer and the
  layers below it: the node does not import the features built on it, a channel no service,
  and nothing the daemon or the command.

A new module must find its place in :data:`LAYERS` (the test names one that has none)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "tether"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # (layer, the modules it holds: a module, or a package and everything in it), bottom up
    ("core", ("tether._core", "tether.core")),
    ("store", ("tether.store",)),
    ("identity", ("tether.identity",)),
    ("node", ("tether.node",)),
    ("channel", ("tether.channel",)),
    ("services", ("tether.services",)),
    ("api", ("tether.api", "tether")),  # tether/__init__.py exports tether.Node
    ("pipelines", ("tether.pipelines",)),
    ("daemon", ("tether.daemon",)),
    ("demo", ("tether.demo",)),
    ("cli", ("tether.cli",)),
]
"""The layers, bottom up. A module's layer is the one that names it or its closest package."""


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    in_function: bool
    type_checking: bool

    def __str__(self) -> str:
        where = " (in a function)" if self.in_function else ""
        where += " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.importer}:{self.line} imports {self.target}{where}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    found["tether._core"] = PACKAGE / "_core.pyi"  # the Rust extension, as its stub types it
    return found


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _targets(node: ast.Import | ast.ImportFrom, importer: str, known: set[str]) -> list[str]:
    """The tether modules one import statement loads (``from tether import x``: the module
    ``tether.x`` if there is one, else the package)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importer's package
            package = importer.split(".")
            if not (PACKAGE / Path(*importer.split(".")[1:]) / "__init__.py").exists():
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        if name != "tether" and not name.startswith("tether."):
            continue
        while name not in known and "." in name:
            name = name.rpartition(".")[0]
        if name in known and name not in out:
            out.append(name)
    return out


def imports() -> list[Import]:
    known = set(modules())
    found: list[Import] = []
    for name, path in modules().items():
        if path.suffix != ".py":
            continue

        def visit(node: ast.AST, in_function: bool, type_checking: bool, importer: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    for target in _targets(child, importer, known):
                        if target != importer:
                            found.append(
                                Import(importer, target, child.lineno, in_function, type_checking)
                            )
                visit(
                    child,
                    in_function
                    or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda),
                    type_checking or _is_type_checking(child),
                    importer,
                )

        visit(ast.parse(path.read_text(), str(path)), False, False, name)
    return found


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the match, layer)
    for rank, (_, members) in enumerate(LAYERS):
        for m in members:
            if (module == m or module.startswith(m + ".")) and (best is None or len(m) > best[0]):
                best = (len(m), rank)
    return None if best is None else best[1]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_every_module_has_a_layer() -> None:
    missing = [m for m in modules() if layer_of(m) is None]
    assert not missing, f"modules in no layer of LAYERS (add them): {missing}"


def test_no_function_level_imports() -> None:
    inside = [str(i) for i in imports() if i.in_function]
    assert not inside, "tether imports inside functions:\n" + "\n".join(inside)


def test_no_import_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for i in imports():
        edges.setdefault(i.importer, set()).add(i.target)
    cycle = find_cycle(edges)
    assert cycle is None, "an import cycle: " + " -> ".join(cycle or [])


def test_each_layer_imports_only_its_own_or_lower_layers() -> None:
    upward = []
    for i in imports():
        low, high = layer_of(i.importer), layer_of(i.target)
        if low is not None and high is not None and high > low:
            upward.append(f"{i} (layer {LAYERS[low][0]} imports layer {LAYERS[high][0]})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("tether.core.message", "core"),
        ("tether.node.node", "node"),
        ("tether.node.transport.tcp", "node"),
        ("tether.channel.handshake", "channel"),
        ("tether.services.portal", "services"),
        ("tether", "api"),
        ("tether.daemon.main", "daemon"),
    ],
)
def test_the_layer_table_places_modules_by_their_folder(module: str, layer: str) -> None:
    rank = layer_of(module)
    assert rank is not None
    assert LAYERS[rank][0] == layer


def test_a_violation_is_found() -> None:
    """The checks themselves: a made-up cycle is found, and so is an import from above."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None
    node, channel = layer_of("tether.node.node"), layer_of("tether.channel.channel")
    assert node is not None
    assert channel is not None
    assert node < channel


def test_the_command_starts_without_the_heavy_optional_imports() -> None:
    """Every ``tether`` command and node daemon imports the CLI and the daemon: the broker
    clients (imported by the adapter a URL asks for) and PyYAML (imported by ``tether apply``)
    stay out of that start."""
    import subprocess
    import sys

    code = (
        "import sys, tether.cli, tether.daemon.main; "
        "print(sorted(m for m in ('nats', 'redis', 'paho', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout
