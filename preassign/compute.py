"""Computing Dask collections for the commands: progress bars and the stall watchdog.

Every command that computes on the cluster (``run``, ``extract``, ``synth``) goes through
:func:`compute`: with a ``distributed`` client it submits the collections, draws Dask's own
progress bar when asked (text, on a terminal or in a notebook) and watches the workers -
when every worker stays *paused* (memory above Dask's pause threshold) for
:data:`STALL_SECONDS` the computation is cancelled and :class:`ClusterStalled` raised, a
clear error instead of a silent hang. Without a client it is ``dask.compute`` (tests).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import dask
from distributed.diagnostics.plugin import WorkerPlugin

from .errors import InfrastructureError, PreassignError

T = TypeVar("T")

__all__ = ["STALL_SECONDS", "ClusterStalled", "QuietKnownErrors", "compute", "compute_futures",
           "quiet_known_errors",
           "with_cluster"]

#: Seconds every worker may stay paused before a computation is stopped
#: (``PREASSIGN_STALL_SECONDS`` changes it).
STALL_SECONDS = float(os.environ.get("PREASSIGN_STALL_SECONDS", "60"))


class ClusterStalled(InfrastructureError):
    """Every worker stayed paused (memory above Dask's pause threshold): no progress."""


def _known_error_names() -> set[str]:
    names, todo = set(), [PreassignError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


class _KnownErrorFilter(logging.Filter):
    """Drop worker log records that only repeat a failure the client reports.

    * "Compute Failed" when the task raised one of our known errors (an invalid value, a
      missing column): it is raised again on the client, where the command prints it once
      as ``Error: ...``; the worker's copy with its traceback would bury that line.
    * A task cancelled because the computation already failed ("ended with
      CancelledError"), logged while the cluster shuts down.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        args = record.args if isinstance(record.args, tuple) else ()
        if msg.startswith("Compute Failed") and len(args) >= 4:
            exception = str(args[3]).lstrip("'\"")
            return exception.split("(", 1)[0] not in _known_error_names()
        return "ended with CancelledError" not in record.getMessage()


class QuietKnownErrors(WorkerPlugin):
    """A worker plugin that keeps known input errors out of the workers' error logs.

    Installed by :func:`compute` on every client it computes with (the Fargate image has
    preassign installed, so the plugin unpickles on its workers too).
    """

    name = "preassign-quiet-known-errors"

    def setup(self, worker: Any) -> None:
        """Add the filter to the worker's loggers."""
        for name in ("distributed.worker", "distributed.worker.state_machine"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _KnownErrorFilter) for f in logger.filters):
                logger.addFilter(_KnownErrorFilter())

    def teardown(self, worker: Any) -> None:
        """Nothing to release (the filter goes with the worker process)."""


def quiet_known_errors(client: Any) -> None:
    """Install :class:`QuietKnownErrors` on the client's workers (once per client)."""
    if getattr(client, "_preassign_quiet", False):
        return
    client.register_plugin(QuietKnownErrors(), name=QuietKnownErrors.name)
    client._preassign_quiet = True


class _Watchdog(threading.Thread):
    """Cancel a computation when every worker stays paused: a clear error, never a hang."""

    def __init__(self, client: Any, futures: list[Any], stall_seconds: float):
        super().__init__(name="preassign-watchdog", daemon=True)
        self.client, self.futures, self.stall_seconds = client, futures, stall_seconds
        self.stop = threading.Event()
        self.reason: str | None = None

    def run(self) -> None:
        paused_since = None
        while not self.stop.wait(1.0):
            try:
                workers = self.client.scheduler_info()["workers"]
            except Exception:  # noqa: BLE001 - the scheduler may be busy; look again later
                continue
            if workers and all(w.get("status") == "paused" for w in workers.values()):
                paused_since = paused_since or time.monotonic()
                if time.monotonic() - paused_since >= self.stall_seconds:
                    limit = min(int(w.get("memory_limit") or 0) for w in workers.values())
                    self.reason = (
                        f"all {len(workers)} Dask workers have been paused for "
                        f"{self.stall_seconds:.0f} s: their memory use is above the pause "
                        f"threshold (80% of a {limit / 2**20:.0f} MiB memory limit), so no task "
                        "can run. Raise --memory-limit (a worker needs about 1 GiB for 50,000 "
                        "users per partition) or write the lake with fewer users per partition"
                    )
                    self.client.cancel(self.futures)
                    return
            else:
                paused_since = None


def compute(client: Any, collections: Sequence[Any], progress: bool = False,
            label: str | None = None) -> list[Any]:
    """Compute Dask collections (delayed objects, frames, series) and return their results.

    Args:
        client: a ``distributed.Client``, or None for Dask's current scheduler.
        collections: what to compute, in one graph (shared tasks run once).
        progress: draw Dask's progress bar (with a client).
        label: the stage's name, printed before its progress bar.

    Returns:
        The results, in the order of ``collections``.

    Raises:
        ClusterStalled: every worker stayed paused for :data:`STALL_SECONDS`.
    """
    if client is None:
        return list(dask.compute(*collections))
    quiet_known_errors(client)
    return compute_futures(client, client.compute(list(collections)), progress, label)


def compute_futures(client: Any, futures: Sequence[Any], progress: bool = False,
                    label: str | None = None) -> list[Any]:
    """Gather submitted futures with :func:`compute`'s progress bar and stall watchdog.

    Raises:
        ClusterStalled: every worker stayed paused for :data:`STALL_SECONDS`.
    """
    quiet_known_errors(client)
    futures = list(futures)
    watchdog = _Watchdog(client, futures, STALL_SECONDS)
    watchdog.start()
    try:
        if progress:
            from distributed import progress as show_progress

            if label:
                sys.stdout.write(f"{label}:\n")
            show_progress(futures, notebook=False)  # a text bar: terminals and notebooks alike
            sys.stdout.write("\n")
        return list(client.gather(futures))
    except Exception:
        if watchdog.reason:
            raise ClusterStalled(watchdog.reason) from None
        raise
    finally:
        watchdog.stop.set()


def with_cluster(spec: Any, work: Callable[[Any], T]) -> T:
    """Open the cluster ``spec`` describes, run ``work(client)`` on it, close it.

    The cluster is closed whether ``work`` succeeds or fails (see
    :func:`preassign.cluster.open_client`).

    Raises:
        InfrastructureError: the cluster could not be started or reached.
    """
    from .cluster import open_client

    try:
        opened = open_client(spec)
        client = opened.__enter__()
    except PreassignError:
        raise
    except Exception as exc:
        raise InfrastructureError(
            f"could not start or reach the Dask cluster ({spec.kind or 'local'}): {exc}") from exc
    try:
        result = work(client)
    except BaseException:
        opened.__exit__(*sys.exc_info())
        raise
    opened.__exit__(None, None, None)
    return result
