"""Operations: runs compared (diff, --compare-to), --fail-on-shortage, names in the outputs,
call-outs, and log lines a scheduler can read (run_id everywhere, key=value or JSON, usage
errors in the log file, honest timings)."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from click.testing import CliRunner

from preassign.cli import main
from preassign.diff import compare_runs
from tests.oracle.reference import worked_example_tables
from tests.support.lakes import write_tables


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The SPEC §5 lake and four runs of it: base, the same again, one --set changed,
    other dates; plus the stock-aware run."""
    root = tmp_path_factory.mktemp("ops")
    lake = write_tables(worked_example_tables(), str(root / "lake"))
    runner = CliRunner()
    common = ["--workers", "1", "--silent", "--loglevel", "WARNING"]
    made = {}
    for name, extra in {
        "base": ["--date", "2026-12-01"],
        "again": ["--date", "2026-12-01"],
        "one_set": ["--date", "2026-12-01", "--set", "max_requests=1", "--set",
                    "explore_slots=0", "--set", "repeat_window_days=59"],
        "dates": ["--date", "2026-11-30", "--until", "2026-12-02"],
        "stock": ["--date", "2026-12-01", "--stock-aware"],
    }.items():
        out = str(root / name)
        result = runner.invoke(main, ["run", "--lake", lake, "--out", out, *extra, *common])
        assert result.exit_code == 0, result.output
        made[name] = out
    return lake, made, root


def test_diff_of_equal_runs_says_nothing_changed(runs):
    _, made, _ = runs
    diff = compare_runs(made["base"], made["again"])
    assert diff.nothing_changed and diff.why == [] and diff.boxes_changed == 0
    result = CliRunner().invoke(main, ["diff", made["base"], made["again"], "--silent"])
    assert result.exit_code == 0, result.output
    assert "Nothing changed" in result.output and "same inputs, dates and parameters" in \
        result.output


def test_diff_with_one_set_changed_explains_the_change(runs, tmp_path):
    _, made, _ = runs
    diff = compare_runs(made["base"], made["one_set"])
    assert diff.why == ["parameter explore_slots: 2 -> 0", "parameter max_requests: 2 -> 1",
                        "parameter repeat_window_days: 60 -> 59"]
    # SPEC §5: user 10 -> [3, 1, 4], user 20 -> [2, 3, 1]: snack 3 gains a unit, box 20 changes
    snacks = diff.snacks.set_index("snack_id")
    assert snacks.loc[3, "units_before"] == 1 and snacks.loc[3, "units_after"] == 2
    assert diff.boxes_changed == 1 and diff.units_total == (5, 6)
    out = tmp_path / "diff"
    result = CliRunner().invoke(main, ["diff", made["base"], made["one_set"], "--out", str(out),
                                       "--silent"])
    assert result.exit_code == 0, result.output
    assert "parameter max_requests: 2 -> 1" in result.output and "Boxes changed: 1" in \
        result.output
    written = json.loads((out / "diff.json").read_text())
    assert written["boxes_changed"] == 1 and written["units_total"] == {"before": 5, "after": 6}
    assert pd.read_csv(out / "snacks.csv")["snack_id"].tolist() == [3]


def test_diff_over_different_dates(runs):
    _, made, _ = runs
    diff = compare_runs(made["base"], made["dates"])
    assert diff.why == ["dates: 2026-12-01..2026-12-01 -> 2026-11-30..2026-12-02"]
    assert diff.boxes_changed == 0 and diff.boxes_only_before == 0 and \
        diff.boxes_only_after == 0  # the same two users have their boxes on 2026-12-01
    kinds = compare_runs(made["base"], made["stock"])
    assert "kind of run: SPEC §3 (demand) -> stock-aware (SPEC §6)" in kinds.why
    assert kinds.boxes_changed == 2 and kinds.units_total == (5, 2)


def test_diff_refuses_what_is_not_a_run(runs, tmp_path):
    _, made, _ = runs
    result = CliRunner().invoke(main, ["diff", made["base"], str(tmp_path), "--silent"])
    assert result.exit_code == 1 and "not a complete run output" in result.output


