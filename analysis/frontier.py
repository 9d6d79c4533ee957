"""Pareto maths on plain arrays: non-dominated sorting, hypervolume, knee point, duplicates.

Non-dominated sorting (and the senses) is :mod:`paretoio.pareto`'s, shared with
``paretopipe.predict`` so that the predicted and the measured frontier are one computation;
it is re-exported here. The rest is the analysis package's own.

Conventions (also in docs/analysis.md):

* ``values`` is an (n, m) array, one row per point, one column per objective; ``senses`` says
  per column whether smaller (``min``) or larger (``max``) is better. Internally every column is
  turned into "smaller is better" by negating the ``max`` columns.
* A point *dominates* another when it is no worse in every objective and strictly better in at
  least one. Rank 0 is the frontier (dominated by nobody); rank r is the frontier of what is left
  after removing ranks < r.
* Rows with NaN or an infinity in any objective are excluded: they get rank -1 and take no part
  in dominance, hypervolume or the knee.
* Duplicates (identical objective vectors) do not dominate each other, so they share a rank and
  are all kept; :func:`duplicate_sets` finds them so that the output can say so.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from paretoio.pareto import EXCLUDED, Sense, nondominated_ranks, nondominated_ranks_naive, to_minimisation

__all__ = [
    "to_minimisation",
    "nondominated_ranks",
    "nondominated_ranks_naive",
    "hypervolume",
    "knee_index",
    "duplicate_sets",
    "tied_objectives",
    "EXCLUDED",
]

def hypervolume(points: np.ndarray | Sequence[Sequence[float]],
                reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``points`` (minimisation space) and bounded by ``reference``.

    Only points strictly better than the reference in every objective contribute; non-finite
    rows are ignored. Two objectives: one sweep. More: HSO slicing — sort by the last objective,
    and for each slab between consecutive values add slab depth × the (m-1)-D hypervolume of the
    points at or below it (recursively, frontier points only). Exact, exponential in m in the worst
    case, fast for the frontiers of a split sweep (tens of points, a handful of objectives).
    """
    ref = np.asarray(reference, dtype=float)
    p = np.array(points, dtype=float, ndmin=2)
    if p.size == 0:
        return 0.0
    if p.shape[1] != ref.shape[0]:
        raise ValueError(f"points have {p.shape[1]} objectives, reference has {ref.shape[0]}")
    if not np.isfinite(ref).all():
        raise ValueError(f"reference point must be finite, got {ref.tolist()}")
    p = p[np.isfinite(p).all(axis=1)]
    p = p[(p < ref).all(axis=1)]
    if len(p) == 0:
        return 0.0
    return float(_hv(np.unique(p, axis=0), ref))


def _hv(p: np.ndarray, ref: np.ndarray) -> float:
    m = p.shape[1]
    if m == 1:
        return float(ref[0] - p[:, 0].min())
    if m == 2:
        p = p[np.lexsort((p[:, 1], p[:, 0]))]
        volume, best_y = 0.0, ref[1]
        for x, y in p:
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return volume
    p = p[np.argsort(p[:, -1], kind="stable")]
    volume = 0.0
    for i in range(len(p)):
        upper = p[i + 1, -1] if i + 1 < len(p) else ref[-1]
        depth = upper - p[i, -1]
        if depth > 0:
            head = p[: i + 1, :-1]
            head = head[nondominated_ranks(head, [Sense.MIN] * (m - 1)) == 0]
            volume += depth * _hv(np.unique(head, axis=0), ref[:-1])
    return volume


def knee_index(front: np.ndarray | Sequence[Sequence[float]]) -> int:
    """Index of the knee among frontier points given in minimisation space.

    Each objective is scaled to [0, 1] over the frontier (0 = best; an objective with no spread
    scales to 0). The knee is the point farthest on the good side of the hyperplane
    Σ x̂ = 1 through the normalised extreme corners — with two objectives, exactly the line between
    the two extreme points of the frontier. Ties go to the earliest row.
    """
    f = np.array(front, dtype=float, ndmin=2)
    if len(f) == 0:
        raise ValueError("knee of an empty frontier")
    lo, hi = f.min(axis=0), f.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (f - lo) / span
    distance = (1.0 - scaled.sum(axis=1)) / math.sqrt(f.shape[1])
    return int(np.argmax(distance))


def duplicate_sets(values: np.ndarray | Sequence[Sequence[float]]) -> list[list[int]]:
    """Groups (of two or more row indices) with identical finite objective vectors."""
    arr = np.array(values, dtype=float, ndmin=2)
    groups: dict[tuple[float, ...], list[int]] = {}
    for i, row in enumerate(arr):
        if np.isfinite(row).all():
            groups.setdefault(tuple(row.tolist()), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def tied_objectives(values: np.ndarray | Sequence[Sequence[float]], rows: Sequence[int]
                    ) -> dict[int, list[int]]:
    """For each of ``rows``: the objective columns where it equals another of ``rows``
    without being a duplicate of it (equal in every column)."""
    arr = np.array(values, dtype=float, ndmin=2)
    out: dict[int, list[int]] = {}
    for i, j in itertools.combinations(rows, 2):
        same = arr[i] == arr[j]
        if same.any() and not same.all():
            cols = np.flatnonzero(same).tolist()
            for r in (i, j):
                out[r] = sorted(set(out.get(r, [])) | set(cols))
    return out


def uncertain_memberships(values: np.ndarray | Sequence[Sequence[float]],
                          halfwidths: np.ndarray | Sequence[Sequence[float]],
                          senses: Sequence[Sense | str]) -> np.ndarray:
    """Per row, whether its frontier membership could flip within its confidence intervals.

    Each row's objective ``o`` lies in ``[value - halfwidth, value + halfwidth]`` (a NaN
    half-width counts as 0 here, but such a row has no interval: the caller reports its
    membership as unknown, never as exact). A frontier row (rank 0) is
    uncertain when some other row *could* dominate it (that row's best case dominates its worst
    case); a dominated row is uncertain when no other row *surely* dominates it (no row's worst
    case dominates its best case). Rows with a non-finite value are never uncertain (they are
    excluded). O(n^2); the contract is in docs/analysis.md.
    """
    v = to_minimisation(values, senses)
    sign = np.array([1.0 if Sense(s) is Sense.MIN else -1.0 for s in senses])
    h = np.abs(np.nan_to_num(np.asarray(halfwidths, dtype=float).reshape(v.shape), nan=0.0)) * np.abs(sign)
    best, worst = v - h, v + h
    ranks = nondominated_ranks(values, senses)
    out = np.zeros(len(v), dtype=bool)

    def dominates(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.all(a <= b) and np.any(a < b))

    for i in range(len(v)):
        if ranks[i] == EXCLUDED:
            continue
        others = [j for j in range(len(v)) if j != i and ranks[j] != EXCLUDED]
        if ranks[i] == 0:
            out[i] = any(dominates(best[j], worst[i]) for j in others)
        else:
            out[i] = not any(dominates(worst[j], best[i]) for j in others)
    return out
