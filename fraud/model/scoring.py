"""Score a feature matrix with a model table, and turn contributions into reason codes.

``score`` validates its inputs and runs the kernel of the table's kind
(``fraud.kernels.model``). No scikit-learn here: this is the hot path.

A trees table whose trees are all at most ``MAX_BLOCKED_DEPTH`` deep (the trained models are 3
deep) is scored by ``score_trees_blocked``, on a padded layout built once per table and kept while
the table lives; deeper ones by ``score_trees``. Both give the same bits.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fraud.kernels.model import score_logistic, score_trees, score_trees_blocked
from fraud.model.table import ModelTable

__all__ = ["MAX_BLOCKED_DEPTH", "score", "top_reasons", "warmup"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

MAX_BLOCKED_DEPTH = 5
"""Deepest tree of the padded layout: a tree of depth d costs 2**d - 1 node passes per block."""


@dataclass(frozen=True)
class _Blocked:
    """The arrays of ``score_trees_blocked`` for one table (see that kernel), read-only."""

    tree_depth: I64
    node_feature: I64
    node_threshold: F64
    node_nan_right: I64
    node_delta_left: F64
    node_delta_right: F64
    leaf_value: F64


_layouts: weakref.WeakKeyDictionary[ModelTable, _Blocked | None] = weakref.WeakKeyDictionary()
_layouts_lock = threading.Lock()


def _tree_depths(table: ModelTable) -> I64:
    a = table.arrays
    feature = a["feature"].tolist()
    left = a["left"].tolist()
    right = a["right"].tolist()
    depth = [0] * len(feature)
    for node, f in enumerate(feature):  # children come after their parent
        if f >= 0:
            depth[left[node]] = depth[right[node]] = depth[node] + 1
    starts = a["tree_offsets"][:-1]
    depths: I64 = np.maximum.reduceat(np.array(depth, np.int64), starts)
    return depths


def _build_blocked(table: ModelTable) -> _Blocked | None:
    """The padded layout of a trees table, or None when a tree is deeper than MAX_BLOCKED_DEPTH."""
    tree_depth = _tree_depths(table)
    if int(tree_depth.max()) > MAX_BLOCKED_DEPTH:
        return None
    a = table.arrays
    feature = a["feature"].tolist()
    threshold = a["threshold"].tolist()
    missing_left = a["missing_left"].tolist()
    left = a["left"].tolist()
    right = a["right"].tolist()
    value = a["value"].tolist()
    mean = a["mean_value"].tolist()
    n_trees = tree_depth.shape[0]
    depth = int(tree_depth.max())
    width = (1 << depth) - 1
    node_feature = np.zeros((n_trees, width), np.int64)
    node_threshold = np.full((n_trees, width), np.inf)
    node_nan_right = np.zeros((n_trees, width), np.int64)
    node_delta_left = np.full((n_trees, width), -0.0)
    node_delta_right = np.full((n_trees, width), -0.0)
    leaf_value = np.zeros((n_trees, width + 1), np.float64)
    for t, root in enumerate(a["tree_offsets"][:-1].tolist()):
        n_nodes = (1 << int(tree_depth[t])) - 1
        stack = [(0, root)]  # (heap position, node of the table)
        while stack:
            k, node = stack.pop()
            if k >= n_nodes:
                leaf_value[t, k - n_nodes] = value[node]
            elif feature[node] >= 0:
                node_feature[t, k] = feature[node]
                node_threshold[t, k] = threshold[node]
                node_nan_right[t, k] = 0 if missing_left[node] else 1
                # the very expression score_trees adds: mean_value[child] - mean_value[node]
                node_delta_left[t, k] = mean[left[node]] - mean[node]
                node_delta_right[t, k] = mean[right[node]] - mean[node]
                stack += [(2 * k + 1, left[node]), (2 * k + 2, right[node])]
            else:  # a leaf above the tree's depth: padding sends everything left, adds -0.0
                stack += [(2 * k + 1, node), (2 * k + 2, node)]
    arrays = (
        tree_depth,
        node_feature,
        node_threshold,
        node_nan_right,
        node_delta_left,
        node_delta_right,
        leaf_value,
    )
    for array in arrays:
        array.setflags(write=False)
    return _Blocked(*arrays)


def _blocked_layout(table: ModelTable) -> _Blocked | None:
    with _layouts_lock:
        if table in _layouts:
            return _layouts[table]
    layout = _build_blocked(table)
    with _layouts_lock:
        _layouts[table] = layout
    return layout


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
    elif (blocked := _blocked_layout(table)) is not None:
        score_trees_blocked(
            x,
            blocked.tree_depth,
            blocked.node_feature,
            blocked.node_threshold,
            blocked.node_nan_right,
            blocked.node_delta_left,
            blocked.node_delta_right,
            blocked.leaf_value,
            table.scalars["init"],
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
    """Compile (or load from numba's cache) the kernels with the argument types ``score`` uses."""
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
    depth = np.zeros(1, dtype=np.int64)
    node_i = np.zeros((1, 0), dtype=np.int64)
    node_f = np.zeros((1, 0), dtype=np.float64)
    leaf_value = np.zeros((1, 1), dtype=np.float64)
    for array in (depth, node_i, node_f, leaf_value):
        array.setflags(write=False)
    score_trees_blocked(
        x, depth, node_i, node_f, node_i, node_f, node_f, leaf_value, 0.0, out_score, out_contrib
    )
