"""The dense engine: readable numpy over ``users x snacks`` arrays (the reference engine).

Design
------
The old system built one Python object per user. Here a partition of users becomes a
handful of dense ``users x snacks`` arrays (:class:`UserState`): the latest rating, ever
and recently delivered, NG, ingredient conflicts, plus per ``users x genres`` the
favourites and the genre affinity. A lineup of a few hundred snacks makes these a few
hundred bytes per user, so memory is bounded by the partition size.

Each stage of the greedy fill is "walk the stage's candidates in order, skip a snack
whose genre already has ``max_per_genre`` snacks in the box, stop when the box reaches
the stage's target". Two facts make that a whole-partition array operation:

1. The order of a stage is encoded in one int64 per (user, snack): the rounded key
   (score, explore key, or request time rank) in the high bits and the inverted column
   (snack id ascending) in the low bits, so "key descending, then snack_id ascending" is
   plain integer descending order, ties exact.
2. Within a stage a candidate of genre g is taken iff its rank among the stage's
   candidates of genre g is below ``max_per_genre`` minus the box's count of g before the
   stage, and it is among the first ``need`` such admissible candidates. So only the top
   ``max_per_genre`` candidates of each genre matter: each stage sorts ``users x (genres x
   cap)`` keys, not every snack.

The fast engine (:mod:`preassign.core.sparse`) must give exactly these boxes; the tests
hold the two equal on hundreds of random lakes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd

from . import rules
from .catalog import SnackCatalog, favorite_matrix, lookup, name_positions
from .params import Params
from .partition import select_targets
from .stock import Cutoffs, available, box_keys

__all__ = [
    "ASSIGNMENT_COLUMNS",
    "UserState",
    "assign_snacks",
    "assignment_frame",
    "build_user_state",
    "explore_key_matrix",
    "latest_ratings",
    "ordered_keys",
    "score_matrix",
]

_SENTINEL = np.iinfo(np.int64).min

#: Columns of the engines' assignment frame (delivery days as int32, stage as its index).
ASSIGNMENT_COLUMNS = ("delivery_on", "user_id", "slot", "snack_id", "stage", "box_size")


@dataclasses.dataclass
class UserState:
    """Dense state of one partition's target users (rows) against the catalog (columns)."""

    user_id: np.ndarray  # (U,) int64, ascending
    delivery_on: np.ndarray  # (U,) int32 days
    box_size: np.ndarray  # (U,) int64
    rating: np.ndarray  # (U, S) int8, 0 = never rated
    delivered_ever: np.ndarray  # (U, S) bool
    delivered_recent: np.ndarray  # (U, S) bool, inside the user's repeat window
    ng: np.ndarray  # (U, S) bool
    conflict: np.ndarray  # (U, S) bool, an avoided ingredient is in the snack
    favorite: np.ndarray  # (U, G) bool
    affinity: np.ndarray  # (U, G) float64
    request_row: np.ndarray  # (R,) row of each qualifying (user, snack) request
    request_col: np.ndarray  # (R,) its snack column
    request_at: np.ndarray  # (R,) earliest qualifying requested_at, ns

    @property
    def n_users(self) -> int:
        """Number of target users in the partition."""
        return len(self.user_id)

    def take(self, rows: np.ndarray) -> UserState:
        """The state of the users at ``rows`` only (same column order)."""
        rows = np.asarray(rows, np.int64)
        new_row = np.full(self.n_users, -1, np.int64)
        new_row[rows] = np.arange(len(rows))
        keep = new_row[self.request_row] >= 0
        return UserState(
            user_id=self.user_id[rows], delivery_on=self.delivery_on[rows],
            box_size=self.box_size[rows], rating=self.rating[rows],
            delivered_ever=self.delivered_ever[rows], delivered_recent=self.delivered_recent[rows],
            ng=self.ng[rows], conflict=self.conflict[rows], favorite=self.favorite[rows],
            affinity=self.affinity[rows], request_row=new_row[self.request_row[keep]],
            request_col=self.request_col[keep], request_at=self.request_at[keep])


