"""Pure Python twin of ``fraud.kernels.customer``, written straight from the definition.

For each event of a customer at event time ``t``, "seen so far" being that customer's
earlier-arrived events plus the event itself:

* per window ``w`` (ms): count and sum of the amounts of the events seen so far with event time
  in ``(t - w, t]``;
* the previous event: among the earlier arrivals with event time ``<= t``, the largest time, and
  among those the last to arrive. ``seconds_since_prev_tx = (t - t_prev) / 1000``, NaN without;
* ``first_use_of_terminal``: 1.0 unless an earlier arrival at the same terminal has event time in
  ``(t - max(window_ms), t]``;
* ``geo_velocity_kmh``: haversine km from the previous event's location over the hours between
  them; NaN without a previous event, with an unknown (NaN) coordinate or at the same ms.

No numba, no numpy, quadratic per customer: for tests only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from fraud.contracts.units import HOUR_MS

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class _Seen:
    arrival: int
    ts: int
    amount: int
    terminal: int
    lat: float
    lon: float


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points in degrees."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    d_phi = phi2 - phi1
    d_lambda = math.radians(lon2 - lon1)
    h = math.sin(d_phi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(d_lambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h if not h > 1.0 else 1.0))


def _features(
    history: list[_Seen], current: _Seen, window_ms: Sequence[int]
) -> tuple[list[int], list[int], list[float]]:
    """Features of ``current`` given the events seen before it (``history``, any order)."""
    t = current.ts
    seen = [*history, current]
    counts = [sum(1 for e in seen if t - w < e.ts <= t) for w in window_ms]
    sums = [sum(e.amount for e in seen if t - w < e.ts <= t) for w in window_ms]

    before = [e for e in history if e.ts <= t]
    seconds = math.nan
    velocity = math.nan
    if before:
        prev = max(before, key=lambda e: (e.ts, e.arrival))
        dt = t - prev.ts
        seconds = dt / 1000
        known = not any(math.isnan(x) for x in (prev.lat, prev.lon, current.lat, current.lon))
        if known and dt != 0:
            km = haversine_km(prev.lat, prev.lon, current.lat, current.lon)
            velocity = km / (dt / HOUR_MS)
    look_back = max(window_ms)
    used = any(e.terminal == current.terminal and t - look_back < e.ts <= t for e in history)
    return counts, sums, [seconds, 0.0 if used else 1.0, velocity]


def reference_customers(
    customer: Sequence[Hashable],
    ts: Sequence[int],
    amount: Sequence[int],
    terminal: Sequence[int],
    lat: Sequence[float],
    lon: Sequence[float],
    window_ms: Sequence[int],
    batch_sizes: Sequence[int] | None = None,
    retain_ms: int | None = None,
) -> tuple[list[list[int]], list[list[int]], list[list[float]]]:
    """Features for a whole stream given in arrival order.

    Without ``batch_sizes`` nothing is ever forgotten. With it (and ``retain_ms``), the stream is
    cut into consecutive batches of those sizes and, after each batch, every customer keeps only
    the events with ``ts > max_ts - retain_ms`` (``max_ts`` the largest event time ever seen for
    that customer), as the engine does: a very late event may miss evicted history.

    Returns ``(counts, sums, extras)``, one row per event; ``extras`` rows are
    ``[seconds_since_prev_tx, first_use_of_terminal, geo_velocity_kmh]``.
    """
    n = len(ts)
    if not len(customer) == len(amount) == len(terminal) == len(lat) == len(lon) == n:
        raise ValueError("customer, ts, amount, terminal, lat and lon differ in length")
    if batch_sizes is None:
        batch_sizes = [n]
    elif retain_ms is None:
        raise ValueError("batch_sizes needs retain_ms")
    if sum(batch_sizes) != n or any(size < 0 for size in batch_sizes):
        raise ValueError(f"batch_sizes {list(batch_sizes)} do not cut {n} events")
    seen: dict[Hashable, list[_Seen]] = {}
    max_ts: dict[Hashable, int] = {}
    counts: list[list[int]] = []
    sums: list[list[int]] = []
    extras: list[list[float]] = []
    start = 0
    for size in batch_sizes:
        for i in range(start, start + size):
            c = customer[i]
            event = _Seen(i, int(ts[i]), int(amount[i]), int(terminal[i]), lat[i], lon[i])
            history = seen.setdefault(c, [])
            row_counts, row_sums, row_extras = _features(history, event, window_ms)
            history.append(event)
            max_ts[c] = max(max_ts.get(c, event.ts), event.ts)
            counts.append(row_counts)
            sums.append(row_sums)
            extras.append(row_extras)
        start += size
        if retain_ms is not None:
            for c, events in seen.items():
                seen[c] = [e for e in events if e.ts > max_ts[c] - retain_ms]
    return counts, sums, extras
