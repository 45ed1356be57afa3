"""Where a worker starts after an assignment, with changelogs and offsets written in Kafka
transactions: the end of a table's changelog, and the group's committed offsets (real broker)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from fraud.kafka_config import client_config, make_consumer, make_producer
from fraud.settings import Settings
from fraud.worker.recovery import committed_ends
from fraud.worker.transport import stable_committed


def test_the_end_is_the_last_committed_record_and_waits_for_an_open_transaction(
    settings: Settings, broker_engine: str
) -> None:
    if broker_engine != "kafka":
        pytest.skip("the emulator has no transactions to hold a last stable offset back")
    topic = f"changelog-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(client_config(settings))
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    producer = make_producer(settings.brokers, **{"transactional.id": f"t-{topic}"})
    producer.init_transactions(30)
    for _ in range(2):
        producer.begin_transaction()
        for _ in range(3):
            producer.produce(topic, b"v", key=b"k", partition=0)
        producer.commit_transaction(30)
    # 3 records and a commit marker, twice: offsets 0-2, 4-6
    assert committed_ends(settings.brokers, [(topic, 0), (topic, 1)]) == {
        (topic, 0): 6,
        (topic, 1): -1,
    }
    # A producer stopped inside a transaction: its records (7-8) hold the last stable offset
    # back, and the end is unknown until the transaction ends.
    producer.begin_transaction()
    producer.produce(topic, b"v", key=b"k", partition=0)
    producer.produce(topic, b"v", key=b"k", partition=0)
    producer.flush(30)
    with pytest.raises(TimeoutError, match="did not end"):
        committed_ends(settings.brokers, [(topic, 0)], timeout_s=2)
    producer.abort_transaction(30)
    assert committed_ends(settings.brokers, [(topic, 0)]) == {(topic, 0): 6}


def test_committed_offsets_are_read_once_no_transaction_commits_them(
    settings: Settings, broker_engine: str
) -> None:
    """A new owner starts where the previous owner's last transaction left its group: while
    that transaction's offsets are pending, the fetch waits (aiokafka's would answer with the
    offsets before it, and the worker decided that checkpoint again)."""
    if broker_engine != "kafka":
        pytest.skip("the emulator has no transactions")
    topic = f"input-{uuid.uuid4().hex[:8]}"
    group = f"group-{topic}"
    admin = AdminClient(client_config(settings))
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    member = make_consumer(settings, **{"group.id": group, "enable.auto.commit": False})
    member.subscribe([topic])
    while not member.assignment():  # joined: its metadata fences commits of other members
        member.poll(0.2)
    producer = make_producer(settings.brokers, **{"transactional.id": f"t-{topic}"})
    producer.init_transactions(30)

    def commit(offset: int, end: bool) -> None:
        producer.begin_transaction()
        producer.produce(topic, b"v", partition=0)
        producer.send_offsets_to_transaction(
            [TopicPartition(topic, 0, offset)], member.consumer_group_metadata(), 30
        )
        if end:
            producer.commit_transaction(30)
        else:
            producer.flush(30)

    try:
        assert stable_committed(settings.brokers, group, [(topic, 0)]) == {(topic, 0): None}
        commit(5, end=True)
        assert stable_committed(settings.brokers, group, [(topic, 0)]) == {(topic, 0): 5}
        commit(9, end=False)
        with pytest.raises(TimeoutError, match="unstable"):
            stable_committed(settings.brokers, group, [(topic, 0)], timeout_s=3)
        producer.commit_transaction(30)
        assert stable_committed(settings.brokers, group, [(topic, 0)]) == {(topic, 0): 9}
    finally:
        member.close()
