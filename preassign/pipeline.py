"""The only module that knows Dask: read -> prior -> map_partitions(state + assign)
-> groupby demand -> publish.

Two passes over the co-partitioned user tables:

1. **scan** (one task per partition): validate every row, count input and orphan
   rows, and sum the latest ratings per snack. A tiny reduction on the client
   gives C and prior(s) for a few hundred snacks.
2. **assign** (``map_partitions``): build the partition's user state and fill
   its boxes, with the catalog and priors as small broadcast arguments. Its
   output is written to Parquet, aggregated to demand per (date, snack) with a
   groupby, and counted for the summary, all in one graph so each partition is
   assigned once.

Outputs are written to a staging area and published at the end (see
:class:`preassign.lake.Output`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa

from . import __version__
from .assign import STAGES, assign_snacks, assign_snacks_sparse, snack_prior
from .contract import TABLES, USER_KEYED, LakeError, dedupe_keyed, normalize_table
from .demand import DEMAND_COLUMNS, combine_demand, compute_shortage, count_demand
from .lake import (
    Lake,
    Output,
    open_lake,
    protected_locations,
    read_small_table,
    read_user_tables,
)
from .params import Params
from .report import render_report
from .state import (
    PartitionStats,
    SnackCatalog,
    build_catalog,
    build_sparse_state,
    build_user_state,
    prepare_partition,
    summarize_partition,
    targeted_by_day,
)

__all__ = ["RunConfig", "RunResult", "run_preassignment", "check_output", "load_catalog",
           "ASSIGNMENT_SCHEMA"]

log = logging.getLogger(__name__)
_EPOCH = dt.date(1970, 1, 1)

ASSIGNMENT_SCHEMA = pa.schema(
    [
        ("delivery_on", pa.date32()),
        ("user_id", pa.int64()),
        ("slot", pa.int32()),
        ("snack_id", pa.int64()),
        ("stage", pa.string()),
    ]
)
DEMAND_SCHEMA = pa.schema(
    [("delivery_on", pa.date32()), ("snack_id", pa.int64())]
    + [(c, pa.int64()) for c in DEMAND_COLUMNS]
)
SHORTAGE_SCHEMA = pa.schema(
    [("snack_id", pa.int64()), ("units", pa.int64()), ("stock", pa.int64()), ("shortage", pa.int64())]
)
PRIOR_SCHEMA = pa.schema(
    [("snack_id", pa.int64()), ("genre", pa.string()), ("ratings_count", pa.int64()),
     ("ratings_sum", pa.int64()), ("prior", pa.float64())]
)
_INTERNAL_META = pd.DataFrame(
    {
        "delivery_on": np.zeros(0, np.int32),
        "user_id": np.zeros(0, np.int64),
        "slot": np.zeros(0, np.int16),
        "snack_id": np.zeros(0, np.int64),
        "stage": np.zeros(0, np.int8),
        "box_size": np.zeros(0, np.int16),
    }
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, besides the cluster."""

    lake: str
    date_from: dt.date
    date_to: dt.date
    out: str
    params: Params = dataclasses.field(default_factory=Params)
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    on_invalid: str = "raise"
    overwrite: bool = False
    users_per_partition: int = 50_000
    engine: str = "numba"

    def __post_init__(self) -> None:
        if self.engine not in ("numba", "numpy"):
            raise ValueError(f"engine must be 'numba' or 'numpy', got {self.engine!r}")
        if self.date_to < self.date_from:
            raise ValueError(f"--until {self.date_to} is before --date {self.date_from}")
        if self.on_invalid not in ("raise", "drop"):
            raise ValueError(f"on_invalid must be 'raise' or 'drop', got {self.on_invalid!r}")


@dataclasses.dataclass
class RunResult:
    """What a finished run produced."""

    out: str
    summary: dict[str, Any]
    demand: pd.DataFrame
    shortage: pd.DataFrame | None


