"""Streaming model quality against the same model family trained and scored in batch.

    python benchmarks/model_quality.py [--customers 500] [--days 58] [--seed 0]
                                       [--model logistic|trees|both] [--step 500]

Simulates a labelled file (with coordinates), then measures each model family two ways, with
the handbook protocol of ``fraud.tools.evaluate`` (train one week, skip a one-week delay, test the
following week, known-compromised cards removed; AUC ROC, average precision, CP@100). The last
21 days of the simulation are the protocol's; the days before them warm up the windows (the
default 58 days give 37 days of warm-up: the 30-day terminal windows, over labels 7 days old,
are full from day 37).

* streaming: the file goes through an embedded broker and a worker process in closed-loop
  steps (as ``benchmarks/exactness.py``), labels 7 days after each transaction; the model is
  trained with ``fraud.tools.train.train_from_topics`` from the decisions and labels (what
  ``fraud train`` runs) and evaluated with ``fraud.tools.train.evaluate_from_topics``, which
  re-scores
  the logged features with the exported model table in the numba kernel (what the worker
  scores with).
* batch: ``tests.batch_reference.batch_features`` (the definitions, in batch) and scikit-learn
  directly: the estimator and hyper-parameters of ``fraud/tools/train.py`` fitted on the same
  training-week rows, the test week scored with ``predict_proba``. Nothing of the engine's
  feature pipeline or model export is used; only the metrics come from ``fraud.tools.evaluate``.

Prints a table (model family x {streaming, batch} x {AUC, AP, CP@100}, and streaming minus
batch), writes benchmarks/results/model_quality.json, and exits with status 1 if streaming is
worse than batch by more than 1e-9 on any metric (or a metric is undefined). The work directory
(simulated file, broker log, model tables) is deleted at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fraud.contracts.units import DAY_MS as MS_PER_DAY  # noqa: E402
from fraud.contracts.units import LABEL_DELAY_DAYS, NULLABLE_FEATURES  # noqa: E402
from fraud.tools.evaluate import (  # noqa: E402
    EvaluationResult,
    evaluate,
    train_delay_test_split,
)
from fraud.tools.simulate import Simulated, SimulationConfig, simulate, write_file  # noqa: E402
from fraud.tools.train import TREE_PARAMS, ModelKind  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

KINDS: tuple[ModelKind, ...] = ("logistic", "trees")
TRAIN_DAYS = DELAY_DAYS = TEST_DAYS = 7
PROTOCOL_DAYS = TRAIN_DAYS + DELAY_DAYS + TEST_DAYS
TOLERANCE = 1e-9
# (EvaluationResult field, column title)
METRICS: tuple[tuple[str, str], ...] = (
    ("auc", "AUC"),
    ("average_precision", "AP"),
    ("card_precision_at_100", "CP@100"),
)
# fraud/tools/train.py fits Pipeline(StandardScaler(), LogisticRegression(max_iter=1000,
# random_state=seed)); its tree hyper-parameters are the TREE_PARAMS constant imported above.
LOGISTIC_PARAMS: dict[str, Any] = {"max_iter": 1000}

F64 = npt.NDArray[np.float64]


def protocol_start_ms(sim: Simulated) -> int:
    """Midnight UTC of the first training day: the last ``PROTOCOL_DAYS`` days of ``sim``."""
    if sim.n_days < PROTOCOL_DAYS:
        raise ValueError(
            f"the protocol needs {PROTOCOL_DAYS} days, the simulation has {sim.n_days}"
        )
    first = (sim.start_date - dt.date(1970, 1, 1)).days + sim.n_days - PROTOCOL_DAYS
    return first * MS_PER_DAY


def batch_columns(x_train: F64, names: tuple[str, ...], kind: ModelKind) -> list[int]:
    """Columns a ``kind`` model of fraud/tools/train.py uses, decided on the training rows.

    Trees: every feature with a value in some row. Logistic (no NaN at scoring time): the
    features that are never missing, minus any with a NaN in the training rows.
    """
    if kind == "trees":
        return [j for j in range(len(names)) if not np.isnan(x_train[:, j]).all()]
    return [
        j
        for j, name in enumerate(names)
        if name not in NULLABLE_FEATURES and not np.isnan(x_train[:, j]).any()
    ]


def batch_scores(
    features: F64,
    fraud: npt.ArrayLike,
    train: npt.NDArray[np.bool_],
    kind: ModelKind,
    names: tuple[str, ...],
    seed: int = 0,
) -> F64:
    """scikit-learn's fraud probability of every row, the model fitted on the ``train`` rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(fraud).astype(np.int64)
    cols = batch_columns(features[train], names, kind)
    model: Any
    if kind == "trees":
        model = HistGradientBoostingClassifier(**TREE_PARAMS, random_state=seed)
    else:
        model = Pipeline(
            [
                ("scale", StandardScaler()),
                ("lr", LogisticRegression(**LOGISTIC_PARAMS, random_state=seed)),
            ]
        )
    model.fit(features[train][:, cols], y[train])
    proba = np.asarray(model.predict_proba(features[:, cols]), dtype=np.float64)
    return np.ascontiguousarray(proba[:, 1])


