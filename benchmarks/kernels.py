"""Hot-path kernel cost per transaction (features + rules + model): numba vs pure Python.

    python benchmarks/kernels.py [--transactions 20000] [--repeats 7]
        [--reference-transactions N] [--reference-repeats 3]

A realistic stream from ``fraud.tools.simulate`` (1,000 customers, 2,000 terminals, with
coordinates,
as many days as give ``--transactions``) goes through the worker's stages in micro-batches of
1,000 transactions, state carried between batches as the bytes the store would keep:

* customer: ``fraud.windows.customer.update_customers`` (decoding every state, the three kernels,
  encoding the new states: all part of the cost) vs ``fraud.reference.customer``;
* assembly: the feature matrix (``ALL_FEATURES``) from the two state stages, numpy as in
  ``fraud/scoring/customer_stage.py`` and ``terminal_stage.py`` vs a pure-Python loop written
  here (no twin in ``fraud.reference``);
* terminal: each batch first applies the fraud labels known by its last event time (labels come
  7 days after their transaction, as ``fraud replay`` sends them), then its transactions: two
  ``fraud.windows.terminal.update_terminals`` calls, as the worker does, vs
  ``fraud.reference.terminal.reference_terminals_evicting`` on the same event sequence;
* rules: ``tables/rules/v1.csv`` compiled, ``apply_rules`` vs ``reference_evaluate_many``;
* model: a table exported from a HistGradientBoostingClassifier (100 trees, depth 3) trained on
  synthetic values of all ``ALL_FEATURES`` columns, ``fraud.model.scoring.score`` vs
  ``reference_score``; and a logistic table (``StandardScaler`` + ``LogisticRegression``, on the
  columns that are never NaN, as ``fraud.tools.train`` does) for comparison.

Not timed: record parsing, id hashing, the state store's get/put and protobuf between stages.
Numba is warm (each module's ``warmup()`` plus one untimed pass over the stream). Each repeat
runs the whole stream from empty state; a stage's cost is its summed time / transactions, and
the table reports the median over repeats. The pure-Python twins (quadratic per key) run on
the same stream, same batches and labels, ``--reference-repeats`` times; on 20,000 transactions
that takes a few seconds. ``--reference-transactions N`` limits them to the first N (whole
batches): their state is younger there, so their per-transaction cost, and the speed-ups, come
out lower than on the full stream. Their outputs are checked against numba's on that
subset. Prints a table and writes JSON to benchmarks/results/kernels.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fraud.contracts.units import (
    ALL_FEATURES,
    DAY_MS,
    HOUR_MS,
    LABEL_DELAY_DAYS,
    MINUTE_MS,
    NULLABLE_FEATURES,
)
from fraud.model import scoring
from fraud.model.export import from_gradient_boosting, from_logistic
from fraud.model.scoring import score
from fraud.model.table import ModelTable
from fraud.reference.customer import reference_customers
from fraud.reference.model import reference_score
from fraud.reference.rules import reference_evaluate_many
from fraud.reference.terminal import reference_terminals_evicting
from fraud.rules import compiled as compiled_mod
from fraud.rules.compiled import apply_rules, compile_rules
from fraud.rules.table import load_rule_table
from fraud.scoring.features import amount_ratios, time_features
from fraud.tools.simulate import SimulationConfig, simulate_at_least
from fraud.windows import customer as customer_mod
from fraud.windows import terminal as terminal_mod
from fraud.windows.customer import CustomerConfig, terminal_hash, update_customers
from fraud.windows.terminal import TerminalConfig, risk, tx_hash, update_terminals

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
RULES = ROOT / "tables" / "rules" / "v1.csv"
BATCH = 1000  # the worker's micro-batch size
LABEL_DELAY_MS = LABEL_DELAY_DAYS * DAY_MS
SCALE = 100.0  # simulated amounts are cents
TARGET_NS = 2000.0
TARGET_SPEEDUP = 50.0
STAGES = ("customer", "assembly", "terminal", "rules", "model_trees", "model_logistic")
TOTALS = {
    "total (trees)": ("customer", "assembly", "terminal", "rules", "model_trees"),
    "total (logistic)": ("customer", "assembly", "terminal", "rules", "model_logistic"),
}


# ------------------------------------------------------------------------------------------
# Data


class Stream:
    """The simulated transactions, cut into batches, with each batch's labels and groups."""

    def __init__(self, n_tx: int, seed: int) -> None:
        sim, self.days = simulate_at_least(
            n_tx,
            SimulationConfig(
                n_customers=1000, n_terminals=2000, n_days=1, seed=seed, with_coordinates=True
            ),
        )
        assert sim.lat is not None and sim.lon is not None
        self.n = n_tx
        self.customer = sim.customer_id[:n_tx]
        self.terminal = sim.terminal_id[:n_tx]
        self.ts = sim.event_time_ms[:n_tx]
        self.amount = sim.amount_cents[:n_tx]
        self.lat = sim.lat[:n_tx]
        self.lon = sim.lon[:n_tx]
        self.fraud = sim.fraud[:n_tx].astype(np.int64)
        self.utc_offset = np.zeros(n_tx, np.int64)
        # hashing ids is record parsing, not kernel work: done once here
        self.terminal_hash = np.array(
            [terminal_hash(f"T{t}") for t in self.terminal.tolist()], np.int64
        )
        self.tx_hash = np.array(
            [tx_hash(f"TX{i}") for i in range(n_tx)], np.int64
        )  # transaction ids 0..n-1
        self.batches = [(s, min(s + BATCH, n_tx)) for s in range(0, n_tx, BATCH)]
        # labels (for every transaction, fraud 0 or 1) become known 7 days later; a batch applies
        # those known by its last event time and not applied yet
        label_time = self.ts + LABEL_DELAY_MS
        self.labels: list[np.ndarray] = []
        done = 0
        order = np.argsort(label_time, kind="stable")
        for _, stop in self.batches:
            upto = int(np.searchsorted(label_time[order], self.ts[stop - 1], side="right"))
            upto = max(done, min(upto, stop))  # only transactions already seen
            self.labels.append(order[done:upto])
            done = upto
        self.label_time = label_time
        # the state store's keys for each call (KeyedBatch's job, not timed)
        self.cust_groups = [
            np.unique(self.customer[s:e], return_inverse=True) for s, e in self.batches
        ]
        self.term_groups = [
            np.unique(self.terminal[s:e], return_inverse=True) for s, e in self.batches
        ]
        self.label_groups = [
            np.unique(self.terminal[ix], return_inverse=True) for ix in self.labels
        ]


