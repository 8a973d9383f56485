"""The DuckDB store: schema, runs, views, the writer lock, readers, crash safety, migration."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from helpers import stopped_at

from inventory.errors import StoreError, StoreLocked
from inventory.storage import schema
from inventory.storage.store import READ_BATCH_ROWS, STREAMING_SETTINGS, Store

T0 = dt.datetime(2026, 11, 27, 5, 36, 50, tzinfo=dt.UTC)
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def services(run_id: str, account: str, region: str, *names: str) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "run_id": run_id,
                "collected_at": T0,
                "account_id": account,
                "account_name": None,
                "region": region,
                "service_name": name,
                "arn": f"arn:aws:lightsail:{region}:{account}:ContainerService/{name}",
                "created_at": T0,
                "power": "nano",
                "scale": 1,
                "is_disabled": False,
                "tags": {"team": "a"},
                "public_domain_names": {"cert": ["a.example.com", "b.example.com"]},
            }
            for name in names
        ],
        schema=schema.CONTAINER_SERVICES,
    )


def containers(run_id: str, account: str, region: str, service: str) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "run_id": run_id,
                "collected_at": T0,
                "account_id": account,
                "region": region,
                "service_name": service,
                "slot": "current",
                "deployment_version": 3,
                "container_name": "web",
                "image": ":web.1",
                "image_source": "lightsail",
                "command": ["serve", "--port", "80"],
                "environment": {"MODE": "hmac-sha256:0123456789abcdef"},
                "ports": {"80": "HTTP"},
            }
        ],
        schema=schema.CONTAINERS,
    )


def scan(run_id: str, account: str, region: str, ok: bool, finished: dt.datetime = T0) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "run_id": run_id,
                "account_id": account,
                "region": region,
                "status": "ok" if ok else "failed",
                "started_at": T0,
                "finished_at": finished,
                "attempts": 1,
                "services": 1 if ok else None,
                "error_code": None if ok else "AccessDeniedException",
            }
        ],
        schema=schema.SCANS,
    )


def error(run_id: str, account: str, region: str) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "run_id": run_id,
                "occurred_at": T0,
                "account_id": account,
                "region": region,
                "operation": "GetContainerServices",
                "error_code": "AccessDeniedException",
                "message": "denied",
                "attempts": 1,
            }
        ],
        schema=schema.ERRORS,
    )


def write_run(
    store: Store,
    run_id: str,
    started: dt.datetime,
    targets: dict[tuple[str, str], list[str] | None],
    status: str | None = None,
) -> None:
    """One run: for each (account, region) its service names, or None when it failed."""
    store.begin_run(run_id, started, len({a for a, _ in targets}), len(targets), "test")
    for (account, region), names in targets.items():
        tables: dict[str, pa.Table] = {"scans": scan(run_id, account, region, names is not None)}
        if names is None:
            tables["errors"] = error(run_id, account, region)
        else:
            tables["container_services"] = services(run_id, account, region, *names)
        store.append(run_id, tables)
    if status is None:
        failed = sum(v is None for v in targets.values())
        status = "complete" if not failed else "partial" if failed < len(targets) else "failed"
    store.finish_run(run_id, status, started + dt.timedelta(minutes=1))


def latest(store: Store) -> list[tuple[Any, ...]]:
    _, rows = store.query_rows(
        "SELECT account_id, region, service_name, run_id FROM latest_container_services "
        "ORDER BY ALL"
    )
    return rows


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def child(code: str) -> subprocess.Popen[str]:
    """A Python child process running `code`, its stdin and stdout pipes of lines."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def wait_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != expected:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"child said {line!r}, expected {expected!r}; stderr:\n{err}")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "inventory.duckdb"


@pytest.fixture
def store(db: Path):
    s = Store.open(db)
    yield s
    s.close()


# --------------------------------------------------------------------------- creation


def test_open_creates_dirs_tables_views_and_meta(db: Path) -> None:
    with Store.open(db) as s:
        assert db.exists()
        _, rows = s.query_rows(
            "SELECT table_name FROM duckdb_tables() ORDER BY table_name",
        )
        assert {r[0] for r in rows} == {*schema.TABLES, "meta"}
        _, rows = s.query_rows("SELECT view_name FROM duckdb_views() WHERE NOT internal")
        assert {r[0] for r in rows} >= {
            "latest_container_services",
            "latest_deployments",
            "latest_containers",
        }
        _, rows = s.query_rows("SELECT value FROM meta WHERE key = 'schema_version'")
        assert rows == [(str(schema.SCHEMA_VERSION),)]
        for name, sch in schema.TABLES.items():
            _, cols = s.query_rows(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                "ORDER BY column_index",
                [name],
            )
            assert cols == [(f.name, schema.duckdb_type(f.type)) for f in sch]
    # the lock file goes with the writer
    assert not db.with_name(db.name + ".lock").exists()
    # reopening an existing store is fine, as a writer and as a reader
    Store.open(db).close()
    Store.open(db, read_only=True).close()


