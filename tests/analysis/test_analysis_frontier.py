import itertools
import math

import numpy as np
import pytest

from analysis.frontier import (
    EXCLUDED,
    duplicate_sets,
    hypervolume,
    knee_index,
    nondominated_ranks,
    nondominated_ranks_naive,
    tied_objectives,
    to_minimisation,
)


def _random_case(rng: np.random.Generator, integer: bool):
    n = int(rng.integers(1, 60))
    m = int(rng.integers(1, 5))
    if integer:  # few distinct values: many ties and duplicates
        values = rng.integers(0, 4, size=(n, m)).astype(float)
    else:
        values = rng.random((n, m))
    if rng.random() < 0.3:  # sprinkle NaN and infinities
        holes = rng.random((n, m)) < 0.1
        values[holes] = rng.choice([math.nan, math.inf, -math.inf], size=int(holes.sum()))
    senses = [str(rng.choice(["min", "max"])) for _ in range(m)]
    return values, senses


@pytest.mark.parametrize("integer", [False, True])
def test_fast_ranks_agree_with_naive_on_seeded_inputs(integer):
    rng = np.random.default_rng(20261126 + integer)
    for _ in range(400):
        values, senses = _random_case(rng, integer)
        fast = nondominated_ranks(values, senses).tolist()
        assert fast == nondominated_ranks_naive(values.tolist(), senses), (values, senses)


def test_ranks_are_a_valid_sorting():
    """Independent of the naive twin: nobody in rank r is dominated by anyone of rank >= r, and
    everyone of rank r > 0 is dominated by someone of rank r - 1."""
    rng = np.random.default_rng(7)
    values = rng.integers(0, 6, size=(80, 3)).astype(float)
    ranks = nondominated_ranks(values, ["min", "max", "min"])
    f = to_minimisation(values, ["min", "max", "min"])

    def dom(a, b):
        return bool((a <= b).all() and (a < b).any())

    for j in range(len(f)):
        assert not any(dom(f[i], f[j]) for i in range(len(f)) if ranks[i] >= ranks[j])
        if ranks[j] > 0:
            assert any(dom(f[i], f[j]) for i in range(len(f)) if ranks[i] == ranks[j] - 1)


def test_senses_are_respected():
    values = [[1.0, 10.0], [2.0, 20.0]]
    assert nondominated_ranks(values, ["min", "max"]).tolist() == [0, 0]
    assert nondominated_ranks(values, ["min", "min"]).tolist() == [0, 1]
    assert nondominated_ranks(values, ["max", "max"]).tolist() == [1, 0]


def test_single_point():
    assert nondominated_ranks([[3.0, 4.0]], ["min", "max"]).tolist() == [0]
    assert knee_index([[3.0, -4.0]]) == 0


def test_empty_input():
    assert nondominated_ranks(np.empty((0, 2)), ["min", "max"]).tolist() == []


def test_all_but_one_dominated():
    values = [[1.0, 100.0], [2.0, 90.0], [3.0, 50.0], [2.0, 100.0]]
    assert nondominated_ranks(values, ["min", "max"]).tolist() == [0, 2, 3, 1]


def test_duplicates_share_a_rank_and_are_found():
    values = [[1.0, 5.0], [1.0, 5.0], [2.0, 6.0], [3.0, 1.0], [3.0, 1.0]]
    ranks = nondominated_ranks(values, ["min", "max"]).tolist()
    assert ranks == [0, 0, 0, 1, 1]
    assert sorted(duplicate_sets(values)) == [[0, 1], [3, 4]]


def test_ties_on_one_objective():
    # equal latency, different throughput: the better one dominates (weak dominance)
    assert nondominated_ranks([[1.0, 5.0], [1.0, 7.0]], ["min", "max"]).tolist() == [1, 0]
    # in three objectives, a tie on one need not decide anything: both stay, flagged as tied
    values = np.array([[1.0, 5.0, 3.0], [1.0, 4.0, 2.0], [2.0, 6.0, 9.0]])
    senses = ["min", "max", "min"]
    ranks = nondominated_ranks(values, senses).tolist()
    assert ranks == [0, 0, 0]
    assert tied_objectives(values, [0, 1, 2]) == {0: [0], 1: [0]}
    assert tied_objectives([[1.0, 2.0], [1.0, 2.0]], [0, 1]) == {}  # duplicates are not ties


def test_nan_rows_are_excluded_and_take_no_part():
    values = [[1.0, 5.0], [math.nan, 100.0], [0.5, math.inf], [2.0, 4.0]]
    ranks = nondominated_ranks(values, ["min", "max"]).tolist()
    assert ranks == [0, EXCLUDED, EXCLUDED, 1]
    assert duplicate_sets([[math.nan, 1.0], [math.nan, 1.0]]) == []
    assert nondominated_ranks([[math.nan, 1.0]], ["min", "max"]).tolist() == [EXCLUDED]


# --- hypervolume --------------------------------------------------------------------------

