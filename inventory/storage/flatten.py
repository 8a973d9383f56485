"""Lightsail `GetContainerServices` answers -> Arrow tables `container_services`, `deployments`,
`containers` (docs/contract.md). Pure: no I/O, no globals but the cached botocore enum lists.

Streaming use (the collector): one `Flattener` per writer; `add()` each account × region answer
as it arrives (cheap: appends to Python lists, one per column), `take()` a batch of Arrow tables
whenever `rows` says it is worth writing (builds one Arrow array per column, then resets).

Input: the `containerServices` list, dicts with the API's camelCase keys, as botocore parses them
(timestamps: `datetime`) or as `json.loads` gives them (timestamps: epoch seconds). Naive
datetimes are UTC; ISO 8601 strings are accepted too.

Values mirror the API: a field it left out (or sent as null) is NULL; one it sent empty stays
empty. An answer of unexpected shape never raises: the bad part becomes NULL (an unknown enum
string is kept as it is), the rest is stored, and `add()` returns one `Anomaly` per problem.
Anomaly messages name the service, the field path and the type or enum value, never an
environment value (for environment problems only the variable's name). The exception is a
service's identity: one without a usable `containerServiceName` and `arn` (non-empty strings)
is not stored at all, and its anomaly names its position in the answer.

Members the installed botocore model does not know (`known_members()`: AWS added them after
this botocore was released) are kept, not dropped: as JSON text in the `extra` column of the
row of their level (service, deployment, container; the members of a service's `location`,
`stateDetail` and `privateRegistryAccess`, and of a deployment's `publicEndpoint` and its
`healthCheck`, under their nested keys in that row's `extra`). Every value under a key named
`environment` in them is fingerprinted like an environment value. Each member path is reported
once per Flattener (one run) as an `UnknownMember` anomaly, in the account × region where it was
first seen. Cost when there are none: one frozenset test per object.

Environment values are replaced by `fingerprint(value)` unless `fingerprint` is None (that is
`--include-env-values`): the value never reaches an Arrow buffer. So are the values of
secret-looking `command` arguments (`fingerprint.redact_command`: `--password=…`, `TOKEN=…`, …).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

import pyarrow as pa

from inventory.model import ErrorRecord, TargetResult
from inventory.storage.fingerprint import redact_command
from inventory.storage.schema import INVENTORY_TABLES

__all__ = [
    "FLATTEN_ERROR",
    "UNEXPECTED_SHAPE",
    "UNKNOWN_ENUM_VALUE",
    "UNKNOWN_MEMBER",
    "Anomaly",
    "Flattener",
    "TargetContext",
    "flatten",
    "known_enums",
    "known_members",
]

UNEXPECTED_SHAPE = "UnexpectedShape"
UNKNOWN_ENUM_VALUE = "UnknownEnumValue"
UNKNOWN_MEMBER = "UnknownMember"  # a member the installed botocore model does not know: kept
MAX_UNKNOWN_PATHS = 1_000  # distinct unknown member paths reported one by one per Flattener
FLATTEN_ERROR = "FlattenError"  # a service that could not be flattened at all (a bug): skipped
OPERATION = "GetContainerServices"

# botocore shape names of the enums we check.
POWER = "ContainerServicePowerName"
STATE = "ContainerServiceState"
STATE_DETAIL_CODE = "ContainerServiceStateDetailCode"
DEPLOYMENT_STATE = "ContainerServiceDeploymentState"
PROTOCOL = "ContainerServiceProtocol"
_ENUM_SHAPES = (POWER, STATE, STATE_DETAIL_CODE, DEPLOYMENT_STATE, PROTOCOL)


@dataclass(frozen=True, slots=True)
class TargetContext:
    """Where one answer came from; fills the context columns of every row it yields."""

    run_id: str
    collected_at: dt.datetime  # when the answer arrived; naive = UTC
    account_id: str
    account_name: str | None
    region: str

    @classmethod
    def of(cls, run_id: str, result: TargetResult) -> TargetContext:
        return cls(
            run_id, result.collected_at, result.account.id, result.account.name, result.region
        )


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A problem in an answer that was stored as well as it could be. Never holds a secret."""

    error_code: str  # UNEXPECTED_SHAPE | UNKNOWN_ENUM_VALUE | UNKNOWN_MEMBER | FLATTEN_ERROR
    message: str

    def to_error(self, ctx: TargetContext, attempts: int = 1) -> ErrorRecord:
        """The `errors` row for this anomaly (operation GetContainerServices)."""
        return ErrorRecord(
            occurred_at=ctx.collected_at,
            account_id=ctx.account_id,
            region=ctx.region,
            operation=OPERATION,
            error_code=self.error_code,
            message=self.message,
            attempts=attempts,
        )


