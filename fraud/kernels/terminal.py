"""numba kernels for exact per-terminal risk windows computed from delayed fraud labels.

Definition (see ``fraud.windows.terminal`` for the Python-facing layer and
``fraud.reference.terminal``
for the slow twin): a terminal's events are processed in a given order; each is a transaction
(kind 0: event time ``t``, ``tx_hash``) or a label (kind 1: ``label_time``, ``tx_hash``, fraud
0/1). For a transaction at ``t``, delay ``D`` and window ``N``:

* ``count`` = the terminal's transactions processed before it with event time in
  ``(t - D - N, t - D]``;
* ``frauds`` = those of them whose hash's last applied label (processing order) says fraud 1 with
  ``label_time <= t``.

Labels are per hash: a label applies to every stored transaction of the terminal with that hash,
including one that arrives later (a label may come before its transaction: it is kept *pending*
and attached when the transaction arrives). A later label replaces an earlier one.

Batch layout (G terminal groups in one micro-batch), all int64 unless said otherwise:

* states: the state bytes of the G groups concatenated as words (layout below), group ``g``
  owning ``words[word_offsets[g]:word_offsets[g + 1]]``, no words for a new terminal. A state's
  transactions are sorted by event time and those with the same hash carry the same label; its
  pending labels are sorted by ``(label_time, hash)`` strictly, none with the hash of one of its
  transactions; ``max_ts`` is the largest transaction event time ever seen (``INT64_MIN`` when
  none), label times do not move it.
* events: ``ev_kind`` (int8), ``ev_ts``, ``ev_hash``, ``ev_fraud`` (int8) in the caller's order,
  plus ``order``, the events grouped (processing order kept inside a group): group ``g`` owns
  ``order[event_offsets[g]:event_offsets[g + 1]]``.

Per group the kernel loads the state into scratch arrays: transaction *slots* (append-only), the
slots in event-time order (``s_ts`` / ``s_slot``, an out-of-order transaction shifts the later
ones by one), one *label record* per hash (fraud, label time, the chain of its slots; a record
without slots is a pending label) found through an open-addressing hash table, and the *fraud
list*: the event times of the slots whose record says fraud, ascending. A transaction costs two
binary searches per window plus a scan of the fraud list inside its widest window (frauds are
rare; on a terminal where everything is fraud this is the window's size); a label costs one hash
lookup, plus a fraud-list insert or removal when it flips fraud/legit.

Eviction after the group's events, with ``threshold = max_ts - retain_ms`` (no eviction while
``max_ts`` is ``INT64_MIN``): transactions with ``ts <= threshold`` go (and with the last one of a
hash, its label); pending labels with ``label_time <= threshold`` go (a label is never earlier than
its transaction, so that transaction would be evicted on arrival anyway); then at most
``max_pending`` pending labels are kept, those with the largest ``(label_time, hash)``. The new
state goes straight into the new state words: one pass over the batch, from words to words.

State bytes (one terminal, see ``fraud.windows.terminal.encode_terminal_state``) are a whole number
of
8-byte little-endian words: word 0 = version (byte 0), three zero bytes, transaction count n
(uint32); word 1 = pending count p (uint32), four zero bytes; word 2 = max_ts; then n times,
n hashes, n label times, p pending hashes, p pending label times, and the n + p fraud bytes
(transactions then pending) zero-padded to whole words.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fraud.kernels import njit_cached

I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]

STATE_VERSION = 1
HEADER_WORDS = 3
INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max
KIND_TX = 0
KIND_LABEL = 1
_U32_MASK = 0xFFFFFFFF
_PAD_MASK = 0xFFFFFF
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64: Fibonacci hashing


@njit_cached
def state_words(n_tx: int, n_pending: int) -> int:
    """Number of 8-byte words of a state with ``n_tx`` transactions and ``n_pending`` labels."""
    return HEADER_WORDS + 3 * n_tx + 2 * n_pending + (n_tx + n_pending + 7) // 8


@njit_cached
def _upper(arr: I64, n: int, x: int) -> int:
    """First index in ``arr[:n]`` (ascending) whose value is > x."""
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit_cached
def _find(table: I64, mask: int, shift: int, rec_hash: I64, h: int) -> int:
    """Record id of hash ``h``, or ``-(i + 1)`` with ``i`` the empty table slot to put it in."""
    i = ((h * _GOLDEN) >> shift) & mask
    while True:
        r: int = table[i]
        if r < 0:
            return -(i + 1)
        if rec_hash[r] == h:
            return r
        i = (i + 1) & mask


@njit_cached
def _insert_sorted(ts: I64, values: I64, n: int, t: int, value: int) -> int:
    """Insert (t, value) into the parallel arrays of length ``n``, ascending by time (after
    equal times; appending is the usual case); returns n + 1."""
    pos = n
    if n > 0 and ts[n - 1] > t:
        pos = _upper(ts, n, t)
        for j in range(n, pos, -1):
            ts[j] = ts[j - 1]
            values[j] = values[j - 1]
    ts[pos] = t
    values[pos] = value
    return n + 1


@njit_cached
def _fraud_remove(f_ts: I64, f_rec: I64, nf: int, t: int, r: int) -> int:
    """Remove one (t, r) from the fraud list of length ``nf``; returns nf - 1."""
    pos = _upper(f_ts, nf, t) - 1
    while f_rec[pos] != r:  # (t, r) is there: walk back through the entries at time t
        pos -= 1
    for j in range(pos, nf - 1):
        f_ts[j] = f_ts[j + 1]
        f_rec[j] = f_rec[j + 1]
    return nf - 1


@njit_cached
def _header_counts(words: I64, start: int, n_words: int) -> tuple[int, int]:
    """(transactions, pending labels) of the state at ``words[start:start + n_words]``, or
    ``(-1, -1)`` when its header or length is malformed."""
    if n_words < HEADER_WORDS:
        return -1, -1
    w0 = words[start]
    w1 = words[start + 1]
    n = (w0 >> 32) & _U32_MASK
    p = w1 & _U32_MASK
    if (w0 & 0xFF) != STATE_VERSION or ((w0 >> 8) & _PAD_MASK) != 0:
        return -1, -1
    if ((w1 >> 32) & _U32_MASK) != 0 or n_words != state_words(n, p):
        return -1, -1
    return n, p


@njit_cached
def _bad_content(words: I64, start: int) -> bool:
    """Whether the state at ``start`` (its header checked) has transaction times not ascending or
    above max_ts, pending labels not strictly sorted by (label time, hash), a fraud byte not 0/1
    or non-zero padding."""
    n = (words[start] >> 32) & _U32_MASK
    p = words[start + 1] & _U32_MASK
    mx = words[start + 2]
    src = start + HEADER_WORDS
    prev = INT64_MIN
    for i in range(n):
        t = words[src + i]
        if t < prev:
            return True
        prev = t
    if n > 0 and prev > mx:
        return True
    src_pd = src + 3 * n
    for j in range(1, p):
        h = words[src_pd + j]
        label_time = words[src_pd + p + j]
        before_lt = words[src_pd + p + j - 1]
        if label_time < before_lt or (label_time == before_lt and h <= words[src_pd + j - 1]):
            return True
    src_fraud = src_pd + 2 * p
    for b in range(((n + p + 7) // 8) * 8):
        value = (words[src_fraud + (b >> 3)] >> (8 * (b & 7))) & 0xFF
        if value > (1 if b < n + p else 0):
            return True
    return False


@njit_cached
def _first_bad_content(words: I64, word_offsets: I64, start_group: int) -> int:
    """The first group from ``start_group`` on whose state content is malformed, or -1."""
    for g in range(start_group, word_offsets.shape[0] - 1):
        if word_offsets[g + 1] > word_offsets[g] and _bad_content(words, word_offsets[g]):
            return g
    return -1


@njit_cached
def update_terminal_words(
    words: I64,
    word_offsets: I64,
    ev_kind: I8,
    ev_ts: I64,
    ev_hash: I64,
    ev_fraud: I8,
    order: I64,
    event_offsets: I64,
    window_ms: I64,
    delay_ms: int,
    retain_ms: int,
    max_pending: int,
    out_count: I64,
    out_fraud: I64,
) -> tuple[I64, I64, int]:
    """Apply each group's events in order to its state words; write the features and the new
    states.

    Input states: group ``g`` owns ``words[word_offsets[g]:word_offsets[g + 1]]``, no words for
    a new terminal. Events ``ev_*`` are in the caller's order; ``order`` lists them grouped
    (group ``g`` owns ``order[event_offsets[g]:event_offsets[g + 1]]``, processing order kept
    inside a group) and event ``order[k]`` writes row ``order[k]`` of ``out_count`` /
    ``out_fraud`` (shape ``(n_events, W)``, column ``w`` for ``window_ms[w]``; label events get
    zeros).

    Returns ``(new_words, new_offsets, bad)``: group ``g``'s evicted new state is
    ``new_words[new_offsets[g]:new_offsets[g + 1]]`` (every group gets a header; counts must fit
    in uint32), and ``bad`` is -1 or the group whose state is malformed: the first with a bad
    header or length, else the first with bad content (see ``_bad_content``), else the first
    whose transactions of one hash carry different labels or whose pending label has the hash
    of a transaction or of another pending label. The outputs are then incomplete.

    ``delay_ms >= 0``, ``window_ms`` entries > 0, ``delay_ms + window + retain_ms`` within int64,
    ``ev_kind`` and the fraud flags 0/1, ``max_pending >= 0``.
    """
    n_groups = word_offsets.shape[0] - 1
    n_windows = window_ms.shape[0]
    new_offsets = np.empty(n_groups + 1, np.int64)
    new_offsets[0] = 0
    empty = np.empty(0, np.int64)

    cap_tx = 0
    cap_rec = 0
    n_out = 0  # words of the new states, at most
    for g in range(n_groups):
        start = word_offsets[g]
        n_words = word_offsets[g + 1] - start
        n_st = 0
        n_pd = 0
        if n_words > 0:
            n_st, n_pd = _header_counts(words, start, n_words)
            if n_st < 0:
                return empty, new_offsets, g
        n_ev = event_offsets[g + 1] - event_offsets[g]
        cap_tx = max(cap_tx, n_st + n_ev)
        cap_rec = max(cap_rec, n_st + n_pd + n_ev)
        n_out += state_words(n_st + n_ev, n_pd + n_ev)
    table_cap = 2
    while table_cap < 2 * cap_rec:
        table_cap <<= 1
    new_words = np.empty(n_out, np.int64)
    # transaction slots (append-only) and their event-time order
    e_rec = np.empty(cap_tx, np.int64)
    e_next = np.empty(cap_tx, np.int64)
    e_ts = np.empty(cap_tx, np.int64)
    s_ts = np.empty(cap_tx, np.int64)
    s_slot = np.empty(cap_tx, np.int64)
    # fraud list: times (ascending) and records of the slots whose label says fraud
    f_ts = np.empty(cap_tx, np.int64)
    f_rec = np.empty(cap_tx, np.int64)
    # label records, one per hash, and the hash table over them
    r_hash = np.empty(cap_rec, np.int64)
    r_fraud = np.empty(cap_rec, np.int8)
    r_lt = np.empty(cap_rec, np.int64)
    r_head = np.empty(cap_rec, np.int64)  # first slot of the hash, -1: a pending label
    table = np.empty(table_cap, np.int64)
    pend = np.empty(cap_rec, np.int64)

    cursor = 0
    for g in range(n_groups):
        start = word_offsets[g]
        has_state = word_offsets[g + 1] > start
        if has_state and _bad_content(words, start):
            return empty, new_offsets, g
        n_st = 0
        n_pd = 0
        mx = INT64_MIN
        if has_state:
            n_st = (words[start] >> 32) & _U32_MASK
            n_pd = words[start + 1] & _U32_MASK
            mx = words[start + 2]
        n_ev = event_offsets[g + 1] - event_offsets[g]
        bits = 1
        while (1 << bits) < 2 * (n_st + n_pd + n_ev):
            bits += 1
        mask = (1 << bits) - 1
        shift = 64 - bits
        table[: 1 << bits] = -1
        n = 0  # transactions (slots == sorted entries)
        nr = 0  # records
        nf = 0  # fraud list

        src = start + HEADER_WORDS
        src_fraud = src + 3 * n_st + 2 * n_pd
        for i in range(n_st):
            t = words[src + i]
            h = words[src + n_st + i]
            fraud = np.int8((words[src_fraud + (i >> 3)] >> (8 * (i & 7))) & 0xFF)
            label_time = words[src + 2 * n_st + i]
            r = _find(table, mask, shift, r_hash, h)
            if r < 0:
                table[-r - 1] = nr
                r = nr
                nr += 1
                r_hash[r] = h
                r_fraud[r] = fraud
                r_lt[r] = label_time
                r_head[r] = -1
            elif r_fraud[r] != fraud or r_lt[r] != label_time:
                bad = _first_bad_content(words, word_offsets, g + 1)
                return empty, new_offsets, g if bad < 0 else bad
            e_ts[n] = t
            e_rec[n] = r
            e_next[n] = r_head[r]
            r_head[r] = n
            s_ts[n] = t
            s_slot[n] = n
            if r_fraud[r] == 1:
                f_ts[nf] = t
                f_rec[nf] = r
                nf += 1
            n += 1
        src_pd = src + 3 * n_st
        for j in range(n_pd):
            h = words[src_pd + j]
            r = _find(table, mask, shift, r_hash, h)
            if r >= 0:
                bad = _first_bad_content(words, word_offsets, g + 1)
                return empty, new_offsets, g if bad < 0 else bad
            table[-r - 1] = nr
            b = n_st + j
            r_hash[nr] = h
            r_fraud[nr] = np.int8((words[src_fraud + (b >> 3)] >> (8 * (b & 7))) & 0xFF)
            r_lt[nr] = words[src_pd + n_pd + j]
            r_head[nr] = -1
            nr += 1

        for k in range(event_offsets[g], event_offsets[g + 1]):
            row = order[k]
            t = ev_ts[row]
            h = ev_hash[row]
            r = _find(table, mask, shift, r_hash, h)
            if ev_kind[row] == KIND_LABEL:
                f = ev_fraud[row]
                for w in range(n_windows):
                    out_count[row, w] = 0
                    out_fraud[row, w] = 0
                if r < 0:  # nothing of this hash yet: a pending label
                    table[-r - 1] = nr
                    r_hash[nr] = h
                    r_fraud[nr] = f
                    r_lt[nr] = t
                    r_head[nr] = -1
                    nr += 1
                    continue
                old = r_fraud[r]
                r_fraud[r] = f
                r_lt[r] = t
                if old != f:
                    slot = r_head[r]
                    while slot >= 0:
                        if f == 1:
                            nf = _insert_sorted(f_ts, f_rec, nf, e_ts[slot], r)
                        else:
                            nf = _fraud_remove(f_ts, f_rec, nf, e_ts[slot], r)
                        slot = e_next[slot]
                continue

            # a transaction: features from what is there before it
            if t >= INT64_MIN + delay_ms:
                upper = t - delay_ms
                hi = _upper(s_ts, n, upper)
                f_hi = _upper(f_ts, nf, upper)
                for w in range(n_windows):
                    span = delay_ms + window_ms[w]
                    lo = 0
                    f_lo = 0
                    if t >= INT64_MIN + span:
                        lower = t - span
                        lo = _upper(s_ts, hi, lower)
                        f_lo = _upper(f_ts, f_hi, lower)
                    known = 0
                    for j in range(f_lo, f_hi):
                        if r_lt[f_rec[j]] <= t:
                            known += 1
                    out_count[row, w] = hi - lo
                    out_fraud[row, w] = known
            else:  # t - delay underflows: nothing can be that early
                for w in range(n_windows):
                    out_count[row, w] = 0
                    out_fraud[row, w] = 0

            # then the transaction joins the state, with its hash's label if there is one
            if r < 0:
                table[-r - 1] = nr
                r = nr
                nr += 1
                r_hash[r] = h
                r_fraud[r] = 0
                r_lt[r] = INT64_MAX
                r_head[r] = -1
            slot = n
            e_ts[slot] = t
            e_rec[slot] = r
            e_next[slot] = r_head[r]
            r_head[r] = slot
            n = _insert_sorted(s_ts, s_slot, n, t, slot)
            if r_fraud[r] == 1:
                nf = _insert_sorted(f_ts, f_rec, nf, t, r)
            mx = max(mx, t)

        # eviction
        has_threshold = mx >= INT64_MIN + retain_ms
        threshold = mx - retain_ms if has_threshold else INT64_MIN
        keep_from = _upper(s_ts, n, threshold) if has_threshold else 0
        n_pend = 0
        for r in range(nr):
            if r_head[r] < 0 and (not has_threshold or r_lt[r] > threshold):
                pend[n_pend] = r
                n_pend += 1
        if n_pend > 1:  # sort by (label time, hash): two stable sorts
            ids = pend[:n_pend].copy()
            by_hash = ids[np.argsort(r_hash[ids], kind="mergesort")]
            ordered = by_hash[np.argsort(r_lt[by_hash], kind="mergesort")]
            pend[:n_pend] = ordered
        first = max(0, n_pend - max_pending)

        # the new state, straight into the words
        kept = n - keep_from
        kept_pd = n_pend - first
        new_words[cursor] = STATE_VERSION | (kept << 32)
        new_words[cursor + 1] = kept_pd
        new_words[cursor + 2] = mx
        dst = cursor + HEADER_WORDS
        dst_pd = dst + 3 * kept
        dst_fraud = dst_pd + 2 * kept_pd
        for b in range((kept + kept_pd + 7) // 8):
            new_words[dst_fraud + b] = 0
        for j in range(kept):
            r = e_rec[s_slot[keep_from + j]]
            new_words[dst + j] = s_ts[keep_from + j]
            new_words[dst + kept + j] = r_hash[r]
            new_words[dst + 2 * kept + j] = r_lt[r]
            new_words[dst_fraud + (j >> 3)] |= np.int64(r_fraud[r]) << (8 * (j & 7))
        for j in range(kept_pd):
            r = pend[first + j]
            b = kept + j
            new_words[dst_pd + j] = r_hash[r]
            new_words[dst_pd + kept_pd + j] = r_lt[r]
            new_words[dst_fraud + (b >> 3)] |= np.int64(r_fraud[r]) << (8 * (b & 7))
        cursor += state_words(kept, kept_pd)
        new_offsets[g + 1] = cursor
    return new_words[:cursor], new_offsets, -1
