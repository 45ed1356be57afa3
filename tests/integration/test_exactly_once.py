"""Exactly-once through the real broker: a worker killed (SIGKILL) or stopped (SIGTERM) in the
middle of a replay, and started again on the same data dir, still decides every transaction
exactly once, with the features of an undisturbed run.

Where each stop lands is random (seeded): the checks must hold wherever it lands, so the
delays only choose the stop points; nothing waits on time for correctness.
"""

from __future__ import annotations

import collections
import random
import signal
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition

from fraud.broker import ensure_topics
from fraud.ingest.replay import replay
from fraud.kafka_config import make_consumer
from fraud.settings import Settings
from fraud.testing import StepReplay
from fraud.tools.demo import worker_process
from fraud.v1.decision_pb2 import Decision
from tests.integration.test_worker import check_decisions, expected, small_file


def read_everything(settings: Settings, topic: str) -> list[Decision]:
    """Every committed record of ``topic``, read to its end (duplicates included)."""
    consumer = make_consumer(
        settings,
        **{
            "group.id": "exactly-once-check",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        },
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        open_partitions = set(partitions)
        out: list[Decision] = []
        while open_partitions:
            for msg in consumer.consume(1000, 1.0):
                error = msg.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    open_partitions.discard(msg.partition())
                    continue
                out.append(Decision.FromString(msg.value() or b""))
        return out
    finally:
        consumer.close()


@pytest.mark.parametrize("how", ["kill", "term"])
def test_a_worker_stopped_mid_replay_decides_every_transaction_once_and_exactly(
    settings: Settings, tmp_path: Path, how: str
) -> None:
    sim, path = small_file(tmp_path, seed=5)
    n = len(sim)
    step = 50
    ensure_topics(settings)
    rng = random.Random(20261202 + len(how))
    steps = StepReplay(settings, path, tmp_path)
    starts = list(range(0, n, step))
    stop_at = set(rng.sample(starts[1:-1], 3))
    sig = signal.SIGKILL if how == "kill" else signal.SIGTERM
    chunk = tmp_path / "chunk.csv"
    stops = 0
    while starts:
        with worker_process(settings, tmp_path, print) as worker:
            while starts:
                first = starts.pop(0)
                chunk.write_text(
                    steps.lines[0] + "".join(steps.lines[1 + first : 1 + first + step])
                )
                stats = replay(settings, chunk, label_delay_ms=steps.label_delay_ms)
                steps.transactions += stats.transactions
                if first in stop_at:
                    # Stop while the step is being decided: after part of its decisions.
                    steps.collect(steps.transactions - rng.randrange(step), timeout_s=60)
                    worker.send_signal(sig)
                    worker.wait(60)
                    stops += 1
                    break
                assert steps.collect(steps.transactions, timeout_s=90), "decisions missing"
    steps.close()
    assert stops == 3
    decisions = read_everything(settings, settings.topic_names.decisions)
    twice = [
        t for t, k in collections.Counter(d.transaction_id for d in decisions).items() if k > 1
    ]
    assert twice == [], f"{len(twice)} transactions decided more than once"
    check_decisions(decisions, expected(sim))
