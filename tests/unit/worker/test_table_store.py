"""FaustTableStore over real RocksDB databases: reads see writes at once, the changelog gets
the latest value of each written key once per send_changelog, in the key's partition, and
RocksDB only gets a value once the checkpoint that sent it is delivered, with the changelog
offset it reaches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import rocksdict

from fraud.worker.table_store import FaustTableStore


class _Data:
    offset_key = b"__faust\0offset__"

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
    # Reads see every write at once; nothing went to the changelog yet.
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


def _stored(tables: FaustTableStore, partition: int, key: bytes) -> bytes | None:
    value: bytes | None = tables.table.data._db_for_partition(partition).get(key)
    return value


def test_rocksdb_gets_a_checkpoint_only_once_it_is_delivered(tmp_path: Path) -> None:
    tables = FaustTableStore(_Table(tmp_path), _Emitter())  # type: ignore[arg-type]
    topic = "app-customer-state-changelog"
    offset_key = _Data.offset_key
    tables.put_many(0, [(b"a", b"1")])
    tables.send_changelog()
    tables.put_many(0, [(b"a", b"2"), (b"b", b"1")])  # the next checkpoint's
    assert _stored(tables, 0, b"a") is None  # a crash now leaves RocksDB as it was
    assert tables.get_many(0, [b"a", b"b"]) == [b"2", b"1"]

    tables.on_changelog_offsets({(topic, 0): 41, ("other-topic", 0): 7})
    assert _stored(tables, 0, b"a") == b"1" and _stored(tables, 0, b"b") is None
    assert _stored(tables, 0, offset_key) == b"41"  # recovery reads on from there
    assert tables.get_many(0, [b"a", b"b", b"c"]) == [b"2", b"1", None]

    tables.send_changelog()
    tables.on_changelog_offsets({(topic, 0): 43})
    assert [_stored(tables, 0, k) for k in (b"a", b"b")] == [b"2", b"1"]
    assert tables.get_many(0, [b"a", b"b"]) == [b"2", b"1"]
