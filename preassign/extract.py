"""Extract: a SQLAlchemy source database -> a versioned, co-partitioned Parquet lake.

Design
------
**Ranges.** The users table's id range ``[min, max]`` is cut into equal-width ranges
of ``users_per_partition`` ids (one ``MIN``/``MAX``/``COUNT`` query; a range never
holds more than that many users, so memory per task is bounded whatever the table
size; gaps in the ids only make some partitions smaller). When the ids are so sparse
that this would make over twice the partitions the user count needs, the bounds are
every ``users_per_partition``-th id instead (one streamed scan of the key). The first range starts
at ``-2**63`` and the last ends at ``2**63 - 1``, so every user-keyed row lands in
exactly one partition, including orphans whose ``user_id`` lies outside the users
table's range (the run counts them) and rows with a null ``user_id`` (first
partition; the run reports them as invalid).

**Reading.** One Dask task per range reads, per user-keyed table, ``SELECT <columns>
FROM t WHERE user_id >= lo AND user_id < hi ORDER BY user_id[, row_id]`` (SQLAlchemy
Core; the bounds are integers) with one of two readers (:mod:`preassign.fastread`
says which serves which URL; ``reader=`` or ``$PREASSIGN_EXTRACT_READER`` forces one):

* **fast**: ConnectorX runs the query (its text compiled with the integer bounds
  inlined) on a connection of its own and hands back Arrow arrays, cast to the lake's
  compact types (:data:`preassign.lake.ARROW_SCHEMAS`) in a few vectorised casts;
* **stream**: SQLAlchemy with the bounds as bound parameters, on one connection per
  task, streamed with a server-side cursor in chunks converted to Arrow as they arrive
  (the fallback: TLS URLs, URLs with driver options ConnectorX lacks, and any result
  ConnectorX cannot convert).

Values are copied faithfully either way (validation is the run's job), and both give
the same tables. The task then writes partition ``i`` of every table straight from
Arrow with :func:`write_user_partition` (Parquet, zstd; no pandas round trip).
Snack-keyed tables are read whole on the client, with SQLAlchemy.

**Consistent cut of append-only tables.** Before any range is read, ``MAX(row_id)``
of ``ratings``, ``deliveries`` and ``requests`` is taken; every range reads only rows
``row_id <= watermark``. Rows appended while the extraction runs wait for the next
one, and the watermarks are recorded in the version's ``_lake.json``.

**Incremental refresh.** With ``incremental=True`` the previous version's bounds are
kept; each task reads its partition's previous file of each append-only table,
adds the rows ``old watermark < row_id <= new watermark`` of its range and writes the
merged, re-sorted file (new rows have larger ``row_id``, so the merged order is the
one a full extraction gives); every other table is re-read whole.

**Publishing.** Everything is written under ``<lake>/v-<UTC time>-<id>/`` (manifest
last), then ``<lake>/_CURRENT`` is replaced by that version's name
(:class:`preassign.lake.Lake` resolves it): an atomic rename on a local disk, one
PUT on S3. Readers see the old version or the new one, never a mix. The previous
version is kept (a run that opened it keeps working); older ones are deleted. A
failed extraction removes its own version (best effort: a range task still running
may finish writing after that); a killed one leaves a directory no pointer names.
Such unfinished versions (no ``_lake.json``) are deleted by the next successful
extraction. A lock next to the lake root (as for run outputs) keeps two extractions from
writing into one lake at the same time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import posixpath
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import URL

from .compute import compute
from .core.contract import TABLES, USER_KEYED, LakeError
from .dbsecurity import SecretURL
from .fastread import (
    FastReadUnsupported,
    choose_reader,
    is_sorted_by_user,
    misfit_error,
)
from .fastread import read_table as fast_read_table
from .lake import ARROW_SCHEMAS, MANIFEST, POINTER, Lake, write_manifest
from .logs import log_event
from .source import (
    APPEND_ONLY,
    WATERMARK_COLUMN,
    SourceConnectionError,
    SourceSchemaError,
    create_engine_from_url,
    mask_url,
    parse_source_url,
    source_table,
    translate_error,
)
from .storage import VersionedLake, open_location

__all__ = [
    "ID_MAX",
    "ID_MIN",
    "check_lake_target",
    "extract_job",
    "has_extraction",
    "extract_lake",
    "partition_bounds",
    "write_small_table",
    "write_user_partition",
]

log = logging.getLogger(__name__)

#: Open ends of the first and last user-id range.
ID_MIN = -(2**63)
ID_MAX = 2**63 - 1
#: Rows fetched from the driver per chunk (converted to Arrow chunk by chunk).
FETCH_ROWS = 50_000


def partition_bounds(min_id: int | None, max_id: int | None, users_per_partition: int) -> list[int]:
    """Equal-width user-id ranges with open ends.

    Partition ``i`` holds ``bounds[i] <= user_id < bounds[i+1]``; the inner bounds
    are ``min_id + k * users_per_partition``.

    Examples:
        >>> partition_bounds(1, 250, 100) == [ID_MIN, 101, 201, ID_MAX]
        True
        >>> partition_bounds(None, None, 100) == [ID_MIN, ID_MAX]
        True
    """
    if users_per_partition < 1:
        raise ValueError(f"users_per_partition must be >= 1, got {users_per_partition}")
    if min_id is None or max_id is None:
        return [ID_MIN, ID_MAX]
    n = max(1, math.ceil((int(max_id) - int(min_id) + 1) / users_per_partition))
    inner = [int(min_id) + k * users_per_partition for k in range(1, n)]
    return [ID_MIN, *inner, ID_MAX]


def _choose_bounds(conn: sa.Connection, users_per_partition: int) -> tuple[list[int], str]:
    """Equal-width ranges when the ids are dense enough, else every P-th id (quantiles).

    Equal width costs one ``MIN``/``MAX``/``COUNT`` query. When the ids are sparse (the
    width would give over twice the partitions the user count needs), one streamed
    scan of the ``users`` key picks every ``users_per_partition``-th id instead, so
    partitions hold ``users_per_partition`` users whatever the id distribution.

    Returns:
        ``(bounds, "equal-width" | "quantile")``.
    """
    users = source_table("users")
    uid = users.c.user_id
    lo, hi, count = conn.execute(sa.select(sa.func.min(uid), sa.func.max(uid),
                                           sa.func.count(uid))).one()
    needed = max(1, math.ceil(int(count or 0) / users_per_partition))
    if lo is None or math.ceil((int(hi) - int(lo) + 1) / users_per_partition) <= 2 * needed:
        return partition_bounds(lo, hi, users_per_partition), "equal-width"
    inner: list[int] = []
    result = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(
        sa.select(uid).where(uid.is_not(None)).distinct().order_by(uid))
    position = 0
    for rows in result.partitions():
        for (user_id,) in rows:
            if position and position % users_per_partition == 0:
                inner.append(int(user_id))
            position += 1
    return [ID_MIN, *inner, ID_MAX], "quantile"


# --------------------------------------------------------------------------------------------
# reading the source


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything a partition task needs (picklable; the URL's repr hides the password).

    ``source`` is the URL itself, or a :class:`~preassign.dbsecurity.SecretURL` when the
    password has a source of its own (an environment variable set on every process, a
    Secrets Manager secret): then the task graph holds no password at all and each task
    resolves it where it runs.
    """

    source: URL | SecretURL
    version_url: str
    previous_url: str | None
    storage_options: Mapping[str, Any]
    bounds: tuple[int, ...]
    watermarked: frozenset[str]  # tables read with row_id <= watermark_to
    watermark_from: Mapping[str, int | None]  # incremental tables -> previous watermark
    watermark_to: Mapping[str, int | None]
    reader: str = "stream"  # "fast" (ConnectorX) or "stream" (SQLAlchemy), see fastread


