"""The command line: exit codes, messages, help."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from preassign.cli import main
from tests.oracle.reference import worked_example_tables
from tests.support.lakes import write_tables


@pytest.fixture
def runner():
    return CliRunner()


def _run_args(lake, out, *extra):
    return ["run", "--lake", lake, "--date", "2026-12-01", "--out", out, "--workers", "1",
            "--silent", "--loglevel", "WARNING", *extra]


def test_run_on_a_local_cluster_prints_demand_and_exits_0(runner, worked_lake, tmp_path):
    out = str(tmp_path / "out")
    result = runner.invoke(main, _run_args(worked_lake, out))
    assert result.exit_code == 0, result.output
    assert "2 users targeted, 1 boxes full, 1 short, 5 units" in result.output
    assert "Busiest snacks" in result.output and "Shortage: 3 snacks short" in result.output
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["cluster"]["workers"] == 1
    # a second run refuses to overwrite a complete output...
    again = runner.invoke(main, _run_args(worked_lake, out))
    assert again.exit_code == 1
    assert "already holds a complete run" in again.output and "--overwrite" in again.output
    # ...unless asked to, and then the parameters given are recorded
    again = runner.invoke(main, _run_args(worked_lake, out, "--overwrite", "--set", "max_requests=1",
                                          "--set", "explore_slots=0"))
    assert again.exit_code == 0, again.output
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["parameters"]["max_requests"] == 1


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--set", "max_request=1"], 2, "unknown rule parameter 'max_request'"),
        (["--set", "max_per_genre=0"], 2, "must be >= 1"),
        (["--set", "explore_slots"], 2, "expected NAME=VALUE"),
        (["--until", "2026-11-01"], 2, "is before --date"),
        (["--workers", "0"], 2, "--workers"),
        (["--storage-option", "secret=abc"], 2, "credential chain"),
        (["--adapt", "5:2"], 2, "adapt"),
    ],
    ids=["unknown-param", "bad-value", "no-equals", "until-before", "workers-0", "secret-option",
         "adapt-range"],
)
def test_bad_usage_exits_2(runner, worked_lake, tmp_path, extra, code, message):
    result = runner.invoke(main, _run_args(worked_lake, str(tmp_path / "out"), *extra))
    assert result.exit_code == code, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_bad_date_exits_2(runner, worked_lake, tmp_path):
    result = runner.invoke(main, ["run", "--lake", worked_lake, "--date", "12/01/2026", "--out",
                                  str(tmp_path / "o")])
    assert result.exit_code == 2 and "expected a date YYYY-MM-DD" in result.output


def test_bad_lake_exits_1(runner, tmp_path):
    result = runner.invoke(main, _run_args(str(tmp_path / "nowhere"), str(tmp_path / "out")))
    assert result.exit_code == 1
    assert "Error: lake" in result.output and "does not exist" in result.output


def test_invalid_values_exit_1_naming_the_problem(runner, tmp_path):
    tables = worked_example_tables()
    tables["users"].loc[0, "status"] = "frozen"
    lake = write_tables(tables, str(tmp_path / "lake"))
    result = runner.invoke(main, _run_args(lake, str(tmp_path / "out")))
    assert result.exit_code == 1, result.output
    assert "table 'users', column 'status': 1 row have a status outside" in result.output
    assert not (tmp_path / "out").exists()


def test_synth_then_run(runner, tmp_path):
    lake = str(tmp_path / "lake")
    result = runner.invoke(main, ["synth", "--out", lake, "--users", "500", "--date", "2026-12-01",
                                  "--users-per-partition", "200", "--workers", "1", "--silent",
                                  "--loglevel", "WARNING"])
    assert result.exit_code == 0, result.output
    assert os.path.exists(os.path.join(lake, "_lake.json"))
    assert sorted(os.listdir(os.path.join(lake, "ratings"))) == [
        "part.00000.parquet", "part.00001.parquet", "part.00002.parquet"]
    result = runner.invoke(main, _run_args(lake, str(tmp_path / "out"), "--until", "2026-12-14"))
    assert result.exit_code == 0, result.output
    assert "users targeted" in result.output


@pytest.mark.parametrize("command", [[], ["run"], ["synth"]])
def test_help_has_an_example_and_every_option_is_documented(runner, command):
    result = runner.invoke(main, [*command, "-h"])
    assert result.exit_code == 0
    assert "preassign" in result.output
    cmd = main if not command else main.commands[command[0]]
    for param in cmd.params:
        if hasattr(param, "help") and param.name not in ("help", "version"):
            assert param.help, f"{command} option {param.name} has no help"


def test_source_database_to_run_in_one_command(runner, tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'snacks.db'}"
    result = runner.invoke(main, ["synth", "--db", db, "--users", "300", "--date", "2026-12-01",
                                  "--loglevel", "WARNING"])
    assert result.exit_code == 0, result.output
    url_file = tmp_path / "url.txt"
    url_file.write_text(f"# the source\n{db}\n")
    url_file.chmod(0o600)
    result = runner.invoke(main, _run_args(str(tmp_path / "lake"), str(tmp_path / "out"),
                                           "--source-file", str(url_file), "--until",
                                           "2026-12-14"))
    assert result.exit_code == 0, result.output
    assert "users targeted" in result.output
    assert (tmp_path / "lake" / "_CURRENT").exists()


def test_unreachable_database_exits_3_without_leaking_the_password(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("PREASSIGN_SOURCE_URL",
                       "mysql+pymysql://etl:Sup3rS3cretPw@127.0.0.1:1/snacks")
    result = runner.invoke(main, ["extract", "--lake", str(tmp_path / "lake"), "--workers", "1",
                                  "--silent"])
    assert result.exit_code == 3, result.output
    assert "Sup3rS3cretPw" not in result.output
    assert "***" in result.output or "127.0.0.1" in result.output
    assert not (tmp_path / "lake").exists() or not (tmp_path / "lake" / "_CURRENT").exists()


def test_synth_needs_exactly_one_target(runner, tmp_path):
    result = runner.invoke(main, ["synth", "--users", "10"])
    assert result.exit_code == 2 and "exactly one of --out" in result.output


def test_run_against_an_already_running_scheduler(runner, worked_lake, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        out = str(tmp_path / "out")
        result = runner.invoke(main, ["run", "--lake", worked_lake, "--date", "2026-12-01",
                                      "--out", out, "--cluster", cluster.scheduler_address,
                                      "--silent", "--loglevel", "WARNING"])
        assert result.exit_code == 0, result.output
        assert "2 users targeted" in result.output
        with Client(cluster.scheduler_address) as client:  # the run did not close it
            assert len(client.scheduler_info()["workers"]) == 1
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["cluster"]["workers"] == 1


def _boom(*_args, **_kwargs):
    raise KeyError("nobody foresaw this")


def test_an_unforeseen_error_is_an_internal_error_with_its_traceback_in_the_log(
        runner, worked_lake, tmp_path, monkeypatch):
    import preassign.pipeline

    monkeypatch.setattr(preassign.pipeline, "run_job", _boom)
    logfile = tmp_path / "run.log"
    result = runner.invoke(main, _run_args(worked_lake, str(tmp_path / "out"), "--logfile",
                                           str(logfile)))
    assert result.exit_code == 70, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "internal error, a bug in preassign" in errors[0]
    assert "KeyError" in errors[0] and str(logfile) in errors[0]
    log = logfile.read_text()
    assert "Traceback (most recent call last)" in log and "nobody foresaw this" in log


def test_an_unforeseen_error_without_a_logfile_says_how_to_see_the_traceback(
        runner, worked_lake, tmp_path, monkeypatch):
    import preassign.pipeline

    monkeypatch.setattr(preassign.pipeline, "run_job", _boom)
    result = runner.invoke(main, _run_args(worked_lake, str(tmp_path / "out")))
    assert result.exit_code == 70 and "Traceback" not in result.output
    assert "--loglevel DEBUG" in result.output
    debug = runner.invoke(main, [*_run_args(worked_lake, str(tmp_path / "out")), "--loglevel",
                                 "DEBUG"])
    assert debug.exit_code == 70 and "Traceback (most recent call last)" in debug.output
