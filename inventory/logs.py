"""Logs for a job that runs unattended: what ran, what failed, when AWS pushed back.

    with logs.configured("json"):        # or "text" (the default)
        ...                              # one line on stderr per event

Events (the `event` field of a JSON line; text lines carry the same message):

- `run_start`    run_id, accounts, regions, targets, workers, db, source, org
- `target_failed` run_id, account_id, region (null: every region of the account, e.g.
  AssumeRole), operation, error_code, attempts, error_message (AWS's)
- `anomaly`      the same fields: an answer stored, but with something odd in it
- `retry_storm`  AWS throttled and the collector halved its rate (pacing.Pacer): rate,
  previous_rate, max_rate, floor, decreases, throttles; `retry_storm_over` when the rate
  is back at its maximum
- `run_end`      run_id, status, exit_code and the run's counters
- `regions_discovered`, `org_discovered`, `discovery_failed` (discovery.py), `fatal` (cli.py)

A JSON line holds `ts` (UTC, ISO 8601), `level`, `logger`, `event`, `message` and the
event's fields. What is logged is chosen field by field: ids, names, counts, AWS error
codes and messages. Never credentials, never container environment values.

Loggers live under `inventory`; without `configured` they stay silent (a NullHandler),
also in the worker processes of `collect --workers`, whose events are not logged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from inventory.errors import UsageError

FORMATS = ("text", "json")
ROOT = "inventory"

log = logging.getLogger("inventory.run")
logging.getLogger(ROOT).addHandler(logging.NullHandler())


def event(logger: logging.Logger, level: int, name: str, text: str, /, **fields: Any) -> None:
    """Log `text` as event `name` with `fields` (JSON keys in json format; `ts`, `level`,
    `logger`, `event` and `message` are taken)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", text, extra={"event": name, "fields": fields})


