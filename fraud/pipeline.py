"""The hot path as a pure function of a micro-batch: decode, window state, kernels, decide.

``Detector.process`` takes the raw Kafka records of one batch and returns the Decisions,
Alerts and DeadLetters to emit. It reads and writes each touched customer's window state once
per batch through a ``StateStore`` and makes one kernel call per batch. No Kafka, no Faust, no
wall clock but the injected one: the same code runs in the worker and in the unit tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fraud.contracts import Rejected, dead_letter, parse_transaction
from fraud.currency import exponent
from fraud.features import FEATURES, customer_features
from fraud.kernels.decide import ALLOW, BLOCK, score_and_decide
from fraud.settings import Settings
from fraud.state import StateStore
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Action, Decision, Reason
from fraud.v1.transaction_pb2 import Transaction
from fraud.windows import WindowConfig, update_windows

RULE_AMOUNT = "AMOUNT_OVER_THRESHOLD"
RULES_VERSION = "builtin-1"
MODEL_VERSION = "heuristic-1"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as the agent received it."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True)
class DetectorConfig:
    amount_threshold: float = 220.0
    review_score: float = 0.9
    block_score: float = 0.999
    max_future_ms: int = 2 * 86_400_000
    window: WindowConfig = field(default_factory=WindowConfig)

    @classmethod
    def from_settings(cls, settings: Settings) -> DetectorConfig:
        return cls(
            amount_threshold=settings.amount_threshold,
            max_future_ms=settings.max_future_ms,
            window=WindowConfig(allowed_lateness_ms=settings.allowed_lateness_ms),
        )


@dataclass
class BatchResult:
    decisions: list[Decision] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def alert_for(decision: Decision, now_ms: int) -> Alert:
    kind = Action.Name(decision.action).lower()
    return Alert(
        alert_id=f"{decision.transaction_id}/{kind}",
        type=f"fraud.{kind}",
        decision=decision,
        created_at_ms=now_ms,
    )


class Detector:
    """Turns micro-batches of raw records into decisions, with state in a StateStore."""

    def __init__(self, config: DetectorConfig, store: StateStore, clock: Callable[[], int]) -> None:
        self.config = config
        self.store = store
        self.clock = clock  # wall-clock milliseconds

    def _parse(
        self, records: Sequence[RawRecord], now_ms: int, result: BatchResult
    ) -> tuple[list[Transaction], list[RawRecord]]:
        txs: list[Transaction] = []
        kept: list[RawRecord] = []
        for rec in records:
            parsed = parse_transaction(rec.value, now_ms, self.config.max_future_ms)
            if not isinstance(parsed, Rejected) and rec.key != parsed.customer_id.encode():
                parsed = Rejected(
                    "wrong_key",
                    f"record key {rec.key!r} is not the customer_id "
                    f"{parsed.customer_id!r}; key transactions by customer so that one "
                    "customer's transactions share a partition",
                )
            if isinstance(parsed, Rejected):
                result.dead_letters.append(
                    dead_letter(
                        parsed,
                        topic=rec.topic,
                        partition=rec.partition,
                        offset=rec.offset,
                        key=rec.key,
                        payload=rec.value,
                        now_ms=now_ms,
                    )
                )
            else:
                txs.append(parsed)
                kept.append(rec)
        return txs, kept

    def _windows(
        self, txs: list[Transaction], recs: list[RawRecord]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Update each touched customer's state once; return per-transaction counts and sums."""
        slots: dict[tuple[int, str], int] = {}
        group = np.empty(len(txs), dtype=np.int64)
        for i, (tx, rec) in enumerate(zip(txs, recs, strict=True)):
            group[i] = slots.setdefault((rec.partition, tx.customer_id), len(slots))
        by_partition: dict[int, list[tuple[int, bytes]]] = {}
        for (partition, customer), slot in slots.items():
            by_partition.setdefault(partition, []).append((slot, customer.encode()))
        states: list[bytes | None] = [None] * len(slots)
        for partition, members in by_partition.items():
            values = self.store.get_many(partition, [key for _, key in members])
            for (slot, _), value in zip(members, values, strict=True):
                states[slot] = value
        ts = np.fromiter((tx.event_time_ms for tx in txs), dtype=np.int64, count=len(txs))
        amount = np.fromiter((tx.amount_minor for tx in txs), dtype=np.int64, count=len(txs))
        counts, sums, new_states = update_windows(states, group, ts, amount, self.config.window)
        for partition, members in by_partition.items():
            self.store.put_many(partition, [(key, new_states[slot]) for slot, key in members])
        return counts, sums

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        result = BatchResult()
        txs, recs = self._parse(records, self.clock(), result)
        if not txs:
            return result
        counts, sums = self._windows(txs, recs)
        amount = np.fromiter((tx.amount_minor for tx in txs), dtype=np.int64, count=len(txs))
        scale = np.fromiter(
            (10.0 ** exponent(tx.currency) for tx in txs), dtype=np.float64, count=len(txs)
        )
        features = customer_features(amount, scale, counts, sums)
        n = len(txs)
        score = np.empty(n, dtype=np.float64)
        action = np.empty(n, dtype=np.int64)
        rule_amount = np.empty(n, dtype=np.bool_)
        cfg = self.config
        score_and_decide(
            features,
            cfg.amount_threshold,
            cfg.review_score,
            cfg.block_score,
            score,
            action,
            rule_amount,
        )
        now_ms = self.clock()
        rows = features.tolist()
        for i, (tx, rec) in enumerate(zip(txs, recs, strict=True)):
            decision = Decision(
                transaction_id=tx.transaction_id,
                customer_id=tx.customer_id,
                terminal_id=tx.terminal_id,
                amount_minor=tx.amount_minor,
                currency=tx.currency,
                event_time_ms=tx.event_time_ms,
                action=int(action[i]),  # type: ignore[arg-type]
                score=float(score[i]),
                features=dict(zip(FEATURES, rows[i], strict=True)),
                rules_version=RULES_VERSION,
                model_version=MODEL_VERSION,
                ingested_at_ms=rec.timestamp_ms,
                decided_at_ms=now_ms,
                source_topic=rec.topic,
                source_partition=rec.partition,
                source_offset=rec.offset,
            )
            if rule_amount[i]:
                decision.rules_fired.append(RULE_AMOUNT)
                decision.reasons.append(
                    Reason(code=RULE_AMOUNT, feature="amount", value=rows[i][0])
                )
            if action[i] == BLOCK or (action[i] != ALLOW and not rule_amount[i]):
                decision.reasons.append(
                    Reason(code="SCORE", feature="score", value=float(score[i]))
                )
            result.decisions.append(decision)
            if action[i] != ALLOW:
                result.alerts.append(alert_for(decision, now_ms))
        return result


def warmup() -> None:
    """Compile or load every kernel of the hot path before the first transaction."""
    from fraud.windows import warmup as warm_windows

    warm_windows()
    features = np.ones((1, len(FEATURES)), dtype=np.float64)
    score_and_decide(
        features,
        220.0,
        0.9,
        0.999,
        np.empty(1),
        np.empty(1, dtype=np.int64),
        np.empty(1, dtype=np.bool_),
    )
