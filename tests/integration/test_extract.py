"""Extraction from a SQL source into a versioned, co-partitioned lake (preassign.extract).

The same tests run on SQLite (always) and on a real MariaDB server (marked ``db``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import traceback
import urllib.parse

import dask
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

import preassign.extract as extract_mod
import preassign.fastread as fastread
from preassign.core.contract import USER_KEYED, LakeError
from preassign.errors import UsageError
from preassign.extract import ID_MAX, ID_MIN, extract_lake, partition_bounds
from preassign.fastread import READER_ENV, choose_reader, compile_query
from preassign.lake import MANIFEST, POINTER, Lake, open_lake
from preassign.pipeline import RunConfig, run_preassignment
from preassign.source import (
    APPEND_ONLY,
    SourceConnectionError,
    SourceError,
    SourceSchemaError,
    create_engine_from_url,
    create_schema,
    load_synthetic,
    parse_source_url,
    source_table,
)
from preassign.synth import SynthConfig, write_lake
from tests.support.services import (
    append_source_changes,
    assert_lakes_equal,
    assert_runs_equal,
    free_port,
    make_test_ca,
    read_lake_tables,
    read_run_outputs,
)

REPO = pathlib.Path(__file__).parents[2]
CFG = SynthConfig(users=900, snacks=80, users_per_partition=300, seed=11)
SMALL = SynthConfig(users=300, snacks=50, users_per_partition=100, seed=5)
DATES = (dt.date(2026, 12, 1), dt.date(2026, 12, 7))


def run(lake: str, out: str, storage_options: dict | None = None) -> dict:
    run_preassignment(RunConfig(lake=lake, date_from=DATES[0], date_to=DATES[1], out=out,
                                storage_options=storage_options or {}))
    return read_run_outputs(out, storage_options)


def versions(lake: pathlib.Path) -> list[str]:
    return sorted(p.name for p in lake.iterdir() if p.name.startswith("v-"))


def pointer(lake: pathlib.Path) -> str:
    return (lake / POINTER).read_text().strip()


# --------------------------------------------------------------------------------------------
# fixtures: one synthetic lake and the same data loaded into each database, per module


@pytest.fixture(scope="module")
def synth_lake(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("synth") / "lake")
    write_lake(CFG, path)
    return path


@pytest.fixture(scope="module")
def synth_tables(synth_lake):
    return read_lake_tables(synth_lake)


@pytest.fixture(scope="module")
def synth_run(synth_lake, tmp_path_factory):
    return run(synth_lake, str(tmp_path_factory.mktemp("synth-run") / "out"))


@pytest.fixture(scope="module")
def sqlite_source(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/source.db"
    load_synthetic(create_engine_from_url(url), CFG)
    return url


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mariadb", marks=pytest.mark.db)])
def loaded_source(request):
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_source")
        return
    server = request.getfixturevalue("mariadb_server")
    name = server.create_database()
    url = server.url(name)
    engine = create_engine_from_url(url)
    load_synthetic(engine, CFG)
    engine.dispose()
    yield url
    server.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.db)])
def empty_source(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/source.db"
    return request.getfixturevalue("mariadb_url")


# --------------------------------------------------------------------------------------------
# round trip


def test_partition_bounds_are_open_ended():
    assert partition_bounds(1, 900, 300) == [ID_MIN, 301, 601, ID_MAX]
    assert partition_bounds(5, 5, 300) == [ID_MIN, ID_MAX]
    assert partition_bounds(None, None, 300) == [ID_MIN, ID_MAX]
    with pytest.raises(ValueError, match="users_per_partition"):
        partition_bounds(1, 2, 0)


def test_round_trip_equals_the_synth_lake(loaded_source, synth_tables, synth_run, tmp_path):
    lake = tmp_path / "lake"
    summary = extract_lake(loaded_source, str(lake), users_per_partition=300)
    assert summary["mode"] == "full" and summary["previous"] is None
    assert summary["reader"] == "fast"  # a plain URL: ConnectorX
    assert summary["bounds"] == [ID_MIN, 301, 601, ID_MAX]
    assert summary["rows"]["users"] == 900
    manifest = json.loads((lake / summary["version"] / MANIFEST).read_text())
    assert manifest["extract"]["partitioning"] == "equal-width"
    assert set(summary["watermarks"]) == {"ratings", "deliveries", "requests"}
    assert summary["watermarks"]["ratings"] == summary["rows"]["ratings"]

    opened = open_lake(str(lake))
    assert opened.root == str(lake / summary["version"])
    assert opened.manifest["bounds"] == summary["bounds"]
    assert opened.fast_path_files() is not None  # co-partitioned: one file per range and table
    manifest_text = (lake / summary["version"] / MANIFEST).read_text()
    password = sa.engine.make_url(loaded_source).password
    if password:
        assert password not in manifest_text
        assert urllib.parse.quote(password, safe="") not in manifest_text
    assert json.loads(manifest_text)["source"]["url"].count("***") == (1 if password else 0)

    assert_lakes_equal(read_lake_tables(str(lake)), synth_tables)
    assert_runs_equal(run(str(lake), str(tmp_path / "out")), synth_run)


def _partition_files(lake: pathlib.Path) -> dict[str, list[pa.Table]]:
    opened = Lake(str(lake))
    return {name: [pq.read_table(f) for f in opened.files(name)]
            for name in (*USER_KEYED, "snacks", "stock")}


def test_fast_and_stream_readers_agree(loaded_source, synth_tables, tmp_path):
    """The two readers write the same files: same partitions, rows, order and types."""
    fast = extract_lake(loaded_source, str(tmp_path / "fast"), users_per_partition=300,
                        reader="fast")
    stream = extract_lake(loaded_source, str(tmp_path / "stream"), users_per_partition=300,
                          reader="stream")
    assert (fast["reader"], stream["reader"]) == ("fast", "stream")
    assert fast["rows"] == stream["rows"] and fast["bounds"] == stream["bounds"]
    files = {name: _partition_files(tmp_path / name) for name in ("fast", "stream")}
    for name, parts in files["fast"].items():
        assert len(parts) == len(files["stream"][name]), name
        for i, (left, right) in enumerate(zip(parts, files["stream"][name], strict=True)):
            assert left.schema == right.schema, (name, i)
            assert left.equals(right), f"table {name!r}, partition {i} differs"
    assert_lakes_equal(read_lake_tables(str(tmp_path / "stream")), synth_tables)


def test_range_reads_use_the_user_id_index(loaded_source):
    """Each range task reads its rows through the ``user_id`` index, in order (no sort).
    The watermark cut is written ``row_id + 0 <= W`` so that it is no primary-key range:
    on big tables (a million users) MariaDB preferred that range, i.e. a scan of the whole
    table plus a sort, in every task; test-sized tables do not show that choice, so this
    only guards the plan (benchmarks/extract_bench.py measures the difference)."""
    url = parse_source_url(loaded_source)
    plan = extract_mod._Plan(source=url, version_url="", previous_url=None,
                             storage_options={}, bounds=(ID_MIN, 301, 601, ID_MAX),
                             watermarked=frozenset(APPEND_ONLY), watermark_from={},
                             watermark_to={name: 10**9 for name in APPEND_ONLY})
    engine = create_engine_from_url(url)
    with engine.connect() as conn:
        for name in APPEND_ONLY:
            query = compile_query(extract_mod._select_range(plan, name, 301, 331), url)
            if url.get_backend_name() == "sqlite":
                plan_text = " ".join(str(r[-1]) for r in
                                     conn.exec_driver_sql("EXPLAIN QUERY PLAN " + query))
                assert f"INDEX ix_{name}_user_id" in plan_text, plan_text
                assert "TEMP B-TREE" not in plan_text, plan_text
            else:
                row = conn.exec_driver_sql("EXPLAIN " + query).mappings().one()
                assert row["key"] == f"ix_{name}_user_id", dict(row)
                assert "filesort" not in (row["Extra"] or ""), dict(row)
    engine.dispose()


def test_reader_choice():
    def chosen(url: str, reader: str = "auto", **env: str) -> str:
        return choose_reader(parse_source_url(url), reader, environ=env)[0]

    plain = "mysql+pymysql://app:pw@db:3306/snacks"
    assert chosen(plain) == "fast" and chosen("sqlite:////data/source.db") == "fast"
    assert chosen(plain + "?connect_timeout=5&charset=utf8mb4") == "fast"
    for query in ("ssl_ca=/ca.pem", "ssl_ca=/ca.pem&ssl_check_hostname=true", "read_timeout=30",
                  "charset=latin1", "local_infile=1"):
        assert chosen(f"{plain}?{query}") == "stream", query
    assert chosen("sqlite:////data/source.db?timeout=0.3") == "stream"
    _, why = choose_reader(parse_source_url(plain + "?ssl_ca=/ca.pem"), environ={})
    assert "TLS (ssl_ca)" in why
    assert chosen(plain, "stream") == "stream"
    assert chosen(plain, **{READER_ENV: "stream"}) == "stream"  # the operator's switch
    assert chosen(plain, "fast", **{READER_ENV: "stream"}) == "fast"  # the call wins
    with pytest.raises(UsageError, match="unknown extraction reader 'turbo'"):
        chosen(plain, "turbo")
    with pytest.raises(UsageError, match=rf"unknown .* \(from \${READER_ENV}\)"):
        chosen(plain, **{READER_ENV: "turbo"})
    with pytest.raises(UsageError, match=r"cannot read .*app:\*\*\*@db.* TLS \(ssl_ca\)"):
        chosen(plain + "?ssl_ca=/ca.pem", "fast")


def test_fast_queries_inline_only_integers():
    ratings = source_table("ratings")
    stmt = sa.select(ratings.c.user_id).where(ratings.c.user_id >= 301, ratings.c.row_id <= 7)
    text = compile_query(stmt, parse_source_url("mysql+pymysql://app@db/snacks"))
    assert "ratings.user_id >= 301" in text and "ratings.row_id <= 7" in text
    users = source_table("users")
    with pytest.raises(TypeError, match="only int bounds"):
        compile_query(sa.select(users.c.user_id).where(users.c.status == "x' OR 1=1 --"),
                      parse_source_url("sqlite:///x.db"))


def test_fast_reader_errors_never_show_the_password(monkeypatch):
    """ConnectorX's messages may hold the connection string: it is masked, never chained."""
    import connectorx

    url = parse_source_url(sa.engine.URL.create("mysql+pymysql", "app", WRONG, "db.example",
                                                3306, "snacks"))

    def fail(conn, query, **kwargs):
        raise RuntimeError(f"timed out waiting for connection: DriverError {{ Could not "
                           f"connect to {conn}: password {WRONG} rejected }}")

    monkeypatch.setattr(connectorx, "read_sql", fail)
    stmt = sa.select(source_table("users").c.user_id)
    with pytest.raises(SourceConnectionError, match="cannot connect") as info:
        fastread.read_table(url, "users", stmt, "reading table 'users', user ids [1, 2)")
    assert "mysql+pymysql://app:***@db.example:3306/snacks" in str(info.value)
    _assert_no_secret(info.value, WRONG)

    def lost(conn, query, **kwargs):
        raise RuntimeError("IoError { server disconnected }")

    monkeypatch.setattr(connectorx, "read_sql", lost)
    with pytest.raises(SourceConnectionError, match=r"'ratings', user ids \[1, 2\): lost"):
        fastread.read_table(url, "users", stmt, "reading table 'ratings', user ids [1, 2)")


