"""Plain data passed between the stages: the plan in, one result per account × region out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

# --max-answer-bytes (aws/bounded.py): a real region answers in kilobytes.
DEFAULT_MAX_ANSWER_BYTES = 32 * 1024 * 1024
MIN_MAX_ANSWER_BYTES = 64 * 1024
MAX_MAX_ANSWER_BYTES = 1024 * 1024 * 1024

# --usage-days: the window of GetContainerServiceMetricData. The API reference states no
# retention for container service metrics; 14 days (336 hourly datapoints per call) is ours.
DEFAULT_USAGE_DAYS = 14
MAX_USAGE_DAYS = 14

# An error message stored, logged or printed has at most this many characters (and says so
# when it was cut): an error body is the answering account's text, of any length.
MAX_MESSAGE_CHARS = 1024


def cap_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` when it has at most `limit` characters, else its start marked as cut, `limit`
    characters in all (so capping again changes nothing)."""
    if len(text) <= limit:
        return text
    mark = f"… [cut: {len(text):,} characters in all]"
    return text[: max(0, limit - len(mark))] + mark


@dataclass(frozen=True, slots=True)
class Account:
    """One AWS account to inventory. `role_arn` None means: use the base credentials as they are."""

    id: str
    name: str | None = None
    role_arn: str | None = None
    external_id: str | None = None


@dataclass(frozen=True, slots=True)
class Options:
    """How a collect behaves. Defaults are the contract's."""

    concurrency: int = 256  # calls in flight, in all (workers split them)
    rate: float = 1000.0  # calls/s, in all; halved while AWS throttles (pacing.Pacer)
    timeout: float = 10.0  # one API call, seconds (connect and read)
    target_deadline: float | None = None  # one account × region with its retries; None: derived
    # the whole collect: unfinished targets then end 'RunDeadline'; None: derived from the
    # others (run/collect.py's run_time_bound), so that a run always ends
    run_deadline: float | None = None
    max_attempts: int = 8
    include_env_values: bool = False
    # --export-env-values: the lake gets the stored values too (else their fingerprints)
    export_env_values: bool = False
    session_name: str = "lightsail-inventory"
    workers: int = 1  # processes; 0 = one per core when there are enough accounts
    # 'lean': the hot call signed by its own SigV4 signer (checked against botocore's) + one
    # aiohttp session + json.loads (aws/lean.py); 'botocore': through the aiobotocore client.
    # Same endpoints, same errors.
    engine: str = "lean"
    # --deep: per service found, GetContainerServiceDeployments and GetContainerImages too
    deep: bool = False
    # --usage: GetContainerServicePowers per region and GetContainerServiceMetricData per
    # service (CPU and memory, hourly, over the last `usage_days` days; docs/cost.md)
    usage: bool = False
    usage_days: int = DEFAULT_USAGE_DAYS
    # bytes of one answer read at most; a larger one fails its call 'AnswerTooLarge'
    # (aws/bounded.py)
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES

    @property
    def deadline(self) -> float:
        """Seconds one account × region may take, retries and backoff included."""
        if self.target_deadline is not None:
            return self.target_deadline
        return self.timeout * 3 + 30.0


@dataclass(frozen=True, slots=True)
class OrgDiscovery:
    """Find accounts with Organizations instead of (or besides) listing them."""

    role_name: str  # assumed in every discovered account
    external_id: str | None = None
    ous: tuple[str, ...] = ()  # only accounts under these OUs (recursively); () = whole org
    skip: tuple[str, ...] = ()  # account ids never inventoried
    management_role_arn: str | None = None  # None: base credentials call Organizations
    management_external_id: str | None = None  # sent with AssumeRole of management_role_arn


@dataclass(frozen=True, slots=True)
class Plan:
    """Accounts × regions × options: what one run will do. Frozen and validated by config.py.

    `own_account`: no accounts file; the caller's own account (GetCallerIdentity), no role.
    `org`: accounts are discovered from Organizations at run time (added to `accounts`).
    `fleet_defining`: False when the command line narrowed the plan (`--regions LIST`,
    `--no-org` over the file's `org = true`): a one-off run that retires nothing from the
    latest_* views (store.FLEET_SQL). Sharding does not narrow: the shards of one run id
    together are its plan.
    """

    accounts: tuple[Account, ...]
    regions: tuple[str, ...]
    options: Options = field(default_factory=Options)
    source: str | None = None  # the accounts file it came from, for messages
    own_account: bool = False
    org: OrgDiscovery | None = None
    fleet_defining: bool = True

    @property
    def targets(self) -> int:
        return len(self.accounts) * len(self.regions)


@dataclass(slots=True)
class ErrorRecord:
    """A final failure or an anomaly: one row of `errors`."""

    occurred_at: dt.datetime
    account_id: str
    region: str | None
    operation: str
    error_code: str
    message: str  # at most MAX_MESSAGE_CHARS (longer ones are cut, and say so)
    attempts: int

    def __post_init__(self) -> None:
        if len(self.message) > MAX_MESSAGE_CHARS:
            self.message = cap_message(self.message)


@dataclass(slots=True)
class TargetResult:
    """What one account × region produced: its services (API dicts) or its error."""

    account: Account
    region: str
    started_at: dt.datetime
    finished_at: dt.datetime
    attempts: int  # API calls made for it (0 when the account's AssumeRole failed)
    services: list[dict[str, Any]] | None  # None when failed
    error: ErrorRecord | None = None
    anomalies: list[ErrorRecord] = field(default_factory=list)  # stored, but worth a look
    usage: Any = None  # collect --usage: its answers (run.usage.UsageAnswers)

    @property
    def ok(self) -> bool:
        return self.services is not None

    @property
    def collected_at(self) -> dt.datetime:
        return self.finished_at


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class FailureGroup:
    """The failures of one (region, operation, error code): how many, a few example
    accounts (in the order they failed) and the first one's message."""

    region: str | None  # None: every region of the account (e.g. AssumeRole)
    operation: str
    error_code: str
    count: int
    accounts: list[str]
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "operation": self.operation,
            "error_code": self.error_code,
            "count": self.count,
            "accounts": self.accounts,
            "message": self.message,
        }


def group_failures(failures: list[ErrorRecord], examples: int = 3) -> list[FailureGroup]:
    """Failures grouped by (region, operation, error code), the biggest group first (then
    by region, operation and code), each with up to `examples` example accounts."""
    groups: dict[tuple[str | None, str, str], FailureGroup] = {}
    for e in failures:
        key = (e.region, e.operation, e.error_code)
        g = groups.get(key)
        if g is None:
            g = groups[key] = FailureGroup(e.region, e.operation, e.error_code, 0, [], e.message)
        g.count += 1
        if len(g.accounts) < examples and e.account_id not in g.accounts:
            g.accounts.append(e.account_id)
    return sorted(
        groups.values(),
        key=lambda g: (-g.count, g.region or "", g.operation, g.error_code),
    )
