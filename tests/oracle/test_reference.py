"""Tests of the slow reference implementation (tests/oracle/reference.py) against SPEC §3 and §5."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from tests.oracle.reference import (
    WORKED_EXAMPLE_DATE,
    reference_jitter,
    reference_run,
    reference_state,
    worked_example_tables,
)

D = WORKED_EXAMPLE_DATE  # 2026-12-01
OLD = dt.date(2026, 1, 1)


def days(n: int) -> dt.timedelta:
    return dt.timedelta(days=n)


# --------------------------------------------------------------------------
# helpers to build small lakes
# --------------------------------------------------------------------------


def make_lake(
    snacks,
    users,
    ratings=(),
    deliveries=(),
    ng_snacks=(),
    avoid_ingredients=(),
    genre_prefs=(),
    requests=(),
    stock=None,
    requested_at_tz=None,
) -> dict[str, pd.DataFrame]:
    """Build a lake from tuples.

    snacks: (snack_id, genre, ingredients, launched_on, retired_on)
    users: (user_id, status, next_delivery_on, box_size)
    ratings: (user_id, snack_id, rating, rated_at)
    deliveries: (user_id, snack_id, delivered_on)
    requests: (user_id, snack_id, requested_at)
    """

    def ids(values):
        return pd.Series(list(values), dtype="int64")

    def dates(values):
        return pd.Series(list(values), dtype=object)

    def stamps(values, tz=None):
        s = pd.Series(pd.to_datetime(list(values)), dtype="datetime64[ns]")
        if tz is not None:
            s = s.dt.tz_localize(tz)
        return s

    snacks = list(snacks)
    users = list(users)
    ratings = list(ratings)
    deliveries = list(deliveries)
    requests = list(requests)
    tables = {
        "snacks": pd.DataFrame(
            {
                "snack_id": ids(r[0] for r in snacks),
                "name": [f"snack {r[0]}" for r in snacks],
                "genre": [r[1] for r in snacks],
                "ingredients": pd.Series([r[2] for r in snacks], dtype=object),
                "launched_on": dates(r[3] for r in snacks),
                "retired_on": dates(r[4] for r in snacks),
            }
        ),
        "users": pd.DataFrame(
            {
                "user_id": ids(r[0] for r in users),
                "status": [r[1] for r in users],
                "next_delivery_on": dates(r[2] for r in users),
                "box_size": pd.Series([r[3] for r in users], dtype="Int64"),
            }
        ),
        "ratings": pd.DataFrame(
            {
                "user_id": ids(r[0] for r in ratings),
                "snack_id": ids(r[1] for r in ratings),
                "rating": ids(r[2] for r in ratings),
                "rated_at": stamps(r[3] for r in ratings),
            }
        ),
        "deliveries": pd.DataFrame(
            {
                "user_id": ids(r[0] for r in deliveries),
                "snack_id": ids(r[1] for r in deliveries),
                "delivered_on": dates(r[2] for r in deliveries),
            }
        ),
        "ng_snacks": pd.DataFrame(
            {"user_id": ids(r[0] for r in ng_snacks), "snack_id": ids(r[1] for r in ng_snacks)}
        ),
        "avoid_ingredients": pd.DataFrame(
            {
                "user_id": ids(r[0] for r in avoid_ingredients),
                "ingredient": pd.Series([r[1] for r in avoid_ingredients], dtype=object),
            }
        ),
        "genre_prefs": pd.DataFrame(
            {
                "user_id": ids(r[0] for r in genre_prefs),
                "genre": pd.Series([r[1] for r in genre_prefs], dtype=object),
            }
        ),
        "requests": pd.DataFrame(
            {
                "user_id": ids(r[0] for r in requests),
                "snack_id": ids(r[1] for r in requests),
                "requested_at": stamps((r[2] for r in requests), requested_at_tz),
            }
        ),
    }
    if stock is not None:
        tables["stock"] = pd.DataFrame(
            {"snack_id": ids(r[0] for r in stock), "quantity": ids(r[1] for r in stock)}
        )
    return tables


def boxes(result) -> dict[int, list[tuple[int, str]]]:
    """user_id -> [(snack_id, stage), ...] in slot order."""
    out: dict[int, list[tuple[int, str]]] = {}
    for row in result.assignments.itertuples(index=False):
        out.setdefault(int(row.user_id), []).append((int(row.snack_id), row.stage))
    return out


def assert_same_result(a, b, *, counts_too: bool = True) -> None:
    pd.testing.assert_frame_equal(a.assignments, b.assignments)
    pd.testing.assert_frame_equal(a.demand, b.demand)
    if a.shortage is None or b.shortage is None:
        assert a.shortage is None and b.shortage is None
    else:
        pd.testing.assert_frame_equal(a.shortage, b.shortage)
    assert (a.users_targeted, a.boxes_full, a.boxes_short, a.units_total) == (
        b.users_targeted,
        b.boxes_full,
        b.boxes_short,
        b.units_total,
    )
    if counts_too:
        assert a.input_rows == b.input_rows
        assert a.orphan_rows == b.orphan_rows


# --------------------------------------------------------------------------
# 1. SPEC §5 worked example
# --------------------------------------------------------------------------


def test_worked_example_state():
    state = reference_state(worked_example_tables())
    latest = {
        (uid, sid): r for uid, user in state.users.items() for sid, r in user.latest.items()
    }
    assert latest == {(10, 1): 4, (10, 3): 2, (20, 1): 2, (30, 2): 4, (30, 4): 1}
    assert state.C == 2.6
    assert state.params["prior_weight"] * state.C == 52
    expected_priors = {1: 58 / 22, 2: 56 / 21, 3: 54 / 21, 4: 53 / 21, 5: 2.6, 6: 2.6}
    for sid, value in expected_priors.items():
        assert round(state.prior(sid), 6) == round(value, 6)
    assert round(state.prior(1), 6) == 2.636364
    assert round(state.prior(2), 6) == 2.666667
    assert round(state.prior(3), 6) == 2.571429
    assert round(state.prior(4), 6) == 2.523810
    assert state.prior(5) == state.prior(6) == 2.6

    u10, u20 = state.users[10], state.users[20]
    assert state.affinity(u10, "choco") == 1.0
    assert state.affinity(u10, "chips") == -1.0
    assert state.affinity(u10, "gummy") == 0.0
    for genre in ("choco", "chips", "gummy"):
        assert state.affinity(u20, genre) == 0.0

    assert state.eligible_snacks(u10, D) == [1, 3, 4]
    assert state.eligible_snacks(u20, D) == [1, 2]
    assert state.score(u10, 1) == 4.636364
    assert state.score(u10, 3) == 1.571429
    assert state.score(u10, 4) == 2.523810
    assert state.score(u20, 1) == 1.636364
    assert state.score(u20, 2) == 2.666667

    # novelty: 1 delivered to 10, 3 rated by 10; 2 novel for 20, 1 rated by 20
    assert not state.novel(u10, 1)
    assert not state.novel(u10, 3)
    assert state.novel(u10, 4)
    assert state.novel(u20, 2)
    assert not state.novel(u20, 1)
    assert not state.novel(u20, 3)  # delivered


def test_worked_example_run():
    result = reference_run(worked_example_tables(), D, D)
    assert boxes(result) == {
        10: [(3, "request"), (4, "request"), (1, "fallback")],
        20: [(2, "preference"), (1, "preference")],
    }
    a = result.assignments
    assert list(a.columns) == ["delivery_on", "user_id", "slot", "snack_id", "stage"]
    assert a["slot"].tolist() == [1, 2, 3, 1, 2]
    assert a["user_id"].tolist() == [10, 10, 10, 20, 20]
    assert all(v == D and type(v) is dt.date for v in a["delivery_on"])

    assert result.users_targeted == 2
    assert result.boxes_full == 1
    assert result.boxes_short == 1
    assert result.units_total == 5

    expected_demand = pd.DataFrame(
        {
            "delivery_on": pd.Series([D] * 4, dtype=object),
            "snack_id": pd.Series([1, 2, 3, 4], dtype="int64"),
            "units": pd.Series([2, 1, 1, 1], dtype="int64"),
            "units_request": pd.Series([0, 0, 1, 1], dtype="int64"),
            "units_preference": pd.Series([1, 1, 0, 0], dtype="int64"),
            "units_explore": pd.Series([0, 0, 0, 0], dtype="int64"),
            "units_fallback": pd.Series([1, 0, 0, 0], dtype="int64"),
        }
    )
    pd.testing.assert_frame_equal(result.demand, expected_demand)

    expected_shortage = pd.DataFrame(
        {
            "snack_id": pd.Series([1, 2, 3, 4], dtype="int64"),
            "units": pd.Series([2, 1, 1, 1], dtype="int64"),
            "stock": pd.Series([1, 0, 5, 0], dtype="int64"),
            "shortage": pd.Series([1, 1, 0, 1], dtype="int64"),
        }
    )
    pd.testing.assert_frame_equal(result.shortage, expected_shortage)

    assert result.input_rows == {
        "snacks": 6,
        "users": 3,
        "ratings": 7,
        "deliveries": 2,
        "ng_snacks": 1,
        "avoid_ingredients": 1,
        "genre_prefs": 2,
        "requests": 3,
        "stock": 3,
    }
    assert result.orphan_rows == {
        "ratings": 0,
        "deliveries": 0,
        "ng_snacks": 0,
        "avoid_ingredients": 0,
        "genre_prefs": 0,
        "requests": 0,
    }


def test_worked_example_variant():
    params = {"max_requests": 1, "explore_slots": 0, "repeat_window_days": 59}
    result = reference_run(worked_example_tables(), D, D, params)
    assert boxes(result) == {
        10: [(3, "request"), (1, "preference"), (4, "preference")],
        20: [(2, "preference"), (3, "preference"), (1, "preference")],
    }
    state = reference_state(worked_example_tables(), params)
    assert state.score(state.users[20], 3) == 2.571429
    assert result.users_targeted == 2
    assert result.boxes_full == 1
    assert result.boxes_short == 1
    assert result.units_total == 6


def test_worked_example_without_stock_has_no_shortage():
    tables = worked_example_tables()
    del tables["stock"]
    result = reference_run(tables, D, D)
    assert result.shortage is None
    assert "stock" not in result.input_rows
    assert result.units_total == 5


def test_worked_example_input_types_are_normalised():
    """int32 ids, datetime64 dates, ndarray ingredients, tz-aware timestamps, Timestamp dates."""
    base = reference_run(worked_example_tables(), D, D)
    tables = worked_example_tables()
    for df in tables.values():
        for col in ("user_id", "snack_id", "rating", "quantity"):
            if col in df:
                df[col] = df[col].astype("int32")
    for name, col in [
        ("snacks", "launched_on"),
        ("snacks", "retired_on"),
        ("users", "next_delivery_on"),
        ("deliveries", "delivered_on"),
    ]:
        tables[name][col] = pd.to_datetime(tables[name][col])
    tables["snacks"]["ingredients"] = pd.Series(
        [None if v is None else np.array(v, dtype=object) for v in tables["snacks"]["ingredients"]],
        dtype=object,
    )
    tables["users"]["box_size"] = tables["users"]["box_size"].astype("float64")  # null -> NaN
    tables["ratings"]["rated_at"] = tables["ratings"]["rated_at"].dt.tz_localize("UTC")
    tables["requests"]["requested_at"] = (
        tables["requests"]["requested_at"].dt.tz_localize("UTC").dt.tz_convert("Asia/Tokyo")
    )
    tables["users"]["extra"] = "ignored"
    other = reference_run(tables, pd.Timestamp(D), np.datetime64(D.isoformat()))
    assert_same_result(base, other)


# --------------------------------------------------------------------------
# 2. jitter test vectors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "snack_id", "d", "expected"),
    [
        (1, 1, dt.date(2026, 12, 1), 0.7564211760476489),
        (123456789, 42, dt.date(2026, 12, 1), 0.10511997332800516),
        (987654321012, 300, dt.date(2027, 1, 15), 0.10719858741395072),
    ],
)
def test_jitter_vectors(user_id, snack_id, d, expected):
    assert reference_jitter(user_id, snack_id, d) == expected
    assert reference_jitter(np.int64(user_id), np.int32(snack_id), pd.Timestamp(d)) == expected


def test_jitter_range():
    for u in range(1, 30):
        for s in range(1, 30):
            j = reference_jitter(u, s, D)
            assert 0.0 <= j < 1.0


# --------------------------------------------------------------------------
# 3. hand-built cases
# --------------------------------------------------------------------------


def test_genre_cap_in_request_stage_and_short_box():
    # No ratings: C = 2.5, every prior and score is 2.5 -> ties broken by snack_id.
    lake = make_lake(
        snacks=[
            (1, "A", None, OLD, None),
            (2, "A", None, OLD, None),
            (3, "A", None, OLD, None),
            (4, "B", None, OLD, None),
            (5, "C", None, OLD, None),
            (6, "B", None, OLD, None),
        ],
        users=[(1, "active", D, 4)],
        requests=[
            (1, 1, "2026-11-26"),
            (1, 2, "2026-11-27"),
            (1, 4, "2026-11-28"),
            (1, 6, "2026-11-29"),
        ],
    )
    params = {"max_per_genre": 1, "max_requests": 3, "explore_slots": 0}
    result = reference_run(lake, D, D, params)
    # request (target 3): 1 (A), 2 skipped (A full), 4 (B), 6 skipped (B full) -> only 2.
    # preference (target 4): 1, 2, 3 (A full), 4, 5 (C) -> 3 in the box; 6 (B full).
    # explore/fallback: nothing left under the cap -> short.
    assert boxes(result) == {1: [(1, "request"), (4, "request"), (5, "preference")]}
    assert (result.boxes_full, result.boxes_short, result.units_total) == (0, 1, 3)

    # Cap of 2: the request stage reaches its target 3 with 1, 2, 4; preference skips 3
    # (A already holds 2) and adds 5.
    result = reference_run(lake, D, D, {**params, "max_per_genre": 2})
    assert boxes(result) == {1: [(1, "request"), (2, "request"), (4, "request"), (5, "preference")]}
    assert (result.boxes_full, result.boxes_short) == (1, 0)


def test_eligibility_rules_and_short_box():
    lake = make_lake(
        snacks=[
            (1, "X", ["nut", "milk"], OLD, None),  # avoided ingredient
            (2, "X", [], OLD, None),  # NG
            (3, "Y", None, OLD, None),  # latest rating 1
            (4, "Y", [], OLD, D),  # retired on d: not in lineup
            (5, "Z", [], D, None),  # launched on d: in lineup
            (6, "Z", [], D + days(1), None),  # not launched yet
            (7, "W", [], OLD, D + days(1)),  # delivered at d - 60: repeat window
            (8, "W", [], OLD, D + days(1)),  # delivered at d - 61 and on d: eligible
        ],
        users=[
            (1, "active", D, 5),
            (2, "paused", D, 5),
            (3, "active", D + days(1), 5),
            (4, "active", None, 5),
            (5, "cancelled", D, None),
        ],
        ratings=[
            (1, 3, 4, "2026-10-01 10:00"),
            (1, 3, 1, "2026-10-02 10:00"),
        ],
        deliveries=[(1, 7, D - days(60)), (1, 8, D - days(61)), (1, 8, D)],
        ng_snacks=[(1, 2)],
        avoid_ingredients=[(1, "nut")],
    )
    state = reference_state(lake)
    assert state.eligible_snacks(state.users[1], D) == [5, 8]
    result = reference_run(lake, D, D)
    # C = 1.0 -> prior(5) = prior(8) = 1.0, score 1.0 each -> by snack_id.
    assert boxes(result) == {1: [(5, "preference"), (8, "preference")]}
    assert (result.users_targeted, result.boxes_full, result.boxes_short) == (1, 0, 1)

    # The range [d, d+1] also targets user 3 (its own date d+1).
    result = reference_run(lake, D, D + days(1))
    assert result.users_targeted == 2
    assert sorted(set(result.assignments["user_id"])) == [1, 3]
    assert set(result.assignments.loc[result.assignments.user_id == 3, "delivery_on"]) == {
        D + days(1)
    }


def test_explore_stage_with_new_bonus():
    lake = make_lake(
        snacks=[
            (1, "g1", None, OLD, None),  # rated by the user -> not novel
            (2, "g2", None, OLD, None),  # delivered after d -> not novel (but eligible)
            (3, "g3", None, OLD, None),
            (4, "g4", None, D - days(5), None),  # new
            (5, "g5", None, D - days(28), None),  # d - new_days: not new
            (6, "g6", None, D - days(27), None),  # new
            (7, "g7", None, D, None),  # new (launched on d)
        ],
        users=[(1, "active", D, 6)],
        ratings=[(1, 1, 3, "2026-10-01")],
        deliveries=[(1, 2, D + days(10))],
    )
    params = {"explore_jitter": 0.0, "max_requests": 0, "explore_slots": 6}
    state = reference_state(lake, params)
    user = state.users[1]
    # C = 3; prior(1) = (3 + 60) / 21 = 3.0, all others 60 / 20 = 3.0
    assert state.C == 3.0
    assert [state.prior(s) for s in range(1, 8)] == [3.0] * 7
    keys = [state.explore_key(user, s, D) for s in range(1, 8)]
    assert keys == [3.0, 3.0, 3.0, 3.5, 3.0, 3.5, 3.5]
    novel = [state.novel(user, s) for s in range(1, 8)]
    assert novel == [False, False, True, True, True, True, True]
    # affinity(g1) = 3 - 3 = 0; own = 0.5
    assert state.score(user, 1) == 3.5
    assert state.score(user, 2) == 3.0

    result = reference_run(lake, D, D, params)
    # preference target 6 - 6 = 0: skipped; explore: new ones 4, 6, 7, then 3, 5;
    # fallback: best remaining score -> 1 (3.5) before 2 (3.0).
    assert boxes(result) == {
        1: [
            (4, "explore"),
            (6, "explore"),
            (7, "explore"),
            (3, "explore"),
            (5, "explore"),
            (1, "fallback"),
        ]
    }
    demand = result.demand.set_index("snack_id")
    assert demand.loc[4, "units_explore"] == 1
    assert demand.loc[1, "units_fallback"] == 1
    assert demand["units"].sum() == 6

    # With jitter on, the explore order is by prior + bonus + 0.5 * jitter, then snack_id.
    result = reference_run(lake, D, D, {"max_requests": 0, "explore_slots": 6})
    keys = {
        s: float(
            np.round(3.0 + (0.5 if s in (4, 6, 7) else 0.0) + 0.5 * reference_jitter(1, s, D), 6)
        )
        for s in (3, 4, 5, 6, 7)
    }
    expected = sorted(keys, key=lambda s: (-keys[s], s))
    assert [s for s, stage in boxes(result)[1] if stage == "explore"] == expected
    assert boxes(result)[1][-1] == (1, "fallback")


def test_request_window_boundaries_and_order():
    snacks = [(s, f"g{s}", None, OLD, None) for s in range(1, 7)]
    lake = make_lake(
        snacks=snacks,
        users=[(1, "active", D, 6)],
        requests=[
            (1, 1, "2026-09-02 00:00:00"),  # d - 90: counts
            (1, 2, "2026-09-01 23:59:59"),  # d - 91: does not count
            (1, 3, "2026-11-30 23:59:59"),  # d - 1: counts
            (1, 4, "2026-12-01 00:00:00"),  # d: does not count
            (1, 5, "2026-08-01 00:00:00"),  # outside...
            (1, 5, "2026-11-01 00:00:00"),  # ...earliest qualifying one is this
            (1, 6, "2026-10-01 00:00:00"),
            (1, 6, "2026-10-01 00:00:00"),  # identical duplicate
        ],
    )
    params = {"max_requests": 6, "explore_slots": 0}
    result = reference_run(lake, D, D, params)
    assert boxes(result) == {
        1: [
            (1, "request"),
            (6, "request"),
            (5, "request"),
            (3, "request"),
            (2, "preference"),
            (4, "preference"),
        ]
    }
    result = reference_run(lake, D, D, {**params, "max_requests": 2})
    assert boxes(result) == {
        1: [
            (1, "request"),
            (6, "request"),
            (2, "preference"),
            (3, "preference"),
            (4, "preference"),
            (5, "preference"),
        ]
    }
    # A shorter window (30 days: [2026-11-01, 2026-11-30]) keeps only 5 and 3.
    result = reference_run(lake, D, D, {**params, "request_window_days": 30})
    assert [s for s, stage in boxes(result)[1] if stage == "request"] == [5, 3]


def test_request_window_on_utc_date_of_tz_aware_timestamps():
    snacks = [(s, f"g{s}", None, OLD, None) for s in range(1, 5)]
    tokyo = [
        (1, 1, "2026-09-02 08:00:00"),  # = 2026-09-01 23:00Z: d - 91, out
        (1, 2, "2026-09-02 09:00:00"),  # = 2026-09-02 00:00Z: d - 90, in
        (1, 3, "2026-12-01 08:59:59"),  # = 2026-11-30 23:59:59Z: d - 1, in
        (1, 4, "2026-12-01 09:00:00"),  # = 2026-12-01 00:00Z: d, out
    ]
    lake = make_lake(
        snacks=snacks, users=[(1, "active", D, 4)], requests=tokyo, requested_at_tz="Asia/Tokyo"
    )
    params = {"max_requests": 4, "explore_slots": 0}
    result = reference_run(lake, D, D, params)
    assert boxes(result) == {
        1: [(2, "request"), (3, "request"), (1, "preference"), (4, "preference")]
    }
    utc = [
        (1, 1, "2026-09-01 23:00:00"),
        (1, 2, "2026-09-02 00:00:00"),
        (1, 3, "2026-11-30 23:59:59"),
        (1, 4, "2026-12-01 00:00:00"),
    ]
    naive = make_lake(snacks=snacks, users=[(1, "active", D, 4)], requests=utc)
    aware_utc = make_lake(
        snacks=snacks, users=[(1, "active", D, 4)], requests=utc, requested_at_tz="UTC"
    )
    assert_same_result(result, reference_run(naive, D, D, params))
    assert_same_result(result, reference_run(aware_utc, D, D, params))


def test_box_size_one():
    lake = make_lake(
        snacks=[
            (1, "g1", None, OLD, None),
            (2, "g2", None, OLD, None),
            (3, "g3", None, OLD, None),
            (4, "g4", None, OLD, None),
            (5, "g5", None, D - days(1), None),  # new
        ],
        users=[
            (1, "active", D, 1),  # has requests
            (2, "active", D, 1),  # nothing: preference target 1 - 2 < 0 -> explore
            (3, "active", D, None),  # default_box_size = 1 below
        ],
        requests=[(1, 3, "2026-11-01"), (1, 4, "2026-10-01")],
        deliveries=[(3, 5, D - days(100))],  # 5 not novel for 3, not in the repeat window
    )
    params = {"explore_jitter": 0.0, "default_box_size": 1}
    result = reference_run(lake, D, D, params)
    assert boxes(result) == {
        1: [(4, "request")],  # min(2, 1) = 1 request: the earliest one
        2: [(5, "explore")],  # new bonus: 3.0 vs 2.5
        3: [(1, "explore")],  # 5 not novel; ties at 2.5 -> smallest id
    }
    assert (result.users_targeted, result.boxes_full, result.boxes_short) == (3, 3, 0)

    # With explore_slots = 0 the preference stage fills the single slot instead.
    result = reference_run(lake, D, D, {**params, "explore_slots": 0})
    assert boxes(result) == {1: [(4, "request")], 2: [(1, "preference")], 3: [(1, "preference")]}


def _with_orphans(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    t = {k: v.copy() for k, v in tables.items()}

    def add(name, rows):
        extra = pd.DataFrame(rows, columns=t[name].columns).astype(t[name].dtypes.to_dict())
        t[name] = pd.concat([t[name], extra], ignore_index=True)

    ts = pd.Timestamp("2026-11-01")
    # unknown user 99 / unknown snack 77; one row duplicated (each raw row counts)
    add(
        "ratings",
        [
            (99, 1, 1, ts),
            (99, 1, 1, ts),
            (10, 77, 4, ts),
            (99, 77, 4, ts),
            (20, 2, 1, ts),  # not an orphan: makes 2 ineligible for 20
        ],
    )
    add("deliveries", [(10, 77, D - days(1)), (99, 4, D - days(1))])
    add("ng_snacks", [(99, 1), (10, 77)])
    add("avoid_ingredients", [(99, "milk")])
    add("genre_prefs", [(99, "choco"), (10, "no such genre")])  # the second is no orphan
    add("requests", [(10, 77, ts), (99, 1, ts), (99, 1, ts)])
    return t


def test_orphans_are_counted_and_ignored():
    tables = _with_orphans(worked_example_tables())
    result = reference_run(tables, D, D)
    assert result.orphan_rows == {
        "ratings": 4,
        "deliveries": 2,
        "ng_snacks": 2,
        "avoid_ingredients": 1,
        "genre_prefs": 1,
        "requests": 3,
    }
    assert result.input_rows["ratings"] == 12
    assert result.input_rows["genre_prefs"] == 4
    assert result.input_rows["stock"] == 3

    state = reference_state(tables)
    # only the non-orphan (20, 2, 1) joins the latest ratings: C = (13 + 1) / 6
    assert state.C == 14 / 6
    assert state.rating_counts[1] == (2, 6)  # the orphan ratings of 1 by user 99 are ignored
    assert 77 not in state.rating_counts
    # user 20 now dislikes 2: box [1 preference] only
    assert boxes(result)[20] == [(1, "preference")]


def test_orphans_only_change_nothing():
    base = reference_run(worked_example_tables(), D, D)
    tables = _with_orphans(worked_example_tables())
    tables["ratings"] = tables["ratings"][
        ~((tables["ratings"].user_id == 20) & (tables["ratings"].snack_id == 2))
    ]
    result = reference_run(tables, D, D)
    assert_same_result(base, result, counts_too=False)
    assert sum(result.orphan_rows.values()) == 4 + 2 + 2 + 1 + 1 + 3


def test_identical_duplicates_change_nothing_but_input_counts():
    base_tables = _with_orphans(worked_example_tables())
    base = reference_run(base_tables, D, D)
    doubled = {
        name: pd.concat([df, df], ignore_index=True) for name, df in base_tables.items()
    }
    result = reference_run(doubled, D, D)
    assert_same_result(base, result, counts_too=False)
    assert result.input_rows == {k: 2 * v for k, v in base.input_rows.items()}
    assert result.orphan_rows == {k: 2 * v for k, v in base.orphan_rows.items()}


def test_missing_user_keyed_tables_are_empty():
    tables = worked_example_tables()
    minimal = {"snacks": tables["snacks"], "users": tables["users"]}
    result = reference_run(minimal, D, D, {"explore_jitter": 0.0})
    # no ratings: C = 2.5, every score 2.5; user 10 (K=3, nothing NG now): preference
    # target 1 -> 1; explore: 4 is new (3.0 beats 2.5), then 2 (smallest id at 2.5)
    assert boxes(result)[10] == [(1, "preference"), (4, "explore"), (2, "explore")]
    assert result.shortage is None
    assert result.orphan_rows == dict.fromkeys(result.orphan_rows, 0)
    assert result.input_rows["ratings"] == 0


def test_stock_for_unknown_snack_ignored_and_missing_row_is_zero():
    tables = worked_example_tables()
    tables["stock"] = pd.DataFrame(
        {
            "snack_id": pd.Series([99, 4, 4], dtype="int64"),
            "quantity": pd.Series([50, 3, 3], dtype="int64"),
        }
    )
    result = reference_run(tables, D, D)
    shortage = result.shortage.set_index("snack_id")
    assert shortage["stock"].to_dict() == {1: 0, 2: 0, 3: 0, 4: 3}
    assert shortage["shortage"].to_dict() == {1: 2, 2: 1, 3: 1, 4: 0}


def test_date_range_without_targets_is_empty():
    result = reference_run(worked_example_tables(), D + days(1), D + days(5))
    assert result.users_targeted == 0
    assert result.units_total == 0
    assert result.assignments.empty and list(result.assignments.columns) == [
        "delivery_on",
        "user_id",
        "slot",
        "snack_id",
        "stage",
    ]
    assert result.demand.empty
    assert result.shortage is not None and result.shortage.empty


def test_unknown_parameter_is_rejected():
    with pytest.raises(ValueError, match="no_such_param"):
        reference_run(worked_example_tables(), D, D, {"no_such_param": 1})


# --------------------------------------------------------------------------
# 4. invariants on small random lakes (self-consistency of the reference)
# --------------------------------------------------------------------------


def _random_lake(rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    genres = ["a", "b", "c"]
    ingredients = ["milk", "nut", "egg"]
    n_snacks = int(rng.integers(1, 12))
    snacks = []
    for s in range(1, n_snacks + 1):
        launched = D + days(int(rng.integers(-60, 3)))
        retired = None if rng.random() < 0.7 else D + days(int(rng.integers(-3, 5)))
        ingr = None if rng.random() < 0.3 else list(rng.choice(ingredients, rng.integers(0, 3)))
        snacks.append((s, genres[int(rng.integers(0, 3))], ingr, launched, retired))
    statuses = ["active", "active", "active", "paused", "cancelled"]
    users = [
        (
            u,
            statuses[int(rng.integers(0, 5))],
            None if rng.random() < 0.1 else D + days(int(rng.integers(0, 3))),
            None if rng.random() < 0.3 else int(rng.integers(1, 7)),
        )
        for u in range(1, int(rng.integers(1, 6)) + 1)
    ]
    n_users = len(users)

    def uid():
        return int(rng.integers(1, n_users + 2))  # sometimes an orphan user

    def sid():
        return int(rng.integers(1, n_snacks + 2))  # sometimes an orphan snack

    def stamp():
        return str(pd.Timestamp(D) + pd.Timedelta(hours=int(rng.integers(-24 * 100, 24 * 3))))

    return make_lake(
        snacks=snacks,
        users=users,
        ratings=[
            (uid(), sid(), int(rng.integers(1, 5)), stamp()) for _ in range(rng.integers(0, 15))
        ],
        deliveries=[
            (uid(), sid(), D + days(int(rng.integers(-80, 5)))) for _ in range(rng.integers(0, 10))
        ],
        ng_snacks=[(uid(), sid()) for _ in range(rng.integers(0, 4))],
        avoid_ingredients=[
            (uid(), str(rng.choice(ingredients))) for _ in range(rng.integers(0, 3))
        ],
        genre_prefs=[(uid(), str(rng.choice(genres))) for _ in range(rng.integers(0, 4))],
        requests=[(uid(), sid(), stamp()) for _ in range(rng.integers(0, 10))],
        stock=[(sid(), int(rng.integers(0, 4))) for _ in range(rng.integers(0, 4))],
    )


def test_random_lakes_invariants():
    rng = np.random.default_rng(20261201)
    for _ in range(60):
        lake = _random_lake(rng)
        # stock rows must be unique per snack_id
        lake["stock"] = lake["stock"].drop_duplicates("snack_id")
        params = {
            "max_per_genre": int(rng.integers(0, 4)),
            "max_requests": int(rng.integers(0, 4)),
            "explore_slots": int(rng.integers(0, 4)),
        }
        result = reference_run(lake, D, D + days(2), params)
        state = reference_state(lake, params)
        a = result.assignments
        assert result.units_total == len(a) == result.demand["units"].sum()
        stage_cols = ["units_request", "units_preference", "units_explore", "units_fallback"]
        assert (result.demand[stage_cols].sum(axis=1) == result.demand["units"]).all()
        assert result.boxes_full + result.boxes_short == result.users_targeted
        by_user = boxes(result)
        short = 0
        for user in state.users.values():
            if not user.is_target(D, D + days(2)):
                assert user.user_id not in by_user
                continue
            box = by_user.get(user.user_id, [])
            k = user.box_k(8)
            d = user.next_delivery_on
            assert len(box) <= k
            short += len(box) < k
            ids = [s for s, _ in box]
            assert len(set(ids)) == len(ids)
            for s, stage in box:
                assert state.eligible(user, s, d)
                if stage == "explore":
                    assert state.novel(user, s)
                if stage == "request":
                    assert s in state.request_order(user, d)
            genres = [state.snacks[s].genre for s in ids]
            assert all(genres.count(g) <= params["max_per_genre"] for g in genres)
            stages = [stage for _, stage in box]
            order = {st: i for i, st in enumerate(["request", "preference", "explore", "fallback"])}
            assert stages == sorted(stages, key=order.__getitem__)
        assert short == result.boxes_short

        doubled = {name: pd.concat([df, df], ignore_index=True) for name, df in lake.items()}
        assert_same_result(result, reference_run(doubled, D, D + days(2), params), counts_too=False)
