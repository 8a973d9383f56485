"""Small helpers shared by the test modules (import them: `from helpers import rows`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inventory.storage.store import Store


def rows(db: Path, sql: str) -> list[dict[str, Any]]:
    """The rows of `sql` on the store at `db`, as dicts, read through a read-only Store."""
    store = Store.open(db, read_only=True)
    try:
        cols, data = store.query_rows(sql)
    finally:
        store.close()
    return [dict(zip(cols, r, strict=True)) for r in data]