# --------------------------------------------------------------------------------------------
# small tables (read on the client)


def _concat_normalized(name: str, parts: list[pd.DataFrame], on_invalid: str,
                       rejected: dict[str, list] | None = None) -> tuple[pd.DataFrame, int, list]:
    frames, problems, rows = [], [], 0
    for raw in parts:
        rows += len(raw)
        dropped: dict[str, pd.DataFrame] = {}
        norm, found, _ = normalize_table(name, raw, on_invalid=on_invalid, rejected=dropped)
        frames.append(norm)
        problems.extend(found)
        if rejected is not None and name in dropped:
            rejected.setdefault(name, []).append(dropped[name])
    if not frames:
        from .contract import empty_table

        frames = [normalize_table(name, empty_table(name))[0]]
    return pd.concat(frames, ignore_index=True), rows, problems


def load_catalog(
    lake: Lake, on_invalid: str = "raise", rejected: dict[str, list] | None = None
) -> tuple[SnackCatalog, pd.DataFrame | None, dict[str, int], list]:
    """Read, check and de-duplicate ``snacks`` and (optional) ``stock``.

    Returns:
        ``(catalog, stock, input_rows, problems)``; ``stock`` is ``None`` when the
        lake has no ``stock`` table, else the rows of known snacks. With
        ``on_invalid="drop"``, ``rejected`` (if given) receives the dropped rows.
    """
    snacks, n_snacks, problems = _concat_normalized(
        "snacks", read_small_table(lake, "snacks"), on_invalid, rejected)
    catalog = build_catalog(dedupe_keyed("snacks", snacks, "snack_id"))
    rows = {"snacks": n_snacks}
    stock = None
    if lake.has_table("stock"):
        raw, n_stock, found = _concat_normalized("stock", read_small_table(lake, "stock"),
                                                 on_invalid, rejected)
        problems += found
        rows["stock"] = n_stock
        stock = dedupe_keyed("stock", raw, "snack_id")
        stock = stock[np.isin(stock["snack_id"].to_numpy(np.int64), catalog.snack_id)]
    return catalog, stock, rows, problems


# --------------------------------------------------------------------------------------------
# the kernels (run on workers; pure apart from the bounds check)


def _check_bounds(raw: dict[str, pd.DataFrame], bounds: tuple[int, int] | None, index: int) -> None:
    """Every raw row of partition ``index`` must lie in its recorded user range (checked
    before orphans are set aside: a row in the wrong file would otherwise look orphan)."""
    if bounds is None:
        return
    from .contract import _to_int

    lo, hi = bounds
    for name, frame in raw.items():
        if frame is None or "user_id" not in frame or not len(frame):
            continue
        uid, nulls = _to_int(name, "user_id", "id", frame["user_id"])
        outside = ~nulls & ((uid < lo) | (uid >= hi))
        if outside.any():
            raise LakeError(
                f"table {name!r}, column 'user_id': {int(outside.sum())} rows of partition "
                f"{index} lie outside its recorded range [{lo}, {hi}) (e.g. user_id="
                f"{int(uid[outside][0])}); the lake's _lake.json does not match its files - "
                "rewrite the lake or delete _lake.json"
            )


#: Tables the scan pass reads when invalid rows fail the run: enough for the prior, the
#: target users and their checks. The other user tables are checked and counted by the
#: assign pass, which reads them anyway (so no table is read and decoded twice but these).
SCAN_TABLES = ("users", "ratings")
_STATS_STAGE = -1  # marker rows in the assign pass's output: per-table counts, never written


