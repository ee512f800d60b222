"""What people act on, computed from a run's small results (pure pandas).

* :func:`with_names` - snack name and genre beside every snack id a person reads.
* :func:`shortage_details` - for each snack with demand: units against stock, whether it has
  a stock row at all, the first delivery date the stock stops covering boxes
  (``runs_out_on``: cumulative demand by date, earlier dates served first) and the boxes on
  and after that date holding it (``boxes_affected``).
* :func:`stock_timeline` - per short or limited snack and delivery date: units, cumulative
  units, stock and the units the stock still covers.
* :func:`callouts` - what deserves attention, each with a stable ``code`` a scheduler can
  alert on (:data:`CALLOUT_CODES`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .core.catalog import SnackCatalog
from .core.demand import DEMAND_COLUMNS
from .core.rules import from_days

__all__ = ["CALLOUT_CODES", "callouts", "shortage_details", "snack_names", "stock_timeline",
           "with_names"]

#: Every call-out code, with what it means (documented in the README).
CALLOUT_CODES = {
    "STOCK_ROW_MISSING": "snacks in demand have no stock row (stock feed incomplete?)",
    "NEW_SNACK_NO_STOCK": "new snacks in demand have no stock",
    "SNACKS_SHORT": "snacks are short against stock",
    "SNACKS_LIMITED": "snacks ran out in a stock-aware run: later boxes get others",
    "BOXES_SHORT": "boxes end with fewer snacks than their size",
    "DEMAND_ONE_STAGE": "snacks whose demand comes mostly from one stage",
    "ORPHAN_ROWS": "rows whose user or snack is unknown were ignored",
    "INVALID_ROWS_DROPPED": "invalid rows were dropped (--on-invalid drop)",
}
#: A snack's demand "comes mostly from one stage" at this share of its units (and at least
#: :data:`ONE_STAGE_MIN_UNITS` units), for the request, explore and fallback stages.
ONE_STAGE_SHARE = 0.8
ONE_STAGE_MIN_UNITS = 10
#: At most this many snacks are listed by id in one call-out.
LISTED = 20
#: Snacks a call-out's message names (the rest are counted: "and 12 more").
NAMED = 5


def snack_names(catalog: SnackCatalog) -> pd.DataFrame:
    """``snack_id``, ``name``, ``genre`` of every snack of the lineup."""
    return pd.DataFrame({"snack_id": catalog.snack_id, "name": catalog.names,
                         "genre": catalog.genre_names})


def with_names(frame: pd.DataFrame, names: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``name`` and ``genre`` inserted right after ``snack_id`` (replaced if there).

    Examples:
        >>> names = pd.DataFrame({"snack_id": [1], "name": ["choco milk"], "genre": ["choco"]})
        >>> with_names(pd.DataFrame({"snack_id": [1], "units": [3]}), names).columns.tolist()
        ['snack_id', 'name', 'genre', 'units']
    """
    lookup = names.set_index("snack_id")
    ids = frame["snack_id"].to_numpy(np.int64)
    out = frame.drop(columns=[c for c in ("name", "genre") if c in frame.columns])
    at = list(out.columns).index("snack_id") + 1
    out.insert(at, "name", lookup["name"].reindex(ids).to_numpy(object))
    out.insert(at + 1, "genre", lookup["genre"].reindex(ids).to_numpy(object))
    return out


