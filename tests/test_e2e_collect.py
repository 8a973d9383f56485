"""End to end: `collect` against the simulator, then the store and the lake read back and
compared with the simulator's ground truth, row for row and column for column.

Real parts throughout: aioboto3/aiobotocore clients over HTTP to the simulator, STS
AssumeRole per account, a DuckDB file and Parquet files on disk. The expected rows are
computed here from the raw `GetContainerServices` dicts (`fleet.services`) by the
contract's rules (docs/contract.md), never with `inventory.storage.flatten`, so a mistake there cannot
hide itself. Fleets are small; the first test covers every Lightsail region.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import botocore.session
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from inventory import __version__
from inventory.cli import app
from inventory.plan.config import load_plan
from inventory.plan.regions import all_regions
from inventory.run.pipeline import run_collect
from inventory.simulator import HUB_ACCOUNT_ID, Faults, Fleet, Simulator
from inventory.storage.fingerprint import load_key

MakeSimulator = Callable[..., Simulator]
WriteAccounts = Callable[..., Path]
Target = tuple[str, str]
Row = dict[str, Any]

R3 = ("us-east-1", "eu-west-2", "ap-northeast-1")
INVENTORY = ("container_services", "deployments", "containers")
SIX = (*INVENTORY, "scans", "errors", "runs")
# schema version 2 (collect --deep): three more tables, in the lake as empty files without it
DEEP = ("deployment_history", "deployment_history_containers", "container_images")
USAGE = ("container_powers", "service_utilization")  # collect --usage
INVENTORY_BIN = Path(sys.executable).with_name("inventory")

# --------------------------------------------------------------------------- the contract
# Column names in the contract's order, and the DuckDB types it names.
COLUMNS: dict[str, tuple[str, ...]] = {
    "container_services": (
        "run_id", "collected_at", "account_id", "account_name", "region", "service_name",
        "arn", "created_at", "availability_zone", "resource_type", "power", "power_id",
        "state", "state_detail_code", "state_detail_message", "scale", "is_disabled",
        "principal_arn", "private_domain_name", "url", "tags", "public_domain_names",
        "ecr_image_puller_role_active", "ecr_image_puller_role_principal_arn",
        "location_region_name", "extra",  # schema version 3
    ),
    "deployments": (
        "run_id", "collected_at", "account_id", "region", "service_name", "service_arn",
        "slot", "version", "state", "created_at", "public_endpoint_container_name",
        "public_endpoint_container_port", "health_check_healthy_threshold",
        "health_check_unhealthy_threshold", "health_check_timeout_seconds",
        "health_check_interval_seconds", "health_check_path", "health_check_success_codes",
        "extra",  # schema version 3
    ),
    "containers": (
        "run_id", "collected_at", "account_id", "region", "service_name", "service_arn",
        "slot", "deployment_version", "container_name", "image", "image_source", "command",
        "environment", "ports", "extra",  # extra: schema version 3
    ),
    "scans": (
        "run_id", "account_id", "region", "status", "started_at", "finished_at", "attempts",
        "services", "error_code",
    ),
    "errors": (
        "run_id", "occurred_at", "account_id", "region", "operation", "error_code", "message",
        "attempts",
    ),
    "runs": (
        "run_id", "started_at", "finished_at", "status", "accounts", "targets", "targets_ok",
        "targets_failed", "api_calls", "retries", "services", "deployments", "containers",
        "tool_version",
    ),
}  # fmt: skip
TYPES = {
    "account_id": "VARCHAR",
    "tags": "MAP(VARCHAR, VARCHAR)",
    "public_domain_names": "MAP(VARCHAR, VARCHAR[])",
    "command": "VARCHAR[]",
    "environment": "MAP(VARCHAR, VARCHAR)",
    "ports": "MAP(VARCHAR, VARCHAR)",
}
MAPS = ("tags", "public_domain_names", "environment", "ports")
KEYS: dict[str, tuple[str, ...]] = {
    "container_services": ("account_id", "region", "service_name"),
    "deployments": ("account_id", "region", "service_name", "slot"),
    "containers": ("account_id", "region", "service_name", "slot", "container_name"),
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PARQUET_NAME = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}(-\d+)?\.parquet")


# --------------------------------------------------------------------------- expectations
def utc(epoch: float | None) -> dt.datetime | None:
    """The instant an API epoch-seconds value names (millisecond precision), in UTC."""
    if epoch is None:
        return None
    micros = (Decimal(repr(epoch)) * 1_000_000).to_integral_value()
    return _EPOCH + dt.timedelta(microseconds=int(micros))


def hmac_fingerprint(key: bytes) -> Callable[[str], str]:
    return lambda v: "hmac-sha256:" + hmac.new(key, v.encode(), hashlib.sha256).hexdigest()[:16]


def dig(d: Any, *path: str) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def expected_rows(
    fleet: Fleet,
    run_id: str,
    targets: Iterable[Target],
    collected: Mapping[Target, dt.datetime],
    names: Mapping[str, str | None],
    env_value: Callable[[str], str],
) -> dict[str, dict[tuple[Any, ...], Row]]:
    """The three inventory tables for `targets`, keyed as KEYS says, from the raw answers."""
    out: dict[str, dict[tuple[Any, ...], Row]] = {t: {} for t in INVENTORY}
    for acct, region in targets:
        services = fleet.services(acct, region)
        at = collected.get((acct, region))
        for svc in services:
            name, arn = svc["containerServiceName"], svc["arn"]
            tags = svc.get("tags")
            domains = svc.get("publicDomainNames")
            out["container_services"][(acct, region, name)] = {
                "run_id": run_id,
                "collected_at": at,
                "account_id": acct,
                "account_name": names.get(acct),
                "region": region,
                "service_name": name,
                "arn": arn,
                "created_at": utc(svc.get("createdAt")),
                "availability_zone": dig(svc, "location", "availabilityZone"),
                "resource_type": svc.get("resourceType"),
                "power": svc.get("power"),
                "power_id": svc.get("powerId"),
                "state": svc.get("state"),
                "state_detail_code": dig(svc, "stateDetail", "code"),
                "state_detail_message": dig(svc, "stateDetail", "message"),
                "scale": svc.get("scale"),
                "is_disabled": svc.get("isDisabled"),
                "principal_arn": svc.get("principalArn"),
                "private_domain_name": svc.get("privateDomainName"),
                "url": svc.get("url"),
                "tags": None if tags is None else {t["key"]: t.get("value") for t in tags},
                "public_domain_names": (
                    None if domains is None else {c: list(n) for c, n in domains.items()}
                ),
                "ecr_image_puller_role_active": dig(
                    svc, "privateRegistryAccess", "ecrImagePullerRole", "isActive"
                ),
                "ecr_image_puller_role_principal_arn": dig(
                    svc, "privateRegistryAccess", "ecrImagePullerRole", "principalArn"
                ),
                "location_region_name": dig(svc, "location", "regionName"),
                "extra": None,  # the simulator's truth has only members the model knows
            }
            for slot, field in (("current", "currentDeployment"), ("next", "nextDeployment")):
                dep = svc.get(field)
                if dep is None:
                    continue
                hc = ("publicEndpoint", "healthCheck")
                out["deployments"][(acct, region, name, slot)] = {
                    "run_id": run_id,
                    "collected_at": at,
                    "account_id": acct,
                    "region": region,
                    "service_name": name,
                    "service_arn": arn,
                    "slot": slot,
                    "version": dep.get("version"),
                    "state": dep.get("state"),
                    "created_at": utc(dep.get("createdAt")),
                    "public_endpoint_container_name": dig(dep, "publicEndpoint", "containerName"),
                    "public_endpoint_container_port": dig(dep, "publicEndpoint", "containerPort"),
                    "health_check_healthy_threshold": dig(dep, *hc, "healthyThreshold"),
                    "health_check_unhealthy_threshold": dig(dep, *hc, "unhealthyThreshold"),
                    "health_check_timeout_seconds": dig(dep, *hc, "timeoutSeconds"),
                    "health_check_interval_seconds": dig(dep, *hc, "intervalSeconds"),
                    "health_check_path": dig(dep, *hc, "path"),
                    "health_check_success_codes": dig(dep, *hc, "successCodes"),
                    "extra": None,
                }
                for cname, spec in dep.get("containers", {}).items():
                    image = spec.get("image")
                    env = spec.get("environment")
                    ports = spec.get("ports")
                    command = spec.get("command")
                    out["containers"][(acct, region, name, slot, cname)] = {
                        "run_id": run_id,
                        "collected_at": at,
                        "account_id": acct,
                        "region": region,
                        "service_name": name,
                        "service_arn": arn,
                        "slot": slot,
                        "deployment_version": dep.get("version"),
                        "container_name": cname,
                        "image": image,
                        "image_source": "lightsail" if image.startswith(":") else "registry",
                        "command": None if command is None else list(command),
                        "environment": (
                            None if env is None else {k: env_value(v) for k, v in env.items()}
                        ),
                        "ports": None if ports is None else dict(ports),
                        "extra": None,
                    }
    return out


# --------------------------------------------------------------------------- reading back
def plain(rows: list[Row]) -> list[Row]:
    """Arrow's maps (lists of pairs) as dicts; a repeated key is an error."""
    for row in rows:
        for col in MAPS:
            pairs = row.get(col)
            if pairs is not None:
                row[col] = dict(pairs)
                assert len(row[col]) == len(pairs), f"{col} repeats a key: {pairs}"
    return rows


