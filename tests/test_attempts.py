"""The one retry loop, `retry.attempts`, on its own: every AWS call of the tool goes through it
(GetContainerServices, the --deep calls, AssumeRole, discovery's and doctor's calls), so its
rules are pinned here with an injected clock and sleep (nothing really waits) and calls that
answer or fail from a script: the attempt budget and the separate throttle budget, the
deadlines (the caller's, the call's own, moved on by the pacer's waits), the reactions
(throttling slows the pacer, expired credentials are refreshed or end the call, the breaker
opens and short-circuits, the stop signal), and cancellation.

The collector's use of it over real HTTP is pinned by test_retry.py, test_collect_faults.py,
test_credentials.py, test_deep.py and test_soak.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from inventory.aws.retry import (
    Backoff,
    Breaker,
    Budget,
    CallCounter,
    CallFailed,
    Calls,
    Deadline,
    Policy,
    Stop,
    attempts,
)
from inventory.model import Options


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetContainerServices",
    )


THROTTLED = client_error("ThrottlingException")
SERVER = client_error("InternalFailure", 500)
DENIED = client_error("AccessDeniedException")
EXPIRED = client_error("ExpiredTokenException")
ANSWER = {"containerServices": []}


class Clock:
    """time.monotonic() and asyncio.sleep() for the loop: sleeping moves the clock on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass(frozen=True)
class Fixed(Backoff):
    """Every pause is `pause` seconds (no jitter)."""

    pause: float = field(default=1.0, kw_only=True)

    def delay(self, attempt: int, rng: Any = None, *, throttled: bool = False) -> float:
        return self.pause


class Script:
    """A call that fails or answers as scripted, one step per attempt (the last step
    repeats); each attempt takes `takes` seconds on the clock."""

    def __init__(self, clock: Clock, *steps: Any, takes: float = 0.0) -> None:
        self.clock, self.steps, self.takes = clock, list(steps), takes
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, **params: Any) -> Any:
        self.calls.append(params)
        self.clock.now += self.takes
        step = self.steps[min(len(self.calls), len(self.steps)) - 1]
        if isinstance(step, BaseException):
            raise step
        return step


class FakePacer:
    """The pacer's interface: each slot takes `wait` seconds on the clock."""

    def __init__(self, clock: Clock, wait: float = 0.0) -> None:
        self.clock, self.wait = clock, wait
        self.acquired = self.throttles = self.successes = 0

    async def acquire(self) -> float:
        self.acquired += 1
        self.clock.now += self.wait
        return self.wait

    def on_throttle(self) -> None:
        self.throttles += 1

    def on_success(self) -> None:
        self.successes += 1


def policy(clock: Clock, **settings: Any) -> Policy:
    settings.setdefault("deadline", 60.0)
    settings.setdefault("backoff", Fixed(pause=1.0))
    return Policy(CallCounter(), clock=clock, sleep=clock.sleep, **settings)


# --------------------------------------------------------------------------- budgets


async def test_an_answer_ends_the_attempts_and_every_attempt_is_counted() -> None:
    clock = Clock()
    p = policy(clock, max_attempts=5)
    call = Script(clock, SERVER, SERVER, ANSWER)
    out = await attempts(call, {"serviceName": "api"}, p)
    assert (out.stop, out.answer, out.attempts) == (None, ANSWER, 3)
    assert call.calls == [{"serviceName": "api"}] * 3
    assert (p.counter.api_calls, p.counter.retries) == (3, 2)
    assert clock.slept == [1.0, 1.0]


async def test_the_budget_ends_a_call_that_keeps_failing() -> None:
    clock = Clock()
    p = policy(clock, max_attempts=3)
    out = await attempts(Script(clock, SERVER), {}, p)
    assert out.stop is Stop.FAILED and out.attempts == 3
    assert out.failure is not None and out.failure.code == "InternalFailure"
    assert (p.counter.api_calls, p.counter.retries) == (3, 2)
    assert len(clock.slept) == 2  # no pause after the last attempt


async def test_a_fatal_failure_is_tried_once() -> None:
    clock = Clock()
    p = policy(clock, max_attempts=8)
    out = await attempts(Script(clock, DENIED, ANSWER), {}, p)
    assert out.stop is Stop.FAILED and out.attempts == 1 and clock.slept == []
    assert out.failure is not None and out.failure.code == "AccessDeniedException"


