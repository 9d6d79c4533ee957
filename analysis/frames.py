"""The public Python API: result files as pandas DataFrames.

::

    from analysis import load_runs, aggregate, frontier

    runs = load_runs(["results/"])          # one row per run; runs.attrs["skipped"]: why not others
    configs = aggregate(runs)               # one row per configuration: mean, std, 95% CI, n
    front = frontier(runs, objectives="latency:min,throughput:max", group_by=("model", "network"))

Column names are listed in docs/results.md (*The DataFrames*). ``python -m analysis.pareto`` is a
thin layer over these three functions. The frontier core stays in :mod:`analysis.frontier`
(NumPy); this module does the table work with pandas and the confidence intervals with
:func:`paretoio.stats.mean_ci95` (SciPy).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis import AnalysisError
from analysis.aggregate import (
    CONFIG_COLUMNS,
    DEFAULT_GROUP_BY,
    ConfigPoint,
    GroupResult,
    Objective,
    Stat,
    analyse,
    parse_group_by,
    parse_objectives,
)
from analysis.frontier import EXCLUDED
from analysis.loading import LoadResult, RunRecord, load_results
from analysis.metrics import METRICS
from paretoio.stats import CI_LEVEL, mean_ci95

__all__ = ["load_runs", "aggregate", "frontier", "runs_frame", "config_points", "frontier_frame",
           "mean_ci95", "RUN_COLUMNS", "VECTOR_COLUMNS", "STAT_SUFFIXES"]

ID_COLUMNS = ("path", "source", "run_id", "sweep_id", "repeat")
VECTOR_COLUMNS = ("compute_s", "hop_transfer_s", "hop_bytes")  # tuples: per stage / per hop
#: a replayed run (paretopipe.runtime.replay): whether, its counted overruns, and the analysis's note
REPLAY_COLUMNS = ("replayed", "replay_overruns", "replay_note")
RUN_COLUMNS = (*ID_COLUMNS, *CONFIG_COLUMNS, "num_stages", "valid", *METRICS, *VECTOR_COLUMNS, *REPLAY_COLUMNS,
               "contention")
STAT_SUFFIXES = ("mean", "std", "ci95", "n")
_INT_COLUMNS = ("repeat", "input_size", "batch_size", "window", "threads", "num_stages")


# --- runs ------------------------------------------------------------------------------------

def runs_frame(load: LoadResult) -> pd.DataFrame:
    """The loaded runs as a DataFrame (columns ``RUN_COLUMNS``); ``attrs["skipped"]`` is a
    DataFrame of the skipped files (``path``, ``reason``), ``attrs["files_seen"]`` a count."""

    def row(r: RunRecord) -> dict[str, object]:
        return {"path": str(r.path), "source": r.source, "run_id": r.run_id,
                "sweep_id": r.sweep_id, "repeat": r.repeat,
                **{c: getattr(r, c) for c in CONFIG_COLUMNS}, "num_stages": len(r.splits) + 1,
                "valid": r.valid, **r.metrics,
                **{c: getattr(r, c) for c in VECTOR_COLUMNS}, **{c: getattr(r, c) for c in REPLAY_COLUMNS},
                "contention": r.contention}

    frame = pd.DataFrame([row(r) for r in load.runs], columns=list(RUN_COLUMNS))
    frame = frame.astype({c: "Int64" for c in (*_INT_COLUMNS, "replay_overruns")} | {m: float for m in METRICS}
                         | {"replayed": bool})
    frame.attrs["skipped"] = pd.DataFrame(
        [(str(s.path), s.reason) for s in load.skipped], columns=["path", "reason"])
    frame.attrs["files_seen"] = load.files_seen
    return frame


def load_runs(paths: str | Path | Sequence[str | Path], *, include_invalid: bool = False,
              exclude: Iterable[str | Path] = ()) -> pd.DataFrame:
    """Every usable run under ``paths`` (files, or folders searched recursively), one row each.

    Reads schema-v1 result files and upstream ParetoPipe's files (docs/analysis.md). Files that
    cannot be used are not an error: they are listed with their reasons in
    ``attrs["skipped"]``. Runs whose ``validity.valid`` is false are skipped unless
    ``include_invalid``. A path that does not exist raises :class:`AnalysisError`.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    load = load_results([Path(p) for p in paths], exclude=[Path(p) for p in exclude],
                        include_invalid=include_invalid)
    return runs_frame(load)


# --- configurations --------------------------------------------------------------------------

