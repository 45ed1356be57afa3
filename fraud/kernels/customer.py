"""numba kernels for the per-customer state v2: windows plus "behaviour" features.

Definitions (see ``fraud.customer`` for the Python-facing layer and ``fraud.reference.customer``
for the slow twin). For an event of a customer at event time ``t``, "seen so far" is the
customer's earlier-arrived events plus the event itself:

* window ``w`` (ms): count and sum of the amounts of the events seen so far whose event time lies
  in ``(t - w, t]`` (left open: an event exactly ``w`` earlier is out);
* "previous" event: among the earlier-arrived events with event time ``<= t``, the one with the
  largest event time; among several at that time, the last to arrive. ``seconds_since_prev_tx`` is
  ``(t - t_prev) / 1000`` (0.0 for an earlier arrival at the same ms), NaN without one;
* ``first_use_of_terminal``: 1.0 when no earlier-arrived event at the same terminal hash has event
  time in ``(t - terminal_ms, t]`` (``terminal_ms`` = the longest window), else 0.0;
* ``geo_velocity_kmh``: haversine distance (Earth radius ``EARTH_RADIUS_KM``) from the previous
  event's location to this one's, over the time between them in hours. NaN without a previous
  event, when either location is unknown (a NaN latitude or longitude) or when the two are at the
  same ms; 0.0 for the same place at a later time.

Batch layout (CSR, G customer groups in one micro-batch), all arrays C-contiguous:

* state: ``state_ts`` (int64, ascending inside each group, ties in arrival order),
  ``state_amount`` / ``state_terminal`` (int64) and ``state_lat`` / ``state_lon`` (float64)
  aligned; group ``g`` owns ``[state_offsets[g], state_offsets[g + 1])``; ``state_max_ts[g]`` is
  the largest event time ever seen for the group (``INT64_MIN`` when none).
* events: ``ev_*`` sorted by group, arrival order kept inside a group; group ``g`` owns
  ``[event_offsets[g], event_offsets[g + 1])``; ``out_row[k]`` is the output row of the event at
  CSR position ``k`` (the stable argsort permutation gives the caller's order).

Per group the kernel copies the state into the output state region and inserts each event at its
sorted position, after equal times (usually an append). Entries before that position are exactly
the earlier arrivals with time ``<= t``: the previous event is the one just before it, the window
bounds are binary searches over a running prefix sum of the amounts, and the terminal check scans
the 30-day window backwards from the previous event, stopping at the first match. Eviction after
the group's events keeps only entries with ``ts > max_ts - retain_ms`` (``max_ts`` the group's
largest event time ever seen, kept even when its event is evicted).

State bytes (one customer, see ``fraud.customer.encode_customer_state``): little-endian 8-byte
words. Word 0 = version ``STATE_VERSION`` (byte 0), three zero bytes, event count ``n`` (uint32,
bytes 4-7); word 1 = max_ts; then ``n`` event times, ``n`` amounts, ``n`` terminal hashes (int64),
``n`` latitudes, ``n`` longitudes (float64 bit patterns). ``unpack_customer_states`` and
``pack_customer_states`` convert many of them at once from/to the CSR arrays.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from fraud.kernels import njit_cached

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

STATE_VERSION = 2
HEADER_WORDS = 2
COLUMNS = 5  # words per retained event: ts, amount, terminal, lat, lon
N_EXTRAS = 3  # seconds_since_prev_tx, first_use_of_terminal, geo_velocity_kmh
INT64_MIN = np.iinfo(np.int64).min
EARTH_RADIUS_KM = 6371.0088
MS_PER_HOUR = 3_600_000.0
_DEG = math.pi / 180.0
_U32_MASK = 0xFFFFFFFF
_PAD_MASK = 0xFFFFFF


@njit_cached
def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees (NaN in, NaN out)."""
    phi1 = lat1 * _DEG
    phi2 = lat2 * _DEG
    s_lat = math.sin((phi2 - phi1) * 0.5)
    s_lon = math.sin((lon2 - lon1) * _DEG * 0.5)
    h = s_lat * s_lat + math.cos(phi1) * math.cos(phi2) * s_lon * s_lon
    if h > 1.0:  # rounding; written so that NaN stays NaN (min(1.0, nan) would be 1.0)
        h = 1.0
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


