"""``preassign lake convert SRC DST``: any valid lake rewritten in the co-partitioned layout.

A lake written by another engine (one file per table, rows in any order, no manifest) is
read correctly, but every run must hash-shuffle it by user first, which costs time and
memory. Converting it once gives the layout of :mod:`preassign.lake`'s fast path: the
users' ids cut into ranges of ``users_per_partition`` users (the first range open to the
left, the last to the right, so every row lands somewhere), file ``i`` of every user table
holding exactly the rows of range ``i`` sorted by ``user_id``, and ``_lake.json`` with the
bounds.

On the cluster each table is range-partitioned with Dask's shuffle (``set_index`` with
those bounds as divisions: memory per task bounded by a partition, whatever the lake's size)
and each partition written by one task. The values are copied as read, in their canonical
types (64-bit ids, UTC timestamps): checking them stays the run's job. Everything is staged
next to ``DST`` and published at once, ``_lake.json`` last; ``DST`` must be new, empty, or a
converted lake written before (with ``overwrite``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .compute import compute, with_cluster
from .core.contract import USER_KEYED, LakeError, canonical_schema
from .lake import Lake, open_lake, read_raw_tables, read_table_files, write_manifest
from .storage import ManifestLake, open_location

__all__ = ["ConvertedLake", "convert_job", "convert_lake"]

#: Open ends of the first and last user-id range.
ID_MIN, ID_MAX = -(2**63), 2**63 - 1


class ConvertedLake(ManifestLake):
    """A lake written by ``preassign lake convert``."""

    source = "convert"
    flag = "DST"
    result = "converted lake"


def range_bounds(user_ids: np.ndarray, users_per_partition: int) -> list[int]:
    """Bounds of ranges holding ``users_per_partition`` distinct users each, ends open.

    Examples:
        >>> range_bounds(np.array([7, 3, 3, 10, 12]), 2) == [ID_MIN, 10, ID_MAX]
        True
    """
    ids = np.unique(np.asarray(user_ids, np.int64))
    inner = [int(i) for i in ids[users_per_partition::users_per_partition]]
    return [ID_MIN, *inner, ID_MAX]


def _write_partition(frame: pd.DataFrame, index: int, url: str, name: str,
                     storage_options: Mapping[str, Any]) -> int:
    target = open_location(url, storage_options)
    base = target.child(name)
    target.fs.makedirs(base, exist_ok=True)
    frame = frame.sort_index(kind="stable")
    schema = canonical_schema(name)
    table = pa.Table.from_pandas(frame[schema.names], preserve_index=False).cast(schema)
    with target.fs.open(f"{base}/part.{index:05d}.parquet", "wb") as f:
        pq.write_table(table, f, compression="zstd")
    return table.num_rows


def _write_small(lake: Lake, name: str, url: str, storage_options: Mapping[str, Any]) -> int:
    table = read_table_files(lake, name)
    target = open_location(url, storage_options)
    target.fs.makedirs(target.child(name), exist_ok=True)
    with target.fs.open(target.child(name, "part.00000.parquet"), "wb") as f:
        pq.write_table(table, f, compression="zstd")
    return table.num_rows


def convert_lake(src: str, dst: str, *, client: Any = None,
                 storage_options: Mapping[str, Any] | None = None,
                 users_per_partition: int = 50_000, overwrite: bool = False,
                 progress: bool = False) -> dict[str, Any]:
    """Rewrite the lake at ``src`` into the co-partitioned layout at ``dst``.

    Returns:
        ``partitions``, ``bounds`` and the rows written per table.

    Raises:
        LakeError: ``src`` is not a readable lake, or a ``users`` row has a null
            ``user_id`` (its range is unknown; the run refuses it too).
        UsageError: ``dst`` overlaps ``src`` or holds something that is not a converted lake.
    """
    from .lake import protected_locations

    opts = dict(storage_options or {})
    lake = open_lake(src, opts)
    target = ConvertedLake(dst, opts, overwrite=overwrite)
    target.check_target(protected_locations(src, opts))
    users = read_table_files(lake, "users")
    ids = users.column("user_id")
    if ids.null_count:
        raise LakeError(f"table 'users', column 'user_id': {ids.null_count} row(s) are null; "
                        "a lake with null user ids cannot be converted (the run refuses it too)")
    bounds = range_bounds(ids.to_numpy(zero_copy_only=False), users_per_partition)
    frames = read_raw_tables(lake)
    with target.writing():
        staging = target.staging_url()
        rows = {name: _write_small(lake, name, staging, opts)
                for name in ("snacks", "stock") if name == "snacks" or lake.has_table(name)}
        tasks = []
        for name in USER_KEYED:
            # a null user id (an invalid row, kept as it is) goes to the first range
            frame = frames[name]
            keyed = frame.assign(_key=frame["user_id"].fillna(ID_MIN).astype("int64"))
            ranged = keyed.set_index("_key", divisions=bounds, sorted=False)
            write = dask.delayed(_write_partition, pure=False)
            tasks += [write(part, i, staging, name, opts)
                      for i, part in enumerate(ranged.to_delayed())]
        written = compute(client, tasks, progress, label="convert")
        n = len(bounds) - 1
        for k, name in enumerate(USER_KEYED):
            rows[name] = int(sum(written[k * n:(k + 1) * n]))
        write_manifest(staging, bounds, opts, source={"convert": {"from": src}})
    return {"partitions": len(bounds) - 1, "bounds": bounds, "rows": rows}


def convert_job(src: str, dst: str, cluster: Any, **kwargs: Any) -> dict[str, Any]:
    """``preassign lake convert``: check the target, then :func:`convert_lake` on a cluster."""
    from .lake import protected_locations

    opts = kwargs.get("storage_options") or {}
    open_lake(src, opts)
    ConvertedLake(dst, opts, overwrite=kwargs.get("overwrite", False)).check_target(
        protected_locations(src, opts))
    return with_cluster(cluster, lambda client: convert_lake(src, dst, client=client, **kwargs))
