"""The DuckDB store: one database file, one writer at a time, runs visible only when finished.

Layout of a database (all derived from schema.py):
  - the six tables of schema.TABLES, plus `meta` (key, value): `app` marks the file as ours,
    `schema_version` is the schema.py version it was last migrated to;
  - the views `latest_container_services`, `latest_deployments`, `latest_containers` (and
    the helpers `good_runs`, `good_scans`, `fleet_run`, `fleet`, `latest_scans` they share):
    for each account × region of the current fleet, the rows of its newest good scan (see
    FLEET_SQL for what a good run and the fleet are); `run_powers` and
    `latest_service_powers`: each latest service's power at its run's prices (POWERS_SQL);

Concurrency. DuckDB lets one process open a file read-write, and then refuses every other
process, readers included. So a writer holds an exclusive `flock` on `<db>.lock` for the
whole run (one collect at a time), but opens the DuckDB file only for each write
(`begin_run`, `append`, `finish_run`) and closes it again, so readers get in between.
Readers open the file read-only per call, and retry for a few seconds while a writer holds
it. A lock that cannot be had ends with `StoreLocked` / `StoreError`, never a raw DuckDB
traceback.

Files. A writer adds 077 to the process umask before DuckDB creates anything (files.py),
so the database and its WAL are 0600 and folders made for them 0700 whatever the umask; the
lock file is 0600 and never opened through a symbolic link.

Crash safety. `begin_run` commits a `runs` row with status 'running'; each `append` is one
transaction; `finish_run` sets the final status. The views read only finished runs, so a
half-written run is never visible, and a process killed at any instant leaves the earlier
runs intact (DuckDB's WAL). The next `begin_run` marks an interrupted run 'failed' and
deletes its inventory rows (keeping its scans and errors), so "a failed run has no
inventory rows" always holds.

Damage. A writer reads every value of an existing file (read-only) before it writes
anything, and DuckDB checks the checksum of each block it reads, so a truncated file, or
one with bytes overwritten in any block that holds data, is refused with `BadStore` and
left unchanged (bytes a block does not use are never read, and harmless); a reader that meets damage gets the same one-line error.
`inventory rebuild` (rebuild.py) makes a new store from the Parquet lake.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from inventory import testhook
from inventory.errors import BadStore, StoreError, StoreLocked
from inventory.storage import schema
from inventory.storage.files import make_dirs, open_private, private_umask

log = logging.getLogger(__name__)

APP = "lightsail-inventory"
LOCK_SUFFIX = ".lock"
READER_BUSY_TIMEOUT = 5.0  # seconds a reader retries while a writer holds the file
WRITER_BUSY_TIMEOUT = 60.0  # seconds a writer retries while a reader holds the file
DEFAULT_WAIT_TIMEOUT = 3600.0  # seconds `wait=True` queues behind another writer
RUN_STATUSES = ("complete", "partial", "failed")
APPENDABLE = tuple(name for name in schema.TABLES if name != "runs")
LATEST_VIEWS = {f"latest_{name}": name for name in schema.INVENTORY_TABLES}
_DUCKDB_MAGIC = b"DUCK"  # bytes 8..12 of every DuckDB database file
# DuckDB settings of the connections that append a batch or stream a run's table out (a
# collect's own work, done thousands of times in one long process). Closing each append's
# connection checkpoints, which rewrites the tables' last, partly filled row groups; with
# DuckDB's defaults (a thread per core, 80% of the RAM) that spiked a collect of 10,000
# dense accounts by up to 100 MB on every batch. One thread and a small buffer pool (DuckDB
# evicts what it has written) keep them near 50 MB, for the same CPU. Below about
# 20 MB a commit fails ("could not allocate block"): 32 MB keeps a margin, and a batch far
# bigger than it still goes in (tests/test_store.py; figures in benchmarks/README.md).
STREAMING_SETTINGS = (("threads", 1), ("memory_limit", "32MB"))
READ_BATCH_ROWS = 8_192  # rows per Arrow batch of read_run: the export's memory follows it
_POLL = 0.1

# finish_run's counters, in runs-table order. None leaves the column as begin_run set it
# (accounts, targets) or derives it from the stored rows (the others).
COUNTERS = (
    "accounts",
    "targets",
    "targets_ok",
    "targets_failed",
    "api_calls",
    "retries",
    "services",
    "deployments",
    "containers",
)


# --------------------------------------------------------------------------- the writer lock


@dataclass(frozen=True, slots=True)
class LockHolder:
    """What a writer writes into `<db>.lock` (one JSON object) while it holds it."""

    pid: int
    host: str
    started_at: str  # ISO 8601, UTC
    command: str

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host}, since {self.started_at}: {self.command}"

    @classmethod
    def current(cls) -> LockHolder:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            command=" ".join([Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]),
        )

    @classmethod
    def read(cls, lock_path: Path) -> LockHolder | None:
        """The holder a lock file names, or None when it is absent, empty or unreadable."""
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read(65_536))
            return cls(
                int(data["pid"]), str(data["host"]), str(data["started_at"]), str(data["command"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


class WriterLock:
    """An exclusive `flock` on `<db>.lock`. Released by `release()` or by the process dying.

    The lock file is created 0600 and never opened through a symbolic link (a link there,
    dangling or not, is a StoreError naming it): it cannot be used to overwrite another file.

    After taking the flock it checks that the path still names the file it locked: a
    releasing writer unlinks the file, and a process that opened it just before must then
    retry on the new file instead of "holding" an unlinked one.
    """

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, path: Path, wait: bool = False, timeout: float | None = None) -> WriterLock:
        db_name = str(path)[: -len(LOCK_SUFFIX)] if str(path).endswith(LOCK_SUFFIX) else str(path)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            fd = open_private(path, os.O_RDWR | os.O_CREAT)  # never through a link
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    holder = LockHolder.read(path)
                    raise StoreLocked(
                        db_name, holder.describe() if holder else "another process"
                    ) from None
                testhook.pause_at("lock-wait")
                time.sleep(_POLL * 2)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.lstat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)  # locked a file another writer just unlinked: try the new one
                continue
            lock = cls(path, fd)
            lock._write(LockHolder.current())
            return lock

    def _write(self, holder: LockHolder) -> None:
        data = json.dumps(
            {
                "pid": holder.pid,
                "host": holder.host,
                "started_at": holder.started_at,
                "command": holder.command,
            }
        ).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data + b"\n", 0)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # still ours: we hold the flock
        os.close(fd)  # releases the flock


# --------------------------------------------------------------------------- the store


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _view_sql(view: str, table: str, prefix: str = "") -> str:
    cols = ", ".join(f"t.{_quote(f.name)}" for f in schema.TABLES[table])
    return (
        f"CREATE OR REPLACE VIEW {prefix}{view} AS SELECT {cols} FROM {prefix}{table} AS t "
        f"JOIN {prefix}latest_scans AS l "
        "ON t.run_id = l.run_id AND t.account_id = l.account_id AND t.region = l.region"
    )


# What a good scan and the latest snapshot are: written here once, as views, and read by
# everything else (the latest_* views, `diff`, the named queries, `prune`, the report, the
# lake and the Athena DDL). Plain SQL that DuckDB, Athena and Trino all read; `{p}` is the
# table prefix ("" here, "database." in docs/athena.sql).
#
# good_runs: one row per good run. A run (all runs rows of its run id: one per shard of a
# sharded run) is good when every one of its rows is 'complete' or 'partial': a run killed
# half way, one whose every target failed, or a sharded run with a shard failed or still
# running, is not. A shard missing (not yet in the lake; a shard's own store holds only its
# own row) does not make it bad: `all_shards` says whether every shard is there.
#
# good_scans: each account × region scanned ok in a good run, with the run's start time.
#
# fleet_run: the newest fleet-defining run (no row before there is one): a good run with all
# of its shards there that was not narrowed on the command line (runs.fleet_defining true or
# NULL: runs written before the column existed count).
#
# fleet: the account × region pairs that run planned (its scans rows, all shards, ok or
# failed), plus those in a good scan since (a narrowed run adds what it scanned and retires
# nothing). Before any fleet-defining run: every pair any run scanned.
#
# latest_scans: for each pair of the fleet, its newest good scan, however old: a pair failing
# every night since keeps its last good inventory. A pair that left the fleet keeps its rows
# in the tables (until `prune` removes them by age) but is in no latest_* view.
FLEET_SQL = (
    """
