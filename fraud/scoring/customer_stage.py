"""The customer stage, a pure function of micro-batches (no Kafka, no Faust).

Input: ``transactions``, keyed by customer. It decodes and validates (``fraud.scoring.batch``),
updates each customer's window state, computes the customer-side features and hands the
terminal stage ``Enriched`` columns: in the same process, or as ``EnrichedTransaction``
messages keyed by terminal over the repartition topic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fraud.contracts.currency import exponent
from fraud.contracts.records import RawRecord
from fraud.contracts.units import DAY_MS
from fraud.scoring.batch import N_CUSTOMER, Enriched, Parsed, parse_transactions
from fraud.scoring.features import amount_ratios, time_features
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.enriched_pb2 import EnrichedTransaction
from fraud.v1.transaction_pb2 import Transaction
from fraud.windows.customer import CustomerConfig, terminal_hash, update_customers
from fraud.windows.keyed import KeyedBatch
from fraud.windows.store import StateStore

__all__ = ["CustomerResult", "CustomerStage"]


@dataclass
class CustomerResult:
    columns: Enriched = field(default_factory=Enriched)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def enriched(self) -> list[EnrichedTransaction]:
        """The transactions as the repartition topic's messages."""
        return self.columns.messages()


class CustomerStage:
    def __init__(
        self,
        store: StateStore,
        clock: Callable[[], int],
        config: CustomerConfig | None = None,
        max_future_ms: int = 2 * DAY_MS,
        partitions: int | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.config = config or CustomerConfig()
        self.max_future_ms = max_future_ms
        # Partition count of the transactions topic, to check TransactionBatch records.
        self.partitions = partitions

    def process(self, records: Sequence[RawRecord]) -> CustomerResult:
        dead: list[DeadLetter] = []
        parsed = self.parse(records, dead)
        result = self.process_parsed(parsed.txs, parsed.recs, parsed.indexes)
        result.dead_letters[:0] = dead
        return result

    def parse(self, records: Sequence[RawRecord], dead: list[DeadLetter]) -> Parsed:
        """Valid transactions and their records; the rest are appended to ``dead``."""
        return parse_transactions(records, self.clock(), self.max_future_ms, dead, self.partitions)

    def process_parsed(
        self,
        txs: Sequence[Transaction],
        recs: Sequence[RawRecord],
        indexes: Sequence[int] | None = None,
    ) -> CustomerResult:
        """Update the customers' windows and enrich ``txs`` (valid, with their records)."""
        result = CustomerResult()
        if not txs:
            return result
        n = len(txs)
        batch = KeyedBatch([r.partition for r in recs], [tx.customer_id for tx in txs])
        ts = np.fromiter((tx.event_time_ms for tx in txs), dtype=np.int64, count=n)
        amount = np.fromiter((tx.amount_minor for tx in txs), dtype=np.int64, count=n)
        terminal = np.fromiter((terminal_hash(tx.terminal_id) for tx in txs), np.int64, n)
        lat = np.fromiter(
            (tx.latitude if tx.HasField("latitude") else np.nan for tx in txs), np.float64, n
        )
        lon = np.fromiter(
            (tx.longitude if tx.HasField("longitude") else np.nan for tx in txs), np.float64, n
        )
        offset = np.fromiter((tx.utc_offset_minutes for tx in txs), dtype=np.int64, count=n)
        scale = np.fromiter((10.0 ** exponent(tx.currency) for tx in txs), np.float64, n)
        counts, sums, extras, new_states = update_customers(
            batch.load(self.store), batch.group, ts, amount, terminal, lat, lon, self.config
        )
        batch.save(self.store, new_states)
        major = amount / scale
        averages = (sums / counts) / scale[:, None]
        windows = np.empty((n, 2 * counts.shape[1]), dtype=np.float64)
        windows[:, 0::2] = counts
        windows[:, 1::2] = averages
        features = np.hstack(
            [
                major[:, None],
                time_features(ts, offset),
                windows,
                amount_ratios(major, averages),
                extras,
            ]
        )
        assert features.shape[1] == N_CUSTOMER
        result.columns = Enriched(
            list(txs),
            features,
            [rec.timestamp_ms for rec in recs],
            [rec.topic for rec in recs],
            [rec.partition for rec in recs],
            [rec.offset for rec in recs],
            list(indexes) if indexes is not None else [0] * n,
        )
        return result
