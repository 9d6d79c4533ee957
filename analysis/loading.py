"""Find and read result files: schema ``paretopipe.run`` v1 and the original ParetoPipe format.

Both formats become the same :class:`RunRecord`. A file that cannot be used is not fatal: it
becomes a :class:`Skipped` entry with a one-line reason, and loading goes on.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from analysis import AnalysisError
from analysis.metrics import METRICS

__all__ = ["RunRecord", "Skipped", "LoadResult", "load_results", "SCHEMA", "SCHEMA_VERSION"]

SCHEMA = "paretopipe.run"
SCHEMA_VERSION = 1
LEGACY_SOURCE = "paretopipe-original"
V1_SOURCE = f"{SCHEMA}/v{SCHEMA_VERSION}"
LEGACY_BACKEND = "legacy"  # the original files do not say which transport made them
UNKNOWN = "unknown"

_LEGACY_NAME = re.compile(r"^(?P<model>.+)_split_(?P<k>\d+)_metrics\.json$")
_LEGACY_TOP = ("model_name", "split_index", "static_network_delay_ms",
               "system_inference_throughput_imgs_per_s", "average_metrics_per_batch")
_LEGACY_AVG = ("part1_inference_time_s", "part2_inference_time_s", "network_time_s",
               "end_to_end_latency_s", "intermediate_data_size_bytes", "network_throughput_mbps")


@dataclass(frozen=True)
class RunRecord:
    """One usable run, in either source format. Unknown configuration values are ``None``."""

    path: Path
    source: str  # V1_SOURCE or LEGACY_SOURCE
    run_id: str
    sweep_id: str | None
    repeat: int | None
    model: str
    network: str  # network condition label
    backend: str
    placement: str  # "host:device>host:device…" per stage, or "unknown"
    input_size: int | None
    batch_size: int | None
    window: int | None
    threads: int | None
    splits: tuple[int, ...]
    valid: bool
    compute_s: tuple[float, ...]  # mean per stage
    hop_transfer_s: tuple[float, ...]  # mean per hop
    hop_bytes: tuple[float, ...]  # per hop, per batch
    metrics: Mapping[str, float] = field(default_factory=dict)  # every name in METRICS


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass(frozen=True)
class LoadResult:
    runs: tuple[RunRecord, ...]
    skipped: tuple[Skipped, ...]
    files_seen: int


class _Unusable(Exception):
    """Internal: this file is skipped, with the message as the reason."""


# --- finding files ---------------------------------------------------------------------------

def find_json_files(paths: Sequence[Path], exclude: Iterable[Path] = ()) -> list[Path]:
    """Every ``*.json`` under ``paths`` (files are taken as given), sorted, without duplicates.

    Directories in ``exclude`` (such as the analysis output folder) are not entered. A path that
    does not exist is an :class:`AnalysisError`.
    """
    excluded = {p.resolve() for p in exclude}
    found: dict[Path, None] = {}
    for path in paths:
        if not path.exists():
            raise AnalysisError(f"{path}: no such file or directory")
        if path.is_file():
            found[path] = None
            continue
        if not path.is_dir():
            raise AnalysisError(f"{path}: not a file or directory")
        for dirpath, dirnames, filenames in os.walk(path):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() not in excluded)
            for name in sorted(filenames):
                if name.endswith(".json"):
                    found[here / name] = None
    return list(found)


def load_results(
    paths: Sequence[Path], exclude: Iterable[Path] = (), include_invalid: bool = False
) -> LoadResult:
    """Load every result file under ``paths``; unusable files become :class:`Skipped` entries.

    Failed runs are skipped, and so are runs whose ``validity.valid`` is false unless
    ``include_invalid``. A second file with the same ``run_id`` (a copy) is skipped too, so that
    it is not counted as another repeat.
    """
    files = find_json_files(paths, exclude)
    runs: list[RunRecord] = []
    skipped: list[Skipped] = []
    seen: dict[tuple[str | None, str], Path] = {}
    for path in files:
        try:
            try:
                record = _load_one(path)
            except (TypeError, AttributeError, ValueError) as exc:  # a shape nobody foresaw
                raise _Unusable(f"malformed result file: {type(exc).__name__}: {exc}") from exc
            if not record.valid and not include_invalid:
                raise _Unusable("invalid run (validity.valid is false: minimum batches or "
                                "duration not met); use --include-invalid to keep it")
            if record.source == V1_SOURCE:
                key = (record.sweep_id, record.run_id)
                if key in seen:
                    raise _Unusable(f"duplicate of run {record.run_id!r} already loaded from "
                                    f"{seen[key]}")
                seen[key] = path
        except _Unusable as exc:
            skipped.append(Skipped(path, str(exc)))
            continue
        runs.append(record)
    return LoadResult(tuple(runs), tuple(skipped), len(files))


def _load_one(path: Path) -> RunRecord:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unusable(f"unreadable: {exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Unusable(f"corrupt JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _Unusable("not a result file: top level is not a JSON object")
    if "schema" in doc:
        return _from_v1(path, doc)
    if "model_name" in doc and "average_metrics_per_batch" in doc:
        return _from_legacy(path, doc)
    raise _Unusable(f"not a result file: no 'schema' key, and not an original ParetoPipe "
                    f"metrics file (keys: {', '.join(sorted(doc)[:6]) or 'none'})")


# --- field access ----------------------------------------------------------------------------

_MISSING = object()


def _get(doc: Any, dotted: str, default: Any = _MISSING) -> Any:
    node = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise _Unusable(f"missing field {dotted}")
            return default
        node = node[part]
    return node


def _num(value: Any, what: str) -> float:
    """A JSON number as float; null becomes NaN. Anything else makes the file unusable."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Unusable(f"field {what} is not a number: {value!r}")
    return float(value)