def _dates(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(np.int64)
    return np.array([(pd.Timestamp(v).date() - dt.date(1970, 1, 1)).days for v in values],
                    np.int64)


def stock_timeline(demand: pd.DataFrame, stock: pd.Series, snacks: Sequence[int],
                   covered: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per snack of ``snacks`` and delivery date: units against the stock, dates ascending.

    Args:
        demand: demand per (``delivery_on``, ``snack_id``) with ``units``.
        stock: quantity by snack id (a missing snack has 0).
        snacks: the snacks to show (short or limited ones).
        covered: for a stock-aware run, the result's demand: ``covered_units`` are its units
            (what the stock actually serves); else the stock covers earlier dates first.

    Returns:
        ``snack_id``, ``delivery_on`` (date), ``units``, ``cumulative_units``, ``stock``,
        ``covered_units``.
    """
    cols = ["snack_id", "delivery_on", "units", "cumulative_units", "stock", "covered_units"]
    if not len(snacks) or not len(demand):
        return pd.DataFrame({c: [] for c in cols})
    frame = pd.DataFrame({"snack_id": demand["snack_id"].to_numpy(np.int64),
                          "day": _dates(demand["delivery_on"]),
                          "units": demand["units"].to_numpy(np.int64)})
    frame = frame[frame["snack_id"].isin(list(snacks))]
    frame = pd.DataFrame(frame.groupby(["snack_id", "day"], as_index=False)["units"].sum())
    frame = frame.sort_values(["snack_id", "day"], ignore_index=True)
    frame["cumulative_units"] = frame.groupby("snack_id")["units"].cumsum()
    frame["stock"] = stock.reindex(frame["snack_id"]).fillna(0).to_numpy(np.int64)
    if covered is None:
        before = frame["cumulative_units"] - frame["units"]
        frame["covered_units"] = np.clip(frame["stock"] - before, 0, frame["units"])
    else:
        got = pd.DataFrame({"snack_id": covered["snack_id"].to_numpy(np.int64),
                            "day": _dates(covered["delivery_on"]),
                            "covered_units": covered["units"].to_numpy(np.int64)})
        got = pd.DataFrame(got.groupby(["snack_id", "day"], as_index=False)["covered_units"]
                           .sum())
        frame = frame.merge(got, on=["snack_id", "day"], how="left")
        frame["covered_units"] = frame["covered_units"].fillna(0).astype(np.int64)
    frame["delivery_on"] = [from_days(int(d)) for d in frame["day"]]
    return frame[cols].astype({c: np.int64 for c in cols if c not in ("delivery_on",)})


def shortage_details(shortage: pd.DataFrame, demand: pd.DataFrame,
                     stock: pd.DataFrame) -> pd.DataFrame:
    """The shortage (SPEC §4) with ``has_stock_row``, ``runs_out_on`` and ``boxes_affected``.

    ``runs_out_on`` is the first delivery date whose cumulative units exceed the stock (earlier
    dates served first; None when the stock covers every box); ``boxes_affected`` counts the
    boxes on and after that date that hold the snack.
    """
    on_hand = stock.set_index("snack_id")["quantity"]
    out = shortage.copy()
    out["has_stock_row"] = out["snack_id"].isin(on_hand.index)
    short = out.loc[out["shortage"] > 0, "snack_id"].tolist()
    timeline = stock_timeline(demand, on_hand, short)
    runs_out: dict[int, dt.date] = {}
    affected: dict[int, int] = {}
    for sid in timeline["snack_id"].unique():
        rows = timeline.loc[timeline["snack_id"] == sid]
        over = rows["cumulative_units"].to_numpy() > rows["stock"].to_numpy()
        if over.any():
            first = int(np.argmax(over))
            runs_out[int(sid)] = rows["delivery_on"].to_numpy()[first]
            affected[int(sid)] = int(rows["units"].to_numpy()[first:].sum())
    out["runs_out_on"] = pd.Series([runs_out.get(int(s)) for s in out["snack_id"]], dtype=object,
                                   index=out.index)
    out["boxes_affected"] = np.array([affected.get(int(s), 0) for s in out["snack_id"]],
                                     np.int64)
    return out


def _listed(ids: Sequence[int], names: pd.DataFrame) -> str:
    lookup = names.set_index("snack_id")["name"]
    shown = [f"{lookup.get(i) or '?'} (#{i})" for i in list(ids)[:NAMED]]
    more = f" and {len(ids) - NAMED} more" if len(ids) > NAMED else ""
    return ", ".join(shown) + more


def _callout(code: str, severity: str, message: str, count: int,
             snacks: Sequence[int] = ()) -> dict[str, Any]:
    return {"code": code, "severity": severity, "message": message, "count": int(count),
            "snacks": [int(s) for s in list(snacks)[:LISTED]]}


def callouts(summary: Mapping[str, Any], demand: pd.DataFrame, names: pd.DataFrame,
             catalog: SnackCatalog, stock: pd.DataFrame | None, new_days: int,
             shortage: pd.DataFrame | None = None,
             reservations: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """What deserves attention in a run, each with a stable code (:data:`CALLOUT_CODES`).

    Args:
        summary: the run's summary (counts of boxes, rows, orphans, invalid rows, dates).
        demand: demand per (date, snack).
        names: ``snack_id``, ``name``, ``genre``.
        catalog: the snack catalog (launch dates, for new snacks).
        stock: the lake's stock rows of known snacks (None without a stock table).
        new_days: the ``new_days`` parameter (a snack is new on d if launched in
            ``(d - new_days, d]``).
        shortage: the shortage (SPEC §3 runs with stock).
        reservations: the reservations (stock-aware runs).

    Returns:
        Call-outs in a fixed order: ``code``, ``severity``, ``message``, ``count``, ``snacks``.
    """
    out: list[dict[str, Any]] = []
    totals = demand.groupby("snack_id")[DEMAND_COLUMNS].sum() if len(demand) else \
        pd.DataFrame(columns=DEMAND_COLUMNS)
    in_demand = totals.index.to_numpy(np.int64)
    if stock is not None:
        has_row = set(stock["snack_id"].astype(np.int64))
        missing = sorted(int(s) for s in in_demand if int(s) not in has_row)
        if missing:
            out.append(_callout(
                "STOCK_ROW_MISSING", "warning",
                f"{len(missing)} snack(s) in demand have no stock row - stock feed "
                f"incomplete? {_listed(missing, names)}", len(missing), missing))
        quantity = stock.set_index("snack_id")["quantity"]
        first = (dt.date.fromisoformat(summary["date_from"]) - dt.date(1970, 1, 1)).days
        last = (dt.date.fromisoformat(summary["date_to"]) - dt.date(1970, 1, 1)).days
        launched = pd.Series(catalog.launched_on.astype(np.int64), index=catalog.snack_id)
        new = [int(s) for s in in_demand
               if first - new_days < launched.get(s, -10**9) <= last
               and quantity.get(s, 0) == 0]
        if new:
            out.append(_callout("NEW_SNACK_NO_STOCK", "warning",
                                f"{len(new)} new snack(s) in demand have no stock: "
                                f"{_listed(new, names)}", len(new), new))
    if shortage is not None:
        short = shortage.loc[shortage["shortage"] > 0].sort_values(
            ["shortage", "snack_id"], ascending=[False, True])
        if len(short):
            ids = short["snack_id"].astype(int).tolist()
            out.append(_callout(
                "SNACKS_SHORT", "warning",
                f"{len(ids)} snack(s) short against stock, {int(short['shortage'].sum()):,} "
                f"units in all: {_listed(ids, names)}", len(ids), ids))
    if reservations is not None:
        lost = reservations.loc[reservations["limited"].astype(bool)
                                & (reservations["boxes_lost"] > 0)].sort_values(
            ["boxes_lost", "snack_id"], ascending=[False, True])
        if len(lost):
            ids = lost["snack_id"].astype(int).tolist()
            out.append(_callout(
                "SNACKS_LIMITED", "warning",
                f"{len(ids)} snack(s) run out before their last box: "
                f"{int(lost['boxes_lost'].sum()):,} boxes lose one and get another snack or "
                f"stay short: {_listed(ids, names)}", len(ids), ids))
    if summary.get("boxes_short"):
        n = int(summary["boxes_short"])
        out.append(_callout("BOXES_SHORT", "warning",
                            f"{n:,} box(es) end with fewer snacks than their size", n))
    stages = ["units_request", "units_explore", "units_fallback"]
    if len(totals):
        share = totals[stages].div(totals["units"].where(totals["units"] > 0), axis=0)
        mostly = totals.index[(share.max(axis=1) >= ONE_STAGE_SHARE)
                              & (totals["units"] >= ONE_STAGE_MIN_UNITS)]
        if len(mostly):
            ids = [int(s) for s in mostly]
            top = share.idxmax(axis=1)
            lookup = names.set_index("snack_id")["name"]
            detail = ", ".join(
                f"{lookup.get(s) or '?'} (#{s}, {share.loc[s].max():.0%} "
                f"{str(top.loc[s]).removeprefix('units_')})" for s in ids[:NAMED])
            if len(ids) > NAMED:
                detail += f" and {len(ids) - NAMED} more"
            out.append(_callout(
                "DEMAND_ONE_STAGE", "info",
                f"{len(ids)} snack(s) get at least {ONE_STAGE_SHARE:.0%} of their units from one "
                f"stage: {detail}", len(ids), ids))
    orphans = {k: int(v) for k, v in summary.get("orphan_rows", {}).items() if v}
    if orphans:
        n = sum(orphans.values())
        out.append(_callout("ORPHAN_ROWS", "info",
                            f"{n:,} orphan row(s) ignored (unknown user or snack): "
                            + ", ".join(f"{t} {c:,}" for t, c in orphans.items()), n))
    invalid = {k: int(v) for k, v in summary.get("invalid_rows", {}).items() if v}
    if invalid:
        n = sum(invalid.values())
        out.append(_callout("INVALID_ROWS_DROPPED", "warning",
                            f"{n:,} invalid row(s) dropped (see rejected/): "
                            + ", ".join(f"{t} {c:,}" for t, c in invalid.items()), n))
    return out
