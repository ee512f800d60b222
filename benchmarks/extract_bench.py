"""Extraction benchmark: ``preassign extract`` against the fast reader's bare ``SELECT`` time.

On a throwaway MariaDB (started in a temporary directory the way the test suite's
``mariadb_server`` fixture starts it, InnoDB buffer pool resized to ``--buffer-pool``)
filled by ``preassign synth --db URL --users N``, it times:

* **(a) select**: the fast reader (ConnectorX) alone running the extraction's own
  queries (same user-id ranges, same watermarks, every table) into Arrow, nothing
  converted or written; ranges on ``--threads`` threads, each range's tables one after
  the other, as the extraction's tasks do;
* **(b) extract fast**: :func:`preassign.extract.extract_lake` with ``reader="fast"``
  into a local lake (Dask's threaded scheduler, ``--threads`` workers): planning,
  reading, casting to the lake's types, Parquet (zstd) writing, publishing;
* **(c) extract stream**: the same with ``reader="stream"`` (SQLAlchemy/PyMySQL);
* with ``--cli``: **(d)** ``preassign extract`` as a process (its LocalCluster
  included), and with ``--run`` **(e)** ``preassign run --extract`` end to end
  (extraction into a new lake, then the run over 2026-12-01..14).

``--replicate K`` makes a bigger database than ``synth --db`` can fill in reasonable time:
after loading ``--users`` N, every user-keyed row is copied K - 1 times on the server
(``INSERT ... SELECT`` with ``user_id + k*N``), so the database holds K*N users of the
same shape (``--users 50000 --replicate 20`` = 1M users, about 93M rows).
``--skip-stream`` leaves out (c) (PyMySQL needs about 17 minutes for 1M users here).

One untimed pass of (a) warms the buffer pool first; each of (a)-(c) then runs
``--repeats`` times (round-robin), the median is reported, and the ratio (b)/(a)
(the target is at most 3). A serial per-stage breakdown of the fast path (read,
cast, sort check, Parquet encoding to memory) says where the rest of (b) goes.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.extract_bench --users 50000 [--users-per-partition 50000]
        [--threads 2] [--repeats 3] [--buffer-pool 4G] [--replicate K] [--skip-stream]
        [--cli] [--run] [--json out.json]

Prints a Markdown table and the JSON (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SYNTH_DATE = "2026-12-01"


def _plan(url: str, users_per_partition: int) -> Any:
    """The extraction's own plan: bounds, watermarks (as :func:`extract_lake` makes them)."""
    import sqlalchemy as sa

    from preassign import extract
    from preassign.source import (
        APPEND_ONLY,
        WATERMARK_COLUMN,
        create_engine_from_url,
        parse_source_url,
        source_table,
    )

    parsed = parse_source_url(url)
    engine = create_engine_from_url(parsed)
    try:
        with engine.connect() as conn:
            bounds, _ = extract._choose_bounds(conn, users_per_partition)
            marks = {name: conn.execute(sa.select(sa.func.max(
                source_table(name).c[WATERMARK_COLUMN]))).scalar() for name in APPEND_ONLY}
    finally:
        engine.dispose()
    return extract._Plan(source=parsed, version_url="", previous_url=None, storage_options={},
                         bounds=tuple(bounds), watermarked=frozenset(APPEND_ONLY),
                         watermark_from={}, watermark_to=marks, reader="fast")


def _range_statements(plan: Any, index: int) -> list[tuple[str, Any]]:
    from preassign import extract
    from preassign.core.contract import USER_KEYED

    lo, hi = plan.bounds[index], plan.bounds[index + 1]
    out = []
    for name in USER_KEYED:
        stmt = extract._select_range(plan, name, lo, hi)
        if stmt is not None:
            out.append((name, stmt))
    return out


def select_only(plan: Any, threads: int) -> dict[str, int]:
    """(a): the extraction's queries through ConnectorX into Arrow; rows per table."""
    from preassign import extract
    from preassign.fastread import compile_query, read_arrow

    def one_range(index: int) -> dict[str, int]:
        return {name: read_arrow(plan.source, compile_query(stmt, plan.source)).num_rows
                for name, stmt in _range_statements(plan, index)}

    rows: dict[str, int] = {}
    small = [(name, extract._select_whole(name)) for name in ("snacks", "stock")]
    for name, stmt in small:
        rows[name] = read_arrow(plan.source, compile_query(stmt, plan.source)).num_rows
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for counts in pool.map(one_range, range(len(plan.bounds) - 1)):
            for name, n in counts.items():
                rows[name] = rows.get(name, 0) + n
    return rows


