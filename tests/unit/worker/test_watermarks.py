"""The terminal stage's label watermarks (pure, no broker, a fake clock)."""

from __future__ import annotations

from fraud.testing import FakeClock
from fraud.worker.alignment import Position
from fraud.worker.watermarks import LabelWatermarks, Readiness


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


def test_label_time_or_caught_up_makes_ready() -> None:
    positions = {0: Position(10)}
    marks = LabelWatermarks(lambda p: positions[p], max_wait_s=0.05)
    assert not marks.ready(0, 1000)
    marks.advance(0, 1000, 3)
    assert marks.ready(0, 1000) and not marks.ready(0, 1001)
    assert marks.check(0, 1000) is Readiness.READY
    marks.advance(0, 900, 9)  # everything read (offset 9 of 10), label time behind
    assert marks.ready(0, 10**12)
    assert marks.check(0, 10**12) is Readiness.READY
    positions[0] = Position(None)  # unknown high watermark: only label time counts
    assert not marks.ready(0, 1001)


def test_unread_labels_are_waited_for_however_long() -> None:
    """Labels in Kafka that the consumer has not fetched (it lags, or is starved of CPU): the
    answer stays WAIT through hours of wall clock, and no label is ever skipped."""
    clock = FakeClock(0)
    positions = {0: Position(100, start=0, fetched=5)}
    marks = LabelWatermarks(lambda p: positions[p], 0.25, lambda: clock.now_ms / 1000)
    for _ in range(5):
        clock.advance(3_600_000)
        assert marks.check(0, 40) is Readiness.WAIT
    marks.advance(0, 40, 39)
    assert marks.check(0, 40) is Readiness.READY


def test_nothing_unread_yet_not_applied_ends_max_wait_after_the_last_label() -> None:
    """Fetched up to the high watermark, but a label is not applied (in flight, or the last
    offset is a transaction marker): the wait ends ``max_wait_s`` after the later of its
    start and the last label applied, and the transaction is decided EARLY."""
    clock = FakeClock(0)
    positions = {0: Position(10, start=0, fetched=10)}
    marks = LabelWatermarks(lambda p: positions[p], 0.3, lambda: clock.now_ms / 1000)
    marks.advance(0, 100, 2)
    assert marks.check(0, 500) is Readiness.WAIT
    clock.advance(200)
    marks.advance(0, 200, 3)  # still streaming in: the wait goes on
    clock.advance(250)
    assert marks.check(0, 500) is Readiness.WAIT
    clock.advance(60)
    assert marks.check(0, 500) is Readiness.EARLY
    assert marks.check(0, 150) is Readiness.READY  # within the applied labels


def test_ready_prefix_stops_at_the_first_wait_and_flags_early() -> None:
    clock = FakeClock(0)
    positions = {
        0: Position(10, start=0, fetched=10),  # nothing unread: may end early
        1: Position(10, start=0, fetched=4),  # unread: waits
    }
    marks = LabelWatermarks(lambda p: positions[p], 0.1, lambda: clock.now_ms / 1000)
    marks.advance(0, 100, 2)
    marks.advance(1, 100, 2)
    needs = [(0, 50), (1, 90), (0, 150), (0, 160), (1, 200), (0, 10)]
    assert marks.ready_prefix(needs) == (2, [False, False])
    clock.advance(150)
    assert marks.ready_prefix(needs) == (4, [False, False, True, True])


def test_a_partition_not_fetched_yet_in_a_new_group_is_waited_for() -> None:
    """No committed offset, no fetch position, nothing received, yet records in Kafka (a
    worker just started on a new group, its first fetch slow on a busy machine): WAIT, never
    EARLY, however long the first fetch takes."""
    clock = FakeClock(0)
    positions = {0: Position(10)}
    marks = LabelWatermarks(lambda p: positions[p], 0.25, lambda: clock.now_ms / 1000)
    clock.advance(60_000)
    assert marks.check(0, 40) is Readiness.WAIT
    positions[0] = Position(10, fetched=10)  # fetched to the end: now it may end early
    assert marks.check(0, 40) is Readiness.WAIT
    clock.advance(300)
    assert marks.check(0, 40) is Readiness.EARLY


def test_a_marker_at_the_end_is_caught_up_once_every_fetched_record_was_received() -> None:
    """A transactional labels topic: its last offset is a commit marker, which no consumer
    receives. Fetched to the high watermark and every data record fetched received: READY at
    once, no timeout. A fetched record not received yet: WAIT, however long."""
    clock = FakeClock(0)
    positions = {0: Position(10, start=0, fetched=10, handed=9)}
    marks = LabelWatermarks(lambda p: positions[p], 0.25, lambda: clock.now_ms / 1000)
    marks.advance(0, 100, 7)  # offset 8 fetched, still on its way to the agent
    clock.advance(60_000)
    assert marks.check(0, 500) is Readiness.WAIT
    marks.advance(0, 120, 8)  # received: offset 9 is the marker
    assert marks.check(0, 500) is Readiness.READY


def test_a_stale_high_watermark_is_waited_on_without_a_timeout() -> None:
    """No fetch answered for the partition lately (its leader is down): what was written
    since is not known, so caught up at the last known high watermark means nothing."""
    clock = FakeClock(0)
    positions = {0: Position(10, 10, fetched=10, stale=True)}
    marks = LabelWatermarks(lambda p: positions[p], 0.25, lambda: clock.now_ms / 1000)
    assert marks.check(0, 1000) is Readiness.WAIT
    clock.advance(3_600_000)
    assert marks.check(0, 1000) is Readiness.WAIT  # never EARLY
    positions[0] = Position(10, 10, fetched=10)  # answered again, nothing new
    assert marks.check(0, 1000) is Readiness.READY


def test_positions_mark_a_high_watermark_not_fetched_for_a_while_stale() -> None:
    from fraud.worker.partitions import STALE_AFTER_S, Positions
    from tests.unit.worker.test_loop import FakeConsumer

    consumer = FakeConsumer()
    polled: dict[tuple[str, int], float] = {("labels", 0): 100.0}
    consumer.polled_at = polled.get  # type: ignore[method-assign]
    now = [100.0]
    positions = Positions(consumer, lambda: now[0])
    assert not positions.of("labels", 0).stale
    now[0] += STALE_AFTER_S + 0.1
    assert positions.of("labels", 0).stale
    assert not positions.of("labels", 1).stale  # never fetched: its listed high watermark
