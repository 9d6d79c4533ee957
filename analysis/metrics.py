"""The metric names that objectives, tables and plots use, with their natural sense and unit.

Every loaded run gets a value (possibly NaN) for every name here; ``loading`` fills them from
either file format. ``source`` says where a schema-v1 value comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

from paretoio.pareto import Sense  # shared with paretopipe.predict

__all__ = ["Sense", "Metric", "METRICS", "metric"]


@dataclass(frozen=True)
class Metric:
    name: str
    sense: Sense  # the natural sense, used when an objective is given without ``:min``/``:max``
    unit: str
    source: str  # where the value comes from in a schema-v1 result file


def _m(name: str, sense: str, unit: str, source: str) -> Metric:
    return Metric(name, Sense(sense), unit, source)


_TABLE = (
    _m("latency", "min", "s", "summary.latency_s.mean (per batch, send to result back at source)"),
    _m("latency_p50", "min", "s", "summary.latency_s.p50"),
    _m("latency_p90", "min", "s", "summary.latency_s.p90"),
    _m("latency_p99", "min", "s", "summary.latency_s.p99"),
    _m("latency_p95_trace", "min", "s", "summary.trace.latency_s.p95 (runs under a trace only)"),
    _m("latency_per_image", "min", "s", "summary.latency_per_image_s.mean"),
    _m("latency_per_image_p90", "min", "s", "summary.latency_per_image_s.p90"),
    _m("throughput", "max", "img/s", "summary.throughput_img_s"),
    _m("throughput_batch", "max", "batch/s", "summary.throughput_batch_s"),
    _m("payload_bytes", "min", "B", "summary.payload_bytes (sum of all hops' bytes per batch)"),
    _m("split_bytes", "min", "B", "bytes of the hops between stages (all hops but the last, "
       "which returns the result to the source), per batch"),
    _m("compute", "min", "s", "sum of summary.compute_s over stages (per batch)"),
    _m("transfer", "min", "s", "sum of summary.hops[].transfer_s (per batch)"),
    _m("queue_wait", "min", "s", "summary.queue_wait_s (per batch)"),
    _m("energy", "min", "J", "sum of summary.stages[].energy_j over the stages that report it; "
       "NaN when none does"),
    _m("energy_per_image", "min", "J/img",
       "energy / (validity.counted_batches x config.batch_size)"),
    _m("power", "min", "W", "sum of summary.stages[].power_w over the stages that report it"),
    _m("cpu_percent", "min", "%", "sum of summary.stages[].cpu_percent (100 = one core busy)"),
    _m("cpu_percent_max", "min", "%", "largest summary.stages[].cpu_percent"),
    _m("peak_rss", "min", "B", "largest summary.stages[].peak_rss_bytes (the most any one "
       "device needs)"),
    _m("peak_rss_total", "min", "B", "sum of summary.stages[].peak_rss_bytes"),
    _m("accuracy", "max", "", "summary.accuracy_top1"),
    _m("agreement", "max", "", "summary.fidelity.agreement_top1 (top-1 agreement with the unsplit, uncoded "
       "model; NaN when not measured or the model is degenerate)"),
    _m("logit_max_abs_error", "min", "", "summary.fidelity.max_abs_error"),
    _m("logit_rel_l2_error", "min", "", "summary.fidelity.rel_l2_error"),
    _m("split_raw_bytes", "min", "B", "raw (decoded) bytes of the hops between stages, per batch"),
    _m("compression_ratio", "max", "", "split_raw_bytes / split_bytes (1 without a codec)"),
    _m("codec_time", "min", "s", "sum of summary.hops[].encode_s and decode_s (per batch)"),
)

METRICS: dict[str, Metric] = {m.name: m for m in _TABLE}


def metric(name: str) -> Metric:
    """Look a metric up by name; ``KeyError`` names the valid ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(
            f"unknown metric {name!r}; valid: {', '.join(METRICS)} (see --list-metrics)"
        ) from None
