"""Helpers shared by the command modules: argument types and readers."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from tether.errors import InvalidArgumentError

_TTL = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def ttl(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` → seconds."""
    m = _TTL.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a positive number with s, m, h, d or w (e.g. 30d)"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid attribute {text!r}: use KEY=VALUE")
    return key, value


def hex_input(value: str | None, path: str | None, what: str) -> bytes:
    """Bytes from a hex argument, or a file holding hex (``-`` for stdin)."""
    if (value is None) == (path is None):
        raise InvalidArgumentError(f"give the {what} either as hex or as a file, not both")
    if path is not None:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as e:
            raise InvalidArgumentError(f"cannot read {path}: {e.strerror}") from None
    else:
        assert value is not None
        text = value
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise InvalidArgumentError(f"the {what} is not hex") from None


def timestamp(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
