"""`collect --usage`: what the powers cost, and how much of them the services use.

For every account × region whose GetContainerServices succeeded, the collector also calls
(docs/cost.md):

- `GetContainerServicePowers`, once per region and run (per process: per shard, per
  worker), with the credentials of the first account that reaches the region (prices do not
  depend on the account; when the call fails, the next account to reach the region tries,
  POWERS_TRIES accounts at most) -> table `container_powers`;
- `GetContainerServiceMetricData` per service and metric (CPUUtilization,
  MemoryUtilization): hourly (`period` 3600) Average and Maximum over the window
  [end - usage_days, end), end being the collect's start floored to the hour (the same
  window for every service of the run's process) -> table `service_utilization`. A DISABLED
  service runs nothing and is not asked: one row per metric with status 'disabled'. A
  service and metric without datapoints: one row 'no_datapoints'. A failed call: one
  `errors` row (operation GetContainerServiceMetricData) and one row 'failed'.

The calls take the --deep path (extra.ExtraCalls): same pacing, retries, credentials,
counters and stop (with the lean engine, through lean_metrics.py rather than aiobotocore); the
usage calls of one target share one deadline of the target's length; a refusal
(AccessDenied) of the metric call ends it for the account × region (one errors row counts
the services skipped, each of which still gets its 'failed' rows).

A metric answer is 336 datapoints at 14 days: a well-formed one is read a column at a time
(fast_points) and kept as Arrow columns from its call to the store; anything irregular is
read value by value (UsageFlattener.checked_points), each problem an errors row.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from inventory.aws.lean import USER_AGENT
from inventory.aws.lean_metrics import LeanUsageClient
from inventory.aws.retry import Deadline
from inventory.model import Account, ErrorRecord, TargetResult, utcnow
from inventory.run.collect import Collector, raw_answer
from inventory.run.extra import ExtraCalls, ExtraFailed, service_identities
from inventory.storage import schema
from inventory.storage.flatten import Anomaly, Check, epoch_micros, known_enums

POWERS = "GetContainerServicePowers"
METRIC_DATA = "GetContainerServiceMetricData"
OPERATIONS = (POWERS, METRIC_DATA)
RAW_METRIC_DATA_EVENT = f"before-parse.lightsail.{METRIC_DATA}"
METRICS = ("CPUUtilization", "MemoryUtilization")
STATISTICS = ["Average", "Maximum"]
PERIOD_S = 3600  # hourly datapoints (the API allows 60..86400 seconds)
POWERS_TRIES = 3  # accounts that may try a region's GetContainerServicePowers in one run
OK, NO_DATAPOINTS, DISABLED, FAILED = "ok", "no_datapoints", "disabled", "failed"


@dataclass(slots=True)
class MetricAnswer:
    """One service × metric: its answer, or why there is none (status)."""

    service_name: str
    service_arn: str
    metric: str
    status: str  # OK (answer to flatten) | DISABLED | FAILED
    answer: Any  # the answer as json.loads read it, or its Points (compact())
    collected_at: dt.datetime
    attempts: int


@dataclass(slots=True)
class UsageAnswers:
    """What --usage got for one target (`TargetResult.usage`)."""

    window: tuple[dt.datetime, dt.datetime]
    powers: Any = None  # GetContainerServicePowers' answer, when this target asked it
    powers_at: dt.datetime | None = None
    powers_attempts: int = 0
    metrics: list[MetricAnswer] = field(default_factory=list)


def usage_window(days: int, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[end - days, end), end being `now` floored to the hour (whole hourly periods)."""
    end = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return end - dt.timedelta(days=days), end


def lean_usage_clients(collector: Collector) -> dict[str, LeanUsageClient]:
    """Per region, the usage calls on the lean path when the collector runs the lean engine
    (lean_metrics.py: a millisecond of CPU less per call); else none (aiobotocore's)."""
    http = collector.lean_http
    if http is None:
        return {}
    return {
        region: LeanUsageClient(http, region, client.meta.endpoint_url, USER_AGENT)
        for region, client in collector.botocore_clients.items()
    }


def _disabled(svc: Mapping[str, Any]) -> bool:
    return svc.get("state") == "DISABLED" or svc.get("isDisabled") is True


