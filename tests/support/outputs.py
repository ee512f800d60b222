"""Reading a run's outputs back in tests."""

from __future__ import annotations

import datetime as dt
import os

import pandas as pd

#: The date of the SPEC §5 worked example.
WORKED_DATE = dt.date(2026, 12, 1)


def read_output(out: str) -> dict[str, pd.DataFrame]:
    """Read a run's Parquet outputs back, sorted for comparison."""
    got = {}
    a = pd.read_parquet(os.path.join(out, "assignments"))
    got["assignments"] = a.sort_values(["user_id", "slot"]).reset_index(drop=True)
    got["demand"] = pd.read_parquet(os.path.join(out, "demand")).sort_values(
        ["delivery_on", "snack_id"]).reset_index(drop=True)
    if os.path.exists(os.path.join(out, "shortage")):
        got["shortage"] = pd.read_parquet(os.path.join(out, "shortage"))
    return got
