"""The score-and-decide kernel against its pure Python twin, plus hand-computed cases."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from fraud.features import FEATURES
from fraud.kernels.decide import ALLOW, BLOCK, REVIEW, score_and_decide
from fraud.reference.decide import reference_decide, reference_decide_many

F64 = npt.NDArray[np.float64]
THRESHOLD = 220.0
REVIEW_SCORE = 0.9
BLOCK_SCORE = 0.999
COL_AMOUNT = FEATURES.index("amount")
COL_AVG_30D = FEATURES.index("customer_avg_amount_30d")


def run_kernel(
    features: F64,
    threshold: float = THRESHOLD,
    review_score: float = REVIEW_SCORE,
    block_score: float = BLOCK_SCORE,
) -> tuple[F64, npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    n = features.shape[0]
    score = np.full(n, np.nan, dtype=np.float64)
    action = np.full(n, -1, dtype=np.int64)
    rule = np.zeros(n, dtype=np.bool_)
    score_and_decide(features, threshold, review_score, block_score, score, action, rule)
    return score, action, rule


def matrix(amount: list[float], avg_30d: list[float], fill: float = 1.0) -> F64:
    features = np.full((len(amount), len(FEATURES)), fill, dtype=np.float64)
    features[:, COL_AMOUNT] = amount
    features[:, COL_AVG_30D] = avg_30d
    return features


def random_features(rng: np.random.Generator, n: int, threshold: float) -> F64:
    """Realistic feature rows, with amounts exactly at the threshold, zero amounts, zero means."""
    features = np.empty((n, len(FEATURES)), dtype=np.float64)
    # every column random, so that a kernel reading the wrong column disagrees
    features[:] = rng.lognormal(3.5, 1.5, size=features.shape)
    for j, name in enumerate(FEATURES):
        if name.startswith("customer_nb_tx_"):
            features[:, j] = rng.integers(1, 200, size=n)
    amount = features[:, COL_AMOUNT]
    avg = features[:, COL_AVG_30D]
    kind = rng.integers(0, 8, size=n)
    amount[kind == 0] = threshold
    amount[kind == 1] = 0.0
    avg[kind == 2] = 0.0
    amount[kind == 3] = 0.0
    avg[kind == 3] = 0.0
    amount[kind == 4] = np.nextafter(threshold, np.inf)
    amount[kind == 5] = np.nextafter(threshold, -np.inf)
    avg[kind == 6] = amount[kind == 6]  # amount equal to the mean: the log term is 0
    return features


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("threshold", [220.0, 50.0, 1000.0])
def test_kernel_matches_reference_on_random_rows(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    features = random_features(rng, 500, threshold)
    score, action, rule = run_kernel(features, threshold)
    expected = reference_decide_many(
        [(float(r[COL_AMOUNT]), float(r[COL_AVG_30D])) for r in features],
        threshold,
        REVIEW_SCORE,
        BLOCK_SCORE,
    )
    exp_score = np.array([s for s, _, _ in expected])
    exp_action = np.array([a for _, a, _ in expected])
    exp_rule = np.array([r for _, _, r in expected])
    np.testing.assert_allclose(score, exp_score, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(action, exp_action)
    np.testing.assert_array_equal(rule, exp_rule)
    # the draw must actually exercise every outcome, or this test proves little
    assert {ALLOW, REVIEW, BLOCK} <= set(action.tolist())
    assert rule.any()
    assert (~rule & (action == REVIEW)).any() or threshold != 220.0


def test_reference_many_is_reference_one_by_one() -> None:
    rows = [(0.0, 0.0), (220.0, 220.0), (300.0, 10.0)]
    many = reference_decide_many(rows, THRESHOLD, REVIEW_SCORE, BLOCK_SCORE)
    one = [reference_decide(a, m, THRESHOLD, REVIEW_SCORE, BLOCK_SCORE) for a, m in rows]
    assert many == one


# Hand-computed: z = 6 * (amount / 220 - 1) + ln(amount / avg_30d) (log term only when both
# are positive), score = 1 / (1 + e^-z). Values worked out with a calculator:
#   300 / 300 : z = 6 * 80/220            = 2.181818  -> score 0.898605 (below 0.9; rule only)
#   10000/100 : z = 266.7273 + ln(100)    = 271.33    -> score 1.0 (BLOCK)
#   10 / 50   : z = -5.727273 + ln(0.2)   = -7.336711 -> score 0.000651
#   200 / 1   : z = -0.545455 + ln(200)   = 4.752863  -> score 0.991447 (REVIEW by score)
#   200 / 0.1 : z = -0.545455 + ln(2000)  = 7.055448  -> score 0.999138 (BLOCK by score)
#   0 / 50    : z = -6                                -> score 0.002473
#   100 / 0   : z = 6 * (100/220 - 1)     = -3.272727 -> score 0.036519
#   220 / 220 : z = 0                                 -> score 0.5 (not above the threshold)
HAND_CASES = [
    # amount, avg_30d, score, action, rule fired
    (300.0, 300.0, 0.898605, REVIEW, True),
    (10_000.0, 100.0, 1.0, BLOCK, True),
    (10.0, 50.0, 0.000651, ALLOW, False),
    (200.0, 1.0, 0.991447, REVIEW, False),
    (200.0, 0.1, 0.999138, BLOCK, False),
    (0.0, 50.0, 0.002473, ALLOW, False),
    (100.0, 0.0, 0.036519, ALLOW, False),
    (220.0, 220.0, 0.5, ALLOW, False),
]


@pytest.mark.parametrize(("amount", "avg", "score", "action", "rule"), HAND_CASES)
def test_hand_computed_cases(
    amount: float, avg: float, score: float, action: int, rule: bool
) -> None:
    got_score, got_action, got_rule = run_kernel(matrix([amount], [avg]))
    assert got_score[0] == pytest.approx(score, abs=1e-6)
    assert got_action[0] == action
    assert bool(got_rule[0]) is rule
    ref_score, ref_action, ref_rule = reference_decide(
        amount, avg, THRESHOLD, REVIEW_SCORE, BLOCK_SCORE
    )
    assert ref_score == pytest.approx(score, abs=1e-6)
    assert (ref_action, ref_rule) == (action, rule)


def test_only_amount_and_30d_mean_columns_matter() -> None:
    a = matrix([300.0, 10.0], [50.0, 50.0], fill=1.0)
    b = matrix([300.0, 10.0], [50.0, 50.0], fill=1e6)
    for x, y in zip(run_kernel(a), run_kernel(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_thresholds_are_parameters() -> None:
    features = matrix([100.0], [100.0])  # z = 6 * (100/220 - 1): score 0.0365
    _, action, rule = run_kernel(features, threshold=99.0)
    assert action[0] == REVIEW
    assert rule[0]
    _, action, _ = run_kernel(features, review_score=0.03)
    assert action[0] == REVIEW
    _, action, _ = run_kernel(features, review_score=0.03, block_score=0.035)
    assert action[0] == BLOCK


def test_empty_batch_writes_nothing() -> None:
    score, action, rule = run_kernel(np.empty((0, len(FEATURES)), dtype=np.float64))
    assert score.shape == action.shape == rule.shape == (0,)
