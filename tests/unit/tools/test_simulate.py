"""Tests for the labelled transaction simulator (fraud/tools/simulate.py)."""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from fraud.tools.simulate import (
    LAT_RANGE,
    LON_RANGE,
    Simulated,
    SimulationConfig,
    columns_for,
    fraud_stats,
    simulate,
    write_file,
)

SMALL = SimulationConfig(n_customers=500, n_terminals=1000, n_days=30, seed=7)
FULL = SimulationConfig(
    n_customers=500, n_terminals=1000, n_days=30, seed=7, with_coordinates=True, with_devices=True
)


@pytest.fixture(scope="module")
def sim() -> Simulated:
    return simulate(FULL)


def _ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp()) * 1000


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path: Path) -> None:
    cfg = SimulationConfig(n_customers=100, n_terminals=200, n_days=10, seed=3)
    for suffix in (".csv", ".jsonl"):
        a, b, c = (tmp_path / f"{name}{suffix}" for name in "abc")
        write_file(simulate(cfg), a)
        write_file(simulate(cfg), b)
        write_file(simulate(SimulationConfig(n_customers=100, n_terminals=200, n_days=10)), c)
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()


def test_optional_columns_change_nothing_else(sim: Simulated) -> None:
    base = simulate(SMALL)
    assert base.lat is None and base.lon is None and base.device_id is None
    assert len(base) == len(sim)
    for name in (
        "transaction_id",
        "event_time_ms",
        "customer_id",
        "terminal_id",
        "amount_cents",
        "fraud",
        "scenario",
    ):
        assert np.array_equal(getattr(base, name), getattr(sim, name)), name


def test_dtypes_sorted_times_and_date_range(sim: Simulated) -> None:
    n = len(sim)
    assert n > 0
    for arr in (sim.transaction_id, sim.event_time_ms, sim.customer_id, sim.terminal_id):
        assert arr.dtype == np.int64 and arr.shape == (n,)
    assert sim.amount_cents.dtype == np.int64
    assert sim.fraud.dtype == np.int8 and sim.scenario.dtype == np.int8
    assert np.array_equal(sim.transaction_id, np.arange(n))
    assert np.all(np.diff(sim.event_time_ms) >= 0)
    assert np.all(sim.event_time_ms % 1000 == 0)
    start = _ms(FULL.start_date)
    assert sim.event_time_ms.min() >= start
    assert sim.event_time_ms.max() < start + FULL.n_days * 86_400_000
    assert sim.day.min() >= 0 and sim.day.max() < FULL.n_days
    assert sim.customer_id.min() >= 0 and sim.customer_id.max() < FULL.n_customers
    assert sim.terminal_id.min() >= 0 and sim.terminal_id.max() < FULL.n_terminals
    assert sim.amount_cents.min() >= 0


def test_scenario_1_large_amounts(sim: Simulated) -> None:
    assert np.array_equal(sim.fraud, (sim.scenario > 0).astype(np.int8))
    assert set(np.unique(sim.scenario).tolist()) <= {0, 1, 2, 3}
    large = sim.amount_cents > 22_000
    assert np.all(sim.fraud[large] == 1)
    assert np.all(sim.scenario[large] >= 1)
    assert np.all(sim.amount_cents[sim.scenario == 1] > 22_000)
    assert np.all(sim.amount_cents[sim.scenario == 0] <= 22_000)


def test_scenario_2_compromised_terminals(sim: Simulated) -> None:
    comp = sim.compromised_terminals
    assert comp.shape == (FULL.n_days, 2)
    assert all(len(set(row)) == 2 for row in comp.tolist())
    covered: set[tuple[int, int]] = set()
    for d, row in enumerate(comp.tolist()):
        for t in row:
            covered.update((t, dd) for dd in range(d, min(d + 28, FULL.n_days)))
    pairs = list(zip(sim.terminal_id.tolist(), sim.day.tolist(), strict=True))
    in_window = np.array([p in covered for p in pairs])
    s2 = sim.scenario == 2
    assert s2.any()
    # Every scenario-2 fraud is on a terminal compromised in the 28 days up to its day, and
    # every transaction there is a fraud of scenario 2 (or 3, which overrides the code).
    assert np.all(in_window[s2])
    assert np.all(np.isin(sim.scenario[in_window], [2, 3]))
    assert not np.any(s2 & ~in_window)


