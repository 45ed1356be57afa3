"""The two stages of the worker as pure functions of micro-batches.

Customer stage (input: ``transactions``, keyed by customer): decode and validate, update each
customer's window state, compute the customer-side features, and pass an
``EnrichedTransaction`` on, keyed by terminal. Terminal stage (inputs: the by-terminal
repartition topic and ``labels``, both keyed by terminal): apply fraud labels, compute the
terminal features from the terminal's state, then evaluate the decision table and the model
over the full feature vector and decide. Neither stage knows about Kafka or Faust.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from fraud.contracts.currency import exponent
from fraud.contracts.decision_bytes import FeatureMapEncoder, ModelReasonEncoder, top_reason_indexes
from fraud.contracts.partitioning import (
    CONTRACT_HEADER,
    ENRICHED_BATCH,
    TRANSACTION_BATCH,
    partition_for,
)
from fraud.contracts.records import RawRecord, alert_for
from fraud.contracts.units import ALL_FEATURES, CUSTOMER_STAGE_FEATURES
from fraud.contracts.wire import Rejected, dead_letter, parse_transaction, validate_transaction
from fraud.kernels.actions import ALLOW, BLOCK, REVIEW
from fraud.model.scoring import score
from fraud.model.table import ModelTable
from fraud.rules.compiled import CompiledRules, apply_rules, fired_ids
from fraud.scoring.features import amount_ratios, time_features
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Decision, Reason
from fraud.v1.enriched_pb2 import EnrichedBatch, EnrichedTransaction
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction, TransactionBatch
from fraud.windows.customer import CustomerConfig, terminal_hash, update_customers
from fraud.windows.keyed import KeyedBatch
from fraud.windows.store import StateStore
from fraud.windows.terminal import TerminalConfig, risk, tx_hash, update_terminals

N_CUSTOMER = len(CUSTOMER_STAGE_FEATURES)
# Model reasons per decision: the features that pushed the score up most.
TOP_REASONS = 3
NO_TIME = -(2**63)


@dataclass(frozen=True)
class Policy:
    """What decides: a compiled decision table and an optional model, swapped as one value."""

    rules: CompiledRules
    model: ModelTable | None = None
    # Columns of the full feature matrix that the model reads, in the model's order.
    model_columns: tuple[int, ...] = ()
    review_score: float = 0.5
    block_score: float = 0.9

    @property
    def rules_version(self) -> str:
        return self.rules.version

    @property
    def model_version(self) -> str:
        return self.model.version if self.model is not None else ""


@dataclass
class Enriched:
    """Valid transactions with their customer-stage features, as columns: what the customer
    stage hands to the terminal stage, in one process or (as ``EnrichedTransaction`` messages)
    over the repartition topic."""

    txs: list[Transaction] = field(default_factory=list)
    # (n, N_CUSTOMER), in the order of fraud.scoring.features.CUSTOMER_STAGE_FEATURES.
    features: np.ndarray = field(default_factory=lambda: np.empty((0, N_CUSTOMER)))
    ingested_at_ms: list[int] = field(default_factory=list)
    source_topics: list[str] = field(default_factory=list)
    source_partitions: list[int] = field(default_factory=list)
    source_offsets: list[int] = field(default_factory=list)
    source_indexes: list[int] = field(default_factory=list)

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
            )
            for tx, row, ingested, topic, partition, offset, index in zip(
                self.txs,
                self.features.tolist(),
                self.ingested_at_ms,
                self.source_topics,
                self.source_partitions,
                self.source_offsets,
                self.source_indexes,
                strict=True,
            )
        ]

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
        )


@dataclass
class CustomerResult:
    columns: Enriched = field(default_factory=Enriched)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def enriched(self) -> list[EnrichedTransaction]:
        """The transactions as the repartition topic's messages."""
        return self.columns.messages()


@dataclass
class TerminalResult:
    # One Decision per transaction, encoded, with its record key (customer_id), event time and
    # ingest time (Kafka timestamp) in the same order; ``decisions`` decodes them.
    encoded: list[bytes] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    event_times: list[int] = field(default_factory=list)
    ingested: list[int] = field(default_factory=list)
    action_counts: dict[int, int] = field(default_factory=dict)
    decided_at_ms: int = 0
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    labels_applied: int = 0
    # apply_labels: event time of each input record, in order (NO_TIME when refused).
    label_times: list[int] = field(default_factory=list)

    @property
    def decisions(self) -> list[Decision]:
        return [Decision.FromString(b) for b in self.encoded]


