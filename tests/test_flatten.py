"""inventory.storage.flatten: GetContainerServices answers -> the three inventory tables."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import botocore.parsers
import botocore.session
import pyarrow as pa
import pytest

from inventory.model import Account, TargetResult
from inventory.storage.fingerprint import Fingerprinter
from inventory.storage.flatten import (
    FLATTEN_ERROR,
    UNEXPECTED_SHAPE,
    UNKNOWN_ENUM_VALUE,
    Anomaly,
    Flattener,
    TargetContext,
    flatten,
)
from inventory.storage.schema import INVENTORY_TABLES

UTC = dt.UTC
SECRET = "hunter2-Sup3r-s3cret-Valu3"
OTHER_SECRET = "postgres://app:pa55w0rd-xyz@db.internal/app"
FP = Fingerprinter(b"k" * 32)
CTX = TargetContext(
    run_id="20261127T053650Z-3f9a1c",
    collected_at=dt.datetime(2026, 11, 27, 5, 36, 55, 123456, tzinfo=UTC),
    account_id="011111111111",
    account_name="prod",
    region="eu-west-2",
)
ARN = "arn:aws:lightsail:eu-west-2:011111111111:ContainerService/0b1c"

# One service as the wire carries it (json.loads of the body: timestamps are epoch seconds).
FULL: dict[str, Any] = {
    "containerServiceName": "api",
    "arn": ARN,
    "createdAt": 1764221810.25,
    "location": {"availabilityZone": "all", "regionName": "eu-west-2"},
    "resourceType": "ContainerService",
    "tags": [{"key": "team", "value": "core"}, {"key": "solo"}],
    "power": "micro",
    "powerId": "micro-1",
    "state": "RUNNING",
    "stateDetail": {"code": "ACTIVATING_DEPLOYMENT", "message": "Activating the deployment"},
    "scale": 2,
    "currentDeployment": {
        "version": 3,
        "state": "ACTIVE",
        "containers": {
            "web": {
                "image": ":api.web.3",
                "command": ["serve", "--port", "8080"],
                "environment": {"DB_PASSWORD": SECRET, "DATABASE_URL": OTHER_SECRET, "E": ""},
                "ports": {"8080": "HTTP", "9000": "TCP"},
            },
            "proxy": {
                "image": "public.ecr.aws/nginx/nginx:1.27",
                "command": [],
                "environment": {},
                "ports": {},
            },
        },
        "publicEndpoint": {
            "containerName": "web",
            "containerPort": 8080,
            "healthCheck": {
                "healthyThreshold": 2,
                "unhealthyThreshold": 3,
                "timeoutSeconds": 4,
                "intervalSeconds": 5,
                "path": "/healthz",
                "successCodes": "200-299",
            },
        },
        "createdAt": 1764221900,
    },
    "nextDeployment": {
        "version": 4,
        "state": "ACTIVATING",
        "containers": {"web": {"image": ":api.web.4", "environment": {"DB_PASSWORD": SECRET}}},
        "createdAt": 1764222000.5,
    },
    "isDisabled": False,
    "principalArn": "arn:aws:iam::000000000000:role/amazon/lightsail/eu-west-2/x",
    "privateDomainName": "api.service.local",
    "publicDomainNames": {"cert-1": ["api.example.com", "www.example.com"], "cert-2": []},
    "url": "https://api.0b1c.eu-west-2.cs.amazonlightsail.com/",
    "privateRegistryAccess": {
        "ecrImagePullerRole": {"isActive": True, "principalArn": "arn:aws:iam::0:role/puller"}
    },
}
# Only what every service has: the rest left out.
BARE: dict[str, Any] = {"containerServiceName": "bare", "arn": ARN + "-bare"}
# Everything that can be sent empty, sent empty.
EMPTY: dict[str, Any] = {
    "containerServiceName": "empty",
    "arn": ARN + "-empty",
    "tags": [],
    "publicDomainNames": {},
    "stateDetail": {},
    "location": {},
    "privateRegistryAccess": {},
    "principalArn": "",
    "currentDeployment": {"containers": {}},
}


def ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, UTC)


def botocore_parse(services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same services as botocore's parser gives them (timestamps: aware datetimes)."""
    model = botocore.session.get_session().get_service_model("lightsail")
    shape = model.operation_model("GetContainerServices").output_shape
    body = json.dumps({"containerServices": services}).encode()
    parsed = botocore.parsers.create_parser("json").parse(
        {"body": body, "headers": {}, "status_code": 200}, shape
    )
    return parsed["containerServices"]