@njit_cached
def _bad_coordinates(lat: float, lon: float) -> bool:
    # NaN is "unknown" and fine; anything else must be a real coordinate
    return (not math.isnan(lat) and not -90.0 <= lat <= 90.0) or (
        not math.isnan(lon) and not -180.0 <= lon <= 180.0
    )


@njit_cached
def unpack_customer_states(
    words: I64, fwords: F64, word_offsets: I64
) -> tuple[I64, I64, I64, F64, F64, I64, I64, int]:
    """Decode the concatenated state words of G groups into CSR state arrays.

    ``fwords`` is ``words`` viewed as float64 (same buffer). Group ``g`` owns
    ``words[word_offsets[g]:word_offsets[g + 1]]``; zero words means "no state" (empty, max_ts =
    INT64_MIN). Returns ``(ts, amount, terminal, lat, lon, offsets, max_ts, bad)`` where ``bad``
    is -1, or the first group whose words are malformed (bad version or padding, wrong length,
    times not ascending, a time above max_ts, a coordinate out of range); the arrays are then
    empty.
    """
    n_groups = word_offsets.shape[0] - 1
    offsets = np.zeros(n_groups + 1, np.int64)
    max_ts = np.empty(n_groups, np.int64)
    empty = np.empty(0, np.int64)
    fempty = np.empty(0, np.float64)
    total = 0
    for g in range(n_groups):
        a = word_offsets[g]
        n_words = word_offsets[g + 1] - a
        n = 0
        if n_words > 0:
            if n_words < HEADER_WORDS:
                return empty, empty, empty, fempty, fempty, empty, empty, g
            w0 = words[a]
            n = (w0 >> 32) & _U32_MASK
            if (w0 & 0xFF) != STATE_VERSION or ((w0 >> 8) & _PAD_MASK) != 0:
                return empty, empty, empty, fempty, fempty, empty, empty, g
            if n_words != HEADER_WORDS + COLUMNS * n:
                return empty, empty, empty, fempty, fempty, empty, empty, g
        total += n
        offsets[g + 1] = total
    ts = np.empty(total, np.int64)
    amount = np.empty(total, np.int64)
    terminal = np.empty(total, np.int64)
    lat = np.empty(total, np.float64)
    lon = np.empty(total, np.float64)
    for g in range(n_groups):
        a = word_offsets[g]
        if word_offsets[g + 1] == a:
            max_ts[g] = INT64_MIN
            continue
        mx = words[a + 1]
        max_ts[g] = mx
        o = offsets[g]
        n = offsets[g + 1] - o
        src = a + HEADER_WORDS
        prev = INT64_MIN
        for i in range(n):
            t = words[src + i]
            if t < prev:
                return empty, empty, empty, fempty, fempty, empty, empty, g
            prev = t
            la = fwords[src + 3 * n + i]
            lo = fwords[src + 4 * n + i]
            if _bad_coordinates(la, lo):
                return empty, empty, empty, fempty, fempty, empty, empty, g
            ts[o + i] = t
            amount[o + i] = words[src + n + i]
            terminal[o + i] = words[src + 2 * n + i]
            lat[o + i] = la
            lon[o + i] = lo
        if n > 0 and prev > mx:
            return empty, empty, empty, fempty, fempty, empty, empty, g
    return ts, amount, terminal, lat, lon, offsets, max_ts, -1


@njit_cached
def pack_customer_states(
    ts: I64,
    amount: I64,
    terminal: I64,
    lat: F64,
    lon: F64,
    offsets: I64,
    max_ts: I64,
    words: I64,
    fwords: F64,
    word_offsets: I64,
) -> None:
    """Encode CSR state arrays into ``words`` (``fwords`` its float64 view), the inverse of
    ``unpack_customer_states``.

    The caller sizes ``words`` and fills ``word_offsets`` (len G + 1) with the running sum of
    ``HEADER_WORDS + COLUMNS * n_g``; every group gets a header, so an empty group comes back as
    an explicit empty state carrying its max_ts. Counts must fit in uint32.
    """
    n_groups = max_ts.shape[0]
    for g in range(n_groups):
        a = word_offsets[g]
        o = offsets[g]
        n = offsets[g + 1] - o
        words[a] = STATE_VERSION | (n << 32)
        words[a + 1] = max_ts[g]
        dst = a + HEADER_WORDS
        for i in range(n):
            words[dst + i] = ts[o + i]
            words[dst + n + i] = amount[o + i]
            words[dst + 2 * n + i] = terminal[o + i]
            fwords[dst + 3 * n + i] = lat[o + i]
            fwords[dst + 4 * n + i] = lon[o + i]


