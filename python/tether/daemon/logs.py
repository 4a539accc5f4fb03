"""A node's log: rotated by size, and safe to read whatever peers send.

Log lines quote what peers chose (relay names, refusal reasons, routes), so a peer could forge
log lines or terminal escapes with control bytes: every control character of a message (newlines
included; tracebacks, which the node writes itself, are not messages) is written as a visible
escape (``\\x1b``, ``\\n``, ``\\u2028``). A log file is rotated at :data:`MAX_BYTES`, keeping
:data:`BACKUPS` old files (``node.log.1`` …), so what an attacker can make the node write is
bounded on disk.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path
from typing import TextIO

MAX_BYTES = 10 << 20
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """``text`` with every control character written as a visible escape."""

    def one(m: re.Match[str]) -> str:
        c = m.group(0)
        return repr(c)[1:-1] if ord(c) < 0x100 else f"\\u{ord(c):04x}"

    return _CONTROL.sub(one, text)


class SafeFormatter(logging.Formatter):
    """A formatter whose messages cannot forge lines or terminal escapes (see the module)."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = escape(record.getMessage()), None
        return super().format(safe)


def configure(path: Path | None = None, stream: TextIO | None = None) -> None:
    """Log at INFO to ``path`` (rotated) or to ``stream``, through :class:`SafeFormatter`."""
    handler: logging.Handler
    if path is not None:
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
