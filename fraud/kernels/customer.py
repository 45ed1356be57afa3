"""numba kernels for the per-customer state v2: windows plus "behaviour" features.

Definitions (see ``fraud.windows.customer`` for the Python-facing layer and
``fraud.reference.customer``
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

Batch layout (G customer groups in one micro-batch), all arrays C-contiguous:

* states: the state bytes of the G groups concatenated as int64 words (layout below), group
  ``g`` owning ``words[word_offsets[g]:word_offsets[g + 1]]``, no words for a new customer;
* events: ``ev_*`` in the caller's order, plus ``order``, the events grouped (arrival order kept
  inside a group): group ``g`` owns ``order[event_offsets[g]:event_offsets[g + 1]]``.

Per group the kernel decodes (and checks) the state into scratch arrays and inserts each event at
its sorted position, after equal times (usually an append). Entries before that position are
exactly the earlier arrivals with time ``<= t``: the previous event is the one just before it, the
window bounds are binary searches over a running prefix sum of the amounts, and the terminal check
scans the 30-day window backwards from the previous event, stopping at the first match. Eviction
after the group's events keeps only entries with ``ts > max_ts - retain_ms`` (``max_ts`` the
group's largest event time ever seen, kept even when its event is evicted), written straight into
the new state words: one pass over the batch, from state words to state words.

State bytes (one customer, see ``fraud.windows.customer.encode_customer_state``): little-endian
8-byte
words. Word 0 = version ``STATE_VERSION`` (byte 0), three zero bytes, event count ``n`` (uint32,
bytes 4-7); word 1 = max_ts; then ``n`` event times, ``n`` amounts, ``n`` terminal hashes (int64),
``n`` latitudes, ``n`` longitudes (float64 bit patterns).
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
def _bad_header(w0: int, n_words: int) -> bool:
    """A non-empty state whose first word or length is not that of a version 2 state."""
    if n_words < HEADER_WORDS:
        return True
    n = (w0 >> 32) & _U32_MASK
    if (w0 & 0xFF) != STATE_VERSION or ((w0 >> 8) & _PAD_MASK) != 0:
        return True
    return bool(n_words != HEADER_WORDS + COLUMNS * n)


@njit_cached
def update_customer_words(
    words: I64,
    fwords: F64,
    word_offsets: I64,
    ev_ts: I64,
    ev_amount: I64,
    ev_terminal: I64,
    ev_lat: F64,
    ev_lon: F64,
    order: I64,
    event_offsets: I64,
    window_ms: I64,
    terminal_ms: int,
    retain_ms: int,
    out_count: I64,
    out_sum: I64,
    out_extra: F64,
) -> tuple[I64, I64, int]:
    """Merge each group's events into its state words; write the features and the new states.

    Input states: group ``g`` owns ``words[word_offsets[g]:word_offsets[g + 1]]`` (``fwords`` is
    the same buffer as float64); zero words means "no state" (empty, max_ts = INT64_MIN). Events
    ``ev_*`` are in the caller's order; ``order`` lists them grouped (the CSR positions: group
    ``g`` owns ``order[event_offsets[g]:event_offsets[g + 1]]``, arrival order kept inside a
    group) and event ``order[k]`` writes row ``order[k]`` of ``out_count`` / ``out_sum`` (shape
    ``(n_events, W)``) and ``out_extra`` (``(n_events, 3)``: seconds_since_prev_tx,
    first_use_of_terminal, geo_velocity_kmh).

    Returns ``(new_words, new_offsets, bad)``: group ``g``'s evicted new state is
    ``new_words[new_offsets[g]:new_offsets[g + 1]]`` (every group gets one, an empty group an
    explicit empty state carrying its max_ts; counts must fit in uint32), and ``bad`` is -1, or
    the first group whose words are malformed (bad version or padding, wrong length, first
    checked for all groups; then times not ascending, a time above max_ts, a coordinate out of
    range); the outputs are then incomplete.

    ``window_ms`` entries and ``terminal_ms`` must be > 0, ``retain_ms`` > 0.
    """
    n_groups = word_offsets.shape[0] - 1
    n_windows = window_ms.shape[0]
    new_offsets = np.empty(n_groups + 1, np.int64)
    new_offsets[0] = 0
    empty = np.empty(0, np.int64)

    capacity = 0  # of the scratch state: the longest state plus its events
    n_out = words.shape[0] + COLUMNS * ev_ts.shape[0]  # every group's words, at most
    for g in range(n_groups):
        a = word_offsets[g]
        n_words = word_offsets[g + 1] - a
        n = 0
        if n_words > 0:
            if _bad_header(words[a], n_words):
                return empty, new_offsets, g
            n = (words[a] >> 32) & _U32_MASK
        else:
            n_out += HEADER_WORDS
        capacity = max(capacity, n + event_offsets[g + 1] - event_offsets[g])
    new_words = np.empty(n_out, np.int64)
    new_fwords = new_words.view(np.float64)
    # one group's merged events, sorted by time (ties in arrival order)
    s_ts = np.empty(capacity, np.int64)
    s_amount = np.empty(capacity, np.int64)
    s_terminal = np.empty(capacity, np.int64)
    s_lat = np.empty(capacity, np.float64)
    s_lon = np.empty(capacity, np.float64)
    # prefix[j] = sum of the first j amounts of the group's merged, sorted events
    prefix = np.empty(capacity + 1, np.int64)

    cursor = 0
    for g in range(n_groups):
        start = word_offsets[g]
        mx = INT64_MIN
        n = 0
        prefix[0] = 0
        if word_offsets[g + 1] > start:
            mx = words[start + 1]
            n_state = (words[start] >> 32) & _U32_MASK
            src = start + HEADER_WORDS
            for i in range(n_state):
                t = words[src + i]
                if n > 0 and t < s_ts[n - 1]:
                    return empty, new_offsets, g
                st_lat = fwords[src + 3 * n_state + i]
                st_lon = fwords[src + 4 * n_state + i]
                if _bad_coordinates(st_lat, st_lon):
                    return empty, new_offsets, g
                st_amount = words[src + n_state + i]
                s_ts[n] = t
                s_amount[n] = st_amount
                s_terminal[n] = words[src + 2 * n_state + i]
                s_lat[n] = st_lat
                s_lon[n] = st_lon
                prefix[n + 1] = prefix[n] + st_amount
                n += 1
            if n > 0 and s_ts[n - 1] > mx:
                return empty, new_offsets, g

        for k in range(event_offsets[g], event_offsets[g + 1]):
            row = order[k]
            t = ev_ts[row]
            amount = ev_amount[row]
            term = ev_terminal[row]
            la = ev_lat[row]
            lo_ = ev_lon[row]
            if n == 0 or s_ts[n - 1] <= t:
                pos = n  # usual case: append
            else:
                lo = 0
                hi = n
                while lo < hi:  # first index whose time is > t
                    mid = (lo + hi) >> 1
                    if s_ts[mid] <= t:
                        lo = mid + 1
                    else:
                        hi = mid
                pos = lo
                for j in range(n, pos, -1):
                    s_ts[j] = s_ts[j - 1]
                    s_amount[j] = s_amount[j - 1]
                    s_terminal[j] = s_terminal[j - 1]
                    s_lat[j] = s_lat[j - 1]
                    s_lon[j] = s_lon[j - 1]
                    prefix[j + 1] = prefix[j] + amount
            s_ts[pos] = t
            s_amount[pos] = amount
            s_terminal[pos] = term
            s_lat[pos] = la
            s_lon[pos] = lo_
            prefix[pos + 1] = prefix[pos] + amount
            n += 1
            mx = max(mx, t)

            # entries [0, pos) are the earlier arrivals with time <= t; after pos, times are > t
            end = pos + 1
            for w in range(n_windows):
                width = window_ms[w]
                lo = 0
                if t >= INT64_MIN + width:  # else t - width underflows: no lower bound
                    lower = t - width
                    hi = pos  # s_ts[pos] == t > lower
                    while lo < hi:  # first index whose time is > lower
                        mid = (lo + hi) >> 1
                        if s_ts[mid] <= lower:
                            lo = mid + 1
                        else:
                            hi = mid
                out_count[row, w] = end - lo
                out_sum[row, w] = prefix[end] - prefix[lo]

            if pos == 0:
                out_extra[row, 0] = np.nan
                out_extra[row, 2] = np.nan
            else:
                p = pos - 1  # the previous event: last arrival at the largest time <= t
                dt = t - s_ts[p]
                out_extra[row, 0] = dt / 1000.0
                p_lat = s_lat[p]
                p_lon = s_lon[p]
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
            for j in range(pos - 1, -1, -1):
                if has_lower and s_ts[j] <= lower:
                    break
                if s_terminal[j] == term:
                    first_use = 0.0
                    break
            out_extra[row, 1] = first_use

        keep_from = 0
        if mx >= INT64_MIN + retain_ms:  # else every kept time is > mx - retain_ms
            threshold = mx - retain_ms
            hi = n
            while keep_from < hi:  # first index whose time is > threshold
                mid = (keep_from + hi) >> 1
                if s_ts[mid] <= threshold:
                    keep_from = mid + 1
                else:
                    hi = mid
        kept = n - keep_from
        new_words[cursor] = STATE_VERSION | (kept << 32)
        new_words[cursor + 1] = mx
        dst = cursor + HEADER_WORDS
        for j in range(kept):
            new_words[dst + j] = s_ts[keep_from + j]
            new_words[dst + kept + j] = s_amount[keep_from + j]
            new_words[dst + 2 * kept + j] = s_terminal[keep_from + j]
            new_fwords[dst + 3 * kept + j] = s_lat[keep_from + j]
            new_fwords[dst + 4 * kept + j] = s_lon[keep_from + j]
        cursor = dst + COLUMNS * kept
        new_offsets[g + 1] = cursor
    return new_words[:cursor], new_offsets, -1
