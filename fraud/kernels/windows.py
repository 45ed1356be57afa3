"""numba kernels for exact per-customer event-time windows (count and sum of amount).

Definition (see ``fraud.windows`` for the Python-facing layer and ``fraud.reference.windows`` for
the slow twin): for an event of a customer at event time ``t`` and a window of ``w`` ms, count and
sum the amounts of that customer's events *seen so far in arrival order* (the current one
included) whose event time lies in ``(t - w, t]``.

Batch layout (CSR, G customer groups in one micro-batch), all arrays int64 and C-contiguous:

* state: ``state_ts`` (ascending inside each group), ``state_amount`` (aligned), group ``g`` owns
  ``[state_offsets[g], state_offsets[g + 1])``; ``state_max_ts[g]`` is the largest event time
  ever seen for the group (``INT64_MIN`` when none).
* events: ``ev_ts`` / ``ev_amount`` sorted by group, arrival order preserved inside a group; group
  ``g`` owns ``[event_offsets[g], event_offsets[g + 1])``. ``out_row[k]`` is the output row of the
  event at CSR position ``k``: pass the stable argsort permutation to get the results in the
  caller's original order (what ``fraud.windows.update_windows`` does), or ``arange`` for CSR order.

Per group the kernel copies the state into the output state region, then inserts each event at
its sorted position (after equal timestamps: a tie that arrived earlier counts, one that arrives
later does not). Usually that is an append; an out-of-order event shifts the later entries by
one. A running prefix sum of the amounts is kept alongside, so each window is two binary searches
and one subtraction: O(W log n) per in-order event. Sums are int64 and wrap like int64 would.

After the group's events, eviction keeps only entries with ``ts > max_ts - retain_ms``. The caller
picks ``retain_ms >= max(window_ms) + allowed lateness``. An event older than that is still
processed against whatever state is left, so it may miss history that was already evicted.

State bytes (one customer, see ``fraud.windows.encode_state``) are a whole number of 8-byte
little-endian words: word 0 = version (byte 0), three zero bytes, event count (uint32, bytes 4-7);
word 1 = max_ts; then ``count`` event times, then ``count`` amounts. ``unpack_states`` and
``pack_states`` convert many of them at once from/to the CSR arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fraud.kernels import njit_cached

I64 = npt.NDArray[np.int64]

STATE_VERSION = 1
HEADER_WORDS = 2
INT64_MIN = np.iinfo(np.int64).min
_U32_MASK = 0xFFFFFFFF
_PAD_MASK = 0xFFFFFF


@njit_cached
def unpack_states(words: I64, word_offsets: I64) -> tuple[I64, I64, I64, I64, int]:
    """Decode the concatenated state words of G groups into CSR state arrays.

    Group ``g`` owns ``words[word_offsets[g]:word_offsets[g + 1]]``; zero words means "no state"
    (empty, max_ts = INT64_MIN). Returns ``(ts, amount, offsets, max_ts, bad)`` where ``bad`` is
    -1, or the first group whose words are malformed (bad version or padding, wrong length,
    times not ascending, a time above max_ts); the arrays are then empty.
    """
    n_groups = word_offsets.shape[0] - 1
    offsets = np.zeros(n_groups + 1, np.int64)
    max_ts = np.empty(n_groups, np.int64)
    empty = np.empty(0, np.int64)
    total = 0
    for g in range(n_groups):
        a = word_offsets[g]
        n_words = word_offsets[g + 1] - a
        n = 0
        if n_words > 0:
            if n_words < HEADER_WORDS:
                return empty, empty, empty, empty, g
            w0 = words[a]
            n = (w0 >> 32) & _U32_MASK
            if (w0 & 0xFF) != STATE_VERSION or ((w0 >> 8) & _PAD_MASK) != 0:
                return empty, empty, empty, empty, g
            if n_words != HEADER_WORDS + 2 * n:
                return empty, empty, empty, empty, g
        total += n
        offsets[g + 1] = total
    ts = np.empty(total, np.int64)
    amount = np.empty(total, np.int64)
    for g in range(n_groups):
        a = word_offsets[g]
        if word_offsets[g + 1] == a:
            max_ts[g] = INT64_MIN
            continue
        mx = words[a + 1]
        max_ts[g] = mx
        o = offsets[g]
        n = offsets[g + 1] - o
        src_ts = a + HEADER_WORDS
        src_amount = src_ts + n
        prev = INT64_MIN
        for i in range(n):
            t = words[src_ts + i]
            if t < prev:
                return empty, empty, empty, empty, g
            prev = t
            ts[o + i] = t
            amount[o + i] = words[src_amount + i]
        if n > 0 and prev > mx:
            return empty, empty, empty, empty, g
    return ts, amount, offsets, max_ts, -1


@njit_cached
def pack_states(ts: I64, amount: I64, offsets: I64, max_ts: I64) -> tuple[I64, I64]:
    """Encode CSR state arrays as concatenated state words; returns ``(words, word_offsets)``.

    The inverse of ``unpack_states`` for groups with state (every group gets a header, so an empty
    group comes back as an explicit empty state carrying its max_ts). Counts must fit in uint32.
    """
    n_groups = max_ts.shape[0]
    word_offsets = np.empty(n_groups + 1, np.int64)
    word_offsets[0] = 0
    for g in range(n_groups):
        n = offsets[g + 1] - offsets[g]
        word_offsets[g + 1] = word_offsets[g] + HEADER_WORDS + 2 * n
    words = np.empty(word_offsets[n_groups], np.int64)
    for g in range(n_groups):
        a = word_offsets[g]
        o = offsets[g]
        n = offsets[g + 1] - o
        words[a] = STATE_VERSION | (n << 32)
        words[a + 1] = max_ts[g]
        dst_ts = a + HEADER_WORDS
        dst_amount = dst_ts + n
        for i in range(n):
            words[dst_ts + i] = ts[o + i]
            words[dst_amount + i] = amount[o + i]
    return words, word_offsets


@njit_cached
def update_windows_csr(
    state_ts: I64,
    state_amount: I64,
    state_offsets: I64,
    state_max_ts: I64,
    ev_ts: I64,
    ev_amount: I64,
    event_offsets: I64,
    out_row: I64,
    window_ms: I64,
    retain_ms: int,
    out_count: I64,
    out_sum: I64,
    new_ts: I64,
    new_amount: I64,
    new_offsets: I64,
    new_max_ts: I64,
) -> int:
    """Merge each group's events into its state, write window features and the evicted states.

    Outputs (preallocated by the caller):

    * ``out_count`` / ``out_sum``: shape ``(n_events, W)``; the event at CSR position ``k`` is
      written to row ``out_row[k]``, column ``w`` for ``window_ms[w]``.
    * ``new_ts`` / ``new_amount``: capacity at least ``len(state_ts) + len(ev_ts)``; group ``g``'s
      new state is ``[new_offsets[g], new_offsets[g + 1])`` (len G + 1), ``new_max_ts[g]`` (len G).

    ``window_ms`` entries must be > 0 and ``retain_ms`` > 0. Returns -1, or the first group whose
    state is invalid (times not ascending, or above its max_ts); outputs are then incomplete.
    """
    n_groups = state_offsets.shape[0] - 1
    n_windows = window_ms.shape[0]

    capacity = 0
    for g in range(n_groups):
        size = (state_offsets[g + 1] - state_offsets[g]) + (event_offsets[g + 1] - event_offsets[g])
        capacity = max(capacity, size)
    # prefix[j] = sum of the first j amounts of the group's merged, sorted events
    prefix = np.empty(capacity + 1, np.int64)

    cursor = 0
    new_offsets[0] = 0
    for g in range(n_groups):
        base = cursor
        mx = state_max_ts[g]
        n = 0
        prefix[0] = 0
        for i in range(state_offsets[g], state_offsets[g + 1]):
            t = state_ts[i]
            if n > 0 and t < new_ts[base + n - 1]:
                return g
            new_ts[base + n] = t
            new_amount[base + n] = state_amount[i]
            prefix[n + 1] = prefix[n] + state_amount[i]
            n += 1
        if n > 0 and new_ts[base + n - 1] > mx:
            return g

        for k in range(event_offsets[g], event_offsets[g + 1]):
            t = ev_ts[k]
            a = ev_amount[k]
            if n == 0 or new_ts[base + n - 1] <= t:
                pos = n  # usual case: append
            else:
                lo = 0
                hi = n
                while lo < hi:  # first index whose time is > t
                    mid = (lo + hi) >> 1
                    if new_ts[base + mid] <= t:
                        lo = mid + 1
                    else:
                        hi = mid
                pos = lo
                for j in range(n, pos, -1):
                    new_ts[base + j] = new_ts[base + j - 1]
                    new_amount[base + j] = new_amount[base + j - 1]
                    prefix[j + 1] = prefix[j] + a
            new_ts[base + pos] = t
            new_amount[base + pos] = a
            prefix[pos + 1] = prefix[pos] + a
            n += 1
            mx = max(mx, t)

            # entries [0, pos] have time <= t, entries after pos have time > t
            row = out_row[k]
            end = pos + 1
            for w in range(n_windows):
                width = window_ms[w]
                lo = 0
                if t >= INT64_MIN + width:  # else t - width underflows: no lower bound
                    lower = t - width
                    hi = pos  # new_ts[base + pos] == t > lower
                    while lo < hi:  # first index whose time is > lower
                        mid = (lo + hi) >> 1
                        if new_ts[base + mid] <= lower:
                            lo = mid + 1
                        else:
                            hi = mid
                out_count[row, w] = end - lo
                out_sum[row, w] = prefix[end] - prefix[lo]

        keep_from = 0
        if mx >= INT64_MIN + retain_ms:  # else every kept time is > mx - retain_ms
            threshold = mx - retain_ms
            hi = n
            while keep_from < hi:  # first index whose time is > threshold
                mid = (keep_from + hi) >> 1
                if new_ts[base + mid] <= threshold:
                    keep_from = mid + 1
                else:
                    hi = mid
        kept = n - keep_from
        if keep_from > 0:
            for j in range(kept):
                new_ts[base + j] = new_ts[base + keep_from + j]
                new_amount[base + j] = new_amount[base + keep_from + j]
        cursor = base + kept
        new_offsets[g + 1] = cursor
        new_max_ts[g] = mx
    return -1
