"""What the worker knows of its partitions: their positions, which it owns, and the
repartition hop between its two stages.

The consumer is seen through ``ConsumerView`` (Faust's consumer in the worker, a fake in
tests), with partitions as ``(topic, partition)`` tuples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Set
from typing import Protocol

from fraud.settings import Settings
from fraud.worker.alignment import Position

TopicPartition = tuple[str, int]


def by_terminal_topic(settings: Settings) -> str:
    """The repartition topic between the stages, keyed by terminal."""
    return f"{settings.topic_prefix}{settings.app_id}-by-terminal"


class ConsumerView(Protocol):
    """The consumer's assignment, what it knows of each partition, and its flow control."""

    def assignment(self) -> Set[TopicPartition]: ...

    def highwater(self, tp: TopicPartition) -> int | None:
        """The next offset to be written, once fetched from."""
        ...

    def committed(self, tp: TopicPartition) -> int | None:
        """Where consumption of the partition started from, or what was committed since."""
        ...

    def fetched(self, tp: TopicPartition) -> int | None:
        """The next offset the consumer will fetch (past transaction markers), if known."""
        ...

    def handed(self, tp: TopicPartition) -> int | None:
        """The next offset after the last data record the consumer fetched (not a marker)
        in the current generation, if any."""
        ...

    def polled_at(self, tp: TopicPartition) -> float | None:
        """When (wall-clock seconds) a fetch response last told the partition's high
        watermark, if one did."""
        ...

    def not_fetched(self) -> Set[TopicPartition]:
        """The partitions the consumer does not fetch from now: paused (by the worker, or by
        Faust while an agent's stream buffer is full)."""
        ...

    def pause_partitions(self, tps: Iterable[TopicPartition]) -> None: ...

    def resume_partitions(self, tps: Iterable[TopicPartition]) -> None: ...


# A high watermark older than this is stale (the consumer fetches every partition it is not
# paused on at least every 20 ms, ``fraud.worker.transport``).
STALE_AFTER_S = 2.0


class Positions:
    def __init__(self, consumer: ConsumerView, wall: Callable[[], float] = time.time) -> None:
        self.consumer = consumer
        self.wall = wall  # seconds, the clock of ``polled_at``
        # High watermarks read at each assignment, for partitions not fetched from yet: an empty
        # partition is then known to be caught up from the first transaction (else the first
        # batches waited for labels and for the alignment, and took the repartition hop).
        self.start_highs: dict[TopicPartition, int] = {}

    def of(self, topic: str, partition: int) -> Position:
        tp = (topic, partition)
        high = self.consumer.highwater(tp)
        if high is None:
            high = self.start_highs.get(tp)
        start = self.consumer.committed(tp)
        fetched = self.consumer.fetched(tp)
        handed = self.consumer.handed(tp)
        polled = self.consumer.polled_at(tp)
        return Position(
            None if high is None else int(high),
            None if start is None else int(start),
            None if fetched is None else int(fetched),
            None if handed is None else int(handed),
            stale=polled is not None and self.wall() - polled > STALE_AFTER_S,
        )

    def assigned(self, topic: str) -> dict[int, Position]:
        """The position of every assigned partition of ``topic``."""
        return {
            partition: self.of(topic, partition)
            for name, partition in self.consumer.assignment()
            if name == topic
        }

    def owned(self) -> dict[str, set[int]]:
        """The assigned partitions of each topic."""
        owned: dict[str, set[int]] = {}
        for topic, partition in self.consumer.assignment():
            owned.setdefault(topic, set()).add(partition)
        return owned


class RepartitionHop:
    """The repartition topic between the stages, tracked to know when it may be skipped: the
    next offset the terminal agent has processed on each of its partitions, and the offset of
    the last record this worker sent there (from the emitter's delivery reports)."""

    def __init__(
        self,
        positions: Positions,
        *,
        topic: str,
        transactions: str,
        labels: str,
        partitions: int,
        enabled: bool,
    ) -> None:
        self.positions = positions
        self.topic = topic
        self.transactions = transactions
        self.labels = labels
        self.partitions = partitions
        self.enabled = enabled
        self.processed: dict[int, int] = {}
        self.sent: dict[int, int] = {}

    def on_delivered(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record the delivered offsets of this worker's records on the hop."""
        for (topic, partition), offset in offsets.items():
            if topic == self.topic:
                self.sent[partition] = offset

    def on_processed(self, partition: int, offset: int) -> None:
        """The terminal agent has processed the hop's record at ``offset``."""
        self.processed[partition] = max(self.processed.get(partition, 0), offset + 1)

    def single_stage(self) -> bool:
        """Run the terminal stage in line, skipping the repartition topic: when this worker
        owns every partition of the transactions, by-terminal and labels topics (so every
        terminal's state is here) and every record on the repartition topic has been processed
        (so no terminal sees its transactions out of order). A rebalance that takes a partition
        away turns the hop back on."""
        if not self.enabled:
            return False
        owned = self.positions.owned()
        every = set(range(self.partitions))
        if any(owned.get(t, set()) != every for t in (self.transactions, self.topic, self.labels)):
            return False
        for p in every:
            done = self.processed.get(p)
            if p in self.sent and (done is None or done <= self.sent[p]):
                return False
            if not self.positions.of(self.topic, p).caught_up(done):
                return False
        return True
