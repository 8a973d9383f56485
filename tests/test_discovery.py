"""Organizations discovery and `--regions discover`, against the simulator over real HTTP.

The simulator's organization (Fleet.org_accounts): the hub is the management account,
members mostly ACTIVE (about one in 17 SUSPENDED), spread over a root and seven nested OUs
(Production > Web > Legacy, Production > Data, Development > Team-A, Sandbox). Its list
operations answer at most 20 items a page, so a fleet of more than 20 accounts paginates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from inventory.cli import app
from inventory.model import Account, Options, OrgDiscovery
from inventory.plan.config import DISCOVER_REGIONS, load_plan
from inventory.plan.discovery import (
    Calls,
    DiscoveryFailed,
    _org_fix,
    lightsail_regions,
    list_org_accounts,
    merge_accounts,
    resolve,
)
from inventory.plan.regions import all_regions
from inventory.simulator import HUB_ACCOUNT_ID, Faults, Fleet, Simulator

MakeSimulator = Callable[..., Simulator]

ROLE = "LightsailInventoryReader"
R2 = ("us-east-1", "eu-west-2")
OPTIONS = Options(timeout=5.0, max_attempts=3)


def active(fleet: Fleet, ids: list[str] | None = None) -> list[str]:
    """ACTIVE accounts of the organization, in Organizations' order (hub first)."""
    ids = list(fleet.org_accounts) if ids is None else ids
    return [a for a in ids if fleet.org_accounts[a].status == "ACTIVE"]


def ou_named(fleet: Fleet, name: str) -> str:
    return next(ou.id for ou in fleet.org_units.values() if ou.name == name)