def test_compare_to_adds_a_section_and_fail_on_shortage_exits_4(runs, tmp_path):
    lake, made, _ = runs
    out = str(tmp_path / "next")
    log = tmp_path / "run.log"
    result = CliRunner().invoke(main, [
        "run", "--lake", lake, "--date", "2026-12-01", "--out", out, "--workers", "1",
        "--silent", "--compare-to", made["one_set"], "--fail-on-shortage", "2",
        "--logfile", str(log)])
    assert result.exit_code == 4, result.output
    assert "3 units are short, more than --fail-on-shortage 2" in result.output
    summary = json.loads(open(os.path.join(out, "summary.json")).read())  # published anyway
    assert summary["compared_to"]["out"] == made["one_set"]
    assert "parameter max_requests: 1 -> 2" in summary["compared_to"]["why"]
    assert summary["compared_to"]["boxes_changed"] == 1
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "previous run" in html.lower()
    assert "event=shortage_over_limit" in log.read_text()
    ok = CliRunner().invoke(main, [
        "run", "--lake", lake, "--date", "2026-12-01", "--out", str(tmp_path / "ok"),
        "--workers", "1", "--silent", "--fail-on-shortage", "3"])
    assert ok.exit_code == 0, ok.output


def test_outputs_carry_names_call_outs_and_when_stock_runs_out(runs):
    _, made, _ = runs
    shortage = pd.read_parquet(os.path.join(made["base"], "shortage")).set_index("snack_id")
    assert shortage.loc[1, "name"] == "choco milk" and shortage.loc[4, "genre"] == "chips"
    assert shortage.loc[1, "runs_out_on"] == pd.Timestamp("2026-12-01").date()
    assert not shortage.loc[2, "has_stock_row"] and shortage.loc[1, "has_stock_row"]
    demand = pd.read_parquet(os.path.join(made["base"], "demand"))
    assert {"name", "genre"} <= set(demand.columns)
    res = pd.read_parquet(os.path.join(made["stock"], "reservations"))
    assert {"name", "genre"} <= set(res.columns)
    summary = json.loads(open(os.path.join(made["base"], "summary.json")).read())
    codes = [c["code"] for c in summary["callouts"]]
    assert codes[:3] == ["STOCK_ROW_MISSING", "NEW_SNACK_NO_STOCK", "SNACKS_SHORT"]
    assert os.path.exists(os.path.join(made["base"], "shortage.csv"))
    assert os.path.exists(os.path.join(made["stock"], "reservations.csv"))


def test_log_lines_carry_the_run_id_and_json_values_are_typed(runs, tmp_path):
    lake, _, _ = runs
    log = tmp_path / "run.jsonl"
    out = str(tmp_path / "out")
    result = CliRunner().invoke(main, [
        "run", "--lake", lake, "--date", "2026-12-01", "--out", out, "--workers", "1",
        "--silent", "--log-format", "json", "--logfile", str(log)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    run_id = json.loads(open(os.path.join(out, "summary.json")).read())["run_id"]
    assert lines and all(line["run_id"] == run_id for line in lines)
    stages = {line["stage"]: line["seconds"] for line in lines if line.get("event") ==
              "stage_done"}
    assert isinstance(stages["assign"], float)
    assert {"cluster_start", "read", "scan", "assign", "publish"} <= set(stages)
    done = next(line for line in lines if line.get("event") == "run_done")
    assert done["units_total"] == 5 and isinstance(done["users_targeted"], int)
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    seconds = summary["stage_seconds"]
    assert {"cluster_start", "read", "scan", "assign", "report", "publish", "total"} <= \
        set(seconds)
    assert seconds["total"] >= seconds["cluster_start"] + seconds["assign"]
    assert f"{seconds['total']:.1f} s" in result.output  # the printed time is the run's total


def test_key_value_lines_quote_values_and_usage_errors_reach_the_log_file(runs, tmp_path):
    lake, _, _ = runs
    log = tmp_path / "run.log"
    result = CliRunner().invoke(main, ["run", "--lake", lake, "--date", "2026-13-45", "--out",
                                       str(tmp_path / "o"), "--logfile", str(log)])
    assert result.exit_code == 2
    text = log.read_text()
    assert "event=failed kind=usage exit_code=2" in text and "2026-13-45" in text
    result = CliRunner().invoke(main, ["run", "--lake", lake, "--date", "2026-12-01", "--out",
                                       str(tmp_path / "o2"), "--workers", "1", "--silent",
                                       "--logfile", str(log)])
    assert result.exit_code == 0
    callout = [line for line in log.read_text().splitlines() if "event=callout" in line][0]
    assert 'message="' in callout and "code=STOCK_ROW_MISSING" in callout
