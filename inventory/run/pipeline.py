"""One run, end to end: plan -> collect (async) -> flatten -> store -> lake.

The collector streams results; a RunBuilder turns each into rows as it arrives (scans,
errors, the flattened inventory) and hands batches of Arrow tables to a sink: the store,
in one process, or the parent process, from a worker (workers.py). Memory holds at most
one batch. The run becomes visible only when `finish_run` marks it complete or partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import errno
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from inventory import __version__, logs, testhook
from inventory.aws.credentials import run_session_name
from inventory.errors import InventoryError, UsageError
from inventory.model import Account, ErrorRecord, Plan, utcnow
from inventory.plan import discovery
from inventory.plan.runid import Shard, new_run_id, run_started_at
from inventory.run.builder import (
    RunBuilder,
    Tally,
    collect_into,
    error_row,
    fingerprinter,
)
from inventory.run.collect import Collector, run_deadline
from inventory.storage import lake, lakequery, schema
from inventory.storage.fingerprint import (
    KEY_ENV,
    key_exists,
    key_id,
    key_path,
    load_key,
)
from inventory.storage.flatten import Flattener
from inventory.storage.store import Store

log = logging.getLogger("inventory.run.pipeline")


@dataclass
class RunSummary:
    run_id: str
    status: str  # complete | partial | failed
    started_at: dt.datetime
    finished_at: dt.datetime
    accounts: int = 0
    targets: int = 0
    tally: Tally = field(default_factory=Tally)
    workers: int = 1
    db_path: str = ""
    parquet_dest: str | None = None
    parquet_files: list[str] = field(default_factory=list)
    signal: int | None = None  # SIGINT / SIGTERM received during the run (see Interrupts)
    # the exit status of the exception that ended the run (see `ended_by`); None: it returned
    raised: int | None = None
    stopped_by: ErrorRecord | None = None  # and its errors row

    @property
    def wall_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def exit_code(self) -> int:
        if self.raised is not None:
            return self.raised
        if self.signal is not None:
            return 128 + self.signal  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
        return {"complete": 0, "partial": 3}.get(self.status, 1)


class Stoppable(Protocol):
    """A Collector, or the WorkerPool of a multi-process run."""

    def stop(self, reason: str = ...) -> None: ...


class Interrupts:
    """Ctrl-C (SIGINT) or SIGTERM during a run ends it cleanly (one process or workers).

    The collector stops: no new call starts, calls in flight are cancelled, and every
    unfinished target is recorded as failed with error code 'Interrupted' (scans and
    errors). What was collected is kept: the run is stored as 'partial' ('failed' when no
    target had finished, 'complete' when all had), exported to Parquet like any run, and
    the process exits 128 + the signal number (130, 143). A second signal acts as it would
    without this (the run is then left 'running', and the next collect marks it failed).
    Off the main thread (tests, embedding) nothing is installed.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, summary: RunSummary):
        self.summary = summary
        self.collector: Stoppable | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            try:
                loop.add_signal_handler(signum, self._received, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signals on this platform
            self._previous[signum] = previous

    def watch(self, collector: Stoppable) -> None:
        self.collector = collector
        if self.summary.signal is not None:
            collector.stop(signal.Signals(self.summary.signal).name)

    def _received(self, signum: int) -> None:
        self.uninstall()  # a second signal acts as usual
        if self.summary.signal is None:
            self.summary.signal = signum
            if self.collector is not None:
                self.collector.stop(signal.Signals(signum).name)

    def uninstall(self) -> None:
        if not self._previous:
            return
        loop = asyncio.get_running_loop()
        for signum, previous in self._previous.items():
            loop.remove_signal_handler(signum)
            if previous is not None:
                signal.signal(signum, previous)
        self._previous = {}


def warn_missing_external_id(run_id: str, accounts: list[Account]) -> None:
    """One warning per run when member roles are assumed without an ExternalId (the reader
    role's trust policy should require one: docs/iam.md)."""
    missing = [a.id for a in accounts if a.role_arn is not None and not a.external_id]
    if missing:
        logs.event(
            log,
            logging.WARNING,
            "no_external_id",
            f"no ExternalId configured for the member roles of {len(missing)} of "
            f"{len(accounts)} accounts (e.g. {missing[0]}): set external_id in the accounts "
            "file and require it in each reader role's trust policy (docs/iam.md)",
            run_id=run_id,
            accounts=len(missing),
        )


def record_failed_run(
    store: Store,
    run_id: str,
    started: dt.datetime,
    begun: bool,
    exc: BaseException,
    parquet_dest: str | None = None,
    record: ErrorRecord | None = None,
) -> None:
    """The one way a run that ended by an exception is recorded: 'failed' now, with an
    errors row saying why, rather than left 'running' until the next collect (best effort:
    the store may be what failed). A run that could not start (discovery.DiscoveryFailed:
    Organizations or GetRegions refused) gets its runs row with the calls it made, and goes
    to the lake too; any other keeps its scans and errors but no inventory rows, like an
    interrupted run. `record`: its errors row (default: `failure_record(exc)`)."""
    try:
        if not begun:
            store.begin_run(run_id, started, 0, 0, __version__)
        store.append(
            run_id,
            {
                "errors": pa.Table.from_pylist(
                    [error_row(run_id, record or failure_record(exc))], schema=schema.ERRORS
                )
            },
        )
        if not isinstance(exc, discovery.DiscoveryFailed):
            store.abandon_run(run_id)
            return
        store.finish_run(
            run_id,
            "failed",
            utcnow(),
            accounts=0,
            targets=0,
            targets_ok=0,
            targets_failed=0,
            api_calls=exc.api_calls,
            retries=exc.retries,
            services=0,
            deployments=0,
            containers=0,
        )
        exc.run_id = run_id  # its message names the run it was recorded as
        logs.event(
            log,
            logging.ERROR,
            "discovery_failed",
            f"run {run_id} could not start: {exc.operation} {exc.error_code}",
            run_id=run_id,
            operation=exc.operation,
            error_code=exc.error_code,
            attempts=exc.attempts,
            api_calls=exc.api_calls,
        )
        if parquet_dest:
            lake.export_run(store, run_id, parquet_dest)
    except Exception as again:
        log.warning("run %s could not be marked failed: %s", run_id, type(again).__name__)


def failure_record(exc: BaseException) -> ErrorRecord:
    """The errors row of the exception that ended a run (never a foreign exception's text:
    it may quote an answer)."""
    if isinstance(exc, discovery.DiscoveryFailed):
        return ErrorRecord(
            occurred_at=utcnow(),
            account_id=exc.account_id or "",
            region=None,
            operation=exc.operation,
            error_code=exc.error_code,
            message=f"{exc.detail.rstrip('.')}. {exc.fix}" if exc.detail else exc.fix,
            attempts=exc.attempts,
        )
    own = isinstance(exc, InventoryError)
    message = str(exc) if own else f"{type(exc).__name__} (its text is withheld; see the log)"
    return ErrorRecord(
        utcnow(),
        "",
        None,
        getattr(exc, "operation", "Collect"),
        getattr(exc, "error_code", type(exc).__name__),
        message,
        getattr(exc, "attempts", 0),
    )


def exit_status(exc: BaseException) -> int:
    """The exit status the CLI ends with for `exc` (cli._errors_to_exit; an exception it does
    not handle ends Python with 1, a KeyboardInterrupt with 128 + SIGINT)."""
    if isinstance(exc, InventoryError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return 1


def ended_by(summary: RunSummary, exc: BaseException, record: ErrorRecord, finished: bool) -> None:
    """Make `summary` the summary of a run that `exc` ended, and attach it to `exc` (see
    `summary_of`): the run was recorded (failed, unless it was finished before), so it is
    published like any run, with the failure first in its failures and the exit status
    the CLI will end with."""
    if not finished:
        summary.status = "failed"
    summary.finished_at = utcnow()
    summary.raised = exit_status(exc)
    summary.stopped_by = record
    summary.tally.failures.insert(0, record)
    if isinstance(exc, discovery.DiscoveryFailed):  # its calls are in the runs row too
        summary.tally.api_calls += exc.api_calls
        summary.tally.retries += exc.retries
    with contextlib.suppress(AttributeError):  # an exception without attributes: none
        setattr(exc, RUN_SUMMARY, summary)


RUN_SUMMARY = "run_summary"


def summary_of(exc: BaseException) -> RunSummary | None:
    """The summary `run_collect` attached to the exception that ended a recorded run; None
    when the run never started (a bad flag, a locked store, preflight: nothing recorded)."""
    found = getattr(exc, RUN_SUMMARY, None)
    return found if isinstance(found, RunSummary) else None


def preflight(
    store: Store,
    plan: Plan,
    parquet_dest: str | None,
    run_id: str | None,
    shard: Shard | None,
    new_fingerprint_key: bool = False,
) -> bytes | None:
    """Everything a run needs that can be checked before its first API call; a problem is a
    UsageError (exit 2) and nothing has been written. `store` is open as a writer already
    (healthy, writable, its lock held). Checks the run id (not in this store yet), the
    fingerprint key (see `fingerprint_key`), and that the Parquet destination takes a file.
    Returns the key (None: --include-env-values)."""
    if run_id is not None and store.run(run_id) is not None:
        part = f" (shard {shard})" if shard is not None else ""
        raise UsageError(
            f"--run-id {run_id}{part}: {store.path} already holds that run; give another "
            "--run-id (or collect this shard into its own --db)"
        )
    key = fingerprint_key(
        store, plan.options.include_env_values, new_fingerprint_key, lake_dest=parquet_dest
    )
    if parquet_dest:
        lake.check_writable(parquet_dest)
    return key


def previous_key_id(store: Store, lake_dest: str | None) -> tuple[str | None, str]:
    """(the key id of the newest fingerprinted run, where its runs are). The store's runs
    first; a store without one (new: a scheduled container's throw-away --db) defers to the
    lake the run writes to, whose runs (any shard) are then the history the key must match."""
    _, rows = store.query_rows(
        "SELECT fingerprint_key_id FROM runs WHERE fingerprint_key_id IS NOT NULL "
        "ORDER BY started_at DESC, run_id DESC LIMIT 1"
    )
    if rows:
        return rows[0][0], str(store.path)
    if lake_dest:
        found = lakequery.newest_key_id(lake_dest)
        if found is not None:
            return found, f"the lake {lake_dest}"
    return None, str(store.path)


def fingerprint_key(
    store: Store, env_values: bool, accept_new: bool = False, lake_dest: str | None = None
) -> bytes | None:
    """The key this run fingerprints with (None when it stores values), recorded in
    `store.env_mode`. Refused (UsageError) unless `accept_new`: minting a new key for a
    store (or, when the store has no fingerprinted run, a lake `lake_dest`) whose runs were
    fingerprinted (their key file lost or left behind), or a key whose id differs from the
    newest fingerprinted run's: every value would seem to change."""
    if env_values:
        store.env_mode = (None, True)
        return None
    before, where = previous_key_id(store, lake_dest)
    fix = (
        "pass --new-fingerprint-key to start a new key (diff then does not compare "
        "environment values across the change)"
    )
    path = key_path(store.path)
    if before is not None and not accept_new and not key_exists(store.path):
        raise UsageError(
            f"{path}: missing, but the runs in {where} were fingerprinted with key id "
            f"{before}; put that key file back (or set {KEY_ENV} to that key), or {fix}"
        )
    key = load_key(store.path)
    kid = key_id(key)
    if before is not None and kid != before and not accept_new:
        source = KEY_ENV if os.environ.get(KEY_ENV) is not None else str(path)
        raise UsageError(
            f"{source}: fingerprint key id {kid}, but the runs in {where} used key id "
            f"{before}; use that key again, or {fix}"
        )
    store.env_mode = (kid, False)
    return key


def export_failed(store: Store, summary: RunSummary, exc: Exception) -> None:
    """The Parquet export failed after the run was stored (a full disk, a bucket gone):
    the run stays in DuckDB, the failure becomes an errors row (operation 'ExportParquet')
    and a complete run becomes partial (exit 3), never 'nothing collected'. Best effort: a
    store that cannot take the row leaves the summary and the log to say it."""
    code = (
        errno.errorcode.get(exc.errno, "OSError")
        if isinstance(exc, OSError) and exc.errno
        else type(exc).__name__
    )
    message = f"Parquet export to {summary.parquet_dest} failed: {exc}; the run is in the "
    message += "database: write it again with `inventory export --run " + summary.run_id + "`"
    record = ErrorRecord(utcnow(), "", None, "ExportParquet", code, message, 1)
    summary.tally.failures.append(record)
    if summary.status == "complete":
        summary.status = "partial"
    log.error("run %s: %s", summary.run_id, message)
    try:
        errors = pa.Table.from_pylist([error_row(summary.run_id, record)], schema=schema.ERRORS)
        store.record_late_failure(summary.run_id, errors)
    except Exception as again:
        log.warning(
            "run %s: the export failure could not be stored: %s",
            summary.run_id,
            type(again).__name__,
        )


def default_workers(accounts: int) -> int:
    """One process per core, but only when there is enough work to share (≥ 100 accounts each)."""
    return max(1, min(os.cpu_count() or 1, accounts // 100))


async def run_collect(
    plan: Plan,
    db_path: Path | str,
    parquet_dest: str | None,
    *,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[bool], None] | None = None,
    wait_for_lock: bool = False,
    run_id: str | None = None,
    shard: Shard | None = None,
    new_fingerprint_key: bool = False,
) -> RunSummary:
    """Collect `plan` into the store at `db_path` (and Parquet at `parquet_dest`).

    `run_id`: the run's id (runid.check_run_id); its timestamp is the run's started_at.
    Default: a new one, now. `shard`: collect only that shard's accounts (runid.Shard), as
    one part of run `run_id` that other processes collect the other shards of: the runs row
    records the shard, and the Parquet files are `<run_id>.shard-K.parquet`.

    Before the first API call: the store is opened (refused when damaged, foreign or locked)
    and `preflight` checks the rest; a problem there raises UsageError (exit 2) with nothing
    written. An export that fails after collecting makes the run partial (`export_failed`)."""
    db_path = Path(db_path)
    if shard is not None and plan.own_account:
        raise UsageError(
            f"--shard {shard}: sharding splits the accounts of an accounts file (or an "
            "organization); without --config there is only your own account"
        )
    now = utcnow()
    # `started`: the run's started_at in the store and the lake (its run_date partition);
    # a given run id's own time, so that every shard of the run agrees on it. The summary
    # (wall time) counts from when this process started.
    started = now if run_id is None else run_started_at(run_id)
    run_id_given = run_id
    run_id = run_id or new_run_id(started)
    summary = RunSummary(run_id, "failed", now, now, db_path=str(db_path))
    # The role session name carries the run id (CloudTrail in member accounts tells runs apart).
    options = dataclasses.replace(
        plan.options, session_name=run_session_name(plan.options.session_name, run_id)
    )
    plan = dataclasses.replace(plan, options=options)
    store = Store.open(db_path, wait=wait_for_lock)
    store.shard = None if shard is None else (shard.index, shard.count)
    try:
        key = preflight(store, plan, parquet_dest, run_id_given, shard, new_fingerprint_key)
    except BaseException:
        store.close()
        raise
    testhook.pause_at("store-opened")
    interrupts = Interrupts(summary)
    failure_log = logs.FailureLog(run_id)
    begun = finished = False
    try:
        found = await discovery.resolve(plan)  # Organizations accounts, GetRegions
        plan = found.plan
        if shard is not None:  # after discovery: Organizations accounts are sharded too
            plan = dataclasses.replace(plan, accounts=shard.select(plan.accounts))

        async def to_store(tables: dict[str, pa.Table]) -> None:
            if tables:
                failure_log.batch(tables)
                await asyncio.to_thread(store.append, run_id, tables)
                testhook.pause_at("batch-appended")

        def begin(accounts: list[Account], workers: int) -> None:
            nonlocal begun
            summary.accounts, summary.workers = len(accounts), workers
            summary.targets = len(accounts) * len(plan.regions)
            store.begin_run(
                run_id,
                started,
                summary.accounts,
                summary.targets,
                __version__,
                fleet_defining=plan.fleet_defining,
            )
            begun = True
            testhook.pause_at("run-begun")
            logs.run_start(
                run_id,
                accounts=summary.accounts,
                regions=plan.regions,
                targets=summary.targets,
                workers=workers,
                db=str(db_path),
                source=plan.source,
                org=plan.org is not None,
                run_deadline=run_deadline(plan.options, summary.targets),
                fleet_defining=plan.fleet_defining,
            )
            warn_missing_external_id(run_id, accounts)
            if on_start:
                on_start(summary.targets)

        accounts = list(plan.accounts)
        workers = 1 if plan.own_account else options.workers or default_workers(len(accounts))
        workers = max(1, min(workers, len(accounts)))
        if workers == 1:
            interrupts.install()
            async with Collector(options, plan.regions) as collector:
                interrupts.watch(collector)
                if plan.own_account:
                    accounts = [Account(id=await collector.caller_account())]
                begin(accounts, 1)
                builder = RunBuilder(run_id, Flattener(fingerprinter(key)))
                await collect_into(builder, collector, accounts, to_store, on_result)
                summary.tally = builder.tally
        else:
            from inventory.run import workers as workers_mod

            # every worker stops at the whole run's deadline, not one of its own share
            limit = run_deadline(plan.options, len(accounts) * len(plan.regions))
            plan = dataclasses.replace(
                plan, options=dataclasses.replace(plan.options, run_deadline=limit)
            )
            begin(accounts, workers)
            pool = workers_mod.WorkerPool(plan, accounts, run_id, key, workers)
            interrupts.install()
            interrupts.watch(pool)
            summary.tally = await pool.run(to_store, on_result)
        tally = summary.tally
        tally.api_calls += found.api_calls  # Organizations / GetRegions calls
        tally.retries += found.retries
        if tally.targets_failed == 0:
            summary.status = "complete"
        elif tally.targets_ok > 0:
            summary.status = "partial"
        summary.finished_at = utcnow()
        store.finish_run(
            run_id,
            status=summary.status,
            finished_at=summary.finished_at,
            accounts=summary.accounts,
            targets=summary.targets,
            targets_ok=tally.targets_ok,
            targets_failed=tally.targets_failed,
            api_calls=tally.api_calls,
            retries=tally.retries,
            services=tally.services,
            deployments=tally.deployments,
            containers=tally.containers,
        )
        finished = True
        testhook.pause_at("run-finished")
        if parquet_dest:
            summary.parquet_dest = parquet_dest
            try:
                written = lake.export_run(
                    store, run_id, parquet_dest, env_values=options.export_env_values
                )
                summary.parquet_files = [str(w) for w in written]
            except Exception as exc:
                export_failed(store, summary, exc)
    except BaseException as exc:
        record = failure_record(exc)
        if not finished:
            record_failed_run(store, run_id, started, begun, exc, parquet_dest, record)
        ended_by(summary, exc, record, finished)
        raise
    finally:
        interrupts.uninstall()
        store.close()
        failure_log.flush()  # the stopped targets, grouped
    logs.run_end(summary)
    return summary
