"""One partition's boxes across the rounds of a stock-aware run (SPEC §6).

A :class:`PartitionRounds` holds a partition's engine state, its round-1 boxes and its
current boxes; it lives on a worker for the whole run, and each round changes it a little:

* :func:`start` fills every box (round 1, no cutoffs: exactly the SPEC §3 boxes);
* :func:`holders` and :func:`candidates` are what the round sends back: boxes holding each
  snack, and for the over-stock snacks the partition's extreme holder keys (its smallest,
  or its largest when that side is shorter: :func:`preassign.core.stock.chunk`);
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
from .stock import Cutoffs, box_keys, chunk, held_by_day, sides

__all__ = ["Holdings", "LocalPartitions", "PartitionOutcome", "PartitionRounds", "candidates",
           "holders", "outcome", "refill", "start", "sum_holders", "track"]


@dataclasses.dataclass(frozen=True)
class Holdings:
    """A partition's current boxes as arrays, boxes in priority order π (SPEC §6).

    Built once per stock-aware run (:func:`track`) and patched by each round, so a round
    costs work on the boxes that change, not a pass over every box: the holders of a snack
    beyond its cutoff are the tail of its row of ``held``, and its extreme holder keys the
    ends of that row.

    Attributes:
        user_id: the user of each box, boxes sorted by ``(day, jitter, user_id)``.
        day: its delivery day.
        jitter: its jitter(u, 0, d).
        box_size: its size K.
        cols: ``[box, slot - 1]`` -> catalog column of the snack in that slot, -1 if none.
        stage: ``[box, slot - 1]`` -> stage index of that pick.
        held: ``[column, box]`` -> the box holds that snack.
        by_user: box indices in ``user_id`` order.
        snack_id: the snack id of each catalog column.
    """

    user_id: np.ndarray
    day: np.ndarray
    jitter: np.ndarray
    box_size: np.ndarray
    cols: np.ndarray
    stage: np.ndarray
    held: np.ndarray
    by_user: np.ndarray
    snack_id: np.ndarray

    def boxes(self) -> pd.DataFrame:
        """The engines' assignment frame of the current boxes, by user and slot."""
        cols = self.cols[self.by_user]
        box, pos = np.nonzero(cols >= 0)
        box_index = self.by_user[box]
        return pd.DataFrame({
            "delivery_on": self.day[box_index].astype(np.int32),
            "user_id": self.user_id[box_index],
            "slot": (pos + 1).astype(np.int16),
            "snack_id": self.snack_id[cols[box, pos]],
            "stage": self.stage[self.by_user][box, pos].astype(np.int8),
            "box_size": self.box_size[box_index].astype(np.int64),
        })

    def box_index(self, user_id: np.ndarray) -> np.ndarray:
        """The box of each of ``user_id`` (users that have a box)."""
        return self.by_user[np.searchsorted(self.user_id[self.by_user], user_id)]

    def place(self, frame: pd.DataFrame, catalog: SnackCatalog, box: np.ndarray) -> Holdings:
        """A copy with boxes ``box`` emptied, then filled with the picks of ``frame``."""
        cols, stage, held = self.cols.copy(), self.stage.copy(), self.held.copy()
        held[:, box] = False
        cols[box] = -1
        stage[box] = 0
        if len(frame):
            at = self.box_index(frame["user_id"].to_numpy(np.int64))
            col = _columns(catalog, frame)
            pos = frame["slot"].to_numpy(np.int64) - 1
            cols[at, pos] = col
            stage[at, pos] = frame["stage"].to_numpy(np.int8)
            held[col, at] = True
        return dataclasses.replace(self, cols=cols, stage=stage, held=held)

    def served(self, cutoffs: Cutoffs, col: int) -> int:
        """How many boxes, in π order, snack column ``col``'s cutoff serves."""
        cd, cj, cu = cutoffs.day[col], cutoffs.jitter[col], cutoffs.user_id[col]
        lo, hi = np.searchsorted(self.day, [cd, cd + 1]) if cd < _TOP else (len(self.day),) * 2
        a = lo + int(np.searchsorted(self.jitter[lo:hi], cj, side="left"))
        b = lo + int(np.searchsorted(self.jitter[lo:hi], cj, side="right"))
        return a + int(np.searchsorted(self.user_id[a:b], cu, side="right"))


