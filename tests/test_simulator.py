"""The bundled simulator, driven by real aioboto3 clients over HTTP."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from typing import Any

import aioboto3
import aiohttp
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from inventory.simulator import BASE_ACCESS_KEY, BASE_SECRET_KEY, Faults, Fleet, Simulator
from inventory.simulator.fleet import DEPLOYMENT_STATES, POWERS, STATES

CFG = Config(
    retries={"total_max_attempts": 1, "mode": "standard"},
    connect_timeout=2,
    read_timeout=5,
)
ROLE = "LightsailInventoryReader"


def wire(obj: Any) -> Any:
    """botocore's parsed answer back to wire values (datetimes -> epoch seconds)."""
    if isinstance(obj, dt.datetime):
        return round(obj.timestamp(), 3)
    if isinstance(obj, dict):
        return {k: wire(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [wire(v) for v in obj]
    return obj


async def assume(account_id: str, **kw: Any) -> dict[str, Any]:
    async with aioboto3.Session().client("sts", config=CFG) as sts:
        got = await sts.assume_role(
            RoleArn=f"arn:aws:iam::{account_id}:role/{ROLE}", RoleSessionName="test", **kw
        )
    return got["Credentials"]


def keys(creds: dict[str, Any] | None) -> dict[str, Any]:
    if creds is None:
        return {}
    return {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }


async def services(
    region: str, creds: dict[str, Any] | None = None, config: Config = CFG, **kw: Any
) -> list[dict[str, Any]]:
    async with aioboto3.Session().client(
        "lightsail", region_name=region, config=config, **keys(creds)
    ) as ls:
        got = await ls.get_container_services(**kw)
    return got["containerServices"]


async def error_code(coro: Any) -> str:
    with pytest.raises(ClientError) as info:
        await coro
    return str(info.value.response["Error"]["Code"])


# --------------------------------------------------------------------------- fleet
def test_fleet_is_deterministic_and_accounts_look_real() -> None:
    a, b = Fleet(40, seed=7), Fleet(40, seed=7)
    assert a.account_ids == b.account_ids
    assert a.truth() == b.truth()
    assert Fleet(40, seed=8).account_ids != a.account_ids
    assert len(set(a.account_ids)) == 40
    assert all(len(x) == 12 and x.isdigit() for x in a.account_ids)
    assert any(x.startswith("0") for x in a.account_ids)
    assert a.hub_account_id not in a.account_ids
    assert a.services(a.hub_account_id, "us-east-1") or a.regions_of(a.hub_account_id)


def test_fleet_covers_every_variant(fleet: Fleet) -> None:
    svcs = [s for _, _, s in fleet.iter_services()]
    assert {s["state"] for s in svcs} == set(STATES)
    assert {s["power"] for s in svcs} == set(POWERS)
    deps = [s[k] for s in svcs for k in ("currentDeployment", "nextDeployment") if k in s]
    assert {d["state"] for d in deps} == set(DEPLOYMENT_STATES)
    assert any("currentDeployment" not in s for s in svcs)
    assert any("nextDeployment" in s for s in svcs)
    assert any(s.get("stateDetail") for s in svcs)
    assert any(s["isDisabled"] for s in svcs)
    for key, empty in (("tags", []), ("publicDomainNames", {})):
        assert any(key not in s for s in svcs)
        assert any(s.get(key) == empty for s in svcs)
        assert any(s.get(key) for s in svcs)
    assert any("privateRegistryAccess" not in s for s in svcs)
    containers = [c for d in deps for c in d["containers"].values()]
    images = [c["image"] for c in containers]
    assert any(i.startswith(":") for i in images)
    assert any(not i.startswith(":") and ":" not in i for i in images)  # untagged
    assert any(i.startswith("public.ecr.aws/") for i in images)
    for key, empty in (("command", []), ("environment", {}), ("ports", {})):
        assert any(key not in c for c in containers)
        assert any(c.get(key) == empty for c in containers)
        assert any(c.get(key) for c in containers)
    protocols = {p for c in containers for p in (c.get("ports") or {}).values()}
    assert protocols == {"HTTP", "HTTPS", "TCP", "UDP"}
    checks = [d["publicEndpoint"]["healthCheck"] for d in deps if "publicEndpoint" in d]
    assert any(h["path"] == "/" and h["successCodes"] == "200-499" for h in checks)
    assert any(h["successCodes"] != "200-499" for h in checks)
    assert any("publicEndpoint" not in d for d in deps)
    assert max(s["scale"] for s in svcs) > 1
    secrets = fleet.secrets()
    assert secrets and all(len(v) == 24 for v in secrets)
    assert "CANARY" not in json.dumps(svcs)


def test_fleet_wire_shape_matches_botocore_model(fleet: Fleet) -> None:
    model = botocore.session.get_session().get_service_model("lightsail")
    shape = model.operation_model("GetContainerServices").output_shape

    def check(value: Any, shape: Any, path: str) -> None:
        if shape.type_name == "structure":
            assert isinstance(value, dict), path
            assert set(value) <= set(shape.members), (path, set(value) - set(shape.members))
            for k, v in value.items():
                check(v, shape.members[k], f"{path}.{k}")
        elif shape.type_name == "list":
            assert isinstance(value, list), path
            for i, v in enumerate(value):
                check(v, shape.member, f"{path}[{i}]")
        elif shape.type_name == "map":
            assert isinstance(value, dict), path
            for k, v in value.items():
                check(v, shape.value, f"{path}[{k}]")
        elif shape.type_name == "timestamp":
            assert isinstance(value, float), path
        elif shape.type_name == "integer":
            assert isinstance(value, int), path
        elif shape.type_name == "boolean":
            assert isinstance(value, bool), path
        else:
            assert isinstance(value, str), path
            if getattr(shape, "enum", None):
                assert value in shape.enum, path

    for acct, region, _ in fleet.iter_services():
        check({"containerServices": fleet.services(acct, region)}, shape, f"{acct}/{region}")


def test_big_fleet_is_uneven_and_capped() -> None:
    big = Fleet(10_000, seed=3)  # its cost is measured by the benchmarks, not asserted here
    counts = Counter(
        n for a in big.account_ids[:2000] for n in big.regions_of(a).values()
    )  # per non-empty pair
    assert max(counts) <= 20 and max(counts) >= 15
    nonempty = sum(counts.values())
    assert nonempty < 0.2 * 2000 * len(big.regions)


def test_evolve_lists_known_changes(fleet: Fleet) -> None:
    nxt = fleet.evolve(1)
    kinds = {c.kind for c in nxt.changes}
    assert kinds >= {
        "service_added", "service_removed", "state", "power", "scale", "tags", "domains",
        "deployment_version", "deployment_state", "image", "ports", "env_added",
        "env_removed", "env_value",
    }  # fmt: skip
    assert fleet.evolve(1).changes == nxt.changes  # deterministic
    assert nxt.account_ids == fleet.account_ids
    for c in nxt.changes:
        old = fleet.find_service(c.account_id, c.region, c.service_name)
        new = nxt.find_service(c.account_id, c.region, c.service_name)
        if c.kind == "service_added":
            assert old is None and new == c.new
        elif c.kind == "service_removed":
            assert old == c.old and new is None
        else:
            assert old is not None and new is not None
            assert old["arn"] == new["arn"]
            assert c.field is not None
            assert lookup(new, c.field) == c.new
            assert lookup(old, c.field) == c.old
    third = nxt.evolve(2)
    assert third.changes_since(fleet) == nxt.changes + third.changes


def lookup(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


# --------------------------------------------------------------------------- STS
async def test_caller_identity_base_and_assumed(simulator: Simulator, fleet: Fleet) -> None:
    async with aioboto3.Session().client("sts", config=CFG) as sts:
        me = await sts.get_caller_identity()
    assert me["Account"] == fleet.hub_account_id
    acct = fleet.account_ids[1]
    creds = await assume(acct)
    assert creds["AccessKeyId"].startswith("ASIA")
    assert creds["Expiration"] > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=59)
    async with aioboto3.Session().client("sts", config=CFG, **keys(creds)) as sts:
        me = await sts.get_caller_identity()
    assert me["Account"] == acct
    assert me["Arn"] == f"arn:aws:sts::{acct}:assumed-role/{ROLE}/test"


async def test_assume_role_refusals(make_simulator: Any, fleet: Fleet) -> None:
    denied = fleet.account_ids[2]
    make_simulator(fleet=fleet, faults=Faults(denied_accounts={denied}, external_id="xyz"))
    ok = fleet.account_ids[1]
    assert await error_code(assume(denied, ExternalId="xyz")) == "AccessDenied"
    assert await error_code(assume("999999999999", ExternalId="xyz")) == "AccessDenied"
    assert await error_code(assume(ok)) == "AccessDenied"  # no ExternalId
    assert await error_code(assume(ok, ExternalId="nope")) == "AccessDenied"
    assert (await assume(ok, ExternalId="xyz"))["AccessKeyId"].startswith("ASIA")


# --------------------------------------------------------------------------- Lightsail
async def test_get_container_services_is_the_ground_truth(
    simulator: Simulator, fleet: Fleet
) -> None:
    for acct in fleet.account_ids:
        regions = fleet.regions_of(acct)
        if not regions:
            continue
        creds = await assume(acct)
        for region in [*regions, "ap-northeast-2"]:
            got = await services(region, creds)
            assert wire(got) == fleet.services(acct, region), (acct, region)
    # the base keys are the hub account
    for region in fleet.regions_of(fleet.hub_account_id):
        assert wire(await services(region)) == fleet.services(fleet.hub_account_id, region)
    calls = simulator.lightsail_calls()
    assert calls[(fleet.account_ids[0], "us-east-1")] == 1


async def test_region_comes_from_the_signature(simulator: Simulator, fleet: Fleet) -> None:
    acct = fleet.showcase_account_id
    assert acct is not None
    creds = await assume(acct)
    east = await services("us-east-1", creds)
    west = await services("eu-west-3", creds)
    assert {s["location"]["regionName"] for s in east} == {"us-east-1"}
    assert {s["location"]["regionName"] for s in west} == {"eu-west-3"}
    assert len(east) == 10 and len(west) == 4


async def test_single_service_deployments_images_regions(
    simulator: Simulator, fleet: Fleet
) -> None:
    acct = fleet.showcase_account_id
    assert acct is not None
    creds = await assume(acct)
    truth = fleet.services(acct, "us-east-1")
    svc = next(s for s in truth if "currentDeployment" in s)
    name = svc["containerServiceName"]
    assert wire(await services("us-east-1", creds, serviceName=name)) == [svc]
    assert await error_code(services("us-east-1", creds, serviceName="nope")) == (
        "NotFoundException"
    )
    async with aioboto3.Session().client(
        "lightsail", region_name="us-east-1", config=CFG, **keys(creds)
    ) as ls:
        deps = await ls.get_container_service_deployments(serviceName=name)
        images = await ls.get_container_images(serviceName=name)
        regions = await ls.get_regions()
    assert wire(deps["deployments"]) == fleet.deployments(acct, "us-east-1", name)["deployments"]
    assert (
        wire(deps["deployments"])[0 if "nextDeployment" not in svc else 1]
        == (svc["currentDeployment"])
    )
    assert (
        wire(images["containerImages"])
        == (fleet.images(acct, "us-east-1", name)["containerImages"])
    )
    assert [r["name"] for r in regions["regions"]] == list(fleet.regions)


async def test_unknown_keys_and_tokens_are_refused(simulator: Simulator, fleet: Fleet) -> None:
    creds = await assume(fleet.account_ids[1])
    bad_token = dict(creds, SessionToken="FwoGZXIvYXdzEnot-the-token")
    assert await error_code(services("us-east-1", bad_token)) == "UnrecognizedClientException"
    stranger = dict(creds, AccessKeyId="ASIAUNKNOWNUNKNOWN00")
    assert await error_code(services("us-east-1", stranger)) == "UnrecognizedClientException"
    async with aioboto3.Session().client("sts", config=CFG, **keys(bad_token)) as sts:
        assert await error_code(sts.get_caller_identity()) == "InvalidClientTokenId"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            simulator.url,
            data=b"{}",
            headers={
                "X-Amz-Target": "Lightsail_20161128.GetContainerServices",
                "Content-Type": "application/x-amz-json-1.1",
            },
        ) as resp,
    ):
        assert resp.status == 400
        assert resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert (await resp.json(content_type=None))["__type"] == (
            "MissingAuthenticationTokenException"
        )
    assert simulator.operation_stats("GetContainerServices")["denied"] == 3


