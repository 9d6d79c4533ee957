"""How long failures take to be reported, against the timeout that bounds them.

A dead peer must be reported within its timeout, never after torch's own defaults (30 minutes
for an RPC group that never forms). The tests check that each failure is reported and named;
this benchmark times them and prints each as a ratio to its bound (<= 1.0 meets it):

- no worker at the address (TCP and RPC): bounded by --connect-timeout;
- an RPC stage that answers the handshake but never joins the RPC group: bounded by the
  connect timeout the group is given to form (plus the handshake itself).

    .venv/bin/python benchmarks/bench_failure_bounds.py [--connect-timeout S] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paretopipe.errors import StageError, TransportError  # noqa: E402
from paretopipe.runtime.sweep import free_port  # noqa: E402
from paretopipe.transport import get_backend  # noqa: E402
from paretopipe.transport.base import SessionPlan, SessionSpec  # noqa: E402
from tests.runtime.test_rpc import SilentRpcStage  # noqa: E402 - the tests' stage that never joins

#: Slack on top of the timeout that bounds each failure: process and socket set-up.
SLACK_S = 5.0


def _spec() -> SessionSpec:
    return SessionSpec(session_id=7, model="resnet18", num_classes=10, input_size=64, splits=(5,), stage_index=1,
                       num_stages=2, batch_size=2, dtype="float32", weights={"kind": "random", "seed": 0},
                       next_address=None, window=1, timeout_s=20.0, threads=1, seed=0)


def _plan(address: str, connect_timeout_s: float) -> SessionPlan:
    return SessionPlan(addresses=(address,), spec=_spec(), head_out_shape=(2, 64, 16, 16), logits_shape=(2, 10),
                       token=None, connect_timeout_s=connect_timeout_s)


def _time_failure(backend: str, address: str, connect_timeout_s: float) -> tuple[float, str]:
    link = get_backend(backend).source_link()
    t0 = time.monotonic()
    try:
        link.open(_plan(address, connect_timeout_s))
    except (StageError, TransportError) as exc:
        return time.monotonic() - t0, str(exc)
    finally:
        link.close()
    raise SystemExit(f"{backend}: the session opened against {address}; expected a failure")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect-timeout", type=float, default=3.0, metavar="S", help="(default: 3)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="(default: 3)")
    args = parser.parse_args()
    bound = args.connect_timeout + SLACK_S
    print(f"{'failure':40} {'min s':>7} {'max s':>7} {'bound s':>8} {'max/bound':>9}")
    worst = 0.0
    cases = [("tcp", "no worker at the address"), ("rpc", "no worker at the address"),
             ("rpc", "stage never joins the RPC group")]
    for backend, what in cases:
        times = []
        for _ in range(args.repeat):
            if what.startswith("stage never"):
                stage = SilentRpcStage()
                try:
                    took, _msg = _time_failure(backend, stage.address, args.connect_timeout)
                finally:
                    stage.close()
            else:
                took, _msg = _time_failure(backend, f"127.0.0.1:{free_port()}", args.connect_timeout)
            times.append(took)
        ratio = max(times) / bound
        worst = max(worst, ratio)
        print(f"{backend + ': ' + what:40} {min(times):7.2f} {max(times):7.2f} {bound:8.1f} {ratio:9.2f}", flush=True)
    print(f"worst ratio to the bound (connect timeout {args.connect_timeout:g} s + {SLACK_S:g} s): {worst:.2f}")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
