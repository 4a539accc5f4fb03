"""A node's log: rotated by size, and safe to read whatever peers send.

Log lines quote what peers chose (relay names, refusal reasons, routes), so a peer could forge
log lines or terminal escapes with control bytes: every control character of a message (newlines
included; tracebacks, which the node writes itself, are not messages) is written as a visible
escape (``\\x1b``, ``\\n``, ``\\u2028``). A log file is rotated at :data:`MAX_BYTES`, keeping
:data:`BACKUPS` old files (``node.log.1`` …), so what an attacker can make the node write is
bounded on disk. With ``json_lines`` (``tether node run --log-format json``) each record is one
JSON object per line (``time``, ``level``, ``logger``, ``message``, and ``exception`` when there
is one), ASCII only: JSON escapes every control and non-ASCII character, so a peer's bytes stay
inside their string.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
from datetime import UTC, datetime
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


class JsonFormatter(logging.Formatter):
    """One JSON object per record, for log collectors (see the module)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)  # ensure_ascii: control bytes are escaped


def configure(
    path: Path | None = None, stream: TextIO | None = None, *, json_lines: bool = False
) -> None:
    """Log at INFO to ``path`` (rotated) or to ``stream``, through :class:`SafeFormatter`
    (or :class:`JsonFormatter`)."""
    handler: logging.Handler
    if path is not None:
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else SafeFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