@cache
def known_enums() -> Mapping[str, frozenset[str]]:
    """The enum values the installed botocore Lightsail model knows, by shape name (loaded once)."""
    import botocore.loaders

    shapes = botocore.loaders.create_loader().load_service_model("lightsail", "service-2")["shapes"]
    return MappingProxyType(
        {name: frozenset(shapes.get(name, {}).get("enum", ())) for name in _ENUM_SHAPES}
    )


@cache
def known_members() -> Mapping[str, frozenset[str]]:
    """The member names the installed botocore Lightsail model knows at each level of a
    GetContainerServices answer (loaded once): 'service', 'location', 'stateDetail',
    'privateRegistryAccess', 'ecrImagePullerRole', 'deployment', 'publicEndpoint',
    'healthCheck', 'container'. Followed from the operation's output shape, member by member."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("lightsail")
    out: Any = model.operation_model(OPERATION).output_shape
    svc = out.members["containerServices"].member
    dep = svc.members["currentDeployment"]
    endpoint = dep.members["publicEndpoint"]
    registry = svc.members["privateRegistryAccess"]
    shapes = {
        "service": svc,
        "location": svc.members["location"],
        "stateDetail": svc.members["stateDetail"],
        "privateRegistryAccess": registry,
        "ecrImagePullerRole": registry.members["ecrImagePullerRole"],
        "deployment": dep,
        "publicEndpoint": endpoint,
        "healthCheck": endpoint.members["healthCheck"],
        "container": dep.members["containers"].value,
    }
    return MappingProxyType({level: frozenset(s.members) for level, s in shapes.items()})


def _scrub(v: Any, fingerprint: Callable[[str], str] | None, secret: bool) -> Any:
    """An unknown member's value, ready for JSON: every scalar under a key named `environment`
    fingerprinted (unless `fingerprint` is None), non-finite numbers as null."""
    if isinstance(v, dict):
        return {str(k): _scrub(x, fingerprint, secret or k == "environment") for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_scrub(x, fingerprint, secret) for x in v]
    if v is None:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if not isinstance(v, str | int | float):  # bool is an int
        v = str(v)
    if secret and fingerprint is not None:
        return fingerprint(v if isinstance(v, str) else json.dumps(v))
    return v


# --- value checks -----------------------------------------------------------------------------

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_MIN_S = -62135596800  # 0001-01-01T00:00:00Z
_MAX_S = 253402300799  # 9999-12-31T23:59:59Z
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1


def _utf8_ok(s: str) -> bool:
    """False for strings Arrow cannot store (lone surrogates, which json.loads lets through)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe(v: object) -> str:
    """What a bad value is, without what it says."""
    if isinstance(v, str) and not _utf8_ok(v):
        return "a string that is not valid Unicode"
    if v is None:
        return "null"
    return type(v).__name__


def short_repr(v: object, limit: int = 80) -> str:
    """A short repr for names and enum values in messages (at most `limit` characters of a
    string; the type's name for anything but a string, number or boolean)."""
    if isinstance(v, str) and len(v) > limit:
        return repr(v[:limit]) + "…"
    s = repr(v) if isinstance(v, str | int | float | bool) else type(v).__name__
    return s if len(s) <= limit + 2 else s[:limit] + "…"


def epoch_micros(v: dt.datetime) -> int:
    """Microseconds since the epoch of `v` (a naive datetime is taken as UTC)."""
    if v.utcoffset() is None:
        v = v.replace(tzinfo=dt.UTC)
    return (v - _EPOCH) // _MICROSECOND


class _Path:
    """A container's path, rendered only when a message needs it: `currentDeployment.containers['web']`."""

    __slots__ = ("key", "name")

    def __init__(self, key: str, name: str) -> None:
        self.key, self.name = key, name

    def __str__(self) -> str:
        return f"{self.key}.containers[{short_repr(self.name)}]"


_Prefix = str | _Path


