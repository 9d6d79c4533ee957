"""Records of ``repeats=auto`` (schema ``paretopipe.repeats`` v1, written by paretopipe.plan):
for each configuration repeated automatically, how many runs it took and whether the 95%
confidence intervals of latency and throughput reached the target fraction of their means
(``reached``) or the configuration hit the maximum count first (``max``; ``incomplete`` when
runs failed before the minimum). Like the rest of the analysis it reads JSON only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from analysis.loading import Skipped, load_side_files, names_schema

__all__ = ["SCHEMA", "RepeatRecord", "is_repeats_file", "load_repeat_records", "summary_rows", "HEADER"]

SCHEMA = "paretopipe.repeats"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RepeatRecord:
    path: Path
    model: str
    network: str
    backend: str
    label: str  # k=8 w4 b8
    runs: int
    verdict: str  # reached | max | incomplete
    target: float
    minimum: int
    maximum: int
    latency_rel_ci: float | None
    throughput_rel_ci: float | None

    @property
    def group(self) -> str:
        return f"{self.model} · {self.network} · {self.backend}"


def is_repeats_file(path: Path) -> bool:
    return names_schema(path, SCHEMA)


def _parse(path: Path, doc: Any) -> RepeatRecord:
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"unknown schema_version {doc.get('schema_version')!r} (this analysis reads {SCHEMA_VERSION})")
    rule, rel = doc["rule"], doc["relative_ci95"]
    return RepeatRecord(path=path, model=str(doc["model"]), network=str(doc["network"]), backend=str(doc["backend"]),
                        label=str(doc["label"]), runs=int(doc["runs"]), verdict=str(doc["verdict"]),
                        target=float(rule["target"]), minimum=int(rule["min"]), maximum=int(rule["max"]),
                        latency_rel_ci=rel.get("latency"), throughput_rel_ci=rel.get("throughput"))


def load_repeat_records(paths: Sequence[Path], exclude: Iterable[Path] = ()
                        ) -> tuple[list[RepeatRecord], list[Skipped]]:
    """Every repeats record under ``paths``; broken ones become :class:`Skipped` entries."""
    found, skipped = load_side_files(paths, exclude, SCHEMA, "repeats record", _parse)
    return sorted(found, key=lambda r: (r.group, r.label)), skipped


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


HEADER = ("group", "configuration", "runs", "latency CI / mean", "throughput CI / mean", "target", "verdict")


def summary_rows(records: Sequence[RepeatRecord]) -> list[tuple[str, ...]]:
    words = {"reached": "reached the target", "max": "hit the maximum", "incomplete": "too few ok runs"}
    return [(r.group, r.label, str(r.runs), _pct(r.latency_rel_ci), _pct(r.throughput_rel_ci),
             f"{100 * r.target:g}% ({r.minimum}..{r.maximum} runs)", words.get(r.verdict, r.verdict))
            for r in records]
