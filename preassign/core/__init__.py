"""The pure core: the rules of SPEC §2, §3 and §6 on one partition of users.

Nothing here knows Dask, storage, databases or the command line: every function takes
numpy arrays or pandas frames of one partition and returns new ones, so the same code runs
in a Dask task, a notebook cell or a unit test (a test imports this package with dask,
fsspec, s3fs, sqlalchemy, boto3, botocore and click blocked). It imports numpy, pandas,
pyarrow, numba and :mod:`preassign.errors` (a leaf module) only.

The way through, per partition:

1. :mod:`~preassign.core.contract` - the table contract of SPEC §2: required columns,
   physical types normalised, invalid values found, duplicates resolved.
2. :mod:`~preassign.core.partition` - one partition prepared: every table checked, rows
   counted, orphans set aside, each row's user row and snack column resolved once.
3. :mod:`~preassign.core.engine` - an engine builds the target users' **state** and fills
   their **boxes**: :mod:`~preassign.core.sparse` (the default: CSR state and the compiled
   loops of :mod:`~preassign.core.kernel`) or :mod:`~preassign.core.dense` (the readable
   reference over ``users x snacks`` arrays). The two give the same boxes bit for bit.
4. :mod:`~preassign.core.demand` - boxes to demand per (date, snack); demand and stock to
   shortage.

Where the rules live: every constant and formula of SPEC §3 (own weights, windows,
new-on-d, the splitmix jitter, scores, explore keys, the rounding of keys, the prior) is
written once in :mod:`~preassign.core.rules`; both engines and ``preassign.explain`` call
it. The parameters are :class:`~preassign.core.params.Params`; the snack table as arrays is
:class:`~preassign.core.catalog.SnackCatalog`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each public name lives. The submodules are imported on first use, so importing
#: ``preassign.core.params`` (the command line does, to parse ``--set``) does not load
#: numba and the compiled rules.
_EXPORTS = {
    "SnackCatalog": "catalog", "build_catalog": "catalog",
    "TABLES": "contract", "USER_KEYED": "contract", "LakeError": "contract",
    "normalize_table": "contract",
    "combine_demand": "demand", "compute_shortage": "demand", "count_demand": "demand",
    "ENGINES": "engine", "Engine": "engine", "get_engine": "engine",
    "ParamError": "params", "Params": "params", "parse_overrides": "params",
    "PartitionStats": "partition", "prepare_partition": "partition",
    "STAGES": "rules", "jitter": "rules", "snack_prior": "rules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` (PEP 562) and return ``name``."""
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    """The public names (for completion)."""
    return __all__
