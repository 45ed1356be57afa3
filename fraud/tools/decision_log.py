"""Read the engine's decisions and the fraud labels back from Kafka as numpy columns.

What training (``fraud.tools.train``) and offline evaluation need: every Decision the engine wrote
(with the feature vector it computed) and every Label, read from the beginning of each topic
with a consumer that commits nothing (``fraud.tools.tail.open_consumer``).

A topic is read until every partition has reached the end it had when reading started (its high
watermark), or until nothing arrives for ``idle_timeout_s`` (the fallback, e.g. when the last
offsets are transaction markers that are never delivered), or until ``limit`` messages.

Duplicates: a worker that restarts may write a decision twice (at-least-once). Decisions and
labels are keyed so that one transaction's records share a partition, hence come in the order
they were written; for both topics the **last record read for a transaction wins** (the latest
decision; the latest label, e.g. a chargeback later reversed). Undecodable records are skipped
and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, TopicPartition
from google.protobuf.message import DecodeError

from fraud.contracts.units import ALL_FEATURES
from fraud.kafka_config import watermark_offsets
from fraud.settings import Settings
from fraud.tools.tail import open_consumer
from fraud.v1.decision_pb2 import Decision
from fraud.v1.label_pb2 import Label

__all__ = ["DecisionLog", "LabelLog", "read_decisions", "read_labels", "read_topic"]

Progress = Callable[[int], None]


@dataclass(frozen=True, eq=False)
class DecisionLog:
    """Decisions as columns, one row per transaction (the last decision read for it).

    ``features`` is (n, len(feature_names)) in ``feature_names`` order (``ALL_FEATURES`` by
    default), NaN where a decision does not carry the feature. ``action`` is the
    ``fraud.v1.Action`` value. ``skipped`` counts undecodable records, ``duplicates`` the
    decisions replaced by a later one for the same transaction.
    """

    transaction_id: list[str]
    customer_id: list[str]
    event_time_ms: npt.NDArray[np.int64]
    score: npt.NDArray[np.float64]
    action: npt.NDArray[np.int8]
    features: npt.NDArray[np.float64]
    feature_names: tuple[str, ...] = ALL_FEATURES
    skipped: int = 0
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.transaction_id)


class LabelLog(NamedTuple):
    """Labels, one per transaction (the last read for it): unpacks as ``(ids, fraud)``."""

    transaction_id: list[str]
    fraud: npt.NDArray[np.int8]


def _at_end(consumer: Consumer, high: dict[int, int]) -> bool:
    """True when every assigned partition's position has reached its high watermark."""
    if not high:
        return True
    for tp in consumer.position(consumer.assignment()):
        end = high.get(tp.partition, 0)
        if end > 0 and (tp.offset < 0 or tp.offset < end):
            return False
    return True


def _parts(consumer: Consumer) -> list[tuple[int, TopicPartition]]:
    return [(tp.partition, tp) for tp in consumer.assignment()]


def read_topic(
    settings: Settings,
    topic: str,
    *,
    idle_timeout_s: float = 3.0,
    limit: int | None = None,
    progress: Progress | None = None,
) -> list[bytes]:
    """The values of ``topic`` from the beginning, up to its end at the time of the call.

    Stops at the high watermarks taken when it starts, after ``idle_timeout_s`` without a
    message, or after ``limit`` values. ``progress`` gets the count read so far after each batch.
    """
    consumer = open_consumer(settings, topic, from_beginning=True)
    values: list[bytes] = []
    try:
        high: dict[int, int] = {}
        for partition, tp in _parts(consumer):
            low, hi = watermark_offsets(consumer, tp, 10.0)
            if hi > low:
                high[partition] = hi
        last_seen = time.monotonic()
        while high and (limit is None or len(values) < limit):
            msgs = consumer.consume(1000, 0.2)
            if msgs:
                last_seen = time.monotonic()
                for m in msgs:
                    if m.error() is None:
                        values.append(m.value() or b"")
                if progress is not None:
                    progress(len(values))
            if _at_end(consumer, high):
                break
            if not msgs and time.monotonic() - last_seen > idle_timeout_s:
                break
    finally:
        consumer.close()
    return values if limit is None else values[:limit]


def read_decisions(
    settings: Settings,
    *,
    idle_timeout_s: float = 3.0,
    limit: int | None = None,
    feature_names: tuple[str, ...] = ALL_FEATURES,
    progress: Progress | None = None,
) -> DecisionLog:
    """Every decision on ``settings.topic_names.decisions`` (see the module docstring)."""
    raw = read_topic(
        settings,
        settings.topic_names.decisions,
        idle_timeout_s=idle_timeout_s,
        limit=limit,
        progress=progress,
    )
    latest: dict[str, Decision] = {}
    skipped = duplicates = 0
    for value in raw:
        d = Decision()
        try:
            d.ParseFromString(value)
        except DecodeError:
            skipped += 1
            continue
        if not d.transaction_id:
            skipped += 1
            continue
        if d.transaction_id in latest:
            duplicates += 1
            del latest[d.transaction_id]  # re-insert: keep read order of the latest
        latest[d.transaction_id] = d
    n = len(latest)
    column = {name: j for j, name in enumerate(feature_names)}
    features = np.full((n, len(feature_names)), np.nan)
    event_time = np.empty(n, np.int64)
    score = np.empty(n, np.float64)
    action = np.empty(n, np.int8)
    customers: list[str] = []
    for i, d in enumerate(latest.values()):
        event_time[i] = d.event_time_ms
        score[i] = d.score
        action[i] = d.action
        customers.append(d.customer_id)
        row = features[i]
        for name, feature in d.features.items():
            j = column.get(name)
            if j is not None:
                row[j] = feature
    return DecisionLog(
        transaction_id=list(latest),
        customer_id=customers,
        event_time_ms=event_time,
        score=score,
        action=action,
        features=features,
        feature_names=tuple(feature_names),
        skipped=skipped,
        duplicates=duplicates,
    )


def read_labels(
    settings: Settings,
    *,
    idle_timeout_s: float = 3.0,
    limit: int | None = None,
    progress: Progress | None = None,
) -> LabelLog:
    """Every label on ``settings.topic_names.labels``; the last one read per transaction wins."""
    raw = read_topic(
        settings,
        settings.topic_names.labels,
        idle_timeout_s=idle_timeout_s,
        limit=limit,
        progress=progress,
    )
    latest: dict[str, bool] = {}
    for value in raw:
        label = Label()
        try:
            label.ParseFromString(value)
        except DecodeError:
            continue
        if label.transaction_id:
            latest[label.transaction_id] = label.fraud
    fraud = np.fromiter(latest.values(), dtype=np.int8, count=len(latest))
    return LabelLog(list(latest), fraud)
