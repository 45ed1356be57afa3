"""numba kernels scoring a model table (see ``fraud.model.table`` for the arrays' meaning).

Both kernels take the (n, F) float64 feature matrix in the model's column order and write
``out_score[i] = sigmoid(raw_i)`` and ``out_contrib[i, j]``, the contribution of feature j to the
raw score (log-odds) of row i relative to the model's expected value. The Python-facing layer is
``fraud.model.scoring``; ``fraud.reference.model`` is the slow twin the tests compare with.

Trees have two kernels with bit-for-bit the same outputs. ``score_trees`` walks each row down each
tree as stored (any depth). ``score_trees_blocked`` takes shallow trees padded to *perfect* trees
(``fraud.model.scoring`` builds that layout once per table) and goes tree by tree over blocks of
rows: every node of a tree is evaluated for all the rows of the block at once, and only the rows
whose path reaches it update their state, so the inner loop has no data-dependent branch and
vectorizes (row walking is bound by the chain of dependent loads from node to child). Both add a
row's contributions in the same order (tree by tree, root to leaf), and a row that does not reach
a node adds ``-0.0`` there (``x + -0.0 == x`` for every x), so the sums are the same.
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

BLOCK_ROWS = 128  # rows per block of score_trees_blocked (256 measured alike, 64 slower)
_NEUTRAL = -0.0  # x + -0.0 == x for every float x (+0.0 would turn -0.0 into +0.0)


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


@njit_cached
def score_trees_blocked(
    features: F64,
    tree_depth: I64,
    node_feature: I64,
    node_threshold: F64,
    node_nan_right: I64,
    node_delta_left: F64,
    node_delta_right: F64,
    leaf_value: F64,
    init: float,
    out_score: F64,
    out_contrib: F64,
) -> None:
    """``score_trees`` for trees padded to perfect binary trees (the same outputs, bit for bit).

    Tree ``t`` has depth ``d = tree_depth[t]``; its split nodes are ``[t, k]`` for heap positions
    ``k < 2**d - 1`` (root 0, children of k at 2k + 1 and 2k + 2) and its leaves ``leaf_value[t,
    l]`` for ``l < 2**d``, left to right. Split node ``[t, k]`` sends a row right when ``x >
    node_threshold`` (``x = features[i, node_feature]``), or when x is NaN and
    ``node_nan_right`` is 1; the row's contribution to that feature grows by
    ``node_delta_right`` (going right) or ``node_delta_left`` (going left). A leaf above depth
    ``d`` is padded with split nodes that send every row left (threshold +inf, NaN left) with
    deltas ``-0.0``, down to copies of its value. Rows go in blocks of ``BLOCK_ROWS``,
    transposed so that a node is one pass over contiguous values of its feature.
    """
    n, n_features = features.shape
    n_trees = tree_depth.shape[0]
    block = max(1, min(BLOCK_ROWS, n))
    x_t = np.empty((n_features, block), np.float64)
    acc = np.empty((n_features, block), np.float64)
    at = np.empty(block, np.int64)  # heap position of each row's current node in the tree
    raw = np.empty(block, np.float64)
    for start in range(0, n, block):
        m = min(block, n - start)
        for j in range(n_features):
            for i in range(m):
                x_t[j, i] = features[start + i, j]
                acc[j, i] = 0.0
        for i in range(m):
            raw[i] = init
        for t in range(n_trees):
            n_nodes = (1 << tree_depth[t]) - 1
            for i in range(m):
                at[i] = 0
            for k in range(n_nodes):  # heap order: a node comes after its parent
                threshold = node_threshold[t, k]
                go_left = node_delta_left[t, k]
                go_right = node_delta_right[t, k]
                left = 2 * k + 1
                x_row = x_t[node_feature[t, k]]
                acc_row = acc[node_feature[t, k]]
                # right = not (x <= threshold) sends NaN right, x > threshold sends it left; two
                # loops rather than a NaN test per row
                if node_nan_right[t, k]:
                    for i in range(m):
                        right = np.int64(not x_row[i] <= threshold)
                        here = at[i] == k
                        delta = go_right if right else go_left
                        acc_row[i] += delta if here else _NEUTRAL
                        at[i] = left + right if here else at[i]
                else:
                    for i in range(m):
                        right = np.int64(x_row[i] > threshold)
                        here = at[i] == k
                        delta = go_right if right else go_left
                        acc_row[i] += delta if here else _NEUTRAL
                        at[i] = left + right if here else at[i]
            for i in range(m):
                raw[i] += leaf_value[t, at[i] - n_nodes]
        for i in range(m):
            out_score[start + i] = sigmoid(raw[i])
            for j in range(n_features):
                out_contrib[start + i, j] = acc[j, i]
