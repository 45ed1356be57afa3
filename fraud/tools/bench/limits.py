"""The limits the engine is compared with, measured on the same broker in the same run.

* ``passthrough``: confluent-kafka consuming a topic and producing every message to another,
  no processing: what the broker and the client allow on this machine.
* ``bare_faust``: a Faust agent over ``stream.take_events`` doing nothing: the framework's own
  ceiling for one Kafka message per transaction.
* ``naive``: the same features done the obvious way: a Faust agent taking one event at a time,
  pure-Python windows (the reference twins' logic: customer 1/7/30-day count and mean, terminal
  count in the delayed windows), and one table write per key per event.

``bare_faust`` and ``naive`` run as child processes (``python -m fraud.tools.bench.limits``), as a
worker would; each prints one JSON line with its count and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from bisect import bisect_right, insort
from collections.abc import AsyncIterator
from typing import Any

from fraud.contracts.units import DAY_MS, LABEL_DELAY_DAYS, WINDOW_DAYS
from fraud.kafka_config import (
    high_watermarks,
    make_consumer,
    make_producer,
    produce,
)
from fraud.settings import Settings


def fill(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    """Produce ``values`` (key, value) to ``topic`` and wait for all acknowledgements."""
    producer = make_producer(settings, **{"linger.ms": 5})
    for key, value in values:
        produce(producer, topic, value, key=key)
    if producer.flush(120):
        raise RuntimeError(f"could not fill {topic}")


def passthrough(
    settings: Settings, source: str, sink: str, n: int, timeout_s: float = 300
) -> float:
    """Seconds for confluent-kafka to consume ``n`` messages of ``source`` and produce each to
    ``sink`` (acknowledged)."""
    group = f"bench-pass-{uuid.uuid4().hex[:6]}"
    conf = {"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    consumer = make_consumer(settings, **conf)
    producer = make_producer(settings, **{"linger.ms": 5})
    consumer.subscribe([source])
    seen = 0
    started: float | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while seen < n and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                if msg.error() is not None:
                    continue
                if started is None:
                    started = time.perf_counter()
                produce(producer, sink, msg.value(), key=msg.key())
                seen += 1
            producer.poll(0)
        producer.flush(60)
    finally:
        consumer.close()
    if started is None or seen < n:
        raise RuntimeError(f"passthrough saw {seen:,} of {n:,} messages")
    return time.perf_counter() - started


def run_child(settings: Settings, kind: str, topic: str, n: int, timeout_s: float = 600) -> float:
    """Seconds for the ``kind`` child worker to consume ``n`` messages of ``topic``."""
    done = subprocess.run(
        [
            sys.executable, "-m", "fraud.tools.bench.limits", kind, "--brokers", settings.brokers,
            "--topic", topic, "--n", str(n), "--partitions", str(settings.partitions),
        ],
        capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    # Faust's worker sends stdout through its logging (to stderr): find the JSON line anywhere.
    found = [
        line[line.index('{"count"') :]
        for line in (done.stdout + "\n" + done.stderr).splitlines()
        if '{"count"' in line
    ]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{kind} failed ({done.returncode}): {done.stderr[-600:]}")
    result: dict[str, Any] = json.loads(found[-1])
    if result["count"] < n:
        raise RuntimeError(f"{kind} consumed {result['count']:,} of {n:,}")
    return float(result["seconds"])


# ------------------------------------------------------------------ child workers


class NaiveFeatures:
    """Per-event pure-Python windows, the way a first implementation would write them."""

    @staticmethod
    def customer(
        history: list[list[int]], t: int, amount: int
    ) -> tuple[list[list[int]], list[float]]:
        history = [h for h in history if h[0] > t - max(WINDOW_DAYS) * DAY_MS]
        history.append([t, amount])
        feats: list[float] = []
        for days in WINDOW_DAYS:
            inside = [a for ts, a in history if ts > t - days * DAY_MS]
            feats += [float(len(inside)), sum(inside) / len(inside)]
        return history, feats

    @staticmethod
    def terminal(times: list[int], t: int) -> tuple[list[int], list[float]]:
        horizon = t - (LABEL_DELAY_DAYS + max(WINDOW_DAYS)) * DAY_MS
        times = times[bisect_right(times, horizon) :]
        insort(times, t)
        end = t - LABEL_DELAY_DAYS * DAY_MS
        hi = bisect_right(times, end)
        return times, [float(hi - bisect_right(times, end - d * DAY_MS)) for d in WINDOW_DAYS]


def _child(kind: str, brokers: str, topic: str, n: int, partitions: int) -> None:
    import faust

    from fraud.v1.transaction_pb2 import Transaction
    from fraud.worker import fetch_backoff
    from fraud.worker.transport import LowLatencyTransport

    run_id = uuid.uuid4().hex[:6]
    app = faust.App(
        f"bench-{kind}-{run_id}", broker=f"kafka://{brokers}", store="memory://",
        topic_partitions=partitions, web_enabled=False, consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=4096, topic_disable_leader=True,
    )  # fmt: skip
    fetch_backoff.install()
    app.transport = LowLatencyTransport(app.conf.broker_consumer, app)
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    state = {"count": 0, "started": 0.0}

    def finish() -> None:
        seconds = time.perf_counter() - state["started"]
        print(json.dumps({"count": state["count"], "seconds": seconds}), flush=True)
        # A measuring child with in-memory state: nothing to clean up, and stopping Faust
        # from inside an agent is slow; leave at once.
        os._exit(0)

    if kind == "bare_faust":

        @app.agent(source)
        async def bare(stream: Any) -> AsyncIterator[None]:
            async for events in stream.take_events(1000, within=0.005):
                if not state["count"]:
                    state["started"] = time.perf_counter()
                state["count"] += len(events)
                if state["count"] >= n:
                    finish()
                yield None

    else:
        customers = app.Table(f"naive-customers-{run_id}", default=list, partitions=partitions)
        terminals = app.Table(f"naive-terminals-{run_id}", default=list, partitions=partitions)

        @app.agent(source)
        async def naive(stream: Any) -> AsyncIterator[None]:
            async for value in stream:
                if not state["count"]:
                    state["started"] = time.perf_counter()
                tx = Transaction.FromString(value)
                t = tx.event_time_ms
                history, _ = NaiveFeatures.customer(customers[tx.customer_id], t, tx.amount_minor)
                customers[tx.customer_id] = history
                times, _ = NaiveFeatures.terminal(terminals[tx.terminal_id], t)
                terminals[tx.terminal_id] = times
                state["count"] += 1
                if state["count"] >= n:
                    finish()
                yield None

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


def main() -> None:
    parser = argparse.ArgumentParser(description="a limit worker for fraud bench throughput")
    parser.add_argument("kind", choices=["bare_faust", "naive"])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    _child(args.kind, args.brokers, args.topic, args.n, args.partitions)


def end_offsets(settings: Settings, topic: str) -> int:
    """Sum of the high watermarks of ``topic``'s partitions."""
    return sum(high_watermarks(settings.brokers, [topic]).values())


if __name__ == "__main__":
    main()
