"""From configurations (repeats aggregated) to per-group frontiers.

A *configuration* is everything that defines a run but its repeat index: the columns in
``CONFIG_COLUMNS``. Runs sharing a configuration are repeats, summarised by
:func:`analysis.frames.aggregate` (pandas, SciPy) into :class:`ConfigPoint` objects.
Configurations are then split into *groups* by the ``group_by`` columns (default: model, network
condition, backend); each group gets its own non-dominated sorting, hypervolume and knee point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from analysis import AnalysisError
from analysis.frontier import (
    EXCLUDED,
    duplicate_sets,
    hypervolume,
    knee_index,
    nondominated_ranks,
    tied_objectives,
    to_minimisation,
    uncertain_memberships,
)
from analysis.metrics import METRICS, Metric, Sense, metric

__all__ = [
    "CONFIG_COLUMNS",
    "GROUP_COLUMNS",
    "DEFAULT_GROUP_BY",
    "Objective",
    "Stat",
    "ConfigPoint",
    "GroupResult",
    "analyse",
    "parse_objectives",
    "parse_group_by",
    "parse_reference",
    "default_reference",
    "FIDELITY_OBJECTIVES",
    "analyse_fidelity",
]

CONFIG_COLUMNS = ("model", "network", "backend", "placement", "input_size", "batch_size",
                  "window", "threads", "codec", "splits")
GROUP_COLUMNS = ("model", "network", "backend", "placement", "input_size", "batch_size",
                 "window", "threads", "codec", "num_stages")
DEFAULT_GROUP_BY = ("model", "network", "backend")
REFERENCE_MARGIN = 0.1  # default reference point: nadir + 10% of the range, per objective


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (ddof=1), 95% CI half-width (Student t) and the count of
    finite values of one metric over a configuration's repeats. ``std`` and ``ci95`` are NaN
    below two values; every field but ``n`` is NaN when there is none."""

    mean: float
    std: float
    ci95: float
    n: int


@dataclass(frozen=True)
class Objective:
    name: str
    sense: Sense

    @property
    def metric(self) -> Metric:
        return METRICS[self.name]

    def __str__(self) -> str:
        return f"{self.name}:{self.sense.value}"


@dataclass(frozen=True)
class ConfigPoint:
    """One configuration with its repeats summarised."""

    config: tuple[tuple[str, object], ...]  # (column, value) for every CONFIG_COLUMNS entry
    run_ids: tuple[str, ...]
    stats: Mapping[str, Stat]  # every metric name
    compute_s: tuple[float, ...]  # mean per stage over repeats
    hop_transfer_s: tuple[float, ...]
    hop_bytes: tuple[float, ...]

    def get(self, column: str) -> object:
        if column == "num_stages":
            return len(self.splits) + 1
        return dict(self.config)[column]

    @property
    def splits(self) -> tuple[int, ...]:
        return dict(self.config)["splits"]  # type: ignore[return-value]

    @property
    def split_label(self) -> str:
        return ",".join(str(k) for k in self.splits)

    def mean(self, name: str) -> float:
        return self.stats[name].mean