def naive_utc(services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Aware datetimes -> naive UTC ones (some producers drop the zone)."""

    def walk(v: Any) -> Any:
        if isinstance(v, dt.datetime):
            return v.astimezone(UTC).replace(tzinfo=None)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(services)


PRODUCERS = {
    "json": lambda s: copy.deepcopy(s),
    "botocore": botocore_parse,
    "naive": lambda s: naive_utc(botocore_parse(s)),
}


def rows(tables: dict[str, pa.Table], name: str) -> list[dict[str, Any]]:
    return tables[name].to_pylist()


def by(rs: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [r for r in rs if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def ipc_bytes(tables: dict[str, pa.Table]) -> bytes:
    out = b""
    for t in tables.values():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        out += sink.getvalue().to_pybytes()
    return out


# --- every column -------------------------------------------------------------------------


@pytest.mark.parametrize("producer", PRODUCERS)
def test_every_column_of_every_table(producer: str) -> None:
    services = PRODUCERS[producer]([FULL, BARE])
    tables, anomalies = flatten(CTX, services, FP)
    assert anomalies == []
    for name, schema in INVENTORY_TABLES.items():
        assert tables[name].schema == schema

    cs = rows(tables, "container_services")
    assert len(cs) == 2
    ctx_cols = {
        "run_id": CTX.run_id,
        "collected_at": CTX.collected_at,
        "account_id": "011111111111",
        "region": "eu-west-2",
    }
    assert by(cs, service_name="api") == {
        **ctx_cols,
        "account_name": "prod",
        "service_name": "api",
        "arn": ARN,
        "created_at": dt.datetime(2025, 11, 27, 5, 36, 50, 250000, tzinfo=UTC),
        "availability_zone": "all",
        "location_region_name": "eu-west-2",
        "resource_type": "ContainerService",
        "power": "micro",
        "power_id": "micro-1",
        "state": "RUNNING",
        "state_detail_code": "ACTIVATING_DEPLOYMENT",
        "state_detail_message": "Activating the deployment",
        "scale": 2,
        "is_disabled": False,
        "principal_arn": "arn:aws:iam::000000000000:role/amazon/lightsail/eu-west-2/x",
        "private_domain_name": "api.service.local",
        "url": "https://api.0b1c.eu-west-2.cs.amazonlightsail.com/",
        "tags": [("team", "core"), ("solo", None)],
        "public_domain_names": [
            ("cert-1", ["api.example.com", "www.example.com"]),
            ("cert-2", []),
        ],
        "ecr_image_puller_role_active": True,
        "ecr_image_puller_role_principal_arn": "arn:aws:iam::0:role/puller",
        "extra": None,
    }
    bare = by(cs, service_name="bare")
    assert bare["arn"] == ARN + "-bare"
    assert bare["account_name"] == "prod"
    left_out = set(bare) - set(ctx_cols) - {"account_name", "service_name", "arn"}
    assert {k: bare[k] for k in left_out} == dict.fromkeys(left_out)  # every other column NULL

    deps = rows(tables, "deployments")
    assert len(deps) == 2  # BARE has no deployments
    assert by(deps, slot="current") == {
        **ctx_cols,
        "service_name": "api",
        "service_arn": ARN,
        "slot": "current",
        "version": 3,
        "state": "ACTIVE",
        "created_at": ts(1764221900),
        "public_endpoint_container_name": "web",
        "public_endpoint_container_port": 8080,
        "health_check_healthy_threshold": 2,
        "health_check_unhealthy_threshold": 3,
        "health_check_timeout_seconds": 4,
        "health_check_interval_seconds": 5,
        "health_check_path": "/healthz",
        "health_check_success_codes": "200-299",
        "extra": None,
    }
    nxt = by(deps, slot="next")
    assert (nxt["version"], nxt["state"]) == (4, "ACTIVATING")
    assert nxt["created_at"] == dt.datetime(2025, 11, 27, 5, 40, 0, 500000, tzinfo=UTC)
    assert nxt["public_endpoint_container_name"] is None
    assert nxt["health_check_path"] is None

    cons = rows(tables, "containers")
    assert len(cons) == 3
    assert by(cons, slot="current", container_name="web") == {
        **ctx_cols,
        "service_name": "api",
        "service_arn": ARN,
        "slot": "current",
        "deployment_version": 3,
        "container_name": "web",
        "image": ":api.web.3",
        "image_source": "lightsail",
        "command": ["serve", "--port", "8080"],
        "environment": [
            ("DB_PASSWORD", FP(SECRET)),
            ("DATABASE_URL", FP(OTHER_SECRET)),
            ("E", FP("")),
        ],
        "ports": [("8080", "HTTP"), ("9000", "TCP")],
        "extra": None,
    }
    proxy = by(cons, container_name="proxy")
    assert proxy["image_source"] == "registry"
    assert (proxy["command"], proxy["environment"], proxy["ports"]) == ([], [], [])
    nweb = by(cons, slot="next", container_name="web")
    assert (nweb["deployment_version"], nweb["image"], nweb["image_source"]) == (
        4,
        ":api.web.4",
        "lightsail",
    )
    assert nweb["environment"] == [("DB_PASSWORD", FP(SECRET))]  # same value, same fingerprint
    assert (nweb["command"], nweb["ports"]) == (None, None)  # left out: NULL


def test_producers_agree() -> None:
    results = [flatten(CTX, PRODUCERS[p]([FULL, BARE, EMPTY]), FP)[0] for p in PRODUCERS]
    for other in results[1:]:
        for name in INVENTORY_TABLES:
            assert other[name].equals(results[0][name]), name


def test_absent_is_null_and_empty_stays_empty() -> None:
    tables, anomalies = flatten(CTX, [BARE, EMPTY], FP)
    assert anomalies == []
    cs = rows(tables, "container_services")
    bare, empty = by(cs, service_name="bare"), by(cs, service_name="empty")
    assert bare["tags"] is None and empty["tags"] == []
    assert bare["public_domain_names"] is None and empty["public_domain_names"] == []
    assert bare["principal_arn"] is None and empty["principal_arn"] == ""
    # an empty structure has no fields: its columns are NULL either way
    assert empty["state_detail_code"] is None and empty["state_detail_message"] is None
    assert empty["availability_zone"] is None and empty["ecr_image_puller_role_active"] is None
    deps = rows(tables, "deployments")
    assert [(d["service_name"], d["slot"], d["version"]) for d in deps] == [
        ("empty", "current", None)
    ]
    assert rows(tables, "containers") == []


def test_container_fields_absent_vs_empty() -> None:
    svc = {
        "containerServiceName": "s",
        "arn": ARN,
        "currentDeployment": {
            "version": 1,
            "containers": {
                "absent": {"image": "nginx"},
                "empty": {"image": "", "command": [], "environment": {}, "ports": {}},
            },
        },
    }
    tables, anomalies = flatten(CTX, [svc], FP)
    assert anomalies == []
    cons = rows(tables, "containers")
    absent, empty = by(cons, container_name="absent"), by(cons, container_name="empty")
    for col in ("command", "environment", "ports"):
        assert absent[col] is None
        assert empty[col] == []
    assert (empty["image"], empty["image_source"]) == ("", "registry")


def test_image_source() -> None:
    images = {"a": ":svc.a.1", "b": "nginx:latest", "c": "123.dkr.ecr.us-east-1.amazonaws.com/x:1"}
    svc = {
        "containerServiceName": "s",
        "arn": ARN,
        "currentDeployment": {"containers": {k: {"image": v} for k, v in images.items()}},
    }
    tables, _ = flatten(CTX, [svc], FP)
    got = {r["container_name"]: r["image_source"] for r in rows(tables, "containers")}
    assert got == {"a": "lightsail", "b": "registry", "c": "registry"}


def test_context_from_target_result() -> None:
    t = dt.datetime(2026, 1, 1, tzinfo=UTC)
    result = TargetResult(Account("000000000001", "dev"), "us-east-1", t, t, 1, [])
    ctx = TargetContext.of("r1", result)
    assert ctx == TargetContext("r1", t, "000000000001", "dev", "us-east-1")


def test_naive_collected_at_is_utc() -> None:
    naive = TargetContext("r", dt.datetime(2026, 1, 1, 12), "1", None, "us-east-1")
    tables, _ = flatten(naive, [BARE], FP)
    row = rows(tables, "container_services")[0]
    assert row["collected_at"] == dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert row["account_name"] is None


def test_other_timestamp_forms() -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    svc = {
        "containerServiceName": "s",
        "arn": ARN,
        "createdAt": dt.datetime(2026, 1, 1, 13, tzinfo=berlin),
        "currentDeployment": {"createdAt": "2026-01-01T12:00:00Z"},
    }
    tables, anomalies = flatten(CTX, [svc], FP)
    assert anomalies == []
    noon = dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert rows(tables, "container_services")[0]["created_at"] == noon
    assert rows(tables, "deployments")[0]["created_at"] == noon


# --- redaction ----------------------------------------------------------------------------


def test_env_values_never_reach_arrow() -> None:
    tables, _ = flatten(CTX, [FULL], FP)
    blob = ipc_bytes(tables)
    assert b"DB_PASSWORD" in blob and b"DATABASE_URL" in blob  # names are kept
    for secret in (SECRET, OTHER_SECRET):
        assert secret.encode() not in blob
        assert FP(secret).encode() in blob


def test_different_key_different_fingerprint() -> None:
    a, _ = flatten(CTX, [FULL], FP)
    b, _ = flatten(CTX, [FULL], Fingerprinter(b"another key"))
    env = "environment"
    assert rows(a, "containers")[0][env] != rows(b, "containers")[0][env]
    assert [k for k, _ in rows(a, "containers")[0][env]] == [
        k for k, _ in rows(b, "containers")[0][env]
    ]


def test_include_env_values_keeps_raw() -> None:
    tables, _ = flatten(CTX, [FULL], None)
    web = by(rows(tables, "containers"), slot="current", container_name="web")
    assert web["environment"] == [
        ("DB_PASSWORD", SECRET),
        ("DATABASE_URL", OTHER_SECRET),
        ("E", ""),
    ]
    assert SECRET.encode() in ipc_bytes(tables)


def test_fingerprint_is_required_argument() -> None:
    with pytest.raises(TypeError):
        Flattener()  # type: ignore[call-arg]


# --- bad shapes ---------------------------------------------------------------------------


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `base` with the value at dotted `path` replaced (or removed if DELETE)."""
    svc = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = svc
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return svc


DELETE = object()
WEB = "currentDeployment.containers.web"

BAD_CASES: list[tuple[str, Any, str, str, str, Any]] = [
    # (path, bad value, anomaly code, text in message, (table, column) NULLed, expected)
    ("scale", "3", UNEXPECTED_SHAPE, "scale: expected integer, got str", "cs.scale", None),
    ("scale", True, UNEXPECTED_SHAPE, "scale: expected integer, got bool", "cs.scale", None),
    ("scale", 2**40, UNEXPECTED_SHAPE, "scale: integer out of 32-bit range", "cs.scale", None),
    ("isDisabled", "no", UNEXPECTED_SHAPE, "isDisabled: expected boolean", "cs.is_disabled", None),
    (
        "createdAt",
        "yesterday",
        UNEXPECTED_SHAPE,
        "createdAt: expected timestamp",
        "cs.created_at",
        None,
    ),
    (
        "createdAt",
        1e300,
        UNEXPECTED_SHAPE,
        "createdAt: timestamp out of range",
        "cs.created_at",
        None,
    ),
    ("createdAt", float("nan"), UNEXPECTED_SHAPE, "out of range", "cs.created_at", None),
    # an integer too big for a float (JSON allows any): out of range, not an OverflowError
    ("createdAt", 10**400, UNEXPECTED_SHAPE, "out of range", "cs.created_at", None),
    (
        "url",
        "\ud800x",
        UNEXPECTED_SHAPE,
        "url: expected string, got a string that is not valid",
        "cs.url",
        None,
    ),
    (
        "power",
        "gigantic",
        UNKNOWN_ENUM_VALUE,
        "power: unknown ContainerServicePowerName value 'gigantic'",
        "cs.power",
        "gigantic",
    ),
    (
        "state",
        "HIBERNATING",
        UNKNOWN_ENUM_VALUE,
        "state: unknown ContainerServiceState value 'HIBERNATING'",
        "cs.state",
        "HIBERNATING",
    ),
    (
        "stateDetail.code",
        "NEW_CODE",
        UNKNOWN_ENUM_VALUE,
        "stateDetail.code: unknown",
        "cs.state_detail_code",
        "NEW_CODE",
    ),
    (
        "stateDetail",
        "broken",
        UNEXPECTED_SHAPE,
        "stateDetail: expected object, got str",
        "cs.state_detail_message",
        None,
    ),
    (
        "location",
        ["all"],
        UNEXPECTED_SHAPE,
        "location: expected object, got list",
        "cs.availability_zone",
        None,
    ),
    (
        "privateRegistryAccess.ecrImagePullerRole",
        1,
        UNEXPECTED_SHAPE,
        "privateRegistryAccess.ecrImagePullerRole: expected object",
        "cs.ecr_image_puller_role_active",
        None,
    ),
    ("tags", {"team": "core"}, UNEXPECTED_SHAPE, "tags: expected list, got dict", "cs.tags", None),
    (
        "tags",
        [{"key": "a", "value": "1"}, "b"],
        UNEXPECTED_SHAPE,
        "tags[1]: expected object",
        "cs.tags",
        [("a", "1")],
    ),
    (
        "tags",
        [{"value": "1"}, {"key": "k", "value": 5}],
        UNEXPECTED_SHAPE,
        "tags[0].key: missing",
        "cs.tags",
        [("k", None)],
    ),
    (
        "tags",
        [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}],
        UNEXPECTED_SHAPE,
        "duplicate tag key 'a'",
        "cs.tags",
        [("a", "2")],
    ),
    (
        "publicDomainNames",
        ["x.com"],
        UNEXPECTED_SHAPE,
        "publicDomainNames: expected object, got list",
        "cs.public_domain_names",
        None,
    ),
    (
        "publicDomainNames",
        {"c": "x.com"},
        UNEXPECTED_SHAPE,
        "publicDomainNames['c']: expected list, got str",
        "cs.public_domain_names",
        [("c", None)],
    ),
    (
        "publicDomainNames",
        {"c": ["x.com", 7]},
        UNEXPECTED_SHAPE,
        "publicDomainNames['c'][1]: expected string",
        "cs.public_domain_names",
        [("c", ["x.com", None])],
    ),
    (
        "currentDeployment.version",
        "3",
        UNEXPECTED_SHAPE,
        "currentDeployment.version: expected integer",
        "dep.version",
        None,
    ),
    (
        "currentDeployment.state",
        "PAUSED",
        UNKNOWN_ENUM_VALUE,
        "currentDeployment.state: unknown ContainerServiceDeploymentState value 'PAUSED'",
        "dep.state",
        "PAUSED",
    ),
    (
        "currentDeployment.createdAt",
        [],
        UNEXPECTED_SHAPE,
        "currentDeployment.createdAt: expected timestamp, got list",
        "dep.created_at",
        None,
    ),
    (
        "currentDeployment.publicEndpoint.containerPort",
        "8080",
        UNEXPECTED_SHAPE,
        "currentDeployment.publicEndpoint.containerPort: expected integer",
        "dep.public_endpoint_container_port",
        None,
    ),
    (
        "currentDeployment.publicEndpoint.healthCheck",
        "/",
        UNEXPECTED_SHAPE,
        "currentDeployment.publicEndpoint.healthCheck: expected object",
        "dep.health_check_path",
        None,
    ),
    (
        "currentDeployment.publicEndpoint.healthCheck.timeoutSeconds",
        2.5,
        UNEXPECTED_SHAPE,
        "healthCheck.timeoutSeconds: expected integer, got float",
        "dep.health_check_timeout_seconds",
        None,
    ),
    (
        f"{WEB}.image",
        DELETE,
        UNEXPECTED_SHAPE,
        "currentDeployment.containers['web'].image: missing",
        "con.image_source",
        None,
    ),
    (
        f"{WEB}.image",
        5,
        UNEXPECTED_SHAPE,
        "containers['web'].image: expected string, got int",
        "con.image",
        None,
    ),
    (
        f"{WEB}.command",
        "serve --port 8080",
        UNEXPECTED_SHAPE,
        "containers['web'].command: expected list, got str",
        "con.command",
        None,
    ),
    (
        f"{WEB}.command",
        ["serve", 8080],
        UNEXPECTED_SHAPE,
        "containers['web'].command[1]: expected string, got int",
        "con.command",
        ["serve", None],
    ),
    (
        f"{WEB}.ports",
        ["8080"],
        UNEXPECTED_SHAPE,
        "containers['web'].ports: expected object, got list",
        "con.ports",
        None,
    ),
    (
        f"{WEB}.ports",
        {"8080": "QUIC"},
        UNKNOWN_ENUM_VALUE,
        "containers['web'].ports['8080']: unknown ContainerServiceProtocol value 'QUIC'",
        "con.ports",
        [("8080", "QUIC")],
    ),
    (
        f"{WEB}.ports",
        {"8080": 1},
        UNEXPECTED_SHAPE,
        "ports['8080']: expected string, got int",
        "con.ports",
        [("8080", None)],
    ),
    (
        f"{WEB}.environment",
        [f"DB_PASSWORD={SECRET}"],
        UNEXPECTED_SHAPE,
        "containers['web'].environment: expected object, got list",
        "con.environment",
        None,
    ),
    (
        f"{WEB}.environment",
        {"DB_PASSWORD": {"v": SECRET}, "N": 42},
        UNEXPECTED_SHAPE,
        "environment['DB_PASSWORD']: expected string, got dict",
        "con.environment",
        [("DB_PASSWORD", None), ("N", None)],
    ),
]


