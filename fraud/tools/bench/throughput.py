"""``fraud bench throughput``: how many transactions one worker holds, against its limits.

In one run, on one broker engine (a fresh local broker per phase unless ``--external``):

1. limits (fraud.tools.bench.limits): confluent-kafka passthrough, a bare Faust agent, a naive
   one-event-at-a-time implementation, each over the same transactions;
2. rate steps: open-loop load at increasing rates, one Kafka record per transaction and then
   batched, until p99 passes 100 ms (twice: a miss is run once more): the highest rate each
   way with p99 under 100 ms;
3. replay: a labelled file from the simulator (1.75 million transactions by default, the
   handbook's size) replayed at full speed as TransactionBatch records (fraud labels only)
   through one worker that is already running: transactions/s from the start of the replay to
   the last decision.

Prints a table with the engine's figures as ratios of each limit; writes JSON and a PNG.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fraud.broker import LOCAL_BROKER, BrokerChoice, BrokerInUse, TopicSpec, ensure_topics
from fraud.contracts.units import DAY_MS, LABEL_DELAY_DAYS
from fraud.ingest.replay import replay
from fraud.settings import Settings
from fraud.tools.bench import usage
from fraud.tools.bench.latency import (
    broker,
    broker_record,
    environment,
    fresh,
    with_bench_model,
)
from fraud.tools.bench.limits import end_offsets, fill, passthrough, run_child
from fraud.tools.bench.load import run_load, transactions
from fraud.tools.bench.report import machine, table, write_json
from fraud.tools.demo import worker_process
from fraud.tools.simulate import SimulationConfig, simulate, write_file

Say = Callable[[str], None]
P99_LIMIT_MS = 100.0
TARGET_TX_S = 10_000.0
TARGET_REPLAY_S = 180.0


def measure_limits(
    settings: Settings, root: Path, n: int, n_naive: int, say: Say
) -> dict[str, float]:
    s = fresh(settings, root, "limits")
    source, sink = f"{s.topic_prefix}source", f"{s.topic_prefix}sink"
    ensure_topics(s, extra=[TopicSpec(source, s.partitions, {}), TopicSpec(sink, s.partitions, {})])
    txs = transactions(n, 5000, seed=1)
    now = int(time.time() * 1000)
    values = []
    for i, tx in enumerate(txs):
        tx.event_time_ms = now - (n - i) * 10
        values.append((tx.customer_id.encode(), tx.SerializeToString()))
    fill(s, source, values)
    say(f"limits: {n:,} transactions in {source}")
    out: dict[str, float] = {}
    out["passthrough"] = n / passthrough(s, source, sink, n)
    say(f"  confluent-kafka passthrough: {out['passthrough']:,.0f} msg/s")
    out["bare_faust"] = n / run_child(s, "bare_faust", source, n)
    say(f"  bare Faust agent: {out['bare_faust']:,.0f} events/s")
    out["naive"] = n_naive / run_child(s, "naive", source, n_naive)
    say(f"  naive (one event at a time, pure Python, table writes): {out['naive']:,.0f} tx/s")
    return out


def measure_replay(
    settings: Settings, root: Path, n_target: int, say: Say, used: BrokerInUse
) -> dict[str, Any]:
    """The labelled replay through one running worker; the broker's CPU and peak resident
    memory (local brokers) are measured from the start of the replay to the last decision."""
    settings = with_bench_model(settings)
    customers = max(50, round(n_target / 350))  # about 350 transactions per customer in 183 days
    started = time.perf_counter()
    sim = simulate(
        SimulationConfig(n_customers=customers, n_terminals=2 * customers, n_days=183, seed=0)
    )
    path = root / "replay.csv"
    write_file(sim, path)
    n = len(sim)
    say(f"replay: simulated {n:,} labelled transactions ({customers:,} customers, 183 days) "
        f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
    s = fresh(settings, root, "replay")
    ensure_topics(s)
    with worker_process(s, root, say, timeout_s=120), usage.measure(used.pids) as broker_use:
        started = time.perf_counter()
        stats = replay(
            s, path, label_delay_ms=LABEL_DELAY_DAYS * DAY_MS, batch=500, fraud_labels_only=True
        )
        produced = time.perf_counter() - started
        decisions = s.topic_names.decisions
        deadline = time.monotonic() + 1800
        last_report = time.monotonic()
        done = 0
        while done < n and time.monotonic() < deadline:
            time.sleep(0.5)
            done = end_offsets(s, decisions)
            if time.monotonic() - last_report > 15:
                say(f"  {done:,} / {n:,} decisions")
                last_report = time.monotonic()
        seconds = time.perf_counter() - started
    if done < n:
        raise RuntimeError(f"replay: only {done:,} of {n:,} decisions in time")
    say(f"  {n:,} decisions in {seconds:.1f} s ({n / seconds:,.0f} tx/s); the replay itself "
        f"produced for {produced:.1f} s ({stats.labels:,} fraud labels)")  # fmt: skip
    if used.pids:
        say(f"  broker during the replay: {broker_use.cpu_cores:.2f} cores, peak resident "
            f"{broker_use.peak_rss_mb:,.0f} MB")  # fmt: skip
    return {
        "transactions": n, "seconds": seconds, "tx_per_s": n / seconds, "produce_s": produced,
        "broker_usage": broker_use.as_dict() if used.pids else None,
    }  # fmt: skip


def step_rates(
    settings: Settings, rates: list[float], duration_s: float, batch: bool, say: Say
) -> list[dict[str, Any]]:
    """Open-loop steps at ``rates`` until p99 passes the limit. This machine is shared and
    noisy, so a step that misses is run once more, and the rate counts only if the repeat
    passes; both runs are kept in the result."""
    rows: list[dict[str, Any]] = []
    with environment(settings, BrokerChoice(external=True), say=lambda _: None) as env:
        for rate in rates:
            for attempt in (1, 2):
                # The first step warms the new worker up (5 s, as fraud bench latency does).
                warmup_s = 5.0 if not rows else 1.0
                result = run_load(
                    env.settings, rate, duration_s, warmup_s=warmup_s, batch=batch, drain_s=5.0,
                    say=lambda _: None,
                )  # fmt: skip
                s = result.recorder.summary_ms()
                ok = s["p99"] <= P99_LIMIT_MS and result.received == result.sent
                rows.append({
                    "rate": rate, "batched": batch, "attempt": attempt, "p50_ms": s["p50"],
                    "p99_ms": s["p99"], "p99.9_ms": s["p99.9"], "decided": result.received,
                    "sent": result.sent, "ok": ok,
                })  # fmt: skip
                note = ("" if ok else "  (over the limit)") + ("  (repeat)" if attempt == 2 else "")
                say(f"  {'batched' if batch else 'single '} {rate:>8,.0f} tx/s: p50 "
                    f"{s['p50']:,.1f} ms, p99 {s['p99']:,.1f} ms{note}")  # fmt: skip
                if ok:
                    break
            if not rows[-1]["ok"]:
                break
    return rows


def run(
    base: Settings,
    *,
    choice: BrokerChoice = LOCAL_BROKER,
    duration_s: float = 10.0,
    replay_transactions: int = 1_750_000,
    quick: bool = False,
    out_dir: Path = Path("benchmarks/results"),
    say: Say = print,
) -> dict[str, Any]:
    """Every phase in a temporary directory, removed at the end (the replay's broker log
    alone is about 10 GB)."""
    root = Path(tempfile.mkdtemp(prefix="fraud-bench-"))
    try:
        return _run(base, root, choice, duration_s, replay_transactions, quick, out_dir, say)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(
    base: Settings,
    root: Path,
    choice: BrokerChoice,
    duration_s: float,
    replay_transactions: int,
    quick: bool,
    out_dir: Path,
    say: Say,
) -> dict[str, Any]:
    n_limits, n_naive = (30_000, 5_000) if quick else (200_000, 20_000)
    n_replay = 60_000 if quick else replay_transactions
    rates = (
        [500.0, 1000.0, 2000.0]
        if quick
        else [1000.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0, 12000.0, 16000.0]
    )
    step_s = min(duration_s, 5.0) if quick else duration_s
    # A fresh broker per phase: noida-db keeps every topic in memory (the 1.78 million
    # replay alone grew it to about 18 GB with its changelogs), and one phase's backlog must
    # not slow the next.
    # The replay runs last. Run right after it, the first rate step (one record per
    # transaction, 1,000 tx/s) measured p99 154 ms, 277 ms and 448 ms in three runs, against
    # 38-41 ms in runs without a replay before; its broker leaves about 10 GB for the kernel
    # to write back after it stops. Each phase also starts with the disk synced.
    with broker(base, choice, root / "limits", say) as (settings, _):
        limits = measure_limits(settings, root, n_limits, n_naive, say)
    os.sync()
    say("rate steps (open loop, p99 limit 100 ms):")
    with broker(base, choice, root / "single", say) as (settings, _):
        steps = step_rates(settings, rates, step_s, False, say)
    os.sync()
    with broker(base, choice, root / "batched", say) as (settings, _):
        steps += step_rates(settings, rates, step_s, True, say)
    os.sync()
    with broker(base, choice, root / "replay", say) as (settings, used):
        replayed = measure_replay(settings, root, n_replay, say, used)
    best = {
        mode: max([r["rate"] for r in steps if r["batched"] == flag and r["ok"]], default=0.0)
        for mode, flag in (("single", False), ("batched", True))
    }
    engine = replayed["tx_per_s"]

    def ratio(limit: float) -> str:
        return f"{engine / limit:.2f}x" if limit else "-"

    rows = [
        ["confluent-kafka passthrough (msg/s)", limits["passthrough"],
         ratio(limits["passthrough"])],
        ["bare Faust agent (events/s)", limits["bare_faust"], ratio(limits["bare_faust"])],
        ["naive implementation (tx/s)", limits["naive"], ratio(limits["naive"])],
        [f"engine: replay of {replayed['transactions']:,} (tx/s)", engine, "1.00x"],
        ["engine: max rate, p99 < 100 ms, 1 record/tx", best["single"], "-"],
        ["engine: max rate, p99 < 100 ms, batched", best["batched"], "-"],
    ]  # fmt: skip
    say("")
    say(table(["", "per second", "engine replay / this"], rows))
    checks = [
        (">= 10,000 tx/s sustained (p99 < 100 ms, batched)", best["batched"] >= TARGET_TX_S,
         f"{best['batched']:,.0f} tx/s"),
        ("replay in < 3 min", replayed["seconds"] < TARGET_REPLAY_S and not quick,
         f"{replayed['transactions']:,} in {replayed['seconds']:.0f} s"),
        ("50,000 tx/s goal (replay)", engine >= 50_000, f"{engine:,.0f} tx/s"),
    ]  # fmt: skip
    say("")
    for name, ok, value in checks:
        say(f"  {'met   ' if ok else 'MISSED'} {name}: {value}")
    data = {
        "benchmark": "throughput",
        "machine": machine(),
        "broker": broker_record(used),
        "processing_guarantee": base.processing_guarantee,
        "quick": quick,
        "limits": limits,
        "replay": replayed,
        "rate_steps": steps,
        "targets": {name: {"met": ok, "value": value} for name, ok, value in checks},
    }
    out = write_json(out_dir / "throughput.json", data)
    png = plot_throughput(out_dir / "throughput.png", data)
    say(f"\nwrote {out} and {png}")
    return data


def plot_throughput(path: Path, data: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = ["passthrough", "bare Faust", "naive", "engine replay"]
    values = [data["limits"]["passthrough"], data["limits"]["bare_faust"], data["limits"]["naive"],
              data["replay"]["tx_per_s"]]  # fmt: skip
    left.barh(names, values)
    left.set_xscale("log")
    left.set_xlabel("per second (log)")
    left.set_title("throughput against the limits")
    for flag, label in ((False, "1 record/tx"), (True, "batched")):
        # the last attempt at each rate (a miss is run once more)
        last = {r["rate"]: r for r in data["rate_steps"] if r["batched"] == flag}
        steps = list(last.values())
        if steps:
            right.plot([r["rate"] for r in steps], [r["p99_ms"] for r in steps], marker="o",
                       label=f"p99, {label}")  # fmt: skip
    right.axhline(P99_LIMIT_MS, color="red", linestyle="--", linewidth=0.8)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("offered rate (tx/s)")
    right.set_ylabel("p99 latency (ms)")
    right.set_title("latency as the rate steps up")
    right.legend()
    fig.suptitle(f"fraud bench throughput ({data['machine']['date']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
