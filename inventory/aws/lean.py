"""A lean request path for the hot calls: GetContainerServices, and STS AssumeRole.

botocore spends most of a call's CPU on things this call does not need: building the
request through the event system, endpoint rules, and parsing every field of the answer
against the model (benchmarks/README.md has the figures). Here a call is: our own SigV4
signer (Signer, checked header for header against botocore's SigV4Auth), one POST through a
shared aiohttp session, `json.loads`. What stays botocore's, so behaviour does not drift:

- the endpoint: taken from a real botocore client for the region (`meta.endpoint_url`),
  so AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_LIGHTSAIL, FIPS and dual-stack settings apply;
- the request URL: the endpoint joined with the operation's path '/' as botocore joins
  them (an endpoint with a path keeps it, without a '/' added), sent as it is (no
  re-quoting), with the Host header that was signed;
- the signature: SigV4 as botocore's SigV4Auth computes it (canonical URI normalized and
  quoted, the endpoint's query sorted, header values trimmed), with the task's credentials
  (credentials.use); tests check it against botocore's signer header for header, and the
  simulator verifies every request with botocore's own SigV4Auth;
- the derived signing keys (SigningKeys): one entry per access key id, for its current
  day (per region), at most MAX_SIGNING_KEYS entries, and dropped for an account's keys
  when the broker forgets its credentials (credentials.CredentialBroker.on_forget);
- the errors: a non-2xx answer is parsed by botocore's parser for the operation's protocol
  (JSON for Lightsail, query for STS) and raised as the same botocore ClientError a client
  would raise (same code, message, status).

AssumeRole (LeanSTSClient, the CredentialBroker's client with the lean engine) is the STS
query-protocol POST botocore sends: the form `Action=AssumeRole&Version=2011-06-15&...`
url-encoded as botocore encodes it, Content-Type `application/x-www-form-urlencoded;
charset=utf-8`, SigV4 for service `sts` over content-type, host and x-amz-date (and the
session token) with the body's own hash. Its endpoint is the real botocore STS client's
(`meta.endpoint_url`: AWS_ENDPOINT_URL_STS, regional endpoints), signed for that client's
region (`meta.region_name`), except the global endpoint sts.amazonaws.com, which botocore
signs for us-east-1. Its XML answer becomes the dict botocore returns, as far as anyone
here reads it: `Credentials` (AccessKeyId, SecretAccessKey, SessionToken, Expiration as a
tz-aware datetime), `AssumedRoleUser`, `ResponseMetadata`.

As on the aiobotocore path (bounded.py): at most `max_answer_bytes` of an answer are read
(else AnswerTooLarge), and a redirect is an error (UnexpectedRedirect), never followed.

Timestamps stay epoch seconds (flatten accepts both forms).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import ssl
import time
import xml.etree.ElementTree as ET
from functools import cache
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import aiohttp
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError
from botocore.model import OperationModel
from botocore.parsers import ResponseParserError, create_parser
from botocore.utils import normalize_url_path, parse_timestamp
from yarl import URL

from inventory import __version__
from inventory.aws.bounded import read_bounded, refuse_redirect
from inventory.aws.credentials import current as current_credentials
from inventory.model import DEFAULT_MAX_ANSWER_BYTES

TARGET = "Lightsail_20161128.GetContainerServices"
USER_AGENT = f"lightsail-inventory/{__version__}"
OPERATION = "GetContainerServices"
BODY = b"{}"


CONTENT_TYPE = "application/x-amz-json-1.1"
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()

STS_OPERATION = "AssumeRole"
STS_VERSION = "2011-06-15"
STS_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
STS_GLOBAL_HOST = "sts.amazonaws.com"  # botocore signs the global endpoint for us-east-1
STS_SIGNING_KEYS = 16  # base identities' access key ids whose derived keys are kept


MAX_SIGNING_KEYS = 10_000  # access key ids whose derived keys are kept (one day each)


def request_url(endpoint_url: str) -> str:
    """The URL botocore sends a JSON-protocol call to: the endpoint joined with the
    operation's path '/' (botocore.awsrequest's join): the endpoint's path as it is, or '/'
    when it has none; its query kept."""
    p = urlsplit(endpoint_url)
    return urlunsplit((p.scheme, p.netloc, p.path or "/", p.query, p.fragment))


def signed_host(url: str) -> str:
    """The Host value SigV4 signs for `url`, as botocore derives it: the host in lower case,
    an IPv6 address in brackets, the port unless it is the scheme's default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def canonical_uri(url: str) -> str:
    """SigV4's canonical URI of `url`, as botocore's SigV4Auth computes it (not S3's):
    dot segments and repeated slashes removed, then percent-quoted (keeping '/' and '~')."""
    return quote(normalize_url_path(urlsplit(url).path), safe="/~")


