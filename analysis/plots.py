"""Figures, each written as PNG and SVG, drawn with matplotlib's Agg canvas (no display, no pyplot
global state).

All scatter-type figures use the first two objectives as axes (by default latency against
throughput); their step lines are the two-dimensional frontier of those two objectives.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # before anything else from matplotlib is imported

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from analysis.aggregate import ConfigPoint, GroupResult, Objective  # noqa: E402
from analysis.frontier import nondominated_ranks  # noqa: E402
from analysis.metrics import Sense  # noqa: E402

__all__ = ["Plot", "draw_all", "draw_fidelity", "human_bytes"]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f")


class Plot:
    """A written figure: ``stem`` + ``.png`` and ``.svg``, with a caption for the report."""

    def __init__(self, stem: Path, title: str, caption: str) -> None:
        self.stem, self.title, self.caption = stem, title, caption

    @property
    def png(self) -> Path:
        return self.stem.with_suffix(".png")

    @property
    def svg(self) -> Path:
        return self.stem.with_suffix(".svg")


def slug(*parts: object) -> str:
    """File-name-safe name: each part's odd characters become '-', parts are joined by '_'."""
    cleaned = (re.sub(r"[^A-Za-z0-9.=-]+", "-", _text(p)).strip("-") for p in parts)
    return "_".join(c for c in cleaned if c) or "all"


def _text(value: object) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def human_bytes(n: float) -> str:
    if not math.isfinite(n):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path, stem: str, title: str, caption: str) -> Plot:
    plot = Plot(out / stem, title, caption)
    fig.savefig(plot.png)
    fig.savefig(plot.svg, metadata={"Date": None})
    return plot


def _axis_label(o: Objective) -> str:
    unit = f" [{o.metric.unit}]" if o.metric.unit else ""
    better = "lower" if o.sense is Sense.MIN else "higher"
    return f"{o.name}{unit} ({better} is better)"


def _finish_axes(ax, axes: Sequence[Objective], title: str) -> None:
    ax.set_xlabel(_axis_label(axes[0]))
    ax.set_ylabel(_axis_label(axes[1]))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _xy(points: Sequence[ConfigPoint], axes: Sequence[Objective]) -> np.ndarray:
    return np.array([[p.mean(o.name) for o in axes] for p in points], dtype=float).reshape(-1, 2)


def _frontier_steps(ax, xy: np.ndarray, axes: Sequence[Objective], **style) -> np.ndarray:
    """Draw the 2-D frontier of ``xy`` as steps; return the mask of its points."""
    ranks = nondominated_ranks(xy, [o.sense for o in axes])
    on = ranks == 0
    if on.any():
        front = xy[on]
        sign = -1.0 if axes[0].sense is Sense.MAX else 1.0
        front = front[np.argsort(sign * front[:, 0], kind="stable")]  # best x first
        ax.step(front[:, 0], front[:, 1], where="post", **style)
    return on


def _maybe_log(ax, xy: np.ndarray) -> None:
    for column, setter in ((0, ax.set_xscale), (1, ax.set_yscale)):
        values = xy[:, column][np.isfinite(xy[:, column])]
        if len(values) and values.min() > 0 and values.max() / values.min() > 30:
            setter("log")


