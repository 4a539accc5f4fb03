"""tether's benchmark harness: tether side by side with the baselines it must beat, in one run.

Run from the repository root, in the project's virtualenv (the extension built in release mode)::

    python benches/run.py                    # full run, about 100 s on 2 cores
    python benches/run.py --quick            # fewer, shorter rounds
    python benches/run.py --json out.json    # also write machine-readable results
    python benches/run.py --only transport   # only the groups whose key contains "transport"

What is compared (details in ``benches/README.md``):

* Noise XX handshakes per second, both sides in one process: tether vs ``noiseprotocol``, with
  the raw X25519 rate of ``cryptography`` as context (the bound it implies for a handshake pair);
* transport encrypt+decrypt at 1024, 16384 and 65519 bytes: tether ``Transport`` and
  ``ChannelCipher`` vs ``noiseprotocol``'s transport and vs ``cryptography``'s ``AESGCM`` alone;
* frame decoding (64 B and 64 KiB frames fed in 64 KiB reads): ``tether.core.frame.FrameDecoder``
  vs the usual pure-Python ``struct.unpack_from`` decoder;
* batch sealing: ``ChannelCipher.seal_many`` and ``seal_chunks`` vs a Python loop of ``seal()``;
* identity histories (1 and 5 changes): ``tether.identity.identity.verify_history`` uncached and
  cached vs the bare Ed25519 verifications (``cryptography``) the history needs;
* credentials (3 attributes, one authority): ``tether.identity.credential.verify`` vs the bare
  Ed25519 verifications it needs (the signing key's attestation and the credential);
* tether nodes over loopback TCP, the server side in other processes (``node_cases.py``): 64 B
  request/reply round trips with 32 in flight, round-trip latency per hop, one-way 64 KiB
  throughput, each vs the same operation with plain trio on length-prefixed frames;
* secure channels (``channel_cases.py``, the server side in another process): channels opened
  (and closed) per second over loopback TCP vs the bare Noise XX handshake pair; 64 B
  request/reply with 32 in flight and one-way 64 KiB throughput through a channel, each vs the
  same route without a channel and vs TLS 1.3 (Python's ``ssl`` under trio).

The variants of a group run in interleaved rounds (A, B, A, B, ...) after a warm-up; each row is
the median of the rounds, and ratios are tether / baseline of those medians. The table, with the
targets and whether each is met, is printed and written to ``benches/out/results.md``. Timing
never fails the run: a missed target is reported, not raised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import cases
import channel_cases
import node_cases
import tether
from harness import (
    Measurement,
    Settings,
    fmt_rate,
    fmt_ratio,
    markdown_table,
    measure_group,
)

FULL = Settings(rounds=5, round_time=0.25, warmup_time=0.15)
QUICK = Settings(rounds=3, round_time=0.1, warmup_time=0.05)
OUT_DIR = Path(__file__).resolve().parent / "out"
DH_PER_HANDSHAKE = 6
"""X25519 operations in an XX handshake pair: ee, es, se on each side."""
KEYGEN_PER_HANDSHAKE = 2
"""Ephemeral key pairs generated in an XX handshake pair, one per side."""


@dataclass(frozen=True)
class Comparison:
    """``subject`` / ``baseline`` within one group, with the target ratio if there is one."""

    group: str
    subject: str
    baseline: str
    target: float | None


def comparisons() -> list[Comparison]:
    out = [Comparison("handshake", "tether", "noiseprotocol", 2.0)]
    for size in cases.TRANSPORT_SIZES:
        target = 2.0 if size < 16384 else 1.0
        for subject in ("tether Transport", "tether ChannelCipher"):
            for baseline in ("noiseprotocol", "cryptography AESGCM"):
                out.append(Comparison(f"transport/{size}", subject, baseline, target))
    for size in cases.FRAME_SIZES:
        out.append(Comparison(f"frame/{size}", "tether FrameDecoder", "pure Python", None))
    for size in cases.SEAL_SIZES:
        for subject in ("seal_many(list)", "seal_chunks(buffer)"):
            out.append(Comparison(f"seal/{size}", subject, "seal() loop", None))
        for subject in ("seal_frames(list)", "seal_stream(buffer)"):
            out.append(Comparison(f"seal/{size}", subject, "seal() loop + encode_frames", None))
    for changes in cases.HISTORY_CHANGES:
        group = f"identity/verify/{changes}"
        raw = f"raw Ed25519 x{2 * changes - 1}"
        out.append(Comparison(group, "verify_history uncached", raw, None))
        out.append(Comparison(group, "verify_history cached", "verify_history uncached", None))
    for subject in ("verify(bytes)", "verify(Credential)"):
        out.append(Comparison("credential/verify", subject, "raw Ed25519 x2", None))
    out += [Comparison(*c) for c in node_cases.comparisons()]
    out += [Comparison(*c) for c in channel_cases.comparisons()]
    return out


@dataclass(frozen=True)
class Results:
    settings: Settings
    mode: str
    titles: dict[str, str]
    measurements: list[Measurement]
    wall_seconds: float
    load_before: str
    """1, 5 and 15 minute load averages when the run started (the run itself adds about 1)."""
    load_after: str

    def get(self, group: str, name: str) -> Measurement | None:
        for m in self.measurements:
            if m.group == group and m.name == name:
                return m
        return None

    def require(self, group: str, name: str) -> Measurement:
        m = self.get(group, name)
        if m is None:
            raise KeyError(f"no measurement {name!r} in group {group!r}")
        return m


# --- running ---------------------------------------------------------------------------------


def run(settings: Settings, mode: str, only: str | None) -> Results:
    start, load_before = time.perf_counter(), _load()
    all_groups = [*cases.all_groups(), *node_cases.all_groups(), *channel_cases.all_groups()]
    builders = [(k, b) for k, b in all_groups if only is None or only in k]
    if not builders:
        raise SystemExit(f"no benchmark group matches --only {only!r}")
    titles: dict[str, str] = {}
    measurements: list[Measurement] = []
    try:
        for index, (_, build) in enumerate(builders, 1):
            group = build()
            titles[group.key] = group.title
            print(f"[{index}/{len(builders)}] {group.title} ...", file=sys.stderr, flush=True)
            for m in measure_group(group, settings):
                measurements.append(m)
                mb = m.median_mb_s
                extra = f"  ({mb:,.1f} MB/s)" if mb is not None else ""
                print(
                    f"      {m.name:<24} {fmt_rate(m.median):>14} {m.unit}{extra}", file=sys.stderr
                )
    finally:
        try:
            node_cases.close()  # the node groups' server processes and client event loop
        finally:
            channel_cases.close()  # the channel groups' server process and client event loop
    wall = time.perf_counter() - start
    return Results(settings, mode, titles, measurements, wall, load_before, _load())


# --- reporting -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _openssl_version() -> str:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        return str(backend.openssl_version_text())
    except Exception:  # only informational
        return "unknown"


def environment() -> dict[str, str]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical CPUs)",
        "tether": tether.__version__,
        "cryptography": f"{version('cryptography')} ({_openssl_version()})",
        "noiseprotocol": version("noiseprotocol"),
        "trio": version("trio"),
        "anyio": version("anyio"),
    }


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _comparison_rows(results: Results) -> tuple[list[list[str]], list[dict[str, Any]]]:
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for c in comparisons():
        if c.group not in results.titles:
            continue  # not run (--only)
        subject, baseline = (
            results.require(c.group, c.subject),
            results.require(c.group, c.baseline),
        )
        ratio = subject.median / baseline.median
        met = None if c.target is None else ratio >= c.target
        rows.append(
            [
                results.titles[c.group],
                c.subject,
                c.baseline,
                fmt_ratio(ratio),
                "-" if c.target is None else f">= {c.target:g}x",
                "-" if met is None else ("yes" if met else "NO"),
            ]
        )
        records.append(
            {
                "group": c.group,
                "subject": c.subject,
                "baseline": c.baseline,
                "ratio": ratio,
                "target": c.target,
                "met": met,
            }
        )
    return rows, records


def _measurement_rows(results: Results) -> list[list[str]]:
    rows = []
    for m in results.measurements:
        mb = m.median_mb_s
        rows.append(
            [
                results.titles[m.group],
                m.name,
                fmt_rate(m.median),
                m.unit,
                "-" if mb is None else f"{mb:,.1f}",
                f"{100 * m.spread:.1f}%",
                f"{len(m.seconds)} x {m.iterations:,}",
            ]
        )
    return rows


def _context(results: Results) -> tuple[list[list[str]], dict[str, float]]:
    exchange = results.get("x25519", cases.X25519_EXCHANGE)
    keygen = results.get("x25519", cases.X25519_KEYGEN)
    if exchange is None or keygen is None:
        return [], {}
    bound = 1 / (DH_PER_HANDSHAKE / exchange.median + KEYGEN_PER_HANDSHAKE / keygen.median)
    rows = [
        ["cryptography X25519 exchange()", f"{fmt_rate(exchange.median)} ops/s"],
        ["cryptography X25519 generate() + public key", f"{fmt_rate(keygen.median)} ops/s"],
        [
            f"XX pair bound from these ({DH_PER_HANDSHAKE} DH + {KEYGEN_PER_HANDSHAKE} keygen)",
            f"{fmt_rate(bound)} handshakes/s",
        ],
    ]
    context = {
        "x25519_exchange_per_s": exchange.median,
        "x25519_keygen_per_s": keygen.median,
        "xx_bound_handshakes_per_s": bound,
    }
    tether_keygen = results.get("x25519", cases.TETHER_KEYGEN)
    if tether_keygen is not None:
        rows.append(["tether generate_keypair()", f"{fmt_rate(tether_keygen.median)} ops/s"])
        context["tether_keygen_per_s"] = tether_keygen.median
    for name in ("noiseprotocol", "tether"):
        hs = results.get("handshake", name)
        if hs is not None:
            rows.append([f"{name} handshakes / bound", f"{100 * hs.median / bound:.0f}%"])
            context[f"{name}_fraction_of_bound"] = hs.median / bound
    return rows, context


def report(results: Results, env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The Markdown report and the JSON document."""
    s = results.settings
    comparison_rows, comparison_records = _comparison_rows(results)
    context_rows, context = _context(results)
    latency_rows, latency_us = node_cases.latency(results.measurements)
    targets = [r for r in comparison_records if r["met"] is not None]
    met = sum(1 for r in targets if r["met"])

    parts = [
        "# tether benchmarks",
        "",
        *(f"- {k}: {v}" for k, v in env.items()),
        f"- run: {results.mode}, median of {s.rounds} interleaved rounds of ~{s.round_time:g} s "
        f"per implementation, {results.wall_seconds:.0f} s in all",
        f"- load average (1/5/15 min): {results.load_before} before, {results.load_after} after",
        "",
    ]
    if comparison_rows:
        heading = "## Ratios (tether / baseline)"
        if targets:
            heading += f" and targets: {met} of {len(targets)} met"
        parts += [
            heading,
            "",
            markdown_table(
                ["Benchmark", "tether", "Baseline", "Ratio", "Target", "Met"],
                comparison_rows,
                "lllrll",
            ),
            "",
        ]
    parts += [
        "## Measurements (medians)",
        "",
        markdown_table(
            ["Benchmark", "Implementation", "Median", "Unit", "MB/s", "Spread", "Rounds x iter"],
            _measurement_rows(results),
            "llrlrrr",
        ),
        "",
        "Spread: (max - min) / median of the rounds. MB/s: payload bytes, 10^6 bytes per MB.",
    ]
    if context_rows:
        parts += [
            "",
            "## X25519 context",
            "",
            markdown_table(["Quantity", "Value"], context_rows, "lr"),
            "",
            "The bound is what a handshake pair would reach if it did nothing but cryptography's "
            "X25519 work. noiseprotocol uses that X25519 and cannot exceed it; tether's Rust core "
            "has its own X25519, so its figure is only placed against the same yardstick.",
        ]
    if latency_rows:
        parts += [
            "",
            "## Node latency",
            "",
            markdown_table(
                ["Implementation", "Hops", "Round trip (us)", "Per hop (us)"],
                latency_rows,
                "lrrr",
            ),
            "",
            "One request at a time; per hop = median round trip / hops. A tether hop is a TCP "
            "connection between two node processes; the trio hop is one echo round trip.",
        ]
    markdown = "\n".join(parts) + "\n"

    document: dict[str, Any] = {
        "environment": env,
        "settings": {
            "mode": results.mode,
            "rounds": s.rounds,
            "round_time": s.round_time,
            "warmup_time": s.warmup_time,
        },
        "wall_seconds": results.wall_seconds,
        "load_average_before": results.load_before,
        "load_average_after": results.load_after,
        "measurements": [
            {
                "group": m.group,
                "title": results.titles[m.group],
                "name": m.name,
                "unit": m.unit,
                "median": m.median,
                "median_mb_s": m.median_mb_s,
                "spread": m.spread,
                "iterations": m.iterations,
                "items_per_iter": m.items_per_iter,
                "bytes_per_iter": m.bytes_per_iter,
                "round_seconds": list(m.seconds),
                "rates": m.rates,
            }
            for m in results.measurements
        ],
        "comparisons": comparison_records,
        "context": context,
        "node_latency_us_per_hop": latency_us,
    }
    return markdown, document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--only", metavar="TEXT", help="run only groups whose key contains TEXT")
    parser.add_argument("--rounds", type=int, help="rounds per implementation (default 5, 3)")
    parser.add_argument("--round-time", type=float, help="seconds per round (default 0.25, 0.1)")
    args = parser.parse_args(argv)

    base = QUICK if args.quick else FULL
    settings = Settings(
        rounds=args.rounds or base.rounds,
        round_time=args.round_time or base.round_time,
        warmup_time=base.warmup_time,
    )
    if settings.rounds < 1 or settings.round_time <= 0:
        parser.error("--rounds and --round-time must be positive")

    env = environment()
    results = run(settings, "quick" if args.quick else "full", args.only)
    markdown, document = report(results, env)

    print()
    print(markdown, end="")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "results.md").write_text(markdown, encoding="utf-8")
    print(f"\nwritten: {OUT_DIR / 'results.md'}", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"written: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
