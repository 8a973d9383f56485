"""Retries that are bounded and visible.

Unit level: what each error means (retry.classify), how many attempts a call gets
(retry.Budget) and how long it waits between them (retry.Backoff). Then the collector over
real HTTP against the simulator: transient faults are retried and every attempt is counted
(scans.attempts equals the simulator's own count per account × region, runs.retries and
runs.api_calls add up); errors that retrying cannot fix are recorded once, after one call,
with AWS's code; persistent faults stop at the attempt budget or the target deadline.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import ClientError, ReadTimeoutError
from helpers import rows

from inventory.aws.retry import THROTTLED_FACTOR, Backoff, Budget, Failure, Kind, classify
from inventory.errors import InventoryError
from inventory.model import Account, Options, Plan
from inventory.run.collect import Collector
from inventory.run.pipeline import run_collect
from inventory.simulator import Faults, Fleet, Simulator

R1, R2, R3 = "us-east-1", "eu-west-2", "ap-south-1"


# --------------------------------------------------------------------------- helpers


def client_error(code: str, status: int = 400, message: str = "m") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetContainerServices",
    )


def role(account_id: str) -> str:
    return f"arn:aws:iam::{account_id}:role/InventoryReader"


def make_plan(fleet: Fleet, **options: Any) -> Plan:
    options.setdefault("workers", 1)
    return Plan(
        accounts=tuple(Account(id=a, role_arn=role(a)) for a in fleet.account_ids),
        regions=tuple(fleet.regions),
        options=Options(**options),
    )


class ScriptedSimulator(Simulator):
    """The simulator, plus fixed error answers for chosen (account, region) pairs: the
    Lightsail errors `Faults` has no switch for (RegionSetupInProgress, InvalidInput)."""

    def __init__(self, fleet: Fleet, faults: Faults, fixed: dict[tuple[str, str], str]):
        super().__init__(fleet, faults)
        self.fixed = fixed

    async def _lightsail(self, request: web.Request, op: str, body: bytes) -> web.StreamResponse:
        caller = self._authenticate(request, op, xml=False)
        key = (caller.account_id, caller.region)
        code = self.fixed.get(key)
        if code is None:
            return await super()._lightsail(request, op, body)
        self._count(op, "calls")
        self._calls[key] = self._calls.get(key, 0) + 1
        return self._json_error(op, "other_errors", 400, code, f"{code} for {key}")


# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("exc", "code", "kind"),
    [
        (client_error("ThrottlingException"), "ThrottlingException", Kind.THROTTLED),
        (client_error("TooManyRequestsException", 429), "TooManyRequestsException", Kind.THROTTLED),
        (client_error("SomethingNew", 429), "SomethingNew", Kind.THROTTLED),
        (client_error("ServiceException", 500), "ServiceException", Kind.TRANSIENT),
        (client_error("ServiceUnavailable", 503), "ServiceUnavailable", Kind.TRANSIENT),
        (client_error("ExpiredTokenException"), "ExpiredTokenException", Kind.EXPIRED),
        (client_error("ExpiredToken", 403), "ExpiredToken", Kind.EXPIRED),
        # retrying cannot fix these: one attempt, recorded with AWS's code
        (client_error("AccessDeniedException"), "AccessDeniedException", Kind.FATAL),
        (client_error("AccessDenied", 403), "AccessDenied", Kind.FATAL),
        (client_error("UnrecognizedClientException"), "UnrecognizedClientException", Kind.FATAL),
        (client_error("InvalidClientTokenId", 403), "InvalidClientTokenId", Kind.FATAL),
        (
            client_error("RegionSetupInProgressException"),
            "RegionSetupInProgressException",
            Kind.FATAL,
        ),
        (client_error("InvalidInputException"), "InvalidInputException", Kind.FATAL),
        (client_error("NotFoundException"), "NotFoundException", Kind.FATAL),
        # no answer at all
        (TimeoutError(), "Timeout", Kind.TRANSIENT),
        (ReadTimeoutError(endpoint_url="http://x"), "Timeout", Kind.TRANSIENT),
        (aiohttp.ServerDisconnectedError(), "ConnectionError", Kind.TRANSIENT),
        (ConnectionResetError(104, "reset"), "ConnectionError", Kind.TRANSIENT),
        # botocore's parser choking on an answer of the wrong shape
        (AttributeError("'str' object has no attribute 'get'"), "ResponseParserError", Kind.FATAL),
    ],
)
def test_classify_keeps_aws_code_and_decides_retry(exc: Exception, code: str, kind: Kind) -> None:
    failure = classify(exc)
    assert (failure.code, failure.kind) == (code, kind)
    assert failure.retryable is (kind is not Kind.FATAL)


# --------------------------------------------------------------------------- budget, backoff


def spend_until_stop(budget: Budget, failure: Failure) -> int:
    while True:
        budget.attempts += 1
        if not budget.spend(failure):
            return budget.attempts


def test_budget_bounds_every_kind_of_failure() -> None:
    fail = Failure("ServiceException", "", Kind.TRANSIENT, 500)
    throttled = Failure("ThrottlingException", "", Kind.THROTTLED, 400)
    fatal = Failure("AccessDeniedException", "", Kind.FATAL, 400)
    assert spend_until_stop(Budget(8), fail) == 8
    assert spend_until_stop(Budget(8), fatal) == 1
    # throttles do not use up the failure budget, but are bounded too
    assert spend_until_stop(Budget(8), throttled) == 8 * THROTTLED_FACTOR == Budget(8).limit
    mixed = Budget(3)
    for f in (throttled, throttled, throttled, fail, fail):
        mixed.attempts += 1
        assert mixed.spend(f)
    mixed.attempts += 1
    assert not mixed.spend(fail)  # the third failure ends it, throttles aside
    assert mixed.attempts == 6


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    b = Backoff(base=0.1, cap=10.0, throttle_cap=2.0)
    assert [b.ceiling(n) for n in range(1, 10)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    )
    assert b.ceiling(10, throttled=True) == 2.0
    assert b.ceiling(2, throttled=True) == pytest.approx(0.2)
    assert b.ceiling(10_000) == 10.0  # no overflow however long it goes
    rng = random.Random(7)
    for n in range(1, 12):
        delays = [b.delay(n, rng) for _ in range(200)]
        assert all(0 <= d <= b.ceiling(n) for d in delays)
        # full jitter: spread over the whole interval, not a fixed pause
        assert max(delays) - min(delays) > b.ceiling(n) * 0.8


# --------------------------------------------------------------------------- over HTTP


async def test_fatal_errors_fail_fast_and_are_recorded_once(sim_env: Any, tmp_path: Path) -> None:
    fleet = Fleet(5, seed=3, regions=(R1, R2))
    a = fleet.account_ids
    faults = Faults(
        denied_regions={(a[0], R1)},
        unenabled_regions={(a[1], R1)},  # a region the account has not enabled
        denied_accounts={a[3]},
    )
    fixed = {(a[2], R1): "RegionSetupInProgressException", (a[2], R2): "InvalidInputException"}
    sim = sim_env(ScriptedSimulator(fleet, faults, fixed))
    db = tmp_path / "inv.duckdb"
    summary = await run_collect(make_plan(fleet, concurrency=4), db, None)

    expected_codes = {
        (a[0], R1): "AccessDeniedException",
        (a[1], R1): "UnrecognizedClientException",
        (a[2], R1): "RegionSetupInProgressException",
        (a[2], R2): "InvalidInputException",
        (a[3], R1): "AccessDenied",
        (a[3], R2): "AccessDenied",
    }
    scans = {(r["account_id"], r["region"]): r for r in rows(db, "select * from scans")}
    assert len(scans) == 10
    calls = sim.lightsail_calls()
    for key, scan in scans.items():
        # every call the simulator saw is in scans.attempts, and no more
        assert scan["attempts"] == calls.get(key, 0), key
        assert scan["error_code"] == expected_codes.get(key), key
        if key in expected_codes and key[0] != a[3]:
            assert scan["attempts"] == 1, f"{key} was retried: {scan}"
    assert scans[(a[3], R1)]["attempts"] == 0  # no Lightsail call without credentials

    errors = rows(db, "select * from errors order by account_id, region")
    # one row per failed target, and one (region NULL) for the account whose role failed
    assert [
        (e["account_id"], e["region"], e["error_code"], e["attempts"]) for e in errors
    ] == sorted(
        [(k[0], k[1], c, 1) for k, c in expected_codes.items() if k[0] != a[3]]
        + [(a[3], None, "AccessDenied", 1)],
        key=lambda t: (t[0], t[1] or ""),
    )
    assert sim.operation_stats("AssumeRole")["denied"] == 1  # once for the account, not per region

    run = rows(db, "select * from runs")[0]
    assert run["status"] == "partial" and summary.exit_code == 3
    assert run["retries"] == 0
    assert run["api_calls"] == sim.total_requests  # AssumeRole calls included


async def test_transient_faults_are_retried_and_every_attempt_counted(
    sim_env: Any, tmp_path: Path
) -> None:
    fleet = Fleet(5, seed=4, regions=(R1, R2, R3))
    faults = Faults(throttle_rate=0.25, error_5xx_rate=0.15, drop_rate=0.1, seed=4)
    sim = sim_env(Simulator(fleet, faults))
    db = tmp_path / "inv.duckdb"
    summary = await run_collect(make_plan(fleet, concurrency=6, rate=400, timeout=2), db, None)
    assert summary.status == "complete"

    ls = sim.operation_stats("GetContainerServices")
    injected = ls["throttled"] + ls["errors_5xx"] + ls["dropped"]
    assert injected >= 5, ls  # the faults really happened
    scans = rows(db, "select account_id, region, status, attempts from scans")
    assert {s["status"] for s in scans} == {"ok"}
    calls = sim.lightsail_calls()
    assert {(s["account_id"], s["region"]): s["attempts"] for s in scans} == calls
    run = rows(db, "select * from runs")[0]
    # each injected fault cost exactly one retry; nothing else was retried
    assert run["retries"] == injected == sum(s["attempts"] - 1 for s in scans)
    assert run["api_calls"] == sim.total_requests == sum(calls.values()) + len(fleet.account_ids)
    assert rows(db, "select count(*) as n from errors")[0]["n"] == 0  # retries are not errors


@pytest.mark.parametrize(
    ("faults", "codes", "attempts"),
    [
        (Faults(error_5xx_rate=1.0), {"ServiceException", "ServiceUnavailable"}, 3),
        (Faults(drop_rate=1.0), {"ConnectionError"}, 3),
        (Faults(throttle_rate=1.0), {"ThrottlingException"}, 3 * THROTTLED_FACTOR),
    ],
    ids=["5xx", "dropped", "throttled"],
)
async def test_persistent_faults_stop_at_the_attempt_budget(
    sim_env: Any, faults: Faults, codes: set[str], attempts: int
) -> None:
    fleet = Fleet(2, seed=5, regions=(R1, R2))
    sim = sim_env(Simulator(fleet, faults))
    options = Options(max_attempts=3, timeout=2, target_deadline=60, rate=1000)
    accounts = [Account(id=a, role_arn=role(a)) for a in fleet.account_ids]
    async with Collector(options, fleet.regions, backoff=Backoff(0.001, 0.005)) as c:
        results = [r async for r in c.results(accounts)]
    assert len(results) == 4
    for r in results:
        assert not r.ok and r.error is not None
        assert r.error.error_code in codes
        assert r.attempts == r.error.attempts == attempts
        assert "deadline" not in r.error.message
    assert sim.lightsail_calls() == {(r.account.id, r.region): attempts for r in results}
    assert c.counter.retries == 4 * (attempts - 1)
    if faults.throttle_rate:
        assert c.pacer.decreases >= 1


async def test_the_target_deadline_bounds_retries(sim_env: Any) -> None:
    fleet = Fleet(1, seed=5, regions=(R1,))
    sim_env(Simulator(fleet, Faults(error_5xx_rate=1.0)))
    options = Options(max_attempts=1000, timeout=2, target_deadline=0.4, rate=1000)
    account = Account(id=fleet.account_ids[0], role_arn=role(fleet.account_ids[0]))
    async with Collector(options, fleet.regions, backoff=Backoff(0.02, 0.05)) as c:
        (result,) = [r async for r in c.results([account])]
    assert result.error is not None
    # the last answer's code, or Timeout when the deadline fell during an attempt (a busy
    # machine makes that likelier): either way the deadline, not the budget, ended it
    assert result.error.error_code in {"ServiceException", "ServiceUnavailable", "Timeout"}
    assert "gave up at the 0.4s target deadline" in result.error.message
    # stopped by the deadline, long before the attempt budget
    assert 1 < result.attempts < 100


async def test_backoff_pauses_between_attempts(sim_env: Any) -> None:
    """The collector really waits (with jitter) between attempts: with a backoff whose
    pauses are all long, a deadline shorter than two pauses allows one or two attempts."""
    fleet = Fleet(1, seed=5, regions=(R1,))
    sim = sim_env(Simulator(fleet, Faults(error_5xx_rate=1.0)))
    options = Options(max_attempts=8, timeout=2, target_deadline=1.0, rate=1000)
    account = Account(id=fleet.account_ids[0], role_arn=role(fleet.account_ids[0]))

    class Fixed(Backoff):
        def delay(self, attempt: int, rng: Any = None, *, throttled: bool = False) -> float:
            return 0.6

    async with Collector(options, fleet.regions, backoff=Fixed()) as c:
        (result,) = [r async for r in c.results([account])]
    # 0.6 s pause after the first attempt; a second pause would cross the 1 s deadline
    assert result.attempts == 2
    assert sum(sim.lightsail_calls().values()) == 2


async def test_refused_base_credentials_end_the_run_with_a_clear_error(
    sim_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = sim_env(Simulator(Fleet(1, seed=5, regions=(R1,)), Faults()))
    monkeypatch.setenv("AWS_SESSION_TOKEN", "not-a-token-the-simulator-issued")
    async with Collector(Options(timeout=2), (R1,)) as c:
        with pytest.raises(InventoryError) as err:
            await c.caller_account()
    assert str(err.value) == (
        "GetCallerIdentity with the base credentials failed after 1 attempt(s): "
        "InvalidClientTokenId: The security token included in the request is invalid."
    )
    assert sim.total_requests == c.counter.api_calls == 1  # refused: not retried


def test_parser_errors_never_quote_the_answer() -> None:
    """botocore's parser errors quote the body: an STS answer holds a secret key."""
    from botocore.parsers import ResponseParserError

    from inventory.aws.retry import classify

    body = "<AssumeRoleResult><SecretAccessKey>wJalrXUtnFEMI-leaked</SecretAccessKey>"
    for exc in (
        ResponseParserError(f"Unable to parse response (invalid XML received):\n{body}"),
        ValueError(body),
        KeyError(body),
        OSError(body),  # anything unexpected from outside the package
    ):
        failure = classify(exc)
        assert "wJalrXUtnFEMI" not in failure.message, type(exc)
        assert type(exc).__name__ in failure.message


async def test_a_run_that_cannot_start_is_recorded_failed(
    sim_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Contract: exit 1 with the runs and errors rows written where the store is usable."""
    import duckdb

    from inventory.model import Plan
    from inventory.run.pipeline import run_collect

    sim_env(Simulator(Fleet(1, seed=5, regions=(R1,)), Faults()))
    monkeypatch.setenv("AWS_SESSION_TOKEN", "not-a-token-the-simulator-issued")
    db = tmp_path / "inv.duckdb"
    plan = Plan(accounts=(), regions=(R1,), options=Options(timeout=2), own_account=True)
    with pytest.raises(InventoryError, match="GetCallerIdentity"):
        await run_collect(plan, db, None)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("select status, targets from runs").fetchall() == [("failed", 0)]
        assert con.execute("select operation, error_code, attempts from errors").fetchall() == [
            ("GetCallerIdentity", "InvalidClientTokenId", 1)
        ]
    finally:
        con.close()
