"""What the DuckDB and Polars peers share: their outputs and their command line.

Only the I/O around a peer lives here - the SPEC §4 schemas of ``assignments/`` and
``demand/``, writing them, the ``LAKE DATE_FROM [DATE_TO] [--out DIR]`` command line and its
summary line. The rules themselves stay written twice, once per engine, on purpose: each
peer is an independent implementation of SPEC §3.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ASSIGNMENTS_SCHEMA", "DEMAND_SCHEMA", "peer_main", "peer_parser", "write_outputs"]

STAGES = ("request", "preference", "explore", "fallback")

#: SPEC §4 ``assignments/`` and ``demand/`` as written by :func:`write_outputs`.
ASSIGNMENTS_SCHEMA = pa.schema(
    [
        ("delivery_on", pa.date32()),
        ("user_id", pa.int64()),
        ("slot", pa.int32()),
        ("snack_id", pa.int64()),
        ("stage", pa.string()),
    ]
)
DEMAND_SCHEMA = pa.schema(
    [("delivery_on", pa.date32()), ("snack_id", pa.int64()), ("units", pa.int64())]
    + [(f"units_{s}", pa.int64()) for s in STAGES]
)


def write_outputs(out: str, tables: Mapping[str, pa.Table], prefix: str) -> None:
    """Write each table as ``<out>/<name>/part.0.parquet``, all moved into place at the end.

    Args:
        out: the output directory (created if missing).
        tables: ``assignments`` and ``demand``, already cast to their schemas.
        prefix: the staging directory's name prefix (the peer's name).

    Raises:
        FileExistsError: ``out`` already holds one of the tables.
    """
    for name in tables:
        if os.path.exists(os.path.join(out, name)):
            raise FileExistsError(f"{os.path.join(out, name)} exists; choose another --out")
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{prefix}-", dir=out)
    try:
        for name, table in tables.items():
            os.mkdir(os.path.join(staging, name))
            pq.write_table(table, os.path.join(staging, name, "part.0.parquet"))
        for name in tables:
            os.replace(os.path.join(staging, name), os.path.join(out, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def peer_parser(module: str, engine: str) -> argparse.ArgumentParser:
    """The peers' common arguments: ``LAKE DATE_FROM [DATE_TO] [--out DIR]``, checks, timings."""
    ap = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{module}",
        description=f"{engine} peer of preassign (SPEC §3): pre-assign every target user's box.",
    )
    ap.add_argument("lake", help="local lake directory (SPEC §2)")
    ap.add_argument("date_from", type=datetime.date.fromisoformat, help="first date, YYYY-MM-DD")
    ap.add_argument("date_to", type=datetime.date.fromisoformat, nargs="?",
                    help="last date (default: DATE_FROM)")
    ap.add_argument("--out", help="write assignments/ and demand/ here (SPEC §4 layout)")
    ap.add_argument("--no-validate", action="store_true",
                    help="skip the SPEC §2 invalid-value checks")
    ap.add_argument("-v", "--verbose", action="store_true", help="print seconds per step")
    return ap


def peer_main(args: argparse.Namespace, run: Callable[[dict[str, float], dict[str, int]], Any],
              write: Callable[[str, Any], None], errors: tuple[type[BaseException], ...]) -> int:
    """Run a peer, write its outputs when ``--out`` is given, print its summary line.

    Args:
        args: the parsed command line (:func:`peer_parser`).
        run: ``run(timings, summary)`` computes the assignments, filling both dicts.
        write: ``write(out, assignments)`` writes them and their demand.
        errors: the exceptions that mean bad input (printed as one ``Error:`` line, exit 1).

    Returns:
        The exit code.
    """
    timings: dict[str, float] = {}
    summary: dict[str, int] = {}
    t0 = time.perf_counter()
    try:
        assignments = run(timings, summary)
        if args.out:
            write(args.out, assignments)
    except (*errors, FileExistsError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    print(
        f"users_targeted={summary['users_targeted']} boxes_full={summary['boxes_full']} "
        f"boxes_short={summary['boxes_short']} units={summary['units_total']} "
        f"seconds={seconds:.3f}"
    )
    if args.verbose:
        for step, s in timings.items():
            print(f"  {step}: {s:.3f}s")
    return 0
