"""The Pareto maths both packages use: objective senses and non-dominated sorting (NumPy).

``paretopipe.predict`` ranks predicted configurations with it and ``analysis.frontier`` builds
the measured frontier on it (hypervolume, knee and the rest stay there), so the predicted and the
measured frontier are the same computation. It imports NumPy and nothing of either package.

Conventions (also in docs/analysis.md):

* ``values`` is an (n, m) array, one row per point, one column per objective; ``senses`` says
  per column whether smaller (``min``) or larger (``max``) is better. Internally every column is
  turned into "smaller is better" by negating the ``max`` columns.
* A point *dominates* another when it is no worse in every objective and strictly better in at
  least one. Rank 0 is the frontier (dominated by nobody); rank r is the frontier of what is left
  after removing ranks < r.
* Rows with NaN or an infinity in any objective are excluded: they get rank -1 and take no part
  in dominance.
* Duplicates (identical objective vectors) do not dominate each other, so they share a rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum

import numpy as np

__all__ = ["Sense", "EXCLUDED", "to_minimisation", "nondominated_ranks", "nondominated_ranks_naive"]

EXCLUDED = -1  # rank of a row with a non-finite objective


class Sense(str, Enum):
    """Whether smaller (``min``) or larger (``max``) values of an objective are better."""

    MIN = "min"
    MAX = "max"


def to_minimisation(values: np.ndarray | Sequence[Sequence[float]],
                    senses: Sequence[Sense | str]) -> np.ndarray:
    """Copy of ``values`` as float (n, m) with every ``max`` column negated."""
    arr = np.array(values, dtype=float, ndmin=2)
    if arr.size == 0:
        return arr.reshape(0, len(senses))
    if arr.shape[1] != len(senses):
        raise ValueError(f"{arr.shape[1]} objective columns but {len(senses)} senses")
    sign = np.array([-1.0 if Sense(s) is Sense.MAX else 1.0 for s in senses])
    return arr * sign


def nondominated_ranks(values: np.ndarray | Sequence[Sequence[float]],
                       senses: Sequence[Sense | str]) -> np.ndarray:
    """Non-dominated sorting: rank per row (0 = frontier), ``EXCLUDED`` for non-finite rows.

    Builds the full dominance matrix with broadcasting (O(n² m) time and n² bytes of memory, fine
    for the thousands of configurations a sweep produces), then peels fronts off by counting each
    point's remaining dominators.
    """
    f = to_minimisation(values, senses)
    n = f.shape[0]
    ranks = np.full(n, EXCLUDED, dtype=int)
    idx = np.flatnonzero(np.isfinite(f).all(axis=1))
    g = f[idx]
    no_worse = (g[:, None, :] <= g[None, :, :]).all(axis=2)
    better = (g[:, None, :] < g[None, :, :]).any(axis=2)
    dominates = no_worse & better  # [i, j]: i dominates j
    dominators = dominates.sum(axis=0)
    remaining = np.ones(len(idx), dtype=bool)
    rank = 0
    while remaining.any():
        front = remaining & (dominators == 0)
        ranks[idx[front]] = rank
        remaining &= ~front
        dominators -= dominates[front].sum(axis=0)
        rank += 1
    return ranks


def nondominated_ranks_naive(values: Sequence[Sequence[float]],
                             senses: Sequence[Sense | str]) -> list[int]:
    """Plain-Python O(n² m) per front twin of :func:`nondominated_ranks`, kept for the tests."""
    signs = [-1.0 if Sense(s) is Sense.MAX else 1.0 for s in senses]
    rows = [[sign * float(v) for sign, v in zip(signs, row)] for row in values]
    ranks = [EXCLUDED] * len(rows)
    left = [i for i, row in enumerate(rows) if all(math.isfinite(v) for v in row)]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    rank = 0
    while left:
        front = [j for j in left if not any(dominates(rows[i], rows[j]) for i in left)]
        for j in front:
            ranks[j] = rank
        left = [j for j in left if j not in front]
        rank += 1
    return ranks
