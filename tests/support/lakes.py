"""Test helpers: random small lakes, and writing tables in many physical layouts.

``random_tables`` makes lakes that stress the rules (ties, short boxes, window
boundaries, orphans, duplicates, null ingredient lists, box sizes 1-12);
``write_tables`` writes any table dict as a lake the way *other* code might:
several files per table, hive-style directories, unsorted rows, int32 and int64
ids mixed across files, extra columns, and within one table files that differ in physical
types (integer widths, timestamp units and zones, date32/date64, plain, large or dictionary
strings, list kinds).
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

BASE = dt.date(2026, 12, 1)
_GENRES = ["choco", "chips", "gummy", "nuts"]
_INGREDIENTS = ["milk", "peanut", "wheat", "egg", "soy"]


def _d(offset: int) -> dt.date:
    return BASE + dt.timedelta(days=int(offset))


def random_params(rng: np.random.Generator) -> dict[str, Any]:
    """Small windows and caps so that every boundary is hit often."""
    p: dict[str, Any] = {}
    if rng.random() < 0.5:
        p["max_requests"] = int(rng.integers(0, 4))
    if rng.random() < 0.6:
        p["request_window_days"] = int(rng.integers(0, 6))
    if rng.random() < 0.6:
        p["repeat_window_days"] = int(rng.integers(0, 6))
    if rng.random() < 0.5:
        p["explore_slots"] = int(rng.integers(0, 5))
    if rng.random() < 0.5:
        p["max_per_genre"] = int(rng.integers(1, 4))
    if rng.random() < 0.4:
        p["default_box_size"] = int(rng.integers(1, 13))
    if rng.random() < 0.3:
        p["prior_weight"] = float(rng.choice([0.5, 1, 3, 20]))
    if rng.random() < 0.3:
        p["genre_weight"] = float(rng.choice([0.0, 0.25, 1.0]))
    if rng.random() < 0.3:
        p["favorite_genre_bonus"] = float(rng.choice([0.0, 1.0, -0.5]))
    if rng.random() < 0.3:
        p["own_weight_2"] = float(rng.choice([0.0, -0.5, 0.5]))
    if rng.random() < 0.3:
        p["new_days"] = int(rng.integers(0, 6))
    if rng.random() < 0.3:
        p["new_bonus"] = float(rng.choice([0.0, 0.1, 2.0]))
    if rng.random() < 0.4:
        p["explore_jitter"] = float(rng.choice([0.0, 0.5, 3.0]))  # 0 -> many exact ties
    return p


def random_tables(rng: np.random.Generator, *, n_users: int | None = None,
                  n_snacks: int | None = None, with_stock: bool | None = None) -> dict[str, pd.DataFrame]:
    """A small random lake (SPEC §2 columns) centred on :data:`BASE`."""
    n_s = int(n_snacks if n_snacks is not None else rng.integers(1, 14))
    n_u = int(n_users if n_users is not None else rng.integers(1, 16))
    genres = _GENRES[: int(rng.integers(1, len(_GENRES) + 1))]
    snack_ids = np.sort(rng.choice(np.arange(1, 60), n_s, replace=False))
    ingredients = []
    for _ in range(n_s):
        r = rng.random()
        if r < 0.25:
            ingredients.append(None)
        elif r < 0.4:
            ingredients.append([])
        else:
            ingredients.append(sorted(rng.choice(_INGREDIENTS, int(rng.integers(1, 3)),
                                                 replace=False).tolist()))
    launched = [_d(o) for o in rng.integers(-12, 4, n_s)]
    retired = [None if rng.random() < 0.7 else _d(o) for o in rng.integers(-3, 6, n_s)]
    snacks = pd.DataFrame({
        "snack_id": snack_ids, "name": [f"s{i}" for i in snack_ids],
        "genre": rng.choice(genres, n_s), "ingredients": ingredients,
        "launched_on": launched, "retired_on": retired,
    })
    user_ids = np.sort(rng.choice(np.arange(1, 10_000), n_u, replace=False))
    status = rng.choice(["active", "active", "active", "paused", "cancelled"], n_u)
    next_on = [None if rng.random() < 0.1 else _d(o) for o in rng.integers(-1, 5, n_u)]
    box = [None if rng.random() < 0.4 else int(b) for b in rng.integers(1, 13, n_u)]
    users = pd.DataFrame({"user_id": user_ids, "status": status, "next_delivery_on": next_on,
                          "box_size": pd.array(box, dtype="Int64")})

    # ids that are sometimes orphans
    def uids(k: int) -> np.ndarray:
        pool = np.concatenate([user_ids, [10_001, 10_002]])
        return rng.choice(pool, k)

    def sids(k: int) -> np.ndarray:
        pool = np.concatenate([snack_ids, [98, 99]])
        return rng.choice(pool, k)

    k = int(rng.integers(0, 6 * n_u + 1))
    ts_choices = pd.to_datetime(["2026-11-20 10:00:00", "2026-11-25 00:00:00", "2026-11-25 00:00:00",
                                 "2026-11-30 23:59:59", "2026-10-01 00:00:00"])
    ratings = pd.DataFrame({"user_id": uids(k), "snack_id": sids(k),
                            "rating": rng.integers(1, 5, k),
                            "rated_at": rng.choice(ts_choices, k)})
    k = int(rng.integers(0, 5 * n_u + 1))
    deliveries = pd.DataFrame({"user_id": uids(k), "snack_id": sids(k),
                               "delivered_on": [_d(o) for o in rng.integers(-9, 5, k)]})
    k = int(rng.integers(0, 2 * n_u + 1))
    ng = pd.DataFrame({"user_id": uids(k), "snack_id": sids(k)})
    k = int(rng.integers(0, n_u + 1))
    avoid = pd.DataFrame({"user_id": uids(k), "ingredient": rng.choice(_INGREDIENTS + ["kelp"], k)})
    k = int(rng.integers(0, 2 * n_u + 1))
    prefs = pd.DataFrame({"user_id": uids(k), "genre": rng.choice(_GENRES + ["tea"], k)})
    k = int(rng.integers(0, 3 * n_u + 1))
    req_offsets = rng.integers(-8, 3, k) * 86_400 + rng.choice([0, 1, 43_200, 86_399], k)
    requests = pd.DataFrame({"user_id": uids(k), "snack_id": sids(k),
                             "requested_at": pd.Timestamp(BASE) + pd.to_timedelta(req_offsets, "s")})
    tables = {"snacks": snacks, "users": users, "ratings": ratings, "deliveries": deliveries,
              "ng_snacks": ng, "avoid_ingredients": avoid, "genre_prefs": prefs, "requests": requests}
    # identical duplicate rows, in every table
    for name in list(tables):
        frame = tables[name]
        if len(frame) and rng.random() < 0.3:
            extra = frame.iloc[rng.integers(0, len(frame), int(rng.integers(1, 3)))]
            tables[name] = pd.concat([frame, extra], ignore_index=True)
    if with_stock if with_stock is not None else rng.random() < 0.7:
        k = int(rng.integers(0, n_s + 1))
        stock_ids = np.concatenate([rng.choice(snack_ids, k, replace=False), [99]])
        tables["stock"] = pd.DataFrame({"snack_id": stock_ids,
                                        "quantity": rng.integers(0, 4, len(stock_ids))})
    return tables


_ID_COLS = ("user_id", "snack_id")


#: The physical variations SPEC §2 allows (and a few more other writers produce), drawn per
#: file: files of one table differ in integer widths, timestamp units and zones, date and
#: string kinds.
VARIANTS = {
    "int": ("int32", "int64"),
    "small_int": ("int8", "int16", "int32", "int64"),
    "tz": (None, "UTC", "Asia/Tokyo", "America/New_York"),
    "unit": ("s", "ms", "us", "ns"),
    "date": ("date32", "date64"),
    "str": ("string", "large_string", "dictionary"),
    "list": ("list", "large_list"),
}


def draw_variant(rng: np.random.Generator) -> dict[str, str | None]:
    """One file's physical types."""
    return {k: v[int(rng.integers(len(v)))] for k, v in VARIANTS.items()}


