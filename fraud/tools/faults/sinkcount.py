"""Scenario 5 (``sinks``): what each alert sink was expected to deliver against what its real
receiver got (pure).

The harness (``fraud.tools.faults.sinkrig``) hands in the event ids a run's alerts should
produce, each endpoint's receipts (2xx answers only), the webhook dead letters and the receipts
after a re-drive; this module counts and judges them:

- ``healthy`` and ``recovering`` (down, then up): every expected event id delivered exactly
  once (delivered == distinct == expected), none dead-lettered;
- ``failing`` (HTTP 500 forever) and ``slow`` (answers after the sink's timeout): nothing
  delivered, every expected event id dead-lettered once with the endpoint's failure in the
  reason, and after the endpoint is fixed ``fraud dlq redrive`` delivers each exactly once;
- the notifier (SMTP down, then up): every expected alert either mailed once or dead-lettered
  with ``send_failed``; none lost, none mailed twice; once SMTP is up, ``fraud dlq redrive
  --sink notifier --all`` mails each dead-lettered alert exactly once;
- the healthy endpoint's p99 delivery latency against the ``control`` endpoint's: a second
  webhook sink in the same run, whose endpoints are all healthy (as many as the first sink's,
  so that both do the same work), delivering the same alerts at the same time; measured side by
  side, the ratio does not move with the machine's load as one against an earlier run does.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_MAX_LATENCY_RATIO = 2.0  # the healthy endpoint's p99 at most twice the control's
EXAMPLES = 5


class Role(enum.Enum):
    HEALTHY = "healthy"  # answers 204 throughout
    RECOVERING = "recovering"  # not listening for the outage, then healthy
    FAILING = "failing"  # answers HTTP 500 until fixed
    SLOW = "slow"  # answers after the sink's timeout until fixed
    # answers 204 throughout, from a second sink whose endpoints are all healthy: the latency
    # reference of the same run
    CONTROL = "control"

    @property
    def dead_letters_expected(self) -> bool:
        return self in (Role.FAILING, Role.SLOW)


# What the detail of a dead letter of each failing role must say.
DEAD_LETTER_CAUSE = {Role.FAILING: "HTTP 500", Role.SLOW: "timeout"}


@dataclass(frozen=True, slots=True)
class DeadLetterSeen:
    """One webhook dead letter: its event id, reason code and detail."""

    event_id: str
    reason: str
    detail: str


def quantile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Latency:
    """Alert created -> receipt (ms), p50/p99/p99.9, and the sample size."""

    n: int
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        return cls(
            len(samples), quantile(samples, 0.5), quantile(samples, 0.99), quantile(samples, 0.999)
        )


def latency_ratio(measured: Latency | None, reference: Latency | None) -> float | None:
    """p99 of ``measured`` over p99 of ``reference``; None without both."""
    if measured is None or reference is None or measured.p99_ms is None:
        return None
    if reference.p99_ms is None:
        return None
    return measured.p99_ms / max(reference.p99_ms, 1.0)


@dataclass(frozen=True)
class EndpointAccount:
    """One webhook endpoint's accounting: what came in, what went to the dead letters, what a
    re-drive brought."""

    endpoint: str
    role: str
    expected: int
    delivered: int  # 2xx receipts before any re-drive, repeats included
    distinct: int  # distinct expected event ids among them
    unexpected: int  # receipts of event ids not expected
    dead_lettered: int  # dead letters, repeats included
    dead_distinct: int  # distinct expected event ids dead-lettered
    dead_with_cause: int  # dead letters whose detail names the endpoint's failure
    redriven: int | None  # letters ``fraud dlq redrive`` re-published (None: not re-driven)
    redelivered: int  # 2xx receipts after the re-drive, repeats included
    redelivered_distinct: int
    latency: Latency
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def once(self) -> bool:
        """Every expected event id delivered exactly once, nothing else."""
        return self.delivered == self.distinct == self.expected and self.unexpected == 0

    @property
    def redriven_once(self) -> bool:
        """Every expected event id dead-lettered once and then re-delivered exactly once."""
        return (
            self.dead_lettered == self.dead_distinct == self.expected
            and self.dead_with_cause == self.dead_lettered
            and self.redriven == self.expected
            and self.redelivered == self.redelivered_distinct == self.expected
        )

    @property
    def met(self) -> bool:
        if Role(self.role).dead_letters_expected:
            return self.delivered == 0 and self.unexpected == 0 and self.redriven_once
        return self.once and self.dead_lettered == 0 and self.redelivered == 0


def account_endpoint(
    endpoint: str,
    role: Role,
    expected: Collection[str],
    receipts: Iterable[str],
    latencies_ms: Sequence[float],
    dead_letters: Iterable[DeadLetterSeen],
    redriven: int | None = None,
    redelivered: Iterable[str] = (),
) -> EndpointAccount:
    """Count one endpoint against ``expected`` (its event ids). ``receipts``: event ids of its
    2xx answers before the re-drive; ``redelivered``: after it."""
    want = set(expected)
    got = Counter(receipts)
    again = Counter(redelivered)
    letters = list(dead_letters)
    dead = Counter(d.event_id for d in letters)
    cause = DEAD_LETTER_CAUSE.get(role)
    with_cause = sum(1 for d in letters if cause is not None and cause in d.detail)
    examples: dict[str, list[str]] = {}

    def example(kind: str, ids: Iterable[str]) -> None:
        found = sorted(ids)[:EXAMPLES]
        if found:
            examples[kind] = found

    example("repeated", (e for e, n in got.items() if n > 1))
    example("unexpected", (e for e in got if e not in want))
    if role.dead_letters_expected:
        example("not dead-lettered", want - set(dead))
        example("not re-delivered", set(dead) - set(again))
        example("without the cause", (d.event_id for d in letters if str(cause) not in d.detail))
    else:
        example("not delivered", want - set(got))
        example("dead-lettered", dead)
    return EndpointAccount(
        endpoint=endpoint,
        role=role.value,
        expected=len(want),
        delivered=sum(got.values()),
        distinct=len(want & set(got)),
        unexpected=sum(n for e, n in got.items() if e not in want),
        dead_lettered=sum(dead.values()),
        dead_distinct=len(want & set(dead)),
        dead_with_cause=with_cause,
        redriven=redriven,
        redelivered=sum(again.values()),
        redelivered_distinct=len(want & set(again)),
        latency=Latency.of(latencies_ms),
        examples=examples,
    )


@dataclass(frozen=True)
class NotifierAccount:
    """The notifier's accounting: each expected alert mailed once or dead-lettered, none lost."""

    expected: int
    mailed: int  # emails received, repeats included
    mailed_distinct: int
    dead_lettered: int  # ``send_failed`` dead letters, repeats included
    dead_distinct: int
    lost: int  # expected alerts neither mailed nor dead-lettered
    examples: dict[str, list[str]] = field(default_factory=dict)
    redriven: int | None = None  # letters ``fraud dlq redrive --sink notifier`` sent (None: not)
    remailed: int = 0  # emails received after that re-drive, repeats included
    remailed_distinct: int = 0  # distinct dead-lettered alerts among them, not mailed before

    @property
    def redriven_once(self) -> bool:
        """Every dead-lettered alert re-driven once and mailed exactly once after the re-drive."""
        return (
            self.redriven == self.dead_lettered == self.dead_distinct
            and self.remailed == self.remailed_distinct == self.dead_distinct
        )

    @property
    def met(self) -> bool:
        once = self.lost == 0 and self.mailed == self.mailed_distinct
        return once and (self.redriven is None or self.redriven_once)


