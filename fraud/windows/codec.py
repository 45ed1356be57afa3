"""Many keys' state bytes as one int64 word array, for one kernel call per batch.

Every state codec here writes whole little-endian 8-byte words, so a batch's states join into
one buffer that numba reads without a copy per key.

The per-key Python work is what is left once the kernels run per batch, so both directions keep it
to C-level passes over the list: ``type``, ``length_hint`` (0 for None) and ``b"".join`` in, one
``BytesIO.read`` per key out.
"""

from __future__ import annotations

import io
import operator
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from fraud.kernels.statewords import word_offsets

AnyScalar = TypeVar("AnyScalar", bound=np.generic)

LE_I64 = np.dtype("<i8")
NATIVE_LE = sys.byteorder == "little"
_PLAIN_TYPES = frozenset({bytes, type(None)})


def join_states(
    states: Sequence[bytes | bytearray | None],
    header_bytes: int,
    on_bad: Callable[[int], None],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(words, word_offsets): state g is ``words[word_offsets[g]:word_offsets[g + 1]]``.

    A missing state (None) is empty. ``on_bad(g)`` is called, and must raise, for a state that
    is not bytes, shorter than ``header_bytes`` or not a whole number of words (the first such
    ``g``).
    """
    if not set(map(type, states)) <= _PLAIN_TYPES:  # bytearray, or something that is not bytes
        return _join_any(states, header_bytes, on_bad)
    sizes = np.fromiter(map(operator.length_hint, states), np.int64, len(states))
    offsets, suspect = word_offsets(sizes, header_bytes)
    if suspect >= 0:  # missing states (fine), or a malformed one
        for g in np.flatnonzero((sizes < header_bytes) | (sizes & 7 != 0)).tolist():
            if states[g] is not None:
                on_bad(g)
    words: NDArray[np.int64] = np.frombuffer(b"".join(filter(None, states)), LE_I64)
    if not NATIVE_LE:  # pragma: no cover - numba targets are little-endian
        words = words.astype(np.int64)
    return words, offsets


def _join_any(
    states: Sequence[bytes | bytearray | None],
    header_bytes: int,
    on_bad: Callable[[int], None],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``join_states`` for any objects: one Python step per state."""
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


def plain(array: NDArray[AnyScalar]) -> NDArray[AnyScalar]:
    """``array`` itself when C-contiguous and writable, else a copy that is: the one array type
    the warmed-up kernels were compiled for."""
    if array.flags.c_contiguous and array.flags.writeable:
        return array
    return np.array(array)


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


def gather(
    states: Sequence[bytes | bytearray | None],
    group: NDArray[np.integer[Any]],
    header_bytes: int,
    on_bad: Callable[[int], None],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """What a window kernel reads: every state at once (``join_states``: words, word offsets)
    and the events grouped by state, arrival order kept inside a group (``group_events``:
    order, event offsets). ``group`` must already index ``states``."""
    words, word_offsets = join_states(states, header_bytes, on_bad)
    order, event_offsets = group_events(group.astype(np.int64, copy=False), len(states))
    return words, word_offsets, order, event_offsets


def split_states(words: NDArray[np.int64], offsets: NDArray[np.int64]) -> list[bytes]:
    """One ``bytes`` per group from the kernel's packed words: ``words[offsets[g]:offsets[g+1]]``
    as little-endian bytes (the words are copied once into a ``BytesIO``, then once per group)."""
    sizes = (np.diff(offsets) * 8).tolist()
    return list(map(io.BytesIO(words.astype(LE_I64, copy=False).data).read, sizes))
