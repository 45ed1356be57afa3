"""Batch reference of the full feature set, straight from the definitions .

Works on a whole simulated file at once, in file order (time-sorted, ties in file order), as a
risk team would compute the handbook's features offline. The streaming engine must equal it.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from fraud.contracts.units import ALL_FEATURES, DAY_MS
from fraud.tools.simulate import Simulated

WINDOWS = (1, 7, 30)


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(a))


def batch_features(sim: Simulated, delay_days: int = 7) -> NDArray[np.float64]:
    """(n, len(ALL_FEATURES)) in file order; labels known ``delay_days`` after each tx."""
    n = len(sim)
    t = sim.event_time_ms
    amount = sim.amount_cents / 100.0
    col = {name: i for i, name in enumerate(ALL_FEATURES)}
    out = np.full((n, len(ALL_FEATURES)), np.nan)
    out[:, col["amount"]] = amount
    days = t // DAY_MS
    out[:, col["tx_during_weekend"]] = ((days + 3) % 7) >= 5
    out[:, col["tx_during_night"]] = (t - days * DAY_MS) // 3_600_000 <= 6

    lat = sim.lat if sim.lat is not None else np.full(n, np.nan)
    lon = sim.lon if sim.lon is not None else np.full(n, np.nan)
    for customer in np.unique(sim.customer_id):
        idx = np.flatnonzero(sim.customer_id == customer)  # file order = arrival order
        ct = t[idx]
        csum = np.concatenate([[0], np.cumsum(sim.amount_cents[idx])])
        for k, i in enumerate(idx):
            for w in WINDOWS:
                lo = int(np.searchsorted(ct[: k + 1], ct[k] - w * DAY_MS, side="right"))
                count = k + 1 - lo
                avg = (csum[k + 1] - csum[lo]) / count / 100.0
                out[i, col[f"customer_nb_tx_{w}d"]] = count
                out[i, col[f"customer_avg_amount_{w}d"]] = avg
                out[i, col[f"amount_to_avg_{w}d"]] = amount[i] / avg if avg else 0.0
            if k > 0:
                prev = idx[k - 1]
                dt = (t[i] - t[prev]) / 1000.0
                out[i, col["seconds_since_prev_tx"]] = dt
                if dt > 0 and not (math.isnan(lat[i]) or math.isnan(lat[prev])):
                    km = _haversine_km(lat[prev], lon[prev], lat[i], lon[i])
                    out[i, col["geo_velocity_kmh"]] = km / (dt / 3600.0)
            recent = idx[:k][t[idx[:k]] > t[i] - 30 * DAY_MS]
            used = np.any(sim.terminal_id[recent] == sim.terminal_id[i])
            out[i, col["first_use_of_terminal"]] = 0.0 if used else 1.0

    delay = delay_days * DAY_MS
    for terminal in np.unique(sim.terminal_id):
        idx = np.flatnonzero(sim.terminal_id == terminal)
        tt = t[idx]
        fraud = np.concatenate([[0], np.cumsum(sim.fraud[idx])])
        for i in idx:
            end = int(np.searchsorted(tt, t[i] - delay, side="right"))
            for w in WINDOWS:
                lo = int(np.searchsorted(tt, t[i] - delay - w * DAY_MS, side="right"))
                count = end - lo
                frauds = fraud[end] - fraud[lo]
                out[i, col[f"terminal_nb_tx_{w}d"]] = count
                out[i, col[f"terminal_risk_{w}d"]] = frauds / count if count else 0.0
    return out
