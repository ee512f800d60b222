"""The lake's table contract (SPEC §2): names, columns, types and valid values.

Pure pandas/pyarrow: no Dask, no storage. Every table that enters the pipeline
goes through :func:`normalize_table`, which

* checks the required columns are there (extra columns are dropped),
* converts whatever physical types the Parquet files used (int32 or int64 ids,
  nullable ints read as floats, ``date32`` or timestamps, naive or tz-aware
  timestamps, Arrow or numpy strings) to one compact in-memory form, and
* finds invalid values (nulls in required columns, a rating outside 1-4, an
  unknown status, a negative quantity, a box size below 1).

Normalised forms: ids ``int64``; dates ``int32`` days since 1970-01-01 with
:data:`NO_DATE` for null; timestamps ``int64`` nanoseconds since the epoch, UTC;
``rating`` ``int8``; ``status`` ``int8`` codes (:data:`STATUSES`); strings as
Python ``str`` objects; ``box_size`` ``int64`` with 0 for null (any size a user may store:
a box larger than the eligible snacks simply ends short).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from ..errors import InputError

__all__ = [
    "LakeError",
    "InvalidValues",
    "TableSpec",
    "TABLES",
    "USER_KEYED",
    "STATUSES",
    "NO_DATE",
    "normalize_table",
    "empty_table",
    "dedupe_keyed",
    "check_user_range",
    "CANONICAL_TYPES",
    "canonical_schema",
    "canonical_table",
    "check_file_schema",
]

NO_DATE = np.iinfo(np.int32).min
STATUSES = ("active", "paused", "cancelled")


class LakeError(InputError):
    """The lake breaks the table contract; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class InvalidValues:
    """Rows of one table breaking one rule (kept small: a count and an example)."""

    table: str
    column: str
    rule: str
    count: int
    example: str

    def message(self) -> str:
        """One human sentence naming table, column, count and an example."""
        rows = "row" if self.count == 1 else "rows"
        return (
            f"table {self.table!r}, column {self.column!r}: {self.count} {rows} {self.rule} "
            f"(e.g. {self.example})"
        )


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """Required columns of one table and their logical kinds."""

    name: str
    columns: Mapping[str, str]  # column -> kind: id, int, str, date, timestamp, list
    nullable: frozenset[str] = frozenset()
    user_keyed: bool = False
    has_snack: bool = False
    optional: bool = False


TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in [
        TableSpec(
            "snacks",
            {
                "snack_id": "id",
                "name": "str",
                "genre": "str",
                "ingredients": "list",
                "launched_on": "date",
                "retired_on": "date",
            },
            nullable=frozenset({"ingredients", "retired_on"}),
        ),
        TableSpec(
            "users",
            {"user_id": "id", "status": "str", "next_delivery_on": "date", "box_size": "int"},
            nullable=frozenset({"next_delivery_on", "box_size"}),
        ),
        TableSpec(
            "ratings",
            {"user_id": "id", "snack_id": "id", "rating": "int", "rated_at": "timestamp"},
            user_keyed=True,
            has_snack=True,
        ),
        TableSpec(
            "deliveries",
            {"user_id": "id", "snack_id": "id", "delivered_on": "date"},
            user_keyed=True,
            has_snack=True,
        ),
        TableSpec("ng_snacks", {"user_id": "id", "snack_id": "id"}, user_keyed=True,
                  has_snack=True),
        TableSpec("avoid_ingredients", {"user_id": "id", "ingredient": "str"}, user_keyed=True),
        TableSpec("genre_prefs", {"user_id": "id", "genre": "str"}, user_keyed=True),
        TableSpec(
            "requests",
            {"user_id": "id", "snack_id": "id", "requested_at": "timestamp"},
            user_keyed=True,
            has_snack=True,
        ),
        TableSpec("stock", {"snack_id": "id", "quantity": "int"}, optional=True),
    ]
}

#: Tables partitioned by user (``users`` first): all of a user's rows meet in one partition.
USER_KEYED: tuple[str, ...] = ("users",) + tuple(n for n, t in TABLES.items() if t.user_keyed)

_NP_KIND = {"id": np.int64, "int": np.int64, "date": np.int32, "timestamp": np.int64}


def empty_table(name: str) -> pd.DataFrame:
    """An empty frame of the table's *raw* required columns (for missing files)."""
    spec = TABLES[name]
    cols = {}
    for col, kind in spec.columns.items():
        if kind in _NP_KIND:
            cols[col] = np.empty(0, dtype="int64" if kind in ("id", "int") else
                                 ("datetime64[ns]" if kind == "timestamp" else "datetime64[s]"))
        else:
            cols[col] = np.empty(0, dtype=object)
    return pd.DataFrame(cols)