# ------------------------------------------------------------------------------------------
# Policy: rules and models


def synthetic_features(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Plausible values for every ``ALL_FEATURES`` column, and a label that depends on a few."""
    cols: dict[str, np.ndarray] = {}
    amount = rng.lognormal(3.5, 0.9, n)
    cols["amount"] = amount
    cols["tx_during_weekend"] = (rng.random(n) < 2 / 7).astype(float)
    cols["tx_during_night"] = (rng.random(n) < 0.1).astype(float)
    for days in (1, 7, 30):
        mean = rng.lognormal(3.5, 0.6, n)
        cols[f"customer_nb_tx_{days}d"] = 1.0 + rng.poisson(2.0 * days, n)
        cols[f"customer_avg_amount_{days}d"] = mean
        cols[f"amount_to_avg_{days}d"] = amount / mean
        cols[f"terminal_nb_tx_{days}d"] = rng.poisson(8.0 * days, n).astype(float)
        cols[f"terminal_risk_{days}d"] = rng.beta(0.3, 20.0, n)
    seconds = rng.exponential(40_000.0, n)
    seconds[rng.random(n) < 0.05] = np.nan
    cols["seconds_since_prev_tx"] = seconds
    cols["first_use_of_terminal"] = (rng.random(n) < 0.4).astype(float)
    velocity = rng.exponential(30.0, n)
    velocity[np.isnan(seconds)] = np.nan
    cols["geo_velocity_kmh"] = velocity
    x = np.column_stack([cols[name] for name in ALL_FEATURES])
    logit = (
        -5.0
        + 3.0 * (amount > 220)
        + 1.5 * (cols["amount_to_avg_30d"] > 4)
        + 40.0 * cols["terminal_risk_7d"]
        + 0.8 * cols["first_use_of_terminal"]
        + rng.normal(0.0, 1.0, n)
    )
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return x, y


def train_models(seed: int) -> tuple[ModelTable, ModelTable, np.ndarray]:
    """(trees table on all columns, logistic table, the logistic table's columns)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = synthetic_features(np.random.default_rng(seed), 20_000)
    gbm = HistGradientBoostingClassifier(
        max_iter=100, max_depth=3, learning_rate=0.1, early_stopping=False, random_state=seed
    ).fit(x, y)
    trees = from_gradient_boosting(gbm, ALL_FEATURES, version="bench-trees")
    cols = np.array(
        [j for j, name in enumerate(ALL_FEATURES) if name not in NULLABLE_FEATURES], np.intp
    )
    pipe = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=2000))]).fit(
        x[:, cols], y
    )
    logistic = from_logistic(pipe, [ALL_FEATURES[j] for j in cols], version="bench-logistic")
    return trees, logistic, cols


