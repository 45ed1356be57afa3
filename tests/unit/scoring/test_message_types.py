"""The ``fraud.contract`` header names each record's protobuf type: a record of a type its topic
does not take becomes a ``wrong_type`` dead letter, whatever its bytes would decode as; a record
without the header is taken as the topic's default type when it holds no field that type lacks."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from fraud.contracts.dead_letter import dead_letter_headers
from fraud.contracts.partitioning import (
    ALERT,
    CONTRACT_HEADER,
    DEAD_LETTER,
    DECISION,
    ENRICHED_BATCH,
    ENRICHED_TRANSACTION,
    LABEL,
    TRANSACTION,
    TRANSACTION_BATCH,
    contract_of,
    type_headers,
)
from fraud.contracts.records import RawRecord
from fraud.contracts.units import DAY_MS, HOUR_MS, NO_TIME
from fraud.contracts.wire import (
    BY_TERMINAL_TAKE,
    LABELS_TAKE,
    TRANSACTIONS_TAKE,
    check_type,
    decode_transaction,
)
from fraud.metrics import WorkerMetrics
from fraud.scoring.customer_stage import CustomerStage
from fraud.scoring.policy import Policy
from fraud.scoring.terminal_stage import TerminalStage
from fraud.settings import Settings
from fraud.testing import FakeClock
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Action, Decision
from fraud.v1.enriched_pb2 import EnrichedBatch, EnrichedTransaction
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction
from fraud.windows.store import InMemoryStore
from fraud.worker.loop import Outputs
from tests.unit.scoring.test_stages_units import START_MS, by_terminal, policy, tx_of
from tests.unit.worker.test_loop import FakeEmitter

__all__ = ["policy"]  # the fixture, used by name

T = START_MS + DAY_MS


def a_decision(tx_id: str = "d1") -> Decision:
    """A decision whose bytes happen to decode as a valid Transaction (field numbers overlap)."""
    return Decision(
        transaction_id=tx_id,
        customer_id="alice",
        terminal_id="T1",
        amount_minor=500,
        currency="EUR",
        event_time_ms=T,
        action=Action.BLOCK,
        score=0.9,
    )


def test_the_header_values_are_the_protobuf_full_names() -> None:
    assert TRANSACTION == b"fraud.v1.Transaction"
    assert TRANSACTION_BATCH == b"fraud.v1.TransactionBatch"
    assert LABEL == b"fraud.v1.Label"
    assert DECISION == b"fraud.v1.Decision"
    assert ALERT == b"fraud.v1.Alert"
    assert DEAD_LETTER == b"fraud.v1.DeadLetter"
    assert ENRICHED_TRANSACTION == b"fraud.v1.EnrichedTransaction"
    assert ENRICHED_BATCH == b"fraud.v1.EnrichedBatch"
    assert contract_of(type_headers(LABEL)) == LABEL


@pytest.mark.parametrize(
    ("contract", "takes", "refused"),
    [
        (None, TRANSACTIONS_TAKE, False),
        (TRANSACTION, TRANSACTIONS_TAKE, False),
        (TRANSACTION_BATCH, TRANSACTIONS_TAKE, False),
        (DECISION, TRANSACTIONS_TAKE, True),
        (LABEL, TRANSACTIONS_TAKE, True),
        (b"\xff\xfe", TRANSACTIONS_TAKE, True),
        (None, LABELS_TAKE, False),
        (LABEL, LABELS_TAKE, False),
        (TRANSACTION, LABELS_TAKE, True),
        (ENRICHED_BATCH, BY_TERMINAL_TAKE, False),
        (ENRICHED_TRANSACTION, BY_TERMINAL_TAKE, False),
        (TRANSACTION_BATCH, BY_TERMINAL_TAKE, True),
    ],
)
def test_check_type(contract: bytes | None, takes: tuple[bytes, ...], refused: bool) -> None:
    rejected = check_type(contract, takes)
    assert (rejected is not None) == refused
    if rejected is not None:
        assert rejected.reason == "wrong_type"
        assert CONTRACT_HEADER in rejected.detail
        assert contract is not None and contract.decode("utf-8", "replace") in rejected.detail


def test_a_decision_on_the_transactions_topic_is_a_wrong_type_dead_letter() -> None:
    decision = a_decision().SerializeToString()
    assert isinstance(decode_transaction(decision), Transaction)  # why the header is needed
    stage = CustomerStage(InMemoryStore(), FakeClock(T + HOUR_MS))
    first, last = (tx_of("alice", tx_id, 100, T).SerializeToString() for tx_id in ("a1", "a2"))
    records = [
        RawRecord(b"alice", first, "transactions", 0, 1, 0, TRANSACTION),
        RawRecord(b"alice", decision, "transactions", 0, 2, 0, DECISION),
        RawRecord(b"alice", last, "transactions", 0, 3, 0),  # no header: a Transaction
    ]
    result = stage.process(records)
    assert [e.transaction.transaction_id for e in result.enriched] == ["a1", "a2"]
    [letter] = result.dead_letters
    assert (letter.reason, letter.source_offset, letter.payload) == ("wrong_type", 2, decision)
    assert "fraud.v1.Decision" in letter.detail


def test_a_headerless_decision_with_foreign_fields_is_a_wrong_type_dead_letter() -> None:
    # What the worker sends, without a score: its bytes are a valid Transaction but for the
    # features (field 9, where a Transaction has a double) and the fields after 10.
    decision = a_decision("d2")
    decision.ClearField("score")
    decision.features["count"] = 1.0
    decision.decided_at_ms = T
    value = decision.SerializeToString()
    stage = CustomerStage(InMemoryStore(), FakeClock(T + HOUR_MS))
    extra = tx_of("alice", "a1", 100, T).SerializeToString() + b"\x58\x01"  # field 11
    records = [
        RawRecord(b"alice", value, "transactions", 0, 1, 0),
        RawRecord(b"alice", extra, "transactions", 0, 2, 0, TRANSACTION),  # named: kept
        RawRecord(b"alice", extra, "transactions", 0, 3, 0),
    ]
    result = stage.process(records)
    assert [e.transaction.transaction_id for e in result.enriched] == ["a1"]
    assert [(dl.reason, dl.source_offset) for dl in result.dead_letters] == [
        ("wrong_type", 1),
        ("wrong_type", 3),
    ]
    assert "fields 9 (of another wire type), 15 are not in" in result.dead_letters[0].detail


def test_the_label_stage_takes_labels_only(policy: Policy) -> None:
    stage = TerminalStage(InMemoryStore(), FakeClock(T), policy)
    label = Label(transaction_id="a1", terminal_id="T1", fraud=True, event_time_ms=T)
    value = label.SerializeToString()
    records = [
        RawRecord(b"T1", value, "labels", 0, 0, 0, LABEL),
        RawRecord(b"T1", value, "labels", 0, 1, 0),
        RawRecord(b"T1", value, "labels", 0, 2, 0, TRANSACTION),
        # no header, but a Transaction's fields 7 and 10 (a Label has six)
        RawRecord(b"T1", value + b"\x38\x02\x52\x01d", "labels", 0, 3, 0),
    ]
    result = stage.apply_labels(records)
    assert result.labels_applied == 2
    assert [(dl.reason, dl.source_offset) for dl in result.dead_letters] == [
        ("wrong_type", 2),
        ("wrong_type", 3),
    ]
    assert "fields 7, 10 are not in fraud.v1.Label" in result.dead_letters[1].detail
    assert result.label_times == [T, T, NO_TIME, NO_TIME]  # the refused move no watermark


def test_the_terminal_stage_takes_enriched_records_only(policy: Policy) -> None:
    clock = FakeClock(T + HOUR_MS)
    tx = tx_of("alice", "a1", 100, T).SerializeToString()
    customers = CustomerStage(InMemoryStore(), clock)
    enriched = customers.process([RawRecord(b"alice", tx, "transactions", 0, 0, 0)]).enriched
    [one] = by_terminal(enriched)
    batch = EnrichedBatch(items=enriched).SerializeToString()
    records = [
        RawRecord(one.key, one.value, "by-terminal", 0, 0, 0, ENRICHED_TRANSACTION),
        RawRecord(None, batch, "by-terminal", 0, 1, 0, ENRICHED_BATCH),
        RawRecord(None, batch, "by-terminal", 0, 2, 0, TRANSACTION_BATCH),
    ]
    result = TerminalStage(InMemoryStore(), clock, policy).process(records)
    assert len(result.decisions) == 2
    assert [(dl.reason, dl.source_offset) for dl in result.dead_letters] == [("wrong_type", 2)]
    assert EnrichedTransaction.FromString(one.value or b"").transaction.transaction_id == "a1"


def test_the_worker_names_the_type_of_its_decisions_alerts_and_dead_letters(
    policy: Policy,
) -> None:
    clock = FakeClock(T + HOUR_MS)
    big = tx_of("bob", "b1", 30_000, T)  # over 220: an alert
    enriched = CustomerStage(InMemoryStore(), clock).process(
        [RawRecord(b"bob", big.SerializeToString(), "transactions", 0, 0, 0)]
    )
    result = TerminalStage(InMemoryStore(), clock, policy).process(by_terminal(enriched.enriched))
    assert len(result.alerts) == 1
    emitter = FakeEmitter([])
    names = Settings().topic_names
    outputs = Outputs(emitter, WorkerMetrics(CollectorRegistry()), names)
    outputs.decided(result, [DeadLetter(source_topic="transactions", reason="decode_error")])
    by_topic = {s.topic: s for s in emitter.sent}
    assert set(by_topic) == {names.decisions, names.alerts, names.dead_letters}
    assert contract_of(by_topic[names.decisions].headers) == DECISION
    assert contract_of(by_topic[names.alerts].headers) == ALERT
    assert contract_of(by_topic[names.dead_letters].headers) == DEAD_LETTER
    assert Alert.FromString(by_topic[names.alerts].value).decision.transaction_id == "b1"
    assert contract_of(dead_letter_headers(DeadLetter())) == DEAD_LETTER
