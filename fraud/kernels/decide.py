"""The first score and the decision, as one numba kernel over the batch's feature matrix.

Inputs are plain arrays: the feature matrix (rows = transactions, columns as in
``fraud.features.FEATURES``). Issue-3 decision tables and model tables replace the fixed rule and
the heuristic score; the kernel shape (features in, score and action out) stays.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

ALLOW = 1
REVIEW = 2
BLOCK = 3

# Column positions in the feature matrix (see fraud.features.FEATURES).
COL_AMOUNT = 0
COL_AVG_30D = 6


@njit(cache=True, nogil=True)
def score_and_decide(
    features: np.ndarray,
    amount_threshold: float,
    review_score: float,
    block_score: float,
    out_score: np.ndarray,
    out_action: np.ndarray,
    out_rule_amount: np.ndarray,
) -> None:  # pragma: no cover - compiled; checked against fraud.reference.decide
    """Score each row and pick its action.

    score = logistic(6 * (amount / threshold - 1) + ln(amount / avg_30d)), a bounded measure of
    "large for the rules, and large for this customer". The amount rule fires when amount
    exceeds the threshold (REVIEW); a score at or above ``review_score`` reviews, at or above
    ``block_score`` blocks.
    """
    n = features.shape[0]
    for i in range(n):
        amount = features[i, COL_AMOUNT]
        avg = features[i, COL_AVG_30D]
        z = 6.0 * (amount / amount_threshold - 1.0)
        if amount > 0.0 and avg > 0.0:
            z += math.log(amount / avg)
        s = 1.0 / (1.0 + math.exp(-z))
        out_score[i] = s
        action = ALLOW
        rule = amount > amount_threshold
        out_rule_amount[i] = rule
        if rule or s >= review_score:
            action = REVIEW
        if s >= block_score:
            action = BLOCK
        out_action[i] = action
