import asyncio
import time
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP as FaustTP

from fraud.worker.transport import _ConsumerThread, position_known, to_rewind


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


async def _assigned_without_position() -> tuple[Any, Any]:
    """An aiokafka subscription with partition ("t", 0) assigned, fetched from (its highwater
    and fetch time known) but its position reset, as right after an assignment or a seek."""
    subscription = SubscriptionState()  # in a running loop, as aiokafka wants
    subscription.assign_from_user({TopicPartition("t", 0)})
    state = subscription.subscription.assignment.state_value(TopicPartition("t", 0))
    state.highwater = 10
    state.timestamp = time.time() * 1000
    return subscription, state


def _thread_over(subscription: Any) -> faust_aiokafka.AIOKafkaConsumerThread:
    """A consumer thread object over ``subscription`` with what Faust's livelock check reads."""
    thread = object.__new__(_ConsumerThread)
    thread._consumer = SimpleNamespace(
        _subscription=subscription, _fetcher=SimpleNamespace(_subscriptions=subscription)
    )
    thread.time_started = time.monotonic()
    thread.tp_fetch_request_timeout_secs = 60.0
    thread.consumer = SimpleNamespace(  # type: ignore[assignment]
        app=SimpleNamespace(monitor=object(), topics=SimpleNamespace(acks_enabled_for=bool))
    )
    return thread


def test_position_is_known_only_once_set() -> None:
    async def main() -> None:
        subscription, state = await _assigned_without_position()
        assignment = subscription.subscription.assignment
        assert not position_known(assignment, FaustTP("t", 0))
        assert not position_known(assignment, FaustTP("t", 1))
        assert not position_known(None, FaustTP("t", 0))
        state.seek(4)
        assert position_known(assignment, FaustTP("t", 0))

    asyncio.run(main())


def test_the_livelock_check_skips_a_partition_whose_position_is_unknown() -> None:
    async def main() -> None:
        subscription, _ = await _assigned_without_position()
        thread = _thread_over(subscription)
        with pytest.raises(AssertionError):  # Faust's own check, which crashed the consumer
            faust_aiokafka.AIOKafkaConsumerThread.verify_event_path(
                thread, time.monotonic(), FaustTP("t", 0)
            )
        thread.verify_event_path(time.monotonic(), FaustTP("t", 0))

    asyncio.run(main())