class UsageFetcher:
    """`Collector.after_collect` for --usage: the powers of the region (once) and the
    metric data of each service of a result."""

    def __init__(self, collector: Collector, now: dt.datetime | None = None):
        self.calls = ExtraCalls(collector, "usage calls")
        # An answer holds 24 datapoints a day: botocore's parser would cost ten times what
        # json.loads does (a datetime per timestamp); the flattener reads either.
        for client in collector.botocore_clients.values():
            client.meta.events.register(RAW_METRIC_DATA_EVENT, raw_answer)
        self._lean = lean_usage_clients(collector)
        self.window = usage_window(collector.options.usage_days, now or utcnow())
        self._powers: dict[str, int | bool] = {}  # region -> True (got) | accounts tried

    async def __call__(self, result: TargetResult) -> TargetResult:
        usage = UsageAnswers(self.window)
        result.usage = usage
        deadline = self.calls.deadline()
        failed: list[ExtraFailed] = []
        if self._powers.get(result.region) is not True:
            failed += await self._get_powers(result.account, result.region, usage, deadline)
        services = service_identities(result.services or [])
        stopped: ExtraFailed | None = None
        for name, arn, svc in services:
            for metric in METRICS:
                if _disabled(svc):
                    usage.metrics.append(
                        MetricAnswer(name, arn, metric, DISABLED, None, utcnow(), 0)
                    )
                    continue
                if stopped is not None:  # counted once per service not called at all
                    stopped.skipped += metric == METRICS[0]
                    usage.metrics.append(MetricAnswer(name, arn, metric, FAILED, None, utcnow(), 0))
                    continue
                got = await self.calls.call(
                    result.account,
                    result.region,
                    METRIC_DATA,
                    "get_container_service_metric_data",
                    self._params(name, metric),
                    deadline,
                    name,
                    self._lean.get(result.region),
                )
                if isinstance(got, ExtraFailed):
                    failed.append(got)
                    stopped = got if got.ends_operation(deadline) else None
                    usage.metrics.append(
                        MetricAnswer(name, arn, metric, FAILED, None, utcnow(), got.attempts)
                    )
                    continue
                answer, tries = got
                usage.metrics.append(
                    MetricAnswer(name, arn, metric, OK, compact(answer), utcnow(), tries)
                )
        result.anomalies.extend(
            f.error(result.account.id, result.region, len(services)) for f in failed
        )
        return result

    def _params(self, name: str, metric: str) -> dict[str, Any]:
        start, end = self.window
        return {
            "serviceName": name,
            "metricName": metric,
            "startTime": start,
            "endTime": end,
            "period": PERIOD_S,
            "statistics": STATISTICS,
        }

    async def _get_powers(
        self, account: Account, region: str, usage: UsageAnswers, deadline: Deadline
    ) -> list[ExtraFailed]:
        """The region's powers with this account's credentials, unless another target has
        them, is asking them right now (True/in flight) or POWERS_TRIES accounts failed."""
        tried = self._powers.get(region, 0)
        if tried is True or tried >= POWERS_TRIES:
            return []
        self._powers[region] = True  # in flight: the others do not ask too
        got = await self.calls.call(
            account,
            region,
            POWERS,
            "get_container_service_powers",
            {},
            deadline,
            client=self._lean.get(region),
        )
        if isinstance(got, ExtraFailed):
            self._powers[region] = int(tried) + 1
            return [got]
        usage.powers, usage.powers_attempts = got
        usage.powers_at = utcnow()
        return []


# --------------------------------------------------------------------------- flattening


class Points:
    """One metric answer's datapoints, checked, as Arrow columns in service_utilization's
    types: what a well-formed answer is kept as from its call to the store (8 bytes a value
    instead of a dict of Python objects per datapoint: about 11 KB an answer against 105)."""

    __slots__ = ("average", "maximum", "period_start", "unit")

    def __init__(
        self, period_start: list[Any], average: list[Any], maximum: list[Any], unit: list[Any]
    ) -> None:
        self.period_start = pa.array(period_start, _TYPES["period_start"])
        self.average = pa.array(average, _TYPES["average"])
        self.maximum = pa.array(maximum, _TYPES["maximum"])
        self.unit = pa.array(unit, _TYPES["unit"])

    def __len__(self) -> int:
        return len(self.period_start)

    def column(self, name: str) -> pa.Array:
        return getattr(self, name)


_TYPES = {f.name: f.type for f in schema.SERVICE_UTILIZATION}
POINT_COLUMNS = ("period_start", "average", "maximum", "unit")
# The columns with one value per answer, in the order of UsageFlattener.add_metric's keys.
ANSWER_COLUMNS = (
    "run_id",
    "account_id",
    "region",
    "service_name",
    "service_arn",
    "metric",
    "status",
    "window_start",
    "window_end",
    "period_seconds",
    "collected_at",
)
assert sorted(ANSWER_COLUMNS + POINT_COLUMNS) == sorted(schema.SERVICE_UTILIZATION.names)
_NUMBER_TYPES = frozenset({int, float, type(None)})
# The timestamps a datetime holds, in epoch seconds (as Check.ts bounds them).
_MIN_S = int(dt.datetime.min.replace(tzinfo=dt.UTC).timestamp())
_MAX_S = int(dt.datetime.max.replace(microsecond=0, tzinfo=dt.UTC).timestamp())
_STRING_TYPES = frozenset({str, type(None)})


