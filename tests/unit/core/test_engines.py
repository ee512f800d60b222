"""The engines without Dask: SPEC §5 number by number, both engines equal to the per-user
reference and to each other on random lakes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preassign.core.catalog import build_catalog
from preassign.core.contract import dedupe_keyed, normalize_table
from preassign.core.demand import compute_shortage, count_demand
from preassign.core.dense import assign_snacks, build_user_state, latest_ratings
from preassign.core.engine import ENGINES, get_engine
from preassign.core.params import Params
from preassign.core.partition import prepare_partition, target_mask
from preassign.core.rules import STAGES, snack_prior
from preassign.core.sparse import assign_snacks_sparse, build_sparse_state
from preassign.errors import UsageError
from tests.oracle.reference import reference_run, worked_example_tables
from tests.support.lakes import random_params, random_tables

D = dt.date(2026, 12, 1)


def _core(tables, date_from, date_to, params):
    snacks, _, _ = normalize_table("snacks", tables["snacks"])
    catalog = build_catalog(dedupe_keyed("snacks", snacks, "snack_id"))
    clean, _, orphans, _ = prepare_partition(tables, catalog)
    sums, counts = get_engine("numpy").rating_totals(clean, catalog)
    targeted = int(target_mask(clean["users"], date_from, date_to).sum())
    prior = snack_prior(sums, counts, params)
    state = build_user_state(clean, catalog, date_from, date_to, params)
    return assign_snacks(state, catalog, prior, params), prior, targeted, orphans


def test_worked_example_intermediate_numbers():
    tables = worked_example_tables()
    assignments, prior, targeted, _ = _core(tables, D, D, Params())
    assert np.round(prior, 6).tolist() == [2.636364, 2.666667, 2.571429, 2.52381, 2.6, 2.6]
    assert targeted == 2
    latest = latest_ratings(normalize_table("ratings", tables["ratings"])[0])
    assert sorted(map(tuple, latest.to_numpy().tolist())) == [
        (10, 1, 4), (10, 3, 2), (20, 1, 2), (30, 2, 4), (30, 4, 1)]
    rows = [(u, s, STAGES[g]) for u, s, g in assignments[["user_id", "snack_id", "stage"]].to_numpy()]
    assert rows == [(10, 3, "request"), (10, 4, "request"), (10, 1, "fallback"),
                    (20, 2, "preference"), (20, 1, "preference")]
    demand = count_demand(assignments)
    assert demand["units"].tolist() == [2, 1, 1, 1]
    stock = pd.DataFrame({"snack_id": [1, 3], "quantity": [1, 5]})
    assert compute_shortage(demand, stock)["shortage"].tolist() == [1, 1, 0, 1]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), span=st.integers(0, 3))
def test_core_equals_reference_on_random_lakes(seed, span):
    rng = np.random.default_rng(seed)
    tables = random_tables(rng)
    params = random_params(rng)
    date_to = D + dt.timedelta(days=span)
    got, _, targeted, orphans = _core(tables, D, date_to, Params.from_mapping(params))
    ref = reference_run(tables, D, date_to, params)
    exp = ref.assignments
    assert targeted == ref.users_targeted
    assert orphans == ref.orphan_rows
    assert got["user_id"].tolist() == exp["user_id"].tolist()
    assert got["slot"].tolist() == exp["slot"].tolist()
    assert got["snack_id"].tolist() == exp["snack_id"].tolist()
    assert [STAGES[s] for s in got["stage"]] == exp["stage"].tolist()


def test_box_sizes_one_to_twelve_are_filled_up_to_k_with_distinct_snacks():
    rng = np.random.default_rng(1)
    for k in range(1, 13):
        tables = random_tables(rng, n_users=12, n_snacks=40)
        tables["users"]["box_size"] = pd.array([k] * len(tables["users"]), dtype="Int64")
        got, _, _, _ = _core(tables, D, D + dt.timedelta(days=3), Params(max_per_genre=12))
        for _, box in got.groupby("user_id"):
            assert len(box) <= k
            assert box["snack_id"].is_unique
            assert box["slot"].tolist() == list(range(1, len(box) + 1))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), span=st.integers(0, 3))
def test_compiled_kernel_equals_numpy_path(seed, span):
    rng = np.random.default_rng(seed)
    tables = random_tables(rng)
    params = Params.from_mapping(random_params(rng))
    date_to = D + dt.timedelta(days=span)
    snacks, _, _ = normalize_table("snacks", tables["snacks"])
    catalog = build_catalog(dedupe_keyed("snacks", snacks, "snack_id"))
    clean, _, _, _ = prepare_partition(tables, catalog)
    s1, c1 = get_engine("numpy").rating_totals(clean, catalog)
    s2, c2 = get_engine("numba").rating_totals(clean, catalog)
    assert s1.tolist() == s2.tolist() and c1.tolist() == c2.tolist()
    prior = snack_prior(s1, c1, params)
    dense = assign_snacks(build_user_state(clean, catalog, D, date_to, params), catalog, prior, params)
    sparse = assign_snacks_sparse(build_sparse_state(clean, catalog, D, date_to, params), catalog,
                                  prior, params)
    pd.testing.assert_frame_equal(dense, sparse)


def test_get_engine_lists_the_valid_names():
    assert sorted(ENGINES) == ["numba", "numpy"]
    assert get_engine("numba").name == "numba"
    with pytest.raises(UsageError, match="unknown engine 'gpu'; valid engines: numba, numpy"):
        get_engine("gpu")
