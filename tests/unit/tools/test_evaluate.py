"""Tests for the detection-quality metrics and the train/delay/test protocol
(fraud/tools/evaluate.py)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fraud.contracts.units import DAY_MS as MS_PER_DAY
from fraud.tools.evaluate import (
    EvaluationResult,
    average_precision,
    card_precision_at_k,
    card_precision_at_k_daily,
    evaluate,
    exclude_known_compromised,
    format_result,
    known_compromised_before_test,
    roc_auc,
    train_delay_test_split,
)
from fraud.tools.simulate import Simulated, SimulationConfig, simulate

CONFIG = SimulationConfig(n_customers=1000, n_terminals=2000, n_days=28, seed=5)


def _ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp()) * 1000


@pytest.fixture(scope="module")
def sim() -> Simulated:
    return simulate(CONFIG)


# --- AUC and AP against scikit-learn -------------------------------------------------------


def _random_case(seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y = (rng.random(n) < rng.uniform(0.02, 0.6)).astype(np.int64)
    y[0], y[1] = 0, 1  # both classes present
    kind = seed % 4
    if kind == 0:  # continuous, no ties
        s = rng.random(n)
    elif kind == 1:  # heavy ties: few distinct values
        s = rng.integers(0, 5, n).astype(np.float64)
    elif kind == 2:  # scores correlated with the label, rounded (ties)
        s = np.round(y * 0.3 + rng.random(n), 1)
    else:  # all equal
        s = np.full(n, 0.5)
    return y, s


@pytest.mark.parametrize("seed", range(200))
def test_auc_and_ap_equal_sklearn(seed: int) -> None:
    y, s = _random_case(seed)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), rel=1e-12, abs=1e-15)
    assert average_precision(y, s) == pytest.approx(
        average_precision_score(y, s), rel=1e-12, abs=1e-15
    )
    # labels as booleans, scores as a list
    assert roc_auc(y.astype(bool), list(s)) == roc_auc(y, s)


def test_auc_ap_small_cases_by_hand() -> None:
    # positives 0.8 and 0.4; negatives 0.4 and 0.1. Pairs (pos, neg): (0.8,0.4)=1, (0.8,0.1)=1,
    # (0.4,0.4)=1/2, (0.4,0.1)=1 -> AUC = 3.5 / 4.
    y = [1, 0, 1, 0]
    s = [0.8, 0.4, 0.4, 0.1]
    assert roc_auc(y, s) == 0.875
    # thresholds 0.8: P=1, R=1/2; 0.4: P=2/3, R=1; 0.1: R unchanged -> AP = 1/2 + 1/2 * 2/3.
    assert average_precision(y, s) == pytest.approx(0.5 + 1 / 3)


def test_auc_ap_degenerate() -> None:
    assert math.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))
    assert average_precision([0, 0, 0], [0.1, 0.2, 0.3]) == 0.0
    assert average_precision([1, 1], [0.1, 0.2]) == 1.0
    with pytest.raises(ValueError, match="0 and 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        average_precision([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="shape"):
        roc_auc([0, 1], [0.1])


# --- Card Precision top-k --------------------------------------------------------------------

# Hand-made example, k = 2. Cards are customer ids 1..7 (A..G); (card, score, fraud) per day:
#   day 0: A (0.9, 0) and A (0.1, 1)  -> A: max score 0.9, max label 1
#          B (0.8, 1), C (0.7, 0), D (0.3, 1)
#   day 1: A (0.95, 1), C (0.6, 0), D (0.5, 1), E (0.4, 1)
#   day 2: B (0.99, 1), D (0.8, 1), E (0.2, 1), F (0.2, 0), G (0.2, 1)
#   day 3: A (0.5, 1)
EX_DAYS = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]
EX_CARDS = [1, 1, 2, 3, 4, 1, 3, 4, 5, 2, 4, 5, 6, 7, 1]
EX_SCORE = [0.9, 0.1, 0.8, 0.7, 0.3, 0.95, 0.6, 0.5, 0.4, 0.99, 0.8, 0.2, 0.2, 0.2, 0.5]
EX_FRAUD = [0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1]


def test_card_precision_hand_example() -> None:
    # day 0: top 2 = A (0.9, label 1 via its other transaction), B (0.8, 1) -> 2/2 = 1.
    #        detected {A, B}.
    # day 1: A removed (detected day 0). C 0.6 (0), D 0.5 (1), E 0.4 (1): top 2 = C, D -> 1/2.
    #        detected {D}; E is compromised but not in the top 2, so it stays.
    # day 2: B, D removed. E, F, G all 0.2: ties by card id -> top 2 = E (1), F (0) -> 1/2.
    #        detected {E}.
    # day 3: A removed -> no card left; the day still counts, precision 0.
    # CP@2 = (1 + 0.5 + 0.5 + 0) / 4 = 0.5.
    daily = card_precision_at_k_daily(EX_DAYS, EX_CARDS, EX_FRAUD, EX_SCORE, k=2)
    assert daily.days == (0, 1, 2, 3)
    assert daily.precision == (1.0, 0.5, 0.5, 0.0)
    assert daily.detected == (frozenset({1, 2}), frozenset({4}), frozenset({5}), frozenset())
    # compromised cards left each day: day 0 A, B, D; day 1 D, E; day 2 E, G; day 3 none
    assert daily.n_compromised == (3, 2, 2, 0)
    assert daily.mean == 0.5
    assert card_precision_at_k(EX_DAYS, EX_CARDS, EX_FRAUD, EX_SCORE, k=2) == 0.5


def test_card_precision_known_compromised_set() -> None:
    # C (3) known compromised before the test period: dropped on every day.
    # day 0: A, B, D left: top 2 = A (1), B (1) -> 1; detected {A, B}.
    # day 1: A removed, C dropped: D 0.5 (1), E 0.4 (1) -> 2/2 = 1; detected {D, E}.
    # day 2: B, D, E removed: F 0.2 (0), G 0.2 (1) -> 1/2.
    # day 3: A removed -> 0.
    # CP@2 = (1 + 1 + 0.5 + 0) / 4 = 0.625.
    cp = card_precision_at_k(EX_DAYS, EX_CARDS, EX_FRAUD, EX_SCORE, k=2, known_compromised={3})
    assert cp == 0.625


def test_card_precision_known_compromised_per_day() -> None:
    # C dropped on day 1 only: the same numbers as above (C is not in day 2's data and its day-0
    # rank 3 is outside the top 2) -> 0.625.
    cp = card_precision_at_k(EX_DAYS, EX_CARDS, EX_FRAUD, EX_SCORE, k=2, known_compromised={1: {3}})
    assert cp == 0.625
    # A known on day 3: day 3 has no transaction left, so it is not a day of the test set at all
    # (unlike a day emptied by detected cards): CP@2 = (1 + 0.5 + 0.5) / 3.
    daily = card_precision_at_k_daily(
        EX_DAYS, EX_CARDS, EX_FRAUD, EX_SCORE, k=2, known_compromised={3: {1}}
    )
    assert daily.days == (0, 1, 2)
    assert daily.mean == pytest.approx(2 / 3)


def test_card_precision_fewer_cards_than_k() -> None:
    # k = 5, always divided by 5:
    # day 0: all 4 cards in the top; compromised A, B, D -> 3/5; detected {A, B, D}.
    # day 1: C (0), E (1) -> 1/5; detected {E}.   day 2: F (0), G (1) -> 1/5.   day 3: 0.
    # CP@5 = (0.6 + 0.2 + 0.2 + 0) / 4 = 0.25.
    cp = card_precision_at_k(EX_DAYS, EX_CARDS, EX_FRAUD, EX_SCORE, k=5)
    assert cp == pytest.approx(0.25)
    assert card_precision_at_k([], [], [], [], k=5) == 0.0
    with pytest.raises(ValueError):
        card_precision_at_k(EX_DAYS, EX_CARDS, EX_FRAUD, EX_SCORE, k=0)


def _handbook_cp(
    days: list[int], cards: list[int], fraud: list[int], score: list[float], k: int
) -> float:
    """A literal transcription of the handbook's card_precision_top_k(_day), with dicts."""
    detected: set[int] = set()
    per_day = []
    for day in sorted(set(days)):
        best: dict[int, float] = {}
        label: dict[int, int] = {}
        for d, c, f, s in zip(days, cards, fraud, score, strict=True):
            if d != day or c in detected:
                continue
            best[c] = max(best.get(c, -math.inf), s)
            label[c] = max(label.get(c, 0), f)
        top = sorted(best, key=lambda c: -best[c])[:k]
        hits = [c for c in top if label[c] == 1]
        per_day.append(len(hits) / k)
        detected.update(hits)
    return sum(per_day) / len(per_day) if per_day else 0.0


