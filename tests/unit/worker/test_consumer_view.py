from collections.abc import Iterable
from typing import Any

from faust.types import TP

from fraud.worker.app import FaustConsumerView


class FaustLikeConsumer:
    """Faust's Consumer.pause_partitions and resume_partitions: each reads its argument twice
    (faust/transport/consumer.py), once for the paused set and once for the active set."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned
        self.active = set(assigned)
        self.paused: set[TP] = set()
        self._read_offset: dict[TP, int] = {}  # the last offset handed to a stream
        self._thread = FakeThread()

    def assignment(self) -> set[TP]:
        return self.assigned

    def _get_active_partitions(self) -> set[TP]:
        return self.active

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        tpset = set(tps)
        self.active.difference_update(tpset)
        self.paused.update(tpset)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        tpset = set(tps)
        self.active.update(tps)  # as Faust does: the argument itself, a second time
        self.paused.difference_update(tpset)


class FakeThread:
    def __init__(self) -> None:
        self.seeks: list[tuple[TP, int]] = []

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


class FakeTables:
    changelog_topics = {"app-customer-state-changelog"}


class FakeApp:
    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.tables = FakeTables()


def test_resumed_partitions_are_fetched_again() -> None:
    """Given a generator, Faust's resume read it empty the second time: the partitions left
    the paused set but never came back to the active one, and a worker that paused its input
    (too much held) stalled for good."""
    inputs = {TP("transactions", 0), TP("transactions", 1)}
    changelog = TP("app-customer-state-changelog", 0)
    consumer = FaustLikeConsumer(inputs | {changelog})
    view = FaustConsumerView(FakeApp(consumer))  # type: ignore[arg-type]
    view.pause_partitions([("transactions", 0), ("transactions", 1)])
    consumer.pause_partitions([changelog])  # Faust pauses the changelogs after recovery
    assert view.not_fetched() == {("transactions", 0), ("transactions", 1)}
    view.resume_partitions([("transactions", 0), ("transactions", 1)])
    assert view.not_fetched() == set()
    assert inputs <= consumer.active


def test_a_resumed_partition_is_fetched_again_from_after_the_last_record_handed_to_a_stream() -> (
    None
):
    """Faust's getmany skips the records of a partition paused while they are handed out, and
    the position has moved past them: resumed, it must fetch them again."""
    tp = TP("transactions", 0)
    consumer = FaustLikeConsumer({tp, TP("transactions", 1)})
    view = FaustConsumerView(FakeApp(consumer))  # type: ignore[arg-type]
    consumer._read_offset[tp] = 152
    view.pause_partitions([("transactions", 0), ("transactions", 1)])
    view.resume_partitions([("transactions", 0), ("transactions", 1)])
    assert consumer._thread.seeks == [(tp, 153)]  # partition 1 handed nothing yet: left be
