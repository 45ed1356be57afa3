"""Behaviour of the two stages on hand-built micro-batches: dead letters, state writes, batch
splits and restarts, currency scale, label and repartition checks, decisions and alerts.

The features of whole streams against the definitions are in ``tests/unit/scoring/test_stages.py``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from fraud.contracts.records import RawRecord
from fraud.contracts.units import ALL_FEATURES, CUSTOMER_STAGE_FEATURES, DAY_MS, HOUR_MS
from fraud.scoring.customer_stage import CustomerStage
from fraud.scoring.policy import Policy, load_policy
from fraud.scoring.terminal_stage import TerminalResult, TerminalStage
from fraud.settings import Settings
from fraud.testing import FakeClock, make_record, random_transactions
from fraud.v1.decision_pb2 import Action, Decision
from fraud.v1.enriched_pb2 import EnrichedTransaction
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction
from fraud.windows.store import InMemoryStore

START_MS = 1_522_540_800_000  # 2018-04-01T00:00Z (a Sunday): history replays are valid input
N_PARTITIONS = 3
GARBAGE = b"\xff\xff\xff\xff"


@pytest.fixture(scope="module")
def policy() -> Policy:
    """The default decision table (tables/rules/v1.csv), no model."""
    return load_policy(Settings().rules_path)


def partition_of(key: str) -> int:
    return zlib.crc32(key.encode()) % N_PARTITIONS


def tx_of(
    customer: str,
    tx_id: str,
    amount_minor: int,
    event_time_ms: int,
    currency: str = "EUR",
    terminal: str = "term-1",
) -> Transaction:
    return Transaction(
        transaction_id=tx_id,
        customer_id=customer,
        terminal_id=terminal,
        amount_minor=amount_minor,
        currency=currency,
        event_time_ms=event_time_ms,
    )


def to_records(txs: Sequence[Transaction]) -> list[RawRecord]:
    """Records keyed by customer, spread over partitions by hash, offsets per partition."""
    next_offset = [0] * N_PARTITIONS
    records = []
    for tx in txs:
        p = partition_of(tx.customer_id)
        records.append(make_record(tx, partition=p, offset=next_offset[p], timestamp_ms=0))
        next_offset[p] += 1
    return records


def by_terminal(enriched: Sequence[EnrichedTransaction], first_offset: int = 0) -> list[RawRecord]:
    """The repartition records the customer stage's output becomes, keyed by terminal."""
    return [
        RawRecord(
            e.transaction.terminal_id.encode(),
            e.SerializeToString(),
            "by-terminal",
            partition_of(e.transaction.terminal_id),
            first_offset + k,
            0,
        )
        for k, e in enumerate(enriched)
    ]


def label_record(label: Label, offset: int = 0, partition: int | None = None) -> RawRecord:
    p = partition_of(label.terminal_id) if partition is None else partition
    return RawRecord(label.terminal_id.encode(), label.SerializeToString(), "labels", p, offset, 0)


def features_of(enriched: EnrichedTransaction) -> dict[str, float]:
    assert len(enriched.customer_features) == len(CUSTOMER_STAGE_FEATURES)
    return dict(zip(CUSTOMER_STAGE_FEATURES, enriched.customer_features, strict=True))


def both_stages(
    customers: CustomerStage, terminals: TerminalStage, records: Sequence[RawRecord]
) -> TerminalResult:
    stage_c = customers.process(records)
    assert stage_c.dead_letters == []
    result = terminals.process(by_terminal(stage_c.enriched))
    assert result.dead_letters == []
    return result


# --- (a) bad messages become dead letters; the rest is enriched -----------------------------------