def _column(tables: dict[str, pa.Table], ref: str) -> Any:
    short, col = ref.split(".")
    table = {"cs": "container_services", "dep": "deployments", "con": "containers"}[short]
    rs = rows(tables, table)
    if short == "dep":
        return by(rs, slot="current")[col]
    if short == "con":
        return by(rs, slot="current", container_name="web")[col]
    return rs[0][col]


@pytest.mark.parametrize(
    ("path", "value", "code", "text", "column", "expected"),
    BAD_CASES,
    ids=[f"{c[0]}={c[1]!r}"[:60] for c in BAD_CASES],
)
def test_bad_shapes(
    path: str, value: Any, code: str, text: str, column: str, expected: Any
) -> None:
    svc = with_(FULL, path, value)
    tables, anomalies = flatten(CTX, [svc], FP)
    assert [a.error_code for a in anomalies].count(code) >= 1, anomalies
    messages = " | ".join(a.message for a in anomalies)
    assert text in messages
    assert all(a.message.startswith("service 'api': ") for a in anomalies)
    assert _column(tables, column) == expected
    # everything else still stored
    good, _ = flatten(CTX, [FULL], FP)
    for name in INVENTORY_TABLES:
        assert tables[name].num_rows == good[name].num_rows, name
    cs = rows(tables, "container_services")[0]
    assert cs["service_name"] == "api"
    if column != "cs.url":
        assert cs["url"] == FULL["url"]
    if not column.startswith("con."):
        web = by(rows(tables, "containers"), slot="current", container_name="web")
        assert web["command"] == ["serve", "--port", "8080"]
    # and never a secret
    for a in anomalies:
        assert SECRET not in a.message and OTHER_SECRET not in a.message
    assert SECRET.encode() not in ipc_bytes(tables)