async def test_throttling_has_its_own_budget_and_slows_the_pacer() -> None:
    clock = Clock()
    pacer = FakePacer(clock)
    p = policy(clock, max_attempts=2, throttled_factor=3, pacer=pacer)
    out = await attempts(Script(clock, THROTTLED), {}, p)
    # throttled answers do not spend the 2 failures, but no call makes more than 2 × 3
    assert out.stop is Stop.FAILED and out.attempts == 6 == Budget(2, throttled_factor=3).limit
    assert pacer.throttles == 6 and pacer.acquired == 6 and pacer.successes == 0

    clock, budget = Clock(), Budget(2, throttled_factor=3)
    call = Script(clock, THROTTLED, SERVER, THROTTLED, THROTTLED, SERVER, ANSWER)
    out = await attempts(call, {}, policy(clock, max_attempts=2), budget=budget)
    assert out.stop is Stop.FAILED and out.attempts == budget.attempts == 5  # 2nd 500
    assert budget.failures == 2


async def test_a_given_throttle_budget_is_the_policys() -> None:
    clock = Clock()
    out = await attempts(
        Script(clock, THROTTLED), {}, policy(clock, max_attempts=2, throttled_factor=1)
    )
    assert out.stop is Stop.FAILED and out.attempts == 2


# --------------------------------------------------------------------------- deadlines


async def test_no_pause_ends_after_the_calls_own_deadline() -> None:
    clock = Clock()
    out = await attempts(
        Script(clock, SERVER), {}, policy(clock, deadline=10.0, backoff=Fixed(pause=4))
    )
    # attempts at 0, 4 and 8 s; a pause from 8 s would end at 12 s, after the deadline
    assert out.stop is Stop.LATE and out.attempts == 3 and clock.slept == [4, 4]
    assert out.own_deadline
    assert out.failure is not None and out.failure.code == "InternalFailure"


async def test_the_callers_earlier_deadline_wins() -> None:
    clock = Clock()
    caller = Deadline(clock.now + 5)
    p = policy(clock, deadline=10.0, backoff=Fixed(pause=4))
    out = await attempts(Script(clock, SERVER), {}, p, deadline=caller)
    assert out.stop is Stop.LATE and out.attempts == 2 and not out.own_deadline


async def test_no_attempt_starts_after_the_deadline() -> None:
    clock = Clock()
    got: list[float] = []

    async def credentials(end: float) -> str:
        got.append(end)
        clock.now += 3  # e.g. waiting for another region's AssumeRole
        return "creds"

    call = Script(clock, ANSWER)
    out = await attempts(
        call, {}, policy(clock, deadline=None), deadline=Deadline(clock.now + 2),
        credentials=credentials,
    )  # fmt: skip
    assert out.stop is Stop.LATE and out.attempts == 0 and out.failure is None
    assert got == [102.0] and call.calls == []


async def test_the_pacers_wait_moves_the_deadlines_on() -> None:
    clock = Clock()
    pacer = FakePacer(clock, wait=5.0)
    shared = Deadline(clock.now + 3)  # shorter than one wait for the rate
    call = Script(clock, SERVER, ANSWER, takes=1.0)
    p = policy(clock, deadline=None, pacer=pacer, backoff=Fixed(pause=0.5))
    out = await attempts(call, {}, p, deadline=shared)
    assert out.stop is None and out.attempts == 2 and pacer.successes == 1
    assert shared.at == 100 + 3 + 2 * 5  # moved on for whoever shares it (--deep)
    assert out.remaining == pytest.approx(3 - 1 - 0.5)  # what the second attempt had left


# --------------------------------------------------------------------------- reactions


async def test_expired_credentials_are_refreshed_or_end_the_call() -> None:
    clock = Clock()
    issued = iter(["old", "new"])
    expired: list[str] = []
    signed: list[str] = []
    current: ContextVar[str] = ContextVar("current")

    async def credentials(end: float) -> str:
        return next(issued)

    @contextlib.contextmanager
    def sign(creds: str) -> Iterator[None]:
        token = current.set(creds)
        try:
            yield
        finally:
            current.reset(token)

    async def call() -> Any:
        signed.append(current.get())
        if len(signed) == 1:
            raise EXPIRED
        return ANSWER

    out = await attempts(
        call, {}, policy(clock, sign=sign), credentials=credentials, on_expired=expired.append
    )
    assert out.stop is None and out.attempts == 2
    assert signed == ["old", "new"] and expired == ["old"]

    # without a way to refresh them (the base identity's): the call ends at once
    clock = Clock()
    out = await attempts(Script(clock, EXPIRED, ANSWER), {}, policy(clock))
    assert out.stop is Stop.FAILED and out.attempts == 1 and clock.slept == []
    assert out.failure is not None and out.failure.code == "ExpiredTokenException"


