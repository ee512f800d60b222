"""Shared fixtures: a quiet Dask, the SPEC §5 lake, helpers to run and read outputs."""

from __future__ import annotations

import datetime as dt
import os
import sys

import pandas as pd
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from lakes import write_tables  # noqa: E402
from services import mariadb_server, mariadb_url, moto_server, s3  # noqa: E402,F401
from reference import worked_example_tables  # noqa: E402

WORKED_DATE = dt.date(2026, 12, 1)


@pytest.fixture
def worked_lake(tmp_path):
    """The SPEC §5 example written as a plain lake directory."""
    return write_tables(worked_example_tables(), str(tmp_path / "lake"))


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
