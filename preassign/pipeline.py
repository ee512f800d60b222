"""The run: open the lake, read it once into a session, fill the boxes, publish (SPEC §3-§6).

:func:`run_job` is the whole command (cluster, optional extraction, run);
:func:`run_preassignment` the run on a given client. Both go through one
:class:`preassign.session.Session`:

1. **read** (client): the lake's listing, fingerprint, snack tables and partitions of users
   (:func:`preassign.session.open_partitions`), done while a local cluster starts.
2. **scan** (one task per partition): read the partition's files once, check and count
   every table, sum its latest ratings, build its users' state and keep it on the worker.
   The per-partition totals are added up on the client: C and prior(s) for a few hundred
   snacks.
3. **assign** (one task per partition): fill the boxes from the kept state (SPEC §3; for a
   stock-aware run the rounds of SPEC §6), count demand per (date, snack) on the workers
   (a groupby per partition, added up on the client), write ``assignments/`` from the
   workers.
4. **publish**: the small outputs, the summary and the report are staged, then everything is
   published at once (:class:`preassign.storage.RunOutput`).

The core functions are pure (:mod:`preassign.core`); this module only wires them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from .core.catalog import SnackCatalog
from .core.engine import get_engine
from .core.params import Params
from .core.partition import PartitionStats
from .errors import InputError, UsageError
from .lake import load_catalog, open_lake, protected_locations
from .logs import log_event
from .outputs import (
    ASSIGNMENT_SCHEMA,
    CUTOFF_SCHEMA,
    DEMAND_SCHEMA,
    PRIOR_SCHEMA,
    RESERVATION_SCHEMA,
    SHORTAGE_SCHEMA,
    days_to_arrow_dates,
)
from .session import OpenedLake, open_partitions
from .storage import RunOutput
from .summary import build_summary, cluster_info, package_versions

__all__ = [
    "ASSIGNMENT_SCHEMA",
    "ExtractFirst",
    "RunConfig",
    "RunResult",
    "check_output",
    "load_catalog",
    "run_job",
    "run_preassignment",
]

log = logging.getLogger(__name__)

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
    compare_to: str | None = None
    run_id: str | None = None

    def __post_init__(self) -> None:
        """Check the values (a :class:`~preassign.errors.UsageError` names the bad one)."""
        get_engine(self.engine)
        if self.date_to < self.date_from:
            raise UsageError(f"--until {self.date_to} is before --date {self.date_from}")
        if self.on_invalid not in ("raise", "drop"):
            raise UsageError(f"on_invalid must be 'raise' or 'drop', got {self.on_invalid!r}")


@dataclasses.dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        out: where the outputs were published.
        summary: ``summary.json``.
        demand: units per (delivery day, snack) and stage (SPEC §4).
        shortage: per snack with demand: ``units``, ``stock``, ``shortage`` (SPEC §4; None
            without a stock table or in a stock-aware run).
        reservations: SPEC §6 (a stock-aware run), else None.
        names: ``snack_id``, ``name``, ``genre`` of the lineup.
        shortage_details: ``shortage/`` as published: the shortage with names, whether
            the snack has a stock row, ``runs_out_on`` and ``boxes_affected``.
    """

    out: str
    summary: dict[str, Any]
    demand: pd.DataFrame
    shortage: pd.DataFrame | None
    reservations: pd.DataFrame | None = None
    names: pd.DataFrame | None = None
    shortage_details: pd.DataFrame | None = None


