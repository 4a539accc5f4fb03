"""Server side of the node benchmarks (``benches/node_cases.py``), run as its own process.

    python benches/node_server.py NAME
    python benches/node_server.py NAME --channel    # for benches/channel_cases.py

One trio event loop (one process, so its own GIL) runs, all on 127.0.0.1 with ports the kernel
picks:

* a tether :class:`~tether.Node` named NAME with a TCP listener, its built-in ``echo``
  worker and a ``count`` worker (counts data messages and their bytes; a message with an empty
  payload is a query, answered along its return route with the totals);
* the plain trio baselines: an echo server (echoes every length-prefixed frame it receives, one
  write per read) and a counting server (counts frames and bytes per connection; an empty frame
  is a query, answered with the totals).

Frames are a 4-byte big-endian length and the payload, decoded with the usual pure-Python
``bytearray`` + ``struct.unpack_from`` idiom (the same as ``cases.PyFrameDecoder``).

With ``--channel`` (the secure-channel groups, ``benches/channel_cases.py``) the node also has a
secure-channel identity (:func:`tether.identity.trust.ephemeral_identity`), so it accepts channels
at ``api``; a second listener, ``api-cold``, forgets every verified identity history after each
handshake (its trust policy clears ``verify_history``'s cache), so the next handshake verifies
from scratch; a ``stats`` worker answers any message with the listeners' counts, the open
channels, the node's workers and how many of ``api-cold``'s handshakes verified the initiator's
history anew (JSON); and TLS 1.3 echo and counting servers (the same frame handlers behind
trio's ``SSLStream``) use a self-signed ECDSA P-256 certificate for 127.0.0.1 generated at
start-up with ``cryptography`` (the key only ever exists in this process and, while ``ssl``
loads it, in a private temporary directory).

When everything listens, the process prints one JSON line ``{"node": PORT, "echo": PORT,
"count": PORT}`` on stdout (with ``--channel`` also the ``"tls_echo"`` and ``"tls_count"``
ports, the node's ``"identifier"`` and the certificate as ``"cert"``, PEM), then serves until
its stdin reaches end of file: the parent closes it to stop the server, and the kernel closes it
if the parent dies, so a server never outlives the benchmark run.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import struct
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.api import Node
from tether.core.message import Message, WorkerContext
from tether.identity import identity
from tether.identity.trust import Peer, ephemeral_identity

HOST = "127.0.0.1"
HEADER = struct.Struct(">I")
TOTALS = struct.Struct(">QQ")
"""Answer to a count query: messages counted, payload bytes counted."""
READ_SIZE = 65536
MAX_FRAME_LEN = 1 << 20


class FrameReader:
    """Length-prefixed frames from a byte stream: a ``bytearray`` buffer and ``unpack_from``."""

    def __init__(self, max_frame_len: int = MAX_FRAME_LEN) -> None:
        self._buf = bytearray()
        self._max = max_frame_len

    def feed(self, data: bytes | bytearray) -> list[bytearray]:
        buf = self._buf
        buf += data
        unpack_from = HEADER.unpack_from
        frames = []
        pos, end_of_data = 0, len(buf)
        while end_of_data - pos >= 4:
            (length,) = unpack_from(buf, pos)
            if length > self._max:
                raise ValueError(f"frame of {length} bytes exceeds {self._max}")
            end = pos + 4 + length
            if end > end_of_data:
                break
            frames.append(buf[pos + 4 : end])
            pos = end
        if pos:
            del buf[:pos]
        return frames


def encode(frames: list[bytes] | list[bytearray]) -> bytes:
    """Frames as one buffer: each payload behind its 4-byte length."""
    pack = HEADER.pack
    return b"".join([part for f in frames for part in (pack(len(f)), f)])


# --- trio baselines --------------------------------------------------------------------------


async def echo_server(stream: trio.abc.Stream) -> None:
    reader = FrameReader()
    async with stream:
        while chunk := await stream.receive_some(READ_SIZE):
            frames = reader.feed(chunk)
            if frames:
                await stream.send_all(encode(frames))


async def count_server(stream: trio.abc.Stream) -> None:
    reader = FrameReader()
    count = nbytes = 0
    async with stream:
        while chunk := await stream.receive_some(READ_SIZE):
            for f in reader.feed(chunk):
                if f:
                    count += 1
                    nbytes += len(f)
                else:
                    await stream.send_all(TOTALS.pack(count, nbytes))


# --- tether ----------------------------------------------------------------------------------


@dataclass
class Counter:
    count: int = 0
    nbytes: int = 0

    async def __call__(self, ctx: WorkerContext, msg: Message) -> None:
        if msg.payload:
            self.count += 1
            self.nbytes += len(msg.payload)
        else:
            await ctx.reply(msg, TOTALS.pack(self.count, self.nbytes))


COLD_LISTENER = "api-cold"
"""Channel listener whose handshakes verify the initiator's identity history uncached."""


