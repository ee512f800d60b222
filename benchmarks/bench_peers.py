"""Peers of the benchmark that use preassign's Python API, and the lake variants they need.

Each ``peer_*`` function runs inside its own measured process (``python -m benchmarks.run
_peer NAME ...``) and returns a JSON-ready dict; the harness measures wall time and memory
from outside.

* :func:`peer_warm` -- a warm session: opens the local cluster and a
  :class:`preassign.session.Session` on the lake (untimed), runs once (untimed), then times
  ``session.run(...)`` re-runs, alternating ``Params(max_requests=1)`` and the defaults so
  every re-run recomputes every box.
* :func:`peer_partition` -- one partition of 50,000 users at a time in this process, no
  Dask: read + check + state (``build_task``), then the boxes (round 1 of SPEC §3) and the
  Parquet file of its assignments, as one worker thread does it; seconds and peak memory
  per partition.
* :func:`peer_overhead` -- the scheduler's overhead per task: a LocalCluster of the
  benchmark's layout mapping batches of no-op tasks.

And two lake variants, made once, untimed:

* :func:`make_stock_variant` -- the lake with a stock of ``floor(coverage x units)`` per
  snack, ``units`` being that snack's units in an unconstrained preassign run of the lake
  over the benchmark's dates (0 for snacks without units); user tables and snacks are
  symlinks to the source lake's directories.
* :func:`make_shuffled_copy` -- the lake rewritten as one Parquet file per table, rows
  ordered by a column other than ``user_id``, and no ``_lake.json``: the layout a run must
  shuffle by user.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

DATE_FROM = dt.date(2026, 12, 1)
DATE_TO = dt.date(2026, 12, 14)
USER_KEYED = ("users", "ratings", "deliveries", "ng_snacks", "avoid_ingredients",
              "genre_prefs", "requests")
# the order rows are written in by make_shuffled_copy: anything but user_id first
SHUFFLED_ORDER: dict[str, list[str]] = {
    "users": ["next_delivery_on", "user_id"],
    "ratings": ["snack_id", "rated_at"],
    "deliveries": ["delivered_on", "snack_id"],
    "ng_snacks": ["snack_id"],
    "avoid_ingredients": ["ingredient"],
    "genre_prefs": ["genre"],
    "requests": ["requested_at"],
}
VARIANT_MARKER = "_bench_variant.json"


def _status_bytes(field: str) -> int:
    """A ``VmHWM``/``VmRSS`` field of this process, in bytes (0 if unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux: ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ============================================================================ warm session


def peer_warm(lake: str, workers: int, threads: int, memory_limit: str,
              reruns: int) -> dict[str, Any]:
    """Open a session on ``lake`` (untimed), run once (untimed), time ``reruns`` re-runs."""
    from preassign import Params
    from preassign.cluster import ClusterSpec, open_client
    from preassign.session import Session

    variants = [Params(max_requests=1), Params()]
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    with open_client(ClusterSpec("local", workers=workers, threads_per_worker=threads,
                                 memory_limit=memory_limit)) as client:
        t1 = time.perf_counter()
        session = Session(lake, client, DATE_FROM, DATE_TO)
        t2 = time.perf_counter()
        first = session.run(Params())
        t3 = time.perf_counter()
        seconds, by_stage = [], []
        for i in range(reruns):
            params = variants[i % 2]
            t = time.perf_counter()
            result = session.run(params)
            seconds.append(time.perf_counter() - t)
            demand = result.demand
            by_stage.append({"max_requests": params.max_requests,
                             "units": int(demand["units"].sum()),
                             "units_request": int(demand["units_request"].sum())})
        session.close()
        out.update(
            cluster_start_seconds=t1 - t0, session_open_seconds=t2 - t1,
            session_seconds=dict(session.seconds), first_run_seconds=t3 - t2,
            rerun_seconds=seconds, inner_seconds=statistics.median(seconds),
            reruns=by_stage, users_targeted=int(first.stats.users_targeted),
            units_total=int(first.demand["units"].sum()), partitions=session.partitions)
    return out


# ============================================================================ one partition


def peer_partition(lake: str, partitions: int) -> dict[str, Any]:
    """Process partitions of ``lake`` one at a time in this process, as one worker thread.

    Partition 0 is processed first, untimed (numba's cache, first touch of memory); then
    ``partitions`` others spread over the lake are timed. The prior is the partition's own
    (the run's would need every partition's rating totals; it changes which snacks win,
    not the work). Peak memory per partition: ``VmHWM`` reset before each partition.
    """
    import numpy as np

    from preassign import Params
    from preassign.core.rules import snack_prior
    from preassign.session import _outcome, _start, _write_boxes, build_task, open_partitions

    params = Params()
    opened = open_partitions(lake)
    parts = opened.partitions
    if opened.layout != "co-partitioned":
        raise RuntimeError(f"{lake}: the partition peer needs a co-partitioned lake")
    n = len(parts)
    picks = sorted({round(i * (n - 1) / max(partitions, 1)) for i in range(1, partitions + 1)})
    if n == 1:
        picks = [0] * partitions
    tmp = tempfile.mkdtemp(prefix="bench-partition-")
    rows = []
    try:
        for order, index in enumerate([0] + picks):
            gc.collect()
            base_rss = _status_bytes("VmRSS")
            reset = _reset_peak()
            part = parts[index]
            t0 = time.perf_counter()
            built = build_task(part, opened.catalog, DATE_FROM, DATE_TO, "raise", "numba",
                               params)
            t1 = time.perf_counter()
            prior = snack_prior(built.stats.rating_sum, built.stats.rating_count, params)
            rounds = _start(built, "numba", opened.catalog, prior, DATE_FROM, DATE_TO, params,
                            (DATE_FROM, DATE_TO))
            outcome = _outcome(rounds, opened.catalog)
            t2 = time.perf_counter()
            written = _write_boxes(rounds, index, f"{tmp}/assignments", {})
            t3 = time.perf_counter()
            peak = _status_bytes("VmHWM")
            users = int(part.bounds[1] - part.bounds[0])
            rows.append({
                "index": index, "warmup": order == 0, "users_range": users,
                "users": int(built.stats.input_rows.get("users", 0)),
                "users_targeted": int(built.stats.users_targeted),
                "units": int(np.asarray(outcome.units_final).sum()),
                "rows_written": int(written),
                "build_seconds": t1 - t0, "assign_seconds": t2 - t1, "write_seconds": t3 - t2,
                "seconds": t3 - t0,
                "rss_before_bytes": base_rss, "peak_bytes": peak if reset else None,
                "peak_increment_bytes": (peak - base_rss) if reset else None})
            del built, rounds, outcome
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    timed = [r for r in rows if not r["warmup"]]
    return {"partitions_in_lake": n, "rows": rows,
            "partition_seconds": [r["seconds"] for r in timed],
            "inner_seconds": statistics.median(r["seconds"] for r in timed),
            "users_per_partition": statistics.median(r["users"] for r in timed),
            "peak_bytes": max((r["peak_bytes"] or 0) for r in rows) or None,
            "peak_increment_bytes": max((r["peak_increment_bytes"] or 0) for r in timed) or None}


# ============================================================================ scheduler overhead


def _noop(x: int) -> int:
    return x


def peer_overhead(workers: int, threads: int, memory_limit: str, tasks: int,
                  batches: int) -> dict[str, Any]:
    """Seconds per no-op task through the scheduler (batches of ``tasks``; first untimed)."""
    from preassign.cluster import ClusterSpec, open_client

    with open_client(ClusterSpec("local", workers=workers, threads_per_worker=threads,
                                 memory_limit=memory_limit)) as client:
        per_task, latency = [], []
        for b in range(batches + 1):
            t = time.perf_counter()
            futures = client.map(_noop, range(tasks), pure=False)
            client.gather(futures)
            if b:
                per_task.append((time.perf_counter() - t) / tasks)
            del futures
        for _ in range(21):
            t = time.perf_counter()
            client.submit(_noop, 1, pure=False).result()
            latency.append(time.perf_counter() - t)
    return {"tasks_per_batch": tasks, "batches": batches, "per_task_seconds": per_task,
            "inner_seconds": statistics.median(per_task),
            "round_trip_seconds": statistics.median(latency[1:])}


# ============================================================================ lake variants


def make_stock_variant(src: Path, demand_dir: Path, dest: Path,
                       coverage: float) -> dict[str, Any]:
    """Write the stock variant of ``src`` at ``dest`` (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    demand = pq.read_table(demand_dir, columns=["snack_id", "units"])
    per_snack = demand.group_by("snack_id").aggregate([("units", "sum")])
    units = dict(zip(per_snack["snack_id"].to_pylist(), per_snack["units_sum"].to_pylist(),
                     strict=True))
    snacks = pq.read_table(src / "snacks", columns=["snack_id"])
    ids = sorted(set(pc.unique(snacks["snack_id"]).to_pylist()))
    quantity = [math.floor(coverage * units.get(s, 0)) for s in ids]
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in (*USER_KEYED, "snacks"):
        os.symlink((src / name).resolve(), dest / name, target_is_directory=True)
    stock_schema = pq.read_schema(next(iter(sorted((src / "stock").glob("*.parquet")))))
    table = pa.table({"snack_id": pa.array(ids, pa.int64()),
                      "quantity": pa.array(quantity, pa.int64())})
    table = table.cast(pa.schema([stock_schema.field("snack_id"),
                                  stock_schema.field("quantity")]))
    (dest / "stock").mkdir()
    pq.write_table(table, dest / "stock" / "part.00000.parquet")
    shutil.copy2(src / "_lake.json", dest / "_lake.json")
    total_units = int(sum(units.values()))
    info = {"source": str(src), "coverage": coverage, "snacks": len(ids),
            "snacks_with_units": sum(1 for s in ids if units.get(s, 0) > 0),
            "units_unconstrained": total_units, "stock_total": int(sum(quantity)),
            "stock_over_units": (sum(quantity) / total_units) if total_units else None}
    (dest / VARIANT_MARKER).write_text(json.dumps(info, indent=2))
    return info


def make_shuffled_copy(src: Path, dest: Path) -> dict[str, Any]:
    """Write the shuffled-layout copy of ``src`` at ``dest`` (see the module docstring)."""
    import pyarrow.parquet as pq

    stage = dest.with_name(dest.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    rows: dict[str, int] = {}
    for name in sorted(p.name for p in src.iterdir() if p.is_dir()):
        (stage / name).mkdir()
        files = sorted((src / name).glob("*.parquet"))
        if name not in SHUFFLED_ORDER:  # snacks, stock: copied as they are
            for f in files:
                shutil.copy2(f, stage / name / f.name)
            rows[name] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            continue
        table = pq.ParquetDataset(files).read()
        keys = [(c, "ascending") for c in SHUFFLED_ORDER[name] if c in table.column_names]
        table = table.sort_by(keys)
        pq.write_table(table, stage / name / "part.0.parquet", compression="zstd")
        rows[name] = table.num_rows
        del table
    info = {"source": str(src), "source_manifest": json.loads((src / "_lake.json").read_text()),
            "rows": rows, "order": SHUFFLED_ORDER}
    (stage / VARIANT_MARKER).write_text(json.dumps(info, indent=2))
    if dest.exists():
        shutil.rmtree(dest)
    stage.rename(dest)
    return info


def shuffled_copy_is_current(src: Path, dest: Path) -> bool:
    """True when ``dest`` is a complete shuffled copy of ``src`` as it is now."""
    try:
        info = json.loads((dest / VARIANT_MARKER).read_text())
        return info["source_manifest"] == json.loads((src / "_lake.json").read_text())
    except (OSError, ValueError, KeyError):
        return False
