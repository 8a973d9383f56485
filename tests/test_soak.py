"""The fault soak.

One end-to-end collect against the simulator with 20 % throttling, 5 % 5xx, 3 % dropped
connections, one denied account, one denied region and one hanging region, with the
default retry settings (8 attempts, default backoff). It must store 100 % of the
reachable ground truth, and account for every injected fault: each failed attempt the
simulator counted is an attempt in `scans`, each final failure a row in `errors`, and the
run's `retries` and `api_calls` add up to what the simulator saw. Then the same run
without faults, for the wall-time comparison printed at the end (`pytest -s`).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from helpers import rows

from inventory.model import Account, Options, Plan
from inventory.run.pipeline import RunSummary, run_collect
from inventory.simulator import Faults, Fleet, Simulator

REGIONS = ("us-east-1", "eu-west-2", "ap-south-1", "ca-central-1", "ap-northeast-1")
DENIED_REGION, HUNG_REGION = "ap-south-1", "ca-central-1"


def plan(fleet: Fleet) -> Plan:
    accounts = tuple(
        Account(id=a, role_arn=f"arn:aws:iam::{a}:role/InventoryReader") for a in fleet.account_ids
    )
    # default attempts and backoff; a short call timeout and target deadline so that the
    # hanging region costs seconds, not minutes
    return Plan(
        accounts,
        REGIONS,
        Options(concurrency=8, rate=400, timeout=0.4, target_deadline=6.0, workers=1),
    )


def truth(fleet: Fleet, account: str, region: str) -> dict[str, Any]:
    services = fleet.services(account, region)
    slots = [
        d for s in services for d in (s.get("currentDeployment"), s.get("nextDeployment")) if d
    ]
    return {
        "services": sorted(s["containerServiceName"] for s in services),
        "deployments": len(slots),
        "containers": sum(len(d.get("containers") or {}) for d in slots),
    }


async def timed(p: Plan, db: Path) -> tuple[RunSummary, float]:
    started = time.monotonic()
    summary = await run_collect(p, db, None)
    return summary, time.monotonic() - started


async def test_fault_soak(make_simulator: Any, tmp_path: Path) -> None:
    fleet = Fleet(40, seed=51, regions=REGIONS)
    accounts = fleet.account_ids
    denied_account = accounts[4]

    # the same run without faults, for the comparison
    make_simulator(fleet=fleet, faults=Faults(latency_ms=5, seed=51))
    clean, clean_wall = await timed(plan(fleet), tmp_path / "clean.duckdb")
    assert clean.status == "complete"

    faults = Faults(
        latency_ms=5,
        throttle_rate=0.20,
        error_5xx_rate=0.05,
        drop_rate=0.03,
        denied_accounts={denied_account},
        denied_regions={("*", DENIED_REGION)},
        hang_regions={("*", HUNG_REGION)},
        hang_max_s=60,
        seed=51,
    )
    sim: Simulator = make_simulator(fleet=fleet, faults=faults)
    db = tmp_path / "soak.duckdb"
    summary, wall = await timed(plan(fleet), db)
    assert summary.status == "partial" and summary.exit_code == 3

    # ---- 100 % of the reachable ground truth
    reachable = [
        (a, r)
        for a in accounts
        if a != denied_account
        for r in REGIONS
        if r not in (DENIED_REGION, HUNG_REGION)
    ]
    scans = {(s["account_id"], s["region"]): s for s in rows(db, "select * from scans")}
    assert len(scans) == len(accounts) * len(REGIONS)
    stored: dict[tuple[str, str], dict[str, Any]] = {
        k: {"services": [], "deployments": 0, "containers": 0} for k in reachable
    }
    for r in rows(db, "select account_id, region, service_name from container_services"):
        stored[(r["account_id"], r["region"])]["services"].append(r["service_name"])
    for table in ("deployments", "containers"):
        for r in rows(db, f"select account_id, region, count(*) as n from {table} group by all"):
            stored[(r["account_id"], r["region"])][table] = r["n"]
    for key in reachable:
        assert scans[key]["status"] == "ok", scans[key]
        got = stored[key] | {"services": sorted(stored[key]["services"])}
        assert got == truth(fleet, *key), key
    assert set(stored) == set(reachable)  # and nothing from anywhere else

    # ---- every unreachable target failed, with the right code, and is in errors
    expected_codes: dict[tuple[str, str], str] = {}
    for a in accounts:
        for r in REGIONS:
            if a == denied_account:
                expected_codes[(a, r)] = "AccessDenied"
            elif r == DENIED_REGION:
                expected_codes[(a, r)] = "AccessDeniedException"
            elif r == HUNG_REGION:
                expected_codes[(a, r)] = "Timeout"
    failed = {k: s["error_code"] for k, s in scans.items() if s["status"] == "failed"}
    assert failed == expected_codes
    errors = rows(db, "select * from errors")
    assert Counter((e["account_id"], e["region"]) for e in errors) == Counter(
        [(denied_account, None)] + [k for k in expected_codes if k[0] != denied_account]
    )
    for e in errors:
        key = (e["account_id"], e["region"] or REGIONS[0])
        assert e["error_code"] == expected_codes[key]
        if e["region"] is not None:
            assert e["attempts"] == scans[key]["attempts"]
    for r in REGIONS:  # no call without credentials
        assert scans[(denied_account, r)]["attempts"] == 0
    for a in accounts:  # denied region: one call each, never retried
        if a != denied_account:
            assert scans[(a, DENIED_REGION)]["attempts"] == 1

    # ---- every injected fault accounted for
    ls = sim.operation_stats("GetContainerServices")
    sts = sim.operation_stats("AssumeRole")
    calls = sim.lightsail_calls()
    assert {k: s["attempts"] for k, s in scans.items() if s["attempts"]} == calls
    assert ls["calls"] == sum(s["attempts"] for s in scans.values())
    assert ls["ok"] == len(reachable)  # one good answer per collected target, no more
    assert ls["denied"] == len(accounts) - 1  # the denied region, once per account
    injected = ls["throttled"] + ls["errors_5xx"] + ls["dropped"] + ls["hung"]
    failed_attempts = sum(s["attempts"] - (s["status"] == "ok") for s in scans.values())
    assert failed_attempts == injected + ls["denied"]
    run = rows(db, "select * from runs")[0]
    assert run["retries"] == sum(max(0, s["attempts"] - 1) for s in scans.values())
    assert run["api_calls"] == sim.total_requests == ls["calls"] + sts["calls"]
    assert sts["calls"] == len(accounts) and sts["denied"] == 1
    assert (run["targets_ok"], run["targets_failed"]) == (len(reachable), len(expected_codes))
    assert ls["throttled"] > 0 and ls["errors_5xx"] > 0 and ls["dropped"] > 0 and ls["hung"] > 0

    print(
        f"\nfault soak: {len(scans)} targets ({len(reachable)} reachable, all stored: "
        f"{summary.tally.services} services); faults injected: {ls['throttled']} throttled, "
        f"{ls['errors_5xx']} 5xx, {ls['dropped']} dropped, {ls['hung']} hung, "
        f"{ls['denied']} denied region + {sts['denied']} denied AssumeRole; "
        f"{run['retries']} retries, {run['api_calls']} API calls "
        f"(clean run: {clean.tally.api_calls}); wall {wall:.2f}s vs {clean_wall:.2f}s without faults"
    )
