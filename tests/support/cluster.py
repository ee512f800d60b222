"""Helpers shared by the preassign.cluster tests (unit and integration).

Plain functions: ``conftest.py`` here and ``tests/integration/test_cluster_local.py`` wrap
the ones that need it in fixtures. Imports nothing of distributed, dask-cloudprovider or
boto, so that the pure config tests can use it too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from preassign.cluster.config import CONFIG_ENV_VAR

REPO = Path(__file__).resolve().parents[2]
DEFAULTS_YAML = REPO / "cluster" / "defaults.yaml"
PACKAGED_YAML = REPO / "preassign" / "cluster" / "defaults.yaml"
ENTRYPOINT = REPO / "cluster" / "entrypoint.sh"
MAKE_CERTS = REPO / "cluster" / "tls" / "make-certs.sh"
VENV_BIN = Path(sys.executable).parent

# What the CloudFormation stack's outputs put in a user's defaults file.
STACK = {
    "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/preassign:3f2c1ab",
    "region": "eu-west-1",
    "cluster_arn": "arn:aws:ecs:eu-west-1:123456789012:cluster/preassign-Cluster-1A2B",
    "vpc": "vpc-0123456789abcdef0",
    "subnets": ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"],
    "security_groups": ["sg-0bbbbbbbbbbbbbbb1"],
    "execution_role_arn": "arn:aws:iam::123456789012:role/preassign-ExecutionRole-X",
    "task_role_arn": "arn:aws:iam::123456789012:role/preassign-TaskRole-Y",
    "log_group": "/preassign/preassign",
    "tls_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:TlsSecret-AbCdEf",
    "scheduler_task_definition_arn":
        "arn:aws:ecs:eu-west-1:123456789012:task-definition/preassign-dask-scheduler:3",
    "worker_task_definition_arn":
        "arn:aws:ecs:eu-west-1:123456789012:task-definition/preassign-dask-worker:3",
}


def isolate_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignore the developer's own cluster defaults and AWS profile."""
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def write_stack_config(tmp_path: Path) -> Path:
    """Write a defaults file as a user does from the stack outputs: only the fargate keys."""
    path = tmp_path / "cluster.yaml"
    tls = tmp_path / "laptop-tls"
    path.write_text(
        yaml.safe_dump(
            {
                "fargate": STACK,
                "tls": {
                    "ca_file": str(tls / "ca.pem"),
                    "cert": str(tls / "cert.pem"),
                    "key": str(tls / "key.pem"),
                },
            }
        )
    )
    return path


def make_shim_path(tmp_path: Path) -> str:
    """Return a PATH with the image's dask-scheduler/dask-worker links, then this venv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dask-scheduler", "dask-worker"):
        (bin_dir / name).symlink_to(ENTRYPOINT)
    return os.pathsep.join([str(bin_dir), str(VENV_BIN), os.environ.get("PATH", "")])


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(directory: Path, *extra: str) -> None:
    """Write TLS files with cluster/tls/make-certs.sh (skip the test without openssl).

    ``directory`` gets the people's side (``ca.pem``, and the interim ``cert.pem`` and
    ``key.pem``), ``directory / "tasks"`` the tasks' server identity and trust bundle.
    """
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make TLS files")
    subprocess.run([str(MAKE_CERTS), "--dir", str(directory), *extra], check=True,
                   capture_output=True)


def stop_process(process: subprocess.Popen) -> None:
    """Stop a process started by a test: SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
