"""What a failed AWS call means, how long to wait before the next attempt, and when to stop;
and the one loop (`attempts`) that every AWS call of the tool goes through.

One place decides whether an error is worth retrying, so STS and Lightsail calls agree,
and every code we record is the one botocore reports (or 'Timeout' / 'ConnectionError').

- Throttling, 5xx, timeouts and dropped connections are retried with exponential backoff
  and full jitter (`Backoff`).
- Expired credentials (ExpiredToken…) are refreshed by the caller, then retried (when the
  caller can refresh them: `attempts(on_expired=...)`; otherwise they end the call).
- Everything else (AccessDenied, UnrecognizedClient / InvalidClientTokenId from a region
  the account has not enabled, RegionSetupInProgress, InvalidInput, NotFound, …) is FATAL:
  retrying cannot fix it, so it is recorded once, after one attempt, with AWS's code.

How many attempts (`Budget`): at most `max_attempts` (8 by default) that failed with
anything but throttling; throttled answers do not count against that, but no call makes
more than THROTTLED_FACTOR × max_attempts attempts in all. Throttling says "slower", not
"broken": the collector already slows down as a whole (pacing.Pacer), and with 8 attempts
a storm where half the calls are throttled would still lose one target in 256 (0.5^8);
with 24 it loses one in 16 million. Every attempt also stays within the deadline, which is
what bounds the run's length.

`attempts(call, params, policy, ...)` is that loop: GetContainerServices (both engines), the
--deep calls, AssumeRole, discovery's and doctor's calls all go through it. What differs
between them are parameters: the `Policy` (budget, per-call timeout, the call's own
deadline, backoff, counters, the pacer, the stop signal, how an attempt is signed) and, per
call, the caller's deadline, the credentials of each attempt, what expired credentials do,
and a circuit breaker (`Breaker`).
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

from inventory.aws.bounded import AnswerRefused
from inventory.model import Options, cap_message

if TYPE_CHECKING:
    from inventory.aws.pacing import Pacer

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
# Credentials that expired between signing and arrival: refresh them and try again.
EXPIRED_CODES = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidToken"}
)
TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "RequestTimeoutException", "InternalError", "InternalFailure"}
)


class Kind(enum.Enum):
    THROTTLED = "throttled"  # retry, and slow the whole collector down
    TRANSIENT = "transient"  # 5xx, timeouts, dropped connections: retry
    EXPIRED = "expired"  # refresh credentials, then retry
    FATAL = "fatal"  # retrying cannot help: record once and stop


@dataclass(frozen=True, slots=True)
class Failure:
    code: str
    message: str
    kind: Kind
    status: int | None = None

    @property
    def retryable(self) -> bool:
        return self.kind is not Kind.FATAL


def classify(exc: BaseException) -> Failure:
    """Turn an exception from an aiobotocore call into a Failure with AWS's error code.

    AWS's message is kept up to model.MAX_MESSAGE_CHARS (an error body is the answering
    account's text, of any length)."""
    if isinstance(exc, HTTPClientError) and isinstance(exc.kwargs.get("error"), AnswerRefused):
        exc = exc.kwargs["error"]  # aiobotocore wraps what its HTTP session raised
    if isinstance(exc, AnswerRefused):  # too large, or a redirect (bounded.py): same again
        return Failure(exc.code, str(exc), Kind.FATAL, exc.status)
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        code = cap_message(str(err.get("Code") or "Unknown"), 200)
        message = cap_message(str(err.get("Message") or ""))
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in THROTTLING_CODES or status == 429:
            return Failure(code, message, Kind.THROTTLED, status)
        if code in EXPIRED_CODES:
            return Failure(code, message, Kind.EXPIRED, status)
        if code in TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
            return Failure(code, message, Kind.TRANSIENT, status)
        return Failure(code, message, Kind.FATAL, status)
    if isinstance(exc, asyncio.TimeoutError | ReadTimeoutError | ConnectTimeoutError):
        return Failure("Timeout", _short(exc) or "no answer within the timeout", Kind.TRANSIENT)
    if isinstance(
        exc,
        EndpointConnectionError
        | ConnectionClosedError
        | HTTPClientError
        | aiohttp.ClientError
        | ConnectionError,
    ):
        return Failure("ConnectionError", _short(exc), Kind.TRANSIENT)
    if isinstance(
        exc, ResponseParserError | AttributeError | TypeError | KeyError | IndexError | ValueError
    ):
        # botocore's parser choking on an answer of an unexpected shape (a string where
        # the model says list, invalid XML, ...): the answer, not our code, is what is wrong.
        # Its text is never recorded: parser errors quote the body, and a body may hold an
        # STS secret key or a container's environment values.
        return Failure(
            "ResponseParserError",
            f"the answer could not be parsed ({type(exc).__name__}; its text is withheld: "
            "an answer may hold secrets)",
            Kind.FATAL,
        )
    if isinstance(exc, BotoCoreError):
        return Failure(type(exc).__name__, _short(exc), Kind.FATAL)
    own = type(exc).__module__.startswith("inventory")
    return Failure(
        type(exc).__name__,
        _short(exc) if own else f"unexpected {type(exc).__name__} (its text is withheld)",
        Kind.FATAL,
    )


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


