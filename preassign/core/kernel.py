"""Compiled per-partition kernels (numba): the fast path of ``state`` + ``assign``.

The dense engine (:mod:`preassign.core.dense`) is the readable, tested reference; these
kernels compute exactly the same boxes (the tests compare them on hundreds of
random lakes) from a sparse, per-user (CSR) form of the partition, one user at
a time in compiled code, touching each (user, snack) cell a handful of times:

* latest ratings are resolved per user in a scratch row (no global sort),
* eligibility, scores and explore keys are computed for that user's snacks with the
  formulas of :mod:`preassign.core.rules` - the very functions the dense engine applies
  to whole arrays, so the float64 results are the same bits,
* each stage keeps only the best ``max_per_genre`` candidates of each genre
  (the only ones that can be chosen) and walks them greedily;
* and it does not even score every snack: within a genre, an unrated snack's
  score is a monotone function of its prior (the user's genre terms are the same
  for the whole genre), and an explore key is at most ``prior + new bonus +
  max(explore_jitter, 0)``. So each genre is walked in prior (or prior + new
  bonus) order and the walk stops at the first candidate whose rounded key - or
  bound - is strictly below the genre's current ``max_per_genre``-th. Rated
  snacks (a user's few dozen) are scored one by one. Equal rounded keys are never
  cut off, so ties still go to the smaller snack id.

Keys are the same packed int64 as the dense engine: ``rint(x * 1e6)`` (the order of
``numpy.round(x, 6)``) in the high bits, the inverted snack column in the low bits.

The inputs travel as three named tuples (:class:`preassign.core.sparse.SparseState`, the
partition's users; :class:`preassign.core.sparse.SnackArrays`, the catalog with this run's
walk orders; :class:`preassign.core.sparse.RuleValues`, the parameters as numbers), which
numba compiles like structs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import rules

_I64_MIN = np.iinfo(np.int64).min
_I64_MAX = np.iinfo(np.int64).max
_NS_PER_DAY = rules.NS_PER_DAY
_DISLIKE = rules.DISLIKE
_REQUEST, _PREFERENCE, _EXPLORE, _FALLBACK = (rules.STAGE_REQUEST, rules.STAGE_PREFERENCE,
                                               rules.STAGE_EXPLORE, rules.STAGE_FALLBACK)

# flags per (user, snack) in the scratch row
_EVER = 1
_RECENT = 2
_NG = 4
_CHOSEN = 8
_SEEN = 16
_OFFERED = 32
_UNAVAILABLE = 64  # SPEC §6: the snack's cutoff excludes this box
_TOP = np.iinfo(np.int64).max


@njit(cache=True, nogil=True)
def latest_rating_sums(ptr, col, rating, rated_at, n_snacks):  # pragma: no cover - compiled
    """Per snack, the sum and count of latest ratings over the users of a CSR partition."""
    sums = np.zeros(n_snacks, np.int64)
    counts = np.zeros(n_snacks, np.int64)
    best_t = np.full(n_snacks, _I64_MIN, np.int64)
    best_r = np.zeros(n_snacks, np.int8)
    for u in range(len(ptr) - 1):
        a, b = ptr[u], ptr[u + 1]
        for i in range(a, b):
            c, t, r = col[i], rated_at[i], rating[i]
            if best_r[c] == 0 or t > best_t[c] or (t == best_t[c] and r < best_r[c]):
                best_t[c] = t
                best_r[c] = r
        for i in range(a, b):
            c = col[i]
            if best_r[c] != 0:
                sums[c] += best_r[c]
                counts[c] += 1
                best_r[c] = 0
                best_t[c] = _I64_MIN
    return sums, counts


@njit(cache=True, nogil=True)
def _pack(x, low, bits, limit):  # pragma: no cover - compiled
    micro = rules.micro_units(x)
    if not (abs(micro) < limit):
        return _I64_MIN, True
    return (np.int64(micro) << bits) | low, False


@njit(cache=True, nogil=True, inline="always")
def _eligible(c, d, u, launched, retired, flags, rating, ing_words, avoid_words,
              n_words):  # pragma: no cover - compiled
    """Rules 1-5 of SPEC §3 for snack column c and the current user."""
    if not rules.in_lineup(np.int64(launched[c]), np.int64(retired[c]), d):
        return False
    if flags[c] & (_NG | _RECENT | _UNAVAILABLE) or rating[c] == _DISLIKE:
        return False
    for w in range(n_words):
        if ing_words[c, w] & avoid_words[u, w]:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _score_key(c, g, u, rating, prior, own_of, sum_g, cnt_g, sum_u, cnt_u, favorite,
               genre_weight, fav_bonus, mask, bits, limit):  # pragma: no cover
    """score(u, c) packed as a key (:func:`preassign.core.rules.score`)."""
    aff = rules.affinity(sum_g[g], cnt_g[g], sum_u, cnt_u)
    x = rules.score(prior[c], own_of[rating[c]], aff, 1.0 if favorite[u, g] else 0.0,
                    genre_weight, fav_bonus)
    return _pack(x, mask - c, bits, limit)


@njit(cache=True, nogil=True)
def _offer(top, n_top, g, key, cap):  # pragma: no cover - compiled
    """Insert ``key`` into genre g's descending top-``cap`` list."""
    n = n_top[g]
    if n == cap and key <= top[g, cap - 1]:
        return
    j = n if n < cap else cap - 1
    while j > 0 and top[g, j - 1] < key:
        top[g, j] = top[g, j - 1]
        j -= 1
    top[g, j] = key
    if n < cap:
        n_top[g] = n + 1


