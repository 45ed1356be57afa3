"""State recovery from the changelogs, and backlog replay throughput, per processing guarantee.

    python benchmarks/recovery.py [--customers 5000 --terminals 10000 --days 183]
        [--guarantees at_least_once,exactly_once] [--single 50000] [--rounds 2]

For each guarantee in turn (alternated, a fresh local Apache Kafka broker for each):

1. single: the first ``--single`` transactions of the file replayed one record per
   transaction, as fast as they can be produced, through a fresh worker (topics and app id of
   their own): transactions/s from the start of the replay to the last decision;
2. batched: the whole labelled file replayed as ``TransactionBatch`` records of 500 (fraud
   labels only, 7 days later, as ``fraud bench throughput``) through a fresh worker;
3. that worker is stopped (SIGTERM) and started again on its data dir (a plain restart), then
   ``--rounds`` times stopped, its data dir deleted, and started again: the time from the
   process start to ready (Faust's recovery done, kernels loaded), and to the decision of one
   new transaction (a customer and terminal of the file, one second after its last event) read
   back with ``read_committed``.

Decisions are counted from the worker's ``fraud_decisions_total`` (its /metrics), not from the
high watermarks of ``decisions``, which under exactly-once also count transaction markers.
Prints a table and writes JSON to ``benchmarks/results/recovery.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from fraud.broker import BrokerChoice, ensure_topics
from fraud.contracts.units import DAY_MS, LABEL_DELAY_DAYS
from fraud.ingest.replay import replay
from fraud.kafka_config import high_watermarks, make_consumer
from fraud.settings import GUARANTEES, Settings
from fraud.tools.bench.latency import broker, broker_record, fresh, with_bench_model
from fraud.tools.bench.report import machine, table, write_json
from fraud.tools.demo import worker_process
from fraud.tools.simulate import SimulationConfig, simulate, write_file
from fraud.v1.decision_pb2 import Decision

RESULTS = Path(__file__).resolve().parent / "results"
Say = Callable[[str], None]


def decisions_in(metrics_text: str) -> int:
    """The sum of ``fraud_decisions_total`` over its labels in Prometheus text."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("fraud_decisions_total{") or line.startswith("fraud_decisions_total "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_decisions(port: int) -> int | None:
    """The worker's decisions so far; None when /metrics does not answer in time (measured:
    a scrape timed out at 5 s with a 1-minute load average of 28 on 2 cores)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            return decisions_in(r.read().decode())
    except (OSError, urllib.error.URLError):
        return None


@dataclass(frozen=True)
class Probe:
    """One new transaction after the file: its CSV row and its transaction id."""

    row: list[str]
    transaction_id: str


def probe_after(path: Path, n: int) -> Probe:
    """A transaction of the file's last customer and terminal, one second after its last
    event (the file is in event-time order)."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        last = None
        for last in reader:  # noqa: B007 - the last row is wanted
            pass
    assert last is not None
    row = dict(zip(header, last, strict=True))
    fmt = "%Y-%m-%d %H:%M:%S"
    after = (datetime.strptime(row["TX_DATETIME"], fmt) + timedelta(seconds=1)).strftime(fmt)
    tid = str(10_000_000 + n)
    values = {**row, "TRANSACTION_ID": tid, "TX_DATETIME": after, "TX_FRAUD": "0",
              "TX_FRAUD_SCENARIO": "0"}  # fmt: skip
    return Probe([values[h] for h in header], tid)


def write_probe(path: Path, source: Path, probe: Probe) -> Path:
    with source.open(newline="") as f:
        header = next(csv.reader(f))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow(probe.row)
    return path


class DecisionWatch:
    """A read_committed consumer at the end of ``decisions``, waiting for one transaction."""

    def __init__(self, settings: Settings) -> None:
        topic = settings.topic_names.decisions
        self.consumer = make_consumer(
            settings.brokers,
            **{"group.id": "fraud-recovery-bench", "enable.auto.commit": False,
               "isolation.level": "read_committed"},
        )  # fmt: skip
        highs = high_watermarks(settings.brokers, [topic])
        self.consumer.assign([TopicPartition(t, p, o) for (t, p), o in highs.items()])

    def wait_for(self, transaction_id: str, timeout_s: float) -> Decision | None:
        deadline = time.monotonic() + timeout_s
        decision = Decision()
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(100, 0.1):
                if msg.error() is None:
                    decision.ParseFromString(msg.value() or b"")
                    if decision.transaction_id == transaction_id:
                        return decision
        return None

    def close(self) -> None:
        self.consumer.close()


def changelog_records(settings: Settings) -> int:
    """Offsets in the worker's changelog topics (records plus any transaction markers)."""
    consumer = make_consumer(settings.brokers, **{"group.id": "fraud-recovery-bench"})
    try:
        names = [t for t in consumer.list_topics(timeout=10).topics
                 if t.startswith(settings.app_id) and t.endswith("-changelog")]  # fmt: skip
    finally:
        consumer.close()
    return sum(high_watermarks(settings.brokers, names).values()) if names else 0


def wait_decided(port: int, n: int, say: Say, timeout_s: float = 3600) -> float:
    """Seconds until the worker has made ``n`` decisions (from now)."""
    started = time.perf_counter()
    last_report = time.monotonic()
    done = 0
    while True:
        done = worker_decisions(port) or done
        if done >= n:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"only {done:,} of {n:,} decisions after {timeout_s:.0f} s")
        if time.monotonic() - last_report > 30:
            say(f"    {done:,} / {n:,} decisions")
            last_report = time.monotonic()
        time.sleep(0.25)


