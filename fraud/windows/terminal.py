"""Exact per-terminal risk windows from delayed fraud labels.

The terminal features of the open handbook "Reproducible ML for Credit Card Fraud Detection".
Events of a terminal are processed in the order given (the caller's processing order; the worker
applies all labels of a micro-batch first). Each event is either

* a transaction (``kind`` 0): event time ``ts`` (int64 ms), ``tx_hash`` (see ``tx_hash()``), or
* a fraud label (``kind`` 1): ``ts`` is the label time (when the label became known), ``tx_hash``
  the labelled transaction's hash, ``fraud`` 0 or 1.

For a transaction at event time ``t``, with label delay ``D`` (``delay_ms``, 7 days by default)
and a window of ``N`` ms (``window_ms``, 1, 7 and 30 days by default):

* ``count[N]`` = the terminal's transactions processed before it with event time in
  ``(t - D - N, t - D]`` (exactly ``t - D`` is in, exactly ``t - D - N`` is out; the current
  transaction never counts itself);
* ``frauds[N]`` = those of them that are known frauds at ``t``: the last label applied so far (in
  processing order, a later label replaces an earlier one) for their hash says fraud 1 and has
  ``label_time <= t``;
* ``risk[N]`` = ``frauds / count``, 0 when the count is 0 (``risk()``).

Labels are per hash within a terminal: a label for a transaction not in the state yet is kept as
*pending* and attached when the transaction arrives; a label applies to every stored transaction
of the terminal with that hash (a redelivered duplicate is counted again, with the same label).

State per terminal is versioned bytes (``encode_terminal_state`` / ``decode_terminal_state``):
its transactions (event times ascending, hashes, fraud flags, label times, ``INT64_MAX`` and fraud
0 when unlabelled), its pending labels (sorted by ``(label_time, hash)``) and ``max_ts``, the
largest transaction event time ever seen (label times do not move it). After a batch, with
``threshold = max_ts - retain_ms`` and ``retain_ms = delay_ms + max(window_ms) +
allowed_lateness_ms`` (38 days by default):

* transactions with ``ts <= threshold`` are evicted; the label of a hash goes with its last
  transaction. A transaction later than ``allowed_lateness_ms`` is still processed, against what
  is left, so it may miss evicted history;
* pending labels with ``label_time <= threshold`` are evicted: a label is never earlier than its
  transaction, so that transaction would be older than the threshold and evicted on arrival.
  This is exact as long as labels are not earlier than their transactions;
* of the remaining pending labels only the ``max_pending`` (default 10,000) largest by
  ``(label_time, hash)`` are kept: a terminal that gets labels but no more transactions, so whose
  ``max_ts`` stops, cannot grow its state forever.

``update_terminals`` does a whole micro-batch in numba kernels (``fraud.kernels.terminal``);
``fraud.reference.terminal`` is the slow twin the tests compare it with.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fraud.contracts.units import DAY_MS, LABEL_DELAY_DAYS, WINDOW_DAYS
from fraud.kernels.features import risk_into
from fraud.kernels.terminal import (
    HEADER_WORDS,
    INT64_MAX,
    INT64_MIN,
    KIND_LABEL,
    KIND_TX,
    STATE_VERSION,
    update_terminal_words,
)
from fraud.windows import checks
from fraud.windows.checks import MAX_SPAN_MS
from fraud.windows.codec import LE_I64 as _LE_I64
from fraud.windows.codec import gather, plain, split_states

__all__ = [
    "DEFAULT_CONFIG",
    "INT64_MAX",
    "KIND_LABEL",
    "KIND_TX",
    "STATE_VERSION",
    "TerminalConfig",
    "TerminalState",
    "decode_terminal_state",
    "encode_terminal_state",
    "risk",
    "tx_hash",
    "update_terminals",
    "warmup",
]

I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
F64 = npt.NDArray[np.float64]

# version (u8), 3 zero bytes, tx count (u32), pending count (u32), 4 zero bytes, max_ts (i64)
_HEADER = struct.Struct("<B3sII4sq")
_HEADER_BYTES = _HEADER.size
assert _HEADER_BYTES == 8 * HEADER_WORDS


@dataclass(frozen=True)
class TerminalConfig:
    """Label delay, window lengths (ms), lateness allowed without missing evicted history, and
    the most pending labels a terminal keeps."""

    delay_ms: int = LABEL_DELAY_DAYS * DAY_MS
    window_ms: tuple[int, ...] = tuple(days * DAY_MS for days in WINDOW_DAYS)
    allowed_lateness_ms: int = DAY_MS
    max_pending: int = 10_000

    def __post_init__(self) -> None:
        windows = checks.check_windows(self.window_ms)
        delay = checks.require_int("delay_ms", self.delay_ms, 0, MAX_SPAN_MS)
        lateness = checks.require_int(
            "allowed_lateness_ms", self.allowed_lateness_ms, 0, MAX_SPAN_MS
        )
        max_pending = checks.require_int("max_pending", self.max_pending, 0, 2**32 - 1)
        if delay + max(windows) + lateness > MAX_SPAN_MS:
            raise ValueError("delay_ms + max(window_ms) + allowed_lateness_ms must be <= 2**62 ms")
        object.__setattr__(self, "window_ms", windows)
        object.__setattr__(self, "delay_ms", delay)
        object.__setattr__(self, "allowed_lateness_ms", lateness)
        object.__setattr__(self, "max_pending", max_pending)

    @property
    def retain_ms(self) -> int:
        """State keeps transactions with ``ts > max_ts - retain_ms``: delay + longest window +
        lateness."""
        return self.delay_ms + max(self.window_ms) + self.allowed_lateness_ms


DEFAULT_CONFIG = TerminalConfig()


def _empty64() -> I64:
    return np.empty(0, np.int64)


def _empty8() -> I8:
    return np.empty(0, np.int8)


@dataclass(frozen=True, eq=False)  # arrays: no elementwise ==
class TerminalState:
    """One terminal's state (see the module docstring); ``TerminalState()`` is a new terminal.

    ``ts`` (ascending), ``tx_hash``, ``fraud`` (int8, 0/1), ``label_time`` (``INT64_MAX`` when
    unlabelled) are aligned, one entry per stored transaction; ``pending_hash``,
    ``pending_fraud``, ``pending_label_time`` are the pending labels, sorted by
    ``(label_time, hash)``; ``max_ts`` the largest transaction event time ever seen
    (``INT64_MIN`` if none).
    """

    ts: I64 = field(default_factory=_empty64)
    tx_hash: I64 = field(default_factory=_empty64)
    fraud: I8 = field(default_factory=_empty8)
    label_time: I64 = field(default_factory=_empty64)
    pending_hash: I64 = field(default_factory=_empty64)
    pending_fraud: I8 = field(default_factory=_empty8)
    pending_label_time: I64 = field(default_factory=_empty64)
    max_ts: int = int(INT64_MIN)


def _check_state(state: TerminalState, what: str) -> None:
    """The invariants of a state, as ValueError messages prefixed with ``what``."""
    n = state.ts.shape[0]
    p = state.pending_hash.shape[0]
    if n and np.any(state.ts[1:] < state.ts[:-1]):
        raise ValueError(f"{what}transaction times are not ascending")
    if n and state.ts[-1] > state.max_ts:
        raise ValueError(
            f"{what}max_ts {state.max_ts} is below the last transaction time {int(state.ts[-1])}"
        )
    if np.any((state.fraud != 0) & (state.fraud != 1)) or np.any(
        (state.pending_fraud != 0) & (state.pending_fraud != 1)
    ):
        raise ValueError(f"{what}fraud flags must be 0 or 1")
    if p > 1:
        lt, h = state.pending_label_time, state.pending_hash
        ordered = (lt[1:] > lt[:-1]) | ((lt[1:] == lt[:-1]) & (h[1:] > h[:-1]))
        if not np.all(ordered):
            raise ValueError(f"{what}pending labels are not strictly sorted by (label_time, hash)")
    if n > 1:
        order = np.argsort(state.tx_hash, kind="stable")
        h = state.tx_hash[order]
        same = h[1:] == h[:-1]
        if np.any(same) and (
            np.any(state.fraud[order][1:][same] != state.fraud[order][:-1][same])
            or np.any(state.label_time[order][1:][same] != state.label_time[order][:-1][same])
        ):
            raise ValueError(f"{what}transactions with the same hash have conflicting labels")
    if p > 1 and np.unique(state.pending_hash).shape[0] != p:
        raise ValueError(f"{what}two pending labels have the same hash")
    if n and p and np.any(np.isin(state.pending_hash, state.tx_hash)):
        raise ValueError(f"{what}a pending label has the hash of a stored transaction")


def encode_terminal_state(state: TerminalState) -> bytes:
    """One terminal's state as bytes (layout in ``fraud.kernels.terminal``).

    Little-endian 8-byte words: version byte, three zero bytes, transaction count (uint32);
    pending count (uint32), four zero bytes; max_ts; the times, hashes and label times of the
    transactions; the hashes and label times of the pending labels; the fraud bytes of the
    transactions then of the pending labels, zero-padded to a whole word. Invalid states
    (unsorted, conflicting labels, wrong dtypes or lengths...) raise ValueError.
    """
    ts = checks.require_1d("ts", state.ts, np.int64)
    hashes = checks.require_1d("tx_hash", state.tx_hash, np.int64)
    fraud = checks.require_1d("fraud", state.fraud, np.int8)
    label_time = checks.require_1d("label_time", state.label_time, np.int64)
    pd_hash = checks.require_1d("pending_hash", state.pending_hash, np.int64)
    pd_fraud = checks.require_1d("pending_fraud", state.pending_fraud, np.int8)
    pd_lt = checks.require_1d("pending_label_time", state.pending_label_time, np.int64)
    n = ts.shape[0]
    p = pd_hash.shape[0]
    if not hashes.shape[0] == fraud.shape[0] == label_time.shape[0] == n:
        raise ValueError("ts, tx_hash, fraud and label_time differ in length")
    if not pd_fraud.shape[0] == pd_lt.shape[0] == p:
        raise ValueError("pending_hash, pending_fraud and pending_label_time differ in length")
    if n >= 2**32 or p >= 2**32:
        raise ValueError("a state holds at most 2**32 - 1 transactions and pending labels")
    max_ts = checks.require_int("max_ts", state.max_ts, int(INT64_MIN), int(INT64_MAX))
    _check_state(state, "")
    header = _HEADER.pack(STATE_VERSION, b"\0\0\0", n, p, b"\0\0\0\0", max_ts)
    flags = np.concatenate([fraud, pd_fraud]).tobytes()
    return b"".join(
        [
            header,
            *(a.astype(_LE_I64, copy=False).tobytes() for a in (ts, hashes, label_time, pd_hash)),
            pd_lt.astype(_LE_I64, copy=False).tobytes(),
            flags,
            b"\0" * (-len(flags) % 8),
        ]
    )


def decode_terminal_state(data: bytes | None) -> TerminalState:
    """Inverse of ``encode_terminal_state``; the arrays are read-only.

    ``None`` (a terminal never seen) is the empty state. Malformed bytes (wrong version, truncated,
    trailing bytes, non-zero padding, times not ascending, fraud flags not 0/1, conflicting
    labels...) raise ValueError.
    """
    if data is None:
        return TerminalState()
    if not isinstance(data, bytes | bytearray):
        raise ValueError(f"state must be bytes or None, got {type(data).__name__}")
    if len(data) < _HEADER_BYTES:
        raise ValueError(
            f"truncated terminal state: {len(data)} bytes, the header alone is {_HEADER_BYTES}"
        )
    version, pad, n, p, pad2, max_ts = _HEADER.unpack_from(data)
    if version != STATE_VERSION:
        raise ValueError(
            f"unsupported terminal state version {version} (this code reads {STATE_VERSION})"
        )
    if pad != b"\0\0\0" or pad2 != b"\0\0\0\0":
        raise ValueError("corrupt terminal state: header padding bytes are not zero")
    flag_bytes = (n + p + 7) // 8 * 8
    expected = _HEADER_BYTES + 8 * (3 * n + 2 * p) + flag_bytes
    if len(data) < expected:
        raise ValueError(
            f"truncated terminal state: header says {n} transactions and {p} pending labels "
            f"({expected} bytes), got {len(data)} bytes"
        )
    if len(data) > expected:
        raise ValueError(f"corrupt terminal state: {len(data) - expected} trailing bytes")

    def words(index: int, count: int) -> I64:
        return np.frombuffer(data, _LE_I64, count, _HEADER_BYTES + 8 * index).astype(
            np.int64, copy=False
        )

    flags_at = _HEADER_BYTES + 8 * (3 * n + 2 * p)
    flags = np.frombuffer(data, np.int8, n + p, flags_at)
    if any(data[flags_at + n + p : expected]):
        raise ValueError("corrupt terminal state: fraud padding bytes are not zero")
    state = TerminalState(
        ts=words(0, n),
        tx_hash=words(n, n),
        fraud=flags[:n],
        label_time=words(2 * n, n),
        pending_hash=words(3 * n, p),
        pending_fraud=flags[n:],
        pending_label_time=words(3 * n + p, p),
        max_ts=int(max_ts),
    )
    _check_state(state, "corrupt terminal state: ")
    return state


def _raise_bad_state(states: Sequence[bytes | None], g: int) -> None:
    checks.raise_bad_state(states, g, decode_terminal_state, "terminal")


def update_terminals(
    states: Sequence[bytes | None],
    group: npt.NDArray[np.integer[Any]],
    kind: npt.NDArray[np.integer[Any]],
    ts: I64,
    tx_hash: I64,
    fraud: npt.NDArray[np.integer[Any]],
    config: TerminalConfig = DEFAULT_CONFIG,
) -> tuple[I64, I64, list[bytes]]:
    """Terminal risk windows for a micro-batch of transactions and labels, and the new states.

    ``states[g]`` is terminal ``g``'s state bytes (``None`` if never seen); event ``i`` (in
    processing order, terminals interleaved in any way) belongs to terminal ``group[i]``, is a
    transaction (``kind[i] == 0``, ``ts[i]`` its event time) or a label (``kind[i] == 1``,
    ``ts[i]`` the label time, ``fraud[i]`` 0/1), for the transaction hashed ``tx_hash[i]``.
    ``fraud`` must be 0/1 everywhere; transactions ignore it.

    Returns ``(counts, frauds, new_states)``: one row per event, in the caller's order (label
    events get rows of zeros), column ``w`` for ``config.window_ms[w]``; ``new_states[g]`` the new
    bytes for every ``states[g]``, evicted (a terminal without events is evicted too).
    """
    ts = checks.require_1d("ts", ts, np.int64)
    tx_hash = checks.require_1d("tx_hash", tx_hash, np.int64)
    group = checks.require_int_array("group", group)
    kind = checks.require_int_array("kind", kind)
    fraud = checks.require_int_array("fraud", fraud)
    n_events = ts.shape[0]
    lengths = [a.shape[0] for a in (group, kind, ts, tx_hash, fraud)]
    if any(length != n_events for length in lengths):
        raise ValueError(f"group, kind, ts, tx_hash and fraud differ in length: {lengths}")
    n_groups = len(states)
    checks.check_groups(group, n_groups)
    if n_events:
        if int(kind.min()) < 0 or int(kind.max()) > 1:
            raise ValueError("kind must be 0 (transaction) or 1 (label)")
        if int(fraud.min()) < 0 or int(fraud.max()) > 1:
            raise ValueError("fraud must be 0 or 1")
    words, word_offsets, order, event_offsets = gather(
        states, group, _HEADER_BYTES, lambda g: _raise_bad_state(states, g)
    )
    n_windows = len(config.window_ms)
    counts = np.empty((n_events, n_windows), np.int64)
    frauds = np.empty((n_events, n_windows), np.int64)
    out_words, out_offsets, bad = update_terminal_words(
        words,
        word_offsets,
        plain(kind.astype(np.int8, copy=False)),
        plain(ts),
        plain(tx_hash),
        plain(fraud.astype(np.int8, copy=False)),
        order,
        event_offsets,
        np.array(config.window_ms, np.int64),
        config.delay_ms,
        config.retain_ms,
        config.max_pending,
        counts,
        frauds,
    )
    if bad >= 0:
        _raise_bad_state(states, bad)

    new_states = split_states(out_words, out_offsets)
    return counts, frauds, new_states


def risk(counts: I64, frauds: I64) -> F64:
    """``frauds / counts`` elementwise as float64, 0 where the count is 0."""
    counts = np.asarray(counts)
    frauds = np.asarray(frauds)
    if counts.shape != frauds.shape:
        raise ValueError(f"counts and frauds differ in shape: {counts.shape} != {frauds.shape}")
    if counts.dtype == frauds.dtype == np.int64:
        flat = np.empty(counts.size, np.float64)
        risk_into(plain(counts).reshape(-1), plain(frauds).reshape(-1), flat)
        return flat.reshape(counts.shape)
    out = np.zeros(counts.shape, np.float64)
    np.divide(frauds, counts, out=out, where=counts > 0)
    return out


def tx_hash(transaction_id: str) -> int:
    """Stable signed int64 for a transaction id (``fraud.windows.checks.stable_hash``)."""
    return checks.stable_hash(transaction_id)


def warmup() -> None:
    """Compile (or load from numba's cache) every kernel, using the same argument types as
    ``update_terminals`` and ``risk`` do, so the first real batch does not pay for it."""
    state = encode_terminal_state(
        TerminalState(
            ts=np.array([0], np.int64),
            tx_hash=np.array([1], np.int64),
            fraud=np.array([1], np.int8),
            label_time=np.array([5], np.int64),
            pending_hash=np.array([2], np.int64),
            pending_fraud=np.array([0], np.int8),
            pending_label_time=np.array([3], np.int64),
            max_ts=0,
        )
    )
    _, _, new_states = update_terminals(
        [None, state],
        np.array([1, 0, 1, 1], np.int64),
        np.array([1, 0, 0, 1], np.int64),
        np.array([9, 2, DAY_MS, 2], np.int64),
        np.array([3, 4, 3, 1], np.int64),
        np.array([1, 0, 0, 0], np.int64),
    )
    decode_terminal_state(new_states[1])
    risk(np.ones((1, 1), np.int64), np.zeros((1, 1), np.int64))
