"""Where the public test vectors live, and a loud failure when they are missing.

The vectors are not copied into the project: they are read from ``../shared/vectors`` beside the
repository (see that folder's README). A missing folder fails the run, never skips it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"


def load(relative: str) -> Any:
    path = VECTORS / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"test vectors missing: {path} (expected the shared vectors folder beside the "
            "repository, ../shared/vectors; see its README)"
        )
    return json.loads(path.read_text())
