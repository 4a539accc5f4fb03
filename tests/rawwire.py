"""An attacker's view of the wire: tether's framing and routed messages written by hand on a
plain blocking socket, with no tether code (docs/wire-format.md, docs/routing.md).

Attack tests use this so that what they send is exactly what a stranger with a socket can send,
and so that a bug shared by tether's own encoder and decoder cannot hide a hole.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

HELLO = b"tether\x00\x01"
LOCAL = 0
TCP = 1
KIND_DATA = 0
KIND_ERROR = 1
#: The secure-channel steps (the first payload byte after the kind).
HS1, HS2, HS3, DATA = 1, 2, 3, 4
#: The portal session types.
OPEN, PDATA, EOF, CLOSE, CREDIT = 1, 2, 3, 4, 5

Address = tuple[int, bytes]


def local(name: str) -> Address:
    return (LOCAL, name.encode())


def tcp(host_port: str) -> Address:
    return (TCP, host_port.encode())


def encode_route(route: Sequence[Address]) -> bytes:
    out = bytes([len(route)])
    for transport, value in route:
        out += struct.pack(">HB", transport, len(value)) + value
    return out


def encode_message(
    onward: Sequence[Address], return_route: Sequence[Address], payload: bytes
) -> bytes:
    return (
        b"\x01"
        + encode_route(onward)
        + encode_route(return_route)
        + struct.pack(">I", len(payload))
        + payload
    )


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@dataclass
class Message:
    onward: list[Address]
    return_route: list[Address]
    payload: bytes

    @property
    def kind(self) -> int:
        return self.payload[0] if self.payload else -1

    @property
    def text(self) -> str:
        return self.payload[1:].decode("utf-8", "replace")


def decode_message(data: bytes) -> Message:
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if len(data) - pos < n:
            raise ValueError("truncated message")
        out = data[pos : pos + n]
        pos += n
        return out

    if take(1) != b"\x01":
        raise ValueError("not version 1")
    routes: list[list[Address]] = []
    for _ in range(2):
        route: list[Address] = []
        for _ in range(take(1)[0]):
            (transport,) = struct.unpack(">H", take(2))
            route.append((transport, take(take(1)[0])))
        routes.append(route)
    (n,) = struct.unpack(">I", take(4))
    payload = take(n)
    if pos != len(data):
        raise ValueError("trailing bytes")
    return Message(routes[0], routes[1], payload)


class Raw:
    """One raw TCP connection to a node."""

    def __init__(
        self, port: int, *, host: str = "127.0.0.1", source: str | None = None, hello: bool = True
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        self.buf = b""
        if hello:
            self.hello()

    def hello(self) -> None:
        self.sock.sendall(frame(HELLO))
        assert self.frame() == HELLO

    def send(
        self,
        onward: Sequence[Address],
        payload: bytes,
        return_route: Sequence[Address] = (local("attacker"),),
    ) -> None:
        self.sock.sendall(frame(encode_message(onward, return_route, payload)))

    def frame(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    out, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                    return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame")
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed by the node")
            self.buf += chunk

    def message(self, timeout: float = 10.0) -> Message:
        """The next routed message (keepalives skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.frame(max(0.01, deadline - time.monotonic()))
            if f:
                return decode_message(f)

    def messages(self, timeout: float) -> list[Message]:
        """Every message that arrives within ``timeout`` seconds."""
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError):
            while time.monotonic() < deadline:
                out.append(self.message(max(0.01, deadline - time.monotonic())))
        return out

    def closed_within(self, timeout: float) -> bool:
        """Whether the node closes this connection within ``timeout`` seconds (what it sends
        meanwhile is read and dropped)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                if not self.sock.recv(1 << 16):
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


@contextlib.contextmanager
def raw(port: int, **kw: object) -> Iterator[Raw]:
    r = Raw(port, **kw)  # type: ignore[arg-type]
    try:
        yield r
    finally:
        r.close()


def noise_hs1() -> bytes:
    """A Noise XX first message as any initiator sends it: 32 bytes of ephemeral public key
    (random bytes will do: the responder cannot tell) and an empty payload."""
    return os.urandom(32)


def channel_hs1_payload() -> bytes:
    return bytes([KIND_DATA, HS1]) + noise_hs1()
