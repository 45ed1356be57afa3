"""Slow twin of ``fraud.kernels.rules.evaluate_rules``, straight from the ``RuleTable``.

No arrays and no operator codes: each row becomes a ``{feature name: value}`` dict and each
rule's conditions are checked one by one with Python comparisons. A NaN value meets no
condition (``!=`` included); a disabled rule never fires; the action is the most severe among
the fired rules, ALLOW when none fired.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence

from fraud.rules.table import Action, Rule, RuleTable

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def reference_rule_fires(rule: Rule, values: Mapping[str, float]) -> bool:
    """Whether ``rule`` fires on a row given as ``{feature: value}``."""
    if not rule.enabled:
        return False
    for condition in rule.conditions:
        value = float(values[condition.feature])
        if math.isnan(value):
            return False
        if not _COMPARE[condition.operator](value, condition.threshold):
            return False
    return True


def reference_evaluate(table: RuleTable, values: Mapping[str, float]) -> tuple[list[bool], int]:
    """(fired flag per rule in table order, action code) for one row."""
    fired = [reference_rule_fires(rule, values) for rule in table.rules]
    action = int(Action.ALLOW)
    for rule, hit in zip(table.rules, fired, strict=True):
        if hit:
            action = max(action, int(rule.action))
    return fired, action


def reference_evaluate_many(
    table: RuleTable, feature_names: Sequence[str], rows: Sequence[Sequence[float]]
) -> tuple[list[list[bool]], list[int]]:
    """``reference_evaluate`` for each row, columns named by ``feature_names``."""
    fired: list[list[bool]] = []
    actions: list[int] = []
    for row in rows:
        if len(row) != len(feature_names):
            raise ValueError(f"row has {len(row)} values for {len(feature_names)} features")
        row_fired, action = reference_evaluate(table, dict(zip(feature_names, row, strict=True)))
        fired.append(row_fired)
        actions.append(action)
    return fired, actions


def reference_fired_ids(table: RuleTable, values: Mapping[str, float]) -> list[str]:
    """The ids of the rules that fire on one row."""
    return [rule.rule_id for rule in table.rules if reference_rule_fires(rule, values)]
