"""`preassign lake convert`: any valid lake rewritten co-partitioned; runs give the same answer."""

from __future__ import annotations

import datetime as dt
import json
import os

import dask
import numpy as np
import pandas as pd
from click.testing import CliRunner

from preassign.cli import main
from preassign.convert import convert_lake
from preassign.lake import open_lake
from preassign.pipeline import RunConfig, run_preassignment
from tests.support.lakes import random_tables, write_tables
from tests.support.outputs import read_output

D = dt.date(2026, 12, 1)


def _run(lake, out):
    with dask.config.set(scheduler="sync"):
        return run_preassignment(RunConfig(lake=lake, date_from=D,
                                           date_to=D + dt.timedelta(days=3), out=out))


def test_a_messy_lake_converted_gives_the_same_runs(tmp_path):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        tables = random_tables(rng, n_users=40, with_stock=True)
        src = write_tables(tables, str(tmp_path / f"src{seed}"), rng=rng, messy=True)
        dst = str(tmp_path / f"dst{seed}")
        with dask.config.set(scheduler="sync"):
            summary = convert_lake(src, dst, users_per_partition=7)
        lake = open_lake(dst)
        assert lake.fast_path_files() is not None
        assert summary["partitions"] == len(lake.manifest["bounds"]) - 1 >= 5
        # every file i of every user table holds exactly the users of range i, sorted
        for name, files in lake.fast_path_files().items():
            for i, f in enumerate(files):
                uid = pd.read_parquet(f)["user_id"].dropna().to_numpy()
                lo, hi = lake.manifest["bounds"][i], lake.manifest["bounds"][i + 1]
                assert (np.diff(uid) >= 0).all() and ((uid >= lo) & (uid < hi)).all(), name
        a = _run(src, str(tmp_path / f"a{seed}"))
        b = _run(dst, str(tmp_path / f"b{seed}"))
        assert a.summary["lake"]["layout"] == "shuffled"
        assert b.summary["lake"]["layout"] == "co-partitioned"
        got, ref = read_output(str(tmp_path / f"b{seed}")), read_output(str(tmp_path / f"a{seed}"))
        for name in ref:
            pd.testing.assert_frame_equal(got[name], ref[name])
        for key in ("input_rows", "orphan_rows", "users_targeted", "units_total"):
            assert a.summary[key] == b.summary[key], key


def test_the_command_and_its_safety(tmp_path):
    rng = np.random.default_rng(5)
    src = write_tables(random_tables(rng, n_users=30), str(tmp_path / "src"), rng=rng,
                       messy=True)
    runner = CliRunner()
    args = ["--workers", "1", "--silent", "--loglevel", "WARNING"]
    result = runner.invoke(main, ["lake", "convert", src, str(tmp_path / "dst"),
                                  "--users-per-partition", "10", *args])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "dst" / "_lake.json").read_text())
    assert manifest["source"]["convert"]["from"] == src
    again = runner.invoke(main, ["lake", "convert", src, str(tmp_path / "dst"), *args])
    assert again.exit_code == 1 and "--overwrite" in again.output
    inside = runner.invoke(main, ["lake", "convert", src, os.path.join(src, "users", "x"), *args])
    assert inside.exit_code == 2 and "lies inside" in inside.output
    assert runner.invoke(main, ["lake", "convert", src, str(tmp_path / "dst"), "--overwrite",
                                *args]).exit_code == 0
