"""The fault suite's pure parts: comparison with the clean run, recovery times, plans and the
malformed messages."""

from __future__ import annotations

import csv
import itertools
import math
import random
from pathlib import Path

import pytest

from fraud.contracts.partitioning import CONTRACT_HEADER
from fraud.contracts.wire import Rejected, parse_transaction
from fraud.tools.faults.malformed import (
    KINDS,
    MAX_FUTURE_MS,
    NOW_MS,
    MalformedSource,
    base_transaction,
    invalid_fields,
    rejected,
)
from fraud.tools.faults.outcome import (
    CleanRunError,
    Row,
    Seen,
    clean_reference,
    compare,
    differences,
    recovery_times,
    same_decision,
    table_line,
)
from fraud.tools.faults.plan import (
    GROUPS,
    Fault,
    active_controller,
    ci_scenario,
    pick,
    scenarios,
    sigkill_steps,
)
from fraud.tools.faults.suite import replay_rate, write_input
from fraud.v1.decision_pb2 import Decision
from fraud.v1.transaction_pb2 import Transaction


def seen(tx: str, count: float = 1.0, action: int = 1, partition: int = 0, at: float = 0.0) -> Seen:
    return Seen(tx, (("count", count), ("risk", math.nan)), action, partition, at)


def test_same_decision_compares_features_and_action_with_nan_equal() -> None:
    assert same_decision(seen("1"), seen("1", at=5.0, partition=3))
    assert not same_decision(seen("1"), seen("1", count=2.0))
    assert not same_decision(seen("1"), seen("1", action=2))
    assert same_decision(seen("1", count=1.0), seen("1", count=1.0 + 1e-12))
    other = Seen("1", (("other", 1.0), ("risk", math.nan)), 1, 0, 0.0)
    assert not same_decision(seen("1"), other)
    assert differences(seen("1"), other) == ["feature set"]
    assert differences(seen("1"), seen("1", count=3.0, action=3)) == ["action", "count"]


def test_clean_reference_refuses_a_clean_run_with_missing_or_repeated_decisions() -> None:
    assert set(clean_reference(["1", "2"], [seen("1"), seen("2")])) == {"1", "2"}
    with pytest.raises(CleanRunError, match="1 missing"):
        clean_reference(["1", "2"], [seen("1")])
    with pytest.raises(CleanRunError, match="1 duplicated"):
        clean_reference(["1"], [seen("1"), seen("1")])


def test_compare_counts_missing_duplicated_differing_and_unexpected() -> None:
    sent = ["1", "2", "3", "4"]
    clean = clean_reference(sent, [seen(t) for t in sent])
    run = [
        seen("1"),
        seen("2"), seen("2", count=2.0),  # decided twice, the second time differently
        seen("3", count=5.0),
        seen("malformed-1"),
    ]  # fmt: skip
    c = compare(sent, clean, run, alerts_read=3, alerts_expected=2)
    assert (c.sent, c.read, c.missing, c.duplicated, c.differing, c.unexpected) == (
        4, 5, 1, 1, 2, 1
    )  # fmt: skip
    assert c.differing_by_feature == {"count": 2}
    assert c.examples == {
        "missing": ["4"], "duplicated": ["2"], "differing": ["2", "3"],
        "unexpected": ["malformed-1"],
    }  # fmt: skip
    assert not c.met


def test_a_run_equal_to_the_clean_run_meets_the_target() -> None:
    sent = ["1", "2"]
    clean = clean_reference(sent, [seen("1"), seen("2")])
    c = compare(sent, clean, [seen("2", at=9.0), seen("1", at=8.0)], 4, 4)
    assert c.met
    row = Row("sigkill", "", 1, c)
    assert row.met and table_line(row).endswith("met")
    row.malformed, row.dead_letters = 10, 9
    assert not row.met and "9/10" in table_line(row)


def test_recovery_is_the_slowest_active_partition_to_decide_again() -> None:
    arrivals = [(0, 6.0), (1, 7.5), (0, 10.5), (1, 13.0), (2, 30.0)]
    # partition 2 was not deciding before the fault at 10: it does not count
    assert recovery_times([10.0], arrivals) == [3.0]
    # nothing decided in the 5 s before 20: the first decision after it
    assert recovery_times([20.0], arrivals) == [10.0]
    # nothing decided after 100: no recovery to measure
    assert recovery_times([100.0], arrivals) == [None]


def test_plans_are_seeded_and_the_sigkill_plan_has_the_kills_asked() -> None:
    a, b = scenarios(7, kills=21), scenarios(7, kills=21)
    assert a == b
    assert a != scenarios(8, kills=21)
    kills = a["sigkill"].steps
    assert len(kills) == 21 and all(s.fault is Fault.KILL_WORKER for s in kills)
    assert {s.worker for s in kills} == {0, 1}
    steps = sigkill_steps(random.Random(1), 50, 2, max_delay_s=6.0)
    assert all(0.0 <= s.delay_s < 6.0 for s in steps)
    assert sum(s.delay_s < 1.0 for s in steps) >= 10  # one in five early, in recovery


def test_pick_takes_numbers_and_names_in_suite_order() -> None:
    known = list(scenarios(0))
    assert pick(["4", "1"], known) == ["sigkill", "malformed"]
    assert pick(["leader", "2"], known) == ["sigterm", "rebalance", "leader"]
    assert set(itertools.chain(*GROUPS.values())) == set(known)
    with pytest.raises(ValueError, match="unknown scenario '6'"):
        pick(["6"], known)


