"""``fraud bench latency``: end-to-end decision latency at a fixed rate, open loop.

Starts a local broker (Apache Kafka, or the emulator; or uses ``--brokers`` with
``--external``), creates fresh topics, starts one worker
process (full feature set, the decision table, and the model when ``--model`` is given), waits
until it is ready, then sends transactions at ``--rate`` for ``--duration`` seconds after a
warm-up and reads every Decision back (fraud.tools.bench.load). Prints p50/p90/p99/p99.9/max, and
writes JSON and a PNG (percentile distribution, and latency per second over the run).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraud.broker import LOCAL_BROKER, BrokerChoice, BrokerInUse, broker_in_use, ensure_topics
from fraud.settings import Settings
from fraud.tools.bench.load import LoadResult, run_load
from fraud.tools.bench.report import machine, plot_latency, table, write_json
from fraud.tools.demo import worker_process

Say = Callable[[str], None]
# The model the benchmarks score with (tables/README.md says how it was trained).
BENCH_MODEL = Path(__file__).resolve().parents[3] / "tables" / "models" / "trees-sim-v1.json"
TARGET_P99_MS = 10.0
TARGET_P999_MS = 25.0


@dataclass(frozen=True)
class Environment:
    settings: Settings
    workdir: Path
    worker_ready_s: float
    broker: BrokerInUse


@contextlib.contextmanager
def broker(
    base: Settings, choice: BrokerChoice, root: Path, say: Say
) -> Iterator[tuple[Settings, BrokerInUse]]:
    """``base`` on a fresh local broker under ``root`` (stopped at the end), or as given."""
    root.mkdir(parents=True, exist_ok=True)
    with broker_in_use(choice, base.brokers, root / "broker", say=say) as use:
        yield base.with_overrides(brokers=use.bootstrap), use


def broker_record(use: BrokerInUse) -> dict[str, str]:
    """The broker of a run, as the JSON of every benchmark records it."""
    return {"engine": use.engine, "version": use.version, "bootstrap": use.bootstrap}


def fresh(settings: Settings, root: Path, name: str) -> Settings:
    """A new topic prefix, app id and state directory: nothing of an earlier run (or of
    production) is reused."""
    run_id = uuid.uuid4().hex[:6]
    return settings.with_overrides(
        topic_prefix=f"{settings.topic_prefix}{name}-{run_id}-", app_id=f"fraud-{name}-{run_id}",
        data_dir=root / f"state-{name}-{run_id}",
    )  # fmt: skip


def with_bench_model(settings: Settings) -> Settings:
    """``settings`` scoring with ``BENCH_MODEL`` unless a model is given."""
    if settings.model_path is None and BENCH_MODEL.exists():
        return settings.with_overrides(model_path=BENCH_MODEL)
    return settings


@contextlib.contextmanager
def environment(
    base: Settings, choice: BrokerChoice, say: Say, workdir: Path | None = None
) -> Iterator[Environment]:
    """A broker (a local one unless ``choice`` is external), fresh topics, and one ready
    worker."""
    root = Path(tempfile.mkdtemp(prefix="fraud-bench-")) if workdir is None else workdir
    base = with_bench_model(base)
    say(f"policy: rules {base.rules_path.name}, model {base.model_path or 'none'}")
    try:
        with broker(base, choice, root, say) as (on_broker, use):
            settings = fresh(on_broker, root, "bench")
            ensure_topics(settings)
            started = time.perf_counter()
            with worker_process(settings, root, say):
                ready = time.perf_counter() - started
                say(f"worker ready in {ready:.1f} s")
                yield Environment(settings, root, ready, use)
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)  # the broker's log and the worker's state


def latency_row(name: str, result: LoadResult) -> dict[str, Any]:
    s = result.recorder.summary_ms()
    return {
        "run": name,
        "rate": result.rate,
        "sent": result.sent,
        "decided": result.received,
        "p50_ms": s["p50"],
        "p90_ms": s["p90"],
        "p99_ms": s["p99"],
        "p99.9_ms": s["p99.9"],
        "max_ms": s["max"],
        "first_ms": None if result.first_s is None else result.first_s * 1000,
        "max_send_lag_ms": result.max_send_lag_s * 1000,
        "send_to_decided_p50_ms": result.decided_p50_ms,
        "send_to_decided_p99_ms": result.decided_p99_ms,
    }


LATENCY_HEADERS = ("run", "tx/s", "decided", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms")


def latency_cells(row: dict[str, Any]) -> list[Any]:
    return [
        row["run"], row["rate"], row["decided"], row["p50_ms"], row["p90_ms"], row["p99_ms"],
        row["p99.9_ms"], row["max_ms"],
    ]  # fmt: skip


def run(
    base: Settings,
    *,
    choice: BrokerChoice = LOCAL_BROKER,
    rate: float = 2000.0,
    duration_s: float = 30.0,
    warmup_s: float = 5.0,
    customers: int = 2000,
    out_dir: Path = Path("benchmarks/results"),
    say: Say = print,
) -> dict[str, Any]:
    with environment(base, choice, say) as env:
        say(f"open-loop load: {rate:,.0f} tx/s for {warmup_s:.0f} s warm-up + {duration_s:.0f} s")
        result = run_load(
            env.settings, rate, duration_s, warmup_s=warmup_s, customers=customers, say=say
        )
    row = latency_row(f"{rate:,.0f} tx/s", result)
    say("")
    say(table(LATENCY_HEADERS, [latency_cells(row)]))
    first = row["first_ms"]
    checks = [
        ("p99 <= 10 ms", row["p99_ms"] <= TARGET_P99_MS, f"{row['p99_ms']:.1f} ms"),
        ("p99.9 <= 25 ms", row["p99.9_ms"] <= TARGET_P999_MS, f"{row['p99.9_ms']:.1f} ms"),
        ("worker ready <= 5 s", env.worker_ready_s <= 5.0, f"{env.worker_ready_s:.1f} s"),
        (
            "first transaction <= p99",
            first is not None and first <= row["p99_ms"],
            "not decided" if first is None else f"{first:.1f} ms",
        ),
    ]
    say("")
    for name, ok, value in checks:
        say(f"  {'met   ' if ok else 'MISSED'} {name}: {value}")
    say(
        f"  send -> decided in the worker (ms clock): p50 {result.decided_p50_ms:.0f} ms, "
        f"p99 {result.decided_p99_ms:.0f} ms; the rest is delivery and read-back"
    )
    if result.max_send_lag_s > 0.005:
        say(f"  note: the sender fell up to {result.max_send_lag_s * 1000:.0f} ms behind schedule")
    host = machine()
    data = {
        "benchmark": "latency",
        "machine": host,
        "broker": broker_record(env.broker),
        "processing_guarantee": env.settings.processing_guarantee,
        "worker_ready_s": env.worker_ready_s,
        "result": row,
        "targets": {name: {"met": ok, "value": value} for name, ok, value in checks},
        "over_time": result.recorder.over_time(),
    }
    out = write_json(out_dir / "latency.json", data)
    png = plot_latency(
        out_dir / "latency.png",
        f"fraud bench latency: {rate:,.0f} tx/s, one worker ({host['date']})",
        result.recorder,
        TARGET_P99_MS,
    )
    say(f"\nwrote {out} and {png}")
    return data