# --------------------------------------------------------------------------------------------
# one physical type per column: each file is cast to it as it is read

#: The Arrow type every file's column is cast to, by logical kind: files of one table may
#: use int32 or int64 ids, any timestamp unit or time zone, dictionary or plain strings;
#: after :func:`canonical_table` they all agree, so they concatenate and shuffle.
CANONICAL_TYPES: dict[str, pa.DataType] = {
    "id": pa.int64(),
    "int": pa.int64(),
    "str": pa.string(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("ns"),
    "list": pa.list_(pa.string()),
}

_EXPECTED = {
    "id": "an integer id",
    "int": "an integer",
    "str": "a string",
    "date": "a date (date32)",
    "timestamp": "a timestamp",
    "list": "a list of strings",
}


def canonical_schema(name: str) -> pa.Schema:
    """The required columns of table ``name`` with their canonical Arrow types."""
    return pa.schema([(col, CANONICAL_TYPES[kind]) for col, kind in TABLES[name].columns.items()])


def _string_like(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_string_view(t))


def _castable(kind: str, t: pa.DataType) -> bool:
    """Whether a column stored as ``t`` can hold values of the logical ``kind``."""
    if pa.types.is_null(t):
        return True
    if kind in ("id", "int"):
        return pa.types.is_integer(t) or pa.types.is_floating(t) or (
            pa.types.is_decimal(t) and t.scale == 0)
    if kind == "str":
        return _string_like(t)
    if kind == "date":
        return pa.types.is_date(t) or pa.types.is_timestamp(t)
    if kind == "timestamp":
        return pa.types.is_timestamp(t) or pa.types.is_date(t)
    return (pa.types.is_list(t) or pa.types.is_large_list(t)
            or pa.types.is_fixed_size_list(t)) and (
        _string_like(t.value_type) or pa.types.is_null(t.value_type))


def _to_canonical(name: str, col: str, kind: str, arr: pa.Array, where: str) -> pa.Array:
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), CANONICAL_TYPES[kind])
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if kind in ("id", "int"):
        if pa.types.is_floating(t):
            values = arr.to_numpy(zero_copy_only=False)
            nulls = np.isnan(values) | arr.is_null().to_numpy(zero_copy_only=False)
            frac = ~nulls & (np.floor(values) != values)
            if frac.any():
                raise LakeError(
                    f"table {name!r}, column {col!r}: expected integers, found "
                    f"{int(frac.sum())} non-integral values (e.g. {values[frac][0]!r}) in "
                    f"file {where!r}")
            big = ~nulls & (np.abs(values) >= 2.0**63)
            if big.any():
                raise _out_of_range(name, col, where, values[big][0])
            return pa.array(np.where(nulls, 0, values).astype(np.int64), pa.int64(),
                            mask=nulls)
        try:
            return arr.cast(pa.int64())
        except (pa.ArrowInvalid, OverflowError) as exc:
            raise _out_of_range(name, col, where, exc) from None
    if kind == "str":
        return arr.cast(pa.string())
    if kind == "date":
        if pa.types.is_timestamp(t):
            arr = arr.cast(pa.timestamp(t.unit))  # the UTC instant: its UTC date
        return arr.cast(pa.date32())
    if kind == "timestamp":
        if pa.types.is_date(t):
            arr = arr.cast(pa.date32()).cast(pa.timestamp("s"))  # midnight UTC
            t = arr.type
        try:  # dropping the zone keeps the UTC instant (SPEC §2: values are UTC)
            return arr.cast(pa.timestamp(t.unit)).cast(pa.timestamp("ns"))
        except pa.ArrowInvalid:
            bad = arr.cast(pa.timestamp(t.unit))
            raise LakeError(
                f"table {name!r}, column {col!r}: file {where!r} holds timestamps outside "
                "the years 1678-2261 that preassign handles (nanoseconds since 1970 in 64 "
                f"bits), e.g. {pa.compute.min_max(bad)['max'].as_py()!r}") from None
    return arr.cast(pa.list_(pa.string()))


def _out_of_range(name: str, col: str, where: str, example: object) -> LakeError:
    return LakeError(
        f"table {name!r}, column {col!r}: file {where!r} holds a value outside the 64-bit "
        f"integers preassign handles ({example})")


