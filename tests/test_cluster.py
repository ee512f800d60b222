"""Tests of preassign.cluster: defaults, Fargate arguments, clients, the task commands.

Everything runs on 127.0.0.1 without AWS: LocalClusters, a scheduler and worker started
from the exact commands the Fargate tasks run, and a moto server standing in for Secrets
Manager.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import psutil
import pytest
import yaml
from distributed.core import Status
from distributed.security import Security

import preassign.cluster as pc
from preassign.cluster import (
    BUILTIN_DEFAULTS,
    ClusterSpec,
    ClusterVersionMismatch,
    build_task_commands,
    check_versions,
    close_client,
    fargate_kwargs,
    load_defaults,
    open_client,
    parse_adapt,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULTS_YAML = REPO / "cluster" / "defaults.yaml"
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
}


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignore the developer's own cluster defaults and AWS profile."""
    monkeypatch.delenv(pc.CONFIG_ENV_VAR, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture
def stack_config(tmp_path: Path) -> Path:
    """A defaults file as a user writes it from the stack outputs: only the fargate keys."""
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_certs(directory: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make TLS files")
    subprocess.run([str(MAKE_CERTS), "--dir", str(directory)], check=True, capture_output=True)


# ----------------------------------------------------------------------------- defaults


def test_defaults_yaml_equals_builtin_defaults() -> None:
    assert yaml.safe_load(DEFAULTS_YAML.read_text()) == pc._thaw(BUILTIN_DEFAULTS)


def test_defaults_yaml_has_a_comment_on_every_key() -> None:
    key_lines = [
        line
        for line in DEFAULTS_YAML.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert key_lines and all("#" in line for line in key_lines), [
        line for line in key_lines if "#" not in line
    ]


def test_load_defaults_reads_the_repository_file() -> None:
    assert pc.default_config_path() == DEFAULTS_YAML
    assert load_defaults() == pc._thaw(BUILTIN_DEFAULTS)


def test_env_var_file_is_laid_over_builtin_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("kind: fargate\nfargate:\n  workers: 9\n")
    monkeypatch.setenv(pc.CONFIG_ENV_VAR, str(path))
    defaults = load_defaults()
    assert defaults["kind"] == "fargate"
    assert defaults["fargate"]["workers"] == 9
    assert defaults["fargate"]["worker_cpu"] == BUILTIN_DEFAULTS["fargate"]["worker_cpu"]
    assert defaults["local"] == pc._thaw(BUILTIN_DEFAULTS["local"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour: red\n", r"unknown key 'colour' .* valid keys: connect_timeout, fargate"),
        ("fargate:\n  worker_cpus: 1\n", r"unknown key\(s\) 'worker_cpus' under 'fargate'"),
        ("fargate: 3\n", r"'fargate' .* must be a mapping"),
        ("- 1\n", r"must hold a YAML mapping"),
    ],
    ids=["unknown-top", "unknown-nested", "section-not-mapping", "not-mapping"],
)
def test_bad_defaults_file_is_rejected(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_defaults(path)


def test_named_defaults_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pc.CONFIG_ENV_VAR, str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="missing.yaml does not exist"):
        load_defaults()


def test_bad_value_in_defaults_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("fargate:\n  worker_cpu: 1000\n")
    with pytest.raises(ValueError, match=r"worker_cpu must be a Fargate CPU size.*bad.yaml"):
        fargate_kwargs(ClusterSpec("fargate", config_path=path))


# ----------------------------------------------------------------------------- parse_adapt


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2:10", (2, 10)), ("0:1", (0, 1)), (" 3 : 3 ", (3, 3))],
)
def test_parse_adapt(text: str, expected: tuple[int, int]) -> None:
    assert parse_adapt(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"MIN:MAX, two whole numbers of workers such as 2:10; got ''"),
        ("5", r"MIN:MAX.*got '5'"),
        ("2-10", r"MIN:MAX.*got '2-10'"),
        ("2:10:3", r"MIN:MAX.*got '2:10:3'"),
        (":4", r"MIN:MAX.*got ':4'"),
        ("a:b", r"whole numbers of workers such as 2:10; got 'a:b'"),
        ("1.5:3", r"whole numbers.*got '1.5:3'"),
        ("10:2", r"minimum <= maximum.*minimum 10, maximum 2"),
        ("-1:2", r"0 <= minimum.*minimum -1"),
        ("0:0", r"maximum >= 1.*maximum 0"),
    ],
)
def test_parse_adapt_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_adapt(text)


