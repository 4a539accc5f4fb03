"""``tether stream …``: end-to-end encrypted streams through a broker that reads nothing
(``docs/pipelines.md``): the streams a node produces (create, policy, show, key rotate, delete),
and shell pipelines that publish records from standard input and consume them to standard
output."""

from __future__ import annotations

import argparse
import json
import select
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import anyio

from tether.cli.common import (
    add_trust_arguments,
    check_route,
    deleter,
    lister,
    node_api,
    running_node,
    shower,
    trust_body,
    ttl,
)
from tether.cli.control_client import ApiCallError, call
from tether.cli.parser import Context, add_command, add_group
from tether.core.errors import InvalidArgumentError
from tether.pipelines.brokers import connect
from tether.pipelines.stream import Publisher, Subscriber
from tether.services.stream_keys import DataKey, Lease, StreamKeyError

MAX_BINARY_RECORD = 16 << 20
"""The largest record ``--binary`` reads (its 4-byte length is checked before reading it)."""


def _at(ctx: Context) -> str:
    return running_node(ctx, ctx.args.at, "--at", "produces or consumes the stream")


def _describe(s: dict[str, Any]) -> str:
    keys = s.get("keys") or []
    return (
        f"stream {s['stream']} (producer {s['producer']})\n"
        f"  policy: {s.get('allow') or 'the node policies for resource type stream'}\n"
        f"  {s['records']} records sealed, {len(keys)} key(s), {s['rotations']} rotation(s); "
        f"a new key after {s['rotate_after_records']} records or "
        f"{s['rotate_after_seconds']:g} s\n"
        f"  key requests: {s.get('served', 0)} answered, {s.get('refused', 0)} refused"
    )


def _create(ctx: Context) -> int:
    a = ctx.args
    body = {
        "stream": a.stream,
        "allow": a.allow,
        "rotate_after_records": a.rotate_after_records,
        "rotate_after_seconds": a.rotate_after,
        "algorithm": a.algorithm,
    }
    s = call(node_api(ctx, _at(ctx)), "POST", "/streams", body)
    ctx.emit(_describe(s), s)
    return 0


def _rotate(ctx: Context) -> int:
    s = call(node_api(ctx, _at(ctx)), "POST", f"/streams/{ctx.args.stream}/rotate")
    ctx.emit(f"stream {s['stream']}: a new key ({s['keys'][-1]['key_id']})", s)
    return 0


def _policy(ctx: Context) -> int:
    body = {"resource": ctx.args.stream, "resource_type": "stream", "expression": ctx.args.expr}
    r = call(node_api(ctx, _at(ctx)), "POST", "/policies", body)
    ctx.emit(f"created {r['id']}: stream {ctx.args.stream}: {r['expression']}", r)
    return 0


# --- records on standard input and output -------------------------------------------------------


def _read_batch(stream: BinaryIO, binary: bool, most: int) -> tuple[list[bytes], bool]:
    """Up to ``most`` records from ``stream``, without waiting for more once some are read and
    nothing more is ready (a slow producer's records are not held back); True at the end."""
    out: list[bytes] = []
    while len(out) < most:
        if out and not select.select([stream], [], [], 0)[0]:
            return out, False
        if binary:
            head = stream.read(4)
            if not head:
                return out, True
            if len(head) < 4:
                raise InvalidArgumentError("--binary: the input ends inside a record's length")
            (n,) = struct.unpack(">I", head)
            if n > MAX_BINARY_RECORD:
                raise InvalidArgumentError(
                    f"--binary: a record of {n} bytes (at most {MAX_BINARY_RECORD}); is the input "
                    "length-prefixed (4 bytes, big-endian)?"
                )
            body = stream.read(n)
            if len(body) < n:
                raise InvalidArgumentError("--binary: the input ends inside a record")
            out.append(body)
        else:
            line = stream.readline()
            if not line:
                return out, True
            out.append(line.rstrip(b"\n"))
    return out, False


