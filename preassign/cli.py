"""Command line: ``preassign synth``, ``extract`` and ``run``.

Each command parses its options, calls one library function and prints what it returned.
Failures are mapped in one place (:class:`_Group`), by class (:mod:`preassign.errors`):

* 0 - success
* 1 - bad input (:class:`~preassign.errors.InputError`): the lake breaks the contract, the
  output already holds a complete run
* 2 - bad usage (:class:`~preassign.errors.UsageError`, and click's own): an unknown option
  or rule parameter, a bad value, an output that would overwrite the lake
* 3 - infrastructure (:class:`~preassign.errors.InfrastructureError`, storage and cluster
  failures): cluster, workers, storage or database failed or unreachable
* 70 - internal error: a bug; one line on stderr says where its traceback went
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import traceback
from typing import Any

import click

from .core.params import Params, parse_overrides
from .errors import EXIT_INFRASTRUCTURE, EXIT_INTERNAL, EXIT_SHORTAGE, PreassignError
from .logs import (
    JsonFormatter,
    KeyValueFormatter,
    RunIdFilter,
    bind_run_id,
    log_event,
    new_run_id,
)
from .storage import parse_storage_options

log = logging.getLogger("preassign")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: Where this process logs (set by :func:`_setup_logging`): the internal-error line says it.
_LOGGING: dict[str, Any] = {"level": "INFO", "logfile": None}


def _known_failure(exc: PreassignError) -> click.ClickException:
    """A known failure as the click exception that prints ``Error: ...`` with its exit code."""
    log_event(log, logging.ERROR, "failed", kind=exc.kind, exit_code=exc.exit_code,
              error=str(exc))
    failure = click.ClickException(str(exc))
    failure.exit_code = exc.exit_code
    return failure


def _infrastructure_failure(exc: BaseException) -> click.ClickException | None:
    """Storage, network and cluster failures Dask or fsspec raise (exit 3), else None."""
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    if not isinstance(exc, (OSError, TimeoutError, KilledWorker, CommClosedError,
                            FutureCancelledError)):
        return None
    log_event(log, logging.ERROR, "failed", kind="infrastructure",
              exit_code=EXIT_INFRASTRUCTURE, error=f"{type(exc).__name__}: {exc}")
    hint = ""
    if isinstance(exc, KilledWorker):
        hint = ("\nHint: workers kept dying while running it - most often out of memory. "
                "Raise --memory-limit, use fewer threads per worker, or write the lake "
                "with fewer users per partition; nothing was published.")
    failure = click.ClickException(f"{type(exc).__name__}: {exc}{hint}")
    failure.exit_code = EXIT_INFRASTRUCTURE
    return failure


def _internal_error(exc: BaseException) -> click.ClickException:
    """An error nobody foresaw: one line, the traceback in the log file or on stderr."""
    text = "".join(traceback.format_exception(exc))
    logfile = _LOGGING["logfile"]
    if logfile:
        try:
            with open(logfile, "a", encoding="utf-8") as f:
                f.write(text)
            where = f"its traceback is in {logfile}"
        except OSError:
            logfile = None
    if not logfile:
        if _LOGGING["level"] == "DEBUG":
            sys.stderr.write(text)
            where = "its traceback is above"
        else:
            where = "run again with --loglevel DEBUG to see its traceback (or --logfile FILE)"
    failure = click.ClickException(
        f"internal error, a bug in preassign ({type(exc).__name__}: {exc}); {where}. "
        "Please report it.")
    failure.exit_code = EXIT_INTERNAL
    log_event(log, logging.ERROR, "failed", kind="internal", exit_code=EXIT_INTERNAL,
              error=f"{type(exc).__name__}: {exc}")
    return failure


def _log_usage_error(args: list[str], exc: click.ClickException) -> None:
    """A usage error met while parsing (before logging is set up) still reaches --logfile."""
    logfile = None
    for i, arg in enumerate(args):
        if arg == "--logfile" and i + 1 < len(args):
            logfile = args[i + 1]
        elif arg.startswith("--logfile="):
            logfile = arg.split("=", 1)[1]
    if not logfile or logging.getLogger().handlers and _LOGGING["logfile"] == logfile:
        return
    fmt = "json" if "json" in args and "--log-format" in args else "kv"
    record = logging.LogRecord("preassign", logging.ERROR, __file__, 0, "failed", None, None)
    record.event, record.fields = "failed", {"kind": "usage", "exit_code": exc.exit_code,
                                             "error": exc.format_message()}
    record.run_id = None
    formatter = JsonFormatter() if fmt == "json" else KeyValueFormatter()
    try:
        with open(logfile, "a", encoding="utf-8") as f:
            f.write(formatter.format(record) + "\n")
    except OSError:
        pass


class _Group(click.Group):
    """The command group: maps every failure to its exit code and one ``Error:`` line."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; known failures get their exit code, unknown ones exit 70."""
        args = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
        try:
            return super().invoke(ctx)
        except click.exceptions.UsageError as exc:
            _log_usage_error(args, exc)
            raise
        except (click.exceptions.ClickException, click.exceptions.Exit,
                click.exceptions.Abort, KeyboardInterrupt, SystemExit):
            raise
        except PreassignError as exc:
            raise _known_failure(exc) from None
        except Exception as exc:  # noqa: BLE001 - the one place unknown errors are handled
            raise (_infrastructure_failure(exc) or _internal_error(exc)) from None