async def test_credential_expiry_with_a_controlled_clock(make_simulator: Any, fleet: Fleet) -> None:
    now = [time.time()]
    sim = make_simulator(fleet=fleet, clock=lambda: now[0], faults=Faults(credential_ttl_s=1200))
    creds = await assume(fleet.account_ids[1], DurationSeconds=3600)
    expires = creds["Expiration"].timestamp()
    assert now[0] + 1190 <= expires <= now[0] + 1200  # capped at the ttl
    assert await services("us-east-1", creds) == []
    now[0] += 1201
    assert await error_code(services("us-east-1", creds)) == "ExpiredTokenException"
    fresh = await assume(fleet.account_ids[1])
    assert await services("us-east-1", fresh) == []
    sim.expire_all_credentials()
    assert await error_code(services("us-east-1", fresh)) == "ExpiredTokenException"
    assert sim.operation_stats("GetContainerServices")["expired"] == 2
    assert await error_code(assume(fleet.account_ids[1], DurationSeconds=50000)) == (
        "ValidationError"
    )


# --------------------------------------------------------------------------- faults
async def test_each_fault_gives_the_botocore_error(make_simulator: Any, fleet: Fleet) -> None:
    acct = fleet.showcase_account_id
    assert acct is not None
    faults = Faults(
        denied_regions={(acct, "eu-west-2"), ("*", "eu-west-3")},
        unenabled_regions={("*", "ap-southeast-3")},
        hang_regions={(acct, "eu-north-1")},
        malformed={(acct, "us-west-2")},
    )
    sim = make_simulator(fleet=fleet, faults=faults)
    creds = await assume(acct)
    assert await error_code(services("eu-west-2", creds)) == "AccessDeniedException"
    assert await error_code(services("eu-west-3")) == "AccessDeniedException"  # hub too
    hub_west = fleet.services(fleet.hub_account_id, "eu-west-2")
    assert wire(await services("eu-west-2")) == hub_west  # only that account is denied there
    assert await error_code(services("ap-southeast-3", creds)) == "UnrecognizedClientException"

    faults.throttle_rate = 1.0
    assert await error_code(services("us-east-1", creds)) == "ThrottlingException"
    faults.throttle_rate, faults.error_5xx_rate = 0.0, 1.0
    for _ in range(4):
        with pytest.raises(ClientError) as info:
            await services("us-east-1", creds)
        meta = info.value.response["ResponseMetadata"]
        assert meta["HTTPStatusCode"] in (500, 503)
        assert info.value.response["Error"]["Code"] in ("ServiceException", "ServiceUnavailable")
    faults.error_5xx_rate, faults.drop_rate = 0.0, 1.0
    with pytest.raises(ConnectionClosedError):
        await services("us-east-1", creds)
    faults.drop_rate = 0.0

    short = Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=0.3)
    with pytest.raises(ReadTimeoutError):  # the hung request ends at the client's read timeout
        await services("eu-north-1", creds, config=short)
    # the server lets go of the hung request once the client left (however long it takes
    # the loaded machine to notice: waited for, up to a minute)
    deadline = time.monotonic() + 60
    while sim.hanging and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sim.hanging == 0

    odd = await services("us-west-2", creds)
    assert isinstance(odd[0]["scale"], str) and odd[0]["scale"].isdigit()  # "3", not 3
    assert odd[0]["state"] == "EXPLODING"
    assert "image" not in next(iter(odd[0]["currentDeployment"]["containers"].values()))

    stats = sim.operation_stats("GetContainerServices")
    assert stats["throttled"] == 1 and stats["errors_5xx"] == 4 and stats["dropped"] == 1
    assert stats["hung"] == 1 and stats["denied"] == 3


