"""Tests of the Polars benchmark peer (benchmarks/polars_peer.py) against SPEC §3-§5.

The peer is held to the per-user reference (tests/oracle/reference.py) on many random
lakes written in messy layouts, to the SPEC §5 worked example number by number, and
to the preassign pipeline on a synthetic lake; its command line writes SPEC §4 outputs
that equal preassign's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import benchmarks.polars_peer as peer
from benchmarks.polars_peer import (
    DEFAULT_PARAMS,
    LakeError,
    count_demand,
    jitter,
    micro_units,
    run_polars,
)
from preassign import Params
from tests.oracle.reference import (
    reference_jitter,
    reference_run,
    worked_example_tables,
)
from tests.support.lakes import BASE, random_params, random_tables, write_tables

D = dt.date(2026, 12, 1)
ROOT = Path(__file__).resolve().parents[2]
STAGE_NAMES = ("request", "preference", "explore", "fallback")


def rows(frame: pl.DataFrame) -> list[tuple]:
    return list(frame.iter_rows())


def reference_rows(tables, date_from, date_to, params=None):
    ref = reference_run(tables, date_from, date_to, params)
    a = ref.assignments
    assignments = list(zip(a["delivery_on"], a["user_id"].astype(int), a["slot"].astype(int),
                           a["snack_id"].astype(int), a["stage"], strict=True))
    d = ref.demand
    demand = [tuple(r) for r in d[["delivery_on", "snack_id", "units"]
                                   + [f"units_{s}" for s in STAGE_NAMES]].itertuples(index=False)]
    return ref, assignments, [tuple(int(v) if i else v for i, v in enumerate(r)) for r in demand]


@pytest.fixture(scope="module")
def worked_lake(tmp_path_factory) -> str:
    return write_tables(worked_example_tables(), str(tmp_path_factory.mktemp("lake5") / "lake"))


# ----------------------------------------------------------------------------- parameters


def test_default_params_equal_package_params():
    # SPEC §3's rule parameters; stock_max_rounds (§6 only) is a no-op for this peer
    package = {k: v for k, v in Params().to_dict().items() if k != "stock_max_rounds"}
    assert DEFAULT_PARAMS == package
    assert list(DEFAULT_PARAMS) == list(package)


def test_stock_max_rounds_is_accepted_as_a_no_op(worked_lake):
    base = run_polars(worked_lake, D, D)
    assert run_polars(worked_lake, D, D, {"stock_max_rounds": 3}).equals(base)


@pytest.mark.parametrize("params, match", [
    ({"bogus": 1}, "bogus"),
    ({"max_requests": 1.5}, "integer"),
    ({"genre_weight": float("nan")}, "finite"),
    ({"prior_weight": 0}, "prior_weight"),
    ({"explore_slots": True}, "number"),
], ids=["unknown", "int", "finite", "prior", "bool"])
def test_bad_parameters(worked_lake, params, match):
    with pytest.raises(ValueError, match=match):
        run_polars(worked_lake, D, D, params)


# ----------------------------------------------------------------------------- SPEC §5


def test_worked_example_numbers(worked_lake):
    """Latest ratings, C, priors and scores of SPEC §5, from the peer's own frames."""
    p = peer._resolve_params(None)
    tables = {t: f for t in peer.TABLE_KINDS if (f := peer._scan_table(worked_lake, t)) is not None}
    users = tables["users"].collect()
    snacks = tables["snacks"].collect().with_columns(
        snack_idx=(pl.col("snack_id").rank("dense") - 1).cast(pl.Int64),
        genre_id=(pl.col("genre").rank("dense") - 1).cast(pl.Int64),
    )
    latest = peer._latest_ratings(tables["ratings"]).collect()
    assert sorted(latest.iter_rows()) == [(10, 1, 4), (10, 3, 2), (20, 1, 2), (30, 2, 4), (30, 4, 1)]
    priors = peer._priors(snacks, latest, 20.0).sort("snack_id")
    assert priors["c"][0] == 13 / 5
    assert [round(x, 6) for x in priors["prior"]] == [
        2.636364, 2.666667, 2.571429, 2.523810, 2.6, 2.6]
    assert list(priors["prior"]) == [(6 + 52) / 22, 56 / 21, 54 / 21, 53 / 21, 2.6, 2.6]

    targets = peer._targets(users, D, D, 8)
    assert sorted(targets.select("user_id", "k").iter_rows()) == [(10, 3), (20, 8)]
    _, keyed = peer._candidate_lists(tables, targets, snacks, latest, priors, p, packed=True)
    n = 6  # snacks in the lake: key = -N * n + snack_idx, snack_idx = snack_id - 1 here
    keyed = keyed.collect().with_columns(user_idx=pl.col("pair") // n).join(
        targets.select("user_idx", "user_id"), on="user_idx")
    decoded = {(u, k % n + 1): -(k - k % n) // n for u, k in keyed.select("user_id", "score_key").iter_rows()}
    assert decoded == {
        (10, 1): 4_636_364, (10, 3): 1_571_429, (10, 4): 2_523_810,  # 2 is NG for user 10
        (20, 1): 1_636_364, (20, 2): 2_666_667,  # 3 in the repeat window, 4 has peanut
    }
    novel = {(u, k % n + 1) for u, k in keyed.drop_nulls("explore_key").select("user_id", "explore_key").iter_rows()}
    assert novel == {(10, 4), (20, 2)}


def test_worked_example_default(worked_lake):
    summary: dict[str, int] = {}
    out = run_polars(worked_lake, D, D, summary=summary)
    assert out.schema == pl.Schema({"delivery_on": pl.Date, "user_id": pl.Int64, "slot": pl.Int32,
                                    "snack_id": pl.Int64, "stage": pl.String})
    assert rows(out) == [
        (D, 10, 1, 3, "request"), (D, 10, 2, 4, "request"), (D, 10, 3, 1, "fallback"),
        (D, 20, 1, 2, "preference"), (D, 20, 2, 1, "preference"),
    ]
    assert rows(count_demand(out)) == [
        (D, 1, 2, 0, 1, 0, 1),
        (D, 2, 1, 0, 1, 0, 0),
        (D, 3, 1, 1, 0, 0, 0),
        (D, 4, 1, 1, 0, 0, 0),
    ]
    assert summary == {"users_targeted": 2, "boxes_full": 1, "boxes_short": 1, "units_total": 5}


def test_worked_example_variant(worked_lake):
    params = {"max_requests": 1, "explore_slots": 0, "repeat_window_days": 59}
    summary: dict[str, int] = {}
    out = run_polars(worked_lake, D, D, params, summary=summary)
    assert rows(out) == [
        (D, 10, 1, 3, "request"), (D, 10, 2, 1, "preference"), (D, 10, 3, 4, "preference"),
        (D, 20, 1, 2, "preference"), (D, 20, 2, 3, "preference"), (D, 20, 3, 1, "preference"),
    ]
    assert summary == {"users_targeted": 2, "boxes_full": 1, "boxes_short": 1, "units_total": 6}


def test_worked_example_date_ranges(worked_lake):
    summary: dict[str, int] = {}
    assert run_polars(worked_lake, D + dt.timedelta(days=1), D + dt.timedelta(days=5),
                      summary=summary).is_empty()
    assert summary["users_targeted"] == 0
    out = run_polars(worked_lake, D - dt.timedelta(days=3), D)
    assert sorted(set(out["user_id"])) == [10, 20]
    with pytest.raises(ValueError, match="after"):
        run_polars(worked_lake, D, D - dt.timedelta(days=1))


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("u, s, d, expected", [
    (1, 1, dt.date(2026, 12, 1), 0.7564211760476489),
    (123456789, 42, dt.date(2026, 12, 1), 0.10511997332800516),
    (987654321012, 300, dt.date(2027, 1, 15), 0.10719858741395072),
])
def test_jitter_vectors(u, s, d, expected):
    e = (d - dt.date(1970, 1, 1)).days
    assert pl.select(jitter(pl.lit(u), pl.lit(s), pl.lit(e))).item() == expected


def test_jitter_wraps_like_python_ints():
    """UInt64 * and + in Polars wrap modulo 2**64: the jitter equals the Python-int one."""
    rng = np.random.default_rng(7)
    u = np.concatenate([rng.integers(-2**40, 2**62, 3000), [0, 1, -1, 2**63 - 1, -2**63]])
    s = np.concatenate([rng.integers(-2**31, 2**40, 3000), [0, 2**63 - 1, -1, -2**63, 1]])
    e = np.concatenate([rng.integers(-40000, 60000, 3000), [0, -1, 2**31 - 1, -2**31, 20788]])
    frame = pl.DataFrame({"u": u, "s": s, "e": e.astype(np.int32)})
    got = frame.select(jitter(pl.col("u"), pl.col("s"), pl.col("e"))).to_series().to_list()
    epoch = dt.date(1970, 1, 1)
    expected = []
    for a, b, c in zip(u.tolist(), s.tolist(), e.tolist(), strict=True):
        if -719162 <= c <= 2932896:  # a representable date: the reference itself
            expected.append(reference_jitter(a, b, epoch + dt.timedelta(days=c)))
        else:  # the same formula on Python ints
            m = (1 << 64) - 1
            x = (a * 0x9E3779B97F4A7C15 + b * 0xC2B2AE3D27D4EB4F + c) & m
            z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
            expected.append(((z ^ (z >> 31)) >> 11) / 2**53)
    assert got == expected


def test_micro_units_is_numpy_round_bit_for_bit():
    rng = np.random.default_rng(3)
    ties = (np.arange(-3000, 3000) + 0.5) / 1e6  # x * 1e6 near k + 0.5
    x = np.concatenate([
        rng.uniform(-10, 10, 50000), ties, np.nextafter(ties, np.inf), np.nextafter(ties, -np.inf),
        [2.5e-6, 3.5e-6, -2.5e-6, 0.0000005, 0.0000015, 1.0000005, 2.6666665, 0.49999999999999994,
         4503599627.3704995, 2.0**40 + 0.5, -0.0],
    ])
    n = pl.DataFrame({"x": x}).select(micro_units(pl.col("x"))).to_series().to_numpy()
    np.testing.assert_array_equal(n, np.rint(x * 1e6).astype(np.int64))
    np.testing.assert_array_equal(n / 1e6, np.round(x, 6))  # N / 1e6 is numpy's rounded value
    # products x * 1e6 that are exact ties m + 0.5 go to the even m, as np.rint does
    m = np.arange(-5000, 5000)
    y = (m + 0.5) / 1e6
    exact = y * 1e6 == m + 0.5
    assert exact.sum() > 1000
    got = pl.DataFrame({"y": y[exact]}).select(micro_units(pl.col("y"))).to_series().to_numpy()
    np.testing.assert_array_equal(got, np.where(m[exact] % 2 == 0, m[exact], m[exact] + 1))


def test_ratio_is_ieee_division():
    """Means as sum ÷ count equal Python's, also where a reciprocal product would not."""
    s, n = np.meshgrid(np.arange(0, 400), np.arange(1, 120))
    frame = pl.DataFrame({"s": s.ravel(), "n": n.ravel()})
    got = frame.select(peer._ratio(pl.col("s"), pl.col("n"))).to_series().to_list()
    assert got == [a / b for a, b in zip(s.ravel().tolist(), n.ravel().tolist(), strict=True)]
    one = pl.DataFrame({"s": [3], "n": [10]})  # one-row frames (C) too
    assert one.select(peer._ratio(pl.col("s"), pl.col("n"))).item() == 0.3


# ----------------------------------------------------------------------------- reference


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    tables = random_tables(rng)
    params = random_params(rng)
    date_from = BASE + dt.timedelta(days=int(rng.integers(-1, 3)))
    date_to = date_from + dt.timedelta(days=int(rng.integers(0, 4)))
    return rng, tables, params, date_from, date_to


def _assert_matches_reference(lake, tables, params, date_from, date_to):
    summary: dict[str, int] = {}
    got = run_polars(lake, date_from, date_to, params, summary=summary)
    ref, assignments, demand = reference_rows(tables, date_from, date_to, params)
    assert rows(got) == assignments
    assert rows(count_demand(got)) == demand
    assert summary == {"users_targeted": ref.users_targeted, "boxes_full": ref.boxes_full,
                       "boxes_short": ref.boxes_short, "units_total": ref.units_total}


@pytest.mark.parametrize("seed", range(48))
def test_matches_reference_on_random_lakes(tmp_path, seed):
    rng, tables, params, date_from, date_to = _random_case(seed)
    lake = write_tables(tables, str(tmp_path / "lake"), rng=rng, messy=seed % 3 != 0)
    _assert_matches_reference(lake, tables, params, date_from, date_to)


@pytest.mark.parametrize("seed", range(100, 112))
def test_matches_reference_with_large_ids_and_unpacked_keys(tmp_path, seed, monkeypatch):
    """Ids beyond 32 bits (and negative user ids), and the dense-rank stage keys."""
    rng, tables, params, date_from, date_to = _random_case(seed)
    shift = {"user_id": -(2**40) if seed % 2 else 2**45, "snack_id": 2**33}
    tables = {name: frame.assign(**{c: frame[c] + off for c, off in shift.items() if c in frame})
              for name, frame in tables.items()}
    if seed % 3:
        monkeypatch.setattr(peer, "_PACK_LIMIT", 0)
    lake = write_tables(tables, str(tmp_path / "lake"), rng=rng)  # int64 ids: no int32 files
    _assert_matches_reference(lake, tables, params, date_from, date_to)


# ----------------------------------------------------------------------------- lake handling


def _write(root: Path, table: str, data: pa.Table, name: str = "part-0.parquet") -> None:
    (root / table).mkdir(parents=True, exist_ok=True)
    pq.write_table(data, root / table / name)


def test_physical_types_are_normalised(tmp_path, worked_lake):
    """One more file per table in odd physical types: the result is unchanged."""
    base = rows(run_polars(worked_lake, D, D))
    root = tmp_path / "lake"
    write_tables(worked_example_tables(), str(root))
    t = dt.datetime(2026, 10, 10, 9, 30)
    # a duplicate user in date64 with an int8 box size; stock with a float quantity column
    _write(root, "users", pa.table({
        "user_id": pa.array([10], pa.int32()), "status": pa.array(["active"]).dictionary_encode(),
        "next_delivery_on": pa.array([D], pa.date32()).cast(pa.date64()),
        "box_size": pa.array([3], pa.int8()), "junk": [1.5]}), "more.parquet")
    # duplicate ratings with zoned timestamps in seconds, and a float id column with NaN-free values
    _write(root, "ratings", pa.table({
        "user_id": pa.array([20.0, 20.0]), "snack_id": pa.array([1, 1], pa.uint16()),
        "rating": pa.array([4, 2], pa.int8()),
        "rated_at": pa.array([t, t], pa.timestamp("s")).cast(pa.timestamp("s", tz="UTC"))
        .cast(pa.timestamp("s", tz="America/New_York"))}), "more.parquet")
    # a request at d - 1 23:59:59 UTC stored in Tokyo time (its local date is d)
    (root / "requests" / "region=jp").mkdir(parents=True)
    pq.write_table(pa.table({
        "user_id": pa.array([10], pa.int64()), "snack_id": pa.array([4], pa.int64()),
        "requested_at": pa.array([dt.datetime(2026, 11, 30, 23, 59, 59)], pa.timestamp("ms"))
        .cast(pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("ms", tz="Asia/Tokyo"))}),
        root / "requests" / "region=jp" / "p.parquet")
    # snacks: large lists, reordered ingredients and a null list as [] (identical rows)
    _write(root, "snacks", pa.table({
        "snack_id": pa.array([1, 3], pa.int64()), "name": pa.array(["choco milk", "chips salt"], pa.large_string()),
        "genre": ["choco", "chips"], "ingredients": pa.array([["milk", "milk"], []], pa.large_list(pa.string())),
        "launched_on": pa.array([dt.date(2026, 1, 1)] * 2, pa.date32()).cast(pa.date64()),
        "retired_on": pa.array([None, None], pa.date32())}), "more.parquet")
    # hidden and underscore files are not data
    (root / "ng_snacks" / "_SUCCESS").write_text("")
    (root / "ng_snacks" / ".part.crc").write_text("")
    assert rows(run_polars(str(root), D, D)) == base


def test_missing_tables_columns_and_empty_tables(tmp_path, worked_lake):
    root = tmp_path / "lake"
    write_tables(worked_example_tables(), str(root))
    for f in (root / "ng_snacks").iterdir():
        f.unlink()  # an empty table directory: no NG snacks
    (root / "stock").rename(tmp_path / "stock")  # stock is optional
    out = run_polars(str(root), D, D)
    assert (10, 2) in {(u, s) for u, s in out.select("user_id", "snack_id").iter_rows()}

    (root / "genre_prefs").rename(tmp_path / "genre_prefs")
    with pytest.raises(LakeError, match="missing required table 'genre_prefs'"):
        run_polars(str(root), D, D)
    _write(root, "genre_prefs", pa.table({"user_id": [1], "genre_x": ["A"]}))
    with pytest.raises(LakeError, match="'genre_prefs'.*'genre'"):
        run_polars(str(root), D, D)
    _write(root, "genre_prefs", pa.table({"user_id": [1], "genre": [3]}))
    with pytest.raises(LakeError, match="'genre_prefs', column 'genre': expected str"):
        run_polars(str(root), D, D)


@pytest.mark.parametrize("table, data, match", [
    ("ratings", {"user_id": [10], "snack_id": [1], "rating": [5], "rated_at": [dt.datetime(2026, 1, 1)]},
     "'ratings', column 'rating': 1 invalid"),
    ("ratings", {"user_id": [10], "snack_id": [None], "rating": [3], "rated_at": [dt.datetime(2026, 1, 1)]},
     "'ratings', column 'snack_id': 1 invalid"),
    ("users", {"user_id": [40], "status": ["gone"], "next_delivery_on": [D], "box_size": [1]},
     "'users', column 'status'"),
    ("users", {"user_id": [40], "status": ["active"], "next_delivery_on": [D], "box_size": [0]},
     "'users', column 'box_size'"),
    ("stock", {"snack_id": [2], "quantity": [-1]}, "'stock', column 'quantity'"),
    ("users", {"user_id": [10], "status": ["paused"], "next_delivery_on": [D], "box_size": [3]},
     "'users': 2 different rows for one user_id"),
    ("stock", {"snack_id": [1], "quantity": [2]}, "'stock': 2 different rows"),
    ("ratings", {"user_id": [10.5], "snack_id": [1], "rating": [3], "rated_at": [dt.datetime(2026, 1, 1)]},
     "non-integral"),
], ids=["rating", "null", "status", "box_size", "quantity", "dup-user", "dup-stock", "float-id"])
def test_invalid_lakes(tmp_path, table, data, match):
    root = tmp_path / "lake"
    write_tables(worked_example_tables(), str(root))
    _write(root, table, pa.table(data), "bad.parquet")
    with pytest.raises(LakeError, match=match):
        run_polars(str(root), D, D)


def test_invalid_values_pass_without_validation(tmp_path):
    root = tmp_path / "lake"
    write_tables(worked_example_tables(), str(root))
    _write(root, "stock", pa.table({"snack_id": [2], "quantity": [-1]}), "bad.parquet")
    assert run_polars(str(root), D, D, validate=False).height == 5


# ----------------------------------------------------------------------------- preassign


def _run_preassign(lake: str, out: str, date_from: dt.date, date_to: dt.date) -> None:
    from preassign.pipeline import RunConfig, run_preassignment

    with dask.config.set(scheduler="sync"):
        run_preassignment(RunConfig(lake=lake, date_from=date_from, date_to=date_to, out=out))


@pytest.fixture(scope="module")
def synth_2000(tmp_path_factory) -> tuple[str, str]:
    """A 2,000-user synthetic lake and preassign's run over its two weeks."""
    from preassign.synth import SynthConfig, write_lake

    base = tmp_path_factory.mktemp("synth2000")
    lake, out = str(base / "lake"), str(base / "out")
    with dask.config.set(scheduler="sync"):
        write_lake(SynthConfig(users=2000, users_per_partition=700, seed=4, as_of=D), lake)
    _run_preassign(lake, out, D, D + dt.timedelta(days=13))
    return lake, out


def _read(out: str, name: str) -> pl.DataFrame:
    return pl.read_parquet(os.path.join(out, name))


def test_equals_preassign_on_synthetic_lake(synth_2000):
    lake, out = synth_2000
    summary: dict[str, int] = {}
    got = run_polars(lake, D, D + dt.timedelta(days=13), summary=summary)
    expected = _read(out, "assignments").select(got.columns).sort("user_id", "slot")
    assert got.height > 10_000 and got.equals(expected)
    assert count_demand(got).equals(
        _read(out, "demand").select(count_demand(got).columns).sort("delivery_on", "snack_id"))
    with open(os.path.join(out, "summary.json")) as f:
        manifest = json.load(f)
    assert summary == {k: manifest[k] for k in summary}


def test_cli_writes_preassign_outputs(synth_2000, tmp_path):
    lake, out = synth_2000
    mine = tmp_path / "polars"
    cmd = [sys.executable, "-m", "benchmarks.polars_peer", lake, "2026-12-01", "2026-12-14",
           "--out", str(mine)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert "\n" not in line
    assert line.startswith("users_targeted=") and " boxes_full=" in line and " seconds=" in line
    for name in ("assignments", "demand"):
        got = pq.read_table(mine / name)
        assert got.schema.remove_metadata() == getattr(peer, f"{name.upper()}_SCHEMA")
        keys = ["user_id", "slot"] if name == "assignments" else ["delivery_on", "snack_id"]
        expected = _read(out, name).select(got.column_names).sort(keys)
        assert pl.from_arrow(got).sort(keys).equals(expected), name
    assert sorted(os.listdir(mine)) == ["assignments", "demand"]  # no staging left behind
    # an existing output is refused (exit 1, message on stderr), nothing is overwritten
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "exists" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "benchmarks.polars_peer", lake, "2026-12-40"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2


@pytest.mark.slow
def test_equals_preassign_on_larger_synthetic_lakes(tmp_path):
    from preassign.synth import SynthConfig, write_lake

    for seed, users in ((1, 20_000), (2, 6_000)):
        lake, out = str(tmp_path / f"lake{seed}"), str(tmp_path / f"out{seed}")
        with dask.config.set(scheduler="sync"):
            write_lake(SynthConfig(users=users, seed=seed, as_of=D, users_per_partition=5000), lake)
        _run_preassign(lake, out, D, D + dt.timedelta(days=13))
        got = run_polars(lake, D, D + dt.timedelta(days=13))
        assert got.equals(_read(out, "assignments").select(got.columns).sort("user_id", "slot"))

