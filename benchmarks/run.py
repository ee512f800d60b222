"""Side-by-side benchmark of preassign and its peers (issue 6).

On the same cached synthetic lakes, in the same run, each peer is run in its own
process (one warm-up, then ``--repeats`` timed runs, round-robin over the peers so
they share the machine's noise), and its wall time and peak memory are measured
from outside:

* ``preassign`` -- ``preassign run`` over 2026-12-01..2026-12-14 on a LocalCluster
  (the worker/thread layout is chosen once, at ``--tune-users``);
* ``floor`` -- reading every Parquet column the rules need once with pyarrow
  (two files at a time): the physical floor of any implementation;
* ``duckdb`` -- ``benchmarks.duckdb_peer.run_duckdb`` (threads=2), skipped where a
  run would exceed ``--duckdb-max-seconds``; checked first for identical
  assignments on a small lake;
* ``reference`` -- ``tests/oracle/reference.py`` (one Python object per user) on the first
  ``--reference-sample`` target users, with C and the priors of the *whole* lake;
  timed per user and extrapolated, and checked against preassign's boxes.

Memory: the harness polls ``/proc/<pid>/status`` of the whole process tree every
``--poll`` seconds (``VmHWM`` per process, the sum of ``VmRSS`` over the tree).

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.run [--sizes 125000,250000,500000,1000000,2000000]
        [--repeats 3] [--cache benchmarks/cache] [--out benchmarks/results]
        [--peers preassign,floor,duckdb,reference] [--quick]

Writes ``<out>/<timestamp>.json`` and ``<out>/<timestamp>.md`` and prints the
Markdown. ``python -m benchmarks.run _peer ...`` is the internal entry point of the
peer processes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import importlib.util
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
SNAPSHOT_FILES = ("benchmarks/duckdb_peer.py", "tests/oracle/reference.py")
DATE_FROM = dt.date(2026, 12, 1)
DATE_TO = dt.date(2026, 12, 14)
SYNTH_SNACKS = 300
SYNTH_SEED = 0
USERS_PER_PARTITION = 50_000
DEFAULT_SIZES = (125_000, 250_000, 500_000, 1_000_000, 2_000_000)
QUICK_SIZES = (2_000, 4_000)
PEERS = ("preassign", "floor", "duckdb", "reference")
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

# The targets of issue 6, evaluated at --target-users (and --memory-users for memory).
TARGET_FLOOR_RATIO = 10.0        # preassign within 10x the scan floor
TARGET_DUCKDB_SPEEDUP = 10.0     # preassign >= 10x faster than DuckDB
TARGET_REFERENCE_SPEEDUP = 100.0  # preassign >= 100x faster per user than the reference
TARGET_EXPONENT = 1.05           # time ~ users^k with k <= 1.05 (sizes >= 500k)
TARGET_WORKER_MEMORY = 2 * GIB   # peak per worker at 2M users
TARGET_MEMORY_EXPONENT = 0.10    # "flat": worker peak ~ users^k with k <= 0.10 (sizes >= 500k)
FIT_MIN_USERS = 500_000

# Fargate estimate (list prices, us-east-1, Linux/x86, on demand, at the time of writing).
FARGATE = {
    "price_per_vcpu_hour": 0.04048,
    "price_per_gb_hour": 0.004445,
    "worker_vcpu": 1,
    "worker_memory_gb": 4,
    "threads_per_worker": 1,
    "scheduler_vcpu": 1,
    "scheduler_memory_gb": 4,
    "startup_seconds": 120,
    "s3_read_mb_per_second_per_worker": 50,
    "users": 10_000_000,
    "users_per_partition": USERS_PER_PARTITION,
    "passes_over_lake": 2,
    "worker_counts": [8, 16, 32],
}


# ============================================================================ measuring


@dataclasses.dataclass
class Measurement:
    """One process (tree) run: wall time, exit, peak memory."""

    wall_seconds: float
    returncode: int | None
    timed_out: bool
    peak_rss_max_bytes: int      # biggest single process of the tree (VmHWM)
    peak_rss_worker_bytes: int   # biggest child process (the root itself if it has none)
    peak_rss_tree_bytes: int     # largest sum of VmRSS over the tree at one poll
    processes: int               # processes seen in the tree
    log: str                     # path of the captured stdout+stderr

    def to_dict(self) -> dict[str, Any]:
        """The measurement as a JSON-ready dict."""
        return dataclasses.asdict(self)


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
            env: dict[str, str] | None = None) -> Measurement:
    """Run ``cmd`` in a new session and measure its wall time and peak memory.

    The process group is killed when ``timeout`` seconds have passed.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    hwm: dict[int, int] = {}
    tree_peak = 0
    timed_out = False
    status = None
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True, env=env or _ENV)
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
        proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -1
    _kill_group(proc.pid)  # leftovers of the session (e.g. orphaned workers)
    root_peak = hwm.get(proc.pid, 0)
    workers = [v for p, v in hwm.items() if p != proc.pid]
    return Measurement(
        wall_seconds=round(wall, 4),
        returncode=proc.returncode,
        timed_out=timed_out,
        peak_rss_max_bytes=max([root_peak] + workers),
        peak_rss_worker_bytes=max(workers) if workers else root_peak,
        peak_rss_tree_bytes=max(tree_peak, root_peak),
        processes=max(len(hwm), 1),
        log=str(log),
    )


