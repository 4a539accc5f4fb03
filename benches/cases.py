"""The benchmarks of ``benches/run.py``: what is measured, and the baselines it is measured against.

Each ``*_group`` function builds one :class:`~harness.Group`. Everything a variant needs (keys,
finished handshakes, payloads, encoded streams) is prepared here, outside the timed code, and
every variant's result is checked once for correctness before it is timed, so a fast but wrong
implementation cannot show up in the table.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from noise.connection import Keypair, NoiseConnection  # type: ignore[import-untyped]

from harness import Group, Runner, Variant
from node_server import FrameReader
from tether.core import frame, noise
from tether.core.errors import CredentialSignatureError, SignatureError
from tether.identity import credential, identity
from tether.identity.vault import KeyType, MemoryVault

PROTOCOL = "Noise_XX_25519_AESGCM_SHA256"
TRANSPORT_SIZES = (1024, 16384, noise.MAX_PAYLOAD_LEN)
FRAME_SIZES = (64, 65536)
SEAL_SIZES = (64, 16384)
HISTORY_CHANGES = (1, 5)
"""Identity histories verified: a new identity, and one rotated 4 times."""
CREDENTIAL_ATTRIBUTES = {"role": "operator", "team": "storage", "region": "eu-west"}

KEY_POOL = 64
"""Distinct static key pairs generated up front for the handshake benchmark (used in turn)."""
STREAM_BYTES = 4 << 20
"""Approximate size of the encoded frame stream decoded by one iteration of the frame benchmark."""
READ_SIZE = 64 << 10
"""The stream is fed in chunks of this size, like the results of ``sock.recv(65536)``."""
SEAL_BATCH_BYTES = {64: 64 << 10, 16384: 1 << 20}
"""Payload bytes sealed by one iteration of the batch-seal benchmark, per payload size."""

# Rows of the X25519 group, which the report combines into the handshake bound.
X25519_EXCHANGE = "cryptography exchange()"
X25519_KEYGEN = "cryptography generate() + public key"
TETHER_KEYGEN = "tether generate_keypair()"


class BenchmarkError(RuntimeError):
    """An implementation gave a wrong result during the correctness check before timing."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise BenchmarkError(f"correctness check failed: {what}")


def _static_keys(count: int) -> list[tuple[bytes, bytes]]:
    """``count`` (initiator, responder) pairs of X25519 private keys."""
    return [(noise.generate_keypair()[0], noise.generate_keypair()[0]) for _ in range(count)]


# --- handshakes ------------------------------------------------------------------------------


def _tether_handshake(sk_i: bytes, sk_r: bytes) -> tuple[noise.Handshake, noise.Handshake]:
    """A complete XX handshake (3 messages, empty payloads); both sides finished."""
    i = noise.Handshake(PROTOCOL, initiator=True, static_key=sk_i)
    r = noise.Handshake(PROTOCOL, initiator=False, static_key=sk_r)
    r.read_message(i.write_message(b""))  # -> e
    i.read_message(r.write_message(b""))  # <- e, ee, s, es
    r.read_message(i.write_message(b""))  # -> s, se
    return i, r


def _noiseprotocol_handshake(sk_i: bytes, sk_r: bytes) -> tuple[Any, Any]:
    """The same handshake with the ``noiseprotocol`` package; both connections in transport."""
    i = NoiseConnection.from_name(PROTOCOL.encode())
    i.set_as_initiator()
    i.set_keypair_from_private_bytes(Keypair.STATIC, sk_i)
    i.start_handshake()
    r = NoiseConnection.from_name(PROTOCOL.encode())
    r.set_as_responder()
    r.set_keypair_from_private_bytes(Keypair.STATIC, sk_r)
    r.start_handshake()
    r.read_message(i.write_message(b""))
    i.read_message(r.write_message(b""))
    r.read_message(i.write_message(b""))
    return i, r


def _tether_transports() -> tuple[noise.Transport, noise.Transport]:
    i, r = _tether_handshake(*_static_keys(1)[0])
    return i.into_transport(), r.into_transport()