def _to_arrow(frame: pd.DataFrame, variant: dict[str, str | None] | None = None) -> pa.Table:
    v = {k: vals[1] if k == "int" else vals[0] for k, vals in VARIANTS.items()}
    v["tz"], v["unit"] = None, "us"
    v.update(variant or {})
    cols = {}
    for c in frame.columns:
        s = frame[c]
        if c in _ID_COLS:
            cols[c] = pa.array(s.to_numpy(np.int64), getattr(pa, v["int"])())
        elif c in ("rating", "quantity"):
            kind = v["small_int"] if c == "rating" else v["int"]
            cols[c] = pa.array(s.to_numpy(np.int64), getattr(pa, kind)())
        elif c == "box_size":
            width = "int16" if v["int"] == "int32" else "int64"
            cols[c] = pa.array(s.astype("Int64").to_numpy(dtype=object, na_value=None),
                               getattr(pa, width)())
        elif c in ("launched_on", "retired_on", "next_delivery_on", "delivered_on"):
            dates = pa.array([None if v_ is None or v_ is pd.NaT else pd.Timestamp(v_).date()
                              for v_ in s], pa.date32())
            cols[c] = dates.cast(pa.date64()) if v["date"] == "date64" else dates
        elif c in ("rated_at", "requested_at"):
            values = pd.to_datetime(s)  # naive UTC wall clock, whole seconds
            arr = pa.array(values, pa.timestamp(v["unit"]))
            if v["tz"] is not None:  # the same instants, stored with a zone
                arr = arr.cast(pa.timestamp(v["unit"], tz=v["tz"]))
            cols[c] = arr
        elif c == "ingredients":
            kind = pa.large_list(pa.string()) if v["list"] == "large_list" else \
                pa.list_(pa.string())
            cols[c] = pa.array([None if x is None else list(x) for x in s], kind)
        elif c == "extra_col":
            cols[c] = pa.array(s.to_numpy())
        else:
            arr = pa.array(s.to_numpy(dtype=object), pa.string())
            if v["str"] == "large_string":
                arr = arr.cast(pa.large_string())
            elif v["str"] == "dictionary":
                arr = arr.dictionary_encode()
            cols[c] = arr
    return pa.table(cols)


def write_tables(tables: dict[str, pd.DataFrame], root: str, *, rng: np.random.Generator | None = None,
                 messy: bool = False) -> str:
    """Write ``tables`` as a lake at ``root``; ``messy`` varies the physical layout."""
    rng = rng or np.random.default_rng(0)
    for name, frame in tables.items():
        base = os.path.join(root, name)
        os.makedirs(base, exist_ok=True)
        if not messy:
            pq.write_table(_to_arrow(frame), os.path.join(base, "part-0.parquet"))
            continue
        frame = frame.sample(frac=1.0, random_state=int(rng.integers(1 << 30)))  # unsorted
        if rng.random() < 0.5:
            frame = frame.assign(extra_col=np.arange(len(frame)))
        n_files = int(rng.integers(1, 4))
        chunks = np.array_split(np.arange(len(frame)), n_files)
        for i, idx in enumerate(chunks):
            part = frame.iloc[idx]
            sub = os.path.join(base, f"region={i % 2}") if rng.random() < 0.5 else base
            os.makedirs(sub, exist_ok=True)
            table = _to_arrow(part, draw_variant(rng))
            pq.write_table(table, os.path.join(sub, f"chunk-{i}.parquet"))
    return root
