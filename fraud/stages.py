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

from fraud.batching import CONTRACT_HEADER, ENRICHED_BATCH, TRANSACTION_BATCH, partition_for
from fraud.contracts import Rejected, dead_letter, parse_transaction, validate_transaction
from fraud.currency import exponent
from fraud.customer import CustomerConfig, terminal_hash, update_customers
from fraud.features import (
    ALL_FEATURES,
    CUSTOMER_STAGE_FEATURES,
    amount_ratios,
    time_features,
)
from fraud.kernels.actions import ALLOW, BLOCK, REVIEW
from fraud.keyed import KeyedBatch
from fraud.model.scoring import score, top_reasons
from fraud.model.table import ModelTable
from fraud.pipeline import RawRecord, alert_for
from fraud.rules.compiled import CompiledRules, apply_rules, fired_ids
from fraud.state import StateStore
from fraud.terminal import TerminalConfig, risk, tx_hash, update_terminals
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Decision, Reason
from fraud.v1.enriched_pb2 import EnrichedBatch, EnrichedTransaction
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction, TransactionBatch

N_CUSTOMER = len(CUSTOMER_STAGE_FEATURES)
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
class CustomerResult:
    enriched: list[EnrichedTransaction] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass
class TerminalResult:
    decisions: list[Decision] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    labels_applied: int = 0
    # apply_labels: event time of each input record, in order (NO_TIME when refused).
    label_times: list[int] = field(default_factory=list)


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
                    "each customer_id (fraud.batching)",
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
        index = indexes if indexes is not None else [0] * n
        for tx, rec, i, row in zip(txs, recs, index, features.tolist(), strict=True):
            result.enriched.append(
                EnrichedTransaction(
                    transaction=tx,
                    customer_features=row,
                    ingested_at_ms=rec.timestamp_ms,
                    source_topic=rec.topic,
                    source_partition=rec.partition,
                    source_offset=rec.offset,
                    source_index=i,
                )
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
        items, dead = self.decode(records)
        result = self.process_decoded(items)
        result.dead_letters[:0] = dead
        return result

    def decode(
        self, records: Sequence[RawRecord]
    ) -> tuple[list[tuple[EnrichedTransaction, int]], list[DeadLetter]]:
        """Decoded repartitioned transactions with their partition; the rest as dead letters."""
        items: list[tuple[EnrichedTransaction, int]] = []
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
                items.append((item, rec.partition))
        return items, dead

    def process_decoded(self, decoded: Sequence[tuple[EnrichedTransaction, int]]) -> TerminalResult:
        """Terminal features, rules, model and decision for decoded transactions."""
        result = TerminalResult()
        if not decoded:
            return result
        items = [item for item, _ in decoded]
        parts = [partition for _, partition in decoded]
        n = len(items)
        txs = [item.transaction for item in items]
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
        customer = np.array([list(item.customer_features) for item in items], dtype=np.float64)
        features = np.hstack([customer, terminal])
        self._decide(items, features, result)
        return result

    def _decide(
        self, items: list[EnrichedTransaction], features: np.ndarray, result: TerminalResult
    ) -> None:
        policy = self.policy
        fired, rule_action = apply_rules(policy.rules, features)
        n = len(items)
        model_input = features[:, list(policy.model_columns)]
        if policy.model is not None:
            scores, contrib = score(policy.model, model_input)
        else:
            scores, contrib = np.zeros(n), None
        action = rule_action.astype(np.int64)
        action = np.where(scores >= policy.review_score, np.maximum(action, REVIEW), action)
        action = np.where(scores >= policy.block_score, BLOCK, action)
        now_ms = self.clock()
        rows = features.tolist()
        for i, item in enumerate(items):
            tx = item.transaction
            decision = Decision(
                transaction_id=tx.transaction_id,
                customer_id=tx.customer_id,
                terminal_id=tx.terminal_id,
                amount_minor=tx.amount_minor,
                currency=tx.currency,
                event_time_ms=tx.event_time_ms,
                action=int(action[i]),  # type: ignore[arg-type]
                score=float(scores[i]),
                features=dict(zip(ALL_FEATURES, rows[i], strict=True)),
                rules_fired=fired_ids(policy.rules, fired[i]),
                rules_version=policy.rules_version,
                model_version=policy.model_version,
                ingested_at_ms=item.ingested_at_ms,
                decided_at_ms=now_ms,
                source_topic=item.source_topic,
                source_partition=item.source_partition,
                source_offset=item.source_offset,
                source_index=item.source_index,
            )
            for rule_id in decision.rules_fired:
                decision.reasons.append(Reason(code=f"RULE:{rule_id}"))
            if policy.model is not None and contrib is not None:
                for name, value, contribution in top_reasons(
                    policy.model, model_input[i], contrib[i], k=3
                ):
                    decision.reasons.append(
                        Reason(code="MODEL", feature=name, value=value, contribution=contribution)
                    )
            result.decisions.append(decision)
            if action[i] != ALLOW:
                result.alerts.append(alert_for(decision, now_ms))
