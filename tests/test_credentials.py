"""Credentials that outlive the run.

Assumed-role credentials are refreshed before they expire (a controllable clock shared by
the simulator and the collector, so an hour passes in no time); an ExpiredToken answer
mid-run leads to a refresh and a retry, not a failed target; one STS call per account per
credential lifetime, never one per region. All over real HTTP against the simulator.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import use_simulator_env
from helpers import rows

from inventory.model import Account, Options, Plan
from inventory.run.collect import Collector
from inventory.run.pipeline import run_collect
from inventory.simulator import Faults, Fleet, Simulator

REGIONS = ("us-east-1", "eu-west-2", "ap-south-1")


class Clock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def accounts_of(fleet: Fleet) -> list[Account]:
    return [Account(id=a, role_arn=f"arn:aws:iam::{a}:role/Reader") for a in fleet.account_ids]


async def test_credentials_are_refreshed_before_they_expire(make_simulator: Any) -> None:
    clock = Clock()
    fleet = Fleet(2, seed=21, regions=REGIONS)
    ttl = 900.0
    sim = make_simulator(fleet=fleet, faults=Faults(credential_ttl_s=ttl), clock=clock)
    async with Collector(Options(timeout=2), REGIONS, clock=clock) as c:
        # a 17-minute run on the shared clock (15-minute credentials): a sweep every 200 s
        for _sweep in range(6):
            for account in accounts_of(fleet):
                for region in REGIONS:
                    result = await c.fetch(account, region)
                    assert result.ok, result.error
                    assert result.attempts == 1  # never sent with expired credentials
            clock.now += 200
        assert c.broker is not None
        refreshes = c.broker.refreshes
    assert sim.operation_stats("GetContainerServices")["expired"] == 0
    # one AssumeRole per account, and one refresh per account: never one per region
    assert sim.operation_stats("AssumeRole")["ok"] == 2 * len(fleet.account_ids)
    assert refreshes == len(fleet.account_ids)
    for account in fleet.account_ids:
        first, second = sorted(
            (c for c in sim.issued_credentials() if c.account_id == account),
            key=lambda c: c.expires_at,
        )
        # refreshed BEFORE the first ones expired (at 800 s, with 100 s left: less than a
        # quarter of their life), not when they had already run out
        assert second.expires_at - ttl < first.expires_at


class ExpiresMidRun(Simulator):
    """Every session issued so far expires just before the `at`-th Lightsail call (as if
    AWS revoked them, or our clock were wrong): the calls signed with them get
    ExpiredTokenException from then on."""

    def __init__(self, fleet: Fleet, at: int):
        super().__init__(fleet, Faults(latency_ms=20))
        self.at, self.seen = at, 0

    async def _lightsail(self, request: web.Request, op: str, body: bytes) -> web.StreamResponse:
        self.seen += 1
        if self.seen == self.at:
            self.expire_all_credentials()
        return await super()._lightsail(request, op, body)


async def test_expired_token_mid_run_is_refreshed_and_retried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = Fleet(3, seed=22, regions=REGIONS)
    sim = ExpiresMidRun(fleet, at=4).start()
    try:
        use_simulator_env(monkeypatch, sim)
        db = tmp_path / "inv.duckdb"
        plan = Plan(tuple(accounts_of(fleet)), REGIONS, Options(concurrency=2, workers=1))
        summary = await run_collect(plan, db, None)
    finally:
        sim.stop()

    assert summary.status == "complete", summary.tally.failures
    expired = sim.operation_stats("GetContainerServices")["expired"]
    assert expired >= 1
    scans = rows(db, "select account_id, region, attempts from scans")
    # every call is in scans.attempts; the simulator's per-pair count leaves out the
    # requests it refused at authentication (expired), so those make up the difference
    calls = sim.lightsail_calls()
    extra = [s["attempts"] - calls[(s["account_id"], s["region"])] for s in scans]
    assert set(extra) <= {0, 1} and sum(extra) == expired
    assert sum(s["attempts"] for s in scans) == sim.operation_stats("GetContainerServices")["calls"]
    run = rows(db, "select retries, api_calls from runs")[0]
    assert run["retries"] == expired  # each ExpiredToken answer: one refresh, one retry
    assert run["api_calls"] == sim.total_requests
    assumed = sim.operation_stats("AssumeRole")["ok"]
    # one per account at the start, at most one more per account after the expiry
    assert len(fleet.account_ids) < assumed <= 2 * len(fleet.account_ids)
    assert rows(db, "select count(*) as n from errors")[0]["n"] == 0


async def test_concurrent_regions_share_one_assume_role(make_simulator: Any) -> None:
    fleet = Fleet(4, seed=23, regions=(*REGIONS, "us-west-2", "eu-central-1", "ca-central-1"))
    sim = make_simulator(fleet=fleet, faults=Faults(latency_ms=30))
    # every region of an account in flight at once: they all need the role at once
    options = Options(concurrency=24, timeout=2)
    async with Collector(options, fleet.regions) as c:
        assert c.broker is not None
        results = [r async for r in c.results(accounts_of(fleet))]
        assert all(r.ok for r in results) and len(results) == 24
        assert c.broker.assume_role_calls == sim.operation_stats("AssumeRole")["calls"] == 4


class ExpireAtFirstCall(Simulator):
    """Every account's session expires when the first Lightsail call arrives: the calls
    wait until each account of the fleet has been issued one (the collector may still be
    assuming the last roles when its first calls come), then they all expire at once and
    every waiting call goes on, with credentials that have now expired."""

    expiring: asyncio.Event | None = None
    expired: asyncio.Event | None = None

    async def _lightsail(self, request: web.Request, op: str, body: bytes) -> Any:
        if self.expiring is None:  # the first call: expire every session, once all exist
            self.expiring, self.expired = asyncio.Event(), asyncio.Event()
            deadline = asyncio.get_running_loop().time() + 30
            while {c.account_id for c in self.issued_credentials()} != set(self.fleet.account_ids):
                assert asyncio.get_running_loop().time() < deadline, "roles never assumed"
                await asyncio.sleep(0.005)
            self.expire_all_credentials()
            self.expired.set()
        assert self.expired is not None
        await self.expired.wait()
        return await super()._lightsail(request, op, body)


async def test_expired_sessions_mid_run_refresh_once_per_account(sim_env: Any) -> None:
    """All six regions of each account get ExpiredToken at once, and still only one of
    them calls STS for the account; no target fails."""
    fleet = Fleet(4, seed=23, regions=(*REGIONS, "us-west-2", "eu-central-1", "ca-central-1"))
    sim = sim_env(ExpireAtFirstCall(fleet, Faults(latency_ms=30)))
    async with Collector(Options(concurrency=24, timeout=2), fleet.regions) as c:
        assert c.broker is not None
        results = [r async for r in c.results(accounts_of(fleet))]
        assert all(r.ok for r in results) and len(results) == 24
        assert sim.operation_stats("GetContainerServices")["expired"] == 24
        assert c.broker.assume_role_calls == sim.operation_stats("AssumeRole")["calls"] == 8
        assert c.broker.refreshes == 4


class ThrottledSTS(Simulator):
    """STS throttles the first AssumeRole of every account."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(fleet, Faults())
        self.refused: set[str] = set()

    def _assume_role(self, op: str, caller: Any, form: dict[str, str]) -> web.Response:
        arn = form.get("RoleArn", "")
        if arn not in self.refused:
            self.refused.add(arn)
            return self._xml_error(op, "throttled", 400, "Throttling", "Rate exceeded")
        return super()._assume_role(op, caller, form)