def check_output(out: str, lake: str, storage_options: Mapping[str, Any] | None = None, *,
                 overwrite: bool = False, run_id: str | None = None) -> RunOutput:
    """Open a run's output location and refuse one that would destroy or pollute data.

    The output must not be, contain or lie inside the lake (or one of its tables) or any
    other lake, must not be an existing file, and may only replace a complete output of
    preassign (with ``overwrite``).

    Raises:
        UsageError: the output overlaps the lake or holds something that is not ours.
        OutputExistsError: it holds a complete run and ``overwrite`` is off.
    """
    output = RunOutput(out, storage_options, overwrite=overwrite, run_id=run_id)
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
    started: float | None = None,
) -> RunResult:
    """The whole job as the command line runs it: checks, cluster, (extraction,) run.

    ``stage_seconds`` in the summary then include starting the cluster (``cluster_start``)
    and the extraction (``extract``), and ``total`` is the wall time since ``started``
    (default: now).

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

    check_output(config.out, config.lake, config.storage_options, overwrite=config.overwrite,
                 run_id=config.run_id)
    started = time.perf_counter() if started is None else started
    reading: concurrent.futures.Future[OpenedLake] | None = None
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="preassign-read")
    if extract is not None:
        check_lake_target(config.lake, config.storage_options)
    elif (cluster.kind or "local") == "local":
        # a local cluster starts in a second or two: read the lake's listing, snack tables and
        # footers meanwhile (a missing table is still found before anything starts)
        open_lake(config.lake, config.storage_options)
        reading = pool.submit(open_partitions, config.lake, config.storage_options,
                              on_invalid=config.on_invalid,
                              users_per_partition=config.users_per_partition)
    else:  # a remote cluster takes minutes to start: a broken lake is found first
        reading = concurrent.futures.Future()
        reading.set_result(open_partitions(config.lake, config.storage_options,
                                           on_invalid=config.on_invalid,
                                           users_per_partition=config.users_per_partition))
    pool.shutdown(wait=False)

    t_cluster = time.perf_counter()
    extra: dict[str, float] = {}

    def work(client: Any) -> RunResult:
        extra["cluster_start"] = round(time.perf_counter() - t_cluster, 3)
        if on_stage:
            on_stage("cluster_start", extra["cluster_start"])
        if extract is not None:
            t = time.perf_counter()
            incremental = extract.incremental
            if incremental is None:
                incremental = has_extraction(config.lake, config.storage_options)
            extract_lake(extract.source_url, config.lake,
                         users_per_partition=extract.users_per_partition,
                         incremental=incremental, storage_options=config.storage_options,
                         client=client, progress=progress)
            extra["extract"] = round(time.perf_counter() - t, 3)
            if on_stage:
                on_stage("extract", extra["extract"])
        opened = reading.result() if reading is not None else None
        return run_preassignment(config, client, progress=progress, on_stage=on_stage,
                                 started=started, stage_seconds=extra, opened=opened)

    try:
        return with_cluster(cluster, work)
    finally:
        if reading is not None and not reading.done():
            reading.cancel()


def run_preassignment(
    config: RunConfig,
    client: Any = None,
    *,
    progress: bool = False,
    on_stage: Callable[[str, float], None] | None = None,
    started: float | None = None,
    stage_seconds: Mapping[str, float] | None = None,
    opened: OpenedLake | None = None,
) -> RunResult:
    """Run one pre-assignment and publish its outputs (SPEC §4).

    Args:
        config: lake, dates, output, parameters.
        client: a ``distributed.Client`` (its cluster runs the tasks); ``None`` uses
            Dask's current scheduler (handy in tests).
        progress: draw Dask's progress bars (only sensible on a terminal or notebook).
        on_stage: called with (stage name, seconds) after each stage, for logging.
        started: when the job started (``time.perf_counter()``; default: now): the summary's
            ``stage_seconds["total"]`` is the wall time since.
        stage_seconds: seconds of stages before this call (cluster start, extraction),
            recorded in the summary's ``stage_seconds``.
        opened: the lake, already opened by :func:`preassign.session.open_partitions`
            (``config.lake`` with ``config.on_invalid``); None opens it here.

    Returns:
        The published output location, the summary, demand and shortage frames.

    Raises:
        LakeError: the lake breaks the contract (nothing is published).
        UsageError: the output would overwrite the lake or something that is not ours.
        OutputExistsError: ``config.out`` holds a complete run and overwrite is off.
    """
    started = time.perf_counter() if started is None else started
    output = check_output(config.out, config.lake, config.storage_options,
                          overwrite=config.overwrite, run_id=config.run_id)
    output.acquire()
    try:
        return _run(config, client, output, progress, on_stage, started,
                    dict(stage_seconds or {}), opened)
    finally:
        output.release()


def _run(config: RunConfig, client: Any, output: RunOutput, progress: bool,
         on_stage: Callable[[str, float], None] | None, started: float,
         seconds: dict[str, float], opened: OpenedLake | None = None) -> RunResult:
    """One session on the run's lake, one run of it (SPEC §3, or §6 when stock-aware)."""
    from .session import Session, start_writing_assignments

    _import_in_background("preassign.report", "matplotlib.figure",
                          "matplotlib.backends.backend_agg")

    def done(stage: str, t0: float) -> float:
        seconds[stage] = round(time.perf_counter() - t0, 3)
        if on_stage:
            on_stage(stage, seconds[stage])
        return time.perf_counter()

    t = time.perf_counter()
    if opened is None:
        opened = open_partitions(config.lake, config.storage_options,
                                 on_invalid=config.on_invalid,
                                 users_per_partition=config.users_per_partition)
        t = done("read", t)
    else:  # read while the cluster started
        seconds["read"] = opened.seconds
        if on_stage:
            on_stage("read", opened.seconds)
    log_event(log, logging.INFO, "lake_opened", lake=config.lake, snacks=opened.catalog.size,
              partitions=len(opened.partitions), layout=opened.layout)
    if opened.layout == "shuffled":
        log_event(log, logging.WARNING, "lake_shuffled", lake=config.lake,
                  hint="this lake is not co-partitioned, so every run shuffles it by user; "
                       "rewrite it once with `preassign lake convert` for faster runs")
    if config.stock_aware and opened.stock is None:
        raise InputError(
            f"a stock-aware run needs the lake's table 'stock' (snack_id, quantity): the "
            f"lake {config.lake!r} has none; add it, or run without --stock-aware")

    def round_done(number: int, moved: int) -> None:
        log_event(log, logging.INFO, "stock_round", round=number, cutoffs_moved=moved)
        if progress:
            print(f"round {number}: {moved} cutoff(s) moved", flush=True)

    session = Session(opened, client, config.date_from, config.date_to,
                      on_invalid=config.on_invalid, engine=config.engine, params=config.params,
                      progress=progress)
    try:
        t = done("scan", t)  # every partition read, checked and its state built, once
        output.discard()
        try:
            result = session.run(config.params, stock_aware=config.stock_aware,
                                 on_round=round_done if config.stock_aware else None)
            t = done("assign", t)
            written = start_writing_assignments(session, result,
                                                output.staging_url("assignments"),
                                                config.storage_options)
            summary = build_summary(
                config, result.stats, session.small_rows, session.problems_found,
                result.demand, result.shortage, result.summary["full_by_day"],
                {"url": session.lake.url, "layout": session.layout,
                 "partitions": session.partitions}, session.fingerprint)
            if config.stock_aware:
                res = result.reservations
                assert res is not None
                summary.update(snacks_short=None, stock_aware=True,
                               units_short=int((res["units_unconstrained"] - res["units"])
                                               .clip(lower=0).sum()),
                               **{k: result.summary[k] for k in (
                                   "rounds", "boxes_changed", "boxes_short_unconstrained",
                                   "units_unconstrained", "snacks_limited")})
            found = _Findings(
                demand=result.demand, shortage=result.shortage,
                reservations=result.reservations,
                demand_first=result.summary["demand_first"] if config.stock_aware else None,
                stock=session.stock, cutoffs=result.cutoffs)
            names, details = _publish(
                config, output, client, summary, found,
                {**session.rejected_small, **result.stats.rejected}, session.catalog,
                result.stats, result.prior, seconds, started, done, t, written)
        except BaseException:
            output.discard()
            raise
    finally:
        session.close()
    return RunResult(out=config.out, summary=summary, demand=result.demand,
                     shortage=result.shortage, reservations=result.reservations, names=names,
                     shortage_details=details)


