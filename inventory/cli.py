"""The `inventory` command: thin Typer commands that parse, call and render."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from inventory import __version__, render
from inventory.answers import queries
from inventory.errors import InventoryError, UsageError
from inventory.model import MAX_USAGE_DAYS, Options
from inventory.storage.files import private_umask
from inventory.terminal import visible

app = typer.Typer(
    name="inventory",
    help="Inventory of AWS Lightsail container services across accounts and regions.\n\n"
    "Example: inventory collect --config accounts.toml (no AWS at hand? inventory demo)",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_DB = Path("data/inventory.duckdb")
DEFAULT_PARQUET = "data/parquet"
SQL_DIR = queries.SQL_DIR

F = TypeVar("F", bound=Callable[..., Any])
MAX_DEMO_ACCOUNTS = 2_000  # the demo's simulator runs in this process
MAX_DEMO_LATENCY_MS = 10_000


def _errors_to_exit(fn: F) -> F:
    """Our exceptions become a one-line message and the exit code the contract gives."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InventoryError as exc:
            # one line however long (a path must stay whole), the message shown as written,
            # its control characters made visible (it may quote AWS's text)
            render.console(stderr=True).print(
                f"[red]error:[/] {escape(visible(str(exc)))}", markup=True, soft_wrap=True
            )
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:
            if not type(exc).__module__.startswith(("duckdb", "_duckdb")):
                raise
            # a database error no command foresaw: still one line, never a traceback
            text = " ".join(str(exc).split())
            render.console(stderr=True).print(
                f"[red]error:[/] {escape(text)}", markup=True, soft_wrap=True
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class Fmt(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class Engine(StrEnum):
    lean = "lean"
    botocore = "botocore"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"

    @property
    def level(self) -> int:
        return int(getattr(logging, self.value.upper()))


DbOpt = Annotated[Path, typer.Option("--db", help="The DuckDB file.")]
FmtOpt = Annotated[Fmt, typer.Option("--format", "-f", help="table, csv or json.")]
DEFAULTS = Options()  # the CLI's defaults are the library's
LakeOpt = Annotated[
    str | None,
    typer.Option("--lake", help="Read the Parquet lake (a folder or s3://bucket/...), not --db."),
]


@app.command()
@_errors_to_exit
def collect(
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="Accounts file (TOML): a path, or s3://bucket/key.toml."
        ),
    ] = None,
    regions: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated regions, 'all' (default), or 'discover' (ask Lightsail "
            "GetRegions which exist today). Example: --regions discover"
        ),
    ] = None,
    db: DbOpt = DEFAULT_DB,
    parquet_dir: Annotated[
        str, typer.Option(help="Parquet lake: a folder or s3://bucket/prefix.")
    ] = DEFAULT_PARQUET,
    no_parquet: Annotated[
        bool, typer.Option("--no-parquet", help="Skip the Parquet export.")
    ] = False,
    concurrency: Annotated[
        int, typer.Option(help="Calls in flight at once, in all (workers share them).")
    ] = DEFAULTS.concurrency,
    rate: Annotated[
        float, typer.Option(help="API calls per second, in all (lowered while AWS throttles).")
    ] = DEFAULTS.rate,
    timeout: Annotated[float, typer.Option(help="Seconds for one API call.")] = DEFAULTS.timeout,
    max_attempts: Annotated[
        int, typer.Option(help="Attempts per call (retries + 1).")
    ] = DEFAULTS.max_attempts,
    target_deadline: Annotated[
        float | None,
        typer.Option(help="Seconds one account × region may take, retries included."),
    ] = None,
    run_deadline: Annotated[
        float | None,
        typer.Option(
            help="Seconds the whole collect may take; targets unfinished then fail with "
            "RunDeadline (the run is kept, partial). Default: the bound that follows from "
            "--timeout, --max-attempts, --concurrency and --rate for the run's targets.",
            show_default=False,
        ),
    ] = None,
    include_env_values: Annotated[
        bool,
        typer.Option(
            help="Store container environment VALUES and secret-looking command arguments "
            "(secrets!) in the DuckDB file. Default: fingerprints. The lake still gets "
            "fingerprints unless --export-env-values."
        ),
    ] = False,
    export_env_values: Annotated[
        bool,
        typer.Option(
            help="With --include-env-values: write the values to the Parquet lake too "
            "(local or S3). Default: the lake gets their fingerprints."
        ),
    ] = False,
    new_fingerprint_key: Annotated[
        bool,
        typer.Option(
            "--new-fingerprint-key",
            help="Accept a fingerprint key other than the one the store's runs used (or "
            "mint one when its file is lost); diff then skips env values across the change.",
        ),
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait for another collect on the same --db.")] = False,
    workers: Annotated[
        int,
        typer.Option(
            help="Processes sharing the accounts (more pay only when one process's CPU is "
            "the limit: see benchmarks/README.md). 0 = one per core (≥ 100 accounts each)."
        ),
    ] = DEFAULTS.workers,
    engine: Annotated[
        Engine,
        typer.Option(help="lean: signed aiohttp + json.loads; botocore: the aiobotocore client."),
    ] = Engine(DEFAULTS.engine),
    org: Annotated[
        bool | None,
        typer.Option(
            "--org/--no-org",
            help="Add the organization's ACTIVE accounts (Organizations ListAccounts); the "
            "accounts file gives role_name (default: its `org` setting). "
            "Example: inventory collect --config org.toml --org",
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            help="Logs on stderr: 'text' lines, or 'json' (one object per line, no progress "
            "bar). Example: inventory collect -c accounts.toml --log-format json 2>run.log",
        ),
    ] = LogFormat.text,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            help="The least severe log lines shown: debug, info (default), warning (what "
            "needs a human: failed targets, the rate stuck at its floor), error.",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="For cron: logs at warning and above, no progress bar, and nothing on "
            "stdout when every target was collected (exit 0).",
        ),
    ] = False,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also, per service: GetContainerServiceDeployments (deployment_history, "
            "deployment_history_containers) and GetContainerImages (container_images).",
        ),
    ] = False,
    usage: Annotated[
        bool,
        typer.Option(
            "--usage",
            help="Also: GetContainerServicePowers per region (container_powers) and, per "
            "service, hourly CPU and memory utilization (service_utilization). docs/cost.md",
        ),
    ] = False,
    usage_days: Annotated[
        int,
        typer.Option(
            "--usage-days",
            help=f"With --usage: days of utilization to read (1 to {MAX_USAGE_DAYS}).",
        ),
    ] = DEFAULTS.usage_days,
    max_answer_bytes: Annotated[
        int,
        typer.Option(
            "--max-answer-bytes",
            help="Bytes of one AWS answer read at most (64 KiB to 1 GiB); a larger answer "
            "fails its account × region with AnswerTooLarge, unread. Example: "
            "--max-answer-bytes 67108864",
        ),
    ] = DEFAULTS.max_answer_bytes,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="Collect shard K of N (K from 0): the accounts whose SHA-256 of the id mod N "
            "is K; needs --run-id. Example: --shard 0/4 --run-id 20261127T053650Z-3f9a1c",
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            "--shards",
            help="Like --shard K/N with K from AWS_BATCH_JOB_ARRAY_INDEX or "
            "JOB_COMPLETION_INDEX (array jobs); needs --run-id or --run-id-from-job.",
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            envvar="INVENTORY_RUN_ID",
            help="The run's id (YYYYMMDDTHHMMSSZ-suffix; its time is the run's started_at), "
            "shared by every shard. Default: a new one.",
        ),
    ] = None,
    run_id_from_job: Annotated[
        str | None,
        typer.Option(
            "--run-id-from-job",
            envvar="INVENTORY_JOB_NAME",
            help="Derive --run-id from a Kubernetes Job's name <cronjob>-<minutes since the "
            "epoch>: the scheduled time, then 6 hex digits of its SHA-256 (the same in every "
            "pod of the Job). Example: --run-id-from-job lightsail-inventory-29930520",
        ),
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Write the run's Prometheus metrics there (mode 0644, for node_exporter's "
            "textfile collector: docs/metrics.md). Example: --metrics-file "
            "/var/lib/node_exporter/textfile/lightsail_inventory.prom",
            show_default=False,
        ),
    ] = None,
    pushgateway: Annotated[
        str | None,
        typer.Option(
            "--pushgateway",
            help="Push the same metrics to this Prometheus Pushgateway (job "
            "lightsail_inventory, grouped by shard). Example: --pushgateway http://pgw:9091",
            show_default=False,
        ),
    ] = None,
    notify: Annotated[
        list[str] | None,
        typer.Option(
            "--notify",
            envvar="INVENTORY_NOTIFY",
            help="When the run ends, POST a JSON message to this http(s) URL (a Slack "
            "incoming webhook shows its text), or publish it to sns:TOPIC_ARN; repeatable, "
            "or space-separated in INVENTORY_NOTIFY (keeps a webhook's token out of process "
            "lists). docs/alerts.md",
            show_default=False,
        ),
    ] = None,
    summary_json: Annotated[
        Path | None,
        typer.Option(
            "--summary-json",
            help="Write the run's summary (the run_end event) to this file as one JSON object.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Collect every container service of every account and region into DuckDB and Parquet.

    Example: inventory collect --config accounts.toml --regions us-east-1,eu-west-2
    """
    from inventory import logs
    from inventory.plan import config as config_mod
    from inventory.plan import runid
    from inventory.publish.ends import publish
    from inventory.publish.targets import Publishing
    from inventory.run.builder import tune_gc_for_collect, tune_memory_for_collect
    from inventory.run.pipeline import run_collect, summary_of

    tune_gc_for_collect()
    tune_memory_for_collect()
    level = LogLevel.warning if quiet else log_level or LogLevel.info
    with logs.configured(log_format.value, level.level), _fatal_logged(log_format):
        if quiet and log_level is not None:
            raise UsageError(f"--quiet and --log-level {log_level.value}: give one or the other")
        options = Options(
            concurrency=concurrency,
            rate=rate,
            timeout=timeout,
            max_attempts=max_attempts,
            target_deadline=target_deadline,
            run_deadline=run_deadline,
            include_env_values=include_env_values,
            export_env_values=export_env_values,
            engine=engine.value,
            workers=workers,
            deep=deep,
            usage=usage,
            usage_days=usage_days,
            max_answer_bytes=max_answer_bytes,
        )
        run_id = runid.resolve_run_id(run_id, run_id_from_job)
        part = runid.resolve_shard(shard, shards, run_id, os.environ)
        plan = config_mod.load_plan(config, regions=regions, org=org, options=options)
        if no_parquet and parquet_dir != DEFAULT_PARQUET:
            raise UsageError(
                f"--parquet-dir {parquet_dir!r} and --no-parquet: give one or the other"
            )
        dest = None if no_parquet else parquet_dir
        where = Publishing.parse(metrics_file, pushgateway, notify, summary_json)
        # None: on a terminal only
        bar = False if log_format is LogFormat.json or quiet else None
        try:
            with render.ProgressView(bar) as progress:
                summary = asyncio.run(
                    run_collect(
                        plan,
                        db,
                        dest,
                        on_start=progress.start,
                        on_result=progress.advance,
                        wait_for_lock=wait,
                        run_id=run_id,
                        shard=part,
                        new_fingerprint_key=new_fingerprint_key,
                    )
                )
        except BaseException as exc:
            # a run recorded as failed (discovery refused, …) is published too, then ends
            # as it would have; one that never started (exit 2, a locked store) is not
            ended = summary_of(exc)
            if ended is not None:
                publish(ended, part, where)
            raise
        publish(summary, part, where)  # after the run is stored; never changes the exit
    if quiet and summary.exit_code == 0:
        raise typer.Exit(0)  # --quiet: nothing to say about a complete run
    if log_format is LogFormat.json:  # stdout is JSON too: the run_end event, one line
        sys.stdout.write(logs.summary_json(summary) + "\n")
        raise typer.Exit(summary.exit_code)
    out = render.console()
    out.print(render.summary_table(summary))
    render.print_failures(out, summary)
    raise typer.Exit(summary.exit_code)


@app.command()
@_errors_to_exit
def query(
    sql: Annotated[
        str | None, typer.Argument(help="SQL text, or the name of a named query.")
    ] = None,
    db: DbOpt = DEFAULT_DB,
    lake: LakeOpt = None,
    format: FmtOpt = Fmt.table,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="NAME=VALUE, bound as $NAME (repeatable)."),
    ] = None,
    list_: Annotated[
        bool,
        typer.Option(
            "--list", help="List the named queries, their parameters and what they answer."
        ),
    ] = False,
) -> None:
    """Ask the store a question in SQL, or run a named query from sql/queries/.

    Example: inventory query "select region, count(*) from latest_container_services group by 1"

    Example: inventory query services_in_account --param account=111111111111
    """
    from inventory.storage.store import Store

    if list_:
        if sql is not None or param:
            raise UsageError("--list takes no SQL, query name or --param")
        _print_rows(
            ["name", "params", "description"],
            list(queries.named_queries()),
            format,
            "named queries",
        )
        return
    if sql is None:
        raise UsageError("give SQL text or a query name (see: inventory query --list)")
    text, name = queries.resolve_sql(sql)
    queries.check_one_statement(text, name)
    values = queries.bind(text, name, queries.parse_params(param or []))
    # the SQL reads the store (or the lake) and the files a named query needs, nothing else
    allowed = queries.allowed_files(name, values)
    if lake is not None:
        from inventory.storage import lakequery

        con = lakequery.open_lake(lake)
        try:
            columns, rows = queries.run_sandboxed(con, text, values or None, allowed)
        finally:
            con.close()
    else:
        with Store.open(db, read_only=True) as store, store.connection() as con:
            columns, rows = queries.run_sandboxed(con, text, values or None, allowed, store.path)
    _print_rows(columns, rows, format, name)


def _print_rows(
    columns: list[str], rows: list[tuple[Any, ...]], fmt: Fmt, title: str | None
) -> None:
    if fmt is Fmt.table:
        render.print_wide(render.rows_table(columns, rows, title))
    else:
        sys.stdout.write(render.format_rows(columns, rows, fmt.value))
        if fmt is Fmt.json:
            sys.stdout.write("\n")


@app.command()
@_errors_to_exit
def runs(
    db: DbOpt = DEFAULT_DB,
    format: FmtOpt = Fmt.table,
) -> None:
    """List the stored runs, newest first.

    Example: inventory runs --db data/inventory.duckdb
    """
    from inventory.errors import StoreError
    from inventory.storage.store import Store

    # run_totals: one row per run (the shards of a sharded run together). scope: 'fleet' for
    # a run that (when whole and good) defines the fleet, 'one-off' for a narrowed one.
    compact = (
        "select run_id, status, strftime(started_at, '%Y-%m-%d %H:%M:%SZ') as started, "
        "round(epoch(finished_at) - epoch(started_at), 1) as seconds, accounts, "
        "targets_ok || '/' || targets as targets_ok, services, containers, api_calls, retries, "
        "CASE WHEN fleet_defining THEN 'fleet' ELSE 'one-off' END AS scope "
        "from run_totals order by started_at desc, run_id desc"
    )
    full = "select * from run_totals order by started_at desc, run_id desc"
    title = "runs"
    store = Store.open(db, read_only=True)
    try:
        _, has = store.query_rows(
            "select 1 from duckdb_columns() where table_name = 'run_totals' "
            "and column_name = 'fleet_defining'"
        )
        if not has:  # a store no writer of this version migrated: its runs count as fleet runs
            compact = compact.replace("fleet_defining", "true")
        columns, rows = store.query_rows(compact if format is Fmt.table else full)
        with contextlib.suppress(StoreError):  # a store no writer of this version migrated
            _, fleet = store.query_rows(
                "select (select count(*) from fleet), (select run_id from fleet_run)"
            )
            pairs, defined_by = fleet[0]
            if defined_by is not None:
                title = (
                    f"runs (current fleet: {pairs} account × region pairs, "
                    f"defined by run {defined_by})"
                )
    finally:
        store.close()
    _print_rows(columns, rows, format, title)


@app.command()
@_errors_to_exit
def export(
    run: Annotated[str, typer.Option("--run", help="The run id to export.")],
    to: Annotated[str, typer.Option("--to", help="A folder or s3://bucket/prefix.")],
    db: DbOpt = DEFAULT_DB,
    export_env_values: Annotated[
        bool,
        typer.Option(
            help="Write environment values and command arguments as stored (a run collected "
            "with --include-env-values holds values). Default: their fingerprints."
        ),
    ] = False,
) -> None:
    """Write one stored run to the Parquet lake (replacing that run's files there).

    Example: inventory export --run 20261127T053650Z-3f9a1c --to s3://lake/lightsail
    """
    from inventory.storage import lake
    from inventory.storage.store import Store

    store = Store.open(db, read_only=True)
    try:
        if store.run(run) is None:
            raise UsageError(f"--run {run!r}: no such run in {db} (see: inventory runs)")
        written = lake.export_run(store, run, to, env_values=export_env_values)
    finally:
        store.close()
    render.console().print(f"exported run {run}: {render.plural(len(written), 'file')} under {to}")


@app.command()
@_errors_to_exit
def demo(
    accounts: Annotated[int, typer.Option(help="Simulated accounts.")] = 25,
    db: DbOpt = Path("data/demo.duckdb"),
    parquet_dir: Annotated[
        str, typer.Option(help="Where the demo writes its Parquet lake.")
    ] = "data/demo-parquet",
    latency_ms: Annotated[float, typer.Option(help="Simulated API latency.")] = 30.0,
) -> None:
    """The whole pipeline against the bundled simulator: no AWS account needed.

    Example: inventory demo --accounts 25
    """
    from inventory import demo as demo_mod

    if not 1 <= accounts <= MAX_DEMO_ACCOUNTS:
        raise UsageError(f"--accounts {accounts}: must be from 1 to {MAX_DEMO_ACCOUNTS:,}")
    if not 0 <= latency_ms <= MAX_DEMO_LATENCY_MS:
        raise UsageError(f"--latency-ms {latency_ms:g}: must be from 0 to {MAX_DEMO_LATENCY_MS:,}")
    code = demo_mod.run(accounts=accounts, db=db, parquet_dir=parquet_dir, latency_ms=latency_ms)
    raise typer.Exit(code)


@app.command()
@_errors_to_exit
def rebuild(
    from_lake: Annotated[
        str, typer.Option("--from-lake", help="The Parquet lake: a folder or s3://bucket/prefix.")
    ],
    db: Annotated[Path, typer.Option("--db", help="The new DuckDB file (must not exist).")],
) -> None:
    """Make a new store from the Parquet lake: every run, every table, the views.

    Example: inventory rebuild --from-lake s3://lake/lightsail --db data/inventory.duckdb
    """
    from inventory.storage import rebuild as rebuild_mod

    done = rebuild_mod.rebuild(from_lake, db)
    rows = sum(n for t, n in done.rows.items() if t != "runs")
    render.console().print(
        f"rebuilt {db} from {from_lake}: {done.runs} run{'s' if done.runs != 1 else ''}, "
        f"{rows:,} rows",
        soft_wrap=True,
    )


@app.command("diff")
@_errors_to_exit
def diff_cmd(
    from_run: Annotated[
        str | None, typer.Option("--from", help="The older run (default: per account × region).")
    ] = None,
    to_run: Annotated[
        str | None, typer.Option("--to", help="The newer run (default: per account × region).")
    ] = None,
    db: DbOpt = DEFAULT_DB,
    lake: LakeOpt = None,
    format: FmtOpt = Fmt.table,
) -> None:
    """What changed: by default, for every account × region, between its two newest good scans.

    Example: inventory diff --from 20261126T053650Z-3f9a1c --to 20261127T053702Z-81c0de
    """
    from inventory.answers import diff as diff_mod

    if lake is not None:
        from inventory.storage import lakequery

        con = lakequery.open_lake(lake)
        try:
            result = diff_mod.diff(con, from_run, to_run)
        finally:
            con.close()
    else:
        from inventory.storage.store import Store

        with Store.open(db, read_only=True) as store, store.connection() as con:
            result = diff_mod.diff(con, from_run, to_run)
    if format is Fmt.json:
        import json

        sys.stdout.write(json.dumps(result.to_json(), indent=2, default=str) + "\n")
        return
    if format is Fmt.csv:  # the table's title says it; CSV has no title
        for note in result.notes():
            render.console(stderr=True).print(f"note: {escape(note)}", soft_wrap=True)
    columns, rows = result.rows()
    _print_rows(columns, rows, format, result.title())


@app.command()
@_errors_to_exit
def prune(
    ctx: typer.Context,
    keep_days: Annotated[
        int | None, typer.Option(help="Keep the runs of the last N days.", show_default=False)
    ] = None,
    keep_runs: Annotated[
        int | None, typer.Option(help="Keep the N newest runs.", show_default=False)
    ] = None,
    db: DbOpt = DEFAULT_DB,
    lake: Annotated[
        str | None,
        typer.Option(
            "--lake",
            help="Prune the Parquet lake (a folder or s3://bucket/...) instead of --db: "
            "whole runs' files, by the same rules.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only show what would be removed.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for a collect on the same --db.")] = False,
) -> None:
    """Remove old runs from the DuckDB file and give the space back (or, with --lake, their
    files from the lake). The newest good snapshot of every account × region of the current
    fleet is always kept, and the run that defines the fleet; pairs that left the fleet go by
    age.

    Example: inventory prune --keep-days 90

    Example: inventory prune --lake s3://lake/lightsail --keep-days 400 --dry-run
    """
    from inventory.storage import retention
    from inventory.storage.store import Store

    if (keep_days is None) == (keep_runs is None):
        raise UsageError("give one of --keep-days N or --keep-runs N")
    _one_source(ctx, db, lake)
    if lake is not None:
        result = retention.prune_lake(
            lake, keep_days=keep_days, keep_runs=keep_runs, dry_run=dry_run
        )
    else:
        with Store.open(db, wait=wait) as store:
            result = retention.prune(
                store, keep_days=keep_days, keep_runs=keep_runs, dry_run=dry_run
            )
    render.console().print(result.describe(), soft_wrap=True)
    if result.failed:
        raise typer.Exit(1)  # reported above; prune again to finish


@app.command()
@_errors_to_exit
def report(
    ctx: typer.Context,
    html: Annotated[
        str, typer.Option("--html", help="The HTML file to write ('-': standard output).")
    ],
    db: DbOpt = DEFAULT_DB,
    run: Annotated[
        str | None, typer.Option("--run", help="The run id (default: the newest finished run).")
    ] = None,
    lake: LakeOpt = None,
) -> None:
    """Write one self-contained HTML page about a run: totals, services by region and state,
    failures, and the findings of every named query that needs no parameter.

    Example: inventory report --html report.html --db data/inventory.duckdb

    Example: inventory report --html report.html --lake s3://lake/lightsail
    """
    from inventory.answers import report as report_mod

    if not html.strip():
        raise UsageError(f"--html {html!r}: give a file name, or - for standard output")
    _one_source(ctx, db, lake)
    if html == "-":
        result = report_mod.load(db, run_id=run, sql_dir=SQL_DIR, lake=lake)
        sys.stdout.write(result.html)
        sys.stdout.flush()
    else:
        result = report_mod.write(db, Path(html), run_id=run, sql_dir=SQL_DIR, lake=lake)
    ran = sum(1 for f in result.findings if f.ran)
    # with the page on stdout, the note goes to stderr
    render.console(stderr=html == "-").print(
        f"wrote {'the page to standard output' if html == '-' else html}: run {result.run_id} "
        f"({result.run.get('status')}), {render.plural(ran, 'named query', 'named queries')}, "
        f"{render.plural(result.errors_total, 'failure')}",
        soft_wrap=True,
    )


def _one_source(ctx: typer.Context, db: Path, lake: str | None) -> None:
    """--lake reads the lake instead of --db: both on the command line is a usage error."""
    source = ctx.get_parameter_source("db")
    if lake is not None and source is not None and source.name == "COMMANDLINE":
        raise UsageError(f"--db {db} and --lake {lake}: give one or the other")


@contextlib.contextmanager
def _fatal_logged(log_format: LogFormat) -> Iterator[None]:
    """With --log-format json, an error that stops the command is a JSON line too."""
    try:
        yield
    except InventoryError as exc:
        if log_format is not LogFormat.json:
            raise
        from inventory import logs

        logs.fatal(exc, exc.exit_code)
        raise typer.Exit(exc.exit_code) from None


@app.command()
@_errors_to_exit
def doctor(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Accounts file (TOML): a path, or s3://bucket/key.toml; none: your own account.",
        ),
    ] = None,
    sample: Annotated[
        int,
        typer.Option(min=0, help="Assume the role in the first N accounts (0: every account)."),
    ] = 3,
    regions: Annotated[
        str | None,
        typer.Option(help="Comma-separated regions, 'all' (default) or 'discover'."),
    ] = None,
    org: Annotated[
        bool | None,
        typer.Option("--org/--no-org", help="Check Organizations discovery too (as collect)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds for one API call.")] = 10.0,
    engine: Annotated[
        Engine,
        typer.Option(help="The engine to check, as collect's --engine (lean or botocore)."),
    ] = Engine(DEFAULTS.engine),
) -> None:
    """Check the setup: base credentials, the role in a sample of accounts, every region.

    Prints each check, then what is missing with the IAM policy snippet that fixes it.
    Exit status 0 when all is well, 1 when something is missing, 2 for a bad flag or file.

    Example: inventory doctor --config accounts.toml --sample 5 --regions discover
    """
    from inventory.answers import doctor as doctor_mod
    from inventory.plan import config as config_mod

    options = Options(timeout=timeout, max_attempts=3, engine=engine.value)
    plan = config_mod.load_plan(config, regions=regions, org=org, options=options)
    checked = asyncio.run(doctor_mod.diagnose(plan, sample=sample))
    sys.stdout.write(doctor_mod.render(checked))
    raise typer.Exit(0 if checked.ok else 1)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
@_errors_to_exit
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=version_callback, is_eager=True)
    ] = None,
) -> None:
    """Inventory of AWS Lightsail container services across accounts and regions."""
    private_umask()  # every file a command creates (DuckDB's too) is private: files.py


def main() -> None:
    app()