class TrustAnyoneUncached:
    """Trust policy of ``api-cold``: accept any verified peer, then empty ``verify_history``'s
    cache (cached by the history's exact bytes), so that the next handshake in this process
    verifies its peer's history from scratch.

    ``reverified`` counts the handshakes whose peer history was verified anew: a cache hit would
    return the very ``Identity`` object of the previous handshake with the same initiator.
    """

    def __init__(self) -> None:
        self.reverified = 0
        self._last: object = None

    def __call__(self, peer: Peer) -> None:
        self.reverified += peer.identity is not self._last
        self._last = peer.identity
        identity._verify_history_cached.cache_clear()


def stats_worker(node: Node, cold: TrustAnyoneUncached) -> Any:
    async def stats(ctx: WorkerContext, msg: Message) -> None:
        listeners = node.channel_listeners.values()
        answer = {
            "accepted": {x.address: x.accepted for x in listeners},
            "refused": sum(x.refused for x in listeners),
            "channels": len(node.channels),
            "workers": len(node.workers()),
            "cold_reverified": cold.reverified,
        }
        await ctx.reply(msg, json.dumps(answer).encode())

    return stats


# --- TLS 1.3 baseline ------------------------------------------------------------------------


def self_signed_certificate() -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): ECDSA P-256, valid for 127.0.0.1 for one day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tether bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def tls_server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """TLS 1.3 only (``ssl`` loads a certificate chain from files only: a private temporary
    directory, removed at once)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory() as tmp:  # mode 0700
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.touch(0o600)
        key_file.write_bytes(key_pem)
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


async def _until_stdin_closes() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(4096):
            pass


async def serve(name: str, channel: bool = False) -> None:
    me = ephemeral_identity() if channel else None
    async with Node(name, identity=me) as node, trio.open_nursery() as nursery:
        await node.start_worker("count", Counter())
        listener = await node.listen_tcp(HOST, 0)
        echo = (await nursery.start(partial(trio.serve_tcp, echo_server, 0, host=HOST)))[0]
        count = (await nursery.start(partial(trio.serve_tcp, count_server, 0, host=HOST)))[0]
        ports: dict[str, Any] = {
            "node": listener.port,
            "echo": echo.socket.getsockname()[1],
            "count": count.socket.getsockname()[1],
        }
        if me is not None:
            cold = TrustAnyoneUncached()
            await node.create_secure_channel_listener(COLD_LISTENER, trust=cold)
            await node.start_worker("stats", stats_worker(node, cold))
            cert_pem, key_pem = self_signed_certificate()
            tls = tls_server_context(cert_pem, key_pem)
            for key, handler in (("tls_echo", echo_server), ("tls_count", count_server)):
                serve_tls = partial(trio.serve_ssl_over_tcp, handler, 0, tls, host=HOST)
                tls_listener = (await nursery.start(serve_tls))[0]
                ports[key] = tls_listener.transport_listener.socket.getsockname()[1]
            ports["identifier"] = me.identity.identifier
            ports["cert"] = cert_pem.decode()
        print(json.dumps(ports), flush=True)
        await _until_stdin_closes()
        nursery.cancel_scope.cancel()


def main() -> int:
    args = sys.argv[1:]
    channel = args[1:] == ["--channel"]
    if len(args) != 1 and not channel:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        trio.run(serve, args[0], channel)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
