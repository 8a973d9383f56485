"""Delivering what a run publishes over the network, with a few tries.

`deliver` tries a send TRIES times with backoff and logs each failure as a warning
(`<kind>_failed`: the target as `shown`, the attempt, and a reason made of status codes
and exception types only, so no URL token, message text or credential reaches the log).
It never raises: what was stored and the exit status do not depend on it.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from inventory import logs
from inventory.publish import message as message_mod
from inventory.publish.targets import SnsTopic, Webhook

log = logging.getLogger("inventory.publish")

TRIES = 3
BACKOFF = (1.0, 3.0)  # seconds before the 2nd and 3rd tries
TIMEOUT = 10.0  # seconds per try


def reason(exc: BaseException) -> str:
    """Why a send failed, without any text the far end or a library chose."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}" if not isinstance(exc.reason, str) else "URLError"
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


def deliver(kind: str, shown: str, send: Callable[[], None], run_id: str) -> bool:
    """Call `send` until it succeeds, at most TRIES times; True when it did."""
    for attempt in range(1, TRIES + 1):
        try:
            send()
            return True
        except Exception as exc:
            last = attempt == TRIES
            why = reason(exc)
            logs.event(
                log,
                logging.WARNING,
                f"{kind}_failed",
                f"{kind} to {shown} failed ({why}), try {attempt} of {TRIES}"
                + ("; giving up (the run is stored as it was)" if last else "; retrying"),
                run_id=run_id,
                target=shown,
                attempt=attempt,
                tries=TRIES,
                reason=why,
                final=last,
            )
            if not last:
                time.sleep(BACKOFF[attempt - 1])
    return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: the message is never sent somewhere the flag did not name."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post_json(url: str, body: bytes) -> None:
    """POST `body` as JSON; any status outside 2xx raises (urllib.error.HTTPError)."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with _opener.open(request, timeout=TIMEOUT) as answer:
        answer.read()


def sns_publish(topic: SnsTopic, message: dict[str, Any]) -> None:
    """Publish `message` (as JSON) to `topic` with the standard chain's credentials (the
    hub's); SNS's own endpoint variables (AWS_ENDPOINT_URL_SNS) are honoured by botocore."""
    client = boto3.session.Session().client(
        "sns",
        region_name=topic.region,
        config=Config(
            connect_timeout=TIMEOUT, read_timeout=TIMEOUT, retries={"total_max_attempts": 1}
        ),
    )
    extra: dict[str, str] = {}
    if topic.fifo:  # a FIFO topic needs a group; the dedup id makes retries idempotent
        extra = {
            "MessageGroupId": "lightsail-inventory",
            "MessageDeduplicationId": f"{message['run_id']}.{message['shard']}".replace("/", "-"),
        }
    client.publish(
        TopicArn=topic.arn,
        Message=message_mod.encode(message).decode("utf-8"),
        Subject=message_mod.subject(message),
        **extra,
    )


def notify(target: Webhook | SnsTopic, message: dict[str, Any]) -> bool:
    """Send `message` to one `--notify` target (retried; logged when it fails)."""
    if isinstance(target, SnsTopic):
        return deliver(
            "notify", target.shown, lambda: sns_publish(target, message), message["run_id"]
        )
    body = message_mod.encode(message)
    return deliver("notify", target.shown, lambda: post_json(target.url, body), message["run_id"])
