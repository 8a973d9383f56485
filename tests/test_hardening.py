"""Security hardening, through the `inventory` command line.

- Files only their owner can read: under `umask 000` every file a command creates is 0600
  and every folder 0700; a file written again (the store compacted by `prune`, a report,
  a Parquet file) keeps its mode.
- Writes that do not follow links: a symbolic link at the lock file or the fingerprint key
  (dangling or not) is a one-line error and the file it points to is untouched; a key that
  belongs to another user is refused; the Parquet temporary name cannot be planted.
- A key worth its name: fewer than 32 bytes of key material is a usage error (exit 2) that
  says how to make a key.
- Re-export touches only its own run: run ids may contain '-', part files are
  `<run_id>.<part>.parquet`, and re-exporting run `…-a` leaves run `…-a-b` alone.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MakeSimulator, WriteAccounts
from helpers import rows
from typer.testing import CliRunner

from inventory.cli import app
from inventory.simulator import Fleet
from inventory.storage import lake, schema
from inventory.storage.files import GROUP_ENV
from inventory.storage.fingerprint import KEY_ENV, key_path

REGIONS = ("us-east-1", "eu-west-2")
GOOD_KEY = "hardening-test-fingerprint-key-0123456789"
runner = CliRunner()


def inventory(
    args: Sequence[str], *, umask: int = 0o022, key: str | None = GOOD_KEY
) -> subprocess.CompletedProcess[str]:
    """`python -m inventory ARGS` in its own process, with the given umask (the AWS
    variables are this test's: the simulator's); `key` None: no INVENTORY_FINGERPRINT_KEY."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop(KEY_ENV, None)
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run(
        [sys.executable, "-m", "inventory", *args],
        capture_output=True,
        text=True,
        env=env,
        umask=umask,
        timeout=120,
    )


@pytest.fixture
def accounts(tmp_path: Path, make_simulator: MakeSimulator, write_accounts: WriteAccounts) -> Path:
    fleet = Fleet(2, seed=1, regions=REGIONS)
    make_simulator(fleet=fleet)
    return write_accounts(tmp_path / "accounts.toml", fleet.account_ids, regions=REGIONS)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The error of a failed command: one line, no traceback."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- 1. private files


def test_umask_000_still_gives_private_files_and_folders(tmp_path: Path, accounts: Path) -> None:
    """collect, export and report under umask 000: every file 0600, every folder 0700."""
    data = tmp_path / "data"
    db, lake_dir = data / "db" / "inv.duckdb", data / "lake"
    proc = inventory(
        ["collect", "--config", str(accounts), "--db", str(db), "--parquet-dir", str(lake_dir)],
        umask=0,
        key=None,  # the key file beside the store is created too
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = rows(db, "SELECT run_id FROM runs")
    out = inventory(
        ["export", "--run", run["run_id"], "--db", str(db), "--to", str(data / "lake2")], umask=0
    )
    assert out.returncode == 0, out.stderr
    report = data / "reports" / "nightly" / "report.html"
    out = inventory(["report", "--db", str(db), "--html", str(report)], umask=0)
    assert out.returncode == 0, out.stderr

    made = [data, *data.rglob("*")]
    files = [p for p in made if p.is_file()]
    assert {db, key_path(db), report} <= set(files)
    assert len([p for p in files if p.suffix == ".parquet"]) == 2 * len(schema.TABLES)
    assert {str(p): oct(mode(p)) for p in files} == {str(p): "0o600" for p in files}
    folders = [p for p in made if p.is_dir()]
    assert {str(p): oct(mode(p)) for p in folders} == {str(p): "0o700" for p in folders}


def test_the_write_ahead_log_is_private_under_umask_000(tmp_path: Path) -> None:
    """DuckDB creates the WAL itself, at the first write of each connection."""
    script = (
        "import os, stat, sys\n"
        "from inventory.storage.store import Store\n"
        "db = sys.argv[1]\n"
        "with Store.open(db) as store, store.connection() as con:\n"
        "    con.execute(\"INSERT OR REPLACE INTO meta VALUES ('probe', 'x')\")\n"
        "    print(oct(stat.S_IMODE(os.stat(db + '.wal').st_mode)))\n"
    )
    db = tmp_path / "wal.duckdb"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(db)], capture_output=True, text=True, umask=0
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0o600"]
    assert mode(db) == 0o600


