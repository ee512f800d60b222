"""Getting a Dask client: on this machine, from a running scheduler, or on ECS Fargate.

Design
------
:func:`open_client` is the one way the CLI and the notebook get a
:class:`distributed.Client`. It takes a :class:`ClusterSpec`; every field left at ``None``
falls back to ``cluster/defaults.yaml`` (or the file named by ``PREASSIGN_CLUSTER_CONFIG``,
or the built-in copy :data:`BUILTIN_DEFAULTS` when the package is installed without the
repository). It starts or connects to the cluster, applies adaptive scaling, checks that
client, scheduler and workers run the same versions of the packages that matter, and closes
whatever it started when the ``with`` block ends, also on error.

Fargate runs go through dask-cloudprovider's ``FargateCluster``. :func:`fargate_kwargs`
builds its keyword arguments, and the security decisions live there:

* Tasks get private IPs only and the security group of the CloudFormation stack
  (``cluster/cloudformation.yaml``), whose ingress comes only from itself. Left alone,
  FargateCluster creates a group open to 0.0.0.0/0 and ::/0 on 8786-8787, plus its own
  roles and ECS cluster; we refuse to start without the stack's.
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
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import distributed
import yaml
from dask.utils import parse_bytes, parse_timedelta
from distributed.core import Status
from distributed.security import Security

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_DEFAULTS",
    "CONFIG_ENV_VAR",
    "ClusterSpec",
    "ClusterVersionMismatch",
    "build_task_commands",
    "check_versions",
    "close_client",
    "default_config_path",
    "fargate_kwargs",
    "load_defaults",
    "open_client",
    "parse_adapt",
]

CONFIG_ENV_VAR = "PREASSIGN_CLUSTER_CONFIG"
"""Environment variable naming a YAML file that replaces ``cluster/defaults.yaml``."""

TLS_SECRET_ENV_VAR = "PREASSIGN_TLS_SECRET_ARN"
"""Set in every task: the secret ``cluster/entrypoint.sh`` reads the TLS files from."""

TLS_DIR_ENV_VAR = "PREASSIGN_TLS_DIR"
"""Set in every task: the directory ``cluster/entrypoint.sh`` writes the TLS files to."""

TLS_FILE_NAMES = {"ca": "ca.pem", "cert": "cert.pem", "key": "key.pem"}
"""File names of the TLS material, the same on this machine and in the tasks."""

PROJECT_TAGS = MappingProxyType({"project": "preassign"})
"""Tags put on every task definition and task, before the user's own."""

VERSION_CHECKED_PACKAGES = (
    "python",
    "dask",
    "distributed",
    "cloudpickle",
    "msgpack",
    "pandas",
    "numpy",
    "pyarrow",
    "preassign",
)
"""Packages that must match between client, scheduler and workers (python as major.minor)."""