def _publish(ctx: Context) -> int:
    a = ctx.args
    sock = node_api(ctx, _at(ctx))

    def lease_now(n: int) -> Lease:
        r = call(sock, "POST", f"/streams/{a.stream}/lease", {"records": n})
        return Lease(r["stream"], r["producer"], _data_key(r["key"]), r["first"], r["count"])

    async def lease(n: int) -> Lease:
        return await anyio.to_thread.run_sync(lease_now, n)

    stdin = sys.stdin.buffer
    started = time.monotonic()

    async def main() -> int:
        broker = await connect(a.broker)
        try:
            publisher = Publisher(broker, a.stream, lease)
            end = False
            while not end:
                bodies, end = await anyio.to_thread.run_sync(_read_batch, stdin, a.binary, a.batch)
                if bodies:
                    await publisher.publish(bodies)
            return publisher.published
        finally:
            await broker.aclose()

    n = anyio.run(main, backend="trio")
    took = time.monotonic() - started
    _summary(ctx, f"published {n} records to {a.stream} in {took:.2f} s", {"published": n})
    return 0


def _consume(ctx: Context) -> int:
    a = ctx.args
    check_route(a.keys_from)
    sock = node_api(ctx, _at(ctx))
    body = {"stream": a.stream, "keys_from": a.keys_from, **trust_body(a)}

    def keys_now() -> tuple[str, list[DataKey]]:
        try:
            r = call(sock, "POST", "/stream-keys", body, timeout=60)
        except ApiCallError as e:
            raise StreamKeyError(str(e)) from None
        return str(r["producer"]), [_data_key(k) for k in r["keys"]]

    async def keys() -> tuple[str, list[DataKey]]:
        return await anyio.to_thread.run_sync(keys_now)

    out = sys.stdout.buffer
    write: Callable[[bytes], None]
    if a.binary:

        def write(b: bytes) -> None:
            out.write(struct.pack(">I", len(b)) + b)
    else:

        def write(b: bytes) -> None:
            out.write(b + b"\n")

    async def main() -> Subscriber:
        broker = await connect(a.broker)
        try:
            async with Subscriber(broker, a.stream, a.name, keys, batch=a.batch) as sub:
                taken = 0
                idle_since = time.monotonic()
                while a.count is None or taken < a.count:
                    most = a.batch if a.count is None else min(a.batch, a.count - taken)
                    records = await sub.fetch(most, timeout=0.5)
                    if not records:
                        if a.idle is not None and time.monotonic() - idle_since >= a.idle:
                            break
                        continue
                    idle_since = time.monotonic()
                    for r in records:
                        write(r.body)
                    out.flush()  # handed over: the next fetch (or the close) acknowledges them
                    taken += len(records)
            return sub
        finally:
            await broker.aclose()

    sub = anyio.run(main, backend="trio")
    refused = dict(sub.refused)
    line = f"consumed {sub.opened} records from {a.stream}"
    if refused:
        line += f"; refused {sum(refused.values())} ({refused}): {sub.last_refusal}"
    if sub.gaps:
        line += f"; {sub.gaps} position(s) skipped (records the broker lost?)"
    _summary(ctx, line, {"consumed": sub.opened, "refused": refused, "gaps": sub.gaps})
    return 0


def _summary(ctx: Context, line: str, data: dict[str, Any]) -> None:
    """On standard error: standard output carries the records."""
    print(json.dumps(data, sort_keys=True) if ctx.json else line, file=sys.stderr)


