"""Input checks shared by the customer and terminal windows: each raises ValueError with a
message that names the argument."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_SPAN_MS",
    "check_groups",
    "check_windows",
    "raise_bad_state",
    "require_1d",
    "require_int",
    "require_int_array",
    "stable_hash",
]

MAX_SPAN_MS = 2**62
"""Limit on window, delay and lateness lengths, so that their sums and ``t - w`` stay well
inside int64."""


def require_1d(name: str, value: Any, dtype: type[np.generic]) -> Any:
    """``value`` if it is a 1-D numpy array of exactly ``dtype``."""
    if not isinstance(value, np.ndarray):
        raise ValueError(
            f"{name} must be a numpy {np.dtype(dtype)} array, got {type(value).__name__}"
        )
    if value.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {value.dtype}")
    if value.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {value.shape}")
    return value


def require_int_array(name: str, value: Any) -> npt.NDArray[np.integer[Any]]:
    """``value`` if it is a 1-D numpy array of any integer dtype."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy integer array, got {type(value).__name__}")
    if not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {value.dtype}")
    if value.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {value.shape}")
    return value


def require_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


def check_windows(window_ms: Sequence[Any]) -> tuple[int, ...]:
    """Window lengths as ints: at least one, each in ``(0, MAX_SPAN_MS]``."""
    windows = tuple(window_ms)
    if not windows:
        raise ValueError("window_ms must name at least one window")
    for width in windows:
        if isinstance(width, bool) or not isinstance(width, int | np.integer):
            raise ValueError(f"window_ms entries must be ints, got {width!r}")
        if not 0 < width <= MAX_SPAN_MS:
            raise ValueError(f"window_ms entries must be in (0, 2**62] ms, got {width}")
    return tuple(int(width) for width in windows)


def check_groups(group: npt.NDArray[np.integer[Any]], n_groups: int) -> None:
    """Every ``group[i]`` indexes one of ``n_groups`` states."""
    if group.shape[0]:
        low, high = int(group.min()), int(group.max())
        if low < 0 or high >= n_groups:
            bad = low if low < 0 else high
            raise ValueError(f"group index {bad} out of range for {n_groups} states")


def raise_bad_state(
    states: Sequence[bytes | None], g: int, decode: Callable[[bytes | None], object], what: str
) -> None:
    """Raise the error ``decode`` finds in ``states[g]``, a state the kernel refused, prefixed
    with its index."""
    try:
        decode(states[g])
    except ValueError as exc:
        raise ValueError(f"states[{g}]: {exc}") from None
    # unreachable: the kernels refuse nothing that the decoders accept
    raise ValueError(f"states[{g}]: invalid {what} state")  # pragma: no cover


def stable_hash(text: str) -> int:
    """Stable signed int64 for an id: the 8-byte BLAKE2b digest of its UTF-8, little-endian.

    The same in every process and on every machine (unlike ``hash``), so it can live in state.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
