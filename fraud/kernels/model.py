"""numba kernels scoring a model table (see ``fraud.model.table`` for the arrays' meaning).

Both kernels take the (n, F) float64 feature matrix in the model's column order and write
``out_score[i] = sigmoid(raw_i)`` and ``out_contrib[i, j]``, the contribution of feature j to the
raw score (log-odds) of row i relative to the model's expected value. The Python-facing layer is
``fraud.model.scoring``; ``fraud.reference.model`` is the slow twin the tests compare with.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from fraud.kernels import njit_cached

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@njit_cached
def sigmoid(raw: float) -> float:
    """1 / (1 + exp(-raw)), without overflow for large negative raw."""
    if raw >= 0.0:
        return 1.0 / (1.0 + math.exp(-raw))
    e = math.exp(raw)
    return e / (1.0 + e)


@njit_cached
def score_logistic(
    features: F64,
    mean: F64,
    scale: F64,
    coef: F64,
    intercept: float,
    base: F64,
    out_score: F64,
    out_contrib: F64,
) -> None:
    """Logistic regression with its StandardScaler folded in.

    ``raw = intercept + sum_j coef[j] * (x[j] - mean[j]) / scale[j]``;
    ``out_contrib[i, j] = coef[j] * (x[j] - mean[j]) / scale[j] - coef[j] * (base[j] - mean[j]) /
    scale[j]`` (relative to the training average ``base``). NaN features give NaN outputs: the
    wrapper rejects them.
    """
    n = features.shape[0]
    n_features = coef.shape[0]
    for i in range(n):
        raw = intercept
        for j in range(n_features):
            term = coef[j] * ((features[i, j] - mean[j]) / scale[j])
            raw += term
            out_contrib[i, j] = term - coef[j] * ((base[j] - mean[j]) / scale[j])
        out_score[i] = sigmoid(raw)


@njit_cached
def score_trees(
    features: F64,
    feature: I32,
    threshold: F64,
    missing_left: B,
    left: I32,
    right: I32,
    value: F64,
    mean_value: F64,
    tree_offsets: I64,
    init: float,
    out_score: F64,
    out_contrib: F64,
) -> None:
    """A boosted tree ensemble: ``raw = init + sum over trees of the reached leaf's value``.

    At a split node a row goes left when ``x <= threshold``, right when ``x > threshold``; NaN
    goes left when ``missing_left`` is set, else right (the exporting estimator's choice, per
    node). Saabas contributions: every split on the path adds ``mean_value[child] -
    mean_value[node]`` to ``out_contrib[i, feature[node]]`` (the row is zeroed first).
    """
    n = features.shape[0]
    n_features = out_contrib.shape[1]
    n_trees = tree_offsets.shape[0] - 1
    for i in range(n):
        for j in range(n_features):
            out_contrib[i, j] = 0.0
        raw = init
        for t in range(n_trees):
            node = tree_offsets[t]
            f = feature[node]
            while f >= 0:
                x = features[i, f]
                if math.isnan(x):
                    child = left[node] if missing_left[node] else right[node]
                elif x <= threshold[node]:
                    child = left[node]
                else:
                    child = right[node]
                out_contrib[i, f] += mean_value[child] - mean_value[node]
                node = child
                f = feature[node]
            raw += value[node]
        out_score[i] = sigmoid(raw)