def test_prune_compaction_keeps_the_store_mode(tmp_path: Path, accounts: Path) -> None:
    db = tmp_path / "inv.duckdb"
    for _ in range(2):
        proc = inventory(["collect", "--config", str(accounts), "--db", str(db), "--no-parquet"])
        assert proc.returncode == 0, proc.stderr
    os.chmod(db, 0o640)  # shared with a group on purpose
    inode = db.stat().st_ino
    out = inventory(["prune", "--db", str(db), "--keep-runs", "1"])
    assert out.returncode == 0, out.stderr
    assert db.stat().st_ino != inode  # compacted: a new file took its place
    assert mode(db) == 0o640  # was 0644 (the umask's)
    assert len(rows(db, "SELECT run_id FROM runs")) == 1
    assert not [p.name for p in tmp_path.rglob(".*")]  # no temporary file or folder left


def test_a_report_and_a_reexport_keep_their_mode(tmp_path: Path, accounts: Path) -> None:
    db, lake_dir = tmp_path / "inv.duckdb", tmp_path / "lake"
    proc = inventory(
        ["collect", "--config", str(accounts), "--db", str(db), "--parquet-dir", str(lake_dir)]
    )
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "report.html"
    assert inventory(["report", "--db", str(db), "--html", str(report)]).returncode == 0
    assert mode(report) == 0o600  # was always forced to 0644
    os.chmod(report, 0o644)  # published on purpose
    assert inventory(["report", "--db", str(db), "--html", str(report)]).returncode == 0
    assert mode(report) == 0o644

    (run,) = (r["run_id"] for r in rows(db, "SELECT run_id FROM runs"))
    again = next(lake_dir.rglob(f"{run}.parquet"))
    os.chmod(again, 0o640)
    out = inventory(["export", "--run", run, "--db", str(db), "--to", str(lake_dir)])
    assert out.returncode == 0, out.stderr
    assert mode(again) == 0o640
    assert not [p.name for p in tmp_path.rglob(".*")]


# --------------------------------------------------------------------------- 6. no links


def test_a_link_at_the_lock_file_is_refused_and_its_target_untouched(
    tmp_path: Path, accounts: Path
) -> None:
    db = tmp_path / "inv.duckdb"
    victim = tmp_path / "precious.txt"
    victim.write_text("do not overwrite\n")
    lock = tmp_path / "inv.duckdb.lock"
    lock.symlink_to(victim)
    proc = inventory(["collect", "--config", str(accounts), "--db", str(db), "--no-parquet"])
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert str(lock) in line and "symbolic link" in line
    assert victim.read_text() == "do not overwrite\n"
    assert lock.is_symlink()

    # dangling: the file it names is not created either
    lock.unlink()
    nowhere = tmp_path / "nowhere"
    lock.symlink_to(nowhere)
    proc = inventory(["collect", "--config", str(accounts), "--db", str(db), "--no-parquet"])
    assert proc.returncode == 1
    assert "symbolic link" in one_line_error(proc)
    assert not nowhere.exists()


