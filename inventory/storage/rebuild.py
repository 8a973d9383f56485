"""`inventory rebuild --from-lake DEST --db NEW`: a store made again from the Parquet lake.

Every file the lake holds of every table of schema.TABLES (every run, the shards of a
sharded run included) is copied into a new store; its views are the store's own, so a
rebuilt store answers every question the original did. For a store that was lost or
damaged: the lake holds each finished run, one file per table.

Invariants:
- NEW must not exist yet (nothing is overwritten). The store is built under a hidden
  temporary name beside NEW, in one transaction, and renamed to NEW only when complete:
  a failed rebuild leaves nothing at NEW.
- Columns are read by name (lakequery.datasets): a file written before a column was added
  gives NULL there, as a migrated store does.
- The fingerprint key is not in the lake (it never leaves the machine that collected): put
  `<NEW>.fingerprint-key` back from a copy, or set INVENTORY_FINGERPRINT_KEY, before the next
  collect into NEW (collect refuses to mint a different key for it; see fingerprint.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from inventory.errors import UsageError
from inventory.storage import lakequery, schema
from inventory.storage.store import LOCK_SUFFIX, Store


@dataclass
class Rebuilt:
    db: Path
    runs: int = 0
    rows: dict[str, int] = field(default_factory=dict)


def rebuild(lake_dest: str, db: str | os.PathLike[str]) -> Rebuilt:
    """Make the store `db` (a path that does not exist yet) from the lake at `lake_dest`."""
    target = Path(db).absolute()
    if target.exists() or target.is_symlink():
        raise UsageError(
            f"--db {db}: already exists; rebuild writes a new store, give a path that "
            "does not exist yet"
        )
    try:
        tables = lakequery.datasets(lake_dest)
    except UsageError as e:  # no lake there: named by this command's flag
        raise UsageError(str(e).replace("--lake", "--from-lake", 1)) from e
    tmp = target.with_name(f".{target.name}.rebuild-{os.getpid()}-{secrets.token_hex(3)}")
    result = Rebuilt(target)
    try:
        with Store.open(tmp) as store, store.connection() as con:
            con.execute("BEGIN")
            for name, data in tables.items():
                cols = ", ".join(f'"{f.name}"' for f in schema.TABLES[name])
                view = f"_lake_{name}"
                con.register(view, data)
                try:
                    con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {view}").fetchall()
                finally:
                    con.unregister(view)
                result.rows[name] = con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
            result.runs = con.execute("SELECT count(DISTINCT run_id) FROM runs").fetchall()[0][0]
            if not result.runs:
                raise UsageError(f"--from-lake {lake_dest}: the lake holds no runs to rebuild")
            con.execute("COMMIT")
        os.replace(tmp, target)
    finally:
        for leftover in (
            tmp,
            tmp.with_name(tmp.name + ".wal"),
            tmp.with_name(tmp.name + LOCK_SUFFIX),
        ):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return result
