"""Working through a plan's tasks under the resume rule and the repeat rule, with progress
after every run and a repeats record per ``auto`` configuration."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretopipe.plan.repeats import REPEATS_SCHEMA, REPEATS_SCHEMA_VERSION, RepeatRule, relative_ci
from paretopipe.plan.spec import Task, config_id, objectives_of, run_id, run_state, set_aside

__all__ = ["Outcome", "Progress", "RunReport", "run_order", "work_through"]


@dataclass(frozen=True)
class Outcome:
    """What running one run gave: ``ok`` with its document, or failed with a reason."""

    ok: bool
    doc: dict[str, Any] | None = None
    error: str | None = None
    wall_s: float = 0.0


@dataclass(frozen=True)
class Progress:
    """Where a runner stands, after each run (what the Ansible terminal and local lines show)."""

    done: int  # runs finished this time (ok or failed), plus skipped
    ok: int
    failed: int
    skipped: int
    left: int  # runs that may still come (auto: at most)
    elapsed_s: float
    last: str  # the last run's line

    @property
    def eta_s(self) -> float | None:
        ran = self.ok + self.failed
        if ran == 0:
            return None
        return self.elapsed_s / ran * self.left

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "ok": self.ok, "failed": self.failed, "skipped": self.skipped, "left": self.left,
                "elapsed_s": round(self.elapsed_s, 1), "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
                "last": self.last}

    def line(self) -> str:
        eta = "ETA unknown" if self.eta_s is None else f"ETA {_duration(self.eta_s)}"
        return (f"{self.done} done ({self.ok} ok, {self.failed} failed, {self.skipped} skipped), {self.left} left, "
                f"{_duration(self.elapsed_s)} so far, {eta}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


@dataclass
class RunReport:
    run_id: str
    status: str  # ok | failed | skipped
    file: str | None
    wall_s: float = 0.0
    measured_s: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "file": self.file, "wall_s": round(self.wall_s, 4),
                "measured_s": self.measured_s, "error": self.error}


def run_order(model: str, tasks: Sequence[Task], seed: int = 0) -> list[tuple[int, int]]:
    """The order in which ``tasks``' runs go, as (task index, repeat) pairs: pass by pass
    (every configuration's repeat 0, then every repeat 1, ...), and within a pass in a shuffled
    order seeded by ``seed`` and each run's id, so that drift on the host does not line up with
    one configuration (issue 24). The order of two runs never depends on which other runs are
    pending, so a resumed sweep runs what is left in the order the first attempt would have."""
    import hashlib

    def key(item: tuple[int, int]) -> tuple[int, bytes]:
        i, repeat = item
        rid = run_id(model, tasks[i], repeat)
        return repeat, hashlib.sha256(f"{seed}|{rid}".encode()).digest()

    return sorted(((i, r) for i, t in enumerate(tasks) for r in t.repeats), key=key)


def work_through(model: str, tasks: Sequence[Task], rule: RepeatRule, results_dir: str | os.PathLike[str],
                 execute: Callable[[Task, int, Path], Outcome], *,
                 progress: Callable[[Progress], None] | None = None,
                 describe: Callable[[Task], Mapping[str, Any]] | None = None,
                 seed: int = 0) -> list[RunReport]:
    """Run ``tasks`` under the resume rule and the repeat rule, in :func:`run_order` (seeded by
    ``seed``); return one report per run, in the order they ran.

    ``execute(task, repeat, path)`` runs one run whose file is ``path`` and says how it went.
    ``describe(task)`` gives what an auto configuration's repeats record says about its group
    (model, network, backend, ...); the record is written once the configuration is settled."""
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    reports: list[RunReport] = []
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    left = sum(len(t.repeats) for t in tasks)
    known = [list(t.known) for t in tasks]
    remaining = [len(t.repeats) for t in tasks]  # of each task's pairs in the order, not yet reached
    settled: set[int] = set()
    t0 = time.monotonic()

    def settle(i: int) -> None:
        if rule.auto:
            task = tasks[i]
            _write_repeats_record(results / f"{config_id(model, task)}.repeats.json", model, task, rule, known[i],
                                  describe(task) if describe else {})

    for i, repeat in run_order(model, tasks, seed):
        task = tasks[i]
        remaining[i] -= 1
        if i in settled:  # stopped early: this repeat will not come (counted off when it settled)
            continue
        if rule.verdict(known[i]) is not None:  # settled before this attempt (its known runs)
            left -= remaining[i] + 1
            settled.add(i)
            settle(i)
            continue
        rid = run_id(model, task, repeat)
        path = results / f"{rid}.json"
        state, doc = run_state(path)
        if state == "ok" and doc is not None:
            rep = RunReport(rid, "skipped", str(path), measured_s=float(doc["validity"]["duration_s"]))
            known[i].append(objectives_of(doc))
            line = f"{task.config.label} {task.backend} {task.condition} r{repeat}: skipped (result file says ok)"
        else:
            if state == "other":
                set_aside(path)
            out = execute(task, repeat, path)
            if out.ok and out.doc is not None:
                values = objectives_of(out.doc)
                known[i].append(values)
                rep = RunReport(rid, "ok", str(path), out.wall_s, float(out.doc["validity"]["duration_s"]))
                line = (f"{task.config.label} {task.backend} {task.condition} r{repeat}: ok, {values[1]:.2f} img/s, "
                        f"latency {values[0] * 1e3:.1f} ms ({out.wall_s:.1f} s)")
            else:
                kept = str(set_aside(path)) if path.exists() else None
                rep = RunReport(rid, "failed", kept, out.wall_s, error=out.error)
                line = f"{task.config.label} {task.backend} {task.condition} r{repeat}: FAILED ({out.wall_s:.1f} s): {out.error}"
        reports.append(rep)
        counts[rep.status] += 1
        left -= 1
        if remaining[i] == 0 or rule.verdict(known[i]) is not None:
            left -= remaining[i]  # settled: its later repeats will not come
            settled.add(i)
            settle(i)
        if progress is not None:
            progress(Progress(len(reports), counts["ok"], counts["failed"], counts["skipped"], left,
                              time.monotonic() - t0, line))
    return reports


def _write_repeats_record(path: Path, model: str, task: Task, rule: RepeatRule, known: Sequence[tuple[float, float]],
                          group: Mapping[str, Any]) -> None:
    """The auto configuration's record (schema ``paretopipe.repeats`` v1; docs/results.md)."""
    from paretopipe.results import utc_now

    verdict = rule.verdict(known) or "incomplete"  # incomplete: runs failed before the minimum
    rel = relative_ci(known)
    doc = {
        "schema": REPEATS_SCHEMA, "schema_version": REPEATS_SCHEMA_VERSION, "created_utc": utc_now(),
        "model": model, "network": task.condition, "backend": task.backend, **dict(group),
        "config": task.config.as_dict(), "label": task.config.label, "rule": rule.as_dict(),
        "runs": len(known), "verdict": verdict,
        "latency_s": [v[0] for v in known], "throughput_img_s": [v[1] for v in known],
        "relative_ci95": {"latency": _finite(rel[0]), "throughput": _finite(rel[1])},
    }
    from paretoio.files import write_json_atomic

    write_json_atomic(path, doc)  # a record, not a run file: replaced, the latest word on the configuration


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
