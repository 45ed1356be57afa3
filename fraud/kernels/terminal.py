"""numba kernels for exact per-terminal risk windows computed from delayed fraud labels.

Definition (see ``fraud.terminal`` for the Python-facing layer and ``fraud.reference.terminal``
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

Batch layout (CSR, G terminal groups in one micro-batch), all int64 unless said otherwise:

* state transactions: ``st_ts`` (ascending inside each group), ``st_hash``, ``st_fraud`` (int8),
  ``st_lt`` (label time, ``INT64_MAX`` when unlabelled), group ``g`` owns
  ``[st_offsets[g], st_offsets[g + 1])``; transactions with the same hash carry the same label.
* state pending labels: ``pd_hash``, ``pd_fraud`` (int8), ``pd_lt``, CSR ``pd_offsets``; sorted by
  ``(label_time, hash)`` strictly, none with the hash of one of the group's transactions.
* ``st_max_ts[g]``: the largest transaction event time ever seen (``INT64_MIN`` when none). Label
  times do not move it.
* events: ``ev_kind`` (int8), ``ev_ts``, ``ev_hash``, ``ev_fraud`` (int8), sorted by group with
  the processing order kept inside a group, CSR ``event_offsets``; ``out_row[k]`` is the output row
  of the event at CSR position ``k`` (the stable argsort permutation gives the caller's order).

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
``max_pending`` pending labels are kept, those with the largest ``(label_time, hash)``.

State bytes (one terminal, see ``fraud.terminal.encode_terminal_state``) are a whole number of
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
def unpack_terminal_states(
    words: I64, word_offsets: I64
) -> tuple[I64, I64, I8, I64, I64, I64, I8, I64, I64, I64, int]:
    """Decode the concatenated state words of G groups into CSR state arrays.

    Group ``g`` owns ``words[word_offsets[g]:word_offsets[g + 1]]``; zero words means "no state".
    Returns ``(ts, hash, fraud, lt, offsets, pd_hash, pd_fraud, pd_lt, pd_offsets, max_ts, bad)``
    where ``bad`` is -1, or the first group whose words are malformed (version, padding, length,
    a fraud byte not 0/1, times not ascending or above max_ts, pending labels not strictly sorted
    by (label time, hash)); the arrays are then empty. Label consistency between transactions of
    the same hash is checked by ``update_terminals_csr``.
    """
    n_groups = word_offsets.shape[0] - 1
    offsets = np.zeros(n_groups + 1, np.int64)
    pd_offsets = np.zeros(n_groups + 1, np.int64)
    max_ts = np.empty(n_groups, np.int64)
    e64 = np.empty(0, np.int64)
    e8 = np.empty(0, np.int8)
    total = 0
    total_pd = 0
    for g in range(n_groups):
        a = word_offsets[g]
        n_words = word_offsets[g + 1] - a
        n = 0
        p = 0
        if n_words > 0:
            if n_words < HEADER_WORDS:
                return e64, e64, e8, e64, e64, e64, e8, e64, e64, e64, g
            w0 = words[a]
            w1 = words[a + 1]
            n = (w0 >> 32) & _U32_MASK
            p = w1 & _U32_MASK
            if (w0 & 0xFF) != STATE_VERSION or ((w0 >> 8) & _PAD_MASK) != 0:
                return e64, e64, e8, e64, e64, e64, e8, e64, e64, e64, g
            if ((w1 >> 32) & _U32_MASK) != 0 or n_words != state_words(n, p):
                return e64, e64, e8, e64, e64, e64, e8, e64, e64, e64, g
        total += n
        total_pd += p
        offsets[g + 1] = total
        pd_offsets[g + 1] = total_pd
    ts = np.empty(total, np.int64)
    hsh = np.empty(total, np.int64)
    fraud = np.empty(total, np.int8)
    lt = np.empty(total, np.int64)
    pd_hash = np.empty(total_pd, np.int64)
    pd_fraud = np.empty(total_pd, np.int8)
    pd_lt = np.empty(total_pd, np.int64)
    for g in range(n_groups):
        a = word_offsets[g]
        if word_offsets[g + 1] == a:
            max_ts[g] = INT64_MIN
            continue
        mx = words[a + 2]
        max_ts[g] = mx
        o = offsets[g]
        n = offsets[g + 1] - o
        q = pd_offsets[g]
        p = pd_offsets[g + 1] - q
        src = a + HEADER_WORDS
        src_fraud = src + 3 * n + 2 * p
        prev = INT64_MIN
        for i in range(n):
            t = words[src + i]
            if t < prev:
                return e64, e64, e8, e64, e64, e64, e8, e64, e64, e64, g
            prev = t
            ts[o + i] = t
            hsh[o + i] = words[src + n + i]
            lt[o + i] = words[src + 2 * n + i]
        if n > 0 and prev > mx:
            return e64, e64, e8, e64, e64, e64, e8, e64, e64, e64, g
        src_pd = src + 3 * n
        for j in range(p):
            h = words[src_pd + j]
            label_time = words[src_pd + p + j]
            if j > 0:
                before_lt = pd_lt[q + j - 1]
                if label_time < before_lt or (label_time == before_lt and h <= pd_hash[q + j - 1]):
                    return e64, e64, e8, e64, e64, e64, e8, e64, e64, e64, g
            pd_hash[q + j] = h
            pd_lt[q + j] = label_time
        n_bytes = ((n + p + 7) // 8) * 8
        for b in range(n_bytes):
            value = (words[src_fraud + (b >> 3)] >> (8 * (b & 7))) & 0xFF
            if b < n + p:
                if value > 1:
                    return e64, e64, e8, e64, e64, e64, e8, e64, e64, e64, g
                if b < n:
                    fraud[o + b] = value
                else:
                    pd_fraud[q + b - n] = value
            elif value != 0:
                return e64, e64, e8, e64, e64, e64, e8, e64, e64, e64, g
    return ts, hsh, fraud, lt, offsets, pd_hash, pd_fraud, pd_lt, pd_offsets, max_ts, -1


@njit_cached
def pack_terminal_states(
    ts: I64,
    hsh: I64,
    fraud: I8,
    lt: I64,
    offsets: I64,
    pd_hash: I64,
    pd_fraud: I8,
    pd_lt: I64,
    pd_offsets: I64,
    max_ts: I64,
) -> tuple[I64, I64]:
    """Encode CSR state arrays as concatenated state words; returns ``(words, word_offsets)``.

    The inverse of ``unpack_terminal_states``; every group gets a header (an empty group comes
    back as an explicit empty state carrying its max_ts). Counts must fit in uint32.
    """
    n_groups = max_ts.shape[0]
    word_offsets = np.empty(n_groups + 1, np.int64)
    word_offsets[0] = 0
    for g in range(n_groups):
        n = offsets[g + 1] - offsets[g]
        p = pd_offsets[g + 1] - pd_offsets[g]
        word_offsets[g + 1] = word_offsets[g] + state_words(n, p)
    words = np.empty(word_offsets[n_groups], np.int64)
    for g in range(n_groups):
        a = word_offsets[g]
        o = offsets[g]
        n = offsets[g + 1] - o
        q = pd_offsets[g]
        p = pd_offsets[g + 1] - q
        words[a] = STATE_VERSION | (n << 32)
        words[a + 1] = p
        words[a + 2] = max_ts[g]
        dst = a + HEADER_WORDS
        for i in range(n):
            words[dst + i] = ts[o + i]
            words[dst + n + i] = hsh[o + i]
            words[dst + 2 * n + i] = lt[o + i]
        dst_pd = dst + 3 * n
        for j in range(p):
            words[dst_pd + j] = pd_hash[q + j]
            words[dst_pd + p + j] = pd_lt[q + j]
        dst_fraud = dst_pd + 2 * p
        for b in range((n + p + 7) // 8):
            words[dst_fraud + b] = 0
        for i in range(n + p):
            value = np.int64(fraud[o + i]) if i < n else np.int64(pd_fraud[q + i - n])
            words[dst_fraud + (i >> 3)] |= value << (8 * (i & 7))
    return words, word_offsets


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
def _fraud_insert(f_ts: I64, f_rec: I64, nf: int, t: int, r: int) -> int:
    """Insert (t, r) into the fraud list of length ``nf`` (after equal times); returns nf + 1."""
    pos = nf
    if nf > 0 and f_ts[nf - 1] > t:
        pos = _upper(f_ts, nf, t)
        for j in range(nf, pos, -1):
            f_ts[j] = f_ts[j - 1]
            f_rec[j] = f_rec[j - 1]
    f_ts[pos] = t
    f_rec[pos] = r
    return nf + 1


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
def update_terminals_csr(
    st_ts: I64,
    st_hash: I64,
    st_fraud: I8,
    st_lt: I64,
    st_offsets: I64,
    pd_hash: I64,
    pd_fraud: I8,
    pd_lt: I64,
    pd_offsets: I64,
    st_max_ts: I64,
    ev_kind: I8,
    ev_ts: I64,
    ev_hash: I64,
    ev_fraud: I8,
    event_offsets: I64,
    out_row: I64,
    window_ms: I64,
    delay_ms: int,
    retain_ms: int,
    max_pending: int,
    out_count: I64,
    out_fraud: I64,
    new_ts: I64,
    new_hash: I64,
    new_fraud: I8,
    new_lt: I64,
    new_offsets: I64,
    new_pd_hash: I64,
    new_pd_fraud: I8,
    new_pd_lt: I64,
    new_pd_offsets: I64,
    new_max_ts: I64,
) -> int:
    """Apply each group's events in order, write the features and the evicted new states.

    Outputs (preallocated by the caller):

    * ``out_count`` / ``out_fraud``: shape ``(n_events, W)``; the event at CSR position ``k`` is
      written to row ``out_row[k]``, column ``w`` for ``window_ms[w]``; label events get zeros.
    * ``new_ts`` / ``new_hash`` / ``new_fraud`` / ``new_lt``: capacity at least
      ``len(st_ts) + len(ev_ts)``, CSR ``new_offsets`` (len G + 1); ``new_pd_*``: capacity at
      least ``len(pd_hash) + len(ev_ts)``, CSR ``new_pd_offsets``; ``new_max_ts`` (len G).

    ``delay_ms >= 0``, ``window_ms`` entries > 0, ``delay_ms + window + retain_ms`` within int64,
    ``ev_kind`` and the fraud flags 0/1, ``max_pending >= 0``. Returns -1, or the first group
    whose state is invalid (times not ascending or above max_ts, two transactions of one hash
    with different labels, a pending label for a hash that has transactions or twice the same
    pending hash); the outputs are then incomplete.
    """
    n_groups = st_offsets.shape[0] - 1
    n_windows = window_ms.shape[0]

    cap_tx = 0
    cap_rec = 0
    for g in range(n_groups):
        n_st = st_offsets[g + 1] - st_offsets[g]
        n_ev = event_offsets[g + 1] - event_offsets[g]
        cap_tx = max(cap_tx, n_st + n_ev)
        cap_rec = max(cap_rec, n_st + pd_offsets[g + 1] - pd_offsets[g] + n_ev)
    table_cap = 2
    while table_cap < 2 * cap_rec:
        table_cap <<= 1
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
    pd_cursor = 0
    new_offsets[0] = 0
    new_pd_offsets[0] = 0
    for g in range(n_groups):
        n_st = st_offsets[g + 1] - st_offsets[g]
        n_ev = event_offsets[g + 1] - event_offsets[g]
        need = n_st + pd_offsets[g + 1] - pd_offsets[g] + n_ev
        bits = 1
        while (1 << bits) < 2 * need:
            bits += 1
        mask = (1 << bits) - 1
        shift = 64 - bits
        table[: 1 << bits] = -1
        mx = st_max_ts[g]
        n = 0  # transactions (slots == sorted entries)
        nr = 0  # records
        nf = 0  # fraud list

        for i in range(st_offsets[g], st_offsets[g + 1]):
            t = st_ts[i]
            h = st_hash[i]
            if n > 0 and t < s_ts[n - 1]:
                return g
            r = _find(table, mask, shift, r_hash, h)
            if r < 0:
                table[-r - 1] = nr
                r = nr
                nr += 1
                r_hash[r] = h
                r_fraud[r] = st_fraud[i]
                r_lt[r] = st_lt[i]
                r_head[r] = -1
            elif r_fraud[r] != st_fraud[i] or r_lt[r] != st_lt[i]:
                return g
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
        if n > 0 and s_ts[n - 1] > mx:
            return g
        for j in range(pd_offsets[g], pd_offsets[g + 1]):
            r = _find(table, mask, shift, r_hash, pd_hash[j])
            if r >= 0:
                return g
            table[-r - 1] = nr
            r_hash[nr] = pd_hash[j]
            r_fraud[nr] = pd_fraud[j]
            r_lt[nr] = pd_lt[j]
            r_head[nr] = -1
            nr += 1

        for k in range(event_offsets[g], event_offsets[g + 1]):
            t = ev_ts[k]
            h = ev_hash[k]
            row = out_row[k]
            r = _find(table, mask, shift, r_hash, h)
            if ev_kind[k] == KIND_LABEL:
                f = ev_fraud[k]
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
                            nf = _fraud_insert(f_ts, f_rec, nf, e_ts[slot], r)
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
            if n == 0 or s_ts[n - 1] <= t:
                pos = n  # usual case: append
            else:
                pos = _upper(s_ts, n, t)
                for j in range(n, pos, -1):
                    s_ts[j] = s_ts[j - 1]
                    s_slot[j] = s_slot[j - 1]
            s_ts[pos] = t
            s_slot[pos] = slot
            n += 1
            if r_fraud[r] == 1:
                nf = _fraud_insert(f_ts, f_rec, nf, t, r)
            mx = max(mx, t)

        # eviction, then the new state
        has_threshold = mx >= INT64_MIN + retain_ms
        threshold = mx - retain_ms if has_threshold else INT64_MIN
        keep_from = _upper(s_ts, n, threshold) if has_threshold else 0
        for pos in range(keep_from, n):
            r = e_rec[s_slot[pos]]
            out = cursor + pos - keep_from
            new_ts[out] = s_ts[pos]
            new_hash[out] = r_hash[r]
            new_fraud[out] = r_fraud[r]
            new_lt[out] = r_lt[r]
        cursor += n - keep_from
        new_offsets[g + 1] = cursor

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
        for j in range(first, n_pend):
            r = pend[j]
            out = pd_cursor + j - first
            new_pd_hash[out] = r_hash[r]
            new_pd_fraud[out] = r_fraud[r]
            new_pd_lt[out] = r_lt[r]
        pd_cursor += n_pend - first
        new_pd_offsets[g + 1] = pd_cursor
        new_max_ts[g] = mx
    return -1
