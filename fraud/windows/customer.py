"""Per-customer state v2: the exact event-time windows plus the customer's "behaviour" features.

For each transaction of a customer at event time ``t`` (int64 ms since the epoch), with "seen so
far" meaning that customer's earlier-arrived transactions plus the current one:

* for each window of ``w`` ms (by default 1, 7 and 30 days): count and sum of amount (int64 minor
  units) of the transactions seen so far with event time in ``(t - w, t]``: one exactly ``w``
  earlier is out, one at the same ms is in if it arrived before, and a later-arriving
  transaction never counts for an earlier arrival;
* ``seconds_since_prev_tx``: ``(t - t_prev) / 1000``, ``t_prev`` the largest event time among
  the earlier-arrived transactions with event time ``<= t``. An earlier arrival at the same ms
  gives 0.0; NaN when there is none in the retained state (a first transaction, or one that
  arrives so late that everything before it was evicted, or that is earlier than all of them);
* ``first_use_of_terminal``: 1.0 when no earlier-arrived transaction at the same terminal
  (``terminal_hash``) has event time in ``(t - W, t]``, ``W = max(window_ms)`` (the longest
  window, 30 days by default; a use exactly ``W`` earlier no longer counts), else 0.0. A later
  event time that arrived earlier does not count;
* ``geo_velocity_kmh``: haversine distance (Earth radius 6371.0088 km) between this
  transaction's location and that of the *previous* one (the transaction giving ``t_prev``; among
  several at ``t_prev``, the last to arrive), divided by the time between them in hours. NaN
  when there is no previous transaction, when either location is unknown (NaN latitude or
  longitude), or when the time between them is 0 (the same ms: no finite speed); 0.0 for the
  same place at a later time.

Outputs come in the caller's order: ``counts`` / ``sums`` ``(n, W)`` int64 and ``extras`` ``(n,
3)`` float64, columns ``EXTRA_FEATURES``.

State per customer is bytes (``encode_customer_state`` / ``decode_customer_state``, version 2):
the retained transactions sorted by event time (ties in arrival order) with their amount,
terminal hash, latitude and longitude, and the largest event time ever seen. After a batch a
customer keeps only transactions with ``ts > max_ts - retain_ms``, ``retain_ms = max(window_ms) +
allowed_lateness_ms`` (31 days by default). Version 1 states (the former windows-only format)
are not read: they lack terminals and locations.

``update_customers`` does a whole micro-batch in three numba kernels (``fraud.kernels.customer``);
``fraud.reference.customer`` is the slow twin the tests compare it with.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fraud.contracts.units import BEHAVIOUR_FEATURES, DAY_MS, WINDOW_DAYS
from fraud.contracts.units import INT64_MAX as _INT64_MAX
from fraud.kernels.customer import (
    COLUMNS,
    EARTH_RADIUS_KM,
    HEADER_WORDS,
    INT64_MIN,
    N_EXTRAS,
    STATE_VERSION,
    update_customer_words,
)
from fraud.windows.checks import (
    MAX_SPAN_MS,
    check_groups,
    check_windows,
    raise_bad_state,
    require_1d,
    require_int,
    require_int_array,
    stable_hash,
)
from fraud.windows.codec import LE_I64 as _LE_I64
from fraud.windows.codec import gather, plain, split_states

__all__ = [
    "DEFAULT_CONFIG",
    "EARTH_RADIUS_KM",
    "EXTRA_FEATURES",
    "STATE_VERSION",
    "CustomerConfig",
    "CustomerState",
    "decode_customer_state",
    "encode_customer_state",
    "terminal_hash",
    "update_customers",
    "warmup",
]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
CustomerState = tuple[I64, I64, I64, F64, F64, int]
"""``(ts, amount, terminal, lat, lon, max_ts)`` as ``decode_customer_state`` returns it."""

EXTRA_FEATURES: tuple[str, ...] = BEHAVIOUR_FEATURES
"""The names of ``update_customers``' ``extras`` columns."""
assert len(EXTRA_FEATURES) == N_EXTRAS