def test_fast_reader_falls_back_on_values_it_cannot_convert(tmp_path, caplog):
    """A SQLite DATETIME holding a bare date: ConnectorX cannot parse it, SQLAlchemy reads
    it as midnight; that range is re-read with the streaming reader, same lake."""
    url = f"sqlite:///{tmp_path}/source.db"
    engine = create_engine_from_url(url)
    load_synthetic(engine, SMALL)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE ratings SET rated_at = '2026-11-01' WHERE user_id = 150")
    engine.dispose()
    fast = extract_lake(url, str(tmp_path / "fast"), users_per_partition=100, reader="fast")
    extract_lake(url, str(tmp_path / "stream"), users_per_partition=100, reader="stream")
    assert fast["reader"] == "fast"
    fallbacks = [r.getMessage() for r in caplog.records if "fast_read_fallback" in r.getMessage()]
    assert len(fallbacks) == 1 and "'ratings', user ids [101, 201)" in fallbacks[0]
    tables = read_lake_tables(str(tmp_path / "fast"))
    assert_lakes_equal(tables, read_lake_tables(str(tmp_path / "stream")))
    midnight = tables["ratings"].query("user_id == 150")["rated_at"]
    assert len(midnight) and (midnight == pd.Timestamp("2026-11-01", tz="UTC").value).all()


