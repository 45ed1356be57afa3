"""Event-time marks across workers on the repartition hop (Flink-style watermark propagation).

The terminal stage scoring a transaction at event time ``t`` needs every transaction of its
terminal with event time ``<= t - D`` already applied, whichever customer partition it came
from. Each worker aligns only its own customer partitions (``fraud/worker/alignment.py``), so
with several workers a consumer of hop partition ``q`` must learn how far every customer
partition has been sent. Every ``EnrichedBatch`` therefore carries marks: customer partition
``c`` -> ``w``, "every transaction of ``c`` with event time ``<= w`` has been sent to the hop".

* **Sender** (``sender_marks``, ``MarkSender``): after each release, the marks of the
  partitions it owns go to EVERY hop partition: piggybacked on its batches to ``q``, and as an
  items-empty batch to any ``q`` whose marks are stale (changed since last sent there, or older
  than ``heartbeat_s``, so that an idle sender is still heard).
* **Receiver** (``HopMarks``): keeps ``W[q][c]``, learnt from marks read ON ``q`` only, and
  scores a transaction of ``q`` at ``t`` once ``min(W[q][c] for c in range(N)) >= t - need``.

Why per ``q``: the records of one hop partition are ordered, and a sender puts a batch's marks
after (or with) the records they cover, so a mark read on ``q`` comes after every record of
``q`` it covers. A mark read on another partition says nothing of what is still in flight on
``q``.

Why a maximum is safe across a change of owner: marks go in the same Kafka transaction as the
records they cover, so a committed mark covers committed records only. A new owner restarts
from the committed offsets; everything before them was sent (and committed) by the old owner,
so the old owner's committed marks stay true, and the new owner's can only be lower until it
catches up. The receiver keeps the maximum of the finite marks of each ``(q, c)``.

``END_TIME`` (the partition is caught up, or skipped as idle: the aligner does not wait on
it) is the one exception: it is a claim about the future ("whatever comes next is newer than
anything scored now", the live assumption the aligner makes too), and it stops being true when
a backlog arrives. Were it kept by the maximum, a partition once caught up (every partition of
an empty topic, at start) would never hold anything back again. So the receiver takes the LAST
word on it: ``END_TIME`` counts until a finite mark of the same ``(q, c)`` follows, and then
the maximum finite mark counts again. Like the aligner's, it is exact for a backlog already in
Kafka, and live it relies on the sender's view of the high watermark being fresh.

The marks assume event time does not decrease along a customer partition (as the aligner's
``latest`` does): a partition that is neither caught up nor holding anything has sent all it
received, and what comes next is at or after its latest event time, hence the mark
``latest - 1``.

An ``END_TIME`` is also only good while its sender is heard from: it counts for
``free_for_s`` after it is read (the receiver's clock), and senders repeat it every
``heartbeat_s`` while it holds, so a sender that died (killed, or cut off) stops counting as
caught up within that time, and its partitions are waited for from their last finite mark. A
record read long after it was produced (its transaction committed late, or the reader was held
back behind another sender's open transaction: seen 35 s after a whole-cluster restart)
carries an ``END_TIME`` that says nothing of now, and is ignored when older than
``max_age_s`` (the record's timestamp, which the sender keeps when it sends a transaction
again, against the receiver's wall clock: worker clocks are assumed to agree to well within
that). A sender that stops or loses its partitions says so: its last marks before the revocation or
the stop (``sender_marks(..., caught_up_free=False)``) are finite for every partition.

Liveness: a customer partition never heard of on ``q`` counts as ``NO_TIME`` (not ready). A
restarting consumer learns the marks from the next batches: senders send marks when they
change and at least every ``heartbeat_s``. A dead sender's partitions are reassigned by the
consumer group, and their new owner sends marks.

Pure logic: no Kafka; the sender's clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from fraud.contracts.units import INT64_MAX as END_TIME
from fraud.contracts.units import NO_TIME
from fraud.v1.enriched_pb2 import SourceMark

Marks = dict[int, int]
"""Customer partition -> event time (ms): everything of it at or before was sent."""


class AlignerView(Protocol):
    """What ``sender_marks`` reads of ``EventTimeAligner`` (any item type)."""

    @property
    def last_limit(self) -> int: ...

    @property
    def last_caught_up(self) -> frozenset[int]: ...

    @property
    def last_idle(self) -> frozenset[int]: ...

    def holds(self, partition: int) -> bool: ...

    def latest(self, partition: int) -> int: ...


def sender_marks(
    aligner: AlignerView,
    owned: Iterable[int],
    idle_as_caught_up: bool = True,
    caught_up_free: bool = True,
) -> Marks:
    """The marks of the customer partitions ``owned``, right after ``aligner.release()``, to
    send with what it released:

    * holding items: the last release limit (everything at or below it was released; what
      it holds and what comes next is later);
    * else caught up: ``END_TIME``;
    * else skipped as idle by the aligner: ``END_TIME`` too with ``idle_as_caught_up`` (the
      aligner's own choice: receivers go on past it, and cannot tell; the sender flags what
      it releases past it, ``exact_limit``), else as below (receivers wait for it, and need a
      timeout of their own);
    * else its latest event time received, minus 1 (``NO_TIME`` when none).

    ``caught_up_free=False`` (the last marks of a sender that stops owning its partitions):
    no ``END_TIME``, caught up or not."""
    limit = aligner.last_limit
    free = (
        aligner.last_caught_up | aligner.last_idle if idle_as_caught_up else aligner.last_caught_up
    )
    if not caught_up_free:
        free = frozenset()
    marks: Marks = {}
    for c in owned:
        if aligner.holds(c):
            marks[c] = limit
        elif c in free:
            marks[c] = END_TIME
        else:
            latest = aligner.latest(c)
            marks[c] = NO_TIME if latest == NO_TIME else latest - 1
    return marks


class MarkSender:
    """Remembers the marks last sent to each hop partition, to tell which need a marks-only
    batch. Call ``for_partition`` for every batch sent to ``q`` (with items or not), then
    ``stale`` for the partitions that got none."""

    def __init__(
        self, clock: Callable[[], float], heartbeat_s: float, min_interval_s: float = 0.0
    ) -> None:
        """``clock``: monotonic seconds. A partition is stale when its marks are older than
        ``heartbeat_s``, or when they changed and were sent at least ``min_interval_s`` ago
        (0: at once; more bounds the marks-only batches under a backlog, where marks change
        on every release, at the cost of that much delay at the receivers)."""
        if heartbeat_s <= 0 or min_interval_s < 0:
            raise ValueError("heartbeat_s must be > 0 and min_interval_s >= 0")
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.min_interval_s = min_interval_s
        self._sent: dict[int, tuple[Marks, float]] = {}  # q -> (marks, clock when sent)

    def for_partition(self, q: int, marks: Mapping[int, int]) -> Marks:
        """The marks to put on a batch to hop partition ``q``, recorded as sent there."""
        sent = dict(marks)
        self._sent[q] = (sent, self.clock())
        return dict(sent)

    def stale(self, marks: Mapping[int, int], partitions: Iterable[int]) -> list[int]:
        """The hop partitions among ``partitions`` that need a marks-only batch now: never sent
        to, sent other marks (at least ``min_interval_s`` ago), or last sent ``heartbeat_s``
        ago or more. Does not record anything: send with ``for_partition``."""
        now = self.clock()
        out: list[int] = []
        for q in partitions:
            last = self._sent.get(q)
            if last is None:
                out.append(q)
                continue
            sent, at = last
            age = now - at
            if age >= self.heartbeat_s or (sent != marks and age >= self.min_interval_s):
                out.append(q)
        return out

    def forget(self) -> None:
        """Forget what was sent (revocation, an aborted transaction): every partition is stale
        again."""
        self._sent.clear()


@dataclass
class _Mark:
    finite: int = NO_TIME  # the maximum finite mark read
    free: bool = False  # the last mark read was END_TIME
    free_at: float = 0.0  # when it was read (receiver's clock)

    def value(self, now: float, free_for_s: float) -> int:
        if self.free and now - self.free_at <= free_for_s:
            return END_TIME
        return self.finite


class HopMarks:
    """What a consumer of the hop knows: ``W[q][c]`` for each hop partition ``q`` it reads and
    each customer partition ``c`` in ``range(partitions)``."""

    def __init__(
        self,
        partitions: int,
        clock: Callable[[], float] = lambda: 0.0,
        free_for_s: float = float("inf"),
        max_age_s: float = float("inf"),
    ) -> None:
        """``clock``: monotonic seconds; an ``END_TIME`` counts for ``free_for_s`` after it is
        read (the default: until a finite mark follows), and not at all when its record is
        older than ``max_age_s`` as it is read."""
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.partitions = partitions
        self.clock = clock
        self.free_for_s = free_for_s
        self.max_age_s = max_age_s
        self._marks: dict[int, dict[int, _Mark]] = {}

    def observe(self, q: int, marks: Mapping[int, int], age_s: float = 0.0) -> None:
        """The marks of one record read on hop partition ``q``, after its items; ``age_s``:
        how long ago its sender produced it. Marks of a customer partition outside
        ``range(partitions)`` are ignored."""
        known = self._marks.setdefault(q, {})
        for c, w in marks.items():
            if not 0 <= c < self.partitions:
                continue
            mark = known.get(c)
            if mark is None:
                mark = known[c] = _Mark()
            if w == END_TIME:
                if age_s > self.max_age_s:
                    continue  # said long ago: says nothing of now (a finite mark still counts)
                mark.free = True
                mark.free_at = self.clock()
            else:
                mark.free = False
                mark.finite = max(mark.finite, w)

    def mark(self, q: int, c: int) -> int:
        """``W[q][c]``: everything of customer partition ``c`` on ``q`` at or before it was read
        (``NO_TIME``: never heard of)."""
        mark = self._marks.get(q, {}).get(c)
        return NO_TIME if mark is None else mark.value(self.clock(), self.free_for_s)

    def low(self, q: int) -> int:
        """The lowest mark on ``q`` over every customer partition (``NO_TIME`` while one was
        never heard of): everything of ``q`` at or before it was read."""
        known = self._marks.get(q)
        if known is None or len(known) < self.partitions:
            return NO_TIME
        now = self.clock()
        return min(mark.value(now, self.free_for_s) for mark in known.values())

    def ready(self, q: int, t: int, need_ms: int) -> bool:
        """Whether a transaction read on ``q`` at event time ``t`` may be scored: everything
        of ``q`` at or before ``t - need_ms`` was read."""
        return self.low(q) >= t - need_ms

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop revoked hop partitions: a next owner learns their marks from scratch."""
        for q in partitions:
            self._marks.pop(q, None)


def encode_marks(marks: Mapping[int, int]) -> list[SourceMark]:
    """The ``EnrichedBatch.marks`` field, by partition."""
    return [SourceMark(partition=c, event_time_ms=w) for c, w in sorted(marks.items())]


def decode_marks(marks: Iterable[SourceMark]) -> Marks:
    """``EnrichedBatch.marks`` back to a dict (a partition listed twice: the last counts)."""
    return {m.partition: m.event_time_ms for m in marks}
