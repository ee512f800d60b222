"""The engine contract: how a partition's user state is built and its boxes filled.

An engine is three functions over one prepared partition
(:func:`preassign.core.partition.prepare_partition`):

* ``build_state(tables, catalog, date_from, date_to, params)`` - the target users' state;
* ``assign(state, catalog, prior, params)`` - their boxes, as the assignment frame of
  :data:`preassign.core.dense.ASSIGNMENT_COLUMNS`;
* ``rating_totals(tables, catalog)`` - per snack, the sum and count of latest ratings (the
  partition's share of the snack prior).

An engine also says which rule parameters its state depends on (``state_params``): a state
that depends on none is built once and serves every run of a session
(:class:`preassign.session.Session`); otherwise the session keeps the prepared tables and
builds the state again when one of those parameters changes.

Two engines give the same results bit for bit: ``numba`` (:mod:`preassign.core.sparse`, the
default: CSR state and a compiled kernel) and ``numpy`` (:mod:`preassign.core.dense`, the
readable reference over ``users x snacks`` arrays). :func:`get_engine` picks one by name,
modelled on ``get_engine`` of dask's parquet I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from . import dense, sparse

__all__ = ["ENGINES", "Engine", "get_engine"]


@dataclasses.dataclass(frozen=True)
class Engine:
    """An engine: its name and its three functions (see the module docstring).

    Attributes:
        name: what :func:`get_engine` calls it.
        build_state: ``(tables, catalog, date_from, date_to, params) -> state``.
        assign: ``(state, catalog, prior, params) -> assignment frame``.
        rating_totals: ``(tables, catalog) -> (sums, counts)`` per snack column.
        state_params: the :class:`~preassign.core.params.Params` fields ``build_state`` reads.
    """

    name: str
    build_state: Callable[..., Any]
    assign: Callable[..., pd.DataFrame]
    rating_totals: Callable[..., tuple[np.ndarray, np.ndarray]]
    state_params: frozenset[str] = frozenset()


#: Engines by name.
ENGINES: dict[str, Engine] = {
    "numba": Engine("numba", sparse.build_sparse_state, sparse.assign_snacks_sparse,
                    sparse.rating_totals),
    "numpy": Engine("numpy", dense.build_user_state, dense.assign_snacks, dense.rating_totals,
                    frozenset({"default_box_size", "repeat_window_days",
                               "request_window_days"})),
}


def get_engine(name: str) -> Engine:
    """The engine called ``name``.

    Raises:
        UsageError: an unknown name; the message lists the valid ones.

    Examples:
        >>> get_engine("numpy").name
        'numpy'
    """
    try:
        return ENGINES[name]
    except (KeyError, TypeError):
        raise UsageError(
            f"unknown engine {name!r}; valid engines: {', '.join(sorted(ENGINES))}"
        ) from None