def test_sparse_ids_are_cut_at_quantiles(tmp_path):
    url = f"sqlite:///{tmp_path}/source.db"
    engine = create_engine_from_url(url)
    create_schema(engine)
    user_ids = [1000 * k for k in range(1, 251)]
    with engine.begin() as conn:
        conn.execute(source_table("users").insert(), [
            {"user_id": u, "status": "active", "next_delivery_on": DATES[0], "box_size": None}
            for u in user_ids])
        conn.execute(source_table("ratings").insert(), [
            {"user_id": u, "snack_id": 1, "rating": 3, "rated_at": dt.datetime(2026, 11, 1)}
            for u in user_ids + [7]])  # 7: an orphan below the first user
    summary = extract_lake(url, str(tmp_path / "lake"), users_per_partition=100)
    assert summary["bounds"] == [ID_MIN, 101_000, 201_000, ID_MAX]
    manifest = json.loads((tmp_path / "lake" / summary["version"] / MANIFEST).read_text())
    assert manifest["extract"]["partitioning"] == "quantile"
    users = [pq.read_table(f).num_rows for f in Lake(str(tmp_path / "lake")).files("users")]
    ratings = [pq.read_table(f).num_rows for f in Lake(str(tmp_path / "lake")).files("ratings")]
    assert users == [100, 100, 50] and ratings == [101, 100, 50]


