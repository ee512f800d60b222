"""ECS Fargate through dask-cloudprovider's ``FargateCluster``: arguments, commands, cleanup.

:func:`fargate_kwargs` builds FargateCluster's keyword arguments, and the security
decisions live there:

* Tasks get private IPs only and the security group of the CloudFormation stack
  (``cluster/cloudformation.yaml``), whose ingress comes only from itself (and, on the
  scheduler port only, from an optional client group). Left alone, FargateCluster creates
  a group open to 0.0.0.0/0 and ::/0 on 8786-8787, plus its own roles and ECS cluster; we
  refuse to start without the stack's.
* The tasks run the stack's own task definitions (``scheduler_task_definition_arn``,
  ``worker_task_definition_arn``): people need no ``ecs:RegisterTaskDefinition`` (which
  cannot be scoped) and can run only the stack's image with the stack's roles.
  :func:`check_task_definitions` compares them with the settings before anything starts.
* The scheduler's dashboard (logs, stacks, task names) listens on 127.0.0.1 inside its
  task only, or not at all; it is reached by Session Manager port forwarding.
* Client, scheduler and workers talk mutual TLS. The scheduler and worker commands get
  ``--tls-ca-file/--tls-cert/--tls-key`` through ``scheduler_extra_args`` and
  ``worker_extra_args``; the files are written inside each task by the image's entry
  point (``cluster/entrypoint.sh``), which reads them from a Secrets Manager secret with the
  task role, so no key travels through RunTask parameters, CloudTrail or the image. The
  client side gets ``security=`` a :class:`distributed.security.Security` built from this
  machine's copy of the same files.
* ``skip_cleanup=True``: otherwise every FargateCluster start sweeps the whole account and
  deletes ECS clusters, task definitions, security groups and roles tagged by
  dask-cloudprovider that it thinks are stale, which can break a concurrent run.
* The scheduler's idle timeout counts running tasks, not connected clients. One hour keeps
  a notebook's cluster across a long pause and still stops a forgotten one within the
  hour (workers follow 60 s later through ``--death-timeout``).
* distributed 2026.6 removed the ``dask-scheduler`` and ``dask-worker`` executables, which
  FargateCluster still runs. The image links both names to ``cluster/entrypoint.sh``, which
  runs ``dask scheduler`` / ``dask worker`` with the same arguments.
  :func:`build_task_commands` returns the exact commands the tasks run.

``dask_cloudprovider`` (and with it aiobotocore) is imported only when a cluster starts.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
import warnings
from collections.abc import Mapping
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any

from distributed.core import Status
from distributed.security import Security

from ..errors import InfrastructureError, UsageError
from .config import (
    TLS_FILE_NAMES,
    ClusterSpec,
    check_stack_settings,
    resolve_settings,
    tls_paths,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PROJECT_TAGS",
    "TLS_DIR_ENV_VAR",
    "TLS_SECRET_ENV_VAR",
    "build_task_commands",
    "check_task_definitions",
    "client_security",
    "fargate_kwargs",
    "shutdown_cluster",
    "start_fargate_cluster",
]

TLS_SECRET_ENV_VAR = "PREASSIGN_TLS_SECRET_ARN"
"""Set in every task: the secret ``cluster/entrypoint.sh`` reads the TLS files from."""

TLS_DIR_ENV_VAR = "PREASSIGN_TLS_DIR"
"""Set in every task: the directory ``cluster/entrypoint.sh`` writes the TLS files to."""

PROJECT_TAGS = MappingProxyType({"project": "preassign"})
"""Tags put on every task definition and task, before the user's own."""

DASHBOARD_ADDRESS = "127.0.0.1:8787"
"""Where the scheduler's dashboard listens inside its task: loopback only."""

# The container names RunTask's overrides use (dask-cloudprovider names them "dask-<type>").
_CONTAINER_NAMES = {"scheduler": "dask-scheduler", "worker": "dask-worker"}

# dask-cloudprovider's TLS consistency check compares type(arg) to the string "str", so it
# warns on every TLS-configured cluster; the match is on the start of its message.
_BOGUS_TLS_WARNING = "the cluster was instructed to connect to the scheduler using tls"

# What dask-cloudprovider's Worker task passes as --death-timeout (seconds).
_WORKER_DEATH_TIMEOUT = "60"


