"""Parquet export: layout, types, atomic files, re-export, S3 (moto)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inventory.errors import StoreError
from inventory.storage import lake, schema
from inventory.storage.store import Store

# 23:30 UTC on the 27th is the 28th in Tokyo: run_date must be the UTC date
STARTED = dt.datetime(2026, 11, 27, 23, 30, tzinfo=dt.UTC)
RUN = "20261127T233000Z-3f9a1c"
DAY = "run_date=2026-11-27"
ACCOUNT = "000000000042"


def build_run(store: Store, run_id: str = RUN, started: dt.datetime = STARTED) -> None:
    store.begin_run(run_id, started, 1, 2, "test")
    store.append(
        run_id,
        {
            "container_services": pa.Table.from_pylist(
                [
                    {
                        "run_id": run_id,
                        "collected_at": started,
                        "account_id": ACCOUNT,
                        "region": "us-east-1",
                        "service_name": f"svc{i}",
                        "scale": i,
                        "is_disabled": False,
                        "tags": {} if i else {"team": "a"},
                        "public_domain_names": {"cert": ["a.example.com"]},
                    }
                    for i in range(3)
                ],
                schema=schema.CONTAINER_SERVICES,
            ),
            "containers": pa.Table.from_pylist(
                [
                    {
                        "run_id": run_id,
                        "collected_at": started,
                        "account_id": ACCOUNT,
                        "region": "us-east-1",
                        "service_name": "svc0",
                        "slot": "current",
                        "deployment_version": 1,
                        "container_name": "web",
                        "image": ":web.1",
                        "image_source": "lightsail",
                        "command": [],
                        "environment": {"A": "hmac-sha256:00112233445566aa"},
                        "ports": {"80": "HTTP"},
                    }
                ],
                schema=schema.CONTAINERS,
            ),
            "scans": pa.Table.from_pylist(
                [
                    {
                        "run_id": run_id,
                        "account_id": ACCOUNT,
                        "region": region,
                        "status": "ok",
                        "started_at": started,
                        "finished_at": started,
                        "attempts": 1,
                        "services": 3 if region == "us-east-1" else 0,
                    }
                    for region in ("us-east-1", "eu-west-2")
                ],
                schema=schema.SCANS,
            ),
        },
    )
    store.finish_run(run_id, "complete", started + dt.timedelta(minutes=2), api_calls=2)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "inventory.duckdb")
    build_run(s)
    yield s
    s.close()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- local


def test_export_layout_and_counts(store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "lake"
    written = lake.export_run(store, RUN, dest)
    assert [(w.table, w.rows) for w in written] == [
        ("container_services", 3),
        ("deployments", 0),
        ("containers", 1),
        ("deployment_history", 0),
        ("deployment_history_containers", 0),
        ("container_images", 0),
        ("container_powers", 0),
        ("service_utilization", 0),
        ("scans", 2),
        ("errors", 0),
        ("runs", 1),
    ]
    assert files_under(dest) == sorted(f"{t}/{DAY}/{RUN}.parquet" for t in schema.TABLES)
    assert [str(w) for w in written] == [
        str(dest / t / DAY / f"{RUN}.parquet") for t in schema.TABLES
    ]
    assert sum(w.rows > 0 for w in written) >= 3  # the compression below is checked
    for w in written:
        f = pq.ParquetFile(w.path)
        assert f.schema_arrow == schema.TABLES[w.table]
        assert f.metadata.num_rows == w.rows
        if w.rows:
            assert f.metadata.row_group(0).column(0).compression == "ZSTD"


def test_types_round_trip_through_duckdb(store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "lake"
    lake.export_run(store, RUN, dest)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, sch in schema.TABLES.items():
        rel = f"read_parquet('{dest}/{name}/*/*.parquet', hive_partitioning = true)"
        cols = con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()
        assert [(c[0], c[1]) for c in cols] == [
            *((f.name, schema.duckdb_type(f.type)) for f in sch),
            ("run_date", "DATE"),
        ]
        from_lake = con.execute(f"SELECT * EXCLUDE (run_date) FROM {rel} ORDER BY ALL").fetchall()
        _, from_store = store.query_rows(f"SELECT * FROM {name} ORDER BY ALL")
        assert from_lake == from_store
    row = con.execute(
        f"SELECT account_id, tags, public_domain_names, collected_at, run_date "
        f"FROM read_parquet('{dest}/container_services/*/*.parquet', hive_partitioning = true) "
        "WHERE service_name = 'svc0'"
    ).fetchone()
    assert row is not None
    assert row[:3] == (ACCOUNT, {"team": "a"}, {"cert": ["a.example.com"]})
    assert row[3] == STARTED
    assert row[4] == dt.date(2026, 11, 27)


def test_reexport_replaces_files_and_old_parts(store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "lake"
    d = dest / "container_services" / DAY
    # what an earlier (sharded, or different) export left behind
    stale = pa.Table.from_pylist([{"run_id": RUN, "service_name": "stale"}])
    lake.write_table(stale, dest, "container_services", RUN, STARTED)
    lake.write_table(stale, dest, "container_services", RUN, STARTED, part="shard-3")
    lake.write_table(stale, dest, "container_services", RUN, STARTED, part=7)
    # a part as an older version named it (`<run_id>-<part>`), holding this run's rows
    (d / f"{RUN}.7.parquet").rename(d / f"{RUN}-7.parquet")
    lake.write_table(stale, dest, "container_services", RUN, STARTED, part=7)
    other = "20261127T233500Z-aaaaaa"
    lake.write_table(stale, dest, "container_services", other, STARTED)
    # runs whose ids start with this one's: never this run's parts
    longer = f"{RUN}-b"
    lake.write_table(
        pa.Table.from_pylist([{"run_id": longer}]), dest, "container_services", longer, STARTED
    )
    lake.write_table(
        pa.Table.from_pylist([], schema=schema.CONTAINER_SERVICES),
        dest, "container_services", f"{RUN}-shard-1", STARTED,
    )  # fmt: skip
    theirs = [f"{other}.parquet", f"{longer}.parquet", f"{RUN}-shard-1.parquet"]
    ours = [f"{RUN}.parquet", f"{RUN}.shard-3.parquet", f"{RUN}.7.parquet", f"{RUN}-7.parquet"]
    assert sorted(p.name for p in d.iterdir()) == sorted([*ours, *theirs])
    for _ in range(2):
        lake.export_run(store, RUN, dest)
        assert sorted(p.name for p in d.iterdir()) == sorted([f"{RUN}.parquet", *theirs])
        names = pq.read_table(d / f"{RUN}.parquet").column("service_name").to_pylist()
        assert sorted(names) == ["svc0", "svc1", "svc2"]
    assert not [p for p in dest.rglob("*") if p.name.startswith(".")]


def test_empty_tables_get_a_file_with_the_schema(tmp_path: Path) -> None:
    with Store.open(tmp_path / "inventory.duckdb") as s:
        s.begin_run("empty", STARTED, 0, 0, "test")
        s.finish_run("empty", "failed")
        written = lake.export_run(s, "empty", tmp_path / "lake")
    assert [w.rows for w in written] == [0] * (len(schema.TABLES) - 1) + [1]
    for w in written:
        t = pq.read_table(w.path)
        assert t.schema == schema.TABLES[w.table]
    con = duckdb.connect()
    n = con.execute(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/lake/containers/*/*.parquet')"
    ).fetchall()
    assert n == [(0,)]


def test_no_temporary_file_is_left_by_a_failed_write(store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "lake"
    lake.export_run(store, RUN, dest)
    target = dest / "scans" / DAY / f"{RUN}.parquet"
    before = target.read_bytes()

    def broken() -> Iterator[pa.RecordBatch]:
        yield pa.RecordBatch.from_pylist([{"run_id": RUN, "status": "ok"}], schema=schema.SCANS)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        lake.write_table(broken(), dest, "scans", RUN, STARTED)
    assert target.read_bytes() == before  # the old file is still whole
    assert sorted(p.name for p in target.parent.iterdir()) == [f"{RUN}.parquet"]


def test_write_table_conforms_to_the_schema(tmp_path: Path) -> None:
    # columns by name, any order, missing ones null, types cast (int64 -> int32)
    t = pa.table({"attempts": pa.array([3], pa.int64()), "run_id": [RUN]})
    w = lake.write_table(t, tmp_path, "errors", RUN, STARTED, part="shard-0")
    assert w.path.endswith(f"errors/{DAY}/{RUN}.shard-0.parquet")
    back = pq.read_table(w.path)
    assert back.schema == schema.ERRORS
    assert back.to_pylist()[0]["attempts"] == 3
    assert back.to_pylist()[0]["message"] is None
    with pytest.raises(ValueError, match="not in schema"):
        lake.write_table(pa.table({"bogus": [1]}), tmp_path, "errors", RUN, STARTED)
    with pytest.raises(ValueError, match="unknown table"):
        lake.write_table(t, tmp_path, "nope", RUN, STARTED)
    with pytest.raises(ValueError, match="cannot name a file"):
        lake.write_table(t, tmp_path, "errors", "../escape", STARTED)


def test_export_refuses_unknown_and_running_runs(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no run"):
        lake.export_run(store, "missing", tmp_path / "lake")
    store.begin_run("r2", STARTED, 1, 1, "test")
    with pytest.raises(StoreError, match="still running"):
        lake.export_run(store, "r2", tmp_path / "lake")
    assert not (tmp_path / "lake").exists()


def test_export_from_a_reader(store: Store, tmp_path: Path) -> None:
    with Store.open(store.path, read_only=True) as r:
        written = lake.export_run(r, RUN, tmp_path / "lake")
    assert sum(w.rows for w in written) == 7


# --------------------------------------------------------------------------- S3 (moto)


@pytest.fixture
def s3_endpoint(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    endpoint = moto_endpoint
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    return endpoint


def test_export_to_s3(store: Store, s3_endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="lake")
    dest = "s3://lake/inventory/v1"
    # a stale part from an earlier sharded export of the same run
    lake.write_table(
        pa.table({"run_id": [RUN], "service_name": ["stale"]}),
        dest,
        "container_services",
        RUN,
        STARTED,
        part="shard-1",
    )
    for _ in range(2):
        written = lake.export_run(store, RUN, dest)
        assert [str(w) for w in written] == [
            f"{dest}/{t}/{DAY}/{RUN}.parquet" for t in schema.TABLES
        ]
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="lake").get("Contents", []))
        assert keys == sorted(f"inventory/v1/{t}/{DAY}/{RUN}.parquet" for t in schema.TABLES)
    fs = lake.s3_filesystem()
    t = pq.read_table(f"lake/inventory/v1/container_services/{DAY}/{RUN}.parquet", filesystem=fs)
    assert t.schema == schema.CONTAINER_SERVICES
    assert sorted(t.column("service_name").to_pylist()) == ["svc0", "svc1", "svc2"]
    runs = pq.read_table(f"lake/inventory/v1/runs/{DAY}/{RUN}.parquet", filesystem=fs)
    assert runs.to_pylist()[0]["status"] == "complete"
    empty = pq.read_table(f"lake/inventory/v1/errors/{DAY}/{RUN}.parquet", filesystem=fs)
    assert empty.num_rows == 0 and empty.schema == schema.ERRORS


def test_s3_filesystem_reads_the_endpoint_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    monkeypatch.delenv("AWS_REGION", raising=False)
    fs = lake.s3_filesystem()
    assert fs.region == "eu-west-2"
    assert "127.0.0.1:9" in repr(fs.__reduce__())
