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
counters and stop; the usage calls of one target share one deadline of the target's length;
a refusal (AccessDenied) of the metric call ends it for the account × region (one errors
row counts the services skipped, each of which still gets its 'failed' rows).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

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
    answer: Any
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
                )
                if isinstance(got, ExtraFailed):
                    failed.append(got)
                    stopped = got if got.ends_operation(deadline) else None
                    usage.metrics.append(
                        MetricAnswer(name, arn, metric, FAILED, None, utcnow(), got.attempts)
                    )
                    continue
                answer, tries = got
                usage.metrics.append(MetricAnswer(name, arn, metric, OK, answer, utcnow(), tries))
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
            account, region, POWERS, "get_container_service_powers", {}, deadline
        )
        if isinstance(got, ExtraFailed):
            self._powers[region] = int(tried) + 1
            return [got]
        usage.powers, usage.powers_attempts = got
        usage.powers_at = utcnow()
        return []


# --------------------------------------------------------------------------- flattening


class UsageFlattener:
    """UsageAnswers -> rows of container_powers and service_utilization. Never raises on an
    answer's shape: a bad part becomes NULL (or is left out) and an errors row."""

    def __init__(self) -> None:
        self._enums = known_enums()
        self._powers: list[tuple[Any, ...]] = []
        self._utilization: list[tuple[Any, ...]] = []

    @property
    def rows(self) -> dict[str, int]:
        return {
            "container_powers": len(self._powers),
            "service_utilization": len(self._utilization),
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
        start, end = (epoch_micros(t) for t in window)
        collected = epoch_micros(m.collected_at)

        def row(period_start: Any, average: Any, maximum: Any, unit: Any, status: str) -> None:
            self._utilization.append(
                (
                    run_id,
                    account,
                    region,
                    m.service_name,
                    m.service_arn,
                    m.metric,
                    period_start,
                    average,
                    maximum,
                    unit,
                    status,
                    start,
                    end,
                    PERIOD_S,
                    collected,
                )
            )

        if m.status != OK:
            row(None, None, None, None, m.status)
            return anomalies
        chk = Check(anomalies, self._enums)
        chk.svc = {"containerServiceName": m.service_name}
        points = 0
        for i, p in enumerate(_list(m.answer, "metricData", chk)):
            path = f"{m.metric}.metricData[{i}]"
            if not isinstance(p, dict):
                chk.bad(path, "object", p)
                continue
            at = chk.ts(p, "timestamp", path)
            if at is None:  # a datapoint without its time says nothing
                continue
            unit = chk.str_(p, "unit", path)
            row(at, _num(chk, p, "average", path), _num(chk, p, "maximum", path), unit, OK)
            points += 1
        if not points:
            row(None, None, None, None, NO_DATAPOINTS)
        return anomalies

    def take(self) -> dict[str, pa.Table]:
        """The buffered rows as Arrow tables (schema.py's schemas), then empty buffers."""
        out = {
            "container_powers": _table(self._powers, schema.CONTAINER_POWERS),
            "service_utilization": _table(self._utilization, schema.SERVICE_UTILIZATION),
        }
        self._powers, self._utilization = [], []
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
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
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
