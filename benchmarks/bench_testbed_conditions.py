"""How close the emulated testbed gets to each network condition (needs root).

Brings up a private testbed (prefix ppb-, 10.77.6.0/24, state in a temporary directory),
applies every named condition from the conditions file (plus 100 Mbit/s at 5 ms, the top of
the promised range), runs `testbed check` between pi1 and pi2 and prints configured against
achieved, with each error as a fraction of its bound (<= 1.0 passes); then unshapes and checks
that the hop is back to an unshaped RTT (within the 2 ms bound). Always tears down.

    sudo .venv/bin/python benchmarks/bench_testbed_conditions.py [--conditions FILE] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _testbed_common import topology_text, two_pis

from paretopipe import testbed as tb
from paretopipe.netcond import Condition

TOPOLOGY = topology_text("ppb", "10.77.6", two_pis("rpi4"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", help="conditions YAML (default: the packaged one)")
    parser.add_argument("--repeat", type=int, default=1, help="checks per condition")
    args = parser.parse_args()
    conds = [c for c in tb.load_conditions(args.conditions).values()
             if not c.is_trace]  # traces: benchmarks/bench_trace_steps.py
    conds.append(Condition("top-100mbit-5ms", delay_ms=5, rate_mbit=100))
    with tempfile.TemporaryDirectory(prefix="ppb-") as tmp:
        topo = Path(tmp) / "topology.yml"
        topo.write_text(TOPOLOGY)
        state = Path(tmp) / "state"
        try:
            tb.up(topo, state_dir=state, inventory=Path(tmp) / "hosts.yml")
            print(f"{'condition':18} {'rtt cfg':>8} {'rtt got':>8} {'err/bound':>9} "
                  f"{'rate cfg':>9} {'rate got':>9} {'err/bound':>9}  method")
            failures = 0
            for cond in conds:
                tb.shape(cond, state_dir=state)
                for _ in range(args.repeat):
                    res = tb.check(state_dir=state)
                    m, ck = res["measured"], res["checks"]
                    rtt_ratio = abs(m["rtt_ms"] - ck["rtt"]["expected_ms"]) / ck["rtt"]["bound_ms"]
                    if cond.rate_mbit is not None:
                        rate_ratio = (abs(m["rate_mbit"] - cond.rate_mbit)
                                      / (0.1 * cond.rate_mbit))
                        rate_txt = f"{rate_ratio:9.2f}" + ("" if ck["rate"]["ok"] is not None
                                                           else "*")
                    else:
                        rate_txt = f"{'-':>9}"
                    failures += not res["ok"]
                    print(f"{cond.name:18} {ck['rtt']['expected_ms']:8.1f} {m['rtt_ms']:8.2f} "
                          f"{rtt_ratio:9.2f} {cond.rate_mbit or 0:9.1f} {m['rate_mbit']:9.2f} "
                          f"{rate_txt}  {res['method']}", flush=True)
            # Unshaped again: the shaping must leave no delay behind (the bound of an unshaped
            # hop is the tolerance's 2 ms, so this row's err/bound is the RTT over 2 ms).
            tb.unshape(state_dir=state)
            for _ in range(args.repeat):
                res = tb.check(state_dir=state, duration_s=0.5)
                rtt, ck = res["measured"]["rtt_ms"], res["checks"]["rtt"]
                failures += not ck["ok"]
                print(f"{'unshaped (after)':18} {ck['expected_ms']:8.1f} {rtt:8.2f} "
                      f"{abs(rtt - ck['expected_ms']) / ck['bound_ms']:9.2f} {'-':>9} "
                      f"{res['measured']['rate_mbit']:9.2f} {'-':>9}  none", flush=True)
            print("(* loss configured: rate reported, not judged; rate is TCP goodput)")
            print(f"{failures} check(s) outside tolerance")
            return 1 if failures else 0
        finally:
            tb.down(state_dir=state)


if __name__ == "__main__":
    sys.exit(main())