# version (u8), 3 zero bytes, count (u32), max_ts (i64): two little-endian 8-byte words.
_HEADER = struct.Struct("<B3sIq")
_HEADER_BYTES = _HEADER.size
assert _HEADER_BYTES == 8 * HEADER_WORDS
_EVENT_BYTES = 8 * COLUMNS
_LE_F64 = np.dtype("<f8")


@dataclass(frozen=True)
class CustomerConfig:
    """Window lengths (ms) and how late an event may arrive without missing evicted history.

    The longest window is also the look-back of ``first_use_of_terminal``.
    """

    window_ms: tuple[int, ...] = tuple(days * DAY_MS for days in WINDOW_DAYS)
    allowed_lateness_ms: int = DAY_MS

    def __post_init__(self) -> None:
        windows = check_windows(self.window_ms)
        lateness = require_int("allowed_lateness_ms", self.allowed_lateness_ms, 0, MAX_SPAN_MS)
        object.__setattr__(self, "window_ms", windows)
        object.__setattr__(self, "allowed_lateness_ms", lateness)

    @property
    def terminal_ms(self) -> int:
        """Look-back of ``first_use_of_terminal``: the longest window."""
        return max(self.window_ms)

    @property
    def retain_ms(self) -> int:
        """State keeps events with ``ts > max_ts - retain_ms``: the longest window plus lateness."""
        return max(self.window_ms) + self.allowed_lateness_ms


DEFAULT_CONFIG = CustomerConfig()


def terminal_hash(terminal_id: str) -> int:
    """Stable signed int64 for a terminal id (``fraud.windows.checks.stable_hash``)."""
    if not isinstance(terminal_id, str):
        raise ValueError(f"terminal_id must be a str, got {type(terminal_id).__name__}")
    return stable_hash(terminal_id)


def _require_events(
    ts: Any, amount: Any, terminal: Any, lat: Any, lon: Any
) -> tuple[I64, I64, I64, F64, F64]:
    """The event columns, each checked to be 1-D of its dtype (int64, or float64 for degrees)."""
    return (
        require_1d("ts", ts, np.int64),
        require_1d("amount", amount, np.int64),
        require_1d("terminal", terminal, np.int64),
        require_1d("lat", lat, np.float64),
        require_1d("lon", lon, np.float64),
    )


def _check_coordinates(where: str, lat: F64, lon: F64) -> None:
    """Latitudes in [-90, 90], longitudes in [-180, 180], or NaN (unknown)."""
    for name, values, limit in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
        bad = ~(np.isnan(values) | (np.abs(values) <= limit))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{where}{name} {float(values[i])!r} at index {i} is not in [-{limit:g}, "
                f"{limit:g}] nor NaN"
            )


def _is_ascending(ts: I64) -> bool:
    return ts.shape[0] < 2 or bool(np.all(ts[1:] >= ts[:-1]))


