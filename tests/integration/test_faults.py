"""Faults of a real cluster: a worker killed mid-run, workers lost beyond what retries allow."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time

import dask
import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster

from preassign.cli import main
from preassign.pipeline import RunConfig, run_preassignment
from preassign.synth import SynthConfig, write_lake
from tests.support.outputs import read_output

D = dt.date(2026, 12, 1)
UNTIL = dt.date(2026, 12, 14)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("faults") / "lake")
    with dask.config.set(scheduler="sync"):
        write_lake(SynthConfig(users=24_000, as_of=D, users_per_partition=2_000, seed=11), root)
    return root


def _worker_pids(client: Client) -> list[int]:
    return list(client.run(os.getpid).values())


def test_killed_worker_mid_run_gives_identical_output(lake, tmp_path):
    ref_out = str(tmp_path / "ref")
    with dask.config.set(scheduler="sync"):
        run_preassignment(RunConfig(lake=lake, date_from=D, date_to=UNTIL, out=ref_out))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        killed = []

        def kill_one(stage: str, _seconds: float) -> None:
            if stage == "scan":  # the assign pass is about to start: kill a worker in it
                def later():
                    time.sleep(0.5)
                    pid = _worker_pids(client)[0]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                threading.Thread(target=later, daemon=True).start()

        out = str(tmp_path / "out")
        run_preassignment(RunConfig(lake=lake, date_from=D, date_to=UNTIL, out=out), client,
                          on_stage=kill_one)
        assert killed, "no worker was killed"
    got, ref = read_output(out), read_output(ref_out)
    for name in ref:
        assert got[name].equals(ref[name]), name


def test_workers_lost_beyond_retries_exit_3_and_publish_nothing(lake, tmp_path):
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        stop = threading.Event()

        def keep_killing():
            # kill a worker only while it runs a task: a worker killed while it starts holds
            # no task, so the scheduler would wait for the next one forever
            while not stop.is_set():
                try:
                    busy = [w for w, keys in client.processing().items() if keys]
                    if busy:
                        for pid in client.run(os.getpid, workers=busy).values():
                            os.kill(pid, signal.SIGKILL)
                except Exception:  # noqa: BLE001 - the worker may be restarting
                    pass
                time.sleep(0.1)

        killer = threading.Thread(target=keep_killing, daemon=True)
        killer.start()
        try:
            result = CliRunner().invoke(main, [
                "run", "--lake", lake, "--date", "2026-12-01", "--until", "2026-12-14",
                "--out", str(tmp_path / "out"), "--cluster", cluster.scheduler_address,
                "--silent", "--loglevel", "WARNING"])
        finally:
            stop.set()
            killer.join()
    assert result.exit_code == 3, result.output
    assert "KilledWorker" in result.output or "worker" in result.output.lower()
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if "staging" in p]


def test_paused_workers_stop_the_run_with_a_clear_error(lake, tmp_path, monkeypatch):
    """Workers paused for memory forever would hang the run: the watchdog stops it."""
    from preassign import compute as compute_module

    monkeypatch.setattr(compute_module, "STALL_SECONDS", 3.0)
    memory = {"distributed.worker.memory.pause": 0.01, "distributed.worker.memory.target": False,
              "distributed.worker.memory.spill": False,
              "distributed.worker.memory.terminate": False}
    with dask.config.set(memory), LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                               memory_limit="2GiB", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        started = time.monotonic()
        with pytest.raises(compute_module.ClusterStalled, match="paused for 3 s.*Raise --memory-limit"):
            run_preassignment(RunConfig(lake=lake, date_from=D, date_to=UNTIL,
                                        out=str(tmp_path / "out")), client)
        assert time.monotonic() - started < 120
    assert not (tmp_path / "out").exists()
