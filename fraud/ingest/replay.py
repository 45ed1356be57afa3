"""Replay a transaction file into Kafka: keyed by customer, paced or as fast as possible.

Each transaction becomes one ``fraud.v1.Transaction`` on the transactions topic, keyed by its
customer id so that one customer's transactions keep their order. Event time travels in the
payload; records carry the wall-clock produce time as their Kafka timestamp, so a topic's
time-based retention never deletes replayed history before it is read.

Labels (fraud feedback) in the file are published to the labels topic, keyed by terminal id (the
worker's terminal stage owns them), when the replay reaches
their event time, the transaction's time plus ``label_delay_ms``, so labels and transactions
arrive in event-time order whatever the replay speed; labels still pending at the end of the
file are published last. ``label_lead_ms`` publishes them that much earlier (see ``replay``).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from fraud.contracts.partitioning import (
    LABEL,
    MAX_BATCH,
    TRANSACTION,
    TRANSACTION_BATCH,
    partition_for,
    type_headers,
)
from fraud.ingest.files import ColumnMapping, Source, label_for, open_source
from fraud.ingest.options import require_positive
from fraud.kafka_config import make_producer, produce
from fraud.settings import Settings
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction, TransactionBatch

# Every record names its type (fraud.contracts.partitioning).
TRANSACTION_HEADERS = type_headers(TRANSACTION)
BATCH_HEADERS = type_headers(TRANSACTION_BATCH)
LABEL_HEADERS = type_headers(LABEL)


class ReplayError(RuntimeError):
    """Kafka did not take everything that was replayed."""


@dataclass(frozen=True)
class Pacing:
    """How fast to replay: ``speed`` x event time, or a fixed ``rate`` per second, or max."""

    speed: float | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.speed is not None and self.rate is not None:
            raise ValueError("give either a speed factor or a rate, not both")
        require_positive(self, "speed", "rate")


@dataclass(frozen=True)
class ReplayStats:
    transactions: int
    labels: int
    seconds: float
    first_event_ms: int | None
    last_event_ms: int | None

    @property
    def rate(self) -> float:
        return self.transactions / self.seconds if self.seconds > 0 else 0.0


def count_rows(path: Path) -> int | None:
    """Data rows of an uncompressed CSV/JSONL file, counted fast; None when unknown."""
    name = path.name.lower()
    if not name.endswith((".csv", ".jsonl", ".ndjson")):
        return None
    lines = 0
    last = b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return lines - 1 if name.endswith(".csv") else lines


# How long the client keeps trying to deliver a record (librdkafka's message.timeout.ms, its
# default made explicit): a replay rides out a broker or whole-cluster restart shorter than
# this. The end of a replay waits for the client's verdict on every record (delivered, or
# failed after this long), never for a shorter clock of its own: a 60 s wait failed a replay
# whose records the cluster would have taken once it was back.
DELIVERY_TIMEOUT_MS = 300_000
FLUSH_MARGIN_S = 30.0


def producer(brokers: str, **extra: Any) -> Producer:
    conf: dict[str, Any] = {
        "enable.idempotence": True,
        "linger.ms": 5,
        "queue.buffering.max.messages": 1_000_000,
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
    }
    conf.update(extra)
    return make_producer(brokers, **conf)


class _Sender:
    """Produces with back-pressure and counts delivery failures."""

    def __init__(self, prod: Producer) -> None:
        self.prod = prod
        self.failed = 0
        self.first_error = ""

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed += 1
            self.first_error = self.first_error or f"{msg.topic()}: {err}"

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        produce(
            self.prod, topic, value, key=key, partition=partition, headers=headers,
            on_delivery=self._on_delivery,
        )  # fmt: skip


class _Batcher:
    """Transactions grouped by partition into TransactionBatch records
    (fraud.contracts.partitioning)."""

    def __init__(self, sender: _Sender, topic: str, partitions: int, size: int) -> None:
        self.sender = sender
        self.topic = topic
        self.partitions = partitions
        self.size = size
        self.pending: dict[int, list[Transaction]] = {}

    def add(self, tx: Transaction) -> None:
        partition = partition_for(tx.customer_id, self.partitions)
        group = self.pending.setdefault(partition, [])
        group.append(tx)
        if len(group) >= self.size:
            self._send(partition, group)
            del self.pending[partition]

    def _send(self, partition: int, group: list[Transaction]) -> None:
        value = TransactionBatch(transactions=group).SerializeToString()
        self.sender.send(self.topic, None, value, partition=partition, headers=BATCH_HEADERS)

    def flush(self) -> None:
        for partition, group in self.pending.items():
            self._send(partition, group)
        self.pending.clear()


def replay(
    settings: Settings,
    path: Path,
    *,
    mapping: ColumnMapping | None = None,
    default_currency: str = "EUR",
    pacing: Pacing = Pacing(),
    label_delay_ms: int | None = None,
    label_lead_ms: int = 0,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    source: Source | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    batch: int = 1,
    fraud_labels_only: bool = False,
) -> ReplayStats:
    """Produce the file's transactions (and labels when ``label_delay_ms`` is set).

    ``batch`` > 1 packs up to that many transactions of a partition per TransactionBatch
    record (fraud.contracts.partitioning), sent when full or before the replay waits for its pace.
    ``fraud_labels_only`` publishes the labels of frauds only: a label saying "not fraud"
    changes no feature (terminal risk counts frauds among the transactions of the window), as
    a chargeback feed only reports frauds.
    ``label_lead_ms`` publishes each label that much event time before its label time (less
    than the delay, so after its transaction): a label and the transaction after it in the
    merged order go to different partitions, which Kafka does not order, so without a lead a
    worker may read the transaction first, and decide it without the label.
    ``progress`` receives the number of transactions sent since its previous call.
    Raises SourceError on a bad row (after producing the rows before it), which includes a row
    the worker would dead-letter (the Source checks each row with ``validate_transaction``; a
    ``source`` given here should be opened with ``settings.max_future_ms``), and ReplayError
    when Kafka does not acknowledge every record.
    """
    names = settings.topic_names
    src = source or open_source(
        path, mapping, default_currency, max_future_ms=settings.max_future_ms
    )
    if batch < 1 or batch > MAX_BATCH:
        raise ValueError(f"batch must be between 1 and {MAX_BATCH}, got {batch}")
    if label_lead_ms < 0 or (label_lead_ms and (label_delay_ms is None
                                                or label_lead_ms >= label_delay_ms)):  # fmt: skip
        # a lead as long as the delay would publish a label before its transaction
        raise ValueError(
            f"label_lead_ms must be >= 0 and less than label_delay_ms, got {label_lead_ms} "
            f"with a delay of {label_delay_ms}"
        )
    sender = _Sender(producer(settings.brokers))
    batcher = (
        _Batcher(sender, names.transactions, settings.partitions, batch) if batch > 1 else None
    )
    pending: list[tuple[int, int, bytes, bytes]] = []  # (label time, seq, key, Label bytes)
    sent = labels = 0
    unreported = 0
    first_event: int | None = None
    last_event: int | None = None
    started = clock()

    def flush_labels(until_ms: int | None) -> int:
        n = 0
        while pending and (until_ms is None or pending[0][0] <= until_ms):
            _, _, key, value = heapq.heappop(pending)
            sender.send(names.labels, key, value, headers=LABEL_HEADERS)
            n += 1
        return n

    try:
        for row in src:
            if limit is not None and sent >= limit:
                break
            tx = row.transaction
            t = tx.event_time_ms
            if first_event is None:
                first_event = t
            last_event = t
            if pacing.speed is not None:
                due = started + (t - first_event) / 1000.0 / pacing.speed
            elif pacing.rate is not None:
                due = started + sent / pacing.rate
            else:
                due = None
            if due is not None:
                ahead = due - clock()
                if ahead > 0.001:
                    if batcher is not None:
                        batcher.flush()
                    sleep(ahead)
            if pending:
                labels += flush_labels(t + label_lead_ms)
            if batcher is not None:
                batcher.add(tx)
            else:
                sender.send(
                    names.transactions,
                    tx.customer_id.encode(),
                    tx.SerializeToString(),
                    headers=TRANSACTION_HEADERS,
                )
            if label_delay_ms is not None and not (fraud_labels_only and not row.fraud):
                label: Label | None = label_for(row, label_delay_ms)
                if label is not None:
                    item = (
                        label.event_time_ms,
                        row.line,
                        tx.terminal_id.encode(),
                        label.SerializeToString(),
                    )
                    heapq.heappush(pending, item)
            sent += 1
            unreported += 1
            if unreported >= 1000:
                sender.prod.poll(0)
                if progress is not None:
                    progress(unreported)
                unreported = 0
        if batcher is not None:
            batcher.flush()
        labels += flush_labels(None)
    finally:
        remaining = sender.prod.flush(DELIVERY_TIMEOUT_MS / 1000 + FLUSH_MARGIN_S)
    if progress is not None and unreported:
        progress(unreported)
    if sender.failed or remaining:
        raise ReplayError(
            f"Kafka did not acknowledge {sender.failed + remaining} records "
            f"(first error: {sender.first_error or 'timeout'})"
        )
    return ReplayStats(sent, labels, clock() - started, first_event, last_event)