def _int_or_none(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unusable(f"field {what} is not an integer: {value!r}")
    return value


def _nums(values: Any, what: str) -> tuple[float, ...]:
    if values is None:
        return ()
    if not isinstance(values, list):
        raise _Unusable(f"field {what} is not a list")
    return tuple(_num(v, f"{what}[{i}]") for i, v in enumerate(values))


def _sum_known(values: Iterable[float]) -> float:
    known = [v for v in values if math.isfinite(v)]
    return math.fsum(known) if known else math.nan


def _max_known(values: Iterable[float]) -> float:
    known = [v for v in values if math.isfinite(v)]
    return max(known) if known else math.nan


# --- schema v1 -------------------------------------------------------------------------------

def _from_v1(path: Path, doc: dict[str, Any]) -> RunRecord:
    if doc["schema"] != SCHEMA:
        raise _Unusable(f"unknown schema {doc['schema']!r} (expected {SCHEMA!r})")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _Unusable(f"unknown schema_version {version!r} (this analysis reads "
                        f"{SCHEMA_VERSION})")
    status = _get(doc, "status")
    if status == "failed":
        raise _Unusable(f"failed run: {doc.get('error') or 'no reason given'}")
    if status != "ok":
        raise _Unusable(f"unknown status {status!r} (expected 'ok' or 'failed')")

    run_id = _get(doc, "run_id")
    if not isinstance(run_id, str) or not run_id:
        raise _Unusable("field run_id is not a non-empty string")
    config = _get(doc, "config")
    splits_raw = _get(doc, "config.splits")
    if not isinstance(splits_raw, list) or not all(
        isinstance(k, int) and not isinstance(k, bool) for k in splits_raw
    ):
        raise _Unusable(f"field config.splits is not a list of integers: {splits_raw!r}")
    batch_size = _int_or_none(_get(doc, "config.batch_size"), "config.batch_size")
    if batch_size is not None and batch_size <= 0:
        raise _Unusable(f"field config.batch_size must be positive, got {batch_size}")
    stages_cfg = _get(doc, "config.stages", [])
    stages_cfg = stages_cfg if isinstance(stages_cfg, list) else []
    placement = ">".join(
        f"{s.get('host', '?')}:{s.get('device', '?')}" for s in stages_cfg if isinstance(s, dict)
    ) or UNKNOWN

    summary = _get(doc, "summary")
    if not isinstance(summary, dict):
        raise _Unusable("field summary is not an object")
    valid = _get(doc, "validity.valid")
    if not isinstance(valid, bool):
        raise _Unusable(f"field validity.valid is not true/false: {valid!r}")

    compute = _nums(_get(doc, "summary.compute_s"), "summary.compute_s")
    hops = _get(doc, "summary.hops")
    if not isinstance(hops, list) or not all(isinstance(h, dict) for h in hops):
        raise _Unusable("field summary.hops is not a list of objects")
    hop_bytes = tuple(_num(h.get("bytes"), f"summary.hops[{i}].bytes") for i, h in enumerate(hops))
    hop_transfer = tuple(
        _num(h.get("transfer_s"), f"summary.hops[{i}].transfer_s") for i, h in enumerate(hops)
    )
    stages = _get(doc, "summary.stages", [])
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise _Unusable("field summary.stages is not a list of objects")

    def stage_values(key: str) -> list[float]:
        return [_num(s.get(key), f"summary.stages[{i}].{key}") for i, s in enumerate(stages)]

    energy = _sum_known(stage_values("energy_j"))
    counted = _num(_get(doc, "validity.counted_batches", None), "validity.counted_batches")
    images = counted * batch_size if batch_size else math.nan
    cpu = stage_values("cpu_percent")
    rss = stage_values("peak_rss_bytes")

    def s(dotted: str) -> float:
        return _num(_get(summary, dotted, None), f"summary.{dotted}")

    metrics = {
        "latency": _num(_get(doc, "summary.latency_s.mean"), "summary.latency_s.mean"),
        "latency_p50": s("latency_s.p50"),
        "latency_p90": s("latency_s.p90"),
        "latency_p99": s("latency_s.p99"),
        "latency_per_image": s("latency_per_image_s.mean"),
        "latency_per_image_p90": s("latency_per_image_s.p90"),
        "throughput": _num(_get(doc, "summary.throughput_img_s"), "summary.throughput_img_s"),
        "throughput_batch": s("throughput_batch_s"),
        "payload_bytes": s("payload_bytes"),
        "split_bytes": _sum_known(hop_bytes[:-1]) if len(hop_bytes) > 1 else math.nan,
        "compute": _sum_known(compute),
        "transfer": _sum_known(hop_transfer),
        "queue_wait": s("queue_wait_s"),
        "energy": energy,
        "energy_per_image": energy / images if images and images > 0 else math.nan,
        "power": _sum_known(stage_values("power_w")),
        "cpu_percent": _sum_known(cpu),
        "cpu_percent_max": _max_known(cpu),
        "peak_rss": _max_known(rss),
        "peak_rss_total": _sum_known(rss),
        "accuracy": s("accuracy_top1"),
    }
    network = _get(doc, "config.network.label")
    return RunRecord(
        path=path,
        source=V1_SOURCE,
        run_id=run_id,
        sweep_id=_str_or_none(doc.get("sweep_id")),
        repeat=_int_or_none(config.get("repeat"), "config.repeat"),
        model=_str_field(_get(doc, "config.model"), "config.model"),
        network=_str_field(network, "config.network.label"),
        backend=_str_field(_get(doc, "config.backend"), "config.backend"),
        placement=placement,
        input_size=_int_or_none(config.get("input_size"), "config.input_size"),
        batch_size=batch_size,
        window=_int_or_none(_get(doc, "config.window"), "config.window"),
        threads=_int_or_none(config.get("threads"), "config.threads"),
        splits=tuple(splits_raw),
        valid=valid,
        compute_s=compute,
        hop_transfer_s=hop_transfer,
        hop_bytes=hop_bytes,
        metrics=_checked(metrics),
    )


def _str_field(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Unusable(f"field {what} is not a non-empty string: {value!r}")
    return value


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _checked(metrics: dict[str, float]) -> dict[str, float]:
    if set(metrics) != set(METRICS):  # a programming error, not a file problem
        raise RuntimeError(f"metric extraction out of step with METRICS: "
                           f"{sorted(set(metrics) ^ set(METRICS))}")
    return metrics


# --- the original ParetoPipe's {model}_split_{k}_metrics.json ------------------------------

def condition_label_for_delay(delay_ms: float) -> str:
    """The network condition label given to original-format files: ``delay=20ms``."""
    return f"delay={delay_ms:g}ms"


def _from_legacy(path: Path, doc: dict[str, Any]) -> RunRecord:
    for key in _LEGACY_TOP:
        _get(doc, key)
    avg = doc["average_metrics_per_batch"]
    if not isinstance(avg, dict):
        raise _Unusable("field average_metrics_per_batch is not an object")
    for key in _LEGACY_AVG:
        _get(doc, f"average_metrics_per_batch.{key}")
    model = _str_field(doc["model_name"], "model_name")
    split = doc["split_index"]
    if isinstance(split, bool) or not isinstance(split, int):
        raise _Unusable(f"field split_index is not an integer: {split!r}")
    named = _LEGACY_NAME.match(path.name)
    if named and (named["model"] != model or int(named["k"]) != split):
        raise _Unusable(f"file name says {named['model']} split {named['k']} but the content "
                        f"says {model} split {split}")
    delay = _num(doc["static_network_delay_ms"], "static_network_delay_ms")
    if not math.isfinite(delay):
        raise _Unusable("field static_network_delay_ms is null")
    batch_size = _int_or_none(doc.get("batch_size"), "batch_size")  # not always present

    part1 = _num(avg["part1_inference_time_s"], "average_metrics_per_batch.part1_inference_time_s")
    part2 = _num(avg["part2_inference_time_s"], "average_metrics_per_batch.part2_inference_time_s")
    net = _num(avg["network_time_s"], "average_metrics_per_batch.network_time_s")
    latency = _num(avg["end_to_end_latency_s"], "average_metrics_per_batch.end_to_end_latency_s")
    size = _num(avg["intermediate_data_size_bytes"],
                "average_metrics_per_batch.intermediate_data_size_bytes")
    _num(avg["network_throughput_mbps"], "average_metrics_per_batch.network_throughput_mbps")
    throughput = _num(doc["system_inference_throughput_imgs_per_s"],
                      "system_inference_throughput_imgs_per_s")
    nan = math.nan
    metrics = dict.fromkeys(METRICS, nan)
    metrics.update(
        latency=latency,
        latency_per_image=latency / batch_size if batch_size else nan,
        throughput=throughput,
        payload_bytes=size,
        split_bytes=size,
        compute=_sum_known((part1, part2)),
        transfer=net,
    )
    return RunRecord(
        path=path,
        source=LEGACY_SOURCE,
        run_id=path.stem,
        sweep_id=None,
        repeat=None,
        model=model,
        network=condition_label_for_delay(delay),
        backend=LEGACY_BACKEND,
        placement=UNKNOWN,
        input_size=None,
        batch_size=batch_size,
        window=None,
        threads=None,
        splits=(split,),
        valid=True,
        compute_s=(part1, part2),
        hop_transfer_s=(net,),
        hop_bytes=(size,),
        metrics=_checked(metrics),
    )
