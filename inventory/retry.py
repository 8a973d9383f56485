"""What a failed AWS call means, and how long to wait before the next attempt.

One place decides whether an error is worth retrying, so STS and Lightsail calls agree,
and every code we record is the one botocore reports (or 'Timeout' / 'ConnectionError').
"""

from __future__ import annotations

import asyncio
import enum
import random
from dataclasses import dataclass

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
    """Turn an exception from an aiobotocore call into a Failure with AWS's error code."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code") or "Unknown")
        message = str(err.get("Message") or "")
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
    if isinstance(exc, BotoCoreError):
        return Failure(type(exc).__name__, _short(exc), Kind.FATAL)
    return Failure(type(exc).__name__, _short(exc), Kind.FATAL)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog): U(0, min(cap, base·2^n))."""

    base: float = 0.1
    cap: float = 10.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `attempt`-th failed attempt (1-based)."""
        ceiling = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        return (rng or random).uniform(0, ceiling)