# ----------------------------------------------------------------------------- ClusterSpec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "kubernetes"}, r"'local', 'fargate' or a scheduler address.*'kubernetes'"),
        ({"kind": "tcp://nohost"}, r"tcp://host:port or tls://host:port"),
        ({"workers": -1}, r"workers must be a whole number >= 0; got -1"),
        ({"workers": True}, r"workers must be a whole number"),
        ({"threads_per_worker": 0}, r"threads_per_worker must be a whole number >= 1"),
        ({"memory_limit": "lots"}, r'memory_limit must be "auto" or a positive Dask size'),
        ({"adapt": (5, 2)}, r"minimum <= maximum"),
        ({"adapt": "2:5"}, r"two whole numbers"),
        ({"worker_cpu": 1000}, r"worker_cpu must be a Fargate CPU size, one of \[256, 512"),
        ({"idle_timeout": "soon"}, r"idle_timeout must be a positive Dask duration"),
        ({"subnets": ["sg-1"]}, r"subnets must be a list of ids starting with 'subnet-'"),
        ({"kind": "local", "worker_cpu": 1024}, r"worker_cpu cannot be set for a local"),
        ({"kind": "fargate", "memory_limit": "4GiB"}, r"memory_limit -> local"),
        ({"kind": "tcp://h:8786", "workers": 2}, r"workers cannot be set for a scheduler"),
        ({"kind": "tcp://h:8786", "tls_cert": "c"}, r"tls_cert -> fargate, tls:// addresses"),
    ],
)
def test_cluster_spec_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClusterSpec(**kwargs)


def test_cluster_spec_normalises_sequences() -> None:
    spec = ClusterSpec("fargate", adapt=[1, 3], subnets=["subnet-1"], security_groups="sg-1")
    assert spec.adapt == (1, 3)
    assert spec.subnets == ("subnet-1",)
    assert spec.security_groups == ("sg-1",)
    hash(spec)


# ----------------------------------------------------------------------------- fargate_kwargs


def _expected_kwargs(tmp_path: Path) -> dict:
    tls_args = [
        "--tls-ca-file",
        "/home/dask/.preassign/tls/ca.pem",
        "--tls-cert",
        "/home/dask/.preassign/tls/cert.pem",
        "--tls-key",
        "/home/dask/.preassign/tls/key.pem",
    ]
    return {
        "image": STACK["image"],
        "cpu_architecture": "X86_64",
        "region_name": "eu-west-1",
        "cluster_arn": STACK["cluster_arn"],
        "vpc": STACK["vpc"],
        "subnets": STACK["subnets"],
        "security_groups": STACK["security_groups"],
        "fargate_use_private_ip": True,
        "fargate_spot": False,
        "execution_role_arn": STACK["execution_role_arn"],
        "task_role_arn": STACK["task_role_arn"],
        "cloudwatch_logs_group": STACK["log_group"],
        "n_workers": 4,
        "scheduler_cpu": 1024,
        "scheduler_mem": 4096,
        "scheduler_port": 8786,
        "scheduler_timeout": "1 hour",
        "scheduler_extra_args": ["--port", "8786", *tls_args],
        "worker_cpu": 1024,
        "worker_mem": 4096,
        "worker_nthreads": 1,
        "worker_extra_args": [
            "--worker-port", "8788", "--nanny-port", "8789", "--no-dashboard", *tls_args
        ],
        "environment": {
            "PREASSIGN_TLS_SECRET_ARN": STACK["tls_secret_arn"],
            "PREASSIGN_TLS_DIR": "/home/dask/.preassign/tls",
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        },
        "tags": {"project": "preassign"},
        "skip_cleanup": True,
    }


def _assert_client_security(security: Security, tls_dir: Path) -> None:
    assert isinstance(security, Security)
    assert security.require_encryption is True
    assert security.tls_ca_file == str(tls_dir / "ca.pem")
    assert security.tls_client_cert == str(tls_dir / "cert.pem")
    assert security.tls_client_key == str(tls_dir / "key.pem")


def test_fargate_kwargs_from_yaml(stack_config: Path, tmp_path: Path) -> None:
    kwargs = fargate_kwargs(ClusterSpec("fargate", config_path=stack_config))
    security = kwargs.pop("security")
    assert kwargs == _expected_kwargs(tmp_path)
    _assert_client_security(security, tmp_path / "laptop-tls")


