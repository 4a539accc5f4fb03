"""Pipelines benchmark: records sealed end to end vs the same records in plaintext, through the
same broker.

Run from the repository root, in the project's virtualenv (the extension built in release mode)::

    python benches/pipelines.py                      # 20 000 x 1 KiB, 2 000 x 64 KiB, 5 rounds
    python benches/pipelines.py --quick              # 4 000 x 1 KiB, 400 x 64 KiB, 3 rounds
    python benches/pipelines.py --brokers redis,nats --rounds 3
    python benches/pipelines.py --profile --brokers redis   # cProfile of one run of each kind

For each broker (Redis Streams, NATS JetStream, MQTT 5: real servers started on 127.0.0.1 by
``tests/brokers.py``, in a temporary directory, stopped at the end) and record size, two ways
of moving the same records from a producer to a consumer, through the same adapter
(:mod:`tether.pipelines.brokers`) and the same two connections:

* ``plaintext``: ``Broker.publish`` of the raw bodies; ``Subscription.fetch``, and ``ack`` of a
  batch when the next one is fetched (as a :class:`~tether.pipelines.stream.Consumer` does);
* ``encrypted``: ``Producer.publish`` (one ``RecordSealer.seal_many`` per batch, then the same
  ``Broker.publish``) and ``Consumer.fetch`` (``RecordOpener.open_many``; the stream's key is
  fetched from the producer's node over a secure channel on first use, inside the timed run).

Producer and consumer run concurrently in one trio event loop (one process, so one clock); the
producer keeps at most :data:`WINDOW_BATCHES` batches ahead of the consumer. Each body starts
with ``time.perf_counter_ns()`` taken just before its batch is published and its index; the
consumer computes each record's latency when its batch is fetched, and checks the order. Each
round runs both ways for every broker and size, plaintext first in even rounds and encrypted
first in odd ones; rows are medians over the rounds. See ``benches/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import os
import platform
import pstats
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import anyio
import anyio.to_thread

from harness import fmt_ratio, markdown_table, signals_exit

BENCHES = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHES.parent / "tests"))  # tests/brokers.py starts the real brokers

import brokers as broker_servers  # noqa: E402
from tether.api import Node  # noqa: E402
from tether.identity.trust import ephemeral_identity, trust_identifiers  # noqa: E402
from tether.pipelines.brokers import Broker, Delivery, connect  # noqa: E402
from tether.pipelines.stream import Consumer, Producer  # noqa: E402

HOST = "127.0.0.1"
OUT_DIR = BENCHES / "out"
KINDS = ("redis", "nats", "mqtt")
MB = 1e6
STAMP = struct.Struct(">QQ")
"""The first 16 bytes of every body: perf_counter_ns() at publish, and the record's index."""
WINDOW_BATCHES = 4
"""The producer waits while this many of its batches are not yet with the consumer: the
latency then measures the pipeline at full speed, not a backlog that grows with the run."""
FETCH_TIMEOUT = 1.0
RUN_TIMEOUT = 300.0
GOALS = {1024: 0.8, 65536: 0.9}
"""Encrypted / plaintext records per second, by record size."""


@dataclass(frozen=True)
class Size:
    size: int
    records: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.size // 1024} KiB" if self.size % 1024 == 0 else f"{self.size} B"


FULL = (Size(1024, 20_000, 256), Size(65536, 2_000, 32))
QUICK = (Size(1024, 4_000, 256), Size(65536, 400, 32))
MODES = ("plaintext", "encrypted")


class BenchError(Exception):
    """A run went wrong (a record missing, out of order, or altered): the run fails."""


@dataclass(frozen=True)
class Run:
    seconds: float
    records: int
    size: int
    latencies_ns: list[int] = field(repr=False)
    main_cpu: float = 0.0
    """CPU seconds of this process's main thread (the event loop) during the run."""
    process_cpu: float = 0.0
    """CPU seconds of the whole process (worker threads included) during the run."""

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    def percentile(self, q: float) -> float:
        """The q-th percentile latency in milliseconds (nearest rank)."""
        ordered = sorted(self.latencies_ns)
        rank = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[rank] / 1e6


@dataclass
class Flow:
    """How far the producer is ahead of the consumer (records), and a way to wait for it."""

    window: int
    received: int = 0
    _moved: anyio.Event = field(default_factory=anyio.Event)

    async def wait_room(self, sent: int) -> None:
        while sent - self.received > self.window:
            self._moved = anyio.Event()
            await self._moved.wait()

    def arrived(self, n: int) -> None:
        self.received += n
        self._moved.set()


