"""Synthetic lakes: deterministic, realistic, co-partitioned."""

from __future__ import annotations

import datetime as dt
import json
import os

import dask
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from preassign.core.contract import USER_KEYED, normalize_table
from preassign.synth import SynthConfig, generate_partition, generate_snacks, write_lake

D = dt.date(2026, 12, 1)


def test_same_seed_same_lake_and_partitions_are_independent():
    cfg = SynthConfig(users=3000, seed=5, as_of=D, users_per_partition=1000)
    a, b = generate_partition(cfg, 1), generate_partition(cfg, 1)
    for name in USER_KEYED:
        pd.testing.assert_frame_equal(a[name], b[name])
    other = generate_partition(SynthConfig(users=3000, seed=6, as_of=D, users_per_partition=1000), 1)
    assert not a["ratings"].equals(other["ratings"])


def test_realistic_shape():
    cfg = SynthConfig(users=4000, seed=1, as_of=D, users_per_partition=4000)
    t = generate_partition(cfg, 0)
    snacks = generate_snacks(cfg)
    assert len(snacks) == 300 and snacks["genre"].nunique() == 10
    launched = pd.to_datetime(snacks["launched_on"]).dt.date
    assert ((launched > D - dt.timedelta(days=28)) & (launched <= D)).sum() > 5  # new snacks
    assert snacks["retired_on"].notna().sum() > 5
    assert snacks["ingredients"].isna().sum() > 0
    users = t["users"]
    assert 0.8 < (users["status"] == "active").mean() < 0.92
    active = users[users["status"] == "active"]
    days = (pd.to_datetime(active["next_delivery_on"]).dt.date - D).map(lambda x: x.days)
    assert days.min() == 0 and days.max() == 13
    box = users["box_size"].fillna(8)
    assert (box == 8).mean() > 0.8
    per_user = t["ratings"].groupby("user_id").size().reindex(users["user_id"], fill_value=0)
    assert per_user.max() <= 200 and per_user.median() < per_user.mean()  # skewed
    assert 25 < per_user.mean() < 60
    ng = t["ng_snacks"].groupby("user_id").size()
    assert ng.max() <= 60
    assert t["avoid_ingredients"].groupby("user_id").size().max() <= 3
    assert t["genre_prefs"].groupby("user_id").size().max() <= 3
    d = t["deliveries"].merge(users[["user_id"]], on="user_id")
    gaps = d.groupby("user_id")["delivered_on"].apply(
        lambda s: sorted({(x - D).days for x in pd.to_datetime(s).dt.date}))
    steps = {b - a for g in gaps for a, b in zip(g, g[1:], strict=False)}
    assert steps <= {14, 28}  # a box every 2 or 4 weeks
    for name in USER_KEYED:
        normalize_table(name, t[name])  # valid per SPEC §2


def test_written_lake_is_co_partitioned_and_sorted(tmp_path):
    cfg = SynthConfig(users=2500, seed=2, as_of=D, users_per_partition=1000)
    with dask.config.set(scheduler="sync"):
        rows = write_lake(cfg, str(tmp_path / "lake"))
    root = tmp_path / "lake"
    manifest = json.load(open(root / "_lake.json"))
    assert manifest["partitions"] == 3 and manifest["bounds"] == [1, 1001, 2001, 2501]
    assert rows["users"] == 2500
    for name in USER_KEYED:
        files = sorted(os.listdir(root / name))
        assert files == [f"part.{i:05d}.parquet" for i in range(3)]
        for i, f in enumerate(files):
            uid = pq.read_table(root / name / f, columns=["user_id"])["user_id"].to_numpy()
            assert np.all(np.diff(uid) >= 0)
            lo, hi = manifest["bounds"][i], manifest["bounds"][i + 1]
            assert uid.size == 0 or (uid.min() >= lo and uid.max() < hi)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".lake")] == [".lake.lock"]
