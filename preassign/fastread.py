"""Arrow-native bulk reads of the source database (ConnectorX), and when they can be used.

Which reader
------------
An extraction reads the user-keyed tables range by range (:mod:`preassign.extract`) with
one of two readers, chosen once per extraction by :func:`choose_reader`:

* ``"fast"``: ConnectorX (``connectorx.read_sql(conn, query, return_type="arrow")``, a
  Rust client that decodes the wire protocol straight into Arrow arrays, no Python
  object per value). Then :func:`to_lake_types` casts the columns to the lake's compact
  types (:data:`preassign.lake.ARROW_SCHEMAS`), vectorised.
* ``"stream"``: SQLAlchemy + PyMySQL (or ``sqlite3``) with a server-side cursor, rows
  converted to Arrow chunk by chunk: the reference, and the fallback.

``"auto"`` (the default; ``$PREASSIGN_EXTRACT_READER`` may set ``fast`` or ``stream``)
takes the fast reader when it can honour everything the URL asks for
(:func:`fast_reader_blockers`), else the streaming one, and logs why:

* MySQL/MariaDB: fast unless the URL holds an option ConnectorX has no equivalent for.
  **TLS** (``ssl_ca``, ``ssl_cert``, ``ssl_key``, ``ssl_check_hostname``, ...) is one:
  ConnectorX 0.4's MySQL source is the ``mysql`` crate (25.x) opened from a URL, and that
  URL takes no TLS option at all (``require_ssl``, ``verify_ca``, a CA file: all "Unknown
  URL parameter"), so it can neither encrypt nor verify the server; a TLS URL therefore
  reads with PyMySQL. So does a URL with ``read_timeout``/``write_timeout`` (the crate's
  URL has no read timeout either; see *Bounded waits*), a character set other than
  utf8mb4/utf8, a socket, or any other driver option. ``connect_timeout`` is mapped.
* SQLite: fast for a plain ``sqlite:///path``; a URL with options (``?timeout=0.3``) or a
  ``file:`` URI streams. ConnectorX links its own SQLite library: its locks and those of
  Python's ``sqlite3`` *in the same process* do not see each other (another process's
  locks it respects, waiting 5 s as ``sqlite3`` does).
* Other backends stream.

The snack-keyed tables (``snacks``, ``stock``: a few hundred rows read on the client)
always stream: they are not bulk reads, and ConnectorX's SQLite source cannot type a
``JSON`` column whose first value is NULL (``snacks.ingredients``), whereas SQLAlchemy's
JSON decoding keeps NULL and ``[]`` distinct as the lake needs.

A fast read that fails on something other than the database or the connection (a value
ConnectorX cannot convert, e.g. a SQLite ``DATETIME`` holding a bare date, or a column
type it does not know) is re-read with the streaming reader (:class:`FastReadUnsupported`,
logged), so the fast reader never changes what an extraction accepts or produces.

Queries
-------
The SQL text is SQLAlchemy Core compiled with literal binds (:func:`compile_query`),
refused unless every bound value is an ``int`` (the user-id bounds and ``row_id``
watermarks): no text from outside the schema ever reaches it.

Bounded waits
-------------
Each fast read opens one connection (a pool of one, closed after the read), runs the
session statements of :func:`session_statements` first (UTC ``time_zone`` and
``lock_wait_timeout`` capped at :data:`preassign.source.LOCK_WAIT_SECONDS`, as the
streaming reader's ``init_command`` does), connects within ``connect_timeout`` (10 s
unless the URL says otherwise), and on Linux sets TCP keepalive and ``TCP_USER_TIMEOUT``
(:data:`KEEPALIVE_IDLE_MS`, :data:`TCP_USER_TIMEOUT_MS`): a peer that vanishes (packets
dropped, as in a failover) fails the read in about two minutes. Unlike PyMySQL's
``read_timeout`` this does not catch a middlebox that keeps acknowledging TCP but stops
forwarding (the fault proxy's "freeze"): ConnectorX has no application-level read
timeout. Give ``?read_timeout=N`` in the URL to get one; the extraction then streams.
A connection that cannot be made is retried by ConnectorX's pool for up to 30 s (and
each attempt printed on stderr by its Rust logger) before the read fails.

Errors
------
ConnectorX raises ``RuntimeError`` with the Rust error's text. :func:`read_arrow` scrubs
it (any URL in it is replaced by the masked source URL, the password by ``***``), reads
the MySQL error code when there is one, and :func:`preassign.source.translate_error`
turns it into the same :class:`~preassign.source.SourceError` messages the streaming
reader gives (lost connection, access denied, missing table, ...), naming what was read.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import URL

from .errors import UsageError
from .lake import ARROW_SCHEMAS
from .source import LOCK_WAIT_SECONDS, SourceError, mask_url, translate_error

__all__ = [
    "KEEPALIVE_IDLE_MS",
    "READERS",
    "READER_ENV",
    "TCP_USER_TIMEOUT_MS",
    "FastReadError",
    "FastReadUnsupported",
    "choose_reader",
    "compile_query",
    "connection_string",
    "fast_reader_blockers",
    "is_sorted_by_user",
    "misfit_error",
    "read_arrow",
    "read_table",
    "session_statements",
    "to_lake_types",
]

#: Reader names ``extract_lake(reader=...)`` takes.
READERS: tuple[str, ...] = ("auto", "fast", "stream")
#: Environment variable that sets the reader when the call says ``"auto"``.
READER_ENV = "PREASSIGN_EXTRACT_READER"
#: Idle time before TCP keepalive probes start on a fast-read connection.
KEEPALIVE_IDLE_MS = 60_000
#: Linux: a connection whose data or keepalive probes stay unacknowledged this long is closed.
TCP_USER_TIMEOUT_MS = 120_000
_KEEPALIVE_INTERVAL_S = 10
_KEEPALIVE_PROBES = 6
#: PyMySQL's default connect timeout, used when the URL gives none.
_CONNECT_TIMEOUT_S = 10.0
_MYSQL = ("mysql", "mariadb")
_UTF8 = ("utf8mb4", "utf8", "utf8mb3")
_PROTOCOL: Final = "binary"  # prepared statements: faster than "text" here


class FastReadError(Exception):
    """A ConnectorX error, its text scrubbed: ``args`` is ``(mysql_code, text)`` or ``(text,)``."""


class FastReadUnsupported(FastReadError):
    """ConnectorX read the rows but could not convert them: re-read with the streaming reader."""


# --------------------------------------------------------------------------------------------
# choosing the reader


def _connectorx_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("connectorx")
    except PackageNotFoundError:
        return None


def _query_items(url: URL) -> list[tuple[str, str]]:
    items = []
    for key, value in url.query.items():
        values = (value,) if isinstance(value, str) else tuple(value)
        items += [(key, v) for v in values]
    return items


def fast_reader_blockers(url: URL) -> list[str]:
    """Why the fast reader cannot read this source as the URL asks (empty: it can).

    Examples:
        >>> fast_reader_blockers(sa.engine.make_url("sqlite:///x.db"))
        []
        >>> fast_reader_blockers(sa.engine.make_url("mysql+pymysql://u@h/d?ssl_ca=/ca.pem"))
        ['TLS (ssl_ca): ConnectorX 0.4 reads MySQL without TLS (its URL takes no CA file)']
    """
    backend = url.get_backend_name()
    blockers: list[str] = []
    if backend == "sqlite":
        if url.query:
            blockers.append(f"SQLite URL options ({', '.join(sorted(url.query))})")
        if (url.database or "").startswith("file:"):
            blockers.append("a SQLite file: URI")
    elif backend in _MYSQL:
        keys = sorted({key for key, _ in _query_items(url)})
        tls = [k for k in keys if k.startswith("ssl")]
        if tls:
            blockers.append(f"TLS ({', '.join(tls)}): ConnectorX 0.4 reads MySQL without TLS "
                            "(its URL takes no CA file)")
        timeouts = [k for k in keys if k in ("read_timeout", "write_timeout")]
        if timeouts:
            blockers.append(f"{', '.join(timeouts)}: ConnectorX has no read/write timeout")
        charset = [v for k, v in _query_items(url) if k == "charset" and v.lower() not in _UTF8]
        if charset:
            blockers.append(f"charset {charset[0]}: ConnectorX reads utf8mb4 only")
        other = [k for k in keys if not k.startswith("ssl") and k not in (
            "read_timeout", "write_timeout", "charset", "connect_timeout")]
        if other:
            blockers.append(f"driver option(s) {', '.join(other)} ConnectorX has no "
                            "equivalent for")
    else:
        blockers.append(f"the {backend} backend (fast reads: MySQL/MariaDB and SQLite)")
    if not blockers and _connectorx_version() is None:
        blockers.append("connectorx is not installed")
    return blockers


def choose_reader(url: URL, reader: str = "auto",
                  environ: Any = None) -> tuple[str, str]:
    """The reader an extraction of ``url`` uses: ``("fast" | "stream", why)``.

    Args:
        url: the source URL.
        reader: ``"auto"`` (fast when :func:`fast_reader_blockers` finds nothing; the
            environment variable :data:`READER_ENV` may say ``fast`` or ``stream``
            instead), ``"fast"`` or ``"stream"``.
        environ: the environment to read (default ``os.environ``).

    Raises:
        UsageError: an unknown reader name, or ``"fast"`` for a URL the fast reader
            cannot honour (the message says why).
    """
    environ = os.environ if environ is None else environ
    asked, source = reader, "the call"
    if reader == "auto" and environ.get(READER_ENV, "").strip():
        asked, source = environ[READER_ENV].strip().lower(), f"${READER_ENV}"
    if asked not in READERS:
        raise UsageError(f"unknown extraction reader {asked!r} (from {source}); "
                         f"expected one of {', '.join(READERS)}")
    if asked == "stream":
        return "stream", f"asked for by {source}"
    blockers = fast_reader_blockers(url)
    if not blockers:
        return "fast", f"ConnectorX {_connectorx_version()}"
    if asked == "fast":
        raise UsageError(f"the fast (ConnectorX) reader cannot read {mask_url(url)} as asked: "
                         f"{'; '.join(blockers)}; use reader='stream' or 'auto'")
    return "stream", "; ".join(blockers)


# --------------------------------------------------------------------------------------------
# connecting


def connection_string(url: URL) -> str:
    """ConnectorX's connection string for ``url``. It holds the password: never log it.

    MySQL: ``mysql://user:password@host:port/db?prefer_socket=false&...`` (the host and
    port of the URL, never a local socket it might find), with the connect timeout and,
    on Linux, TCP keepalive and ``TCP_USER_TIMEOUT``. SQLite: ``sqlite://`` and the
    absolute path.

    Raises:
        SourceError: the URL is not one the fast reader serves.
    """
    backend = url.get_backend_name()
    if backend == "sqlite":
        return "sqlite://" + urllib.parse.quote(os.path.abspath(url.database or ""))
    if backend not in _MYSQL:
        raise SourceError(f"the fast reader does not read {backend} sources")
    user = urllib.parse.quote(url.username or "", safe="")
    if url.password is not None:
        user += ":" + urllib.parse.quote(str(url.password), safe="")
    host = url.host or "localhost"
    if ":" in host:
        host = f"[{host}]"
    connect = dict(_query_items(url)).get("connect_timeout")
    params: dict[str, Any] = {
        "prefer_socket": "false",
        "tcp_connect_timeout_ms": int(float(connect or _CONNECT_TIMEOUT_S) * 1000),
        "tcp_keepalive_time_ms": KEEPALIVE_IDLE_MS,
    }
    if sys.platform.startswith("linux"):
        params.update(tcp_keepalive_probe_interval_secs=_KEEPALIVE_INTERVAL_S,
                      tcp_keepalive_probe_count=_KEEPALIVE_PROBES,
                      tcp_user_timeout_ms=TCP_USER_TIMEOUT_MS)
    database = urllib.parse.quote(url.database or "", safe="")
    return (f"mysql://{user}@{host}:{url.port or 3306}/{database}?"
            + urllib.parse.urlencode(params))


def session_statements(url: URL) -> list[str]:
    """Statements run on each fast-read connection before its query (MySQL only).

    The same session settings the streaming reader's ``init_command`` makes: UTC, and a
    metadata-lock wait capped at :data:`preassign.source.LOCK_WAIT_SECONDS`.
    """
    if url.get_backend_name() not in _MYSQL:
        return []
    return ["SET time_zone = '+00:00'",
            f"SET lock_wait_timeout = LEAST(@@GLOBAL.lock_wait_timeout, {LOCK_WAIT_SECONDS})"]


# --------------------------------------------------------------------------------------------
# queries


def compile_query(stmt: sa.Select, url: URL) -> str:
    """The SQL text of ``stmt`` for the source's dialect, integer bounds inlined.

    Raises:
        TypeError: a bound value is not an ``int`` (only ids and watermarks may be
            inlined; anything else would be text from outside the schema).
    """
    dialect = sqlite.dialect() if url.get_backend_name() == "sqlite" else mysql.dialect()
    for key, value in stmt.compile(dialect=dialect).params.items():
        if type(value) is not int:
            raise TypeError(f"refusing to inline the bound value {key!r} of type "
                            f"{type(value).__name__} into SQL text (only int bounds)")
    return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


# --------------------------------------------------------------------------------------------
# reading

_MYSQL_ERROR = re.compile(r"ERROR (\d+) \(\w+\): (.*?)\s*\}*\s*$", re.DOTALL)
_URL_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`]+")
_CONNECTING = ("timed out waiting for connection", "Could not connect", "Connection refused")
_LOST = ("IoError", "CodecError", "DriverError", "server disconnected", "Packets out of sync",
         "Broken pipe", "Connection reset", "unexpected end of file")
_SQLITE_DB = ("database is locked", "no such table", "no such column", "unable to open",
              "SqliteFailure", "disk I/O error", "database disk image is malformed",
              "file is not a database", "readonly database", "interrupted")


def _scrub(text: str, url: URL) -> str:
    """``text`` without the password, any URL in it replaced by the masked source URL."""
    text = _URL_TEXT.sub(lambda _: mask_url(url), text)
    password = url.password
    if password:
        for form in {str(password), urllib.parse.quote(str(password), safe=""),
                     urllib.parse.quote(str(password)), urllib.parse.quote_plus(str(password))}:
            text = text.replace(form, "***")
    return text


def _classify(exc: BaseException, url: URL) -> FastReadError:
    text = _scrub(str(exc), url)
    match = _MYSQL_ERROR.search(text)
    if match is not None:
        return FastReadError(int(match[1]), match[2])
    if url.get_backend_name() in _MYSQL:
        if any(s in text for s in _CONNECTING):
            return FastReadError(2003, f"Can't connect to the server ({text})")
        if any(s in text for s in _LOST):
            return FastReadError(2013, f"Lost connection to the server during query ({text})")
        if "UrlError" in text or "URL parameter" in text:
            return FastReadError(text)
    elif any(s in text for s in _SQLITE_DB):
        return FastReadError(text)
    return FastReadUnsupported(text)


def read_arrow(url: URL, query: str) -> pa.Table:
    """Run one query with ConnectorX and return its result as ConnectorX types it.

    Raises:
        FastReadError: the database or the connection failed (``args``: the MySQL
            error code when there is one, and the scrubbed text).
        FastReadUnsupported: ConnectorX could not convert the result.
    """
    try:
        import connectorx as cx
    except ImportError as exc:  # a worker without it: the streaming reader still works
        raise FastReadUnsupported(f"connectorx cannot be imported here ({exc})") from None
    conn = connection_string(url)
    try:
        table = cx.read_sql(conn, query, return_type="arrow", protocol=_PROTOCOL,
                            pre_execution_query=session_statements(url) or None)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - RuntimeError, and Rust panics (BaseException)
        error = _classify(exc, url)
    else:
        return table
    raise error from None  # the original text may hold the URL: never chain it


def read_table(url: URL, name: str, stmt: sa.Select, doing: str) -> pa.Table:
    """Read ``stmt`` (columns named as the lake's table ``name``) in the lake's types.

    Raises:
        SourceError: the database or the connection failed (the message names
            ``doing``, the masked URL and what to fix), or a value does not fit the
            lake's type.
        FastReadUnsupported: ConnectorX could not convert the result (read it with the
            streaming reader instead).
    """
    try:
        table = read_arrow(url, compile_query(stmt, url))
    except FastReadUnsupported:
        raise
    except FastReadError as exc:
        raise translate_error(exc, url, doing) from exc
    return to_lake_types(name, table)


# --------------------------------------------------------------------------------------------
# the lake's types


def misfit_error(name: str, field: pa.Field, example: Any, exc: BaseException) -> SourceError:
    """The error for a source value the lake's column type cannot hold."""
    return SourceError(
        f"table {name!r}, column {field.name!r}: cannot store the source's values as "
        f"the lake's {field.type} (e.g. {example!r}: {exc}); fix the column's type or "
        "values in the source"
    )


def _cast(column: pa.ChunkedArray, type_: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_timestamp(type_) and pa.types.is_timestamp(column.type) \
            and column.type.tz is None:
        # DATETIME values are UTC wall-clock times: keep them, then say so
        column = column.cast(pa.timestamp(type_.unit))
    return column.cast(type_)


def _fits(array: pa.Array, type_: pa.DataType) -> bool:
    try:
        _cast(pa.chunked_array([array], type=array.type), type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False
    return True


def _first_misfit(column: pa.ChunkedArray, type_: pa.DataType) -> Any:
    """The first value that does not fit ``type_`` (bisection: a few casts, not one a row)."""
    array = column.combine_chunks()
    lo, hi = 0, len(array)
    if hi == 0 or _fits(array, type_):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(array.slice(lo, mid - lo), type_):
            lo = mid
        else:
            hi = mid
    return array[lo].as_py()


def to_lake_types(name: str, table: pa.Table) -> pa.Table:
    """Cast a query result to the lake's compact types of ``name`` (safe casts only).

    ``DATETIME`` values (naive) become UTC timestamps, ``DATE`` values where a timestamp
    is expected become midnight UTC (SPEC §2 allows it), wider integers narrow when every
    value fits.

    Raises:
        SourceError: a value does not fit (the message names the table, column and an
            example), or a column is missing from the result.
    """
    schema = ARROW_SCHEMAS[name]
    arrays = []
    for field in schema:
        if field.name not in table.column_names:
            raise SourceError(f"table {name!r}: the query returned no column {field.name!r}")
        column = table.column(field.name)
        try:
            arrays.append(_cast(column, field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise misfit_error(name, field, _first_misfit(column, field.type), exc) from None
    return pa.Table.from_arrays(arrays, schema=schema)


def is_sorted_by_user(table: pa.Table) -> bool:
    """Whether ``user_id`` never decreases and holds no null (no sort needed)."""
    user_id = table.column("user_id")
    if user_id.null_count:
        return False
    if len(user_id) < 2:
        return True
    return bool(pc.all(pc.less_equal(user_id[:-1], user_id[1:])).as_py())