def latest_ratings(ratings: pd.DataFrame) -> pd.DataFrame:
    """Latest rating per (user, snack): greatest ``rated_at``, ties -> smallest rating.

    Examples:
        >>> r = pd.DataFrame({"user_id": [1, 1, 1], "snack_id": [5, 5, 5],
        ...                   "rating": [4, 2, 1], "rated_at": [10, 10, 3]})
        >>> latest_ratings(r)[["user_id", "snack_id", "rating"]].to_dict("records")
        [{'user_id': 1, 'snack_id': 5, 'rating': 2}]
    """
    u = ratings["user_id"].to_numpy(np.int64)
    s = ratings["snack_id"].to_numpy(np.int64)
    r = ratings["rating"].to_numpy(np.int8)
    t = ratings["rated_at"].to_numpy(np.int64)
    if len(u) == 0:
        return pd.DataFrame({"user_id": u, "snack_id": s, "rating": r})
    # (user, snack, rated_at desc, rating asc): the first row of each pair wins.
    order = np.lexsort((r, ~t, s, u))  # ~t orders descending without overflow
    u, s, r = u[order], s[order], r[order]
    first = np.ones(len(u), bool)
    first[1:] = (u[1:] != u[:-1]) | (s[1:] != s[:-1])
    return pd.DataFrame({"user_id": u[first], "snack_id": s[first], "rating": r[first]})


