"""The node's control API: HTTP/1.1 with JSON bodies over a Unix-domain socket that only the user
can open (``$TETHER_HOME/nodes/NAME/api.sock``, 0600 in a 0700 directory). The ``tether``
command uses it, and so can scripts and any HTTP client::

    curl --unix-socket ~/.tether/nodes/n1/api.sock http://node/listeners

Resources and methods are documented in ``docs/control-api.md``.

Theory of operation. h11 (sans-IO HTTP/1.1) owns every rule of the protocol: parsing and
validating request heads, body framing (Content-Length or chunked), keep-alive, pipelining,
``Expect: 100-continue``, HTTP/1.0 peers, which side may speak when. This module only moves bytes
between an h11 connection and an anyio stream, and adds what h11 leaves to a server: limits and
timers, routing a request to its handler, and turning what the handler says (or raises) into an
answer.

A connection serves one request after another (keep-alive) until the client closes it or asks to
(``Connection: close``, HTTP/1.0), stays idle too long (``KEEPALIVE_TIMEOUT``), or breaks a rule:
a malformed request gets 400 (a head over ``MAX_HEAD`` 431, a body over ``MAX_BODY`` 413, a
request not received within ``REQUEST_TIMEOUT`` 408), and then the connection is closed. A
connection closed with input left unread is half-closed and drained for up to ``LINGER`` first, so
that the client reads the answer rather than a reset. One listener serves at most
``MAX_CONNECTIONS`` at once: a new one beyond that closes the longest-open connection that is not
running a handler (an idle or half-sent one), so idle connections cannot lock a user out; if every
one is running a handler, the new one gets 503.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
import h11
from anyio.abc import ByteStream

from tether.core.errors import NotFoundError, TetherError

log = logging.getLogger("tether.control")

MAX_HEAD = 16 * 1024
"""The longest request head (request line and headers), in bytes: 431 beyond."""
MAX_BODY = 1 << 20
"""The longest request body, in bytes, announced or received: 413 beyond."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client has to send a whole request (head and body): from the connection for its
first request, from the first byte of any later one. 408 after, and the connection is closed."""
KEEPALIVE_TIMEOUT = 5.0
"""Seconds an open connection may wait for the first byte of its next request; then it is
closed, without an answer (there is no request to answer)."""
SEND_TIMEOUT = 10.0
"""Seconds a client has to take an answer before the connection is closed."""
LINGER = 1.0
"""Seconds a connection closed with input left unread is drained (after half-closing it)."""
MAX_CONNECTIONS = 128
"""Connections one listener serves at once (above: the module's docstring)."""

_RECEIVE = 65536


@dataclass(frozen=True)
class Raw:
    """A response body that is not JSON (the metrics' text exposition)."""

    content_type: str
    body: bytes


class ApiError(TetherError):
    """An answer other than success: ``status``, and ``kind`` for the JSON error's ``type``;
    ``headers`` go with it (``Allow`` on a 405)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "ApiError",
        *,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = tuple(headers)


ContextT = TypeVar("ContextT")
"""What every handler of a router gets first (the daemon)."""

Handler = Callable[[ContextT, dict[str, str], Any], Awaitable[tuple[int, Any]]]
"""A resource's handler: the context, the path's parameters and the JSON body; the status and
the JSON answer."""


def path_segments(target: str) -> tuple[str, list[str]]:
    """A request target's path (as sent) and its segments, each percent-decoded after splitting
    on ``/`` (so ``%2F`` stays inside a segment). The query is ignored; an absolute URL
    (``http://node/relays``) is taken for its path."""
    if not target.startswith("/"):
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ApiError(400, f"the request target {target!r} is not a path", "BadRequest")
        target = parts.path or "/"
    path = target.split("?", 1)[0]
    try:
        return path, [unquote(s, errors="strict") for s in path.split("/")[1:]]
    except UnicodeDecodeError:
        raise ApiError(
            400, f"the path {path!r} is not UTF-8 once percent-decoded", "BadRequest"
        ) from None


@dataclass(frozen=True)
class _Route(Generic[ContextT]):
    method: str
    pattern: tuple[str, ...]  # literal segments, and "{name}" for a parameter
    handler: Handler[ContextT]

    def bind(self, segments: list[str]) -> dict[str, str] | None:
        """The parameters if ``segments`` is this route's path (a parameter is never empty)."""
        if len(segments) != len(self.pattern):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.pattern, segments, strict=True):
            if want.startswith("{") and want.endswith("}"):
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


class Router(Generic[ContextT]):
    """Resources (a method and a path pattern such as ``/relays/{name}``) and their handlers.
    ``HEAD`` is served by a resource's ``GET`` handler (h11 leaves the body out)."""

    def __init__(self) -> None:
        self.routes: list[_Route[ContextT]] = []

    def add(self, method: str, pattern: str) -> Callable[[Handler[ContextT]], Handler[ContextT]]:
        segments = tuple(pattern.split("/")[1:])

        def deco(fn: Handler[ContextT]) -> Handler[ContextT]:
            self.routes.append(_Route(method, segments, fn))
            return fn

        return deco

    def include(self, other: Router[ContextT]) -> None:
        """Serve ``other``'s resources too."""
        self.routes.extend(other.routes)

    def match(self, method: str, target: str) -> tuple[Handler[ContextT], dict[str, str]]:
        """The handler of ``method`` on ``target`` (as sent: percent-encoded, perhaps with a
        query) and its parameters; 404, or 405 with ``Allow``."""
        path, segments = path_segments(target)
        allowed: list[str] = []
        for route in self.routes:
            params = route.bind(segments)
            if params is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route.handler, params
            allowed += [route.method, "HEAD"] if route.method == "GET" else [route.method]
        if allowed:
            raise ApiError(
                405,
                f"{method} is not allowed on {path}",
                headers=[("Allow", ", ".join(sorted(set(allowed))))],
            )
        raise ApiError(404, f"no such resource: {path}")


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def of(status: int, payload: Any) -> _Answer:
        if isinstance(payload, Raw):
            return _Answer(status, payload.body, payload.content_type)
        return _Answer(status, b"" if status == 204 else json.dumps(payload).encode())


def _failure(e: Exception) -> _Answer:
    """The answer for what a request or its handler raised."""
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(e, ApiError):
        status, kind, headers = e.status, e.kind, e.headers
    elif isinstance(e, NotFoundError):
        status, kind = 404, type(e).__name__
    elif isinstance(e, TetherError):
        status, kind = 422, type(e).__name__
    else:  # a bug: say so, keep serving
        log.error("control API request failed", exc_info=e)
        status, kind = 500, type(e).__name__
    body = json.dumps({"error": {"type": kind, "message": str(e)}}).encode()
    return _Answer(status, body, headers=headers)


def _head_too_large() -> ApiError:
    return ApiError(431, f"the request head is larger than {MAX_HEAD} bytes", "TooLarge")


def _protocol_error(e: h11.RemoteProtocolError) -> ApiError:
    status = e.error_status_hint
    if status == 431:
        return _head_too_large()
    # (without the bytes h11 quotes: the reason is enough)
    return ApiError(status, f"malformed request: {str(e).split(': bytearray(')[0]}", "BadRequest")


class _Gone(Exception):
    """The connection is over, with nothing (more) to answer."""


@dataclass(eq=False)
class _Connection:
    """One client connection: its stream and its h11 state."""

    stream: ByteStream
    http: h11.Connection = field(
        default_factory=lambda: h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    )
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)  # cancelled: evicted
    busy: bool = False  # a handler is running, or its answer being sent
    deadline: float = 0.0
    waiting: bool = False  # for the first byte of a request after the first one

    def expect_request(self, first: bool) -> None:
        now = anyio.current_time()
        self.waiting = not first and not self.http.trailing_data[0]
        self.deadline = now + (KEEPALIVE_TIMEOUT if self.waiting else REQUEST_TIMEOUT)

    def _nothing_received(self) -> bool:
        return self.http.their_state is h11.IDLE and not self.http.trailing_data[0]

    async def next_event(self) -> h11.Event:
        while True:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as e:
                raise _protocol_error(e) from None
            if event is not h11.NEED_DATA and event is not h11.PAUSED:
                assert isinstance(event, h11.Event)
                return event
            size = _RECEIVE
            if self.http.their_state is h11.IDLE:  # a head: never more than MAX_HEAD buffered
                size = MAX_HEAD - len(self.http.trailing_data[0])
                if size <= 0:
                    raise _head_too_large()
            try:
                with anyio.fail_after(max(self.deadline - anyio.current_time(), 0.0)):
                    data = await self.stream.receive(size)
            except anyio.EndOfStream:
                data = b""
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise _Gone from None
            except TimeoutError:
                if self._nothing_received():
                    raise _Gone from None
                raise ApiError(
                    408, f"the request was not received within {REQUEST_TIMEOUT:g} s", "Timeout"
                ) from None
            if self.waiting and data:
                self.waiting = False
                self.deadline = anyio.current_time() + REQUEST_TIMEOUT
            self.http.receive_data(data)

    async def read_body(self, request: h11.Request) -> bytes:
        """The whole body: announced or received beyond ``MAX_BODY``, 413 (a client waiting for
        ``100 Continue`` is told so only when it may go on)."""
        for name, value in request.headers:
            if name == b"content-length" and int(value) > MAX_BODY:
                raise ApiError(
                    413, f"the body ({int(value)} bytes) is over {MAX_BODY} bytes", "TooLarge"
                )
        if self.http.they_are_waiting_for_100_continue:
            go_on = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            await self.send(self._encode(go_on))
        body = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise ApiError(413, f"the body is over {MAX_BODY} bytes", "TooLarge")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)

    def _encode(self, event: h11.Event) -> bytes:
        try:
            return self.http.send(event) or b""
        except h11.LocalProtocolError:  # (no answer fits this state, e.g. mid-answer)
            raise _Gone from None

    async def send(self, data: bytes) -> None:
        try:
            with anyio.fail_after(SEND_TIMEOUT):
                await self.stream.send(data)
        except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.http.send_failed()
            raise _Gone from None

    async def answer(self, answer: _Answer, head_only: bool) -> None:
        headers = list(answer.headers)
        if answer.status != 204:
            headers += [
                ("Content-Type", answer.content_type),
                ("Content-Length", str(len(answer.body))),
            ]
        if self.http.their_state is not h11.DONE:  # the request is not all read: no next one
            headers.append(("Connection", "close"))
        try:
            reason = HTTPStatus(answer.status).phrase.encode()
        except ValueError:
            reason = b""
        out = self._encode(h11.Response(status_code=answer.status, headers=headers, reason=reason))
        if answer.body and not head_only:
            out += self._encode(h11.Data(data=answer.body))
        out += self._encode(h11.EndOfMessage())
        await self.send(out)

    def skip_arrived_body(self) -> None:
        """Read the rest of a request refused before its body was read, if it has all arrived
        (a bodiless one always has): then the connection can serve another."""
        with contextlib.suppress(h11.RemoteProtocolError):
            while self.http.their_state is h11.SEND_BODY:
                if not isinstance(self.http.next_event(), h11.Data | h11.EndOfMessage):
                    return

    def next_cycle(self) -> bool:
        """Ready for another request on this connection?"""
        if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE:
            self.http.start_next_cycle()
            return True
        return False

    async def linger(self, always: bool = False) -> None:
        """Before closing: if input may be left unread (``always``, or a request not read to
        its end), half-close and drain it for up to ``LINGER``, so that the client reads the
        answer rather than a reset."""
        unread = self.http.their_state in (h11.SEND_BODY, h11.ERROR) or self.http.trailing_data[0]
        if always or unread:
            with (
                anyio.move_on_after(LINGER),
                contextlib.suppress(
                    anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError
                ),
            ):
                await self.stream.send_eof()
                while True:
                    await self.stream.receive(_RECEIVE)


