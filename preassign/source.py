"""The source database: its schema, engines, masked URLs and synthetic loading.

Schema
------
The SPEC §2 tables as SQLAlchemy Core :data:`METADATA`, portable to MySQL/Aurora
(the production source), MariaDB (the tests) and SQLite (the embedded default):

* ids are ``BIGINT``; ``rating`` is ``TINYINT``; dates are ``DATE``; timestamps are
  ``DATETIME(6)`` holding **UTC** wall-clock values (no time zone conversion ever
  happens on a ``DATETIME``); strings are ``VARCHAR`` in ``utf8mb4_bin`` so that
  comparisons and keys are byte-exact, as they are in the lake.
* ``snacks``, ``users`` and ``stock`` have their natural primary key (one row per
  id is part of the contract). ``ng_snacks``, ``avoid_ingredients`` and
  ``genre_prefs`` are sets keyed by ``(user_id, value)``: that primary key is also
  their ``user_id`` index (its leftmost column) and, in InnoDB, the clustered order
  the extractor's ``user_id`` range scans read.
* The append-only tables ``ratings``, ``deliveries`` and ``requests`` have an
  auto-increment surrogate key :data:`WATERMARK_COLUMN` (``row_id``) plus an index
  on ``user_id``. ``row_id`` is the incremental extraction's watermark: rows are
  only ever added, and each new row gets a larger ``row_id`` than every row before
  it (SQLite: ``AUTOINCREMENT``, so ids are never reused). A timestamp such as
  ``rated_at`` would not do: it is set by the application and may be back-dated.
* ``snacks.ingredients`` is a ``JSON`` array of strings (``NULL`` = none), not a
  child table: the lineup is a few hundred rows read whole, the lake stores the
  column as ``list<string>``, a JSON array copies into it one-to-one (``NULL``
  and ``[]`` stay distinct, as in the lake), and no join or aggregation is needed
  on either side. MySQL 5.7+/Aurora have a native ``JSON`` type; MariaDB stores it
  as checked ``LONGTEXT``; SQLite as text. SQLAlchemy (de)serialises it in all three.

:func:`render_mysql_ddl` renders the MySQL DDL; the file ``preassign/sql/schema_mysql.sql``
is that output, checked in (regenerate with ``python -m preassign.source``; a test
checks it is up to date).

Connections
-----------
:func:`resolve_source_url` finds the URL (argument, ``--source-file`` or the
``PREASSIGN_SOURCE_URL`` environment variable) so no password has to appear on a
command line; :func:`create_engine_from_url` makes an engine without a pool (each
Dask task opens one connection and closes it); :func:`mask_url` is the only form a
URL is ever logged or shown in; :func:`translate_error` turns driver errors into
:class:`SourceError` messages that say what to fix and never hold the password.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateIndex, CreateTable

from .core.contract import USER_KEYED
from .errors import InfrastructureError, InputError
from .synth import SynthConfig, generate_partition, generate_snacks, generate_stock

__all__ = [
    "APPEND_ONLY",
    "METADATA",
    "SOURCE_URL_ENV",
    "TABLE_ORDER",
    "WATERMARK_COLUMN",
    "SourceConnectionError",
    "SourceError",
    "SourceSchemaError",
    "create_engine_from_url",
    "create_schema",
    "fill_database",
    "load_synthetic",
    "mask_url",
    "parse_source_url",
    "render_mysql_ddl",
    "resolve_source_url",
    "source_table",
    "translate_error",
]

log = logging.getLogger(__name__)

#: Environment variable holding the source database URL.
SOURCE_URL_ENV = "PREASSIGN_SOURCE_URL"
#: The auto-increment column the incremental extraction uses as its watermark.
WATERMARK_COLUMN = "row_id"
#: Tables rows are only ever added to (refreshed incrementally by ``row_id``).
APPEND_ONLY: tuple[str, ...] = ("ratings", "deliveries", "requests")

_MYSQL = ("mysql", "mariadb")
#: Upper bound of a MySQL session's wait for a metadata lock (the server default is a day
#: on MariaDB, a year on MySQL): a table locked or altered on the reader fails the
#: extraction instead of hanging it.
LOCK_WAIT_SECONDS = 600
#: Default driver read timeout (``?read_timeout=`` in the URL overrides it): a connection
#: the network black-holes (a failover) fails the extraction instead of hanging it.
READ_TIMEOUT_SECONDS = 600
_TABLE_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4",
                  "mysql_collate": "utf8mb4_bin"}


class SourceError(InputError):
    """The source database cannot be used; the message says what to fix (never a password).

    Raised as is for a bad URL or a value the lake cannot hold (exit 1); the subclasses
    below say more.
    """


class SourceConnectionError(SourceError, InfrastructureError, ConnectionError):
    """The database is unreachable, the credentials are wrong, or the URL is unusable (exit 3)."""

    exit_code = InfrastructureError.exit_code
    kind = InfrastructureError.kind


class SourceSchemaError(SourceError, LookupError):
    """A table or column the extraction needs is missing from the source database."""


# --------------------------------------------------------------------------------------------
# the schema


def _id() -> sa.types.TypeEngine:
    return BigInteger()


def _row_id() -> sa.types.TypeEngine:
    # SQLite only auto-increments an ``INTEGER PRIMARY KEY`` (an alias of its rowid).
    return BigInteger().with_variant(Integer(), "sqlite")


def _tinyint() -> sa.types.TypeEngine:
    return SmallInteger().with_variant(mysql.TINYINT(), *_MYSQL)


def _utc_datetime() -> sa.types.TypeEngine:
    return DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


METADATA = MetaData()

Table(
    "snacks", METADATA,
    Column("snack_id", _id(), primary_key=True, autoincrement=False),
    Column("name", String(255), nullable=False),
    Column("genre", String(64), nullable=False),
    Column("ingredients", JSON(none_as_null=True), nullable=True,
           comment="JSON array of ingredient names, NULL = none"),
    Column("launched_on", Date(), nullable=False),
    Column("retired_on", Date(), nullable=True),
    comment="the lineup, one row per snack",
    **_TABLE_OPTIONS,
)
Table(
    "users", METADATA,
    Column("user_id", _id(), primary_key=True, autoincrement=False),
    Column("status", String(16), nullable=False, comment="active / paused / cancelled"),
    Column("next_delivery_on", Date(), nullable=True),
    Column("box_size", SmallInteger(), nullable=True, comment="NULL = default box size"),
    comment="one row per subscriber",
    **_TABLE_OPTIONS,
)
Table(
    "ratings", METADATA,
    Column(WATERMARK_COLUMN, _row_id(), primary_key=True, autoincrement=True),
    Column("user_id", _id(), nullable=False),
    Column("snack_id", _id(), nullable=False),
    Column("rating", _tinyint(), nullable=False, comment="1 dislike .. 4 love"),
    Column("rated_at", _utc_datetime(), nullable=False, comment="UTC"),
    Index("ix_ratings_user_id", "user_id"),
    comment="append-only, row_id is the extraction watermark",
    sqlite_autoincrement=True,
    **_TABLE_OPTIONS,
)
Table(
    "deliveries", METADATA,
    Column(WATERMARK_COLUMN, _row_id(), primary_key=True, autoincrement=True),
    Column("user_id", _id(), nullable=False),
    Column("snack_id", _id(), nullable=False),
    Column("delivered_on", Date(), nullable=False),
    Index("ix_deliveries_user_id", "user_id"),
    comment="append-only, row_id is the extraction watermark",
    sqlite_autoincrement=True,
    **_TABLE_OPTIONS,
)
Table(
    "ng_snacks", METADATA,
    Column("user_id", _id(), primary_key=True, autoincrement=False),
    Column("snack_id", _id(), primary_key=True, autoincrement=False),
    comment="snacks a user never wants, the primary key is the user_id index",
    **_TABLE_OPTIONS,
)
Table(
    "avoid_ingredients", METADATA,
    Column("user_id", _id(), primary_key=True, autoincrement=False),
    Column("ingredient", String(64), primary_key=True),
    comment="ingredients a user avoids, the primary key is the user_id index",
    **_TABLE_OPTIONS,
)
Table(
    "genre_prefs", METADATA,
    Column("user_id", _id(), primary_key=True, autoincrement=False),
    Column("genre", String(64), primary_key=True),
    comment="favourite genres, the primary key is the user_id index",
    **_TABLE_OPTIONS,
)
Table(
    "requests", METADATA,
    Column(WATERMARK_COLUMN, _row_id(), primary_key=True, autoincrement=True),
    Column("user_id", _id(), nullable=False),
    Column("snack_id", _id(), nullable=False),
    Column("requested_at", _utc_datetime(), nullable=False, comment="UTC"),
    Index("ix_requests_user_id", "user_id"),
    comment="append-only, row_id is the extraction watermark",
    sqlite_autoincrement=True,
    **_TABLE_OPTIONS,
)
Table(
    "stock", METADATA,
    Column("snack_id", _id(), primary_key=True, autoincrement=False),
    Column("quantity", Integer(), nullable=False),
    comment="units on hand (optional table)",
    **_TABLE_OPTIONS,
)

#: Table creation order (snack-keyed first, then users, then the user-keyed tables).
TABLE_ORDER: tuple[str, ...] = ("snacks", "stock") + USER_KEYED


def source_table(name: str) -> Table:
    """The :class:`~sqlalchemy.Table` of one SPEC §2 table.

    Raises:
        KeyError: ``name`` is not a table of the source schema (the message lists them).
    """
    try:
        return METADATA.tables[name]
    except KeyError:
        raise KeyError(f"no source table {name!r}; tables: {', '.join(TABLE_ORDER)}") from None


def render_mysql_ddl() -> str:
    """The schema as MySQL DDL (``CREATE TABLE`` / ``CREATE INDEX``).

    This is what ``preassign/sql/schema_mysql.sql`` ships.

    Examples:
        >>> "CREATE TABLE ratings" in render_mysql_ddl()
        True
    """
    dialect = mysql.dialect()
    out = [
        "-- The preassign source schema for MySQL 8 / Aurora MySQL 3 / MariaDB 10.6+.",
        "-- Generated by `python -m preassign.source` from preassign/source.py: do not edit.",
        "-- Apply to an empty database. DATETIME(6) values are UTC, row_id is the",
        "-- watermark of incremental extraction (docs/production-data.md).",
        "",
    ]
    for name in TABLE_ORDER:
        table = METADATA.tables[name]
        statements = [CreateTable(table)] + [
            CreateIndex(index) for index in sorted(table.indexes, key=lambda i: i.name or "")
        ]
        for stmt in statements:
            text = str(stmt.compile(dialect=dialect)).strip()
            out.append("\n".join(line.rstrip() for line in text.splitlines()) + ";\n")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# URLs and engines


# userinfo up to the *last* "@": what a human means when a password holds an unquoted "@"
_USERINFO = re.compile(
    r"^(?P<scheme>[^:/]+://)(?P<user>[^:@/]*)(?::(?P<password>.*))?@(?P<rest>[^@]*)$", re.DOTALL
)


def _ambiguous_password(text: str, parsed: URL) -> bool:
    """Whether SQLAlchemy read a different password than the text plainly holds."""
    match = _USERINFO.match(text)
    if match is None or match["password"] is None:
        return False
    return parsed.password != urllib.parse.unquote(match["password"])


def parse_source_url(url: str | URL) -> URL:
    """Parse a SQLAlchemy URL; ``mysql://`` and ``mariadb://`` get the PyMySQL driver.

    Raises:
        SourceError: the text is not a URL, or its password holds an unquoted
            ``@`` or ``/`` (the message never repeats the text: it may hold a password).
    """
    if isinstance(url, URL):
        parsed = url
    else:
        text = str(url).strip()
        try:
            parsed = sa.engine.make_url(text)
        except sa.exc.ArgumentError:
            raise SourceError(
                "cannot parse the source database URL; expected "
                "dialect+driver://user:password@host:port/database, e.g. "
                "mysql+pymysql://preassign@db.example.com:3306/snacks or "
                "sqlite:///path/to/source.db"
            ) from None
        if _ambiguous_password(text, parsed):
            raise SourceError(
                "the password in the source database URL holds characters a URL must "
                "encode: write '@' as %40, '/' as %2F, '%' as %25, '#' as %23 and '?' as %3F "
                "(urllib.parse.quote(password, safe=''))"
            )
    if parsed.drivername in _MYSQL:
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    return parsed


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by ``***`` (the only form ever logged).

    Uses :meth:`sqlalchemy.engine.URL.render_as_string` with ``hide_password=True``;
    a text SQLAlchemy would misread (an unquoted ``@`` in the password) is masked up to
    its last ``@`` instead, so no part of the password shows.

    Examples:
        >>> mask_url("mysql+pymysql://app:s3cret@db:3306/snacks")
        'mysql+pymysql://app:***@db:3306/snacks'
        >>> mask_url("mysql+pymysql://app:p@ss/w@db/snacks")
        'mysql+pymysql://app:***@db/snacks'
    """
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    text = str(url).strip()
    match = _USERINFO.match(text)
    try:
        parsed = sa.engine.make_url(text)
    except sa.exc.ArgumentError:
        parsed = None
    if parsed is not None and not _ambiguous_password(text, parsed):
        return parsed.render_as_string(hide_password=True)
    if match is not None and match["password"] is not None:
        return f"{match['scheme']}{match['user']}:***@{match['rest']}"
    return "<unparsable database URL>"


