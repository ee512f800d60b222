"""Publishing: atomic, refuses to overwrite, one writer at a time, idempotent re-runs."""

from __future__ import annotations

import json
import os

import dask
import pytest

from preassign import Params
from preassign.lake import Output, OutputExistsError, OutputLockedError
from preassign.pipeline import RunConfig, run_preassignment
from tests.support.outputs import WORKED_DATE, read_output


def _run(lake, out, **kw):
    with dask.config.set(scheduler="sync"):
        return run_preassignment(RunConfig(lake=lake, date_from=WORKED_DATE, date_to=WORKED_DATE,
                                           out=out, **kw))


def test_rerun_is_idempotent_and_recognisable(worked_lake, tmp_path):
    a = _run(worked_lake, str(tmp_path / "a"))
    b = _run(worked_lake, str(tmp_path / "b"))
    ra, rb = read_output(str(tmp_path / "a")), read_output(str(tmp_path / "b"))
    for name in ra:
        assert ra[name].equals(rb[name])
    assert a.summary["run_key"] == b.summary["run_key"]
    assert a.summary["input_fingerprint"] == b.summary["input_fingerprint"]
    c = _run(worked_lake, str(tmp_path / "c"), params=Params(max_requests=1))
    assert c.summary["run_key"] != a.summary["run_key"]
    # touching an input changes its fingerprint
    ratings = os.path.join(worked_lake, "ratings", "part-0.parquet")
    with open(ratings, "ab") as f:
        f.write(b"")
    os.utime(ratings, (1, 1))
    assert _run(worked_lake, str(tmp_path / "d")).summary["input_fingerprint"]["ratings"] != \
        a.summary["input_fingerprint"]["ratings"]


def test_complete_output_is_not_overwritten_unless_asked(worked_lake, tmp_path):
    out = str(tmp_path / "out")
    first = _run(worked_lake, out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _run(worked_lake, out)
    assert json.load(open(os.path.join(out, "summary.json")))["run_id"] == first.summary["run_id"]
    second = _run(worked_lake, out, overwrite=True)
    assert json.load(open(os.path.join(out, "summary.json")))["run_id"] == second.summary["run_id"]
    assert sorted(p for p in os.listdir(tmp_path) if p != "lake") == [".out.lock", "out"]


def test_two_runs_cannot_publish_to_the_same_output(worked_lake, tmp_path):
    out = str(tmp_path / "out")
    holder = Output(out)
    holder.acquire()
    try:
        with pytest.raises(OutputLockedError, match="another run is writing"):
            _run(worked_lake, out)
        assert not os.path.exists(out)
    finally:
        holder.release()
    _run(worked_lake, out)  # free again once the first run is done


def test_failure_while_publishing_keeps_the_previous_output(worked_lake, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    first = _run(worked_lake, out)

    real_rename = os.rename
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old output moved aside; fail moving the new one in
            raise OSError("disk went away")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(OSError, match="disk went away"):
        _run(worked_lake, out, overwrite=True)
    monkeypatch.setattr(os, "rename", real_rename)
    assert json.load(open(os.path.join(out, "summary.json")))["run_id"] == first.summary["run_id"]
    assert not [p for p in os.listdir(tmp_path) if "staging" in p or ".old-" in p]