def _scan_partition(
    index: int,
    bounds: tuple[int, int] | None,
    catalog: SnackCatalog,
    date_from: dt.date,
    date_to: dt.date,
    on_invalid: str,
    engine: str,
    names: tuple[str, ...],
    *parts: pd.DataFrame,
) -> PartitionStats:
    raw = dict(zip(names, parts))
    _check_bounds(raw, bounds, index)
    rejected: dict[str, pd.DataFrame] = {}
    tables, input_rows, orphans, problems = prepare_partition(raw, catalog, on_invalid=on_invalid,
                                                              rejected=rejected)
    tables = {name: tables[name] for name in names}
    input_rows = {name: n for name, n in input_rows.items() if name in names}
    orphans = {name: n for name, n in orphans.items() if name in names}
    sums, counts, targeted = summarize_partition(tables, catalog, date_from, date_to, engine)
    return PartitionStats(input_rows, orphans, sums, counts, targeted, problems,
                          targeted_by_day(tables["users"], date_from, date_to),
                          {name: [frame] for name, frame in rejected.items()})


def _assign_partition(
    *parts: pd.DataFrame,
    catalog: SnackCatalog,
    prior: np.ndarray,
    date_from: dt.date,
    date_to: dt.date,
    params: Params,
    on_invalid: str,
    engine: str,
    count_tables: tuple[str, ...] = (),
    bounds: list[int] | None = None,
    partition_info: dict | None = None,
) -> pd.DataFrame:
    raw = dict(zip(USER_KEYED, parts))
    if bounds is not None and partition_info is not None:
        i = partition_info["number"]
        _check_bounds({n: raw[n] for n in count_tables}, (bounds[i], bounds[i + 1]), i)
    tables, input_rows, orphans, _ = prepare_partition(raw, catalog, on_invalid=on_invalid)
    if engine == "numba":
        sparse = build_sparse_state(tables, catalog, date_from, date_to, params)
        out = assign_snacks_sparse(sparse, catalog, prior, params)
    else:
        state = build_user_state(tables, catalog, date_from, date_to, params)
        out = assign_snacks(state, catalog, prior, params)
    if not count_tables:
        return out
    k = [USER_KEYED.index(n) for n in count_tables]
    markers = pd.DataFrame({  # table index, input rows, orphan rows of the tables counted here
        "delivery_on": np.array(k, np.int32),
        "user_id": np.array([input_rows[n] for n in count_tables], np.int64),
        "slot": np.zeros(len(k), np.int16),
        "snack_id": np.array([orphans[n] for n in count_tables], np.int64),
        "stage": np.full(len(k), _STATS_STAGE, np.int8),
        "box_size": np.zeros(len(k), np.int16),
    })
    return pd.concat([out, markers], ignore_index=True)


def _days_to_arrow_dates(days: np.ndarray) -> pd.Series:
    arr = pa.array(np.asarray(days, np.int32), pa.int32()).cast(pa.date32())
    return pd.Series(pd.arrays.ArrowExtensionArray(arr))


def _assignment_output(frame: pd.DataFrame) -> pd.DataFrame:
    stage = pa.array(np.array(STAGES, dtype=object)[frame["stage"].to_numpy(np.int64)], pa.string())
    return pd.DataFrame(
        {
            "delivery_on": _days_to_arrow_dates(frame["delivery_on"].to_numpy()).array,
            "user_id": frame["user_id"].to_numpy(np.int64),
            "slot": frame["slot"].to_numpy(np.int32),
            "snack_id": frame["snack_id"].to_numpy(np.int64),
            "stage": pd.arrays.ArrowExtensionArray(stage),
        }
    )


def _assignment_rows(frame: pd.DataFrame) -> pd.DataFrame:
    keep = frame["stage"].to_numpy() >= 0
    return frame if keep.all() else frame.loc[keep].reset_index(drop=True)


def _count_rows(frame: pd.DataFrame) -> pd.DataFrame:
    marker = frame["stage"].to_numpy() == _STATS_STAGE
    return frame.loc[marker, ["delivery_on", "user_id", "snack_id"]].reset_index(drop=True)


