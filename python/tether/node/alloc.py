"""Process-wide allocator settings for a node process that moves bulk data.

glibc's malloc serves each large buffer (a 240 KiB portal read, a sealed frame) from a fresh
``mmap`` and gives it back on free, so every buffer costs a page fault per 4 KiB when it is first
written: measured, that doubled a portal's CPU per gigabyte. Raising the mmap and trim thresholds
keeps such buffers in the heap and reuses them. Only the daemon (and benchmarks standing in for
it) call this; an application embedding tether keeps its own settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("tether.alloc")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's own upper bound for the dynamic threshold
TRIM_THRESHOLD = 128 << 20


def tune_for_bulk() -> bool:
    """Apply the settings (glibc only); True if they were applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    log.debug("allocator tuned for bulk data: %s", ok)
    return ok
