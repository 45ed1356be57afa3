"""A ``RuleTable`` compiled into flat arrays for ``fraud.kernels.rules.evaluate_rules``.

``compile_rules(table, feature_names)`` resolves feature names to columns of the feature matrix
(``feature_names`` is its column order) and operators/actions to codes; ``apply_rules`` checks a
feature matrix and runs the kernel over all rules at once; ``fired_ids`` names the rules that
fired on one row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fraud.kernels.rules import OPERATOR_CODES, evaluate_rules
from fraud.rules.table import Action, RuleTable, RuleTableError, from_rows

__all__ = ["CompiledRules", "apply_rules", "compile_rules", "fired_ids", "warmup"]

I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

_ACTION_CODES = frozenset(int(a) for a in Action)
_OP_CODES = frozenset(OPERATOR_CODES.values())


def _frozen(values: object, dtype: type[np.generic]) -> npt.NDArray[np.generic]:
    array = np.array(values, dtype=dtype, copy=True, order="C")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRules:
    """Flat, read-only arrays of a rule table (C conditions, R rules, F feature columns).

    * ``cond_feature`` (C,) int64: column of ``feature_names`` each condition reads;
      ``cond_op`` (C,) int8: ``fraud.kernels.rules.OP_*``; ``cond_threshold`` (C,) float64;
      ``cond_rule`` (C,) int64: the rule index of each condition, conditions grouped by rule.
    * ``rule_offsets`` (R + 1,) int64: rule ``r`` owns conditions
      ``[rule_offsets[r], rule_offsets[r + 1])``, at least one.
    * ``rule_action`` (R,) int8: ALLOW=1 / REVIEW=2 / BLOCK=3; ``rule_enabled`` (R,) bool.
    * ``rule_ids`` (R,), ``feature_names`` (F,), ``version`` of the table.

    Constructing one validates the arrays against each other, so the kernel never indexes out of
    bounds. Equality is identity (the arrays make field-wise ``==`` ambiguous).
    """

    cond_feature: I64
    cond_op: I8
    cond_threshold: F64
    cond_rule: I64
    rule_offsets: I64
    rule_action: I8
    rule_enabled: B
    rule_ids: tuple[str, ...]
    feature_names: tuple[str, ...]
    version: str
    rule_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, dtype: type[np.generic]) -> None:
            object.__setattr__(self, name, _frozen(getattr(self, name), dtype))

        put("cond_feature", np.int64)
        put("cond_op", np.int8)
        put("cond_threshold", np.float64)
        put("cond_rule", np.int64)
        put("rule_offsets", np.int64)
        put("rule_action", np.int8)
        put("rule_enabled", np.bool_)
        object.__setattr__(self, "rule_ids", tuple(self.rule_ids))
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        object.__setattr__(self, "rule_index", {r: i for i, r in enumerate(self.rule_ids)})
        self._validate()

    def _validate(self) -> None:
        n_cond = self.cond_feature.shape[0]
        n_rules = len(self.rule_ids)
        for name in ("cond_feature", "cond_op", "cond_threshold", "cond_rule"):
            array = getattr(self, name)
            if array.shape != (n_cond,):
                raise ValueError(f"{name} has shape {array.shape}, expected ({n_cond},)")
        for name, shape in (
            ("rule_offsets", (n_rules + 1,)),
            ("rule_action", (n_rules,)),
            ("rule_enabled", (n_rules,)),
        ):
            array = getattr(self, name)
            if array.shape != shape:
                raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
        if len(self.rule_index) != n_rules:
            raise ValueError("rule_ids are not unique")
        offsets = self.rule_offsets
        if offsets[0] != 0 or offsets[-1] != n_cond or np.any(np.diff(offsets) < 1):
            raise ValueError("rule_offsets must go from 0 to len(conditions), >= 1 per rule")
        expected_rule = np.repeat(np.arange(n_rules, dtype=np.int64), np.diff(offsets))
        if not np.array_equal(self.cond_rule, expected_rule):
            raise ValueError("cond_rule disagrees with rule_offsets")
        n_features = len(self.feature_names)
        if n_cond and (self.cond_feature.min() < 0 or self.cond_feature.max() >= n_features):
            raise ValueError(f"cond_feature out of range for {n_features} features")
        if not set(self.cond_op.tolist()) <= _OP_CODES:
            raise ValueError(f"cond_op has unknown codes (expected {sorted(_OP_CODES)})")
        if not np.all(np.isfinite(self.cond_threshold)):
            raise ValueError("cond_threshold must be finite")
        if not set(self.rule_action.tolist()) <= _ACTION_CODES:
            raise ValueError(f"rule_action has unknown codes (expected {sorted(_ACTION_CODES)})")

    @property
    def n_rules(self) -> int:
        return len(self.rule_ids)


def compile_rules(table: RuleTable, feature_names: Sequence[str]) -> CompiledRules:
    """Arrays for ``table`` over a feature matrix whose columns are ``feature_names``."""
    column = {name: j for j, name in enumerate(feature_names)}
    if len(column) != len(feature_names):
        raise ValueError(f"duplicate names in feature_names: {list(feature_names)}")
    cond_feature: list[int] = []
    cond_op: list[int] = []
    cond_threshold: list[float] = []
    cond_rule: list[int] = []
    offsets = [0]
    for r, rule in enumerate(table.rules):
        for c in rule.conditions:
            if c.feature not in column:
                raise RuleTableError(
                    f"{table.source}:{c.line}: feature {c.feature!r} of rule {rule.rule_id!r} "
                    "is not a column of the feature matrix"
                )
            cond_feature.append(column[c.feature])
            cond_op.append(OPERATOR_CODES[c.operator])
            cond_threshold.append(c.threshold)
            cond_rule.append(r)
        offsets.append(len(cond_feature))
    return CompiledRules(
        cond_feature=np.array(cond_feature, dtype=np.int64),
        cond_op=np.array(cond_op, dtype=np.int8),
        cond_threshold=np.array(cond_threshold, dtype=np.float64),
        cond_rule=np.array(cond_rule, dtype=np.int64),
        rule_offsets=np.array(offsets, dtype=np.int64),
        rule_action=np.array([int(rule.action) for rule in table.rules], dtype=np.int8),
        rule_enabled=np.array([rule.enabled for rule in table.rules], dtype=np.bool_),
        rule_ids=table.rule_ids,
        feature_names=tuple(feature_names),
        version=table.version,
    )


def apply_rules(compiled: CompiledRules, features: npt.ArrayLike) -> tuple[B, I8]:
    """Evaluate every rule on every row of ``features`` (n, F) in ``compiled.feature_names`` order.

    Returns ``(fired, action)``: ``fired`` (n, R) bool, column ``r`` for ``compiled.rule_ids[r]``;
    ``action`` (n,) int8, the most severe action among the fired rules, ALLOW (1) when none.
    NaN feature values never meet a condition. Integer and bool matrices are converted to
    float64; anything else that is not a 2-D real matrix with F columns raises ``ValueError``.
    """
    array = np.asarray(features)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"features must be a real numeric matrix, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"features must be 2-D (n, F), got shape {array.shape}")
    n_features = len(compiled.feature_names)
    if array.shape[1] != n_features:
        raise ValueError(
            f"features has {array.shape[1]} columns, the rules expect {n_features} "
            f"({', '.join(compiled.feature_names)})"
        )
    matrix = np.ascontiguousarray(array, dtype=np.float64)
    n = matrix.shape[0]
    fired = np.zeros((n, compiled.n_rules), dtype=np.bool_)
    action = np.empty(n, dtype=np.int8)
    evaluate_rules(
        matrix,
        compiled.cond_feature,
        compiled.cond_op,
        compiled.cond_threshold,
        compiled.rule_offsets,
        compiled.rule_action,
        compiled.rule_enabled,
        fired,
        action,
    )
    return fired, action


def fired_ids(compiled: CompiledRules, fired_row: npt.ArrayLike) -> list[str]:
    """The ids of the rules set in ``fired_row`` (one row of ``apply_rules``' ``fired``)."""
    row = np.asarray(fired_row)
    if row.dtype != np.bool_ or row.shape != (compiled.n_rules,):
        raise ValueError(
            f"fired_row must be a bool vector of {compiled.n_rules} rules, "
            f"got {row.dtype} {row.shape}"
        )
    return [compiled.rule_ids[r] for r in np.flatnonzero(row).tolist()]


def warmup() -> None:
    """Compile (or load from the cache) ``evaluate_rules`` for the types ``apply_rules`` uses."""
    names = ("x",)
    table = from_rows(
        [
            {
                "rule_id": "WARMUP",
                "feature": "x",
                "operator": ">",
                "threshold": 0.0,
                "action": "REVIEW",
                "reason": "warm-up",
                "enabled": True,
            }
        ],
        names,
    )
    apply_rules(compile_rules(table, names), np.zeros((1, 1), dtype=np.float64))
