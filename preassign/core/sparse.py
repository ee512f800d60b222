"""The sparse engine: per-user CSR state and the compiled kernel (the default engine).

A partition's target users keep their rows of each table grouped per user
(:class:`SparseState`, compressed sparse rows: ``x_ptr[u]:x_ptr[u + 1]`` indexes user
``u``'s entries, snacks as catalog columns); :func:`preassign.core.kernel.assign_partition`
then fills each box in compiled code, touching each (user, snack) cell a handful of times
instead of building ``users x snacks`` arrays. It gives exactly the boxes of the dense
engine (:mod:`preassign.core.dense`), which the tests check on hundreds of random lakes.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import numpy as np
import pandas as pd

from . import rules
from .catalog import SnackCatalog, favorite_matrix, lookup, name_positions
from .dense import assignment_frame, key_bits
from .params import Params
from .partition import box_sizes, select_targets
from .stock import Cutoffs

__all__ = [
    "RuleValues",
    "SnackArrays",
    "SparseState",
    "assign_snacks_sparse",
    "build_sparse_state",
    "column_type",
    "rating_totals",
]


class SparseState(NamedTuple):
    """A partition's target users with their rows grouped per user (CSR).

    Ratings keep every row (the kernel resolves the latest); requests keep every row
    (the kernel applies the user's window). Snack references are catalog columns, stored
    as the smallest integer type that holds them (:func:`column_type`). ``box_size`` is the
    size as declared (0 where null): it is resolved with ``default_box_size`` when boxes are
    filled, so one state serves runs with other parameters. Nothing in the state depends on
    the rule parameters.
    """

    user_id: np.ndarray
    delivery_on: np.ndarray
    box_size: np.ndarray
    r_ptr: np.ndarray
    r_col: np.ndarray
    r_val: np.ndarray
    r_t: np.ndarray
    d_ptr: np.ndarray
    d_col: np.ndarray
    d_day: np.ndarray
    n_ptr: np.ndarray
    n_col: np.ndarray
    q_ptr: np.ndarray
    q_col: np.ndarray
    q_t: np.ndarray
    avoid_words: np.ndarray  # (U, W) uint64 bitmask over catalog.ingredients
    favorite: np.ndarray  # (U, G) bool

    @property
    def n_users(self) -> int:
        """Number of target users."""
        return len(self.user_id)


class SnackArrays(NamedTuple):
    """The catalog as the kernel reads it, with this run's walk orders and availability.

    ``pref_order`` lists the columns genre by genre, each genre by prior descending (then
    snack id); ``explore_order[k]`` does the same by ``prior + new bonus`` for the k-th
    distinct delivery day of the partition, and ``day_row[u]`` is user ``u``'s k.
    ``active[u]``: fill user ``u``'s box in this call. ``limited`` lists the columns whose
    cutoff (SPEC §6) is not +∞; ``cut_day``, ``cut_jitter``, ``cut_user`` are the cutoffs
    (:class:`preassign.core.stock.Cutoffs`).
    """

    snack_id: np.ndarray
    genre: np.ndarray
    launched_on: np.ndarray
    retired_on: np.ndarray
    prior: np.ndarray
    ingredient_words: np.ndarray
    pref_order: np.ndarray
    explore_order: np.ndarray
    genre_start: np.ndarray
    day_row: np.ndarray
    n_genres: int
    active: np.ndarray
    limited: np.ndarray
    cut_day: np.ndarray
    cut_jitter: np.ndarray
    cut_user: np.ndarray


class RuleValues(NamedTuple):
    """The rule parameters as plain numbers (and the packing of keys)."""

    bits: int
    key_limit: float
    max_requests: int
    request_window_days: int
    repeat_window_days: int
    explore_slots: int
    max_per_genre: int
    own_weights: np.ndarray
    genre_weight: float
    favorite_genre_bonus: float
    new_days: int
    new_bonus: float
    explore_jitter: float


def column_type(n_snacks: int) -> type:
    """The integer type of catalog columns in a state: int16 up to 32,767 snacks, else int32.

    A state is kept on the workers for a whole session, so its biggest arrays (ratings and
    deliveries, a few dozen rows per user) are stored small.
    """
    return np.int16 if n_snacks <= np.iinfo(np.int16).max else np.int32


def _csr(row: np.ndarray, n_rows: int, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Group entries by row: -> (ptr, *columns reordered); stable within a row."""
    if len(row) and np.any(row[1:] < row[:-1]):
        order = np.argsort(row, kind="stable")
        row = row[order]
        columns = tuple(c[order] for c in columns)
    ptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=n_rows), out=ptr[1:])
    return (ptr, *columns)


