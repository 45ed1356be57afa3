"""What a fault run read back, compared with the clean run of the same file.

Pure: decisions come in as ``Seen`` values (the harness reads them from Kafka), and the
comparison counts what the fault suite promises to keep at zero: transactions never decided,
transactions decided more than once, and decisions whose features or action differ from the
clean run's decision of the same transaction.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

FEATURE_TOLERANCE = 1e-9
EXAMPLES = 10


@dataclass(frozen=True, slots=True)
class Seen:
    """One decision as read back: the transaction it decides, its features and action, the
    decision topic's partition, and when the harness read it (monotonic seconds)."""

    transaction_id: str
    features: tuple[tuple[str, float], ...]
    action: int
    partition: int
    arrived_s: float


def differences(a: Seen, b: Seen, tolerance: float = FEATURE_TOLERANCE) -> list[str]:
    """What differs between two decisions: feature names (NaN equals NaN), ``action``, or
    ``feature set`` when they name different features."""
    out = ["action"] if a.action != b.action else []
    if [n for n, _ in a.features] != [n for n, _ in b.features]:
        return [*out, "feature set"]
    for (name, value_a), (_, value_b) in zip(a.features, b.features, strict=True):
        if math.isnan(value_a) and math.isnan(value_b):
            continue
        if not abs(value_a - value_b) <= tolerance:
            out.append(name)
    return out


def same_decision(a: Seen, b: Seen, tolerance: float = FEATURE_TOLERANCE) -> bool:
    """The same action and the same features (names and values, NaN equal to NaN)."""
    return not differences(a, b, tolerance)


class CleanRunError(RuntimeError):
    """The clean run itself lost or repeated decisions: nothing can be compared with it."""


def clean_reference(sent: Collection[str], seen: Iterable[Seen]) -> dict[str, Seen]:
    """The clean run's one decision per transaction; raises CleanRunError unless every sent
    transaction was decided exactly once."""
    by_id: dict[str, Seen] = {}
    repeated: set[str] = set()
    for decision in seen:
        if decision.transaction_id in by_id:
            repeated.add(decision.transaction_id)
        by_id[decision.transaction_id] = decision
    missing = [tx for tx in sent if tx not in by_id]
    if missing or repeated:
        raise CleanRunError(
            f"the clean run has {len(missing)} missing and {len(repeated)} duplicated "
            f"decisions (e.g. {sorted(missing)[:3]} {sorted(repeated)[:3]})"
        )
    return by_id


@dataclass(frozen=True)
class Comparison:
    sent: int
    read: int
    missing: int
    duplicated: int  # transactions decided more than once
    differing: int  # transactions with a decision unlike the clean run's
    unexpected: int  # decisions of transactions not in the file
    alerts_read: int
    alerts_expected: int
    # a few transaction ids of each kind, sorted, to look them up in the logs
    examples: dict[str, list[str]] = field(default_factory=dict)
    # how many differing decisions each feature (or the action) differs in
    differing_by_feature: dict[str, int] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return (
            self.missing == 0
            and self.duplicated == 0
            and self.differing == 0
            and self.unexpected == 0
            and self.alerts_read == self.alerts_expected
        )


def compare(
    sent: Collection[str],
    clean: Mapping[str, Seen],
    run: Sequence[Seen],
    alerts_read: int,
    alerts_expected: int,
) -> Comparison:
    """Count a fault run's decisions against the clean run's (``clean_reference``)."""
    wanted = set(sent)
    counts = Counter(d.transaction_id for d in run)
    differing: set[str] = set()
    by_feature: Counter[str] = Counter()
    for d in run:
        if d.transaction_id in clean:
            changed = differences(d, clean[d.transaction_id])
            if changed:
                differing.add(d.transaction_id)
                by_feature.update(changed)
    missing = [tx for tx in wanted if tx not in counts]
    duplicated = [tx for tx, n in counts.items() if n > 1 and tx in wanted]
    unexpected = [tx for tx in counts if tx not in wanted]
    return Comparison(
        sent=len(wanted),
        read=len(run),
        missing=len(missing),
        duplicated=len(duplicated),
        differing=len(differing),
        unexpected=sum(counts[tx] for tx in unexpected),
        alerts_read=alerts_read,
        alerts_expected=alerts_expected,
        examples={
            name: sorted(ids, key=lambda t: (len(t), t))[:EXAMPLES]
            for name, ids in (
                ("missing", missing),
                ("duplicated", duplicated),
                ("differing", list(differing)),
                ("unexpected", unexpected),
            )
            if ids
        },
        differing_by_feature=dict(by_feature.most_common()),
    )


