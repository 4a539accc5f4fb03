"""A small client for a node's control API: the standard library's ``http.client`` over the
node's Unix socket, one request per connection (a command makes one or two calls)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tether.core.errors import StoreError, TetherError


class ApiCallError(TetherError):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("node", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def call(sock: Path, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """``method`` on the resource at ``path`` (as the API documents it, not percent-encoded:
    each segment is encoded here, so a name may hold ``#``, ``%``, ``?`` or a space) with
    ``body`` as JSON; the JSON answer. An answer of 400 or more raises :class:`ApiCallError`; a
    node that does not answer, :class:`StoreError`."""
    conn = _UnixConnection(sock, timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, quote(path, safe="/"), body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except (FileNotFoundError, ConnectionRefusedError):
        raise StoreError(
            f"the node's control socket {sock} does not answer: is it running?"
        ) from None
    except TimeoutError:
        raise StoreError(f"the node did not answer within {timeout:g} s") from None
    except (ConnectionError, http.client.HTTPException) as e:  # (it stopped, or broke HTTP)
        raise StoreError(f"the node's control socket {sock} failed the request: {e}") from None
    finally:
        conn.close()
    payload = json.loads(raw) if raw else None
    if resp.status >= 400:
        err = (payload or {}).get("error", {})
        raise ApiCallError(
            resp.status,
            str(err.get("type", "ApiError")),
            str(err.get("message", f"HTTP {resp.status}")),
        )
    return payload