def rows(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


# ---------------------------------------------------------------------------- listing


async def test_whole_org_active_only_paginated(make_simulator: MakeSimulator) -> None:
    fleet = Fleet(200, seed=3)
    sim = make_simulator(fleet=fleet)
    suspended = [a for a, o in fleet.org_accounts.items() if o.status != "ACTIVE"]
    assert len(fleet.org_accounts) > 20 and suspended  # pages, and something to leave out

    calls = Calls(OPTIONS)
    listing = await list_org_accounts(OrgDiscovery(ROLE, external_id="ext-1"), OPTIONS, calls)

    assert [a.id for a in listing.accounts] == active(fleet)
    assert HUB_ACCOUNT_ID in [a.id for a in listing.accounts]  # the management account too
    assert listing.suspended == len(suspended) and listing.skipped == 0
    for a in listing.accounts:
        assert a == Account(
            a.id, fleet.org_accounts[a.id].name, f"arn:aws:iam::{a.id}:role/{ROLE}", "ext-1"
        )
    pages = math.ceil(len(fleet.org_accounts) / 20)
    assert sim.operation_stats("ListAccounts")["ok"] == pages
    assert calls.counter.api_calls == sim.total_requests == pages
    assert calls.counter.retries == 0


async def test_ous_recursive_and_skip_list(make_simulator: MakeSimulator) -> None:
    fleet = Fleet(200, seed=3)
    sim = make_simulator(fleet=fleet)
    production, sandbox = ou_named(fleet, "Production"), ou_named(fleet, "Sandbox")
    legacy = ou_named(fleet, "Legacy")  # Production > Web > Legacy: two levels down
    under = active(fleet, fleet.accounts_under(production) + fleet.accounts_under(sandbox))
    deep = [a for a in under if fleet.org_accounts[a].parent_id == legacy]
    direct = [a for a in under if fleet.org_accounts[a].parent_id == production]
    assert deep and direct and len(fleet.accounts_under(fleet.root_id, recursive=False)) > 20
    skip = (deep[0], direct[0])

    org = OrgDiscovery(ROLE, ous=(production, sandbox), skip=skip)
    listing = await list_org_accounts(org, OPTIONS)

    assert sorted(a.id for a in listing.accounts) == sorted(set(under) - set(skip))
    assert listing.skipped == 2
    assert sim.operation_stats("ListAccounts")["calls"] == 0
    assert sim.operation_stats("ListOrganizationalUnitsForParent")["ok"] >= 5  # every OU below

    # The root as the one "OU": the whole organization, through the tree (paginated).
    sim.reset_stats()
    tree = await list_org_accounts(OrgDiscovery(ROLE, ous=(fleet.root_id,)), OPTIONS)
    assert sorted(a.id for a in tree.accounts) == sorted(active(fleet))
    assert sim.operation_stats("ListAccountsForParent")["ok"] > len(fleet.org_units) + 1


async def test_unknown_ou_names_it(make_simulator: MakeSimulator) -> None:
    make_simulator(fleet=Fleet(5, seed=3))
    with pytest.raises(DiscoveryFailed) as caught:
        await list_org_accounts(OrgDiscovery(ROLE, ous=("ou-zzzz-00000000",)), OPTIONS)
    err = caught.value
    assert (err.operation, err.error_code) == ("ListAccountsForParent", "ParentNotFoundException")
    assert "org_ous: 'ou-zzzz-00000000' is not a root or OU" in str(err)


async def test_management_role(make_simulator: MakeSimulator) -> None:
    fleet = Fleet(25, seed=3)
    sim = make_simulator(fleet=fleet)
    # A role in the management account: assumed first, then Organizations answers.
    org = OrgDiscovery(ROLE, management_role_arn=f"arn:aws:iam::{HUB_ACCOUNT_ID}:role/OrgReader")
    listing = await list_org_accounts(org, OPTIONS)
    assert [a.id for a in listing.accounts] == active(fleet)
    assert [c.role_arn for c in sim.issued_credentials()] == [org.management_role_arn]

    # A role in a member account: Organizations denies it; the error says what to allow.
    member = fleet.account_ids[1]
    org = OrgDiscovery(ROLE, management_role_arn=f"arn:aws:iam::{member}:role/OrgReader")
    with pytest.raises(DiscoveryFailed) as caught:
        await list_org_accounts(org, OPTIONS)
    err = caught.value
    assert (err.operation, err.error_code, err.account_id) == (
        "ListAccounts",
        "AccessDeniedException",
        member,
    )
    assert err.exit_code == 1
    assert f"allow {org.management_role_arn} organizations:ListAccounts" in str(err)

    # The management role itself cannot be assumed.
    sim.faults = Faults(denied_accounts={HUB_ACCOUNT_ID})
    org = OrgDiscovery(ROLE, management_role_arn=f"arn:aws:iam::{HUB_ACCOUNT_ID}:role/OrgReader")
    with pytest.raises(DiscoveryFailed) as caught:
        await list_org_accounts(org, OPTIONS)
    assert (caught.value.operation, caught.value.error_code) == ("AssumeRole", "AccessDenied")
    assert "sts:AssumeRole" in str(caught.value)


def test_org_fix_messages() -> None:
    org = OrgDiscovery(ROLE)
    text = _org_fix("ListAccounts", "AWSOrganizationsNotInUseException", "arn:x", org, None)
    assert "not in an organization" in text and "management_role_arn" in text
    assert "organizations:ListAccounts" in _org_fix(
        "ListAccounts", "AccessDeniedException", "arn:x", org, None
    )


def test_merge_keeps_listed_accounts_first() -> None:
    listed = (Account("111111111111", "mine", "arn:aws:iam::111111111111:role/Other"),)
    found = [
        Account("222222222222", "b", "arn:aws:iam::222222222222:role/R"),
        Account("111111111111", "org name", "arn:aws:iam::111111111111:role/R"),
    ]
    assert merge_accounts(listed, found) == (listed[0], found[0])


# ---------------------------------------------------------------------------- regions


def test_regions_discover_in_the_plan(tmp_path: Path) -> None:
    assert load_plan(None, regions="discover").regions == DISCOVER_REGIONS
    path = tmp_path / "a.toml"
    path.write_text('role_name = "R"\nregions = ["discover"]\n[[accounts]]\nid = "111111111111"\n')
    assert load_plan(path).regions == DISCOVER_REGIONS
    assert load_plan(path, regions="us-east-1").regions == ("us-east-1",)


async def test_get_regions_finds_a_region_newer_than_the_sdk(
    make_simulator: MakeSimulator,
) -> None:
    assert "ap-east-9" not in all_regions()
    sim = make_simulator(fleet=Fleet(2, seed=1, regions=["eu-west-2", "ap-east-9", "us-east-1"]))
    found = await lightsail_regions(OPTIONS)
    assert found.regions == ("us-east-1", "eu-west-2", "ap-east-9")  # known order, then new
    assert found.new == ("ap-east-9",)
    assert set(found.gone) == set(all_regions()) - {"us-east-1", "eu-west-2"}
    assert sim.operation_stats("GetRegions")["ok"] == 1

    sim.faults = Faults(denied_regions={("*", "us-east-1")})  # where GetRegions is asked
    with pytest.raises(DiscoveryFailed) as caught:
        await lightsail_regions(OPTIONS)
    assert (caught.value.operation, caught.value.error_code) == (
        "GetRegions",
        "AccessDeniedException",
    )
    assert "lightsail:GetRegions" in str(caught.value) and "--regions all" in str(caught.value)


async def test_resolve_leaves_a_plain_plan_alone(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(accounts=2)
    plan = load_plan(None, regions="us-east-1")
    found = await resolve(plan)
    assert found.plan is plan and found.api_calls == 0 and sim.total_requests == 0


# ---------------------------------------------------------------------------- end to end


def write_org_file(path: Path, extra: str = "") -> Path:
    path.write_text(f'role_name = "{ROLE}"\nexternal_id = "ext-1"\n{extra}', encoding="utf-8")
    return path


def test_collect_org_end_to_end(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    """collect --org --regions discover: listed + discovered accounts (de-duplicated, minus
    the skip list) × the regions GetRegions names; api_calls counts the discovery calls."""
    fleet = Fleet(24, seed=5, regions=["us-east-1", "ap-east-9"])
    sim = make_simulator(fleet=fleet, faults=Faults(external_id="ext-1"))
    members = active(fleet, list(fleet.account_ids))
    listed, skipped = members[0], members[1]
    config = write_org_file(
        tmp_path / "org.toml",
        f'skip_accounts = ["{skipped}"]\n\n[[accounts]]\nid = "{listed}"\nname = "listed"\n',
    )
    db = tmp_path / "org.duckdb"

    result = CliRunner().invoke(
        app,
        ["collect", "-c", str(config), "--org", "--regions", "discover", "--db", str(db),
         "--no-parquet", "--log-format", "json"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    expected = [listed] + [a for a in active(fleet) if a not in (listed, skipped)]
    events = {e["event"]: e for e in map(json.loads, result.stderr.splitlines())}
    assert events["regions_discovered"]["new"] == ["ap-east-9"]
    org_event = events["org_discovered"]
    assert (org_event["accounts"], org_event["listed"], org_event["skipped"]) == (
        len(expected),
        1,
        1,
    )
    regions = {"us-east-1", "ap-east-9"}
    scans = rows(db, "select account_id, region, status from scans")
    assert sorted((a, r) for a, r, _ in scans) == sorted((a, r) for a in expected for r in regions)
    assert {s for *_, s in scans} == {"ok"}
    ((accounts, targets, api_calls, status),) = rows(
        db, "select accounts, targets, api_calls, status from runs"
    )
    assert (accounts, targets, status) == (len(expected), 2 * len(expected), "complete")
    assert api_calls == sim.total_requests  # GetRegions and ListAccounts pages included
    assert sim.operation_stats("ListAccounts")["ok"] == 2  # 25 entries: two pages
    names = dict(rows(db, "select distinct account_id, account_name from container_services"))
    assert names, "the fleet has services in these regions"
    for account_id, name in names.items():
        want = "listed" if account_id == listed else fleet.org_accounts[account_id].name
        assert name == want
    assert any(r == "ap-east-9" for (r,) in rows(db, "select region from container_services"))


def test_discovery_failure_is_a_failed_run(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    """Organizations refuses: exit 1 with the fix, and the run is recorded as failed with
    an errors row (and its Parquet files), nothing else collected."""
    fleet = Fleet(4, seed=5)
    sim = make_simulator(fleet=fleet)
    member = fleet.account_ids[0]
    config = write_org_file(
        tmp_path / "org.toml",
        f'org = true\nmanagement_role_arn = "arn:aws:iam::{member}:role/OrgReader"\n',
    )
    db, lake = tmp_path / "f.duckdb", tmp_path / "lake"

    result = CliRunner().invoke(
        app, ["collect", "-c", str(config), "--db", str(db), "--parquet-dir", str(lake)]
    )

    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "ListAccounts failed: AccessDeniedException" in text
    assert "organizations:ListAccounts" in text and "recorded as failed run" in text
    ((run_id, status, accounts, targets, api_calls),) = rows(
        db, "select run_id, status, accounts, targets, api_calls from runs"
    )
    assert (status, accounts, targets) == ("failed", 0, 0)
    assert api_calls == sim.total_requests == 3  # AssumeRole, ListAccounts, GetCallerIdentity
    ((account_id, region, operation, code, message),) = rows(
        db, "select account_id, region, operation, error_code, message from errors"
    )
    assert (account_id, region, operation, code) == (
        member,
        None,
        "ListAccounts",
        "AccessDeniedException",
    )
    assert "organizations:ListAccounts" in message
    assert rows(db, "select count(*) from scans") == [(0,)]
    assert list((lake / "errors").rglob(f"{run_id}.parquet"))
    assert sim.operation_stats("GetContainerServices")["calls"] == 0
