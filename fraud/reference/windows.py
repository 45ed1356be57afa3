"""Pure Python twin of ``fraud.kernels.windows``, written straight from the definition.

For each event of a customer at event time ``t`` and each window ``w`` (ms): count and sum the
amounts of that customer's events seen so far in arrival order (the current one included) whose
event time lies in ``(t - w, t]``. No numba, no numpy, quadratic per customer: for tests only.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def _check_lengths(customer: Sequence[Hashable], ts: Sequence[int], amount: Sequence[int]) -> None:
    if not len(customer) == len(ts) == len(amount):
        raise ValueError(
            f"customer, ts and amount differ in length: {len(customer)}, {len(ts)}, {len(amount)}"
        )


def _features(
    seen: list[tuple[int, int]], t: int, window_ms: Sequence[int]
) -> tuple[list[int], list[int]]:
    counts: list[int] = []
    sums: list[int] = []
    for width in window_ms:
        count = 0
        total = 0
        for t_other, amount_other in seen:
            if t - width < t_other <= t:
                count += 1
                total += amount_other
        counts.append(count)
        sums.append(total)
    return counts, sums


def reference_windows(
    customer: Sequence[Hashable],
    ts: Sequence[int],
    amount: Sequence[int],
    window_ms: Sequence[int],
) -> tuple[list[list[int]], list[list[int]]]:
    """Window counts and sums for a whole stream given in arrival order, with no eviction.

    Returns ``(counts, sums)``, each a list with one ``[value per window]`` row per event.
    """
    _check_lengths(customer, ts, amount)
    seen: dict[Hashable, list[tuple[int, int]]] = {}
    counts: list[list[int]] = []
    sums: list[list[int]] = []
    for c, t, a in zip(customer, ts, amount, strict=True):
        history = seen.setdefault(c, [])
        history.append((int(t), int(a)))  # the earlier arrivals, plus this event
        row_counts, row_sums = _features(history, int(t), window_ms)
        counts.append(row_counts)
        sums.append(row_sums)
    return counts, sums


def reference_windows_evicting(
    customer: Sequence[Hashable],
    ts: Sequence[int],
    amount: Sequence[int],
    window_ms: Sequence[int],
    batch_sizes: Sequence[int],
    retain_ms: int,
) -> tuple[list[list[int]], list[list[int]]]:
    """Like ``reference_windows``, but with the engine's eviction between micro-batches.

    The stream is cut into consecutive batches of ``batch_sizes`` events. After each batch, every
    customer keeps only the events with ``ts > max_ts - retain_ms``, ``max_ts`` being the largest
    event time ever seen for that customer. Events are processed against what is kept, so a very
    late event may miss history that was already evicted.
    """
    _check_lengths(customer, ts, amount)
    if sum(batch_sizes) != len(ts) or any(size < 0 for size in batch_sizes):
        raise ValueError(f"batch_sizes {list(batch_sizes)} do not cut {len(ts)} events")
    seen: dict[Hashable, list[tuple[int, int]]] = {}
    max_ts: dict[Hashable, int] = {}
    counts: list[list[int]] = []
    sums: list[list[int]] = []
    start = 0
    for size in batch_sizes:
        for i in range(start, start + size):
            c, t, a = customer[i], int(ts[i]), int(amount[i])
            history = seen.setdefault(c, [])
            history.append((t, a))
            max_ts[c] = max(max_ts.get(c, t), t)
            row_counts, row_sums = _features(history, t, window_ms)
            counts.append(row_counts)
            sums.append(row_sums)
        start += size
        for c, history in seen.items():
            seen[c] = [(t, a) for t, a in history if t > max_ts[c] - retain_ms]
    return counts, sums
