"""Unit parts of fraud.broker that need no running broker."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from fraud.broker import (
    ENGINE_ENV,
    PID_FILE,
    BrokerError,
    BrokerInfo,
    choose_engine,
    free_port,
    kafka_version,
    read_info,
    stop_pids,
    topic_config,
    topic_specs,
)
from fraud.broker.kafka import dev_properties, install, install_dir, pom_path, unavailable_reason
from fraud.broker.running import write_info
from fraud.kafka_config import watermark_offsets
from fraud.settings import Settings


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert sock.getsockname()[1] == port


def test_topic_specs_apply_prefix_and_partitions() -> None:
    settings = Settings(topic_prefix="x-", partitions=7, retention_ms=123_456)
    specs = topic_specs(settings)
    assert sorted(s.name for s in specs) == sorted(
        ["x-transactions", "x-labels", "x-decisions", "x-alerts", "x-transactions-dlq"]
    )
    assert len(specs) == 5
    for spec in specs:
        assert spec.partitions == 7
        assert spec.config == {"retention.ms": "123456", "min.insync.replicas": "1"}


def test_topic_specs_without_prefix_use_default_names() -> None:
    specs = topic_specs(Settings(partitions=2))
    assert {s.name for s in specs} == {
        "transactions",
        "labels",
        "decisions",
        "alerts",
        "transactions-dlq",
    }
    assert {s.partitions for s in specs} == {2}


def test_read_info_of_an_empty_dir_is_none(tmp_path: Path) -> None:
    assert read_info(tmp_path) is None


def _record(tmp_path: Path, pids: list[int]) -> None:
    raw = {"engine": "kafka", "version": "4.4.0", "bootstrap": "127.0.0.1:19092", "pids": pids}
    (tmp_path / PID_FILE).write_text(json.dumps(raw))


def test_read_info_of_a_live_pid(tmp_path: Path) -> None:
    _record(tmp_path, [os.getpid()])
    info = read_info(tmp_path)
    assert info == BrokerInfo("kafka", "4.4.0", "127.0.0.1:19092", (os.getpid(),), tmp_path)
    assert info is not None
    assert "Apache Kafka 4.4.0, 1 node" in info.describe()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid no longer names a process
    return proc.pid


def test_read_info_of_a_dead_pid_is_none(tmp_path: Path) -> None:
    _record(tmp_path, [_dead_pid()])
    assert read_info(tmp_path) is None


def test_a_cluster_is_running_while_one_of_its_nodes_is(tmp_path: Path) -> None:
    _record(tmp_path, [_dead_pid(), os.getpid()])
    info = read_info(tmp_path)
    assert info is not None
    assert len(info.pids) == 2


def test_write_info_round_trips(tmp_path: Path) -> None:
    info = BrokerInfo("noida", "0.2.3", "127.0.0.1:1", (os.getpid(),), tmp_path)
    write_info(info)
    assert read_info(tmp_path) == info


def test_read_info_of_a_malformed_pid_file_is_none(tmp_path: Path) -> None:
    (tmp_path / PID_FILE).write_text("{not json")
    assert read_info(tmp_path) is None
    (tmp_path / PID_FILE).write_text(json.dumps({"pid": os.getpid()}))
    assert read_info(tmp_path) is None


def test_stop_pids_stops_every_process_at_once() -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(3)
    ]
    try:
        assert stop_pids([p.pid for p in procs], timeout_s=30)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert all(p.returncode == -signal.SIGTERM for p in procs)


# Which engine runs here


def _fake_java(bin_dir: Path, version_line: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)


@pytest.fixture
def no_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with no java and no mvn, and an empty Kafka cache."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("FRAUD_CACHE_DIR", str(tmp_path / "cache"))
    return empty


def test_auto_falls_back_to_the_emulator_with_one_line(no_java: Path) -> None:
    said: list[str] = []
    assert choose_engine(None, say=said.append, env={}) == "noida"
    assert len(said) == 1
    assert "java not found" in said[0] and "noida-db" in said[0]


def test_an_explicit_kafka_without_java_is_an_error(no_java: Path) -> None:
    with pytest.raises(BrokerError, match="java not found"):
        choose_engine("kafka", say=pytest.fail, env={})
    with pytest.raises(BrokerError, match="java not found"):
        choose_engine(None, say=pytest.fail, env={ENGINE_ENV: "kafka"})


def test_the_emulator_is_chosen_without_looking_for_java(no_java: Path) -> None:
    assert choose_engine(None, say=pytest.fail, env={ENGINE_ENV: "noida"}) == "noida"


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(BrokerError, match="unknown broker engine 'zookeeper'"):
        choose_engine(None, env={ENGINE_ENV: "zookeeper"})


def test_an_old_java_is_not_enough(no_java: Path) -> None:
    _fake_java(no_java, 'java version "1.8.0_292"')
    reason = unavailable_reason()
    assert reason is not None and "Java 8" in reason
    _fake_java(no_java, 'openjdk version "11.0.2" 2019-01-15')
    reason = unavailable_reason()
    assert reason is not None and "Java 11" in reason


def test_java_17_still_needs_maven_until_kafka_is_cached(no_java: Path) -> None:
    _fake_java(no_java, 'openjdk version "17.0.15" 2025-04-15')
    reason = unavailable_reason()
    assert reason is not None and "mvn not found" in reason
    libs = install_dir() / "libs"
    libs.mkdir(parents=True)
    (install_dir() / ".complete").write_text(kafka_version())
    assert unavailable_reason() is None


def test_install_without_java_says_so_in_one_line(no_java: Path) -> None:
    with pytest.raises(BrokerError) as caught:
        install(say=pytest.fail)
    assert "\n" not in str(caught.value)
    assert "cannot install Apache Kafka" in str(caught.value)


def test_the_kafka_version_is_pinned_once_in_the_pom() -> None:
    version = kafka_version()
    assert re.fullmatch(r"4\.\d+\.\d+", version)
    pom = pom_path().read_text()
    assert pom.count(version) == 1, "the version appears once: the property"
    assert "${kafka.version}" in pom


def test_cluster_replication_fits_its_size() -> None:
    one, three = dev_properties(1), dev_properties(3)
    assert one["offsets.topic.replication.factor"] == "1"
    assert one["transaction.state.log.min.isr"] == "1"
    assert three["default.replication.factor"] == "3"
    assert three["min.insync.replicas"] == "2"
    assert three["transaction.state.log.min.isr"] == "2"


def test_topic_config_carries_durability_from_settings() -> None:
    settings = Settings(retention_ms=5, min_insync_replicas=2)
    assert topic_config(settings) == {"retention.ms": "5", "min.insync.replicas": "2"}
    compacted = topic_config(settings, {"cleanup.policy": "compact"})
    assert compacted["cleanup.policy"] == "compact"
    assert compacted["min.insync.replicas"] == "2"


def test_the_worker_tables_changelogs_are_compacted_with_the_settings_min_isr(
    tmp_path: Path,
) -> None:
    """Faust creates the changelog topics; their configuration comes from the settings (read
    off the app, no broker needed)."""
    from fraud.scoring.policy import load_policy
    from fraud.worker.app import create_app

    settings = Settings(data_dir=tmp_path, replication_factor=3, min_insync_replicas=2)
    worker = create_app(settings, load_policy(settings.rules_path))
    topics = [table.changelog_topic for table in worker.app.tables.values()]
    assert len(topics) == 2
    for topic in topics:
        assert topic.compacting
        assert topic.config == {"min.insync.replicas": "2"}
        assert topic.replicas in (None, 3)
    assert worker.app.conf.topic_replication_factor == 3


class _SettlingConsumer:
    """get_watermark_offsets answers ``errors`` in turn, then (3, 9)."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.calls = 0

    def get_watermark_offsets(self, partition: object, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return 3, 9


def test_watermarks_wait_for_a_settling_leader() -> None:
    consumer = _SettlingConsumer(
        KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART
    )
    got = watermark_offsets(consumer, TopicPartition("t", 0), 10.0)  # type: ignore[arg-type]
    assert got == (3, 9)
    assert consumer.calls == 3


def test_watermarks_raise_other_errors_at_once() -> None:
    consumer = _SettlingConsumer(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        watermark_offsets(consumer, TopicPartition("t", 0), 10.0)  # type: ignore[arg-type]
    assert consumer.calls == 1


def test_watermarks_give_up_at_the_deadline() -> None:
    consumer = _SettlingConsumer(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(KafkaException):
        watermark_offsets(consumer, TopicPartition("t", 0), 0.2)  # type: ignore[arg-type]
    assert 1 < consumer.calls < 1000
