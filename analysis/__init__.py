"""Pareto analysis of ParetoPipe result files.

Reads ``results/**/*.json`` (schema ``paretopipe.run`` v1, and upstream ParetoPipe's
``{Model}_split_{k}_metrics.json`` and RPC tester's ``consolidated_metrics.json``), aggregates
repeats, ranks configurations by non-dominated sorting, computes hypervolumes and knee points, and
writes CSV tables, plots and a report.

In Python (a notebook: notebooks/pareto_front.ipynb)::

    from analysis import load_runs, aggregate, frontier
    runs = load_runs("results/")            # DataFrame, one row per run
    front = frontier(runs, objectives="latency:min,throughput:max")

On the command line: ``python -m analysis.pareto results/``. This package never imports
``paretopipe`` or torch: it runs on a laptop that has only the result files, pandas, SciPy,
NumPy and matplotlib.
"""

from __future__ import annotations

__all__ = ["AnalysisError", "load_runs", "aggregate", "frontier", "batches_frame"]


class AnalysisError(Exception):
    """A user-facing problem (bad path, bad flag, nothing to analyse): one line, no traceback."""


from analysis.frames import aggregate, frontier, load_runs  # noqa: E402  (they use AnalysisError)
from analysis.timeline import batches_frame  # noqa: E402  (runs under a trace, one row per batch)
