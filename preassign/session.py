"""A lake's partitions read once and kept on the cluster as user state: runs without re-reading.

Design
------
:class:`Session` reads the lake once: one task per partition of users reads its rows of
every user-keyed table (a co-partitioned lake's partition is one file per table, read by
the task itself, so nothing user-sized travels between workers), checks and counts them
(:func:`preassign.core.partition.prepare_partition`), sums its latest ratings (its share of
the snack prior) and builds the engine state of its target users for the session's dates.
The result, :class:`Built`, stays on the worker that built it (a future: a lost worker's
partitions are recomputed from the graph, so a session survives it); the prepared tables
are dropped once the state is built. Nothing user-sized comes back to the client: only
the per-partition counts and rating totals (a few hundred numbers each).

:meth:`Session.run` then answers in seconds: it fills the boxes from the kept state (round
1, SPEC §3) with the run's parameters and prior, and for a stock-aware run (SPEC §6)
repeats rounds over the same state: each round sends the snack cutoffs (a few hundred
values) and brings back boxes per snack and, for the over-stock snacks only, each
partition's smallest holder keys (:mod:`preassign.core.stock`); only the boxes that held a
snack whose new cutoff excludes them are filled again (:mod:`preassign.core.rounds`). A
run's final boxes stay on the workers until the next run or :meth:`Session.close`.

``preassign run`` is one session with one run: the lake is read once, the prior summed from
the partitions' totals, the boxes filled and written from the workers
(:func:`write_assignments`).

Without a ``distributed`` client everything happens in this process (tests, small lakes).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask
import numpy as np
import pandas as pd
from dask.sizeof import sizeof

from .core import rounds as R
from .core.catalog import SnackCatalog
from .core.contract import InvalidValues, check_user_range
from .core.demand import (
    combine_demand,
    compute_reservations,
    compute_shortage,
    stock_by_column,
)
from .core.engine import get_engine
from .core.params import Params
from .core.partition import PartitionStats, prepare_partition, target_mask, targeted_by_day
from .core.rules import snack_prior, to_days
from .core.stock import Cutoffs, run_rounds
from .errors import InputError, UsageError
from .lake import Lake, load_catalog, load_partition, open_lake, user_partitions
from .outputs import ASSIGNMENT_SCHEMA, assignment_output
from .storage import open_location

__all__ = ["Built", "OpenedLake", "Session", "SessionResult", "build_task", "open_partitions",
           "start_writing_assignments", "write_assignments"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# the tasks (pure functions of their inputs; run on workers)


@dataclasses.dataclass
class Built:
    """One partition read, checked and counted once, with its users' state (on a worker).

    Attributes:
        stats: what the partition contributes to the summary and the prior.
        state: the engine state of the partition's target users over the session's dates,
            built with ``params``.
        params: the parameters the state was built with.
        tables: the prepared tables, kept only when the engine's state depends on
            parameters (:attr:`preassign.core.engine.Engine.state_params`), to build it
            again for a run that changes one; None otherwise (the state is all a run needs).
    """

    stats: PartitionStats
    state: Any
    params: Params
    tables: dict[str, pd.DataFrame] | None


@sizeof.register(Built)
def _sizeof_built(built: Built) -> int:
    # Dask's default for an object is a few dozen bytes: the scheduler would then move a
    # partition's state between workers as if it were free, and the memory manager would
    # not see what the workers hold.
    return int(_state_bytes(built.state) + sizeof(built.tables) + sizeof(built.stats.rejected)
               + 4096)


@sizeof.register(R.PartitionRounds)
def _sizeof_rounds(rounds: R.PartitionRounds) -> int:
    # never rounds.boxes: after a round it is made from the holdings on first use
    held = rounds.holdings
    holdings = 0 if held is None else sum(
        int(getattr(held, f.name).nbytes) for f in dataclasses.fields(held))
    return int(_state_bytes(rounds.state) + sizeof(rounds.first) + holdings + 4096)


def _state_bytes(state: Any) -> int:
    """An engine state's size: a named tuple (sparse) or a dataclass of arrays (dense)."""
    if dataclasses.is_dataclass(state):
        return sum(int(sizeof(getattr(state, f.name))) for f in dataclasses.fields(state))
    return int(sizeof(state))


