"""Replaying a trace condition on the emulated testbed, and checking what the hop delivered.

The mechanism is ``tc qdisc change`` of the tbf rate at segment boundaries
(:func:`paretopipe.netcond.replay_schedule`), from one thread on the controller, on every
shaped device (egress on the NIC and ingress through the ifb: both directions of the hop).
Why not the user-space delay line: it serves packets in Python, one NFQUEUE verdict each, and
pacing 1500-byte delivery opportunities at 50 Mbit/s is 4,200 verdicts a second per direction
on a 2-core machine; tbf already shapes in the kernel, and changing its rate costs one ``tc``
call per qdisc per step (docs/testbed.md has the figures). The delay line keeps the delay,
which must then be constant along the trace; a trace whose delay, jitter or loss varies is
refused (:func:`paretopipe.testbed._shaping.constant_part`), saying so.

:func:`check_trace` shapes the trace's first segment, starts the replay at a known
``time.monotonic()`` (the trace's clock: t = 0), runs a bulk transfer whose receiver counts
bytes per bin from that same instant, stops the replay and unshapes, whatever happened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from paretopipe import netcond
from paretopipe.errors import ConfigError, TestbedError
from paretopipe.netcond import Condition
from paretopipe.testbed import _shaping, _system
from paretopipe.testbed._shaping import constant_part
from paretopipe.testbed._state import Paths, locked
from paretopipe.testbed.topology import Topology

__all__ = ["BIN_OK_SHARE", "BIN_TOLERANCE", "TraceReplay", "check_trace", "judge_bins"]

#: a judged bin passes when its goodput is within this share of the trace's capacity
BIN_TOLERANCE = 0.15
#: the strict verdict: at least this share of the judged bins must pass
BIN_OK_SHARE = 0.8
#: bins starting closer than this to a step are shown, not judged (TCP and the queue settle)
SETTLE_S = 0.5


class TraceReplay:
    """Runs a trace's rate changes on the shaped devices at their time after ``start``.

    The commands of each step are built when it is due, so a long horizon over a fine trace
    (a Mahimahi trace has a step every 0.1 s) costs one tuple per step, not its argv lists.
    """

    def __init__(self, topo: Topology, names: Sequence[str], trace: netcond.Trace, until_s: float,
                 *, netem: bool, ifb: str) -> None:
        self._topo, self._names, self._netem, self._ifb = topo, list(names), netem, ifb
        self._steps = [s for s in netcond.rate_steps(trace, until_s) if s[0] > 0]  # t = 0: shaped
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []
        self.late_s: list[float] = []  # how late each change ran, against its planned time

    def commands(self, rate_mbit: float | None, delay_ms: float) -> list[tuple[str, list[str]]]:
        """(namespace, argv) of one step: every device's egress and ifb tbf to ``rate_mbit``."""
        return [(self._topo.netns(name), cmd) for name in self._names
                for cmd in netcond.rate_change_commands(self._topo.nic, rate_mbit, delay_ms, ifb=self._ifb,
                                                        netem=False, ifb_netem=self._netem)]

    def start(self, t0: float) -> None:
        def loop() -> None:
            for t_s, rate, delay in self._steps:
                if self._stop.wait(max(0.0, t0 + t_s - time.monotonic())):
                    return
                for ns, cmd in self.commands(rate, delay):
                    try:
                        _system.run(cmd, ns=ns, timeout=5.0)
                    except TestbedError as exc:
                        self.errors.append(str(exc))
                        return
                    self.late_s.append(time.monotonic() - (t0 + t_s))

        self._thread = threading.Thread(target=loop, name="trace-replay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def judge_bins(trace: netcond.Trace, bins_bytes: Sequence[int], bin_s: float, duration_s: float,
               *, tolerance: float = BIN_TOLERANCE, ok_share: float = BIN_OK_SHARE) -> dict:
    """Achieved against capacity per bin, and the strict verdict (pure)."""
    starts = [t for t, _ in trace.boundaries(duration_s + bin_s)]
    rows = []
    for k in range(int(duration_s / bin_s + 1e-9)):
        lo, hi = k * bin_s, (k + 1) * bin_s
        achieved = (bins_bytes[k] if k < len(bins_bytes) else 0) * 8 / bin_s / 1e6
        capacity = trace.capacity_mbit(lo)
        since = lo - max(t for t in starts if t <= lo + 1e-9)
        one_segment = trace.index_at(lo) == trace.index_at(hi - 1e-6) and not any(lo < t < hi for t in starts)
        judged = capacity is not None and one_segment and since >= SETTLE_S - 1e-9
        ok = None if not judged else abs(achieved - capacity) <= tolerance * capacity
        rows.append({"t_s": round(lo, 6), "capacity_mbit": capacity, "achieved_mbit": round(achieved, 3),
                     "judged": judged, "ok": ok})
    judged = [r for r in rows if r["judged"]]
    passed = sum(1 for r in judged if r["ok"])
    return {"bins": rows, "judged": len(judged), "passed": passed, "tolerance": tolerance,
            "ok_share": ok_share, "ok": bool(judged) and passed >= ok_share * len(judged)}


def check_trace(condition: Condition | str, pair: Sequence[str] | None = None, *,
                conditions_file: str | Path | None = None, state_dir: str | Path | None = None,
                duration_s: float | None = None, bin_s: float = 0.5) -> dict:
    """Replay a trace condition between two devices and judge what was delivered per bin.

    The testbed is left unshaped afterwards (also on error): this is a check, not a shaping.
    """
    cond = _shaping.resolve_condition(condition, conditions_file)
    if not cond.is_trace:
        raise ConfigError(f"condition {cond.name} is constant: use `paretopipe testbed check`")
    if bin_s < netcond.MIN_STEP_S:
        raise ConfigError(f"bin {bin_s:g} s is below the {netcond.MIN_STEP_S:g} s the replay follows")
    trace, start = constant_part(cond)
    duration = duration_s if duration_s is not None else min(trace.end_s or 20.0, 60.0)
    _system.require_root()
    paths = Paths.at(state_dir)
    with locked(paths):
        topo, _ = _shaping._loaded(paths)
    names = list(pair) if pair else topo.names[:2]
    if len(names) != 2:
        raise ConfigError("check a trace on one hop: give two devices")
    record = _shaping.shape(start, between=names, state_dir=state_dir)
    netem = record.get("method") == "netem"
    replay = TraceReplay(topo, names, trace, duration, netem=netem, ifb=_shaping.IFB)
    try:
        t0 = time.monotonic() + 0.3
        replay.start(t0)
        moved = _shaping.transfer(topo, names[0], names[1], seconds=duration + (t0 - time.monotonic()),
                                  bin_s=bin_s, epoch=t0, timeout_s=duration + 30)
    finally:
        replay.stop()
        _shaping.unshape(state_dir=state_dir)
    if replay.errors:
        raise TestbedError(f"trace replay failed: {replay.errors[0]}")
    verdict = judge_bins(trace, moved["recv"]["bins_bytes"], bin_s, duration)
    return {"condition": cond.to_dict(), "between": names, "part_used": trace.part_used(duration),
            "mechanism": "tc qdisc change (tbf rate, egress and ifb, both devices)",
            "changes": len(replay.late_s),
            "change_late_ms_max": round(1000 * max(replay.late_s, default=0.0), 2),
            **verdict}
