"""The run's manifest, ``summary.json`` (SPEC §4), assembled by pure functions.

:func:`build_summary` turns what a run counted (per-partition stats added up, demand,
shortage, full boxes per day, the lake's fingerprint) into the summary's keys;
:func:`run_info` adds what only the finished run knows (timings, cluster, versions).
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from . import __version__
from .core.contract import TABLES, USER_KEYED, InvalidValues
from .core.partition import PartitionStats
from .core.rules import from_days

__all__ = ["build_summary", "cluster_info", "count_invalid", "package_versions", "run_key"]


def package_versions() -> dict[str, str]:
    """Versions of Python, preassign and the packages that shape results."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "preassign": __version__}
    for pkg in ("dask", "distributed", "pandas", "numpy", "pyarrow", "fsspec", "s3fs"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "not installed"
    return out


def cluster_info(client: Any) -> dict[str, Any]:
    """Kind and size of the cluster a run used (``client`` None: Dask's local threads)."""
    if client is None:
        import dask

        return {"kind": "threads", "workers": 1, "threads": dask.system.CPU_COUNT}
    info = client.scheduler_info()
    workers = info.get("workers", {})
    kind = getattr(client, "_preassign_kind", None) or \
        type(getattr(client, "cluster", None)).__name__
    return {
        "kind": kind,
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "memory_limit_bytes": sum(int(w.get("memory_limit") or 0) for w in workers.values()),
    }


def count_invalid(problems: Sequence[InvalidValues]) -> dict[str, int]:
    """Invalid rows per table, from the problems found (``--on-invalid drop``)."""
    out: dict[str, int] = {}
    for p in problems:
        out[p.table] = out.get(p.table, 0) + p.count
    return out


def run_key(fingerprint: Mapping[str, str], config: Any) -> str:
    """Same inputs, dates, parameters and version -> same key (to recognise a re-run)."""
    payload = json.dumps({"inputs": dict(fingerprint), "from": config.date_from.isoformat(),
                          "to": config.date_to.isoformat(), "params": config.params.to_dict(),
                          "version": __version__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_summary(
    config: Any,
    stats: PartitionStats,
    small_rows: Mapping[str, int],
    problems: Sequence[InvalidValues],
    demand: pd.DataFrame,
    shortage: pd.DataFrame | None,
    full_by_day: Mapping[int, int],
    lake: Mapping[str, Any],
    fingerprint: Mapping[str, str],
) -> dict[str, Any]:
    """The run's ``summary.json`` (SPEC §4), but the keys only the run knows at its end.

    Those are ``stage_seconds``, ``cluster``, ``versions``, ``run_id`` and ``finished_at``.

    Args:
        config: the run's configuration (:class:`preassign.pipeline.RunConfig`).
        stats: every partition's stats added up (assign-pass counts included).
        small_rows: raw rows of ``snacks`` (and ``stock``).
        problems: invalid values found (with ``on_invalid="drop"``).
        demand: demand per (date, snack).
        shortage: shortage per snack, or None without stock.
        full_by_day: full boxes per delivery day.
        lake: ``url``, ``layout``, ``partitions``.
        fingerprint: per table, the fingerprint of its files.
    """
    n_full = int(sum(full_by_day.values()))
    merged_rows = {**stats.input_rows, **small_rows}
    return {
        "date_from": config.date_from.isoformat(),
        "date_to": config.date_to.isoformat(),
        "parameters": config.params.to_dict(),
        "users_targeted": int(stats.users_targeted),
        "boxes_full": n_full,
        "boxes_short": int(stats.users_targeted - n_full),
        "boxes_by_date": {
            from_days(day).isoformat(): {
                "full": int(full_by_day.get(day, 0)),
                "short": int(n - full_by_day.get(day, 0)),
            }
            for day, n in sorted(stats.targeted_by_day.items())
        },
        "units_total": int(demand["units"].sum()),
        "snacks_in_demand": int(demand["snack_id"].nunique()),
        "snacks_short": int((shortage["shortage"] > 0).sum()) if shortage is not None else None,
        "units_short": int(shortage["shortage"].sum()) if shortage is not None else None,
        "input_rows": {name: int(merged_rows.get(name, 0)) for name in TABLES
                       if name in merged_rows},
        "orphan_rows": {name: int(stats.orphan_rows.get(name, 0)) for name in USER_KEYED[1:]},
        "invalid_rows": {k: int(v) for k, v in sorted(count_invalid(problems).items())},
        "on_invalid": config.on_invalid,
        "lake": dict(lake),
        "input_fingerprint": dict(fingerprint),
        "run_key": run_key(fingerprint, config),
    }
