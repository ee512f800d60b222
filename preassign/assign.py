"""Box assignment for one partition of users (pure numpy), exactly as SPEC §3.

Design
------
Each stage of the greedy fill is "walk the stage's candidates in order, skip a
snack whose genre already has ``max_per_genre`` snacks in the box, stop when the
box reaches the stage's target". Two facts make that a whole-partition array
operation instead of a per-user loop:

1. The order of a stage is encoded in one int64 per (user, snack): the rounded
   key (score, explore key, or request time rank) in the high bits and the
   inverted column (snack id ascending) in the low bits, so "key descending,
   then snack_id ascending" is plain integer descending order, ties exact.
2. Within a stage a candidate of genre g is taken iff its rank among the stage's
   candidates of genre g is below ``max_per_genre`` minus the box's count of g
   before the stage, and it is among the first ``need`` such admissible
   candidates. Admissibility does not depend on where the stage stops, so only
   the top ``max_per_genre`` candidates of each genre matter: each stage works
   on ``users x (genres x cap)`` keys (``np.partition`` per genre), not on
   every snack, and a sort of those few keys gives the stage's picks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .params import Params
from .state import SnackCatalog, SparseState, UserState

__all__ = [
    "STAGES",
    "jitter",
    "score_matrix",
    "explore_key_matrix",
    "assign_snacks",
    "assign_snacks_sparse",
    "snack_prior",
]

STAGES = ("request", "preference", "explore", "fallback")

_SENTINEL = np.iinfo(np.int64).min
_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_C2 = _U64(0xC2B2AE3D27D4EB4F)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)


def jitter(user_id: np.ndarray, snack_id: np.ndarray, day: np.ndarray) -> np.ndarray:
    """splitmix64 jitter in [0, 1) per (user, snack, date), broadcasting its arguments.

    ``day`` is days since 1970-01-01. All arithmetic is modulo 2**64 (uint64 wrap).

    Examples:
        >>> float(jitter(np.array([1]), np.array([1]), np.array([20788]))[0])
        0.7564211760476489
    """
    u = np.asarray(user_id, np.int64).astype(_U64)
    s = np.asarray(snack_id, np.int64).astype(_U64)
    e = np.asarray(day, np.int64).astype(_U64)
    with np.errstate(over="ignore"):
        x = u * _GOLDEN + s * _C2 + e
        z = (x ^ (x >> _U64(30))) * _M1
        z = (z ^ (z >> _U64(27))) * _M2
        z = z ^ (z >> _U64(31))
    return (z >> _U64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def snack_prior(rating_sum: np.ndarray, rating_count: np.ndarray, params: Params) -> np.ndarray:
    """prior(s) = (S + m*C) / (n + m), C the mean of all latest ratings (2.5 if none)."""
    total_n = int(rating_count.sum())
    c = int(rating_sum.sum()) / total_n if total_n else 2.5
    m = params.prior_weight
    return (rating_sum.astype(np.float64) + m * c) / (rating_count.astype(np.float64) + m)


def score_matrix(state: UserState, catalog: SnackCatalog, prior: np.ndarray, params: Params) -> np.ndarray:
    """score(u, s), unrounded, terms added left to right as SPEC §3 writes them."""
    own_of = np.array(
        [0.0, 0.0, params.own_weight_2, params.own_weight_3, params.own_weight_4], np.float64
    )
    score = prior[None, :] + own_of[state.rating]
    score += params.genre_weight * state.affinity[:, catalog.genre]
    score += params.favorite_genre_bonus * state.favorite[:, catalog.genre]
    return score


def explore_key_matrix(
    state: UserState, catalog: SnackCatalog, prior: np.ndarray, params: Params
) -> np.ndarray:
    """explore_key(u, s, d) = prior + new_bonus*[new on d] + explore_jitter*jitter, unrounded."""
    d = state.delivery_on[:, None].astype(np.int64)
    launched = catalog.launched_on[None, :].astype(np.int64)
    is_new = (d - params.new_days < launched) & (launched <= d)
    key = prior[None, :] + params.new_bonus * is_new
    key += params.explore_jitter * jitter(state.user_id[:, None], catalog.snack_id[None, :], d)
    return key


def _bits(n: int) -> int:
    return max(1, int(n - 1).bit_length())


def _ordered_keys(values: np.ndarray, bits: int) -> np.ndarray:
    """Round like ``numpy.round(x, 6)`` and pack (value desc, column asc) into int64."""
    micro = np.rint(values * 1e6)  # numpy.round(x, 6) orders exactly as rint(x * 1e6)
    limit = float(2 ** (62 - bits))
    if micro.size and np.abs(micro).max() >= limit:
        raise OverflowError(
            f"a score or explore key of magnitude {np.abs(micro).max() / 1e6:.3g} is too large "
            "to order exactly; check the rule parameters"
        )
    n_cols = values.shape[1]
    low = (2**bits - 1) - np.arange(n_cols, dtype=np.int64)
    return (micro.astype(np.int64) << bits) | low[None, :]


def _select(
    keys: np.ndarray,
    candidate: np.ndarray,
    genre_cols: list[np.ndarray],
    genre_count: np.ndarray,
    cap: int,
    need: np.ndarray,
    bits: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Take each user's first ``need`` admissible candidates in descending key order.

    Returns:
        ``(row, column, position)``: picks in order, position 0.. within the stage.
    """
    n_u = keys.shape[0]
    if n_u == 0 or not need.any():
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    vals = np.where(candidate, keys, _SENTINEL)
    blocks = []
    for g, cols in enumerate(genre_cols):
        blk = vals[:, cols]
        if blk.shape[1] > cap:
            blk = np.partition(blk, blk.shape[1] - cap, axis=1)[:, -cap:]
        blk = np.sort(blk, axis=1)[:, ::-1]
        if blk.shape[1] < cap:
            pad = np.full((n_u, cap - blk.shape[1]), _SENTINEL, np.int64)
            blk = np.concatenate([blk, pad], axis=1)
        remaining = cap - genre_count[:, g]
        blocks.append(np.where(np.arange(cap)[None, :] < remaining[:, None], blk, _SENTINEL))
    cand = np.sort(np.concatenate(blocks, axis=1), axis=1)[:, ::-1]
    take = (cand != _SENTINEL) & (np.arange(cand.shape[1])[None, :] < need[:, None])
    row, pos = np.nonzero(take)
    col = (2**bits - 1) - (cand[row, pos] & (2**bits - 1))
    return row, col, pos


