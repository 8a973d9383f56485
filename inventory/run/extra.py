"""The opt-in calls a target makes after its GetContainerServices (`collect --deep`,
`collect --usage`): one call through the collector's shared path, and what a failure becomes.

Every such call goes through retry.attempts with the collector's policy (pacing, retries,
the stop, counting in runs.api_calls and runs.retries), signed with the account's role from
the collector's broker, through the region's aiobotocore client (in both engines; the lean
engine covers the hot call and, for --usage, GetContainerServiceMetricData: a caller may pass
its own client), within a deadline the feature's calls of one target share. A failure is an `ExtraFailed`, never an exception: it becomes one `errors` row and
never fails the target.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from inventory.aws.credentials import AssumeRoleFailed
from inventory.aws.retry import Budget, Deadline, Failure, Kind, Stop, attempts
from inventory.model import Account, ErrorRecord, TargetResult, utcnow
from inventory.storage.flatten import short_repr

if TYPE_CHECKING:
    from inventory.run.collect import Collector

INTERRUPTED = "Interrupted"
# A refusal that holds for every service of the account × region: call that operation no more.
REFUSED = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "UnauthenticatedException",
        "InvalidClientTokenId",
        "OperationNotPermittedException",
    }
)

Hook = Callable[[TargetResult], Awaitable[TargetResult]]


@dataclass(slots=True)
class ExtraFailed:
    """A call that failed: its errors row to be."""

    operation: str
    service_name: str | None  # None: a call about the region (GetContainerServicePowers)
    failure: Failure
    attempts: int
    skipped: int = 0  # services this operation was not called for after it (REFUSED, deadline)

    def ends_operation(self, deadline: Deadline) -> bool:
        """Whether the target calls this operation no more: a refusal, a stop, the deadline."""
        code = self.failure.code
        return code in REFUSED or code == INTERRUPTED or time.monotonic() >= deadline.at

    def error(self, account_id: str, region: str, services: int) -> ErrorRecord:
        message = self.failure.message
        if self.service_name is not None:
            message = f"service {short_repr(self.service_name)}: {message}"
        if self.skipped:
            message += (
                f" (not called for the other {self.skipped} of its {services} services "
                "in this account × region)"
            )
        return ErrorRecord(
            occurred_at=utcnow(),
            account_id=account_id,
            region=region,
            operation=self.operation,
            error_code=self.failure.code,
            message=message,
            attempts=self.attempts,
        )


class ExtraCalls:
    """One target's extra calls of one feature, on `collector`'s shared path."""

    def __init__(self, collector: Collector, what: str):
        self.collector = collector
        self.what = what  # for messages: "deep calls", "usage calls"
        # the collector's policy; the deadline is the one the target's calls share
        self.policy = dataclasses.replace(collector.policy, deadline=None)

    def deadline(self) -> Deadline:
        """A deadline for one target's calls of this feature: the target's length."""
        return Deadline(time.monotonic() + self.collector.options.deadline)

    async def call(
        self,
        account: Account,
        region: str,
        operation: str,
        method: str,
        params: dict[str, Any],
        deadline: Deadline,
        service_name: str | None = None,
        client: Any = None,
    ) -> tuple[Any, int] | ExtraFailed:
        """(answer, attempts) of one call through retry.attempts, or its ExtraFailed;
        `client` (with the method) instead of the region's aiobotocore client: a lean one."""
        c = self.collector
        broker = c.broker
        assert broker is not None
        budget = Budget(c.options.max_attempts)
        try:
            out = await attempts(
                getattr(client or c.botocore_clients[region], method),
                params,
                self.policy,
                budget=budget,
                deadline=deadline,
                credentials=partial(broker.get, account),
                on_expired=partial(broker.invalidate, account),
            )
        except AssumeRoleFailed as exc:
            return ExtraFailed(operation, service_name, exc.failure, budget.attempts)
        if out.stop is None:
            answer = out.answer
            if isinstance(answer, dict):
                answer.pop("ResponseMetadata", None)
            return answer, out.attempts
        if out.stop is Stop.STOPPED:
            failure = self._interrupted()
        elif out.stop is Stop.LATE:
            failure = self._late(out.failure)
        else:
            assert out.failure is not None  # Stop.FAILED (these calls have no breaker)
            failure = out.failure
        return ExtraFailed(operation, service_name, failure, out.attempts)

    def _interrupted(self) -> Failure:
        reason = self.collector.stop_reason or "interrupted"
        return Failure(INTERRUPTED, f"collect was stopped ({reason})", Kind.FATAL)

    def _late(self, failure: Failure | None) -> Failure:
        limit = f"the {self.collector.options.deadline:g}s deadline of this target's {self.what}"
        if failure is None:
            return Failure("Timeout", f"{limit} passed before a call", Kind.TRANSIENT)
        return Failure(
            failure.code, f"{failure.message} (gave up at {limit})", failure.kind, failure.status
        )


def chain(hooks: Sequence[Hook]) -> Hook | None:
    """One `Collector.after_collect` that runs `hooks` in turn (None: no hook)."""
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    async def run(result: TargetResult) -> TargetResult:
        for hook in hooks:
            result = await hook(result)
        return result

    return run


def service_identities(services: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, arn, service) of the services that have a usable identity (the ones stored),
    in answer order."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for svc in services:
        if not isinstance(svc, dict):
            continue
        name, arn = svc.get("containerServiceName"), svc.get("arn")
        if isinstance(name, str) and name and isinstance(arn, str) and arn:
            out.append((name, arn, svc))
    return out