def test_reader_on_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.duckdb"
    with pytest.raises(StoreError, match="no inventory database"):
        Store.open(path, read_only=True)
    assert not path.exists()


# --------------------------------------------------------------------------- runs and views


def test_append_and_finish_round_trip(store: Store) -> None:
    assert store.begin_run("r1", T0, 1, 1, "0.1") == []
    counts = store.append(
        "r1",
        {
            "container_services": services("r1", "000000000001", "us-east-1", "web"),
            "containers": containers("r1", "000000000001", "us-east-1", "web"),
            "scans": scan("r1", "000000000001", "us-east-1", True),
        },
    )
    assert counts == {"container_services": 1, "containers": 1, "scans": 1}
    # not visible while running
    assert latest(store) == []
    assert store.runs()[0]["status"] == "running"
    run = store.finish_run("r1", "complete", at(1), api_calls=7, retries=2)
    assert run["status"] == "complete"
    assert run["finished_at"] == at(1)
    assert (run["targets_ok"], run["targets_failed"]) == (1, 0)  # derived from scans
    assert (run["services"], run["deployments"], run["containers"]) == (1, 0, 1)
    assert (run["api_calls"], run["retries"], run["accounts"], run["targets"]) == (7, 2, 1, 1)
    assert run["schema_version"] == schema.SCHEMA_VERSION

    t = store.query("SELECT * FROM latest_containers")
    assert t.num_rows == 1
    row = t.to_pylist()[0]
    assert row["account_id"] == "000000000001"  # leading zeros kept
    assert row["command"] == ["serve", "--port", "80"]
    assert dict(row["environment"]) == {"MODE": "hmac-sha256:0123456789abcdef"}
    assert row["collected_at"] == T0
    cs = store.query("SELECT tags, public_domain_names FROM latest_container_services")
    assert dict(cs.to_pylist()[0]["tags"]) == {"team": "a"}
    assert dict(cs.to_pylist()[0]["public_domain_names"]) == {
        "cert": ["a.example.com", "b.example.com"]
    }


def test_explicit_counters_win(store: Store) -> None:
    store.begin_run("r1", T0, 3, 48, "0.1")
    run = store.finish_run(
        "r1",
        "failed",
        accounts=2,
        targets=32,
        targets_ok=0,
        targets_failed=32,
        api_calls=40,
        retries=8,
        services=0,
        deployments=0,
        containers=0,
    )
    assert {k: run[k] for k in ("accounts", "targets", "targets_failed", "api_calls")} == {
        "accounts": 2,
        "targets": 32,
        "targets_failed": 32,
        "api_calls": 40,
    }


def test_views_show_the_newest_good_run_per_account_and_region(store: Store) -> None:
    a, b = "000000000001", "000000000002"
    write_run(store, "r1", at(0), {(a, "us-east-1"): ["old1"], (a, "eu-west-2"): ["old2"]})
    write_run(
        store,
        "r2",
        at(60),
        {(a, "us-east-1"): ["new1"], (a, "eu-west-2"): None, (b, "us-east-1"): ["b1", "b2"]},
    )
    # a finished but 'failed' run never shows, even with ok scans
    write_run(store, "r3", at(120), {(a, "us-east-1"): ["bad"]}, status="failed")
    # a running run never shows
    store.begin_run("r4", at(180), 1, 1, "test")
    store.append(
        "r4",
        {
            "scans": scan("r4", a, "us-east-1", True),
            "container_services": services("r4", a, "us-east-1", "half"),
        },
    )
    assert latest(store) == [
        (a, "eu-west-2", "old2", "r1"),  # failed in r2: r1's rows still shown
        (a, "us-east-1", "new1", "r2"),
        (b, "us-east-1", "b1", "r2"),
        (b, "us-east-1", "b2", "r2"),
    ]
    # a region that scanned ok with no services any more shows nothing
    store.finish_run("r4", "complete")
    write_run(store, "r5", at(240), {(b, "us-east-1"): []})
    assert [r for r in latest(store) if r[0] == b] == []
    assert [r["run_id"] for r in store.runs()] == ["r5", "r4", "r3", "r2", "r1"]


