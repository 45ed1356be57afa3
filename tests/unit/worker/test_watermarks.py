"""The terminal stage's label watermarks (pure; the asyncio wait with a short timeout)."""

from __future__ import annotations

import asyncio

from fraud.worker.alignment import Position
from fraud.worker.watermarks import LabelWatermarks


def test_a_labels_partition_never_written_is_caught_up() -> None:
    marks = LabelWatermarks(lambda p: Position(0), max_wait_s=5.0)
    assert marks.ready(0, 10**12)


def test_caught_up_at_the_committed_offset_before_any_label_arrives() -> None:
    """After a restart nothing new was written: the committed offset equals the high
    watermark, so the stage does not wait for a label that will not come."""
    positions = {0: Position(40, 40), 1: Position(41, 40)}
    marks = LabelWatermarks(lambda p: positions[p], max_wait_s=5.0)
    assert marks.ready(0, 10**12)
    assert not marks.ready(1, 10**12)  # one label to read first
    marks.advance(1, 500, 40)
    assert marks.ready(1, 10**12)


def test_label_time_or_caught_up_makes_ready_and_wait_times_out_otherwise() -> None:
    positions = {0: Position(10)}
    marks = LabelWatermarks(lambda p: positions[p], max_wait_s=0.05)
    assert not marks.ready(0, 1000)
    marks.advance(0, 1000, 3)
    assert marks.ready(0, 1000) and not marks.ready(0, 1001)
    assert asyncio.run(marks.wait({0: 1001})) is False
    assert marks.timeouts == 1
    marks.advance(0, 900, 9)  # everything read (offset 9 of 10), label time behind
    assert marks.ready(0, 10**12)
    assert asyncio.run(marks.wait({0: 10**12})) is True
    positions[0] = Position(None)  # unknown high watermark: only label time counts
    assert not marks.ready(0, 1001)


def test_labels_still_streaming_in_extend_the_wait() -> None:
    """A backlog of labels read at replay speed: each label applied restarts the wait's
    timeout, so the wait ends on the needed label, however long the stream takes."""
    positions = {0: Position(100)}
    marks = LabelWatermarks(lambda p: positions[p], max_wait_s=0.3)

    async def stream_of_labels() -> bool:
        waiter = asyncio.ensure_future(marks.wait({0: 40}))
        for i in range(40):  # 40 labels, one per 20 ms: 0.8 s in all, over twice max_wait_s
            await asyncio.sleep(0.02)
            assert not waiter.done()
            marks.advance(0, i + 1, i)
        return await waiter

    assert asyncio.run(stream_of_labels()) is True
    assert marks.timeouts == 0
