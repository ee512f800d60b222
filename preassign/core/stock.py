"""Stock-aware pre-assignment between rounds (SPEC §6): box priorities, snack cutoffs.

Every target box b of user u on date d has the priority key π(b) = (d, jitter(u, 0, d), u),
compared left to right; every snack s a cutoff κ(s): +∞ (no limit), a key, or −∞ (no box).
Snack s is *available* to box b when π(b) ≤ κ(s). A round fills every box with the
availability rule; then every snack held by more boxes than its stock q(s) gets κ(s) = the
q(s)-th smallest key among its holders (−∞ when q(s) = 0), until no cutoff changes.

The new cutoffs are a tree reduction over the partitions, named as dask names its roles:

* :func:`chunk` - one partition's candidates: for each over-stock snack, its extreme holder
  keys on the delivery day where the q(s)-th key lies (the round's holders are counted per
  day), from that day's shorter side: the r smallest, or the h - r + 1 largest of its h
  holders that day (:func:`sides`) - the same cutoff as sending its q(s) smallest, from
  far fewer rows when stock covers most of the demand;
* :func:`combine` - candidates of several partitions merged, again at most as many per snack;
* :func:`aggregate` - the q(s)-th smallest key per snack: its new cutoff.

Keys are compared exactly: the jitter is a multiple of 2**-53, so comparing the floats is
comparing the integers they come from, and the user id breaks any tie.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import numpy as np
import pandas as pd

from ..errors import InputError
from . import rules

__all__ = [
    "Cutoffs",
    "Partitions",
    "StockRoundsExceeded",
    "run_rounds",
    "CANDIDATE_COLUMNS",
    "aggregate",
    "available",
    "box_keys",
    "chunk",
    "combine",
    "next_cutoffs",
    "held_by_day",
    "over_stock",
    "sides",
]

_TOP = np.iinfo(np.int64).max
_BOTTOM = np.iinfo(np.int64).min

#: Columns of a candidate frame: the snack's catalog column and a holder's key.
CANDIDATE_COLUMNS = ("col", "day", "jitter", "user_id")


def box_keys(user_id: np.ndarray, delivery_on: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """π(b) of boxes given by user and delivery day: ``(day, jitter(u, 0, d), user_id)``.

    Examples:
        >>> day, jit, uid = box_keys(np.array([10, 20]), np.array([20788, 20788]))
        >>> jit.tolist()
        [0.5914812078206408, 0.0925045097072168]
    """
    day = np.asarray(delivery_on, np.int64)
    uid = np.asarray(user_id, np.int64)
    return day, rules.jitter(uid, np.zeros_like(uid), day), uid


@dataclasses.dataclass(frozen=True)
class Cutoffs:
    """κ(s) per catalog column as three arrays compared left to right.

    ``day`` is ``int64`` max for +∞ (every box is before it) and ``int64`` min for −∞ (no
    box is); otherwise ``(day, jitter, user_id)`` is the key of the last box served.
    """

    day: np.ndarray
    jitter: np.ndarray
    user_id: np.ndarray

    @classmethod
    def unlimited(cls, n_snacks: int) -> Cutoffs:
        """Every snack available to every box (round 1)."""
        return cls(np.full(n_snacks, _TOP, np.int64), np.zeros(n_snacks, np.float64),
                   np.zeros(n_snacks, np.int64))

    @property
    def size(self) -> int:
        """Number of snacks."""
        return len(self.day)

    @property
    def limited(self) -> np.ndarray:
        """κ(s) < +∞ per snack."""
        return self.day != _TOP

    @property
    def no_box(self) -> np.ndarray:
        """κ(s) = −∞ per snack."""
        return self.day == _BOTTOM

    def with_values(self, cols: np.ndarray, day: np.ndarray, jit: np.ndarray,
                    uid: np.ndarray) -> Cutoffs:
        """A copy with the cutoffs of ``cols`` replaced."""
        new_day, new_jit, new_uid = self.day.copy(), self.jitter.copy(), self.user_id.copy()
        new_day[cols], new_jit[cols], new_uid[cols] = day, jit, uid
        return Cutoffs(new_day, new_jit, new_uid)


def available(cutoffs: Cutoffs, cols: np.ndarray, day: np.ndarray, jit: np.ndarray,
              uid: np.ndarray) -> np.ndarray:
    """π(b) ≤ κ(s) for boxes ``(day, jit, uid)`` and snack columns ``cols`` (broadcasting).

    Examples:
        >>> k = Cutoffs.unlimited(2).with_values(np.array([0]), np.array([5]),
        ...                                      np.array([0.5]), np.array([7]))
        >>> available(k, np.array([0, 0, 0, 1]), np.array([5, 5, 6, 9]),
        ...           np.array([0.5, 0.5, 0.1, 0.9]), np.array([7, 8, 1, 1])).tolist()
        [True, False, False, True]
    """
    cd, cj, cu = cutoffs.day[cols], cutoffs.jitter[cols], cutoffs.user_id[cols]
    return (day < cd) | ((day == cd) & ((jit < cj) | ((jit == cj) & (uid <= cu))))


def over_stock(holders: np.ndarray, stock: np.ndarray) -> np.ndarray:
    """Catalog columns of the snacks held by more boxes than their stock."""
    return np.flatnonzero(np.asarray(holders) > np.asarray(stock))


def _empty_candidates() -> pd.DataFrame:
    return pd.DataFrame({"col": np.zeros(0, np.int64), "day": np.zeros(0, np.int64),
                         "jitter": np.zeros(0, np.float64), "user_id": np.zeros(0, np.int64)})


#: What a partition sends for one over-stock snack: its ``k`` extreme holder keys (the
#: largest when ``largest``), among the boxes of delivery day ``day`` (None: every day).
Ask = tuple[int, bool, "int | None"]


def held_by_day(col: np.ndarray, day: np.ndarray, boxes: np.ndarray | None = None
                ) -> pd.DataFrame:
    """Boxes holding each snack per delivery day (``col``, ``day``, ``boxes``), summed."""
    frame = pd.DataFrame({"col": np.asarray(col, np.int64), "day": np.asarray(day, np.int64),
                          "boxes": np.ones(len(col), np.int64) if boxes is None
                          else np.asarray(boxes, np.int64)})
    return frame.groupby(["col", "day"], sort=True, as_index=False).sum()


def sides(quota: Mapping[int, int], held: Mapping[int, int] | pd.DataFrame | None
          ) -> dict[int, Ask]:
    """Per snack with q(s) > 0: the keys each partition must send (:data:`Ask`).

    The q(s)-th smallest of H(s) distinct holder keys is also their (H(s) - q(s) + 1)-th
    largest, so each snack asks for whichever side is shorter: in a run whose stock covers
    most of the demand, q(s) is close to H(s) and the largest side is a few keys, where
    the smallest side would be nearly every holder. With ``held`` per delivery day (a
    :func:`held_by_day` frame of every partition), keys are ordered by day first, so the
    q(s)-th key lies on the day where the running count reaches q(s): only that day's
    holders are asked for, from its shorter side. With ``held`` per snack (column ->
    H(s)), every day; without it (H unknown), the q(s) smallest of every day.
    """
    by_day: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if isinstance(held, pd.DataFrame):
        cols = held["col"].to_numpy(np.int64)
        days, boxes = held["day"].to_numpy(np.int64), held["boxes"].to_numpy(np.int64)
        order = np.lexsort((days, cols))
        cols, days, boxes = cols[order], days[order], boxes[order]
        starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]]).tolist() if len(cols) else []
        for a, b in zip(starts, starts[1:] + [len(cols)] if starts else [], strict=True):
            by_day[int(cols[a])] = (days[a:b], boxes[a:b])
    out: dict[int, Ask] = {}
    for col, q in quota.items():
        if q <= 0:
            continue
        col = int(col)
        if col in by_day:
            days, boxes = by_day[col]
            total = np.cumsum(boxes)
            i = int(np.searchsorted(total, q))  # the day where the count reaches q
            if i < len(days):
                r, h = int(q - (total[i] - boxes[i])), int(boxes[i])
                out[col] = (h - r + 1, True, int(days[i])) if h - r + 1 < r else \
                    (r, False, int(days[i]))
                continue
        all_days = None if held is None or isinstance(held, pd.DataFrame) else held.get(col)
        if all_days is not None and all_days - q + 1 < q:
            out[col] = (int(all_days - q + 1), True, None)
        else:
            out[col] = (int(q), False, None)
    return out


def _select(col: np.ndarray, day: np.ndarray, jit: np.ndarray, uid: np.ndarray,
            sides: Mapping[int, Ask]) -> pd.DataFrame:
    """Per snack column, its ``k`` smallest (or largest) keys.

    Rows are sorted by column, then from the extreme key inwards (ascending keys on the
    smallest side, descending on the largest), so the ``k``-th row of a column is the one
    its cutoff needs.
    """
    if not len(col) or not sides:
        return _empty_candidates()
    top = int(max(sides)) + 1
    k_of = np.zeros(max(top, int(col.max()) + 1), np.int64)
    down = np.zeros(len(k_of), bool)
    day_of = np.full(len(k_of), _BOTTOM, np.int64)  # int64 min: any day
    for c, (k, largest, d) in sides.items():
        k_of[c], down[c] = k, largest
        if d is not None:
            day_of[c] = d
    on_day = (day_of[col] == _BOTTOM) | (day == day_of[col])
    col, day, jit, uid = col[on_day], day[on_day], jit[on_day], uid[on_day]
    sign = np.where(down[col], -1, 1)
    # np.lexsort sorts by its last key first: column, then the key (negated: largest first)
    order = np.lexsort((uid * sign, jit * sign, day * sign, col))
    col, day, jit, uid = col[order], day[order], jit[order], uid[order]
    rank = np.arange(len(col)) - np.searchsorted(col, col, side="left")
    keep = rank < k_of[col]
    return pd.DataFrame({"col": col[keep], "day": day[keep], "jitter": jit[keep],
                         "user_id": uid[keep]})


def chunk(cols: np.ndarray, day: np.ndarray, jit: np.ndarray, uid: np.ndarray,
          quota: Mapping[int, int], held: Mapping[int, int] | pd.DataFrame | None = None
          ) -> pd.DataFrame:
    """One partition's candidates: for each snack in ``quota``, its extreme holder keys.

    Args:
        cols: the snack column of each (box, snack) the partition's boxes hold.
        day: the holding box's delivery day.
        jit: its jitter(u, 0, d).
        uid: its user id.
        quota: over-stock snack column -> q(s) (snacks with q(s) = 0 need no candidates).
        held: the boxes holding each snack in all partitions, per delivery day (a
            :func:`held_by_day` frame) or in all (column -> H(s)): each snack then sends
            only the day and the side of its keys where its cutoff lies (:func:`sides`),
            far fewer rows for the same cutoff.

    Returns:
        At most ``k`` rows per snack (:data:`CANDIDATE_COLUMNS`), sorted by column, then
        from the extreme key inwards.
    """
    ask = sides(quota, held)
    cols = np.asarray(cols, np.int64)
    keep = np.isin(cols, np.fromiter(ask, np.int64, len(ask)))
    return _select(cols[keep], np.asarray(day, np.int64)[keep],
                   np.asarray(jit, np.float64)[keep], np.asarray(uid, np.int64)[keep], ask)


def combine(parts: Iterable[pd.DataFrame], quota: Mapping[int, int],
            held: Mapping[int, int] | pd.DataFrame | None = None) -> pd.DataFrame:
    """Merge candidates of several partitions, keeping the ``k`` extreme keys per snack.

    ``held`` must be what the partitions' :func:`chunk` was given.
    """
    frames = [p for p in parts if len(p)]
    if not frames:
        return _empty_candidates()
    merged = pd.concat(frames, ignore_index=True)
    return _select(merged["col"].to_numpy(np.int64), merged["day"].to_numpy(np.int64),
                   merged["jitter"].to_numpy(np.float64), merged["user_id"].to_numpy(np.int64),
                   sides(quota, held))


def aggregate(candidates: pd.DataFrame, quota: Mapping[int, int],
              held: Mapping[int, int] | pd.DataFrame | None = None
              ) -> dict[int, tuple[int, float, int]]:
    """κ(s) per over-stock snack: the q(s)-th smallest holder key, or −∞ when q(s) = 0.

    Args:
        candidates: every partition's candidates combined (:func:`combine`).
        quota: over-stock snack column -> q(s).
        held: what :func:`chunk` and :func:`combine` were given.

    Returns:
        snack column -> ``(day, jitter, user_id)``; −∞ is ``(int64 min, 0.0, 0)``.

    Raises:
        ValueError: a snack with fewer candidates than it needs (it was not over stock).
    """
    ask = sides(quota, held)
    col = candidates["col"].to_numpy(np.int64)
    day = candidates["day"].to_numpy(np.int64)
    jit = candidates["jitter"].to_numpy(np.float64)
    uid = candidates["user_id"].to_numpy(np.int64)
    out: dict[int, tuple[int, float, int]] = {}
    for c, q in quota.items():
        if q == 0:
            out[int(c)] = (int(_BOTTOM), 0.0, 0)
            continue
        k = ask[int(c)][0]
        first, last = np.searchsorted(col, [c, c + 1])  # candidates are sorted by column
        if last - first < k:
            raise ValueError(f"snack column {c} has fewer than {q} holders; it is not over stock")
        i = first + k - 1
        out[int(c)] = (int(day[i]), float(jit[i]), int(uid[i]))
    return out


def next_cutoffs(cutoffs: Cutoffs, holders: np.ndarray, stock: np.ndarray,
                 candidates: Iterable[pd.DataFrame], by_day: pd.DataFrame | None = None
                 ) -> tuple[Cutoffs, np.ndarray]:
    """Step 2 of a round: the new cutoffs and the snack columns whose cutoff moved.

    Args:
        cutoffs: the cutoffs the round ran with.
        holders: boxes holding each snack after the round (all partitions).
        stock: q(s) per snack (0 for a snack without a stock row).
        candidates: each partition's :func:`chunk` for the over-stock snacks.
        by_day: the holders per delivery day the candidates were asked with (None: the
            per-snack ``holders``).

    Returns:
        ``(new cutoffs, moved columns)``; no moved column means the rounds are over.
    """
    over = over_stock(holders, stock)
    quota = {int(c): int(stock[c]) for c in over}
    held: Mapping[int, int] | pd.DataFrame = (
        by_day if by_day is not None else {int(c): int(holders[c]) for c in over})
    new = aggregate(combine(candidates, quota, held), quota, held)
    if not new:
        return cutoffs, np.zeros(0, np.int64)
    cols = np.array(sorted(new), np.int64)
    day = np.array([new[c][0] for c in cols], np.int64)
    jit = np.array([new[c][1] for c in cols], np.float64)
    uid = np.array([new[c][2] for c in cols], np.int64)
    changed = (day != cutoffs.day[cols]) | (jit != cutoffs.jitter[cols]) | \
        (uid != cutoffs.user_id[cols])
    return cutoffs.with_values(cols, day, jit, uid), cols[changed]


class StockRoundsExceeded(InputError):
    """Round ``stock_max_rounds`` of a stock-aware run still changed a cutoff (exit 1)."""

    def __init__(self, rounds: int, moved_snacks: list[int]):
        self.rounds, self.moved_snacks = rounds, moved_snacks
        shown = ", ".join(map(str, moved_snacks[:20])) + (" ..." if len(moved_snacks) > 20 else "")
        super().__init__(
            f"the stock-aware run did not settle within stock_max_rounds={rounds} rounds: round "
            f"{rounds} still moved the cutoffs of {len(moved_snacks)} snack(s) (snack_id "
            f"{shown}); raise it with --set stock_max_rounds=N")


class Partitions(Protocol):
    """The partitions of a stock-aware run, wherever they live (a cluster, a list)."""

    def holders(self) -> pd.DataFrame:
        """Boxes holding each snack per delivery day, summed over the partitions."""

    def candidates(self, quota: dict[int, int], held: pd.DataFrame) -> list[pd.DataFrame]:
        """Each partition's :func:`chunk` for the snacks of ``quota`` (holders in ``held``)."""

    def refill(self, cutoffs: Cutoffs) -> None:
        """Apply new cutoffs to every partition's boxes."""