CREATE OR REPLACE VIEW {p}good_runs AS
SELECT run_id,
       min(started_at) AS started_at,
       count(DISTINCT coalesce(shard, -1)) >= coalesce(max(shards), 1) AS all_shards,
       bool_and(coalesce(fleet_defining, true)) AS fleet_defining
FROM {p}runs
GROUP BY run_id
HAVING bool_and(status IN ('complete', 'partial'))
""",
    """
CREATE OR REPLACE VIEW {p}good_scans AS
SELECT s.account_id, s.region, s.run_id, g.started_at AS run_started_at
FROM (SELECT DISTINCT account_id, region, run_id FROM {p}scans WHERE status = 'ok') AS s
JOIN {p}good_runs AS g ON g.run_id = s.run_id
""",
    """
CREATE OR REPLACE VIEW {p}fleet_run AS
SELECT run_id, started_at
FROM {p}good_runs
WHERE all_shards AND fleet_defining
ORDER BY started_at DESC, run_id DESC
LIMIT 1
""",
    """
CREATE OR REPLACE VIEW {p}fleet AS
SELECT s.account_id, s.region
FROM {p}scans AS s
LEFT JOIN {p}fleet_run AS f ON TRUE
WHERE f.run_id IS NULL OR s.run_id = f.run_id
UNION
SELECT g.account_id, g.region
FROM {p}good_scans AS g
JOIN {p}fleet_run AS f
  ON g.run_started_at > f.started_at
  OR (g.run_started_at = f.started_at AND g.run_id > f.run_id)
