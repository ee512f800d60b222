"""The only module that builds Dask graphs: read -> scan -> prior -> assign -> demand -> publish.

Two passes over the co-partitioned user tables, one task per partition each:

1. **scan** (:func:`scan_partition`): check ``users`` and ``ratings`` (every table when
   invalid rows are dropped: their rows are kept aside), count rows and orphans, and sum
   the latest ratings per snack. The small per-partition stats are added up on the client:
   C and prior(s) for a few hundred snacks.
2. **assign** (:func:`assign_partition`): prepare every table of the partition, build its
   user state with the chosen engine and fill its boxes. Each task returns two results:
   the assignment frame (into a Dask frame with an explicit ``meta``, checked by Dask) and
   the counts of the tables the scan did not read. The frames are written to Parquet,
   aggregated to demand per (date, snack) with a groupby, and counted, in one graph, so
   each partition is assigned once.

The core functions are pure (:mod:`preassign.core`); this module only wires them.
Outputs are written to a staging area and published at the end
(:class:`preassign.storage.RunOutput`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from .compute import compute
from .core.catalog import SnackCatalog
from .core.contract import USER_KEYED, check_user_range
from .core.demand import combine_demand, compute_shortage, count_demand
from .core.dense import ASSIGNMENT_COLUMNS
from .core.engine import get_engine
from .core.params import Params
from .core.partition import PartitionStats, prepare_partition, target_mask, targeted_by_day
from .core.rules import snack_prior
from .errors import InputError, UsageError
from .lake import Lake, load_catalog, open_lake, protected_locations, read_user_tables
from .outputs import (
    ASSIGNMENT_SCHEMA,
    DEMAND_SCHEMA,
    PRIOR_SCHEMA,
    RESERVATION_SCHEMA,
    SHORTAGE_SCHEMA,
    assignment_output,
    days_to_arrow_dates,
)
from .report import render_report
from .storage import RunOutput
from .summary import build_summary, cluster_info, package_versions

__all__ = [
    "ASSIGNMENT_SCHEMA",
    "RunConfig",
    "RunResult",
    "assign_partition",
    "check_output",
    "load_catalog",
    "ExtractFirst",
    "run_job",
    "run_preassignment",
    "scan_partition",
]

log = logging.getLogger(__name__)

#: The engines' assignment frame, empty: the ``meta`` of the assigned Dask frame.
ASSIGNMENT_META = pd.DataFrame(
    {
        "delivery_on": np.zeros(0, np.int32),
        "user_id": np.zeros(0, np.int64),
        "slot": np.zeros(0, np.int16),
        "snack_id": np.zeros(0, np.int64),
        "stage": np.zeros(0, np.int8),
        "box_size": np.zeros(0, np.int64),
    }
)[list(ASSIGNMENT_COLUMNS)]

#: Per-partition row counts of the tables the assign pass counts: the ``meta`` of their frame.
COUNTS_META = pd.DataFrame({"table": pd.Series([], dtype=object),
                            "input_rows": np.zeros(0, np.int64),
                            "orphan_rows": np.zeros(0, np.int64)})

#: Tables the scan pass reads when invalid rows fail the run: enough for the prior and the
#: target users. The other user tables are checked and counted by the assign pass, which
#: reads them anyway (so no table but these is read and decoded twice).
SCAN_TABLES = ("users", "ratings")


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
    stock_aware: bool = False

    def __post_init__(self) -> None:
        """Check the values (a :class:`~preassign.errors.UsageError` names the bad one)."""
        get_engine(self.engine)
        if self.date_to < self.date_from:
            raise UsageError(f"--until {self.date_to} is before --date {self.date_from}")
        if self.on_invalid not in ("raise", "drop"):
            raise UsageError(f"on_invalid must be 'raise' or 'drop', got {self.on_invalid!r}")


@dataclasses.dataclass
class RunResult:
    """What a finished run produced."""

    out: str
    summary: dict[str, Any]
    demand: pd.DataFrame
    shortage: pd.DataFrame | None
    reservations: pd.DataFrame | None = None


# --------------------------------------------------------------------------------------------
# the tasks (run on workers; pure functions of their inputs)


def scan_partition(
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
    """Pass 1 on partition ``index``: check and count the tables ``names``, sum latest ratings.

    Args:
        index: the partition's number.
        bounds: its recorded user range ``[lo, hi)`` (co-partitioned lakes), else None.
        catalog: the snack catalog.
        date_from: first delivery date of the run.
        date_to: last delivery date of the run.
        on_invalid: ``"raise"`` or ``"drop"``.
        engine: the engine name (its ``rating_totals`` is used).
        names: the tables given in ``parts``, in order (``users`` and ``ratings`` first).
        *parts: the raw rows of each table of the partition.

    Returns:
        The partition's stats (rows and orphans of ``names``, rating totals, targets).
    """
    raw = dict(zip(names, parts, strict=True))
    if bounds is not None:
        check_user_range(raw, bounds[0], bounds[1], index)
    rejected: dict[str, pd.DataFrame] = {}
    tables, input_rows, orphans, problems = prepare_partition(
        raw, catalog, on_invalid=on_invalid, rejected=rejected, names=names)
    sums, counts = get_engine(engine).rating_totals(tables, catalog)
    users = tables["users"]
    return PartitionStats(
        input_rows, orphans, sums, counts,
        int(target_mask(users, date_from, date_to).sum()), problems,
        targeted_by_day(users, date_from, date_to),
        {name: [frame] for name, frame in rejected.items()})


def assign_partition(
    index: int,
    bounds: tuple[int, int] | None,
    catalog: SnackCatalog,
    prior: np.ndarray,
    date_from: dt.date,
    date_to: dt.date,
    params: Params,
    on_invalid: str,
    engine: str,
    count_tables: tuple[str, ...],
    *parts: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pass 2 on partition ``index``: prepare every user table, build state, fill the boxes.

    Args:
        index: the partition's number.
        bounds: its recorded user range (checked for ``count_tables``), else None.
        catalog: the snack catalog.
        prior: prior(s) per catalog column.
        date_from: first delivery date of the run.
        date_to: last delivery date of the run.
        params: rule parameters.
        on_invalid: ``"raise"`` or ``"drop"``.
        engine: the engine name.
        count_tables: the tables the scan pass did not read: this task counts them.
        *parts: the raw rows of every user-keyed table, in :data:`USER_KEYED` order.

    Returns:
        ``(assignments, counts)``: the engine's assignment frame, and one row per table of
        ``count_tables`` with its input and orphan rows (:data:`COUNTS_META`).
    """
    raw = dict(zip(USER_KEYED, parts, strict=True))
    if bounds is not None:
        check_user_range({n: raw[n] for n in count_tables}, bounds[0], bounds[1], index)
    tables, input_rows, orphans, _ = prepare_partition(raw, catalog, on_invalid=on_invalid)
    chosen = get_engine(engine)
    state = chosen.build_state(tables, catalog, date_from, date_to, params)
    boxes = chosen.assign(state, catalog, prior, params)
    return boxes, table_counts(count_tables, input_rows, orphans)


