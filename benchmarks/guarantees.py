"""The cost of exactly-once against at-least-once, side by side on one broker.

    python benchmarks/guarantees.py [--rates 500,2000] [--duration 30] [--rounds 2]
        [--customers 500 --days 183] [--single 50000]

In ``--rounds`` rounds, each guarantee in turn (at_least_once, exactly_once, at_least_once,
...), each run with fresh topics, app id and data dir on one local Apache Kafka broker:

1. latency: open-loop load at each of ``--rates`` (transactions/s, one record per
   transaction) for ``--duration`` seconds after a warm-up, through a fresh worker (as
   ``fraud bench latency``): p50/p99/p99.9 from produce to the Decision read back;
   A rate past the worker's capacity is reported, not refused: the decisions that did not
   arrive within a minute of the last send are missing from its "decided %" figure;
2. replay: a simulated labelled file (``--customers``, twice as many terminals, ``--days``)
   produced whole before the worker catches up, one record per transaction (its first
   ``--single``) and in batches of 500: transactions/s from the start of the replay to the
   worker's last decision (its ``fraud_decisions_total``).

Alternating the guarantees in one series is what makes the ratios fair on a shared machine:
a figure is only compared with its neighbours. Prints each run, then the exactly-once /
at-least-once ratio of each figure per round and its median, and writes JSON to
``benchmarks/results/guarantees.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from recovery import free_port, replay_through  # noqa: E402

from fraud.broker import BrokerChoice, ensure_topics  # noqa: E402
from fraud.settings import AT_LEAST_ONCE, EXACTLY_ONCE, Settings  # noqa: E402
from fraud.tools.bench.latency import broker, broker_record, fresh, with_bench_model  # noqa: E402
from fraud.tools.bench.load import run_load  # noqa: E402
from fraud.tools.bench.report import machine, table, write_json  # noqa: E402
from fraud.tools.demo import worker_process  # noqa: E402
from fraud.tools.simulate import SimulationConfig, simulate, write_file  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ORDER = (AT_LEAST_ONCE, EXACTLY_ONCE)
# After the last send, how long the decisions of a rate past the worker's capacity may take to
# arrive; those still missing then are counted (the "decided %" figure), not waited for.
DRAIN_S = 60.0
Say = Callable[[str], None]


def latency_run(settings: Settings, root: Path, rate: float, duration_s: float,
                say: Say) -> dict[str, Any]:  # fmt: skip
    """One open-loop load at ``rate`` through a fresh worker."""
    s = fresh(settings, root, f"lat{rate:.0f}")
    ensure_topics(s)
    with worker_process(s, root, say, timeout_s=180):
        result = run_load(s, rate, duration_s, warmup_s=5.0, drain_s=DRAIN_S, say=say)
    shutil.rmtree(s.data_dir, ignore_errors=True)
    summary = result.recorder.summary_ms()
    return {
        "rate": rate, "sent": result.sent, "decided": result.received,
        "p50_ms": summary["p50"], "p99_ms": summary["p99"], "p99.9_ms": summary["p99.9"],
        "max_send_lag_ms": result.max_send_lag_s * 1000,
    }  # fmt: skip


def replay_run(settings: Settings, root: Path, path: Path, n: int, batch: int,
               say: Say) -> dict[str, Any]:  # fmt: skip
    s = fresh(settings, root, f"replay{batch}")
    ensure_topics(s)
    out = replay_through(s, root, path, n, batch, say)
    shutil.rmtree(s.data_dir, ignore_errors=True)
    return out


def one_run(settings: Settings, root: Path, guarantee: str, args: argparse.Namespace,
            path: Path, n: int, say: Say) -> dict[str, Any]:  # fmt: skip
    g = settings.with_overrides(processing_guarantee=guarantee, metrics_port=free_port())
    figures: dict[str, float] = {}
    for rate in args.rates:
        say(f"  {guarantee}: {rate:,.0f} tx/s for {args.duration:.0f} s")
        lat = latency_run(g, root, rate, args.duration, say)
        figures[f"{rate:.0f} tx/s decided %"] = 100.0 * lat["decided"] / max(lat["sent"], 1)
        for q in ("p50_ms", "p99_ms", "p99.9_ms"):
            figures[f"{rate:.0f} tx/s {q}"] = lat[q]
        say(f"    p50 {lat['p50_ms']:,.1f} ms, p99 {lat['p99_ms']:,.1f} ms, "
            f"p99.9 {lat['p99.9_ms']:,.1f} ms")  # fmt: skip
    for label, count, batch in (("replay 1/record tx/s", min(args.single, n), 1),
                                ("replay batch 500 tx/s", n, 500)):  # fmt: skip
        if count:
            say(f"  {guarantee}: replay of {count:,}, batches of {batch}")
            figures[label] = replay_run(g, root, path, count, batch, say)["tx_per_s"]
            say(f"    {figures[label]:,.0f} tx/s")
    return {"guarantee": guarantee, "load_1m": os.getloadavg()[0], "figures": figures}


def ratios(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """exactly-once / at-least-once of each figure, for each exactly-once run against the
    at-least-once run just before it."""
    out: dict[str, list[float]] = {}
    for alo, eos in zip(runs[0::2], runs[1::2], strict=False):
        for key, value in eos["figures"].items():
            base = alo["figures"][key]
            out.setdefault(key, []).append(value / base if base else float("nan"))
    return out


def report(runs: list[dict[str, Any]], say: Say) -> dict[str, list[float]]:
    keys = list(runs[0]["figures"])
    say("")
    say(table(["run", "guarantee", "load 1m", *keys],
              [[i + 1, r["guarantee"], r["load_1m"], *(r["figures"][k] for k in keys)]
               for i, r in enumerate(runs)]))  # fmt: skip
    by_key = ratios(runs)
    say("")
    say("exactly_once / at_least_once, per round (latency: lower is better; tx/s: higher):")
    say(table(["figure", "ratio per round", "median"],
              [[k, ", ".join(f"{v:.2f}" for v in vs), statistics.median(vs)]
               for k, vs in by_key.items()]))  # fmt: skip
    return by_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", type=lambda s: [float(x) for x in s.split(",")], default=[500.0, 2000.0],
        help="comma-separated open-loop rates, tx/s (default 500,2000)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per latency run")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument(
        "--single", type=int, default=50_000,
        help="transactions of the file replayed one record each (0: skip)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    say: Say = print
    root = Path(tempfile.mkdtemp(prefix="fraud-guarantees-"))
    try:
        config = SimulationConfig(
            n_customers=args.customers, n_terminals=2 * args.customers, n_days=args.days, seed=0
        )
        sim = simulate(config)
        path = root / "replay.csv"
        write_file(sim, path)
        n = len(sim)
        say(f"file: {n:,} labelled transactions")
        base = with_bench_model(Settings.from_env())
        with broker(base, BrokerChoice(engine="kafka"), root, say) as (on_broker, used):
            runs = []
            for r in range(args.rounds):
                for guarantee in ORDER:
                    say(f"round {r + 1}, {guarantee}")
                    runs.append(one_run(on_broker, root, guarantee, args, path, n, say))
            by_key = report(runs, say)
            data = {
                "benchmark": "guarantees", "machine": machine(), "broker": broker_record(used),
                "rates": args.rates, "duration_s": args.duration, "transactions": n,
                "single": min(args.single, n), "runs": runs, "ratios": by_key,
                "median_ratios": {k: statistics.median(v) for k, v in by_key.items()},
            }  # fmt: skip
        say(f"\nwrote {write_json(args.out / 'guarantees.json', data)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
