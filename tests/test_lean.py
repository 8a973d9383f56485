"""The lean request path answers and fails exactly like the aiobotocore client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError

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


class _Sent(Exception):
    """Raised from botocore's before-send hook: the request it would have sent."""

    def __init__(self, request: Any):
        self.request = request


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

    import botocore.session

    from inventory.aws.lean import USER_AGENT

    creds = ReadOnlyCredentials("ASIAEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/EXAMPLE", "FwoG//tok==")
    client = botocore.session.get_session().create_client(
        "lightsail",
        region_name="eu-west-2",
        endpoint_url=endpoint,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        aws_session_token=creds.token,
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Sent(request)

    client.meta.events.register("before-send.lightsail", capture)
    with pytest.raises(_Sent) as sent:
        client.get_container_services()
    theirs = sent.value.request
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
