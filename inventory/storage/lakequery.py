"""SQL over the Parquet lake, for a team without the DuckDB file.

`open_lake(dest)` gives an in-memory DuckDB connection in which each table is a
pyarrow dataset over `<dest>/<table>/run_date=YYYY-MM-DD/*.parquet` (a local folder or
`s3://bucket/prefix`, through the same S3 filesystem as the export, so AWS_ENDPOINT_URL_S3 is
honoured), with the extra column `run_date DATE` from the Hive partition; and the views
`latest_scans`, `latest_container_services`, `latest_deployments`, `latest_containers`,
defined as in the store (with the helpers `good_runs`, `good_scans`, `fleet_run`, `fleet`,
`run_powers`, `latest_service_powers` and `run_totals`: store.view_statements, the one
definition). So the
store's questions (and named queries) work on the lake.

Decisions:
- Columns are read by name against schema.py's schema: a file written before a column was
  added reads that column as NULL, a column a newer writer added is ignored, and an integer
  or timestamp of another width is cast. (DuckDB's `read_parquet(union_by_name=true)` does
  the same but opens the footer of every file of the lake on every query, and reading S3 there
  needs the httpfs extension, downloaded at run time, with its own credential settings.)
- Partition pruning: a filter on `run_date` is pushed into the dataset, which skips the
  files of other dates without opening them (`EXPLAIN` shows the filter on the scan).
- Listing happens once, when the lake is opened; files written afterwards are seen by the
  next `open_lake`.
- Each dataset is registered as `_lake_<table>` and the table itself is a view over it in
  the connection's own database (`memory.main.<table>`), as in a store's file: so what reads
  a store by its tables (the report's as-of views shadow them with temporary views, and
  `store.select_list` finds their columns) reads the lake by the same code.
"""

from __future__ import annotations

import os
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from inventory.errors import StoreError, Unavailable, UsageError
from inventory.storage import lake, schema
from inventory.storage.store import view_statements

PARTITION = pa.schema([pa.field("run_date", pa.date32())])


def table_schema(table: str) -> pa.Schema:
    """A lake table's schema: schema.py's columns, then `run_date`."""
    return schema.TABLES[table].append(PARTITION.field("run_date"))


def _root(dest: str | os.PathLike[str], flag: str = "--lake") -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, root path within it, dest as the user wrote it); `flag` names it in errors."""
    text = str(dest)
    if text.startswith("s3://"):
        text = text.rstrip("/")
        root = text[len("s3://") :]
        if not root:
            raise UsageError(f"{flag} {dest!r}: give a bucket, s3://bucket[/prefix]")
        return lake.s3_filesystem(), root, text
    if "://" in text:
        raise UsageError(f"{flag} {dest!r}: only local folders and s3:// URIs are supported")
    text = text.rstrip("/") or text  # "/" stays the root
    return pafs.LocalFileSystem(), os.path.abspath(text), text


def _dataset(fs: pafs.FileSystem, root: str, name: str) -> ds.Dataset | None:
    """The dataset of table `name` under the lake's `root`, or None when it has no folder.
    Raises OSError / ArrowInvalid when it cannot be listed."""
    path = f"{root}/{name}"
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    return ds.dataset(
        path,
        schema=table_schema(name),
        format="parquet",
        filesystem=fs,
        partitioning=ds.partitioning(PARTITION, flavor="hive"),
    )


def datasets(dest: str | os.PathLike[str]) -> dict[str, ds.Dataset | pa.Table]:
    """Each table of the lake at `dest` as a dataset (an empty table when it has no files)."""
    fs, root, shown = _root(dest)
    try:
        info = fs.get_file_info(root)
    except OSError as e:
        raise StoreError(f"{shown}: cannot read the lake: {e}") from e
    if info.type == pafs.FileType.NotFound and not shown.startswith("s3://"):
        raise UsageError(f"--lake {shown!r}: no such folder")
    if info.type == pafs.FileType.File:
        raise UsageError(f"--lake {shown!r}: a file, not a lake folder")
    out: dict[str, ds.Dataset | pa.Table] = {}
    found = False
    for name in schema.TABLES:
        try:
            data = _dataset(fs, root, name)
        except (OSError, pa.ArrowInvalid) as e:
            raise StoreError(f"{shown}/{name}: cannot list the lake: {e}") from e
        found = found or data is not None
        out[name] = table_schema(name).empty_table() if data is None else data
    if not found:
        raise UsageError(
            f"--lake {shown!r}: no Parquet lake there (expected "
            f"{shown}/<table>/run_date=YYYY-MM-DD/*.parquet, as `inventory collect` writes)"
        )
    return out


def open_lake(dest: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection over the lake at `dest` (see the module docstring).
    Close it when done."""
    tables = datasets(dest)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        for name, data in tables.items():
            con.register(f"_lake_{name}", data)
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "_lake_{name}"')
        for sql in view_statements():
            con.execute(sql)
    except BaseException:
        con.close()
        raise
    return con