def _freeze(value: Any) -> Any:
    """Make nested dicts read-only, so the built-in defaults cannot be changed by accident."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


BUILTIN_DEFAULTS: Mapping[str, Any] = _freeze(
    {
        "kind": "local",
        "connect_timeout": 60,
        "local": {
            "workers": None,
            "threads_per_worker": 1,
            "memory_limit": "auto",
            "adapt": None,
        },
        "fargate": {
            "workers": 4,
            "threads_per_worker": None,
            "worker_cpu": 1024,
            "worker_mem": 4096,
            "scheduler_cpu": 1024,
            "scheduler_mem": 4096,
            "adapt": None,
            "idle_timeout": "1 hour",
            "image": None,
            "cpu_architecture": "X86_64",
            "fargate_spot": False,
            "region": None,
            "cluster_arn": None,
            "vpc": None,
            "subnets": [],
            "security_groups": [],
            "execution_role_arn": None,
            "task_role_arn": None,
            "log_group": None,
            "tls_secret_arn": None,
            "task_tls_dir": "/home/dask/.preassign/tls",
            "scheduler_port": 8786,
            "worker_port": 8788,
            "nanny_port": 8789,
            "tags": {},
        },
        "tls": {
            "ca_file": "~/.preassign/tls/ca.pem",
            "cert": "~/.preassign/tls/cert.pem",
            "key": "~/.preassign/tls/key.pem",
        },
    }
)
"""The contents of ``cluster/defaults.yaml``, used when that file is not there."""

# Fargate task sizes: CPU units -> allowed memory in MiB.
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html
_FARGATE_MEMORY: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}

# Where each ClusterSpec field lives in the defaults file.
_TLS_KEYS = {"tls_ca_file": "ca_file", "tls_cert": "cert", "tls_key": "key"}

# Which stack output supplies each Fargate setting that has no usable default.
_STACK_OUTPUTS = {
    "image": "RepositoryUri, plus ':<tag>'",
    "cluster_arn": "ClusterArn",
    "vpc": "VpcId",
    "subnets": "SubnetIds",
    "security_groups": "SecurityGroupId",
    "execution_role_arn": "ExecutionRoleArn",
    "task_role_arn": "TaskRoleArn",
    "log_group": "LogGroupName",
    "tls_secret_arn": "TlsSecretArn",
}

# dask-cloudprovider's weakref.finalize callbacks that deregister its task definitions.
_TASK_DEFINITION_CLEANUPS = {
    "_delete_scheduler_task_definition_arn",
    "_delete_worker_task_definition_arn",
}

# dask-cloudprovider's TLS consistency check compares type(arg) to the string "str", so it
# warns on every TLS-configured cluster; the match is on the start of its message.
_BOGUS_TLS_WARNING = "the cluster was instructed to connect to the scheduler using tls"


class ClusterVersionMismatch(RuntimeError):
    """Client, scheduler or a worker runs a different version of a key package.

    Attributes:
        package: The package name (``python`` is compared as major.minor).
        client_version: Its version on this machine, None when not installed.
        remote_version: Its version on the scheduler or worker, None when not installed.
        where: ``"the scheduler"`` or ``"worker <address>"``.
    """

    def __init__(
        self,
        package: str,
        client_version: str | None,
        remote_version: str | None,
        where: str,
    ) -> None:
        self.package = package
        self.client_version = client_version
        self.remote_version = remote_version
        self.where = where
        super().__init__(
            f"{package} differs between this machine ({client_version or 'not installed'}) "
            f"and {where} ({remote_version or 'not installed'}). Client, scheduler and "
            "workers must run the same versions: install this environment from "
            "requirements.lock (pip install --no-deps -r requirements.lock) and build the "
            "cluster image from the same lock (cluster/Dockerfile)."
        )


@dataclass(frozen=True)
class ClusterSpec:
    """Where to compute and how big; every ``None`` falls back to the defaults file.

    Only the fields that apply to ``kind`` may be set: ``memory_limit`` is for ``local``,
    the Fargate fields are for ``fargate``, the ``tls_*`` files are for ``fargate`` and
    ``tls://`` addresses. Setting another one is an error rather than silently ignored.

    Attributes:
        kind: ``"local"``, ``"fargate"`` or a scheduler address ``tcp://host:port`` /
            ``tls://host:port``.
        workers: Worker processes (local) or worker tasks (Fargate) to start.
        threads_per_worker: Threads per worker.
        memory_limit: Memory per local worker, a Dask size string such as ``"4GiB"``.
        worker_cpu: CPU per Fargate worker task, in Fargate CPU units (1024 = 1 vCPU).
        worker_mem: Memory per Fargate worker task, in MiB.
        adapt: ``(minimum, maximum)`` workers for adaptive scaling; see :func:`parse_adapt`.
        image: Scheduler and worker image (ECR URI with tag).
        scheduler_cpu: CPU of the Fargate scheduler task, in Fargate CPU units.
        scheduler_mem: Memory of the Fargate scheduler task, in MiB.
        idle_timeout: The scheduler exits after no task ran for this long (Dask duration).
        cpu_architecture: ``X86_64`` or ``ARM64``, matching the image.
        fargate_spot: Run worker tasks on Fargate Spot.
        region: AWS region; None uses AWS_REGION or the AWS profile.
        cluster_arn: Existing ECS cluster (stack output ClusterArn).
        vpc: VPC id of the subnets (stack output VpcId).
        subnets: Private subnet ids for the tasks (stack output SubnetIds).
        security_groups: Security group ids for the tasks (stack output SecurityGroupId).
        execution_role_arn: Role ECS uses to pull the image and write logs.
        task_role_arn: Role the scheduler and workers run as.
        log_group: CloudWatch Logs group name for task output.
        tls_secret_arn: Secrets Manager secret the tasks read their TLS files from.
        task_tls_dir: Directory inside the tasks where those files are written.
        scheduler_port: Scheduler TCP port in the tasks.
        worker_port: Worker TCP port in the tasks.
        nanny_port: Nanny TCP port in the tasks.
        tags: Extra tags on task definitions and tasks.
        tls_ca_file: This machine's CA certificate (PEM path, ``~`` expanded).
        tls_cert: This machine's client certificate (PEM path).
        tls_key: This machine's client key (PEM path).
        connect_timeout: Seconds to wait for the scheduler and for the first worker.
        config_path: Defaults file to use instead of PREASSIGN_CLUSTER_CONFIG /
            ``cluster/defaults.yaml``.
    """

    kind: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None
    worker_cpu: int | None = None
    worker_mem: int | None = None
    adapt: tuple[int, int] | None = None
    image: str | None = None
    scheduler_cpu: int | None = None
    scheduler_mem: int | None = None
    idle_timeout: str | None = None
    cpu_architecture: str | None = None
    fargate_spot: bool | None = None
    region: str | None = None
    cluster_arn: str | None = None
    vpc: str | None = None
    subnets: tuple[str, ...] | None = None
    security_groups: tuple[str, ...] | None = None
    execution_role_arn: str | None = None
    task_role_arn: str | None = None
    log_group: str | None = None
    tls_secret_arn: str | None = None
    task_tls_dir: str | None = None
    scheduler_port: int | None = None
    worker_port: int | None = None
    nanny_port: int | None = None
    tags: Mapping[str, str] | None = field(default=None, hash=False)
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float | None = None
    config_path: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        """Normalise list-like fields to tuples and check the values that were given."""
        if self.adapt is not None:
            object.__setattr__(self, "adapt", _as_adapt(self.adapt, "ClusterSpec.adapt"))
        for name in ("subnets", "security_groups"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.tags is not None:
            object.__setattr__(self, "tags", dict(self.tags))  # a copy: frozen means frozen
        given = _given_fields(self)
        _check_values(given, source="ClusterSpec")
        if self.kind is not None:
            _check_kind(self.kind)
            _check_fields_apply(self.kind, given)


def parse_adapt(text: str) -> tuple[int, int]:
    """Parse an adaptive-scaling range written ``MIN:MAX``.

    Args:
        text: Two whole numbers separated by a colon, minimum first.

    Returns:
        ``(minimum, maximum)``.

    Raises:
        ValueError: If the text is not ``MIN:MAX`` with ``0 <= MIN <= MAX`` and ``MAX >= 1``.

    Examples:
        >>> parse_adapt("2:10")
        (2, 10)
        >>> parse_adapt(" 0 : 4 ")
        (0, 4)
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_adapt expects a str like '2:10', got {type(text).__name__}")
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(
            f"adapt must be MIN:MAX, two whole numbers of workers such as 2:10; got {text!r}"
        )
    try:
        minimum, maximum = (int(p.strip()) for p in parts)
    except ValueError:
        raise ValueError(
            f"adapt must be MIN:MAX with whole numbers of workers such as 2:10; got {text!r}"
        ) from None
    return _as_adapt((minimum, maximum), "adapt")


