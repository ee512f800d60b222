"""Demand per (delivery date, snack); shortage (SPEC §4) and reservations (§6) against stock."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "DEMAND_COLUMNS",
    "RESERVATION_COLUMNS",
    "combine_demand",
    "compute_reservations",
    "compute_shortage",
    "count_demand",
    "stock_by_column",
]

DEMAND_COLUMNS = ["units", "units_request", "units_preference", "units_explore", "units_fallback"]


def count_demand(assignments: pd.DataFrame) -> pd.DataFrame:
    """Units per (``delivery_on``, ``snack_id``) in total and per stage.

    ``assignments`` holds ``delivery_on``, ``snack_id`` and ``stage`` as the stage
    index (0 request, 1 preference, 2 explore, 3 fallback). Works on one partition;
    partial results add up with :func:`combine_demand`.

    Examples:
        >>> a = pd.DataFrame({"delivery_on": [1, 1, 1], "snack_id": [7, 7, 8], "stage": [0, 3, 1]})
        >>> count_demand(a).iloc[0].to_dict()  # doctest: +NORMALIZE_WHITESPACE
        {'delivery_on': 1, 'snack_id': 7, 'units': 2, 'units_request': 1,
         'units_preference': 0, 'units_explore': 0, 'units_fallback': 1}
    """
    stage = assignments["stage"].to_numpy()
    parts = pd.DataFrame(
        {
            "delivery_on": assignments["delivery_on"].to_numpy(),
            "snack_id": assignments["snack_id"].to_numpy(np.int64),
            "units": np.ones(len(assignments), np.int64),
            **{c: (stage == i).astype(np.int64) for i, c in enumerate(DEMAND_COLUMNS[1:])},
        }
    )
    return combine_demand(parts)


def combine_demand(parts: pd.DataFrame) -> pd.DataFrame:
    """Add up demand rows that share (``delivery_on``, ``snack_id``)."""
    out = parts.groupby(["delivery_on", "snack_id"], sort=True,
                        as_index=False)[DEMAND_COLUMNS].sum()
    return out.astype({c: np.int64 for c in DEMAND_COLUMNS})


def compute_shortage(demand: pd.DataFrame, stock: pd.DataFrame) -> pd.DataFrame:
    """One row per snack with demand over the whole run: units, stock, shortage.

    ``stock`` has ``snack_id`` and ``quantity`` (unknown snacks already removed);
    a snack with no stock row has 0.
    """
    units = demand.groupby("snack_id", sort=True, as_index=False)["units"].sum()
    units = units[units["units"] > 0]
    on_hand = stock.set_index("snack_id")["quantity"]
    have = on_hand.reindex(units["snack_id"]).fillna(0).to_numpy(np.int64)
    out = pd.DataFrame(
        {
            "snack_id": units["snack_id"].to_numpy(np.int64),
            "units": units["units"].to_numpy(np.int64),
            "stock": have,
        }
    )
    out["shortage"] = np.maximum(out["units"] - out["stock"], 0).astype(np.int64)
    return out.reset_index(drop=True)


#: Columns of ``reservations/`` (SPEC §6), in order.
RESERVATION_COLUMNS = ["snack_id", "stock", "units_unconstrained", "units", "units_left",
                       "boxes_lost", "boxes_gained", "limited", "cutoff_on"]


def stock_by_column(stock: pd.DataFrame, snack_ids: np.ndarray) -> np.ndarray:
    """q(s) per catalog column: the stock row's quantity, 0 for a snack without one."""
    on_hand = stock.set_index("snack_id")["quantity"]
    return on_hand.reindex(snack_ids).fillna(0).to_numpy(np.int64)


def compute_reservations(snack_ids: np.ndarray, stock: np.ndarray, units_first: np.ndarray,
                         units_final: np.ndarray, boxes_lost: np.ndarray,
                         boxes_gained: np.ndarray, limited: np.ndarray,
                         cutoff_day: np.ndarray) -> pd.DataFrame:
    """``reservations/`` of a stock-aware run (SPEC §6), one row per snack with a unit.

    All arguments are per catalog column: the snack ids, q(s), units in round 1 and in the
    result, boxes that lost and gained the snack, whether κ(s) < +∞, and κ(s)'s date in days
    since the epoch (ignored where κ(s) is not a key). A snack appears when it has at least
    one unit in round 1 or in the result.

    Examples:
        >>> r = compute_reservations(np.array([1, 2]), np.array([1, 5]), np.array([2, 0]),
        ...     np.array([1, 0]), np.array([1, 0]), np.array([0, 0]), np.array([True, False]),
        ...     np.array([20788, 0]))
        >>> r[["snack_id", "units_left", "cutoff_on"]].to_dict("records")
        [{'snack_id': 1, 'units_left': 0, 'cutoff_on': 20788}]
    """
    keep = (units_first > 0) | (units_final > 0)
    day_min = np.iinfo(np.int64).min
    has_key = limited & (cutoff_day != day_min)
    return pd.DataFrame({
        "snack_id": snack_ids[keep].astype(np.int64),
        "stock": stock[keep].astype(np.int64),
        "units_unconstrained": units_first[keep].astype(np.int64),
        "units": units_final[keep].astype(np.int64),
        "units_left": (stock - units_final)[keep].astype(np.int64),
        "boxes_lost": boxes_lost[keep].astype(np.int64),
        "boxes_gained": boxes_gained[keep].astype(np.int64),
        "limited": limited[keep].astype(bool),
        "cutoff_on": pd.array([int(d) if k else None
                               for d, k in zip(cutoff_day[keep], has_key[keep], strict=True)],
                              dtype="Int64"),
    })[RESERVATION_COLUMNS]