def test_bad_messages_become_dead_letters_and_the_rest_is_enriched() -> None:
    t = START_MS + 10 * DAY_MS
    clock = FakeClock(t + HOUR_MS)
    stage = CustomerStage(InMemoryStore(), clock)
    good = [
        tx_of("alice", "a1", 1000, t - 2 * HOUR_MS),
        tx_of("bob", "b1", 5000, t - HOUR_MS),
        tx_of("alice", "a2", 3000, t),
        tx_of("bob", "b2", 7000, t),
    ]
    negative = tx_of("alice", "bad-amount", -100, t)
    unknown = tx_of("alice", "bad-ccy", 100, t, currency="XYZ")
    misrouted = tx_of("bob", "wrong-key", 10_000_000, t - 30 * 60_000)
    records = [
        make_record(good[0], partition=1, offset=10, timestamp_ms=t + 1),
        RawRecord(b"alice", GARBAGE, "transactions", 1, 11, 0),
        make_record(good[1], partition=2, offset=20, timestamp_ms=t + 2),
        make_record(negative, partition=1, offset=12),
        make_record(unknown, partition=1, offset=13),
        RawRecord(b"bob", misrouted.SerializeToString(), "transactions", 2, 21, t + 3),
        RawRecord(b"carol", misrouted.SerializeToString(), "transactions", 0, 5, 0),
        make_record(good[2], partition=1, offset=14, timestamp_ms=t + 4),
        RawRecord(b"bob", None, "transactions", 2, 22, 0),
        make_record(good[3], partition=2, offset=23, timestamp_ms=t + 5),
    ]
    clock.advance(5)
    result = stage.process(records)

    expected_letters = [
        # reason, partition, offset, key, payload
        ("decode_error", 1, 11, b"alice", GARBAGE),
        ("invalid_amount", 1, 12, b"alice", negative.SerializeToString()),
        ("unknown_currency", 1, 13, b"alice", unknown.SerializeToString()),
        ("wrong_key", 0, 5, b"carol", misrouted.SerializeToString()),
        ("decode_error", 2, 22, b"bob", b""),
    ]
    got = [
        (dl.reason, dl.source_partition, dl.source_offset, dl.key, dl.payload)
        for dl in result.dead_letters
    ]
    assert got == expected_letters
    for letter in result.dead_letters:
        assert letter.source_topic == "transactions"
        assert letter.failed_at_ms == clock.now_ms
        assert letter.detail

    # the correctly keyed copy of `misrouted` is valid: it is enriched too, in input order
    valid = [good[0], good[1], misrouted, good[2], good[3]]
    valid_records = [records[i] for i in (0, 2, 5, 7, 9)]
    assert [e.transaction for e in result.enriched] == valid
    for e, rec in zip(result.enriched, valid_records, strict=True):
        assert (e.source_topic, e.source_partition, e.source_offset) == (
            rec.topic,
            rec.partition,
            rec.offset,
        )
        assert e.ingested_at_ms == rec.timestamp_ms
        assert len(e.customer_features) == len(CUSTOMER_STAGE_FEATURES)

    # by hand: alice 10 EUR then 30 EUR two hours later
    a1, b1, bw, a2, b2 = (features_of(e) for e in result.enriched)
    assert a1["amount"] == 10.0
    assert (a1["customer_nb_tx_1d"], a1["customer_avg_amount_1d"]) == (1.0, 10.0)
    assert a1["first_use_of_terminal"] == 1.0
    assert a2["amount"] == 30.0
    for days in (1, 7, 30):
        assert (a2[f"customer_nb_tx_{days}d"], a2[f"customer_avg_amount_{days}d"]) == (2.0, 20.0)
        assert a2[f"amount_to_avg_{days}d"] == pytest.approx(1.5)
    assert a2["seconds_since_prev_tx"] == 2 * 3600.0
    assert a2["first_use_of_terminal"] == 0.0
    # bob: 50 EUR, 100000 EUR half an hour later, 70 EUR half an hour after that
    assert b1["customer_nb_tx_1d"] == 1.0
    assert (bw["customer_nb_tx_1d"], bw["customer_avg_amount_1d"]) == (2.0, 50_025.0)
    assert b2["customer_nb_tx_30d"] == 3.0
    assert b2["customer_avg_amount_30d"] == pytest.approx((50 + 100_000 + 70) / 3)
    assert b2["amount_to_avg_30d"] == pytest.approx(70 / ((50 + 100_000 + 70) / 3))
    assert b2["seconds_since_prev_tx"] == 1800.0
    # a2 is on Wednesday 2018-04-11 at 00:00 UTC (night), a1 on Tuesday at 22:00 (not night)
    assert (a2["tx_during_weekend"], a2["tx_during_night"]) == (0.0, 1.0)
    assert (a1["tx_during_weekend"], a1["tx_during_night"]) == (0.0, 0.0)