def test_empty_source_gives_one_open_partition(empty_source, tmp_path):
    create_schema(create_engine_from_url(empty_source))
    summary = extract_lake(empty_source, str(tmp_path / "lake"))
    assert summary["bounds"] == [ID_MIN, ID_MAX]
    assert summary["watermarks"] == {"ratings": None, "deliveries": None, "requests": None}
    tables = read_lake_tables(str(tmp_path / "lake"))
    assert all(len(tables[name]) == 0 for name in USER_KEYED)
    again = extract_lake(empty_source, str(tmp_path / "lake"), incremental=True)
    assert again["rows_read"]["ratings"] == 0


# --------------------------------------------------------------------------------------------
# incremental refresh


def test_incremental_equals_full(empty_source, tmp_path):
    load_synthetic(create_engine_from_url(empty_source), SMALL)
    lake = tmp_path / "lake"
    first = extract_lake(empty_source, str(lake), users_per_partition=100)
    assert first["partitions"] == 3

    orphans = {"ratings": 0, "requests": 0}
    for round_no in (1, 2):
        added = append_source_changes(empty_source, round_no)
        for name in orphans:
            orphans[name] += added[name]
        step = extract_lake(empty_source, str(lake), incremental=True, users_per_partition=7)
        assert step["mode"] == "incremental"
        assert step["bounds"] == first["bounds"]  # an incremental refresh keeps the ranges
        assert step["rows_read"]["ratings"] == 20 + 20 + 3  # only the appended rows
        assert step["rows_read"]["requests"] == 20 + 20 + 1
        assert step["rows_read"]["deliveries"] == 20
        assert step["rows_read"]["users"] == step["rows"]["users"]  # re-read whole
    last = step
    assert last["removed"] == [first["version"]]  # older than the previous version
    assert versions(lake) == sorted([last["previous"], last["version"]])
    assert pointer(lake) == last["version"]

    full = tmp_path / "full"
    extract_lake(empty_source, str(full), users_per_partition=100)
    assert_lakes_equal(read_lake_tables(str(lake)), read_lake_tables(str(full)))
    # the files, read in partition order, hold the rows in the same order (user_id, row_id),
    # although the full extraction cut the grown id range into one more partition
    assert len(Lake(str(full)).files("users")) == 4
    for name in ("ratings", "deliveries", "requests"):
        merged, fresh = (pa.concat_tables([pq.read_table(f) for f in Lake(str(root)).files(name)])
                         for root in (lake, full))
        assert merged.equals(fresh), name

    incremental_run = run(str(lake), str(tmp_path / "out-inc"))
    assert incremental_run["summary"]["orphan_rows"]["ratings"] == orphans["ratings"]
    assert incremental_run["summary"]["orphan_rows"]["requests"] == orphans["requests"]
    assert_runs_equal(incremental_run, run(str(full), str(tmp_path / "out-full")))


def test_incremental_refuses_without_a_previous_extraction(sqlite_source, synth_lake, tmp_path):
    with pytest.raises(LakeError, match="run a full extraction first"):
        extract_lake(sqlite_source, str(tmp_path / "new"), incremental=True)
    with pytest.raises(UsageError, match=r"not versioned .*_lake\.json"):
        extract_lake(sqlite_source, synth_lake)


