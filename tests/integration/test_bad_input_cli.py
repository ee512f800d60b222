"""The bad-input matrix, as a user meets it: the real command, a real LocalCluster.

For each case: the exit code, the words of the message, exactly one ``Error:`` line and no
traceback or Dask worker log on stderr, nothing published, and the lake unchanged (a hash
of every file before and after). The in-process matrix (``test_contract.py``) covers many
more values; this one proves what the terminal shows.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.oracle.reference import worked_example_tables
from tests.support.lakes import write_tables

PREASSIGN = [sys.executable, "-m", "preassign.cli"]
WORKER_LOG_MARKERS = ("distributed.", "Compute Failed", "Traceback", "Exception:")


def tree_hash(path: str) -> dict[str, str]:
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _lake(root, mutate=None) -> str:
    tables = worked_example_tables()
    lake = write_tables(tables, str(root / "lake"))
    if mutate:
        mutate(lake)
    return lake


def _rewrite(lake, table, fn):
    path = os.path.join(lake, table, "part-0.parquet")
    pq.write_table(fn(pq.read_table(path)), path)


def _set_value(table, col, row, value, type_=None):
    def mutate(lake):
        def fn(t):
            values = t.column(col).to_pylist()
            values[row] = value
            i = t.schema.get_field_index(col)
            return t.set_column(i, col, pa.array(values, type_ or t.schema.field(col).type))
        _rewrite(lake, table, fn)
    return mutate


def _duplicate_user(lake):
    def fn(t):
        df = t.to_pandas()
        return pa.Table.from_pandas(pd.concat([df, df.iloc[[0]].assign(box_size=5)]),
                                    preserve_index=False)
    _rewrite(lake, "users", fn)


def _second_file(table, fn):
    """A second file of ``table`` holding its first row, written by ``fn(table) -> table``."""
    def mutate(lake):
        t = pq.read_table(os.path.join(lake, table, "part-0.parquet"))
        pq.write_table(fn(t.slice(0, 1)), os.path.join(lake, table, "part-1.parquet"))
    return mutate


def _string_user_id(t):
    i = t.schema.get_field_index("user_id")
    return t.set_column(i, "user_id", t.column("user_id").cast(pa.string()))


def _file(table, data: bytes):
    def mutate(lake):
        with open(os.path.join(lake, table, "extra.parquet"), "wb") as f:
            f.write(data)
    return mutate


def _drop_column(table, col):
    return lambda lake: _rewrite(lake, table, lambda t: t.drop_columns([col]))


def _remove_table(table):
    def mutate(lake):
        import shutil

        shutil.rmtree(os.path.join(lake, table))
    return mutate


CASES = [
    # (id, mutate, extra args, exit code, words in the message)
    ("rating-out-of-range (scan pass)", _set_value("ratings", "rating", 0, 9), [], 1,
     ["'ratings'", "'rating'", "1 row", "outside 1-4", "rating=9"]),
    ("null-delivered-on (assign pass)", _set_value("deliveries", "delivered_on", 0, None), [], 1,
     ["'deliveries'", "'delivered_on'", "1 row", "null"]),
    ("conflicting-duplicate-user", _duplicate_user, [], 1,
     ["'users'", "'user_id'", "different rows", "user_id=10"]),
    ("missing-column", _drop_column("requests", "requested_at"), [], 1,
     ["'requests'", "requested_at", "missing"]),
    ("missing-table", _remove_table("genre_prefs"), [], 1, ["genre_prefs", "missing"]),
    ("user-id-as-string-in-one-file", _second_file("ng_snacks", _string_user_id), [], 1,
     ["'ng_snacks'", "'user_id'", "part-1.parquet", "string", "int64"]),
    ("zero-byte-file", _file("deliveries", b""), [], 1, ["extra.parquet", "'deliveries'"]),
    ("garbage-file", _file("ratings", b"PAR1 not really"), [], 1, ["extra.parquet", "'ratings'"]),
    ("negative-quantity", _set_value("stock", "quantity", 0, -1), [], 1,
     ["'stock'", "'quantity'", "negative"]),
    ("unknown-rule-parameter", None, ["--set", "max_request=1"], 2,
     ["unknown rule parameter 'max_request'", "valid names"]),
    ("until-before-date", None, ["--until", "2026-11-01"], 2, ["before"]),
    ("out-is-the-lake", None, ["--out", "{lake}", "--overwrite"], 2, ["is the lake"]),
]


@pytest.mark.parametrize("case, mutate, extra, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clean_message(tmp_path, case, mutate, extra, code, words):
    lake = _lake(tmp_path, mutate)
    before = tree_hash(lake)
    out = str(tmp_path / "out")
    args = [a.format(lake=lake) for a in extra]
    if "--out" not in args:
        args += ["--out", out]
    proc = subprocess.run(
        [*PREASSIGN, "run", "--lake", lake, "--date", "2026-12-01", "--workers", "2",
         "--silent", "--loglevel", "WARNING", *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    stderr = proc.stderr
    assert proc.returncode == code, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    message = " ".join(stderr.split())
    for word in words:
        assert word in message, (word, stderr)
    for marker in WORKER_LOG_MARKERS:
        assert marker not in stderr.replace("logger=preassign", ""), stderr
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(tmp_path) if ".staging-" in p or ".old-" in p]
    assert tree_hash(lake) == before