def test_interrupted_run_is_marked_failed_on_next_begin(db: Path) -> None:
    a = "000000000001"
    with Store.open(db) as s:
        write_run(s, "r1", at(0), {(a, "us-east-1"): ["keep"]})
        s.begin_run("r2", at(60), 1, 2, "test")
        s.append(
            "r2",
            {
                "scans": scan("r2", a, "us-east-1", True, finished=at(61)),
                "container_services": services("r2", a, "us-east-1", "lost"),
                "errors": error("r2", a, "eu-west-2"),
            },
        )
        # the process "dies" here: no finish_run
    with Store.open(db) as s:
        assert s.begin_run("r3", at(120), 1, 1, "test") == ["r2"]
        r2 = s.run("r2")
        assert r2 is not None
        assert r2["status"] == "failed"
        assert r2["finished_at"] == at(61)  # its last scan
        _, rows = s.query_rows(
            "SELECT (SELECT count(*) FROM container_services WHERE run_id = 'r2'), "
            "(SELECT count(*) FROM scans WHERE run_id = 'r2'), "
            "(SELECT count(*) FROM errors WHERE run_id = 'r2')"
        )
        assert rows == [(0, 1, 1)]  # inventory rows dropped, scans and errors kept
        assert latest(s) == [(a, "us-east-1", "keep", "r1")]
        run1 = s.run("r1")
        assert run1 is not None and run1["status"] == "complete"


def test_append_validates(store: Store) -> None:
    with pytest.raises(StoreError, match="never begun"):
        store.append("nope", {"scans": scan("nope", "1", "us-east-1", True)})
    store.begin_run("r1", T0, 1, 1, "test")
    with pytest.raises(StoreError, match="already exists"):
        store.begin_run("r1", T0, 1, 1, "test")
    with pytest.raises(ValueError, match="cannot append to 'runs'"):
        store.append("r1", {"runs": schema.empty_table("runs")})
    with pytest.raises(ValueError, match=r"not in schema\.py"):
        store.append("r1", {"scans": pa.table({"bogus": [1]})})
    with pytest.raises(ValueError, match="r2"):
        store.append("r1", {"scans": scan("r2", "1", "us-east-1", True)})
    # columns by name, in any order, a subset; run_id filled in
    partial = pa.table({"region": ["us-east-1"], "account_id": ["000000000009"]})
    assert store.append("r1", {"errors": partial}) == {"errors": 1}
    assert store.append("r1", {"errors": schema.empty_table("errors")}) == {}
    _, rows = store.query_rows("SELECT run_id, account_id, region, message FROM errors")
    assert rows == [("r1", "000000000009", "us-east-1", None)]
    # a failed insert rolls the whole append back
    bad = pa.table({"run_id": ["r1"], "attempts": ["not a number"]})
    with pytest.raises(ValueError, match="schema"):
        store.append("r1", {"scans": scan("r1", "1", "us-east-1", True), "errors": bad})
    assert store.query_rows("SELECT count(*) FROM scans")[1] == [(0,)]
    store.finish_run("r1", "complete")
    with pytest.raises(StoreError, match="is complete"):
        store.append("r1", {"scans": scan("r1", "1", "us-east-1", True)})
    with pytest.raises(ValueError, match="status"):
        store.finish_run("r1", "done")


def test_query_binds_parameters(store: Store) -> None:
    write_run(store, "r1", T0, {("000000000001", "us-east-1"): ["a", "b"]})
    t = store.query(
        "SELECT service_name FROM container_services WHERE service_name = $n", {"n": "b"}
    )
    assert t.column("service_name").to_pylist() == ["b"]
    cols, rows = store.query_rows(
        "SELECT service_name FROM container_services WHERE service_name = ?", ["a'; --"]
    )
    assert (cols, rows) == (["service_name"], [])


def test_read_run_streams_the_schema_exactly(store: Store) -> None:
    write_run(store, "r1", T0, {("000000000001", "us-east-1"): ["a", "b"]})
    for name, sch in schema.TABLES.items():
        reader = store.read_run("r1", name)
        assert reader.schema == sch
        t = reader.read_all()
        assert t.schema == sch
    assert store.read_run("r1", "container_services").read_all().num_rows == 2
    assert store.read_run("other", "container_services").read_all().num_rows == 0