def test_incremental_refuses_a_rewritten_table(tmp_path):
    url = f"sqlite:///{tmp_path}/source.db"
    engine = create_engine_from_url(url)
    load_synthetic(engine, SMALL)
    extract_lake(url, str(tmp_path / "lake"), users_per_partition=100)
    ratings = source_table("ratings")
    with engine.begin() as conn:
        top = conn.execute(sa.select(sa.func.max(ratings.c.row_id))).scalar()
        conn.execute(ratings.delete().where(ratings.c.row_id > top - 5))
    with pytest.raises(LakeError, match=r"'ratings'.*rewritten"):
        extract_lake(url, str(tmp_path / "lake"), incremental=True)


# --------------------------------------------------------------------------------------------
# atomic publishing


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_failed_extraction_keeps_the_previous_lake(sqlite_source, tmp_path, monkeypatch,
                                                   scheduler):
    lake = tmp_path / "lake"
    first = extract_lake(sqlite_source, str(lake), users_per_partition=300)
    before = read_lake_tables(str(lake))
    real = extract_mod.write_user_partition

    def fail_on_second(url, index, tables, storage_options=None):
        if index == 1:
            raise OSError("disk full (simulated)")
        return real(url, index, tables, storage_options)

    monkeypatch.setattr(extract_mod, "write_user_partition", fail_on_second)
    with dask.config.set(scheduler=scheduler), pytest.raises(OSError, match="simulated"):
        extract_lake(sqlite_source, str(lake), users_per_partition=300)
    assert pointer(lake) == first["version"]
    assert_lakes_equal(read_lake_tables(str(lake)), before)
    leftover = [v for v in versions(lake) if v != first["version"]]
    if scheduler == "synchronous":  # nothing else was running: the version is gone
        assert leftover == []
    # with threads, a range task still running may write after the clean-up: never
    # published (no manifest), and the next extraction removes it
    assert all(not (lake / v / MANIFEST).exists() for v in leftover)
    monkeypatch.setattr(extract_mod, "write_user_partition", real)
    second = extract_lake(sqlite_source, str(lake), users_per_partition=300)
    assert set(second["removed"]) == set(leftover)
    assert versions(lake) == [first["version"], second["version"]]


