"""`collect --deep`: per service found, its deployment history and its registered images.

AWS keeps only a few past deployments of a container service, so a nightly deep snapshot is
what turns them into a long history. For every service that `GetContainerServices` returned
for an account × region, the collector also calls:

- `GetContainerServiceDeployments(serviceName)` -> tables `deployment_history` (one row per
  deployment AWS still lists: next, current and past ones; the columns of `deployments`
  without `slot`) and `deployment_history_containers` (one row per container of each of
  those deployments; the columns of `containers` without `slot`; environment values
  fingerprinted exactly as in `containers`, or stored with --include-env-values only);
- `GetContainerImages(serviceName)` -> table `container_images` (the images pushed to the
  service's Lightsail registry: image, digest, created_at; with the service's `service_arn`,
  since a service deleted and created again under the same name is another service).

How the calls are made (decided):
- In the same worker task as the account × region's GetContainerServices, right after it
  succeeded (`Collector.after_collect`), one call at a time: the --concurrency bound on calls
  in flight holds, and so does the global rate (`Collector.pacer`, AIMD on throttling).
- Through the aiobotocore Lightsail client of the region (the lean engine's path covers the
  one hot call only; these two are rare: 2 per service, only with --deep), signed with the
  account's role from the collector's broker (assumed once, refreshed when it expires).
- Retried like every other call (retry.attempts with the collector's policy: throttling,
  5xx, timeouts, dropped connections, expired credentials), every attempt counted in
  runs.api_calls and every retry in runs.retries. The deep calls of a target share one
  deadline (a retry.Deadline of `Options.deadline`, the same length as the target's), so
  with --deep one account × region takes at most twice the deadline (plus time queued for
  the rate).
- A deep call that fails never fails the target: its services, deployments and containers
  are stored, its scan stays 'ok' and the run's status does not change. Each failure is one
  `errors` row (operation GetContainerServiceDeployments or GetContainerImages, the service
  in the message, its attempts). When an operation is refused for a whole account × region
  (AccessDenied: the reader role lacks the permission), it is called once, not once per
  service: the one errors row says how many services it skipped. A stop (Ctrl-C) keeps the
  main data and records the deep calls it cut short as 'Interrupted'.
- `scans.attempts` stays the GetContainerServices attempts of the target.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from inventory.model import ErrorRecord, TargetResult, utcnow
from inventory.run.extra import ExtraCalls, ExtraFailed, service_identities
from inventory.storage import schema
from inventory.storage.flatten import (
    UNEXPECTED_SHAPE,
    Anomaly,
    Check,
    Flattener,
    TargetContext,
    epoch_micros,
    known_enums,
    short_repr,
)

if TYPE_CHECKING:
    from inventory.run.collect import Collector

DEPLOYMENTS = "GetContainerServiceDeployments"
IMAGES = "GetContainerImages"
OPERATIONS = (DEPLOYMENTS, IMAGES)
_METHODS = {DEPLOYMENTS: "get_container_service_deployments", IMAGES: "get_container_images"}


@dataclass(slots=True)
class DeepAnswer:
    """One deep call's answer, as the client parsed it."""

    operation: str  # DEPLOYMENTS | IMAGES
    service_name: str
    service_arn: str | None
    answer: Any
    collected_at: dt.datetime
    attempts: int


@dataclass(slots=True)
class DeepResult(TargetResult):
    """A target's result with its deep answers (its deep failures are in `anomalies`)."""

    deep: list[DeepAnswer] = field(default_factory=list)

    @classmethod
    def of(cls, result: TargetResult) -> DeepResult:
        values = {f.name: getattr(result, f.name) for f in dataclasses.fields(TargetResult)}
        return cls(**values)


class DeepFetcher:
    """`Collector.after_collect` for --deep: the two calls for each service of a result."""

    def __init__(self, collector: Collector):
        self.calls = ExtraCalls(collector, "deep calls")

    async def __call__(self, result: TargetResult) -> TargetResult:
        services = service_identities(result.services or [])
        out = DeepResult.of(result)
        if not services:
            return out
        deadline = self.calls.deadline()
        failed: list[ExtraFailed] = []
        stopped: dict[str, ExtraFailed] = {}  # operation -> the failure that ends it
        for name, arn, _ in services:
            for op in OPERATIONS:
                if op in stopped:  # a stop, a refusal, the deadline: one errors row counts the rest
                    stopped[op].skipped += 1
                    continue
                got = await self.calls.call(
                    result.account,
                    result.region,
                    op,
                    _METHODS[op],
                    {"serviceName": name},
                    deadline,
                    name,
                )
                if isinstance(got, ExtraFailed):
                    failed.append(got)
                    if got.ends_operation(deadline):
                        stopped[op] = got
                    continue
                answer, tries = got
                out.deep.append(DeepAnswer(op, name, arn, answer, utcnow(), tries))
        out.anomalies.extend(
            f.error(result.account.id, result.region, len(services)) for f in failed
        )
        return out


# --------------------------------------------------------------------------- flattening