@contextlib.contextmanager
def _connect(engine: sa.Engine, url: URL, doing: str) -> Iterator[sa.Connection]:
    try:
        with engine.connect() as conn:
            yield conn
    except sa.exc.DBAPIError as exc:
        raise translate_error(exc, url, doing) from exc


def _check_sqlite_file(url: URL) -> None:
    """SQLite would silently create a missing file: refuse instead."""
    if url.get_backend_name() != "sqlite":
        return
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        raise SourceConnectionError(
            "an in-memory SQLite database cannot be a source (every connection would see "
            "its own empty database); use sqlite:///path/to/file.db"
        )
    if not database.startswith("file:") and not os.path.isfile(database):
        raise SourceConnectionError(
            f"the SQLite source database file {database!r} does not exist; check the path in "
            f"{mask_url(url)} (sqlite:///relative.db or sqlite:////absolute/path.db)"
        )


def _check_source(conn: sa.Connection, url: URL) -> tuple[set[str], set[str]]:
    """Check every required table and column is there.

    Returns:
        ``(tables present, append-only tables that have the watermark column)``.
    """
    inspector = sa.inspect(conn)
    present = set(inspector.get_table_names()) | set(inspector.get_view_names())
    problems, watermarked, found = [], set(), set()
    for name, spec in TABLES.items():
        if name not in present:
            if not spec.optional:
                problems.append(f"table {name!r} is missing")
            continue
        found.add(name)
        have = {c["name"] for c in inspector.get_columns(name)}
        missing = [c for c in spec.columns if c not in have]
        if missing:
            problems.append(
                f"table {name!r} is missing column(s) {', '.join(missing)} "
                f"(columns present: {', '.join(sorted(have))})"
            )
        if name in APPEND_ONLY and WATERMARK_COLUMN in have:
            watermarked.add(name)
    if problems:
        raise SourceSchemaError(
            f"the source database {mask_url(url)} does not have the tables SPEC §2 needs: "
            + "; ".join(problems)
            + ". Create them with preassign/sql/schema_mysql.sql, or create views of those "
            "names over your schema"
        )
    return found, watermarked


