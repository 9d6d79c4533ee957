"""Find and read result files: schema ``paretopipe.run`` v1 and upstream ParetoPipe's formats.

Every format becomes the same :class:`RunRecord`. Whether a file follows its format is decided by
a JSON Schema (``paretoio/schemas``, :mod:`paretoio.schema`); the code here only maps fields. A
file that cannot be used is not fatal: it becomes a :class:`Skipped` entry with a one-line
reason, and loading goes on.

Upstream ParetoPipe (github.com/cloudsyslab/ParetoPipe) writes two formats:

* its custom backend: ``{Model}_split_{k}_metrics.json``, one split per file;
* its RPC tester (``RPC_PyTorch/automated_split_tester.py``): per session folder,
  ``consolidated_metrics.json`` (``results: {split: {runN: metrics}}``) and
  ``split_test_results.csv`` (``split_block, run, status, start_time, end_time, output_file,
  error``), which says which runs failed.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import pandas as pd

from analysis import AnalysisError
from analysis.aggregate import REPLAY_MARK
from analysis.metrics import METRICS
from paretoio.schema import UPSTREAM_SCHEMA, run_schema_problems, schema_problems

__all__ = ["RunRecord", "Skipped", "LoadResult", "load_results", "SCHEMA", "SCHEMA_VERSION", "names_schema",
           "load_side_files"]

SCHEMA = "paretopipe.run"
SCHEMA_VERSION = 1
LEGACY_SOURCE = "paretopipe-original"
UPSTREAM_RPC_SOURCE = "paretopipe-original-rpc"
V1_SOURCE = f"{SCHEMA}/v{SCHEMA_VERSION}"
LEGACY_BACKEND = "legacy"  # the custom backend's files do not say which transport made them
UPSTREAM_RPC_BACKEND = "upstream-rpc"  # upstream's RPC tester: PyTorch RPC, pipelined or not
UNKNOWN = "unknown"
CONSOLIDATED_NAME = "consolidated_metrics.json"
RPC_STATUS_NAME = "split_test_results.csv"

_LEGACY_NAME = re.compile(r"^(?P<model>.+)_split_(?P<k>\d+)_metrics\.json$")
# upstream's model names (MobileNetV2, mobilenetv2, ...) -> torchvision's, which ours are
_UPSTREAM_MODELS = {"mobilenetv2": "mobilenet_v2", "resnet18": "resnet18", "resnet50": "resnet50",
                    "vgg16": "vgg16", "alexnet": "alexnet", "inceptionv3": "inception_v3"}


@dataclass(frozen=True)
class RunRecord:
    """One usable run, in any source format. Unknown configuration values are ``None``."""

    path: Path
    source: str  # V1_SOURCE, LEGACY_SOURCE or UPSTREAM_RPC_SOURCE
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
    codec: str = "none"  # the codec at the splits (files before codecs, upstream's: none)
    # a replayed run (its file's "replay" section): compute times came from profiles, not from
    # its hosts; its placement names the profiles, so it never aggregates with measured runs
    replayed: bool = False
    replay_overruns: int | None = None  # counted batches that overran their profiled time
    replay_note: str | None = None  # "the host was too slow to replay this device" when any did
    #: why the run was measured under contention (``summary.contention.reason``); "" when it was
    #: not, None when the file does not say (files before contention was recorded, upstream's)
    contention: str | None = None


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
    """Internal: this file (or run) is skipped, with the message as the reason."""


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


_T = TypeVar("_T")


def names_schema(path: Path, schema: str) -> bool:
    """Whether the start of ``path`` (4 KiB) says ``"schema": "<schema>"``: how a side file (a
    prediction, a repeats record) is told from a result file without parsing it whole."""
    try:
        with path.open(encoding="utf-8") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return f'"schema": "{schema}"' in head


def load_side_files(paths: Sequence[Path], exclude: Iterable[Path], schema: str, what: str,
                    parse: Callable[[Path, Any], _T]) -> tuple[list[_T], list[Skipped]]:
    """Every file of ``schema`` under ``paths``, as ``parse(path, document)`` makes it; a file it
    cannot parse becomes a :class:`Skipped` entry "malformed <what>: ..."."""
    found: list[_T] = []
    skipped: list[Skipped] = []
    for path in find_json_files(paths, exclude):
        if not names_schema(path, schema):
            continue
        try:
            found.append(parse(path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            skipped.append(Skipped(path, f"malformed {what}: {type(exc).__name__}: {exc}"))
    return found, skipped


def load_results(
    paths: Sequence[Path], exclude: Iterable[Path] = (), include_invalid: bool = False
) -> LoadResult:
    """Load every result file under ``paths``; unusable files become :class:`Skipped` entries.

    Failed runs are skipped, and so are runs whose ``validity.valid`` is false unless
    ``include_invalid``. A second run with the same sweep and run id (a copy) is skipped too, so
    that it is not counted as another repeat.
    """
    files = find_json_files(paths, exclude)
    runs: list[RunRecord] = []
    skipped: list[Skipped] = []
    seen: dict[tuple[str | None, str], Path] = {}
    for path in files:
        try:
            records, failed = _load_one(path)
        except _Unusable as exc:
            skipped.append(Skipped(path, str(exc)))
            continue
        skipped += [Skipped(path, reason) for reason in failed]
        for record in records:
            key = (record.sweep_id, record.run_id)
            if not record.valid and not include_invalid:
                skipped.append(Skipped(path, "invalid run (validity.valid is false: minimum "
                                             "batches or duration not met); use "
                                             "--include-invalid to keep it"))
            elif record.source != LEGACY_SOURCE and key in seen:
                skipped.append(Skipped(path, f"duplicate of run {record.run_id!r} already "
                                             f"loaded from {seen[key]}"))
            else:
                seen.setdefault(key, path)
                runs.append(record)
    return LoadResult(tuple(runs), tuple(skipped), len(files))


def _load_one(path: Path) -> tuple[list[RunRecord], list[str]]:
    """The runs in one file, and the reasons for the runs in it that are not usable."""
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
        return [_from_v1(path, doc)], []
    if "model_name" in doc and "average_metrics_per_batch" in doc:
        return [_from_legacy(path, doc)], []
    if "session_id" in doc and "results" in doc:
        return _from_consolidated(path, doc)
    raise _Unusable(f"not a result file: no 'schema' key, and not an upstream ParetoPipe "
                    f"metrics file (keys: {', '.join(sorted(doc)[:6]) or 'none'})")


def _follows(problems: list[str], what: str) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise _Unusable(f"does not follow the {what} schema: {problems[0]}{more}")


# --- values ----------------------------------------------------------------------------------

def _f(value: Any) -> float:
    """A number the schema let through; null becomes NaN."""
    return math.nan if value is None else float(value)


def _fs(values: Iterable[Any]) -> tuple[float, ...]:
    return tuple(_f(v) for v in values)


def _sum_known(values: Iterable[float]) -> float:
    known = [v for v in values if math.isfinite(v)]
    return math.fsum(known) if known else math.nan


def _max_known(values: Iterable[float]) -> float:
    known = [v for v in values if math.isfinite(v)]
    return max(known) if known else math.nan


def _checked(metrics: dict[str, float]) -> dict[str, float]:
    if set(metrics) != set(METRICS):  # a programming error, not a file problem
        raise RuntimeError(f"metric extraction out of step with METRICS: "
                           f"{sorted(set(metrics) ^ set(METRICS))}")
    return metrics


# --- schema v1 -------------------------------------------------------------------------------

def _from_v1(path: Path, doc: dict[str, Any]) -> RunRecord:
    if doc["schema"] != SCHEMA:
        raise _Unusable(f"unknown schema {doc['schema']!r} (expected {SCHEMA!r})")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _Unusable(f"unknown schema_version {version!r} (this analysis reads "
                        f"{SCHEMA_VERSION})")
    if doc.get("status") == "failed":
        raise _Unusable(f"failed run: {doc.get('error') or 'no reason given'}")
    _follows(run_schema_problems(doc), f"{SCHEMA} v{SCHEMA_VERSION}")

    config, summary, validity = doc["config"], doc["summary"], doc["validity"]
    replay = doc.get("replay") or {}
    replayed_by = {int(s["index"]): s for s in replay.get("stages") or ()}
    placement = ">".join(f"{s['host']}:{s['device']}" + _replay_mark(replayed_by.get(int(s["index"])))
                         for s in config["stages"])
    compute = _fs(summary["compute_s"])
    hop_bytes = _fs(h["bytes"] for h in summary["hops"])
    hop_raw = _fs(h.get("raw_bytes", h["bytes"]) for h in summary["hops"])  # files before codecs: raw = wire
    hop_transfer = _fs(h["transfer_s"] for h in summary["hops"])
    codec_time = _sum_known(_f(h.get(k, 0.0)) for h in summary["hops"] for k in ("encode_s", "decode_s"))
    fidelity = summary.get("fidelity") or {}
    split_bytes = _sum_known(hop_bytes[:-1]) if len(hop_bytes) > 1 else math.nan
    split_raw = _sum_known(hop_raw[:-1]) if len(hop_raw) > 1 else math.nan
    stages = summary["stages"]

    def stage_values(key: str) -> list[float]:
        return [_f(s.get(key)) for s in stages]

    energy = _sum_known(stage_values("energy_j"))
    images = _f(validity["counted_batches"]) * config["batch_size"]
    cpu = stage_values("cpu_percent")
    rss = stage_values("peak_rss_bytes")
    latency, per_image = summary["latency_s"], summary["latency_per_image_s"]
    metrics = {
        "latency": _f(latency["mean"]),
        "latency_p50": _f(latency.get("p50")),
        "latency_p90": _f(latency.get("p90")),
        "latency_p99": _f(latency.get("p99")),
        "latency_p95_trace": _f(((summary.get("trace") or {}).get("latency_s") or {}).get("p95")),
        "latency_per_image": _f(per_image["mean"]),
        "latency_per_image_p90": _f(per_image.get("p90")),
        "throughput": _f(summary["throughput_img_s"]),
        "throughput_batch": _f(summary["throughput_batch_s"]),
        "payload_bytes": _f(summary["payload_bytes"]),
        "split_bytes": split_bytes,
        "compute": _sum_known(compute),
        "transfer": _sum_known(hop_transfer),
        "queue_wait": _f(summary["queue_wait_s"]),
        "energy": energy,
        "energy_per_image": energy / images if images > 0 else math.nan,
        "power": _sum_known(stage_values("power_w")),
        "cpu_percent": _sum_known(cpu),
        "cpu_percent_max": _max_known(cpu),
        "peak_rss": _max_known(rss),
        "peak_rss_total": _sum_known(rss),
        "accuracy": _f(summary["accuracy_top1"]),
        "agreement": _f(fidelity.get("agreement_top1")),
        "logit_max_abs_error": _f(fidelity.get("max_abs_error")),
        "logit_rel_l2_error": _f(fidelity.get("rel_l2_error")),
        "split_raw_bytes": split_raw,
        "compression_ratio": split_raw / split_bytes if split_bytes and math.isfinite(split_bytes) else math.nan,
        "codec_time": codec_time,
    }
    return RunRecord(
        path=path,
        source=V1_SOURCE,
        run_id=doc["run_id"],
        sweep_id=doc["sweep_id"],
        repeat=config["repeat"],
        model=config["model"],
        network=config["network"]["label"],
        backend=config["backend"],
        codec=config.get("codec", "none"),
        placement=placement,
        input_size=config["input_size"],
        batch_size=config["batch_size"],
        window=config["window"],
        threads=config["threads"],
        splits=tuple(config["splits"]),
        valid=validity["valid"],
        compute_s=compute,
        hop_transfer_s=hop_transfer,
        hop_bytes=hop_bytes,
        metrics=_checked(metrics),
        replayed=bool(replay),
        replay_overruns=int(replay["overruns"]) if replay else None,
        replay_note=(replay.get("note") or None) if replay else None,
        contention=_contention(summary),
    )


def _replay_mark(stage: dict[str, Any] | None) -> str:
    """A replayed stage's part of the placement: ``[replayed DEVICE@HOST #SHA8]``."""
    if not stage:
        return ""
    prof = stage.get("profile") or {}
    return f"{REPLAY_MARK}{prof.get('device')}@{prof.get('host')} #{str(prof.get('sha256'))[:8]}]"