def newest_key_id(dest: str | os.PathLike[str]) -> str | None:
    """The `fingerprint_key_id` of the newest fingerprinted run in the lake at `dest` (any
    shard), or None when it has none (no lake there yet, or only runs that stored values).
    Only the `runs` table is read. What collect's key check matches when its store is new
    (a scheduled container's throw-away --db): a lake that cannot be read is a UsageError
    naming --parquet-dir, before anything is written."""
    fs, root, shown = _root(dest, "--parquet-dir")
    try:
        data = _dataset(fs, root, "runs")
        if data is None:
            return None
        runs = data.to_table(
            columns=["run_id", "started_at", "fingerprint_key_id"],
            filter=ds.field("fingerprint_key_id").is_valid(),
        )
    except (OSError, pa.ArrowException) as e:
        text = " ".join(str(e).split())
        problem = f"--parquet-dir {shown}: cannot read the lake's runs to check the fingerprint key"
        if isinstance(e, OSError) and not _denied(text):
            # S3 or the disk did not answer (not a damaged file, not a refusal): a retry of
            # the night may work, so exit 1 rather than the usage error's 2
            raise Unavailable(f"{problem}: {text}") from e
        raise UsageError(f"{problem}: {text}") from e
    if not runs.num_rows:
        return None
    newest = runs.sort_by([("started_at", "descending"), ("run_id", "descending")])
    return str(newest.column("fingerprint_key_id")[0].as_py())


def _denied(text: str) -> bool:
    """Whether pyarrow's S3 error text is a refusal (a fix for the user, not a retry)."""
    return any(m in text for m in ("ACCESS_DENIED", "AccessDenied", "403", "Permission denied"))


def query_rows(
    dest: str | os.PathLike[str], sql: str, params: Any = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one SQL statement over the lake at `dest`: (column names, rows)."""
    con = open_lake(dest)
    try:
        cur = con.execute(sql, params)
        return [d[0] for d in cur.description or []], cur.fetchall()
    except (duckdb.Error, pa.ArrowException, OSError) as e:
        raise StoreError(f"query failed: {e}") from e
    finally:
        con.close()


# --------------------------------------------------------------------------- Athena / Trino


def athena_ddl(
    location: str = "s3://YOUR-BUCKET/lightsail-inventory", database: str = "lightsail_inventory"
) -> str:
    """`CREATE EXTERNAL TABLE` statements (Athena / Trino's Hive connector) for the
    tables, partitioned by `run_date` with partition projection, and the `latest_*` views."""
    location = location.rstrip("/")
    parts = [
        "-- Generated by inventory.storage.lakequery.athena_ddl() from inventory/storage/schema.py; do not edit.\n"
        f"-- Replace {location} with the lake's --parquet-dir (s3://bucket/prefix).\n"
        "-- Athena: run the statements one at a time. Partitions are found by partition\n"
        "-- projection (no MSCK REPAIR needed); widen projection.run_date.range for older runs.\n"
        "-- Trino: run the CREATE EXTERNAL TABLE statements in Hive (or Spark) against the\n"
        "-- metastore Trino's Hive connector reads, or use Trino's own form, e.g.\n"
        "--   CREATE TABLE hive.lightsail_inventory.runs (...columns..., run_date varchar)\n"
        "--   WITH (format = 'PARQUET', partitioned_by = ARRAY['run_date'],\n"
        f"--         external_location = '{location}/runs/');\n"
        "--   CALL hive.system.sync_partition_metadata('lightsail_inventory', 'runs', 'ADD');\n"
        "-- The views are the same SQL in both.",
        f"CREATE DATABASE IF NOT EXISTS {database};",
    ]
    for name, sch in schema.TABLES.items():
        cols = ",\n".join(f"  `{f.name}` {schema.hive_type(f.type)}" for f in sch)
        parts.append(
            f"CREATE EXTERNAL TABLE IF NOT EXISTS {database}.{name} (\n{cols}\n)\n"
            "PARTITIONED BY (`run_date` string)\n"
            "STORED AS PARQUET\n"
            f"LOCATION '{location}/{name}/'\n"
            "TBLPROPERTIES (\n"
            "  'projection.enabled' = 'true',\n"
            "  'projection.run_date.type' = 'date',\n"
            "  'projection.run_date.format' = 'yyyy-MM-dd',\n"
            "  'projection.run_date.range' = '2024-01-01,NOW',\n"
            "  'projection.run_date.interval' = '1',\n"
            "  'projection.run_date.interval.unit' = 'DAYS',\n"
            f"  'storage.location.template' = '{location}/{name}/run_date=${{run_date}}/'\n"
            ");"
        )
    parts.append(
        "-- The views, the same SQL as the store's (inventory.storage.store.view_statements): the\n"
        "-- good runs and their ok scans (good_runs, good_scans), the current fleet (fleet_run,\n"
        "-- fleet), each pair's newest good scan (latest_scans), the latest_* views over it, each\n"
        "-- latest service's power at its run's prices (run_powers, latest_service_powers), and\n"
        "-- run_totals (the shards of a sharded run as one run)."
    )
    parts.extend(sql + ";" for sql in view_statements(prefix=f"{database}."))
    return "\n\n".join(parts) + "\n"
