"""The one confidence interval: the Student-t 95% interval of a mean.

``analysis`` reports it as every statistic's ``_ci95``; ``paretopipe.plan``'s ``repeats=auto``
stops on it while a sweep runs on the source device, where pandas is not installed. SciPy gives
the t quantile; it is imported on the first call, so importing this module needs NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

CI_LEVEL = 0.95


def mean_ci95(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, half-width of the Student-t 95% interval of the mean, and count of the finite
    ``values``. The half-width is NaN below two values; the mean is NaN when there is none."""
    data = np.array([v for v in values if math.isfinite(v)], dtype=float)
    n = len(data)
    if n == 0:
        return math.nan, math.nan, 0
    if n < 2:
        return float(data[0]), math.nan, 1
    from scipy import stats

    half = float(stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1) * data.std(ddof=1) / math.sqrt(n))
    return float(data.mean()), half, n