def test_containers_as_a_list() -> None:
    svc = with_(FULL, "currentDeployment.containers", [{"name": "web", "image": "x"}])
    tables, anomalies = flatten(CTX, [svc], FP)
    assert [a.message for a in anomalies] == [
        "service 'api': currentDeployment.containers: expected object, got list"
    ]
    assert rows(tables, "deployments")[0]["version"] == 3  # the deployment row is still there
    assert [r["slot"] for r in rows(tables, "containers")] == ["next"]


def test_container_spec_not_an_object() -> None:
    svc = with_(FULL, WEB, ":api.web.3")
    tables, anomalies = flatten(CTX, [svc], FP)
    assert anomalies[0] == Anomaly(
        UNEXPECTED_SHAPE,
        "service 'api': currentDeployment.containers['web']: expected object, got str",
    )
    web = by(rows(tables, "containers"), slot="current", container_name="web")
    assert web["image"] is None and web["environment"] is None and web["deployment_version"] == 3


def test_deployment_not_an_object() -> None:
    svc = with_(FULL, "nextDeployment", "v4")
    tables, anomalies = flatten(CTX, [svc], FP)
    assert [a.message for a in anomalies] == [
        "service 'api': nextDeployment: expected object, got str"
    ]
    assert [r["slot"] for r in rows(tables, "deployments")] == ["current"]


