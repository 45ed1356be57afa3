"""Detection-quality metrics and the train / delay / test protocol, in pure numpy.

This follows the assessment methodology of the open handbook *Reproducible Machine Learning for
Credit Card Fraud Detection* (Le Borgne et al.): chapter "Performance metrics" (threshold-free
metrics and "Card Precision top-k") and the shared functions ``get_train_test_set``,
``card_precision_top_k_day``, ``card_precision_top_k`` and ``performance_assessment``
(chapter "References" -> "Shared functions").

Metrics on arrays (``y_true`` 0/1, ``y_score`` float):

* :func:`roc_auc` -- area under the ROC curve, ties counted one half (average ranks); the same
  value as ``sklearn.metrics.roc_auc_score``, including ``nan`` when ``y_true`` has one class.
* :func:`average_precision` -- ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds
  taken in decreasing order (step-wise, no interpolation; tied scores form one threshold); the
  same value as ``sklearn.metrics.average_precision_score``, including 0 without positives.
* :func:`card_precision_at_k` -- the handbook's CP@k, semantics below.

Card Precision top-k (handbook ``card_precision_top_k`` with its default
``remove_detected_compromised_cards=True``), exactly as implemented here:

1. The days are the distinct values of ``days`` left after the ``known_compromised`` removal
   (step 2), in increasing order. A day whose cards are all removed in step 3 still counts, with
   precision 0 (the handbook takes its day list before that removal).
2. ``known_compromised`` (optional): cards already known as compromised, i.e. before the test
   period. A set is removed from every day; a mapping ``day -> set`` is removed from that day
   only (what :func:`known_compromised_before_test` returns). In the handbook this removal is
   done by ``get_train_test_set`` when it builds the test set, before CP@k is computed.
3. Each day, the transactions of cards *detected* on earlier days are removed. A card is
   detected on a day when it is in that day's top k **and** its aggregated label is 1. Only
   those cards are removed: a compromised card never ranked in a top k (not detected) stays,
   and a genuine card in a top k stays too.
4. Per card (``customer_ids``) over the day's remaining transactions: the maximum score and,
   separately, the maximum label (a card is compromised that day if any of its transactions
   that day is a fraud, whichever transaction carries the maximum score).
5. The cards are ranked by decreasing score; the top ``k`` are kept (all of them when fewer).
   Tied scores are ordered by increasing card id (the handbook's pandas ``sort_values`` does not
   define the order of ties).
6. Precision of the day = compromised cards in the top k / ``k`` (always divided by ``k``, even
   with fewer than ``k`` cards, as the handbook does).
7. CP@k = mean of the daily precisions (0.0 when there are no days).

Protocol (handbook ``get_train_test_set`` with ``delta_train``, ``delta_delay``,
``delta_test``): days are 24-hour windows counted from ``start_ms`` (day 0 starts at
``start_ms``; with ``start_ms`` at midnight UTC these are calendar days, as the handbook's
``TX_TIME_DAYS``). Training set: days ``[0, train_days)``; delay: the next ``delay_days``; test
set: days ``[train_days + delay_days, train_days + delay_days + test_days)``. On test day ``t``
the handbook removes every card with a fraud on a day in ``[0, t - delay_days)``: the frauds of
the training set plus the frauds of the days from the end of training up to ``t - delay_days``
(its loop adds, before test day ``d``, the frauds of day ``train_days + d - 1``). So the labels
of a day become known ``delay_days`` days later, and on the first test day exactly the cards
with a fraud in the training period are removed; with ``test_days > delay_days`` frauds of
early test days are known on late test days. Frauds before ``start_ms`` are not used (the
handbook takes them from the training set). :func:`evaluate` computes AUC, AP and CP@k on this
filtered test set, as ``performance_assessment`` does on ``get_train_test_set``'s test set.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fraud.contracts.units import DAY_MS

__all__ = [
    "CardPrecisionDaily",
    "EvaluationResult",
    "average_precision",
    "card_precision_at_k",
    "card_precision_at_k_daily",
    "evaluate",
    "exclude_known_compromised",
    "format_result",
    "known_compromised_before_test",
    "roc_auc",
    "train_delay_test_split",
]


I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]
KnownCompromised = Set[int] | Mapping[int, Set[int]]


def _labels(y_true: npt.ArrayLike, name: str = "y_true") -> I64:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if y.dtype == np.bool_:
        return y.astype(np.int64)
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{name} must hold only 0 and 1")
    return y.astype(np.int64)


def _scores(y_score: npt.ArrayLike, n: int) -> F64:
    s = np.asarray(y_score, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"y_score must have shape ({n},), got {s.shape}")
    if np.isnan(s).any():
        raise ValueError("y_score contains NaN")
    return s


def _ints(values: npt.ArrayLike, n: int, name: str) -> I64:
    a = np.asarray(values)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integers")
    return a.astype(np.int64)


def roc_auc(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Area under the ROC curve; tied scores count one half (the average-rank statistic).

    Equal to ``sklearn.metrics.roc_auc_score``; ``nan`` when ``y_true`` holds a single class.
    Computed with exact integer counts: ``sum over positives of (2 * negatives scored below +
    negatives scored equal)``, divided by ``2 * n_pos * n_neg`` at the end.
    """
    y = _labels(y_true)
    s = _scores(y_score, y.shape[0])
    n_pos = int(y.sum())
    n_neg = int(y.shape[0]) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    uniq, inverse = np.unique(s, return_inverse=True)
    m = uniq.shape[0]
    pos_at = np.bincount(inverse[y == 1], minlength=m).astype(np.int64)
    neg_at = np.bincount(inverse, minlength=m).astype(np.int64) - pos_at
    neg_below = np.cumsum(neg_at) - neg_at
    twice = int(np.sum(pos_at * (2 * neg_below + neg_at), dtype=np.int64))
    return twice / (2 * n_pos * n_neg)


