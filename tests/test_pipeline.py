"""The Detector end to end on micro-batches, against features computed here from the definitions."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from fraud.features import FEATURES
from fraud.pipeline import BatchResult, Detector, DetectorConfig, RawRecord, warmup
from fraud.reference.decide import reference_decide
from fraud.state import InMemoryStore
from fraud.testing import FakeClock, make_record, random_transactions
from fraud.v1.decision_pb2 import Action, Decision
from fraud.v1.transaction_pb2 import Transaction

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
START_MS = 1_522_540_800_000  # 2018-04-01T00:00Z: history replays are valid input
N_PARTITIONS = 3
RULE = "AMOUNT_OVER_THRESHOLD"
# minor-unit exponents of the currencies used here (ISO 4217)
EXPONENT = {"EUR": 2, "USD": 2, "JPY": 0, "BHD": 3}
ALERT_KIND = {Action.REVIEW: "review", Action.BLOCK: "block"}
EXPECTED_FEATURES = (
    "amount",
    "customer_nb_tx_1d",
    "customer_avg_amount_1d",
    "customer_nb_tx_7d",
    "customer_avg_amount_7d",
    "customer_nb_tx_30d",
    "customer_avg_amount_30d",
)


def partition_of(customer_id: str) -> int:
    return zlib.crc32(customer_id.encode()) % N_PARTITIONS


def to_records(txs: Sequence[Transaction], topic: str = "transactions") -> list[RawRecord]:
    """Records keyed by customer, spread over partitions by hash, offsets per partition."""
    next_offset = [0] * N_PARTITIONS
    records = []
    for tx in txs:
        p = partition_of(tx.customer_id)
        records.append(
            make_record(tx, partition=p, offset=next_offset[p], topic=topic, timestamp_ms=0)
        )
        next_offset[p] += 1
    return records


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


def run(
    detector: Detector, clock: FakeClock, parts: Sequence[Sequence[RawRecord]]
) -> tuple[BatchResult, list[int]]:
    """Process the batches in order, moving the clock one second before each; collect results
    and the clock time of each decision."""
    total = BatchResult()
    decided_at: list[int] = []
    for part in parts:
        clock.advance(1000)
        result = detector.process(part)
        total.decisions += result.decisions
        total.alerts += result.alerts
        total.dead_letters += result.dead_letters
        decided_at += [clock.now_ms] * len(result.decisions)
    return total, decided_at


@dataclass(frozen=True)
class Expected:
    features: dict[str, float]
    score: float
    action: int
    rule: bool


def expected_decisions(txs: Sequence[Transaction], config: DetectorConfig) -> list[Expected]:
    """From the definitions: per customer, over the transactions that arrived before (or are)
    the current one with event time in (t - N days, t]: the count and the mean amount in
    major units; then the reference decision on (amount, 30-day mean)."""
    history: dict[str, list[Transaction]] = {}
    out = []
    for tx in txs:
        seen = history.setdefault(tx.customer_id, [])
        seen.append(tx)
        scale = 10 ** EXPONENT[tx.currency]
        t = tx.event_time_ms
        features = {"amount": tx.amount_minor / scale}
        for days in (1, 7, 30):
            inside = [o.amount_minor for o in seen if t - days * DAY_MS < o.event_time_ms <= t]
            features[f"customer_nb_tx_{days}d"] = float(len(inside))
            features[f"customer_avg_amount_{days}d"] = sum(inside) / len(inside) / scale
        score, action, rule = reference_decide(
            features["amount"],
            features["customer_avg_amount_30d"],
            config.amount_threshold,
            config.review_score,
            config.block_score,
        )
        out.append(Expected(features, score, action, rule))
    return out


def check_decisions(
    decisions: Sequence[Decision],
    txs: Sequence[Transaction],
    records: Sequence[RawRecord],
    config: DetectorConfig,
) -> None:
    """``decisions`` are those of ``txs`` (sent as ``records``), one each, in input order."""
    assert [d.transaction_id for d in decisions] == [tx.transaction_id for tx in txs]
    for d, tx, rec, exp in zip(
        decisions, txs, records, expected_decisions(txs, config), strict=True
    ):
        assert d.customer_id == tx.customer_id
        assert d.terminal_id == tx.terminal_id
        assert d.amount_minor == tx.amount_minor
        assert d.currency == tx.currency
        assert d.event_time_ms == tx.event_time_ms
        assert (d.source_topic, d.source_partition, d.source_offset) == (
            rec.topic,
            rec.partition,
            rec.offset,
        )
        assert d.ingested_at_ms == rec.timestamp_ms
        assert set(d.features) == set(EXPECTED_FEATURES)
        for name, value in exp.features.items():
            assert d.features[name] == pytest.approx(value, rel=1e-9, abs=1e-9), (
                tx.transaction_id,
                name,
            )
        assert d.score == pytest.approx(exp.score, rel=0, abs=1e-9)
        assert d.action == exp.action, tx.transaction_id
        assert list(d.rules_fired) == ([RULE] if exp.rule else [])
        if exp.rule:
            assert any(r.code == RULE and r.feature == "amount" for r in d.reasons)


def check_alerts(result: BatchResult) -> None:
    flagged = [d for d in result.decisions if d.action != Action.ALLOW]
    assert [a.decision for a in result.alerts] == flagged
    for alert in result.alerts:
        kind = ALERT_KIND[alert.decision.action]
        assert alert.alert_id == f"{alert.decision.transaction_id}/{kind}"
        assert alert.type == f"fraud.{kind}"
        assert alert.created_at_ms == alert.decision.decided_at_ms


def new_detector(
    now_ms: int, config: DetectorConfig | None = None
) -> tuple[Detector, InMemoryStore, FakeClock]:
    store = InMemoryStore()
    clock = FakeClock(now_ms)
    return Detector(config or DetectorConfig(), store, clock), store, clock


def tx_of(
    customer: str, tx_id: str, amount_minor: int, event_time_ms: int, currency: str = "EUR"
) -> Transaction:
    return Transaction(
        transaction_id=tx_id,
        customer_id=customer,
        terminal_id="term-1",
        amount_minor=amount_minor,
        currency=currency,
        event_time_ms=event_time_ms,
    )


# --- tests ----------------------------------------------------------------------------------------


def test_feature_names() -> None:
    assert FEATURES == EXPECTED_FEATURES


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_stream_matches_definitions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    txs = random_transactions(rng, 1500, 30, START_MS, 60)
    records = to_records(txs)
    detector, store, clock = new_detector(START_MS + 60 * DAY_MS)
    parts = batches(records, random_cuts(rng, len(records), 7))
    result, decided_at = run(detector, clock, parts)

    assert result.dead_letters == []
    check_decisions(result.decisions, txs, records, detector.config)
    assert [d.decided_at_ms for d in result.decisions] == decided_at
    check_alerts(result)
    # the data must exercise what is checked: ties, every action, several currencies
    times = [(tx.customer_id, tx.event_time_ms) for tx in txs]
    assert len(set(times)) < len(times)
    assert {d.action for d in result.decisions} == {Action.ALLOW, Action.REVIEW, Action.BLOCK}
    assert len({tx.currency for tx in txs}) >= 3
    assert {r.partition for r in records} == set(range(N_PARTITIONS))
    assert len(store.data) == len({(partition_of(tx.customer_id), tx.customer_id) for tx in txs})


def test_late_arrivals_within_lateness_match_definitions() -> None:
    """Arrival order is not event-time order (up to 20 h late): features follow arrival."""
    rng = np.random.default_rng(7)
    txs = random_transactions(rng, 800, 12, START_MS, 45, grid_ms=HOUR_MS)
    delay = rng.integers(0, 21, size=len(txs)) * HOUR_MS
    order = np.argsort(np.array([tx.event_time_ms for tx in txs]) + delay, kind="stable")
    arrived = [txs[int(i)] for i in order]
    assert arrived != txs
    records = to_records(arrived)
    detector, _, clock = new_detector(START_MS + 45 * DAY_MS)
    result, _ = run(detector, clock, batches(records, random_cuts(rng, len(records), 5)))
    check_decisions(result.decisions, arrived, records, detector.config)
    check_alerts(result)


def test_bad_messages_become_dead_letters_and_the_rest_is_decided() -> None:
    t = START_MS + 10 * DAY_MS
    detector, _, clock = new_detector(t + HOUR_MS)
    good = [
        tx_of("alice", "a1", 1000, t - 2 * HOUR_MS),
        tx_of("bob", "b1", 5000, t - HOUR_MS),
        tx_of("alice", "a2", 3000, t),
        tx_of("bob", "b2", 7000, t),
    ]
    negative = tx_of("alice", "bad-amount", -100, t)
    unknown = tx_of("alice", "bad-ccy", 100, t, currency="XYZ")
    misrouted = tx_of("bob", "wrong-key", 10_000_000, t)
    records = [
        make_record(good[0], partition=1, offset=10),
        RawRecord(b"alice", b"\xff\xff\xff\xff", "transactions", 1, 11, 0),
        make_record(good[1], partition=2, offset=20),
        make_record(negative, partition=1, offset=12),
        make_record(unknown, partition=1, offset=13),
        RawRecord(b"bob", misrouted.SerializeToString(), "transactions", 2, 21, 0),
        RawRecord(b"carol", misrouted.SerializeToString(), "transactions", 0, 5, 0),
        make_record(good[2], partition=1, offset=14),
        RawRecord(b"bob", None, "transactions", 2, 22, 0),
        make_record(good[3], partition=2, offset=23),
    ]
    # the correctly keyed copy of `misrouted` is valid: it is decided too
    valid = [good[0], good[1], misrouted, good[2], good[3]]
    valid_records = [records[i] for i in (0, 2, 5, 7, 9)]
    clock.advance(5)
    result = detector.process(records)

    expected_letters = [
        # reason, partition, offset, key, payload
        ("decode_error", 1, 11, b"alice", b"\xff\xff\xff\xff"),
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
    check_decisions(result.decisions, valid, valid_records, detector.config)
    check_alerts(result)
    # spot values, by hand: alice's 30 + 10 EUR in the last day, bob's 50 + 70 + 100000 EUR
    alice2 = result.decisions[3].features
    assert (alice2["customer_nb_tx_1d"], alice2["customer_avg_amount_1d"]) == (2.0, 20.0)
    bob3 = result.decisions[4].features
    assert bob3["customer_nb_tx_30d"] == 3.0
    assert bob3["customer_avg_amount_30d"] == pytest.approx((50 + 100_000 + 70) / 3)


def test_state_is_written_once_per_touched_customer_per_batch() -> None:
    t = START_MS + DAY_MS
    detector, store, _ = new_detector(t + DAY_MS)
    batch1 = [
        make_record(tx_of("alice", "a1", 100, t), partition=0, offset=0),
        make_record(tx_of("alice", "a2", 100, t + 1), partition=0, offset=1),
        make_record(tx_of("bob", "b1", 100, t), partition=1, offset=0),
        make_record(tx_of("alice", "a3", 100, t + 2), partition=0, offset=2),
        make_record(tx_of("bob", "b2", 100, t + 3), partition=1, offset=1),
        # carol only sends a bad message: not touched
        make_record(tx_of("carol", "c1", -1, t), partition=2, offset=0),
    ]
    result = detector.process(batch1)
    assert len(result.decisions) == 5
    assert store.writes == 2
    assert set(store.data) == {(0, b"alice"), (1, b"bob")}

    batch2 = [make_record(tx_of("bob", f"b{i}", 100, t + 10 + i), 1, 10 + i) for i in range(4)]
    result = detector.process(batch2)
    assert store.writes == 3
    assert [d.features["customer_nb_tx_1d"] for d in result.decisions] == [3.0, 4.0, 5.0, 6.0]

    assert detector.process([]).decisions == []
    assert detector.process([RawRecord(b"dave", b"", "transactions", 0, 9, 0)]).dead_letters
    assert store.writes == 3


def test_split_batches_equal_one_batch_and_state_lives_in_the_store() -> None:
    rng = np.random.default_rng(11)
    txs = random_transactions(rng, 600, 15, START_MS, 60)
    records = to_records(txs)
    now = START_MS + 60 * DAY_MS

    one, one_store, _ = new_detector(now)
    whole = one.process(records)

    split, split_store, _ = new_detector(now)
    parts = batches(records, [1, 0, 7, *random_cuts(rng, len(records) - 8, 6)])
    pieces = [split.process(part) for part in parts]
    assert [d for r in pieces for d in r.decisions] == list(whole.decisions)
    assert [a for r in pieces for a in r.alerts] == list(whole.alerts)
    assert split_store.data == one_store.data

    # a restart: a new Detector on the same store carries on where the first one stopped
    half = len(records) // 2
    first, store, clock = new_detector(now)
    before = first.process(records[:half])
    second = Detector(first.config, store, clock)
    after = second.process(records[half:])
    assert list(before.decisions) + list(after.decisions) == list(whole.decisions)

    # ... and forgetting the store changes the answer, so the check above is not vacuous
    forgetful = Detector(first.config, InMemoryStore(), clock)
    assert list(forgetful.process(records[half:]).decisions) != list(after.decisions)


def test_currency_scale_of_features() -> None:
    t = START_MS + 3 * DAY_MS
    detector, _, _ = new_detector(t)
    txs = [
        tx_of("yen", "y1", 1000, t - 2 * HOUR_MS, "JPY"),
        tx_of("euro", "e1", 1000, t - 2 * HOUR_MS, "EUR"),
        tx_of("dinar", "d1", 1000, t - 2 * HOUR_MS, "BHD"),
        tx_of("yen", "y2", 5000, t, "JPY"),
        tx_of("euro", "e2", 5000, t, "EUR"),
        tx_of("dinar", "d2", 5000, t, "BHD"),
    ]
    result = detector.process([make_record(tx, offset=i) for i, tx in enumerate(txs)])
    by_id = {d.transaction_id: d.features for d in result.decisions}
    # yen have no minor unit, euro cents are 1/100, Bahraini fils 1/1000
    assert by_id["y2"]["amount"] == 5000.0
    assert by_id["y2"]["customer_avg_amount_1d"] == 3000.0
    assert by_id["e2"]["amount"] == 50.0
    assert by_id["e2"]["customer_avg_amount_1d"] == 30.0
    assert by_id["d2"]["amount"] == 5.0
    assert by_id["d2"]["customer_avg_amount_30d"] == 3.0
    assert by_id["y1"]["amount"] == 1000.0
    assert by_id["e1"]["amount"] == 10.0


def test_decided_at_follows_the_clock_and_ingested_at_the_record() -> None:
    t = START_MS + DAY_MS
    detector, _, clock = new_detector(t)
    rec = make_record(tx_of("alice", "a1", 100, t), offset=3, timestamp_ms=t + 17)
    clock.advance(250)
    (decision,) = detector.process([rec]).decisions
    assert decision.decided_at_ms == t + 250
    assert decision.ingested_at_ms == t + 17
    assert decision.rules_version and decision.model_version


def test_future_limit_uses_the_injected_clock() -> None:
    t = START_MS + DAY_MS
    detector, _, clock = new_detector(t, DetectorConfig(max_future_ms=HOUR_MS))
    rec = make_record(tx_of("alice", "a1", 100, t + 2 * HOUR_MS))
    result = detector.process([rec])
    assert [d.reason for d in result.dead_letters] == ["invalid_event_time"]
    clock.advance(HOUR_MS)
    assert len(detector.process([rec]).decisions) == 1


def test_warmup_compiles_the_kernels() -> None:
    from fraud.kernels.decide import score_and_decide
    from fraud.kernels.windows import update_windows_csr

    warmup()
    assert score_and_decide.signatures
    assert update_windows_csr.signatures


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
    detector, _, _ = new_detector(START_MS + 30 * DAY_MS)
    assert detector.process(to_records(txs)).dead_letters == []
