"""The lean request path answers and fails exactly like the aiobotocore client."""

from __future__ import annotations

import asyncio

import pytest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError

from inventory import credentials as creds_mod
from inventory.collect import _SharedCredentialsSession, client_config
from inventory.lean import LeanHTTP, LeanLightsailClient
from inventory.model import Options
from inventory.retry import classify
from inventory.simulator import BASE_ACCESS_KEY, BASE_SECRET_KEY, Faults, Fleet

BASE = ReadOnlyCredentials(BASE_ACCESS_KEY, BASE_SECRET_KEY, None)


async def _both(region: str, creds: ReadOnlyCredentials) -> list[object]:
    """Call GetContainerServices once through each path; return answers or exceptions."""
    opts = Options(timeout=2.0)
    session = _SharedCredentialsSession()
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
    from inventory.config import validate_options
    from inventory.errors import UsageError

    with pytest.raises(UsageError, match="--engine 'fast'"):
        validate_options(Options(engine="fast"))


@pytest.mark.parametrize(
    "url",
    [
        "https://lightsail.eu-west-2.amazonaws.com/",
        "https://lightsail.eu-west-2.amazonaws.com:443/",
        "http://127.0.0.1:8123/",
        "https://proxy.example.com:8443/lightsail/",
    ],
)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////token=="])
def test_signature_is_botocores(url: str, token: str | None) -> None:
    """The cached-key signer produces exactly botocore SigV4Auth's headers."""
    import datetime as dt

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    from inventory.lean import BODY, CONTENT_TYPE, TARGET, Signer

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
    from inventory.lean import env_proxy

    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    proxy, auth = env_proxy("https://lightsail.eu-west-2.amazonaws.com/")
    assert proxy == "http://proxy.internal:3128"
    assert auth is not None and auth.login == "user"
    assert env_proxy("http://127.0.0.1:8123/") == (None, None)
