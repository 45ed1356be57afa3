"""The embedded Kafka-protocol broker (noida-db) and topic creation.

``EmbeddedBroker`` starts one noida-db process bound to 127.0.0.1, waits until it answers
Kafka metadata requests, and stops it gracefully with SIGTERM (noida-db writes its data file on
the way out; a SIGKILL loses acknowledged writes, so it is the last resort). A PID file in the
data dir lets ``fraud broker stop`` and ``status`` find a broker started by another process.

``ensure_topics`` works the same against the embedded broker and a real Kafka cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    NewTopic,
)

from fraud.kafka_config import client_config
from fraud.settings import Settings

PID_FILE = "broker.json"
LOG_FILE = "broker.log"


class BrokerError(RuntimeError):
    """The broker could not be started, reached or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def noida_binary() -> Path:
    """Path of the noida-db executable shipped inside the noida-db wheel."""
    path = Path(str(files("noida_db").joinpath("noida-db")))
    if not path.is_file():
        raise BrokerError(f"noida-db binary not found at {path}; is noida-db installed?")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_until_ready(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Wait until the broker answers a metadata request, or raise BrokerError."""
    admin = AdminClient(client_config(bootstrap, **{"socket.timeout.ms": 2000}))
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException as exc:
            last = exc
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f} s: {last}")


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    host: str
    port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_info(data_dir: Path) -> BrokerInfo | None:
    """The broker recorded in ``data_dir``, if its process is still alive."""
    try:
        raw = json.loads((data_dir / PID_FILE).read_text())
        info = BrokerInfo(int(raw["pid"]), str(raw["host"]), int(raw["port"]), data_dir)
    except (OSError, ValueError, KeyError):
        return None
    return info if _pid_alive(info.pid) else None


def stop_pid(pid: int, timeout_s: float = 60.0) -> bool:
    """SIGTERM ``pid`` and wait for it to save and exit; SIGKILL only after ``timeout_s``.

    Returns True when it exited by itself.
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False


class EmbeddedBroker:
    """One noida-db process speaking Kafka on ``host:port`` with its data in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int = 9092, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 30.0) -> BrokerInfo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        running = read_info(self.data_dir)
        if running is not None:
            raise BrokerError(
                f"a broker (pid {running.pid}) already runs on {running.bootstrap} "
                f"with data dir {self.data_dir}; stop it with 'fraud broker stop'"
            )
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.host}:{self.port} is already in use")
        cmd = [
            str(noida_binary()),
            "start",
            "--data-dir", str(self.data_dir),
            "--host", self.host,
            "--only", "kafka",
            "--kafka-port", str(self.port),
        ]  # fmt: skip
        log = (self.data_dir / LOG_FILE).open("ab")
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        finally:
            log.close()
        info = BrokerInfo(self._proc.pid, self.host, self.port, self.data_dir)
        (self.data_dir / PID_FILE).write_text(
            json.dumps({"pid": info.pid, "host": info.host, "port": info.port})
        )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return info

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not port_open(self.host, self.port):
            if self._proc is not None and self._proc.poll() is not None:
                tail = (self.data_dir / LOG_FILE).read_text(errors="replace")[-500:]
                raise BrokerError(f"noida-db exited with {self._proc.returncode}: {tail.strip()}")
            if time.monotonic() > deadline:
                raise BrokerError(f"noida-db did not open {self.bootstrap} in {timeout_s:.0f} s")
            time.sleep(0.02)
        wait_until_ready(self.bootstrap, max(1.0, deadline - time.monotonic()))

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop gracefully; True when the broker saved and exited by itself."""
        if self._proc is None:
            return True
        clean = stop_pid(self._proc.pid, timeout_s)
        self._proc.wait()
        self._proc = None
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / PID_FILE).unlink()
        return clean

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_broker(data_dir: Path, port: int | None = None) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(data_dir, port or free_port())
    with broker:
        yield broker


def admin_client(brokers: str) -> AdminClient:
    return AdminClient(client_config(brokers))


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics the engine needs. Inputs get the partition count of the state tables."""
    names = settings.topic_names
    retention = {"retention.ms": str(settings.retention_ms)}
    n = settings.partitions
    return [
        TopicSpec(names.transactions, n, retention),
        TopicSpec(names.labels, n, retention),
        TopicSpec(names.decisions, n, retention),
        TopicSpec(names.alerts, n, retention),
        TopicSpec(names.dead_letters, n, retention),
    ]


def ensure_topics(
    settings: Settings, extra: Sequence[TopicSpec] = (), timeout_s: float = 10.0
) -> list[str]:
    """Create missing topics; refuse input topics whose partition count differs from the tables'.

    ``extra`` adds topics of other components (a sink's retry and dead-letter topics).
    Returns the names created. Faust does not create its input topics, and an auto-created
    1-partition topic would crash the agents with PartitionsMismatch, hence this step.
    """
    admin = admin_client(settings.brokers)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.brokers}: {exc}") from None
    names = settings.topic_names
    must_match = {names.transactions, names.labels}
    wanted = [*topic_specs(settings), *extra]
    for spec in wanted:
        if spec.name in existing and spec.name in must_match:
            have = len(existing[spec.name].partitions)
            if have != spec.partitions:
                raise BrokerError(
                    f"topic {spec.name!r} has {have} partitions but the worker's tables use "
                    f"{spec.partitions}; recreate it or run with --partitions {have}"
                )
    missing = [s for s in wanted if s.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(s.name, s.partitions, settings.replication_factor, config=s.config)
            for s in missing
        ],
        operation_timeout=timeout_s,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"cannot create topic {name!r}: {exc}") from None
    return created
