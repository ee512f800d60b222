"""SPEC §6 in the core, without Dask: cutoffs from hand-made candidates, the worked example
number by number, and rounds equal to the per-user reference on many random lakes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preassign.core import rounds as R
from preassign.core.catalog import build_catalog
from preassign.core.contract import dedupe_keyed, normalize_table
from preassign.core.demand import compute_reservations, stock_by_column
from preassign.core.engine import get_engine
from preassign.core.params import Params
from preassign.core.partition import prepare_partition
from preassign.core.rules import STAGES, from_days, snack_prior
from preassign.core.stock import (
    Cutoffs,
    StockRoundsExceeded,
    aggregate,
    available,
    box_keys,
    chunk,
    combine,
    held_by_day,
    next_cutoffs,
    run_rounds,
)
from tests.oracle.reference import (
    StockRoundsExceeded as ReferenceRoundsExceeded,
)
from tests.oracle.reference import (
    reference_jitter,
    reference_run,
    reference_stock_run,
    worked_example_tables,
)
from tests.support.lakes import random_params, random_tables

D = dt.date(2026, 12, 1)
NEG = np.iinfo(np.int64).min


# --------------------------------------------------------------------------------------------
# cutoffs from candidates (chunk / combine / aggregate)


def test_box_keys_are_the_spec_priority():
    day, jit, uid = box_keys(np.array([10, 20]), np.array([20788, 20788]))
    assert jit.tolist() == [reference_jitter(10, 0, D), reference_jitter(20, 0, D)]
    assert jit.tolist() == [0.5914812078206408, 0.0925045097072168]  # SPEC §6


def test_q_zero_gives_minus_infinity_without_candidates():
    assert aggregate(combine([], {3: 0}), {3: 0}) == {3: (NEG, 0.0, 0)}


def test_ties_in_jitter_are_broken_by_user_id():
    cols = np.array([5, 5, 5, 5])
    day = np.array([7, 7, 7, 6])
    jit = np.array([0.25, 0.25, 0.25, 0.9])
    uid = np.array([30, 10, 20, 99])
    cand = chunk(cols, day, jit, uid, {5: 3})
    assert cand["user_id"].tolist() == [99, 10, 20]  # an earlier date first, then user id
    assert aggregate(cand, {5: 3}) == {5: (7, 0.25, 20)}
    assert aggregate(cand, {5: 2}) == {5: (7, 0.25, 10)}


def test_holders_spread_over_many_partitions_give_the_global_qth_smallest():
    rng = np.random.default_rng(3)
    n = 500
    cols = rng.integers(0, 4, n)
    day = rng.integers(20788, 20795, n)
    jit = rng.integers(0, 8, n) / 8.0  # many exact ties
    uid = rng.permutation(n) + 1
    quota = {0: 17, 1: 1, 2: 60, 3: 0}
    parts = np.array_split(np.arange(n), 13)
    merged = combine([chunk(cols[p], day[p], jit[p], uid[p], quota) for p in parts], quota)
    sizes = merged.groupby("col").size()
    assert all(sizes.get(col, 0) <= q for col, q in quota.items())
    got = aggregate(merged, quota)
    for col, q in quota.items():
        if q == 0:
            assert got[col] == (NEG, 0.0, 0)
            continue
        keys = sorted(zip(day[cols == col], jit[cols == col], uid[cols == col], strict=True))
        assert got[col] == (int(keys[q - 1][0]), float(keys[q - 1][1]), int(keys[q - 1][2]))


@pytest.mark.parametrize("seed", range(6))
def test_the_largest_side_gives_the_same_cutoffs_from_fewer_rows(seed):
    """The largest side, and one day's shorter side, give the cutoff of the q smallest."""
    rng = np.random.default_rng(seed)
    n = 2_000
    cols = rng.integers(0, 5, n)
    day = rng.integers(20788, 20795, n)
    jit = rng.integers(0, 4, n) / 4.0  # many exact ties in jitter
    uid = rng.permutation(n) + 1
    held = {c: int((cols == c).sum()) for c in range(5)}
    # from "all but one" to "one": both sides, and the boundary q = (H + 1) / 2
    quota = {0: held[0] - 1, 1: 1, 2: (held[2] + 1) // 2, 3: held[3] - 40, 4: 0}
    parts = np.array_split(rng.permutation(n), 9)
    small = [chunk(cols[p], day[p], jit[p], uid[p], quota) for p in parts]
    large = [chunk(cols[p], day[p], jit[p], uid[p], quota, held) for p in parts]
    assert sum(map(len, large)) < sum(map(len, small))
    assert all((f["col"] == 0).sum() <= 2 for f in large)  # H - q + 1 = 2 rows, not q
    assert all((f["col"] == 1).sum() <= 1 for f in large)  # q = 1: the smallest side
    got = aggregate(combine(large, quota, held), quota, held)
    assert got == aggregate(combine(small, quota), quota)
    for col, q in quota.items():
        keys = sorted(zip(day[cols == col], jit[cols == col], uid[cols == col], strict=True))
        want = (NEG, 0.0, 0) if q == 0 else tuple(
            f(x) for f, x in zip((int, float, int), keys[q - 1], strict=True))
        assert got[col] == want
    # holders counted per day: only the day where the q-th key lies is asked for
    by_day = held_by_day(cols, day)
    per_day = [chunk(cols[p], day[p], jit[p], uid[p], quota, by_day) for p in parts]
    assert sum(map(len, per_day)) < sum(map(len, large))
    assert aggregate(combine(per_day, quota, by_day), quota, by_day) == got
    holders = np.array([held[c] for c in range(5)])
    new, _ = next_cutoffs(Cutoffs.unlimited(5), holders, np.array([quota[c] for c in range(5)]),
                          per_day, by_day)
    assert [(int(new.day[c]), float(new.jitter[c]), int(new.user_id[c])) for c in range(5)] == \
        [got[c] for c in range(5)]
    # next_cutoffs gets H from the holders it is given: the same answer from either side
    holders = np.array([held[c] for c in range(5)])
    stock = np.array([quota[c] for c in range(5)])
    new, moved = next_cutoffs(Cutoffs.unlimited(5), holders, stock, large)
    assert moved.tolist() == [0, 1, 2, 3, 4]
    assert [(int(new.day[c]), float(new.jitter[c]), int(new.user_id[c])) for c in range(5)] == \
        [got[c] for c in range(5)]


def test_available_compares_keys_left_to_right_and_infinities():
    k = Cutoffs.unlimited(3).with_values(np.array([0, 1]), np.array([10, NEG]),
                                         np.array([0.5, 0.0]), np.array([7, 0]))
    cols = np.array([0, 0, 0, 0, 1, 2])
    day = np.array([9, 10, 10, 11, 0, 10**6])
    jit = np.array([0.9, 0.4, 0.5, 0.0, 0.0, 0.99])
    uid = np.array([99, 99, 8, 1, 1, 1])
    assert available(k, cols, day, jit, uid).tolist() == [True, True, False, False, False, True]


def test_next_cutoffs_moves_only_over_stock_snacks():
    held = np.array([3, 1, 2])
    stock = np.array([1, 5, 0])
    cand = [chunk(np.array([0, 0, 0]), np.array([5, 4, 6]), np.array([0.1, 0.2, 0.3]),
                  np.array([1, 2, 3]), {0: 1})]
    new, moved = next_cutoffs(Cutoffs.unlimited(3), held, stock, cand)
    assert moved.tolist() == [0, 2]
    assert (new.day[0], new.user_id[0]) == (4, 2) and new.day[2] == NEG
    assert not new.limited[1]


# --------------------------------------------------------------------------------------------
# rounds on a lake, in this process


def _catalog_and_stock(tables):
    snacks = normalize_table("snacks", tables["snacks"])[0]
    catalog = build_catalog(dedupe_keyed("snacks", snacks, "snack_id"))
    stock = dedupe_keyed("stock", normalize_table("stock", tables["stock"])[0], "snack_id")
    return catalog, stock_by_column(stock, catalog.snack_id)


def _split(tables, n_parts):
    """The user-keyed tables cut into ``n_parts`` user-id ranges (all of a user's rows together)."""
    ids = np.unique(pd.to_numeric(tables["users"]["user_id"]).to_numpy())
    edges = [ids[i] for i in np.linspace(0, len(ids), n_parts + 1).astype(int)[1:-1]]
    bounds = [-np.inf, *edges, np.inf]
    out = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        part = {}
        for name in ("users", "ratings", "deliveries", "ng_snacks", "avoid_ingredients",
                     "genre_prefs", "requests"):
            df = tables[name]
            uid = pd.to_numeric(df["user_id"]).to_numpy()
            part[name] = df.loc[(uid >= lo) & (uid < hi)].reset_index(drop=True)
        out.append(part)
    return out


def core_stock_run(tables, date_from, date_to, params, engine="numba", n_parts=1):
    catalog, q = _catalog_and_stock(tables)
    chosen = get_engine(engine)
    prepared = [prepare_partition(p, catalog)[0] for p in _split(tables, n_parts)]
    sums = sum(chosen.rating_totals(t, catalog)[0] for t in prepared)
    counts = sum(chosen.rating_totals(t, catalog)[1] for t in prepared)
    prior = snack_prior(sums, counts, params)
    parts = [R.start(chosen, chosen.build_state(t, catalog, date_from, date_to, params), catalog,
                     prior, params) for t in prepared]
    local = R.LocalPartitions(parts, catalog, prior, params)
    cutoffs, n_rounds = run_rounds(local, q, catalog.snack_id, params.stock_max_rounds)
    result = local.parts[0] and None
    total = R.outcome(local.parts[0], catalog)
    for p in local.parts[1:]:
        total = total + R.outcome(p, catalog)
    reservations = compute_reservations(catalog.snack_id, q, total.units_first,
                                        total.units_final, total.boxes_lost, total.boxes_gained,
                                        cutoffs.limited, cutoffs.day)
    boxes = pd.concat([p.boxes for p in local.parts], ignore_index=True)
    boxes = boxes.sort_values(["user_id", "slot"], ignore_index=True)
    del result
    return boxes, reservations, n_rounds, total, cutoffs


def _as_reference(reservations):
    out = reservations.copy()
    out["cutoff_on"] = pd.Series(
        [None if d is None or d is pd.NA else d if isinstance(d, dt.date) else from_days(int(d))
         for d in out["cutoff_on"]], dtype=object)
    return out.astype({"limited": bool}).reset_index(drop=True)


def assert_matches_stock_reference(tables, date_from, date_to, params, engine, n_parts):
    try:
        ref = reference_stock_run(tables, date_from, date_to, params)
    except ReferenceRoundsExceeded as exc:
        with pytest.raises(StockRoundsExceeded) as info:
            core_stock_run(tables, date_from, date_to, Params.from_mapping(params), engine,
                           n_parts)
        assert info.value.moved_snacks == exc.moved
        return None
    boxes, reservations, n_rounds, total, _ = core_stock_run(
        tables, date_from, date_to, Params.from_mapping(params), engine, n_parts)
    exp = ref.result.assignments
    assert boxes["user_id"].tolist() == exp["user_id"].tolist()
    assert boxes["slot"].tolist() == exp["slot"].tolist()
    assert boxes["snack_id"].tolist() == exp["snack_id"].tolist()
    assert [STAGES[s] for s in boxes["stage"]] == exp["stage"].tolist()
    pd.testing.assert_frame_equal(_as_reference(reservations), _as_reference(ref.reservations),
                                  check_dtype=False)
    assert n_rounds == ref.rounds
    assert total.boxes_changed == ref.boxes_changed
    return ref


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_spec_6_worked_example_number_by_number(engine):
    tables = worked_example_tables()
    tables["stock"] = pd.DataFrame({"snack_id": [1, 3], "quantity": [1, 5]})
    boxes, res, n_rounds, total, cutoffs = core_stock_run(tables, D, D, Params(), engine)
    assert [(u, s, STAGES[g]) for u, s, g in boxes[["user_id", "snack_id", "stage"]].to_numpy()] \
        == [(10, 3, "request"), (20, 1, "preference")]
    assert n_rounds == 2 and total.boxes_changed == 2
    rows = {r.snack_id: r for r in res.itertuples(index=False)}
    #         stock, units_unconstrained, units, units_left, boxes_lost, boxes_gained, limited
    expect = {1: (1, 2, 1, 0, 1, 0, True), 2: (0, 1, 0, 0, 1, 0, True),
              3: (5, 1, 1, 4, 0, 0, False), 4: (0, 1, 0, 0, 1, 0, True)}
    for sid, values in expect.items():
        r = rows[sid]
        assert (r.stock, r.units_unconstrained, r.units, r.units_left, r.boxes_lost,
                r.boxes_gained, r.limited) == values, sid
    assert from_days(int(rows[1].cutoff_on)) == D
    assert pd.isna(rows[2].cutoff_on) and pd.isna(rows[3].cutoff_on) and pd.isna(rows[4].cutoff_on)
    # the summary: 2 targeted, 0 full, 2 short, 2 units; round 1: 1 short, 5 units
    assert len(boxes) == 2 and sum(total.full_by_day.values()) == 0
    assert total.full_first == 1 and int(total.units_first.sum()) == 5


def _stock_for(tables, rng, kind):
    """Stock that is tight, zero, missing for some snacks, or ample."""
    snack_ids = pd.to_numeric(tables["snacks"]["snack_id"]).unique()
    demand = reference_run(tables, D, D + dt.timedelta(days=3)).demand
    units = demand.groupby("snack_id")["units"].sum().reindex(snack_ids).fillna(0).to_numpy()
    if kind == "ample":
        q = units + 100
    elif kind == "zero":
        q = np.zeros(len(snack_ids), int)
    else:
        q = np.floor(units * rng.uniform(0.0, 1.1, len(snack_ids))).astype(int)
    keep = rng.random(len(snack_ids)) > (0.3 if kind == "missing" else 0.0)
    return pd.DataFrame({"snack_id": snack_ids[keep], "quantity": q[keep].astype(int)})


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), span=st.integers(0, 3),
       kind=st.sampled_from(["tight", "zero", "missing", "ample"]),
       engine=st.sampled_from(["numba", "numpy"]), n_parts=st.sampled_from([1, 2, 5]),
       rounds=st.sampled_from([1, 2, 100]))