_TOP = np.iinfo(np.int64).max


@dataclasses.dataclass
class PartitionRounds:
    """A partition's engine state and boxes (engine assignment frames) in a stock-aware run.

    ``holdings`` is None until the first round (:func:`track`), and stays None in a run
    without stock limits, whose boxes are ``first``.
    """

    engine: Any
    state: Any
    first: pd.DataFrame
    cutoffs: Cutoffs
    holdings: Holdings | None = None
    changed: bool = False  # a round changed a box
    _boxes: pd.DataFrame | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def boxes(self) -> pd.DataFrame:
        """The current boxes (the engines' assignment frame, by user and slot)."""
        if not self.changed or self.holdings is None:
            return self.first
        if self._boxes is None:  # made once, when the run's outputs are computed
            self._boxes = self.holdings.boxes()
        return self._boxes


def _columns(catalog: SnackCatalog, boxes: pd.DataFrame) -> np.ndarray:
    return catalog.columns_of(boxes["snack_id"].to_numpy(np.int64))[0]


def start(engine: Any, state: Any, catalog: SnackCatalog, prior: np.ndarray,
          params: Params, users: np.ndarray | None = None) -> PartitionRounds:
    """Round 1: every box filled without cutoffs (the SPEC §3 boxes).

    ``users`` (bool per state user) limits the run to those users' boxes (a session's run
    over some of its dates); None fills every box of the state.
    """
    boxes = engine.assign(state, catalog, prior, params, None, users)
    return PartitionRounds(engine, state, boxes, Cutoffs.unlimited(catalog.size))


def track(rounds: PartitionRounds, catalog: SnackCatalog) -> PartitionRounds:
    """The round-1 boxes as :class:`Holdings` (once per stock-aware run, before the rounds)."""
    if rounds.holdings is not None:
        return rounds
    boxes = rounds.first
    rows_user = boxes["user_id"].to_numpy(np.int64)
    users, first_row = np.unique(rows_user, return_index=True)
    day = boxes["delivery_on"].to_numpy(np.int64)[first_row]
    size = boxes["box_size"].to_numpy(np.int64)[first_row]
    _, jit, _ = box_keys(users, day)
    order = np.lexsort((users, jit, day))
    rank = np.empty(len(users), np.int64)
    rank[order] = np.arange(len(users))
    box = rank[np.searchsorted(users, rows_user)]
    col = _columns(catalog, boxes)
    pos = boxes["slot"].to_numpy(np.int64) - 1
    width = int(max(size.max(initial=0), pos.max(initial=-1) + 1, 1))
    cols = np.full((len(users), width), -1, np.int32)
    stage = np.zeros((len(users), width), np.int8)
    cols[box, pos] = col
    stage[box, pos] = boxes["stage"].to_numpy(np.int8)
    held = np.zeros((catalog.size, len(users)), bool)
    held[col, box] = True
    holdings = Holdings(user_id=users[order], day=day[order], jitter=jit[order],
                        box_size=size[order], cols=cols, stage=stage, held=held,
                        by_user=np.argsort(users[order], kind="stable"),
                        snack_id=np.asarray(catalog.snack_id, np.int64))
    return dataclasses.replace(rounds, holdings=holdings)


