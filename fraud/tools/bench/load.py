"""Open-loop load: transactions produced on a fixed schedule, decisions read back, latency.

Send times are scheduled (``start + i / rate``), not paced by replies, so a stalled worker
shows up as latency instead of as a slower sender (no coordinated omission). Latency is from
the scheduled send time of a transaction to the moment its Decision is read back from the
decisions topic, measured on one clock in one process. Transactions come from the simulator
(realistic customers, terminals and amounts) with their event time set to the send time, so
the worker sees live traffic. Batched (``batch=True``), transactions travel as TransactionBatch
records of what fell due within ``BATCH_WINDOW_S``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer

from fraud.broker import TopicSpec, ensure_topics
from fraud.contracts.partitioning import (
    CONTRACT_HEADER,
    TRANSACTION,
    TRANSACTION_BATCH,
    group_by_partition,
)
from fraud.kafka_config import aiokafka_config, make_producer
from fraud.settings import Settings
from fraud.tools.bench.report import LatencyRecorder
from fraud.tools.simulate import SimulationConfig, simulate_at_least
from fraud.v1.decision_pb2 import Decision
from fraud.v1.transaction_pb2 import Transaction, TransactionBatch
from fraud.worker import fetch_backoff

# Batched load: how long the sender lingers after the first transaction due before it sends
# what is due as one TransactionBatch per partition, as a gateway batching requests would.
BATCH_WINDOW_S = 0.005

Say = Callable[[str], None]


@dataclass
class LoadResult:
    rate: float
    sent: int
    received: int
    # Decisions of transactions sent after the warm-up.
    recorder: LatencyRecorder
    # Latency (s) of the very first transaction after the worker became ready.
    first_s: float | None
    # How far the sender fell behind its schedule at worst (s): > 0 means the sender, not the
    # worker, limited the rate.
    max_send_lag_s: float
    seconds: float
    decided_by_action: dict[int, int] = field(default_factory=dict)
    # Median of (decision time in the worker - scheduled send time), ms: the rest of the
    # latency is delivering the decision and reading it back.
    decided_p50_ms: float = float("nan")
    decided_p99_ms: float = float("nan")


def transactions(n: int, customers: int, seed: int) -> list[Transaction]:
    """``n`` simulated transactions (event times are set at send time)."""
    sim, _ = simulate_at_least(
        n, SimulationConfig(n_customers=customers, n_terminals=2 * customers, n_days=1, seed=seed)
    )
    cust = sim.customer_id[:n].tolist()
    term = sim.terminal_id[:n].tolist()
    amount = sim.amount_cents[:n].tolist()
    return [
        Transaction(
            transaction_id=f"b{i}",
            customer_id=f"C{c}",
            terminal_id=f"T{t}",
            amount_minor=int(a),
            currency="EUR",
        )
        for i, (c, t, a) in enumerate(zip(cust, term, amount, strict=True))
    ]


class _Reader:
    """Reads decisions in a thread (aiokafka, with the empty-fetch pause) and records the time
    each arrived."""

    def __init__(self, settings: Settings, n: int) -> None:
        self.settings = settings
        self.arrived = np.full(n, np.nan)
        # decided_at_ms - ingested_at_ms (the scheduled send time): the part before the
        # decision left the worker.
        self.decided_after_ms = np.full(n, np.nan)
        self.actions: dict[int, int] = {}
        self.count = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("decision reader did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._consume())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _consume(self) -> None:
        fetch_backoff.install(max_pause_s=0.001)
        topic = self.settings.topic_names.decisions
        consumer = AIOKafkaConsumer(
            **aiokafka_config(self.settings, enable_auto_commit=False, fetch_max_wait_ms=5,
                              max_poll_records=10_000)
        )  # fmt: skip
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            self._ready.set()
            arrived = self.arrived
            decision = Decision()
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=50)
                now = time.perf_counter()
                for records in batch.values():
                    for rec in records:
                        decision.ParseFromString(rec.value or b"")
                        tid = decision.transaction_id
                        if tid.startswith("b"):
                            i = int(tid[1:])
                            if 0 <= i < arrived.size and arrived[i] != arrived[i]:
                                arrived[i] = now
                                self.decided_after_ms[i] = (
                                    decision.decided_at_ms - decision.ingested_at_ms
                                )
                                self.count += 1
                                self.actions[decision.action] = (
                                    self.actions.get(decision.action, 0) + 1
                                )
        finally:
            await consumer.stop()


def _warm_up(producer: Producer, settings: Settings) -> None:
    """Deliver one message to a bench-only topic before the schedule starts: an idempotent
    producer first fetches its producer id (measured: about 300 ms here), which would
    otherwise land on the first transaction and be charged to the worker."""
    warm = TopicSpec(f"{settings.topic_prefix}bench-warmup", 1, {})
    ensure_topics(settings, [warm])
    producer.list_topics(settings.topic_names.transactions, timeout=10)
    producer.produce(warm.name, value=b"")
    if producer.flush(10):
        raise RuntimeError("the load generator could not deliver its warm-up message")


def run_load(
    settings: Settings,
    rate: float,
    duration_s: float,
    *,
    warmup_s: float = 3.0,
    customers: int = 2000,
    seed: int = 0,
    drain_s: float = 10.0,
    say: Say = print,
    txs: list[Transaction] | None = None,
    batch: bool = False,
    batch_window_s: float = BATCH_WINDOW_S,
) -> LoadResult:
    """Send ``rate`` transactions/s for ``warmup_s + duration_s`` against a running worker;
    wait up to ``drain_s`` for the last decisions."""
    n = int(rate * (warmup_s + duration_s))
    txs = txs[:n] if txs is not None else transactions(n, customers, seed)
    n = len(txs)
    topic = settings.topic_names.transactions
    keys = [tx.customer_id.encode() for tx in txs]
    producer = make_producer(settings, **{"linger.ms": 0, "enable.idempotence": True})
    _warm_up(producer, settings)
    reader = _Reader(settings, n)
    reader.start()
    scheduled = np.empty(n)
    worst_lag = 0.0
    interval = 1.0 / rate
    wall0 = time.time() + 0.2
    start = time.perf_counter() + 0.2
    try:
        i = 0
        while i < n:
            # Sleep (never spin: the worker and the broker share this machine) until the next
            # send is due, then send everything due by now.
            # Batched, the sender lingers like a gateway: it sends once the first transaction
            # due has waited batch_window_s (that wait counts in its latency).
            ahead = start + i * interval + (batch_window_s if batch else 0.0) - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            now = time.perf_counter()
            lag = now - (start + i * interval) - (batch_window_s if batch else 0.0)
            worst_lag = max(worst_lag, lag)
            due: list[Transaction] = []
            while i < n and start + i * interval <= now:
                tx = txs[i]
                at_ms = int((wall0 + i * interval) * 1000)
                tx.event_time_ms = at_ms
                scheduled[i] = start + i * interval
                if batch:
                    due.append(tx)
                else:
                    producer.produce(
                        topic, key=keys[i], value=tx.SerializeToString(), timestamp=at_ms,
                        headers=[(CONTRACT_HEADER, TRANSACTION)],
                    )  # fmt: skip
                i += 1
            if due:
                # What fell due together goes as one TransactionBatch per partition.
                for partition, group in group_by_partition(
                    due, [tx.customer_id for tx in due], settings.partitions
                ):
                    producer.produce(
                        topic, value=TransactionBatch(transactions=group).SerializeToString(),
                        partition=partition, headers=[(CONTRACT_HEADER, TRANSACTION_BATCH)],
                    )  # fmt: skip
            producer.poll(0)
        producer.flush(30)
        end_send = time.perf_counter()
        deadline = end_send + drain_s
        while reader.count < n and time.perf_counter() < deadline:
            time.sleep(0.01)
    finally:
        reader.stop()
    seconds = time.perf_counter() - start
    recorder = LatencyRecorder()
    arrived = reader.arrived
    first = None if np.isnan(arrived[0]) else float(arrived[0] - scheduled[0])
    warm = int(rate * warmup_s)
    for i in range(warm, n):
        if arrived[i] == arrived[i]:
            recorder.record(scheduled[i] - start, arrived[i] - scheduled[i])
    missing = int(np.isnan(arrived[warm:]).sum())
    if missing:
        # Not decided in time: count them at the longest wait, so they cannot hide.
        for j in (np.flatnonzero(np.isnan(arrived[warm:])) + warm).tolist():
            recorder.record(scheduled[j] - start, time.perf_counter() - scheduled[j])
        say(f"  {missing:,} decisions did not arrive within {drain_s:.0f} s of the last send")
    return LoadResult(
        rate=rate,
        sent=n,
        received=reader.count,
        recorder=recorder,
        first_s=first,
        max_send_lag_s=worst_lag,
        seconds=seconds,
        decided_by_action=dict(reader.actions),
        decided_p50_ms=float(np.nanpercentile(reader.decided_after_ms[warm:], 50)),
        decided_p99_ms=float(np.nanpercentile(reader.decided_after_ms[warm:], 99)),
    )