def canonical_query(url: str) -> str:
    """SigV4's canonical query string of `url`, as botocore computes it from a URL: its
    `key=value` pairs sorted, as written."""
    query = urlsplit(url).query
    if not query:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in query.split("&"))
    return "&".join(f"{k}={v}" for k, v in pairs)


def trim(value: str) -> str:
    """A header value as SigV4 signs it: outer white space removed, inner runs made one space."""
    return " ".join(value.split())


class SigningKeys:
    """SigV4's derived signing keys, shared by every region's signer: one entry per access
    key id holding its secret, its day, the day's key (HMAC of the secret and the day: the
    same for every region, so a new region costs three HMACs, not four) and a key per
    (region, service). A new day or another secret for the same key id replaces the entry;
    past MAX_SIGNING_KEYS entries the oldest goes; `forget` drops a key id's entry (its
    account is done)."""

    def __init__(self, limit: int = MAX_SIGNING_KEYS):
        self.limit = limit
        self._keys: dict[str, tuple[str, str, bytes, dict[tuple[str, str], bytes]]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, access_key: str, secret: str, day: str, region: str, service: str) -> bytes:
        entry = self._keys.get(access_key)
        if entry is None or entry[1] != day or entry[0] != secret:
            if entry is None and len(self._keys) >= self.limit:
                del self._keys[next(iter(self._keys))]
            day_key = hmac.digest(("AWS4" + secret).encode(), day.encode(), "sha256")
            entry = self._keys[access_key] = (secret, day, day_key, {})
        derived = entry[3].get((region, service))
        if derived is None:
            derived = entry[2]
            for part in (region, service, "aws4_request"):
                derived = hmac.digest(derived, part.encode(), "sha256")
            entry[3][(region, service)] = derived
        return derived

    def forget(self, access_key: str) -> None:
        self._keys.pop(access_key, None)


class Signer:
    """SigV4 for the POSTs we send to `url` (the request URL, see request_url): signed
    headers content-type, host, x-amz-date, the session token when there is one, and
    X-Amz-Target when `target` is given (JSON protocol; the query protocol has none). The
    defaults are GetContainerServices' (body `{}`); another body passes its own hash."""

    def __init__(
        self,
        url: str,
        region: str,
        service: str = "lightsail",
        keys: SigningKeys | None = None,
        *,
        content_type: str = CONTENT_TYPE,
        target: str | None = TARGET,
    ):
        self.region, self.service = region, service
        self.host = trim(signed_host(url))
        self.path = canonical_uri(url)
        self.query = canonical_query(url)
        self.keys = keys if keys is not None else SigningKeys()
        self._head = f"content-type:{trim(content_type)}\nhost:{self.host}\nx-amz-date:"
        self._tail = f"x-amz-target:{trim(target)}\n" if target else ""
        names = "content-type;host;x-amz-date"
        last = ";x-amz-target" if target else ""
        self._signed = (names + last, names + ";x-amz-security-token" + last)  # [token?]
        self._second, self._amz_date = -1, ""  # X-Amz-Date of the current second

    def amz_date(self) -> str:
        """X-Amz-Date now (UTC), formatted once per second."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
        return self._amz_date

    def headers(
        self,
        creds: ReadOnlyCredentials,
        base: dict[str, str],
        now: dt.datetime | None = None,
        body_sha256: str | None = None,
    ) -> dict[str, str]:
        amz_date = self.amz_date() if now is None else now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        token = creds.token
        canonical = (
            f"{self._head}{amz_date}\n"
            + (f"x-amz-security-token:{trim(token)}\n" if token else "")
            + self._tail
        )
        signed = self._signed[1 if token else 0]
        request = (
            f"POST\n{self.path}\n{self.query}\n{canonical}\n{signed}\n{body_sha256 or BODY_SHA256}"
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
            + hashlib.sha256(request.encode()).hexdigest()
        )
        key = self.keys.key(creds.access_key, creds.secret_key, day, self.region, self.service)
        signature = hmac.digest(key, to_sign.encode(), "sha256")  # no HMAC object to build
        out = dict(base)
        out["X-Amz-Date"] = amz_date
        if token:
            out["X-Amz-Security-Token"] = token
        out["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature.hex()}"
        )
        return out


@cache
def _operation(service: str = "lightsail", name: str = OPERATION) -> OperationModel:
    import botocore.session

    return botocore.session.get_session().get_service_model(service).operation_model(name)


def _raise_error(
    status: int, headers: dict[str, str], body: bytes, operation: OperationModel | None = None
) -> None:
    """Raise exactly the ClientError botocore would for this answer to `operation`
    (GetContainerServices by default), parsed by botocore's parser for its protocol."""
    op = operation or _operation()
    parser = create_parser(op.metadata["protocol"])
    parsed = parser.parse(
        {"status_code": status, "headers": headers, "body": body}, op.output_shape
    )
    meta = parsed.setdefault("ResponseMetadata", {})
    meta["HTTPStatusCode"] = status
    meta["RetryAttempts"] = 0  # as botocore's clients here say (their retries off)
    meta["MaxAttemptsReached"] = True
    raise ClientError(parsed, op.name)