@njit(cache=True, nogil=True)
def _rooms(room, genre_count, cap, n_genres):  # pragma: no cover - compiled
    """Per genre, how many more snacks of it the box may take (``cap`` minus those in it)."""
    for g in range(n_genres):
        room[g] = cap - genre_count[g]


@njit(cache=True, nogil=True)
def _merge_best(best, n_best, top, n_top, g, need):  # pragma: no cover - compiled
    """Merge genre g's final list into ``best``, the stage's descending top-``need`` keys.

    Once ``best`` holds ``need`` keys its last one is a threshold: a candidate below it
    cannot be chosen. Every key in ``best`` lies within its genre's first ``room`` keys, so
    the greedy walk takes each of them before reaching the candidate (its genre cannot be
    full yet), and ``need`` keys fill the stage.
    """
    for k in range(n_top[g]):
        key = top[g, k]
        if n_best == need and key <= best[need - 1]:
            break  # the list is descending: the rest are smaller still
        j = n_best if n_best < need else need - 1
        while j > 0 and best[j - 1] < key:
            best[j] = best[j - 1]
            j -= 1
        best[j] = key
        if n_best < need:
            n_best += 1
    return n_best


@njit(cache=True, nogil=True)
def _take(top, n_top, merged, genre_count, genre_of_col, cap, count, target, mask,
          out_col, out_slot, out_stage, out_user, n_out, u, stage, flags,
          n_genres):  # pragma: no cover - compiled
    """Walk the merged top-per-genre candidates in key order; fill up to ``target``."""
    m = 0
    for g in range(n_genres):  # merge the per-genre lists, descending (insertion: m is small)
        for k in range(n_top[g]):
            key = top[g, k]
            j = m
            while j > 0 and merged[j - 1] < key:
                merged[j] = merged[j - 1]
                j -= 1
            merged[j] = key
            m += 1
        n_top[g] = 0
    for k in range(m):
        if count >= target:
            break
        count, n_out = _choose(mask - (merged[k] & mask), u, stage, count, n_out, genre_of_col,
                               genre_count, cap, flags, out_user, out_col, out_slot, out_stage)
    return count, n_out


@njit(cache=True, nogil=True, inline="always")
def _choose(c, u, stage, count, n_out, genre_of_col, genre_count, cap, flags, out_user, out_col,
            out_slot, out_stage):  # pragma: no cover - compiled
    """One greedy step: put snack column c in the box unless its genre is full."""
    g = genre_of_col[c]
    if genre_count[g] >= cap:
        return count, n_out
    genre_count[g] += 1
    flags[c] |= _CHOSEN
    count += 1
    out_user[n_out] = u
    out_col[n_out] = c
    out_slot[n_out] = count
    out_stage[n_out] = stage
    return count, n_out + 1