def run_rounds(parts: Partitions, stock: np.ndarray, snack_ids: np.ndarray, max_rounds: int,
               on_round: Callable[[int, int], None] | None = None) -> tuple[Cutoffs, int]:
    """The rounds of SPEC §6, after round 1 filled ``parts``: until no cutoff moves.

    Args:
        parts: the partitions, filled by round 1 (no cutoffs).
        stock: q(s) per catalog column (0 for a snack without a stock row).
        snack_ids: the snack id of each catalog column (for messages).
        max_rounds: ``stock_max_rounds``.
        on_round: called with (round number, cutoffs moved) after each round.

    Returns:
        ``(final cutoffs, rounds run)``, the last round included.

    Raises:
        StockRoundsExceeded: round ``max_rounds`` still moved a cutoff.
    """
    cutoffs = Cutoffs.unlimited(len(stock))
    rounds = 1
    while True:
        by_day = parts.holders()
        held = np.bincount(by_day["col"].to_numpy(np.int64), by_day["boxes"].to_numpy(np.int64),
                           minlength=len(stock)).astype(np.int64)
        over = over_stock(held, stock)
        quota = {int(c): int(stock[c]) for c in over}
        wanted = {c: q for c, q in quota.items() if q > 0}
        found = parts.candidates(wanted, by_day) if wanted else []
        new, moved = next_cutoffs(cutoffs, held, stock, found, by_day)
        if on_round is not None:
            on_round(rounds, len(moved))
        if not len(moved):
            return cutoffs, rounds
        if rounds >= max_rounds:
            raise StockRoundsExceeded(max_rounds, sorted(int(snack_ids[c]) for c in moved))
        cutoffs = new
        parts.refill(cutoffs)
        rounds += 1