def _vector_mean(vectors: pd.Series) -> tuple[float, ...]:
    """Element-wise mean of equally long tuples (NaN left out); () when repeats disagree about
    the number of stages, so that such a configuration has no breakdown."""
    if vectors.map(len).nunique() != 1:
        return ()
    return tuple(float(v) for v in pd.DataFrame(vectors.tolist()).mean())


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (``CONFIG_COLUMNS``): its runs' count and ids, and for every
    metric ``{metric}_mean``, ``_std`` (ddof=1), ``_ci95`` (half-width of the Student-t 95%
    interval of the mean, from ``scipy.stats.t``) and ``_n`` (runs with a finite value).

    NaN and infinities are left out of every statistic; std and CI are NaN below two values.
    Repeats are runs that share a configuration, whichever sweep they come from.
    """
    missing = [c for c in (*CONFIG_COLUMNS, "run_id", *METRICS) if c not in runs.columns]
    if missing:
        raise AnalysisError(f"aggregate: not a runs table (from load_runs); missing columns "
                            f"{', '.join(missing)}")
    values = runs[list(METRICS)].replace([np.inf, -np.inf], np.nan)
    grouped = values.groupby([runs[c] for c in CONFIG_COLUMNS], dropna=False, sort=True)
    mean, std, n = grouped.mean(), grouped.std(ddof=1), grouped.count()
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf(0.5 + CI_LEVEL / 2, (n - 1).where(n > 1))
        ci = std * t / np.sqrt(n)
    table = pd.concat({"mean": mean, "std": std, "ci95": ci, "n": n}, axis=1)
    table.columns = [f"{m}_{s}" for s, m in table.columns]
    table = table[[f"{m}_{s}" for m in METRICS for s in STAT_SUFFIXES]]
    keyed = runs.groupby([runs[c] for c in CONFIG_COLUMNS], dropna=False, sort=True)
    extra = pd.DataFrame({
        "num_stages": keyed["splits"].first().map(len) + 1,
        "n_runs": keyed.size(),
        "run_ids": keyed["run_id"].agg(lambda ids: " ".join(sorted(ids))),
        **({c: keyed[c].agg(_vector_mean) for c in VECTOR_COLUMNS if c in runs.columns}),
    })
    out = pd.concat([extra, table], axis=1).reset_index()
    return out.astype({c: "Int64" for c in _INT_COLUMNS if c in out.columns})


def _py(value: object) -> object:
    """A cell as plain Python: NA/NaN -> None, NumPy scalars -> int/float/str."""
    if isinstance(value, tuple):
        return value
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def config_points(configs: pd.DataFrame) -> list[ConfigPoint]:
    """The rows of :func:`aggregate`'s table as the :class:`ConfigPoint` objects that the
    frontier computation, the plots and the report use."""
    points = []
    for row in configs.to_dict("records"):
        points.append(ConfigPoint(
            config=tuple((c, _py(row[c])) for c in CONFIG_COLUMNS),
            run_ids=tuple(str(row["run_ids"]).split()),
            stats={m: Stat(*(float(row[f"{m}_{s}"]) for s in STAT_SUFFIXES[:3]),
                           int(row[f"{m}_n"])) for m in METRICS},
            **{c: tuple(row.get(c, ())) for c in VECTOR_COLUMNS},
        ))
    return points


# --- frontiers -------------------------------------------------------------------------------

def frontier_frame(results: Sequence[GroupResult]) -> pd.DataFrame:
    """One row per configuration: its group, configuration, label, ``rank`` (0 = frontier; NA
    when excluded), ``on_frontier``, ``knee``, ``duplicate_of``, ``tied_on``,
    ``excluded_reason``, ``membership_uncertain`` (the 95% CIs allow the other verdict), ``membership_unknown`` (no CI: one run), ``n_runs``, each objective's mean/std/ci95/n, the group's hypervolumes
    and the run ids. ``attrs["reference"]``: the hypervolume reference point per objective."""
    objectives = results[0].objectives if results else ()
    group_cols = [c for c, _ in results[0].group] if results else []
    rows = []
    for r in results:
        for i, p in enumerate(r.points):
            row: dict[str, object] = {"group": r.title}
            row |= {c: v for c, v in r.group if c not in CONFIG_COLUMNS}  # num_stages
            row |= {c: p.get(c) for c in CONFIG_COLUMNS}
            row |= {"label": r.label(i), "rank": None if r.ranks[i] == EXCLUDED else r.ranks[i],
                    "on_frontier": r.ranks[i] == 0, "knee": i == r.knee,
                    "duplicate_of": "; ".join(r.label(j) for j in r.duplicates.get(i, ())),
                    "tied_on": ",".join(r.ties.get(i, ())),
                    "excluded_reason": r.excluded.get(i),
                    "membership_uncertain": i in r.uncertain,
                    "membership_unknown": i in r.unknown, "n_runs": len(p.run_ids)}
            for o in objectives:
                s = p.stats[o.name]
                row |= {f"{o.name}_mean": s.mean, f"{o.name}_std": s.std,
                        f"{o.name}_ci95": s.ci95, f"{o.name}_n": s.n}
            row |= {"group_hypervolume": r.hypervolume,
                    "group_hypervolume_normalised": r.hypervolume_normalised,
                    "run_ids": " ".join(p.run_ids)}
            rows.append(row)
    frame = pd.DataFrame(rows)
    if rows:
        frame["rank"] = frame["rank"].astype("Int64")
    frame.attrs["reference"] = ({o.name: v for o, v in zip(objectives, results[0].reference)}
                                if results else {})
    frame.attrs["group_by"] = tuple(group_cols)
    return frame


def _objectives(objectives: str | Sequence[str | Objective]) -> tuple[Objective, ...]:
    if isinstance(objectives, str):
        return parse_objectives(objectives)
    return parse_objectives(",".join(str(o) for o in objectives))


def frontier(df: pd.DataFrame, objectives: str | Sequence[str | Objective] = "latency:min,"
             "throughput:max", group_by: str | Sequence[str] = DEFAULT_GROUP_BY,
             reference: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Non-dominated ranks, knee and hypervolume of every group of configurations.

    ``df`` is a runs table (:func:`load_runs`, filtered as you like) or its :func:`aggregate`.
    ``objectives``: ``"latency:min,throughput:max"`` or a list of such names (a bare name takes
    its natural sense). ``group_by``: columns that split configurations into separate frontiers
    (``()`` for one). ``reference``: the hypervolume reference point in natural units, per
    objective (default: the worst value over all groups moved 10% of the range further).
    Returns :func:`frontier_frame`'s table, ordered by group, then rank.
    """
    objs = _objectives(objectives)
    cols = parse_group_by(group_by if isinstance(group_by, str) else ",".join(group_by))
    configs = df if "n_runs" in df.columns else aggregate(df)
    return frontier_frame(analyse(config_points(configs), objs, cols, reference))
