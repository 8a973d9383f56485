"""What changed since the previous run, for the notification: the counts of `diff`
(inventory/answers/diff.py) between this run's scan of each account × region and the good
scan before it. Read from the store; when the store holds nothing to compare with (a
throw-away --db in a container, say) and the run wrote a lake, from the lake, for the
accounts this process scanned only (in a sharded run, the lake holds every shard's scans:
each shard's message counts its own). Counts only: a change's values never go into a
message.
"""

from __future__ import annotations

import logging
from typing import Any

from inventory import logs
from inventory.answers import diff
from inventory.storage import lakequery
from inventory.storage.store import Store

log = logging.getLogger("inventory.publish")


def _summarise(result: diff.Diff, source: str) -> dict[str, Any]:
    return {
        "source": source,
        "compared": len(result.pairs),
        "not_compared": len(result.uncompared),
        "changes": len(result.changes),
        "counts": result.counts(),
    }


# The accounts this process scanned in run `run_id`: a store holds one shard of a run at
# most (pipeline.preflight), so they are the shard's.
_SCANNED = "SELECT DISTINCT account_id FROM scans WHERE run_id = ?"


def _from_store(db_path: str, run_id: str) -> tuple[diff.Diff, frozenset[str]]:
    """The diff from the store, and the accounts of its scans of the run."""
    with Store.open(db_path, read_only=True) as store, store.connection() as con:
        scanned = frozenset(r[0] for r in con.execute(_SCANNED, [run_id]).fetchall())
        return diff.diff(con, to_run=run_id), scanned


def _from_lake(dest: str, run_id: str, accounts: frozenset[str]) -> diff.Diff:
    """The diff from the lake, of `accounts` only: the lake holds every shard of the run,
    and a shard counts its own changes (the other shards send theirs)."""
    con = lakequery.open_lake(dest)
    try:
        return diff.diff(con, to_run=run_id, accounts=accounts)
    finally:
        con.close()


def since_previous(summary: Any) -> dict[str, Any] | None:
    """The change counts of run `summary` against each pair's previous good scan; None when
    the run stored no snapshot (nothing to compare) or they could not be read (logged)."""
    if summary.status not in ("complete", "partial"):
        return None
    try:
        result, scanned = _from_store(summary.db_path, summary.run_id)
        if result.pairs or not summary.parquet_dest:
            return _summarise(result, "store")
        return _summarise(_from_lake(summary.parquet_dest, summary.run_id, scanned), "lake")
    except Exception as exc:  # never stops the notification
        logs.event(
            log,
            logging.WARNING,
            "changes_failed",
            f"run {summary.run_id}: the changes since the previous run could not be read "
            f"({type(exc).__name__}); the notification goes without them",
            run_id=summary.run_id,
            reason=type(exc).__name__,
        )
        return None
