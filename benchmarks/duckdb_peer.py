"""DuckDB peer of the preassign pipeline (SPEC §3), for benchmarks.

The whole of SPEC §3 is done in DuckDB SQL; Python only lists the lake's files,
formats parameters into SQL text and runs a fixed sequence of statements (no
per-user Python loop, no Python UDF).

Plan (each step one SQL statement over all target users at once):

1. ``raw_<table>`` views over ``read_parquet(files, union_by_name=true,
   hive_partitioning=false)`` projecting only the required columns (ids cast to
   BIGINT, dates to DATE, timestamps left in their native type; the session
   time zone is UTC so a TIMESTAMPTZ casts to its UTC date). Missing table or
   column -> ``LakeError`` naming it; a table directory without Parquet files is
   an empty table. Optional validation of §2 invalid values.
2. ``users`` / ``snacks`` with set semantics (DISTINCT; two different rows for one
   key -> error). Orphans of user-keyed tables are dropped by semi-joins (for
   ratings explicitly, elsewhere implicitly by joining to target users and the
   lineup).
3. Latest ratings by ``arg_max(rating, (rated_at, -rating))`` per (user, snack);
   C, priors, μ_u, μ_{u,g} as SUM / COUNT in DOUBLE.
4. Candidates = target users × lineup of their date (equi-join on d), minus one
   anti-joined set (NG ∪ avoided-ingredient hits ∪ latest rating 1 ∪ delivered in
   the repeat window); score and explore_key computed in DOUBLE, terms added
   left to right, then rounded (see Rounding below); splitmix64 jitter in
   UHUGEINT arithmetic masked to 64 bits. Genres are mapped to INTEGER ids.
5. Pruning (exact). (a) A stage ordered by score can only take, in genre g, one of
   the first ``max_per_genre`` eligible snacks of g in score order: at most
   ``cap − c_g`` not-yet-chosen ones are admissible and at most ``c_g`` chosen
   ones precede them. Same for the explore order among novel snacks. So one
   GROUP BY (user, genre) with top-N aggregates ``max(key, cap)`` keeps those
   rows (no full sort of users × snacks). (b) Per user, a stage scans at most
   ``need + 2b ≤ 2K`` rows of such a list before it is full (b = box count before
   the stage bounds both the chosen rows and the rows skipped for the cap), so
   each list is cut to its first 2K rows per user.
6. Four stage statements (request, preference, explore, fallback). Within one
   stage, a candidate of genre g is taken iff its rank among the stage's
   candidates of genre g is < max_per_genre − (box's count of g before the
   stage), and the stage takes the first ``need`` such admissible candidates in
   stage order, ``need = max(target − box count, 0)``. This equals the greedy
   scan of SPEC §3 exactly: the first (cap − c_g) g-candidates are all taken (the
   g count stays below cap before each of them) and every later one is skipped.

Rounding: SPEC says ``numpy.round(x, 6)``, which numpy computes as
``rint(x * 1e6) / 1e6`` in float64 (round half to even on the *binary* product
x * 1e6, not on the decimal value of x). We emulate exactly that with DuckDB's
``round_even(x * 1000000.0, 0)`` on DOUBLE (DuckDB's ``round`` is half away from
zero and is NOT used). ``round_even(y, 0)`` was checked bit-for-bit against
``numpy.rint`` on exact ties k + 0.5, their float neighbours,
0.49999999999999994, values ≥ 2**52 and random values (tests). Since only the
order of rounded values matters, keys are kept as the exact integer
N = rint(x * 1e6) (BIGINT; the rounded value is N / 1e6, a monotone map), which
also lets (N desc, snack_id asc) be packed in one BIGINT when the ranges allow
(``_can_pack``), else a (N, −snack_id) row key is used.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import tempfile
import time
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from benchmarks import peer_io
from benchmarks.peer_io import ASSIGNMENTS_SCHEMA, DEMAND_SCHEMA

__all__ = [
    "ASSIGNMENTS_SCHEMA",
    "DEFAULT_PARAMS",
    "DEMAND_SCHEMA",
    "LakeError",
    "demand_from_assignments",
    "jitter_sql",
    "main",
    "run_duckdb",
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

# table -> [(column, type to cast to or None to keep native, nullable)]
_SCHEMA: dict[str, list[tuple[str, str | None, bool]]] = {
    "snacks": [
        ("snack_id", "BIGINT", False),
        ("name", "VARCHAR", False),
        ("genre", "VARCHAR", False),
        ("ingredients", "VARCHAR[]", True),
        ("launched_on", "DATE", False),
        ("retired_on", "DATE", True),
    ],
    "users": [
        ("user_id", "BIGINT", False),
        ("status", "VARCHAR", False),
        ("next_delivery_on", "DATE", True),
        ("box_size", "BIGINT", True),
    ],
    "ratings": [
        ("user_id", "BIGINT", False),
        ("snack_id", "BIGINT", False),
        ("rating", "BIGINT", False),
        ("rated_at", None, False),
    ],
    "deliveries": [
        ("user_id", "BIGINT", False),
        ("snack_id", "BIGINT", False),
        ("delivered_on", "DATE", False),
    ],
    "ng_snacks": [("user_id", "BIGINT", False), ("snack_id", "BIGINT", False)],
    "avoid_ingredients": [("user_id", "BIGINT", False), ("ingredient", "VARCHAR", False)],
    "genre_prefs": [("user_id", "BIGINT", False), ("genre", "VARCHAR", False)],
    "requests": [
        ("user_id", "BIGINT", False),
        ("snack_id", "BIGINT", False),
        ("requested_at", None, False),
    ],
    "stock": [("snack_id", "BIGINT", False), ("quantity", "BIGINT", False)],
}
_OPTIONAL_TABLES = {"stock"}
# extra value rules: table -> [(column, SQL predicate that is TRUE for a bad non-null value)]
_VALUE_RULES: dict[str, list[tuple[str, str]]] = {
    "ratings": [("rating", "rating NOT BETWEEN 1 AND 4")],
    "users": [
        ("status", "status NOT IN ('active', 'paused', 'cancelled')"),
        ("box_size", "box_size < 1"),
    ],
    "stock": [("quantity", "quantity < 0")],
}
_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
_TS_TYPE_FOR_EMPTY = "TIMESTAMP"

_U64 = "18446744073709551615"  # 2**64 - 1, mask for "modulo 2**64"

# splitmix64 jitter as SQL macros: arithmetic in UHUGEINT (128 bit) and masked to
# 64 bits after every multiply, which is exactly "modulo 2**64". Inputs are
# first reduced modulo 2**64 via two's complement (HUGEINT & mask), so negative
# ids behave like numpy's uint64 wrap-around.
_MACROS = f"""
CREATE OR REPLACE TEMP MACRO pa_u64(v) AS
    CAST(CAST(v AS HUGEINT) & CAST('{_U64}' AS HUGEINT) AS UHUGEINT);
