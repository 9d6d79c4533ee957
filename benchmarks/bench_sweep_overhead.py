#!/usr/bin/env python3
"""How much of a sweep's wall time is spent outside measured runs (goal: at most 25%).

Runs `playbooks/sweep.yml` for real through ansible-runner (`paretopipe.orchestrate.sweep`) on
a private emulated testbed (its own topology, state folder and inventory under a temporary
folder; needs root) and reads the sweep's summary (results/<sweep-id>/sweep-summary.yml). Defaults: a full MobileNetV2 sweep,
every split point, source pi1 (an rpi4 slice) and worker gpu, condition lan, backend tcp,
batch 8, 50 counted batches after 5 warm-up batches, 224 px.

Prints the playbook's wall time (measured outside Ansible, from the ansible-runner call to its
return, and the summary's own, from the first task), the sum of measured (counted-batch) run durations,
the share outside measured runs and its ratio to the 25% bound, and how the outside time
splits: inside run sessions (set-up, warm-up) and between runs (testbed, provisioning, shaping
and its measurement, worker start, fetching, Ansible's own round trips), and the slowest tasks
from ansible-runner's task events. Exit status 0 when the bound is met.

    sudo .venv/bin/python benchmarks/bench_sweep_overhead.py [--splits 0,6,12,18,23] [--batches 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from _testbed_common import GPU_SERVER, private_sweep_folder, topology_text, two_pis

from paretopipe.orchestrate import sweep

REPO = Path(__file__).resolve().parent.parent
BOUND = 0.25

TOPOLOGY = topology_text("p7b", "10.187.0", [*two_pis("rpi4"), GPU_SERVER])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--splits", default="all")
    parser.add_argument("--conditions", default="lan")
    parser.add_argument("--backends", default="tcp")
    parser.add_argument("--chain", default="pi1,gpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=0, help="0 = the model's own (224)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (results, logs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_sweep_overhead: needs root (the emulated testbed); run it with sudo", file=sys.stderr)
        return 2

    root, topology, state, inventory = private_sweep_folder(args.keep, "pp-bench-sweep-", TOPOLOGY)
    sweep_id = f"bench-{int(time.time())}"
    extra = {"model": args.model, "splits": args.splits, "conditions": args.conditions,
             "backends": args.backends, "chain": args.chain, "batch_sizes": args.batch_size,
             "batches": args.batches, "warmup": args.warmup, "input_size": args.input_size,
             "sweep_id": sweep_id, "results_dir": str(root / "results"),
             "testbed_topology": str(topology), "testbed_state_dir": str(state)}
    print(f"sweep {sweep_id}: {args.model}, splits {args.splits}, {args.conditions}, {args.backends}, "
          f"chain {args.chain}; ansible-runner artifacts under {root / 'runner'}", flush=True)

    def progress(event: dict) -> None:  # one line per play, so a long sweep shows it is alive
        if event.get("event") == "playbook_on_play_start":
            print(f"  play: {event['event_data'].get('play', '')}", flush=True)

    t0 = time.monotonic()
    try:
        run = sweep(inventory=inventory, on_event=progress, artifacts_dir=root / "runner", **extra)
        wall = time.monotonic() - t0
    finally:
        subprocess.run([sys.executable, "-m", "paretopipe", "testbed", "down", "--topology", str(topology),
                        "--state-dir", str(state)], cwd=REPO, capture_output=True, check=False)
    summary_file = root / "results" / sweep_id / "sweep-summary.yml"
    if not run.ok or not summary_file.exists():
        print(f"the sweep failed ({run.status}, exit {run.rc}; failed tasks: {run.failed_tasks()}); "
              f"see {run.artifacts / 'stdout'}", file=sys.stderr)
        return 1
    s = yaml.safe_load(summary_file.read_text())
    t = s["time_s"]
    measured = t["measured_runs"]
    outside_total = wall - measured
    print(f"runs: {s['runs']['ok']} ok, {s['runs']['failed']} failed")
    print(f"wall (ansible-runner call): {wall:.1f} s; wall from the first task: {t['wall']:.1f} s "
          f"(the rest is the analysis after the summary and Ansible's start-up)")
    print(f"measured runs: {measured:.1f} s")
    print(f"outside measured runs, playbook start to summary: {t['outside_measured']:.1f} s = "
          f"{s['overhead']['fraction_outside_measured']:.1%} (bound {BOUND:.0%}, ratio "
          f"{s['overhead']['fraction_outside_measured'] / BOUND:.2f})")
    print(f"  inside run sessions (set-up, warm-up, tear-down): {t['in_runs_outside_measured']:.1f} s; "
          f"between runs: {t['outside_runs']:.1f} s")
    print(f"outside measured runs, whole process: {outside_total:.1f} s = {outside_total / wall:.1%} "
          f"(ratio to the bound {outside_total / wall / BOUND:.2f})")
    print("slowest tasks (outside the run lists), from ansible-runner's task events:")
    spans = sorted((s for s in run.task_spans() if "Run the list" not in s[1]), reverse=True)
    for seconds, task in spans[:8]:
        print(f"  {seconds:6.1f} s  {task}")
    if not args.keep:
        print(f"(results and ansible-runner artifacts kept in {root})")
    return 0 if s["overhead"]["fraction_outside_measured"] <= BOUND else 1


if __name__ == "__main__":
    sys.exit(main())
