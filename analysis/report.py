"""Tables and reports: ``frontier.csv``, ``groups.csv``, ``runs.csv``, ``report.md``,
``report.html`` (self-contained: images embedded as base64 PNG) and the terminal table.

Markdown and HTML are rendered from one list of blocks, so they always say the same thing.
In CSV files a value that is not available (NaN) is an empty cell.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import pandas as pd

from analysis.aggregate import ConfigPoint, GroupResult, Objective
from analysis.frames import VECTOR_COLUMNS, frontier_frame
from analysis.frontier import EXCLUDED
from analysis.plots import Plot, slug
from analysis.predicted import Comparison
from analysis.repeats import RepeatRecord
from paretoio.files import write_atomic

__all__ = ["write_csv", "write_frontier_csv", "groups_frame", "write_groups_csv", "write_runs_csv",
           "write_predicted_csv", "write_reports", "terminal_table"]


def _num(value: float, digits: int = 4) -> str:
    return "n/a" if not math.isfinite(value) else format(value, f".{digits}g")


def _csv_cell(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` as CSV through pandas, atomically: NaN/NA/None is an empty cell, floats have ten
    significant digits, booleans are ``true``/``false``, tuples ``a,b``."""
    return write_atomic(path, frame.map(_csv_cell).to_csv(index=False, float_format="%.10g", na_rep=""))


def _notes(result: GroupResult, i: int) -> list[str]:
    notes = []
    if i == result.knee:
        notes.append("knee")
    if i in result.duplicates:
        notes.append("duplicate of " + "; ".join(result.label(j) for j in result.duplicates[i]))
    if i in result.ties:
        notes.append("tied on " + ", ".join(result.ties[i]))
    if i in result.excluded:
        notes.append("excluded: " + result.excluded[i])
    if i in result.uncertain:
        notes.append("uncertain: " + result.uncertain[i])
    if i in result.unknown:
        notes.append("membership unknown: " + result.unknown[i])
    return notes


def write_frontier_csv(path: Path, results: Sequence[GroupResult]) -> Path:
    """:func:`analysis.frames.frontier_frame` of ``results`` as CSV."""
    return write_csv(frontier_frame(results), path)


def groups_frame(results: Sequence[GroupResult]) -> pd.DataFrame:
    """One row per group: sizes, knee, hypervolume and the reference point it was taken against."""
    rows = []
    for r in results:
        rows.append({"group": r.title, **dict(r.group), "configurations": len(r.points),
                     "frontier_size": len(r.frontier), "excluded": len(r.excluded),
                     "knee": r.label(r.knee) if r.knee is not None else None,
                     "hypervolume": r.hypervolume,
                     "hypervolume_normalised": r.hypervolume_normalised,
                     **{f"reference_{o.name}": v for o, v in zip(r.objectives, r.reference)}})
    return pd.DataFrame(rows)


def write_groups_csv(path: Path, results: Sequence[GroupResult]) -> Path:
    return write_csv(groups_frame(results), path)


def write_runs_csv(path: Path, runs: pd.DataFrame) -> Path:
    """One row per loaded run, with its configuration and every metric of the metric table."""
    return write_csv(runs.drop(columns=[*VECTOR_COLUMNS, "num_stages"]), path)


# --- reports --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Para:
    text: str


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class _Image:
    plot: Plot


_Block = Union[_Heading, _Para, _Table, _Image]


def _mean_ci(p: ConfigPoint, o: Objective) -> str:
    s = p.stats[o.name]
    if s.n == 0:
        return "n/a"
    return _num(s.mean) + (f" ± {_num(s.ci95, 2)}" if math.isfinite(s.ci95) else "")


def _group_table(r: GroupResult, frontier_only: bool = False) -> _Table:
    header = ("configuration", "rank", *(f"{o.name} ({o.sense.value})" for o in r.objectives),
              "n", "notes")
    rows = []
    for i, p in enumerate(r.points):
        if frontier_only and r.ranks[i] != 0:
            continue
        rows.append((r.label(i), "-" if r.ranks[i] == EXCLUDED else str(r.ranks[i]),
                     *(_mean_ci(p, o) for o in r.objectives), str(len(p.run_ids)),
                     "; ".join(_notes(r, i))))
    return _Table(header, tuple(rows))


