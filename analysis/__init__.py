"""Pareto analysis of ParetoPipe result files.

Reads ``results/**/*.json`` (schema ``paretopipe.run`` v1, and the original ParetoPipe's
``{model}_split_{k}_metrics.json``), aggregates repeats, ranks configurations by non-dominated
sorting, computes hypervolumes and knee points, and writes CSV tables, plots and a report.

Run it as ``python -m analysis.pareto results/``. This package never imports ``paretopipe`` or
torch: it runs on a laptop that has only the result files, NumPy and matplotlib.
"""

from __future__ import annotations

__all__ = ["AnalysisError"]


class AnalysisError(Exception):
    """A user-facing problem (bad path, bad flag, nothing to analyse): one line, no traceback."""
