"""Retired accounts leave the latest views: the latest_* views, the named queries, `diff`,
`report`, `runs`, `prune` and the lake describe the current fleet, the account × region
pairs planned by the newest fleet-defining run (plus what narrowed runs scanned since).

Driven as a user does: `inventory collect` with an accounts file of 12 accounts against the
simulator, then with a file of 2; a night narrowed with `--regions` retires nothing; `prune
--keep-days` removes the history of the retired pairs. Nights are dated by `--run-id`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import rows
from typer.testing import CliRunner

from inventory.answers import queries
from inventory.cli import app
from inventory.plan.config import load_plan
from inventory.plan.runid import run_started_at
from inventory.simulator import Fleet, Simulator
from inventory.storage import lakequery
from inventory.storage.store import Store

WriteAccounts = Callable[..., Path]
REGIONS = ("us-east-1", "eu-west-2")
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def night(days_ago: int, suffix: str) -> str:
    """A run id dated `days_ago` days before now (its time is the run's started_at)."""
    return (NOW - dt.timedelta(days=days_ago)).strftime("%Y%m%dT%H%M%SZ") + f"-{suffix}"


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def json_rows(*args: str) -> list[dict[str, Any]]:
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def accounts_of(records: list[dict[str, Any]]) -> set[str]:
    return {r["account_id"] for r in records}


@pytest.fixture
def fleet() -> Fleet:
    return Fleet(12, seed=2, regions=REGIONS)


def test_retired_accounts_leave_every_latest_reader(
    tmp_path: Path,
    fleet: Fleet,
    make_simulator: Callable[..., Simulator],
    write_accounts: WriteAccounts,
) -> None:
    make_simulator(fleet=fleet)
    every, kept = fleet.account_ids, fleet.account_ids[:2]
    retired = set(every) - set(kept)
    assert all(fleet.regions_of(a) for a in kept)
    assert len([a for a in retired if fleet.regions_of(a)]) >= 5  # services to retire
    all12 = write_accounts(tmp_path / "all.toml", every, regions=REGIONS)
    two = write_accounts(tmp_path / "two.toml", kept, regions=REGIONS)
    db, lake = tmp_path / "inventory.duckdb", tmp_path / "lake"
    store = ("--db", str(db))

    def collect(config: Path, run_id: str, *extra: str) -> Any:
        result = invoke(
            "collect", "--config", str(config), *store, "--parquet-dir", str(lake),
            "--run-id", run_id, *extra,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return result

    first, second, narrowed = night(30, "a12"), night(20, "b02"), night(10, "c02")
    collect(all12, first)
    assert accounts_of(
        json_rows("query", "select * from latest_container_services", *store)
    ) == set(every) & {a for a in every if fleet.regions_of(a)}
    collect(two, second)

    # the views, and every named query that reads them, hold the two accounts only
    latest = json_rows("query", "select * from latest_container_services", *store)
    assert accounts_of(latest) == {a for a in kept if fleet.regions_of(a)}
    assert {r["run_id"] for r in latest} == {second}
    assert {(r["account_id"], r["region"]) for r in rows(db, "select * from fleet")} == {
        (a, r) for a in kept for r in REGIONS
    }
    cost = json_rows("query", "monthly_cost", *store)
    assert cost and accounts_of(cost) <= set(kept)
    for query in queries.load():
        if any(v is None for v in query.params.values()):
            continue
        found = json_rows("query", query.name, *store)
        assert not accounts_of(found) & retired if found and "account_id" in found[0] else True
    changes = json_rows("query", "changes_since_previous_run", *store)
    assert {r["run_id"] for r in changes} <= {second} and not accounts_of(changes) & retired

    # diff compares the fleet's pairs only; the retired ones are not even "uncompared"
    diffed = invoke("diff", *store, "--format", "json")
    assert diffed.exit_code == 0, diffed.output
    report = json.loads(diffed.stdout)
    assert report["compared"] == len(kept) * len(REGIONS) and report["uncompared"] == []
    assert not {c["account_id"] for c in report["changes"]} & retired
    since_first = json.loads(invoke("diff", *store, "--from", first, "--format", "json").stdout)
    assert since_first["compared"] == len(kept) * len(REGIONS)
    assert {u["account_id"] for u in since_first["uncompared"]} == retired
    assert {u["reason"] for u in since_first["uncompared"]} == {
        "no longer in the fleet (no latest_* rows)"
    }

    # the report agrees with its totals: no retired account anywhere on the page
    page = tmp_path / "report.html"
    assert invoke("report", "--html", str(page), *store).exit_code == 0
    html = page.read_text()
    assert second in html and not [a for a in retired if a in html]
    assert (
        f"The fleet: 2 accounts, {2 * len(REGIONS)} account × region pairs, as planned by run "
        f"{second} (and scanned ok since)." in html
    )

    # a narrowed one-off night updates what it scanned and retires nothing
    one_off = collect(two, narrowed, "--regions", "us-east-1")
    assert "a one-off run (narrowed): it retires nothing" in one_off.stderr
    runs = {r["run_id"]: r for r in json_rows("runs", *store)}
    assert [runs[r]["fleet_defining"] for r in (first, second, narrowed)] == [True, True, False]
    table = invoke("runs", *store)
    assert f"current fleet: {len(kept) * len(REGIONS)} account × region pairs" in table.stdout
    assert f"defined by run {second}" in table.stdout
    by_pair = {
        (r["account_id"], r["region"]): r["run_id"] for r in rows(db, "select * from latest_scans")
    }
    assert by_pair == {
        (a, r): narrowed if r == "us-east-1" else second for a in kept for r in REGIONS
    }

    # the lake answers as the store does
    con = lakequery.open_lake(lake)
    try:
        lake_latest = con.execute("select account_id, region, run_id from latest_scans").fetchall()
    finally:
        con.close()
    assert {(a, r): run for a, r, run in lake_latest} == by_pair
    lake_cost = json_rows("query", "monthly_cost", "--lake", str(lake))
    assert sorted(map(json.dumps, lake_cost)) == sorted(
        map(json.dumps, json_rows("query", "monthly_cost", *store))
    )

    # prune by age removes the retired pairs' history; the fleet's snapshots stay
    pruned = invoke("prune", *store, "--keep-days", "15")
    assert pruned.exit_code == 0, pruned.output
    left = {r["run_id"] for r in rows(db, "select run_id from runs")}
    assert left == {second, narrowed}
    assert not {r["account_id"] for r in rows(db, "select account_id from scans")} & retired
    assert rows(db, "select count(*) as n from latest_container_services") == [{"n": len(latest)}]
    # the run that defines the fleet is kept even when every one of its pairs is newer
    # elsewhere: removing it would let the retired accounts of an older run come back
    invoke("prune", *store, "--keep-days", "0")
    assert {r["run_id"] for r in rows(db, "select run_id from runs")} == {second, narrowed}


def test_what_narrows_a_run(tmp_path: Path, write_accounts: WriteAccounts) -> None:
    """A list of regions or --no-org on the command line narrows; 'all', 'discover', the
    file's own regions, --org and sharding do not."""
    config = write_accounts(tmp_path / "a.toml", ["111111111111"], regions=["us-east-1"])
    assert load_plan(config).fleet_defining
    assert load_plan(config, regions="all").fleet_defining
    assert load_plan(config, regions="discover").fleet_defining
    assert not load_plan(config, regions="us-east-1").fleet_defining
    assert not load_plan(config, regions="eu-west-2,us-east-1").fleet_defining
    assert (
        load_plan(None).fleet_defining and not load_plan(None, regions="eu-west-2").fleet_defining
    )
    org = tmp_path / "org.toml"
    org.write_text('role_name = "R"\norg = true\n\n[[accounts]]\nid = "111111111111"\n')
    assert load_plan(org).fleet_defining
    assert not load_plan(org, org=False).fleet_defining
    assert load_plan(config, org=True).fleet_defining


def _run(
    store: Store,
    run_id: str,
    pairs: dict[tuple[str, str], str],
    *,
    status: str = "complete",
    fleet_defining: bool = True,
    shard: tuple[int, int] | None = None,
) -> None:
    """A run of the given scans (pair -> 'ok' | 'failed'), written through the Store API."""
    import pyarrow as pa

    from inventory.storage import schema

    started = dt.datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    store.shard = shard
    store.begin_run(run_id, started, 1, len(pairs), "test", fleet_defining=fleet_defining)
    scans = [
        {"run_id": run_id, "account_id": a, "region": r, "status": s, "attempts": 1}
        for (a, r), s in pairs.items()
    ]
    store.append(run_id, {"scans": pa.Table.from_pylist(scans, schema=schema.SCANS)})
    store.finish_run(run_id, status)
    store.shard = None


A, B = "111111111111", "222222222222"


def latest(db: Path) -> dict[tuple[str, str], str]:
    return {
        (r["account_id"], r["region"]): r["run_id"] for r in rows(db, "select * from latest_scans")
    }


def test_only_a_whole_good_run_redefines_the_fleet(tmp_path: Path) -> None:
    """A failed run, a narrowed run and a sharded run with a shard missing retire nothing;
    a failed target of a fleet-defining run keeps its pair (and its last good scan)."""
    db = tmp_path / "s.duckdb"
    with Store.open(db) as store:
        _run(store, "20260101T000000Z-1", {(A, "us-east-1"): "ok", (B, "us-east-1"): "ok"})
        _run(store, "20260102T000000Z-2", {(A, "us-east-1"): "failed"}, status="failed")
        assert latest(db) == {
            (A, "us-east-1"): "20260101T000000Z-1",
            (B, "us-east-1"): "20260101T000000Z-1",
        }
        _run(store, "20260103T000000Z-3", {(A, "us-east-1"): "ok"}, fleet_defining=False)
        assert set(latest(db)) == {(A, "us-east-1"), (B, "us-east-1")}
        _run(store, "20260104T000000Z-4", {(A, "us-east-1"): "ok"}, shard=(0, 2))
        assert set(latest(db)) == {(A, "us-east-1"), (B, "us-east-1")}  # shard 1 of 2 missing
        _run(
            store,
            "20260105T000000Z-5",
            {(A, "us-east-1"): "ok", (B, "us-east-1"): "failed"},
            status="partial",
        )
        assert latest(db) == {
            (A, "us-east-1"): "20260105T000000Z-5",
            (B, "us-east-1"): "20260101T000000Z-1",
        }
        _run(store, "20260106T000000Z-6", {(A, "eu-west-2"): "ok"})
        assert latest(db) == {(A, "eu-west-2"): "20260106T000000Z-6"}
        assert rows(db, "select run_id from fleet_run") == [{"run_id": "20260106T000000Z-6"}]


def _night(
    path: Path,
    lake_dir: Path,
    run_id: str,
    services: dict[tuple[str, str], str | None],
    *,
    status: str = "complete",
    shard: tuple[int, int] | None = None,
) -> None:
    """One run (or one shard of one) in its own store, exported to the lake: each pair scanned
    ok, with one service of the given state (None: scanned ok but no inventory rows, as a run
    killed half way and marked failed keeps its scans and loses its inventory)."""
    import pyarrow as pa

    from inventory.storage import lake, schema

    started = run_started_at(run_id)
    with Store.open(path) as store:
        store.shard = shard
        store.begin_run(run_id, started, 1, len(services), "test")
        scans = [
            {"run_id": run_id, "account_id": a, "region": r, "status": "ok", "attempts": 1}
            for a, r in services
        ]
        found = [
            {"run_id": run_id, "account_id": a, "region": r, "service_name": f"svc-{a}",
             "state": state}
            for (a, r), state in services.items()
            if state is not None
        ]  # fmt: skip
        store.append(
            run_id,
            {
                "scans": pa.Table.from_pylist(scans, schema=schema.SCANS),
                "container_services": pa.Table.from_pylist(found, schema=schema.CONTAINER_SERVICES),
            },
        )
        store.finish_run(run_id, status)
        lake.export_run(store, run_id, lake_dir)


def test_every_reader_has_one_rule_for_a_good_run(tmp_path: Path) -> None:
    """A sharded run with a shard failed is not good in any reader: the store's views, the
    lake's, the Athena DDL's views, `diff` and the named query all keep the night before (the
    failed shard's ok scans have no inventory rows: reading them would empty their pairs). A
    shard missing from the lake makes the run good but not fleet-defining: it updates the
    pairs it scanned and retires nothing, again in every reader."""
    import duckdb

    from inventory.answers import diff as diff_mod
    from inventory.errors import UsageError

    lake_dir = tmp_path / "lake"
    us = "us-east-1"
    one, two = "20260101T000000Z-one", "20260102T000000Z-two"
    _night(tmp_path / "one.duckdb", lake_dir, one, {(A, us): "READY", (B, us): "READY"})
    _night(tmp_path / "s0.duckdb", lake_dir, two, {(A, us): "DISABLED"}, shard=(0, 2))
    _night(tmp_path / "s1.duckdb", lake_dir, two, {(B, us): None}, status="failed", shard=(1, 2))
    changes_sql, _ = queries.resolve_sql("changes_since_previous_run")
    athena_views = [
        sql.rstrip(";")
        for sql in lakequery.athena_ddl().split("\n\n")
        if sql.startswith("CREATE OR REPLACE VIEW")
    ]
    assert [s.split()[4] for s in athena_views[:2]] == [
        "lightsail_inventory.good_runs",
        "lightsail_inventory.good_scans",
    ]

    def readers() -> dict[str, duckdb.DuckDBPyConnection]:
        """The lake, a store rebuilt from it, and the Athena views over the lake's tables."""
        db = tmp_path / f"rebuilt-{len(list(tmp_path.glob('rebuilt-*')))}.duckdb"
        out = invoke("rebuild", "--from-lake", str(lake_dir), "--db", str(db))
        assert out.exit_code == 0, out.output
        athena = duckdb.connect()
        athena.execute("ATTACH ':memory:' AS lightsail_inventory")
        with lakequery.open_lake(lake_dir) as con:
            tables = ("runs", "scans", "container_services", "deployments", "containers")
            for table in (*tables, "container_powers"):
                data = con.sql(f"SELECT * EXCLUDE (run_date) FROM {table}").to_arrow_table()
                athena.register("_t", data)
                athena.execute(f"CREATE TABLE lightsail_inventory.{table} AS SELECT * FROM _t")
                athena.unregister("_t")
        for sql in athena_views:
            athena.execute(sql)
        athena.execute("USE lightsail_inventory")
        return {
            "lake": lakequery.open_lake(lake_dir),
            "store": duckdb.connect(str(db), read_only=True),
            "athena": athena,
        }

    def latest(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        return {
            "scans": sorted(con.execute("SELECT account_id, run_id FROM latest_scans").fetchall()),
            "services": sorted(
                con.execute("SELECT service_name, state FROM latest_container_services").fetchall()
            ),
            "fleet_run": con.execute("SELECT run_id FROM fleet_run").fetchall(),
        }

    # shard 1 failed: the run is not good anywhere; every reader keeps the night before
    for name, con in readers().items():
        with con:
            assert latest(con) == {
                "scans": [(A, one), (B, one)],
                "services": [(f"svc-{A}", "READY"), (f"svc-{B}", "READY")],
                "fleet_run": [(one,)],
            }, name
            if name == "athena":
                continue  # diff and the named queries read the store or the lake
            assert con.execute(changes_sql).fetchall() == [], name
            d = diff_mod.diff(con)
            assert d.pairs == [] and {u.reason for u in d.uncompared} == {"only one good scan"}
            with pytest.raises(UsageError, match=r"that run is \S*failed"):
                diff_mod.diff(con, to_run=two)

    # shard 1 missing from the lake: the run is good (it updates A) but defines no fleet
    for p in lake_dir.rglob(f"{two}.shard-1.parquet"):
        p.unlink()
    for name, con in readers().items():
        with con:
            assert latest(con) == {
                "scans": [(A, two), (B, one)],
                "services": [(f"svc-{A}", "DISABLED"), (f"svc-{B}", "READY")],
                "fleet_run": [(one,)],
            }, name
            if name == "athena":
                continue
            assert con.execute(changes_sql).fetchall() == [
                (A, us, f"svc-{A}", "changed", "READY", "DISABLED", None, None, None, None,
                 one, two)
            ], name  # fmt: skip
            assert [(p.account_id, p.from_run, p.to_run) for p in diff_mod.diff(con).pairs] == [
                (A, one, two)
            ], name