def test_replay_rate_spreads_the_file_over_the_faults() -> None:
    plans = scenarios(0, kills=20)
    assert replay_rate(plans["malformed"], 3000) == pytest.approx(100.0)  # 30 s at least
    assert replay_rate(plans["sigkill"], 3000) < 3000 / (20 * 10.0)


def test_active_controller_is_the_leader_of_the_highest_epoch() -> None:
    line = (
        "[2026-12-02 07:41:50,781] INFO [RaftManager id={node}] Completed transition to "
        "Leader(localVoterNode=VoterNode(voterKey=ReplicaKey(id={node}, directoryId=LUEZ), "
        "listeners=Endpoints(endpoints={{}})), epoch={epoch}, epochStartOffset=0, "
        "highWatermark=Optional.empty) from Candidate(...) (org.apache.kafka.raft.QuorumState)\n"
    )
    logs = [
        line.format(node=1, epoch=3) + "[RaftManager id=1] Attempting durable transition to "
        "Leader(localVoterNode=x, epoch=9)\n",
        line.format(node=2, epoch=5),
        line.format(node=3, epoch=4) + line.format(node=3, epoch=1),
    ]
    assert active_controller(logs) == 2
    assert active_controller(["nothing here"]) is None


@pytest.mark.parametrize("seed", [3, 4])
def test_every_malformed_message_is_refused_by_the_worker(seed: int) -> None:
    messages = list(itertools.islice(MalformedSource(seed, pool=60), 50 * len(KINDS) + 5))
    assert {m.kind for m in messages} == set(KINDS)
    for m in messages:
        assert rejected(m.key, m.value, m.headers), m
        if m.kind == "unknown-contract":
            assert m.headers == [(CONTRACT_HEADER, b"fraud.v1.Nothing")]
        if m.kind in ("decision", "alert", "label"):
            assert m.headers is None  # type confusion: nothing names the type
    assert any(m.key is None for m in messages)
    assert any(m.value is None for m in messages)
    assert max(len(m.value or b"") for m in messages) > 300_000


def test_half_the_decisions_have_no_score_and_are_refused_for_their_foreign_fields() -> None:
    messages = itertools.islice(MalformedSource(3, pool=20), 40 * len(KINDS))
    decisions = [m for m in messages if m.kind == "decision"]
    scoreless = [m for m in decisions if not Decision.FromString(m.value or b"").score]
    assert len(scoreless) == len(decisions) // 2
    for m in scoreless:
        assert isinstance(Transaction.FromString(m.value or b""), Transaction)  # protobuf takes it
        refused = parse_transaction(m.value, NOW_MS, MAX_FUTURE_MS)
        assert isinstance(refused, Rejected) and refused.reason == "wrong_type", refused


def test_rejected_is_the_worker_check_and_can_say_no() -> None:
    tx = base_transaction(1)
    key, value = tx.customer_id.encode(), tx.SerializeToString()
    assert not rejected(key, value)  # a valid transaction is taken
    assert not rejected(key, value, [(CONTRACT_HEADER, b"fraud.v1.Transaction")])
    assert rejected(b"someone-else", value)  # wrong_key
    assert rejected(key, value, [(CONTRACT_HEADER, "fraud.v1.Decision")])  # wrong_type
    # The limit of the rule: a Decision of fields 1-7 only, as no worker sends one, is the
    # bytes of a valid Transaction; only its header could tell them apart.
    bare = Decision(
        transaction_id=tx.transaction_id, customer_id=tx.customer_id, terminal_id=tx.terminal_id,
        amount_minor=tx.amount_minor, currency=tx.currency, event_time_ms=tx.event_time_ms,
        action=1,
    )  # fmt: skip
    assert not rejected(key, bare.SerializeToString())
    assert rejected(key, bare.SerializeToString(), [(CONTRACT_HEADER, b"fraud.v1.Decision")])


def test_malformed_messages_are_seeded() -> None:
    first = list(itertools.islice(MalformedSource(5, pool=40), 100))
    again = list(itertools.islice(MalformedSource(5, pool=40), 100))
    other = list(itertools.islice(MalformedSource(6, pool=40), 100))
    assert first == again
    assert first != other


def test_invalid_fields_are_all_refused_and_varied() -> None:
    drawn = invalid_fields(0, 200)
    assert len(drawn) > 100
    assert all(rejected(tx.customer_id.encode(), tx.SerializeToString()) for tx in drawn)
    changed = set()
    for i, tx in enumerate(drawn):
        base = base_transaction(i)
        for field in ("amount_minor", "currency", "event_time_ms", "utc_offset_minutes",
                      "transaction_id", "latitude"):  # fmt: skip
            if getattr(tx, field) != getattr(base, field):
                changed.add(field)
    assert {"amount_minor", "currency", "event_time_ms"} <= changed


def test_the_input_file_holds_the_transactions_asked_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    ids = write_input(path, 1500, seed=1)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(ids) == 1500
    assert [r["TRANSACTION_ID"] for r in rows] == ids
    times = [r["TX_DATETIME"] for r in rows]
    assert times == sorted(times)
    assert {r["TX_FRAUD"] for r in rows} == {"0", "1"}


def test_the_ci_scenario_kills_then_stops_gracefully() -> None:
    plan = ci_scenario(seed=0, kills=3)
    assert [s.fault for s in plan.steps] == [Fault.KILL_WORKER] * 3 + [Fault.TERM_WORKER]
    assert plan.workers == 2
