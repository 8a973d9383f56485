"""`inventory prune`: old runs leave all six tables, the file shrinks, the latest stays."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from fixtures.snapshots import write_snapshot
from typer.testing import CliRunner

from inventory.cli import app
from inventory.errors import StoreLocked, UsageError
from inventory.simulator import Fleet
from inventory.storage import lake, lakequery, retention, schema
from inventory.storage.fingerprint import key_path, load_key
from inventory.storage.store import LATEST_VIEWS, Store

REGIONS = ("us-east-1", "eu-west-2", "ap-south-1")
runner = CliRunner()


def history(
    db: Path, days: list[dt.datetime], fleet: Fleet, failing: tuple[str, str] | None = None
) -> list[str]:
    """One run per day, the fleet evolving; `failing` fails in every run after the first."""
    accounts = list(fleet.all_account_ids)
    runs = []
    with Store.open(db) as store:
        for i, day in enumerate(days):
            failed = [failing] if failing and i > 0 else []
            runs.append(write_snapshot(store, day, fleet, accounts, REGIONS, failed))
            fleet = fleet.evolve(seed=i)
    return runs


def counts(db: Path) -> dict[str, dict[str, int]]:
    """{table: {run_id: rows}}."""
    out: dict[str, dict[str, int]] = {}
    with Store.open(db, read_only=True) as store:
        for table in schema.TABLES:
            _, rows = store.query_rows(f"SELECT run_id, count(*) FROM {table} GROUP BY 1")
            out[table] = dict(rows)
    return out


def latest(db: Path) -> dict[str, list[str]]:
    with Store.open(db, read_only=True) as store:
        return {
            view: sorted(
                json.dumps(r, default=str, sort_keys=True)
                for r in store.query(f"SELECT * FROM {view}").to_pylist()
            )
            for view in LATEST_VIEWS
        }


def test_keep_runs_removes_old_runs_everywhere_and_shrinks_the_file(tmp_path: Path) -> None:
    db = tmp_path / "inv.duckdb"
    days = [dt.datetime(2026, 2, d, 5, 0, tzinfo=dt.UTC) for d in range(1, 7)]
    runs = history(db, days, Fleet(30, seed=4, regions=REGIONS, services_per_account=6))
    before, views = counts(db), latest(db)
    assert all(len(before[t]) == len(runs) for t in schema.TABLES if t != "errors")
    key = load_key(db)
    plain = tmp_path / "plain.duckdb"  # the same prune, without compaction
    shutil.copyfile(db, plain)
    with Store.open(plain) as store:
        uncompacted = retention.prune(store, keep_runs=2, compact=False)

    with Store.open(db) as store:
        result = retention.prune(store, keep_runs=2)
    assert result.removed == runs[:-2] and result.protected == [] and result.kept == 2
    after = counts(db)
    for table in schema.TABLES:
        assert set(after[table]) <= set(runs[-2:]), table  # nothing of the old runs is left
        assert after[table] == {r: n for r, n in before[table].items() if r in runs[-2:]}
        assert result.rows[table] == sum(n for r, n in before[table].items() if r in runs[:-2])
    assert latest(db) == views  # what the views show did not change
    # the space came back; DuckDB alone (CHECKPOINT) keeps the freed blocks inside the file
    assert uncompacted.rows == result.rows
    assert uncompacted.size_after >= uncompacted.size_before == result.size_before
    assert result.size_after < result.size_before * 0.7, result
    assert retention.file_size(db) == result.size_after
    assert load_key(db) == key and key_path(db).exists()  # fingerprints stay comparable

    # the compacted file is a working store: readers, writers, migrations, another prune
    with Store.open(db) as store:
        later = days[-1] + dt.timedelta(days=1)
        write_snapshot(store, later, Fleet(2, seed=4), ["000000000001"], REGIONS)
        assert len(store.runs()) == 3
        again = retention.prune(store, keep_runs=3)
    assert again.removed == [] and again.size_after == again.size_before


def test_the_newest_good_snapshot_of_every_target_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "inv.duckdb"
    fleet = Fleet(3, seed=6, regions=REGIONS)
    stuck = (fleet.account_ids[0], "us-east-1")  # fails every night after the first
    days = [dt.datetime(2026, 2, d, 5, 0, tzinfo=dt.UTC) for d in range(1, 6)]
    runs = history(db, days, fleet, failing=stuck)
    views = latest(db)
    with Store.open(db, read_only=True) as store:
        _, rows = store.query_rows(
            "SELECT run_id FROM latest_scans WHERE account_id = ? AND region = ?", list(stuck)
        )
    assert rows == [(runs[0],)]

    now = days[-1] + dt.timedelta(hours=1)
    with Store.open(db) as store:
        dry = retention.prune(store, keep_days=1, now=now, dry_run=True)
        assert counts(db)["runs"] == dict.fromkeys(runs, 1)  # a dry run changes nothing
        result = retention.prune(store, keep_days=1, now=now)
    assert dry.removed == result.removed == runs[1:-1]
    assert result.protected == [runs[0]]  # older than a day, but still the latest for `stuck`
    assert sorted(counts(db)["runs"]) == [runs[0], runs[-1]]
    assert latest(db) == views
    with Store.open(db, read_only=True) as store:
        _, rows = store.query_rows(
            "SELECT count(*) FROM latest_container_services WHERE account_id = ? AND region = ?",
            list(stuck),
        )
    assert rows[0][0] == len(fleet.services(*stuck)) > 0
    assert "still the newest good snapshot" in result.describe()


def test_failed_and_running_runs(tmp_path: Path) -> None:
    db = tmp_path / "inv.duckdb"
    fleet = Fleet(1, seed=6, regions=REGIONS)
    accounts = list(fleet.all_account_ids)
    day = dt.datetime(2026, 2, 1, 5, 0, tzinfo=dt.UTC)
    with Store.open(db) as store:
        good = write_snapshot(store, day, fleet, accounts, REGIONS)
        everything = [(a, r) for a in accounts for r in REGIONS]
        failed = write_snapshot(
            store, day + dt.timedelta(days=1), fleet, accounts, REGIONS, failed=everything
        )
        store.begin_run("20260203T050000Z-running", day + dt.timedelta(days=2), 1, 1, "t")
        result = retention.prune(store, keep_runs=0)
    assert result.removed == [failed]  # the failed run goes; the good one is the latest
    assert sorted(counts(db)["runs"]) == sorted([good, "20260203T050000Z-running"])


def test_cli(tmp_path: Path) -> None:
    db = tmp_path / "inv.duckdb"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    days = [now - dt.timedelta(days=n) for n in (40, 20, 1)]
    runs = history(db, days, Fleet(2, seed=8, regions=REGIONS))

    out = runner.invoke(app, ["prune", "--db", str(db), "--keep-days", "30", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "would remove 1 run;" in out.stdout and counts(db)["runs"] == dict.fromkeys(runs, 1)
    out = runner.invoke(app, ["prune", "--db", str(db), "--keep-days", "30"])
    assert out.exit_code == 0, out.output
    assert "removed 1 run; 2 runs kept" in out.stdout and "reclaimed" in out.stdout
    assert sorted(counts(db)["runs"]) == runs[1:]
    out = runner.invoke(app, ["prune", "--db", str(db), "--keep-runs", "1"])
    assert out.exit_code == 0 and sorted(counts(db)["runs"]) == runs[2:]

    for args, message in (
        ([], "give one of --keep-days N or --keep-runs N"),
        (["--keep-days", "3", "--keep-runs", "3"], "give one of --keep-days N or --keep-runs N"),
        (["--keep-runs", "-1"], "--keep-runs -1: must be 0 or more"),
    ):
        out = runner.invoke(app, ["prune", "--db", str(db), *args])
        assert out.exit_code == 2 and message in " ".join(out.output.split()), out.output
    with Store.open(db):  # another writer (a collect) holds the lock
        out = runner.invoke(app, ["prune", "--db", str(db), "--keep-runs", "1"])
        assert out.exit_code == 1 and "being written by another collect" in out.output
        with pytest.raises(StoreLocked):
            Store.open(db)
    with pytest.raises(UsageError, match="--keep-days -2"), Store.open(db) as store:
        retention.prune(store, keep_days=-2)


# --------------------------------------------------------------------------- prune --lake


def lake_of(db: Path, dest: Path) -> None:
    """Every run of the store at `db` exported to the local lake `dest`."""
    with Store.open(db, read_only=True) as store:
        for run in store.runs():
            lake.export_run(store, run["run_id"], dest)


def lake_latest(dest: Path) -> dict[str, list[str]]:
    with lakequery.open_lake(dest) as con:
        return {
            view: sorted(
                json.dumps(r, default=str, sort_keys=True)
                for r in con.sql(f"SELECT * FROM {view}").to_arrow_table().to_pylist()
            )
            for view in LATEST_VIEWS
        }


def test_prune_lake_selects_as_the_store_and_removes_whole_runs(tmp_path: Path) -> None:
    db, dest = tmp_path / "inv.duckdb", tmp_path / "lake"
    fleet = Fleet(3, seed=6, regions=REGIONS)
    stuck = (fleet.account_ids[0], "us-east-1")  # fails every night after the first
    days = [dt.datetime(2026, 2, d, 5, 0, tzinfo=dt.UTC) for d in range(1, 6)]
    runs = history(db, days, fleet, failing=stuck)
    lake_of(db, dest)
    views = lake_latest(dest)
    now = days[-1] + dt.timedelta(hours=1)

    dry = retention.prune_lake(str(dest), keep_days=1, now=now, dry_run=True)
    with Store.open(db) as store:
        by_store = retention.prune(store, keep_days=1, now=now, dry_run=True)
    assert (dry.removed, dry.protected, dry.kept) == (
        by_store.removed,
        by_store.protected,
        by_store.kept,
    )
    assert dry.removed == runs[1:-1] and dry.protected == [runs[0]]
    files = sorted(dest.rglob("*.parquet"))
    assert dry.files == dict.fromkeys(schema.TABLES, 3) and len(files) == 5 * len(schema.TABLES)

    doomed = [f for f in files if f.name.split(".")[0] in dry.removed]
    size = sum(f.stat().st_size for f in doomed)
    result = retention.prune_lake(str(dest), keep_days=1, now=now)
    assert result.removed == dry.removed and result.failed == []
    assert result.file_bytes == dry.file_bytes == size
    assert sorted(dest.rglob("*.parquet")) == sorted(set(files) - set(doomed))
    assert sorted(p.name for p in (dest / "runs").iterdir()) == [
        "run_date=2026-02-01",
        "run_date=2026-02-05",
    ]  # the emptied partitions are gone
    assert lake_latest(dest) == views  # the newest good snapshots all stay
    assert retention.prune_lake(str(dest), keep_days=1, now=now).removed == []


def test_prune_lake_cut_short_is_reported_and_finished_by_the_next(tmp_path: Path) -> None:
    db, dest = tmp_path / "inv.duckdb", tmp_path / "lake"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    old, new = history(db, [now - dt.timedelta(days=40), now - dt.timedelta(days=1)], Fleet(2))
    lake_of(db, dest)
    (part,) = (dest / "containers").glob(f"*/{old}.parquet")
    stuck = part.with_name(f"{old}.shard-9.parquet")  # not a file: cannot be unlinked
    (stuck / "inside").mkdir(parents=True)
    cmd = ["prune", "--lake", str(dest), "--keep-days", "30"]

    out = runner.invoke(app, cmd)
    assert out.exit_code == 1, out.output
    text = " ".join(out.output.split())
    assert "removed 1 run; 1 run kept" in text
    assert f"1 file could not be deleted (e.g. {stuck}: Is a directory)" in text
    assert "run prune again to finish" in text
    assert not part.exists() and list((dest / "runs").glob(f"*/{old}.parquet"))
    with lakequery.open_lake(dest) as con:  # still listed: the next prune finds it
        assert con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [old]).fetchone() == (1,)

    shutil.rmtree(stuck)
    out = runner.invoke(app, cmd)
    assert out.exit_code == 0, out.output
    assert "removed 1 run; 1 run kept" in out.output and "1 file (" in out.output
    assert {p.name.split(".")[0] for p in dest.rglob("*.parquet")} == {new}
    both = runner.invoke(app, [*cmd, "--db", str(db)])
    assert both.exit_code == 2 and "give one or the other" in both.output
