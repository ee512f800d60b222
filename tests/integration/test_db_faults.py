"""Database faults during extraction: a clean error, the previous lake version intact.

Each test extracts a first version, breaks a second extraction part-way through (after
the client has planned it, while a range task reads), and checks that:

* the extraction raises a :class:`SourceError` that says what happened, with the masked
  URL and never the password (not even in the traceback);
* ``_CURRENT`` still names the first version, no other version looks complete, the lake
  reads back unchanged and ``run_preassignment`` on it gives the reference result;
* a re-run of the extraction succeeds and gives the same tables.

Faults on MariaDB (marked ``db``): the range task's connection killed from a second
connection (``KILL CONNECTION``), the connection cut by the network (a TCP proxy from
``tests/faultproxy.py`` that closes it after N bytes) or black-holed (the proxy stops
forwarding; the URL's ``read_timeout`` ends the wait), a lock wait timeout (``LOCK
TABLES ... WRITE`` held by another session: a plain ``SELECT`` waits for the metadata
lock, up to ``lock_wait_timeout``), and a restart of the server (a private, short-lived
MariaDB, so the session's server is never disturbed). On SQLite: the database locked by
another connection (``BEGIN EXCLUSIVE``) with a short busy timeout.

To make "part-way through" deterministic, the range tasks run on Dask's synchronous
scheduler and are parked on a lock of ``genre_prefs`` (read only by range tasks, after
``users``, ``ratings``, ``deliveries``, ``ng_snacks`` and ``avoid_ingredients``).

The MariaDB faults run with both range readers (``reader="stream"``: PyMySQL, one
connection per range task; ``reader="fast"``: ConnectorX, one connection per table and
range), except the black hole: only PyMySQL's ``read_timeout`` ends that wait (a URL
with ``read_timeout`` streams; ConnectorX has no read timeout, and its TCP keepalive
cannot see a proxy whose kernel keeps acknowledging). On SQLite the fast reader meets a
table renamed away mid-extraction.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import gc
import getpass
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import dask
import pytest

import preassign.extract as extract_mod
from preassign.extract import extract_lake
from preassign.fastread import (
    KEEPALIVE_IDLE_MS,
    TCP_USER_TIMEOUT_MS,
    choose_reader,
    connection_string,
    read_arrow,
)
from preassign.lake import MANIFEST, POINTER
from preassign.pipeline import RunConfig, run_preassignment
from preassign.source import (
    SourceError,
    SourceSchemaError,
    create_engine_from_url,
    load_synthetic,
    parse_source_url,
)
from preassign.synth import SynthConfig, write_lake
from tests.support.faultproxy import TcpFaultProxy, live_threads
from tests.support.services import (
    MariaDB,
    _start_mariadb,
    _stop,
    _wait_ready,
    assert_lakes_equal,
    find_binary,
    free_port,
    make_test_ca,
    read_lake_tables,
    read_run_outputs,
)

pytestmark = [
    pytest.mark.timeout(120),
    # PyMySQL's unbuffered (server-side) cursor, once its connection is gone, raises from
    # SSCursor.close / MySQLResult.__del__ when garbage-collected: printed, harmless
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function (SSCursor.close|MySQLResult.__del__)"
        ":pytest.PytestUnraisableExceptionWarning"),
]

CFG = SynthConfig(users=240, snacks=40, users_per_partition=80, seed=23)
DATES = (dt.date(2026, 12, 1), dt.date(2026, 12, 5))
PARKED = "genre_prefs"  # the table the range tasks are parked on
READERS = ["stream", "fast"]


# --------------------------------------------------------------------------------------------
# helpers


def _pointer(lake: pathlib.Path) -> str:
    return (lake / POINTER).read_text().strip()


def _versions(lake: pathlib.Path) -> list[str]:
    return sorted(p.name for p in lake.iterdir() if p.name.startswith("v-"))


def _extract(url: str, lake: pathlib.Path, reader: str = "auto") -> dict[str, Any]:
    with dask.config.set(scheduler="sync"):
        return extract_lake(url, str(lake), users_per_partition=CFG.users_per_partition,
                            reader=reader)


def _run(lake: str, out: str) -> dict[str, Any]:
    with dask.config.set(scheduler="sync"):
        run_preassignment(RunConfig(lake=lake, date_from=DATES[0], date_to=DATES[1], out=out))
    return read_run_outputs(out)


def _assert_no_secret(exc: BaseException, *secrets: str) -> None:
    text = "".join(traceback.format_exception(exc))
    for secret in secrets:
        assert secret and secret not in text, "the password is in the error or its traceback"
        assert urllib.parse.quote(secret, safe="") not in text, "the quoted password leaked"


@pytest.fixture(autouse=True)
def _no_threads_left() -> Iterator[None]:
    yield
    assert not list(live_threads()), f"proxy threads still running: {list(live_threads())}"
    left = [t for t in threading.enumerate() if t.name.startswith("db-faults-extract")]
    assert not left, f"extraction threads still running: {left}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Any]:
    """The run on the synthetic lake that every extraction of CFG reproduces."""
    root = tmp_path_factory.mktemp("db-faults-reference")
    write_lake(CFG, str(root / "lake"))
    return _run(str(root / "lake"), str(root / "out"))


class Scenario:
    """A first extraction, then the checks every fault shares."""

    def __init__(self, url: str, root: pathlib.Path, reference: dict[str, Any],
                 reader: str = "auto"):
        self.url, self.root, self.reference, self.reader = url, root, reference, reader
        self.lake = root / "lake"
        self.first = _extract(url, self.lake, reader)
        self.before = read_lake_tables(str(self.lake))

    def check_failed_cleanly(self, exc: BaseException | None, *secrets: str) -> None:
        assert exc is not None, "the extraction did not fail"
        gc.collect()  # the driver's dead cursors go now, under this module's warning filter
        assert isinstance(exc, SourceError), f"not a SourceError: {exc!r}"
        _assert_no_secret(exc, *secrets)
        assert _pointer(self.lake) == self.first["version"]
        complete = [v for v in _versions(self.lake) if (self.lake / v / MANIFEST).exists()]
        assert complete == [self.first["version"]]
        assert_lakes_equal(read_lake_tables(str(self.lake)), self.before)
        got = _run(str(self.lake), str(self.root / f"out-{uuid.uuid4().hex[:6]}"))
        assert got["summary"] == self.reference["summary"]

    def check_rerun(self) -> None:
        again = _extract(self.url, self.lake, self.reader)
        assert again["reader"] == self.first["reader"]
        assert _pointer(self.lake) == again["version"]
        assert _versions(self.lake) == sorted([self.first["version"], again["version"]])
        assert_lakes_equal(read_lake_tables(str(self.lake)), self.before)


def _processlist(server: MariaDB, database: str, table: str) -> list[tuple[int, str]]:
    """(id, state) of the extraction user's statements on ``table``."""
    with server.admin() as conn, conn.cursor() as cur:
        cur.execute("SELECT ID, STATE, INFO FROM information_schema.PROCESSLIST "
                    "WHERE USER = %s AND DB = %s", (server.user, database))
        return [(int(i), s or "") for i, s, info in cur.fetchall()
                if info and f"FROM {table}" in info]


