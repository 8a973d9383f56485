"""Run ids and shards: their one home.

A run id is the contract's `YYYYMMDDTHHMMSSZ-suffix`: the run's UTC start time (its
`started_at`, the same in every shard's `runs` row, so every shard writes the same
`run_date` partition), '-', then 1-32 letters, digits, '_' or '-' (6 random hex digits when
collect makes one up). It never contains '.', so a Parquet file name `<run_id>.<part>.parquet`
says which run it holds.

`collect --shard K/N` (or `--shards N` with K from the job array's environment) collects a
stable share of the accounts (`shard_of`); every shard of a run writes under the run id the
submitter gives with `--run-id`, so the lake holds one run in N parts. Every problem with
these flags is a `UsageError` that names the flag and the value.

`--run-id-from-job NAME` derives that shared id from what every pod of one Kubernetes Job is
given alike, the Job's name (`run_id_from_job`): a CronJob names each Job
`<cronjob>-<scheduled time in minutes since the epoch>`, so the id is that time, then 6 hex
digits of SHA-256 of the whole name. No pod needs to talk to another to agree on it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence

from inventory.errors import UsageError
from inventory.model import Account

__all__ = [
    "MAX_SHARDS",
    "RUN_ID_FORMAT",
    "SHARD_INDEX_ENV",
    "Shard",
    "check_run_id",
    "new_run_id",
    "parse_shard",
    "resolve_run_id",
    "resolve_shard",
    "run_id_from_job",
    "run_started_at",
    "shard_from_env",
    "shard_of",
]

MAX_SHARDS = 10_000
# Where array jobs put the index of the current job: AWS Batch array jobs, Kubernetes
# Indexed Jobs (completionMode: Indexed). Looked up in this order.
SHARD_INDEX_ENV: tuple[str, ...] = ("AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX")
RUN_ID_FORMAT = "YYYYMMDDTHHMMSSZ-suffix"
TIME_FORMAT = "%Y%m%dT%H%M%SZ"  # strftime of a run id's start time
_TIME_LENGTH = len("20261127T053650Z")
# The contract's run id: the UTC start, '-', then a suffix (6 hex digits when collect makes
# it up; 1-32 letters, digits, '_' or '-' when given).
_RUN_ID = re.compile(r"(?P<ts>[0-9]{8}T[0-9]{6}Z)-(?P<suffix>[A-Za-z0-9][A-Za-z0-9_-]{0,31})")
# A Job name as a CronJob makes it: anything, '-', the scheduled minute since the epoch.
_JOB_NAME = re.compile(r".+-(?P<minutes>[0-9]{1,10})")
# The scheduled minutes a Job name may carry (since the epoch): from 2000 to 2200, so that a
# hand-made name like `inventory-2` is not read as a minute of 1970.
_JOB_MINUTES = range(946_684_800 // 60, 7_258_118_400 // 60)
_SHARD = re.compile(r"\s*(?P<k>[0-9]+)\s*/\s*(?P<n>[0-9]+)\s*")


def shard_of(account_id: str, shards: int) -> int:
    """The shard (0 … shards-1) that owns `account_id`: SHA-256 of the id as a big integer,
    modulo `shards`. The same on every machine and Python version (unlike hash())."""
    digest = hashlib.sha256(account_id.encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % shards


@dataclasses.dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count`: the accounts whose `shard_of` is `index`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"no shard {self.index}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def part(self) -> str:
        """The Parquet part name of this shard's files: `<run_id>.shard-K.parquet`."""
        return f"shard-{self.index}"

    def owns(self, account_id: str) -> bool:
        return shard_of(account_id, self.count) == self.index

    def select(self, accounts: Sequence[Account]) -> tuple[Account, ...]:
        """This shard's accounts, in their original order."""
        return tuple(a for a in accounts if self.owns(a.id))


def parse_shard(text: str, flag: str = "--shard") -> Shard:
    """`K/N` (0 <= K < N) -> Shard; UsageError naming the flag and value otherwise."""
    found = _SHARD.fullmatch(text)
    if found is None:
        raise UsageError(f"{flag} {text!r}: expected K/N, e.g. 0/4 (shard K of N, K from 0)")
    k, n = int(found["k"]), int(found["n"])
    if not 1 <= n <= MAX_SHARDS:
        raise UsageError(f"{flag} {text!r}: N must be between 1 and {MAX_SHARDS:,}")
    if k >= n:
        raise UsageError(f"{flag} {text!r}: K must be less than N (shards are 0 to {n - 1})")
    return Shard(k, n)