def test_future_limit_uses_the_injected_clock() -> None:
    t = START_MS + DAY_MS
    clock = FakeClock(t)
    stage = CustomerStage(InMemoryStore(), clock, max_future_ms=HOUR_MS)
    rec = make_record(tx_of("alice", "a1", 100, t + 2 * HOUR_MS))
    result = stage.process([rec])
    assert [d.reason for d in result.dead_letters] == ["invalid_event_time"]
    assert result.enriched == []
    clock.advance(HOUR_MS)
    assert len(stage.process([rec]).enriched) == 1


# --- (b) state is written once per touched key per batch ------------------------------------------


def test_customer_state_is_written_once_per_touched_customer_per_batch() -> None:
    t = START_MS + DAY_MS
    store = InMemoryStore()
    stage = CustomerStage(store, FakeClock(t + DAY_MS))
    batch1 = [
        make_record(tx_of("alice", "a1", 100, t), partition=0, offset=0),
        make_record(tx_of("alice", "a2", 100, t + 1), partition=0, offset=1),
        make_record(tx_of("bob", "b1", 100, t), partition=1, offset=0),
        make_record(tx_of("alice", "a3", 100, t + 2), partition=0, offset=2),
        make_record(tx_of("bob", "b2", 100, t + 3), partition=1, offset=1),
        # carol only sends a bad message: not touched
        make_record(tx_of("carol", "c1", -1, t), partition=2, offset=0),
    ]
    result = stage.process(batch1)
    assert len(result.enriched) == 5
    assert store.writes == 2
    assert set(store.data) == {(0, b"alice"), (1, b"bob")}

    batch2 = [make_record(tx_of("bob", f"b{i}", 100, t + 10 + i), 1, 10 + i) for i in range(4)]
    result = stage.process(batch2)
    assert store.writes == 3
    assert [features_of(e)["customer_nb_tx_1d"] for e in result.enriched] == [3.0, 4.0, 5.0, 6.0]

    # empty and all-bad batches write nothing
    assert stage.process([]).enriched == []
    bad = [
        RawRecord(b"dave", b"", "transactions", 0, 9, 0),
        RawRecord(b"dave", GARBAGE, "transactions", 0, 10, 0),
        make_record(tx_of("dave", "d1", -5, t), partition=0, offset=11),
    ]
    assert len(stage.process(bad).dead_letters) == 3
    assert store.writes == 3


def test_terminal_state_is_written_once_per_touched_terminal_per_batch(policy: Policy) -> None:
    t = START_MS + DAY_MS
    clock = FakeClock(t + DAY_MS)
    customers = CustomerStage(InMemoryStore(), clock)
    store = InMemoryStore()
    terminals = TerminalStage(store, clock, policy)
    txs = [
        tx_of("alice", "a1", 100, t, terminal="T1"),
        tx_of("bob", "b1", 100, t + 1, terminal="T1"),
        tx_of("alice", "a2", 100, t + 2, terminal="T2"),
        tx_of("carol", "c1", 100, t + 3, terminal="T1"),
        tx_of("bob", "b2", 100, t + 4, terminal="T2"),
    ]
    enriched = customers.process(to_records(txs)).enriched
    records = by_terminal(enriched)
    result = terminals.process(records)
    assert len(result.decisions) == 5
    assert store.writes == 2
    assert set(store.data) == {(partition_of("T1"), b"T1"), (partition_of("T2"), b"T2")}
    t1 = [d.features["terminal_nb_tx_1d"] for d in result.decisions if d.terminal_id == "T1"]
    assert t1 == [0.0, 0.0, 0.0]  # labels are not known yet: nothing in the delayed window

    # labels: one write per touched terminal too
    labels = [
        Label(transaction_id=i, customer_id=c, terminal_id=term, fraud=True,
              transaction_time_ms=t, event_time_ms=t + 7 * DAY_MS)
        for i, c, term in (("a1", "alice", "T1"), ("b1", "bob", "T1"), ("c1", "carol", "T1"))
    ]  # fmt: skip
    applied = terminals.apply_labels([label_record(lab, k) for k, lab in enumerate(labels)])
    assert (applied.labels_applied, applied.dead_letters) == (3, [])
    assert store.writes == 3

    # empty and all-bad batches write nothing
    assert terminals.process([]).decisions == []
    assert terminals.apply_labels([]).labels_applied == 0
    short = EnrichedTransaction(transaction=txs[0], customer_features=[1.0])
    bad_tx = [
        RawRecord(b"T3", GARBAGE, "by-terminal", 0, 50, 0),
        RawRecord(b"T3", short.SerializeToString(), "by-terminal", 0, 51, 0),
    ]
    assert len(terminals.process(bad_tx).dead_letters) == 2
    bad_labels = [
        RawRecord(b"T3", GARBAGE, "labels", 0, 60, 0),
        RawRecord(b"T3", Label(terminal_id="T3").SerializeToString(), "labels", 0, 61, 0),
    ]
    assert len(terminals.apply_labels(bad_labels).dead_letters) == 2
    assert store.writes == 3
    assert set(store.data) == {(partition_of("T1"), b"T1"), (partition_of("T2"), b"T2")}