def test_a_linked_or_foreign_key_file_is_refused(
    tmp_path: Path, accounts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "inv.duckdb"
    key = key_path(db)
    real = tmp_path / "elsewhere.key"
    fd = os.open(real, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, secrets.token_bytes(32))
    os.close(fd)
    key.symlink_to(real)
    args = ["collect", "--config", str(accounts), "--db", str(db), "--no-parquet"]
    proc = inventory(args, key=None)
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert str(key) in line and "symbolic link" in line
    assert rows(db, "SELECT count(*) AS n FROM container_services") == [{"n": 0}]

    key.unlink()
    key.symlink_to(tmp_path / "missing.key")  # dangling: was a traceback
    proc = inventory(args, key=None)
    assert proc.returncode == 1 and "symbolic link" in one_line_error(proc)
    assert not (tmp_path / "missing.key").exists()

    # a regular, private key file that belongs to someone else
    key.unlink()
    os.link(real, key)
    monkeypatch.delenv(KEY_ENV, raising=False)
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    out = runner.invoke(app, args)
    assert out.exit_code == 1
    assert f"belongs to user id {me}, not to you" in " ".join(out.output.split())
    assert str(key) in out.output.replace("\n", "")


def test_the_parquet_temporary_file_cannot_be_planted(tmp_path: Path) -> None:
    """A link at the name the temporary file used to have (`.<name>.tmp-<pid>`) is left
    alone: the file it points to keeps its bytes and the final file is a real file."""
    started = dt.datetime(2026, 11, 27, 5, 0, tzinfo=dt.UTC)
    run_id = "20261127T050000Z-abcdef"
    folder = Path(lake.partition_dir(tmp_path / "lake", "runs", started))
    folder.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    name = lake.file_name(run_id)
    (folder / f".{name}.tmp-{os.getpid()}").symlink_to(victim)
    table = pa.Table.from_pylist([{"run_id": run_id}])
    w = lake.write_table(table, tmp_path / "lake", "runs", run_id, started)
    assert victim.read_bytes() == b"precious"
    assert not Path(w.path).is_symlink() and pq.read_table(w.path).num_rows == 1
    assert mode(Path(w.path)) == 0o600


# --------------------------------------------------------------------------- 7. key length


@pytest.mark.parametrize("key", ["a", "x" * 31])
def test_a_short_key_is_a_usage_error_that_says_how_to_make_one(
    tmp_path: Path, accounts: Path, key: str
) -> None:
    db, lake_dir = tmp_path / "inv.duckdb", tmp_path / "lake"
    proc = inventory(
        ["collect", "--config", str(accounts), "--db", str(db), "--parquet-dir", str(lake_dir)],
        key=key,
    )
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert KEY_ENV in line and f"{len(key)} bytes" in line and "at least 32" in line
    assert "secrets.token_hex(32)" in line and "accept the new key explicitly" in line
    assert "x" * 31 not in line  # the key itself is not shown
    assert rows(db, "SELECT count(*) AS n FROM container_services") == [{"n": 0}]
    assert not lake_dir.exists()


def test_a_short_key_file_is_a_usage_error_and_32_bytes_are_enough(
    tmp_path: Path, accounts: Path
) -> None:
    db = tmp_path / "inv.duckdb"
    key = key_path(db)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"0123456789abcdef")  # 16 bytes
    os.close(fd)
    args = ["collect", "--config", str(accounts), "--db", str(db), "--no-parquet"]
    proc = inventory(args, key=None)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert str(key) in line and "16 bytes" in line and "secrets.token_hex(32)" in line

    key.write_bytes(b"0123456789abcdef" * 2)  # 32 bytes, as the key file has always had
    assert inventory(args, key=None).returncode == 0
    other = ["collect", "--config", str(accounts), "--db", str(tmp_path / "other.duckdb")]
    assert inventory([*other, "--no-parquet"], key="é" * 16).returncode == 0  # 32 UTF-8 bytes


# --------------------------------------------------------------------------- 8. re-export


