"""Feature names and the feature matrix built from window counts and sums.

Amounts in features are in major units of the transaction's currency (a customer's window mixes
no currencies: a card has one billing currency). Means divide the exact integer sum of minor
units by the count, then by the currency's scale.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fraud.windows import WINDOW_DAYS

FEATURES: tuple[str, ...] = (
    "amount",
    *(f"customer_{kind}_{n}d" for n in WINDOW_DAYS for kind in ("nb_tx", "avg_amount")),
)


def customer_features(
    amount_minor: NDArray[np.int64],
    scale: NDArray[np.float64],
    counts: NDArray[np.int64],
    sums: NDArray[np.int64],
) -> NDArray[np.float64]:
    """The (n, len(FEATURES)) matrix: amount, then count and mean amount per window.

    ``scale`` is 10**exponent of each transaction's currency. Counts are never zero since the
    window includes the current transaction.
    """
    n, w = counts.shape
    out = np.empty((n, 1 + 2 * w), dtype=np.float64)
    out[:, 0] = amount_minor / scale
    out[:, 1::2] = counts
    out[:, 2::2] = (sums / counts) / scale[:, None]
    return out