def test_fargate_kwargs_from_env_var_file(
    stack_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(pc.CONFIG_ENV_VAR, str(stack_config))
    kwargs = fargate_kwargs(ClusterSpec())
    kwargs.pop("security")
    assert kwargs == _expected_kwargs(tmp_path)


def test_fargate_kwargs_with_flag_overrides(stack_config: Path, tmp_path: Path) -> None:
    spec = ClusterSpec(
        "fargate",
        workers=3,
        threads_per_worker=2,
        worker_cpu=2048,
        worker_mem=8192,
        adapt=(2, 10),
        image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/preassign:next",
        idle_timeout="2 hours",
        fargate_spot=True,
        tags={"team": "boxes"},
        tls_ca_file="/certs/ca.pem",
        tls_cert="/certs/cert.pem",
        tls_key="/certs/key.pem",
        config_path=stack_config,
    )
    kwargs = fargate_kwargs(spec)
    _assert_client_security(kwargs.pop("security"), Path("/certs"))
    expected = _expected_kwargs(tmp_path)
    expected.update(
        {
            "n_workers": 3,
            "worker_nthreads": 2,
            "worker_cpu": 2048,
            "worker_mem": 8192,
            "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/preassign:next",
            "scheduler_timeout": "2 hours",
            "fargate_spot": True,
            "tags": {"project": "preassign", "team": "boxes"},
        }
    )
    assert kwargs == expected


def test_fargate_kwargs_adapt_without_workers_starts_at_minimum(stack_config: Path) -> None:
    spec = ClusterSpec("fargate", adapt=(2, 10), worker_cpu=4096, worker_mem=8192,
                       config_path=stack_config)
    kwargs = fargate_kwargs(spec)
    assert kwargs["n_workers"] == 2
    assert kwargs["worker_nthreads"] == 4  # one per vCPU


def test_fargate_kwargs_are_secure_by_default(stack_config: Path) -> None:
    kwargs = fargate_kwargs(ClusterSpec("fargate", config_path=stack_config))
    # Private IPs only, our security group: FargateCluster creates a world-open one if None.
    assert kwargs["fargate_use_private_ip"] is True
    assert kwargs["security_groups"] == STACK["security_groups"]
    # Our roles, cluster and logs: nothing account-wide is created or swept.
    for key in ("cluster_arn", "execution_role_arn", "task_role_arn", "cloudwatch_logs_group",
                "vpc", "subnets"):
        assert kwargs[key]
    assert kwargs["skip_cleanup"] is True
    # TLS everywhere: client side, scheduler, workers, and refused plain TCP in the tasks.
    assert kwargs["security"].require_encryption is True
    for args in (kwargs["scheduler_extra_args"], kwargs["worker_extra_args"]):
        assert {"--tls-ca-file", "--tls-cert", "--tls-key"} <= set(args)
    assert kwargs["environment"]["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    # No key material travels in RunTask parameters: only where to fetch it.
    assert not any("PRIVATE KEY" in v for v in kwargs["environment"].values())
    # A forgotten cluster dies.
    assert kwargs["scheduler_timeout"]


def test_fargate_kwargs_refuse_to_run_without_the_stack() -> None:
    with pytest.raises(ValueError) as info:
        fargate_kwargs(ClusterSpec("fargate"))
    message = str(info.value)
    for key, output in [
        ("image", "RepositoryUri"),
        ("cluster_arn", "ClusterArn"),
        ("subnets", "SubnetIds"),
        ("security_groups", "SecurityGroupId"),
        ("execution_role_arn", "ExecutionRoleArn"),
        ("task_role_arn", "TaskRoleArn"),
        ("log_group", "LogGroupName"),
        ("tls_secret_arn", "TlsSecretArn"),
    ]:
        assert f"{key} (stack output {output}" in message
    assert "security group open to the internet" in message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"worker_mem": 3000}, r"worker_mem=3000 MiB is not a Fargate size for worker_cpu=1024; "
                               r"allowed: 2048 to 8192 MiB in steps of 1024 MiB"),
        ({"worker_cpu": 256, "worker_mem": 512}, r"worker_mem=512 MiB is too small"),
        ({"worker_port": 8786}, r"must differ"),
        ({"workers": 0}, r"workers=0 starts no workers"),
        ({"workers": 12, "adapt": (2, 10)}, r"workers=12 lies outside adapt 2:10"),
    ],
)
def test_fargate_kwargs_invalid_combinations(
    stack_config: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fargate_kwargs(ClusterSpec("fargate", config_path=stack_config, **kwargs))


def test_fargate_kwargs_needs_a_fargate_spec() -> None:
    with pytest.raises(ValueError, match="kind 'fargate', got 'local'"):
        fargate_kwargs(ClusterSpec("local"))


def test_fargate_kwargs_are_accepted_by_fargate_cluster() -> None:
    import inspect

    from dask_cloudprovider.aws.ecs import ECSCluster
    from distributed.deploy.spec import SpecCluster

    accepted = set(inspect.signature(ECSCluster.__init__).parameters)
    accepted |= set(inspect.signature(SpecCluster.__init__).parameters)
    assert set(_expected_kwargs(Path())) | {"security"} <= accepted


# ----------------------------------------------------------------------------- task commands


def test_task_commands(stack_config: Path) -> None:
    commands = build_task_commands(
        ClusterSpec("fargate", config_path=stack_config), scheduler_ip="10.0.1.23"
    )
    tls = [
        "--tls-ca-file", "/home/dask/.preassign/tls/ca.pem",
        "--tls-cert", "/home/dask/.preassign/tls/cert.pem",
        "--tls-key", "/home/dask/.preassign/tls/key.pem",
    ]
    assert commands == {
        "scheduler": ["dask-scheduler", "--idle-timeout", "1 hour", "--port", "8786", *tls],
        "worker": [
            "dask-worker", "tls://10.0.1.23:8786", "--name", "0", "--nthreads", "1",
            "--memory-limit", "4GB", "--death-timeout", "60",
            "--worker-port", "8788", "--nanny-port", "8789", "--no-dashboard", *tls,
        ],
    }


@pytest.fixture
def shim_path(tmp_path: Path) -> str:
    """PATH with the image's dask-scheduler/dask-worker links, then this venv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dask-scheduler", "dask-worker"):
        (bin_dir / name).symlink_to(ENTRYPOINT)
    return os.pathsep.join([str(bin_dir), str(VENV_BIN), os.environ.get("PATH", "")])


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def test_exact_task_commands_start_a_tls_cluster(
    stack_config: Path, tmp_path: Path, shim_path: str
) -> None:
    # The trap: current distributed has no dask-scheduler/dask-worker executables.
    assert shutil.which("dask-scheduler", path=str(VENV_BIN)) is None
    assert shutil.which("dask-worker", path=str(VENV_BIN)) is None

    # TLS files as make-certs.sh writes them; the tasks' copy and the laptop's are the same.
    tls_dir = tmp_path / "tls"
    _make_certs(tls_dir)
    ports = {name: _free_port() for name in ("scheduler_port", "worker_port", "nanny_port")}
    spec = ClusterSpec(
        "fargate",
        config_path=stack_config,
        task_tls_dir=str(tls_dir),
        tls_ca_file=str(tls_dir / "ca.pem"),
        tls_cert=str(tls_dir / "cert.pem"),
        tls_key=str(tls_dir / "key.pem"),
        **ports,
    )
    commands = build_task_commands(spec, scheduler_ip="127.0.0.1")
    kwargs = fargate_kwargs(spec)
    assert commands["scheduler"][0] == "dask-scheduler"
    assert commands["worker"][:2] == ["dask-worker", f"tls://127.0.0.1:{ports['scheduler_port']}"]

    # The task environment, except the secret: the files are already in place here (the
    # entry point's fetch has its own test below).
    env = {**os.environ, **kwargs["environment"], "PATH": shim_path}
    del env["PREASSIGN_TLS_SECRET_ARN"]
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = []
    try:
        for role in ("scheduler", "worker"):
            # ENTRYPOINT + the command ECS passes as the container override.
            with open(logs / f"{role}.log", "wb") as log:
                processes.append(
                    subprocess.Popen([str(ENTRYPOINT), *commands[role]], env=env,
                                     cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
                )
        address = f"tls://127.0.0.1:{ports['scheduler_port']}"
        with distributed.Client(address, security=kwargs["security"], timeout=30) as client:
            client.wait_for_workers(1, timeout=30)
            [(worker_address, worker)] = client.scheduler_info()["workers"].items()
            assert worker_address == f"tls://127.0.0.1:{ports['worker_port']}"
            assert worker["nanny"] == f"tls://127.0.0.1:{ports['nanny_port']}"
            assert worker["id"] == 0
            assert worker["nthreads"] == 1
            assert worker["memory_limit"] == 4_000_000_000
            assert client.submit(pow, 2, 10).result() == 1024
            check_versions(client)
        # A certificate from another CA is refused: holding the right key is what admits.
        other = tmp_path / "other-tls"
        _make_certs(other)
        stranger = Security(
            tls_ca_file=str(tls_dir / "ca.pem"),
            tls_client_cert=str(other / "cert.pem"),
            tls_client_key=str(other / "key.pem"),
            require_encryption=True,
        )
        with pytest.raises(OSError, match="SSL"):
            distributed.Client(address, security=stranger, timeout=2)
        for process in processes:
            assert process.poll() is None, (logs / "scheduler.log").read_text()[-3000:]
    finally:
        for process in reversed(processes):
            _stop(process)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """One moto server on 127.0.0.1 for the module (AWS APIs only; nothing leaves the host)."""
    pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Fake credentials and the moto endpoint for this process and its children."""
    import logging
    import urllib.request

    env = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.ERROR)
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"))
    yield env