def test_killed_extraction_keeps_the_previous_lake(sqlite_source, tmp_path):
    lake = tmp_path / "lake"
    first = extract_lake(sqlite_source, str(lake), users_per_partition=300)
    before = read_lake_tables(str(lake))
    script = textwrap.dedent(f"""
        import os, signal
        import dask
        import preassign.extract as ex

        real = ex.write_user_partition

        def die_on_second(url, index, tables, storage_options=None):
            if index == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(url, index, tables, storage_options)

        ex.write_user_partition = die_on_second
        dask.config.set(scheduler="synchronous")
        ex.extract_lake({sqlite_source!r}, {str(lake)!r}, users_per_partition=300)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=120, check=False,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftover = [v for v in versions(lake) if v != first["version"]]
    assert len(leftover) == 1 and not (lake / leftover[0] / MANIFEST).exists()
    assert pointer(lake) == first["version"]
    assert_lakes_equal(read_lake_tables(str(lake)), before)

    second = extract_lake(sqlite_source, str(lake), users_per_partition=300)
    assert second["removed"] == leftover  # unfinished, never published
    third = extract_lake(sqlite_source, str(lake), users_per_partition=300)
    assert third["removed"] == [first["version"]]
    assert versions(lake) == sorted([second["version"], third["version"]])


# --------------------------------------------------------------------------------------------
# bad input: clear errors, never a password

WRONG = "Wr0ng:p@ss/%word"


def _assert_no_secret(exc: BaseException, *secrets: str) -> None:
    text = "".join(traceback.format_exception(exc))
    for secret in secrets:
        if secret:
            assert secret not in text
            assert urllib.parse.quote(secret, safe="") not in text


def test_unreachable_database(tmp_path):
    url = sa.engine.URL.create("mysql+pymysql", "preassign", WRONG, "127.0.0.1", free_port(),
                               "snacks").render_as_string(hide_password=False)
    with pytest.raises(SourceConnectionError, match="cannot connect to the source") as info:
        extract_lake(url, str(tmp_path / "lake"))
    assert "mysql+pymysql://preassign:***@127.0.0.1" in str(info.value)
    _assert_no_secret(info.value, WRONG)
    assert not (tmp_path / "lake").exists() or not versions(tmp_path / "lake")


def test_missing_sqlite_file(tmp_path):
    with pytest.raises(SourceConnectionError, match="does not exist"):
        extract_lake(f"sqlite:///{tmp_path}/nope.db", str(tmp_path / "lake"))
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(SourceConnectionError, match="in-memory"):
        extract_lake("sqlite://", str(tmp_path / "lake"))


@pytest.mark.db
def test_wrong_password(mariadb_server, mariadb_url, tmp_path):
    url = mariadb_server.url(sa.engine.make_url(mariadb_url).database, password=WRONG)
    with pytest.raises(SourceConnectionError, match=r"access denied .* 'preassign'") as info:
        extract_lake(url, str(tmp_path / "lake"))
    assert "wrong user name or password" in str(info.value)
    _assert_no_secret(info.value, WRONG, mariadb_server.password)


@pytest.mark.db
def test_tls_connection_with_ssl_ca(mariadb_server, mariadb_url, tmp_path):
    url = sa.engine.make_url(mariadb_url).update_query_dict(
        {"ssl_ca": mariadb_server.ca_file, "ssl_check_hostname": "true"})
    engine = create_engine_from_url(url)
    create_schema(engine)
    with engine.connect() as conn:
        cipher = conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Ssl_cipher'").one()[1]
    engine.dispose()
    assert cipher  # the session is encrypted, and the certificate was verified against the CA
    summary = extract_lake(url, str(tmp_path / "lake"))
    assert summary["partitions"] == 1
    # ConnectorX cannot verify the server (its MySQL URL takes no TLS option): PyMySQL reads
    assert summary["reader"] == "stream"
    with pytest.raises(UsageError, match=r"TLS \(ssl_ca, ssl_check_hostname\)"):
        extract_lake(url, str(tmp_path / "lake"), reader="fast")
    other_ca = make_test_ca(str(tmp_path))["ca"]
    wrong = url.update_query_dict({"ssl_ca": other_ca})
    with pytest.raises(SourceConnectionError, match="cannot connect") as info:
        extract_lake(wrong, str(tmp_path / "lake2"))
    _assert_no_secret(info.value, mariadb_server.password)


@pytest.mark.db
def test_connectorx_has_no_mysql_tls(mariadb_server, mariadb_url):
    """Why TLS URLs stream: against the TLS-speaking test server, ConnectorX's MySQL URL
    refuses every TLS option (the ``mysql`` crate's ``require_ssl``/``verify_ca`` and a
    CA file alike); a plain connection is not encrypted. When a ConnectorX release takes
    them, this fails: make the fast reader verify the server and drop the fallback."""
    import connectorx

    url = parse_source_url(mariadb_url)
    conn = fastread.connection_string(url)
    cipher = "SELECT VARIABLE_VALUE AS cipher FROM information_schema.SESSION_STATUS " \
             "WHERE VARIABLE_NAME = 'Ssl_cipher'"
    assert connectorx.read_sql(conn, cipher, return_type="arrow").to_pylist() == [
        {"cipher": ""}]
    for option in ("require_ssl=true", "verify_ca=true", f"ssl_ca={mariadb_server.ca_file}",
                   f"root_cert_path={mariadb_server.ca_file}"):
        with pytest.raises(RuntimeError, match="Unknown URL parameter"):
            connectorx.read_sql(f"{conn}&{option}", cipher, return_type="arrow")


@pytest.mark.db
def test_unknown_database(mariadb_server, tmp_path):
    with pytest.raises(SourceConnectionError, match="does not exist on the server") as info:
        extract_lake(mariadb_server.url("no_such_db"), str(tmp_path / "lake"))
    _assert_no_secret(info.value, mariadb_server.password)


@pytest.mark.parametrize(
    ("statement", "match"),
    [
        ("DROP TABLE genre_prefs", r"table 'genre_prefs' is missing"),
        ("ALTER TABLE ratings DROP COLUMN rated_at",
         r"table 'ratings' is missing column\(s\) rated_at"),
    ],
    ids=["missing-table", "missing-column"],
)
def test_missing_table_or_column(empty_source, tmp_path, statement, match):
    engine = create_engine_from_url(empty_source)
    create_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    with pytest.raises(SourceSchemaError, match=match) as info:
        extract_lake(empty_source, str(tmp_path / "lake"))
    _assert_no_secret(info.value, sa.engine.make_url(empty_source).password or "")
    engine.dispose()


def test_missing_stock_table_is_fine(tmp_path):
    url = f"sqlite:///{tmp_path}/source.db"
    engine = create_engine_from_url(url)
    load_synthetic(engine, SMALL)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE stock")
    summary = extract_lake(url, str(tmp_path / "lake"))
    assert "stock" not in summary["rows"]
    assert read_lake_tables(str(tmp_path / "lake"))["stock"] is None


def test_value_that_does_not_fit_the_lake(tmp_path):
    url = f"sqlite:///{tmp_path}/source.db"
    engine = create_engine_from_url(url)
    load_synthetic(engine, SMALL)
    with engine.begin() as conn:
        conn.execute(source_table("ng_snacks").insert(), [{"user_id": 3, "snack_id": 2**40}])
    with pytest.raises(SourceError, match=r"table 'ng_snacks', column 'snack_id'.*int32"):
        extract_lake(url, str(tmp_path / "lake"))
    assert versions(tmp_path / "lake") == []


def test_invalid_values_are_copied_for_the_run_to_report(tmp_path):
    url = f"sqlite:///{tmp_path}/source.db"
    engine = create_engine_from_url(url)
    load_synthetic(engine, SMALL)
    with engine.begin() as conn:
        conn.execute(source_table("ratings").insert(),
                     [{"user_id": 4, "snack_id": 1, "rating": 7,
                       "rated_at": dt.datetime(2026, 11, 1)}])
    extract_lake(url, str(tmp_path / "lake"))
    with pytest.raises(LakeError, match="table 'ratings', column 'rating': 1 row"):
        run_preassignment(RunConfig(lake=str(tmp_path / "lake"), date_from=DATES[0],
                                    date_to=DATES[0], out=str(tmp_path / "out")))
    shutil.rmtree(tmp_path / "lake")
    assert not os.path.exists(tmp_path / "out")


def test_extract_on_a_distributed_cluster(sqlite_source, synth_tables, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        summary = extract_lake(sqlite_source, str(tmp_path / "lake"), users_per_partition=300,
                               client=client)
    assert summary["partitions"] == 3
    assert_lakes_equal(read_lake_tables(str(tmp_path / "lake")), synth_tables)


@pytest.mark.db
def test_a_password_from_the_environment_never_enters_the_task_graph(
        mariadb_server, monkeypatch, tmp_path):
    """With $PREASSIGN_SOURCE_PASSWORD the workers get the URL without it, and read it."""
    import pickle

    distributed = pytest.importorskip("distributed")
    from preassign.dbsecurity import SecretURL, secret_reference_from_environment

    name = mariadb_server.create_database()
    try:
        with_password = sa.engine.make_url(mariadb_server.url(name))
        engine = create_engine_from_url(with_password)
        load_synthetic(engine, SMALL)
        engine.dispose()
        password = with_password.password
        assert password
        monkeypatch.setenv("PREASSIGN_SOURCE_PASSWORD", password)
        ref = secret_reference_from_environment(with_password._replace(password=None))
        assert isinstance(ref, SecretURL) and password not in repr(ref) + str(ref)

        graphs: list[bytes] = []
        real_compute = extract_mod.compute

        def spying(client, tasks, *args, **kwargs):
            graphs.extend(pickle.dumps(dict(t.__dask_graph__())) for t in tasks)
            return real_compute(client, tasks, *args, **kwargs)

        monkeypatch.setattr(extract_mod, "compute", spying)
        lake = tmp_path / "lake"
        # the workers start after the variable is set, as a scheduled task's would
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            summary = extract_lake(ref, str(lake), users_per_partition=100, client=client)
        assert summary["partitions"] == 3 and graphs
        assert all(password.encode() not in g for g in graphs)
        manifest = (lake / pointer(lake) / MANIFEST).read_text()
        assert password not in manifest and "***" in manifest
        reference = tmp_path / "reference"
        extract_lake(with_password, str(reference), users_per_partition=100)
        assert_lakes_equal(read_lake_tables(str(lake)), read_lake_tables(str(reference)))
    finally:
        mariadb_server.drop_database(name)
