"""Running a test's async main on trio, with a single failure unwrapped from its task groups
(so a test fails with the assertion or error that happened, not an ExceptionGroup of one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import anyio


def run(main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` on trio; a single failure comes out of its task groups unwrapped."""
    try:
        anyio.run(main, backend="trio")
    except BaseExceptionGroup as group:
        leaves = list(leaves_of(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def leaves_of(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    """The exceptions in ``group`` and its nested groups."""
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from leaves_of(e)
        else:
            yield e
