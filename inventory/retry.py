"""What a failed AWS call means, how long to wait before the next attempt, and when to stop.

One place decides whether an error is worth retrying, so STS and Lightsail calls agree,
and every code we record is the one botocore reports (or 'Timeout' / 'ConnectionError').

- Throttling, 5xx, timeouts and dropped connections are retried with exponential backoff
  and full jitter (`Backoff`).
- Expired credentials (ExpiredToken…) are refreshed by the caller, then retried.
- Everything else (AccessDenied, UnrecognizedClient / InvalidClientTokenId from a region
  the account has not enabled, RegionSetupInProgress, InvalidInput, NotFound, …) is FATAL:
  retrying cannot fix it, so it is recorded once, after one attempt, with AWS's code.

How many attempts (`Budget`): at most `max_attempts` (8 by default) that failed with
anything but throttling; throttled answers do not count against that, but no call makes
more than THROTTLED_FACTOR × max_attempts attempts in all. Throttling says "slower", not
"broken": the collector already slows down as a whole (pacing.Pacer), and with 8 attempts
a storm where half the calls are throttled would still lose one target in 256 (0.5^8);
with 24 it loses one in 16 million. Every attempt also stays within the per-target
deadline, which is what bounds the run's length.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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

from inventory.answers import AnswerRefused
from inventory.model import cap_message

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
    if isinstance(exc, AnswerRefused):  # too large, or a redirect (answers.py): same again
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

    @property
    def limit(self) -> int:
        """The most attempts a call can ever make."""
        return self.max_attempts * THROTTLED_FACTOR

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
    collector down (pacing.py), and a long per-target pause on top of it only made the
    unluckiest target of a storm the length of the run (measured: a 2.5 s run became 26 s
    at 50 % throttling with cap 10 s).
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


class Calls:
    """Makes one-off AWS calls (STS, Organizations, GetRegions, ...) with the collector's
    retry rules: attempt budget, backoff with jitter, the per-target deadline; and counts
    every attempt. The hot call, GetContainerServices, has its own loop in collect.py
    (circuit breaker, global pacer), and AssumeRole in credentials.py (shared waits)."""

    def __init__(self, options: Any, counter: CallCounter | None = None):
        self.options = options
        self.counter = counter or CallCounter()
        self.backoff = Backoff()

    async def __call__(
        self, operation: str, fn: Callable[..., Awaitable[Any]], **params: Any
    ) -> dict[str, Any]:
        budget = Budget(self.options.max_attempts)
        end = time.monotonic() + self.options.deadline
        while True:
            budget.attempts += 1
            self.counter.api_calls += 1
            if budget.attempts > 1:
                self.counter.retries += 1
            remaining = end - time.monotonic()
            try:
                async with asyncio.timeout(max(0.001, min(self.options.timeout, remaining))):
                    answer = await fn(**params)
                return dict(answer)
            except Exception as exc:
                failure = classify(exc)
                if failure.kind is Kind.EXPIRED or not budget.spend(failure):
                    raise CallFailed(operation, failure, budget.attempts) from None
                pause = self.backoff.delay(
                    budget.attempts, throttled=failure.kind is Kind.THROTTLED
                )
                if time.monotonic() + pause >= end:
                    raise CallFailed(operation, failure, budget.attempts) from None
                await asyncio.sleep(pause)
