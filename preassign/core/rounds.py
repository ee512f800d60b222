"""One partition's boxes across the rounds of a stock-aware run (SPEC §6).

A :class:`PartitionRounds` holds a partition's engine state, its round-1 boxes and its
current boxes; it lives on a worker for the whole run, and each round changes it a little:

* :func:`start` fills every box (round 1, no cutoffs: exactly the SPEC §3 boxes);
* :func:`holders` and :func:`candidates` are what the round sends back: boxes holding each
  snack, and for the over-stock snacks the partition's smallest holder keys
  (:func:`preassign.core.stock.chunk`);
* :func:`refill` applies new cutoffs. Only boxes that *held* a snack whose cutoff now
  excludes them are filled again: removing a snack a box did not choose never changes that
  box (the greedy walks the same candidates, takes the same ones, and the skipped one was
  skipped anyway), and cutoffs only ever decrease, so every other box stays as it is;
* :func:`outcome` sums what the run reports: demand of the final boxes, units and boxes per
  snack in round 1 and in the result, boxes changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from .catalog import SnackCatalog
from .demand import count_demand
from .params import Params
from .stock import Cutoffs, available, box_keys, chunk

__all__ = ["LocalPartitions", "PartitionOutcome", "PartitionRounds", "candidates", "holders",
           "outcome", "refill", "start"]


@dataclasses.dataclass
class PartitionRounds:
    """A partition's engine state and boxes (engine assignment frames) in a stock-aware run."""

    engine: Any
    state: Any
    first: pd.DataFrame
    boxes: pd.DataFrame
    cutoffs: Cutoffs


def _columns(catalog: SnackCatalog, boxes: pd.DataFrame) -> np.ndarray:
    return catalog.columns_of(boxes["snack_id"].to_numpy(np.int64))[0]


def start(engine: Any, state: Any, catalog: SnackCatalog, prior: np.ndarray,
          params: Params, users: np.ndarray | None = None) -> PartitionRounds:
    """Round 1: every box filled without cutoffs (the SPEC §3 boxes).

    ``users`` (bool per state user) limits the run to those users' boxes (a session's run
    over some of its dates); None fills every box of the state.
    """
    boxes = engine.assign(state, catalog, prior, params, None, users)
    return PartitionRounds(engine, state, boxes, boxes, Cutoffs.unlimited(catalog.size))


def holders(rounds: PartitionRounds, catalog: SnackCatalog) -> np.ndarray:
    """Boxes holding each snack (per catalog column) after the current round."""
    return np.bincount(_columns(catalog, rounds.boxes), minlength=catalog.size).astype(np.int64)


def candidates(rounds: PartitionRounds, catalog: SnackCatalog,
               quota: dict[int, int]) -> pd.DataFrame:
    """For each over-stock snack in ``quota``, the partition's smallest holder keys."""
    boxes = rounds.boxes
    day, jit, uid = box_keys(boxes["user_id"].to_numpy(np.int64),
                             boxes["delivery_on"].to_numpy(np.int64))
    return chunk(_columns(catalog, boxes), day, jit, uid, quota)


def refill(rounds: PartitionRounds, catalog: SnackCatalog, prior: np.ndarray, params: Params,
           cutoffs: Cutoffs) -> PartitionRounds:
    """Apply new cutoffs: fill again the boxes holding a snack that is no longer theirs."""
    boxes = rounds.boxes
    cols = _columns(catalog, boxes)
    day, jit, uid = box_keys(boxes["user_id"].to_numpy(np.int64),
                             boxes["delivery_on"].to_numpy(np.int64))
    lost = ~available(cutoffs, cols, day, jit, uid)
    if not lost.any():
        return dataclasses.replace(rounds, cutoffs=cutoffs)
    state_users = np.asarray(rounds.state.user_id, np.int64)
    affected = np.isin(state_users, np.unique(uid[lost]))
    again = rounds.engine.assign(rounds.state, catalog, prior, params, cutoffs, affected)
    kept = boxes.loc[~np.isin(boxes["user_id"].to_numpy(np.int64), state_users[affected])]
    merged = pd.concat([kept, again], ignore_index=True)
    order = np.lexsort((merged["slot"].to_numpy(), merged["user_id"].to_numpy()))
    return dataclasses.replace(rounds, boxes=merged.iloc[order].reset_index(drop=True),
                               cutoffs=cutoffs)


