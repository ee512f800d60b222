"""The README's commands run as printed: the cron line and the Python example."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from preassign.source import create_engine_from_url, load_synthetic
from preassign.synth import SynthConfig, write_lake

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _cron_line() -> str:
    block = re.search(r"```cron\n(.+?)\n```", README, re.S)
    assert block, "the README has no cron block"
    lines = [line for line in block.group(1).splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.integration
def test_the_cron_line_runs_as_printed(s3, tmp_path):
    """The line's schedule fields dropped and its machine paths pointed at test ones.

    What cron would run, in a shell, word for word otherwise: the lake and the runs on S3
    (a moto endpoint here, reached through AWS_ENDPOINT_URL as the README says any
    S3-compatible store is), the source URL from --source-file, today's dates from date(1).
    """
    line = _cron_line()
    fields = line.split(None, 5)
    assert len(fields) == 6 and fields[:5] == ["15", "2", "*", "*", "*"], fields
    command = fields[5].replace("\\%", "%")  # cron turns \% into %
    paths = {
        "/srv/preassign": str(REPO),
        "/etc/preassign/source-url": str(tmp_path / "source-url"),
        "/var/log/preassign.log": str(tmp_path / "preassign.log"),
    }
    for printed, here in paths.items():
        assert printed in command, f"the cron line no longer names {printed}"
        command = command.replace(printed, here)
    lake, runs = re.search(r"--lake (s3://\S+)", command), re.search(r"--out (s3://\S+?)/\$", command)
    assert lake and runs
    today = dt.datetime.now(dt.timezone.utc).date()
    db = tmp_path / "source.db"
    load_synthetic(create_engine_from_url(f"sqlite:///{db}"),
                   SynthConfig(users=400, users_per_partition=200, as_of=today, seed=3))
    source = tmp_path / "source-url"
    source.write_text(f"# the source database of the scheduled run\nsqlite:///{db}\n")
    source.chmod(0o600)
    for url in (lake.group(1), runs.group(1)):
        s3.fs.mkdir(url.removeprefix("s3://").split("/")[0])
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.endpoint_url, "PATH": os.environ["PATH"]}
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env,
                          timeout=600)
    # --fail-on-shortage 0: exit 4 when any unit is short (the synthetic stock is short)
    assert done.returncode in (0, 4), done.stderr[-3000:]
    out = f"{runs.group(1)}/{today.isoformat()}"
    summary = json.loads(s3.fs.cat(f"{out}/summary.json"))
    assert summary["date_from"] == today.isoformat()
    assert summary["date_to"] == (today + dt.timedelta(days=13)).isoformat()
    assert summary["users_targeted"] > 0
    assert (done.returncode == 4) == (summary["units_short"] > 0)
    log = [json.loads(x) for x in (tmp_path / "preassign.log").read_text().splitlines()]
    assert {r["run_id"] for r in log} == {summary["run_id"]}
    assert any(r.get("event") == "stage_done" and r.get("stage") == "extract" for r in log)
    assert any(r.get("event") == "run_done" for r in log)


@pytest.mark.integration
def test_the_python_example_runs_as_a_script(tmp_path):
    lake = tmp_path / "lake"
    write_lake(SynthConfig(users=600, users_per_partition=300, as_of=dt.date(2026, 12, 1)),
               str(lake))
    done = subprocess.run([sys.executable, "docs/example.py", str(lake), str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^[\d,]+ units for [\d,]+ users$", done.stdout, re.M), done.stdout
    assert "stock x 0.9:" in done.stdout
    assert (tmp_path / "out" / "summary.json").is_file()