def _reject(rec: RawRecord, rejected: Rejected, now_ms: int) -> DeadLetter:
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
        if rec.contract == TRANSACTION_BATCH:
            _parse_batch(rec, now_ms, max_future_ms, dead, partitions, out)
            continue
        if rec.contract is not None:
            rejected = Rejected(
                "unknown_contract", f"header {CONTRACT_HEADER}={rec.contract!r} is not known"
            )
            dead.append(_reject(rec, rejected, now_ms))
            continue
        parsed = parse_transaction(rec.value, now_ms, max_future_ms)
        if not isinstance(parsed, Rejected) and rec.key != parsed.customer_id.encode():
            parsed = Rejected(
                "wrong_key",
                f"record key {rec.key!r} is not the customer_id {parsed.customer_id!r}; key "
                "transactions by customer so that one customer's transactions share a partition",
            )
        if isinstance(parsed, Rejected):
            dead.append(_reject(rec, parsed, now_ms))
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
    batch = TransactionBatch()
    try:
        batch.ParseFromString(rec.value or b"")
    except DecodeError as exc:
        dead.append(
            _reject(rec, Rejected("decode_error", f"not a TransactionBatch: {exc}"), now_ms)
        )
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
            letter = _reject(
                rec, Rejected(rejected.reason, f"item {index}: {rejected.detail}"), now_ms
            )
            letter.key = tx.customer_id.encode()
            letter.payload = tx.SerializeToString()
            dead.append(letter)
            continue
        out.txs.append(tx)
        out.recs.append(rec)
        out.indexes.append(index)


