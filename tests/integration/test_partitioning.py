"""The batch contract's partitioner agrees with librdkafka's murmur2_random (through the broker)."""

from __future__ import annotations

from confluent_kafka import Producer

from fraud.broker import TopicSpec, ensure_topics
from fraud.contracts.partitioning import partition_for
from fraud.kafka_config import producer_config
from fraud.settings import Settings


def test_partitions_agree_with_librdkafka(settings: Settings) -> None:
    topic = f"{settings.topic_prefix}partitioner"
    ensure_topics(settings, extra=[TopicSpec(topic, 7, {})])
    producer = Producer(producer_config(settings.brokers))
    got: dict[str, int] = {}

    def record(err: object, msg: object) -> None:
        assert err is None
        got[msg.key().decode()] = msg.partition()  # type: ignore[attr-defined]

    keys = [f"C{i}" for i in range(300)] + ["", "é", "customer-000123"]
    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"x", on_delivery=record)
    assert producer.flush(30) == 0
    assert got == {key: partition_for(key, 7) for key in keys}