def holders(rounds: PartitionRounds, catalog: SnackCatalog) -> pd.DataFrame:
    """Boxes holding each snack per delivery day after the current round (``held_by_day``)."""
    h = rounds.holdings
    if h is None:
        boxes = rounds.boxes
        return held_by_day(_columns(catalog, boxes), boxes["delivery_on"].to_numpy(np.int64))
    days, day_index = np.unique(h.day, return_inverse=True)
    filled = h.cols >= 0
    key = h.cols[filled].astype(np.int64) * len(days) + \
        np.broadcast_to(day_index.reshape(-1, 1), h.cols.shape)[filled]
    counts = np.bincount(key, minlength=catalog.size * len(days))
    at = np.flatnonzero(counts)
    return held_by_day(at // max(len(days), 1), days[at % max(len(days), 1)], counts[at])


def candidates(rounds: PartitionRounds, catalog: SnackCatalog, quota: dict[int, int],
               held: Any = None) -> pd.DataFrame:
    """For each over-stock snack in ``quota``, the partition's extreme holder keys.

    (:func:`preassign.core.stock.chunk`; ``held`` = the round's holders of all partitions.)
    """
    h = track(rounds, catalog).holdings
    assert h is not None
    cols, boxes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for col, (k, largest, day) in sides(quota, held).items():
        lo, hi = (0, len(h.day)) if day is None else np.searchsorted(h.day, [day, day + 1])
        holding = np.flatnonzero(h.held[col, lo:hi]) + lo  # in π order
        box = holding[::-1][:k] if largest else holding[:k]
        cols.append(np.full(len(box), col, np.int64))
        boxes.append(box)
    picked = np.concatenate(boxes)
    return chunk(np.concatenate(cols), h.day[picked], h.jitter[picked], h.user_id[picked], quota,
                 held)


def refill(rounds: PartitionRounds, catalog: SnackCatalog, prior: np.ndarray, params: Params,
           cutoffs: Cutoffs) -> PartitionRounds:
    """Apply new cutoffs: fill again the boxes holding a snack that is no longer theirs."""
    rounds = track(rounds, catalog)
    h = rounds.holdings
    assert h is not None
    lost = [np.flatnonzero(h.held[col, n:]) + n
            for col in np.flatnonzero(cutoffs.limited)
            for n in (h.served(cutoffs, int(col)),)]
    box = np.unique(np.concatenate(lost)) if lost else np.zeros(0, np.int64)
    if not len(box):
        return dataclasses.replace(rounds, cutoffs=cutoffs)
    state_users = np.asarray(rounds.state.user_id, np.int64)
    affected = np.isin(state_users, h.user_id[box])
    again = rounds.engine.assign(rounds.state, catalog, prior, params, cutoffs, affected)
    return dataclasses.replace(rounds, holdings=h.place(again, catalog, box), cutoffs=cutoffs,
                               changed=True, _boxes=None)


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


def sum_holders(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Partitions' :func:`holders` added up."""
    if not frames:
        return held_by_day(np.zeros(0, np.int64), np.zeros(0, np.int64))
    both = pd.concat(frames, ignore_index=True)
    return held_by_day(both["col"].to_numpy(), both["day"].to_numpy(), both["boxes"].to_numpy())


class LocalPartitions:
    """:class:`preassign.core.stock.Partitions` held in this process (tests, small lakes)."""

    def __init__(self, parts: list[PartitionRounds], catalog: SnackCatalog, prior: np.ndarray,
                 params: Params):
        self.parts = [track(part, catalog) for part in parts]
        self.catalog, self.prior, self.params = catalog, prior, params

    def holders(self) -> pd.DataFrame:
        """Boxes holding each snack per delivery day, summed over the partitions."""
        return sum_holders([holders(part, self.catalog) for part in self.parts])

    def candidates(self, quota: dict[int, int], held: pd.DataFrame) -> list[pd.DataFrame]:
        """Each partition's extreme holder keys of the snacks in ``quota``."""
        return [candidates(part, self.catalog, quota, held) for part in self.parts]

    def refill(self, cutoffs: Cutoffs) -> None:
        """Apply new cutoffs to every partition."""
        self.parts = [refill(part, self.catalog, self.prior, self.params, cutoffs)
                      for part in self.parts]
