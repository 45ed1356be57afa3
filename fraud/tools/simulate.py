"""Labelled card-transaction simulator, vectorised with numpy.

This follows the transaction data simulator of the open handbook *Reproducible Machine Learning
for Credit Card Fraud Detection* (Le Borgne et al., chapter "Transaction data simulator") and
keeps its parameters:

* customer profiles: home location ``x, y ~ U[0, 100]``, ``mean_amount ~ U[5, 100]``,
  ``std_amount = mean_amount / 2``, ``mean_nb_tx_per_day ~ U[0, 4]``;
* terminal profiles: location ``x, y ~ U[0, 100]``;
* a customer uses the terminals strictly within ``radius`` of home (none: no transactions);
* per customer and day, ``Poisson(mean_nb_tx_per_day)`` transactions; each gets a second of the
  day ``floor(N(43200, 20000))``, dropped when outside ``[0, 86400)``; an amount
  ``N(mean_amount, std_amount)``, redrawn ``U[0, 2 * mean_amount]`` when negative, rounded to the
  cent; a terminal drawn uniformly from the customer's available terminals;
* fraud scenarios, applied in this order (a later one overrides the scenario code):

  1. an amount above 220.00 is fraud;
  2. each day, 2 terminals drawn at random are compromised for 28 days (that day and the 27
     following): all their transactions in that window are fraud;
  3. each day, 3 customers drawn at random are compromised for 14 days: a third (rounded down)
     of their transactions in that window, drawn at random, are fraud with the amount
     multiplied by 5.

The defaults (5000 customers, 10000 terminals, 183 days from 2018-04-01) give about 1.75 million
transactions and a fraud rate a little under 1 %, as in the handbook.

Differences from the handbook, all deliberate:

* The random streams are numpy ``default_rng`` generators spawned from one ``SeedSequence``
  (one per stage), so the draws are not the handbook's; the compromised terminals and customers
  depend on the seed (the handbook seeds them with the day number). Turning the optional
  coordinate or device columns on does not change any other column.
* Amounts are exact integer cents throughout.
* A scenario-3 transaction picked by two overlapping compromises of the same customer is
  multiplied by 5 once, not 25 times, so every scenario-3 amount is exactly 5 times a drawn one.

Our additions:

* ``TX_LAT`` / ``TX_LON`` (``with_coordinates``): the terminal's location mapped onto the box
  48.0-49.0 N, 2.0-3.0 E (around Paris): ``lat = 48 + y / 100``, ``lon = 2 + x / 100``, rounded
  to 6 decimals (about 0.1 m).
* ``DEVICE_ID`` (``with_devices``): each customer has 1 or 2 devices (equally likely) and uses
  one of them uniformly at random; scenario-3 frauds are made from a new device, one per
  compromise (customer, day drawn), never used by anyone else. Device ids are customer devices
  first (numbered by customer), then the fraud devices.
* Times are UTC; rows are sorted by time (stable, from customer-major generation order) and
  numbered 0..n-1 in that order.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fraud.contracts.units import DAY_MS

__all__ = [
    "COLUMNS",
    "LAT_RANGE",
    "LON_RANGE",
    "Simulated",
    "SimulationConfig",
    "columns_for",
    "fraud_stats",
    "simulate",
    "write_file",
]

I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
F64 = npt.NDArray[np.float64]

SECONDS_PER_DAY = DAY_MS // 1000

# Handbook parameters.
TIME_MEAN_S = SECONDS_PER_DAY / 2
TIME_STD_S = 20_000.0
SCENARIO_1_THRESHOLD_CENTS = 22_000
SCENARIO_2_TERMINALS_PER_DAY = 2
SCENARIO_2_DAYS = 28
SCENARIO_3_CUSTOMERS_PER_DAY = 3
SCENARIO_3_DAYS = 14
SCENARIO_3_FACTOR = 5

# The [0, 100] x [0, 100] square mapped onto a lat/lon box (degrees).
LAT_RANGE = (48.0, 49.0)
LON_RANGE = (2.0, 3.0)
COORD_DECIMALS = 6

COLUMNS = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)

_EPOCH = dt.date(1970, 1, 1)
_WRITE_CHUNK = 100_000
_FRAC = [f".{i:02d}" for i in range(100)]
_NEIGHBOUR_BLOCK = 256


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. The defaults are the handbook's (about 1.75 million transactions)."""

    n_customers: int = 5000
    n_terminals: int = 10000
    n_days: int = 183
    start_date: dt.date = dt.date(2018, 4, 1)
    radius: float = 5.0
    seed: int = 0
    with_coordinates: bool = False
    with_devices: bool = False

    def __post_init__(self) -> None:
        if self.n_customers < 1 or self.n_terminals < 1 or self.n_days < 1:
            raise ValueError("n_customers, n_terminals and n_days must be at least 1")
        if not (self.radius > 0 and math.isfinite(self.radius)):
            raise ValueError("radius must be a positive number")
        if self.seed < 0:
            raise ValueError("seed must be non-negative")