# ------------------------------------------------------------------------------------------
# The numba path (what the worker runs)


def assemble(
    amount: np.ndarray,
    ts: np.ndarray,
    utc_offset: np.ndarray,
    counts: np.ndarray,
    sums: np.ndarray,
    extras: np.ndarray,
    t_counts: np.ndarray,
    t_frauds: np.ndarray,
) -> np.ndarray:
    """The ``ALL_FEATURES`` matrix, as ``CustomerStage.process`` and ``TerminalStage`` build it."""
    n = amount.shape[0]
    major = amount / SCALE
    averages = (sums / counts) / SCALE
    windows = np.empty((n, 2 * counts.shape[1]), dtype=np.float64)
    windows[:, 0::2] = counts
    windows[:, 1::2] = averages
    customer = np.hstack(
        [major[:, None], time_features(ts, utc_offset), windows, amount_ratios(major, averages),
         extras]
    )  # fmt: skip
    terminal = np.empty((n, 2 * t_counts.shape[1]), dtype=np.float64)
    terminal[:, 0::2] = t_counts
    terminal[:, 1::2] = risk(t_counts, t_frauds)
    return np.hstack([customer, terminal])


class Outputs:
    def __init__(self, n: int) -> None:
        self.features = np.empty((n, len(ALL_FEATURES)), np.float64)
        self.action = np.empty(n, np.int8)
        self.trees = np.empty(n, np.float64)
        self.logistic = np.empty(n, np.float64)


def run_numba(
    s: Stream,
    rules: Any,
    trees: ModelTable,
    logistic: ModelTable,
    log_cols: np.ndarray,
    out: Outputs | None = None,
) -> dict[str, int]:
    """One pass over the whole stream from empty state; summed ns per stage."""
    cconf, tconf = CustomerConfig(), TerminalConfig()
    cstore: dict[int, bytes] = {}
    tstore: dict[int, bytes] = {}
    spent = dict.fromkeys(STAGES, 0)
    all_cols = np.arange(len(ALL_FEATURES))
    clock = time.perf_counter_ns
    for b, (start, stop) in enumerate(s.batches):
        sl = slice(start, stop)
        n = stop - start
        # customer stage
        keys, group = s.cust_groups[b]
        states = [cstore.get(k) for k in keys.tolist()]
        t0 = clock()
        counts, sums, extras, new_states = update_customers(
            states, group, s.ts[sl], s.amount[sl], s.terminal_hash[sl], s.lat[sl], s.lon[sl],
            cconf,
        )  # fmt: skip
        t1 = clock()
        spent["customer"] += t1 - t0
        cstore.update(zip(keys.tolist(), new_states, strict=True))

        # terminal stage: labels first, then the transactions
        ix = s.labels[b]
        if ix.shape[0]:
            lkeys, lgroup = s.label_groups[b]
            states = [tstore.get(k) for k in lkeys.tolist()]
            m = ix.shape[0]
            t0 = clock()
            _, _, new_states = update_terminals(
                states, lgroup, np.ones(m, np.int8), s.label_time[ix], s.tx_hash[ix],
                s.fraud[ix].astype(np.int8), tconf,
            )  # fmt: skip
            spent["terminal"] += clock() - t0
            tstore.update(zip(lkeys.tolist(), new_states, strict=True))
        tkeys, tgroup = s.term_groups[b]
        states = [tstore.get(k) for k in tkeys.tolist()]
        t0 = clock()
        t_counts, t_frauds, new_states = update_terminals(
            states, tgroup, np.zeros(n, np.int8), s.ts[sl], s.tx_hash[sl], np.zeros(n, np.int8),
            tconf,
        )  # fmt: skip
        t1 = clock()
        spent["terminal"] += t1 - t0
        tstore.update(zip(tkeys.tolist(), new_states, strict=True))

        t0 = clock()
        features = assemble(
            s.amount[sl], s.ts[sl], s.utc_offset[sl], counts, sums, extras, t_counts, t_frauds
        )
        t1 = clock()
        _, action = apply_rules(rules, features)
        t2 = clock()
        tree_score, _ = score(trees, features[:, all_cols])  # the worker gathers model_columns
        t3 = clock()
        log_score, _ = score(logistic, features[:, log_cols])
        t4 = clock()
        spent["assembly"] += t1 - t0
        spent["rules"] += t2 - t1
        spent["model_trees"] += t3 - t2
        spent["model_logistic"] += t4 - t3
        if out is not None:
            out.features[sl] = features
            out.action[sl] = action
            out.trees[sl] = tree_score
            out.logistic[sl] = log_score
    return spent