THROTTLED_FACTOR = 3  # a throttled attempt costs 1/3 of a failed one (see the module doc)


@dataclass(slots=True)
class Budget:
    """The attempts one call may make. `spend(failure)` after each failed attempt says
    whether another attempt is allowed (the caller also checks its deadline)."""

    max_attempts: int
    attempts: int = 0  # made so far (failed or not)
    failures: int = 0  # failed attempts that were not throttled
    throttled_factor: int = THROTTLED_FACTOR  # the throttle budget: limit = this × max_attempts

    @property
    def limit(self) -> int:
        """The most attempts a call can ever make."""
        return self.max_attempts * self.throttled_factor

    def spend(self, failure: Failure) -> bool:
        """Account for one failed attempt; True when another is allowed."""
        if not failure.retryable:
            return False
        if failure.kind is not Kind.THROTTLED:
            self.failures += 1
        return self.failures < self.max_attempts and self.attempts < self.limit


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog): U(0, min(cap, base·2^n)).

    A throttled attempt waits at most `throttle_cap`: the pacer already slows the whole
    collector down (pacing.py), and a long per-target pause on top of it only makes the
    unluckiest target of a storm the length of the run (benchmarks/README.md, "Measured
    decisions").
    """

    base: float = 0.1
    cap: float = 10.0
    throttle_cap: float = 2.0

    def ceiling(self, attempt: int, throttled: bool = False) -> float:
        """The longest pause after the `attempt`-th failed attempt (1-based)."""
        cap = min(self.cap, self.throttle_cap) if throttled else self.cap
        return min(cap, self.base * (2 ** min(62, max(0, attempt - 1))))

    def delay(
        self, attempt: int, rng: random.Random | None = None, *, throttled: bool = False
    ) -> float:
        """Seconds to wait after the `attempt`-th failed attempt (1-based): U(0, ceiling)."""
        return (rng or random).uniform(0, self.ceiling(attempt, throttled))


@dataclass(slots=True)
class CallCounter:
    """Every HTTP request the run makes, and how many of them were retries."""

    api_calls: int = 0
    retries: int = 0


class CallFailed(Exception):
    """One AWS call failed for good (after its retries)."""

    def __init__(self, operation: str, failure: Failure, attempts: int):
        self.operation, self.failure, self.attempts = operation, failure, attempts
        self.ou: str | None = None  # discovery: the org_ous entry being listed, if any
        super().__init__(f"{operation}: {failure.code}: {failure.message}")


@dataclass(slots=True)
class Deadline:
    """A time.monotonic() after which no attempt starts and no backoff pause ends.

    Time spent queued for the rate (`Policy.pacer`) moves it on: that is the run slowing
    down as a whole, not the call being slow. Several calls may share one (--deep: the deep
    calls of a target), so that it is moved for all of them."""

    at: float


@dataclass(slots=True)
class Breaker:
    """A circuit breaker for one endpoint (collect: one per region).

    It opens (`broken`) once `max_failures` calls to the endpoint timed out or found no
    connection, from at least `min_callers` callers (accounts), while not one of its calls
    had an answer (of any status): the endpoint hangs, or cannot be reached. An open
    breaker ends the attempts of every call to it before the next one (`Stop.BROKEN`). One
    caller alone never opens it, nor does anything after an answer.
    """

    max_failures: int
    min_callers: int
    answered: int = 0  # calls that got an HTTP answer (any status)
    timeouts: int = 0  # calls that timed out
    unreachable: int = 0  # calls that found no connection (refused, no DNS, closed unanswered)
    accounts: set[str] = field(default_factory=set)  # callers whose calls did either

    @property
    def broken(self) -> bool:
        return (
            self.answered == 0
            and self.timeouts + self.unreachable >= self.max_failures
            and len(self.accounts) >= self.min_callers
        )

    def failed(self, failure: Failure, caller: str) -> None:
        """Count one failed attempt of `caller` (an account id)."""
        if failure.code == "Timeout":
            self.timeouts += 1
            self.accounts.add(caller)
        elif failure.status is not None:
            self.answered += 1
        elif failure.code == "ConnectionError":
            self.unreachable += 1
            self.accounts.add(caller)


class Stop(enum.Enum):
    """Why a call's attempts ended without an answer."""

    FAILED = "failed"  # a failure retrying cannot fix, or the budget is spent
    LATE = "late"  # the deadline left no time for the first or the next attempt
    BROKEN = "broken"  # the breaker is open: no further attempt
    STOPPED = "stopped"  # the caller's stop: no new attempt, the one in flight cancelled


@dataclass(slots=True)
class Outcome:
    """How a call's attempts ended: its answer (`stop` is None), or why not."""

    stop: Stop | None
    failure: Failure | None  # the last failed attempt's (None: no attempt failed)
    attempts: int  # made, failed or not
    remaining: float  # seconds the deadline left the last attempt (at its start)
    answer: Any = None
    own_deadline: bool = False  # LATE at the call's own deadline, not (earlier) the caller's


@dataclass(frozen=True, slots=True)
class Policy:
    """How one caller's calls are retried: the same for all of them.

    The budget (`max_attempts`, `throttled_factor`: see Budget), the per-call `timeout`,
    each call's own `deadline` (seconds from its start; None: only the caller's), the
    `backoff`, the `counter` (every attempt counts in api_calls, every one after the first
    in retries), and the reactions shared by every call: the `pacer` (taken before each
    attempt, its wait moving the deadlines on; throttling slows it, an answer speeds it
    up), the `stopped` signal (when it says stop, no new attempt starts and a cancellation
    is the stop's), and `sign` (signs an attempt with the credentials `attempts` got from
    its `credentials` hook). `sleep` and `clock` (time.monotonic) are injectable for tests.
    """

    counter: CallCounter
    max_attempts: int = 8
    throttled_factor: int = THROTTLED_FACTOR
    timeout: float = 10.0
    deadline: float | None = None
    backoff: Backoff = Backoff()
    pacer: Pacer | None = None
    stopped: Callable[[], bool] | None = None
    sign: Callable[[Any], AbstractContextManager[Any]] | None = None
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def of(cls, options: Options, counter: CallCounter, **overrides: Any) -> Policy:
        """The policy of the run's options: their max_attempts, timeout and deadline."""
        settings: dict[str, Any] = {
            "max_attempts": options.max_attempts,
            "timeout": options.timeout,
            "deadline": options.deadline,
        }
        settings.update(overrides)
        return cls(counter, **settings)


NO_PARAMS: Mapping[str, Any] = MappingProxyType({})


async def attempts(
    call: Callable[..., Awaitable[Any]],
    params: Mapping[str, Any],
    policy: Policy,
    *,
    budget: Budget | None = None,
    deadline: Deadline | None = None,
    credentials: Callable[[float], Awaitable[Any]] | None = None,
    on_expired: Callable[[Any], object] | None = None,
    breaker: Breaker | None = None,
    caller: str = "",
) -> Outcome:
    """Call `call(**params)` until it answers or has to stop: the one retry loop.

    Returns an Outcome whatever AWS or the network did. What propagates: an exception of
    `credentials` (e.g. AssumeRoleFailed: the caller's to report) and a cancellation that
    is not the stop's.

    Before each attempt, in this order: `policy.stopped()` (Stop.STOPPED); the `breaker`
    (Stop.BROKEN); `credentials(end)`, given the deadline, for this attempt's credentials;
    the deadline, the earlier of the caller's (`deadline`) and the call's own
    (`policy.deadline`): no attempt starts after it (Stop.LATE); the pacer's slot.

    An attempt: counted in `budget` (made here when None) and the policy's counter, signed
    (`policy.sign(creds)`), within `policy.timeout` and what is left of the deadline.

    A failed attempt (`classify`): throttling slows the pacer; expired credentials go to
    `on_expired(creds)` and are retried (without `on_expired` they end the call: Stop.FAILED);
    the breaker counts it for `caller`; the budget spends it (Stop.FAILED when spent or
    fatal); then a backoff pause, unless it would end at or after the deadline (Stop.LATE).

    A cancellation after `policy.stopped()` says stop is the stop's: Stop.STOPPED, with the
    attempts made (the task's cancellation is taken back, so that it can report).
    """
    clock = policy.clock
    counter = policy.counter
    pacer = policy.pacer
    stopped = policy.stopped
    if budget is None:
        budget = Budget(policy.max_attempts, throttled_factor=policy.throttled_factor)
    own = None if policy.deadline is None else clock() + policy.deadline
    failure: Failure | None = None
    creds: Any = None
    remaining = 0.0
    try:
        while True:
            if stopped is not None and stopped():
                return Outcome(Stop.STOPPED, failure, budget.attempts, remaining)
            if breaker is not None and breaker.broken:
                return Outcome(Stop.BROKEN, failure, budget.attempts, remaining)
            if deadline is None:
                assert own is not None, "a call needs a deadline: the caller's or its own"
                end = own
            else:
                end = deadline.at if own is None else min(own, deadline.at)
            if credentials is not None:
                creds = await credentials(end)
            if end - clock() <= 0:
                return _late(failure, budget, remaining, deadline, own)
            if pacer is not None:
                waited = await pacer.acquire()  # queued for the rate: not the call's time
                end += waited
                if deadline is not None:
                    deadline.at += waited
                if own is not None:
                    own += waited
            remaining = end - clock()
            budget.attempts += 1
            counter.api_calls += 1
            if budget.attempts > 1:
                counter.retries += 1
            try:
                async with asyncio.timeout(min(policy.timeout, max(0.001, remaining))):
                    if creds is None or policy.sign is None:
                        answer = await call(**params)
                    else:
                        with policy.sign(creds):
                            answer = await call(**params)
            except Exception as exc:
                failure = classify(exc)
                kind = failure.kind
                if kind is Kind.THROTTLED:
                    if pacer is not None:
                        pacer.on_throttle()
                elif kind is Kind.EXPIRED:
                    if on_expired is None:
                        return Outcome(Stop.FAILED, failure, budget.attempts, remaining)
                    on_expired(creds)
                if breaker is not None:
                    breaker.failed(failure, caller)
                if not budget.spend(failure):
                    return Outcome(Stop.FAILED, failure, budget.attempts, remaining)
                pause = policy.backoff.delay(budget.attempts, throttled=kind is Kind.THROTTLED)
                if clock() + pause >= end:
                    return _late(failure, budget, remaining, deadline, own)
                await policy.sleep(pause)
                continue
            if breaker is not None:
                breaker.answered += 1
            if pacer is not None:
                pacer.on_success()
            return Outcome(None, None, budget.attempts, remaining, answer)
    except asyncio.CancelledError:
        if stopped is None or not stopped():
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return Outcome(Stop.STOPPED, failure, budget.attempts, remaining)


def _late(
    failure: Failure | None,
    budget: Budget,
    remaining: float,
    deadline: Deadline | None,
    own: float | None,
) -> Outcome:
    own_deadline = own is not None and (deadline is None or own <= deadline.at)
    return Outcome(Stop.LATE, failure, budget.attempts, remaining, own_deadline=own_deadline)


class Calls:
    """Makes one-off AWS calls (STS, Organizations, GetRegions, ...) through `attempts`, with
    the run's budget, per-call timeout and each call's own deadline (`Options.deadline`),
    and counts every attempt. Expired credentials end a call: they are the base identity's,
    not ours to refresh."""

    def __init__(self, options: Options, counter: CallCounter | None = None):
        self.options = options
        self.counter = counter or CallCounter()
        self.policy = Policy.of(options, self.counter)

    async def __call__(
        self, operation: str, fn: Callable[..., Awaitable[Any]], **params: Any
    ) -> dict[str, Any]:
        out = await attempts(fn, params, self.policy)
        if out.stop is not None:
            failure = out.failure or Failure(
                "Timeout", "the deadline passed before a call", Kind.TRANSIENT
            )
            raise CallFailed(operation, failure, out.attempts)
        return dict(out.answer)