def _wait_parked(server: MariaDB, database: str, future: concurrent.futures.Future,
                 timeout: float = 30.0) -> list[int]:
    """Wait for the extraction's statements waiting for the lock of ``PARKED``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = [i for i, state in _processlist(server, database, PARKED) if "lock" in state]
        if waiting:
            return waiting
        if future.done():
            raise AssertionError(f"the extraction ended before reaching {PARKED}: "
                                 f"{future.exception()!r}")
        time.sleep(0.05)
    raise AssertionError(f"no statement of the extraction waited for {PARKED} in {timeout}s")


@contextlib.contextmanager
def _locked(server: MariaDB, database: str, table: str = PARKED) -> Iterator[Any]:
    """Hold ``LOCK TABLES <table> WRITE`` in another session (released on exit)."""
    with server.admin() as conn, conn.cursor() as cur:
        cur.execute(f"LOCK TABLES `{database}`.`{table}` WRITE")
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):  # the server may be gone (restart test)
                cur.execute("UNLOCK TABLES")


def _in_background(url: str, lake: pathlib.Path, reader: str = "auto"
                   ) -> tuple[concurrent.futures.ThreadPoolExecutor, concurrent.futures.Future]:
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="db-faults-extract")
    return pool, pool.submit(_extract, url, lake, reader)


# --------------------------------------------------------------------------------------------
# MariaDB


@pytest.fixture(scope="module")
def loaded(mariadb_server) -> Iterator[tuple[MariaDB, str]]:
    """CFG loaded into a database of the session's server: (server, database name)."""
    name = mariadb_server.create_database()
    engine = create_engine_from_url(mariadb_server.url(name))
    load_synthetic(engine, CFG)
    engine.dispose()
    yield mariadb_server, name
    mariadb_server.drop_database(name)


