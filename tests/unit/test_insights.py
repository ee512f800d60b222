"""Insights people act on: names, when stock stops covering boxes, call-outs with codes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from preassign.core.catalog import build_catalog
from preassign.core.contract import dedupe_keyed, normalize_table
from preassign.insights import (
    CALLOUT_CODES,
    callouts,
    shortage_details,
    snack_names,
    stock_timeline,
    with_names,
)
from tests.oracle.reference import worked_example_tables

D = 20788  # 2026-12-01


def _demand(rows):
    frame = pd.DataFrame(rows, columns=["delivery_on", "snack_id", "units"])
    for c in ("units_request", "units_preference", "units_explore", "units_fallback"):
        frame[c] = 0
    frame["units_preference"] = frame["units"]
    return frame


def test_runs_out_on_is_the_first_date_cumulative_demand_exceeds_stock():
    demand = _demand([(D, 1, 3), (D + 1, 1, 4), (D + 2, 1, 5), (D, 2, 1), (D + 3, 3, 2)])
    stock = pd.DataFrame({"snack_id": [1, 2], "quantity": [6, 5]})
    shortage = pd.DataFrame({"snack_id": [1, 2, 3], "units": [12, 1, 2], "stock": [6, 5, 0],
                             "shortage": [6, 0, 2]})
    got = shortage_details(shortage, demand, stock).set_index("snack_id")
    # snack 1: 3, 7 > 6 on the second day; the boxes of that day and after hold 4 + 5
    assert got.loc[1, "runs_out_on"] == dt.date(2026, 12, 2)
    assert got.loc[1, "boxes_affected"] == 9
    assert got.loc[2, "runs_out_on"] is None and got.loc[2, "boxes_affected"] == 0
    # snack 3 has no stock row at all: it runs out on its first date, and says so
    assert got.loc[3, "runs_out_on"] == dt.date(2026, 12, 4)
    assert not got.loc[3, "has_stock_row"] and got.loc[1, "has_stock_row"]


def test_stock_timeline_covers_earlier_dates_first_or_what_the_result_served():
    demand = _demand([(D, 1, 3), (D + 1, 1, 4), (D + 2, 1, 5)])
    on_hand = pd.Series({1: 6})
    t = stock_timeline(demand, on_hand, [1])
    assert t["cumulative_units"].tolist() == [3, 7, 12]
    assert t["covered_units"].tolist() == [3, 3, 0]
    served = _demand([(D, 1, 3), (D + 1, 1, 2)])
    t = stock_timeline(demand, on_hand, [1], covered=served)
    assert t["covered_units"].tolist() == [3, 2, 0]


def test_callouts_have_stable_codes_and_name_the_snacks():
    tables = worked_example_tables()
    snacks = normalize_table("snacks", tables["snacks"])[0]
    catalog = build_catalog(dedupe_keyed("snacks", snacks, "snack_id"))
    names = snack_names(catalog)
    demand = _demand([(D, 1, 2), (D, 2, 1), (D, 3, 1), (D, 4, 1)])
    demand.loc[demand["snack_id"] == 4, ["units_preference", "units_request"]] = [0, 1]
    stock = pd.DataFrame({"snack_id": [1, 3], "quantity": [1, 5]})
    shortage = pd.DataFrame({"snack_id": [1, 2, 3, 4], "units": [2, 1, 1, 1],
                             "stock": [1, 0, 5, 0], "shortage": [1, 1, 0, 1]})
    summary = {"date_from": "2026-12-01", "date_to": "2026-12-01", "boxes_short": 1,
               "orphan_rows": {"ratings": 2}, "invalid_rows": {}}
    found = callouts(summary, demand, names, catalog, stock, 28, shortage)
    codes = [c["code"] for c in found]
    assert codes == ["STOCK_ROW_MISSING", "NEW_SNACK_NO_STOCK", "SNACKS_SHORT", "BOXES_SHORT",
                     "ORPHAN_ROWS"]
    assert set(codes) <= set(CALLOUT_CODES)
    missing = found[0]
    assert missing["snacks"] == [2, 4] and "choco dark" in missing["message"]
    assert "stock feed incomplete?" in missing["message"]
    assert found[1]["snacks"] == [4]  # launched 2026-11-20: new on 2026-12-01
    many = _demand([(D, 9, 40)])
    many["units_preference"], many["units_explore"] = 0, 40
    one_stage = callouts(summary | {"boxes_short": 0, "orphan_rows": {}}, many, names, catalog,
                         None, 28)
    assert [c["code"] for c in one_stage] == ["DEMAND_ONE_STAGE"]
    assert "(#9, 100% explore)" in one_stage[0]["message"]


def test_with_names_puts_name_and_genre_after_the_id():
    names = pd.DataFrame({"snack_id": [1, 2], "name": ["<b>a</b>", "b"], "genre": ["x", "y"]})
    frame = pd.DataFrame({"snack_id": np.array([2, 1, 7]), "units": [1, 2, 3]})
    got = with_names(frame, names)
    assert got.columns.tolist() == ["snack_id", "name", "genre", "units"]
    assert got["name"].tolist()[:2] == ["b", "<b>a</b>"] and pd.isna(got["name"].iloc[2])


def test_a_long_call_out_names_five_snacks_and_counts_the_rest():
    from preassign.insights import _listed

    names = pd.DataFrame({"snack_id": list(range(1, 9)), "name": [f"snack {i}" for i in range(8)],
                          "genre": ["g"] * 8})
    text = _listed(list(range(1, 9)), names)
    assert text.startswith("snack 0 (#1), snack 1 (#2)") and text.endswith("and 3 more")
    assert "(#6)" not in text