def _tether_channels() -> tuple[noise.ChannelCipher, noise.ChannelCipher]:
    i, r = _tether_handshake(*_static_keys(1)[0])
    return i.into_channel_cipher(), r.into_channel_cipher()


def handshake_group() -> Group:
    """Full XX handshakes per second, both sides in this process."""
    keys = _static_keys(KEY_POOL)

    # Correctness: both finish, agree on the handshake hash, and interoperate with each other.
    i, r = _tether_handshake(*keys[0])
    _check(i.finished and r.finished, "tether handshake finished")
    ti, tr = i.into_transport(), r.into_transport()
    _check(ti.handshake_hash == tr.handshake_hash, "tether handshake hashes agree")
    _check(tr.decrypt(ti.encrypt(b"ping")) == b"ping", "tether transport after handshake")
    ni, nr = _noiseprotocol_handshake(*keys[0])
    _check(ni.handshake_finished and nr.handshake_finished, "noiseprotocol handshake finished")
    _check(nr.decrypt(ni.encrypt(b"ping")) == b"ping", "noiseprotocol transport")

    def run_tether(n: int) -> None:
        for sk_i, sk_r in itertools.islice(itertools.cycle(keys), n):
            i, r = _tether_handshake(sk_i, sk_r)
            i.into_transport()
            r.into_transport()

    def run_noiseprotocol(n: int) -> None:
        for sk_i, sk_r in itertools.islice(itertools.cycle(keys), n):
            _noiseprotocol_handshake(sk_i, sk_r)  # noiseprotocol splits after the last message

    return Group(
        key="handshake",
        title="Noise XX handshake (both sides, 3 messages, into_transport)",
        unit="handshakes/s",
        variants=[
            Variant("tether", run_tether),
            Variant("noiseprotocol", run_noiseprotocol),
        ],
    )


def x25519_group() -> Group:
    """Context for the handshake figure: raw X25519 from ``cryptography`` (OpenSSL)."""
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    b_pub = b.public_key()
    _check(a.exchange(b_pub) == b.exchange(a.public_key()), "X25519 agreement")

    def run_exchange(n: int) -> None:
        exchange = a.exchange
        for _ in range(n):
            exchange(b_pub)

    def run_keygen(n: int) -> None:
        generate = X25519PrivateKey.generate
        for _ in range(n):
            generate().public_key().public_bytes_raw()

    def run_tether_keygen(n: int) -> None:
        generate = noise.generate_keypair
        for _ in range(n):
            generate()

    return Group(
        key="x25519",
        title="X25519 key agreement and generation (handshake context)",
        unit="ops/s",
        variants=[
            Variant(X25519_EXCHANGE, run_exchange),
            Variant(X25519_KEYGEN, run_keygen),
            Variant(TETHER_KEYGEN, run_tether_keygen),
        ],
    )


# --- transport -------------------------------------------------------------------------------


def transport_group(size: int) -> Group:
    """Encrypt on one side, decrypt on the other, ``size``-byte messages."""
    pt = os.urandom(size)

    ti, tr = _tether_transports()
    _check(tr.decrypt(ti.encrypt(pt)) == pt, "tether Transport round trip")

    ci, cr = _tether_channels()
    _check(cr.open(ci.seal(pt)) == pt, "tether ChannelCipher round trip")

    ni, nr = _noiseprotocol_handshake(*_static_keys(1)[0])
    _check(nr.decrypt(ni.encrypt(pt)) == pt, "noiseprotocol round trip")

    key = AESGCM.generate_key(bit_length=256)
    sender, receiver = AESGCM(key), AESGCM(key)
    nonces = itertools.count()  # shared by all rounds: no nonce is used twice
    first = next(nonces).to_bytes(12, "big")
    _check(receiver.decrypt(first, sender.encrypt(first, pt, None), None) == pt, "AESGCM")

    def run_transport(n: int) -> None:
        encrypt, decrypt = ti.encrypt, tr.decrypt
        for _ in range(n):
            decrypt(encrypt(pt))

    def run_channel(n: int) -> None:
        seal, open_ = ci.seal, cr.open
        for _ in range(n):
            open_(seal(pt))

    def run_noiseprotocol(n: int) -> None:
        encrypt, decrypt = ni.encrypt, nr.decrypt
        for _ in range(n):
            decrypt(encrypt(pt))

    def run_aesgcm(n: int) -> None:
        encrypt, decrypt = sender.encrypt, receiver.decrypt
        for counter in itertools.islice(nonces, n):
            nonce = counter.to_bytes(12, "big")
            decrypt(nonce, encrypt(nonce, pt, None), None)

    return Group(
        key=f"transport/{size}",
        title=f"Transport encrypt+decrypt, {size} B",
        unit="msg/s",
        variants=[
            Variant("tether Transport", run_transport, bytes_per_iter=size),
            Variant("tether ChannelCipher", run_channel, bytes_per_iter=size),
            Variant("noiseprotocol", run_noiseprotocol, bytes_per_iter=size),
            Variant("cryptography AESGCM", run_aesgcm, bytes_per_iter=size),
        ],
    )


