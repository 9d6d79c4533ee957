#!/usr/bin/env python
"""Pipelined throughput vs its bound, and sequential latency vs the sum of its parts.

Runs a two-stage session of ResNet18 (224 px, batch 8, a balanced split) on loopback: the source
(head) in this process and one worker process, each with --threads 1 so the two stages get one
core each on a 2-core machine. Then:

- pipelined (window W): throughput vs the bound 1 / max(stage compute, hop transfer), both
  measured in the same run; target ratio >= 0.95;
- sequential (window 1): mean latency vs the mean of sum(compute) + sum(transfer); target within 5%.

Usage: python benchmarks/bench_pipeline.py [--model resnet18] [--input-size 224] [--batch-size 8]
       [--batches 30] [--warmup 5] [--window 4] [--split K]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _runtime_common import local_worker, machine


def balanced_split(model: str, input_size: int, batch_size: int) -> int:
    from paretopipe.splitting import split_points

    points = split_points(model, input_size=input_size, batch_size=batch_size)
    return min(points, key=lambda p: abs(p.flops_head - p.flops_tail)).index


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--split", type=int)
    args = ap.parse_args()

    from paretopipe.runtime.source import RunConfig, run

    split = args.split if args.split is not None else balanced_split(args.model, args.input_size, args.batch_size)
    print(f"machine: {machine()}")
    print(f"{args.model} {args.input_size}px batch {args.batch_size}, split {split}, {args.batches} counted "
          f"batches after {args.warmup} warm-up, --threads 1 per stage, loopback")
    ok = True
    with local_worker() as address, tempfile.TemporaryDirectory() as tmp:
        docs = {}
        for window in (args.window, 1):
            docs[window] = run(RunConfig(
                model=args.model, splits=(split,), stages=(address,), out=Path(tmp) / f"w{window}.json",
                batch_size=args.batch_size, window=window, batches=args.batches, warmup=args.warmup,
                input_size=args.input_size, threads=1, min_batches=1))

        s = docs[args.window]["summary"]
        compute, hops = s["compute_s"], [h["transfer_s"] for h in s["hops"]]
        slowest = max(compute + hops)
        bound = args.batch_size / slowest
        ratio = s["throughput_img_s"] / bound
        ok &= ratio >= 0.95
        print(f"\npipelined (window {args.window}):")
        print(f"  stage compute means (ms): {', '.join(f'{c * 1e3:.1f}' for c in compute)}; "
              f"hop transfer means (ms): {', '.join(f'{t * 1e3:.2f}' for t in hops)}")
        print(f"  throughput {s['throughput_img_s']:.2f} img/s; bound 1/max(...) = {bound:.2f} img/s; "
              f"ratio {ratio:.3f} (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")

        seq = docs[1]
        lat = [b["latency_s"] for b in seq["batches"]]
        parts = [sum(b["compute_s"]) + sum(h["transfer_s"] for h in b["hops"]) for b in seq["batches"]]
        queue = [b["queue_wait_s"] for b in seq["batches"]]
        mean_lat, mean_parts = statistics.fmean(lat), statistics.fmean(parts)
        excess = mean_lat / mean_parts - 1
        ok &= abs(excess) <= 0.05
        print("\nsequential (window 1):")
        print(f"  latency mean {mean_lat * 1e3:.2f} ms; sum of parts (compute + transfer) {mean_parts * 1e3:.2f} ms; "
              f"in-chain queueing (not a part) {statistics.fmean(queue) * 1e3:.3f} ms")
        print(f"  latency / parts = {mean_lat / mean_parts:.4f} ({excess * 100:+.2f}%; target within 5%: "
              f"{'met' if abs(excess) <= 0.05 else 'NOT met'})")
        print(f"  throughput {seq['summary']['throughput_img_s']:.2f} img/s (pipelining gains "
              f"x{s['throughput_img_s'] / seq['summary']['throughput_img_s']:.2f})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
