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
from preassign.synth import SynthConfig, write_lake
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


def test_a_table_in_one_big_file_is_read_in_pieces_of_row_groups(tmp_path, monkeypatch):
    """A lake written as one file per table: partitions of whole row groups, same runs."""
    import pyarrow.parquet as pq

    from preassign import lake as lake_mod

    src = tmp_path / "lake"
    write_lake(SynthConfig(users=600, users_per_partition=200, as_of=D), str(src))
    one = tmp_path / "one-file"
    for table in sorted(p.name for p in src.iterdir() if p.is_dir()):
        data = pq.read_table(src / table)
        (one / table).mkdir(parents=True)
        pq.write_table(data, one / table / "all.parquet", row_group_size=5_000)
    monkeypatch.setattr(lake_mod, "PIECE_ROWS", 12_000)
    frames = lake_mod.read_raw_tables(lake_mod.open_lake(str(one)))
    rows = pq.read_metadata(one / "ratings" / "all.parquet").num_rows
    assert frames["ratings"].npartitions == -(-rows // 15_000)  # 3 groups of 5,000 a piece
    assert frames["users"].npartitions == 1
    with dask.config.set(scheduler="sync"):
        expect = run_preassignment(RunConfig(lake=str(src), date_from=D, date_to=D + dt.timedelta(days=6),
                                             out=str(tmp_path / "a")))
        got = run_preassignment(RunConfig(lake=str(one), date_from=D, date_to=D + dt.timedelta(days=6),
                                          out=str(tmp_path / "b"), users_per_partition=200))
    assert got.summary["lake"]["layout"] == "shuffled"
    pd.testing.assert_frame_equal(expect.demand, got.demand)