def compact(answer: object) -> object:
    """`answer`'s Points when it is well-formed, else `answer` itself (the flattener then
    checks it value by value and records each problem)."""
    points = fast_points(answer)
    return answer if points is None else points


def fast_points(answer: object) -> Points | None:
    """The datapoints of a well-formed answer, checked a column at a time (the set of types
    in a column, its range, the sum of its numbers) instead of a value at a time; the same
    values the checked path (`UsageFlattener.add_metric`) gives. None at the first
    irregularity of any kind: a datapoint not an object or without its timestamp, a value of
    another type, a timestamp out of range, a number not finite, a unit not ASCII."""
    data = answer.get("metricData") if answer.__class__ is dict else None
    if data.__class__ is not list or set(map(type, data)) - {dict}:
        return None
    times = [p.get("timestamp") for p in data]
    if set(map(type, times)) - {int, float}:
        return None
    try:  # round(): ValueError for NaN, OverflowError for ±inf (int * 10**6 is exact)
        period_start = [round(t * 1_000_000) for t in times]
    except (ValueError, OverflowError):
        return None
    if times and (min(times) < _MIN_S or max(times) > _MAX_S):
        return None
    average = _numbers([p.get("average") for p in data])
    maximum = _numbers([p.get("maximum") for p in data])
    unit = [p.get("unit") for p in data]
    if average is None or maximum is None or not _ascii_strings(unit):
        return None
    return Points(period_start, average, maximum, unit)


def _numbers(values: list[Any]) -> list[Any] | None:
    """`values` as floats (None kept) when each is a finite number or None, else None. The
    sum is finite only when every term is (a huge but finite sum just takes the slow path)."""
    kinds = set(map(type, values))
    if kinds - _NUMBER_TYPES:
        return None
    present = [v for v in values if v is not None] if type(None) in kinds else values
    try:
        if not math.isfinite(sum(present)):
            return None
        if int in kinds:  # as the checked path stores them (_num: float(v))
            return [None if v is None else float(v) for v in values]
    except OverflowError:  # an int beyond a float's range
        return None
    return values


def _ascii_strings(values: list[Any]) -> bool:
    if set(map(type, values)) - _STRING_TYPES:
        return False
    return all(v is None or v.isascii() for v in set(values))


def _null_point() -> Points:
    """The one row of an answer without datapoints (disabled, failed, no_datapoints)."""
    return Points([None], [None], [None], [None])


class _Utilization:
    """service_utilization's buffered rows as runs: per answer its constant columns once
    (ANSWER_COLUMNS) and its datapoints as Arrow columns. take() decodes the runs in Arrow:
    no Python object per row and column."""

    def __init__(self) -> None:
        self.keys: list[tuple[Any, ...]] = []
        self.points: list[Points] = []
        self.ends: list[int] = []  # cumulative rows: the run ends
        self.rows = 0

    def add(self, key: tuple[Any, ...], points: Points) -> None:
        self.rows += len(points)
        self.keys.append(key)
        self.points.append(points)
        self.ends.append(self.rows)

    def table(self) -> pa.Table:
        target = schema.SERVICE_UTILIZATION
        if not self.rows:
            return target.empty_table()
        ends = pa.array(self.ends, pa.int32())
        columns: dict[str, pa.Array] = {}
        for name, values in zip(ANSWER_COLUMNS, zip(*self.keys, strict=True), strict=True):
            runs = pa.RunEndEncodedArray.from_arrays(ends, pa.array(values, _TYPES[name]))
            columns[name] = pc.run_end_decode(runs)
        for name in POINT_COLUMNS:
            columns[name] = pa.concat_arrays([p.column(name) for p in self.points])
        return pa.Table.from_arrays([columns[f.name] for f in target], schema=target)