async def test_latency_and_random_rates(make_simulator: Any, fleet: Fleet) -> None:
    faults = Faults(latency_ms=30, throttle_rate=0.3, seed=5)
    sim = make_simulator(fleet=fleet, faults=faults)
    start = time.monotonic()
    codes: Counter[str] = Counter()
    async with aioboto3.Session().client("lightsail", region_name="us-east-1", config=CFG) as ls:

        async def one() -> None:
            try:
                await ls.get_container_services()
                codes["ok"] += 1
            except ClientError as exc:
                codes[exc.response["Error"]["Code"]] += 1

        await asyncio.gather(*(one() for _ in range(100)))
    assert time.monotonic() - start > 0.027  # the injected latency (30 ms - 10%), at least
    assert set(codes) == {"ok", "ThrottlingException"}
    assert 10 < codes["ThrottlingException"] < 50
    assert sim.stats()["total_requests"] == 100


# --------------------------------------------------------------------------- Organizations
async def test_organizations(simulator: Simulator, fleet: Fleet) -> None:
    async with aioboto3.Session().client("organizations", config=CFG) as org:
        accounts = [
            a
            async for page in org.get_paginator("list_accounts").paginate()
            for a in page["Accounts"]
        ]
        first = await org.list_accounts(MaxResults=3)
        described = await org.describe_organization()
        roots = (await org.list_roots())["Roots"]
        root = roots[0]["Id"]
        ous = (await org.list_organizational_units_for_parent(ParentId=root))["OrganizationalUnits"]
        under_root = (await org.list_accounts_for_parent(ParentId=root))["Accounts"]
        nested = (await org.list_organizational_units_for_parent(ParentId=ous[0]["Id"]))[
            "OrganizationalUnits"
        ]
        assert await error_code(org.list_accounts_for_parent(ParentId="ou-zzzz-zzzzzzzz")) == (
            "ParentNotFoundException"
        )
    assert [a["Id"] for a in accounts] == list(fleet.all_account_ids)
    assert len(first["Accounts"]) == 3 and first["NextToken"]
    assert {a["Status"] for a in accounts} == {"ACTIVE", "SUSPENDED"}
    assert all(isinstance(a["JoinedTimestamp"], dt.datetime) for a in accounts)
    assert described["Organization"]["MasterAccountId"] == fleet.hub_account_id
    assert root.startswith("r-") and all(o["Id"].startswith("ou-") for o in ous)
    assert {a["Id"] for a in under_root} == set(fleet.accounts_under(root, recursive=False))
    assert nested  # the tree has depth
    assert set(fleet.accounts_under(root)) == set(fleet.all_account_ids)

    creds = await assume(fleet.account_ids[1])
    async with aioboto3.Session().client("organizations", config=CFG, **keys(creds)) as org:
        assert await error_code(org.list_accounts()) == "AccessDeniedException"


