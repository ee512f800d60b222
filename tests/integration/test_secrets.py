"""Secrets never leak: a planted database password and fake AWS keys appear in no log line,
error message, exception, summary.json, report or notebook output."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from urllib.parse import quote

import dask
import nbformat
import pytest
import s3fs
from click.testing import CliRunner

from preassign.cli import main

ACCESS_KEY = "AKIAPLANTED0KEY00001"
SECRET_KEY = "planted/Secret+Key/0000000000000000000000"
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "preassign.ipynb"


def _variants(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), quote(secret, safe="/")]


def _assert_clean(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        for form in _variants(secret):
            assert form not in text, f"a secret leaked into {where}"


@pytest.fixture
def planted_aws(monkeypatch, s3):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.db
@pytest.mark.s3
def test_no_secret_in_logs_errors_summary_or_report(mariadb_server, mariadb_url, planted_aws,
                                                    tmp_path, monkeypatch, caplog):
    password = mariadb_server.password
    secrets = [password, SECRET_KEY]
    endpoint = planted_aws.storage_options["endpoint_url"]
    lake, out = planted_aws.url("lake"), planted_aws.url("out")
    logfile = tmp_path / "run.log"
    runner = CliRunner()
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PREASSIGN_SOURCE_URL", mariadb_url)
    outputs = []

    result = runner.invoke(main, ["synth", "--db", mariadb_url, "--users", "300",
                                  "--date", "2026-12-01", "--loglevel", "DEBUG",
                                  "--logfile", str(logfile)])
    assert result.exit_code == 0, result.output
    outputs.append(result.output)
    result = runner.invoke(main, [
        "run", "--lake", lake, "--date", "2026-12-01", "--until", "2026-12-14", "--out", out,
        "--storage-option", f"endpoint_url={endpoint}", "--workers", "1", "--silent",
        "--loglevel", "DEBUG", "--logfile", str(logfile), "--extract", "--full"])
    assert result.exit_code == 0, result.output
    outputs.append(result.output)

    # a failing run: a wrong password planted in the URL
    wrong = mariadb_url.replace(quote(password, safe=""), quote("planted-WRONG-pw", safe=""))
    assert wrong != mariadb_url
    monkeypatch.setenv("PREASSIGN_SOURCE_URL", wrong)
    result = runner.invoke(main, ["extract", "--lake", str(tmp_path / "lake2"), "--workers", "1",
                                  "--silent", "--loglevel", "DEBUG", "--logfile", str(logfile)])
    assert result.exit_code in (1, 3), result.output
    outputs.append(result.output)
    outputs.append(repr(result.exception) if result.exception else "")
    secrets.append("planted-WRONG-pw")

    fs = planted_aws.fs
    summary = fs.cat_file(out.removeprefix("s3://") + "/summary.json").decode()
    report = fs.cat_file(out.removeprefix("s3://") + "/report.html").decode()
    assert json.loads(summary)["users_targeted"] > 0
    for text, where in [("\n".join(outputs), "CLI output"), (logfile.read_text(), "the log file"),
                        (caplog.text, "log records"), (summary, "summary.json"),
                        (report, "report.html")]:
        _assert_clean(text, secrets, where)
    assert ACCESS_KEY not in summary and ACCESS_KEY not in report


@pytest.mark.integration
def test_no_secret_in_notebook_output(tmp_path, monkeypatch):
    import papermill

    from preassign.synth import SynthConfig, write_lake

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("PREASSIGN_SOURCE_URL", "mysql+pymysql://etl:planted-NB-pw@127.0.0.1/x")
    lake = tmp_path / "lake"
    with dask.config.set(scheduler="sync"):
        write_lake(SynthConfig(users=300, users_per_partition=300, as_of=dt.date(2026, 12, 1)),
                   str(lake))
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(executed), cwd=str(tmp_path), kernel_name="python3",
        progress_bar=False, execution_timeout=300,
        parameters={"lake": str(lake), "out": str(tmp_path / "out"), "date_from": "2026-12-01",
                    "date_to": "2026-12-14", "cluster": "local", "workers": 1,
                    "threads_per_worker": 1},
    )
    text = json.dumps(nbformat.read(executed, as_version=4))
    _assert_clean(text, [SECRET_KEY, "planted-NB-pw"], "the executed notebook")
    assert ACCESS_KEY not in text

