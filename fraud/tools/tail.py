"""Tail a topic of the engine (alerts, decisions, dead letters) as text or JSON lines.

Every dead-letter topic carries ``fraud.v1.DeadLetter``: the engine's (``dead-letters``), the
webhook sink's and the notifier's are read the same way.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TextIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition
from google.protobuf.message import DecodeError, Message

from fraud.contracts.wire import decision_summary, to_json
from fraud.kafka_config import make_consumer
from fraud.settings import Settings
from fraud.sinks.notify import service as notifier
from fraud.sinks.webhooks import service as webhooks
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Decision

DEAD_LETTER_KINDS = ("dead-letters", "webhook-dead-letters", "notifier-dead-letters")
KINDS = ("alerts", "decisions", *DEAD_LETTER_KINDS)
_MESSAGES: dict[str, type[Message]] = {
    "alerts": Alert,
    "decisions": Decision,
    **dict.fromkeys(DEAD_LETTER_KINDS, DeadLetter),
}


def _topic(settings: Settings, kind: str) -> str:
    names = settings.topic_names
    return {
        "alerts": names.alerts,
        "decisions": names.decisions,
        "dead-letters": names.dead_letters,
        "webhook-dead-letters": webhooks.dlq_topic(settings),
        "notifier-dead-letters": notifier.dlq_topic(settings),
    }[kind]


def _decoder(kind: str) -> Callable[[bytes], Message]:
    cls = (
        DeadLetter if kind in DEAD_LETTER_KINDS else {"alerts": Alert, "decisions": Decision}[kind]
    )

    def decode(value: bytes) -> Message:
        msg: Message = cls()
        msg.ParseFromString(value)
        return msg

    return decode


def human(kind: str, msg: Message) -> str:
    if isinstance(msg, Alert):
        return f"ALERT {msg.alert_id} {decision_summary(msg.decision)}"
    if isinstance(msg, Decision):
        return decision_summary(msg)
    if isinstance(msg, DeadLetter):
        payload = f" [payload {msg.payload_type}]" if msg.payload_type else ""
        return (
            f"DEAD {msg.source_topic}[{msg.source_partition}]@{msg.source_offset} "
            f"{msg.reason}: {msg.detail}{payload}"
        )
    return to_json(msg)  # pragma: no cover


def open_consumer(settings: Settings, topic: str, from_beginning: bool) -> Consumer:
    """A consumer assigned to every partition of ``topic``, committing nothing."""
    consumer = make_consumer(
        settings, **{"group.id": f"fraud-tail-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
    )
    meta = consumer.list_topics(topic, timeout=10)
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        consumer.close()
        raise KafkaException(f"topic {topic!r} does not exist at {settings.brokers}")
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in sorted(info.partitions)])
    return consumer


def tail(
    settings: Settings,
    kind: str,
    out: TextIO,
    *,
    from_beginning: bool = False,
    as_json: bool = False,
    limit: int | None = None,
    idle_timeout_s: float | None = None,
) -> int:
    """Print messages as they arrive; stop after ``limit`` or ``idle_timeout_s`` of silence."""
    topic = _topic(settings, kind)
    decode = _decoder(kind)
    consumer = open_consumer(settings, topic, from_beginning)
    shown = 0
    last_seen = time.monotonic()
    try:
        while limit is None or shown < limit:
            msgs = consumer.consume(500, 0.2)
            if not msgs:
                if idle_timeout_s is not None and time.monotonic() - last_seen > idle_timeout_s:
                    break
                continue
            last_seen = time.monotonic()
            for m in msgs:
                if m.error() is not None:
                    continue
                try:
                    msg = decode(m.value() or b"")
                except DecodeError:
                    out.write(f"undecodable message at {topic}[{m.partition()}]@{m.offset()}\n")
                    continue
                out.write((to_json(msg) if as_json else human(kind, msg)) + "\n")
                shown += 1
                if limit is not None and shown >= limit:
                    break
            out.flush()
    finally:
        consumer.close()
    return shown
