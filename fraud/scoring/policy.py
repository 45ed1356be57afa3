"""The decision policy (a compiled decision table and an optional model) and its loading from
files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fraud.contracts.units import ALL_FEATURES
from fraud.model.table import ModelTable, check_features, load_model_table
from fraud.rules.compiled import CompiledRules, compile_rules
from fraud.rules.table import load_rule_table
from fraud.settings import Settings

__all__ = ["Policy", "load_policy", "policy_from_settings"]


@dataclass(frozen=True)
class Policy:
    """What decides: a compiled decision table and an optional model, swapped as one value."""

    rules: CompiledRules
    model: ModelTable | None = None
    # Columns of the full feature matrix that the model reads, in the model's order.
    model_columns: tuple[int, ...] = ()
    review_score: float = 0.5
    block_score: float = 0.9

    @property
    def rules_version(self) -> str:
        return self.rules.version

    @property
    def model_version(self) -> str:
        return self.model.version if self.model is not None else ""


def load_policy(
    rules_path: Path,
    model_path: Path | None = None,
    *,
    review_score: float = 0.5,
    block_score: float = 0.9,
) -> Policy:
    """Parse, validate and compile; raises a one-line error naming the file on any problem."""
    rules = compile_rules(load_rule_table(rules_path, ALL_FEATURES), ALL_FEATURES)
    model = None
    columns: tuple[int, ...] = ()
    if model_path is not None:
        model = load_model_table(model_path)
        columns = tuple(int(c) for c in check_features(model, ALL_FEATURES))
    return Policy(
        rules=rules,
        model=model,
        model_columns=columns,
        review_score=review_score,
        block_score=block_score,
    )


def policy_from_settings(settings: Settings) -> Policy:
    return load_policy(
        settings.rules_path,
        settings.model_path,
        review_score=settings.review_score,
        block_score=settings.block_score,
    )
