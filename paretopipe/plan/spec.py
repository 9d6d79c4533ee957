"""What a sweep covers and what of it is left: the spec, its tasks, run ids, the resume rule
(the package doc) and the plan that applies it to a results folder."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError
from paretopipe.plan.grammar import Configuration
from paretopipe.plan.repeats import RepeatRule

__all__ = ["SweepSpec", "Task", "Plan", "run_id", "config_id", "objectives_of", "run_state", "set_aside", "make_plan",
           "IDENTITY_FILE", "sweep_identity"]


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


#: the controller's sweep identity, kept in its results folder (not ``.json``: no result file)
IDENTITY_FILE = ".sweep-identity"


def sweep_identity(results_dir: str | os.PathLike[str], sweep_id: str) -> str:
    """The identity of the sweep whose controller folder is ``results_dir``: a random token,
    made the first time the folder is planned and kept in it (:data:`IDENTITY_FILE`).

    The devices keep their copies of the sweep's runs under this token (DESIGN decision 14), so
    a fresh results folder gets a fresh token and fresh runs, while planning the same folder
    again resumes it with the devices' runs that were not fetched yet."""
    import uuid

    from paretoio.files import write_json_atomic

    path = Path(results_dir) / IDENTITY_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        token = str(doc["token"])
    except FileNotFoundError:
        token = f"{uuid.uuid4().hex[:16]}"
        try:
            write_json_atomic(path, {"sweep_id": sweep_id, "token": token,
                                     "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                              exclusive=True)
        except FileExistsError:  # planned at the same time elsewhere: that token stands
            return sweep_identity(results_dir, sweep_id)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable sweep identity ({exc}); delete it to start this folder's sweep "
                          "afresh, or plan into a new results folder") from None
    if not token.isalnum():
        raise ConfigError(f"{path}: the sweep identity {token!r} is not a plain token; delete the file to start afresh")
    return token


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