# --- (c) batch boundaries and restarts do not change decisions ------------------------------------


def random_cuts(rng: np.random.Generator, n: int, n_batches: int) -> list[int]:
    """Sizes of ``n_batches`` consecutive batches (some possibly empty) covering ``n`` items."""
    cuts = np.sort(rng.integers(0, n + 1, size=n_batches - 1))
    return np.diff(np.concatenate([[0], cuts, [n]])).tolist()


def batches(items: Sequence[RawRecord], sizes: Sequence[int]) -> list[list[RawRecord]]:
    out, start = [], 0
    for size in sizes:
        out.append(list(items[start : start + size]))
        start += size
    assert start == len(items)
    return out


def fraud_labels(txs: Sequence[Transaction]) -> list[RawRecord]:
    """A label for every transaction, known 7 days later; frauds on two terminals only."""
    labels = [
        Label(
            transaction_id=tx.transaction_id,
            customer_id=tx.customer_id,
            terminal_id=tx.terminal_id,
            fraud=tx.terminal_id in ("term-000", "term-001"),
            transaction_time_ms=tx.event_time_ms,
            event_time_ms=tx.event_time_ms + 7 * DAY_MS,
        )
        for tx in txs
    ]
    return [label_record(lab, k) for k, lab in enumerate(labels)]


class Engine:
    """Both stages on their own stores; labels are applied up front (early is harmless)."""

    def __init__(
        self,
        policy: Policy,
        now_ms: int,
        customer_store: InMemoryStore | None = None,
        terminal_store: InMemoryStore | None = None,
    ) -> None:
        self.clock = FakeClock(now_ms)
        self.customer_store = InMemoryStore() if customer_store is None else customer_store
        self.terminal_store = InMemoryStore() if terminal_store is None else terminal_store
        self.customers = CustomerStage(self.customer_store, self.clock)
        self.terminals = TerminalStage(self.terminal_store, self.clock, policy)

    def run(self, records: Sequence[RawRecord]) -> TerminalResult:
        return both_stages(self.customers, self.terminals, records)


