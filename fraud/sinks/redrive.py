"""What the two sinks' re-drives share: read a dead-letter topic to its end, and mark letters.

The webhook sink (``fraud.sinks.webhooks.dlq``) and the notifier (``fraud.sinks.notify.dlq``)
each keep a compacted topic of markers next to their dead-letter topic, one per re-driven
letter, keyed ``"{partition}:{offset}"`` of the letter in its DLQ. Listing and re-driving skip
letters with a marker, so a letter is re-driven once. A marker (rather than a committed
consumer-group offset on the DLQ) lets a filtered re-drive (one endpoint, one recipient, one
event) leave the other letters re-drivable, in any order. Markers are written only after what
was re-driven is acknowledged (re-published, or sent): never marked but lost; a crash between
the two can re-drive a letter twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from fraud.kafka_config import make_consumer, watermark_offsets
from fraud.settings import Settings

__all__ = ["MarkerWriter", "flush", "marker_key", "read_all", "redriven_keys"]


def marker_key(partition: int, offset: int) -> str:
    """The marker key of the dead letter at ``partition``/``offset`` of its DLQ."""
    return f"{partition}:{offset}"


def read_all(settings: Settings, topic: str, timeout_s: float) -> Iterator[Message]:
    """Every message of ``topic`` up to its end at the time of the call (none if it is missing)."""
    consumer = make_consumer(
        settings,
        **{
            "group.id": f"{settings.app_id}-dlq-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        },
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            return
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in sorted(info.partitions):
            low, high = watermark_offsets(consumer, TopicPartition(topic, p), timeout_s)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, low))
        if not ends:
            return
        consumer.assign(starts)
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end in {timeout_s:.0f} s")
            for msg in consumer.consume(500, 0.2):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                p, offset = msg.partition(), msg.offset()
                if p is None or offset is None or p not in ends:
                    continue
                yield msg
                if offset + 1 >= ends[p]:
                    del ends[p]
    finally:
        consumer.close()


def redriven_keys(settings: Settings, marker_topic: str, timeout_s: float) -> set[str]:
    """The keys of every marker on ``marker_topic``: the letters already re-driven."""
    keys: set[str] = set()
    for msg in read_all(settings, marker_topic, timeout_s):
        key = msg.key()
        if key:
            keys.add(key.decode("utf-8", "replace"))
    return keys


def flush(producer: Producer, errors: list[str], timeout_s: float) -> None:
    """Wait for every produced record; ``KafkaException`` if one is unacknowledged or failed."""
    left = producer.flush(timeout_s)
    if left:
        raise KafkaException(f"{left} message(s) not acknowledged in {timeout_s:.0f} s")
    if errors:
        raise KafkaException(f"produce failed: {errors[0]}")


class MarkerWriter:
    """Produces the markers of re-driven letters and collects delivery errors for ``flush``."""

    def __init__(self, producer: Producer, marker_topic: str) -> None:
        self.producer = producer
        self.topic = marker_topic
        self.errors: list[str] = []

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(str(err))

    def mark(self, key: str, event_id: str, now_ms: int) -> None:
        value = json.dumps({"event_id": event_id, "redriven_at_ms": now_ms}).encode()
        self.producer.produce(
            self.topic, key=key.encode(), value=value, on_delivery=self.on_delivery
        )
        self.producer.poll(0)  # serve delivery callbacks as we go

    def mark_all(
        self, marks: Iterable[tuple[str, str]], now_ms: int, timeout_s: float = 10.0
    ) -> None:
        """``(key, event_id)`` each, then wait until all are acknowledged."""
        for key, event_id in marks:
            self.mark(key, event_id, now_ms)
        self.flush(timeout_s)

    def flush(self, timeout_s: float = 10.0) -> None:
        flush(self.producer, self.errors, timeout_s)
