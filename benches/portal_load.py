"""Load generator of the portal benchmark (``benches/portal.py``): C-speed TCP sender, sink and
echo, with plain blocking sockets (every byte is moved by ``sendall`` / ``recv_into`` in C, with
the GIL released, so Python's speed does not limit the stream).

The server side runs as its own process::

    python benches/portal_load.py SINK_PORT ECHO_PORT     # 0 for ports the kernel picks

It prints one line ``ready {"sink": PORT, "echo": PORT}`` and serves until it is killed:

* **sink**: per connection, an 8-byte big-endian byte count N, then up to N bytes read with
  ``recv_into`` a 1 MiB buffer; it answers with the 8-byte count of bytes it actually received
  (fewer than N if the stream ended early) and closes;
* **echo**: per connection, everything read is written back at once (one ``recv`` of up to
  64 KiB, one ``sendall``), until the client closes.

Each sink connection gets its own thread; the echo server is one thread with an ``epoll``
selector (so a new connection costs an accept, not a thread start). All sockets have
``TCP_NODELAY``. The client functions
(:func:`send_bulk`, :func:`ping_pong`, :func:`open_times`) run in the benchmark process.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

HOST = "127.0.0.1"
COUNT = struct.Struct(">Q")
CHUNK = 1 << 20
"""Bytes per ``sendall`` / ``recv_into``."""
ECHO_READ = 65536
TIMEOUT = 120.0
"""A client socket operation that waits longer than this fails the benchmark (a stalled path)."""


# --- server ----------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError(f"the stream ended after {got} of {n} bytes")
        got += k
    return bytes(buf)


def _sink(conn: socket.socket) -> None:
    with conn:
        try:
            (size,) = COUNT.unpack(_recv_exact(conn, COUNT.size))
            buf = memoryview(bytearray(CHUNK))
            got = 0
            while got < size:
                k = conn.recv_into(buf[: min(CHUNK, size - got)])
                if not k:
                    break
                got += k
            conn.sendall(COUNT.pack(got))
        except OSError:
            pass


def _echo_loop(listener: socket.socket) -> None:
    """The echo server: one thread, one ``epoll`` selector for the listener and every
    connection (no thread to start per connection, so opening one costs only the accept)."""
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _ = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(ECHO_READ)
                if data:
                    sock.sendall(data)  # blocking: echo clients always read their replies
                    continue
            except OSError:
                pass
            sel.unregister(sock)
            sock.close()


def _serve(listener: socket.socket, handler: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(512)
    return sock


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    sink, echo = _listen(int(sys.argv[1])), _listen(int(sys.argv[2]))
    threading.Thread(target=_serve, args=(sink, _sink), daemon=True).start()
    threading.Thread(target=_echo_loop, args=(echo,), daemon=True).start()
    ports = {"sink": sink.getsockname()[1], "echo": echo.getsockname()[1]}
    print("ready " + json.dumps(ports), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        return 130
    return 0


# --- client ----------------------------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_bulk(port: int, size: int) -> tuple[float, int]:
    """Send ``size`` bytes to the sink at ``port`` (through whatever listens there); returns
    (seconds from the first byte sent to the sink's answer, bytes the sink received)."""
    buf = memoryview(bytes(range(256)) * (CHUNK // 256))
    with _connect(port) as sock:
        start = time.perf_counter()
        sock.sendall(COUNT.pack(size))
        remaining = size
        while remaining >= CHUNK:
            sock.sendall(buf)
            remaining -= CHUNK
        if remaining:
            sock.sendall(buf[:remaining])
        (received,) = COUNT.unpack(_recv_exact(sock, COUNT.size))
        return time.perf_counter() - start, received


def ping_pong(port: int, count: int, size: int = 64) -> list[float]:
    """``count`` round trips of ``size`` bytes, one at a time on one connection to the echo
    server at ``port``; returns each round trip's seconds."""
    message = bytes(size)
    times: list[float] = []
    clock = time.perf_counter
    with _connect(port) as sock:
        for _ in range(count):
            start = clock()
            sock.sendall(message)
            got = 0
            while got < size:
                chunk = sock.recv(size - got)
                if not chunk:
                    raise ConnectionError("the echo stream ended")
                got += len(chunk)
            times.append(clock() - start)
    return times


def open_times(port: int, count: int, size: int = 64) -> tuple[list[float], list[str]]:
    """``count`` new connections to the echo server at ``port``, one after the other; returns
    for each successful one the seconds from ``connect`` to the end of its first ``size``-byte
    round trip (the connection is closed after that, outside the time), and the errors of the
    failed ones (reset, closed without a reply)."""
    message = bytes(size)
    times: list[float] = []
    errors: list[str] = []
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        try:
            with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(message)
                got = 0
                while got < size:
                    chunk = sock.recv(size - got)
                    if not chunk:
                        raise ConnectionError("closed before the first reply")
                    got += len(chunk)
                times.append(clock() - start)
        except OSError as e:  # ConnectionError included
            errors.append(str(e) or type(e).__name__)
    return times, errors


if __name__ == "__main__":
    sys.exit(main())