def test_a_batch_larger_than_the_streaming_memory_limit_is_stored_and_streamed_back(
    store: Store,
) -> None:
    # an append's connection has a small memory_limit (STREAMING_SETTINGS): one huge answer
    # makes a batch bigger than it, which DuckDB must still take, and read_run gives it back
    # in batches of at most READ_BATCH_ROWS rows
    limit_mb = int(dict(STREAMING_SETTINGS)["memory_limit"].removesuffix("MB"))
    n = 80_000
    table = pa.table(
        {
            "account_id": pa.array(["000000000001"] * n),
            "region": pa.array(["us-east-1"] * n),
            "service_name": pa.array([f"svc-{i:06d}" for i in range(n)]),
            "collected_at": pa.array([T0] * n, pa.timestamp("us", tz="UTC")),
            "extra": pa.array([f"{i:06d}" * 170 for i in range(n)]),  # 1 KB each, distinct
        }
    )
    assert table.nbytes > limit_mb * 2**20
    store.begin_run("big", T0, 1, 1, "test")
    assert store.append("big", {"container_services": table}) == {"container_services": n}
    sizes = [b.num_rows for b in store.read_run("big", "container_services")]
    assert sum(sizes) == n and max(sizes) <= READ_BATCH_ROWS
    got = store.query(
        "SELECT count(DISTINCT service_name), min(extra), max(length(extra)) "
        "FROM container_services WHERE run_id = 'big'"
    ).to_pylist()[0]
    assert list(got.values()) == [n, "000000" * 170, 1020]


def test_reader_cannot_write(db: Path) -> None:
    Store.open(db).close()
    with Store.open(db, read_only=True) as r:
        with pytest.raises(StoreError, match="read-only"):
            r.begin_run("r1", T0, 1, 1, "test")
        with pytest.raises(StoreError):
            r.query("CREATE TABLE x (a INTEGER)")


# --------------------------------------------------------------------------- foreign files


def test_corrupt_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "inventory.duckdb"
    garbage = random.Random(3).randbytes  # the same bytes every run: one test, not many
    path.write_bytes(garbage(64 * 1024))
    before = digest(path)
    for ro in (False, True):
        with pytest.raises(StoreError, match=r"not a DuckDB database") as info:
            Store.open(path, read_only=ro)
        assert str(path) in str(info.value)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inventory.duckdb"]
    # a "DUCK" magic with garbage after it gets past the header check: DuckDB refuses it
    fake = tmp_path / "fake.duckdb"
    fake.write_bytes(garbage(8) + b"DUCK" + garbage(8192))
    before = digest(fake)
    with pytest.raises(StoreError, match=re.escape(str(fake))):
        Store.open(fake)
    assert digest(fake) == before
    assert not (tmp_path / "fake.duckdb.wal").exists()


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.duckdb"
    path.touch()
    with pytest.raises(StoreError, match="not a DuckDB database"):
        Store.open(path)
    assert path.read_bytes() == b""


def test_foreign_duckdb_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE customers (id INTEGER, name VARCHAR)")
    con.execute("INSERT INTO customers VALUES (1, 'x')")
    con.close()
    before = digest(path)
    for ro in (False, True):
        with pytest.raises(StoreError, match="not a lightsail-inventory store") as info:
            Store.open(path, read_only=ro)
        assert str(path) in str(info.value)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.duckdb"]


def test_empty_duckdb_database_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "blank.duckdb"
    duckdb.connect(str(path)).close()
    with pytest.raises(StoreError, match="empty DuckDB database"):
        Store.open(path, read_only=True)
    Store.open(path).close()
    Store.open(path, read_only=True).close()


# --------------------------------------------------------------------------- migration


