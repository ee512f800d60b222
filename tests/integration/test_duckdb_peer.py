"""Tests of the DuckDB benchmark peer (benchmarks/duckdb_peer.py) against SPEC §3/§5."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.duckdb_peer import (  # noqa: E402
    _MACROS,
    ASSIGNMENTS_SCHEMA,
    DEFAULT_PARAMS,
    DEMAND_SCHEMA,
    LakeError,
    demand_from_assignments,
    jitter_sql,
    run_duckdb,
)

D = dt.date(2026, 12, 1)
T = dt.datetime

SCHEMAS = {
    "snacks": pa.schema(
        [
            ("snack_id", pa.int64()),
            ("name", pa.string()),
            ("genre", pa.string()),
            ("ingredients", pa.list_(pa.string())),
            ("launched_on", pa.date32()),
            ("retired_on", pa.date32()),
        ]
    ),
    "users": pa.schema(
        [
            ("user_id", pa.int64()),
            ("status", pa.string()),
            ("next_delivery_on", pa.date32()),
            ("box_size", pa.int32()),
        ]
    ),
    "ratings": pa.schema(
        [
            ("user_id", pa.int32()),
            ("snack_id", pa.int32()),
            ("rating", pa.int8()),
            ("rated_at", pa.timestamp("us")),
        ]
    ),
    "deliveries": pa.schema(
        [("user_id", pa.int64()), ("snack_id", pa.int64()), ("delivered_on", pa.date32())]
    ),
    "ng_snacks": pa.schema([("user_id", pa.int64()), ("snack_id", pa.int64())]),
    "avoid_ingredients": pa.schema([("user_id", pa.int64()), ("ingredient", pa.string())]),
    "genre_prefs": pa.schema([("user_id", pa.int64()), ("genre", pa.string())]),
    "requests": pa.schema(
        [("user_id", pa.int64()), ("snack_id", pa.int64()), ("requested_at", pa.timestamp("us"))]
    ),
    "stock": pa.schema([("snack_id", pa.int64()), ("quantity", pa.int64())]),
}
COLS = {t: s.names for t, s in SCHEMAS.items()}


def write_lake(root: Path, rows: dict[str, list[tuple]], schemas: dict | None = None) -> str:
    """One directory per table, one Parquet file each (empty list -> empty directory)."""
    schemas = {**SCHEMAS, **(schemas or {})}
    for table, data in rows.items():
        tdir = root / table
        tdir.mkdir(parents=True, exist_ok=True)
        if not data:
            continue
        cols = list(zip(*data, strict=False))
        arrays = {n: list(c) for n, c in zip(schemas[table].names, cols, strict=False)}
        pq.write_table(pa.table(arrays, schema=schemas[table]), tdir / "part-0.parquet")
    return str(root)


def snack(sid, genre, ingr=(), launched=dt.date(2026, 1, 1), retired=None):
    return (sid, f"snack {sid}", genre, None if ingr is None else list(ingr), launched, retired)


def example_rows() -> dict[str, list[tuple]]:
    t = T(2026, 10, 1, 12, 0, 0)
    return {
        "snacks": [
            snack(1, "choco", ["milk"]),
            snack(2, "choco", []),
            snack(3, "chips", None),
            snack(4, "chips", ["peanut"], dt.date(2026, 11, 20)),
            snack(5, "gummy", ["gelatin"], retired=dt.date(2026, 12, 1)),
            snack(6, "gummy", [], dt.date(2026, 12, 2)),
        ],
        "users": [(10, "active", D, 3), (20, "active", D, None), (30, "paused", D, 3)],
        "ratings": [
            (10, 1, 4, T(2026, 10, 1)),
            (10, 1, 1, T(2026, 9, 1)),
            (10, 3, 2, t),
            (20, 1, 4, t),
            (20, 1, 2, t),
            (30, 2, 4, t),
            (30, 4, 1, t),
        ],
        "deliveries": [(20, 3, dt.date(2026, 10, 2)), (10, 1, dt.date(2026, 10, 1))],
        "ng_snacks": [(10, 2)],
        "avoid_ingredients": [(20, "peanut")],
        "genre_prefs": [(20, "gummy"), (10, "chips")],
        "requests": [
            (10, 4, T(2026, 11, 30, 23, 59, 59)),
            (10, 3, T(2026, 9, 2)),
            (20, 2, T(2026, 12, 1)),
        ],
        "stock": [(1, 1), (3, 5), (99, 4)],
    }


def boxes(df: pd.DataFrame) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {}
    for r in df.itertuples(index=False):
        out.setdefault(int(r.user_id), []).append((int(r.snack_id), r.stage))
    return out


@pytest.fixture(scope="module")
def example_lake(tmp_path_factory) -> str:
    return write_lake(tmp_path_factory.mktemp("lake5"), example_rows())


# ----------------------------------------------------------------------------- §5


def test_worked_example_default(example_lake):
    out = run_duckdb(example_lake, D, D, threads=2)
    assert list(out.columns) == ["delivery_on", "user_id", "slot", "snack_id", "stage"]
    assert boxes(out) == {
        10: [(3, "request"), (4, "request"), (1, "fallback")],
        20: [(2, "preference"), (1, "preference")],
    }
    assert out["slot"].tolist() == [1, 2, 3, 1, 2]
    assert set(out["delivery_on"]) == {D}
    assert [str(out[c].dtype) for c in ("user_id", "slot", "snack_id")] == ["int64"] * 3

    dem = demand_from_assignments(out)
    assert dem.to_dict("records") == [
        dict(delivery_on=D, snack_id=1, units=2, units_request=0, units_preference=1,
             units_explore=0, units_fallback=1),
        dict(delivery_on=D, snack_id=2, units=1, units_request=0, units_preference=1,
             units_explore=0, units_fallback=0),
        dict(delivery_on=D, snack_id=3, units=1, units_request=1, units_preference=0,
             units_explore=0, units_fallback=0),
        dict(delivery_on=D, snack_id=4, units=1, units_request=1, units_preference=0,
             units_explore=0, units_fallback=0),
    ]


def test_worked_example_variant(example_lake):
    params = {"max_requests": 1, "explore_slots": 0, "repeat_window_days": 59}
    out = run_duckdb(example_lake, D, D, params)
    assert boxes(out) == {
        10: [(3, "request"), (1, "preference"), (4, "preference")],
        20: [(2, "preference"), (3, "preference"), (1, "preference")],
    }


def test_worked_example_date_range_excludes(example_lake):
    assert run_duckdb(example_lake, D + dt.timedelta(days=1), D + dt.timedelta(days=5)).empty
    out = run_duckdb(example_lake, D - dt.timedelta(days=3), D)
    assert sorted(set(out["user_id"])) == [10, 20]


def test_unknown_parameter(example_lake):
    with pytest.raises(ValueError, match="bogus"):
        run_duckdb(example_lake, D, D, {"bogus": 1})


# ----------------------------------------------------------------------------- jitter / rounding


def py_jitter(u: int, s: int, d: dt.date) -> float:
    m = (1 << 64) - 1
    x = (u * 0x9E3779B97F4A7C15 + s * 0xC2B2AE3D27D4EB4F + (d - dt.date(1970, 1, 1)).days) & m
    z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return (z >> 11) / 2**53


@pytest.mark.parametrize(
    "u,s,d,expected",
    [
        (1, 1, dt.date(2026, 12, 1), 0.7564211760476489),
        (123456789, 42, dt.date(2026, 12, 1), 0.10511997332800516),
        (987654321012, 300, dt.date(2027, 1, 15), 0.10719858741395072),
    ],
)
def test_jitter_vectors(u, s, d, expected):
    assert jitter_sql(u, s, d) == expected
    assert py_jitter(u, s, d) == expected


def test_jitter_matches_python_bulk():
    rng = random.Random(7)
    con = duckdb.connect()
    con.execute(_MACROS)
    trip = [
        (rng.randrange(0, 2**40), rng.randrange(0, 2**31), rng.randrange(-5000, 40000))
        for _ in range(2000)
    ] + [(2**63 - 1, 2**63 - 1, 0), (0, 0, 0)]
    df = pd.DataFrame(trip, columns=["u", "s", "e"])
    con.register("trip", df)
    got = con.execute("SELECT pa_jitter(u, s, e) FROM trip").fetchnumpy()
    got = list(got[next(iter(got))])
    exp = [py_jitter(u, s, dt.date(1970, 1, 1) + dt.timedelta(days=e)) for u, s, e in trip]
    assert got == exp
    con.close()


def test_round6_is_numpy_round_half_even():
    rng = np.random.default_rng(3)
    ties = (np.arange(-3000, 3000) + 0.5) / 1e6  # x*1e6 near k + 0.5
    x = np.concatenate(
        [
            rng.uniform(-10, 10, 20000),
            ties,
            np.nextafter(ties, np.inf),
            np.nextafter(ties, -np.inf),
            [2.5e-6, 3.5e-6, -2.5e-6, 0.0000005, 0.0000015, 1.0000005, 2.6666665],
            [4503599627.3704995],
        ]
    )
    con = duckdb.connect()
    con.execute(_MACROS)
    con.register("xs", pd.DataFrame({"x": x}))
    got = con.execute("SELECT pa_round6(x) AS r FROM xs").fetchnumpy()["r"]
    np.testing.assert_array_equal(got, np.round(x, 6))
    # the integer form used for ordering: N / 1e6 is the rounded value, bit for bit
    sql = "SELECT CAST(pa_rint6(x) AS DOUBLE) / 1000000.0 AS r FROM xs"
    got = con.execute(sql).fetchnumpy()["r"]
    np.testing.assert_array_equal(got, np.round(x, 6))
    # exact binary ties of y = x*1e6 go to even, unlike DuckDB's round()
    y = np.arange(-50, 50) + 0.5
    con.register("ys", pd.DataFrame({"y": y}))
    got = con.execute("SELECT round_even(y, 0) AS r FROM ys").fetchnumpy()["r"]
    np.testing.assert_array_equal(got, np.rint(y))
    con.close()


# ----------------------------------------------------------------------------- hand-checked cases


def base_rows(snacks, users, **extra):
    rows = {t: [] for t in SCHEMAS if t != "stock"}
    rows["snacks"] = snacks
    rows["users"] = users
    rows.update(extra)
    return rows


def test_genre_cap_across_stages(tmp_path):
    # no ratings -> every prior = 2.5; favourite genre A -> A scores 3.0, B 2.5
    snacks = [snack(i, "A") for i in range(1, 6)] + [snack(6, "B"), snack(7, "B")]
    users = [(1, "active", D, 5), (2, "active", D, 5), (3, "active", D, 7)]
    lake = write_lake(
        tmp_path,
        base_rows(
            snacks,
            users,
            genre_prefs=[(1, "A"), (2, "A"), (3, "A")],
            requests=[(2, 5, T(2026, 11, 1)), (2, 4, T(2026, 11, 2))],
        ),
    )
    out = run_duckdb(lake, D, D, {"explore_slots": 0})
    assert boxes(out) == {
        1: [(1, "preference"), (2, "preference"), (3, "preference"),
            (6, "preference"), (7, "preference")],
        2: [(5, "request"), (4, "request"), (1, "preference"),
            (6, "preference"), (7, "preference")],
        # K=7 but only 3 A + 2 B may go in: short
        3: [(1, "preference"), (2, "preference"), (3, "preference"),
            (6, "preference"), (7, "preference")],
    }
    out = run_duckdb(lake, D, D, {"explore_slots": 0, "max_per_genre": 1})
    assert boxes(out)[2] == [(5, "request"), (6, "preference")]


def test_box_size_one(tmp_path):
    snacks = [snack(i, "A") for i in range(1, 9)]
    users = [(7, "active", D, 1), (8, "active", D, 1)]
    lake = write_lake(tmp_path, base_rows(snacks, users, requests=[(8, 6, T(2026, 11, 20))]))
    out = run_duckdb(lake, D, D)
    # user 7: request target min(2,1)=1 not met by requests, preference target 1-2 < 0,
    # explore fills the single slot with the best jitter (priors equal, nothing new)
    best = max(range(1, 9), key=lambda s: (np.round(2.5 + 0.5 * py_jitter(7, s, D), 6), -s))
    assert boxes(out) == {7: [(best, "explore")], 8: [(6, "request")]}


def test_request_window_boundaries(tmp_path):
    snacks = [snack(i, "G%d" % i) for i in range(1, 7)]
    users = [(1, "active", D, 6), (2, "active", D, 6)]
    lake = write_lake(
        tmp_path,
        base_rows(
            snacks,
            users,
            requests=[
                (1, 1, T(2026, 9, 2, 0, 0, 0)),  # d-90: counts
                (1, 2, T(2026, 9, 1, 23, 59, 59)),  # d-91: does not
                (1, 3, T(2026, 11, 30, 23, 59, 59)),  # d-1: counts
                (1, 4, T(2026, 12, 1, 0, 0, 0)),  # d: does not
                (1, 4, T(2026, 8, 1)),  # also outside: still not counted
                (2, 5, T(2026, 11, 1)),  # a later and an earlier qualifying one:
                (2, 5, T(2026, 10, 1)),  # earliest (10-01) is used
                (2, 6, T(2026, 10, 15)),
            ],
        ),
    )
    out = run_duckdb(lake, D, D, {"max_requests": 6})
    got = {u: [s for s, st in b if st == "request"] for u, b in boxes(out).items()}
    assert got == {1: [1, 3], 2: [5, 6]}
    out = run_duckdb(lake, D, D, {"max_requests": 6, "request_window_days": 1})
    got = {u: [s for s, st in b if st == "request"] for u, b in boxes(out).items()}
    assert got == {1: [3], 2: []}


def test_request_window_tz_aware_uses_utc_date(tmp_path):
    snacks = [snack(1, "A"), snack(2, "B")]
    users = [(1, "active", D, 2)]
    ts = pa.timestamp("us", tz="Asia/Tokyo")
    rows = base_rows(
        snacks,
        users,
        requests=[
            # 2026-12-01 01:00 in Tokyo = 2026-11-30 16:00 UTC -> UTC date d-1: counts
            (1, 2, pd.Timestamp("2026-12-01 01:00", tz="Asia/Tokyo").to_pydatetime()),
            # 2026-12-01 09:30 in Tokyo = 2026-12-01 00:30 UTC -> UTC date d: does not count
            (1, 1, pd.Timestamp("2026-12-01 09:30", tz="Asia/Tokyo").to_pydatetime()),
        ],
    )
    schema = pa.schema([("user_id", pa.int64()), ("snack_id", pa.int64()), ("requested_at", ts)])
    lake = write_lake(tmp_path, rows, {"requests": schema})
    out = run_duckdb(lake, D, D)
    assert [(s, st) for s, st in boxes(out)[1] if st == "request"] == [(2, "request")]


def test_latest_rating_tie_orphans_duplicates_and_layout(tmp_path):
    snacks = [snack(1, "A"), snack(2, "A"), snack(3, "B")]
    users = [(1, "active", D, 3), (2, "cancelled", None, None)]
    t = T(2026, 5, 1)
    rows = base_rows(
        snacks,
        users + [users[0]],  # identical duplicate row: set semantics, fine
        ratings=[
            (1, 3, 4, t), (1, 3, 1, t),  # same instant -> smallest (1) -> 3 ineligible for 1
            (2, 1, 4, t), (2, 1, 4, t),  # identical duplicate
            # orphans (unknown user / unknown snack): if they counted, snack 2's prior
            # would beat snack 1's
            (997, 2, 4, t), (998, 2, 4, t), (999, 2, 4, t), (2, 77, 1, t),
        ],
    )
    root = tmp_path / "lake"
    write_lake(root, rows)
    # a second file, int32/ns/int64 types and an extra column, under a hive-style directory
    extra = pa.table(
        {"user_id": pa.array([2], pa.int32()), "snack_id": pa.array([2], pa.int64()),
         "rating": pa.array([3], pa.int64()), "rated_at": pa.array([t], pa.timestamp("ns")),
         "junk": ["x"]}
    )
    (root / "ratings" / "year=2026").mkdir()
    pq.write_table(extra, root / "ratings" / "year=2026" / "p.parquet")
    out = run_duckdb(str(root), D, D, {"explore_slots": 0})
    # latest ratings: (1,3)=1, (2,1)=4, (2,2)=3 -> C = 8/3; prior 1 > prior 2
    # user 1 has only a rating in genre B -> affinity 0 for A; snack 3 excluded
    c = 8 / 3
    assert (4 + 20 * c) / 21 > (3 + 20 * c) / 21
    assert boxes(out) == {1: [(1, "preference"), (2, "preference")]}


def test_empty_and_missing_tables(tmp_path):
    rows = base_rows([snack(1, "A")], [(1, "active", D, None)])
    root = tmp_path / "ok"
    write_lake(root, rows)
    out = run_duckdb(str(root), D, D)
    assert boxes(out) == {1: [(1, "preference")]}  # empty tables: the only snack, short box
    bad = tmp_path / "bad"
    write_lake(bad, {k: v for k, v in rows.items() if k != "ratings"})
    with pytest.raises(LakeError, match="ratings"):
        run_duckdb(str(bad), D, D)
    nocol = tmp_path / "nocol"
    write_lake(nocol, rows)
    pq.write_table(pa.table({"user_id": [1], "genre_x": ["A"]}),
                   nocol / "genre_prefs" / "part-0.parquet")
    with pytest.raises(LakeError, match="'genre_prefs'.*'genre'"):
        run_duckdb(str(nocol), D, D)


def test_invalid_values_are_errors(tmp_path):
    rows = base_rows([snack(1, "A")], [(1, "active", D, None)], ratings=[(1, 1, 5, T(2026, 1, 1))])
    with pytest.raises(LakeError, match="'rating'.*1 invalid"):
        run_duckdb(write_lake(tmp_path / "a", rows), D, D)
    rows = base_rows([snack(1, "A"), snack(1, "B")], [(1, "active", D, None)])
    with pytest.raises(LakeError, match="snack_id"):
        run_duckdb(write_lake(tmp_path / "b", rows), D, D)
    rows = base_rows([snack(1, "A")], [(1, "active", D, 0)])
    with pytest.raises(LakeError, match="box_size"):
        run_duckdb(write_lake(tmp_path / "c", rows), D, D)


# ----------------------------------------------------------------------------- reference


def reference(rows: dict[str, list[tuple]], dfrom, dto, params=None) -> list[tuple]:
    """Literal per-user transcription of SPEC §3 (test oracle only)."""
    p = {**DEFAULT_PARAMS, **(params or {})}
    snacks = {r[0]: dict(genre=r[2], ingr=r[3] or [], launched=r[4], retired=r[5])
              for r in rows["snacks"]}
    users = {r[0]: dict(status=r[1], d=r[2], k=r[3]) for r in rows["users"]}

    def ok(r):
        return r[0] in users and r[1] in snacks

    latest: dict[tuple, tuple] = {}
    for u, s, rating, at in filter(ok, rows["ratings"]):
        key = (at, -rating)
        if (u, s) not in latest or key > latest[(u, s)][0]:
            latest[(u, s)] = (key, rating)
    lr = {k: v[1] for k, v in latest.items()}
    vals = list(lr.values())
    C = sum(vals) / len(vals) if vals else 2.5
    m = p["prior_weight"]
    prior = {}
    for s in snacks:
        rs = [r for (u2, s2), r in lr.items() if s2 == s]
        prior[s] = (sum(rs) + m * C) / (len(rs) + m)
    ng = set(filter(ok, rows["ng_snacks"]))
    avoid = {(u, i) for u, i in rows["avoid_ingredients"] if u in users}
    fav = {(u, g) for u, g in rows["genre_prefs"] if u in users}
    deliv = [r for r in rows["deliveries"] if ok(r)]
    reqs = [r for r in rows["requests"] if ok(r)]
    own_w = {2: p["own_weight_2"], 3: p["own_weight_3"], 4: p["own_weight_4"]}
    cap = p["max_per_genre"]
    out = []
    for u in sorted(users):
        info = users[u]
        d = info["d"]
        if info["status"] != "active" or d is None or not (dfrom <= d <= dto):
            continue
        K = info["k"] if info["k"] is not None else p["default_box_size"]
        mine = {s: r for (u2, s), r in lr.items() if u2 == u}
        mu = sum(mine.values()) / len(mine) if mine else None
        by_g: dict[str, list[int]] = {}
        for s, r in mine.items():
            by_g.setdefault(snacks[s]["genre"], []).append(r)
        aff = {g: sum(v) / len(v) - mu for g, v in by_g.items()}
        rw = dt.timedelta(days=p["repeat_window_days"])
        elig = []
        for s, sn in snacks.items():
            if not (sn["launched"] <= d and (sn["retired"] is None or sn["retired"] > d)):
                continue
            if (u, s) in ng or any((u, i) in avoid for i in sn["ingr"] if i is not None):
                continue
            if mine.get(s) == 1:
                continue
            if any(u2 == u and s2 == s and d - rw <= dd <= d - dt.timedelta(days=1)
                   for u2, s2, dd in deliv):
                continue
            elig.append(s)
        score, ekey, novel = {}, {}, {}
        for s in elig:
            g = snacks[s]["genre"]
            x = prior[s] + own_w.get(mine.get(s), 0.0) + p["genre_weight"] * aff.get(g, 0.0)
            x = x + p["favorite_genre_bonus"] * (1.0 if (u, g) in fav else 0.0)
            score[s] = float(np.round(x, 6))
            novel[s] = s not in mine and not any(u2 == u and s2 == s for u2, s2, _ in deliv)
            is_new = d - dt.timedelta(days=p["new_days"]) < snacks[s]["launched"] <= d
            y = prior[s] + p["new_bonus"] * (1.0 if is_new else 0.0)
            ekey[s] = float(np.round(y + p["explore_jitter"] * py_jitter(u, s, d), 6))
        lo = d - dt.timedelta(days=p["request_window_days"])
        first: dict[int, dt.datetime] = {}
        for u2, s, at in reqs:
            if u2 == u and lo <= at.date() <= d - dt.timedelta(days=1) and s in score:
                first[s] = min(first.get(s, at), at)
        box: list[tuple[int, str]] = []
        gc: Counter = Counter()

        def stage(order, target, name, box=box, gc=gc):
            for s in order:
                if len(box) >= target:
                    return
                if s in [b for b, _ in box] or gc[snacks[s]["genre"]] >= cap:
                    continue
                box.append((s, name))
                gc[snacks[s]["genre"]] += 1

        stage(sorted(first, key=lambda s: (first[s], s)), min(p["max_requests"], K), "request")
        by_score = sorted(score, key=lambda s: (-score[s], s))
        stage(by_score, K - p["explore_slots"], "preference")
        stage(sorted((s for s in ekey if novel[s]), key=lambda s: (-ekey[s], s)), K, "explore")
        stage(by_score, K, "fallback")
        out += [(d, u, i + 1, s, st) for i, (s, st) in enumerate(box)]
    return out


RANDOM_SCHEMAS = {
    "ratings": pa.schema(
        [
            ("user_id", pa.int64()),
            ("snack_id", pa.int64()),
            ("rating", pa.int64()),
            ("rated_at", pa.timestamp("ms")),
        ]
    )
}


def random_rows(seed: int) -> tuple[dict[str, list[tuple]], dict]:
    rng = random.Random(seed)
    genres = ["g%d" % i for i in range(rng.randint(1, 4))]
    ingr = ["i%d" % i for i in range(5)]
    days = [D + dt.timedelta(days=i) for i in range(3)]
    n_s = rng.randint(4, 18)
    off = rng.choice([0, 0, 0, 2**33])  # ids >= 2^32 take the general (unpacked) key path
    snacks = []
    for s in range(off + 1, off + n_s + 1):
        launched = D + dt.timedelta(days=rng.randint(-60, 2))
        retired = rng.choice([None, None, D + dt.timedelta(days=rng.randint(-3, 3))])
        ing = rng.choice([None, [], rng.sample(ingr, rng.randint(1, 2))])
        snacks.append(snack(s, rng.choice(genres), ing, launched, retired))
    users = []
    for u in range(1, rng.randint(3, 25)):
        users.append((u * 1000003, rng.choice(["active"] * 4 + ["paused", "cancelled"]),
                      rng.choice(days + [None]), rng.choice([None, 1, 2, 3, 5, 8, 12])))
    uids = [u[0] for u in users] + [424242]  # includes an orphan user
    sids = list(range(off + 1, off + n_s + 2))  # includes an orphan snack
    base_t = T(2026, 8, 1)

    def ts():
        return base_t + dt.timedelta(hours=rng.choice([0, 12, 24 * 30]) * rng.randint(0, 4))

    rows = {
        "snacks": snacks,
        "users": users,
        "ratings": [(rng.choice(uids), rng.choice(sids), rng.randint(1, 4), ts())
                    for _ in range(rng.randint(0, 60))],
        "deliveries": [(rng.choice(uids), rng.choice(sids), D + dt.timedelta(rng.randint(-70, 3)))
                       for _ in range(rng.randint(0, 40))],
        "ng_snacks": [(rng.choice(uids), rng.choice(sids)) for _ in range(rng.randint(0, 8))],
        "avoid_ingredients": [(rng.choice(uids), rng.choice(ingr))
                              for _ in range(rng.randint(0, 6))],
        "genre_prefs": [(rng.choice(uids), rng.choice(genres)) for _ in range(rng.randint(0, 8))],
        "requests": [(rng.choice(uids), rng.choice(sids),
                      T(2026, 12, 1) + dt.timedelta(hours=rng.randint(-24 * 95, 48)))
                     for _ in range(rng.randint(0, 40))],
    }
    params = rng.choice([
        {},
        {"max_per_genre": 1},
        {"max_per_genre": 2, "explore_slots": 0, "max_requests": 3},
        {"explore_slots": 4, "new_days": 10, "repeat_window_days": 5, "default_box_size": 4},
        {"prior_weight": 3, "genre_weight": 1.25, "explore_jitter": 2.0, "max_requests": 0},
        {"own_weight_4": 1500.25, "own_weight_2": -0.1, "max_per_genre": 2},  # unpacked keys
    ])
    return rows, params


@pytest.mark.parametrize("seed", range(16))
def test_matches_reference_on_random_lakes(tmp_path, seed):
    rows, params = random_rows(seed)
    lake = write_lake(tmp_path, rows, RANDOM_SCHEMAS)
    dfrom, dto = D, D + dt.timedelta(days=1 + seed % 2)
    got = run_duckdb(lake, dfrom, dto, params, threads=2)
    exp = reference(rows, dfrom, dto, params)
    assert list(got.itertuples(index=False, name=None)) == exp


# ----------------------------------------------------------------------------- command line


def test_worked_example_summary(example_lake):
    summary: dict[str, int] = {}
    run_duckdb(example_lake, D, D, summary=summary)
    assert summary == {"users_targeted": 2, "boxes_full": 1, "boxes_short": 1, "units_total": 5}


@pytest.fixture(scope="module")
def synth_lake_run(tmp_path_factory) -> tuple[str, str]:
    """A small synthetic lake and preassign's outputs for its two weeks."""
    import dask

    from preassign import synth
    from preassign.pipeline import RunConfig, run_preassignment

    base = tmp_path_factory.mktemp("synth")
    lake, out = str(base / "lake"), str(base / "out")
    with dask.config.set(scheduler="sync"):
        synth.write_lake(synth.SynthConfig(users=600, users_per_partition=250, seed=8, as_of=D),
                         lake)
        run_preassignment(RunConfig(lake=lake, date_from=D, date_to=D + dt.timedelta(days=13),
                                    out=out))
    return lake, out


