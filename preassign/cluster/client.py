"""Getting a Dask client: starting or reaching the cluster, checking versions, closing.

:func:`open_client` is the one way the CLI and the notebook get a
:class:`distributed.Client`. It resolves a :class:`~preassign.cluster.config.ClusterSpec`
over the defaults, starts a LocalCluster or a FargateCluster (:mod:`.fargate`) or connects
to a running scheduler, applies adaptive scaling, checks that client, scheduler and workers
run the same versions of the packages that matter, and closes whatever it started when the
``with`` block ends, also on error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from typing import Any, cast

import dask
import distributed
from dask.utils import parse_timedelta

from ..errors import InfrastructureError
from .config import ClusterSpec, check_tls_files, resolve_settings, tls_paths
from .fargate import client_security, fargate_kwargs, shutdown_cluster, start_fargate_cluster
from .identity import check_client_certificate

logger = logging.getLogger(__name__)

__all__ = [
    "VERSION_CHECKED_PACKAGES",
    "ClusterVersionMismatch",
    "NoWorkerJoinedError",
    "SchedulerUnreachableError",
    "check_versions",
    "close_client",
    "open_client",
]

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


class ClusterVersionMismatch(InfrastructureError):
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
        """Name the package, both versions and where the other one runs."""
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


class SchedulerUnreachableError(InfrastructureError, OSError):
    """The scheduler at an address did not answer within ``connect_timeout`` (an OSError)."""


class NoWorkerJoinedError(InfrastructureError, TimeoutError):
    """No worker joined the scheduler within ``connect_timeout`` (a TimeoutError)."""


@contextlib.contextmanager
def open_client(spec: ClusterSpec, *, keep_open: bool = False) -> Iterator[distributed.Client]:
    """Start or connect to a Dask cluster and yield a client for it.

    ``local`` starts a ``LocalCluster`` of worker processes, sized to this machine unless
    told otherwise. ``fargate`` starts a ``FargateCluster`` with
    :func:`~preassign.cluster.fargate.fargate_kwargs`. An address connects to a running
    scheduler, which is never closed by us. ``adapt`` turns on adaptive scaling. Before
    yielding, the versions of :data:`VERSION_CHECKED_PACKAGES` are compared between this
    machine, the scheduler and the workers present.

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
        UsageError: If the spec or the defaults are invalid.
        MissingFileError: If a TLS file this machine needs is missing (a
            FileNotFoundError).
        SchedulerUnreachableError: If a scheduler address cannot be reached (an OSError).
        NoWorkerJoinedError: If no worker joins within ``connect_timeout`` (a
            TimeoutError).

    Examples:
        >>> with open_client(ClusterSpec("local", workers=2)) as client:  # doctest: +SKIP
        ...     client.submit(sum, [1, 2]).result()
        3
    """
    s = resolve_settings(spec)
    kind = s["kind"]
    cluster: Any = None
    client: distributed.Client | None = None
    try:
        if kind == "local":
            cluster = _start_local_cluster(s)
        elif kind == "fargate":
            kwargs = fargate_kwargs(spec)
            _check_client_identity(s)
            cluster = start_fargate_cluster(kwargs)
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
    _compare_versions(cast(Mapping[str, Any], client.get_versions(check=False, packages=extra)))


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


def _initial_workers(s: Mapping[str, Any], spec: ClusterSpec) -> int:
    """Return how many workers the cluster starts with (None: LocalCluster decides)."""
    if s["adapt"] and spec.workers is None:
        return s["adapt"][0]
    workers = s.get("workers")
    return 1 if workers is None else workers


def _start_local_cluster(s: Mapping[str, Any]) -> distributed.LocalCluster:
    n_workers = s["workers"]
    if s["adapt"] and n_workers is None:
        n_workers = s["adapt"][0]
    env = dict(s.get("worker_env") or {})
    if env:
        # Set before each worker process starts (the C allocator reads its settings then):
        # Dask's own mechanism, which the nanny applies in this process too.
        key = "distributed.nanny.pre-spawn-environ"
        dask.config.set({key: {**dask.config.get(key, default={}), **env}})
    cluster = distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=s["threads_per_worker"],
        memory_limit=s["memory_limit"],
        processes=True,
        # Random port, loopback only: the dashboard has no authentication.
        dashboard_address="127.0.0.1:0",
        preload=list(s.get("preload") or []),
    )
    logger.info(
        "Started a LocalCluster at %s with %d workers", cluster.scheduler_address,
        len(cluster.workers),
    )
    return cluster


def _connect_to_scheduler(s: Mapping[str, Any]) -> distributed.Client:
    address = s["kind"]
    security = None
    if address.startswith("tls://"):
        _check_client_identity(s)
        security = client_security(s)
    try:
        return distributed.Client(address, security=security, timeout=s["connect_timeout"])
    except OSError as e:
        raise SchedulerUnreachableError(
            f"could not connect to the Dask scheduler at {address} within "
            f"{s['connect_timeout']} s ({e}); check that it runs and that this machine can "
            "reach it"
        ) from e


def _check_client_identity(s: Mapping[str, Any]) -> None:
    """This machine's TLS files exist, the key is private, the certificate is current."""
    check_tls_files(s)
    warn_before = dt.timedelta(seconds=parse_timedelta(s["tls_expiry_warning"]))
    check_client_certificate(tls_paths(s)["tls_cert"], warn_before=warn_before)


def _wait_for_first_worker(client: distributed.Client, s: Mapping[str, Any]) -> None:
    try:
        client.wait_for_workers(1, timeout=s["connect_timeout"])
    except (TimeoutError, distributed.TimeoutError) as e:
        hint = (
            f"; see the worker logs in CloudWatch Logs group {s['log_group']}"
            if s["kind"] == "fargate"
            else ""
        )
        raise NoWorkerJoinedError(
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
                shutdown_cluster(thing)
            else:
                thing.close()
        except Exception as e:  # keep closing the rest: a cluster must not be left running
            logger.warning("Closing the Dask %s failed: %s", what, e)
            errors.append(e)
    if errors and raise_errors:
        raise errors[0]
