"""Unit parts of fraud.broker that need no running broker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from fraud.broker import PID_FILE, BrokerInfo, free_port, read_info, topic_specs
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
        assert spec.config == {"retention.ms": "123456"}


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


def test_read_info_of_a_live_pid(tmp_path: Path) -> None:
    (tmp_path / PID_FILE).write_text(
        json.dumps({"pid": os.getpid(), "host": "127.0.0.1", "port": 19092})
    )
    info = read_info(tmp_path)
    assert info == BrokerInfo(os.getpid(), "127.0.0.1", 19092, tmp_path)
    assert info is not None
    assert info.bootstrap == "127.0.0.1:19092"


def test_read_info_of_a_dead_pid_is_none(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid no longer names a process
    (tmp_path / PID_FILE).write_text(
        json.dumps({"pid": proc.pid, "host": "127.0.0.1", "port": 19092})
    )
    assert read_info(tmp_path) is None


def test_read_info_of_a_malformed_pid_file_is_none(tmp_path: Path) -> None:
    (tmp_path / PID_FILE).write_text("{not json")
    assert read_info(tmp_path) is None
    (tmp_path / PID_FILE).write_text(json.dumps({"pid": os.getpid()}))
    assert read_info(tmp_path) is None
