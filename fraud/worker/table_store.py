"""A StateStore over a Faust table's RocksDB store, with the partition passed explicitly.

Faust's own ``table[key] = value`` takes the partition from the "current event", which is wrong
for a micro-batch that spans partitions. This adapter keeps each key's new value in memory
until the checkpoint that carries it is delivered, and only then writes the partition's RocksDB
database (one WriteBatch per partition, holding the values and the changelog offset they
reach):

    put_many -> pending --send_changelog--> delivering --on_changelog_offsets--> RocksDB

``send_changelog`` (the worker calls it as a checkpoint starts) sends each pending value to the
same partition of the table's changelog topic, which is exactly what Faust's recovery replays
into that database. Reads see the pending values first, then the ones being delivered, then
RocksDB. So the local database never holds state the changelog and the consumed offsets do not
also hold: after a crash it is the state of the last delivered checkpoint, and recovery (from
the persisted offset) brings it up to the changelog; with exactly-once, a checkpoint that was
never committed leaves no trace in either. A key written by several batches in one checkpoint
is sent once (Kafka Streams' record cache does the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import rocksdict

from fraud.worker.checkpoint import Emitter, Offsets

# (partition, key) -> value
_Values = dict[tuple[int, bytes], bytes]


class FaustTableStore:
    def __init__(self, table: Any, emitter: Emitter) -> None:
        self.table = table
        self.emitter = emitter
        self._pending: _Values = {}  # written since the last send_changelog
        self._delivering: _Values = {}  # sent, waiting for the delivery of their checkpoint

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
        pending, delivering = self._pending, self._delivering
        if not pending and not delivering:
            stored: list[bytes | None] = self._db(partition).get(list(keys))
            return stored
        values: list[bytes | None] = []
        missing: list[int] = []
        for i, key in enumerate(keys):
            value = pending.get((partition, key))
            if value is None:
                value = delivering.get((partition, key))
            if value is None:
                missing.append(i)
            values.append(value)
        if missing:
            found = self._db(partition).get([keys[i] for i in missing])
            for i, value in zip(missing, found, strict=True):
                values[i] = value
        return values

    def put_many(self, partition: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        pending = self._pending
        for key, value in items:
            pending[(partition, key)] = value

    def send_changelog(self) -> int:
        """Queue the latest value of every key written since the last call on the changelog
        (the caller then delivers); returns how many were queued."""
        pending, self._pending = self._pending, {}
        topic = self.changelog_topic
        send = self.emitter.send
        for (partition, key), value in pending.items():
            send(topic, key, value, partition=partition, track_offset=True)
        self._delivering.update(pending)
        return len(pending)

    def on_changelog_offsets(self, offsets: Offsets) -> None:
        """The checkpoint sent by the last ``send_changelog`` is delivered (``offsets``: the
        last delivered offset per partition, of every topic): write its values to RocksDB
        with the offsets they reach, which Faust's recovery starts after."""
        delivering, self._delivering = self._delivering, {}
        own = self.changelog_topic
        batches: dict[int, Any] = {}
        for (partition, key), value in delivering.items():
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
            batch.put(key, value)
        offset_key = self.table.data.offset_key
        for (topic, partition), offset in offsets.items():
            if topic != own:
                continue
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
            batch.put(offset_key, str(offset).encode())
        for partition, batch in batches.items():
            self._db(partition).write(batch)

    def estimate_keys(self, partitions: Sequence[int]) -> int:
        """RocksDB's estimate of the keys held for ``partitions`` (cheap; for metrics)."""
        return sum(
            int(self._db(p).property_int_value("rocksdb.estimate-num-keys") or 0)
            for p in partitions
        )
