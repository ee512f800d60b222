"""Bad lakes fail with errors naming table, column, count and an example; nothing is published."""

from __future__ import annotations

import datetime as dt
import os
import shutil

import dask
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preassign.core.contract import LakeError, normalize_table
from preassign.pipeline import RunConfig, run_preassignment
from tests.oracle.reference import worked_example_tables
from tests.support.lakes import write_tables

D = dt.date(2026, 12, 1)


def _mutate(name, fn):
    def apply(tables):
        tables[name] = fn(tables[name].copy())
        return tables
    return apply


def _set(name, col, row, value):
    def fn(df):
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
        return df
    return _mutate(name, fn)


CASES = [
    ("rating-5", _set("ratings", "rating", 0, 5), r"'ratings', column 'rating': 1 row have a rating outside 1-4 \(e.g. user_id=10, snack_id=1, rating=5\)"),
    ("rating-0", _set("ratings", "rating", 1, 0), r"'ratings', column 'rating': 1 row .*rating=0"),
    ("status-unknown", _set("users", "status", 0, "frozen"), r"'users', column 'status': 1 row have a status outside active, paused, cancelled \(e.g. user_id=10, status='frozen'\)"),
    ("status-null", _set("users", "status", 1, None), r"'users', column 'status': 1 row are null .*user_id=20, status=null"),
    ("box-size-0", _set("users", "box_size", 0, 0), r"'users', column 'box_size': 1 row have a box size below 1"),
    ("quantity-negative", _set("stock", "quantity", 0, -3), r"'stock', column 'quantity': 1 row have a negative quantity \(e.g. snack_id=1, quantity=-3\)"),
    ("null-user-id", _set("deliveries", "user_id", 0, None), r"'deliveries', column 'user_id': 1 row are null"),
    ("null-snack-id", _set("ng_snacks", "snack_id", 0, None), r"'ng_snacks', column 'snack_id': 1 row are null"),
    ("null-genre", _set("snacks", "genre", 0, None), r"'snacks', column 'genre': 1 row are null"),
    ("null-launched", _set("snacks", "launched_on", 2, None), r"'snacks', column 'launched_on': 1 row are null"),
    ("null-rated-at", _set("ratings", "rated_at", 0, None), r"'ratings', column 'rated_at': 1 row are null"),
    ("null-requested-at", _set("requests", "requested_at", 0, None), r"'requests', column 'requested_at': 1 row are null"),
    ("null-ingredient", _set("avoid_ingredients", "ingredient", 0, None), r"'avoid_ingredients', column 'ingredient': 1 row are null"),
    ("null-fav-genre", _set("genre_prefs", "genre", 0, None), r"'genre_prefs', column 'genre': 1 row are null"),
    ("missing-column", _mutate("ratings", lambda df: df.drop(columns="rated_at")), r"table 'ratings' is missing required column\(s\) rated_at"),
    ("duplicate-user", _mutate("users", lambda df: pd.concat([df, df.iloc[[0]].assign(box_size=5)], ignore_index=True)), r"table 'users', column 'user_id': 1 user_id value\(s\) have different rows \(e.g. user_id=10\)"),
    ("duplicate-snack", _mutate("snacks", lambda df: pd.concat([df, df.iloc[[0]].assign(name="other")], ignore_index=True)), r"table 'snacks', column 'snack_id': 1 snack_id value\(s\) have different rows"),
    ("duplicate-stock", _mutate("stock", lambda df: pd.concat([df, df.iloc[[0]].assign(quantity=9)], ignore_index=True)), r"table 'stock', column 'snack_id': 1 snack_id value"),
    ("wrong-type-rating", _mutate("ratings", lambda df: df.assign(rating=df["rating"].astype(str))), r"table 'ratings', column 'rating': expected an integer, found type (large_)?string"),
    ("wrong-type-date", _mutate("deliveries", lambda df: df.assign(delivered_on=["x"] * len(df))), r"table 'deliveries', column 'delivered_on': expected a date"),
]


@pytest.mark.parametrize("case, mutate, message", CASES, ids=[c[0] for c in CASES])
def test_bad_value_fails_naming_table_column_count_example(tmp_path, case, mutate, message):
    tables = mutate(worked_example_tables())
    for name, df in tables.items():  # write with pandas' own types so bad values survive
        os.makedirs(tmp_path / "lake" / name)
        df.to_parquet(tmp_path / "lake" / name / "a.parquet", index=False)
    out = tmp_path / "out"
    cfg = RunConfig(lake=str(tmp_path / "lake"), date_from=D, date_to=D, out=str(out))
    with dask.config.set(scheduler="sync"), pytest.raises(LakeError, match=message):
        run_preassignment(cfg)
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out") and p != ".out.lock"]


def test_missing_table_and_missing_lake(tmp_path):
    lake = write_tables(worked_example_tables(), str(tmp_path / "lake"))
    shutil.rmtree(os.path.join(lake, "requests"))
    cfg = RunConfig(lake=lake, date_from=D, date_to=D, out=str(tmp_path / "out"))
    with pytest.raises(LakeError, match=r"missing required table\(s\) requests"):
        run_preassignment(cfg)
    cfg = RunConfig(lake=str(tmp_path / "nope"), date_from=D, date_to=D, out=str(tmp_path / "o"))
    with pytest.raises(LakeError, match="does not exist"):
        run_preassignment(cfg)


