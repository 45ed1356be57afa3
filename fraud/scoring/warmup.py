"""Compile (or load from numba's cache) every kernel of the hot path before the first
transaction, so that no deadline and no first batch pays for it."""

from __future__ import annotations

from fraud.model.scoring import warmup as warm_model
from fraud.rules.compiled import warmup as warm_rules
from fraud.scoring.features import warmup as warm_features
from fraud.windows.customer import warmup as warm_customers
from fraud.windows.terminal import warmup as warm_terminals

__all__ = ["warmup"]


def warmup() -> None:
    """Warm the window kernels, the features the customer stage adds, the rules and the model."""
    warm_customers()
    warm_features()
    warm_terminals()
    warm_rules()
    warm_model()