def replay_through(settings: Settings, root: Path, path: Path, n: int, batch: int,
                   say: Say) -> dict[str, Any]:  # fmt: skip
    """Replay ``n`` transactions of ``path`` through a fresh worker already running."""
    with worker_process(settings, root, say, timeout_s=180):
        started = time.perf_counter()
        stats = replay(
            settings, path, label_delay_ms=LABEL_DELAY_DAYS * DAY_MS, batch=batch,
            fraud_labels_only=True, limit=n,
        )  # fmt: skip
        produced = time.perf_counter() - started
        assert settings.metrics_port is not None
        wait_decided(settings.metrics_port, n, say)
        seconds = time.perf_counter() - started
    return {"transactions": n, "batch": batch, "seconds": seconds, "tx_per_s": n / seconds,
            "produce_s": produced, "labels": stats.labels}  # fmt: skip


@contextmanager
def timed_start(settings: Settings, root: Path, say: Say) -> Iterator[float]:
    started = time.perf_counter()
    with worker_process(settings, root, say, timeout_s=900):
        yield time.perf_counter() - started


def restart(settings: Settings, root: Path, probe: Probe, probe_file: Path, lost: bool,
            say: Say) -> dict[str, Any]:  # fmt: skip
    """Start the worker (on an empty data dir when ``lost``), then decide ``probe``."""
    if lost:
        shutil.rmtree(settings.data_dir, ignore_errors=True)
    watch = DecisionWatch(settings)
    try:
        started = time.perf_counter()
        with timed_start(settings, root, say) as ready_s:
            replay(settings, probe_file)
            decision = watch.wait_for(probe.transaction_id, 120)
            first_s = time.perf_counter() - started
    finally:
        watch.close()
    if decision is None:
        raise RuntimeError("the probe transaction was not decided in 120 s")
    features = dict(sorted(decision.features.items()))
    say(f"    {'data dir lost' if lost else 'restart'}: ready {ready_s:.1f} s, probe decided "
        f"{first_s:.1f} s after start")  # fmt: skip
    return {"data_dir_lost": lost, "ready_s": ready_s, "first_decision_s": first_s,
            "probe_features": features}  # fmt: skip