@dataclasses.dataclass
class PartitionOutcome:
    """What a partition contributes to a stock-aware run's outputs (small, summable)."""

    demand: pd.DataFrame  # of the final boxes, per (delivery day, snack)
    demand_first: pd.DataFrame  # of the round-1 boxes (what they would take, SPEC §3)
    units_first: np.ndarray  # per catalog column, round 1
    units_final: np.ndarray
    boxes_lost: np.ndarray  # per column: held in round 1, not in the result
    boxes_gained: np.ndarray
    boxes_changed: int  # boxes whose set of snacks differs from round 1
    full_first: int  # full boxes in round 1
    full_by_day: dict[int, int]  # full boxes of the result per delivery day

    def __add__(self, other: PartitionOutcome) -> PartitionOutcome:
        """Add two partitions' outcomes."""
        days = {**self.full_by_day, **other.full_by_day}
        return PartitionOutcome(
            demand=pd.concat([self.demand, other.demand], ignore_index=True),
            demand_first=pd.concat([self.demand_first, other.demand_first], ignore_index=True),
            units_first=self.units_first + other.units_first,
            units_final=self.units_final + other.units_final,
            boxes_lost=self.boxes_lost + other.boxes_lost,
            boxes_gained=self.boxes_gained + other.boxes_gained,
            boxes_changed=self.boxes_changed + other.boxes_changed,
            full_first=self.full_first + other.full_first,
            full_by_day={d: self.full_by_day.get(d, 0) + other.full_by_day.get(d, 0)
                         for d in days})


def _full(boxes: pd.DataFrame) -> np.ndarray:
    return boxes["slot"].to_numpy() == boxes["box_size"].to_numpy()  # slot K exists iff full


def outcome(rounds: PartitionRounds, catalog: SnackCatalog) -> PartitionOutcome:
    """Sum a partition's result and its difference from round 1."""
    n = catalog.size
    first, final = rounds.first, rounds.boxes
    c1, c2 = _columns(catalog, first), _columns(catalog, final)
    u1, u2 = first["user_id"].to_numpy(np.int64), final["user_id"].to_numpy(np.int64)
    if final is first:  # no round changed a box (always so without stock limits)
        lost, gained = np.zeros(len(c1), bool), np.zeros(len(c2), bool)
    else:
        pairs1 = pd.MultiIndex.from_arrays([u1, c1])
        pairs2 = pd.MultiIndex.from_arrays([u2, c2])
        lost = ~pairs1.isin(pairs2)
        gained = ~pairs2.isin(pairs1)
    changed = np.union1d(u1[lost], u2[gained])
    full = _full(final)
    days, counts = np.unique(final["delivery_on"].to_numpy()[full], return_counts=True)
    demand = count_demand(final)
    units = np.bincount(c1, minlength=n).astype(np.int64)
    return PartitionOutcome(
        demand=demand,
        demand_first=demand if final is first else count_demand(first),
        units_first=units,
        units_final=units if final is first else np.bincount(c2, minlength=n).astype(np.int64),
        boxes_lost=np.bincount(c1[lost], minlength=n).astype(np.int64),
        boxes_gained=np.bincount(c2[gained], minlength=n).astype(np.int64),
        boxes_changed=int(len(changed)),
        full_first=int(_full(first).sum()),
        full_by_day={int(d): int(c) for d, c in zip(days, counts, strict=True)},
    )


class LocalPartitions:
    """:class:`preassign.core.stock.Partitions` held in this process (tests, small lakes)."""

    def __init__(self, parts: list[PartitionRounds], catalog: SnackCatalog, prior: np.ndarray,
                 params: Params):
        self.parts, self.catalog, self.prior, self.params = parts, catalog, prior, params

    def holders(self) -> np.ndarray:
        """Boxes holding each snack, summed over the partitions."""
        total = np.zeros(self.catalog.size, np.int64)
        for part in self.parts:
            total += holders(part, self.catalog)
        return total

    def candidates(self, quota: dict[int, int]) -> list[pd.DataFrame]:
        """Each partition's smallest holder keys of the snacks in ``quota``."""
        return [candidates(part, self.catalog, quota) for part in self.parts]

    def refill(self, cutoffs: Cutoffs) -> None:
        """Apply new cutoffs to every partition."""
        self.parts = [refill(part, self.catalog, self.prior, self.params, cutoffs)
                      for part in self.parts]
