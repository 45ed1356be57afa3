"""Training from the decision log and offline evaluation (fraud/tools/train.py,
fraud/tools/decision_log.py).

The broker tests publish a simulated, labelled month as the engine would log it: one Decision
per transaction with the batch reference features (``tests.batch_reference``, which the
streaming engine is tested to equal) and score 0, and one Label per transaction.
"""

from __future__ import annotations

import numpy as np
import pytest

from fraud.contracts.units import ALL_FEATURES, HOUR_MS, NULLABLE_FEATURES
from fraud.contracts.units import DAY_MS as MS_PER_DAY
from fraud.model.scoring import score
from fraud.tools.decision_log import DecisionLog, LabelLog
from fraud.tools.train import build_training_set, train_model

# Train on days 14..20 (the terminal risk features need a week of labels before them, and the
# 30-day windows some history), delay 21..27, test 28..34.


def _ms(day: int, hour: int = 12) -> int:
    return day * MS_PER_DAY + hour * HOUR_MS


def _log(times: list[int], ids: list[str], nan_col: int | None = None) -> DecisionLog:
    n = len(ids)
    feats = np.arange(n * len(ALL_FEATURES), dtype=np.float64).reshape(n, -1)
    if nan_col is not None:
        feats[:, nan_col] = np.nan
    return DecisionLog(
        transaction_id=ids,
        customer_id=[f"c{i % 2}" for i in range(n)],
        event_time_ms=np.array(times, np.int64),
        score=np.zeros(n),
        action=np.ones(n, np.int8),
        features=feats,
    )


def test_build_training_set_keeps_labelled_training_days() -> None:
    start = 100 * MS_PER_DAY
    times = [
        start - 1,  # before the period
        _ms(100, 0),  # day 0, labelled fraud
        _ms(102),  # day 2, no label
        _ms(106, 23),  # day 6, labelled genuine
        start + 7 * MS_PER_DAY,  # day 7: delay period
        _ms(120),  # test period
    ]
    ids = ["a", "b", "c", "d", "e", "f"]
    log = _log(times, ids)
    labels = LabelLog(["f", "a", "d", "b", "e", "zz"], np.array([1, 1, 0, 1, 0, 1], np.int8))
    x, y = build_training_set(log, labels, start_ms=start, train_days=7, delay_days=7)
    assert y.tolist() == [1, 0]
    np.testing.assert_array_equal(x, log.features[[1, 3]])
    # a shorter training period
    x, y = build_training_set(log, labels, start_ms=start, train_days=1)
    assert y.tolist() == [1] and x.shape == (1, len(ALL_FEATURES))
    # nothing labelled in the period
    x, y = build_training_set(log, LabelLog([], np.zeros(0, np.int8)), start_ms=start)
    assert x.shape == (0, len(ALL_FEATURES)) and y.shape == (0,)


def test_train_model_logistic_leaves_out_nan_features() -> None:
    rng = np.random.default_rng(0)
    n, f = 400, len(ALL_FEATURES)
    x = rng.normal(size=(n, f))
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 1).astype(np.int8)
    x[::7, 3] = np.nan  # a feature with a missing value in training
    table = train_model(x, y, "logistic", ALL_FEATURES)
    dropped = {ALL_FEATURES[3], *NULLABLE_FEATURES}
    assert set(table.feature_names) == set(ALL_FEATURES) - dropped
    assert set(table.meta["dropped"].split(",")) == dropped
    assert table.meta["train_rows"] == str(n)
    trees = train_model(x, y, "trees", ALL_FEATURES)
    assert trees.feature_names == ALL_FEATURES and trees.n_trees == 100
    scores, _ = score(trees, x)
    assert np.isfinite(scores).all()
    with pytest.raises(ValueError, match="both classes"):
        train_model(x, np.zeros(n, np.int8), "trees")
    with pytest.raises(ValueError, match="shape"):
        train_model(x[:, :3], y, "trees")