def test_split_batches_equal_one_batch_and_state_lives_in_the_store(policy: Policy) -> None:
    rng = np.random.default_rng(11)
    txs = random_transactions(rng, 600, 15, START_MS, 60)
    records = to_records(txs)
    labels = fraud_labels(txs)
    now = START_MS + 61 * DAY_MS

    one = Engine(policy, now)
    assert one.terminals.apply_labels(labels).labels_applied == len(labels)
    whole = one.run(records)
    assert [d.transaction_id for d in whole.decisions] == [tx.transaction_id for tx in txs]
    # the data must exercise what is checked: every action, terminal risk, several currencies
    assert {d.action for d in whole.decisions} == {Action.ALLOW, Action.REVIEW, Action.BLOCK}
    assert any("RISKY_TERMINAL" in d.rules_fired for d in whole.decisions)
    assert any("AMOUNT_OVER_220" in d.rules_fired for d in whole.decisions)
    assert len({tx.currency for tx in txs}) >= 3

    split = Engine(policy, now)
    for part in batches(labels, random_cuts(rng, len(labels), 4)):
        split.terminals.apply_labels(part)
    parts = batches(records, [1, 0, 7, *random_cuts(rng, len(records) - 8, 6)])
    pieces = [split.run(part) for part in parts]
    assert [d for r in pieces for d in r.decisions] == list(whole.decisions)
    assert [a for r in pieces for a in r.alerts] == list(whole.alerts)
    assert split.customer_store.data == one.customer_store.data
    assert split.terminal_store.data == one.terminal_store.data

    # a restart: new stages on the same stores carry on where the first ones stopped
    half = len(records) // 2
    first = Engine(policy, now)
    first.terminals.apply_labels(labels)
    before = first.run(records[:half])
    second = Engine(policy, now, first.customer_store, first.terminal_store)
    after = second.run(records[half:])
    assert list(before.decisions) + list(after.decisions) == list(whole.decisions)
    assert list(before.alerts) + list(after.alerts) == list(whole.alerts)

    # ... and forgetting either store changes the answer, so the check above is not vacuous
    no_customers = Engine(policy, now, terminal_store=first.terminal_store)
    assert list(no_customers.run(records[half:]).decisions) != list(after.decisions)
    no_terminals = Engine(policy, now, customer_store=first.customer_store)
    no_terminals.terminals.apply_labels(labels)
    assert list(no_terminals.run(records[half:]).decisions) != list(after.decisions)


# --- (d) amounts in major units of the transaction's currency -------------------------------------


def test_currency_scale_of_features(policy: Policy) -> None:
    t = START_MS + 3 * DAY_MS
    engine = Engine(policy, t)
    txs = [
        tx_of("yen", "y1", 1000, t - 2 * HOUR_MS, "JPY"),
        tx_of("euro", "e1", 1000, t - 2 * HOUR_MS, "EUR"),
        tx_of("dinar", "d1", 1000, t - 2 * HOUR_MS, "BHD"),
        tx_of("yen", "y2", 5000, t, "JPY"),
        tx_of("euro", "e2", 5000, t, "EUR"),
        tx_of("dinar", "d2", 5000, t, "BHD"),
    ]
    enriched = engine.customers.process([make_record(tx, offset=i) for i, tx in enumerate(txs)])
    by_id = {e.transaction.transaction_id: features_of(e) for e in enriched.enriched}
    # yen have no minor unit, euro cents are 1/100, Bahraini fils 1/1000
    assert by_id["y1"]["amount"] == 1000.0
    assert by_id["y2"]["amount"] == 5000.0
    assert by_id["y2"]["customer_avg_amount_1d"] == 3000.0
    assert by_id["e1"]["amount"] == 10.0
    assert by_id["e2"]["amount"] == 50.0
    assert by_id["e2"]["customer_avg_amount_1d"] == 30.0
    assert by_id["d1"]["amount"] == 1.0
    assert by_id["d2"]["amount"] == 5.0
    assert by_id["d2"]["customer_avg_amount_30d"] == 3.0
    # ratios do not depend on the unit
    for tx_id in ("y2", "e2", "d2"):
        assert by_id[tx_id]["amount_to_avg_7d"] == pytest.approx(5 / 3)

    # the rules see major units: 5000 yen is over 220, 50 euros and 5 dinars are not
    decisions = engine.terminals.process(by_terminal(enriched.enriched)).decisions
    fired = {d.transaction_id: list(d.rules_fired) for d in decisions}
    assert fired == {
        "y1": ["AMOUNT_OVER_220"],
        "e1": [],
        "d1": [],
        "y2": ["AMOUNT_OVER_220"],
        "e2": [],
        "d2": [],
    }
    assert {d.transaction_id: d.features["amount"] for d in decisions} == {
        tx_id: f["amount"] for tx_id, f in by_id.items()
    }


# --- (e) the terminal stage refuses what it cannot use --------------------------------------------


