"""Trace replay on the emulated testbed: a steps trace between 2 and 50 Mbit/s every 10 s (needs root).

Brings up a private testbed (prefix ppy-, 10.77.25.0/24, state in a temporary directory),
replays the shipped `steps-2-50` trace between pi1 and pi2 (`testbed.check_trace`: tc qdisc
change of the tbf rate at each boundary, egress and ifb, both devices) and prints, per 1 s bin,
the trace's capacity, the achieved TCP goodput and their ratio. The per-bin bound is 15% of
the capacity on settled bins (at least 0.5 s after a step). Then it runs the same check at
each constant rate, for comparison, and always tears down.

Not measured here yet: MobileNetV2 at an early and a late split under the trace. The replay
now starts at each run's first counted batch (`testbed shape` of a trace, docs/testbed.md),
and scripts/demo-trace.sh runs such a sweep, but this benchmark does not time it yet.

    sudo .venv/bin/python benchmarks/bench_trace_steps.py [--seconds 40] [--repeat 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _testbed_common import topology_text, two_pis

from paretopipe import testbed as tb
from paretopipe.netcond import Condition

TOPOLOGY = topology_text("ppy", "10.77.25", two_pis("rpi4"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="how much of the trace to replay")
    parser.add_argument("--repeat", type=int, default=1, help="replays")
    args = parser.parse_args()
    cond = tb.load_conditions()["steps-2-50"]
    failures = 0
    with tempfile.TemporaryDirectory(prefix="ppy-") as tmp:
        topo = Path(tmp) / "topology.yml"
        topo.write_text(TOPOLOGY)
        state = Path(tmp) / "state"
        try:
            tb.up(topo, state_dir=state, inventory=Path(tmp) / "hosts.yml")
            ratios: dict[float, list[float]] = {50.0: [], 2.0: []}
            for r in range(args.repeat):
                res = tb.check_trace(cond, ["pi1", "pi2"], state_dir=state, duration_s=args.seconds, bin_s=1.0)
                print(f"replay {r + 1}: {res['part_used']}; {res['changes']} changes, the latest "
                      f"{res['change_late_ms_max']:g} ms after its time")
                print(f"{'t [s]':>6} {'capacity':>9} {'achieved':>9} {'ratio':>6} {'err/bound':>9}")
                for b in res["bins"]:
                    ratio = b["achieved_mbit"] / b["capacity_mbit"]
                    err = abs(1 - ratio) / res["tolerance"]
                    mark = "" if b["judged"] else "  (settling, not judged)"
                    if b["judged"]:
                        ratios[b["capacity_mbit"]].append(ratio)
                    print(f"{b['t_s']:6g} {b['capacity_mbit']:9g} {b['achieved_mbit']:9.2f} {ratio:6.3f} "
                          f"{err:9.2f}{mark}", flush=True)
                print(f"  {res['passed']} of {res['judged']} settled bins within {res['tolerance']:.0%}: "
                      f"{'ok' if res['ok'] else 'FAIL'}")
                failures += not res["ok"]
            for rate, values in ratios.items():
                if values:
                    print(f"settled bins at {rate:g} Mbit/s: achieved/capacity median {statistics.median(values):.3f} "
                          f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")
            print(f"{'constant':18} {'rate cfg':>9} {'rate got':>9} {'ratio':>6}")
            for rate in (50.0, 2.0):
                tb.shape(Condition(f"const-{rate:g}", delay_ms=5, rate_mbit=rate), state_dir=state)
                res = tb.check(state_dir=state, duration_s=4)
                got = res["measured"]["rate_mbit"]
                print(f"{'const-' + format(rate, 'g'):18} {rate:9g} {got:9.2f} {got / rate:6.3f}", flush=True)
                failures += not res["ok"]
        finally:
            tb.down(state_dir=state, topology=topo)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
