"""Extraction and runs through an S3 endpoint (moto), reached only via ``storage_options``."""

from __future__ import annotations

import datetime as dt

import pytest

from preassign.extract import extract_lake
from preassign.lake import POINTER, open_lake
from preassign.pipeline import RunConfig, run_preassignment
from preassign.source import create_engine_from_url, load_synthetic
from preassign.synth import SynthConfig, write_lake
from tests.support.services import (
    append_source_changes,
    assert_lakes_equal,
    assert_runs_equal,
    read_lake_tables,
    read_run_outputs,
)

pytestmark = pytest.mark.s3

CFG = SynthConfig(users=500, snacks=60, users_per_partition=200, seed=21)
DATES = (dt.date(2026, 12, 1), dt.date(2026, 12, 5))


def _run(lake: str, out: str, storage_options: dict | None = None) -> dict:
    run_preassignment(RunConfig(lake=lake, date_from=DATES[0], date_to=DATES[1], out=out,
                                storage_options=storage_options or {}))
    return read_run_outputs(out, storage_options)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('s3-source')}/source.db"
    load_synthetic(create_engine_from_url(url), CFG)
    return url


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3-reference")
    write_lake(CFG, str(root / "lake"))
    return read_lake_tables(str(root / "lake")), _run(str(root / "lake"), str(root / "out"))


def _versions(s3, prefix: str) -> list[str]:
    names = [p.rsplit("/", 1)[-1] for p in s3.fs.ls(s3.url(prefix), detail=False)]
    return sorted(n for n in names if n.startswith("v-"))


def test_extract_and_run_on_s3(s3, source, local_reference):
    tables, reference_run = local_reference
    lake, out = s3.url("lakes/snacks"), s3.url("runs/2026-12-01")
    summary = extract_lake(source, lake, users_per_partition=200,
                           storage_options=s3.storage_options)
    assert summary["partitions"] == 3
    assert s3.fs.cat_file(s3.url("lakes/snacks", POINTER)).decode().strip() == summary["version"]
    opened = open_lake(lake, s3.storage_options)
    assert opened.protocol == "s3" and opened.fast_path_files() is not None

    assert_lakes_equal(read_lake_tables(lake, s3.storage_options), tables)
    assert_runs_equal(_run(lake, out, s3.storage_options), reference_run)
    assert s3.fs.isfile(s3.url("runs/2026-12-01/summary.json"))


def test_incremental_refresh_and_pruning_on_s3(s3, tmp_path):
    url = f"sqlite:///{tmp_path}/source.db"
    load_synthetic(create_engine_from_url(url), SynthConfig(users=200, snacks=40,
                                                            users_per_partition=80, seed=2))
    lake, so = s3.url("lake"), s3.storage_options
    first = extract_lake(url, lake, users_per_partition=80, storage_options=so)
    append_source_changes(url, 1)
    second = extract_lake(url, lake, incremental=True, storage_options=so)
    assert second["rows_read"]["ratings"] == 43 and second["bounds"] == first["bounds"]
    append_source_changes(url, 2)
    third = extract_lake(url, lake, incremental=True, storage_options=so)
    assert third["removed"] == [first["version"]]
    assert _versions(s3, "lake") == sorted([second["version"], third["version"]])

    full = s3.url("full")
    extract_lake(url, full, users_per_partition=80, storage_options=so)
    assert_lakes_equal(read_lake_tables(lake, so), read_lake_tables(full, so))
    assert_runs_equal(_run(lake, s3.url("out-a"), so), _run(full, s3.url("out-b"), so))
