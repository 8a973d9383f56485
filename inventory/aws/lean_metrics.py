"""`collect --usage`'s calls on the lean engine's path: GetContainerServiceMetricData and
GetContainerServicePowers.

A metric call through an aiobotocore client costs about a millisecond of CPU more than the
same call through lean.py's session and signer (benchmarks/README.md, docs/cost.md): the
request built through botocore's event system, endpoint rules, user-agent, its signer, its
HTTP layer. `collect --usage` makes two such calls per enabled service, so with
`--engine lean` (the default) they go this way, as GetContainerServices does (and the
powers, once per region, too: the region's aiobotocore client then never sends, and never
loads its TLS context, 30 ms of CPU each). What stays
botocore's, as in lean.py: the endpoint (the region's botocore client's `endpoint_url`), the
errors (a non-2xx answer parsed by botocore's parser for this operation and raised as the
same ClientError), and the request: the JSON body botocore's serializer writes for these
parameters (timestamps as whole epoch seconds), X-Amz-Target and Content-Type as it sends
them; tests compare the body with botocore's serializer and the simulator checks every
signature with botocore's SigV4Auth.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
from functools import cache
from typing import Any

from botocore.model import OperationModel
from yarl import URL

from inventory.aws.credentials import current as current_credentials
from inventory.aws.lean import (
    CONTENT_TYPE,
    LeanHTTP,
    Signer,
    env_proxy,
    json_object,
    request_url,
)

METRIC_DATA = "GetContainerServiceMetricData"
POWERS = "GetContainerServicePowers"
TARGET_PREFIX = "Lightsail_20161128"  # the Lightsail model's targetPrefix


@cache
def operation_model(name: str) -> OperationModel:
    """The Lightsail model's operation `name` (loaded once): its errors are parsed by it."""
    import botocore.session

    return botocore.session.get_session().get_service_model("lightsail").operation_model(name)


def request_body(params: dict[str, Any]) -> bytes:
    """The body botocore's JSON serializer writes for these parameters: datetimes as whole
    epoch seconds (calendar.timegm of the UTC time tuple), everything else as it is."""
    out = {k: _wire(v) for k, v in params.items()}
    return json.dumps(out).encode()


def _wire(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        if v.utcoffset() is not None:
            v = v.astimezone(dt.UTC)
        return int(calendar.timegm(v.timetuple()))
    return v


class LeanUsageClient:
    """`get_container_service_metric_data(**params)` and `get_container_service_powers()`
    for one region, signed with the calling task's credentials (credentials.use), like the
    aiobotocore client's methods; an answer is the body's JSON as `json.loads` reads it (what
    usage.py's before-parse hook gives on the botocore path)."""

    def __init__(self, http: LeanHTTP, region: str, endpoint_url: str, user_agent: str):
        self._http = http
        url = request_url(endpoint_url)
        self._wire_url = URL(url, encoded=True)  # sent as signed: not re-quoted
        self._proxy, self._proxy_auth = env_proxy(url)
        self._calls = {
            op: _Operation(http, region, url, op, user_agent) for op in (METRIC_DATA, POWERS)
        }

    async def get_container_service_metric_data(self, **params: Any) -> dict[str, Any]:
        return await self._call(METRIC_DATA, params)

    async def get_container_service_powers(self) -> dict[str, Any]:
        return await self._call(POWERS, {})

    async def _call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        op = self._calls[operation]
        body = request_body(params)
        digest = hashlib.sha256(body).hexdigest()
        headers = op.signer.headers(current_credentials(), op.headers, body_sha256=digest)
        _, answer = await self._http.post(
            self._wire_url, body, headers, self._proxy, self._proxy_auth, op.model
        )
        return json_object(operation, answer)


class _Operation:
    """One operation's signer (its X-Amz-Target is signed), headers and botocore model."""

    def __init__(self, http: LeanHTTP, region: str, url: str, name: str, user_agent: str):
        target = f"{TARGET_PREFIX}.{name}"
        self.signer = Signer(url, region, keys=http.keys, target=target)
        self.headers = {
            "Host": self.signer.host,
            "Content-Type": CONTENT_TYPE,
            "X-Amz-Target": target,
            "User-Agent": user_agent,
        }
        self.model = operation_model(name)
