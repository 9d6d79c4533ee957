#!/usr/bin/env python
"""Our TCP backend against PyTorch RPC (TensorPipe): runtime overhead per batch and throughput.

Same model, same split, same inputs, same machine, in the same run: a TCP worker and an RPC
worker (`paretopipe stage serve --backend tcp|rpc`, --threads 1 each) on loopback, and the
source in this process. Each round runs every backend once sequentially (window 1) and once
pipelined (--window), alternating the backends so that load on the machine hits both alike.

Figures per backend (window 1: per-batch values pooled over the rounds):

- overhead per batch: latency - sum(stage computes), median and minimum over the counted
  batches: everything a batch costs on top of the model, i.e. moving the activation and the
  logits (the path itself, plus framing or pickling, copies, wake-ups) and the hand-offs and
  bookkeeping of the runtime. Shown with its parts: hop 0 (activation to the worker) and hop 1
  (logits back) as the receivers measured them, and the queue waits of all stages (thread
  hand-offs; on a busy machine, mostly waiting to be scheduled).
- the transfer floor (measured each round, between the backends' runs): the same bytes moved
  the same way, by two processes that do nothing but plain blocking sockets, the sender
  busy-waiting for the head's and the tail's measured compute times in between (_wire_floor.py).
  No transport can go under it; on loopback it is the kernel's copies and the wake-up.
- runtime overhead per batch = overhead - floor (medians): what the runtime itself adds on top
  of the model and the path. Goal: TCP's is at most 1/3 of RPC's, judged on this. The ratio
  of the whole overheads is printed beside it: with a large activation the floor dominates
  both, and on a real or shaped link (100 Mbit: 257 ms for 3.2 MB) that ratio tends to 1 for
  any transport, so it cannot measure what a runtime adds.
- runtime CPU per batch (median of the runs): process CPU time of all stages minus the CPU time
  of their compute calls, per batch (as benchmarks/bench_runtime_overhead.py measures it).
- throughput (window W, median of the runs): images per second.

Usage: python benchmarks/bench_rpc_vs_tcp.py [--model resnet18] [--input-size 224] [--batch-size 8]
       [--splits 7 13] [--batches 20] [--warmup 3] [--window 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _runtime_common import local_worker, machine
from _wire_floor import measure as measure_floor

BACKENDS = ("tcp", "rpc")
GOAL = 1 / 3


def overheads(doc: dict[str, Any]) -> list[float]:
    """Per counted batch: latency - sum(stage computes)."""
    return [b["latency_s"] - sum(b["compute_s"]) for b in doc["batches"]]


def runtime_cpu_per_batch(doc: dict[str, Any]) -> float | None:
    """(process CPU - compute CPU) summed over the stages, per counted batch; None if not reported."""
    total = 0.0
    for stage in doc["summary"]["stages"]:
        if stage.get("compute_cpu_s") is None or stage.get("cpu_percent") is None or stage.get("wall_s") is None:
            return None
        total += stage["cpu_percent"] / 100 * stage["wall_s"] - stage["compute_cpu_s"]
    batches = doc["validity"]["counted_batches"] + doc["validity"]["warmup_batches"]
    return total / batches


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--splits", type=int, nargs="+", default=[7, 13])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the result files in DIR (default: a temporary folder)")
    args = ap.parse_args()

    from paretopipe.runtime.source import RunConfig, run

    print(f"machine: {machine()}")
    print(f"{args.model} {args.input_size}px batch {args.batch_size}, {args.batches} counted batches after "
          f"{args.warmup} warm-up, {args.rounds} round(s), --threads 1 per stage, loopback")
    met = True
    with contextlib.ExitStack() as stack:
        workers = {"tcp": stack.enter_context(local_worker()),
                   "rpc": stack.enter_context(local_worker("--backend", "rpc"))}
        tmp = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        tmp.mkdir(parents=True, exist_ok=True)
        for split in args.splits:
            figures: dict[str, dict[str, list[float]]] = {
                b: {"over": [], "cpu": [], "tput": [], "hop0": [], "hop1": [], "queue": []} for b in BACKENDS}
            floor: dict[str, list[float]] = {"hop0": [], "hop1": [], "total": []}
            # per-batch values pooled over the rounds; the minimum is the batch least disturbed by
            # other work on the machine, the median the typical one
            hop_bytes = out_bytes = 0
            head_s = tail_s = 0.0
            for rnd in range(args.rounds):
                order = BACKENDS if rnd % 2 == 0 else BACKENDS[::-1]
                for backend in order:
                    for window in (1, args.window):
                        doc = run(RunConfig(
                            model=args.model, splits=(split,), stages=(workers[backend],),
                            out=tmp / f"s{split}-{backend}-w{window}-r{rnd}.json", backend=backend,
                            batch_size=args.batch_size, window=window, batches=args.batches, warmup=args.warmup,
                            input_size=args.input_size, threads=1, min_batches=1))
                        if window == 1:
                            figures[backend]["over"].extend(overheads(doc))
                            cpu = runtime_cpu_per_batch(doc)
                            if cpu is not None:
                                figures[backend]["cpu"].append(cpu)
                            hop_bytes = doc["summary"]["hops"][0]["bytes"]
                            for b in doc["batches"]:
                                figures[backend]["hop0"].append(b["hops"][0]["transfer_s"])
                                figures[backend]["hop1"].append(b["hops"][-1]["transfer_s"])
                                figures[backend]["queue"].append(b["queue_wait_s"])
                            if backend == "tcp":
                                head_s = statistics.median(b["compute_s"][0] for b in doc["batches"])
                                tail_s = statistics.median(b["compute_s"][-1] for b in doc["batches"])
                                out_bytes = doc["summary"]["hops"][-1]["bytes"]
                        else:
                            figures[backend]["tput"].append(doc["summary"]["throughput_img_s"])
                # the floor after both backends, with this round's compute times
                f = measure_floor(hop_bytes, out_bytes, head_s=head_s, tail_s=tail_s,
                                  batches=args.batches, warmup=args.warmup)
                floor["hop0"] += f.hop0_s
                floor["hop1"] += f.hop1_s
                floor["total"] += f.total_s
            med = {b: {k: (statistics.median(v) if v else None) for k, v in f.items()} for b, f in figures.items()}
            low = {b: min(f["over"]) for b, f in figures.items()}
            print(f"\nsplit {split} ({hop_bytes / 1e6:.3f} MB activation per batch):")
            print("  window 1, per batch, median over all counted batches (ms; the parts' medians need not add up):")
            print(f"  {'backend':8} {'overhead':>9} {'min':>7} {'hop 0':>8} {'hop 1':>8} {'queues':>9} "
                  f"{'runtime CPU':>12} {f'throughput W={args.window}':>18}")
            for b in BACKENDS:
                m = med[b]
                cpu = f"{m['cpu'] * 1e3:.2f}" if m["cpu"] is not None else "n/a"
                print(f"  {b:8} {m['over'] * 1e3:9.2f} {low[b] * 1e3:7.2f} {m['hop0'] * 1e3:8.2f} {m['hop1'] * 1e3:8.2f} "
                      f"{m['queue'] * 1e3:9.2f} {cpu:>12} {m['tput']:12.2f} img/s")
            fl = {k: statistics.median(v) for k, v in floor.items()}
            print(f"  {'floor':8} {fl['total'] * 1e3:9.2f} {min(floor['total']) * 1e3:7.2f} {fl['hop0'] * 1e3:8.2f} "
                  f"{fl['hop1'] * 1e3:8.2f}   (plain sockets, the same bytes and compute gaps)")
            own = {b: med[b]["over"] - fl["total"] for b in BACKENDS}
            print(f"  runtime overhead per batch (overhead - floor): tcp {own['tcp'] * 1e3:.2f} ms, "
                  f"rpc {own['rpc'] * 1e3:.2f} ms")
            ratio = max(own["tcp"], 0.0) / own["rpc"]
            ok = ratio <= GOAL
            met &= ok
            print(f"  runtime overhead TCP / RPC = {ratio:.3f} (goal <= {GOAL:.3f}: {'met' if ok else 'NOT met'})")
            print(f"  whole overhead TCP / RPC = {med['tcp']['over'] / med['rpc']['over']:.3f} median, "
                  f"{low['tcp'] / low['rpc']:.3f} minimum (floor included: "
                  f"{fl['total'] / med['rpc']['over']:.0%} of RPC's, {fl['total'] / med['tcp']['over']:.0%} of TCP's)")
            print(f"  hop transfer TCP / RPC = {med['tcp']['hop0'] / med['rpc']['hop0']:.3f} (activation), "
                  f"{med['tcp']['hop1'] / med['rpc']['hop1']:.3f} (logits)")
            if med["tcp"]["cpu"] is not None and med["rpc"]["cpu"] is not None:
                print(f"  runtime CPU per batch TCP / RPC = {med['tcp']['cpu'] / med['rpc']['cpu']:.3f}")
            print(f"  throughput TCP / RPC = {med['tcp']['tput'] / med['rpc']['tput']:.3f}")
    print(f"\ngoal (TCP's runtime overhead per batch <= 1/3 of RPC's) {'met' if met else 'NOT met'} for every split")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
