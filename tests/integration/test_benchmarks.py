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
from tests.support.services import find_binary  # noqa: E402

CLASSIC = ["preassign", "floor", "duckdb", "polars", "reference"]
SESSION = ["warm", "stock_aware", "partition", "shuffled", "shuffled_files"]  # largest only
HAS_MARIADB = find_binary("mariadbd") is not None


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--cache", str(tmp / "cache"),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=400,
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
                "fargate", "checks", "duckdb_check", "polars_check", "config_choice", "command",
                "code", "scheduler_overhead", "partitions", "extract_info", "load"):
        assert key in report, key
    assert len(report["code"]["sha256"]) == 64  # the code under test was frozen and hashed
    assert report["settings"]["sizes"] == [2000, 4000]
    assert report["settings"]["repeats"] == 1
    assert report["machine"]["nproc"] >= 1
    expected = {(2000, p) for p in CLASSIC} | {(4000, p) for p in CLASSIC + SESSION}
    expected |= {(4000, p) for p in ("extract_select", "extract", "run_extract")}
    assert {(r["users"], r["peer"]) for r in report["results"]} == expected
    for r in report["results"]:
        if r["peer"].endswith("extract") or r["peer"] == "extract_select":
            if not HAS_MARIADB:
                assert r["status"] == "skipped"
                continue
        assert r["status"] == "ok", r
        assert len(r["runs"]) == 1
        run = r["runs"][0]
        assert run["returncode"] == 0
        assert run["peak_rss_max_bytes"] > 0
        assert run["peak_rss_tree_bytes"] >= run["peak_rss_max_bytes"] * 0.5
        assert run["cpu_seconds"] > 0 and run["other_cpu_seconds"] >= 0
        assert set(r["wall_seconds"]) == {"median", "min", "max", "n"}
        assert r["wall_seconds"]["min"] <= r["wall_seconds"]["median"] <= r["wall_seconds"]["max"]
        assert r["time"]["median"] > 0 and r["time"]["kind"]
        assert r["users_per_second"] > 0
        assert r["peak_rss_worker_bytes"] > 0
    by = {(r["users"], r["peer"]): r for r in report["results"]}
    pa = [r for r in report["results"] if r["peer"] == "preassign"]
    assert all({"scan", "assign", "total"} <= set(r["stage_seconds"]) for r in pa)
    assert all(r["runs"][0]["processes"] >= 2 for r in pa)  # the client and its workers
    # the warm session re-ran in-process: max_requests=1, then the defaults
    warm = by[(4000, "warm")]
    assert warm["time"]["kind"] == "in-process re-run" and warm["time"]["n"] == 2
    assert [x["max_requests"] for x in warm["runs"][0]["reruns"]] == [1, 2]
    assert warm["time"]["median"] < warm["wall_seconds"]["median"]
    # the stock-aware run ran on ~90 % stock, in rounds
    stock = by[(4000, "stock_aware")]
    assert 0.8 < stock["variant"]["stock_over_units"] <= 0.9
    assert stock["rounds"] >= 2 and stock["units_total"] < stock["units_unconstrained"]
    # the shuffled layout was shuffled (one file per table, no manifest)
    shuffled = by[(4000, "shuffled")]
    assert shuffled["layout"] == "shuffled"
    assert all(f.endswith("part.0.parquet") or f.startswith(("snacks/", "stock/"))
               for f in shuffled["copy"]["files"])
    assert by[(4000, "shuffled_files")]["layout"] == "shuffled"
    for p in ("warm", "shuffled", "shuffled_files"):
        assert by[(4000, p)]["units_match"] is True, p
    assert by[(4000, "partition")]["partition"]["users"] == 4000
    if HAS_MARIADB:
        for p in ("extract_select", "extract"):
            assert by[(4000, p)]["rows_check"]["matched"] is True
        assert "extract" in by[(4000, "run_extract")]["stage_seconds"]
        assert report["extract_info"]["sizes"]["4000"]["replicate"] == 2
    assert report["scheduler_overhead"]["status"] == "ok"
    assert 0 < report["scheduler_overhead"]["inner_seconds"] < 1
    assert [r["users"] for r in report["ratios"]] == [2000, 4000]
    for r in report["ratios"]:
        for k in ("preassign_over_floor", "duckdb_over_preassign", "polars_over_preassign",
                  "reference_over_preassign_per_user"):
            assert r[k] is not None and r[k] > 0, k
    two, four = report["ratios"]
    for k in ("warm_over_floor", "preassign_over_warm", "stock_aware_over_preassign",
              "shuffled_over_preassign", "shuffled_worker_peak_over_preassign",
              "shuffled_files_over_preassign"):
        assert two[k] is None and four[k] > 0, k
    if HAS_MARIADB:
        assert four["extract_over_select"] > 0 and four["run_extract_over_extract"] > 0
    assert {t["name"] for t in report["targets"]} == {
        "floor", "duckdb", "polars", "stock_aware", "warm", "extract_ratio", "extract_1m",
        "shuffled_memory", "reference", "exponent", "memory_flat", "memory_2m"}
    assert all(t["met"] is None for t in report["targets"])  # nothing at 1M/2M in quick mode
    assert report["scaling"]["exponent"] is None  # no size >= 250k
    assert report["scaling"]["exponent_all_sizes"] is not None
    assert [r["users"] for r in report["partitions"]] == [2000, 4000]
    assert "direct_seconds" in report["partitions"][1]
    assert [r["workers"] for r in report["fargate"]["rows"]] == [8, 16, 32]
    assert all(r["cost_usd"] > 0 and r["wall_seconds"] > 0 for r in report["fargate"]["rows"])
    assert report["fargate"]["assumptions"]["price_per_vcpu_hour"] == 0.04048
    assert report["fargate"]["defaults"]["worker_cpu"] == 1024
    assert report["load"]["samples"] >= 2
    # the Markdown: printed and written, with every table
    assert md.strip() in stdout
    for heading in ("### 2,000 users", "### 4,000 users", "| peer | time is |", "### Ratios",
                    "cold / floor", "Code: git", "### Scaling", "### Targets",
                    "### Scheduler overhead", "users on Fargate", "Load average at start"):
        assert heading in md, heading
    assert md.count("| 2,000 |") >= 2 and md.count("| 4,000 |") >= 2


def test_peers_and_reference_match_the_pipeline(quick_report):
    report, md, _, _ = quick_report
    for peer in ("duckdb", "polars"):
        check = report["checks"][peer]
        assert report[f"{peer}_check"] == check
        assert check["users"] == 2000
        assert check["matched"] is True, check
        assert check["mismatched_rows"] == 0 and check["preassign_rows"] == check[
            f"{peer}_rows"] > 0
        assert f"{peer} on 2,000 users: identical assignments" in md
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