@pytest.mark.db
@pytest.mark.parametrize("reader", READERS)
def test_connection_killed_mid_extraction(loaded, reference, tmp_path, reader):
    server, database = loaded
    url = server.url(database)
    scenario = Scenario(url, tmp_path, reference, reader)
    assert scenario.first["reader"] == reader
    with _locked(server, database):
        pool, future = _in_background(url, scenario.lake, reader)
        with pool:
            for connection_id in _wait_parked(server, database, future):
                server.execute(f"KILL CONNECTION {connection_id}")
            exc = future.exception(timeout=60)
    scenario.check_failed_cleanly(exc, server.password)
    message = str(exc)
    assert "mysql+pymysql://preassign:***@127.0.0.1" in message
    assert PARKED in message, f"the error does not say what was being read: {message}"
    scenario.check_rerun()


@pytest.mark.db
@pytest.mark.parametrize("reader", READERS)
def test_connection_cut_by_the_network_mid_extraction(loaded, reference, tmp_path, reader):
    """A TCP proxy closes the second range task's connection after 40 kB of answers
    (the client's planning connection and the first range task's are spared). The fast
    reader opens a connection per table and range: the first range task's ``users`` read
    (under 40 kB) is spared, its ``ratings`` read is cut."""
    server, database = loaded
    scenario = Scenario(server.url(database), tmp_path, reference, reader)
    with TcpFaultProxy(("127.0.0.1", server.port), after_bytes=40_000,
                       spare_first=2) as proxy:
        url = server.url(database, port=proxy.port)
        with pytest.raises(SourceError) as info:
            _extract(url, scenario.lake, reader)
        if reader == "stream":
            assert proxy.broken == 1 and proxy.accepted == 3
        else:  # the range tasks run in no fixed order, and their reads differ in size
            assert proxy.broken == 1 and proxy.accepted >= 3
    scenario.check_failed_cleanly(info.value, server.password)
    message = str(info.value)
    assert f"mysql+pymysql://preassign:***@127.0.0.1:{proxy.port}" in message
    assert "lost" in message.lower() and "ratings" in message, message
    scenario.check_rerun()


@pytest.mark.db
def test_connection_black_holed_mid_extraction(loaded, reference, tmp_path):
    """The network stops delivering without closing anything (a failover's usual face):
    only the driver's read timeout ends the wait, here ``?read_timeout=2`` in the URL.
    Without one, the extraction would wait forever."""
    server, database = loaded
    scenario = Scenario(server.url(database), tmp_path, reference)
    with TcpFaultProxy(("127.0.0.1", server.port), after_bytes=40_000, action="freeze",
                       spare_first=2) as proxy:
        url = server.url(database, port=proxy.port) + "?read_timeout=2"
        # ConnectorX has no read timeout: a URL that asks for one reads with PyMySQL
        assert choose_reader(parse_source_url(url))[0] == "stream"
        started = time.monotonic()
        with pytest.raises(SourceError) as info:
            _extract(url, scenario.lake)
        waited = time.monotonic() - started
        assert proxy.broken == 1
    assert waited < 15
    scenario.check_failed_cleanly(info.value, server.password)
    message = str(info.value)
    assert "timed out" in message and "ratings" in message, message
    scenario.check_rerun()


@pytest.mark.db
@pytest.mark.parametrize("reader", READERS)
def test_lock_wait_timeout_mid_extraction(loaded, reference, tmp_path, reader):
    """``LOCK TABLES genre_prefs WRITE`` in another session makes the range task's plain
    SELECT wait for the metadata lock; ``lock_wait_timeout`` (1 s here) ends the wait.
    (``FLUSH TABLES WITH READ LOCK`` would not block a read; InnoDB row locks do not
    block a consistent-read SELECT, so ``innodb_lock_wait_timeout`` is not involved.)"""
    server, database = loaded
    url = server.url(database)
    scenario = Scenario(url, tmp_path, reference, reader)
    with server.admin() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.lock_wait_timeout")
        (saved,) = cur.fetchone()
    server.execute("SET GLOBAL lock_wait_timeout = 1")  # new sessions (the extraction's)
    try:
        with _locked(server, database):
            started = time.monotonic()
            with pytest.raises(SourceError) as info:
                _extract(url, scenario.lake, reader)
            waited = time.monotonic() - started
    finally:
        server.execute(f"SET GLOBAL lock_wait_timeout = {int(saved)}")
    assert waited < 20
    scenario.check_failed_cleanly(info.value, server.password)
    message = str(info.value)
    assert "Lock wait timeout exceeded" in message and PARKED in message, message
    assert "mysql+pymysql://preassign:***@127.0.0.1" in message
    scenario.check_rerun()