def _join(prefix: _Prefix, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class Check:
    """Reads fields of one service, checking types; records an Anomaly per problem.

    Fast paths first (ASCII str, exact int/bool): the slow checks and every message string are
    only built when something is wrong.
    """

    __slots__ = ("anomalies", "enums", "index", "scope", "svc")

    def __init__(self, anomalies: list[Anomaly], enums: Mapping[str, frozenset[str]]) -> None:
        self.anomalies = anomalies
        self.enums = enums
        self.scope = ""  # set when the problem is not inside one service
        self.index = 0  # the service's position in the answer
        self.svc: dict[str, Any] = {}  # the service, for its name and arn in messages

    @property
    def where(self) -> str:
        if self.scope:
            return self.scope
        name, arn = self.svc.get("containerServiceName"), self.svc.get("arn")
        if isinstance(name, str) and _utf8_ok(name):
            return f"service {short_repr(name)}"
        return f"service #{self.index}" + (f" ({short_repr(arn)})" if isinstance(arn, str) else "")

    def bad(self, path: _Prefix, expected: str, v: object) -> None:
        self.anomalies.append(
            Anomaly(
                UNEXPECTED_SHAPE, f"{self.where}: {path}: expected {expected}, got {_describe(v)}"
            )
        )

    def note(self, code: str, path: _Prefix, text: str) -> None:
        where = f"{self.where}: {path}" if path else self.where
        self.anomalies.append(Anomaly(code, f"{where}: {text}"))

    def str_(self, d: Mapping[str, Any], key: str, prefix: _Prefix = "") -> str | None:
        v = d.get(key)
        if v is None or (v.__class__ is str and v.isascii()):
            return v
        if isinstance(v, str) and _utf8_ok(v):
            return v
        self.bad(_join(prefix, key), "string", v)
        return None

    def item_str(self, v: object, path: _Prefix, index: object) -> str | None:
        """An element of a list (index: int) or a map's value (index: its key)."""
        if v is None or (isinstance(v, str) and _utf8_ok(v)):
            return v
        self.bad(f"{path}[{short_repr(index)}]", "string", v)
        return None

    def int32(self, d: Mapping[str, Any], key: str, prefix: _Prefix = "") -> int | None:
        v = d.get(key)
        if v is None:
            return None
        if v.__class__ is int:
            if _I32_MIN <= v <= _I32_MAX:
                return v
            self.note(UNEXPECTED_SHAPE, _join(prefix, key), "integer out of 32-bit range")
            return None
        self.bad(_join(prefix, key), "integer", v)
        return None

    def bool_(self, d: Mapping[str, Any], key: str, prefix: _Prefix = "") -> bool | None:
        v = d.get(key)
        if v is None or v.__class__ is bool:
            return v
        self.bad(_join(prefix, key), "boolean", v)
        return None

    def ts(self, d: Mapping[str, Any], key: str, prefix: _Prefix = "") -> int | None:
        """A timestamp as microseconds since the epoch (UTC)."""
        v = d.get(key)
        if v is None:
            return None
        t = v.__class__
        if t is int or t is float:
            # an int is compared as it is: math.isfinite overflows on one too big for a float
            if not ((t is int or math.isfinite(v)) and _MIN_S <= v <= _MAX_S):
                self.note(UNEXPECTED_SHAPE, _join(prefix, key), "timestamp out of range")
                return None
            return v * 1_000_000 if t is int else round(v * 1_000_000)
        if isinstance(v, dt.datetime):
            return epoch_micros(v)
        if isinstance(v, str):
            try:
                return epoch_micros(dt.datetime.fromisoformat(v))
            except ValueError:
                pass
        self.bad(_join(prefix, key), "timestamp", v)
        return None

    def enum(self, d: Mapping[str, Any], key: str, shape: str, prefix: _Prefix = "") -> str | None:
        v = self.str_(d, key, prefix)
        if v is not None and v not in self.enums[shape]:
            self.unknown(v, shape, _join(prefix, key))
        return v

    def unknown(self, v: str, shape: str, path: _Prefix) -> None:
        known = self.enums[shape]
        if known:  # an empty list: the model does not say; nothing to check against
            self.note(
                UNKNOWN_ENUM_VALUE,
                path,
                f"unknown {shape} value {short_repr(v)} (known: {', '.join(sorted(known))})",
            )

    def obj(self, d: Mapping[str, Any], key: str, prefix: _Prefix = "") -> Mapping[str, Any]:
        """A nested structure; {} when absent or of the wrong type (its fields become NULL)."""
        v = d.get(key)
        if v is None:
            return _EMPTY
        if isinstance(v, dict):
            return v
        self.bad(_join(prefix, key), "object", v)
        return _EMPTY


def _is_key(k: object) -> bool:
    """A usable map key: a string Arrow can store."""
    return isinstance(k, str) and (k.isascii() or _utf8_ok(k))


def _is_identity(v: object) -> bool:
    """A usable containerServiceName or arn: a non-empty string Arrow can store."""
    return isinstance(v, str) and v != "" and (v.isascii() or _utf8_ok(v))


# --- column buffers ---------------------------------------------------------------------------


class _ListCol:
    """A LIST column built from offsets: append values, then `end()` (or `null()`) per row."""

    __slots__ = ("nulls", "offsets", "values")

    def __init__(self) -> None:
        self.offsets: list[int] = [0]
        self.values: list[Any] = []
        self.nulls: list[bool] = []

    def __len__(self) -> int:
        return len(self.nulls)

    def end(self) -> None:
        self.offsets.append(len(self.values))
        self.nulls.append(False)

    def null(self) -> None:
        self.offsets.append(len(self.values))
        self.nulls.append(True)

    def truncate(self, rows: int) -> None:
        del self.values[self.offsets[rows] :]
        del self.offsets[rows + 1 :]
        del self.nulls[rows:]

    def build(self, typ: pa.ListType) -> pa.Array:
        return pa.ListArray.from_arrays(
            pa.array(self.offsets, pa.int32()),
            pa.array(self.values, type=typ.value_type),
            type=typ,
            mask=pa.array(self.nulls, pa.bool_()) if True in self.nulls else None,
        )


class _MapCol:
    """A MAP column built from offsets: append keys and items, then `end()` (or `null()`)."""

    __slots__ = ("items", "keys", "nulls", "offsets")

    def __init__(self, items: list[Any] | _ListCol) -> None:
        self.offsets: list[int] = [0]
        self.keys: list[str] = []
        self.items = items
        self.nulls: list[bool] = []

    def __len__(self) -> int:
        return len(self.nulls)

    def end(self) -> None:
        self.offsets.append(len(self.keys))
        self.nulls.append(False)

    def null(self) -> None:
        self.offsets.append(len(self.keys))
        self.nulls.append(True)

    def truncate(self, rows: int) -> None:
        entries = self.offsets[rows]
        del self.keys[entries:]
        if isinstance(self.items, _ListCol):
            self.items.truncate(entries)
        else:
            del self.items[entries:]
        del self.offsets[rows + 1 :]
        del self.nulls[rows:]

    def build(self, typ: pa.MapType) -> pa.Array:
        items = (
            self.items.build(typ.item_type)
            if isinstance(self.items, _ListCol)
            else pa.array(self.items, type=typ.item_type)
        )
        return pa.MapArray.from_arrays(
            pa.array(self.offsets, pa.int32()),
            pa.array(self.keys, type=typ.key_type),
            items,
            type=typ,
            mask=pa.array(self.nulls, pa.bool_()) if True in self.nulls else None,
        )


_Column = list[Any] | _ListCol | _MapCol

_CTX_COLS = ("run_id", "collected_at", "account_id", "account_name", "region")

# The per-row scalar columns of each table, in the order add() produces them.
_CS_ROW = (
    "service_name",
    "arn",
    "created_at",
    "availability_zone",
    "resource_type",
    "power",
    "power_id",
    "state",
    "state_detail_code",
    "state_detail_message",
    "scale",
    "is_disabled",
    "principal_arn",
    "private_domain_name",
    "url",
    "ecr_image_puller_role_active",
    "ecr_image_puller_role_principal_arn",
    "location_region_name",
    "extra",
)
_DEP_ROW = (
    "service_name",
    "service_arn",
    "slot",
    "version",
    "state",
    "created_at",
    "public_endpoint_container_name",
    "public_endpoint_container_port",
    "health_check_healthy_threshold",
    "health_check_unhealthy_threshold",
    "health_check_timeout_seconds",
    "health_check_interval_seconds",
    "health_check_path",
    "health_check_success_codes",
    "extra",
)
_CON_ROW = (
    "service_name",
    "service_arn",
    "slot",
    "deployment_version",
    "container_name",
    "image",
    "image_source",
    "extra",
)
_SLOTS = (("current", "currentDeployment"), ("next", "nextDeployment"))
_DEP_PATHS = {
    key: (f"{key}.publicEndpoint", f"{key}.publicEndpoint.healthCheck", f"{key}.containers")
    for _, key in _SLOTS
}


def _new_buffers(schema: pa.Schema, row_names: tuple[str, ...]) -> dict[str, _Column]:
    """Buffers of the columns not carried by the row tuples: context, list and map columns."""
    cols: dict[str, _Column] = {}
    for f in schema:
        if f.name in row_names:
            continue
        if pa.types.is_map(f.type):
            item_list = pa.types.is_list(f.type.item_type)
            cols[f.name] = _MapCol(_ListCol() if item_list else [])
        elif pa.types.is_list(f.type):
            cols[f.name] = _ListCol()
        else:
            cols[f.name] = []
    return cols


def _list(col: _Column) -> _ListCol:
    assert isinstance(col, _ListCol)
    return col


class _StrMap(_MapCol):
    items: list[Any]


class _ListMap(_MapCol):
    items: _ListCol


def _map_of_str(col: _Column) -> _StrMap:
    assert isinstance(col, _MapCol) and isinstance(col.items, list)
    return col  # type: ignore[return-value]


def _map_of_list(col: _Column) -> _ListMap:
    assert isinstance(col, _MapCol) and isinstance(col.items, _ListCol)
    return col  # type: ignore[return-value]


def _truncate(cols: Mapping[str, _Column], rows: int) -> None:
    for col in cols.values():
        if isinstance(col, list):
            del col[rows:]
        else:
            col.truncate(rows)


def _build(
    schema: pa.Schema,
    cols: Mapping[str, _Column],
    row_names: tuple[str, ...],
    rows: list[tuple[Any, ...]],
) -> pa.Table:
    transposed = zip(*rows, strict=True) if rows else ((),) * len(row_names)
    row_cols = dict(zip(row_names, transposed, strict=True))
    arrays = []
    for f in schema:
        if f.name in row_cols:
            arrays.append(pa.array(row_cols[f.name], type=f.type))
            continue
        col = cols[f.name]
        if isinstance(col, _ListCol | _MapCol):
            arrays.append(col.build(f.type))
        else:
            arrays.append(pa.array(col, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


class Flattener:
    """Accumulates the rows of the three inventory tables, column by column; `take()` builds them.

    `fingerprint`: applied to every environment value (see inventory.storage.fingerprint.Fingerprinter);
    None stores values as they are (`--include-env-values` only). Deliberately no default.
    """

    def __init__(self, fingerprint: Callable[[str], str] | None) -> None:
        self._fingerprint = fingerprint
        self._enums = known_enums()
        known = known_members()
        self._k_svc, self._k_loc, self._k_detail = (
            known["service"],
            known["location"],
            known["stateDetail"],
        )
        self._k_reg, self._k_puller = known["privateRegistryAccess"], known["ecrImagePullerRole"]
        self._k_dep, self._k_ep, self._k_hc = (
            known["deployment"],
            known["publicEndpoint"],
            known["healthCheck"],
        )
        self._k_con = known["container"]
        self._unknown_seen: set[str] = set()  # member paths reported (for the whole run)
        self._reset()

    @property
    def fingerprint(self) -> Callable[[str], str] | None:
        """What environment values are replaced by (None: stored as they are)."""
        return self._fingerprint

    def _reset(self) -> None:
        self._cs = _new_buffers(INVENTORY_TABLES["container_services"], _CS_ROW)
        self._dep = _new_buffers(INVENTORY_TABLES["deployments"], _DEP_ROW)
        self._con = _new_buffers(INVENTORY_TABLES["containers"], _CON_ROW)
        # The scalar columns of a row arrive as one tuple (one append instead of ~15); take()
        # turns each table's tuples into its columns in one C-level transposition.
        self._cs_rows: list[tuple[Any, ...]] = []
        self._dep_rows: list[tuple[Any, ...]] = []
        self._con_rows: list[tuple[Any, ...]] = []
        self._tags_col = _map_of_str(self._cs["tags"])
        self._domains_col = _map_of_list(self._cs["public_domain_names"])
        self._command_col = _list(self._con["command"])
        self._env_col = _map_of_str(self._con["environment"])
        self._ports_col = _map_of_str(self._con["ports"])

    @property
    def rows(self) -> dict[str, int]:
        """Rows waiting in the buffers, per table."""
        return {
            "container_services": len(self._cs_rows),
            "deployments": len(self._dep_rows),
            "containers": len(self._con_rows),
        }

    def take(self) -> dict[str, pa.Table]:
        """The buffered rows as Arrow tables (schema.py's schemas), then empty buffers."""
        tables = {
            "container_services": _build(
                INVENTORY_TABLES["container_services"], self._cs, _CS_ROW, self._cs_rows
            ),
            "deployments": _build(
                INVENTORY_TABLES["deployments"], self._dep, _DEP_ROW, self._dep_rows
            ),
            "containers": _build(
                INVENTORY_TABLES["containers"], self._con, _CON_ROW, self._con_rows
            ),
        }
        self._reset()
        return tables

    def add(self, ctx: TargetContext, services: object) -> list[Anomaly]:
        """Buffer the rows of one account × region answer; return its anomalies (never raises
        on the answer's shape)."""
        if isinstance(services, list) and not services:
            return []  # most targets have no services: no rows, nothing to check
        anomalies: list[Anomaly] = []
        chk = Check(anomalies, self._enums)
        counts = self._counts()
        if isinstance(services, list | tuple):
            for i, svc in enumerate(services):
                if isinstance(svc, dict):
                    chk.index, chk.svc = i, svc
                    mark = self._counts()
                    try:
                        self._service(chk, svc)
                    except Exception as e:  # a bug or a hostile mapping: drop this service only
                        self._rollback(mark)
                        # the exception's type only: its text might quote an environment value
                        chk.note(FLATTEN_ERROR, "", f"not stored: {type(e).__name__}")
                else:
                    chk.scope = "containerServices"
                    chk.bad(f"[{i}]", "object", svc)
                    chk.scope = ""
        elif services is not None:
            chk.scope = "GetContainerServices"
            chk.bad("containerServices", "list", services)
        self._fill_context(ctx, counts)
        return anomalies

    def _counts(self) -> list[int]:
        return [len(self._cs_rows), len(self._dep_rows), len(self._con_rows)]

    def _rollback(self, counts: list[int]) -> None:
        del self._cs_rows[counts[0] :]
        del self._dep_rows[counts[1] :]
        del self._con_rows[counts[2] :]
        for bufs, n in zip((self._cs, self._dep, self._con), counts, strict=True):
            _truncate(bufs, n)  # the list and map columns (context columns are filled later)

    def _fill_context(self, ctx: TargetContext, before: list[int]) -> None:
        collected = epoch_micros(ctx.collected_at)
        values = (ctx.run_id, collected, ctx.account_id, ctx.account_name, ctx.region)
        after = self._counts()
        for bufs, n0, n1 in zip((self._cs, self._dep, self._con), before, after, strict=True):
            n = n1 - n0
            if not n:
                continue
            for name, v in zip(_CTX_COLS, values, strict=True):
                col = bufs.get(name)
                if isinstance(col, list):
                    col.extend([v] * n)

    def _service(self, chk: Check, svc: dict[str, Any]) -> None:
        name, arn = svc.get("containerServiceName"), svc.get("arn")
        if not (_is_identity(name) and _is_identity(arn)):
            self._skip(chk, name, arn)
            return
        location = chk.obj(svc, "location")
        detail = chk.obj(svc, "stateDetail")
        registry = chk.obj(svc, "privateRegistryAccess")
        puller = chk.obj(registry, "ecrImagePullerRole", "privateRegistryAccess")
        extra = None
        if not (
            self._k_svc.issuperset(svc)
            and self._k_loc.issuperset(location)
            and self._k_detail.issuperset(detail)
            and self._k_reg.issuperset(registry)
            and self._k_puller.issuperset(puller)
        ):
            extra = self._extra(
                chk,
                "container_services",
                "",
                (
                    ("", svc, self._k_svc),
                    ("location", location, self._k_loc),
                    ("stateDetail", detail, self._k_detail),
                    ("privateRegistryAccess", registry, self._k_reg),
                    ("privateRegistryAccess.ecrImagePullerRole", puller, self._k_puller),
                ),
            )
        row = (
            name,
            arn,
            chk.ts(svc, "createdAt"),
            chk.str_(location, "availabilityZone", "location"),
            chk.str_(svc, "resourceType"),
            chk.enum(svc, "power", POWER),
            chk.str_(svc, "powerId"),
            chk.enum(svc, "state", STATE),
            chk.enum(detail, "code", STATE_DETAIL_CODE, "stateDetail"),
            chk.str_(detail, "message", "stateDetail"),
            chk.int32(svc, "scale"),
            chk.bool_(svc, "isDisabled"),
            chk.str_(svc, "principalArn"),
            chk.str_(svc, "privateDomainName"),
            chk.str_(svc, "url"),
            chk.bool_(puller, "isActive", "privateRegistryAccess.ecrImagePullerRole"),
            chk.str_(puller, "principalArn", "privateRegistryAccess.ecrImagePullerRole"),
            chk.str_(location, "regionName", "location"),
            extra,
        )
        self._cs_rows.append(row)
        self._tags(chk, svc.get("tags"))
        self._domains(chk, svc.get("publicDomainNames"))
        for slot, key in _SLOTS:
            dep = svc.get(key)
            if dep is None:
                continue
            if isinstance(dep, dict):
                self._deployment(chk, name, arn, slot, key, dep)
            else:
                chk.bad(key, "object", dep)

    def _skip(self, chk: Check, name: object, arn: object) -> None:
        """A service without a usable identity: not stored; the anomaly names its position."""
        problems = []
        for field, v in (("containerServiceName", name), ("arn", arn)):
            if v is None:
                problems.append(f"{field} missing")
            elif not _is_identity(v):
                got = "an empty string" if v == "" else _describe(v)
                problems.append(f"{field}: expected a non-empty string, got {got}")
        known = name if _is_identity(name) else arn if _is_identity(arn) else None
        chk.scope = f"containerServices[{chk.index}]" + (f" ({short_repr(known)})" if known else "")
        chk.note(UNEXPECTED_SHAPE, "", f"not stored, no usable identity: {'; '.join(problems)}")
        chk.scope = ""

    def _extra(
        self,
        chk: Check,
        table: str,
        prefix: str,
        parts: tuple[tuple[str, Mapping[str, Any], frozenset[str]], ...],
    ) -> str | None:
        """The `extra` JSON of one row: the members of each part (its path in the row, the
        object, the names the model knows) that the model does not know; reports new paths."""
        out: dict[str, Any] = {}
        for rel, d, known in parts:
            unknown = [k for k in d if k not in known]
            if not unknown:
                continue
            node = out
            for step in rel.split(".") if rel else ():
                node = node.setdefault(step, {})
            for k in unknown:
                name = str(k)
                self._report(chk, ".".join(p for p in (prefix, rel, name) if p), table)
                node[name] = _scrub(d[k], self._fingerprint, name == "environment")
        if not out:
            return None
        return json.dumps(out, sort_keys=True, separators=(",", ":"), allow_nan=False)

    def _report(self, chk: Check, member: str, table: str) -> None:
        """One UnknownMember anomaly per member path per run (the first place it was seen)."""
        member = member if len(member) <= 200 else member[:200] + "…"
        if not _utf8_ok(member):  # a name with a lone surrogate: escaped, Arrow cannot store it
            member = member.encode("utf-8", "backslashreplace").decode("utf-8")
        seen = self._unknown_seen
        if member in seen or len(seen) > MAX_UNKNOWN_PATHS:
            return
        seen.add(member)
        if len(seen) > MAX_UNKNOWN_PATHS:
            text = f"more than {MAX_UNKNOWN_PATHS} unknown member paths: the rest are not reported"
        else:
            text = (
                f"containerServices[*].{member}: a member the installed botocore Lightsail "
                f"model does not know; kept in {table}.extra"
            )
        chk.anomalies.append(Anomaly(UNKNOWN_MEMBER, text))

    def _tags(self, chk: Check, tags: object) -> None:
        col = self._tags_col
        if tags is None:
            col.null()
            return
        if not isinstance(tags, list):
            chk.bad("tags", "list", tags)
            col.null()
            return
        out: dict[str, str | None] = {}
        for j, tag in enumerate(tags):
            path = f"tags[{j}]"
            if not isinstance(tag, dict):
                chk.bad(path, "object", tag)
                continue
            key = chk.str_(tag, "key", path)
            if key is None:
                if tag.get("key") is None:
                    chk.note(UNEXPECTED_SHAPE, f"{path}.key", "missing")
                continue
            if key in out:
                chk.note(
                    UNEXPECTED_SHAPE, path, f"duplicate tag key {short_repr(key)}, last one kept"
                )
            out[key] = chk.str_(tag, "value", path)
        col.keys.extend(out)
        col.items.extend(out.values())
        col.end()

    def _domains(self, chk: Check, domains: object) -> None:
        col = self._domains_col
        if domains is None:
            col.null()
            return
        if not isinstance(domains, dict):
            chk.bad("publicDomainNames", "object", domains)
            col.null()
            return
        items = col.items
        for cert, names in domains.items():
            if not _is_key(cert):
                chk.bad("publicDomainNames key", "string", cert)
                continue
            col.keys.append(cert)
            if names is None:
                items.null()
            elif isinstance(names, list):
                for k, dn in enumerate(names):
                    items.values.append(
                        chk.item_str(dn, f"publicDomainNames[{short_repr(cert)}]", k)
                    )
                items.end()
            else:
                chk.bad(f"publicDomainNames[{short_repr(cert)}]", "list", names)
                items.null()
        col.end()

    def _deployment(
        self,
        chk: Check,
        name: str | None,
        arn: str | None,
        slot: str,
        key: str,
        dep: dict[str, Any],
    ) -> None:
        ep, hc, cp = _DEP_PATHS[key]
        endpoint = chk.obj(dep, "publicEndpoint", key)
        health = chk.obj(endpoint, "healthCheck", ep)
        version = chk.int32(dep, "version", key)
        extra = None
        if not (
            self._k_dep.issuperset(dep)
            and self._k_ep.issuperset(endpoint)
            and self._k_hc.issuperset(health)
        ):
            extra = self._extra(
                chk,
                "deployments",
                key,
                (
                    ("", dep, self._k_dep),
                    ("publicEndpoint", endpoint, self._k_ep),
                    ("publicEndpoint.healthCheck", health, self._k_hc),
                ),
            )
        row = (
            name,
            arn,
            slot,
            version,
            chk.enum(dep, "state", DEPLOYMENT_STATE, key),
            chk.ts(dep, "createdAt", key),
            chk.str_(endpoint, "containerName", ep),
            chk.int32(endpoint, "containerPort", ep),
            chk.int32(health, "healthyThreshold", hc),
            chk.int32(health, "unhealthyThreshold", hc),
            chk.int32(health, "timeoutSeconds", hc),
            chk.int32(health, "intervalSeconds", hc),
            chk.str_(health, "path", hc),
            chk.str_(health, "successCodes", hc),
            extra,
        )
        self._dep_rows.append(row)
        containers = dep.get("containers")
        if containers is None:
            return
        if not isinstance(containers, dict):
            chk.bad(cp, "object", containers)
            return
        head = (name, arn, slot, version)
        for cname, spec in containers.items():
            if _is_key(cname):
                self._container(chk, head, key, cname, spec)
            else:
                chk.bad(f"{cp} key", "string", cname)

    def _container(
        self,
        chk: Check,
        head: tuple[str | None, str | None, str, int | None],
        key: str,
        cname: str,
        spec: object,
    ) -> None:
        path = _Path(key, cname)
        if not isinstance(spec, dict):
            chk.bad(path, "object", spec)
            spec = _EMPTY
        assert isinstance(spec, Mapping)
        image = chk.str_(spec, "image", path)
        if image is None:
            if spec.get("image") is None:
                chk.note(UNEXPECTED_SHAPE, f"{path}.image", "missing")
            source = None
        else:
            source = "lightsail" if image.startswith(":") else "registry"
        extra = None
        if not self._k_con.issuperset(spec):
            extra = self._extra(
                chk, "containers", f"{key}.containers.*", (("", spec, self._k_con),)
            )
        self._con_rows.append((*head, cname, image, source, extra))
        self._command(chk, spec.get("command"), path)
        self._environment(chk, spec.get("environment"), path)
        self._ports(chk, spec.get("ports"), path)

    def _command(self, chk: Check, command: object, path: _Path) -> None:
        col = self._command_col
        if command is None:
            col.null()
        elif isinstance(command, list):
            if self._fingerprint is not None:  # secret-looking arguments: their fingerprints
                command = redact_command(command, self._fingerprint) or command
            values = col.values
            for arg in command:
                if arg.__class__ is str and arg.isascii():
                    values.append(arg)
                else:
                    values.append(
                        chk.item_str(arg, f"{path}.command", len(values) - col.offsets[-1])
                    )
            col.end()
        else:
            chk.bad(f"{path}.command", "list", command)
            col.null()

    def _environment(self, chk: Check, env: object, path: _Path) -> None:
        # Never put a value (or any part of one) into a message: names only.
        col = self._env_col
        if env is None:
            col.null()
            return
        if not isinstance(env, dict):
            chk.bad(f"{path}.environment", "object", env)
            col.null()
            return
        fingerprint = self._fingerprint
        keys, items = col.keys, col.items
        for k, v in env.items():
            if not _is_key(k):
                chk.bad(f"{path}.environment key", "string", k)
                continue
            if isinstance(v, str):
                if fingerprint is not None:
                    v = fingerprint(v)
                elif not (v.isascii() or _utf8_ok(v)):
                    chk.bad(f"{path}.environment[{short_repr(k)}]", "string", v)
                    v = None
            elif v is not None:
                chk.bad(f"{path}.environment[{short_repr(k)}]", "string", v)
                v = None
            keys.append(k)
            items.append(v)
        col.end()

    def _ports(self, chk: Check, ports: object, path: _Path) -> None:
        col = self._ports_col
        if ports is None:
            col.null()
            return
        if not isinstance(ports, dict):
            chk.bad(f"{path}.ports", "object", ports)
            col.null()
            return
        known = self._enums[PROTOCOL]
        for port, proto in ports.items():
            if not _is_key(port):
                chk.bad(f"{path}.ports key", "string", port)
                continue
            if proto.__class__ is not str or proto not in known:  # common: a known protocol
                proto = chk.item_str(proto, f"{path}.ports", port)
                if proto is not None:
                    chk.unknown(proto, PROTOCOL, f"{path}.ports[{short_repr(port)}]")
            col.keys.append(port)
            col.items.append(proto)
        col.end()


def flatten(
    ctx: TargetContext, services: object, fingerprint: Callable[[str], str] | None
) -> tuple[dict[str, pa.Table], list[Anomaly]]:
    """One answer -> the three tables and its anomalies (a one-shot Flattener)."""
    f = Flattener(fingerprint)
    anomalies = f.add(ctx, services)
    return f.take(), anomalies
