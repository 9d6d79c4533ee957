#!/usr/bin/env python
"""Sequential against pipelined MobileNetV2 between two emulated Raspberry Pi 4 devices (needs root).

Brings up a private emulated testbed (two ``rpi4`` devices, pi1 and pi2; names and subnet of its
own, state in a temporary folder), runs ``playbooks/sweep.yml`` on it (the real suite: Ansible,
stage worker on pi2, source on pi1) over ``--splits`` at window 1 and ``--window``, then takes
the split where the pipelined throughput is best and prints, at that split:

- the measured speed-up: pipelined throughput / sequential throughput;
- the bound's speed-up: (sum of stage compute and link transfer times) / (the largest of them),
  from the sequential run's own per-stage and per-hop means (docs/performance.md: pipelined
  throughput is bounded by 1 / max(stage, link); sequential takes their sum);
- upstream ParetoPipe's 6.4x (2.17 -> 13.85 img/s, MobileNetV2, two real Pis, batch 8, RPC), for
  reference only: other hardware, other backend, other input size.

    sudo .venv/bin/python benchmarks/bench_pipelined_pis.py [--input-size 96] [--window 4]
        [--splits 4,8,12,16] [--condition lan] [--batches 30] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from _testbed_common import free_index, topology_text, two_pis

REPO = Path(__file__).resolve().parent.parent
UPSTREAM = (2.17, 13.85)  # img/s, sequential and pipelined (DESIGN.md)


def _topology() -> str:
    idx = free_index("bp", 200, 50)
    return topology_text(f"bp{idx:02x}", f"10.{idx}.187", two_pis("rpi4"))


def _runs(folder: Path) -> dict[tuple[int, int], dict]:
    out = {}
    for path in folder.glob("mobilenet_v2-s*-r0.json"):
        doc = json.loads(path.read_text())
        if doc.get("status") == "ok":
            out[(doc["config"]["splits"][0], doc["config"]["window"])] = doc
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--splits", default="4,8,12,16")
    ap.add_argument("--condition", default="lan")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--keep", type=Path, help="also copy the result files here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_pipelined_pis: needs root (network namespaces); run it with sudo", file=sys.stderr)
        return 2
    from paretopipe.orchestrate import run_playbook

    with tempfile.TemporaryDirectory(prefix="ppbp-") as tmp:
        root = Path(tmp)
        topo, state, inv, results = root / "topology.yml", root / "state", root / "inventory", root / "results"
        topo.write_text(_topology())
        inv.mkdir()
        (inv / "group_vars").symlink_to(REPO / "inventory" / "emulated" / "group_vars")
        common = {"testbed_topology": str(topo), "testbed_state_dir": str(state), "results_dir": str(results)}
        t0 = time.monotonic()
        try:
            run = run_playbook("sweep.yml", inventory=inv, timeout=1800, artifacts_dir=root / "runner", extra_vars={
                **common, "model": "mobilenet_v2", "input_size": str(args.input_size), "splits": args.splits,
                "windows": f"1,{args.window}", "batch_sizes": str(args.batch_size), "conditions": args.condition,
                "backends": "tcp", "chain": "pi1,pi2", "batches": str(args.batches), "warmup": "5",
                "min_batches": "10", "sweep_id": "bench"})
            wall = time.monotonic() - t0
            runs = _runs(results / "bench")
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for p in (results / "bench").glob("*.json"):
                    (args.keep / p.name).write_bytes(p.read_bytes())
        finally:
            if (inv / "hosts.yml").exists():
                run_playbook("teardown.yml", inventory=inv, timeout=300, artifacts_dir=root / "runner-down",
                             extra_vars=common)
            import subprocess

            subprocess.run([sys.executable, "-m", "paretopipe", "testbed", "down", "--topology", str(topo),
                            "--state-dir", str(state)], cwd=REPO, capture_output=True, check=False)
    if not run.ok:
        print(f"the sweep did not succeed (status {run.status}, failed tasks {run.failed_tasks()})", file=sys.stderr)
    pipelined = {k: d for (k, w), d in runs.items() if w == args.window}
    both = [k for k in pipelined if (k, 1) in runs]
    if not both:
        print("no split has both a sequential and a pipelined ok run", file=sys.stderr)
        return 1
    best = max(both, key=lambda k: pipelined[k]["summary"]["throughput_img_s"])
    seq, pip = runs[(best, 1)]["summary"], pipelined[best]["summary"]
    parts = [*seq["compute_s"], *(h["transfer_s"] for h in seq["hops"])]
    bound = math.fsum(parts) / max(parts)
    measured = pip["throughput_img_s"] / seq["throughput_img_s"]
    print(f"MobileNetV2, {args.input_size} px, batch {args.batch_size}, two emulated rpi4 (pi1 -> pi2), tcp, "
          f"{args.condition}; sweep of splits {args.splits} x windows 1,{args.window} in {wall:.0f} s")
    print(f"{'split':>5} {'W=1 img/s':>10} {f'W={args.window} img/s':>10} {'speed-up':>9}")
    for k in sorted(both):
        a, b = runs[(k, 1)]["summary"]["throughput_img_s"], pipelined[k]["summary"]["throughput_img_s"]
        print(f"{k:>5} {a:10.2f} {b:10.2f} {b / a:8.2f}x" + ("  <- best" if k == best else ""))
    print(f"best split {best}: sequential {seq['throughput_img_s']:.2f} img/s "
          f"(latency {seq['latency_s']['mean'] * 1e3:.1f} ms), pipelined W={args.window} "
          f"{pip['throughput_img_s']:.2f} img/s (latency {pip['latency_s']['mean'] * 1e3:.1f} ms)")
    print("  stage compute ms: " + ", ".join(f"{c * 1e3:.1f}" for c in seq["compute_s"])
          + "; hop transfer ms: " + ", ".join(f"{h['transfer_s'] * 1e3:.1f}" for h in seq["hops"]))
    print(f"measured speed-up {measured:.2f}x; bound's speed-up (sum of stage and link times / largest) "
          f"{bound:.2f}x; upstream ParetoPipe {UPSTREAM[1] / UPSTREAM[0]:.1f}x ({UPSTREAM[0]} -> {UPSTREAM[1]} img/s, "
          f"two real Pis, RPC; reference only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
