"""Threads and anyio: the broker clients' threads, called from any anyio backend.

nats-py and redis.asyncio are asyncio-only, and tether runs on trio by default; paho-mqtt runs
its own network thread. :class:`AsyncioThread` runs one asyncio event loop in one background
thread per connection, and :meth:`AsyncioThread.run` runs a coroutine there: an adapter makes
one such call per batch (publish, fetch, ack), so the thread hops cost per batch, not per record.

Waking the caller needs no worker thread: the other thread schedules ``Event.set`` on the
caller's loop with the loop's own thread-safe hook (trio's ``TrioToken.run_sync_soon``,
asyncio's ``call_soon_threadsafe``). :class:`Signal` does the same for threads that are not
asyncio loops (paho's): they change some state, then ``notify()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import sniffio
import trio

__all__ = ["AsyncioThread", "Signal", "wait_future"]

T = TypeVar("T")

Waker = Callable[[Callable[[], object]], object]


def _waker() -> Waker:
    """A function that any thread may call to run a callback soon on the current event loop."""
    if sniffio.current_async_library() == "trio":
        return trio.lowlevel.current_trio_token().run_sync_soon
    return asyncio.get_running_loop().call_soon_threadsafe


def _wake_later(event: anyio.Event) -> Callable[[], None]:
    wake = _waker()

    def fire() -> None:
        # The loop may have finished (its caller was cancelled and left): nobody waits then.
        with contextlib.suppress(RuntimeError):  # trio.RunFinishedError, asyncio's closed loop
            wake(event.set)

    return fire


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """The result of a future that another thread completes; cancelling the wait cancels it."""
    event = anyio.Event()
    fire = _wake_later(event)
    future.add_done_callback(lambda _: fire())
    try:
        await event.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()


class Signal:
    """Wakes tasks of any anyio loop when another thread changed a state they wait on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        """Guards the waited-on state: notifiers change it, then call :meth:`notify`."""
        self._waiters: list[Callable[[], None]] = []

    def notify(self) -> None:
        """Wake every waiter (call it from any thread after changing the state)."""
        with self.lock:
            waiters, self._waiters = self._waiters, []
        for fire in waiters:
            fire()

    async def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``condition()`` (called with :attr:`lock` held) holds; False if it still
        does not after ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            while True:
                event = anyio.Event()
                fire = _wake_later(event)
                with self.lock:
                    if condition():
                        return True
                    self._waiters.append(fire)
                try:
                    await event.wait()
                finally:
                    with self.lock, contextlib.suppress(ValueError):
                        self._waiters.remove(fire)
        with self.lock:
            return condition()


class AsyncioThread:
    """An asyncio event loop running in a background thread of its own, until :meth:`aclose`."""

    def __init__(self, name: str) -> None:
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @classmethod
    async def start(cls, name: str) -> AsyncioThread:
        """Start the thread (named ``name``) and its loop."""
        self = cls(name)
        self._thread.start()
        await wait_future(self._ready)
        return self

    def _main(self) -> None:
        try:
            # asyncio.run cancels what is left, closes async generators and the default
            # executor (getaddrinfo's threads): nothing outlives the thread.
            asyncio.run(self._serve())
        finally:
            self._done.set_result(None)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set_result(None)
        await self._stop.wait()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the thread's loop; its result or exception. Cancelling the caller
        cancels it."""
        if self._loop is None or self._done.done():
            coro.close()
            raise RuntimeError("the asyncio thread is closed")
        return await wait_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def aclose(self) -> None:
        """Stop the loop (cancelling what still runs on it) and wait for the thread to end."""
        if self._loop is not None and self._stop is not None and not self._done.done():
            with contextlib.suppress(RuntimeError):  # the loop stopped already
                self._loop.call_soon_threadsafe(self._stop.set)
        with anyio.CancelScope(shield=True):
            await wait_future(self._done)
        self._thread.join()
