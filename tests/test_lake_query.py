"""`inventory query --lake`: the store's questions over the Parquet lake alone."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures.snapshots import write_snapshot
from typer.testing import CliRunner

from inventory.cli import app
from inventory.errors import StoreError, UsageError
from inventory.simulator import Fleet
from inventory.storage import lake, lakequery, schema
from inventory.storage.store import LATEST_VIEWS, Store

REGIONS = ("us-east-1", "eu-west-2")
DAYS = [dt.datetime(2026, 3, d, 5, 30, tzinfo=dt.UTC) for d in (1, 2, 3)]
ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A store with three daily runs (the last one partial) and the lake exported from it."""
    tmp = tmp_path_factory.mktemp("lake")
    db, dest = tmp / "inv.duckdb", tmp / "lake"
    fleet = Fleet(3, seed=2, regions=REGIONS)
    accounts = list(fleet.all_account_ids)
    runs = []
    with Store.open(db) as store:
        for i, day in enumerate(DAYS):
            failed = [(accounts[1], "eu-west-2")] if i == 2 else []
            runs.append(write_snapshot(store, day, fleet, accounts, REGIONS, failed))
            lake.export_run(store, runs[-1], dest)
            fleet = fleet.evolve(seed=i)
    return db, dest, runs


def rows(table: pa.Table) -> list[str]:
    if "run_date" in table.column_names:
        table = table.drop_columns(["run_date"])
    return sorted(json.dumps(r, default=str, sort_keys=True) for r in table.to_pylist())


def store_and_lake(db: Path, dest: Path, sql: str) -> tuple[pa.Table, pa.Table]:
    with Store.open(db, read_only=True) as store:
        a = store.query(sql)
    with lakequery.open_lake(dest) as con:
        b = con.sql(sql).to_arrow_table()
    return a, b


def test_every_table_and_latest_view_reads_as_in_the_store(
    history: tuple[Path, Path, list[str]],
) -> None:
    db, dest, runs = history
    for name in [*schema.TABLES, *LATEST_VIEWS]:
        in_store, in_lake = store_and_lake(db, dest, f"SELECT * FROM {name}")
        assert in_store.num_rows > 0 or name == "errors"
        assert rows(in_store) == rows(in_lake), name
        lake_schema = in_lake.schema
        if name in schema.TABLES:  # tables add run_date; latest_* views are as in the store
            assert lake_schema.names[-1] == "run_date"
            lake_schema = lake_schema.remove(len(lake_schema) - 1)
        assert lake_schema == in_store.schema
        assert lake_schema.names == schema.TABLES[LATEST_VIEWS.get(name, name)].names
    with lakequery.open_lake(dest) as con:
        described = con.execute("SELECT column_name, column_type FROM (DESCRIBE containers)")
        types = dict(described.fetchall())
        assert types["environment"] == "MAP(VARCHAR, VARCHAR)"
        assert types["run_date"] == "DATE" and types["collected_at"] == "TIMESTAMP WITH TIME ZONE"
        dates = con.execute("SELECT DISTINCT run_date, run_id FROM runs ORDER BY 1").fetchall()
    assert [(d.isoformat(), r) for d, r in dates] == [
        (day.date().isoformat(), run) for day, run in zip(DAYS, runs, strict=True)
    ]


def test_cli_query_on_the_lake_equals_the_store(history: tuple[Path, Path, list[str]]) -> None:
    db, dest, _ = history
    for args in (
        ["services_by_state"],  # a named query, over latest_* views
        ["select run_id, status, services from runs order by run_id"],
        [
            "select count(*) as n from containers where collected_at >= $since",
            "-p",
            "since=2026-03-02",
        ],
    ):
        by_db = runner.invoke(app, ["query", "--db", str(db), "-f", "json", *args])
        by_lake = runner.invoke(app, ["query", "--lake", str(dest), "-f", "json", *args])
        assert by_db.exit_code == 0, by_db.output
        assert by_lake.exit_code == 0, by_lake.output
        assert json.loads(by_lake.stdout) == json.loads(by_db.stdout) != []


def _corrupt(dest: Path, day: dt.datetime) -> list[Path]:
    bad = list(dest.glob(f"*/run_date={day.date().isoformat()}/*.parquet"))
    for p in bad:
        p.write_bytes(b"not parquet at all")
    return bad