@dataclass(frozen=True, eq=False)
class Simulated:
    """Simulated transactions as column arrays, sorted by time, plus the scenario ground truth.

    ``compromised_terminals[d]`` are the terminals compromised on day ``d`` (scenario 2, for
    days ``d .. d+27``); ``compromised_customers[d]`` the customers compromised on day ``d``
    (scenario 3, for days ``d .. d+13``). Days count from ``start_date``.
    """

    transaction_id: I64
    event_time_ms: I64
    customer_id: I64
    terminal_id: I64
    amount_cents: I64
    fraud: I8
    scenario: I8
    lat: F64 | None = None
    lon: F64 | None = None
    device_id: I64 | None = None
    start_date: dt.date = dt.date(2018, 4, 1)
    n_days: int = 0
    compromised_terminals: I64 = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    compromised_customers: I64 = field(default_factory=lambda: np.zeros((0, 3), np.int64))

    def __len__(self) -> int:
        return int(self.transaction_id.shape[0])

    @property
    def day(self) -> I64:
        """Day index of each transaction (0 = ``start_date``)."""
        return self.event_time_ms // DAY_MS - _epoch_day(self.start_date)


def columns_for(sim: Simulated) -> tuple[str, ...]:
    """Column names written for ``sim``, in file order."""
    cols = list(COLUMNS)
    if sim.lat is not None and sim.lon is not None:
        cols += ["TX_LAT", "TX_LON"]
    if sim.device_id is not None:
        cols.append("DEVICE_ID")
    return tuple(cols)


def _epoch_day(d: dt.date) -> int:
    return (d - _EPOCH).days


