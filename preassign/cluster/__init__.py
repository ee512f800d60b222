"""Getting a Dask client: on this machine, from a running scheduler, or on ECS Fargate.

Design
------
:func:`open_client` is the one way the CLI and the notebook get a
:class:`distributed.Client`. It takes a :class:`ClusterSpec`; every field left at ``None``
falls back to the packaged ``defaults.yaml`` (``cluster/defaults.yaml`` in the repository
links to it), over which the file named by ``PREASSIGN_CLUSTER_CONFIG`` is laid. It starts
or connects to the cluster, applies adaptive scaling, checks that client, scheduler and
workers run the same versions of the packages that matter, and closes whatever it started
when the ``with`` block ends, also on error.

Modules, lowest first (each imports only the ones above it):

* :mod:`.config`: the defaults file (package data), :class:`ClusterSpec`,
  :func:`parse_adapt`, the Fargate size table and every check of values and their
  combinations, :func:`check_scheduler_address` (no plain ``tcp://`` off this machine).
  No AWS and no ``distributed`` imports, so settings can be parsed and checked (and
  tested) without them.
* :mod:`.identity`: personal client certificates (ACM Private CA), the interim shared
  client identity, and :func:`~.identity.check_client_certificate` (expiry), run before
  connecting. ``botocore`` and ``cryptography`` are imported only to issue or fetch.
* :mod:`.preflight`: checks of the lake and output buckets a rollout needs (Block Public
  Access, TLS-only policy, SSE-KMS, versioning, prefixes), through ``botocore``.
* :mod:`.fargate`: dask-cloudprovider's ``FargateCluster``: :func:`fargate_kwargs` (where
  the security decisions live), :func:`build_task_commands` (the exact commands the tasks
  run), :func:`~.fargate.check_task_definitions` (the stack's task definitions against
  the settings), starting the cluster and closing it at exit.
* :mod:`.client`: :func:`open_client`, :func:`close_client`, :func:`check_versions` and
  :class:`ClusterVersionMismatch`; starting a LocalCluster, connecting to an address,
  shutting down.

Errors follow :mod:`preassign.errors`: invalid settings raise
:class:`~preassign.errors.UsageError` (a ValueError), a missing file
:class:`MissingFileError` (also a FileNotFoundError); a version mismatch, an unreachable
scheduler (also an OSError) or no worker joining (also a TimeoutError) raise
:class:`~preassign.errors.InfrastructureError` subclasses.

The names of :mod:`.fargate` and :mod:`.client` are imported on first use, so that
``import preassign.cluster`` (and the CLI's option parsing) does not load ``distributed``
or dask-cloudprovider.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import _STACK_OUTPUTS as _STACK_OUTPUTS  # for the cloudformation.yaml checks
from .config import (
    BUILTIN_DEFAULTS,
    CONFIG_ENV_VAR,
    INSECURE_SCHEDULER_FLAG,
    MIN_WORKER_MEMORY,
    TLS_FILE_NAMES,
    ClusterSpec,
    MissingFileError,
    check_memory_limit,
    check_scheduler_address,
    default_config_path,
    load_defaults,
    parse_adapt,
)

if TYPE_CHECKING:
    from .client import (
        VERSION_CHECKED_PACKAGES,
        ClusterVersionMismatch,
        NoWorkerJoinedError,
        SchedulerUnreachableError,
        check_versions,
        close_client,
        open_client,
    )
    from .fargate import (
        PROJECT_TAGS,
        TLS_DIR_ENV_VAR,
        TLS_SECRET_ENV_VAR,
        build_task_commands,
        fargate_kwargs,
    )

__all__ = [
    "BUILTIN_DEFAULTS",
    "CONFIG_ENV_VAR",
    "INSECURE_SCHEDULER_FLAG",
    "MIN_WORKER_MEMORY",
    "PROJECT_TAGS",
    "TLS_DIR_ENV_VAR",
    "TLS_FILE_NAMES",
    "TLS_SECRET_ENV_VAR",
    "VERSION_CHECKED_PACKAGES",
    "ClusterSpec",
    "ClusterVersionMismatch",
    "MissingFileError",
    "NoWorkerJoinedError",
    "SchedulerUnreachableError",
    "build_task_commands",
    "check_memory_limit",
    "check_scheduler_address",
    "check_versions",
    "close_client",
    "default_config_path",
    "fargate_kwargs",
    "load_defaults",
    "open_client",
    "parse_adapt",
]

# Names imported from a submodule on first use: the submodule imports distributed.
_LAZY = {
    "PROJECT_TAGS": "fargate",
    "TLS_DIR_ENV_VAR": "fargate",
    "TLS_SECRET_ENV_VAR": "fargate",
    "build_task_commands": "fargate",
    "fargate_kwargs": "fargate",
    "VERSION_CHECKED_PACKAGES": "client",
    "ClusterVersionMismatch": "client",
    "NoWorkerJoinedError": "client",
    "SchedulerUnreachableError": "client",
    "check_versions": "client",
    "close_client": "client",
    "open_client": "client",
}


def __getattr__(name: str) -> Any:
    """Import a name of :mod:`.fargate` or :mod:`.client` on first use (PEP 562).

    Args:
        name: The attribute asked for.

    Returns:
        The attribute, cached in this module.

    Raises:
        AttributeError: If no submodule provides ``name``.
    """
    submodule = _LAZY.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the module's names, the lazily imported ones included."""
    return sorted(set(globals()) | set(_LAZY))
