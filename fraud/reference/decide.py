"""Slow twin of ``fraud.kernels.decide.score_and_decide``, straight from its definition."""

from __future__ import annotations

import math
from collections.abc import Sequence

ALLOW, REVIEW, BLOCK = 1, 2, 3


def reference_decide(
    amount: float,
    avg_30d: float,
    amount_threshold: float,
    review_score: float,
    block_score: float,
) -> tuple[float, int, bool]:
    """(score, action, amount rule fired) for one transaction."""
    z = 6.0 * (amount / amount_threshold - 1.0)
    if amount > 0 and avg_30d > 0:
        z += math.log(amount / avg_30d)
    score = 1.0 / (1.0 + math.exp(-z))
    rule = amount > amount_threshold
    action = ALLOW
    if rule or score >= review_score:
        action = REVIEW
    if score >= block_score:
        action = BLOCK
    return score, action, rule


def reference_decide_many(
    rows: Sequence[tuple[float, float]],
    amount_threshold: float,
    review_score: float,
    block_score: float,
) -> list[tuple[float, int, bool]]:
    return [reference_decide(a, m, amount_threshold, review_score, block_score) for a, m in rows]
