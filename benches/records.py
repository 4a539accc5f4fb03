"""The record core alone: ``RecordSealer.seal_many`` and ``RecordOpener.open_many`` per record,
against OpenSSL's AES-256-GCM (pyca/cryptography) over the same bodies in the same run.

    python benches/records.py            # 1 KiB (batches of 256) and 64 KiB (batches of 32)

The baseline encrypts and decrypts each body with ``AESGCM`` (one call per record, no envelope,
no header): a floor for any sealed-record format in Python. Every batch has distinct bodies, as
a pipeline's do (one body repeated would stay in the CPU's cache).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tether._core import RecordOpener, RecordSealer

STREAM = "bench"
PRODUCER = "Ibench"
KEY_ID = bytes(16)


def per_record(fn: Callable[[int], object], records: int, repeat: int) -> float:
    """Median microseconds per record of ``fn(i)`` (batch ``i``, of ``records`` records). The
    previous batch's results stay alive while the next is made, as in a pipeline with a batch in
    flight: freeing them first lets the C allocator hand the memory back to the kernel and take
    fresh pages for the next batch (on this project's VMs a page fault costs about 5 us, 16 per
    64 KiB record, for tether and the baseline alike)."""
    previous = fn(0)
    times = []
    for i in range(1, repeat + 1):
        start = time.perf_counter()
        result = fn(i)
        times.append(time.perf_counter() - start)
        previous = result
    del previous
    return statistics.median(times) / records * 1e6


def measure(size: int, batch: int, repeat: int) -> dict[str, float]:
    key = os.urandom(32)
    bodies = [os.urandom(size) for _ in range(batch)]
    sealer = RecordSealer(STREAM, PRODUCER, KEY_ID, key, "AES-256-GCM", 0)
    seal = per_record(lambda _: sealer.seal_many(bodies), batch, repeat)
    # A consumer's opener lives on: it opens new positions batch after batch (records opened
    # twice would be refused as replays), so every batch is sealed beforehand.
    sealed = [sealer.seal_many(bodies) for _ in range(repeat + 1)]
    opener = RecordOpener(STREAM)
    opener.add_key(KEY_ID, key, PRODUCER, "AES-256-GCM")
    open_ = per_record(lambda i: opener.open_many(sealed[i]), batch, repeat)
    assert opener.last_position(PRODUCER) == sealer.next_position - 1, "a record did not open"
    aead = AESGCM(key)
    nonce = bytes(12)
    ciphertexts = [aead.encrypt(nonce, b, None) for b in bodies]
    return {
        "seal_many": seal,
        "open_many": open_,
        "AESGCM.encrypt": per_record(
            lambda _: [aead.encrypt(nonce, b, None) for b in bodies], batch, repeat
        ),
        "AESGCM.decrypt": per_record(
            lambda _: [aead.decrypt(nonce, c, None) for c in ciphertexts], batch, repeat
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--repeat", type=int, default=50, help="batches timed per case (default 50)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be positive")
    print(
        "| size | batch | seal_many us/rec | AESGCM.encrypt us/rec | ratio | "
        "open_many us/rec | AESGCM.decrypt us/rec | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, batch in ((1024, 256), (65536, 32)):
        m = measure(size, batch, args.repeat)
        print(
            f"| {size // 1024} KiB | {batch} | {m['seal_many']:.2f} | {m['AESGCM.encrypt']:.2f} | "
            f"{m['AESGCM.encrypt'] / m['seal_many']:.2f}x | {m['open_many']:.2f} | "
            f"{m['AESGCM.decrypt']:.2f} | {m['AESGCM.decrypt'] / m['open_many']:.2f}x |"
        )
    print("\nratio = baseline time / tether time (above 1: tether is faster)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
