"""Event-time alignment of the customer stage's input partitions.

The terminal stage needs, for a transaction at ``t``, every transaction of its terminal up to
``t - D`` (D = 7 days), whichever customer partition it came from. Live, the customer partitions
advance together. Under a backlog (a replay of a file already in Kafka, a restart after an
outage) one partition can run days ahead of another, and the terminal windows would miss
transactions still queued on the slow one. Kafka Streams solves this inside a task by always
taking the record with the lowest timestamp across its partitions; this does the same for the
partitions of one worker:

* every received transaction is held, per partition, in offset order;
* the watermark is the lowest "latest event time seen" over the partitions that may still
  deliver older data: partitions neither caught up (received everything up to the high
  watermark) nor idle (nothing received for ``idle_s`` while others wait on them, and nothing
  left in Kafka that the consumer has not fetched: a partition with unread records is waited
  for however long it takes, so a starved consumer never changes a feature);
* a partition releases its held prefix up to ``watermark + slack_ms``, and the released
  transactions of all partitions are merged by event time (each partition keeping its order,
  so each customer keeps its order).

Items released past an idle partition (``exact_limit``) are flagged by the caller
(``Decision.incomplete``): they may miss transactions that partition delivers later.

Holding is safe for at-least-once because a held message is not acknowledged: the committed
offset stays below it, and a restart delivers it again (``fraud/worker/checkpoint.py``). Caught up
partitions do not hold anything back, so live traffic is never delayed.

Pure logic: the caller passes positions and the clock; no Kafka here.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from fraud.contracts.units import INT64_MAX as END_TIME
from fraud.contracts.units import NO_TIME

T = TypeVar("T")


@dataclass(frozen=True)
class Position:
    """What the consumer knows of a partition: its high watermark (next offset to be written)
    and, when nothing was received from it yet, the offset consumption starts from."""

    highwater: int | None
    start: int | None = None
    # The consumer's fetch position (past transaction markers), when it knows one.
    fetched: int | None = None
    # The next offset after the last data record it fetched in this generation (None: none).
    handed: int | None = None
    # The high watermark is older than a fetch round takes (no fetch answered for the
    # partition lately: its leader is down, or the consumer is starved): it may be behind.
    stale: bool = False

    def caught_up(self, received_next: int | None) -> bool:
        """Everything written was received: nothing was ever written, or the next offset to
        receive (``received_next``, else ``start``) has reached the high watermark, or the
        consumer fetched up to the high watermark and every data record it fetched was
        received (what is left between is transaction markers). Never on a stale high
        watermark."""
        if self.stale:
            return False
        nxt = received_next if received_next is not None else self.start
        if self.highwater == 0:
            return True
        if self.highwater is None or nxt is None:
            return False
        if nxt >= self.highwater:
            return True
        return (
            self.fetched is not None
            and self.fetched >= self.highwater
            and self.handed is not None
            and received_next is not None
            and received_next >= self.handed
        )

    def unread(self, received_next: int | None) -> bool:
        """Records of the partition are still to come: Kafka holds some not fetched yet (the
        fetch position, else the next offset to receive, else ``start``, is below the high
        watermark, or none of them is known and the partition is not empty), or a fetched
        data record has not reached the agent yet, or the high watermark is stale (what was
        written since is not known). A wait on such a partition has data to wait for, and
        never times out."""
        if self.stale:
            return True
        if self.handed is not None and (received_next is None or received_next < self.handed):
            return True
        if self.highwater is None:
            return False
        at = self.fetched if self.fetched is not None else received_next
        if at is None:
            at = self.start
        return at < self.highwater if at is not None else self.highwater > 0


@dataclass
class _Partition(Generic[T]):
    held: deque[tuple[int, int, T]]  # (event time, offset, item) in offset order
    latest: int = NO_TIME  # highest event time received
    next_offset: int | None = None  # last received offset + 1
    active_at: float = 0.0  # clock of the last receipt (or of first sight)


class EventTimeAligner(Generic[T]):
    def __init__(
        self,
        slack_ms: int,
        idle_s: float,
        clock: Callable[[], float],
        max_held: int = 100_000,
    ) -> None:
        if slack_ms < 0 or idle_s < 0 or max_held < 1:
            raise ValueError("slack_ms and idle_s must be >= 0, max_held >= 1")
        self.slack_ms = slack_ms
        self.idle_s = idle_s
        self.clock = clock
        self.max_held = max_held
        self._parts: dict[int, _Partition[T]] = {}
        # The last release's limit past which items were released early: above the latest
        # event time (+ slack) of a partition skipped as idle; END_TIME when none was.
        self.exact_limit = END_TIME
        self._limit = NO_TIME  # the release limit of the last release()
        # Not waited on by the last watermark(): caught up, and skipped as idle.
        self._caught_up: frozenset[int] = frozenset()
        self._idle: frozenset[int] = frozenset()

    def _part(self, partition: int) -> _Partition[T]:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition(deque(), active_at=self.clock())
        return part

    def add(self, partition: int, offset: int, event_time_ms: int, item: T) -> None:
        part = self._part(partition)
        part.held.append((event_time_ms, offset, item))
        part.latest = max(part.latest, event_time_ms)
        part.next_offset = offset + 1
        part.active_at = self.clock()

    def held(self) -> int:
        return sum(len(p.held) for p in self._parts.values())

    def oldest_offset(self, partition: int) -> int | None:
        """The offset of the oldest item ``partition`` holds (None: holds nothing)."""
        part = self._parts.get(partition)
        return part.held[0][1] if part is not None and part.held else None

    def holds(self, partition: int) -> bool:
        """Whether ``partition`` holds items (received, not released yet)."""
        part = self._parts.get(partition)
        return part is not None and bool(part.held)

    def latest(self, partition: int) -> int:
        """The highest event time received from ``partition`` (``NO_TIME``: none yet)."""
        part = self._parts.get(partition)
        return NO_TIME if part is None else part.latest

    @property
    def last_limit(self) -> int:
        """The release limit of the last ``release()`` (watermark + slack; ``NO_TIME`` before
        the first): every held item at or below it was released."""
        return self._limit

    @property
    def last_caught_up(self) -> frozenset[int]:
        """The partitions the last ``watermark()`` found caught up."""
        return self._caught_up

    @property
    def last_idle(self) -> frozenset[int]:
        """The partitions the last ``watermark()`` skipped as idle."""
        return self._idle

    def held_by_partition(self) -> dict[int, int]:
        return {k: len(p.held) for k, p in self._parts.items() if p.held}

    def overfull(self) -> set[int]:
        """Partitions holding more than ``max_held``: pause them until they drain."""
        return {k for k, p in self._parts.items() if len(p.held) > self.max_held}

    def watermark(self, positions: Mapping[int, Position]) -> int:
        """Lowest latest-event-time over the partitions that may still deliver older data;
        ``END_TIME`` when none may."""
        return self._watermark(positions)[0]

    def _watermark(self, positions: Mapping[int, Position]) -> tuple[int, int]:
        """The watermark and the lowest latest event time of the partitions skipped as idle
        (END_TIME: none)."""
        now = self.clock()
        mark = skipped = END_TIME
        caught_up: set[int] = set()
        idle: set[int] = set()
        for partition, pos in positions.items():
            part = self._part(partition)
            if pos.caught_up(part.next_offset):
                part.active_at = now
                caught_up.add(partition)
                continue
            if now - part.active_at > self.idle_s and not pos.unread(part.next_offset):
                # idle, nothing left unread: stop waiting for it (Kafka Streams'
                # max.task.idle.ms); what is released past it is early
                skipped = min(skipped, part.latest)
                idle.add(partition)
                continue
            mark = min(mark, part.latest)
        self._caught_up, self._idle = frozenset(caught_up), frozenset(idle)
        return mark, skipped

    def release(self, positions: Mapping[int, Position]) -> list[T]:
        """Items releasable now, merged by event time; ``positions`` lists the assigned
        partitions (items of any other partition are dropped: a new owner will get them)."""
        for partition in [k for k in self._parts if k not in positions]:
            del self._parts[partition]
        mark, skipped = self._watermark(positions)
        limit = self._plus_slack(mark)
        self._limit = limit
        self.exact_limit = self._plus_slack(skipped)
        runs: list[list[tuple[int, int, T]]] = []
        for part in self._parts.values():
            held = part.held
            run: list[tuple[int, int, T]] = []
            while held and held[0][0] <= limit:
                run.append(held.popleft())
            if run:
                runs.append(run)
        if len(runs) == 1:
            return [item for _, _, item in runs[0]]
        return [item for _, _, item in heapq.merge(*runs, key=_event_time)]

    def _plus_slack(self, time_ms: int) -> int:
        return time_ms if time_ms > END_TIME - self.slack_ms else time_ms + self.slack_ms

    def drop(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._parts.pop(partition, None)


def _event_time(entry: tuple[int, int, object]) -> int:
    return entry[0]