def _contention(summary: Mapping[str, Any]) -> str | None:
    c = summary.get("contention")
    if not c:
        return None
    return str(c.get("reason") or "contended") if c.get("contended") else ""


# --- upstream ParetoPipe ---------------------------------------------------------------------

def condition_label_for_delay(delay_ms: float) -> str:
    """The network condition label given to upstream files: ``delay=20ms``."""
    return f"delay={delay_ms:g}ms"


def upstream_model(name: str) -> str:
    """Upstream's model name in torchvision's spelling (``MobileNetV2`` -> ``mobilenet_v2``) when
    it is one of upstream's six models, else as written."""
    return _UPSTREAM_MODELS.get(re.sub(r"[^a-z0-9]", "", name.casefold()), name)


def _split_record(path: Path, doc: dict[str, Any], *, source: str, run_id: str,
                  sweep_id: str | None, repeat: int | None, backend: str,
                  batch_size: int | None) -> RunRecord:
    """A RunRecord from one upstream per-split metrics dict (already checked by the schema)."""
    avg = doc["average_metrics_per_batch"]
    part1, part2 = _f(avg["part1_inference_time_s"]), _f(avg["part2_inference_time_s"])
    net, latency = _f(avg["network_time_s"]), _f(avg["end_to_end_latency_s"])
    size = _f(avg["intermediate_data_size_bytes"])
    nan = math.nan
    metrics = dict.fromkeys(METRICS, nan)
    metrics.update(
        latency=latency,
        latency_per_image=latency / batch_size if batch_size else nan,
        throughput=_f(doc["system_inference_throughput_imgs_per_s"]),
        payload_bytes=size,
        split_bytes=size,
        compute=_sum_known((part1, part2)),
        transfer=net,
    )
    return RunRecord(
        path=path, source=source, run_id=run_id, sweep_id=sweep_id, repeat=repeat,
        model=upstream_model(doc["model_name"]),
        network=condition_label_for_delay(doc["static_network_delay_ms"]),
        backend=backend, placement=UNKNOWN, input_size=None, batch_size=batch_size, window=None,
        threads=None, splits=(doc["split_index"],), valid=True, compute_s=(part1, part2),
        hop_transfer_s=(net,), hop_bytes=(size,), metrics=_checked(metrics),
    )


