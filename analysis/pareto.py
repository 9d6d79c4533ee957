"""``python -m analysis.pareto results/``: frontiers, hypervolumes, knees, plots and a report.

Progress and skipped files go to stderr; the frontier table goes to stdout. User mistakes (a
path that does not exist, a bad flag value, nothing to analyse) print one line and exit 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from analysis import AnalysisError
import pandas as pd

from analysis.aggregate import (
    DEFAULT_GROUP_BY,
    FIDELITY_OBJECTIVES,
    GROUP_COLUMNS,
    analyse,
    analyse_fidelity,
    parse_group_by,
    parse_objectives,
    parse_reference,
)
from analysis.frames import aggregate, config_points, load_runs
from analysis.predicted import compare, load_predictions, terminal_summary
from analysis.repeats import load_repeat_records
from analysis.metrics import METRICS

__all__ = ["main", "build_parser"]

DEFAULT_OBJECTIVES = "latency:min,throughput:max"


def _metric_table() -> str:
    width = max(len(n) for n in METRICS)
    return "\n".join(f"  {m.name.ljust(width)}  {m.sense.value}  {(m.unit or '-').ljust(7)} "
                     f"{m.source}" for m in METRICS.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.pareto",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Read ParetoPipe result files (schema paretopipe.run v1, and upstream ParetoPipe's\n"
            "{Model}_split_{k}_metrics.json and RPC tester's consolidated_metrics.json with\n"
            "split_test_results.csv), aggregate repeats, and compute the\n"
            "Pareto frontier (non-dominated ranks), hypervolume and knee point of each group.\n"
            "Writes frontier.csv, groups.csv, runs.csv, PNG+SVG plots, report.md and a\n"
            "self-contained report.html, and prints the frontiers."),
        epilog=(
            "objectives (NAME:min or NAME:max; a bare NAME takes the sense shown):\n"
            f"{_metric_table()}\n\n"
            "example:\n"
            "  python -m analysis.pareto results/ --objectives "
            "latency_p90:min,throughput:max,energy:min\n"
            "See docs/analysis.md for the NaN, tie and duplicate rules."),
    )
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="result files or folders (searched recursively for *.json)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: PATH/analysis for the first PATH if it is "
                             "a folder, else the analysis folder next to it); never read as input")
    parser.add_argument("--objectives", default=DEFAULT_OBJECTIVES, metavar="LIST",
                        help=f"comma-separated NAME:min|max, at least two; the first two are the "
                             f"plot axes (default: {DEFAULT_OBJECTIVES})")
    parser.add_argument("--group-by", default=",".join(DEFAULT_GROUP_BY), metavar="COLS",
                        help=f"columns that split configurations into separate frontiers "
                             f"(default: {','.join(DEFAULT_GROUP_BY)}; any of "
                             f"{', '.join(GROUP_COLUMNS)}; empty string: one frontier)")
    parser.add_argument("--reference", default="", metavar="LIST",
                        help="hypervolume reference point in natural units, e.g. "
                             "latency=2.0,throughput=0 (default per objective: the worst value "
                             "over all groups moved 10%% of the range further)")
    parser.add_argument("--include-invalid", action="store_true",
                        help="keep runs whose validity.valid is false (too few batches or too "
                             "short); by default they are skipped")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures (faster)")
    parser.add_argument("--list-metrics", action="store_true",
                        help="print the metric names usable as objectives and exit")
    return parser


def default_out(paths: Sequence[Path]) -> Path:
    first = paths[0]
    return first / "analysis" if first.is_dir() else first.parent / "analysis"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    objectives = parse_objectives(args.objectives)
    group_by = parse_group_by(args.group_by)
    reference = parse_reference(args.reference, objectives)
    for path in args.paths:
        if not path.exists():
            raise AnalysisError(f"{path}: no such file or directory")
    out: Path = args.out if args.out is not None else default_out(args.paths)

    runs = load_runs(args.paths, exclude=[out], include_invalid=args.include_invalid)
    predictions, bad_predictions = load_predictions(args.paths, exclude=[out])
    records, bad_records = load_repeat_records(args.paths, exclude=[out])
    bad_predictions = bad_predictions + bad_records
    if predictions or bad_predictions or records:  # prediction and repeats files are not runs
        skipped = runs.attrs["skipped"]
        own = {str(p.path) for p in predictions} | {str(r.path) for r in records}
        runs.attrs["skipped"] = pd.concat(
            [skipped[~skipped["path"].isin(own)],
             pd.DataFrame([(str(s.path), s.reason) for s in bad_predictions],
                          columns=skipped.columns)], ignore_index=True)
        runs.attrs["files_seen"] -= len(own)
    skipped, seen = runs.attrs["skipped"], runs.attrs["files_seen"]
    _say(f"read {seen} JSON files: {len(runs)} runs loaded, {len(skipped)} skipped")
    for path, reason in skipped.itertuples(index=False, name=None):
        _say(f"  skipped {path}: {reason}")
    if runs.empty:
        raise AnalysisError(
            f"no valid runs found under {', '.join(map(str, args.paths))} "
            f"({seen} JSON files, {len(skipped)} skipped; reasons above)")

    points = config_points(aggregate(runs))
    for o in objectives:
        if not any(math.isfinite(p.mean(o.name)) for p in points):
            raise AnalysisError(f"objective {o.name!r} has no value in any loaded run "
                                f"(source: {o.metric.source}); choose other objectives")
    results = analyse(points, objectives, group_by, reference)
    comparisons = compare(predictions, points)
    fidelity = analyse_fidelity(points, group_by)  # [] unless some run measured agreement
    _say(f"{len(points)} configurations in {len(results)} groups; objectives "
         f"{', '.join(map(str, objectives))}")

    try:
        out.mkdir(parents=True, exist_ok=True)
        from analysis import report  # imports matplotlib (through plots) only when needed

        written = [report.write_frontier_csv(out / "frontier.csv", results),
                   report.write_groups_csv(out / "groups.csv", results),
                   report.write_runs_csv(out / "runs.csv", runs)]
        if comparisons:
            written.append(report.write_predicted_csv(out / "predicted.csv", comparisons))
        if fidelity:
            written.append(report.write_frontier_csv(out / "frontier_fidelity.csv", fidelity))
        plots, fidelity_plots = [], []
        if not args.no_plots:
            from analysis.plots import draw_all, draw_fidelity

            plot_dir = out / "plots"
            if plot_dir.is_dir():  # the folder is ours: drop figures of groups that are gone
                for old in list(plot_dir.glob("*.png")) + list(plot_dir.glob("*.svg")):
                    old.unlink()
            _say("drawing plots ...")
            plots = draw_all(results, points, objectives, plot_dir)
            from analysis.timeline import batches_frame, draw_timelines

            plots += draw_timelines(batches_frame(args.paths, include_invalid=args.include_invalid),
                                    plot_dir)  # runs under a trace
            fidelity_plots = draw_fidelity(fidelity, points, plot_dir)
        written += report.write_reports(out, runs, points, results, plots, args.paths, group_by,
                                        comparisons, fidelity, fidelity_plots, records)
    except OSError as exc:
        raise AnalysisError(f"cannot write outputs in {out}: {exc}") from exc
    _say(f"wrote {', '.join(p.name for p in written)} and {2 * (len(plots) + len(fidelity_plots))} "
         f"plot files to {out}")
    sys.stdout.write(report.terminal_table(results))
    if fidelity and tuple(objectives) != FIDELITY_OBJECTIVES:  # else the table above is it
        sys.stdout.write("\nthree-objective frontier (latency:min, throughput:max, agreement:max):\n"
                         + report.terminal_table(fidelity))
    if records:
        reached = sum(r.verdict == "reached" for r in records)
        sys.stdout.write(f"\nrepeats=auto: {reached} of {len(records)} configurations reached the CI target, "
                         f"{sum(r.verdict == 'max' for r in records)} hit the maximum\n")
    if comparisons:
        sys.stdout.write("\n" + terminal_summary(comparisons))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_metrics:
        print(_metric_table())
        return 0
    if not args.paths:
        parser.error("at least one PATH is required")
    try:
        return run(args)
    except AnalysisError as exc:
        print(f"analysis.pareto: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("analysis.pareto: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
