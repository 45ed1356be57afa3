"""A StateStore over a Faust table's RocksDB store, with the partition passed explicitly.

Faust's own ``table[key] = value`` takes the partition from the "current event", which is wrong
for a micro-batch that spans partitions. This adapter writes the partition's RocksDB database
with one WriteBatch per call and sends each key's new value to the same partition of the
table's changelog topic (through the worker's emitter, at the next ``send_changelog``: the
worker calls it before each flush), which is exactly what Faust's recovery replays into that
database. Once the changelog writes are delivered, ``on_changelog_offsets``
records them as the store's persisted offsets, as Faust does, so a restart only replays newer
changelog records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import rocksdict
from faust.types import TP

from fraud.worker.emitter import KafkaEmitter


class FaustTableStore:
    def __init__(self, table: Any, emitter: KafkaEmitter) -> None:
        self.table = table
        self.emitter = emitter
        # Changelog values not sent yet, latest per (partition, key): put_many writes RocksDB
        # at once and the changelog at the next send_changelog, so a key written by several
        # batches in between is sent once (Kafka Streams' record cache does the same).
        self._unsent: dict[tuple[int, bytes], bytes] = {}

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def open_partition(self, partition: int) -> None:
        self._db(partition)

    @property
    def changelog_topic(self) -> str:
        name: str = self.table.changelog_topic.get_topic_name()
        return name

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = self._db(partition).get(list(keys))
        return values

    def put_many(self, partition: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        if not items:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in items:
            batch.put(key, value)
        self._db(partition).write(batch)
        unsent = self._unsent
        for key, value in items:
            unsent[(partition, key)] = value

    def send_changelog(self) -> int:
        """Queue the latest value of every key written since the last call on the changelog
        (the caller then flushes the emitter); returns how many were queued."""
        unsent, self._unsent = self._unsent, {}
        topic = self.changelog_topic
        send = self.emitter.send
        for (partition, key), value in unsent.items():
            send(topic, key, value, partition=partition, track_offset=True)
        return len(unsent)

    def estimate_keys(self, partitions: Sequence[int]) -> int:
        """RocksDB's estimate of the keys held for ``partitions`` (cheap; for metrics)."""
        return sum(
            int(self._db(p).property_int_value("rocksdb.estimate-num-keys") or 0)
            for p in partitions
        )

    def on_changelog_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        """Record delivered changelog offsets of this table (others' are ignored)."""
        own = self.changelog_topic
        for (topic, partition), offset in offsets.items():
            if topic == own:
                self.table.data.set_persisted_offset(TP(topic, partition), offset)