def client_security(settings: Mapping[str, Any]) -> Security:
    """Return the client side of mutual TLS, from this machine's TLS files.

    Used for Fargate clusters and for ``tls://`` scheduler addresses.

    Args:
        settings: Resolved settings of a ``fargate`` or ``tls://`` cluster.

    Returns:
        A :class:`~distributed.security.Security` that requires encryption.
    """
    paths = tls_paths(settings)
    return Security(
        require_encryption=True,
        tls_ca_file=paths["tls_ca_file"],
        tls_client_cert=paths["tls_cert"],
        tls_client_key=paths["tls_key"],
    )


def fargate_kwargs(spec: ClusterSpec) -> dict[str, Any]:
    """Build the keyword arguments :func:`~preassign.cluster.open_client` gives FargateCluster.

    Args:
        spec: A spec with ``kind`` ``"fargate"`` or None; unset fields come from the
            ``fargate`` and ``tls`` sections of the defaults file.

    Returns:
        The exact keyword arguments, secure by default: private IPs, the stack's security
        groups, roles, ECS cluster and log group, mutual TLS, no account-wide cleanup.

    Raises:
        UsageError: If a setting is invalid or one that only the CloudFormation stack can
            provide is missing (FargateCluster would otherwise create its own, including a
            security group open to the internet).
    """
    if spec.kind not in (None, "fargate"):
        raise UsageError(f"fargate_kwargs needs a spec of kind 'fargate', got {spec.kind!r}")
    s = resolve_settings(dataclasses.replace(spec, kind="fargate"))
    check_stack_settings(s)
    adapt = s["adapt"]
    n_workers = adapt[0] if adapt and spec.workers is None else s["workers"]
    nthreads = s["threads_per_worker"] or max(s["worker_cpu"] // 1024, 1)
    tls_dir = PurePosixPath(s["task_tls_dir"])
    # --no-dashboard drops only the bokeh pages: distributed still serves /info (logs, call
    # stacks, worker details), /json and /metrics on the dashboard address, by default on
    # every interface. So the address is always loopback.
    dashboard = ["--dashboard-address", DASHBOARD_ADDRESS]
    if not s["dashboard"]:
        dashboard = ["--no-dashboard", *dashboard]
    task_tls_args = [
        "--tls-ca-file",
        str(tls_dir / TLS_FILE_NAMES["ca"]),
        "--tls-cert",
        str(tls_dir / TLS_FILE_NAMES["cert"]),
        "--tls-key",
        str(tls_dir / TLS_FILE_NAMES["key"]),
    ]
    return {
        "image": s["image"],
        "cpu_architecture": s["cpu_architecture"],
        "region_name": s["region"],
        "cluster_arn": s["cluster_arn"],
        "vpc": s["vpc"],
        "subnets": list(s["subnets"]),
        "security_groups": list(s["security_groups"]),
        "fargate_use_private_ip": True,
        "fargate_spot": s["fargate_spot"],
        "execution_role_arn": s["execution_role_arn"],
        "task_role_arn": s["task_role_arn"],
        "cloudwatch_logs_group": s["log_group"],
        "n_workers": n_workers,
        "scheduler_cpu": s["scheduler_cpu"],
        "scheduler_mem": s["scheduler_mem"],
        "scheduler_port": s["scheduler_port"],
        "scheduler_timeout": s["idle_timeout"],
        # --port first: dask-cloudprovider reads the port from index 1 of these args.
        "scheduler_extra_args": ["--port", str(s["scheduler_port"]), *dashboard,
                                 *task_tls_args],
        # The stack's task definitions: FargateCluster registers none of its own.
        "scheduler_task_definition_arn": s["scheduler_task_definition_arn"],
        "worker_task_definition_arn": s["worker_task_definition_arn"],
        # Passed into RunTask: ECS Exec (Session Manager) on the scheduler only when asked.
        "scheduler_task_kwargs": {"enableExecuteCommand": bool(s["enable_exec"])},
        "worker_cpu": s["worker_cpu"],
        "worker_mem": s["worker_mem"],
        "worker_nthreads": nthreads,
        "worker_extra_args": [
            "--worker-port",
            str(s["worker_port"]),
            "--nanny-port",
            str(s["nanny_port"]),
            # A worker's dashboard shows what the scheduler's does, per worker (the image
            # does have bokeh, for the scheduler's loopback-only dashboard). Its HTTP server
            # (/metrics, /health) still runs, so it listens on loopback, any port.
            "--no-dashboard",
            "--dashboard-address",
            "127.0.0.1:0",
            *task_tls_args,
        ],
        "environment": {
            TLS_SECRET_ENV_VAR: s["tls_secret_arn"],
            TLS_DIR_ENV_VAR: str(tls_dir),
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        },
        "tags": {**PROJECT_TAGS, **dict(s["tags"])},
        "skip_cleanup": True,
        "security": client_security(s),
    }


def build_task_commands(
    spec: ClusterSpec, *, scheduler_ip: str = "SCHEDULER_PRIVATE_IP", worker_name: int = 0
) -> dict[str, list[str]]:
    """Return the commands the Fargate scheduler and worker tasks run.

    FargateCluster sends each task's command with RunTask, as the container override that
    replaces the command of the task definition. This builds the same lists from
    :func:`fargate_kwargs`, the way dask-cloudprovider's ``Scheduler`` and ``Worker`` task
    classes (``dask_cloudprovider/aws/ecs.py``) do; a test starts FargateCluster against
    moto and holds the two equal. The image's entry point runs them with
    ``dask-scheduler`` and ``dask-worker`` resolved to ``dask scheduler`` and
    ``dask worker``.

    Args:
        spec: A Fargate spec, as for :func:`fargate_kwargs`.
        scheduler_ip: The scheduler task's private IP, known only once it runs; it is
            part of the worker command.
        worker_name: The worker's name; FargateCluster numbers its workers from 0.

    Returns:
        ``{"scheduler": [...], "worker": [...]}``.

    Raises:
        UsageError: As :func:`fargate_kwargs`.

    Examples:
        >>> build_task_commands(ClusterSpec("fargate"))["worker"][:2]  # doctest: +SKIP
        ['dask-worker', 'tls://SCHEDULER_PRIVATE_IP:8786']
    """
    kwargs = fargate_kwargs(spec)
    protocol = "tls" if kwargs["security"].require_encryption else "tcp"
    scheduler = [
        "dask-scheduler",
        "--idle-timeout",
        str(kwargs["scheduler_timeout"]),
        *kwargs["scheduler_extra_args"],
    ]
    worker = [
        "dask-worker",
        f"{protocol}://{scheduler_ip}:{kwargs['scheduler_port']}",
        "--name",
        str(worker_name),
        "--nthreads",
        str(kwargs["worker_nthreads"]),
        # Whole GB, rounded down, as dask-cloudprovider writes it (hence worker_mem >= 1024).
        "--memory-limit",
        f"{kwargs['worker_mem'] // 1024}GB",
        "--death-timeout",
        _WORKER_DEATH_TIMEOUT,
        *kwargs["worker_extra_args"],
    ]
    return {"scheduler": scheduler, "worker": worker}


def check_task_definitions(kwargs: Mapping[str, Any], *, ecs: Any = None) -> None:
    """Check the stack's task definitions against the settings, before any task starts.

    FargateCluster runs the given task definitions as they are, overriding only the
    command and environment: their size, image, roles and container names must be the
    ones the settings describe, or the workers would get a ``--memory-limit`` above their
    task's memory, or run another image than the one the versions are checked against.

    Args:
        kwargs: The keyword arguments from :func:`fargate_kwargs`.
        ecs: A botocore ``ecs`` client (tests); default one for the ARNs' region.

    Raises:
        UsageError: Listing every difference and how to resolve it.
        InfrastructureError: If a task definition cannot be described.
    """
    arns = {"scheduler": kwargs["scheduler_task_definition_arn"],
            "worker": kwargs["worker_task_definition_arn"]}
    if ecs is None:
        import botocore.session

        region = kwargs.get("region_name") or arns["scheduler"].split(":")[3] or None
        ecs = botocore.session.get_session().create_client("ecs", region_name=region)
    problems: list[str] = []
    for role, arn in arns.items():
        try:
            definition = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
        except Exception as e:  # ClientError, no credentials, endpoint unreachable
            error = (getattr(e, "response", None) or {}).get("Error", {})
            raise InfrastructureError(
                f"cannot describe the {role} task definition {arn} "
                f"({error.get('Code', type(e).__name__)}: {error.get('Message', e)}); check "
                f"{role}_task_definition_arn against the stack output and your AWS access"
            ) from None
        problems += _task_definition_problems(role, arn, definition, kwargs)
    if problems:
        raise UsageError(
            "the stack's task definitions do not match the cluster settings: "
            + "; ".join(problems)
            + ". Redeploy the stack with the sizes and ImageTag you want (SchedulerCpu, "
            "SchedulerMemory, WorkerCpu, WorkerMemory, ImageTag) and copy its outputs into "
            "your cluster defaults file, or drop the options that differ"
        )


def _task_definition_problems(role: str, arn: str, definition: Mapping[str, Any],
                              kwargs: Mapping[str, Any]) -> list[str]:
    name = _CONTAINER_NAMES[role]
    containers = {c.get("name"): c for c in definition.get("containerDefinitions", [])}
    expected = {
        "status": ("ACTIVE", definition.get("status")),
        "cpu": (str(kwargs[f"{role}_cpu"]), str(definition.get("cpu"))),
        "memory": (str(kwargs[f"{role}_mem"]), str(definition.get("memory"))),
        "taskRoleArn": (kwargs["task_role_arn"], definition.get("taskRoleArn")),
        "executionRoleArn": (kwargs["execution_role_arn"], definition.get("executionRoleArn")),
        "cpuArchitecture": (kwargs["cpu_architecture"],
                            (definition.get("runtimePlatform") or {}).get("cpuArchitecture",
                                                                          "X86_64")),
        "image": (kwargs["image"], containers.get(name, {}).get("image")),
    }
    problems = [f"{role} {key} is {actual!r} in {arn}, the settings say {want!r}"
                for key, (want, actual) in expected.items() if want != actual]
    if name not in containers:
        problems.append(f"{arn} has no container named {name!r} (RunTask overrides that one)")
    if "FARGATE" not in definition.get("requiresCompatibilities", []):
        problems.append(f"{arn} is not a FARGATE task definition")
    return problems


def start_fargate_cluster(kwargs: Mapping[str, Any]) -> Any:
    """Start a FargateCluster that Python closes at exit should nobody close it before.

    The stack's task definitions are checked first (:func:`check_task_definitions`).

    Args:
        kwargs: The keyword arguments from :func:`fargate_kwargs`.

    Returns:
        The running ``dask_cloudprovider.aws.FargateCluster``.
    """
    from dask_cloudprovider.aws import FargateCluster

    check_task_definitions(kwargs)

    logger.info(
        "Starting a FargateCluster in %s with %d workers of %d CPU units / %d MiB",
        kwargs["cluster_arn"], kwargs["n_workers"], kwargs["worker_cpu"], kwargs["worker_mem"],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BOGUS_TLS_WARNING, category=UserWarning)
        cluster = FargateCluster(**kwargs)
    _close_at_exit(cluster)
    logger.info("FargateCluster scheduler at %s", cluster.scheduler_address)
    return cluster


def shutdown_cluster(cluster: Any) -> None:
    """Close a cluster: stop its tasks (the stack's task definitions stay registered).

    Args:
        cluster: A cluster started by :func:`start_fargate_cluster` or a LocalCluster.
    """
    cluster.close()


def _close_at_exit(cluster: Any) -> None:
    """Stop a Fargate cluster still open when Python exits (``keep_open=True``, no close).

    distributed's own exit hook for open clusters runs as a normal ``atexit`` callback,
    after Python has shut down the thread pools that aiobotocore needs for its requests, so
    its StopTask calls fail and the tasks run on until the idle timeout. Callbacks
    registered through ``threading._register_atexit`` run earlier, while requests still
    work (falling back to ``atexit`` where that private hook is missing).
    """

    def close_if_open() -> None:
        if cluster.status not in (Status.closing, Status.closed):
            logger.warning("Closing the Fargate cluster %s left open at exit", cluster.name)
            try:
                shutdown_cluster(cluster)
            except Exception as e:  # nothing left to report it to
                logger.warning("Closing the Dask cluster failed: %s", e)

    register = getattr(threading, "_register_atexit", atexit.register)
    try:
        register(close_if_open)
    except RuntimeError:  # already shutting down: nothing to register for
        pass
