"""Pure Python twin of ``fraud.kernels.terminal``, written straight from the definition.

Events (transactions, kind 0, and fraud labels, kind 1) are processed in the order given. For a
transaction at terminal X and event time ``t``, delay ``D`` and window ``N``: ``count`` is the
number of X's transactions processed before it with event time in ``(t - D - N, t - D]``, and
``frauds`` the number of those that are known frauds at ``t``: the last label applied so far for
their hash (at X) says fraud and has ``label_time <= t``. Label events get zero rows. No numba,
no numpy, quadratic per terminal: for tests only.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

KIND_TX = 0
KIND_LABEL = 1


def _check(
    terminal: Sequence[Hashable],
    kind: Sequence[int],
    ts: Sequence[int],
    tx_hash: Sequence[int],
    fraud: Sequence[int],
) -> None:
    if not len(terminal) == len(kind) == len(ts) == len(tx_hash) == len(fraud):
        raise ValueError(
            "terminal, kind, ts, tx_hash and fraud differ in length: "
            f"{len(terminal)}, {len(kind)}, {len(ts)}, {len(tx_hash)}, {len(fraud)}"
        )


def _features(
    seen: list[tuple[int, int]],
    labels: dict[int, tuple[int, int]],
    t: int,
    window_ms: Sequence[int],
    delay_ms: int,
) -> tuple[list[int], list[int]]:
    counts: list[int] = []
    frauds: list[int] = []
    for width in window_ms:
        count = 0
        known = 0
        for t_other, h_other in seen:
            if t - delay_ms - width < t_other <= t - delay_ms:
                count += 1
                is_fraud, label_time = labels.get(h_other, (0, 0))
                if is_fraud == 1 and label_time <= t:
                    known += 1
        counts.append(count)
        frauds.append(known)
    return counts, frauds


def reference_terminals(
    terminal: Sequence[Hashable],
    kind: Sequence[int],
    ts: Sequence[int],
    tx_hash: Sequence[int],
    fraud: Sequence[int],
    window_ms: Sequence[int],
    delay_ms: int,
) -> tuple[list[list[int]], list[list[int]]]:
    """Counts and known frauds for a whole stream in processing order, keeping all history.

    Returns ``(counts, frauds)``, each with one ``[value per window]`` row per event (zeros for
    label events).
    """
    _check(terminal, kind, ts, tx_hash, fraud)
    seen: dict[Hashable, list[tuple[int, int]]] = {}
    labels: dict[Hashable, dict[int, tuple[int, int]]] = {}
    counts: list[list[int]] = []
    frauds: list[list[int]] = []
    zeros = [0] * len(window_ms)
    for x, k, t, h, f in zip(terminal, kind, ts, tx_hash, fraud, strict=True):
        history = seen.setdefault(x, [])
        known = labels.setdefault(x, {})
        if k == KIND_LABEL:
            known[int(h)] = (int(f), int(t))  # a later label replaces an earlier one
            counts.append(list(zeros))
            frauds.append(list(zeros))
            continue
        row_counts, row_frauds = _features(history, known, int(t), window_ms, delay_ms)
        counts.append(row_counts)
        frauds.append(row_frauds)
        history.append((int(t), int(h)))
    return counts, frauds


def reference_terminals_evicting(
    terminal: Sequence[Hashable],
    kind: Sequence[int],
    ts: Sequence[int],
    tx_hash: Sequence[int],
    fraud: Sequence[int],
    window_ms: Sequence[int],
    delay_ms: int,
    batch_sizes: Sequence[int],
    retain_ms: int,
    max_pending: int,
) -> tuple[list[list[int]], list[list[int]]]:
    """Like ``reference_terminals``, with the engine's eviction between micro-batches.

    The stream is cut into consecutive batches of ``batch_sizes`` events. After each batch, with
    ``threshold = max_ts - retain_ms`` (``max_ts``: the terminal's largest transaction event time;
    nothing is evicted before its first transaction): transactions with ``ts <= threshold`` are
    dropped; a label whose hash no longer has transactions is dropped if its hash had some, else
    (a pending label) kept only if ``label_time > threshold``, and of those only the
    ``max_pending`` largest by ``(label_time, hash)``.
    """
    _check(terminal, kind, ts, tx_hash, fraud)
    if sum(batch_sizes) != len(ts) or any(size < 0 for size in batch_sizes):
        raise ValueError(f"batch_sizes {list(batch_sizes)} do not cut {len(ts)} events")
    seen: dict[Hashable, list[tuple[int, int]]] = {}
    labels: dict[Hashable, dict[int, tuple[int, int]]] = {}
    max_ts: dict[Hashable, int] = {}
    counts: list[list[int]] = []
    frauds: list[list[int]] = []
    zeros = [0] * len(window_ms)
    start = 0
    for size in batch_sizes:
        # hashes that had transactions at the terminal when the batch started or since
        had_tx: dict[Hashable, set[int]] = {x: {h for _, h in hist} for x, hist in seen.items()}
        for i in range(start, start + size):
            x, k, t, h, f = terminal[i], kind[i], int(ts[i]), int(tx_hash[i]), int(fraud[i])
            history = seen.setdefault(x, [])
            known = labels.setdefault(x, {})
            if k == KIND_LABEL:
                known[h] = (f, t)
                counts.append(list(zeros))
                frauds.append(list(zeros))
                continue
            row_counts, row_frauds = _features(history, known, t, window_ms, delay_ms)
            counts.append(row_counts)
            frauds.append(row_frauds)
            history.append((t, h))
            had_tx.setdefault(x, set()).add(h)
            max_ts[x] = max(max_ts.get(x, t), t)
        start += size
        for x, history in seen.items():
            known = labels[x]
            if x in max_ts:
                threshold = max_ts[x] - retain_ms
                history[:] = [(t, h) for t, h in history if t > threshold]
            kept_hashes = {h for _, h in history}
            pending = [
                (label_time, h)
                for h, (_, label_time) in known.items()
                if h not in had_tx.get(x, set())
                and (x not in max_ts or label_time > max_ts[x] - retain_ms)
            ]
            pending.sort()
            keep = kept_hashes | {h for _, h in pending[max(0, len(pending) - max_pending) :]}
            labels[x] = {h: label for h, label in known.items() if h in keep}
    return counts, frauds