class DeepFlattener:
    """Deep answers -> rows of deployment_history, deployment_history_containers and
    container_images. Like flatten.Flattener (which does the deployments and containers, so
    both tables read exactly like `deployments` and `containers`): never raises on an
    answer's shape; a bad part becomes NULL and an Anomaly (no environment value in it)."""

    def __init__(self, fingerprint: Callable[[str], str] | None) -> None:
        self._flat = Flattener(fingerprint)
        self._enums = known_enums()
        self._images: list[tuple[Any, ...]] = []
        self._history = 0
        self._history_containers = 0

    @property
    def rows(self) -> dict[str, int]:
        flat = self._flat.rows
        return {
            "deployment_history": flat["deployments"],
            "deployment_history_containers": flat["containers"],
            "container_images": len(self._images),
        }

    def add_result(self, run_id: str, result: DeepResult) -> list[ErrorRecord]:
        """Buffer the rows of a DeepResult's answers; returns their anomalies as errors rows."""
        errors = []
        for ans in result.deep:
            ctx = TargetContext(
                run_id, ans.collected_at, result.account.id, result.account.name, result.region
            )
            for a in self.add(ctx, ans.operation, ans.service_name, ans.service_arn, ans.answer):
                errors.append(
                    ErrorRecord(
                        occurred_at=ans.collected_at,
                        account_id=ctx.account_id,
                        region=ctx.region,
                        operation=ans.operation,
                        error_code=a.error_code,
                        message=a.message,
                        attempts=ans.attempts,
                    )
                )
        return errors

    def add(
        self, ctx: TargetContext, operation: str, name: str, arn: str | None, answer: object
    ) -> list[Anomaly]:
        """One answer of `operation` for service `name`."""
        if operation == DEPLOYMENTS:
            return self._deployments(ctx, name, arn, answer)
        if operation == IMAGES:
            return self._container_images(ctx, name, arn, answer)
        raise ValueError(f"not a deep operation: {operation!r}")

    def _list(self, name: str, answer: object, key: str, anomalies: list[Anomaly]) -> list[Any]:
        items = answer.get(key) if isinstance(answer, Mapping) else None
        if isinstance(items, list):
            return items
        got = "no object" if not isinstance(answer, Mapping) else type(items).__name__
        if items is None and isinstance(answer, Mapping):
            got = "nothing"
        anomalies.append(
            Anomaly(
                UNEXPECTED_SHAPE, f"service {short_repr(name)}: {key}: expected a list, got {got}"
            )
        )
        return []

    def _deployments(
        self, ctx: TargetContext, name: str, arn: str | None, answer: object
    ) -> list[Anomaly]:
        anomalies: list[Anomaly] = []
        for i, dep in enumerate(self._list(name, answer, "deployments", anomalies)):
            if not isinstance(dep, dict):
                anomalies.append(
                    Anomaly(
                        UNEXPECTED_SHAPE,
                        f"service {short_repr(name)}: deployments[{i}]: expected object, "
                        f"got {type(dep).__name__}",
                    )
                )
                continue
            # The flattener reads a deployment as a service's currentDeployment: the same
            # columns, checks and redaction as `deployments` and `containers`.
            service = {"containerServiceName": name, "arn": arn, "currentDeployment": dep}
            for a in self._flat.add(ctx, [service]):
                message = a.message.replace(": currentDeployment", f": deployments[{i}]", 1)
                anomalies.append(Anomaly(a.error_code, message))
        return anomalies

    def _container_images(
        self, ctx: TargetContext, name: str, arn: str | None, answer: object
    ) -> list[Anomaly]:
        anomalies: list[Anomaly] = []
        chk = Check(anomalies, self._enums)
        chk.svc = {"containerServiceName": name}
        collected = epoch_micros(ctx.collected_at)
        for i, img in enumerate(self._list(name, answer, "containerImages", anomalies)):
            path = f"containerImages[{i}]"
            if not isinstance(img, dict):
                chk.bad(path, "object", img)
                continue
            self._images.append(
                (
                    ctx.run_id,
                    collected,
                    ctx.account_id,
                    ctx.region,
                    name,
                    chk.str_(img, "image", path),
                    chk.str_(img, "digest", path),
                    chk.ts(img, "createdAt", path),
                    arn,
                )
            )
        return anomalies

    def take(self) -> dict[str, pa.Table]:
        """The buffered rows as Arrow tables (schema.py's schemas), then empty buffers."""
        flat = self._flat.take()
        images = self._images
        self._images = []
        columns = list(zip(*images, strict=True)) if images else [()] * len(schema.CONTAINER_IMAGES)
        return {
            "deployment_history": flat["deployments"]
            .drop_columns(["slot", "extra"])
            .cast(schema.DEPLOYMENT_HISTORY),
            "deployment_history_containers": flat["containers"]
            .drop_columns(["slot", "extra"])
            .cast(schema.DEPLOYMENT_HISTORY_CONTAINERS),
            "container_images": pa.Table.from_arrays(
                [
                    pa.array(col, type=f.type)
                    for col, f in zip(columns, schema.CONTAINER_IMAGES, strict=True)
                ],
                schema=schema.CONTAINER_IMAGES,
            ),
        }


def deep_tables(
    run_id: str,
    account_id: str,
    region: str,
    collected_at: dt.datetime,
    answers: list[tuple[str, str, str | None, object]],
    fingerprint: Callable[[str], str] | None,
) -> dict[str, pa.Table]:
    """One-shot: (operation, service name, service arn, answer) tuples -> the deep tables
    (for fixtures and tests that build runs without HTTP)."""
    f = DeepFlattener(fingerprint)
    ctx = TargetContext(run_id, collected_at, account_id, None, region)
    for operation, name, arn, answer in answers:
        f.add(ctx, operation, name, arn, answer)
    return f.take()
