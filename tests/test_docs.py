"""Every command block of README.md and docs/*.md runs as written.

What runs, and how:

* A block fenced ```` ```sh ````, ```` ```bash ```` or ```` ```console ```` is a shell block; one
  fenced ```` ```python ```` is a Python block. Both run. Other blocks (no language, ``text``…)
  are not run, so they must not hold commands: a test fails on such a block with a line that
  starts with ``tether ``. In a console block, the lines that start with ``$ `` are the commands
  (the rest is their output, not checked).
* **The blocks of one document are one session**, as if a reader typed them into one terminal,
  top to bottom: each block runs in its own ``bash`` with ``set -euo pipefail``, in the
  document's throwaway ``HOME`` (``TETHER_HOME`` is ``$HOME/.tether``, the default, so
  ``~/.tether`` in a document means what it says) and working directory, and the shell variables
  a block sets (``DB=$(tether identity create db)``) and its directory are there in the later
  blocks of the same document; so are background programs it started (``python3 -m http.server
  … &``). Python blocks run with this Python (the one with ``tether`` installed) in the same
  directory and home. Each document starts from nothing.
* ``$DATABASE_URL``: a document whose blocks use it gets a throwaway PostgreSQL database there,
  as a reader would set it to theirs.
* One test per block, in document order, named ``FILE:LINE`` (the line of its opening fence).
  Selecting one block (``-k 'relays.md:10'``) runs the blocks before it in its document first.
  After a block fails, the later blocks of its document fail at once, naming it.
* **Skipping** needs a visible marker on the line before the fence:
  ``<!-- doc-test: skip (why) -->``. Only the README's quick start is skipped (it runs
  ``ci/test``, which runs this test: it would recurse); a test asserts nothing else is.
* After a document's last block (or when the run stops), every node of every home under the
  document's directory is deleted (``tether --home H node delete --all``), and any process still
  running with that directory in its environment (a background server, a daemon of a home the
  document made) is killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"sh", "bash", "console"}
SKIP = re.compile(r"^<!--\s*doc-test:\s*skip\b.*-->\s*$")
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
BLOCK_TIMEOUT = 300.0  # seconds: the longest walkthrough takes well under a minute
VENV_BIN = Path(sys.executable).parent
DEPRECATED = " is deprecated, use "  # what the command says of an old spelling


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip: str | None  # the marker, when there is one

    @property
    def name(self) -> str:
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{where}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.language in SHELLS or self.language == "python"


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.group(1), opening.group(2).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line)
            i += 1
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = before.strip() if SKIP.match(before.strip()) else None
        found.append(Block(path, start + 1, language, "\n".join(body) + "\n", marker))
        i += 1
    return found


ALL_BLOCKS = [b for doc in DOCUMENTS for b in blocks_of(doc)]
RUNNABLE = [b for b in ALL_BLOCKS if b.runs]


def shell_code(block: Block) -> str:
    if block.language != "console":
        return block.code
    return "".join(line[2:] + "\n" for line in block.code.splitlines() if line.startswith("$ "))


# --- one session per document ------------------------------------------------------------------

# Variables a block sets are saved for the next block of its document: every variable but the
# shell's own (and those the test gives every block), with its attributes (``export``).
PRELUDE = r"""
__doc_saved_vars() {
    local __doc_n __doc_d
    for __doc_n in $(compgen -v); do
        case "$__doc_n" in
        __DOC_*|__doc_*|BASH*|FUNCNAME|PIPESTATUS|LINENO|RANDOM|SRANDOM|SECONDS|EPOCH*) continue ;;
        GROUPS|DIRSTACK|HISTCMD|PPID|UID|EUID|SHELLOPTS|OPTIND|OPTARG|PWD|OLDPWD|_) continue ;;
        esac
        __doc_d=$(declare -p "$__doc_n" 2>/dev/null) || continue
        if [ "${__DOC_BASE[$__doc_n]-}" != "$__doc_d" ]; then printf '%s\n' "$__doc_d"; fi
    done
}
__doc_exit() {
    __doc_saved_vars > "$__DOC_STATE/vars.sh"
    printf '%s' "$PWD" > "$__DOC_STATE/cwd"
    exit "$1"
}
declare -A __DOC_BASE
for __doc_name in $(compgen -v); do
    __DOC_BASE[$__doc_name]=$(declare -p "$__doc_name" 2>/dev/null || true)