def _from_legacy(path: Path, doc: dict[str, Any]) -> RunRecord:
    """Upstream's custom backend: ``{Model}_split_{k}_metrics.json``."""
    _follows(schema_problems(doc, UPSTREAM_SCHEMA, "split_metrics"),
             "upstream split metrics")
    model, split = doc["model_name"], doc["split_index"]
    named = _LEGACY_NAME.match(path.name)
    # upstream names the file after the model as its content spells it, in whatever case
    if named and (named["model"].casefold() != model.casefold() or int(named["k"]) != split):
        raise _Unusable(f"file name says {named['model']} split {named['k']} but the content "
                        f"says {model} split {split}")
    return _split_record(path, doc, source=LEGACY_SOURCE, run_id=path.stem, sweep_id=None,
                         repeat=None, backend=LEGACY_BACKEND, batch_size=doc.get("batch_size"))


def _rpc_status(folder: Path) -> dict[tuple[int, int], str]:
    """(split, run) -> why it failed, from ``split_test_results.csv`` beside the JSON (if any)."""
    csv_path = folder / RPC_STATUS_NAME
    if not csv_path.is_file():
        return {}
    try:
        table = pd.read_csv(csv_path, dtype={"status": str, "error": str}, keep_default_na=False)
        failed = table[table["status"] != "success"]
        return {(int(row.split_block), int(row.run)): f"{row.status}"
                + (f": {row.error}" if row.error else "")
                for row in failed.itertuples()}
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        raise _Unusable(f"{RPC_STATUS_NAME} beside it is unreadable: {exc}") from exc