# --- frames ----------------------------------------------------------------------------------


# The pure-Python baseline is the benchmark servers' own frame reader (a bytearray buffer and
# ``struct.unpack_from``, frames returned as bytearray slices: the cheapest form of the idiom).
PyFrameDecoder = FrameReader


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[k : k + size] for k in range(0, len(data), size)]


def frame_group(size: int) -> Group:
    """Decode a stream of ``size``-byte frames fed in socket-sized chunks."""
    count = max(1, STREAM_BYTES // (frame.HEADER_LEN + size))
    blob = os.urandom(count * size)
    payloads = [blob[k * size : (k + 1) * size] for k in range(count)]
    stream = frame.encode_frames(payloads)
    _check(len(stream) == count * (frame.HEADER_LEN + size), "encode_frames length")
    chunks = _chunks(stream, READ_SIZE)

    def runner(decoder: frame.FrameDecoder | PyFrameDecoder, name: str) -> Runner:
        decoded = [bytes(f) for c in chunks for f in decoder.feed(c)]
        _check(decoded == payloads, f"{name} decodes the stream")

        def run(n: int) -> None:
            feed = decoder.feed
            for _ in range(n):
                for chunk in chunks:
                    feed(chunk)

        return run

    tether_decoder = frame.FrameDecoder(max_frame_len=1 << 20)
    run_tether = runner(tether_decoder, "tether FrameDecoder")
    _check(tether_decoder.buffered == 0, "tether FrameDecoder holds nothing after whole frames")
    run_python = runner(PyFrameDecoder(max_frame_len=1 << 20), "pure-Python decoder")

    return Group(
        key=f"frame/{size}",
        title=f"Frame decode, {size} B frames, {READ_SIZE // 1024} KiB reads",
        unit="frames/s",
        variants=[
            Variant("tether FrameDecoder", run_tether, count, count * size),
            Variant("pure Python", run_python, count, count * size),
        ],
    )


# --- batch seal ------------------------------------------------------------------------------


def seal_group(size: int) -> Group:
    """Seal a batch of ``size``-byte payloads: per-message calls vs the batch APIs."""
    batch = SEAL_BATCH_BYTES[size] // size
    blob = os.urandom(batch * size)
    payloads = [blob[k * size : (k + 1) * size] for k in range(batch)]

    loop_tx, loop_rx = _tether_channels()
    many_tx, many_rx = _tether_channels()
    chunks_tx, chunks_rx = _tether_channels()

    seal = loop_tx.seal
    _check(loop_rx.open_many([seal(p) for p in payloads]) == payloads, "seal() loop")
    _check(many_rx.open_many(many_tx.seal_many(payloads)) == payloads, "seal_many")
    sealed = chunks_tx.seal_chunks(blob, chunk_size=size)
    _check(chunks_rx.open_many(sealed) == payloads, "seal_chunks")

    def run_loop(n: int) -> None:
        seal = loop_tx.seal
        for _ in range(n):
            [seal(p) for p in payloads]

    def run_many(n: int) -> None:
        seal_many = many_tx.seal_many
        for _ in range(n):
            seal_many(payloads)

    def run_chunks(n: int) -> None:
        seal_chunks = chunks_tx.seal_chunks
        for _ in range(n):
            seal_chunks(blob, chunk_size=size)

    # Socket-ready output: sealed messages as one stream of length-prefixed frames.
    framed_tx, framed_rx = _tether_channels()
    stream_tx, stream_rx = _tether_channels()
    loopf_tx, loopf_rx = _tether_channels()
    for tx, rx, name in (
        (framed_tx, framed_rx, "seal_frames"),
        (stream_tx, stream_rx, "seal_stream"),
        (loopf_tx, loopf_rx, "seal() loop + encode_frames"),
    ):
        if name == "seal_frames":
            wire = tx.seal_frames(payloads)
        elif name == "seal_stream":
            wire = tx.seal_stream(blob, chunk_size=size)
        else:
            wire = frame.encode_frames([tx.seal(p) for p in payloads])
        decoder = frame.FrameDecoder(max_frame_len=1 << 20)
        _check(rx.open_many(decoder.feed(wire)) == payloads, name)

    def run_loop_framed(n: int) -> None:
        seal = loopf_tx.seal
        for _ in range(n):
            frame.encode_frames([seal(p) for p in payloads])

    def run_frames(n: int) -> None:
        seal_frames = framed_tx.seal_frames
        for _ in range(n):
            seal_frames(payloads)

    def run_stream(n: int) -> None:
        seal_stream = stream_tx.seal_stream
        for _ in range(n):
            seal_stream(blob, chunk_size=size)

    total = batch * size
    return Group(
        key=f"seal/{size}",
        title=f"Batch seal, {batch} x {size} B",
        unit="msg/s",
        variants=[
            Variant("seal() loop", run_loop, batch, total),
            Variant("seal_many(list)", run_many, batch, total),
            Variant("seal_chunks(buffer)", run_chunks, batch, total),
            Variant("seal() loop + encode_frames", run_loop_framed, batch, total),
            Variant("seal_frames(list)", run_frames, batch, total),
            Variant("seal_stream(buffer)", run_stream, batch, total),
        ],
    )


# --- identities and credentials --------------------------------------------------------------

Signed = tuple[Ed25519PublicKey, bytes, bytes]
"""(public key, signature, message): one Ed25519 verification, key already loaded."""


def _raw_runner(signed: list[Signed]) -> Runner:
    """The bare Ed25519 verifications from ``cryptography`` (OpenSSL) that the tether call
    needs, keys loaded up front: the bound for any verifier of the same signatures."""
    for key, signature, message in signed:
        key.verify(signature, message)  # correctness: each one is valid

    def run(n: int) -> None:
        for _ in range(n):
            for key, signature, message in signed:
                key.verify(signature, message)

    return run


def _history_signatures(history: identity.Identity) -> list[Signed]:
    """Every signature ``verify_history`` checks: each change's own, and the previous key's on
    every change but the first (1 for one change, 9 for five)."""
    out: list[Signed] = []
    for i, sc in enumerate(history.changes):
        message = sc.change.signed_message()
        if sc.previous_signature is not None:
            before = history.changes[i - 1].change.primary_key
            out.append((Ed25519PublicKey.from_public_bytes(before), sc.previous_signature, message))
        out.append(
            (Ed25519PublicKey.from_public_bytes(sc.change.primary_key), sc.signature, message)
        )
    return out


def identity_verify_group(changes: int) -> Group:
    """Verify an exported identity history of ``changes`` changes (``changes - 1`` rotations)."""
    vault, now = MemoryVault(), 1_700_000_000
    ident, key_id = identity.create(vault, now)
    for k in range(1, changes):
        ident, key_id = identity.rotate(vault, ident, key_id, now + k)
    data = ident.history
    signed = _history_signatures(ident)
    cache = identity._verify_history_cached

    _check(len(ident.changes) == changes, "history length")
    _check(len(signed) == 2 * changes - 1, "signatures per history")
    cache.cache_clear()
    _check(identity.verify_history(data) == ident, "verify_history (uncached)")
    hits = cache.cache_info().hits
    _check(identity.verify_history(data) == ident, "verify_history (cached)")
    _check(cache.cache_info().hits == hits + 1, "the second call is a cache hit")
    tampered = bytearray(data)
    tampered[-1] ^= 1  # the last signature
    cache.cache_clear()
    try:
        identity.verify_history(bytes(tampered))
    except SignatureError:
        pass
    else:
        raise BenchmarkError("correctness check failed: a tampered history verified")

    def run_uncached(n: int) -> None:
        clear, verify = cache.cache_clear, identity.verify_history
        for _ in range(n):
            clear()
            verify(data)

    def run_cached(n: int) -> None:
        verify = identity.verify_history
        for _ in range(n):
            verify(data)

    return Group(
        key=f"identity/verify/{changes}",
        title=f"Identity history verification, {changes} change{'s' if changes > 1 else ''}",
        unit="histories/s",
        variants=[
            Variant("verify_history uncached", run_uncached),
            Variant("verify_history cached", run_cached),
            Variant(f"raw Ed25519 x{len(signed)}", _raw_runner(signed)),
        ],
    )


def credential_verify_group() -> Group:
    """Verify a credential (3 attributes) against one trusted authority."""
    vault, now = MemoryVault(), 1_700_000_000
    authority, primary = identity.create(vault, now)
    subject, _ = identity.create(vault, now)
    signing_key = vault.generate(KeyType.ED25519)
    att = identity.attest(
        vault,
        authority,
        primary,
        identity.Purpose.CREDENTIAL_SIGNING,
        vault.public_key(signing_key),
        now,
        now + 365 * 24 * 3600,
    )
    cred = credential.issue(
        vault, signing_key, att, subject.identifier, CREDENTIAL_ATTRIBUTES, now=now, ttl=3600
    )
    data = cred.encode()
    authorities = {authority.identifier: authority}
    verify_now = now + 60
    signed: list[Signed] = [
        (
            Ed25519PublicKey.from_public_bytes(authority.primary_key),
            att.signature,
            att.signed_message(),
        ),
        (Ed25519PublicKey.from_public_bytes(att.public_key), cred.signature, cred.signed_message()),
    ]

    def verify(c: bytes | credential.Credential) -> credential.Credential:
        return credential.verify(
            c, authorities=authorities, now=verify_now, issuer=authority.identifier
        )

    _check(verify(data) == cred, "verify(bytes)")
    _check(verify(cred) == cred, "verify(Credential)")
    _check(len(cred.attributes) == 3, "three attributes")
    tampered = bytearray(data)
    tampered[-1] ^= 1
    try:
        verify(bytes(tampered))
    except CredentialSignatureError:
        pass
    else:
        raise BenchmarkError("correctness check failed: a tampered credential verified")

    def run_bytes(n: int) -> None:
        for _ in range(n):
            verify(data)

    def run_decoded(n: int) -> None:
        for _ in range(n):
            verify(cred)

    return Group(
        key="credential/verify",
        title="Credential verification, 3 attributes, one authority",
        unit="credentials/s",
        variants=[
            Variant("verify(bytes)", run_bytes),
            Variant("verify(Credential)", run_decoded),
            Variant(f"raw Ed25519 x{len(signed)}", _raw_runner(signed)),
        ],
    )


def all_groups() -> list[tuple[str, Callable[[], Group]]]:
    """(key, builder) of every group, in run order; a group's setup runs only when it is built."""
    return [
        ("handshake", handshake_group),
        ("x25519", x25519_group),
        *((f"transport/{s}", partial(transport_group, s)) for s in TRANSPORT_SIZES),
        *((f"frame/{s}", partial(frame_group, s)) for s in FRAME_SIZES),
        *((f"seal/{s}", partial(seal_group, s)) for s in SEAL_SIZES),
        *((f"identity/verify/{c}", partial(identity_verify_group, c)) for c in HISTORY_CHANGES),
        ("credential/verify", credential_verify_group),
    ]
