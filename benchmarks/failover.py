"""Failover with and without standby replicas: two workers, one SIGKILLed, the other takes over.

    python benchmarks/failover.py [--customers 5000 --terminals 10000 --days 183]
        [--standby 0,1] [--rounds 1]

On one local Apache Kafka broker, for each ``--standby`` count in turn (``--rounds`` times,
alternated), with fresh topics and app id: two workers (``fraud worker --standby-replicas N``,
each its own data dir) decide the whole labelled file, replayed in batches of 500 (fraud labels
only, 7 days later); then the second worker is killed with SIGKILL, and one new transaction per
customer partition (a customer of that partition, one second after the file's last event) is
produced at once. Measured from the kill: the seconds until each of them is decided (read back
with ``read_committed``), the slowest being the failover time.

The survivor takes the dead worker's partitions once the group coordinator lets the dead
member go (its session timeout, ``Settings.session_timeout_s``, 15 s: workers are static
members); then it needs their state. With a standby copy it reads only the changelog written
since its last update; without one, the whole changelog of those partitions. Prints a table
and writes JSON to ``benchmarks/results/failover.json``.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from recovery import DecisionWatch, free_port, worker_decisions  # noqa: E402

from fraud.broker import BrokerChoice, ensure_topics  # noqa: E402
from fraud.contracts.partitioning import partition_for  # noqa: E402
from fraud.contracts.units import DAY_MS, LABEL_DELAY_DAYS  # noqa: E402
from fraud.ingest.replay import replay  # noqa: E402
from fraud.settings import Settings  # noqa: E402
from fraud.tools.bench.latency import broker, broker_record, fresh, with_bench_model  # noqa: E402
from fraud.tools.bench.report import machine, table, write_json  # noqa: E402
from fraud.tools.demo import worker_process  # noqa: E402
from fraud.tools.simulate import SimulationConfig, simulate, write_file  # noqa: E402
from fraud.v1.decision_pb2 import Decision  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PROBE_TIMEOUT_S = 600.0  # a guard against a stall, not a measurement
Say = Callable[[str], None]


def write_probes(source: Path, target: Path, partitions: int) -> list[str]:
    """One new transaction per customer partition, a second after the file's last event, of
    the last customer of that partition in the file (and that customer's terminal); their
    transaction ids."""
    with source.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        last_of: dict[int, dict[str, str]] = {}
        last_time = ""
        for row in reader:
            last_of[partition_for(row["CUSTOMER_ID"], partitions)] = row
            last_time = row["TX_DATETIME"]
    after = (datetime.strptime(last_time, TIME_FORMAT) + timedelta(seconds=1)).strftime(TIME_FORMAT)
    ids = []
    with target.open("w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        for p, row in sorted(last_of.items()):
            tid = f"9{p:03d}{int(time.time() * 1000) % 10**9:09d}"
            ids.append(tid)
            w.writerow({**row, "TRANSACTION_ID": tid, "TX_DATETIME": after, "TX_FRAUD": "0",
                        "TX_FRAUD_SCENARIO": "0"})  # fmt: skip
    return ids


class DecisionTimes(DecisionWatch):
    """A read_committed consumer at the end of ``decisions``: when each awaited id arrives."""

    def wait_all(self, ids: list[str], since: float, timeout_s: float) -> dict[str, float]:
        """Seconds from ``since`` (perf_counter) to each id's decision; missing ones absent."""
        want, got = set(ids), dict[str, float]()
        decision = Decision()
        deadline = time.monotonic() + timeout_s
        while want - set(got) and time.monotonic() < deadline:
            for msg in self.consumer.consume(100, 0.1):
                if msg.error() is None:
                    decision.ParseFromString(msg.value() or b"")
                    if decision.transaction_id in want:
                        got.setdefault(decision.transaction_id, time.perf_counter() - since)
        return got


def decided_by_both(ports: list[int], n: int, say: Say, timeout_s: float = 3600) -> None:
    deadline = time.monotonic() + timeout_s
    last_say = time.monotonic()
    done = 0
    while done < n:
        counts = [worker_decisions(p) for p in ports]
        if None not in counts:
            done = sum(c or 0 for c in counts)
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done:,} of {n:,} decided after {timeout_s:.0f} s")
        if time.monotonic() - last_say > 30:
            say(f"    {done:,} / {n:,} decisions")
            last_say = time.monotonic()
        time.sleep(0.5)


