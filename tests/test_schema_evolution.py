"""Schema evolution: a store and a lake written by schema version 0 (tests/fixtures/v0, made by
tests/fixtures/make_v0.py) stay usable: the store is migrated on open, old Parquet partitions
are read by column name, and new runs land beside the old ones."""

from __future__ import annotations

import asyncio
import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from fixtures import make_v0
from fixtures.snapshots import TEST_KEY
from typer.testing import CliRunner

from inventory.answers import diff as diff_mod
from inventory.cli import app
from inventory.model import Account, Options, Plan
from inventory.run.pipeline import run_collect
from inventory.simulator import Simulator
from inventory.simulator.fleet import Change
from inventory.storage import lake, lakequery, schema
from inventory.storage.fingerprint import KEY_ENV
from inventory.storage.store import APP, Store

MakeSimulator = Callable[..., Simulator]
RUN1, RUN2 = make_v0.RUN_IDS
HUB_EU = make_v0.FAILED_IN_RUN_2
runner = CliRunner()


@pytest.fixture
def v0_db(tmp_path: Path) -> Path:
    db = tmp_path / "inventory.duckdb"
    with gzip.open(make_v0.DB_GZ, "rb") as src, open(db, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return db


@pytest.fixture
def v0_lake(tmp_path: Path) -> Path:
    return Path(shutil.copytree(make_v0.LAKE, tmp_path / "lake"))


def columns(store: Store, table: str) -> list[str]:
    _, rows = store.query_rows(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index",
        [table],
    )
    return [r[0] for r in rows]


def expected_keys(changes: list[Change]) -> set[tuple[str, str, str, str]]:
    """(kind, account, region, service) of the simulator's changes as diff reports them
    (re-enabling a DISABLED service changes is_disabled too); the hub's eu-west-2 left out."""
    out = set()
    for c in changes:
        if (c.account_id, c.region) == HUB_EU:
            continue
        out.add((c.kind, c.account_id, c.region, c.service_name))
        if c.kind == "state" and c.old == "DISABLED":
            out.add(("disabled", c.account_id, c.region, c.service_name))
    return out


def change_keys(result: diff_mod.Diff) -> set[tuple[str, str, str, str]]:
    return {
        (c.kind, c.account_id, c.region, c.service_name)
        for c in result.changes
        if (c.account_id, c.region) != HUB_EU
    }


def known_fleet_matches(store: Store) -> None:
    """The fixture holds what `make_v0.fleet()` generates (else: regenerate the fixture)."""
    gen0, gen1 = make_v0.fleet()
    for run_id, gen in ((RUN1, gen0), (RUN2, gen1)):
        _, rows = store.query_rows(
            "SELECT account_id, region, service_name FROM container_services WHERE run_id = ?",
            [run_id],
        )
        truth = {
            (a, r, s["containerServiceName"])
            for a in gen.all_account_ids
            for r in make_v0.REGIONS
            for s in gen.services(a, r)
            if not (run_id == RUN2 and (a, r) == HUB_EU)
        }
        assert set(rows) == truth, "the simulator changed: run tests/fixtures/make_v0.py"


def test_the_fixture_is_version_0_and_small() -> None:
    assert sum(p.stat().st_size for p in make_v0.HERE.rglob("*") if p.is_file()) < 200_000
    for table, dropped in make_v0.V0_DROPPED.items():
        for path in (make_v0.LAKE / table).rglob("*.parquet"):
            names = pq.read_schema(path).names
            assert not set(dropped) & set(names) and names  # an older file indeed


def test_v0_store_is_readable_then_migrated_on_open(v0_db: Path, tmp_path: Path) -> None:
    # A reader does not migrate, but sees the new columns (as NULL) through the Store API.
    with Store.open(v0_db, read_only=True) as reader:
        assert "image_source" not in columns(reader, "containers")
        assert [r["schema_version"] for r in reader.runs()] == [None, None]
        old = reader.read_run(RUN1, "containers").read_all()
        assert old.schema == schema.CONTAINERS and old.num_rows > 0
        assert old.column("image_source").null_count == old.num_rows

    with Store.open(v0_db) as store:  # a writer migrates
        known_fleet_matches(store)
        # added by the migration (image_source: version 1, extra: version 3)
        assert columns(store, "containers")[-2:] == ["image_source", "extra"]
        assert sorted(columns(store, "containers")) == sorted(schema.CONTAINERS.names)
        assert sorted(columns(store, "runs")) == sorted(schema.RUNS.names)
        _, meta = store.query_rows("SELECT value FROM meta WHERE key = 'schema_version'")
        assert meta == [(str(schema.SCHEMA_VERSION),)]
        # old runs: stamped with the version that wrote them, their rows intact
        assert {r["run_id"]: r["schema_version"] for r in store.runs()} == {RUN1: 0, RUN2: 0}
        assert {r["run_id"]: r["status"] for r in store.runs()} == {
            RUN1: "complete",
            RUN2: "partial",
        }
        t = store.query("SELECT * FROM latest_containers")
        assert t.column_names == schema.CONTAINERS.names
        _, latest = store.query_rows(
            "SELECT DISTINCT account_id, region, run_id FROM latest_scans ORDER BY ALL"
        )
        assert (*HUB_EU, RUN1) in latest and all(
            r[2] == RUN2 for r in latest if (r[0], r[1]) != HUB_EU
        )
        # diff across old runs: exactly what the simulator changed between the generations
        with store.connection() as con:
            result = diff_mod.diff(con)
        _, gen1 = make_v0.fleet()
        assert change_keys(result) == expected_keys(gen1.changes)
        assert [(u.account_id, u.region) for u in result.uncompared] == [HUB_EU]
        # an old run exports with today's columns
        written = lake.export_run(store, RUN1, tmp_path / "re-export")
    by_table = {w.table: w for w in written}
    t = pq.read_table(by_table["containers"].path)
    assert t.schema == schema.CONTAINERS
    assert t.column("image_source").null_count == t.num_rows > 0


def test_v0_lake_reads_by_name_with_todays_columns(v0_lake: Path) -> None:
    with lakequery.open_lake(v0_lake) as con:
        names = [r[0] for r in con.execute("DESCRIBE containers").fetchall()]
        assert names == [*schema.CONTAINERS.names, "run_date"]  # no file has image_source
        rows = con.execute(
            "SELECT run_date, count(*), count(image_source) FROM containers GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert [str(r[0]) for r in rows] == ["2025-06-01", "2025-06-02"]
        assert all(r[1] > 0 and r[2] == 0 for r in rows)
        assert con.execute("SELECT schema_version FROM runs").fetchall() == [(None,), (None,)]
        assert con.execute("SELECT count(*) FROM latest_containers").fetchone()[0] > 0  # type: ignore[index]


def test_collect_onto_a_v0_store_and_lake(
    v0_db: Path, v0_lake: Path, make_simulator: MakeSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tonight's collect on last year's files: the store is migrated, the new run's Parquet
    sits beside the v0 partitions, and both readers diff across the versions."""
    _, gen1 = make_v0.fleet()
    gen2 = gen1.evolve(seed=2)
    make_simulator(fleet=gen2)
    monkeypatch.setenv(KEY_ENV, TEST_KEY.decode())  # the fixture's fingerprint key
    plan = Plan(
        accounts=tuple(
            [Account(id=gen2.hub_account_id)]
            + [Account(id=a, role_arn=f"arn:aws:iam::{a}:role/R") for a in gen2.account_ids]
        ),
        regions=make_v0.REGIONS,
        options=Options(concurrency=8, rate=2000.0, timeout=5.0),
    )
    summary = asyncio.run(run_collect(plan, v0_db, str(v0_lake)))
    assert summary.status == "complete"
    run3 = summary.run_id

    with Store.open(v0_db, read_only=True) as store:
        assert {r["run_id"]: r["schema_version"] for r in store.runs()} == {
            RUN1: 0,
            RUN2: 0,
            run3: schema.SCHEMA_VERSION,
        }
        with store.connection() as con:
            from_store = diff_mod.diff(con)
    pairs = {(p.account_id, p.region): (p.from_run, p.to_run) for p in from_store.pairs}
    assert pairs.pop(HUB_EU) == (RUN1, run3)  # its last good scan was the first run
    assert set(pairs.values()) == {(RUN2, run3)}
    assert change_keys(from_store) == expected_keys(gen2.changes)

    with lakequery.open_lake(v0_lake) as con:
        assert diff_mod.diff(con).changes == from_store.changes
        rows = con.execute(
            "SELECT run_id, count(*), count(image_source) FROM containers GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert [r[0] for r in rows] == [RUN1, RUN2, run3]
        assert rows[0][2] == rows[1][2] == 0 and rows[2][2] == rows[2][1] > 0
    out = runner.invoke(
        app,
        ["query", "--lake", str(v0_lake), "--format", "csv",
         "select run_id, schema_version from runs order by run_id"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines() == [
        "run_id,schema_version",
        f"{RUN1},",
        f"{RUN2},",
        f"{run3},{schema.SCHEMA_VERSION}",
    ]


# Version 3 added these columns (schema.SCHEMA_VERSION's comment).
V3_ADDED = {
    "container_services": ("location_region_name", "extra"),
    "deployments": ("extra",),
    "containers": ("extra",),
    "container_images": ("service_arn",),
    "runs": ("fingerprint_key_id", "env_values", "fleet_defining"),
}


def _write_v2_store(db: Path) -> None:
    """A store as version 2 wrote it: every table of today without V3_ADDED, the fixture's
    two runs in it (stamped version 2), views over the version-2 columns."""
    con = duckdb.connect(str(db))
    try:
        con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute(
            "INSERT INTO meta VALUES ('app', ?), ('created_at', '2026-01-01T00:00:00+00:00'), "
            "('schema_version', '2')",
            [APP],
        )
        v2 = {}
        for name, sch in schema.TABLES.items():
            for col in V3_ADDED.get(name, ()):
                sch = sch.remove(sch.get_field_index(col))
            v2[name] = sch
            con.execute(schema.create_table_sql(name, sch))
        for _, _, tables in make_v0.runs():
            for name, table in tables.items():
                con.register("_rows", table)
                con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _rows")
                con.unregister("_rows")
        con.execute("UPDATE runs SET schema_version = 2")
        con.execute(make_v0.V0_LATEST_SCANS_SQL)
        for name in schema.INVENTORY_TABLES:
            cols = ", ".join(f"t.{c}" for c in v2[name].names)
            con.execute(
                f"CREATE VIEW latest_{name} AS SELECT {cols} FROM {name} AS t "
                "JOIN latest_scans AS l "
                "ON t.run_id = l.run_id AND t.account_id = l.account_id AND t.region = l.region"
            )
        con.execute("CHECKPOINT")
    finally:
        con.close()


def test_v2_store_gains_the_version_3_columns_on_open(tmp_path: Path) -> None:
    db = tmp_path / "v2.duckdb"
    _write_v2_store(db)
    with Store.open(db, read_only=True) as reader:  # a reader sees them as NULL
        assert "extra" not in columns(reader, "containers")
        old = reader.read_run(RUN1, "container_services").read_all()
        assert old.schema == schema.CONTAINER_SERVICES and old.num_rows > 0
        assert old.column("extra").null_count == old.num_rows
    with Store.open(db) as store:  # a writer adds them
        for table, added in V3_ADDED.items():
            present = columns(store, table)
            assert present[-len(added) :] == list(added), table
            assert sorted(present) == sorted(schema.TABLES[table].names)
        _, meta = store.query_rows("SELECT value FROM meta WHERE key = 'schema_version'")
        assert meta == [(str(schema.SCHEMA_VERSION),)]
        assert {r["run_id"]: r["schema_version"] for r in store.runs()} == {RUN1: 2, RUN2: 2}
        known_fleet_matches(store)  # the old rows are intact
        t = store.query("SELECT * FROM latest_container_services")
        assert t.column_names == schema.CONTAINER_SERVICES.names and t.num_rows > 0
        assert t.column("location_region_name").null_count == t.num_rows
        assert store.query("SELECT * FROM latest_containers").column_names == (
            schema.CONTAINERS.names
        )