def write_predicted_csv(path: Path, comparisons: Sequence[Comparison]) -> Path:
    """Predicted against measured, one row per prediction file and measured split."""
    from analysis import predicted

    return write_csv(pd.DataFrame(predicted.csv_rows(comparisons), columns=predicted.CSV_HEADER),
                     path)


def _predicted_blocks(comparisons: Sequence[Comparison]) -> list[_Block]:
    from analysis import predicted

    b: list[_Block] = [
        _Heading(2, "Predicted against measured"),
        _Para("From prediction files (paretopipe predict --out) found among the inputs. Error is "
              "(predicted - measured) / measured; MAPE is its mean absolute value over the measured "
              "splits. Recall is the share of the measured frontier (latency min, throughput max) "
              "that the prediction selected for measuring; it is a fair test only when every split "
              "was measured (full)."),
        _Table(predicted.SUMMARY_HEADER, tuple(predicted.summary_rows(comparisons))),
    ]
    for c in comparisons:
        b += [_Heading(3, f"{c.title} ({c.prediction.path.name})"),
              _Table(predicted.ROWS_HEADER, tuple(predicted.split_rows(c)))]
    return b


def _fidelity_blocks(fidelity: Sequence[GroupResult], plots: Sequence[Plot]) -> list[_Block]:
    b: list[_Block] = [
        _Heading(2, "Fidelity: rate and the three-objective frontier"),
        _Para("Agreement is the top-1 agreement of a run's logits with the unsplit, uncoded "
              "model's on the same inputs (summary.fidelity); a codec trades it for bytes on "
              "the wire. The frontier below is that of latency (min), throughput (max) and "
              "agreement (max) in every group where agreement was measured, whatever "
              "--objectives says; frontier_fidelity.csv has every configuration's rank."),
    ]
    by_stem = {p.stem.name: p for p in plots}
    b += [_Image(p) for p in plots if p.stem.name.startswith("rate_fidelity_")]
    for r in fidelity:
        b += [_Heading(3, r.title), _group_table(r, frontier_only=True)]
        stem = "frontier3_" + slug(*(v for _, v in r.group))
        if stem in by_stem:
            b.append(_Image(by_stem[stem]))
    return b


def _repeats_blocks(records: Sequence[RepeatRecord]) -> list[_Block]:
    from analysis import repeats

    reached = [r for r in records if r.verdict == "reached"]
    hit = [r for r in records if r.verdict == "max"]
    return [
        _Heading(2, "Repeats (repeats=auto)"),
        _Para(f"{len(reached)} of {len(records)} configurations reached the target (95% CI half-width of latency "
              f"and of throughput within the target fraction of the mean); {len(hit)} hit the maximum number of "
              f"runs first" + (": " + "; ".join(f"{r.group} {r.label}" for r in hit) if hit else "") + "."),
        _Table(repeats.HEADER, tuple(repeats.summary_rows(records))),
    ]


def _uncertain_para(results: Sequence[GroupResult]) -> _Para:
    items = [f"{r.title}: {r.label(i)} ({'frontier' if r.ranks[i] == 0 else 'dominated'})"
             for r in results for i in sorted(r.uncertain)]
    unknown = [(r, i) for r in results for i in sorted(r.unknown)]
    judged = sum(len(r.points) - len(r.excluded) for r in results) - len(unknown)
    if unknown:
        reasons = sorted({r.unknown[i] for r, i in unknown})
        on_front = [f"{r.title}: {r.label(i)}" for r, i in unknown if r.ranks[i] == 0]
        tail = (f"{len(unknown)} configuration(s) could not be judged ({'; '.join(reasons)}): their uncertainty "
                "is unknown, not zero; repeat them (repeats=N or repeats=auto) to judge them. "
                + (f"Frontier points among them, whose membership is unknown ({len(on_front)}): "
                   + "; ".join(on_front) + "." if on_front else "None of them is on a frontier."))
    else:
        tail = ""
    if not items:
        head = (f"Frontier memberships given the 95% confidence intervals: none of the {judged} judged "
                "configuration(s) is uncertain (no frontier point could be dominated, and every dominated "
                "point is surely dominated, within the intervals).")
    else:
        head = (f"Uncertain frontier memberships given the 95% confidence intervals ({len(items)} of {judged} "
                "judged configurations): " + "; ".join(items) + ". A frontier point is uncertain when another "
                "configuration's interval could dominate it, a dominated one when no configuration surely "
                "dominates it.")
    return _Para(head + (" " + tail if tail else ""))