def build_task(part: Any, catalog: SnackCatalog, date_from: dt.date, date_to: dt.date,
               on_invalid: str, engine: str, params: Params) -> Built:
    """Read partition ``part`` once: check every table, count, sum ratings, build the state.

    ``part`` is a :class:`preassign.lake.PartitionFiles` (read here) or a mapping of table
    name to its shuffled rows (see :func:`preassign.lake.user_partitions`).
    """
    raw, bounds = load_partition(part)
    if bounds is not None:
        check_user_range(raw, bounds[0], bounds[1], part.index)
    rejected: dict[str, pd.DataFrame] = {}
    tables, input_rows, orphans, problems = prepare_partition(
        raw, catalog, on_invalid=on_invalid, rejected=rejected)
    del raw
    chosen = get_engine(engine)
    sums, counts = chosen.rating_totals(tables, catalog)
    users = tables["users"]
    stats = PartitionStats(input_rows, orphans, sums, counts,
                           int(target_mask(users, date_from, date_to).sum()), problems,
                           targeted_by_day(users, date_from, date_to),
                           {name: [frame] for name, frame in rejected.items()})
    state = chosen.build_state(tables, catalog, date_from, date_to, params)
    return Built(stats, state, params, tables if chosen.state_params else None)


def _stats_of(built: Built) -> PartitionStats:
    return built.stats


def _in_dates(built: Built, date_from: dt.date, date_to: dt.date) -> np.ndarray:
    """Which of the state's users have their delivery in ``[date_from, date_to]``."""
    day = np.asarray(built.state.delivery_on, np.int64)
    return (day >= to_days(date_from)) & (day <= to_days(date_to))


