"""The order in which a replay publishes transactions and labels (no broker: the producer is
a recorder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fraud.contracts.units import DAY_MS
from fraud.ingest import replay as replay_module
from fraud.ingest.replay import replay
from fraud.settings import Settings
from fraud.tools.simulate import SimulationConfig, simulate, write_file
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction


class Recorder:
    """What a confluent Producer was asked to send, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.sent.append((topic, kwargs["value"]))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(replay_module, "producer", lambda brokers, **extra: rec)
    return rec


def merged(recorder: Recorder) -> list[tuple[str, int, int]]:
    """(kind, event time of the record, event time of the transaction it is about)."""
    out = []
    for topic, value in recorder.sent:
        if topic == "labels":
            label = Label.FromString(value)
            out.append(("label", label.event_time_ms, label.transaction_time_ms))
        else:
            tx = Transaction.FromString(value)
            out.append(("tx", tx.event_time_ms, tx.event_time_ms))
    return out


@pytest.mark.parametrize("lead_days", [0, 1])
def test_labels_go_out_their_lead_before_their_time_and_after_their_transaction(
    tmp_path: Path, recorder: Recorder, lead_days: int
) -> None:
    sim = simulate(SimulationConfig(n_customers=20, n_terminals=40, n_days=30, seed=3))
    path = tmp_path / "tx.csv"
    write_file(sim, path)
    delay, lead = 7 * DAY_MS, lead_days * DAY_MS
    stats = replay(Settings(), path, label_delay_ms=delay, label_lead_ms=lead)
    records = merged(recorder)
    assert stats.labels == len(sim) and len([r for r in records if r[0] == "tx"]) == len(sim)
    for i, (kind, time_ms, of_tx) in enumerate(records):
        if kind != "label":
            continue
        assert time_ms == of_tx + delay  # the label keeps its own time
        due = time_ms - lead
        before = [t for k, t, _ in records[:i] if k == "tx"]
        after = [t for k, t, _ in records[i + 1 :] if k == "tx"]
        assert of_tx in before  # after its transaction
        assert before[-1] < due  # not before its lead
        if after:  # else flushed at the end of the file
            assert after[0] >= due  # before every transaction it may count for


@pytest.mark.parametrize(("delay_days", "lead_days"), [(7, 7), (7, 8), (None, 1), (7, -1)])
def test_a_lead_that_would_publish_a_label_before_its_transaction_is_refused(
    tmp_path: Path, recorder: Recorder, delay_days: int | None, lead_days: int
) -> None:
    """The replay refuses it itself, not only the CLI, and before anything is sent."""
    sim = simulate(SimulationConfig(n_customers=20, n_terminals=40, n_days=30, seed=3))
    path = tmp_path / "tx.csv"
    write_file(sim, path)
    delay = None if delay_days is None else delay_days * DAY_MS
    with pytest.raises(ValueError, match="label_lead_ms"):
        replay(Settings(), path, label_delay_ms=delay, label_lead_ms=lead_days * DAY_MS)
    assert recorder.sent == []


def test_the_end_of_a_replay_waits_for_the_clients_verdict_on_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final flush outlasts librdkafka's own delivery timeout, so that a cluster restart
    during the replay ends in delivered records, not in a replay that gave up first."""
    configs: list[dict[str, Any]] = []
    flushes: list[float] = []

    class Flushing(Recorder):
        def flush(self, timeout: float = 0) -> int:
            flushes.append(timeout)
            return 0

    def make(brokers: str, **conf: Any) -> Flushing:
        configs.append(conf)
        return Flushing()

    monkeypatch.setattr(replay_module, "make_producer", make)
    sim = simulate(SimulationConfig(n_customers=20, n_terminals=40, n_days=30, seed=3))
    path = tmp_path / "tx.csv"
    write_file(sim, path)
    replay(Settings(), path)
    timeout_s = configs[0]["message.timeout.ms"] / 1000
    assert flushes and min(flushes) > timeout_s
