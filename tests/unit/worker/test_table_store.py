"""FaustTableStore over real RocksDB databases: reads see writes at once, and the changelog
gets the latest value of each written key once per send_changelog, in the key's partition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import rocksdict

from fraud.worker.table_store import FaustTableStore


class _Data:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, rocksdict.Rdict] = {}

    def _db_for_partition(self, partition: int) -> rocksdict.Rdict:
        if partition not in self.dbs:
            options = rocksdict.Options(raw_mode=True)
            self.dbs[partition] = rocksdict.Rdict(str(self.root / str(partition)), options=options)
        return self.dbs[partition]


class _Topic:
    def get_topic_name(self) -> str:
        return "app-customer-state-changelog"


class _Table:
    def __init__(self, root: Path) -> None:
        self.data = _Data(root)
        self.changelog_topic = _Topic()


class _Emitter:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int | None]] = []

    def send(self, topic: str, key: bytes | None, value: bytes, **kwargs: Any) -> None:
        assert kwargs.get("track_offset") is True
        self.sent.append((topic, key, value, kwargs.get("partition")))


@pytest.fixture
def store(tmp_path: Path) -> tuple[FaustTableStore, _Emitter]:
    emitter = _Emitter()
    return FaustTableStore(_Table(tmp_path), emitter), emitter  # type: ignore[arg-type]


def test_changelog_gets_the_latest_value_of_each_key_once(
    store: tuple[FaustTableStore, _Emitter],
) -> None:
    tables, emitter = store
    tables.put_many(0, [(b"a", b"1"), (b"b", b"1")])
    tables.put_many(0, [(b"a", b"2")])
    tables.put_many(3, [(b"a", b"9")])  # same key, another partition: another entry
    # RocksDB has every write at once; nothing went to the changelog yet.
    assert tables.get_many(0, [b"a", b"b", b"c"]) == [b"2", b"1", None]
    assert tables.get_many(3, [b"a"]) == [b"9"]
    assert emitter.sent == []

    assert tables.send_changelog() == 3
    topic = "app-customer-state-changelog"
    assert sorted(emitter.sent, key=lambda s: (s[3] or 0, s[1] or b"")) == [
        (topic, b"a", b"2", 0),
        (topic, b"b", b"1", 0),
        (topic, b"a", b"9", 3),
    ]
    # Sent once: the next checkpoint only carries what changed since.
    assert tables.send_changelog() == 0
    tables.put_many(0, [(b"b", b"3")])
    assert tables.send_changelog() == 1
    assert emitter.sent[-1] == (topic, b"b", b"3", 0)
