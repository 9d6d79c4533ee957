"""The trace follower: replays a trace condition from each run's measurement start.

``paretopipe testbed shape TRACE`` shapes the trace's first segment and starts this process
on the controller (recorded in the shaping, so ``unshape`` and ``down`` stop it). It polls
the clock file (:mod:`paretopipe.netcond.clock`) that the source writes. On a run's
``start`` (its first counted send, ``t0``) it replays the trace's rate steps at ``t0 +
t_s`` (:class:`~paretopipe.testbed._replay.TraceReplay`). On its ``stop``, or when the next
run starts first, it stops the replay and puts the first segment's rate back, so the next
run's warm-up and its t = 0 see the same link as this one's. Each run it followed is one JSON
line in its log: ``{run_id, t0, changes, late_ms_max, errors}``.

    python -m paretopipe.testbed.tracefollow --spec SPEC.json   (written by shape)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from paretopipe.errors import TestbedError
from paretopipe.netcond import Condition
from paretopipe.netcond.clock import read_signal
from paretopipe.testbed import _system
from paretopipe.testbed._replay import TraceReplay
from paretopipe.testbed._shaping import FOLLOWER_READY, constant_part
from paretopipe.testbed.topology import Topology

#: how often the clock file is read; the replay itself is timed against the signalled t0
POLL_S = 0.01
#: how far past t0 the schedule is built (loops unrolled); a longer measurement holds the last rate
HORIZON_S = 4 * 3600.0
READY = FOLLOWER_READY


class Follower:
    def __init__(self, spec: dict) -> None:
        self.topo = Topology.from_dict(spec["topology"])
        self.names = list(spec["between"])
        self.netem = bool(spec["netem"])
        self.ifb = spec["ifb"]
        self.trace, _ = constant_part(Condition(**spec["condition"]))
        self.clock = Path(spec["clock"])
        self.log = Path(spec["log"])
        self.replay: TraceReplay | None = None
        self.run: dict | None = None

    def finish(self) -> None:
        """Stop the replay of the run in progress, log it, and put the first segment back."""
        if self.replay is None:
            return
        replay, run = self.replay, self.run or {}
        replay.stop()
        self.replay = self.run = None
        errors = list(replay.errors)
        if replay.late_s:
            first = self.trace.segments[0]
            for ns, cmd in replay.commands(first.rate_mbit, first.delay_ms):
                try:
                    _system.run(cmd, ns=ns, timeout=5.0)
                except TestbedError as exc:
                    errors.append(f"reset: {exc}")
        with open(self.log, "a") as fh:
            fh.write(json.dumps({"run_id": run.get("run_id"), "t0": run.get("t0"), "changes": len(replay.late_s),
                                 "late_ms_max": round(1000 * max(replay.late_s, default=0.0), 2),
                                 "errors": errors}) + "\n")

    def serve(self, stopping: threading.Event) -> None:
        seen = read_signal(self.clock)  # a signal from before this shaping is not ours
        last = (seen.get("pid"), seen.get("seq")) if seen else None
        print(f"{READY} {self.clock}", flush=True)
        while not stopping.wait(POLL_S):
            sig = read_signal(self.clock)
            key = (sig.get("pid"), sig.get("seq")) if sig else None
            if sig is None or key == last:
                continue
            last = key
            self.finish()
            if sig["event"] == "start":
                self.replay = TraceReplay(self.topo, self.names, self.trace, HORIZON_S, netem=self.netem,
                                          ifb=self.ifb)
                self.run = sig
                self.replay.start(float(sig["t0"]))
        self.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paretopipe.testbed.tracefollow",
                                     description="replay a trace condition from each run's measurement start")
    parser.add_argument("--spec", required=True, help="the JSON spec `testbed shape` wrote")
    args = parser.parse_args(argv)
    follower = Follower(json.loads(Path(args.spec).read_text()))
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    follower.serve(stopping)
    return 0


if __name__ == "__main__":
    sys.exit(main())
