"""Every feature of every decision, through the broker, against the batch reference.

    python benchmarks/exactness.py [--customers 1700] [--days 60] [--step 500]
        [--max-speed [--batch 500] [--labels all|fraud] [--starve-cpu]] [--engine kafka|noida]

Simulates a labelled file (with coordinates), starts a local broker (Apache Kafka, or the
emulator; --engine) and a worker, replays the file with labels 7 days after each transaction,
and compares each decision's features with tests/batch_reference.py (computed from the
definitions, in batch) to 1e-9. By default the replay goes in closed-loop steps (produce a step,
wait for its decisions), which keeps the customer partitions together; --max-speed replays the
whole file into Kafka before the worker starts, the hardest backlog: the worker's event-time
alignment (fraud/worker/alignment.py) must keep its customer partitions together.
--starve-cpu pins the worker to one core shared with two busy loops while it catches up
(fraud/tools/starve.py): it must decide later, never differently. Prints a table, writes
benchmarks/results/exactness-<mode>.json. The handbook's size: --customers 5000 --days 183
(about 1.75 M transactions).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fraud.broker import ENGINES, choose_engine, ensure_topics, local_broker  # noqa: E402
from fraud.contracts.units import ALL_FEATURES, DAY_MS, LABEL_DELAY_DAYS  # noqa: E402
from fraud.ingest.replay import replay  # noqa: E402
from fraud.settings import Settings  # noqa: E402
from fraud.testing import StepReplay  # noqa: E402
from fraud.tools.demo import worker_process  # noqa: E402
from fraud.tools.simulate import SimulationConfig, simulate, write_file  # noqa: E402
from fraud.tools.starve import CpuStarvation  # noqa: E402
from tests.batch_reference import batch_features  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _nth_worker(settings: Settings, work: Path, i: int) -> tuple[Settings, Path]:
    """The settings and work directory of worker ``i`` (the first keeps the shared ones)."""
    if i == 0:
        return settings, work
    home = work / f"worker-{i}"
    home.mkdir(exist_ok=True)
    return dataclasses.replace(settings, data_dir=home / "state"), home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1700)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=500)
    parser.add_argument("--max-speed", action="store_true")
    parser.add_argument(
        "--engine", choices=ENGINES, default=None,
        help="local broker engine (env FRAUD_BROKER_ENGINE; default auto: Kafka where Java runs)",
    )  # fmt: skip
    parser.add_argument(
        "--batch", type=int, default=1,
        help="with --max-speed: transactions per TransactionBatch record",
    )  # fmt: skip
    parser.add_argument(
        "--labels", choices=["all", "fraud"], default=None,
        help="with --max-speed: a label for every transaction, or for frauds only "
        "(default: fraud with --batch > 1, else all)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=1,
        help="worker processes, each with its own data dir (2 or more: the two-stage path "
        "across workers, through the repartition topic)",
    )  # fmt: skip
    parser.add_argument(
        "--starve-cpu", action="store_true",
        help="with --max-speed: the worker shares one core with two busy loops",
    )  # fmt: skip
    args = parser.parse_args()
    fraud_only = (args.labels or ("fraud" if args.batch > 1 else "all")) == "fraud"

    work = Path(tempfile.mkdtemp(prefix="fraud-exactness-"))
    sim = simulate(
        SimulationConfig(
            n_customers=args.customers, n_terminals=2 * args.customers, n_days=args.days,
            seed=args.seed, with_coordinates=True,
        )
    )  # fmt: skip
    path = work / "tx.csv"
    write_file(sim, path)
    n = len(sim)
    print(f"{n:,} transactions; computing the batch reference ...", flush=True)
    started = time.perf_counter()
    want = batch_features(sim)
    batch_s = time.perf_counter() - started

    broker = local_broker(choose_engine(args.engine), work / "broker")
    broker.start()
    print(f"broker: {broker.engine} {broker.version} on {broker.bootstrap}", flush=True)
    try:
        settings = Settings(brokers=broker.bootstrap, data_dir=work / "state", web_port=None)
        ensure_topics(settings)
        steps = StepReplay(settings, path, work)
        if args.max_speed:
            replay(
                settings, path, label_delay_ms=LABEL_DELAY_DAYS * DAY_MS, batch=args.batch,
                fraud_labels_only=fraud_only,
            )  # fmt: skip
        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            workers = [
                stack.enter_context(worker_process(*_nth_worker(settings, work, i), print))
                for i in range(args.workers)
            ]
            if args.max_speed:
                with contextlib.ExitStack() as starved:
                    if args.starve_cpu:
                        for worker in workers:
                            starved.enter_context(CpuStarvation(worker.pid))
                    steps.collect(n, timeout_s=4 * 3600)
            else:
                for first in range(0, n, 20 * args.step):
                    steps.run(first, min(n, first + 20 * args.step), step=args.step)
                    print(f"  {len(steps.decisions):,} / {n:,} decisions", flush=True)
        stream_s = time.perf_counter() - started
        steps.close()
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)  # the broker's log: GBs for large runs

    got = np.full_like(want, np.nan)
    ids = {d.transaction_id for d in steps.decisions}
    seen = len(ids)
    repeated = len(steps.decisions) - seen
    incomplete = sum(1 for d in steps.decisions if d.incomplete)
    for d in steps.decisions:
        i = int(d.transaction_id)
        got[i] = [d.features[name] for name in ALL_FEATURES]
    rows = []
    total_bad = 0
    for j, name in enumerate(ALL_FEATURES):
        both_nan = np.isnan(got[:, j]) & np.isnan(want[:, j])
        diff = np.where(both_nan, 0.0, np.abs(got[:, j] - want[:, j]))
        bad = int(np.count_nonzero(~(diff <= 1e-9)))
        total_bad += bad
        rows.append({"feature": name, "mismatches": bad, "max_abs_diff": float(np.nanmax(diff))})
    print(f"\n{'feature':<26}{'mismatches':>12}{'max |diff|':>14}")
    for r in rows:
        print(f"{r['feature']:<26}{r['mismatches']:>12,}{r['max_abs_diff']:>14.3g}")
    mode = f"closed-loop steps of {args.step}"
    slug = "steps"
    if args.max_speed:
        mode = "backlog at max speed" + (f", batches of {args.batch}" if args.batch > 1 else "")
        mode += ", fraud labels only" if fraud_only else ", every label"
        mode += ", worker starved of CPU" if args.starve_cpu else ""
        slug = f"backlog-b{args.batch}-{'fraud' if fraud_only else 'all'}"
        slug += "-starved" if args.starve_cpu else ""
    if args.workers > 1:
        mode += f", {args.workers} workers"
        slug += f"-w{args.workers}"
    exact = total_bad == 0 and seen == n and repeated == 0 and incomplete == 0
    verdict = "EXACT" if exact else "NOT EXACT"
    print(
        f"\n{verdict}: {n:,} transactions, {seen:,} decided, {repeated:,} decided twice, "
        f"{incomplete:,} flagged incomplete, {total_bad:,} feature values off by more than "
        f"1e-9 ({mode}; stream {stream_s:.0f} s = {n / stream_s:,.0f} tx/s, batch reference "
        f"{batch_s:.0f} s)"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"exactness-{slug}.json"
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()} cores={os.cpu_count()}",
                "transactions": n,
                "decisions": seen,
                "decided_twice": repeated,
                "incomplete": incomplete,
                "stream_s": round(stream_s, 1),
                "mode": mode,
                "workers": args.workers,
                "broker": {"engine": broker.engine, "version": broker.version},
                "exact": verdict == "EXACT",
                "features": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
