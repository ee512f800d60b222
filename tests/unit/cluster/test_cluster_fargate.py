"""Tests of preassign.cluster.fargate: FargateCluster's arguments, the task commands.

No AWS: a moto server stands in for ECS, EC2, IAM and Secrets Manager, and each Fargate
task RunTask starts is played by a local process running the task's command.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed.core import Status
from distributed.security import Security

from preassign.cluster import (
    CONFIG_ENV_VAR,
    ClusterSpec,
    MissingFileError,
    build_task_commands,
    fargate_kwargs,
    open_client,
)
from preassign.errors import UsageError
from tests.support.cluster import (
    ENTRYPOINT,
    REPO,
    STACK,
    VENV_BIN,
    free_port,
    make_certs,
    stop_process,
)

# ----------------------------------------------------------------------------- defaults


def test_bad_value_in_defaults_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("fargate:\n  worker_cpu: 1000\n")
    message = r"worker_cpu must be a Fargate CPU size.*bad.yaml"
    with pytest.raises(ValueError, match=message) as info:
        fargate_kwargs(ClusterSpec("fargate", config_path=path))
    assert isinstance(info.value, UsageError)


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
        "scheduler_extra_args": ["--port", "8786", "--dashboard-address", "127.0.0.1:8787",
                                 *tls_args],
        "scheduler_task_definition_arn": STACK["scheduler_task_definition_arn"],
        "worker_task_definition_arn": STACK["worker_task_definition_arn"],
        "scheduler_task_kwargs": {"enableExecuteCommand": False},
        "worker_cpu": 1024,
        "worker_mem": 4096,
        "worker_nthreads": 1,
        "worker_extra_args": [
            "--worker-port", "8788", "--nanny-port", "8789", "--no-dashboard",
            "--dashboard-address", "127.0.0.1:0", *tls_args
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
    monkeypatch.setenv(CONFIG_ENV_VAR, str(stack_config))
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
    # The dashboard listens on the task's loopback only; no ECS Exec unless asked for.
    args = kwargs["scheduler_extra_args"]
    assert args[args.index("--dashboard-address") + 1] == "127.0.0.1:8787"
    assert kwargs["scheduler_task_kwargs"] == {"enableExecuteCommand": False}
    assert "--no-dashboard" in kwargs["worker_extra_args"]
    # The stack's task definitions: nothing is registered, so nobody needs
    # ecs:RegisterTaskDefinition on "*".
    assert kwargs["scheduler_task_definition_arn"] == STACK["scheduler_task_definition_arn"]
    assert kwargs["worker_task_definition_arn"] == STACK["worker_task_definition_arn"]


def test_fargate_kwargs_dashboard_off_and_exec_on(stack_config: Path) -> None:
    kwargs = fargate_kwargs(ClusterSpec("fargate", dashboard=False, enable_exec=True,
                                        config_path=stack_config))
    # The HTTP server (/info, /metrics) runs without the dashboard too: still loopback.
    assert kwargs["scheduler_extra_args"][:5] == [
        "--port", "8786", "--no-dashboard", "--dashboard-address", "127.0.0.1:8787"]
    assert kwargs["scheduler_task_kwargs"] == {"enableExecuteCommand": True}


def test_fargate_kwargs_refuse_to_run_without_the_stack() -> None:
    with pytest.raises(ValueError) as info:
        fargate_kwargs(ClusterSpec("fargate"))
    assert isinstance(info.value, UsageError)
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
        ("scheduler_task_definition_arn", "SchedulerTaskDefinitionArn"),
        ("worker_task_definition_arn", "WorkerTaskDefinitionArn"),
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
    with pytest.raises(ValueError, match=message) as info:
        fargate_kwargs(ClusterSpec("fargate", config_path=stack_config, **kwargs))
    assert isinstance(info.value, UsageError)


def test_fargate_kwargs_needs_a_fargate_spec() -> None:
    with pytest.raises(ValueError, match="kind 'fargate', got 'local'") as info:
        fargate_kwargs(ClusterSpec("local"))
    assert isinstance(info.value, UsageError)


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
        "scheduler": ["dask-scheduler", "--idle-timeout", "1 hour", "--port", "8786",
                      "--dashboard-address", "127.0.0.1:8787", *tls],
        "worker": [
            "dask-worker", "tls://10.0.1.23:8786", "--name", "0", "--nthreads", "1",
            "--memory-limit", "4GB", "--death-timeout", "60",
            "--worker-port", "8788", "--nanny-port", "8789", "--no-dashboard",
            "--dashboard-address", "127.0.0.1:0", *tls,
        ],
    }


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """One moto server on 127.0.0.1 for the module (AWS APIs only; nothing leaves the host)."""
    pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
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
    tls_dir = tmp_path / "made" / "tasks"
    make_certs(tmp_path / "made")
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
        import moto.ecs.responses as ecs_responses
        from moto.moto_api import state_manager

        self.calls: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []  # the RunTask requests as sent
        responses = ecs_responses.EC2ContainerServiceResponse
        run_task_response = responses.run_task

        def record(response_self: Any) -> Any:
            self.requests.append(json.loads(response_self.body))
            return run_task_response(response_self)

        monkeypatch.setattr(responses, "run_task", record)
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
                stop_process(process)
            return task

        monkeypatch.setattr(backend, "run_task", run)
        monkeypatch.setattr(backend, "stop_task", stop)
        monkeypatch.setattr(ecs_models, "random_private_ip", lambda *a, **k: "127.0.0.1")
        # Tasks stay RUNNING until stopped, as on AWS (moto's default walks them to STOPPED).
        state_manager.set_transition("ecs::task", {"progression": "manual", "times": 10**9})
        self._state_manager = state_manager

    def close(self) -> None:
        for process in self.processes.values():
            stop_process(process)
        self._state_manager.unset_transition("ecs::task")


class _FakeStack:
    """The CloudFormation stack's resources in moto, and a defaults file pointing at them.

    Like the stack, it registers the scheduler and worker task definitions (container names
    dask-scheduler and dask-worker, the stack's image, roles and sizes); FargateCluster gets
    their ARNs and registers none of its own.
    """

    def __init__(self, tmp_path: Path, *, worker: tuple[int, int] = (1024, 4096),
                 scheduler: tuple[int, int] = (1024, 4096)) -> None:
        self.laptop_tls = tmp_path / "laptop-tls"
        make_certs(self.laptop_tls)
        # The secret holds the tasks' server identity; the laptop keeps a client identity.
        self.pems = {n: (self.laptop_tls / "tasks" / f"{n}.pem").read_text()
                     for n in ("ca", "cert", "key")}
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
        self.ports = {n: free_port() for n in ("scheduler_port", "worker_port", "nanny_port")}
        self.task_tls = tmp_path / "task-tls"
        self.definitions = {
            role: self._register(role, *size)
            for role, size in (("scheduler", scheduler), ("worker", worker))
        }
        self.config = tmp_path / "cluster.yaml"
        self.config.write_text(yaml.safe_dump({
            "fargate": {
                **STACK, "cluster_arn": self.cluster_arn, "vpc": vpc, "subnets": [self.subnet],
                "security_groups": [self.group], "tls_secret_arn": secret["ARN"],
                "task_tls_dir": str(self.task_tls), **self.ports,
                "scheduler_task_definition_arn": self.definitions["scheduler"],
                "worker_task_definition_arn": self.definitions["worker"],
            },
            "tls": {name: str(self.laptop_tls / f"{key}.pem")
                    for name, key in (("ca_file", "ca"), ("cert", "cert"), ("key", "key"))},
        }))

    def _register(self, role: str, cpu: int, memory: int) -> str:
        return self.ecs.register_task_definition(
            family=f"preassign-dask-{role}", networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"], cpu=str(cpu), memory=str(memory),
            taskRoleArn=STACK["task_role_arn"], executionRoleArn=STACK["execution_role_arn"],
            runtimePlatform={"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
            containerDefinitions=[{
                "name": f"dask-{role}", "image": STACK["image"], "essential": True,
                "cpu": cpu, "memory": memory,
                "readonlyRootFilesystem": True,
                "logConfiguration": {"logDriver": "awslogs", "options": {
                    "awslogs-group": STACK["log_group"], "awslogs-region": "eu-west-1",
                    "awslogs-stream-prefix": "dask"}},
            }],
            tags=[{"key": "project", "value": "preassign"}],
        )["taskDefinition"]["taskDefinitionArn"]

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
    definitions_before = sorted(stack.active_task_definitions())
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
    # FargateCluster registered no task definition: it runs the stack's.
    assert sorted(stack.active_task_definitions()) == definitions_before
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
    # Each RunTask names the stack's task definition; ECS Exec stays off.
    assert [r["taskDefinition"] for r in fargate_tasks.requests] == [
        stack.definitions["scheduler"], stack.definitions["worker"]]
    assert fargate_tasks.requests[0]["enableExecuteCommand"] is False
    # The tasks fetched the TLS files from the secret; both processes ended on StopTask.
    assert (stack.task_tls / "key.pem").read_text() == stack.pems["key"]
    assert len(fargate_tasks.processes) == 2
    assert all(p.poll() is not None for p in fargate_tasks.processes.values())
    assert ecs.list_tasks(cluster=stack.cluster_arn, desiredStatus="RUNNING")["taskArns"] == []

    # Task definitions: the stack's image, roles and log group; still registered after
    # close (they belong to the stack, not to the run).
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
    assert sorted(stack.active_task_definitions()) == definitions_before

    # Nothing created, nothing swept: no security group, role or ECS cluster of its own.
    assert {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]} == (
        groups_before
    )
    assert [r["RoleName"] for r in stack.iam.list_roles()["Roles"]
            if r["RoleName"].startswith("dask-")] == []
    assert sorted(ecs.list_clusters()["clusterArns"]) == sorted([stack.cluster_arn, stale])


@pytest.mark.filterwarnings("ignore:Creating your cluster is taking a surprisingly long time")
def test_run_task_commands_away_from_the_defaults(
    aws: dict[str, str], tmp_path: Path, fargate_tasks: _TasksAsProcesses
) -> None:
    # build_task_commands builds the commands itself; FargateCluster's RunTask requests, as
    # moto records them, must carry exactly those also for other threads, memory and timeout.
    import distributed

    fake_stack = _FakeStack(tmp_path, worker=(2048, 5120))
    spec = ClusterSpec("fargate", workers=1, threads_per_worker=2, worker_cpu=2048,
                       worker_mem=5120, idle_timeout="90 minutes",
                       config_path=fake_stack.config)
    with open_client(spec) as client:
        [worker] = client.scheduler_info()["workers"].values()
        assert worker["nthreads"] == 2
        assert worker["memory_limit"] == min(5_000_000_000, distributed.system.MEMORY_LIMIT)
        assert client.submit(sum, [1, 2]).result() == 3
    expected = build_task_commands(spec, scheduler_ip="127.0.0.1")
    assert expected["scheduler"][:3] == ["dask-scheduler", "--idle-timeout", "90 minutes"]
    assert expected["worker"][4:8] == ["--nthreads", "2", "--memory-limit", "5GB"]
    calls = fargate_tasks.calls
    assert [c["overrides"]["containerOverrides"][0]["command"] for c in calls] == [
        expected["scheduler"], expected["worker"]
    ]
    assert [c["overrides"]["containerOverrides"][0]["name"] for c in calls] == [
        "dask-scheduler", "dask-worker"
    ]
    assert sorted(fake_stack.active_task_definitions()) == sorted(fake_stack.definitions.values())


@pytest.mark.parametrize(
    ("spec_kwargs", "message"),
    [
        ({"worker_cpu": 2048, "worker_mem": 8192},
         r"worker cpu is '1024' in .*preassign-dask-worker.*the settings say '2048'"),
        ({"image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/preassign:other"},
         r"scheduler image is .*preassign:3f2c1ab.*preassign:other"),
        ({"task_role_arn": "arn:aws:iam::123456789012:role/someone-elses"},
         r"taskRoleArn is .*TaskRole-Y.*someone-elses"),
    ],
    ids=["worker-size", "image", "task-role"],
)
def test_task_definitions_that_differ_from_the_settings_are_refused(
    fake_stack: _FakeStack, fargate_tasks: _TasksAsProcesses, spec_kwargs: dict, message: str
) -> None:
    spec = ClusterSpec("fargate", workers=1, config_path=fake_stack.config, **spec_kwargs)
    with pytest.raises(UsageError, match=message) as info:
        with open_client(spec):
            pytest.fail("the block must not run")
    assert "Redeploy the stack" in str(info.value)
    assert fargate_tasks.calls == []  # refused before any task started


def test_a_deregistered_task_definition_is_refused(
    fake_stack: _FakeStack, fargate_tasks: _TasksAsProcesses
) -> None:
    fake_stack.ecs.deregister_task_definition(taskDefinition=fake_stack.definitions["worker"])
    spec = ClusterSpec("fargate", workers=1, config_path=fake_stack.config)
    with pytest.raises(UsageError, match=r"worker status is 'INACTIVE'"):
        with open_client(spec):
            pytest.fail("the block must not run")
    assert fargate_tasks.calls == []


def test_check_task_definitions_reports_an_unknown_arn(fake_stack: _FakeStack) -> None:
    from preassign.cluster.fargate import check_task_definitions
    from preassign.errors import InfrastructureError

    kwargs = fargate_kwargs(ClusterSpec("fargate", config_path=fake_stack.config))
    kwargs["worker_task_definition_arn"] = (
        "arn:aws:ecs:eu-west-1:123456789012:task-definition/nope:1")
    with pytest.raises(InfrastructureError, match="cannot describe the worker task definition"):
        check_task_definitions(kwargs)


def test_exit_hook_runs_while_requests_still_work() -> None:
    # _close_at_exit's premise: its callback runs before Python shuts down the thread pools
    # that aiobotocore (and so FargateCluster.close) needs; a plain atexit callback does not.
    code = (
        "import atexit, concurrent.futures\n"
        "from preassign.cluster import fargate\n"
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
        "fargate._close_at_exit(Cluster())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "hook: request sent",
        "atexit: cannot schedule new futures after interpreter shutdown",
    ]
    assert "Closing the Fargate cluster demo left open at exit" in done.stderr


def test_open_client_needs_tls_files_for_fargate(stack_config: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"TLS file\(s\) not found: tls_ca_file .*"
                                                r"cluster/tls/make-certs.sh") as info:
        with open_client(ClusterSpec("fargate", config_path=stack_config)):
            pass
    assert isinstance(info.value, MissingFileError)
    assert isinstance(info.value, UsageError)

