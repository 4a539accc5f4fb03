"""Stream keys (``docs/pipelines.md``): the data keys of the streams a node produces, rotated by
count and by time, and the ``stream_keys`` service that hands them to the consumers a policy on
the stream allows, over a secure channel.

A producer's records are sealed with the stream's current data key (:class:`StreamKeyRing`);
each key has a key id, which every sealed record names, and a range of positions it may seal
(``first_position`` and ``rotate_after_records`` on from it), so positions never repeat under a
key and go on rising across keys. A consumer that meets a key id it does not have asks the
producer's node for the stream's keys (:func:`fetch_keys`); the service answers only through a
secure channel and only if the policies on the stream allow the peer (resource type
``stream``, the stream's name; a stream with no policy serves nobody): an unauthorized consumer
gets nothing it can open, and a consumer whose credential was revoked or has expired gets no key
made after that, so it cannot open what is produced after the next rotation.

The protocol (the payload of a request and its answer, inside the secure channel)::

    request  GET(1) | stream (u16 length, UTF-8)
    answer   KEYS(2) | producer (u16 length) | count (u16) | that many keys
             key = key id (16) | algorithm (u8: 1 AES-256-GCM, 2 ChaCha20-Poly1305)
                   | first position (u64) | created (u64, Unix seconds) | key (32)
    answer   DENIED(3) | why (UTF-8)
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

from tether._core import RecordSealer
from tether.channel.channel import origin_channel
from tether.core.encoding import Reader, Writer
from tether.core.errors import TetherError
from tether.core.message import KIND_DATA, Message, WorkerContext
from tether.identity.policy import Policy
from tether.node import policies
from tether.node.node import BaseNode

log = logging.getLogger("tether.streams")

SERVICE = "stream_keys"
"""The address of the service on a producer's node."""
RESOURCE_TYPE = "stream"
GET, KEYS, DENIED = 1, 2, 3
ALGORITHMS = {"AES-256-GCM": 1, "ChaCha20-Poly1305": 2}
_ALGORITHM_NAMES = {v: k for k, v in ALGORITHMS.items()}
KEY_ID_LEN = 16
KEY_LEN = 32
MAX_STREAM = 255
MAX_KEYS = 1024
"""The most keys a stream keeps (and an answer carries): older ones are forgotten."""


class StreamKeyError(TetherError):
    """A stream key could not be had: refused by the producer's policies, or a bad answer."""


@dataclass(frozen=True)
class DataKey:
    """One data key of a stream. The key never appears in a repr."""

    key_id: bytes
    algorithm: str
    first_position: int
    created_at: int
    key: bytes = field(repr=False)


def first_position_now() -> int:
    """Where a new key ring starts by default: the time, in microseconds since the Unix epoch.
    A producer restarted (its ring not kept) so continues above every position it used before,
    and its consumers see a gap, not replays, as long as it handed out fewer positions than
    microseconds went by (a key's whole range counts: ``rotate_after_records`` per rotation)."""
    return time.time_ns() // 1000


