"""Configuration shared by every confluent-kafka client the project creates.

librdkafka logs through Python logging (logger ``fraud.rdkafka``) instead of writing to stderr
itself, so a CLI error stays one line; ``-v`` shows those logs.

Producers use the Java client's partitioner (murmur2), as Faust/aiokafka and Kafka Streams do:
the worker's stages rely on topics keyed by the same id landing on the same partition number
(labels and the by-terminal repartition topic), so every producer of those topics must agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

RDKAFKA_LOGGER = logging.getLogger("fraud.rdkafka")


def client_config(brokers: str, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": brokers, "logger": RDKAFKA_LOGGER}
    conf.update(extra)
    return conf


def producer_config(brokers: str, **extra: Any) -> dict[str, Any]:
    conf = client_config(brokers, partitioner="murmur2_random")
    conf.update(extra)
    return conf


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None = None,
    partition: int | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    on_delivery: Callable[..., None] | None = None,
) -> None:
    """Queue one message. When librdkafka's queue is full, serve delivery reports until it
    has room: back-pressure on the caller instead of a ``BufferError``."""
    kwargs: dict[str, Any] = {"key": key, "value": value}
    if partition is not None:
        kwargs["partition"] = partition
    if headers:
        kwargs["headers"] = list(headers)
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.005)


def high_watermarks(
    brokers: str, topics: Sequence[str], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """The high watermark (next offset to be written) of every partition of ``topics``."""
    consumer = Consumer(client_config(brokers, **{"group.id": "fraud-watermarks"}))
    try:
        out: dict[tuple[str, int], int] = {}
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            for p in meta.partitions:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout_s
                )
                out[(topic, p)] = int(high)
        return out
    finally:
        consumer.close()
