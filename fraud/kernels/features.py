"""numba kernels for the features computed outside the state kernels (``fraud.scoring.features``).

One pass each, straight into the caller's output: the numpy expressions they replace made a
temporary array per operation. Same arithmetic, so the same values.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fraud.kernels import njit_cached

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000


@njit_cached
def time_features_into(event_time_ms: I64, utc_offset_minutes: I64, out: F64) -> None:
    """``out[i] = (weekend, night)`` in local time ``t + offset * 60,000`` (int64 wrap-around as
    numpy): weekend when ``(day + 3) % 7 >= 5``, night when the hour is ``<= 6``; floor division,
    so times before 1970 work too."""
    for i in range(event_time_ms.shape[0]):
        local = event_time_ms[i] + utc_offset_minutes[i] * MINUTE_MS
        day = local // DAY_MS
        out[i, 0] = 1.0 if (day + 3) % 7 >= 5 else 0.0
        out[i, 1] = 1.0 if (local - day * DAY_MS) // HOUR_MS <= 6 else 0.0


@njit_cached
def ratios_into(amount: F64, averages: F64, out: F64) -> None:
    """``out[i, w] = amount[i] / averages[i, w]``, 0.0 where the average is 0."""
    for i in range(averages.shape[0]):
        for w in range(averages.shape[1]):
            average = averages[i, w]
            out[i, w] = amount[i] / average if average != 0 else 0.0


@njit_cached
def risk_into(counts: I64, frauds: I64, out: F64) -> None:
    """``out[i] = frauds[i] / counts[i]`` (as float64), 0.0 where the count is not positive."""
    for i in range(counts.shape[0]):
        count = counts[i]
        out[i] = frauds[i] / count if count > 0 else 0.0
