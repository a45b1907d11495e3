"""The whole comparison in one command: the gateway against the bare forwarder and LiteLLM.

    .venv/bin/python -m benchmarks.compare [--quick] [--duration 10] [--rounds 1]
        [--connections 32,128] [--streams 1000] [--skip-litellm]

1. `benchmarks.forwarding` with nginx as the upstream: ``direct`` (nginx itself), the bare
   aiohttp forwarder (also with the collector tuned as the gateway's server tunes it, for
   reference), the gateway's full default stack, the same with Redis-backed limits and
   budgets, and LiteLLM's proxy (installed into benchmarks/.litellm-venv on first use), each
   alone on CPU 0 under wrk at every connection count, plus a sequential streaming probe;
2. `benchmarks.layers`: the CPU each layer adds in process, over the bare `ForwardingApp`;
3. `benchmarks.memory`: the gateway's RSS with 1,000 slow streams open.

It prints a markdown report with every ratio taken from the same run and a verdict for each
target, and writes the numbers as JSON to benchmarks/results/compare-<date>.json. Everything it
starts is stopped on exit, error or Ctrl-C. Set-up: ``apt-get install -y wrk nginx-light``
and a Redis on 127.0.0.1:6379 (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import sys
from pathlib import Path

from benchmarks import forwarding, layers, memory

RESULTS = Path(__file__).resolve().parent / "results"
FULL, REDIS, BARE, LITELLM = "gateway-full", "gateway-redis", "bare-aiohttp", "litellm"
#: The bare forwarder with the collector tuned as the gateway is: shown beside the target ratio.
BARE_TUNED = "bare-aiohttp-gc-tuned"


def _find(results: list[forwarding.Result], target: str, conns: int) -> forwarding.Result | None:
    return next((r for r in results if r.target == target and r.conns == conns), None)


def verdicts(
    results: list[forwarding.Result],
    stack_us: float | None,
    mem: dict[str, float] | None,
) -> list[tuple[str, str, str]]:
    """(target, measured, met?) for each of the performance targets."""
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    full, bare = _find(results, FULL, 32), _find(results, BARE, 32)
    lite, redis = _find(results, LITELLM, 32), _find(results, REDIS, 32)
    direct = _find(results, "direct", 32)
    if full and bare:
        ratio = full.rps / bare.rps
        out.append(
            (
                "full stack >= 0.70x bare forwarder (32 conns)",
                f"{ratio:.2f}x",
                verdict(ratio >= 0.70),
            )
        )
    tuned = _find(results, BARE_TUNED, 32)
    if full and tuned:
        out.append(
            (
                "(reference, no target) full stack vs the bare forwarder tuned alike",
                f"{full.rps / tuned.rps:.2f}x",
                "-",
            )
        )
    if full and lite:
        ratio = full.rps / lite.rps
        out.append(("full stack >= 40x LiteLLM (32 conns)", f"{ratio:.1f}x", verdict(ratio >= 40)))
        out.append(
            (
                "full stack p99 < LiteLLM p50 (32 conns)",
                f"{full.p99_ms:.1f} ms vs {lite.p50_ms:.1f} ms",
                verdict(full.p99_ms < lite.p50_ms),
            )
        )
    if redis and bare:
        ratio = redis.rps / bare.rps
        out.append(("Redis limits+budgets >= 0.50x bare", f"{ratio:.2f}x", verdict(ratio >= 0.50)))
    if (
        full
        and bare
        and direct
        and None not in (full.ttfb_p50_ms, bare.ttfb_p50_ms, direct.ttfb_p50_ms)
    ):
        assert full.ttfb_p50_ms is not None
        assert bare.ttfb_p50_ms is not None
        assert direct.ttfb_p50_ms is not None
        added_full = full.ttfb_p50_ms - direct.ttfb_p50_ms
        added_bare = bare.ttfb_p50_ms - direct.ttfb_p50_ms
        factor = added_full / added_bare if added_bare > 0 else float("inf")
        out.append(
            (
                "added TTFB <= 2x the bare forwarder's",
                f"{added_full:.3f} ms vs {added_bare:.3f} ms ({factor:.2f}x)",
                verdict(factor <= 2.0),
            )
        )
    if stack_us is not None:
        out.append(
            (
                "whole stack in process <= 50 µs over ForwardingApp",
                f"{stack_us:.1f} µs",
                verdict(stack_us <= 50),
            )
        )
    if mem is not None:
        rss = mem["rss_with_streams_mib"] * 1.048576  # MiB -> MB
        out.append(
            (
                f"{int(mem['streams'])} open streams <= 150 MB RSS",
                f"{rss:.0f} MB",
                verdict(rss <= 150),
            )
        )
    return out


def _command(args: argparse.Namespace) -> str:
    cmd = "python -m benchmarks.compare" + (" --quick" if args.quick else "")
    if args.duration:
        cmd += f" --duration {args.duration:g}"
    if args.rounds != 1:
        cmd += f" --rounds {args.rounds}"
    if args.connections != "32,128":
        cmd += f" --connections {args.connections}"
    if args.streams != 1000:
        cmd += f" --streams {args.streams}"
    return cmd + (" --skip-litellm" if args.skip_litellm else "")


def in_process(requests: int, rounds: int) -> tuple[list[tuple[str, float]], float | None]:
    results = asyncio.run(layers.run(requests, rounds, False, False))
    base = results[0][1]
    full = next((cost for name, cost in results if name.startswith("full stack")), None)
    return results, ((full - base) * 1e6 if full is not None else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s wrk runs, fewer samples")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--connections", default="32,128")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--skip-litellm", action="store_true")
    args = parser.parse_args(argv)

    targets = ["direct", BARE, BARE_TUNED, FULL, REDIS, *([] if args.skip_litellm else [LITELLM])]
    fwd_argv = ["--targets", ",".join(targets), "--connections", args.connections]
    fwd_argv += ["--rounds", str(args.rounds)]
    if args.quick:
        fwd_argv.append("--quick")
    if args.duration:
        fwd_argv += ["--duration", str(args.duration)]
    fwd_args = forwarding.parse_args(fwd_argv)
    try:
        forwarding.check_tools(fwd_args.targets)
        info = forwarding.machine_info()
        with forwarding._sigterm_as_interrupt():
            results = forwarding.run(fwd_args)
            print("in-process layers...", flush=True)
            requests = 3000 if args.quick else 10000
            layer_rows, stack_us = in_process(requests, 3 if args.quick else 5)
            print(f"memory with {args.streams} streams...", flush=True)
            mem = memory.run(args.streams)
    except forwarding.BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130

    checks = verdicts(results, stack_us, mem)
    lines = [
        forwarding.report(results, info, fwd_args)
        .replace("## Forwarding benchmark", "## Comparison", 1)
        .replace(forwarding.command(fwd_args), _command(args), 1),
        "### In process (CPU µs per request, JSON, over the bare ForwardingApp)",
        "",
        "| configuration | µs | over bare |",
        "| --- | ---: | ---: |",
        *(
            f"| {name} | {cost * 1e6:.1f} | {(cost - layer_rows[0][1]) * 1e6:+.1f} |"
            for name, cost in layer_rows
        ),
        "",
        "### Memory",
        "",
        f"RSS {mem['rss_before_mib']:.1f} MiB idle, {mem['rss_with_streams_mib']:.1f} MiB with "
        f"{int(mem['streams'])} streams open ({mem['per_stream_kib']:.1f} KiB per stream).",
        "",
        "### Targets",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
        *(f"| {name} | {value} | {ok} |" for name, value, ok in checks),
        "",
    ]
    text = "\n".join(lines)
    print()
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M")
    out = RESULTS / f"compare-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "command": _command(args),
                "machine": info,
                "results": [dataclasses.asdict(r) for r in results],
                "in_process_us": {name: cost * 1e6 for name, cost in layer_rows},
                "memory": mem,
                "targets": [{"target": n, "measured": v, "verdict": ok} for n, v, ok in checks],
            },
            indent=2,
        )
    )
    (RESULTS / f"compare-{stamp}.md").write_text(text)
    print(f"written to {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
