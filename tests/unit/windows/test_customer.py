"""Per-customer state v2 (windows + behaviour): numba kernels against the pure Python reference."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from fraud.contracts.units import DAY_MS, HOUR_MS
from fraud.kernels.customer import INT64_MIN, update_customer_words
from fraud.reference.customer import haversine_km, reference_customers
from fraud.scoring.features import amount_ratios, time_features
from fraud.windows.customer import (
    EXTRA_FEATURES,
    CustomerConfig,
    decode_customer_state,
    encode_customer_state,
    terminal_hash,
    update_customers,
    warmup,
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
T0 = 1_700_000_000_000
NAN = math.nan
PARIS = (48.8566, 2.3522)
LONDON = (51.5074, -0.1278)


def i64(values: Sequence[int]) -> I64:
    return np.array(values, dtype=np.int64)


def f64(values: Sequence[float]) -> F64:
    return np.array(values, dtype=np.float64)


class Stream:
    """A stream in arrival order: one entry per transaction."""

    def __init__(
        self, customer: I64, ts: I64, amount: I64, terminal: I64, lat: F64, lon: F64
    ) -> None:
        self.customer = customer
        self.ts = ts
        self.amount = amount
        self.terminal = terminal
        self.lat = lat
        self.lon = lon

    def reference(
        self, config: CustomerConfig, batch_sizes: Sequence[int] | None = None
    ) -> tuple[I64, I64, F64]:
        counts, sums, extras = reference_customers(
            self.customer.tolist(),
            self.ts.tolist(),
            self.amount.tolist(),
            self.terminal.tolist(),
            self.lat.tolist(),
            self.lon.tolist(),
            config.window_ms,
            batch_sizes,
            None if batch_sizes is None else config.retain_ms,
        )
        width = len(config.window_ms)
        return (
            np.array(counts, dtype=np.int64).reshape(-1, width),
            np.array(sums, dtype=np.int64).reshape(-1, width),
            np.array(extras, dtype=np.float64).reshape(-1, 3),
        )


def run_stream(
    stream: Stream,
    batch_sizes: Sequence[int],
    config: CustomerConfig,
    rng: np.random.Generator | None = None,
) -> tuple[I64, I64, F64, dict[int, bytes]]:
    """Feed the stream to update_customers batch by batch, carrying states as bytes in between.

    With ``rng``, each batch also passes the states of a few known customers that have no event
    in it, and numbers the customers in a shuffled order.
    """
    states: dict[int, bytes] = {}
    counts: list[I64] = []
    sums: list[I64] = []
    extras: list[F64] = []
    start = 0
    for size in batch_sizes:
        batch = slice(start, start + size)
        start += size
        names = [int(c) for c in np.unique(stream.customer[batch])]
        if rng is not None:
            idle = [c for c in states if c not in names]
            names += [int(c) for c in rng.permutation(idle)[: rng.integers(0, 3)]]
            names = [int(c) for c in rng.permutation(names)]
        index = {c: g for g, c in enumerate(names)}
        group = np.array([index[int(c)] for c in stream.customer[batch]], dtype=np.int64)
        batch_counts, batch_sums, batch_extras, new_states = update_customers(
            [states.get(c) for c in names],
            group,
            stream.ts[batch],
            stream.amount[batch],
            stream.terminal[batch],
            stream.lat[batch],
            stream.lon[batch],
            config,
        )
        assert batch_counts.shape == batch_sums.shape == (size, len(config.window_ms))
        assert batch_extras.shape == (size, len(EXTRA_FEATURES))
        assert batch_extras.dtype == np.float64
        assert len(new_states) == len(names)
        counts.append(batch_counts)
        sums.append(batch_sums)
        extras.append(batch_extras)
        states.update(zip(names, new_states, strict=True))
    width = len(config.window_ms)
    return (
        np.concatenate(counts) if counts else np.empty((0, width), np.int64),
        np.concatenate(sums) if sums else np.empty((0, width), np.int64),
        np.concatenate(extras) if extras else np.empty((0, 3), np.float64),
        states,
    )


def random_stream(
    rng: np.random.Generator, n_customers: int, n_events: int, grid_ms: int, max_delay_ms: int
) -> Stream:
    """~90 days of events on a coarse grid (many ties and exact N-day gaps), +-1 ms jitter,
    arriving out of order by up to ``max_delay_ms``; a few terminals per customer (many repeats),
    locations around Europe with ~25% unknown (a NaN latitude, longitude or both)."""
    n_slots = 90 * DAY_MS // grid_ms
    ts = T0 + rng.integers(0, n_slots, n_events) * grid_ms + rng.choice([-1, 0, 0, 0, 1], n_events)
    arrival = np.argsort(ts + rng.integers(0, max_delay_ms + 1, n_events), kind="stable")
    customer = rng.integers(0, n_customers, n_events)
    amount = rng.integers(-5_000, 1_000_000, n_events)
    terminal = np.array(
        [
            terminal_hash(f"T{c}-{k}")
            for c, k in zip(customer, rng.integers(0, 4, n_events), strict=True)
        ],
        dtype=np.int64,
    )
    # a handful of places per customer, so the same place (distance 0) comes back too
    place = rng.integers(0, 3, n_events)
    lat = 40.0 + customer * 0.37 + place * 1.9 + rng.choice([0.0, 0.0, 0.01], n_events)
    lon = -5.0 + customer * 0.53 + place * 2.3
    unknown = rng.random(n_events)
    lat[unknown < 0.15] = np.nan
    lon[(unknown > 0.1) & (unknown < 0.25)] = np.nan
    return Stream(
        customer.astype(np.int64),
        ts[arrival].astype(np.int64),
        amount.astype(np.int64),
        terminal,
        lat.astype(np.float64),
        lon.astype(np.float64),
    )


def random_batches(rng: np.random.Generator, n_events: int, n_batches: int) -> list[int]:
    cuts = np.sort(rng.choice(np.arange(1, n_events), n_batches - 1, replace=False))
    return [int(size) for size in np.diff(np.concatenate([[0], cuts, [n_events]]))]


def assert_extras_equal(got: F64, want: F64) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, equal_nan=True)


# --- (a) kernel against the reference on random streams -----------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(
    ("n_customers", "n_events", "n_batches", "grid_ms"),
    [
        (1, 500, 7, HOUR_MS),  # one busy customer
        (5, 700, 5, HOUR_MS),
        (12, 1200, 10, 6 * HOUR_MS),  # coarse grid: ties everywhere
        (40, 1000, 1, DAY_MS // 4),  # one single batch
        (3, 250, 250, HOUR_MS),  # one event per batch
    ],
)
def test_matches_reference_on_random_streams(
    seed: int, n_customers: int, n_events: int, n_batches: int, grid_ms: int
) -> None:
    rng = np.random.default_rng(seed)
    # arrivals late by up to 20 h: within the allowed lateness, so nothing needed is evicted
    stream = random_stream(rng, n_customers, n_events, grid_ms, 20 * HOUR_MS)
    assert np.any(np.diff(stream.ts) < 0), "the stream should have out-of-order arrivals"
    config = CustomerConfig()
    batch_sizes = random_batches(rng, n_events, n_batches)

    counts, sums, extras, _ = run_stream(stream, batch_sizes, config, rng)

    want_counts, want_sums, want_extras = stream.reference(config)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(sums, want_sums)
    assert_extras_equal(extras, want_extras)
    assert np.isnan(extras[:, 2]).any() and (extras[:, 2] > 0).any()
    if grid_ms >= 6 * HOUR_MS:  # dense: the streams exercise every case of the extras
        seconds, first_use, velocity = extras.T
        assert np.isnan(seconds).any() and (seconds == 0).any() and (seconds > 0).any()
        assert (first_use == 1).any() and (first_use == 0).any()
        assert (velocity == 0).any()  # a later transaction at the very same place


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_matches_evicting_reference_with_very_late_events(seed: int) -> None:
    rng = np.random.default_rng(seed)
    config = CustomerConfig(window_ms=(5 * HOUR_MS, 2 * DAY_MS, 3 * DAY_MS), allowed_lateness_ms=0)
    # arrivals up to 8 days late, far beyond the 3-day retention
    stream = random_stream(rng, 4, 600, HOUR_MS, 8 * DAY_MS)
    batch_sizes = random_batches(rng, len(stream.ts), 12)

    counts, sums, extras, _ = run_stream(stream, batch_sizes, config, rng)

    want_counts, want_sums, want_extras = stream.reference(config, batch_sizes)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(sums, want_sums)
    assert_extras_equal(extras, want_extras)
    # the stream is late enough that eviction changed some results
    exact_counts, _, exact_extras = stream.reference(config)
    assert not np.array_equal(exact_counts, want_counts)
    assert not np.array_equal(np.isnan(exact_extras[:, 0]), np.isnan(want_extras[:, 0]))


# --- (b) hand examples ---------------------------------------------------------------------------

D = DAY_MS
TA, TB = terminal_hash("term-A"), terminal_hash("term-B")


def hand_run(
    events: Sequence[tuple[int, int, float, float]], batch_sizes: Sequence[int] | None = None
) -> tuple[I64, I64, F64]:
    """One customer; events ``(ts, terminal, lat, lon)`` in arrival order, amount 1 each."""
    stream = Stream(
        np.zeros(len(events), np.int64),
        i64([e[0] for e in events]),
        np.ones(len(events), np.int64),
        i64([e[1] for e in events]),
        f64([e[2] for e in events]),
        f64([e[3] for e in events]),
    )
    config = CustomerConfig()
    counts, sums, extras, _ = run_stream(stream, batch_sizes or [len(events)], config)
    _, _, want_extras = stream.reference(config)
    assert_extras_equal(extras, want_extras)  # the reference agrees with the hand numbers
    return counts, sums, extras


HAND_WINDOWS = [  # (customer, event time, amount, expected counts 1/7/30 d, expected sums)
    (0, T0, 100, [1, 1, 1], [100, 100, 100]),
    (1, T0, 7, [1, 1, 1], [7, 7, 7]),
    # exactly one day later: T0 is out of the 1-day window (left open), in the others
    (0, T0 + D, 200, [1, 2, 2], [200, 300, 300]),
    # same ms: the earlier arrival at the same time counts
    (0, T0 + D, 50, [2, 3, 3], [250, 350, 350]),
    # arrives later, 1 ms earlier: T0 is in its 1-day window, the two at T0 + D are after it
    (0, T0 + D - 1, 1000, [2, 2, 2], [1100, 1100, 1100]),
    (1, T0 + D - 1, 8, [2, 2, 2], [15, 15, 15]),
    # exactly 7 days after T0: T0 is out of the 7-day window, T0 + D - 1 is in
    (0, T0 + 7 * D, 10, [1, 4, 5], [10, 1260, 1360]),
    # exactly 30 days after T0: T0 is out of the 30-day window
    (0, T0 + 30 * D, 1, [1, 1, 5], [1, 1, 1261]),
    # customer 1's first event arriving last: nothing seen so far is at or before it
    (1, T0 - 1, 5, [1, 1, 1], [5, 5, 5]),
]


@pytest.mark.parametrize("batch_sizes", [[9], [4, 5], [1] * 9, [2, 0, 3, 4]])
def test_windows_hand_written_at_the_boundaries(batch_sizes: list[int]) -> None:
    n = len(HAND_WINDOWS)
    stream = Stream(
        i64([e[0] for e in HAND_WINDOWS]),
        i64([e[1] for e in HAND_WINDOWS]),
        i64([e[2] for e in HAND_WINDOWS]),
        i64([TA] * n),
        f64([NAN] * n),
        f64([NAN] * n),
    )
    config = CustomerConfig()

    counts, sums, _, states = run_stream(stream, batch_sizes, config)

    assert counts.tolist() == [e[3] for e in HAND_WINDOWS]
    assert sums.tolist() == [e[4] for e in HAND_WINDOWS]
    a_ts, a_amount, *_, a_max = decode_customer_state(states[0])
    assert a_ts.tolist() == [T0, T0 + D - 1, T0 + D, T0 + D, T0 + 7 * D, T0 + 30 * D]
    assert a_amount.tolist() == [100, 1000, 200, 50, 10, 1]  # ties keep arrival order
    assert a_max == T0 + 30 * D
    b_ts, b_amount, *_, b_max = decode_customer_state(states[1])
    assert (b_ts.tolist(), b_amount.tolist(), b_max) == (
        [T0 - 1, T0, T0 + D - 1],
        [5, 7, 8],
        T0 + D - 1,
    )
    # and the reference agrees with the hand-written numbers
    want_counts, want_sums, _ = stream.reference(config)
    assert want_counts.tolist() == [e[3] for e in HAND_WINDOWS]
    assert want_sums.tolist() == [e[4] for e in HAND_WINDOWS]


@pytest.mark.parametrize("batch_sizes", [None, [1, 1, 1, 1, 1, 1]])
def test_seconds_since_prev_with_ties_and_late_arrivals(batch_sizes: list[int] | None) -> None:
    _, _, extras = hand_run(
        [
            (T0, TA, NAN, NAN),  # first: NaN
            (T0 + 90_000, TA, NAN, NAN),  # 90 s later
            (T0 + 90_000, TA, NAN, NAN),  # same ms, arrived earlier: 0.0
            (T0 + 30_000, TA, NAN, NAN),  # late: previous is T0, not the later T0 + 90 s
            (T0 - 5, TA, NAN, NAN),  # earlier than everything seen: NaN
            (T0 + 100_000, TA, NAN, NAN),  # 10 s after the two at T0 + 90 s
        ],
        batch_sizes,
    )
    seconds = extras[:, 0]
    assert math.isnan(seconds[0])
    assert seconds[[1, 2, 3, 5]].tolist() == [90.0, 0.0, 30.0, 10.0]
    assert math.isnan(seconds[4])


def test_first_use_of_terminal_at_the_30_day_boundary() -> None:
    _, _, extras = hand_run(
        [
            (T0, TA, NAN, NAN),  # first use of A
            (T0 + D, TB, NAN, NAN),  # first use of B
            (T0 + 30 * D - 1, TA, NAN, NAN),  # A used 1 ms less than 30 days ago: not first
            (T0 + 30 * D, TB, NAN, NAN),  # B used 29 days ago: not first
            (T0 + 60 * D - 1, TA, NAN, NAN),  # A last used exactly 30 days ago: first again
            (T0 + 60 * D - 1, TA, NAN, NAN),  # A used at the same ms (earlier arrival): not first
            (T0 + 40 * D, TB, NAN, NAN),  # late: B's later use at 60 d - 1 arrived earlier...
        ]
    )
    # ... but only times in (t - 30 d, t] count: B was used at 30 d, within 30 days of 40 d
    assert extras[:, 1].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_first_use_ignores_an_earlier_arrival_with_a_later_time() -> None:
    _, _, extras = hand_run([(T0 + HOUR_MS, TA, NAN, NAN), (T0, TA, NAN, NAN)])
    assert extras[:, 1].tolist() == [1.0, 1.0]


def test_geo_velocity_paris_to_london_in_one_hour() -> None:
    assert 343.0 < haversine_km(*PARIS, *LONDON) < 344.0
    _, _, extras = hand_run(
        [
            (T0, TA, *PARIS),
            (T0 + HOUR_MS, TB, *LONDON),  # ~343.5 km in 1 h
            (T0 + 3 * HOUR_MS, TB, *LONDON),  # same place 2 h later: 0.0
            (T0 + 3 * HOUR_MS, TB, *PARIS),  # same ms: NaN, no finite speed
            (T0 + 4 * HOUR_MS, TB, NAN, PARIS[1]),  # unknown latitude: NaN
            (T0 + 5 * HOUR_MS, TB, *PARIS),  # previous location unknown: NaN
            (T0 + 5 * HOUR_MS + 1_800_000, TA, *LONDON),  # back to London in 30 min
        ]
    )
    velocity = extras[:, 2]
    assert math.isnan(velocity[0])
    assert 343.0 < velocity[1] < 344.0
    assert velocity[1] == pytest.approx(haversine_km(*PARIS, *LONDON))
    assert velocity[2] == 0.0
    assert math.isnan(velocity[3])
    assert math.isnan(velocity[4])
    assert math.isnan(velocity[5])
    assert velocity[6] == pytest.approx(2 * velocity[1])


def test_geo_velocity_uses_the_last_arrival_among_ties_at_the_previous_time() -> None:
    _, _, extras = hand_run(
        [
            (T0, TA, *PARIS),
            (T0, TA, *LONDON),  # same time, later arrival: this is "the previous" one below
            (T0 + HOUR_MS, TA, *LONDON),
        ]
    )
    assert extras[2, 0] == 3600.0
    assert extras[2, 2] == 0.0


def test_results_come_back_in_the_callers_order() -> None:
    counts, sums, extras, _ = update_customers(
        [None, None, None],
        np.array([2, 0, 2, 1, 0], dtype=np.uint16),
        i64([T0, T0, T0 + 1000, T0, T0 + 2000]),
        i64([1, 10, 2, 100, 20]),
        i64([TA, TA, TA, TA, TB]),
        f64([NAN] * 5),
        f64([NAN] * 5),
        CustomerConfig(window_ms=(D,)),
    )
    assert counts[:, 0].tolist() == [1, 1, 2, 1, 2]
    assert sums[:, 0].tolist() == [1, 10, 3, 100, 30]
    assert np.isnan(extras[[0, 1, 3], 0]).all()
    assert extras[[2, 4], 0].tolist() == [1.0, 2.0]
    assert extras[:, 1].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]


def test_kernel_reads_and_writes_state_words() -> None:
    # two groups without state; order = arange: the caller's order is already grouped
    counts = np.empty((3, 1), np.int64)
    sums = np.empty((3, 1), np.int64)
    extras = np.empty((3, 3), np.float64)
    no_words = np.empty(0, np.int64)
    new_words, new_offsets, status = update_customer_words(
        no_words,
        no_words.view(np.float64),
        i64([0, 0, 0]),
        i64([5, 3, 9]),
        i64([1, 2, 4]),
        i64([TA, TB, TA]),
        f64([1.0, 2.0, 3.0]),
        f64([NAN, 5.0, 6.0]),
        i64([0, 1, 2]),
        i64([0, 2, 3]),
        i64([10]),
        10,
        10,
        counts,
        sums,
        extras,
    )
    assert status == -1
    # the event at 3 arrived after the one at 5, which is after it: each sees only itself
    assert counts[:, 0].tolist() == [1, 1, 1]
    assert sums[:, 0].tolist() == [1, 2, 4]
    assert np.isnan(extras[:, 0]).all()
    assert extras[:, 1].tolist() == [1.0, 1.0, 1.0]
    assert new_offsets.tolist() == [0, 2 + 5 * 2, 2 * 2 + 5 * 3]
    data = new_words.astype("<i8").tobytes()
    ts, amount, terminal, lat, lon, max_ts = decode_customer_state(data[: 8 * new_offsets[1]])
    assert ts.tolist() == [3, 5]
    assert amount.tolist() == [2, 1]
    assert terminal.tolist() == [TB, TA]
    assert lat.tolist() == [2.0, 1.0]
    assert lon[0] == 5.0 and np.isnan(lon[1])
    assert max_ts == 5
    assert decode_customer_state(data[8 * new_offsets[1] :])[0].tolist() == [9]

    # the state words go back in, here with a malformed second state: its group is reported
    words = new_words.copy()
    words[new_offsets[1]] |= 0xFF00  # header padding
    _, _, status = update_customer_words(
        words, words.view(np.float64), new_offsets, i64([]), i64([]), i64([]), f64([]), f64([]),
        i64([]), i64([0, 0, 0]), i64([10]), 10, 10, counts[:0], sums[:0], extras[:0],
    )  # fmt: skip
    assert status == 1


def test_many_groups_and_empty_batch() -> None:
    n_groups = 70_000  # more than a 16-bit sort key holds
    nan5 = f64([NAN] * 5)
    counts, _, extras, new_states = update_customers(
        [None] * n_groups,
        i64([69_999, 5, 69_999, 65_536, 5]),
        i64([T0, T0, T0 + 1, T0, T0 + D]),
        i64([1, 2, 3, 4, 5]),
        i64([TA] * 5),
        nan5,
        nan5,
    )
    assert counts[:, 0].tolist() == [1, 1, 2, 1, 1]
    assert extras[:, 1].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert decode_customer_state(new_states[69_999])[0].tolist() == [T0, T0 + 1]
    assert decode_customer_state(new_states[1])[5] == INT64_MIN

    counts, sums, extras, new_states = update_customers(
        [], i64([]), i64([]), i64([]), i64([]), f64([]), f64([])
    )
    assert counts.shape == sums.shape == (0, 3)
    assert extras.shape == (0, 3)
    assert new_states == []


def test_terminal_hash_is_stable() -> None:
    # fixed values: the hash lives in persisted state, it must never change
    assert terminal_hash("abc") == 6455300059550759896
    assert terminal_hash("") == terminal_hash("")
    assert terminal_hash("T1") != terminal_hash("T2")
    for name in ["abc", "", "térmínal-ü", "x" * 1000]:
        value = terminal_hash(name)
        assert -(2**63) <= value < 2**63
    with pytest.raises(ValueError, match="must be a str"):
        terminal_hash(b"abc")  # type: ignore[arg-type]


def test_warmup() -> None:
    warmup()


# --- (c) state codec -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 17])
def test_state_round_trip(n: int) -> None:
    rng = np.random.default_rng(n)
    ts = np.sort(rng.integers(-(2**62), 2**62, n)).astype(np.int64)
    amount = rng.integers(-(2**62), 2**62, n).astype(np.int64)
    terminal = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    lat = rng.uniform(-90, 90, n)
    lon = rng.uniform(-180, 180, n)
    if n:
        ts[0] = INT64_MIN
        amount[-1] = np.iinfo(np.int64).max
        lat[0] = NAN
        lon[-1] = -180.0
    max_ts = int(ts[-1]) + 5 if n else int(INT64_MIN)

    data = encode_customer_state(ts, amount, terminal, lat, lon, max_ts)
    assert len(data) == 16 + 40 * n
    assert data[0] == 2
    got = decode_customer_state(data)
    for got_values, values in zip(got[:5], (ts, amount, terminal, lat, lon), strict=True):
        assert got_values.dtype == values.dtype
        np.testing.assert_array_equal(got_values, values)
    assert got[5] == max_ts
    assert encode_customer_state(*got) == data


def test_decode_none_is_an_empty_state() -> None:
    ts, amount, terminal, lat, lon, max_ts = decode_customer_state(None)
    assert ts.shape == amount.shape == terminal.shape == lat.shape == lon.shape == (0,)
    assert ts.dtype == amount.dtype == terminal.dtype == np.int64
    assert lat.dtype == lon.dtype == np.float64
    assert max_ts == INT64_MIN


def _good_state() -> bytes:
    return encode_customer_state(
        i64([1, 2, 3]), i64([10, 20, 30]), i64([7, 8, 7]), f64([1.0, NAN, 3.0]), f64([4, 5, 6]), 4
    )


def _swap_times(data: bytes) -> bytes:
    return data[:16] + data[24:32] + data[16:24] + data[32:]


def _bad_latitude(data: bytes) -> bytes:
    at = 16 + 3 * 8 * 3  # the first latitude
    return data[:at] + np.float64(91.0).tobytes() + data[at + 8 :]


def _infinite_longitude(data: bytes) -> bytes:
    at = 16 + 4 * 8 * 3 + 8  # the second longitude
    return data[:at] + np.float64(np.inf).tobytes() + data[at + 8 :]


def _v1_state(data: bytes) -> bytes:
    # the former windows-only state: version 1 header, then times and amounts only
    return b"\x01\0\0\0" + (3).to_bytes(4, "little") + data[8:64]


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "version": (lambda d: b"\x03" + d[1:], "unsupported customer state version 3"),
    "v1 state": (_v1_state, r"version 1 \(windows only"),
    "padding": (lambda d: d[:1] + b"\x01" + d[2:], "padding"),
    "short header": (lambda d: d[:9], "truncated"),
    "empty": (lambda d: b"", "truncated"),
    "cut word": (lambda d: d[:-8], "truncated"),
    "cut byte": (lambda d: d[:-1], "truncated"),
    "trailing": (lambda d: d + b"\0" * 8, "trailing bytes"),
    "unsorted": (_swap_times, "not ascending"),
    "max_ts": (lambda d: d[:8] + (2).to_bytes(8, "little") + d[16:], "max_ts 2 is below"),
    "latitude": (_bad_latitude, "latitude 91.0 at index 0"),
    "longitude": (_infinite_longitude, "longitude inf at index 1"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_state_raises(kind: str) -> None:
    corrupt, message = CORRUPTIONS[kind]
    data = corrupt(_good_state())
    with pytest.raises(ValueError, match=message):
        decode_customer_state(data)
    # the batch path rejects it too, naming the state
    with pytest.raises(ValueError, match=rf"states\[1\]: .*{message}"):
        update_customers([None, data], i64([0]), i64([5]), i64([1]), i64([7]), f64([1]), f64([1]))


@pytest.mark.parametrize(
    ("kinds", "named"),
    [
        (("latitude", "unsorted"), 0),
        (("unsorted", "version"), 1),  # every header is checked before any content
        (("trailing", "cut byte"), 1),  # and sizes (in Python) before any header
        (("good", "max_ts", "padding", "longitude"), 2),
    ],
)
def test_the_first_state_failing_the_earliest_check_is_named(
    kinds: tuple[str, ...], named: int
) -> None:
    states = [_good_state() if k == "good" else CORRUPTIONS[k][0](_good_state()) for k in kinds]
    message = CORRUPTIONS[kinds[named]][1]
    with pytest.raises(ValueError, match=rf"states\[{named}\]: .*{message}"):
        update_customers(states, i64([0]), i64([5]), i64([1]), i64([7]), f64([1]), f64([1]))


def test_bytearray_states_are_read_like_bytes() -> None:
    args = (i64([0, 1, 2]), i64([5, 6, 7]), i64([1, 2, 3]), i64([7, 7, 7]), f64([1] * 3))
    expected = update_customers([_good_state(), None, _good_state()], *args, f64([1] * 3))
    got = update_customers([bytearray(_good_state()), None, _good_state()], *args, f64([1] * 3))
    for a, b in zip(expected[:3], got[:3], strict=True):
        assert a.tobytes() == b.tobytes()
    assert got[3] == expected[3]
    with pytest.raises(ValueError, match=r"states\[1\]: state must be bytes"):
        update_customers([bytearray(_good_state()), memoryview(_good_state()), None], *args,
                         f64([1] * 3))  # fmt: skip


def test_time_features_and_ratios_match_numpy() -> None:
    rng = np.random.default_rng(3)
    ts = np.concatenate([rng.integers(-(10**13), 10**13, 500), i64([0, -1, DAY_MS - 1])])
    offset = rng.integers(-840, 841, ts.shape[0])
    local = ts + offset * 60_000
    days = np.floor_divide(local, DAY_MS)
    expected = np.column_stack(
        [(days + 3) % 7 >= 5, np.floor_divide(local - days * DAY_MS, 3_600_000) <= 6]
    ).astype(np.float64)
    assert time_features(ts, offset).tobytes() == expected.tobytes()
    assert time_features(ts[::2], offset[::2]).tobytes() == expected[::2].tobytes()
    amount = rng.normal(size=500)
    averages = rng.normal(size=(500, 3))
    averages[rng.random(averages.shape) < 0.2] = 0.0
    averages[rng.random(averages.shape) < 0.1] = -0.0
    averages[rng.random(averages.shape) < 0.1] = np.nan
    ratios = np.zeros_like(averages)
    np.divide(amount[:, None], averages, out=ratios, where=averages != 0)
    assert amount_ratios(amount, averages).tobytes() == ratios.tobytes()
    assert amount_ratios(amount[::2], averages[::2]).tobytes() == ratios[::2].tobytes()


def test_encode_rejects_bad_input() -> None:
    good = (i64([1, 2]), i64([0, 0]), i64([3, 3]), f64([0, 0]), f64([0, 0]))
    with pytest.raises(ValueError, match="ascending"):
        encode_customer_state(i64([2, 1]), *good[1:], 2)
    with pytest.raises(ValueError, match="differ in length"):
        encode_customer_state(*good[:4], f64([0]), 2)
    with pytest.raises(ValueError, match="below the last event time"):
        encode_customer_state(*good, 1)
    with pytest.raises(ValueError, match="terminal must have dtype int64"):
        encode_customer_state(*good[:2], f64([3, 3]), *good[3:], 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lat must have dtype float64"):
        encode_customer_state(*good[:3], i64([0, 0]), good[4], 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"latitude -90\.5"):
        encode_customer_state(*good[:3], f64([0, -90.5]), good[4], 2)
    with pytest.raises(ValueError, match="int64"):
        encode_customer_state(*good, 2**63)


# --- (d) eviction --------------------------------------------------------------------------------


def test_eviction_keeps_only_the_last_31_days() -> None:
    every = 6 * HOUR_MS
    ts = T0 + np.arange(200 * 4, dtype=np.int64) * every  # 200 days, 4 events a day
    amount = np.arange(ts.shape[0], dtype=np.int64)
    terminal = amount % 5
    lat = (amount % 90).astype(np.float64)
    lon = np.where(amount % 3 == 0, np.nan, (amount % 180).astype(np.float64))
    config = CustomerConfig()
    assert config.retain_ms == 31 * DAY_MS
    assert config.terminal_ms == 30 * DAY_MS
    state: bytes | None = None
    sizes = []
    for start in range(0, ts.shape[0], 50):
        batch = slice(start, start + 50)
        cols = (ts[batch], amount[batch], terminal[batch], lat[batch], lon[batch])
        _, _, _, (state,) = update_customers(
            [state], np.zeros(ts[batch].shape[0], np.int64), *cols, config
        )
        kept = decode_customer_state(state)
        assert kept[5] == ts[batch][-1]
        want = ts[: batch.stop] > kept[5] - 31 * DAY_MS
        for got_values, values in zip(kept[:5], (ts, amount, terminal, lat, lon), strict=True):
            np.testing.assert_array_equal(got_values, values[: batch.stop][want])
        sizes.append(kept[0].shape[0])
        assert state is not None and len(state) == 16 + 40 * sizes[-1]
    assert max(sizes) == 31 * 4  # bounded, while 800 events went through
    assert sizes[-1] == 31 * 4


def test_late_event_misses_evicted_history_and_idle_state_is_unchanged() -> None:
    cols = (i64([TA, TA]), f64([*PARIS[:1], NAN]), f64([PARIS[1], NAN]))
    _, _, _, (state,) = update_customers(
        [None], i64([0, 0]), i64([T0, T0 + 40 * D]), i64([100, 1]), *cols
    )
    assert decode_customer_state(state)[0].tolist() == [T0 + 40 * D]
    # 35 days late: T0 (same terminal, 5 days before) was evicted, so nothing precedes it
    counts, _, extras, (state,) = update_customers(
        [state], i64([0]), i64([T0 + 5 * D]), i64([7]), i64([TA]), f64([1.0]), f64([1.0])
    )
    assert counts.tolist() == [[1, 1, 1]]
    assert math.isnan(extras[0, 0])
    assert extras[0, 1] == 1.0
    assert math.isnan(extras[0, 2])
    ts, *_, max_ts = decode_customer_state(state)
    assert ts.tolist() == [T0 + 40 * D]
    assert max_ts == T0 + 40 * D

    # a customer passed without events comes back byte for byte
    _, _, _, new_states = update_customers(
        [state, None], i64([1]), i64([T0]), i64([9]), i64([TB]), f64([NAN]), f64([NAN])
    )
    assert new_states[0] == state


# --- (e) input validation ------------------------------------------------------------------------


def _call(**changes: object) -> None:
    args: dict[str, object] = {
        "states": [None],
        "group": i64([0]),
        "ts": i64([1]),
        "amount": i64([1]),
        "terminal": i64([1]),
        "lat": f64([0.0]),
        "lon": f64([0.0]),
    }
    args.update(changes)
    update_customers(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ts": np.array([1.5])}, "ts must have dtype int64"),
        ({"terminal": np.array([1], np.uint64)}, "terminal must have dtype int64"),
        ({"lat": np.array([1], np.int64)}, "lat must have dtype float64"),
        ({"lon": np.array([1], np.float32)}, "lon must have dtype float64"),
        ({"lon": [0.0]}, "lon must be a numpy float64 array"),
        ({"lat": np.zeros((1, 1))}, "lat must be 1-D"),
        ({"group": np.array([0.0])}, "group must have an integer dtype"),
        ({"group": [0]}, "group must be a numpy integer array"),
        ({"lat": f64([0.0, 0.0])}, "differ in length"),
        ({"terminal": i64([])}, "differ in length"),
        ({"group": i64([1])}, "group index 1 out of range for 1 states"),
        ({"group": i64([-1])}, "group index -1 out of range"),
        ({"states": []}, "out of range for 0 states"),
        ({"lat": f64([-91.0])}, "latitude -91.0 at index 0"),
        ({"lon": f64([np.inf])}, "longitude inf at index 0"),
        ({"states": [b"abc"]}, r"states\[0\]: truncated"),
        ({"states": ["abc"]}, r"states\[0\]: state must be bytes"),
    ],
)
def test_update_customers_rejects_bad_input(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _call(**changes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_ms": ()}, "at least one window"),
        ({"window_ms": (0,)}, "window_ms entries must be in"),
        ({"window_ms": (DAY_MS, -1)}, "window_ms entries must be in"),
        ({"window_ms": (1.5,)}, "window_ms entries must be ints"),
        ({"window_ms": (True,)}, "window_ms entries must be ints"),
        ({"allowed_lateness_ms": -1}, "allowed_lateness_ms must be in"),
        ({"allowed_lateness_ms": 2**63}, "allowed_lateness_ms must be in"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CustomerConfig(**kwargs)  # type: ignore[arg-type]


def test_config_defaults() -> None:
    config = CustomerConfig()
    assert config.window_ms == (DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
    assert config.allowed_lateness_ms == DAY_MS
    assert config.retain_ms == 31 * DAY_MS
    assert config.terminal_ms == 30 * DAY_MS
    short = CustomerConfig(window_ms=(HOUR_MS, 2 * HOUR_MS), allowed_lateness_ms=0)
    assert short.retain_ms == short.terminal_ms == 2 * HOUR_MS
