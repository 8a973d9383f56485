"""Logs for a job that runs unattended: what ran, what failed, when AWS pushed back.

    with logs.configured("json"):        # or "text" (the default)
        ...                              # one line on stderr per event

Events (the `event` field of a JSON line; text lines carry the same message):

- `run_start`    run_id, accounts, regions, targets, workers, db, source, org, run_deadline
  (seconds: unfinished targets then end 'RunDeadline')
- `target_failed` run_id, account_id, region (null: every region of the account, e.g.
  AssumeRole), operation, error_code, attempts, error_message (AWS's)
- `anomaly`      the same fields: an answer stored, but with something odd in it
- `retry_storm`  AWS throttled and the collector lowered its rate (pacing.Pacer): rate (the
  lowest since the last line), previous_rate, max_rate, floor, at_floor, decreases,
  throttles; INFO (the pacer absorbs it), WARNING when the rate reached its floor;
  `retry_storm_over` when the rate is back at its maximum
- `targets_stopped` run_id, region, operation, error_code ('Interrupted' | 'RunDeadline'),
  count, accounts (a few examples), error_message: the targets a stop (Ctrl-C, SIGTERM, the
  run deadline) left unfinished, one line per (region, error code), at the run's end
- `run_end`      run_id, status, exit_code, the run's counters, and `failures`: the failures
  grouped by (region, operation, error_code) with count, example accounts and a message
- `regions_discovered`, `org_discovered`, `discovery_failed` (plan/discovery.py), `fatal` (cli.py)
- `metrics_failed`, `notify_failed`, `summary_failed`, `changes_failed` (inventory/publish:
  what a run publishes when it ends could not be written or sent): run_id, target (a URL
  only as scheme and host), reason, and for network sends attempt, tries, final

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
from inventory.model import ErrorRecord, group_failures, utcnow
from inventory.terminal import plural, visible

FORMATS = ("text", "json")
ROOT = "inventory"

log = logging.getLogger("inventory.run")
logging.getLogger(ROOT).addHandler(logging.NullHandler())


def event(logger: logging.Logger, level: int, name: str, text: str, /, **fields: Any) -> None:
    """Log `text` as event `name` with `fields` (JSON keys in json format; `ts`, `level`,
    `logger`, `event` and `message` are taken)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", text, extra={"event": name, "fields": fields})


def _iso_millis(created: float) -> str:
    """A log record's time as ISO 8601 UTC with milliseconds (`…T05:36:50.123Z`)."""
    return (
        dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )  # fmt: skip


def _json_default(value: Any) -> Any:
    """What json.dumps writes for a value it cannot: a UTC ISO time, a list, else str()."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso_millis(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or "message",
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                out.setdefault(str(key), value)
        return json.dumps(out, default=_json_default, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`2026-11-27T05:36:50.123Z WARNING message`: for people reading a terminal or a mail."""

    def format(self, record: logging.LogRecord) -> str:
        # one line, AWS's text included: control characters shown, never obeyed
        return f"{_iso_millis(record.created)} {record.levelname:<7} {visible(record.getMessage())}"


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
    run_deadline: float | None = None,
    fleet_defining: bool = True,
) -> None:
    event(
        log,
        logging.INFO,
        "run_start",
        f"run {run_id} started: {plural(accounts, 'account')} × "
        f"{plural(len(regions), 'region')} = {plural(targets, 'target')}"
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
        run_deadline=None if run_deadline is None else round(run_deadline, 1),
        fleet_defining=fleet_defining,
    )


STOPPED = ("Interrupted", "RunDeadline")  # collect.INTERRUPTED, collect.RUN_DEADLINE


class FailureLog:
    """Logs the `errors` rows of a run as they are stored (`batch`): one `target_failed`
    or `anomaly` line per row, except the targets a stop left unfinished (Ctrl-C,
    SIGTERM, the run deadline: error codes in STOPPED), which can be thousands at once:
    those are counted, and `flush()` logs one `targets_stopped` line per (region, error
    code) with the count and a few example accounts.

    A row is a failed target when its account × region scanned 'failed' in the same batch
    (or its region is null: the account's AssumeRole failed); else it is an anomaly.
    """

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._stopped: list[ErrorRecord] = []

    def batch(self, tables: Mapping[str, pa.Table]) -> None:
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
            if e["error_code"] in STOPPED:
                self._stopped.append(
                    ErrorRecord(
                        utcnow(),
                        e["account_id"],
                        e["region"],
                        e["operation"],
                        e["error_code"],
                        e["message"],
                        e["attempts"],
                    )
                )
                continue
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
                run_id=self.run_id,
                account_id=e["account_id"],
                region=e["region"],
                operation=e["operation"],
                error_code=e["error_code"],
                attempts=e["attempts"],
                error_message=e["message"],
            )

    def flush(self) -> None:
        """One `targets_stopped` line per (region, error code) of the stopped targets."""
        stopped, self._stopped = self._stopped, []
        for g in group_failures(stopped):
            more = g.count - len(g.accounts)
            example = ", ".join(g.accounts) + (f" and {more} more" if more else "")
            event(
                log,
                logging.WARNING,
                "targets_stopped",
                f"stopped: {plural(g.count, 'target')} in "
                f"{g.region or '(every region)'}: {g.error_code} ({example})",
                run_id=self.run_id,
                region=g.region,
                operation=g.operation,
                error_code=g.error_code,
                count=g.count,
                accounts=g.accounts,
                error_message=g.message,
            )


