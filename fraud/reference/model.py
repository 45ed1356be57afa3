"""Slow twin of ``fraud.kernels.model``: a model table scored row by row with dicts and lists.

No numba, no numpy arithmetic: each tree is rebuilt as nested dicts and walked from its root;
the logistic model is a sum over named features. For tests and debugging only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fraud.model.table import ModelTable

Row = Sequence[float]
Result = tuple[float, float, dict[str, float]]  # score, raw score, contribution per feature name


def _sigmoid(raw: float) -> float:
    if raw >= 0:
        return 1.0 / (1.0 + math.exp(-raw))
    e = math.exp(raw)
    return e / (1.0 + e)


def reference_logistic(table: ModelTable, row: Row) -> Result:
    """(score, raw, contributions) of one row for a logistic table."""
    a = {name: arr.tolist() for name, arr in table.arrays.items()}
    raw = table.scalars["intercept"]
    contrib: dict[str, float] = {}
    for j, name in enumerate(table.feature_names):
        c, m, s = a["coef"][j], a["mean"][j], a["scale"][j]
        term = c * ((row[j] - m) / s)
        raw += term
        contrib[name] = term - c * ((a["base"][j] - m) / s)
    return _sigmoid(raw), raw, contrib


def tree_dicts(table: ModelTable) -> list[dict[str, Any]]:
    """Each tree as nested dicts: leaves ``{"value", "mean"}``; splits add ``"feature"`` (a
    name), ``"threshold"``, ``"missing_left"``, ``"left"``, ``"right"``."""
    a = {name: arr.tolist() for name, arr in table.arrays.items()}

    def build(i: int) -> dict[str, Any]:
        node: dict[str, Any] = {"value": a["value"][i], "mean": a["mean_value"][i]}
        if a["feature"][i] >= 0:
            node["feature"] = table.feature_names[a["feature"][i]]
            node["threshold"] = a["threshold"][i]
            node["missing_left"] = bool(a["missing_left"][i])
            node["left"] = build(a["left"][i])
            node["right"] = build(a["right"][i])
        return node

    return [build(root) for root in a["tree_offsets"][:-1]]


def reference_trees(
    table: ModelTable, row: Row, trees: list[dict[str, Any]] | None = None
) -> Result:
    """(score, raw, contributions) of one row for a trees table (pass ``tree_dicts`` to reuse)."""
    column = {name: j for j, name in enumerate(table.feature_names)}
    raw = table.scalars["init"]
    contrib = dict.fromkeys(table.feature_names, 0.0)
    for tree in tree_dicts(table) if trees is None else trees:
        node = tree
        while "feature" in node:
            x = row[column[node["feature"]]]
            go_left = node["missing_left"] if math.isnan(x) else x <= node["threshold"]
            child = node["left"] if go_left else node["right"]
            contrib[node["feature"]] += child["mean"] - node["mean"]
            node = child
        raw += node["value"]
    return _sigmoid(raw), raw, contrib


def reference_score(table: ModelTable, rows: Sequence[Row]) -> list[Result]:
    """(score, raw, contributions) for each row, dispatching on the table's kind."""
    if table.kind == "logistic":
        return [reference_logistic(table, row) for row in rows]
    trees = tree_dicts(table)
    return [reference_trees(table, row, trees) for row in rows]