def _columns(name: str) -> list[str]:
    return list(ARROW_SCHEMAS[name].names)


def _to_arrow(name: str, rows: list[Any]) -> pa.Table:
    schema = ARROW_SCHEMAS[name]
    columns = list(zip(*rows, strict=False)) if rows else [() for _ in schema.names]
    arrays = []
    for field, values in zip(schema, columns, strict=True):
        try:
            try:
                arrays.append(pa.array(list(values), type=field.type))
            except pa.ArrowTypeError:
                if not pa.types.is_timestamp(field.type):
                    raise
                # a DATE column where a timestamp is expected: midnight UTC (SPEC §2 allows it)
                arrays.append(pa.array([_midnight(v) for v in values], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            example = next((v for v in values if not _fits(v, field.type)), None)
            raise misfit_error(name, field, example, exc) from None
    return pa.Table.from_arrays(arrays, schema=schema)


def _fits(value: Any, type_: pa.DataType) -> bool:
    try:
        pa.array([_midnight(value)], type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return False
    return True


def _midnight(value: Any) -> Any:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time())
    return value


def _fetch(conn: sa.Connection, name: str, stmt: sa.Select) -> pa.Table:
    """Run one query and build an Arrow table chunk by chunk (server-side cursor)."""
    result = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(stmt)
    chunks = [_to_arrow(name, list(rows)) for rows in result.partitions()]
    if not chunks:
        return ARROW_SCHEMAS[name].empty_table()
    return pa.concat_tables(chunks) if len(chunks) > 1 else chunks[0]


def _select_whole(name: str) -> sa.Select:
    table = source_table(name)
    return sa.select(*[table.c[c] for c in _columns(name)]).order_by(table.c.snack_id)


def _select_range(
    plan: _Plan, name: str, lo: int, hi: int, *, since: int | None = None
) -> sa.Select | None:
    """``SELECT ... WHERE user_id in [lo, hi) [AND row_id in (since, watermark]] ORDER BY``.

    Returns ``None`` when nothing can match (an append-only table empty at the cut).
    """
    table = source_table(name)
    uid = table.c.user_id
    cond: list[sa.ColumnElement[bool]] = []
    if lo == ID_MIN and hi == ID_MAX:
        pass  # one partition: every row, null user ids included
    elif lo == ID_MIN:
        cond.append(sa.or_(uid < hi, uid.is_(None)))
    elif hi == ID_MAX:
        cond.append(uid >= lo)
    else:
        cond.append(sa.and_(uid >= lo, uid < hi))
    order = [uid]
    if name in plan.watermarked:
        row_id = table.c[WATERMARK_COLUMN]
        upper = plan.watermark_to.get(name)
        if upper is None:
            return None
        # ``row_id + 0``: the cut must not be an index range. As ``row_id <= W`` (nearly
        # every row) it is the primary key's, and MySQL/MariaDB then prefer a scan of the
        # whole table plus a sort over the user_id index, in every range task: 20 ranges,
        # 20 full scans. An incremental refresh's ``row_id > since`` stays a range (few rows).
        cond.append(row_id + 0 <= upper)
        if since is not None:
            cond.append(row_id > since)
        order.append(row_id)
    else:
        order += [table.c[c] for c in _columns(name) if c != "user_id"]
    return sa.select(*[table.c[c] for c in _columns(name)]).where(*cond).order_by(*order)


def _read_previous(plan: _Plan, name: str, index: int) -> pa.Table:
    assert plan.previous_url is not None
    previous = open_location(plan.previous_url, plan.storage_options)
    fs, path = previous.fs, previous.child(name, f"part.{index:05d}.parquet")
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (OSError, pa.ArrowInvalid) as exc:
        raise LakeError(
            f"incremental extraction: cannot read the previous version's {name!r} partition "
            f"{index} ({exc}); run a full extraction"
        ) from exc
    schema = ARROW_SCHEMAS[name]
    return table.select(schema.names).cast(schema)


class _Stream:
    """The streaming reader of one range task: one connection, opened when first needed."""

    def __init__(self, url: URL, index: int):
        self.url, self.index = url, index
        self._engine: sa.Engine | None = None
        self._conn: sa.Connection | None = None

    def fetch(self, name: str, stmt: sa.Select, doing: str) -> pa.Table:
        if self._conn is None:
            self._engine = create_engine_from_url(self.url)
            try:
                self._conn = self._engine.connect()
            except sa.exc.DBAPIError as exc:
                raise translate_error(exc, self.url, f"reading partition {self.index}") from exc
        try:
            return _fetch(self._conn, name, stmt)
        except sa.exc.DBAPIError as exc:
            raise translate_error(exc, self.url, doing) from exc

    def close(self) -> None:
        try:
            if self._conn is not None:
                with contextlib.suppress(sa.exc.DBAPIError):  # a connection already lost
                    self._conn.close()
        finally:
            if self._engine is not None:
                self._engine.dispose()


def _source_url(source: URL | SecretURL) -> URL:
    """The URL to connect with: a :class:`SecretURL` is resolved here (on the worker)."""
    return source.resolve() if isinstance(source, SecretURL) else source


def _masked(source: str | URL | SecretURL) -> str:
    return source.masked() if isinstance(source, SecretURL) else mask_url(source)


def _read_range(plan: _Plan, url: URL, stream: _Stream, name: str, stmt: sa.Select,
                doing: str) -> pa.Table:
    """One table's rows of one range, with the plan's reader (fast falls back to stream)."""
    if plan.reader == "fast":
        try:
            return fast_read_table(url, name, stmt, doing)
        except FastReadUnsupported as exc:
            log_event(log, logging.WARNING, "fast_read_fallback", doing=doing, reason=str(exc),
                      hint="ConnectorX could not convert the rows; reading them with the "
                           "streaming reader")
    return stream.fetch(name, stmt, doing)


def _extract_partition(plan: _Plan, index: int) -> tuple[dict[str, int], dict[str, int]]:
    """Read range ``index`` of every user-keyed table and write its partition files.

    Returns:
        ``(rows written, rows newly read)`` per table.
    """
    lo, hi = plan.bounds[index], plan.bounds[index + 1]
    tables: dict[str, pa.Table] = {}
    added: dict[str, int] = {}
    url = _source_url(plan.source)
    stream = _Stream(url, index)
    try:
        for name in USER_KEYED:
            stmt = _select_range(plan, name, lo, hi, since=plan.watermark_from.get(name))
            doing = f"reading table {name!r}, user ids [{lo}, {hi})"
            new = _read_range(plan, url, stream, name, stmt, doing) if stmt is not None else \
                ARROW_SCHEMAS[name].empty_table()
            added[name] = new.num_rows
            if name in plan.watermark_from:
                new = pa.concat_tables([_read_previous(plan, name, index), new])
            tables[name] = new
    finally:
        stream.close()
    return write_user_partition(plan.version_url, index, tables, plan.storage_options), added


# --------------------------------------------------------------------------------------------
# writing Parquet straight from Arrow


def _write(url: str, name: str, filename: str, table: pa.Table,
           storage_options: Mapping[str, Any] | None) -> None:
    target = open_location(url, storage_options)
    path = target.child(name, filename)
    target.fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with target.fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd")


def write_user_partition(
    url: str,
    index: int,
    tables: Mapping[str, pa.Table],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Write partition ``index`` of every user-keyed table from Arrow (sorted by ``user_id``).

    The tables are in the lake's types (:data:`preassign.lake.ARROW_SCHEMAS`); rows are
    sorted by ``user_id`` (stable, nulls last) unless they already are, and written as
    ``<url>/<table>/part.<index>.parquet``, the layout of
    :func:`preassign.lake.write_user_partition`.

    Returns:
        Rows written per table.
    """
    rows = {}
    for name in USER_KEYED:
        table = tables[name]
        if not is_sorted_by_user(table):
            table = table.sort_by([("user_id", "ascending")])  # a stable sort
        _write(url, name, f"part.{index:05d}.parquet", table, storage_options)
        rows[name] = table.num_rows
    return rows


def write_small_table(url: str, name: str, table: pa.Table,
                      storage_options: Mapping[str, Any] | None = None) -> None:
    """Write a snack-keyed table whole from Arrow, as ``<table>/part.00000.parquet``."""
    _write(url, name, "part.00000.parquet", table, storage_options)


# --------------------------------------------------------------------------------------------
# the versioned lake


def _previous_manifest(store: VersionedLake, previous: str | None) -> dict[str, Any]:
    if previous is None:
        raise LakeError(
            f"lake {store.url!r} has no previous extraction to refresh ({POINTER} is missing); "
            "run a full extraction first (without --incremental)"
        )
    lake = Lake(store.url, store.storage_options)
    manifest = lake.manifest
    if manifest is None or "watermarks" not in manifest:
        raise LakeError(
            f"lake {store.url!r}: version {previous!r} was not written by an extraction "
            f"(its {MANIFEST} has no watermarks); run a full extraction"
        )
    if lake.fast_path_files() is None:
        raise LakeError(
            f"lake {store.url!r}: version {previous!r} does not hold one file per partition "
            "and table; run a full extraction"
        )
    return manifest


def check_lake_target(lake_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse a ``--lake`` an extraction must not write to.

    See :meth:`preassign.storage.VersionedLake.check_target`.

    Raises:
        UsageError: the location is a file, lies inside another lake, or holds something
            an extraction did not write.
    """
    VersionedLake(lake_url, storage_options).check_target()


def extract_job(source_url: str | URL | SecretURL, lake_url: str, cluster: Any, *,
                users_per_partition: int = 50_000, incremental: bool = False,
                storage_options: Mapping[str, Any] | None = None,
                progress: bool = False, reader: str = "auto") -> dict[str, Any]:
    """``preassign extract``: check the lake location, then :func:`extract_lake` on a cluster.

    ``cluster`` is a :class:`preassign.cluster.ClusterSpec`, started and closed here;
    ``reader`` is :func:`extract_lake`'s.
    """
    from .compute import with_cluster

    check_lake_target(lake_url, storage_options)
    log_event(log, logging.INFO, "extract_start", source=_masked(source_url), lake=lake_url,
              incremental=incremental)
    summary = with_cluster(cluster, lambda client: extract_lake(
        source_url, lake_url, users_per_partition=users_per_partition, incremental=incremental,
        storage_options=storage_options, client=client, progress=progress, reader=reader))
    log_event(log, logging.INFO, "extract_done", version=summary["version"],
              mode=summary["mode"])
    return summary


def has_extraction(lake_url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether the lake at ``lake_url`` holds an extraction (its ``_CURRENT`` pointer)."""
    return VersionedLake(lake_url, storage_options).current() is not None


def extract_lake(
    source_url: str | URL | SecretURL,
    lake_url: str,
    *,
    users_per_partition: int = 50_000,
    incremental: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    client: Any = None,
    progress: bool = False,
    reader: str = "auto",
) -> dict[str, Any]:
    """Copy the source database into a new version of the lake and publish it.

    Args:
        source_url: SQLAlchemy URL of the source (see
            :func:`preassign.source.resolve_source_url`); never logged unmasked. A
            :class:`~preassign.dbsecurity.SecretURL` keeps the password out of the task
            graph: this process and every task resolve it where they connect.
        lake_url: lake root, a local path or an fsspec URL such as ``s3://bucket/lake``.
            It holds version directories and the ``_CURRENT`` pointer.
        users_per_partition: width of each user-id range (a full extraction; an
            incremental one keeps the previous version's ranges).
        incremental: add only the rows of ``ratings``, ``deliveries`` and ``requests``
            appended since the previous extraction (by ``row_id``) to the previous
            version's files; re-read every other table.
        storage_options: fsspec options for the lake (e.g. ``{"endpoint_url": ...}``).
        client: a ``distributed.Client`` to run the range tasks on; ``None`` uses
            Dask's current scheduler.
        progress: draw Dask's progress bar (with a client, on a terminal).
        reader: how the user-keyed tables are read: ``"fast"`` (ConnectorX, Arrow-native),
            ``"stream"`` (SQLAlchemy/PyMySQL) or ``"auto"``: fast when ConnectorX can honour
            the URL (not with TLS options, for one), else stream; the environment variable
            ``PREASSIGN_EXTRACT_READER`` may set it then (see :mod:`preassign.fastread`).

    Returns:
        A summary: ``lake``, ``version``, ``previous``, ``mode``, ``partitions``,
        ``bounds``, ``rows`` (per table), ``rows_read`` (rows read from the source
        per table: all of them in a full extraction, the new ones in an incremental
        one), ``watermarks``, ``removed`` (versions deleted), ``reader`` (``"fast"`` or
        ``"stream"``) and ``seconds``.

    Raises:
        SourceConnectionError: the database is unreachable or the credentials are wrong.
        SourceSchemaError: a required table or column is missing (the message names it).
        SourceError: a value cannot be stored in the lake's types, or another driver error.
        UsageError: the lake location is a file, lies inside another lake, or holds
            something an extraction did not write (an unversioned lake, other files); or
            ``reader`` is unknown, or ``"fast"`` for a URL ConnectorX cannot honour.
        LakeError: ``incremental`` has no usable previous extraction.
    """
    started = time.perf_counter()
    if users_per_partition < 1:
        raise ValueError(f"users_per_partition must be >= 1, got {users_per_partition}")
    secret = source_url if isinstance(source_url, SecretURL) else None
    url = source_url.resolve() if isinstance(source_url, SecretURL) else \
        parse_source_url(source_url)
    _check_sqlite_file(url)
    chosen, why = choose_reader(url, reader)
    log_event(log, logging.INFO, "extract_reader", reader=chosen,
              library="ConnectorX, Arrow-native" if chosen == "fast"
              else "SQLAlchemy/PyMySQL streaming", why=why)
    storage_options = dict(storage_options or {})
    store = VersionedLake(lake_url, storage_options)
    store.check_target()
    store.acquire()
    try:
        return _extract(url, store, users_per_partition, incremental, storage_options, client,
                        progress, started, chosen, secret)
    finally:
        store.release()


def _extract(url: URL, store: VersionedLake, users_per_partition: int, incremental: bool,
             storage_options: dict[str, Any], client: Any, progress: bool,
             started: float, reader: str, secret: SecretURL | None = None) -> dict[str, Any]:
    lake_url = store.url
    previous = store.current()
    previous_manifest = _previous_manifest(store, previous) if incremental else None

    engine = create_engine_from_url(url)
    try:
        with _connect(engine, url, "reading the source") as conn:
            present, watermarked = _check_source(conn, url)
            if previous_manifest is None:
                bounds, partitioning = _choose_bounds(conn, users_per_partition)
            else:
                bounds, partitioning = [int(b) for b in previous_manifest["bounds"]], "kept"
            watermarks: dict[str, int | None] = {}
            for name in sorted(watermarked):
                table = source_table(name)
                value = conn.execute(sa.select(sa.func.max(table.c[WATERMARK_COLUMN]))).scalar()
                watermarks[name] = None if value is None else int(value)
            small = {}
            for name in ("snacks", "stock"):
                if name in present:
                    try:
                        small[name] = _fetch(conn, name, _select_whole(name))
                    except sa.exc.DBAPIError as exc:
                        raise translate_error(exc, url, f"reading table {name!r}") from exc
    finally:
        engine.dispose()

    since: dict[str, int | None] = {}
    if previous_manifest is not None:
        old_marks = previous_manifest.get("watermarks") or {}
        for name in sorted(watermarked):
            if name not in old_marks:
                log.info("table %s had no watermark last time: re-reading it whole", name)
                continue
            old, new = old_marks[name], watermarks[name]
            if old is not None and (new is None or new < old):
                raise LakeError(
                    f"table {name!r}: the source's largest {WATERMARK_COLUMN} ({new}) is below "
                    f"the previous extraction's watermark ({old}), so the table was rewritten, "
                    "not appended to; run a full extraction"
                )
            since[name] = None if old is None else int(old)

    version = store.new_version()
    version_url = store.child_url(version)
    plan = _Plan(
        source=secret if secret is not None else url,
        version_url=version_url,
        previous_url=store.child_url(previous) if previous and since else None,
        storage_options=storage_options,
        bounds=tuple(bounds),
        watermarked=frozenset(watermarked),
        watermark_from=since,
        watermark_to=watermarks,
        reader=reader,
    )
    npart = len(bounds) - 1
    log.info("extracting %s into %s (%d partitions, %s)", mask_url(url), version_url, npart,
             "incremental" if incremental else "full")
    try:
        import dask

        rows: dict[str, int] = {}
        for name, table in small.items():
            write_small_table(version_url, name, table, storage_options)
            rows[name] = table.num_rows
        read = dict(rows)
        task = dask.delayed(_extract_partition, pure=False)
        results = compute(client, [task(plan, i) for i in range(npart)], progress)
        for written, added in results:
            for name, n in written.items():
                rows[name] = rows.get(name, 0) + n
            for name, n in added.items():
                read[name] = read.get(name, 0) + n
        seconds = round(time.perf_counter() - started, 3)
        write_manifest(
            version_url, bounds, storage_options,
            watermarks=watermarks,
            source={"url": mask_url(url)},
            extract={"mode": "incremental" if incremental else "full", "version": version,
                     "previous": previous, "users_per_partition": users_per_partition,
                     "partitioning": partitioning, "reader": reader,
                     "rows": rows, "rows_read": read, "seconds": seconds},
        )
    except BaseException:
        store.discard(version)
        raise
    store.publish(version)
    removed = store.prune(version, previous)
    log.info("published %s (previous %s; removed %s)", version, previous, removed or "none")
    return {
        "lake": lake_url,
        "version": version,
        "previous": previous,
        "mode": "incremental" if incremental else "full",
        "partitions": npart,
        "bounds": bounds,
        "rows": rows,
        "rows_read": read,
        "watermarks": watermarks,
        "removed": removed,
        "reader": reader,
        "seconds": round(time.perf_counter() - started, 3),
    }
