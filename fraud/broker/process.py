"""Local broker processes: free ports, liveness, graceful stops, readiness over Kafka."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from fraud.kafka_config import client_config


class BrokerError(RuntimeError):
    """The broker could not be installed, started, reached or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def pid_alive(pid: int) -> bool:
    """True while ``pid`` names a running process (a zombie is not running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def stop_pids(pids: Iterable[int], timeout_s: float = 60.0) -> bool:
    """SIGTERM every process of ``pids`` at once and wait for them to exit; SIGKILL what is
    left after ``timeout_s``. All at once: the nodes of a cluster stopped one at a time would
    wait for a controller quorum that is gone. True when every process exited by itself."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    clean = True
    for pid in pids:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            clean = False
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return clean


def wait_until_ready(bootstrap: str, timeout_s: float = 30.0, brokers: int = 1) -> None:
    """Wait until ``brokers`` brokers answer in the cluster's metadata, or raise BrokerError."""
    admin = AdminClient(client_config(bootstrap, **{"socket.timeout.ms": 2000}))
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            seen = len(admin.list_topics(timeout=1.0).brokers)
        except KafkaException as exc:
            last = str(exc)
            continue
        if seen >= brokers:
            return
        last = f"{seen} of {brokers} brokers registered"
        time.sleep(0.05)
    raise BrokerError(f"no Kafka cluster answered at {bootstrap} within {timeout_s:.0f} s: {last}")
