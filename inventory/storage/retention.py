"""Retention: remove old runs from the DuckDB store and give the space back.

`prune(store, keep_days=N)` removes the runs that started more than N days ago;
`prune(store, keep_runs=N)` keeps the N newest runs (of any status) and removes the rest.
Never removed: a run that is still the newest good snapshot of some account × region of the
current fleet (the `latest_*` views read it: an account × region that failed every night
since keeps its last good inventory), the run that defines the fleet (`fleet_run`: removing
it would change which pairs the views show), and a run still 'running' (the next collect
marks an interrupted one failed). Pairs that left the fleet are protected by nothing: their
runs go by age like any other.

A removed run loses its rows in every table, in one transaction. DuckDB keeps the freed
blocks inside the file for reuse (CHECKPOINT and VACUUM do not shrink it), so the file is then
compacted: copied with `COPY FROM DATABASE` into a temporary file beside it (in a private
folder of its own), which takes the old file's mode and replaces it by rename once complete. The writer lock is held throughout; a crash leaves either the old file
or the new one, each whole. The Parquet lake is not touched by it.

`prune_lake(dest, ...)` does the same to the Parquet lake alone (a folder or s3://; no store
needed): the same selection (`select`, over the lake's own runs and views), and a removed run
loses its files in every table, every shard's part, in its run_date partition. The `runs`
table's files go last, and only once the run's other files are gone: a removal cut short
(a file that could not be deleted) leaves the run listed in the lake, so it is reported and
the next prune finishes it. An emptied local partition folder is removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from inventory.errors import StoreError, UsageError
from inventory.storage import lake, lakequery, schema
from inventory.storage.files import keep_mode
from inventory.storage.store import Store
from inventory.terminal import plural

log = logging.getLogger(__name__)
MAX_KEEP_DAYS = 36_500  # a century: more is a typo (and past the dates Python can count back)


@dataclass
class PruneResult:
    removed: list[str] = field(default_factory=list)  # run ids, oldest first
    # old enough, but still the latest somewhere in the fleet, or the run defining the fleet
    protected: list[str] = field(default_factory=list)
    kept: int = 0  # runs left
    rows: dict[str, int] = field(default_factory=dict)  # rows deleted per table
    size_before: int = 0  # bytes, the database file and its WAL
    size_after: int = 0
    dry_run: bool = False
    lake: str | None = None  # prune_lake: the lake's files, not a database file
    files: dict[str, int] = field(default_factory=dict)  # lake files removed per table
    file_bytes: int = 0  # their size
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, why) not removed

    @property
    def reclaimed(self) -> int:
        return self.size_before - self.size_after

    def describe(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{verb} {plural(len(self.removed), 'run')}; {plural(self.kept, 'run')} kept"]
        if self.removed:
            lines.append(f"  oldest {self.removed[0]}, newest {self.removed[-1]}")
        if self.rows:
            lines.append("  rows deleted: " + ", ".join(f"{t} {n:,}" for t, n in self.rows.items()))
        if self.files:
            lines.append(
                f"  {plural(sum(self.files.values()), 'file')} ({self.file_bytes:,} bytes) "
                f"{'would be ' if self.dry_run else ''}deleted from {self.lake}: "
                + ", ".join(f"{t} {n:,}" for t, n in self.files.items())
            )
        if self.failed:
            path, why = self.failed[0]
            lines.append(
                f"  {plural(len(self.failed), 'file')} could not be deleted (e.g. {path}: {why}); "
                "their runs stay listed in the lake: run prune again to finish"
            )
        if self.protected:
            lines.append(
                f"  {plural(len(self.protected), 'older run')} kept: still the newest good snapshot of "
                f"some account × region of the fleet, or the run that defines it ({', '.join(self.protected[:3])}"
                + (", …)" if len(self.protected) > 3 else ")")
            )
        if not self.dry_run and self.lake is None:
            lines.append(
                f"  file {_mb(self.size_before)} -> {_mb(self.size_after)} "
                f"({_mb(self.reclaimed)} reclaimed)"
            )
        return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def file_size(db: Path) -> int:
    """Bytes of the database file plus its write-ahead log."""
    total = 0
    for p in (db, db.with_name(db.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def select(
    con: duckdb.DuckDBPyConnection,
    keep_days: int | None = None,
    keep_runs: int | None = None,
    now: dt.datetime | None = None,
) -> tuple[list[str], list[str], int]:
    """(runs to remove oldest first, runs kept only because the views still read them, runs
    kept in all), from `con`: a store's connection or the lake's (the same views). A run is
    its run id, all shards together (run_totals)."""
    if (keep_days is None) == (keep_runs is None):
        raise UsageError("give one of --keep-days N or --keep-runs N")
    if keep_days is not None and not 0 <= keep_days <= MAX_KEEP_DAYS:
        raise UsageError(f"--keep-days {keep_days}: must be from 0 to {MAX_KEEP_DAYS:,}")
    if keep_runs is not None and keep_runs < 0:
        raise UsageError(f"--keep-runs {keep_runs}: must be 0 or more")
    now = now or dt.datetime.now(dt.UTC)
    rows = con.execute(
        "SELECT r.run_id, r.started_at, r.status, "
        "  r.run_id IN (SELECT run_id FROM latest_scans UNION ALL SELECT run_id FROM fleet_run)"
        "  AS latest "
        "FROM run_totals AS r ORDER BY r.started_at DESC, r.run_id DESC"
    ).fetchall()
    old: list[tuple[str, bool]] = []
    for i, (run_id, started_at, status, latest) in enumerate(rows):
        if status == "running":
            continue
        if keep_runs is not None:
            expired = i >= keep_runs
        else:
            assert keep_days is not None
            expired = started_at < now - dt.timedelta(days=keep_days)
        if expired:
            old.append((run_id, bool(latest)))
    old.reverse()
    removed = [r for r, latest in old if not latest]
    protected = [r for r, latest in old if latest]
    return removed, protected, len(rows) - len(removed)


def prune(
    store: Store,
    *,
    keep_days: int | None = None,
    keep_runs: int | None = None,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    compact: bool = True,
) -> PruneResult:
    """Remove old runs from `store` (a writer) and compact the file (see the module doc)."""
    if store.read_only:
        raise StoreError(f"{store.path}: opened read-only; prune needs the writer")
    with store.connection() as con:
        removed, protected, kept = select(con, keep_days, keep_runs, now)
    result = PruneResult(removed, protected, kept, dry_run=dry_run)
    result.size_before = result.size_after = file_size(store.path)
    if dry_run or not removed:
        return result
    ids = pa.table({"run_id": pa.array(removed, pa.string())})
    with store.connection() as con:
        con.register("_prune_runs", ids)
        con.execute("BEGIN")
        try:
            for table in schema.TABLES:
                row = con.execute(
                    f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM _prune_runs)"
                ).fetchone()
                result.rows[table] = int(row[0]) if row else 0
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("_prune_runs")
        con.execute("CHECKPOINT")
    log.info("pruned %d runs from %s: %s", len(removed), store.path, result.rows)
    if compact:
        compact_file(store)
    result.size_after = file_size(store.path)
    return result


def prune_lake(
    dest: str,
    *,
    keep_days: int | None = None,
    keep_runs: int | None = None,
    now: dt.datetime | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Remove old runs' files from the lake at `dest` (see the module doc). Idempotent: a
    run already gone is not selected again, a file already gone counts as deleted."""
    con = lakequery.open_lake(dest)
    try:
        removed, protected, kept = select(con, keep_days, keep_runs, now)
        started = dict(
            con.execute(
                "SELECT run_id, started_at FROM run_totals WHERE run_id IN "
                "(SELECT unnest($ids::VARCHAR[]))",
                {"ids": removed},
            ).fetchall()
        )
    finally:
        con.close()
    result = PruneResult(removed, protected, kept, dry_run=dry_run, lake=dest)
    files = [f for run_id in removed for f in lake.files_of_run(dest, run_id, started[run_id])]
    if not dry_run:
        files, failed = _delete_run_files(files)
        result.failed = [(f.path, why) for f, why in failed]
    for f in files:
        result.files[f.table] = result.files.get(f.table, 0) + 1
        result.file_bytes += f.size
    if not dry_run:
        log.info("pruned %d runs from the lake %s: %s", len(removed), dest, result.files)
    return result