def test_rounds_equal_the_reference_on_random_lakes(seed, span, kind, engine, n_parts, rounds):
    rng = np.random.default_rng(seed)
    tables = random_tables(rng)
    params = random_params(rng)
    params["stock_max_rounds"] = rounds
    tables["stock"] = _stock_for(tables, rng, kind)
    assert_matches_stock_reference(tables, D, D + dt.timedelta(days=span), params, engine,
                                   n_parts)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["tight", "missing", "zero"]))
def test_no_snack_ends_above_its_stock_and_partitioning_does_not_matter(seed, kind):
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, n_users=40)
    tables["stock"] = _stock_for(tables, rng, kind)
    until = D + dt.timedelta(days=3)
    runs = [core_stock_run(tables, D, until, Params(), "numba", n) for n in (1, 3, 7)]
    for boxes, res, *_ in runs:
        assert (res["units"] <= res["stock"]).all()
        pd.testing.assert_frame_equal(boxes, runs[0][0])
        pd.testing.assert_frame_equal(res, runs[0][1])


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1))
def test_ample_stock_gives_the_section_3_result_in_one_round(seed):
    rng = np.random.default_rng(seed)
    tables = random_tables(rng)
    tables["stock"] = _stock_for(tables, rng, "ample")
    until = D + dt.timedelta(days=3)
    boxes, res, n_rounds, total, cutoffs = core_stock_run(tables, D, until, Params())
    plain = reference_run(tables, D, until).assignments
    assert n_rounds == 1 and not cutoffs.limited.any() and total.boxes_changed == 0
    assert boxes["snack_id"].tolist() == plain["snack_id"].tolist()
    assert (res["units"] == res["units_unconstrained"]).all()


def test_a_run_still_moving_at_stock_max_rounds_names_the_parameter_and_snacks():
    tables = worked_example_tables()
    tables["stock"] = pd.DataFrame({"snack_id": [1, 3], "quantity": [1, 5]})
    with pytest.raises(StockRoundsExceeded, match=r"stock_max_rounds=1 .*snack_id 1, 2, 4"):
        core_stock_run(tables, D, D, Params(stock_max_rounds=1))
    # the worked example settles in round 2: a limit of exactly 2 succeeds
    assert core_stock_run(tables, D, D, Params(stock_max_rounds=2))[2] == 2