def _targets_of(built: Built, date_from: dt.date, date_to: dt.date) -> dict[int, int]:
    day = np.asarray(built.state.delivery_on, np.int64)[_in_dates(built, date_from, date_to)]
    values, counts = np.unique(day, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _start(built: Built, engine: str, catalog: SnackCatalog, prior: np.ndarray,
           date_from: dt.date, date_to: dt.date, params: Params,
           window: tuple[dt.date, dt.date]) -> R.PartitionRounds:
    """Round 1 of a run (every box filled, SPEC §3) from the partition's kept state."""
    chosen = get_engine(engine)
    state, users = built.state, None
    if built.tables is not None and any(
            getattr(params, p) != getattr(built.params, p) for p in chosen.state_params):
        state = chosen.build_state(built.tables, catalog, window[0], window[1], params)
    if (date_from, date_to) != window:
        users = _in_dates(dataclasses.replace(built, state=state), date_from, date_to)
    return R.start(chosen, state, catalog, prior, params, users)


def _holders(part: R.PartitionRounds, catalog: SnackCatalog) -> pd.DataFrame:
    return R.holders(part, catalog)


def _candidates(part: R.PartitionRounds, catalog: SnackCatalog, quota: dict[int, int],
                held: pd.DataFrame) -> pd.DataFrame:
    return R.candidates(part, catalog, quota, held)


def _refill(part: R.PartitionRounds, catalog: SnackCatalog, prior: np.ndarray, params: Params,
            cutoffs: Cutoffs) -> R.PartitionRounds:
    return R.refill(part, catalog, prior, params, cutoffs)


def _outcome(part: R.PartitionRounds, catalog: SnackCatalog) -> R.PartitionOutcome:
    return R.outcome(part, catalog)


def _boxes(part: R.PartitionRounds) -> pd.DataFrame:
    return part.boxes


def _write_boxes(part: R.PartitionRounds, index: int, url: str,
                 storage_options: Mapping[str, Any]) -> int:
    """Write one partition's final boxes as ``<url>/part.<index>.parquet`` (SPEC §4)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = open_location(url, storage_options)
    target.fs.makedirs(target.path, exist_ok=True)
    table = pa.Table.from_pandas(assignment_output(part.boxes), schema=ASSIGNMENT_SCHEMA,
                                 preserve_index=False)
    with target.fs.open(target.child(f"part.{index}.parquet"), "wb") as f:
        pq.write_table(table, f)
    return table.num_rows


def write_assignments(session: Session, result: SessionResult, url: str,
                      storage_options: Mapping[str, Any] | None = None) -> int:
    """Write a run's boxes to ``url`` (``assignments/`` of SPEC §4) from the workers.

    Returns:
        Rows written.
    """
    return start_writing_assignments(session, result, url, storage_options)()


def start_writing_assignments(session: Session, result: SessionResult, url: str,
                              storage_options: Mapping[str, Any] | None = None
                              ) -> Callable[[], int]:
    """Start writing a run's boxes from the workers; return a function that waits for them.

    The client is free meanwhile (``preassign run`` renders its report while the workers
    write). The returned function gives the rows written, or raises what a write raised.
    """
    run = session._run
    writes = run.map(_write_boxes, result.parts, list(range(len(result.parts))), url=url,
                     storage_options=dict(storage_options or {}))
    return lambda: sum(run.gather(writes))


# --------------------------------------------------------------------------------------------
# where the tasks run


class _Executor:
    """Runs per-partition functions in this process, or on a ``distributed`` client."""

    def __init__(self, client: Any):
        self.client = client
        if client is not None:
            from .compute import quiet_known_errors

            quiet_known_errors(client)

    def map(self, func: Callable[..., Any], *items: Sequence[Any], **kwargs: Any) -> list[Any]:
        if self.client is None:
            return [func(*args, **kwargs) for args in zip(*items, strict=True)]
        return list(self.client.map(func, *items, **kwargs, pure=False))

    def gather(self, items: Sequence[Any], progress: bool = False,
               label: str | None = None) -> list[Any]:
        if self.client is None:
            return list(items)
        from .compute import compute_futures

        return compute_futures(self.client, items, progress, label)

    def release(self, items: Sequence[Any]) -> None:
        if self.client is not None and items:
            self.client.cancel(list(items))


class _ClusterPartitions:
    """:class:`preassign.core.stock.Partitions` kept on the workers (or in this process)."""

    def __init__(self, run: _Executor, parts: list[Any], catalog: SnackCatalog,
                 prior: np.ndarray, params: Params):
        # the round-1 boxes as holdings, once (else round 1's candidates and refill each
        # build them)
        self.run, self.parts = run, run.map(R.track, parts, catalog=catalog)
        self.catalog, self.prior, self.params = catalog, prior, params

    def holders(self) -> pd.DataFrame:
        return R.sum_holders(self.run.gather(self.run.map(_holders, self.parts,
                                                          catalog=self.catalog)))

    def candidates(self, quota: dict[int, int], held: pd.DataFrame) -> list[pd.DataFrame]:
        return self.run.gather(self.run.map(_candidates, self.parts, catalog=self.catalog,
                                            quota=quota, held=held))

    def refill(self, cutoffs: Cutoffs) -> None:
        # the old boxes are only dropped, never cancelled: the new ones are computed from them
        self.parts = self.run.map(_refill, self.parts, catalog=self.catalog, prior=self.prior,
                                  params=self.params, cutoffs=cutoffs)



# --------------------------------------------------------------------------------------------
# the session


@dataclasses.dataclass
class SessionResult:
    """What one :meth:`Session.run` produced (the boxes stay on the cluster until released)."""

    params: Params
    date_from: dt.date
    date_to: dt.date
    stock_aware: bool
    prior: np.ndarray
    demand: pd.DataFrame
    shortage: pd.DataFrame | None
    reservations: pd.DataFrame | None
    summary: dict[str, Any]
    stats: PartitionStats
    parts: list[Any]
    session: Session
    cutoffs: Cutoffs | None = None

    def boxes(self) -> pd.DataFrame:
        """Every box of the run (the engines' assignment frame) - brings them to the client."""
        frames = self.session._run.gather(self.session._run.map(_boxes, self.parts))
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    def release(self) -> None:
        """Let the workers forget this run's boxes."""
        self.session._run.release(self.parts)
        self.parts = []


@dataclasses.dataclass
class OpenedLake:
    """What the client reads of a lake before any task runs (:func:`open_partitions`).

    Attributes:
        lake: the opened lake.
        fingerprint: per table, a hash of its files (recorded in ``summary.json``).
        catalog: the snack catalog.
        stock: the stock table (None when the lake has none).
        small_rows: rows read per snack-keyed table.
        problems: invalid values found (and dropped) in the snack-keyed tables.
        rejected_small: those rows, per table.
        partitions: the partitions of users (:func:`preassign.lake.user_partitions`).
        layout: ``"co-partitioned"`` or ``"shuffled"``.
        seconds: how long reading all this took.
    """

    lake: Lake
    fingerprint: dict[str, str]
    catalog: SnackCatalog
    stock: pd.DataFrame | None
    small_rows: dict[str, int]
    problems: list[InvalidValues]
    rejected_small: dict[str, list[pd.DataFrame]]
    partitions: list[Any]
    layout: str
    seconds: float


def open_partitions(url: str, storage_options: Mapping[str, Any] | None = None, *,
                    on_invalid: str = "raise", users_per_partition: int = 50_000
                    ) -> OpenedLake:
    """Open a lake on the client: listing, fingerprint, snack tables, partitions of users.

    No cluster is needed, so ``preassign run`` does this while its cluster starts.

    Raises:
        LakeError: the lake breaks the contract (a missing table, a broken snack table,
            an unreadable footer of a lake that must be shuffled).
    """
    t = time.perf_counter()
    lake = open_lake(url, storage_options)
    fingerprint = lake.fingerprint()
    rejected: dict[str, list[pd.DataFrame]] = {}
    catalog, stock, small_rows, problems = load_catalog(lake, on_invalid, rejected)
    partitions, layout = user_partitions(lake, users_per_partition=users_per_partition)
    return OpenedLake(lake, fingerprint, catalog, stock, small_rows, problems, rejected,
                      partitions, layout, round(time.perf_counter() - t, 3))


class Session:
    """A lake read once and kept on the cluster, for runs with other parameters, stock or dates.

    Examples:
        >>> with open_client(ClusterSpec("local", workers=2)) as client:  # doctest: +SKIP
        ...     session = Session("data/lake", client, dt.date(2026, 12, 1),
        ...                       dt.date(2026, 12, 14))
        ...     base = session.run(stock_aware=True)
        ...     tighter = session.run(stock_aware=True, stock=0.9)  # 90 % of the stock
        ...     session.close()
    """

    def __init__(self, lake: str | OpenedLake, client: Any = None,
                 date_from: dt.date | None = None, date_to: dt.date | None = None, *,
                 storage_options: Mapping[str, Any] | None = None, on_invalid: str = "raise",
                 engine: str = "numba", users_per_partition: int = 50_000,
                 params: Params | None = None, progress: bool = False):
        """Read the lake and build every partition's state (the only time it is read).

        Args:
            lake: the lake's root (local path or ``s3://``), or a lake already opened by
                :func:`open_partitions` (with the same ``on_invalid``).
            client: a ``distributed.Client``; None computes in this process.
            date_from: the first delivery date the session covers (its runs' default).
            date_to: the last delivery date it covers (default: ``date_from``). A run may
                cover any dates inside ``[date_from, date_to]``.
            storage_options: fsspec options for the lake.
            on_invalid: ``"raise"`` or ``"drop"`` (SPEC §2's invalid values).
            engine: ``"numba"`` (default) or ``"numpy"``.
            users_per_partition: partition size when the lake has no co-partitioned layout.
            params: the parameters runs will mostly use (only an engine whose state depends
                on parameters, ``numpy``, reads them now; any run may use others).
            progress: draw Dask's progress bar while reading.

        Raises:
            LakeError: the lake breaks the contract.
            UsageError: an unknown engine or ``on_invalid``.
        """
        if date_from is None:
            raise UsageError("a session needs date_from (the first delivery date of its runs)")
        get_engine(engine)
        if on_invalid not in ("raise", "drop"):
            raise UsageError(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")
        self.date_from, self.date_to = date_from, date_to or date_from
        if self.date_to < self.date_from:
            raise UsageError(f"date_to {self.date_to} is before date_from {self.date_from}")
        self.engine, self.on_invalid = engine, on_invalid
        self.client, self.progress = client, progress
        self._run = _Executor(client)
        self._last: SessionResult | None = None
        self._built: list[Any] = []
        self.seconds: dict[str, float] = {}
        opened = lake if isinstance(lake, OpenedLake) else open_partitions(
            lake, storage_options, on_invalid=on_invalid,
            users_per_partition=users_per_partition)
        self.lake: Lake = opened.lake
        self.fingerprint = opened.fingerprint
        self.catalog, self.stock = opened.catalog, opened.stock
        self.small_rows, self.problems = opened.small_rows, opened.problems
        self.rejected_small = opened.rejected_small
        self.layout, self.partitions = opened.layout, len(opened.partitions)
        self.seconds["read"] = opened.seconds
        t = time.perf_counter()
        task = dask.delayed(build_task, pure=False)
        tasks = [task(part, self.catalog, self.date_from, self.date_to, on_invalid, engine,
                      params or Params()) for part in opened.partitions]
        if client is None:
            self._built = list(dask.compute(*tasks))
        else:
            self._built = list(client.compute(tasks))
        stats = self._run.gather(self._run.map(_stats_of, self._built), progress, "scan")
        total = stats[0]
        for s in stats[1:]:
            total = total + s
        self.stats = total
        self.seconds["prepare"] = round(time.perf_counter() - t, 3)
        log.info("session: lake %s prepared, %d partitions (%s) in %.1f s", self.lake.url,
                 self.partitions, self.layout, self.seconds["read"] + self.seconds["prepare"])

    @property
    def problems_found(self) -> list[InvalidValues]:
        """Invalid values found and dropped (``on_invalid="drop"``)."""
        return self.problems + self.stats.problems

    def run(self, params: Params | Mapping[str, Any] | None = None, *, stock_aware: bool = False,
            stock: pd.DataFrame | float | None = None, date_from: dt.date | None = None,
            date_to: dt.date | None = None,
            on_round: Callable[[int, int], None] | None = None) -> SessionResult:
        """Pre-assign the session's lake, without reading it again.

        Args:
            params: rule parameters (a :class:`Params` or a mapping of overrides).
            stock_aware: SPEC §6 (what the boxes will be with the stock on hand) instead of
                SPEC §3 (what they would take).
            stock: the stock to use instead of the lake's: a frame of ``snack_id``,
                ``quantity`` (snacks missing from it have 0), or a number scaling the lake's
                quantities (rounded down), e.g. ``0.9``.
            date_from: the first delivery date (default: the session's).
            date_to: the last delivery date (default: the session's, or ``date_from``).
            on_round: called with (round, cutoffs moved) after each round of a stock-aware run.

        Returns:
            The run's demand, shortage (SPEC §3) or reservations (SPEC §6), and summary.

        Raises:
            InputError: a stock-aware run on a lake without a stock table, or one that did not
                settle within ``stock_max_rounds`` rounds.
        """
        if isinstance(params, Params):
            rule = params
        else:
            rule = Params.from_mapping(params)
        date_from = date_from or self.date_from
        date_to = date_to or (self.date_to if date_from == self.date_from else date_from)
        if date_to < date_from:
            raise UsageError(f"date_to {date_to} is before date_from {date_from}")
        if date_from < self.date_from or date_to > self.date_to:
            raise UsageError(
                f"this session covers deliveries from {self.date_from} to {self.date_to}; "
                f"a run from {date_from} to {date_to} needs a session opened for those dates")
        stock_frame = self._stock(stock)
        if stock_aware and stock_frame is None:
            raise InputError(
                "a stock-aware run needs the lake's table 'stock' (snack_id, quantity): the "
                f"lake {self.lake.url!r} has none; add it, or run without --stock-aware")
        if self._last is not None:
            self._last.release()
        started = time.perf_counter()
        stats = self.stats
        if (date_from, date_to) != (self.date_from, self.date_to):
            days = self._run.gather(self._run.map(_targets_of, self._built,
                                                  date_from=date_from, date_to=date_to))
            by_day: dict[int, int] = {}
            for part in days:
                for d, n in part.items():
                    by_day[d] = by_day.get(d, 0) + n
            stats = dataclasses.replace(stats, targeted_by_day=by_day,
                                        users_targeted=sum(by_day.values()))
        prior = snack_prior(stats.rating_sum, stats.rating_count, rule)
        parts = self._run.map(_start, self._built, engine=self.engine, catalog=self.catalog,
                              prior=prior, date_from=date_from, date_to=date_to, params=rule,
                              window=(self.date_from, self.date_to))
        extra: dict[str, Any] = {}
        cutoffs = None
        if stock_aware:
            assert stock_frame is not None
            q = stock_by_column(stock_frame, self.catalog.snack_id)
            cluster = _ClusterPartitions(self._run, parts, self.catalog, prior, rule)
            cutoffs, n_rounds = run_rounds(cluster, q, self.catalog.snack_id,
                                           rule.stock_max_rounds, on_round)
            parts = cluster.parts
            extra["rounds"] = n_rounds
        outcomes = self._run.gather(self._run.map(_outcome, parts, catalog=self.catalog),
                                    self.progress, "assign")
        total = outcomes[0]
        for o in outcomes[1:]:
            total = total + o
        demand = combine_demand(total.demand) if len(total.demand) else total.demand
        demand_first = combine_demand(total.demand_first) if len(total.demand_first) else \
            total.demand_first
        shortage = reservations = None
        if stock_aware:
            assert cutoffs is not None and stock_frame is not None
            q = stock_by_column(stock_frame, self.catalog.snack_id)
            reservations = compute_reservations(
                self.catalog.snack_id, q, total.units_first, total.units_final,
                total.boxes_lost, total.boxes_gained, cutoffs.limited, cutoffs.day)
            extra.update(
                stock_aware=True, boxes_changed=total.boxes_changed,
                boxes_short_unconstrained=int(stats.users_targeted - total.full_first),
                units_unconstrained=int(total.units_first.sum()),
                snacks_limited=int(cutoffs.limited[total.units_first > 0].sum()))
        elif stock_frame is not None:
            shortage = compute_shortage(demand, stock_frame)
        summary = {"full_by_day": total.full_by_day, "demand_first": demand_first,
                   "seconds": round(
            time.perf_counter() - started, 3), **extra}
        result = SessionResult(rule, date_from, date_to, stock_aware, prior, demand, shortage,
                               reservations, summary, stats, parts, self, cutoffs)
        self._last = result
        return result

    def _stock(self, stock: pd.DataFrame | float | None) -> pd.DataFrame | None:
        if stock is None:
            return self.stock
        if isinstance(stock, pd.DataFrame):
            missing = [c for c in ("snack_id", "quantity") if c not in stock.columns]
            if missing:
                raise UsageError(f"stock needs columns snack_id, quantity (missing "
                                 f"{', '.join(missing)})")
            frame = stock[["snack_id", "quantity"]].astype(np.int64)
            if (frame["quantity"] < 0).any():
                raise UsageError("stock quantities must be >= 0")
            return frame[np.isin(frame["snack_id"], self.catalog.snack_id)].reset_index(
                drop=True)
        scale = float(stock)
        if not scale >= 0:
            raise UsageError(f"a stock scale must be a number >= 0, got {stock!r}")
        if self.stock is None:
            raise InputError("the lake has no stock table to scale")
        scaled = self.stock.copy()
        scaled["quantity"] = np.floor(scaled["quantity"].to_numpy(np.float64) * scale).astype(
            np.int64)
        return scaled

    def close(self) -> None:
        """Release the prepared partitions (and the last run's boxes) on the cluster."""
        if self._last is not None:
            self._last.release()
            self._last = None
        self._run.release(self._built)
        self._built = []

    def __enter__(self) -> Session:
        """Use the session as a context manager (closed at the end)."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the session."""
        self.close()
