"""The streaming model is no worse than the same model family in batch (benchmarks/model_quality.py,
small and in memory).

Streaming side: the two stages in memory over the simulated records (``run_stages`` of
tests/unit/scoring/test_stages.py, which the broker path equals: benchmarks/exactness.py),
then the code
``fraud train`` and ``fraud evaluate`` run, ``train_from_topics`` and ``evaluate_from_topics``
(numba-scored model table), with the topic reader swapped for the in-memory decision and label
records: the protobuf decoding, joins, training, export and scoring are the engine's own.
Batch side: ``tests.batch_reference`` features and scikit-learn fitted and scored directly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import fraud.tools.decision_log
from benchmarks.model_quality import (
    KINDS,
    METRICS,
    TOLERANCE,
    batch_result,
    protocol_start_ms,
    shortfalls,
)
from fraud.contracts.units import ALL_FEATURES
from fraud.settings import Settings
from fraud.tools.evaluate import EvaluationResult
from fraud.tools.simulate import Simulated, SimulationConfig, simulate
from fraud.tools.train import ModelKind, evaluate_from_topics, train_from_topics
from fraud.v1.label_pb2 import Label
from tests.batch_reference import batch_features
from tests.unit.scoring.test_stages import run_stages

# 40 days: 19 of warm-up, then the protocol's train, delay and test weeks
CONFIG = SimulationConfig(
    n_customers=200, n_terminals=400, n_days=40, seed=3, with_coordinates=True
)


@pytest.fixture(scope="module")
def sim() -> Simulated:
    return simulate(CONFIG)


@pytest.fixture(scope="module")
def topics(sim: Simulated) -> dict[str, list[bytes]]:
    """The decisions topic as the stages would write it, and the labels topic."""
    names = Settings().topic_names
    decisions = run_stages(sim, batch=500)
    assert len(decisions) == len(sim)
    labels = [
        Label(transaction_id=str(sim.transaction_id[i]), customer_id=str(sim.customer_id[i]),
              terminal_id=str(sim.terminal_id[i]), fraud=bool(sim.fraud[i]),
              transaction_time_ms=int(sim.event_time_ms[i])).SerializeToString()
        for i in range(len(sim))
    ]  # fmt: skip
    return {names.decisions: [d.SerializeToString() for d in decisions], names.labels: labels}


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, topics: dict[str, list[bytes]]) -> Settings:
    """Settings whose topics are read from ``topics`` instead of a broker."""

    def read_topic(
        settings: Settings, topic: str, *, idle_timeout_s: float = 3.0,
        limit: int | None = None, progress: object = None,
    ) -> list[bytes]:  # fmt: skip
        values = topics[topic]
        return list(values if limit is None else values[:limit])

    monkeypatch.setattr(fraud.tools.decision_log, "read_topic", read_topic)
    return Settings()


@pytest.fixture(scope="module")
def features(sim: Simulated) -> np.ndarray:
    return batch_features(sim)


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_model_is_no_worse_than_batch(
    kind: ModelKind, sim: Simulated, features: np.ndarray, settings: Settings, tmp_path: Path
) -> None:
    start = protocol_start_ms(sim)
    out = tmp_path / f"{kind}.json"
    report = train_from_topics(settings, out, kind, start_ms=start, seed=0)
    assert report.n_decisions == len(sim) and report.n_labels == len(sim)
    stream = evaluate_from_topics(settings, model_path=out)
    batch = batch_result(sim, features, kind, ALL_FEATURES, start, seed=0)
    print(kind, "streaming", stream, "\n", kind, "batch", batch)
    # sane: the same test week, enough frauds, and models that rank
    assert stream.days == 7 and stream.n_test_frauds >= 50
    assert stream.auc > 0.6 and batch.auc > 0.6
    assert stream.average_precision > 0.2 and batch.average_precision > 0.2
    for field, title in METRICS:
        s, b = getattr(stream, field), getattr(batch, field)
        assert s >= b - TOLERANCE, (kind, title, s, b)
    assert shortfalls(kind, stream, batch) == []


def test_shortfalls_catches_a_worse_stream() -> None:
    batch = EvaluationResult(
        auc=0.8, average_precision=0.5, card_precision_at_100=0.2, n_test=1000,
        n_test_frauds=80, days=7,
    )  # fmt: skip
    assert shortfalls("trees", batch, batch) == []
    better = replace(batch, auc=0.9, average_precision=0.6, card_precision_at_100=0.3)
    assert shortfalls("trees", better, batch) == []
    for field, title in METRICS:
        worse = replace(batch, **{field: getattr(batch, field) - 1e-6})
        (problem,) = shortfalls("trees", worse, batch)
        assert title in problem
        within = replace(batch, **{field: getattr(batch, field) - TOLERANCE / 2})
        assert shortfalls("trees", within, batch) == []
    assert shortfalls("trees", replace(batch, auc=float("nan")), batch) != []
    assert shortfalls("trees", replace(batch, n_test=999), batch) != []
