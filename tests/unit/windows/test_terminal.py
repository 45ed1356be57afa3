"""Per-terminal risk windows from delayed labels: numba kernels against the Python reference."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from fraud.contracts.units import DAY_MS, HOUR_MS
from fraud.kernels.terminal import INT64_MAX, INT64_MIN
from fraud.reference.terminal import reference_terminals, reference_terminals_evicting
from fraud.windows.terminal import (
    KIND_LABEL,
    KIND_TX,
    TerminalConfig,
    TerminalState,
    decode_terminal_state,
    encode_terminal_state,
    risk,
    tx_hash,
    update_terminals,
    warmup,
)

I64 = npt.NDArray[np.int64]
D = DAY_MS
T0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS  # midnight: the grid is aligned on days


def i64(values: Sequence[int]) -> I64:
    return np.array(values, dtype=np.int64)


class Stream:
    """Events in processing order: terminal, kind, ts, tx_hash, fraud (all int64 arrays)."""

    def __init__(
        self, terminal: I64, kind: I64, ts: I64, hashes: I64, fraud: I64, batch_sizes: list[int]
    ) -> None:
        self.terminal = terminal
        self.kind = kind
        self.ts = ts
        self.hashes = hashes
        self.fraud = fraud
        self.batch_sizes = batch_sizes

    def lists(self) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
        return (
            self.terminal.tolist(),
            self.kind.tolist(),
            self.ts.tolist(),
            self.hashes.tolist(),
            self.fraud.tolist(),
        )


def run_stream(
    stream: Stream, config: TerminalConfig, rng: np.random.Generator | None = None
) -> tuple[I64, I64, dict[int, bytes]]:
    """Feed the stream to update_terminals batch by batch, carrying states as bytes in between.

    With ``rng``, each batch also passes the states of a few known terminals without events in
    it, and numbers the terminals in a shuffled order.
    """
    states: dict[int, bytes] = {}
    counts: list[I64] = []
    frauds: list[I64] = []
    start = 0
    width = len(config.window_ms)
    for size in stream.batch_sizes:
        batch = slice(start, start + size)
        start += size
        names = [int(x) for x in np.unique(stream.terminal[batch])]
        if rng is not None:
            idle = [x for x in states if x not in names]
            names += [int(x) for x in rng.permutation(idle)[: rng.integers(0, 3)]]
            names = [int(x) for x in rng.permutation(names)]
        index = {x: g for g, x in enumerate(names)}
        group = np.array([index[int(x)] for x in stream.terminal[batch]], dtype=np.int64)
        batch_counts, batch_frauds, new_states = update_terminals(
            [states.get(x) for x in names],
            group,
            stream.kind[batch],
            stream.ts[batch],
            stream.hashes[batch],
            stream.fraud[batch],
            config,
        )
        assert batch_counts.shape == batch_frauds.shape == (size, width)
        assert len(new_states) == len(names)
        counts.append(batch_counts)
        frauds.append(batch_frauds)
        states.update(zip(names, new_states, strict=True))
    return (
        np.concatenate(counts) if counts else np.empty((0, width), np.int64),
        np.concatenate(frauds) if frauds else np.empty((0, width), np.int64),
        states,
    )


def random_batches(rng: np.random.Generator, n_events: int, n_batches: int) -> list[int]:
    cuts = np.sort(rng.choice(np.arange(1, n_events), n_batches - 1, replace=False))
    return [int(size) for size in np.diff(np.concatenate([[0], cuts, [n_events]]))]


def random_stream(
    rng: np.random.Generator,
    n_terminals: int,
    n_tx: int,
    grid_ms: int,
    n_batches: int,
    *,
    delay_ms: int = 7 * D,
    max_tx_late_ms: int = 20 * HOUR_MS,
    labels_first: bool = False,
) -> Stream:
    """~90 days of transactions on a coarse grid aligned with the delay and the windows, so that
    ``t - D`` and ``t - D - N`` hit other transactions exactly (a few are off by 1 ms).

    Transactions are processed up to ``max_tx_late_ms`` after their event time; a few are
    redelivered (same hash, terminal and time). Most get a label ``fraud`` 0/1 with a delay
    around ``delay_ms`` (exactly it, one grid step off, 0, or random up to twice it), processed
    before the transaction (pending), soon after it, or long after (possibly evicted by then);
    some are relabelled later; some labels are for transactions that never come. With
    ``labels_first``, each batch applies its labels before its transactions (as the worker does).
    """
    n_slots = 90 * D // grid_ms
    tx_ts = T0 + rng.integers(0, n_slots, n_tx) * grid_ms + rng.choice([-1, 0, 0, 0, 0, 1], n_tx)
    tx_terminal = rng.integers(0, n_terminals, n_tx)
    tx_h = rng.integers(INT64_MIN, INT64_MAX, n_tx, dtype=np.int64, endpoint=True)
    tx_key = tx_ts + rng.integers(0, max_tx_late_ms + 1, n_tx)

    rows: list[tuple[int, int, int, int, int, int]] = []  # key, terminal, kind, ts, hash, fraud
    for i in range(n_tx):
        x, e, h, key = int(tx_terminal[i]), int(tx_ts[i]), int(tx_h[i]), int(tx_key[i])
        rows.append((key, x, KIND_TX, e, h, 0))
        if rng.random() < 0.04:  # redelivered a little later
            rows.append((key + int(rng.integers(0, max_tx_late_ms + 1)), x, KIND_TX, e, h, 0))
        if rng.random() < 0.2:
            continue  # never labelled
        choice = rng.integers(0, 5)
        delay = [
            delay_ms,
            delay_ms - grid_ms,
            delay_ms + grid_ms,
            0,
            int(rng.integers(0, 2 * delay_ms // grid_ms + 1)) * grid_ms,
        ][choice]
        label_time = e + max(delay, 0)
        fraud = int(rng.random() < 0.35)
        where = rng.random()
        if where < 0.2:
            label_key = key - int(rng.integers(1, 3 * D))  # before the transaction: pending
        elif where < 0.9:
            label_key = label_time + int(rng.integers(-2 * D, D))
        else:
            label_key = key + int(rng.integers(0, 60 * D))  # long after
        rows.append((label_key, x, KIND_LABEL, label_time, h, fraud))
        if rng.random() < 0.15:  # relabelled later, maybe flipped
            later = label_time + int(rng.integers(0, 3)) * grid_ms
            new_fraud = fraud if rng.random() < 0.3 else 1 - fraud
            rows.append(
                (label_key + int(rng.integers(1, 5 * D)), x, KIND_LABEL, later, h, new_fraud)
            )
    for _ in range(n_tx // 20):  # labels for transactions that never come
        x = int(rng.integers(0, n_terminals))
        label_time = T0 + int(rng.integers(0, n_slots)) * grid_ms
        h = int(rng.integers(INT64_MIN, INT64_MAX, dtype=np.int64, endpoint=True))
        key = label_time + int(rng.integers(-D, D))
        rows.append((key, x, KIND_LABEL, label_time, h, int(rng.integers(0, 2))))

    rows.sort(key=lambda row: row[0])
    batch_sizes = random_batches(rng, len(rows), n_batches)
    if labels_first:
        ordered: list[tuple[int, int, int, int, int, int]] = []
        start = 0
        for size in batch_sizes:
            batch = rows[start : start + size]
            start += size
            ordered += [r for r in batch if r[2] == KIND_LABEL] + [
                r for r in batch if r[2] == KIND_TX
            ]
        rows = ordered
    else:  # shuffle a little more: swap some neighbours (labels and transactions interleave)
        for j in rng.integers(0, len(rows) - 1, len(rows) // 10):
            a, b = rows[j], rows[j + 1]
            late = b[2] == KIND_TX and b[3] < a[3] - 10 * HOUR_MS
            if not late:  # keep transactions within the allowed lateness
                rows[j], rows[j + 1] = b, a
    columns = list(zip(*rows, strict=True))
    return Stream(*(i64(columns[c]) for c in range(1, 6)), batch_sizes)


def _reference(stream: Stream, config: TerminalConfig) -> tuple[I64, I64]:
    counts, frauds = reference_terminals(*stream.lists(), config.window_ms, config.delay_ms)
    width = len(config.window_ms)
    return np.array(counts, np.int64).reshape(-1, width), np.array(frauds, np.int64).reshape(
        -1, width
    )


# --- (a) kernel against the reference on random streams ------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("labels_first", [False, True])
@pytest.mark.parametrize(
    ("n_terminals", "n_tx", "n_batches", "grid_ms"),
    [
        (1, 500, 7, 6 * HOUR_MS),  # one busy terminal
        (5, 800, 9, DAY_MS // 4),
        (12, 1200, 10, DAY_MS),  # coarse grid: ties everywhere
        (30, 900, 1, DAY_MS // 2),  # one single batch
        (3, 150, 150, DAY_MS // 4),  # about one event per batch
    ],
)
def test_matches_reference_on_random_streams(
    seed: int, labels_first: bool, n_terminals: int, n_tx: int, n_batches: int, grid_ms: int
) -> None:
    rng = np.random.default_rng(seed)
    stream = random_stream(rng, n_terminals, n_tx, grid_ms, n_batches, labels_first=labels_first)
    config = TerminalConfig()

    counts, frauds, states = run_stream(stream, config, rng)

    want_counts, want_frauds = _reference(stream, config)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(frauds, want_frauds)
    # the streams do exercise what they should
    is_tx = stream.kind == KIND_TX
    assert frauds[is_tx].sum() > 0
    assert (frauds[is_tx] < counts[is_tx]).any()
    assert not counts[~is_tx].any() and not frauds[~is_tx].any()
    for data in states.values():
        decode_terminal_state(data)


@pytest.mark.parametrize("seed", [20, 21, 22])
def test_matches_evicting_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    config = TerminalConfig(
        delay_ms=2 * D,
        window_ms=(D // 2, D, 3 * D),
        allowed_lateness_ms=0,
        max_pending=4,
    )
    # transactions up to 8 days late, far beyond the 5-day retention; few pending labels kept
    stream = random_stream(
        rng, 3, 700, 6 * HOUR_MS, 15, delay_ms=config.delay_ms, max_tx_late_ms=8 * D
    )

    counts, frauds, states = run_stream(stream, config, rng)

    args = (*stream.lists(), config.window_ms, config.delay_ms)
    want_counts, want_frauds = reference_terminals_evicting(
        *args, stream.batch_sizes, config.retain_ms, config.max_pending
    )
    np.testing.assert_array_equal(counts, np.array(want_counts, np.int64))
    np.testing.assert_array_equal(frauds, np.array(want_frauds, np.int64))
    # eviction made a difference, and the cap held
    exact_counts, exact_frauds = reference_terminals(*args)
    assert (exact_counts, exact_frauds) != (want_counts, want_frauds)
    for data in states.values():
        assert decode_terminal_state(data).pending_hash.shape[0] <= config.max_pending


# --- (b) hand-written examples at the boundaries -------------------------------------------------

HAND_EVENTS = [  # (terminal, kind, ts, hash, fraud, expected counts 1/7/30 d, expected frauds)
    ("A", KIND_TX, T0, 1, 0, [0, 0, 0], [0, 0, 0]),
    ("A", KIND_LABEL, T0 + 7 * D, 1, 1, [0, 0, 0], [0, 0, 0]),
    ("A", KIND_TX, T0 + D, 2, 0, [0, 0, 0], [0, 0, 0]),
    ("A", KIND_LABEL, T0 + 8 * D + 1, 2, 1, [0, 0, 0], [0, 0, 0]),
    # t - D = T0 - 1: tx 1 (at T0) is not in
    ("A", KIND_TX, T0 + 7 * D - 1, 3, 0, [0, 0, 0], [0, 0, 0]),
    # t - D = T0: tx 1 exactly at t - D counts, and its label time == t: a known fraud
    ("A", KIND_TX, T0 + 7 * D, 4, 0, [1, 1, 1], [1, 1, 1]),
    # t - D - 1 day = T0: tx 1 exactly there is out of the 1-day window; tx 2 (t - D) is in, but
    # its label time is t + 1: not known yet
    ("A", KIND_TX, T0 + 8 * D, 5, 0, [1, 2, 2], [0, 1, 1]),
    # one ms later tx 2's label time == t: known
    ("A", KIND_TX, T0 + 8 * D + 1, 6, 0, [1, 2, 2], [1, 2, 2]),
    # a label before its transaction: pending, attached when it comes
    ("A", KIND_LABEL, T0 + 8 * D, 7, 1, [0, 0, 0], [0, 0, 0]),
    ("A", KIND_TX, T0 + 8 * D + 2, 7, 0, [1, 2, 2], [1, 2, 2]),
    # window 1 d: (T0 + 7D + 2, T0 + 8D + 2] = txs 5, 6, 7 (7 a fraud); 7 d: txs 3 to 7; 30 d: all
    ("A", KIND_TX, T0 + 15 * D + 2, 8, 0, [3, 5, 7], [1, 1, 3]),
    # relabelled legit: replaces the fraud label
    ("A", KIND_LABEL, T0 + 9 * D, 7, 0, [0, 0, 0], [0, 0, 0]),
    ("A", KIND_TX, T0 + 15 * D + 2, 9, 0, [3, 5, 7], [0, 0, 2]),
    # another terminal: A's history and labels do not count
    ("B", KIND_LABEL, T0 + 7 * D, 1, 1, [0, 0, 0], [0, 0, 0]),
    ("B", KIND_TX, T0 + 8 * D, 10, 0, [0, 0, 0], [0, 0, 0]),
]


def _hand_stream(batch_sizes: list[int]) -> Stream:
    columns = list(zip(*HAND_EVENTS, strict=True))
    terminal = i64([0 if x == "A" else 1 for x in columns[0]])
    return Stream(terminal, *(i64(columns[c]) for c in range(1, 5)), batch_sizes)  # type: ignore[arg-type]


@pytest.mark.parametrize("batch_sizes", [[15], [5, 10], [1] * 15, [2, 0, 3, 4, 6]])
def test_hand_written_example(batch_sizes: list[int]) -> None:
    stream = _hand_stream(batch_sizes)

    counts, frauds, states = run_stream(stream, TerminalConfig())

    assert counts.tolist() == [e[5] for e in HAND_EVENTS]
    assert frauds.tolist() == [e[6] for e in HAND_EVENTS]
    ref_counts, ref_frauds = _reference(stream, TerminalConfig())
    assert ref_counts.tolist() == [e[5] for e in HAND_EVENTS]
    assert ref_frauds.tolist() == [e[6] for e in HAND_EVENTS]

    a = decode_terminal_state(states[0])
    assert a.ts.tolist() == [
        *(T0, T0 + D, T0 + 7 * D - 1, T0 + 7 * D),
        *(T0 + 8 * D, T0 + 8 * D + 1, T0 + 8 * D + 2, T0 + 15 * D + 2, T0 + 15 * D + 2),
    ]
    assert a.tx_hash.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert a.fraud.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert a.label_time.tolist() == [T0 + 7 * D, T0 + 8 * D + 1] + [INT64_MAX] * 4 + [
        T0 + 9 * D,
        INT64_MAX,
        INT64_MAX,
    ]
    assert a.pending_hash.shape == (0,)
    assert a.max_ts == T0 + 15 * D + 2
    b = decode_terminal_state(states[1])
    assert b.tx_hash.tolist() == [10]
    # B's label for hash 1 stays pending: B never saw transaction 1
    assert (b.pending_hash.tolist(), b.pending_fraud.tolist()) == ([1], [1])
    assert b.pending_label_time.tolist() == [T0 + 7 * D]

    r = risk(counts, frauds)
    assert r.dtype == np.float64
    assert r[6].tolist() == [0.0, 0.5, 0.5]
    assert r[10].tolist() == pytest.approx([1 / 3, 1 / 5, 3 / 7])
    assert r[0].tolist() == [0.0, 0.0, 0.0]


def test_pending_label_attaches_and_duplicates_share_the_label() -> None:
    config = TerminalConfig()
    # the label comes first: pending
    _, _, (state,) = update_terminals(
        [None], i64([0]), i64([1]), i64([T0 + 7 * D]), i64([42]), i64([1])
    )
    pending = decode_terminal_state(state)
    assert pending.ts.shape == (0,)
    assert pending.pending_hash.tolist() == [42]
    assert pending.max_ts == INT64_MIN
    # the transaction arrives, then a redelivery of it: both carry the label
    _, _, (state,) = update_terminals(
        [state], i64([0, 0]), i64([0, 0]), i64([T0, T0]), i64([42, 42]), i64([0, 0]), config
    )
    s = decode_terminal_state(state)
    assert s.pending_hash.shape == (0,)
    assert (s.tx_hash.tolist(), s.fraud.tolist()) == ([42, 42], [1, 1])
    assert s.label_time.tolist() == [T0 + 7 * D] * 2
    counts, frauds, (state,) = update_terminals(
        [state], i64([0]), i64([0]), i64([T0 + 7 * D]), i64([43]), i64([0]), config
    )
    assert (counts.tolist(), frauds.tolist()) == ([[2, 2, 2]], [[2, 2, 2]])
    # relabelled legit: both lose it
    counts, frauds, (state,) = update_terminals(
        [state], i64([0, 0]), i64([1, 0]), i64([T0 + 7 * D, T0 + 7 * D]), i64([42, 44]), i64([0, 0])
    )
    assert (counts.tolist(), frauds.tolist()) == ([[0] * 3, [2] * 3], [[0] * 3, [0] * 3])
    s = decode_terminal_state(state)
    assert s.fraud.tolist() == [0, 0, 0, 0]
    assert s.label_time.tolist() == [T0 + 7 * D, T0 + 7 * D, INT64_MAX, INT64_MAX]


def test_results_come_back_in_the_callers_order() -> None:
    config = TerminalConfig(delay_ms=D, window_ms=(D,))
    counts, frauds, _ = update_terminals(
        [None, None, None],
        np.array([2, 0, 2, 1, 0, 2], dtype=np.uint16),
        np.array([0, 0, 1, 0, 0, 0], dtype=np.uint8),
        i64([T0, T0, T0 + D, T0, T0 + D, T0 + D]),
        i64([1, 2, 1, 3, 4, 5]),
        np.array([0, 0, 1, 0, 0, 0], dtype=np.int32),
        config,
    )
    assert counts[:, 0].tolist() == [0, 0, 0, 0, 1, 1]
    assert frauds[:, 0].tolist() == [0, 0, 0, 0, 0, 1]


# --- (c) eviction --------------------------------------------------------------------------------


def test_eviction_is_bounded() -> None:
    config = TerminalConfig()
    assert config.retain_ms == 38 * D
    every = 6 * HOUR_MS
    state: bytes | None = None
    sizes: list[tuple[int, int]] = []
    for day in range(200):
        ts = T0 + day * D + np.arange(4, dtype=np.int64) * every
        hashes = np.arange(4, dtype=np.int64) + 10 * day
        # each day: 4 transactions, labels for those of a week ago, 2 labels for phantoms
        label_hashes = np.concatenate([hashes - 70, i64([-1 - 2 * day, -2 - 2 * day])])
        label_ts = np.concatenate([ts, i64([T0 + day * D, T0 + day * D + 1])])
        kind = np.concatenate([np.ones(6, np.int64), np.zeros(4, np.int64)])
        _, _, (state,) = update_terminals(
            [state],
            np.zeros(10, np.int64),
            kind,
            np.concatenate([label_ts, ts]),
            np.concatenate([label_hashes, hashes]),
            np.ones(10, np.int64),
            config,
        )
        s = decode_terminal_state(state)
        assert s.max_ts == ts[-1]
        assert s.ts.tolist() == [t for t in s.ts.tolist() if t > s.max_ts - 38 * D]
        assert (s.ts > s.max_ts - 38 * D).all()
        assert (s.pending_label_time > s.max_ts - 38 * D).all()
        sizes.append((s.ts.shape[0], s.pending_hash.shape[0]))
    assert max(n for n, _ in sizes) == 38 * 4  # bounded, while 800 transactions went through
    # pending: the phantoms of the last 38 days, plus the labels of days -7..-1 before day 0
    assert max(p for _, p in sizes) <= 2 * 38 + 4 * 7
    assert sizes[-1] == (38 * 4, 2 * 38)


def test_pending_labels_are_capped_without_transactions() -> None:
    config = TerminalConfig(max_pending=5)
    state: bytes | None = None
    for batch in range(4):
        hashes = i64(range(batch * 3, batch * 3 + 3))
        _, _, (state,) = update_terminals(
            [state], np.zeros(3, np.int64), np.ones(3, np.int64), T0 + hashes, hashes,
            np.ones(3, np.int64), config,
        )  # fmt: skip
    s = decode_terminal_state(state)
    assert s.max_ts == INT64_MIN  # labels do not move max_ts: nothing evicted by time
    assert s.pending_hash.tolist() == [7, 8, 9, 10, 11]  # the 5 latest label times
    assert s.pending_label_time.tolist() == (T0 + s.pending_hash).tolist()


def test_late_transaction_misses_evicted_history() -> None:
    _, _, (state,) = update_terminals(
        [None], i64([0, 0, 0]), i64([0, 1, 0]), i64([T0, T0, T0 + 40 * D]), i64([1, 1, 2]),
        i64([0, 1, 0]),
    )  # fmt: skip
    s = decode_terminal_state(state)
    assert s.ts.tolist() == [T0 + 40 * D]  # tx 1 is older than max_ts - 38 days, label with it
    assert s.pending_hash.shape == (0,)
    # 33 days late: by the definition its windows hold tx 1 (at t - D), but it was evicted
    counts, _, (state,) = update_terminals(
        [state], i64([0]), i64([0]), i64([T0 + 7 * D]), i64([3]), i64([0])
    )
    assert counts.tolist() == [[0, 0, 0]]  # by the definition it would be [[1, 1, 1]]
    assert decode_terminal_state(state).ts.tolist() == [T0 + 7 * D, T0 + 40 * D]
    # a label for it now is pending, and evicted at once when its label time is at or below the
    # threshold max_ts - 38 days = T0 + 2 days
    _, _, (state,) = update_terminals(
        [state], i64([0, 0]), i64([1, 1]), i64([T0 + D, T0 + 2 * D]), i64([1, 4]), i64([1, 1])
    )
    assert decode_terminal_state(state).pending_hash.shape == (0,)
    _, _, (state,) = update_terminals(
        [state], i64([0]), i64([1]), i64([T0 + 2 * D + 1]), i64([4]), i64([1])
    )
    assert decode_terminal_state(state).pending_hash.tolist() == [4]
    _, _, (state,) = update_terminals(
        [state], i64([0]), i64([1]), i64([T0 + 3 * D]), i64([1]), i64([1])
    )
    assert decode_terminal_state(state).pending_hash.tolist() == [4, 1]


def test_idle_state_round_trips_unchanged() -> None:
    state = encode_terminal_state(_good_state())
    counts, frauds, new_states = update_terminals(
        [state, None], i64([1]), i64([0]), i64([T0]), i64([9]), i64([0])
    )
    assert new_states[0] == state
    assert counts.tolist() == frauds.tolist() == [[0, 0, 0]]


# --- (d) state codec -----------------------------------------------------------------------------


def _good_state() -> TerminalState:
    return TerminalState(
        ts=i64([T0, T0 + 1, T0 + 1]),
        tx_hash=i64([5, -3, 5]),
        fraud=np.array([1, 0, 1], np.int8),
        label_time=i64([T0 + 9, INT64_MAX, T0 + 9]),
        pending_hash=i64([7, 2, 8]),
        pending_fraud=np.array([0, 1, 1], np.int8),
        pending_label_time=i64([T0, T0 + 5, T0 + 5]),
        max_ts=T0 + 2,
    )


def _assert_same(a: TerminalState, b: TerminalState) -> None:
    for name in ("ts", "tx_hash", "fraud", "label_time", "pending_hash", "pending_fraud"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).dtype == getattr(b, name).dtype
    np.testing.assert_array_equal(a.pending_label_time, b.pending_label_time)
    assert a.max_ts == b.max_ts


@pytest.mark.parametrize(("n", "p"), [(0, 0), (1, 0), (0, 1), (3, 3), (17, 6)])
def test_state_round_trip(n: int, p: int) -> None:
    rng = np.random.default_rng(n * 10 + p)
    hashes = rng.choice(2**40, n + p, replace=False).astype(np.int64) - 2**39
    pd_lt = np.sort(rng.integers(-(2**61), 2**61, p)).astype(np.int64)
    state = TerminalState(
        ts=np.sort(rng.integers(-(2**61), 2**61, n)).astype(np.int64),
        tx_hash=hashes[:n],
        fraud=rng.integers(0, 2, n).astype(np.int8),
        label_time=rng.choice(i64([INT64_MAX, INT64_MIN, 0, 5]), n),
        pending_hash=hashes[n:],
        pending_fraud=rng.integers(0, 2, p).astype(np.int8),
        pending_label_time=pd_lt,
        max_ts=2**61 if n else INT64_MIN,
    )
    data = encode_terminal_state(state)
    assert len(data) == 24 + 24 * n + 16 * p + (n + p + 7) // 8 * 8
    got = decode_terminal_state(data)
    _assert_same(got, state)
    assert encode_terminal_state(got) == data
    # the kernel reads and writes it the same way (retaining 2**62 ms: nothing is evicted)
    config = TerminalConfig(delay_ms=0, window_ms=(2**62,), allowed_lateness_ms=0)
    _, _, (again,) = update_terminals([data], i64([]), i64([]), i64([]), i64([]), i64([]), config)
    assert again == data


def test_decode_none_is_an_empty_state() -> None:
    _assert_same(decode_terminal_state(None), TerminalState())
    assert decode_terminal_state(None).max_ts == INT64_MIN


def _swap_words(data: bytes, i: int, j: int) -> bytes:
    words = [data[k : k + 8] for k in range(0, len(data), 8)]
    words[i], words[j] = words[j], words[i]
    return b"".join(words)


def _set_byte(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + bytes([value]) + data[at + 1 :]


def _patch(index: int, value: int) -> Callable[[bytes], bytes]:
    """Overwrite word ``index`` after the 3 header words (states encode would refuse)."""

    def corrupt(data: bytes) -> bytes:
        at = 24 + 8 * index
        return data[:at] + value.to_bytes(8, "little", signed=True) + data[at + 8 :]

    return corrupt


# good state words after the 3 header words: ts 0-2, hashes 3-5, label times 6-8,
# pending hashes 9-11, pending label times 12-14, then one word of 6 fraud bytes (word 15)
FLAGS_AT = 24 + 8 * 15
CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "version": (lambda d: b"\x02" + d[1:], "unsupported terminal state version 2"),
    "padding": (lambda d: _set_byte(d, 1, 1), "padding"),
    "padding 2": (lambda d: _set_byte(d, 13, 1), "padding"),
    "short header": (lambda d: d[:17], "truncated"),
    "empty": (lambda d: b"", "truncated"),
    "cut word": (lambda d: d[:-8], "truncated"),
    "cut byte": (lambda d: d[:-1], "truncated"),
    "trailing": (lambda d: d + b"\0" * 8, "trailing bytes"),
    "unsorted": (lambda d: _swap_words(d, 3, 5), "not ascending"),
    "max_ts": (lambda d: d[:16] + T0.to_bytes(8, "little") + d[24:], f"max_ts {T0} is below"),
    "fraud flag": (lambda d: _set_byte(d, FLAGS_AT + 1, 2), "0 or 1"),
    "flag padding": (lambda d: _set_byte(d, FLAGS_AT + 7, 1), "fraud padding"),
    "pending order": (_patch(10, 9), "not strictly sorted"),
    "pending twice": (_patch(11, 7), "same hash"),
    "conflict": (_patch(8, T0 + 8), "conflicting labels"),
    "pending is a tx": (_patch(9, -3), "hash of a stored transaction"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_state_raises(kind: str) -> None:
    corrupt, message = CORRUPTIONS[kind]
    data = corrupt(encode_terminal_state(_good_state()))
    with pytest.raises(ValueError, match=message):
        decode_terminal_state(data)
    # the batch path rejects it too, naming the state
    with pytest.raises(ValueError, match=rf"states\[1\]: .*{message}"):
        update_terminals([None, data], i64([0]), i64([0]), i64([5]), i64([1]), i64([0]))


@pytest.mark.parametrize(
    ("kinds", "named"),
    [
        (("conflict", "fraud flag"), 1),  # contents of all states before label consistency
        (("fraud flag", "conflict"), 0),
        (("conflict", "pending twice"), 0),
        (("conflict", "unsorted", "version"), 2),  # headers of all states before contents
        (("good", "pending is a tx", "good"), 1),
    ],
)
def test_the_first_state_failing_the_earliest_check_is_named(
    kinds: tuple[str, ...], named: int
) -> None:
    good = encode_terminal_state(_good_state())
    states = [good if k == "good" else CORRUPTIONS[k][0](good) for k in kinds]
    message = CORRUPTIONS[kinds[named]][1]
    with pytest.raises(ValueError, match=rf"states\[{named}\]: .*{message}"):
        update_terminals(states, i64([0]), i64([0]), i64([5]), i64([1]), i64([0]))


def test_encode_rejects_bad_states() -> None:
    good = _good_state()
    with pytest.raises(ValueError, match="ascending"):
        encode_terminal_state(replace(good, ts=i64([T0 + 1, T0, T0])))
    with pytest.raises(ValueError, match="differ in length"):
        encode_terminal_state(replace(good, tx_hash=i64([5, -3])))
    with pytest.raises(ValueError, match="dtype int8"):
        encode_terminal_state(replace(good, fraud=i64([1, 0, 1])))
    with pytest.raises(ValueError, match="conflicting labels"):
        encode_terminal_state(replace(good, fraud=np.array([1, 0, 0], np.int8)))
    with pytest.raises(ValueError, match="max_ts must be in"):
        encode_terminal_state(replace(good, max_ts=2**63))


# --- (e) hashing, risk, warmup, validation -------------------------------------------------------


def test_tx_hash_is_stable() -> None:
    digest = hashlib.blake2b(b"tx-0001", digest_size=8).digest()
    assert tx_hash("tx-0001") == int.from_bytes(digest, "little", signed=True)
    assert tx_hash("tx-0001") == -1035449320575409778  # fixed: the same in every process
    assert tx_hash("") == -5426141060434712860
    assert tx_hash("tx-0002") != tx_hash("tx-0001")
    assert INT64_MIN <= tx_hash("é") <= INT64_MAX


def test_risk() -> None:
    r = risk(i64([0, 4, 3]), i64([0, 1, 3]))
    assert r.tolist() == [0.0, 0.25, 1.0]
    rng = np.random.default_rng(0)
    counts = rng.integers(-1, 30, (200, 3))
    frauds = rng.integers(0, 30, (200, 3))
    expected = np.zeros((200, 3))
    np.divide(frauds, counts, out=expected, where=counts > 0)
    assert risk(counts, frauds).tobytes() == expected.tobytes()
    assert risk(counts[:, ::2], frauds[:, ::2]).tobytes() == expected[:, ::2].tobytes()
    assert risk(counts.astype(np.int32), frauds).tobytes() == expected.tobytes()
    with pytest.raises(ValueError, match="differ in shape"):
        risk(i64([1]), i64([1, 2]))


def test_empty_batch_and_warmup() -> None:
    counts, frauds, new_states = update_terminals([], i64([]), i64([]), i64([]), i64([]), i64([]))
    assert counts.shape == frauds.shape == (0, 3)
    assert new_states == []
    warmup()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([None], i64([0]), i64([0]), np.array([1.5]), i64([1]), i64([0])), "ts must have dtype"),
        (([None], i64([0]), i64([0]), i64([1]), [1], i64([0])), "tx_hash must be a numpy"),
        (([None], np.array([0.0]), i64([0]), i64([1]), i64([1]), i64([0])), "group must have"),
        (([None], i64([0]), np.array([True]), i64([1]), i64([1]), i64([0])), "kind must have"),
        (([None], i64([0, 0]), i64([0]), i64([1]), i64([1]), i64([0])), "differ in length"),
        (([None], i64([1]), i64([0]), i64([1]), i64([1]), i64([0])), "group index 1 out of"),
        (([None], i64([0]), i64([2]), i64([1]), i64([1]), i64([0])), "kind must be 0"),
        (([None], i64([0]), i64([1]), i64([1]), i64([1]), i64([-1])), "fraud must be 0 or 1"),
        (([None, "x"], i64([0]), i64([0]), i64([1]), i64([1]), i64([0])), "must be bytes"),
    ],
)
def test_update_terminals_rejects_bad_input(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        update_terminals(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_ms": ()}, "at least one window"),
        ({"window_ms": (0,)}, "window_ms entries must be in"),
        ({"window_ms": (1.5,)}, "window_ms entries must be ints"),
        ({"delay_ms": -1}, "delay_ms must be in"),
        ({"delay_ms": True}, "delay_ms must be an int"),
        ({"allowed_lateness_ms": -1}, "allowed_lateness_ms must be in"),
        ({"max_pending": -1}, "max_pending must be in"),
        ({"delay_ms": 2**62, "window_ms": (1,)}, r"must be <= 2\*\*62"),
    ],
)
def test_terminal_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TerminalConfig(**kwargs)  # type: ignore[arg-type]


def test_terminal_config_defaults() -> None:
    config = TerminalConfig()
    assert config.delay_ms == 7 * D
    assert config.window_ms == (D, 7 * D, 30 * D)
    assert config.allowed_lateness_ms == D
    assert config.retain_ms == 38 * D
