"""The simulator's HTTP server: STS, Lightsail and Organizations on one 127.0.0.1 port.

Real AWS wire formats, so unmodified botocore / aioboto3 clients work against it through
the standard endpoint variables (`Simulator.env()`):

- STS, query protocol: form POST with `Action=`, XML answers and XML errors.
- Lightsail, JSON 1.1: `X-Amz-Target: Lightsail_20161128.<Op>`.
- Organizations, JSON 1.1: `X-Amz-Target: AWSOrganizationsV20161128.<Op>`.

Callers are told apart by the access key in the SigV4 `Authorization` header
(`Credential=AKID/DATE/REGION/SERVICE/aws4_request`); the credential scope's REGION is the
region of a Lightsail call. Every request's SigV4 signature is verified with botocore's
own SigV4Auth over what arrived (method, path, query, the signed headers, the body): the
simulator knows every secret it handed out, the base identity's (`BASE_ACCESS_KEY`) and
those its AssumeRole issued. A mismatch is answered as AWS answers it:
`InvalidSignatureException` (Lightsail, Organizations) or `SignatureDoesNotMatch` (STS); an
access key it never issued, as an unknown key (`UnrecognizedClientException` /
`InvalidClientTokenId`). A key the simulator issued (AssumeRole, `ASIA…`) must come with
its `X-Amz-Security-Token` and before its expiry. `verify_signatures=False` (command line
`--no-verify-signatures`) skips the check, for a benchmark's floor: then any key without a
session token is the base identity, as if its secret were known.

Responses are pre-serialized and cached per (account, region); per request the work is a
regex on one header, the signature check, a few dict lookups and the counters.

Besides the AWS API: `GET /_sim/stats`, `GET /_sim/truth`, `POST /_sim/reset-stats`,
`POST /_sim/expire-credentials`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import math
import os
import re
import secrets
import socket
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from inventory.simulator.faults import Faults
from inventory.simulator.fleet import MAX_DATAPOINTS, METRICS, STATISTICS, Fleet

BASE_ACCESS_KEY = "AKIDSIMULATORBASE"
BASE_SECRET_KEY = "sim-base-secret"
BASE_USER = "simulator"
LIGHTSAIL_PREFIX = "Lightsail_20161128"
ORGS_PREFIX = "AWSOrganizationsV20161128"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
COUNTERS = (
    "calls",
    "ok",
    "throttled",
    "errors_5xx",
    "dropped",
    "hung",
    "denied",
    "bad_signature",
    "expired",
    "other_errors",
    "huge",
    "redirected",
)
# Variables a client must NOT inherit from the caller's environment (they would win over
# the simulator's base keys or endpoints).
UNSET_ENV = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)

_AUTH_RE = re.compile(r"Credential=([^/\s,]+)/[^/\s,]*/([^/\s,]+)/([^/\s,]+)/aws4_request")
_BODY = web.RequestKey("body", bytes)  # the request's body, kept on the request by _handle
_SIGNATURE_RE = re.compile(r"SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]+)")
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service "
    "documentation for details."
)
_ROLE_RE = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):role/(?:[\w+=,.@/-]*/)?([\w+=,.@-]+)")
_EMPTY_SERVICES = b'{"containerServices":[]}'
_JSON_CT = "application/x-amz-json-1.1"
_KEY_ALPHABET = string.ascii_uppercase + string.digits
# Lightsail operations about one service (serviceName): --deep's and --usage's
_PER_SERVICE = (
    "GetContainerServiceDeployments",
    "GetContainerImages",
    "GetContainerServiceMetricData",
)


# STS's RoleSessionName (botocore's sts model, roleSessionNameType): 2-64 characters of the
# pattern [\w+=,.@-]*, where \w is ASCII letters, digits and underscore ("upper- and
# lower-case alphanumeric characters with no spaces ... underscores or =,.@-").
_SESSION_NAME_RE = re.compile(r"[\w+=,.@-]*", re.ASCII)


def _session_name_problem(name: str) -> str | None:
    """What STS would say is wrong with RoleSessionName `name` (None: nothing)."""
    if len(name) < 2:
        return "Member must have length greater than or equal to 2"
    if len(name) > 64:
        return "Member must have length less than or equal to 64"
    if not _SESSION_NAME_RE.fullmatch(name):
        return "Member must satisfy regular expression pattern: [\\w+=,.@-]*"
    return None


@dataclass(slots=True)
class IssuedCredential:
    """A set of temporary credentials the simulator's AssumeRole handed out."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    account_id: str
    role_arn: str
    role_name: str
    session_name: str
    expires_at: float  # epoch seconds, on the simulator's clock