def _scatter(result: GroupResult, axes: Sequence[Objective], out: Path) -> Plot | None:
    pts = [p for i, p in enumerate(result.points) if i not in result.excluded]
    if not pts:
        return None
    xy = _xy(pts, axes)
    ok = np.isfinite(xy).all(axis=1)
    if not ok.any():
        return None
    fig = _figure(7.5, 5.2)
    ax = fig.add_subplot()
    on2 = np.zeros(len(pts), dtype=bool)
    on2[ok] = _frontier_steps(ax, xy[ok], axes, color=_PALETTE[0], lw=1.5,
                              label="frontier (2-D)")
    err = np.array([[p.stats[o.name].ci95 for o in axes] for p in pts], dtype=float)
    err = np.where(np.isfinite(err), err, 0.0)
    nd_objectives = tuple(result.objectives) != tuple(axes)
    where = " (2-D)" if nd_objectives else ""
    for mask, colour, name in ((on2, _PALETTE[0], "on the frontier" + where),
                               (~on2 & ok, "#9a9a9a", "dominated" + where)):
        if mask.any():
            ax.errorbar(xy[mask, 0], xy[mask, 1], xerr=err[mask, 0], yerr=err[mask, 1],
                        fmt="o", color=colour, ms=6, capsize=2, lw=0.8, label=name)
    index = {id(p): i for i, p in enumerate(result.points)}
    if nd_objectives:
        nd = np.array([result.ranks[index[id(p)]] == 0 for p in pts]) & ok
        if nd.any():
            ax.scatter(xy[nd, 0], xy[nd, 1], s=150, facecolors="none", edgecolors=_PALETTE[3],
                       lw=1.3, label="frontier of " + ", ".join(map(str, result.objectives)))
    if result.knee is not None and id(result.points[result.knee]) in {id(p) for p in pts}:
        k = [id(p) for p in pts].index(id(result.points[result.knee]))
        if ok[k]:
            ax.scatter([xy[k, 0]], [xy[k, 1]], marker="*", s=260, color=_PALETTE[1], zorder=5,
                       label="knee")
    for i, p in enumerate(pts):
        if ok[i]:
            ax.annotate(result.label(index[id(p)]), (xy[i, 0], xy[i, 1]), fontsize=8,
                        xytext=(5, 4), textcoords="offset points")
    _maybe_log(ax, xy[ok])
    _finish_axes(ax, axes, f"{axes[0].name} vs {axes[1].name}: {result.title}")
    caption = (f"{axes[0].name} against {axes[1].name} for {result.title}; points are "
               f"configurations (mean of repeats, bars: 95% CI), labelled by split k (and window w, batch size b where "
               f"they vary); the line is "
               f"the frontier, the star the knee.")
    return _save(fig, out, "scatter_" + slug(*(v for _, v in result.group)),
                 f"Frontier: {result.title}", caption)