# --- one run ------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every run shares: the two nodes and, per broker, its URL and two connections."""

    producer_node: Node
    consumer_node: Node
    urls: dict[str, str]
    port: int
    """The producer node's TCP listener (consumers fetch keys through it)."""
    pub: dict[str, Broker] = field(default_factory=dict)
    sub: dict[str, Broker] = field(default_factory=dict)
    runs: int = 0

    @property
    def keys_from(self) -> str:
        return f"/ip4/{HOST}/tcp/{self.port}/secure/api"


async def produce(
    publish: Callable[[list[bytes]], Awaitable[None]],
    spec: Size,
    filler: bytes,
    flow: Flow,
    published: list[bytes] | None,
) -> None:
    sent = 0
    while sent < spec.records:
        k = min(spec.batch, spec.records - sent)
        await flow.wait_room(sent + k)
        t = time.perf_counter_ns()
        bodies = [STAMP.pack(t, sent + i) + filler for i in range(k)]
        if published is not None:
            published.extend(bodies)
        await publish(bodies)
        sent += k


def take(bodies: Sequence[bytes], now: int, first: int, latencies: list[int]) -> None:
    """Note the batch's latencies; check that it continues the stream in order."""
    for i, body in enumerate(bodies):
        stamp, index = STAMP.unpack_from(body)
        if index != first + i:
            raise BenchError(f"record {index} arrived where record {first + i} was due")
        latencies.append(now - stamp)


async def run_once(
    setup: Setup, kind: str, spec: Size, mode: str, filler: bytes, *, check: bool = False
) -> Run:
    """Move ``spec.records`` records of ``spec.size`` bytes through ``kind`` one ``mode`` way,
    on a new stream (deleted afterwards); with ``check``, also compare every body."""
    setup.runs += 1
    stream = f"bench-{kind}-{spec.size}-{mode}-{setup.runs}-{os.getpid()}"
    consumer_name = f"reader-{setup.runs}"
    pub, sub = setup.pub[kind], setup.sub[kind]
    flow = Flow(WINDOW_BATCHES * spec.batch)
    latencies: list[int] = []
    published: list[bytes] | None = [] if check else None
    received: list[bytes] | None = [] if check else None
    end = 0.0
    cpu = (0.0, 0.0)  # main thread, process: CPU seconds at the start and at the end
    cpu_end = [0.0, 0.0]

    async def consume(fetch: Callable[[], Awaitable[list[bytes]]]) -> None:
        nonlocal end
        got = 0
        while got < spec.records:
            bodies = await fetch()
            now = time.perf_counter_ns()
            take(bodies, now, got, latencies)
            if received is not None:
                received.extend(bodies)
            got += len(bodies)
            flow.arrived(len(bodies))
        end = time.perf_counter()
        cpu_end[:] = [time.thread_time(), time.process_time()]

    gc.collect()
    gc.disable()
    try:
        with anyio.fail_after(RUN_TIMEOUT):
            if mode == "plaintext":
                subscription = await sub.subscribe(stream, consumer_name)
                unacked: list[Delivery] = []

                async def fetch_plain() -> list[bytes]:
                    nonlocal unacked
                    if unacked:
                        await subscription.ack(unacked)
                        unacked = []
                    unacked = await subscription.fetch(spec.batch, FETCH_TIMEOUT)
                    return [d.payload for d in unacked]

                async def publish_plain(bodies: list[bytes]) -> None:
                    await pub.publish(stream, bodies)

                try:
                    start = time.perf_counter()
                    cpu = time.thread_time(), time.process_time()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(consume, fetch_plain)
                        tg.start_soon(produce, publish_plain, spec, filler, flow, published)
                    if unacked:
                        await subscription.ack(unacked)
                finally:
                    await subscription.aclose()
            else:
                consumer = Consumer(
                    setup.consumer_node,
                    sub,
                    stream,
                    setup.keys_from,
                    consumer_name,
                    trust=trust_identifiers(identifier(setup.producer_node)),
                    batch=spec.batch,
                    timeout=FETCH_TIMEOUT,
                )
                async with (
                    consumer,
                    Producer(
                        setup.producer_node,
                        pub,
                        stream,
                        allow=f'subject.identifier = "{identifier(setup.consumer_node)}"',
                    ) as producer,
                ):

                    async def fetch_sealed() -> list[bytes]:
                        return [r.body for r in await consumer.fetch(spec.batch, FETCH_TIMEOUT)]

                    start = time.perf_counter()
                    cpu = time.thread_time(), time.process_time()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(consume, fetch_sealed)
                        tg.start_soon(produce, producer.publish, spec, filler, flow, published)
                if consumer.refused or consumer.gaps:
                    raise BenchError(
                        f"{kind}: the consumer refused {dict(consumer.refused)} "
                        f"({consumer.last_refusal}), gaps {consumer.gaps}"
                    )
    finally:
        gc.enable()
    await anyio.to_thread.run_sync(delete_stream, kind, setup.urls[kind], stream)
    if published is not None and received is not None and published != received:
        bad = next(i for i, (a, b) in enumerate(zip(published, received, strict=True)) if a != b)
        raise BenchError(f"{kind} {mode}: record {bad} arrived altered")
    return Run(
        end - start,
        spec.records,
        spec.size,
        latencies,
        cpu_end[0] - cpu[0],
        cpu_end[1] - cpu[1],
    )