def test_service_without_a_usable_identity_is_skipped_by_position() -> None:
    nameless = with_(FULL, "containerServiceName", DELETE)
    numbered = with_(BARE, "containerServiceName", 7)
    arnless = with_(EMPTY, "arn", DELETE)
    blank = with_(with_(BARE, "arn", ""), "containerServiceName", ["x"])
    tables, anomalies = flatten(CTX, [nameless, numbered, FULL, arnless, blank], FP)
    skipped = "not stored, no usable identity"
    assert anomalies == [
        Anomaly(
            UNEXPECTED_SHAPE,
            f"containerServices[0] ({ARN!r}): {skipped}: containerServiceName missing",
        ),
        Anomaly(
            UNEXPECTED_SHAPE,
            f"containerServices[1] ({ARN + '-bare'!r}): {skipped}: "
            "containerServiceName: expected a non-empty string, got int",
        ),
        Anomaly(UNEXPECTED_SHAPE, f"containerServices[3] ('empty'): {skipped}: arn missing"),
        Anomaly(
            UNEXPECTED_SHAPE,
            f"containerServices[4]: {skipped}: containerServiceName: expected a non-empty "
            "string, got list; arn: expected a non-empty string, got an empty string",
        ),
    ]
    # the one service with an identity is stored whole; nothing of the others
    assert [r["service_name"] for r in rows(tables, "container_services")] == ["api"]
    assert {r["service_arn"] for r in rows(tables, "deployments")} == {ARN}
    assert {r["service_arn"] for r in rows(tables, "containers")} == {ARN}