def encode_customer_state(
    ts: I64, amount: I64, terminal: I64, lat: F64, lon: F64, max_ts: int
) -> bytes:
    """One customer's state as bytes (version 2).

    ``ts`` ascending int64 event times (ties in arrival order), ``amount`` and ``terminal`` the
    aligned int64 amounts and terminal hashes, ``lat`` / ``lon`` the aligned float64 degrees (NaN
    when unknown), ``max_ts`` the largest event time ever seen (at least ``ts[-1]``; ``INT64_MIN``
    if never any). Layout, all little-endian: version byte (2), three zero bytes, event count
    (uint32), max_ts (int64), then the times, the amounts, the terminals (int64 each), the
    latitudes, the longitudes (float64 each): ``16 + 40 * count`` bytes.
    """
    ts, amount, terminal, lat, lon = _require_events(ts, amount, terminal, lat, lon)
    n = ts.shape[0]
    if not amount.shape[0] == terminal.shape[0] == lat.shape[0] == lon.shape[0] == n:
        raise ValueError(
            f"ts, amount, terminal, lat and lon differ in length: {n}, {amount.shape[0]}, "
            f"{terminal.shape[0]}, {lat.shape[0]}, {lon.shape[0]}"
        )
    if isinstance(max_ts, bool) or not isinstance(max_ts, int | np.integer):
        raise ValueError(f"max_ts must be an int, got {max_ts!r}")
    if not INT64_MIN <= max_ts <= _INT64_MAX:
        raise ValueError(f"max_ts {max_ts} does not fit in int64")
    if n >= 2**32:
        raise ValueError(f"a state holds at most 2**32 - 1 events, got {n}")
    if not _is_ascending(ts):
        raise ValueError("state event times must be ascending")
    if n and ts[-1] > max_ts:
        raise ValueError(f"max_ts {max_ts} is below the last event time {int(ts[-1])}")
    _check_coordinates("", lat, lon)
    header = _HEADER.pack(STATE_VERSION, b"\0\0\0", n, int(max_ts))
    return b"".join(
        [
            header,
            ts.astype(_LE_I64, copy=False).tobytes(),
            amount.astype(_LE_I64, copy=False).tobytes(),
            terminal.astype(_LE_I64, copy=False).tobytes(),
            lat.astype(_LE_F64, copy=False).tobytes(),
            lon.astype(_LE_F64, copy=False).tobytes(),
        ]
    )


def decode_customer_state(data: bytes | None) -> CustomerState:
    """Inverse of ``encode_customer_state``: ``(ts, amount, terminal, lat, lon, max_ts)``.

    The arrays are read-only. ``None`` (a customer never seen) is empty arrays and ``max_ts =
    INT64_MIN``. Malformed bytes (wrong version, truncated, trailing bytes, times not ascending,
    coordinates out of range...) raise ValueError.
    """
    if data is None:
        empty_i = np.empty(0, np.int64)
        empty_f = np.empty(0, np.float64)
        return empty_i, empty_i.copy(), empty_i.copy(), empty_f, empty_f.copy(), int(INT64_MIN)
    if not isinstance(data, bytes | bytearray):
        raise ValueError(f"state must be bytes or None, got {type(data).__name__}")
    if len(data) < _HEADER_BYTES:
        raise ValueError(
            f"truncated customer state: {len(data)} bytes, the header alone is {_HEADER_BYTES}"
        )
    version, pad, n, max_ts = _HEADER.unpack_from(data)
    if version != STATE_VERSION:
        hint = " (windows only, without terminals and locations)" if version == 1 else ""
        raise ValueError(
            f"unsupported customer state version {version}{hint} (this code reads {STATE_VERSION})"
        )
    if pad != b"\0\0\0":
        raise ValueError("corrupt customer state: header padding bytes are not zero")
    expected = _HEADER_BYTES + _EVENT_BYTES * n
    if len(data) < expected:
        raise ValueError(
            f"truncated customer state: header says {n} events ({expected} bytes), "
            f"got {len(data)} bytes"
        )
    if len(data) > expected:
        raise ValueError(
            f"corrupt customer state: {len(data) - expected} trailing bytes after {n} events"
        )

    def column(index: int, dtype: np.dtype[Any]) -> Any:
        values = np.frombuffer(data, dtype, n, _HEADER_BYTES + 8 * n * index)
        return values.astype(dtype.newbyteorder("="), copy=False)

    ts: I64 = column(0, _LE_I64)
    amount: I64 = column(1, _LE_I64)
    terminal: I64 = column(2, _LE_I64)
    lat: F64 = column(3, _LE_F64)
    lon: F64 = column(4, _LE_F64)
    if not _is_ascending(ts):
        raise ValueError("corrupt customer state: event times are not ascending")
    if n and ts[-1] > max_ts:
        raise ValueError(
            f"corrupt customer state: max_ts {max_ts} is below the last event time {int(ts[-1])}"
        )
    _check_coordinates("corrupt customer state: ", lat, lon)
    return ts, amount, terminal, lat, lon, int(max_ts)