class LeanHTTP:
    """One aiohttp session (one connection pool, one TLS context) shared by every region."""

    def __init__(
        self,
        *,
        limit: int,
        timeout: float,
        verify: bool | str | None = None,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ):
        self.keys = SigningKeys()  # the derived signing keys of every region's signer
        self._limit = limit
        self.max_answer_bytes = max_answer_bytes
        # No sock_read timeout: every call runs inside retry.attempts' asyncio.timeout of
        # the same length (the call timeout, or less of the deadline), which bounds the
        # whole call; aiohttp's would only add a timer rescheduled on every chunk read.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout)
        self._verify = verify
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LeanHTTP:
        ssl_ctx: ssl.SSLContext | bool
        if self._verify is False:
            ssl_ctx = False
        else:
            cafile = self._verify if isinstance(self._verify, str) else None
            if cafile is None:
                try:
                    import certifi

                    cafile = certifi.where()
                except ImportError:  # pragma: no cover - certifi comes with botocore
                    cafile = None
            ssl_ctx = ssl.create_default_context(cafile=cafile)
        connector = aiohttp.TCPConnector(limit=self._limit, ssl=ssl_ctx, keepalive_timeout=60)
        # trust_env=True would cost two thread hops per request (netrc, proxy lookup): the
        # proxy is looked up once per region instead (env_proxy), and no cookies are kept.
        # No skip_auto_headers: every request carries its own User-Agent, and a session
        # that skips any header costs two header copies per request.
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def post(
        self,
        url: URL,
        body: bytes,
        headers: dict[str, str],
        proxy: str | None,
        proxy_auth: aiohttp.BasicAuth | None,
        operation: OperationModel | None = None,
    ) -> tuple[int, bytes]:
        """POST `body` to `url` as signed; the answer's status and body (at most
        max_answer_bytes, else AnswerTooLarge). A redirect is refused (UnexpectedRedirect); a non-2xx answer raises
        botocore's ClientError for `operation` (GetContainerServices by default)."""
        session = self.session
        assert session is not None, "LeanHTTP not entered"
        async with session.post(
            url,
            data=body,
            headers=headers,
            proxy=proxy,
            proxy_auth=proxy_auth,
            allow_redirects=False,
        ) as resp:
            status = resp.status
            if 300 <= status < 400:
                refuse_redirect(resp)
            answer = await read_bounded(resp, self.max_answer_bytes)
            if status >= 300:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                _raise_error(status, headers, answer, operation)
        return status, answer


