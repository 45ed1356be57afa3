"""Per-customer event-time windows: numba kernels against the pure Python reference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from fraud.kernels.windows import INT64_MIN, update_windows_csr
from fraud.reference.windows import reference_windows, reference_windows_evicting
from fraud.windows import (
    DAY_MS,
    WINDOW_DAYS,
    WindowConfig,
    decode_state,
    encode_state,
    update_windows,
    warmup,
)

I64 = npt.NDArray[np.int64]
HOUR_MS = 3_600_000
T0 = 1_700_000_000_000
DEFAULT_WINDOWS = tuple(days * DAY_MS for days in WINDOW_DAYS)


def i64(values: Sequence[int]) -> I64:
    return np.array(values, dtype=np.int64)


def run_stream(
    customer: I64,
    ts: I64,
    amount: I64,
    batch_sizes: Sequence[int],
    config: WindowConfig,
    rng: np.random.Generator | None = None,
) -> tuple[I64, I64, dict[int, bytes]]:
    """Feed the stream to update_windows batch by batch, carrying states as bytes in between.

    With ``rng``, each batch also passes the states of a few known customers that have no event
    in it, and numbers the customers in a shuffled order.
    """
    states: dict[int, bytes] = {}
    counts: list[I64] = []
    sums: list[I64] = []
    start = 0
    for size in batch_sizes:
        batch = slice(start, start + size)
        start += size
        names = [int(c) for c in np.unique(customer[batch])]
        if rng is not None:
            idle = [c for c in states if c not in names]
            names += [int(c) for c in rng.permutation(idle)[: rng.integers(0, 3)]]
            names = [int(c) for c in rng.permutation(names)]
        index = {c: g for g, c in enumerate(names)}
        group = np.array([index[int(c)] for c in customer[batch]], dtype=np.int64)
        batch_counts, batch_sums, new_states = update_windows(
            [states.get(c) for c in names], group, ts[batch], amount[batch], config
        )
        assert batch_counts.shape == (size, len(config.window_ms))
        assert len(new_states) == len(names)
        counts.append(batch_counts)
        sums.append(batch_sums)
        states.update(zip(names, new_states, strict=True))
    width = len(config.window_ms)
    return (
        np.concatenate(counts) if counts else np.empty((0, width), np.int64),
        np.concatenate(sums) if sums else np.empty((0, width), np.int64),
        states,
    )


def random_stream(
    rng: np.random.Generator, n_customers: int, n_events: int, grid_ms: int, max_delay_ms: int
) -> tuple[I64, I64, I64]:
    """~90 days of events on a coarse grid (many ties and exact N-day gaps), +-1 ms jitter,
    arriving out of order by up to ``max_delay_ms``."""
    n_slots = 90 * DAY_MS // grid_ms
    ts = T0 + rng.integers(0, n_slots, n_events) * grid_ms + rng.choice([-1, 0, 0, 0, 1], n_events)
    arrival = np.argsort(ts + rng.integers(0, max_delay_ms + 1, n_events), kind="stable")
    customer = rng.integers(0, n_customers, n_events)
    amount = rng.integers(-5_000, 1_000_000, n_events)
    return customer.astype(np.int64), ts[arrival].astype(np.int64), amount.astype(np.int64)


def random_batches(rng: np.random.Generator, n_events: int, n_batches: int) -> list[int]:
    cuts = np.sort(rng.choice(np.arange(1, n_events), n_batches - 1, replace=False))
    return [int(size) for size in np.diff(np.concatenate([[0], cuts, [n_events]]))]


# --- (a) kernel against the reference on random streams ---------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(
    ("n_customers", "n_events", "n_batches", "grid_ms"),
    [
        (1, 600, 7, HOUR_MS),  # one busy customer
        (5, 800, 5, HOUR_MS),
        (12, 1500, 10, 6 * HOUR_MS),  # coarse grid: ties everywhere
        (40, 1200, 1, DAY_MS // 4),  # one single batch
        (3, 300, 300, HOUR_MS),  # one event per batch
    ],
)
def test_matches_reference_on_random_streams(
    seed: int, n_customers: int, n_events: int, n_batches: int, grid_ms: int
) -> None:
    rng = np.random.default_rng(seed)
    # arrivals late by up to 20 h: within the allowed lateness, so nothing needed is evicted
    customer, ts, amount = random_stream(rng, n_customers, n_events, grid_ms, 20 * HOUR_MS)
    assert np.any(np.diff(ts) < 0), "the stream should have out-of-order arrivals"
    config = WindowConfig()

    counts, sums, _ = run_stream(
        customer, ts, amount, random_batches(rng, n_events, n_batches), config, rng
    )

    want_counts, want_sums = reference_windows(
        customer.tolist(), ts.tolist(), amount.tolist(), config.window_ms
    )
    np.testing.assert_array_equal(counts, np.array(want_counts, dtype=np.int64))
    np.testing.assert_array_equal(sums, np.array(want_sums, dtype=np.int64))


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_matches_evicting_reference_with_very_late_events(seed: int) -> None:
    rng = np.random.default_rng(seed)
    config = WindowConfig(window_ms=(5 * HOUR_MS, 2 * DAY_MS, 3 * DAY_MS), allowed_lateness_ms=0)
    # arrivals up to 8 days late, far beyond the 3-day retention
    customer, ts, amount = random_stream(rng, 4, 700, HOUR_MS, 8 * DAY_MS)
    batch_sizes = random_batches(rng, len(ts), 12)

    counts, sums, _ = run_stream(customer, ts, amount, batch_sizes, config, rng)

    args = (customer.tolist(), ts.tolist(), amount.tolist(), config.window_ms)
    want_counts, want_sums = reference_windows_evicting(*args, batch_sizes, config.retain_ms)
    np.testing.assert_array_equal(counts, np.array(want_counts, dtype=np.int64))
    np.testing.assert_array_equal(sums, np.array(want_sums, dtype=np.int64))
    # the stream is late enough that eviction changed some results
    exact_counts, _ = reference_windows(*args)
    assert exact_counts != want_counts


def test_kernel_can_write_in_csr_order() -> None:
    # two groups, no state; out_row = arange keeps the CSR order
    counts = np.empty((3, 1), np.int64)
    sums = np.empty((3, 1), np.int64)
    new_ts = np.empty(3, np.int64)
    new_amount = np.empty(3, np.int64)
    new_offsets = np.empty(3, np.int64)
    new_max_ts = np.empty(2, np.int64)
    empty = np.empty(0, np.int64)
    status = update_windows_csr(
        empty,
        empty,
        i64([0, 0, 0]),
        i64([INT64_MIN, INT64_MIN]),
        i64([5, 3, 9]),
        i64([1, 2, 4]),
        i64([0, 2, 3]),
        i64([0, 1, 2]),
        i64([10]),
        10,
        counts,
        sums,
        new_ts,
        new_amount,
        new_offsets,
        new_max_ts,
    )
    assert status == -1
    # the event at 3 arrived after the one at 5, which is after it: each sees only itself
    assert counts[:, 0].tolist() == [1, 1, 1]
    assert sums[:, 0].tolist() == [1, 2, 4]
    assert new_offsets.tolist() == [0, 2, 3]
    assert new_ts[:3].tolist() == [3, 5, 9]
    assert new_amount[:3].tolist() == [2, 1, 4]
    assert new_max_ts.tolist() == [5, 9]


# --- (b) state codec -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 17])
def test_state_round_trip(n: int) -> None:
    rng = np.random.default_rng(n)
    ts = np.sort(rng.integers(-(2**62), 2**62, n)).astype(np.int64)
    amount = rng.integers(-(2**62), 2**62, n).astype(np.int64)
    if n:
        ts[0] = INT64_MIN
        amount[-1] = np.iinfo(np.int64).max
    max_ts = int(ts[-1]) + 5 if n else int(INT64_MIN)

    data = encode_state(ts, amount, max_ts)
    assert len(data) == 16 + 16 * n
    got_ts, got_amount, got_max_ts = decode_state(data)
    assert got_ts.dtype == np.int64
    assert got_amount.dtype == np.int64
    np.testing.assert_array_equal(got_ts, ts)
    np.testing.assert_array_equal(got_amount, amount)
    assert got_max_ts == max_ts
    assert encode_state(got_ts, got_amount, got_max_ts) == data


def test_decode_none_is_an_empty_state() -> None:
    ts, amount, max_ts = decode_state(None)
    assert ts.shape == amount.shape == (0,)
    assert ts.dtype == amount.dtype == np.int64
    assert max_ts == INT64_MIN


def _good_state() -> bytes:
    return encode_state(i64([1, 2, 3]), i64([10, 20, 30]), 4)


def _swap_times(data: bytes) -> bytes:
    return data[:16] + data[24:32] + data[16:24] + data[32:]


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "version": (lambda d: b"\x02" + d[1:], "unsupported window state version 2"),
    "padding": (lambda d: d[:1] + b"\x01" + d[2:], "padding"),
    "short header": (lambda d: d[:9], "truncated"),
    "empty": (lambda d: b"", "truncated"),
    "cut word": (lambda d: d[:-8], "truncated"),
    "cut byte": (lambda d: d[:-1], "truncated"),
    "trailing": (lambda d: d + b"\0" * 8, "trailing bytes"),
    "unsorted": (_swap_times, "not ascending"),
    "max_ts": (lambda d: d[:8] + (2).to_bytes(8, "little") + d[16:], "max_ts 2 is below"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_state_raises(kind: str) -> None:
    corrupt, message = CORRUPTIONS[kind]
    data = corrupt(_good_state())
    with pytest.raises(ValueError, match=message):
        decode_state(data)
    # the batch path rejects it too, naming the state
    with pytest.raises(ValueError, match=rf"states\[1\]: .*{message}"):
        update_windows([None, data], i64([0]), i64([5]), i64([1]))


def test_encode_state_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="ascending"):
        encode_state(i64([2, 1]), i64([0, 0]), 2)
    with pytest.raises(ValueError, match="differ in length"):
        encode_state(i64([1, 2]), i64([0]), 2)
    with pytest.raises(ValueError, match="below the last event time"):
        encode_state(i64([1, 2]), i64([0, 0]), 1)
    with pytest.raises(ValueError, match="dtype int64"):
        encode_state(np.array([1.0]), i64([0]), 2)
    with pytest.raises(ValueError, match="int64"):
        encode_state(i64([1]), i64([0]), 2**63)


# --- (c) eviction --------------------------------------------------------------------------------


def test_eviction_keeps_only_the_last_31_days() -> None:
    every = 6 * HOUR_MS
    ts = T0 + np.arange(200 * 4, dtype=np.int64) * every  # 200 days, 4 events a day
    amount = np.arange(ts.shape[0], dtype=np.int64)
    config = WindowConfig()
    assert config.retain_ms == 31 * DAY_MS
    state: bytes | None = None
    sizes = []
    for start in range(0, ts.shape[0], 50):
        batch = slice(start, start + 50)
        _, _, (state,) = update_windows(
            [state], np.zeros(ts[batch].shape[0], np.int64), ts[batch], amount[batch], config
        )
        kept_ts, kept_amount, max_ts = decode_state(state)
        assert max_ts == ts[batch][-1]
        seen = ts[: batch.stop]
        want = seen > max_ts - 31 * DAY_MS
        np.testing.assert_array_equal(kept_ts, seen[want])
        np.testing.assert_array_equal(kept_amount, amount[: batch.stop][want])
        sizes.append(kept_ts.shape[0])
    assert max(sizes) == 31 * 4  # bounded, while 800 events went through
    assert sizes[-1] == 31 * 4


def test_late_event_misses_evicted_history_and_max_ts_survives() -> None:
    config = WindowConfig()
    _, _, (state,) = update_windows(
        [None], i64([0, 0]), i64([T0, T0 + 40 * DAY_MS]), i64([100, 1]), config
    )
    ts, _, max_ts = decode_state(state)
    assert ts.tolist() == [T0 + 40 * DAY_MS]  # T0 is older than max_ts - 31 days
    assert max_ts == T0 + 40 * DAY_MS

    # 35 days late: by definition its 30-day window holds T0, but T0 was evicted
    counts, sums, (state,) = update_windows([state], i64([0]), i64([T0 + 5 * DAY_MS]), i64([7]))
    assert counts.tolist() == [[1, 1, 1]]
    assert sums.tolist() == [[7, 7, 7]]
    ts, _, max_ts = decode_state(state)
    assert ts.tolist() == [T0 + 40 * DAY_MS]  # the late event itself is evicted straight away
    assert max_ts == T0 + 40 * DAY_MS


def test_idle_state_round_trips_unchanged() -> None:
    state = encode_state(i64([T0, T0 + DAY_MS]), i64([3, 4]), T0 + 2 * DAY_MS)
    counts, sums, new_states = update_windows(
        [state, None], i64([1]), i64([T0]), i64([9]), WindowConfig()
    )
    assert new_states[0] == state
    assert counts.tolist() == [[1, 1, 1]]
    assert sums.tolist() == [[9, 9, 9]]
    ts, amount, max_ts = decode_state(new_states[1])
    assert (ts.tolist(), amount.tolist(), max_ts) == ([T0], [9], T0)


# --- (d) a hand-written example at the window boundaries -----------------------------------------

D = DAY_MS
HAND_EVENTS = [  # (customer, event time, amount, expected counts 1/7/30 d, expected sums)
    ("A", T0, 100, [1, 1, 1], [100, 100, 100]),
    ("B", T0, 7, [1, 1, 1], [7, 7, 7]),
    # exactly one day later: T0 is out of the 1-day window (left open), in the others
    ("A", T0 + D, 200, [1, 2, 2], [200, 300, 300]),
    # same ms: the earlier arrival at the same time counts
    ("A", T0 + D, 50, [2, 3, 3], [250, 350, 350]),
    # arrives later, 1 ms earlier: T0 is in its 1-day window, the two at T0 + D are after it
    ("A", T0 + D - 1, 1000, [2, 2, 2], [1100, 1100, 1100]),
    ("B", T0 + D - 1, 8, [2, 2, 2], [15, 15, 15]),
    # exactly 7 days after T0: T0 is out of the 7-day window, T0 + D - 1 is in
    ("A", T0 + 7 * D, 10, [1, 4, 5], [10, 1260, 1360]),
    # exactly 30 days after T0: T0 is out of the 30-day window
    ("A", T0 + 30 * D, 1, [1, 1, 5], [1, 1, 1261]),
    # B's first event arriving last: nothing seen so far is at or before it
    ("B", T0 - 1, 5, [1, 1, 1], [5, 5, 5]),
]


@pytest.mark.parametrize("batch_sizes", [[9], [4, 5], [1] * 9, [2, 0, 3, 4]])
def test_hand_written_example(batch_sizes: list[int]) -> None:
    customer = np.array([0 if e[0] == "A" else 1 for e in HAND_EVENTS], dtype=np.int64)
    ts = i64([e[1] for e in HAND_EVENTS])
    amount = i64([e[2] for e in HAND_EVENTS])

    counts, sums, states = run_stream(customer, ts, amount, batch_sizes, WindowConfig())

    assert counts.tolist() == [e[3] for e in HAND_EVENTS]
    assert sums.tolist() == [e[4] for e in HAND_EVENTS]
    a_ts, a_amount, a_max = decode_state(states[0])
    assert a_ts.tolist() == [T0, T0 + D - 1, T0 + D, T0 + D, T0 + 7 * D, T0 + 30 * D]
    assert a_amount.tolist() == [100, 1000, 200, 50, 10, 1]  # ties keep arrival order
    assert a_max == T0 + 30 * D
    b_ts, b_amount, b_max = decode_state(states[1])
    assert (b_ts.tolist(), b_amount.tolist(), b_max) == (
        [T0 - 1, T0, T0 + D - 1],
        [5, 7, 8],
        T0 + D - 1,
    )
    # and the reference agrees with the hand-written numbers
    want_counts, want_sums = reference_windows(
        customer.tolist(), ts.tolist(), amount.tolist(), DEFAULT_WINDOWS
    )
    assert want_counts == [e[3] for e in HAND_EVENTS]
    assert want_sums == [e[4] for e in HAND_EVENTS]


def test_results_come_back_in_the_callers_order() -> None:
    # groups interleaved and numbered against their order of appearance
    counts, sums, _ = update_windows(
        [None, None, None],
        np.array([2, 0, 2, 1, 0], dtype=np.uint16),
        i64([T0, T0, T0 + 1, T0, T0 + 2]),
        i64([1, 10, 2, 100, 20]),
        WindowConfig(window_ms=(D,)),
    )
    assert counts[:, 0].tolist() == [1, 1, 2, 1, 2]
    assert sums[:, 0].tolist() == [1, 10, 3, 100, 30]


def test_many_groups() -> None:
    # more groups than a 16-bit sort key holds
    n_groups = 70_000
    group = i64([69_999, 5, 69_999, 65_536, 5])
    counts, sums, new_states = update_windows(
        [None] * n_groups, group, i64([T0, T0, T0 + 1, T0, T0 + D]), i64([1, 2, 3, 4, 5])
    )
    assert counts[:, 0].tolist() == [1, 1, 2, 1, 1]
    assert sums[:, 2].tolist() == [1, 2, 4, 4, 7]
    assert len(new_states) == n_groups
    assert decode_state(new_states[69_999])[0].tolist() == [T0, T0 + 1]
    assert decode_state(new_states[1])[2] == INT64_MIN


def test_empty_batch() -> None:
    counts, sums, new_states = update_windows([], i64([]), i64([]), i64([]))
    assert counts.shape == sums.shape == (0, 3)
    assert new_states == []


def test_warmup() -> None:
    warmup()


# --- (e) input validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "group", "ts", "amount", "message"),
    [
        ([None], i64([0]), np.array([1.5]), i64([1]), "ts must have dtype int64"),
        ([None], i64([0]), np.array([1], np.int32), i64([1]), "ts must have dtype int64"),
        ([None], i64([0]), i64([1]), np.array([1], np.uint64), "amount must have dtype int64"),
        ([None], i64([0]), [1], i64([1]), "ts must be a numpy int64 array"),
        ([None], i64([0]), np.array([[1]], np.int64), i64([1]), "ts must be 1-D"),
        ([None], np.array([0.0]), i64([1]), i64([1]), "group must have an integer dtype"),
        ([None], np.array([True]), i64([1]), i64([1]), "group must have an integer dtype"),
        ([None], [0], i64([1]), i64([1]), "group must be a numpy integer array"),
        ([None], i64([0, 0]), i64([1]), i64([1]), "differ in length"),
        ([None], i64([0]), i64([1]), i64([1, 2]), "differ in length"),
        ([None], i64([1]), i64([1]), i64([1]), "group index 1 out of range for 1 states"),
        ([None], i64([-1]), i64([1]), i64([1]), "group index -1 out of range"),
        ([], i64([0]), i64([1]), i64([1]), "out of range for 0 states"),
        ([None, "abc"], i64([0]), i64([1]), i64([1]), r"states\[1\]: state must be bytes"),
    ],
)
def test_update_windows_rejects_bad_input(
    states: list[bytes | None], group: I64, ts: I64, amount: I64, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        update_windows(states, group, ts, amount)


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
def test_window_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowConfig(**kwargs)  # type: ignore[arg-type]


def test_window_config_defaults() -> None:
    config = WindowConfig()
    assert config.window_ms == (DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
    assert config.allowed_lateness_ms == DAY_MS
    assert config.retain_ms == 31 * DAY_MS
    assert WindowConfig(window_ms=(HOUR_MS, 2 * HOUR_MS), allowed_lateness_ms=0).retain_ms == (
        2 * HOUR_MS
    )
