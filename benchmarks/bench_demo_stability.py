#!/usr/bin/env python3
"""Does the demo's frontier hold still? (issue 24; goal: Jaccard agreement >= 0.8.)

Runs the demo's sweep (scripts/demo.sh's defaults: MobileNetV2 at 96 px, splits 0,8,16,23,
windows 1,4, batch sizes 1,8, conditions lan and wifi, chain pi1 -> gpu, 20 batches after 3
warm-up, repeats 2) twice back to back, with the same sweep id into two fresh results folders,
through `playbooks/sweep.yml` on a private emulated testbed (its own topology, state and
inventory under a temporary folder; needs root). As the demo does, pi1 (and the idle pi2) are
pinned to core 0 and gpu to the other cores, and the controller polls the source every
--poll-s seconds; --no-pin gives the packaged allocation (gpu on every core) to compare.

Prints, per sweep, its wall time and runs; the Jaccard index of the two sweeps' frontier
memberships (the (group, configuration) pairs on a frontier), with its ratio to the 0.8 goal;
how many memberships each report calls uncertain or unknown; and the median and worst
run-to-run coefficient of variation of mean latency and of throughput per configuration, over
the runs of both sweeps. Exit status 0 when the goal is met.

    sudo .venv/bin/python benchmarks/bench_demo_stability.py [--no-pin] [--repeats 2] [--keep DIR]
    # a quick probe of one noise source: 2 configurations x 4 repeats, pinned and not
    sudo .venv/bin/python benchmarks/bench_demo_stability.py --splits 8,16 --windows 1 --batch-sizes 8 \
        --conditions lan --repeats 4 [--no-pin]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from _testbed_common import GPU_SERVER, private_sweep_folder, topology_text, two_pis

from paretopipe.orchestrate import sweep

REPO = Path(__file__).resolve().parent.parent
GOAL = 0.8
CONFIG = ["network", "backend", "splits", "window", "batch_size", "codec"]


def topology(pin: bool) -> str:
    text = topology_text("p24s", "10.124.0", [*two_pis("rpi4"), GPU_SERVER])
    if not pin:
        return text
    cores = os.cpu_count() or 1
    if cores < 2:
        raise SystemExit("bench_demo_stability: pinning needs at least 2 cores; use --no-pin")
    gpu = f"1-{cores - 1}"
    return (text.replace("profile: rpi4,", 'cpuset: "0", profile: rpi4,')
                .replace("profile: gpu-server,", f'cpuset: "{gpu}", profile: gpu-server,'))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", default="0,8,16,23", help="the demo's; fewer make a quick probe")
    parser.add_argument("--windows", default="1,4")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--conditions", default="lan,wifi")
    parser.add_argument("--repeats", default="2", help="repeats per configuration in each sweep (default 2)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--poll-s", type=int, default=120, help="controller's progress polls of the source (s)")
    parser.add_argument("--no-pin", action="store_true", help="the packaged core allocation (gpu on every core)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (results, logs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_demo_stability: needs root (the emulated testbed); run it with sudo", file=sys.stderr)
        return 2
    from analysis import load_runs

    root, topo, state, inventory = private_sweep_folder(args.keep, "pp-bench-stability-", topology(not args.no_pin))
    sweep_id = "demo-stability"
    base = {"model": "mobilenet_v2", "input_size": 96, "splits": args.splits, "windows": args.windows,
            "batch_sizes": args.batch_sizes, "conditions": args.conditions, "backends": "tcp", "chain": "pi1,gpu",
            "batches": args.batches, "warmup": 3, "min_batches": 10, "repeats": args.repeats,
            "source_runner_poll_s": args.poll_s, "sweep_id": sweep_id,
            "testbed_topology": str(topo), "testbed_state_dir": str(state)}
    print(f"demo sweep x2, repeats {args.repeats}, {'packaged cores' if args.no_pin else 'pinned cores'}; "
          f"work folder {root}", flush=True)
    folders = []
    try:
        for n in (1, 2):
            results = root / f"results-{n}"
            t0 = time.monotonic()
            run = sweep(inventory=inventory, artifacts_dir=root / f"runner-{n}", results_dir=str(results), **base)
            wall = time.monotonic() - t0
            if not run.ok:
                print(f"sweep {n} failed ({run.status}, exit {run.rc}; failed tasks: {run.failed_tasks()}); "
                      f"see {run.artifacts / 'stdout'}", file=sys.stderr)
                return 1
            folders.append(results / sweep_id)
            print(f"sweep {n}: {wall:.0f} s ({wall / 60:.1f} min)", flush=True)
    finally:
        subprocess.run([sys.executable, "-m", "paretopipe", "testbed", "down", "--topology", str(topo),
                        "--state-dir", str(state)], cwd=REPO, capture_output=True, check=False)

    fronts = []
    for n, folder in enumerate(folders, start=1):
        f = pd.read_csv(folder / "analysis" / "frontier.csv")
        on = set(zip(f.loc[f["on_frontier"], "group"], f.loc[f["on_frontier"], "label"]))
        fronts.append(on)
        print(f"sweep {n}: {len(f)} configurations, {len(on)} on a frontier, "
              f"{int(f['membership_uncertain'].sum())} uncertain, {int(f['membership_unknown'].sum())} unknown")
    j = jaccard(*fronts)
    print(f"Jaccard agreement of frontier memberships: {j:.2f} (goal >= {GOAL}; ratio {j / GOAL:.2f}; "
          f"issue 24's baseline: 0.18-0.36)")
    frames = [load_runs(folder) for folder in folders]
    for frame in frames:
        frame.attrs = {}  # skipped-file tables: pandas cannot compare them when concatenating
    runs = pd.concat(frames, ignore_index=True)
    runs["splits"] = runs["splits"].astype(str)
    grouped = runs.groupby(CONFIG, dropna=False)
    for metric in ("latency", "throughput"):
        cv = (grouped[metric].std(ddof=1) / grouped[metric].mean()).dropna()
        print(f"run-to-run CV of {metric} over {len(cv)} configurations ({len(runs)} runs, both sweeps): "
              f"median {cv.median():.1%}, worst {cv.max():.1%}")
    contended = int((runs["contention"].fillna("") != "").sum())
    print(f"runs measured under contention: {contended} of {len(runs)}")
    return 0 if j >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
