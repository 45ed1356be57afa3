"""The columnar batch the stages pass along, and the parsing of records into it.

``parse_transactions`` turns the customer stage's records (one ``Transaction``, or a
``TransactionBatch`` under the ``fraud.contract`` header; any other type named there, or a
headerless record with fields a Transaction lacks, is dead-lettered as ``wrong_type``) into
valid transactions and dead letters; the customer stage turns those into ``Enriched`` columns.
``decode_enriched`` turns the terminal stage's records (the by-terminal repartition topic) back
into ``Enriched``. Every record is parsed by ``fraud.contracts.wire.decode_as``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fraud.contracts.dead_letter import dead_letter
from fraud.contracts.partitioning import ENRICHED_BATCH, TRANSACTION_BATCH, partition_for
from fraud.contracts.records import RawRecord
from fraud.contracts.units import CUSTOMER_STAGE_FEATURES
from fraud.contracts.wire import (
    BY_TERMINAL_TAKE,
    TRANSACTIONS_TAKE,
    Rejected,
    check_type,
    decode_as,
    parse_transaction,
    validate_transaction,
)
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.enriched_pb2 import EnrichedBatch, EnrichedTransaction, SourceMark
from fraud.v1.transaction_pb2 import Transaction, TransactionBatch

__all__ = [
    "N_CUSTOMER",
    "Enriched",
    "Parsed",
    "decode_enriched",
    "parse_transactions",
    "reject",
]

N_CUSTOMER = len(CUSTOMER_STAGE_FEATURES)


@dataclass
class Enriched:
    """Valid transactions with their customer-stage features, as columns: what the customer
    stage hands to the terminal stage, in one process or (as ``EnrichedTransaction`` messages)
    over the repartition topic."""

    txs: list[Transaction] = field(default_factory=list)
    # (n, N_CUSTOMER), in the order of fraud.contracts.units.CUSTOMER_STAGE_FEATURES.
    features: np.ndarray = field(default_factory=lambda: np.empty((0, N_CUSTOMER)))
    ingested_at_ms: list[int] = field(default_factory=list)
    source_topics: list[str] = field(default_factory=list)
    source_partitions: list[int] = field(default_factory=list)
    source_offsets: list[int] = field(default_factory=list)
    source_indexes: list[int] = field(default_factory=list)
    # Per row: released by the alignment before every customer partition was read up to its
    # time (empty: none was).
    incomplete_alignment: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.txs)

    def messages(self) -> list[EnrichedTransaction]:
        return [
            EnrichedTransaction(
                transaction=tx,
                customer_features=row,
                ingested_at_ms=ingested,
                source_topic=topic,
                source_partition=partition,
                source_offset=offset,
                source_index=index,
                incomplete_alignment=early,
            )
            for tx, row, ingested, topic, partition, offset, index, early in zip(
                self.txs,
                self.features.tolist(),
                self.ingested_at_ms,
                self.source_topics,
                self.source_partitions,
                self.source_offsets,
                self.source_indexes,
                self.incomplete_alignment or [False] * len(self.txs),
                strict=True,
            )
        ]

    def take(self, rows: Sequence[int]) -> Enriched:
        """The rows at ``rows``, in that order."""
        early = self.incomplete_alignment
        return Enriched(
            [self.txs[i] for i in rows],
            self.features[list(rows)],
            [self.ingested_at_ms[i] for i in rows],
            [self.source_topics[i] for i in rows],
            [self.source_partitions[i] for i in rows],
            [self.source_offsets[i] for i in rows],
            [self.source_indexes[i] for i in rows],
            [early[i] for i in rows] if early else [],
        )

    def slice(self, start: int, end: int) -> Enriched:
        """Rows ``start`` to ``end`` (excluded); itself when that is every row."""
        if start == 0 and end == len(self.txs):
            return self
        return self.take(range(start, end))

    @staticmethod
    def concat(parts: Sequence[Enriched]) -> Enriched:
        """The rows of ``parts``, in order."""
        if len(parts) == 1:
            return parts[0]
        early = [bool(e) for p in parts for e in (p.incomplete_alignment or [False] * len(p))]
        return Enriched(
            [tx for p in parts for tx in p.txs],
            np.vstack([p.features for p in parts]) if parts else np.empty((0, N_CUSTOMER)),
            [v for p in parts for v in p.ingested_at_ms],
            [v for p in parts for v in p.source_topics],
            [v for p in parts for v in p.source_partitions],
            [v for p in parts for v in p.source_offsets],
            [v for p in parts for v in p.source_indexes],
            early if any(early) else [],
        )

    @staticmethod
    def from_messages(items: Sequence[EnrichedTransaction]) -> Enriched:
        n = len(items)
        features = np.fromiter(
            (v for item in items for v in item.customer_features), np.float64, n * N_CUSTOMER
        ).reshape(n, N_CUSTOMER)
        return Enriched(
            [item.transaction for item in items],
            features,
            [item.ingested_at_ms for item in items],
            [item.source_topic for item in items],
            [item.source_partition for item in items],
            [item.source_offset for item in items],
            [item.source_index for item in items],
            [item.incomplete_alignment for item in items]
            if any(item.incomplete_alignment for item in items)
            else [],
        )


def reject(rec: RawRecord, rejected: Rejected, now_ms: int) -> DeadLetter:
    """The dead letter of ``rec``, refused for ``rejected``."""
    return dead_letter(
        rejected,
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        payload=rec.value,
        now_ms=now_ms,
    )


@dataclass
class Parsed:
    """Valid transactions of a micro-batch, each with its record and its index in the record
    (0 unless the record is a TransactionBatch)."""

    txs: list[Transaction] = field(default_factory=list)
    recs: list[RawRecord] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)


def parse_transactions(
    records: Sequence[RawRecord],
    now_ms: int,
    max_future_ms: int,
    dead: list[DeadLetter],
    partitions: int | None = None,
) -> Parsed:
    """Valid transactions and their records; the rest become dead letters.

    A record is one ``Transaction`` keyed by its customer_id, or (``fraud.contract`` header) a
    ``TransactionBatch`` whose transactions all belong to the record's partition; checking that
    needs ``partitions``, the topic's partition count.
    """
    out = Parsed()
    for rec in records:
        wrong = check_type(rec.contract, TRANSACTIONS_TAKE)
        if wrong is not None:
            dead.append(reject(rec, wrong, now_ms))
            continue
        if rec.contract == TRANSACTION_BATCH:
            _parse_batch(rec, now_ms, max_future_ms, dead, partitions, out)
            continue
        parsed = parse_transaction(rec.value, now_ms, max_future_ms, rec.contract)
        if not isinstance(parsed, Rejected) and rec.key != parsed.customer_id.encode():
            parsed = Rejected(
                "wrong_key",
                f"record key {rec.key!r} is not the customer_id {parsed.customer_id!r}; key "
                "transactions by customer so that one customer's transactions share a partition",
            )
        if isinstance(parsed, Rejected):
            dead.append(reject(rec, parsed, now_ms))
        else:
            out.txs.append(parsed)
            out.recs.append(rec)
            out.indexes.append(0)
    return out


def _parse_batch(
    rec: RawRecord,
    now_ms: int,
    max_future_ms: int,
    dead: list[DeadLetter],
    partitions: int | None,
    out: Parsed,
) -> None:
    batch = decode_as(TransactionBatch, rec.value, rec.contract)
    if isinstance(batch, Rejected):
        dead.append(reject(rec, batch, now_ms))
        return
    for index, tx in enumerate(batch.transactions):
        rejected = validate_transaction(tx, now_ms, max_future_ms)
        if rejected is None and partitions is not None:
            want = partition_for(tx.customer_id, partitions)
            if want != rec.partition:
                rejected = Rejected(
                    "wrong_partition",
                    f"customer_id {tx.customer_id!r} belongs to partition {want}, not "
                    f"{rec.partition}: group a TransactionBatch by the murmur2 partition of "
                    "each customer_id (fraud.contracts.partitioning)",
                )
        if rejected is not None:
            letter = reject(
                rec, Rejected(rejected.reason, f"item {index}: {rejected.detail}"), now_ms
            )
            letter.key = tx.customer_id.encode()
            letter.payload = tx.SerializeToString()
            dead.append(letter)
            continue
        out.txs.append(tx)
        out.recs.append(rec)
        out.indexes.append(index)


def decode_enriched(
    records: Sequence[RawRecord],
    now_ms: int,
    marks: list[Sequence[SourceMark]] | None = None,
) -> tuple[Enriched, list[int], list[DeadLetter]]:
    """The repartitioned transactions of ``records`` (one ``EnrichedTransaction``, or an
    ``EnrichedBatch`` under the ``fraud.contract`` header) and the partition each came from;
    the rest as dead letters. With ``marks``, each ``EnrichedBatch``'s source marks are
    appended to it."""
    items: list[EnrichedTransaction] = []
    parts: list[int] = []
    dead: list[DeadLetter] = []
    for rec in records:
        wrong = check_type(rec.contract, BY_TERMINAL_TAKE)
        if wrong is not None:
            dead.append(reject(rec, wrong, now_ms))
            continue
        decoded = (
            decode_as(EnrichedBatch, rec.value, rec.contract)
            if rec.contract == ENRICHED_BATCH
            else decode_as(EnrichedTransaction, rec.value, rec.contract)
        )
        if isinstance(decoded, Rejected):
            dead.append(reject(rec, decoded, now_ms))
            continue
        if isinstance(decoded, EnrichedBatch):
            received = list(decoded.items)
            if marks is not None:
                marks.append(decoded.marks)
        else:
            received = [decoded]
        for item in received:
            if len(item.customer_features) != N_CUSTOMER:
                dead.append(
                    reject(
                        rec,
                        Rejected(
                            "feature_mismatch",
                            f"{len(item.customer_features)} customer features, expected "
                            f"{N_CUSTOMER}: workers of different versions?",
                        ),
                        now_ms,
                    )
                )
                continue
            items.append(item)
            parts.append(rec.partition)
    return Enriched.from_messages(items), parts, dead
