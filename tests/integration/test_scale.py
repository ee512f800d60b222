"""Memory pressure: a run under a small per-worker memory limit completes (spilling, bounded
partitions) or fails with a clear message - never a silent hang."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

PREASSIGN = [sys.executable, "-m", "preassign.cli"]


def _synth(lake, users, per_partition):
    subprocess.run([*PREASSIGN, "synth", "--out", str(lake), "--users", str(users), "--date",
                    "2026-12-01", "--users-per-partition", str(per_partition), "--workers", "2",
                    "--silent", "--loglevel", "WARNING"], check=True, timeout=1800)


def _run(lake, out, memory_limit, timeout):
    started = time.monotonic()
    proc = subprocess.run(
        [*PREASSIGN, "run", "--lake", str(lake), "--date", "2026-12-01", "--until", "2026-12-14",
         "--out", str(out), "--workers", "2", "--threads-per-worker", "1", "--memory-limit",
         memory_limit, "--silent", "--loglevel", "WARNING"],
        capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def _completes_or_fails_clearly(proc, out):
    if proc.returncode == 0:
        summary = json.loads((out / "summary.json").read_text())
        assert summary["users_targeted"] > 0
        return summary
    assert proc.returncode == 3, proc.stderr
    assert "Error:" in proc.stderr and "memory" in proc.stderr.lower(), proc.stderr
    assert not (out / "summary.json").exists()
    return None


def test_a_memory_limit_too_small_to_start_a_worker_is_refused(tmp_path):
    # below ~768 MiB a worker is paused (80% of its limit) or killed before it holds any data
    proc = subprocess.run(
        [*PREASSIGN, "run", "--lake", str(tmp_path), "--date", "2026-12-01", "--out",
         str(tmp_path / "out"), "--memory-limit", "250MiB"], capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "250MiB is too small" in proc.stderr and "at least 768MiB" in proc.stderr


def test_small_memory_limit_completes_or_fails_clearly(tmp_path):
    lake, out = tmp_path / "lake", tmp_path / "out"
    _synth(lake, 20_000, 10_000)
    proc, _ = _run(lake, out, "1GiB", timeout=600)  # a hang would hit the timeout
    _completes_or_fails_clearly(proc, out)


@pytest.mark.slow
def test_two_million_users_within_2gib_per_worker(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    lake, out = root / "lake", root / "out"
    _synth(lake, 2_000_000, 50_000)
    proc, seconds = _run(lake, out, "2GiB", timeout=3600)
    summary = _completes_or_fails_clearly(proc, out)
    assert summary is not None, "2M users must complete within 2 GiB per worker"
    assert summary["users_targeted"] > 1_500_000
