"""Throttling storms, hung regions, bad answers, bad --db.

Everything over real HTTP against the simulator, with real aiobotocore / lean clients; the
runs write a real DuckDB file that is read back.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from aiohttp import web
from helpers import rows
from typer.testing import CliRunner

from inventory.aws.retry import Backoff
from inventory.cli import app
from inventory.model import Account, Options, Plan
from inventory.run.collect import BREAKER_TARGETS, BREAKER_TIMEOUTS, Collector, run_time_bound
from inventory.run.pipeline import run_collect
from inventory.simulator import Faults, Fleet, Simulator

R1, R2, R3 = "us-east-1", "eu-west-2", "ap-south-1"


def role(account_id: str) -> str:
    return f"arn:aws:iam::{account_id}:role/InventoryReader"


def accounts_of(fleet: Fleet) -> list[Account]:
    return [Account(id=a, role_arn=role(a)) for a in fleet.account_ids]


# --------------------------------------------------------------------------- 2. storms


async def test_throttling_storm_slows_down_as_a_whole_and_collects_everything(
    sim_env: Any,
) -> None:
    fleet = Fleet(8, seed=11, regions=(R1, R2, R3))
    sim = sim_env(Simulator(fleet, Faults(throttle_rate=0.5, seed=11)))
    # 16 calls in flight against a local simulator want far more than 100 calls/s: the
    # rate limit binds, so its decreases really hold calls back. Short per-target pauses
    # keep the test quick; the soak test runs the default backoff.
    options = Options(concurrency=16, rate=100, timeout=2, workers=1)
    started = time.monotonic()
    async with Collector(options, fleet.regions, backoff=Backoff(0.02, 1.0, 0.25)) as c:
        results = [r async for r in c.results(accounts_of(fleet))]
    wall = time.monotonic() - started

    assert len(results) == 24
    failed = [r.error for r in results if not r.ok]
    assert failed == [], failed
    for r in results:  # every target collected, exactly as the ground truth has it
        names = [s["containerServiceName"] for s in r.services or []]
        assert names == [s["containerServiceName"] for s in fleet.services(r.account.id, r.region)]
    # the collector slowed down as a whole, not just per target
    assert c.pacer.decreases >= 1
    assert c.pacer.min_rate <= options.rate / 2
    stats = sim.operation_stats("GetContainerServices")
    assert stats["throttled"] >= 10
    assert stats["calls"] == sum(r.attempts for r in results) == c.counter.api_calls - 8
    minimum = len(results)
    print(
        f"\nstorm (50% throttled): {len(results)} targets, {stats['calls']} calls "
        f"({stats['calls'] / minimum:.2f}x the minimum of {minimum}), "
        f"{stats['throttled']} throttled, pacer {options.rate:g} -> min {c.pacer.min_rate:g}/s "
        f"in {c.pacer.decreases} decreases, {c.pacer.waited:.2f}s queued, wall {wall:.2f}s"
    )


# --------------------------------------------------------------------------- 3. hung regions


async def test_a_hung_region_cannot_stall_the_run(sim_env: Any) -> None:
    fleet = Fleet(10, seed=12, regions=(R1, R2, R3))
    faults = Faults(hang_regions={("*", R2)}, hang_max_s=60)
    sim = sim_env(Simulator(fleet, faults))
    options = Options(concurrency=4, timeout=0.3, target_deadline=1.0, max_attempts=3, rate=1000)
    targets = 30
    bound = run_time_bound(options, targets)
    async with Collector(options, fleet.regions) as c:
        started = time.monotonic()
        results = [r async for r in c.results(accounts_of(fleet))]
        wall = time.monotonic() - started

    # the bound follows from the settings alone (timeout, deadline, targets, concurrency)
    assert wall < bound, (wall, bound)
    hung = [r for r in results if r.region == R2]
    assert len(hung) == 10 and all(not r.ok for r in hung)
    assert {r.error.error_code for r in hung if r.error} == {"Timeout"}
    assert all(r.ok for r in results if r.region != R2)
    # calls timed out; once enough had, from enough accounts, the breaker stopped the
    # targets in flight before their next attempt and spared the rest any call at all
    spared = [r for r in hung if r.error and "circuit breaker" in r.error.message]
    assert len(spared) == len(hung) - sum(
        1 for r in hung if r.error and r.error.message.startswith("no answer within")
    )
    breaker = re.compile(
        rf"(not called|gave up after (\d+) attempt\(s\)): (\d+) calls to {R2} from (\d+) "
        r"accounts timed out and none was answered \(region circuit breaker\)"
    )
    for r in spared:
        assert r.error is not None
        m = breaker.fullmatch(r.error.message)
        assert m, r.error.message
        assert int(m.group(3)) >= BREAKER_TIMEOUTS and int(m.group(4)) >= BREAKER_TARGETS
        assert r.attempts == int(m.group(2) or 0)
    assert sum(r.attempts == 0 for r in spared) >= 4  # most were never called
    total = sum(r.attempts for r in hung)
    assert total < len(hung) * 3  # far fewer calls than every target trying its budget
    # every hung request is counted as an attempt of its target
    assert sim.operation_stats("GetContainerServices")["hung"] == sum(r.attempts for r in hung)
    assert sim.lightsail_calls() == {
        (r.account.id, r.region): r.attempts for r in results if r.attempts
    }
    print(
        f"\nhung region: {targets} targets, wall {wall:.2f}s, bound from settings {bound:.1f}s; "
        f"{total} calls to the hung region, {len(spared)} of its {len(hung)} targets "
        f"stopped by the breaker ({sum(r.attempts == 0 for r in spared)} never called)"
    )


async def test_one_hung_account_region_does_not_open_the_breaker(sim_env: Any) -> None:
    fleet = Fleet(5, seed=12, regions=(R1, R2))
    hung = fleet.account_ids[2]
    sim_env(Simulator(fleet, Faults(hang_regions={(hung, R2)}, hang_max_s=60)))
    options = Options(concurrency=3, timeout=0.3, target_deadline=0.9, rate=1000)
    async with Collector(options, fleet.regions) as c:
        results = {(r.account.id, r.region): r async for r in c.results(accounts_of(fleet))}
    bad = results.pop((hung, R2))
    assert bad.error is not None and bad.error.error_code == "Timeout"
    assert bad.error.message.startswith("no answer within the ")
    assert bad.error.message.endswith("(gave up at the 0.9s target deadline)")
    assert 1 <= bad.attempts <= 3  # 0.3 s each, within 0.9 s
    assert all(r.ok for r in results.values())


# --------------------------------------------------------------------------- unreachable regions


def unreachable_results(results: list[Any], region: str) -> tuple[list[Any], list[Any]]:
    """The region's failed targets: those the breaker stopped, and the others."""
    failed = [r for r in results if r.region == region]
    assert len(failed) >= 1 and all(not r.ok and r.error is not None for r in failed)
    stopped = [r for r in failed if r.error.error_code == "EndpointUnreachable"]
    return stopped, [r for r in failed if r not in stopped]