def _setup_logging(level: str, logfile: str | None, fmt: str = "kv",
                   run_id: str | None = None) -> None:
    """Structured lines on stderr (and ``logfile``), every one with the run's id."""
    _LOGGING.update(level=level.upper(), logfile=logfile)
    bind_run_id(run_id)
    formatter = JsonFormatter() if fmt == "json" else KeyValueFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RunIdFilter())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=handlers, force=True)
    import distributed  # noqa: F401 - configures its loggers on import; quieten them after

    for name in ("distributed", "dask"):  # one format for every line: Dask's through ours
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True

    for noisy in ("distributed", "bokeh", "tornado", "asyncio", "fsspec", "s3fs", "botocore",
                  "aiobotocore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("bokeh").setLevel(logging.ERROR)  # dashboard host warnings
    # p2p shuffles log their every start and stop at WARNING: not news for a user
    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)


def _parse_date(_ctx: Any, param: click.Parameter, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"expected a date YYYY-MM-DD, got {value!r}",
                                 param=param) from None


def _storage_options(items: tuple[str, ...]) -> dict[str, Any]:
    return parse_storage_options(items)


def _interactive(silent: bool) -> bool:
    return not silent and sys.stdout.isatty()


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="preassign")
def main() -> None:
    """Pre-assign snack boxes on Dask and count the demand per snack.

    \b
    Quick start:
      preassign synth --out data/lake --users 100000 --date 2026-12-01
      preassign run --lake data/lake --date 2026-12-01 --until 2026-12-14 --out data/run
    """


_common_logging = [
    click.option("--loglevel", default="INFO", show_default=True,
                 type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
                 help="Log level of the structured log lines written to stderr."),
    click.option("--logfile", type=click.Path(dir_okay=False, writable=True),
                 help="Also append the log lines to this file."),
    click.option("--log-format", "log_format", default="kv", show_default=True,
                 type=click.Choice(["kv", "json"]),
                 help="Log lines as key=value pairs (values quoted when needed) or as JSON "
                      "objects (values typed); both carry the run's run_id."),
    click.option("--silent", is_flag=True, help="No progress bars, even on a terminal."),
]

