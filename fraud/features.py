"""Feature names, and the features computed outside the state kernels.

Amounts in features are in major units of the transaction's currency (a customer's window mixes
no currencies: a card has one billing currency). Means divide the exact integer sum of minor
units by the count, then by the currency's scale.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

DAY_MS = 86_400_000
WINDOW_DAYS: tuple[int, ...] = (1, 7, 30)
"""Lengths in days of the customer and terminal windows (the default configurations)."""

# The full feature vector of the two-stage worker (issue 3): the customer stage computes the
# first block from the transaction and the customer's state; the terminal stage appends the
# terminal block. Rules and models refer to features by these names.
TIME_FEATURES: tuple[str, ...] = ("tx_during_weekend", "tx_during_night")
CUSTOMER_WINDOW_FEATURES: tuple[str, ...] = tuple(
    f"customer_{kind}_{n}d" for n in WINDOW_DAYS for kind in ("nb_tx", "avg_amount")
)
RATIO_FEATURES: tuple[str, ...] = tuple(f"amount_to_avg_{n}d" for n in WINDOW_DAYS)
BEHAVIOUR_FEATURES: tuple[str, ...] = (
    "seconds_since_prev_tx",
    "first_use_of_terminal",
    "geo_velocity_kmh",
)
CUSTOMER_STAGE_FEATURES: tuple[str, ...] = (
    "amount",
    *TIME_FEATURES,
    *CUSTOMER_WINDOW_FEATURES,
    *RATIO_FEATURES,
    *BEHAVIOUR_FEATURES,
)
TERMINAL_FEATURES: tuple[str, ...] = tuple(
    f"terminal_{kind}_{n}d" for n in WINDOW_DAYS for kind in ("nb_tx", "risk")
)
ALL_FEATURES: tuple[str, ...] = (*CUSTOMER_STAGE_FEATURES, *TERMINAL_FEATURES)

_HOUR_MS = 3_600_000


def time_features(
    event_time_ms: NDArray[np.int64], utc_offset_minutes: NDArray[np.int64]
) -> NDArray[np.float64]:
    """(n, 2): weekend (Saturday or Sunday) and night (hour <= 6), in local time.

    Local time is event time plus the transaction's UTC offset (0, i.e. UTC, when none is
    given). 1970-01-01 was a Thursday, so the weekday (Monday = 0) of day d is (d + 3) % 7.
    """
    local = event_time_ms + utc_offset_minutes * 60_000
    days = np.floor_divide(local, DAY_MS)
    weekday = (days + 3) % 7
    hour = np.floor_divide(local - days * DAY_MS, _HOUR_MS)
    out = np.empty((len(local), 2), dtype=np.float64)
    out[:, 0] = weekday >= 5
    out[:, 1] = hour <= 6
    return out


def amount_ratios(
    amount: NDArray[np.float64], averages: NDArray[np.float64]
) -> NDArray[np.float64]:
    """amount / average for each window column; 0 where the average is 0."""
    out = np.zeros_like(averages)
    np.divide(amount[:, None], averages, out=out, where=averages != 0)
    return out