def _boto(service: str) -> Any:
    import boto3

    return boto3.client(service, region_name="eu-west-1")


def test_entrypoint_fetches_tls_files_from_secrets_manager(
    aws: dict[str, str], tmp_path: Path
) -> None:
    tls_dir = tmp_path / "made"
    _make_certs(tls_dir)
    pems = {name: (tls_dir / f"{name}.pem").read_text() for name in ("ca", "cert", "key")}
    secrets = _boto("secretsmanager")
    full = secrets.create_secret(Name="tls", SecretString=json.dumps(pems))["ARN"]
    empty = secrets.create_secret(
        Name="placeholder", SecretString='{"ca": "", "cert": "", "key": ""}'
    )["ARN"]
    env = {**os.environ, "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])}

    task_dir = tmp_path / "task-tls"
    done = subprocess.run(
        [str(ENTRYPOINT), "sh", "-c", 'echo "fetched=$PREASSIGN_TLS_FETCHED"'],
        env={**env, "PREASSIGN_TLS_SECRET_ARN": full, "PREASSIGN_TLS_DIR": str(task_dir)},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fetched=1"
    for name, pem in pems.items():
        path = task_dir / f"{name}.pem"
        assert path.read_text() == pem
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    failed = subprocess.run(
        [str(ENTRYPOINT), "true"],
        env={**env, "PREASSIGN_TLS_SECRET_ARN": empty,
             "PREASSIGN_TLS_DIR": str(tmp_path / "never")},
        capture_output=True, text=True, timeout=60,
    )
    assert failed.returncode != 0
    assert "has no ca, cert, key" in failed.stderr
    assert f"make-certs.sh --upload {empty}" in failed.stderr
    assert not (tmp_path / "never").exists()


class _TasksAsProcesses:
    """Make moto's ECS run each Fargate task as a local process, and stop it on StopTask.

    Moto keeps the ECS bookkeeping (task definitions, tasks, ENIs); the container is
    simulated by running the image's entry point with exactly the command and environment
    of the RunTask container override, on 127.0.0.1 (the task ENI's private IP).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: str, logs: Path) -> None:
        import inspect

        import moto.ecs.models as ecs_models
        from moto.moto_api import state_manager

        self.calls: list[dict[str, Any]] = []
        self.processes: dict[str, subprocess.Popen] = {}
        backend = ecs_models.EC2ContainerServiceBackend
        run_task, stop_task = backend.run_task, backend.stop_task
        signature = inspect.signature(run_task)

        def run(backend_self: Any, *args: Any, **kwargs: Any) -> Any:
            call = signature.bind(backend_self, *args, **kwargs).arguments
            tasks = run_task(backend_self, *args, **kwargs)
            [container] = call["overrides"]["containerOverrides"]
            self.calls.append(call)
            env = {**os.environ, "PATH": path}
            env.update({e["name"]: e["value"] for e in container.get("environment", [])})
            for task in tasks:
                with open(logs / f"{container['name']}-{len(self.processes)}.log", "wb") as log:
                    self.processes[task.task_arn] = subprocess.Popen(
                        [str(ENTRYPOINT), *container["command"]], env=env, stdout=log,
                        stderr=subprocess.STDOUT,
                    )
            return tasks

        def stop(backend_self: Any, cluster_str: str, task_str: str, reason: str) -> Any:
            task = stop_task(backend_self, cluster_str, task_str, reason)
            process = self.processes.get(task.task_arn)
            if process is not None:
                _stop(process)
            return task

        monkeypatch.setattr(backend, "run_task", run)
        monkeypatch.setattr(backend, "stop_task", stop)
        monkeypatch.setattr(ecs_models, "random_private_ip", lambda *a, **k: "127.0.0.1")
        # Tasks stay RUNNING until stopped, as on AWS (moto's default walks them to STOPPED).
        state_manager.set_transition("ecs::task", {"progression": "manual", "times": 10**9})
        self._state_manager = state_manager

    def close(self) -> None:
        for process in self.processes.values():
            _stop(process)
        self._state_manager.unset_transition("ecs::task")


class _FakeStack:
    """The CloudFormation stack's resources in moto, and a defaults file pointing at them."""

    def __init__(self, tmp_path: Path) -> None:
        self.laptop_tls = tmp_path / "laptop-tls"
        _make_certs(self.laptop_tls)
        self.pems = {n: (self.laptop_tls / f"{n}.pem").read_text() for n in ("ca", "cert", "key")}
        self.ec2, self.ecs, self.iam = _boto("ec2"), _boto("ecs"), _boto("iam")
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        self.subnet = self.ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"][
            "SubnetId"]
        self.group = self.ec2.create_security_group(
            GroupName="dask", Description="dask", VpcId=vpc)["GroupId"]
        self.ecs.put_account_setting(name="taskLongArnFormat", value="enabled")
        self.cluster_arn = self.ecs.create_cluster(clusterName="preassign")["cluster"][
            "clusterArn"]
        secret = _boto("secretsmanager").create_secret(
            Name="tls", SecretString=json.dumps(self.pems))
        self.ports = {n: _free_port() for n in ("scheduler_port", "worker_port", "nanny_port")}
        self.task_tls = tmp_path / "task-tls"
        self.config = tmp_path / "cluster.yaml"
        self.config.write_text(yaml.safe_dump({
            "fargate": {
                **STACK, "cluster_arn": self.cluster_arn, "vpc": vpc, "subnets": [self.subnet],
                "security_groups": [self.group], "tls_secret_arn": secret["ARN"],
                "task_tls_dir": str(self.task_tls), **self.ports,
            },
            "tls": {name: str(self.laptop_tls / f"{key}.pem")
                    for name, key in (("ca_file", "ca"), ("cert", "cert"), ("key", "key"))},
        }))

    def active_task_definitions(self) -> list[str]:
        return self.ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"]


@pytest.fixture
def fake_stack(aws: dict[str, str], tmp_path: Path) -> _FakeStack:
    return _FakeStack(tmp_path)


@pytest.fixture
def fargate_tasks(
    aws: dict[str, str], tmp_path: Path, shim_path: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[_TasksAsProcesses]:
    logs = tmp_path / "task-logs"
    logs.mkdir()
    tasks = _TasksAsProcesses(monkeypatch, shim_path, logs)
    try:
        yield tasks
    finally:
        tasks.close()


@pytest.mark.filterwarnings("ignore:Creating your cluster is taking a surprisingly long time")
def test_open_client_on_fargate_with_moto(
    fake_stack: _FakeStack, fargate_tasks: _TasksAsProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, ecs, ec2 = fake_stack, fake_stack.ecs, fake_stack.ec2
    # An idle cluster tagged by dask-cloudprovider, as another user's run has between its
    # start and its first task: FargateCluster's account-wide sweep would delete it.
    stale = ecs.create_cluster(
        clusterName="dask-someone-else",
        tags=[{"key": "createdBy", "value": "dask-cloudprovider"}],
    )["cluster"]["clusterArn"]
    groups_before = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    at_exit: list = []
    monkeypatch.setattr(threading, "_register_atexit", at_exit.append)

    # keep_open=True, as the notebook does, and then never closed: Python's exit closes it.
    spec = ClusterSpec("fargate", workers=1, config_path=stack.config)
    with open_client(spec, keep_open=True) as client:
        cluster = client.cluster
        assert type(cluster).__name__ == "FargateCluster"
        assert cluster.scheduler_address == (
            f"tls://127.0.0.1:{stack.ports['scheduler_port']}")
        assert client.submit(sum, [20, 22]).result() == 42
    assert cluster.status == Status.running
    definitions = {
        arn.rsplit("-", 1)[-1].split(":")[0]: ecs.describe_task_definition(
            taskDefinition=arn, include=["TAGS"])
        for arn in stack.active_task_definitions()
    }
    [close_at_exit] = at_exit
    close_at_exit()
    assert cluster.status == Status.closed
    client.close()

    # RunTask: exactly build_task_commands' commands, private IP, our group and subnet.
    expected = build_task_commands(spec, scheduler_ip="127.0.0.1")
    kwargs = fargate_kwargs(spec)
    calls = fargate_tasks.calls
    assert [c["overrides"]["containerOverrides"][0]["command"] for c in calls] == [
        expected["scheduler"], expected["worker"]
    ]
    for call in calls:
        assert call["launch_type"] == "FARGATE"
        assert call["networking_configuration"] == {"awsvpcConfiguration": {
            "subnets": [stack.subnet], "securityGroups": [stack.group],
            "assignPublicIp": "DISABLED"}}
        [container] = call["overrides"]["containerOverrides"]
        assert {e["name"]: e["value"] for e in container["environment"]} == kwargs["environment"]
    # The tasks fetched the TLS files from the secret; both processes ended on StopTask.
    assert (stack.task_tls / "key.pem").read_text() == stack.pems["key"]
    assert len(fargate_tasks.processes) == 2
    assert all(p.poll() is not None for p in fargate_tasks.processes.values())
    assert ecs.list_tasks(cluster=stack.cluster_arn, desiredStatus="RUNNING")["taskArns"] == []

    # Task definitions: our image, roles and log group; deregistered on close.
    assert set(definitions) == {"scheduler", "worker"}
    for described in definitions.values():
        definition = described["taskDefinition"]
        [container] = definition["containerDefinitions"]
        assert container["image"] == STACK["image"]
        assert container["logConfiguration"]["options"]["awslogs-group"] == STACK["log_group"]
        assert definition["taskRoleArn"] == STACK["task_role_arn"]
        assert definition["executionRoleArn"] == STACK["execution_role_arn"]
        assert definition["requiresCompatibilities"] == ["FARGATE"]
        assert {"key": "project", "value": "preassign"} in described["tags"]
    assert stack.active_task_definitions() == []

    # Nothing created, nothing swept: no security group, role or ECS cluster of its own.
    assert {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]} == (
        groups_before
    )
    assert [r["RoleName"] for r in stack.iam.list_roles()["Roles"]
            if r["RoleName"].startswith("dask-")] == []
    assert sorted(ecs.list_clusters()["clusterArns"]) == sorted([stack.cluster_arn, stale])


def test_exit_hook_runs_while_requests_still_work() -> None:
    # _close_at_exit's premise: its callback runs before Python shuts down the thread pools
    # that aiobotocore (and so FargateCluster.close) needs; a plain atexit callback does not.
    code = (
        "import atexit, concurrent.futures\n"
        "from preassign import cluster as pc\n"
        "def request():\n"
        "    with concurrent.futures.ThreadPoolExecutor(1) as pool:\n"
        "        return pool.submit(lambda: 'request sent').result()\n"
        "class Cluster:\n"
        "    status, name = 'running', 'demo'\n"
        "    def close(self):\n"
        "        print('hook:', request(), flush=True)\n"
        "def plain():\n"
        "    try:\n"
        "        request()\n"
        "    except RuntimeError as e:\n"
        "        print('atexit:', e, flush=True)\n"
        "atexit.register(plain)\n"
        "pc._close_at_exit(Cluster())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "hook: request sent",
        "atexit: cannot schedule new futures after interpreter shutdown",
    ]
    assert "Closing the Fargate cluster demo left open at exit" in done.stderr


def test_make_certs_refuses_to_overwrite(tmp_path: Path) -> None:
    _make_certs(tmp_path / "tls")
    again = subprocess.run([str(MAKE_CERTS), "--dir", str(tmp_path / "tls")],
                           capture_output=True, text=True)
    assert again.returncode == 1
    assert "pass --force" in again.stderr
    for name in ("ca", "cert", "key"):
        assert stat.S_IMODE((tmp_path / "tls" / f"{name}.pem").stat().st_mode) == 0o600


# ----------------------------------------------------------------------------- open_client


def _worker_pids(client: distributed.Client) -> list[int]:
    return list(client.run(os.getpid).values())


def test_open_client_local_closes_everything_on_exception() -> None:
    spec = ClusterSpec("local", workers=1, threads_per_worker=1, memory_limit="1GiB",
                       adapt=(1, 2))
    with pytest.raises(RuntimeError, match="boom"):
        with open_client(spec) as client:
            cluster = client.cluster
            assert isinstance(cluster, distributed.LocalCluster)
            assert cluster._adaptive is not None
            pids = _worker_pids(client)
            assert len(pids) == 1 and pids[0] != os.getpid()
            assert client.submit(sum, [1, 2]).result() == 3
            raise RuntimeError("boom")
    assert client.status == "closed"
    assert cluster.status == Status.closed
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(pids[0])


def test_open_client_keep_open_then_close_client() -> None:
    spec = ClusterSpec("local", workers=1, threads_per_worker=1, memory_limit="1GiB")
    with open_client(spec, keep_open=True) as client:
        pass
    try:
        assert client.status == "running"
        assert client.submit(sum, [2, 3]).result() == 5
    finally:
        cluster = client.cluster
        close_client(client)
    assert client.status == "closed"
    assert cluster.status == Status.closed


@pytest.fixture(scope="module")
def external_cluster() -> Iterator[distributed.LocalCluster]:
    """A cluster someone else runs; the tests must leave it running."""
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
        host="127.0.0.1", dashboard_address=None,
    ) as cluster:
        yield cluster


def test_open_client_to_a_running_scheduler_leaves_it_running(
    external_cluster: distributed.LocalCluster,
) -> None:
    address = external_cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    with open_client(ClusterSpec(address)) as client:
        assert client.cluster is None
        assert client.submit(sum, [4, 5]).result() == 9
    assert client.status == "closed"
    assert external_cluster.status == Status.running
    with distributed.Client(address) as other:
        assert other.submit(sum, [1, 1]).result() == 2


def test_open_client_to_an_unreachable_scheduler() -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(OSError, match=f"could not connect to the Dask scheduler at {address}"):
        with open_client(ClusterSpec(address, connect_timeout=1)):
            pass


def test_open_client_needs_tls_files_for_fargate(stack_config: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"TLS file\(s\) not found: tls_ca_file .*"
                                                r"cluster/tls/make-certs.sh"):
        with open_client(ClusterSpec("fargate", config_path=stack_config)):
            pass


def _tampered_get_versions(monkeypatch: pytest.MonkeyPatch, edit) -> None:
    original = distributed.Client.get_versions

    def get_versions(self, check=False, packages=None):
        versions = original(self, check=check, packages=packages)
        edit(versions)
        return versions

    monkeypatch.setattr(distributed.Client, "get_versions", get_versions)


def test_version_mismatch_on_a_worker_is_refused(
    external_cluster: distributed.LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    def older_pandas(versions: dict) -> None:
        for info in versions["workers"].values():
            info["packages"]["pandas"] = "2.2.3"

    _tampered_get_versions(monkeypatch, older_pandas)
    with pytest.raises(ClusterVersionMismatch) as info:
        with open_client(ClusterSpec(external_cluster.scheduler_address)):
            pytest.fail("the block must not run")
    error = info.value
    import pandas

    assert (error.package, error.client_version, error.remote_version) == (
        "pandas", pandas.__version__, "2.2.3")
    assert error.where.startswith("worker tcp://127.0.0.1:")
    assert "requirements.lock" in str(error)
    assert external_cluster.status == Status.running


def test_version_mismatch_closes_a_cluster_we_started(monkeypatch: pytest.MonkeyPatch) -> None:
    def other_dask(versions: dict) -> None:
        versions["scheduler"]["packages"]["dask"] = "2025.1.0"

    _tampered_get_versions(monkeypatch, other_dask)
    started: list[distributed.LocalCluster] = []
    original = pc._start_local_cluster
    monkeypatch.setattr(pc, "_start_local_cluster", lambda s: started.append(original(s))
                        or started[-1])
    spec = ClusterSpec("local", workers=1, threads_per_worker=1, memory_limit="1GiB")
    with pytest.raises(ClusterVersionMismatch, match=r"dask differs .* and the scheduler "
                                                     r"\(2025.1.0\)"):
        with open_client(spec):
            pytest.fail("the block must not run")
    assert started[0].status == Status.closed


def _versions(client: dict, scheduler: dict, workers: dict[str, dict]) -> dict:
    return {
        "client": {"packages": client},
        "scheduler": {"packages": scheduler},
        "workers": {addr: {"packages": p} for addr, p in workers.items()},
    }


BASE = {"python": "3.11.7.final.0", "dask": "2026.8.0", "distributed": "2026.8.0",
        "pandas": "3.1.1", "numpy": "2.4.6", "pyarrow": "26.0.1", "cloudpickle": "3.1.2",
        "msgpack": "1.2.4", "preassign": "0.1.0"}


@pytest.mark.parametrize(
    ("scheduler", "worker", "expected"),
    [
        ({}, {}, None),
        ({}, {"python": "3.11.14.final.0"}, None),
        ({"lz4": "4.0"}, {}, None),
        ({}, {"python": "3.12.1.final.0"}, ("python", "3.11", "3.12", "worker tls://w:1")),
        ({"distributed": "2026.7.0"}, {}, ("distributed", "2026.8.0", "2026.7.0",
                                           "the scheduler")),
        ({}, {"pyarrow": None}, ("pyarrow", "26.0.1", None, "worker tls://w:1")),
        ({}, {"preassign": "0.2.0"}, ("preassign", "0.1.0", "0.2.0", "worker tls://w:1")),
    ],
    ids=["same", "python-patch", "other-package", "python-minor", "distributed",
         "missing-pyarrow", "preassign"],
)
def test_compare_versions(scheduler: dict, worker: dict, expected: tuple | None) -> None:
    versions = _versions(BASE, {**BASE, **scheduler}, {"tls://w:1": {**BASE, **worker}})
    if expected is None:
        pc._compare_versions(versions)
        return
    with pytest.raises(ClusterVersionMismatch) as info:
        pc._compare_versions(versions)
    error = info.value
    assert (error.package, error.client_version, error.remote_version, error.where) == expected


def test_compare_versions_skips_preassign_from_a_source_tree() -> None:
    client = {**BASE, "preassign": None}
    pc._compare_versions(_versions(client, BASE, {"tls://w:1": BASE}))
