"""Credentials: the base identity from the standard AWS chain, and one assumed role per account.

A role is assumed once per account, shared by all that account's regions, and refreshed
before it expires (single-flight: concurrent regions wait on one STS call). The Lightsail
clients are shared by every account of a region; the credentials a request is signed
with are read from a ContextVar that each target's task sets (`use`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiobotocore.credentials import AioCredentials
from botocore.credentials import ReadOnlyCredentials

from inventory.model import Account, Options
from inventory.retry import Backoff, Failure, Kind, classify

_CURRENT: ContextVar[ReadOnlyCredentials] = ContextVar("inventory_credentials")


class ContextCredentials(AioCredentials):
    """A credentials object whose frozen value is whatever the running task set with `use`."""

    method = "inventory-context"

    def __init__(self) -> None:
        super().__init__("context", "context", None)

    async def get_frozen_credentials(self) -> ReadOnlyCredentials:
        try:
            return _CURRENT.get()
        except LookupError:
            raise RuntimeError("a shared client was called outside credentials.use()") from None


def current() -> ReadOnlyCredentials:
    """The credentials set by `use` in the running task."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError("a shared client was called outside credentials.use()") from None


@contextlib.contextmanager
def use(creds: ReadOnlyCredentials) -> Iterator[None]:
    """Sign the calls made in this block (in this task) with `creds`."""
    token = _CURRENT.set(creds)
    try:
        yield
    finally:
        _CURRENT.reset(token)


class AssumeRoleFailed(Exception):
    """The account's role could not be assumed; every region of the account fails with it."""

    def __init__(self, account: Account, failure: Failure, attempts: int):
        self.account, self.failure, self.attempts = account, failure, attempts
        super().__init__(f"AssumeRole {account.role_arn}: {failure.code}: {failure.message}")


@dataclass(slots=True)
class _Entry:
    creds: ReadOnlyCredentials
    expires: float | None  # epoch seconds; None = never (base credentials)
    lifetime: float | None


@dataclass(slots=True)
class CallCounter:
    """Every HTTP request the run makes, and how many of them were retries."""

    api_calls: int = 0
    retries: int = 0


class CredentialBroker:
    """Hands out frozen credentials per account: assumed once, cached, refreshed early."""

    def __init__(
        self,
        sts: Any,
        base: ReadOnlyCredentials,
        options: Options,
        counter: CallCounter,
        *,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
    ):
        self._sts = sts
        self._base = base
        self._options = options
        self._counter = counter
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._cache: dict[str, _Entry] = {}
        self._failed: dict[str, AssumeRoleFailed] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.assume_role_calls = 0

    def _fresh(self, entry: _Entry) -> bool:
        if entry.expires is None:
            return True
        remaining = entry.expires - self._clock()
        # Refresh when less than a quarter of the lifetime (at most 5 minutes) is left.
        margin = min(300.0, (entry.lifetime or 3600.0) / 4)
        return remaining > margin

    async def get(self, account: Account) -> ReadOnlyCredentials:
        """Credentials for `account`; raises AssumeRoleFailed (remembered for the run)."""
        if account.role_arn is None:
            return self._base
        entry = self._cache.get(account.id)
        if entry is not None and self._fresh(entry):
            return entry.creds
        if account.id in self._failed:
            raise self._failed[account.id]
        lock = self._locks.setdefault(account.id, asyncio.Lock())
        async with lock:
            entry = self._cache.get(account.id)
            if entry is not None and self._fresh(entry):
                return entry.creds
            if account.id in self._failed:
                raise self._failed[account.id]
            try:
                entry = await self._assume(account)
            except AssumeRoleFailed as exc:
                self._failed[account.id] = exc
                raise
            self._cache[account.id] = entry
            return entry.creds

    def invalidate(self, account: Account, creds: ReadOnlyCredentials) -> None:
        """AWS said these credentials expired: the next `get` assumes the role again."""
        entry = self._cache.get(account.id)
        if entry is not None and entry.creds.access_key == creds.access_key:
            del self._cache[account.id]

    async def _assume(self, account: Account) -> _Entry:
        assert account.role_arn is not None
        params: dict[str, Any] = {
            "RoleArn": account.role_arn,
            "RoleSessionName": self._options.session_name,
        }
        if account.external_id:
            params["ExternalId"] = account.external_id
        attempts = 0
        started = time.monotonic()
        while True:
            attempts += 1
            self._counter.api_calls += 1
            self.assume_role_calls += 1
            if attempts > 1:
                self._counter.retries += 1
            try:
                with use(self._base):
                    answer = await asyncio.wait_for(
                        self._sts.assume_role(**params), self._options.timeout
                    )
            except Exception as exc:  # classified below; nothing is swallowed silently
                failure = classify(exc)
                spent = time.monotonic() - started
                if (
                    failure.kind is Kind.FATAL
                    or failure.kind is Kind.EXPIRED  # base credentials expired: not ours to fix
                    or attempts >= self._options.max_attempts
                    or spent >= self._options.deadline
                ):
                    raise AssumeRoleFailed(account, failure, attempts) from None
                await asyncio.sleep(self._backoff.delay(attempts))
                continue
            c = answer["Credentials"]
            expiration = c.get("Expiration")
            expires = expiration.timestamp() if isinstance(expiration, dt.datetime) else None
            now = self._clock()
            return _Entry(
                creds=ReadOnlyCredentials(
                    c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]
                ),
                expires=expires,
                lifetime=(expires - now) if expires is not None else None,
            )
