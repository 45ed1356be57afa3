"""numba kernels: plain loops over flat arrays, no Python objects.

Kernels are compiled with ``cache=True``; call the owning Python layer's ``warmup()`` at start-up
so the first real transaction does not pay for compilation or cache loading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., Any])


def njit_cached(func: F) -> F:
    """``numba.njit(cache=True, nogil=True)`` with the function's own type kept for mypy."""
    return cast(F, numba.njit(cache=True, nogil=True)(func))
