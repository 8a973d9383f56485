"""Credentials: one assumed role per account, over the base identity (session.base_source:
the standard AWS chain, read fresh for every AssumeRole).

A role is assumed once per account, shared by all that account's regions, and refreshed
before it expires (single-flight: concurrent regions wait on one STS call). The Lightsail
clients are shared by every account of a region; the credentials a request is signed
with are read from a ContextVar that each target's task sets (`use`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiobotocore.credentials import AioCredentials
from botocore.credentials import ReadOnlyCredentials

from inventory.aws.retry import (
    Backoff,
    Budget,
    CallCounter,
    Deadline,
    Failure,
    Kind,
    Policy,
    Stop,
    attempts,
)
from inventory.model import Account, Options

_CURRENT: ContextVar[ReadOnlyCredentials] = ContextVar("inventory_credentials")

# At DEBUG, botocore logs what goes over the wire: request headers and signing input (session
# tokens), answer bodies (AssumeRole's secret keys, containers' environment values). Those
# records are dropped where they are made, whatever logging the embedding program configures.
WIRE_LOGGERS = ("botocore.auth", "botocore.endpoint", "botocore.parsers")


def _not_wire_debug(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG


for _name in WIRE_LOGGERS:
    logging.getLogger(_name).addFilter(_not_wire_debug)


class ContextCredentials(AioCredentials):
    """A credentials object whose frozen value is whatever the running task set with `use`."""

    method = "inventory-context"

    def __init__(self) -> None:
        super().__init__("context", "context", None)

    async def get_frozen_credentials(self) -> ReadOnlyCredentials:
        return current()


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


SESSION_NAME_MAX = 64  # STS AssumeRole RoleSessionName: 2-64 characters of [\w+=,.@-]
SESSION_RUN_SEPARATOR = "@"


def run_session_name(session_name: str, run_id: str) -> str:
    """The RoleSessionName of run `run_id`: `<session_name>@<run_id>`, so that CloudTrail in a
    member account tells the runs apart. At most 64 characters (STS's limit): the configured
    part is shortened, never the run id (run ids are at most 49 characters of letters, digits,
    `_` and `-`, all allowed in a session name)."""
    room = SESSION_NAME_MAX - len(SESSION_RUN_SEPARATOR) - len(run_id)
    if room < 2:
        raise ValueError(f"run id {run_id!r} leaves no room for a session name")
    return session_name[:room] + SESSION_RUN_SEPARATOR + run_id


def assume_role_params(
    role_arn: str, session_name: str, external_id: str | None = None
) -> dict[str, Any]:
    """STS AssumeRole's parameters, as every caller here sends them."""
    params: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": session_name}
    if external_id:
        params["ExternalId"] = external_id
    return params


def from_sts(answer: dict[str, Any]) -> ReadOnlyCredentials:
    """The credentials in an AssumeRole answer."""
    c = answer["Credentials"]
    return ReadOnlyCredentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])


class AssumeRoleFailed(Exception):
    """The account's role could not be assumed; every region of the account fails with it.

    `final`: False when only the caller's own deadline ran out (another region of the
    account may still try); True when the account as a whole failed (remembered).
    """

    def __init__(self, account: Account, failure: Failure, attempts: int, final: bool = True):
        self.account, self.failure, self.attempts, self.final = account, failure, attempts, final
        super().__init__(f"AssumeRole {account.role_arn}: {failure.code}: {failure.message}")


@dataclass(slots=True)
class _Entry:
    creds: ReadOnlyCredentials
    expires: float | None  # epoch seconds; None = never (base credentials)
    lifetime: float | None


REFRESH_MARGIN_MAX = 300.0  # refresh at most this many seconds before expiry...
REFRESH_MARGIN_SHARE = 0.25  # ...or when less than this share of the lifetime is left


