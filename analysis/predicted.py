"""Predicted against measured: prediction files (``paretopipe predict --out``) next to result files.

A prediction file (schema ``paretopipe.prediction``, docs/predict.md) holds, for one model,
network condition and backend, the predicted latency and throughput of every configuration
(split points, window, batch size, codec; v1 files have one window and batch size, v1 and v2
files codec none), the predicted frontier and the configurations a smart sweep measures
(``selected``). For each one found under
the analysed paths this module matches the measured configurations of the same model, condition,
backend (and input size and number of stages) and reports:

* per configuration: predicted and measured latency (per batch, mean over repeats) and throughput, and the
  relative error ``(predicted - measured) / measured``;
* MAPE (mean absolute percentage error) of latency and of throughput over the matched splits;
* the measured frontier (latency min, throughput max, non-dominated among the measured splits)
  and its *recall*: the fraction of its splits that the prediction selected for measuring. It is
  only a fair test when every split was measured (a full sweep); ``full`` says whether it was.

Like the rest of the analysis it reads JSON only and never imports paretopipe or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from analysis.aggregate import ConfigPoint
from analysis.frontier import nondominated_ranks
from analysis.loading import Skipped, load_side_files, names_schema

__all__ = ["SCHEMA", "SCHEMA_VERSION", "PredictionFile", "SplitRow", "Comparison", "is_prediction_file",
           "load_predictions", "compare", "mape"]

SCHEMA = "paretopipe.prediction"
SCHEMA_VERSIONS = (1, 2, 3)
SCHEMA_VERSION = 3  # the newest (each prediction names its codec); 1 and 2 (codec none) are read too

#: A configuration as predictions and measurements both name it: (splits, window, batch size, codec).
Key = tuple[tuple[int, ...], int, int, str]


@dataclass(frozen=True)
class PredictionFile:
    path: Path
    model: str
    network: str
    backend: str
    input_size: int | None
    num_stages: int
    predicted: dict[Key, tuple[float, float]]  # configuration -> (latency s, throughput img/s)
    frontier: frozenset[Key]
    selected: frozenset[Key]

    @property
    def windows(self) -> list[int]:
        return sorted({k[1] for k in self.predicted})

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({k[2] for k in self.predicted})


def label(key: Key) -> str:
    """``k=8 w4 b8`` (`` int8`` added for a codec other than none): the label the analysis gives a configuration."""
    return f"k={','.join(map(str, key[0]))} w{key[1]} b{key[2]}" + ("" if key[3] == "none" else f" {key[3]}")


@dataclass(frozen=True)
class SplitRow:
    key: Key
    predicted_latency: float
    measured_latency: float
    predicted_throughput: float
    measured_throughput: float
    repeats: int
    predicted_frontier: bool
    selected: bool
    measured_frontier: bool

    @property
    def latency_error(self) -> float:
        return _rel(self.predicted_latency, self.measured_latency)

    @property
    def throughput_error(self) -> float:
        return _rel(self.predicted_throughput, self.measured_throughput)

    @property
    def splits(self) -> tuple[int, ...]:
        return self.key[0]

    @property
    def label(self) -> str:
        return label(self.key)


@dataclass(frozen=True)
class Comparison:
    prediction: PredictionFile
    rows: tuple[SplitRow, ...]  # measured splits only, by split

    @property
    def title(self) -> str:
        p = self.prediction
        return (f"{p.model} · {p.network} · {p.backend} · w{','.join(map(str, p.windows))} · "
                f"b{','.join(map(str, p.batch_sizes))}")

    @property
    def latency_mape(self) -> float:
        return mape(r.latency_error for r in self.rows)

    @property
    def throughput_mape(self) -> float:
        return mape(r.throughput_error for r in self.rows)

    @property
    def measured_frontier(self) -> list[Key]:
        return [r.key for r in self.rows if r.measured_frontier]

    @property
    def found(self) -> list[Key]:
        return [r.key for r in self.rows if r.measured_frontier and r.selected]

    @property
    def recall(self) -> float:
        front = self.measured_frontier
        return len(self.found) / len(front) if front else math.nan

    @property
    def full(self) -> bool:
        """Every predicted configuration was measured, so the measured frontier is the true one."""
        return {r.key for r in self.rows} >= set(self.prediction.predicted)

    @property
    def runs_saved(self) -> int:
        return len(self.prediction.predicted) - len(self.prediction.selected)


def _rel(predicted: float, measured: float) -> float:
    if not (math.isfinite(predicted) and math.isfinite(measured)) or measured == 0:
        return math.nan
    return (predicted - measured) / measured


def mape(errors: Iterable[float]) -> float:
    """Mean absolute relative error, in percent, over the finite errors (NaN when none)."""
    known = [abs(e) for e in errors if math.isfinite(e)]
    return 100.0 * math.fsum(known) / len(known) if known else math.nan


# --- reading ---------------------------------------------------------------------------------

def is_prediction_file(path: Path) -> bool:
    return names_schema(path, SCHEMA)


def _parse(path: Path, doc: Any) -> PredictionFile:
    version = doc.get("schema_version")
    if version not in SCHEMA_VERSIONS:
        raise ValueError(f"unknown schema_version {version!r} (this analysis reads "
                         f"{', '.join(map(str, SCHEMA_VERSIONS))})")
    cfg = doc["config"]
    if version == 1:  # one window and batch size per file; configurations named by their splits
        w, b = int(cfg["window"]), int(cfg["batch_size"])

        def key(item: Any) -> Key:
            return tuple(int(k) for k in (item["splits"] if isinstance(item, dict) else item)), w, b, "none"
    else:  # version 2 predicted uncoded tensors only
        def key(item: Any) -> Key:
            return (tuple(int(k) for k in item["splits"]), int(item["window"]), int(item["batch_size"]),
                    str(item.get("codec", "none")))
    predicted = {key(p): (float(p["latency_s"]), float(p["throughput_img_s"])) for p in doc["predictions"]}
    return PredictionFile(
        path=path, model=str(cfg["model"]), network=str(cfg["network"]["label"]), backend=str(cfg["backend"]),
        input_size=cfg.get("input_size"), num_stages=int(cfg["stages"]), predicted=predicted,
        frontier=frozenset(key(s) for s in doc["frontier"]),
        selected=frozenset(key(s) for s in doc["selected"]),
    )


def load_predictions(paths: Sequence[Path], exclude: Iterable[Path] = ()
                     ) -> tuple[list[PredictionFile], list[Skipped]]:
    """Every prediction file under ``paths``; broken ones become :class:`Skipped` entries."""
    return load_side_files(paths, exclude, SCHEMA, "prediction file", _parse)


# --- comparing -------------------------------------------------------------------------------

def _key(p: ConfigPoint) -> Key:
    return p.splits, p.get("window"), p.get("batch_size"), p.get("codec") or "none"  # type: ignore[return-value]


def _matches(p: ConfigPoint, pred: PredictionFile) -> bool:
    return (p.get("model") == pred.model and p.get("network") == pred.network
            and p.get("backend") == pred.backend and p.get("num_stages") == pred.num_stages
            and (pred.input_size is None or p.get("input_size") in (None, pred.input_size)))


def compare(predictions: Sequence[PredictionFile], points: Sequence[ConfigPoint]) -> list[Comparison]:
    """Match each prediction file with the measured configurations it describes."""
    out = []
    for pred in predictions:
        members = [p for p in points if _matches(p, pred) and _key(p) in pred.predicted]
        # the same configuration measured under different placements or thread counts: keep one,
        # the one with the most repeats (the analysis' own groups show all of them)
        by_key: dict[Key, ConfigPoint] = {}
        for p in members:
            if _key(p) not in by_key or len(p.run_ids) > len(by_key[_key(p)].run_ids):
                by_key[_key(p)] = p
        chosen = [by_key[k] for k in sorted(by_key)]
        values = np.array([[p.mean("latency"), p.mean("throughput")] for p in chosen], dtype=float)
        ranks = nondominated_ranks(values, ["min", "max"]) if chosen else np.array([], dtype=int)
        rows = []
        for p, rank in zip(chosen, ranks):
            lat, thr = pred.predicted[_key(p)]
            rows.append(SplitRow(
                key=_key(p), predicted_latency=lat, measured_latency=p.mean("latency"),
                predicted_throughput=thr, measured_throughput=p.mean("throughput"), repeats=len(p.run_ids),
                predicted_frontier=_key(p) in pred.frontier, selected=_key(p) in pred.selected,
                measured_frontier=int(rank) == 0))
        out.append(Comparison(pred, tuple(rows)))
    return out


# --- output ----------------------------------------------------------------------------------

def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.1f}%"


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if not math.isfinite(value) else format(value, f".{digits}g")


def _splits(items: Iterable[Key]) -> str:
    return "; ".join(label(k) for k in sorted(items)) or "-"


def summary_rows(comparisons: Sequence[Comparison]) -> list[tuple[str, ...]]:
    rows = []
    for c in comparisons:
        rows.append((c.title, f"{len(c.rows)} of {len(c.prediction.predicted)}" + (" (full)" if c.full else ""),
                     _fmt(c.latency_mape, 3), _fmt(c.throughput_mape, 3), _splits(c.measured_frontier),
                     _splits(c.found), _fmt(c.recall, 3) + ("" if c.full or not c.rows else " (partial sweep)"),
                     f"{len(c.prediction.selected)} ({c.runs_saved} saved)"))
    return rows


SUMMARY_HEADER = ("prediction", "configurations measured", "latency MAPE %", "throughput MAPE %", "measured frontier",
                  "found by selection", "recall", "selected (saved)")
ROWS_HEADER = ("configuration", "predicted latency s", "measured latency s", "error", "predicted img/s",
               "measured img/s", "error", "n", "flags")


def split_rows(c: Comparison) -> list[tuple[str, ...]]:
    rows = []
    for r in c.rows:
        flags = [f for f, on in (("predicted frontier", r.predicted_frontier), ("selected", r.selected),
                                 ("measured frontier", r.measured_frontier)) if on]
        rows.append((r.label, _fmt(r.predicted_latency), _fmt(r.measured_latency), _pct(100 * r.latency_error),
                     _fmt(r.predicted_throughput), _fmt(r.measured_throughput), _pct(100 * r.throughput_error),
                     str(r.repeats), ", ".join(flags)))
    return rows


def csv_rows(comparisons: Sequence[Comparison]) -> list[list[object]]:
    rows: list[list[object]] = []
    for c in comparisons:
        p = c.prediction
        for r in c.rows:
            rows.append([str(p.path), p.model, p.network, p.backend, r.key[2], r.key[1], r.key[3],
                         ",".join(map(str, r.splits)), r.predicted_latency, r.measured_latency, r.latency_error,
                         r.predicted_throughput, r.measured_throughput, r.throughput_error, r.repeats,
                         r.predicted_frontier, r.selected, r.measured_frontier])
    return rows


CSV_HEADER = ("prediction_file", "model", "network", "backend", "batch_size", "window", "codec", "splits",
              "predicted_latency_s", "measured_latency_s", "latency_error", "predicted_throughput_img_s",
              "measured_throughput_img_s", "throughput_error", "repeats", "predicted_frontier", "selected",
              "measured_frontier")


def terminal_summary(comparisons: Sequence[Comparison]) -> str:
    lines = []
    for c in comparisons:
        lines.append(f"predicted vs measured, {c.title}: {len(c.rows)} of {len(c.prediction.predicted)} configurations "
                     f"measured; MAPE latency {_fmt(c.latency_mape, 3)}%, throughput {_fmt(c.throughput_mape, 3)}%; "
                     f"measured frontier {_splits(c.measured_frontier)}, found {len(c.found)} "
                     f"(recall {_fmt(c.recall, 3)}{'' if c.full else ', partial sweep'})")
    return "\n".join(lines) + ("\n" if lines else "")
