"""The processes of a fault run: a 3-node Kafka cluster, worker processes, the replay, a
reader of everything the workers write, and a writer of malformed input.

Each class owns its processes or thread and stops them in ``close`` (idempotent), so the
suite can tear everything down on an exception or Ctrl-C. Timing here only paces the faults
(a delay before a kill, how long a broker stays down); what is measured comes from what the
reader saw.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from fraud.broker import KafkaCluster, ensure_topics, wait_until_ready
from fraud.broker.kafka import install
from fraud.contracts.units import LABEL_DELAY_DAYS
from fraud.kafka_config import make_consumer, make_producer
from fraud.settings import Settings
from fraud.tools.faults.malformed import MalformedSource
from fraud.tools.faults.outcome import Seen
from fraud.tools.faults.plan import active_controller
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Decision

Say = Callable[[str], None]
NODES = 3
HEAP_MB = 384
# Faust reads these from the environment: a SIGKILLed member then leaves the group after 10 s
# instead of the default 60 s, so 20 kills fit in minutes (the worker's own settings stay).
WORKER_ENV = {"BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1"}
LABEL_WAIT_MS = 10_000  # long, so that a slow label consumer does not blur the comparison


class HarnessError(RuntimeError):
    pass


def fault_settings(brokers: str, name: str, workdir: Path) -> Settings:
    """One scenario's topics (prefixed by its name) and consumer group on the shared cluster."""
    return Settings(
        brokers=brokers, app_id=f"faults-{name}", topic_prefix=f"{name}-", partitions=4,
        replication_factor=NODES, min_insync_replicas=2, data_dir=workdir, web_port=None,
        label_wait_ms=LABEL_WAIT_MS,
    )  # fmt: skip


def child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(WORKER_ENV)
    env["FRAUD_REPLICATION_FACTOR"] = str(settings.replication_factor)
    env["FRAUD_MIN_INSYNC_REPLICAS"] = str(settings.min_insync_replicas)
    return env


def kafka_args(settings: Settings) -> list[str]:
    return [
        "--brokers", settings.brokers, "--topic-prefix", settings.topic_prefix,
        "--partitions", str(settings.partitions),
    ]  # fmt: skip


class Cluster:
    """The 3-node cluster, with the broker faults of scenario 3."""

    def __init__(self, data_dir: Path, say: Say) -> None:
        self.kafka = KafkaCluster(data_dir, nodes=NODES, say=say)
        self.kafka.heap_mb = HEAP_MB
        self.say = say

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    def start(self) -> None:
        self.kafka.start()

    def leader(self, topic: str, partition: int = 0) -> int:
        consumer = make_consumer(self.bootstrap, **{"group.id": "faults-meta"})
        try:
            meta = consumer.list_topics(topic, timeout=10)
        finally:
            consumer.close()
        info = meta.topics[topic].partitions.get(partition)
        if info is None or info.leader < 0:
            raise HarnessError(f"{topic}[{partition}] has no leader")
        return int(info.leader)

    def controller(self) -> int:
        logs = []
        for node in range(1, NODES + 1):
            log = self.kafka.node_dir(node) / "server.log"
            logs.append(log.read_text(errors="replace") if log.is_file() else "")
        found = active_controller(logs)
        if found is None:
            raise HarnessError("no node's log names the active controller")
        return found

    def kill_and_restart(self, node: int, down_s: float) -> None:
        self.kafka.kill(node, signal.SIGKILL)
        time.sleep(down_s)  # the outage itself
        self.kafka.start_node(node, install(self.say))
        wait_until_ready(self.bootstrap, 120.0, NODES)

    def restart(self, down_s: float) -> None:
        self.kafka.stop()
        time.sleep(down_s)
        self.kafka.start()

    def close(self) -> None:
        if self.kafka.layout is not None and self.kafka.pids:
            self.kafka.stop()