def _available_terminals(cust_xy: F64, term_xy: F64, radius: float) -> tuple[I64, I64]:
    """CSR lists of terminals strictly within ``radius`` of each customer, ascending ids.

    Returns ``(offsets, terminals)``: customer ``c`` uses ``terminals[offsets[c]:offsets[c+1]]``.
    Customers are processed in blocks sorted by x, each against only the terminals whose x is
    within reach of the block, so the cost is far below customers x terminals.
    """
    n_cust = cust_xy.shape[0]
    r2 = radius * radius
    t_order = np.argsort(term_xy[:, 0], kind="stable")
    t_x = term_xy[t_order, 0]
    t_y = term_xy[t_order, 1]
    c_order = np.argsort(cust_xy[:, 0], kind="stable")
    pair_c: list[I64] = []
    pair_t: list[I64] = []
    for start in range(0, n_cust, _NEIGHBOUR_BLOCK):
        block = c_order[start : start + _NEIGHBOUR_BLOCK]
        bx = cust_xy[block, 0]
        by = cust_xy[block, 1]
        lo = int(np.searchsorted(t_x, bx.min() - radius, side="left"))
        hi = int(np.searchsorted(t_x, bx.max() + radius, side="right"))
        if hi <= lo:
            continue
        d2 = np.square(bx[:, None] - t_x[None, lo:hi]) + np.square(by[:, None] - t_y[None, lo:hi])
        rows, cols = np.nonzero(d2 < r2)
        pair_c.append(block[rows].astype(np.int64))
        pair_t.append(t_order[lo + cols].astype(np.int64))
    if pair_c:
        cs = np.concatenate(pair_c)
        ts = np.concatenate(pair_t)
    else:
        cs = np.zeros(0, np.int64)
        ts = np.zeros(0, np.int64)
    order = np.lexsort((ts, cs))
    terminals = ts[order]
    counts = np.bincount(cs, minlength=n_cust).astype(np.int64)
    offsets = np.zeros(n_cust + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, terminals


def _draw_distinct(rng: np.random.Generator, population: int, k: int, n_days: int) -> I64:
    """``n_days`` rows of ``min(k, population)`` distinct ids drawn from ``range(population)``."""
    k = min(k, population)
    out = np.empty((n_days, k), np.int64)
    for d in range(n_days):
        out[d] = rng.choice(population, size=k, replace=False)
    return out


def simulate(config: SimulationConfig) -> Simulated:
    """Generate the labelled transactions described by ``config`` (deterministic in the seed)."""
    n_cust, n_term, n_days = config.n_customers, config.n_terminals, config.n_days
    (
        ss_customers,
        ss_terminals,
        ss_tx,
        ss_s2,
        ss_s3,
        ss_devices,
    ) = np.random.SeedSequence(config.seed).spawn(6)

    # Profiles.
    rng = np.random.default_rng(ss_customers)
    cust_xy = rng.uniform(0.0, 100.0, size=(n_cust, 2))
    mean_amount = rng.uniform(5.0, 100.0, size=n_cust)
    std_amount = mean_amount / 2
    mean_nb_tx = rng.uniform(0.0, 4.0, size=n_cust)
    term_xy = np.random.default_rng(ss_terminals).uniform(0.0, 100.0, size=(n_term, 2))
    offsets, avail = _available_terminals(cust_xy, term_xy, config.radius)
    n_avail = np.diff(offsets)

    # Transactions, generated customer-major then day then draw.
    rng = np.random.default_rng(ss_tx)
    counts = rng.poisson(np.broadcast_to(mean_nb_tx[:, None], (n_cust, n_days))).astype(np.int64)
    flat = counts.ravel()
    n_draw = int(flat.sum())
    cust = np.repeat(np.repeat(np.arange(n_cust, dtype=np.int64), n_days), flat)
    day = np.repeat(np.tile(np.arange(n_days, dtype=np.int64), n_cust), flat)
    sec = np.floor(rng.normal(TIME_MEAN_S, TIME_STD_S, size=n_draw))
    amount = rng.normal(mean_amount[cust], std_amount[cust])
    negative = np.flatnonzero(amount < 0)
    amount[negative] = rng.uniform(0.0, 2 * mean_amount[cust[negative]])
    pick = rng.random(n_draw)
    keep = (sec >= 0) & (sec < SECONDS_PER_DAY) & (n_avail[cust] > 0)
    cust, day, sec_i = cust[keep], day[keep], sec[keep].astype(np.int64)
    amount_cents = np.rint(amount[keep] * 100).astype(np.int64)
    terminal = avail[offsets[cust] + (pick[keep] * n_avail[cust]).astype(np.int64)]
    n = int(cust.shape[0])

    # Scenario 1: large amounts.
    scenario = np.zeros(n, np.int8)
    scenario[amount_cents > SCENARIO_1_THRESHOLD_CENTS] = 1

    # Scenario 2: compromised terminals, a (terminal, day) key set.
    comp_terms = _draw_distinct(
        np.random.default_rng(ss_s2), n_term, SCENARIO_2_TERMINALS_PER_DAY, n_days
    )
    keys: list[int] = []
    for d in range(n_days):
        for t in comp_terms[d].tolist():
            keys.extend(t * n_days + dd for dd in range(d, min(d + SCENARIO_2_DAYS, n_days)))
    compromised = np.isin(terminal * n_days + day, np.unique(np.asarray(keys, np.int64)))
    scenario[compromised] = 2

    # Scenario 3: compromised customers. Transactions of (customer, day) occupy the contiguous
    # range cum[c * n_days + day] .. cum[c * n_days + day + 1], in generation order.
    rng = np.random.default_rng(ss_s3)
    comp_custs = _draw_distinct(rng, n_cust, SCENARIO_3_CUSTOMERS_PER_DAY, n_days)
    cum = np.zeros(n_cust * n_days + 1, np.int64)
    np.cumsum(np.bincount(cust * n_days + day, minlength=n_cust * n_days), out=cum[1:])
    s3_event = np.full(n, -1, np.int64)  # which compromise picked the transaction first
    k3 = comp_custs.shape[1]
    for d in range(n_days):
        end = min(d + SCENARIO_3_DAYS, n_days)
        ranges = [
            np.arange(cum[c * n_days + d], cum[c * n_days + end], dtype=np.int64)
            for c in comp_custs[d].tolist()
        ]
        candidates = np.concatenate(ranges)
        chosen = rng.choice(candidates, size=candidates.shape[0] // 3, replace=False)
        if chosen.shape[0] == 0:
            continue
        chosen = chosen[s3_event[chosen] < 0]
        # The event is (day, position of the transaction's customer in that day's draw).
        events = d * k3 + np.argmax(cust[chosen][:, None] == comp_custs[d][None, :], axis=1)
        s3_event[chosen] = events
    s3 = s3_event >= 0
    amount_cents[s3] *= SCENARIO_3_FACTOR
    scenario[s3] = 3
    fraud = (scenario > 0).astype(np.int8)

    # Optional columns (their own random stream, so they change nothing else).
    device: I64 | None = None
    if config.with_devices:
        rng = np.random.default_rng(ss_devices)
        n_dev = 1 + (rng.random(n_cust) < 0.5).astype(np.int64)
        dev_base = np.zeros(n_cust + 1, np.int64)
        np.cumsum(n_dev, out=dev_base[1:])
        device = dev_base[cust] + (rng.random(n) * n_dev[cust]).astype(np.int64)
        device[s3] = dev_base[-1] + s3_event[s3]
    lat: F64 | None = None
    lon: F64 | None = None
    if config.with_coordinates:
        t_lat = np.round(LAT_RANGE[0] + term_xy[:, 1] * ((LAT_RANGE[1] - LAT_RANGE[0]) / 100), 6)
        t_lon = np.round(LON_RANGE[0] + term_xy[:, 0] * ((LON_RANGE[1] - LON_RANGE[0]) / 100), 6)
        lat, lon = t_lat[terminal], t_lon[terminal]

    # Sort by time (stable) and number the rows.
    time_ms = (_epoch_day(config.start_date) + day) * DAY_MS + sec_i * 1000
    order = np.argsort(time_ms, kind="stable")
    return Simulated(
        transaction_id=np.arange(n, dtype=np.int64),
        event_time_ms=time_ms[order],
        customer_id=cust[order],
        terminal_id=terminal[order],
        amount_cents=amount_cents[order],
        fraud=fraud[order],
        scenario=scenario[order],
        lat=None if lat is None else lat[order],
        lon=None if lon is None else lon[order],
        device_id=None if device is None else device[order],
        start_date=config.start_date,
        n_days=n_days,
        compromised_terminals=comp_terms,
        compromised_customers=comp_custs,
    )


def simulate_at_least(n: int, config: SimulationConfig) -> tuple[Simulated, int]:
    """``config`` simulated over as many days as give at least ``n`` transactions (growing
    ``n_days`` from 1), and that number of days."""
    days = 1
    while True:
        sim = simulate(replace(config, n_days=days))
        if len(sim) >= n:
            return sim, days
        days = max(days + 1, math.ceil(days * n / max(len(sim), 1)))


def fraud_stats(sim: Simulated) -> dict[str, float]:
    """Transaction count, fraud count and rate, and the count per scenario."""
    n = len(sim)
    n_fraud = int(np.count_nonzero(sim.fraud))
    per = np.bincount(sim.scenario.astype(np.int64), minlength=4)
    return {
        "n_transactions": n,
        "n_fraud": n_fraud,
        "fraud_rate": n_fraud / n if n else 0.0,
        "scenario_1": int(per[1]),
        "scenario_2": int(per[2]),
        "scenario_3": int(per[3]),
    }


def _amount_strings(cents: I64) -> list[str]:
    whole, frac = np.divmod(np.abs(cents), 100)
    out = [str(w) + _FRAC[f] for w, f in zip(whole.tolist(), frac.tolist(), strict=True)]
    for i in np.flatnonzero(cents < 0).tolist():
        out[i] = "-" + out[i]
    return out


def _coord_strings(values: F64) -> list[str]:
    # Coordinates repeat (one pair per terminal): format each distinct value once.
    uniq, inverse = np.unique(values, return_inverse=True)
    table = [f"{v:.{COORD_DECIMALS}f}" for v in uniq.tolist()]
    return [table[i] for i in inverse.tolist()]


def _datetime_strings(time_ms: I64, tods: list[str]) -> list[str]:
    secs = time_ms // 1000
    days = secs // SECONDS_PER_DAY
    d0 = int(days.min())
    dates = [f"{_EPOCH + dt.timedelta(days=d)} " for d in range(d0, int(days.max()) + 1)]
    return [
        dates[d] + tods[s]
        for d, s in zip((days - d0).tolist(), (secs % SECONDS_PER_DAY).tolist(), strict=True)
    ]


def write_file(sim: Simulated, path: Path, progress: Callable[[int], None] | None = None) -> int:
    """Write ``sim`` to ``path``: JSON lines if it ends in ``.jsonl``, else CSV with a header.

    Amounts are written with 2 decimals, coordinates with 6; the same ``sim`` always gives the
    same bytes. ``progress`` is called after each chunk with the rows written so far. Returns
    the number of rows written.
    """
    path = Path(path)
    jsonl = path.suffix.lower() == ".jsonl"
    cols = columns_for(sim)
    has_coords = sim.lat is not None and sim.lon is not None
    tods = [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]
    # JSON: every value is a number except the quoted datetime (the strings are JSON-safe).
    template = (
        "{"
        + ",".join(json.dumps(c) + (':"%s"' if c == "TX_DATETIME" else ":%s") for c in cols)
        + "}\n"
    )
    n = len(sim)
    with path.open("wb") as fh:
        if not jsonl:
            fh.write((",".join(cols) + "\n").encode())
        for start in range(0, n, _WRITE_CHUNK):
            sl = slice(start, min(start + _WRITE_CHUNK, n))
            fields: list[list[str]] = [
                [str(v) for v in sim.transaction_id[sl].tolist()],
                _datetime_strings(sim.event_time_ms[sl], tods),
                [str(v) for v in sim.customer_id[sl].tolist()],
                [str(v) for v in sim.terminal_id[sl].tolist()],
                _amount_strings(sim.amount_cents[sl]),
                [str(v) for v in sim.fraud[sl].tolist()],
                [str(v) for v in sim.scenario[sl].tolist()],
            ]
            if has_coords:
                assert sim.lat is not None and sim.lon is not None
                fields.append(_coord_strings(sim.lat[sl]))
                fields.append(_coord_strings(sim.lon[sl]))
            if sim.device_id is not None:
                fields.append([str(v) for v in sim.device_id[sl].tolist()])
            if jsonl:
                lines = [template % row for row in zip(*fields, strict=True)]
            else:
                lines = [",".join(row) + "\n" for row in zip(*fields, strict=True)]
            fh.write("".join(lines).encode())
            if progress is not None:
                progress(sl.stop)
    return n
