"""The process's descriptor limit, and the caps derived from it.

A node spends one descriptor per TCP link (the data plane takes the socket; Python keeps none)
and one or two per portal session. Under the common soft limit of 1,024 a default link cap of
1,024 would run the process out of descriptors, and a failed ``accept``/``socket`` call must
never take the daemon down. So, as Go's runtime does, a node raises its soft limit to the hard
limit when it starts, and derives its caps from the limit in force: at most half of the
descriptors go to links, the rest to portal sessions, listeners and files, with a reserve.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup
from anyio.streams.stapled import MultiListener

try:
    import resource
except ImportError:  # not on this platform: no limit to raise, caps stay as configured
    resource = None  # type: ignore[assignment]

log = logging.getLogger("tether.limits")

#: Descriptors kept out of every budget (the store, logs, the control API, a spare).
RESERVED = 64
#: errno values that mean "no descriptor (or buffer) left": refuse one connection, go on.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_raised = False


def nofile() -> int:
    """The soft limit on open descriptors now in force (a large number if unlimited)."""
    if resource is None:
        return 1 << 20
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard limit (once per process); the limit now in
    force."""
    global _raised
    if resource is not None and not _raised:
        _raised = True
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < target:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                log.info("descriptor limit raised from %d to %d", soft, target)
            except (ValueError, OSError) as e:
                log.info("descriptor limit stays %d (could not raise it: %s)", soft, e)
    return nofile()


def link_budget() -> int:
    """How many TCP links the limit in force allows: half of what is not reserved."""
    return max(16, (nofile() - RESERVED) // 2)


def out_of_descriptors(e: BaseException) -> bool:
    """Whether ``e`` (an OSError, or anyio's BrokenResourceError wrapping one) means the process
    or the system has no descriptor (or buffer) left."""
    cause = e if isinstance(e, OSError) else e.__cause__
    return isinstance(cause, OSError) and cause.errno in OUT_OF_DESCRIPTORS


class Spare:
    """One descriptor held in reserve (``/dev/null``): when none is left, it is closed so that
    one pending connection can be accepted and refused at once, instead of waiting in the
    backlog (or making the accept loop spin), and then taken again."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.take()

    def take(self) -> None:
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.fd = None

    def release(self) -> bool:
        """Give the descriptor back to the process; False if there was none to give."""
        if self.fd is None:
            return False
        os.close(self.fd)
        self.fd = None
        return True


async def serve(
    listener: SocketListener | MultiListener[SocketStream],
    handler: Callable[[SocketStream], Coroutine[Any, Any, None]],
    task_group: TaskGroup,
    on_refused: Callable[[], None],
) -> None:
    """``listener.serve(handler)``, except that running out of descriptors refuses the
    connection that could not be accepted (reset, ``on_refused()``) and goes on: it never ends
    the loop (or the process). A multi-listener (one per address of a name) serves each."""
    if isinstance(listener, MultiListener):
        async with anyio.create_task_group() as tg:
            for one in listener.listeners:
                assert isinstance(one, SocketListener)
                tg.start_soon(serve, one, handler, task_group, on_refused)
        return
    spare = Spare()
    while True:
        try:
            stream = await listener.accept()
        except (OSError, anyio.BrokenResourceError) as e:
            if not out_of_descriptors(e):
                raise
            # (accept says so even with nothing pending.) With the spare given back, take the
            # next connection; if the spare can be taken again afterwards, descriptors are back
            # and it is served; if not, it is refused (reset) rather than left waiting.
            accepted = None
            if spare.release():
                with contextlib.suppress(OSError, anyio.BrokenResourceError):
                    accepted = await listener.accept()
                spare.take()
            if accepted is not None and spare.fd is not None:
                task_group.start_soon(handler, accepted)
            elif accepted is not None:
                on_refused()
                with contextlib.suppress(OSError):
                    accepted.extra(SocketAttribute.raw_socket).setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                await accepted.aclose()
            else:
                await anyio.sleep(0.1)  # nothing to refuse with: do not spin
            continue
        task_group.start_soon(handler, stream)