def recovery_times(
    faults_s: Sequence[float], arrivals: Sequence[tuple[int, float]], active_s: float = 5.0
) -> list[float | None]:
    """For each fault (monotonic seconds), the time until every partition that was deciding
    in the ``active_s`` before it decided again; where none was, the time to the first
    decision after it. ``arrivals`` are (partition, seconds) of the decisions read. None when
    nothing was decided after the fault."""
    by_partition: dict[int, list[float]] = {}
    for partition, at in sorted(arrivals, key=lambda pa: pa[1]):
        by_partition.setdefault(partition, []).append(at)
    out: list[float | None] = []
    for fault in faults_s:
        worst: float | None = None
        for times in by_partition.values():
            if not any(fault - active_s <= t < fault for t in times):
                continue
            after = next((t for t in times if t >= fault), None)
            if after is not None and (worst is None or after - fault > worst):
                worst = after - fault
        if worst is None:
            later = [t for times in by_partition.values() for t in times if t >= fault]
            worst = min(later) - fault if later else None
        out.append(worst)
    return out


@dataclass
class Row:
    """One scenario's line of the table (and its JSON)."""

    scenario: str
    description: str
    faults: int
    comparison: Comparison | None
    recovery_s: list[float | None] = field(default_factory=list)
    dead_letters: int | None = None  # read from the dead-letter topic
    malformed: int | None = None  # malformed messages sent
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def met(self) -> bool:
        if self.error is not None or self.comparison is None:
            return False
        if self.malformed is not None and self.dead_letters != self.malformed:
            return False
        return self.comparison.met

    def recovery_max_s(self) -> float | None:
        known = [r for r in self.recovery_s if r is not None]
        return max(known) if known else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "description": self.description,
            "faults": self.faults,
            "met": self.met,
            "recovery_s": self.recovery_s,
            "recovery_max_s": self.recovery_max_s(),
            "dead_letters": self.dead_letters,
            "malformed": self.malformed,
            "notes": self.notes,
            "error": self.error,
        }
        if self.comparison is not None:
            out.update(asdict(self.comparison))
        return out


HEADER = (
    f"{'scenario':<18}{'faults':>7}{'sent':>8}{'read':>8}{'missing':>9}{'dup':>7}"
    f"{'differ':>8}{'alerts':>14}{'dead letters':>18}{'recovery':>10}  target"
)


def table_line(row: Row) -> str:
    verdict = "met" if row.met else "MISSED"
    c = row.comparison
    if c is None:
        return f"{row.scenario:<18}{row.faults:>7}  {row.error or 'no result'}  {verdict}"
    dead = "-" if row.dead_letters is None else f"{row.dead_letters:,}"
    if row.malformed is not None:
        dead = f"{row.dead_letters or 0:,}/{row.malformed:,}"
    worst = row.recovery_max_s()
    recovery = "-" if worst is None else f"{worst:.1f} s"
    alerts = f"{c.alerts_read:,}/{c.alerts_expected:,}"
    return (
        f"{row.scenario:<18}{row.faults:>7}{c.sent:>8,}{c.read:>8,}{c.missing:>9,}"
        f"{c.duplicated:>7,}{c.differing:>8,}{alerts:>14}{dead:>18}{recovery:>10}  {verdict}"
        + (f" ({row.error})" if row.error else "")
    )