@dataclasses.dataclass
class _Findings:
    """What a run found, before names and insights are added."""

    demand: pd.DataFrame
    shortage: pd.DataFrame | None
    reservations: pd.DataFrame | None
    demand_first: pd.DataFrame | None  # stock-aware: round 1's demand (SPEC §3's answer)
    stock: pd.DataFrame | None
    cutoffs: Any


def _insights(config: RunConfig, summary: dict[str, Any], found: _Findings,
              catalog: SnackCatalog) -> tuple[pd.DataFrame, pd.DataFrame | None,
                                              pd.DataFrame | None]:
    """Names, shortage details, the stock timeline and the call-outs (into ``summary``)."""
    from .insights import callouts, shortage_details, snack_names, stock_timeline

    names = snack_names(catalog)
    shortage = timeline = None
    on_hand = found.stock.set_index("snack_id")["quantity"] if found.stock is not None \
        else pd.Series(dtype=np.int64)
    if found.shortage is not None and found.stock is not None:
        shortage = shortage_details(found.shortage, found.demand, found.stock)
        short = shortage.loc[shortage["shortage"] > 0, "snack_id"].tolist()
        timeline = stock_timeline(found.demand, on_hand, short)
    if found.reservations is not None and found.demand_first is not None:
        lost = found.reservations.loc[found.reservations["boxes_lost"] > 0, "snack_id"]
        timeline = stock_timeline(found.demand_first, on_hand, lost.tolist(),
                                  covered=found.demand)
    summary["callouts"] = callouts(summary, found.demand, names, catalog, found.stock,
                                   config.params.new_days, shortage, found.reservations)
    for c in summary["callouts"]:
        log_event(log, logging.WARNING if c["severity"] == "warning" else logging.INFO,
                  "callout", code=c["code"], count=c["count"], message=c["message"])
    return names, shortage, timeline


