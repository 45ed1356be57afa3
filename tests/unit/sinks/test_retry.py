"""Retry policy: classification, Retry-After, the retry schedule and the circuit breaker."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from fraud.sinks.retry import (
    Action,
    BreakerState,
    CircuitBreaker,
    Outcome,
    RetryPolicy,
    classify,
    classify_with_reason,
    next_step,
    retry_after_seconds,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "error", "outcome"),
    [
        (200, None, Outcome.SUCCESS),
        (202, None, Outcome.SUCCESS),
        (204, None, Outcome.SUCCESS),
        (299, None, Outcome.SUCCESS),
        (None, "timeout", Outcome.RETRY),
        (None, "connection refused", Outcome.RETRY),
        (None, None, Outcome.RETRY),
        (408, None, Outcome.RETRY),
        (429, None, Outcome.RETRY),
        (500, None, Outcome.RETRY),
        (502, None, Outcome.RETRY),
        (503, None, Outcome.RETRY),
        (599, None, Outcome.RETRY),
        (400, None, Outcome.GIVE_UP),
        (401, None, Outcome.GIVE_UP),
        (403, None, Outcome.GIVE_UP),
        (404, None, Outcome.GIVE_UP),
        (410, None, Outcome.GIVE_UP),
        (413, None, Outcome.GIVE_UP),
        (422, None, Outcome.GIVE_UP),
        (100, None, Outcome.GIVE_UP),
        (301, None, Outcome.GIVE_UP),
        (302, None, Outcome.GIVE_UP),
        (600, None, Outcome.GIVE_UP),
        (0, None, Outcome.GIVE_UP),
    ],
)
def test_classify(status: int | None, error: str | None, outcome: Outcome) -> None:
    assert classify(status, error) is outcome


def test_classify_reasons() -> None:
    assert "timeout" in classify_with_reason(None, "timeout").reason
    assert "redirect" in classify_with_reason(302, None).reason
    assert "informational" in classify_with_reason(101, None).reason
    assert "not retryable" in classify_with_reason(404, None).reason


def test_retry_after_delta_seconds() -> None:
    assert retry_after_seconds("120", NOW) == 120.0
    assert retry_after_seconds(" 0 ", NOW) == 0.0


def test_retry_after_http_date() -> None:
    when = datetime.fromtimestamp(NOW + 90, tz=UTC)
    assert retry_after_seconds(format_datetime(when, usegmt=True), NOW) == pytest.approx(90.0)
    past = datetime.fromtimestamp(NOW - 90, tz=UTC)
    assert retry_after_seconds(format_datetime(past, usegmt=True), NOW) == 0.0
    # a fixed literal: 1_800_000_000 is Fri, 15 Jan 2027 08:00:00 GMT
    assert retry_after_seconds("Fri, 15 Jan 2027 08:00:30 GMT", NOW) == 30.0
    assert retry_after_seconds("Fri, 15 Jan 2027 07:59:00 GMT", NOW) == 0.0
    assert retry_after_seconds("Fri, 15 Jan 2027 08:00:30 -0000", NOW) == 30.0


@pytest.mark.parametrize(
    "header", [None, "", "   ", "soon", "-5", "1.5", "12abc", "Mon, 99 Foo 2027", "٣", "9" * 5000]
)
def test_retry_after_garbage_is_none(header: str | None) -> None:
    assert retry_after_seconds(header, NOW) is None


def test_policy_defaults_and_validation() -> None:
    policy = RetryPolicy()
    assert policy.delays == (1, 10, 60, 600)
    assert policy.jitter == 0.2
    assert policy.max_attempts == 5
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        RetryPolicy(delays=(1.0, -1.0))
    with pytest.raises(ValueError, match="decrease"):
        RetryPolicy(delays=(10.0, 1.0))


def test_schedule_over_all_attempts_with_jitter_bounds() -> None:
    policy = RetryPolicy()
    rng = random.Random(1234)
    for attempt, delay in enumerate(policy.delays, start=1):
        draws = [next_step(policy, attempt, Outcome.RETRY, None, rng) for _ in range(2000)]
        for step in draws:
            assert step.action is Action.DELIVER_LATER and step.is_retry
            assert step.retry_level == attempt - 1
            assert delay * 0.8 <= step.delay_s <= delay * 1.2
        values = [s.delay_s for s in draws]
        # jitter really spreads over the band (both halves are hit)
        assert min(values) < delay * 0.85 and max(values) > delay * 1.15
    last = next_step(policy, policy.max_attempts, Outcome.RETRY, None, rng)
    assert last.is_dead_letter and last.action is Action.DEAD_LETTER
    assert "attempts exhausted (5 of 5)" in last.reason
    assert next_step(policy, 9, Outcome.RETRY, None, rng).is_dead_letter


def test_schedule_is_deterministic_for_a_seed_and_exact_without_jitter() -> None:
    policy = RetryPolicy()
    first = [next_step(policy, 2, Outcome.RETRY, None, random.Random(7)) for _ in range(3)]
    assert len({s.delay_s for s in first}) == 1
    flat = RetryPolicy(jitter=0.0)
    steps = [next_step(flat, a, Outcome.RETRY, None, random.Random(0)) for a in range(1, 5)]
    assert [s.delay_s for s in steps] == [1.0, 10.0, 60.0, 600.0]


def test_429_honours_retry_after() -> None:
    policy = RetryPolicy()
    rng = random.Random(99)
    for _ in range(500):
        # asks for 30 s on the first retry: at least 30 s, in the first topic whose delay covers it
        step = next_step(policy, 1, Outcome.RETRY, 30.0, rng)
        assert step.retry_level == 2
        assert 30.0 <= step.delay_s <= 30.0 * 1.2
        # shorter than the policy delay: the policy delay wins (with its jitter)
        step = next_step(policy, 3, Outcome.RETRY, 5.0, rng)
        assert step.retry_level == 2
        assert 60 * 0.8 <= step.delay_s <= 60 * 1.2
        # longer than the last delay: capped there
        step = next_step(policy, 1, Outcome.RETRY, 10_000.0, rng)
        assert step.retry_level == 3
        assert 600.0 <= step.delay_s <= 600 * 1.2
    exhausted = next_step(policy, 5, Outcome.RETRY, 30.0, rng)
    assert exhausted.is_dead_letter


def test_4xx_goes_to_dead_letters_at_once() -> None:
    policy = RetryPolicy()
    step = next_step(policy, 1, classify(404, None), None, random.Random(0))
    assert step.is_dead_letter and step.reason == "not retryable"
    assert step.retry_level is None


def test_success_is_done_and_attempt_is_validated() -> None:
    policy = RetryPolicy()
    step = next_step(policy, 1, Outcome.SUCCESS, None, random.Random(0))
    assert step.action is Action.DONE and not step.is_retry and not step.is_dead_letter
    with pytest.raises(ValueError, match="attempt"):
        next_step(policy, 0, Outcome.RETRY, None, random.Random(0))


def test_no_delays_means_a_single_attempt() -> None:
    policy = RetryPolicy(delays=())
    assert policy.max_attempts == 1
    assert next_step(policy, 1, Outcome.RETRY, None, random.Random(0)).is_dead_letter


def test_breaker_opens_after_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=30.0)
    t = 100.0
    assert breaker.state is BreakerState.CLOSED and breaker.allow(t)
    breaker.record_failure(t)
    breaker.record_failure(t)
    breaker.record_success()  # resets the consecutive count
    breaker.record_failure(t)
    breaker.record_failure(t)
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 2
    breaker.record_failure(t)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(t + 29.9)
    assert breaker.state is BreakerState.OPEN


def test_breaker_half_opens_allows_one_trial_and_closes_on_success() -> None:
    breaker = CircuitBreaker()
    t = 0.0
    for _ in range(5):
        breaker.record_failure(t)
    assert breaker.state is BreakerState.OPEN
    assert breaker.allow(t + 30.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(t + 30.5)  # only one trial in flight
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow(t + 31.0) and breaker.allow(t + 31.0)


def test_breaker_trial_failure_reopens_for_another_period() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    breaker.record_failure(0.0)
    assert breaker.state is BreakerState.OPEN
    assert breaker.allow(10.0)
    breaker.record_failure(12.0)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(21.0)  # the period restarts at the trial's failure
    assert breaker.allow(22.0)
    assert breaker.state is BreakerState.HALF_OPEN


def test_breaker_lost_trial_does_not_block_forever() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    breaker.record_failure(0.0)
    assert breaker.allow(10.0)  # the trial's result never comes back
    assert not breaker.allow(15.0)
    assert breaker.allow(20.0)


def test_breaker_validation() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="reset_after_s"):
        CircuitBreaker(reset_after_s=-1.0)
