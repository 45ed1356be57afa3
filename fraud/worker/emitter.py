"""Output path of the worker: one confluent-kafka producer for decisions, alerts, dead letters
and the state changelog.

Faust's producer sends one message at a time through asyncio and measured about a thousand
decisions per second here; librdkafka buffers and batches in C. ``flush`` runs at the end of
every micro-batch, before the batch's input offsets can be committed, so a decision or a state
change is delivered before its transaction counts as consumed (at-least-once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message

from fraud.kafka_config import make_producer, produce


class EmitError(RuntimeError):
    """Kafka refused or failed to deliver output of the worker."""


class KafkaEmitter:
    def __init__(self, brokers: str, extra: dict[str, Any] | None = None) -> None:
        conf: dict[str, Any] = {
            "enable.idempotence": True,
            # flush() at the end of each batch sends at once; no linger needed
            "linger.ms": 0,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
        conf.update(extra or {})
        self._producer = make_producer(brokers, **conf)
        self._errors: list[str] = []
        self._offsets: dict[tuple[str, int], int] = {}

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _on_tracked_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            return
        tp = (topic, partition)
        if offset > self._offsets.get(tp, -1):
            self._offsets[tp] = offset

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        track_offset: bool = False,
    ) -> None:
        """Queue one message; ``track_offset`` records its offset for ``flush``'s callback."""
        callback = self._on_tracked_delivery if track_offset else self._on_delivery
        produce(
            self._producer, topic, value, key=key, partition=partition, headers=headers,
            on_delivery=callback,
        )  # fmt: skip

    def warm(self, topics: Sequence[str], timeout_s: float = 10.0) -> None:
        """Fetch the topics' metadata now, so the first batch does not wait for it."""
        for topic in topics:
            self._producer.list_topics(topic, timeout=timeout_s)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> dict[tuple[str, int], int]:
        """Wait until everything queued is delivered; raise EmitError if anything failed.

        Returns the highest delivered offset per (topic, partition) of the messages sent with
        ``track_offset`` since the previous flush. Safe to run in a worker thread while the
        event loop goes on (librdkafka releases the GIL while it waits).
        """
        remaining = self._producer.flush(timeout_s)
        if self._errors or remaining:
            errors, self._errors = self._errors, []
            detail = "; ".join(errors[:3]) or f"{remaining} messages not delivered"
            raise EmitError(f"output to Kafka failed: {detail}")
        offsets, self._offsets = self._offsets, {}
        return offsets