async def test_the_breaker_opens_and_short_circuits_the_calls_after_it() -> None:
    clock = Clock()
    breaker = Breaker(max_failures=3, min_callers=2)
    p = policy(clock, max_attempts=8)
    hang = Script(clock, TimeoutError())
    first = await attempts(hang, {}, p, breaker=breaker, caller="111")
    # one caller alone never opens it: this call spends its whole budget
    assert first.stop is Stop.FAILED and first.attempts == 8 and not breaker.broken
    second = await attempts(hang, {}, p, breaker=breaker, caller="222")
    assert second.stop is Stop.BROKEN and second.attempts == 1  # opened by its first timeout
    third = await attempts(Script(clock, ANSWER), {}, p, breaker=breaker, caller="333")
    assert third.stop is Stop.BROKEN and third.attempts == 0  # not called at all
    assert (breaker.timeouts, sorted(breaker.accounts)) == (9, ["111", "222"])

    answered = Breaker(max_failures=1, min_callers=1)
    await attempts(Script(clock, ANSWER), {}, p, breaker=answered, caller="111")
    out = await attempts(
        Script(clock, ConnectionRefusedError("refused")), {}, p, breaker=answered, caller="222"
    )
    assert out.stop is Stop.FAILED and out.attempts == 8 and answered.unreachable == 8
    assert not answered.broken  # a region that answered once is not broken


async def test_a_stop_signal_ends_the_attempts_before_the_next_one() -> None:
    clock = Clock()
    stop = [False]

    async def call() -> Any:
        stop[0] = True  # e.g. Ctrl-C during the attempt
        raise SERVER

    out = await attempts(call, {}, policy(clock, stopped=lambda: stop[0]))
    assert out.stop is Stop.STOPPED and out.attempts == 1
    assert out.failure is not None and out.failure.code == "InternalFailure"


async def test_what_the_credentials_hook_raises_is_the_callers() -> None:
    clock = Clock()
    budget = Budget(8)

    class Refused(Exception):
        pass

    async def credentials(end: float) -> str:
        if budget.attempts:
            raise Refused()
        return "creds"

    with pytest.raises(Refused):
        await attempts(
            Script(clock, SERVER), {}, policy(clock), budget=budget, credentials=credentials
        )
    assert budget.attempts == 1


# --------------------------------------------------------------------------- cancellation


async def test_a_cancellation_after_the_stop_is_the_stops() -> None:
    clock = Clock()
    stop = [False]
    started = asyncio.Event()

    async def hangs() -> Any:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(attempts(hangs, {}, policy(clock, stopped=lambda: stop[0])))
    await started.wait()
    stop[0] = True
    task.cancel()
    out = await task
    assert out.stop is Stop.STOPPED and out.attempts == 1
    assert not task.cancelled() and task.cancelling() == 0  # taken back: the task reports


@pytest.mark.parametrize("stopped", [None, False], ids=["no stop signal", "not stopped"])
async def test_any_other_cancellation_propagates(stopped: bool | None) -> None:
    clock = Clock()
    started = asyncio.Event()

    async def hangs() -> Any:
        started.set()
        await asyncio.Event().wait()

    signal = None if stopped is None else (lambda: False)
    task = asyncio.create_task(attempts(hangs, {}, policy(clock, stopped=signal)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


# --------------------------------------------------------------------------- one-off calls


async def test_an_attempt_runs_in_the_callers_task() -> None:
    """The per-call timeout is asyncio.timeout() around the call, not wait_for: no task is
    made per attempt, and what the caller's task set (the signing credentials) is seen."""
    me = asyncio.current_task()
    ran_in: list[Any] = []

    async def who(**_: Any) -> dict[str, str]:
        ran_in.append(asyncio.current_task())
        return {"Account": "123456789012"}

    calls = Calls(Options(max_attempts=2, timeout=5))
    assert await calls("GetCallerIdentity", who) == {"Account": "123456789012"}
    assert ran_in == [me]
    assert (calls.counter.api_calls, calls.counter.retries) == (1, 0)


async def test_a_one_off_call_that_fails_raises_with_its_attempts() -> None:
    async def denied(**_: Any) -> Any:
        raise DENIED

    calls = Calls(Options(max_attempts=2, timeout=5))
    with pytest.raises(CallFailed) as caught:
        await calls("ListAccounts", denied)
    assert (caught.value.operation, caught.value.attempts) == ("ListAccounts", 1)
    assert caught.value.failure.code == "AccessDeniedException"