@dataclass(frozen=True)
class GroupResult:
    """The frontier of one group of configurations, for the chosen objectives."""

    group: tuple[tuple[str, object], ...]  # (column, value) for every group_by column
    points: tuple[ConfigPoint, ...]  # sorted: rank, then objectives
    objectives: tuple[Objective, ...]
    ranks: tuple[int, ...]  # per point; EXCLUDED when an objective is NaN
    excluded: Mapping[int, str]  # point index -> why it is not ranked
    duplicates: Mapping[int, tuple[int, ...]]  # point index -> the other indices equal to it
    ties: Mapping[int, tuple[str, ...]]  # frontier point index -> objectives tied with another
    knee: int | None  # point index of the knee, None when the frontier is empty
    reference: tuple[float, ...]  # natural units, one per objective
    hypervolume: float  # in minimisation space, product of the objectives' units
    hypervolume_normalised: float  # hypervolume / volume of the box [ideal, reference]
    varying: tuple[str, ...]  # configuration columns (besides splits) that vary in the group
    #: point index -> why its frontier membership is uncertain given the 95% CIs
    uncertain: Mapping[int, str] = field(default_factory=dict)
    #: point index -> why its membership could not be judged (one run: no confidence interval);
    #: such a point is never "exact" and is not in ``uncertain`` (DESIGN decision 13)
    unknown: Mapping[int, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return " · ".join(_fmt(v) for _, v in self.group) or "all runs"

    @property
    def frontier(self) -> list[int]:
        return [i for i, r in enumerate(self.ranks) if r == 0]

    def label(self, i: int) -> str:
        """Short label of point ``i`` within its group: the split(s), plus what else varies."""
        p = self.points[i]
        # the sweep dimensions first, in the planner's order (k=8 w4 b8), then anything else
        order = sorted(self.varying, key=lambda c: (_LABEL_ORDER.index(c) if c in _LABEL_ORDER else len(_LABEL_ORDER)))
        extra = [f"{_SHORT.get(c, '')}{_fmt(p.get(c))}" for c in order]
        # a replayed configuration says so wherever its label shows its figures (decision 15)
        replayed = ["(replayed)"] if REPLAY_MARK in str(p.get("placement") or "") else []
        return " ".join([f"k={p.split_label}", *extra, *replayed])


_LABEL_ORDER = ("window", "batch_size", "codec")
#: In a placement, the mark of a replayed stage (analysis.loading: "host:cpu[replayed cpu@pi4 #1a2b3c4d]").
REPLAY_MARK = "[replayed "
_SHORT = {"batch_size": "b", "window": "w", "input_size": "px", "threads": "t", "codec": ""}


def _fmt(value: object) -> str:
    if value is None:
        return "?"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


# --- parsing flags --------------------------------------------------------------------------

def parse_objectives(text: str) -> tuple[Objective, ...]:
    """``"latency:min,throughput:max"`` → objectives; a bare name takes its natural sense."""
    objectives: list[Objective] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, sense = item.partition(":")
        name = name.strip()
        try:
            m = metric(name)
        except KeyError as exc:
            raise AnalysisError(str(exc.args[0])) from None
        if sense:
            try:
                chosen = Sense(sense.strip().lower())
            except ValueError:
                raise AnalysisError(f"objective {item!r}: sense must be 'min' or 'max'") from None
        else:
            chosen = m.sense
        if any(o.name == name for o in objectives):
            raise AnalysisError(f"objective {name!r} is given twice")
        objectives.append(Objective(name, chosen))
    if len(objectives) < 2:
        raise AnalysisError(f"--objectives needs at least two objectives, got {text!r}")
    return tuple(objectives)


def parse_group_by(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    for c in columns:
        if c not in GROUP_COLUMNS:
            raise AnalysisError(f"--group-by: unknown column {c!r}; valid: "
                                f"{', '.join(GROUP_COLUMNS)}")
    if len(set(columns)) != len(columns):
        raise AnalysisError(f"--group-by: a column is given twice in {text!r}")
    return columns


def parse_reference(text: str, objectives: Sequence[Objective]) -> dict[str, float]:
    """``"latency=2.0,throughput=0"`` → {name: value in natural units}."""
    names = {o.name for o in objectives}
    out: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or name not in names:
            raise AnalysisError(f"--reference: {item!r} must be OBJECTIVE=VALUE with OBJECTIVE "
                                f"one of {', '.join(sorted(names))}")
        try:
            number = float(value)
        except ValueError:
            raise AnalysisError(f"--reference: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise AnalysisError(f"--reference: {name} must be finite")
        out[name] = number
    return out


# --- ordering -------------------------------------------------------------------------------

def _sort_key(value: object) -> tuple:
    """Order None first, numbers numerically, strings alphabetically, tuples element-wise."""
    if value is None:
        return (0,)
    if isinstance(value, tuple):
        return (1, tuple(_sort_key(v) for v in value))
    if isinstance(value, (int, float)):
        return (2, float(value))
    return (3, str(value))


# --- frontiers per group --------------------------------------------------------------------

def default_reference(points: Sequence[ConfigPoint], objectives: Sequence[Objective]
                      ) -> tuple[float, ...]:
    """Nadir (worst finite mean over all points) moved 10% of the range further, per objective.

    Computed over every group at once so that hypervolumes of different groups (network
    conditions, backends) are comparable. An objective without spread moves by 10% of its
    magnitude (1.0 if it is 0). Returned in natural units (a lower bound for ``max`` objectives).
    """
    ref = []
    for o in objectives:
        values = np.array([p.mean(o.name) for p in points], dtype=float)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            ref.append(math.nan)
            continue
        lo, hi = float(values.min()), float(values.max())
        margin = REFERENCE_MARGIN * (hi - lo) if hi > lo else (
            REFERENCE_MARGIN * abs(hi) if hi != 0 else 1.0)
        ref.append(hi + margin if o.sense is Sense.MIN else lo - margin)
    return tuple(ref)


def _ideal(points: Sequence[ConfigPoint], objectives: Sequence[Objective]) -> np.ndarray:
    values = to_minimisation([[p.mean(o.name) for o in objectives] for p in points],
                             [o.sense for o in objectives])
    with np.errstate(all="ignore"):
        return np.array([np.nanmin(c) if np.isfinite(c).any() else math.nan for c in values.T])


def analyse(
    points: Sequence[ConfigPoint],
    objectives: Sequence[Objective],
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    reference: Mapping[str, float] | None = None,
) -> list[GroupResult]:
    """Split ``points`` into groups and compute each group's frontier, hypervolume and knee."""
    if not points:
        return []
    senses = [o.sense for o in objectives]
    ref = list(default_reference(points, objectives))
    for i, o in enumerate(objectives):
        if reference and o.name in reference:
            ref[i] = reference[o.name]
    ref_min = to_minimisation([ref], senses)[0]
    ideal = _ideal(points, objectives)
    box = float(np.prod(ref_min - ideal)) if np.isfinite(ref_min - ideal).all() else math.nan

    groups: dict[tuple[tuple[str, object], ...], list[ConfigPoint]] = {}
    for p in points:
        groups.setdefault(tuple((c, p.get(c)) for c in group_by), []).append(p)

    results = []
    for key in sorted(groups, key=lambda k: tuple(_sort_key(v) for _, v in k)):
        members = groups[key]
        values = np.array([[p.mean(o.name) for o in objectives] for p in members], dtype=float)
        ranks = nondominated_ranks(values, senses)
        # order: ranked points by rank then objectives, excluded ones last
        order = sorted(range(len(members)), key=lambda i: (
            ranks[i] == EXCLUDED, ranks[i], tuple(to_minimisation([values[i]], senses)[0])))
        members = [members[i] for i in order]
        values, ranks = values[order], ranks[order]
        results.append(_group_result(key, members, values, ranks, objectives, ref, ref_min, box,
                                     group_by))
    return results


def _group_result(key, members, values, ranks, objectives, ref, ref_min, box, group_by
                  ) -> GroupResult:
    senses = [o.sense for o in objectives]
    excluded = {
        i: "no value for " + ", ".join(
            o.name for j, o in enumerate(objectives) if not math.isfinite(values[i, j]))
        for i in range(len(members)) if ranks[i] == EXCLUDED
    }
    duplicates: dict[int, tuple[int, ...]] = {}
    for dup in duplicate_sets(values):
        for i in dup:
            duplicates[i] = tuple(j for j in dup if j != i)
    front = [i for i in range(len(members)) if ranks[i] == 0]
    ties = {i: tuple(objectives[c].name for c in cols)
            for i, cols in tied_objectives(values, front).items()}
    front_min = to_minimisation(values[front], senses) if front else np.empty((0, len(senses)))
    knee = front[knee_index(front_min)] if front else None
    if np.isfinite(ref_min).all() and front:
        hv = hypervolume(front_min, ref_min)
    else:
        hv = math.nan
    halves = np.array([[m.stats[o.name].ci95 for o in objectives] for m in members], dtype=float)
    flags = uncertain_memberships(values, halves, senses) if len(members) else np.zeros(0, dtype=bool)
    unknown = {i: (f"{len(members[i].run_ids)} run: no confidence interval" if len(members[i].run_ids) == 1 else
                   f"{len(members[i].run_ids)} runs, but no confidence interval for "
                   + ", ".join(o.name for j, o in enumerate(objectives) if not math.isfinite(halves[i, j])))
               for i in range(len(members)) if ranks[i] != EXCLUDED and not np.isfinite(halves[i]).all()}
    uncertain = {i: ("on the frontier, but within the 95% CIs another configuration could dominate it"
                     if ranks[i] == 0 else
                     "dominated, but within the 95% CIs it could be on the frontier")
                 for i in range(len(members)) if flags[i] and i not in unknown}
    varying = tuple(
        c for c in CONFIG_COLUMNS
        if c != "splits" and c not in group_by and len({m.get(c) for m in members}) > 1
    )
    return GroupResult(
        group=key,
        points=tuple(members),
        objectives=tuple(objectives),
        ranks=tuple(int(r) for r in ranks),
        excluded=excluded,
        duplicates=duplicates,
        ties=ties,
        knee=knee,
        reference=tuple(ref),
        hypervolume=hv,
        hypervolume_normalised=hv / box if box and math.isfinite(box) and box > 0 else math.nan,
        varying=varying,
        uncertain=uncertain,
        unknown=unknown,
    )


# --- fidelity -------------------------------------------------------------------------------

#: The three-objective frontier the report shows when runs measured fidelity (issue 16).
FIDELITY_OBJECTIVES = (Objective("latency", Sense.MIN), Objective("throughput", Sense.MAX),
                       Objective("agreement", Sense.MAX))


def analyse_fidelity(points: Sequence[ConfigPoint], group_by: Sequence[str] = DEFAULT_GROUP_BY
                     ) -> list[GroupResult]:
    """:func:`analyse` with :data:`FIDELITY_OBJECTIVES`, for the groups where at least one
    configuration has a measured agreement (the others are left out); ``[]`` when none has.
    Within a kept group, a configuration without agreement is excluded and listed, as usual."""
    measured = {tuple((c, p.get(c)) for c in group_by) for p in points
                if math.isfinite(p.mean("agreement"))}
    if not measured:
        return []
    return [r for r in analyse(points, FIDELITY_OBJECTIVES, group_by) if r.group in measured]