CREATE OR REPLACE TEMP MACRO pa_sm_x(u, s, e) AS
    (pa_u64(u) * CAST('11400714819323198485' AS UHUGEINT)
     + pa_u64(s) * CAST('14029467366897019727' AS UHUGEINT)
     + pa_u64(e)) & CAST('{_U64}' AS UHUGEINT);
CREATE OR REPLACE TEMP MACRO pa_sm_1(x) AS
    (xor(x, x >> 30) * CAST('13787848793156543929' AS UHUGEINT)) & CAST('{_U64}' AS UHUGEINT);
CREATE OR REPLACE TEMP MACRO pa_sm_2(z) AS
    (xor(z, z >> 27) * CAST('10723151780598845931' AS UHUGEINT)) & CAST('{_U64}' AS UHUGEINT);
CREATE OR REPLACE TEMP MACRO pa_sm_3(z) AS xor(z, z >> 31);
CREATE OR REPLACE TEMP MACRO pa_jitter(u, s, e) AS
    CAST(pa_sm_3(pa_sm_2(pa_sm_1(pa_sm_x(u, s, e)))) >> 11 AS DOUBLE) / 9007199254740992.0;
CREATE OR REPLACE TEMP MACRO pa_round6(x) AS round_even(x * 1000000.0, 0) / 1000000.0;
CREATE OR REPLACE TEMP MACRO pa_rint6(x) AS CAST(round_even(x * 1000000.0, 0) AS BIGINT);
"""


class LakeError(ValueError):
    """The lake is missing a table/column or holds invalid values (SPEC §2)."""


# ----------------------------------------------------------------------------- helpers


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _sql_date(d: datetime.date) -> str:
    return f"DATE '{d.isoformat()}'"


def _resolve_params(params: dict | None) -> dict[str, Any]:
    p = dict(DEFAULT_PARAMS)
    for k, v in (params or {}).items():
        if k == "stock_max_rounds":  # SPEC §6 only: accepted, no effect on a §3 run
            continue
        if k not in DEFAULT_PARAMS:
            raise ValueError(f"unknown parameter {k!r}")
        p[k] = v
    for k, v in p.items():
        if isinstance(v, bool):
            raise ValueError(f"parameter {k!r} must be a number, got {v!r}")
        if k in _INT_PARAMS:
            if int(v) != v:
                raise ValueError(f"parameter {k!r} must be an integer, got {v!r}")
            p[k] = int(v)
        else:
            if not math.isfinite(float(v)):
                raise ValueError(f"parameter {k!r} must be finite, got {v!r}")
    return p


def _lit(v: Any) -> str:
    """SQL literal of a parameter: INTEGER for ints (DATE - INTEGER), exact DOUBLE for floats."""
    if isinstance(v, int):
        return f"CAST({v} AS INTEGER)"
    return f"CAST('{float(v)!r}' AS DOUBLE)"  # repr round-trips the binary value


def _parquet_files(table_dir: str) -> list[str]:
    out: list[str] = []
    for root, dirs, files in os.walk(table_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for f in sorted(files):
            if f.startswith((".", "_")) or not f.endswith(_PARQUET_SUFFIXES):
                continue
            out.append(os.path.join(root, f))
    return out


def _create_raw_views(con: duckdb.DuckDBPyConnection, lake: str) -> set[str]:
    """Create raw_<table> views; return the set of tables present."""
    present: set[str] = set()
    for table, cols in _SCHEMA.items():
        tdir = os.path.join(lake, table)
        if not os.path.isdir(tdir):
            if table in _OPTIONAL_TABLES:
                continue
            raise LakeError(f"lake {lake!r}: missing required table {table!r} ({tdir})")
        present.add(table)
        files = _parquet_files(tdir)
        if not files:
            sel = ", ".join(
                f"CAST(NULL AS {typ or _TS_TYPE_FOR_EMPTY}) AS {c}" for c, typ, _ in cols
            )
            con.execute(f"CREATE OR REPLACE TEMP VIEW raw_{table} AS SELECT {sel} LIMIT 0")
            continue
        src = (
            "read_parquet([" + ", ".join(_sql_str(f) for f in files) + "], "
            "union_by_name = true, hive_partitioning = false)"
        )
        have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        for c, _, _ in cols:
            if c not in have:
                raise LakeError(f"table {table!r}: missing required column {c!r}")
        sel = ", ".join(
            (f"CAST({c} AS {typ}) AS {c}" if typ else c) for c, typ, _ in cols
        )
        con.execute(f"CREATE OR REPLACE TEMP VIEW raw_{table} AS SELECT {sel} FROM {src}")
    return present


def _validate(con: duckdb.DuckDBPyConnection, present: set[str]) -> None:
    """SPEC §2 invalid values: one aggregate scan per table."""
    for table in sorted(present):
        checks: list[tuple[str, str]] = []
        for c, _, nullable in _SCHEMA[table]:
            if not nullable:
                checks.append((c, f"{c} IS NULL"))
        checks += _VALUE_RULES.get(table, [])
        aggs = ", ".join(f"count(*) FILTER (WHERE {pred})" for _, pred in checks)
        counts = con.execute(f"SELECT {aggs} FROM raw_{table}").fetchone()
        for (col, pred), n in zip(checks, counts, strict=False):
            if n:
                ex = con.execute(f"SELECT * FROM raw_{table} WHERE {pred} LIMIT 1").fetchone()
                raise LakeError(
                    f"table {table!r}, column {col!r}: {n} invalid row(s) ({pred}); "
                    f"example: {ex}"
                )


def _check_unique(con: duckdb.DuckDBPyConnection, rel: str, table: str, key: str) -> None:
    """``rel`` holds DISTINCT rows of ``table``: a repeated key means two different rows."""
    row = con.execute(
        f"SELECT {key}, count(*) FROM {rel} GROUP BY {key} HAVING count(*) > 1 LIMIT 1"
    ).fetchone()
    if row is not None:
        raise LakeError(
            f"table {table!r}: {row[1]} different rows for one {key} (e.g. {key} = {row[0]})"
        )


def _can_pack(con: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> bool:
    """True when N = rint(key * 1e6) and snack_id fit one BIGINT (N * 2^32 + low 32 bits).

    |score| <= max|prior| + max|own weight| + |genre_weight| * 3 + |favorite_genre_bonus|
    (affinities lie in [-3, 3]); |explore_key| <= max|prior| + |new_bonus| + |explore_jitter|.
    Needs 0 <= snack_id < 2^32 and |N| < 2^31 - 1 (a margin of 1000 on the bound).
    """
    lo, hi, pmax = con.execute(
        "SELECT min(snack_id), max(snack_id), max(abs(prior)) FROM prior"
    ).fetchone()
    if lo is None:
        return True
    own = max(abs(p["own_weight_2"]), abs(p["own_weight_3"]), abs(p["own_weight_4"]))
    bound = pmax + max(
        own + abs(p["genre_weight"]) * 3 + abs(p["favorite_genre_bonus"]),
        abs(p["new_bonus"]) + abs(p["explore_jitter"]),
    )
    return lo >= 0 and hi < 2**32 and (bound + 1000) * 1e6 < 2**31 - 1


# ----------------------------------------------------------------------------- stages

# name, candidate table, order within the stage, box count the stage fills up to
_STAGES = [
    ("request", "cand_req", "c.o ASC, c.snack_id ASC", "least({maxreq}, t.k)"),
    ("preference", "cand_score", "c.o DESC, c.snack_id ASC", "t.k - {explore}"),
    ("explore", "cand_explore", "c.o DESC, c.snack_id ASC", "t.k"),
    ("fallback", "cand_score", "c.o DESC, c.snack_id ASC", "t.k"),
]


def _stage_sql(name: str, table: str, order: str, target: str, cap: str) -> str:
    """One stage for all users: genre-rank admissibility, then the first `need`."""
    order_g = order.replace("c.", "g.")
    return f"""