def test_empty_table_directory_is_an_empty_table(tmp_path):
    tables = worked_example_tables()
    lake = write_tables(tables, str(tmp_path / "lake"))
    for name in ("requests", "ng_snacks"):
        shutil.rmtree(os.path.join(lake, name))
        os.makedirs(os.path.join(lake, name))
    with dask.config.set(scheduler="sync"):
        result = run_preassignment(RunConfig(lake=lake, date_from=D, date_to=D,
                                             out=str(tmp_path / "out")))
    assert result.summary["input_rows"]["requests"] == 0
    assert result.summary["users_targeted"] == 2


def test_malformed_parquet_is_named(tmp_path):
    lake = write_tables(worked_example_tables(), str(tmp_path / "lake"))
    with open(os.path.join(lake, "ratings", "broken.parquet"), "wb") as f:
        f.write(b"not parquet at all")
    cfg = RunConfig(lake=lake, date_from=D, date_to=D, out=str(tmp_path / "out"))
    with dask.config.set(scheduler="sync"), pytest.raises(Exception, match="broken.parquet|Parquet"):
        run_preassignment(cfg)
    assert not (tmp_path / "out").exists()


def test_drop_mode_drops_and_counts(tmp_path):
    tables = worked_example_tables()
    tables["ratings"] = pd.concat([tables["ratings"], tables["ratings"].iloc[[0]].assign(rating=7)],
                                  ignore_index=True)
    lake = str(tmp_path / "lake")
    for name, df in tables.items():
        os.makedirs(os.path.join(lake, name))
        df.to_parquet(os.path.join(lake, name, "a.parquet"), index=False)
    with dask.config.set(scheduler="sync"):
        result = run_preassignment(RunConfig(lake=lake, date_from=D, date_to=D,
                                             out=str(tmp_path / "out"), on_invalid="drop"))
    assert result.summary["invalid_rows"] == {"ratings": 1}
    assert result.summary["units_total"] == 5  # the example's answer is unchanged
    rejected = pd.read_parquet(tmp_path / "out" / "rejected" / "ratings")
    assert len(rejected) == 1
    assert rejected.loc[0, "rating"] == "7" and rejected.loc[0, "user_id"] == "10"
    assert rejected.loc[0, "reason"] == "rating: have a rating outside 1-4"


def test_drop_mode_writes_rejected_rows_of_every_table(tmp_path):
    tables = worked_example_tables()
    tables["users"].loc[1, "status"] = "frozen"  # user 20 dropped -> its rows become orphans
    tables["stock"].loc[0, "quantity"] = -1
    tables["snacks"].loc[5, "genre"] = None
    lake = _write_raw(tables, str(tmp_path / "lake"))
    with dask.config.set(scheduler="sync"):
        result = run_preassignment(RunConfig(lake=lake, date_from=D, date_to=D,
                                             out=str(tmp_path / "out"), on_invalid="drop"))
    assert result.summary["invalid_rows"] == {"snacks": 1, "stock": 1, "users": 1}
    assert result.summary["users_targeted"] == 1
    for name, reason in [("users", "status: have a status outside"),
                         ("stock", "quantity: have a negative quantity"),
                         ("snacks", "genre: are null")]:
        rows = pd.read_parquet(tmp_path / "out" / "rejected" / name)
        assert len(rows) == 1 and rows.loc[0, "reason"].startswith(reason)


def test_normalize_accepts_every_physical_form():
    frame = pd.DataFrame({
        "user_id": pd.array([1, 2], dtype="Int32"),
        "snack_id": pd.Series([3.0, 4.0]),
        "requested_at": pd.to_datetime(["2026-11-30 23:00", "2026-11-30 00:00"]).tz_localize("Asia/Tokyo"),
    })
    norm, problems, _ = normalize_table("requests", frame)
    assert problems == []
    assert norm["user_id"].tolist() == [1, 2] and norm["snack_id"].tolist() == [3, 4]
    # 23:00 Tokyo = 14:00 UTC the same day
    assert pd.to_datetime(norm["requested_at"]).dt.hour.tolist() == [14, 15]
    arrow = pd.DataFrame({"user_id": pd.array([5], dtype=pd.ArrowDtype(pa.int32())),
                          "snack_id": [1], "delivered_on": pd.array([dt.date(2026, 1, 2)],
                                                                    dtype=pd.ArrowDtype(pa.date32()))})
    norm, _, _ = normalize_table("deliveries", arrow)
    assert norm["delivered_on"].tolist() == [(dt.date(2026, 1, 2) - dt.date(1970, 1, 1)).days]
    with pytest.raises(LakeError, match="non-integral"):
        normalize_table("ng_snacks", pd.DataFrame({"user_id": [1.5], "snack_id": [1]}))
    _ = pq  # noqa


