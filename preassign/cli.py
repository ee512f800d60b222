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
from .errors import EXIT_INFRASTRUCTURE, EXIT_INTERNAL, PreassignError
from .storage import parse_storage_options

log = logging.getLogger("preassign")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: Where this process logs (set by :func:`_setup_logging`): the internal-error line says it.
_LOGGING: dict[str, Any] = {"level": "INFO", "logfile": None}


def _known_failure(exc: PreassignError) -> click.ClickException:
    """A known failure as the click exception that prints ``Error: ...`` with its exit code."""
    log.error("event=failed kind=%s error=%s", exc.kind, exc)
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
    log.error("event=failed kind=infrastructure error=%s: %s", type(exc).__name__, exc)
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
    return failure


class _Group(click.Group):
    """The command group: maps every failure to its exit code and one ``Error:`` line."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; known failures get their exit code, unknown ones exit 70."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit,
                click.exceptions.Abort, KeyboardInterrupt, SystemExit):
            raise
        except PreassignError as exc:
            raise _known_failure(exc) from None
        except Exception as exc:  # noqa: BLE001 - the one place unknown errors are handled
            raise (_infrastructure_failure(exc) or _internal_error(exc)) from None


def _setup_logging(level: str, logfile: str | None) -> None:
    _LOGGING.update(level=level.upper(), logfile=logfile)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile))
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        handlers=handlers,
        force=True,
    )
    import distributed  # noqa: F401 - configures its loggers on import; quieten them after

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
    click.option("--silent", is_flag=True, help="No progress bars, even on a terminal."),
]

_cluster_options = [
    click.option("--cluster", "cluster_kind", default=None,
                 help="'local' (a LocalCluster), 'fargate' (ECS Fargate), or a scheduler "
                      "address such as tcp://10.0.0.5:8786 [default: 'kind' in "
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
]


def _apply(options: list) -> Any:
    def wrap(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def _cluster_spec(kind: str | None, workers: int | None, threads: int | None,
                  memory: str | None, cpu: int | None, mem: int | None, adapt: str | None,
                  image: str | None) -> Any:
    from .cluster import ClusterSpec, check_memory_limit, parse_adapt

    if memory:
        check_memory_limit(memory)
    try:
        adapt_range = parse_adapt(adapt) if adapt else None
        return ClusterSpec(kind=kind, workers=workers, threads_per_worker=threads,
                           memory_limit=memory, worker_cpu=cpu, worker_mem=mem,
                           adapt=adapt_range, image=image)
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
]


@main.command(context_settings=CONTEXT)
@click.option("--out", help="Lake root to write: a directory or s3://bucket/prefix.")
@click.option("--db", help="Instead of a lake, fill this database (SQLAlchemy URL; the password "
                           "may come from $PREASSIGN_SOURCE_URL) with the same data.")
@click.option("--replace", is_flag=True, help="With --db: replace tables that already hold rows.")
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
@_apply(_cluster_options[:4])
@_apply(_common_logging)
def synth(out: str | None, db: str | None, replace: bool, overwrite: bool, users: int,
          snacks: int, seed: int,
          as_of: dt.date | None, users_per_partition: int, storage_option: tuple[str, ...],
          cluster_kind: str, workers: int | None, threads_per_worker: int | None,
          memory_limit: str | None, loglevel: str, logfile: str | None, silent: bool) -> None:
    """Generate a deterministic synthetic lake (SPEC §2), co-partitioned by user.

    With --db, fill a source database with exactly the same data instead.

    \b
    Examples:
      preassign synth --out data/lake --users 100000 --date 2026-12-01
      preassign synth --db sqlite:///data/snacks.db --users 10000 --date 2026-12-01
    """
    from .synth import SynthConfig, synth_lake

    _setup_logging(loglevel, logfile)
    if (out is None) == (db is None):
        raise click.UsageError("give exactly one of --out LAKE or --db URL")
    cfg = SynthConfig(users=users, snacks=snacks, seed=seed,
                      as_of=as_of or dt.datetime.now(dt.timezone.utc).date(),
                      users_per_partition=users_per_partition)
    if db is not None:
        from .source import fill_database

        url, rows = fill_database(db, cfg, replace=replace)
        click.echo(f"filled {url}: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
        return
    spec = _cluster_spec(cluster_kind, workers, threads_per_worker, memory_limit,
                         None, None, None, None)
    log.info("event=synth_start users=%d snacks=%d partitions=%d out=%s", users, snacks,
             cfg.partitions, out)
    rows = synth_lake(cfg, out, spec, storage_options=_storage_options(storage_option),
                      progress=_interactive(silent), overwrite=overwrite)
    log.info("event=synth_done %s", " ".join(f"{k}={v}" for k, v in rows.items()))
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
@_apply(_cluster_options[:4])
@_apply(_common_logging)
def extract(source: str | None, source_file: str | None, lake: str, users_per_partition: int,
            incremental: bool, storage_option: tuple[str, ...], cluster_kind: str | None,
            workers: int | None, threads_per_worker: int | None, memory_limit: str | None,
            loglevel: str, logfile: str | None, silent: bool) -> None:
    """Extract the source database (MySQL/Aurora or SQLite) into a co-partitioned lake.

    Reads each table in user-id ranges in parallel on the cluster and publishes a new
    version of the lake atomically (readers never see a half-written lake).

    \b
    Example:
      PREASSIGN_SOURCE_URL='mysql+pymysql://etl:...@aurora.internal/snacks' \\
        preassign extract --lake s3://my-lake/snacks --incremental
    """
    from .extract import extract_job
    from .source import resolve_source_url

    _setup_logging(loglevel, logfile)
    url = resolve_source_url(source, source_file=source_file)
    summary = extract_job(url, lake, _cluster_spec(cluster_kind, workers, threads_per_worker,
                                                   memory_limit, None, None, None, None),
                          users_per_partition=users_per_partition, incremental=incremental,
                          storage_options=_storage_options(storage_option),
                          progress=_interactive(silent))
    click.echo(f"published {summary['lake']} version {summary['version']} ({summary['mode']}): "
               + ", ".join(f"{k} {v:,}" for k, v in summary["rows"].items()))


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
@click.option("--users-per-partition", default=50_000, show_default=True,
              type=click.IntRange(min=1),
              help="Partition size when the lake has no co-partitioned layout.")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec/s3fs option for the lake and the output (repeatable).")
@_apply(_cluster_options)
@_apply(_common_logging)
def run(lake: str | None, source: str | None, source_file: str | None, do_extract: bool,
        incremental: bool | None,
        date_from: dt.date, date_to: dt.date | None, out: str,
        overrides: tuple[str, ...], on_invalid: str, stock_aware: bool, overwrite: bool,
        users_per_partition: int,
        storage_option: tuple[str, ...], cluster_kind: str, workers: int | None,
        threads_per_worker: int | None, memory_limit: str | None, worker_cpu: int | None,
        worker_mem: int | None, adapt: str | None, image: str | None, loglevel: str,
        logfile: str | None, silent: bool) -> None:
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
    from .pipeline import ExtractFirst, RunConfig, run_job
    from .source import mask_url, resolve_source_url

    _setup_logging(loglevel, logfile)
    if lake is None:
        raise click.UsageError("give --lake (with --source, the lake to extract into)")
    params = Params.from_mapping(parse_overrides(overrides))
    config = RunConfig(lake=lake, date_from=date_from, date_to=date_to or date_from, out=out,
                       params=params, storage_options=_storage_options(storage_option),
                       on_invalid=on_invalid, overwrite=overwrite,
                       users_per_partition=users_per_partition, stock_aware=stock_aware)
    spec = _cluster_spec(cluster_kind, workers, threads_per_worker, memory_limit, worker_cpu,
                         worker_mem, adapt, image)
    first = None
    if source or source_file or do_extract:
        url = resolve_source_url(source, source_file=source_file)
        log.info("event=extract_start source=%s lake=%s", mask_url(url), lake)
        first = ExtractFirst(url, incremental=incremental,
                             users_per_partition=users_per_partition)

    def stage(name: str, seconds: float) -> None:
        log.info("event=stage_done stage=%s seconds=%.3f", name, seconds)

    log.info("event=run_start lake=%s date_from=%s date_to=%s out=%s", lake, config.date_from,
             config.date_to, out)
    result = run_job(config, spec, extract=first, progress=_interactive(silent), on_stage=stage)
    s = result.summary
    log.info("event=run_done users_targeted=%d boxes_full=%d boxes_short=%d units_total=%d",
             s["users_targeted"], s["boxes_full"], s["boxes_short"], s["units_total"])
    _print_result(result)


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
    if len(result.demand):
        busiest = rank_busiest_snacks(result.demand, top=top)[["snack_id", "units"]]
        click.echo(f"\nBusiest snacks (units over the run, top {len(busiest)}):")
        click.echo(busiest.to_string(index=False))
    if result.shortage is not None:
        short = list_shortages(result.shortage)
        click.echo(f"\nShortage: {len(short)} snacks short"
                   + (f" (top {min(top, len(short))})" if len(short) else ""))
        if len(short):
            click.echo(short.head(top).to_string(index=False))
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
            click.echo(shown.to_string(index=False))
    kind = "shortage/, " if result.shortage is not None else \
        "reservations/, " if result.reservations is not None else ""
    parts = f"assignments/, demand/, {kind}snack_prior/, report.html, summary.json"
    click.echo(f"\nOutputs: {result.out}/ ({parts})")


if __name__ == "__main__":  # pragma: no cover
    main()