_ENV: dict[str, str] | None = None  # environment of every measured process (see snapshot_code)


def _code_root() -> Path:
    return Path(os.environ.get(CODE_ENV) or REPO)


def snapshot_code(dest: Path) -> dict[str, Any]:
    """Freeze the code under test: copy ``preassign/`` and the peers to ``dest``.

    Other people may edit the working tree while a long benchmark runs; every measured
    process (and the Dask workers it spawns) imports the copy instead, through
    ``PYTHONPATH``, which comes before the editable install's finder.
    """
    global _ENV
    import hashlib

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "preassign", dest / "preassign",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for rel in SNAPSHOT_FILES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    digest = hashlib.sha256()
    for f in sorted(list((dest / "preassign").rglob("*.py")) + [dest / r for r in SNAPSHOT_FILES]):
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
    return {"sha256": digest.hexdigest(), "git_head": git("rev-parse", "--short", "HEAD"),
            "dirty": git("status", "--porcelain", "--", "preassign", *SNAPSHOT_FILES)
            .splitlines(), "snapshot": str(dest)}


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
    spec = importlib.util.spec_from_file_location(
        "preassign_bench_duckdb_peer", _code_root() / "benchmarks" / "duckdb_peer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    run_duckdb = module.run_duckdb

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    out = run_duckdb(lake, DATE_FROM, DATE_TO, threads=threads, timings=timings)
    inner = time.perf_counter() - t0
    if save:
        out.to_parquet(save, index=False)
    return {"inner_seconds": inner, "rows": len(out), "users": int(out["user_id"].nunique()),
            "step_seconds": {k: round(v, 3) for k, v in timings.items()}}


def _load_reference_module() -> Any:
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
    ap.add_argument("peer", choices=["floor", "duckdb", "reference"])
    ap.add_argument("lake")
    ap.add_argument("--result", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--prior")
    ap.add_argument("--save")
    a = ap.parse_args(argv)
    if a.peer == "floor":
        res = peer_floor(a.lake, a.threads)
    elif a.peer == "duckdb":
        res = peer_duckdb(a.lake, a.threads, a.save)
    else:
        res = peer_reference(a.lake, a.sample, a.prior, a.save)
    Path(a.result).write_text(json.dumps(res))


# ============================================================================ harness


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Harness:
    """State of one benchmark run."""

    args: argparse.Namespace
    work: Path
    lakes: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    workers: int = 2
    threads: int = 1
    duckdb_check: dict[str, Any] | None = None

    # ---------------------------------------------------------------- one peer, one run

    def run_peer(self, peer: str, users: int, tag: str, *, timeout: float | None = None,
                 save: bool = False, workers: int | None = None,
                 threads: int | None = None) -> dict[str, Any]:
        """Run ``peer`` once on the lake of ``users`` users; return the run record."""
        lake = self.lakes[users]["path"]
        base = self.work / f"{peer}-{users}"
        base.mkdir(parents=True, exist_ok=True)
        result = base / f"{tag}.json"
        result.unlink(missing_ok=True)
        timeout = timeout or self.args.timeout
        w, t = workers or self.workers, threads or self.threads
        if peer == "preassign":
            cmd = _preassign_cmd() + [
                "run", "--lake", lake, "--date", DATE_FROM.isoformat(),
                "--until", DATE_TO.isoformat(), "--out", str(base / "out"), "--overwrite",
                "--workers", str(w), "--threads-per-worker", str(t),
                "--memory-limit", self.args.memory_limit, "--silent", "--loglevel", "WARNING"]
        else:
            cmd = [sys.executable, "-m", "benchmarks.run", "_peer", peer, lake,
                   "--result", str(result)]
            if peer == "floor":
                cmd += ["--threads", "2"]
            elif peer == "duckdb":
                cmd += ["--threads", str(self.args.duckdb_threads)]
                if save:
                    cmd += ["--save", str(base / "assignments.parquet")]
            elif peer == "reference":
                cmd += ["--sample", str(self.args.reference_sample),
                        "--prior", str(self._prior_file(users)),
                        "--save", str(base / "assignments.parquet")]
        m = measure(cmd, log=base / f"{tag}.log", timeout=timeout, poll=self.args.poll)
        rec: dict[str, Any] = {"tag": tag, **m.to_dict()}
        if peer == "preassign":
            rec.update(workers=w, threads_per_worker=t)
        if m.returncode == 0:
            if peer == "preassign":
                summary = json.loads((base / "out" / "summary.json").read_text())
                rec["stage_seconds"] = summary["stage_seconds"]
                rec["inner_seconds"] = summary["stage_seconds"].get("total")
                rec["users_targeted"] = summary["users_targeted"]
                rec["units_total"] = summary["units_total"]
            elif result.exists():
                rec.update(json.loads(result.read_text()))
        status = "timeout" if m.timed_out else ("ok" if m.returncode == 0 else "failed")
        rec["status"] = status
        _say(f"{peer:9s} {users:>9,} {tag:7s} {status:7s} {m.wall_seconds:8.2f} s  "
             f"max {m.peak_rss_max_bytes / MIB:7.0f} MiB  "
             f"tree {m.peak_rss_tree_bytes / MIB:7.0f} MiB")
        return rec

    def _prior_file(self, users: int) -> Path:
        path = self.work / f"prior-{users}.json"
        if not path.exists():
            t0 = time.perf_counter()
            path.write_text(json.dumps(lake_prior(self.lakes[users]["path"])))
            _say(f"lake prior for the reference at {users:,} users: "
                 f"{time.perf_counter() - t0:.1f} s (not timed)")
        return path

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

    def check_duckdb(self, records: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Same assignments from DuckDB and preassign on the --check-users lake?

        With ``records`` (the measured runs of that size), their last outputs are compared;
        otherwise both are run once here.
        """
        users = self.args.check_users
        if records is None:
            self.lakes.setdefault(users, ensure_lake(self.args.cache, users, self.work / "logs"))
            pa_rec = self.run_peer("preassign", users, "check")
            dk_rec = self.run_peer("duckdb", users, "check", save=True)
        else:
            pa_rec, dk_rec = ((records[p]["runs"] or records[p]["warmups"] or
                               [{"status": records[p]["status"], "log": ""}])[-1]
                              for p in ("preassign", "duckdb"))
        out: dict[str, Any] = {"users": users, "preassign_status": pa_rec["status"],
                               "duckdb_status": dk_rec["status"]}
        if pa_rec["status"] != "ok" or dk_rec["status"] != "ok":
            out.update(matched=False, error="a run failed; see the logs",
                       logs=[pa_rec["log"], dk_rec["log"]])
            return out
        base = self.work
        got = _normalize(_read_assignments(base / f"preassign-{users}" / "out" / "assignments"))
        exp = _normalize(_read_assignments(base / f"duckdb-{users}" / "assignments.parquet"))
        out.update(_compare(got, exp, "preassign", "duckdb"))
        return out

    def check_here(self, users: int) -> bool:
        """True when the DuckDB check reuses the measured runs of this size."""
        a = self.args
        return (users == a.check_users and users in a.sizes
                and {"preassign", "duckdb"} <= set(a.peers))

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

    def measure_size(self, users: int, duckdb_skip: str | None) -> list[dict[str, Any]]:
        """Warm-ups then timed runs, round-robin over the peers, on one lake."""
        a = self.args
        peers = [p for p in a.peers]
        records: dict[str, dict[str, Any]] = {
            p: {"users": users, "peer": p, "runs": [], "warmups": [], "status": "ok"}
            for p in peers}
        if "duckdb" in records and duckdb_skip:
            records["duckdb"].update(status="skipped", reason=duckdb_skip)
        rounds = [("warmup", i) for i in range(a.warmups)] + [("run", i) for i in range(a.repeats)]
        for kind, i in rounds:
            for p in peers:
                r = records[p]
                if r["status"] != "ok":
                    continue
                timeout = a.duckdb_max_seconds if p == "duckdb" else a.timeout
                rec = self.run_peer(p, users, f"{kind}{i}", timeout=timeout,
                                    save=(p == "duckdb" and self.check_here(users)))
                (r["warmups"] if kind == "warmup" else r["runs"]).append(rec)
                if rec["status"] == "timeout":
                    r.update(status="skipped", reason=(
                        f"a run took over --duckdb-max-seconds={a.duckdb_max_seconds:g} s "
                        f"(killed)" if p == "duckdb" else f"timed out after {a.timeout:g} s"))
                elif rec["status"] != "ok":
                    r.update(status="failed", reason=f"exit {rec['returncode']}; see {rec['log']}")
        facts = self.lakes[users]
        for r in records.values():
            _summarize(r, facts)
        if self.check_here(users):
            self.duckdb_check = self.check_duckdb(records)
        if "reference" in records and records["reference"]["status"] == "ok" \
                and "preassign" in records and records["preassign"]["status"] == "ok":
            records["reference"]["check"] = self.check_reference(users, records["reference"])
        return list(records.values())


def _brief(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("tag", "status", "wall_seconds", "peak_rss_max_bytes", "peak_rss_worker_bytes",
            "peak_rss_tree_bytes", "workers", "threads_per_worker", "stage_seconds")
    return {k: rec[k] for k in keys if k in rec}


def _summarize(r: dict[str, Any], facts: dict[str, Any]) -> None:
    """Median/min/max and derived numbers of one (size, peer) record, in place."""
    users = r["users"]
    r["users_targeted"] = facts["users_targeted"]
    runs = [x for x in r["runs"] if x["status"] == "ok"]
    if r["status"] != "ok" or not runs:
        if r["status"] == "ok":
            r.update(status="failed", reason="no successful run")
        return
    walls = [x["wall_seconds"] for x in runs]
    r["wall_seconds"] = {"median": statistics.median(walls), "min": min(walls), "max": max(walls)}
    inner = [x["inner_seconds"] for x in runs if x.get("inner_seconds") is not None]
    if inner:
        r["inner_seconds"] = {"median": statistics.median(inner), "min": min(inner),
                              "max": max(inner)}
    for k in ("peak_rss_max_bytes", "peak_rss_worker_bytes", "peak_rss_tree_bytes"):
        r[k] = max(x[k] for x in runs)
    if r["peer"] == "reference":
        per_user = statistics.median(x["per_user_seconds"] for x in runs)
        r["per_user_seconds"] = per_user
        r["sample_users"] = runs[0]["users_targeted"]
        r["extrapolated_seconds"] = per_user * facts["users_targeted"]
        r["users_per_second"] = users / r["extrapolated_seconds"]
    else:
        r["users_per_second"] = users / r["wall_seconds"]["median"]
        r["per_user_seconds"] = r["wall_seconds"]["median"] / max(facts["users_targeted"], 1)
    if r["peer"] == "preassign":
        stages: dict[str, list[float]] = {}
        for x in runs:
            for k, v in x.get("stage_seconds", {}).items():
                stages.setdefault(k, []).append(v)
        r["stage_seconds"] = {k: statistics.median(v) for k, v in stages.items()}
        r["config"] = {"workers": runs[0]["workers"],
                       "threads_per_worker": runs[0]["threads_per_worker"]}


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


def _median(r: dict[str, Any]) -> float:
    return r["wall_seconds"]["median"]


def compute_ratios(results: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    """Per size: preassign/floor, DuckDB/preassign, reference/preassign per user."""
    out = []
    for n in sizes:
        pa_r, fl, dk, rf = (_get(results, n, p) for p in PEERS)
        src = pa_r.get("merged_from") if pa_r else None
        # only peers measured side by side (in the same run) are compared
        fl, dk, rf = (x if x and x.get("merged_from") == src else None for x in (fl, dk, rf))
        row: dict[str, Any] = {"users": n, "preassign_over_floor": None,
                               "duckdb_over_preassign": None,
                               "reference_over_preassign_per_user": None}
        if pa_r and fl:
            row["preassign_over_floor"] = _median(pa_r) / _median(fl)
        if pa_r and dk:
            row["duckdb_over_preassign"] = _median(dk) / _median(pa_r)
        if pa_r and rf:
            row["reference_over_preassign_per_user"] = (rf["per_user_seconds"]
                                                        / pa_r["per_user_seconds"])
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


def compute_scaling(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Scaling exponents of preassign's time and worker memory."""
    pa_rows = sorted((r for r in results if r["peer"] == "preassign" and r["status"] == "ok"),
                     key=lambda r: r["users"])
    big = [r for r in pa_rows if r["users"] >= FIT_MIN_USERS]
    return {
        "fit_min_users": FIT_MIN_USERS,
        "fitted_sizes": [r["users"] for r in big],
        "exponent": fit_exponent([(r["users"], r["wall_seconds"]["median"]) for r in big]),
        "exponent_all_sizes": fit_exponent([(r["users"], r["wall_seconds"]["median"])
                                            for r in pa_rows]),
        "compute_exponent": fit_exponent([
            (r["users"], r["stage_seconds"].get("scan", 0) + r["stage_seconds"].get("assign", 0))
            for r in big]),
        "worker_memory_exponent": fit_exponent([(r["users"], r["peak_rss_worker_bytes"])
                                                for r in big]),
    }


def evaluate_targets(results: list[dict[str, Any]], ratios: list[dict[str, Any]],
                     scaling: dict[str, Any], target_users: int,
                     memory_users: int) -> list[dict[str, Any]]:
    """The targets of issue 6 and whether each is met (None: not measured)."""
    at = next((r for r in ratios if r["users"] == target_users), {})
    pa_mem = _get(results, memory_users, "preassign")
    dk = next((r for r in results if r["users"] == target_users and r["peer"] == "duckdb"), None)

    def row(name: str, target: str, value: float | None, met: bool | None,
            note: str = "") -> dict[str, Any]:
        return {"name": name, "target": target, "value": value, "met": met, "note": note}

    def cmp(v: float | None, ok: Any) -> bool | None:
        return None if v is None else bool(ok(v))

    v = at.get("preassign_over_floor")
    out = [row("floor", f"preassign / floor <= {TARGET_FLOOR_RATIO:g} at {target_users:,}", v,
               cmp(v, lambda x: x <= TARGET_FLOOR_RATIO))]
    v = at.get("duckdb_over_preassign")
    note = ""
    if v is None and dk is not None and dk["status"] != "ok":
        note = f"DuckDB {dk['status']}: {dk.get('reason', '')}"
    out.append(row("duckdb", f"DuckDB / preassign >= {TARGET_DUCKDB_SPEEDUP:g} at "
                   f"{target_users:,}", v, cmp(v, lambda x: x >= TARGET_DUCKDB_SPEEDUP), note))
    v = at.get("reference_over_preassign_per_user")
    out.append(row("reference", f"reference / preassign per user >= "
                   f"{TARGET_REFERENCE_SPEEDUP:g} at {target_users:,}", v,
                   cmp(v, lambda x: x >= TARGET_REFERENCE_SPEEDUP)))
    v = scaling["exponent"]
    out.append(row("exponent", f"time ~ users^k, k <= {TARGET_EXPONENT} (sizes >= "
                   f"{FIT_MIN_USERS:,})", v, cmp(v, lambda x: x <= TARGET_EXPONENT),
                   f"fitted on {scaling['fitted_sizes']}"))
    v = scaling["worker_memory_exponent"]
    out.append(row("memory_flat", f"worker peak ~ users^k, k <= {TARGET_MEMORY_EXPONENT} "
                   f"(sizes >= {FIT_MIN_USERS:,})", v,
                   cmp(v, lambda x: x <= TARGET_MEMORY_EXPONENT)))
    v = pa_mem["peak_rss_worker_bytes"] / GIB if pa_mem else None
    out.append(row("memory_2m", f"worker peak <= {TARGET_WORKER_MEMORY / GIB:g} GiB at "
                   f"{memory_users:,}", v, cmp(v, lambda x: x <= TARGET_WORKER_MEMORY / GIB)))
    return out


def estimate_fargate(results: list[dict[str, Any]], lakes: dict[int, dict[str, Any]]
                     ) -> dict[str, Any] | None:
    """10M users on 8/16/32 Fargate workers, from the throughput measured at the largest size."""
    pa_rows = sorted((r for r in results if r["peer"] == "preassign" and r["status"] == "ok"),
                     key=lambda r: r["users"])
    if not pa_rows:
        return None
    r = pa_rows[-1]
    f = FARGATE
    cores = r["config"]["workers"] * r["config"]["threads_per_worker"]
    compute = r["stage_seconds"].get("scan", 0) + r["stage_seconds"].get("assign", 0)
    fixed = max(r["wall_seconds"]["median"] - compute, 0.0)
    per_core = r["users"] / compute / cores if compute > 0 else None
    if not per_core:
        return None
    partitions = math.ceil(f["users"] / f["users_per_partition"])
    t_partition = f["users_per_partition"] / per_core
    bytes_per_user = lakes[r["users"]]["bytes_total"] / r["users"]
    lake_bytes = bytes_per_user * f["users"]
    rate = (f["worker_vcpu"] * f["price_per_vcpu_hour"]
            + f["worker_memory_gb"] * f["price_per_gb_hour"])
    sched_rate = (f["scheduler_vcpu"] * f["price_per_vcpu_hour"]
                  + f["scheduler_memory_gb"] * f["price_per_gb_hour"])
    rows = []
    for w in f["worker_counts"]:
        waves = math.ceil(partitions / w)
        compute_s = waves * t_partition
        read_s = f["passes_over_lake"] * lake_bytes / (w * f["s3_read_mb_per_second_per_worker"]
                                                       * 1e6)
        wall = f["startup_seconds"] + compute_s + read_s + fixed
        hours = wall / 3600
        rows.append({"workers": w, "waves": waves, "compute_seconds": compute_s,
                     "s3_read_seconds": read_s, "fixed_seconds": fixed,
                     "wall_seconds": wall,
                     "cost_usd": hours * (w * rate + sched_rate)})
    return {"assumptions": dict(f), "measured_at_users": r["users"],
            "measured_cores": cores,
            "users_per_second_per_worker": per_core,
            "partition_seconds": t_partition, "partitions": partitions,
            "lake_bytes_per_user": bytes_per_user, "lake_bytes": lake_bytes,
            "worker_peak_bytes_measured": r["peak_rss_worker_bytes"],
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
                 "numba"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            pass
    return {"nproc": os.cpu_count(), "memory_bytes": mem, "cpu_model": cpu,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": versions, "loadavg_at_start": list(os.getloadavg())}


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _fmt_b(x: int | None) -> str:
    return "–" if not x else f"{x / MIB:,.0f} MiB"


def _fmt_r(x: float | None) -> str:
    return "–" if x is None else (f"{x:,.0f}×" if x >= 100 else f"{x:.2f}×")


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    m = report["machine"]
    s = report["settings"]
    cfg = report["config_choice"]["chosen"]
    code = report.get("code") or {}
    lines = [
        f"# preassign benchmark — {report['started_at']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{(m['memory_bytes'] or 0) / GIB:.1f} GiB RAM, Python {m['python']}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}.  ",
        f"Command: `{report['command']}`  ",
        f"Code: git {code.get('git_head')}"
        f"{' with uncommitted changes: ' + '; '.join(code['dirty']) if code.get('dirty') else ''}"
        f" (sha256 of the code under test {code.get('sha256', '?')[:12]}).  ",
        *[f"Merged: results of `{x['command']}` ({x['started_at']}) where this run measured "
          f"nothing ({'same code' if x['same_code'] else '**different code**'}).  "
          for x in report.get("merged", [])],
        f"Range {DATE_FROM} .. {DATE_TO}; {s['warmups']} warm-up + {s['repeats']} timed runs "
        f"per peer and size (median, min, max), round-robin; preassign on a LocalCluster of "
        f"{cfg['workers']} worker(s) × {cfg['threads_per_worker']} thread(s), "
        f"memory limit {s['memory_limit']}; DuckDB threads={s['duckdb_threads']}; "
        f"floor = pyarrow, 2 files at a time; reference = first {s['reference_sample']} "
        f"target users, extrapolated.",
        "",
        "| users | peer | runs | wall median (s) | min | max | users/s | peak, biggest process | "
        "peak, all processes | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        n = f"{r['users']:,}"
        if r["status"] != "ok":
            lines.append(f"| {n} | {r['peer']} | – | – | – | – | – | – | – | "
                         f"{r['status']}: {r.get('reason', '')} |")
            continue
        w = r["wall_seconds"]
        runs = f"{len(r['warmups'])}+{len([x for x in r['runs'] if x['status'] == 'ok'])}"
        src = f"; from {r['merged_from']}" if r.get("merged_from") else ""
        note = ""
        if r["peer"] == "reference":
            note = (f"extrapolated: {r['per_user_seconds'] * 1e3:.1f} ms/user × "
                    f"{r['users_targeted']:,} targets; sample of {r['sample_users']} took "
                    f"{_fmt_s(r['inner_seconds']['median'])} s")
            chk = r.get("check", {})
            if chk.get("matched") is not None:
                note += f"; boxes {'=' if chk['matched'] else '≠'} preassign"
            lines.append(f"| {n} | reference | {runs} | {_fmt_s(r['extrapolated_seconds'])} | "
                         f"– | – | {r['users_per_second']:,.0f} | "
                         f"{_fmt_b(r['peak_rss_max_bytes'])} | "
                         f"{_fmt_b(r['peak_rss_tree_bytes'])} | {note}{src} |")
            continue
        if r["peer"] == "preassign":
            note = (f"worker peak {_fmt_b(r['peak_rss_worker_bytes'])}; "
                    + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_seconds"].items()
                                if k in ("read", "scan", "assign", "publish")))
        elif "inner_seconds" in r:
            note = f"in-process {_fmt_s(r['inner_seconds']['median'])} s"
        lines.append(f"| {n} | {r['peer']} | {runs} | {_fmt_s(w['median'])} | "
                     f"{_fmt_s(w['min'])} | {_fmt_s(w['max'])} | {r['users_per_second']:,.0f} | "
                     f"{_fmt_b(r['peak_rss_max_bytes'])} | {_fmt_b(r['peak_rss_tree_bytes'])} | "
                     f"{note}{src} |")
    lines += ["", "Ratios (medians of peers measured on the same lake in the same run):", "",
              "| users | preassign / floor | DuckDB / preassign | reference / preassign "
              "(per user) |", "|---:|---:|---:|---:|"]
    for r in report["ratios"]:
        lines.append(f"| {r['users']:,} | {_fmt_r(r['preassign_over_floor'])} | "
                     f"{_fmt_r(r['duckdb_over_preassign'])} | "
                     f"{_fmt_r(r['reference_over_preassign_per_user'])} |")
    sc = report["scaling"]

    def k(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    lines += ["", f"Scaling exponent of preassign (least squares of log time on log users, "
              f"sizes ≥ {sc['fit_min_users']:,}: {sc['fitted_sizes']}): **{k(sc['exponent'])}** "
              f"(all sizes: {k(sc['exponent_all_sizes'])}; scan+assign only: "
              f"{k(sc['compute_exponent'])}; worker peak memory: "
              f"{k(sc['worker_memory_exponent'])}).", ""]
    lines += ["Targets (issue 6):", "", "| target | measured | met |", "|---|---:|---|"]
    for t in report["targets"]:
        v = t["value"]
        val = "–" if v is None else (f"{v:.3f}" if t["name"] in ("exponent", "memory_flat")
                                     else f"{v:.2f} GiB" if t["name"] == "memory_2m"
                                     else _fmt_r(v))
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']} | {val} | {met}{note} |")
    chk = report.get("duckdb_check")
    if chk:
        lines += ["", f"DuckDB check on {chk['users']:,} users: "
                  + ("identical assignments" if chk.get("matched") else "**MISMATCH**")
                  + f" ({chk.get('preassign_rows', '?')} rows preassign, "
                    f"{chk.get('duckdb_rows', '?')} rows DuckDB, "
                    f"{chk.get('mismatched_rows', '?')} differing)."]
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
    fg = report.get("fargate")
    if fg:
        a = fg["assumptions"]
        lines += ["", f"Fargate estimate for {a['users']:,} users (from "
                  f"{fg['users_per_second_per_worker']:,.0f} users/s per worker core measured "
                  f"at {fg['measured_at_users']:,} users; {fg['partitions']} partitions of "
                  f"{a['users_per_partition']:,}; workers {a['worker_vcpu']} vCPU / "
                  f"{a['worker_memory_gb']} GB, scheduler {a['scheduler_vcpu']} vCPU / "
                  f"{a['scheduler_memory_gb']} GB; ${a['price_per_vcpu_hour']}/vCPU-h, "
                  f"${a['price_per_gb_hour']}/GB-h; startup {a['startup_seconds']} s; S3 "
                  f"{a['s3_read_mb_per_second_per_worker']} MB/s per worker, "
                  f"{a['passes_over_lake']} passes over {fg['lake_bytes'] / 1e9:.1f} GB):", "",
                  "| workers | waves | compute (s) | S3 read (s) | wall (s) | cost (USD) |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in fg["rows"]:
            lines.append(f"| {r['workers']} | {r['waves']} | {_fmt_s(r['compute_seconds'])} | "
                         f"{_fmt_s(r['s3_read_seconds'])} | {_fmt_s(r['wall_seconds'])} | "
                         f"{r['cost_usd']:.3f} |")
    lines.append("")
    return "\n".join(lines)


# ============================================================================ main


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
                    help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--quick", action="store_true",
                    help="tiny lakes, 1 repeat, no warm-up, no layout tuning (for the tests)")
    ap.add_argument("--duckdb-max-seconds", type=float, default=600,
                    help="skip DuckDB where one run would take longer [600]")
    ap.add_argument("--duckdb-threads", type=int, default=2)
    ap.add_argument("--reference-sample", type=int, default=300,
                    help="target users the reference is timed on [300]")
    ap.add_argument("--check-users", type=int, help="lake size of the DuckDB = preassign "
                    "check [2000]")
    ap.add_argument("--tune-users", type=int, help="size at which 2x1 and 1x2 are tried "
                    "[500000; 0 = don't; --quick: 0]")
    ap.add_argument("--workers", type=int, help="preassign workers (skips the tuning)")
    ap.add_argument("--threads-per-worker", type=int, help="preassign threads per worker")
    ap.add_argument("--memory-limit", default="6GiB", help="preassign --memory-limit [6GiB]")
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
    a.sizes = ([int(x) for x in a.sizes.split(",") if x.strip()] if a.sizes
               else list(QUICK_SIZES if quick else DEFAULT_SIZES))
    a.repeats = a.repeats if a.repeats is not None else (1 if quick else 3)
    a.warmups = a.warmups if a.warmups is not None else (0 if quick else 1)
    a.check_users = a.check_users if a.check_users is not None else 2_000
    a.tune_users = a.tune_users if a.tune_users is not None else (0 if quick else 500_000)
    a.peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    bad = [p for p in a.peers if p not in PEERS]
    if bad:
        ap.error(f"unknown peer(s) {bad}; choose from {', '.join(PEERS)}")
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
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
            results.append({**r, "merged_from": path.name})
    for k, v in old.get("lakes", {}).items():
        h.lakes.setdefault(int(k), v)
    if report.get("duckdb_check") is None and old.get("duckdb_check"):
        report["duckdb_check"] = {**old["duckdb_check"], "merged_from": path.name}
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
        for n in sorted(args.sizes):
            h.lakes[n] = ensure_lake(args.cache, n, work / "logs")
        if "duckdb" in args.peers and not h.check_here(args.check_users):
            h.duckdb_check = h.check_duckdb()
        report["config_choice"] = h.choose_config()
        results: list[dict[str, Any]] = []
        # DuckDB at a size is predicted linearly from the largest smaller size measured (in
        # this run or a merged one): skipped when its time or its memory would not fit
        last_duck: tuple[int, float, int] | None = None
        for path in args.merge:
            for r in json.loads(path.read_text())["results"]:
                smaller = r["users"] < min(args.sizes)
                if r["peer"] == "duckdb" and r["status"] == "ok" and smaller and \
                        (not last_duck or r["users"] > last_duck[0]):
                    last_duck = (r["users"], r["wall_seconds"]["max"], r["peak_rss_max_bytes"])
        duck_stop: str | None = None
        for n in sorted(args.sizes):
            skip = duck_stop
            if skip is None and last_duck is not None:
                predicted = last_duck[1] * n / last_duck[0]
                memory = last_duck[2] * n / last_duck[0]
                available = _mem_available()
                if predicted > args.duckdb_max_seconds:
                    skip = (f"predicted {predicted:,.0f} s (linear from {last_duck[0]:,} users) "
                            f"> --duckdb-max-seconds={args.duckdb_max_seconds:g}")
                elif available and memory > 0.8 * available:
                    skip = (f"predicted peak {memory / GIB:.1f} GiB (linear from "
                            f"{last_duck[0]:,} users) > 80% of the {available / GIB:.1f} GiB "
                            f"available on this shared machine")
            rows = h.measure_size(n, skip)
            for r in rows:
                if r["peer"] == "duckdb":
                    if r["status"] == "ok":
                        last_duck = (n, r["wall_seconds"]["max"], r["peak_rss_max_bytes"])
                    elif r["status"] == "skipped":
                        duck_stop = f"skipped at a smaller size ({r['reason']})"
            results += rows
        report["duckdb_check"] = h.duckdb_check
        sizes = sorted(args.sizes)
        for path in args.merge:
            results, sizes = merge_report(report, h, results, sizes, path)
        report["lakes"] = {str(k): v for k, v in sorted(h.lakes.items())}
        report["results"] = results
        report["ratios"] = compute_ratios(results, sizes)
        report["scaling"] = compute_scaling(results)
        report["targets"] = evaluate_targets(results, report["ratios"], report["scaling"],
                                             args.target_users, args.memory_users)
        report["fargate"] = estimate_fargate(results, h.lakes)
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
    run_benchmark(parse_args(argv), argv)


if __name__ == "__main__":
    main()