def assign_snacks(
    state: UserState, catalog: SnackCatalog, prior: np.ndarray, params: Params
) -> pd.DataFrame:
    """Fill every target user's box in the four stages of SPEC §3.

    Args:
        state: the partition's user state.
        catalog: the snack catalog (column order = snack id ascending).
        prior: prior(s) per catalog column.
        params: rule parameters.

    Returns:
        One row per chosen snack: ``delivery_on`` (int32 days), ``user_id``,
        ``slot`` (1..K), ``snack_id``, ``stage`` (index into :data:`STAGES`) and
        ``box_size`` (K, for the summary), ordered by user and slot.
    """
    n_u, n_s, n_g = state.n_users, catalog.size, len(catalog.genres)
    cap = params.max_per_genre
    bits = _bits(n_s)
    k = state.box_size.astype(np.int64)
    d = state.delivery_on[:, None]
    eligible = (
        (catalog.launched_on[None, :] <= d)
        & (catalog.retired_on[None, :] > d)
        & ~state.ng
        & ~state.conflict
        & (state.rating != 1)
        & ~state.delivered_recent
    )
    genre_cols = [np.flatnonzero(catalog.genre == g) for g in range(n_g)]
    chosen = np.zeros((n_u, n_s), bool)
    genre_count = np.zeros((n_u, n_g), np.int64)
    count = np.zeros(n_u, np.int64)
    picks: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []

    def run(stage: int, keys: np.ndarray, candidate: np.ndarray, target: np.ndarray) -> None:
        need = np.maximum(target - count, 0)
        row, col, pos = _select(keys, candidate, genre_cols, genre_count, cap, need, bits)
        slot = count[row] + pos + 1
        chosen[row, col] = True
        np.add.at(genre_count, (row, catalog.genre[col]), 1)
        count[:] += np.bincount(row, minlength=n_u)
        picks.append((row, col, slot, stage))

    # 1. request: earliest qualifying request first, then snack id
    if len(state.request_row):
        rank = np.unique(state.request_at, return_inverse=True)[1].reshape(-1)
        req_keys = np.full((n_u, n_s), _SENTINEL, np.int64)
        low = (2**bits - 1) - state.request_col
        req_keys[state.request_row, state.request_col] = ((rank.max() - rank) << bits) | low
        requested = req_keys != _SENTINEL
        run(0, req_keys, eligible & requested, np.minimum(params.max_requests, k))
        del req_keys, requested
    # 2. preference and 4. fallback share the score order
    score_keys = _ordered_keys(score_matrix(state, catalog, prior, params), bits)
    run(1, score_keys, eligible & ~chosen, k - params.explore_slots)
    # 3. explore: novel snacks only
    if (count < k).any():
        novel = ~state.delivered_ever & (state.rating == 0)
        explore_keys = _ordered_keys(explore_key_matrix(state, catalog, prior, params), bits)
        run(2, explore_keys, eligible & novel & ~chosen, k)
        del explore_keys
    if (count < k).any():
        run(3, score_keys, eligible & ~chosen, k)

    row = np.concatenate([p[0] for p in picks]) if picks else np.zeros(0, np.int64)
    col = np.concatenate([p[1] for p in picks]) if picks else np.zeros(0, np.int64)
    slot = np.concatenate([p[2] for p in picks]) if picks else np.zeros(0, np.int64)
    stage = np.concatenate([np.full(len(p[0]), p[3], np.int8) for p in picks]) if picks \
        else np.zeros(0, np.int8)
    order = np.lexsort((slot, row))
    row, col, slot, stage = row[order], col[order], slot[order], stage[order]
    return pd.DataFrame(
        {
            "delivery_on": state.delivery_on[row].astype(np.int32),
            "user_id": state.user_id[row],
            "slot": slot.astype(np.int16),
            "snack_id": catalog.snack_id[col] if n_s else np.zeros(0, np.int64),
            "stage": stage,
            "box_size": state.box_size[row].astype(np.int16),
        }
    )


