"""Event-time alignment of the customer partitions (pure, no broker)."""

from __future__ import annotations

import random

import pytest

from fraud.contracts.units import NO_TIME
from fraud.testing import FakeClock
from fraud.worker.alignment import END_TIME, EventTimeAligner, Position

HOUR = 3_600_000


def make(
    slack_ms: int = 0, idle_s: float = 5.0, max_held: int = 100
) -> tuple[EventTimeAligner[str], FakeClock]:
    clock = FakeClock(0)
    return EventTimeAligner(slack_ms, idle_s, lambda: clock.now_ms / 1000, max_held), clock


def test_a_partition_ahead_waits_for_one_with_a_backlog() -> None:
    al, _ = make()
    al.add(0, 0, 10 * HOUR, "p0-a")
    al.add(0, 1, 20 * HOUR, "p0-b")
    # Partition 1 has data (highwater 5) but has delivered nothing yet: hold everything.
    pos = {0: Position(2), 1: Position(5, start=0)}
    assert al.release(pos) == []
    al.add(1, 0, 12 * HOUR, "p1-a")
    # Partition 1 has reached 12h, so everything up to 12h goes, in event-time order; p0-b
    # (20h) waits, since partition 1 still has a backlog (offsets 1..4) that may be older.
    assert al.release(pos) == ["p0-a", "p1-a"]
    assert al.held() == 1
    al.add(1, 1, 15 * HOUR, "p1-b")
    al.add(1, 2, 30 * HOUR, "p1-c")
    # The slowest partition releases its own prefix: its order is its offsets' order.
    assert al.release(pos) == ["p1-b", "p0-b", "p1-c"]
    al.add(0, 2, 40 * HOUR, "p0-c")
    assert al.release({0: Position(3), 1: Position(5)}) == []
    # Partition 1 caught up: nothing is waited for any more.
    assert al.release({0: Position(3), 1: Position(3)}) == ["p0-c"]
    assert al.held() == 0


def test_caught_up_partitions_do_not_hold_back_live_traffic() -> None:
    al, _ = make()
    al.add(0, 7, 50 * HOUR, "a")
    al.add(1, 3, 1 * HOUR, "b")
    assert al.watermark({0: Position(8), 1: Position(4)}) == END_TIME
    assert al.release({0: Position(8), 1: Position(4)}) == ["b", "a"]


def test_a_partition_never_received_from_is_caught_up_at_its_start_offset() -> None:
    al, _ = make()
    al.add(0, 0, HOUR, "a")
    assert al.release({0: Position(1), 1: Position(40, start=40)}) == ["a"]
    al.add(0, 1, 2 * HOUR, "b")
    assert al.release({0: Position(2), 1: Position(41, start=40)}) == []
    assert al.release({0: Position(2), 1: Position(None)}) == []


def test_a_partition_with_unread_records_is_waited_for_however_long() -> None:
    """A starved or lagging consumer: partition 1 has records in Kafka not fetched yet, so
    partition 0 waits, an hour of wall clock as well as a second."""
    al, clock = make(idle_s=5.0)
    al.add(0, 0, HOUR, "a")
    pos = {0: Position(1), 1: Position(10, start=0, fetched=3)}
    for _ in range(3):
        clock.advance(3_600_000)
        assert al.release(pos) == []
    assert al.exact_limit == END_TIME