def table_counts(names: Sequence[str], input_rows: Mapping[str, int],
                 orphan_rows: Mapping[str, int]) -> pd.DataFrame:
    """Per-table row counts of one partition as a small frame (:data:`COUNTS_META`)."""
    return pd.DataFrame({
        "table": pd.Series(list(names), dtype=object),
        "input_rows": np.array([input_rows[n] for n in names], np.int64),
        "orphan_rows": np.array([orphan_rows[n] for n in names], np.int64),
    })


def _full_boxes_by_day(frame: pd.DataFrame) -> pd.DataFrame:
    full = frame["slot"].to_numpy() == frame["box_size"].to_numpy()  # slot K exists iff full
    return pd.DataFrame({"delivery_on": frame["delivery_on"].to_numpy()[full],
                         "full": np.ones(int(full.sum()), np.int64)})


# --------------------------------------------------------------------------------------------
# the run


def check_output(out: str, lake: str, storage_options: Mapping[str, Any] | None = None, *,
                 overwrite: bool = False) -> RunOutput:
    """Open a run's output location and refuse one that would destroy or pollute data.

    The output must not be, contain or lie inside the lake (or one of its tables) or any
    other lake, must not be an existing file, and may only replace a complete output of
    preassign (with ``overwrite``).

    Raises:
        UsageError: the output overlaps the lake or holds something that is not ours.
        OutputExistsError: it holds a complete run and ``overwrite`` is off.
    """
    output = RunOutput(out, storage_options, overwrite=overwrite)
    output.check_target(protected_locations(lake, storage_options))
    return output


