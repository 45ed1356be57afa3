"""Keyed state behind a small protocol, with the partition passed explicitly.

The pipeline reads and writes each touched key once per micro-batch through ``StateStore``.
``InMemoryStore`` serves the unit tests; the worker's RocksDB/changelog implementation lives in
``fraud.worker.table_store`` so that this module stays free of Faust.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class StateStore(Protocol):
    """Bytes values by (partition, key); the partition is that of the key's input topic."""

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def put_many(self, partition: int, items: Sequence[tuple[bytes, bytes]]) -> None: ...


class InMemoryStore:
    """A dict-backed StateStore for tests and tools."""

    def __init__(self) -> None:
        self.data: dict[tuple[int, bytes], bytes] = {}
        self.writes = 0

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self.data.get((partition, key)) for key in keys]

    def put_many(self, partition: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        for key, value in items:
            self.data[(partition, key)] = value
        self.writes += len(items)
