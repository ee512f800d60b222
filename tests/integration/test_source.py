"""The source schema, URLs and synthetic loading (preassign.source)."""

from __future__ import annotations

import datetime as dt
import pathlib
import urllib.parse

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from preassign.core.contract import USER_KEYED
from preassign.source import (
    APPEND_ONLY,
    METADATA,
    SOURCE_URL_ENV,
    WATERMARK_COLUMN,
    SourceError,
    create_engine_from_url,
    load_synthetic,
    mask_url,
    parse_source_url,
    render_mysql_ddl,
    resolve_source_url,
    source_table,
)
from preassign.synth import SynthConfig, generate_partition, generate_snacks, generate_stock

DDL_FILE = pathlib.Path(__file__).parents[2] / "preassign" / "sql" / "schema_mysql.sql"
SECRET = "s3cr@t/pw%"
QUOTED = urllib.parse.quote(SECRET, safe="")
CFG = SynthConfig(users=300, snacks=40, users_per_partition=120, seed=3)


# --------------------------------------------------------------------------------------------
# schema


def test_ddl_file_is_up_to_date():
    assert DDL_FILE.read_text() == render_mysql_ddl(), (
        "preassign/sql/schema_mysql.sql is stale: run "
        "`python -m preassign.source > preassign/sql/schema_mysql.sql`"
    )


def test_schema_types_follow_the_contract():
    ddl = render_mysql_ddl()
    assert "rating TINYINT NOT NULL" in ddl
    assert "rated_at DATETIME(6) NOT NULL" in ddl
    assert "user_id BIGINT NOT NULL" in ddl
    assert "ingredients JSON" in ddl
    for name in APPEND_ONLY:
        table = source_table(name)
        assert table.c[WATERMARK_COLUMN].autoincrement is True
        assert any([c.name for c in ix.columns] == ["user_id"] for ix in table.indexes), name
    for name in USER_KEYED:
        table = source_table(name)
        keys = [c.name for c in table.primary_key.columns]
        assert keys[0] in ("user_id", WATERMARK_COLUMN), name
    with pytest.raises(KeyError, match="tables: snacks"):
        source_table("nope")


@pytest.mark.db
def test_ddl_file_applies_on_mariadb(mariadb_server, mariadb_url):
    engine = create_engine_from_url(mariadb_url)
    text = "\n".join(ln for ln in DDL_FILE.read_text().splitlines() if not ln.startswith("--"))
    statements = [s.strip() for s in text.split(";\n") if s.strip()]
    with engine.begin() as conn:
        for stmt in statements:
            conn.exec_driver_sql(stmt)
    inspector = sa.inspect(engine)
    assert set(inspector.get_table_names()) == set(METADATA.tables)
    for name, table in METADATA.tables.items():
        assert [c["name"] for c in inspector.get_columns(name)] == [c.name for c in table.columns]
    assert {ix["name"] for ix in inspector.get_indexes("ratings")} >= {"ix_ratings_user_id"}
    engine.dispose()


# --------------------------------------------------------------------------------------------
# URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"mysql+pymysql://app:{SECRET}@db:3306/snacks", "mysql+pymysql://app:***@db:3306/snacks"),
        ("mysql+pymysql://app:s3cr%40t%2Fpw%25@db:3306/snacks",
         "mysql+pymysql://app:***@db:3306/snacks"),
        ("mysql+pymysql://app:pw@db/snacks?ssl_ca=/etc/rds.pem",
         "mysql+pymysql://app:***@db/snacks?ssl_ca=%2Fetc%2Frds.pem"),
        ("mysql+pymysql://app@db/snacks", "mysql+pymysql://app@db/snacks"),
        ("sqlite:///tmp/source.db", "sqlite:///tmp/source.db"),
        (f"not a url {SECRET}", "<unparsable database URL>"),
    ],
    ids=["unquoted-password", "quoted-password", "tls", "no-password", "sqlite", "unparsable"],
)
def test_mask_url(url, expected):
    assert mask_url(url) == expected
    assert SECRET not in mask_url(url)


def test_mask_url_of_a_url_object_with_quoted_password():
    url = sa.engine.URL.create("mysql+pymysql", "app", SECRET, "db", 3306, "snacks")
    assert mask_url(url) == "mysql+pymysql://app:***@db:3306/snacks"
    assert repr(parse_source_url(url.render_as_string(hide_password=False))) == mask_url(url)


def test_parse_source_url_picks_pymysql_and_hides_bad_urls():
    assert parse_source_url("mysql://a@h/d").drivername == "mysql+pymysql"
    assert parse_source_url("mariadb://a@h/d").drivername == "mariadb+pymysql"
    with pytest.raises(SourceError, match="cannot parse") as info:
        parse_source_url(f"mysql//app:{SECRET}@db")
    assert SECRET not in str(info.value)
    with pytest.raises(SourceError, match="write '@' as %40") as info:
        parse_source_url(f"mysql+pymysql://app:{SECRET}@db/snacks")
    assert "s3cr" not in str(info.value)
    quoted = "mysql+pymysql://app:s3cr%40t%2Fpw%25@db/snacks"
    assert parse_source_url(quoted).password == SECRET