def _data_key(k: dict[str, Any]) -> DataKey:
    return DataKey(
        bytes.fromhex(k["key_id"]),
        str(k["algorithm"]),
        int(k["first_position"]),
        int(k["created_at"]),
        bytes.fromhex(k["key"]),
    )


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = add_group(
        groups,
        "stream",
        "end-to-end encrypted streams through a broker that reads nothing",
        (
            "A stream's records are sealed by its producer's node's keys, published to a broker "
            "(nats://, redis://, mqtt://), and opened by consumers whose nodes the stream's "
            "policy allows. See docs/pipelines.md."
        ),
        "tether stream create orders --at shop --allow 'subject.role = \"orders-reader\"'",
    )
    p = add_command(
        sub,
        "create",
        "produce a stream at this node (its keys, rotated by count and time)",
        "tether stream create orders --at shop --allow 'subject.role = \"orders-reader\"'",
        _create,
    )
    p.add_argument("stream")
    p.add_argument("--at", metavar="NODE", help="the producer's node (default: the only running)")
    p.add_argument(
        "--allow",
        metavar="EXPR",
        help="who may read it, e.g. 'subject.role = \"orders-reader\"' (without it, only the "
        "node's policies for resource type stream; with neither, nobody)",
    )
    p.add_argument(
        "--rotate-after-records", type=int, metavar="N", help="a new key after N records (1000000)"
    )
    p.add_argument(
        "--rotate-after", type=ttl, metavar="DURATION", help="a new key after this long (1h)"
    )
    p.add_argument("--algorithm", choices=("AES-256-GCM", "ChaCha20-Poly1305"))
    p = add_command(
        sub,
        "policy",
        "add a policy on who may read a stream",
        "tether stream policy orders 'subject.role = \"auditor\"' --at shop",
        _policy,
    )
    p.add_argument("stream")
    p.add_argument("expr", metavar="EXPR")
    p.add_argument("--at", metavar="NODE", help="the producer's node")
    p = add_command(sub, "list", "list the streams a node produces", "tether stream list", _list)
    p.add_argument("--at", metavar="NODE", help="the producer's node")
    for name, help_text, handler in (
        ("show", "show a stream: its keys (ids only), records, key requests", _show),
        ("delete", "stop producing a stream (its keys are forgotten)", _delete),
    ):
        p = add_command(sub, name, help_text, f"tether stream {name} orders --at shop", handler)
        p.add_argument("stream")
        p.add_argument("--at", metavar="NODE", help="the producer's node")
    keys = add_group(
        sub,
        "key",
        "a stream's keys",
        "A stream's data keys: rotate makes a new one now (consumers no longer allowed get it "
        "not).",
        "tether stream key rotate orders --at shop",
    )
    p = add_command(
        keys, "rotate", "a new key now", "tether stream key rotate orders --at shop", _rotate
    )
    p.add_argument("stream")
    p.add_argument("--at", metavar="NODE", help="the producer's node")

    p = add_command(
        sub,
        "publish",
        "seal records from standard input and publish them to a broker",
        "seq 1000 | tether stream publish --at shop --broker redis://127.0.0.1:6379 "
        "--stream orders",
        _publish,
    )
    _records_arguments(p, "producer", "records are read as")
    p = add_command(
        sub,
        "consume",
        "fetch, open and write a stream's records to standard output",
        "tether stream consume --at bi --broker redis://127.0.0.1:6379 --stream orders "
        "--keys-from /node/shop/secure/api --name bi --count 1000",
        _consume,
    )
    _records_arguments(p, "consumer", "records are written as")
    p.add_argument(
        "--keys-from",
        required=True,
        metavar="ROUTE",
        help="the producer node's secure channel listener, e.g. /node/shop/secure/api",
    )
    p.add_argument(
        "--name", required=True, help="the durable consumer's name (it resumes where it left)"
    )
    p.add_argument("--count", type=int, metavar="N", help="stop after N records")
    p.add_argument(
        "--idle", type=float, metavar="SECONDS", help="stop when nothing came for this long"
    )
    add_trust_arguments(p)


def _records_arguments(p: argparse.ArgumentParser, role: str, framing: str) -> None:
    """What ``publish`` and ``consume`` share: the node, the broker, the stream, the framing of
    records on standard input or output, and the batch size."""
    p.add_argument("--at", metavar="NODE", help=f"the {role}'s node")
    p.add_argument("--broker", required=True, metavar="URL", help="nats://, redis:// or mqtt://")
    p.add_argument("--stream", required=True)
    p.add_argument(
        "--binary",
        action="store_true",
        help=f"{framing} a 4-byte big-endian length then the bytes (default: one per line)",
    )
    p.add_argument("--batch", type=_batch, default=256, help="records per batch (256)")


def _batch(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65536:
        raise argparse.ArgumentTypeError(f"invalid batch {text!r}: a whole number, 1 to 65536")
    return int(text)


_list = lister(_at, "/streams", _describe, "no streams produced here")
_show = shower(_at, "/streams", _describe, "stream")
_delete = deleter(_at, "/streams", "stream", "stopped producing stream {}")