def _publish(config: RunConfig, output: RunOutput, client: Any, summary: dict[str, Any],
             found: _Findings, rejected: Mapping[str, list[pd.DataFrame]],
             catalog: SnackCatalog, stats: PartitionStats, prior: np.ndarray,
             seconds: dict[str, float], started: float, done: Callable[[str, float], float],
             t_pub: float, written: Callable[[], int]
             ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Stage the small outputs, the summary and the report; publish everything at once.

    Returns:
        The lineup's names and the shortage as published (with names and timelines).

    The workers write ``assignments/`` meanwhile (``written`` waits for them): the report
    is rendered off the critical path, and shows the stages finished by then.
    """
    waited: list[float] = []

    def wait_written() -> None:
        if not waited:
            written()
            waited.append(round(time.perf_counter() - t_pub, 3))

    names, shortage, timeline = _insights(config, summary, found, catalog)
    _write_tables(output, found.demand, shortage, found.reservations, rejected, catalog, stats,
                  prior, names, found.cutoffs)
    summary.update(cluster=cluster_info(client), versions=package_versions(),
                   run_id=output.run_id)
    comparison = None
    if config.compare_to:
        from .diff import compare_frames, diff_for_report, read_run

        wait_written()  # the comparison reads this run's boxes
        this = read_run_staged(output, summary, config.storage_options)
        diff = compare_frames(read_run(config.compare_to, config.storage_options), this)
        comparison = diff_for_report(diff, names)
        summary["compared_to"] = {"out": config.compare_to, "why": diff.why,
                                  "boxes_changed": diff.boxes_changed,
                                  "snacks_changed": int(len(diff.snacks))}
    t_report = time.perf_counter()
    summary.update(stage_seconds={**seconds, "total": round(t_report - started, 3)},
                   finished_at=_now())  # as far as the page can know
    html, table_csv = _render(summary, found, shortage, timeline, names, comparison)
    output.write_bytes("report.html", html.encode("utf-8"))
    if table_csv is not None:
        name = "reservations.csv" if found.reservations is not None else "shortage.csv"
        output.write_bytes(name, table_csv)
    seconds["report"] = round(time.perf_counter() - t_report, 3)
    wait_written()
    seconds["write"] = waited[0]  # assignments/, from the workers, while the above ran
    seconds["publish"] = round(time.perf_counter() - t_pub, 3)
    seconds["total"] = round(time.perf_counter() - started, 3)
    summary["stage_seconds"] = dict(seconds)
    summary["finished_at"] = _now()
    output.write_json("summary.json", summary)
    output.publish()
    done("publish", t_pub)
    return names, (_named(shortage, names) if shortage is not None else None)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _import_in_background(*modules: str) -> None:
    """Import ``modules`` in a daemon thread (while this process mostly waits on workers)."""
    import importlib
    import threading

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - imported again, and failing loudly, where used
                return

    threading.Thread(target=load, name="preassign-imports", daemon=True).start()


def read_run_staged(output: RunOutput, summary: dict[str, Any],
                    storage_options: Mapping[str, Any]) -> Any:
    """This run's staged outputs, read back as a finished run would be (for a comparison)."""
    from .diff import RunOutputs, _read_table
    from .storage import open_location

    loc = open_location(output.staging_url(), storage_options)
    demand = _read_table(loc, "demand", None, output.url)
    shortage = _read_table(loc, "shortage", None, output.url, required=False)
    reservations = _read_table(loc, "reservations", None, output.url, required=False)
    return RunOutputs(output.url, {**summary, "run_id": output.run_id}, demand,
                      shortage if len(shortage.columns) else None,
                      reservations if len(reservations.columns) else None, loc)


def _render(summary: dict[str, Any], found: _Findings, shortage: pd.DataFrame | None,
            timeline: pd.DataFrame | None, names: pd.DataFrame,
            comparison: dict[str, Any] | None) -> tuple[str, bytes | None]:
    """The report page and the CSV beside it."""
    from . import report

    if not hasattr(report, "ReportData"):  # pragma: no cover - the older renderer
        return report.render_report(summary, found.demand, found.shortage), None
    data = report.ReportData(summary=summary, demand=found.demand, snacks=names,
                             shortage=shortage, reservations=found.reservations,
                             timeline=timeline, comparison=comparison)
    table = report.shortage_csv(data) if (shortage is not None
                                          or found.reservations is not None) else None
    return report.render_report(data), table


def _named(frame: pd.DataFrame, names: pd.DataFrame) -> pd.DataFrame:
    """The SPEC columns first, then ``name`` and ``genre``."""
    named = frame.merge(names, on="snack_id", how="left")
    return named[[c for c in frame.columns] + ["name", "genre"]]


def _write_tables(output: RunOutput, demand: pd.DataFrame, shortage: pd.DataFrame | None,
                  reservations: pd.DataFrame | None, rejected: Mapping[str, list[pd.DataFrame]],
                  catalog: SnackCatalog, stats: PartitionStats, prior: np.ndarray,
                  names: pd.DataFrame, cutoffs: Any = None) -> None:
    """Stage the small outputs: demand, shortage or reservations, rejected rows, the prior.

    ``demand/``, ``shortage/`` and ``reservations/`` carry each snack's name and genre beside
    its id (extra columns after the SPEC §4 ones).
    """
    demand_out = demand.assign(delivery_on=days_to_arrow_dates(demand["delivery_on"]).array)
    output.write_frame("demand/part.0.parquet", _named(demand_out, names), DEMAND_SCHEMA)
    if shortage is not None:
        output.write_frame("shortage/part.0.parquet", _named(shortage, names), SHORTAGE_SCHEMA)
    if reservations is not None:
        out = reservations.assign(cutoff_on=days_to_arrow_dates(
            reservations["cutoff_on"].to_numpy(dtype=np.float64, na_value=np.nan)).array)
        output.write_frame("reservations/part.0.parquet", _named(out, names),
                           RESERVATION_SCHEMA)
    if cutoffs is not None:
        limited = np.flatnonzero(cutoffs.limited)
        no_box = cutoffs.no_box[limited]
        output.write_frame("stock_cutoffs/part.0.parquet", pd.DataFrame({
            "snack_id": catalog.snack_id[limited],
            "no_box": no_box,
            "cutoff_on": days_to_arrow_dates(np.where(no_box, np.nan,
                                                      cutoffs.day[limited])).array,
            "cutoff_jitter": np.where(no_box, np.nan, cutoffs.jitter[limited]),
            "cutoff_user_id": pd.array(np.where(no_box, 0, cutoffs.user_id[limited]),
                                       dtype="Int64"),
        }), CUTOFF_SCHEMA)

    for name, frames in rejected.items():
        output.write_frame(f"rejected/{name}/part.0.parquet", pd.concat(frames, ignore_index=True))
    output.write_frame("snack_prior/part.0.parquet", pd.DataFrame({
        "snack_id": catalog.snack_id,
        "genre": catalog.genre_names,
        "ratings_count": stats.rating_count,
        "ratings_sum": stats.rating_sum,
        "prior": prior,
    }), PRIOR_SCHEMA)