def check_file_schema(name: str, schema: pa.Schema, where: str,
                      reference: pa.Schema | None = None) -> None:
    """Check one file's schema: every required column there, in a type that can hold it.

    Args:
        name: the table of SPEC §2.
        schema: the file's schema.
        where: the file, for messages.
        reference: another file's schema of the same table, named in a type error.

    Raises:
        LakeError: naming the table, the column, the file and the types found.
    """
    spec = TABLES[name]
    missing = [c for c in spec.columns if c not in schema.names]
    if missing:
        raise LakeError(
            f"table {name!r} is missing required column(s) {', '.join(missing)} in file "
            f"{where!r} (columns present: {', '.join(schema.names) or 'none'})")
    for col, kind in spec.columns.items():
        t = schema.field(col).type
        if _castable(kind, t):
            continue
        other = ""
        if reference is not None and col in reference.names and reference.field(col).type != t:
            other = f", while other files of the table store {reference.field(col).type}"
        raise LakeError(
            f"table {name!r}, column {col!r}: expected {_EXPECTED[kind]}, found type {t} in "
            f"file {where!r}{other}; rewrite the column with the type of SPEC §2")


def canonical_table(name: str, table: pa.Table, where: str,
                    reference: pa.Schema | None = None) -> pa.Table:
    """Cast one file's required columns to their canonical types (extra columns dropped).

    Args:
        name: the table of SPEC §2.
        table: what the file holds (any physical types).
        where: the file, for messages.
        reference: another file's schema of the same table, named in a type error.

    Raises:
        LakeError: a required column is missing, or stored as a type that cannot hold its
            values (naming the table, column, file and the types found).
    """
    check_file_schema(name, table.schema, where, reference)
    arrays = []
    for col, kind in TABLES[name].columns.items():
        chunks = [_to_canonical(name, col, kind, chunk, where)
                  for chunk in table.column(col).chunks]
        arrays.append(pa.chunked_array(chunks, CANONICAL_TYPES[kind]))
    return pa.Table.from_arrays(arrays, schema=canonical_schema(name))


# --------------------------------------------------------------------------------------------
# column conversion


def _arrow(series: pd.Series) -> pa.Array:
    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype):
        arr = series.array._pa_array  # noqa: SLF001 - zero-copy access to the Arrow data
        return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    return pa.array(series, from_pandas=True)


def _type_error(table: str, col: str, kind: str, got: object) -> LakeError:
    expected = {
        "id": "an integer id",
        "int": "an integer",
        "str": "a string",
        "date": "a date (date32)",
        "timestamp": "a timestamp",
        "list": "a list of strings",
    }[kind]
    return LakeError(
        f"table {table!r}, column {col!r}: expected {expected}, found type {got}; "
        "rewrite the column with the type of SPEC §2"
    )