class CustomerStage:
    def __init__(
        self,
        store: StateStore,
        clock: Callable[[], int],
        config: CustomerConfig | None = None,
        max_future_ms: int = 2 * 86_400_000,
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


class TerminalStage:
    def __init__(
        self,
        store: StateStore,
        clock: Callable[[], int],
        policy: Policy,
        config: TerminalConfig | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.policy = policy
        self.config = config or TerminalConfig()
        self._feature_map = FeatureMapEncoder(ALL_FEATURES)
        self._reasons_for: ModelTable | None = None
        self._reason_encoder = ModelReasonEncoder(())

    def apply_labels(self, records: Sequence[RawRecord]) -> TerminalResult:
        """Record fraud labels in their terminal's state (idempotent; order-insensitive)."""
        result = TerminalResult()
        labels: list[Label] = []
        parts: list[int] = []
        result.label_times = times = [NO_TIME] * len(records)
        now_ms = self.clock()
        for i, rec in enumerate(records):
            label = Label()
            try:
                label.ParseFromString(rec.value or b"")
            except DecodeError as exc:
                result.dead_letters.append(
                    _reject(rec, Rejected("decode_error", f"not a fraud.v1.Label: {exc}"), now_ms)
                )
                continue
            if not label.transaction_id or not label.terminal_id or label.event_time_ms <= 0:
                result.dead_letters.append(
                    _reject(
                        rec,
                        Rejected(
                            "invalid_label",
                            "label needs transaction_id, terminal_id, event_time_ms",
                        ),
                        now_ms,
                    )
                )
                continue
            labels.append(label)
            parts.append(rec.partition)
            times[i] = label.event_time_ms
        if not labels:
            return result
        n = len(labels)
        batch = KeyedBatch(parts, [lab.terminal_id for lab in labels])
        _, _, new_states = update_terminals(
            batch.load(self.store),
            batch.group,
            np.ones(n, dtype=np.int8),
            np.fromiter((lab.event_time_ms for lab in labels), np.int64, n),
            np.fromiter((tx_hash(lab.transaction_id) for lab in labels), np.int64, n),
            np.fromiter((1 if lab.fraud else 0 for lab in labels), np.int8, n),
            self.config,
        )
        batch.save(self.store, new_states)
        result.labels_applied = n
        return result

    def process(self, records: Sequence[RawRecord]) -> TerminalResult:
        enriched, parts, dead = self.decode(records)
        result = self.process_enriched(enriched, parts)
        result.dead_letters[:0] = dead
        return result

    def decode(self, records: Sequence[RawRecord]) -> tuple[Enriched, list[int], list[DeadLetter]]:
        """Decoded repartitioned transactions and the partition each came from; the rest as
        dead letters."""
        items: list[EnrichedTransaction] = []
        parts: list[int] = []
        dead: list[DeadLetter] = []
        now_ms = self.clock()
        for rec in records:
            batch = rec.contract == ENRICHED_BATCH
            try:
                if batch:
                    received = list(EnrichedBatch.FromString(rec.value or b"").items)
                else:
                    received = [EnrichedTransaction.FromString(rec.value or b"")]
            except DecodeError as exc:
                dead.append(
                    _reject(
                        rec, Rejected("decode_error", f"bad EnrichedTransaction: {exc}"), now_ms
                    )
                )
                continue
            for item in received:
                if len(item.customer_features) != N_CUSTOMER:
                    dead.append(
                        _reject(
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

    def process_enriched(self, enriched: Enriched, parts: Sequence[int]) -> TerminalResult:
        """Terminal features, rules, model and decision; ``parts[i]`` is the partition of the
        i-th transaction's terminal (its key's partition of the terminal table)."""
        result = TerminalResult()
        if not len(enriched):
            return result
        txs = enriched.txs
        n = len(txs)
        batch = KeyedBatch(parts, [tx.terminal_id for tx in txs])
        counts, frauds, new_states = update_terminals(
            batch.load(self.store),
            batch.group,
            np.zeros(n, dtype=np.int8),
            np.fromiter((tx.event_time_ms for tx in txs), np.int64, n),
            np.fromiter((tx_hash(tx.transaction_id) for tx in txs), np.int64, n),
            np.zeros(n, dtype=np.int8),
            self.config,
        )
        batch.save(self.store, new_states)
        terminal = np.empty((n, 2 * counts.shape[1]), dtype=np.float64)
        terminal[:, 0::2] = counts
        terminal[:, 1::2] = risk(counts, frauds)
        features = np.hstack([enriched.features, terminal])
        self._decide(enriched, features, result)
        return result

    def _decide(self, enriched: Enriched, features: np.ndarray, result: TerminalResult) -> None:
        """Rules, model and action per row; each Decision encoded as bytes
        (fraud.contracts.decision_bytes)
        and decoded again only for the alerts."""
        policy = self.policy
        fired, rule_action = apply_rules(policy.rules, features)
        n = len(enriched)
        model_input = features[:, list(policy.model_columns)]
        if policy.model is not None:
            scores, contrib = score(policy.model, model_input)
            reasons = self._model_reasons(policy.model).encode(
                model_input, contrib, top_reason_indexes(contrib, TOP_REASONS)
            )
        else:
            scores, reasons = np.zeros(n), [b""] * n
        action = rule_action.astype(np.int64)
        action = np.where(scores >= policy.review_score, np.maximum(action, REVIEW), action)
        action = np.where(scores >= policy.block_score, BLOCK, action)
        now_ms = self.clock()
        shared = Decision(
            rules_version=policy.rules_version,
            model_version=policy.model_version,
            decided_at_ms=now_ms,
        ).SerializeToString()
        feature_bytes = self._feature_map.encode(features)
        any_fired: list[bool] = np.any(fired, axis=1).tolist()
        actions: list[int] = action.tolist()
        score_list = scores.tolist()
        encoded = result.encoded
        for i, tx in enumerate(enriched.txs):
            decision = Decision(
                transaction_id=tx.transaction_id,
                customer_id=tx.customer_id,
                terminal_id=tx.terminal_id,
                amount_minor=tx.amount_minor,
                currency=tx.currency,
                event_time_ms=tx.event_time_ms,
                action=actions[i],  # type: ignore[arg-type]
                score=score_list[i],
                ingested_at_ms=enriched.ingested_at_ms[i],
                source_topic=enriched.source_topics[i],
                source_partition=enriched.source_partitions[i],
                source_offset=enriched.source_offsets[i],
                source_index=enriched.source_indexes[i],
            )
            if any_fired[i]:
                ids = fired_ids(policy.rules, fired[i])
                decision.rules_fired.extend(ids)
                decision.reasons.extend(Reason(code=f"RULE:{rule_id}") for rule_id in ids)
            encoded.append(decision.SerializeToString() + shared + feature_bytes[i] + reasons[i])
            result.keys.append(tx.customer_id.encode())
            result.event_times.append(tx.event_time_ms)
            result.ingested.append(enriched.ingested_at_ms[i])
            if actions[i] != ALLOW:
                result.alerts.append(alert_for(Decision.FromString(encoded[-1]), now_ms))
        for a in actions:
            result.action_counts[a] = result.action_counts.get(a, 0) + 1
        result.decided_at_ms = now_ms

    def _model_reasons(self, model: ModelTable) -> ModelReasonEncoder:
        if self._reasons_for is not model:
            self._reason_encoder = ModelReasonEncoder(model.feature_names)
            self._reasons_for = model
        return self._reason_encoder
