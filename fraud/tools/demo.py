"""``fraud demo``: the whole pipeline once, on a local broker, with a summary.

Starts a broker (Apache Kafka, or the emulator where Java is missing; none with
``external``), creates the topics, starts a worker
process, simulates a small labelled file, replays it with a few deliberately bad messages,
reads every decision back, prints a summary and stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer

from fraud.broker import LOCAL_BROKER, BrokerChoice, broker_in_use, ensure_topics
from fraud.contracts.partitioning import TRANSACTION, type_headers
from fraud.contracts.units import DAY_MS, LABEL_DELAY_DAYS
from fraud.ingest.replay import Pacing, ReplayStats, producer, replay
from fraud.kafka_config import produce
from fraud.scoring.warmup import warmup
from fraud.settings import Settings
from fraud.sinks.webhooks.envelope import percentile
from fraud.tools.local_receivers import MailCatcher, WebhookReceiver
from fraud.tools.simulate import SimulationConfig, fraud_stats, simulate, write_file
from fraud.tools.tail import open_consumer
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Action, Decision
from fraud.v1.transaction_pb2 import Transaction

Say = Callable[[str], None]


class DemoError(RuntimeError):
    pass


@dataclass
class DemoSummary:
    transactions: int = 0
    labels: int = 0
    decisions: int = 0
    alerts_by_action: dict[str, int] = field(default_factory=dict)
    alerts_on_fraud: int = 0
    frauds: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[int] = field(default_factory=list)
    replay_seconds: float = 0.0
    worker_seconds: float = 0.0
    startup_seconds: float = 0.0
    wall_seconds: float = 0.0
    webhooks_delivered: int | None = None
    webhooks_rejected: int = 0
    webhook_latencies_ms: list[float] = field(default_factory=list)
    emails: int | None = None
    emails_expected: int = 0
    broker: str = ""

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def lines(self) -> list[str]:
        alerts = sum(self.alerts_by_action.values())
        by_action = ", ".join(f"{k} {v}" for k, v in sorted(self.alerts_by_action.items()))
        dead = ", ".join(f"{k} {v}" for k, v in sorted(self.dead_letters.items())) or "none"
        rate = self.decisions / self.worker_seconds if self.worker_seconds > 0 else 0.0
        return [
            "fraud demo summary",
            f"  broker              {self.broker}",
            f"  transactions in     {self.transactions:>9,}  (+ {self.labels:,} labels)",
            f"  decisions out       {self.decisions:>9,}  (one per valid transaction)",
            f"  alerts raised       {alerts:>9,}  ({by_action or 'none'}); "
            f"{self.alerts_on_fraud:,} on the {self.frauds:,} labelled frauds",
            f"  dead letters        {sum(self.dead_letters.values()):>9,}  ({dead})",
            f"  decision latency    p50 {self.percentile(0.50):.0f} ms, "
            f"p99 {self.percentile(0.99):.0f} ms  (Kafka ingest -> decision)",
            f"  worker throughput   {rate:>9,.0f} tx/s  (first ingest -> last decision)",
            f"  worker start        {self.startup_seconds:9.1f} s   wall time "
            f"{self.wall_seconds:.1f} s",
            *self.sink_lines(alerts),
        ]

    def sink_lines(self, alerts: int) -> list[str]:
        if self.webhooks_delivered is None or self.emails is None:
            return []
        lat = self.webhook_latencies_ms
        return [
            f"  webhooks            {self.webhooks_delivered:>9,}  of {alerts:,} alerts, "
            f"signatures verified ({self.webhooks_rejected} rejected); alert -> receiver "
            f"p50 {percentile(lat, 0.5):.0f} ms, p99 {percentile(lat, 0.99):.0f} ms",
            f"  emails (SMTP)       {self.emails:>9,}  (one per customer and alert type; "
            f"{self.emails_expected:,} expected)",
        ]


# Sent as transactions (fraud.contracts.partitioning), so they fail on what they hold.
BAD_HEADERS = type_headers(TRANSACTION)
BAD_MESSAGES: list[tuple[bytes, bytes]] = [
    (b"bad-1", b"\xff\xfenot a protobuf"),
    (
        b"c-neg",
        Transaction(
            transaction_id="bad-negative",
            customer_id="c-neg",
            terminal_id="t",
            amount_minor=-500,
            currency="EUR",
            event_time_ms=1_522_540_800_000,
        ).SerializeToString(),
    ),
    (
        b"c-cur",
        Transaction(
            transaction_id="bad-currency",
            customer_id="c-cur",
            terminal_id="t",
            amount_minor=500,
            currency="XXX",
            event_time_ms=1_522_540_800_000,
        ).SerializeToString(),
    ),
]


def _kafka_args(settings: Settings) -> list[str]:
    args = ["--brokers", settings.brokers, "--app-id", settings.app_id]
    if settings.topic_prefix:
        args += ["--topic-prefix", settings.topic_prefix]
    return args


@contextlib.contextmanager
def managed_process(
    name: str,
    args: list[str],
    log_path: Path,
    say: Say,
    ready_file: Path | None = None,
    timeout_s: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``fraud ARGS`` as a child process until the block ends; stop it with SIGTERM.

    With ``ready_file``, wait until the child creates it (or dies, or ``timeout_s`` passes).
    """
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fraud", *args], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while ready_file is not None and not ready_file.exists():
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-800:]
                raise DemoError(f"{name} exited with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise DemoError(f"{name} not ready after {timeout_s:.0f} s (log: {log_path})")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop in 30 s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def worker_process(
    settings: Settings, workdir: Path, say: Say, timeout_s: float = 60.0
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``fraud worker`` as a child process, ready (partitions assigned, kernels warm).

    numba's cache is filled here first, so that ``timeout_s`` never pays for a first
    compilation on a new or busy machine (about a minute cold); loading it is the child's."""
    warmed = time.monotonic()
    warmup()
    say(f"kernels warm in {time.monotonic() - warmed:.1f} s")
    ready = workdir / "worker.ready"
    args = [
        "worker", *_kafka_args(settings),
        "--data-dir", str(settings.data_dir),
        "--partitions", str(settings.partitions),
        "--web-port", "0",
        "--ready-file", str(ready),
        "--label-wait-ms", str(settings.label_wait_ms),
        "--processing-guarantee", settings.processing_guarantee,
        "--standby-replicas", str(settings.standby_replicas),
        *([] if settings.metrics_port is None else ["--metrics-port", str(settings.metrics_port)]),
        *([] if settings.model_path is None else ["--model", str(settings.model_path)]),
        *([] if settings.single_stage else ["--two-stage"]),
    ]  # fmt: skip
    return managed_process("worker", args, workdir / "worker.log", say, ready, timeout_s)


WEBHOOK_SECRET = "demo-secret"  # noqa: S105 - a local demo receiver
DESK_EMAIL = "fraud-desk@demo.invalid"


def write_sink_configs(workdir: Path, webhook_url: str, smtp_port: int) -> tuple[Path, Path]:
    subscriptions = workdir / "subscriptions.toml"
    subscriptions.write_text(
        f'''[[subscription]]
id = "demo-receiver"
url = "{webhook_url}"
secrets = ["{WEBHOOK_SECRET}"]
min_action = "REVIEW"
'''
    )
    notifier = workdir / "notifier.toml"
    notifier.write_text(
        f'''rate_limit_per_minute = 0
dedupe_window_s = 600

[smtp]
host = "127.0.0.1"
port = {smtp_port}
starttls = false
sender = "fraud-demo@demo.invalid"

[[route]]
name = "desk"
topic = "alerts"
format = "alert"
channel = "email"
to = ["{DESK_EMAIL}"]
'''
    )
    return subscriptions, notifier


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def collect(
    consumer: Consumer, want: int, timeout_s: float, handle: Callable[[bytes], None]
) -> int:
    """Read until ``want`` messages arrived or nothing new came for ``timeout_s``."""
    got = 0
    last = time.monotonic()
    while got < want and time.monotonic() - last < timeout_s:
        for msg in consumer.consume(1000, 0.2):
            if msg.error() is None:
                handle(msg.value() or b"")
                got += 1
                last = time.monotonic()
    return got


def drain(consumer: Consumer, quiet_s: float, handle: Callable[[bytes], None]) -> int:
    return collect(consumer, sys.maxsize, quiet_s, handle)


def run_demo(
    base: Settings,
    *,
    choice: BrokerChoice = LOCAL_BROKER,
    workdir: Path | None = None,
    customers: int = 200,
    days: int = 30,
    rate: float | None = 500.0,
    seed: int = 0,
    sinks: bool = True,
    say: Say = print,
    progress: Callable[[int], None] | None = None,
) -> DemoSummary:
    started = time.monotonic()
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="fraud-demo-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    summary = DemoSummary()
    brokers = contextlib.ExitStack()
    try:
        use = brokers.enter_context(broker_in_use(choice, base.brokers, root / "broker", say=say))
        summary.broker = use.describe()
        settings = base.with_overrides(data_dir=root / "state", brokers=use.bootstrap)
        created = ensure_topics(settings)
        say(f"topics: {', '.join(created) if created else 'already there'}")

        sim = simulate(
            SimulationConfig(
                n_customers=customers, n_terminals=2 * customers, n_days=days, seed=seed
            )
        )
        data = root / "transactions.csv"
        write_file(sim, data)
        stats = fraud_stats(sim)
        fraud_ids = {str(i) for i in sim.transaction_id[sim.fraud == 1].tolist()}
        summary.frauds = int(stats["n_fraud"])
        say(
            f"simulated {len(sim):,} transactions of {customers} customers over {days} days "
            f"({stats['fraud_rate']:.2%} fraud) -> {data}"
        )

        stack = contextlib.ExitStack()
        receiver: WebhookReceiver | None = None
        mail: MailCatcher | None = None
        if sinks:
            receiver = WebhookReceiver(WEBHOOK_SECRET.encode()).start()
            stack.callback(receiver.stop)
            mail = MailCatcher().start()
            stack.callback(mail.stop)
            subscriptions, notifier = write_sink_configs(root, receiver.url, mail.port)
            kafka = _kafka_args(settings)
            stack.enter_context(
                managed_process(
                    "webhooks",
                    ["webhooks", "--subscriptions", str(subscriptions), *kafka],
                    root / "webhooks.log",
                    say,
                )
            )
            stack.enter_context(
                managed_process(
                    "notifier",
                    ["notifier", "--config", str(notifier), *kafka],
                    root / "notifier.log",
                    say,
                )
            )
            say(f"sinks: webhooks -> {receiver.url}, notifier -> SMTP 127.0.0.1:{mail.port}")
        t0 = time.monotonic()
        with stack, worker_process(settings, root, say):
            summary.startup_seconds = time.monotonic() - t0
            say(f"worker ready in {summary.startup_seconds:.1f} s")
            names = settings.topic_names
            consumers: list[Consumer] = []
            try:
                pace = "as fast as possible" if rate is None else f"at {rate:,.0f} tx/s"
                say(f"replaying {pace}, labels {LABEL_DELAY_DAYS} days after each transaction ...")
                stats_replay: ReplayStats = replay(
                    settings,
                    data,
                    pacing=Pacing(rate=rate),
                    label_delay_ms=LABEL_DELAY_DAYS * DAY_MS,
                    progress=progress,
                )
                bad = producer(settings.brokers)
                for key, value in BAD_MESSAGES:
                    produce(bad, names.transactions, value, key=key, headers=BAD_HEADERS)
                bad.flush(30)
                # Opened now, not during the replay: an idle consumer re-fetches in a loop
                # against the embedded broker and would take CPU from the worker.
                decisions, alerts, dead = (
                    open_consumer(settings, topic, from_beginning=True)
                    for topic in (names.decisions, names.alerts, names.dead_letters)
                )
                consumers += [decisions, alerts, dead]
                summary.transactions = stats_replay.transactions + len(BAD_MESSAGES)
                summary.labels = stats_replay.labels
                summary.replay_seconds = stats_replay.seconds
                say(
                    f"replayed {stats_replay.transactions:,} transactions in "
                    f"{stats_replay.seconds:.1f} s (+ {len(BAD_MESSAGES)} bad messages)"
                )
                first_ingest: list[int] = []
                last_decided: list[int] = []

                def on_decision(value: bytes) -> None:
                    d = Decision()
                    d.ParseFromString(value)
                    summary.latencies_ms.append(d.decided_at_ms - d.ingested_at_ms)
                    first_ingest.append(d.ingested_at_ms)
                    last_decided.append(d.decided_at_ms)

                summary.decisions = collect(decisions, stats_replay.transactions, 60, on_decision)
                if first_ingest:
                    summary.worker_seconds = (max(last_decided) - min(first_ingest)) / 1000

                email_keys: set[tuple[str, str]] = set()

                def on_alert(value: bytes) -> None:
                    a = Alert()
                    a.ParseFromString(value)
                    email_keys.add((a.decision.customer_id, a.type))
                    kind = Action.Name(a.decision.action)
                    summary.alerts_by_action[kind] = summary.alerts_by_action.get(kind, 0) + 1
                    if a.decision.transaction_id in fraud_ids:
                        summary.alerts_on_fraud += 1

                def on_dead(value: bytes) -> None:
                    letter = DeadLetter()
                    letter.ParseFromString(value)
                    summary.dead_letters[letter.reason] = (
                        summary.dead_letters.get(letter.reason, 0) + 1
                    )

                collect(dead, len(BAD_MESSAGES), 10, on_dead)
                drain(alerts, 1.0, on_alert)
                if receiver is not None and mail is not None:
                    total = sum(summary.alerts_by_action.values())
                    wait_for(lambda: receiver.stats.delivered >= total, 60)
                    wait_for(lambda: len(mail.messages) >= len(email_keys), 60)
                    summary.webhooks_delivered = receiver.stats.delivered
                    summary.webhooks_rejected = receiver.stats.rejected
                    summary.webhook_latencies_ms = list(receiver.stats.latencies_ms)
                    summary.emails = len(mail.messages)
                    summary.emails_expected = len(email_keys)
            finally:
                for consumer in consumers:
                    consumer.close()
        say("worker stopped")
    finally:
        brokers.close()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    summary.wall_seconds = time.monotonic() - started
    return summary
