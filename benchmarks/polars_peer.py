"""Polars peer of the preassign pipeline (SPEC §3), for benchmarks.

The whole of SPEC §3 is a handful of Polars lazy queries over all target users at
once: joins, group-bys and window functions, no per-user Python loop and no
Python UDF. Python lists the lake's files, resolves parameters into literals and
collects a few intermediate frames: the small tables, the latest ratings, the
keyed eligible pairs, the pruned candidate lists, then the box after each of the
four stages.

Plan:

1. Read. Each file of a table (found recursively, hive-style ``key=value/``
   directories included, names starting with ``_`` or ``.`` skipped, hive keys
   not turned into columns) is scanned with ``pl.scan_parquet`` and its required
   columns normalised by their stored type (:func:`_normalise`): integer ids and
   values of any width (or integral floats, decimals) to Int64, dictionary
   strings to String, ``date32``/``date64``/timestamps to Date (the UTC date),
   timestamps of any unit and zone (naive = UTC) to naive-UTC
   ``Datetime("ns")``, which keeps every instant exactly (ordering ``rated_at``
   and ``requested_at`` must not merge distinct instants); then the files are
   concatenated. Extra columns are ignored. A missing table or column is a
   :class:`LakeError` naming it; a table directory without files is an empty
   table. Optionally the SPEC §2 invalid values are checked (one aggregate
   query per table, collected together).
2. ``users`` and ``snacks`` with set semantics (``unique``; two different rows for
   one key are an error; ingredients compared as sets). Ratings are semi-joined
   to ``users`` and ``snacks`` first (orphans out, before C and the means); the
   other user tables lose their orphans by inner joins to the target users and
   the known snacks. Dates become epoch days (Int32), which is also the jitter's
   ``e``.
3. Latest rating per (user, snack): ``rating.sort_by(rated_at desc, rating
   asc).first()``. C, the priors, μ_u and μ_{u,g} as sum ÷ count.
4. Dense keys. Target users are numbered ``user_idx`` 0..U−1 and snacks
   ``snack_idx`` 0..S−1 in ``snack_id`` order, so (user, snack) is one Int64
   ``pair = user_idx·S + snack_idx`` and (user, genre) one Int64 ``ug``: the big
   joins and windows use one integer key instead of two columns.
5. Eligible pairs: target users × the lineup of their date (a join on the
   date), left-joined to one per-pair fact table (NG ∪ avoided ingredient ∪
   latest rating ∪ deliveries → excluded / seen / rating) and to the per-``ug``
   affinity and favourite flag. Score and explore key are summed left to right
   in Float64, rounded to exact integer micro-units N (Rounding below) and packed
   with the tie-break into one stage key ``−N·S + snack_idx`` (ascending = score
   descending, then ``snack_id`` ascending; :func:`_order_key` falls back to a
   dense rank of −N when the product could overflow).
6. Pruning (exact, as in ``duckdb_peer``). A stage in score order can only take,
   in genre g, one of the first ``max_per_genre`` eligible snacks of g in that
   order (at most c_g of them are already in the box, so the first cap − c_g
   not-yet-chosen ones lie among them); likewise for the explore order among
   novel snacks. So each list keeps the first ``max_per_genre`` rows per (user,
   genre) (``rank().over("ug")`` of the stage key), then the first 2K rows per
   user: a stage scans at most need + 2b ≤ 2K rows of such a list before the box
   is full (b = box count before the stage bounds both the rows skipped as
   chosen and the rows skipped for the cap).
7. Four stages, each a query over the candidate list and the box so far: drop
   chosen snacks (anti-join); a candidate of genre g is admissible iff its rank
   among the stage's candidates of g is ≤ cap − (the box's count of g); the
   stage takes the admissible candidates in order while the box count stays ≤
   the stage's target (box count + rank among the admissible, per user). This
   is exactly the greedy scan of SPEC §3: the first cap − c_g candidates of g
   are taken unless the box fills first, every later one would be skipped for
   the cap.

Exactness:

* Rounding. SPEC says ``numpy.round(x, 6)``, which numpy computes as
  ``rint(x * 1e6) / 1e6`` in float64 (round half to even on the binary product).
  :func:`micro_units` computes ``(x * 1e6).round(0, mode="half_to_even")`` — an
  exact ``rint`` — cast to Int64, N; the rounded value is N / 1e6, a strictly
  monotone map, so ordering and ties on N are ordering and ties on the rounded
  value. Checked bit for bit against numpy (exact ties k + 0.5, their float
  neighbours, random values) in the tests. Ties are broken by ``snack_id``.
* Division. Polars evaluates ``column / scalar literal`` as a multiplication by
  the reciprocal (``3.0 / 10.0`` gives 0.30000000000000004), so every division
  here is column ÷ column (:func:`_ratio`), which is IEEE division: the means
  and priors equal Python's ``sum / count``. The jitter's ``/ 2**53`` is a
  power of two, where the reciprocal is exact.
* Jitter. splitmix64 on UInt64: ids and days are reinterpreted as UInt64 (two's
  complement, like numpy's wrap-around), Polars' UInt64 ``*`` and ``+`` wrap
  modulo 2**64 (checked against Python ints in the tests), ``x >> k`` is
  ``x // 2**k`` on UInt64 and ``^`` is bitwise xor.

The lake must be a local directory. Run as ``python -m benchmarks.polars_peer
LAKE DATE_FROM [DATE_TO] [--out DIR]``.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import polars as pl

from benchmarks import peer_io
from benchmarks.peer_io import ASSIGNMENTS_SCHEMA, DEMAND_SCHEMA

__all__ = [
    "ASSIGNMENTS_SCHEMA",
    "DEFAULT_PARAMS",
    "DEMAND_SCHEMA",
    "LakeError",
    "KIND_TYPES",
    "TABLE_KINDS",
    "count_demand",
    "jitter",
    "main",
    "micro_units",
    "run_polars",
    "write_outputs",
]

DEFAULT_PARAMS: dict[str, Any] = {
    "default_box_size": 8,
    "max_requests": 2,
    "request_window_days": 90,
    "repeat_window_days": 60,
    "explore_slots": 2,
    "max_per_genre": 3,
    "prior_weight": 20,
    "own_weight_2": -1.0,
    "own_weight_3": 0.5,
    "own_weight_4": 1.5,
    "genre_weight": 0.5,
    "favorite_genre_bonus": 0.5,
    "new_days": 28,
    "new_bonus": 0.5,
    "explore_jitter": 0.5,
}
_INT_PARAMS = {
    "default_box_size",
    "max_requests",
    "request_window_days",
    "repeat_window_days",
    "explore_slots",
    "max_per_genre",
    "new_days",
}
# SPEC §6 (stock-aware runs) only: accepted by name, no effect on a §3 run.
_NO_OP_PARAMS = {"stock_max_rounds"}

STAGES = ("request", "preference", "explore", "fallback")

#: Required columns of every table and their logical kind (SPEC §2).
TABLE_KINDS: dict[str, dict[str, str]] = {
    "snacks": {
        "snack_id": "id",
        "name": "str",
        "genre": "str",
        "ingredients": "list",
        "launched_on": "date",
        "retired_on": "date",
    },
    "users": {"user_id": "id", "status": "str", "next_delivery_on": "date", "box_size": "int"},
    "ratings": {"user_id": "id", "snack_id": "id", "rating": "int", "rated_at": "timestamp"},
    "deliveries": {"user_id": "id", "snack_id": "id", "delivered_on": "date"},
    "ng_snacks": {"user_id": "id", "snack_id": "id"},
    "avoid_ingredients": {"user_id": "id", "ingredient": "str"},
    "genre_prefs": {"user_id": "id", "genre": "str"},
    "requests": {"user_id": "id", "snack_id": "id", "requested_at": "timestamp"},
    "stock": {"snack_id": "id", "quantity": "int"},
}
#: The Polars type each kind is read as: timestamps are naive UTC in nanoseconds, which
#: keeps every stored instant exactly (ordering rated_at / requested_at must not merge
#: distinct instants).
KIND_TYPES: dict[str, pl.DataType] = {
    "id": pl.Int64(),
    "int": pl.Int64(),
    "str": pl.String(),
    "date": pl.Date(),
    "timestamp": pl.Datetime("ns"),
    "list": pl.List(pl.String()),
}
_OPTIONAL_TABLES = {"stock"}
_NULLABLE = {
    ("snacks", "ingredients"),
    ("snacks", "retired_on"),
    ("users", "next_delivery_on"),
    ("users", "box_size"),
}
# table -> [(column, predicate true for a bad non-null value)]
_VALUE_RULES: dict[str, list[tuple[str, pl.Expr]]] = {
    "ratings": [("rating", ~pl.col("rating").is_between(1, 4))],
    "users": [
        ("status", ~pl.col("status").is_in(["active", "paused", "cancelled"])),
        ("box_size", pl.col("box_size") < 1),
    ],
    "stock": [("quantity", pl.col("quantity") < 0)],
}

_U64 = pl.UInt64()
# Stage keys rank · n_snacks + snack_idx are packed from the micro-units directly when
# they stay below this bound (else from a dense rank, :func:`_order_key`).
_PACK_LIMIT = 2**62


class LakeError(ValueError):
    """The lake is missing a table/column or holds invalid values (SPEC §2)."""


# ----------------------------------------------------------------------------- expressions


def micro_units(x: pl.Expr) -> pl.Expr:
    """``numpy.round(x, 6)`` as the exact integer N = rint(x · 1e6) (Int64).

    The rounded value is N / 1e6, so comparing N compares the rounded values.

    Examples:
        >>> pl.DataFrame({"x": [2.5e-6, 2.6666665]}).select(micro_units(pl.col("x")))["x"].to_list()
        [2, 2666666]
    """
    return (x * 1e6).round(0, mode="half_to_even").cast(pl.Int64)


def _as_u64(x: pl.Expr) -> pl.Expr:
    """An integer as UInt64 modulo 2**64 (two's complement for negative values)."""
    return x.cast(pl.Int64).reinterpret(signed=False)


def _shr(x: pl.Expr, bits: int) -> pl.Expr:
    return x // pl.lit(1 << bits, dtype=_U64)


def _mul(x: pl.Expr, constant: int) -> pl.Expr:
    return x * pl.lit(constant, dtype=_U64)  # UInt64 multiplication wraps modulo 2**64


def jitter(user_id: pl.Expr, snack_id: pl.Expr, epoch_day: pl.Expr) -> pl.Expr:
    """SPEC §3 jitter (splitmix64) of integer expressions, as Float64 in [0, 1).

    Examples:
        >>> pl.select(jitter(pl.lit(1), pl.lit(1), pl.lit(20788))).item()
        0.7564211760476489
    """
    x = _mul(_as_u64(user_id), 0x9E3779B97F4A7C15)
    x = x + _mul(_as_u64(snack_id), 0xC2B2AE3D27D4EB4F) + _as_u64(epoch_day)
    z = _mul(x ^ _shr(x, 30), 0xBF58476D1CE4E5B9)
    z = _mul(z ^ _shr(z, 27), 0x94D049BB133111EB)
    z = z ^ _shr(z, 31)
    return _shr(z, 11).cast(pl.Float64) / float(1 << 53)  # exact: a power of two


def _ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """Divide two columns in Float64 (IEEE division; neither may be a literal).

    (Polars turns ``column / literal`` into a multiplication by the reciprocal,
    which is not IEEE division; ``column / column`` is.)
    """
    return numerator.cast(pl.Float64) / denominator.cast(pl.Float64)


def _epoch_day(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Int32)


# ----------------------------------------------------------------------------- parameters


def _resolve_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    p = dict(DEFAULT_PARAMS)
    for name, value in (params or {}).items():
        if name in _NO_OP_PARAMS:
            continue
        if name not in DEFAULT_PARAMS:
            valid = ", ".join(sorted(DEFAULT_PARAMS) + sorted(_NO_OP_PARAMS))
            raise ValueError(f"unknown parameter {name!r}; valid names: {valid}")
        p[name] = value
    for name, value in p.items():
        if isinstance(value, bool):
            raise ValueError(f"parameter {name!r} must be a number, got {value!r}")
        if name in _INT_PARAMS:
            if int(value) != value:
                raise ValueError(f"parameter {name!r} must be an integer, got {value!r}")
            p[name] = int(value)
        else:
            p[name] = float(value)
            if not math.isfinite(p[name]):
                raise ValueError(f"parameter {name!r} must be finite, got {value!r}")
    if p["prior_weight"] <= 0:  # the prior of an unrated snack is undefined otherwise
        raise ValueError(f"parameter 'prior_weight' must be > 0, got {p['prior_weight']!r}")
    return p


# ----------------------------------------------------------------------------- reading


def _table_files(table_dir: str) -> list[str]:
    """The table's data files, recursively, skipping ``_``/``.`` names, sorted."""
    out: list[str] = []
    for root, dirs, files in os.walk(table_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(("_", "."))]
    return out


def _utc_naive(x: pl.Expr, dtype: pl.Datetime) -> pl.Expr:
    """A timestamp as naive UTC wall clock (naive values already are UTC, SPEC §2)."""
    if dtype.time_zone is None:
        return x
    return x.dt.convert_time_zone("UTC").dt.replace_time_zone(None)


def _normalise(
    frame: pl.LazyFrame, table: str, column: str, kind: str, dtype: pl.DataType, path: str
) -> pl.Expr:
    """An expression reading ``column`` (stored as ``dtype``) as its KIND_TYPES type."""
    x = pl.col(column)
    target = KIND_TYPES[kind]
    if dtype == pl.Null:  # a column of nulls only
        return x.cast(target)
    if kind in ("id", "int"):
        if dtype.is_integer() or (isinstance(dtype, pl.Decimal) and dtype.scale == 0):
            return x.cast(pl.Int64)
        if dtype.is_float():  # e.g. a nullable integer column written by pandas
            values = x.fill_nan(None)
            fractional = frame.select((values != values.floor()).sum()).collect().item()
            if fractional:
                raise LakeError(
                    f"table {table!r}, column {column!r}: {fractional} non-integral value(s) "
                    f"in file {path!r}; expected integers"
                )
            return values.cast(pl.Int64)
    elif kind == "str":
        if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
            return x.cast(pl.String)
    elif kind == "date":
        if dtype == pl.Date:
            return x
        if isinstance(dtype, pl.Datetime):  # date64 is read as Datetime("ms"): its UTC date
            return _utc_naive(x, dtype).dt.date()
    elif kind == "timestamp":
        if isinstance(dtype, pl.Datetime):
            return _utc_naive(x, dtype).cast(target)
        if dtype == pl.Date:  # midnight UTC
            return x.cast(target)
    elif isinstance(dtype, (pl.List, pl.Array)) and (
        dtype.inner == pl.String
        or isinstance(dtype.inner, (pl.Categorical, pl.Enum))
        or dtype.inner == pl.Null
    ):
        return x.cast(target)
    raise LakeError(
        f"table {table!r}, column {column!r}: expected {kind} ({target}), found {dtype} in "
        f"file {path!r}; rewrite the column with the type of SPEC §2"
    )


def _scan_file(path: str, table: str) -> pl.LazyFrame:
    """One file's required columns, each normalised to its KIND_TYPES type."""
    frame = pl.scan_parquet(path, hive_partitioning=False, glob=False)
    present = frame.collect_schema()
    kinds = TABLE_KINDS[table]
    missing = [c for c in kinds if c not in present]
    if missing:
        raise LakeError(
            f"table {table!r}: missing required column(s) {', '.join(map(repr, missing))} "
            f"in file {path!r} (columns present: {', '.join(present) or 'none'})"
        )
    return frame.select(
        _normalise(frame, table, column, kind, present[column], path).alias(column)
        for column, kind in kinds.items()
    )


def _scan_table(lake: str, table: str) -> pl.LazyFrame | None:
    """The table's required columns from all its files (None: absent and optional).

    Files of one table may store different physical types (int32 or int64 ids, date32
    or date64, any timestamp unit or zone, plain or dictionary strings, list kinds):
    each file is normalised on its own, then the files are concatenated.
    """
    table_dir = os.path.join(lake, table)
    if not os.path.isdir(table_dir):
        if table in _OPTIONAL_TABLES:
            return None
        raise LakeError(f"lake {lake!r}: missing required table {table!r} ({table_dir})")
    files = _table_files(table_dir)
    if not files:
        return pl.LazyFrame(
            schema={column: KIND_TYPES[kind] for column, kind in TABLE_KINDS[table].items()}
        )
    return pl.concat([_scan_file(path, table) for path in files], how="vertical")


def _validate(tables: Mapping[str, pl.LazyFrame], engine: str) -> None:
    """SPEC §2 invalid values: one aggregate query per table, collected together."""
    checks: dict[str, list[tuple[str, pl.Expr]]] = {}
    for table in tables:
        nulls = [
            (column, pl.col(column).is_null())
            for column in TABLE_KINDS[table]
            if (table, column) not in _NULLABLE
        ]
        values = [(c, pred.fill_null(False)) for c, pred in _VALUE_RULES.get(table, [])]
        checks[table] = nulls + values
    counts = pl.collect_all(
        [
            tables[table].select(pred.sum().alias(str(i)) for i, (_, pred) in enumerate(rules))
            for table, rules in checks.items()
        ],
        engine=engine,
    )
    for (table, rules), row in zip(checks.items(), counts, strict=True):
        for (column, pred), bad in zip(rules, row.row(0), strict=True):
            if bad:
                example = tables[table].filter(pred).head(1).collect().row(0, named=True)
                raise LakeError(
                    f"table {table!r}, column {column!r}: {bad} invalid row(s); "
                    f"example: {example}"
                )


def _unique_rows(frame: pl.LazyFrame, table: str, key: str, engine: str) -> pl.DataFrame:
    """Distinct rows; two different rows for one ``key`` make the lake invalid."""
    rows = frame.unique().collect(engine=engine)
    dup = rows.group_by(key).len().filter(pl.col("len") > 1).head(1)
    if dup.height:
        raise LakeError(
            f"table {table!r}: {dup['len'][0]} different rows for one {key} "
            f"(e.g. {key} = {dup[key][0]})"
        )
    return rows


# ----------------------------------------------------------------------------- rules


def _latest_ratings(ratings: pl.LazyFrame) -> pl.LazyFrame:
    """Per (user, snack): the smallest rating among the rows with the greatest rated_at."""
    return ratings.group_by("user_id", "snack_id").agg(
        pl.col("rating").sort_by("rated_at", "rating", descending=[True, False]).first()
    )


def _priors(snacks: pl.DataFrame, latest: pl.DataFrame, m: float) -> pl.DataFrame:
    """prior(s) = (S + m·C) / (n + m), with C = mean of all latest ratings (2.5 if none)."""
    c = latest.select(total=pl.col("rating").sum(), count=pl.len()).select(
        c=pl.when(pl.col("count") > 0)
        .then(_ratio(pl.col("total"), pl.col("count")))
        .otherwise(2.5)
    )
    per_snack = latest.group_by("snack_id").agg(s=pl.col("rating").sum(), n=pl.len())
    return (
        snacks.join(per_snack, on="snack_id", how="left")
        .join(c, how="cross")
        .with_columns(
            prior=_ratio(
                pl.col("s").fill_null(0).cast(pl.Float64) + m * pl.col("c"),
                pl.col("n").fill_null(0).cast(pl.Float64) + m,
            )
        )
    )


def _targets(
    users: pl.DataFrame, date_from: datetime.date, date_to: datetime.date, default_box_size: int
) -> pl.DataFrame:
    """Target users: user_id, dense user_idx, day (epoch day of d) and box size k."""
    return (
        users.filter(
            pl.col("status") == "active",
            pl.col("next_delivery_on").is_between(date_from, date_to),
        )
        .select(
            "user_id",
            day=_epoch_day("next_delivery_on"),
            k=pl.col("box_size").fill_null(default_box_size),
        )
        .with_row_index("user_idx")
        .with_columns(pl.col("user_idx").cast(pl.Int64))
    )


def _can_pack(
    priors: pl.DataFrame, latest: pl.DataFrame, p: Mapping[str, Any], n_snacks: int
) -> bool:
    """Whether rint(key · 1e6) · n_snacks + snack_idx fits Int64 for every score and key.

    |score| ≤ max|prior| + max|own weight| + |genre_weight| · max|affinity| +
    |favorite_genre_bonus| with |affinity| ≤ 2 · max|rating|; |explore_key| ≤ max|prior|
    + |new_bonus| + |explore_jitter|.
    """
    rating = float(latest["rating"].abs().max() or 0) if latest.height else 0.0
    prior = float(priors["prior"].abs().max() or 0.0) if priors.height else 0.0
    own = max(abs(p["own_weight_2"]), abs(p["own_weight_3"]), abs(p["own_weight_4"]))
    score = prior + own + abs(p["genre_weight"]) * 2 * rating + abs(p["favorite_genre_bonus"])
    explore = prior + abs(p["new_bonus"]) + abs(p["explore_jitter"])
    return (max(score, explore) * 1e6 + 2) * n_snacks < _PACK_LIMIT


def _order_key(rank: pl.Expr, n_snacks: int, packed: bool) -> pl.Expr:
    """(rank ascending, snack_id ascending) as one Int64 (snack_idx follows snack_id).

    Unless ``packed``, ``rank`` is first replaced by its dense rank over the frame (same
    order, small values).
    """
    if not packed:
        rank = rank.rank("dense").cast(pl.Int64)
    return rank * n_snacks + pl.col("snack_idx")


def _first_rows(frame: pl.LazyFrame, by: str, n: int | pl.Expr) -> pl.LazyFrame:
    """The first ``n`` rows of each ``by`` group in stage order (``key`` ascending)."""
    return frame.filter(pl.col("key").rank("ordinal").over(by) <= n)


def _candidate_lists(
    tables: Mapping[str, pl.LazyFrame],
    targets: pl.DataFrame,
    snacks: pl.DataFrame,
    latest: pl.DataFrame,
    priors: pl.DataFrame,
    p: Mapping[str, Any],
    packed: bool,
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The request candidates and every eligible (user, snack) with its stage keys.

    The request list has user_idx, ug, pair, k and key (stage order, ascending); the
    eligible pairs have pair, ug, score_key and explore_key (null unless novel). See
    the module docstring for the dense keys.
    """
    n_snacks = max(snacks.height, 1)
    n_genres = int(snacks["genre_id"].max() or 0) + 1 if snacks.height else 1
    day = pl.col("day")
    pair = (pl.col("user_idx") * n_snacks + pl.col("snack_idx")).alias("pair")
    user_genre = (pl.col("user_idx") * n_genres + pl.col("genre_id")).alias("ug")
    who = targets.lazy().select("user_id", "user_idx", "day")
    snack_index = snacks.lazy().select("snack_id", "snack_idx", "genre_id")

    def of_targets(frame: pl.LazyFrame) -> pl.LazyFrame:
        """Rows of target users and known snacks, with the dense indices (orphans out)."""
        return frame.join(who, on="user_id").join(snack_index, on="snack_id")

    latest_t = of_targets(latest.lazy())

    # per (target user, snack) with any fact: excluded (rules 2-5), seen, latest rating
    none = pl.lit(None, dtype=pl.Int64)
    ingredients = (
        snacks.lazy()
        .select("snack_idx", ingredient="ingredients")
        .explode("ingredient")
        .drop_nulls("ingredient")
    )
    window = p["repeat_window_days"]
    in_window = _epoch_day("delivered_on").is_between(day - window, day - 1)
    facts = (
        pl.concat(
            [
                of_targets(tables["ng_snacks"]).select(pair, excl=True, seen=False, rating=none),
                tables["avoid_ingredients"]
                .join(who, on="user_id")
                .join(ingredients, on="ingredient")
                .select(pair, excl=True, seen=False, rating=none),
                latest_t.select(pair, excl=pl.col("rating") == 1, seen=True, rating="rating"),
                of_targets(tables["deliveries"]).select(
                    pair, excl=in_window, seen=True, rating=none
                ),
            ],
            how="vertical",
        )
        .group_by("pair")
        .agg(pl.col("excl").any(), pl.col("seen").any(), pl.col("rating").max())
    )

    # per (target user, genre): affinity μ_{u,g} − μ_u (0 if unrated), favourite (0/1)
    rated = latest_t.select("user_idx", "genre_id", "rating")
    mu = rated.group_by("user_idx").agg(us=pl.col("rating").sum(), un=pl.len())
    affinity = (
        rated.group_by("user_idx", "genre_id")
        .agg(gs=pl.col("rating").sum(), gn=pl.len())
        .join(mu, on="user_idx")
        .select(
            user_genre,
            aff=_ratio(pl.col("gs"), pl.col("gn")) - _ratio(pl.col("us"), pl.col("un")),
        )
    )
    favourite = (
        tables["genre_prefs"]
        .join(who, on="user_id")
        .join(snacks.lazy().select("genre", "genre_id").unique(), on="genre")
        .select(user_genre)
        .unique()
        .with_columns(fav=pl.lit(1.0))
    )
    user_genres = affinity.join(favourite, on="ug", how="full", coalesce=True)

    # the lineup of each target date (rule 1) and every eligible (user, snack)
    launched = _epoch_day("launched_on")
    lineup = (
        targets.lazy()
        .select("day")
        .unique()
        .join(priors.lazy(), how="cross")
        .filter(launched <= day, pl.col("retired_on").is_null() | (_epoch_day("retired_on") > day))
        .select(
            "day",
            "snack_id",
            "snack_idx",
            "genre_id",
            "prior",
            is_new=(launched > day - p["new_days"]).cast(pl.Float64),
        )
    )
    eligible = (
        targets.lazy()
        .join(lineup, on="day")
        .with_columns(pair, user_genre)
        .join(facts, on="pair", how="left")
        .filter(~pl.col("excl").fill_null(False))
    )

    rating = pl.col("rating")
    own = (
        pl.when(rating == 2).then(p["own_weight_2"])
        .when(rating == 3).then(p["own_weight_3"])
        .when(rating == 4).then(p["own_weight_4"])
        .otherwise(0.0)
    )
    score = (
        pl.col("prior")
        + own
        + p["genre_weight"] * pl.col("aff").fill_null(0.0)
        + p["favorite_genre_bonus"] * pl.col("fav").fill_null(0.0)
    )
    explore_key = (
        pl.col("prior")
        + p["new_bonus"] * pl.col("is_new")
        + p["explore_jitter"] * jitter(pl.col("user_id"), pl.col("snack_id"), day)
    )
    novel = ~pl.col("seen").fill_null(False)
    keyed = eligible.join(user_genres, on="ug", how="left").select(
        "pair",
        "ug",
        score_key=_order_key(-micro_units(score), n_snacks, packed),
        explore_key=pl.when(novel).then(_order_key(-micro_units(explore_key), n_snacks, packed)),
    )

    # requested in [d - window, d - 1] (UTC date), eligible: in the lineup, not excluded
    window = p["request_window_days"]
    requested_on = pl.col("requested_at").dt.date().cast(pl.Int32)
    by_request = (
        tables["requests"]
        .join(targets.lazy(), on="user_id")
        .filter(requested_on.is_between(day - window, day - 1))
        .join(lineup.select("day", "snack_id", "snack_idx", "genre_id"), on=["day", "snack_id"])
        .with_columns(pair, user_genre)
        .join(facts.filter("excl"), on="pair", how="anti")
        .group_by("user_idx", "ug", "pair", "k", "snack_idx")
        .agg(first=pl.col("requested_at").min())
        .select("user_idx", "ug", "pair", "k",
                key=_order_key(pl.col("first"), n_snacks, packed=False))
    )
    return by_request, keyed


def _stage_list(
    keyed: pl.LazyFrame, key: str, targets: pl.DataFrame, n_snacks: int, max_per_genre: int
) -> pl.LazyFrame:
    """A stage's candidates in ``key`` order, pruned (module docstring, step 6).

    At most ``max_per_genre`` rows per (user, genre), then 2K rows per user; rows
    with a null key are not candidates.
    """
    by_genre = _first_rows(
        keyed.select("pair", "ug", key=key).drop_nulls("key"), "ug", max(max_per_genre, 1)
    )
    return _first_rows(
        by_genre.with_columns(user_idx=pl.col("pair") // n_snacks).join(
            targets.lazy().select("user_idx", "k"), on="user_idx"
        ),
        "user_idx",
        2 * pl.col("k"),
    )


def _run_stage(
    box: pl.DataFrame,
    candidates: pl.DataFrame,
    stage: str,
    target: pl.Expr,
    cap: int,
    engine: str,
) -> pl.DataFrame:
    """One stage for every box: the rows it adds (user_idx, ug, pair, slot, stage)."""
    chosen = box.lazy()
    per_genre = chosen.group_by("ug").agg(in_genre=pl.len().cast(pl.Int64))
    per_user = chosen.group_by("user_idx").agg(in_box=pl.len().cast(pl.Int64))
    rank_in = pl.col("key").rank("ordinal")
    return (
        candidates.lazy()
        .join(chosen, on="pair", how="anti")
        .join(per_genre, on="ug", how="left")
        .filter(rank_in.over("ug") <= cap - pl.col("in_genre").fill_null(0))
        .join(per_user, on="user_idx", how="left")
        .with_columns(slot=pl.col("in_box").fill_null(0) + rank_in.over("user_idx"))
        .filter(pl.col("slot") <= target)
        .select("user_idx", "ug", "pair", "slot", stage=pl.lit(stage))
        .collect(engine=engine)
    )


def run_polars(
    lake: str,
    date_from: datetime.date,
    date_to: datetime.date,
    params: Mapping[str, Any] | None = None,
    *,
    validate: bool = True,
    timings: dict[str, float] | None = None,
    summary: dict[str, int] | None = None,
    engine: str = "auto",
) -> pl.DataFrame:
    """Pre-assign boxes for users due in [date_from, date_to] (SPEC §3), in Polars.

    Args:
        lake: a local lake directory (SPEC §2).
        date_from: first delivery date targeted.
        date_to: last delivery date targeted.
        params: rule parameters by name (SPEC §3); the others keep their defaults.
            ``stock_max_rounds`` (SPEC §6 only) is accepted and has no effect.
        validate: check SPEC §2's invalid values (one more pass over the lake).
        timings: if a dict, seconds per step are stored in it.
        summary: if a dict, ``users_targeted``, ``boxes_full``, ``boxes_short`` and
            ``units_total`` are stored in it.
        engine: the Polars engine every query is collected with.

    Returns:
        delivery_on (Date), user_id (Int64), slot (Int32), snack_id (Int64),
        stage (String), sorted by user_id, slot.

    Raises:
        LakeError: a missing table or column, invalid values, or two different rows
            for one user, snack or stock key.
        ValueError: an unknown or invalid parameter, or date_from after date_to.
    """
    if date_from > date_to:
        raise ValueError(f"date_from {date_from} is after date_to {date_to}")
    p = _resolve_params(params)
    tm = timings if timings is not None else {}

    t0 = time.perf_counter()
    scanned = {table: _scan_table(lake, table) for table in TABLE_KINDS}
    tables = {table: frame for table, frame in scanned.items() if frame is not None}
    if validate:
        _validate(tables, engine)
    users = _unique_rows(tables["users"], "users", "user_id", engine)
    # ingredients as a set: a null list, [] and reordered or repeated items are one row
    ingredients = pl.col("ingredients").fill_null([]).list.drop_nulls().list.unique().list.sort()
    snacks = _unique_rows(
        tables["snacks"].with_columns(ingredients), "snacks", "snack_id", engine
    ).with_columns(
        snack_idx=(pl.col("snack_id").rank("dense") - 1).cast(pl.Int64),
        genre_id=(pl.col("genre").rank("dense") - 1).cast(pl.Int64),
    )
    if validate and "stock" in tables:
        _unique_rows(tables["stock"], "stock", "snack_id", engine)
    tm["read_validate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ratings = (
        tables["ratings"]
        .join(users.lazy(), on="user_id", how="semi")
        .join(snacks.lazy(), on="snack_id", how="semi")
    )  # orphans out before C, the priors and the means
    latest = _latest_ratings(ratings).collect(engine=engine)
    priors = _priors(snacks, latest, p["prior_weight"])
    targets = _targets(users, date_from, date_to, p["default_box_size"])
    packed = _can_pack(priors, latest, p, max(snacks.height, 1))
    tm["ratings"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    plans = _candidate_lists(tables, targets, snacks, latest, priors, p, packed)
    by_request, keyed = pl.collect_all(plans, engine=engine)
    tm["candidates"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_snacks, cap = max(snacks.height, 1), p["max_per_genre"]
    by_score, by_explore = pl.collect_all(
        [_stage_list(keyed.lazy(), key, targets, n_snacks, cap)
         for key in ("score_key", "explore_key")],
        engine=engine,
    )
    del keyed
    tm["pruning"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    k = pl.col("k")
    stages = [
        ("request", by_request, pl.min_horizontal(k, p["max_requests"])),
        ("preference", by_score, k - p["explore_slots"]),
        ("explore", by_explore, k),
        ("fallback", by_score, k),
    ]
    box = pl.DataFrame(
        schema={"user_idx": pl.Int64, "ug": pl.Int64, "pair": pl.Int64, "slot": pl.Int64,
                "stage": pl.String}
    )
    for stage, candidates, target in stages:
        added = _run_stage(box, candidates, stage, target, p["max_per_genre"], engine)
        box = pl.concat([box, added], how="vertical")
    out = (
        box.lazy()
        .with_columns(snack_idx=pl.col("pair") % n_snacks)
        .join(targets.lazy(), on="user_idx")
        .join(snacks.lazy().select("snack_idx", "snack_id"), on="snack_idx")
        .select(
            delivery_on=pl.col("day").cast(pl.Date),
            user_id="user_id",
            slot=pl.col("slot").cast(pl.Int32),
            snack_id="snack_id",
            stage="stage",
        )
        .sort("user_id", "slot")
        .collect(engine=engine)
    )
    tm["selection"] = time.perf_counter() - t0

    if summary is not None:
        sizes = targets.join(box.group_by("user_idx").len(), on="user_idx", how="left")
        full = int((sizes["len"].fill_null(0) >= sizes["k"]).sum())
        summary.update(users_targeted=targets.height, boxes_full=full,
                       boxes_short=targets.height - full, units_total=out.height)
    return out


# ----------------------------------------------------------------------------- outputs


def count_demand(assignments: pl.DataFrame) -> pl.DataFrame:
    """SPEC §4 demand: one row per (delivery_on, snack_id) with units per stage.

    Examples:
        >>> a = pl.DataFrame({"delivery_on": [datetime.date(2026, 12, 1)] * 2,
        ...                   "snack_id": [7, 7], "stage": ["request", "explore"]})
        >>> count_demand(a).row(0)
        (datetime.date(2026, 12, 1), 7, 2, 1, 0, 1, 0)
    """
    stage = pl.col("stage")
    return (
        assignments.lazy()
        .group_by("delivery_on", "snack_id")
        .agg(
            units=pl.len().cast(pl.Int64),
            **{f"units_{s}": (stage == s).sum().cast(pl.Int64) for s in STAGES},
        )
        .sort("delivery_on", "snack_id")
        .collect()
    )


def write_outputs(out: str, assignments: pl.DataFrame, demand: pl.DataFrame) -> None:
    """Write ``assignments/`` and ``demand/`` under ``out`` in the SPEC §4 layout.

    Each is one ``part.0.parquet`` with the types of :data:`ASSIGNMENTS_SCHEMA` /
    :data:`DEMAND_SCHEMA`. Both are written to a staging directory first and moved
    into place only once written (:func:`benchmarks.peer_io.write_outputs`).

    Raises:
        FileExistsError: ``out`` already holds ``assignments`` or ``demand``.
    """
    tables = {name: frame.select(schema.names).to_arrow().cast(schema)
              for name, frame, schema in (("assignments", assignments, ASSIGNMENTS_SCHEMA),
                                          ("demand", demand, DEMAND_SCHEMA))}
    peer_io.write_outputs(out, tables, "polars_peer")


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.polars_peer LAKE DATE_FROM [DATE_TO] [--out DIR]``."""
    ap = peer_io.peer_parser("polars_peer", "Polars")
    ap.add_argument("--engine", choices=["auto", "in-memory", "streaming"], default="auto",
                    help="the Polars engine queries are collected with (default: auto)")
    a = ap.parse_args(argv)

    def run(timings: dict[str, float], summary: dict[str, int]) -> pl.DataFrame:
        return run_polars(a.lake, a.date_from, a.date_to or a.date_from,
                          validate=not a.no_validate, timings=timings, summary=summary,
                          engine=a.engine)

    def write(out: str, assignments: pl.DataFrame) -> None:
        write_outputs(out, assignments, count_demand(assignments))

    return peer_io.peer_main(a, run, write, (LakeError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
