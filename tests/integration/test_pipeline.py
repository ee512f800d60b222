"""The Dask pipeline against SPEC §5 and the per-user reference, on many lakes."""

from __future__ import annotations

import datetime as dt
import json
import os

import dask
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preassign.core.params import Params
from preassign.pipeline import RunConfig, run_preassignment
from tests.oracle.reference import reference_run
from tests.support.lakes import random_params, random_tables, write_tables
from tests.support.outputs import WORKED_DATE, read_output


def _run(lake: str, out: str, date_from=WORKED_DATE, date_to=None, params=None, engine="numba", **kw):
    cfg = RunConfig(lake=lake, date_from=date_from, date_to=date_to or date_from, out=out,
                    params=Params.from_mapping(params or {}), engine=engine, **kw)
    with dask.config.set(scheduler="sync"):
        return run_preassignment(cfg)


def _as_dates(series: pd.Series) -> list:
    return [pd.Timestamp(v).date() for v in series]


def assert_matches_reference(tables, out, result, date_from, date_to, params):
    ref = reference_run(tables, date_from, date_to, params)
    got = read_output(out)
    a = got["assignments"]
    exp = ref.assignments.reset_index(drop=True)
    assert _as_dates(a["delivery_on"]) == list(exp["delivery_on"])
    for col in ("user_id", "slot", "snack_id"):
        assert a[col].astype("int64").tolist() == exp[col].astype("int64").tolist(), col
    assert a["stage"].astype(str).tolist() == exp["stage"].tolist()
    d, ed = got["demand"], ref.demand.reset_index(drop=True)
    assert _as_dates(d["delivery_on"]) == list(ed["delivery_on"])
    for col in ("snack_id", "units", "units_request", "units_preference", "units_explore",
                "units_fallback"):
        assert d[col].tolist() == ed[col].astype("int64").tolist(), col
    if ref.shortage is None:
        assert "shortage" not in got
    else:
        s = got["shortage"]
        es = ref.shortage.reset_index(drop=True)
        for col in ("snack_id", "units", "stock", "shortage"):
            assert s[col].tolist() == es[col].astype("int64").tolist(), col
    summary = result.summary
    assert summary["users_targeted"] == ref.users_targeted
    assert summary["boxes_full"] == ref.boxes_full
    assert summary["boxes_short"] == ref.boxes_short
    assert summary["units_total"] == ref.units_total
    assert summary["orphan_rows"] == ref.orphan_rows
    for name, rows in ref.input_rows.items():
        assert summary["input_rows"].get(name, 0) == rows, name


def test_worked_example_default(worked_lake, tmp_path):
    out = str(tmp_path / "out")
    result = _run(worked_lake, out)
    got = read_output(out)
    a = got["assignments"]
    assert list(zip(a.user_id, a.slot, a.snack_id, a.stage, strict=False)) == [
        (10, 1, 3, "request"), (10, 2, 4, "request"), (10, 3, 1, "fallback"),
        (20, 1, 2, "preference"), (20, 2, 1, "preference"),
    ]
    d = got["demand"].set_index("snack_id")
    assert d["units"].to_dict() == {1: 2, 2: 1, 3: 1, 4: 1}
    assert d.loc[1, "units_preference"] == 1 and d.loc[1, "units_fallback"] == 1
    assert d.loc[3, "units_request"] == 1 and d.loc[4, "units_request"] == 1
    s = got["shortage"].set_index("snack_id")
    assert s["shortage"].to_dict() == {1: 1, 2: 1, 3: 0, 4: 1}
    assert s["stock"].to_dict() == {1: 1, 2: 0, 3: 5, 4: 0}
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert (summary["users_targeted"], summary["boxes_full"], summary["boxes_short"],
            summary["units_total"]) == (2, 1, 1, 5)
    assert summary["parameters"] == Params().to_dict()
    for key in ("date_from", "date_to", "input_rows", "orphan_rows", "stage_seconds", "cluster",
                "versions"):
        assert key in summary
    assert result.summary["units_total"] == 5


def test_worked_example_variant(worked_lake, tmp_path):
    out = str(tmp_path / "out")
    _run(worked_lake, out, params={"max_requests": 1, "explore_slots": 0,
                                   "repeat_window_days": 59})
    a = read_output(out)["assignments"]
    assert list(zip(a.user_id, a.snack_id, a.stage, strict=False)) == [
        (10, 3, "request"), (10, 1, "preference"), (10, 4, "preference"),
        (20, 2, "preference"), (20, 3, "preference"), (20, 1, "preference"),
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), messy=st.booleans(), span=st.integers(0, 3),
       per_partition=st.sampled_from([1, 2, 5, 50_000]), engine=st.sampled_from(["numba", "numpy"]))
