"""explain_box: the box it explains is the run's box, and the numbers add up."""

from __future__ import annotations

import datetime as dt
import os

import dask
import numpy as np
import pandas as pd
import pytest

from preassign.core.params import Params
from preassign.core.rules import jitter
from preassign.explain import EXPLAIN_COLUMNS, explain_box, first_assigned_user
from preassign.pipeline import RunConfig, run_preassignment
from preassign.synth import SynthConfig, write_lake
from tests.oracle.reference import worked_example_tables
from tests.support.lakes import random_tables, write_tables
from tests.support.outputs import WORKED_DATE

DATE_TO = WORKED_DATE + dt.timedelta(days=13)


def _run(lake: str, out: str, date_from: dt.date, date_to: dt.date, params=None, **kw):
    cfg = RunConfig(lake=lake, date_from=date_from, date_to=date_to, out=out,
                    params=Params.from_mapping(params or {}), **kw)
    with dask.config.set(scheduler="sync"):
        return run_preassignment(cfg)


def _box(frame: pd.DataFrame) -> list[tuple[int, int, str]]:
    return [(int(a), int(b), str(c)) for a, b, c in zip(frame["slot"], frame["snack_id"],
                                                         frame["stage"], strict=False)]


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    """500 synthetic users in two co-partitioned files, two weeks, run on the sync scheduler."""
    root = tmp_path_factory.mktemp("explain")
    lake, out = str(root / "lake"), str(root / "out")
    with dask.config.set(scheduler="sync"):
        write_lake(SynthConfig(users=500, users_per_partition=250, as_of=WORKED_DATE), lake)
    _run(lake, out, WORKED_DATE, DATE_TO)
    assignments = pd.read_parquet(os.path.join(out, "assignments"))
    assignments["stage"] = assignments["stage"].astype(str)
    return lake, out, assignments


def _pick_users(assignments: pd.DataFrame) -> dict[str, int]:
    per_user = assignments.groupby("user_id")["stage"].agg(set)
    users = {
        "first": int(assignments["user_id"].min()),
        "last": int(assignments["user_id"].max()),  # the second partition
        "request": int(per_user[per_user.map(lambda s: "request" in s)].index[0]),
        "explore": int(per_user[per_user.map(lambda s: "explore" in s)].index[0]),
        "request+explore": int(
            per_user[per_user.map(lambda s: {"request", "explore"} <= s)].index[0]),
    }
    fallback = per_user[per_user.map(lambda s: "fallback" in s)]
    if len(fallback):
        users["fallback"] = int(fallback.index[0])
    return users


def test_explained_boxes_are_the_runs_boxes(synth_run):
    lake, out, assignments = synth_run
    for why, user in _pick_users(assignments).items():
        got = explain_box(lake, user, WORKED_DATE, DATE_TO, out_dir=out)
        want = assignments[assignments["user_id"] == user].sort_values("slot")
        assert list(got.columns) == EXPLAIN_COLUMNS
        assert _box(got) == _box(want), why
        assert set(got["user_id"]) == {user}
        assert set(got["delivery_on"]) == {pd.Timestamp(want["delivery_on"].iloc[0]).date()}
        assert got.attrs["is_full"] == (len(got) == got.attrs["box_size"])
        assert got["reason"].str.len().gt(20).all()


def test_the_numbers_add_up(synth_run):
    lake, out, assignments = synth_run
    params = Params()
    users = _pick_users(assignments)
    frames = [explain_box(lake, u, WORKED_DATE, DATE_TO, out_dir=out) for u in set(users.values())]
    got = pd.concat(frames, ignore_index=True)
    stage = got["stage"]
    scored = stage.isin(["preference", "fallback"])
    total = got["prior"] + got["own_term"] + got["genre_term"] + got["favorite_term"]
    assert np.allclose(got.loc[scored, "score"], total[scored], atol=3e-6)
    explored = stage == "explore"
    assert explored.any()
    key = got["prior"] + got["new_bonus_term"] + params.explore_jitter * got["jitter"]
    assert np.allclose(got.loc[explored, "explore_key"], key[explored], atol=3e-6)
    days = np.array([(d - dt.date(1970, 1, 1)).days for d in got["delivery_on"]])
    want_jitter = jitter(got["user_id"].to_numpy(), got["snack_id"].to_numpy(), days)
    assert np.allclose(got.loc[explored, "jitter"], np.round(want_jitter[explored.to_numpy()], 6))
    assert got.loc[explored, "latest_rating"].isna().all()  # novel: never rated
    requested = stage == "request"
    assert requested.any() and got.loc[requested, "requested_at"].notna().all()
    assert got.loc[~requested, "requested_at"].isna().all()
    for _, r in got[requested].iterrows():
        age = (pd.Timestamp(r["delivery_on"]) - r["requested_at"].tz_localize(None)).days
        assert 0 <= age <= params.request_window_days
        assert "requested" in r["reason"]
    # numbers that do not apply to a stage are left empty
    assert got.loc[~scored, "score"].isna().all()
    assert got.loc[~explored, "explore_key"].isna().all()