def test_bad_labels_become_dead_letters(policy: Policy) -> None:
    t = START_MS + 10 * DAY_MS
    clock = FakeClock(t)
    store = InMemoryStore()
    stage = TerminalStage(store, clock, policy)
    good = Label(
        transaction_id="a1",
        customer_id="alice",
        terminal_id="T1",
        fraud=True,
        transaction_time_ms=t - 8 * DAY_MS,
        event_time_ms=t - DAY_MS,
    )
    no_tx = Label(terminal_id="T1", fraud=True, event_time_ms=t)
    no_terminal = Label(transaction_id="a2", fraud=True, event_time_ms=t)
    no_time = Label(transaction_id="a3", terminal_id="T1", fraud=True)
    records = [
        RawRecord(b"T1", GARBAGE, "labels", 1, 100, 0),
        label_record(good, 101, partition=1),
        label_record(no_tx, 102, partition=1),
        RawRecord(b"T9", no_terminal.SerializeToString(), "labels", 2, 7, 0),
        label_record(no_time, 103, partition=1),
        RawRecord(b"T1", None, "labels", 1, 104, 0),
    ]
    clock.advance(3)
    result = stage.apply_labels(records)
    got = [
        (dl.reason, dl.source_partition, dl.source_offset, dl.key, dl.payload)
        for dl in result.dead_letters
    ]
    assert got == [
        ("decode_error", 1, 100, b"T1", GARBAGE),
        ("invalid_label", 1, 102, b"T1", no_tx.SerializeToString()),
        ("invalid_label", 2, 7, b"T9", no_terminal.SerializeToString()),
        ("invalid_label", 1, 103, b"T1", no_time.SerializeToString()),
        ("invalid_label", 1, 104, b"T1", b""),
    ]
    for letter in result.dead_letters:
        assert letter.source_topic == "labels"
        assert letter.failed_at_ms == clock.now_ms
        assert letter.detail
    assert result.labels_applied == 1
    assert result.decisions == []
    assert set(store.data) == {(1, b"T1")}


def test_enriched_transactions_with_wrong_features_become_dead_letters(policy: Policy) -> None:
    t = START_MS + DAY_MS
    clock = FakeClock(t)
    customers = CustomerStage(InMemoryStore(), clock)
    store = InMemoryStore()
    terminals = TerminalStage(store, clock, policy)
    txs = [tx_of("alice", "a1", 100, t, terminal="T1"), tx_of("bob", "b1", 200, t, terminal="T2")]
    good = customers.process(to_records(txs)).enriched
    features = list(good[0].customer_features)
    short = EnrichedTransaction(transaction=txs[1], customer_features=features[:-1])
    long = EnrichedTransaction(transaction=txs[1], customer_features=[*features, 0.0])
    records = [
        RawRecord(b"T2", GARBAGE, "by-terminal", 0, 1, 0),
        RawRecord(b"T2", short.SerializeToString(), "by-terminal", 0, 2, 0),
        *by_terminal(good, first_offset=3),
        RawRecord(b"T2", long.SerializeToString(), "by-terminal", 1, 9, 0),
    ]
    clock.advance(7)
    result = terminals.process(records)
    got = [
        (dl.reason, dl.source_topic, dl.source_partition, dl.source_offset, dl.key, dl.payload)
        for dl in result.dead_letters
    ]
    assert got == [
        ("decode_error", "by-terminal", 0, 1, b"T2", GARBAGE),
        ("feature_mismatch", "by-terminal", 0, 2, b"T2", short.SerializeToString()),
        ("feature_mismatch", "by-terminal", 1, 9, b"T2", long.SerializeToString()),
    ]
    assert all(dl.failed_at_ms == clock.now_ms and dl.detail for dl in result.dead_letters)
    assert [d.transaction_id for d in result.decisions] == ["a1", "b1"]
    assert store.writes == 2


# --- (f) decisions and alerts from the v1 decision table ------------------------------------------


def decide(policy: Policy, txs: Sequence[Transaction], labels: Sequence[Label] = ()) -> Engine:
    engine = Engine(policy, max(tx.event_time_ms for tx in txs) + HOUR_MS)
    engine.terminals.apply_labels([label_record(lab, k) for k, lab in enumerate(labels)])
    return engine


def check_alerts(result: TerminalResult, now_ms: int) -> None:
    """An alert exactly for each decision that is not ALLOW, in order."""
    flagged = [d for d in result.decisions if d.action != Action.ALLOW]
    assert [a.decision for a in result.alerts] == flagged
    for alert in result.alerts:
        kind = Action.Name(alert.decision.action).lower()
        assert alert.alert_id == f"{alert.decision.transaction_id}/{kind}"
        assert alert.type == f"fraud.{kind}"
        assert alert.created_at_ms == alert.decision.decided_at_ms == now_ms