def default_config_path() -> Path | None:
    """Return the defaults file that :func:`load_defaults` reads when given no path.

    Returns:
        The file named by PREASSIGN_CLUSTER_CONFIG if set, else ``cluster/defaults.yaml``
        next to the package when it exists (a source checkout), else None (built-ins).
    """
    named = os.environ.get(CONFIG_ENV_VAR)
    if named:
        return Path(named).expanduser()
    path = Path(__file__).resolve().parent.parent / "cluster" / "defaults.yaml"
    return path if path.is_file() else None


def load_defaults(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read cluster defaults and lay them over :data:`BUILTIN_DEFAULTS`.

    Keys missing from the file keep their built-in value; unknown keys are an error.

    Args:
        path: YAML file to read; None uses :func:`default_config_path`.

    Returns:
        A new nested dict with the layout of ``cluster/defaults.yaml``.

    Raises:
        FileNotFoundError: If the file was named (argument or env var) but does not exist.
        ValueError: If the file is not a mapping of known keys.
    """
    defaults = copy.deepcopy(_thaw(BUILTIN_DEFAULTS))
    if path is None:
        path = default_config_path()
        if path is None:
            return defaults
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"cluster defaults file {path} does not exist; fix the path (or unset "
            f"{CONFIG_ENV_VAR}), starting from a copy of cluster/defaults.yaml"
        ) from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        return defaults
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} must hold a YAML mapping like cluster/defaults.yaml")
    for key, value in data.items():
        if key not in defaults:
            raise ValueError(
                f"unknown key {key!r} in {path}; valid keys: {', '.join(sorted(defaults))}"
            )
        if isinstance(defaults[key], dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"{key!r} in {path} must be a mapping, got {value!r}")
            unknown = sorted(set(value) - set(defaults[key]))
            if unknown:
                raise ValueError(
                    f"unknown key(s) {', '.join(map(repr, unknown))} under {key!r} in {path}; "
                    f"valid keys: {', '.join(sorted(defaults[key]))}"
                )
            defaults[key].update(value)
        else:
            defaults[key] = value
    return defaults


def fargate_kwargs(spec: ClusterSpec) -> dict[str, Any]:
    """Build the keyword arguments :func:`open_client` gives ``FargateCluster``.

    Args:
        spec: A spec with ``kind`` ``"fargate"`` or None; unset fields come from the
            ``fargate`` and ``tls`` sections of the defaults file.

    Returns:
        The exact keyword arguments, secure by default: private IPs, the stack's security
        groups, roles, ECS cluster and log group, mutual TLS, no account-wide cleanup.

    Raises:
        ValueError: If a setting is invalid or one that only the CloudFormation stack can
            provide is missing (FargateCluster would otherwise create its own, including a
            security group open to the internet).
    """
    if spec.kind not in (None, "fargate"):
        raise ValueError(f"fargate_kwargs needs a spec of kind 'fargate', got {spec.kind!r}")
    s = _resolve(dataclasses.replace(spec, kind="fargate"))
    missing = [key for key in _STACK_OUTPUTS if not s[key]]
    if missing:
        listed = "; ".join(f"{key} (stack output {_STACK_OUTPUTS[key]})" for key in missing)
        raise ValueError(
            f"Fargate needs settings from the CloudFormation stack of "
            f"cluster/cloudformation.yaml; missing: {listed}. Put them in a YAML file named by "
            f"{CONFIG_ENV_VAR} or pass them in ClusterSpec (see cluster/README.md). Without "
            "them FargateCluster would create its own roles, ECS cluster and a security "
            "group open to the internet."
        )
    adapt = s["adapt"]
    n_workers = adapt[0] if adapt and spec.workers is None else s["workers"]
    nthreads = s["threads_per_worker"] or max(s["worker_cpu"] // 1024, 1)
    tls_dir = PurePosixPath(s["task_tls_dir"])
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
        "scheduler_extra_args": ["--port", str(s["scheduler_port"]), *task_tls_args],
        "worker_cpu": s["worker_cpu"],
        "worker_mem": s["worker_mem"],
        "worker_nthreads": nthreads,
        "worker_extra_args": [
            "--worker-port",
            str(s["worker_port"]),
            "--nanny-port",
            str(s["nanny_port"]),
            # One listening port fewer; the image has no bokeh to draw a dashboard anyway.
            "--no-dashboard",
            *task_tls_args,
        ],
        "environment": {
            TLS_SECRET_ENV_VAR: s["tls_secret_arn"],
            TLS_DIR_ENV_VAR: str(tls_dir),
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        },
        "tags": {**PROJECT_TAGS, **dict(s["tags"])},
        "skip_cleanup": True,
        "security": _client_security(s),
    }


def build_task_commands(
    spec: ClusterSpec, *, scheduler_ip: str = "SCHEDULER_PRIVATE_IP"
) -> dict[str, list[str]]:
    """Return the commands the Fargate scheduler and worker tasks run.

    They are built by dask-cloudprovider's own ``Scheduler`` and ``Worker`` task classes
    from :func:`fargate_kwargs`, exactly as ``FargateCluster`` does, and read from the
    container override those classes send with RunTask (it replaces the command of the
    task definition). The image's entry point runs them with ``dask-scheduler`` and
    ``dask-worker`` resolved to ``dask scheduler`` and ``dask worker``.

    Args:
        spec: A Fargate spec, as for :func:`fargate_kwargs`.
        scheduler_ip: The scheduler task's private IP, known only once it runs; it is
            part of the worker command.

    Returns:
        ``{"scheduler": [...], "worker": [...]}`` (the worker named 0).
    """
    from dask_cloudprovider.aws import ecs

    kwargs = fargate_kwargs(spec)
    common: dict[str, Any] = {
        "client": None,
        "cluster_arn": kwargs["cluster_arn"],
        "task_definition_arn": None,
        "vpc_subnets": kwargs["subnets"],
        "security_groups": kwargs["security_groups"],
        "fargate": True,
        "environment": kwargs["environment"],
        "tags": kwargs["tags"],
        "fargate_use_private_ip": kwargs["fargate_use_private_ip"],
    }
    scheduler = ecs.Scheduler(
        port=kwargs["scheduler_port"],
        tls=kwargs["security"].require_encryption,
        scheduler_timeout=kwargs["scheduler_timeout"],
        scheduler_extra_args=kwargs["scheduler_extra_args"],
        **common,
    )
    scheduler.private_ip = scheduler_ip
    worker = ecs.Worker(
        scheduler=scheduler.address,
        cpu=kwargs["worker_cpu"],
        mem=kwargs["worker_mem"],
        gpu=None,
        nthreads=kwargs["worker_nthreads"],
        extra_args=kwargs["worker_extra_args"],
        name=0,
        **common,
    )
    return {
        "scheduler": [str(a) for a in scheduler._overrides["command"]],
        "worker": [str(a) for a in worker._overrides["command"]],
    }


@contextlib.contextmanager
def open_client(spec: ClusterSpec, *, keep_open: bool = False) -> Iterator[distributed.Client]:
    """Start or connect to a Dask cluster and yield a client for it.

    ``local`` starts a ``LocalCluster`` of worker processes, sized to this machine unless
    told otherwise. ``fargate`` starts a ``FargateCluster`` with :func:`fargate_kwargs`. An
    address connects to a running scheduler, which is never closed by us. ``adapt`` turns
    on adaptive scaling. Before yielding, the versions of :data:`VERSION_CHECKED_PACKAGES`
    are compared between this machine, the scheduler and the workers present.

    Everything started here is closed when the block ends, normally or by an exception
    (Ctrl-C included), so no Fargate task outlives the run. With ``keep_open=True`` the
    client and cluster stay up after the block, for a notebook: close them later with
    :func:`close_client`. Should that be forgotten, the Fargate scheduler stops after its
    idle timeout, the workers 60 s later, and Python closes the cluster at exit. If
    starting fails, what was started is closed whatever ``keep_open`` says.

    Args:
        spec: What to start or connect to.
        keep_open: Leave the client and cluster running after the block.

    Yields:
        The connected client (``client.cluster`` is the cluster, None for an address).

    Raises:
        ClusterVersionMismatch: If a key package differs between client and cluster.
        ValueError: If the spec or the defaults are invalid.
        FileNotFoundError: If a TLS file this machine needs is missing.
        OSError: If a scheduler address cannot be reached.
        TimeoutError: If no worker joins within ``connect_timeout``.

    Examples:
        >>> with open_client(ClusterSpec("local", workers=2)) as client:  # doctest: +SKIP
        ...     client.submit(sum, [1, 2]).result()
        3
    """
    s = _resolve(spec)
    kind = s["kind"]
    cluster: Any = None
    client: distributed.Client | None = None
    try:
        if kind == "local":
            cluster = _start_local_cluster(s)
        elif kind == "fargate":
            kwargs = fargate_kwargs(spec)
            _check_tls_files(s)
            cluster = _start_fargate_cluster(kwargs)
        if cluster is None:
            client = _connect_to_scheduler(s)
        else:
            if s["adapt"]:
                minimum, maximum = s["adapt"]
                cluster.adapt(minimum=minimum, maximum=maximum)
                logger.info("Adaptive scaling between %d and %d workers", minimum, maximum)
            client = distributed.Client(cluster, timeout=s["connect_timeout"])
            if _initial_workers(s, spec) > 0:
                _wait_for_first_worker(client, s)
        check_versions(client)
    except BaseException:
        _shutdown(client, cluster, raise_errors=False)
        raise
    try:
        yield client
    except BaseException:
        if not keep_open:
            _shutdown(client, cluster, raise_errors=False)
        raise
    if not keep_open:
        _shutdown(client, cluster, raise_errors=True)


def close_client(client: distributed.Client) -> None:
    """Close a client and the cluster it was opened with (for ``keep_open=True``).

    A scheduler reached by address is left running; only the connection is closed.

    Args:
        client: A client from :func:`open_client`.
    """
    _shutdown(client, getattr(client, "cluster", None), raise_errors=True)


def check_versions(client: distributed.Client) -> None:
    """Compare key package versions between this machine, the scheduler and workers.

    Python is compared as major.minor. ``preassign`` is compared only when it is installed
    here (a source checkout on the path has no version to compare). Workers that join later
    are not checked; they run the same image.

    Args:
        client: A connected client.

    Raises:
        ClusterVersionMismatch: On the first package that differs.
    """
    extra = [p for p in VERSION_CHECKED_PACKAGES if p != "python"]
    _compare_versions(client.get_versions(check=False, packages=extra))


def _compare_versions(versions: Mapping[str, Any]) -> None:
    """Raise ClusterVersionMismatch for the first key package that differs.

    Args:
        versions: The dict returned by ``Client.get_versions``.
    """
    mine = versions["client"]["packages"]
    remotes: list[tuple[str, Mapping[str, Any]]] = [
        ("the scheduler", versions["scheduler"]["packages"])
    ]
    for address, info in sorted(versions.get("workers", {}).items()):
        if isinstance(info, Mapping) and isinstance(info.get("packages"), Mapping):
            remotes.append((f"worker {address}", info["packages"]))
    for package in VERSION_CHECKED_PACKAGES:
        here = _comparable_version(package, mine.get(package))
        if package == "preassign" and here is None:
            continue
        for where, packages in remotes:
            there = _comparable_version(package, packages.get(package))
            if there != here:
                raise ClusterVersionMismatch(package, here, there, where)


def _comparable_version(package: str, version: Any) -> str | None:
    if version is None:
        return None
    version = str(version)
    if package == "python":
        return ".".join(version.split(".")[:2])
    return version


def _resolve(spec: ClusterSpec) -> dict[str, Any]:
    """Merge a spec over the defaults for its kind and check the result.

    Returns:
        A flat dict: ``kind``, ``connect_timeout``, the fields of the kind's section and,
        for Fargate and ``tls://``, ``tls_ca_file``/``tls_cert``/``tls_key``.
    """
    defaults = load_defaults(spec.config_path)
    source = str(spec.config_path or default_config_path() or "built-in defaults")
    kind = spec.kind if spec.kind is not None else defaults["kind"]
    _check_kind(kind, source=source)
    settings: dict[str, Any] = {"kind": kind, "connect_timeout": defaults["connect_timeout"]}
    if kind in ("local", "fargate"):
        settings.update(defaults[kind])
    if kind == "fargate" or kind.startswith("tls://"):
        settings.update({name: defaults["tls"][key] for name, key in _TLS_KEYS.items()})
    given = _given_fields(spec)
    _check_fields_apply(kind, given)
    _check_values(settings, source=source)
    settings.update(given)
    if settings.get("adapt") is not None:
        settings["adapt"] = _as_adapt(settings["adapt"], "adapt")
    for name in ("subnets", "security_groups"):
        if name in settings:
            settings[name] = tuple(settings[name] or ())
    _check_combination(settings, spec)
    return settings


def _given_fields(spec: ClusterSpec) -> dict[str, Any]:
    """Return the settings a spec sets (not None), without kind and config_path."""
    return {
        f.name: getattr(spec, f.name)
        for f in dataclasses.fields(spec)
        if f.name not in ("kind", "config_path") and getattr(spec, f.name) is not None
    }


def _check_fields_apply(kind: str, given: Mapping[str, Any]) -> None:
    """Refuse settings that the cluster kind would ignore."""
    allowed = {"connect_timeout"}
    if kind in ("local", "fargate"):
        allowed |= set(BUILTIN_DEFAULTS[kind])
    if kind == "fargate" or kind.startswith("tls://"):
        allowed |= set(_TLS_KEYS)
    misplaced = sorted(set(given) - allowed)
    if misplaced:
        where = kind if kind in ("local", "fargate") else f"scheduler address {kind}"
        raise ValueError(
            f"{', '.join(misplaced)} cannot be set for a {where} cluster; each applies to: "
            + "; ".join(f"{name} -> {_applies_to(name)}" for name in misplaced)
        )


def _applies_to(name: str) -> str:
    places = [kind for kind in ("local", "fargate") if name in BUILTIN_DEFAULTS[kind]]
    if name in _TLS_KEYS:
        places += ["fargate", "tls:// addresses"]
    return ", ".join(places) or "no cluster kind"


def _check_kind(kind: Any, *, source: str = "ClusterSpec") -> None:
    if not isinstance(kind, str) or not (
        kind in ("local", "fargate") or kind.startswith(("tcp://", "tls://"))
    ):
        raise ValueError(
            f"cluster kind must be 'local', 'fargate' or a scheduler address like "
            f"tcp://host:8786 or tls://host:8786; got {kind!r} (from {source})"
        )
    if kind.startswith(("tcp://", "tls://")):
        rest = kind.split("://", 1)[1]
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"scheduler address must look like tcp://host:port or tls://host:port; "
                f"got {kind!r} (from {source})"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_adapt(value: Any, name: str) -> tuple[int, int]:
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or len(value) != 2
        or not all(_is_int(v) for v in value)
    ):
        raise ValueError(f"{name} must be two whole numbers (minimum, maximum); got {value!r}")
    minimum, maximum = value
    if minimum < 0 or maximum < 1 or minimum > maximum:
        raise ValueError(
            f"{name} needs 0 <= minimum <= maximum and maximum >= 1; got minimum {minimum}, "
            f"maximum {maximum}"
        )
    return (minimum, maximum)


def _check_values(values: Mapping[str, Any], *, source: str) -> None:
    """Check the type and range of each known setting present in ``values``."""

    def fail(name: str, expected: str) -> None:
        raise ValueError(f"{name} must be {expected}; got {values[name]!r} (from {source})")

    for name, value in values.items():
        if value is None:
            continue
        if name in ("workers",) and not (_is_int(value) and value >= 0):
            fail(name, "a whole number >= 0")
        elif name == "threads_per_worker" and not (_is_int(value) and value >= 1):
            fail(name, "a whole number >= 1")
        elif name == "memory_limit":
            if value != "auto":
                try:
                    if parse_bytes(value) <= 0:
                        raise ValueError
                except (ValueError, TypeError):
                    fail(name, '"auto" or a positive Dask size such as "4GiB"')
        elif name in ("worker_cpu", "scheduler_cpu") and value not in _FARGATE_MEMORY:
            fail(name, f"a Fargate CPU size, one of {sorted(_FARGATE_MEMORY)} (1024 = 1 vCPU)")
        elif name in ("worker_mem", "scheduler_mem") and not (_is_int(value) and value > 0):
            fail(name, "a positive number of MiB")
        elif name == "adapt":
            _as_adapt(value, f"adapt (from {source})")
        elif name == "idle_timeout":
            try:
                if not isinstance(value, str) or parse_timedelta(value) <= 0:
                    raise ValueError
            except (ValueError, TypeError, KeyError):
                fail(name, 'a positive Dask duration such as "1 hour" or "90 minutes"')
        elif name == "cpu_architecture" and value not in ("X86_64", "ARM64"):
            fail(name, "X86_64 or ARM64")
        elif name == "fargate_spot" and not isinstance(value, bool):
            fail(name, "true or false")
        elif name in ("scheduler_port", "worker_port", "nanny_port") and not (
            _is_int(value) and 1 <= value <= 65535
        ):
            fail(name, "a TCP port number")
        elif name == "connect_timeout" and not (
            isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        ):
            fail(name, "a positive number of seconds")
        elif name == "tags" and not (
            isinstance(value, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            fail(name, "a mapping of strings to strings")
        elif name in ("subnets", "security_groups"):
            prefix = "subnet-" if name == "subnets" else "sg-"
            if isinstance(value, str) or not all(
                isinstance(v, str) and v.startswith(prefix) for v in value
            ):
                fail(name, f"a list of ids starting with {prefix!r}")
        elif name == "vpc" and not (isinstance(value, str) and value.startswith("vpc-")):
            fail(name, "a VPC id starting with 'vpc-'")
        elif name in (
            "cluster_arn",
            "execution_role_arn",
            "task_role_arn",
            "tls_secret_arn",
        ) and not (isinstance(value, str) and value.startswith("arn:")):
            fail(name, "an ARN (arn:...)")
        elif name in (
            "image",
            "region",
            "log_group",
            "task_tls_dir",
            "tls_ca_file",
            "tls_cert",
            "tls_key",
        ) and not (isinstance(value, str) and value):
            fail(name, "a non-empty string")


def _check_combination(s: Mapping[str, Any], spec: ClusterSpec) -> None:
    """Check the settings that depend on each other."""
    adapt = s.get("adapt")
    workers = s.get("workers")
    if adapt and spec.workers is not None and not adapt[0] <= spec.workers <= adapt[1]:
        raise ValueError(
            f"workers={spec.workers} lies outside adapt {adapt[0]}:{adapt[1]}; start within "
            "the adaptive range or leave workers unset to start at its minimum"
        )
    if workers == 0 and not adapt:
        raise ValueError("workers=0 starts no workers; give at least 1, or set adapt")
    for role in ("worker", "scheduler"):
        cpu, mem = s.get(f"{role}_cpu"), s.get(f"{role}_mem")
        if cpu is None or mem is None:
            continue
        if mem not in _FARGATE_MEMORY[cpu]:
            allowed = _FARGATE_MEMORY[cpu]
            raise ValueError(
                f"{role}_mem={mem} MiB is not a Fargate size for {role}_cpu={cpu}; "
                f"allowed: {allowed[0]} to {allowed[-1]} MiB in steps of "
                f"{allowed[1] - allowed[0]} MiB"
            )
    if s.get("worker_mem") is not None and s["worker_mem"] < 1024:
        raise ValueError(
            f"worker_mem={s['worker_mem']} MiB is too small: dask-cloudprovider gives workers "
            "--memory-limit in whole GB, and below 1024 MiB that is 0, which means no limit; "
            "use at least 1024"
        )
    ports = [s.get(p) for p in ("scheduler_port", "worker_port", "nanny_port")]
    if None not in ports and len(set(ports)) != len(ports):
        raise ValueError(f"scheduler_port, worker_port and nanny_port must differ; got {ports}")


def _initial_workers(s: Mapping[str, Any], spec: ClusterSpec) -> int:
    """Return how many workers the cluster starts with (None: LocalCluster decides)."""
    if s["adapt"] and spec.workers is None:
        return s["adapt"][0]
    workers = s.get("workers")
    return 1 if workers is None else workers


def _client_security(s: Mapping[str, Any]) -> Security:
    return Security(
        require_encryption=True,
        tls_ca_file=_expand(s["tls_ca_file"]),
        tls_client_cert=_expand(s["tls_cert"]),
        tls_client_key=_expand(s["tls_key"]),
    )


def _expand(path: str) -> str:
    return str(Path(path).expanduser())


def _check_tls_files(s: Mapping[str, Any]) -> None:
    missing = [
        f"{name} {_expand(s[name])}" for name in _TLS_KEYS if not Path(_expand(s[name])).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"TLS file(s) not found: {'; '.join(missing)}. Create them with "
            "cluster/tls/make-certs.sh and upload them to the stack's TLS secret "
            "(see cluster/README.md), or point tls.ca_file/cert/key at existing files."
        )


def _start_local_cluster(s: Mapping[str, Any]) -> distributed.LocalCluster:
    n_workers = s["workers"]
    if s["adapt"] and n_workers is None:
        n_workers = s["adapt"][0]
    cluster = distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=s["threads_per_worker"],
        memory_limit=s["memory_limit"],
        processes=True,
        # Random port, loopback only: the dashboard has no authentication.
        dashboard_address="127.0.0.1:0",
    )
    logger.info(
        "Started a LocalCluster at %s with %d workers", cluster.scheduler_address,
        len(cluster.workers),
    )
    return cluster


def _start_fargate_cluster(kwargs: Mapping[str, Any]) -> Any:
    from dask_cloudprovider.aws import FargateCluster

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


def _connect_to_scheduler(s: Mapping[str, Any]) -> distributed.Client:
    address = s["kind"]
    security = None
    if address.startswith("tls://"):
        _check_tls_files(s)
        security = _client_security(s)
    try:
        return distributed.Client(address, security=security, timeout=s["connect_timeout"])
    except OSError as e:
        raise OSError(
            f"could not connect to the Dask scheduler at {address} within "
            f"{s['connect_timeout']} s ({e}); check that it runs and that this machine can "
            "reach it"
        ) from e


def _wait_for_first_worker(client: distributed.Client, s: Mapping[str, Any]) -> None:
    try:
        client.wait_for_workers(1, timeout=s["connect_timeout"])
    except (TimeoutError, distributed.TimeoutError) as e:
        hint = (
            f"; see the worker logs in CloudWatch Logs group {s['log_group']}"
            if s["kind"] == "fargate"
            else ""
        )
        raise TimeoutError(
            f"no worker joined the scheduler within {s['connect_timeout']} s{hint}"
        ) from e


def _shutdown(client: distributed.Client | None, cluster: Any, *, raise_errors: bool) -> None:
    """Close the client, then the cluster; log failures and raise the first if asked."""
    errors: list[Exception] = []
    for what, thing in (("client", client), ("cluster", cluster)):
        if thing is None:
            continue
        try:
            if what == "cluster":
                _deregister_task_definitions(thing)
            thing.close()
        except Exception as e:  # keep closing the rest: a cluster must not be left running
            logger.warning("Closing the Dask %s failed: %s", what, e)
            errors.append(e)
    if errors and raise_errors:
        raise errors[0]


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
            _shutdown(None, cluster, raise_errors=False)

    register = getattr(threading, "_register_atexit", atexit.register)
    try:
        register(close_if_open)
    except RuntimeError:  # already shutting down: nothing to register for
        pass


def _deregister_task_definitions(cluster: Any) -> None:
    """Deregister the task definitions a FargateCluster registered, while it can.

    dask-cloudprovider deregisters them in ``weakref.finalize`` callbacks that hold the
    cluster alive until interpreter exit, when its event loop is closed: they fail with
    "IOLoop is closed" tracebacks and the definitions stay registered. Running those two
    callbacks before ``close()`` does the work on the live loop (running tasks are not
    affected) and leaves nothing to fail at exit. Callbacks that delete resources the
    cluster created itself (never the case with :func:`fargate_kwargs`) are left alone.
    """
    registry = getattr(weakref.finalize, "_registry", {})
    for finalizer in list(registry):
        info = finalizer.peek()
        if info is None or info[0] is not cluster or not info[2]:
            continue
        if getattr(info[2][0], "__name__", "") in _TASK_DEFINITION_CLEANUPS:
            try:
                finalizer()
            except Exception as e:  # a leftover task definition costs nothing
                logger.warning("Deregistering a Fargate task definition failed: %s", e)


def _thaw(value: Any) -> Any:
    """Turn read-only mappings back into plain dicts, recursively."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value
