"""Decision tables as arrays: one numba kernel evaluates every rule on every row of a batch.

A compiled table (see ``fraud.rules.compiled``) is a list of conditions grouped by rule, CSR
style: rule ``r`` owns conditions ``[rule_offsets[r], rule_offsets[r + 1])``, each condition
being ``features[i, cond_feature[c]] <cond_op[c]> cond_threshold[c]``. A rule fires on a row
when it is enabled and all its conditions hold (AND). The row's action is the most severe
action among the rules that fired, ``ALLOW`` when none did.

NaN feature values (e.g. an unknown geo velocity) make every comparison false, ``!=`` included
(IEEE would say ``NaN != t`` is true): a condition on a missing value is never met, so a rule
needing it does not fire. Infinite values compare as usual. Thresholds are finite.

The slow twin, written from the decision table itself, is ``fraud.reference.rules``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fraud.kernels import njit_cached
from fraud.kernels.actions import ALLOW, BLOCK, REVIEW

__all__ = [
    "ALLOW",
    "BLOCK",
    "OPERATOR_CODES",
    "OP_EQ",
    "OP_GE",
    "OP_GT",
    "OP_LE",
    "OP_LT",
    "OP_NE",
    "REVIEW",
    "evaluate_rules",
]

# Operator codes (``cond_op``, int8).
OP_GT = 0
OP_GE = 1
OP_LT = 2
OP_LE = 3
OP_EQ = 4
OP_NE = 5

OPERATOR_CODES: dict[str, int] = {
    ">": OP_GT,
    ">=": OP_GE,
    "<": OP_LT,
    "<=": OP_LE,
    "==": OP_EQ,
    "!=": OP_NE,
}


@njit_cached
def evaluate_rules(
    features: npt.NDArray[np.float64],
    cond_feature: npt.NDArray[np.int64],
    cond_op: npt.NDArray[np.int8],
    cond_threshold: npt.NDArray[np.float64],
    rule_offsets: npt.NDArray[np.int64],
    rule_action: npt.NDArray[np.int8],
    rule_enabled: npt.NDArray[np.bool_],
    out_fired: npt.NDArray[np.bool_],
    out_action: npt.NDArray[np.int8],
) -> None:  # pragma: no cover - compiled; checked against fraud.reference.rules
    """Evaluate R rules on n rows.

    Inputs: ``features`` (n, F) float64; conditions ``cond_feature`` (column in ``features``),
    ``cond_op`` (``OP_*``), ``cond_threshold``, grouped by rule with ``rule_offsets`` (R + 1);
    per rule ``rule_action`` (ALLOW / REVIEW / BLOCK) and ``rule_enabled``.

    Outputs (preallocated): ``out_fired`` (n, R) bool, ``out_action`` (n,) int8 = the largest
    action code among the fired rules, ALLOW when none fired. A disabled rule never fires; an
    enabled rule without conditions always fires; an unknown operator code is never met. The
    caller (``fraud.rules.compiled.apply_rules``) validates shapes and indices.
    """
    n = features.shape[0]
    n_rules = rule_offsets.shape[0] - 1
    for i in range(n):
        action = ALLOW
        for r in range(n_rules):
            fired = False
            if rule_enabled[r]:
                fired = True
                for c in range(rule_offsets[r], rule_offsets[r + 1]):
                    v = features[i, cond_feature[c]]
                    t = cond_threshold[c]
                    op = cond_op[c]
                    if op == OP_GT:
                        ok = v > t
                    elif op == OP_GE:
                        ok = v >= t
                    elif op == OP_LT:
                        ok = v < t
                    elif op == OP_LE:
                        ok = v <= t
                    elif op == OP_EQ:
                        ok = v == t
                    elif op == OP_NE:
                        ok = v != t and v == v  # v == v: NaN is "not met"
                    else:
                        ok = False
                    if not ok:
                        fired = False
                        break
            out_fired[i, r] = fired
            if fired and rule_action[r] > action:
                action = rule_action[r]
        out_action[i] = action
