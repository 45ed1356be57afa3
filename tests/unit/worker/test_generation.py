"""The worker's input is kept to the consumer generation it owns partitions in."""

from __future__ import annotations

from dataclasses import dataclass

from fraud.worker.app import CurrentGeneration


@dataclass
class FakeApp:
    consumer_generation_id: int


@dataclass
class FakeMessage:
    generation_id: int


@dataclass
class FakeEvent:
    message: FakeMessage


def events(*generations: int) -> list[FakeEvent]:
    return [FakeEvent(FakeMessage(g)) for g in generations]


def test_events_fetched_in_a_revoked_generation_are_dropped() -> None:
    app = FakeApp(consumer_generation_id=3)
    generation = CurrentGeneration(app)
    batch = events(3, 3)
    assert generation.current(batch) == batch
    generation.revoked()
    # take_events yields what it buffered before the rebalance: nothing of it is handled,
    # before the next assignment or after it
    assert generation.current(events(3, 3, 3)) == []
    app.consumer_generation_id = 4
    stale_and_fresh = events(3, 4, 3, 4)
    assert generation.current(stale_and_fresh) == [stale_and_fresh[1], stale_and_fresh[3]]
    assert generation.dropped == 5
