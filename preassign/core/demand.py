"""Demand per (delivery date, snack) and shortage against stock (pure pandas)."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["DEMAND_COLUMNS", "count_demand", "combine_demand", "compute_shortage"]

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