def _ts(created: float) -> str:
    return (
        dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )  # fmt: skip


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or "message",
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                out.setdefault(str(key), value)
        return json.dumps(out, default=_plain, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`2026-11-27T05:36:50.123Z WARNING message`: for people reading a terminal or a mail."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{_ts(record.created)} {record.levelname:<7} {record.getMessage()}"


class _Stderr:
    """Whatever sys.stderr is when a line is written (pytest and rich swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--log-format {fmt!r}: must be one of {', '.join(FORMATS)}")
    return fmt


@contextlib.contextmanager
def configured(fmt: str = "text", level: int = logging.INFO) -> Iterator[logging.Handler]:
    """Send the `inventory` loggers to stderr in `fmt` ('text' | 'json') for this block."""
    check_format(fmt)
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger(ROOT)
    saved = (root.level, root.propagate)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]


# ---------------------------------------------------------------------------- run events


def run_start(
    run_id: str,
    *,
    accounts: int,
    regions: tuple[str, ...],
    targets: int,
    workers: int,
    db: str,
    source: str | None,
    org: bool,
    fleet_defining: bool = True,
) -> None:
    event(
        log,
        logging.INFO,
        "run_start",
        f"run {run_id} started: {accounts} accounts × {len(regions)} regions = {targets} "
        f"targets"
        + (f" ({workers} workers)" if workers > 1 else "")
        + ("" if fleet_defining else "; a one-off run (narrowed): it retires nothing"),
        run_id=run_id,
        accounts=accounts,
        regions=list(regions),
        targets=targets,
        workers=workers,
        db=db,
        source=source,
        org=org,
        fleet_defining=fleet_defining,
    )


def batch(run_id: str, tables: Mapping[str, pa.Table]) -> None:
    """One `target_failed` or `anomaly` line per `errors` row about to be stored.

    A row is a failed target when its account × region scanned 'failed' in the same batch
    (or its region is null: the account's AssumeRole failed); else it is an anomaly.
    """
    errors = tables.get("errors")
    if errors is None or not errors.num_rows or not log.isEnabledFor(logging.WARNING):
        return
    failed: set[tuple[str, str]] = set()
    scans = tables.get("scans")
    if scans is not None:
        for s in scans.select(["account_id", "region", "status"]).to_pylist():
            if s["status"] != "ok":
                failed.add((s["account_id"], s["region"]))
    columns = ["account_id", "region", "operation", "error_code", "attempts", "message"]
    for e in errors.select(columns).to_pylist():
        is_failure = e["region"] is None or (e["account_id"], e["region"]) in failed
        where = f"{e['account_id']} {e['region'] or '(every region)'}"
        n = e["attempts"]
        message = f"{e['operation']} {e['error_code']}" + (
            f" after {n} attempts" if n and n > 1 else ""
        )
        event(
            log,
            logging.WARNING,
            "target_failed" if is_failure else "anomaly",
            f"{'failed' if is_failure else 'anomaly'}: {where}: {message}",
            run_id=run_id,
            account_id=e["account_id"],
            region=e["region"],
            operation=e["operation"],
            error_code=e["error_code"],
            attempts=e["attempts"],
            error_message=e["message"],
        )


class StormWatch:
    """Notices when the collector's pacer (pacing.Pacer) lowered its rate because AWS
    throttled, and logs it: `retry_storm` on each decrease, `retry_storm_over` once the
    rate is back at its maximum. `check()` is cheap: call it as results arrive."""

    def __init__(self, pacer: Any, run_id: str | None = None):
        self.pacer = pacer
        self.run_id = run_id
        self._decreases = pacer.decreases
        self._rate = pacer.rate
        self._storm = False

    def check(self) -> None:
        p = self.pacer
        if p.decreases != self._decreases:
            self._decreases, previous, self._rate, self._storm = (
                p.decreases,
                self._rate,
                p.rate,
                True,
            )
            event(
                log,
                logging.WARNING,
                "retry_storm",
                f"AWS is throttling: rate lowered from {previous:.1f} to {p.rate:.1f} calls/s",
                run_id=self.run_id,
                rate=round(p.rate, 3),
                previous_rate=round(previous, 3),
                max_rate=p.max_rate,
                floor=p.floor,
                decreases=p.decreases,
                throttles=getattr(p, "throttles", None),
            )
        elif self._storm and p.rate >= p.max_rate:
            self._storm, self._rate = False, p.rate
            event(
                log,
                logging.INFO,
                "retry_storm_over",
                f"throttling over: rate back at {p.rate:.1f} calls/s",
                run_id=self.run_id,
                rate=p.rate,
                decreases=p.decreases,
            )
        else:
            self._rate = p.rate


def run_end(summary: Any) -> None:
    """The run's outcome and counters (a pipeline.RunSummary)."""
    t = summary.tally
    level = {"complete": logging.INFO, "partial": logging.WARNING}.get(
        summary.status, logging.ERROR
    )
    event(
        log,
        level,
        "run_end",
        f"run {summary.run_id} {summary.status}: {t.targets_ok}/{summary.targets} targets ok, "
        f"{t.targets_failed} failed, {t.services} services, {t.api_calls} API calls "
        f"({t.retries} retries) in {summary.wall_seconds:.1f} s",
        run_id=summary.run_id,
        status=summary.status,
        exit_code=summary.exit_code,
        accounts=summary.accounts,
        targets=summary.targets,
        targets_ok=t.targets_ok,
        targets_failed=t.targets_failed,
        services=t.services,
        deployments=t.deployments,
        containers=t.containers,
        anomalies=t.anomalies,
        api_calls=t.api_calls,
        retries=t.retries,
        wall_seconds=round(summary.wall_seconds, 3),
        workers=summary.workers,
        parquet_files=len(summary.parquet_files),
    )


def fatal(exc: BaseException, exit_code: int) -> None:
    """A command stopped with an error (its message names the problem, never a secret)."""
    event(
        logging.getLogger("inventory.cli"),
        logging.ERROR,
        "fatal",
        f"error: {exc}",
        error=type(exc).__name__,
        exit_code=exit_code,
    )