def _breakdown(result: GroupResult, out: Path) -> Plot | None:
    pts = sorted(result.points, key=lambda p: (p.splits, str(p.config)))
    pts = [p for p in pts if p.compute_s]
    if not pts:
        return None
    index = {id(p): i for i, p in enumerate(result.points)}
    labels = [result.label(index[id(p)]) for p in pts]
    stages = max(len(p.compute_s) for p in pts)
    fig = _figure(max(6.0, 0.7 * len(pts) + 2.5), 4.8)
    ax = fig.add_subplot()
    x = np.arange(len(pts))
    bottom = np.zeros(len(pts))

    def layer(values: Sequence[float], name: str, colour: str, **style) -> None:
        nonlocal bottom
        v = np.nan_to_num(np.array(values, dtype=float), nan=0.0)
        if v.any():
            ax.bar(x, v, bottom=bottom, color=colour, label=name, width=0.7, **style)
            bottom = bottom + v

    blues = ("#08519c", "#3182bd", "#6baed6", "#9ecae1", "#c6dbef")
    for s in range(stages):
        layer([p.compute_s[s] if s < len(p.compute_s) else math.nan for p in pts],
              f"compute, stage {s}", blues[s % len(blues)])
    layer([math.fsum(v for v in p.hop_transfer_s if math.isfinite(v)) for p in pts],
          "transfer (all hops)", "#fd8d3c")
    layer([p.mean("queue_wait") for p in pts], "queueing", "#74c476")
    latency = np.array([p.mean("latency") for p in pts], dtype=float)
    rest = np.clip(np.nan_to_num(latency - bottom, nan=0.0), 0, None)
    if (rest > 0.01 * np.nan_to_num(latency, nan=0.0)).any():  # not just rounding
        layer(rest, "unaccounted", "#dddddd", hatch="//", edgecolor="#999999")
    ax.scatter(x, latency, marker="_", s=400, color="black", zorder=4, label="latency (mean)")
    ax.set_xticks(x, labels, rotation=30 if len(pts) > 8 else 0, ha="right" if len(pts) > 8
                  else "center", fontsize=8)
    ax.margins(y=0.06)
    ax.set_ylabel("time per batch [s]")
    ax.set_title(f"Where the time goes, per split: {result.title}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # never over the bars
    caption = (f"Per-batch time split into stage compute, transfer over all hops and queueing, "
               f"per configuration, for {result.title}; the black tick is the measured mean "
               f"latency, the hatched part what the parts do not account for.")
    return _save(fig, out, "breakdown_" + slug(*(v for _, v in result.group)),
                 f"Time breakdown: {result.title}", caption)


def _bytes(model: str, points: Sequence[ConfigPoint], out: Path) -> Plot | None:
    series: dict[object, dict[tuple[int, ...], list[float]]] = {}
    for p in points:
        v = p.mean("payload_bytes")
        if math.isfinite(v):
            series.setdefault(p.get("batch_size"), {}).setdefault(p.splits, []).append(v)
    if not series:
        return None
    splits = sorted({k for s in series.values() for k in s})
    fig = _figure(max(6.0, 0.55 * len(splits) * len(series) + 2.5), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    x = np.arange(len(splits))
    for j, (batch, by_split) in enumerate(sorted(series.items(), key=lambda kv: str(kv[0]))):
        values = [float(np.mean(by_split[k])) if k in by_split else math.nan for k in splits]
        bars = ax.bar(x + (j - (len(series) - 1) / 2) * width, values, width,
                      color=_PALETTE[j % len(_PALETTE)],
                      label=f"batch {batch if batch else 'unknown'}")
        ax.bar_label(bars, [human_bytes(v) for v in values], fontsize=7, rotation=90,
                     padding=2)
    ax.set_yscale("log")
    ax.set_xticks(x, [",".join(map(str, k)) for k in splits])
    ax.set_xlabel("split k (blocks [0, k) on the first device)")
    ax.set_ylabel("bytes per batch over all hops [B]")
    ax.set_title(f"Bytes crossing the network per split: {model}")
    ax.margins(y=0.25)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    caption = (f"Bytes sent per batch over all hops (activation at the split plus the result "
               f"returning to the source) for {model}, per split, averaged over conditions and "
               f"backends.")
    return _save(fig, out, "bytes_" + slug(model), f"Bytes per split: {model}", caption)


def _overlay(model: str, points: Sequence[ConfigPoint], axes: Sequence[Objective], panel: str,
             series: str, out: Path, stem: str, title: str, caption: str) -> Plot | None:
    """One panel per value of ``panel``; in each, one frontier per value of ``series``."""
    panels = sorted({p.get(panel) for p in points}, key=str)
    names = sorted({p.get(series) for p in points}, key=str)
    if len(names) < 2:
        return None
    fig = _figure(5.0 * len(panels) + 1.0, 4.6)
    all_xy = _xy(points, axes)
    vary = [(c, short) for c, short in (("window", "w"), ("batch_size", "b")) if len({p.get(c) for p in points}) > 1]

    def name_of(p: ConfigPoint) -> str:  # as GroupResult.label: k=8 w4 b8 when those vary
        return " ".join([f"k={p.split_label}", *(f"{short}{p.get(c)}" for c, short in vary)])

    for a, value in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), a + 1)
        for j, name in enumerate(names):
            subset = [p for p in points if p.get(panel) == value and p.get(series) == name]
            xy = _xy(subset, axes)
            finite = np.isfinite(xy).all(axis=1)
            subset, xy = [p for p, f in zip(subset, finite) if f], xy[finite]
            if not len(xy):
                continue
            colour = _PALETTE[j % len(_PALETTE)]
            on = _frontier_steps(ax, xy, axes, color=colour, lw=1.6, label=str(name))
            ax.scatter(xy[on, 0], xy[on, 1], color=colour, s=22, zorder=3)
            ax.scatter(xy[~on, 0], xy[~on, 1], color=colour, s=10, alpha=0.3)
            for p, (x, y) in zip((p for p, o in zip(subset, on) if o), xy[on]):
                ax.annotate(name_of(p), (x, y), fontsize=7, color=colour, xytext=(4, 3),
                            textcoords="offset points")
        _maybe_log(ax, all_xy[np.isfinite(all_xy).all(axis=1)])
        ax.set_title(f"{panel} = {value}", fontsize=10)
        ax.set_xlabel(_axis_label(axes[0]), fontsize=8)
        ax.set_ylabel(_axis_label(axes[1]), fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(title=series, fontsize=8, title_fontsize=8)
    fig.suptitle(title)
    return _save(fig, out, stem, title, caption)


def draw_all(results: Sequence[GroupResult], points: Sequence[ConfigPoint],
             objectives: Sequence[Objective], out: Path) -> list[Plot]:
    """Every figure of the report, written under ``out``; returns them in report order."""
    out.mkdir(parents=True, exist_ok=True)
    axes = tuple(objectives[:2])
    plots: list[Plot] = []
    for result in results:
        plots += [p for p in (_scatter(result, axes, out), _breakdown(result, out)) if p]
    for model in sorted({p.get("model") for p in points}, key=str):
        mine = [p for p in points if p.get("model") == model]
        plots += [p for p in (
            _bytes(str(model), mine, out),
            _overlay(str(model), mine, axes, "backend", "network", out,
                     "conditions_" + slug(model), f"Frontiers per network condition: {model}",
                     f"The {axes[0].name}/{axes[1].name} frontier of each network condition, "
                     f"overlaid, one panel per backend ({model}); frontier points are labelled "
                     f"by configuration."),
            _overlay(str(model), mine, axes, "network", "backend", out,
                     "backends_" + slug(model), f"Backends compared: {model}",
                     f"The {axes[0].name}/{axes[1].name} frontier of each backend, overlaid, "
                     f"one panel per network condition ({model}); frontier points are labelled "
                     f"by configuration."),
        ) if p]
    return plots


# --- fidelity (codecs) -----------------------------------------------------------------------

def _rate_fidelity(model: str, points: Sequence[ConfigPoint], out: Path) -> Plot | None:
    """One panel per split: bytes on the wire at the split against top-1 agreement, a point
    per configuration, coloured by codec; the line joins a split's points in order of bytes."""
    rows = [(p, p.mean("split_bytes"), p.mean("agreement")) for p in points]
    rows = [r for r in rows if math.isfinite(r[1]) and math.isfinite(r[2])]
    if not rows:
        return None
    splits = sorted({p.splits for p, _, _ in rows})
    codecs = sorted({str(p.get("codec")) for p, _, _ in rows})
    colour = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(codecs)}
    cols = min(4, len(splits))
    nrows = math.ceil(len(splits) / cols)
    fig = _figure(3.6 * cols + 1.0, 3.2 * nrows + 0.6)
    low = min(a for _, _, a in rows)
    for i, k in enumerate(splits):
        ax = fig.add_subplot(nrows, cols, i + 1)
        mine = sorted((r for r in rows if r[0].splits == k), key=lambda r: r[1])
        ax.plot([b for _, b, _ in mine], [a for _, _, a in mine], color="#bbbbbb", lw=1, zorder=1)
        for c in codecs:
            xs = [b for p, b, _ in mine if str(p.get("codec")) == c]
            ys = [a for p, _, a in mine if str(p.get("codec")) == c]
            if xs:
                ax.scatter(xs, ys, color=colour[c], s=30, zorder=3, label=c)
        for p, b, a in mine:
            ratio = p.mean("compression_ratio")
            ax.annotate(f"{p.get('codec')}" + (f" {ratio:.1f}x" if math.isfinite(ratio) else ""),
                        (b, a), fontsize=7, xytext=(4, -9), textcoords="offset points")
        ax.set_xlim(0, 1.2 * max(b for _, b, _ in mine))  # linear from 0: codec ratios are 1-40x
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: human_bytes(v)))
        ax.tick_params(labelsize=7)
        ax.set_ylim(min(low, 1.0) - max(0.02, 0.1 * (1.0 - low)), 1.0 + max(0.005, 0.05 * (1.0 - low)))
        ax.set_title(f"k={','.join(map(str, k))}", fontsize=10)
        ax.set_xlabel("bytes on the wire at the split, per batch [B]", fontsize=8)
        ax.set_ylabel("top-1 agreement", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(title="codec", fontsize=7, title_fontsize=7, loc="lower right")
    fig.suptitle(f"Rate against fidelity per split: {model}")
    caption = (f"Per split of {model}, the bytes that cross it per batch (after the codec) "
               f"against top-1 agreement with the unsplit, uncoded model on the same inputs; "
               f"one point per configuration with a measured agreement, labelled by codec and "
               f"compression ratio.")
    return _save(fig, out, "rate_fidelity_" + slug(model), f"Rate and fidelity: {model}", caption)


def _frontier3(result: GroupResult, out: Path) -> Plot | None:
    """Latency against throughput, coloured by agreement, the three-objective frontier ringed."""
    names = [o.name for o in result.objectives]
    index = [i for i in range(len(result.points)) if i not in result.excluded]
    if not index:
        return None
    xy = np.array([[result.points[i].mean(n) for n in names] for i in index], dtype=float)
    on = np.array([result.ranks[i] == 0 for i in index])
    fig = _figure(7.5, 5.2)
    ax = fig.add_subplot()
    dots = ax.scatter(xy[:, 0], xy[:, 1], c=xy[:, 2], cmap="viridis", s=40, zorder=3,
                      vmin=float(np.min(xy[:, 2])), vmax=max(float(np.max(xy[:, 2])),
                                                             float(np.min(xy[:, 2])) + 1e-9))
    ax.scatter(xy[on, 0], xy[on, 1], s=150, facecolors="none", edgecolors=_PALETTE[3], lw=1.3,
               zorder=4, label="frontier of " + ", ".join(map(str, result.objectives)))
    for j, i in enumerate(index):
        if on[j]:
            ax.annotate(result.label(i), (xy[j, 0], xy[j, 1]), fontsize=8, xytext=(6, 4),
                        textcoords="offset points")
    fig.colorbar(dots, ax=ax, label=_axis_label(result.objectives[2]))
    _maybe_log(ax, xy[:, :2])
    _finish_axes(ax, result.objectives[:2], f"Three objectives: {result.title}")
    caption = (f"Latency against throughput for {result.title}, colour: top-1 agreement; ringed "
               f"and labelled: the frontier of all three objectives (a configuration that is "
               f"slower but more faithful stays on it).")
    return _save(fig, out, "frontier3_" + slug(*(v for _, v in result.group)),
                 f"Three-objective frontier: {result.title}", caption)


def draw_fidelity(results: Sequence[GroupResult], points: Sequence[ConfigPoint], out: Path
                  ) -> list[Plot]:
    """The rate-fidelity figure of every model and the three-objective frontier of every group
    in ``results`` (:func:`analysis.aggregate.analyse_fidelity`); ``[]`` without agreement."""
    if not results:
        return []
    out.mkdir(parents=True, exist_ok=True)
    plots = [p for m in sorted({p.get("model") for p in points}, key=str)
             if (p := _rate_fidelity(str(m), [q for q in points if q.get("model") == m], out))]
    return plots + [p for r in results if (p := _frontier3(r, out))]
