"""A node's log: rotated by size, and safe to read whatever peers send.

Log lines quote what peers chose (relay names, refusal reasons, routes), so a peer could forge
log lines or terminal escapes with control bytes: every control character of a message (newlines
included; tracebacks, which the node writes itself, are not messages) is written as a visible
escape (``\\x1b``, ``\\n``, ``\\u2028``). A log file is rotated at :data:`MAX_BYTES`, keeping
:data:`BACKUPS` old files (``node.log.1`` …), so what an attacker can make the node write is
bounded on disk; ``TETHER_LOG_MAX_SIZE`` (``10M``, ``512K``…) and ``TETHER_LOG_KEEP`` in the
environment of ``tether node create|start`` choose others (:func:`rotation`). With
``json_lines`` (``tether node run --log-format json``) each record is one JSON object per line
(``time``, ``level``, ``logger``, ``message``, and ``exception`` when there is one), ASCII only:
JSON escapes every control and non-ASCII character, so a peer's bytes stay inside their string.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from tether.core.errors import InvalidArgumentError

MAX_BYTES = 10 << 20
BACKUPS = 3
_SIZE = re.compile(r"([0-9]{1,12})([KMG]?)")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def rotation(env: Mapping[str, str]) -> tuple[int, int]:
    """The size a log file rotates at and how many old files are kept: ``TETHER_LOG_MAX_SIZE``
    (bytes, or with K, M or G; at least 4K) and ``TETHER_LOG_KEEP`` (1 to 100), else
    :data:`MAX_BYTES` and :data:`BACKUPS`."""
    size_text = env.get("TETHER_LOG_MAX_SIZE", "").strip().upper()
    keep_text = env.get("TETHER_LOG_KEEP", "").strip()
    size, keep = MAX_BYTES, BACKUPS
    if size_text:
        m = _SIZE.fullmatch(size_text.removesuffix("B"))
        size = int(m.group(1)) * _UNITS[m.group(2)] if m else 0
        if size < 4096:
            raise InvalidArgumentError(
                f"TETHER_LOG_MAX_SIZE={size_text!r}: give a size of at least 4K, such as 10M"
            )
    if keep_text:
        if not keep_text.isdigit() or not 1 <= int(keep_text) <= 100:
            raise InvalidArgumentError(
                f"TETHER_LOG_KEEP={keep_text!r}: give how many old log files to keep, 1 to 100"
            )
        keep = int(keep_text)
    return size, keep


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
    path: Path | None = None,
    stream: TextIO | None = None,
    *,
    json_lines: bool = False,
    rotate: tuple[int, int] | None = None,
) -> None:
    """Log at INFO to ``path`` (rotated at ``rotate``'s size, keeping its count of old files:
    :data:`MAX_BYTES` and :data:`BACKUPS` by default) or to ``stream``, through
    :class:`SafeFormatter` (or :class:`JsonFormatter`)."""
    handler: logging.Handler
    if path is not None:
        size, keep = rotate or (MAX_BYTES, BACKUPS)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=size, backupCount=keep, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else SafeFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