def account_notifier(
    expected: Collection[str],
    mailed: Iterable[str],
    dead_lettered: Iterable[str],
    redriven: int | None = None,
    remailed: Iterable[str] = (),
) -> NotifierAccount:
    """Count the notifier against ``expected`` alert ids: ``mailed`` are the alert ids of the
    emails the SMTP server received before any re-drive, ``dead_lettered`` those of its
    ``send_failed`` letters, ``redriven`` what the re-drive said it sent and ``remailed`` the
    alert ids of the emails received after it."""
    want = set(expected)
    got = Counter(mailed)
    dead = Counter(dead_lettered)
    again = Counter(remailed)
    lost = want - set(got) - set(dead)
    examples = {}
    if lost:
        examples["lost"] = sorted(lost)[:EXAMPLES]
    repeated = sorted(a for a, n in (got + again).items() if n > 1)[:EXAMPLES]
    if repeated:
        examples["mailed twice"] = repeated
    if redriven is not None and set(dead) - set(again):
        examples["not re-mailed"] = sorted(set(dead) - set(again))[:EXAMPLES]
    return NotifierAccount(
        expected=len(want),
        mailed=sum(got.values()),
        mailed_distinct=len(want & set(got)),
        dead_lettered=sum(dead.values()),
        dead_distinct=len(want & set(dead)),
        lost=len(lost),
        examples=examples,
        redriven=redriven,
        remailed=sum(again.values()),
        remailed_distinct=len((set(dead) & set(again)) - set(got)),  # not mailed before
    )