def test_priors_recomputed_without_the_run_give_the_same_boxes(synth_run):
    lake, out, assignments = synth_run
    for user in sorted(set(_pick_users(assignments).values()))[:3]:
        with_run = explain_box(lake, user, WORKED_DATE, DATE_TO, out_dir=out)
        alone = explain_box(lake, user, WORKED_DATE, DATE_TO)
        pd.testing.assert_frame_equal(with_run, alone)


def test_user_none_picks_the_first_user(synth_run):
    lake, out, assignments = synth_run
    assert first_assigned_user(out) == int(assignments["user_id"].min())
    got = explain_box(lake, None, "2026-12-01", "2026-12-14", out_dir=out)
    assert got.attrs["user_id"] == int(assignments["user_id"].min())


def test_params_come_from_the_run(synth_run, tmp_path):
    lake, _, assignments = synth_run
    out = str(tmp_path / "out")
    overrides = {"max_requests": 1, "explore_slots": 3, "max_per_genre": 2}
    _run(lake, out, WORKED_DATE, DATE_TO, overrides)
    run = pd.read_parquet(os.path.join(out, "assignments"))
    user = _pick_users(run.assign(stage=run["stage"].astype(str)))["request+explore"]
    want = run[run["user_id"] == user].sort_values("slot")
    assert _box(explain_box(lake, user, WORKED_DATE, DATE_TO, out_dir=out)) == _box(want)
    assert _box(explain_box(lake, user, WORKED_DATE, DATE_TO, out_dir=out, params=overrides)) \
        == _box(want)
    default = explain_box(lake, user, WORKED_DATE, DATE_TO, out_dir=out, params=Params())
    assert _box(default) == _box(assignments[assignments["user_id"] == user].sort_values("slot"))


# --------------------------------------------------------------------------------------------
# SPEC §5


@pytest.mark.parametrize("with_run", [True, False], ids=["run-priors", "recomputed-priors"])
def test_worked_example_reasons(worked_lake, tmp_path, with_run):
    out = str(tmp_path / "out")
    if with_run:
        _run(worked_lake, out, WORKED_DATE, WORKED_DATE)
    kw = {"out_dir": out} if with_run else {}
    ten = explain_box(worked_lake, 10, WORKED_DATE, WORKED_DATE, **kw)
    assert _box(ten) == [(1, 3, "request"), (2, 4, "request"), (3, 1, "fallback")]
    assert ten["name"].tolist() == ["chips salt", "chips peanut", "choco milk"]
    assert ten["requested_at"].iloc[:2].tolist() == [
        pd.Timestamp("2026-09-02 00:00:00", tz="UTC"),
        pd.Timestamp("2026-11-30 23:59:59", tz="UTC"),
    ]
    fallback = ten.iloc[2]
    assert (fallback["score"], fallback["prior"], fallback["own_term"], fallback["genre_term"],
            fallback["favorite_term"], fallback["latest_rating"]) == (4.636364, 2.636364, 1.5,
                                                                       0.5, 0.0, 4)
    assert ten["reason"].iloc[0].startswith("requested 2026-09-02 00:00:00 UTC")
    assert ten["reason"].iloc[1].startswith("requested 2026-11-30 23:59:59 UTC")
    assert "box not full after exploring" in ten["reason"].iloc[2]
    assert "score 4.636 = prior 2.636 + own +1.50 (rated 4, love) + genre +0.50" \
        in ten["reason"].iloc[2]
    assert ten.attrs == {"user_id": 10, "delivery_on": WORKED_DATE, "box_size": 3, "is_full": True}

    twenty = explain_box(worked_lake, 20, WORKED_DATE, WORKED_DATE, **kw)
    assert _box(twenty) == [(1, 2, "preference"), (2, 1, "preference")]
    assert twenty["score"].tolist() == [2.666667, 1.636364]
    assert twenty["own_term"].tolist() == [0.0, -1.0]
    assert twenty["latest_rating"].isna().tolist() == [True, False]  # 2 unrated; 1 rated 2
    assert "(unrated)" in twenty["reason"].iloc[0]
    assert "(rated 2, so-so)" in twenty["reason"].iloc[1]
    assert twenty.attrs["is_full"] is False and twenty.attrs["box_size"] == 8