@dataclasses.dataclass(frozen=True)
class ExtractFirst:
    """Extract a source database into the run's lake before the run (the scheduled job).

    Attributes:
        source_url: the source's SQLAlchemy URL (never logged unmasked).
        incremental: incremental or full; None: incremental when the lake already holds an
            extraction.
        users_per_partition: width of the user-id ranges of a full extraction.
    """

    source_url: Any
    incremental: bool | None = None
    users_per_partition: int = 50_000


def run_job(
    config: RunConfig,
    cluster: Any,
    *,
    extract: ExtractFirst | None = None,
    progress: bool = False,
    on_stage: Callable[[str, float], None] | None = None,
) -> RunResult:
    """The whole job as the command line runs it: checks, cluster, (extraction,) run.

    Everything that can be checked without a cluster is checked first (the output
    location, the lake location, the lake itself when nothing is extracted), then the
    cluster ``cluster`` (a :class:`preassign.cluster.ClusterSpec`) is started, used and
    closed.

    Raises:
        UsageError, InputError, InfrastructureError: as :func:`run_preassignment` and
            :func:`preassign.extract.extract_lake`.
    """
    from .compute import with_cluster
    from .extract import check_lake_target, extract_lake, has_extraction

    check_output(config.out, config.lake, config.storage_options, overwrite=config.overwrite)
    if extract is None:
        open_lake(config.lake, config.storage_options)
    else:
        check_lake_target(config.lake, config.storage_options)

    def work(client: Any) -> RunResult:
        if extract is not None:
            incremental = extract.incremental
            if incremental is None:
                incremental = has_extraction(config.lake, config.storage_options)
            extract_lake(extract.source_url, config.lake,
                         users_per_partition=extract.users_per_partition,
                         incremental=incremental, storage_options=config.storage_options,
                         client=client, progress=progress)
        return run_preassignment(config, client, progress=progress, on_stage=on_stage)

    return with_cluster(cluster, work)


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
        UsageError: the output would overwrite the lake or something that is not ours.
        OutputExistsError: ``config.out`` holds a complete run and overwrite is off.
    """
    started = time.perf_counter()
    output = check_output(config.out, config.lake, config.storage_options,
                          overwrite=config.overwrite)
    output.acquire()
    try:
        return _run(config, client, output, progress, on_stage, started)
    finally:
        output.release()


def _run(config: RunConfig, client: Any, output: RunOutput, progress: bool,
         on_stage: Callable[[str, float], None] | None, started: float) -> RunResult:
    seconds: dict[str, float] = {}

    def done(stage: str, t0: float) -> float:
        seconds[stage] = round(time.perf_counter() - t0, 3)
        if on_stage:
            on_stage(stage, seconds[stage])
        return time.perf_counter()

    if config.stock_aware:
        return _run_stock_aware(config, client, output, progress, done, seconds, started)
    t = time.perf_counter()
    lake = open_lake(config.lake, config.storage_options)
    fingerprint = lake.fingerprint()
    rejected_small: dict[str, list[pd.DataFrame]] = {}
    catalog, stock, small_rows, problems = load_catalog(lake, config.on_invalid, rejected_small)
    frames, layout = read_user_tables(lake, users_per_partition=config.users_per_partition)
    npart = frames["users"].npartitions
    log.info("lake %s: %d snacks, %d partitions (%s)", config.lake, catalog.size, npart, layout)
    t = done("read", t)

    stats = _scan(config, client, lake, layout, frames, catalog, progress)
    problems = problems + stats.problems
    prior = snack_prior(stats.rating_sum, stats.rating_count, config.params)
    t = done("scan", t)

    output.discard()
    try:
        demand, full_by_day = _assign(config, client, output, lake, layout, frames, catalog,
                                      prior, stats, progress)
        t = done("assign", t)
        shortage = compute_shortage(demand, stock) if stock is not None else None
        summary = build_summary(config, stats, small_rows, problems, demand, shortage,
                                full_by_day,
                                {"url": lake.url, "layout": layout, "partitions": npart},
                                fingerprint)
        _publish(output, client, summary, demand, shortage, None,
                 {**rejected_small, **stats.rejected}, catalog, stats, prior, seconds, started,
                 done, t)
    except BaseException:
        output.discard()
        raise
    return RunResult(out=config.out, summary=summary, demand=demand, shortage=shortage)


def _run_stock_aware(config: RunConfig, client: Any, output: RunOutput, progress: bool,
                     done: Callable[[str, float], float], seconds: dict[str, float],
                     started: float) -> RunResult:
    """SPEC §6 through a :class:`preassign.session.Session` opened on the run's lake."""
    from .session import Session, write_assignments

    t = time.perf_counter()
    session = Session(config.lake, client, config.date_from, config.date_to,
                      storage_options=config.storage_options, on_invalid=config.on_invalid,
                      engine=config.engine, users_per_partition=config.users_per_partition,
                      progress=progress)
    try:
        if session.stock is None:
            raise InputError(
                f"a stock-aware run needs the lake's table 'stock' (snack_id, quantity): the "
                f"lake {config.lake!r} has none; add it, or run without --stock-aware")
        seconds["read"] = session.seconds["read"]
        t = done("scan", t)  # reading and preparing every partition once

        def round_done(number: int, moved: int) -> None:
            log.info("event=stock_round round=%d cutoffs_moved=%d", number, moved)
            if progress:
                print(f"round {number}: {moved} cutoff(s) moved", flush=True)

        output.discard()
        try:
            result = session.run(config.params, stock_aware=True, on_round=round_done)
            t = done("assign", t)
            write_assignments(session, result, output.staging_url("assignments"),
                              config.storage_options)
            stats = result.stats
            summary = build_summary(
                config, stats, session.small_rows, session.problems_found, result.demand,
                None, result.summary["full_by_day"],
                {"url": session.lake.url, "layout": session.layout,
                 "partitions": session.partitions}, session.fingerprint)
            summary.update(snacks_short=None, stock_aware=True,
                           **{k: result.summary[k] for k in (
                               "rounds", "boxes_changed", "boxes_short_unconstrained",
                               "units_unconstrained", "snacks_limited")})
            _publish(output, client, summary, result.demand, None, result.reservations,
                     {**session.rejected_small, **stats.rejected}, session.catalog, stats,
                     result.prior, seconds, started, done, t)
        except BaseException:
            output.discard()
            raise
    finally:
        session.close()
    return RunResult(out=config.out, summary=summary, demand=result.demand, shortage=None,
                     reservations=result.reservations)


