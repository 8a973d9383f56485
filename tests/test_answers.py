"""Answers AWS may send that our simulator's ground truth does not: members the installed
botocore model does not know (kept in `extra`), a `containerServices` that is missing or not a
list (a failed scan, never an empty region), leaves of the wrong type (NULL, the service kept).

End to end through both engines (`lean`, `botocore`) against the simulator's answer variants
(`Faults.unknown_members`, `no_services_member`, `services_not_list`, `bad_leaves`), into a
real DuckDB file (and Parquet); the expected values come from the simulator's wire dicts
(`Fleet.answer`), not from inventory.storage.flatten. A property-based test (hypothesis) then replaces
random leaves of valid answers with values of the wrong type.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from helpers import rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from inventory.cli import app
from inventory.model import Account, Options, Plan
from inventory.run.pipeline import run_collect
from inventory.simulator import Faults, Fleet, Simulator
from inventory.simulator.fleet import FUTURE_MEMBERS
from inventory.storage import schema
from inventory.storage.fingerprint import Fingerprinter, load_key
from inventory.storage.flatten import UNKNOWN_MEMBER, TargetContext, flatten, known_members

R1, R2 = "us-east-1", "eu-west-2"
ENGINES = ("lean", "botocore")
runner = CliRunner()


def role(account_id: str) -> str:
    return f"arn:aws:iam::{account_id}:role/InventoryReader"


def plan_of(fleet: Fleet, regions: tuple[str, ...], **options: Any) -> Plan:
    accounts = tuple(Account(id=a, role_arn=role(a)) for a in fleet.account_ids)
    return Plan(accounts, regions, Options(**options))


# --------------------------------------------------------------------------- unknown members


def future_paths(truth: dict[str, Any], future: dict[str, Any], prefix: str = "") -> set[str]:
    """The member paths `future` has and `truth` lacks (a container's name is `*`)."""
    out = set()
    for k, v in future.items():
        path = f"{prefix}.{k}" if prefix else k
        if k not in truth:
            out.add(path)
        elif isinstance(v, dict) and isinstance(truth[k], dict):
            if k == "containers":
                for name, c in v.items():
                    out |= future_paths(truth[k][name], c, f"{path}.*")
            elif k != "environment":
                out |= future_paths(truth[k], v, path)
    return out


def expected_extra(svc: dict[str, Any], fp: Callable[[str], str], secret: str) -> dict[str, Any]:
    """(table, service, slot, container) -> the `extra` JSON the contract's rule gives for
    a service of `Fleet.future_services` (its true twin: `svc`)."""
    f = FUTURE_MEMBERS
    name = svc["containerServiceName"]
    out: dict[Any, Any] = {}
    cs = {**f["service"], "location": f["location"]}
    if svc.get("stateDetail"):
        cs["stateDetail"] = f["stateDetail"]
    if svc.get("privateRegistryAccess"):
        cs["privateRegistryAccess"] = {
            **f["privateRegistryAccess"],
            "ecrImagePullerRole": f["ecrImagePullerRole"],
        }
    out[("container_services", name, None, None)] = cs
    for slot, key in (("current", "currentDeployment"), ("next", "nextDeployment")):
        dep = svc.get(key)
        if not dep:
            continue
        d: dict[str, Any] = dict(f["deployment"])
        if dep.get("publicEndpoint"):
            d["publicEndpoint"] = {**f["publicEndpoint"], "healthCheck": f["healthCheck"]}
        out[("deployments", name, slot, None)] = d
        for cname in dep["containers"]:
            sidecar = {
                **f["container"]["futureSidecar"],
                "environment": {"SIDECAR_TOKEN": fp(secret)},
            }
            out[("containers", name, slot, cname)] = {**f["container"], "futureSidecar": sidecar}
    return out


def stored_extra(db: Path, account: str, region: str) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    where = f"account_id = '{account}' AND region = '{region}'"
    for r in rows(db, f"SELECT service_name, extra FROM latest_container_services WHERE {where}"):
        out[("container_services", r["service_name"], None, None)] = json.loads(r["extra"])
    for r in rows(db, f"SELECT service_name, slot, extra FROM latest_deployments WHERE {where}"):
        out[("deployments", r["service_name"], r["slot"], None)] = json.loads(r["extra"])
    for r in rows(
        db, f"SELECT service_name, slot, container_name, extra FROM latest_containers WHERE {where}"
    ):
        key = ("containers", r["service_name"], r["slot"], r["container_name"])
        out[key] = json.loads(r["extra"])
    return out


@pytest.mark.parametrize(("engine", "workers"), [("lean", 1), ("botocore", 1), ("lean", 2)])
async def test_unknown_members_are_kept_in_extra_and_reported_once_per_path(
    sim_env: Any, tmp_path: Path, engine: str, workers: int
) -> None:
    fleet = Fleet(3, seed=1, regions=(R1, R2))
    a = fleet.account_ids
    future = {(a[0], R1), (a[1], R1), (a[2], R2)}  # showcase (many services) and invented ones
    sim_env(Simulator(fleet, Faults(unknown_members=future)))
    db, lake = tmp_path / "inv.duckdb", tmp_path / "lake"
    summary = await run_collect(
        plan_of(fleet, (R1, R2), engine=engine, workers=workers), db, str(lake)
    )
    assert summary.status == "complete"
    fp = Fingerprinter(load_key(db))

    paths: set[str] = set()
    for account, region in future:
        served = fleet.answer("unknown_members", account, region)["containerServices"]
        truth = fleet.services(account, region) or fleet._some_services(account, region, "future")
        want: dict[Any, Any] = {}
        secret = fleet.future_secret(account, region)
        for svc_truth, svc in zip(truth, served, strict=True):
            want |= expected_extra(svc_truth, fp, secret)
            paths |= future_paths(svc_truth, svc)
        assert stored_extra(db, account, region) == want
        # the known columns are as they were: the new members did not disturb them
        names = rows(
            db,
            f"SELECT service_name FROM latest_container_services WHERE account_id = '{account}' AND region = '{region}' ORDER BY 1",
        )
        assert [r["service_name"] for r in names] == sorted(
            s["containerServiceName"] for s in served
        )
    assert {p.split(".")[0] for p in paths} >= {"futureTier", "currentDeployment", "location"}
    assert any(p.endswith("healthCheck.grpcServiceName") for p in paths)
    # the other answers carry no extra at all
    others = rows(db, "SELECT account_id, region, extra FROM containers")
    assert all(
        (r["extra"] is None) == ((r["account_id"], r["region"]) not in future) for r in others
    )

    # one anomaly per member path in the whole run (not per row, not per target, not per
    # worker), in an account × region where it was seen
    errors = rows(db, "SELECT account_id, region, operation, error_code, message FROM errors")
    unknown = [e for e in errors if e["error_code"] == UNKNOWN_MEMBER]
    reported = {e["message"].split(":")[0].removeprefix("containerServices[*].") for e in unknown}
    assert len(unknown) == len(reported) and reported == paths
    assert all((e["account_id"], e["region"]) in future for e in unknown)
    assert {e["operation"] for e in unknown} == {"GetContainerServices"}
    assert summary.tally.anomalies == len(unknown)
    tier = next(e for e in unknown if e["message"].startswith("containerServices[*].futureTier:"))
    assert "kept in container_services.extra" in tier["message"]

    # the environment inside an unknown member is fingerprinted: the value is nowhere
    for account, region in future:
        secret = fleet.future_secret(account, region).encode()
        assert secret not in db.read_bytes()
        for f in lake.rglob("*.parquet"):
            assert secret not in f.read_bytes()
    # the lake has the same extra
    lake_rows = pq.read_table(next((lake / "containers").rglob("*.parquet"))).to_pylist()
    assert sorted(r["extra"] or "" for r in lake_rows) == sorted(r["extra"] or "" for r in others)


def test_unknown_members_unit_nested_levels_and_environment_values() -> None:
    """flatten alone: each level's unknown members under their nested keys; an unknown
    `environment` anywhere is fingerprinted; with --include-env-values kept as sent."""
    ctx = TargetContext("r", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "1", None, R1)
    svc = {
        "containerServiceName": "s",
        "arn": "arn:s",
        "location": {"regionName": R1, "newZone": "z"},
        "privateRegistryAccess": {"ecrImagePullerRole": {"isActive": True, "new": [1, 2.5]}},
        "future": {"environment": {"A": "v1", "B": 7}, "nan": float("nan")},
        "odd\ud800": "\udfff",  # not valid Unicode: escaped in the message and the JSON
        "currentDeployment": {
            "version": 1,
            "containers": {"c": {"image": "x", "environment": {"E": "v2"}, "new": None}},
            "publicEndpoint": {"healthCheck": {"grpc": True}},
        },
    }
    fp = Fingerprinter(b"k")
    tables, anomalies = flatten(ctx, [svc, copy.deepcopy(svc) | {"containerServiceName": "t"}], fp)
    cs = tables["container_services"].to_pylist()[0]
    assert cs["location_region_name"] == R1
    assert json.loads(cs["extra"]) == {
        "location": {"newZone": "z"},
        "privateRegistryAccess": {"ecrImagePullerRole": {"new": [1, 2.5]}},
        "future": {"environment": {"A": fp("v1"), "B": fp("7")}, "nan": None},
        "odd\ud800": "\udfff",
    }
    dep = tables["deployments"].to_pylist()[0]
    assert json.loads(dep["extra"]) == {"publicEndpoint": {"healthCheck": {"grpc": True}}}
    assert json.loads(tables["containers"].to_pylist()[0]["extra"]) == {"new": None}
    assert sorted(a.message.split(":")[0] for a in anomalies) == sorted(
        f"containerServices[*].{p}"
        for p in (
            "location.newZone",
            "privateRegistryAccess.ecrImagePullerRole.new",
            "future",
            "odd\\ud800",
            "currentDeployment.publicEndpoint.healthCheck.grpc",
            "currentDeployment.containers.*.new",
        )
    )  # two services, each path once
    raw, _ = flatten(ctx, [svc], None)
    assert json.loads(raw["container_services"].to_pylist()[0]["extra"])["future"] == {
        "environment": {"A": "v1", "B": 7},
        "nan": None,
    }


def test_known_members_come_from_the_installed_model() -> None:
    import botocore.session

    shapes = botocore.session.get_session().get_service_model("lightsail")
    svc = shapes.shape_for("ContainerService")
    known = known_members()
    assert known["service"] == frozenset(svc.members)  # type: ignore[attr-defined]
    assert "healthyThreshold" in known["healthCheck"] and "environment" in known["container"]
    assert "regionName" in known["location"]


# --------------------------------------------------------------------------- no list


@pytest.mark.parametrize("engine", ENGINES)
def test_an_answer_without_a_list_keeps_the_previous_snapshot(
    make_simulator: Any, write_accounts: Any, tmp_path: Path, engine: str
) -> None:
    fleet = Fleet(3, seed=1, regions=(R1, R2))
    a = fleet.account_ids
    faults = Faults()
    make_simulator(fleet=fleet, faults=faults)
    config = write_accounts(tmp_path / "accounts.toml", a, regions=[R1, R2])
    db = tmp_path / "inv.duckdb"
    args = ["collect", "--config", str(config), "--db", str(db), "--no-parquet", "--engine", engine]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    (run1,) = [r["run_id"] for r in rows(db, "SELECT run_id FROM runs")]
    assert fleet.services(a[0], R1)  # the showcase account has services there

    faults.no_services_member = {(a[0], R1)}  # `{}`
    faults.services_not_list = {(a[1], R1)}  # containerServices an object
    second = runner.invoke(app, args)
    assert second.exit_code == 3, second.output
    assert "Traceback" not in second.output
    # the second run (two runs in one second: their ids do not sort by time)
    (run2,) = rows(db, f"SELECT run_id, status FROM runs WHERE run_id != '{run1}'")
    assert run2["status"] == "partial"

    scans = {
        (s["account_id"], s["region"]): s
        for s in rows(db, f"SELECT * FROM scans WHERE run_id = '{run2['run_id']}'")
    }
    for target, got in (((a[0], R1), "missing"), ((a[1], R1), "a JSON object")):
        scan = scans[target]
        assert (scan["status"], scan["error_code"], scan["services"]) == (
            "failed",
            "UnexpectedShape",
            None,
        )
        (err,) = rows(
            db,
            f"SELECT * FROM errors WHERE run_id = '{run2['run_id']}' "
            f"AND account_id = '{target[0]}' AND region = '{target[1]}'",
        )
        assert (
            err["error_code"] == "UnexpectedShape"
            and f"is {got}, expected a list" in err["message"]
        )
    assert sum(s["status"] == "ok" for s in scans.values()) == len(scans) - 2
    # the latest views still show the first run's rows for both (not an empty region)
    for account, region in ((a[0], R1), (a[1], R1)):
        latest = rows(
            db,
            "SELECT run_id, service_name FROM latest_container_services "
            f"WHERE account_id = '{account}' AND region = '{region}' ORDER BY service_name",
        )
        truth = sorted(s["containerServiceName"] for s in fleet.services(account, region))
        assert [r["service_name"] for r in latest] == truth
        assert {r["run_id"] for r in latest} <= {run1}
    n = rows(
        db,
        f"SELECT count(*) AS n FROM latest_containers WHERE account_id = '{a[0]}' "
        f"AND region = '{R1}' AND run_id = '{run1}'",
    )[0]["n"]
    assert n > 0
    # the others moved on to the second run
    assert {
        r["run_id"] for r in rows(db, f"SELECT run_id FROM latest_scans WHERE region = '{R2}'")
    } == {run2["run_id"]}


# --------------------------------------------------------------------------- bad leaves


@pytest.mark.parametrize("engine", ENGINES)
async def test_bad_leaves_never_cost_a_service(sim_env: Any, tmp_path: Path, engine: str) -> None:
    fleet = Fleet(2, seed=1, regions=(R1, R2))
    a = fleet.account_ids
    bad = {(a[0], R1), (a[1], R1)}
    sim_env(Simulator(fleet, Faults(bad_leaves=bad)))
    db = tmp_path / "inv.duckdb"
    summary = await run_collect(plan_of(fleet, (R1, R2), engine=engine, workers=1), db, None)
    assert summary.status == "complete"
    for account, region in bad:
        served = fleet.answer("bad_leaves", account, region)["containerServices"]
        where = f"account_id = '{account}' AND region = '{region}'"
        cs = rows(db, f"SELECT * FROM container_services WHERE {where} ORDER BY service_name")
        assert [r["service_name"] for r in cs] == sorted(s["containerServiceName"] for s in served)
        assert [r["arn"] for r in cs] == [
            s["arn"] for s in sorted(served, key=lambda s: s["containerServiceName"])
        ]
        cons = rows(db, f"SELECT * FROM containers WHERE {where} AND slot = 'current'")
        assert len(cons) == sum(len(s["currentDeployment"]["containers"]) for s in served)
        for c in cons:
            # 80 -> a list, 443 -> an object, 53 -> a number: each NULL, the port kept
            assert dict(c["ports"]) == {"80": None, "443": None, "53": None}
            assert c["command"] is None or c["command"] == ["serve", None, None]
        by_name = {s["containerServiceName"]: s for s in served}
        for r in cs:  # the tags that are objects are kept; the two that are not are dropped
            tags = by_name[r["service_name"]]["tags"]
            assert len(tags) >= 2 and not isinstance(tags[0], dict)
            assert dict(r["tags"]) == {
                t["key"]: t.get("value") for t in tags if isinstance(t, dict)
            }
    errors = rows(db, "SELECT account_id, region, error_code, message FROM errors")
    assert errors and {e["error_code"] for e in errors} == {"UnexpectedShape"}
    text = "\n".join(e["message"] for e in errors)
    assert ".ports['80']: expected string, got list" in text
    assert ".ports['443']: expected string, got dict" in text
    assert ".ports['53']: expected string, got int" in text
    assert "tags[0]: expected object, got str" in text
    assert ".command: expected list, got str" in text


# --------------------------------------------------------------------------- property


def _leaves(v: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every leaf (and every non-empty container) of a JSON value."""
    out: list[tuple[Any, ...]] = [path] if path else []
    if isinstance(v, dict):
        for k, x in v.items():
            out += _leaves(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _leaves(x, (*path, i))
    return out


def _set(v: Any, path: tuple[Any, ...], new: Any) -> None:
    for step in path[:-1]:
        v = v[step]
    v[path[-1]] = new


IDENTITY = ("containerServiceName", "arn")
WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.sampled_from(["\ud800", "", "HTTP"]),
    st.lists(st.one_of(st.integers(), st.text(max_size=3), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=3), st.one_of(st.integers(), st.text(max_size=3)), max_size=2),
)
_FLEET = Fleet(2, seed=3)
VALID = [
    svc
    for acct in _FLEET.all_account_ids
    for region in _FLEET.regions
    for svc in _FLEET.services(acct, region)
]
CTX = TargetContext("r", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "1", None, R1)


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    picks=st.lists(st.integers(min_value=0, max_value=len(VALID) - 1), min_size=1, max_size=4),
    data=st.data(),
)
def test_wrong_leaves_anywhere_never_cost_a_service(picks: list[int], data: st.DataObject) -> None:
    services = [copy.deepcopy(VALID[i]) for i in picks]
    for svc in services:
        leaves = [p for p in _leaves(svc) if p[0] not in IDENTITY]
        for path in data.draw(st.lists(st.sampled_from(leaves), max_size=4), label="paths"):
            value = data.draw(WRONG, label=repr(path))
            with contextlib.suppress(KeyError, IndexError, TypeError):
                _set(svc, path, value)  # fails when an earlier replacement removed that part
    for fp in (Fingerprinter(b"k"), None):
        tables, anomalies = flatten(CTX, copy.deepcopy(services), fp)  # never raises
        stored = tables["container_services"].to_pylist()
        assert [r["service_name"] for r in stored] == [s["containerServiceName"] for s in services]
        assert [r["arn"] for r in stored] == [s["arn"] for s in services]
        assert all(a.error_code != "FlattenError" for a in anomalies), anomalies
        for name, t in tables.items():
            assert t.schema == schema.INVENTORY_TABLES[name]
