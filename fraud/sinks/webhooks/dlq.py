"""The webhook dead letters: list them, and re-drive them to the first retry level (``fraud dlq``).

A dead letter on ``{alerts}-webhooks-dlq`` is a ``fraud.v1.DeadLetter`` (reason code, detail,
the alert's topic, partition and offset) whose payload is the delivery's ``Envelope``: ``attempt``,
first/last attempt times, last status and error, and the exact body.

Re-drive publishes each matching letter to ``{alerts}-webhooks-retry-0`` with ``attempt`` reset
to 0 and due now; the running sink delivers it (with the full retry schedule again) under the
same event id, so a receiver that already has it de-duplicates.

**Running it twice does not re-send**: after the re-published letters are acknowledged, a marker
per letter, keyed ``"{partition}:{offset}"`` of the letter in the DLQ, goes to the compacted topic
``{alerts}-webhooks-dlq-redriven``; ``redrive`` and ``list_dead_letters`` skip letters with a
marker. A marker (rather than a committed consumer-group offset on the DLQ) lets a filtered
re-drive (one endpoint, one event) leave the other letters re-drivable, in any order. A delivery
that fails again becomes a *new* dead letter (new offset), which can be re-driven again. A crash
between the re-publish and the marker can re-drive a letter twice; the event id covers that.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from fraud.broker import ensure_topics
from fraud.contracts.dead_letter import DeadLetter, decode_dead_letter
from fraud.kafka_config import make_consumer, make_producer, watermark_offsets
from fraud.settings import Settings
from fraud.sinks.retry import RetryPolicy
from fraud.sinks.webhooks.envelope import Envelope, encode, envelope_of
from fraud.sinks.webhooks.service import dlq_topic, redriven_topic, retry_topic, sink_topics

__all__ = ["DeadLetterEntry", "list_dead_letters", "redrive"]


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead letter, the envelope it carries, and where it is in the DLQ topic."""

    partition: int
    offset: int
    letter: DeadLetter
    envelope: Envelope
    redriven: bool = False

    @property
    def marker_key(self) -> str:
        return f"{self.partition}:{self.offset}"

    def summary(self) -> str:
        e = self.envelope
        took = (e.last_attempt_ms - e.first_attempt_ms) / 1000 if e.first_attempt_ms else 0.0
        state = " (re-driven)" if self.redriven else ""
        return (
            f"{self.partition}:{self.offset} {e.event_id} -> {e.subscription_id} {e.url} "
            f"attempts={e.attempt} over {took:.1f} s reason={self.letter.reason} "
            f"detail={self.letter.detail!r} last_error={e.last_error!r}{state}"
        )


def _read_all(settings: Settings, topic: str, timeout_s: float) -> Iterator[Message]:
    """Every message of ``topic`` up to its end at the time of the call."""
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


def _redriven_keys(settings: Settings, timeout_s: float) -> set[str]:
    keys: set[str] = set()
    for msg in _read_all(settings, redriven_topic(settings), timeout_s):
        key = msg.key()
        if key:
            keys.add(key.decode("utf-8", "replace"))
    return keys


def _matches(envelope: Envelope, endpoint: str | None, event_id: str | None) -> bool:
    if endpoint is not None and endpoint not in (envelope.subscription_id, envelope.url):
        return False
    return event_id is None or event_id in (envelope.event_id, envelope.alert_id)


def list_dead_letters(
    settings: Settings,
    *,
    endpoint: str | None = None,
    event_id: str | None = None,
    include_redriven: bool = False,
    limit: int | None = None,
    timeout_s: float = 10.0,
) -> list[DeadLetterEntry]:
    """Dead letters in DLQ order, optionally only those of ``endpoint`` (subscription id or URL)
    or ``event_id`` (an event id or an alert id). Re-driven letters only with
    ``include_redriven``. Records that are not a webhook dead letter are skipped.
    """
    redriven = _redriven_keys(settings, timeout_s)
    out: list[DeadLetterEntry] = []
    for msg in _read_all(settings, dlq_topic(settings), timeout_s):
        try:
            letter = decode_dead_letter(msg.value())
            envelope = envelope_of(letter)
        except ValueError:
            continue
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        entry = DeadLetterEntry(partition, offset, letter, envelope)
        entry = replace(entry, redriven=entry.marker_key in redriven)
        if entry.redriven and not include_redriven:
            continue
        if not _matches(envelope, endpoint, event_id):
            continue
        out.append(entry)
        if limit is not None and len(out) >= limit:
            break
    return out


def _flush(producer: Producer, errors: list[str], timeout_s: float) -> None:
    left = producer.flush(timeout_s)
    if left:
        raise KafkaException(f"{left} message(s) not acknowledged in {timeout_s:.0f} s")
    if errors:
        raise KafkaException(f"produce failed: {errors[0]}")


def redrive(
    settings: Settings,
    *,
    endpoint: str | None = None,
    event_id: str | None = None,
    all: bool = False,
    clock: Callable[[], float] = time.time,
    timeout_s: float = 10.0,
) -> int:
    """Re-publish the matching, not yet re-driven dead letters to retry level 0; their count.

    One of ``endpoint``, ``event_id`` or ``all=True`` is required (``ValueError`` otherwise), so
    a bare call cannot re-send everything by accident. Filters combine (both must match).
    """
    if not all and endpoint is None and event_id is None:
        raise ValueError("redrive needs an endpoint, an event id, or all=True")
    ensure_topics(settings, extra=sink_topics(settings, RetryPolicy(delays=(0.0,))))
    entries = list_dead_letters(settings, endpoint=endpoint, event_id=event_id, timeout_s=timeout_s)
    if not entries:
        return 0
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    producer = make_producer(settings, acks="all")
    now_ms = int(clock() * 1000)
    target = retry_topic(settings, 0)
    for entry in entries:
        fresh = replace(
            entry.envelope,
            attempt=0,
            first_attempt_ms=0,
            last_attempt_ms=0,
            due_ms=now_ms,
            redrives=entry.envelope.redrives + 1,
        )
        producer.produce(
            target, key=fresh.event_id.encode(), value=encode(fresh), on_delivery=on_delivery
        )
    _flush(producer, errors, timeout_s)  # re-sent first, marked after: never marked but lost
    marker_topic = redriven_topic(settings)
    for entry in entries:
        marker: dict[str, Any] = {
            "event_id": entry.envelope.event_id,
            "redriven_at_ms": now_ms,
        }
        producer.produce(
            marker_topic,
            key=entry.marker_key.encode(),
            value=json.dumps(marker).encode(),
            on_delivery=on_delivery,
        )
    _flush(producer, errors, timeout_s)
    return len(entries)