def _publish(output: RunOutput, client: Any, summary: dict[str, Any], demand: pd.DataFrame,
             shortage: pd.DataFrame | None, reservations: pd.DataFrame | None,
             rejected: Mapping[str, list[pd.DataFrame]], catalog: SnackCatalog,
             stats: PartitionStats, prior: np.ndarray, seconds: dict[str, float],
             started: float, done: Callable[[str, float], float], t_pub: float) -> None:
    """Stage the small outputs, the summary and the report; publish everything at once."""
    _write_tables(output, demand, shortage, reservations, rejected, catalog, stats, prior)
    summary.update(stage_seconds={}, cluster=cluster_info(client), versions=package_versions(),
                   run_id=output.run_id, finished_at=None)
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


def _partition_bounds(lake: Lake, layout: str, i: int) -> tuple[int, int] | None:
    if layout != "co-partitioned" or not lake.manifest:
        return None
    bounds = lake.manifest["bounds"]
    return bounds[i], bounds[i + 1]


def _scan(config: RunConfig, client: Any, lake: Lake, layout: str,
          frames: Mapping[str, dd.DataFrame], catalog: SnackCatalog,
          progress: bool) -> PartitionStats:
    """Pass 1: per-partition stats, added up.

    Dropping invalid rows reads every table here, to collect the rejected rows.
    """
    names = SCAN_TABLES if config.on_invalid == "raise" else USER_KEYED
    parts = {name: frames[name].to_delayed() for name in names}
    scan = dask.delayed(scan_partition, pure=True)
    tasks = [
        scan(i, _partition_bounds(lake, layout, i), catalog, config.date_from, config.date_to,
             config.on_invalid, config.engine, names, *[parts[name][i] for name in names])
        for i in range(frames["users"].npartitions)
    ]
    partials = compute(client, tasks, progress)
    stats = partials[0]
    for p in partials[1:]:
        stats = stats + p
    return stats


