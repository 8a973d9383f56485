"""The tables, declared once as Arrow schemas. DuckDB DDL and Parquet files derive from them.

Bump SCHEMA_VERSION whenever a column is added; store.py migrates older databases on open
and lake readers read columns by name.
"""

from __future__ import annotations

import pyarrow as pa

# 2: runs.shard/shards; deployment_history*, container_images (--deep)
# 3: `extra` (JSON text: the answer's members the installed botocore model does not know) on
#    container_services, deployments and containers; container_services.location_region_name;
#    container_images.service_arn
#    runs.fingerprint_key_id, runs.env_values (whether env values of two runs compare)
#    runs.fleet_defining (NULL in older runs: they count as fleet-defining)
# 4: container_powers, service_utilization (collect --usage)
SCHEMA_VERSION = 4

TS = pa.timestamp("us", tz="UTC")
STR = pa.string()
I32 = pa.int32()
I64 = pa.int64()
BOOL = pa.bool_()
F64 = pa.float64()
STR_MAP = pa.map_(pa.string(), pa.string())
STR_LIST = pa.list_(pa.string())
STR_LIST_MAP = pa.map_(pa.string(), pa.list_(pa.string()))


def _schema(*cols: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, typ) for name, typ in cols])


CONTAINER_SERVICES = _schema(
    ("run_id", STR),
    ("collected_at", TS),
    ("account_id", STR),
    ("account_name", STR),
    ("region", STR),
    ("service_name", STR),
    ("arn", STR),
    ("created_at", TS),
    ("availability_zone", STR),
    ("resource_type", STR),
    ("power", STR),
    ("power_id", STR),
    ("state", STR),
    ("state_detail_code", STR),
    ("state_detail_message", STR),
    ("scale", I32),
    ("is_disabled", BOOL),
    ("principal_arn", STR),
    ("private_domain_name", STR),
    ("url", STR),
    ("tags", STR_MAP),
    ("public_domain_names", STR_LIST_MAP),
    ("ecr_image_puller_role_active", BOOL),
    ("ecr_image_puller_role_principal_arn", STR),
    ("location_region_name", STR),  # version 3: location.regionName
    ("extra", STR),  # version 3: members the model does not know, JSON (flatten.py)
)

DEPLOYMENTS = _schema(
    ("run_id", STR),
    ("collected_at", TS),
    ("account_id", STR),
    ("region", STR),
    ("service_name", STR),
    ("service_arn", STR),
    ("slot", STR),
    ("version", I32),
    ("state", STR),
    ("created_at", TS),
    ("public_endpoint_container_name", STR),
    ("public_endpoint_container_port", I32),
    ("health_check_healthy_threshold", I32),
    ("health_check_unhealthy_threshold", I32),
    ("health_check_timeout_seconds", I32),
    ("health_check_interval_seconds", I32),
    ("health_check_path", STR),
    ("health_check_success_codes", STR),
    ("extra", STR),
)

CONTAINERS = _schema(
    ("run_id", STR),
    ("collected_at", TS),
    ("account_id", STR),
    ("region", STR),
    ("service_name", STR),
    ("service_arn", STR),
    ("slot", STR),
    ("deployment_version", I32),
    ("container_name", STR),
    ("image", STR),
    ("image_source", STR),
    ("command", STR_LIST),
    ("environment", STR_MAP),
    ("ports", STR_MAP),
    ("extra", STR),
)

SCANS = _schema(
    ("run_id", STR),
    ("account_id", STR),
    ("region", STR),
    ("status", STR),
    ("started_at", TS),
    ("finished_at", TS),
    ("attempts", I32),
    ("services", I32),
    ("error_code", STR),
)

ERRORS = _schema(
    ("run_id", STR),
    ("occurred_at", TS),
    ("account_id", STR),
    ("region", STR),
    ("operation", STR),
    ("error_code", STR),
    ("message", STR),
    ("attempts", I32),
)

RUNS = _schema(
    ("run_id", STR),
    ("started_at", TS),
    ("finished_at", TS),
    ("status", STR),
    ("accounts", I32),
    ("targets", I32),
    ("targets_ok", I32),
    ("targets_failed", I32),
    ("api_calls", I64),
    ("retries", I64),
    ("services", I64),
    ("deployments", I64),
    ("containers", I64),
    ("tool_version", STR),
    ("schema_version", I32),
    ("shard", I32),  # this row's shard K of a sharded run (collect --shard K/N); NULL: unsharded
    ("shards", I32),  # N; a sharded run has one runs row per shard, all with the same run_id
    # The fingerprint key's id (fingerprint.key_id: not secret; NULL when values are stored
    # as they are) and whether env values were stored (--include-env-values). Environment
    # values of two runs compare only when both agree. NULL: a run from before version 3.
    ("fingerprint_key_id", STR),
    ("env_values", BOOL),
    # False: narrowed on the command line (--regions LIST, --no-org), a one-off run that
    # updates what it scanned and retires nothing; True (or NULL): its plan is the fleet
    ("fleet_defining", BOOL),
)


