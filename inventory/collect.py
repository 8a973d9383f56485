"""The async fan-out: GetContainerServices in every region of every account.

Bounded concurrency (a fixed pool of worker tasks), a global adaptive rate (pacing.Pacer),
retries with backoff and jitter for throttling, 5xx and dropped connections, a timeout
per call and a deadline per account × region. One TargetResult per account × region,
streamed through a bounded queue as they finish: the fleet is never held in memory.

Clients: one aiobotocore Lightsail client per region, shared by every account; each
task signs with its own account's credentials through credentials.use(). Botocore's own
retries are off (one attempt per call) so that every attempt is counted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.credentials import ReadOnlyCredentials

from inventory import credentials as creds_mod
from inventory.credentials import AssumeRoleFailed, CallCounter, CredentialBroker
from inventory.lean import USER_AGENT, LeanHTTP, LeanLightsailClient
from inventory.model import Account, ErrorRecord, Options, TargetResult, utcnow
from inventory.pacing import Pacer
from inventory.retry import Backoff, Failure, Kind, classify


class _SharedCredentialsSession(AioSession):
    """An aiobotocore session whose clients sign with the credentials of the calling task."""

    def __init__(self) -> None:
        super().__init__()
        self._context_credentials = creds_mod.ContextCredentials()

    async def get_credentials(self) -> Any:
        return self._context_credentials


def client_config(options: Options, pool: int) -> AioConfig:
    return AioConfig(
        connect_timeout=options.timeout,
        read_timeout=options.timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max(10, pool),
    )


async def base_credentials() -> tuple[ReadOnlyCredentials, AioSession]:
    """The base identity from the standard AWS chain (env, profile, SSO, IMDS, ...)."""
    session = AioSession()
    found = await session.get_credentials()
    if found is None:
        from inventory.errors import UsageError

        raise UsageError(
            "no AWS credentials found in the standard chain "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, SSO, instance role)"
        )
    return await found.get_frozen_credentials(), session


class Collector:
    """Collects every (account, region) target; use as `async with` and iterate `results()`."""

    def __init__(self, options: Options, regions: Iterable[str], *, clock: Any = time.time):
        self.options = options
        self.regions = tuple(regions)
        self.counter = CallCounter()
        self.pacer = Pacer(options.rate)
        self.backoff = Backoff()
        self._clock = clock
        self._session = _SharedCredentialsSession()
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self._sts: Any = None
        self.base: ReadOnlyCredentials | None = None
        self.broker: CredentialBroker | None = None

    async def __aenter__(self) -> Collector:
        self.base, _ = await base_credentials()
        cfg = client_config(self.options, self.options.concurrency)
        self._sts = await self._stack.enter_async_context(
            self._session.create_client("sts", config=cfg, region_name=self._sts_region())
        )
        lean_http = None
        if self.options.engine == "lean":
            lean_http = await self._stack.enter_async_context(
                LeanHTTP(limit=max(10, self.options.concurrency), timeout=self.options.timeout)
            )
        for region in self.regions:
            client = await self._stack.enter_async_context(
                self._session.create_client("lightsail", region_name=region, config=cfg)
            )
            if lean_http is not None:  # botocore still resolves the endpoint
                client = LeanLightsailClient(
                    lean_http, region, client.meta.endpoint_url, USER_AGENT
                )
            self._clients[region] = client
        self.broker = CredentialBroker(
            self._sts, self.base, self.options, self.counter, clock=self._clock
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _sts_region(self) -> str:
        return self._session.get_config_variable("region") or "us-east-1"

    async def caller_account(self) -> str:
        """The base identity's account id (GetCallerIdentity), for runs without a file."""
        assert self.base is not None
        self.counter.api_calls += 1
        with creds_mod.use(self.base):
            answer = await asyncio.wait_for(self._sts.get_caller_identity(), self.options.timeout)
        return str(answer["Account"])

    async def results(self, accounts: Iterable[Account]) -> AsyncIterator[TargetResult]:
        """Yield one TargetResult per account × region as each finishes."""
        targets: asyncio.Queue[tuple[Account, str] | None] = asyncio.Queue()
        done: asyncio.Queue[TargetResult | BaseException] = asyncio.Queue(
            maxsize=max(64, self.options.concurrency * 2)
        )
        n = 0
        for account in accounts:  # account-major: an account's regions run close together
            for region in self.regions:
                targets.put_nowait((account, region))
                n += 1
        workers = min(self.options.concurrency, n)
        for _ in range(workers):
            targets.put_nowait(None)

        async def worker() -> None:
            while (item := targets.get_nowait()) is not None:
                try:
                    result = await self.fetch(*item)
                except BaseException as exc:  # a bug, not an AWS error: surface it
                    await done.put(exc)
                    raise
                await done.put(result)

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        try:
            for _ in range(n):
                item = await done.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def fetch(self, account: Account, region: str) -> TargetResult:
        """One account × region: its services, or its error after bounded retries."""
        assert self.broker is not None
        started = utcnow()
        t0 = time.monotonic()
        deadline = t0 + self.options.deadline
        client = self._clients[region]
        attempts = 0
        failure: Failure | None = None
        while True:
            try:
                creds = await self.broker.get(account)
            except AssumeRoleFailed as exc:
                return self._failed(
                    account, region, started, attempts, exc.failure, "AssumeRole", exc.attempts
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self.pacer.acquire()
            attempts += 1
            self.counter.api_calls += 1
            if attempts > 1:
                self.counter.retries += 1
            try:
                with creds_mod.use(creds):
                    answer = await asyncio.wait_for(
                        client.get_container_services(),
                        min(self.options.timeout, max(0.001, remaining)),
                    )
            except Exception as exc:
                failure = classify(exc)
                if failure.kind is Kind.THROTTLED:
                    self.pacer.on_throttle()
                elif failure.kind is Kind.EXPIRED:
                    self.broker.invalidate(account, creds)
                if not failure.retryable or attempts >= self.options.max_attempts:
                    break
                pause = self.backoff.delay(attempts)
                if time.monotonic() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
                continue
            self.pacer.on_success()
            services = answer.get("containerServices")
            finished = utcnow()
            anomalies = []
            if not isinstance(services, list):
                anomalies.append(
                    ErrorRecord(
                        finished,
                        account.id,
                        region,
                        "GetContainerServices",
                        "UnexpectedShape",
                        f"containerServices is {type(services).__name__}, expected a list",
                        attempts,
                    )
                )
                services = []
            return TargetResult(
                account=account,
                region=region,
                started_at=started,
                finished_at=finished,
                attempts=attempts,
                services=services,
                retries=attempts - 1,
                anomalies=anomalies,
            )
        if failure is None:  # the deadline passed before any attempt could be made
            failure = Failure("Timeout", "target deadline passed before a call", Kind.TRANSIENT)
        elif failure.kind is not Kind.FATAL and time.monotonic() >= deadline - 0.001:
            failure = Failure(
                failure.code,
                f"{failure.message} (gave up at the {self.options.deadline:g}s target deadline)",
                failure.kind,
                failure.status,
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
            retries=max(0, attempts - 1),
        )
