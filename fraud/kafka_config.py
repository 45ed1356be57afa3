"""Every Kafka client the project creates is configured here.

``make_producer`` and ``make_consumer`` build the confluent-kafka clients (their settings:
``producer_config``, ``client_config``); ``aiokafka_config`` is the keyword arguments of the
aiokafka clients of the sinks and the benchmarks. Connection settings that every client needs
(the brokers, and whatever else reaching them takes) are added in these functions only.

librdkafka logs through Python logging (logger ``fraud.rdkafka``) instead of writing to stderr
itself, so a CLI error stays one line; ``-v`` shows those logs.

Producers use the Java client's partitioner (murmur2), as Faust/aiokafka and Kafka Streams do:
the worker's stages rely on topics keyed by the same id landing on the same partition number
(labels and the by-terminal repartition topic), so every producer of those topics must agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from fraud.settings import Settings

RDKAFKA_LOGGER = logging.getLogger("fraud.rdkafka")
# Errors of a partition whose leadership is settling (not all flagged retriable by librdkafka).
_SETTLING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    # The client's own metadata does not list the partition yet (a topic created a moment
    # ago, on a busy machine: a worker exited at start on the policy topic).
    KafkaError._UNKNOWN_PARTITION,
}


def _brokers(target: Settings | str) -> str:
    return target if isinstance(target, str) else target.brokers


def client_config(target: Settings | str, **extra: Any) -> dict[str, Any]:
    """librdkafka settings of a client of ``target`` (settings, or a bootstrap list)."""
    conf: dict[str, Any] = {"bootstrap.servers": _brokers(target), "logger": RDKAFKA_LOGGER}
    conf.update(extra)
    return conf


def producer_config(target: Settings | str, **extra: Any) -> dict[str, Any]:
    conf = client_config(target, partitioner="murmur2_random")
    conf.update(extra)
    return conf


def make_producer(target: Settings | str, **overrides: Any) -> Producer:
    """A confluent-kafka producer (murmur2 partitioner); ``overrides`` are librdkafka settings."""
    return Producer(producer_config(target, **overrides))


def make_consumer(target: Settings | str, **overrides: Any) -> Consumer:
    """A confluent-kafka consumer; ``overrides`` are librdkafka settings (``group.id``, ...)."""
    return Consumer(client_config(target, **overrides))


def aiokafka_config(target: Settings | str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of an ``AIOKafkaProducer``/``AIOKafkaConsumer`` of ``target``.

    aiokafka's default partitioner is already murmur2, the Java client's.
    """
    conf: dict[str, Any] = {"bootstrap_servers": _brokers(target)}
    conf.update(overrides)
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
    timestamp_ms: int = 0,
) -> None:
    """Queue one message (``timestamp_ms``: its CreateTime; 0: now). When librdkafka's queue
    is full, serve delivery reports until it has room: back-pressure on the caller instead of
    a ``BufferError``."""
    kwargs: dict[str, Any] = {"key": key, "value": value}
    if timestamp_ms:
        kwargs["timestamp"] = timestamp_ms
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


def watermark_offsets(
    consumer: Consumer, partition: TopicPartition, timeout_s: float = 10.0
) -> tuple[int, int]:
    """(low, high) watermarks of ``partition``, retrying retriable errors until ``timeout_s``.

    Kafka lists a new topic's leader in its metadata a moment before that broker serves the
    partition, and a leader moves when a broker fails: the request is then answered with
    NOT_LEADER_FOR_PARTITION (or UNKNOWN_TOPIC_OR_PART) for a while.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                partition, timeout=max(0.1, deadline - time.monotonic())
            )
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (
                error.retriable() or error.code() in _SETTLING
            )
            if not retriable or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def high_watermarks(
    brokers: str, topics: Sequence[str], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """The high watermark (next offset to be written) of every partition of ``topics``."""
    consumer = make_consumer(brokers, **{"group.id": "fraud-watermarks"})
    try:
        out: dict[tuple[str, int], int] = {}
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            for p in meta.partitions:
                _, out[(topic, p)] = watermark_offsets(
                    consumer, TopicPartition(topic, p), timeout_s
                )
        return out
    finally:
        consumer.close()
