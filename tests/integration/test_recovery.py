"""Where a table's recovery ends on a changelog written in Kafka transactions (real broker)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from fraud.kafka_config import client_config, make_producer
from fraud.settings import Settings
from fraud.worker.recovery import committed_ends


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
