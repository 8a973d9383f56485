"""Turning a run's results into rows: the RunBuilder (scans, errors and the flattened
inventory, taken in bounded batches of Arrow tables), the run's Tally, and `collect_into`,
which feeds a sink (the store in one process, the parent from a worker) as results arrive.
Used by the pipeline and by every worker process alike.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from inventory import logs
from inventory.model import Account, ErrorRecord, TargetResult
from inventory.run import deep, extra, usage
from inventory.run.collect import Collector
from inventory.storage import schema
from inventory.storage.fingerprint import Fingerprinter
from inventory.storage.flatten import Flattener, TargetContext

FLUSH_ROWS = 20_000  # inventory rows pending before a write
# collect --usage's datapoints (service_utilization rows) pending before a write: a few dozen
# bytes each (usage.Points, Arrow), while each write costs the store a connection and a
# checkpoint (tens of ms of CPU): at 20,000 a write, the writes were most of --usage's CPU.
FLUSH_USAGE_ROWS = 200_000


FLUSH_TARGETS = 2_000  # scans pending before a write


FLUSH_SECONDS = 5.0


MAX_FAILURES_KEPT = 1_000  # for the summary; every failure is in the errors table


@dataclass
class Tally:
    """What a run (or one worker's share of it) did. Tallies of workers add up."""

    targets_ok: int = 0
    targets_failed: int = 0
    anomalies: int = 0
    services: int = 0
    deployments: int = 0
    containers: int = 0
    api_calls: int = 0
    retries: int = 0
    throttled: int = 0  # throttled answers (pacing.Pacer.throttles)
    # the lowest rate (calls/s of the whole run) the pacer came down to; None: no pacer ran
    lowest_rate: float | None = None
    failures: list[ErrorRecord] = field(default_factory=list)  # the first MAX_FAILURES_KEPT
    # failed targets by (region, error code), exact (the failures list is capped)
    failed_by: dict[tuple[str, str], int] = field(default_factory=dict)

    def merge(self, other: Tally) -> None:
        for f in dataclasses.fields(self):
            if f.name not in ("failures", "failed_by", "lowest_rate"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        room = MAX_FAILURES_KEPT - len(self.failures)
        self.failures.extend(other.failures[: max(0, room)])
        for key, n in other.failed_by.items():
            self.failed_by[key] = self.failed_by.get(key, 0) + n
        rates = [r for r in (self.lowest_rate, other.lowest_rate) if r is not None]
        self.lowest_rate = min(rates, default=None)


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


def error_row(run_id: str, e: ErrorRecord) -> dict[str, Any]:
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


class RunBuilder:
    """Turns TargetResults into rows (scans, errors, inventory) and keeps the tally."""

    def __init__(self, run_id: str, flattener: Flattener):
        self.run_id = run_id
        self.flattener = flattener
        self.tally = Tally()
        self._scans: list[dict[str, Any]] = []
        self._errors: list[dict[str, Any]] = []
        self._failed_accounts: set[str] = set()
        self._last_take = time.monotonic()
        self._deep: deep.DeepFlattener | None = None  # collect --deep, from its first result
        self._usage: usage.UsageFlattener | None = None  # collect --usage, likewise

    def add(self, result: TargetResult) -> None:
        self._scans.append(_scan_row(self.run_id, result))
        errors = list(result.anomalies)
        if result.ok:
            self.tally.targets_ok += 1
            ctx = TargetContext.of(self.run_id, result)
            errors += [
                a.to_error(ctx, result.attempts) for a in self.flattener.add(ctx, result.services)
            ]
            if isinstance(result, deep.DeepResult):
                if self._deep is None:
                    self._deep = deep.DeepFlattener(self.flattener.fingerprint)
                errors += self._deep.add_result(self.run_id, result)
            if result.usage is not None:
                if self._usage is None:
                    self._usage = usage.UsageFlattener()
                errors += self._usage.add_result(self.run_id, result)
            self.tally.anomalies += len(errors)
        else:
            self.tally.targets_failed += 1
            err = result.error
            assert err is not None
            key = (result.region, err.error_code)
            self.tally.failed_by[key] = self.tally.failed_by.get(key, 0) + 1
            # An account whose role could not be assumed fails in every region: one error row.
            if err.operation != "AssumeRole" or result.account.id not in self._failed_accounts:
                errors.append(err)
                if len(self.tally.failures) < MAX_FAILURES_KEPT:
                    self.tally.failures.append(err)
            if err.operation == "AssumeRole":
                self._failed_accounts.add(result.account.id)
        self._errors.extend(error_row(self.run_id, e) for e in errors)

    def pending_rows(self) -> int:
        """Rows buffered since the last take, in every table but scans, errors and
        service_utilization (pending_usage_rows)."""
        usage = self._usage.rows["container_powers"] if self._usage is not None else 0
        return usage + sum(
            sum(f.rows.values()) for f in (self.flattener, self._deep) if f is not None
        )

    def pending_usage_rows(self) -> int:
        return self._usage.rows["service_utilization"] if self._usage is not None else 0

    def due(self) -> bool:
        return (
            self.pending_rows() >= FLUSH_ROWS
            or self.pending_usage_rows() >= FLUSH_USAGE_ROWS
            or len(self._scans) >= FLUSH_TARGETS
            or time.monotonic() - self._last_take >= FLUSH_SECONDS
        )

    def take(self) -> dict[str, pa.Table]:
        """The rows gathered since the last take, as Arrow tables (empty ones left out)."""
        tables: dict[str, pa.Table] = dict(self.flattener.take())
        self.tally.services += tables["container_services"].num_rows
        self.tally.deployments += tables["deployments"].num_rows
        self.tally.containers += tables["containers"].num_rows
        if self._deep is not None:
            tables.update(self._deep.take())
        if self._usage is not None:
            tables.update(self._usage.take())
        if self._scans:
            tables["scans"] = pa.Table.from_pylist(self._scans, schema=schema.SCANS)
        if self._errors:
            tables["errors"] = pa.Table.from_pylist(self._errors, schema=schema.ERRORS)
        self._scans, self._errors = [], []
        self._last_take = time.monotonic()
        return {name: t for name, t in tables.items() if t.num_rows}


def fingerprinter(key: bytes | None) -> Fingerprinter | None:
    """None (store values as they are) when there is no key: --include-env-values."""
    return None if key is None else Fingerprinter(key)


async def collect_into(
    builder: RunBuilder,
    collector: Collector,
    accounts: list[Account],
    sink: Callable[[dict[str, pa.Table]], Any],
    on_result: Callable[[bool], None] | None = None,
) -> None:
    """Run the collector over `accounts`, feeding `sink` with batches of tables."""
    storms = logs.StormWatch(collector.pacer, builder.run_id)
    hooks: list[extra.Hook] = []
    if collector.options.deep:
        hooks.append(deep.DeepFetcher(collector))
    if collector.options.usage:
        hooks.append(usage.UsageFetcher(collector))
    collector.after_collect = extra.chain(hooks)
    async for result in collector.results(accounts):
        builder.add(result)
        storms.check()
        if on_result:
            on_result(result.ok)
        if builder.due():
            await sink(builder.take())
    await sink(builder.take())
    builder.tally.api_calls = collector.counter.api_calls
    builder.tally.retries = collector.counter.retries
    builder.tally.throttled = collector.pacer.throttles
    builder.tally.lowest_rate = collector.pacer.min_rate


def tune_gc_for_collect() -> None:
    """For the collect process only (never library callers): the modules loaded so far are
    frozen out of the collector's sight and young collections run far less often (the
    fan-out makes many short-lived objects and few cycles; its effect on CPU per call is in
    benchmarks/README.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def tune_memory_for_collect() -> None:
    """For the collect process only: Arrow allocates from the system allocator, which gives
    what the run's batches and the Parquet export free back at once, where pyarrow's default
    (mimalloc) keeps it for reuse: 17 to 30 MB more at the peak of a collect of 10,000 dense
    accounts, for no difference in CPU (benchmarks/README.md)."""
    pa.set_memory_pool(pa.system_memory_pool())