""",
    """
CREATE OR REPLACE VIEW {p}latest_scans AS
SELECT g.account_id, g.region, g.run_id, g.run_started_at
FROM (
    SELECT account_id, region, run_id, run_started_at,
           row_number() OVER (
               PARTITION BY account_id, region ORDER BY run_started_at DESC, run_id DESC
           ) AS rn
    FROM {p}good_scans
) AS g
JOIN {p}fleet AS f ON f.account_id = g.account_id AND f.region = g.region
WHERE g.rn = 1
""",
)


# The price, vCPUs and RAM of each latest service's power, from GetContainerServicePowers of
# the run that scanned it (collect --usage): the one lookup rightsizing, idle_services,
# cost_by_account, monthly_cost and the report use, so they agree. `{p}` as in FLEET_SQL.
#
# run_powers: one row per run × region × power id (a sharded run asks once per region and
# shard: its shards' rows are one). AWS names a power (`nano`) and gives it an id (`nano-1`):
# two ids may share a name (a new `nano-2` beside the old), so an id is never merged with
# another of its name.
#
# latest_service_powers: one row per latest_container_services row (run_id, account_id,
# region, service_name), matched on the service's powerId when that run's region lists it,
# else on its power name (matched_on 'power_id' | 'name'); when a name has several ids, the
# active one, then the dearest (never an understated cost). No powers for that run and region
# (collected without --usage, or the call failed), or a power not listed: the power columns
# are NULL (matched_on NULL), never a guess.
POWERS_SQL = (
    """
CREATE OR REPLACE VIEW {p}run_powers AS
SELECT run_id, region, power_id, name,
       max(price_per_month) AS price_per_month,
       max(cpu_count) AS cpu_count,
       max(ram_size_gb) AS ram_size_gb,
       bool_or(is_active) AS is_active,
       max(collected_at) AS collected_at
FROM {p}container_powers
GROUP BY run_id, region, power_id, name
""",
    """
CREATE OR REPLACE VIEW {p}latest_service_powers AS
SELECT run_id, account_id, region, service_name, power_id, name,
       price_per_month, cpu_count, ram_size_gb, is_active, collected_at, matched_on
FROM (
    SELECT s.run_id, s.account_id, s.region, s.service_name,
           p.power_id, p.name, p.price_per_month, p.cpu_count, p.ram_size_gb, p.is_active,
           p.collected_at,
           CASE
               WHEN p.power_id = s.power_id THEN 'power_id'
               WHEN p.name IS NOT NULL THEN 'name'
           END AS matched_on,
           row_number() OVER (
               PARTITION BY s.run_id, s.account_id, s.region, s.service_name
               ORDER BY CASE WHEN p.power_id = s.power_id THEN 0 ELSE 1 END,
                        CASE WHEN p.is_active THEN 0 ELSE 1 END,
                        p.price_per_month DESC, p.power_id
           ) AS rn
    FROM {p}latest_container_services AS s
    LEFT JOIN {p}run_powers AS p
      ON p.run_id = s.run_id AND p.region = s.region
     AND (p.power_id = s.power_id OR p.name = s.power)
) AS m
WHERE rn = 1
""",
)


# One row per run. A sharded run (collect --shard K/N) has one runs row per shard, all with
# its run_id (in the lake; each shard's own store has its one row): here they are one run.
# status: 'running' while a shard runs; 'complete' when every shard is complete and all N are
# there; 'failed' when every shard failed; else 'partial'. `shards_found` counts the rows.
# Plain SQL that DuckDB, Athena and Trino all read (lakequery.athena_ddl uses it too).
RUN_TOTALS_SELECT = """
SELECT run_id,
       min(started_at) AS started_at,
       max(finished_at) AS finished_at,
       CASE
           WHEN bool_or(status = 'running') THEN 'running'
           WHEN bool_and(status = 'complete')
                AND count(DISTINCT coalesce(shard, -1)) >= coalesce(max(shards), 1)
               THEN 'complete'
           WHEN bool_and(status = 'failed') THEN 'failed'
           ELSE 'partial'
       END AS status,
       max(shards) AS shards,
       CAST(count(*) AS INTEGER) AS shards_found,
       CAST(sum(accounts) AS INTEGER) AS accounts,
       CAST(sum(targets) AS INTEGER) AS targets,
       CAST(sum(targets_ok) AS INTEGER) AS targets_ok,
       CAST(sum(targets_failed) AS INTEGER) AS targets_failed,
       CAST(sum(api_calls) AS BIGINT) AS api_calls,
       CAST(sum(retries) AS BIGINT) AS retries,
       CAST(sum(services) AS BIGINT) AS services,
       CAST(sum(deployments) AS BIGINT) AS deployments,
       CAST(sum(containers) AS BIGINT) AS containers,
       max(tool_version) AS tool_version,
       min(schema_version) AS schema_version,
       bool_and(coalesce(fleet_defining, true)) AS fleet_defining
