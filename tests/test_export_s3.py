"""The lake on S3, through the CLI: `export --to s3://`, `collect --parquet-dir s3://` and
`query --lake s3://`, against moto's S3 server on 127.0.0.1 (AWS_ENDPOINT_URL_S3)."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures.snapshots import write_snapshot
from helpers import s3_keys as keys
from typer.testing import CliRunner

from inventory.cli import app
from inventory.simulator import Fleet, Simulator
from inventory.storage import lake, schema
from inventory.storage.store import Store

MakeSimulator = Callable[..., Simulator]
REGIONS = ("us-east-1", "eu-west-2")
DAY1 = dt.datetime(2026, 4, 1, 5, 0, tzinfo=dt.UTC)
DAY2 = dt.datetime(2026, 4, 2, 5, 0, tzinfo=dt.UTC)
runner = CliRunner()


def two_runs(db: Path) -> list[str]:
    fleet = Fleet(2, seed=9, regions=REGIONS)
    accounts = list(fleet.all_account_ids)
    with Store.open(db) as store:
        first = write_snapshot(store, DAY1, fleet, accounts, REGIONS)
        second = write_snapshot(store, DAY2, fleet.evolve(seed=1), accounts, REGIONS)
    return [first, second]


def export(db: Path, run: str, to: str) -> None:
    out = runner.invoke(app, ["export", "--db", str(db), "--run", run, "--to", to])
    assert out.exit_code == 0, out.output
    n = len(schema.TABLES)
    assert f"exported run {run}: {n} files under {to}" in " ".join(out.output.split())


def test_export_twice_replaces_the_files(s3: Any, tmp_path: Path) -> None:
    db = tmp_path / "inv.duckdb"
    run1, run2 = two_runs(db)
    dest = f"s3://{s3.bucket}/lightsail/v1"
    cs_key = f"lightsail/v1/container_services/run_date=2026-04-01/{run1}.parquet"
    # what an interrupted or older export left: a broken file and stale parts of the run,
    # named as today (`.shard-1`) and as before (`-shard-2`, with the run's rows)
    s3.put_object(Bucket=s3.bucket, Key=cs_key, Body=b"half an upload")
    s3.put_object(Bucket=s3.bucket, Key=cs_key.replace(".parquet", ".shard-1.parquet"), Body=b"x")
    old_part = io.BytesIO()
    pq.write_table(pa.table({"run_id": [run1]}), old_part)
    stale = cs_key.replace(".parquet", "-shard-2.parquet")
    s3.put_object(Bucket=s3.bucket, Key=stale, Body=old_part.getvalue())
    # another run whose id starts with this one's: its file stays
    longer = cs_key.replace(".parquet", "-b.parquet")
    s3.put_object(Bucket=s3.bucket, Key=longer, Body=b"another run's file")
    expected = [f"lightsail/v1/{t}/run_date=2026-04-01/{run1}.parquet" for t in schema.TABLES]

    export(db, run1, dest)
    assert keys(s3) == sorted([*expected, longer])
    s3.delete_object(Bucket=s3.bucket, Key=longer)
    etags = {k: s3.head_object(Bucket=s3.bucket, Key=k)["ETag"] for k in expected}
    export(db, run1, dest)  # again: the same files, replaced in place
    assert keys(s3) == sorted(expected)
    assert {k: s3.head_object(Bucket=s3.bucket, Key=k)["ETag"] for k in expected} == etags

    fs = lake.s3_filesystem()
    t = pq.read_table(f"{s3.bucket}/{cs_key}", filesystem=fs)
    with Store.open(db, read_only=True) as store:
        n = store.query_rows("SELECT count(*) FROM container_services WHERE run_id = ?", [run1])
    assert t.schema == schema.CONTAINER_SERVICES and t.num_rows == n[1][0][0] > 0

    export(db, run2, dest)
    assert len(keys(s3)) == 2 * len(schema.TABLES)
    assert len(keys(s3, "lightsail/v1/runs/run_date=2026-04-02/")) == 1


def test_query_an_s3_lake_with_partition_pruning(s3: Any, tmp_path: Path) -> None:
    db = tmp_path / "inv.duckdb"
    run1, run2 = two_runs(db)
    dest = f"s3://{s3.bucket}/lake"
    for run in (run1, run2):
        export(db, run, dest)
    sql = "select run_id, count(*) as n from containers group by 1 order by 1"
    by_db = runner.invoke(app, ["query", "--db", str(db), "-f", "json", sql])
    by_lake = runner.invoke(app, ["query", "--lake", dest, "-f", "json", sql])
    assert by_lake.exit_code == 0, by_lake.output
    assert json.loads(by_lake.stdout) == json.loads(by_db.stdout) != []
    latest = "select count(*) as n from latest_containers"
    by_db = runner.invoke(app, ["query", "--db", str(db), "-f", "json", latest])
    by_lake = runner.invoke(app, ["query", "--lake", dest, "-f", "json", latest])
    assert json.loads(by_lake.stdout) == json.loads(by_db.stdout)

    # Break every object of the first day: a query for the second day never reads them.
    for key in keys(s3, "lake/"):
        if "run_date=2026-04-01" in key:
            s3.put_object(Bucket=s3.bucket, Key=key, Body=b"garbage")
    day2 = "select count(*) as n from containers where run_date = '2026-04-02'"
    out = runner.invoke(app, ["query", "--lake", dest, "-f", "json", day2])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == [{"n": json.loads(by_db.stdout)[0]["n"]}]
    out = runner.invoke(app, ["query", "--lake", dest, "select count(*) from containers"])
    assert out.exit_code == 1 and "run_date=2026-04-01" in "".join(out.output.split())

    nothing = runner.invoke(app, ["query", "--lake", f"s3://{s3.bucket}/nothing", "select 1"])
    assert nothing.exit_code == 2 and "no Parquet lake there" in " ".join(nothing.output.split())


def test_collect_writes_its_parquet_to_s3(
    s3: Any, tmp_path: Path, make_simulator: MakeSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet(1, seed=2, regions=REGIONS)
    make_simulator(fleet=fleet)  # sets the STS / Lightsail endpoints and base credentials
    db = tmp_path / "inv.duckdb"
    dest = f"s3://{s3.bucket}/nightly"
    out = runner.invoke(
        app,
        ["collect", "--db", str(db), "--regions", ",".join(REGIONS), "--parquet-dir", dest],
    )
    assert out.exit_code == 0, out.output
    with Store.open(db, read_only=True) as store:
        (run,) = store.runs()
        _, services = store.query_rows("SELECT count(*) FROM container_services")
    day = run["started_at"].date().isoformat()
    assert keys(s3) == sorted(
        f"nightly/{t}/run_date={day}/{run['run_id']}.parquet" for t in schema.TABLES
    )
    assert services[0][0] == sum(len(fleet.services(fleet.hub_account_id, r)) for r in REGIONS)
    got = runner.invoke(
        app, ["query", "--lake", dest, "-f", "csv", "select count(*) from container_services"]
    )
    assert got.exit_code == 0 and got.stdout.splitlines()[1] == str(services[0][0])