def _from_consolidated(path: Path, doc: dict[str, Any]) -> tuple[list[RunRecord], list[str]]:
    """Upstream's RPC tester: ``consolidated_metrics.json`` (+ ``split_test_results.csv``)."""
    first = next(iter(doc["results"].values()), None) if isinstance(doc["results"], dict) else None
    if isinstance(first, dict) and "model_name" in first:
        raise _Unusable("upstream averaged metrics (consolidated_metrics_averaged.json): the "
                        "means of consolidated_metrics.json, which is read instead")
    _follows(schema_problems(doc, UPSTREAM_SCHEMA, "consolidated"),
             "upstream consolidated metrics")
    session, config = doc["session_id"], doc["configuration"]
    failed = _rpc_status(path.parent)
    records, reasons = [], []
    for split_key, by_run in sorted(doc["results"].items(), key=lambda kv: int(kv[0])):
        for run_key, metrics in sorted(by_run.items(), key=lambda kv: int(kv[0][3:])):
            split, run = int(split_key), int(run_key[3:])
            if (split, run) in failed:
                reasons.append(f"failed run (split {split}, run {run} in {RPC_STATUS_NAME}: "
                               f"{failed[(split, run)]})")
                continue
            records.append(_split_record(
                path, metrics, source=UPSTREAM_RPC_SOURCE,
                run_id=f"{upstream_model(config['model'])}-s{split}-run{run}",
                sweep_id=f"upstream-{session}", repeat=run, backend=UPSTREAM_RPC_BACKEND,
                batch_size=config.get("batch_size")))
    return records, reasons