def assign_snacks_sparse(
    state: SparseState, catalog: SnackCatalog, prior: np.ndarray, params: Params
) -> pd.DataFrame:
    """:func:`assign_snacks` computed by the compiled kernel from the sparse state.

    Same result, same frame; the tests hold the two equal on random lakes.
    """
    from .kernel import assign_partition
    from .state import ingredient_words

    n_s = catalog.size
    bits = _bits(n_s)
    n_g = max(len(catalog.genres), 1)
    favorite = state.favorite if state.favorite.shape[1] else np.zeros((state.n_users, 1), bool)
    prior = np.asarray(prior, np.float64)
    cols = np.arange(n_s)
    genre = catalog.genre.astype(np.int64)
    # walk orders for the kernel: per genre, by prior (preference) and, per delivery day, by
    # prior + new bonus (explore), descending
    pref_order = np.lexsort((cols, -prior, genre)).astype(np.int64)
    genre_start = np.searchsorted(genre[pref_order], np.arange(n_g + 1)).astype(np.int64)
    days, day_row = np.unique(state.delivery_on.astype(np.int64), return_inverse=True)
    launched = catalog.launched_on.astype(np.int64)[None, :]
    is_new = (days[:, None] - params.new_days < launched) & (launched <= days[:, None])
    base = prior[None, :] + params.new_bonus * is_new
    explore_order = np.empty((len(days), n_s), np.int64)
    for k in range(len(days)):
        explore_order[k] = np.lexsort((cols, -base[k], genre))
    row, col, slot, stage, overflow = assign_partition(
        state.user_id, state.delivery_on, state.box_size,
        state.r_ptr, state.r_col, state.r_val, state.r_t,
        state.d_ptr, state.d_col, state.d_day,
        state.n_ptr, state.n_col,
        state.q_ptr, state.q_col, state.q_t,
        state.avoid_words, favorite,
        catalog.snack_id, catalog.genre.astype(np.int64), catalog.launched_on.astype(np.int64),
        catalog.retired_on.astype(np.int64), prior,
        ingredient_words(catalog),
        pref_order, explore_order, genre_start, day_row.reshape(-1).astype(np.int64),
        bits, params.max_requests, params.request_window_days, params.repeat_window_days,
        params.explore_slots, params.max_per_genre,
        float(params.own_weight_2), float(params.own_weight_3), float(params.own_weight_4),
        float(params.genre_weight), float(params.favorite_genre_bonus), params.new_days,
        float(params.new_bonus), float(params.explore_jitter), n_g,
    )
    if overflow:
        raise OverflowError(
            "a score or explore key is too large to order exactly; check the rule parameters")
    return pd.DataFrame(
        {
            "delivery_on": state.delivery_on[row].astype(np.int32),
            "user_id": state.user_id[row],
            "slot": slot.astype(np.int16),
            "snack_id": catalog.snack_id[col] if n_s else np.zeros(0, np.int64),
            "stage": stage.astype(np.int8),
            "box_size": state.box_size[row].astype(np.int16),
        }
    )
