"""Many keys' state bytes as one int64 word array, for one kernel call per batch.

Every state codec here writes whole little-endian 8-byte words, so a batch's states join into
one buffer that numba reads without a copy per key.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

LE_I64 = np.dtype("<i8")
NATIVE_LE = sys.byteorder == "little"


def join_states(
    states: Sequence[bytes | bytearray | None],
    header_bytes: int,
    on_bad: Callable[[int], None],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(words, word_offsets): state g is ``words[word_offsets[g]:word_offsets[g + 1]]``.

    A missing state (None) is empty. ``on_bad(g)`` is called, and must raise, for a state that
    is not bytes, shorter than ``header_bytes`` or not a whole number of words.
    """
    payload: list[bytes | bytearray] = []
    word_len = [0] * len(states)
    for g, data in enumerate(states):
        if data is None:
            continue
        size = len(data) if isinstance(data, bytes | bytearray) else -1
        if size < header_bytes or size & 7:
            on_bad(g)
        word_len[g] = size >> 3
        payload.append(data)
    words: NDArray[np.int64] = np.frombuffer(b"".join(payload), LE_I64)
    if not NATIVE_LE:  # pragma: no cover - numba targets are little-endian
        words = words.astype(np.int64)
    word_offsets = np.zeros(len(states) + 1, np.int64)
    np.cumsum(word_len, out=word_offsets[1:])
    return words, word_offsets


def group_events(
    group: NDArray[np.int64], n_groups: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(order, event_offsets): events sorted by group, arrival order kept inside a group.

    With at most 65,536 groups the sort key is uint16, which numpy sorts with a stable radix
    sort (about 12x faster than int64 here).
    """
    key = group.astype(np.uint16) if n_groups <= 1 << 16 else group
    order = np.argsort(key, kind="stable").astype(np.int64, copy=False)
    event_offsets = np.zeros(n_groups + 1, np.int64)
    np.cumsum(np.bincount(group, minlength=n_groups), out=event_offsets[1:])
    return order, event_offsets


def split_states(words: NDArray[np.int64], offsets: NDArray[np.int64]) -> list[bytes]:
    """One ``bytes`` per group from the kernel's packed words: ``words[offsets[g]:offsets[g+1]]``
    as little-endian bytes, copied once."""
    raw = words.astype(LE_I64, copy=False).data.cast("B")
    bounds = (offsets * 8).tolist()
    return [bytes(raw[bounds[g] : bounds[g + 1]]) for g in range(len(bounds) - 1)]
