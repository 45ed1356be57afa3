"""The features computed outside the state kernels (their names are in
``fraud.contracts.units``).

Amounts in features are in major units of the transaction's currency (a customer's window mixes
no currencies: a card has one billing currency). Means divide the exact integer sum of minor
units by the count, then by the currency's scale.

``time_features`` and ``amount_ratios`` run a numba kernel (``fraud.kernels.features``, one pass
without temporaries) on the arrays the stages pass, numpy on anything else: the same values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from fraud.contracts.units import DAY_MS, HOUR_MS, MINUTE_MS


def _plain(array: NDArray[Any]) -> NDArray[Any]:
    """``array``, or a C-contiguous writable copy: the argument type the kernels are warmed for
    (as ``fraud.windows.codec.plain``, which would import numba with this module)."""
    if array.flags.c_contiguous and array.flags.writeable:
        return array
    return np.array(array)


def time_features(
    event_time_ms: NDArray[np.int64], utc_offset_minutes: NDArray[np.int64]
) -> NDArray[np.float64]:
    """(n, 2): weekend (Saturday or Sunday) and night (hour <= 6), in local time.

    Local time is event time plus the transaction's UTC offset (0, i.e. UTC, when none is
    given). 1970-01-01 was a Thursday, so the weekday (Monday = 0) of day d is (d + 3) % 7.
    """
    if (
        isinstance(event_time_ms, np.ndarray)
        and isinstance(utc_offset_minutes, np.ndarray)
        and event_time_ms.dtype == utc_offset_minutes.dtype == np.int64
        and event_time_ms.ndim == 1
        and event_time_ms.shape == utc_offset_minutes.shape
    ):
        # imported here: modules that only want the feature names do not load numba
        from fraud.kernels.features import time_features_into

        out = np.empty((event_time_ms.shape[0], 2), dtype=np.float64)
        time_features_into(_plain(event_time_ms), _plain(utc_offset_minutes), out)
        return out
    local = event_time_ms + utc_offset_minutes * MINUTE_MS
    days = np.floor_divide(local, DAY_MS)
    weekday = (days + 3) % 7
    hour = np.floor_divide(local - days * DAY_MS, HOUR_MS)
    out = np.empty((len(local), 2), dtype=np.float64)
    out[:, 0] = weekday >= 5
    out[:, 1] = hour <= 6
    return out


def amount_ratios(
    amount: NDArray[np.float64], averages: NDArray[np.float64]
) -> NDArray[np.float64]:
    """amount / average for each window column; 0 where the average is 0."""
    if (
        isinstance(amount, np.ndarray)
        and isinstance(averages, np.ndarray)
        and amount.dtype == averages.dtype == np.float64
        and averages.ndim == 2
        and amount.shape == averages.shape[:1]
    ):
        from fraud.kernels.features import ratios_into

        result = np.empty(averages.shape, dtype=np.float64)
        ratios_into(_plain(amount), _plain(averages), result)
        return result
    out = np.zeros_like(averages)
    np.divide(amount[:, None], averages, out=out, where=averages != 0)
    return out


def warmup() -> None:
    """Compile (or load from numba's cache) the kernels of ``time_features`` and
    ``amount_ratios`` for the argument types the stages use."""
    ones = np.ones(1, dtype=np.int64)
    time_features(ones, ones)
    amount_ratios(np.ones(1, dtype=np.float64), np.ones((1, 1), dtype=np.float64))