@dataclass
class SinkRow:
    """Scenario 5's result: the endpoints, the notifier, detection, the latency comparison."""

    scenario: str
    description: str
    outage_s: float
    alerts: int  # distinct alerts the run's decisions raised (the expected event ids)
    flagged: int  # decisions that are not ALLOW (each raises one alert)
    sent: int  # transactions replayed
    decided: int  # distinct transactions decided
    endpoints: list[EndpointAccount] = field(default_factory=list)
    notifier: NotifierAccount | None = None
    clean_latency: Latency | None = None  # the healthy endpoint in the all-healthy run
    max_latency_ratio: float = DEFAULT_MAX_LATENCY_RATIO
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def endpoint(self, role: Role) -> EndpointAccount | None:
        for account in self.endpoints:
            if account.role == role.value:
                return account
        return None

    @property
    def reference_latency(self) -> Latency | None:
        """The control endpoint's latency (same run); without one, the clean run's."""
        control = self.endpoint(Role.CONTROL)
        return control.latency if control is not None else self.clean_latency

    @property
    def reference_name(self) -> str:
        return "control" if self.endpoint(Role.CONTROL) is not None else "clean"

    @property
    def latency_ratio(self) -> float | None:
        healthy = self.endpoint(Role.HEALTHY)
        return latency_ratio(healthy.latency if healthy else None, self.reference_latency)

    @property
    def not_slowed(self) -> bool:
        """The healthy endpoint's p99 within ``max_latency_ratio`` of the reference's (true
        when there is no reference to compare with)."""
        ratio = self.latency_ratio
        return ratio is None or ratio <= self.max_latency_ratio

    @property
    def met(self) -> bool:
        if self.error is not None or not self.endpoints:
            return False
        if self.decided != self.sent or self.alerts != self.flagged:
            return False
        notifier_ok = self.notifier is None or self.notifier.met
        return all(e.met for e in self.endpoints) and notifier_ok and self.not_slowed

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "description": self.description,
            "met": self.met,
            "outage_s": self.outage_s,
            "sent": self.sent,
            "decided": self.decided,
            "alerts": self.alerts,
            "flagged": self.flagged,
            "endpoints": [{**asdict(e), "met": e.met} for e in self.endpoints],
            "notifier": None
            if self.notifier is None
            else {**asdict(self.notifier), "met": self.notifier.met},
            "clean_latency": None if self.clean_latency is None else asdict(self.clean_latency),
            "latency_reference": self.reference_name,
            "latency_ratio_p99": self.latency_ratio,
            "max_latency_ratio": self.max_latency_ratio,
            "notes": self.notes,
            "error": self.error,
        }


SINK_HEADER = (
    f"{'endpoint':<12}{'expected':>9}{'delivered':>10}{'distinct':>9}{'dead':>7}"
    f"{'dead ok':>8}{'redriven':>9}{'redelivered':>12}{'p50 ms':>9}{'p99 ms':>9}"
    f"{'p99.9 ms':>10}  target"
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def sink_lines(row: SinkRow) -> list[str]:
    """The table of scenario 5: one line per endpoint, the notifier, then the verdicts."""
    if row.error is not None and not row.endpoints:
        return [f"{row.scenario}: {row.error}  MISSED"]
    lines = [SINK_HEADER]
    for e in row.endpoints:
        redriven = "-" if e.redriven is None else f"{e.redriven:,}"
        again = "-" if e.redriven is None else f"{e.redelivered:,}/{e.redelivered_distinct:,}"
        lines.append(
            f"{e.endpoint:<12}{e.expected:>9,}{e.delivered:>10,}{e.distinct:>9,}"
            f"{e.dead_lettered:>7,}{e.dead_with_cause:>8,}{redriven:>9}{again:>12}"
            f"{_ms(e.latency.p50_ms):>9}{_ms(e.latency.p99_ms):>9}{_ms(e.latency.p999_ms):>10}"
            f"  {'met' if e.met else 'MISSED'}"
        )
    c = row.clean_latency
    if c is not None:
        lines.append(
            f"{'clean':<12}{'(all healthy: the healthy endpoint)':<64}"
            f"{_ms(c.p50_ms):>9}{_ms(c.p99_ms):>9}{_ms(c.p999_ms):>10}"
        )
    n = row.notifier
    if n is not None:
        lines.append(
            f"notifier: {n.expected:,} expected, {n.mailed:,} mailed ({n.mailed_distinct:,} "
            f"distinct), {n.dead_lettered:,} dead-lettered (send_failed), {n.lost:,} lost, "
            + (
                "not re-driven"
                if n.redriven is None
                else f"{n.redriven:,} re-driven, {n.remailed:,}/{n.remailed_distinct:,} re-mailed"
            )
            + f"  {'met' if n.met else 'MISSED'}"
        )
    ratio = row.latency_ratio
    ref = row.reference_name
    ratio_text = (
        f"no {ref} latency" if ratio is None else f"{ratio:.2f} (at most {row.max_latency_ratio:g})"
    )
    lines.append(
        f"detection: {row.decided:,}/{row.sent:,} decided, {row.alerts:,} alerts of "
        f"{row.flagged:,} flagged; healthy p99 / {ref} p99: {ratio_text}; "
        f"{'met' if row.met else 'MISSED'}" + (f" ({row.error})" if row.error else "")
    )
    return lines
