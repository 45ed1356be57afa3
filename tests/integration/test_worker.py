"""End to end through the real broker: replay -> worker process -> decisions, alerts, DLQ."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from confluent_kafka import Producer
from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families

from fraud.broker import ensure_topics, free_port
from fraud.contracts.partitioning import DECISION, type_headers
from fraud.contracts.units import ALL_FEATURES, DAY_MS
from fraud.ingest.replay import Pacing, replay
from fraud.reference.rules import reference_evaluate_many
from fraud.rules.table import load_rule_table
from fraud.settings import Settings
from fraud.testing import StepReplay
from fraud.tools.demo import worker_process
from fraud.tools.simulate import Simulated, SimulationConfig, simulate, write_file
from fraud.tools.starve import CpuStarvation
from fraud.tools.tail import open_consumer
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import ALLOW, Action, Decision
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction
from tests.batch_reference import batch_features

M = TypeVar("M", bound=Message)


def read_topic(
    settings: Settings, topic: str, cls: Callable[[], M], want: int, idle_s: float = 15.0
) -> list[tuple[M, int]]:
    """Messages of ``topic`` from the beginning, with their Kafka timestamps, until ``want``."""
    consumer = open_consumer(settings, topic, from_beginning=True)
    out: list[tuple[M, int]] = []
    last = time.monotonic()
    try:
        while len(out) < want and time.monotonic() - last < idle_s:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    value = cls()
                    value.ParseFromString(msg.value() or b"")
                    out.append((value, msg.timestamp()[1]))
                    last = time.monotonic()
    finally:
        consumer.close()
    return out


def expected(sim: Simulated) -> dict[str, tuple[list[float], int]]:
    """Features (batch reference from the definitions) and action (slow rules twin) per id."""
    features = batch_features(sim)
    table = load_rule_table(Settings().rules_path, ALL_FEATURES)
    _, actions = reference_evaluate_many(table, ALL_FEATURES, features.tolist())
    ids = [str(i) for i in sim.transaction_id.tolist()]
    return {
        tid: (row, action) for tid, row, action in zip(ids, features.tolist(), actions, strict=True)
    }


def check_decisions(decisions: list[Decision], want: dict[str, tuple[list[float], int]]) -> None:
    assert len(decisions) == len(want)
    assert {d.transaction_id for d in decisions} == set(want)
    for d in decisions:
        feats, action = want[d.transaction_id]
        got = [d.features[name] for name in ALL_FEATURES]
        np.testing.assert_allclose(got, feats, rtol=0, atol=1e-9, err_msg=d.transaction_id)
        assert d.action == action, d.transaction_id


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus text endpoint as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def small_file(tmp_path: Path, seed: int = 3) -> tuple[Simulated, Path]:
    sim = simulate(
        SimulationConfig(
            n_customers=60, n_terminals=120, n_days=40, seed=seed, with_coordinates=True
        )
    )
    path = tmp_path / "tx.csv"
    write_file(sim, path)
    return sim, path


def test_replay_gives_one_exact_decision_per_transaction(
    settings: Settings, tmp_path: Path
) -> None:
    sim, path = small_file(tmp_path)
    n = len(sim)
    assert n > 3000
    ensure_topics(settings)
    names = settings.topic_names
    started_ms = time.time_ns() // 1_000_000
    steps = StepReplay(settings, path, tmp_path)
    with worker_process(settings, tmp_path, print):
        steps.run(0, n)
        alerts = [a for a, _ in read_topic(settings, names.alerts, Alert, n, idle_s=3)]
    steps.close()
    decisions = steps.decisions
    assert steps.transactions == n
    want = expected(sim)
    check_decisions(decisions, want)
    flagged = {tid for tid, (_, action) in want.items() if action != ALLOW}
    assert flagged, "the file should contain transactions the engine flags"
    assert sorted(a.decision.transaction_id for a in alerts) == sorted(flagged)
    assert all(a.alert_id == f"{a.decision.transaction_id}/{a.type[6:]}" for a in alerts)

    # Replayed 2018 history: event time in the payload, wall-clock Kafka timestamps, so that
    # time-based retention cannot delete it; nothing was lost.
    txs = read_topic(settings, names.transactions, Transaction, n)
    assert len(txs) == n
    assert all(ts >= started_ms - 60_000 for _, ts in txs)
    assert max(tx.event_time_ms for tx, _ in txs) < started_ms - 365 * DAY_MS

    # Labels: one per labelled row, 7 days after the transaction, never ahead of replay time.
    labels = [lab for lab, _ in read_topic(settings, names.labels, Label, n)]
    assert steps.labels == len(labels) == n
    assert sum(lab.fraud for lab in labels) == int(sim.fraud.sum())
    assert all(lab.event_time_ms - lab.transaction_time_ms == 7 * DAY_MS for lab in labels)


@pytest.mark.parametrize(
    ("batch", "single_stage", "starved"),
    [
        (1, True, False),
        (250, True, False),
        (250, False, False),
        (1, True, True),
        (250, False, True),
    ],
)
def test_a_backlog_replayed_at_full_speed_gives_exact_features(
    settings: Settings, tmp_path: Path, batch: int, single_stage: bool, starved: bool
) -> None:
    """The whole labelled file is in Kafka before the worker starts, so its customer
    partitions could run days apart; event-time alignment keeps every terminal window exact
    (with alignment off, terminal features of this file come out wrong). With ``batch``,
    transactions travel as TransactionBatch records and only fraud labels are published.
    A lone worker decides in line (``single_stage``) once the repartition topic is drained;
    ``--two-stage`` sends every transaction over it. ``starved``: the worker shares one core
    with two busy loops while it catches up (``fraud.tools.starve``), and must decide later,
    never differently (no wait on unread labels or partitions times out)."""
    sim, path = small_file(tmp_path, seed=5)
    n = len(sim)
    settings = dataclasses.replace(settings, metrics_port=free_port(), single_stage=single_stage)
    ensure_topics(settings)
    steps = StepReplay(settings, path, tmp_path)
    stats = replay(
        settings, path, label_delay_ms=7 * DAY_MS, batch=batch, fraud_labels_only=batch > 1
    )
    assert stats.labels == (int(sim.fraud.sum()) if batch > 1 else n)
    with worker_process(settings, tmp_path, print) as worker:
        with CpuStarvation(worker.pid) if starved else contextlib.nullcontext():
            assert steps.collect(n, timeout_s=600 if starved else 300)
        # The worker's /metrics, scraped while it runs, counts what it did.
        metrics = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
    steps.close()
    # No decision was made without its labels or its alignment.
    incomplete = {
        name: metrics[("fraud_incomplete_decisions_total", (("input", name),))]
        for name in ("labels", "alignment")
    }
    assert incomplete == {"labels": 0, "alignment": 0}
    assert not [d.transaction_id for d in steps.decisions if d.incomplete]
    check_decisions(steps.decisions, expected(sim))
    actions = collections.Counter(Action.Name(d.action) for d in steps.decisions)
    for action, count in actions.items():
        assert metrics[("fraud_decisions_total", (("action", action),))] == count
    assert metrics[("fraud_stage_records_total", (("stage", "terminal"),))] == n
    assert metrics[("fraud_stage_records_total", (("stage", "customer"),))] == n
    assert metrics[("fraud_alerts_total", ())] == n - actions["ALLOW"]
    assert metrics[("fraud_ingest_to_decision_seconds_count", ())] == n
    assert metrics[("fraud_labels_applied_total", ())] == stats.labels
    hop = metrics[("fraud_repartitioned_transactions_total", ())]
    if single_stage:
        assert hop < n / 4, f"{hop} of {n} went over the repartition topic"
    else:
        assert hop == n
    if batch > 1:
        # Each decision points at its transaction inside its TransactionBatch record.
        assert max(d.source_index for d in steps.decisions) > 0
        assert (
            len({(d.source_partition, d.source_offset, d.source_index) for d in steps.decisions})
            == n
        )


def test_bad_messages_go_to_dead_letters(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    names = settings.topic_names
    base = 1_522_540_800_000
    good = [
        Transaction(
            transaction_id=f"ok-{i}",
            customer_id=f"c{i % 3}",
            terminal_id="t1",
            amount_minor=1000 + i,
            currency="EUR",
            event_time_ms=base + i * 1000,
        )
        for i in range(7)
    ]
    bad: list[tuple[bytes | None, bytes, str]] = [
        (b"x", b"\x00\x01garbage\xff", "decode_error"),
        (b"c9", Transaction(transaction_id="neg", customer_id="c9", terminal_id="t",
                            amount_minor=-1, currency="EUR",
                            event_time_ms=base).SerializeToString(), "invalid_amount"),
        (b"c9", Transaction(transaction_id="cur", customer_id="c9", terminal_id="t",
                            amount_minor=1, currency="ZZZ",
                            event_time_ms=base).SerializeToString(), "unknown_currency"),
        (b"c9", Transaction(transaction_id="old", customer_id="c9", terminal_id="t",
                            amount_minor=1, currency="EUR",
                            event_time_ms=-5).SerializeToString(), "invalid_event_time"),
        (b"c9", Transaction(customer_id="c9", terminal_id="t", amount_minor=1, currency="EUR",
                            event_time_ms=base).SerializeToString(), "missing_transaction_id"),
        (b"c8", good[0].SerializeToString(), "wrong_key"),
        # A Decision decodes as a valid Transaction (field numbers overlap): its header says.
        (b"c9", Decision(transaction_id="d-1", customer_id="c9", terminal_id="t",
                         score=0.5).SerializeToString(), "wrong_type"),
    ]  # fmt: skip
    producer = Producer({"bootstrap.servers": settings.brokers})
    delivered: dict[bytes, tuple[int, int]] = {}

    def on_delivery(err: object, msg: object) -> None:
        assert err is None
        delivered[msg.value()] = (msg.partition(), msg.offset())  # type: ignore[attr-defined]

    with worker_process(settings, tmp_path, print):
        for i, tx in enumerate(good):
            producer.produce(
                names.transactions, key=tx.customer_id.encode(), value=tx.SerializeToString()
            )
            if i < len(bad):
                key, value, reason = bad[i]
                headers = type_headers(DECISION) if reason == "wrong_type" else None
                producer.produce(
                    names.transactions, key=key, value=value, headers=headers,
                    on_delivery=on_delivery,
                )  # fmt: skip
        producer.flush(30)
        letters = [x for x, _ in read_topic(settings, names.dead_letters, DeadLetter, len(bad))]
        decisions = [d for d, _ in read_topic(settings, names.decisions, Decision, len(good))]
    assert sorted(d.transaction_id for d in decisions) == sorted(tx.transaction_id for tx in good)
    by_payload = {x.payload: x for x in letters}
    assert len(letters) == len(bad)
    for key, value, reason in bad:
        letter = by_payload[value]
        assert letter.reason == reason
        assert letter.detail
        assert letter.key == key
        assert letter.source_topic == names.transactions
        assert (letter.source_partition, letter.source_offset) == delivered[value]


def test_state_survives_worker_restart_from_changelog(settings: Settings, tmp_path: Path) -> None:
    """Stop the worker half-way, wipe its local RocksDB, and carry on: the changelog restores
    every customer's window, so the second half's features are still exact."""
    sim, path = small_file(tmp_path, seed=11)
    n = len(sim)
    half = n // 2
    ensure_topics(settings)
    names = settings.topic_names
    steps = StepReplay(settings, path, tmp_path)
    with worker_process(settings, tmp_path, print):
        steps.run(0, half)
    shutil.rmtree(settings.data_dir)
    with worker_process(settings, tmp_path, print):
        steps.run(half, n)
    steps.close()
    assert len(names.decisions) > 0
    check_decisions(steps.decisions, expected(sim))


def test_demo_command_runs_and_leaves_nothing_behind(settings: Settings) -> None:
    cmd = [
        sys.executable, "-m", "fraud", "demo", "--external",
        "--brokers", settings.brokers, "--topic-prefix", settings.topic_prefix,
        "--customers", "30", "--days", "10", "--rate", "3000",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fraud demo summary" in done.stdout
    assert "dead letters                3" in done.stdout
    leftover = [
        proc.parent.name
        for proc in Path("/proc").glob("[0-9]*/cmdline")
        if settings.topic_prefix.encode() in _read(proc)
    ]
    assert leftover == [], "processes left behind by the demo"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_tail_prints_dead_letters_as_json_lines(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    producer = Producer({"bootstrap.servers": settings.brokers})
    for i in range(3):
        producer.produce(settings.topic_names.transactions, key=b"k", value=b"\xffbad%d" % i)
    producer.flush(30)
    with worker_process(settings, tmp_path, print):
        cmd = [
            sys.executable, "-m", "fraud", "tail", "dead-letters", "--from-beginning", "--json",
            "--limit", "3", "--idle-timeout", "20",
            "--brokers", settings.brokers, "--topic-prefix", settings.topic_prefix,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 3
    assert {r["reason"] for r in records} == {"decode_error"}
    assert {r["source_topic"] for r in records} == {settings.topic_names.transactions}


def test_replay_paced_by_event_time(settings: Settings, tmp_path: Path) -> None:
    """--speed F: the replay waits (event time gap / F) between transactions."""
    path = tmp_path / "paced.csv"
    rows = ["transaction_id,customer_id,terminal_id,amount,event_time"]
    rows += [f"p{i},c{i % 2},t1,1.00,2018-04-01 00:{i:02d}:00" for i in range(6)]
    path.write_text("\n".join(rows) + "\n")
    ensure_topics(settings)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    stats = replay(settings, path, pacing=Pacing(speed=60.0), clock=lambda: now[0], sleep=sleep)
    assert stats.transactions == 6
    # one minute of event time between rows, at 60x: one second of wall time each
    assert slept == pytest.approx([1.0] * 5)
    got = read_topic(settings, settings.topic_names.transactions, Transaction, 6)
    assert sorted(tx.transaction_id for tx, _ in got) == [f"p{i}" for i in range(6)]


def test_rules_and_model_swap_in_a_running_worker(settings: Settings, tmp_path: Path) -> None:
    """Publish a decision table, then a model table, to a running worker: later decisions carry
    the new versions; a malformed table on the topic is refused and the running one stays."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier

    from fraud.model.export import from_gradient_boosting
    from fraud.model.table import save_model_table
    from fraud.worker.policy_topic import policy_topic, publish_model, publish_rules

    ensure_topics(settings)
    names = settings.topic_names
    producer = Producer({"bootstrap.servers": settings.brokers})
    consumer = open_consumer(settings, names.decisions, from_beginning=True)
    sent = 0

    def decide(n: int) -> list[Decision]:
        nonlocal sent
        for i in range(sent, sent + n):
            tx = Transaction(
                transaction_id=f"s{i}", customer_id=f"c{i % 5}", terminal_id=f"t{i % 3}",
                amount_minor=1_000 + i, currency="EUR", event_time_ms=1_522_540_800_000 + i,
            )  # fmt: skip
            producer.produce(names.transactions, key=tx.customer_id.encode(),
                             value=tx.SerializeToString())  # fmt: skip
        producer.flush(30)
        sent += n
        got: list[Decision] = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.2):
                if msg.error() is None:
                    d = Decision()
                    d.ParseFromString(msg.value() or b"")
                    got.append(d)
        assert len(got) == n
        return got

    def until(check: Callable[[Decision], bool]) -> Decision:
        for _ in range(50):
            (d,) = decide(1)
            if check(d):
                return d
        raise AssertionError("the worker did not switch")

    with worker_process(settings, tmp_path, print):
        assert {d.rules_version for d in decide(5)} == {"v1"}
        rules = tmp_path / "v2.csv"
        rules.write_text(
            "# version: v2-test\n"
            "rule_id,feature,operator,threshold,action,reason,enabled\n"
            "EVERYTHING,amount,>=,0,REVIEW,test rule,true\n"
        )
        assert publish_rules(settings, rules) == "v2-test"
        d = until(lambda d: d.rules_version == "v2-test")
        assert d.rules_fired == ["EVERYTHING"]
        assert d.action == 2  # REVIEW

        rng = np.random.default_rng(0)
        x = rng.normal(size=(400, 2))
        y = (x[:, 0] + rng.normal(scale=0.5, size=400) > 0).astype(int)
        model = from_gradient_boosting(
            HistGradientBoostingClassifier(max_iter=5).fit(x, y),
            ["amount", "customer_nb_tx_1d"],
            version="m-test",
        )
        path = tmp_path / "m.json"
        save_model_table(model, path)
        assert publish_model(settings, path) == "m-test"
        d = until(lambda d: d.model_version == "m-test")
        assert 0.0 < d.score < 1.0
        assert d.rules_version == "v2-test"

        producer.produce(policy_topic(settings), key=b"rules", value=b"not,a,table\n1,2,3\n")
        producer.flush(30)
        later = decide(5)
        assert {x.rules_version for x in later} == {"v2-test"}
        assert {x.model_version for x in later} == {"m-test"}
    consumer.close()