@dataclass(slots=True)
class _Caller:
    account_id: str
    region: str
    credential: IssuedCredential | None  # None: the base identity


class _Reject(Exception):
    """An error answer decided while authenticating (already counted)."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Simulator:
    """The bundled AWS stand-in. Use it one of three ways:

    - `with Simulator(fleet, faults) as sim:` / `sim.start()` … `sim.stop()`: serves from a
      background thread with its own event loop (sync tests, `inventory demo`).
    - `async with Simulator(fleet, faults) as sim:`: serves on the caller's running loop.
    - `python -m inventory.simulator …`: its own process.

    `clock` (epoch seconds) decides credential issue and expiry times; inject one to test
    expiry without waiting. `set_fleet()` swaps the fleet (e.g. the next generation).
    """

    def __init__(
        self,
        fleet: Fleet,
        faults: Faults | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        verify_signatures: bool = True,
    ) -> None:
        self.fleet = fleet
        self.verify_signatures = verify_signatures
        self.faults = faults if faults is not None else Faults()
        self.host = host
        self.port = port
        self.clock = clock
        self._creds: dict[str, IssuedCredential] = {}
        self._bodies: dict[tuple[str, str], bytes] = {}
        self._ops: dict[str, dict[str, int]] = {}
        self._calls: dict[tuple[str, str], int] = {}
        self.total_requests = 0
        self.huge_bytes_sent = 0  # bytes of huge answers the client took (huge_answers fault)
        self.hanging = 0  # requests being held open right now (hang faults)
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hang_waiters: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment a client needs to talk to this simulator (see also UNSET_ENV)."""
        return {
            "AWS_ENDPOINT_URL_STS": self.url,
            "AWS_ENDPOINT_URL_LIGHTSAIL": self.url,
            "AWS_ENDPOINT_URL_ORGANIZATIONS": self.url,
            "AWS_ACCESS_KEY_ID": BASE_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": BASE_SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_get("/_sim/stats", self._sim_stats)
        app.router.add_get("/_sim/truth", self._sim_truth)
        app.router.add_post("/_sim/reset-stats", self._sim_reset)
        app.router.add_post("/_sim/expire-credentials", self._sim_expire)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start_async(self) -> Simulator:
        """Start serving on the running event loop."""
        self._runner = web.AppRunner(self.make_app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._sock = sock
        site = web.SockSite(self._runner, sock, backlog=4096)
        await site.start()
        return self

    async def stop_async(self) -> None:
        for fut in list(self._hang_waiters):
            if not fut.done():
                fut.set_result(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> Simulator:
        return await self.start_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()

    def start(self) -> Simulator:
        """Serve from a background thread (its own event loop). Returns once listening."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop_async())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"simulator-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop a simulator started with `start()`. Idempotent."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread = self._loop = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ control
    def set_fleet(self, fleet: Fleet) -> None:
        """Serve another fleet (e.g. `fleet.evolve()`) from now on. Credentials stay valid."""
        self.fleet = fleet
        self._bodies = {}

    def expire_all_credentials(self) -> None:
        """Make every credential issued so far expired (on the simulator's clock)."""
        now = self.clock()
        for cred in self._creds.values():
            cred.expires_at = min(cred.expires_at, now - 1.0)

    def issued_credentials(self) -> list[IssuedCredential]:
        return list(self._creds.values())

    def reset_stats(self) -> None:
        self._ops = {}
        self._calls = {}
        self.total_requests = 0

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot: per operation counters, per account × region Lightsail
        calls (keys 'account/region'), every HTTP request, hung requests right now."""
        ops = {op: dict(c) for op, c in list(self._ops.items())}
        calls = {f"{a}/{r}": n for (a, r), n in list(self._calls.items())}
        return {
            "operations": ops,
            "lightsail_calls": calls,
            "total_requests": self.total_requests,
            "hanging": self.hanging,
            "issued_credentials": len(self._creds),
        }

    def operation_stats(self, op: str) -> dict[str, int]:
        """Counters of one operation (zeros when never called)."""
        return dict(self._ops.get(op) or dict.fromkeys(COUNTERS, 0))

    def lightsail_calls(self) -> dict[tuple[str, str], int]:
        """Lightsail calls per (account_id, region), every operation and outcome."""
        return dict(self._calls)

    # ------------------------------------------------------------------ helpers
    def _count(self, op: str, counter: str) -> None:
        c = self._ops.get(op)
        if c is None:
            c = self._ops[op] = dict.fromkeys(COUNTERS, 0)
        c[counter] += 1

    @staticmethod
    def _json(body: bytes, status: int = 200) -> web.Response:
        return web.Response(
            body=body,
            status=status,
            headers={"Content-Type": _JSON_CT, "x-amzn-RequestId": str(uuid.uuid4())},
        )

    def _json_error(
        self, op: str, counter: str, status: int, code: str, message: str
    ) -> web.Response:
        self._count(op, counter)
        return web.Response(
            body=_dumps({"__type": code, "message": message}),
            status=status,
            headers={
                "Content-Type": _JSON_CT,
                "x-amzn-RequestId": str(uuid.uuid4()),
                "x-amzn-ErrorType": code,
            },
        )

    def _xml(self, op: str, body: str, status: int = 200) -> web.Response:
        return web.Response(
            body=body.encode(),
            status=status,
            headers={"Content-Type": "text/xml", "x-amzn-RequestId": str(uuid.uuid4())},
        )

    def _xml_error(
        self, op: str, counter: str, status: int, code: str, message: str, kind: str = "Sender"
    ) -> web.Response:
        self._count(op, counter)
        rid = str(uuid.uuid4())
        body = (
            f'<ErrorResponse xmlns="{STS_NS}">\n  <Error>\n    <Type>{kind}</Type>\n'
            f"    <Code>{escape(code)}</Code>\n    <Message>{escape(message)}</Message>\n"
            f"  </Error>\n  <RequestId>{rid}</RequestId>\n</ErrorResponse>\n"
        )
        return web.Response(
            body=body.encode(),
            status=status,
            headers={"Content-Type": "text/xml", "x-amzn-RequestId": rid},
        )

    def _authenticate(self, request: web.Request, op: str, xml: bool) -> _Caller:
        """Who is calling (account) and for which region; raises _Reject with the answer."""
        auth = request.headers.get("Authorization")
        m = _AUTH_RE.search(auth) if auth else None
        if m is None:
            msg = "Request is missing Authentication Token"
            if xml:
                raise _Reject(self._xml_error(op, "denied", 403, "MissingAuthenticationToken", msg))
            raise _Reject(
                self._json_error(op, "denied", 400, "MissingAuthenticationTokenException", msg)
            )
        key, region = m.group(1), m.group(2)
        token = request.headers.get("X-Amz-Security-Token")
        cred = self._creds.get(key)
        if cred is None:
            if token is None and not key.startswith("ASIA"):
                if not self.verify_signatures:
                    return _Caller(self.fleet.hub_account_id, region, None)
                if key == BASE_ACCESS_KEY:
                    self._check_signature(request, op, xml, auth, m, BASE_SECRET_KEY)
                    return _Caller(self.fleet.hub_account_id, region, None)
            msg = "The security token included in the request is invalid."
            if xml:
                raise _Reject(self._xml_error(op, "denied", 403, "InvalidClientTokenId", msg))
            raise _Reject(self._json_error(op, "denied", 400, "UnrecognizedClientException", msg))
        if token != cred.session_token:
            msg = "The security token included in the request is invalid."
            if xml:
                raise _Reject(self._xml_error(op, "denied", 403, "InvalidClientTokenId", msg))
            raise _Reject(self._json_error(op, "denied", 400, "UnrecognizedClientException", msg))
        if self.clock() >= cred.expires_at:
            msg = "The security token included in the request is expired"
            if xml:
                raise _Reject(self._xml_error(op, "expired", 400, "ExpiredToken", msg))
            raise _Reject(self._json_error(op, "expired", 400, "ExpiredTokenException", msg))
        if self.verify_signatures:
            self._check_signature(request, op, xml, auth, m, cred.secret_access_key)
        return _Caller(cred.account_id, region, cred)

    def _check_signature(
        self,
        request: web.Request,
        op: str,
        xml: bool,
        auth: str | None,
        scope: re.Match[str],
        secret: str,
    ) -> None:
        """Recompute the request's SigV4 signature with botocore's SigV4Auth over what
        arrived (the headers it says it signed, the raw path and query, the body that
        `_handle` read) and `secret`; raises _Reject with AWS's answer to a mismatch."""
        signed = _SIGNATURE_RE.search(auth or "")
        ok = False
        if signed is not None and "X-Amz-Date" in request.headers:
            names = signed.group(1).split(";")
            headers = {n: ",".join(request.headers.getall(n, [])) for n in names}
            host = request.headers.get("Host", "")
            wire = AWSRequest(
                method=request.method,
                url=f"http://{host}{request.raw_path}",
                data=request.get(_BODY, b""),
                headers=headers,
            )
            wire.context["timestamp"] = request.headers["X-Amz-Date"]
            token = request.headers.get("X-Amz-Security-Token")
            signer = SigV4Auth(
                ReadOnlyCredentials(scope.group(1), secret, token), scope.group(3), scope.group(2)
            )
            canonical = signer.canonical_request(wire)
            expected = signer.signature(signer.string_to_sign(wire, canonical), wire)
            ok = hmac.compare_digest(expected, signed.group(2)) and signer.signed_headers(
                signer.headers_to_sign(wire)
            ) == signed.group(1)
        if ok:
            return
        if xml:
            raise _Reject(
                self._xml_error(
                    op, "bad_signature", 403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH
                )
            )
        raise _Reject(
            self._json_error(
                op, "bad_signature", 403, "InvalidSignatureException", SIGNATURE_MISMATCH
            )
        )

    async def _latency(self) -> None:
        delay = self.faults.latency_s()
        if delay > 0:
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ dispatch
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        request[_BODY] = body  # for the signature check
        self.total_requests += 1
        target = request.headers.get("X-Amz-Target")
        try:
            if target:
                prefix, _, op = target.partition(".")
                if prefix == LIGHTSAIL_PREFIX:
                    return await self._lightsail(request, op, body)
                if prefix == ORGS_PREFIX:
                    return await self._organizations(request, op, body)
                return self._json_error(
                    target, "other_errors", 400, "UnknownOperationException", target
                )
            return await self._sts(request, body)
        except _Reject as rej:
            await self._latency()
            return rej.response

    # ------------------------------------------------------------------ STS
    async def _sts(self, request: web.Request, body: bytes) -> web.StreamResponse:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        op = form.get("Action", "")
        self._count(op or "<none>", "calls")
        caller = self._authenticate(request, op, xml=True)
        await self._latency()
        if self.faults.redirect_sts:
            return self._redirect(request, op)
        if op == "GetCallerIdentity":
            return self._caller_identity(op, caller)
        if op == "AssumeRole":
            if self.faults.huge_answers:  # keyed by the role's account, STS's signed region
                m = _ROLE_RE.fullmatch(form.get("RoleArn", ""))
                if m is not None and self.faults.is_huge(m.group(1), caller.region, op):
                    return await self._huge(request, op)
            return self._assume_role(op, caller, form)
        return self._xml_error(
            op, "other_errors", 400, "InvalidAction", f"Could not find operation {op}"
        )

    def _caller_identity(self, op: str, caller: _Caller) -> web.Response:
        cred = caller.credential
        if cred is None:
            arn = f"arn:aws:iam::{caller.account_id}:user/{BASE_USER}"
            user_id = "AIDA" + BASE_ACCESS_KEY[4:].ljust(17, "X")
        else:
            arn = (
                f"arn:aws:sts::{cred.account_id}:assumed-role/{cred.role_name}/{cred.session_name}"
            )
            user_id = f"AROA{cred.access_key_id[4:]}:{cred.session_name}"
        self._count(op, "ok")
        return self._xml(
            op,
            f'<GetCallerIdentityResponse xmlns="{STS_NS}">\n  <GetCallerIdentityResult>\n'
            f"    <Arn>{escape(arn)}</Arn>\n    <UserId>{escape(user_id)}</UserId>\n"
            f"    <Account>{caller.account_id}</Account>\n  </GetCallerIdentityResult>\n"
            f"  <ResponseMetadata>\n    <RequestId>{uuid.uuid4()}</RequestId>\n"
            f"  </ResponseMetadata>\n</GetCallerIdentityResponse>\n",
        )

    def _assume_role(self, op: str, caller: _Caller, form: dict[str, str]) -> web.Response:
        role_arn = form.get("RoleArn", "")
        session = form.get("RoleSessionName", "")
        who = (
            f"arn:aws:iam::{caller.account_id}:user/{BASE_USER}"
            if caller.credential is None
            else f"arn:aws:sts::{caller.account_id}:assumed-role/"
            f"{caller.credential.role_name}/{caller.credential.session_name}"
        )
        denied = f"User: {who} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
        problem = _session_name_problem(session)
        if problem is not None:
            return self._xml_error(
                op,
                "other_errors",
                400,
                "ValidationError",
                f"1 validation error detected: Value {session!r} at 'roleSessionName' failed "
                f"to satisfy constraint: {problem}",
            )
        m = _ROLE_RE.fullmatch(role_arn)
        if m is None:
            return self._xml_error(
                op, "other_errors", 400, "ValidationError", f"{role_arn!r} is not a valid ARN"
            )
        account_id, role_name = m.group(1), m.group(2)
        if not self.fleet.has_account(account_id) or account_id in self.faults.denied_accounts:
            return self._xml_error(op, "denied", 403, "AccessDenied", denied)
        want = self.faults.external_id
        if want is not None and form.get("ExternalId") != want:
            return self._xml_error(op, "denied", 403, "AccessDenied", denied)
        duration = 3600.0
        if "DurationSeconds" in form:
            try:
                duration = float(int(form["DurationSeconds"]))
            except ValueError:
                duration = -1.0
            if not 900 <= duration <= 43200:
                return self._xml_error(
                    op,
                    "other_errors",
                    400,
                    "ValidationError",
                    "1 validation error detected: Value at 'durationSeconds' failed to satisfy "
                    "constraint: Member must have value between 900 and 43200",
                )
        ttl = min(duration, self.faults.credential_ttl_s)
        now = self.clock()
        while True:
            akid = "ASIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
            if akid not in self._creds:
                break
        cred = IssuedCredential(
            access_key_id=akid,
            secret_access_key=secrets.token_urlsafe(30)[:40],
            session_token="FwoGZXIvYXdzE" + secrets.token_urlsafe(96),
            account_id=account_id,
            role_arn=role_arn,
            role_name=role_name,
            session_name=session,
            expires_at=now + ttl,
        )
        self._creds[akid] = cred
        self._count(op, "ok")
        assumed_arn = f"arn:aws:sts::{account_id}:assumed-role/{role_name}/{session}"
        role_id = "AROA" + akid[4:]
        return self._xml(
            op,
            f'<AssumeRoleResponse xmlns="{STS_NS}">\n  <AssumeRoleResult>\n'
            f"    <AssumedRoleUser>\n      <AssumedRoleId>{role_id}:{escape(session)}"
            f"</AssumedRoleId>\n      <Arn>{escape(assumed_arn)}</Arn>\n"
            f"    </AssumedRoleUser>\n    <Credentials>\n"
            f"      <AccessKeyId>{akid}</AccessKeyId>\n"
            f"      <SecretAccessKey>{cred.secret_access_key}</SecretAccessKey>\n"
            f"      <SessionToken>{cred.session_token}</SessionToken>\n"
            f"      <Expiration>{_iso(cred.expires_at)}</Expiration>\n"
            f"    </Credentials>\n  </AssumeRoleResult>\n"
            f"  <ResponseMetadata>\n    <RequestId>{uuid.uuid4()}</RequestId>\n"
            f"  </ResponseMetadata>\n</AssumeRoleResponse>\n",
        )

    # ------------------------------------------------------------------ Lightsail
    async def _lightsail(self, request: web.Request, op: str, body: bytes) -> web.StreamResponse:
        self._count(op, "calls")
        if self.faults.unreachable_regions:
            scope = _AUTH_RE.search(request.headers.get("Authorization") or "")
            if scope is not None and scope.group(2) in self.faults.unreachable_regions:
                self._count(op, "dropped")
                return self._drop(request)
        caller = self._authenticate(request, op, xml=False)
        account, region = caller.account_id, caller.region
        key = (account, region)
        self._calls[key] = self._calls.get(key, 0) + 1
        faults = self.faults
        if faults.hang_regions and faults.is_hang(account, region):
            return await self._hang(request, op)
        await self._latency()
        if faults.redirect_regions and faults.is_redirected(account, region):
            return self._redirect(request, op)
        if faults.huge_answers and faults.is_huge(account, region, op):
            return await self._huge(request, op)
        if faults.huge_errors and faults.has_huge_error(account, region):
            text = f"{op} refused in {region}: "
            return self._json_error(
                op,
                "other_errors",
                400,
                "AccessDeniedException",
                text + "x" * max(0, faults.huge_error_bytes - len(text)),
            )
        if faults.unenabled_regions and faults.is_unenabled_region(account, region):
            return self._json_error(
                op,
                "denied",
                400,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        if faults.denied_regions and faults.is_denied_region(account, region):
            return self._json_error(
                op,
                "denied",
                400,
                "AccessDeniedException",
                faults.denied_message
                or f"User is not authorized to perform: lightsail:{op} in {region}",
            )
        fault = faults.draw()
        if fault == "drop":
            self._count(op, "dropped")
            return self._drop(request)
        if fault == "5xx":
            if faults.rng.random() < 0.5:
                return self._json_error(
                    op, "errors_5xx", 500, "ServiceException", "An internal error occurred."
                )
            return self._json_error(
                op, "errors_5xx", 503, "ServiceUnavailable", "Service Unavailable"
            )
        if fault == "throttle" or (faults.operation_throttle and faults.throttles(op)):
            return self._json_error(op, "throttled", 400, "ThrottlingException", "Rate exceeded")
        if op in faults.denied_operations:
            return self._json_error(
                op,
                "denied",
                400,
                "AccessDeniedException",
                f"User is not authorized to perform: lightsail:{op} in {region}",
            )

        params: dict[str, Any] = {}
        if body and body != b"{}":
            try:
                params = json.loads(body)
            except ValueError:
                return self._json_error(
                    op, "other_errors", 400, "SerializationException", "Invalid JSON body"
                )
            if not isinstance(params, dict):
                params = {}
        if op == "GetContainerServices":
            name = params.get("serviceName")
            if name is None:
                self._count(op, "ok")
                return self._json(self._services_body(account, region))
            if faults.malformed and faults.is_malformed(account, region):
                services = self.fleet.malformed_services(account, region)
            else:
                services = self.fleet.services(account, region)
            for svc in services:
                if svc.get("containerServiceName") == name:
                    self._count(op, "ok")
                    return self._json(_dumps({"containerServices": [svc]}))
            return self._not_found(op, name)
        if op in _PER_SERVICE:
            name = params.get("serviceName")
            if not isinstance(name, str):
                return self._invalid(op, "serviceName is required")
            if (account, region, name) in faults.vanished:
                return self._not_found(op, name)
            try:
                if op == "GetContainerImages":
                    answer = self.fleet.images(account, region, name)
                elif op == "GetContainerServiceDeployments":
                    answer = self.fleet.deployments(account, region, name)
                else:
                    answer = self._metric_data(account, region, name, params)
            except KeyError:
                return self._not_found(op, name)
            except ValueError as exc:
                return self._invalid(op, str(exc))
            self._count(op, "ok")
            return self._json(_dumps(answer))
        if op == "GetContainerServicePowers":
            self._count(op, "ok")
            return self._json(_dumps(self.fleet.powers(region)))
        if op == "GetRegions":
            self._count(op, "ok")
            return self._json(_dumps({"regions": self.fleet.region_wire()}))
        return self._json_error(
            op, "other_errors", 400, "UnknownOperationException", f"Unknown operation {op}"
        )

    def _invalid(self, op: str, message: str) -> web.Response:
        return self._json_error(op, "other_errors", 400, "InvalidInputException", message)

    def _metric_data(
        self, account: str, region: str, name: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        """GetContainerServiceMetricData's answer; ValueError (InvalidInputException) for a
        request AWS would refuse: the botocore model's constraints (metricName, period
        60..86400, statistics, the times), a start after its end, and more than
        MAX_DATAPOINTS datapoints."""
        metric, period, stats = (
            params.get("metricName"),
            params.get("period"),
            params.get("statistics"),
        )
        start, end = params.get("startTime"), params.get("endTime")
        if metric not in METRICS:
            raise ValueError(f"metricName {metric!r}: must be one of {', '.join(METRICS)}")
        if not isinstance(period, int) or isinstance(period, bool) or not 60 <= period <= 86400:
            raise ValueError(f"period {period!r}: must be an integer from 60 to 86400")
        if not stats or not isinstance(stats, list) or not set(stats) <= set(STATISTICS):
            raise ValueError(f"statistics {stats!r}: a list of {', '.join(STATISTICS)}")
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (start, end)):
            raise ValueError("startTime and endTime are required timestamps")
        assert isinstance(start, int | float) and isinstance(end, int | float)
        if start >= end:
            raise ValueError("startTime must be before endTime")
        if (end - start) / period > MAX_DATAPOINTS:
            raise ValueError(
                f"the request asks for {math.ceil((end - start) / period)} datapoints; "
                f"at most {MAX_DATAPOINTS} per call"
            )
        points = self.fleet.metric_data(account, region, name, metric, start, end, period, stats)
        return {"metricName": metric, "metricData": points}

    def _services_body(self, account: str, region: str) -> bytes:
        f = self.faults
        if (
            f.malformed
            or f.unknown_members
            or f.bad_leaves
            or f.no_services_member
            or (f.services_not_list)
        ):
            variant = f.answer_variant(account, region)
            if variant is not None:
                return _dumps(self.fleet.answer(variant, account, region))
        key = (account, region)
        got = self._bodies.get(key)
        if got is None:
            services = self.fleet.services(account, region)
            got = _dumps({"containerServices": services}) if services else _EMPTY_SERVICES
            self._bodies[key] = got
        return got

    def _not_found(self, op: str, name: str) -> web.Response:
        return self._json_error(
            op,
            "other_errors",
            400,
            "NotFoundException",
            f"The container service {name!r} does not exist.",
        )

    def _redirect(self, request: web.Request, op: str) -> web.Response:
        """307 Temporary Redirect to `faults.redirect_to` (the same path): AWS never does."""
        self._count(op, "redirected")
        return web.Response(
            status=307,
            headers={
                "Location": self.faults.redirect_to.rstrip("/") + request.path_qs,
                "x-amzn-RequestId": str(uuid.uuid4()),
            },
        )

    async def _huge(self, request: web.Request, op: str) -> web.StreamResponse:
        """An answer of `faults.huge_bytes` (valid JSON: one service with a long tag), written
        in 64 KiB pieces for as long as the client takes them; `huge_bytes_sent` counts what
        it took (what the socket buffers accepted, at least what the client read)."""
        self._count(op, "huge")
        size = self.faults.huge_bytes
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": _JSON_CT, "x-amzn-RequestId": str(uuid.uuid4())}
        )
        if self.faults.huge_with_length:
            resp.content_length = size
        head = (
            b'{"containerServices":[{"containerServiceName":"huge","tags":[{"key":"pad","value":"'
        )
        tail = b'"}]}]}'
        piece = b"x" * 65536
        left = size - len(head) - len(tail)
        try:
            await resp.prepare(request)
            await resp.write(head)
            self.huge_bytes_sent += len(head)
            while left > 0:
                chunk = piece if left >= len(piece) else piece[:left]
                await resp.write(chunk)
                self.huge_bytes_sent += len(chunk)
                left -= len(chunk)
            await resp.write(tail)
            self.huge_bytes_sent += len(tail)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):  # the client closed the connection
            pass
        return resp

    def _drop(self, request: web.Request) -> web.StreamResponse:
        """Close the connection without a byte of answer."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError()

    async def _hang(self, request: web.Request, op: str) -> web.StreamResponse:
        """Hold the request unanswered until the client goes away (aiohttp cancels this
        handler when the connection closes) or `hang_max_s` passes, then close it."""
        self._count(op, "hung")
        self.hanging += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hang_waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, self.faults.hang_max_s)
        except TimeoutError:
            pass
        finally:
            self.hanging -= 1
            self._hang_waiters.discard(waiter)
        return self._drop(request)

    # ------------------------------------------------------------------ Organizations
    async def _organizations(
        self, request: web.Request, op: str, body: bytes
    ) -> web.StreamResponse:
        self._count(op, "calls")
        caller = self._authenticate(request, op, xml=False)
        await self._latency()
        fleet = self.fleet
        if caller.account_id != fleet.hub_account_id:
            return self._json_error(
                op,
                "denied",
                400,
                "AccessDeniedException",
                "You don't have permissions to access this resource.",
            )
        try:
            params = json.loads(body) if body else {}
        except ValueError:
            params = None
        if not isinstance(params, dict):
            return self._json_error(
                op, "other_errors", 400, "SerializationException", "Invalid JSON body"
            )
        hub = fleet.hub_account_id
        org_arn = f"arn:aws:organizations::{hub}:organization/{fleet.org_id}"
        if op == "DescribeOrganization":
            self._count(op, "ok")
            return self._json(
                _dumps(
                    {
                        "Organization": {
                            "Id": fleet.org_id,
                            "Arn": org_arn,
                            "FeatureSet": "ALL",
                            "MasterAccountArn": f"arn:aws:organizations::{hub}:account/"
                            f"{fleet.org_id}/{hub}",
                            "MasterAccountId": hub,
                            "MasterAccountEmail": fleet.org_accounts[hub].email,
                            "AvailablePolicyTypes": [
                                {"Type": "SERVICE_CONTROL_POLICY", "Status": "ENABLED"}
                            ],
                        }
                    }
                )
            )
        if op == "ListRoots":
            self._count(op, "ok")
            root = {
                "Id": fleet.root_id,
                "Arn": f"arn:aws:organizations::{hub}:root/{fleet.org_id}/{fleet.root_id}",
                "Name": "Root",
                "PolicyTypes": [{"Type": "SERVICE_CONTROL_POLICY", "Status": "ENABLED"}],
            }
            return self._json(_dumps({"Roots": [root]}))
        items: list[dict[str, Any]]
        if op == "ListAccounts":
            key = "Accounts"
            items = [a.wire(fleet.org_id, hub) for a in fleet.org_accounts.values()]
        elif op in ("ListAccountsForParent", "ListOrganizationalUnitsForParent"):
            parent = params.get("ParentId")
            if parent != fleet.root_id and parent not in fleet.org_units:
                return self._json_error(
                    op,
                    "other_errors",
                    400,
                    "ParentNotFoundException",
                    "We can't find a root or OU with the ParentId that you specified.",
                )
            if op == "ListAccountsForParent":
                key = "Accounts"
                items = [
                    a.wire(fleet.org_id, hub)
                    for a in fleet.org_accounts.values()
                    if a.parent_id == parent
                ]
            else:
                key = "OrganizationalUnits"
                items = [
                    {
                        "Id": ou.id,
                        "Arn": f"arn:aws:organizations::{hub}:ou/{fleet.org_id}/{ou.id}",
                        "Name": ou.name,
                    }
                    for ou in fleet.children_ous(str(parent))
                ]
        else:
            return self._json_error(
                op, "other_errors", 400, "UnknownOperationException", f"Unknown operation {op}"
            )
        limit = params.get("MaxResults", 20)
        if not isinstance(limit, int) or not 1 <= limit <= 20:
            return self._json_error(
                op, "other_errors", 400, "InvalidInputException", "MaxResults must be 1..20"
            )
        start = 0
        token = params.get("NextToken")
        if token is not None:
            try:
                tag, _, num = base64.urlsafe_b64decode(str(token)).decode().rpartition(":")
                if tag != f"{op}:{params.get('ParentId')}":
                    raise ValueError(tag)
                start = int(num)
            except ValueError:
                return self._json_error(
                    op, "other_errors", 400, "InvalidInputException", "Invalid NextToken"
                )
        page: dict[str, Any] = {key: items[start : start + limit]}
        if start + limit < len(items):
            raw = f"{op}:{params.get('ParentId')}:{start + limit}".encode()
            page["NextToken"] = base64.urlsafe_b64encode(raw).decode()
        self._count(op, "ok")
        return self._json(_dumps(page))

    # ------------------------------------------------------------------ /_sim
    async def _sim_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _sim_truth(self, request: web.Request) -> web.Response:
        truth = await asyncio.get_running_loop().run_in_executor(None, self.fleet.truth)
        return web.json_response(truth)

    async def _sim_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response({"ok": True})

    async def _sim_expire(self, request: web.Request) -> web.Response:
        self.expire_all_credentials()
        return web.json_response({"ok": True})
