"""The node's control API: HTTP/1.1 with JSON bodies over a Unix-domain socket that only the user
can open (``$TETHER_HOME/nodes/NAME/api.sock``, 0600 in a 0700 directory). The ``tether``
command uses it, and so can scripts::

    curl --unix-socket ~/.tether/nodes/n1/api.sock http://node/listeners

Resources and methods are documented in ``docs/control-api.md``. One request per connection;
heads are limited to 16 KiB and bodies to 1 MiB, and a client gets 10 s to send its request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import ByteStream

from tether.core.errors import NotFoundError, TetherError

log = logging.getLogger("tether.control")

MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20
REQUEST_TIMEOUT = 10.0

_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Raw:
    """A response body that is not JSON (the metrics' text exposition)."""

    content_type: str
    body: bytes


class ApiError(TetherError):
    def __init__(self, status: int, message: str, kind: str = "ApiError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


ContextT = TypeVar("ContextT")
"""What every handler of a router gets first (the daemon)."""

Handler = Callable[[ContextT, dict[str, str], Any], Awaitable[tuple[int, Any]]]
"""A resource's handler: the context, the path's parameters and the JSON body; the status and
the JSON answer."""


class Router(Generic[ContextT]):
    """Resources (a method and a path pattern such as ``/relays/{name}``) and their handlers."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler[ContextT]]] = []

    def add(self, method: str, pattern: str) -> Callable[[Handler[ContextT]], Handler[ContextT]]:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

        def deco(fn: Handler[ContextT]) -> Handler[ContextT]:
            self.routes.append((method, regex, fn))
            return fn

        return deco

    def include(self, other: Router[ContextT]) -> None:
        """Serve ``other``'s resources too."""
        self.routes.extend(other.routes)

    def match(self, method: str, path: str) -> tuple[Handler[ContextT], dict[str, str]]:
        allowed = False
        for m, regex, fn in self.routes:
            found = regex.fullmatch(path)
            if found:
                if m == method:
                    return fn, found.groupdict()
                allowed = True
        if allowed:
            raise ApiError(405, f"{method} is not allowed on {path}")
        raise ApiError(404, f"no such resource: {path}")


async def _read_request(stream: ByteStream) -> tuple[str, str, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise ApiError(413, "request head too large")
        chunk = await stream.receive(4096)
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ApiError(400, "malformed request line")
    method, target = parts[0], parts[1]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                raise ApiError(400, "bad Content-Length")
            length = int(value.strip())
        elif name.strip().lower() == "transfer-encoding":
            raise ApiError(400, "chunked bodies are not supported; send Content-Length")
    if length > MAX_BODY:
        raise ApiError(413, f"body of {length} bytes exceeds {MAX_BODY}")
    body = rest
    while len(body) < length:
        body += await stream.receive(65536)
    return method, target.split("?", 1)[0], body[:length]


async def serve_connection(context: ContextT, router: Router[ContextT], stream: ByteStream) -> None:
    status, payload = 500, {"error": {"type": "InternalError", "message": "no response"}}
    async with stream:
        try:
            with anyio.fail_after(REQUEST_TIMEOUT):
                method, path, body = await _read_request(stream)
            handler, params = router.match(method, path)
            data = None
            if body:
                try:
                    data = json.loads(body)
                except ValueError:
                    raise ApiError(400, "the body is not JSON") from None
            status, payload = await handler(context, params, data)
        except TimeoutError:
            status, payload = (
                400,
                {"error": {"type": "Timeout", "message": "request not received in time"}},
            )
        except ApiError as e:
            status, payload = e.status, {"error": {"type": e.kind, "message": str(e)}}
        except NotFoundError as e:
            status, payload = 404, {"error": {"type": type(e).__name__, "message": str(e)}}
        except TetherError as e:
            status, payload = 422, {"error": {"type": type(e).__name__, "message": str(e)}}
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
        except Exception as e:  # a bug: say so, keep serving
            log.exception("control API request failed")
            status, payload = 500, {"error": {"type": type(e).__name__, "message": str(e)}}
        content_type = "application/json"
        if isinstance(payload, Raw):
            content_type, out = payload.content_type, payload.body
        else:
            out = b"" if status == 204 else json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(out)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.send(head + out)