def test_scenario_3_compromised_customers(sim: Simulated) -> None:
    comp = sim.compromised_customers
    assert comp.shape == (FULL.n_days, 3)
    windows: dict[tuple[int, int], list[int]] = {}  # (day drawn, customer) -> candidate rows
    active: set[tuple[int, int]] = set()
    for d, row in enumerate(comp.tolist()):
        for c in row:
            windows[(d, c)] = []
            active.update((c, dd) for dd in range(d, min(d + 14, FULL.n_days)))
    days = sim.day.tolist()
    custs = sim.customer_id.tolist()
    for i, (c, day) in enumerate(zip(custs, days, strict=True)):
        for d in range(max(0, day - 13), day + 1):
            if (d, c) in windows:
                windows[(d, c)].append(i)
    s3 = sim.scenario == 3
    assert s3.any()
    rows = np.flatnonzero(s3).tolist()
    # Every scenario-3 fraud is by a customer compromised in the 14 days up to its day ...
    assert all((custs[i], days[i]) in active for i in rows)
    # ... its amount is 5 times a whole number of cents ...
    assert np.all(sim.amount_cents[s3] % 5 == 0)
    # ... about a third of the compromised transactions are picked (each at most once) ...
    by_day: dict[int, int] = {}
    for (d, _c), idx in windows.items():
        by_day[d] = by_day.get(d, 0) + len(idx)
    expected = sum(v // 3 for v in by_day.values())
    assert 0.85 * expected <= len(rows) <= expected
    # ... and the amount is about 5 times the customer's usual one.
    ratios = []
    for c in set(custs[i] for i in rows):
        mine = sim.customer_id == c
        normal = sim.amount_cents[mine & (sim.scenario == 0)]
        if normal.size >= 5:
            ratios.append(np.median(sim.amount_cents[mine & s3]) / np.median(normal))
    assert 3.0 < float(np.median(ratios)) < 8.0


def test_devices(sim: Simulated) -> None:
    assert sim.device_id is not None and sim.device_id.dtype == np.int64
    s3 = sim.scenario == 3
    normal_devices: dict[int, set[int]] = {}
    for c, d in zip(sim.customer_id[~s3].tolist(), sim.device_id[~s3].tolist(), strict=True):
        normal_devices.setdefault(c, set()).add(d)
    assert all(1 <= len(v) <= 2 for v in normal_devices.values())
    owners: dict[int, int] = {}
    for c, devs in normal_devices.items():
        for d in devs:
            assert owners.setdefault(d, c) == c  # a device belongs to one customer
    assert any(len(v) == 2 for v in normal_devices.values())
    fraud_devices = set(sim.device_id[s3].tolist())
    assert fraud_devices and fraud_devices.isdisjoint(owners)  # a new device, never seen
    for c, d in zip(sim.customer_id[s3].tolist(), sim.device_id[s3].tolist(), strict=True):
        assert owners.setdefault(d, c) == c


def test_coordinates_are_terminal_locations_near_home(sim: Simulated) -> None:
    assert sim.lat is not None and sim.lon is not None
    assert np.all((sim.lat >= LAT_RANGE[0]) & (sim.lat <= LAT_RANGE[1]))
    assert np.all((sim.lon >= LON_RANGE[0]) & (sim.lon <= LON_RANGE[1]))
    pairs = set(zip(sim.terminal_id.tolist(), sim.lat.tolist(), sim.lon.tolist(), strict=True))
    assert len(pairs) == len(np.unique(sim.terminal_id))  # one location per terminal
    # A customer's terminals are all within the radius (5 units = 0.05 degree) of home, so no
    # two of them are more than 0.1 degree apart.
    lat_span = np.zeros(FULL.n_customers)
    lon_span = np.zeros(FULL.n_customers)
    for c in np.unique(sim.customer_id).tolist():
        mine = sim.customer_id == c
        lat_span[c] = np.ptp(sim.lat[mine])
        lon_span[c] = np.ptp(sim.lon[mine])
    assert lat_span.max() <= 0.1 + 1e-6 and lon_span.max() <= 0.1 + 1e-6


def test_distributions_are_plausible(sim: Simulated) -> None:
    """Statistical sanity on the generated values (no timing involved)."""
    seconds = (sim.event_time_ms // 1000) % 86_400
    assert 41_000 < seconds.mean() < 45_400  # centred on noon
    assert 17_000 < seconds.std() < 20_000  # N(43200, 20000) truncated to the day
    normal = sim.amount_cents[sim.scenario == 0] / 100
    # mean_amount ~ U[5, 100]: the average legitimate amount is about 52.5.
    assert 45 < normal.mean() < 60
    # Customers with more terminals around have no reason to transact more; every customer
    # with transactions uses only a handful of terminals (about pi * 5^2 * 0.1 = 7.9).
    per_customer = [
        len(np.unique(sim.terminal_id[sim.customer_id == c])) for c in range(0, 500, 25)
    ]
    assert max(per_customer) < 30


def test_counts_and_fraud_rate_like_the_handbook(sim: Simulated) -> None:
    # Transactions: customers * days * E[U(0, 4)] * P(time within the day), less customers
    # without a terminal within reach.
    expected_n = FULL.n_customers * FULL.n_days * 2 * 0.969
    assert 0.85 * expected_n < len(sim) < 1.1 * expected_n
    stats = fraud_stats(sim)
    assert stats["n_transactions"] == len(sim)
    assert stats["n_fraud"] == stats["scenario_1"] + stats["scenario_2"] + stats["scenario_3"]
    assert stats["fraud_rate"] == pytest.approx(stats["n_fraud"] / len(sim))
    # Scenarios 2 and 3 compromise a fixed number of terminals/customers a day, so their share
    # scales with 1 / population: 2 terminals a day for 28 days over 1000 terminals is ~3.1 %
    # of the transactions in 30 days, 3 customers a day for 14 days, a third of their
    # transactions, over 500 customers ~2.2 %. (The handbook's defaults give ~0.85 % overall.)
    days = range(FULL.n_days)
    share_2 = sum(min(d + 1, 28) for d in days) * 2 / (FULL.n_days * FULL.n_terminals)
    share_3 = sum(min(d + 1, 14) for d in days) * 3 / (FULL.n_days * FULL.n_customers) / 3
    assert 0.6 * share_2 < stats["scenario_2"] / len(sim) < 1.5 * share_2
    assert 0.6 * share_3 < stats["scenario_3"] / len(sim) < 1.5 * share_3
    assert 0.0001 < stats["scenario_1"] / len(sim) < 0.003
    assert 0.03 < stats["fraud_rate"] < 0.09


def test_handbook_proportions_give_a_handbook_fraud_rate() -> None:
    # Same customer/terminal density as the handbook's defaults (1:2), smaller and shorter.
    stats = fraud_stats(simulate(SimulationConfig(n_customers=2000, n_terminals=4000, n_days=40)))
    assert 0.003 < stats["fraud_rate"] < 0.03
    assert stats["scenario_1"] > 0 and stats["scenario_2"] > 0 and stats["scenario_3"] > 0


def _check_rows(sim: Simulated, rows: list[dict[str, str]], amounts: list[Decimal]) -> None:
    assert len(rows) == len(sim)
    times = [
        int(
            dt.datetime.strptime(r["TX_DATETIME"], "%Y-%m-%d %H:%M:%S")
            .replace(tzinfo=dt.UTC)
            .timestamp()
        )
        * 1000
        for r in rows
    ]
    assert times == sim.event_time_ms.tolist()
    assert [int(a * 100) for a in amounts] == sim.amount_cents.tolist()
    for key, arr in (
        ("TRANSACTION_ID", sim.transaction_id),
        ("CUSTOMER_ID", sim.customer_id),
        ("TERMINAL_ID", sim.terminal_id),
        ("TX_FRAUD", sim.fraud),
        ("TX_FRAUD_SCENARIO", sim.scenario),
        ("DEVICE_ID", sim.device_id),
    ):
        assert arr is not None
        assert [int(r[key]) for r in rows] == arr.tolist(), key
    assert sim.lat is not None and sim.lon is not None
    assert [float(r["TX_LAT"]) for r in rows] == sim.lat.tolist()
    assert [float(r["TX_LON"]) for r in rows] == sim.lon.tolist()


def test_csv_round_trip(tmp_path: Path) -> None:
    small = simulate(SimulationConfig(60, 120, 8, seed=1, with_coordinates=True, with_devices=True))
    path = tmp_path / "tx.csv"
    seen: list[int] = []
    assert write_file(small, path, progress=seen.append) == len(small)
    assert seen and seen[-1] == len(small) and seen == sorted(seen)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == columns_for(small)
        rows = list(reader)
    assert all(len(r["TX_AMOUNT"].split(".")[1]) == 2 for r in rows)
    _check_rows(small, rows, [Decimal(r["TX_AMOUNT"]) for r in rows])


def test_jsonl_round_trip(tmp_path: Path) -> None:
    small = simulate(SimulationConfig(60, 120, 8, seed=1, with_coordinates=True, with_devices=True))
    path = tmp_path / "tx.jsonl"
    assert write_file(small, path) == len(small)
    with path.open() as fh:
        rows = [json.loads(line, parse_float=Decimal) for line in fh]
    assert all(tuple(r) == columns_for(small) for r in rows)
    assert all(isinstance(r["TX_DATETIME"], str) for r in rows)
    _check_rows(small, rows, [r["TX_AMOUNT"] for r in rows])


def test_plain_csv_header_and_empty_output(tmp_path: Path) -> None:
    plain = simulate(SimulationConfig(20, 40, 3))
    path = tmp_path / "plain.csv"
    write_file(plain, path)
    header = path.read_text().splitlines()[0]
    assert header == (
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD,TX_FRAUD_SCENARIO"
    )
    # A radius so small that no customer reaches a terminal: no transactions at all.
    empty = simulate(SimulationConfig(20, 40, 3, radius=1e-9))
    assert len(empty) == 0
    assert write_file(empty, tmp_path / "empty.csv") == 0
    assert (tmp_path / "empty.csv").read_text() == header + "\n"
    assert write_file(empty, tmp_path / "empty.jsonl") == 0
    assert (tmp_path / "empty.jsonl").read_bytes() == b""
    assert fraud_stats(empty)["fraud_rate"] == 0.0


def test_tiny_populations_and_start_date() -> None:
    tiny = simulate(SimulationConfig(1, 1, 5, start_date=dt.date(2024, 2, 28), radius=200, seed=2))
    assert tiny.compromised_terminals.shape == (5, 1)
    assert tiny.compromised_customers.shape == (5, 1)
    assert len(tiny) > 0
    start = _ms(dt.date(2024, 2, 28))
    assert tiny.event_time_ms.min() >= start
    assert tiny.event_time_ms.max() < start + 5 * 86_400_000
    assert np.all(np.isin(tiny.scenario, [2, 3]))  # the only terminal is always compromised


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_customers": 0},
        {"n_terminals": 0},
        {"n_days": 0},
        {"radius": 0.0},
        {"radius": float("nan")},
        {"seed": -1},
    ],
)
def test_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SimulationConfig(**kwargs)  # type: ignore[arg-type]


def test_simulate_at_least_grows_the_days_until_there_are_enough() -> None:
    from dataclasses import replace

    from fraud.tools.simulate import SimulationConfig, simulate, simulate_at_least

    config = SimulationConfig(n_customers=50, n_terminals=100, n_days=1, seed=3)
    one_day = len(simulate(config))
    sim, days = simulate_at_least(5 * one_day, config)
    assert days > 1 and len(sim) >= 5 * one_day
    assert len(simulate(replace(config, n_days=days))) == len(sim)
    assert simulate_at_least(1, config)[1] == 1