def test_pipeline_equals_reference_on_random_lakes(tmp_path_factory, seed, messy, span,
                                                   per_partition, engine):
    rng = np.random.default_rng(seed)
    tables = random_tables(rng)
    params = random_params(rng)
    root = tmp_path_factory.mktemp("lake")
    lake = write_tables(tables, str(root / "lake"), rng=rng, messy=messy)
    out = str(root / "out")
    date_from = dt.date(2026, 12, 1) + dt.timedelta(days=int(rng.integers(-1, 2)))
    date_to = date_from + dt.timedelta(days=span)
    result = _run(lake, out, date_from, date_to, params, engine=engine,
                  users_per_partition=per_partition)
    assert_matches_reference(tables, out, result, date_from, date_to, params)


def test_result_independent_of_partitioning(tmp_path):
    rng = np.random.default_rng(7)
    tables = random_tables(rng, n_users=40, n_snacks=12, with_stock=True)
    lake = write_tables(tables, str(tmp_path / "lake"), rng=rng, messy=True)
    outs = []
    for i, per in enumerate([1, 3, 7, 1000]):
        out = str(tmp_path / f"out{i}")
        _run(lake, out, WORKED_DATE, WORKED_DATE + dt.timedelta(days=3), users_per_partition=per)
        outs.append(read_output(out))
    for other in outs[1:]:
        for name in ("assignments", "demand", "shortage"):
            pd.testing.assert_frame_equal(outs[0][name], other[name])


def test_synth_lake_fast_path_equals_reference(tmp_path):
    from preassign.synth import (
        SynthConfig,
        generate_partition,
        generate_snacks,
        generate_stock,
        write_lake,
    )

    cfg = SynthConfig(users=300, snacks=40, seed=3, as_of=WORKED_DATE, users_per_partition=70)
    with dask.config.set(scheduler="sync"):
        write_lake(cfg, str(tmp_path / "lake"))
    tables = {"snacks": generate_snacks(cfg), "stock": generate_stock(cfg)}
    parts = [generate_partition(cfg, i) for i in range(cfg.partitions)]
    for name in parts[0]:
        tables[name] = pd.concat([p[name] for p in parts], ignore_index=True)
    out = str(tmp_path / "out")
    until = WORKED_DATE + dt.timedelta(days=13)
    result = _run(str(tmp_path / "lake"), out, WORKED_DATE, until)
    assert result.summary["lake"]["layout"] == "co-partitioned"
    assert result.summary["lake"]["partitions"] == 5
    assert result.summary["users_targeted"] > 200
    assert_matches_reference(tables, out, result, WORKED_DATE, until, {})


def test_messy_lakes_on_a_local_cluster_equal_the_reference(tmp_path):
    """The shuffle path (hash partitioning on user_id, p2p shuffle) with 2 real worker
    processes, on lakes whose files of one table differ in physical types (integer widths,
    timestamp units and zones, date and string kinds)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        for seed in range(6):
            rng = np.random.default_rng(2024 + seed)
            tables = random_tables(rng, n_users=60, n_snacks=13, with_stock=True)
            params = random_params(rng)
            lake = write_tables(tables, str(tmp_path / f"lake{seed}"), rng=rng, messy=True)
            out = str(tmp_path / f"out{seed}")
            until = WORKED_DATE + dt.timedelta(days=int(rng.integers(0, 4)))
            cfg = RunConfig(lake=lake, date_from=WORKED_DATE, date_to=until, out=out,
                            params=Params.from_mapping(params), users_per_partition=9,
                            engine="numba" if seed % 2 else "numpy")
            result = run_preassignment(cfg, client)
            assert result.summary["lake"]["layout"] == "shuffled"
            assert result.summary["lake"]["partitions"] > 1
            assert_matches_reference(tables, out, result, WORKED_DATE, until, params)


def test_a_manifest_that_lies_is_an_error_not_a_wrong_answer(tmp_path):
    from preassign.core.contract import LakeError
    from preassign.synth import SynthConfig, write_lake

    lake = tmp_path / "lake"
    with dask.config.set(scheduler="sync"):
        write_lake(SynthConfig(users=400, users_per_partition=200, as_of=WORKED_DATE), str(lake))
    a, b = lake / "deliveries" / "part.00000.parquet", lake / "deliveries" / "part.00001.parquet"
    a.rename(tmp_path / "swap"), b.rename(a), (tmp_path / "swap").rename(b)  # users misplaced
    with pytest.raises(LakeError, match=r"table .deliveries., column .user_id.: \d+ rows of "
                                        r"partition \d lie outside its recorded range"):
        _run(str(lake), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_each_partition_is_read_once(worked_lake, tmp_path, monkeypatch):
    from preassign import lake, session

    reads, builds = [], []
    real_load, real_build = session.load_partition, session.build_task

    def counting_load(part):
        reads.append(1)
        return real_load(part)

    def counting_build(*args, **kwargs):
        builds.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(session, "load_partition", counting_load)
    monkeypatch.setattr(session, "build_task", counting_build)
    monkeypatch.setattr(lake, "load_partition", counting_load)
    _run(worked_lake, str(tmp_path / "out"), users_per_partition=1)  # 3 users -> 3 partitions
    assert len(reads) == 3 and len(builds) == 3