class WorkerProcess:
    """``fraud worker`` on its own data dir, restartable on the same one."""

    def __init__(self, settings: Settings, home: Path, name: str) -> None:
        self.settings = settings
        self.home = home
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.pids: list[int] = []  # of every start, to check that none is left
        home.mkdir(parents=True, exist_ok=True)

    @property
    def ready_file(self) -> Path:
        return self.home / "ready"

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        self.starts += 1
        args = [
            sys.executable, "-m", "fraud", "worker", *kafka_args(self.settings),
            "--app-id", self.settings.app_id, "--data-dir", str(self.home / "data"),
            "--web-port", "0", "--ready-file", str(self.ready_file),
            "--label-wait-ms", str(self.settings.label_wait_ms),
        ]  # fmt: skip
        with (self.home / "worker.log").open("ab") as log:
            log.write(f"\n=== start {self.starts} ===\n".encode())
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_env(self.settings), start_new_session=True,
            )  # fmt: skip
        self.pids.append(self.proc.pid)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.proc is None or self.proc.poll() is not None:
                raise HarnessError(f"{self.name} exited before it was ready (see {self.home})")
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name} not ready after {timeout_s:.0f} s")
            time.sleep(0.05)

    def exited(self) -> int | None:
        """The exit code if the process ended by itself."""
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        self.proc = None

    def terminate(self, timeout_s: float = 60.0) -> bool:
        """SIGTERM and wait; SIGKILL after ``timeout_s``. True if it stopped by itself."""
        if self.proc is None:
            return True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        self.proc = None
        return True


# Labels go this far ahead of their time (event days, of the 7 of the delay): the clean and the
# fault runs then read every label before the transactions it counts for, instead of racing
# them (``fraud.ingest.replay``); at these replays' 2-5 event days a second, 1 day of lead
# (0.2 s at the clean run's pace) was not enough for every label.
LABEL_LEAD_DAYS = 6.0