async def test_list_accounts_pagination_at_scale(make_simulator: Any) -> None:
    sim = make_simulator(accounts=205)
    async with aioboto3.Session().client("organizations", config=CFG) as org:
        pages = [p async for p in org.get_paginator("list_accounts").paginate()]
    ids = [a["Id"] for p in pages for a in p["Accounts"]]
    assert ids == list(sim.fleet.all_account_ids)
    assert len(pages) == 11


# --------------------------------------------------------------------------- control
async def test_stats_truth_and_set_fleet(simulator: Simulator, fleet: Fleet) -> None:
    acct = fleet.showcase_account_id
    assert acct is not None
    creds = await assume(acct)
    await services("us-east-1", creds)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{simulator.url}/_sim/stats") as resp:
            stats = await resp.json()
        async with http.get(f"{simulator.url}/_sim/truth") as resp:
            truth = await resp.json()
        assert stats["lightsail_calls"] == {f"{acct}/us-east-1": 1}
        assert stats["operations"]["AssumeRole"]["ok"] == 1
        assert stats["total_requests"] == 2
        assert truth == json.loads(json.dumps(fleet.truth()))
        async with http.post(f"{simulator.url}/_sim/reset-stats") as resp:
            assert resp.status == 200
    assert simulator.stats()["total_requests"] == 0

    nxt = fleet.evolve(1)
    simulator.set_fleet(nxt)
    for region in nxt.regions_of(acct):
        assert wire(await services(region, creds)) == nxt.services(acct, region)


