"""The brokers themselves: the `fraud broker` command, a 3-node Kafka cluster losing a node under
acks=all writes, retention against replayed history, and the emulator work-around staying idle
against Kafka."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

from fraud.broker import (
    KafkaCluster,
    TopicSpec,
    admin_client,
    create_topics,
    ensure_topics,
    free_port,
    read_info,
)
from fraud.broker.kafka import unavailable_reason
from fraud.broker.process import pid_alive
from fraud.ingest.replay import replay
from fraud.kafka_config import client_config, high_watermarks, producer_config
from fraud.settings import Settings
from fraud.tools.simulate import SimulationConfig, simulate, write_file
from fraud.worker import fetch_backoff
from fraud.worker.policy_topic import ensure_policy_topic, policy_topic


@pytest.fixture
def java() -> None:
    """Tests that start Apache Kafka themselves cannot run without Java 17+ (the emulator
    fallback's machines). CI forces Kafka, so there they always run."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs Apache Kafka: {reason}")


@pytest.fixture
def session_kafka(broker_engine: str) -> None:
    """Tests of the session's local Kafka broker (its retention check runs every 2 s)."""
    if broker_engine != "kafka":
        pytest.skip(f"needs the session's local Apache Kafka, not {broker_engine}")


def _run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fraud", "broker", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _read_all(brokers: str, topic: str, idle_s: float = 10.0) -> list[bytes]:
    """Every record of ``topic`` from the beginning up to its high watermarks at call time."""
    highs = {p: h for (_, p), h in high_watermarks(brokers, [topic]).items()}
    consumer = Consumer(client_config(brokers, **{"group.id": f"read-{uuid.uuid4().hex[:6]}"}))
    consumer.assign([TopicPartition(topic, p, 0) for p in highs])
    out: list[bytes] = []
    got = dict.fromkeys(highs, 0)
    last = time.monotonic()
    try:
        while any(got[p] < highs[p] for p in highs) and time.monotonic() - last < idle_s:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    out.append(msg.value() or b"")
                    got[msg.partition()] = (msg.offset() or 0) + 1
                    last = time.monotonic()
    finally:
        consumer.close()
    return out


def test_broker_command_starts_reports_stops_and_keeps_data(
    tmp_path: Path, broker_engine: str
) -> None:
    """`fraud broker start|status|stop` on this session's engine; an acknowledged record is
    there again after a graceful stop and a restart."""
    engine = "auto" if broker_engine == "external" else broker_engine
    data = tmp_path / "b"
    port = str(free_port())
    start = ("start", "--data-dir", str(data), "--port", port, "--engine", engine)
    started = _run_cli(*start)
    topic = "kept"
    try:
        assert started.returncode == 0, started.stderr
        assert "broker started" in started.stdout
        status = _run_cli("status", "--data-dir", str(data))
        assert status.returncode == 0
        assert f"127.0.0.1:{port}" in status.stdout
        again = _run_cli(*start)
        assert again.returncode == 1
        assert "already runs" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1, again.stderr
        brokers = f"127.0.0.1:{port}"
        producer = Producer(producer_config(brokers, acks="all"))
        producer.produce(topic, b"before the restart")
        assert producer.flush(30) == 0
    finally:
        stopped = _run_cli("stop", "--data-dir", str(data))
    assert "broker stopped" in stopped.stdout
    assert read_info(data) is None
    restarted = _run_cli(*start)
    try:
        assert restarted.returncode == 0, restarted.stderr
        assert _read_all(brokers, topic) == [b"before the restart"]
    finally:
        _run_cli("stop", "--data-dir", str(data))
    assert read_info(data) is None


class AckedWriter:
    """Writes numbered records with acks=all from a thread; keeps what the cluster
    acknowledged."""

    def __init__(self, brokers: str, topic: str) -> None:
        self.topic = topic
        self.producer = Producer(
            producer_config(
                brokers, acks="all", **{"enable.idempotence": True, "linger.ms": 2,
                                        "message.timeout.ms": 120_000}
            )
        )  # fmt: skip
        self.acked: set[int] = set()
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.acked.add(int(msg.value() or b"-1"))
        else:
            self.failed += 1

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.producer.produce(self.topic, str(i).encode(), on_delivery=self._delivered)
                i += 1
            except BufferError:
                pass
            self.producer.poll(0.001)
        self.producer.flush(120)

    def start(self) -> None:
        self._thread.start()

    def wait_acked(self, n: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < n:
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {n} acknowledged"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(150)


def _leader(brokers: str, topic: str, partition: int) -> int:
    meta = admin_client(brokers).list_topics(topic, timeout=10)
    leader: int = meta.topics[topic].partitions[partition].leader
    return leader


def test_a_three_node_cluster_keeps_every_acknowledged_write_when_a_node_is_killed(
    tmp_path: Path, java: None
) -> None:
    cluster = KafkaCluster(tmp_path / "c3", nodes=3, say=print)
    cluster.start()
    pids = cluster.pids
    try:
        settings = Settings(brokers=cluster.bootstrap, replication_factor=3, min_insync_replicas=2)
        topic = "acked"
        created = create_topics(
            admin_client(cluster.bootstrap), settings, [TopicSpec(topic, 3, {})]
        )
        assert created == [topic]
        writer = AckedWriter(cluster.bootstrap, topic)
        writer.start()
        try:
            writer.wait_acked(3000)
            victim = _leader(cluster.bootstrap, topic, 0)
            cluster.kill(victim)  # SIGKILL, mid-write
            killed_at = len(writer.acked)
            # writes go on with two of three replicas in sync
            writer.wait_acked(killed_at + 3000)
        finally:
            writer.stop()
        assert _leader(cluster.bootstrap, topic, 0) != victim
        read = {int(v) for v in _read_all(cluster.bootstrap, topic)}
        lost = writer.acked - read
        assert not lost, f"{len(lost)} acknowledged records lost, e.g. {sorted(lost)[:5]}"
        assert len(writer.acked) >= killed_at + 3000
    finally:
        # Not necessarily clean: with a node gone, the two left may lose their controller
        # quorum while both shut down, and then wait for it until killed.
        cluster.stop(timeout_s=30)
    assert not any(pid_alive(pid) for pid in pids), "the cluster left processes behind"


def test_replayed_2018_history_outlives_the_default_7_day_retention(
    settings: Settings, tmp_path: Path, session_kafka: None
) -> None:
    """Kafka deletes by record timestamp. A record stamped 2018 in a 7-day topic is deleted at
    the next retention check (the control); the replay of 2018 transactions and labels is
    kept whole, because records carry the time of the replay and the event time travels in
    the payload."""
    assert settings.retention_ms == 7 * 86_400_000
    sim = simulate(SimulationConfig(n_customers=20, n_terminals=40, n_days=10, seed=1))
    assert sim.start_date.year == 2018
    path = tmp_path / "2018.csv"
    write_file(sim, path)
    ensure_topics(settings)
    stats = replay(settings, path, label_delay_ms=7 * 86_400_000)
    assert stats.transactions == len(sim)

    control = f"{settings.topic_prefix}control"
    ensure_topics(settings, [TopicSpec(control, 1, {"retention.ms": str(settings.retention_ms)})])
    producer = Producer(producer_config(settings.brokers))
    producer.produce(control, b"2018", timestamp=1_522_540_800_000)  # 2018-04-01
    assert producer.flush(30) == 0
    probe = Consumer(client_config(settings.brokers, **{"group.id": "retention-probe"}))
    try:
        deadline = time.monotonic() + 120
        while probe.get_watermark_offsets(TopicPartition(control, 0), timeout=10)[0] == 0:
            assert time.monotonic() < deadline, "retention never ran on the control topic"
            time.sleep(0.2)
    finally:
        probe.close()

    names = settings.topic_names
    assert len(_read_all(settings.brokers, names.transactions)) == len(sim)
    assert len(_read_all(settings.brokers, names.labels)) == stats.labels == len(sim)


def test_empty_fetches_pause_only_against_a_broker_that_does_not_long_poll(
    brokers: str, broker_engine: str, settings: Settings
) -> None:
    """The emulator answers an empty fetch at once, so the work-around pauses; Kafka holds it
    for fetch.max.wait.ms, so against Kafka it never acts."""
    topic = f"{settings.topic_prefix}idle"
    ensure_topics(settings, [TopicSpec(topic, 2, {})])
    fetch_backoff.install()

    async def idle() -> fetch_backoff.Counts:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=brokers, group_id=None, fetch_max_wait_ms=200,
            auto_offset_reset="earliest",
        )  # fmt: skip
        await consumer.start()
        try:
            # One record read first: leadership settled and positions known (a fresh topic's
            # first fetches may be answered at once with NOT_LEADER: errors, not idleness).
            producer = Producer(producer_config(brokers))
            producer.produce(topic, b"first", partition=0)
            assert producer.flush(30) == 0
            assert (await consumer.getone()).value == b"first"
            before = fetch_backoff.counts()
            deadline = time.monotonic() + 60
            while fetch_backoff.counts().empty_fetches - before.empty_fetches < 5:
                assert time.monotonic() < deadline, "no empty fetch came back"
                assert not await consumer.getmany(timeout_ms=100)
            # counted before the stop, whose cancelled fetch comes back early
            after = fetch_backoff.counts()
        finally:
            await consumer.stop()
        return fetch_backoff.Counts(
            after.empty_fetches - before.empty_fetches, after.pauses - before.pauses
        )

    counted = asyncio.run(idle())
    assert counted.empty_fetches >= 5
    if broker_engine == "kafka":
        assert counted.pauses == 0
    elif broker_engine == "noida":
        assert counted.pauses > 0


def test_topics_take_replication_settings_and_compaction(settings: Settings) -> None:
    """min.insync.replicas comes from the settings (a value above the replica count is
    accepted at creation; acks=all writes would then fail, which no other test does here);
    the policy topic is compacted and never deleted by age."""
    settings = Settings(
        brokers=settings.brokers, topic_prefix=settings.topic_prefix, min_insync_replicas=2
    )
    ensure_topics(settings)
    assert ensure_policy_topic(settings)
    names = settings.topic_names
    admin = admin_client(settings.brokers)
    resources = [
        ConfigResource("topic", name) for name in (names.transactions, policy_topic(settings))
    ]
    configs = {
        res.name: {k: v.value for k, v in future.result().items()}
        for res, future in admin.describe_configs(resources).items()
    }
    assert configs[names.transactions]["min.insync.replicas"] == "2"
    assert configs[names.transactions]["retention.ms"] == str(settings.retention_ms)
    assert configs[names.transactions]["cleanup.policy"] == "delete"
    policy = configs[policy_topic(settings)]
    assert policy["cleanup.policy"] == "compact"
    assert policy["retention.ms"] == "-1"
    assert policy["min.insync.replicas"] == "2"
