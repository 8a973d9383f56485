"""`inventory diff`: collect a simulator fleet, evolve it in known ways, collect, diff.

The simulator's `Fleet.evolve` lists every change it makes (`fleet.changes`); the diff of the
two snapshots must be exactly those changes (plus the few this test makes by hand for the kinds
the simulator does not produce), through real HTTP, a real DuckDB file and the real CLI.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from inventory.answers import diff as diff_mod
from inventory.cli import app
from inventory.errors import UsageError
from inventory.model import Account, Options, Plan
from inventory.run.pipeline import RunSummary, run_collect
from inventory.simulator import Fleet, Simulator
from inventory.simulator.fleet import Change as FleetChange
from inventory.storage import lake, lakequery
from inventory.storage.fingerprint import Fingerprinter, load_key
from inventory.storage.store import Store

MakeSimulator = Callable[..., Simulator]
REGIONS = ("us-east-1", "eu-west-2", "ap-south-1")
runner = CliRunner()


def plan_for(fleet: Fleet, regions: tuple[str, ...] = REGIONS, env_values: bool = False) -> Plan:
    """The hub (base credentials) and every member account (assumed role), `regions`."""
    accounts = [Account(id=fleet.hub_account_id, name="hub")] + [
        Account(id=a, role_arn=f"arn:aws:iam::{a}:role/Reader") for a in fleet.account_ids
    ]
    options = Options(concurrency=16, rate=2000.0, timeout=5.0, include_env_values=env_values)
    return Plan(accounts=tuple(accounts), regions=regions, options=options, source="test")


def collect(plan: Plan, db: Path, dest: str | None = None) -> RunSummary:
    return asyncio.run(run_collect(plan, db, dest))


def diff_of(db: Path, from_run: str | None = None, to_run: str | None = None) -> diff_mod.Diff:
    with Store.open(db, read_only=True) as store, store.connection() as con:
        return diff_mod.diff(con, from_run, to_run)


# --------------------------------------------------------------------------- expectations

_SLOTS = {"currentDeployment": "current", "nextDeployment": "next"}


def _field(path: str | None) -> str | None:
    if path is None:
        return None
    head, _, rest = path.partition(".")
    if head in _SLOTS:
        return f"{_SLOTS[head]}.{rest}"
    return {"publicDomainNames": "public_domain_names"}.get(path, path)


def _tags(tags: list[dict[str, str]] | None) -> dict[str, str | None] | None:
    return None if tags is None else {t["key"]: t.get("value") for t in tags}


def expected_changes(
    changes: list[FleetChange], accounts: set[str], fingerprint: Fingerprinter
) -> list[dict[str, Any]]:
    """The simulator's known changes as the diff reports them."""
    out = []
    for c in changes:
        if c.account_id not in accounts or c.region not in REGIONS:
            continue
        old, new = c.old, c.new
        if c.kind == "service_added":
            old, new = None, c.new["state"]
        elif c.kind == "service_removed":
            old, new = c.old["state"], None
        elif c.kind == "tags":
            old, new = _tags(old), _tags(new)
        elif c.kind.startswith("env_"):
            old = None if old is None else fingerprint(old)
            new = None if new is None else fingerprint(new)
        out.append(_row(c.kind, c.account_id, c.region, c.service_name, _field(c.field), old, new))
        if c.kind == "state" and c.old == "DISABLED":  # the simulator re-enables it too
            out.append(
                _row("disabled", c.account_id, c.region, c.service_name, "is_disabled", True, False)
            )
    return out


def _row(*values: Any) -> dict[str, Any]:
    keys = ("kind", "account_id", "region", "service_name", "field", "old", "new")
    return dict(zip(keys, values, strict=True))