def test_migration_adds_missing_columns(db: Path) -> None:
    db.parent.mkdir(parents=True)
    con = duckdb.connect(str(db))
    # an "older" store: schema version 0, `containers` without `ports`, no `errors` table
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('app', 'lightsail-inventory'), ('schema_version', '0')")
    for name, sch in schema.TABLES.items():
        if name == "errors":
            continue
        if name == "containers":
            sch = sch.remove(sch.get_field_index("ports"))
        con.execute(schema.create_table_sql(name, sch))
    con.execute(
        "INSERT INTO containers (run_id, account_id, region, container_name) "
        "VALUES ('old', '000000000001', 'us-east-1', 'web')"
    )
    con.close()

    with Store.open(db, read_only=True) as r:  # a reader does not migrate, but copes
        t = r.read_run("old", "containers").read_all()
        assert t.schema == schema.CONTAINERS and t.column("ports").null_count == 1
        assert r.runs() == []
    with Store.open(db) as s:
        _, cols = s.query_rows(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'containers'"
        )
        assert ("ports", "MAP(VARCHAR, VARCHAR)") in cols
        _, rows = s.query_rows("SELECT value FROM meta WHERE key = 'schema_version'")
        assert rows == [(str(schema.SCHEMA_VERSION),)]
        _, rows = s.query_rows("SELECT container_name, ports FROM containers")
        assert rows == [("web", None)]
        t = s.read_run("old", "containers").read_all()
        assert t.schema == schema.CONTAINERS  # schema order, even though ports came last
        write_run(s, "r1", T0, {("000000000001", "us-east-1"): None})
        s.begin_run("r2", at(1), 1, 1, "test")
        s.append(
            "r2",
            {
                "containers": containers("r2", "000000000001", "us-east-1", "svc"),
                "scans": scan("r2", "000000000001", "us-east-1", True),
            },
        )
        s.finish_run("r2", "complete")
        t = s.query("SELECT * FROM latest_containers")
        assert t.column_names == schema.CONTAINERS.names
        assert dict(t.column("ports").to_pylist()[0]) == {"80": "HTTP"}


def test_newer_schema_is_not_written(db: Path) -> None:
    Store.open(db).close()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(db)
    Store.open(db, read_only=True).close()  # reading is still fine


# --------------------------------------------------------------------------- concurrency


HOLD_WRITER = """
import sys, time
from inventory.storage.store import READ_BATCH_ROWS, STREAMING_SETTINGS, Store
s = Store.open(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
s.close()
"""