def batch_result(
    sim: Simulated,
    features: F64,
    kind: ModelKind,
    names: tuple[str, ...],
    start_ms: int,
    seed: int = 0,
) -> EvaluationResult:
    """The protocol on ``sim`` with a scikit-learn model on the batch ``features``."""
    train, _ = train_delay_test_split(
        sim.event_time_ms, start_ms, TRAIN_DAYS, DELAY_DAYS, TEST_DAYS
    )
    scores = batch_scores(features, sim.fraud, train, kind, names, seed)
    return evaluate(
        sim.transaction_id,
        sim.customer_id,
        sim.event_time_ms,
        scores,
        sim.transaction_id,
        sim.fraud,
        start_ms=start_ms,
        train_days=TRAIN_DAYS,
        delay_days=DELAY_DAYS,
        test_days=TEST_DAYS,
    )


def shortfalls(
    kind: str, stream: EvaluationResult, batch: EvaluationResult, tolerance: float = TOLERANCE
) -> list[str]:
    """What makes ``stream`` fail the requirement: a metric below batch by more than
    ``tolerance``, an undefined metric, or a different test set."""
    out: list[str] = []
    for field, title in METRICS:
        s, b = float(getattr(stream, field)), float(getattr(batch, field))
        if not (np.isfinite(s) and np.isfinite(b)):
            out.append(f"{kind} {title} undefined (streaming {s}, batch {b})")
        elif s < b - tolerance:
            out.append(f"{kind} {title}: streaming {s:.12f} < batch {b:.12f}")
    same_set = (stream.n_test, stream.n_test_frauds, stream.days) == (
        batch.n_test,
        batch.n_test_frauds,
        batch.days,
    )
    if not same_set:
        out.append(f"{kind} test sets differ: streaming {stream} vs batch {batch}")
    return out


def comparison_rows(
    results: dict[str, tuple[EvaluationResult, EvaluationResult]],
) -> list[dict[str, Any]]:
    """One row per (model family, metric): streaming, batch and their difference."""
    rows: list[dict[str, Any]] = []
    for kind, (stream, batch) in results.items():
        for field, title in METRICS:
            s, b = float(getattr(stream, field)), float(getattr(batch, field))
            rows.append({"model": kind, "metric": title, "streaming": s, "batch": b,
                         "difference": s - b})  # fmt: skip
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<10}{'metric':<9}{'streaming':>12}{'batch':>12}{'stream - batch':>17}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<10}{r['metric']:<9}{r['streaming']:>12.6f}{r['batch']:>12.6f}"
            f"{r['difference']:>+17.3e}"
        )
    return "\n".join(lines)