_cluster_options = [
    click.option("--cluster", "cluster_kind", default=None,
                 help="'local' (a LocalCluster), 'fargate' (ECS Fargate), or a scheduler "
                      "address such as tls://10.0.0.5:8786 [default: 'kind' in "
                      "cluster/defaults.yaml, i.e. local]."),
    click.option("--workers", type=click.IntRange(min=1),
                 help="Number of workers (default: local - one per core; fargate - from "
                      "cluster/defaults.yaml)."),
    click.option("--threads-per-worker", type=click.IntRange(min=1),
                 help="Threads per local worker (default 1: the kernels hold the GIL rarely, "
                      "processes scale better)."),
    click.option("--memory-limit", help="Memory limit per local worker, e.g. 4GiB (default: "
                                        "machine memory / workers)."),
    click.option("--worker-cpu", type=click.IntRange(min=256),
                 help="Fargate CPU units per worker (1024 = 1 vCPU)."),
    click.option("--worker-mem", type=click.IntRange(min=512),
                 help="Fargate memory per worker, in MiB."),
    click.option("--adapt", metavar="MIN:MAX",
                 help="Adaptive scaling between MIN and MAX workers."),
    click.option("--image", help="Container image for Fargate scheduler and workers."),
    click.option("--insecure-scheduler", is_flag=True,
                 help="Allow a plain tcp:// scheduler that is not on this machine; the task graph "
                      "(source URL included) and results cross the network unencrypted. Prefer "
                      "tls://."),
]


def _apply(options: list) -> Any:
    def wrap(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def _cluster_spec(kind: str | None, workers: int | None, threads: int | None,
                  memory: str | None, cpu: int | None, mem: int | None, adapt: str | None,
                  image: str | None, insecure_scheduler: bool = False) -> Any:
    from .cluster import ClusterSpec, check_memory_limit, parse_adapt

    if memory:
        check_memory_limit(memory)
    try:
        adapt_range = parse_adapt(adapt) if adapt else None
        insecure = True if insecure_scheduler and kind and kind.startswith("tcp://") else None
        return ClusterSpec(kind=kind, workers=workers, threads_per_worker=threads,
                           memory_limit=memory, worker_cpu=cpu, worker_mem=mem,
                           adapt=adapt_range, image=image, insecure_scheduler=insecure)
    except PreassignError:
        raise
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_source_options = [
    click.option("--source", help="SQLAlchemy URL of the source database, e.g. "
                                  "mysql+pymysql://user@host/db or sqlite:///snacks.db. Prefer "
                                  "--source-file or $PREASSIGN_SOURCE_URL when it holds a "
                                  "password."),
    click.option("--source-file", type=click.Path(exists=True, dir_okay=False),
                 help="File whose first non-comment line is the source URL (keeps the password "
                      "off the command line)."),
    click.option("--insecure-db", is_flag=True,
                 help="Allow a MySQL source on another machine without verified TLS (no "
                      "?ssl_ca=); for a lab database only: the password and data cross the "
                      "network readable."),
]


@main.command(context_settings=CONTEXT)
@click.option("--out", help="Lake root to write: a directory or s3://bucket/prefix.")
@click.option("--db", help="Instead of a lake, fill this database (SQLAlchemy URL; the password "
                           "may come from $PREASSIGN_SOURCE_URL) with the same data.")
@click.option("--replace", is_flag=True, help="With --db: replace tables that already hold rows.")
@_apply(_source_options[2:])
@click.option("--overwrite", is_flag=True,
              help="With --out: replace a synthetic lake written there before (nothing else is "
                   "ever replaced).")
@click.option("--users", required=True, type=click.IntRange(min=0), help="Number of users.")
@click.option("--snacks", default=300, show_default=True, type=click.IntRange(min=1),
              help="Number of snacks in the lineup.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option("--date", "as_of", callback=_parse_date, default=None,
              help="'Today' of the lake: deliveries are spread over the two weeks from it "
                   "[default: today, UTC].")
@click.option("--users-per-partition", default=50_000, show_default=True,
              type=click.IntRange(min=1), help="Users per co-partitioned file.")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec/s3fs option, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable).")
