#!/usr/bin/env python
"""Default flags on one host: is pipelining at least as fast as sequential, at every split?

Stages that share a host divide its cores by default (paretopipe/runtime/cores.py) and their
idle OpenMP threads sleep. This benchmark runs exactly what a newcomer runs: a `paretopipe stage
serve` on loopback started without --threads, and the source without --threads, for every split
of ResNet18 at 64 px (batch 4), sequential (window 1) and pipelined (window 4), alternating the
two, several rounds. For each split it prints the median throughputs, pipelined / sequential
(goal: >= 1 at every split) and pipelined throughput over its bound batch / max(stage compute,
hop transfer) measured in the same run.

Usage: python benchmarks/bench_default_threads.py [--model resnet18] [--input-size 64]
       [--batch-size 4] [--batches 40] [--warmup 4] [--window 4] [--rounds 3] [--splits all|K,...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _runtime_common import local_worker, machine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--splits", default="all")
    args = ap.parse_args()

    from paretopipe.runtime.cores import quiet_waiting

    quiet_waiting()  # as the `paretopipe` command does, before torch is imported

    from paretopipe.runtime.source import RunConfig, run
    from paretopipe.splitting import num_blocks

    n = num_blocks(args.model)
    splits = list(range(n + 1)) if args.splits == "all" else [int(k) for k in args.splits.split(",")]
    print(f"machine: {machine()}")
    print(f"{args.model} {args.input_size}px batch {args.batch_size}, {args.batches} counted batches after "
          f"{args.warmup} warm-up, window 1 vs {args.window}, {args.rounds} alternating rounds, default threads")
    print(f"{'k':>3} {'thr':>4} {'seq img/s':>10} {'pipe img/s':>10} {'pipe/seq':>9} {'pipe/bound':>10}")
    worst = float("inf")
    with local_worker(threads=None) as address, tempfile.TemporaryDirectory() as tmp:
        for k in splits:
            thr: dict[int, list[float]] = {1: [], args.window: []}
            bound_ratio: list[float] = []
            threads = None
            for r in range(args.rounds):
                for window in (1, args.window):
                    doc = run(RunConfig(
                        model=args.model, splits=(k,), stages=(address,), out=Path(tmp) / f"k{k}-w{window}-r{r}.json",
                        batch_size=args.batch_size, window=window, batches=args.batches, warmup=args.warmup,
                        input_size=args.input_size, min_batches=1,
                        fidelity_batches=0))  # throughput only: no reference model
                    s = doc["summary"]
                    thr[window].append(s["throughput_img_s"])
                    threads = [st["threads"] for st in doc["config"]["stages"]]
                    if window != 1:
                        slowest = max(s["compute_s"] + [h["transfer_s"] for h in s["hops"]])
                        bound_ratio.append(s["throughput_img_s"] / (args.batch_size / slowest))
            seq, pipe = statistics.median(thr[1]), statistics.median(thr[args.window])
            worst = min(worst, pipe / seq)
            print(f"{k:3d} {'/'.join(map(str, threads or [])):>4} {seq:10.1f} {pipe:10.1f} {pipe / seq:9.3f} "
                  f"{statistics.median(bound_ratio):10.3f}", flush=True)
    met = worst >= 1.0
    print(f"worst pipelined / sequential over the splits: {worst:.3f} (goal >= 1: {'met' if met else 'NOT met'})")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