class ControlServer(Generic[ContextT]):
    """The control API's HTTP on the connections of one listener: ``router``'s resources, their
    handlers given ``context``."""

    def __init__(
        self, context: ContextT, router: Router[ContextT], max_connections: int = MAX_CONNECTIONS
    ) -> None:
        self.context = context
        self.router = router
        self.max_connections = max_connections
        self._open: dict[_Connection, None] = {}  # oldest first

    @property
    def connections(self) -> int:
        return len(self._open)

    def _admit(self, c: _Connection) -> bool:
        if len(self._open) >= self.max_connections:
            idle = next((o for o in self._open if not o.busy), None)
            if idle is None:
                return False
            idle.scope.cancel()
            del self._open[idle]
        self._open[c] = None
        return True

    async def serve_connection(self, stream: ByteStream) -> None:
        """Serve one connection until it ends; closes ``stream``."""
        c = _Connection(stream)
        try:
            if not self._admit(c):
                message = f"the node serves {self.max_connections} control connections; try again"
                with contextlib.suppress(_Gone):
                    await c.answer(_failure(ApiError(503, message, "Busy")), head_only=False)
                await c.linger(always=True)
                return
            try:
                with c.scope:
                    await self._serve(c)
            except Exception:  # a bug: this connection ends, never the listener (or the node)
                log.exception("control API connection failed")
            finally:
                self._open.pop(c, None)
            await c.linger()
        finally:
            await stream.aclose()

    async def _serve(self, c: _Connection) -> None:
        first = True
        while True:
            c.expect_request(first)
            first = False
            request = None
            try:
                event = await c.next_event()
                if isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):  # (h11 gives a Request first)
                    raise ApiError(400, "expected a request", "BadRequest")
                request = event
                answer = await self._handle(c, request)
            except _Gone:
                return
            except ApiError as e:
                answer = _failure(e)
                c.skip_arrived_body()
            c.busy = True
            try:
                await c.answer(answer, head_only=request is not None and request.method == b"HEAD")
            except _Gone:
                return
            finally:
                c.busy = False
            if not c.next_cycle():
                return

    async def _handle(self, c: _Connection, request: h11.Request) -> _Answer:
        method = request.method.decode("ascii")
        handler, params = self.router.match(method, request.target.decode("ascii"))
        body = await c.read_body(request)
        data = None
        if body:
            try:
                data = json.loads(body)
            except ValueError:
                raise ApiError(400, "the body is not JSON", "BadRequest") from None
        c.busy = True
        try:
            status, payload = await handler(self.context, params, data)
        except Exception as e:
            return _failure(e)
        return _Answer.of(status, payload)
