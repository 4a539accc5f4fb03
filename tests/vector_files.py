"""Where the public test vectors live (``tests/vectors/``, with their licenses and sources in its
README), and a loud failure when one is missing: a missing file fails the run, never skips it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent / "vectors"


def load(relative: str) -> Any:
    path = VECTORS / relative
    if not path.is_file():
        raise FileNotFoundError(f"test vectors missing: {path} (see tests/vectors/README.md)")
    return json.loads(path.read_text())