def _full_boxes_by_day(frame: pd.DataFrame) -> pd.DataFrame:
    full = frame["slot"].to_numpy() == frame["box_size"].to_numpy()  # slot K exists iff full
    return pd.DataFrame({"delivery_on": frame["delivery_on"].to_numpy()[full],
                         "full": np.ones(int(full.sum()), np.int64)})


def _demand_meta() -> pd.DataFrame:
    return count_demand(_INTERNAL_META)


# --------------------------------------------------------------------------------------------
# the run


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "preassign": __version__}
    for pkg in ("dask", "distributed", "pandas", "numpy", "pyarrow", "fsspec", "s3fs"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "not installed"
    return out


def _cluster_info(client: Any) -> dict[str, Any]:
    if client is None:
        return {"kind": "threads", "workers": 1, "threads": dask.system.CPU_COUNT}
    info = client.scheduler_info()
    workers = info.get("workers", {})
    kind = getattr(client, "_preassign_kind", None) or type(getattr(client, "cluster", None)).__name__
    return {
        "kind": kind,
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "memory_limit_bytes": sum(int(w.get("memory_limit") or 0) for w in workers.values()),
    }


class ClusterStalled(RuntimeError):
    """Every worker stayed paused (memory above Dask's pause threshold): no progress."""


class _Watchdog(threading.Thread):
    """Cancel a computation when every worker stays paused: a clear error, never a hang."""

    def __init__(self, client: Any, futures: list, stall_seconds: float):
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


#: seconds every worker may stay paused before the run is stopped
STALL_SECONDS = float(os.environ.get("PREASSIGN_STALL_SECONDS", "60"))


def _compute(client: Any, collections: list, progress: bool) -> list:
    if client is None:
        return list(dask.compute(*collections))
    futures = client.compute(collections)
    watchdog = _Watchdog(client, futures, STALL_SECONDS)
    watchdog.start()
    try:
        if progress:
            from distributed import progress as show_progress

            show_progress(futures, notebook=False)  # a text bar: terminals and notebooks alike
            sys.stdout.write("\n")
        return client.gather(futures)
    except Exception:
        if watchdog.reason:
            raise ClusterStalled(watchdog.reason) from None
        raise
    finally:
        watchdog.stop.set()


def check_output(out: str, lake: str, storage_options: Mapping[str, Any] | None = None, *,
                 overwrite: bool = False) -> Output:
    """Open a run's output location and refuse one that would destroy or pollute data.

    The output must not be, contain or lie inside the lake (or one of its tables) or any
    other lake, must not be an existing file, and may only replace a complete output of
    preassign (with ``overwrite``).

    Raises:
        UsageError: the output overlaps the lake or holds something that is not ours.
        OutputExistsError: it holds a complete run and ``overwrite`` is off.
    """
    output = Output(out, storage_options, overwrite=overwrite)
    output.check_target(protected_locations(lake, storage_options))
    return output


def run_preassignment(
    config: RunConfig,
    client: Any = None,
    *,
    progress: bool = False,
    on_stage: Callable[[str, float], None] | None = None,
) -> RunResult:
    """Run one pre-assignment and publish its outputs (SPEC §4).

    Args:
        config: lake, dates, output, parameters.
        client: a ``distributed.Client`` (its cluster runs the tasks); ``None`` uses
            Dask's current scheduler (handy in tests).
        progress: draw Dask's progress bars (only sensible on a terminal or notebook).
        on_stage: called with (stage name, seconds) after each stage, for logging.

    Returns:
        The published output location, the summary, demand and shortage frames.

    Raises:
        LakeError: the lake breaks the contract (nothing is published).
        OutputExistsError: ``config.out`` holds a complete run and overwrite is off.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    output = check_output(config.out, config.lake, config.storage_options,
                          overwrite=config.overwrite)
    output.acquire()
    try:
        return _run(config, client, output, progress, on_stage, started, seconds)
    finally:
        output.release()


def _run(config: RunConfig, client: Any, output: Output, progress: bool,
         on_stage: Callable[[str, float], None] | None, started: float,
         seconds: dict[str, float]) -> RunResult:
    def done(stage: str, t0: float) -> float:
        seconds[stage] = round(time.perf_counter() - t0, 3)
        if on_stage:
            on_stage(stage, seconds[stage])
        return time.perf_counter()

    t = time.perf_counter()
    lake = open_lake(config.lake, config.storage_options)
    fingerprint = lake.fingerprint()
    rejected_small: dict[str, list] = {}
    catalog, stock, small_rows, problems = load_catalog(lake, config.on_invalid, rejected_small)
    frames, layout = read_user_tables(lake, users_per_partition=config.users_per_partition)
    npart = frames["users"].npartitions
    log.info("lake %s: %d snacks, %d partitions (%s)", config.lake, catalog.size, npart, layout)
    t = done("read", t)

    # pass 1: validate, count, and sum latest ratings per snack -> prior
    # (dropping invalid rows needs every table here, to collect the rejected rows)
    scan_names = SCAN_TABLES if config.on_invalid == "raise" else USER_KEYED
    deferred = tuple(n for n in USER_KEYED if n not in scan_names)
    delayed_parts = {name: frames[name].to_delayed() for name in scan_names}
    bounds = lake.manifest["bounds"] if layout == "co-partitioned" and lake.manifest else None
    scan = dask.delayed(_scan_partition, pure=True)
    tasks = [
        scan(
            i,
            (bounds[i], bounds[i + 1]) if bounds else None,
            catalog,
            config.date_from,
            config.date_to,
            config.on_invalid,
            config.engine,
            scan_names,
            *[delayed_parts[name][i] for name in scan_names],
        )
        for i in range(npart)
    ]
    partials = _compute(client, tasks, progress)
    stats = partials[0]
    for p in partials[1:]:
        stats = stats + p
    problems = problems + stats.problems
    prior = snack_prior(stats.rating_sum, stats.rating_count, config.params)
    t = done("scan", t)

    # pass 2: user state + assignment per partition, written, aggregated and counted
    output.discard()
    try:
        result = dask.dataframe.map_partitions(
            _assign_partition,
            *[frames[name] for name in USER_KEYED],
            catalog=catalog,
            prior=prior,
            date_from=config.date_from,
            date_to=config.date_to,
            params=config.params,
            on_invalid=config.on_invalid,
            engine=config.engine,
            count_tables=deferred,
            bounds=bounds,
            meta=_INTERNAL_META,
            align_dataframes=False,
            enforce_metadata=False,
        )
        assignments = result.map_partitions(_assignment_rows, meta=_INTERNAL_META)
        counted = result.map_partitions(_count_rows, meta=_count_rows(_INTERNAL_META))
        write = assignments.map_partitions(
            _assignment_output, meta=_assignment_output(_INTERNAL_META)
        ).to_parquet(
            output.staging_url("assignments"),
            write_index=False,
            schema=ASSIGNMENT_SCHEMA,
            storage_options=config.storage_options,
            compute=False,
            write_metadata_file=False,
        )
        demand_parts = assignments.map_partitions(count_demand, meta=_demand_meta())
        demand_dd = demand_parts.groupby(["delivery_on", "snack_id"]).sum(split_out=1)
        full_boxes = assignments.map_partitions(_full_boxes_by_day, meta=_full_boxes_by_day(
            _INTERNAL_META)).groupby("delivery_on")["full"].sum()
        _, demand, full_by_day, counts = _compute(
            client, [write, demand_dd, full_boxes, counted], progress)
        n_full = int(full_by_day.sum())
        for k, rows, orphan in counts.itertuples(index=False):
            name = USER_KEYED[int(k)]
            stats.input_rows[name] = stats.input_rows.get(name, 0) + int(rows)
            stats.orphan_rows[name] = stats.orphan_rows.get(name, 0) + int(orphan)
        t = done("assign", t)

        demand = combine_demand(demand.reset_index())
        shortage = compute_shortage(demand, stock) if stock is not None else None
        demand_out = demand.assign(delivery_on=_days_to_arrow_dates(demand["delivery_on"]).array)
        output.write_frame("demand/part.0.parquet", demand_out, DEMAND_SCHEMA)
        if shortage is not None:
            output.write_frame("shortage/part.0.parquet", shortage, SHORTAGE_SCHEMA)
        for name, frames in {**rejected_small, **stats.rejected}.items():
            output.write_frame(f"rejected/{name}/part.0.parquet",
                               pd.concat(frames, ignore_index=True))
        output.write_frame("snack_prior/part.0.parquet", pd.DataFrame({
            "snack_id": catalog.snack_id,
            "genre": np.array(catalog.genres, dtype=object)[catalog.genre] if catalog.size
            else np.zeros(0, object),
            "ratings_count": stats.rating_count,
            "ratings_sum": stats.rating_sum,
            "prior": prior,
        }), PRIOR_SCHEMA)
        units_total = int(demand["units"].sum())
        orphan_rows = {name: int(stats.orphan_rows.get(name, 0)) for name in USER_KEYED[1:]}
        input_rows = {name: int({**stats.input_rows, **small_rows}.get(name, 0))
                      for name in TABLES if name in stats.input_rows or name in small_rows}
        summary = {
            "date_from": config.date_from.isoformat(),
            "date_to": config.date_to.isoformat(),
            "parameters": config.params.to_dict(),
            "users_targeted": int(stats.users_targeted),
            "boxes_full": int(n_full),
            "boxes_short": int(stats.users_targeted - int(n_full)),
            "boxes_by_date": {
                (_EPOCH + dt.timedelta(days=int(day))).isoformat(): {
                    "full": int(full_by_day.get(day, 0)),
                    "short": int(n - full_by_day.get(day, 0)),
                }
                for day, n in sorted(stats.targeted_by_day.items())
            },
            "units_total": units_total,
            "snacks_in_demand": int(demand["snack_id"].nunique()),
            "snacks_short": int((shortage["shortage"] > 0).sum()) if shortage is not None else None,
            "input_rows": input_rows,
            "orphan_rows": orphan_rows,
            "invalid_rows": {k: int(v) for k, v in sorted(_count_invalid(problems).items())},
            "on_invalid": config.on_invalid,
            "lake": {"url": lake.url, "layout": layout, "partitions": npart},
            "input_fingerprint": fingerprint,
            "run_key": _run_key(fingerprint, config),
            "stage_seconds": {},
            "cluster": _cluster_info(client),
            "versions": _versions(),
            "run_id": output.run_id,
            "finished_at": None,
        }
        t_pub = time.perf_counter()
        seconds["total"] = round(time.perf_counter() - started, 3)
        summary["stage_seconds"] = dict(seconds)
        summary["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        t_report = time.perf_counter()
        summary["stage_seconds"]["report"] = 0.0
        html = render_report(summary, demand, shortage)
        summary["stage_seconds"]["report"] = round(time.perf_counter() - t_report, 3)
        output.write_bytes("report.html", html.encode("utf-8"))
        output.write_json("summary.json", summary)
        output.publish()
        done("publish", t_pub)
    except BaseException:
        output.discard()
        raise
    return RunResult(out=config.out, summary=summary, demand=demand, shortage=shortage)


def _count_invalid(problems: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in problems:
        out[p.table] = out.get(p.table, 0) + p.count
    return out


def _run_key(fingerprint: dict[str, str], config: RunConfig) -> str:
    """Same inputs, dates, parameters and version -> same key (to recognise a re-run)."""
    import hashlib
    import json

    payload = json.dumps({"inputs": fingerprint, "from": config.date_from.isoformat(),
                          "to": config.date_to.isoformat(), "params": config.params.to_dict(),
                          "version": __version__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
