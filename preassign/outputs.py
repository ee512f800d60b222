"""The run outputs of SPEC §4 and §6: their Parquet schemas and the frames written there."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from .core.demand import DEMAND_COLUMNS
from .core.rules import STAGES

__all__ = [
    "ASSIGNMENT_SCHEMA",
    "CUTOFF_SCHEMA",
    "DEMAND_SCHEMA",
    "PRIOR_SCHEMA",
    "RESERVATION_SCHEMA",
    "SHORTAGE_SCHEMA",
    "assignment_output",
    "days_to_arrow_dates",
]

ASSIGNMENT_SCHEMA = pa.schema(
    [
        ("delivery_on", pa.date32()),
        ("user_id", pa.int64()),
        ("slot", pa.int32()),
        ("snack_id", pa.int64()),
        ("stage", pa.string()),
    ]
)
#: Names for people, after the SPEC's columns of demand/, shortage/ and reservations/.
_NAMES = [("name", pa.string()), ("genre", pa.string())]
DEMAND_SCHEMA = pa.schema(
    [("delivery_on", pa.date32()), ("snack_id", pa.int64())]
    + [(c, pa.int64()) for c in DEMAND_COLUMNS] + _NAMES
)
SHORTAGE_SCHEMA = pa.schema(
    [("snack_id", pa.int64()), ("units", pa.int64()), ("stock", pa.int64()),
     ("shortage", pa.int64()), ("has_stock_row", pa.bool_()), ("runs_out_on", pa.date32()),
     ("boxes_affected", pa.int64())] + _NAMES
)
RESERVATION_SCHEMA = pa.schema(
    [("snack_id", pa.int64()), ("stock", pa.int64()), ("units_unconstrained", pa.int64()),
     ("units", pa.int64()), ("units_left", pa.int64()), ("boxes_lost", pa.int64()),
     ("boxes_gained", pa.int64()), ("limited", pa.bool_()), ("cutoff_on", pa.date32())]
    + _NAMES
)
#: ``stock_cutoffs/`` of a stock-aware run: κ(s) of every limited snack, whole (the key of
#: the last box served; ``no_box`` for −∞), which ``explain_box`` uses.
CUTOFF_SCHEMA = pa.schema(
    [("snack_id", pa.int64()), ("no_box", pa.bool_()), ("cutoff_on", pa.date32()),
     ("cutoff_jitter", pa.float64()), ("cutoff_user_id", pa.int64())]
)
PRIOR_SCHEMA = pa.schema(
    [("snack_id", pa.int64()), ("genre", pa.string()), ("ratings_count", pa.int64()),
     ("ratings_sum", pa.int64()), ("prior", pa.float64())]
)


def days_to_arrow_dates(days: np.ndarray | pd.Series) -> pd.Series:
    """Days since the epoch as Arrow ``date32`` (NaN, for a float array, becomes null)."""
    values = np.asarray(days)
    if values.dtype.kind == "f":
        nulls = np.isnan(values)
        arr = pa.array(np.where(nulls, 0, values).astype(np.int32), pa.int32(),
                       mask=nulls).cast(pa.date32())
    else:
        arr = pa.array(values.astype(np.int32), pa.int32()).cast(pa.date32())
    return pd.Series(pd.arrays.ArrowExtensionArray(arr))


def assignment_output(frame: pd.DataFrame) -> pd.DataFrame:
    """The engines' assignment frame in the SPEC §4 layout of ``assignments/``."""
    stage = pa.array(np.array(STAGES, dtype=object)[frame["stage"].to_numpy(np.int64)], pa.string())
    return pd.DataFrame(
        {
            "delivery_on": days_to_arrow_dates(frame["delivery_on"].to_numpy()).array,
            "user_id": frame["user_id"].to_numpy(np.int64),
            "slot": frame["slot"].to_numpy(np.int32),
            "snack_id": frame["snack_id"].to_numpy(np.int64),
            "stage": pd.arrays.ArrowExtensionArray(stage),
        }
    )