@pytest.mark.parametrize("seed", range(20))
def test_card_precision_matches_handbook_transcription(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 600
    days = rng.integers(0, 7, n)
    cards = rng.integers(0, 80, n)
    fraud = (rng.random(n) < 0.15).astype(np.int64)
    score = rng.random(n)  # continuous: no ties, so the tie order does not matter
    k = int(rng.integers(1, 30))
    expected = _handbook_cp(days.tolist(), cards.tolist(), fraud.tolist(), score.tolist(), k)
    assert card_precision_at_k(days, cards, fraud, score, k=k) == pytest.approx(expected)


# --- Protocol ---------------------------------------------------------------------------------


def test_split_masks_dates(sim: Simulated) -> None:
    start = _ms(sim.start_date)
    train, test = train_delay_test_split(sim.event_time_ms, start)
    assert np.array_equal(train, sim.day < 7)
    assert np.array_equal(test, (sim.day >= 14) & (sim.day < 21))

    def dates(mask: npt.NDArray[np.bool_]) -> set[dt.date]:
        return {
            dt.datetime.fromtimestamp(int(t) / 1000, tz=dt.UTC).date()
            for t in sim.event_time_ms[mask]
        }

    assert dates(train) == {dt.date(2018, 4, d) for d in range(1, 8)}  # 1-7 April
    assert dates(test) == {dt.date(2018, 4, d) for d in range(15, 22)}  # 15-21 April

    # starting on 3 April with other lengths: train 3-7 April, delay 8-9, test 10-12 April
    train, test = train_delay_test_split(
        sim.event_time_ms, _ms(dt.date(2018, 4, 3)), train_days=5, delay_days=2, test_days=3
    )
    assert dates(train) == {dt.date(2018, 4, d) for d in range(3, 8)}
    assert dates(test) == {dt.date(2018, 4, d) for d in range(10, 13)}
    assert np.array_equal(test, (sim.day >= 9) & (sim.day < 12))


def _handbook_test_set(
    sim: Simulated, start_day: int, delta_train: int, delta_delay: int, delta_test: int
) -> set[int]:
    """Transaction ids of the handbook get_train_test_set's test set, transcribed literally."""
    day = sim.day.tolist()
    cust = sim.customer_id.tolist()
    fraud = sim.fraud.tolist()
    known = {
        c
        for d, c, f in zip(day, cust, fraud, strict=True)
        if start_day <= d < start_day + delta_train and f == 1
    }
    test: set[int] = set()
    for i in range(delta_test):
        test_day = start_day + delta_train + delta_delay + i
        delay_day = start_day + delta_train + i - 1
        known |= {c for d, c, f in zip(day, cust, fraud, strict=True) if d == delay_day and f}
        test |= {
            int(sim.transaction_id[j])
            for j, (d, c) in enumerate(zip(day, cust, strict=True))
            if d == test_day and c not in known
        }
    return test


@pytest.mark.parametrize(
    ("start_day", "train", "delay", "test"), [(0, 7, 7, 7), (2, 5, 3, 6), (1, 4, 1, 9)]
)
def test_known_compromised_removal_matches_handbook(
    sim: Simulated, start_day: int, train: int, delay: int, test: int
) -> None:
    start = _ms(sim.start_date) + start_day * MS_PER_DAY
    _, test_mask = train_delay_test_split(sim.event_time_ms, start, train, delay, test)
    known = known_compromised_before_test(
        sim.event_time_ms, sim.customer_id, sim.fraud, start, train, delay, test
    )
    assert sorted(known) == list(range(train + delay, train + delay + test))
    # first test day: the cards with a fraud in the training period; then non-decreasing
    rel = sim.day - start_day
    first = set(np.unique(sim.customer_id[(rel >= 0) & (rel < train) & (sim.fraud == 1)]).tolist())
    assert known[train + delay] == first
    for t in range(train + delay + 1, train + delay + test):
        assert known[t - 1] <= known[t]
    kept = exclude_known_compromised(sim.event_time_ms, sim.customer_id, test_mask, known, start)
    expected = _handbook_test_set(sim, start_day, train, delay, test)
    assert set(sim.transaction_id[kept].tolist()) == expected
    assert 0 < kept.sum() < test_mask.sum()


# --- evaluate ---------------------------------------------------------------------------------


def _evaluate(sim: Simulated, score: npt.ArrayLike) -> EvaluationResult:
    return evaluate(
        sim.transaction_id,
        sim.customer_id,
        sim.event_time_ms,
        score,
        sim.transaction_id,
        sim.fraud,
        start_ms=_ms(sim.start_date),
    )


def test_evaluate_oracle(sim: Simulated) -> None:
    result = _evaluate(sim, sim.fraud.astype(np.float64))
    assert result.auc == 1.0
    assert result.average_precision == 1.0
    assert result.days == 7
    expected = set(_handbook_test_set(sim, 0, 7, 7, 7))
    assert result.n_test == len(expected)
    in_test = np.isin(sim.transaction_id, list(expected))
    assert result.n_test_frauds == int(sim.fraud[in_test].sum()) > 0
    # an oracle puts every compromised card of the day in its top 100 (fewer than 100 here)
    daily = card_precision_at_k_daily(
        sim.day[in_test], sim.customer_id[in_test], sim.fraud[in_test], sim.fraud[in_test]
    )
    assert all(n < 100 for n in daily.n_compromised)
    assert result.card_precision_at_100 == pytest.approx(np.mean(daily.n_compromised) / 100)
    assert result.card_precision_at_100 > 0


def test_evaluate_random_scores(sim: Simulated) -> None:
    aucs = []
    for seed in range(5):
        score = np.random.default_rng(seed).random(len(sim))
        result = _evaluate(sim, score)
        assert abs(result.auc - 0.5) < 0.1
        aucs.append(result.auc)
    assert abs(float(np.mean(aucs)) - 0.5) < 0.05


def test_evaluate_matches_sklearn_on_test_set_and_join_is_order_free(sim: Simulated) -> None:
    rng = np.random.default_rng(11)
    score = np.round(sim.fraud * 0.2 + rng.random(len(sim)), 2)  # informative, with ties
    result = _evaluate(sim, score)
    in_test = np.isin(sim.transaction_id, list(_handbook_test_set(sim, 0, 7, 7, 7)))
    assert result.auc == pytest.approx(roc_auc_score(sim.fraud[in_test], score[in_test]))
    assert result.average_precision == pytest.approx(
        average_precision_score(sim.fraud[in_test], score[in_test])
    )
    assert 0.5 < result.auc < 1.0
    # decisions and labels in different orders, extra labels without decisions
    perm = rng.permutation(len(sim))
    lperm = rng.permutation(len(sim))
    shuffled = evaluate(
        sim.transaction_id[perm],
        sim.customer_id[perm],
        sim.event_time_ms[perm],
        score[perm],
        np.concatenate([sim.transaction_id[lperm], [10**9]]),
        np.concatenate([sim.fraud[lperm], [1]]),
        start_ms=_ms(sim.start_date),
    )
    assert shuffled == result


def test_evaluate_rejects_bad_joins(sim: Simulated) -> None:
    n = 100
    args = (sim.transaction_id[:n], sim.customer_id[:n], sim.event_time_ms[:n], np.zeros(n))
    start = _ms(sim.start_date)
    with pytest.raises(ValueError, match="no label"):
        evaluate(*args, sim.transaction_id[1:n], sim.fraud[1:n], start_ms=start)
    with pytest.raises(ValueError, match="duplicate"):
        evaluate(
            *args,
            np.concatenate([sim.transaction_id[:n], sim.transaction_id[:1]]),
            np.concatenate([sim.fraud[:n], sim.fraud[:1]]),
            start_ms=start,
        )


def test_format_result() -> None:
    result = EvaluationResult(
        auc=0.8766,
        average_precision=0.5,
        card_precision_at_100=0.25,
        n_test=1234,
        n_test_frauds=12,
        days=7,
    )
    text = format_result(result)
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # aligned
    assert "| AUC ROC            | 0.877 |" in lines
    assert any("Card Precision@100" in line and "0.250" in line for line in lines)
    assert any("Test transactions" in line and "1234" in line for line in lines)
    assert "nan" in format_result(
        EvaluationResult(
            auc=float("nan"),
            average_precision=0.0,
            card_precision_at_100=0.0,
            n_test=0,
            n_test_frauds=0,
            days=0,
        )
    )
