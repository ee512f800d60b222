"""One partition of users made ready for the engines: checked, counted, orphans set aside.

A partition holds some users and *all* their rows of every user-keyed table (the lake's
co-partitioned layout, or a hash shuffle on ``user_id``, guarantees it). Before an engine
builds its user state, :func:`prepare_partition` checks every table against the contract
(:func:`preassign.core.contract.normalize_table`), counts the raw rows, drops orphans (a
``user_id`` not in ``users``, a ``snack_id`` not in ``snacks``) and resolves each row's
user row and snack column once. :class:`PartitionStats` is what a partition contributes
to the run summary and to the snack prior; stats add up with ``+`` (the combine step of a
tree reduction).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd

from .catalog import SnackCatalog, lookup
from .contract import (
    NO_DATE,
    TABLES,
    USER_KEYED,
    InvalidValues,
    dedupe_keyed,
    empty_table,
    normalize_table,
)
from .params import Params
from .rules import to_days

__all__ = [
    "PartitionStats",
    "TargetUsers",
    "box_sizes",
    "prepare_partition",
    "select_targets",
    "target_mask",
    "targeted_by_day",
]


@dataclasses.dataclass
class PartitionStats:
    """What one partition contributes to the run summary and the snack prior."""

    input_rows: dict[str, int]
    orphan_rows: dict[str, int]
    rating_sum: np.ndarray  # per snack column, sum of latest ratings (int64)
    rating_count: np.ndarray  # per snack column, number of latest ratings (int64)
    users_targeted: int
    problems: list[InvalidValues] = dataclasses.field(default_factory=list)
    targeted_by_day: dict[int, int] = dataclasses.field(default_factory=dict)
    rejected: dict[str, list[pd.DataFrame]] = dataclasses.field(default_factory=dict)

    def __add__(self, other: PartitionStats) -> PartitionStats:
        """Add two partitions' stats (counts add, problems and rejected rows concatenate)."""
        def add(a: dict, b: dict) -> dict:
            return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}

        return PartitionStats(
            input_rows=add(self.input_rows, other.input_rows),
            orphan_rows=add(self.orphan_rows, other.orphan_rows),
            rating_sum=self.rating_sum + other.rating_sum,
            rating_count=self.rating_count + other.rating_count,
            users_targeted=self.users_targeted + other.users_targeted,
            problems=self.problems + other.problems,
            targeted_by_day=add(self.targeted_by_day, other.targeted_by_day),
            rejected={k: self.rejected.get(k, []) + other.rejected.get(k, [])
                      for k in {**self.rejected, **other.rejected}},
        )


def prepare_partition(
    raw: dict[str, pd.DataFrame],
    catalog: SnackCatalog,
    *,
    on_invalid: str = "raise",
    rejected: dict[str, pd.DataFrame] | None = None,
    names: tuple[str, ...] = USER_KEYED,
) -> tuple[dict[str, pd.DataFrame], dict[str, int], dict[str, int], list[InvalidValues]]:
    """Normalise one partition of the user-keyed tables and drop orphan rows.

    Args:
        raw: table name -> raw rows of this partition (missing tables count as empty).
        catalog: the snack catalog (for orphan detection by ``snack_id``).
        on_invalid: ``"raise"`` or ``"drop"`` (see :func:`normalize_table`).
        rejected: with ``"drop"``, receives the dropped rows per table, with the reason.
        names: the tables to prepare (``users`` is always prepared: orphans need it).

    Returns:
        ``(tables, input_rows, orphan_rows, problems)`` where ``tables`` holds
        normalised rows without orphans, each row with ``_urow`` (its user's row in the
        sorted ``users``) and, for tables with a ``snack_id``, ``_col`` (the catalog
        column); counts are on raw rows, for the tables in ``names``.
    """
    tables: dict[str, pd.DataFrame] = {}
    input_rows: dict[str, int] = {}
    orphans: dict[str, int] = {}
    problems: list[InvalidValues] = []
    wanted = ("users",) + tuple(n for n in names if n != "users")
    for name in wanted:
        frame = raw.get(name)
        if frame is None:
            frame = empty_table(name)
        input_rows[name] = len(frame)
        norm, found, _ = normalize_table(name, frame, on_invalid=on_invalid, rejected=rejected)
        problems.extend(found)
        tables[name] = norm
    users = dedupe_keyed("users", tables["users"], "user_id")
    users = users.sort_values("user_id", kind="stable").reset_index(drop=True)
    tables["users"] = users
    user_ids = users["user_id"].to_numpy(np.int64)
    for name in wanted[1:]:
        frame = tables[name]
        urow, keep = lookup(user_ids, frame["user_id"].to_numpy(np.int64))
        extra = {"_urow": urow}
        if TABLES[name].has_snack:
            col, known = catalog.columns_of(frame["snack_id"].to_numpy(np.int64))
            keep &= known
            extra["_col"] = col
        orphans[name] = int((~keep).sum())
        frame = frame.assign(**extra)
        if not keep.all():
            frame = frame.loc[keep].reset_index(drop=True)
        tables[name] = frame
    if "users" not in names:
        input_rows.pop("users")
    return tables, input_rows, orphans, problems


def target_mask(users: pd.DataFrame, date_from: dt.date, date_to: dt.date) -> np.ndarray:
    """Target users: ``status = 'active'`` and ``next_delivery_on`` in ``[from, to]``."""
    day = users["next_delivery_on"].to_numpy(np.int32)
    return (
        (users["status"].to_numpy() == 0)
        & (day != NO_DATE)
        & (day >= to_days(date_from))
        & (day <= to_days(date_to))
    )


def targeted_by_day(users: pd.DataFrame, date_from: dt.date, date_to: dt.date) -> dict[int, int]:
    """Number of target users per delivery day (days since the epoch)."""
    days = users["next_delivery_on"].to_numpy(np.int32)[target_mask(users, date_from, date_to)]
    values, counts = np.unique(days, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


@dataclasses.dataclass(frozen=True)
class TargetUsers:
    """The partition's target users, ordered by ``user_id``.

    Attributes:
        mask: over the sorted ``users`` table, which rows are targets.
        user_id: the targets' ids, ascending.
        delivery_on: their delivery day (days since the epoch).
        box_size: their box size K (``default_box_size`` where null).
        box_declared: their ``box_size`` as the table has it, 0 where null (an engine whose
            state outlives one set of parameters keeps this and resolves it per run).
    """

    mask: np.ndarray
    user_id: np.ndarray
    delivery_on: np.ndarray
    box_size: np.ndarray
    box_declared: np.ndarray


def box_sizes(declared: np.ndarray, params: Params) -> np.ndarray:
    """Box size K per user: the declared size, ``default_box_size`` where it is null (0)."""
    declared = np.asarray(declared, np.int64)
    return np.where(declared == 0, params.default_box_size, declared).astype(np.int64)


def select_targets(users: pd.DataFrame, date_from: dt.date, date_to: dt.date,
                   params: Params) -> TargetUsers:
    """The target users of a prepared ``users`` table (sorted by ``user_id``)."""
    mask = target_mask(users, date_from, date_to)
    targets = users.loc[mask].sort_values("user_id", kind="stable")
    box = targets["box_size"].to_numpy(np.int64)
    return TargetUsers(
        mask=mask,
        user_id=targets["user_id"].to_numpy(np.int64),
        delivery_on=targets["next_delivery_on"].to_numpy(np.int32),
        box_size=box_sizes(box, params),
        box_declared=box,
    )
