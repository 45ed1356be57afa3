"""The fault suite: worker and broker failures and malformed input during a replay.

    python benchmarks/faults.py [--scenarios 0,1,2,3,4,5 | steady,sigkill,sigterm,...,sinks]
        [--transactions 10000] [--kills 20] [--malformed 1000000] [--outage-s 60]
        [--slow-s 5] [--sinks-clean] [--seed 0] [--json PATH]

Starts a 3-node Apache Kafka cluster (min.insync.replicas=2, acks=all), simulates a labelled
file, runs it once through one undisturbed worker (the clean run), then once per scenario
through 2 workers while the scenario's faults happen, and compares every decision read back
(read committed) with the clean run: missing, duplicated, differing features or action,
alerts, dead letters, and recovery time (a fault to the moment every partition that was
deciding decides again). Prints one table row per scenario with met/MISSED against
0 missing / 0 duplicated / 0 differing, writes JSON (default benchmarks/results/faults.json).
Scenario 5 (sinks) runs the webhook sink and the notifier against real servers on 127.0.0.1
(healthy, down then up, HTTP 500, slow; SMTP down then up), with a second webhook sink of
healthy endpoints beside it as the latency reference, and prints its own table.
Progress goes to stderr. Everything started is stopped on exit, Ctrl-C or an error.
See docs/faults.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fraud.tools.faults.outcome import HEADER, table_line  # noqa: E402
from fraud.tools.faults.plan import SINKS, pick, scenarios, sink_plan  # noqa: E402
from fraud.tools.faults.sinkcount import sink_lines  # noqa: E402
from fraud.tools.faults.sinkrun import SinkConfig  # noqa: E402
from fraud.tools.faults.suite import Suite, SuiteConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios", default="0,1,2,3,4",
        help="scenario numbers or names, comma-separated: 0 steady (2 workers, no fault), "
        "1 sigkill, 2 sigterm+rebalance, 3 leader+controller+cluster, 4 malformed, 5 sinks "
        "(default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--transactions", type=int, default=10_000, help="size of the file")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in scenario 1")
    parser.add_argument(
        "--malformed", type=int, default=1_000_000, help="malformed messages in scenario 4"
    )
    parser.add_argument(
        "--outage-s", type=float, default=60.0,
        help="scenario 5: how long the recovering endpoint and SMTP are down (s)",
    )  # fmt: skip
    parser.add_argument(
        "--slow-s", type=float, default=5.0, help="scenario 5: the slow endpoint's answer (s)"
    )
    parser.add_argument(
        "--sinks-clean", action="store_true",
        help="scenario 5: first a run with every server healthy (its latency is printed; the "
        "healthy endpoint is judged against the control sink of its own run either way)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rate", type=float, default=None,
        help="replay rate of the fault runs (default: the file spread over a scenario's faults)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=RESULTS / "faults.json")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()

    plans = scenarios(args.seed, kills=args.kills, malformed=args.malformed)
    try:
        names = pick(args.scenarios.split(","), plans)
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="fraud-faults-"))
    config = SuiteConfig(
        transactions=args.transactions, seed=args.seed, workdir=workdir, rate=args.rate
    )
    suite = Suite(config, say)
    try:
        plan = sink_plan(args.outage_s, args.slow_s)
    except ValueError as exc:
        parser.error(str(exc))
    rows = []
    sink_rows = []
    started = time.monotonic()
    try:
        suite.start()
        if any(name != SINKS for name in names):
            suite.run_clean()
        for name in names:
            if name == SINKS:
                sink_row = suite.run_sinks(SinkConfig(plan, compare_clean=args.sinks_clean))
                sink_rows.append(sink_row)
                for line in sink_lines(sink_row):
                    say(line)
                continue
            row = suite.run(plans[name])
            rows.append(row)
            say(table_line(row))
    finally:
        suite.close()
        if args.keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if rows:
        print(HEADER)
        for row in rows:
            print(table_line(row))
        for row in rows:
            for note in row.notes:
                print(f"  {row.scenario}: {note}")
    for sink_row in sink_rows:
        print()
        print("\n".join(sink_lines(sink_row)))
        for note in sink_row.notes:
            print(f"  {sink_row.scenario}: {note}")
    met = all(r.met for r in rows) and all(r.met for r in sink_rows)
    total = len(rows) + len(sink_rows)
    passed = sum(r.met for r in rows) + sum(r.met for r in sink_rows)
    print(
        f"\n{passed}/{total} scenarios met the target (0 missing, 0 duplicated, 0 differing; "
        f"sinks: exactly once, dead letters re-driven once); {time.monotonic() - started:.0f} s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()} cores={os.cpu_count()}",
                "transactions": args.transactions,
                "seed": args.seed,
                "broker": {"engine": "kafka", "nodes": 3, "min_insync_replicas": 2},
                "met": met,
                "rows": [r.to_json() for r in rows],
                "sinks": [r.to_json() for r in sink_rows],
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