def test_answer_not_a_list_and_service_not_a_dict() -> None:
    tables, anomalies = flatten(CTX, {"containerServices": []}, FP)
    assert anomalies == [
        Anomaly(
            UNEXPECTED_SHAPE,
            "GetContainerServices: containerServices: expected list, got dict",
        )
    ]
    assert all(t.num_rows == 0 for t in tables.values())
    tables, anomalies = flatten(CTX, ["api", BARE, None], FP)
    assert [a.message for a in anomalies] == [
        "containerServices: [0]: expected object, got str",
        "containerServices: [2]: expected object, got null",
    ]
    assert [r["service_name"] for r in rows(tables, "container_services")] == ["bare"]
    assert flatten(CTX, [], FP)[1] == []
    assert flatten(CTX, None, FP)[1] == []  # a failed target has no services: nothing to say


def test_environment_problems_name_only_the_key() -> None:
    env = {"DB_PASSWORD": [SECRET], "GOOD": SECRET, 5: SECRET, "SURR": "\ud800" + SECRET}
    svc = with_(FULL, f"{WEB}.environment", env)
    for fp in (FP, None):
        tables, anomalies = flatten(CTX, [svc], fp)
        msgs = [a.message for a in anomalies]
        assert any("environment['DB_PASSWORD']: expected string, got list" in m for m in msgs)
        assert any("environment key: expected string, got int" in m for m in msgs)
        for m in msgs:
            assert SECRET not in m and "\ud800" not in m
        web = by(rows(tables, "containers"), slot="current", container_name="web")
        got = dict(web["environment"])
        assert set(got) == {"DB_PASSWORD", "GOOD", "SURR"}
        assert got["DB_PASSWORD"] is None
        if fp is None:  # raw values: a lone surrogate cannot be stored, NULL + anomaly
            assert got["GOOD"] == SECRET and got["SURR"] is None
            assert any("environment['SURR']: expected string" in m for m in msgs)
        else:  # fingerprints: every string value has one
            assert got["GOOD"] == FP(SECRET)
            assert got["SURR"] == FP("\ud800" + SECRET)
            assert SECRET.encode() not in ipc_bytes(tables)


