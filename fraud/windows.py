"""Exact per-customer event-time windows: count and sum of amount over the last N days.

For each transaction of a customer at event time ``t`` (int64 ms since the epoch) and each window
of ``w`` ms (by default 1, 7 and 30 days): the count and the sum of amount (int64 minor units) of
that customer's transactions *seen so far* in arrival order, the current one included, whose event
time lies in ``(t - w, t]``. An event exactly ``w`` earlier is out; one at the same ms is in, if
it arrived before (or is the event itself). A later-arriving event never counts for an earlier
arrival. On in-order data this equals pandas' time-based rolling window.

State per customer is kept as bytes (``encode_state`` / ``decode_state``): the events still
needed (times ascending, amounts aligned) and the largest event time ever seen. After a batch a
customer keeps only events with ``ts > max_ts - retain_ms``, ``retain_ms = max(window_ms) +
allowed_lateness_ms`` (31 days by default). An event later than that is still processed, against
the state that is left: its features may miss history that was already evicted.

``update_windows`` does a whole micro-batch in three numba kernels (``fraud.kernels.windows``);
``fraud.reference.windows`` is the slow twin the tests compare it with.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fraud.kernels.windows import (
    HEADER_WORDS,
    INT64_MIN,
    STATE_VERSION,
    pack_states,
    unpack_states,
    update_windows_csr,
)

__all__ = [
    "DAY_MS",
    "DEFAULT_CONFIG",
    "STATE_VERSION",
    "WINDOW_DAYS",
    "WindowConfig",
    "decode_state",
    "encode_state",
    "update_windows",
    "warmup",
]

I64 = npt.NDArray[np.int64]

WINDOW_DAYS: tuple[int, ...] = (1, 7, 30)
DAY_MS = 86_400_000

# Limit on window and lateness lengths, so that their sum and ``t - w`` stay well inside int64.
_MAX_SPAN_MS = 2**62
_INT64_MAX = 2**63 - 1

# version (u8), 3 zero bytes, count (u32), max_ts (i64): two little-endian 8-byte words.
_HEADER = struct.Struct("<B3sIq")
_HEADER_BYTES = _HEADER.size
assert _HEADER_BYTES == 8 * HEADER_WORDS
_LE_I64 = np.dtype("<i8")
_NATIVE_LE = sys.byteorder == "little"


@dataclass(frozen=True)
class WindowConfig:
    """Window lengths (ms) and how late an event may arrive without missing evicted history."""

    window_ms: tuple[int, ...] = tuple(days * DAY_MS for days in WINDOW_DAYS)
    allowed_lateness_ms: int = DAY_MS

    def __post_init__(self) -> None:
        windows = tuple(self.window_ms)
        if not windows:
            raise ValueError("window_ms must name at least one window")
        for width in windows:
            if isinstance(width, bool) or not isinstance(width, int | np.integer):
                raise ValueError(f"window_ms entries must be ints, got {width!r}")
            if not 0 < width <= _MAX_SPAN_MS:
                raise ValueError(f"window_ms entries must be in (0, 2**62] ms, got {width}")
        lateness = self.allowed_lateness_ms
        if isinstance(lateness, bool) or not isinstance(lateness, int | np.integer):
            raise ValueError(f"allowed_lateness_ms must be an int, got {lateness!r}")
        if not 0 <= lateness <= _MAX_SPAN_MS:
            raise ValueError(f"allowed_lateness_ms must be in [0, 2**62] ms, got {lateness}")
        object.__setattr__(self, "window_ms", tuple(int(width) for width in windows))
        object.__setattr__(self, "allowed_lateness_ms", int(lateness))

    @property
    def retain_ms(self) -> int:
        """State keeps events with ``ts > max_ts - retain_ms``: the longest window plus lateness."""
        return max(self.window_ms) + self.allowed_lateness_ms


DEFAULT_CONFIG = WindowConfig()


def _require_int64_1d(name: str, value: Any) -> I64:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy int64 array, got {type(value).__name__}")
    if value.dtype != np.int64:
        raise ValueError(f"{name} must have dtype int64, got {value.dtype}")
    if value.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {value.shape}")
    return value


def _is_ascending(ts: I64) -> bool:
    return ts.shape[0] < 2 or bool(np.all(ts[1:] >= ts[:-1]))


def encode_state(ts: I64, amount: I64, max_ts: int) -> bytes:
    """One customer's window state as bytes.

    ``ts`` ascending int64 event times, ``amount`` the aligned int64 amounts, ``max_ts`` the
    largest event time ever seen (at least ``ts[-1]``; ``INT64_MIN`` if never any). Layout:
    version byte, three zero bytes, event count (uint32 LE), max_ts (int64 LE), the times
    (int64 LE), the amounts (int64 LE).
    """
    ts = _require_int64_1d("ts", ts)
    amount = _require_int64_1d("amount", amount)
    if ts.shape[0] != amount.shape[0]:
        raise ValueError(f"ts and amount differ in length: {ts.shape[0]} != {amount.shape[0]}")
    if isinstance(max_ts, bool) or not isinstance(max_ts, int | np.integer):
        raise ValueError(f"max_ts must be an int, got {max_ts!r}")
    if not INT64_MIN <= max_ts <= _INT64_MAX:
        raise ValueError(f"max_ts {max_ts} does not fit in int64")
    n = ts.shape[0]
    if n >= 2**32:
        raise ValueError(f"a state holds at most 2**32 - 1 events, got {n}")
    if not _is_ascending(ts):
        raise ValueError("state event times must be ascending")
    if n and ts[-1] > max_ts:
        raise ValueError(f"max_ts {max_ts} is below the last event time {int(ts[-1])}")
    header = _HEADER.pack(STATE_VERSION, b"\0\0\0", n, int(max_ts))
    return header + ts.astype(_LE_I64, copy=False).tobytes() + amount.astype(_LE_I64).tobytes()


def decode_state(data: bytes | None) -> tuple[I64, I64, int]:
    """Inverse of ``encode_state``: ``(ts, amount, max_ts)``; the arrays are read-only.

    ``None`` (a customer never seen) is empty arrays and ``max_ts = INT64_MIN``. Malformed bytes
    (wrong version, truncated, trailing bytes, times not ascending...) raise ValueError.
    """
    if data is None:
        return np.empty(0, np.int64), np.empty(0, np.int64), int(INT64_MIN)
    if not isinstance(data, bytes | bytearray):
        raise ValueError(f"state must be bytes or None, got {type(data).__name__}")
    if len(data) < _HEADER_BYTES:
        raise ValueError(
            f"truncated window state: {len(data)} bytes, the header alone is {_HEADER_BYTES}"
        )
    version, pad, n, max_ts = _HEADER.unpack_from(data)
    if version != STATE_VERSION:
        raise ValueError(
            f"unsupported window state version {version} (this code reads {STATE_VERSION})"
        )
    if pad != b"\0\0\0":
        raise ValueError("corrupt window state: header padding bytes are not zero")
    expected = _HEADER_BYTES + 16 * n
    if len(data) < expected:
        raise ValueError(
            f"truncated window state: header says {n} events ({expected} bytes), "
            f"got {len(data)} bytes"
        )
    if len(data) > expected:
        raise ValueError(
            f"corrupt window state: {len(data) - expected} trailing bytes after {n} events"
        )
    ts = np.frombuffer(data, _LE_I64, n, _HEADER_BYTES).astype(np.int64, copy=False)
    amount = np.frombuffer(data, _LE_I64, n, _HEADER_BYTES + 8 * n).astype(np.int64, copy=False)
    if not _is_ascending(ts):
        raise ValueError("corrupt window state: event times are not ascending")
    if n and ts[-1] > max_ts:
        raise ValueError(
            f"corrupt window state: max_ts {max_ts} is below the last event time {int(ts[-1])}"
        )
    return ts, amount, int(max_ts)


def _raise_bad_state(states: Sequence[bytes | None], g: int) -> None:
    try:
        decode_state(states[g])
    except ValueError as exc:
        raise ValueError(f"states[{g}]: {exc}") from None
    raise ValueError(f"states[{g}]: invalid window state")  # pragma: no cover - kernel is stricter


def update_windows(
    states: Sequence[bytes | None],
    group: npt.NDArray[np.integer[Any]],
    ts: I64,
    amount: I64,
    config: WindowConfig = DEFAULT_CONFIG,
) -> tuple[I64, I64, list[bytes]]:
    """Window features for a micro-batch, and the customers' new states.

    ``states[g]`` is customer ``g``'s state bytes (``None`` if never seen); event ``i`` (events in
    arrival order, customers interleaved in any way) belongs to customer ``group[i]`` and has
    event time ``ts[i]`` (int64 ms) and amount ``amount[i]`` (int64 minor units).

    Returns ``(counts, sums, new_states)``: ``counts[i, w]`` / ``sums[i, w]`` for event ``i`` (the
    caller's order) and window ``config.window_ms[w]``; ``new_states[g]`` the new bytes for every
    ``states[g]``, evicted to ``config.retain_ms`` (a customer without events is evicted too).
    """
    ts = _require_int64_1d("ts", ts)
    amount = _require_int64_1d("amount", amount)
    if not isinstance(group, np.ndarray):
        raise ValueError(f"group must be a numpy integer array, got {type(group).__name__}")
    if not np.issubdtype(group.dtype, np.integer):
        raise ValueError(f"group must have an integer dtype, got {group.dtype}")
    if group.ndim != 1:
        raise ValueError(f"group must be 1-D, got shape {group.shape}")
    n_events = ts.shape[0]
    if not group.shape[0] == amount.shape[0] == n_events:
        raise ValueError(
            f"group, ts and amount differ in length: "
            f"{group.shape[0]}, {n_events}, {amount.shape[0]}"
        )
    n_groups = len(states)
    if n_events:
        low, high = int(group.min()), int(group.max())
        if low < 0 or high >= n_groups:
            bad = low if low < 0 else high
            raise ValueError(f"group index {bad} out of range for {n_groups} states")
    group64 = group.astype(np.int64, copy=False)

    # decode every state at once: states are whole 8-byte words, concatenated
    payload: list[bytes | bytearray] = []
    word_len = [0] * n_groups
    for g, data in enumerate(states):
        if data is None:
            continue
        size = len(data) if isinstance(data, bytes | bytearray) else -1
        if size < _HEADER_BYTES or size & 7:
            _raise_bad_state(states, g)
        word_len[g] = size >> 3
        payload.append(data)
    words = np.frombuffer(b"".join(payload), _LE_I64)
    if not _NATIVE_LE:  # pragma: no cover - numba targets are little-endian
        words = words.astype(np.int64)
    word_offsets = np.zeros(n_groups + 1, np.int64)
    np.cumsum(word_len, out=word_offsets[1:])
    state_ts, state_amount, state_offsets, state_max_ts, bad_group = unpack_states(
        words, word_offsets
    )
    if bad_group >= 0:
        _raise_bad_state(states, bad_group)

    # events as CSR: grouped, arrival order kept inside a group (stable sort)
    # (numpy's stable sort is a radix sort for 16-bit keys: much faster than on int64)
    key = group64.astype(np.uint16) if n_groups <= 1 << 16 else group64
    order = np.argsort(key, kind="stable").astype(np.int64, copy=False)
    event_offsets = np.zeros(n_groups + 1, np.int64)
    np.cumsum(np.bincount(group64, minlength=n_groups), out=event_offsets[1:])
    windows = np.array(config.window_ms, np.int64)
    counts = np.empty((n_events, windows.shape[0]), np.int64)
    sums = np.empty((n_events, windows.shape[0]), np.int64)
    new_ts = np.empty(state_ts.shape[0] + n_events, np.int64)
    new_amount = np.empty(state_ts.shape[0] + n_events, np.int64)
    new_offsets = np.empty(n_groups + 1, np.int64)
    new_max_ts = np.empty(n_groups, np.int64)
    bad_group = update_windows_csr(
        state_ts,
        state_amount,
        state_offsets,
        state_max_ts,
        ts[order],
        amount[order],
        event_offsets,
        order,
        windows,
        config.retain_ms,
        counts,
        sums,
        new_ts,
        new_amount,
        new_offsets,
        new_max_ts,
    )
    if bad_group >= 0:  # pragma: no cover - unpack_states already rejects such states
        _raise_bad_state(states, bad_group)

    out_words, out_offsets = pack_states(new_ts, new_amount, new_offsets, new_max_ts)
    raw = out_words.astype(_LE_I64, copy=False).tobytes()
    bounds = (out_offsets * 8).tolist()
    new_states = [raw[bounds[g] : bounds[g + 1]] for g in range(n_groups)]
    return counts, sums, new_states


def warmup() -> None:
    """Compile (or load from numba's cache) every kernel, using the same argument types as
    ``update_windows`` does, so the first real batch does not pay for it."""
    state = encode_state(np.array([0], np.int64), np.array([1], np.int64), 0)
    _, _, new_states = update_windows(
        [None, state],
        np.array([1, 0, 1], np.int64),
        np.array([1, 2, 0], np.int64),
        np.array([5, 6, 7], np.int64),
    )
    decode_state(new_states[1])