class StreamKeyRing:
    """A producer's keys for one stream: the current one seals; a new one is made after
    ``rotate_after_records`` positions or ``rotate_after_seconds`` seconds, whichever comes first.
    The last :data:`MAX_KEYS` are kept for consumers still reading older records."""

    def __init__(
        self,
        stream: str,
        producer: str,
        *,
        rotate_after_records: int = 1_000_000,
        rotate_after_seconds: float = 3600.0,
        algorithm: str = "AES-256-GCM",
        first_position: int | None = None,
    ) -> None:
        check_stream(stream)
        if algorithm not in ALGORITHMS:
            raise StreamKeyError(
                f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}"
            )
        if rotate_after_records < 1 or rotate_after_seconds <= 0:
            raise StreamKeyError("a key must seal at least one record for a positive time")
        self.stream = stream
        self.producer = producer
        self.rotate_after_records = rotate_after_records
        self.rotate_after_seconds = rotate_after_seconds
        self.algorithm = algorithm
        self.keys: list[DataKey] = []
        self.rotations = 0
        self.leased = 0
        """Positions handed out in all (records sealed, or reserved by a lease)."""
        self._made_at = 0.0
        self._next = first_position if first_position is not None else first_position_now()
        """The next position to hand out."""
        self.rotate(first=True)

    @property
    def current(self) -> DataKey:
        return self.keys[-1]

    def rotate(self, *, first: bool = False) -> DataKey:
        """A new current key, its positions after every earlier key's (the rest of the current
        key's range is never used)."""
        if not first:
            self._next = self.current.first_position + self.rotate_after_records
            self.rotations += 1
        key = DataKey(
            secrets.token_bytes(KEY_ID_LEN),
            self.algorithm,
            self._next,
            int(time.time()),
            secrets.token_bytes(KEY_LEN),
        )
        self.keys.append(key)
        del self.keys[:-MAX_KEYS]
        self._made_at = time.monotonic()
        return key

    def lease(self, records: int) -> Lease:
        """Positions for up to ``records`` records under the current key (rotated first when
        its time is up or it has no position left): never handed out again, so whoever seals
        with them (this process, or a ``tether stream publish`` the node leased them to) never
        repeats a nonce."""
        if records < 1:
            raise StreamKeyError("a lease is for at least one record")
        end = self.current.first_position + self.rotate_after_records
        if self._next >= end or time.monotonic() - self._made_at >= self.rotate_after_seconds:
            self.rotate()
            end = self.current.first_position + self.rotate_after_records
        count = min(records, end - self._next)
        lease = Lease(self.stream, self.producer, self.current, self._next, count)
        self._next += count
        self.leased += count
        return lease

    def info(self) -> dict[str, object]:
        """What ``tether stream show`` reports: no key material."""
        return {
            "stream": self.stream,
            "producer": self.producer,
            "algorithm": self.algorithm,
            "rotate_after_records": self.rotate_after_records,
            "rotate_after_seconds": self.rotate_after_seconds,
            "rotations": self.rotations,
            "records": self.leased,
            "next_position": self._next,
            "keys": [
                {
                    "key_id": k.key_id.hex(),
                    "first_position": k.first_position,
                    "created_at": k.created_at,
                }
                for k in self.keys
            ],
        }


@dataclass(frozen=True)
class Lease:
    """Positions ``first`` … ``first + count - 1`` of a stream under one key, to seal with."""

    stream: str
    producer: str
    key: DataKey
    first: int
    count: int

    def sealer(self) -> RecordSealer:
        """A sealer for the lease's positions (the Rust core's; it refuses to go back)."""
        k = self.key
        return RecordSealer(self.stream, self.producer, k.key_id, k.key, k.algorithm, self.first)


def check_stream(stream: str) -> str:
    if not 1 <= len(stream.encode()) <= MAX_STREAM or any(c.isspace() for c in stream):
        raise StreamKeyError(
            f"invalid stream name {stream!r}: 1 to {MAX_STREAM} bytes of UTF-8, no spaces"
        )
    return stream