def average_precision(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Average precision, ``sum_n (R_n - R_{n-1}) P_n`` over decreasing distinct thresholds.

    Equal to ``sklearn.metrics.average_precision_score`` (no interpolation; tied scores are one
    threshold); 0.0 when ``y_true`` has no positive, as sklearn returns.
    """
    y = _labels(y_true)
    s = _scores(y_score, y.shape[0])
    n_pos = int(y.sum())
    if n_pos == 0:
        return 0.0
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each run of equal scores = one threshold
    ends = np.flatnonzero(np.diff(s_sorted) != 0)
    ends = np.append(ends, s_sorted.shape[0] - 1)
    tps = np.cumsum(y_sorted)[ends]
    predicted = ends + 1
    precision = tps / predicted
    recall_step = np.diff(tps, prepend=0) / n_pos
    return float(np.sum(recall_step * precision))


@dataclass(frozen=True)
class CardPrecisionDaily:
    """CP@k per day: ``precision[i]`` on day ``days[i]``, with ``n_compromised[i]`` the
    compromised cards left that day (after the removals, the handbook's
    ``nb_compromised_cards_per_day``) and ``detected[i]`` the cards detected that day (removed
    from the later days)."""

    k: int
    days: tuple[int, ...]
    precision: tuple[float, ...]
    n_compromised: tuple[int, ...]
    detected: tuple[frozenset[int], ...]

    @property
    def mean(self) -> float:
        """The CP@k: mean of the daily precisions (0.0 without days)."""
        return float(np.mean(self.precision)) if self.precision else 0.0


def card_precision_at_k_daily(
    days: npt.ArrayLike,
    customer_ids: npt.ArrayLike,
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike,
    k: int = 100,
    known_compromised: KnownCompromised | None = None,
) -> CardPrecisionDaily:
    """The handbook's Card Precision top-k, day by day (semantics in the module docstring)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    y = _labels(y_true)
    n = y.shape[0]
    s = _scores(y_score, n)
    d = _ints(days, n, "days")
    c = _ints(customer_ids, n, "customer_ids")

    if known_compromised:
        keep = np.ones(n, np.bool_)
        if isinstance(known_compromised, Mapping):
            for day, known in known_compromised.items():
                if known:
                    on_day = d == day
                    keep &= ~(on_day & np.isin(c, np.fromiter(known, np.int64, len(known))))
        else:
            known_all = known_compromised
            keep &= ~np.isin(c, np.fromiter(known_all, np.int64, len(known_all)))
        d, c, y, s = d[keep], c[keep], y[keep], s[keep]

    detected_so_far = np.zeros(0, np.int64)
    out_days: list[int] = []
    out_precision: list[float] = []
    out_compromised: list[int] = []
    out_detected: list[frozenset[int]] = []
    for day in np.unique(d):
        on_day = d == day
        on_day &= ~np.isin(c, detected_so_far)
        cards, inverse = np.unique(c[on_day], return_inverse=True)
        best = np.full(cards.shape[0], -np.inf)
        np.maximum.at(best, inverse, s[on_day])
        label = np.zeros(cards.shape[0], np.int64)
        np.maximum.at(label, inverse, y[on_day])
        # decreasing score, ties by increasing card id (cards are sorted ascending)
        top = np.lexsort((cards, -best))[:k]
        hit = cards[top][label[top] == 1]
        out_days.append(int(day))
        out_precision.append(hit.shape[0] / k)
        out_compromised.append(int(label.sum()))
        out_detected.append(frozenset(int(x) for x in hit))
        detected_so_far = np.concatenate([detected_so_far, hit])
    return CardPrecisionDaily(
        k=k,
        days=tuple(out_days),
        precision=tuple(out_precision),
        n_compromised=tuple(out_compromised),
        detected=tuple(out_detected),
    )


def card_precision_at_k(
    days: npt.ArrayLike,
    customer_ids: npt.ArrayLike,
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike,
    k: int = 100,
    known_compromised: KnownCompromised | None = None,
) -> float:
    """The handbook's CP@k: mean over days of (compromised cards in the day's top k) / k.

    ``days`` are integer day indices (any origin), ``customer_ids`` the card of each
    transaction. Cards detected (in a top k and compromised) are removed from the following
    days; ``known_compromised`` cards (a set: every day; a mapping: per day) are removed first.
    See the module docstring for the exact semantics.
    """
    return card_precision_at_k_daily(
        days, customer_ids, y_true, y_score, k=k, known_compromised=known_compromised
    ).mean


def _day_index(event_time_ms: npt.ArrayLike, start_ms: int) -> I64:
    t = np.asarray(event_time_ms)
    if t.ndim != 1 or (t.size and not np.issubdtype(t.dtype, np.integer)):
        raise ValueError("event_time_ms must be a one-dimensional integer array")
    return (t.astype(np.int64) - np.int64(start_ms)) // DAY_MS


def _check_periods(train_days: int, delay_days: int, test_days: int) -> None:
    if train_days < 1 or delay_days < 0 or test_days < 1:
        raise ValueError("train_days and test_days must be >= 1 and delay_days >= 0")


def train_delay_test_split(
    event_time_ms: npt.ArrayLike,
    start_ms: int,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
) -> tuple[Bool, Bool]:
    """``(train_mask, test_mask)`` by time: train ``[start, start + train_days)``, then a
    ``delay_days`` gap, then test for ``test_days`` days (24-hour days from ``start_ms``).

    The test mask is the whole test period; the handbook's removal of known compromised cards
    is :func:`known_compromised_before_test` + :func:`exclude_known_compromised`.
    """
    _check_periods(train_days, delay_days, test_days)
    day = _day_index(event_time_ms, start_ms)
    train = (day >= 0) & (day < train_days)
    first_test = train_days + delay_days
    test = (day >= first_test) & (day < first_test + test_days)
    return train, test


def known_compromised_before_test(
    event_time_ms: npt.ArrayLike,
    customer_ids: npt.ArrayLike,
    y_true: npt.ArrayLike,
    start_ms: int,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
) -> dict[int, frozenset[int]]:
    """Cards known compromised on each test day, as in the handbook's ``get_train_test_set``.

    Returns ``{t: cards}`` for every test day index ``t`` (days from ``start_ms``, so
    ``train_days + delay_days + i`` for ``i < test_days``): the cards with a fraud on a day in
    ``[0, t - delay_days)``. On the first test day these are the training period's frauds;
    each later test day adds the frauds of one more day after the training period.
    """
    _check_periods(train_days, delay_days, test_days)
    day = _day_index(event_time_ms, start_ms)
    n = day.shape[0]
    y = _labels(y_true)
    if y.shape != (n,):
        raise ValueError("y_true must have the shape of event_time_ms")
    c = _ints(customer_ids, n, "customer_ids")
    fraud = (y == 1) & (day >= 0)
    f_day, f_card = day[fraud], c[fraud]
    first_test = train_days + delay_days
    known: dict[int, frozenset[int]] = {}
    for t in range(first_test, first_test + test_days):
        known[t] = frozenset(int(x) for x in np.unique(f_card[f_day < t - delay_days]))
    return known


def exclude_known_compromised(
    event_time_ms: npt.ArrayLike,
    customer_ids: npt.ArrayLike,
    mask: npt.ArrayLike,
    known: Mapping[int, Set[int]],
    start_ms: int,
) -> Bool:
    """``mask`` without the transactions on day ``t`` (from ``start_ms``) of cards in
    ``known[t]``: with :func:`train_delay_test_split`'s test mask and
    :func:`known_compromised_before_test`, the handbook's test set."""
    day = _day_index(event_time_ms, start_ms)
    n = day.shape[0]
    c = _ints(customer_ids, n, "customer_ids")
    out = np.asarray(mask, dtype=np.bool_).copy()
    if out.shape != (n,):
        raise ValueError("mask must have the shape of event_time_ms")
    for t, cards in known.items():
        if cards:
            drop = (day == t) & np.isin(c, np.fromiter(cards, np.int64, len(cards)))
            out &= ~drop
    return out


@dataclass(frozen=True)
class EvaluationResult:
    """Detection quality on the protocol's test set (after the known-compromised removal).

    ``auc`` is ``nan`` when that test set has a single class; ``days`` is the number of days
    CP@100 is averaged over (test days with at least one transaction left).
    """

    auc: float
    average_precision: float
    card_precision_at_100: float
    n_test: int
    n_test_frauds: int
    days: int


def evaluate(
    transaction_id: npt.ArrayLike,
    customer_id: npt.ArrayLike,
    event_time_ms: npt.ArrayLike,
    score: npt.ArrayLike,
    label_transaction_id: npt.ArrayLike,
    label_fraud: npt.ArrayLike,
    *,
    start_ms: int,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
) -> EvaluationResult:
    """Apply the handbook protocol to decisions joined with their labels.

    The decisions (``transaction_id``, ``customer_id``, ``event_time_ms``, ``score``) are
    joined on transaction id with the labels (``label_transaction_id``, ``label_fraud`` 0/1).
    Every decision needs exactly one label (``ValueError`` otherwise); labels without a
    decision are ignored, as are decisions outside the training, delay and test periods.
    Decisions must cover the training and delay periods too: their labels (not their scores)
    give the cards known compromised on each test day, which are removed from the test set.
    AUC, AP and CP@100 are then computed on what remains of the test period.
    """
    tx = np.asarray(transaction_id)
    n = tx.shape[0]
    tx = _ints(tx, n, "transaction_id")
    cust = _ints(customer_id, n, "customer_id")
    times = _ints(event_time_ms, n, "event_time_ms")
    s = _scores(score, n)
    ltx = np.asarray(label_transaction_id)
    ltx = _ints(ltx, ltx.shape[0], "label_transaction_id")
    lf = _labels(label_fraud, "label_fraud")
    if lf.shape != ltx.shape:
        raise ValueError("label_transaction_id and label_fraud must have the same shape")
    if np.unique(tx).shape[0] != n:
        raise ValueError("duplicate transaction ids in the decisions")
    order = np.argsort(ltx, kind="stable")
    ltx_sorted = ltx[order]
    if ltx_sorted.size and np.any(ltx_sorted[1:] == ltx_sorted[:-1]):
        raise ValueError("duplicate transaction ids in the labels")
    pos = np.searchsorted(ltx_sorted, tx)
    found = pos < ltx_sorted.shape[0]
    found[found] = ltx_sorted[pos[found]] == tx[found]
    if not found.all():
        raise ValueError(f"{int((~found).sum())} decisions have no label")
    y = lf[order[pos]]

    _, test = train_delay_test_split(times, start_ms, train_days, delay_days, test_days)
    known = known_compromised_before_test(
        times, cust, y, start_ms, train_days, delay_days, test_days
    )
    test = exclude_known_compromised(times, cust, test, known, start_ms)
    y_test, s_test = y[test], s[test]
    cp = card_precision_at_k_daily(
        _day_index(times[test], start_ms), cust[test], y_test, s_test, k=100
    )
    return EvaluationResult(
        auc=roc_auc(y_test, s_test),
        average_precision=average_precision(y_test, s_test),
        card_precision_at_100=cp.mean,
        n_test=int(y_test.shape[0]),
        n_test_frauds=int(y_test.sum()),
        days=len(cp.days),
    )


def format_result(result: EvaluationResult) -> str:
    """A small two-column table of ``result``."""
    rows = [
        ("AUC ROC", f"{result.auc:.3f}"),
        ("Average precision", f"{result.average_precision:.3f}"),
        ("Card Precision@100", f"{result.card_precision_at_100:.3f}"),
        ("Test transactions", f"{result.n_test:d}"),
        ("Test frauds", f"{result.n_test_frauds:d}"),
        ("Test days", f"{result.days:d}"),
    ]
    name_w = max(len(r[0]) for r in rows)
    value_w = max(len(r[1]) for r in rows)
    rule = f"+-{'-' * name_w}-+-{'-' * value_w}-+"
    lines = [rule, f"| {'Metric':<{name_w}} | {'Value':>{value_w}} |", rule]
    lines += [f"| {name:<{name_w}} | {value:>{value_w}} |" for name, value in rows]
    lines.append(rule)
    return "\n".join(lines)