def run_guarantee(base: Settings, guarantee: str, path: Path, n: int, single: int,
                  rounds: int, say: Say) -> dict[str, Any]:  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix=f"fraud-recovery-{guarantee}-"))
    settings = with_bench_model(base).with_overrides(
        processing_guarantee=guarantee, metrics_port=free_port()
    )
    try:
        with broker(settings, BrokerChoice(engine="kafka"), root, say) as (on_broker, used):
            out: dict[str, Any] = {"guarantee": guarantee, "broker": broker_record(used)}
            if single:
                s = fresh(on_broker, root, "single")
                ensure_topics(s)
                say(f"  {guarantee}: replay of {single:,}, one record per transaction")
                out["single"] = replay_through(s, root, path, single, 1, say)
                say(f"    {out['single']['tx_per_s']:,.0f} tx/s")
            s = fresh(on_broker, root, "batched")
            ensure_topics(s)
            say(f"  {guarantee}: replay of {n:,}, batches of 500")
            out["batched"] = replay_through(s, root, path, n, 500, say)
            say(f"    {out['batched']['tx_per_s']:,.0f} tx/s")
            out["changelog_offsets"] = changelog_records(s)
            out["data_dir_mb"] = (
                sum(f.stat().st_size for f in s.data_dir.rglob("*") if f.is_file()) / 1e6
            )
            say(f"    changelogs: {out['changelog_offsets']:,} offsets; data dir "
                f"{out['data_dir_mb']:,.0f} MB")  # fmt: skip
            probe = probe_after(path, n)
            probe_file = write_probe(root / "probe.csv", path, probe)
            starts = [restart(s, root, probe, probe_file, False, say)]
            for i in range(rounds):
                # Each probe is a new transaction: a fresh id, and a second later.
                tid = f"{probe.transaction_id}{i}"
                probe = replace(probe, row=[tid, *probe.row[1:]], transaction_id=tid)
                write_probe(probe_file, path, probe)
                starts.append(restart(s, root, probe, probe_file, True, say))
            out["starts"] = starts
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--terminals", type=int, default=10000)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument("--file", type=Path, help="a simulated labelled CSV instead")
    parser.add_argument(
        "--guarantees",
        default=",".join(GUARANTEES),
        help="comma-separated, run in this order (default %(default)s)",
    )
    parser.add_argument(
        "--single", type=int, default=50_000, help="transactions replayed one record each (0: skip)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="restarts on a lost data dir")
    args = parser.parse_args()
    say: Say = print
    tmp = Path(tempfile.mkdtemp(prefix="fraud-recovery-file-"))
    try:
        path = args.file
        if path is None:
            path = tmp / "replay.csv"
            sim = simulate(
                SimulationConfig(
                    n_customers=args.customers, n_terminals=args.terminals, n_days=args.days, seed=0
                )
            )
            write_file(sim, path)  # fmt: skip
        with path.open() as f:
            n = sum(1 for _ in f) - 1
        say(f"file: {path} ({n:,} transactions)")
        base = Settings.from_env()
        runs = []
        for g in args.guarantees.split(","):
            runs.append(run_guarantee(base, g, path, n, min(args.single, n), args.rounds, say))
            # Each guarantee's run as soon as it ends: a later failure keeps it.
            write_json(RESULTS / f"recovery-{g}.json", {"machine": machine(), **runs[-1]})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for r in runs:
        lost = [s for s in r["starts"] if s["data_dir_lost"]]
        plain = r["starts"][0]
        rows.append([
            r["guarantee"],
            r["single"]["tx_per_s"] if "single" in r else "-",
            r["batched"]["tx_per_s"], r["batched"]["seconds"], r["changelog_offsets"],
            plain["ready_s"], " / ".join(f"{s['ready_s']:.1f}" for s in lost),
            " / ".join(f"{s['first_decision_s']:.1f}" for s in lost),
        ])  # fmt: skip
    say("")
    say(table(["guarantee", "single tx/s", "batched tx/s", "replay s", "changelog offsets",
               "restart ready s", "lost dir: ready s", "first decision s"], rows))  # fmt: skip
    same = len({json.dumps(r["starts"][1]["probe_features"]) for r in runs if len(r["starts"]) > 1})
    say(f"probe features after recovery equal across guarantees: {same == 1}")
    data = {"benchmark": "recovery", "machine": machine(), "transactions": n,
            "file": {"customers": args.customers, "terminals": args.terminals, "days": args.days}
            if args.file is None else str(args.file),
            "command": " ".join(sys.argv), "runs": runs}  # fmt: skip
    out = write_json(RESULTS / "recovery.json", data)
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