def test_fingerprint_failure_drops_only_that_service() -> None:
    def boom(value: str) -> str:
        raise RuntimeError(f"cannot fingerprint {value}")

    tables, anomalies = flatten(CTX, [BARE, FULL, EMPTY], boom)
    assert anomalies == [Anomaly(FLATTEN_ERROR, "service 'api': not stored: RuntimeError")]
    assert [r["service_name"] for r in rows(tables, "container_services")] == ["bare", "empty"]
    assert [r["service_name"] for r in rows(tables, "deployments")] == ["empty"]
    assert rows(tables, "containers") == []
    for name in INVENTORY_TABLES:
        tables[name].validate(full=True)


def test_long_enum_value_is_shortened() -> None:
    tables, anomalies = flatten(CTX, [with_(BARE, "state", "X" * 500)], FP)
    assert len(anomalies[0].message) < 300
    assert rows(tables, "container_services")[0]["state"] == "X" * 500


def test_anomaly_to_error_record() -> None:
    a = Anomaly(UNKNOWN_ENUM_VALUE, "service 's': state: unknown")
    e = a.to_error(CTX, attempts=2)
    assert (e.account_id, e.region, e.operation, e.error_code, e.message, e.attempts) == (
        CTX.account_id,
        CTX.region,
        "GetContainerServices",
        UNKNOWN_ENUM_VALUE,
        a.message,
        2,
    )
    assert e.occurred_at == CTX.collected_at