@_apply([*_cluster_options[:4], _cluster_options[-1]])
@_apply(_common_logging)
def synth(out: str | None, db: str | None, replace: bool, insecure_db: bool, overwrite: bool,
          users: int,
          snacks: int, seed: int,
          as_of: dt.date | None, users_per_partition: int, storage_option: tuple[str, ...],
          cluster_kind: str, workers: int | None, threads_per_worker: int | None,
          memory_limit: str | None, insecure_scheduler: bool, loglevel: str, logfile: str | None,
          log_format: str, silent: bool) -> None:
    """Generate a deterministic synthetic lake (SPEC §2), co-partitioned by user.

    With --db, fill a source database with exactly the same data instead.

    \b
    Examples:
      preassign synth --out data/lake --users 100000 --date 2026-12-01
      preassign synth --db sqlite:///data/snacks.db --users 10000 --date 2026-12-01
    """
    from .synth import SynthConfig, synth_lake

    _setup_logging(loglevel, logfile, log_format, new_run_id())
    if (out is None) == (db is None):
        raise click.UsageError("give exactly one of --out LAKE or --db URL")
    cfg = SynthConfig(users=users, snacks=snacks, seed=seed,
                      as_of=as_of or dt.datetime.now(dt.timezone.utc).date(),
                      users_per_partition=users_per_partition)
    if db is not None:
        from .source import fill_database

        url, rows = fill_database(db, cfg, replace=replace, insecure=insecure_db)
        click.echo(f"filled {url}: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
        return
    spec = _cluster_spec(cluster_kind, workers, threads_per_worker, memory_limit,
                         None, None, None, None, insecure_scheduler)
    log_event(log, logging.INFO, "synth_start", users=users, snacks=snacks,
              partitions=cfg.partitions, out=out)
    rows = synth_lake(cfg, out, spec, storage_options=_storage_options(storage_option),
                      progress=_interactive(silent), overwrite=overwrite)
    log_event(log, logging.INFO, "synth_done", **rows)
    click.echo(f"wrote lake {out}: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))


@main.command(context_settings=CONTEXT)
@_apply(_source_options)
@click.option("--lake", required=True, help="Lake root to publish to: a directory or "
                                            "s3://bucket/prefix.")
@click.option("--users-per-partition", default=50_000, show_default=True,
              type=click.IntRange(min=1), help="User ids per co-partitioned file.")
@click.option("--incremental", is_flag=True,
              help="Add only rows of ratings, deliveries and requests newer than the last "
                   "extraction's watermark; other tables are refreshed whole.")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec/s3fs option for the lake (repeatable).")
@_apply([*_cluster_options[:4], _cluster_options[-1]])
@_apply(_common_logging)
def extract(source: str | None, source_file: str | None, insecure_db: bool, lake: str,
            users_per_partition: int, incremental: bool, storage_option: tuple[str, ...],
            cluster_kind: str | None, workers: int | None, threads_per_worker: int | None,
            memory_limit: str | None, insecure_scheduler: bool, loglevel: str,
            logfile: str | None, log_format: str, silent: bool) -> None:
    """Extract the source database (MySQL/Aurora or SQLite) into a co-partitioned lake.

    Reads each table in user-id ranges in parallel on the cluster and publishes a new
    version of the lake atomically (readers never see a half-written lake).

    \b
    Example:
      PREASSIGN_SOURCE_URL='mysql+pymysql://etl:...@aurora.internal/snacks' \\
        preassign extract --lake s3://my-lake/snacks --incremental
    """
    from .extract import extract_job

    _setup_logging(loglevel, logfile, log_format, new_run_id())
    url = _checked_source(source, source_file, insecure_db)
    summary = extract_job(url, lake, _cluster_spec(cluster_kind, workers, threads_per_worker,
                                                   memory_limit, None, None, None, None,
                                                   insecure_scheduler),
                          users_per_partition=users_per_partition, incremental=incremental,
                          storage_options=_storage_options(storage_option),
                          progress=_interactive(silent))
    click.echo(f"published {summary['lake']} version {summary['version']} ({summary['mode']}): "
               + ", ".join(f"{k} {v:,}" for k, v in summary["rows"].items()))


def _process_started() -> float:
    """When this process started, on the ``time.perf_counter()`` clock.

    A run's printed time and ``stage_seconds["total"]`` count from here: the wall time of
    the whole command, interpreter start and imports included.
    """
    import time

    import psutil

    age = time.time() - psutil.Process().create_time()
    return time.perf_counter() - max(0.0, age)


@main.command(context_settings=CONTEXT)
@click.option("--lake", help="Lake root: a directory or s3://bucket/prefix.")
@_apply(_source_options)
@click.option("--extract", "do_extract", is_flag=True,
              help="Extract the source database into --lake before the run (implied by "
                   "--source and --source-file; otherwise the URL comes from "
                   "$PREASSIGN_SOURCE_URL).")
@click.option("--incremental/--full", default=None,
              help="With --source: incremental or full extraction before the run [default: "
                   "incremental when the lake already has an extraction, else full].")
@click.option("--date", "date_from", required=True, callback=_parse_date,
              help="Delivery date to pre-assign (YYYY-MM-DD), or the first of a range.")
@click.option("--until", "date_to", callback=_parse_date,
              help="Last delivery date of the range (inclusive) [default: --date].")
@click.option("--out", required=True, help="Output location: a directory or s3://bucket/prefix.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help=f"Override a rule parameter (repeatable). Names: {', '.join(Params.names())}.")
@click.option("--on-invalid", type=click.Choice(["raise", "drop"]), default="raise",
              show_default=True,
              help="Invalid rows in the lake: fail the run, or drop them, count them in "
                   "summary.json and write them with the reason to rejected/ in the output.")
@click.option("--stock-aware", is_flag=True,
              help="SPEC §6: what the boxes will be with the stock on hand (earlier dates "
                   "first), in rounds until no snack is held by more boxes than its stock; "
                   "writes reservations/ instead of shortage/. Needs the lake's stock table.")
@click.option("--overwrite", is_flag=True, help="Replace a complete output already at --out.")
@click.option("--compare-to", metavar="PREVIOUS",
              help="A previous run's output: the report gets a 'since the previous run' "
                   "section and summary.json a compared_to entry (see `preassign diff`).")
@click.option("--fail-on-shortage", type=click.IntRange(min=0), metavar="N",
              help=f"Exit {EXIT_SHORTAGE} (after publishing) when more than N units are short "
                   "(stock-aware: units that lost their stock), so a schedule can alert.")
@click.option("--users-per-partition", default=50_000, show_default=True,
              type=click.IntRange(min=1),
              help="Partition size when the lake has no co-partitioned layout.")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec/s3fs option for the lake and the output (repeatable).")
@_apply(_cluster_options)
@_apply(_common_logging)
def run(lake: str | None, source: str | None, source_file: str | None, insecure_db: bool,
        do_extract: bool,
        incremental: bool | None,
        date_from: dt.date, date_to: dt.date | None, out: str,
        overrides: tuple[str, ...], on_invalid: str, stock_aware: bool, overwrite: bool,
        compare_to: str | None, fail_on_shortage: int | None, users_per_partition: int,
        storage_option: tuple[str, ...], cluster_kind: str, workers: int | None,
        threads_per_worker: int | None, memory_limit: str | None, worker_cpu: int | None,
        worker_mem: int | None, adapt: str | None, image: str | None, insecure_scheduler: bool,
        loglevel: str, logfile: str | None, log_format: str, silent: bool) -> None:
    """Pre-assign every active user's box for a date (range) and count demand per snack.

    Writes assignments/, demand/, shortage/ and summary.json under --out, all at once
    when the run has succeeded.

    With --source (or --source-file, or $PREASSIGN_SOURCE_URL and --lake), first extracts
    the database into --lake, then runs: one command for the scheduled job.

    \b
    Example:
      preassign run --lake data/lake --date 2026-12-01 --until 2026-12-14 \\
          --out data/run --set max_requests=1 --workers 2
    """
    started = _process_started()
    from .pipeline import ExtractFirst, RunConfig, run_job

    run_id = new_run_id()
    _setup_logging(loglevel, logfile, log_format, run_id)
    if lake is None:
        raise click.UsageError("give --lake (with --source, the lake to extract into)")
    params = Params.from_mapping(parse_overrides(overrides))
    config = RunConfig(lake=lake, date_from=date_from, date_to=date_to or date_from, out=out,
                       params=params, storage_options=_storage_options(storage_option),
                       on_invalid=on_invalid, overwrite=overwrite,
                       users_per_partition=users_per_partition, stock_aware=stock_aware,
                       compare_to=compare_to, run_id=run_id)
    spec = _cluster_spec(cluster_kind, workers, threads_per_worker, memory_limit, worker_cpu,
                         worker_mem, adapt, image, insecure_scheduler)
    first = None
    if source or source_file or do_extract:
        url = _checked_source(source, source_file, insecure_db)
        log_event(log, logging.INFO, "extract_first", source=_masked_source(url), lake=lake)
        first = ExtractFirst(url, incremental=incremental,
                             users_per_partition=users_per_partition)

    def stage(name: str, seconds: float) -> None:
        log_event(log, logging.INFO, "stage_done", stage=name, seconds=round(seconds, 3))

    log_event(log, logging.INFO, "run_start", lake=lake, date_from=config.date_from.isoformat(),
              date_to=config.date_to.isoformat(), out=out, stock_aware=stock_aware)
    result = run_job(config, spec, extract=first, progress=_interactive(silent), on_stage=stage,
                     started=started)
    s = result.summary
    log_event(log, logging.INFO, "run_done", users_targeted=s["users_targeted"],
              boxes_full=s["boxes_full"], boxes_short=s["boxes_short"],
              units_total=s["units_total"], units_short=_units_short(result),
              seconds=s["stage_seconds"]["total"])
    _print_result(result)
    if fail_on_shortage is not None and _units_short(result) > fail_on_shortage:
        short = _units_short(result)
        log_event(log, logging.ERROR, "shortage_over_limit", units_short=short,
                  limit=fail_on_shortage, exit_code=EXIT_SHORTAGE)
        failure = click.ClickException(
            f"{short:,} units are short, more than --fail-on-shortage {fail_on_shortage:,} "
            f"(the run is published at {out})")
        failure.exit_code = EXIT_SHORTAGE
        raise failure


@main.command(context_settings=CONTEXT)
@click.argument("run_a")
@click.argument("run_b")
@click.option("--out", help="Also write the comparison here: diff.json, snacks.csv and "
                            "by_date.csv (a new or empty directory).")
@click.option("--no-boxes", is_flag=True,
              help="Skip comparing box by box (reads both runs' assignments/).")
@click.option("--top", default=15, show_default=True, type=click.IntRange(min=1),
              help="Snacks to print.")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec/s3fs option for the runs and --out (repeatable).")
@_apply(_common_logging)
def diff(run_a: str, run_b: str, out: str | None, no_boxes: bool, top: int,
         storage_option: tuple[str, ...], loglevel: str, logfile: str | None, log_format: str,
         silent: bool) -> None:
    """Compare two runs: what changed from RUN_A to RUN_B, and why where it can tell.

    Prints the reasons found in the runs' records (parameters, dates, inputs by
    fingerprint, kind of run, version), units and shortage per snack that changed, and the
    boxes whose snacks differ.

    \b
    Example:
      preassign diff data/run-2026-12-01 data/run-2026-12-02 --out data/diff
    """
    from .diff import compare_runs, write_diff

    _setup_logging(loglevel, logfile, log_format, new_run_id())
    opts = _storage_options(storage_option)
    result = compare_runs(run_a, run_b, opts, boxes=not no_boxes)
    log_event(log, logging.INFO, "diff_done", run_a=run_a, run_b=run_b,
              snacks_changed=int(len(result.snacks)), boxes_changed=result.boxes_changed)
    a, b = result.a, result.b
    click.echo(f"{run_a} ({a['date_from']} .. {a['date_to']}) -> {run_b} "
               f"({b['date_from']} .. {b['date_to']})")
    if result.nothing_changed:
        click.echo("Nothing changed: same units per snack and date, same boxes.")
    click.echo("Why: " + ("; ".join(result.why) if result.why else
                          "same inputs, dates and parameters"))
    before, after = result.units_total
    click.echo(f"Units: {before:,} -> {after:,} ({after - before:+,})")
    if result.boxes_changed is not None:
        click.echo(f"Boxes changed: {result.boxes_changed:,}; only in {run_a}: "
                   f"{result.boxes_only_before:,}; only in {run_b}: {result.boxes_only_after:,}")
    if len(result.snacks):
        shown = min(top, len(result.snacks))
        click.echo(f"\nSnacks that changed ({len(result.snacks)}; top {shown} by change):")
        click.echo(_table(result.snacks.head(top)))
    if out:
        write_diff(result, out, opts)
        click.echo(f"\nWritten to {out}/ (diff.json, snacks.csv, by_date.csv)")


@main.group(context_settings=CONTEXT)
def lake() -> None:
    """Lake maintenance: rewrite a lake into the fast co-partitioned layout."""


@lake.command("convert", context_settings=CONTEXT)
@click.argument("src")
@click.argument("dst")
@click.option("--users-per-partition", default=50_000, show_default=True,
              type=click.IntRange(min=1), help="Users per co-partitioned file.")
@click.option("--overwrite", is_flag=True, help="Replace a lake converted to DST before.")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec/s3fs option for SRC and DST (repeatable).")
@_apply([*_cluster_options[:4], _cluster_options[-1]])
@_apply(_common_logging)
def convert(src: str, dst: str, users_per_partition: int, overwrite: bool,
            storage_option: tuple[str, ...], cluster_kind: str | None, workers: int | None,
            threads_per_worker: int | None, memory_limit: str | None, insecure_scheduler: bool,
            loglevel: str, logfile: str | None, log_format: str, silent: bool) -> None:
    """Rewrite any valid lake at SRC into the co-partitioned layout at DST, once.

    A lake written by another engine (one file per table, rows in any order) is shuffled by
    user on every run; converted, runs read it partition by partition. DST is published at
    once (_lake.json last); memory per task is bounded by a partition.

    \b
    Example:
      preassign lake convert s3://exports/snacks s3://lakes/snacks --users-per-partition 50000
    """
    from .convert import convert_job

    _setup_logging(loglevel, logfile, log_format, new_run_id())
    summary = convert_job(src, dst, _cluster_spec(cluster_kind, workers, threads_per_worker,
                                                  memory_limit, None, None, None, None,
                                                  insecure_scheduler),
                          storage_options=_storage_options(storage_option),
                          users_per_partition=users_per_partition, overwrite=overwrite,
                          progress=_interactive(silent))
    log_event(log, logging.INFO, "convert_done", src=src, dst=dst,
              partitions=summary["partitions"], **summary["rows"])
    click.echo(f"converted {src} -> {dst}: {summary['partitions']} partitions; "
               + ", ".join(f"{k} {v:,}" for k, v in summary["rows"].items()))


def _checked_source(source: str | None, source_file: str | None, insecure_db: bool) -> Any:
    """The source URL (argument, file or environment), refused without TLS to a remote MySQL.

    When the password has a source of its own ($PREASSIGN_SOURCE_PASSWORD, or the secret
    named by $PREASSIGN_SOURCE_PASSWORD_SECRET_ARN), the result is a
    :class:`~preassign.dbsecurity.SecretURL`: the workers get the URL without the password
    and read the password where they connect.
    """
    from .dbsecurity import check_source_transport, secret_reference_from_environment
    from .source import parse_source_url, resolve_source_url

    url = resolve_source_url(source, source_file=source_file)
    check_source_transport(parse_source_url(url), insecure=insecure_db)
    return secret_reference_from_environment(url) or url


def _masked_source(source: Any) -> str:
    """A source URL or :class:`~preassign.dbsecurity.SecretURL` as it may be logged."""
    from .dbsecurity import SecretURL
    from .source import mask_url

    return source.masked() if isinstance(source, SecretURL) else mask_url(source)


def _units_short(result: Any) -> int:
    """Units demand exceeds stock by (SPEC §3), or units that lost their stock (SPEC §6)."""
    if result.shortage is not None:
        return int(result.shortage["shortage"].sum())
    if result.reservations is not None:
        r = result.reservations
        return int((r["units_unconstrained"] - r["units"]).clip(lower=0).sum())
    return 0


def _table(frame: Any) -> str:
    """A frame as the summary prints it: numbers with thousands separators, no index."""
    import pandas as pd

    def number(v: Any) -> str:
        return "-" if pd.isna(v) else f"{int(v):,}"

    formatters = {c: number for c in frame.columns
                  if c != "snack_id" and pd.api.types.is_integer_dtype(frame[c])}
    return str(frame.to_string(index=False, formatters=formatters))


def _with_names(frame: Any, names: Any) -> Any:
    """``frame`` with ``name`` and ``genre`` after ``snack_id`` (when the run knows them)."""
    from .insights import with_names

    return frame if names is None else with_names(frame, names)


def _print_result(result: Any, top: int = 10) -> None:
    import pandas as pd

    from .core.rules import from_days
    from .report import list_shortages, rank_busiest_snacks

    s = result.summary
    click.echo(
        f"{s['users_targeted']:,} users targeted, {s['boxes_full']:,} boxes full, "
        f"{s['boxes_short']:,} short, {s['units_total']:,} units "
        f"({s['date_from']} .. {s['date_to']}, {s['stage_seconds']['total']:.1f} s)"
    )
    for c in s.get("callouts", []):
        click.echo(f"  {c['severity']}: {c['code']}: {c['message']}")
    if len(result.demand):
        busiest = rank_busiest_snacks(result.demand, top=top)[["snack_id", "units"]]
        click.echo(f"\nBusiest snacks (units over the run, top {len(busiest)}):")
        click.echo(_table(_with_names(busiest, result.names)))
    if result.shortage is not None:
        short = list_shortages(result.shortage)
        click.echo(f"\nShortage: {len(short)} snacks short, "
                   f"{int(short['shortage'].sum()):,} units"
                   + (f" (top {min(top, len(short))})" if len(short) else ""))
        if len(short):
            shown = _with_names(short.head(top), result.names)
            details = result.shortage_details
            if details is not None:
                more = details.set_index("snack_id")
                shown = shown.assign(
                    runs_out_on=[("no stock row" if not more.at[i, "has_stock_row"] else
                                  str(more.at[i, "runs_out_on"] or "-"))
                                 for i in shown["snack_id"]])
            click.echo(_table(shown))
    if result.reservations is not None:
        res = result.reservations
        lost = res[res["boxes_lost"] > 0].sort_values(["boxes_lost", "snack_id"],
                                                      ascending=[False, True])
        click.echo(f"\nStock-aware: {s['rounds']} rounds, {s['boxes_changed']:,} boxes changed, "
                   f"{s['boxes_short_unconstrained']:,} short without stock limits; "
                   f"{int(res['limited'].sum())} snacks limited by stock")
        if len(lost):
            cols = ["snack_id", "stock", "units_unconstrained", "units", "boxes_lost",
                    "cutoff_on"]
            shown = lost[cols].head(top).copy()
            shown["cutoff_on"] = [("-" if pd.isna(d) else from_days(int(d)).isoformat())
                                  for d in shown["cutoff_on"]]
            click.echo(f"Boxes that lose a snack (top {min(top, len(lost))}):")
            click.echo(_table(_with_names(shown, result.names)))
    parts = ["assignments/", "demand/"]
    if result.shortage is not None:
        parts += ["shortage/", "shortage.csv"]
    if result.reservations is not None:
        parts += ["reservations/", "reservations.csv", "stock_cutoffs/"]
    if any(s.get("invalid_rows", {}).values()):
        parts.append("rejected/")
    parts += ["snack_prior/", "report.html", "summary.json"]
    click.echo(f"\nOutputs: {result.out}/ ({', '.join(parts)})")


if __name__ == "__main__":  # pragma: no cover
    main()
