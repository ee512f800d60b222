"""The run summary is assembled by a pure function: every SPEC §4 key, from counts alone."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from preassign import Params
from preassign.core.contract import InvalidValues
from preassign.core.partition import PartitionStats
from preassign.pipeline import RunConfig
from preassign.summary import build_summary, count_invalid, run_key

D = dt.date(2026, 12, 1)
SPEC_KEYS = {"date_from", "date_to", "parameters", "users_targeted", "boxes_full", "boxes_short",
             "units_total", "input_rows", "orphan_rows"}


def _stats() -> PartitionStats:
    return PartitionStats(
        input_rows={"users": 3, "ratings": 7, "deliveries": 2},
        orphan_rows={"ratings": 1},
        rating_sum=np.array([6, 4]), rating_count=np.array([2, 1]),
        users_targeted=2, targeted_by_day={20788: 2})


def test_build_summary_counts_boxes_units_rows_and_keys():
    config = RunConfig(lake="lake", date_from=D, date_to=D, out="out",
                       params=Params(max_requests=1))
    demand = pd.DataFrame({"delivery_on": [20788, 20788], "snack_id": [1, 2], "units": [2, 3]})
    shortage = pd.DataFrame({"snack_id": [1, 2], "units": [2, 3], "stock": [5, 1],
                             "shortage": [0, 2]})
    problems = [InvalidValues("ratings", "rating", "have a rating outside 1-4", 2, "rating=9")]
    summary = build_summary(config, _stats(), {"snacks": 4, "stock": 2}, problems, demand,
                            shortage, {20788: 1}, {"url": "lake", "layout": "shuffled",
                                                    "partitions": 1}, {"users": "abc"})
    assert SPEC_KEYS <= set(summary)
    assert summary["parameters"]["max_requests"] == 1
    assert (summary["boxes_full"], summary["boxes_short"], summary["units_total"]) == (1, 1, 5)
    assert summary["boxes_by_date"] == {"2026-12-01": {"full": 1, "short": 1}}
    assert summary["input_rows"] == {"snacks": 4, "users": 3, "ratings": 7, "deliveries": 2,
                                     "stock": 2}
    assert summary["orphan_rows"]["ratings"] == 1 and summary["orphan_rows"]["requests"] == 0
    assert summary["invalid_rows"] == {"ratings": 2} == count_invalid(problems)
    assert summary["snacks_short"] == 1 and summary["snacks_in_demand"] == 2
    assert summary["units_short"] == int(shortage["shortage"].sum())
    assert summary["run_key"] == run_key({"users": "abc"}, config)


def test_run_key_changes_with_inputs_dates_and_parameters():
    a = RunConfig(lake="l", date_from=D, date_to=D, out="o")
    b = RunConfig(lake="l", date_from=D, date_to=D, out="o", params=Params(explore_slots=0))
    c = RunConfig(lake="l", date_from=D, date_to=D + dt.timedelta(days=1), out="o")
    keys = {run_key({"t": "1"}, a), run_key({"t": "2"}, a), run_key({"t": "1"}, b),
            run_key({"t": "1"}, c)}
    assert len(keys) == 4
    assert run_key({"t": "1"}, a) == run_key({"t": "1"}, RunConfig(lake="x", date_from=D,
                                                                   date_to=D, out="y"))