def _assign(config: RunConfig, client: Any, output: RunOutput, lake: Lake, layout: str,
            frames: Mapping[str, dd.DataFrame], catalog: SnackCatalog, prior: np.ndarray,
            stats: PartitionStats, progress: bool) -> tuple[pd.DataFrame, dict[int, int]]:
    """Pass 2: assign every partition, write ``assignments/``, aggregate demand, count."""
    scanned = SCAN_TABLES if config.on_invalid == "raise" else USER_KEYED
    deferred = tuple(n for n in USER_KEYED if n not in scanned)
    parts = {name: frames[name].to_delayed() for name in USER_KEYED}
    task = dask.delayed(assign_partition, pure=True, nout=2)
    pairs = [
        task(i, _partition_bounds(lake, layout, i), catalog, prior, config.date_from,
             config.date_to, config.params, config.on_invalid, config.engine, deferred,
             *[parts[name][i] for name in USER_KEYED])
        for i in range(frames["users"].npartitions)
    ]
    assignments = dd.from_delayed([boxes for boxes, _ in pairs], meta=ASSIGNMENT_META,
                                  verify_meta=True)
    write = assignments.map_partitions(
        assignment_output, meta=assignment_output(ASSIGNMENT_META)
    ).to_parquet(
        output.staging_url("assignments"),
        write_index=False,
        schema=ASSIGNMENT_SCHEMA,
        storage_options=config.storage_options,
        compute=False,
        write_metadata_file=False,
    )
    demand_parts = assignments.map_partitions(count_demand, meta=count_demand(ASSIGNMENT_META))
    demand_dd = demand_parts.groupby(["delivery_on", "snack_id"]).sum(split_out=1)
    full_boxes = assignments.map_partitions(
        _full_boxes_by_day, meta=_full_boxes_by_day(ASSIGNMENT_META)
    ).groupby("delivery_on")["full"].sum()
    counts_dd = dd.from_delayed([counts for _, counts in pairs], meta=COUNTS_META,
                                verify_meta=True)
    _, demand, full_by_day, counts = compute(
        client, [write, demand_dd, full_boxes, counts_dd], progress)
    for name, rows in counts.groupby("table", sort=False)[["input_rows", "orphan_rows"]].sum(
            ).iterrows():
        stats.input_rows[name] = stats.input_rows.get(name, 0) + int(rows["input_rows"])
        stats.orphan_rows[name] = stats.orphan_rows.get(name, 0) + int(rows["orphan_rows"])
    demand = combine_demand(demand.reset_index())
    return demand, {int(day): int(n) for day, n in full_by_day.items()}


def _write_tables(output: RunOutput, demand: pd.DataFrame, shortage: pd.DataFrame | None,
                  reservations: pd.DataFrame | None, rejected: Mapping[str, list[pd.DataFrame]],
                  catalog: SnackCatalog, stats: PartitionStats, prior: np.ndarray) -> None:
    """Stage the small outputs: demand, shortage or reservations, rejected rows, the prior."""
    demand_out = demand.assign(delivery_on=days_to_arrow_dates(demand["delivery_on"]).array)
    output.write_frame("demand/part.0.parquet", demand_out, DEMAND_SCHEMA)
    if shortage is not None:
        output.write_frame("shortage/part.0.parquet", shortage, SHORTAGE_SCHEMA)
    if reservations is not None:
        out = reservations.assign(cutoff_on=days_to_arrow_dates(
            reservations["cutoff_on"].to_numpy(dtype=np.float64, na_value=np.nan)).array)
        output.write_frame("reservations/part.0.parquet", out, RESERVATION_SCHEMA)
    for name, frames in rejected.items():
        output.write_frame(f"rejected/{name}/part.0.parquet", pd.concat(frames, ignore_index=True))
    output.write_frame("snack_prior/part.0.parquet", pd.DataFrame({
        "snack_id": catalog.snack_id,
        "genre": catalog.genre_names,
        "ratings_count": stats.rating_count,
        "ratings_sum": stats.rating_sum,
        "prior": prior,
    }), PRIOR_SCHEMA)
