"""Train a model table from the engine's own decision log, and evaluate scores offline.

The engine writes every decision with the feature vector it computed (``Decision.features``);
the fraud labels arrive on the labels topic. Training on those features (rather than on features
recomputed in batch) gives a model whose inputs are exactly what the hot path will feed it.

Protocol (the handbook's ``get_train_test_set``, see ``fraud.tools.evaluate``): days are 24-hour
windows from ``start_ms``; the training set is the decisions of days ``[0, train_days)`` that
have a label. ``delay_days`` (the label delay: the next ``delay_days`` are left out) and
``test_days`` then give the test period that :func:`evaluate_from_topics` scores.

Model kinds (exported with ``fraud.model.export``):

``"trees"``
    ``HistGradientBoostingClassifier`` on every feature (``ALL_FEATURES``) that has a value in
    at least one training row; NaN ("missing", e.g. ``seconds_since_prev_tx`` on a customer's
    first transaction) is routed natively and the exported table routes it the same way. A
    feature missing from every training row (``geo_velocity_kmh`` without coordinates) is left
    out (``meta["dropped"]``): it carries nothing, and sklearn cannot bin it.
``"logistic"``
    ``Pipeline(StandardScaler, LogisticRegression)``. A logistic table refuses NaN at scoring
    time, and the worker scores every transaction, so the model only uses features that are
    always defined: the features that can be missing (``fraud.contracts.units.NULLABLE_FEATURES``)
    and any other feature with a NaN in the training rows are left out of the table
    (``meta["dropped"]``). The worker selects the model's features by name
    (``check_features``), so a table on a subset of the features works as is. Imputing
    instead would not help: the kernel has no imputer, so the worker would still send NaN.

Ids: ``fraud.tools.evaluate`` works on integer ids. Transaction and customer ids that are all
decimal
integers are used as such (so Card Precision's tie order is the numeric one); otherwise the
strings are replaced by their rank among the sorted distinct strings.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fraud.contracts.units import ALL_FEATURES, DAY_MS, NULLABLE_FEATURES
from fraud.model.export import from_gradient_boosting, from_logistic
from fraud.model.scoring import score
from fraud.model.table import ModelTable, check_features, load_model_table, save_model_table
from fraud.settings import Settings
from fraud.tools.decision_log import DecisionLog, LabelLog, read_decisions, read_labels
from fraud.tools.evaluate import (
    EvaluationResult,
    evaluate,
    train_delay_test_split,
)

__all__ = [
    "ModelKind",
    "TrainReport",
    "build_training_set",
    "day_start_ms",
    "evaluate_from_topics",
    "join_labels",
    "rescore",
    "train_from_topics",
    "train_model",
]

ModelKind = Literal["logistic", "trees"]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]

# HistGradientBoostingClassifier settings: small, shallow trees; no early stopping, so training
# uses every row and a given seed always gives the same table.
TREE_PARAMS: dict[str, Any] = {
    "max_iter": 100,
    "max_depth": 3,
    "learning_rate": 0.1,
    "min_samples_leaf": 20,
    "l2_regularization": 0.0,
    "early_stopping": False,
}


def day_start_ms(event_time_ms: int) -> int:
    """Midnight UTC of the day of ``event_time_ms``."""
    return (int(event_time_ms) // DAY_MS) * DAY_MS


def _iso_day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def join_labels(decision_ids: Sequence[str], labels: LabelLog) -> tuple[npt.NDArray[np.bool_], I8]:
    """``(has_label, fraud)`` for each decision id (fraud 0 where there is no label)."""
    by_id = dict(zip(labels.transaction_id, labels.fraud.tolist(), strict=True))
    n = len(decision_ids)
    has = np.zeros(n, np.bool_)
    fraud = np.zeros(n, np.int8)
    for i, tx in enumerate(decision_ids):
        value = by_id.get(tx)
        if value is not None:
            has[i] = True
            fraud[i] = value
    return has, fraud


def build_training_set(
    decisions: DecisionLog,
    labels: LabelLog,
    *,
    start_ms: int,
    train_days: int = 7,
    delay_days: int = 7,
) -> tuple[F64, I8]:
    """``(X, y)``: the decisions of the training days ``[0, train_days)`` from ``start_ms``
    that have a label, in log order; ``X`` in ``decisions.feature_names`` order (NaN kept).

    ``delay_days`` only checks the protocol's periods (the test period starts after it).
    """
    train, _ = train_delay_test_split(
        decisions.event_time_ms, start_ms, train_days, delay_days, test_days=1
    )
    has, fraud = join_labels(decisions.transaction_id, labels)
    keep = train & has
    return decisions.features[keep], fraud[keep]


def _check_training(y: npt.NDArray[Any]) -> None:
    n = int(y.shape[0])
    frauds = int(np.sum(y))
    if n == 0:
        raise ValueError("no labelled decisions in the training period")
    if frauds == 0 or frauds == n:
        raise ValueError(
            f"the training period needs both classes: {n} labelled decisions, {frauds} frauds"
        )


def train_model(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    kind: ModelKind,
    feature_names: Sequence[str] = ALL_FEATURES,
    seed: int = 0,
    *,
    meta: dict[str, str] | None = None,
) -> ModelTable:
    """Fit a model of ``kind`` on ``(x, y)`` and export it as a model table.

    ``x`` is (n, len(feature_names)); ``y`` 0/1. See the module docstring for the features
    each kind uses. ``meta`` is added to the table's metadata (with rows and frauds).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    names = tuple(feature_names)
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y).astype(np.int64)
    if xa.ndim != 2 or xa.shape[1] != len(names):
        raise ValueError(f"x must have shape (n, {len(names)}), got {xa.shape}")
    if ya.shape != (xa.shape[0],):
        raise ValueError(f"y must have shape ({xa.shape[0]},), got {ya.shape}")
    _check_training(ya)
    info = {
        **(meta or {}),
        "train_rows": str(int(ya.shape[0])),
        "train_frauds": str(int(ya.sum())),
        "seed": str(seed),
    }
    if kind == "trees":
        # a feature never present in training (e.g. geo_velocity_kmh without coordinates)
        # carries no information, and sklearn cannot bin an all-NaN column
        present = np.asarray(~np.isnan(xa).all(axis=0), dtype=np.bool_)
        used = np.flatnonzero(present).tolist()
        dropped = [name for j, name in enumerate(names) if not present[j]]
        hgb = HistGradientBoostingClassifier(**TREE_PARAMS, random_state=seed)
        hgb.fit(xa[:, used], ya)
        params = ",".join(f"{k}={v}" for k, v in TREE_PARAMS.items())
        return from_gradient_boosting(
            hgb,
            tuple(names[j] for j in used),
            meta={**info, "params": params, "dropped": ",".join(dropped)},
        )
    if kind == "logistic":
        has_nan = np.asarray(np.isnan(xa).any(axis=0), dtype=np.bool_)
        used = [
            j for j, name in enumerate(names) if name not in NULLABLE_FEATURES and not has_nan[j]
        ]
        if not used:
            raise ValueError("no feature is free of NaN: a logistic model cannot be trained")
        dropped = [name for j, name in enumerate(names) if j not in set(used)]
        kept = tuple(names[j] for j in used)
        pipe = Pipeline(
            [
                ("scale", StandardScaler()),
                ("lr", LogisticRegression(max_iter=1000, random_state=seed)),
            ]
        )
        pipe.fit(xa[:, used], ya)
        return from_logistic(pipe, kept, meta={**info, "dropped": ",".join(dropped)})
    raise ValueError(f"unknown model kind {kind!r} (expected 'logistic' or 'trees')")


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train_from_topics` read, trained on and wrote."""

    path: Path
    kind: str
    version: str
    start_ms: int
    train_days: int
    n_decisions: int
    n_labels: int
    n_train: int
    n_train_frauds: int
    features: tuple[str, ...]

    def summary(self) -> str:
        end = self.start_ms + self.train_days * DAY_MS
        return (
            f"{self.kind} model {self.version} -> {self.path}\n"
            f"  trained on {self.n_train} labelled decisions ({self.n_train_frauds} frauds) "
            f"from {_iso_day(self.start_ms)} to {_iso_day(end)}\n"
            f"  read {self.n_decisions} decisions and {self.n_labels} labels; "
            f"{len(self.features)} features"
        )


def _first_day(decisions: DecisionLog) -> int:
    if len(decisions) == 0:
        raise ValueError("the decisions topic is empty")
    return day_start_ms(int(decisions.event_time_ms.min()))


def train_from_topics(
    settings: Settings,
    out_path: str | os.PathLike[str],
    kind: ModelKind,
    *,
    start_ms: int | None = None,
    train_days: int = 7,
    delay_days: int = 7,
    seed: int = 0,
    idle_timeout_s: float = 3.0,
    progress: Callable[[str], None] | None = None,
) -> TrainReport:
    """Read decisions and labels, train on the training days, write the table at ``out_path``.

    ``start_ms`` defaults to midnight UTC of the first decision's day. The table's meta records
    the period (``train_start_ms``, ``train_days``, ``delay_days``), which
    :func:`evaluate_from_topics` uses as its default protocol for that model.
    """
    say = progress or (lambda _text: None)
    decisions = read_decisions(settings, idle_timeout_s=idle_timeout_s)
    say(f"read {len(decisions)} decisions")
    labels = read_labels(settings, idle_timeout_s=idle_timeout_s)
    say(f"read {len(labels.transaction_id)} labels")
    start = _first_day(decisions) if start_ms is None else int(start_ms)
    x, y = build_training_set(
        decisions, labels, start_ms=start, train_days=train_days, delay_days=delay_days
    )
    end = start + train_days * DAY_MS
    meta = {
        "train_start": _iso_day(start),
        "train_end": _iso_day(end),
        "train_start_ms": str(start),
        "train_days": str(train_days),
        "delay_days": str(delay_days),
        "trained_from": settings.topic_names.decisions,
    }
    table = train_model(x, y, kind, decisions.feature_names, seed, meta=meta)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    path = save_model_table(table, out_path)
    return TrainReport(
        path=path,
        kind=table.kind,
        version=table.version,
        start_ms=start,
        train_days=train_days,
        n_decisions=len(decisions),
        n_labels=len(labels.transaction_id),
        n_train=int(y.shape[0]),
        n_train_frauds=int(y.sum()),
        features=table.feature_names,
    )


def _int_ids(*groups: Sequence[str]) -> list[I64]:
    """Integer ids for string ids, consistently across ``groups`` (module docstring)."""
    every = [s for g in groups for s in g]
    try:
        if all(s.isascii() and s.lstrip("-").isdigit() for s in every):
            return [np.array([int(s) for s in g], dtype=np.int64) for g in groups]
    except OverflowError:
        pass
    _, inverse = np.unique(np.array(every, dtype=object), return_inverse=True)
    out: list[I64] = []
    at = 0
    for g in groups:
        out.append(inverse[at : at + len(g)].astype(np.int64))
        at += len(g)
    return out


def rescore(table: ModelTable, decisions: DecisionLog) -> F64:
    """Scores of ``table`` on the logged feature vectors."""
    columns = check_features(table, decisions.feature_names)
    scores, _ = score(table, decisions.features[:, columns])
    return scores


def evaluate_from_topics(
    settings: Settings,
    *,
    model_path: str | os.PathLike[str] | None = None,
    start_ms: int | None = None,
    train_days: int | None = None,
    delay_days: int | None = None,
    test_days: int = 7,
    idle_timeout_s: float = 3.0,
    progress: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """The handbook protocol on the logged decisions (``fraud.tools.evaluate.evaluate``).

    Without ``model_path`` the scores are the decisions' own ``score`` (what the engine
    decided with); with it, the logged features are re-scored with that model table (to compare
    a model, e.g. one trained in batch, on exactly the streaming features).

    Defaults: ``start_ms``, ``train_days`` and ``delay_days`` from the model's meta when it
    records them (:func:`train_from_topics` does), else the first decision's day, 7 and 7.
    Decisions without a label (e.g. the last days, whose labels are not known yet) are left
    out, which ``progress`` reports.
    """
    say = progress or (lambda _text: None)
    table = None if model_path is None else load_model_table(model_path)
    meta = {} if table is None else dict(table.meta)
    decisions = read_decisions(settings, idle_timeout_s=idle_timeout_s)
    say(f"read {len(decisions)} decisions")
    labels = read_labels(settings, idle_timeout_s=idle_timeout_s)
    say(f"read {len(labels.transaction_id)} labels")
    if start_ms is None:
        start_ms = (
            int(meta["train_start_ms"]) if "train_start_ms" in meta else _first_day(decisions)
        )
    if train_days is None:
        train_days = int(meta.get("train_days", 7))
    if delay_days is None:
        delay_days = int(meta.get("delay_days", 7))
    scores = decisions.score if table is None else rescore(table, decisions)
    has, _ = join_labels(decisions.transaction_id, labels)
    if not has.all():
        say(f"{int((~has).sum())} decisions have no label: left out")
    keep = np.flatnonzero(has)
    tx_ids = [decisions.transaction_id[i] for i in keep]
    tx, ltx = _int_ids(tx_ids, labels.transaction_id)
    (cust,) = _int_ids([decisions.customer_id[i] for i in keep])
    return evaluate(
        tx,
        cust,
        decisions.event_time_ms[keep],
        scores[keep],
        ltx,
        labels.fraud,
        start_ms=start_ms,
        train_days=train_days,
        delay_days=delay_days,
        test_days=test_days,
    )