@njit(cache=True, nogil=True)
def assign_partition(users, snacks, values):  # pragma: no cover - compiled; held equal to dense
    """Fill every target user's box; returns (user row, column, slot, stage, overflow).

    Args:
        users: the partition's :class:`preassign.core.sparse.SparseState`.
        snacks: the catalog and walk orders (:class:`preassign.core.sparse.SnackArrays`).
        values: the rule parameters (:class:`preassign.core.sparse.RuleValues`).
    """
    uid, day, box = users.user_id, users.delivery_on, users.box_size
    r_ptr, r_col, r_val, r_t = users.r_ptr, users.r_col, users.r_val, users.r_t
    d_ptr, d_col, d_day = users.d_ptr, users.d_col, users.d_day
    n_ptr, n_col = users.n_ptr, users.n_col
    q_ptr, q_col, q_t = users.q_ptr, users.q_col, users.q_t
    avoid_words, favorite = users.avoid_words, users.favorite
    snack_ids, genre_of_col = snacks.snack_id, snacks.genre
    launched, retired, prior = snacks.launched_on, snacks.retired_on, snacks.prior
    ing_words, pref_order, explore_order = snacks.ingredient_words, snacks.pref_order, \
        snacks.explore_order
    genre_start, day_row, n_genres = snacks.genre_start, snacks.day_row, snacks.n_genres
    active, limited = snacks.active, snacks.limited
    cut_day, cut_jitter, cut_user = snacks.cut_day, snacks.cut_jitter, snacks.cut_user
    bits, max_requests = values.bits, values.max_requests
    request_window, repeat_window = values.request_window_days, values.repeat_window_days
    explore_slots, cap = values.explore_slots, values.max_per_genre
    own_of, genre_weight, fav_bonus = values.own_weights, values.genre_weight, \
        values.favorite_genre_bonus
    new_days, new_bonus, jitter_weight = values.new_days, values.new_bonus, values.explore_jitter
    n_users = len(uid)
    n_snacks = len(genre_of_col)
    total = 0
    for u in range(n_users):
        if active[u]:
            total += min(np.int64(box[u]), np.int64(n_snacks))  # a box holds distinct snacks
    out_user = np.empty(total, np.int64)
    out_col = np.empty(total, np.int64)
    out_slot = np.empty(total, np.int16)
    out_stage = np.empty(total, np.int8)
    n_out = 0
    mask = np.int64((1 << bits) - 1)
    limit = values.key_limit

    best_t = np.full(n_snacks, _I64_MIN, np.int64)
    rating = np.zeros(n_snacks, np.int8)
    flags = np.zeros(n_snacks, np.uint8)
    req_t = np.full(n_snacks, _I64_MAX, np.int64)
    sum_g = np.zeros(n_genres, np.float64)
    cnt_g = np.zeros(n_genres, np.float64)
    genre_count = np.zeros(n_genres, np.int64)
    top = np.empty((n_genres, cap), np.int64)
    n_top = np.zeros(n_genres, np.int64)
    merged = np.empty(n_genres * cap + 1, np.int64)
    room = np.zeros(n_genres, np.int64)
    best = np.empty(n_genres * cap + 1, np.int64)  # a stage takes at most n_genres * cap
    req_cols = np.empty(n_snacks, np.int64)
    req_keys = np.empty(n_snacks, np.int64)
    overflow = False
    n_words = ing_words.shape[1]

    for u in range(n_users):
        if not active[u]:
            continue
        d = np.int64(day[u])
        k_box = np.int64(box[u])
        first_out = n_out
        # SPEC §6: a limited snack is available when this box's key (d, jitter(u, 0, d), u)
        # is at most the snack's cutoff
        if len(limited):
            j = rules.jitter(uid[u], 0, d)
            for i in range(len(limited)):
                c = limited[i]
                cd = cut_day[c]
                if d > cd or (d == cd and (j > cut_jitter[c] or (
                        j == cut_jitter[c] and uid[u] > cut_user[c]))):
                    flags[c] |= _UNAVAILABLE
        # latest ratings, and genre sums over them
        for i in range(r_ptr[u], r_ptr[u + 1]):
            c, t, r = r_col[i], r_t[i], r_val[i]
            if rating[c] == 0 or t > best_t[c] or (t == best_t[c] and r < rating[c]):
                best_t[c] = t
                rating[c] = r
        sum_u = 0.0
        cnt_u = 0.0
        for i in range(r_ptr[u], r_ptr[u + 1]):
            c = r_col[i]
            if flags[c] & _SEEN == 0:
                flags[c] |= _SEEN
                g = genre_of_col[c]
                sum_g[g] += rating[c]
                cnt_g[g] += 1.0
                sum_u += rating[c]
                cnt_u += 1.0
        for i in range(d_ptr[u], d_ptr[u + 1]):
            c = d_col[i]
            flags[c] |= _EVER
            if rules.in_window(np.int64(d_day[i]), d, repeat_window):
                flags[c] |= _RECENT
        for i in range(n_ptr[u], n_ptr[u + 1]):
            flags[n_col[i]] |= _NG
        n_req = 0
        for i in range(q_ptr[u], q_ptr[u + 1]):
            t = q_t[i]
            if rules.in_window(t // _NS_PER_DAY, d, request_window):
                c = q_col[i]
                if req_t[c] == _I64_MAX:
                    req_cols[n_req] = c
                    n_req += 1
                if t < req_t[c]:
                    req_t[c] = t

        count = np.int64(0)
        for g in range(n_genres):
            genre_count[g] = 0
        # 1. request: earliest qualifying request, then snack id
        target = min(np.int64(max_requests), k_box)
        if n_req > 0 and target > 0:
            m = 0
            for j in range(n_req):
                c = req_cols[j]
                if _eligible(c, d, u, launched, retired, flags, rating, ing_words, avoid_words,
                             n_words):
                    req_keys[m] = c
                    m += 1
            # order by (time, column): a small insertion sort
            for a in range(1, m):
                c = req_keys[a]
                b = a
                while b > 0 and (req_t[req_keys[b - 1]] > req_t[c] or (
                        req_t[req_keys[b - 1]] == req_t[c] and req_keys[b - 1] > c)):
                    req_keys[b] = req_keys[b - 1]
                    b -= 1
                req_keys[b] = c
            for j in range(m):
                if count >= target:
                    break
                count, n_out = _choose(req_keys[j], u, _REQUEST, count, n_out, genre_of_col,
                                       genre_count, cap, flags, out_user, out_col, out_slot,
                                       out_stage)
        # 2. preference. Rated snacks are offered one by one; unrated ones are walked per genre
        # in prior order: their score is a monotone function of the prior within a genre, so
        # the walk stops at the first candidate whose rounded score is below the genre's
        # current room-th (equal ones may still win on snack id, so they are offered), or
        # below the stage's need-th best so far over the genres already walked.
        target = k_box - explore_slots
        if count < target:
            need = min(target - count, np.int64(len(best)))
            _rooms(room, genre_count, cap, n_genres)
            for i in range(r_ptr[u], r_ptr[u + 1]):
                c = r_col[i]
                if flags[c] & (_OFFERED | _CHOSEN):
                    continue
                flags[c] |= _OFFERED
                g = genre_of_col[c]
                if room[g] <= 0:
                    continue
                if _eligible(c, d, u, launched, retired, flags, rating, ing_words, avoid_words,
                             n_words):
                    key, bad = _score_key(c, g, u, rating, prior, own_of, sum_g, cnt_g, sum_u,
                                          cnt_u,
                                          favorite, genre_weight, fav_bonus, mask, bits, limit)
                    overflow |= bad
                    _offer(top, n_top, g, key, room[g])
            n_best = 0
            for g in range(n_genres):
                r = room[g]
                if r <= 0:
                    continue
                for j in range(genre_start[g], genre_start[g + 1]):
                    c = pref_order[j]
                    if rating[c] != 0 or flags[c] & _CHOSEN:
                        continue
                    if not _eligible(c, d, u, launched, retired, flags, rating, ing_words,
                                     avoid_words, n_words):
                        continue
                    key, bad = _score_key(c, g, u, rating, prior, own_of, sum_g, cnt_g, sum_u,
                                          cnt_u,
                                          favorite, genre_weight, fav_bonus, mask, bits, limit)
                    overflow |= bad
                    if n_top[g] == r and (key >> bits) < (top[g, r - 1] >> bits):
                        break
                    if n_best == need and (key >> bits) < (best[need - 1] >> bits):
                        break
                    _offer(top, n_top, g, key, r)
                n_best = _merge_best(best, n_best, top, n_top, g, need)
            count, n_out = _take(top, n_top, merged, genre_count, genre_of_col, cap, count,
                                 target, mask, out_col, out_slot, out_stage, out_user, n_out, u,
                                 _PREFERENCE, flags, n_genres)
        # 3. explore: novel snacks by explore key, walked per genre by base = prior + new
        # bonus (descending, for this user's date); a key is at most base + max(jitter
        # weight, 0), so the walk stops once that bound is below the genre's room-th key or
        # the stage's need-th best so far
        if count < k_box:
            row = day_row[u]
            jmax = jitter_weight if jitter_weight > 0.0 else 0.0
            need = min(k_box - count, np.int64(len(best)))
            _rooms(room, genre_count, cap, n_genres)
            n_best = 0
            for g in range(n_genres):
                r = room[g]
                if r <= 0:
                    continue
                for j in range(genre_start[g], genre_start[g + 1]):
                    c = explore_order[row, j]
                    if flags[c] & (_CHOSEN | _EVER | _SEEN) or rating[c] != 0:
                        continue
                    if not _eligible(c, d, u, launched, retired, flags, rating, ing_words,
                                     avoid_words, n_words):
                        continue
                    new = 1.0 if rules.is_new(np.int64(launched[c]), d, new_days) else 0.0
                    base = prior[c] + new_bonus * new
                    if n_top[g] == r or n_best == need:
                        bound = np.rint((base + jmax) * 1e6)
                        if n_top[g] == r and bound < np.float64(top[g, r - 1] >> bits):
                            break
                        if n_best == need and bound < np.float64(best[need - 1] >> bits):
                            break
                    x = rules.explore_key(prior[c], new, rules.jitter(uid[u], snack_ids[c], d),
                                          new_bonus, jitter_weight)
                    key, bad = _pack(x, mask - c, bits, limit)
                    overflow |= bad
                    _offer(top, n_top, g, key, r)
                n_best = _merge_best(best, n_best, top, n_top, g, need)
            count, n_out = _take(top, n_top, merged, genre_count, genre_of_col, cap, count,
                                 k_box, mask, out_col, out_slot, out_stage, out_user, n_out, u,
                                 _EXPLORE, flags, n_genres)
        # 4. fallback (rare: only when too few novel snacks are left): every eligible snack
        if count < k_box:
            for c in range(n_snacks):
                if flags[c] & _CHOSEN:
                    continue
                if _eligible(c, d, u, launched, retired, flags, rating, ing_words, avoid_words,
                             n_words):
                    g = genre_of_col[c]
                    key, bad = _score_key(c, g, u, rating, prior, own_of, sum_g, cnt_g, sum_u,
                                          cnt_u,
                                          favorite, genre_weight, fav_bonus, mask, bits, limit)
                    overflow |= bad
                    _offer(top, n_top, g, key, cap)
            count, n_out = _take(top, n_top, merged, genre_count, genre_of_col, cap, count,
                                 k_box, mask, out_col, out_slot, out_stage, out_user, n_out, u,
                                 _FALLBACK, flags, n_genres)

        # reset the scratch rows: only what this user touched
        for i in range(r_ptr[u], r_ptr[u + 1]):
            c = r_col[i]
            rating[c] = 0
            best_t[c] = _I64_MIN
            flags[c] = 0
        for i in range(q_ptr[u], q_ptr[u + 1]):
            req_t[q_col[i]] = _I64_MAX
        for i in range(d_ptr[u], d_ptr[u + 1]):
            flags[d_col[i]] = 0
        for i in range(n_ptr[u], n_ptr[u + 1]):
            flags[n_col[i]] = 0
        for i in range(first_out, n_out):
            flags[out_col[i]] = 0
        for i in range(len(limited)):
            flags[limited[i]] = 0
        for g in range(n_genres):
            sum_g[g] = 0.0
            cnt_g[g] = 0.0
    return out_user[:n_out], out_col[:n_out], out_slot[:n_out], out_stage[:n_out], overflow