def test_worked_example_variant(worked_lake):
    params = {"max_requests": 1, "explore_slots": 0, "repeat_window_days": 59}
    ten = explain_box(worked_lake, 10, WORKED_DATE, WORKED_DATE, params=params)
    assert _box(ten) == [(1, 3, "request"), (2, 1, "preference"), (3, 4, "preference")]
    twenty = explain_box(worked_lake, 20, WORKED_DATE, WORKED_DATE, params=params)
    assert _box(twenty) == [(1, 2, "preference"), (2, 3, "preference"), (3, 1, "preference")]
    assert twenty["score"].iloc[1] == 2.571429


def test_explore_reason_names_the_new_snack_bonus(tmp_path):
    # user 20 of SPEC §5 with a box of 3 and no peanut allergy: preference stops at one snack
    # (3 - 2 explore slots), then snack 4, new and never delivered or rated, is explored
    tables = worked_example_tables()
    tables["avoid_ingredients"] = tables["avoid_ingredients"].iloc[:0]
    tables["users"]["box_size"] = pd.array([3, 3, 3], dtype="Int64")
    lake = write_tables(tables, str(tmp_path / "lake"))
    got = explain_box(lake, 20, WORKED_DATE, WORKED_DATE)
    assert _box(got) == [(1, 2, "preference"), (2, 4, "explore"), (3, 1, "fallback")]
    row = got.iloc[1]
    assert row["explore_key"] == pytest.approx(row["prior"] + 0.5 + 0.5 * row["jitter"], abs=2e-6)
    assert row["new_bonus_term"] == 0.5
    expected = float(jitter(np.array([20]), np.array([4]), np.array([20788]))[0])
    assert row["jitter"] == round(expected, 6)
    assert "new +0.50 (launched 2026-11-20)" in row["reason"]
    assert "never delivered or rated" in row["reason"]


# --------------------------------------------------------------------------------------------
# other layouts and errors


@pytest.mark.parametrize("seed", range(6))
def test_every_user_of_a_messy_lake(tmp_path, seed):
    """Hive directories, several files, int32/int64 ids, tz-aware times; orphans and duplicates."""
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, n_users=12)
    lake = write_tables(tables, str(tmp_path / "lake"), rng=rng, messy=True)
    out = str(tmp_path / "out")
    date_to = WORKED_DATE + dt.timedelta(days=3)
    _run(lake, out, WORKED_DATE, date_to)
    run = pd.read_parquet(os.path.join(out, "assignments"))
    run["stage"] = run["stage"].astype(str)
    boxed = set()
    for user in sorted(set(tables["users"]["user_id"].astype(int))):
        want = run[run["user_id"] == user].sort_values("slot")
        try:
            got = explain_box(lake, user, WORKED_DATE, date_to, out_dir=out)
        except LookupError as exc:
            assert want.empty, f"user {user} has a box but explain_box says: {exc}"
            assert "not targeted" in str(exc)
            continue
        assert _box(got) == _box(want), user  # an empty box is explained as an empty frame
        if len(got):
            boxed.add(user)
    assert boxed == set(run["user_id"].astype(int))


def test_errors_say_what_to_fix(worked_lake, tmp_path):
    with pytest.raises(LookupError, match=r"user 30 is not targeted: status is 'paused'"):
        explain_box(worked_lake, 30, WORKED_DATE, WORKED_DATE)
    with pytest.raises(LookupError, match=r"user 10 is not targeted: next_delivery_on 2026-12-01 "
                                          r"is outside \[2026-12-02, 2026-12-03\]"):
        explain_box(worked_lake, 10, "2026-12-02", "2026-12-03")
    with pytest.raises(LookupError, match=r"user 12345 is not in the lake's users table"):
        explain_box(worked_lake, 12345, WORKED_DATE, WORKED_DATE)
    with pytest.raises(FileNotFoundError, match=r"no summary.json"):
        explain_box(worked_lake, 10, WORKED_DATE, WORKED_DATE, out_dir=str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match=r"user_id=None needs out_dir"):
        explain_box(worked_lake, None, WORKED_DATE, WORKED_DATE)
    with pytest.raises(ValueError, match=r"date_from must be a date or an ISO date string"):
        explain_box(worked_lake, 10, "1 Dec", WORKED_DATE)
    with pytest.raises(ValueError, match=r"date_to 2026-11-30 is before date_from 2026-12-01"):
        explain_box(worked_lake, 10, WORKED_DATE, "2026-11-30")