def db_rows(db: Path, relation: str, run_id: str | None = None) -> list[Row]:
    with duckdb.connect(str(db), read_only=True) as con:
        sql = f"select * from {relation}" + (" where run_id = $id" if run_id else "")
        table = con.sql(sql, params={"id": run_id} if run_id else None).to_arrow_table()
    return plain(table.to_pylist())


def db_types(db: Path, relation: str) -> list[tuple[str, str]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return [(r[0], r[1]) for r in con.execute(f"describe {relation}").fetchall()]


def keyed(table: str, rows: list[Row]) -> dict[tuple[Any, ...], Row]:
    out = {tuple(r[k] for k in KEYS[table]): r for r in rows}
    assert len(out) == len(rows), f"{table}: duplicate rows"
    return out


def assert_same_rows(where: str, actual: list[Row], expected: dict[tuple[Any, ...], Row]) -> None:
    """`where` is `<source>:<table>`: the rows of `table` as read from `<source>`."""
    table = where.split(":")[1]
    got = keyed(table, actual)
    assert sorted(got) == sorted(expected), f"{where}: other rows than the ground truth"
    for key, want in expected.items():
        row = got[key]
        assert list(row) == list(COLUMNS[table]), f"{where}: columns {list(row)}"
        diff = {
            c: (row[c], want[c])
            for c in want
            if row[c] != want[c] or type(row[c]) is not type(want[c])
        }
        assert not diff, f"{where} {key}: (stored, expected) differ: {diff}"


def collected_at(db: Path, run_id: str) -> dict[Target, dt.datetime]:
    """One collected_at per account × region, within its scan's start and finish."""
    scans = {(s["account_id"], s["region"]): s for s in db_rows(db, "scans", run_id)}
    out: dict[Target, dt.datetime] = {}
    for table in INVENTORY:
        for r in db_rows(db, table, run_id):
            target = (r["account_id"], r["region"])
            assert out.setdefault(target, r["collected_at"]) == r["collected_at"], target
    for target, at in out.items():
        scan = scans[target]
        assert scan["started_at"] <= at <= scan["finished_at"], (target, at, scan)
        assert at.utcoffset() == dt.timedelta(0)
    return out


def parquet_files(lake: Path, run_id: str, started: dt.datetime) -> dict[str, Path]:
    """The contract's layout, one whole file per table for the run, nothing half-written."""
    day = started.astimezone(dt.UTC).date().isoformat()
    assert sorted(p.name for p in lake.iterdir()) == sorted([*SIX, *DEEP, *USAGE])
    files = {}
    for table in SIX:
        parts = list((lake / table).iterdir())
        assert all(re.fullmatch(r"run_date=\d{4}-\d{2}-\d{2}", p.name) for p in parts), parts
        names = [f.name for p in parts for f in p.iterdir()]  # hidden names too
        assert all(_PARQUET_NAME.fullmatch(n) for n in names), names
        path = lake / table / f"run_date={day}" / f"{run_id}.parquet"
        assert path.is_file(), path
        assert [n for n in names if n.startswith(run_id)] == [f"{run_id}.parquet"]
        files[table] = path
    return files


def parquet_rows(path: Path) -> list[Row]:
    return plain(pq.read_table(path).to_pylist())


def check_types(db: Path, files: Mapping[str, Path] | None = None) -> None:
    """Columns in the contract's order with its types, in DuckDB and in Parquet."""
    for table, cols in COLUMNS.items():
        types = db_types(db, table)
        names = [n for n, _ in types]
        assert names[: len(cols)] == list(cols), (table, names)
        if table != "runs":
            assert names == list(cols), (table, names)
        for name, typ in types:
            if name.endswith("_at"):
                assert typ == "TIMESTAMP WITH TIME ZONE", (table, name, typ)
            if name in TYPES:
                assert typ == TYPES[name], (table, name, typ)
        if files is not None:
            fields = pq.read_schema(files[table])
            assert fields.names[: len(cols)] == list(cols)
            for f in fields:
                if f.name.endswith("_at"):
                    assert pa.types.is_timestamp(f.type) and f.type.tz in ("UTC", "+00:00"), f
                if f.name in MAPS:
                    assert pa.types.is_map(f.type), f


def check_inventory(
    db: Path,
    run_id: str,
    fleet: Fleet,
    ok_targets: Iterable[Target],
    names: Mapping[str, str | None],
    env_value: Callable[[str], str],
    files: Mapping[str, Path] | None = None,
) -> dict[str, dict[tuple[Any, ...], Row]]:
    """The run's three tables (and their Parquet files) equal the ground truth."""
    expected = expected_rows(fleet, run_id, ok_targets, collected_at(db, run_id), names, env_value)
    for table in INVENTORY:
        assert_same_rows(f"duckdb:{table}", db_rows(db, table, run_id), expected[table])
        if files is not None:
            assert_same_rows(f"parquet:{table}", parquet_rows(files[table]), expected[table])
    return expected


def check_bookkeeping_parquet(db: Path, run_id: str, files: Mapping[str, Path]) -> None:
    """scans, errors and runs in Parquet are the store's rows for the run."""
    for table in ("scans", "errors", "runs"):
        stored = db_rows(db, table, run_id)
        exported = parquet_rows(files[table])
        key = lambda r: repr(sorted(r.items()))  # noqa: E731
        assert sorted(exported, key=key) == sorted(stored, key=key), table


def check_hive_partitioning(db: Path, lake: Path, run_id: str, started: dt.datetime) -> None:
    """DuckDB reads the lake back with `run_date` (the UTC date of the run's start)."""
    day = started.astimezone(dt.UTC).date().isoformat()
    with duckdb.connect() as con:
        for table in SIX:
            got = con.execute(
                f"select cast(run_date as varchar), count(*) from read_parquet("
                f"'{lake}/{table}/*/*.parquet', hive_partitioning = true) "
                "where run_id = ? group by all",
                [run_id],
            ).fetchall()
            rows = len(db_rows(db, table, run_id))
            assert got == ([(day, rows)] if rows else []), (table, got)


def the_run(db: Path, run_id: str | None = None) -> Row:
    runs = db_rows(db, "runs")
    if run_id is None:
        assert len(runs) == 1
        return runs[0]
    return next(r for r in runs if r["run_id"] == run_id)


def check_run_row(
    run: Row,
    *,
    status: str,
    accounts: int,
    targets: int,
    failed: int,
    api_calls: int,
    counts: Mapping[str, int],
) -> None:
    assert run["status"] == status
    assert (run["accounts"], run["targets"]) == (accounts, targets)
    assert (run["targets_ok"], run["targets_failed"]) == (targets - failed, failed)
    assert run["api_calls"] == api_calls
    assert {t: run[t] for t in ("services", "deployments", "containers")} == {
        "services": counts["container_services"],
        "deployments": counts["deployments"],
        "containers": counts["containers"],
    }
    assert run["tool_version"] == __version__
    assert run["started_at"] <= run["finished_at"]
    assert run["run_id"].startswith(
        run["started_at"].astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ-")
    )


def check_ok_scans(db: Path, run_id: str, sim: Simulator, targets: Iterable[Target]) -> None:
    """One ok scan per target; attempts are the Lightsail calls the simulator saw for it."""
    scans = {(s["account_id"], s["region"]): s for s in db_rows(db, "scans", run_id)}
    calls = sim.lightsail_calls()
    for target in targets:
        s = scans[target]
        assert s["status"] == "ok" and s["error_code"] is None, s
        assert s["services"] == len(sim.fleet.services(*target)), s
        assert s["attempts"] == calls[target] >= 1, (s, calls.get(target))
        assert s["started_at"] <= s["finished_at"]


def truth_counts(expected: Mapping[str, Mapping[Any, Any]]) -> dict[str, int]:
    return {t: len(rows) for t, rows in expected.items()}


def invoke(args: list[str]) -> Any:
    """`inventory ARGS` in this process; a crash is a failure, not an exit status."""
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def run_cli(
    args: list[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed console script, in its own process (the environment is this test's)."""
    return subprocess.run(
        [str(INVENTORY_BIN), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=120,
    )


# --------------------------------------------------------------------------- the tests
async def test_collect_every_region_matches_ground_truth(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every region, an accounts file with names, an ExternalId and one role_arn override."""
    monkeypatch.delenv("INVENTORY_FINGERPRINT_KEY", raising=False)
    fleet = Fleet(6, seed=1)
    sim = make_simulator(fleet=fleet, faults=Faults(external_id="fleet-ext-7"))
    accounts = fleet.account_ids
    names = {a: f"team-{i}" for i, a in enumerate(accounts) if i % 2 == 0}
    override = {accounts[1]: f"arn:aws:iam::{accounts[1]}:role/ops/OtherReader"}
    config = write_accounts(
        tmp_path / "accounts.toml",
        accounts,
        names=names,
        external_id="fleet-ext-7",
        role_arns=override,
    )
    plan = load_plan(config)
    # the default: every region where botocore's endpoint data (AWS's own) gives Lightsail
    # an endpoint, and the simulator serves exactly those: not us-west-1 (the API's enum only)
    endpoint_regions = botocore.session.get_session().get_available_regions("lightsail")
    assert plan.regions == all_regions() and set(plan.regions) == set(endpoint_regions)
    assert "us-west-1" not in plan.regions and set(fleet.regions) == set(endpoint_regions)
    db, lake = tmp_path / "inv.duckdb", tmp_path / "lake"

    summary = await run_collect(plan, db, str(lake))

    assert summary.status == "complete" and summary.exit_code == 0
    targets = [(a, r) for a in accounts for r in plan.regions]
    run = the_run(db)
    assert run["run_id"] == summary.run_id
    key = load_key(db)
    assert (db.parent / (db.name + ".fingerprint-key")).stat().st_mode & 0o777 == 0o600
    files = parquet_files(lake, run["run_id"], run["started_at"])
    check_types(db, files)
    expected = check_inventory(
        db, run["run_id"], fleet, targets, names, hmac_fingerprint(key), files
    )
    counts = truth_counts(expected)
    # the fleet really exercises the cases (showcase account: every variant)
    assert counts["container_services"] >= 16 and counts["containers"] > counts["deployments"]
    envs = [r["environment"] for r in expected["containers"].values()]
    assert None in envs and {} in envs and any(envs)

    # the role: assumed once per account (not per region), the override and ExternalId used
    issued = sim.issued_credentials()
    assert sorted(c.account_id for c in issued) == sorted(accounts)
    assert sim.operation_stats("AssumeRole")["calls"] == len(accounts)
    arns = {c.account_id: c.role_arn for c in issued}
    assert arns[accounts[1]] == override[accounts[1]]
    assert arns[accounts[0]] == f"arn:aws:iam::{accounts[0]}:role/LightsailInventoryReader"
    assert {c.session_name for c in issued} == {f"lightsail-inventory@{run['run_id']}"}
    # every Lightsail call signed by the account's own assumed role, none by the hub
    assert set(sim.lightsail_calls()) == set(targets)

    check_run_row(
        run,
        status="complete",
        accounts=len(accounts),
        targets=len(targets),
        failed=0,
        api_calls=sim.total_requests,
        counts=counts,
    )
    assert sim.total_requests == len(accounts) + len(targets)  # AssumeRole + one call each
    assert run["retries"] == 0
    check_ok_scans(db, run["run_id"], sim, targets)
    assert len(db_rows(db, "scans", run["run_id"])) == len(targets)
    assert db_rows(db, "errors") == []
    for table in INVENTORY:
        assert_same_rows(f"latest:{table}", db_rows(db, f"latest_{table}"), expected[table])
    check_bookkeeping_parquet(db, run["run_id"], files)
    check_hive_partitioning(db, lake, run["run_id"], run["started_at"])


def test_cli_collect_matches_ground_truth_and_regions_flag_wins(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
) -> None:
    """The installed `inventory collect` in its own process, with the aiobotocore engine
    (botocore parses the answers: datetimes, not epoch numbers); --regions wins over the file."""
    fleet = Fleet(7, seed=3, regions=R3)
    sim = make_simulator(fleet=fleet)
    accounts = fleet.account_ids
    config = write_accounts(tmp_path / "a.toml", accounts, regions=["us-west-2"])
    db, lake = tmp_path / "cli.duckdb", tmp_path / "lake"
    key = "shared-fleet-fingerprint-key-0123456789ab"

    proc = run_cli(
        ["collect", "--config", str(config), "--regions", ",".join(R3), "--db", str(db),
         "--parquet-dir", str(lake), "--engine", "botocore"],
        env={"INVENTORY_FINGERPRINT_KEY": key},
    )  # fmt: skip

    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = the_run(db)
    assert run["run_id"] in proc.stdout and "complete" in proc.stdout
    assert not (db.parent / (db.name + ".fingerprint-key")).exists()  # the env key wins
    targets = [(a, r) for a in accounts for r in R3]
    files = parquet_files(lake, run["run_id"], run["started_at"])
    check_types(db, files)
    expected = check_inventory(
        db, run["run_id"], fleet, targets, {}, hmac_fingerprint(key.encode()), files
    )
    counts = truth_counts(expected)
    check_run_row(
        run,
        status="complete",
        accounts=len(accounts),
        targets=len(targets),
        failed=0,
        api_calls=sim.total_requests,
        counts=counts,
    )
    check_ok_scans(db, run["run_id"], sim, targets)
    assert {(s["account_id"], s["region"]) for s in db_rows(db, "scans")} == set(targets)
    assert sim.operation_stats("AssumeRole")["calls"] == len(accounts)
    check_bookkeeping_parquet(db, run["run_id"], files)


def test_own_account_without_config(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    """No --config: GetCallerIdentity names the hub account; no role is assumed."""
    fleet = Fleet(3, seed=1, regions=R3)
    sim = make_simulator(fleet=fleet)
    db, lake = tmp_path / "own.duckdb", tmp_path / "lake"

    result = invoke(
        ["collect", "--regions", ",".join(R3), "--db", str(db), "--parquet-dir", str(lake)]
    )

    assert result.exit_code == 0, result.output
    assert sim.operation_stats("GetCallerIdentity")["calls"] == 1
    assert sim.operation_stats("AssumeRole")["calls"] == 0
    assert sim.issued_credentials() == []
    hub = fleet.hub_account_id
    assert hub == HUB_ACCOUNT_ID
    targets = [(hub, r) for r in R3]
    assert set(sim.lightsail_calls()) == set(targets)
    run = the_run(db)
    files = parquet_files(lake, run["run_id"], run["started_at"])
    expected = check_inventory(
        db, run["run_id"], fleet, targets, {}, hmac_fingerprint(load_key(db)), files
    )
    assert len(expected["container_services"]) == sum(fleet.regions_of(hub).values()) > 0
    check_run_row(
        run,
        status="complete",
        accounts=1,
        targets=len(R3),
        failed=0,
        api_calls=sim.total_requests,  # GetCallerIdentity counts too
        counts=truth_counts(expected),
    )
    check_ok_scans(db, run["run_id"], sim, targets)


def test_include_env_values_stores_raw_values(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = Fleet(4, seed=1, regions=R3[:2])
    make_simulator(fleet=fleet)
    config = write_accounts(tmp_path / "a.toml", fleet.account_ids)
    db = tmp_path / "raw.duckdb"
    monkeypatch.chdir(tmp_path)

    result = invoke(
        ["collect", "--config", str(config), "--db", str(db), "--no-parquet",
              "--regions", ",".join(R3[:2]), "--include-env-values"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    run = the_run(db)
    targets = [(a, r) for a in fleet.account_ids for r in R3[:2]]
    expected = check_inventory(db, run["run_id"], fleet, targets, {}, lambda v: v)
    stored = {v for r in expected["containers"].values() for v in (r["environment"] or {}).values()}
    assert stored and stored <= fleet.secrets()
    assert not (tmp_path / "data").exists()  # --no-parquet: no lake in the working directory


def test_denied_account_and_region_partial_then_all_failed(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A good run, then a run with one account (AssumeRole) and one region denied: exit 3,
    status partial, both in errors and scans, everything else complete; the latest views
    keep the failed targets from the good run. Then every account denied: exit 1."""
    key = "k" * 32
    monkeypatch.setenv("INVENTORY_FINGERPRINT_KEY", key)
    fp = hmac_fingerprint(key.encode())
    fleet = Fleet(6, seed=1, regions=R3)
    sim = make_simulator(fleet=fleet)
    accounts = fleet.account_ids
    # the showcase account holds services in R3[0] and R3[2]; deny R3[2] everywhere
    denied_region = R3[2]
    denied_account = max(accounts[1:], key=lambda a: (sum(fleet.regions_of(a).values()), a))
    names = {a: f"n{i}" for i, a in enumerate(accounts)}
    config = write_accounts(tmp_path / "a.toml", accounts, names=names, regions=R3)
    db, lake = tmp_path / "p.duckdb", tmp_path / "lake"
    targets = [(a, r) for a in accounts for r in R3]

    first = asyncio.run(run_collect(load_plan(config), db, str(lake)))
    assert first.status == "complete"
    good = check_inventory(db, first.run_id, fleet, targets, names, fp)

    sim.reset_stats()
    sim.faults = Faults(denied_accounts={denied_account}, denied_regions={("*", denied_region)})
    proc = run_cli(["collect", "-c", str(config), "--db", str(db), "--parquet-dir", str(lake)])

    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert denied_account in proc.stdout and "partial" in proc.stdout
    run = next(r for r in db_rows(db, "runs") if r["run_id"] != first.run_id)
    run_id = run["run_id"]
    failed = {(denied_account, r) for r in R3} | {(a, denied_region) for a in accounts}
    ok = [t for t in targets if t not in failed]
    assert any(fleet.services(*t) for t in failed), "the failures must hide real services"

    # errors: ONE row for the account (region NULL), one per denied region target
    errors = db_rows(db, "errors", run_id)
    assume = [e for e in errors if e["operation"] == "AssumeRole"]
    assert len(assume) == 1
    e = assume[0]
    assert (e["account_id"], e["region"], e["error_code"]) == (denied_account, None, "AccessDenied")
    assert e["attempts"] == 1 and denied_account in e["message"]
    region_errors = sorted(
        (e["account_id"], e["region"], e["operation"], e["error_code"], e["attempts"])
        for e in errors
        if e["operation"] != "AssumeRole"
    )
    assert region_errors == sorted(
        (a, denied_region, "GetContainerServices", "AccessDeniedException", 1)
        for a in accounts
        if a != denied_account
    )
    assert all(e["message"] and e["occurred_at"].utcoffset() == dt.timedelta(0) for e in errors)

    # scans: failed targets failed (attempts 0 for the denied account), the rest ok
    scans = {(s["account_id"], s["region"]): s for s in db_rows(db, "scans", run_id)}
    assert set(scans) == set(targets)
    for t, s in scans.items():
        if t[0] == denied_account:
            assert (s["status"], s["attempts"], s["services"], s["error_code"]) == (
                "failed",
                0,
                None,
                "AccessDenied",
            ), s
        elif t in failed:
            assert (s["status"], s["attempts"], s["services"], s["error_code"]) == (
                "failed",
                1,
                None,
                "AccessDeniedException",
            ), s
    check_ok_scans(db, run_id, sim, ok)

    files = parquet_files(lake, run_id, run["started_at"])
    expected = check_inventory(db, run_id, fleet, ok, names, fp, files)
    check_run_row(
        run,
        status="partial",
        accounts=len(accounts),
        targets=len(targets),
        failed=len(failed),
        api_calls=sim.total_requests,
        counts=truth_counts(expected),
    )
    assert sim.operation_stats("AssumeRole")["calls"] == len(accounts)  # the denied one once
    check_bookkeeping_parquet(db, run_id, files)
    check_hive_partitioning(db, lake, run_id, run["started_at"])

    # latest views: the failed targets still show the good run's rows
    for table in INVENTORY:
        want = {
            k: (good[table][k] if (k[0], k[1]) in failed else expected[table][k])
            for k in good[table]
        }
        assert_same_rows(f"latest:{table}", db_rows(db, f"latest_{table}"), want)

    # every account denied: fatal, but runs, scans and errors are still written
    sim.faults = Faults(denied_accounts=set(accounts))
    result = invoke(["collect", "-c", str(config), "--db", str(db), "--parquet-dir", str(lake)])
    assert result.exit_code == 1, result.output
    last = max(db_rows(db, "runs"), key=lambda r: r["started_at"])
    assert last["run_id"] not in (first.run_id, run_id)
    assert last["status"] == "failed"
    assert (last["targets_ok"], last["targets_failed"]) == (0, len(targets))
    last_scans = db_rows(db, "scans", last["run_id"])
    assert len(last_scans) == len(targets)
    assert {(s["status"], s["attempts"], s["error_code"]) for s in last_scans} == {
        ("failed", 0, "AccessDenied")
    }
    errors = db_rows(db, "errors", last["run_id"])
    assert sorted((e["account_id"], e["region"], e["operation"]) for e in errors) == sorted(
        (a, None, "AssumeRole") for a in accounts
    )
    for table in INVENTORY:
        assert db_rows(db, table, last["run_id"]) == []
        # the latest views still answer from the earlier runs
        assert len(db_rows(db, f"latest_{table}")) == len(good[table])
