"""Literal copies of ``fraud.contracts.units``, kept where it may not be imported, agree with it."""

from __future__ import annotations

from fraud import settings
from fraud.contracts import units
from fraud.kernels import actions
from fraud.kernels import customer as customer_kernel
from fraud.kernels import features as features_kernel
from fraud.kernels import terminal as terminal_kernel
from fraud.rules.table import V1_FEATURES
from fraud.v1.decision_pb2 import Action


def test_time_units() -> None:
    assert units.MINUTE_MS == 60 * 1000
    assert units.HOUR_MS == 60 * units.MINUTE_MS
    assert units.DAY_MS == 24 * units.HOUR_MS


def test_kernel_copies_equal_the_units() -> None:
    assert features_kernel.MINUTE_MS == units.MINUTE_MS
    assert features_kernel.HOUR_MS == units.HOUR_MS
    assert features_kernel.DAY_MS == units.DAY_MS
    assert float(units.HOUR_MS) == customer_kernel.MS_PER_HOUR
    assert len(units.BEHAVIOUR_FEATURES) == customer_kernel.N_EXTRAS


def test_kernel_int64_bounds_equal_the_units() -> None:
    assert units.INT64_MIN == customer_kernel.INT64_MIN == terminal_kernel.INT64_MIN
    assert units.INT64_MAX == terminal_kernel.INT64_MAX
    assert units.NO_TIME == units.INT64_MIN


def test_settings_copies_equal_the_units() -> None:
    assert settings._HOUR_MS == units.HOUR_MS
    assert settings._DAY_MS == units.DAY_MS


def test_kernel_action_codes_are_the_wire_enum() -> None:
    assert (actions.ALLOW, actions.REVIEW, actions.BLOCK) == (
        Action.ALLOW,
        Action.REVIEW,
        Action.BLOCK,
    )


def test_feature_names_are_unique_and_the_rule_table_uses_only_them() -> None:
    assert len(set(units.ALL_FEATURES)) == len(units.ALL_FEATURES)
    assert set(V1_FEATURES) <= set(units.ALL_FEATURES)
    assert set(units.NULLABLE_FEATURES) <= set(units.BEHAVIOUR_FEATURES)
    assert len(units.CUSTOMER_WINDOW_FEATURES) == 2 * len(units.WINDOW_DAYS)
    assert len(units.TERMINAL_FEATURES) == 2 * len(units.WINDOW_DAYS)
