"""What a sweep will cost before it starts: an estimate of its duration, with a range, and the
budget rule (``sweep_budget`` / ``paretopipe sweep --budget``).

**The estimate** of one run is its batches times the time of one batch, plus a per-run overhead:

- a batch's compute on each stage is the stage's FLOPs (the blocks it holds, from
  :func:`paretopipe.splitting.split_points`, times the batch size) over the stage device's rate;
  the rate comes from a short calibration on each device (:func:`calibrate`: a 3x3 convolution
  run for half a second) or is given;
- with window 1 a batch takes the sum of the stages' times, with a larger window the slowest
  stage's (the pipelined bound; docs/design.md);
- a run does ``warmup + max(batches, min_batches)`` batches (or lasts ``duration`` seconds) and at
  least ``min_duration`` seconds;
- per run the orchestration adds :data:`RUN_OVERHEAD_S` (connecting, building the stages,
  fidelity batches, writing the file), and per condition :data:`CONDITION_OVERHEAD_S` (shaping
  the network and measuring it).

Link time (bytes over the condition's rate) is not in it: the planner knows a condition's name,
not its rate. So the range is wide on purpose: :data:`LOW_FACTOR` to :data:`HIGH_FACTOR` times
the central figure (a convolution's rate is not a depthwise convolution's; a slow link adds to
every early split). docs/ansible.md (*What a sweep costs*) compares estimates with measured
durations. From the first run on, the runner's ETA (:class:`paretopipe.plan.Progress`) replaces
the estimate with what the runs take.

**The budget.** When the estimate's central figure is over the budget, the sweep does not start:
:func:`check_budget` gives the message that names the estimate and the ways out
(``strategy=predicted``, fewer splits, ``sweep_budget=none``). Stopping rather than switching to
the predicted strategy on its own: the user chose the runs, and a sweep that quietly measures
something else than what was asked is worse than one that asks first (docs/ansible.md).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paretopipe.errors import ConfigError
from paretopipe.plan.spec import Task

__all__ = ["Estimate", "RunShape", "calibrate", "estimate_tasks", "parse_budget", "check_budget", "format_duration",
           "DEFAULT_BUDGET"]

# Seconds a run costs outside its batches (connect, stage build, fidelity, file), and a condition
# outside its runs (shape, measure, clear): from the sweep summaries' "outside measured runs".
RUN_OVERHEAD_S = 4.0
CONDITION_OVERHEAD_S = 20.0
LOW_FACTOR = 0.5
HIGH_FACTOR = 3.0
# The default budget: a working day's afternoon. Long enough for every sweep the docs show
# (the demo's takes minutes), short enough that a full VGG16 sweep over three devices (days)
# does not start without a word.
DEFAULT_BUDGET = "4h"


@dataclass(frozen=True)
class RunShape:
    """How long a run's batches are: what the sweep settings say about every run."""

    warmup: int = 5
    batches: int | None = 50  # None: duration_s
    duration_s: float | None = None
    min_batches: int = 20
    min_duration_s: float = 0.0

    @classmethod
    def from_settings(cls, s: Mapping[str, Any]) -> RunShape:
        duration = float(s.get("duration") or 0)
        return cls(warmup=int(s.get("warmup", 5)), batches=None if duration else int(s.get("batches", 50)),
                   duration_s=duration or None, min_batches=int(s.get("min_batches", 20)),
                   min_duration_s=float(s.get("min_duration") or 0))

    def run_seconds(self, batch_s: float) -> float:
        if self.batches is None:
            return self.warmup * batch_s + max(float(self.duration_s or 0), self.min_duration_s)
        counted = max(self.batches, self.min_batches)
        return self.warmup * batch_s + max(counted * batch_s, self.min_duration_s)


