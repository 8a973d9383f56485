"""Experiment: the memory settings of a collect: DuckDB's, the export's batches, Arrow's pool.

`store.STREAMING_SETTINGS` (what each append's and each exported table's connection sets)
is replaced: $EXP_DUCKDB_THREADS and $EXP_DUCKDB_MEMORY give `threads` and `memory_limit`
(`default`: left at DuckDB's default; unset: the store's own value), and the export reads
batches of $EXP_READ_BATCH rows (unset: the store's READ_BATCH_ROWS). $EXP_ARROW_POOL=default
leaves Arrow on pyarrow's default allocator (builder.tune_memory_for_collect undone). What
the collect did before these settings:

    --variants "base;before:patch=duckdb_memory+env.EXP_DUCKDB_THREADS=default\\
+env.EXP_DUCKDB_MEMORY=default+env.EXP_READ_BATCH=65536+env.EXP_ARROW_POOL=default"
"""

import os
from typing import Any

from inventory.run import builder
from inventory.storage import store

_settings = dict(store.STREAMING_SETTINGS)
for _name, _env in (("threads", "EXP_DUCKDB_THREADS"), ("memory_limit", "EXP_DUCKDB_MEMORY")):
    _value = os.environ.get(_env)
    if _value == "default":
        _settings.pop(_name, None)
    elif _value:
        _settings[_name] = _value
store.STREAMING_SETTINGS = tuple(_settings.items())

_batch = int(os.environ.get("EXP_READ_BATCH") or 0)
if _batch:
    _read_run = store.Store.read_run

    def read_run(self: store.Store, run_id: str, table: str, batch_size: int = _batch) -> Any:
        return _read_run(self, run_id, table, _batch)

    store.Store.read_run = read_run  # type: ignore[method-assign]

if os.environ.get("EXP_ARROW_POOL") == "default":
    builder.tune_memory_for_collect = lambda: None  # type: ignore[assignment]