done
if [ -f "$__DOC_STATE/vars.sh" ]; then source "$__DOC_STATE/vars.sh"; fi
cd "$(cat "$__DOC_STATE/cwd")"
trap '{ __doc_status=$?; set +x; } 2>/dev/null; __doc_exit "$__doc_status"' EXIT
set -euo pipefail
"""


@dataclass
class Session:
    """The throwaway home, directory and processes of one document."""

    document: Path
    root: Path
    env: dict[str, str]
    done: list[Block] = field(default_factory=list)
    failed: Block | None = None
    groups: list[int] = field(default_factory=list)  # process groups of the blocks

    @property
    def state(self) -> Path:
        return self.root / "state"

    def run(self, block: Block) -> None:
        """Run ``block``, after the blocks of this document before it that have not run."""
        for earlier in RUNNABLE:
            if earlier.path != self.document or earlier.line >= block.line:
                continue
            if earlier in self.done or earlier.skip:
                continue
            self.execute(earlier)
        self.execute(block)

    def execute(self, block: Block) -> None:
        if self.failed is not None:
            pytest.fail(f"an earlier block of this document failed: {self.failed.name}")
        self.done.append(block)
        try:
            self._execute(block)
        except BaseException:
            self.failed = block
            raise

    def _execute(self, block: Block) -> None:
        index = len(self.done)
        output = self.state / f"block{index}.out"
        if block.language == "python":
            script = self.state / f"block{index}.py"
            script.write_text(block.code, encoding="utf-8")
            cwd = Path((self.state / "cwd").read_text())
            command = [sys.executable, str(script)]
        else:
            script = self.state / f"block{index}.sh"
            header = f"__DOC_STATE='{self.state}'\n{PRELUDE}"
            # Traced, with the document's line numbers: the block's first line is the one
            # after its fence.
            offset = block.line - (header.count("\n") + 2)
            header += f"PS4='+ {block.path.name}:$((LINENO + {offset})): '\nset -x\n"
            script.write_text(header + shell_code(block), encoding="utf-8")
            cwd = self.root
            command = ["bash", str(script)]
        with output.open("wb") as out:
            proc = subprocess.Popen(
                command,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.groups.append(proc.pid)
            try:
                status = proc.wait(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid)
                proc.wait()
                status = None
        text = output.read_text(errors="replace")
        if status == 0 and DEPRECATED in text:
            status = -1  # a document teaches the current spelling of every command
        if status != 0:
            tail = "\n".join(text.splitlines()[-80:])
            what = {None: "timed out", -1: "used a deprecated spelling"}.get(status)
            what = what or f"exited {status}"
            pytest.fail(
                f"{block.name} {what}. The block:\n{block.code}\nIts output (the end):\n{tail}",
                pytrace=False,
            )

    def close(self) -> None:
        """Delete every node the document made, then kill what is left of its processes."""
        for nodes in sorted(self.root.rglob("nodes")):
            home = nodes.parent
            if nodes.is_dir() and (home / "state.sqlite3").exists():
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "tether.cli",
                        "--home",
                        str(home),
                        "node",
                        "delete",
                        "--all",
                    ],
                    env=self.env,
                    capture_output=True,
                    timeout=120,
                    check=False,
                )
        for group in self.groups:
            kill_group(group)
        kill_processes_mentioning(str(self.root))


def kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def kill_processes_mentioning(marker: str) -> None:
    """Kill this user's processes whose environment mentions ``marker`` (a directory only this
    test made): the leftovers of a document's blocks, and nothing else."""
    needle = marker.encode()
    me = os.getuid()
    for attempt in range(2):
        found: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if entry.stat().st_uid != me:
                    continue
                if needle in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if attempt == 0 else signal.SIGKILL)
        if not found:
            return
        time.sleep(1)


