"""The lean request path answers and fails exactly like the aiobotocore client."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError
from helpers import botocore_request

from inventory.aws import credentials as creds_mod
from inventory.aws.lean import LeanHTTP, LeanLightsailClient
from inventory.aws.retry import classify
from inventory.aws.session import SharedCredentialsSession, client_config
from inventory.model import Options
from inventory.simulator import BASE_ACCESS_KEY, BASE_SECRET_KEY, Faults, Fleet, Simulator

BASE = ReadOnlyCredentials(BASE_ACCESS_KEY, BASE_SECRET_KEY, None)


async def _both(region: str, creds: ReadOnlyCredentials) -> list[object]:
    """Call GetContainerServices once through each path; return answers or exceptions."""
    opts = Options(timeout=2.0)
    session = SharedCredentialsSession()
    out: list[object] = []
    async with (
        session.create_client(
            "lightsail", region_name=region, config=client_config(opts, 4)
        ) as client,
        LeanHTTP(limit=4, timeout=2.0) as http,
    ):
        lean = LeanLightsailClient(http, region, client.meta.endpoint_url, "test")
        for c in (client, lean):
            with creds_mod.use(creds):
                try:
                    out.append(await c.get_container_services())
                except Exception as exc:
                    out.append(exc)
    return out


def test_same_services_as_botocore(simulator) -> None:
    fleet: Fleet = simulator.fleet
    boto, lean = asyncio.run(_both("us-east-1", BASE))
    assert isinstance(boto, dict) and isinstance(lean, dict)
    truth = fleet.services(fleet.hub_account_id, "us-east-1")
    assert [s["containerServiceName"] for s in lean["containerServices"]] == [
        s["containerServiceName"] for s in truth
    ]
    # botocore parses timestamps; lean keeps epoch seconds: the same instants
    for b, raw in zip(boto["containerServices"], lean["containerServices"], strict=True):
        assert b["createdAt"].timestamp() == pytest.approx(raw["createdAt"])


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        (Faults(throttle_rate=1.0), "ThrottlingException"),
        (Faults(denied_regions={("*", "us-east-1")}), "AccessDeniedException"),
        (Faults(unenabled_regions={("*", "us-east-1")}), "UnrecognizedClientException"),
    ],
)
def test_errors_are_botocores(make_simulator, faults: Faults, code: str) -> None:
    make_simulator(faults=faults)
    boto, lean = asyncio.run(_both("us-east-1", BASE))
    assert isinstance(boto, ClientError) and isinstance(lean, ClientError)
    assert boto.response["Error"]["Code"] == lean.response["Error"]["Code"] == code
    assert boto.response["Error"]["Message"] == lean.response["Error"]["Message"]
    assert (
        boto.response["ResponseMetadata"]["HTTPStatusCode"]
        == lean.response["ResponseMetadata"]["HTTPStatusCode"]
    )
    assert classify(boto) == classify(lean)


def test_5xx_and_unknown_token_classify_alike(make_simulator) -> None:
    make_simulator(faults=Faults(error_5xx_rate=1.0))
    boto, lean = asyncio.run(_both("eu-west-2", BASE))
    assert classify(boto).kind == classify(lean).kind  # type: ignore[arg-type]
    assert classify(lean).retryable  # type: ignore[arg-type]
    forged = ReadOnlyCredentials("ASIAFORGED", "nope", "token")
    boto, lean = asyncio.run(_both("eu-west-2", forged))
    assert isinstance(lean, ClientError)
    assert classify(boto) == classify(lean)  # type: ignore[arg-type]
    assert not classify(lean).retryable


def test_dropped_connection_is_retryable(make_simulator) -> None:
    make_simulator(faults=Faults(drop_rate=1.0))
    boto, lean = asyncio.run(_both("us-east-1", BASE))
    assert classify(lean).code == classify(boto).code == "ConnectionError"  # type: ignore[arg-type]
    assert classify(lean).retryable  # type: ignore[arg-type]


def test_unknown_engine_is_a_usage_error() -> None:
    from inventory.errors import UsageError
    from inventory.plan.config import validate_options

    with pytest.raises(UsageError, match="--engine 'fast'"):
        validate_options(Options(engine="fast"))


@pytest.mark.parametrize(
    "url",
    [
        "https://lightsail.eu-west-2.amazonaws.com/",
        "https://lightsail.eu-west-2.amazonaws.com:443/",
        "http://127.0.0.1:8123/",
        "https://proxy.example.com:8443/lightsail/",
        "http://127.0.0.1:8123/gw/./lightsail//v1",
        "https://LightSail.EU-West-2.amazonaws.com/",
        "https://proxy.example.com/p%20q/~x/../y?stage=b&a=1",
    ],
)
@pytest.mark.parametrize(
    "token", [None, "FwoGZXIvYXdzEJr//////////token==", "  FwoG  token\twith   spaces  "]
)
def test_signature_is_botocores(url: str, token: str | None) -> None:
    """The cached-key signer produces exactly botocore SigV4Auth's headers."""
    import datetime as dt

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    from inventory.aws.lean import BODY, CONTENT_TYPE, TARGET, Signer

    creds = ReadOnlyCredentials("ASIAEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", token)
    base = {"Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET, "User-Agent": "t"}
    request = AWSRequest(method="POST", url=url, data=BODY, headers=dict(base))
    SigV4Auth(creds, "lightsail", "eu-west-2").add_auth(request)
    theirs = dict(request.headers.items())
    when = dt.datetime.strptime(theirs["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    signer = Signer(url, "eu-west-2")
    ours = signer.headers(creds, base, now=when)
    assert ours == theirs
    assert signer.headers(creds, base, now=when) == theirs  # from the cached key too


def test_proxy_from_the_environment(monkeypatch) -> None:
    """HTTPS_PROXY and NO_PROXY apply, looked up once per client rather than per request."""
    from inventory.aws.lean import env_proxy

    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    proxy, auth = env_proxy("https://lightsail.eu-west-2.amazonaws.com/")
    assert proxy == "http://proxy.internal:3128"
    assert auth is not None and auth.login == "user"
    assert env_proxy("http://127.0.0.1:8123/") == (None, None)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8123/prefix",
        "http://127.0.0.1:8123/prefix/",
        "https://lightsail.eu-west-2.amazonaws.com",
        "https://proxy.example.com:8443/a/./b//lightsail?stage=x&a=1",
    ],
)
def test_request_url_and_headers_are_botocores(endpoint: str) -> None:
    """For any endpoint (a path, a port, a query), the lean client sends to the URL
    botocore's client sends to, with the same signature (session token included)."""
    import datetime as dt

    from inventory.aws.lean import USER_AGENT

    creds = ReadOnlyCredentials("ASIAEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/EXAMPLE", "FwoG//tok==")
    theirs, _ = botocore_request(
        "lightsail", lambda c: c.get_container_services(), creds, "eu-west-2", endpoint
    )
    lean = LeanLightsailClient(LeanHTTP(limit=1, timeout=1.0), "eu-west-2", endpoint, USER_AGENT)
    assert lean.url == theirs.url
    when = dt.datetime.strptime(theirs.headers["X-Amz-Date"].decode(), "%Y%m%dT%H%M%SZ")
    ours = lean._signer.headers(creds, {}, now=when.replace(tzinfo=dt.UTC))
    assert ours["Authorization"] == theirs.headers["Authorization"].decode()
    assert ours["X-Amz-Security-Token"] == theirs.headers["X-Amz-Security-Token"].decode()


def test_signing_keys_per_key_id_and_day_bounded_and_forgotten() -> None:
    from inventory.aws.lean import SigningKeys

    keys = SigningKeys(limit=3)
    k1 = keys.key("AKID1", "s1", "20261129", "us-east-1", "lightsail")
    assert keys.key("AKID1", "s1", "20261129", "us-east-1", "lightsail") is k1  # cached
    assert keys.key("AKID1", "s1", "20261129", "eu-west-2", "lightsail") != k1  # per region
    assert keys.key("AKID1", "s1", "20261130", "us-east-1", "lightsail") != k1  # a new day
    assert keys.key("AKID1", "s2", "20261130", "us-east-1", "lightsail") != k1  # new secret
    assert len(keys) == 1  # one entry per key id, its current day only
    for n in range(2, 6):
        keys.key(f"AKID{n}", "s", "20261130", "us-east-1", "lightsail")
    assert len(keys) == 3  # bounded: the oldest went
    keys.forget("AKID5")
    keys.forget("AKID-never-seen")
    assert len(keys) == 2


class _PathRecorder(Simulator):
    """Records the raw path (and query) of every request it receives."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.paths: list[str] = []

    async def _handle(self, request: Any) -> Any:
        self.paths.append(request.raw_path)
        return await super()._handle(request)


async def _collect(engine: str, regions: tuple[str, ...], accounts: list[Any]) -> Any:
    from inventory.run.collect import Collector

    async with Collector(Options(engine=engine, timeout=5.0), regions) as collector:
        results = [r async for r in collector.results(accounts)]
    return collector, results


def test_endpoint_with_a_path_and_port_end_to_end(sim_env: Any, monkeypatch: Any) -> None:
    """AWS_ENDPOINT_URL_LIGHTSAIL with a path (dot segments, a double slash) on a port that
    is not 443: the lean engine sends where botocore sends, signed with each account's
    assumed role (session tokens), and the simulator verifies every signature. When an
    account is done, the signing keys derived for its credentials are gone."""
    from inventory.model import Account

    regions = ("us-east-1", "eu-west-2")
    sim = sim_env(_PathRecorder(Fleet(4, seed=1, regions=regions)))
    monkeypatch.setenv("AWS_ENDPOINT_URL_LIGHTSAIL", sim.url + "/gw/./lightsail//v1")
    accounts = [
        Account(a, role_arn=f"arn:aws:iam::{a}:role/LightsailInventoryReader")
        for a in sim.fleet.account_ids
    ]
    seen = {}
    for engine in ("botocore", "lean"):
        sim.paths.clear()
        collector, results = asyncio.run(_collect(engine, regions, accounts))
        assert [r.error for r in results] == [None] * len(accounts) * len(regions), engine
        got = {(r.account.id, r.region): len(r.services or ()) for r in results}
        assert got == {
            (a.id, r): len(sim.fleet.services(a.id, r)) for a in accounts for r in regions
        }
        seen[engine] = set(sim.paths) - {"/"}  # "/": STS
        if engine == "lean":
            assert collector.lean_http is not None and len(collector.lean_http.keys) == 0
    assert seen["lean"] == seen["botocore"] == {"/gw/./lightsail//v1"}
    assert sim.operation_stats("GetContainerServices")["bad_signature"] == 0


# --------------------------------------------------------------------------- AssumeRole

STS_PARAMS = {
    "RoleArn": "arn:aws:iam::123456789012:role/LightsailInventoryReader",
    "RoleSessionName": "lightsail-inventory@20261129T140057Z-1b9f00",
    "ExternalId": "correct horse&battery/staple=+",
    "DurationSeconds": 900,
}


@pytest.mark.parametrize(
    "url",
    [
        "https://sts.amazonaws.com/",
        "https://sts.eu-west-2.amazonaws.com/",
        "http://127.0.0.1:8123/",
        "https://proxy.example.com:8443/p%20q/./sts//x?stage=b&a=1",
    ],
)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////token==", "  FwoG  tok\t "])
def test_sts_signature_is_botocores(url: str, token: str | None) -> None:
    """The signer, made for STS's query protocol (its content type, no X-Amz-Target, the
    form body's own hash), produces exactly botocore SigV4Auth's headers."""
    import datetime as dt
    import hashlib
    from urllib.parse import urlencode

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    from inventory.aws.lean import STS_CONTENT_TYPE, Signer

    creds = ReadOnlyCredentials(
        "AKIAEXAMPLEBASE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", token
    )
    body = urlencode({"Action": "AssumeRole", "Version": "2011-06-15", **STS_PARAMS}).encode()
    base = {"Content-Type": STS_CONTENT_TYPE, "User-Agent": "t"}
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(base))
    SigV4Auth(creds, "sts", "us-east-1").add_auth(request)
    theirs = dict(request.headers.items())
    when = dt.datetime.strptime(theirs["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    signer = Signer(url, "us-east-1", "sts", content_type=STS_CONTENT_TYPE, target=None)
    digest = hashlib.sha256(body).hexdigest()
    assert signer.headers(creds, base, now=when, body_sha256=digest) == theirs
    assert signer.headers(creds, base, now=when, body_sha256=digest) == theirs  # cached key


@pytest.mark.parametrize(
    ("region", "endpoint", "regional", "signs"),
    [
        ("us-east-1", None, None, "us-east-1"),  # sts.us-east-1.amazonaws.com
        ("eu-west-2", None, None, "eu-west-2"),
        ("aws-global", None, None, "us-east-1"),  # the global endpoint
        ("eu-west-2", None, "legacy", "us-east-1"),  # legacy: the global endpoint too
        ("cn-north-1", None, None, "cn-north-1"),  # another partition
        ("eu-west-2", "http://127.0.0.1:8123/prefix", None, "eu-west-2"),  # AWS_ENDPOINT_URL_STS
    ],
)
def test_assume_role_request_is_botocores(
    monkeypatch: pytest.MonkeyPatch,
    region: str,
    endpoint: str | None,
    regional: str | None,
    signs: str,
) -> None:
    """For the endpoint and region botocore's STS client resolves, the lean AssumeRole
    sends the same form body to the same URL, signed for the same region, with the same
    signature and session token."""
    import datetime as dt

    from inventory.aws.lean import USER_AGENT, LeanSTSClient

    if regional is not None:
        monkeypatch.setenv("AWS_STS_REGIONAL_ENDPOINTS", regional)
    else:
        monkeypatch.delenv("AWS_STS_REGIONAL_ENDPOINTS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_STS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    creds = ReadOnlyCredentials("ASIAEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/EXAMPLE", "FwoG//tok==")
    theirs, client = botocore_request(
        "sts", lambda c: c.assume_role(**STS_PARAMS), creds, region, endpoint
    )
    lean = LeanSTSClient(
        LeanHTTP(limit=1, timeout=1.0),
        client.meta.endpoint_url,
        client.meta.region_name,
        USER_AGENT,
    )
    assert lean.url == theirs.url
    assert lean.region == signs
    assert f"/{signs}/sts/aws4_request" in theirs.headers["Authorization"].decode()
    body, digest = lean.request(dict(STS_PARAMS))
    theirs_body = theirs.body if isinstance(theirs.body, bytes) else theirs.body.encode()
    assert body == theirs_body
    when = dt.datetime.strptime(theirs.headers["X-Amz-Date"].decode(), "%Y%m%dT%H%M%SZ")
    ours = lean._signer.headers(creds, {}, now=when.replace(tzinfo=dt.UTC), body_sha256=digest)
    assert ours["Authorization"] == theirs.headers["Authorization"].decode()
    assert ours["X-Amz-Security-Token"] == theirs.headers["X-Amz-Security-Token"].decode()
    assert lean._headers["Content-Type"] == theirs.headers["Content-Type"].decode()


async def _both_sts(params: dict[str, Any], creds: ReadOnlyCredentials) -> list[Any]:
    """AssumeRole once through the aiobotocore STS client and once through LeanSTSClient
    (at that client's endpoint and region); answers or exceptions."""
    from inventory.aws.lean import USER_AGENT, LeanSTSClient

    opts = Options(timeout=5.0)
    session = SharedCredentialsSession()
    out: list[Any] = []
    async with (
        session.create_client("sts", region_name="us-east-1", config=client_config(opts, 4)) as sts,
        LeanHTTP(limit=4, timeout=5.0, max_answer_bytes=1024 * 1024) as http,
    ):
        lean = LeanSTSClient(http, sts.meta.endpoint_url, sts.meta.region_name, USER_AGENT)
        for client in (sts, lean):
            with creds_mod.use(creds):
                try:
                    out.append(await client.assume_role(**params))
                except Exception as exc:
                    out.append(exc)
    return out


def _role(account: str) -> str:
    return f"arn:aws:iam::{account}:role/LightsailInventoryReader"


def test_assume_role_answers_as_botocore(make_simulator) -> None:
    """The lean answer is botocore's (what is read of it): credentials the simulator issued
    (they sign a Lightsail call it accepts), the same tz-aware expiry, the same role user."""
    sim = make_simulator(accounts=2, faults=Faults(external_id="ext-42"))
    account = sim.fleet.account_ids[0]
    params = {"RoleArn": _role(account), "RoleSessionName": "s@run-1", "ExternalId": "ext-42"}
    boto, lean = asyncio.run(_both_sts(params, BASE))
    assert isinstance(boto, dict) and isinstance(lean, dict), (boto, lean)
    assert set(lean["Credentials"]) == set(boto["Credentials"])
    issued = {c.access_key_id: c for c in sim.issued_credentials()}
    got = lean["Credentials"]
    cred = issued[got["AccessKeyId"]]
    assert (got["SecretAccessKey"], got["SessionToken"]) == (
        cred.secret_access_key,
        cred.session_token,
    )
    for answer in (lean, boto):  # the expiry the simulator issued, as a tz-aware datetime
        expiration = answer["Credentials"]["Expiration"]
        issued_at = issued[answer["Credentials"]["AccessKeyId"]].expires_at
        assert expiration.tzinfo is not None and expiration.timestamp() == int(issued_at)
    assert set(lean["AssumedRoleUser"]) == set(boto["AssumedRoleUser"])
    assert lean["AssumedRoleUser"]["Arn"] == boto["AssumedRoleUser"]["Arn"]
    assert lean["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert sim.operation_stats("AssumeRole")["bad_signature"] == 0
    answer = asyncio.run(_both(sim.fleet.regions[0], creds_mod.from_sts(lean)))[1]
    assert isinstance(answer, dict) and "containerServices" in answer


@pytest.mark.parametrize(
    ("faults", "params", "creds", "code"),
    [
        (Faults(denied_accounts={"*"}), {}, BASE, "AccessDenied"),
        (Faults(external_id="right"), {"ExternalId": "wrong"}, BASE, "AccessDenied"),
        (Faults(), {"RoleSessionName": "no spaces allowed"}, BASE, "ValidationError"),
        (Faults(), {}, ReadOnlyCredentials("ASIAFORGED", "x", "tok"), "InvalidClientTokenId"),
        (
            Faults(),
            {},
            ReadOnlyCredentials(BASE_ACCESS_KEY, "wrong", None),
            "SignatureDoesNotMatch",
        ),
    ],
)
def test_assume_role_errors_are_botocores(
    make_simulator, faults: Faults, params: dict[str, Any], creds: ReadOnlyCredentials, code: str
) -> None:
    """An STS error answer raises the ClientError botocore raises: same code, message, type,
    HTTP status, text, and the same classification."""
    sim = make_simulator(accounts=2, faults=faults)
    account = sim.fleet.account_ids[0]
    if faults.denied_accounts == {"*"}:
        faults.denied_accounts = {account}
    call = {"RoleArn": _role(account), "RoleSessionName": "s@run-1", **params}
    boto, lean = asyncio.run(_both_sts(call, creds))
    assert isinstance(boto, ClientError) and isinstance(lean, ClientError), (boto, lean)
    assert lean.response["Error"] == boto.response["Error"]
    assert lean.response["Error"]["Code"] == code
    assert (
        lean.response["ResponseMetadata"]["HTTPStatusCode"]
        == boto.response["ResponseMetadata"]["HTTPStatusCode"]
    )
    assert str(lean) == str(boto)
    assert classify(lean) == classify(boto)


class _Recorder(Simulator):
    """Records the User-Agent and Action (STS) or X-Amz-Target of every request."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.agents: list[tuple[str, str]] = []

    async def _handle(self, request: Any) -> Any:
        body = await request.read()
        what = request.headers.get("X-Amz-Target") or body.decode().partition("&")[0]
        self.agents.append((what, " | ".join(request.headers.getall("User-Agent", []))))
        return await super()._handle(request)


def test_assume_role_redirect_and_huge_answer_are_refused(make_simulator) -> None:
    """A 307 is not followed (UnexpectedRedirect), an answer over the cap is not read past it
    (AnswerTooLarge): both classified as refusals, not retried."""
    from inventory.aws.bounded import AnswerTooLarge, UnexpectedRedirect

    sim = make_simulator(accounts=2, faults=Faults(redirect_sts=True, redirect_to="http://x.test"))
    call = {"RoleArn": _role(sim.fleet.account_ids[0]), "RoleSessionName": "s@run-1"}
    _, lean = asyncio.run(_both_sts(call, BASE))
    assert isinstance(lean, UnexpectedRedirect), lean
    assert "http://x.test/" in str(lean) and not classify(lean).retryable

    account = sim.fleet.account_ids[1]
    sim.faults = Faults(
        huge_answers={(account, "us-east-1")},
        huge_operations=frozenset({"AssumeRole"}),
        huge_bytes=8 * 1024 * 1024,
    )
    call = {"RoleArn": _role(account), "RoleSessionName": "s@run-1"}
    _, lean = asyncio.run(_both_sts(call, BASE))  # the lean client reads at most 1 MiB
    assert isinstance(lean, AnswerTooLarge), lean
    assert classify(lean).code == "AnswerTooLarge" and not classify(lean).retryable


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{}", "not XML"),
        (
            b"<AssumeRoleResponse><AssumeRoleResult/></AssumeRoleResponse>",
            "no Credentials.AccessKeyId",
        ),
        (
            b"<R><AssumeRoleResult><Credentials><AccessKeyId>A</AccessKeyId><SecretAccessKey>"
            b"S</SecretAccessKey><SessionToken>T</SessionToken><Expiration>soon</Expiration>"
            b"</Credentials></AssumeRoleResult></R>",
            "Expiration is not a timestamp",
        ),
    ],
)
def test_assume_role_answer_of_unexpected_shape(body: bytes, problem: str) -> None:
    """A 200 answer without what is read from it is a parse error naming what is missing,
    never its text (it may hold secrets)."""
    from botocore.parsers import ResponseParserError

    from inventory.aws.lean import parse_assume_role

    with pytest.raises(ResponseParserError, match=problem) as err:
        parse_assume_role(200, body)
    assert "S<" not in str(err.value) and classify(err.value).code == "ResponseParserError"


def test_parse_assume_role_reads_aws_answer() -> None:
    """AWS's answer (its namespace, fractional seconds) and one without an offset (UTC)."""
    import datetime as dt

    from inventory.aws.lean import parse_assume_role

    body = (
        b'<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        b"<AssumeRoleResult><SourceIdentity>me</SourceIdentity><AssumedRoleUser>"
        b"<Arn>arn:aws:sts::123456789012:assumed-role/R/s</Arn><AssumedRoleId>AROA1:s"
        b"</AssumedRoleId></AssumedRoleUser><Credentials><AccessKeyId>ASIA1</AccessKeyId>"
        b"<SecretAccessKey>sec</SecretAccessKey><SessionToken>tok</SessionToken>"
        b"<Expiration>2011-07-15T23:28:33.359Z</Expiration></Credentials>"
        b"<PackedPolicySize>6</PackedPolicySize></AssumeRoleResult><ResponseMetadata>"
        b"<RequestId>c6104cbe</RequestId></ResponseMetadata></AssumeRoleResponse>"
    )
    got = parse_assume_role(200, body)
    assert got == {
        "Credentials": {
            "AccessKeyId": "ASIA1",
            "SecretAccessKey": "sec",
            "SessionToken": "tok",
            "Expiration": dt.datetime(2011, 7, 15, 23, 28, 33, 359000, tzinfo=dt.UTC),
        },
        "AssumedRoleUser": {
            "Arn": "arn:aws:sts::123456789012:assumed-role/R/s",
            "AssumedRoleId": "AROA1:s",
        },
        "PackedPolicySize": 6,
        "SourceIdentity": "me",
        "ResponseMetadata": {"RequestId": "c6104cbe", "HTTPStatusCode": 200},
    }
    naive = body.replace(b"2011-07-15T23:28:33.359Z", b"2011-07-15T23:28:33")
    when = parse_assume_role(200, naive)["Credentials"]["Expiration"]
    assert when == dt.datetime(2011, 7, 15, 23, 28, 33, tzinfo=dt.UTC)


@pytest.mark.parametrize("engine", ["lean", "botocore"])
def test_collect_assumes_roles_through_its_engine(sim_env: Any, engine: str) -> None:
    """With the lean engine, AssumeRole goes through the lean path too (its User-Agent);
    `--engine botocore` keeps aiobotocore's. Either way, one per account, every signature
    verified by the simulator."""
    from inventory.aws.lean import USER_AGENT
    from inventory.model import Account

    regions = ("us-east-1", "eu-west-2")
    sim = sim_env(_Recorder(Fleet(3, seed=2, regions=regions)))
    accounts = [Account(a, role_arn=_role(a)) for a in sim.fleet.account_ids]
    _, results = asyncio.run(_collect(engine, regions, accounts))
    assert [r.error for r in results] == [None] * len(accounts) * len(regions)
    sts = [agent for what, agent in sim.agents if what == "Action=AssumeRole"]
    assert len(sts) == len(accounts)
    if engine == "lean":
        assert set(sts) == {USER_AGENT}
        lightsail = {agent for what, agent in sim.agents if what.startswith("Lightsail_")}
        assert lightsail == {USER_AGENT}  # sent once, ours (aiohttp's never added)
    else:
        assert all(agent.startswith(("Botocore/", "aiobotocore/")) for agent in sts), sts
    assert sim.operation_stats("AssumeRole")["bad_signature"] == 0


def test_signer_dates_now_without_a_clock_passed() -> None:
    """Without `now`, X-Amz-Date is the current second (formatted once per second), and the
    signature is the one for that date."""
    import time

    from inventory.aws.lean import CONTENT_TYPE, TARGET, Signer

    url = "https://lightsail.eu-west-2.amazonaws.com/"
    creds = ReadOnlyCredentials("AKIAEXAMPLE", "secret", None)
    base = {"Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET}
    signer = Signer(url, "eu-west-2")
    for _ in range(2):  # formatted, then from the cache
        before = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        got = signer.headers(creds, base)
        after = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        assert before <= got["X-Amz-Date"] <= after
        when = dt.datetime.strptime(got["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        assert Signer(url, "eu-west-2").headers(creds, base, now=when) == got


def test_signing_keys_are_botocores_for_each_region_of_one_key_id() -> None:
    """The day's key is shared by a key id's regions: every region's derived key still
    signs exactly as botocore's SigV4Auth.signature does (its own key derivation)."""
    import hmac
    from types import SimpleNamespace

    from botocore.auth import SigV4Auth
    from botocore.credentials import Credentials

    from inventory.aws.lean import SigningKeys

    keys = SigningKeys()
    request = SimpleNamespace(context={"timestamp": "20261129T120000Z"})
    regions = [("us-east-1", "lightsail"), ("eu-west-2", "lightsail"), ("us-east-1", "sts")]
    for region, service in regions:
        theirs = SigV4Auth(Credentials("AKID1", "s1"), service, region)
        key = keys.key("AKID1", "s1", "20261129", region, service)
        ours = hmac.new(key, b"string to sign", "sha256").hexdigest()
        assert ours == theirs.signature("string to sign", request)
    assert len(keys) == 1


async def test_an_answer_that_stalls_mid_body_times_out_at_the_call_timeout() -> None:
    """The lean session has no read timeout of its own: retry.attempts' call timeout bounds
    the whole call, the body's reading included (a server that sends its headers and half
    a body, then nothing, for a minute)."""
    from inventory.aws.retry import CallCounter, Policy, attempts

    stalled: list[asyncio.StreamWriter] = []

    async def half_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\n"
            b'Content-Length: 100\r\n\r\n{"containerServices": ['
        )
        await writer.drain()
        stalled.append(writer)
        await asyncio.sleep(60)

    server = await asyncio.start_server(half_then_silence, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    policy = Policy(CallCounter(), max_attempts=1, timeout=0.3, deadline=30.0, sign=creds_mod.use)
    try:
        async with LeanHTTP(limit=1, timeout=0.3) as http:
            lean = LeanLightsailClient(http, "us-east-1", f"http://127.0.0.1:{port}", "test")
            out = await attempts(
                lean.get_container_services, {}, policy, credentials=_base, on_expired=None
            )
    finally:
        for writer in stalled:
            writer.close()
        server.close()
        await server.wait_closed()
    assert stalled, "the server never got the request"
    assert out.failure is not None and out.failure.code == "Timeout", out.failure
    assert out.attempts == 1 and out.answer is None


async def _base(_end: float) -> ReadOnlyCredentials:
    return BASE
