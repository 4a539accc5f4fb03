"""What a node logged, for tests that check why it closed connections."""

from __future__ import annotations

import pytest


def close_reasons(caplog: pytest.LogCaptureFixture, source: str | None = None) -> list[str]:
    """The reasons the node logged for the connections it closed (from ``source``, an IP
    address, if given)."""
    return [
        str(r.args[3])
        for r in caplog.records
        if r.name == "tether.tcp"
        and isinstance(r.args, tuple)
        and len(r.args) == 4
        and "closed connection" in r.msg
        and (source is None or str(r.args[2]).startswith(f"{source}:"))
    ]