def _is_mysql(url: URL) -> bool:
    return url.get_backend_name() in _MYSQL


def create_engine_from_url(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for the source database, without a connection pool.

    Every Dask task (and the client) opens its own short-lived connection, so no pool
    is kept alive on workers (``NullPool``). For MySQL/MariaDB the session time zone
    is set to UTC (so ``TIMESTAMP`` columns, should a schema use them, read as UTC)
    and the character set to ``utf8mb4``. TLS options go in the URL, e.g.
    ``?ssl_ca=/etc/ssl/rds-global-bundle.pem``.

    Args:
        url: a SQLAlchemy URL (``str`` or :class:`~sqlalchemy.engine.URL`).
        **kwargs: passed to :func:`sqlalchemy.create_engine`.

    Raises:
        SourceError: the URL cannot be parsed or names an unknown driver.
    """
    parsed = parse_source_url(url)
    kwargs.setdefault("poolclass", NullPool)
    if _is_mysql(parsed):
        if "charset" not in parsed.query:
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault(
            "init_command",
            "SET time_zone = '+00:00', "
            f"lock_wait_timeout = LEAST(@@GLOBAL.lock_wait_timeout, {LOCK_WAIT_SECONDS})")
        if "read_timeout" not in parsed.query:
            connect_args.setdefault("read_timeout", READ_TIMEOUT_SECONDS)
        kwargs["connect_args"] = connect_args
    try:
        return sa.create_engine(parsed, **kwargs)
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise SourceError(
            f"cannot use database URL {mask_url(parsed)}: {exc}; supported are "
            "mysql+pymysql://, mariadb+pymysql:// and sqlite:///"
        ) from None
    except sa.exc.ArgumentError as exc:
        raise SourceError(
            f"invalid options in database URL {mask_url(parsed)}: {exc}"
        ) from None


def resolve_source_url(
    url: str | None = None,
    *,
    source_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Find the source database URL: ``url``, else ``source_file``, else ``$PREASSIGN_SOURCE_URL``.

    The file holds the URL on its first line that is neither blank nor a ``#``
    comment. Prefer the file or the environment variable when the URL holds a
    password: a command-line argument is visible to every user of the machine.

    Args:
        url: the URL given directly (e.g. ``--source``).
        source_file: a file holding the URL (e.g. ``--source-file``).
        environ: the environment to read (default ``os.environ``).

    Raises:
        SourceError: both or none of the sources are given, or the file is unusable.
    """
    environ = os.environ if environ is None else environ
    if url and source_file:
        raise SourceError("give the source database either as a URL or as a file, not both")
    if url:
        if parse_source_url(url).password:
            log.warning("the source URL given on the command line holds a password, visible "
                        "in the process list; prefer --source-file or $%s", SOURCE_URL_ENV)
        return url.strip()
    if source_file:
        path = os.fspath(source_file)
        try:
            mode = os.stat(path).st_mode
            with open(path, encoding="utf-8") as f:
                lines = [ln.strip() for ln in f]
        except OSError as exc:
            raise SourceError(f"cannot read source URL file {path!r}: {exc.strerror}") from None
        found = [ln for ln in lines if ln and not ln.startswith("#")]
        if not found:
            raise SourceError(f"source URL file {path!r} holds no URL (blank or only comments)")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("source URL file %s is readable by other users; chmod 600 it", path)
        return found[0]
    value = environ.get(SOURCE_URL_ENV, "").strip()
    if value:
        return value
    raise SourceError(
        f"no source database given: pass a URL, a file holding it, or set ${SOURCE_URL_ENV}"
    )


# --------------------------------------------------------------------------------------------
# errors

_UNREACHABLE = {2002, 2003, 2005, 2006, 2013, 2026}
# the server ended a session that was working: shutdown in progress, connection killed,
# gone away (2006) or lost during a query (2013); 2006/2013 while connecting stay _UNREACHABLE
_LOST = {1053, 1927}
_AUTH = {1044, 1045, 1698}
_UNKNOWN_DB = {1049}
_NO_TABLE = {1146}
_NO_COLUMN = {1054}


def _driver_code_and_text(exc: BaseException) -> tuple[int | None, str]:
    orig = getattr(exc, "orig", None) or exc
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    code = args[0] if args and isinstance(args[0], int) else None
    text = str(args[1]) if code is not None and len(args) > 1 else str(orig)
    return code, text


def translate_error(exc: BaseException, url: str | URL, doing: str) -> SourceError:
    """Map a driver/SQLAlchemy error to a :class:`SourceError` that says what to fix.

    The message names the masked URL and the driver's own words; the password is
    removed from anything the driver said. Chain it: ``raise translate_error(...) from exc``
    (SQLAlchemy's own message holds the statement and its bound ids, never the URL).

    Args:
        exc: the exception raised by the driver or SQLAlchemy.
        url: the URL in use.
        doing: what was being done, e.g. ``"reading table 'ratings'"``.
    """
    parsed = parse_source_url(url)
    where = mask_url(parsed)
    code, text = _driver_code_and_text(exc)
    if parsed.password:
        text = text.replace(parsed.password, "***")
    low = text.lower()
    if code in _LOST or (code in (2006, 2013) and ("during query" in low or "gone away" in low)):
        return SourceConnectionError(
            f"{doing}: lost the connection to the source database {where} ({text}): the "
            "server restarted or failed over, the session was killed, or the network dropped "
            "it; try again"
        )
    if code in _AUTH or "access denied" in low or "authentication" in low:
        return SourceConnectionError(
            f"access denied by the source database {where} for user {parsed.username!r}: "
            f"wrong user name or password, or missing privileges ({text}); check the URL in "
            f"${SOURCE_URL_ENV} or the --source-file"
        )
    if code in _UNREACHABLE or (code is None and isinstance(exc, sa.exc.OperationalError)
                                and "unable to open database file" in low):
        return SourceConnectionError(
            f"cannot connect to the source database {where}: {text}; check the host, port "
            "and network path (security group, VPN), and that the server is running"
        )
    if code in _UNKNOWN_DB:
        return SourceConnectionError(
            f"the source database {where} does not exist on the server ({text}); check the "
            "database name at the end of the URL"
        )
    if code in _NO_TABLE or "no such table" in low:
        return SourceSchemaError(f"{doing}: a table is missing in the source database {where}: "
                                 f"{text}")
    if code in _NO_COLUMN or "no such column" in low:
        return SourceSchemaError(f"{doing}: a column is missing in the source database {where}: "
                                 f"{text}")
    return SourceError(f"{doing} failed on the source database {where}: {text}")


# --------------------------------------------------------------------------------------------
# creating and filling a database


def create_schema(engine: Engine, *, replace: bool = False) -> None:
    """Create the source tables (with ``replace``, drop ours first).

    Raises:
        SourceError: the database cannot be reached or written.
    """
    try:
        if replace:
            METADATA.drop_all(engine)
        METADATA.create_all(engine)
    except sa.exc.DBAPIError as exc:
        raise translate_error(exc, engine.url, "creating the source schema") from exc


def _python_rows(name: str, frame: Any, batch_rows: int) -> Iterator[list[dict[str, Any]]]:
    """Batches of rows as dicts of Python values: naive UTC datetimes, dates, lists, None."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    columns = [c.name for c in source_table(name).columns if c.name in table.column_names]
    table = table.select(columns)
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            table = table.set_column(i, field.name,
                                     table.column(i).cast(pa.timestamp("us", tz="UTC"))
                                     .cast(pa.timestamp("us")))
    for offset in range(0, table.num_rows, batch_rows):
        yield table.slice(offset, batch_rows).to_pylist()


def _insert(conn: sa.Connection, name: str, frame: Any, batch_rows: int) -> int:
    table = source_table(name)
    n = 0
    for rows in _python_rows(name, frame, batch_rows):
        conn.execute(table.insert(), rows)  # executemany with bound parameters
        n += len(rows)
    return n


def fill_database(url: str | URL, cfg: SynthConfig, *, replace: bool = False,
                  insecure: bool = False) -> tuple[str, dict[str, int]]:
    """``preassign synth --db``: fill the database at ``url`` with a synthetic lake's data.

    Args:
        url: the database (its password may come from ``$PREASSIGN_SOURCE_URL``).
        cfg: what to generate.
        replace: replace tables that already hold rows.
        insecure: allow a remote MySQL without verified TLS (``--insecure-db``).

    Returns:
        ``(the masked URL, rows written per table)``.
    """
    from .dbsecurity import check_source_transport

    resolved = url if isinstance(url, URL) else resolve_source_url(url)
    check_source_transport(parse_source_url(resolved), insecure=insecure)
    log.info("event=synth_db_start users=%d db=%s", cfg.users, mask_url(resolved))
    return mask_url(resolved), load_synthetic(create_engine_from_url(resolved), cfg,
                                              replace=replace)


def load_synthetic(
    engine: Engine,
    cfg: SynthConfig,
    *,
    batch_rows: int = 10_000,
    replace: bool = False,
) -> dict[str, int]:
    """Fill a database with the synthetic data ``preassign synth`` would write as a lake.

    Exactly the rows of :func:`~preassign.synth.generate_snacks`,
    :func:`~preassign.synth.generate_stock` and
    :func:`~preassign.synth.generate_partition` for every partition, inserted one
    partition at a time (memory bounded by ``cfg.users_per_partition``) in batches of
    ``batch_rows`` rows (``executemany`` with bound parameters), one transaction per
    partition. Append-only rows get increasing ``row_id`` in the lake's order.

    Args:
        engine: the target database (see :func:`create_engine_from_url`).
        cfg: what to generate.
        batch_rows: rows per ``executemany``.
        replace: drop and re-create the schema's tables first; otherwise they must
            be empty (or absent).

    Returns:
        Rows inserted per table.

    Raises:
        SourceError: the tables already hold rows (without ``replace``), or the
            database cannot be written.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    create_schema(engine, replace=replace)
    rows: dict[str, int] = {}
    try:
        with engine.begin() as conn:
            filled = [name for name in TABLE_ORDER
                      if conn.execute(sa.select(sa.literal(1)).select_from(source_table(name))
                                      .limit(1)).first() is not None]
            if filled:
                raise SourceError(
                    f"the source database {mask_url(engine.url)} already holds rows in "
                    f"{', '.join(filled)}; load into an empty database or pass replace=True"
                )
            rows["snacks"] = _insert(conn, "snacks", generate_snacks(cfg), batch_rows)
            rows["stock"] = _insert(conn, "stock", generate_stock(cfg), batch_rows)
        for index in range(cfg.partitions):
            tables = generate_partition(cfg, index)
            with engine.begin() as conn:
                for name in USER_KEYED:
                    rows[name] = rows.get(name, 0) + _insert(conn, name, tables[name], batch_rows)
            log.debug("loaded partition %d/%d", index + 1, cfg.partitions)
    except sa.exc.DBAPIError as exc:
        raise translate_error(exc, engine.url, "loading synthetic data") from exc
    return rows


if __name__ == "__main__":  # pragma: no cover - regenerates preassign/sql/schema_mysql.sql
    import sys

    sys.stdout.write(render_mysql_ddl())
