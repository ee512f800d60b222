"""The benchmark harness (benchmarks/run.py) in --quick mode, on tiny lakes.

Only the structure of the report and the correctness checks are asserted, never timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

from benchmarks import run as bench  # noqa: E402

PEERS = ["preassign", "floor", "duckdb", "reference"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--cache", str(tmp / "cache"),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jsons = sorted(out.glob("*.json"))
    mds = sorted(out.glob("*.md"))
    assert len(jsons) == 1 and len(mds) == 1
    assert [p for p in out.iterdir() if p.is_dir()] == []  # work dir removed
    return json.loads(jsons[0].read_text()), mds[0].read_text(), proc.stdout, tmp


def test_quick_report_structure(quick_report):
    report, md, stdout, _ = quick_report
    for key in ("machine", "settings", "lakes", "results", "ratios", "scaling", "targets",
                "fargate", "duckdb_check", "config_choice", "command", "code"):
        assert key in report, key
    assert len(report["code"]["sha256"]) == 64  # the code under test was frozen and hashed
    assert report["settings"]["sizes"] == [2000, 4000]
    assert report["settings"]["repeats"] == 1
    assert report["machine"]["nproc"] >= 1
    assert {(r["users"], r["peer"]) for r in report["results"]} == {
        (n, p) for n in (2000, 4000) for p in PEERS}
    for r in report["results"]:
        assert r["status"] == "ok", r
        assert len(r["runs"]) == 1
        run = r["runs"][0]
        assert run["returncode"] == 0
        assert run["peak_rss_max_bytes"] > 0
        assert run["peak_rss_tree_bytes"] >= run["peak_rss_max_bytes"] * 0.5
        assert set(r["wall_seconds"]) == {"median", "min", "max"}
        assert r["wall_seconds"]["min"] <= r["wall_seconds"]["median"] <= r["wall_seconds"]["max"]
        assert r["users_per_second"] > 0
        assert r["peak_rss_worker_bytes"] > 0
    pa = [r for r in report["results"] if r["peer"] == "preassign"]
    assert all({"scan", "assign", "total"} <= set(r["stage_seconds"]) for r in pa)
    assert all(r["runs"][0]["processes"] >= 2 for r in pa)  # the client and its workers
    assert [r["users"] for r in report["ratios"]] == [2000, 4000]
    for r in report["ratios"]:
        for k in ("preassign_over_floor", "duckdb_over_preassign",
                  "reference_over_preassign_per_user"):
            assert r[k] is not None and r[k] > 0
    assert {t["name"] for t in report["targets"]} == {
        "floor", "duckdb", "reference", "exponent", "memory_flat", "memory_2m"}
    assert all(t["met"] is None for t in report["targets"])  # nothing at 1M/2M in quick mode
    assert report["scaling"]["exponent"] is None  # no size >= 500k
    assert report["scaling"]["exponent_all_sizes"] is not None
    assert [r["workers"] for r in report["fargate"]["rows"]] == [8, 16, 32]
    assert all(r["cost_usd"] > 0 and r["wall_seconds"] > 0 for r in report["fargate"]["rows"])
    assert report["fargate"]["assumptions"]["price_per_vcpu_hour"] == 0.04048
    # the Markdown: printed and written, with every table
    assert md.strip() in stdout
    for heading in ("| users | peer | runs | wall median (s) |", "preassign / floor", "Code: git",
                    "Scaling exponent", "Targets (issue 6)", "Fargate estimate"):
        assert heading in md
    assert md.count("| 2,000 |") >= 5 and md.count("| 4,000 |") >= 5


def test_duckdb_and_reference_match_the_pipeline(quick_report):
    report, md, _, _ = quick_report
    check = report["duckdb_check"]
    assert check["users"] == 2000
    assert check["matched"] is True, check
    assert check["mismatched_rows"] == 0 and check["preassign_rows"] == check["duckdb_rows"] > 0
    assert "identical assignments" in md
    for r in report["results"]:
        if r["peer"] == "reference":
            assert r["check"]["matched"] is True, r["check"]
            assert r["sample_users"] == 300


def test_lakes_are_cached(quick_report):
    report, _, _, tmp = quick_report
    for n in (2000, 4000):
        lake = bench.lake_path(tmp / "cache", n)
        assert bench.lake_is_cached(lake, n)
        assert not bench.lake_is_cached(lake, n + 1)
        assert report["lakes"][str(n)]["users_targeted"] > 0
    info = bench.ensure_lake(tmp / "cache", 2000, tmp / "logs")
    assert info["cached"] is True and info["synth_seconds"] is None


def test_fit_exponent():
    assert bench.fit_exponent([(1e5, 2.0), (2e5, 4.0), (4e5, 8.0)]) == pytest.approx(1.0)
    assert bench.fit_exponent([(1e5, 3.0), (1e6, 3.0)]) == pytest.approx(0.0)
    assert bench.fit_exponent([(1e5, 3.0)]) is None


def test_measure_sees_children_and_timeout(tmp_path):
    code = ("import subprocess, sys; "
            "p = subprocess.Popen([sys.executable, '-c', "
            "'b = bytearray(200 * 2**20); import time; time.sleep(1.0)']); p.wait()")
    m = bench.measure([sys.executable, "-c", code], log=tmp_path / "a.log", timeout=60,
                      poll=0.05)
    assert m.returncode == 0 and not m.timed_out
    assert m.processes >= 2
    assert m.peak_rss_worker_bytes >= 200 * 2**20
    m = bench.measure([sys.executable, "-c", "import time; time.sleep(30)"],
                      log=tmp_path / "b.log", timeout=0.5)
    assert m.timed_out and m.wall_seconds < 10