def _canon(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def hand_made_changes(fleet: Fleet, accounts: set[str]) -> list[dict[str, Any]]:
    """Change services `evolve` left alone, for the kinds it does not make; returns them."""
    touched = {(c.account_id, c.region, c.service_name) for c in fleet.changes}
    todo = ["url", "disabled", "command", "deployment_added", "deployment_removed",
            "container_added", "container_removed"]  # fmt: skip
    out: list[dict[str, Any]] = []
    for acct in sorted(accounts):
        for region in REGIONS:
            for svc in fleet.services(acct, region):  # the new generation's own copies
                if (acct, region, svc["containerServiceName"]) in touched:
                    continue
                for kind in todo:
                    row = _tweak(kind, acct, region, svc)
                    if row is not None:
                        out.append(row)
                        todo.remove(kind)
                        break
    assert not todo, f"the fleet had no service to make these changes on: {todo}"
    return out


def _tweak(kind: str, acct: str, region: str, svc: dict[str, Any]) -> dict[str, Any] | None:
    name = svc["containerServiceName"]
    cur, nxt = svc.get("currentDeployment"), svc.get("nextDeployment")
    containers = (cur or {}).get("containers", {})

    def row(field: str, old: Any, new: Any) -> dict[str, Any]:
        return _row(kind, acct, region, name, field, old, new)

    if kind == "url" and svc.get("url"):
        old = svc["url"]
        svc["url"] = old.replace("https://", "https://moved-")
        return row("url", old, svc["url"])
    if kind == "disabled" and svc["isDisabled"] is False:
        svc["isDisabled"] = True
        return row("is_disabled", False, True)
    if kind == "command" and containers:
        cname, c = next(iter(containers.items()))
        old = c.get("command")
        c["command"] = ["./serve", "--fast"]
        return row(f"current.containers.{cname}.command", old, c["command"])
    if kind == "deployment_added" and cur and not nxt:
        version = cur["version"] + 1
        svc["nextDeployment"] = {**copy.deepcopy(cur), "version": version, "state": "ACTIVATING"}
        return row("next.version", None, version)
    if kind == "deployment_removed" and nxt:
        del svc["nextDeployment"]
        return row("next.version", nxt["version"], None)
    if kind == "container_added" and cur:
        containers["extra"] = {"image": "busybox:1.36", "ports": {"9999": "TCP"}}
        return row("current.containers.extra", None, "busybox:1.36")
    if kind == "container_removed" and len(containers) > 1:
        cname = sorted(containers)[-1]
        gone = containers.pop(cname)
        return row(f"current.containers.{cname}", gone["image"], None)
    return None


# --------------------------------------------------------------------------- tests


def test_diff_of_two_generations_is_exactly_the_known_changes(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(10, seed=3, regions=REGIONS)
    sim = make_simulator(fleet=fleet)
    db = tmp_path / "inv.duckdb"
    plan = plan_for(fleet)
    first = collect(plan, db, str(tmp_path / "lake"))
    assert first.status == "complete"

    evolved = fleet.evolve(seed=1)
    accounts = set(fleet.all_account_ids)
    known = expected_changes(evolved.changes, accounts, Fingerprinter(load_key(db)))
    kinds = {r["kind"] for r in known}
    assert kinds >= {
        "service_added", "service_removed", "state", "power", "scale", "tags", "domains",
        "deployment_version", "deployment_state", "image", "ports", "env_added",
        "env_removed", "env_value",
    }  # fmt: skip
    known += hand_made_changes(evolved, accounts)
    sim.set_fleet(evolved)
    second = collect(plan, db, str(tmp_path / "lake"))
    assert second.status == "complete"

    result = diff_of(db)
    got = [
        _row(c.kind, c.account_id, c.region, c.service_name, c.field, c.old, c.new)
        for c in result.changes
    ]
    assert _canon(got) == _canon(known)
    assert set(diff_mod.KINDS) == {r["kind"] for r in got}  # every kind was exercised
    assert len(result.pairs) == len(accounts) * len(REGIONS) and result.uncompared == []
    assert {(c.from_run, c.to_run) for c in result.changes} == {(first.run_id, second.run_id)}
    assert diff_of(db, first.run_id, second.run_id).changes == result.changes

    # The same answer from the lake, and from the CLI; no environment value anywhere.
    with lakequery.open_lake(tmp_path / "lake") as con:
        assert diff_mod.diff(con).changes == result.changes
    # a sharded run has one runs row per shard: still one run
    (runs_file,) = (tmp_path / "lake" / "runs").glob(f"*/{second.run_id}.parquet")
    shutil.copyfile(runs_file, runs_file.with_name(f"{second.run_id}-shard-1.parquet"))
    with lakequery.open_lake(tmp_path / "lake") as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (3,)
        assert diff_mod.diff(con).changes == result.changes
    cli = runner.invoke(app, ["diff", "--db", str(db), "--format", "json"])
    assert cli.exit_code == 0, cli.output
    data = json.loads(cli.stdout)
    assert data["compared"] == len(result.pairs)
    assert data["counts"] == result.counts()
    assert _canon([{k: c[k] for k in _row(*[None] * 7)} for c in data["changes"]]) == _canon(got)
    secrets = fleet.secrets() | evolved.secrets()
    assert secrets and not any(s in cli.stdout for s in secrets)
    by_lake = runner.invoke(app, ["diff", "--lake", str(tmp_path / "lake"), "--format", "json"])
    assert by_lake.exit_code == 0 and json.loads(by_lake.stdout) == data
    table = runner.invoke(app, ["diff", "--db", str(db)], env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    assert f"from run {first.run_id} to run {second.run_id}" in table.stdout
    assert "deployment_version" in table.stdout and "busybox:1.36" in table.stdout
    assert not any(s in table.stdout for s in secrets)
    csv_out = runner.invoke(app, ["diff", "--db", str(db), "--format", "csv"])
    assert csv_out.exit_code == 0 and len(csv_out.stdout.splitlines()) == len(got) + 1


def test_default_pairs_skip_failed_scans_and_runs_can_be_chosen(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    regions = ("us-east-1", "eu-west-2")
    gen0 = Fleet(2, seed=11, regions=regions)
    sim = make_simulator(fleet=gen0)
    db = tmp_path / "inv.duckdb"
    plan = plan_for(gen0, regions)
    run1 = collect(plan, db).run_id
    only_one = diff_of(db)
    assert only_one.pairs == [] and only_one.changes == []
    assert {u.reason for u in only_one.uncompared} == {"only one good scan"}

    gen1 = gen0.evolve(seed=1)
    sim.set_fleet(gen1)
    run2 = collect(plan, db).run_id
    gen2 = gen1.evolve(seed=2)
    sim.set_fleet(gen2)
    sim.faults.denied_regions.add(("*", "eu-west-2"))  # run 3 fails there
    third = collect(plan, db)
    assert third.status == "partial"
    run3 = third.run_id

    def pairs(d: diff_mod.Diff) -> dict[str, set[tuple[str, str]]]:
        out: dict[str, set[tuple[str, str]]] = {}
        for p in d.pairs:
            out.setdefault(p.region, set()).add((p.from_run, p.to_run))
        return out

    # Default: each account × region's two newest good scans.
    d = diff_of(db)
    assert pairs(d) == {"us-east-1": {(run2, run3)}, "eu-west-2": {(run1, run2)}}
    by_region = {r: {c.service_name for c in d.changes if c.region == r} for r in regions}
    for region, fleet in (("us-east-1", gen2), ("eu-west-2", gen1)):
        names = {c.service_name for c in fleet.changes if c.region == region}
        assert by_region[region] == names
    # --to: that run against the scan before it; --from: that run against the newest.
    assert pairs(diff_of(db, to_run=run2)) == {r: {(run1, run2)} for r in regions}
    assert pairs(diff_of(db, from_run=run1)) == {
        "us-east-1": {(run1, run3)},
        "eu-west-2": {(run1, run2)},
    }
    both = diff_of(db, run1, run3)
    assert pairs(both) == {"us-east-1": {(run1, run3)}}
    assert {u.region for u in both.uncompared} == {"eu-west-2"}
    assert {u.reason for u in both.uncompared} == {f"not scanned ok in run {run3}"}
    assert d.title().startswith(f"{len(d.changes)} changes in ")

    with pytest.raises(UsageError, match="--from 'nope': no such run"):
        diff_of(db, from_run="nope")
    with pytest.raises(UsageError, match="give the older run as --from"):
        diff_of(db, run3, run1)
    bad = runner.invoke(app, ["diff", "--db", str(db), "--to", "20990101T000000Z-000000"])
    assert bad.exit_code == 2 and "--to '20990101T000000Z-000000': no such run" in bad.output


def test_raw_environment_values_are_never_shown(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(3, seed=3, regions=REGIONS)
    sim = make_simulator(fleet=fleet)
    db = tmp_path / "inv.duckdb"
    plan = plan_for(fleet, env_values=True)  # --include-env-values: the store holds values
    collect(plan, db)
    evolved = fleet.evolve(seed=1)
    sim.set_fleet(evolved)
    collect(plan, db)
    result = diff_of(db)
    env = [c for c in result.changes if c.kind.startswith("env_")]
    assert {c.kind for c in env} == {"env_added", "env_removed", "env_value"}
    assert all(c.old is None and c.new is None for c in env)
    out = runner.invoke(app, ["diff", "--db", str(db), "--format", "json"])
    assert out.exit_code == 0
    secrets = fleet.secrets() | evolved.secrets()
    assert not any(s in out.stdout for s in secrets)


def test_nothing_to_compare_and_a_failed_run(tmp_path: Path) -> None:
    """A lake whose only run failed: an empty answer, and that run cannot be compared."""
    with Store.open(tmp_path / "inv.duckdb") as store:
        started = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        store.begin_run("20260102T030405Z-aaaaaa", started, 1, 1, "test")
        store.finish_run("20260102T030405Z-aaaaaa", "failed")
        lake.export_run(store, "20260102T030405Z-aaaaaa", tmp_path / "lake")
    with lakequery.open_lake(tmp_path / "lake") as con:
        result = diff_mod.diff(con)
    assert result.pairs == [] and result.changes == [] and "nothing to compare" in result.title()
    with (
        pytest.raises(UsageError, match="that run is failed"),
        lakequery.open_lake(tmp_path / "lake") as con,
    ):
        diff_mod.diff(con, to_run="20260102T030405Z-aaaaaa")