def _delete_run_files(
    files: list[lake.LakeFile],
) -> tuple[list[lake.LakeFile], list[tuple[lake.LakeFile, str]]]:
    """(deleted, not deleted with why): every run's files, its `runs` file only once all its
    others are gone (a run cut short stays listed in the lake, for the next prune)."""
    failed = lake.delete_files([f for f in files if f.table != "runs"])
    cut_short = {f.run_id for f, _ in failed}
    failed += lake.delete_files(
        [f for f in files if f.table == "runs" and f.run_id not in cut_short]
    )
    left = {f.path for f, _ in failed}
    deleted = [
        f for f in files if f.path not in left and not (f.table == "runs" and f.run_id in cut_short)
    ]
    return deleted, failed


def compact_file(store: Store) -> None:
    """Rewrite the database into a new file without its free blocks; rename it into place.

    The new file is made inside a private folder that mkdtemp creates beside the database
    (an unpredictable name, 0700: never a link someone placed), and takes the old file's mode
    before it replaces it."""
    db = store.path
    folder = Path(tempfile.mkdtemp(prefix=f".{db.name}.compact-", dir=db.parent))
    tmp = folder / db.name
    tmp_wal = tmp.with_name(tmp.name + ".wal")
    try:
        with store.connection() as con:
            row = con.execute("SELECT current_database()").fetchone()
            assert row is not None
            source = '"' + str(row[0]).replace('"', '""') + '"'
            target = str(tmp).replace("'", "''")
            con.execute(f"ATTACH '{target}' AS _compact")
            try:
                con.execute(f"COPY FROM DATABASE {source} TO _compact")
            finally:
                con.execute("DETACH _compact")
        # Both files are closed and checkpointed now: a WAL left beside either would be
        # replayed into the wrong file, so then keep the old file as it is.
        if db.with_name(db.name + ".wal").exists() or tmp_wal.exists():
            log.warning("%s: not compacted (a write-ahead log is still there)", db)
            return
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        keep_mode(db, tmp)
        os.replace(tmp, db)
        lake.fsync_dir(db.parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # tmp and its WAL, unless renamed