def identifier(node: Node) -> str:
    assert node.identity is not None
    return node.identity.identity.identifier


def delete_stream(kind: str, url: str, stream: str) -> None:
    """Drop what the broker keeps of ``stream`` (Redis and JetStream keep acknowledged records;
    MQTT keeps nothing acknowledged), with the broker's own client."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    if kind == "redis":
        import redis

        r = redis.Redis(host=host, port=int(port))
        r.delete(stream)
        r.close()
    elif kind == "nats":
        import nats

        async def drop() -> None:
            nc = await nats.connect(url)
            js = nc.jetstream()
            await js.delete_stream(await js.find_stream_name_by_subject(stream))
            await nc.close()

        asyncio.run(drop())


# --- rounds -------------------------------------------------------------------------------------


Results = dict[tuple[str, int, str], list[Run]]


@contextlib.contextmanager
def started_brokers(kinds: Sequence[str], directory: Path) -> Iterator[dict[str, str]]:
    with contextlib.ExitStack() as stack:
        urls = {}
        for kind in kinds:
            print(f"starting {kind} ...", file=sys.stderr)
            try:
                server = stack.enter_context(broker_servers.running(kind, directory / kind))
            except AssertionError as e:
                raise BenchError(str(e)) from None
            urls[kind] = server.url
        yield urls


async def bench(urls: dict[str, str], sizes: Sequence[Size], rounds: int, profile: bool) -> Results:
    results: Results = {}
    fillers = {s.size: os.urandom(s.size - STAMP.size) for s in sizes}
    async with (
        Node("producer", identity=ephemeral_identity()) as producer_node,
        Node("consumer", identity=ephemeral_identity()) as consumer_node,
    ):
        listener = await producer_node.listen_tcp(HOST, 0)
        setup = Setup(producer_node, consumer_node, urls, listener.port)
        try:
            for kind, url in urls.items():
                setup.pub[kind] = await connect(url)
                setup.sub[kind] = await connect(url)
            # Correctness first, once per broker, size and way (and a warm-up).
            for kind in urls:
                for spec in sizes:
                    small = Size(spec.size, 3 * spec.batch + 5, spec.batch)
                    for mode in MODES:
                        await run_once(setup, kind, small, mode, fillers[spec.size], check=True)
                    print(f"checked {kind} {spec.label}: in order, unaltered", file=sys.stderr)
            if profile:
                for kind in urls:
                    for spec in sizes:
                        for mode in MODES:
                            await profiled(setup, kind, spec, mode, fillers[spec.size])
                return results
            for r in range(rounds):
                for kind in urls:
                    for spec in sizes:
                        for mode in MODES if r % 2 == 0 else MODES[::-1]:
                            run = await run_once(setup, kind, spec, mode, fillers[spec.size])
                            results.setdefault((kind, spec.size, mode), []).append(run)
                            progress(f"round {r + 1}/{rounds} {kind:5} {spec.label:6}", mode, run)
        finally:
            for b in [*setup.pub.values(), *setup.sub.values()]:
                with contextlib.suppress(Exception):
                    await b.aclose()
    return results


def progress(what: str, mode: str, run: Run) -> None:
    print(
        f"{what} {mode:9} {run.rate:9.0f} rec/s {run.rate * run.size / MB:7.1f} MB/s "
        f"p50 {run.percentile(50):7.2f} ms p99 {run.percentile(99):7.2f} ms "
        f"cpu/rec: main {run.main_cpu / run.records * 1e6:6.1f} us, "
        f"process {run.process_cpu / run.records * 1e6:6.1f} us",
        file=sys.stderr,
    )


async def profiled(setup: Setup, kind: str, spec: Size, mode: str, filler: bytes) -> None:
    """One run under cProfile (the event loop's thread only: the broker clients' threads are
    not profiled), the top functions by own time to stderr."""
    profiler = cProfile.Profile()
    profiler.enable()
    run = await run_once(setup, kind, spec, mode, filler)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    print(
        f"\n=== profile: {kind} {spec.label} {mode}: {run.rate:.0f} rec/s under the profiler, "
        f"{run.seconds:.2f} s ===\n{out.getvalue()}",
        file=sys.stderr,
    )


# --- report -------------------------------------------------------------------------------------


def environment(kinds: Sequence[str]) -> dict[str, str]:
    import tether

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    env = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu": f"{cpu} ({os.cpu_count()} logical CPUs)",
        "tether": tether.__version__,
        "clients": ", ".join(
            f"{p} {version(p)}" for p in ("redis", "nats-py", "paho-mqtt") if _has(p)
        ),
    }
    commands = {
        "redis": ["redis-server", "--version"],
        "nats": ["nats-server", "--version"],
        "mqtt": ["mosquitto", "-h"],
    }
    for kind in kinds:
        program = shutil.which(commands[kind][0], path=broker_servers.SEARCH_PATH)
        if program is None:
            continue
        out = subprocess.run(
            [program, *commands[kind][1:]], capture_output=True, text=True, check=False
        )
        env[f"{kind} server"] = (out.stdout or out.stderr).strip().splitlines()[0]
    return env


def _has(package: str) -> bool:
    try:
        version(package)
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class Row:
    kind: str
    spec: Size
    plain: list[Run]
    sealed: list[Run]

    def rate(self, runs: list[Run]) -> float:
        return statistics.median(r.rate for r in runs)

    def latency(self, runs: list[Run], q: float) -> float:
        return statistics.median(r.percentile(q) for r in runs)

    @property
    def ratio(self) -> float:
        return self.rate(self.sealed) / self.rate(self.plain)

    @property
    def round_ratios(self) -> list[float]:
        return [s.rate / p.rate for p, s in zip(self.plain, self.sealed, strict=True)]

    @property
    def goal(self) -> float | None:
        return GOALS.get(self.spec.size)


def rows_of(results: Results, kinds: Sequence[str], sizes: Sequence[Size]) -> list[Row]:
    return [
        Row(k, s, results[(k, s.size, "plaintext")], results[(k, s.size, "encrypted")])
        for k in kinds
        for s in sizes
        if (k, s.size, "plaintext") in results
    ]


def markdown(
    rows: list[Row], env: dict[str, str], command: str, rounds: int, wall: float, quick: bool
) -> str:
    headers = [
        "broker",
        "size",
        "plain rec/s",
        "plain MB/s",
        "plain p50 ms",
        "plain p99 ms",
        "enc rec/s",
        "enc MB/s",
        "enc p50 ms",
        "enc p99 ms",
        "ratio",
        "goal",
    ]
    table = []
    for row in rows:
        cells = [row.kind, row.spec.label]
        for runs in (row.plain, row.sealed):
            rate = row.rate(runs)
            cells += [
                f"{rate:,.0f}",
                f"{rate * row.spec.size / MB:,.1f}",
                f"{row.latency(runs, 50):.2f}",
                f"{row.latency(runs, 99):.2f}",
            ]
        goal = row.goal
        verdict = "-" if goal is None else ("met" if row.ratio >= goal else "NO")
        cells += [fmt_ratio(row.ratio), f">= {goal:.1f}x {verdict}" if goal else verdict]
        table.append(cells)
    sizes = ", ".join(f"{r.spec.records:,} x {r.spec.label}" for r in rows[:2])
    lines = [
        "# tether pipelines: encrypted vs plaintext records through the same broker",
        "",
        f"`{command}` ({'quick' if quick else 'full'}: {sizes} per run, "
        f"median of {rounds} rounds; {wall:.0f} s wall)",
        "",
        markdown_table(headers, table, "llrrrrrrrrrl"),
        "",
        "Ratio = encrypted / plaintext records per second (medians); goal >= 0.8x at 1 KiB, "
        ">= 0.9x at 64 KiB. MB/s counts payload bytes (10^6 per MB). Latency: publish to "
        f"fetch, with at most {WINDOW_BATCHES} batches in flight (1 KiB: batches of "
        f"{FULL[0].batch}; 64 KiB: {FULL[1].batch}).",
        "",
        "Per-round ratios: "
        + "; ".join(
            f"{r.kind} {r.spec.label} " + " ".join(f"{x:.2f}" for x in r.round_ratios) for r in rows
        ),
        "",
        *(f"- {k}: {v}" for k, v in env.items()),
        "",
    ]
    return "\n".join(lines)


def chart(rows: list[Row], path: Path, rounds: int) -> None:
    """Per record size: throughput (MB/s) and p50 latency, plaintext and encrypted bars per
    broker, the ratio under each broker's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r.spec.size for r in rows})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 3.6 * len(sizes)), squeeze=False)
    colors = {"plaintext": "#999999", "encrypted": "#1f77b4"}
    for line, size in zip(axes, sizes, strict=True):
        these = [r for r in rows if r.spec.size == size]
        label = these[0].spec.label
        xs = range(len(these))
        for ax, metric in zip(line, ("throughput", "latency"), strict=True):
            for j, mode in enumerate(MODES):
                values = [
                    (r.rate(r.plain if mode == "plaintext" else r.sealed) * size / MB)
                    if metric == "throughput"
                    else r.latency(r.plain if mode == "plaintext" else r.sealed, 50)
                    for r in these
                ]
                bars = ax.bar(
                    [x + (j - 0.5) * 0.38 for x in xs],
                    values,
                    0.38,
                    label=mode,
                    color=colors[mode],
                )
                ax.bar_label(
                    bars, fmt="%.1f" if metric == "throughput" else "%.2f", fontsize=8, padding=2
                )
            ax.set_xticks(
                list(xs),
                [
                    f"{r.kind}\n{fmt_ratio(r.ratio)}" if metric == "throughput" else r.kind
                    for r in these
                ],
            )
            ax.margins(y=0.2)
            if metric == "throughput":
                goal = these[0].goal
                ax.set_title(
                    f"{label}: throughput, MB/s (higher is better)"
                    + (f"; goal >= {goal:.1f}x" if goal else ""),
                    fontsize=10,
                )
                ax.legend(fontsize=8)
            else:
                ax.set_title(f"{label}: p50 latency, ms (lower is better)", fontsize=10)
    fig.suptitle(
        f"tether pipelines on 127.0.0.1: encrypted vs plaintext, median of {rounds} rounds",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="4 000 x 1 KiB, 400 x 64 KiB, 3 rounds (CI smoke)"
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 5; 3 with --quick)")
    parser.add_argument(
        "--brokers",
        default=",".join(KINDS),
        help=f"comma-separated subset of {','.join(KINDS)} (default: all)",
    )
    parser.add_argument(
        "--sizes",
        default="1024,65536",
        help="comma-separated subset of the record sizes 1024,65536 (default: both)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the results")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing: one run of each way per broker and size under cProfile",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be positive")
    kinds = [k.strip() for k in args.brokers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        parser.error(f"unknown brokers {unknown}: choose from {','.join(KINDS)}")
    wanted = {s.strip() for s in args.sizes.split(",") if s.strip()}
    sizes = tuple(s for s in (QUICK if args.quick else FULL) if str(s.size) in wanted)
    if not sizes or wanted - {str(s.size) for s in FULL}:
        parser.error(f"--sizes: choose from {','.join(str(s.size) for s in FULL)}")
    command = "python benches/pipelines.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()

    start = time.perf_counter()
    try:
        with (
            signals_exit(),
            tempfile.TemporaryDirectory(prefix="tether-pipelines-") as tmp,
            started_brokers(kinds, Path(tmp)) as urls,
        ):
            results = anyio.run(bench, urls, sizes, rounds, args.profile, backend="trio")
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the brokers were stopped", file=sys.stderr)
        return 130
    if args.profile:
        return 0
    wall = time.perf_counter() - start
    rows = rows_of(results, kinds, sizes)
    text = markdown(rows, environment(kinds), command, rounds, wall, args.quick)
    print()
    print(text, end="")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipelines.md").write_text(text, encoding="utf-8")
    chart(rows, args.out / "pipelines.png", rounds)
    print(f"\nwritten: {args.out / 'pipelines.md'}, {args.out / 'pipelines.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