def check_decision(decision: Decision, action: int, rules: list[str], policy: Policy) -> None:
    assert decision.action == action, decision.transaction_id
    assert list(decision.rules_fired) == rules
    assert [r.code for r in decision.reasons] == [f"RULE:{rule}" for rule in rules]
    assert decision.rules_version == policy.rules_version == "v1"
    assert decision.model_version == ""
    assert decision.score == 0.0
    assert set(decision.features) == set(ALL_FEATURES)


def test_decisions_follow_the_v1_table(policy: Policy) -> None:
    t = START_MS + 40 * DAY_MS
    # ten small purchases two days apart, then a spike: 100 EUR is >= 5x the mean of 19 EUR
    history = [tx_of("dan", f"d{i}", 1000, t - (20 - 2 * i) * DAY_MS) for i in range(9)]
    txs = [
        tx_of("alice", "small", 1000, t),  # nothing fires
        tx_of("bob", "big", 30_000, t),  # 300 EUR > 220; 1x its own mean
        tx_of("carol", "edge", 22_000, t),  # exactly 220: not over
        *history,
        tx_of("dan", "spike", 10_000, t),
    ]
    engine = decide(policy, txs)
    result = engine.run(to_records(txs))
    by_id = {d.transaction_id: d for d in result.decisions}
    assert list(by_id) == [tx.transaction_id for tx in txs]
    check_decision(by_id["small"], Action.ALLOW, [], policy)
    check_decision(by_id["big"], Action.REVIEW, ["AMOUNT_OVER_220"], policy)
    check_decision(by_id["edge"], Action.ALLOW, [], policy)
    for tx in history:
        check_decision(by_id[tx.transaction_id], Action.ALLOW, [], policy)
    assert by_id["spike"].features["amount_to_avg_30d"] == pytest.approx(100 / 19)
    check_decision(by_id["spike"], Action.REVIEW, ["AMOUNT_SPIKE"], policy)
    check_alerts(result, engine.clock.now_ms)
    assert [a.alert_id for a in result.alerts] == ["big/review", "spike/review"]

    # decisions carry the transaction, the clock and the source record
    d = by_id["big"]
    assert (d.customer_id, d.terminal_id, d.amount_minor, d.currency) == (
        "bob",
        "term-1",
        30_000,
        "EUR",
    )
    assert d.event_time_ms == t
    assert d.decided_at_ms == engine.clock.now_ms
    assert (d.source_topic, d.source_partition) == ("transactions", partition_of("bob"))


def test_most_severe_rule_decides_and_blocks_alert(policy: Policy) -> None:
    t = START_MS + 20 * DAY_MS
    first = tx_of("alice", "x1", 1000, t - 8 * DAY_MS, terminal="T1")
    label = Label(
        transaction_id="x1",
        customer_id="alice",
        terminal_id="T1",
        fraud=True,
        transaction_time_ms=first.event_time_ms,
        event_time_ms=first.event_time_ms + 7 * DAY_MS,
    )
    txs = [
        first,
        tx_of("bob", "y1", 30_000, t, terminal="T1"),  # risky terminal and over 220: BLOCK
        tx_of("carol", "y2", 1000, t, terminal="T1"),  # risky terminal only: BLOCK
        tx_of("dave", "y3", 30_000, t, terminal="T2"),  # over 220 only: REVIEW
    ]
    engine = decide(policy, txs, [label])
    result = engine.run(to_records(txs))
    by_id = {d.transaction_id: d for d in result.decisions}
    check_decision(by_id["x1"], Action.ALLOW, [], policy)
    assert by_id["y1"].features["terminal_risk_7d"] == 1.0
    check_decision(by_id["y1"], Action.BLOCK, ["AMOUNT_OVER_220", "RISKY_TERMINAL"], policy)
    check_decision(by_id["y2"], Action.BLOCK, ["RISKY_TERMINAL"], policy)
    check_decision(by_id["y3"], Action.REVIEW, ["AMOUNT_OVER_220"], policy)
    check_alerts(result, engine.clock.now_ms)
    assert [a.alert_id for a in result.alerts] == ["y1/block", "y2/block", "y3/review"]