def one_run(on_broker: Settings, root: Path, path: Path, n: int, standby: int,
            say: Say) -> dict[str, Any]:  # fmt: skip
    s = fresh(on_broker, root, f"standby{standby}").with_overrides(standby_replicas=standby)
    ensure_topics(s)
    ports = [free_port(), free_port()]
    homes = [root / f"{s.app_id}-w{i}" for i in range(2)]
    with ExitStack() as stack:
        procs = []
        for i, home in enumerate(homes):
            home.mkdir(parents=True)
            w = s.with_overrides(data_dir=home / "state", metrics_port=ports[i])
            procs.append(stack.enter_context(worker_process(w, home, say, timeout_s=300)))
        say(f"  standby {standby}: replay of {n:,} in batches of 500 through 2 workers")
        started = time.perf_counter()
        replay(s, path, label_delay_ms=LABEL_DELAY_DAYS * DAY_MS, batch=500,
               fraud_labels_only=True)  # fmt: skip
        decided_by_both(ports, n, say)
        replay_s = time.perf_counter() - started
        say(f"    decided in {replay_s:.0f} s")
        probes = write_probes(path, root / f"{s.app_id}-probes.csv", s.partitions)
        watch = DecisionTimes(s)
        try:
            killed = time.perf_counter()
            os.killpg(procs[1].pid, signal.SIGKILL)
            procs[1].wait()
            replay(s, root / f"{s.app_id}-probes.csv")
            times = watch.wait_all(probes, killed, timeout_s=PROBE_TIMEOUT_S)
        finally:
            watch.close()
    for home in homes:
        shutil.rmtree(home, ignore_errors=True)
    if len(times) < len(probes):
        raise RuntimeError(f"standby {standby}: {len(probes) - len(times)} probes not decided")
    ordered = sorted(times.values())
    say(f"    after the kill: probes decided in {', '.join(f'{t:.1f}' for t in ordered)} s")
    return {"standby_replicas": standby, "replay_s": replay_s, "probe_s": ordered,
            "failover_s": ordered[-1], "load_1m": os.getloadavg()[0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--terminals", type=int, default=10000)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument(
        "--standby", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1],
        help="standby replica counts, comma-separated, run in this order (default 0,1)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--two-stage", action="store_true",
        help="workers started with --two-stage (the survivor keeps the repartition hop)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    say: Say = print
    root = Path(tempfile.mkdtemp(prefix="fraud-failover-"))
    try:
        config = SimulationConfig(
            n_customers=args.customers, n_terminals=args.terminals, n_days=args.days, seed=0
        )
        sim = simulate(config)
        path = root / "replay.csv"
        write_file(sim, path)
        n = len(sim)
        say(f"file: {n:,} labelled transactions")
        base = with_bench_model(Settings.from_env())
        if args.two_stage:
            base = base.with_overrides(single_stage=False)
        runs = []
        with broker(base, BrokerChoice(engine="kafka"), root, say) as (on_broker, used):
            for _ in range(args.rounds):
                for standby in args.standby:
                    runs.append(one_run(on_broker, root, path, n, standby, say))
        say("")
        say(table(["standby", "load 1m", "replay s", "probes decided after the kill, s",
                   "failover s"],
                  [[r["standby_replicas"], r["load_1m"], r["replay_s"],
                    ", ".join(f"{t:.1f}" for t in r["probe_s"]), r["failover_s"]]
                   for r in runs]))  # fmt: skip
        by_count = {
            c: statistics.median(r["failover_s"] for r in runs if r["standby_replicas"] == c)
            for c in args.standby
        }
        say("median failover: " + ", ".join(f"standby {c}: {v:.1f} s" for c, v in by_count.items()))
        data = {"benchmark": "failover", "machine": machine(), "broker": broker_record(used),
                "transactions": n, "command": " ".join(sys.argv), "runs": runs,
                "median_failover_s": by_count}  # fmt: skip
        say(f"wrote {write_json(args.out / 'failover.json', data)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