async def test_an_unreachable_region_fails_fast_once(sim_env: Any, tmp_path: Path) -> None:
    """Every connection for R2 is closed unanswered (the simulator reads the region from the
    signature's scope): the breaker trips after a few calls from a few accounts, and the
    rest of R2 fails at once with EndpointUnreachable naming the endpoint, instead of
    every account spending 8 attempts and their backoff on it; the other regions are
    collected, and the run is partial with every failure in the errors table."""
    fleet = Fleet(10, seed=12, regions=(R1, R2, R3))
    sim = sim_env(Simulator(fleet, Faults(unreachable_regions={R2})))
    plan = Plan(
        accounts=tuple(accounts_of(fleet)),
        regions=fleet.regions,
        options=Options(concurrency=4, rate=1000, timeout=2, workers=1),
    )
    db = tmp_path / "inv.duckdb"
    summary = await run_collect(plan, db, None)

    assert summary.status == "partial" and summary.exit_code == 3
    scans = rows(db, "select account_id, region, status, attempts, error_code from scans")
    assert {s["status"] for s in scans if s["region"] != R2} == {"ok"}
    r2 = [s for s in scans if s["region"] == R2]
    assert len(r2) == 10 and {s["status"] for s in r2} == {"failed"}
    stopped = [s for s in r2 if s["error_code"] == "EndpointUnreachable"]
    assert len(stopped) >= 7  # at most the first few targets ran their own course
    assert {s["error_code"] for s in r2} <= {"EndpointUnreachable", "ConnectionError"}
    assert sum(s["attempts"] == 0 for s in stopped) >= 5  # most never called it at all
    calls = sum(s["attempts"] for s in r2)
    assert calls == sim.operation_stats("GetContainerServices")["dropped"]
    assert calls < 10 * 8 / 2  # far fewer than every account trying its budget
    errors = rows(db, "select * from errors where error_code = 'EndpointUnreachable'")
    assert len(errors) == len(stopped)
    for e in errors:
        assert e["region"] == R2 and e["operation"] == "GetContainerServices"
        assert f"the {R2} endpoint {sim.url} could not be reached" in e["message"]
        assert e["message"].endswith("none was answered (region circuit breaker)")