def _raise_bad_state(states: Sequence[bytes | None], g: int) -> None:
    raise_bad_state(states, g, decode_customer_state, "customer")


def update_customers(
    states: Sequence[bytes | None],
    group: npt.NDArray[np.integer[Any]],
    ts: I64,
    amount: I64,
    terminal: I64,
    lat: F64,
    lon: F64,
    config: CustomerConfig = DEFAULT_CONFIG,
) -> tuple[I64, I64, F64, list[bytes]]:
    """Window and behaviour features for a micro-batch, and the customers' new states.

    ``states[g]`` is customer ``g``'s state bytes (``None`` if never seen); event ``i`` (events in
    arrival order, customers interleaved in any way) belongs to customer ``group[i]`` and has
    event time ``ts[i]`` (int64 ms), amount ``amount[i]`` (int64 minor units), terminal hash
    ``terminal[i]`` (int64, see ``terminal_hash``) and location ``lat[i]`` / ``lon[i]`` (float64
    degrees, NaN when unknown; anything else out of range is rejected).

    Returns ``(counts, sums, extras, new_states)``: ``counts[i, w]`` / ``sums[i, w]`` for event
    ``i`` (the caller's order) and window ``config.window_ms[w]``; ``extras[i]`` the
    ``EXTRA_FEATURES``; ``new_states[g]`` the new bytes for every ``states[g]``, evicted to
    ``config.retain_ms`` (a customer without events is evicted too).
    """
    ts, amount, terminal, lat, lon = _require_events(ts, amount, terminal, lat, lon)
    group = require_int_array("group", group)
    n_events = ts.shape[0]
    lengths = (group.shape[0], n_events, amount.shape[0], terminal.shape[0])
    if not all(size == n_events for size in (*lengths, lat.shape[0], lon.shape[0])):
        raise ValueError(
            "group, ts, amount, terminal, lat and lon differ in length: "
            + ", ".join(str(size) for size in (*lengths, lat.shape[0], lon.shape[0]))
        )
    _check_coordinates("", lat, lon)
    n_groups = len(states)
    check_groups(group, n_groups)
    words, word_offsets, order, event_offsets = gather(
        states, group, _HEADER_BYTES, lambda g: _raise_bad_state(states, g)
    )
    n_windows = len(config.window_ms)
    counts = np.empty((n_events, n_windows), np.int64)
    sums = np.empty((n_events, n_windows), np.int64)
    extras = np.empty((n_events, N_EXTRAS), np.float64)
    out_words, out_offsets, bad_group = update_customer_words(
        words,
        words.view(np.float64),
        word_offsets,
        plain(ts),
        plain(amount),
        plain(terminal),
        plain(lat),
        plain(lon),
        order,
        event_offsets,
        np.array(config.window_ms, np.int64),
        config.terminal_ms,
        config.retain_ms,
        counts,
        sums,
        extras,
    )
    if bad_group >= 0:
        _raise_bad_state(states, bad_group)
    new_states = split_states(out_words, out_offsets)
    return counts, sums, extras, new_states


def warmup() -> None:
    """Compile (or load from numba's cache) every kernel, using the same argument types as
    ``update_customers`` does, so the first real batch does not pay for it."""
    nan = float("nan")
    state = encode_customer_state(
        np.array([0], np.int64),
        np.array([1], np.int64),
        np.array([terminal_hash("warmup")], np.int64),
        np.array([48.0], np.float64),
        np.array([nan], np.float64),
        0,
    )
    _, _, _, new_states = update_customers(
        [None, state],
        np.array([1, 0, 1], np.int64),
        np.array([1, 2, 0], np.int64),
        np.array([5, 6, 7], np.int64),
        np.array([1, 2, 1], np.int64),
        np.array([48.0, nan, 49.0], np.float64),
        np.array([2.0, nan, 2.5], np.float64),
    )
    decode_customer_state(new_states[1])