def env_proxy(url: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy HTTPS_PROXY / HTTP_PROXY / NO_PROXY give for `url` (as botocore honours them)."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None
    return str(proxy), auth


class LeanLightsailClient:
    """The one call, for one region, signed with the calling task's credentials.

    Quacks like the aiobotocore client for `get_container_services()` (no arguments).
    """

    def __init__(self, http: LeanHTTP, region: str, endpoint_url: str, user_agent: str):
        self._http = http
        self.region = region
        self.url = request_url(endpoint_url)
        self._signer = Signer(self.url, region, keys=http.keys)
        self._headers = {
            "Host": self._signer.host,
            "Content-Type": CONTENT_TYPE,
            "X-Amz-Target": TARGET,
            "User-Agent": user_agent,
        }
        self._wire_url = URL(self.url, encoded=True)  # sent as signed: not re-quoted
        self._proxy, self._proxy_auth = env_proxy(self.url)

    async def get_container_services(self) -> dict[str, Any]:
        headers = self._signer.headers(current_credentials(), self._headers)
        _, body = await self._http.post(
            self._wire_url, BODY, headers, self._proxy, self._proxy_auth
        )
        return json_object("GetContainerServices", body)


def sts_signing_region(endpoint_url: str, region_name: str) -> str:
    """The region botocore signs STS requests to `endpoint_url` for, its client being for
    `region_name`: us-east-1 for the global endpoint sts.amazonaws.com, else the client's."""
    return "us-east-1" if signed_host(endpoint_url) == STS_GLOBAL_HOST else region_name


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _members(element: ET.Element | None) -> dict[str, ET.Element]:
    """An XML element's children by their local names (botocore ignores namespaces)."""
    return {} if element is None else {_local(child.tag): child for child in element}


def _timestamp(text: str) -> dt.datetime:
    """An STS timestamp as botocore parses it: tz-aware (UTC when the text has no offset)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        when = parse_timestamp(text)  # botocore's own parser: the rarer forms
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def parse_assume_role(status: int, body: bytes) -> dict[str, Any]:
    """A 2xx AssumeRole answer as botocore's client returns it (the members read here), or
    ResponseParserError naming what is missing (never the answer's text: it holds secrets)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ResponseParserError(f"AssumeRole: answer is not XML ({exc.code})") from None
    top = _members(root)
    result = _members(top.get("AssumeRoleResult"))
    creds = _members(result.get("Credentials"))
    out: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for name in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"):
        element = creds.get(name)
        if element is None or not element.text:
            raise ResponseParserError(f"AssumeRole: the answer has no Credentials.{name}")
        values[name] = element.text
    try:
        values["Expiration"] = _timestamp(values["Expiration"])
    except (ValueError, OverflowError, RuntimeError):
        raise ResponseParserError(
            "AssumeRole: the answer's Credentials.Expiration is not a timestamp"
        ) from None
    out["Credentials"] = values
    user = _members(result.get("AssumedRoleUser"))
    if user:
        out["AssumedRoleUser"] = {k: v.text or "" for k, v in user.items()}
    for name, kind in (("PackedPolicySize", int), ("SourceIdentity", str)):
        element = result.get(name)
        if element is not None and element.text is not None:
            try:
                out[name] = kind(element.text)
            except ValueError:
                raise ResponseParserError(f"AssumeRole: the answer's {name} is not valid") from None
    request_id = _members(top.get("ResponseMetadata")).get("RequestId")
    meta: dict[str, Any] = {"HTTPStatusCode": status}
    if request_id is not None and request_id.text:
        meta["RequestId"] = request_id.text
    out["ResponseMetadata"] = meta
    return out


class LeanSTSClient:
    """STS AssumeRole, signed with the calling task's credentials (credentials.use), through
    the shared LeanHTTP session. Quacks like the aiobotocore client for
    `assume_role(**params)` (the parameters credentials.assume_role_params makes, and
    DurationSeconds). Its derived signing keys are its own (`keys`: those of the base
    identity, whose access key changes only when its credentials are refreshed), apart from
    the shared ones an account's are forgotten from."""

    def __init__(self, http: LeanHTTP, endpoint_url: str, region_name: str, user_agent: str):
        self._http = http
        self.url = request_url(endpoint_url)
        self.region = sts_signing_region(self.url, region_name)
        self.keys = SigningKeys(limit=STS_SIGNING_KEYS)
        self._signer = Signer(
            self.url,
            self.region,
            "sts",
            keys=self.keys,
            content_type=STS_CONTENT_TYPE,
            target=None,
        )
        self._headers = {
            "Host": self._signer.host,
            "Content-Type": STS_CONTENT_TYPE,
            "User-Agent": user_agent,
        }
        self._wire_url = URL(self.url, encoded=True)
        self._proxy, self._proxy_auth = env_proxy(self.url)

    def request(self, params: dict[str, Any]) -> tuple[bytes, str]:
        """The form body botocore's query serializer makes for AssumeRole(**params), and
        its SHA-256 (hex)."""
        body = urlencode({"Action": STS_OPERATION, "Version": STS_VERSION, **params}).encode()
        return body, hashlib.sha256(body).hexdigest()

    async def assume_role(self, **params: Any) -> dict[str, Any]:
        body, digest = self.request(params)
        headers = self._signer.headers(current_credentials(), self._headers, body_sha256=digest)
        status, answer = await self._http.post(
            self._wire_url,
            body,
            headers,
            self._proxy,
            self._proxy_auth,
            _operation("sts", STS_OPERATION),
        )
        return parse_assume_role(status, answer)


def json_object(operation: str, body: bytes) -> dict[str, Any]:
    """An answer's JSON object (json.loads: botocore's parser costs ten times as much); a body
    that is not one is botocore's ResponseParserError, as the botocore engine would raise."""
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise ResponseParserError(f"{operation}: answer is not JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise ResponseParserError(
            f"{operation}: answer is a JSON {type(answer).__name__}, expected an object"
        )
    return answer