class Replayer:
    """``fraud replay FILE --rate R`` with labels, as a child process."""

    def __init__(self, settings: Settings, path: Path, rate: float, log: Path) -> None:
        self.settings = settings
        self.path = path
        self.rate = rate
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            sys.executable, "-m", "fraud", "replay", str(self.path), *kafka_args(self.settings),
            "--rate", f"{self.rate:.3f}", "--label-delay-days", str(LABEL_DELAY_DAYS),
            "--label-lead-days", str(LABEL_LEAD_DAYS), "--no-progress", "--no-create-topics",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_env(self.settings), start_new_session=True,
            )  # fmt: skip

    def done(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def seen_of(decision: Decision, partition: int, at: float) -> Seen:
    return Seen(
        decision.transaction_id, tuple(sorted(decision.features.items())), int(decision.action),
        partition, at,
    )  # fmt: skip


class Reader:
    """Reads decisions, alerts and dead letters from the start, read committed, in a thread."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        names = settings.topic_names
        self.topics = (names.decisions, names.alerts, names.dead_letters)
        self.settings = settings
        self.clock = clock
        self.decisions: list[Seen] = []
        self.alert_ids: list[str] = []
        self.dead_reasons: Counter[str] = Counter()
        self.last_message_s = clock()
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer: Consumer = make_consumer(
            settings, **{"group.id": f"faults-reader-{settings.app_id}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"},
        )  # fmt: skip
        assignment = []
        for topic in self.topics:
            meta = self._consumer.list_topics(topic, timeout=10)
            for p in sorted(meta.topics[topic].partitions):
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        self._consumer.assign(assignment)
        self._thread = threading.Thread(target=self._run, name="faults-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decisions, alerts, dead = self.topics
        try:
            while not self._stop.is_set():
                batch = self._consumer.consume(1000, 0.2)
                now = self.clock()
                with self._lock:
                    for msg in batch:
                        if msg.error() is not None:
                            continue
                        self.last_message_s = now
                        value = msg.value() or b""
                        if msg.topic() == decisions:
                            d = Decision()
                            d.ParseFromString(value)
                            self.decisions.append(seen_of(d, msg.partition() or 0, now))
                        elif msg.topic() == alerts:
                            a = Alert()
                            a.ParseFromString(value)
                            self.alert_ids.append(a.alert_id)
                        elif msg.topic() == dead:
                            letter = DeadLetter()
                            letter.ParseFromString(value)
                            self.dead_reasons[letter.reason or "(no reason)"] += 1
        except KafkaException as exc:
            self.error = str(exc)

    def counts(self) -> tuple[int, int]:
        """(distinct transactions decided, dead letters) so far."""
        with self._lock:
            return len({d.transaction_id for d in self.decisions}), sum(self.dead_reasons.values())

    def snapshot(self) -> tuple[list[Seen], list[str], Counter[str]]:
        with self._lock:
            return list(self.decisions), list(self.alert_ids), Counter(self.dead_reasons)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


class MalformedWriter:
    """Produces ``count`` malformed messages to the transactions topic at ``rate``/s."""

    def __init__(self, settings: Settings, count: int, rate: float, seed: int) -> None:
        self.settings = settings
        self.count = count
        self.rate = rate
        self.seed = seed
        self.sent = 0
        self.kinds: Counter[str] = Counter()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-malformed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        topic = self.settings.topic_names.transactions
        producer = make_producer(self.settings, **{"message.max.bytes": 2_000_000})
        failures: list[str] = []

        def delivered(err: object, _msg: object) -> None:
            if err is not None:
                failures.append(str(err))

        started = time.monotonic()
        try:
            for i, m in zip(range(self.count), MalformedSource(self.seed), strict=False):
                if self._stop.is_set():
                    break
                ahead = i / self.rate - (time.monotonic() - started)
                if ahead > 0.05:
                    time.sleep(ahead)  # pacing, not a wait for a condition
                while True:
                    try:
                        producer.produce(
                            topic, key=m.key, value=m.value, headers=m.headers,
                            on_delivery=delivered,
                        )  # fmt: skip
                        break
                    except BufferError:
                        producer.poll(0.1)
                producer.poll(0)
                self.sent += 1
                self.kinds[m.kind] += 1
            left = producer.flush(120)
            if left or failures:
                self.error = f"{left} not flushed, {len(failures)} failed: {failures[:1]}"
        except Exception as exc:  # reported in the row; the suite goes on
            self.error = repr(exc)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(150)


def group_lag(settings: Settings) -> list[str]:
    """Where the workers' consumer group is behind: ``topic[partition] committed/end`` for each
    partition of the input topics and the worker's own (repartition) topics with records past
    the group's committed offset (read without joining the group)."""
    names = settings.topic_names
    inputs = {names.transactions, names.labels}
    outputs = {names.decisions, names.alerts, names.dead_letters}
    consumer = make_consumer(settings, **{"group.id": settings.app_id})
    out: list[str] = []
    try:
        meta = consumer.list_topics(timeout=10)
        tps = [
            TopicPartition(name, p)
            for name, topic in sorted(meta.topics.items())
            if name in inputs
            or (
                name.startswith(settings.topic_prefix)
                and name not in outputs
                and settings.app_id in name
            )
            for p in sorted(topic.partitions)
        ]
        for tp in consumer.committed(tps, timeout=10):
            _low, high = consumer.get_watermark_offsets(tp, timeout=10)
            done = max(tp.offset, 0)
            if high > done:
                out.append(f"{tp.topic}[{tp.partition}] {tp.offset}/{high}")
    except KafkaException as exc:
        out.append(f"lag unknown: {exc}")
    finally:
        consumer.close()
    return out


def make_topics(settings: Settings) -> None:
    ensure_topics(settings)


def join_all(workers: Sequence[WorkerProcess]) -> None:
    for worker in workers:
        worker.wait_ready()
