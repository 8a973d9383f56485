"""`collect --shard K/N` / `--shards N`: N processes (here: run one after the other, each with
its own DuckDB file, all into one lake, under one --run-id) together store what one unsharded
run stores, and every reader of the lake (tables, latest_* views, run_totals, diff, named
queries) treats the N parts as one run. Real parts: the simulator over HTTP, DuckDB files,
Parquet files in one shared lake folder."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from inventory.answers import diff as diff_mod
from inventory.answers import queries
from inventory.cli import app
from inventory.errors import UsageError
from inventory.model import Account, Options
from inventory.plan.config import load_plan
from inventory.plan.runid import (
    SHARD_INDEX_ENV,
    Shard,
    check_run_id,
    new_run_id,
    parse_shard,
    resolve_shard,
    run_started_at,
    shard_from_env,
    shard_of,
)
from inventory.run.pipeline import run_collect
from inventory.simulator import Fleet, Simulator
from inventory.storage import lake, lakequery, schema
from inventory.storage.fingerprint import KEY_ENV
from inventory.storage.store import LATEST_VIEWS, Store

MakeSimulator = Callable[..., Simulator]
WriteAccounts = Callable[..., Path]
R2 = ("us-east-1", "eu-west-2")
KEY = "shards-share-this-fingerprint-key-0123456789"
OLDER = "20260104T020304Z-b0b0b0"  # an unsharded run of another generation, the night before
ONE = "20260105T020304Z-a1a1a1"  # the unsharded run
SHARDED = "20260105T020304Z-5ba4d3"  # the sharded run (its date is not today's)
DAY = "run_date=2026-01-05"
# columns that differ between two collects of the same fleet: when, and which run
VARYING = {"run_id", "collected_at", "run_date", "started_at", "finished_at", "occurred_at"}
runner = CliRunner()


def rows(con: Any, sql: str) -> list[str]:
    """The rows of `sql` without the VARYING columns, sorted (JSON per row)."""
    t = con.sql(sql).to_arrow_table()
    t = t.drop_columns([c for c in t.column_names if c in VARYING])
    return sorted(json.dumps(r, default=str, sort_keys=True) for r in t.to_pylist())


def anonymous(changes: list[diff_mod.Change]) -> list[diff_mod.Change]:
    return [dataclasses.replace(c, from_run="", to_run="") for c in changes]


@pytest.fixture
def shard_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SHARD_INDEX_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("INVENTORY_RUN_ID", raising=False)
    return monkeypatch


# --------------------------------------------------------------------------- end to end


def test_three_shards_together_equal_one_unsharded_run(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    shard_env: pytest.MonkeyPatch,
) -> None:
    shard_env.setenv(KEY_ENV, KEY)  # shards of one fleet share the fingerprint key
    fleet = Fleet(12, seed=8, regions=R2)
    sim = make_simulator(fleet=fleet.evolve(seed=1))
    config = write_accounts(tmp_path / "accounts.toml", fleet.account_ids, regions=R2)
    plan = load_plan(config, options=Options(concurrency=8, rate=2000.0, timeout=5.0, deep=True))
    one_lake, shared = tmp_path / "one-lake", tmp_path / "lake"

    # the night before (another generation of the fleet), in both lakes
    older = plan.__class__(
        plan.accounts, plan.regions, dataclasses.replace(plan.options, deep=False)
    )
    asyncio.run(run_collect(older, tmp_path / "older.duckdb", str(one_lake), run_id=OLDER))
    with Store.open(tmp_path / "older.duckdb", read_only=True) as store:
        lake.export_run(store, OLDER, shared)

    sim.set_fleet(fleet)
    one = asyncio.run(run_collect(plan, tmp_path / "one.duckdb", str(one_lake), run_id=ONE))
    assert one.status == "complete" and one.wall_seconds >= 0  # from this process's start
    with Store.open(tmp_path / "one.duckdb", read_only=True) as store:
        assert store.run(ONE)["started_at"] == run_started_at(ONE)  # type: ignore[index]
    # shards 0 and 1 through the library, shard 2 through the CLI of an array job
    parts = [
        asyncio.run(
            run_collect(plan, tmp_path / f"shard-{k}.duckdb", str(shared), run_id=SHARDED,
                        shard=Shard(k, 3))
        )
        for k in (0, 1)
    ]  # fmt: skip
    shard_env.setenv("JOB_COMPLETION_INDEX", "2")
    out = runner.invoke(
        app,
        ["collect", "--config", str(config), "--db", str(tmp_path / "shard-2.duckdb"),
         "--parquet-dir", str(shared), "--shards", "3", "--run-id", SHARDED, "--deep",
         "--rate", "2000", "--timeout", "5"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert all(p.status == "complete" and p.run_id == SHARDED for p in parts)

    # each shard collected exactly its own accounts: a partition of the accounts file
    owned = []
    for k in range(3):
        with Store.open(tmp_path / f"shard-{k}.duckdb", read_only=True) as store:
            _, got = store.query_rows("SELECT DISTINCT account_id FROM scans")
            (run,) = store.runs()
        mine = {a for (a,) in got}
        assert mine == {a for a in fleet.account_ids if shard_of(a, 3) == k} != set()
        assert (run["run_id"], run["shard"], run["shards"], run["accounts"]) == (
            SHARDED, k, 3, len(mine)
        )  # fmt: skip
        assert run["started_at"] == run_started_at(SHARDED)
        owned.append(mine)
    assert set().union(*owned) == set(fleet.account_ids) and sum(map(len, owned)) == 12

    # one file per table per shard, in the run id's date partition
    for table in schema.TABLES:
        names = sorted(p.name for p in (shared / table / DAY).iterdir())
        assert names == [f"{SHARDED}.shard-{k}.parquet" for k in range(3)], table

    with lakequery.open_lake(one_lake) as a, lakequery.open_lake(shared) as b:
        # every table: the same rows (but for when and which run), deep tables included
        for table in schema.TABLES:
            if table == "runs":
                continue
            sql = f"SELECT * FROM {table} WHERE run_id <> '{OLDER}'"
            assert rows(a, sql) == rows(b, sql), table
            if table not in ("errors", *schema.USAGE_TABLES):  # no --usage here
                assert rows(b, sql), table
        for view in ("latest_scans", *LATEST_VIEWS):
            assert rows(a, f"SELECT * FROM {view}") == rows(b, f"SELECT * FROM {view}"), view
        # the runs table holds one row per shard; run_totals makes them one run
        shard_rows = b.execute(
            "SELECT shard, shards, status, run_date FROM runs WHERE run_id = ? ORDER BY shard",
            [SHARDED],
        ).fetchall()
        assert shard_rows == [(k, 3, "complete", dt.date(2026, 1, 5)) for k in range(3)]
        totals = "SELECT * EXCLUDE (run_id, finished_at, shards, shards_found) FROM run_totals"
        assert rows(a, f"{totals} WHERE run_id = '{ONE}'") == rows(
            b, f"{totals} WHERE run_id = '{SHARDED}'"
        )
        assert b.execute(
            "SELECT status, shards, shards_found FROM run_totals WHERE run_id = ?", [SHARDED]
        ).fetchall() == [("complete", 3, 3)]
        # diff: the sharded run is one run, compared with the night before
        d_one, d_shared = diff_mod.diff(a), diff_mod.diff(b)
        assert {(p.from_run, p.to_run) for p in d_shared.pairs} == {(OLDER, SHARDED)}
        assert len(d_shared.pairs) == 12 * len(R2) and d_shared.uncompared == []
        assert anonymous(d_shared.changes) == anonymous(d_one.changes) != []
        # a named query that pairs each target's two newest good scans
        text, _ = queries.resolve_sql("changes_since_previous_run")
        changes = rows(a, text)
        assert changes == rows(b, text) != []

    # re-exporting one shard replaces its own files and leaves the others' alone
    others = {p: p.read_bytes() for p in shared.rglob(f"{SHARDED}.shard-[02].parquet")}
    out = runner.invoke(
        app, ["export", "--run", SHARDED, "--db", str(tmp_path / "shard-1.duckdb"),
              "--to", str(shared)],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert {p: p.read_bytes() for p in shared.rglob(f"{SHARDED}.shard-[02].parquet")} == others
    assert len(list(shared.rglob(f"{SHARDED}*.parquet"))) == 3 * len(schema.TABLES)

    # a shard missing from the lake (still running, or lost): the run is partial
    for p in shared.rglob(f"{SHARDED}.shard-2.parquet"):
        p.unlink()
    with lakequery.open_lake(shared) as b:
        assert b.execute(
            "SELECT status, shards, shards_found FROM run_totals WHERE run_id = ?", [SHARDED]
        ).fetchall() == [("partial", 3, 2)]


def test_a_shard_without_accounts_is_an_empty_complete_part(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    shard_env: pytest.MonkeyPatch,
) -> None:
    fleet = Fleet(1, seed=2, regions=R2)
    make_simulator(fleet=fleet)
    (acct,) = fleet.account_ids
    config = write_accounts(tmp_path / "accounts.toml", [acct], regions=R2)
    idle = 1 - shard_of(acct, 2)
    shard_env.setenv("AWS_BATCH_JOB_ARRAY_INDEX", str(idle))
    shard_env.setenv("JOB_COMPLETION_INDEX", str(1 - idle))  # AWS Batch's variable wins
    db, dest = tmp_path / "inv.duckdb", tmp_path / "lake"
    out = runner.invoke(
        app,
        ["collect", "--config", str(config), "--db", str(db), "--parquet-dir", str(dest),
         "--shards", "2", "--run-id", SHARDED],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    with Store.open(db, read_only=True) as store:
        (run,) = store.runs()
    assert (run["status"], run["accounts"], run["targets"], run["shard"]) == (
        "complete",
        0,
        0,
        idle,
    )
    assert sorted(p.name for p in (dest / "runs" / DAY).iterdir()) == [
        f"{SHARDED}.shard-{idle}.parquet"
    ]


# --------------------------------------------------------------------------- the share


def test_shard_of_is_sha256_of_the_id_modulo_n() -> None:
    rng = random.Random(5)
    ids = [f"{rng.randrange(10**12):012d}" for _ in range(4000)]
    for n in (1, 2, 3, 4, 7):
        for account_id in ids[:200]:
            want = int(hashlib.sha256(account_id.encode()).hexdigest(), 16) % n
            assert shard_of(account_id, n) == want
    # pinned: a change here would move accounts between shards of a running fleet
    assert [shard_of(a, 4) for a in ("000000000001", "111111111111", "012345678901")] == [
        int(hashlib.sha256(a.encode()).hexdigest(), 16) % 4
        for a in ("000000000001", "111111111111", "012345678901")
    ]
    assert [shard_of("000000000001", n) for n in (2, 3, 4, 5)] == [0, 1, 2, 2]
    counts = [0] * 4
    for account_id in ids:
        counts[shard_of(account_id, 4)] += 1
    assert all(850 <= c <= 1150 for c in counts), counts  # about 1000 each
    accounts = [Account(id=a) for a in ids[:50]]
    parts = [Shard(k, 3).select(accounts) for k in range(3)]
    assert sorted(a.id for p in parts for a in p) == sorted(ids[:50])
    assert all(list(p) == [a for a in accounts if a in p] for p in parts)  # order kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3/3", "K must be less than N (shards are 0 to 2)"),
        ("4", "expected K/N"),
        ("a/b", "expected K/N"),
        ("-1/3", "expected K/N"),
        ("0/0", "N must be between 1 and 10,000"),
    ],
)
def test_bad_shard_is_a_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"--shard '{text}': {message}")):
        parse_shard(text)


def test_parse_shard_and_index_from_the_environment() -> None:
    assert parse_shard(" 2 / 4 ") == Shard(2, 4) and str(Shard(2, 4)) == "2/4"
    assert Shard(2, 4).part == "shard-2"
    assert shard_from_env(4, {"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 4)
    both = {"AWS_BATCH_JOB_ARRAY_INDEX": "1", "JOB_COMPLETION_INDEX": "3"}
    assert shard_from_env(4, both) == Shard(1, 4)
    with pytest.raises(UsageError, match="neither AWS_BATCH_JOB_ARRAY_INDEX nor JOB_COMP"):
        shard_from_env(4, {})
    with pytest.raises(UsageError, match=r"JOB_COMPLETION_INDEX=4, but shards are numbered 0 to 3"):
        shard_from_env(4, {"JOB_COMPLETION_INDEX": "4"})
    with pytest.raises(UsageError, match=r"AWS_BATCH_JOB_ARRAY_INDEX='x' is not a shard index"):
        shard_from_env(4, {"AWS_BATCH_JOB_ARRAY_INDEX": "x"})
    with pytest.raises(UsageError, match="--shards 0: must be at least 1"):
        shard_from_env(0, {"JOB_COMPLETION_INDEX": "0"})


def test_run_ids() -> None:
    assert check_run_id("20261127T053650Z-3f9a1c") == "20261127T053650Z-3f9a1c"
    started = dt.datetime(
        2026, 11, 27, 6, 36, 50, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1))
    )
    made = {new_run_id(started) for _ in range(8)}
    assert len(made) > 1  # a random suffix
    for run_id in made:
        assert check_run_id(run_id) == run_id and run_id.startswith("20261127T053650Z-")
        assert run_started_at(run_id) == started.replace(microsecond=0)
    assert check_run_id("20261127T053650Z-nightly_batch-7")
    assert run_started_at("20261127T053650Z-3f9a1c") == dt.datetime(
        2026, 11, 27, 5, 36, 50, tzinfo=dt.UTC
    )
    for bad, why in [
        ("nightly", "expected YYYYMMDDTHHMMSSZ-suffix"),
        ("20261127T053650Z", "expected YYYYMMDDTHHMMSSZ-suffix"),
        ("20261127T053650Z-", "expected YYYYMMDDTHHMMSSZ-suffix"),
        ("20261127T053650Z-" + "a" * 33, "expected YYYYMMDDTHHMMSSZ-suffix"),
        ("20261127T053650Z-a/b", "expected YYYYMMDDTHHMMSSZ-suffix"),
        ("20261399T053650Z-3f9a1c", "20261399T053650Z is not a valid UTC time"),
    ]:
        with pytest.raises(UsageError, match=f"--run-id '{bad}': {why}"):
            check_run_id(bad)
    with pytest.raises(UsageError, match="--shard 0/2 needs --run-id"):
        resolve_shard("0/2", None, None, {})
    with pytest.raises(UsageError, match="--shard 0/2 and --shards 2: give one"):
        resolve_shard("0/2", 2, "20261127T053650Z-3f9a1c", {})
    assert resolve_shard(None, None, "20261127T053650Z-3f9a1c", {}) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shards", "4", "--run-id", SHARDED], "--shards 4: neither AWS_BATCH_JOB_ARRAY_INDEX"),
        (["--shard", "1/4"], "--shard 1/4 needs --run-id"),
        (["--shard", "4/4", "--run-id", SHARDED], "--shard '4/4': K must be less than N"),
        (["--run-id", "tonight"], "--run-id 'tonight': expected YYYYMMDDTHHMMSSZ-suffix"),
        (["--shard", "1/2", "--run-id", SHARDED], "--shard 1/2: sharding splits the accounts"),
    ],
)
def test_cli_usage_errors_name_the_flag(
    args: list[str], message: str, tmp_path: Path, shard_env: pytest.MonkeyPatch
) -> None:
    out = runner.invoke(app, ["collect", "--db", str(tmp_path / "x.duckdb"), *args])
    assert out.exit_code == 2, out.output
    assert message in " ".join(out.output.split())
    assert not (tmp_path / "x.duckdb").exists()


def test_cli_takes_the_run_id_from_the_environment(
    tmp_path: Path, shard_env: pytest.MonkeyPatch
) -> None:
    shard_env.setenv("INVENTORY_RUN_ID", "not-a-run-id")
    out = runner.invoke(app, ["collect", "--db", str(tmp_path / "x.duckdb")])
    assert out.exit_code == 2 and "--run-id 'not-a-run-id'" in " ".join(out.output.split())


def test_lake_keeps_other_shards_when_a_part_is_exported(tmp_path: Path) -> None:
    """export_run of a shard writes `.shard-K` and removes nothing; the unsharded export of
    the same id still replaces stale parts (as before)."""
    started = run_started_at(SHARDED)
    dest = tmp_path / "lake"
    for k in range(2):
        db = tmp_path / f"s{k}.duckdb"
        with Store.open(db) as store:
            store.shard = (k, 2)
            store.begin_run(SHARDED, started, 1, 1, "test")
            store.finish_run(SHARDED, "complete", started)
            for _ in range(2):
                lake.export_run(store, SHARDED, dest)
    assert sorted(p.name for p in (dest / "runs" / DAY).iterdir()) == [
        f"{SHARDED}.shard-0.parquet",
        f"{SHARDED}.shard-1.parquet",
    ]
    _, got = lakequery.query_rows(dest, "SELECT shard, shards FROM runs ORDER BY shard")
    assert got == [(0, 2), (1, 2)]
