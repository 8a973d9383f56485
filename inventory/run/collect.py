"""The async fan-out: GetContainerServices in every region of every account.

Bounded concurrency (a fixed pool of worker tasks), a global adaptive rate (pacing.Pacer),
retries with backoff and jitter for throttling, 5xx and dropped connections, a timeout per
call and a deadline per account × region (all of it retry.attempts, the loop every AWS call
goes through, with the collector's `policy`). One TargetResult per account ×
region, streamed through a bounded queue as they finish: the fleet is never held in memory.

Clients: one aiobotocore Lightsail client per region, shared by every account; each
task signs with its own account's credentials through credentials.use(). Botocore's own
retries are off (one attempt per call) so that every attempt is counted here. With
`engine='lean'` the hot call goes through lean.py instead, with the same endpoint,
credentials and errors, and so does the CredentialBroker's AssumeRole (lean.LeanSTSClient).
Both engines hand the flattener the same thing: the answer's JSON as
`json.loads` reads it (`raw_answer`: botocore's parser would drop the members its model does
not know and raise on a leaf of the wrong type, costing the whole account × region).

An answer whose `containerServices` is missing or not a list is a failed scan (error code
'UnexpectedShape', not retried), never an empty account × region: the `latest_*` views keep
that account × region's previous good snapshot.

Bounds, whatever the network does (`run_time_bound`):
- one call: `timeout` (connect and read, and an asyncio timeout around the whole call);
- one target: its `deadline` covers its AssumeRole (or the wait for another region's),
  every attempt and every backoff pause; time queued behind the global rate limit is not
  counted (that is the run slowing down as a whole, pacing.py), but it is bounded too;
- a region that hangs: once BREAKER_TIMEOUTS calls to it, from at least BREAKER_TARGETS
  accounts, have timed out and not one of its calls has had an answer (of any status),
  the rest of that region fails at once with 'Timeout' and a message that says so (a
  per-region circuit breaker): targets in flight stop before their next attempt, the
  others are not called, instead of each waiting out its own deadline. One region that
  hangs for one account never trips it, nor does a region that has answered once.
- a region that cannot be reached (its endpoint refuses connections, does not resolve, or
  closes every connection unanswered): the same breaker, counting those calls with the
  timeouts; when they are most of them, the rest of the region fails with
  'EndpointUnreachable' and a message naming the endpoint, instead of every account
  spending its whole attempt budget and backoff on it.

Stopping (`stop`, e.g. on Ctrl-C): no new call starts, calls in flight are cancelled, and
every target not finished yet still gets its TargetResult: failed, error code
'Interrupted', with the attempts it made. The run deadline (`Options.run_deadline`, by
default `run_time_bound` of the targets) stops `results()` the same way, with error code
'RunDeadline': whatever the settings and the network, a run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any

from botocore.credentials import ReadOnlyCredentials
from botocore.parsers import ResponseParserError

from inventory.aws import credentials as creds_mod
from inventory.aws.credentials import AssumeRoleFailed, CallCounter, CredentialBroker
from inventory.aws.lean import USER_AGENT, LeanHTTP, LeanLightsailClient, LeanSTSClient
from inventory.aws.pacing import Pacer, default_floor
from inventory.aws.retry import (
    NO_PARAMS,
    Backoff,
    Breaker,
    Budget,
    CallFailed,
    Calls,
    Failure,
    Kind,
    Policy,
    Stop,
    attempts,
)
from inventory.aws.session import (
    SharedCredentialsSession,
    base_source,
    client_config,
    home_region,
)
from inventory.errors import CallError
from inventory.model import Account, ErrorRecord, Options, TargetResult, utcnow

BREAKER_TIMEOUTS = 6  # calls to one region timed out or unreachable, none answered: stop...
BREAKER_TARGETS = 3  # ...when they came from at least this many accounts
INTERRUPTED = "Interrupted"  # error code of the targets a stop left unfinished
RUN_DEADLINE = "RunDeadline"  # ... and of those the run deadline left unfinished
UNEXPECTED_SHAPE = "UnexpectedShape"  # a 200 answer without a containerServices list
RAW_ANSWER_EVENT = "before-parse.lightsail.GetContainerServices"
UNREACHABLE = "EndpointUnreachable"  # error code of a region the breaker found unreachable


PREFETCH_IN_FLIGHT = 8  # AssumeRole calls made ahead of the targets at once, at least
PREFETCH_AHEAD = 64  # accounts whose roles may be assumed before a worker reaches them


def prefetch_in_flight(concurrency: int, regions: int) -> int:
    """How many AssumeRole calls the prefetch makes at once: twice the accounts the workers
    start per round trip (`concurrency` / `regions`), so that it stays ahead of them and no
    worker waits for a role (each wait costs a lock and a timer as well as time); at least
    PREFETCH_IN_FLIGHT, at most PREFETCH_AHEAD."""
    per_round_trip = -(-concurrency // max(1, regions))
    return max(PREFETCH_IN_FLIGHT, min(PREFETCH_AHEAD, 2 * per_round_trip))


def run_time_bound(options: Options, targets: int) -> float:
    """The longest `results()` over `targets` account × region targets can take (seconds),
    from the settings alone: whatever the network does, a run ends within this.

    Each target's own time stays within its deadline D and C targets run at once, so they
    all end by (T/C + 1)·D (greedy scheduling: when the last one starts, every worker has
    been busy). Time queued behind the rate limit comes on top: at most A calls per target
    (retry.Budget.limit), paced at no less than the pacer's floor rate. Plus one D for the
    GetCallerIdentity of a run without an accounts file.
    """
    if targets <= 0:
        return options.deadline
    workers = min(options.concurrency, targets)
    calls = targets * Budget(options.max_attempts).limit
    return (targets / workers + 2) * options.deadline + calls / default_floor(options.rate)


def run_deadline(options: Options, targets: int) -> float:
    """Seconds after which `results()` stops the targets not finished yet ('RunDeadline'):
    `--run-deadline`, or by default the bound that follows from the settings."""
    if options.run_deadline is not None:
        return options.run_deadline
    return run_time_bound(options, targets)


def raw_answer(
    response_dict: dict[str, Any],
    customized_response_dict: dict[str, Any],
    operation_model: Any = None,
    **_: Any,
) -> None:
    """botocore `before-parse` hook for GetContainerServices (engine 'botocore'; and for
    collect --usage's GetContainerServiceMetricData, usage.py): the answer becomes the body's
    JSON as `json.loads` reads it, as in the lean engine (lean.py), and botocore's parser sees
    `{}`. Error answers (status >= 300) are left to botocore."""
    if response_dict.get("status_code", 500) >= 300:
        return
    op = getattr(operation_model, "name", "GetContainerServices")
    try:
        answer = json.loads(response_dict["body"])
    except (ValueError, TypeError) as exc:
        raise ResponseParserError(f"{op}: answer is not JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise ResponseParserError(
            f"{op}: answer is a JSON {type(answer).__name__}, expected an object"
        )
    response_dict["body"] = b"{}"
    customized_response_dict.update(answer)


class Collector:
    """Collects every (account, region) target; use as `async with` and iterate `results()`."""

    def __init__(
        self,
        options: Options,
        regions: Iterable[str],
        *,
        clock: Any = time.time,
        backoff: Backoff | None = None,
        endpoint_urls: Mapping[str, str] | None = None,
    ):
        self.options = options
        self.regions = tuple(regions)
        # a region's Lightsail endpoint instead of the one botocore resolves (tests, e.g.
        # a closed port); every other region's comes from botocore (AWS_ENDPOINT_URL_*)
        self._endpoint_urls = dict(endpoint_urls or {})
        self.counter = CallCounter()
        self.pacer = Pacer(options.rate)
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._session = SharedCredentialsSession()
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self.botocore_clients: dict[str, Any] = {}  # per region (the lean engine wraps them)
        # Called with each collected TargetResult before it is returned; may return another
        # (collect --deep: deep.DeepFetcher makes the per-service calls there).
        self.after_collect: Callable[[TargetResult], Awaitable[TargetResult]] | None = None
        self._sts: Any = None
        self._health = {  # the per-region circuit breakers
            region: Breaker(BREAKER_TIMEOUTS, BREAKER_TARGETS) for region in self.regions
        }
        self._fetching: set[asyncio.Task[Any]] = set()
        self.stop_reason: str | None = None
        self.stop_code = INTERRUPTED  # the error code of the targets a stop leaves unfinished
        self.base: ReadOnlyCredentials | None = None
        self.broker: CredentialBroker | None = None
        self.lean_http: LeanHTTP | None = None  # engine 'lean': the shared session and keys
        # How every call for a target is retried (retry.attempts): the target's deadline is
        # the call's own; the pacer, the stop and the signing with the account's credentials
        # are shared by all of them (deep.py's calls too).
        self.policy = Policy.of(
            options,
            self.counter,
            backoff=self.backoff,
            pacer=self.pacer,
            stopped=self._stopping,
            sign=creds_mod.use,
        )

    async def __aenter__(self) -> Collector:
        try:
            await self._enter()
        except BaseException:
            await self._stack.aclose()  # the clients entered so far
            raise
        return self

    async def _enter(self) -> None:
        source, session = await base_source()
        self.base = await source.get_frozen_credentials()
        cfg = client_config(self.options, self.options.concurrency)
        self._sts = await self._stack.enter_async_context(
            self._session.create_client("sts", config=cfg, region_name=self._sts_region())
        )
        lean_http = None
        if self.options.engine == "lean":
            lean_http = await self._stack.enter_async_context(
                LeanHTTP(
                    limit=max(10, self.options.concurrency),
                    timeout=self.options.timeout,
                    verify=session.get_config_variable("ca_bundle"),  # AWS_CA_BUNDLE, as botocore
                    max_answer_bytes=self.options.max_answer_bytes,
                )
            )
        for region in self.regions:
            override = self._endpoint_urls.get(region)
            client = await self._stack.enter_async_context(
                self._session.create_client(
                    "lightsail",
                    region_name=region,
                    config=cfg,
                    **({"endpoint_url": override} if override else {}),
                )
            )
            self.botocore_clients[region] = client
            if lean_http is None:
                client.meta.events.register(RAW_ANSWER_EVENT, raw_answer)
            else:  # botocore still resolves the endpoint
                client = LeanLightsailClient(
                    lean_http, region, client.meta.endpoint_url, USER_AGENT
                )
            self._clients[region] = client
        sts = self._sts
        if lean_http is not None:  # AssumeRole too; botocore still resolves the endpoint
            sts = LeanSTSClient(lean_http, sts.meta.endpoint_url, sts.meta.region_name, USER_AGENT)
        self.broker = CredentialBroker(
            sts,
            source,
            self.options,
            self.counter,
            clock=self._clock,
            backoff=self.backoff,
        )
        if lean_http is not None:  # an account done: the keys derived for it go too
            self.broker.on_forget = lean_http.keys.forget
        self.lean_http = lean_http

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _sts_region(self) -> str:
        return home_region(self._session)

    def _stopping(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str = "interrupted", code: str = INTERRUPTED) -> None:
        """Make no new calls: cancel those in flight; unfinished targets end with error
        code `code` ('Interrupted', or 'RunDeadline').

        Safe to call from a signal handler on the loop (loop.add_signal_handler) and more
        than once (the first reason stays)."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.stop_code = code
        for task in list(self._fetching):
            task.cancel()

    async def caller_account(self) -> str:
        """The base identity's account id (GetCallerIdentity), for runs without a file."""
        assert self.base is not None
        try:
            with creds_mod.use(self.base):
                answer = await Calls(self.options, self.counter)(
                    "GetCallerIdentity", self._sts.get_caller_identity
                )
        except CallFailed as exc:
            raise CallError(
                f"GetCallerIdentity with the base credentials failed after {exc.attempts} "
                f"attempt(s): {exc.failure.code}: {exc.failure.message}",
                "GetCallerIdentity",
                exc.failure.code,
                exc.attempts,
            ) from None
        return str(answer["Account"])

    async def results(self, accounts: Iterable[Account]) -> AsyncIterator[TargetResult]:
        """Yield one TargetResult per account × region as each finishes (after `stop`,
        the unfinished ones as 'Interrupted').

        Targets are made as the workers take them (account-major: an account's regions run
        close together), and roles are assumed ahead of them (`_prefetch`), so a target's
        slot holds one round trip, not two."""
        accounts = list(accounts)
        targets = ((account, region) for account in accounts for region in self.regions)
        ahead = asyncio.Semaphore(PREFETCH_AHEAD)  # accounts the prefetch may run ahead
        left: dict[str, int] = {}  # targets of an account not yet finished
        reached = [0]  # accounts whose first target a worker took (in `accounts` order)
        done: asyncio.Queue[TargetResult | BaseException | None] = asyncio.Queue(
            maxsize=max(64, self.options.concurrency * 2)
        )
        workers = min(self.options.concurrency, len(accounts) * len(self.regions))

        async def worker() -> None:
            me = asyncio.current_task()
            assert me is not None
            try:
                while self.stop_reason is None and (target := next(targets, None)) is not None:
                    account = target[0]
                    if account.id not in left:  # its first target: the prefetch may go on
                        left[account.id] = len(self.regions)
                        reached[0] += 1
                        ahead.release()
                    self._fetching.add(me)
                    try:
                        result = await self.fetch(*target)
                    finally:
                        self._fetching.discard(me)
                    left[account.id] -= 1
                    if not left[account.id]:  # its last target: forget its credentials
                        del left[account.id]
                        assert self.broker is not None
                        self.broker.forget(account)
                    await done.put(result)
            except Exception as exc:  # a bug, not an AWS error: surface it
                await done.put(exc)
                return
            await done.put(None)  # this worker is finished

        limit = run_deadline(self.options, len(accounts) * len(self.regions))
        timer = asyncio.get_running_loop().call_later(
            limit, self.stop, f"the {limit:g}s run deadline passed", RUN_DEADLINE
        )
        prefetch = asyncio.create_task(self._prefetch(accounts, ahead, reached))
        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        try:
            finished = 0
            while finished < workers:
                item = await done.get()
                if item is None:
                    finished += 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
            for account, region in targets:  # stopped: the targets no worker started
                yield self._interrupted(account, region, utcnow(), 0)
        finally:
            timer.cancel()
            for t in (prefetch, *tasks):
                t.cancel()
            await asyncio.gather(prefetch, *tasks, return_exceptions=True)

    async def _prefetch(
        self, accounts: list[Account], ahead: asyncio.Semaphore, reached: list[int]
    ) -> None:
        """Assume the accounts' roles ahead of their targets, `prefetch_in_flight` at a time
        and at most PREFETCH_AHEAD accounts before the workers (`ahead`: a worker releases
        it when it takes an account's first target), so credentials kept are bounded too;
        an account the workers reached first is theirs (`reached`).

        Without it every slot of an account waits for that account's AssumeRole before its
        own call: two round trips per target instead of one (benchmarks/README.md, "Measured
        decisions"). The broker makes it one call per account either way; a failure is
        remembered and reported by the targets."""
        assert self.broker is not None
        broker = self.broker
        limit = asyncio.Semaphore(prefetch_in_flight(self.options.concurrency, len(self.regions)))
        running: set[asyncio.Task[None]] = set()

        async def one(account: Account, position: int) -> None:
            try:
                if position >= reached[0]:  # else the workers got there while it was queued
                    await broker.get(account)
            except Exception:  # AssumeRoleFailed (remembered), or anything: its targets see it
                pass
            finally:
                limit.release()

        try:
            for position, account in enumerate(accounts):
                if self.stop_reason is not None:
                    break
                await ahead.acquire()
                if account.role_arn is None or position < reached[0]:
                    continue  # no role, or the workers got there first (they assume it)
                await limit.acquire()
                task = asyncio.create_task(one(account, position))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running, return_exceptions=True)
        finally:
            for task in list(running):
                task.cancel()

    async def fetch(self, account: Account, region: str) -> TargetResult:
        """One account × region: its services, or its error after bounded retries
        (retry.attempts with the collector's policy and the region's breaker)."""
        broker = self.broker
        assert broker is not None
        started = utcnow()
        budget = Budget(self.options.max_attempts)
        try:
            out = await attempts(
                self._clients[region].get_container_services,
                NO_PARAMS,
                self.policy,
                budget=budget,
                credentials=partial(broker.get, account),
                on_expired=partial(broker.invalidate, account),
                breaker=self._health[region],
                caller=account.id,
            )
        except AssumeRoleFailed as exc:
            return self._failed(
                account, region, started, budget.attempts, exc.failure, "AssumeRole", exc.attempts
            )
        if out.stop is None:
            result = self._collected(account, region, started, out.attempts, out.answer)
            if self.after_collect is not None and result.ok:
                result = await self.after_collect(result)
            return result
        if out.stop is Stop.STOPPED:
            return self._interrupted(account, region, started, out.attempts)
        failure = out.failure
        if out.stop is Stop.BROKEN:
            failure = self._breaker_failure(region, out.attempts)  # its verdict says it all
        elif failure is None:  # the deadline passed before any attempt could be made
            failure = Failure("Timeout", "target deadline passed before a call", Kind.TRANSIENT)
        else:
            if failure.code == "Timeout":
                failure = self._timed_out(failure, out.remaining)
            if out.stop is Stop.LATE:
                failure = Failure(
                    failure.code,
                    f"{failure.message} (gave up at the {self.options.deadline:g}s target "
                    "deadline)",
                    failure.kind,
                    failure.status,
                )
        return self._failed(
            account, region, started, out.attempts, failure, "GetContainerServices", out.attempts
        )

    def _timed_out(self, failure: Failure, remaining: float) -> Failure:
        """A Timeout's message says which limit it hit (asyncio's says nothing)."""
        if remaining < self.options.timeout:
            limit = f"the {self.options.deadline:g}s target deadline"
        else:
            limit = f"the {self.options.timeout:g}s call timeout"
        detail = "" if failure.message in ("", "TimeoutError") else f" ({failure.message})"
        return Failure("Timeout", f"no answer within {limit}{detail}", Kind.TRANSIENT)

    def _breaker_failure(self, region: str, attempts: int) -> Failure:
        health = self._health[region]
        tried = f"gave up after {attempts} attempt(s)" if attempts else "not called"
        if health.unreachable > health.timeouts:
            client = self.botocore_clients.get(region)
            endpoint = client.meta.endpoint_url if client is not None else region
            return Failure(
                UNREACHABLE,
                f"{tried}: the {region} endpoint {endpoint} could not be reached: "
                f"{health.unreachable} connections from {len(health.accounts)} accounts were "
                "refused or closed unanswered, and none was answered (region circuit breaker)",
                Kind.TRANSIENT,
            )
        return Failure(
            "Timeout",
            f"{tried}: {health.timeouts} calls to {region} from {len(health.accounts)} "
            "accounts timed out and none was answered (region circuit breaker)",
            Kind.TRANSIENT,
        )

    def _collected(
        self, account: Account, region: str, started: Any, attempts: int, answer: Any
    ) -> TargetResult:
        services = answer.get("containerServices") if isinstance(answer, dict) else None
        if not isinstance(services, list):
            got = "missing" if services is None else f"a JSON {_json_type(services)}"
            failure = Failure(
                UNEXPECTED_SHAPE,
                f"the answer's containerServices is {got}, expected a list: not stored, "
                "the previous good snapshot of this account × region stays the latest",
                Kind.FATAL,
            )
            return self._failed(
                account, region, started, attempts, failure, "GetContainerServices", attempts
            )
        return TargetResult(
            account=account,
            region=region,
            started_at=started,
            finished_at=utcnow(),
            attempts=attempts,
            services=services,
        )

    def _interrupted(
        self, account: Account, region: str, started: Any, attempts: int
    ) -> TargetResult:
        failure = Failure(
            self.stop_code,
            f"collect was stopped ({self.stop_reason or 'interrupted'}) "
            "before this account × region finished",
            Kind.FATAL,
        )
        return self._failed(
            account, region, started, attempts, failure, "GetContainerServices", attempts
        )

    def _failed(
        self,
        account: Account,
        region: str,
        started: Any,
        attempts: int,
        failure: Failure,
        operation: str,
        error_attempts: int,
    ) -> TargetResult:
        now = utcnow()
        return TargetResult(
            account=account,
            region=region,
            started_at=started,
            finished_at=now,
            attempts=attempts,
            services=None,
            error=ErrorRecord(
                occurred_at=now,
                account_id=account.id,
                region=None if operation == "AssumeRole" else region,
                operation=operation,
                error_code=failure.code,
                message=failure.message,
                attempts=error_attempts,
            ),
        )


def _json_type(v: object) -> str:
    """The JSON name of a parsed value's type (for messages: never the value)."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    names: dict[type, str] = {str: "string", dict: "object", list: "array"}
    return names.get(type(v), type(v).__name__)
