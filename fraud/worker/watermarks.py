"""Labels and transactions meet in event-time order at the terminal stage.

A label applied early never changes a feature (a window (t - D - N, t - D] only counts frauds
whose label time is <= t), so the only thing to prevent is applying a label late: the terminal
agent scores a transaction of event time t on partition p only once the labels agent has
applied every label of p with event time <= t. That holds when p's label watermark (the
largest label event time applied; labels of a partition arrive in event-time order, as replay
and feedback systems produce them) has reached t, or when p's labels are caught up (nothing
more to read). A bounded wait keeps a silent label stream from stalling detection: it ends
``max_wait_s`` after the later of its start and the last label applied, so labels still
streaming in (a backlog read at replay speed) are waited for, and a stream that went quiet is
not; such waits are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from fraud.contracts.units import NO_TIME
from fraud.worker.alignment import Position


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
        self.timeouts = 0
        self._changed = asyncio.Event()
        self._progress_at = float("-inf")  # clock of the last label applied

    def advance(self, partition: int, event_time_ms: int, offset: int) -> None:
        if event_time_ms > self.event_time.get(partition, NO_TIME):
            self.event_time[partition] = event_time_ms
        if offset + 1 > self.next_offset.get(partition, -1):
            self.next_offset[partition] = offset + 1
        self._progress_at = self._clock()
        self._changed.set()

    def recheck(self) -> None:
        """Wake the waits to check again now: the consumer's positions or the clock moved."""
        self._changed.set()

    def ready(self, partition: int, event_time_ms: int) -> bool:
        if self.event_time.get(partition, NO_TIME) >= event_time_ms:
            return True
        return self._position(partition).caught_up(self.next_offset.get(partition))

    async def wait(self, needs: Mapping[int, int]) -> bool:
        """Wait until every partition in ``needs`` is ready for its event time, or until
        ``max_wait_s`` passed with no label applied (since the start of the wait)."""
        started = self._clock()
        while True:
            if all(self.ready(p, t) for p, t in needs.items()):
                return True
            left = max(started, self._progress_at) + self.max_wait_s - self._clock()
            if left <= 0:
                self.timeouts += 1
                return False
            self._changed.clear()
            # Woken by a label applied, and at least every 10 ms: the consumer's positions
            # (caught up or not) move without one.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.01))