def test_reexport_of_a_run_leaves_runs_whose_ids_start_with_it(
    tmp_path: Path, accounts: Path
) -> None:
    db, lake_dir = tmp_path / "inv.duckdb", tmp_path / "lake"
    short, longer = "20261127T050000Z-a", "20261127T050000Z-a-b"
    for run_id in (short, longer):
        proc = inventory(
            ["collect", "--config", str(accounts), "--db", str(db),
             "--parquet-dir", str(lake_dir), "--run-id", run_id],
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    theirs = {p: p.read_bytes() for p in lake_dir.rglob(f"{longer}.parquet")}
    assert len(theirs) == len(schema.TABLES)

    out = inventory(["export", "--run", short, "--db", str(db), "--to", str(lake_dir)])
    assert out.returncode == 0, out.stderr
    assert {p: p.read_bytes() for p in lake_dir.rglob(f"{longer}.parquet")} == theirs
    out = inventory(
        ["query", "--lake", str(lake_dir), "--format", "csv",
         "SELECT run_id, count(*) AS n FROM runs GROUP BY 1 ORDER BY 1"],
    )  # fmt: skip
    assert out.stdout.split() == ["run_id,n", f"{short},1", f"{longer},1"]


def test_lakes_written_the_old_way_are_read_and_their_parts_replaced(
    tmp_path: Path, accounts: Path
) -> None:
    """A shard part named `<run_id>-shard-K.parquet` (as before) is read by `query --lake`;
    exporting that run again replaces it, but not the whole file of run `<run_id>-shard-1`."""
    db, lake_dir = tmp_path / "inv.duckdb", tmp_path / "lake"
    run_id = "20261127T050000Z-c"
    proc = inventory(
        ["collect", "--config", str(accounts), "--db", str(db), "--parquet-dir", str(lake_dir),
         "--run-id", run_id],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for p in list(lake_dir.rglob(f"{run_id}.parquet")):
        p.rename(p.with_name(f"{run_id}-shard-0.parquet"))  # how an older version named a part
    count = ["query", "--lake", str(lake_dir), "--format", "csv", "SELECT count(*) FROM runs"]
    assert inventory(count).stdout.split()[-1] == "1"

    other = f"{run_id}-shard-1"  # a valid run id: another run, not a part of run_id
    empty = pa.Table.from_pylist([], schema=schema.RUNS)
    started = dt.datetime(2026, 11, 27, 5, 0, tzinfo=dt.UTC)
    kept = lake.write_table(
        pa.Table.from_pylist([{"run_id": other}]), lake_dir, "runs", other, started
    )
    lake.write_table(empty, lake_dir, "errors", other, started)
    out = inventory(["export", "--run", run_id, "--db", str(db), "--to", str(lake_dir)])
    assert out.returncode == 0, out.stderr
    # the old parts with rows are gone; an empty one holds nothing and cannot be told apart
    left = list(lake_dir.rglob(f"{run_id}-shard-0.parquet"))
    assert [pq.read_metadata(p).num_rows for p in left] == [0] * len(left)
    assert len(left) < len(schema.TABLES)
    assert Path(kept.path).exists() and list(lake_dir.rglob(f"errors/*/{other}.parquet"))
    assert inventory(count).stdout.split()[-1] == "2"


def test_group_readable_relaxes_the_modes_but_not_the_key(
    tmp_path: Path, accounts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INVENTORY_GROUP_READABLE=1 (the documented option): files 0640, folders 0750, under
    umask 000 too; the fingerprint key stays 0600. A bad value is a usage error."""
    data = tmp_path / "data"
    db, lake_dir = data / "inv.duckdb", data / "lake"
    args = ["collect", "--config", str(accounts), "--db", str(db), "--parquet-dir", str(lake_dir)]
    monkeypatch.setenv(GROUP_ENV, "1")
    proc = inventory(args, umask=0, key=None)
    assert proc.returncode == 0, proc.stderr
    report = data / "out" / "report.html"
    assert inventory(["report", "--db", str(db), "--html", str(report)], umask=0).returncode == 0
    monkeypatch.setenv(GROUP_ENV, "maybe")
    bad = inventory(["runs", "--db", str(db)])
    assert bad.returncode == 2 and f"{GROUP_ENV}='maybe'" in one_line_error(bad)
    made = [data, *data.rglob("*")]
    files = {str(p): oct(mode(p)) for p in made if p.is_file()}
    assert files.pop(str(key_path(db))) == "0o600"
    assert len(files) == 2 + len(schema.TABLES)  # the store, the report, the Parquet files
    assert files == {p: "0o640" for p in files}
    folders = [p for p in made if p.is_dir()]
    assert {str(p): oct(mode(p)) for p in folders} == {str(p): "0o750" for p in folders}