def hold_writer(db: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    wait_line(proc, "ready")
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_second_writer_is_refused_with_the_holders_pid(db: Path) -> None:
    Store.open(db).close()
    proc = hold_writer(db)
    try:
        with pytest.raises(StoreLocked) as info:  # without wait=True: refused, not queued
            Store.open(db)
        assert f"PID {proc.pid}" in str(info.value)
        assert str(db) in str(info.value)
        with pytest.raises(StoreLocked, match=f"PID {proc.pid}"):
            Store.open(db, wait=True, wait_timeout=0.5)
        # readers are not blocked by the writer lock (the writer holds no connection)
        with Store.open(db, read_only=True) as r:
            assert r.runs() == []
    finally:
        release(proc)
    Store.open(db).close()


def test_waiting_writer_gets_the_lock_when_the_holder_exits(db: Path) -> None:
    proc = hold_writer(db)
    try:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        with Store.open(db, wait=True, wait_timeout=30) as s:
            assert s.runs() == []
    finally:
        proc.wait(timeout=30)


def test_lock_is_released_when_the_holder_is_killed(db: Path) -> None:
    proc = hold_writer(db)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    Store.open(db).close()  # flock died with the process; its stale lock file is no obstacle


def test_lock_file_names_the_holder(db: Path) -> None:
    import json

    with Store.open(db):
        data = json.loads(db.with_name(db.name + ".lock").read_text())
        assert data["pid"] == os.getpid()
        assert {"host", "started_at", "command"} <= data.keys()


def test_reader_works_between_writer_flushes(db: Path) -> None:
    """In lockstep: after each of the writer's appends, a reader gets in and sees exactly
    the rows committed so far, and none of them in the views until the run is finished."""
    Store.open(db).close()
    proc = child(
        f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_store import services, scan, T0
        from inventory.storage.store import READ_BATCH_ROWS, STREAMING_SETTINGS, Store
        s = Store.open({str(db)!r})
        s.begin_run("r1", T0, 1, 5, "test")
        for i in range(5):
            region = f"region-{{i}}"
            s.append("r1", {{"scans": scan("r1", "000000000001", region, True),
                             "container_services": services("r1", "000000000001", region, "a")}})
            print(f"appended {{i + 1}}", flush=True)
            sys.stdin.readline()
        s.finish_run("r1", "complete")
        print("done", flush=True)
        s.close()
        """
    )
    try:
        with Store.open(db, read_only=True) as r:
            for i in range(1, 6):
                wait_line(proc, f"appended {i}")
                _, got = r.query_rows(
                    "SELECT (SELECT count(*) FROM container_services), "
                    "(SELECT status FROM runs WHERE run_id = 'r1'), "
                    "(SELECT count(*) FROM latest_container_services)"
                )
                assert got == [(i, "running", 0)]  # the run is not finished: nothing visible
                assert proc.stdin is not None
                proc.stdin.write("\n")
                proc.stdin.flush()
        wait_line(proc, "done")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Store.open(db, read_only=True) as r:
        assert len(latest(r)) == 5


def test_same_process_reader_and_writer(store: Store, db: Path) -> None:
    store.begin_run("r1", T0, 1, 1, "test")
    with Store.open(db, read_only=True) as r:
        assert [x["status"] for x in r.runs()] == ["running"]
        store.append("r1", {"scans": scan("r1", "000000000001", "us-east-1", True)})
        assert r.query_rows("SELECT count(*) FROM scans")[1] == [(1,)]


def test_reader_waits_then_fails_clearly_while_the_file_is_held(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer holds the file until told to let go: a reader with a short wait fails
    with a clear message; one with the default wait is refused at first, retries, and gets
    in once the writer lets go (the test lets it go on the reader's first refusal)."""
    Store.open(db).close()
    proc = child(
        f"""
        import sys
        from inventory.storage.store import READ_BATCH_ROWS, STREAMING_SETTINGS, Store
        s = Store.open({str(db)!r})
        with s.connection():
            print("holding", flush=True)
            sys.stdin.readline()
        print("released", flush=True)
        sys.stdin.readline()
        """
    )
    try:
        wait_line(proc, "holding")
        with pytest.raises(StoreError) as info:
            Store.open(db, read_only=True, busy_timeout=0.3)
        msg = str(info.value)
        assert f"being written by collect PID {proc.pid}" in msg and "retry shortly" in msg
        assert "Traceback" not in msg and "IO Error" not in msg

        # with the default retry it gets in once the writer lets go
        refused: list[str] = []
        real_connect = duckdb.connect

        def connect(*args: Any, **kwargs: Any) -> Any:
            try:
                return real_connect(*args, **kwargs)
            except duckdb.Error as e:
                if not refused:  # the first refusal: now let the writer go
                    assert proc.stdin is not None
                    proc.stdin.write("\n")
                    proc.stdin.flush()
                    wait_line(proc, "released")
                refused.append(str(e))
                raise

        monkeypatch.setattr(duckdb, "connect", connect)
        with Store.open(db, read_only=True, busy_timeout=60) as r:
            assert r.runs() == []
        assert len(refused) == 1, refused  # refused while held, in at the next try
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- crash safety


def test_sigkill_mid_append_leaves_earlier_runs_intact(db: Path) -> None:
    a = "000000000001"
    with Store.open(db) as s:
        write_run(s, "r1", at(0), {(a, "us-east-1"): ["one", "two"], (a, "eu-west-2"): None})
        before = s.query("SELECT * FROM container_services ORDER BY ALL")
    # five whole appends, then the sixth stops itself after its INSERTs, before its COMMIT
    # (the test hook), and is killed there
    proc = child(
        f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_store import services, scan, at
        from inventory import testhook
        from inventory.storage.store import READ_BATCH_ROWS, STREAMING_SETTINGS, Store
        s = Store.open({str(db)!r})
        s.begin_run("r2", at(60), 1, 6, "test")
        for i in range(6):
            if i == 5:
                testhook.PAUSE_AT = "append-uncommitted"
            region = f"region-{{i}}"
            names = [f"svc-{{i}}-{{k}}" for k in range(200)]
            s.append("r2", {{"scans": scan("r2", "{a}", region, True),
                             "container_services": services("r2", "{a}", region, *names)}})
        print("not stopped", flush=True)
        """
    )
    stopped_at(proc.pid, proc.poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert "test hook INVENTORY_TEST_PAUSE_AT=append-uncommitted" in proc.communicate()[1]

    with Store.open(db, read_only=True) as r:
        assert r.query("SELECT * FROM container_services WHERE run_id = 'r1' ORDER BY ALL").equals(
            before
        )
        assert {x["run_id"]: x["status"] for x in r.runs()} == {"r1": "partial", "r2": "running"}
        assert latest(r) == [(a, "us-east-1", "one", "r1"), (a, "us-east-1", "two", "r1")]
        _, rows = r.query_rows("SELECT count(*) FROM container_services WHERE run_id = 'r2'")
        assert rows[0][0] == 5 * 200  # the five committed appends; the sixth's rows are gone
    with Store.open(db) as s:  # the lock died with the child
        assert s.begin_run("r3", at(120), 1, 1, "test") == ["r2"]
        r1 = s.run("r1")
        assert r1 is not None and r1["status"] == "partial" and r1["services"] == 2
