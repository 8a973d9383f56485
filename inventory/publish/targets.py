"""The publishing flags of `collect`, checked before the run starts (a bad one is a usage
error, exit 2, with nothing collected): `--metrics-file`, `--pushgateway`, `--notify`
(repeatable) and `--summary-json`.

A webhook URL is a secret of sorts (a Slack incoming webhook's path is its token): only its
scheme and host are ever shown (`Webhook.shown`), in errors and in logs alike.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from inventory.errors import UsageError

SNS_PREFIX = "sns:"
# arn:PARTITION:sns:REGION:ACCOUNT:NAME (aws, aws-cn, aws-us-gov, …; a topic name: 1-256 letters, digits, '_', '-';
# a FIFO topic's ends in '.fifo': SNS CreateTopic's constraints)
_TOPIC_ARN = re.compile(
    r"arn:(?P<partition>aws(?:-[a-z]+)*):sns:(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+):"
    r"(?P<account>[0-9]{12}):(?P<name>[A-Za-z0-9_-]{1,256}?(?:\.fifo)?)"
)


def shown_url(url: str) -> str:
    """`scheme://host[:port]/…`: enough to tell which endpoint, never its path or query
    (where webhook tokens live) nor a user or password."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL (an unclosed '['): cut it by hand
        return _rough_shown(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if _port(url) is not None else ""
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _rough_shown(url: str) -> str:
    """`scheme://host/…` of a URL urlsplit refuses: what comes before the first '/', '?' or
    '#' after `//`, a user or password left out."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "?"
    host = re.split(r"[/?#]", rest, maxsplit=1)[0]
    host = host.rpartition("@")[2] or "?"
    return f"{scheme}://{host}" + ("/…" if len(rest) > len(host) else "")


def _port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def check_http_url(flag: str, url: str) -> str:
    """`url` when it is an http(s) URL with a host and no user or password, else a
    UsageError naming `flag` and showing the URL as `shown_url` does."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed '[' (urlsplit: "Invalid IPv6 URL")
        raise UsageError(f"{flag}: not a valid URL ({_rough_shown(url)})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        what = f"a {scheme}: URL" if scheme else "no URL"
        raise UsageError(f"{flag}: {what} ({shown_url(url)}); give an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 (a bad port raises)
    except ValueError:
        raise UsageError(f"{flag}: bad port in {parts.scheme}://{parts.hostname}:…") from None
    if parts.username is not None or parts.password is not None:
        # urllib would not send them, and a password in a flag shows in process lists
        raise UsageError(
            f"{flag}: a user or password in the URL ({shown_url(url)}) is not supported; "
            "give the URL without `user:password@`"
        )
    return url


@dataclass(frozen=True, slots=True)
class Webhook:
    """An http(s) endpoint that gets the notification as a JSON POST (e.g. Slack's)."""

    url: str

    @property
    def shown(self) -> str:
        return shown_url(self.url)


@dataclass(frozen=True, slots=True)
class SnsTopic:
    """An SNS topic that gets the notification through Publish, from the hub credentials."""

    arn: str
    region: str

    @property
    def shown(self) -> str:
        return f"{SNS_PREFIX}{self.arn}"

    @property
    def fifo(self) -> bool:
        return self.arn.endswith(".fifo")


Target = Webhook | SnsTopic


def parse_notify(value: str) -> Target:
    """One `--notify` value: `sns:arn:aws:sns:REGION:ACCOUNT:TOPIC` or an http(s) URL."""
    if value.startswith(SNS_PREFIX):
        arn = value[len(SNS_PREFIX) :]
        m = _TOPIC_ARN.fullmatch(arn)
        if m is None:
            raise UsageError(
                f"--notify {value!r}: not an SNS topic ARN; give "
                "sns:arn:aws:sns:REGION:ACCOUNT_ID:TOPIC_NAME (12-digit account id)"
            )
        return SnsTopic(arn, m["region"])
    return Webhook(check_http_url("--notify", value))


def check_file(flag: str, path: Path) -> Path:
    """A file the run will write: its folder must exist (the tool does not make it) and take
    a new file (a probe file is made there and removed), and the path must not be a folder."""
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name in it")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".inventory-probe-"):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UsageError(f"{flag} {path}: cannot write in the folder {folder} ({why})") from None
    return path


@dataclass(frozen=True, slots=True)
class Publishing:
    """Where a run's end is published; empty: nowhere."""

    metrics_file: Path | None = None
    pushgateway: str | None = None
    notify: tuple[Target, ...] = ()
    summary_json: Path | None = None

    @classmethod
    def parse(
        cls,
        metrics_file: Path | None = None,
        pushgateway: str | None = None,
        notify: list[str] | None = None,
        summary_json: Path | None = None,
    ) -> Publishing:
        return cls(
            None if metrics_file is None else check_file("--metrics-file", metrics_file),
            None if pushgateway is None else check_http_url("--pushgateway", pushgateway),
            tuple(parse_notify(v) for v in notify or ()),
            None if summary_json is None else check_file("--summary-json", summary_json),
        )
