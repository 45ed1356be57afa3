import asyncio
from types import SimpleNamespace
from typing import NamedTuple

import pytest

from fraud.worker.transport import DeliveryRecorder, NextToDeliver, to_rewind


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


def test_next_to_deliver_follows_seeks_and_deliveries() -> None:
    nxt = NextToDeliver()
    assert nxt.of("t0") is None
    nxt.sought("t0", 2)  # a seek to the committed offset: the next to read is 2
    assert nxt.of("t0") == 2
    nxt.delivered("t0", 2)
    assert nxt.of("t0") == 3
    nxt.sought("t0", None)  # no committed offset: from the beginning
    assert nxt.of("t0") == 0


def test_a_record_whose_callback_is_cancelled_is_not_counted_as_delivered() -> None:
    """Faust cancels the callback of a record fetched while the flow is suspended, and marks
    it read anyway; the recorder must not, so that it is fetched again."""

    async def main() -> None:
        gate = asyncio.Event()
        passed: list[int] = []

        async def on_message(message: SimpleNamespace) -> None:
            if message.offset == 5:
                await gate.wait()  # the flow control, suspended
            passed.append(message.offset)

        nxt = NextToDeliver()
        recorder = DeliveryRecorder(on_message, nxt)
        await recorder(SimpleNamespace(tp="t0", offset=4))
        assert nxt.of("t0") == 5 and passed == [4]
        task = asyncio.ensure_future(recorder(SimpleNamespace(tp="t0", offset=5)))
        await asyncio.sleep(0)
        task.cancel()  # as wait_first does when suspend_flow is set
        with pytest.raises(asyncio.CancelledError):
            await task
        assert nxt.of("t0") == 5 and passed == [4]  # offset 5 is still to be delivered

    asyncio.run(main())
