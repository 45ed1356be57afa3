"""The breaker gauge knows every breaker state, by the state's value."""

from __future__ import annotations

from fraud.metrics import BREAKER_STATE_VALUES
from fraud.sinks.retry import BreakerState


def test_every_breaker_state_has_a_gauge_value() -> None:
    assert set(BREAKER_STATE_VALUES) == {state.value for state in BreakerState}
    assert BREAKER_STATE_VALUES[BreakerState.CLOSED] == 0.0
    assert BREAKER_STATE_VALUES[BreakerState.HALF_OPEN] < BREAKER_STATE_VALUES[BreakerState.OPEN]
