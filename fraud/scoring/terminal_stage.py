"""The terminal stage, a pure function of micro-batches (no Kafka, no Faust).

Inputs: the by-terminal repartition topic and ``labels``, both keyed by terminal. It applies
fraud labels to the terminals' state, computes the terminal features, then evaluates the
decision table and the model over the full feature vector and decides: each ``Decision`` as
bytes (``fraud.contracts.decision_bytes``), with the alerts of those that are not ALLOW.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fraud.contracts.decision_bytes import FeatureMapEncoder, ModelReasonEncoder, top_reason_indexes
from fraud.contracts.records import RawRecord, alert_for
from fraud.contracts.units import ALL_FEATURES, NO_TIME
from fraud.contracts.wire import LABELS_TAKE, Rejected, check_type, parse_label
from fraud.kernels.actions import ALLOW, BLOCK, REVIEW
from fraud.model.scoring import score
from fraud.model.table import ModelTable
from fraud.rules.compiled import apply_rules, fired_ids
from fraud.scoring.batch import Enriched, decode_enriched, reject
from fraud.scoring.policy import Policy
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import INCOMPLETE_ALIGNMENT, INCOMPLETE_LABELS, Decision, Reason
from fraud.v1.enriched_pb2 import SourceMark
from fraud.v1.label_pb2 import Label
from fraud.windows.keyed import KeyedBatch
from fraud.windows.store import StateStore
from fraud.windows.terminal import TerminalConfig, risk, tx_hash, update_terminals

__all__ = ["TOP_REASONS", "TerminalResult", "TerminalStage"]

# Model reasons per decision: the features that pushed the score up most.
TOP_REASONS = 3


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
    # Decisions made without an input, by input ("labels", "alignment"): Decision.incomplete.
    incomplete: dict[str, int] = field(default_factory=lambda: {"labels": 0, "alignment": 0})

    @property
    def decisions(self) -> list[Decision]:
        return [Decision.FromString(b) for b in self.encoded]


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
            wrong = check_type(rec.contract, LABELS_TAKE)
            if wrong is not None:
                result.dead_letters.append(reject(rec, wrong, now_ms))
                continue
            label = parse_label(rec.value, rec.contract)
            if isinstance(label, Rejected):
                result.dead_letters.append(reject(rec, label, now_ms))
                continue
            labels.append(label)
            parts.append(rec.partition)
            times[i] = label.event_time_ms
        if not labels:
            return result
        self._update(
            parts,
            [(lab.terminal_id, lab.event_time_ms, lab.transaction_id) for lab in labels],
            fraud=np.fromiter((1 if lab.fraud else 0 for lab in labels), np.int8, len(labels)),
        )
        result.labels_applied = len(labels)
        return result

    def process(self, records: Sequence[RawRecord]) -> TerminalResult:
        enriched, parts, dead = self.decode(records)
        result = self.process_enriched(enriched, parts)
        result.dead_letters[:0] = dead
        return result

    def decode(
        self, records: Sequence[RawRecord], marks: list[Sequence[SourceMark]] | None = None
    ) -> tuple[Enriched, list[int], list[DeadLetter]]:
        """Decoded repartitioned transactions and the partition each came from; the rest as
        dead letters (``fraud.scoring.batch.decode_enriched``); source marks into ``marks``."""
        return decode_enriched(records, self.clock(), marks)

    def process_enriched(
        self,
        enriched: Enriched,
        parts: Sequence[int],
        labels_incomplete: Sequence[bool] = (),
    ) -> TerminalResult:
        """Terminal features, rules, model and decision; ``parts[i]`` is the partition of the
        i-th transaction's terminal (its key's partition of the terminal table), and
        ``labels_incomplete[i]`` (empty: all False) says it is decided before every label up to
        its time was applied. Such rows, and those the alignment released early, say so in
        ``Decision.incomplete``."""
        result = TerminalResult()
        if not len(enriched):
            return result
        txs = enriched.txs
        n = len(txs)
        counts, frauds = self._update(
            parts, [(tx.terminal_id, tx.event_time_ms, tx.transaction_id) for tx in txs]
        )
        terminal = np.empty((n, 2 * counts.shape[1]), dtype=np.float64)
        terminal[:, 0::2] = counts
        terminal[:, 1::2] = risk(counts, frauds)
        features = np.hstack([enriched.features, terminal])
        self._decide(enriched, features, result, labels_incomplete)
        return result

    def _update(
        self,
        parts: Sequence[int],
        events: Sequence[tuple[str, int, str]],
        fraud: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run ``(terminal_id, event_time_ms, transaction_id)`` events through their terminals'
        state (``parts[i]`` the partition of event i's terminal) and save it: labels when
        ``fraud`` (0/1 per event) is given, else transactions. Returns their windows' counts and
        frauds."""
        n = len(events)
        batch = KeyedBatch(parts, [terminal_id for terminal_id, _, _ in events])
        kind = np.zeros(n, dtype=np.int8) if fraud is None else np.ones(n, dtype=np.int8)
        counts, frauds, new_states = update_terminals(
            batch.load(self.store),
            batch.group,
            kind,
            np.fromiter((t for _, t, _ in events), np.int64, n),
            np.fromiter((tx_hash(tx_id) for _, _, tx_id in events), np.int64, n),
            np.zeros(n, dtype=np.int8) if fraud is None else fraud,
            self.config,
        )
        batch.save(self.store, new_states)
        return counts, frauds

    def _decide(
        self,
        enriched: Enriched,
        features: np.ndarray,
        result: TerminalResult,
        labels_incomplete: Sequence[bool],
    ) -> None:
        """Rules, model and action per row; each Decision encoded as bytes
        (fraud.contracts.decision_bytes) and decoded again only for the alerts."""
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
            if labels_incomplete and labels_incomplete[i]:
                decision.incomplete.append(INCOMPLETE_LABELS)
                result.incomplete["labels"] += 1
            if enriched.incomplete_alignment and enriched.incomplete_alignment[i]:
                decision.incomplete.append(INCOMPLETE_ALIGNMENT)
                result.incomplete["alignment"] += 1
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
