"""AWS answers are input: read up to a bounded size, never redirected.

A member account is not fully trusted, and neither is the network between us and AWS. Every
answer the collector reads from Lightsail, STS and Organizations (both engines, `--deep`,
discovery and doctor alike) goes through here:

- Bounded size: at most `max_answer_bytes` (`--max-answer-bytes`) of body are read. An
  answer whose Content-Length says more is refused before its body is read; one that streams
  more (chunked, or compressed) is cut one byte past the limit and its connection closed,
  the rest never read. Either way the call fails with error code `AnswerTooLarge`, is not
  retried (the same answer would come again) and only its own target fails.
- No redirects: Lightsail, STS and Organizations never redirect. A 3xx answer fails the call
  with `UnexpectedRedirect` and is never followed, so no signed request and no session token
  goes to the origin it names. (S3, which does redirect between regions, does not come
  through here: the lake uses boto3's own client and its region redirects.)

The lean engine (lean.py) calls `read_bounded` and `refuse_redirect` itself; the aiobotocore
clients get both through `session_class` (their `AioConfig.http_session_cls`). A refusal
reaches retry.classify either as itself (lean) or wrapped in botocore's HTTPClientError
(aiobotocore wraps what its HTTP session raises); classify unwraps it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import aiohttp
from aiobotocore.httpsession import AIOHTTPSession

from inventory.model import DEFAULT_MAX_ANSWER_BYTES


class AnswerRefused(Exception):
    """An answer the collector does not accept; `code` is its `errors.error_code`."""

    code = "AnswerRefused"

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)


class AnswerTooLarge(AnswerRefused):
    code = "AnswerTooLarge"


class UnexpectedRedirect(AnswerRefused):
    code = "UnexpectedRedirect"


def refuse_redirect(resp: aiohttp.ClientResponse) -> None:
    """Raise UnexpectedRedirect (and close the connection) when `resp` is a 3xx answer."""
    status = resp.status
    if 300 <= status < 400:
        location = resp.headers.get("Location")
        resp.close()
        where = f" to {location[:200]!r}" if location else ""
        raise UnexpectedRedirect(
            f"HTTP {status} redirect{where} not followed: Lightsail, STS and Organizations "
            "do not redirect, so nothing was sent there",
            status,
        )


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of `resp`, at most `limit` bytes; else AnswerTooLarge with the connection
    closed and the rest unread (never more than `limit` + 1 bytes are taken off it)."""
    length = resp.content_length
    stream = resp.content
    if length is not None and "Content-Encoding" not in resp.headers:
        if length > limit:
            resp.close()
            raise AnswerTooLarge(
                f"the answer is {length:,} bytes (its Content-Length), over the {limit:,} "
                "--max-answer-bytes allows: not read",
                resp.status,
            )
        return await stream.read()  # aiohttp never reads past the Content-Length
    chunks: list[bytes] = []
    got = 0
    while chunk := await stream.read(limit + 1 - got):
        got += len(chunk)
        if got > limit:
            resp.close()
            raise AnswerTooLarge(
                f"the answer went over the {limit:,} bytes --max-answer-bytes allows: cut "
                f"after {got:,} bytes, the rest not read",
                resp.status,
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _refuse_redirects(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """aiohttp client middleware: runs before aiohttp would follow a redirect."""
    resp = await handler(req)
    refuse_redirect(resp)
    return resp


class _BoundedResponse(aiohttp.ClientResponse):
    max_answer_bytes = DEFAULT_MAX_ANSWER_BYTES

    async def read(self) -> bytes:
        if self._body is None:
            self._body = await read_bounded(self, self.max_answer_bytes)
        return await super().read()


class _BoundedSession(AIOHTTPSession):
    """aiobotocore's HTTP session, its aiohttp sessions made with `_BoundedResponse` and
    `_refuse_redirects` (the rest as aiobotocore 2.25's `_get_session`)."""

    response_class: type[aiohttp.ClientResponse] = _BoundedResponse

    async def _get_session(self, proxy_url: Any) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession | None = self._sessions.get(proxy_url)
        if session is None:
            connector = self._create_connector(proxy_url)
            session = await self._exit_stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=connector,
                    timeout=self._timeout,
                    skip_auto_headers={"CONTENT-TYPE"},
                    auto_decompress=False,
                    response_class=self.response_class,
                    middlewares=(_refuse_redirects,),
                )
            )
            self._sessions[proxy_url] = session
        return session


@cache
def session_class(max_answer_bytes: int) -> type[AIOHTTPSession]:
    """The `AioConfig.http_session_cls` for clients that read at most `max_answer_bytes`
    per answer and follow no redirect."""
    response = type("BoundedResponse", (_BoundedResponse,), {"max_answer_bytes": max_answer_bytes})
    return type("BoundedSession", (_BoundedSession,), {"response_class": response})