def build_user_state(
    tables: dict[str, pd.DataFrame],
    catalog: SnackCatalog,
    date_from: dt.date,
    date_to: dt.date,
    params: Params,
) -> UserState:
    """Build the dense state of the partition's target users.

    Args:
        tables: normalised, orphan-free tables of one partition
            (:func:`preassign.core.partition.prepare_partition`).
        catalog: the snack catalog.
        date_from: first delivery date of the run.
        date_to: last delivery date of the run (inclusive).
        params: rule parameters.

    Returns:
        The partition's :class:`UserState`, rows ordered by ``user_id``.
    """
    targets = select_targets(tables["users"], date_from, date_to, params)
    uid, day = targets.user_id, targets.delivery_on
    n_u, n_s, n_g = len(uid), catalog.size, len(catalog.genres)

    def rows_cols(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        frame = tables[name]
        row, hit = lookup(uid, frame["user_id"].to_numpy(np.int64))
        col = catalog.columns_of(frame["snack_id"].to_numpy(np.int64))[0] if "snack_id" in frame \
            else np.zeros(len(frame), np.int64)
        return row, col, hit

    # latest ratings
    latest = latest_ratings(tables["ratings"])
    row, hit = lookup(uid, latest["user_id"].to_numpy(np.int64))
    col = catalog.columns_of(latest["snack_id"].to_numpy(np.int64))[0]
    rating = np.zeros((n_u, n_s), np.int8)
    r = latest["rating"].to_numpy(np.int8)
    rating[row[hit], col[hit]] = r[hit]

    # genre affinity: mean of the user's latest ratings in g minus their overall mean
    cell = row[hit] * n_g + catalog.genre[col[hit]]
    sum_ug = np.bincount(cell, weights=r[hit].astype(np.float64), minlength=n_u * n_g)
    cnt_ug = np.bincount(cell, minlength=n_u * n_g).astype(np.float64)
    sum_ug, cnt_ug = sum_ug.reshape(n_u, n_g), cnt_ug.reshape(n_u, n_g)
    sum_u, cnt_u = sum_ug.sum(axis=1), cnt_ug.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        affinity = rules.affinity(sum_ug, cnt_ug, sum_u[:, None], cnt_u[:, None])

    # deliveries: ever, and inside the repeat window
    row, col, hit = rows_cols("deliveries")
    on = tables["deliveries"]["delivered_on"].to_numpy(np.int32)[hit]
    row, col = row[hit], col[hit]
    delivered_ever = np.zeros((n_u, n_s), bool)
    delivered_ever[row, col] = True
    recent = rules.in_window(on, day[row], params.repeat_window_days)
    delivered_recent = np.zeros((n_u, n_s), bool)
    delivered_recent[row[recent], col[recent]] = True

    row, col, hit = rows_cols("ng_snacks")
    ng = np.zeros((n_u, n_s), bool)
    ng[row[hit], col[hit]] = True

    # avoided ingredients -> conflicting snacks, via users x ingredients @ ingredients x snacks
    avoid = tables["avoid_ingredients"]
    row, hit = lookup(uid, avoid["user_id"].to_numpy(np.int64))
    conflict = np.zeros((n_u, n_s), bool)
    if catalog.ingredients and hit.any():
        k, known = name_positions(catalog.ingredients, avoid["ingredient"].to_numpy(object), hit)
        avoids = np.zeros((n_u, len(catalog.ingredients)), np.float32)
        avoids[row[known], k[known]] = 1.0
        conflict = (avoids @ catalog.has_ingredient.T.astype(np.float32)) > 0

    prefs = tables["genre_prefs"]
    row, hit = lookup(uid, prefs["user_id"].to_numpy(np.int64))
    favorite = favorite_matrix(prefs["genre"].to_numpy(object), row, hit, catalog, n_u)

    # requests whose UTC date lies in the request window; earliest per (user, snack)
    row, col, hit = rows_cols("requests")
    at = tables["requests"]["requested_at"].to_numpy(np.int64)[hit]
    row, col = row[hit], col[hit]
    ok = rules.in_window(np.floor_divide(at, rules.NS_PER_DAY), day[row],
                         params.request_window_days)
    row, col, at = row[ok], col[ok], at[ok]
    order = np.lexsort((at, col, row))
    row, col, at = row[order], col[order], at[order]
    first = np.ones(len(row), bool)
    first[1:] = (row[1:] != row[:-1]) | (col[1:] != col[:-1])

    return UserState(
        user_id=uid,
        delivery_on=day,
        box_size=targets.box_size,
        rating=rating,
        delivered_ever=delivered_ever,
        delivered_recent=delivered_recent,
        ng=ng,
        conflict=conflict,
        favorite=favorite,
        affinity=affinity,
        request_row=row[first],
        request_col=col[first],
        request_at=at[first],
    )


def score_matrix(state: UserState, catalog: SnackCatalog, prior: np.ndarray,
                 params: Params) -> np.ndarray:
    """score(u, s), unrounded (:func:`preassign.core.rules.score`)."""
    return rules.score(prior[None, :], rules.own_weights(params)[state.rating],
                       state.affinity[:, catalog.genre], state.favorite[:, catalog.genre],
                       params.genre_weight, params.favorite_genre_bonus)


def explore_key_matrix(
    state: UserState, catalog: SnackCatalog, prior: np.ndarray, params: Params
) -> np.ndarray:
    """explore_key(u, s, d), unrounded (:func:`preassign.core.rules.explore_key`)."""
    d = state.delivery_on[:, None].astype(np.int64)
    new = rules.is_new(catalog.launched_on[None, :].astype(np.int64), d, params.new_days)
    jit = rules.jitter(state.user_id[:, None], catalog.snack_id[None, :], d)
    return rules.explore_key(prior[None, :], new, jit, params.new_bonus, params.explore_jitter)


def key_bits(n_snacks: int) -> int:
    """Low bits a packed key needs for the (inverted) snack column."""
    return max(1, int(n_snacks - 1).bit_length())


def ordered_keys(values: np.ndarray, bits: int) -> np.ndarray:
    """Round like ``numpy.round(x, 6)`` and pack (value desc, column asc) into int64.

    Raises:
        OverflowError: a value too large to order exactly (absurd rule parameters).
    """
    micro = rules.micro_units(values)
    limit = rules.key_limit(bits)
    if micro.size and np.abs(micro).max() >= limit:
        raise OverflowError(
            f"a score or explore key of magnitude {np.abs(micro).max() / rules.KEY_SCALE:.3g} is "
            "too large to order exactly; check the rule parameters"
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


def eligible_matrix(state: UserState, catalog: SnackCatalog,
                    cutoffs: Cutoffs | None = None) -> np.ndarray:
    """Eligibility rules 1-5 of SPEC §3 per (user, snack), and SPEC §6's availability."""
    d = state.delivery_on[:, None].astype(np.int64)
    eligible = (
        rules.in_lineup(catalog.launched_on[None, :].astype(np.int64),
                        catalog.retired_on[None, :].astype(np.int64), d)
        & ~state.ng
        & ~state.conflict
        & (state.rating != rules.DISLIKE)
        & ~state.delivered_recent
    )
    if cutoffs is not None and cutoffs.limited.any():
        day, jit, uid = box_keys(state.user_id, state.delivery_on)
        eligible &= available(cutoffs, np.arange(catalog.size)[None, :], day[:, None],
                              jit[:, None], uid[:, None])
    return eligible


def assign_snacks(
    state: UserState, catalog: SnackCatalog, prior: np.ndarray, params: Params,
    cutoffs: Cutoffs | None = None, users: np.ndarray | None = None,
) -> pd.DataFrame:
    """Fill every target user's box in the four stages of SPEC §3.

    Args:
        state: the partition's user state.
        catalog: the snack catalog (column order = snack id ascending).
        prior: prior(s) per catalog column.
        params: rule parameters.
        cutoffs: SPEC §6 cutoffs: a limited snack is ineligible for the boxes after its
            cutoff (None: every snack available).
        users: fill only these users' boxes (bool per user; None: all).

    Returns:
        The engines' assignment frame (:data:`ASSIGNMENT_COLUMNS`): one row per chosen
        snack, ``delivery_on`` as int32 days, ``stage`` as the index into
        :data:`preassign.core.rules.STAGES`, ``box_size`` K; ordered by user and slot.
    """
    if users is not None:
        state = state.take(np.flatnonzero(users))
    n_u, n_s, n_g = state.n_users, catalog.size, len(catalog.genres)
    cap = params.max_per_genre
    bits = key_bits(n_s)
    k = state.box_size.astype(np.int64)
    eligible = eligible_matrix(state, catalog, cutoffs)
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
        run(rules.STAGE_REQUEST, req_keys, eligible & requested,
            np.minimum(params.max_requests, k))
        del req_keys, requested
    # 2. preference and 4. fallback share the score order
    score_keys = ordered_keys(score_matrix(state, catalog, prior, params), bits)
    run(rules.STAGE_PREFERENCE, score_keys, eligible & ~chosen, k - params.explore_slots)
    # 3. explore: novel snacks only
    if (count < k).any():
        novel = ~state.delivered_ever & (state.rating == 0)
        explore_keys = ordered_keys(explore_key_matrix(state, catalog, prior, params), bits)
        run(rules.STAGE_EXPLORE, explore_keys, eligible & novel & ~chosen, k)
        del explore_keys
    if (count < k).any():
        run(rules.STAGE_FALLBACK, score_keys, eligible & ~chosen, k)

    def joined(i: int, dtype: type) -> np.ndarray:
        return np.concatenate([p[i] for p in picks]) if picks else np.zeros(0, dtype)

    row, col, slot = joined(0, np.int64), joined(1, np.int64), joined(2, np.int64)
    stage = np.concatenate([np.full(len(p[0]), p[3], np.int8) for p in picks]) if picks \
        else np.zeros(0, np.int8)
    order = np.lexsort((slot, row))
    return assignment_frame(state.user_id, state.delivery_on, state.box_size, catalog,
                            row[order], col[order], slot[order], stage[order])


def assignment_frame(user_id: np.ndarray, delivery_on: np.ndarray, box_size: np.ndarray,
                     catalog: SnackCatalog, row: np.ndarray, col: np.ndarray, slot: np.ndarray,
                     stage: np.ndarray) -> pd.DataFrame:
    """The engines' assignment frame from picks given as (user row, snack column, slot, stage)."""
    return pd.DataFrame(
        {
            "delivery_on": delivery_on[row].astype(np.int32),
            "user_id": user_id[row],
            "slot": slot.astype(np.int16),
            "snack_id": catalog.snack_id[col] if catalog.size else np.zeros(0, np.int64),
            "stage": stage.astype(np.int8),
            "box_size": box_size[row].astype(np.int64),
        }
    )


def rating_totals(tables: dict[str, pd.DataFrame], catalog: SnackCatalog
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per snack column: sum and count of the partition's latest ratings."""
    latest = latest_ratings(tables["ratings"])
    col, _ = catalog.columns_of(latest["snack_id"].to_numpy(np.int64))
    rating = latest["rating"].to_numpy(np.int64)
    sums = np.bincount(col, weights=rating, minlength=catalog.size).astype(np.int64)
    counts = np.bincount(col, minlength=catalog.size).astype(np.int64)
    return sums, counts