def _contention_para(runs: pd.DataFrame) -> _Para:
    """The runs measured under contention (``summary.contention``; older files do not say)."""
    recorded = runs[runs["contention"].notna()] if "contention" in runs.columns else runs.iloc[:0]
    unrecorded = f" {len(runs) - len(recorded)} run(s) did not record it." if len(recorded) < len(runs) else ""
    flagged = recorded[recorded["contention"] != ""]
    if flagged.empty:
        return _Para(f"Host contention: none of the {len(recorded)} run(s) that recorded it (other processes' CPU "
                     f"time, CPU steal and load average during the measured batches) was measured under "
                     f"contention.{unrecorded}")
    items = "; ".join(f"{rid} ({why})" for rid, why in zip(flagged["run_id"], flagged["contention"]))
    return _Para(f"Runs measured under contention ({len(flagged)} of {len(runs)}): {items}. Their figures "
                 "include what other processes took from the host; repeat them on a quieter host." + unrecorded)


def _replay_blocks(runs: pd.DataFrame) -> list[_Block]:
    """Which runs were replayed (their compute times came from profiles, not from their hosts),
    and which of them overran their profiled times."""
    if "replayed" not in runs.columns or not runs["replayed"].any():
        return []
    replayed = runs[runs["replayed"]]
    over = replayed[replayed["replay_overruns"].fillna(0) > 0]
    blocks: list[_Block] = [
        _Heading(2, "Replayed runs"),
        _Para(f"{len(replayed)} of {len(runs)} runs were replayed: their stages took the compute time of a "
              "measured profile (named in each placement: device@host #checksum, and in each result file's "
              "replay section), not their host's; their configurations are marked (replayed) and never "
              "aggregated with measured ones. "
              + (f"{len(over)} replayed run(s) overran their profiled times: the host was too slow to replay "
                 "this device, so their figures are slower than the device's." if len(over) else
                 "No replayed batch overran its profiled time.")),
    ]
    if len(over):
        blocks.append(_Table(("run", "overruns", "note"), tuple(
            (str(r.run_id), str(int(r.replay_overruns)), str(r.replay_note or "")) for r in over.itertuples())))
    return blocks


def _blocks(runs: pd.DataFrame, points: Sequence[ConfigPoint], results: Sequence[GroupResult],
            plots: Sequence[Plot], inputs: Sequence[Path], group_by: Sequence[str],
            comparisons: Sequence[Comparison] = (), fidelity: Sequence[GroupResult] = (),
            fidelity_plots: Sequence[Plot] = (), records: Sequence[RepeatRecord] = ()) -> list[_Block]:
    objectives = results[0].objectives
    skipped = runs.attrs["skipped"]
    b: list[_Block] = [
        _Heading(1, "ParetoPipe analysis"),
        _Para(f"Inputs: {', '.join(str(p) for p in inputs)}. {runs.attrs['files_seen']} JSON files seen, "
              f"{len(runs)} runs loaded, {len(skipped)} skipped; {len(points)} "
              f"configurations (repeats aggregated: mean ± 95% CI, Student t) in "
              f"{len(results)} groups by {', '.join(group_by) or 'nothing'}."),
        _Heading(2, "Objectives"),
        _Table(("objective", "sense", "unit", "reference point", "from"),
               tuple((o.name, o.sense.value, o.metric.unit or "-", _num(ref, 6), o.metric.source)
                     for o, ref in zip(objectives, results[0].reference))),
        _Para("Rank 0 is the frontier. A configuration with no value for an objective is "
              "excluded from ranking, hypervolume and knee, and listed. Duplicates (identical "
              "objective values) are all kept and flagged; so are frontier points tied on an "
              "objective. Hypervolume is exact, against the reference point above (the worst "
              "value over all groups moved 10% of the range further unless set with "
              "--reference); the normalised value divides by the box between the best values "
              "and the reference. The knee is the frontier point farthest from the line (plane) "
              "through the frontier's extremes in normalised objective space."),
        _Heading(2, "Summary"),
        _Table(("group", "configurations", "frontier", "excluded", "knee", "hypervolume",
                "normalised"),
               tuple((r.title, str(len(r.points)), str(len(r.frontier)), str(len(r.excluded)),
                      r.label(r.knee) if r.knee is not None else "-", _num(r.hypervolume),
                      _num(r.hypervolume_normalised, 3)) for r in results)),
        _uncertain_para(results),
        *_replay_blocks(runs),
        _contention_para(runs),
    ]
    if records:
        b += _repeats_blocks(records)
    by_stem = {p.stem.name: p for p in plots}
    for r in results:
        b += [_Heading(2, r.title), _group_table(r)]
        key = slug(*(v for _, v in r.group))
        b += [_Image(by_stem[s]) for s in (f"scatter_{key}", f"breakdown_{key}") if s in by_stem]
    shown = {blk.plot.stem.name for blk in b if isinstance(blk, _Image)}
    rest = [p for p in plots if p.stem.name not in shown]
    if rest:
        b.append(_Heading(2, "Comparisons"))
        b += [_Image(p) for p in rest]
    if comparisons:
        b += _predicted_blocks(comparisons)
    if fidelity:
        b += _fidelity_blocks(fidelity, fidelity_plots)
    if len(skipped):
        b += [_Heading(2, f"Skipped files ({len(skipped)})"),
              _Table(("file", "reason"), tuple(skipped.itertuples(index=False, name=None)))]
    return b


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render_md(blocks: Sequence[_Block], out: Path) -> str:
    lines: list[str] = []
    for blk in blocks:
        if isinstance(blk, _Heading):
            lines += ["#" * blk.level + " " + blk.text, ""]
        elif isinstance(blk, _Para):
            lines += [blk.text, ""]
        elif isinstance(blk, _Table):
            lines.append("| " + " | ".join(map(_md_escape, blk.header)) + " |")
            lines.append("|" + "---|" * len(blk.header))
            lines += ["| " + " | ".join(map(_md_escape, row)) + " |" for row in blk.rows]
            lines.append("")
        else:
            rel = blk.plot.png.relative_to(out).as_posix()
            lines += [f"![{blk.plot.title}]({rel})", "", f"*{blk.plot.caption}* "
                      f"([SVG]({blk.plot.svg.relative_to(out).as_posix()}))", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}
figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:.85em;color:#555}"""


def _render_html(blocks: Sequence[_Block]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>ParetoPipe analysis</title>", f"<style>{_CSS}</style></head><body>"]
    for blk in blocks:
        if isinstance(blk, _Heading):
            parts.append(f"<h{blk.level}>{e(blk.text)}</h{blk.level}>")
        elif isinstance(blk, _Para):
            parts.append(f"<p>{e(blk.text)}</p>")
        elif isinstance(blk, _Table):
            parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in blk.header)
                         + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                      for row in blk.rows]
            parts.append("</tbody></table>")
        else:
            data = base64.b64encode(blk.plot.png.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt=\"{e(blk.plot.title)}\" "
                         f"src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{e(blk.plot.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(out: Path, runs: pd.DataFrame, points: Sequence[ConfigPoint],
                  results: Sequence[GroupResult], plots: Sequence[Plot], inputs: Sequence[Path],
                  group_by: Sequence[str], comparisons: Sequence[Comparison] = (),
                  fidelity: Sequence[GroupResult] = (), fidelity_plots: Sequence[Plot] = (),
                  records: Sequence[RepeatRecord] = ()) -> tuple[Path, Path]:
    """``report.md`` and ``report.html``; ``fidelity`` (:func:`analysis.aggregate.analyse_fidelity`)
    and its ``fidelity_plots`` (:func:`analysis.plots.draw_fidelity`) add the fidelity section,
    ``records`` (repeats=auto verdicts) the repeats section."""
    blocks = _blocks(runs, points, results, plots, inputs, group_by, comparisons, fidelity,
                     fidelity_plots, records)
    md, page = out / "report.md", out / "report.html"
    write_atomic(md, _render_md(blocks, out))
    write_atomic(page, _render_html(blocks))
    return md, page


def terminal_table(results: Sequence[GroupResult]) -> str:
    """The frontier of every group as plain aligned text, with hypervolume and knee."""
    lines: list[str] = []
    for r in results:
        excluded = f", {len(r.excluded)} excluded" if r.excluded else ""
        lines.append(f"{r.title}: {len(r.frontier)} of {len(r.points)} configurations on the "
                     f"frontier{excluded}; hypervolume {_num(r.hypervolume)} (normalised "
                     f"{_num(r.hypervolume_normalised, 3)})")
        table = _group_table(r, frontier_only=True)
        rows = [table.header, *table.rows]
        widths = [max(len(row[c]) for row in rows) for c in range(len(table.header))]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