REQUIRED = ["snacks", "users", "ratings", "deliveries", "ng_snacks", "avoid_ingredients",
            "genre_prefs", "requests"]
ONE_COLUMN = {"snacks": "launched_on", "users": "status", "ratings": "rating",
              "deliveries": "delivered_on", "ng_snacks": "snack_id",
              "avoid_ingredients": "ingredient", "genre_prefs": "genre",
              "requests": "requested_at", "stock": "quantity"}


def _write_raw(tables, root):
    for name, df in tables.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        df.to_parquet(os.path.join(root, name, "a.parquet"), index=False)
    return root


def _fails(tmp_path, tables, message, **kw):
    lake = _write_raw(tables, str(tmp_path / "lake"))
    out = tmp_path / "out"
    cfg = RunConfig(lake=lake, date_from=D, date_to=D, out=str(out), **kw)
    with dask.config.set(scheduler="sync"), pytest.raises(LakeError, match=message):
        run_preassignment(cfg)
    assert not out.exists(), "a failed run must publish nothing"


@pytest.mark.parametrize("table", REQUIRED)
def test_every_required_table_missing_is_named(tmp_path, table):
    tables = worked_example_tables()
    del tables[table]
    _fails(tmp_path, tables, rf"missing required table\(s\) {table}")


@pytest.mark.parametrize("table, column", list(ONE_COLUMN.items()))
def test_a_missing_column_in_every_table_is_named(tmp_path, table, column):
    tables = worked_example_tables()
    tables[table] = tables[table].drop(columns=column)
    _fails(tmp_path, tables, rf"table '{table}' is missing required column\(s\) {column}")


MORE = [
    ("ingredients-string", _mutate("snacks", lambda df: df.assign(ingredients=["milk"] * len(df))),
     r"table 'snacks', column 'ingredients': expected a list of strings"),
    ("rating-fraction", _mutate("ratings", lambda df: df.assign(rating=df["rating"] + 0.5)),
     r"table 'ratings', column 'rating': expected integers, found \d+ non-integral"),
    ("user-id-string", _mutate("ng_snacks", lambda df: df.assign(user_id=df["user_id"].astype(str))),
     r"table 'ng_snacks', column 'user_id': expected an integer id"),
    ("timestamp-string", _mutate("requests", lambda df: df.assign(requested_at=["2026-11-30"] * len(df))),
     r"table 'requests', column 'requested_at': expected a timestamp"),
    ("box-size-negative", _set("users", "box_size", 1, -2), r"'users', column 'box_size': 1 row have a box size below 1"),
    ("status-capitalised", _set("users", "status", 1, "Active"), r"'users', column 'status': 1 row have a status outside"),
]


@pytest.mark.parametrize("case, mutate, message", MORE, ids=[c[0] for c in MORE])
def test_more_bad_values(tmp_path, case, mutate, message):
    _fails(tmp_path, mutate(worked_example_tables()), message)


@pytest.mark.parametrize(
    "case, mutate, check",
    [
        # documented, counted handling instead of an error
        ("date-range-without-users", None,
         lambda s: s["users_targeted"] == 0 and s["units_total"] == 0),
        ("identical-duplicate-users", _mutate("users", lambda df: pd.concat([df, df], ignore_index=True)),
         lambda s: s["users_targeted"] == 2 and s["input_rows"]["users"] == 6),
        ("orphans-counted", _mutate("ratings", lambda df: pd.concat(
            [df, df.iloc[[0]].assign(user_id=999), df.iloc[[0]].assign(snack_id=999)], ignore_index=True)),
         lambda s: s["orphan_rows"]["ratings"] == 2 and s["units_total"] == 5),
        ("no-stock-table", lambda t: {k: v for k, v in t.items() if k != "stock"},
         lambda s: s["snacks_short"] is None and "stock" not in s["input_rows"]),
        ("unknown-stock-snack", None, lambda s: s["input_rows"]["stock"] == 3),
        # values beyond 32 bits are valid: a box larger than the eligible snacks ends short
        ("box-size-beyond-int32", _set("users", "box_size", 0, 2**31 + 5),
         lambda s: s["boxes_full"] == 0 and s["boxes_short"] == 2 and s["units_total"] == 5),
        ("box-size-2-to-62", _set("users", "box_size", 0, 2**62),
         lambda s: s["boxes_full"] == 0 and s["units_total"] == 5),
        ("quantity-beyond-int32", _set("stock", "quantity", 0, 2**40),
         lambda s: s["snacks_short"] == 2 and s["units_total"] == 5),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_documented_handling(tmp_path, case, mutate, check):
    tables = worked_example_tables()
    if mutate:
        tables = mutate(tables)
    lake = _write_raw(tables, str(tmp_path / "lake"))
    day = D + dt.timedelta(days=30) if case == "date-range-without-users" else D
    with dask.config.set(scheduler="sync"):
        result = run_preassignment(RunConfig(lake=lake, date_from=day, date_to=day,
                                             out=str(tmp_path / "out")))
    assert check(result.summary), result.summary
    assert os.path.exists(tmp_path / "out" / "summary.json")