# ------------------------------------------------------------------------------------------
# The pure-Python path (the twins in fraud.reference)


def reference_assemble(
    amount: list[int],
    ts: list[int],
    utc_offset: list[int],
    counts: list[list[int]],
    sums: list[list[int]],
    extras: list[list[float]],
    t_counts: list[list[int]],
    t_frauds: list[list[int]],
) -> list[list[float]]:
    """``assemble`` row by row, in plain Python."""
    rows: list[list[float]] = []
    for i, a in enumerate(amount):
        major = a / SCALE
        local = ts[i] + utc_offset[i] * MINUTE_MS
        day = local // DAY_MS
        row = [major, float((day + 3) % 7 >= 5), float((local - day * DAY_MS) // HOUR_MS <= 6)]
        averages = [sums[i][w] / counts[i][w] / SCALE for w in range(len(counts[i]))]
        for c, avg in zip(counts[i], averages, strict=True):
            row += [float(c), avg]
        row += [major / avg if avg != 0 else 0.0 for avg in averages]
        row += extras[i]
        for c, f in zip(t_counts[i], t_frauds[i], strict=True):
            row += [float(c), f / c if c > 0 else 0.0]
        rows.append(row)
    return rows


class RefInputs:
    """The first ``n`` transactions (whole batches) as Python lists, prepared untimed."""

    def __init__(self, s: Stream, n: int) -> None:
        n_batches = math.ceil(n / BATCH)
        self.n = n = min(s.batches[n_batches - 1][1], s.n)
        self.customer = s.customer[:n].tolist()
        self.ts = s.ts[:n].tolist()
        self.amount = s.amount[:n].tolist()
        self.terminal_hash = s.terminal_hash[:n].tolist()
        self.lat = s.lat[:n].tolist()
        self.lon = s.lon[:n].tolist()
        self.utc_offset = s.utc_offset[:n].tolist()
        self.batch_sizes = [stop - start for start, stop in s.batches[:n_batches]]
        # terminal events: per batch its labels, then its transactions (two calls, two batches)
        term: list[int] = []
        kind: list[int] = []
        ets: list[int] = []
        hashes: list[int] = []
        fraud: list[int] = []
        sizes: list[int] = []
        self.tx_rows: list[int] = []  # position of each transaction among the terminal events
        for b, (start, stop) in enumerate(s.batches[:n_batches]):
            ix = s.labels[b].tolist()
            term += s.terminal[ix].tolist()
            kind += [1] * len(ix)
            ets += s.label_time[ix].tolist()
            hashes += s.tx_hash[ix].tolist()
            fraud += s.fraud[ix].tolist()
            self.tx_rows += range(len(term), len(term) + stop - start)
            term += s.terminal[start:stop].tolist()
            kind += [0] * (stop - start)
            ets += s.ts[start:stop].tolist()
            hashes += s.tx_hash[start:stop].tolist()
            fraud += [0] * (stop - start)
            sizes += [len(ix), stop - start]
        self.term, self.kind, self.ets, self.hashes, self.tfraud = term, kind, ets, hashes, fraud
        self.term_sizes = sizes


def run_reference(
    r: RefInputs, rules: Any, trees: ModelTable, logistic: ModelTable, log_cols: np.ndarray
) -> tuple[dict[str, int], dict[str, Any]]:
    cconf, tconf = CustomerConfig(), TerminalConfig()
    clock = time.perf_counter_ns
    spent: dict[str, int] = {}
    t0 = clock()
    counts, sums, extras = reference_customers(
        r.customer, r.ts, r.amount, r.terminal_hash, r.lat, r.lon, cconf.window_ms,
        r.batch_sizes, cconf.retain_ms,
    )  # fmt: skip
    t1 = clock()
    t_counts_all, t_frauds_all = reference_terminals_evicting(
        r.term, r.kind, r.ets, r.hashes, r.tfraud, tconf.window_ms, tconf.delay_ms,
        r.term_sizes, tconf.retain_ms, tconf.max_pending,
    )  # fmt: skip
    t_counts = [t_counts_all[i] for i in r.tx_rows]
    t_frauds = [t_frauds_all[i] for i in r.tx_rows]
    t2 = clock()
    rows = reference_assemble(
        r.amount, r.ts, r.utc_offset, counts, sums, extras, t_counts, t_frauds
    )
    t3 = clock()
    _, actions = reference_evaluate_many(rules, ALL_FEATURES, rows)
    t4 = clock()
    tree_out = reference_score(trees, rows)
    t5 = clock()
    cols = log_cols.tolist()
    log_out = reference_score(logistic, [[row[j] for j in cols] for row in rows])
    t6 = clock()
    spent = {
        "customer": t1 - t0,
        "terminal": t2 - t1,
        "assembly": t3 - t2,
        "rules": t4 - t3,
        "model_trees": t5 - t4,
        "model_logistic": t6 - t5,
    }
    results = {
        "features": rows,
        "action": actions,
        "trees": [o[0] for o in tree_out],
        "logistic": [o[0] for o in log_out],
    }
    return spent, results


def check_agreement(out: Outputs, ref: dict[str, Any], n: int) -> dict[str, bool]:
    features = np.array(ref["features"], np.float64)
    return {
        "features": bool(np.allclose(out.features[:n], features, rtol=1e-9, equal_nan=True)),
        "rules": bool(np.array_equal(out.action[:n], np.array(ref["action"]))),
        "model_trees": bool(np.allclose(out.trees[:n], ref["trees"], rtol=1e-9)),
        "model_logistic": bool(np.allclose(out.logistic[:n], ref["logistic"], rtol=1e-9)),
    }


# ------------------------------------------------------------------------------------------


def timed_repeats(
    repeats: int, run: Callable[[], dict[str, int]], n: int
) -> dict[str, list[float]]:
    per_stage: dict[str, list[float]] = {name: [] for name in (*STAGES, *TOTALS)}
    for _ in range(repeats):
        gc.collect()
        spent = run()
        for name in STAGES:
            per_stage[name].append(spent[name] / n)
        for name, parts in TOTALS.items():
            per_stage[name].append(sum(spent[p] for p in parts) / n)
    return per_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--reference-transactions",
        type=int,
        default=None,
        help="run the pure-Python twins on this many first transactions (default: all)",
    )
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print("simulating, training the model tables, warming numba ...", flush=True)
    stream = Stream(args.transactions, args.seed)
    rules = compile_rules(load_rule_table(RULES, ALL_FEATURES), ALL_FEATURES)
    rule_table = load_rule_table(RULES, ALL_FEATURES)
    trees, logistic, log_cols = train_models(args.seed)
    for warm in (customer_mod.warmup, terminal_mod.warmup, compiled_mod.warmup, scoring.warmup):
        warm()
    out = Outputs(stream.n)
    run_numba(stream, rules, trees, logistic, log_cols, out)  # untimed warm pass
    n_labels = sum(int(ix.shape[0]) for ix in stream.labels)

    numba_ns = timed_repeats(
        args.repeats, lambda: run_numba(stream, rules, trees, logistic, log_cols), stream.n
    )
    ref_n = args.reference_transactions or stream.n
    ref_in = RefInputs(stream, min(ref_n, stream.n))
    ref_results: dict[str, Any] = {}

    def reference_pass() -> dict[str, int]:
        spent, results = run_reference(ref_in, rule_table, trees, logistic, log_cols)
        ref_results.update(results)
        return spent

    ref_ns = timed_repeats(args.reference_repeats, reference_pass, ref_in.n)
    agree = check_agreement(out, ref_results, ref_in.n)

    rows: list[dict[str, Any]] = []
    for name in (*STAGES, *TOTALS):
        nb = statistics.median(numba_ns[name])
        ref = statistics.median(ref_ns[name])
        rows.append(
            {
                "stage": name,
                "numba_median_ns_per_tx": round(nb, 1),
                "numba_min_ns_per_tx": round(min(numba_ns[name]), 1),
                "reference_median_ns_per_tx": round(ref, 1),
                "speedup": round(ref / nb, 1),
            }
        )
    totals = {r["stage"]: r for r in rows if r["stage"] in TOTALS}
    targets = {
        name: {
            "median_ns_per_tx_at_most_2000": r["numba_median_ns_per_tx"] <= TARGET_NS,
            "speedup_at_least_50": r["speedup"] >= TARGET_SPEEDUP,
        }
        for name, r in totals.items()
    }

    print(
        f"\n{stream.n:,} transactions ({stream.days} days, 1,000 customers, 2,000 terminals, "
        f"{n_labels:,} labels applied) in batches of {BATCH}; numba median of {args.repeats}, "
        f"pure Python on the first {ref_in.n:,}, median of {args.reference_repeats}"
    )
    print(f"{'stage':<18}{'numba ns/tx':>13}{'(min)':>9}{'python ns/tx':>15}{'speed-up':>10}")
    for r in rows:
        if r["stage"] in TOTALS:
            print("-" * 65)
        print(
            f"{r['stage']:<18}{r['numba_median_ns_per_tx']:>13,.0f}"
            f"{r['numba_min_ns_per_tx']:>9,.0f}{r['reference_median_ns_per_tx']:>15,.0f}"
            f"{r['speedup']:>9,.0f}x"
        )
    print()
    for name, met in targets.items():
        r = totals[name]
        time_ok = "met" if met["median_ns_per_tx_at_most_2000"] else "MISSED"
        speed_ok = "met" if met["speedup_at_least_50"] else "MISSED"
        print(
            f"{name}: <= 2 us/tx {time_ok} ({r['numba_median_ns_per_tx'] / 1000:.2f} us); "
            f">= 50x {speed_ok} ({r['speedup']:.0f}x)"
        )
    print("numba and pure Python agree on the reference subset: " + ", ".join(
        f"{k} {'yes' if v else 'NO'}" for k, v in agree.items()))  # fmt: skip

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "kernels.json"
    path.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": {"arch": platform.machine(), "cpu_count": os.cpu_count()},
                "transactions": stream.n,
                "days": stream.days,
                "labels_applied": n_labels,
                "batch_size": BATCH,
                "repeats": args.repeats,
                "reference_transactions": ref_in.n,
                "reference_repeats": args.reference_repeats,
                "notes": (
                    "numba cost includes decoding and encoding the state bytes "
                    "(update_customers / update_terminals); terminal includes applying labels; "
                    "not timed: parsing, id hashing, state store get/put, protobuf"
                ),
                "stages": rows,
                "targets": {
                    "median_ns_per_tx_at_most": TARGET_NS,
                    "speedup_at_least": TARGET_SPEEDUP,
                    "met": {
                        name: "yes" if all(met.values()) else "no" for name, met in targets.items()
                    },
                    "detail": {
                        name: {k: "yes" if v else "no" for k, v in met.items()}
                        for name, met in targets.items()
                    },
                },
                "agreement_on_reference_subset": agree,
            },
            indent=2,
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
