"""Make a worker ready for preassign's tasks while it starts (a Dask preload module).

Named in the ``local.preload`` setting of ``cluster/defaults.yaml``, so each LocalCluster
worker imports it as it starts. Without it the first task on every worker waits for
preassign's imports (pandas, pyarrow, numba: about a second) and for numba to load the
compiled kernels from its cache; with it the workers do that while they start - in
parallel with each other and with the client, which reads the lake's listing and snack
tables meanwhile (:func:`preassign.pipeline.run_job`).

The warm-up fills two boxes of a made-up partition of two users through the same
functions a run calls, so the kernels are loaded for the argument types a run uses. It
never stops a worker from starting: a failure is logged and the worker starts cold.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["dask_setup", "warm_up"]


def warm_up() -> int:
    """Run the engine once on a tiny partition; return the number of boxes' snacks chosen."""
    import numpy as np
    import pandas as pd

    from ..core.catalog import build_catalog
    from ..core.contract import normalize_table
    from ..core.engine import get_engine
    from ..core.params import Params
    from ..core.partition import prepare_partition
    from ..core.rules import snack_prior

    day = dt.date(2026, 1, 10)
    at = pd.Timestamp("2026-01-01")
    snacks, _, _ = normalize_table("snacks", pd.DataFrame({
        "snack_id": np.array([1, 2, 3], np.int64), "name": ["a", "b", "c"],
        "genre": ["x", "y", "x"], "ingredients": [["i"], [], ["j"]],
        "launched_on": pd.to_datetime(["2025-01-01"] * 3),
        "retired_on": pd.Series([pd.NaT] * 3, dtype="datetime64[ns]"),
    }))
    catalog = build_catalog(snacks)
    ids = np.array([1, 2], np.int64)
    raw = {
        "users": pd.DataFrame({"user_id": ids, "status": ["active", "active"],
                               "next_delivery_on": pd.to_datetime([day, day]),
                               "box_size": np.array([2, 2], np.int64)}),
        "ratings": pd.DataFrame({"user_id": ids, "snack_id": np.array([1, 2], np.int64),
                                 "rating": np.array([4, 3], np.int64),
                                 "rated_at": pd.to_datetime([at, at])}),
        "deliveries": pd.DataFrame({"user_id": ids[:1], "snack_id": np.array([3], np.int64),
                                    "delivered_on": pd.to_datetime([at])}),
        "ng_snacks": pd.DataFrame({"user_id": ids[1:], "snack_id": np.array([3], np.int64)}),
        "avoid_ingredients": pd.DataFrame({"user_id": ids[:1], "ingredient": ["j"]}),
        "genre_prefs": pd.DataFrame({"user_id": ids[1:], "genre": ["x"]}),
        "requests": pd.DataFrame({"user_id": ids[:1], "snack_id": np.array([2], np.int64),
                                  "requested_at": pd.to_datetime([at])}),
    }
    tables, _, _, _ = prepare_partition(raw, catalog)
    engine = get_engine("numba")
    params = Params()
    sums, counts = engine.rating_totals(tables, catalog)
    state = engine.build_state(tables, catalog, day, day, params)
    boxes = engine.assign(state, catalog, snack_prior(sums, counts, params), params)
    return len(boxes)


def dask_setup(worker: Any) -> None:
    """Dask's preload hook: warm the worker up (never fails the worker's start)."""
    try:
        warm_up()
    except Exception:  # noqa: BLE001 - a cold worker still works; say why it is cold
        log.warning("preassign warm-up failed; this worker starts cold", exc_info=True)