async def test_assume_role_is_retried_and_counted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = Fleet(3, seed=24, regions=REGIONS[:2])
    sim = ThrottledSTS(fleet).start()
    try:
        use_simulator_env(monkeypatch, sim)
        db = tmp_path / "inv.duckdb"
        plan = Plan(tuple(accounts_of(fleet)), REGIONS[:2], Options(concurrency=6, workers=1))
        summary = await run_collect(plan, db, None)
    finally:
        sim.stop()
    assert summary.status == "complete"
    sts = sim.operation_stats("AssumeRole")
    assert (sts["throttled"], sts["ok"]) == (3, 3)  # one retry per account, not per region
    run = rows(db, "select retries, api_calls from runs")[0]
    assert run["retries"] == 3
    # every HTTP request: 6 AssumeRole (3 throttled) + 6 GetContainerServices
    assert run["api_calls"] == sim.total_requests == 12
    assert {s["attempts"] for s in rows(db, "select attempts from scans")} == {1}


async def test_base_credentials_are_read_fresh_for_every_assume_role() -> None:
    """An instance role or SSO session rotates during a long night: AssumeRole must be
    signed with the base credentials of now, not those of the run's start."""
    import datetime as dt

    from botocore.credentials import ReadOnlyCredentials

    from inventory.aws import credentials as cm
    from inventory.aws.credentials import CallCounter, CredentialBroker
    from inventory.model import Account, Options

    class RotatingBase:
        def __init__(self) -> None:
            self.key = "AKIDBASE1"

        async def get_frozen_credentials(self) -> ReadOnlyCredentials:
            return ReadOnlyCredentials(self.key, "secret", "token")

    signed_with: list[str] = []

    class FakeSTS:
        async def assume_role(self, **params: object) -> dict[str, object]:
            signed_with.append(cm.current().access_key)
            expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
            return {
                "Credentials": {
                    "AccessKeyId": f"ASIA{len(signed_with)}",
                    "SecretAccessKey": "s",
                    "SessionToken": "t",
                    "Expiration": expires,
                }
            }

    base = RotatingBase()
    broker = CredentialBroker(FakeSTS(), base, Options(), CallCounter())
    await broker.get(Account("111111111111", role_arn="arn:aws:iam::111111111111:role/R"))
    base.key = "AKIDBASE2"  # rotated
    await broker.get(Account("222222222222", role_arn="arn:aws:iam::222222222222:role/R"))
    assert signed_with == ["AKIDBASE1", "AKIDBASE2"]
    own = await broker.get(Account("333333333333"))  # no role: the base itself, as of now
    assert own.access_key == "AKIDBASE2"
