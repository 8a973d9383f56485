"""GetContainerServiceMetricData on the lean path answers and fails like the aiobotocore client.

The request (body, target, content type, signature) is compared with what botocore's own
client sends; answers and errors are compared over HTTP against the simulator, which checks
every signature with botocore's SigV4Auth.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import Any

import pytest
from botocore import xform_name
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError
from helpers import botocore_request

from inventory.aws import credentials as creds_mod
from inventory.aws.lean import USER_AGENT, LeanHTTP
from inventory.aws.lean_metrics import LeanUsageClient, request_body
from inventory.aws.retry import classify
from inventory.aws.session import SharedCredentialsSession, client_config
from inventory.model import Account, Options
from inventory.run.collect import Collector, raw_answer
from inventory.run.usage import RAW_METRIC_DATA_EVENT, Points, UsageFetcher, usage_window
from inventory.simulator import BASE_ACCESS_KEY, BASE_SECRET_KEY, Faults, Fleet

BASE = ReadOnlyCredentials(BASE_ACCESS_KEY, BASE_SECRET_KEY, None)
WINDOW = usage_window(2, dt.datetime(2026, 11, 1, 13, 27, tzinfo=dt.UTC))


def params(name: str, metric: str = "CPUUtilization") -> dict[str, Any]:
    start, end = WINDOW
    return {
        "serviceName": name,
        "metricName": metric,
        "startTime": start,
        "endTime": end,
        "period": 3600,
        "statistics": ["Average", "Maximum"],
    }


@pytest.mark.parametrize(
    ("operation", "asked"),
    [("GetContainerServiceMetricData", params("web-1")), ("GetContainerServicePowers", {})],
)
def test_request_is_botocores(operation: str, asked: dict[str, Any]) -> None:
    """Body, X-Amz-Target, Content-Type and the signature over them: botocore's."""
    creds = ReadOnlyCredentials("ASIAEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/EXAMPLE", "FwoG//tok==")
    endpoint = "https://lightsail.eu-west-2.amazonaws.com"
    theirs, _ = botocore_request(
        "lightsail",
        lambda c: getattr(c, xform_name(operation))(**asked),
        creds,
        "eu-west-2",
        endpoint,
    )
    body = request_body(asked)
    assert body == theirs.body
    lean = LeanUsageClient(LeanHTTP(limit=1, timeout=1.0), "eu-west-2", endpoint, USER_AGENT)
    op = lean._calls[operation]
    for name in ("X-Amz-Target", "Content-Type"):
        assert op.headers[name] == theirs.headers[name].decode()
    when = dt.datetime.strptime(theirs.headers["X-Amz-Date"].decode(), "%Y%m%dT%H%M%SZ")
    ours = op.signer.headers(
        creds, {}, now=when.replace(tzinfo=dt.UTC), body_sha256=hashlib.sha256(body).hexdigest()
    )
    assert ours["Authorization"] == theirs.headers["Authorization"].decode()


def test_timestamps_are_whole_epoch_seconds() -> None:
    body = request_body(params("web-1")).decode()
    assert '"startTime": 1793365200, "endTime": 1793538000,' in body  # 2026-10-30/11-01 13:00Z


async def _both(
    region: str, asked: dict[str, Any], method: str = "get_container_service_metric_data"
) -> list[object]:
    """One call through each path; answers or exceptions."""
    opts = Options(timeout=2.0)
    out: list[object] = []
    async with (
        SharedCredentialsSession().create_client(
            "lightsail", region_name=region, config=client_config(opts, 4)
        ) as client,
        LeanHTTP(limit=4, timeout=2.0) as http,
    ):
        client.meta.events.register(RAW_METRIC_DATA_EVENT, raw_answer)
        lean = LeanUsageClient(http, region, client.meta.endpoint_url, USER_AGENT)
        for c in (client, lean):
            with creds_mod.use(BASE):
                try:
                    answer = await getattr(c, method)(**asked)
                    answer.pop("ResponseMetadata", None)
                    out.append(answer)
                except Exception as exc:
                    out.append(exc)
    return out


