"""User state, one partition of users at a time (pure numpy/pandas).

Design
------
The old system built one Python object per user. Here a partition of users (all
their rows from every user-keyed table, guaranteed to be in the same partition)
becomes a handful of dense ``users x snacks`` arrays:

* ``rating``: the latest rating (int8, 0 = never rated),
* ``delivered_ever`` / ``delivered_recent`` (bool, the latter per the user's own
  repeat window),
* ``ng`` and ``conflict`` (an avoided ingredient is in the snack),
* ``request_at``: the earliest qualifying request time, as a sparse triple,
* ``favorite`` and ``affinity`` per ``users x genres``.

A lineup of a few hundred snacks makes these arrays a few hundred bytes per user,
so memory per task is bounded by the partition size, never by the whole lake.
Snack-level facts live in :class:`SnackCatalog`, built once and broadcast.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd

from .contract import NO_DATE, TABLES, USER_KEYED, dedupe_keyed, normalize_table
from .params import Params

__all__ = [
    "SnackCatalog",
    "PartitionStats",
    "UserState",
    "build_catalog",
    "prepare_partition",
    "latest_ratings",
    "build_user_state",
    "to_days",
]

_NEVER = np.iinfo(np.int32).max
_NS_PER_DAY = 86_400 * 1_000_000_000
_EPOCH = dt.date(1970, 1, 1)


def to_days(d: dt.date) -> int:
    """Days from 1970-01-01 to ``d`` (the SPEC's ``e``)."""
    return (d - _EPOCH).days


@dataclasses.dataclass(frozen=True)
class SnackCatalog:
    """The snack table in array form, ordered by ``snack_id`` ascending (column order).

    Attributes:
        snack_id: ids, ascending; position = column in every users x snacks array.
        genre: genre code per snack (index into ``genres``).
        genres: genre names, sorted.
        ingredients: ingredient names that occur in some snack, sorted.
        has_ingredient: ``snacks x ingredients`` bool matrix.
        launched_on / retired_on: days since epoch (``retired_on`` max int when null).
    """

    snack_id: np.ndarray
    genre: np.ndarray
    genres: tuple[str, ...]
    ingredients: tuple[str, ...]
    has_ingredient: np.ndarray
    launched_on: np.ndarray
    retired_on: np.ndarray

    @property
    def size(self) -> int:
        """Number of snacks."""
        return len(self.snack_id)

    def columns_of(self, snack_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map snack ids to columns -> ``(column, known)``; unknown ids give ``known=False``."""
        return lookup(self.snack_id, snack_ids)


def build_catalog(snacks: pd.DataFrame) -> SnackCatalog:
    """Build the catalog from the normalised, de-duplicated ``snacks`` table."""
    snacks = snacks.sort_values("snack_id", kind="stable").reset_index(drop=True)
    genres = tuple(sorted(set(snacks["genre"])))
    genre = np.searchsorted(np.array(genres, dtype=object), snacks["genre"].to_numpy()) if genres \
        else np.zeros(0, np.int64)
    ingredients = tuple(sorted({i for items in snacks["ingredients"] for i in items}))
    index = {name: k for k, name in enumerate(ingredients)}
    has = np.zeros((len(snacks), len(ingredients)), bool)
    for row, items in enumerate(snacks["ingredients"]):
        has[row, [index[i] for i in items]] = True
    retired = snacks["retired_on"].to_numpy(np.int32)
    return SnackCatalog(
        snack_id=snacks["snack_id"].to_numpy(np.int64),
        genre=np.asarray(genre, np.int32),
        genres=genres,
        ingredients=ingredients,
        has_ingredient=has,
        launched_on=snacks["launched_on"].to_numpy(np.int32),
        retired_on=np.where(retired == NO_DATE, _NEVER, retired).astype(np.int32),
    )


@dataclasses.dataclass
class PartitionStats:
    """What one partition contributes to the run summary and the snack prior."""

    input_rows: dict[str, int]
    orphan_rows: dict[str, int]
    rating_sum: np.ndarray  # per snack column, sum of latest ratings (int64)
    rating_count: np.ndarray  # per snack column, number of latest ratings (int64)
    users_targeted: int
    problems: list = dataclasses.field(default_factory=list)
    targeted_by_day: dict[int, int] = dataclasses.field(default_factory=dict)
    rejected: dict[str, list] = dataclasses.field(default_factory=dict)

    def __add__(self, other: PartitionStats) -> PartitionStats:
        def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}

        return PartitionStats(
            input_rows=add(self.input_rows, other.input_rows),
            orphan_rows=add(self.orphan_rows, other.orphan_rows),
            rating_sum=self.rating_sum + other.rating_sum,
            rating_count=self.rating_count + other.rating_count,
            users_targeted=self.users_targeted + other.users_targeted,
            problems=self.problems + other.problems,
            targeted_by_day=add(self.targeted_by_day, other.targeted_by_day),
            rejected={k: self.rejected.get(k, []) + other.rejected.get(k, [])
                      for k in {**self.rejected, **other.rejected}},
        )


def prepare_partition(
    raw: dict[str, pd.DataFrame],
    catalog: SnackCatalog,
    *,
    on_invalid: str = "raise",
    rejected: dict[str, pd.DataFrame] | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, int], dict[str, int], list]:
    """Normalise one partition of the user-keyed tables and drop orphan rows.

    Args:
        raw: table name -> raw rows of this partition (``users`` and the user-keyed
            tables; missing tables count as empty).
        catalog: the snack catalog (for orphan detection by ``snack_id``).
        on_invalid: ``"raise"`` or ``"drop"`` (see :func:`normalize_table`).
        rejected: with ``"drop"``, receives the dropped rows per table, with the reason.

    Returns:
        ``(tables, input_rows, orphan_rows, problems)`` where ``tables`` holds
        normalised rows without orphans, and the counts are on raw rows.
    """
    tables: dict[str, pd.DataFrame] = {}
    input_rows: dict[str, int] = {}
    orphans: dict[str, int] = {}
    problems: list = []
    for name in USER_KEYED:
        frame = raw.get(name)
        if frame is None:
            from .contract import empty_table

            frame = empty_table(name)
        input_rows[name] = len(frame)
        norm, found, _ = normalize_table(name, frame, on_invalid=on_invalid, rejected=rejected)
        problems.extend(found)
        tables[name] = norm
    users = dedupe_keyed("users", tables["users"], "user_id")
    users = users.sort_values("user_id", kind="stable").reset_index(drop=True)
    tables["users"] = users
    user_ids = users["user_id"].to_numpy(np.int64)
    for name in USER_KEYED[1:]:
        frame = tables[name]
        urow, keep = lookup(user_ids, frame["user_id"].to_numpy(np.int64))
        extra = {"_urow": urow}
        if TABLES[name].has_snack:
            col, known = catalog.columns_of(frame["snack_id"].to_numpy(np.int64))
            keep &= known
            extra["_col"] = col
        orphans[name] = int((~keep).sum())
        frame = frame.assign(**extra)  # row of the user in `users`, column of the snack
        if not keep.all():
            frame = frame.loc[keep].reset_index(drop=True)
        tables[name] = frame
    return tables, input_rows, orphans, problems


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


def summarize_partition(
    tables: dict[str, pd.DataFrame],
    catalog: SnackCatalog,
    date_from: dt.date,
    date_to: dt.date,
    engine: str = "numpy",
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-snack sums and counts of latest ratings, and the number of target users."""
    sums, counts = latest_rating_totals(tables, catalog, engine)
    return sums, counts, int(_target_mask(tables["users"], date_from, date_to).sum())


def targeted_by_day(users: pd.DataFrame, date_from: dt.date, date_to: dt.date) -> dict[int, int]:
    """Number of target users per delivery day (days since the epoch)."""
    days = users["next_delivery_on"].to_numpy(np.int32)[_target_mask(users, date_from, date_to)]
    values, counts = np.unique(days, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _target_users(
    users: pd.DataFrame, date_from: dt.date, date_to: dt.date, params: Params
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (mask over ``users``, then the targets' ids, delivery days and box sizes by id)."""
    target = _target_mask(users, date_from, date_to)
    tusers = users.loc[target].sort_values("user_id", kind="stable")
    box = tusers["box_size"].to_numpy(np.int32)
    return (
        target,
        tusers["user_id"].to_numpy(np.int64),
        tusers["next_delivery_on"].to_numpy(np.int32),
        np.where(box == 0, params.default_box_size, box).astype(np.int32),
    )


def _target_mask(users: pd.DataFrame, date_from: dt.date, date_to: dt.date) -> np.ndarray:
    day = users["next_delivery_on"].to_numpy(np.int32)
    return (
        (users["status"].to_numpy() == 0)
        & (day != NO_DATE)
        & (day >= to_days(date_from))
        & (day <= to_days(date_to))
    )


@dataclasses.dataclass
class UserState:
    """Dense state of one partition's target users (rows) against the catalog (columns)."""

    user_id: np.ndarray  # (U,) int64, ascending
    delivery_on: np.ndarray  # (U,) int32 days
    box_size: np.ndarray  # (U,) int32
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


def lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in ``sorted_ids`` (ascending, unique) -> ``(position, found)``.

    Uses a dense lookup table when the ids span a compact range (the usual case:
    one partition's users, a lineup's snacks), else a binary search.

    Examples:
        >>> lookup(np.array([3, 7, 9]), np.array([7, 8, 3]))
        (array([1, 0, 0]), array([ True, False,  True]))
    """
    n = len(sorted_ids)
    if n == 0 or len(ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
    if hi - lo <= 16 * n + 4096:
        table = np.full(hi - lo + 1, -1, np.int64)
        table[sorted_ids - lo] = np.arange(n)
        if int(ids.min()) >= lo and int(ids.max()) <= hi:  # the usual case: one gather
            pos = table[ids - lo]
        else:
            inside = (ids >= lo) & (ids <= hi)
            pos = np.where(inside, table[np.clip(ids - lo, 0, hi - lo)], -1)
        found = pos >= 0
        return np.maximum(pos, 0), found
    pos = np.minimum(np.searchsorted(sorted_ids, ids), n - 1)
    return pos, sorted_ids[pos] == ids


def _rows_of(ids: np.ndarray, target_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map user ids to rows of ``target_ids`` (sorted) -> ``(row, is_target)``."""
    return lookup(target_ids, ids)


def _name_positions(names: tuple[str, ...], values: np.ndarray, hit: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Positions of string ``values`` in the sorted ``names`` -> ``(position, known & hit)``."""
    table = np.array(names, dtype=object)
    k = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return k, hit & (table[k] == values)


def _favorite_matrix(prefs: pd.DataFrame, row: np.ndarray, hit: np.ndarray,
                     catalog: SnackCatalog, n_users: int) -> np.ndarray:
    """``users x genres``: the genre is one of the user's favourites (unknown genres ignored)."""
    favorite = np.zeros((n_users, len(catalog.genres)), bool)
    if catalog.genres and hit.any():
        k, known = _name_positions(catalog.genres, prefs["genre"].to_numpy(object), hit)
        favorite[row[known], k[known]] = True
    return favorite


def build_user_state(
    tables: dict[str, pd.DataFrame],
    catalog: SnackCatalog,
    date_from: dt.date,
    date_to: dt.date,
    params: Params,
) -> UserState:
    """Build the dense state of the partition's target users.

    Args:
        tables: normalised, orphan-free tables of one partition (:func:`prepare_partition`).
        catalog: the snack catalog.
        date_from, date_to: the run's date range (inclusive).
        params: rule parameters.

    Returns:
        The partition's :class:`UserState`, rows ordered by ``user_id``.
    """
    users = tables["users"]
    target, uid, day, box = _target_users(users, date_from, date_to, params)
    n_u, n_s, n_g = len(uid), catalog.size, len(catalog.genres)

    def rows_cols(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        frame = tables[name]
        row, hit = _rows_of(frame["user_id"].to_numpy(np.int64), uid)
        col = catalog.columns_of(frame["snack_id"].to_numpy(np.int64))[0] if "snack_id" in frame \
            else np.zeros(len(frame), np.int64)
        return row, col, hit

    # latest ratings
    latest = latest_ratings(tables["ratings"])
    row, hit = _rows_of(latest["user_id"].to_numpy(np.int64), uid)
    col = catalog.columns_of(latest["snack_id"].to_numpy(np.int64))[0]
    rating = np.zeros((n_u, n_s), np.int8)
    r = latest["rating"].to_numpy(np.int8)
    rating[row[hit], col[hit]] = r[hit]

    # genre affinity: mean of the user's latest ratings in g minus their overall mean
    g_of = catalog.genre[col[hit]]
    cell = row[hit] * n_g + g_of
    sum_ug = np.bincount(cell, weights=r[hit].astype(np.float64), minlength=n_u * n_g)
    cnt_ug = np.bincount(cell, minlength=n_u * n_g).astype(np.float64)
    sum_ug, cnt_ug = sum_ug.reshape(n_u, n_g), cnt_ug.reshape(n_u, n_g)
    sum_u, cnt_u = sum_ug.sum(axis=1), cnt_ug.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_u = sum_u / cnt_u
        affinity = np.where(cnt_ug > 0, sum_ug / cnt_ug - mean_u[:, None], 0.0)

    # deliveries: ever, and inside [d - repeat_window_days, d - 1]
    row, col, hit = rows_cols("deliveries")
    on = tables["deliveries"]["delivered_on"].to_numpy(np.int32)[hit]
    row, col = row[hit], col[hit]
    delivered_ever = np.zeros((n_u, n_s), bool)
    delivered_ever[row, col] = True
    d = day[row].astype(np.int64)
    recent = (on >= d - params.repeat_window_days) & (on <= d - 1)
    delivered_recent = np.zeros((n_u, n_s), bool)
    delivered_recent[row[recent], col[recent]] = True

    row, col, hit = rows_cols("ng_snacks")
    ng = np.zeros((n_u, n_s), bool)
    ng[row[hit], col[hit]] = True

    # avoided ingredients -> conflicting snacks, via users x ingredients @ ingredients x snacks
    avoid = tables["avoid_ingredients"]
    row, hit = _rows_of(avoid["user_id"].to_numpy(np.int64), uid)
    conflict = np.zeros((n_u, n_s), bool)
    if catalog.ingredients and hit.any():
        k, known = _name_positions(catalog.ingredients, avoid["ingredient"].to_numpy(object), hit)
        avoids = np.zeros((n_u, len(catalog.ingredients)), np.float32)
        avoids[row[known], k[known]] = 1.0
        conflict = (avoids @ catalog.has_ingredient.T.astype(np.float32)) > 0

    prefs = tables["genre_prefs"]
    row, hit = _rows_of(prefs["user_id"].to_numpy(np.int64), uid)
    favorite = _favorite_matrix(prefs, row, hit, catalog, n_u)

    # requests whose UTC date is in [d - request_window_days, d - 1]; earliest per pair
    row, col, hit = rows_cols("requests")
    at = tables["requests"]["requested_at"].to_numpy(np.int64)[hit]
    row, col = row[hit], col[hit]
    req_day = np.floor_divide(at, _NS_PER_DAY)
    d = day[row].astype(np.int64)
    ok = (req_day >= d - params.request_window_days) & (req_day <= d - 1)
    row, col, at = row[ok], col[ok], at[ok]
    order = np.lexsort((at, col, row))
    row, col, at = row[order], col[order], at[order]
    first = np.ones(len(row), bool)
    first[1:] = (row[1:] != row[:-1]) | (col[1:] != col[:-1])

    return UserState(
        user_id=uid,
        delivery_on=day,
        box_size=box,
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


# --------------------------------------------------------------------------------------------
# the sparse form, for the compiled kernels (preassign.kernel)


@dataclasses.dataclass
class SparseState:
    """A partition's target users with their rows grouped per user (CSR).

    ``x_ptr[u]:x_ptr[u+1]`` indexes user row ``u``'s entries of table x; snack
    references are catalog columns. Ratings keep every row (the kernel resolves the
    latest); requests keep every row (the kernel applies the user's window).
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


def ingredient_words(catalog: SnackCatalog) -> np.ndarray:
    """``snacks x words`` uint64 bitmask of each snack's ingredients."""
    return _pack_bits(catalog.has_ingredient)


def _pack_bits(matrix: np.ndarray) -> np.ndarray:
    n_rows, n_bits = matrix.shape
    n_words = max(1, -(-n_bits // 64))
    padded = np.zeros((n_rows, n_words * 64), bool)
    padded[:, :n_bits] = matrix
    weights = (np.uint64(1) << np.arange(64, dtype=np.uint64))
    return (padded.reshape(n_rows, n_words, 64).astype(np.uint64) * weights).sum(
        axis=2, dtype=np.uint64)


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
    """The sparse counterpart of :func:`build_user_state` (same users, same order)."""
    users = tables["users"]
    target, uid, day, box = _target_users(users, date_from, date_to, params)
    n_u = len(uid)

    # partition user row -> target row (-1 if not a target); `users` is sorted by user_id
    target_of = np.full(len(users) + 1, -1, np.int64)
    target_of[np.flatnonzero(target)] = np.arange(n_u)

    def rows(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        if "_urow" in frame:
            row = target_of[frame["_urow"].to_numpy(np.int64)]
            return row, row >= 0
        return _rows_of(frame["user_id"].to_numpy(np.int64), uid)

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
        k, known = _name_positions(catalog.ingredients, avoid["ingredient"].to_numpy(object), hit)
        bit = np.left_shift(np.uint64(1), (k[known] % 64).astype(np.uint64))
        np.bitwise_or.at(avoid_words, (row[known], k[known] // 64), bit)
    prefs = tables["genre_prefs"]
    row, hit = rows(prefs)
    favorite = _favorite_matrix(prefs, row, hit, catalog, n_u)
    return SparseState(
        user_id=uid, delivery_on=day, box_size=box,
        r_ptr=r_ptr, r_col=r_col.astype(np.int64), r_val=r_val.astype(np.int8),
        r_t=r_t.astype(np.int64),
        d_ptr=d_ptr, d_col=d_col.astype(np.int64), d_day=d_day.astype(np.int32),
        n_ptr=n_ptr, n_col=n_col.astype(np.int64),
        q_ptr=q_ptr, q_col=q_col.astype(np.int64), q_t=q_t.astype(np.int64),
        avoid_words=avoid_words, favorite=favorite,
    )


def latest_rating_totals(
    tables: dict[str, pd.DataFrame], catalog: SnackCatalog, engine: str = "numba"
) -> tuple[np.ndarray, np.ndarray]:
    """Per snack column: sum and count of the partition's latest ratings."""
    ratings = tables["ratings"]
    if engine == "numba":
        from .kernel import latest_rating_sums

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
    latest = latest_ratings(ratings)
    col, _ = catalog.columns_of(latest["snack_id"].to_numpy(np.int64))
    rating = latest["rating"].to_numpy(np.int64)
    sums = np.bincount(col, weights=rating, minlength=catalog.size).astype(np.int64)
    counts = np.bincount(col, minlength=catalog.size).astype(np.int64)
    return sums, counts
