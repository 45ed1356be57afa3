"""numba kernel for ``fraud.windows.codec``: the word offsets of a batch's concatenated states."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fraud.kernels import njit_cached

I64 = npt.NDArray[np.int64]


@njit_cached
def word_offsets(sizes: I64, header_bytes: int) -> tuple[I64, int]:
    """``(offsets, suspect)``: ``offsets[g + 1] - offsets[g] = sizes[g] // 8`` (sizes in bytes,
    0 for a missing state) and ``suspect`` the first ``g`` whose size is below ``header_bytes``
    or not a multiple of 8 (a missing state, or a malformed one), -1 when there is none."""
    n = sizes.shape[0]
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    suspect = -1
    for g in range(n):
        size = sizes[g]
        if suspect < 0 and (size < header_bytes or size & 7 != 0):
            suspect = g
        offsets[g + 1] = offsets[g] + (size >> 3)
    return offsets, suspect
