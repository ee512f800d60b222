"""Side-by-side benchmark of preassign and its peers (issues 6 and 13).

On the same cached synthetic lakes, in the same run, each peer is run in its own
process (one warm-up, then ``--repeats`` timed runs, round-robin over the peers so
they share the machine's noise), and its wall time and peak memory are measured
from outside:

* ``preassign`` -- ``preassign run`` over 2026-12-01..2026-12-14 on a LocalCluster
  (the worker/thread layout is chosen once, at ``--tune-users``): the cold run;
* ``floor`` -- reading every Parquet column the rules need once with pyarrow
  (two files at a time): the physical floor of any implementation;
* ``duckdb`` / ``polars`` -- ``benchmarks.duckdb_peer.run_duckdb`` (threads=2) and
  ``benchmarks.polars_peer.run_polars``, skipped where a run would exceed
  ``--duckdb-max-seconds`` / ``--polars-max-seconds`` or 80 % of the memory available;
  both checked first for assignments identical to preassign's on a small lake;
* ``reference`` -- ``tests/oracle/reference.py`` (one Python object per user) on the first
  ``--reference-sample`` target users, with C and the priors of the *whole* lake;
  timed per user and extrapolated, and checked against preassign's boxes;
* ``warm`` -- a :class:`preassign.session.Session` kept open on a LocalCluster: the
  in-process time of ``session.run(...)`` re-runs (``benchmarks.bench_peers.peer_warm``);
* ``stock_aware`` -- ``preassign run --stock-aware`` on the lake's stock variant (stock =
  floor(0.9 x each snack's units in the unconstrained run), user tables shared);
* ``shuffled`` -- ``preassign run`` on the lake rewritten as one Parquet file per table
  without ``_lake.json`` (the layout a run must shuffle), at sizes >= ``--shuffled-min-users``;
* ``shuffled_files`` -- ``preassign run`` on the lake's own files without ``_lake.json``
  (also shuffled, but from files of one partition each), at the same sizes;
* ``partition`` -- one 50,000-user partition at a time in one process, no Dask: seconds
  and peak memory per partition (``benchmarks.bench_peers.peer_partition``);
* extraction from MariaDB (``--extract-sizes``): ``extract_select`` (the fast reader's
  bare SELECTs into Arrow), ``extract`` (``preassign extract``) and ``run_extract``
  (``preassign run --extract``), on a throwaway MariaDB grown by ``--replicate``-style
  server-side copies of ``--extract-base-users`` synthetic users;
* once per run, the scheduler's overhead per task (no-op tasks on the same LocalCluster).

Memory: the harness polls ``/proc/<pid>/status`` of the whole process tree every
``--poll`` seconds (``VmHWM`` per process, the sum of ``VmRSS`` over the tree); it also
records the machine's load average and the CPU used outside the measured tree.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.run [--sizes 250000,1000000,2000000] [--repeats 3]
        [--peers preassign,floor,duckdb,polars,reference,warm,stock_aware,shuffled,partition]
        [--extract-sizes 250000,1000000,2000000] [--quick]

Writes ``<out>/<timestamp>.json`` and ``<out>/<timestamp>.md`` and prints the
Markdown. ``python -m benchmarks.run _peer ...`` / ``_make ...`` are the internal entry
points of the measured processes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import importlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Set by the harness for its peer processes: the frozen copy of the code under test.
CODE_ENV = "PREASSIGN_BENCH_CODE"
SNAPSHOT_FILES = ("tests/oracle/reference.py",)
DATE_FROM = dt.date(2026, 12, 1)
DATE_TO = dt.date(2026, 12, 14)
SYNTH_SNACKS = 300
SYNTH_SEED = 0
USERS_PER_PARTITION = 50_000
DEFAULT_SIZES = (250_000, 1_000_000, 2_000_000)
QUICK_SIZES = (2_000, 4_000)
LAKE_PEERS = ("preassign", "floor", "duckdb", "polars", "reference", "warm", "stock_aware",
              "shuffled", "shuffled_files", "partition")
EXTRACT_PEERS = ("extract_select", "extract", "run_extract")
PEERS = LAKE_PEERS + EXTRACT_PEERS
SKIPPABLE = ("duckdb", "polars")  # single-machine peers predicted from the previous size
RUNS = ("preassign", "stock_aware", "shuffled", "shuffled_files", "run_extract")  # `preassign run`
LABELS = {
    "preassign": "preassign (cold)", "floor": "floor", "duckdb": "DuckDB", "polars": "Polars",
    "reference": "per-user reference", "warm": "preassign (warm session)",
    "stock_aware": "preassign --stock-aware", "shuffled": "preassign, shuffled layout",
    "shuffled_files": "preassign, no manifest (50k-user files)",
    "partition": "one partition (1 thread)", "extract_select": "extract (a): bare SELECT",
    "extract": "extract (b): `preassign extract`",
    "run_extract": "extract (e): `preassign run --extract`",
}
TIMED = {  # what each peer's reported time is
    "preassign": "process", "floor": "process", "duckdb": "process", "polars": "process",
    "reference": "extrapolated", "warm": "in-process re-run", "stock_aware": "process",
    "shuffled": "process", "shuffled_files": "process", "partition": "in-process, per partition",
    "extract_select": "in-process", "extract": "process", "run_extract": "process",
}
GIB = 1024**3
MIB = 1024**2

# Every column the rules of SPEC §3 read (snacks.name is not one of them).
FLOOR_COLUMNS: dict[str, list[str]] = {
    "users": ["user_id", "status", "next_delivery_on", "box_size"],
    "ratings": ["user_id", "snack_id", "rating", "rated_at"],
    "deliveries": ["user_id", "snack_id", "delivered_on"],
    "ng_snacks": ["user_id", "snack_id"],
    "avoid_ingredients": ["user_id", "ingredient"],
    "genre_prefs": ["user_id", "genre"],
    "requests": ["user_id", "snack_id", "requested_at"],
    "snacks": ["snack_id", "genre", "ingredients", "launched_on", "retired_on"],
    "stock": ["snack_id", "quantity"],
}
USER_KEYED = ("users", "ratings", "deliveries", "ng_snacks", "avoid_ingredients",
              "genre_prefs", "requests")
ASSIGNMENT_COLUMNS = ["delivery_on", "user_id", "slot", "snack_id", "stage"]

# The targets of issue 13 (and those of issue 6, kept), judged at --target-users (memory at
# --memory-users).
TARGET_FLOOR_RATIO = 10.0        # preassign (cold) within 10x the floor
TARGET_PEER_SPEEDUP = 10.0       # preassign >= 10x faster than DuckDB and than Polars
TARGET_STOCK_RATIO = 2.0         # stock-aware <= 2x the unconstrained run
TARGET_WARM_RATIO = 3.0          # a warm session's re-run <= 3x the floor
TARGET_EXTRACT_RATIO = 3.0       # `preassign extract` <= 3x the fast reader's bare SELECTs
TARGET_EXTRACT_SECONDS = 120.0   # a 1M-user extraction within 2 minutes
TARGET_REFERENCE_SPEEDUP = 100.0  # issue 6: >= 100x faster per user than the reference
TARGET_EXPONENT = 1.05           # issue 6: time ~ users^k with k <= 1.05
TARGET_WORKER_MEMORY = 2 * GIB   # issue 6: peak per worker at 2M users
TARGET_MEMORY_EXPONENT = 0.10    # "flat": worker peak ~ users^k with k <= 0.10
FIT_MIN_USERS = 250_000
STOCK_COVERAGE = 0.9

# 10M users on Fargate: sizes come from cluster/defaults.yaml; the rest are stated
# assumptions. Prices: AWS Fargate on-demand, Linux/x86, us-east-1, per vCPU-hour and per
# GB-hour, the list prices in effect since the January 2019 price cut and still listed when
# these constants were written (2026); not re-checked by the benchmark (no network).
FARGATE = {
    "price_per_vcpu_hour": 0.04048,
    "price_per_gb_hour": 0.004445,
    "prices": "AWS Fargate on-demand list prices, Linux/x86, us-east-1 (in effect since "
              "2019-01; constants written 2026-12, not re-checked)",
    "startup_seconds": 120,
    "s3_mb_per_second_per_worker": 50,
    "tasks_per_partition": 5,
    "dask_worker_overhead_mib": 250,
    "users": 10_000_000,
    "users_per_partition": USERS_PER_PARTITION,
    "worker_counts": [8, 16, 32],
}


# ============================================================================ measuring


@dataclasses.dataclass
class Measurement:
    """One process (tree) run: wall time, exit, peak memory, CPU of the tree and of others."""

    wall_seconds: float
    returncode: int | None
    timed_out: bool
    peak_rss_max_bytes: int      # biggest single process of the tree (VmHWM)
    peak_rss_worker_bytes: int   # biggest child process (the root itself if it has none)
    peak_rss_tree_bytes: int     # largest sum of VmRSS over the tree at one poll
    processes: int               # processes seen in the tree
    log: str                     # path of the captured stdout+stderr
    cpu_seconds: float = 0.0     # user+sys CPU of the tree's processes (as last seen)
    other_cpu_seconds: float = 0.0  # CPU the rest of the machine used meanwhile
    loadavg: float = 0.0         # 1-minute load average when the run started

    def to_dict(self) -> dict[str, Any]:
        """The measurement as a JSON-ready dict."""
        return dataclasses.asdict(self)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read_status(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) in bytes of a live process, or None."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    hwm = rss = 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return hwm, rss


def _cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of a live process, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().decode("ascii", "replace").rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _machine_busy_ticks() -> int | None:
    """Non-idle CPU ticks of the whole machine since boot (/proc/stat)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields[:8]) - fields[3] - fields[4]  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (psutil when available, else a /proc walk)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the venv
        psutil = None
    if psutil is not None:
        try:
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read().decode("ascii", "replace")
                parent[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def measure(cmd: list[str], *, log: Path, timeout: float, poll: float = 0.1,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> Measurement:
    """Run ``cmd`` in a new session and measure its wall time and peak memory.

    The process group is killed when ``timeout`` seconds have passed. CPU: the tree's
    user+sys time as last seen per process (a process that lives less than one poll is
    missed), and the machine's other CPU use over the same time (``/proc/stat``).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    hwm: dict[int, int] = {}
    ticks: dict[int, int] = {}
    tree_peak = 0
    timed_out = False
    status = None
    load = os.getloadavg()[0]
    busy0 = _machine_busy_ticks()
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd or _CWD or REPO, start_new_session=True,
                                env=env or _ENV)
        try:
            while True:
                # (wait4's ru_maxrss is not used: after fork+exec it also counts the
                # high-water mark of the forked copy of *this* process)
                pid, st, _ = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    status = st
                    break
                total = 0
                for p in [proc.pid] + _children(proc.pid):
                    s = _read_status(p)
                    if s is not None:
                        hwm[p] = max(hwm.get(p, 0), s[0])
                        total += s[1]
                    c = _cpu_ticks(p)
                    if c is not None:
                        ticks[p] = max(ticks.get(p, 0), c)
                tree_peak = max(tree_peak, total)
                if time.perf_counter() - t0 > timeout:
                    timed_out = True
                    _kill_group(proc.pid)
                    _, status, _ = os.wait4(proc.pid, 0)
                    break
                time.sleep(poll)
        except BaseException:
            _kill_group(proc.pid)
            raise
        wall = time.perf_counter() - t0
        busy1 = _machine_busy_ticks()
        proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -1
    _kill_group(proc.pid)  # leftovers of the session (e.g. orphaned workers)
    root_peak = hwm.get(proc.pid, 0)
    workers = [v for p, v in hwm.items() if p != proc.pid]
    cpu = sum(ticks.values()) / _TICK
    other = max(0.0, (busy1 - busy0) / _TICK - cpu) if busy0 is not None and busy1 else 0.0
    return Measurement(
        wall_seconds=round(wall, 4),
        returncode=proc.returncode,
        timed_out=timed_out,
        peak_rss_max_bytes=max([root_peak] + workers),
        peak_rss_worker_bytes=max(workers) if workers else root_peak,
        peak_rss_tree_bytes=max(tree_peak, root_peak),
        processes=max(len(hwm), 1),
        log=str(log),
        cpu_seconds=round(cpu, 2),
        other_cpu_seconds=round(other, 2),
        loadavg=round(load, 2),
    )


_ENV: dict[str, str] | None = None  # environment of every measured process (see snapshot_code)
_CWD: Path | None = None  # their working directory: the frozen copy (see snapshot_code)


def _code_root() -> Path:
    return Path(os.environ.get(CODE_ENV) or REPO)


def snapshot_code(dest: Path) -> dict[str, Any]:
    """Freeze the code under test: copy ``preassign/``, ``benchmarks/`` and the reference.

    Other people may edit the working tree while a long benchmark runs; every measured
    process (and the Dask workers it spawns) imports the copy instead: it runs in ``dest``
    (``python -m benchmarks.run _peer`` finds ``benchmarks`` and ``preassign`` there first)
    with ``dest`` on ``PYTHONPATH``, which comes before the editable install's finder.
    """
    global _ENV, _CWD
    import hashlib

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "preassign", dest / "preassign",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "benchmarks").mkdir(exist_ok=True)
    for f in sorted((REPO / "benchmarks").glob("*.py")):
        shutil.copy2(f, dest / "benchmarks" / f.name)
    for rel in SNAPSHOT_FILES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    digest = hashlib.sha256()
    files = sorted(list((dest / "preassign").rglob("*.py")) + list((dest / "benchmarks").glob(
        "*.py")) + [dest / r for r in SNAPSHOT_FILES])
    for f in files:
        digest.update(str(f.relative_to(dest)).encode() + b"\0" + f.read_bytes())

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    _ENV = {**os.environ, CODE_ENV: str(dest),
            "PYTHONPATH": os.pathsep.join([str(dest)] + [p for p in os.environ.get(
                "PYTHONPATH", "").split(os.pathsep) if p])}
    _ENV.pop("PREASSIGN_SOURCE_URL", None)
    _CWD = dest
    return {"sha256": digest.hexdigest(), "git_head": git("rev-parse", "--short", "HEAD"),
            "dirty": git("status", "--porcelain", "--", "preassign", "benchmarks",
                         *SNAPSHOT_FILES).splitlines(), "snapshot": str(dest)}


def _kill_group(pgid: int) -> None:
    """Kill the process group started for one measured run (only that group)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ============================================================================ lakes


def _preassign_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "preassign"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from preassign.cli import main; main()"]


def lake_path(cache: Path, users: int) -> Path:
    """Where the cached lake of ``users`` users lives."""
    return cache / f"users-{users}"


def _synth_source(users: int) -> dict[str, Any]:
    return {"users": users, "snacks": SYNTH_SNACKS, "seed": SYNTH_SEED,
            "as_of": DATE_FROM.isoformat()}


def lake_is_cached(path: Path, users: int) -> bool:
    """True when ``path`` holds a complete synth lake made with our parameters."""
    try:
        manifest = json.loads((path / "_lake.json").read_text())
    except (OSError, ValueError):
        return False
    bounds = manifest.get("bounds") or []
    return (manifest.get("source", {}).get("synth") == _synth_source(users)
            and len(bounds) >= 2 and bounds[1] - bounds[0] == min(USERS_PER_PARTITION,
                                                                  max(users, 1)))


def ensure_lake(cache: Path, users: int, logs: Path) -> dict[str, Any]:
    """Generate (or reuse) the lake of ``users`` users; return facts about it."""
    path = lake_path(cache, users)
    info: dict[str, Any] = {"users": users, "path": str(path), "cached": True,
                            "synth_seconds": None}
    if not lake_is_cached(path, users):
        cmd = _preassign_cmd() + [
            "synth", "--out", str(path), "--users", str(users), "--seed", str(SYNTH_SEED),
            "--snacks", str(SYNTH_SNACKS), "--date", DATE_FROM.isoformat(),
            "--users-per-partition", str(USERS_PER_PARTITION), "--silent",
            "--loglevel", "WARNING"]
        _say(f"synth {users:,} users -> {path}")
        m = measure(cmd, log=logs / f"synth-{users}.log", timeout=7200)
        if m.returncode != 0 or not lake_is_cached(path, users):
            raise RuntimeError(f"preassign synth failed for {users} users; see {m.log}")
        info.update(cached=False, synth_seconds=m.wall_seconds)
    info.update(_lake_facts(path))
    return info


def _table_files(lake: Path, table: str) -> list[Path]:
    return sorted((lake / table).glob("*.parquet"))


def _lake_facts(lake: Path) -> dict[str, Any]:
    """Rows and bytes per table (from Parquet footers) and the number of target users."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows, size = {}, {}
    for table in FLOOR_COLUMNS:
        files = _table_files(lake, table)
        rows[table] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        size[table] = sum(f.stat().st_size for f in files)
    targeted = 0
    for f in _table_files(lake, "users"):
        t = pq.read_table(f, columns=["status", "next_delivery_on"])
        d = t["next_delivery_on"]
        mask = pc.and_(pc.equal(t["status"], "active"),
                       pc.and_(pc.greater_equal(d, DATE_FROM), pc.less_equal(d, DATE_TO)))
        targeted += int(pc.sum(pc.cast(pc.fill_null(mask, False), "int64")).as_py() or 0)
    return {"rows": rows, "bytes": size, "bytes_total": sum(size.values()),
            "users_targeted": targeted}


# ============================================================================ peers (in-process)


def peer_floor(lake: str, threads: int = 2) -> dict[str, Any]:
    """Read every column the rules need, once, ``threads`` files at a time."""
    import pyarrow.parquet as pq

    jobs = [(t, f) for t in FLOOR_COLUMNS for f in _table_files(Path(lake), t)]
    t0 = time.perf_counter()

    def read(job: tuple[str, Path]) -> tuple[int, int]:
        table = pq.read_table(job[1], columns=FLOOR_COLUMNS[job[0]], use_threads=False)
        return table.num_rows, table.nbytes

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(read, jobs))
    return {"inner_seconds": time.perf_counter() - t0, "files": len(jobs),
            "rows": sum(r for r, _ in done), "arrow_bytes": sum(b for _, b in done)}


def peer_duckdb(lake: str, threads: int, save: str | None) -> dict[str, Any]:
    """Run the DuckDB peer over the benchmark range; optionally save its assignments."""
    from benchmarks.duckdb_peer import run_duckdb

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    out = run_duckdb(lake, DATE_FROM, DATE_TO, threads=threads, timings=timings)
    inner = time.perf_counter() - t0
    if save:
        out.to_parquet(save, index=False)
    return {"inner_seconds": inner, "rows": len(out), "users": int(out["user_id"].nunique()),
            "step_seconds": {k: round(v, 3) for k, v in timings.items()}}


def peer_polars(lake: str, save: str | None, engine: str) -> dict[str, Any]:
    """Run the Polars peer over the benchmark range; optionally save its assignments."""
    from benchmarks.polars_peer import run_polars

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    out = run_polars(lake, DATE_FROM, DATE_TO, timings=timings, engine=engine)
    inner = time.perf_counter() - t0
    if save:
        out.write_parquet(save)
    return {"inner_seconds": inner, "rows": out.height,
            "users": int(out["user_id"].n_unique()), "engine": engine,
            "step_seconds": {k: round(v, 3) for k, v in timings.items()}}


def _load_reference_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "preassign_bench_reference", _code_root() / "tests" / "oracle" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sample_targets(lake: str, n: int) -> list[int]:
    """The first ``n`` target users (by user_id) of the lake."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out: list[int] = []
    for f in _table_files(Path(lake), "users"):
        t = pq.read_table(f, columns=["user_id", "status", "next_delivery_on"])
        d = t["next_delivery_on"]
        mask = pc.fill_null(pc.and_(pc.equal(t["status"], "active"),
                                    pc.and_(pc.greater_equal(d, DATE_FROM),
                                            pc.less_equal(d, DATE_TO))), False)
        out += sorted(t.filter(mask)["user_id"].to_pylist())
        if len(out) >= n:
            break
    return sorted(out)[:n]


def _sample_tables(lake: str, users: list[int]) -> dict[str, Any]:
    """The lake restricted to ``users`` (user-keyed tables) plus all snacks and stock."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids = pa.array(users, pa.int64())
    lo, hi = min(users), max(users)
    tables = {}
    for table in USER_KEYED:
        parts = []
        for f in _table_files(Path(lake), table):
            stats = pq.ParquetFile(f).metadata
            col = stats.schema.names.index("user_id")
            rg = [stats.row_group(i).column(col).statistics for i in range(stats.num_row_groups)]
            if all(s is not None and s.has_min_max and (s.max < lo or s.min > hi) for s in rg):
                continue
            t = pq.read_table(f, columns=FLOOR_COLUMNS[table])
            parts.append(t.filter(pc.is_in(pc.cast(t["user_id"], pa.int64()), value_set=ids)))
        tables[table] = pa.concat_tables(parts, promote_options="permissive").to_pandas()
    for table in ("snacks", "stock"):
        files = _table_files(Path(lake), table)
        if files:
            tables[table] = pq.read_table(files[0]).to_pandas()
    return tables


def lake_prior(lake: str) -> dict[str, Any]:
    """C and (n, S) per snack over every latest rating of the whole lake (DuckDB, exact).

    Latest rating per (user, snack): greatest ``rated_at``, then smallest rating; orphans
    (unknown user or snack) are left out. One co-partitioned ratings file at a time.
    """
    import duckdb

    root = Path(lake)
    con = duckdb.connect(":memory:")
    con.execute("SET threads = 2")
    snacks = [str(f) for f in _table_files(root, "snacks")]
    counts: dict[int, list[int]] = {}
    user_files = _table_files(root, "users")
    rating_files = _table_files(root, "ratings")
    if len(user_files) != len(rating_files):
        raise RuntimeError(f"{lake}: users and ratings are not co-partitioned")
    for uf, rf in zip(user_files, rating_files, strict=False):
        rows = con.execute(f"""
            SELECT snack_id, count(*), sum(rating) FROM (
              SELECT r.user_id, r.snack_id,
                     arg_max(r.rating, (r.rated_at, -r.rating)) AS rating
              FROM read_parquet('{rf}') r
              SEMI JOIN read_parquet('{uf}') u ON u.user_id = r.user_id
              SEMI JOIN read_parquet({snacks}) s ON s.snack_id = r.snack_id
              GROUP BY r.user_id, r.snack_id)
            GROUP BY snack_id""").fetchall()
        for sid, n, s in rows:
            c = counts.setdefault(int(sid), [0, 0])
            c[0] += int(n)
            c[1] += int(s)
    con.close()
    n_all = sum(c[0] for c in counts.values())
    s_all = sum(c[1] for c in counts.values())
    return {"C": s_all / n_all if n_all else 2.5,
            "rating_counts": {str(k): v for k, v in sorted(counts.items())}}


def peer_reference(lake: str, sample: int, prior_file: str, save: str | None) -> dict[str, Any]:
    """Time ``reference_run`` on the first ``sample`` target users, with the lake's prior.

    The reference computes C and the priors from the ratings it is given; here it is
    given only the sample's rows, so its state gets the whole lake's C and per-snack
    (n, S) (from ``lake_prior``) instead, which is exactly what SPEC §3 asks for.
    """
    ref = _load_reference_module()
    prior = json.loads(Path(prior_file).read_text())
    users = sample_targets(lake, sample)
    tables = _sample_tables(lake, users)
    original = ref.reference_state

    def with_lake_prior(tables: dict, params: dict | None = None) -> Any:
        state = original(tables, params)
        state.C = prior["C"]
        state.rating_counts = {int(k): (v[0], v[1]) for k, v in prior["rating_counts"].items()}
        return state

    ref.reference_state = with_lake_prior
    t0 = time.perf_counter()
    result = ref.reference_run(tables, DATE_FROM, DATE_TO)
    inner = time.perf_counter() - t0
    if save:
        result.assignments.to_parquet(save, index=False)
    return {"inner_seconds": inner, "sample_users": len(users),
            "users_targeted": result.users_targeted, "rows": len(result.assignments),
            "per_user_seconds": inner / max(result.users_targeted, 1)}


def _peer_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run _peer")
    ap.add_argument("peer", choices=["floor", "duckdb", "polars", "reference", "warm",
                                     "partition", "overhead", "extract_select"])
    ap.add_argument("lake", nargs="?")
    ap.add_argument("--result", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--memory-limit", default="6GiB")
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--prior")
    ap.add_argument("--save")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--reruns", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--users-per-partition", type=int, default=USERS_PER_PARTITION)
    a = ap.parse_args(argv)
    bp = importlib.import_module("benchmarks.bench_peers")
    if a.peer == "floor":
        res = peer_floor(a.lake, a.threads)
    elif a.peer == "duckdb":
        res = peer_duckdb(a.lake, a.threads, a.save)
    elif a.peer == "polars":
        res = peer_polars(a.lake, a.save, a.engine)
    elif a.peer == "reference":
        res = peer_reference(a.lake, a.sample, a.prior, a.save)
    elif a.peer == "warm":
        res = bp.peer_warm(a.lake, a.workers, a.threads, a.memory_limit, a.reruns)
    elif a.peer == "partition":
        res = bp.peer_partition(a.lake, a.partitions)
    elif a.peer == "overhead":
        res = bp.peer_overhead(a.workers, a.threads, a.memory_limit, a.tasks, a.batches)
    else:  # extract_select: the source URL comes from the environment, never argv
        xb = importlib.import_module("benchmarks.extract_bench")
        res = xb.peer_select(os.environ["PREASSIGN_SOURCE_URL"], a.users_per_partition,
                             a.threads)
    Path(a.result).write_text(json.dumps(res))


def _make_main(argv: list[str]) -> None:
    """``_make shuffled SRC DEST``: write a lake variant in its own process (big tables)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run _make")
    ap.add_argument("what", choices=["shuffled"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    a = ap.parse_args(argv)
    bp = importlib.import_module("benchmarks.bench_peers")
    info = bp.make_shuffled_copy(a.src, a.dest)
    print(json.dumps(info["rows"]))


# ============================================================================ harness


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _error_line(log: str) -> str:
    """The last ``Error:`` line of a run's log (or its last line), for the report."""
    try:
        lines = [x.strip() for x in Path(log).read_text(errors="replace").splitlines()
                 if x.strip()]
    except OSError:
        return ""
    errors = [x for x in lines if x.startswith(("Error:", "Traceback")) or "Error" in x[:40]]
    line = (errors or lines or [""])[-1]
    return line[:300]


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _rm(*paths: Path) -> None:
    for p in paths:
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)


@dataclasses.dataclass
class Harness:
    """State of one benchmark run."""

    args: argparse.Namespace
    work: Path
    lakes: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    workers: int = 2
    threads: int = 1
    checks: dict[str, Any] = dataclasses.field(default_factory=dict)
    variants: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    shuffled: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    loads: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    extract_env: dict[str, str] | None = None

    # ---------------------------------------------------------------- one peer, one run

    def _preassign_run(self, lake: str, out: Path, w: int, t: int,
                       memory_limit: str | None = None) -> list[str]:
        return _preassign_cmd() + [
            "run", "--lake", lake, "--date", DATE_FROM.isoformat(),
            "--until", DATE_TO.isoformat(), "--out", str(out), "--overwrite",
            "--workers", str(w), "--threads-per-worker", str(t),
            "--memory-limit", memory_limit or self.args.memory_limit, "--silent",
            "--loglevel", "WARNING"]

    def _command(self, peer: str, users: int, base: Path, result: Path, save: bool,
                 w: int, t: int) -> tuple[list[str], dict[str, str] | None]:
        a = self.args
        lake = self.lakes[users]["path"] if users in self.lakes else ""
        upp = str(USERS_PER_PARTITION)
        if peer == "preassign":
            return self._preassign_run(lake, base / "out", w, t), None
        if peer == "stock_aware":
            return self._preassign_run(self.stock_lake(users), base / "out", w, t) + [
                "--stock-aware"], None
        if peer == "shuffled":
            return self._preassign_run(self.shuffled[users]["path"], base / "out", w, t,
                                       a.shuffled_memory_limit), None
        if peer == "shuffled_files":
            return self._preassign_run(self.no_manifest_lake(users), base / "out", w, t,
                                       a.shuffled_memory_limit), None
        if peer == "extract":
            _rm(base / "lake")
            return _preassign_cmd() + ["extract", "--lake", str(base / "lake"),
                                       "--users-per-partition", upp, "--silent",
                                       "--loglevel", "WARNING"], self.extract_env
        if peer == "run_extract":
            _rm(base / "lake", base / "out")
            cmd = self._preassign_run(str(base / "lake"), base / "out", w, t)
            cmd.remove("--overwrite")
            return cmd + ["--extract", "--users-per-partition", upp], self.extract_env
        cmd = [sys.executable, "-m", "benchmarks.run", "_peer", peer]
        if peer not in ("overhead", "extract_select"):
            cmd.append(lake)
        cmd += ["--result", str(result)]
        if peer == "floor":
            cmd += ["--threads", "2"]
        elif peer == "duckdb":
            cmd += ["--threads", str(a.duckdb_threads)]
            if save:
                cmd += ["--save", str(base / "assignments.parquet")]
        elif peer == "polars":
            cmd += ["--engine", a.polars_engine]
            if save:
                cmd += ["--save", str(base / "assignments.parquet")]
        elif peer == "reference":
            cmd += ["--sample", str(a.reference_sample), "--prior", str(self._prior_file(users)),
                    "--save", str(base / "assignments.parquet")]
        elif peer == "warm":
            cmd += ["--workers", str(w), "--threads", str(t), "--memory-limit", a.memory_limit,
                    "--reruns", str(a.warm_reruns)]
        elif peer == "partition":
            cmd += ["--partitions", str(a.partition_samples)]
        elif peer == "overhead":
            cmd += ["--workers", str(w), "--threads", str(t), "--memory-limit", a.memory_limit,
                    "--tasks", str(a.overhead_tasks), "--batches", "5"]
        elif peer == "extract_select":
            cmd += ["--threads", str(os.cpu_count() or 2), "--users-per-partition", upp]
            return cmd, self.extract_env
        return cmd, None

    def run_peer(self, peer: str, users: int, tag: str, *, timeout: float | None = None,
                 save: bool = False, workers: int | None = None,
                 threads: int | None = None) -> dict[str, Any]:
        """Run ``peer`` once on the lake (or database) of ``users`` users; the run record."""
        base = self.work / f"{peer}-{users}"
        base.mkdir(parents=True, exist_ok=True)
        result = base / f"{tag}.json"
        result.unlink(missing_ok=True)
        timeout = timeout or self.args.timeout
        w, t = workers or self.workers, threads or self.threads
        cmd, env = self._command(peer, users, base, result, save, w, t)
        m = measure(cmd, log=base / f"{tag}.log", timeout=timeout, poll=self.args.poll,
                    env=env)
        rec: dict[str, Any] = {"tag": tag, **m.to_dict()}
        if peer in (*RUNS, "warm", "overhead"):
            rec.update(workers=w, threads_per_worker=t)
        if m.returncode == 0:
            if peer in RUNS:
                summary = json.loads((base / "out" / "summary.json").read_text())
                rec["stage_seconds"] = summary["stage_seconds"]
                rec["inner_seconds"] = summary["stage_seconds"].get("total")
                for k in ("users_targeted", "units_total", "boxes_full", "boxes_short",
                          "rounds", "boxes_changed", "units_unconstrained",
                          "boxes_short_unconstrained", "snacks_limited"):
                    if k in summary:
                        rec[k] = summary[k]
                rec["layout"] = (summary.get("lake") or {}).get("layout")
                rec["assignments_bytes"] = _dir_bytes(base / "out" / "assignments")
            elif peer == "extract":
                rec["lake_rows"] = _extracted_rows(base / "lake")
            elif result.exists():
                rec.update(json.loads(result.read_text()))
        status = "timeout" if m.timed_out else ("ok" if m.returncode == 0 else "failed")
        rec["status"] = status
        if status != "ok":
            rec["error"] = _error_line(m.log)
        _say(f"{peer:14s} {users:>9,} {tag:12s} {status:7s} {m.wall_seconds:8.2f} s  "
             f"max {m.peak_rss_max_bytes / MIB:7.0f} MiB  worker "
             f"{m.peak_rss_worker_bytes / MIB:7.0f} MiB  other CPU "
             f"{m.other_cpu_seconds / max(m.wall_seconds, 1e-9):.2f}"
             + (f"  inner {rec['inner_seconds']:.2f} s" if isinstance(
                 rec.get("inner_seconds"), float) else ""))
        return rec

    def _prior_file(self, users: int) -> Path:
        path = self.work / f"prior-{users}.json"
        if not path.exists():
            t0 = time.perf_counter()
            path.write_text(json.dumps(lake_prior(self.lakes[users]["path"])))
            _say(f"lake prior for the reference at {users:,} users: "
                 f"{time.perf_counter() - t0:.1f} s (not timed)")
        return path

    # ---------------------------------------------------------------- lake variants

    def stock_lake(self, users: int) -> str:
        """The stock variant of the lake of ``users`` users (made on first use, untimed).

        Stock per snack = floor(STOCK_COVERAGE x its units in preassign's unconstrained
        run of the same lake and dates); needs that run's ``demand/`` (the preassign peer's
        latest output, or one untimed run made here).
        """
        if users not in self.variants:
            from benchmarks.bench_peers import make_stock_variant

            demand = self.work / f"preassign-{users}" / "out" / "demand"
            if not demand.exists():
                rec = self.run_peer("preassign", users, "stock-source")
                if rec["status"] != "ok":
                    raise RuntimeError(f"preassign failed at {users}; see {rec['log']}")
            dest = self.work / "lakes" / f"users-{users}-stock{round(STOCK_COVERAGE * 100)}"
            info = make_stock_variant(Path(self.lakes[users]["path"]), demand, dest,
                                      STOCK_COVERAGE)
            self.variants[users] = {**info, "path": str(dest)}
            _say(f"stock variant at {users:,} users: stock {info['stock_total']:,} for "
                 f"{info['units_unconstrained']:,} unconstrained units "
                 f"({info['stock_over_units']:.3f})")
        return self.variants[users]["path"]

    def no_manifest_lake(self, users: int) -> str:
        """The lake's own table directories (symlinks) without ``_lake.json``: shuffled."""
        dest = self.work / "lakes" / f"users-{users}-no-manifest"
        if not dest.exists():
            src = Path(self.lakes[users]["path"]).resolve()
            dest.mkdir(parents=True)
            for table in sorted(p for p in src.iterdir() if p.is_dir()):
                os.symlink(table, dest / table.name, target_is_directory=True)
        return str(dest)

    def ensure_shuffled(self, users: int) -> None:
        """The shuffled-layout copy of the lake of ``users`` users (cached, untimed)."""
        from benchmarks.bench_peers import shuffled_copy_is_current

        src = Path(self.lakes[users]["path"])
        dest = self.args.cache / f"users-{users}-shuffled"
        info: dict[str, Any] = {"path": str(dest), "cached": True}
        if not shuffled_copy_is_current(src, dest):
            _say(f"shuffled copy of {users:,} users -> {dest}")
            m = measure([sys.executable, "-m", "benchmarks.run", "_make", "shuffled", str(src),
                         str(dest)], log=self.work / "logs" / f"shuffled-{users}.log",
                        timeout=7200, cwd=REPO)
            if m.returncode != 0:
                raise RuntimeError(f"writing the shuffled copy failed; see {m.log}")
            info.update(cached=False, make_seconds=m.wall_seconds)
        info["bytes_total"] = _dir_bytes(dest)
        info["files"] = sorted(str(p.relative_to(dest)) for p in dest.rglob("*.parquet"))
        self.shuffled[users] = info

    # ---------------------------------------------------------------- steps

    def choose_config(self) -> dict[str, Any] | None:
        """Try 2 workers x 1 thread vs 1 worker x 2 threads once at --tune-users."""
        a = self.args
        if a.workers is not None or a.threads_per_worker is not None:
            self.workers = a.workers or 2
            self.threads = a.threads_per_worker or 1
            return {"users": None, "chosen": {"workers": self.workers,
                                              "threads_per_worker": self.threads},
                    "note": "given on the command line"}
        if not a.tune_users or "preassign" not in a.peers:
            return {"users": None, "chosen": {"workers": self.workers,
                                              "threads_per_worker": self.threads},
                    "note": "not tuned (default 2 workers x 1 thread)"}
        users = a.tune_users
        self.lakes.setdefault(users, ensure_lake(a.cache, users, self.work / "logs"))
        warm = self.run_peer("preassign", users, "tune-warmup", workers=2, threads=1)
        candidates = []
        for w, t in ((2, 1), (1, 2)):
            rec = self.run_peer("preassign", users, f"tune-{w}x{t}", workers=w, threads=t)
            candidates.append(rec)
        ok = [c for c in candidates if c["status"] == "ok"]
        if not ok:
            raise RuntimeError("preassign failed in both configurations; see the logs")
        best = min(ok, key=lambda c: c["wall_seconds"])
        self.workers, self.threads = best["workers"], best["threads_per_worker"]
        return {"users": users, "warmup": _brief(warm),
                "candidates": [_brief(c) for c in candidates],
                "chosen": {"workers": self.workers, "threads_per_worker": self.threads}}

    def check_peers(self, records: dict[str, dict[str, Any]] | None = None
                    ) -> dict[str, Any]:
        """Same assignments from DuckDB, Polars and preassign on the --check-users lake?

        With ``records`` (the measured runs of that size), their last outputs are compared;
        otherwise each is run once here.
        """
        users = self.args.check_users
        peers = [p for p in ("duckdb", "polars") if p in self.args.peers]
        if records is None:
            self.lakes.setdefault(users, ensure_lake(self.args.cache, users, self.work / "logs"))
            recs = {"preassign": self.run_peer("preassign", users, "check")}
            for p in peers:
                recs[p] = self.run_peer(p, users, "check", save=True)
        else:
            recs = {p: (records[p]["runs"] or records[p]["warmups"] or
                        [{"status": records[p]["status"], "log": ""}])[-1]
                    for p in ["preassign", *peers] if p in records}
        out: dict[str, Any] = {}
        for p in peers:
            res: dict[str, Any] = {"users": users, "peer": p,
                                   "preassign_status": recs["preassign"]["status"],
                                   f"{p}_status": recs[p]["status"]}
            if recs["preassign"]["status"] != "ok" or recs[p]["status"] != "ok":
                res.update(matched=False, error="a run failed; see the logs",
                           logs=[recs["preassign"]["log"], recs[p]["log"]])
            else:
                got = _normalize(_read_assignments(
                    self.work / f"preassign-{users}" / "out" / "assignments"))
                exp = _normalize(_read_assignments(
                    self.work / f"{p}-{users}" / "assignments.parquet"))
                res.update(_compare(got, exp, "preassign", p))
            out[p] = res
        return out

    def check_here(self, users: int) -> bool:
        """True when the peer checks reuse the measured runs of this size."""
        a = self.args
        return (users == a.check_users and users in a.sizes and "preassign" in a.peers
                and bool({"duckdb", "polars"} & set(a.peers)))

    def check_reference(self, users: int, rec: dict[str, Any]) -> dict[str, Any]:
        """The reference's sample boxes equal preassign's boxes for those users?"""
        out_dir = self.work / f"preassign-{users}" / "out" / "assignments"
        ref_file = self.work / f"reference-{users}" / "assignments.parquet"
        if not out_dir.exists() or not ref_file.exists():
            return {"matched": None, "note": "preassign output or reference output missing"}
        ref = _normalize(_read_assignments(ref_file))
        ids = sorted(set(sample_targets(self.lakes[users]["path"],
                                        self.args.reference_sample)))
        got = _normalize(_read_assignments(out_dir, users=ids))
        return _compare(got, ref, "preassign", "reference")

    def _timeout(self, peer: str) -> float:
        a = self.args
        return {"duckdb": a.duckdb_max_seconds, "polars": a.polars_max_seconds,
                "shuffled": a.shuffled_max_seconds,
                "shuffled_files": a.shuffled_max_seconds}.get(peer, a.timeout)

    def _rounds(self, users: int, peers: list[str],
                records: dict[str, dict[str, Any]]) -> None:
        """Warm-ups then timed runs of ``peers``, round-robin, into ``records``."""
        a = self.args
        rounds = [("warmup", i) for i in range(a.warmups)] + [("run", i) for i in range(a.repeats)]
        for kind, i in rounds:
            self.loads.append({"users": users, "round": f"{kind}{i}", "at": time.time(),
                               "loadavg": list(os.getloadavg())})
            for p in peers:
                r = records[p]
                if r["status"] != "ok":
                    continue
                rec = self.run_peer(p, users, f"{kind}{i}", timeout=self._timeout(p),
                                    save=(p in ("duckdb", "polars") and self.check_here(users)))
                (r["warmups"] if kind == "warmup" else r["runs"]).append(rec)
                if rec["status"] == "timeout":
                    limit = self._timeout(p)
                    if p in SKIPPABLE:
                        r.update(status="skipped", reason=f"a run took over --{p}-max-seconds="
                                 f"{limit:g} s (killed)")
                    else:
                        r.update(status="failed", reason=f"timed out after {limit:g} s")
                elif rec["status"] != "ok":
                    r.update(status="failed", reason=f"exit {rec['returncode']}: "
                             f"{rec.get('error', '')} (log {rec['log']})")

    def measure_size(self, users: int, skips: dict[str, str]) -> list[dict[str, Any]]:
        """Warm-ups then timed runs, round-robin over the lake peers, on one lake."""
        a = self.args
        peers = [p for p in a.peers if p in LAKE_PEERS and users >= a.min_users.get(p, 0)]
        records: dict[str, dict[str, Any]] = {
            p: {"users": users, "peer": p, "runs": [], "warmups": [], "status": "ok"}
            for p in peers}
        for p, why in skips.items():
            if p in records and why:
                records[p].update(status="skipped", reason=why)
        if "shuffled" in records:
            try:
                self.ensure_shuffled(users)
            except RuntimeError as exc:
                records["shuffled"].update(status="failed", reason=str(exc))
        self._rounds(users, peers, records)
        facts = self.lakes[users]
        for r in records.values():
            if r["peer"] == "stock_aware" and users in self.variants:
                r["variant"] = {k: v for k, v in self.variants[users].items() if k != "path"}
            if r["peer"] == "shuffled" and users in self.shuffled:
                r["copy"] = self.shuffled[users]
            _summarize(r, facts)
        cold = records.get("preassign")
        for p in ("warm", "shuffled", "shuffled_files"):  # the same boxes, so the same units
            r = records.get(p)
            if cold and r and cold["status"] == "ok" and r["status"] == "ok":
                got = ([x for x in r["runs"] if x["status"] == "ok"][-1]).get("units_total")
                r["units_match"] = got == cold.get("units_total") if got is not None else None
        if self.check_here(users):
            self.checks = self.check_peers(records)
        if "reference" in records and records["reference"]["status"] == "ok" \
                and "preassign" in records and records["preassign"]["status"] == "ok":
            records["reference"]["check"] = self.check_reference(users, records["reference"])
        return list(records.values())

    # ---------------------------------------------------------------- extraction

    def measure_extract(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Extraction from a throwaway MariaDB at each --extract-sizes (grown in place)."""
        a = self.args
        sizes = sorted(a.extract_sizes)
        base = a.extract_base_users
        info: dict[str, Any] = {"base_users": base, "sizes": {}}
        peers = [p for p in EXTRACT_PEERS if p in a.peers]
        results: list[dict[str, Any]] = []
        if not sizes or not peers:
            return results, info
        bad = [n for n in sizes if n % base]
        if bad:
            raise RuntimeError(f"--extract-sizes {bad} are not multiples of "
                               f"--extract-base-users {base}")
        try:
            from tests.support.services import throwaway_mariadb
            server_cm = throwaway_mariadb(prefix="preassign-xbench-")
            server = server_cm.__enter__()
        except (RuntimeError, ImportError, OSError, subprocess.SubprocessError) as exc:
            reason = f"no MariaDB: {exc}"
            _say(f"extraction skipped: {reason}")
            for n in sizes:
                results += [{"users": n, "peer": p, "runs": [], "warmups": [],
                             "status": "skipped", "reason": reason} for p in peers]
            return results, info
        xb = importlib.import_module("benchmarks.extract_bench")
        try:
            with server.admin() as conn, conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                info["server"] = cur.fetchone()[0]
            url = server.url(server.create_database())
            self.extract_env = {**(_ENV or os.environ), "PREASSIGN_SOURCE_URL": url}
            load = measure(_preassign_cmd() + ["synth", "--db", "", "--users", str(base),
                                               "--date", DATE_FROM.isoformat(), "--silent",
                                               "--loglevel", "WARNING"],
                           log=self.work / "logs" / "synth-db.log", timeout=7200,
                           env=self.extract_env)
            if load.returncode != 0:
                raise RuntimeError(f"synth --db failed; see {load.log}")
            info["load_seconds"] = load.wall_seconds
            copies = 1
            for n in sizes:
                want = n // base
                size_info: dict[str, Any] = {"replicate": want}
                if want > copies:
                    size_info["replicate_seconds"] = round(
                        xb.replicate(url, base, want, start=copies), 1)
                    copies = want
                size_info.update(xb.database_facts(url))
                pool = max(GIB, min(int(size_info["innodb_bytes"] * 1.25),
                                    _parse_size(a.extract_buffer_pool_max)))
                server.execute(f"SET GLOBAL innodb_buffer_pool_size = {pool}")
                with server.admin() as conn, conn.cursor() as cur:
                    cur.execute("SELECT @@innodb_buffer_pool_size")
                    size_info["buffer_pool_bytes"] = int(cur.fetchone()[0])
                _say(f"database of {n:,} users: {size_info['rows_total']:,} rows, "
                     f"{size_info['innodb_bytes'] / GIB:.1f} GiB in InnoDB, buffer pool "
                     f"{size_info['buffer_pool_bytes'] / GIB:.1f} GiB")
                info["sizes"][str(n)] = size_info
                records = {p: {"users": n, "peer": p, "runs": [], "warmups": [],
                               "status": "ok"} for p in peers}
                self._rounds(n, peers, records)
                for r in records.values():
                    r["database"] = size_info
                    _summarize(r, {"users_targeted": None})
                    last = ([x for x in r["runs"] if x["status"] == "ok"] or [{}])[-1]
                    got = last.get("rows") or last.get("lake_rows")
                    if got is not None:
                        r["rows_check"] = {"matched": got == size_info["rows"],
                                           "rows_total": sum(got.values())}
                results += list(records.values())
        finally:
            server_cm.__exit__(None, None, None)
            self.extract_env = None
        return results, info

    def measure_overhead(self) -> dict[str, Any]:
        """The scheduler's overhead per task: batches of no-op tasks, one process."""
        rec = self.run_peer("overhead", 0, "run0")
        if rec["status"] != "ok":
            return {"status": rec["status"], "log": rec["log"], "error": rec.get("error")}
        return {k: rec[k] for k in ("status", "tasks_per_batch", "batches", "per_task_seconds",
                                    "inner_seconds", "round_trip_seconds", "workers",
                                    "threads_per_worker", "wall_seconds")}


def _parse_size(text: str) -> int:
    units = {"K": 1024, "M": MIB, "G": GIB, "T": 1024 * GIB}
    t = text.strip().upper().rstrip("IB").rstrip("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def _extracted_rows(lake: Path) -> dict[str, int] | None:
    """Rows per table of an extracted lake (its current version), from Parquet footers."""
    import pyarrow.parquet as pq

    try:
        root = lake
        pointer = lake / "_CURRENT"
        if pointer.exists():
            root = lake / pointer.read_text().strip()
        out = {}
        for table in FLOOR_COLUMNS:
            files = [f for f in (root / table).rglob("*.parquet")
                     if not any(part.startswith(("_", ".")) for part in
                                f.relative_to(root / table).parts)]
            out[table] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        return out
    except (OSError, ValueError):
        return None


def _brief(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("tag", "status", "wall_seconds", "peak_rss_max_bytes", "peak_rss_worker_bytes",
            "peak_rss_tree_bytes", "workers", "threads_per_worker", "stage_seconds",
            "other_cpu_seconds")
    return {k: rec[k] for k in keys if k in rec}


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def _summarize(r: dict[str, Any], facts: dict[str, Any]) -> None:
    """Median/min/max and derived numbers of one (size, peer) record, in place."""
    users = r["users"]
    peer = r["peer"]
    r["users_targeted"] = facts.get("users_targeted")
    runs = [x for x in r["runs"] if x["status"] == "ok"]
    if r["status"] != "ok" or not runs:
        if r["status"] == "ok":
            r.update(status="failed", reason="no successful run")
        # what the failed or killed runs used, for the report
        tried = r["runs"] + r["warmups"]
        if tried:
            r["attempts"] = [_brief(x) | {"error": x.get("error")} for x in tried]
        return
    walls = [x["wall_seconds"] for x in runs]
    r["wall_seconds"] = _stats(walls)
    inner = [x["inner_seconds"] for x in runs if isinstance(x.get("inner_seconds"), float | int)]
    if inner:
        r["inner_seconds"] = _stats(inner)
    for k in ("peak_rss_max_bytes", "peak_rss_worker_bytes", "peak_rss_tree_bytes"):
        r[k] = max(x[k] for x in runs)
    others = [x["other_cpu_seconds"] / max(x["wall_seconds"], 1e-9) for x in runs]
    r["other_cpu_cores"] = {"median": statistics.median(others), "max": max(others)}
    kind = TIMED[peer]
    if peer == "reference":
        per_user = statistics.median(x["per_user_seconds"] for x in runs)
        r["per_user_seconds"] = per_user
        r["sample_users"] = runs[0]["users_targeted"]
        r["extrapolated_seconds"] = per_user * facts["users_targeted"]
        r["time"] = {"median": r["extrapolated_seconds"], "min": None, "max": None,
                     "kind": kind}
        r["users_per_second"] = users / r["extrapolated_seconds"]
        return
    if peer == "warm":
        r["time"] = {**_stats([s for x in runs for s in x["rerun_seconds"]]), "kind": kind}
        r["session_open_seconds"] = statistics.median(x["session_open_seconds"] for x in runs)
        r["first_run_seconds"] = statistics.median(x["first_run_seconds"] for x in runs)
    elif peer == "partition":
        r["time"] = {**_stats([s for x in runs for s in x["partition_seconds"]]), "kind": kind}
        timed = [row for x in runs for row in x["rows"] if not row["warmup"]]
        r["partition"] = {
            "users": statistics.median(row["users"] for row in timed),
            "build_seconds": statistics.median(row["build_seconds"] for row in timed),
            "assign_seconds": statistics.median(row["assign_seconds"] for row in timed),
            "write_seconds": statistics.median(row["write_seconds"] for row in timed),
            "peak_bytes": max((row["peak_bytes"] or 0) for x in runs for row in x["rows"]),
            "process_peak_bytes": r["peak_rss_max_bytes"],
            "partitions_in_lake": runs[0]["partitions_in_lake"]}
        r["users_per_second"] = r["partition"]["users"] / r["time"]["median"]
        return
    elif peer == "extract_select":
        r["time"] = {**r["inner_seconds"], "kind": kind}
    else:
        r["time"] = {**r["wall_seconds"], "kind": kind}
    r["users_per_second"] = users / r["time"]["median"]
    if peer in RUNS:
        stages: dict[str, list[float]] = {}
        for x in runs:
            for k, v in x.get("stage_seconds", {}).items():
                stages.setdefault(k, []).append(v)
        r["stage_seconds"] = {k: statistics.median(v) for k, v in stages.items()}
        r["config"] = {"workers": runs[0]["workers"],
                       "threads_per_worker": runs[0]["threads_per_worker"]}
        for k in ("rounds", "boxes_changed", "units_total", "units_unconstrained",
                  "boxes_short", "boxes_short_unconstrained", "snacks_limited", "layout",
                  "assignments_bytes"):
            if k in runs[-1]:
                r[k] = runs[-1][k]


def _read_assignments(path: Path, users: list[int] | None = None) -> Any:
    import pandas as pd

    filters = None
    if users:
        filters = [("user_id", ">=", min(users)), ("user_id", "<=", max(users))]
    df = pd.read_parquet(path, columns=ASSIGNMENT_COLUMNS, filters=filters)
    if users:
        df = df[df["user_id"].isin(users)]
    return df


def _normalize(df: Any) -> Any:
    import pandas as pd

    out = pd.DataFrame({
        "delivery_on": pd.to_datetime(pd.Series(df["delivery_on"]).astype("object"))
        .dt.strftime("%Y-%m-%d").to_numpy(),
        "user_id": df["user_id"].astype("int64").to_numpy(),
        "slot": df["slot"].astype("int64").to_numpy(),
        "snack_id": df["snack_id"].astype("int64").to_numpy(),
        "stage": df["stage"].astype(str).to_numpy(),
    })
    return out.sort_values(["user_id", "slot"], kind="stable").reset_index(drop=True)


def _compare(a: Any, b: Any, name_a: str, name_b: str) -> dict[str, Any]:
    import pandas as pd

    merged = pd.merge(a, b, on=["user_id", "slot"], how="outer", suffixes=("_a", "_b"),
                      indicator=True)
    diff = merged[(merged["_merge"] != "both")
                  | (merged["snack_id_a"] != merged["snack_id_b"])
                  | (merged["stage_a"] != merged["stage_b"])
                  | (merged["delivery_on_a"] != merged["delivery_on_b"])]
    res = {"matched": bool(len(diff) == 0), f"{name_a}_rows": len(a), f"{name_b}_rows": len(b),
           "peer_rows": len(b),
           "users_compared": int(a["user_id"].nunique()), "mismatched_rows": int(len(diff))}
    if len(diff):
        res["example"] = diff.head(3).astype(str).to_dict("records")
    return res


# ============================================================================ analysis


def _get(results: list[dict[str, Any]], users: int, peer: str) -> dict[str, Any] | None:
    for r in results:
        if r["users"] == users and r["peer"] == peer and r["status"] == "ok":
            return r
    return None


def _t(r: dict[str, Any]) -> float:
    """The peer's reported time (median): process wall, in-process or extrapolated."""
    return r["time"]["median"]


def compute_ratios(results: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    """Per size, the ratios between peers measured on the same lake in the same run."""
    out = []
    for n in sizes:
        got = {p: _get(results, n, p) for p in PEERS}
        src = (got["preassign"] or got["floor"] or {}).get("merged_from")
        # only peers measured side by side (in the same run) are compared: the lake peers
        # with the cold run's run, the extraction peers with each other
        got = {p: (x if x and (x.get("merged_from") == src or p in EXTRACT_PEERS) else None)
               for p, x in got.items()}
        pa_r, fl = got["preassign"], got["floor"]
        row: dict[str, Any] = {"users": n}

        def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
            same = a and b and a.get("merged_from") == b.get("merged_from")
            return _t(a) / _t(b) if a and b and same else None

        # the floor as issue 13 defines it: in-process time, best of runs
        floor_best = (fl["inner_seconds"]["min"]
                      if fl and fl.get("inner_seconds") else None)
        row["floor_seconds"] = floor_best
        row["preassign_over_floor"] = _t(pa_r) / floor_best if pa_r and floor_best else None
        row["preassign_over_floor_process"] = ratio(pa_r, fl)
        row["duckdb_over_preassign"] = ratio(got["duckdb"], pa_r)
        row["polars_over_preassign"] = ratio(got["polars"], pa_r)
        row["reference_over_preassign_per_user"] = (
            got["reference"]["per_user_seconds"] / (_t(pa_r) / max(pa_r["users_targeted"], 1))
            if got["reference"] and pa_r else None)
        warm = got["warm"]
        row["warm_over_floor"] = _t(warm) / floor_best if warm and floor_best else None
        row["warm_over_floor_process"] = ratio(warm, fl)
        row["preassign_over_warm"] = ratio(pa_r, warm)
        row["stock_aware_over_preassign"] = ratio(got["stock_aware"], pa_r)
        row["shuffled_over_preassign"] = ratio(got["shuffled"], pa_r)
        row["shuffled_worker_peak_over_preassign"] = (
            got["shuffled"]["peak_rss_worker_bytes"] / pa_r["peak_rss_worker_bytes"]
            if got["shuffled"] and pa_r else None)
        row["shuffled_files_over_preassign"] = ratio(got["shuffled_files"], pa_r)
        row["shuffled_files_worker_peak_over_preassign"] = (
            got["shuffled_files"]["peak_rss_worker_bytes"] / pa_r["peak_rss_worker_bytes"]
            if got["shuffled_files"] and pa_r else None)
        row["extract_over_select"] = ratio(got["extract"], got["extract_select"])
        row["run_extract_over_extract"] = ratio(got["run_extract"], got["extract"])
        out.append(row)
    return out


def fit_exponent(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x); None with fewer than two x values."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _rows(results: list[dict[str, Any]], peer: str) -> list[dict[str, Any]]:
    return sorted((r for r in results if r["peer"] == peer and r["status"] == "ok"),
                  key=lambda r: r["users"])


def compute_scaling(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Scaling exponents of preassign's time and worker memory (and of the other runs)."""
    pa_rows = _rows(results, "preassign")
    big = [r for r in pa_rows if r["users"] >= FIT_MIN_USERS]

    def k(rows: list[dict[str, Any]], value: Any) -> float | None:
        return fit_exponent([(r["users"], value(r)) for r in rows
                             if r["users"] >= FIT_MIN_USERS])

    def compute(r: dict[str, Any]) -> float:
        return r["stage_seconds"].get("scan", 0) + r["stage_seconds"].get("assign", 0)

    pair = [r for r in pa_rows if r["users"] in (1_000_000, 2_000_000)]
    return {
        "fit_min_users": FIT_MIN_USERS,
        "fitted_sizes": [r["users"] for r in big],
        "exponent": k(pa_rows, _t),
        "exponent_all_sizes": fit_exponent([(r["users"], _t(r)) for r in pa_rows]),
        "compute_exponent": k(pa_rows, compute),
        "worker_memory_exponent": k(pa_rows, lambda r: r["peak_rss_worker_bytes"]),
        "exponent_1m_2m": fit_exponent([(r["users"], _t(r)) for r in pair]),
        "compute_exponent_1m_2m": fit_exponent([(r["users"], compute(r)) for r in pair]),
        "warm_exponent": k(_rows(results, "warm"), _t),
        "stock_aware_exponent": k(_rows(results, "stock_aware"), _t),
        "shuffled_exponent": k(_rows(results, "shuffled"), _t),
        "shuffled_worker_memory_exponent": k(_rows(results, "shuffled"),
                                             lambda r: r["peak_rss_worker_bytes"]),
        "shuffled_files_exponent": k(_rows(results, "shuffled_files"), _t),
        "shuffled_files_worker_memory_exponent": k(_rows(results, "shuffled_files"),
                                                   lambda r: r["peak_rss_worker_bytes"]),
        "extract_exponent": k(_rows(results, "extract"), _t),
    }


def evaluate_targets(results: list[dict[str, Any]], ratios: list[dict[str, Any]],
                     scaling: dict[str, Any], target_users: int,
                     memory_users: int) -> list[dict[str, Any]]:
    """The targets of issues 13 and 6 and whether each is met (None: not measured)."""
    at = next((r for r in ratios if r["users"] == target_users), {})
    n = f"{target_users:,}"

    def row(name: str, issue: int, target: str, value: float | None, met: bool | None,
            note: str = "") -> dict[str, Any]:
        return {"name": name, "issue": issue, "target": target, "value": value, "met": met,
                "note": note}

    def cmp(v: float | None, ok: Any) -> bool | None:
        return None if v is None else bool(ok(v))

    def why(peer: str, users: int = target_users) -> str:
        r = next((x for x in results if x["users"] == users and x["peer"] == peer), None)
        if r is None:
            return f"{peer} not run at {users:,}"
        if r["status"] != "ok":
            return f"{peer} {r['status']}: {r.get('reason', '')}"
        return ""

    out = []
    v = at.get("preassign_over_floor")
    out.append(row("floor", 13, f"preassign (cold, process) / floor (in-process, best of "
                   f"runs) <= {TARGET_FLOOR_RATIO:g} at {n}", v,
                   cmp(v, lambda x: x <= TARGET_FLOOR_RATIO)))
    for peer, label in (("duckdb", "DuckDB"), ("polars", "Polars")):
        v = at.get(f"{peer}_over_preassign")
        out.append(row(peer, 13, f"{label} / preassign (cold) >= {TARGET_PEER_SPEEDUP:g} at {n}",
                       v, cmp(v, lambda x: x >= TARGET_PEER_SPEEDUP),
                       "" if v is not None else why(peer)))
    v = at.get("stock_aware_over_preassign")
    out.append(row("stock_aware", 13, f"stock-aware / preassign (cold) <= {TARGET_STOCK_RATIO:g}"
                   f" at {n} (stock {STOCK_COVERAGE:.0%} of each snack's units)", v,
                   cmp(v, lambda x: x <= TARGET_STOCK_RATIO),
                   "" if v is not None else why("stock_aware")))
    v = at.get("warm_over_floor")
    out.append(row("warm", 13, f"warm session re-run / floor (best) <= "
                   f"{TARGET_WARM_RATIO:g} at {n} (in-process times)", v,
                   cmp(v, lambda x: x <= TARGET_WARM_RATIO),
                   "" if v is not None else why("warm")))
    v = at.get("extract_over_select")
    out.append(row("extract_ratio", 13, f"`preassign extract` / bare SELECT <= "
                   f"{TARGET_EXTRACT_RATIO:g} at {n}", v,
                   cmp(v, lambda x: x <= TARGET_EXTRACT_RATIO),
                   "" if v is not None else why("extract")))
    ex = _get(results, 1_000_000, "extract")
    v = _t(ex) if ex else None
    out.append(row("extract_1m", 13, f"`preassign extract` of 1,000,000 users <= "
                   f"{TARGET_EXTRACT_SECONDS:g} s", v,
                   cmp(v, lambda x: x <= TARGET_EXTRACT_SECONDS),
                   "" if v is not None else why("extract", 1_000_000)))
    v = scaling.get("shuffled_worker_memory_exponent")
    sh = [r for r in results if r["peer"] == "shuffled"]
    note = "; ".join(f"{r['users']:,}: {r['status']}" + (f" ({r.get('reason', '')[:160]})"
                                                         if r["status"] != "ok" else "")
                     for r in sh) if v is None else ""
    out.append(row("shuffled_memory", 13, f"shuffled layout: worker peak flat in users, "
                   f"k <= {TARGET_MEMORY_EXPONENT} (sizes >= {FIT_MIN_USERS:,})", v,
                   cmp(v, lambda x: x <= TARGET_MEMORY_EXPONENT), note))
    v = at.get("reference_over_preassign_per_user")
    out.append(row("reference", 6, f"reference / preassign per user >= "
                   f"{TARGET_REFERENCE_SPEEDUP:g} at {n}", v,
                   cmp(v, lambda x: x >= TARGET_REFERENCE_SPEEDUP)))
    v = scaling["exponent"]
    out.append(row("exponent", 6, f"time ~ users^k, k <= {TARGET_EXPONENT} (sizes >= "
                   f"{FIT_MIN_USERS:,})", v, cmp(v, lambda x: x <= TARGET_EXPONENT),
                   f"fitted on {scaling['fitted_sizes']}"))
    v = scaling["worker_memory_exponent"]
    out.append(row("memory_flat", 6, f"worker peak ~ users^k, k <= {TARGET_MEMORY_EXPONENT} "
                   f"(sizes >= {FIT_MIN_USERS:,})", v,
                   cmp(v, lambda x: x <= TARGET_MEMORY_EXPONENT)))
    pa_mem = _get(results, memory_users, "preassign")
    v = pa_mem["peak_rss_worker_bytes"] / GIB if pa_mem else None
    out.append(row("memory_2m", 6, f"worker peak <= {TARGET_WORKER_MEMORY / GIB:g} GiB at "
                   f"{memory_users:,}", v, cmp(v, lambda x: x <= TARGET_WORKER_MEMORY / GIB)))
    return out


def compute_partitions(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: throughput and memory per partition, measured directly and in the runs."""
    out = []
    for n in sorted({r["users"] for r in results if r["peer"] in ("partition", "preassign")}):
        part, pa_r = _get(results, n, "partition"), _get(results, n, "preassign")
        row: dict[str, Any] = {"users": n}
        if part:
            p = part["partition"]
            row.update(direct_seconds=_t(part), direct_users=p["users"],
                       direct_users_per_second=p["users"] / _t(part),
                       direct_build_seconds=p["build_seconds"],
                       direct_assign_seconds=p["assign_seconds"],
                       direct_write_seconds=p["write_seconds"],
                       direct_peak_bytes=p["peak_bytes"] or p["process_peak_bytes"])
        if pa_r:
            cores = pa_r["config"]["workers"] * pa_r["config"]["threads_per_worker"]
            parts = math.ceil(n / USERS_PER_PARTITION)
            compute = pa_r["stage_seconds"].get("scan", 0) + pa_r["stage_seconds"].get(
                "assign", 0)
            row.update(cluster_partitions=parts, cluster_cores=cores,
                       cluster_seconds_per_partition=compute * cores / parts,
                       cluster_users_per_second_per_core=n / (compute * cores),
                       cluster_worker_peak_bytes=pa_r["peak_rss_worker_bytes"],
                       cluster_threads_per_worker=pa_r["config"]["threads_per_worker"])
        out.append(row)
    return out


def fargate_defaults() -> dict[str, Any]:
    """The Fargate section of cluster/defaults.yaml (worker and scheduler sizes)."""
    import yaml

    path = REPO / "cluster" / "defaults.yaml"
    data = yaml.safe_load(path.read_text())["fargate"]
    return {"file": "cluster/defaults.yaml",
            **{k: data.get(k) for k in ("worker_cpu", "worker_mem", "threads_per_worker",
                                        "scheduler_cpu", "scheduler_mem")}}


def estimate_fargate(results: list[dict[str, Any]], lakes: dict[int, dict[str, Any]],
                     overhead: dict[str, Any] | None,
                     partitions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """10M users on 8/16/32 Fargate workers, projected from this run's measurements."""
    f = FARGATE
    d = fargate_defaults()
    rows_pa = _rows(results, "preassign")
    if not rows_pa:
        return None
    r = rows_pa[-1]
    n = r["users"]
    prow = next((p for p in partitions if p["users"] == n), {})
    upp = f["users_per_partition"]
    # seconds for one partition of 50,000 users on one core, from the users/s per core
    # measured one partition at a time and in the cold runs (the slower of the two)
    direct = (upp / prow["direct_users_per_second"]
              if prow.get("direct_users_per_second") else None)
    cluster = (upp / prow["cluster_users_per_second_per_core"]
               if prow.get("cluster_users_per_second_per_core") else None)
    t_partition = max(x for x in (direct, cluster) if x is not None)
    vcpu = d["worker_cpu"] / 1024
    mem_gb = d["worker_mem"] / 1024
    threads = d["threads_per_worker"] or max(1, int(vcpu))
    s_vcpu, s_gb = d["scheduler_cpu"] / 1024, d["scheduler_mem"] / 1024
    parts = math.ceil(f["users"] / f["users_per_partition"])
    lake_bytes = lakes[n]["bytes_total"] / n * f["users"]
    out_bytes = (r.get("assignments_bytes") or 0) / n * f["users"]
    per_task = (overhead or {}).get("inner_seconds")
    scheduler = parts * f["tasks_per_partition"] * per_task if per_task else 0.0
    st = r["stage_seconds"]
    fixed_local = max(_t(r) - st.get("cluster_start", 0) - st.get("scan", 0)
                      - st.get("assign", 0), 0.0)
    peak = prow.get("direct_peak_bytes") or r["peak_rss_worker_bytes"]
    need_mib = peak / MIB * threads + f["dask_worker_overhead_mib"]
    worker_rate = vcpu * f["price_per_vcpu_hour"] + mem_gb * f["price_per_gb_hour"]
    sched_rate = s_vcpu * f["price_per_vcpu_hour"] + s_gb * f["price_per_gb_hour"]
    rows = []
    for w in f["worker_counts"]:
        waves = math.ceil(parts / (w * threads))
        compute_s = waves * t_partition
        s3_s = (lake_bytes + out_bytes) / (w * f["s3_mb_per_second_per_worker"] * 1e6)
        wall = f["startup_seconds"] + compute_s + s3_s + scheduler + fixed_local
        rows.append({"workers": w, "waves": waves, "compute_seconds": compute_s,
                     "s3_seconds": s3_s, "scheduler_seconds": scheduler,
                     "fixed_seconds": f["startup_seconds"] + fixed_local,
                     "wall_seconds": wall,
                     "cost_usd": wall / 3600 * (w * worker_rate + sched_rate)})
    return {"assumptions": dict(f), "defaults": d, "measured_at_users": n,
            "partition_seconds": t_partition, "partition_seconds_direct": direct,
            "partition_seconds_cluster": cluster, "partitions": parts,
            "worker_vcpu": vcpu, "worker_memory_gb": mem_gb, "threads_per_worker": threads,
            "lake_bytes": lake_bytes, "output_bytes": out_bytes,
            "overhead_per_task_seconds": per_task, "fixed_local_seconds": fixed_local,
            "worker_memory_needed_mib": need_mib,
            "worker_memory_fits": need_mib <= 0.95 * d["worker_mem"],
            "users_per_second_per_worker": f["users_per_partition"] / t_partition * threads,
            "rows": rows}


# ============================================================================ report


def machine_info() -> dict[str, Any]:
    """nproc, memory, CPU model, Python and package versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    for name in ("preassign", "dask", "distributed", "pandas", "numpy", "pyarrow", "duckdb",
                 "polars", "numba", "connectorx"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            pass
    return {"nproc": os.cpu_count(), "memory_bytes": mem, "cpu_model": cpu,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": versions, "loadavg_at_start": list(os.getloadavg()),
            "mem_available_at_start": _mem_available()}


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _fmt_b(x: int | float | None) -> str:
    return "–" if not x else f"{x / MIB:,.0f} MiB"


def _fmt_r(x: float | None) -> str:
    return "–" if x is None else (f"{x:,.0f}×" if x >= 100 else f"{x:.2f}×")


def _note(r: dict[str, Any]) -> str:
    """The notes column of one (size, peer) row."""
    p = r["peer"]
    parts: list[str] = []
    if p == "reference":
        parts.append(f"{r['per_user_seconds'] * 1e3:.1f} ms/user × {r['users_targeted']:,} "
                     f"targets; sample of {r['sample_users']} took "
                     f"{_fmt_s(r['inner_seconds']['median'])} s")
        chk = r.get("check", {})
        if chk.get("matched") is not None:
            parts.append(f"boxes {'=' if chk['matched'] else '≠'} preassign")
    elif p in RUNS:
        st = r["stage_seconds"]
        parts.append(", ".join(f"{k} {v:.1f}" for k, v in st.items()
                               if k in ("cluster_start", "extract", "scan", "assign",
                                        "report", "publish")))
        if p == "stock_aware":
            v = r.get("variant") or {}
            parts.append(f"{r.get('rounds')} rounds, {r.get('boxes_changed', 0):,} boxes "
                         f"changed, units {r.get('units_total', 0):,} of "
                         f"{r.get('units_unconstrained', 0):,} unconstrained; stock "
                         f"{v.get('stock_total', 0):,} = "
                         f"{(v.get('stock_over_units') or 0):.1%} of the units")
        if p in ("shuffled", "shuffled_files"):
            parts.append(f"layout {r.get('layout')}")
        if r.get("units_match") is not None:
            parts.append(f"units {'=' if r['units_match'] else '**≠**'} cold run")
    elif p == "warm":
        parts.append(f"session open {_fmt_s(r['session_open_seconds'])} s, first run "
                     f"{_fmt_s(r['first_run_seconds'])} s (untimed); {r['time']['n']} "
                     f"re-runs; process wall {_fmt_s(r['wall_seconds']['median'])} s")
    elif p == "partition":
        q = r["partition"]
        parts.append(f"{q['users']:,.0f} users/partition: read+check+state "
                     f"{q['build_seconds']:.2f}, boxes {q['assign_seconds']:.2f}, write "
                     f"{q['write_seconds']:.2f} s; peak {_fmt_b(q['peak_bytes'])}")
    elif p == "extract_select":
        parts.append(f"process wall {_fmt_s(r['wall_seconds']['median'])} s")
    elif "inner_seconds" in r:
        parts.append(f"in-process {_fmt_s(r['inner_seconds']['median'])} s")
    if p in EXTRACT_PEERS and r.get("rows_check"):
        c = r["rows_check"]
        parts.append(f"{c['rows_total']:,} rows {'=' if c['matched'] else '≠'} database")
    if r.get("merged_from"):
        parts.append(f"from {r['merged_from']}")
    return "; ".join(x for x in parts if x)


def _size_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| peer | time is | runs | median (s) | min | max | users/s | worker peak | "
             "biggest process | all processes | other CPU | notes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        label = LABELS.get(r["peer"], r["peer"])
        if r["status"] != "ok":
            peak = max((x.get("peak_rss_worker_bytes") or 0) for x in r.get("attempts", [])
                       ) if r.get("attempts") else None
            lines.append(f"| {label} | – | – | – | – | – | – | {_fmt_b(peak)} | – | – | – | "
                         f"**{r['status']}**: {r.get('reason', '')} |")
            continue
        t = r["time"]
        runs = f"{len(r['warmups'])}+{len([x for x in r['runs'] if x['status'] == 'ok'])}"
        other = r.get("other_cpu_cores") or {}
        lines.append(
            f"| {label} | {t['kind']} | {runs} | {_fmt_s(t['median'])} | {_fmt_s(t['min'])} | "
            f"{_fmt_s(t['max'])} | {r['users_per_second']:,.0f} | "
            f"{_fmt_b(r['peak_rss_worker_bytes'])} | {_fmt_b(r['peak_rss_max_bytes'])} | "
            f"{_fmt_b(r['peak_rss_tree_bytes'])} | {other.get('median', 0):.2f} | "
            f"{_note(r)} |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    m = report["machine"]
    s = report["settings"]
    cfg = report["config_choice"]["chosen"]
    code = report.get("code") or {}
    load = report.get("load") or {}
    lines = [
        f"# preassign benchmark — {report['started_at']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{(m['memory_bytes'] or 0) / GIB:.1f} GiB RAM, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".  ",
        f"Load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}"
        + (f"; 1-minute load at the start of each round: median {load['median']:.2f}, "
           f"min {load['min']:.2f}, max {load['max']:.2f} ({load['samples']} rounds; the "
           f"benchmark's own runs count in it)" if load.get("samples") else "")
        + (f"; CPU used by other processes while a run was measured: median "
           f"{report['other_cpu']['median']:.2f} cores, max {report['other_cpu']['max']:.2f}"
           if report.get("other_cpu") else "") + ".  ",
        f"Command: `{report['command']}` ({report.get('seconds_total', 0) / 60:.0f} min).  ",
        f"Code: git {code.get('git_head')}"
        f"{' with uncommitted changes: ' + '; '.join(code['dirty']) if code.get('dirty') else ''}"
        f" (sha256 of the code under test {code.get('sha256', '?')[:12]}).  ",
        *[f"Merged: results of `{x['command']}` ({x['started_at']}) where this run measured "
          f"nothing ({'same code' if x['same_code'] else '**different code**'}).  "
          for x in report.get("merged", [])],
        f"Range {DATE_FROM} .. {DATE_TO}; {s['warmups']} warm-up + {s['repeats']} timed runs "
        f"per peer and size (median, min, max), round-robin; LocalCluster of "
        f"{cfg['workers']} worker(s) × {cfg['threads_per_worker']} thread(s), memory limit "
        f"{s['memory_limit']} (shuffled layout: {s['shuffled_memory_limit']}); DuckDB "
        f"threads={s['duckdb_threads']}; Polars engine {s['polars_engine']}; floor = pyarrow, "
        f"2 files at a time; reference = first {s['reference_sample']} target users, "
        f"extrapolated; warm = {s['warm_reruns']} timed re-runs per process; stock-aware on "
        f"stock = floor({STOCK_COVERAGE} × each snack's unconstrained units).",
        "",
        "\"time is\": *process* = wall time of the whole process (interpreter, imports, "
        "cluster start and stop included); *in-process* = measured inside the process; "
        "*extrapolated* = per-user time on a sample × users targeted. \"worker peak\" = "
        "the largest peak resident set of a child process (the Dask workers; the process "
        "itself when it has none); \"other CPU\" = cores used by the rest of the machine "
        "while the run was measured (median over runs).",
    ]
    for n in sorted({r["users"] for r in report["results"]}):
        rows = [r for r in report["results"] if r["users"] == n]
        facts = report["lakes"].get(str(n)) or {}
        head = f"### {n:,} users"
        if facts:
            head += (f" ({facts['users_targeted']:,} targeted; lake "
                     f"{facts['bytes_total'] / 1e6:,.0f} MB)")
        lines += ["", head, "", *_size_table(rows)]
    lines += ["", "### Ratios", "",
              "Medians of peers measured on the same lake in the same run. cold = `preassign "
              "run`, process wall. The floor is its in-process reading time, best of runs "
              "(issue 13's definition); in brackets, against the floor's process wall "
              "(interpreter and pyarrow import included).",
              "",
              "| users | cold / floor | DuckDB / cold | Polars / cold | reference / cold "
              "(per user) | warm / floor | cold / warm | stock-aware / cold | shuffled / cold "
              "(worker peak) | no manifest / cold (worker peak) | extract / SELECT | "
              "run --extract / extract |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["ratios"]:
        lines.append(
            f"| {r['users']:,} | {_fmt_r(r['preassign_over_floor'])}"
            + (f" ({_fmt_r(r['preassign_over_floor_process'])})"
               if r.get("preassign_over_floor_process") is not None else "")
            + " | "
            f"{_fmt_r(r['duckdb_over_preassign'])} | {_fmt_r(r['polars_over_preassign'])} | "
            f"{_fmt_r(r['reference_over_preassign_per_user'])} | "
            f"{_fmt_r(r['warm_over_floor'])}"
            + (f" ({_fmt_r(r['warm_over_floor_process'])})"
               if r["warm_over_floor_process"] is not None else "")
            + f" | {_fmt_r(r['preassign_over_warm'])} | "
            f"{_fmt_r(r['stock_aware_over_preassign'])} | {_fmt_r(r['shuffled_over_preassign'])}"
            f" ({_fmt_r(r['shuffled_worker_peak_over_preassign'])}) | "
            f"{_fmt_r(r['shuffled_files_over_preassign'])} "
            f"({_fmt_r(r['shuffled_files_worker_peak_over_preassign'])}) | "
            f"{_fmt_r(r['extract_over_select'])} | {_fmt_r(r['run_extract_over_extract'])} |")
    lines += ["", "### Targets", "", "| issue | target | measured | met |", "|---:|---|---:|---|"]
    for t in report["targets"]:
        v = t["value"]
        if v is None:
            val = "–"
        elif t["name"] in ("exponent", "memory_flat", "shuffled_memory"):
            val = f"{v:.3f}"
        elif t["name"] == "memory_2m":
            val = f"{v:.2f} GiB"
        elif t["name"] == "extract_1m":
            val = f"{v:.1f} s"
        else:
            val = _fmt_r(v)
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['issue']} | {t['target']} | {val} | {met}{note} |")
    sc = report["scaling"]

    def k(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    lines += ["", "### Scaling", "",
              f"Least-squares slope of log(median time) on log(users), sizes ≥ "
              f"{sc['fit_min_users']:,} ({sc['fitted_sizes']}): preassign cold "
              f"**{k(sc['exponent'])}** (scan+assign only {k(sc['compute_exponent'])}; "
              f"1M → 2M alone {k(sc['exponent_1m_2m'])}, scan+assign "
              f"{k(sc['compute_exponent_1m_2m'])}); worker peak memory "
              f"**{k(sc['worker_memory_exponent'])}**; warm re-run {k(sc['warm_exponent'])}; "
              f"stock-aware {k(sc['stock_aware_exponent'])}; shuffled layout "
              f"{k(sc['shuffled_exponent'])} (its worker peak "
              f"{k(sc['shuffled_worker_memory_exponent'])}); no manifest, 50k-user files "
              f"{k(sc['shuffled_files_exponent'])} (its worker peak "
              f"{k(sc['shuffled_files_worker_memory_exponent'])}); extract "
              f"{k(sc['extract_exponent'])}."]
    checks = report.get("checks") or {}
    if checks:
        lines += ["", "### Same outputs", ""]
        for p, chk in checks.items():
            lines.append(
                f"* {p} on {chk['users']:,} users: "
                + ("identical assignments" if chk.get("matched") else "**MISMATCH**")
                + f" ({chk.get('preassign_rows', '?')} rows preassign, "
                  f"{chk.get('peer_rows', '?')} rows {p}, {chk.get('mismatched_rows', '?')} "
                  f"differing)" + (f"; {chk['error']}" if chk.get("error") else "") + ".")
    cc = report["config_choice"]
    if not cc.get("candidates") and report.get("config_choice_merged"):
        cc = report["config_choice_merged"]
    if cc.get("candidates"):
        lines += ["", f"LocalCluster layout, one run each at {cc['users']:,} users after a "
                  "warm-up: " + "; ".join(
                      f"{c['workers']}×{c['threads_per_worker']}: {_fmt_s(c['wall_seconds'])} s"
                      for c in cc["candidates"])
                  + f" → {cc['chosen']['workers']} worker(s) × "
                    f"{cc['chosen']['threads_per_worker']} thread(s)."]
    ex = report.get("extract_info") or {}
    if ex.get("sizes"):
        lines += ["", "### The extraction's databases", "",
                  f"A throwaway {ex.get('server', 'MariaDB')}, `preassign synth --db` of "
                  f"{ex['base_users']:,} users ({_fmt_s(ex.get('load_seconds'))} s), grown by "
                  "server-side copies with shifted user ids (`extract_bench.replicate`); the "
                  "InnoDB buffer pool set to 1.25 × the data (at most "
                  f"{s['extract_buffer_pool_max']}); `preassign extract` on its default local "
                  "cluster, `run --extract` on the benchmark's layout.", "",
                  "| users | copies | rows | InnoDB data | buffer pool | copy time (s) |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for n, d in ex["sizes"].items():
            lines.append(f"| {int(n):,} | {d['replicate']} | {d['rows_total']:,} | "
                         f"{d['innodb_bytes'] / GIB:.2f} GiB | "
                         f"{d['buffer_pool_bytes'] / GIB:.2f} GiB | "
                         f"{_fmt_s(d.get('replicate_seconds'))} |")
    ov = report.get("scheduler_overhead") or {}
    parts = report.get("partitions") or []
    lines += ["", "### Scheduler overhead, throughput and memory per partition", ""]
    if ov.get("status") == "ok":
        lines.append(f"Scheduler overhead: {ov['inner_seconds'] * 1e3:.2f} ms per task "
                     f"(median of {ov['batches']} batches of {ov['tasks_per_batch']:,} no-op "
                     f"tasks mapped on a LocalCluster of {ov['workers']} × "
                     f"{ov['threads_per_worker']}); one task's round trip "
                     f"{ov['round_trip_seconds'] * 1e3:.1f} ms.")
    elif ov:
        lines.append(f"Scheduler overhead: not measured ({ov.get('status')}: "
                     f"{ov.get('error')}).")
    if parts:
        lines += ["", "| users | one partition, 1 thread: s | users/s | read+check+state | "
                  "boxes | write | peak | in the cold runs: s per partition per core | "
                  "users/s per core | worker peak (threads) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in parts:
            lines.append(
                f"| {p['users']:,} | {_fmt_s(p.get('direct_seconds'))} | "
                f"{p.get('direct_users_per_second', 0):,.0f} | "
                f"{_fmt_s(p.get('direct_build_seconds'))} | "
                f"{_fmt_s(p.get('direct_assign_seconds'))} | "
                f"{_fmt_s(p.get('direct_write_seconds'))} | {_fmt_b(p.get('direct_peak_bytes'))}"
                f" | {_fmt_s(p.get('cluster_seconds_per_partition'))} | "
                f"{p.get('cluster_users_per_second_per_core', 0):,.0f} | "
                f"{_fmt_b(p.get('cluster_worker_peak_bytes'))}"
                f" ({p.get('cluster_threads_per_worker', '–')}) |")
    fg = report.get("fargate")
    if fg:
        a, d = fg["assumptions"], fg["defaults"]
        lines += [
            "", f"### {a['users']:,} users on Fargate: a projection, not a measurement", "",
            f"From this run: {_fmt_s(fg['partition_seconds'])} s per partition of "
            f"{a['users_per_partition']:,} users on one core (the larger of "
            f"{_fmt_s(fg['partition_seconds_direct'])} s from the users/s measured one "
            f"partition at a time and {_fmt_s(fg['partition_seconds_cluster'])} s from the "
            f"users/s per core of the cold runs, at {fg['measured_at_users']:,} users), "
            + (f"{fg['overhead_per_task_seconds'] * 1e3:.2f} ms of scheduler time per task × "
               f"{a['tasks_per_partition']} tasks per partition, "
               if fg["overhead_per_task_seconds"] else "")
            + f"{fg['fixed_local_seconds']:.1f} s of client-side work that does not shrink "
            f"with workers (interpreter, catalog, demand, report, publish), "
            f"{fg['lake_bytes'] / 1e9:.1f} GB of lake read once and "
            f"{fg['output_bytes'] / 1e9:.1f} GB of assignments written.",
            "",
            f"Assumed: workers of {d['worker_cpu']} CPU units / {d['worker_mem']} MiB "
            f"({fg['worker_vcpu']:g} vCPU / {fg['worker_memory_gb']:g} GB, "
            f"{fg['threads_per_worker']} thread(s); `{d['file']}`), scheduler "
            f"{d['scheduler_cpu']} / {d['scheduler_mem']} MiB billed for the whole run; a "
            f"Fargate vCPU as fast as one core here; {fg['partitions']} partitions; "
            f"{a['startup_seconds']} s to start the tasks (image pull included); S3 at "
            f"{a['s3_mb_per_second_per_worker']} MB/s per worker, not overlapped with "
            f"compute; scheduler time serial; ${a['price_per_vcpu_hour']} per vCPU-hour and "
            f"${a['price_per_gb_hour']} per GB-hour ({a['prices']}); per-second billing, S3 "
            f"requests and transfer ignored. Memory: one partition's peak "
            f"× threads + {a['dask_worker_overhead_mib']} MiB for the Dask worker = "
            f"{fg['worker_memory_needed_mib']:,.0f} MiB of {d['worker_mem']} MiB: "
            + ("fits." if fg["worker_memory_fits"] else "**does not fit**."),
            "",
            "| workers | waves | compute (s) | S3 (s) | scheduler (s) | fixed (s) | wall (s) | "
            "cost (USD) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in fg["rows"]:
            lines.append(f"| {r['workers']} | {r['waves']} | {_fmt_s(r['compute_seconds'])} | "
                         f"{_fmt_s(r['s3_seconds'])} | {_fmt_s(r['scheduler_seconds'])} | "
                         f"{_fmt_s(r['fixed_seconds'])} | {_fmt_s(r['wall_seconds'])} | "
                         f"{r['cost_usd']:.3f} |")
    lines.append("")
    return "\n".join(lines)


# ============================================================================ main


def _int_list(text: str | None) -> list[int] | None:
    return None if text is None else [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the harness."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                 description="Side-by-side benchmark of preassign and its peers.")
    ap.add_argument("--sizes", help="comma-separated lake sizes in users "
                    f"[default: {','.join(map(str, DEFAULT_SIZES))}; --quick: "
                    f"{','.join(map(str, QUICK_SIZES))}]")
    ap.add_argument("--repeats", type=int, help="timed runs per peer and size [3; --quick: 1]")
    ap.add_argument("--warmups", type=int, help="untimed warm-up runs first [1; --quick: 0]")
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/cache"),
                    help="where generated lakes are kept [benchmarks/cache]")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                    help="where <timestamp>.json/.md are written [benchmarks/results]")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated subset of {','.join(PEERS)} [all]")
    ap.add_argument("--quick", action="store_true",
                    help="tiny lakes, 1 repeat, no warm-up, no layout tuning; the session "
                         "peers and the extraction at the largest size only (for the tests)")
    ap.add_argument("--duckdb-max-seconds", type=float, default=600,
                    help="skip DuckDB where one run would take longer [600]")
    ap.add_argument("--polars-max-seconds", type=float, default=600,
                    help="skip Polars where one run would take longer [600]")
    ap.add_argument("--shuffled-max-seconds", type=float, default=900,
                    help="kill a run on the shuffled layout after this long [900]")
    ap.add_argument("--duckdb-threads", type=int, default=2)
    ap.add_argument("--polars-engine", default="auto", choices=["auto", "in-memory", "streaming"])
    ap.add_argument("--reference-sample", type=int, default=300,
                    help="target users the reference is timed on [300]")
    ap.add_argument("--check-users", type=int, help="lake size of the DuckDB/Polars = "
                    "preassign check [2000]")
    ap.add_argument("--tune-users", type=int, help="size at which 2x1 and 1x2 are tried "
                    "[1000000; 0 = don't; --quick: 0]")
    ap.add_argument("--workers", type=int, help="preassign workers (skips the tuning)")
    ap.add_argument("--threads-per-worker", type=int, help="preassign threads per worker")
    ap.add_argument("--memory-limit", default="6GiB", help="preassign --memory-limit [6GiB]")
    ap.add_argument("--shuffled-memory-limit", help="--memory-limit of the runs on the "
                    "shuffled layout [--memory-limit]")
    ap.add_argument("--shuffled-min-users", type=int, help="smallest size at which the "
                    "shuffled layout is measured [1000000; --quick: the largest size]")
    ap.add_argument("--warm-reruns", type=int, help="timed re-runs per warm-session process "
                    "[3; --quick: 2]")
    ap.add_argument("--partition-samples", type=int, default=3,
                    help="partitions timed per partition-peer process [3]")
    ap.add_argument("--overhead-tasks", type=int,
                    help="no-op tasks per batch for the scheduler overhead [1000; --quick: 200]")
    ap.add_argument("--extract-sizes", help="sizes at which the extraction from MariaDB is "
                    "measured; '' = none [--sizes; --quick: the largest]")
    ap.add_argument("--extract-base-users", type=int, help="users loaded by `synth --db`, "
                    "then copied on the server up to each size [50000; --quick: 2000]")
    ap.add_argument("--extract-buffer-pool-max", default="10G",
                    help="largest InnoDB buffer pool given to the database [10G]")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="kill any other run after this many seconds [3600]")
    ap.add_argument("--target-users", type=int, default=1_000_000,
                    help="size at which the ratio targets are judged [1000000]")
    ap.add_argument("--memory-users", type=int, default=2_000_000,
                    help="size at which the 2 GiB per worker target is judged [2000000]")
    ap.add_argument("--poll", type=float, default=0.1, help="memory poll interval (s) [0.1]")
    ap.add_argument("--merge", type=Path, action="append", default=[], metavar="JSON",
                    help="an earlier report whose results fill in the (size, peer) pairs this "
                         "run does not measure; ratios, exponents, targets and the Fargate "
                         "estimate are computed over both (repeatable)")
    ap.add_argument("--keep-work", action="store_true",
                    help="keep the runs' outputs and logs under <out>/work-<timestamp>")
    a = ap.parse_args(argv)
    quick = a.quick
    a.sizes = _int_list(a.sizes) or list(QUICK_SIZES if quick else DEFAULT_SIZES)
    a.repeats = a.repeats if a.repeats is not None else (1 if quick else 3)
    a.warmups = a.warmups if a.warmups is not None else (0 if quick else 1)
    a.check_users = a.check_users if a.check_users is not None else 2_000
    a.tune_users = a.tune_users if a.tune_users is not None else (0 if quick else 1_000_000)
    a.shuffled_memory_limit = a.shuffled_memory_limit or a.memory_limit
    a.shuffled_min_users = (a.shuffled_min_users if a.shuffled_min_users is not None
                            else (max(a.sizes) if quick else 1_000_000))
    a.overhead_tasks = a.overhead_tasks or (200 if quick else 1000)
    # smallest size each peer runs at (--quick: the session peers only at the largest size)
    a.min_users = {"shuffled": a.shuffled_min_users, "shuffled_files": a.shuffled_min_users}
    if quick:
        a.min_users.update({p: max(a.sizes) for p in ("warm", "stock_aware", "partition")})
    a.warm_reruns = a.warm_reruns if a.warm_reruns is not None else (2 if quick else 3)
    a.extract_sizes = (_int_list(a.extract_sizes) if a.extract_sizes is not None
                       else ([max(a.sizes)] if quick else list(a.sizes)))
    a.extract_base_users = a.extract_base_users or (
        min(2_000, min(a.extract_sizes or [2_000])) if quick else
        min(USERS_PER_PARTITION, min(a.extract_sizes or [USERS_PER_PARTITION])))
    a.peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    bad = [p for p in a.peers if p not in PEERS]
    if bad:
        ap.error(f"unknown peer(s) {bad}; choose from {', '.join(PEERS)}")
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    if a.warm_reruns < 1:
        ap.error("--warm-reruns must be >= 1")
    a.cache = a.cache.resolve()
    a.out = a.out.resolve()
    a.merge = [m.resolve() for m in a.merge]
    return a


def merge_report(report: dict[str, Any], h: Harness, results: list[dict[str, Any]],
                 sizes: list[int], path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Add an earlier report's results for (size, peer) pairs not measured in this run."""
    old = json.loads(path.read_text())
    have = {(r["users"], r["peer"]) for r in results}
    for r in old["results"]:
        if (r["users"], r["peer"]) not in have:
            r = {**r, "merged_from": path.name}
            if r["status"] == "ok" and "time" not in r:  # a report of an older harness
                r["time"] = ({"median": r["extrapolated_seconds"], "min": None, "max": None,
                              "kind": TIMED["reference"]} if r["peer"] == "reference" else
                             {**r["wall_seconds"], "kind": TIMED.get(r["peer"], "process")})
            results.append(r)
    for k, v in old.get("lakes", {}).items():
        h.lakes.setdefault(int(k), v)
    for p, chk in (old.get("checks") or {}).items():
        report.setdefault("checks", {}).setdefault(p, {**chk, "merged_from": path.name})
    if not report.get("scheduler_overhead") and old.get("scheduler_overhead"):
        report["scheduler_overhead"] = {**old["scheduler_overhead"], "merged_from": path.name}
    if not (report.get("config_choice") or {}).get("candidates") and \
            (old.get("config_choice") or {}).get("candidates"):
        report["config_choice_merged"] = {**old["config_choice"], "merged_from": path.name}
    same = (old.get("code") or {}).get("sha256") == (report.get("code") or {}).get("sha256")
    report.setdefault("merged", []).append({"path": str(path), "started_at": old["started_at"],
                                            "command": old["command"], "same_code": same})
    order = {p: i for i, p in enumerate(PEERS)}
    results.sort(key=lambda r: (r["users"], order.get(r["peer"], 99)))
    return results, sorted(set(sizes) | {r["users"] for r in old["results"]})


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _predict_skip(peer: str, n: int, last: tuple[int, float, int] | None,
                  args: argparse.Namespace) -> str | None:
    """Why ``peer`` is skipped at ``n`` users, predicted linearly from its last size."""
    if last is None:
        return None
    predicted = last[1] * n / last[0]
    memory = last[2] * n / last[0]
    available = _mem_available()
    limit = getattr(args, f"{peer}_max_seconds")
    if predicted > limit:
        return (f"predicted {predicted:,.0f} s (linear from {last[0]:,} users) > "
                f"--{peer}-max-seconds={limit:g}")
    if available and memory > 0.8 * available:
        return (f"predicted peak {memory / GIB:.1f} GiB (linear from {last[0]:,} users) > 80% "
                f"of the {available / GIB:.1f} GiB available on this shared machine")
    return None


def run_benchmark(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run everything; write and return the report."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / f"work-{stamp}"
    h = Harness(args=args, work=work)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "started_at": stamp,
        "command": " ".join(["python -m benchmarks.run"] + argv),
        "machine": machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "date_from": DATE_FROM.isoformat(), "date_to": DATE_TO.isoformat(),
    }
    try:
        report["code"] = snapshot_code(work / "code")
        _say(f"code under test: git {report['code']['git_head']}"
             f"{' + uncommitted changes' if report['code']['dirty'] else ''}, "
             f"sha256 {report['code']['sha256'][:12]}, frozen in {work / 'code'}")
        lake_peers = [p for p in args.peers if p in LAKE_PEERS]
        if lake_peers:
            for n in sorted(args.sizes):
                h.lakes[n] = ensure_lake(args.cache, n, work / "logs")
        if {"duckdb", "polars"} & set(args.peers) and not h.check_here(args.check_users):
            h.checks = h.check_peers()
        report["config_choice"] = h.choose_config()
        if "preassign" in args.peers or "warm" in args.peers:
            report["scheduler_overhead"] = h.measure_overhead()
        results: list[dict[str, Any]] = []
        # DuckDB and Polars at a size are predicted linearly from the largest smaller size
        # measured (in this run or a merged one): skipped when time or memory would not fit
        last: dict[str, tuple[int, float, int]] = {}
        for path in args.merge:
            for r in json.loads(path.read_text())["results"]:
                p = r["peer"]
                if p in SKIPPABLE and r["status"] == "ok" and r["users"] < min(args.sizes) \
                        and (p not in last or r["users"] > last[p][0]):
                    last[p] = (r["users"], r["wall_seconds"]["max"], r["peak_rss_max_bytes"])
        stop: dict[str, str] = {}
        for n in sorted(args.sizes) if lake_peers else []:
            skips = {p: stop.get(p) or _predict_skip(p, n, last.get(p), args)
                     for p in SKIPPABLE}
            rows = h.measure_size(n, {p: v for p, v in skips.items() if v})
            for r in rows:
                if r["peer"] in SKIPPABLE:
                    if r["status"] == "ok":
                        last[r["peer"]] = (n, r["wall_seconds"]["max"], r["peak_rss_max_bytes"])
                    elif r["status"] == "skipped":
                        stop[r["peer"]] = f"skipped at a smaller size ({r['reason']})"
            results += rows
        extract_rows, report["extract_info"] = h.measure_extract()
        results += extract_rows
        order = {p: i for i, p in enumerate(PEERS)}
        results.sort(key=lambda r: (r["users"], order.get(r["peer"], 99)))
        report["checks"] = h.checks
        sizes = sorted(set(args.sizes) | set(args.extract_sizes))
        for path in args.merge:
            results, sizes = merge_report(report, h, results, sizes, path)
        report["duckdb_check"] = (report.get("checks") or {}).get("duckdb")
        report["polars_check"] = (report.get("checks") or {}).get("polars")
        report["lakes"] = {str(k): v for k, v in sorted(h.lakes.items())}
        report["results"] = results
        report["ratios"] = compute_ratios(results, sizes)
        report["scaling"] = compute_scaling(results)
        report["targets"] = evaluate_targets(results, report["ratios"], report["scaling"],
                                             args.target_users, args.memory_users)
        report["partitions"] = compute_partitions(results)
        report["fargate"] = estimate_fargate(results, h.lakes, report.get("scheduler_overhead"),
                                             report["partitions"])
        loads = [x["loadavg"][0] for x in h.loads]
        report["load"] = {"samples": len(loads), "rounds": h.loads,
                          **({"median": statistics.median(loads), "min": min(loads),
                              "max": max(loads)} if loads else {})}
        others = [x["other_cpu_seconds"] / max(x["wall_seconds"], 1e-9)
                  for r in results if "merged_from" not in r
                  for x in r.get("runs", []) + r.get("warmups", [])]
        if others:
            report["other_cpu"] = {"median": statistics.median(others), "max": max(others)}
        report["machine"]["loadavg_at_end"] = list(os.getloadavg())
        report["seconds_total"] = round(time.perf_counter() - t_start, 1)
        report["finished_at"] = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        md = render_markdown(report)
        (args.out / f"{stamp}.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / f"{stamp}.md").write_text(md)
        report["paths"] = {"json": str(args.out / f"{stamp}.json"),
                           "md": str(args.out / f"{stamp}.md")}
        print(md)
        _say(f"wrote {args.out / f'{stamp}.json'} and .md in {report['seconds_total']:.0f} s")
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.run``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_peer"]:
        _peer_main(argv[1:])
        return
    if argv[:1] == ["_make"]:
        _make_main(argv[1:])
        return
    if argv[:1] == ["_render"]:  # the analysis and tables again, from a report's JSON
        for path in map(Path, argv[1:]):
            report = json.loads(path.read_text())
            sizes = sorted({r["users"] for r in report["results"]})
            s = report["settings"]
            report["ratios"] = compute_ratios(report["results"], sizes)
            report["scaling"] = compute_scaling(report["results"])
            report["targets"] = evaluate_targets(report["results"], report["ratios"],
                                                 report["scaling"], s["target_users"],
                                                 s["memory_users"])
            path.write_text(json.dumps(report, indent=2, default=str))
            path.with_suffix(".md").write_text(render_markdown(report))
            print(f"re-rendered {path} and {path.with_suffix('.md')}")
        return
    run_benchmark(parse_args(argv), argv)


if __name__ == "__main__":
    main()