def main() -> int:
    from fraud.broker import ENGINES, choose_engine, ensure_topics, local_broker
    from fraud.contracts.units import ALL_FEATURES
    from fraud.model.table import load_model_table
    from fraud.settings import Settings
    from fraud.testing import StepReplay
    from fraud.tools.decision_log import read_decisions
    from fraud.tools.demo import worker_process
    from fraud.tools.train import evaluate_from_topics, rescore, train_from_topics
    from tests.batch_reference import batch_features

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--days", type=int, default=58, help="the last 21 are the protocol's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=("logistic", "trees", "both"), default="both")
    parser.add_argument("--step", type=int, default=500, help="closed-loop replay step")
    parser.add_argument(
        "--engine", choices=ENGINES, default=None,
        help="local broker engine (env FRAUD_BROKER_ENGINE; default auto: Kafka where Java runs)",
    )  # fmt: skip
    args = parser.parse_args()
    kinds = KINDS if args.model == "both" else tuple(k for k in KINDS if k == args.model)
    started_all = time.perf_counter()

    work = Path(tempfile.mkdtemp(prefix="fraud-model-quality-"))
    config = SimulationConfig(
        n_customers=args.customers, n_terminals=2 * args.customers, n_days=args.days,
        seed=args.seed, with_coordinates=True,
    )  # fmt: skip
    sim = simulate(config)
    start_ms = protocol_start_ms(sim)
    path = work / "tx.csv"
    write_file(sim, path)
    n = len(sim)
    first_day = (start_ms // MS_PER_DAY) - (sim.start_date - dt.date(1970, 1, 1)).days
    print(
        f"{n:,} transactions ({int(sim.fraud.sum()):,} frauds), {args.days} days; training "
        f"starts on day {first_day}",
        flush=True,
    )

    # (b) batch: the definitions and scikit-learn, nothing of the engine's pipeline
    started = time.perf_counter()
    features = batch_features(sim, delay_days=LABEL_DELAY_DAYS)
    batch = {k: batch_result(sim, features, k, ALL_FEATURES, start_ms, args.seed) for k in kinds}
    batch_s = time.perf_counter() - started
    print(f"batch features and scikit-learn: {batch_s:.0f} s", flush=True)

    # (a) streaming: broker + worker, then fraud train / evaluate from the topics
    broker = local_broker(choose_engine(args.engine), work / "broker")
    broker.start()
    print(f"broker: {broker.engine} {broker.version} on {broker.bootstrap}", flush=True)
    stream: dict[str, EvaluationResult] = {}
    score_diff: dict[str, float] = {}
    try:
        settings = Settings(brokers=broker.bootstrap, data_dir=work / "state", web_port=None)
        ensure_topics(settings)
        steps = StepReplay(settings, path, work, label_delay_ms=LABEL_DELAY_DAYS * MS_PER_DAY)
        started = time.perf_counter()
        with worker_process(settings, work, print):
            for first in range(0, n, 20 * args.step):
                steps.run(first, min(n, first + 20 * args.step), step=args.step)
                print(f"  {len(steps.decisions):,} / {n:,} decisions", flush=True)
        replay_s = time.perf_counter() - started
        steps.close()
        started = time.perf_counter()
        log = read_decisions(settings)
        for kind in kinds:
            out = work / f"{kind}.json"
            report = train_from_topics(settings, out, kind, start_ms=start_ms,
                                       train_days=TRAIN_DAYS, delay_days=DELAY_DAYS,
                                       seed=args.seed)  # fmt: skip
            if report.n_decisions != n or report.n_labels != n:
                raise RuntimeError(
                    f"read {report.n_decisions} decisions and {report.n_labels} labels "
                    f"for {n} transactions"
                )
            print(report.summary(), flush=True)
            stream[kind] = evaluate_from_topics(settings, model_path=out, test_days=TEST_DAYS)
            # diagnostic: how far the streamed model's scores are from scikit-learn's in batch
            order = np.array([int(t) for t in log.transaction_id])
            engine = rescore(load_model_table(out), log)
            train, _ = train_delay_test_split(sim.event_time_ms, start_ms)
            sk = batch_scores(features, sim.fraud, train, kind, ALL_FEATURES, args.seed)
            score_diff[kind] = float(np.max(np.abs(engine - sk[order])))
        engine_s = time.perf_counter() - started
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)  # about 1 GB of broker log at the defaults

    results: dict[str, tuple[EvaluationResult, EvaluationResult]] = {
        k: (stream[k], batch[k]) for k in kinds
    }
    rows = comparison_rows(results)
    failures = [f for k in kinds for f in shortfalls(k, *results[k])]
    print()
    print(format_table(rows))
    for k in kinds:
        s = stream[k]
        print(
            f"{k}: test set {s.n_test:,} transactions, {s.n_test_frauds:,} frauds, {s.days} "
            f"days; max |engine score - scikit-learn score| over all rows {score_diff[k]:.3g}"
        )
    total_s = time.perf_counter() - started_all
    verdict = "NO WORSE" if not failures else "WORSE"
    print(
        f"\n{verdict}: streaming against batch within {TOLERANCE:g} (replay {replay_s:.0f} s, "
        f"train+evaluate {engine_s:.0f} s, batch {batch_s:.0f} s, total {total_s:.0f} s)"
    )
    for f in failures:
        print(f"  {f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "model_quality.json"
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()} cores={os.cpu_count()}",
                "customers": args.customers,
                "days": args.days,
                "seed": args.seed,
                "transactions": n,
                "frauds": int(sim.fraud.sum()),
                "train_start_day": int(first_day),
                "protocol": {
                    "train_days": TRAIN_DAYS,
                    "delay_days": DELAY_DAYS,
                    "test_days": TEST_DAYS,
                },
                "tolerance": TOLERANCE,
                "no_worse": not failures,
                "failures": failures,
                "rows": rows,
                "streaming": {k: asdict(v) for k, v in stream.items()},
                "batch": {k: asdict(v) for k, v in batch.items()},
                "max_abs_score_diff": score_diff,
                "seconds": {
                    "replay": replay_s,
                    "train_evaluate": engine_s,
                    "batch": batch_s,
                    "total": total_s,
                },
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