def test_thread_mode_and_env(fleet: Fleet) -> None:
    with Simulator(fleet) as sim:
        env = sim.env()
        assert env["AWS_ENDPOINT_URL_LIGHTSAIL"] == sim.url == env["AWS_ENDPOINT_URL_STS"]
        assert env["AWS_ACCESS_KEY_ID"] == BASE_ACCESS_KEY
        with urllib.request.urlopen(f"{sim.url}/_sim/stats", timeout=5) as resp:
            assert json.loads(resp.read())["total_requests"] == 0
    sim.stop()  # idempotent


async def test_async_mode(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Simulator(fleet) as sim:
        for k, v in sim.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        got = await services("us-east-1")
        assert wire(got) == fleet.services(fleet.hub_account_id, "us-east-1")


def test_process_mode(fleet: Fleet) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "inventory.simulator", "--accounts", "6", "--seed", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ")
        with urllib.request.urlopen(f"{url}/_sim/truth", timeout=5) as resp:
            truth = json.loads(resp.read())
        assert truth["account_ids"] == list(fleet.account_ids)
        session = botocore.session.get_session()
        client = session.create_client(
            "lightsail",
            region_name="us-east-1",
            endpoint_url=url,
            aws_access_key_id=BASE_ACCESS_KEY,
            aws_secret_access_key=BASE_SECRET_KEY,
            config=CFG,
        )
        got = client.get_container_services()["containerServices"]
        assert wire(got) == copy.deepcopy(fleet.services(fleet.hub_account_id, "us-east-1"))
    finally:
        proc.terminate()
        assert proc.wait(60) in (0, -15)  # it handles SIGTERM, or dies of it


# --------------------------------------------------------------------------- signatures
async def _status_and_code(coro: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as info:
        await coro
    response = info.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], str(response["Error"]["Code"])


async def _sts_identity(**kw: Any) -> dict[str, Any]:
    async with aioboto3.Session().client("sts", config=CFG, **kw) as sts:
        return dict(await sts.get_caller_identity())


async def _services_as(region: str, **kw: Any) -> list[dict[str, Any]]:
    async with aioboto3.Session().client("lightsail", region_name=region, config=CFG, **kw) as ls:
        return list((await ls.get_container_services())["containerServices"])


async def _org_accounts(**kw: Any) -> dict[str, Any]:
    async with aioboto3.Session().client("organizations", config=CFG, **kw) as org:
        return dict(await org.list_accounts())


async def test_every_signature_is_checked(simulator: Simulator, fleet: Fleet) -> None:
    """The simulator verifies SigV4 with botocore's SigV4Auth and the secret it knows: the
    right secret passes (the base keys and assumed roles, session tokens included); a wrong
    one is answered as AWS answers it, per protocol."""
    acct = fleet.account_ids[0]
    creds = await assume(acct)  # signed with the base keys: verified
    assert (await _sts_identity())["Account"] == fleet.hub_account_id
    assert wire(await services("us-east-1", creds)) == fleet.services(acct, "us-east-1")

    wrong_base = {"aws_access_key_id": BASE_ACCESS_KEY, "aws_secret_access_key": "not-it"}
    assert await _status_and_code(_sts_identity(**wrong_base)) == (403, "SignatureDoesNotMatch")
    lightsail = await _status_and_code(_services_as("us-east-1", **wrong_base))
    assert lightsail == (403, "InvalidSignatureException")
    assert await _status_and_code(_org_accounts(**wrong_base)) == (
        403,
        "InvalidSignatureException",
    )
    forged = dict(creds, SecretAccessKey=creds["SecretAccessKey"][:-1] + "x")
    assert await _status_and_code(services("us-east-1", forged)) == (
        403,
        "InvalidSignatureException",
    )
    # a key the simulator never issued cannot be verified: refused as unknown
    stranger = {"aws_access_key_id": "AKIDSTRANGER", "aws_secret_access_key": "whatever"}
    assert await _status_and_code(_sts_identity(**stranger)) == (403, "InvalidClientTokenId")
    assert (await _status_and_code(_services_as("us-east-1", **stranger)))[1] == (
        "UnrecognizedClientException"
    )
    counted = simulator.operation_stats("GetContainerServices")["bad_signature"]
    assert counted == 2 and simulator.operation_stats("GetCallerIdentity")["bad_signature"] == 1


async def test_a_request_changed_after_signing_is_refused(simulator: Simulator) -> None:
    """What the signature covers: the body, the path and the signed headers as they arrive."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    base = ReadOnlyCredentials(BASE_ACCESS_KEY, BASE_SECRET_KEY, None)
    target = "Lightsail_20161128.GetContainerServices"

    def signed(path: str, body: bytes) -> dict[str, str]:
        req = AWSRequest(
            method="POST",
            url=simulator.url + path,
            data=body,
            headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
        )
        SigV4Auth(base, "lightsail", "us-east-1").add_auth(req)
        return dict(req.headers.items())

    async def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(simulator.url + path, data=body, headers=headers) as resp,
        ):
            return resp.status, await resp.read()

    good = signed("/", b"{}")
    assert (await post("/", b"{}", good))[0] == 200
    for path, body, headers in [
        ("/", b'{"serviceName":"x"}', good),  # another body
        ("/other", b"{}", good),  # another path
        ("/", b"{}", dict(good, **{"X-Amz-Date": "20200101T000000Z"})),  # another date
    ]:
        status, answer = await post(path, body, headers)
        assert (status, json.loads(answer)["__type"]) == (403, "InvalidSignatureException")


def test_signature_check_off_for_a_floor(make_simulator: Any, fleet: Fleet) -> None:
    """verify_signatures=False (`--no-verify-signatures`): any signature is accepted, and a
    key without a session token is the base identity."""
    from inventory.simulator.__main__ import build, parse_args

    assert build(parse_args([])).verify_signatures is True
    assert build(parse_args(["--no-verify-signatures"])).verify_signatures is False
    make_simulator(fleet=fleet, verify_signatures=False)
    stranger = {"aws_access_key_id": "AKIDSTRANGER", "aws_secret_access_key": "whatever"}
    got = asyncio.run(_services_as("us-east-1", **stranger))
    assert wire(got) == fleet.services(fleet.hub_account_id, "us-east-1")