class StormWatch:
    """Notices when the collector's pacer (pacing.Pacer) lowered its rate because AWS
    throttled, and logs it: `retry_storm` for the decreases since the last check (INFO:
    routine, the pacer absorbs it; WARNING once a storm has pushed the rate to its floor,
    where the run can only slow down and a human may want to look), and `retry_storm_over`
    (INFO) once the rate is back at its maximum. The message names the rate before and the
    lowest after, which always differ (at the floor it says so instead). `check()` is
    cheap: call it as results arrive."""

    def __init__(self, pacer: Any, run_id: str | None = None):
        self.pacer = pacer
        self.run_id = run_id
        self._decreases = pacer.decreases
        self._storm = False
        self._floor_warned = False

    def check(self) -> None:
        p = self.pacer
        if p.decreases != self._decreases:
            self._decreases, self._storm = p.decreases, True
            previous, low = p.take_drop() or (p.rate, p.rate)
            at_floor = low <= p.floor
            if at_floor and previous <= p.floor:
                text = f"AWS is throttling: rate held at its floor of {p.floor:.1f} calls/s"
            else:
                text = f"AWS is throttling: rate lowered from {previous:.1f} to {low:.1f} calls/s"
                if at_floor:
                    text += " (its floor: the run slows down as AWS asks)"
            warn = at_floor and not self._floor_warned
            self._floor_warned = self._floor_warned or at_floor
            event(
                log,
                logging.WARNING if warn else logging.INFO,
                "retry_storm",
                text,
                run_id=self.run_id,
                rate=round(low, 3),
                previous_rate=round(previous, 3),
                max_rate=p.max_rate,
                floor=p.floor,
                at_floor=at_floor,
                decreases=p.decreases,
                throttles=getattr(p, "throttles", None),
            )
        elif self._storm and p.rate >= p.max_rate:
            self._storm = self._floor_warned = False
            event(
                log,
                logging.INFO,
                "retry_storm_over",
                f"throttling over: rate back at {p.rate:.1f} calls/s",
                run_id=self.run_id,
                rate=p.rate,
                decreases=p.decreases,
            )


def _run_end(summary: Any) -> tuple[int, str, dict[str, Any]]:
    """The `run_end` event of a pipeline.RunSummary: (level, message, fields)."""
    t = summary.tally
    level = {"complete": logging.INFO, "partial": logging.WARNING}.get(
        summary.status, logging.ERROR
    )
    text = (
        f"run {summary.run_id} {summary.status}: {t.targets_ok}/{summary.targets} targets ok, "
        f"{t.targets_failed} failed, {plural(t.services, 'service')}, "
        f"{plural(t.api_calls, 'API call')} ({plural(t.retries, 'retry', 'retries')}) "
        f"in {summary.wall_seconds:.1f} s"
    )
    fields = dict(
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
        # by (region, operation, error code), biggest first; every error is in `errors`
        failures=[g.to_json() for g in group_failures(t.failures)[:MAX_FAILURE_GROUPS]],
    )
    return level, text, fields


MAX_FAILURE_GROUPS = 50  # in run_end; the errors table has every one


def run_end(summary: Any) -> None:
    """The run's outcome and counters (a pipeline.RunSummary)."""
    level, text, fields = _run_end(summary)
    event(log, level, "run_end", text, **fields)


def summary_json(summary: Any) -> str:
    """The run's summary as one JSON line: the `run_end` event exactly as the json log
    format writes it (for stdout with --log-format json, so both streams parse)."""
    level, text, fields = _run_end(summary)
    record = log.makeRecord(
        log.name, level, __file__, 0, "%s", (text,), None,
        extra={"event": "run_end", "fields": fields},
    )  # fmt: skip
    return JsonFormatter().format(record)


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