def _without(sch: pa.Schema, *names: str) -> pa.Schema:
    for name in names:
        sch = sch.remove(sch.get_field_index(name))
    return sch


# `collect --deep`: GetContainerServiceDeployments (every deployment AWS still keeps of a
# service: next, current and a few past ones) and GetContainerImages. Deployments and their
# containers have the columns of `deployments` / `containers` without `slot` and `extra` (the
# deep calls go through botocore's parser, which keeps only the members its model knows).
DEPLOYMENT_HISTORY = _without(DEPLOYMENTS, "slot", "extra")
DEPLOYMENT_HISTORY_CONTAINERS = _without(CONTAINERS, "slot", "extra")
CONTAINER_IMAGES = _schema(
    ("run_id", STR),
    ("collected_at", TS),
    ("account_id", STR),
    ("region", STR),
    ("service_name", STR),
    ("image", STR),
    ("digest", STR),
    ("created_at", TS),
    ("service_arn", STR),  # version 3
)

# `collect --usage` (docs/cost.md). GetContainerServicePowers, once per region and run (or
# shard): the powers' prices (USD per node and month), vCPUs and RAM, with the account whose
# credentials asked (prices do not depend on it).
CONTAINER_POWERS = _schema(
    ("run_id", STR),
    ("region", STR),
    ("power_id", STR),
    ("name", STR),
    ("price_per_month", F64),
    ("cpu_count", F64),
    ("ram_size_gb", F64),
    ("is_active", BOOL),
    ("collected_at", TS),
    ("account_id", STR),
)
# GetContainerServiceMetricData per service and metric (CPUUtilization, MemoryUtilization):
# one row per hourly datapoint ('ok'), or one row per service and metric saying why there is
# none: 'no_datapoints', 'disabled' (not asked: a disabled service runs nothing) or 'failed'
# (the call failed: its errors row says why). The window asked is on every row.
SERVICE_UTILIZATION = _schema(
    ("run_id", STR),
    ("account_id", STR),
    ("region", STR),
    ("service_name", STR),
    ("service_arn", STR),
    ("metric", STR),
    ("period_start", TS),
    ("average", F64),
    ("maximum", F64),
    ("unit", STR),
    ("status", STR),
    ("window_start", TS),
    ("window_end", TS),
    ("period_seconds", I32),
    ("collected_at", TS),
)

# The inventory tables (one row per thing found) and the bookkeeping tables, by name.
INVENTORY_TABLES: dict[str, pa.Schema] = {
    "container_services": CONTAINER_SERVICES,
    "deployments": DEPLOYMENTS,
    "containers": CONTAINERS,
}
# Filled only by `collect --deep` (empty tables otherwise).
DEEP_TABLES: dict[str, pa.Schema] = {
    "deployment_history": DEPLOYMENT_HISTORY,
    "deployment_history_containers": DEPLOYMENT_HISTORY_CONTAINERS,
    "container_images": CONTAINER_IMAGES,
}
# Filled only by `collect --usage` (empty tables otherwise).
USAGE_TABLES: dict[str, pa.Schema] = {
    "container_powers": CONTAINER_POWERS,
    "service_utilization": SERVICE_UTILIZATION,
}
TABLES: dict[str, pa.Schema] = {
    **INVENTORY_TABLES,
    **DEEP_TABLES,
    **USAGE_TABLES,
    "scans": SCANS,
    "errors": ERRORS,
    "runs": RUNS,
}


def duckdb_type(t: pa.DataType) -> str:
    """The DuckDB type for an Arrow type used in our schemas."""
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP WITH TIME ZONE" if t.tz else "TIMESTAMP"
    if pa.types.is_map(t):
        return f"MAP({duckdb_type(t.key_type)}, {duckdb_type(t.item_type)})"
    if pa.types.is_list(t):
        return f"{duckdb_type(t.value_type)}[]"
    raise TypeError(f"no DuckDB type for Arrow type {t}")


def hive_type(t: pa.DataType) -> str:
    """The Hive (Athena / Trino) type for an Arrow type used in our schemas."""
    if pa.types.is_string(t):
        return "string"
    if pa.types.is_int32(t):
        return "int"
    if pa.types.is_int64(t):
        return "bigint"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_float64(t):
        return "double"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_map(t):
        return f"map<{hive_type(t.key_type)},{hive_type(t.item_type)}>"
    if pa.types.is_list(t):
        return f"array<{hive_type(t.value_type)}>"
    raise TypeError(f"no Hive type for Arrow type {t}")


def create_table_sql(name: str, schema: pa.Schema | None = None) -> str:
    schema = schema or TABLES[name]
    cols = ",\n  ".join(f"{f.name} {duckdb_type(f.type)}" for f in schema)
    return f"CREATE TABLE IF NOT EXISTS {name} (\n  {cols}\n)"


def empty_table(name: str) -> pa.Table:
    return TABLES[name].empty_table()