@pytest.mark.parametrize("engine", ["lean", "botocore"])
async def test_a_closed_port_fails_fast_once(sim_env: Any, engine: str) -> None:
    """R2's endpoint is a port nobody listens on (connection refused), through the
    collector's endpoint hook; the other regions go to the simulator."""
    import socket

    fleet = Fleet(8, seed=3, regions=(R1, R2))
    sim = sim_env(Simulator(fleet))
    with socket.socket() as sock:  # a free port, closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    options = Options(concurrency=3, rate=1000, timeout=2, engine=engine)
    async with Collector(options, fleet.regions, endpoint_urls={R2: closed}) as c:
        results = [r async for r in c.results(accounts_of(fleet))]

    assert all(r.ok for r in results if r.region == R1)
    stopped, others = unreachable_results(results, R2)
    assert len(stopped) >= 5 and {r.error.error_code for r in others} <= {"ConnectionError"}
    for r in stopped:
        assert f"the {R2} endpoint {closed} could not be reached" in r.error.message
    assert sum(r.attempts for r in results if r.region == R2) < 8 * 8 / 2
    assert not any(region == R2 for _, region in sim.lightsail_calls())


class _AnswersOnce(Simulator):
    """R2 answers its first call (a 500), then closes every connection unanswered."""

    async def _lightsail(self, request: web.Request, op: str, body: bytes) -> Any:
        if R2 in request.headers.get("Authorization", ""):
            if self.faults.unreachable_regions:
                return await super()._lightsail(request, op, body)
            self.faults.unreachable_regions = {R2}
            return self._json_error(op, "errors_5xx", 500, "ServiceException", "once")
        return await super()._lightsail(request, op, body)


async def test_a_region_that_answered_once_is_never_tripped(sim_env: Any) -> None:
    """An answer of any status proves the endpoint is there: dropped connections after it
    are retried to each target's budget, as before, never cut short by the breaker."""
    fleet = Fleet(6, seed=3, regions=(R1, R2))
    sim_env(_AnswersOnce(fleet))
    options = Options(concurrency=3, rate=1000, timeout=2, max_attempts=3)
    async with Collector(options, fleet.regions, backoff=Backoff(0.001, 0.005)) as c:
        results = [r async for r in c.results(accounts_of(fleet))]
    stopped, others = unreachable_results(results, R2)
    assert stopped == [] and len(others) == 6
    assert all(r.attempts == 3 and "circuit breaker" not in r.error.message for r in others)


def test_run_time_bound_follows_the_settings() -> None:
    o = Options(concurrency=4, timeout=0.3, target_deadline=1.0, max_attempts=3, rate=1000)
    # (18/4 + 2) deadlines + 18 targets × 9 attempts paced at no less than 1000/16 per s
    assert run_time_bound(o, 18) == pytest.approx(6.5 + 18 * 9 / 62.5)
    assert run_time_bound(Options(), 16_000) > run_time_bound(Options(), 1_000)
    assert math.isfinite(run_time_bound(Options(rate=0.5), 10))


# --------------------------------------------------------------------------- 7. bad answers


async def test_malformed_answers_store_what_can_be_stored(sim_env: Any, tmp_path: Path) -> None:
    fleet = Fleet(3, seed=1, regions=(R1, R2))
    a = fleet.account_ids
    assert fleet.services(a[0], R1) and not fleet.services(a[1], R1)
    sim_env(Simulator(fleet, Faults(malformed={(a[0], R1), (a[1], R1)})))
    db = tmp_path / "inv.duckdb"
    plan = Plan(tuple(accounts_of(fleet)), (R1, R2), Options(workers=1))
    summary = await run_collect(plan, db, None)

    assert summary.status == "complete" and summary.exit_code == 0
    scans = rows(db, "select account_id, region, status, services from scans")
    assert {s["status"] for s in scans} == {"ok"}
    stored = rows(
        db,
        f"select service_name, state, scale from container_services where account_id = '{a[0]}' and region = '{R1}' order by service_name",
    )
    assert len(stored) == len(fleet.services(a[0], R1))  # every service kept
    bad = [s for s in stored if s["state"] == "EXPLODING"]  # unknown enum value kept as sent
    assert len(bad) == 1 and bad[0]["scale"] is None  # "3" is not an integer: NULL
    assert (
        rows(db, f"select count(*) as n from container_services where account_id = '{a[1]}'")[0][
            "n"
        ]
        == 1
    )
    anomalies = rows(db, "select account_id, region, error_code, message from errors")
    for acct in (a[0], a[1]):
        mine = {
            (e["error_code"], e["message"].split(": ", 1)[1])
            for e in anomalies
            if e["account_id"] == acct
        }
        assert (
            "UnknownEnumValue",
            "state: unknown ContainerServiceState value 'EXPLODING' (known: DELETING, DEPLOYING, DISABLED, PENDING, READY, RUNNING, UPDATING)",
        ) in mine
        assert ("UnexpectedShape", "scale: expected integer, got str") in mine
        assert any(code == "UnexpectedShape" and m.endswith(".image: missing") for code, m in mine)
    assert {e["region"] for e in anomalies} == {R1}
    assert summary.tally.anomalies == len(anomalies) == 6


