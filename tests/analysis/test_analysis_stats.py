import math

import numpy as np
import pytest

from analysis.stats import describe, t_quantile

# two-sided 95% (p = 0.975) and one-sided 95% critical values from standard t tables
T_TABLE = [(1, 0.975, 12.706), (2, 0.975, 4.303), (3, 0.975, 3.182), (4, 0.975, 2.776),
           (9, 0.975, 2.262), (10, 0.975, 2.228), (29, 0.975, 2.045), (120, 0.975, 1.980),
           (5, 0.95, 2.015), (20, 0.99, 2.528), (7, 0.995, 3.499), (3, 0.5, 0.0)]


@pytest.mark.parametrize("df,p,expected", T_TABLE)
def test_t_quantile_matches_tables(df, p, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_tends_to_normal():
    assert t_quantile(0.975, 100000) == pytest.approx(1.95996, abs=1e-4)


@pytest.mark.parametrize("p,df", [(0.4, 3), (1.0, 3), (0.975, 0)])
def test_t_quantile_rejects_bad_arguments(p, df):
    with pytest.raises(ValueError):
        t_quantile(p, df)


def test_describe_agrees_with_numpy():
    rng = np.random.default_rng(3)
    for n in (2, 3, 5, 30):
        x = rng.normal(10, 2, n)
        s = describe(x.tolist())
        assert s.n == n
        assert s.mean == pytest.approx(x.mean())
        assert s.std == pytest.approx(x.std(ddof=1))
        assert s.ci95 == pytest.approx(t_quantile(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))


def test_describe_leaves_out_nan_and_handles_small_n():
    s = describe([1.0, math.nan, 3.0, None, math.inf])
    assert (s.mean, s.n) == (2.0, 2)
    one = describe([5.0])
    assert one.mean == 5.0 and one.n == 1 and math.isnan(one.std) and math.isnan(one.ci95)
    none = describe([math.nan])
    assert none.n == 0 and math.isnan(none.mean)
