"""Runs under a trace condition, in time: the per-batch frame and a timeline per group.

Reads result files only (no paretopipe, no torch). A run under a trace carries, per batch,
``trace_send_s``/``trace_recv_s`` (the trace's clock, t = 0 at the first counted send) and
``trace_capacity_mbit``; runs under constant conditions have none and are left out.

``batches_frame(paths)`` is the notebook helper: one row per batch. ``draw_timelines`` draws,
per group (model, network condition), the link's capacity, every batch's latency and each
configuration's throughput over time, all configurations of the group on one time axis.

Under a trace the frontier's objectives should be trace-wide: p95 latency (a link that drops
hurts the tail, which a mean hides) and mean throughput over the whole run (images delivered
over the run, whatever the link did). ``summary.trace`` in each file has the percentiles.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.loading import SCHEMA, find_json_files

__all__ = ["COLUMNS", "batches_frame", "capacity_steps", "draw_timelines"]

COLUMNS = ("file", "run_id", "model", "network", "backend", "configuration", "batch_size", "batch_id",
           "trace_send_s", "trace_recv_s", "latency_s", "trace_capacity_mbit", "trace_segment")


def _configuration(config: dict) -> str:
    splits = ",".join(str(s) for s in config.get("splits", []))
    return (f"split {splits} w{config.get('window')} b{config.get('batch_size')}"
            + (f" {config['codec']}" if config.get("codec") not in (None, "none") else ""))


def batches_frame(paths: str | Path | Sequence[str | Path], *, include_invalid: bool = False) -> pd.DataFrame:
    """Every batch of every run under a trace found under ``paths``, one row each (COLUMNS);
    runs that missed their minimum batches or duration only with ``include_invalid``."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rows = []
    for file in find_json_files([Path(p) for p in items]):
        try:
            doc = json.loads(file.read_text())
        except (OSError, ValueError):
            continue  # not ours to judge here: analysis.pareto reports unreadable files
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("status") != "ok":
            continue
        if not include_invalid and not (doc.get("validity") or {}).get("valid"):
            continue
        batches = doc.get("batches") or []
        if not batches or "trace_send_s" not in batches[0]:
            continue
        config = doc["config"]
        common = {"file": str(file), "run_id": doc.get("run_id"), "model": config.get("model"),
                  "network": (config.get("network") or {}).get("label"),
                  "backend": config.get("backend"), "configuration": _configuration(config),
                  "batch_size": config.get("batch_size")}
        for b in batches:
            rows.append({**common, **{k: b.get(k) for k in COLUMNS if k in b}})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def capacity_steps(file: str | Path, until_s: float) -> tuple[list[float], list[float]] | None:
    """The trace's capacity over ``[0, until_s]`` from a result file's ``summary.trace``
    (segment starts, loops unrolled, the last rate held to ``until_s``; unlimited is NaN), for
    a step plot; None when the file has no segments."""
    trace = ((json.loads(Path(file).read_text()).get("summary") or {}).get("trace")) or {}
    segments, end = trace.get("segments") or [], trace.get("end_s")
    if not segments:
        return None
    times: list[float] = []
    rates: list[float] = []
    base = 0.0
    while base < until_s:
        for seg in segments:
            if base + seg["t_s"] >= until_s:
                break
            times.append(base + seg["t_s"])
            rates.append(float("nan") if seg["rate_mbit"] is None else seg["rate_mbit"])
        if not end:
            break
        base += end
    return times + [until_s], rates + [rates[-1]]


def draw_timelines(frame: pd.DataFrame, out: Path, *, bin_s: float = 1.0) -> list:
    """One figure per (model, network): capacity, latency per batch, throughput per ``bin_s``."""
    from analysis.plots import _PALETTE, _figure, _save, slug

    plots = []
    if frame.empty:
        return plots
    out.mkdir(parents=True, exist_ok=True)
    for (model, network), group in frame.groupby(["model", "network"], dropna=False, sort=True):
        fig = _figure(8.0, 7.0)
        cap_ax, lat_ax, thr_ax = fig.subplots(3, 1, sharex=True)
        # the trace's own segments (not the batches' send times: a slow batch would move a step)
        steps = capacity_steps(group["file"].iloc[0], float(group["trace_recv_s"].max()))
        if steps is not None:
            cap_ax.step(*steps, where="post", color="#444")
        cap_ax.set_ylabel("capacity [Mbit/s]")
        for i, (label, runs) in enumerate(group.groupby("configuration", sort=True)):
            colour = _PALETTE[i % len(_PALETTE)]
            lat_ax.plot(runs["trace_send_s"], runs["latency_s"], ".", color=colour, label=label, ms=4)
            done = runs["trace_recv_s"]
            edges = [k * bin_s for k in range(int(done.max() // bin_s) + 2)]
            images = pd.cut(done, edges, right=False).value_counts(sort=False) * runs["batch_size"].iloc[0]
            nfiles = runs["file"].nunique()
            thr_ax.stairs(images.to_numpy() / bin_s / nfiles, edges, color=colour)
        lat_ax.set_ylabel("latency [s]")
        lat_ax.legend(fontsize="small", loc="upper right")
        thr_ax.set_ylabel(f"throughput [img/s, per {bin_s:g} s]")
        thr_ax.set_xlabel("time on the trace's clock [s] (0 = first counted batch sent)")
        title = f"Timeline: {model}, {network}"
        fig.suptitle(title)
        plots.append(_save(fig, out, "timeline_" + slug(model, network), title,
                           f"The link's capacity, each batch's latency (at its send time) and each "
                           f"configuration's throughput per {bin_s:g} s (mean over its repeats), on "
                           f"one time axis ({model}, {network})."))
    return plots