class OddAnswers(Simulator):
    """Answers GetContainerServices with whatever body a pair is given."""

    def __init__(self, fleet: Fleet, bodies: dict[tuple[str, str], bytes]):
        super().__init__(fleet, Faults())
        self.bodies = bodies

    async def _lightsail(self, request: web.Request, op: str, body: bytes) -> web.StreamResponse:
        caller = self._authenticate(request, op, xml=False)
        odd = self.bodies.get((caller.account_id, caller.region))
        if odd is None:
            return await super()._lightsail(request, op, body)
        self._count(op, "calls")
        key = (caller.account_id, caller.region)
        self._calls[key] = self._calls.get(key, 0) + 1
        return self._json(odd)


@pytest.mark.parametrize("engine", ["lean", "botocore"])
async def test_unexpected_answer_shapes_never_crash_the_run(
    sim_env: Any, tmp_path: Path, engine: str
) -> None:
    fleet = Fleet(4, seed=2, regions=(R1, R2))
    a = fleet.account_ids
    sim_env(
        OddAnswers(
            fleet,
            {
                (a[0], R1): b"{}",  # the list left out
                (a[1], R1): b'{"containerServices": "nope"}',
                (a[2], R1): b'{"containerServices": [7, {"containerServiceName": 5}]}',
                (a[3], R1): b"<html>not json</html>",
            },
        )
    )
    db = tmp_path / "inv.duckdb"
    plan = Plan(tuple(accounts_of(fleet)), (R1, R2), Options(workers=1, engine=engine))
    summary = await run_collect(plan, db, None)
    assert summary.status == "partial"  # stored and finished, whatever came back
    scans = {(s["account_id"], s["region"]): s for s in rows(db, "select * from scans")}
    assert len(scans) == 8
    assert all(scans[(x, R2)]["status"] == "ok" for x in a)  # the other region is unharmed
    errors = rows(db, "select account_id, region, error_code, message from errors")
    assert {e["region"] for e in errors} == {R1}
    for x in a:
        assert scans[(x, R1)]["attempts"] == 1  # a bad answer is not retried
    mine = {x: [e for e in errors if e["account_id"] == x] for x in a}
    # no list of services: a failed scan (never an empty region), in both engines
    for x, got in ((a[0], "missing"), (a[1], "a JSON string")):
        assert (scans[(x, R1)]["status"], scans[(x, R1)]["error_code"]) == (
            "failed",
            "UnexpectedShape",
        )
        (e,) = mine[x]
        assert e["error_code"] == "UnexpectedShape"
        assert f"containerServices is {got}, expected a list" in e["message"]
    # a list of bad services: answered, nothing storable, each problem recorded (both engines:
    # botocore's parser never sees the answer)
    assert (scans[(a[2], R1)]["status"], scans[(a[2], R1)]["services"]) == ("ok", 2)
    assert {e["error_code"] for e in mine[a[2]]} == {"UnexpectedShape"} and len(mine[a[2]]) == 2
    # not JSON: nothing could be stored, a failed target with a clear code and message
    assert scans[(a[3], R1)]["error_code"] == "ResponseParserError"
    (e,) = mine[a[3]]
    assert "not JSON" in e["message"] or "could not be parsed" in e["message"]
    assert rows(db, "select status from runs")[0]["status"] == "partial"


# --------------------------------------------------------------------------- 7. bad --db


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kind", ["corrupt", "foreign", "text"])
def test_a_corrupt_or_foreign_db_is_refused_and_left_untouched(
    tmp_path: Path, simulator: Simulator, kind: str
) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    db = folder / "x.duckdb"
    if kind == "foreign":
        con = duckdb.connect(str(db))
        con.execute("create table invoices (id integer, total decimal(10, 2))")
        con.execute("insert into invoices values (1, 9.99)")
        con.close()
    elif kind == "corrupt":
        good = tmp_path / "good.duckdb"
        duckdb.connect(str(good)).close()
        raw = bytearray(good.read_bytes())
        raw[4096:8192] = b"\xff" * 4096  # a DuckDB header, garbage after it
        db.write_bytes(bytes(raw))
    else:
        db.write_text("id,name\n1,not a database\n")
    before = _listing(folder)
    runner = CliRunner()
    for args in (
        ["collect", "--db", str(db), "--no-parquet", "--regions", R1],
        ["runs", "--db", str(db)],
        ["query", "select 1", "--db", str(db)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)  # a bad --db: a usage error
        assert str(db) in result.output.replace("\n", "")
        assert "Traceback" not in result.output
        assert _listing(folder) == before, f"{args} changed the folder"