@pytest.mark.db
def test_extraction_waits_are_bounded_by_default(loaded):
    """Without the settings the two tests above shorten, an extraction session waits for
    a metadata lock as long as the server allows (MariaDB: a day, MySQL: a year) and for
    a black-holed connection forever. The engine bounds both; the URL can lower them."""
    server, database = loaded
    for query, expected in (("", None), ("?read_timeout=5", 5)):
        engine = create_engine_from_url(server.url(database) + query)
        try:
            with engine.connect() as conn:
                lock_wait = conn.exec_driver_sql("SELECT @@SESSION.lock_wait_timeout").scalar()
                read_timeout = conn.connection.dbapi_connection._read_timeout  # PyMySQL's
        finally:
            engine.dispose()
        assert lock_wait <= 3600, f"an extraction may wait {lock_wait} s for a table lock"
        assert read_timeout is not None and read_timeout <= 3600, \
            "no read timeout: a black-holed connection hangs the extraction forever"
        if expected is not None:
            assert read_timeout == expected


@pytest.mark.db
def test_fast_reader_waits_are_bounded_by_default(loaded):
    """The fast reader's sessions get the same capped ``lock_wait_timeout`` (and UTC);
    a vanished peer is caught by TCP keepalive and ``TCP_USER_TIMEOUT`` (it has no read
    timeout: a URL with ``read_timeout`` streams instead)."""
    server, database = loaded
    url = parse_source_url(server.url(database))
    assert choose_reader(url)[0] == "fast"
    row = read_arrow(url, "SELECT @@SESSION.lock_wait_timeout AS lock_wait, "
                          "@@SESSION.time_zone AS tz").to_pylist()[0]
    assert row["lock_wait"] <= 3600 and row["tz"] == "+00:00"
    conn = connection_string(url)
    assert f"tcp_keepalive_time_ms={KEEPALIVE_IDLE_MS}" in conn
    assert f"tcp_user_timeout_ms={TCP_USER_TIMEOUT_MS}" in conn
    assert "prefer_socket=false" in conn  # the URL's host and port, never a local socket


@dataclasses.dataclass
class PrivateMariaDB(MariaDB):
    """A server of this module's own, which it may stop and start again."""

    mariadbd: str = ""
    os_user: str = "root"

    def stop(self) -> None:
        _stop(self.process)  # SIGTERM: a clean shutdown that ends every session

    def start(self) -> None:
        self.process = _start_mariadb(self.base, self.mariadbd, self.os_user, self.port)
        assert _wait_ready(self, timeout=60), self.log_tail()


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateMariaDB]:
    """A short-lived MariaDB (made like tests/services.py's), so that restarting it never
    disturbs the session's server."""
    mariadbd = find_binary("mariadbd")
    install_db = find_binary("mariadb-install-db", "mysql_install_db")
    if mariadbd is None or install_db is None:
        if os.environ.get("CI"):
            pytest.fail("MariaDB is not installed (CI is set)", pytrace=False)
        pytest.skip("MariaDB is not installed (apt-get install -y mariadb-server)")
    os_user = "root" if os.geteuid() == 0 else getpass.getuser()
    base = tempfile.mkdtemp(prefix="preassign-restart-")  # short: the socket path is limited
    server: PrivateMariaDB | None = None
    try:
        subprocess.run([install_db, "--no-defaults", f"--user={os_user}",
                        f"--datadir={base}/data", "--auth-root-authentication-method=normal",
                        "--skip-test-db", "--skip-name-resolve"],
                       capture_output=True, timeout=180, check=True)
        make_test_ca(base)
        server = PrivateMariaDB(base=base, port=free_port(), process=None,  # type: ignore[arg-type]
                                password=f"R3st@rt:{uuid.uuid4().hex[:8]}/%",
                                mariadbd=mariadbd, os_user=os_user)
        server.start()
        quoted = server.password.replace("'", "''")
        server.execute(f"CREATE USER '{server.user}'@'127.0.0.1' IDENTIFIED BY '{quoted}'",
                       f"GRANT ALL PRIVILEGES ON *.* TO '{server.user}'@'127.0.0.1'")
        yield server
    finally:
        if server is not None and server.process is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.db
