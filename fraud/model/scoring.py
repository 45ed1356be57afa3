"""Score a feature matrix with a model table, and turn contributions into reason codes.

``score`` validates its inputs and runs the kernel of the table's kind
(``fraud.kernels.model``). No scikit-learn here: this is the hot path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from fraud.kernels.model import score_logistic, score_trees
from fraud.model.table import ModelTable

__all__ = ["score", "top_reasons", "warmup"]

F64 = npt.NDArray[np.float64]


def score(table: ModelTable, features: npt.ArrayLike) -> tuple[F64, F64]:
    """``(scores (n,), contributions (n, F))`` for the rows of ``features`` (n, F).

    Columns are in ``table.feature_names`` order (see ``check_features``). Scores are
    probabilities of the positive class; contributions are in raw-score (log-odds) units and sum
    per row to ``raw - table.expected_value``. Trees take NaN as "missing"; a logistic model
    raises ``ValueError`` on NaN (and on infinities, for both kinds a row would score NaN).
    """
    x = np.ascontiguousarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != table.n_features:
        raise ValueError(
            f"features must have shape (n, {table.n_features}) for model {table.version}, "
            f"got {x.shape}"
        )
    n = x.shape[0]
    out_score = np.empty(n, dtype=np.float64)
    out_contrib = np.empty((n, table.n_features), dtype=np.float64)
    a = table.arrays
    if table.kind == "logistic":
        bad = ~np.isfinite(x)
        if bad.any():
            cols = sorted({table.feature_names[j] for j in np.flatnonzero(bad.any(axis=0))})
            raise ValueError(f"logistic model {table.version} got NaN/inf in {cols}")
        score_logistic(
            x,
            a["mean"],
            a["scale"],
            a["coef"],
            table.scalars["intercept"],
            a["base"],
            out_score,
            out_contrib,
        )
    else:
        score_trees(
            x,
            a["feature"],
            a["threshold"],
            a["missing_left"],
            a["left"],
            a["right"],
            a["value"],
            a["mean_value"],
            a["tree_offsets"],
            table.scalars["init"],
            out_score,
            out_contrib,
        )
    return out_score, out_contrib


def top_reasons(
    table: ModelTable,
    features_row: npt.ArrayLike,
    contrib_row: npt.ArrayLike,
    k: int = 3,
) -> list[tuple[str, float, float]]:
    """Up to ``k`` reason codes for one row: ``(feature name, feature value, contribution)``.

    Only features that pushed the score up (contribution > 0) are reasons; largest contribution
    first, ties in feature order. NaN contributions are skipped.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    values: list[Any] = np.asarray(features_row, dtype=np.float64).ravel().tolist()
    contrib: list[Any] = np.asarray(contrib_row, dtype=np.float64).ravel().tolist()
    f = table.n_features
    if len(values) != f or len(contrib) != f:
        raise ValueError(
            f"features_row and contrib_row must have {f} values, got {len(values)}, {len(contrib)}"
        )
    order = sorted(
        (j for j in range(f) if contrib[j] > 0 and not math.isnan(contrib[j])),
        key=lambda j: (-contrib[j], j),
    )
    return [(table.feature_names[j], float(values[j]), float(contrib[j])) for j in order[:k]]


def warmup() -> None:
    """Compile (or load from numba's cache) both kernels with the argument types ``score`` uses."""
    x = np.zeros((1, 1), dtype=np.float64)
    one = np.ones(1, dtype=np.float64)
    zero = np.zeros(1, dtype=np.float64)
    out_score = np.empty(1, dtype=np.float64)
    out_contrib = np.empty((1, 1), dtype=np.float64)
    for arr in (one, zero):
        arr.setflags(write=False)  # table arrays are read-only, a distinct numba type
    score_logistic(x, zero, one, one, 0.0, zero, out_score, out_contrib)
    leaf = np.array([-1], dtype=np.int32)
    missing = np.zeros(1, dtype=np.bool_)
    offsets = np.array([0, 1], dtype=np.int64)
    leaf.setflags(write=False)
    missing.setflags(write=False)
    offsets.setflags(write=False)
    score_trees(
        x, leaf, zero, missing, leaf, leaf, zero, zero, offsets, 0.0, out_score, out_contrib
    )
