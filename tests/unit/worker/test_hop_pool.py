"""The hop's rows decided in event-time order, and progress that survives a re-read (pure)."""

from __future__ import annotations

import random

import numpy as np

from fraud.contracts.units import CUSTOMER_STAGE_FEATURES
from fraud.scoring.batch import Enriched
from fraud.v1.transaction_pb2 import Transaction
from fraud.worker.hop_pool import (
    HopPool,
    decode_progress,
    encode_progress,
    sorted_rows,
)


def rows(*times: int, tag: str = "") -> Enriched:
    n = len(times)
    return Enriched(
        [Transaction(transaction_id=f"{tag}{i}", event_time_ms=t) for i, t in enumerate(times)],
        np.arange(n * len(CUSTOMER_STAGE_FEATURES), dtype=np.float64).reshape(
            n, len(CUSTOMER_STAGE_FEATURES)
        ),
        [0] * n,
        ["tx"] * n,
        [0] * n,
        list(range(n)),
        [0] * n,
    )


def ids(columns: Enriched) -> list[str]:
    return [tx.transaction_id for tx in columns.txs]


def test_rows_of_one_record_are_sorted_with_their_columns() -> None:
    columns, times = sorted_rows(rows(30, 10, 20, 10, tag="r"))
    assert times == [10, 10, 20, 30]
    assert ids(columns) == ["r1", "r3", "r2", "r0"]
    # the features move with their rows
    assert columns.features[0].tolist() == rows(30, 10, 20, 10).features[1].tolist()


def test_records_are_merged_in_event_time_order_up_to_the_limit() -> None:
    pool: HopPool[str] = HopPool()
    pool.load(0, {})
    pool.add(0, 5, "ahead", rows(100, 110, tag="a"))  # a worker ahead sends first
    pool.add(0, 6, "behind", rows(10, 50, 105, tag="b"))
    taken = pool.take(0, 105)
    assert taken is not None
    assert ids(taken.columns) == ["b0", "b1", "a0", "b2"]
    assert taken.times == [10, 50, 100, 105]
    assert [r.event for r in taken.finished] == ["behind"]
    assert pool.rows(0) == 1 and pool.next_time(0) == 110
    # offset 5 is not fully decided: nothing may be committed past it
    assert pool.oldest(0) == 5 and pool.drained(0) == []
    assert pool.progress(0) == {5: 1, 6: 3}
    assert pool.take(0, 109) is None
    rest = pool.take(0, 200)
    assert rest is not None and ids(rest.columns) == ["a1"]
    assert [r.offset for r in pool.drained(0)] == [5, 6]
    assert pool.oldest(0) is None and pool.progress(0) == {}


def test_equal_times_go_in_offset_order() -> None:
    pool: HopPool[int] = HopPool()
    pool.add(0, 1, 1, rows(7, 7, tag="x"))
    pool.add(0, 0, 0, rows(7, tag="y"))  # offsets are added in order in the worker; tie-break
    taken = pool.take(0, 7)
    assert taken is not None and ids(taken.columns) == ["y0", "x0", "x1"]


def test_stored_progress_skips_the_rows_decided_before() -> None:
    first: HopPool[str] = HopPool()
    first.load(0, {})
    first.add(0, 0, "a", rows(100, 300, tag="a"))
    first.add(0, 1, "b", rows(50, 200, tag="b"))
    taken = first.take(0, 250)
    assert taken is not None and ids(taken.columns) == ["b0", "a0", "b1"]
    stored = encode_progress(first.progress(0))
    # a new owner reads from the committed offset (the oldest not fully decided record)
    again: HopPool[str] = HopPool()
    again.load(0, decode_progress(stored))
    assert not again.add(0, 0, "a", rows(100, 300, tag="a")).done
    assert again.add(0, 1, "b", rows(50, 200, tag="b")).done
    rest = again.take(0, 10_000)
    assert rest is not None and ids(rest.columns) == ["a1"]


def test_progress_stored_while_reading_again_keeps_the_records_not_read_yet() -> None:
    """A new owner that stores its progress after reading only the first records again must
    keep the stored progress of the later ones, or the next owner decides their rows twice."""
    first: HopPool[str] = HopPool()
    first.load(0, {})
    first.add(0, 0, "a", rows(100, 300, tag="a"))
    first.add(0, 1, "b", rows(50, 200, tag="b"))
    first.add(0, 2, "c", rows(60, 400, tag="c"))
    taken = first.take(0, 250)
    assert taken is not None and ids(taken.columns) == ["b0", "c0", "a0", "b1"]
    assert first.progress(0) == {0: 1, 1: 2, 2: 1}
    # a second owner reads offset 0 again, and stores its progress before reading on
    second: HopPool[str] = HopPool()
    second.load(0, decode_progress(encode_progress(first.progress(0))))
    second.add(0, 0, "a", rows(100, 300, tag="a"))
    stored = encode_progress(second.progress(0))
    assert decode_progress(stored) == {0: 1, 1: 2, 2: 1}
    # a third owner, from that progress, decides each row once
    third: HopPool[str] = HopPool()
    third.load(0, decode_progress(stored))
    third.add(0, 0, "a", rows(100, 300, tag="a"))
    assert third.add(0, 1, "b", rows(50, 200, tag="b")).done
    third.add(0, 2, "c", rows(60, 400, tag="c"))
    rest = third.take(0, 10_000)
    assert rest is not None and ids(rest.columns) == ["a1", "c1"]


def test_progress_codec() -> None:
    assert decode_progress(encode_progress({3: 1, 2**40: 7})) == {3: 1, 2**40: 7}
    assert decode_progress(None) == {} and decode_progress(b"") == {}
    assert decode_progress(b"\x00" * 5) == {}  # not whole entries


def test_random_interleavings_decide_every_row_once_in_order() -> None:
    rng = random.Random(1)
    for _ in range(50):
        pool: HopPool[int] = HopPool()
        expected: list[int] = []
        got: list[int] = []
        offset = 0
        for _ in range(rng.randint(1, 12)):
            times = [rng.randint(0, 100) for _ in range(rng.randint(0, 5))]
            expected += times
            pool.add(0, offset, offset, rows(*times))
            offset += 1
            limit = rng.randint(0, 100)
            taken = pool.take(0, limit)
            if taken is not None:
                assert taken.times == sorted(taken.times)
                assert all(t <= limit for t in taken.times)
                got += taken.times
        taken = pool.take(0, 100)
        got += taken.times if taken is not None else []
        assert sorted(got) == sorted(expected) and pool.rows(0) == 0
        assert [r.offset for r in pool.drained(0)] == list(range(offset))