# --- streaming ----------------------------------------------------------------------------


def test_take_resets_and_batches_work() -> None:
    f = Flattener(FP)
    assert f.rows == {"container_services": 0, "deployments": 0, "containers": 0}
    assert f.add(CTX, [FULL, BARE]) == []
    other = TargetContext(
        "20261127T053650Z-3f9a1c", CTX.collected_at, "222222222222", None, "us-east-1"
    )
    assert f.add(other, [EMPTY]) == []
    assert f.rows == {"container_services": 3, "deployments": 3, "containers": 3}
    first = f.take()
    assert [r["account_id"] for r in rows(first, "container_services")] == [
        "011111111111",
        "011111111111",
        "222222222222",
    ]
    assert [r["account_name"] for r in rows(first, "container_services")] == ["prod", "prod", None]
    assert [r["region"] for r in rows(first, "deployments")] == [
        "eu-west-2",
        "eu-west-2",
        "us-east-1",
    ]
    assert f.rows == {"container_services": 0, "deployments": 0, "containers": 0}
    empty = f.take()
    assert all(t.num_rows == 0 and t.schema == INVENTORY_TABLES[n] for n, t in empty.items())
    f.add(other, [BARE])
    second = f.take()
    assert rows(second, "container_services")[0]["service_name"] == "bare"
    assert rows(second, "container_services")[0]["account_id"] == "222222222222"
    assert second["containers"].num_rows == 0
    # the second batch does not share buffers with the first
    assert first["container_services"].num_rows == 3
    for name in INVENTORY_TABLES:
        first[name].validate(full=True)
        second[name].validate(full=True)


def test_many_services_roundtrip() -> None:
    services = [with_(FULL, "containerServiceName", f"svc-{i}") for i in range(200)]
    f = Flattener(FP)
    for _ in range(3):
        f.add(CTX, services)
    tables = f.take()
    assert {n: t.num_rows for n, t in tables.items()} == {
        "container_services": 600,
        "deployments": 1200,
        "containers": 1800,
    }
    cons = tables["containers"]
    assert cons.column("environment").to_pylist()[0][0] == ("DB_PASSWORD", FP(SECRET))
    assert cons.column("ports").to_pylist()[-3:] == [
        [("8080", "HTTP"), ("9000", "TCP")],
        [],
        None,
    ]


def test_empty_answers_between_others_keep_the_context_aligned() -> None:
    """An empty answer (most targets) adds no row and no anomaly, and the context columns
    of the answers around it stay theirs."""
    other = TargetContext("r", CTX.collected_at, "022222222222", None, "us-west-2")
    flat = Flattener(FP)
    assert flat.add(other, []) == []
    assert flat.rows == {"container_services": 0, "deployments": 0, "containers": 0}
    assert flat.add(CTX, [BARE]) == []
    assert flat.add(other, []) == []
    assert flat.add(other, [BARE]) == []
    got = rows(flat.take(), "container_services")
    assert [(r["account_id"], r["region"]) for r in got] == [
        ("011111111111", "eu-west-2"),
        ("022222222222", "us-west-2"),
    ]