def _hv_inclusion_exclusion(points, ref):
    """Exact by inclusion-exclusion over all subsets (small inputs only)."""
    points = [p for p in points if all(x < r for x, r in zip(p, ref))]
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            corner = np.max(subset, axis=0)
            total += (-1) ** (size + 1) * float(np.prod(np.array(ref) - corner))
    return total


def _hv_grid_count(points, ref):
    """Exact for integer coordinates: count unit cells dominated by some point."""
    lo = np.min(points, axis=0).astype(int)
    axes = [range(int(a), int(r)) for a, r in zip(lo, ref)]
    pts = np.array(points)
    count = 0
    for cell in itertools.product(*axes):
        if ((pts <= np.array(cell)).all(axis=1)).any():
            count += 1
    return float(count)


def test_hypervolume_two_objectives_by_hand():
    assert hypervolume([[1, 2], [2, 1]], [3, 3]) == pytest.approx(3.0)
    assert hypervolume([[1, 1]], [3, 3]) == pytest.approx(4.0)
    assert hypervolume([[1, 1], [2, 2], [1, 1]], [3, 3]) == pytest.approx(4.0)  # dominated, dup
    assert hypervolume([[4, 1], [1, 3]], [3, 3]) == 0.0  # not strictly inside the box
    assert hypervolume(np.empty((0, 2)), [3, 3]) == 0.0
    assert hypervolume([[math.nan, 1], [1, 1]], [3, 3]) == pytest.approx(4.0)


def test_hypervolume_against_inclusion_exclusion():
    rng = np.random.default_rng(11)
    for _ in range(150):
        m = int(rng.integers(1, 5))
        n = int(rng.integers(1, 9))
        pts = rng.random((n, m))
        ref = np.full(m, 1.05)
        assert hypervolume(pts, ref) == pytest.approx(_hv_inclusion_exclusion(pts, ref),
                                                      rel=1e-9, abs=1e-12)


def test_hypervolume_against_grid_count_with_integer_ties():
    rng = np.random.default_rng(12)
    for _ in range(60):
        m = int(rng.integers(2, 5))
        n = int(rng.integers(1, 25))
        pts = rng.integers(0, 5, size=(n, m)).astype(float)
        ref = np.full(m, 5.0)
        assert hypervolume(pts, ref) == _hv_grid_count(pts, ref)


def test_hypervolume_against_monte_carlo_on_a_larger_front():
    rng = np.random.default_rng(13)
    # points on the simplex x1+...+x4 = 1: all mutually non-dominated
    pts = rng.dirichlet(np.ones(4), size=40)
    ref = np.full(4, 1.1)
    exact = hypervolume(pts, ref)
    samples = rng.random((200_000, 4)) * ref
    hit = np.zeros(len(samples), dtype=bool)
    for p in pts:
        hit |= (samples >= p).all(axis=1)
    box = float(np.prod(ref))
    frac = hit.mean()
    sigma = math.sqrt(frac * (1 - frac) / len(samples)) * box
    assert abs(exact - frac * box) < 5 * sigma


def test_hypervolume_checks_its_arguments():
    with pytest.raises(ValueError):
        hypervolume([[1.0, 2.0]], [3.0])
    with pytest.raises(ValueError):
        hypervolume([[1.0, 2.0]], [3.0, math.nan])


# --- knee -------------------------------------------------------------------------------

def test_knee_is_the_point_farthest_from_the_extremes_line():
    front = [[0.0, 10.0], [1.0, 3.0], [4.0, 1.0], [10.0, 0.0]]
    # normalised: (0,1), (.1,.3), (.4,.1), (1,0): distances to x+y=1 are .6, .5 → index 1
    assert knee_index(front) == 1


def test_knee_in_three_objectives_and_ties():
    front = [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.2, 0.2, 0.2]]
    assert knee_index(front) == 3
    assert knee_index([[0.0, 1.0], [1.0, 0.0]]) == 0  # equal distance: first row
    assert knee_index([[2.0, 2.0], [2.0, 2.0]]) == 0  # no spread at all
    with pytest.raises(ValueError):
        knee_index(np.empty((0, 2)))


def test_uncertain_memberships_follow_the_intervals():
    from analysis.frontier import uncertain_memberships

    # latency (min), throughput (max): A and B on the frontier, C dominated by A
    values = [[1.0, 10.0], [2.0, 20.0], [1.5, 9.0]]
    exact = uncertain_memberships(values, [[0, 0]] * 3, ["min", "max"])
    assert not exact.any()
    # C's interval reaches past A's: A no longer surely dominates it, and C could dominate A
    wide = uncertain_memberships(values, [[0.0, 0.0], [0.0, 0.0], [0.6, 2.0]], ["min", "max"])
    assert wide.tolist() == [True, False, True]
    # NaN half-widths (one run) count as 0 here; the aggregate reports those rows as unknown
    assert not uncertain_memberships(values, [[float("nan")] * 2] * 3, ["min", "max"]).any()