def _to_int(table: str, col: str, kind: str, series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """-> (int64 values with 0 where null, null mask)."""
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":
        return series.to_numpy(np.int64, copy=False), np.zeros(len(series), bool)
    arr = _arrow(series)
    t = arr.type
    if pa.types.is_integer(t):
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        vals = arr.fill_null(0).cast(pa.int64()).to_numpy(zero_copy_only=False)
        return vals, nulls
    if pa.types.is_floating(t):
        nulls = arr.is_null(nan_is_null=True).to_numpy(zero_copy_only=False)
        f = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        f = np.where(nulls, 0.0, f)
        if not np.all(np.floor(f) == f):
            bad = f[np.floor(f) != f]
            raise LakeError(
                f"table {table!r}, column {col!r}: expected integers, found "
                f"{bad.size} non-integral values (e.g. {bad[0]!r})"
            )
        return f.astype(np.int64), nulls
    if pa.types.is_null(t):
        return np.zeros(len(arr), np.int64), np.ones(len(arr), bool)
    raise _type_error(table, col, kind, t)


def _to_days(table: str, col: str, series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """-> (int32 days since epoch with NO_DATE where null, null mask)."""
    arr = _arrow(series)
    t = arr.type
    if pa.types.is_null(t):
        n = len(arr)
        return np.full(n, NO_DATE, np.int32), np.ones(n, bool)
    if pa.types.is_timestamp(t):
        arr = arr.cast(pa.timestamp(t.unit)).cast(pa.date32())  # UTC date of the instant
        t = arr.type
    elif pa.types.is_date64(t):
        arr = arr.cast(pa.date32())
        t = arr.type
    if not pa.types.is_date32(t):
        raise _type_error(table, col, "date", t)
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    days = arr.cast(pa.int32()).fill_null(NO_DATE).to_numpy(zero_copy_only=False)
    return days.astype(np.int32, copy=False), nulls


def _to_ns(table: str, col: str, series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """-> (int64 ns since epoch, UTC, 0 where null; null mask)."""
    if isinstance(series.dtype, np.dtype) and series.dtype.kind == "M":
        values = series.to_numpy()
        nulls = np.isnat(values)
        ns = values.astype("datetime64[ns]").view(np.int64)
        return np.where(nulls, 0, ns), nulls
    arr = _arrow(series)
    t = arr.type
    if pa.types.is_null(t):
        return np.zeros(len(arr), np.int64), np.ones(len(arr), bool)
    if pa.types.is_date32(t) or pa.types.is_date64(t):
        arr = arr.cast(pa.timestamp("ns"))
        t = arr.type
    if not pa.types.is_timestamp(t):
        raise _type_error(table, col, "timestamp", t)
    arr = arr.cast(pa.timestamp(t.unit)).cast(pa.timestamp("ns"))  # drop tz: values are UTC
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    ns = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    return ns, nulls


def _to_str(table: str, col: str, series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """-> (object array of str with '' where null, null mask)."""
    if series.dtype == object:
        values = series.to_numpy()
        nulls = pd.isna(values)
        if len(values) and not all(isinstance(v, str) for v in values[~nulls]):
            bad = next(v for v in values[~nulls] if not isinstance(v, str))
            raise _type_error(table, col, "str", type(bad).__name__)
        return np.where(nulls, "", values).astype(object), nulls
    arr = _arrow(series)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        return np.full(len(arr), "", object), np.ones(len(arr), bool)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
            or pa.types.is_string_view(arr.type)):
        raise _type_error(table, col, "str", arr.type)
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    values = arr.fill_null("").to_numpy(zero_copy_only=False).astype(object)
    return values, nulls


def _to_list(table: str, col: str, series: pd.Series) -> np.ndarray:
    """-> object array of tuples of str (null list -> empty tuple)."""
    out = np.empty(len(series), dtype=object)
    for i, v in enumerate(series.to_numpy(dtype=object)):  # snacks only: a few hundred rows
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            out[i] = ()
        elif isinstance(v, str):
            raise _type_error(table, col, "list", "string")
        else:
            try:
                items = tuple(v)
            except TypeError:
                raise _type_error(table, col, "list", type(v).__name__) from None
            if any(x is not None and not isinstance(x, str) for x in items):
                raise _type_error(table, col, "list", f"list of {type(items[0]).__name__}")
            out[i] = tuple(sorted({x for x in items if x is not None}))
    return out


# --------------------------------------------------------------------------------------------
# the table check


def _example(table: str, raw: pd.DataFrame, mask: np.ndarray, col: str) -> str:
    i = int(np.flatnonzero(mask)[0])
    keys = [c for c in ("user_id", "snack_id") if c in raw.columns and c != col]
    parts = [f"{k}={_fmt(raw[k].iloc[i])}" for k in keys]
    parts.append(f"{col}={_fmt(raw[col].iloc[i])}")
    return ", ".join(parts)


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
        return "null"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v) if isinstance(v, str) else str(v)


def normalize_table(
    name: str, raw: pd.DataFrame, *, on_invalid: str = "raise",
    rejected: dict[str, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, list[InvalidValues], np.ndarray]:
    """Check and convert one table (or one partition of it) to its normalised form.

    Args:
        name: the table name of SPEC §2.
        raw: the rows as read from Parquet (any physical types; extra columns ignored).
        on_invalid: ``"raise"`` to raise :class:`LakeError` at the first broken rule,
            ``"drop"`` to drop the broken rows and report them.
        rejected: with ``"drop"``, if given, ``rejected[name]`` receives the dropped raw
            rows (required columns as text) with a ``reason`` column.

    Returns:
        ``(frame, problems, bad_mask)``: the normalised rows (invalid ones dropped),
        one :class:`InvalidValues` per broken rule, and the mask of dropped raw rows.

    Raises:
        LakeError: a required column is missing, has the wrong type, or (with
            ``on_invalid="raise"``) holds invalid values.

    Examples:
        >>> df, problems, _ = normalize_table("ratings", pd.DataFrame(
        ...     {"user_id": [1], "snack_id": [2], "rating": [4],
        ...      "rated_at": pd.to_datetime(["2026-01-01"])}))
        >>> df.dtypes["rating"], problems
        (dtype('int8'), [])
    """
    spec = TABLES[name]
    missing = [c for c in spec.columns if c not in raw.columns]
    if missing:
        present = ", ".join(map(str, raw.columns)) or "none"
        raise LakeError(
            f"table {name!r} is missing required column(s) {', '.join(missing)} "
            f"(columns present: {present})"
        )
    n = len(raw)
    out: dict[str, np.ndarray] = {}
    bad = np.zeros(n, bool)
    reason = np.full(n, None, dtype=object)
    problems: list[InvalidValues] = []

    def flag(col: str, mask: np.ndarray, rule: str) -> None:
        nonlocal bad
        if mask.any():
            problem = InvalidValues(name, col, rule, int(mask.sum()),
                                    _example(name, raw, mask, col))
            if on_invalid == "raise":
                raise LakeError(problem.message())
            problems.append(problem)
            reason[mask & ~bad] = f"{col}: {rule}"
            bad |= mask

    for col, kind in spec.columns.items():
        series = raw[col]
        if n == 0:  # an empty table: whatever type the writer gave its columns
            out[col] = np.zeros(0, object if kind in ("str", "list") else _NP_KIND[kind])
            if col == "rating":
                out[col] = out[col].astype(np.int8)
            elif col in ("status",):
                out[col] = np.zeros(0, np.int8)
            elif col == "box_size":
                out[col] = np.zeros(0, np.int64)
            continue
        if kind in ("id", "int"):
            values, nulls = _to_int(name, col, kind, series)
        elif kind == "date":
            values, nulls = _to_days(name, col, series)
        elif kind == "timestamp":
            values, nulls = _to_ns(name, col, series)
        elif kind == "str":
            values, nulls = _to_str(name, col, series)
        else:
            values, nulls = _to_list(name, col, series), np.zeros(n, bool)
        if col not in spec.nullable:
            flag(col, nulls, "are null (the column is required)")
        out[col] = values
        if col == "box_size":
            flag(col, ~nulls & (values < 1), "have a box size below 1")
            out[col] = np.where(nulls, 0, values).astype(np.int64)
        elif col == "rating":
            flag(col, ~nulls & ((values < 1) | (values > 4)), "have a rating outside 1-4")
            out[col] = np.clip(values, 0, 4).astype(np.int8)
        elif col == "quantity":
            flag(col, ~nulls & (values < 0), "have a negative quantity")
        elif col == "status":
            known = np.isin(values, STATUSES)
            flag(col, ~nulls & ~known,
                 f"have a status outside {', '.join(STATUSES)}")
            codes = np.full(n, -1, np.int8)
            for code, status in enumerate(STATUSES):
                codes[values == status] = code
            out[col] = codes
    frame = pd.DataFrame(out, index=pd.RangeIndex(n), copy=False)
    if bad.any():
        frame = frame.loc[~bad].reset_index(drop=True)
        if rejected is not None:
            rows = raw.loc[bad, list(spec.columns)].reset_index(drop=True)
            text = {c: [None if _fmt(v) == "null" else str(v) for v in rows[c]] for c in rows}
            rejected[name] = pd.DataFrame({**text, "reason": reason[bad].astype(str)})
    return frame, problems, bad


def dedupe_keyed(name: str, frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Drop identical duplicate rows; two different rows for one key make the lake invalid.

    Raises:
        LakeError: naming the table, the key column, how many keys conflict and one of them.
    """
    cols = list(frame.columns)
    hashable = frame.copy()
    for c in cols:
        if hashable[c].dtype == object:
            hashable[c] = hashable[c].map(lambda v: v if not isinstance(v, list) else tuple(v))
    unique = hashable.drop_duplicates()
    dup = unique[key].duplicated(keep=False)
    if dup.any():
        keys = unique.loc[dup, key]
        raise LakeError(
            f"table {name!r}, column {key!r}: {keys.nunique()} {key} value(s) have "
            f"different rows (e.g. {key}={keys.iloc[0]}); each {key} must have one row"
        )
    return frame.loc[unique.index].reset_index(drop=True)


def check_user_range(raw: Mapping[str, pd.DataFrame | None], lo: int, hi: int,
                     index: int) -> None:
    """Every raw row of partition ``index`` must lie in its recorded user range ``[lo, hi)``.

    Checked on raw rows, before orphans are set aside: a row in the wrong file would
    otherwise look like an orphan (a wrong answer instead of an error).

    Raises:
        LakeError: naming the table, how many rows lie outside and an example.
    """
    for name, frame in raw.items():
        if frame is None or "user_id" not in frame or not len(frame):
            continue
        uid, nulls = _to_int(name, "user_id", "id", frame["user_id"])
        outside = ~nulls & ((uid < lo) | (uid >= hi))
        if outside.any():
            raise LakeError(
                f"table {name!r}, column 'user_id': {int(outside.sum())} rows of partition "
                f"{index} lie outside its recorded range [{lo}, {hi}) (e.g. user_id="
                f"{int(uid[outside][0])}); the lake's _lake.json does not match its files - "
                "rewrite the lake or delete _lake.json"
            )
