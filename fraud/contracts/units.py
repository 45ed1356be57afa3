"""Units, int64 bounds, window lengths and feature names: each defined here once, for every floor.

Times are integer milliseconds since the Unix epoch. The kernels (which import nothing outside
``fraud.kernels``) and ``fraud.settings`` (a base module, below this floor) keep literal copies
of the few constants they need; ``tests/unit/contracts/test_units.py`` asserts those equal the
ones here.
"""

from __future__ import annotations

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NO_TIME = INT64_MIN
"""An event time before every real one: "none yet"."""

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

WINDOW_DAYS: tuple[int, ...] = (1, 7, 30)
"""Lengths in days of the customer and terminal windows (the default configurations)."""
LABEL_DELAY_DAYS = 7
"""Days after a transaction at which its fraud label is known (the terminal stage's delay,
and the label delay replays and benchmarks use)."""

# The full feature vector of the two-stage worker: the customer stage computes the first block
# from the transaction and the customer's state; the terminal stage appends the terminal block.
# Rules and models refer to features by these names.
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
"""The per-event features of the customer kernel, in the order of its ``out_extra`` columns."""
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
NULLABLE_FEATURES: tuple[str, ...] = ("seconds_since_prev_tx", "geo_velocity_kmh")
"""Features the worker leaves NaN on some transactions (no previous transaction, no
coordinates)."""