def test_create_engine_from_url_has_no_pool(tmp_path):
    engine = create_engine_from_url(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(engine.pool, NullPool)
    mysql = create_engine_from_url(f"mysql+pymysql://app:{QUOTED}@db/snacks")
    assert isinstance(mysql.pool, NullPool)
    assert mysql.url.query["charset"] == "utf8mb4"
    assert SECRET not in repr(mysql) and QUOTED not in repr(mysql)
    with pytest.raises(SourceError, match="supported are") as info:
        create_engine_from_url(f"nosuchdb://app:{QUOTED}@db/snacks")
    assert QUOTED not in str(info.value)


def test_resolve_source_url(tmp_path, caplog):
    env = {SOURCE_URL_ENV: "sqlite:///from-env.db"}
    assert resolve_source_url(environ=env) == "sqlite:///from-env.db"
    assert resolve_source_url("sqlite:///arg.db", environ=env) == "sqlite:///arg.db"
    path = tmp_path / "source.url"
    path.write_text("# the production replica\n\n  mysql+pymysql://app:pw@db/snacks  \n")
    path.chmod(0o600)
    assert resolve_source_url(source_file=path, environ=env) == "mysql+pymysql://app:pw@db/snacks"
    with pytest.raises(SourceError, match="not both"):
        resolve_source_url("sqlite:///a.db", source_file=path)
    with pytest.raises(SourceError, match=SOURCE_URL_ENV):
        resolve_source_url(environ={})
    with pytest.raises(SourceError, match="cannot read source URL file"):
        resolve_source_url(source_file=tmp_path / "missing", environ={})
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(SourceError, match="holds no URL"):
        resolve_source_url(source_file=tmp_path / "empty", environ={})
    with caplog.at_level("WARNING", logger="preassign.source"):
        resolve_source_url(f"mysql+pymysql://app:{QUOTED}@db/snacks")
    assert "process list" in caplog.text and QUOTED not in caplog.text


# --------------------------------------------------------------------------------------------
# loading synthetic data


def _read_back(engine: sa.Engine, name: str) -> tuple[list[str], list[tuple]]:
    table = source_table(name)
    cols = [c for c in table.columns if c.name != WATERMARK_COLUMN]
    order = [table.c[WATERMARK_COLUMN]] if WATERMARK_COLUMN in table.c else list(table.primary_key)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*cols).order_by(*order)).all()
    return [c.name for c in cols], [tuple(r) for r in rows]


def _expected(name: str) -> pd.DataFrame:
    if name == "snacks":
        return generate_snacks(CFG)
    if name == "stock":
        return generate_stock(CFG)
    return pd.concat([generate_partition(CFG, i)[name] for i in range(CFG.partitions)],
                     ignore_index=True)


def _as_python(frame: pd.DataFrame) -> list[tuple]:
    out = []
    for row in frame.itertuples(index=False):
        values = []
        for v in row:
            if isinstance(v, pd.Timestamp):
                v = v.tz_convert("UTC").tz_localize(None).to_pydatetime()
            elif v is None or v is pd.NA or v is pd.NaT:
                v = None
            elif isinstance(v, list):
                v = list(v)
            elif hasattr(v, "item"):
                v = v.item()
            values.append(v)
        out.append(tuple(values))
    return out


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.db)])
def empty_db(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/source.db"
    return request.getfixturevalue("mariadb_url")


def test_load_synthetic_inserts_exactly_the_synth_rows(empty_db):
    engine = create_engine_from_url(empty_db)
    rows = load_synthetic(engine, CFG, batch_rows=997)
    for name in METADATA.tables:
        columns, got = _read_back(engine, name)
        expected = _expected(name)[columns]
        assert rows[name] == len(expected), name
        if WATERMARK_COLUMN in source_table(name).c:  # row_id keeps the synth order
            assert got == _as_python(expected), name
        else:
            assert sorted(got, key=repr) == sorted(_as_python(expected), key=repr), name
    # append-only rows keep the lake's order in their row_id
    with engine.connect() as conn:
        first = conn.execute(sa.select(source_table("ratings")).order_by("row_id").limit(1)).one()
    assert first.row_id == 1 and first.user_id == 1
    assert isinstance(first.rated_at, dt.datetime) and first.rated_at.tzinfo is None
    with pytest.raises(SourceError, match="already holds rows in snacks"):
        load_synthetic(engine, CFG)
    again = load_synthetic(engine, CFG, replace=True)
    assert again == rows
    engine.dispose()