class CredentialBroker:
    """Hands out frozen credentials per account: assumed once, cached, refreshed early.

    - One AssumeRole per account per credential lifetime: regions of an account share the
      cached credentials; when they need new ones at once, one of them calls STS and the
      others wait for its answer (single-flight, one lock per account).
    - Refreshed before expiry: when less than a quarter of the lifetime (at most 5
      minutes) is left, on `clock` (epoch seconds; inject one to test without waiting).
    - `invalidate`: AWS said ExpiredToken anyway (clock skew, revoked session): the next
      `get` assumes the role again.
    - A failed AssumeRole is remembered for the run (every region of the account fails
      with it, without calling STS again), unless only the caller's deadline ran out.
    """

    def __init__(
        self,
        sts: Any,
        base: Any,
        options: Options,
        counter: CallCounter,
        *,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
    ):
        self._sts = sts
        self._base = base
        self._options = options
        self._clock = clock
        # AssumeRole's retries: the run's budget and timeout, its own deadline (the caller's
        # may be earlier), expired base credentials end it (not ours to refresh), no pacer.
        self._policy = Policy.of(options, counter, backoff=backoff or Backoff())
        self._cache: dict[str, _Entry] = {}
        self._failed: dict[str, AssumeRoleFailed] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._issued: dict[str, list[str]] = {}  # account -> access key ids handed out
        # Called with each access key id of an account when it is forgotten (the lean
        # engine drops the signing keys it derived for them).
        self.on_forget: Callable[[str], None] | None = None
        self.assume_role_calls = 0
        self.refreshes = 0  # AssumeRole calls that replaced credentials we already had

    async def base(self) -> ReadOnlyCredentials:
        """The base identity's credentials now. `base` is frozen credentials, or an object
        whose `get_frozen_credentials()` refreshes them (an instance role, SSO: they expire
        during a long night)."""
        if isinstance(self._base, ReadOnlyCredentials):
            return self._base
        frozen: ReadOnlyCredentials = await self._base.get_frozen_credentials()
        return frozen

    def _fresh(self, entry: _Entry) -> bool:
        if entry.expires is None:
            return True
        remaining = entry.expires - self._clock()
        margin = min(REFRESH_MARGIN_MAX, (entry.lifetime or 3600.0) * REFRESH_MARGIN_SHARE)
        return remaining > margin

    async def get(self, account: Account, deadline: float | None = None) -> ReadOnlyCredentials:
        """Credentials for `account`; raises AssumeRoleFailed.

        `deadline` (time.monotonic()): the caller's; waiting for another region's
        AssumeRole and our own attempts stop there (AssumeRoleFailed, not final).
        """
        if account.role_arn is None:
            return await self.base()
        entry = self._cache.get(account.id)
        if entry is not None and self._fresh(entry):
            return entry.creds
        if account.id in self._failed:
            raise self._failed[account.id]
        lock = self._locks.setdefault(account.id, asyncio.Lock())
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            async with asyncio.timeout(remaining):
                await lock.acquire()
        except TimeoutError:
            raise AssumeRoleFailed(
                account,
                Failure(
                    "Timeout", "the target deadline passed waiting for AssumeRole", Kind.TRANSIENT
                ),
                0,
                final=False,
            ) from None
        try:
            entry = self._cache.get(account.id)
            if entry is not None and self._fresh(entry):
                return entry.creds
            if account.id in self._failed:
                raise self._failed[account.id]
            try:
                new = await self._assume(account, deadline)
            except AssumeRoleFailed as exc:
                if exc.final:
                    self._failed[account.id] = exc
                raise
            if entry is not None:
                self.refreshes += 1
            self._cache[account.id] = new
            self._issued.setdefault(account.id, []).append(new.creds.access_key)
            return new.creds
        finally:
            lock.release()

    def forget(self, account: Account) -> None:
        """Every target of `account` is done: drop what is kept for it, so the broker's
        memory follows the accounts in flight, not the fleet (`on_forget` hears of each
        access key id it had handed out for the account)."""
        self._cache.pop(account.id, None)
        issued = self._issued.pop(account.id, ())
        if self.on_forget is not None:
            for access_key in issued:
                self.on_forget(access_key)
        self._failed.pop(account.id, None)
        lock = self._locks.get(account.id)
        if lock is not None and not lock.locked():
            del self._locks[account.id]

    def invalidate(self, account: Account, creds: ReadOnlyCredentials) -> None:
        """AWS said these credentials expired: the next `get` assumes the role again."""
        entry = self._cache.get(account.id)
        if entry is not None and entry.creds.access_key == creds.access_key:
            entry.expires = self._clock()  # stale: `get` refreshes (and counts a refresh)

    async def _assume(self, account: Account, deadline: float | None) -> _Entry:
        assert account.role_arn is not None
        params = assume_role_params(
            account.role_arn, self._options.session_name, account.external_id
        )
        budget = Budget(self._options.max_attempts)
        try:
            out = await attempts(
                self._assume_role,
                params,
                self._policy,
                budget=budget,
                deadline=None if deadline is None else Deadline(deadline),
            )
        finally:
            self.assume_role_calls += budget.attempts
        if out.stop is not None:
            failure = out.failure
            if failure is None:  # the deadline passed before a call
                failure = Failure(
                    "Timeout", "no answer from STS before the deadline", Kind.TRANSIENT
                )
            # only the caller's deadline ran out: another region of the account may try
            final = out.stop is not Stop.LATE or out.own_deadline
            raise AssumeRoleFailed(account, failure, out.attempts, final=final)
        answer = out.answer
        c = answer["Credentials"]
        expiration = c.get("Expiration")
        expires = expiration.timestamp() if isinstance(expiration, dt.datetime) else None
        now = self._clock()
        return _Entry(
            creds=from_sts(answer),
            expires=expires,
            lifetime=(expires - now) if expires is not None else None,
        )

    async def _assume_role(self, **params: Any) -> Any:
        """One AssumeRole attempt, signed with the base identity's credentials of now."""
        base = await self.base()
        with use(base):
            return await self._sts.assume_role(**params)
