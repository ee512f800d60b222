"""The lake on storage: opening it, reading it into Dask, writing the co-partitioned layout.

Layout
------
A lake root is a local path or an fsspec URL. Each table is ``<root>/<table>/`` with
one or more Parquet files (hive-style ``key=value/`` directories allowed). Any such
lake is read correctly.

The *fast path* layout (written by ``preassign synth`` and ``preassign extract``)
adds ``<root>/_lake.json``::

    {"format": "preassign-lake", "version": 1, "partitions": N,
     "bounds": [b0, b1, ..., bN], "tables": [...], "written_at": "..."}

and stores every user-keyed table as ``<table>/part.00000.parquet`` ...
``part.{N-1}.parquet``, where file ``i`` holds exactly the users with
``b_i <= user_id < b_{i+1}``, sorted by ``user_id``. Partition ``i`` of every
table then holds the same users, so the run pairs them without a shuffle. The
ranges are recorded once, so nobody reads every footer on S3, and they are
re-checked on the rows as each partition is processed (a wrong manifest is an
error, never a wrong answer). Without a manifest, the tables are hash-shuffled on
``user_id`` into the same number of partitions.

A lake root may also hold ``_CURRENT``: the name of a version directory under the
root that readers should use (how ``extract`` publishes a new lake atomically).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .core.catalog import SnackCatalog, build_catalog
from .core.contract import (
    TABLES,
    USER_KEYED,
    InvalidValues,
    LakeError,
    canonical_schema,
    canonical_table,
    check_file_schema,
    dedupe_keyed,
    empty_table,
    normalize_table,
)
from .storage import (
    Location,
    OutputError,
    OutputExistsError,
    OutputLockedError,
    open_location,
)
from .storage import RunOutput as Output

__all__ = [
    "Lake",
    "LakeError",
    "PartitionFiles",
    "load_partition",
    "user_partitions",
    "OutputError",
    "OutputExistsError",
    "open_lake",
    "load_catalog",
    "read_small_table",
    "read_file",
    "read_raw_tables",
    "read_table_files",
    "write_user_partition",
    "write_small_table",
    "write_manifest",
    "ARROW_SCHEMAS",
    "Output",
    "OutputLockedError",
    "protected_locations",
]

log = logging.getLogger(__name__)

MANIFEST = "_lake.json"
POINTER = "_CURRENT"

#: The physical schema the fast-path writers use (compact types, SPEC §2).
ARROW_SCHEMAS: dict[str, pa.Schema] = {
    "snacks": pa.schema(
        [
            ("snack_id", pa.int32()),
            ("name", pa.string()),
            ("genre", pa.string()),
            ("ingredients", pa.list_(pa.string())),
            ("launched_on", pa.date32()),
            ("retired_on", pa.date32()),
        ]
    ),
    "users": pa.schema(
        [
            ("user_id", pa.int32()),
            ("status", pa.string()),
            ("next_delivery_on", pa.date32()),
            ("box_size", pa.int16()),
        ]
    ),
    "ratings": pa.schema(
        [
            ("user_id", pa.int32()),
            ("snack_id", pa.int32()),
            ("rating", pa.int8()),
            ("rated_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
    "deliveries": pa.schema(
        [("user_id", pa.int32()), ("snack_id", pa.int32()), ("delivered_on", pa.date32())]
    ),
    "ng_snacks": pa.schema([("user_id", pa.int32()), ("snack_id", pa.int32())]),
    "avoid_ingredients": pa.schema([("user_id", pa.int32()), ("ingredient", pa.string())]),
    "genre_prefs": pa.schema([("user_id", pa.int32()), ("genre", pa.string())]),
    "requests": pa.schema(
        [
            ("user_id", pa.int32()),
            ("snack_id", pa.int32()),
            ("requested_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
    "stock": pa.schema([("snack_id", pa.int32()), ("quantity", pa.int32())]),
}


def _join(*parts: str) -> str:
    return posixpath.join(*[p.rstrip("/") if i == 0 else p.strip("/") for i, p in enumerate(parts)])


class Lake:
    """An opened lake: its filesystem, resolved root and (optional) manifest."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.url = url
        self.location = open_location(url, storage_options, flag="--lake")
        self.storage_options = dict(self.location.storage_options)
        self.fs, root = self.location.fs, self.location.path
        if not self.fs.isdir(root):
            raise LakeError(f"lake {url!r} does not exist or is not a directory")
        pointer = _join(root, POINTER)
        if self.fs.isfile(pointer):
            version = self.fs.cat_file(pointer).decode().strip()
            if not version or "/" in version.strip("/") or ".." in version:
                raise LakeError(f"lake {url!r}: {POINTER} holds an invalid version {version!r}")
            root = _join(root, version)
            if not self.fs.isdir(root):
                raise LakeError(f"lake {url!r}: {POINTER} names {version!r}, which does not exist")
        self.root = root
        self.protocol = self.location.scheme
        self.manifest = self._read_manifest()

    def _read_manifest(self) -> dict[str, Any] | None:
        path = _join(self.root, MANIFEST)
        if not self.fs.isfile(path):
            return None
        try:
            manifest = json.loads(self.fs.cat_file(path))
            bounds = [int(b) for b in manifest["bounds"]]
            n = int(manifest["partitions"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LakeError(f"lake {self.url!r}: {MANIFEST} is not valid ({exc})") from exc
        if len(bounds) != n + 1 or any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
            raise LakeError(f"lake {self.url!r}: {MANIFEST} bounds are not {n + 1} increasing ids")
        manifest["bounds"] = bounds
        return manifest

    def full_path(self, path: str) -> str:
        """A path of this filesystem as a URL Dask can open."""
        return self.location.url_of(path)

    def table_dir(self, name: str) -> str:
        """Directory of a table under the root."""
        return _join(self.root, name)

    def has_table(self, name: str) -> bool:
        """Whether the table's directory exists (an empty directory is an empty table)."""
        return self.fs.isdir(self.table_dir(name))

    def _entries(self, name: str) -> dict[str, dict[str, Any]]:
        """The table's data files with their listing details (one recursive listing).

        Names starting with ``_`` or ``.`` are skipped.
        """
        base = self.table_dir(name)
        if not self.fs.isdir(base):
            return {}
        out = {}
        for path, info in self.fs.find(base, detail=True).items():
            rel = path[len(base.rstrip("/")) + 1 :]
            if not any(part.startswith(("_", ".")) for part in rel.split("/")):
                out[path] = info
        return out

    def files(self, name: str) -> list[str]:
        """The table's data files, recursively, skipping ``_``/``.`` names, sorted."""
        return sorted(self._entries(name))

    def fingerprint(self) -> dict[str, str]:
        """Per table, a hash of its files' names, sizes and versions (ETag or mtime).

        Recorded in ``summary.json`` so that a re-run on the same inputs is recognisable.
        """
        out = {}
        for name in TABLES:
            digest = hashlib.sha256()
            base = self.table_dir(name)
            entries = self._entries(name)  # sizes and versions come with the listing
            for path in sorted(entries):
                info = entries[path]
                version = info.get("ETag") or info.get("etag") or info.get("mtime") or \
                    info.get("LastModified") or ""
                digest.update(f"{path[len(base):]}|{info.get('size')}|{version}\n".encode())
            out[name] = digest.hexdigest()[:16]
        return out

    def fast_path_files(self) -> dict[str, list[str]] | None:
        """Per user-keyed table, the manifest's part files, if the lake follows it."""
        if self.manifest is None:
            return None
        n = int(self.manifest["partitions"])
        expected = [f"part.{i:05d}.parquet" for i in range(n)]
        out = {}
        for name in USER_KEYED:
            files = self.files(name)
            names = [posixpath.basename(f) for f in files]
            if names != expected:
                log.warning(
                    "lake %s: table %s does not follow %s (%d files, expected %d); "
                    "shuffling instead", self.url, name, MANIFEST, len(files), n,
                )
                return None
            out[name] = files
        return out


def open_lake(url: str, storage_options: Mapping[str, Any] | None = None) -> Lake:
    """Open a lake and check the tables SPEC §2 requires are there.

    Raises:
        LakeError: the root or a required table directory does not exist.
    """
    lake = Lake(url, storage_options)
    missing = [n for n, t in TABLES.items() if not t.optional and not lake.has_table(n)]
    if missing:
        raise LakeError(
            f"lake {url!r} is missing required table(s) {', '.join(missing)} "
            f"(expected a directory <lake>/<table>/ for each of {', '.join(TABLES)})"
        )
    return lake


def protected_locations(url: str, storage_options: Mapping[str, Any] | None = None
                        ) -> list[tuple[str, Location]]:
    """The lake at ``url`` and its table directories, as locations a writer must not touch.

    Table directories are listed too because locally they may be symbolic links to
    elsewhere; a lake that does not exist yet is protected by its path alone.
    """
    root = open_location(url, storage_options, flag="--lake")
    out = [("the lake", root)]
    if root.local and os.path.isdir(root.path):
        for name in TABLES:
            table = os.path.join(url, name)
            if os.path.isdir(table):
                loc = open_location(table, storage_options)
                if not root.contains(loc):
                    out.append((f"table {name!r} of the lake", loc))
    return out


def read_file(fs: Any, path: str, name: str, where: str,
              reference: pa.Schema | None = None,
              row_groups: Sequence[int] | None = None) -> pa.Table:
    """One Parquet file of table ``name``: its required columns, cast to the canonical types.

    Args:
        fs: the lake's filesystem.
        path: the file's path on ``fs``.
        name: the table of SPEC §2.
        where: the file as the user knows it (a URL), for messages.
        reference: another file's schema of the table, named in a type error.
        row_groups: read only these row groups (None: the whole file).

    Raises:
        LakeError: the file is not readable Parquet (empty, truncated, garbage), lacks a
            required column, or stores one as a type that cannot hold its values.
    """
    wanted = list(TABLES[name].columns)
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            have = set(pf.schema_arrow.names)
            columns = [c for c in wanted if c in have]
            table = pf.read(columns=columns) if row_groups is None else \
                pf.read_row_groups(list(row_groups), columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise LakeError(f"cannot read Parquet file {where!r} of table {name!r}: {exc}") from exc
    return canonical_table(name, table, where, reference)


def _file_schema(lake: Lake, path: str, name: str) -> pa.Schema:
    return _file_metadata(lake, path, name).schema.to_arrow_schema()


def _file_metadata(lake: Lake, path: str, name: str) -> pq.FileMetaData:
    try:
        with lake.fs.open(path, "rb") as f:
            return pq.read_metadata(f)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise LakeError(f"cannot read Parquet file {lake.full_path(path)!r} of table "
                        f"{name!r}: {exc}") from exc


def read_table_files(lake: Lake, name: str, files: list[str] | None = None) -> pa.Table:
    """Files of table ``name`` (default: all), read and concatenated in canonical types."""
    files = lake.files(name) if files is None else files
    if not files:
        return canonical_schema(name).empty_table()
    reference = _file_schema(lake, files[0], name)
    return pa.concat_tables([read_file(lake.fs, f, name, lake.full_path(f), reference)
                             for f in files])


def read_small_table(lake: Lake, name: str) -> list[pd.DataFrame]:
    """Read a snack-keyed table file by file, in canonical types (normalise each one)."""
    files = lake.files(name)
    reference = _file_schema(lake, files[0], name) if files else None
    return [read_file(lake.fs, f, name, lake.full_path(f), reference)
            .to_pandas(types_mapper=pd.ArrowDtype) for f in files]


def _concat_normalized(name: str, parts: list[pd.DataFrame], on_invalid: str,
                       rejected: dict[str, list[pd.DataFrame]] | None = None
                       ) -> tuple[pd.DataFrame, int, list[InvalidValues]]:
    frames, problems, rows = [], [], 0
    for raw in parts:
        rows += len(raw)
        dropped: dict[str, pd.DataFrame] = {}
        norm, found, _ = normalize_table(name, raw, on_invalid=on_invalid, rejected=dropped)
        frames.append(norm)
        problems.extend(found)
        if rejected is not None and name in dropped:
            rejected.setdefault(name, []).append(dropped[name])
    if not frames:
        frames = [normalize_table(name, empty_table(name))[0]]
    return pd.concat(frames, ignore_index=True), rows, problems


def load_catalog(
    lake: Lake, on_invalid: str = "raise", rejected: dict[str, list[pd.DataFrame]] | None = None
) -> tuple[SnackCatalog, pd.DataFrame | None, dict[str, int], list[InvalidValues]]:
    """Read, check and de-duplicate ``snacks`` and (optional) ``stock``.

    Returns:
        ``(catalog, stock, input_rows, problems)``; ``stock`` is ``None`` when the
        lake has no ``stock`` table, else the rows of known snacks. With
        ``on_invalid="drop"``, ``rejected`` (if given) receives the dropped rows.
    """
    snacks, n_snacks, problems = _concat_normalized(
        "snacks", read_small_table(lake, "snacks"), on_invalid, rejected)
    catalog = build_catalog(dedupe_keyed("snacks", snacks, "snack_id"))
    rows = {"snacks": n_snacks}
    stock = None
    if lake.has_table("stock"):
        raw, n_stock, found = _concat_normalized("stock", read_small_table(lake, "stock"),
                                                 on_invalid, rejected)
        problems += found
        rows["stock"] = n_stock
        stock = dedupe_keyed("stock", raw, "snack_id")
        stock = stock[np.isin(stock["snack_id"].to_numpy(np.int64), catalog.snack_id)]
    return catalog, stock, rows, problems


#: A file larger than this is read as several pieces of whole row groups (a lake written by
#: another engine may hold a table in one file: its pieces bound a task's memory).
PIECE_ROWS = 2_000_000


@dataclasses.dataclass(frozen=True)
class _Piece:
    """Some row groups of one file (all of them: ``row_groups`` None)."""

    path: str
    where: str
    row_groups: tuple[int, ...] | None


def _read_piece(piece: _Piece, *, fs: Any, name: str,
                reference: pa.Schema | None) -> pd.DataFrame:
    return read_file(fs, piece.path, name, piece.where, reference,
                     piece.row_groups).to_pandas(types_mapper=pd.ArrowDtype)


def _raw_meta(name: str) -> pd.DataFrame:
    return canonical_schema(name).empty_table().to_pandas(types_mapper=pd.ArrowDtype)


def _pieces(lake: Lake, path: str, metadata: pq.FileMetaData) -> list[_Piece]:
    """The file as pieces of consecutive row groups of about :data:`PIECE_ROWS` rows each."""
    where = lake.full_path(path)
    if metadata.num_rows <= PIECE_ROWS or metadata.num_row_groups <= 1:
        return [_Piece(path, where, None)]
    pieces, group, rows = [], [], 0
    for i in range(metadata.num_row_groups):
        group.append(i)
        rows += metadata.row_group(i).num_rows
        if rows >= PIECE_ROWS:
            pieces.append(_Piece(path, where, tuple(group)))
            group, rows = [], 0
    if group:
        pieces.append(_Piece(path, where, tuple(group)))
    return pieces


def _shuffle_key(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``_part``: the user id (canonical int64; null -> -1), the same in every table."""
    key = df["user_id"].to_numpy(dtype=np.int64, na_value=-1)
    return df.assign(_part=key)


def read_raw_tables(lake: Lake) -> dict[str, dd.DataFrame]:
    """The user-keyed tables as they are stored, in canonical types.

    One partition per file, or per :data:`PIECE_ROWS` rows of whole row groups of a larger
    file (a task's memory is bounded by a piece, not by a table written as one file).

    Every file's footer is read first: a missing column, a wrong type or an unreadable file
    is found here, before anything shuffles the tables (a task failing mid-shuffle leaves
    Dask's shuffle machinery logging errors of its own).
    """
    frames = {}
    for name in USER_KEYED:
        paths = lake.files(name)
        metadata = [_file_metadata(lake, path, name) for path in paths]
        schemas = [m.schema.to_arrow_schema() for m in metadata]
        for path, schema in zip(paths, schemas, strict=True):
            check_file_schema(name, schema, lake.full_path(path), schemas[0])
        pieces = [piece for path, m in zip(paths, metadata, strict=True)
                  for piece in _pieces(lake, path, m)]
        if not pieces:
            frames[name] = dd.from_pandas(_raw_meta(name), npartitions=1)
            continue
        frames[name] = dd.from_map(_read_piece, pieces, fs=lake.fs, name=name,
                                   reference=schemas[0], meta=_raw_meta(name),
                                   label=f"read-{name}", enforce_metadata=True)
    return frames


def _shuffled_tables(lake: Lake, users_per_partition: int) -> dict[str, dd.DataFrame]:
    """Every user-keyed table hash-shuffled on ``user_id`` into the same partitions."""
    raw = read_raw_tables(lake)
    n_users = 0
    for path in lake.files("users"):
        try:
            with lake.fs.open(path, "rb") as f:
                n_users += pq.read_metadata(f).num_rows
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise LakeError(f"cannot read Parquet file {lake.full_path(path)!r} of table "
                            f"'users': {exc}") from exc
    npartitions = max(1, math.ceil(n_users / users_per_partition))
    frames = {}
    for name, frame in raw.items():
        keyed = frame.map_partitions(_shuffle_key)
        frames[name] = keyed.shuffle("_part", npartitions=npartitions).drop(columns="_part")
    return frames


@dataclasses.dataclass(frozen=True)
class PartitionFiles:
    """Partition ``index`` of a co-partitioned lake: its file of every user-keyed table.

    The task that builds the partition's state reads the files itself
    (:func:`load_partition`), so a partition's rows are decoded once, where they are used,
    and never travel between workers.

    Attributes:
        index: the partition's number.
        bounds: its recorded user range ``[lo, hi)`` (from ``_lake.json``).
        fs: the lake's filesystem (pickled to the workers).
        paths: per table, the file's path on ``fs``.
        where: per table, the file as the user knows it (a URL), for messages.
        references: per table, the first file's schema, named in a type error.
    """

    index: int
    bounds: tuple[int, int]
    fs: Any
    paths: Mapping[str, str]
    where: Mapping[str, str]
    references: Mapping[str, pa.Schema]

    def read(self) -> dict[str, pd.DataFrame]:
        """The partition's rows of every user-keyed table, in canonical types."""
        return {name: read_file(self.fs, self.paths[name], name, self.where[name],
                                self.references.get(name)).to_pandas(types_mapper=pd.ArrowDtype)
                for name in USER_KEYED}


def user_partitions(lake: Lake, *, users_per_partition: int = 50_000
                    ) -> tuple[list[Any], str]:
    """The lake's partitions of users, each holding every user-keyed row of its users.

    Returns:
        ``(partitions, layout)``. A co-partitioned lake (``_lake.json`` and its part files)
        gives one :class:`PartitionFiles` per partition (``layout = "co-partitioned"``);
        any other lake is shuffled on ``user_id`` (``"shuffled"``) and each partition is a
        dict of table name to a ``dask.delayed`` partition of the shuffled frames. Either
        is what :func:`load_partition` turns into frames, inside a task.
    """
    fast = lake.fast_path_files()
    if fast is not None and lake.manifest is not None:
        bounds = lake.manifest["bounds"]
        references = {name: _file_schema(lake, files[0], name)
                      for name, files in fast.items() if files}
        n = len(fast["users"])
        return [PartitionFiles(
            index=i, bounds=(int(bounds[i]), int(bounds[i + 1])), fs=lake.fs,
            paths={name: fast[name][i] for name in USER_KEYED},
            where={name: lake.full_path(fast[name][i]) for name in USER_KEYED},
            references=references) for i in range(n)], "co-partitioned"
    frames = _shuffled_tables(lake, users_per_partition)
    parts = {name: frame.to_delayed() for name, frame in frames.items()}
    n = len(parts["users"])
    return [{name: parts[name][i] for name in USER_KEYED} for i in range(n)], "shuffled"


def load_partition(part: PartitionFiles | Mapping[str, pd.DataFrame]
                   ) -> tuple[dict[str, pd.DataFrame], tuple[int, int] | None]:
    """A partition's raw frames and recorded user range (None when shuffled), in a task."""
    if isinstance(part, PartitionFiles):
        return part.read(), part.bounds
    return dict(part), None


# --------------------------------------------------------------------------------------------
# writing the fast-path layout


def _to_arrow(name: str, frame: pd.DataFrame) -> pa.Table:
    schema = ARROW_SCHEMAS[name]
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def write_user_partition(
    url: str,
    index: int,
    tables: Mapping[str, pd.DataFrame],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Write partition ``index`` of every user-keyed table (rows sorted by ``user_id``).

    Returns:
        Rows written per table.
    """
    target = open_location(url, storage_options)
    fs, root = target.fs, target.path
    rows = {}
    for name in USER_KEYED:
        frame = tables[name].sort_values("user_id", kind="stable")
        path = _join(root, name, f"part.{index:05d}.parquet")
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as f:
            pq.write_table(_to_arrow(name, frame), f, compression="zstd")
        rows[name] = len(frame)
    return rows


def write_small_table(
    url: str, name: str, frame: pd.DataFrame, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write a snack-keyed table whole, as ``<table>/part.00000.parquet``."""
    target = open_location(url, storage_options)
    fs, root = target.fs, target.path
    path = _join(root, name, "part.00000.parquet")
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(_to_arrow(name, frame), f, compression="zstd")


def write_manifest(
    url: str,
    bounds: list[int],
    storage_options: Mapping[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Write ``_lake.json`` (last: a lake with a manifest is complete)."""
    target = open_location(url, storage_options)
    fs, root = target.fs, target.path
    manifest = {
        "format": "preassign-lake",
        "version": 1,
        "partitions": len(bounds) - 1,
        "bounds": [int(b) for b in bounds],
        "tables": list(USER_KEYED),
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    with fs.open(_join(root, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