def test_cli_writes_preassign_outputs(synth_lake_run, tmp_path):
    lake, out = synth_lake_run
    mine = tmp_path / "duckdb"
    cmd = [sys.executable, "-m", "benchmarks.duckdb_peer", lake, "2026-12-01", "2026-12-14",
           "--out", str(mine), "--threads", "2"]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    with open(os.path.join(out, "summary.json")) as f:
        manifest = json.load(f)
    assert line.startswith(
        f"users_targeted={manifest['users_targeted']} boxes_full={manifest['boxes_full']} "
        f"boxes_short={manifest['boxes_short']} units={manifest['units_total']} seconds=")
    for name, schema, keys in (("assignments", ASSIGNMENTS_SCHEMA, ["user_id", "slot"]),
                               ("demand", DEMAND_SCHEMA, ["delivery_on", "snack_id"])):
        got = pq.read_table(mine / name)
        assert got.schema.remove_metadata() == schema
        got = got.to_pandas().sort_values(keys).reset_index(drop=True)
        exp = pd.read_parquet(os.path.join(out, name))[list(got.columns)]
        exp = exp.sort_values(keys).reset_index(drop=True)
        assert len(got) > 1000
        pd.testing.assert_frame_equal(got, exp, check_dtype=False)
    assert sorted(os.listdir(mine)) == ["assignments", "demand"]
    again = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "exists" in again.stderr
