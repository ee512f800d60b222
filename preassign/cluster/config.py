"""Cluster settings: the defaults file, :class:`ClusterSpec` and every check on them.

This module knows nothing of AWS or of a running cluster: it imports the standard library,
``yaml`` and ``dask.utils`` only, never ``distributed``, ``dask_cloudprovider``, ``boto3``,
``botocore`` or ``aiobotocore`` (a test imports it with those blocked). Everything a user
can get wrong about a cluster's settings is caught here, before anything starts.

The defaults live in one file, ``defaults.yaml`` next to this module (package data;
``cluster/defaults.yaml`` in the repository is a link to it). It is the only list of the
known keys and their default values: :data:`BUILTIN_DEFAULTS` is that file as loaded, and
a file named by ``PREASSIGN_CLUSTER_CONFIG`` (or ``ClusterSpec.config_path``) is laid over
it, unknown keys being an error. :func:`resolve_settings` merges a spec over the defaults
of its kind and checks the values and their combinations.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from dask.utils import parse_bytes, parse_timedelta

from ..errors import UsageError

__all__ = [
    "BUILTIN_DEFAULTS", "CONFIG_ENV_VAR", "DEFAULTS_FILE_NAME", "MIN_WORKER_MEMORY",
    "TLS_FILE_NAMES", "ClusterSpec", "MissingFileError", "check_memory_limit",
    "check_scheduler_address", "check_stack_settings", "check_tls_files",
    "default_config_path", "load_defaults",
    "packaged_defaults_path", "parse_adapt", "resolve_settings", "stack_defaults", "tls_paths",
]

CONFIG_ENV_VAR = "PREASSIGN_CLUSTER_CONFIG"
"""Environment variable naming a YAML file laid over the packaged ``defaults.yaml``."""

DEFAULTS_FILE_NAME = "defaults.yaml"
"""The packaged defaults file, next to this module."""

TLS_FILE_NAMES = MappingProxyType({"ca": "ca.pem", "cert": "cert.pem", "key": "key.pem"})
"""File names of the TLS material, the same on this machine and in the tasks."""

MIN_WORKER_MEMORY = 768 * 2**20
"""Smallest ``--memory-limit`` the CLI accepts, in bytes (see :func:`check_memory_limit`)."""

_PACKAGE = __name__.rpartition(".")[0]

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

# Settings that are ARNs, and settings that are any non-empty string.
_ARN_SETTINGS = (
    "cluster_arn", "execution_role_arn", "task_role_arn", "tls_secret_arn",
    "scheduler_task_definition_arn", "worker_task_definition_arn",
)
_BOOL_SETTINGS = ("fargate_spot", "dashboard", "enable_exec", "insecure_scheduler")
_TEXT_SETTINGS = (
    "image", "region", "log_group", "task_tls_dir", "tls_ca_file", "tls_cert", "tls_key"
)

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
    "scheduler_task_definition_arn": "SchedulerTaskDefinitionArn",
    "worker_task_definition_arn": "WorkerTaskDefinitionArn",
}

INSECURE_SCHEDULER_FLAG = "--insecure-scheduler"
"""The CLI flag that allows a plain ``tcp://`` scheduler on another machine."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file the user named or this machine needs (defaults, TLS material) does not exist.

    A :class:`~preassign.errors.UsageError` (exit 2) that ``except FileNotFoundError`` also
    catches.
    """


def _freeze(value: Any) -> Any:
    """Make nested mappings and lists read-only (mapping proxies and tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Turn what :func:`_freeze` made back into new plain dicts and lists, recursively."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _read_packaged_defaults() -> Mapping[str, Any]:
    text = resources.files(_PACKAGE).joinpath(DEFAULTS_FILE_NAME).read_text(encoding="utf-8")
    return _freeze(yaml.safe_load(text))


BUILTIN_DEFAULTS: Mapping[str, Any] = _read_packaged_defaults()
"""The packaged ``defaults.yaml`` as loaded, read-only (mapping proxies, lists as tuples)."""


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
        scheduler_task_definition_arn: The stack's scheduler task definition.
        worker_task_definition_arn: The stack's worker task definition.
        tls_secret_arn: Secrets Manager secret the tasks read their TLS files from.
        dashboard: Serve the scheduler's dashboard on 127.0.0.1 inside its task.
        enable_exec: Turn on ECS Exec for the scheduler task (dashboard port forwarding).
        task_tls_dir: Directory inside the tasks where those files are written.
        scheduler_port: Scheduler TCP port in the tasks.
        worker_port: Worker TCP port in the tasks.
        nanny_port: Nanny TCP port in the tasks.
        tags: Extra tags on task definitions and tasks.
        tls_ca_file: This machine's CA certificate (PEM path, ``~`` expanded).
        tls_cert: This machine's client certificate (PEM path).
        tls_key: This machine's client key (PEM path).
        connect_timeout: Seconds to wait for the scheduler and for the first worker.
        insecure_scheduler: Allow a plain ``tcp://`` scheduler that is not on this machine
            (see :func:`check_scheduler_address`).
        config_path: Defaults file to lay over the packaged defaults instead of the one
            named by PREASSIGN_CLUSTER_CONFIG.

    Raises:
        UsageError: If a given value is invalid or does not apply to ``kind``.
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
    scheduler_task_definition_arn: str | None = None
    worker_task_definition_arn: str | None = None
    tls_secret_arn: str | None = None
    dashboard: bool | None = None
    enable_exec: bool | None = None
    task_tls_dir: str | None = None
    scheduler_port: int | None = None
    worker_port: int | None = None
    nanny_port: int | None = None
    tags: Mapping[str, str] | None = field(default=None, hash=False)
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float | None = None
    insecure_scheduler: bool | None = None
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
        TypeError: If ``text`` is not a string.
        UsageError: If the text is not ``MIN:MAX`` with ``0 <= MIN <= MAX`` and ``MAX >= 1``.

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
        raise UsageError(
            f"adapt must be MIN:MAX, two whole numbers of workers such as 2:10; got {text!r}"
        )
    try:
        minimum, maximum = (int(p.strip()) for p in parts)
    except ValueError:
        raise UsageError(
            f"adapt must be MIN:MAX with whole numbers of workers such as 2:10; got {text!r}"
        ) from None
    return _as_adapt((minimum, maximum), "adapt")


def check_memory_limit(memory: str) -> int:
    """Check a worker memory limit given on the command line (``--memory-limit``).

    Stricter than :class:`ClusterSpec`: a size is required (not ``"auto"``) and it must be
    at least :data:`MIN_WORKER_MEMORY`, below which a worker is paused or killed before it
    holds any data.

    Args:
        memory: A Dask size string such as ``"4GiB"``.

    Returns:
        The limit in bytes.

    Raises:
        UsageError: If ``memory`` is not a size, or is below 768 MiB.

    Examples:
        >>> check_memory_limit("1GiB")
        1073741824
    """
    try:
        limit = parse_bytes(memory)
    except (ValueError, TypeError):
        raise UsageError(f"--memory-limit: expected a size such as 4GiB, got {memory!r}") from None
    if limit < MIN_WORKER_MEMORY:
        raise UsageError(
            f"--memory-limit: {memory} is too small: a worker process needs about 250 MiB "
            "before it holds any data, and Dask pauses it at 80% of its limit; give at least "
            "768MiB (about 1 GiB per 50,000 users in a partition)"
        )
    return limit


def packaged_defaults_path() -> Path:
    """Return the path of the packaged ``defaults.yaml`` (package data next to this module).

    Returns:
        The file :data:`BUILTIN_DEFAULTS` was read from.
    """
    return Path(str(resources.files(_PACKAGE).joinpath(DEFAULTS_FILE_NAME)))


def default_config_path() -> Path:
    """Return the defaults file in effect when no ``config_path`` is given.

    Returns:
        The file named by PREASSIGN_CLUSTER_CONFIG if set (``~`` expanded), else the
        packaged ``defaults.yaml``.
    """
    return _named_config_path() or packaged_defaults_path()


def _named_config_path() -> Path | None:
    named = os.environ.get(CONFIG_ENV_VAR)
    return Path(named).expanduser() if named else None


def load_defaults(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read a cluster defaults file and lay it over :data:`BUILTIN_DEFAULTS`.

    Keys missing from the file keep their packaged value; unknown keys are an error.

    Args:
        path: YAML file to read; None reads the file named by PREASSIGN_CLUSTER_CONFIG, or
            nothing when that is unset (the packaged defaults alone).

    Returns:
        A new nested dict with the layout of ``defaults.yaml``.

    Raises:
        MissingFileError: If the file was named (argument or env var) but does not exist.
        UsageError: If the file is not a mapping of known keys.
    """
    defaults: dict[str, Any] = _thaw(BUILTIN_DEFAULTS)
    if path is None:
        path = _named_config_path()
        if path is None:
            return defaults
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFileError(
            f"cluster defaults file {path} does not exist; fix the path (or unset "
            f"{CONFIG_ENV_VAR}), starting from a copy of cluster/defaults.yaml"
        ) from None
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        return defaults
    if not isinstance(data, Mapping):
        raise UsageError(f"{path} must hold a YAML mapping like cluster/defaults.yaml")
    for key, value in data.items():
        if key not in defaults:
            raise UsageError(
                f"unknown key {key!r} in {path}; valid keys: {', '.join(sorted(defaults))}"
            )
        if isinstance(defaults[key], dict):
            if not isinstance(value, Mapping):
                raise UsageError(f"{key!r} in {path} must be a mapping, got {value!r}")
            unknown = sorted(set(value) - set(defaults[key]))
            if unknown:
                raise UsageError(
                    f"unknown key(s) {', '.join(map(repr, unknown))} under {key!r} in {path}; "
                    f"valid keys: {', '.join(sorted(defaults[key]))}"
                )
            defaults[key].update(value)
        else:
            defaults[key] = value
    return defaults


def resolve_settings(spec: ClusterSpec) -> dict[str, Any]:
    """Merge a spec over the defaults for its kind and check the result.

    Args:
        spec: What the caller asked for; its ``None`` fields take the defaults.

    Returns:
        A flat dict: ``kind``, ``connect_timeout``, the fields of the kind's section and,
        for Fargate and ``tls://``, ``tls_ca_file``/``tls_cert``/``tls_key``.

    Raises:
        MissingFileError: If the named defaults file does not exist.
        UsageError: If a value, or a combination of values, is invalid.
    """
    defaults = load_defaults(spec.config_path)
    source = str(spec.config_path or default_config_path())
    kind = spec.kind if spec.kind is not None else defaults["kind"]
    _check_kind(kind, source=source)
    settings: dict[str, Any] = {"kind": kind, "connect_timeout": defaults["connect_timeout"]}
    if kind in ("local", "fargate"):
        settings.update(defaults[kind])
    if kind.startswith("tcp://"):
        settings["insecure_scheduler"] = defaults["insecure_scheduler"]
    if kind == "fargate" or kind.startswith("tls://"):
        settings.update({name: defaults["tls"][key] for name, key in _TLS_KEYS.items()})
        settings["tls_expiry_warning"] = defaults["tls"]["expiry_warning"]
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
    if kind.startswith(("tcp://", "tls://")):
        check_scheduler_address(kind, insecure=bool(settings.get("insecure_scheduler")))
    return settings


def check_scheduler_address(address: str, *, insecure: bool = False) -> None:
    """Refuse a plain ``tcp://`` scheduler that is not on this machine.

    Everything a client sends a scheduler travels in its task graph: the functions, their
    arguments (a source database URL among them) and the results. Over ``tcp://`` that is
    unencrypted, and whoever can reach the port can submit code that runs as the workers.
    ``tls://`` addresses (mutual TLS, :func:`check_tls_files`) and loopback ``tcp://``
    addresses (a LocalCluster, an SSH or Session Manager tunnel) are fine.

    Args:
        address: A scheduler address, ``tcp://host:port`` or ``tls://host:port``.
        insecure: Allow a plain ``tcp://`` scheduler elsewhere (the CLI's
            ``--insecure-scheduler``), on a network you trust.

    Raises:
        UsageError: Naming the address and the two ways out.

    Examples:
        >>> check_scheduler_address("tcp://127.0.0.1:8786")
        >>> check_scheduler_address("tls://10.0.1.23:8786")
        >>> check_scheduler_address("tcp://10.0.1.23:8786", insecure=True)
    """
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return
    host = rest.rpartition(":")[0] if ":" in rest else rest
    if _is_loopback(host) or insecure:
        return
    raise UsageError(
        f"the scheduler {address} is not on this machine, and plain tcp:// would send the "
        "task graph (the source database URL among it) and every result unencrypted, and "
        "let anyone who can reach the port run code as the workers. Use "
        "tls://host:port with the cluster's TLS files (cluster/README.md), tunnel the port "
        f"to 127.0.0.1, or, on a network you trust, pass {INSECURE_SCHEDULER_FLAG}"
    )


def _is_loopback(host: str) -> bool:
    text = host.strip().strip("[]").lower()
    if text in ("localhost", "") or text.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def check_stack_settings(settings: Mapping[str, Any]) -> None:
    """Refuse Fargate settings that lack what only the CloudFormation stack provides.

    Args:
        settings: Resolved Fargate settings (:func:`resolve_settings`).

    Raises:
        UsageError: Naming each missing setting and the stack output that supplies it.
            Without them FargateCluster would create its own roles, ECS cluster and a
            security group open to the internet.
    """
    missing = [key for key in _STACK_OUTPUTS if not settings[key]]
    if missing:
        listed = "; ".join(f"{key} (stack output {_STACK_OUTPUTS[key]})" for key in missing)
        raise UsageError(
            f"Fargate needs settings from the CloudFormation stack of "
            f"cluster/cloudformation.yaml; missing: {listed}. Put them in a YAML file named by "
            f"{CONFIG_ENV_VAR} or pass them in ClusterSpec (see cluster/README.md). Without "
            "them FargateCluster would create its own roles, ECS cluster and a security "
            "group open to the internet."
        )


def stack_defaults(stack: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a deployed stack's description into a cluster defaults file's content.

    Args:
        stack: One entry of CloudFormation's ``describe-stacks`` answer (``Outputs`` and
            ``Parameters`` lists), as ``aws cloudformation describe-stacks`` prints it.

    Returns:
        ``{"fargate": {...}, "tls": {...}}`` with every setting the stack decides: ARNs,
        network, the task definitions and their sizes, the image, the identity settings.
        Write it as YAML and name it with ``PREASSIGN_CLUSTER_CONFIG``.

    Raises:
        UsageError: If an output this needs is missing (not a stack of
            ``cluster/cloudformation.yaml``).
    """
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    parameters = {p["ParameterKey"]: p.get("ResolvedValue", p.get("ParameterValue", ""))
                  for p in stack.get("Parameters", [])}
    needed = [o.split(",")[0] for o in _STACK_OUTPUTS.values()] + ["ServerCaParameterName"]
    missing = sorted({o for o in needed if o not in outputs} |
                     {p for p in ("ImageTag", "SchedulerCpu", "SchedulerMemory", "WorkerCpu",
                                  "WorkerMemory", "CpuArchitecture", "EnableExec")
                      if p not in parameters})
    if missing:
        raise UsageError(f"the stack description lacks {', '.join(missing)}; is it a stack of "
                         "cluster/cloudformation.yaml, fully deployed?")
    fargate = {
        "image": f"{outputs['RepositoryUri']}:{parameters['ImageTag']}",
        "region": outputs["ClusterArn"].split(":")[3],
        "cluster_arn": outputs["ClusterArn"],
        "vpc": outputs["VpcId"],
        "subnets": outputs["SubnetIds"].split(","),
        "security_groups": [outputs["SecurityGroupId"]],
        "execution_role_arn": outputs["ExecutionRoleArn"],
        "task_role_arn": outputs["TaskRoleArn"],
        "log_group": outputs["LogGroupName"],
        "tls_secret_arn": outputs["TlsSecretArn"],
        "scheduler_task_definition_arn": outputs["SchedulerTaskDefinitionArn"],
        "worker_task_definition_arn": outputs["WorkerTaskDefinitionArn"],
        "scheduler_cpu": int(parameters["SchedulerCpu"]),
        "scheduler_mem": int(parameters["SchedulerMemory"]),
        "worker_cpu": int(parameters["WorkerCpu"]),
        "worker_mem": int(parameters["WorkerMemory"]),
        "cpu_architecture": parameters["CpuArchitecture"],
        "enable_exec": parameters["EnableExec"] == "true",
    }
    tls: dict[str, Any] = {"server_ca_parameter": outputs["ServerCaParameterName"]}
    if parameters.get("PrivateCaArn"):
        tls["private_ca_arn"] = parameters["PrivateCaArn"]
    if outputs.get("ClientTlsSecretArn"):
        tls["client_secret_arn"] = outputs["ClientTlsSecretArn"]
    return {"fargate": fargate, "tls": tls}


def tls_paths(settings: Mapping[str, Any]) -> dict[str, str]:
    """Return this machine's TLS files with ``~`` expanded.

    Args:
        settings: Resolved settings of a ``fargate`` or ``tls://`` cluster.

    Returns:
        ``{"tls_ca_file": ..., "tls_cert": ..., "tls_key": ...}``.
    """
    return {name: str(Path(settings[name]).expanduser()) for name in _TLS_KEYS}


def check_tls_files(settings: Mapping[str, Any]) -> None:
    """Check that this machine's TLS files exist.

    Args:
        settings: Resolved settings of a ``fargate`` or ``tls://`` cluster.

    Raises:
        MissingFileError: Naming each missing file and how to make it.
    """
    paths = tls_paths(settings)
    missing = [f"{name} {path}" for name, path in paths.items() if not Path(path).is_file()]
    if missing:
        raise MissingFileError(
            f"TLS file(s) not found: {'; '.join(missing)}. Create them with "
            "cluster/tls/make-certs.sh (the stack's interim identities) or get your personal "
            "client certificate with python -m preassign.cluster.identity issue (see "
            "cluster/README.md), or point tls.ca_file/cert/key at existing files."
        )
    check_key_file_mode(paths["tls_key"])


def check_key_file_mode(path: str | os.PathLike[str]) -> None:
    """Refuse a private key file that other users may read or write (as ssh does).

    Args:
        path: The key file.

    Raises:
        UsageError: If group or others have any permission on it, with the ``chmod``.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"TLS key {path} is accessible by other users (mode {mode:04o}); whoever reads "
            f"it can run code on the cluster as you. Run: chmod 600 {path}"
        )


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
    if kind.startswith("tcp://"):
        allowed.add("insecure_scheduler")
    if kind == "fargate" or kind.startswith("tls://"):
        allowed |= set(_TLS_KEYS)
    misplaced = sorted(set(given) - allowed)
    if misplaced:
        where = kind if kind in ("local", "fargate") else f"scheduler address {kind}"
        raise UsageError(
            f"{', '.join(misplaced)} cannot be set for a {where} cluster; each applies to: "
            + "; ".join(f"{name} -> {_applies_to(name)}" for name in misplaced)
        )


def _applies_to(name: str) -> str:
    places = [kind for kind in ("local", "fargate") if name in BUILTIN_DEFAULTS[kind]]
    if name in _TLS_KEYS:
        places += ["fargate", "tls:// addresses"]
    if name == "insecure_scheduler":
        places.append("tcp:// addresses")
    return ", ".join(places) or "no cluster kind"


def _check_kind(kind: Any, *, source: str = "ClusterSpec") -> None:
    if not isinstance(kind, str) or not (
        kind in ("local", "fargate") or kind.startswith(("tcp://", "tls://"))
    ):
        raise UsageError(
            f"cluster kind must be 'local', 'fargate' or a scheduler address like "
            f"tcp://host:8786 or tls://host:8786; got {kind!r} (from {source})"
        )
    if kind.startswith(("tcp://", "tls://")):
        rest = kind.split("://", 1)[1]
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(
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
        raise UsageError(f"{name} must be two whole numbers (minimum, maximum); got {value!r}")
    minimum, maximum = value
    if minimum < 0 or maximum < 1 or minimum > maximum:
        raise UsageError(
            f"{name} needs 0 <= minimum <= maximum and maximum >= 1; got minimum {minimum}, "
            f"maximum {maximum}"
        )
    return (minimum, maximum)


def _check_values(values: Mapping[str, Any], *, source: str) -> None:
    """Check the type and range of each known setting present in ``values``."""

    def fail(name: str, expected: str) -> None:
        raise UsageError(f"{name} must be {expected}; got {values[name]!r} (from {source})")

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
        elif name in _BOOL_SETTINGS and not isinstance(value, bool):
            fail(name, "true or false")
        elif name == "tls_expiry_warning":
            try:
                if not isinstance(value, str) or parse_timedelta(value) < 0:
                    raise ValueError
            except (ValueError, TypeError, KeyError):
                fail(name, 'a Dask duration such as "7 days"')
        elif name in ("scheduler_port", "worker_port", "nanny_port") and not (
            _is_int(value) and 1 <= value <= 65535
        ):
            fail(name, "a TCP port number")
        elif name == "connect_timeout" and not (
            isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        ):
            fail(name, "a positive number of seconds")
        elif name == "worker_env" and not (
            isinstance(value, Mapping)
            and all(isinstance(k, str) and k and isinstance(v, str) for k, v in value.items())
        ):
            fail(name, "a mapping of environment variable names to strings")
        elif name == "preload" and (isinstance(value, str) or not all(
                isinstance(v, str) and v for v in value)):
            fail(name, "a list of module names")
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
        elif name in _ARN_SETTINGS and not (isinstance(value, str) and value.startswith("arn:")):
            fail(name, "an ARN (arn:...)")
        elif name in _TEXT_SETTINGS and not (isinstance(value, str) and value):
            fail(name, "a non-empty string")


def _check_combination(s: Mapping[str, Any], spec: ClusterSpec) -> None:
    """Check the settings that depend on each other."""
    adapt = s.get("adapt")
    workers = s.get("workers")
    if adapt and spec.workers is not None and not adapt[0] <= spec.workers <= adapt[1]:
        raise UsageError(
            f"workers={spec.workers} lies outside adapt {adapt[0]}:{adapt[1]}; start within "
            "the adaptive range or leave workers unset to start at its minimum"
        )
    if workers == 0 and not adapt:
        raise UsageError("workers=0 starts no workers; give at least 1, or set adapt")
    for role in ("worker", "scheduler"):
        cpu, mem = s.get(f"{role}_cpu"), s.get(f"{role}_mem")
        if cpu is None or mem is None:
            continue
        if mem not in _FARGATE_MEMORY[cpu]:
            allowed = _FARGATE_MEMORY[cpu]
            raise UsageError(
                f"{role}_mem={mem} MiB is not a Fargate size for {role}_cpu={cpu}; "
                f"allowed: {allowed[0]} to {allowed[-1]} MiB in steps of "
                f"{allowed[1] - allowed[0]} MiB"
            )
    if s.get("worker_mem") is not None and s["worker_mem"] < 1024:
        raise UsageError(
            f"worker_mem={s['worker_mem']} MiB is too small: dask-cloudprovider gives workers "
            "--memory-limit in whole GB, and below 1024 MiB that is 0, which means no limit; "
            "use at least 1024"
        )
    ports = [s.get(p) for p in ("scheduler_port", "worker_port", "nanny_port")]
    if None not in ports and len(set(ports)) != len(ports):
        raise UsageError(f"scheduler_port, worker_port and nanny_port must differ; got {ports}")