@dataclass(frozen=True)
class Estimate:
    """A sweep's estimated duration: ``seconds`` central, ``low`` to ``high`` its range."""

    runs: int
    seconds: float
    low: float
    high: float
    basis: str

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "seconds": round(self.seconds, 1), "low_s": round(self.low, 1),
                "high_s": round(self.high, 1), "basis": self.basis, "line": self.line()}

    def line(self) -> str:
        if self.runs == 0:
            return "nothing to run"
        return (f"estimated {format_duration(self.seconds)} for {self.runs} run(s) "
                f"(likely {format_duration(self.low)} to {format_duration(self.high)}; {self.basis})")


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def calibrate(threads: int | None = None, seconds: float = 0.5) -> float:
    """This device's rate in FLOP/s: a 3x3 convolution (64 to 64 channels, 56 px) run back to back
    for about ``seconds`` after one warm-up call; FLOPs done over the time taken. Averaged over
    several CFS periods on purpose: a CPU quota (a device profile's) lets one short call run at the
    host's speed, and the best call would hide the throttling that every run will meet."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    x = torch.randn(1, 64, 56, 56)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval()
    flops = 2 * 64 * 64 * 9 * 56 * 56
    calls = 0
    with torch.inference_mode():
        conv(x)
        t0 = time.perf_counter()
        while True:
            conv(x)
            calls += 1
            took = time.perf_counter() - t0
            if took >= seconds:
                break
    return calls * flops / took


def _block_flops(model: str, num_classes: int, input_size: int | None) -> list[int]:
    """FLOPs of one image through blocks ``[0, k)``, for every split point ``k = 0..N``."""
    from paretopipe.splitting import split_points

    return [p.flops_head for p in split_points(model, num_classes=num_classes, input_size=input_size or None)]


def estimate_tasks(model: str, tasks: Sequence[Task], shape: RunShape, rates: Sequence[float], *,
                   num_classes: int = 10, input_size: int | None = None, conditions: int = 1,
                   run_overhead_s: float = RUN_OVERHEAD_S,
                   condition_overhead_s: float = CONDITION_OVERHEAD_S) -> Estimate:
    """The duration of ``tasks`` (each repeat a run) on a chain whose devices run at ``rates``
    FLOP/s (source first)."""
    runs = sum(len(t.repeats) for t in tasks)
    if runs == 0:
        return Estimate(0, 0.0, 0.0, 0.0, "every run is done")
    if not rates or any(not (r > 0) for r in rates):
        raise ConfigError(f"device rates must be positive FLOP/s, got {list(rates)}")
    head = _block_flops(model, num_classes, input_size)
    n = len(head) - 1
    total = conditions * condition_overhead_s
    for t in tasks:
        bounds = (0, *t.config.splits, n)
        stage_s = [(head[b] - head[a]) * t.config.batch_size / rates[min(i, len(rates) - 1)]
                   for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        batch_s = sum(stage_s) if t.config.window <= 1 else max(stage_s)
        total += len(t.repeats) * (shape.run_seconds(batch_s) + run_overhead_s)
    rate_txt = ", ".join(f"{r / 1e9:.1f}" for r in rates)
    basis = (f"FLOPs per block over each device's calibrated rate ({rate_txt} GFLOP/s), "
             f"{run_overhead_s:g} s per run, {condition_overhead_s:g} s per condition; link time not included")
    return Estimate(runs, total, total * LOW_FACTOR, total * HIGH_FACTOR, basis)


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_budget(text: str | float | int | None, flag: str = "sweep_budget") -> float | None:
    """Seconds from ``2h``, ``90m``, ``1h30m``, ``45s``, ``3600`` (seconds); None for ``none``."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("none", "")):
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = text.strip().lower().replace(" ", "")
        parts = re.fullmatch(r"((?:\d+(?:\.\d+)?(?:d|h|min|m|s)?)+)", s)
        items = re.findall(r"(\d+(?:\.\d+)?)(d|h|min|m|s)?", s) if parts else []
        if not items or (len(items) > 1 and any(u == "" for _, u in items)):
            raise ConfigError(f"{flag}={text!r} is not a duration; use e.g. {flag}=2h, 90m, 1h30m, 3600 (seconds) "
                              f"or none (no budget)")
        value = sum(float(v) * _UNITS[u or "s"] for v, u in items)
    if value <= 0:
        raise ConfigError(f"{flag}={text!r} must be positive; use e.g. {flag}=2h, or none for no budget")
    return value


def check_budget(est: Estimate, budget_s: float | None, *, strategy: str = "full",
                 budget_flag: str = "sweep_budget", predicted: str = "-e strategy=predicted",
                 splits: str = "-e splits=...", no_budget: str = "-e sweep_budget=none") -> str | None:
    """None when the sweep may start; else the message saying why not and what to do instead."""
    if budget_s is None or est.seconds <= budget_s:
        return None
    ways = [] if strategy == "predicted" else [f"{predicted} (measure only the predicted frontier and its neighbours)"]
    ways += [f"fewer splits or configurations ({splits})", f"a larger budget or none ({no_budget})"]
    return (f"the sweep is over its budget: {est.line()}, and {budget_flag} is {format_duration(budget_s)}; "
            f"nothing was run. Options: " + "; ".join(ways))
