"""Async test helpers: running a test's main on trio with a single failure unwrapped from its
task groups (so a test fails with the assertion or error that happened, not an ExceptionGroup of
one), and deadlines that fail a test saying what did not happen."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator

import anyio


def run(main: Callable[[], Awaitable[None]], backend: str = "trio") -> None:
    """Run ``main`` on trio (or ``backend``); a single failure comes out of its task groups
    unwrapped."""
    try:
        anyio.run(main, backend=backend)
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


@contextlib.contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """A deadline: the block is cancelled and the test fails, saying ``what`` did not happen."""
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        raise AssertionError(f"not within {seconds:g} s: {what}") from None


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    with within(timeout, what):
        while not condition():
            await anyio.sleep(0.01)
