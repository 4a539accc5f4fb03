"""The tether demo: two parties meet over a real loopback TCP connection, run a Noise XX
handshake, and move data through the encrypted transport — printing what happens.

Run it with ``python -m tether.demo.core``. It shows:

1. the handshake, message by message, with each side learning the other's static key;
2. a bulk transfer through the channel cipher (length-prefixed frames on the socket, explicit
   nonces, GIL released in the Rust core), with its throughput and a SHA-256 check;
3. what an attacker on the wire gets: a flipped bit is refused, a replayed message is refused, and
   the channel keeps working.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tether._core import FrameDecoder, encode_frame, encode_frames
from tether.core import noise
from tether.core.errors import DecryptError, ReplayError, TetherError

PROTOCOL = "Noise_XX_25519_AESGCM_SHA256"


def _frames(sock: socket.socket, decoder: FrameDecoder) -> Iterator[bytes]:
    while True:
        chunk = sock.recv(1 << 18)
        if not chunk:
            return
        yield from decoder.feed(chunk)


def _fingerprint(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass
class _ServerReport:
    client_key: bytes = b""
    client_payload: bytes = b""
    received: int = 0
    sha256: str = ""
    refusals: list[str] = field(default_factory=list)


def _responder(listener: socket.socket, static_key: bytes, report: _ServerReport) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frames = _frames(conn, FrameDecoder(max_frame_len=noise.MAX_MESSAGE_LEN + 16))
        hs = noise.Handshake(PROTOCOL, initiator=False, static_key=static_key, prologue=b"demo")
        hs.read_message(next(frames))
        conn.sendall(encode_frame(hs.write_message(b"hello from the server")))
        report.client_payload = hs.read_message(next(frames))
        report.client_key = hs.remote_static or b""
        channel = hs.into_channel_cipher()
        digest = hashlib.sha256()
        for message in frames:
            try:
                data = channel.open(message)
            except (DecryptError, ReplayError) as e:
                report.refusals.append(type(e).__name__)
                continue
            if not data:  # an empty message ends the stream
                break
            digest.update(data)
            report.received += len(data)
        report.sha256 = digest.hexdigest()
        conn.sendall(encode_frame(channel.seal(report.sha256.encode())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tether.demo.core",
        description="Noise XX between two parties over loopback TCP, then an encrypted transfer.",
        epilog="example: python -m tether.demo.core --megabytes 256",
    )
    parser.add_argument("--megabytes", type=int, default=128, help="bulk transfer size (MiB)")
    args = parser.parse_args(argv)

    server_sk, server_pk = noise.generate_keypair()
    client_sk, client_pk = noise.generate_keypair()
    print("tether demo — Noise XX over a loopback TCP connection")
    print(f"  protocol        {PROTOCOL}")
    print(f"  client identity {_fingerprint(client_pk)}  (SHA-256 of its static key, truncated)")
    print(f"  server identity {_fingerprint(server_pk)}")

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    report = _ServerReport()
    server = threading.Thread(target=_responder, args=(listener, server_sk, report), daemon=True)
    server.start()

    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frames = _frames(sock, FrameDecoder(max_frame_len=noise.MAX_MESSAGE_LEN + 16))
        print(f"\n1. handshake with 127.0.0.1:{port}")
        t0 = time.perf_counter()
        hs = noise.Handshake(PROTOCOL, initiator=True, static_key=client_sk, prologue=b"demo")
        m1 = hs.write_message(b"")
        sock.sendall(encode_frame(m1))
        print(f"   -> e                 {len(m1):5d} bytes")
        m2 = next(frames)
        payload = hs.read_message(m2)
        print(f"   <- e, ee, s, es      {len(m2):5d} bytes  payload {payload.decode()!r}")
        m3 = hs.write_message(b"hello from the client")
        sock.sendall(encode_frame(m3))
        print(f"   -> s, se             {len(m3):5d} bytes")
        elapsed = (time.perf_counter() - t0) * 1000
        assert hs.remote_static is not None
        print(f"   done in {elapsed:.2f} ms; handshake hash {hs.handshake_hash.hex()[:32]}…")
        print(
            f"   client sees server key {_fingerprint(hs.remote_static)} "
            f"({'matches' if hs.remote_static == server_pk else 'DOES NOT MATCH'})"
        )
        channel = hs.into_channel_cipher()

        total = args.megabytes << 20
        print(f"\n2. sending {args.megabytes} MiB through the channel cipher")
        block = os.urandom(1 << 20)
        digest = hashlib.sha256()
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            sock.sendall(channel.seal_stream(block))  # sealed and framed in one call
            digest.update(block)
            sent += len(block)

        print(f"   {sent >> 20} MiB sealed in {channel.sending_nonce:,} messages")
        print("\n3. an attacker on the wire")
        genuine = channel.seal(b"x" * 100)
        digest.update(b"x" * 100)
        tampered = bytearray(genuine)
        tampered[20] ^= 0x01
        sock.sendall(encode_frames([bytes(tampered), genuine, genuine]))
        print("   sent a message with one bit flipped, then the genuine one, then it again")
        sock.sendall(encode_frame(channel.seal(b"")))  # end of stream
        echo = channel.open(next(frames)).decode()
        seconds = time.perf_counter() - t0
        server.join()

    print(f"   server refused: {', '.join(report.refusals)}; the channel kept working")
    print(f"\n   {report.received:,} bytes received by the server")
    ok = echo == digest.hexdigest() and report.received == total + 100
    print(f"   SHA-256 {'matches' if ok else 'DIFFERS'}: {echo[:32]}…")
    print(
        f"   throughput {total / seconds / 1e6:,.0f} MB/s "
        f"(encrypt + frame + TCP + decrypt, one process, two threads)"
    )
    print(
        f"   server saw client {_fingerprint(report.client_key)}"
        f" ({'matches' if report.client_key == client_pk else 'DOES NOT MATCH'})"
        f", payload {report.client_payload.decode()!r}"
    )
    if not ok:
        print("demo FAILED: the data did not arrive intact", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TetherError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        sys.exit(1)