class UsageFlattener:
    """UsageAnswers -> rows of container_powers and service_utilization. Never raises on an
    answer's shape: a bad part becomes NULL (or is left out) and an errors row. A well-formed
    answer takes the fast path (`fast_points`), any other the checked one, value by value."""

    def __init__(self) -> None:
        self._enums = known_enums()
        self._powers: list[tuple[Any, ...]] = []
        self._utilization = _Utilization()

    @property
    def rows(self) -> dict[str, int]:
        return {
            "container_powers": len(self._powers),
            "service_utilization": self._utilization.rows,
        }

    def add_result(self, run_id: str, result: TargetResult) -> list[ErrorRecord]:
        """Buffer the rows of a result's usage answers; returns their anomalies as errors rows."""
        usage: UsageAnswers = result.usage
        account, region = result.account.id, result.region
        errors: list[ErrorRecord] = []

        def record(operation: str, at: dt.datetime, tries: int, found: list[Anomaly]) -> None:
            errors.extend(
                ErrorRecord(at, account, region, operation, a.error_code, a.message, tries)
                for a in found
            )

        if usage.powers is not None:
            at = usage.powers_at or result.finished_at
            found = self.add_powers(run_id, account, region, at, usage.powers)
            record(POWERS, at, usage.powers_attempts, found)
        for m in usage.metrics:
            found = self.add_metric(run_id, account, region, usage.window, m)
            record(METRIC_DATA, m.collected_at, m.attempts, found)
        return errors

    def add_powers(
        self, run_id: str, account: str, region: str, at: dt.datetime, answer: object
    ) -> list[Anomaly]:
        anomalies: list[Anomaly] = []
        chk = Check(anomalies, self._enums)
        chk.scope = POWERS
        collected = epoch_micros(at)
        for i, p in enumerate(_list(answer, "powers", chk)):
            path = f"powers[{i}]"
            if not isinstance(p, dict):
                chk.bad(path, "object", p)
                continue
            self._powers.append(
                (
                    run_id,
                    region,
                    chk.str_(p, "powerId", path),
                    chk.str_(p, "name", path),
                    _num(chk, p, "price", path),
                    _num(chk, p, "cpuCount", path),
                    _num(chk, p, "ramSizeInGb", path),
                    chk.bool_(p, "isActive", path),
                    collected,
                    account,
                )
            )
        return anomalies

    def add_metric(
        self,
        run_id: str,
        account: str,
        region: str,
        window: tuple[dt.datetime, dt.datetime],
        m: MetricAnswer,
    ) -> list[Anomaly]:
        anomalies: list[Anomaly] = []
        points: Points | None = None
        status = m.status
        if status == OK:
            points = m.answer if isinstance(m.answer, Points) else fast_points(m.answer)
            if points is None:
                points = self.checked_points(m, Check(anomalies, self._enums))
            if not len(points):
                points, status = None, NO_DATAPOINTS
        start, end = (epoch_micros(t) for t in window)
        key: tuple[Any, ...] = (run_id, account, region, m.service_name, m.service_arn)
        key += (m.metric, status, start, end, PERIOD_S, epoch_micros(m.collected_at))
        self._utilization.add(key, _null_point() if points is None else points)
        return anomalies

    def checked_points(self, m: MetricAnswer, chk: Check) -> Points:
        """The slow path: every value checked on its own, each problem an anomaly."""
        chk.svc = {"containerServiceName": m.service_name}
        columns: tuple[list[Any], ...] = ([], [], [], [])
        for i, p in enumerate(_list(m.answer, "metricData", chk)):
            path = f"{m.metric}.metricData[{i}]"
            if not isinstance(p, dict):
                chk.bad(path, "object", p)
                continue
            at = chk.ts(p, "timestamp", path)
            if at is None:  # a datapoint without its time says nothing
                continue
            unit = chk.str_(p, "unit", path)
            row = (at, _num(chk, p, "average", path), _num(chk, p, "maximum", path), unit)
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        return Points(*columns)

    def take(self) -> dict[str, pa.Table]:
        """The buffered rows as Arrow tables (schema.py's schemas), then empty buffers."""
        out = {
            "container_powers": _table(self._powers, schema.CONTAINER_POWERS),
            "service_utilization": self._utilization.table(),
        }
        self._powers, self._utilization = [], _Utilization()
        return out


def _table(rows: list[tuple[Any, ...]], target: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(target)
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, target, strict=True)],
        schema=target,
    )


def _list(answer: object, key: str, chk: Check) -> list[Any]:
    items = answer.get(key) if isinstance(answer, Mapping) else None
    if isinstance(items, list):
        return items
    chk.bad(key, "a list", items if isinstance(answer, Mapping) else answer)
    return []


def _num(chk: Check, d: Mapping[str, Any], key: str, path: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, int | float) and not isinstance(v, bool):
        try:
            if math.isfinite(v):
                return float(v)
        except OverflowError:  # an int beyond a float's range (json.loads reads any digits)
            pass
    chk.bad(f"{path}.{key}", "number", v)
    return None


def usage_tables(
    run_id: str,
    account_id: str,
    region: str,
    window: tuple[dt.datetime, dt.datetime],
    powers: object | None,
    metrics: list[MetricAnswer],
) -> dict[str, pa.Table]:
    """One-shot: answers -> the usage tables (for fixtures and tests without HTTP)."""
    f = UsageFlattener()
    at = window[1]
    if powers is not None:
        f.add_powers(run_id, account_id, region, at, powers)
    for m in metrics:
        f.add_metric(run_id, account_id, region, window, m)
    return f.take()