def test_an_idle_partition_with_nothing_unread_stops_holding_the_others_back() -> None:
    """Fetched up to its high watermark but not received (records in flight, or a
    transaction marker at its end): waited for ``idle_s``, then skipped, and what is released
    past it is early."""
    al, clock = make(idle_s=5.0)
    al.add(1, 0, HOUR // 2, "b")
    al.add(0, 0, HOUR, "a")
    pos = {0: Position(1), 1: Position(10, start=0, fetched=10)}
    assert al.release(pos) == ["b"]
    clock.advance(4_000)
    assert al.release(pos) == []
    clock.advance(1_500)
    assert al.release(pos) == ["a"]
    assert al.exact_limit == HOUR // 2  # "a", at one hour, is past partition 1's latest


def test_slack_lets_a_partition_run_ahead_by_that_much() -> None:
    al, _ = make(slack_ms=2 * HOUR)
    al.add(0, 0, 1 * HOUR, "p0-1h")
    al.add(0, 1, 3 * HOUR, "p0-3h")
    al.add(0, 2, 4 * HOUR, "p0-4h")
    al.add(1, 0, 1 * HOUR, "p1-1h")
    pos = {0: Position(3), 1: Position(9)}
    assert al.release(pos) == ["p0-1h", "p1-1h", "p0-3h"]


def test_each_partition_keeps_its_offset_order_even_when_late_events_interleave() -> None:
    al, _ = make(slack_ms=0)
    al.add(0, 0, 5 * HOUR, "p0-5h")
    al.add(0, 1, 3 * HOUR, "p0-3h-late")
    al.add(1, 0, 4 * HOUR, "p1-4h")
    out = al.release({0: Position(2), 1: Position(1)})
    assert out.index("p0-5h") < out.index("p0-3h-late")
    assert sorted(out) == sorted(["p0-5h", "p0-3h-late", "p1-4h"])


def test_revoked_partitions_are_dropped_unreleased() -> None:
    al, _ = make()
    al.add(0, 0, HOUR, "a")
    al.add(1, 0, HOUR, "b")
    assert al.release({1: Position(1)}) == ["b"]
    assert al.held() == 0


def test_overfull_partitions_are_reported_for_pausing() -> None:
    al, _ = make(max_held=2)
    for i in range(3):
        al.add(0, i, HOUR + i, f"a{i}")
    al.add(1, 0, 0, "b")
    pos = {0: Position(3), 1: Position(5, start=0)}
    assert al.release(pos) == ["b"]
    assert al.overfull() == {0}
    assert al.held_by_partition() == {0: 3}


def test_random_backlog_releases_in_event_time_order_up_to_the_slack() -> None:
    """Four partitions with sorted backlogs delivered in random chunks: the released stream is
    in event-time order within the slack, and nothing is lost or duplicated."""
    rng = random.Random(7)
    slack = HOUR
    al, _ = make(slack_ms=slack, max_held=10**9)
    streams = {p: sorted(rng.randrange(0, 1000 * HOUR) for _ in range(300)) for p in range(4)}
    high = {p: len(v) for p, v in streams.items()}
    got = {p: 0 for p in streams}
    released: list[str] = []
    times: dict[str, int] = {}
    while any(got[p] < high[p] for p in streams):
        p = rng.choice([q for q in streams if got[q] < high[q]])
        for _ in range(rng.randrange(1, 40)):
            if got[p] == high[p]:
                break
            name = f"{p}:{got[p]}"
            times[name] = streams[p][got[p]]
            al.add(p, got[p], streams[p][got[p]], name)
            got[p] += 1
        released += al.release({q: Position(high[q], start=0) for q in streams})
    assert sorted(released) == sorted(times)
    latest = -1
    for name in released:
        assert times[name] >= latest - slack
        latest = max(latest, times[name])


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        EventTimeAligner(-1, 1.0, lambda: 0.0)


def test_accessors_report_the_last_release_and_what_it_did_not_wait_on() -> None:
    al, clock = make(slack_ms=HOUR, idle_s=5.0)
    assert al.last_limit == NO_TIME
    assert al.last_caught_up == frozenset() and al.last_idle == frozenset()
    assert al.latest(0) == NO_TIME and not al.holds(0)
    al.add(0, 0, 1 * HOUR, "a")
    al.add(0, 1, 5 * HOUR, "b")
    al.add(1, 0, 2 * HOUR, "c")
    # Partition 0 is caught up; 1 was fetched to its end (a transaction marker left: not
    # caught up); 2 has never delivered and has records unread.
    pos = {0: Position(2), 1: Position(2, fetched=2), 2: Position(4, start=0)}
    assert al.release(pos) == []  # partition 2 holds the watermark at NO_TIME
    assert al.last_limit == NO_TIME + HOUR
    assert al.last_caught_up == frozenset({0}) and al.last_idle == frozenset()
    clock.advance(6_000)  # partition 1 idle now; 2 is waited for however long
    assert al.release(pos) == []
    assert al.last_idle == frozenset({1})
    al.add(2, 0, 3 * HOUR, "d")
    assert al.release(pos) == ["a", "c", "d"]  # partition 2 reached 3h: limit 4h
    assert al.last_limit == 4 * HOUR
    assert al.holds(0) and not al.holds(1) and not al.holds(2)
    assert al.latest(0) == 5 * HOUR and al.latest(1) == 2 * HOUR
    assert al.last_caught_up == frozenset({0}) and al.last_idle == frozenset({1})
