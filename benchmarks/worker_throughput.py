"""Transactions/s through one worker process, and ingest-to-decision latency.

    python benchmarks/worker_throughput.py [--customers 1000] [--days 30] [--paced-rate 1000]

Runs, side by side in one process tree on the embedded broker: a burst replay (as fast as the
file can be produced; throughput = decisions / (first ingest -> last decision)) and a paced
replay at a fixed rate (latency under a load the worker holds). The alert sinks are not
started: this measures the worker. Prints a table and writes JSON to
benchmarks/results/worker_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from fraud.settings import Settings
from fraud.tools.demo import DemoSummary, run_demo

RESULTS = Path(__file__).resolve().parent / "results"


def row(name: str, s: DemoSummary) -> dict[str, float | str]:
    return {
        "run": name,
        "transactions": s.decisions,
        "tx_per_s": s.decisions / s.worker_seconds if s.worker_seconds else 0.0,
        "p50_ms": s.percentile(0.50),
        "p99_ms": s.percentile(0.99),
        "p999_ms": s.percentile(0.999),
        "worker_start_s": s.startup_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--paced-rate", type=float, default=500.0)
    args = parser.parse_args()
    quiet = lambda _line: None  # noqa: E731
    runs = [
        row("burst", run_demo(Settings(), customers=args.customers, days=args.days, rate=None,
                              sinks=False, say=quiet)),
        row(f"paced {args.paced_rate:.0f}/s", run_demo(
            Settings(), customers=args.customers, days=args.days, rate=args.paced_rate,
            sinks=False, say=quiet)),
    ]  # fmt: skip
    header = (
        f"{'run':<14}{'tx':>9}{'tx/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'start s':>9}"
    )
    print(header)
    for r in runs:
        print(
            f"{r['run']:<14}{r['transactions']:>9,}{r['tx_per_s']:>9,.0f}{r['p50_ms']:>9.0f}"
            f"{r['p99_ms']:>9.0f}{r['p999_ms']:>10.0f}{r['worker_start_s']:>9.1f}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "worker_throughput.json"
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()} cores={os.cpu_count()}",
                "runs": runs,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