def test_decided_at_follows_the_clock_and_ingested_at_the_record(policy: Policy) -> None:
    t = START_MS + DAY_MS
    engine = Engine(policy, t)
    rec = make_record(tx_of("alice", "a1", 100, t), offset=3, timestamp_ms=t + 17)
    engine.clock.advance(250)
    (decision,) = engine.run([rec]).decisions
    assert decision.decided_at_ms == t + 250
    assert decision.ingested_at_ms == t + 17
    assert (decision.source_topic, decision.source_partition, decision.source_offset) == (
        "transactions",
        0,
        3,
    )


# --- test helpers ---------------------------------------------------------------------------------


def test_fake_clock() -> None:
    clock = FakeClock(100)
    assert clock() == clock.now_ms == 100
    assert clock.advance(5) == 105
    assert clock() == 105
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_make_record_keys_by_customer_and_serialises() -> None:
    tx = tx_of("alice", "a1", 100, START_MS)
    rec = make_record(tx, partition=2, offset=7, topic="x-transactions", timestamp_ms=42)
    assert rec == RawRecord(b"alice", tx.SerializeToString(), "x-transactions", 2, 7, 42)
    assert Transaction.FromString(rec.value or b"") == tx
    assert make_record(tx).timestamp_ms == START_MS


def test_random_transactions_are_sorted_valid_and_tied() -> None:
    rng = np.random.default_rng(3)
    txs = random_transactions(rng, 400, 10, START_MS, 30)
    times = [tx.event_time_ms for tx in txs]
    assert times == sorted(times)
    assert all(START_MS <= t < START_MS + 30 * DAY_MS for t in times)
    assert len(set(times)) < len(times) // 2
    assert len({tx.transaction_id for tx in txs}) == 400
    assert len({tx.customer_id for tx in txs}) == 10
    stage = CustomerStage(InMemoryStore(), FakeClock(START_MS + 30 * DAY_MS))
    assert stage.process(to_records(txs)).dead_letters == []


def test_transaction_batch_records_are_checked_item_by_item() -> None:
    """A TransactionBatch record: valid items are enriched in order with their index; an
    invalid item, or one whose customer hashes to another partition, is dead-lettered alone."""
    from fraud.contracts.partitioning import CONTRACT_HEADER, TRANSACTION_BATCH, partition_for
    from fraud.v1.transaction_pb2 import TransactionBatch

    t = START_MS + 10 * DAY_MS
    clock = FakeClock(t + HOUR_MS)
    partitions = 4
    stage = CustomerStage(InMemoryStore(), clock, partitions=partitions)
    home = partition_for("alice", partitions)
    stranger = next(
        c for c in (f"c{i}" for i in range(100)) if partition_for(c, partitions) != home
    )
    items = [
        tx_of("alice", "a1", 1000, t - HOUR_MS),
        tx_of("alice", "neg", -5, t),
        tx_of(stranger, "s1", 1000, t),
        tx_of("alice", "a2", 3000, t),
    ]
    value = TransactionBatch(transactions=items).SerializeToString()
    records = [
        RawRecord(None, value, "transactions", home, 7, t + 1, TRANSACTION_BATCH),
        RawRecord(None, GARBAGE, "transactions", home, 8, t + 2, TRANSACTION_BATCH),
        RawRecord(None, b"", "transactions", home, 9, t + 3, b"fraud.v9.Unknown"),
    ]
    result = stage.process(records)
    assert [
        (e.transaction.transaction_id, e.source_offset, e.source_index) for e in result.enriched
    ] == [
        ("a1", 7, 0),
        ("a2", 7, 3),
    ]
    assert features_of(result.enriched[1])["customer_nb_tx_1d"] == 2.0
    got = [(d.reason, d.source_offset, d.key, d.payload) for d in result.dead_letters]
    assert got == [
        ("invalid_amount", 7, b"alice", items[1].SerializeToString()),
        ("wrong_partition", 7, stranger.encode(), items[2].SerializeToString()),
        ("decode_error", 8, b"", GARBAGE),
        ("wrong_type", 9, b"", b""),
    ]
    assert result.dead_letters[0].detail.startswith("item 1: ")
    assert CONTRACT_HEADER in result.dead_letters[3].detail
