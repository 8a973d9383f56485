"""One run, end to end: plan -> collect (async) -> flatten -> store -> lake.

The collector streams results; they are flattened as they arrive and written to the
store in batches (Arrow tables, one transaction each), so memory holds at most one batch.
The run becomes visible only when `finish_run` marks it complete or partial.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from inventory import __version__, lake, schema
from inventory.collect import Collector
from inventory.fingerprint import Fingerprinter, load_key
from inventory.flatten import Flattener, TargetContext
from inventory.model import Account, ErrorRecord, Plan, TargetResult, utcnow
from inventory.store import Store

FLUSH_ROWS = 20_000  # inventory rows pending before a write
FLUSH_TARGETS = 2_000  # scans pending before a write
FLUSH_SECONDS = 5.0


def new_run_id(started: dt.datetime) -> str:
    """Sortable by time: the UTC start, then 6 random hex digits."""
    return started.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass
class RunSummary:
    run_id: str
    status: str  # complete | partial | failed
    started_at: dt.datetime
    finished_at: dt.datetime
    accounts: int = 0
    targets: int = 0
    targets_ok: int = 0
    targets_failed: int = 0
    services: int = 0
    deployments: int = 0
    containers: int = 0
    api_calls: int = 0
    retries: int = 0
    anomalies: int = 0
    db_path: str = ""
    parquet_dest: str | None = None
    parquet_files: list[str] = field(default_factory=list)
    failures: list[ErrorRecord] = field(default_factory=list)

    @property
    def wall_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def exit_code(self) -> int:
        return {"complete": 0, "partial": 3}.get(self.status, 1)


def _scan_row(run_id: str, r: TargetResult) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "account_id": r.account.id,
        "region": r.region,
        "status": "ok" if r.ok else "failed",
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "attempts": r.attempts,
        "services": len(r.services) if r.services is not None else None,
        "error_code": r.error.error_code if r.error else None,
    }


def _error_row(run_id: str, e: ErrorRecord) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "occurred_at": e.occurred_at,
        "account_id": e.account_id,
        "region": e.region,
        "operation": e.operation,
        "error_code": e.error_code,
        "message": e.message,
        "attempts": e.attempts,
    }


class _Writer:
    """Buffers flattened rows, scans and errors; writes them to the store in batches."""

    def __init__(self, store: Store, run_id: str, flattener: Flattener):
        self.store, self.run_id, self.flattener = store, run_id, flattener
        self.scans: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.totals = {name: 0 for name in schema.INVENTORY_TABLES}

    def due(self) -> bool:
        return (
            sum(self.flattener.rows.values()) >= FLUSH_ROWS
            or len(self.scans) >= FLUSH_TARGETS
            or time.monotonic() - self.last_flush >= FLUSH_SECONDS
        )

    async def flush(self) -> None:
        tables: dict[str, pa.Table] = dict(self.flattener.take())
        for name, table in tables.items():
            self.totals[name] += table.num_rows
        if self.scans:
            tables["scans"] = pa.Table.from_pylist(self.scans, schema=schema.SCANS)
        if self.errors:
            tables["errors"] = pa.Table.from_pylist(self.errors, schema=schema.ERRORS)
        self.scans, self.errors = [], []
        self.last_flush = time.monotonic()
        if any(t.num_rows for t in tables.values()):
            await asyncio.to_thread(self.store.append, self.run_id, tables)


async def run_collect(
    plan: Plan,
    db_path: Path,
    parquet_dest: str | None,
    *,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[TargetResult], None] | None = None,
    wait_for_lock: bool = False,
) -> RunSummary:
    """Collect `plan` into the store at `db_path` (and Parquet at `parquet_dest`)."""
    started = utcnow()
    run_id = new_run_id(started)
    summary = RunSummary(run_id, "failed", started, started, db_path=str(db_path))
    options = plan.options
    store = Store.open(db_path, wait=wait_for_lock)
    try:
        fingerprint = None if options.include_env_values else Fingerprinter(load_key(db_path))
        flattener = Flattener(fingerprint)
        writer = _Writer(store, run_id, flattener)
        async with Collector(options, plan.regions) as collector:
            accounts = list(plan.accounts)
            if plan.own_account:
                accounts = [Account(id=await collector.caller_account())]
            summary.accounts = len(accounts)
            summary.targets = len(accounts) * len(plan.regions)
            store.begin_run(run_id, started, summary.accounts, summary.targets, __version__)
            if on_start:
                on_start(summary.targets)
            failed_accounts: set[str] = set()
            async for result in collector.results(accounts):
                _account_result(result, run_id, writer, summary, failed_accounts)
                if on_result:
                    on_result(result)
                if writer.due():
                    await writer.flush()
            await writer.flush()
            summary.api_calls = collector.counter.api_calls
            summary.retries = collector.counter.retries
        summary.services = writer.totals["container_services"]
        summary.deployments = writer.totals["deployments"]
        summary.containers = writer.totals["containers"]
        if summary.targets_failed == 0:
            summary.status = "complete"
        elif summary.targets_ok > 0:
            summary.status = "partial"
        summary.finished_at = utcnow()
        store.finish_run(
            run_id,
            status=summary.status,
            finished_at=summary.finished_at,
            accounts=summary.accounts,
            targets=summary.targets,
            targets_ok=summary.targets_ok,
            targets_failed=summary.targets_failed,
            api_calls=summary.api_calls,
            retries=summary.retries,
            services=summary.services,
            deployments=summary.deployments,
            containers=summary.containers,
        )
        if parquet_dest:
            summary.parquet_dest = parquet_dest
            written = lake.export_run(store, run_id, parquet_dest)
            summary.parquet_files = [str(w) for w in written]
    finally:
        store.close()
    return summary


def _account_result(
    result: TargetResult,
    run_id: str,
    writer: _Writer,
    summary: RunSummary,
    failed_accounts: set[str],
) -> None:
    writer.scans.append(_scan_row(run_id, result))
    errors = list(result.anomalies)
    if result.ok:
        summary.targets_ok += 1
        ctx = TargetContext(
            run_id=run_id,
            collected_at=result.collected_at,
            account_id=result.account.id,
            account_name=result.account.name,
            region=result.region,
        )
        for a in writer.flattener.add(ctx, result.services or []):
            errors.append(
                ErrorRecord(
                    result.finished_at,
                    result.account.id,
                    result.region,
                    "GetContainerServices",
                    a.error_code,
                    a.message,
                    result.attempts,
                )
            )
    else:
        summary.targets_failed += 1
        err = result.error
        assert err is not None
        # An account whose role could not be assumed fails in every region: one error row.
        if err.operation != "AssumeRole" or result.account.id not in failed_accounts:
            errors.append(err)
            summary.failures.append(err)
        if err.operation == "AssumeRole":
            failed_accounts.add(result.account.id)
    if result.ok:
        summary.anomalies += len(errors)
    writer.errors.extend(_error_row(run_id, e) for e in errors)
