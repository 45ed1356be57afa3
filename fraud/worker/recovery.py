"""Faust's table recovery, finishing on changelogs written in Kafka transactions.

Recovery reads a changelog partition until it has received the record at the high watermark
minus one. A changelog written in transactions ends with a commit (or abort) marker, a control
record that consumers never receive, so that offset never comes and recovery never ends:
measured, a worker restarted on an empty data dir waited forever with one record "remaining"
in every partition. Faust's own check for this runs only with its own exactly-once guarantee,
which the worker does not use (``fraud.worker.emitter``).

Here the last offset Faust waits for is that of the last record a reader receives, read from
the end of each changelog partition before recovery starts. A local partition that claims more
of its changelog than the changelog holds (``ConsistencyError`` in Faust: the topic was
recreated, or a broker lost acknowledged records) is rebuilt from the changelog instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

from fraud.kafka_config import make_consumer, watermark_offsets

log = logging.getLogger("fraud.worker")


def last_data_offsets(
    brokers: str, highs: Mapping[tuple[str, int], int], timeout_s: float = 60.0
) -> dict[tuple[str, int], int]:
    """The offset of the last committed record of each partition (-1: none), read from the
    end of ``highs`` (partition -> high watermark, the offset after the last one): a tail of
    commit and abort markers and aborted records has no record a reader would receive."""
    out: dict[tuple[str, int], int] = {}
    back = {tp: 4 for tp in highs}
    consumer = make_consumer(
        brokers,
        **{
            "group.id": "fraud-recovery",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        },
    )
    deadline = time.monotonic() + timeout_s
    try:
        while back:
            starts: dict[tuple[str, int], int] = {}
            for (topic, partition), n in back.items():
                low, _ = watermark_offsets(consumer, TopicPartition(topic, partition))
                starts[(topic, partition)] = max(low, highs[(topic, partition)] - n)
            consumer.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
            last: dict[tuple[str, int], int] = {}
            open_tps = {tp for tp in starts if starts[tp] < highs[tp]}
            while open_tps:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading the end of {sorted(open_tps)} took too long")
                for message in consumer.consume(1000, timeout=0.5):
                    tp = (str(message.topic()), int(message.partition() or 0))
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            raise KafkaException(error)
                        open_tps.discard(tp)
                        continue
                    last[tp] = max(last.get(tp, -1), int(message.offset() or 0))
            again: dict[tuple[str, int], int] = {}
            for tp, n in back.items():
                if tp in last or starts[tp] <= 0 or starts[tp] == _low(consumer, tp):
                    out[tp] = last.get(tp, -1)
                else:
                    again[tp] = n * 8  # only markers and aborted records so far: look further
            back = again
        return out
    finally:
        consumer.close()


def _low(consumer: Any, tp: tuple[str, int]) -> int:
    low, _ = watermark_offsets(consumer, TopicPartition(*tp))
    return low


class _CommittedRecovery(Recovery):
    async def _build_highwaters(
        self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        """Faust's last offset of each changelog partition, moved back to the last record
        a reader receives (the last offset of a transactional changelog is a marker)."""
        await super()._build_highwaters(consumer, tps, destination, title)
        highs = {(tp.topic, tp.partition): destination[tp] + 1 for tp in tps}
        highs = {tp: high for tp, high in highs.items() if high > 0}
        if not highs:
            return
        brokers = ",".join(f"{url.host}:{url.port}" for url in self.app.conf.broker)
        found = await asyncio.get_running_loop().run_in_executor(
            None, last_data_offsets, brokers, highs
        )
        for tp in tps:
            key = (tp.topic, tp.partition)
            if key in found:
                destination[tp] = found[key]

    async def _build_offsets(
        self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        """Faust's starting offsets; a local partition that claims more of its changelog
        than the changelog holds (the topic was recreated, or lost records) is emptied and
        rebuilt from the changelog, instead of stopping the worker."""
        await super()._build_offsets(consumer, tps, destination, title)
        highs = self.active_highwaters if title == "active" else self.standby_highwaters
        for tp in tps:
            have, high = destination.get(tp), highs.get(tp)
            if have is None or high is None or have <= high:
                continue
            log.warning(
                "local state of %s is ahead of its changelog (offset %d > %d): rebuilding it",
                tp,
                have,
                high,
            )
            _empty(self.tp_to_table[tp], tp.partition)
            destination[tp] = -1


def _empty(table: Any, partition: int) -> None:
    db = table.data._db_for_partition(partition)
    for key in list(db.keys()):
        del db[key]


class CommittedTableManager(TableManager):
    """Faust's ``TableManager`` with ``_CommittedRecovery`` (the app's ``TableManager``)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _CommittedRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