def build_sparse_state(
    tables: dict[str, pd.DataFrame],
    catalog: SnackCatalog,
    date_from: dt.date,
    date_to: dt.date,
    params: Params,
) -> SparseState:
    """The sparse counterpart of :func:`preassign.core.dense.build_user_state`."""
    users = tables["users"]
    targets = select_targets(users, date_from, date_to, params)
    uid = targets.user_id
    n_u = len(uid)

    # partition user row -> target row (-1 if not a target); `users` is sorted by user_id
    target_of = np.full(len(users) + 1, -1, np.int64)
    target_of[np.flatnonzero(targets.mask)] = np.arange(n_u)

    def rows(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        if "_urow" in frame:
            row = target_of[frame["_urow"].to_numpy(np.int64)]
            return row, row >= 0
        return lookup(uid, frame["user_id"].to_numpy(np.int64))

    def grouped(name: str, *cols: str) -> tuple[np.ndarray, ...]:
        frame = tables[name]
        row, hit = rows(frame)
        values = []
        for c in cols:
            if c == "snack_id":
                v = frame["_col"].to_numpy(np.int64) if "_col" in frame else \
                    catalog.columns_of(frame[c].to_numpy(np.int64))[0]
            else:
                v = frame[c].to_numpy()
            values.append(v[hit])
        return _csr(row[hit], n_u, *values)

    r_ptr, r_col, r_val, r_t = grouped("ratings", "snack_id", "rating", "rated_at")
    d_ptr, d_col, d_day = grouped("deliveries", "snack_id", "delivered_on")
    n_ptr, n_col = grouped("ng_snacks", "snack_id")
    q_ptr, q_col, q_t = grouped("requests", "snack_id", "requested_at")

    avoid = tables["avoid_ingredients"]
    row, hit = rows(avoid)
    n_words = max(1, -(-len(catalog.ingredients) // 64))
    avoid_words = np.zeros((n_u, n_words), np.uint64)
    if catalog.ingredients and hit.any():
        k, known = name_positions(catalog.ingredients, avoid["ingredient"].to_numpy(object), hit)
        bit = np.left_shift(np.uint64(1), (k[known] % 64).astype(np.uint64))
        np.bitwise_or.at(avoid_words, (row[known], k[known] // 64), bit)
    prefs = tables["genre_prefs"]
    row, hit = rows(prefs)
    favorite = favorite_matrix(prefs["genre"].to_numpy(object), row, hit, catalog, n_u)
    col = column_type(catalog.size)
    return SparseState(
        user_id=uid, delivery_on=targets.delivery_on, box_size=targets.box_declared,
        r_ptr=r_ptr, r_col=r_col.astype(col), r_val=r_val.astype(np.int8),
        r_t=r_t.astype(np.int64),
        d_ptr=d_ptr, d_col=d_col.astype(col), d_day=d_day.astype(np.int32),
        n_ptr=n_ptr, n_col=n_col.astype(col),
        q_ptr=q_ptr, q_col=q_col.astype(col), q_t=q_t.astype(np.int64),
        avoid_words=avoid_words, favorite=favorite,
    )


def snack_arrays(state: SparseState, catalog: SnackCatalog, prior: np.ndarray,
                 params: Params, cutoffs: Cutoffs | None = None,
                 users: np.ndarray | None = None) -> SnackArrays:
    """The catalog with the walk orders of this partition's delivery days.

    Args:
        state: the partition's users.
        catalog: the snack catalog.
        prior: prior(s) per column.
        params: rule parameters.
        cutoffs: SPEC §6 cutoffs (None: every snack available).
        users: which users' boxes to fill (bool per user; None: all).
    """
    n_s = catalog.size
    n_g = max(len(catalog.genres), 1)
    prior = np.asarray(prior, np.float64)
    cutoffs = cutoffs if cutoffs is not None else Cutoffs.unlimited(n_s)
    cols = np.arange(n_s)
    genre = catalog.genre.astype(np.int64)
    # per genre by prior (preference) and, per delivery day, by prior + new bonus (explore)
    pref_order = np.lexsort((cols, -prior, genre)).astype(np.int64)
    genre_start = np.searchsorted(genre[pref_order], np.arange(n_g + 1)).astype(np.int64)
    days, day_row = np.unique(state.delivery_on.astype(np.int64), return_inverse=True)
    new = rules.is_new(catalog.launched_on.astype(np.int64)[None, :], days[:, None],
                       params.new_days)
    base = prior[None, :] + params.new_bonus * new
    explore_order = np.empty((len(days), n_s), np.int64)
    for k in range(len(days)):  # a handful of distinct days
        explore_order[k] = np.lexsort((cols, -base[k], genre))
    return SnackArrays(
        snack_id=catalog.snack_id, genre=genre,
        launched_on=catalog.launched_on.astype(np.int64),
        retired_on=catalog.retired_on.astype(np.int64), prior=prior,
        ingredient_words=catalog.ingredient_words(), pref_order=pref_order,
        explore_order=explore_order, genre_start=genre_start,
        day_row=day_row.reshape(-1).astype(np.int64), n_genres=n_g,
        active=np.ones(state.n_users, bool) if users is None else np.asarray(users, bool),
        limited=np.flatnonzero(cutoffs.limited).astype(np.int64),
        cut_day=cutoffs.day, cut_jitter=cutoffs.jitter, cut_user=cutoffs.user_id,
    )


def rule_values(params: Params, n_snacks: int) -> RuleValues:
    """The parameters as the kernel reads them."""
    bits = key_bits(n_snacks)
    return RuleValues(
        bits=bits, key_limit=rules.key_limit(bits), max_requests=params.max_requests,
        request_window_days=params.request_window_days,
        repeat_window_days=params.repeat_window_days, explore_slots=params.explore_slots,
        max_per_genre=params.max_per_genre, own_weights=rules.own_weights(params),
        genre_weight=float(params.genre_weight),
        favorite_genre_bonus=float(params.favorite_genre_bonus), new_days=params.new_days,
        new_bonus=float(params.new_bonus), explore_jitter=float(params.explore_jitter),
    )


def assign_snacks_sparse(
    state: SparseState, catalog: SnackCatalog, prior: np.ndarray, params: Params,
    cutoffs: Cutoffs | None = None, users: np.ndarray | None = None,
) -> pd.DataFrame:
    """:func:`preassign.core.dense.assign_snacks` computed by the kernel from the sparse state.

    ``cutoffs`` (SPEC §6) make a limited snack unavailable to the boxes after its cutoff;
    ``users`` (bool per user) fills only those users' boxes.

    Raises:
        OverflowError: a score or explore key too large to order exactly.
    """
    from .kernel import assign_partition

    state = state._replace(box_size=box_sizes(state.box_size, params))
    if not state.favorite.shape[1]:  # no genres: the kernel indexes one dummy column
        state = state._replace(favorite=np.zeros((state.n_users, 1), bool))
    row, col, slot, stage, overflow = assign_partition(
        state, snack_arrays(state, catalog, prior, params, cutoffs, users),
        rule_values(params, catalog.size))
    if overflow:
        raise OverflowError(
            "a score or explore key is too large to order exactly; check the rule parameters")
    return assignment_frame(state.user_id, state.delivery_on, state.box_size, catalog, row, col,
                            slot, stage)


def rating_totals(tables: dict[str, pd.DataFrame], catalog: SnackCatalog
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per snack column: sum and count of the partition's latest ratings (compiled)."""
    from .kernel import latest_rating_sums

    ratings = tables["ratings"]
    n_users = len(tables["users"])
    if "_urow" in ratings:
        row, col = ratings["_urow"].to_numpy(np.int64), ratings["_col"].to_numpy(np.int64)
    else:
        user_ids = np.sort(tables["users"]["user_id"].to_numpy(np.int64))
        row = lookup(user_ids, ratings["user_id"].to_numpy(np.int64))[0]
        col = catalog.columns_of(ratings["snack_id"].to_numpy(np.int64))[0]
    ptr, col, val, t = _csr(row, n_users, col, ratings["rating"].to_numpy(np.int8),
                            ratings["rated_at"].to_numpy(np.int64))
    return latest_rating_sums(ptr, col, val, t, catalog.size)

