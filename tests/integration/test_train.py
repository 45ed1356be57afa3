"""Training from the decision log and offline evaluation (fraud/tools/train.py,
fraud/tools/decision_log.py).

The broker tests publish a simulated, labelled month as the engine would log it: one Decision
per transaction with the batch reference features (``tests.batch_reference``, which the
streaming engine is tested to equal) and score 0, and one Label per transaction.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from fraud.broker import ensure_topics
from fraud.contracts.units import ALL_FEATURES
from fraud.contracts.units import DAY_MS as MS_PER_DAY
from fraud.ingest.replay import producer
from fraud.model.scoring import score
from fraud.model.table import load_model_table
from fraud.settings import Settings
from fraud.tools.decision_log import read_decisions, read_labels
from fraud.tools.evaluate import evaluate
from fraud.tools.simulate import Simulated, SimulationConfig, simulate
from fraud.tools.train import (
    evaluate_from_topics,
    train_from_topics,
)
from fraud.v1.decision_pb2 import ALLOW, Decision
from fraud.v1.label_pb2 import Label
from tests.batch_reference import batch_features

CONFIG = SimulationConfig(n_customers=500, n_terminals=1000, n_days=35, seed=11)
START = dt.date(2018, 4, 1)
# Train on days 14..20 (the terminal risk features need a week of labels before them, and the
# 30-day windows some history), delay 21..27, test 28..34.
TRAIN_START_MS = (START - dt.date(1970, 1, 1)).days * MS_PER_DAY + 14 * MS_PER_DAY


@pytest.fixture(scope="module")
def sim_data() -> tuple[Simulated, np.ndarray]:
    sim = simulate(CONFIG)
    return sim, batch_features(sim)


def _publish(settings: Settings, sim: Simulated, features: np.ndarray) -> None:
    ensure_topics(settings)
    names = settings.topic_names
    prod = producer(settings.brokers)
    for i in range(len(sim)):
        tx, cust = str(sim.transaction_id[i]), str(sim.customer_id[i])
        row = features[i]
        d = Decision(
            transaction_id=tx,
            customer_id=cust,
            terminal_id=str(sim.terminal_id[i]),
            event_time_ms=int(sim.event_time_ms[i]),
            score=0.0,
            action=ALLOW,
            features={n: float(v) for n, v in zip(ALL_FEATURES, row, strict=True) if v == v},
        )
        label = Label(
            transaction_id=tx,
            customer_id=cust,
            terminal_id=str(sim.terminal_id[i]),
            fraud=bool(sim.fraud[i]),
            transaction_time_ms=int(sim.event_time_ms[i]),
            event_time_ms=int(sim.event_time_ms[i]) + 7 * MS_PER_DAY,
        )
        for topic, value in ((names.decisions, d), (names.labels, label)):
            while True:
                try:
                    prod.produce(topic, key=cust.encode(), value=value.SerializeToString())
                    break
                except BufferError:
                    prod.poll(0.01)
    # a duplicate decision (worker restart) and a corrected label: the last ones win
    first, key = str(sim.transaction_id[0]), str(sim.customer_id[0]).encode()
    again = Decision(transaction_id=first, customer_id=key.decode(), score=0.0)
    again.features.update({n: float(v) for n, v in zip(ALL_FEATURES, features[0], strict=True)})
    again.event_time_ms = int(sim.event_time_ms[0])
    wrong = Label(transaction_id=first, fraud=not bool(sim.fraud[0]))
    right = Label(transaction_id=first, fraud=bool(sim.fraud[0]))
    for topic, value in ((names.decisions, again), (names.labels, wrong), (names.labels, right)):
        prod.produce(topic, key=key, value=value.SerializeToString())
    assert prod.flush(30) == 0


def test_train_and_evaluate_through_the_broker(
    settings: Settings, sim_data: tuple[Simulated, np.ndarray], tmp_path: Path
) -> None:
    sim, features = sim_data
    _publish(settings, sim, features)

    log = read_decisions(settings, idle_timeout_s=5.0)
    assert len(log) == len(sim)
    assert log.duplicates == 1 and log.skipped == 0
    order = np.argsort(np.array([int(t) for t in log.transaction_id]))
    np.testing.assert_array_equal(log.features[order], features)
    labels = read_labels(settings, idle_timeout_s=5.0)
    assert len(labels.transaction_id) == len(sim)
    by_id = dict(zip(labels.transaction_id, labels.fraud.tolist(), strict=True))
    assert by_id[str(sim.transaction_id[0])] == sim.fraud[0]
    assert sum(by_id.values()) == int(sim.fraud.sum())

    results = {}
    for kind in ("trees", "logistic"):
        out = tmp_path / f"{kind}.json"
        report = train_from_topics(settings, out, kind, start_ms=TRAIN_START_MS, seed=0)
        assert report.n_decisions == len(sim) and report.n_labels == len(sim)
        train_mask = (sim.day >= 14) & (sim.day < 21)
        assert report.n_train == int(train_mask.sum())
        assert report.n_train_frauds == int(sim.fraud[train_mask].sum())
        table = load_model_table(out)
        assert table.kind == kind and table.version == report.version
        assert table.meta["train_start_ms"] == str(TRAIN_START_MS)
        cols = [ALL_FEATURES.index(n) for n in table.feature_names]
        scores, _ = score(table, features[:, cols])
        assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
        # the protocol's start comes from the model's meta
        results[kind] = evaluate_from_topics(settings, model_path=out, idle_timeout_s=5.0)
        # the same protocol on the simulation in memory: the topics are read and joined right
        direct = evaluate(
            sim.transaction_id,
            sim.customer_id,
            sim.event_time_ms,
            scores,
            sim.transaction_id,
            sim.fraud,
            start_ms=TRAIN_START_MS,
        )
        assert results[kind] == direct
    for kind, result in results.items():
        print(kind, result)
        assert result.days == 7 and result.n_test_frauds > 100
        # this small month gives 0.75-0.86 over seeds (0.78 for trees, 0.78 for logistic with
        # seed 11): a week of 500 customers is a noisy training set; the handbook's 0.85+ needs
        # its 5000 customers
        assert result.auc > 0.7, (kind, result)
        assert result.average_precision > 0.3, (kind, result)

    # no model: the decisions' own score (0 here) ranks nothing
    own = evaluate_from_topics(settings, start_ms=TRAIN_START_MS, idle_timeout_s=5.0)
    assert own.auc == 0.5
    assert own.n_test == results["trees"].n_test