def shard_from_env(count: int, environ: Mapping[str, str]) -> Shard:
    """`--shards N`: K from AWS_BATCH_JOB_ARRAY_INDEX, else JOB_COMPLETION_INDEX."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise UsageError(f"--shards {count!r}: must be a whole number")
    if not 1 <= count <= MAX_SHARDS:
        low_or_high = "at least 1" if count < 1 else f"at most {MAX_SHARDS:,}"
        raise UsageError(f"--shards {count}: must be {low_or_high}")
    for name in SHARD_INDEX_ENV:
        value = environ.get(name)
        if value is None or not value.strip():
            continue
        if not value.strip().isdigit():
            raise UsageError(f"--shards {count}: {name}={value!r} is not a shard index (0, 1, …)")
        k = int(value)
        if k >= count:
            raise UsageError(
                f"--shards {count}: {name}={k}, but shards are numbered 0 to {count - 1}; "
                f"make the array size (job completions) equal to --shards"
            )
        return Shard(k, count)
    raise UsageError(
        f"--shards {count}: neither {' nor '.join(SHARD_INDEX_ENV)} is set (they are set in "
        "an AWS Batch array job and a Kubernetes Indexed Job); elsewhere give --shard K/N"
    )


def check_run_id(run_id: str, flag: str = "--run-id") -> str:
    """A run id as the contract has it (`20261127T053650Z-3f9a1c`): the UTC start time, then
    a suffix. Returns it; UsageError naming the flag and value otherwise."""
    found = _RUN_ID.fullmatch(run_id)
    problem = None
    if found is None:
        problem = (
            f"expected {RUN_ID_FORMAT}: the UTC start time, then 1-32 letters, digits, '_' "
            "or '-', e.g. $(date -u +%Y%m%dT%H%M%SZ)-$(openssl rand -hex 3)"
        )
    else:
        try:
            dt.datetime.strptime(found["ts"], TIME_FORMAT)
        except ValueError:
            problem = f"{found['ts']} is not a valid UTC time (YYYYMMDDTHHMMSSZ)"
    if problem is not None:
        raise UsageError(f"{flag} {run_id!r}: {problem}")
    return run_id


def run_started_at(run_id: str) -> dt.datetime:
    """The UTC start time a run id begins with (the same for every shard of the run, so
    they all write the same `run_date` partition)."""
    check_run_id(run_id)
    return dt.datetime.strptime(run_id[:_TIME_LENGTH], TIME_FORMAT).replace(tzinfo=dt.UTC)


def new_run_id(started: dt.datetime) -> str:
    """A run id for a run that starts at `started`: sortable by time, the UTC start, then 6
    random hex digits."""
    return started.astimezone(dt.UTC).strftime(TIME_FORMAT) + "-" + secrets.token_hex(3)


def resolve_shard(
    shard: str | None,
    shards: int | None,
    run_id: str | None,
    environ: Mapping[str, str],
) -> Shard | None:
    """The collect flags `--shard K/N`, `--shards N` and `--run-id`, checked together."""
    if run_id is not None:
        check_run_id(run_id)
    if shard is not None and shards is not None:
        raise UsageError(
            f"--shard {shard} and --shards {shards}: give one (--shards takes K from "
            f"{' or '.join(SHARD_INDEX_ENV)})"
        )
    if shard is None and shards is None:
        return None
    found = parse_shard(shard) if shard is not None else shard_from_env(shards or 0, environ)
    if run_id is None:
        flag = f"--shard {shard}" if shard is not None else f"--shards {shards}"
        raise UsageError(
            f"{flag} needs --run-id: the id every shard of the run shares, chosen once by "
            f"whoever starts them ({RUN_ID_FORMAT}, e.g. "
            "$(date -u +%Y%m%dT%H%M%SZ)-$(openssl rand -hex 3)), or --run-id-from-job in a "
            "Kubernetes Job"
        )
    return found


def run_id_from_job(name: str, flag: str = "--run-id-from-job") -> str:
    """The run id every pod of the Job `name` derives alike: the time its trailing
    `-<minutes since the epoch>` says (a CronJob names its Jobs so), then the first 6 hex
    digits of SHA-256 of the whole name, e.g. `lightsail-inventory-29930520` ->
    `20261128T020000Z-` + 6 hex digits. A name without that suffix (a Job made by hand, or
    by `kubectl create job --from=cronjob/...` without a name that ends in one) is a
    UsageError that says how to name it."""
    found = _JOB_NAME.fullmatch(name)
    if found is None or int(found["minutes"]) not in _JOB_MINUTES:
        raise UsageError(
            f"{flag} {name!r}: expected a Job name that ends in -<minutes since the epoch>, "
            "as a CronJob names its Jobs (e.g. lightsail-inventory-29930520); name a Job made "
            "by hand so (kubectl create job --from=cronjob/CRONJOB "
            "CRONJOB-$(( $(date +%s) / 60 ))) or give --run-id instead"
        )
    started = dt.datetime.fromtimestamp(int(found["minutes"]) * 60, dt.UTC)
    suffix = hashlib.sha256(name.encode("utf-8")).hexdigest()[:6]
    return started.strftime(TIME_FORMAT) + "-" + suffix


def resolve_run_id(run_id: str | None, job_name: str | None) -> str | None:
    """The collect flags `--run-id` and `--run-id-from-job`: at most one; the run id they
    give, checked (None: collect makes one up)."""
    if run_id is not None and job_name is not None:
        raise UsageError(
            f"--run-id {run_id} and --run-id-from-job {job_name}: give one (both may come "
            "from the environment: INVENTORY_RUN_ID, INVENTORY_JOB_NAME)"
        )
    if job_name is not None:
        return run_id_from_job(job_name)
    return None if run_id is None else check_run_id(run_id)