def test_a_run_date_filter_reads_only_that_partition(
    history: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    db, original, runs = history
    dest = Path(shutil.copytree(original, tmp_path / "lake"))
    assert len(_corrupt(dest, DAYS[0])) == len(_corrupt(dest, DAYS[2])) == len(schema.TABLES)
    day = DAYS[1].date().isoformat()
    with Store.open(db, read_only=True) as store:
        _, want = store.query_rows(
            "SELECT count(*), count(DISTINCT service_name) FROM containers WHERE run_id = ?",
            [runs[1]],
        )
    sql = f"SELECT count(*), count(DISTINCT service_name) FROM containers WHERE run_date = '{day}'"
    _, got = lakequery.query_rows(dest, sql)
    assert got == want and want[0][0] > 0
    # the filter is pushed into the dataset scan (so the other days' files are never opened)
    _, plan = lakequery.query_rows(dest, "EXPLAIN " + sql)
    text = "\n".join(str(v) for r in plan for v in r)
    assert "ARROW_SCAN" in text and f"\"run_date\" = DATE '{day}'" in text
    out = runner.invoke(app, ["query", "--lake", str(dest), "-f", "csv", sql])
    assert out.exit_code == 0, out.output
    # without the filter the corrupt files are read, and the error says which
    with pytest.raises(StoreError, match=r"query failed: .*run_date=2026-03-0[13]"):
        lakequery.query_rows(dest, "SELECT count(*) FROM containers")


def test_files_of_other_versions_and_temporary_files(tmp_path: Path) -> None:
    """Columns by name: a newer writer's extra column is ignored, a wider integer is cast; a
    writer's hidden temporary file is not data."""
    dest = tmp_path / "lake"
    part = Path(lake.partition_dir(dest, "scans", DAYS[0]))
    part.mkdir(parents=True)
    newer = pa.table(
        {
            "run_id": ["r2"],
            "account_id": ["000000000002"],
            "region": ["us-east-1"],
            "status": ["ok"],
            "attempts": pa.array([3], pa.int64()),  # int32 in schema.py
            "shiny_new_column": ["x"],
        }
    )
    pq.write_table(newer, part / "r2.parquet")
    pq.write_table(schema.SCANS.empty_table(), part / "r1.parquet")
    (part / ".r3.parquet.tmp-123").write_bytes(b"half a file")
    cols, got = lakequery.query_rows(dest, "SELECT * FROM scans")
    assert cols == [*schema.SCANS.names, "run_date"]
    (row,) = got
    assert dict(zip(cols, row, strict=True)) == {
        "run_id": "r2",
        "account_id": "000000000002",
        "region": "us-east-1",
        "status": "ok",
        "started_at": None,
        "finished_at": None,
        "attempts": 3,
        "services": None,
        "error_code": None,
        "run_date": DAYS[0].date(),
    }
    _, empty = lakequery.query_rows(dest, "SELECT count(*) FROM latest_containers")
    assert empty == [(0,)]  # tables without files are empty, not missing


@pytest.mark.parametrize(
    ("lake_arg", "message"),
    [
        ("missing", "no such folder"),
        ("empty", "no Parquet lake there"),
        ("file.txt", "a file, not a lake folder"),
        ("ftp://host/x", "only local folders and s3:// URIs"),
    ],
)
def test_bad_lake_is_a_usage_error(tmp_path: Path, lake_arg: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    target = lake_arg if "://" in lake_arg else str(tmp_path / lake_arg)
    with pytest.raises(UsageError, match=message):
        lakequery.open_lake(target)
    out = runner.invoke(app, ["query", "--lake", target, "select 1"])
    text = " ".join(out.output.split())  # unwrapped
    assert out.exit_code == 2 and message in text and "--lake" in text


def test_bad_sql_on_the_lake_is_a_clear_error(history: tuple[Path, Path, list[str]]) -> None:
    out = runner.invoke(app, ["query", "--lake", str(history[1]), "select nope from runs"])
    text = " ".join(out.output.split())
    assert out.exit_code == 1 and "query failed" in text and "nope" in text


def test_athena_ddl_in_docs_is_current() -> None:
    ddl = lakequery.athena_ddl()
    assert (ROOT / "docs" / "athena.sql").read_text() == ddl, "regenerate docs/athena.sql"
    for name, sch in schema.TABLES.items():
        block = ddl.split(f"CREATE EXTERNAL TABLE IF NOT EXISTS lightsail_inventory.{name} (")[1]
        block = block.split(")\nPARTITIONED BY")[0]
        lines = block.strip().splitlines()
        declared: list[Any] = [line.strip().split(" ")[0].strip("`") for line in lines]
        assert declared == sch.names
    assert "map<string,array<string>>" in ddl and "PARTITIONED BY (`run_date` string)" in ddl
    for view in ("latest_scans", *LATEST_VIEWS):
        assert f"CREATE OR REPLACE VIEW lightsail_inventory.{view} AS" in ddl
