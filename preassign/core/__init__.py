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

from .catalog import SnackCatalog, build_catalog
from .contract import TABLES, USER_KEYED, LakeError, normalize_table
from .demand import combine_demand, compute_shortage, count_demand
from .engine import ENGINES, Engine, get_engine
from .params import ParamError, Params, parse_overrides
from .partition import PartitionStats, prepare_partition
from .rules import STAGES, jitter, snack_prior

__all__ = [
    "ENGINES",
    "STAGES",
    "TABLES",
    "USER_KEYED",
    "Engine",
    "LakeError",
    "ParamError",
    "Params",
    "PartitionStats",
    "SnackCatalog",
    "build_catalog",
    "combine_demand",
    "compute_shortage",
    "count_demand",
    "get_engine",
    "jitter",
    "normalize_table",
    "parse_overrides",
    "prepare_partition",
    "snack_prior",
]
