#!/usr/bin/env python
"""The runtime's own CPU cost per batch (not the model's).

Runs two-stage sessions on loopback with --threads 1 per stage and reports, per stage,
(process CPU time during the session - CPU time of the compute calls) / batches: the CPU the
runtime spends receiving, sending, queueing, sampling and bookkeeping. With one intra-op thread
torch computes on the calling thread, whose CPU time (time.thread_time) each stage reports as
`compute_cpu_s`; CPU time, unlike wall time, is not inflated when other processes compete for
the cores. Synthetic inputs are made before the session, so they are not in the figures.

Cases: a small activation (ResNet18 split 13: 16 KB at batch 8) and a large one (split 7:
3.2 MB at batch 8), both at 224 px.

Usage: python benchmarks/bench_runtime_overhead.py [--batches 30]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _runtime_common import local_worker, machine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--splits", type=int, nargs="+", default=[13, 7])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--input-size", type=int, default=224)
    args = ap.parse_args()

    from paretopipe.runtime.source import RunConfig, run

    print(f"machine: {machine()}")
    with local_worker() as address, tempfile.TemporaryDirectory() as tmp:
        for split in args.splits:
            doc = run(RunConfig(
                model=args.model, splits=(split,), stages=(address,), out=Path(tmp) / f"s{split}.json",
                batch_size=args.batch_size, window=1, batches=args.batches, warmup=0,
                input_size=args.input_size, threads=1, min_batches=1))
            n = len(doc["batches"])
            hop_bytes = doc["summary"]["hops"][0]["bytes"]
            print(f"\n{args.model} split {split} ({hop_bytes / 1e6:.3f} MB per batch to the worker), {n} batches:")
            for stage in doc["summary"]["stages"]:
                i = stage["index"]
                cpu = stage["cpu_percent"] / 100 * stage["wall_s"]
                compute = stage["compute_cpu_s"]
                overhead = (cpu - compute) / n
                print(f"  stage {i}: process CPU {cpu:.3f} s, compute CPU {compute:.3f} s -> runtime CPU per batch "
                      f"{overhead * 1e3:.2f} ms ({overhead / (compute / n) * 100:.1f}% of the stage's compute)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