class StreamKeyService:
    """The ``stream_keys`` worker of a producer's node: each stream's key ring and its policy."""

    def __init__(self, node: BaseNode) -> None:
        self.node = node
        self.rings: dict[str, StreamKeyRing] = {}
        self.allow: dict[str, Policy | None] = {}
        self.served: Counter[str] = Counter()
        """Key requests answered, by stream."""
        self.refused: Counter[str] = Counter()
        """Key requests refused, by stream (``*``: one this node does not produce, or one that
        could not be read)."""

    async def start(self) -> None:
        if not self.node.has_worker(SERVICE):
            await self.node.start_worker(SERVICE, self.handle, kind=RESOURCE_TYPE)

    def remove(self, stream: str) -> None:
        """Stop serving ``stream``'s keys."""
        self.rings.pop(stream, None)
        self.allow.pop(stream, None)

    def info(self, stream: str) -> dict[str, object]:
        """The stream's ring (:meth:`StreamKeyRing.info`), its policy, and its key requests."""
        allow = self.allow.get(stream)
        return {
            **self.rings[stream].info(),
            "allow": str(allow) if allow is not None else None,
            "served": self.served[stream],
            "refused": self.refused[stream],
        }

    def add(self, ring: StreamKeyRing, allow: str | Policy | None) -> None:
        """Serve ``ring``'s keys to the peers that ``allow`` and the node's policies for the
        stream admit (with neither, nobody)."""
        self.rings[ring.stream] = ring
        self.allow[ring.stream] = Policy.parse(allow) if isinstance(allow, str) else allow

    def _refusal(self, stream: str, msg: Message) -> str | None:
        channel = origin_channel(self.node, msg.origin)
        if channel is None:
            return (
                f"stream keys are given only through a secure channel (route …/secure/api/"
                f"service/{SERVICE})"
            )
        if stream not in self.rings:
            return f"node {self.node.name} produces no stream {stream!r}"
        own = self.allow.get(stream)
        if own is None and not policies.applicable(self.node, RESOURCE_TYPE, stream):
            return (
                f"no policy allows reading stream {stream!r} at {self.node.name}: its producer "
                f"gives one (allow=…, or `tether policy create --resource-type stream --resource "
                f"{stream} EXPR`)"
            )
        refusal = policies.check(self.node, RESOURCE_TYPE, stream, "read", channel.peer, own=own)
        return None if refusal is None else f"reading stream {stream!r}: {refusal}"

    async def handle(self, ctx: WorkerContext, msg: Message) -> None:
        if msg.kind != KIND_DATA or not msg.return_route:
            return  # (a report, or nowhere to answer)
        try:
            r = Reader(msg.payload, "stream key request", 1 + 2 + MAX_STREAM)
            r.expect(GET, "request")
            stream = r.text(MAX_STREAM, "stream", min_len=1)
            r.end()
        except TetherError as e:
            self.refused["*"] += 1
            await ctx.reply(msg, bytes([DENIED]) + f"malformed request: {e}".encode())
            return
        refusal = self._refusal(stream, msg)
        if refusal is not None:
            self.refused[stream if stream in self.rings else "*"] += 1
            log.info("%s: %s", self.node.name, refusal)
            await ctx.reply(msg, bytes([DENIED]) + refusal.encode())
            return
        ring = self.rings[stream]
        w = Writer().u8(KEYS).text(ring.producer, 255).u16(len(ring.keys))
        for k in ring.keys:
            w.fixed(k.key_id, KEY_ID_LEN).u8(ALGORITHMS[k.algorithm])
            w.u64(k.first_position).u64(k.created_at).fixed(k.key, KEY_LEN)
        self.served[stream] += 1
        await ctx.reply(msg, w.getvalue())


def key_request(stream: str) -> bytes:
    return Writer().u8(GET).text(check_stream(stream), MAX_STREAM, 1).getvalue()


def parse_keys(answer: bytes) -> tuple[str, list[DataKey]]:
    """The producer and keys of a ``stream_keys`` answer (StreamKeyError for a refusal)."""
    if answer[:1] == bytes([DENIED]):
        raise StreamKeyError(answer[1:].decode("utf-8", errors="replace"))
    per_key = KEY_ID_LEN + 1 + 8 + 8 + KEY_LEN
    r = Reader(answer, "stream keys", 1 + 2 + 255 + 2 + MAX_KEYS * per_key)
    r.expect(KEYS, "answer")
    producer = r.text(255, "producer", min_len=1)
    count = r.u16("count")
    if count > MAX_KEYS:
        raise StreamKeyError(f"an answer with {count} keys (at most {MAX_KEYS})")
    keys = []
    for _ in range(count):
        key_id = r.fixed(KEY_ID_LEN, "key id")
        alg = r.u8("algorithm")
        if alg not in _ALGORITHM_NAMES:
            raise StreamKeyError(f"unknown algorithm {alg} in a stream key answer")
        first, created = r.u64("first position"), r.u64("created")
        keys.append(DataKey(key_id, _ALGORITHM_NAMES[alg], first, created, r.fixed(KEY_LEN, "key")))
    r.end()
    return producer, keys