def session_env(root: Path, database_url: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TETHER_", "PYTEST_")) or k == "TETHER_DATAPLANE"
    }
    env.pop("DATABASE_URL", None)
    env["HOME"] = str(root / "home")
    env["TETHER_HOME"] = str(root / "home" / ".tether")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


_sessions: dict[Path, Session] = {}


def session_for(document: Path, request: pytest.FixtureRequest) -> Session:
    """The session of ``document``, started on its first block; a session ends when a block of
    another document starts (documents run one after another) or when the module ends."""
    for other in [d for d in _sessions if d != document]:
        _sessions.pop(other).close()
    if document in _sessions:
        return _sessions[document]
    tmp: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    root = tmp.mktemp(document.stem.lower())
    uses_database = any(
        "DATABASE_URL" in b.code for b in RUNNABLE if b.path == document and not b.skip
    )
    database_url = request.getfixturevalue("postgres_url") if uses_database else None
    s = Session(document, root, session_env(root, database_url))
    (root / "home").mkdir()
    (root / "work").mkdir()
    s.state.mkdir()
    (s.state / "cwd").write_text(str(root / "work"))
    _sessions[document] = s
    return s


@pytest.fixture(scope="module", autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    while _sessions:
        _sessions.popitem()[1].close()


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_block_runs_as_written(block: Block, request: pytest.FixtureRequest) -> None:
    if block.skip:
        pytest.skip(block.skip)
    session_for(block.path, request).run(block)


# --- what the blocks may not be ----------------------------------------------------------------


def test_blocks_are_found_with_their_lines_languages_and_markers(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# A document\n"
        "\n"
        "```sh\n"
        "tether node create n1\n"
        "```\n"
        "<!-- doc-test: skip (why) -->\n"
        "\n"
        "```bash\n"
        "ci/test\n"
        "```\n"
        "* in a list:\n"
        "  ```console\n"
        "  $ tether node list\n"
        "  n1  running\n"
        "  ```\n"
        "```\n"
        "/ip4/127.0.0.1/tcp/4000/service/echo\n"
        "```\n"
        "```python\n"
        "print(1)\n"
        "```\n",
        encoding="utf-8",
    )
    blocks = blocks_of(doc)
    assert [(b.line, b.language, b.runs, b.skip is not None) for b in blocks] == [
        (3, "sh", True, False),
        (8, "bash", True, True),
        (12, "console", True, False),
        (16, "", False, False),
        (19, "python", True, False),
    ]
    assert blocks[0].code == "tether node create n1\n"
    assert shell_code(blocks[2]) == "tether node list\n"
    assert blocks[3].code == "/ip4/127.0.0.1/tcp/4000/service/echo\n"


def test_only_the_quick_start_is_skipped() -> None:
    skipped = [b for b in ALL_BLOCKS if b.skip]
    assert len(skipped) <= 1, [b.name for b in skipped]
    for b in skipped:
        assert b.path.name == "README.md", b.name
        assert "ci/test" in b.code, b.name


def test_commands_are_in_blocks_that_run() -> None:
    """A block that is not run may not hold commands: tag it ``sh`` (and make it run)."""
    hidden = [
        b.name
        for b in ALL_BLOCKS
        if not b.runs and any(line.lstrip().startswith("tether ") for line in b.code.splitlines())
    ]
    assert hidden == []


def test_blocks_have_no_placeholders() -> None:
    """Nothing for a reader to fill in: an ellipsis stands for something the block cannot
    run with."""
    placeholders = re.compile(r"…|\bI\.\.\.|\.\.\. *$|\bI0123")
    found = [
        f"{b.name}: {line.strip()}"
        for b in RUNNABLE
        if not b.skip
        for line in b.code.splitlines()
        if placeholders.search(line.split(" #")[0])  # a comment may say "…"
    ]
    assert found == []


def test_no_issue_numbers_in_documents() -> None:
    """The documents describe the code; project-management words stay in the tracker."""
    pattern = re.compile(r"\bissues? #?\d+|(?<![\w'&])#\d+\b", re.IGNORECASE)
    found = [
        f"{doc.relative_to(ROOT)}:{n}: {line.strip()}"
        for doc in DOCUMENTS
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
