"""Labels and transactions meet in event-time order at the terminal stage.

A label applied early never changes a feature (a window (t - D - N, t - D] only counts frauds
whose label time is <= t), so the only thing to prevent is applying a label late: the terminal
agent scores a transaction of event time t on partition p only once the labels agent has
applied every label of p with event time <= t. That holds when p's label watermark (the
largest label event time applied; labels of a partition arrive in event-time order, as replay
and feedback systems produce them) has reached t, or when p's labels are caught up (nothing
more to read). A bounded wait keeps a silent label stream from stalling detection: ``max_wait_s``
while nothing is known to be unread; while the consumer knows of label records not applied
yet (its high watermark is past them: the data is in Kafka), the wait goes on up to
``max_lag_wait_s``, so a busy machine delays decisions instead of making them inexact. Waits
that end without the labels are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from fraud.agents.alignment import Position

NO_TIME = -(2**63)


class LabelWatermarks:
    def __init__(
        self,
        position: Callable[[int], Position],
        max_wait_s: float,
        max_lag_wait_s: float = 60.0,
    ) -> None:
        self._position = position  # labels partition -> what the consumer knows of it
        self.max_wait_s = max_wait_s
        self.max_lag_wait_s = max(max_wait_s, max_lag_wait_s)
        self.event_time: dict[int, int] = {}
        self.next_offset: dict[int, int] = {}
        self.timeouts = 0
        self._changed = asyncio.Event()

    def advance(self, partition: int, event_time_ms: int, offset: int) -> None:
        if event_time_ms > self.event_time.get(partition, NO_TIME):
            self.event_time[partition] = event_time_ms
        if offset + 1 > self.next_offset.get(partition, -1):
            self.next_offset[partition] = offset + 1
        self._changed.set()

    def ready(self, partition: int, event_time_ms: int) -> bool:
        if self.event_time.get(partition, NO_TIME) >= event_time_ms:
            return True
        return self._position(partition).caught_up(self.next_offset.get(partition))

    def lagging(self, partition: int) -> bool:
        """The consumer knows of label records of ``partition`` not applied yet (nothing
        received and no committed offset: any record written is unread)."""
        pos = self._position(partition)
        if pos.highwater is None:
            return False
        nxt = self.next_offset.get(partition, pos.start)
        return pos.highwater > (0 if nxt is None else nxt)

    async def wait(self, needs: Mapping[int, int]) -> bool:
        """Wait until every partition in ``needs`` is ready for its event time (or time out:
        after ``max_wait_s``, or ``max_lag_wait_s`` while a waited-for partition lags)."""
        started = time.monotonic()
        while True:
            waiting = [p for p, t in needs.items() if not self.ready(p, t)]
            if not waiting:
                return True
            lag = any(self.lagging(p) for p in waiting)
            left = started + (self.max_lag_wait_s if lag else self.max_wait_s) - time.monotonic()
            if left <= 0:
                self.timeouts += 1
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.01))
