from typing import NamedTuple

from fraud.worker.transport import to_rewind


class TP(NamedTuple):
    topic: str
    partition: int


def test_input_partitions_without_a_committed_offset_start_again_from_the_beginning() -> None:
    committed = {
        TP("transactions", 0): 404,
        TP("transactions", 1): None,  # never committed: its first records were dropped
        TP("labels", 2): 0,
        TP("app-customer-state-changelog", 1): None,  # recovery seeks changelogs itself
    }
    assert sorted(to_rewind(committed, {"app-customer-state-changelog"})) == [
        TP("labels", 2),
        TP("transactions", 1),
    ]


def test_nothing_is_rewound_when_every_partition_has_a_committed_offset() -> None:
    assert to_rewind({TP("transactions", 0): 1, TP("labels", 0): 7}, set()) == []