def stage_breakdown(plan: Any) -> dict[str, float]:
    """Serial seconds per stage of the fast path over every range (one thread)."""
    import pyarrow.parquet as pq

    from preassign.fastread import compile_query, is_sorted_by_user, read_arrow, to_lake_types

    seconds = {"read (ConnectorX)": 0.0, "cast to lake types": 0.0, "sort check": 0.0,
               "Parquet zstd encode": 0.0}
    for index in range(len(plan.bounds) - 1):
        for name, stmt in _range_statements(plan, index):
            t0 = time.perf_counter()
            raw = read_arrow(plan.source, compile_query(stmt, plan.source))
            t1 = time.perf_counter()
            table = to_lake_types(name, raw)
            t2 = time.perf_counter()
            is_sorted_by_user(table)
            t3 = time.perf_counter()
            pq.write_table(table, io.BytesIO(), compression="zstd")
            t4 = time.perf_counter()
            for key, a, b in zip(seconds, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
                seconds[key] += b - a
    return {k: round(v, 3) for k, v in seconds.items()}


def _extract(url: str, lake: str, reader: str, users_per_partition: int, threads: int
             ) -> dict[str, Any]:
    import dask

    from preassign.extract import extract_lake

    shutil.rmtree(lake, ignore_errors=True)
    with dask.config.set(scheduler="threads", num_workers=threads):
        return extract_lake(url, lake, users_per_partition=users_per_partition, reader=reader)


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def _preassign(args: list[str], url: str) -> float:
    """Run ``preassign ARGS`` as a process (the URL through the environment, never argv)."""
    env = {**os.environ, "PREASSIGN_SOURCE_URL": url}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "preassign.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"preassign {args[0]} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return seconds


def replicate(url: str, users: int, copies: int, start: int = 1) -> float:
    """Copy the user-keyed rows of users 1..``users`` to copies ``start`` .. ``copies - 1``.

    Copy ``k`` holds users ``k * users + 1 .. (k + 1) * users``; copies already made (below
    ``start``) are left alone, so a database can be grown size by size. Returns seconds.
    """
    from preassign.core.contract import USER_KEYED
    from preassign.source import WATERMARK_COLUMN, create_engine_from_url, source_table

    t0 = time.perf_counter()
    engine = create_engine_from_url(url)
    try:
        for k in range(max(start, 1), copies):
            for name in USER_KEYED:
                columns = [c.name for c in source_table(name).columns
                           if c.name != WATERMARK_COLUMN]
                shifted = [f"user_id + {k * users:d}" if c == "user_id" else c for c in columns]
                order = WATERMARK_COLUMN if WATERMARK_COLUMN in source_table(name).c else "user_id"
                with engine.begin() as conn:  # ints and schema names only
                    conn.exec_driver_sql(
                        f"INSERT INTO {name} ({', '.join(columns)}) SELECT {', '.join(shifted)} "
                        f"FROM {name} WHERE user_id BETWEEN 1 AND {users:d} ORDER BY {order}")
    finally:
        engine.dispose()
    return time.perf_counter() - t0


def database_facts(url: str) -> dict[str, Any]:
    """Rows per table and InnoDB bytes (data + indexes) of the source database."""
    import sqlalchemy as sa

    from preassign.core.contract import USER_KEYED
    from preassign.source import create_engine_from_url, source_table

    engine = create_engine_from_url(url)
    try:
        with engine.connect() as conn:
            rows = {name: int(conn.execute(sa.select(sa.func.count()).select_from(
                source_table(name))).scalar()) for name in ("snacks", "stock", *USER_KEYED)}
            size = conn.exec_driver_sql(
                "SELECT COALESCE(SUM(data_length + index_length), 0) FROM "
                "information_schema.tables WHERE table_schema = DATABASE()").scalar()
    finally:
        engine.dispose()
    return {"rows": rows, "rows_total": sum(rows.values()), "innodb_bytes": int(size or 0)}


def peer_select(url: str, users_per_partition: int, threads: int) -> dict[str, Any]:
    """(a) as a measured process: plan (untimed), then the bare SELECTs into Arrow (timed)."""
    t0 = time.perf_counter()
    plan = _plan(url, users_per_partition)
    t1 = time.perf_counter()
    rows = select_only(plan, threads)
    t2 = time.perf_counter()
    return {"inner_seconds": t2 - t1, "plan_seconds": t1 - t0, "rows": rows,
            "rows_total": sum(rows.values()), "partitions": len(plan.bounds) - 1,
            "threads": threads}


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Everything: start MariaDB, load, time (a)-(e); returns the report."""
    import sqlalchemy as sa

    from preassign.core.contract import USER_KEYED
    from preassign.source import create_engine_from_url, source_table
    from tests.support.services import throwaway_mariadb

    report: dict[str, Any] = {
        "users": args.users * args.replicate, "synth_users": args.users,
        "replicate": args.replicate, "users_per_partition": args.users_per_partition,
        "threads": args.threads, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(throwaway_mariadb(prefix="preassign-xbench-",
                                                       buffer_pool=args.buffer_pool))
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="preassign-xbench-"))
        url = server.url(server.create_database())
        with server.admin() as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            report["server"] = cur.fetchone()[0]
        report["load_seconds"] = round(_preassign(
            ["synth", "--db", "", "--users", str(args.users), "--date", SYNTH_DATE], url), 1)
        if args.replicate > 1:
            report["replicate_seconds"] = round(replicate(url, args.users, args.replicate), 1)
        engine = create_engine_from_url(url)
        with engine.connect() as conn:
            report["rows"] = {name: conn.execute(sa.select(sa.func.count()).select_from(
                source_table(name))).scalar() for name in ("snacks", "stock", *USER_KEYED)}
        engine.dispose()
        report["rows_total"] = sum(report["rows"].values())
        plan = _plan(url, args.users_per_partition)
        report["partitions"] = len(plan.bounds) - 1
        import connectorx

        report["connectorx"] = connectorx.__version__
        select_only(plan, args.threads)  # warm-up: the buffer pool holds what (a)-(c) read

        readers = ("fast",) if args.skip_stream else ("fast", "stream")
        times: dict[str, list[float]] = {"select": [], **{r: [] for r in readers}}
        for _ in range(args.repeats):
            seconds, rows = _timed(select_only, plan, args.threads)
            times["select"].append(seconds)
            assert rows == report["rows"], (rows, report["rows"])
            for reader in readers:
                seconds, summary = _timed(_extract, url, f"{work}/lake-{reader}", reader,
                                          args.users_per_partition, args.threads)
                assert summary["reader"] == reader
                assert summary["rows"] == report["rows"], (summary["rows"], report["rows"])
                times[reader].append(seconds)
        report["seconds"] = {k: [round(v, 2) for v in vs] for k, vs in times.items()}
        median = {k: statistics.median(vs) for k, vs in times.items()}
        report["median_seconds"] = {k: round(v, 2) for k, v in median.items()}
        report["ratio_fast_to_select"] = round(median["fast"] / median["select"], 2)
        if "stream" in median:
            report["ratio_stream_to_fast"] = round(median["stream"] / median["fast"], 2)
        report["rows_per_second"] = {k: round(report["rows_total"] / v)
                                     for k, v in median.items()}
        report["fast_path_stages_serial"] = stage_breakdown(plan)
        if args.cli:
            report["cli_extract_seconds"] = round(_preassign(
                ["extract", "--lake", f"{work}/lake-cli", "--users-per-partition",
                 str(args.users_per_partition), "--silent"], url), 2)
        if args.run:
            report["cli_run_extract_seconds"] = round(_preassign(
                ["run", "--extract", "--lake", f"{work}/lake-run", "--date", SYNTH_DATE,
                 "--until", "2026-12-14", "--out", f"{work}/out", "--users-per-partition",
                 str(args.users_per_partition), "--silent"], url), 2)
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as a small Markdown table."""
    rows, median = report["rows_total"], report["median_seconds"]
    lines = [
        f"Extraction of {report['users']:,} users ({rows:,} rows, {report['partitions']} "
        f"partition(s) of {report['users_per_partition']:,} users, {report['threads']} "
        f"thread(s), {report['machine']['cpus']} CPUs, {report['server']}, ConnectorX "
        f"{report['connectorx']}; median of {report['repeats']}):",
        "",
        "| what | seconds | rows/s | × select |",
        "|---|---:|---:|---:|",
    ]
    names = {"select": "(a) fast reader, SELECT into Arrow only",
             "fast": "(b) extract_lake, reader=fast", "stream": "(c) extract_lake, reader=stream"}
    for key, label in names.items():
        if key not in median:
            continue
        lines.append(f"| {label} | {median[key]:.2f} | {report['rows_per_second'][key]:,} | "
                     f"{median[key] / median['select']:.2f} |")
    for key, label in (("cli_extract_seconds", "(d) `preassign extract` (process, cluster)"),
                       ("cli_run_extract_seconds", "(e) `preassign run --extract` (process)")):
        if key in report:
            lines.append(f"| {label} | {report[key]:.2f} | | |")
    stream = (f"(c)/(b) = {report['ratio_stream_to_fast']}. "
              if "ratio_stream_to_fast" in report else "")
    copies = (f" ({report['synth_users']:,} synthetic users, copied {report['replicate']}×"
              f" on the server in {report['replicate_seconds']} s)"
              if report["replicate"] > 1 else "")
    lines += ["", f"(b)/(a) = **{report['ratio_fast_to_select']}** (target ≤ 3); {stream}"
              f"Loading the database took {report['load_seconds']} s{copies}.", "",
              "Fast path, serial seconds per stage: " + ", ".join(
                  f"{k} {v}" for k, v in report["fast_path_stages_serial"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--users-per-partition", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--buffer-pool", default="4G", help="InnoDB buffer pool size")
    parser.add_argument("--replicate", type=int, default=1,
                        help="copy the loaded users this many times in all (server-side)")
    parser.add_argument("--skip-stream", action="store_true", help="do not time (c)")
    parser.add_argument("--cli", action="store_true", help="also time `preassign extract`")
    parser.add_argument("--run", action="store_true", help="also time `preassign run --extract`")
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args(argv)
    report = run_bench(args)
    print(markdown(report))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