@pytest.mark.parametrize("reader", READERS)
def test_server_restart_mid_extraction(private_server, reference, tmp_path, reader):
    server = private_server
    database = server.create_database()
    url = server.url(database)
    engine = create_engine_from_url(url)
    load_synthetic(engine, CFG)
    engine.dispose()
    scenario = Scenario(url, tmp_path, reference, reader)
    with _locked(server, database):
        pool, future = _in_background(url, scenario.lake, reader)
        with pool:
            _wait_parked(server, database, future)
            server.stop()
            exc = future.exception(timeout=60)
    server.start()
    scenario.check_failed_cleanly(exc, server.password)
    message = str(exc)
    assert "mysql+pymysql://preassign:***@127.0.0.1" in message
    assert PARKED in message, f"the error does not say what was being read: {message}"
    scenario.check_rerun()


# --------------------------------------------------------------------------------------------
# SQLite


def test_sqlite_locked_mid_extraction(reference, tmp_path, monkeypatch):
    """Another connection takes an exclusive lock once the extraction has planned its
    ranges; the range task's read gives up after the URL's busy timeout (0.3 s)."""
    path = tmp_path / "source.db"
    load_synthetic(create_engine_from_url(f"sqlite:///{path}"), CFG)
    url = f"sqlite:///{path}?timeout=0.3"
    scenario = Scenario(url, tmp_path, reference)
    assert scenario.first["reader"] == "stream"  # ConnectorX has no busy timeout option
    locker = sqlite3.connect(path, isolation_level=None)
    real = extract_mod.write_small_table

    def lock_then_write(*args: Any, **kwargs: Any) -> None:
        if not locker.in_transaction:
            locker.execute("BEGIN EXCLUSIVE")
        real(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "write_small_table", lock_then_write)
    try:
        with pytest.raises(SourceError) as info:
            _extract(url, scenario.lake)
    finally:
        if locker.in_transaction:
            locker.rollback()
        locker.close()
    monkeypatch.setattr(extract_mod, "write_small_table", real)
    scenario.check_failed_cleanly(info.value)
    assert "database is locked" in str(info.value), info.value
    scenario.check_rerun()



def test_sqlite_table_renamed_mid_extraction_fast_reader(reference, tmp_path, monkeypatch):
    """The fast reader on SQLite: a table renamed away (by another process) once the
    extraction has planned its ranges fails the range read cleanly, naming the table and
    the user-id range. (A lock held by another process makes it wait 5 s, ConnectorX's
    SQLite busy timeout, then fail with "database is locked"; locks taken by Python's
    ``sqlite3`` in the same process it does not see: it links its own SQLite.)"""
    path = tmp_path / "source.db"
    load_synthetic(create_engine_from_url(f"sqlite:///{path}"), CFG)
    url = f"sqlite:///{path}"
    scenario = Scenario(url, tmp_path, reference, "fast")
    real = extract_mod.write_small_table

    def rename(old: str, new: str) -> None:
        subprocess.run([sys.executable, "-c", "import sqlite3, sys; "
                        "sqlite3.connect(sys.argv[1]).execute(sys.argv[2])", str(path),
                        f"ALTER TABLE {old} RENAME TO {new}"], check=True, timeout=60)

    def rename_then_write(*args: Any, **kwargs: Any) -> None:
        if args[1] == "snacks":
            rename(PARKED, f"{PARKED}_away")
        real(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "write_small_table", rename_then_write)
    try:
        with pytest.raises(SourceError) as info:
            _extract(url, scenario.lake, "fast")
    finally:
        rename(f"{PARKED}_away", PARKED)
    monkeypatch.setattr(extract_mod, "write_small_table", real)
    scenario.check_failed_cleanly(info.value)
    message = str(info.value)
    assert isinstance(info.value, SourceSchemaError), message
    assert f"reading table '{PARKED}', user ids" in message and "no such table" in message
    scenario.check_rerun()
