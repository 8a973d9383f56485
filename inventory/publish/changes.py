"""What changed since the previous run, for the notification: the counts of `diff`
(inventory/answers/diff.py) between this run's scan of each account × region and the good
scan before it. Read from the store; when the store holds nothing to compare with (a
throw-away --db in a container, say) and the run wrote a lake, from the lake. Counts only:
a change's values never go into a message.
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


def _from_store(db_path: str, run_id: str) -> diff.Diff:
    with Store.open(db_path, read_only=True) as store, store.connection() as con:
        return diff.diff(con, to_run=run_id)


def _from_lake(dest: str, run_id: str) -> diff.Diff:
    con = lakequery.open_lake(dest)
    try:
        return diff.diff(con, to_run=run_id)
    finally:
        con.close()


def since_previous(summary: Any) -> dict[str, Any] | None:
    """The change counts of run `summary` against each pair's previous good scan; None when
    the run stored no snapshot (nothing to compare) or they could not be read (logged)."""
    if summary.status not in ("complete", "partial"):
        return None
    try:
        result = _from_store(summary.db_path, summary.run_id)
        if result.pairs or not summary.parquet_dest:
            return _summarise(result, "store")
        return _summarise(_from_lake(summary.parquet_dest, summary.run_id), "lake")
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
