"""Labels and transactions meet in event-time order at the terminal stage.

A label applied early never changes a feature (a window (t - D - N, t - D] only counts frauds
whose label time is <= t), so the only thing to prevent is applying a label late: the terminal
stage scores a transaction of event time t on partition p only once the labels agent has
applied every label of p with event time <= t. That holds when p's label watermark (the
largest label event time applied; labels of a partition arrive in event-time order, as replay
and feedback systems produce them) has reached t, or when p's labels are caught up (nothing
more to read).

Nothing here waits: the worker loop holds what is not ready and asks again when labels are
applied or its timer ticks, so the label agent is never stuck behind a waiting transaction.
While Kafka holds labels of p that the consumer has not fetched yet, the answer is WAIT,
however long that takes (a starved or lagging consumer changes no feature). Only when there is
nothing left unread in Kafka and still some labels are not applied (fetched but not delivered
yet, the high watermark unknown, or a transaction marker at the end of the partition) does a
wait end, ``max_wait_s`` after the later of its start and the last label applied to p; such
transactions are decided EARLY and say so (``Decision.incomplete``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable

from fraud.contracts.units import NO_TIME
from fraud.worker.alignment import Position


class Readiness(enum.Enum):
    READY = "ready"  # every label up to the time is applied, or none is left to read
    WAIT = "wait"  # labels up to the time are still to be read
    EARLY = "early"  # decide now without them (a wait on an idle partition ran out)


class LabelWatermarks:
    def __init__(
        self,
        position: Callable[[int], Position],
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._position = position  # labels partition -> what the consumer knows of it
        self.max_wait_s = max_wait_s
        self._clock = clock  # monotonic seconds
        self.event_time: dict[int, int] = {}
        self.next_offset: dict[int, int] = {}
        # Per partition: since when a transaction waits on it with nothing left unread, and the
        # clock of its last label applied.
        self._idle_since: dict[int, float] = {}
        self._progress_at: dict[int, float] = {}

    def advance(self, partition: int, event_time_ms: int, offset: int) -> None:
        if event_time_ms > self.event_time.get(partition, NO_TIME):
            self.event_time[partition] = event_time_ms
        if offset + 1 > self.next_offset.get(partition, -1):
            self.next_offset[partition] = offset + 1
        self._progress_at[partition] = self._clock()

    def forget(self) -> None:
        """Partitions were revoked: what was applied is in the recovered state, and the label
        partitions are consumed again from their committed offsets."""
        self.event_time.clear()
        self.next_offset.clear()
        self._idle_since.clear()
        self._progress_at.clear()

    def ready(self, partition: int, event_time_ms: int) -> bool:
        if self.event_time.get(partition, NO_TIME) >= event_time_ms:
            return True
        return self._position(partition).caught_up(self.next_offset.get(partition))

    def check(self, partition: int, event_time_ms: int) -> Readiness:
        """May a transaction of ``event_time_ms`` whose terminal is on ``partition`` be
        decided now?"""
        if self.event_time.get(partition, NO_TIME) >= event_time_ms:
            return Readiness.READY
        return self._beyond_watermark(partition)

    def ready_prefix(self, needs: Iterable[tuple[int, int]]) -> tuple[int, list[bool]]:
        """How many of ``needs`` ((partition, event time) of transactions in decision order)
        may be decided now, and for each of those whether it is EARLY."""
        beyond: dict[int, Readiness] = {}  # per partition, for times past its watermark
        early: list[bool] = []
        for partition, event_time_ms in needs:
            if self.event_time.get(partition, NO_TIME) >= event_time_ms:
                early.append(False)
                continue
            state = beyond.get(partition)
            if state is None:
                state = beyond[partition] = self._beyond_watermark(partition)
            if state is Readiness.WAIT:
                break
            early.append(state is Readiness.EARLY)
        return len(early), early

    def _beyond_watermark(self, partition: int) -> Readiness:
        """For a time past the partition's label watermark."""
        pos = self._position(partition)
        received = self.next_offset.get(partition)
        if pos.caught_up(received):
            self._idle_since.pop(partition, None)
            return Readiness.READY
        if pos.unread(received):
            self._idle_since.pop(partition, None)
            return Readiness.WAIT
        now = self._clock()
        since = self._idle_since.setdefault(partition, now)
        last = max(since, self._progress_at.get(partition, since))
        return Readiness.EARLY if now - last >= self.max_wait_s else Readiness.WAIT
