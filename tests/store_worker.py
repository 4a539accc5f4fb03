"""Worker process for ``tests/test_store.py``: works on one tether home until it is done or killed.

Not a test module (pytest collects ``test_*.py`` only). Run as::

    python tests/store_worker.py create HOME NAME...   # create these identities
    python tests/store_worker.py churn HOME SEED       # random work until SIGKILLed

``create`` prints ``ready`` and waits for a line on stdin before it opens the store, so that the
test can start several workers at the same moment; then it prints ``ok NAME IDENTIFIER`` or
``error NAME ErrorClass`` for each name. Any other exception (``database is locked``...) escapes
with a traceback and a non-zero exit status.

``churn`` loops forever over create / rotate / issue / revoke / delete with one registry on the
home (which must already hold an identity named ``authority``). Only the races between workers
that are legitimate are tolerated (an identity another worker deleted in the meantime); anything
else ends the worker with a traceback, which the test notices because the worker is then no
longer alive when it comes to kill it.
"""

from __future__ import annotations

import os
import random
import sys

from tether.core.errors import NotFoundError, TetherError
from tether.identity.registry import Registry
from tether.store.local import Store

AUTHORITY = "authority"
ROTATION_LIMIT = 3000
"""Identities whose history is at least this long (about 14 changes) are not rotated again,
which keeps every history far below the 64-change limit."""


def create(home: str, names: list[str]) -> int:
    print("ready", flush=True)
    sys.stdin.readline()
    with Store(home) as store:
        registry = Registry(store)
        for name in names:
            try:
                local = registry.create_identity(name)
            except TetherError as e:
                print(f"error {name} {type(e).__name__}", flush=True)
            else:
                print(f"ok {name} {local.identifier}", flush=True)
    return 0


def churn(home: str, seed: int) -> int:
    rng = random.Random(seed)
    token = f"w{os.getpid()}x{rng.randrange(1 << 32):08x}"
    counter = 0
    with Store(home) as store:
        registry = Registry(store)
        while True:
            op = rng.choices(
                ["create", "rotate", "issue", "revoke", "delete"], weights=[4, 4, 4, 1, 1]
            )[0]
            try:
                if op == "create":
                    registry.create_identity(f"{token}-{counter}")
                    counter += 1
                elif op == "rotate":
                    rows = store.query(
                        "SELECT l.name FROM local_identities l JOIN identities i "
                        "USING (identifier) WHERE l.name != ? AND length(i.history) < ?",
                        (AUTHORITY, ROTATION_LIMIT),
                    )
                    if rows:
                        registry.rotate(str(rng.choice(rows)[0]))
                elif op == "issue":
                    rows = store.query("SELECT identifier FROM local_identities")
                    subject = str(rng.choice(rows)[0])
                    attributes = {"role": rng.choice(["admin", "user"]), "n": str(counter)}
                    attributes["worker"] = token
                    registry.issue_credential(AUTHORITY, subject, attributes, ttl=3600)
                elif op == "revoke":
                    rows = store.query("SELECT credential_id FROM credentials")
                    if rows:
                        registry.revoke(AUTHORITY, str(rng.choice(rows)[0]))
                else:
                    rows = store.query(
                        "SELECT name FROM local_identities WHERE name != ?", (AUTHORITY,)
                    )
                    if rows:
                        registry.delete(str(rng.choice(rows)[0]))
            except NotFoundError:
                pass  # another worker deleted the identity this one picked


def main(argv: list[str]) -> int:
    mode, home, *rest = argv
    if mode == "create":
        return create(home, rest)
    if mode == "churn":
        return churn(home, int(rest[0]))
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