INSERT INTO box
WITH cnt AS (SELECT user_id, count(*) AS n FROM box GROUP BY user_id),
gcnt AS (SELECT user_id, genre_id, count(*) AS n FROM box GROUP BY user_id, genre_id),
g AS (
    SELECT c.user_id, c.snack_id, c.genre_id, c.o,
           row_number() OVER (PARTITION BY c.user_id, c.genre_id ORDER BY {order}) - 1 AS grank
    FROM {table} c
    ANTI JOIN box b ON b.user_id = c.user_id AND b.snack_id = c.snack_id
),
a AS (
    SELECT g.user_id, g.snack_id, g.genre_id,
           row_number() OVER (PARTITION BY g.user_id ORDER BY {order_g}) AS pos
    FROM g LEFT JOIN gcnt ON gcnt.user_id = g.user_id AND gcnt.genre_id = g.genre_id
    WHERE g.grank < {cap} - coalesce(gcnt.n, 0)
)
SELECT a.user_id, a.snack_id, a.genre_id, coalesce(cnt.n, 0) + a.pos AS slot, '{name}' AS stage
FROM a JOIN tgt t ON t.user_id = a.user_id LEFT JOIN cnt ON cnt.user_id = a.user_id
WHERE a.pos <= {target} - coalesce(cnt.n, 0)
"""


# ----------------------------------------------------------------------------- main entry


def run_duckdb(
    lake: str,
    date_from: datetime.date,
    date_to: datetime.date,
    params: dict | None = None,
    threads: int | None = None,
    *,
    validate: bool = True,
    timings: dict[str, float] | None = None,
    summary: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Pre-assign boxes for users due in [date_from, date_to] (SPEC §3), in DuckDB.

    Returns columns delivery_on (datetime.date), user_id (int64), slot (int64),
    snack_id (int64), stage (str), sorted by user_id, slot. If ``timings`` is a
    dict, seconds per step are stored in it; if ``summary`` is a dict,
    ``users_targeted``, ``boxes_full``, ``boxes_short`` and ``units_total``.
    """
    if date_from > date_to:
        raise ValueError(f"date_from {date_from} is after date_to {date_to}")
    p = _resolve_params(params)
    P = {k: _lit(v) for k, v in p.items()}
    # top-N aggregate size must be a positive constant; cap <= 0 is still enforced in stages
    top_n = max(p["max_per_genre"], 1)
    tm = timings if timings is not None else {}
    spill = tempfile.TemporaryDirectory(prefix="duckdb_peer_")
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET temp_directory = {_sql_str(spill.name)}")
        if threads is not None:
            con.execute(f"SET threads = {int(threads)}")
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET enable_progress_bar = false")
        con.execute(_MACROS)

        t0 = time.perf_counter()
        present = _create_raw_views(con, lake)
        if validate:
            _validate(con, present)
        tm["read_validate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        con.execute("CREATE TEMP TABLE users AS SELECT DISTINCT * FROM raw_users")
        _check_unique(con, "users", "users", "user_id")
        con.execute("""
CREATE TEMP TABLE snacks_d AS
SELECT DISTINCT snack_id, name, genre, ingredients, launched_on, retired_on FROM raw_snacks
""")
        _check_unique(con, "snacks_d", "snacks", "snack_id")
        # integer genre ids: cheaper hash keys / partitions than strings
        con.execute("""
CREATE TEMP TABLE snacks AS
SELECT snack_id, genre, CAST(dense_rank() OVER (ORDER BY genre) AS INTEGER) AS genre_id,
       ingredients, launched_on, retired_on
FROM snacks_d
""")
        con.execute("CREATE TEMP TABLE genres AS SELECT DISTINCT genre, genre_id FROM snacks")
        if "stock" in present and validate:
            con.execute("CREATE TEMP TABLE stock AS SELECT DISTINCT * FROM raw_stock")
            _check_unique(con, "stock", "stock", "snack_id")

        # target users and their box size K
        con.execute(f"""
CREATE TEMP TABLE tgt AS
SELECT user_id, next_delivery_on AS d,
       CAST(coalesce(box_size, {P['default_box_size']}) AS BIGINT) AS k
FROM users
WHERE status = 'active' AND next_delivery_on BETWEEN {_sql_date(date_from)} AND {_sql_date(date_to)}
""")
        # latest rating per (user, snack): greatest rated_at, then smallest rating; orphans out
        con.execute("""
CREATE TEMP TABLE lr AS
SELECT r.user_id, r.snack_id, arg_max(r.rating, (r.rated_at, -r.rating)) AS rating
FROM raw_ratings r
SEMI JOIN users u ON u.user_id = r.user_id
SEMI JOIN snacks s ON s.snack_id = r.snack_id
GROUP BY r.user_id, r.snack_id
""")
        # C (2.5 when there is no rating) and the smoothed prior of every snack
        con.execute(f"""
CREATE TEMP TABLE prior AS
WITH c AS (
    SELECT CASE WHEN count(*) = 0 THEN CAST(2.5 AS DOUBLE)
                ELSE CAST(sum(rating) AS DOUBLE) / CAST(count(*) AS DOUBLE) END AS c
    FROM lr
), a AS (
    SELECT snack_id, sum(rating) AS sm, count(*) AS n FROM lr GROUP BY snack_id
)
SELECT s.snack_id, s.genre_id, s.launched_on, s.retired_on,
       (CAST(coalesce(a.sm, 0) AS DOUBLE) + CAST({P['prior_weight']} AS DOUBLE) * c.c)
       / (CAST(coalesce(a.n, 0) AS DOUBLE) + CAST({P['prior_weight']} AS DOUBLE)) AS prior
FROM snacks s LEFT JOIN a USING (snack_id) CROSS JOIN c
""")
        # lineup of each delivery date (rule 1) with the "new on d" flag
        con.execute(f"""
CREATE TEMP TABLE lineup AS
SELECT dd.d, dd.d - DATE '1970-01-01' AS e, p.snack_id, p.genre_id, p.prior,
       CAST(p.launched_on > dd.d - {P['new_days']} AS DOUBLE) AS is_new
FROM (SELECT DISTINCT d FROM tgt) dd
JOIN prior p ON p.launched_on <= dd.d AND (p.retired_on IS NULL OR p.retired_on > dd.d)
""")
        # target users' latest ratings with genre
        con.execute("""
CREATE TEMP TABLE tlr AS
SELECT lr.user_id, lr.snack_id, lr.rating, s.genre_id
FROM lr SEMI JOIN tgt t ON t.user_id = lr.user_id JOIN snacks s ON s.snack_id = lr.snack_id
""")
        # per (user, genre): affinity μ_{u,g} − μ_u (rated genres) and favourite flag
        con.execute("""
CREATE TEMP TABLE ug AS
WITH mu AS (
    SELECT user_id, CAST(sum(rating) AS DOUBLE) / CAST(count(*) AS DOUBLE) AS mu
    FROM tlr GROUP BY user_id
), aff AS (
    SELECT t.user_id, t.genre_id,
           CAST(sum(t.rating) AS DOUBLE) / CAST(count(*) AS DOUBLE) - any_value(mu.mu) AS aff
    FROM tlr t JOIN mu ON mu.user_id = t.user_id
    GROUP BY t.user_id, t.genre_id
), fav AS (
    SELECT DISTINCT f.user_id, g.genre_id
    FROM raw_genre_prefs f SEMI JOIN tgt t ON t.user_id = f.user_id
    JOIN genres g ON g.genre = f.genre
)
SELECT user_id, genre_id, coalesce(aff.aff, CAST(0 AS DOUBLE)) AS aff,
       CAST(fav.user_id IS NOT NULL AS DOUBLE) AS fav
FROM aff FULL OUTER JOIN fav USING (user_id, genre_id)
""")
        # (user, snack) facts: excluded by rules 2-5, seen (delivered ever or rated), rating
        con.execute(f"""
CREATE TEMP TABLE pairs AS
WITH si AS (
    SELECT snack_id, unnest(ingredients) AS ingredient FROM snacks
)
SELECT user_id, snack_id, bool_or(excl) AS excl, bool_or(seen) AS seen, max(rating) AS rating
FROM (
    SELECT n.user_id, n.snack_id, true AS excl, false AS seen, CAST(NULL AS BIGINT) AS rating
    FROM raw_ng_snacks n SEMI JOIN tgt t ON t.user_id = n.user_id
    UNION ALL
    SELECT a.user_id, si.snack_id, true, false, NULL
    FROM (SELECT DISTINCT user_id, ingredient FROM raw_avoid_ingredients) a
    SEMI JOIN tgt t ON t.user_id = a.user_id
    JOIN si ON si.ingredient = a.ingredient
    UNION ALL
    SELECT user_id, snack_id, rating = 1, true, rating FROM tlr
    UNION ALL
    SELECT dl.user_id, dl.snack_id,
           dl.delivered_on BETWEEN t.d - {P['repeat_window_days']} AND t.d - 1, true, NULL
    FROM raw_deliveries dl JOIN tgt t ON t.user_id = dl.user_id
) x
GROUP BY user_id, snack_id
""")
        # request-stage candidates: eligible snacks requested in [d - window, d - 1] (UTC
        # date), keyed by the earliest qualifying requested_at
        con.execute(f"""
CREATE TEMP TABLE cand_req AS
SELECT r.user_id, r.snack_id, l.genre_id, min(r.requested_at) AS o
FROM raw_requests r
JOIN tgt t ON t.user_id = r.user_id
JOIN lineup l ON l.d = t.d AND l.snack_id = r.snack_id
LEFT JOIN pairs p ON p.user_id = r.user_id AND p.snack_id = r.snack_id
WHERE CAST(r.requested_at AS DATE) BETWEEN t.d - {P['request_window_days']} AND t.d - 1
  AND NOT coalesce(p.excl, false)
GROUP BY r.user_id, r.snack_id, l.genre_id
""")
        tm["user_state"] = time.perf_counter() - t0

        # all eligible (user, snack) with score and explore_key, each kept as the exact
        # integer N = rint(x * 1e6) (the rounded value is N / 1e6, so ordering by N is
        # ordering by the rounded value). Only the top max_per_genre per (user, genre)
        # in each order can ever be taken (module docstring, step 5): kept with a
        # top-N aggregate on a key ordered (N descending, snack_id ascending).
        t0 = time.perf_counter()
        packed = _can_pack(con, p)
        if packed:  # one BIGINT key: N * 2^32 + (2^32 - 1 - snack_id)
            key_s = "sn * 4294967296 + (4294967295 - snack_id)"
            key_e = "en * 4294967296 + (4294967295 - snack_id)"
            dec = "x >> 32 AS o, 4294967295 - (x & 4294967295) AS snack_id"
        else:  # general row key (N, -snack_id)
            key_s, key_e = "(sn, -snack_id)", "(en, -snack_id)"
            dec = "struct_extract(x, 1) AS o, -struct_extract(x, 2) AS snack_id"
        con.execute(f"""
CREATE TEMP TABLE top AS
WITH base AS (
    SELECT t.user_id, l.snack_id, l.genre_id,
           NOT coalesce(p.seen, false) AS novel,
           pa_rint6(
               l.prior
               + CASE p.rating WHEN 2 THEN {P['own_weight_2']} WHEN 3 THEN {P['own_weight_3']}
                               WHEN 4 THEN {P['own_weight_4']} ELSE CAST(0 AS DOUBLE) END
               + {P['genre_weight']} * coalesce(ug.aff, CAST(0 AS DOUBLE))
               + {P['favorite_genre_bonus']} * coalesce(ug.fav, CAST(0 AS DOUBLE))
           ) AS sn,
           pa_rint6(
               l.prior
               + {P['new_bonus']} * l.is_new
               + {P['explore_jitter']} * pa_jitter(t.user_id, l.snack_id, l.e)
           ) AS en
    FROM tgt t
    JOIN lineup l ON l.d = t.d
    LEFT JOIN pairs p ON p.user_id = t.user_id AND p.snack_id = l.snack_id
    LEFT JOIN ug ON ug.user_id = t.user_id AND ug.genre_id = l.genre_id
    WHERE NOT coalesce(p.excl, false)
)
SELECT user_id, genre_id,
       max({key_s}, {top_n}) AS top_score,
       max({key_e}, {top_n}) FILTER (WHERE novel) AS top_explore
FROM base
GROUP BY user_id, genre_id
""")
        # Per user, a score/explore stage scans at most need + 2 * (box count before
        # the stage) <= 2K of these rows before it is full (chosen rows and rows
        # skipped for the cap are each at most the box count), so keep 2K per user.
        for name, col in (("cand_score", "top_score"), ("cand_explore", "top_explore")):
            con.execute(f"""
CREATE TEMP TABLE {name} AS
SELECT c.user_id, c.genre_id, c.o, c.snack_id
FROM (
    SELECT user_id, genre_id, {dec}
    FROM (SELECT user_id, genre_id, unnest({col}) AS x FROM top)
) c JOIN tgt t ON t.user_id = c.user_id
QUALIFY row_number() OVER (PARTITION BY c.user_id ORDER BY c.o DESC, c.snack_id ASC) <= 2 * t.k
""")
        tm["candidates"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        con.execute(
            "CREATE TEMP TABLE box (user_id BIGINT, snack_id BIGINT, genre_id INTEGER, "
            "slot BIGINT, stage VARCHAR)"
        )
        fmt = {"maxreq": P["max_requests"], "explore": P["explore_slots"]}
        for name, table, order, target in _STAGES:
            con.execute(
                _stage_sql(name, table, order, target.format(**fmt), P["max_per_genre"])
            )
        tm["selection"] = time.perf_counter() - t0

        tbl = con.sql("""
SELECT t.d AS delivery_on, b.user_id, b.slot, b.snack_id, b.stage
FROM box b JOIN tgt t ON t.user_id = b.user_id
ORDER BY b.user_id, b.slot
""").to_arrow_table()
        if summary is not None:
            targeted, full = con.execute("""
SELECT count(*), count(*) FILTER (WHERE coalesce(n.n, 0) >= t.k)
FROM tgt t LEFT JOIN (SELECT user_id, count(*) AS n FROM box GROUP BY user_id) n USING (user_id)
""").fetchone()
            summary.update(users_targeted=int(targeted), boxes_full=int(full),
                           boxes_short=int(targeted - full), units_total=tbl.num_rows)
    finally:
        con.close()
        spill.cleanup()
    df = tbl.to_pandas(date_as_object=True)
    for c in ("user_id", "slot", "snack_id"):
        df[c] = df[c].astype("int64")
    df["stage"] = df["stage"].astype(object)
    return df


def demand_from_assignments(assignments: pd.DataFrame) -> pd.DataFrame:
    """SPEC §4 demand: one row per (delivery_on, snack_id) with units per stage (SQL)."""
    con = duckdb.connect(":memory:")
    try:
        con.register("assignments_in", assignments)
        tbl = con.sql("""
SELECT CAST(delivery_on AS DATE) AS delivery_on, CAST(snack_id AS BIGINT) AS snack_id,
       count(*) AS units,
       count(*) FILTER (WHERE stage = 'request') AS units_request,
       count(*) FILTER (WHERE stage = 'preference') AS units_preference,
       count(*) FILTER (WHERE stage = 'explore') AS units_explore,
       count(*) FILTER (WHERE stage = 'fallback') AS units_fallback
FROM assignments_in
GROUP BY 1, 2
ORDER BY 1, 2
""").to_arrow_table()
    finally:
        con.close()
    df = tbl.to_pandas(date_as_object=True)
    for c in df.columns[1:]:
        df[c] = df[c].astype("int64")
    return df


def jitter_sql(user_id: int, snack_id: int, d: datetime.date) -> float:
    """The SQL jitter for one triple (for tests / cross-checks)."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(_MACROS)
        return con.execute(
            f"SELECT pa_jitter(CAST({int(user_id)} AS HUGEINT), CAST({int(snack_id)} AS HUGEINT), "
            f"{_sql_date(d)} - DATE '1970-01-01')"
        ).fetchone()[0]
    finally:
        con.close()


def write_outputs(out: str, assignments: pd.DataFrame, demand: pd.DataFrame) -> None:
    """Write ``assignments/`` and ``demand/`` under ``out`` in the SPEC §4 layout.

    Each is one ``part.0.parquet`` with the types of :data:`ASSIGNMENTS_SCHEMA` /
    :data:`DEMAND_SCHEMA`, written to a staging directory first and moved into place
    only once written (:func:`benchmarks.peer_io.write_outputs`).

    Raises:
        FileExistsError: ``out`` already holds ``assignments`` or ``demand``.
    """
    tables = {name: pa.Table.from_pandas(frame[schema.names], schema=schema,
                                         preserve_index=False)
              for name, frame, schema in (("assignments", assignments, ASSIGNMENTS_SCHEMA),
                                          ("demand", demand, DEMAND_SCHEMA))}
    peer_io.write_outputs(out, tables, "duckdb_peer")


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.duckdb_peer LAKE DATE_FROM [DATE_TO] [--out DIR]``."""
    ap = peer_io.peer_parser("duckdb_peer", "DuckDB")
    ap.add_argument("--threads", type=int, help="DuckDB threads (default: all cores)")
    a = ap.parse_args(argv)

    def run(timings: dict[str, float], summary: dict[str, int]) -> pd.DataFrame:
        return run_duckdb(a.lake, a.date_from, a.date_to or a.date_from, threads=a.threads,
                          validate=not a.no_validate, timings=timings, summary=summary)

    def write(out: str, assignments: pd.DataFrame) -> None:
        write_outputs(out, assignments, demand_from_assignments(assignments))

    return peer_io.peer_main(a, run, write, (LakeError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