def test_same_powers_as_the_aiobotocore_client(simulator: Any) -> None:
    boto, lean = asyncio.run(_both("eu-west-2", {}, "get_container_service_powers"))
    assert isinstance(lean, dict) and lean == boto
    assert {p["name"] for p in lean["powers"]} >= {"nano", "micro", "xlarge"}


def test_same_answer_as_the_aiobotocore_client(simulator: Any) -> None:
    fleet: Fleet = simulator.fleet
    acct = fleet.hub_account_id
    region, svc = next(
        (r, s) for r in fleet.regions for s in fleet.services(acct, r) if s["state"] != "DISABLED"
    )
    boto, lean = asyncio.run(
        _both(region, params(svc["containerServiceName"], "MemoryUtilization"))
    )
    assert isinstance(lean, dict) and lean == boto
    assert lean["metricName"] == "MemoryUtilization" and len(lean["metricData"]) > 24


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        (Faults(operation_throttle={"GetContainerServiceMetricData": 1.0}), "ThrottlingException"),
        (Faults(denied_operations={"GetContainerServiceMetricData"}), "AccessDeniedException"),
        (Faults(unenabled_regions={("*", "us-east-1")}), "UnrecognizedClientException"),
    ],
)
def test_errors_are_botocores(make_simulator: Any, faults: Faults, code: str) -> None:
    make_simulator(faults=faults)
    boto, lean = asyncio.run(_both("us-east-1", params("web-1")))
    assert isinstance(boto, ClientError) and isinstance(lean, ClientError)
    assert boto.response["Error"] == lean.response["Error"]
    assert lean.response["Error"]["Code"] == code
    assert classify(boto) == classify(lean)


def test_a_request_aws_would_refuse_is_refused_alike(simulator: Any) -> None:
    """A window of more than 1,440 datapoints: InvalidInputException either way."""
    asked = params("web-1")
    asked["period"] = 60
    boto, lean = asyncio.run(_both("us-east-1", asked))
    assert isinstance(lean, ClientError) and isinstance(boto, ClientError)
    assert lean.response["Error"] == boto.response["Error"]
    assert lean.response["Error"]["Code"] == "InvalidInputException"


@pytest.mark.parametrize("engine", ["lean", "botocore"])
def test_usage_calls_take_the_path_of_the_engine(make_simulator: Any, engine: str) -> None:
    """--engine lean: the usage calls go through lean_metrics.py and the aiobotocore client
    sends none; --engine botocore: the aiobotocore client sends them all. Same answers."""
    fleet = Fleet(1, seed=3, regions=["eu-west-2", "us-east-1"])
    sim = make_simulator(fleet=fleet)
    acct = fleet.account_ids[0]
    region = max(fleet.regions, key=lambda r: len(fleet.services(acct, r)))
    sent: list[str] = []
    options = Options(concurrency=1, rate=2000.0, timeout=5.0, usage=True, engine=engine)

    async def collect() -> Any:
        async with Collector(options, [region]) as collector:
            collector.botocore_clients[region].meta.events.register(
                "before-call.lightsail", lambda model, **_: sent.append(model.name)
            )
            collector.after_collect = UsageFetcher(collector)
            account = Account(id=acct, role_arn=f"arn:aws:iam::{acct}:role/R")
            return [r async for r in collector.results([account])]

    (result,) = asyncio.run(collect())
    metric_calls = sim.operation_stats("GetContainerServiceMetricData")["calls"]
    assert metric_calls == 2 * sum(s["state"] != "DISABLED" for s in fleet.services(acct, region))
    assert metric_calls > 0 and sim.operation_stats("GetContainerServicePowers")["calls"] == 1
    via_botocore = [op for op in sent if op != "GetContainerServices"]
    assert len(via_botocore) == (0 if engine == "lean" else metric_calls + 1)
    assert all(
        m.status == "ok" and isinstance(m.answer, Points)
        for m in result.usage.metrics
        if m.status != "disabled"
    )
