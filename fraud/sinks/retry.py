"""Retry, dead-letter and circuit-breaker policy for webhooks (pure: clock and rng injected).

A delivery is tried once; on a retryable outcome it goes to retry topic ``retry_level`` (one topic
per entry of ``RetryPolicy.delays``) to be tried again after ``delay_s``; after
``RetryPolicy.max_attempts`` deliveries, or on a non-retryable outcome, it goes to the dead letters.

``retry_level`` is normally ``attempt - 1``. When a ``Retry-After`` asks for longer than that
level's delay, the step moves to the first later level whose nominal delay covers it, so a topic
never holds a message due much later than the topic's own delay (no head-of-line blocking).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = [
    "Action",
    "BreakerState",
    "CircuitBreaker",
    "Classification",
    "Outcome",
    "RetryPolicy",
    "Step",
    "classify",
    "classify_with_reason",
    "next_step",
    "retry_after_seconds",
]


class Outcome(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Classification:
    outcome: Outcome
    reason: str


def classify_with_reason(status: int | None, error: str | None) -> Classification:
    """Outcome of one delivery attempt and a short human-readable reason.

    ``status`` None means no HTTP response (connection error, timeout: ``error`` says which).
    2xx succeeds; no response, 408, 429 and 5xx are retried; everything else is given up on.
    """
    if status is None:
        return Classification(Outcome.RETRY, f"no response: {error or 'unknown error'}")
    if 200 <= status <= 299:
        return Classification(Outcome.SUCCESS, f"HTTP {status}")
    if status in (408, 429) or 500 <= status <= 599:
        return Classification(Outcome.RETRY, f"HTTP {status} (retryable)")
    if 400 <= status <= 499:
        return Classification(Outcome.GIVE_UP, f"HTTP {status} (client error, not retryable)")
    if 100 <= status <= 199:
        return Classification(Outcome.GIVE_UP, f"HTTP {status} (unexpected informational status)")
    if 300 <= status <= 399:
        return Classification(Outcome.GIVE_UP, f"HTTP {status} (redirects are not followed)")
    return Classification(Outcome.GIVE_UP, f"HTTP {status} (invalid status code)")


def classify(status: int | None, error: str | None) -> Outcome:
    """``classify_with_reason(status, error).outcome``."""
    return classify_with_reason(status, error).outcome


def retry_after_seconds(header: str | None, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), never negative.

    None when the header is absent or not valid. A date in the past gives 0.0.
    """
    if header is None:
        return None
    value = header.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        try:
            return float(int(value))
        except (ValueError, OverflowError):  # absurdly long digit strings
            return None
    try:
        when = parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC without a claim about local time
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)


@dataclass(frozen=True)
class RetryPolicy:
    """Delay before each retry (one retry topic each) and the jitter fraction applied to them."""

    delays: tuple[float, ...] = (1.0, 10.0, 60.0, 600.0)
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if any(not d >= 0 for d in self.delays):  # also rejects NaN
            raise ValueError(f"delays must be >= 0: {self.delays}")
        if any(b < a for a, b in zip(self.delays, self.delays[1:], strict=False)):
            raise ValueError(f"delays must not decrease: {self.delays}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1]: {self.jitter}")

    @property
    def max_attempts(self) -> int:
        """Deliveries in all: the first try plus one per retry topic."""
        return len(self.delays) + 1


class Action(enum.Enum):
    DONE = "done"  # delivered: nothing more to do
    DELIVER_LATER = "deliver_later"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Step:
    """What to do after an attempt: deliver later (``delay_s``, ``retry_level``) or dead-letter."""

    action: Action
    delay_s: float = 0.0
    retry_level: int | None = None
    reason: str = ""

    @property
    def is_retry(self) -> bool:
        return self.action is Action.DELIVER_LATER

    @property
    def is_dead_letter(self) -> bool:
        return self.action is Action.DEAD_LETTER


def next_step(
    policy: RetryPolicy,
    attempt: int,
    outcome: Outcome,
    retry_after: float | None,
    rng: random.Random,
) -> Step:
    """The step after ``attempt`` deliveries (1 after the first try) ended with ``outcome``.

    The delay is ``policy.delays[attempt - 1]``; with ``retry_after`` (a 429's or 503's
    Retry-After) it is ``max(retry_after, that delay)`` capped at the last delay. Jitter draws the
    delay uniformly from ``[d * (1 - jitter), d * (1 + jitter)]``, but never below the (capped)
    ``retry_after``, so a retry does not come earlier than the server asked.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts deliveries made, so it is >= 1: {attempt}")
    if outcome is Outcome.SUCCESS:
        return Step(Action.DONE, reason="delivered")
    if outcome is Outcome.GIVE_UP:
        return Step(Action.DEAD_LETTER, reason="not retryable")
    if attempt >= policy.max_attempts:
        return Step(
            Action.DEAD_LETTER,
            reason=f"attempts exhausted ({attempt} of {policy.max_attempts})",
        )
    level = attempt - 1
    delay = policy.delays[level]
    floor = 0.0
    if retry_after is not None and retry_after == retry_after:  # ignore NaN
        cap = policy.delays[-1]
        floor = min(max(retry_after, 0.0), cap)
        delay = max(delay, floor)
        while policy.delays[level] < delay:  # terminates: delay <= cap == delays[-1]
            level += 1
    jittered = rng.uniform(delay * (1 - policy.jitter), delay * (1 + policy.jitter))
    return Step(Action.DELIVER_LATER, delay_s=max(jittered, floor), retry_level=level)


class BreakerState(enum.StrEnum):
    """A breaker's state; its value is the name ``fraud.metrics`` gauges it by."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Per-endpoint breaker: ``failure_threshold`` consecutive failures open it; after
    ``reset_after_s`` the next ``allow`` half-opens it and lets one trial through; a success
    closes it, a failure re-opens it. Time comes in as ``now_s`` (any monotonic seconds).

    ``state`` changes only in the methods: an open breaker reads OPEN until ``allow`` is asked
    after ``reset_after_s``. A half-open trial whose result is never recorded stops blocking
    after another ``reset_after_s`` (a new trial is allowed).
    """

    failure_threshold: int = 5
    reset_after_s: float = 30.0
    _state: BreakerState = field(default=BreakerState.CLOSED, init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)
    _opened_at: float = field(default=0.0, init=False, repr=False)
    _trial_at: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1: {self.failure_threshold}")
        if not self.reset_after_s >= 0:
            raise ValueError(f"reset_after_s must be >= 0: {self.reset_after_s}")

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self, now_s: float) -> bool:
        """May a delivery to this endpoint be tried now? (In HALF_OPEN, True once: the trial.)"""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if now_s - self._opened_at < self.reset_after_s:
                return False
            self._state = BreakerState.HALF_OPEN
            self._trial_at = None
        if self._trial_at is not None and now_s - self._trial_at < self.reset_after_s:
            return False  # a trial is in flight
        self._trial_at = now_s
        return True

    def record_success(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._trial_at = None

    def record_failure(self, now_s: float) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._state = BreakerState.OPEN
            self._opened_at = now_s
            self._trial_at = None