FROM {runs}
GROUP BY run_id
"""
RUN_TOTALS_SQL = "CREATE OR REPLACE VIEW run_totals AS" + RUN_TOTALS_SELECT.format(runs="runs")


def view_statements(create: str = "CREATE OR REPLACE VIEW", prefix: str = "") -> list[str]:
    """good_runs, good_scans, fleet_run, fleet, latest_scans, the latest_* views,
    run_powers, latest_service_powers and run_totals, in the order they are created: the one definition the store, the lake reader
    (lakequery), the report's as-of views and the Athena DDL use. `create`: e.g. "CREATE OR REPLACE TEMP VIEW";
    `prefix`: put before every table and view name, e.g. "lightsail_inventory."."""
    plain = "CREATE OR REPLACE VIEW"
    run_totals = f"{plain} {prefix}run_totals AS" + RUN_TOTALS_SELECT.format(runs=f"{prefix}runs")
    return [
        sql.strip().replace(plain, create, 1)
        for sql in (
            *(sql.format(p=prefix) for sql in FLEET_SQL),
            *(_view_sql(view, table, prefix) for view, table in LATEST_VIEWS.items()),
            *(sql.format(p=prefix) for sql in POWERS_SQL),
            run_totals,
        )
    ]


def _is_lock_conflict(exc: BaseException) -> bool:
    text = str(exc)
    return (
        "Could not set lock" in text
        or "Conflicting lock" in text
        or "different configuration than existing connections" in text
    )


class Store:
    """An inventory database. Open it with `Store.open`; close it (or use `with`)."""

    def __init__(
        self,
        path: Path,
        read_only: bool,
        lock: WriterLock | None,
        busy_timeout: float,
    ):
        self.path = path
        self.read_only = read_only
        self.busy_timeout = busy_timeout
        self._lock = lock
        self._mutex = threading.RLock()  # one DuckDB connection at a time from this Store
        self._closed = False
        # (K, N): the runs this writer begins are shard K of N of a run that several
        # processes share (collect --shard K/N); recorded in runs.shard / runs.shards.
        self.shard: tuple[int, int] | None = None
        # (fingerprint key id, env values stored): how the runs this writer begins keep
        # environment values (runs.fingerprint_key_id, runs.env_values); None: unknown.
        self.env_mode: tuple[str | None, bool] | None = None

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        read_only: bool = False,
        wait: bool = False,
        wait_timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        busy_timeout: float | None = None,
    ) -> Store:
        """Open (a writer: create or migrate) the database at `path`.

        A writer takes the lock `<path>.lock`; another writer holding it raises `StoreLocked`
        at once, or after `wait_timeout` seconds with `wait=True` (None: wait for ever).
        `busy_timeout`: how long one DuckDB open retries while another process has the file
        open (default 5 s for readers, 60 s for writers).
        A file that is not a DuckDB database, a DuckDB database that is not ours, and (for a
        writer) a damaged one raise `BadStore` (exit 2) and are left byte for byte as they were.
        """
        db = Path(path).absolute()
        if busy_timeout is None:
            busy_timeout = READER_BUSY_TIMEOUT if read_only else WRITER_BUSY_TIMEOUT
        exists = db.exists()
        if exists:
            _check_header(db)
        elif read_only:
            raise BadStore(f"{db}: no inventory database there; run `inventory collect` first")
        if read_only:
            store = cls(db, True, None, busy_timeout)
            with store.connection() as con:
                version = _inspect(con, db)
            if version is None:
                raise BadStore(
                    f"{db}: an empty DuckDB database, not an inventory yet; run `inventory collect`"
                )
            return store

        private_umask()  # DuckDB creates the database and its WAL itself: 0600 too
        try:
            make_dirs(db.parent)
        except OSError as e:
            raise BadStore(f"{db}: cannot create its directory: {e}") from e
        lock_path = db.with_name(db.name + LOCK_SUFFIX)
        try:
            lock = WriterLock.acquire(lock_path, wait=wait, timeout=wait_timeout)
        except OSError as e:
            raise BadStore(f"{db}: cannot take the writer lock {lock_path}: {e}") from e
        store = cls(db, False, lock, busy_timeout)
        try:
            if exists:
                # Look before touching: a read-only open changes nothing in a foreign or
                # damaged file; every value is read once, so damaged data is found here.
                with store.connection(read_only=True) as con:
                    _inspect(con, db)
                    _verify(con, db)
            with store.connection() as con:
                _setup(con, db)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Release the writer lock. The Store cannot be used afterwards."""
        self._closed = True
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + LOCK_SUFFIX)

    # -- connections -----------------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self, read_only: bool | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection for the length of a `with` block (TimeZone UTC).

        A reader Store always gets a read-only one. Hold it briefly: while it is open, no
        other process can write (or, for a writer's connection, read) the database.
        """
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")
        ro = True if self.read_only else bool(read_only)
        with self._mutex:
            con = self._connect(ro)
            try:
                con.execute("SET TimeZone = 'UTC'")
                yield con
            except duckdb.Error as e:
                if is_damage(e):
                    raise BadStore(damaged(self.path, e)) from e
                raise
            finally:
                con.close()

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.02
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.Error as e:
                if is_damage(e):
                    raise BadStore(damaged(self.path, e)) from e
                if not _is_lock_conflict(e):
                    raise BadStore(f"{self.path}: cannot open the database: {e}") from e
                if time.monotonic() >= deadline:
                    raise StoreError(self._busy_message(e)) from e
                time.sleep(delay)
                delay = min(delay * 2, 0.25)

    def _busy_message(self, exc: BaseException) -> str:
        holder = LockHolder.read(self.lock_path)
        if holder is not None and (self._lock is None or holder.pid != os.getpid()):
            return (
                f"{self.path} is being written by collect PID {holder.pid} on {holder.host} "
                f"(since {holder.started_at}); retry shortly"
            )
        m = re.search(r"PID (\d+)", str(exc))
        who = f"process PID {m.group(1)}" if m else "another connection"
        return (
            f"{self.path} is open in {who} (waited {self.busy_timeout:g} s); "
            "retry shortly, or close the other program"
        )

    def _require_writer(self) -> None:
        if self.read_only or self._lock is None:
            raise StoreError(f"{self.path}: opened read-only (or closed); cannot write")

    # -- writing ---------------------------------------------------------------------------

    def begin_run(
        self,
        run_id: str,
        started_at: dt.datetime,
        accounts: int,
        targets: int,
        tool_version: str,
        fleet_defining: bool = True,
    ) -> list[str]:
        """Record the start of a run (status 'running', committed). `fleet_defining`: False
        for a run narrowed on the command line, which retires nothing (see FLEET_SQL).

        Any other run still 'running' was interrupted (we hold the writer lock, so nobody
        else runs): it becomes 'failed' (finished_at = its last scan's, else now) and its
        inventory rows are deleted; its scans and errors stay. Returns those runs' ids.
        """
        self._require_writer()
        now = dt.datetime.now(dt.UTC)
        with self.connection() as con:
            con.execute("BEGIN")
            try:
                if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
                    raise StoreError(f"{self.path}: run {run_id} already exists")
                stale = [
                    r[0]
                    for r in con.execute(
                        "SELECT run_id FROM runs WHERE status = 'running' ORDER BY run_id"
                    ).fetchall()
                ]
                for old in stale:
                    _abandon(con, old, now)
                shard, shards = self.shard if self.shard is not None else (None, None)
                key_id, env_values = self.env_mode if self.env_mode else (None, None)
                con.execute(
                    "INSERT INTO runs (run_id, started_at, status, accounts, targets, "
                    "tool_version, schema_version, shard, shards, fingerprint_key_id, "
                    "env_values, fleet_defining) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        run_id,
                        started_at,
                        accounts,
                        targets,
                        tool_version,
                        schema.SCHEMA_VERSION,
                        shard,
                        shards,
                        key_id,
                        env_values,
                        fleet_defining,
                    ],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        for old in stale:
            log.warning("run %s was interrupted; marked failed, its inventory rows removed", old)
        return stale

    def append(self, run_id: str, tables: Mapping[str, pa.Table]) -> dict[str, int]:
        """Insert Arrow tables (any of container_services, deployments, containers, scans,
        errors) into run `run_id`, all in one transaction. Columns are matched by name;
        a column left out is NULL; a missing `run_id` column is filled in. Returns the rows
        inserted per table."""
        self._require_writer()
        prepared = {name: _conform(name, t, run_id) for name, t in tables.items()}
        prepared = {name: t for name, t in prepared.items() if t.num_rows}
        if not prepared:
            return {}
        with self.connection() as con:
            _streaming(con)
            con.execute("BEGIN")
            try:
                self._check_running(con, run_id)
                for name, table in prepared.items():
                    view = f"_append_{name}"
                    con.register(view, table)
                    try:
                        con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM {view}")
                    finally:
                        con.unregister(view)
                testhook.pause_at("append-uncommitted")
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
        return {name: t.num_rows for name, t in prepared.items()}

    def _check_running(self, con: duckdb.DuckDBPyConnection, run_id: str) -> None:
        rows = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
        row = rows[0] if rows else None
        if row is None:
            raise StoreError(f"{self.path}: run {run_id} was never begun (call begin_run)")
        if row[0] != "running":
            raise StoreError(f"{self.path}: run {run_id} is {row[0]}, not running")

    def abandon_run(self, run_id: str) -> None:
        """Mark run `run_id` failed now, as `begin_run` does with an interrupted run: its
        inventory rows are deleted (a failed run has none), its scans and errors stay."""
        self._require_writer()
        with self.connection() as con:
            con.execute("BEGIN")
            try:
                _abandon(con, run_id, dt.datetime.now(dt.UTC))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def record_late_failure(self, run_id: str, errors: pa.Table) -> str:
        """After `finish_run`: add `errors` rows to finished run `run_id` (something failed
        after collecting, e.g. the Parquet export) and make a 'complete' run 'partial'; its
        inventory rows stay. Returns the run's status now."""
        self._require_writer()
        table = _conform("errors", errors, run_id)
        with self.connection() as con:
            con.execute("BEGIN")
            try:
                con.register("_late_errors", table)
                try:
                    con.execute("INSERT INTO errors BY NAME SELECT * FROM _late_errors")
                finally:
                    con.unregister("_late_errors")
                con.execute(
                    "UPDATE runs SET status = 'partial' WHERE run_id = ? AND status = 'complete'",
                    [run_id],
                )
                status = con.execute(
                    "SELECT status FROM runs WHERE run_id = ?", [run_id]
                ).fetchall()
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
        return str(status[0][0]) if status else "partial"

    def finish_run(
        self,
        run_id: str,
        status: str,
        finished_at: dt.datetime | None = None,
        *,
        accounts: int | None = None,
        targets: int | None = None,
        targets_ok: int | None = None,
        targets_failed: int | None = None,
        api_calls: int | None = None,
        retries: int | None = None,
        services: int | None = None,
        deployments: int | None = None,
        containers: int | None = None,
    ) -> dict[str, Any]:
        """Close run `run_id` with `status` ('complete' | 'partial' | 'failed'): from now on
        the views see it. A counter left None keeps begin_run's value (accounts, targets),
        is counted from the stored rows (targets_ok/failed from scans, services, deployments,
        containers) or stays NULL (api_calls, retries). Returns the final runs row."""
        self._require_writer()
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        given = {
            "accounts": accounts,
            "targets": targets,
            "targets_ok": targets_ok,
            "targets_failed": targets_failed,
            "api_calls": api_calls,
            "retries": retries,
            "services": services,
            "deployments": deployments,
            "containers": containers,
        }
        derived = {
            "accounts": "accounts",
            "targets": "targets",
            "targets_ok": "(SELECT count(*) FROM scans WHERE run_id = $id AND status = 'ok')",
            "targets_failed": "(SELECT count(*) FROM scans WHERE run_id = $id AND status <> 'ok')",
            "api_calls": "api_calls",
            "retries": "retries",
            "services": "(SELECT count(*) FROM container_services WHERE run_id = $id)",
            "deployments": "(SELECT count(*) FROM deployments WHERE run_id = $id)",
            "containers": "(SELECT count(*) FROM containers WHERE run_id = $id)",
        }
        params: dict[str, Any] = {
            "id": run_id,
            "status": status,
            "finished_at": finished_at or dt.datetime.now(dt.UTC),
            "version": schema.SCHEMA_VERSION,
        }
        sets = ["status = $status", "finished_at = $finished_at", "schema_version = $version"]
        for name in COUNTERS:
            if given[name] is None:
                sets.append(f"{name} = {derived[name]}")
            else:
                sets.append(f"{name} = ${name}")
                params[name] = given[name]
        with self.connection() as con:
            con.execute("BEGIN")
            try:
                self._check_running(con, run_id)
                con.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id = $id", params)
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
        run = self.run(run_id)
        assert run is not None
        return run

    # -- reading ---------------------------------------------------------------------------

    def query(self, sql: str, params: Any = None) -> pa.Table:
        """Run one SQL statement; `params` binds `?` (a sequence) or `$name` (a mapping)."""
        with self.connection() as con:
            try:
                return con.sql(sql, params=params).to_arrow_table()
            except duckdb.Error as e:
                if is_damage(e):
                    raise BadStore(damaged(self.path, e)) from e
                raise StoreError(f"query failed: {e}") from e

    def query_rows(self, sql: str, params: Any = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Like `query`, as (column names, rows of Python values)."""
        with self.connection() as con:
            try:
                cur = con.execute(sql, params)
                cols = [d[0] for d in cur.description or []]
                return cols, cur.fetchall()
            except duckdb.Error as e:
                if is_damage(e):
                    raise BadStore(damaged(self.path, e)) from e
                raise StoreError(f"query failed: {e}") from e

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, as dicts of the runs columns."""
        return self._runs_rows("ORDER BY started_at DESC, run_id DESC", [])

    def run(self, run_id: str) -> dict[str, Any] | None:
        """The runs row of `run_id`, or None."""
        rows = self._runs_rows("WHERE run_id = ?", [run_id])
        return rows[0] if rows else None

    def _runs_rows(self, tail: str, params: list[Any]) -> list[dict[str, Any]]:
        with self.connection() as con:
            cur = con.execute(f"SELECT {select_list(con, 'runs')} FROM runs {tail}", params)
            cols = [d[0] for d in cur.description or []]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def read_run(
        self, run_id: str, table: str, batch_size: int = READ_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        """Stream the rows of `table` for run `run_id` as Arrow batches with the schema.py
        schema exactly (columns in schema order; one a migration has not added yet is NULL).

        The DuckDB connection stays open until the reader is exhausted or closed: consume it
        promptly."""
        if table not in schema.TABLES:
            raise ValueError(f"unknown table {table!r}; one of {', '.join(schema.TABLES)}")
        target = schema.TABLES[table]

        def batches() -> Iterator[pa.RecordBatch]:
            with self.connection() as con:
                _streaming(con)
                cols = select_list(con, table)
                reader = con.sql(
                    f"SELECT {cols} FROM {table} WHERE run_id = $id", params={"id": run_id}
                ).to_arrow_reader(batch_size)
                for batch in reader:
                    yield batch.cast(target)

        return pa.RecordBatchReader.from_batches(target, batches())


# --------------------------------------------------------------------------- helpers


def _streaming(con: duckdb.DuckDBPyConnection) -> None:
    """STREAMING_SETTINGS on `con`'s database (its own: `connection` opens and closes one)."""
    for name, value in STREAMING_SETTINGS:
        con.execute(f"SET {name} = '{value}'")


def _abandon(con: duckdb.DuckDBPyConnection, run_id: str, now: dt.datetime) -> None:
    for table in (*schema.INVENTORY_TABLES, *schema.DEEP_TABLES, *schema.USAGE_TABLES):
        con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
    con.execute(
        "UPDATE runs SET status = 'failed', finished_at = coalesce("
        "(SELECT max(finished_at) FROM scans WHERE run_id = $id), $now) "
        "WHERE run_id = $id",
        {"id": run_id, "now": now},
    )


def select_list(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """The schema.py columns of `table` in schema order; NULL for one the database lacks
    (a reader of a database no writer of this version has migrated yet)."""
    present = _table_columns(con, table)
    return ", ".join(
        _quote(f.name)
        if f.name in present
        else f"CAST(NULL AS {schema.duckdb_type(f.type)}) AS {_quote(f.name)}"
        for f in schema.TABLES[table]
    )


def _table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE schema_name = 'main' AND table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()
    return {name: typ for name, typ in rows}


_DAMAGE_SIGNS = ("Corrupt database file", "checksum", "Could not read enough bytes")


def is_damage(exc: BaseException) -> bool:
    """Whether a DuckDB error says the file itself is damaged (truncated, bytes overwritten)."""
    if isinstance(exc, duckdb.SerializationException | duckdb.InternalException):
        return True
    text = str(exc)
    return any(sign in text for sign in _DAMAGE_SIGNS)


def damaged(db: Path, exc: BaseException) -> str:
    """The one-line message for a damaged store (how to restore or rebuild it)."""
    detail = " ".join(str(exc).split())
    return (
        f"{db}: the database is damaged ({detail}); it was left as it is. Restore it from a "
        "backup, or rebuild it from the Parquet lake: inventory rebuild --from-lake DIR --db NEW"
    )


def _verify(con: duckdb.DuckDBPyConnection, db: Path) -> None:
    """Read every value of every table once (DuckDB checks each block's checksum as it reads
    it): a truncated file, or one with bytes overwritten anywhere, raises `BadStore` here,
    before anything is written. Read-only."""
    tables = [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
    ]
    try:
        for table in tables:
            con.execute(f"SELECT count(*), max(hash(COLUMNS(*))) FROM {_quote(table)}").fetchall()
    except duckdb.Error as e:
        raise BadStore(damaged(db, e)) from e


def _check_header(db: Path) -> None:
    """Refuse, without opening it, a file that cannot be a DuckDB database."""
    if db.is_dir():
        raise BadStore(f"{db}: is a directory, not a DuckDB database")
    try:
        with db.open("rb") as f:
            head = f.read(12)
    except OSError as e:
        raise BadStore(f"{db}: cannot read it: {e}") from e
    if len(head) < 12 or head[8:12] != _DUCKDB_MAGIC:
        raise BadStore(f"{db}: not a DuckDB database (left untouched); pass --db with another path")


def _inspect(con: duckdb.DuckDBPyConnection, db: Path) -> int | None:
    """The schema version of our database; None for an empty one; StoreError when foreign."""
    tables = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
    }
    views = {
        r[0]
        for r in con.execute(
            "SELECT view_name FROM duckdb_views() "
            "WHERE database_name = current_database() AND NOT internal"
        ).fetchall()
    }
    if not tables and not views:
        return None
    meta: dict[str, str] = {}
    if "meta" in tables:
        with contextlib.suppress(duckdb.Error):
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("app") != APP:
        raise BadStore(
            f"{db}: a DuckDB database that is not a lightsail-inventory store "
            f"(tables: {', '.join(sorted(tables | views))}); left untouched, use another --db"
        )
    try:
        version = int(meta.get("schema_version", "0"))
    except ValueError:
        version = 0
    return version


def _setup(con: duckdb.DuckDBPyConnection, db: Path) -> None:
    """Create or migrate (additively) the tables, then (re)create the views, in one
    transaction."""
    con.execute("BEGIN")
    try:
        version = _inspect(con, db)
        if version is not None and version > schema.SCHEMA_VERSION:
            raise BadStore(
                f"{db}: written by a newer lightsail-inventory (schema version {version}, "
                f"this one knows {schema.SCHEMA_VERSION}); upgrade to write to it"
            )
        con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        for name, table_schema in schema.TABLES.items():
            present = _table_columns(con, name)
            if not present:
                con.execute(schema.create_table_sql(name, table_schema))
                continue
            for field in table_schema:
                if field.name not in present:
                    typ = schema.duckdb_type(field.type)
                    log.info("migrating %s: adding %s.%s %s", db, name, field.name, typ)
                    con.execute(f"ALTER TABLE {name} ADD COLUMN {_quote(field.name)} {typ}")
        if version is not None and version < schema.SCHEMA_VERSION:
            # runs written before this migration: the version that wrote them
            con.execute(
                "UPDATE runs SET schema_version = ? WHERE schema_version IS NULL", [version]
            )
        for sql in view_statements():
            con.execute(sql)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        con.execute(
            "INSERT INTO meta VALUES ('app', ?), ('created_at', ?) ON CONFLICT DO NOTHING",
            [APP, now],
        )
        con.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
            [str(schema.SCHEMA_VERSION)],
        )
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


def _conform(name: str, table: pa.Table, run_id: str) -> pa.Table:
    """`table` checked against and cast to schema.py's `name` schema (columns by name)."""
    if name not in APPENDABLE:
        raise ValueError(
            f"cannot append to {name!r}; one of {', '.join(APPENDABLE)} (runs: begin/finish_run)"
        )
    target = schema.TABLES[name]
    unknown = [c for c in table.column_names if target.get_field_index(c) < 0]
    if unknown:
        raise ValueError(f"{name}: columns not in schema.py: {', '.join(unknown)}")
    if "run_id" not in table.column_names:
        table = table.append_column("run_id", pa.array([run_id] * table.num_rows, pa.string()))
    else:
        ids = table.column("run_id").unique().to_pylist()
        if ids and ids != [run_id]:
            raise ValueError(f"{name}: rows of run(s) {ids} appended to run {run_id}")
    fields = [target.field(c) for c in table.column_names]
    wanted = pa.schema(fields)
    if table.schema != wanted:
        try:
            table = table.cast(wanted)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise ValueError(f"{name}: does not fit schema.py's types: {e}") from e
    return table