@njit_cached
def update_customers_csr(
    state_ts: I64,
    state_amount: I64,
    state_terminal: I64,
    state_lat: F64,
    state_lon: F64,
    state_offsets: I64,
    state_max_ts: I64,
    ev_ts: I64,
    ev_amount: I64,
    ev_terminal: I64,
    ev_lat: F64,
    ev_lon: F64,
    event_offsets: I64,
    out_row: I64,
    window_ms: I64,
    terminal_ms: int,
    retain_ms: int,
    out_count: I64,
    out_sum: I64,
    out_extra: F64,
    new_ts: I64,
    new_amount: I64,
    new_terminal: I64,
    new_lat: F64,
    new_lon: F64,
    new_offsets: I64,
    new_max_ts: I64,
) -> int:
    """Merge each group's events into its state, write the features and the evicted states.

    Outputs (preallocated by the caller):

    * ``out_count`` / ``out_sum``: shape ``(n_events, W)``; ``out_extra``: shape
      ``(n_events, 3)`` (seconds_since_prev_tx, first_use_of_terminal, geo_velocity_kmh). The
      event at CSR position ``k`` is written to row ``out_row[k]``.
    * ``new_*``: capacity at least ``len(state_ts) + len(ev_ts)``; group ``g``'s new state is
      ``[new_offsets[g], new_offsets[g + 1])`` (len G + 1), ``new_max_ts[g]`` (len G).

    ``window_ms`` entries and ``terminal_ms`` must be > 0, ``retain_ms`` > 0. Returns -1, or the
    first group whose state is invalid (times not ascending, or above its max_ts); outputs are
    then incomplete.
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
            new_terminal[base + n] = state_terminal[i]
            new_lat[base + n] = state_lat[i]
            new_lon[base + n] = state_lon[i]
            prefix[n + 1] = prefix[n] + state_amount[i]
            n += 1
        if n > 0 and new_ts[base + n - 1] > mx:
            return g

        for k in range(event_offsets[g], event_offsets[g + 1]):
            t = ev_ts[k]
            a = ev_amount[k]
            term = ev_terminal[k]
            la = ev_lat[k]
            lo_ = ev_lon[k]
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
                    new_terminal[base + j] = new_terminal[base + j - 1]
                    new_lat[base + j] = new_lat[base + j - 1]
                    new_lon[base + j] = new_lon[base + j - 1]
                    prefix[j + 1] = prefix[j] + a
            new_ts[base + pos] = t
            new_amount[base + pos] = a
            new_terminal[base + pos] = term
            new_lat[base + pos] = la
            new_lon[base + pos] = lo_
            prefix[pos + 1] = prefix[pos] + a
            n += 1
            mx = max(mx, t)

            # entries [0, pos) are the earlier arrivals with time <= t; after pos, times are > t
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

            if pos == 0:
                out_extra[row, 0] = np.nan
                out_extra[row, 2] = np.nan
            else:
                p = base + pos - 1  # the previous event: last arrival at the largest time <= t
                dt = t - new_ts[p]
                out_extra[row, 0] = dt / 1000.0
                p_lat = new_lat[p]
                p_lon = new_lon[p]
                if (
                    dt == 0
                    or math.isnan(p_lat)
                    or math.isnan(p_lon)
                    or math.isnan(la)
                    or math.isnan(lo_)
                ):
                    out_extra[row, 2] = np.nan
                else:
                    km = haversine_km(p_lat, p_lon, la, lo_)
                    out_extra[row, 2] = km / (dt / MS_PER_HOUR)

            first_use = 1.0
            has_lower = t >= INT64_MIN + terminal_ms
            lower = t - terminal_ms if has_lower else INT64_MIN
            for j in range(base + pos - 1, base - 1, -1):
                if has_lower and new_ts[j] <= lower:
                    break
                if new_terminal[j] == term:
                    first_use = 0.0
                    break
            out_extra[row, 1] = first_use

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
                new_terminal[base + j] = new_terminal[base + keep_from + j]
                new_lat[base + j] = new_lat[base + keep_from + j]
                new_lon[base + j] = new_lon[base + keep_from + j]
        cursor = base + kept
        new_offsets[g + 1] = cursor
        new_max_ts[g] = mx
    return -1
