"""The one sweep planner and runner: what a sweep runs, what is already done, and working through it.

Both ``paretopipe sweep`` (local workers on loopback) and the Ansible suite (``roles/sweep`` on
the controller, ``roles/source_runner`` on the source device) plan, resume and name runs here;
the roles call ``python -m paretopipe.plan make|run`` and hold no logic of their own.

**A configuration** is one value of every sweep dimension (:data:`DIMENSIONS`): split points,
window, batch size. Configurations are compared (frontier, knee, hypervolume) within a *group*:
model x network condition x backend. A run is one configuration in one group, repeated.

**The split grammar** (the same everywhere; docs/ansible.md, *Split points*). A chain of ``D``
devices runs ``D - 1`` split points per run. ``splits`` is a comma list of items:

- ``all``: every split point ``0..N`` of the model;
- ``K``: the split point K;
- ``K1:K2`` (``D - 1`` points, non-decreasing): one chain named directly.

The named points (``all`` and each ``K``) make every non-decreasing ``(D - 1)``-tuple of
them; ``K1:K2`` items are added as they are. So on two devices ``all`` is ``0..N``, and on three
devices ``all`` is every pair ``k1 <= k2``.

**The resume rule** (one, everywhere). A run is done when ``<run_id>.json`` says ``ok``. A run
that fails has its file set aside at once as ``<run_id>.failed-<UTC time>.json`` (kept: it says
what went wrong); any other ``<run_id>.json`` that does not say ``ok`` (unreadable, failed, left
by an older version) is set aside the same way before its run is done again. So running the same
sweep again runs exactly the runs that are not ok.

**Repeats** are a count, or ``auto`` (:class:`RepeatRule`): repeat a configuration until the
95% confidence interval (Student t) of both objectives, latency and throughput, is within
``target`` of their means, at least ``minimum`` and at most ``maximum`` times. Each auto
configuration gets a record ``<configuration id>.repeats.json`` (schema ``paretopipe.repeats``)
saying whether it reached the target or hit the maximum; the analysis reads it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError

__all__ = ["DIMENSIONS", "Configuration", "RepeatRule", "SweepSpec", "Task", "Plan", "Outcome", "Progress",
           "parse_splits", "parse_positive_list", "parse_repeats", "make_plan", "run_state", "set_aside",
           "work_through", "objectives_of", "REPEATS_SCHEMA"]

#: The sweep dimensions of a configuration, in the order labels and run ids name them. A new
#: dimension is a field of :class:`Configuration`, a list in :class:`SweepSpec` and a name here.
DIMENSIONS = ("splits", "window", "batch_size", "codec")

REPEATS_SCHEMA = "paretopipe.repeats"
REPEATS_SCHEMA_VERSION = 1


# --- configurations ------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Configuration:
    """One value of every sweep dimension."""

    splits: tuple[int, ...]
    window: int = 1
    batch_size: int = 8
    codec: str = "none"  # of the tensor crossing each split (paretopipe.codecs)

    @property
    def label(self) -> str:
        """``k=8 w4 b8`` (``k=3,9`` for three stages; `` int8`` added for a codec other than none):
        what tables, plots and logs call it."""
        codec = "" if self.codec == "none" else f" {self.codec}"
        return f"k={','.join(map(str, self.splits))} w{self.window} b{self.batch_size}{codec}"

    def as_dict(self) -> dict[str, Any]:
        return {"splits": list(self.splits), "window": self.window, "batch_size": self.batch_size, "codec": self.codec}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Configuration:
        return cls(splits=tuple(int(k) for k in d["splits"]), window=int(d["window"]),
                   batch_size=int(d["batch_size"]), codec=str(d.get("codec", "none")))


def parse_splits(text: Any, num_blocks: int, devices: int, *, model: str = "MODEL",
                 flag: str = "splits") -> list[tuple[int, ...]]:
    """The split grammar (module doc): ``all`` / ``"0,4,9"`` / ``[0, 4, 9]`` / ``"3:9,4:12"`` ->
    sorted, distinct tuples of ``devices - 1`` split points."""
    if devices < 2:
        raise ConfigError(f"a chain needs at least two devices (a source and a worker), got {devices}")
    hops = devices - 1
    items = [str(x).strip() for x in text] if isinstance(text, (list, tuple)) else \
        [p.strip() for p in str(text).split(",")]
    items = [i for i in items if i]
    if not items:
        raise ConfigError(f"{flag} is empty; use 'all' or a comma list such as 0,4,9")
    points: set[int] = set()
    explicit: set[tuple[int, ...]] = set()
    for item in items:
        if item == "all":
            points.update(range(num_blocks + 1))
            continue
        try:
            values = tuple(int(v) for v in item.split(":"))
        except ValueError:
            raise ConfigError(f"{flag}: {item!r} is not a split point; use all, K or K1:K2 (comma-separated), "
                              f"e.g. 0,4,9") from None
        for k in values:
            if not 0 <= k <= num_blocks:
                raise ConfigError(f"{flag}: split {k} is out of range for {model} (valid: 0..{num_blocks}); "
                                  f"see `paretopipe splits {model}`")
        if len(values) == 1:
            points.add(values[0])
        elif len(values) != hops:
            raise ConfigError(f"{flag}: {item!r} has {len(values)} points but a chain of {devices} devices "
                              f"runs {hops} per run; give {hops} point(s) per K1:K2 item, or a chain of {len(values) + 1} devices")
        elif list(values) != sorted(values):
            raise ConfigError(f"{flag}: {item!r} must be non-decreasing")
        else:
            explicit.add(values)
    return sorted(set(itertools.combinations_with_replacement(sorted(points), hops)) | explicit)


def parse_positive_list(text: Any, flag: str, example: str = "1,4") -> tuple[int, ...]:
    """``"1,4"`` / ``[1, 4]`` / ``4`` -> sorted distinct positive integers (``flag`` names the option)."""
    if isinstance(text, (list, tuple)):
        items = [str(x).strip() for x in text]
    else:
        items = [p.strip() for p in str(text).split(",")]
    items = [i for i in items if i]
    if not items:
        raise ConfigError(f"{flag} is empty; give a comma list of positive integers, e.g. {flag} {example}")
    out = set()
    for item in items:
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1 or str(value) != item.lstrip("+"):
            raise ConfigError(f"{flag}: {item!r} is not a positive integer; give a comma list such as {example}")
        out.add(value)
    return tuple(sorted(out))


# --- repeats -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RepeatRule:
    """``count`` repeats, or (``count`` None) auto: until the 95% CI half-width of latency and of
    throughput is within ``target`` x mean, between ``minimum`` and ``maximum`` repeats."""

    count: int | None = 1
    target: float = 0.05
    minimum: int = 3
    maximum: int = 10

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 1:
            raise ConfigError(f"repeats must be at least 1, or auto (got {self.count})")
        if self.count is None:
            if not 0 < self.target < 1:
                raise ConfigError(f"the repeats target must be a fraction in (0, 1), e.g. 0.05 (got {self.target})")
            if not 2 <= self.minimum <= self.maximum:
                raise ConfigError(f"auto repeats need 2 <= minimum <= maximum (got {self.minimum} and "
                                  f"{self.maximum}); a confidence interval needs two runs")

    @property
    def auto(self) -> bool:
        return self.count is None

    @property
    def most(self) -> int:
        """The most runs a configuration can take."""
        return self.maximum if self.count is None else self.count

    def verdict(self, values: Sequence[tuple[float, float]]) -> str | None:
        """For auto: ``"reached"`` (target met with at least ``minimum`` runs), ``"max"`` (``maximum``
        runs, target not met), or None (run another). ``values``: (latency, throughput) per ok run."""
        if self.count is not None:
            return "done" if len(values) >= self.count else None
        n = len(values)
        if n >= self.minimum and all(rel <= self.target for rel in relative_ci(values)):
            return "reached"
        return "max" if n >= self.maximum else None

    def as_dict(self) -> dict[str, Any]:
        if self.count is not None:
            return {"mode": "count", "count": self.count}
        return {"mode": "auto", "target": self.target, "min": self.minimum, "max": self.maximum}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RepeatRule:
        if d.get("mode") == "auto":
            return cls(count=None, target=float(d["target"]), minimum=int(d["min"]), maximum=int(d["max"]))
        return cls(count=int(d["count"]))


def relative_ci(values: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """95% CI half-width / |mean| of latency and of throughput over ``values`` (inf below two)."""
    from analysis.frames import mean_ci95

    out = []
    for column in zip(*values) if values else ((), ()):
        mean, half, _ = mean_ci95(column)
        out.append(half / abs(mean) if math.isfinite(half) and mean else math.inf)
    return (out[0], out[1])


def parse_repeats(value: Any, *, target: float = 0.05, minimum: int = 3, maximum: int = 10,
                  flag: str = "repeats") -> RepeatRule:
    """``3`` or ``"auto"`` -> a :class:`RepeatRule`."""
    text = str(value).strip().lower()
    if text == "auto":
        return RepeatRule(count=None, target=float(target), minimum=int(minimum), maximum=int(maximum))
    try:
        count = int(text)
    except ValueError:
        raise ConfigError(f"{flag}: {value!r} is neither a count nor 'auto'; give e.g. {flag} 3 or {flag} auto") from None
    if count < 1:
        raise ConfigError(f"{flag} must be at least 1, or auto (got {count})")
    return RepeatRule(count=count)


# --- the plan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepSpec:
    """What a sweep covers: the dimensions' values, the groups and the repeat rule."""

    model: str
    num_blocks: int
    devices: int
    splits: tuple[tuple[int, ...], ...]
    windows: tuple[int, ...] = (1,)
    batch_sizes: tuple[int, ...] = (8,)
    codecs: tuple[str, ...] = ("none",)
    conditions: tuple[str, ...] = ("none",)
    backends: tuple[str, ...] = ("tcp",)
    repeats: RepeatRule = field(default_factory=RepeatRule)
    #: strategy=predicted: per condition, the configurations to run (others: every one)
    selection: Mapping[str, frozenset[Configuration]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.conditions or not self.backends:
            raise ConfigError("give at least one network condition and one backend")
        if not self.splits or not self.windows or not self.batch_sizes or not self.codecs:
            raise ConfigError("every sweep dimension needs at least one value")

    def configurations(self, condition: str | None = None) -> list[Configuration]:
        every = [Configuration(s, w, b, c) for s, w, b, c in
                 itertools.product(self.splits, self.windows, self.batch_sizes, self.codecs)]
        chosen = self.selection.get(condition) if condition is not None else None
        return every if chosen is None else [c for c in every if c in chosen]


@dataclass(frozen=True)
class Task:
    """One configuration in one group: the repeats it may still run, and the (latency,
    throughput) of the ok repeats that are done already (what ``auto`` decides on)."""

    condition: str
    backend: str
    config: Configuration
    repeats: tuple[int, ...]
    known: tuple[tuple[float, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"condition": self.condition, "backend": self.backend, "config": self.config.as_dict(),
                "repeats": list(self.repeats), "known": [list(v) for v in self.known]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        return cls(condition=str(d["condition"]), backend=str(d["backend"]), config=Configuration.from_dict(d["config"]),
                   repeats=tuple(int(r) for r in d["repeats"]), known=tuple((float(a), float(b)) for a, b in d["known"]))


@dataclass(frozen=True)
class Plan:
    spec: SweepSpec
    tasks: tuple[Task, ...]  # pending, condition by condition
    total: int  # runs the sweep has (auto: at most)
    done: int  # of them already ok

    @property
    def pending(self) -> int:
        return sum(len(t.repeats) for t in self.tasks)

    @property
    def full_total(self) -> int:
        """Runs without a selection (what strategy=predicted saves against)."""
        s = self.spec
        return (len(s.splits) * len(s.windows) * len(s.batch_sizes) * len(s.codecs) * len(s.conditions)
                * len(s.backends) * s.repeats.most)

    def rounds(self) -> list[tuple[str, list[Task]]]:
        """The pending tasks per network condition, in the spec's order (one shaping each)."""
        out = []
        for cond in self.spec.conditions:
            mine = [t for t in self.tasks if t.condition == cond]
            if mine:
                out.append((cond, mine))
        return out


def run_id(model: str, task: Task | None = None, repeat: int = 0, *, condition: str = "", backend: str = "",
           config: Configuration | None = None) -> str:
    """The file-name stem of a run (:func:`paretopipe.results.run_id`)."""
    from paretopipe.results import run_id as make

    cfg = task.config if task else config
    assert cfg is not None
    return make(model=model, splits=cfg.splits, backend=task.backend if task else backend,
                network=task.condition if task else condition, batch_size=cfg.batch_size, window=cfg.window,
                repeat=repeat, codec=cfg.codec)


def config_id(model: str, task: Task) -> str:
    """The stem naming a configuration in a group: its run id without the repeat."""
    return run_id(model, task, 0).rsplit("-r", 1)[0]


def objectives_of(doc: Mapping[str, Any]) -> tuple[float, float]:
    """(latency mean s per batch, throughput img/s) of an ok result document."""
    s = doc["summary"]
    return float(s["latency_s"]["mean"]), float(s["throughput_img_s"])


def run_state(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any] | None]:
    """``("ok", doc)``, ``("other", None)`` (the file exists but does not say ok) or ``(None, None)``."""
    path = Path(path)
    if not path.exists():
        return None, None
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return "other", None
    if isinstance(doc, dict) and doc.get("status") == "ok":
        return "ok", doc
    return "other", None


def set_aside(path: str | os.PathLike[str]) -> Path:
    """Rename ``<run_id>.json`` to ``<run_id>.failed-<UTC time>[-N].json``; return the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.stem}.failed-{stamp}.json")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.stem}.failed-{stamp}-{n}.json")
    path.rename(target)
    return target


def make_plan(spec: SweepSpec, results_dir: str | os.PathLike[str]) -> Plan:
    """Every run of ``spec``, minus the ones whose file in ``results_dir`` says ok."""
    results = Path(results_dir)
    rule = spec.repeats
    tasks: list[Task] = []
    total = done = 0
    for cond in spec.conditions:
        for config in spec.configurations(cond):
            for backend in spec.backends:
                proto = Task(cond, backend, config, ())
                known, todo = [], []
                for r in range(rule.most):
                    state, doc = run_state(results / f"{run_id(spec.model, proto, r)}.json")
                    if state == "ok" and doc is not None:
                        known.append(objectives_of(doc))
                    else:
                        todo.append(r)
                if rule.auto:
                    verdict = rule.verdict(known)
                    total += len(known) + (0 if verdict else len(todo))
                    done += len(known)
                    if verdict:
                        continue
                else:
                    total += rule.most
                    done += len(known)
                if todo:
                    tasks.append(Task(cond, backend, config, tuple(todo), tuple(known)))
    return Plan(spec, tuple(tasks), total, done)


# --- the runner ----------------------------------------------------------------------------------

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


def work_through(model: str, tasks: Sequence[Task], rule: RepeatRule, results_dir: str | os.PathLike[str],
                 execute: Callable[[Task, int, Path], Outcome], *,
                 progress: Callable[[Progress], None] | None = None,
                 describe: Callable[[Task], Mapping[str, Any]] | None = None) -> list[RunReport]:
    """Run ``tasks`` under the resume rule and the repeat rule; return one report per run.

    ``execute(task, repeat, path)`` runs one run whose file is ``path`` and says how it went.
    ``describe(task)`` gives what an auto configuration's repeats record says about its group
    (model, network, backend, ...)."""
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    reports: list[RunReport] = []
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    left = sum(len(t.repeats) for t in tasks)
    t0 = time.monotonic()
    for task in tasks:
        known = list(task.known)
        tried = 0
        for repeat in task.repeats:
            if rule.verdict(known) is not None:
                break
            tried += 1
            rid = run_id(model, task, repeat)
            path = results / f"{rid}.json"
            state, doc = run_state(path)
            if state == "ok" and doc is not None:
                rep = RunReport(rid, "skipped", str(path), measured_s=float(doc["validity"]["duration_s"]))
                known.append(objectives_of(doc))
                line = f"{task.config.label} {task.backend} {task.condition} r{repeat}: skipped (result file says ok)"
            else:
                if state == "other":
                    set_aside(path)
                out = execute(task, repeat, path)
                if out.ok and out.doc is not None:
                    values = objectives_of(out.doc)
                    known.append(values)
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
            if progress is not None:
                progress(Progress(len(reports), counts["ok"], counts["failed"], counts["skipped"], left,
                                  time.monotonic() - t0, line))
        left -= len(task.repeats) - tried  # auto stopped early: those repeats will not come
        if rule.auto:
            _write_repeats_record(results / f"{config_id(model, task)}.repeats.json", model, task, rule, known,
                                  describe(task) if describe else {})
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


# --- the Ansible roles' entry points: python -m paretopipe.plan make|run --------------------------

def spec_from_settings(s: Mapping[str, Any]) -> SweepSpec:
    """A :class:`SweepSpec` from the sweep role's settings (playbooks/group_vars/all/sweep.yml)."""
    from paretopipe.codecs import parse_codec_list
    from paretopipe.splitting import num_blocks as count_blocks

    devices = len(s["chain"])
    # The shards' manifest already says how many blocks the model has; without it, ask the model
    # (which imports torch and traces it: seconds on a small controller).
    n = int(s.get("num_blocks") or 0) or count_blocks(s["model"], num_classes=int(s["num_classes"]))
    splits = parse_splits(s["splits"], n, devices, model=s["model"], flag="splits")
    windows = parse_positive_list(s.get("windows", s.get("window", 1)), "windows", "1,4")
    batch_sizes = parse_positive_list(s.get("batch_sizes", s.get("batch_size", 8)), "batch_sizes", "1,8")
    codecs = tuple(c.name for c in parse_codec_list(s.get("codecs") or "none"))
    rule = parse_repeats(s["repeats"], target=float(s.get("repeats_target", 0.05)),
                         minimum=int(s.get("repeats_min", 3)), maximum=int(s.get("repeats_max", 10)))
    selection: dict[str, frozenset[Configuration]] = {}
    for cond, chosen in (s.get("selection_by_condition") or {}).items():
        selection[cond] = frozenset(Configuration.from_dict(c) for c in chosen)
    conditions = tuple(s["conditions"])
    backends = tuple(s["backends"])
    return SweepSpec(model=s["model"], num_blocks=n, devices=devices, splits=tuple(splits), windows=windows,
                     batch_sizes=batch_sizes, codecs=codecs, conditions=conditions, backends=backends, repeats=rule,
                     selection=selection)


def _controller_plan(s: Mapping[str, Any]) -> dict[str, Any]:
    """``make``: the plan as the sweep playbook uses it (rounds per condition, each a device list)."""
    spec = spec_from_settings(s)
    plan = make_plan(spec, s["results_dir"])
    backends = list(spec.backends)
    ips = list(s["chain_ips"])
    template = {
        "model": s["model"], "sweep_id": s["sweep_id"], "warmup": int(s["warmup"]),
        "batches": None if float(s.get("duration") or 0) else int(s["batches"]),
        "duration_s": float(s["duration"]) if float(s.get("duration") or 0) else None,
        "min_batches": int(s["min_batches"]), "min_duration_s": float(s["min_duration"]), "input": s["input"],
        "num_classes": int(s["num_classes"]), "input_size": int(s["input_size"]) if int(s.get("input_size") or 0) else None,
        "seed": int(s["seed"]), "device": s["source_device"],
        "threads": int(s["source_threads"]) if int(s.get("source_threads") or 0) > 0 else None,
        "connect_timeout_s": float(s["connect_timeout"]), "timeout_s": float(s["receive_timeout"]),
    }
    stages = {b: [f"{ip}:{int(s['worker_port_base']) + i}" for ip in ips[1:]] for i, b in enumerate(backends)}
    rounds = [{"condition": cond, "runs": sum(len(t.repeats) for t in tasks),
               "tasks": [t.as_dict() for t in tasks]} for cond, tasks in plan.rounds()]
    return {
        "sweep_id": s["sweep_id"], "model": spec.model, "num_blocks": spec.num_blocks,
        "chain": list(s["chain"]), "splits": [list(c) for c in spec.splits], "windows": list(spec.windows),
        "batch_sizes": list(spec.batch_sizes), "codecs": list(spec.codecs), "configurations": len(spec.configurations()),
        "repeats": spec.repeats.as_dict(), "total": plan.total, "done": plan.done, "pending": plan.pending,
        "full_total": plan.full_total, "rounds": rounds,
        "device": {"run": template, "stages": stages, "results_dir": s["device_results_dir"],
                   "repeats": spec.repeats.as_dict()},
    }


def _device_run(job: Mapping[str, Any], status_file: Path | None, log: Callable[[str], None]) -> dict[str, Any]:
    """``run``: one round's tasks on the source device, in this process (torch loads once)."""
    from paretopipe.errors import ParetoPipeError
    from paretopipe.runtime.source import RunConfig, RunFailed, run

    dev = job["device"]
    template = dict(dev["run"])
    model = template["model"]
    rule = RepeatRule.from_dict(dev["repeats"])
    tasks = [Task.from_dict(t) for t in job["tasks"]]
    network = dict(job.get("network") or {})

    def execute(task: Task, repeat: int, path: Path) -> Outcome:
        t0 = time.monotonic()
        try:
            cfg = RunConfig(**template, splits=task.config.splits, stages=tuple(dev["stages"][task.backend]), out=path,
                            batch_size=task.config.batch_size, window=task.config.window, codec=task.config.codec,
                            backend=task.backend,
                            network_label=task.condition, network=network, repeat=repeat,
                            run_id=run_id(model, task, repeat))
            doc = run(cfg)
        except RunFailed as exc:
            return Outcome(False, error=str(exc), wall_s=time.monotonic() - t0)
        except ParetoPipeError as exc:  # bad configuration: no file was written
            return Outcome(False, error=str(exc), wall_s=time.monotonic() - t0)
        except TypeError as exc:  # a plan field this version of paretopipe does not know
            return Outcome(False, error=f"plan does not match this paretopipe: {exc}", wall_s=time.monotonic() - t0)
        return Outcome(True, doc, wall_s=time.monotonic() - t0)

    def progress(p: Progress) -> None:
        log(f"{p.last} | {p.line()}")
        if status_file is not None:
            _write_status(status_file, {**p.as_dict(), "finished": False})

    if status_file is not None:
        _write_status(status_file, {**Progress(0, 0, 0, 0, sum(len(t.repeats) for t in tasks), 0.0, "").as_dict(),
                                    "finished": False})
    t0 = time.monotonic()
    reports = work_through(model, tasks, rule, dev["results_dir"], execute, progress=progress)
    files = [r.file for r in reports if r.file]
    files += [str(Path(dev["results_dir"]) / f"{config_id(model, t)}.repeats.json") for t in tasks if rule.auto]
    out = {"runs": [r.as_dict() for r in reports], "files": files, "wall_s": round(time.monotonic() - t0, 4),
           "failed": sum(r.status == "failed" for r in reports)}
    return out


def _write_status(path: Path, doc: Mapping[str, Any]) -> None:
    from paretoio.files import write_json_atomic

    write_json_atomic(path, {**doc, "pid": os.getpid()}, indent=0)


def _wait(status_file: Path, seconds: float, total: int) -> dict[str, Any]:
    """``wait``: block up to ``seconds`` for the runner to finish; its progress as JSON."""
    from paretopipe.polling import poll_until

    seen: dict[str, Any] = {}

    def over() -> bool:
        try:
            doc = json.loads(status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {}
        if not doc.get("finished") and doc.get("pid") and not _alive(int(doc["pid"])):
            doc = {**doc, "finished": True, "last": f"the runner (pid {doc['pid']}) is gone"}  # died without saying so
        seen.clear()
        seen.update(doc)
        return bool(doc.get("finished"))

    poll_until(over, seconds, interval_s=1.0)
    doc = seen
    p = Progress(int(doc.get("done", 0)), int(doc.get("ok", 0)), int(doc.get("failed", 0)),
                 int(doc.get("skipped", 0)), int(doc.get("left", total)), float(doc.get("elapsed_s", 0.0)),
                 str(doc.get("last", "")))
    return {**p.as_dict(), "finished": bool(doc.get("finished")), "line": p.line()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by Ansible's async wrapper) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _bundle(path: Path, files: Iterable[str]) -> None:
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for f in files:
            if Path(f).is_file():
                tar.add(f, arcname=Path(f).name)
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m paretopipe.plan make`` (controller: settings JSON on stdin, plan JSON out),
    ``run --status F --bundle B`` (source device: a round's job on stdin, report JSON out, the
    last line), ``wait --status F --seconds S`` (progress JSON). User mistakes: one line, exit 2."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(prog="python -m paretopipe.plan", description=main.__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("make", help="plan a sweep from its settings (JSON on stdin)")
    run_p = sub.add_parser("run", help="work through a round on the source device (JSON on stdin)")
    run_p.add_argument("--status", type=Path, help="progress file, replaced after every run (for `wait`)")
    run_p.add_argument("--log", type=Path, help="also append progress lines to this file")
    run_p.add_argument("--bundle", type=Path, help="pack the round's files into this .tar.gz")
    wait_p = sub.add_parser("wait", help="wait up to --seconds for a runner; print its progress")
    wait_p.add_argument("--status", type=Path, required=True)
    wait_p.add_argument("--seconds", type=float, default=30.0)
    wait_p.add_argument("--total", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.action == "wait":
            print(json.dumps(_wait(args.status, args.seconds, args.total)))
            return 0
        try:
            doc = json.load(sys.stdin)
        except ValueError as exc:
            raise ConfigError(f"unusable JSON on stdin: {exc}") from None
        if args.action == "make":
            print(json.dumps(_controller_plan(doc)))
            return 0
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        if args.log:
            args.log.parent.mkdir(parents=True, exist_ok=True)
        logs = [open(args.log, "a", encoding="utf-8")] if args.log else []  # noqa: SIM115 (the round's length)

        def log(msg: str) -> None:
            line = f"{time.strftime('%H:%M:%S')} [plan run] {msg}"
            print(line, file=sys.stderr, flush=True)
            for fh in logs:
                fh.write(line + "\n")
                fh.flush()

        try:
            report = _device_run(doc, args.status, log)
            if args.bundle:
                _bundle(args.bundle, report["files"])
        finally:
            if args.status is not None:
                status = json.loads(args.status.read_text(encoding="utf-8")) if args.status.exists() else {}
                _write_status(args.status, {**status, "finished": True})
            for fh in logs:
                fh.close()
        print(json.dumps(report))
        return 0
    except (KeyError, TypeError) as exc:
        print(f"paretopipe.plan: unusable {args.action} input: missing or bad field {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"paretopipe.plan: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from paretopipe.runtime.cores import quiet_waiting
    from paretopipe.threads import exit_code

    quiet_waiting()  # before torch is imported: idle OpenMP threads sleep (docs/performance.md)
    sys.exit(exit_code(main()))
