"""Stock-aware runs (SPEC §6) end to end: the command, the pipeline against the per-user
reference on many lakes, a real LocalCluster, and the session API (what-if runs, a lost
worker)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal

import dask
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preassign import Params
from preassign.cli import main
from preassign.core.stock import StockRoundsExceeded
from preassign.errors import InputError
from preassign.pipeline import RunConfig, run_preassignment
from preassign.session import Session
from tests.oracle.reference import (
    StockRoundsExceeded as ReferenceRoundsExceeded,
)
from tests.oracle.reference import (
    reference_run,
    reference_stock_run,
    worked_example_tables,
)
from tests.support.lakes import random_params, random_tables, write_tables

D = dt.date(2026, 12, 1)


def _worked_lake(root) -> str:
    tables = worked_example_tables()
    tables["stock"] = pd.DataFrame({"snack_id": [1, 3, 99], "quantity": [1, 5, 4]})
    return write_tables(tables, str(root / "lake"))


def _read(out):
    """The SPEC columns of reservations (sorted), the boxes and the summary."""
    res = pd.read_parquet(os.path.join(out, "reservations")).sort_values("snack_id")
    res = res.drop(columns=["name", "genre"])
    boxes = pd.read_parquet(os.path.join(out, "assignments")).sort_values(["user_id", "slot"])
    summary = json.load(open(os.path.join(out, "summary.json")))
    return res.reset_index(drop=True), boxes.reset_index(drop=True), summary


def test_the_command_answers_spec_6_worked_example(tmp_path):
    lake = _worked_lake(tmp_path)
    out = str(tmp_path / "out")
    result = CliRunner().invoke(main, ["run", "--lake", lake, "--date", "2026-12-01", "--out",
                                       out, "--stock-aware", "--workers", "1", "--silent",
                                       "--loglevel", "WARNING"])
    assert result.exit_code == 0, result.output
    assert "2 users targeted, 0 boxes full, 2 short, 2 units" in result.output
    assert "2 rounds, 2 boxes changed" in result.output
    res, boxes, summary = _read(out)
    assert list(zip(boxes.user_id, boxes.snack_id, boxes.stage, strict=True)) == [
        (10, 3, "request"), (20, 1, "preference")]
    named = pd.read_parquet(os.path.join(out, "reservations")).sort_values("snack_id")
    assert list(named.columns[-2:]) == ["name", "genre"]  # for people, after the SPEC columns
    assert (named["name"].iloc[0], named["genre"].iloc[0]) == ("choco milk", "choco")
    assert res.to_dict("records") == [
        {"snack_id": 1, "stock": 1, "units_unconstrained": 2, "units": 1, "units_left": 0,
         "boxes_lost": 1, "boxes_gained": 0, "limited": True, "cutoff_on": D},
        {"snack_id": 2, "stock": 0, "units_unconstrained": 1, "units": 0, "units_left": 0,
         "boxes_lost": 1, "boxes_gained": 0, "limited": True, "cutoff_on": None},
        {"snack_id": 3, "stock": 5, "units_unconstrained": 1, "units": 1, "units_left": 4,
         "boxes_lost": 0, "boxes_gained": 0, "limited": False, "cutoff_on": None},
        {"snack_id": 4, "stock": 0, "units_unconstrained": 1, "units": 0, "units_left": 0,
         "boxes_lost": 1, "boxes_gained": 0, "limited": True, "cutoff_on": None},
    ]
    assert (summary["users_targeted"], summary["boxes_full"], summary["boxes_short"],
            summary["units_total"]) == (2, 0, 2, 2)
    assert summary["stock_aware"] is True and summary["rounds"] == 2
    assert (summary["boxes_changed"], summary["boxes_short_unconstrained"],
            summary["units_unconstrained"]) == (2, 1, 5)
    assert summary["parameters"]["stock_max_rounds"] == 100
    assert not os.path.exists(os.path.join(out, "shortage"))
    demand = pd.read_parquet(os.path.join(out, "demand"))
    assert demand["units"].sum() == 2


def test_no_stock_table_and_too_few_rounds_are_clear_errors(tmp_path):
    tables = worked_example_tables()
    tables.pop("stock")
    lake = write_tables(tables, str(tmp_path / "nostock"))
    runner = CliRunner()
    args = ["--date", "2026-12-01", "--stock-aware", "--workers", "1", "--silent", "--loglevel",
            "WARNING"]
    result = runner.invoke(main, ["run", "--lake", lake, "--out", str(tmp_path / "o1"), *args])
    assert result.exit_code == 1 and "table 'stock'" in result.output, result.output
    lake = _worked_lake(tmp_path)
    result = runner.invoke(main, ["run", "--lake", lake, "--out", str(tmp_path / "o2"), *args,
                                  "--set", "stock_max_rounds=1"])
    assert result.exit_code == 1, result.output
    assert "stock_max_rounds=1" in result.output and "snack_id 1, 2, 4" in result.output
    assert not os.path.exists(tmp_path / "o2")
    # a run that stops in exactly round stock_max_rounds succeeds
    result = runner.invoke(main, ["run", "--lake", lake, "--out", str(tmp_path / "o3"), *args,
                                  "--set", "stock_max_rounds=2"])
    assert result.exit_code == 0, result.output
    # in a SPEC §3 run the parameter is accepted and has no effect
    result = runner.invoke(main, ["run", "--lake", lake, "--out", str(tmp_path / "o4"),
                                  "--date", "2026-12-01", "--workers", "1", "--silent",
                                  "--set", "stock_max_rounds=1"])
    assert result.exit_code == 0 and "5 units" in result.output, result.output


def _stock(tables, rng, kind):
    snack_ids = pd.to_numeric(tables["snacks"]["snack_id"]).unique()
    demand = reference_run(tables, D - dt.timedelta(days=1), D + dt.timedelta(days=4)).demand
    units = demand.groupby("snack_id")["units"].sum().reindex(snack_ids).fillna(0).to_numpy()
    q = {"ample": units + 50, "zero": units * 0}.get(
        kind, np.floor(units * rng.uniform(0.0, 1.1, len(snack_ids))))
    keep = rng.random(len(snack_ids)) > (0.3 if kind == "missing" else 0.0)
    return pd.DataFrame({"snack_id": snack_ids[keep], "quantity": q[keep].astype(int)})


def _check_against_reference(tables, out, result, date_from, date_to, params):
    try:
        ref = reference_stock_run(tables, date_from, date_to, params)
    except ReferenceRoundsExceeded:
        raise AssertionError("the reference did not settle but the pipeline did") from None
    res, boxes, summary = _read(out)
    exp = ref.result.assignments
    assert boxes["user_id"].tolist() == exp["user_id"].tolist()
    assert boxes["slot"].tolist() == exp["slot"].tolist()
    assert boxes["snack_id"].tolist() == exp["snack_id"].tolist()
    assert boxes["stage"].tolist() == exp["stage"].tolist()
    exp_res = ref.reservations.astype({"limited": bool})
    got = res.assign(cutoff_on=pd.Series([None if pd.isna(d) else d for d in res["cutoff_on"]],
                                         dtype=object))
    pd.testing.assert_frame_equal(got, exp_res, check_dtype=False)
    assert summary["rounds"] == ref.rounds
    assert summary["boxes_changed"] == ref.boxes_changed
    assert summary["boxes_short_unconstrained"] == ref.boxes_short_unconstrained
    assert summary["units_unconstrained"] == ref.units_unconstrained
    assert (summary["boxes_full"], summary["boxes_short"], summary["units_total"]) == (
        ref.result.boxes_full, ref.result.boxes_short, ref.result.units_total)
    assert (res["units"] <= res["stock"]).all()


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), span=st.integers(0, 3),
       kind=st.sampled_from(["tight", "zero", "missing", "ample"]),
       per_partition=st.sampled_from([1, 3, 50_000]), engine=st.sampled_from(["numba", "numpy"]))
def test_pipeline_equals_reference_on_random_lakes(tmp_path_factory, seed, span, kind,
                                                   per_partition, engine):
    rng = np.random.default_rng(seed)
    tables = random_tables(rng)
    params = random_params(rng)
    tables["stock"] = _stock(tables, rng, kind)
    root = tmp_path_factory.mktemp("lake")
    lake = write_tables(tables, str(root / "lake"), rng=rng, messy=True)
    date_from = D + dt.timedelta(days=int(rng.integers(-1, 2)))
    date_to = date_from + dt.timedelta(days=span)
    out = str(root / "out")
    config = RunConfig(lake=lake, date_from=date_from, date_to=date_to, out=out,
                       params=Params.from_mapping(params), users_per_partition=per_partition,
                       engine=engine, stock_aware=True)
    with dask.config.set(scheduler="sync"):
        try:
            result = run_preassignment(config)
        except StockRoundsExceeded:
            with pytest.raises(ReferenceRoundsExceeded):
                reference_stock_run(tables, date_from, date_to, params)
            return
    _check_against_reference(tables, out, result, date_from, date_to, params)


def test_on_a_local_cluster_results_do_not_depend_on_workers_or_partitions(tmp_path):
    from distributed import Client, LocalCluster

    outs = []
    for workers, per in ((1, 50_000), (2, 7), (2, 19)):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            for seed in (5, 6):
                rng = np.random.default_rng(seed)
                tables = random_tables(rng, n_users=50, n_snacks=12, with_stock=True)
                tables["stock"] = _stock(tables, rng, "tight")
                lake = write_tables(tables, str(tmp_path / f"lake{seed}"), rng=rng, messy=True)
                out = str(tmp_path / f"out-{workers}-{per}-{seed}")
                until = D + dt.timedelta(days=3)
                result = run_preassignment(RunConfig(
                    lake=lake, date_from=D, date_to=until, out=out, users_per_partition=per,
                    stock_aware=True, overwrite=True), client)
                _check_against_reference(tables, out, result, D, until, {})
                outs.append((seed, _read(out)[:2]))
    by_seed: dict[int, list] = {}
    for seed, frames in outs:
        by_seed.setdefault(seed, []).append(frames)
    for runs in by_seed.values():
        for res, boxes in runs[1:]:
            pd.testing.assert_frame_equal(res, runs[0][0])
            pd.testing.assert_frame_equal(boxes, runs[0][1])


def test_session_runs_what_ifs_without_reading_again_and_survives_a_lost_worker(tmp_path):
    from distributed import Client, LocalCluster

    rng = np.random.default_rng(11)
    tables = random_tables(rng, n_users=60, n_snacks=12, with_stock=True)
    tables["stock"] = _stock(tables, rng, "tight")
    lake = write_tables(tables, str(tmp_path / "lake"), rng=rng, messy=True)
    until = D + dt.timedelta(days=3)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        session = Session(lake, client, D, until, users_per_partition=8)
        assert session.partitions > 2
        plain = session.run()
        base = session.run(stock_aware=True)
        ref = reference_stock_run(tables, D, until)
        assert base.summary["rounds"] == ref.rounds
        pd.testing.assert_frame_equal(
            base.reservations.drop(columns="cutoff_on").reset_index(drop=True),
            ref.reservations.drop(columns="cutoff_on").astype({"limited": bool}),
            check_dtype=False)
        assert int(plain.demand["units"].sum()) == ref.units_unconstrained
        # what-if: half the stock, or one snack's stock changed, or other parameters
        half = session.run(stock_aware=True, stock=0.5)
        assert (half.reservations["units"] <= half.reservations["stock"]).all()
        assert half.reservations["units"].sum() <= base.reservations["units"].sum()
        one = tables["stock"].copy()
        one.loc[0, "quantity"] = 0
        zero_one = session.run(stock_aware=True, stock=one)
        gone = zero_one.reservations.set_index("snack_id")
        assert gone.loc[int(one.loc[0, "snack_id"]), "units"] == 0 \
            if int(one.loc[0, "snack_id"]) in gone.index else True
        other = session.run(Params(max_requests=0), stock_aware=True)
        ref_other = reference_stock_run(tables, D, until, {"max_requests": 0})
        assert int(other.demand["units"].sum()) == ref_other.result.units_total
        # a lost worker: its prepared partitions are recomputed from the graph
        address = sorted(client.scheduler_info()["workers"])[0]
        pid = client.run(os.getpid, workers=[address])[address]
        os.kill(pid, signal.SIGKILL)
        client.wait_for_workers(2, timeout=60)  # the nanny starts a new one
        again = session.run(stock_aware=True)
        pd.testing.assert_frame_equal(again.reservations, base.reservations)
        session.close()


def test_session_without_a_cluster_and_its_errors(tmp_path):
    lake = _worked_lake(tmp_path)
    with Session(lake, None, D) as session:
        result = session.run(stock_aware=True)
        assert result.summary["rounds"] == 2
        with pytest.raises(InputError, match="no stock table"):
            tables = worked_example_tables()
            tables.pop("stock")
            Session(write_tables(tables, str(tmp_path / "nostock")), None, D).run(stock=0.5)
        boxes = result.boxes()
        assert boxes["snack_id"].tolist() == [3, 1]


def test_explain_box_says_why_a_snack_is_missing_from_a_stock_aware_box(tmp_path):
    from preassign.explain import explain_box

    lake = _worked_lake(tmp_path)
    out = str(tmp_path / "out")
    with dask.config.set(scheduler="sync"):
        run_preassignment(RunConfig(lake=lake, date_from=D, date_to=D, out=out,
                                    stock_aware=True))
    box = explain_box(lake, 10, D, D, out_dir=out)
    assert box["snack_id"].tolist() == [3]
    missing = box.attrs["missing"].set_index("snack_id")
    assert sorted(missing.index) == [1, 4]
    # user 20's box comes first on 2026-12-01 (smaller jitter) and took the one unit of #1
    assert "stock of #1 choco milk went to boxes up to 2026-12-01" in missing.loc[1, "reason"]
    assert "0.591" in missing.loc[1, "reason"] and "0.093" in missing.loc[1, "reason"]
    assert "no stock for any box" in missing.loc[4, "reason"]
    assert explain_box(lake, 20, D, D, out_dir=out).attrs["missing"]["snack_id"].tolist() == [2]
