"""The accounts file and the collect flags become one frozen, validated `Plan`.

    plan = load_plan(Path("accounts.toml"), regions="us-east-1,eu-west-2", options=Options())

Without a file the plan is the caller's own account with the base credentials
(`Plan.own_account`). With one, every account gets a role ARN (its own `role_arn`, else
`arn:aws:iam::{id}:role/{role_name}`), regions come from `--regions`, else the file, else
every Lightsail region, and `org = true` adds Organizations discovery (`Plan.org`).

Every problem in the file is a `ConfigError` (a `UsageError`: exit status 2) that names the
file, the line when it can be found, the field (`accounts[3].id`, indexes counted from 0
in file order), the value and what is wrong with it. Problems with the flags are
`UsageError`s that name the flag.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import math
import re
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inventory.errors import ConfigError, Unavailable, UsageError
from inventory.model import (
    DEFAULT_USAGE_DAYS,
    MAX_MAX_ANSWER_BYTES,
    MAX_USAGE_DAYS,
    MIN_MAX_ANSWER_BYTES,
    Account,
    Options,
    OrgDiscovery,
    Plan,
)
from inventory.plan.regions import all_regions, parse_regions, region_problem

__all__ = [
    "ACCOUNT_KEYS",
    "DISCOVER_REGIONS",
    "TOP_LEVEL_KEYS",
    "load_plan",
    "role_arn_for",
    "validate_options",
]

# `--regions discover` (or `regions = ["discover"]`): Lightsail GetRegions names the regions
# when the run starts (discovery.py); until then the plan carries this sentinel.
DISCOVER_REGIONS: tuple[str, ...] = ("discover",)

TOP_LEVEL_KEYS: tuple[str, ...] = (
    "role_name",
    "external_id",
    "session_name",
    "regions",
    "org",
    "org_ous",
    "skip_accounts",
    "management_role_arn",
    "management_external_id",
    "accounts",
)
ACCOUNT_KEYS: tuple[str, ...] = ("id", "name", "role_arn", "external_id")
_ORG_ONLY_KEYS: tuple[str, ...] = (
    "org_ous",
    "skip_accounts",
    "management_role_arn",
    "management_external_id",
)

MAX_CONCURRENCY = 10_000
# Upper bounds of the collect flags: past these a value is a typo, and a run could outlast
# the night (a call that may take a day, a million retries).
MAX_RATE = 100_000.0  # calls/s
MAX_TIMEOUT = 900.0  # seconds for one call
MAX_ATTEMPTS = 50  # per call
MAX_TARGET_DEADLINE = 3_600.0  # seconds for one account × region
MAX_RUN_DEADLINE = 7 * 86_400.0  # seconds for the whole run

_ACCOUNT_ID = re.compile(r"[0-9]{12}")
# IAM role names and path segments: [\w+=,.@-]; a name is at most 64 characters.
_ROLE_SEGMENT = re.compile(r"[A-Za-z0-9_+=,.@-]+")
_ROLE_ARN = re.compile(
    r"arn:aws[-a-z]*:iam::(?P<account>[0-9]{12}):role/(?P<role>[A-Za-z0-9_+=,.@/-]+)"
)
_SESSION_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{2,64}")
_EXTERNAL_ID = re.compile(r"[A-Za-z0-9_+=,.@:/-]{2,1224}")  # the AssumeRole ExternalId rule
_OU_OR_ROOT = re.compile(r"ou-[0-9a-z]{4,32}-[0-9a-z]{8,32}|r-[0-9a-z]{4,32}")

_TOML_TYPES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def role_arn_for(account_id: str, role_name: str) -> str:
    """`arn:aws:iam::{id}:role/{role_name}`; `role_name` may carry a path (`ops/Reader`)."""
    return f"arn:aws:iam::{account_id}:role/{role_name.strip('/')}"


ENGINES = ("lean", "botocore")


def validate_options(options: Options) -> Options:
    """Refuse flag values a collect cannot run with. Returns `options` unchanged.

    Raises `UsageError` naming the flag, e.g. `--concurrency 0: must be at least 1`.
    """
    _check_int("--concurrency", options.concurrency, 1, MAX_CONCURRENCY)
    _check_positive("--rate", options.rate, MAX_RATE)
    _check_positive("--timeout", options.timeout, MAX_TIMEOUT)
    if options.target_deadline is not None:
        _check_positive("--target-deadline", options.target_deadline, MAX_TARGET_DEADLINE)
    if options.run_deadline is not None:
        _check_positive("--run-deadline", options.run_deadline, MAX_RUN_DEADLINE)
    _check_int("--max-attempts", options.max_attempts, 1, MAX_ATTEMPTS)
    _check_int("--workers", options.workers, 0, 64)
    _check_int(
        "--max-answer-bytes", options.max_answer_bytes, MIN_MAX_ANSWER_BYTES, MAX_MAX_ANSWER_BYTES
    )
    if options.engine not in ENGINES:
        raise UsageError(f"--engine {options.engine!r}: must be one of {', '.join(ENGINES)}")
    if not isinstance(options.include_env_values, bool):
        raise UsageError(f"--include-env-values {options.include_env_values!r}: must be a boolean")
    if not isinstance(options.export_env_values, bool):
        raise UsageError(f"--export-env-values {options.export_env_values!r}: must be a boolean")
    if options.export_env_values and not options.include_env_values:
        raise UsageError(
            "--export-env-values: only with --include-env-values (without it the store holds "
            "fingerprints, and so does the lake)"
        )
    if not isinstance(options.deep, bool):
        raise UsageError(f"--deep {options.deep!r}: must be a boolean")
    if not isinstance(options.usage, bool):
        raise UsageError(f"--usage {options.usage!r}: must be a boolean")
    _check_int("--usage-days", options.usage_days, 1, MAX_USAGE_DAYS)
    if options.usage_days != DEFAULT_USAGE_DAYS and not options.usage:
        raise UsageError(f"--usage-days {options.usage_days}: only with --usage")
    if not isinstance(options.session_name, str) or not _SESSION_NAME.fullmatch(
        options.session_name
    ):
        raise UsageError(
            f"session_name {options.session_name!r}: must be 2-64 characters of "
            "letters, digits and _+=,.@-"
        )
    return options


def _check_int(flag: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{flag} {value!r}: must be a whole number")
    if value < low:
        raise UsageError(f"{flag} {value}: must be at least {low}")
    if high is not None and value > high:
        raise UsageError(f"{flag} {value}: must be at most {high:,}")


def _check_positive(flag: str, value: object, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{flag} {value!r}: must be a number")
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{flag} {value}: must be a finite number greater than 0")
    if high is not None and value > high:
        raise UsageError(f"{flag} {value:g}: must be at most {high:,g}")


def load_plan(
    config: Path | str | None,
    *,
    regions: str | Sequence[str] | None = None,
    org: bool | None = None,
    options: Options | None = None,
) -> Plan:
    """The one call the CLI makes: accounts file (or none) + flags -> a validated `Plan`.

    `regions`: the `--regions` value (`'a,b'` or `'all'`); when given it wins over the
    file's `regions`. `org`: a command-line override of the file's `org` (None: the file
    decides). `options`: the flag values; the file's `session_name` replaces theirs.
    Raises `ConfigError` for the file, `UsageError` for the flags (both exit status 2).
    """
    options = options if options is not None else Options()
    if regions is not None and not isinstance(regions, str):
        regions = tuple(regions)
    if regions == "discover" or regions == DISCOVER_REGIONS:
        cli_regions: tuple[str, ...] | None = DISCOVER_REGIONS
    else:
        cli_regions = parse_regions(regions, "--regions") if regions is not None else None
    # A list of regions on the command line narrows the run to a one-off; 'all' and
    # 'discover' name every region, as leaving --regions out does.
    every_region = regions is None or cli_regions == DISCOVER_REGIONS or _names_all(regions)
    if config is None:
        if org:
            raise UsageError(
                "--org: Organizations discovery needs an accounts file (--config) "
                "that sets role_name, the role to assume in each discovered account"
            )
        validate_options(options)
        return Plan(
            accounts=(),
            regions=cli_regions or all_regions(),
            options=options,
            source=None,
            own_account=True,
            fleet_defining=every_region,
        )
    plan = _FileParser(str(config), _read(config)).plan(cli_regions, org, options)
    validate_options(plan.options)
    if not every_region:
        plan = dataclasses.replace(plan, fleet_defining=False)
    return plan


def _names_all(regions: str | Sequence[str]) -> bool:
    items = regions.split(",") if isinstance(regions, str) else list(regions)
    return [str(item).strip() for item in items] == ["all"]


MAX_S3_CONFIG_BYTES = 16 * 1024 * 1024  # far more than any accounts file


def _read_s3(url: str) -> bytes:
    """An accounts file on S3 (`--config s3://bucket/key.toml`: a scheduled container has no
    disk), read with the hub's credentials and the lake export's S3 settings."""
    from inventory.storage import lake  # pyarrow and boto3: only when the file is on S3

    try:
        return lake.read_s3_object(url, MAX_S3_CONFIG_BYTES)
    except OSError as exc:
        # missing, denied, no key: the user's to fix (exit 2); unreachable now: a retry of
        # the night may work (exit 1)
        if exc.errno == errno.EIO:
            raise Unavailable(f"--config {url}: cannot be read from S3: {exc.strerror}") from None
        raise ConfigError(url, "--config", url, f"cannot be read from S3: {exc.strerror}") from None


def _read(config: Path | str) -> str:
    path = str(config)
    try:
        data = _read_s3(path) if path.startswith("s3://") else Path(config).read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "--config", path, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, "--config", path, "is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(path, "--config", path, "cannot be read: permission denied") from None
    except OSError as exc:
        raise ConfigError(path, "--config", path, f"cannot be read: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            path, "encoding", data.splitlines()[line - 1][:80], "not UTF-8 text", line
        ) from None


class _Locator:
    """Finds the line a key was written on: tomllib reports none for values it accepted."""

    _HEADER = re.compile(r"\s*\[")
    _ACCOUNTS_HEADER = re.compile(r"\s*\[\[\s*(accounts|\"accounts\"|'accounts')\s*\]\]")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        # Which lines are inside a multi-line string (never a header or a key there).
        self._code = [True] * len(self.lines)
        open_quote: str | None = None
        for i, line in enumerate(self.lines):
            starts_inside = open_quote is not None
            for quote in ('"""', "'''"):
                if open_quote in (None, quote) and line.count(quote) % 2 == 1:
                    open_quote = None if open_quote == quote else quote
            self._code[i] = not starts_inside
        self._headers = [
            i for i, line in enumerate(self.lines) if self._code[i] and self._HEADER.match(line)
        ]
        self._accounts = [
            i
            for i in self._headers
            if self._ACCOUNTS_HEADER.match(self.lines[i])  # [[accounts]], in file order
        ]

    def _key_line(self, key: str, start: int, stop: int) -> int | None:
        pattern = re.compile(rf"\s*({re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*=")
        for i in range(start, stop):
            if self._code[i] and pattern.match(self.lines[i]):
                return i
        return None

    def _block_end(self, start: int) -> int:
        return next((h for h in self._headers if h > start), len(self.lines))

    def top(self, key: str) -> int | None:
        """1-based line of a top-level `key = ...`."""
        i = self._key_line(key, 0, self._headers[0] if self._headers else len(self.lines))
        return None if i is None else i + 1

    def account(self, index: int, key: str | None = None) -> int | None:
        """1-based line of `key` in the index-th `[[accounts]]` block (else its header)."""
        if index >= len(self._accounts):  # accounts = [{...}] inline: the `accounts =` line
            return self.top("accounts")
        header = self._accounts[index]
        if key is not None:
            i = self._key_line(key, header + 1, self._block_end(header))
            if i is not None:
                return i + 1
        return header + 1

    def item(self, line: int | None, value: object) -> int | None:
        """The line of an array item written under `line` (a key's line), else `line`."""
        if line is None or not isinstance(value, str):
            return line
        needles = (f'"{value}"', f"'{value}'")
        for i in range(line - 1, min(line + 200, len(self.lines))):
            if i > line - 1 and (
                self._HEADER.match(self.lines[i]) or re.match(r"\s*[\w\"'.-]+\s*=", self.lines[i])
            ):
                break
            if any(n in self.lines[i] for n in needles):
                return i + 1
        return line


class _FileParser:
    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.where = _Locator(text)

    def error(self, field: str, value: object, problem: str, line: int | None) -> ConfigError:
        return ConfigError(self.path, field, value, problem, line)

    # -- parse ---------------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            found = re.search(r"at line (\d+), column \d+", message)
            line = int(found.group(1)) if found else None
            lines = self.text.splitlines()
            text = lines[line - 1].strip() if line and line <= len(lines) else ""
            problem = f"not valid TOML: {message}"
            if line and re.match(r"\s*(id\s*=\s*[0-9]|skip_accounts\s*=.*[\[,]\s*[0-9])", text):
                problem += '; account ids are strings: quote them, e.g. id = "011111111111"'
            raise self.error("syntax", text, problem, line) from None

    def plan(
        self, cli_regions: tuple[str, ...] | None, cli_org: bool | None, options: Options
    ) -> Plan:
        doc = self.load()
        self.unknown_keys(doc, TOP_LEVEL_KEYS, "", self.where.top, account_block=False)

        role_name = self.role_name(doc)
        external_id = self.external_id(doc.get("external_id"), "external_id", self.where.top)
        session_name = self.optional_str(doc, "session_name")
        if session_name is not None and not _SESSION_NAME.fullmatch(session_name):
            raise self.error(
                "session_name",
                session_name,
                "must be 2-64 characters of letters, digits and _+=,.@-",
                self.where.top("session_name"),
            )
        file_regions = self.regions(doc)
        file_org = doc.get("org", False)
        if not isinstance(file_org, bool):
            raise self.type_error("org", file_org, bool, self.where.top("org"))
        org_enabled = file_org if cli_org is None else cli_org
        org = self.org(doc, org_enabled, role_name, external_id)
        accounts = self.accounts(doc, role_name, external_id, org)
        if not accounts and org is None:
            raise self.error(
                "accounts",
                [],
                "no accounts: add an [[accounts]] block with an id for each account, "
                "or set org = true to discover them with Organizations",
                self.where.top("accounts"),
            )
        if session_name is not None:
            options = dataclasses.replace(options, session_name=session_name)
        return Plan(
            accounts=accounts,
            regions=cli_regions or file_regions or all_regions(),
            options=options,
            source=self.path,
            own_account=False,
            org=org,
            # --no-org over the file's org = true leaves accounts out: an account filter
            fleet_defining=not (file_org and cli_org is False),
        )

    # -- pieces --------------------------------------------------------------------------------

    def unknown_keys(
        self,
        table: dict[str, Any],
        allowed: tuple[str, ...],
        prefix: str,
        line_of: Callable[[str], int | None],
        *,
        account_block: bool,
    ) -> None:
        for key, value in table.items():
            if key in allowed:
                continue
            problem = f"unknown key; allowed here: {', '.join(allowed)}"
            close = difflib.get_close_matches(key.lower(), allowed, n=1, cutoff=0.6)
            if close:
                problem += f"; did you mean {close[0]!r}?"
            if account_block and key in TOP_LEVEL_KEYS:
                problem += (
                    f"; {key!r} is a top-level setting: a key written below an [[accounts]] "
                    "header belongs to that account, so move it above the first [[accounts]]"
                )
            elif not account_block and key in ACCOUNT_KEYS:
                problem += f"; {key!r} belongs inside an [[accounts]] block"
            raise self.error(f"{prefix}{key}", value, problem, line_of(key))

    def type_error(self, field: str, value: object, want: type, line: int | None) -> ConfigError:
        got = _TOML_TYPES.get(type(value), type(value).__name__)
        hint = ""
        if want is str and isinstance(value, int | float) and not isinstance(value, bool):
            hint = f'; quote it: "{value}"'
        return self.error(field, value, f"must be {_TOML_TYPES[want]}, not {got}{hint}", line)

    def optional_str(self, doc: dict[str, Any], key: str) -> str | None:
        value = doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.type_error(key, value, str, self.where.top(key))
        return value

    def role_name(self, doc: dict[str, Any]) -> str | None:
        value = self.optional_str(doc, "role_name")
        if value is None:
            return None
        segments = value.strip("/").split("/")
        if not all(_ROLE_SEGMENT.fullmatch(s) for s in segments) or len(segments[-1]) > 64:
            raise self.error(
                "role_name",
                value,
                "must be an IAM role name (up to 64 characters of letters, digits and "
                "_+=,.@-), optionally after a path: 'ops/Reader'",
                self.where.top("role_name"),
            )
        return value.strip("/")

    def external_id(
        self, value: object, field: str, line_of: Callable[[str], int | None]
    ) -> str | None:
        key = field.rsplit(".", 1)[-1]
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.type_error(field, value, str, line_of(key))
        if not _EXTERNAL_ID.fullmatch(value):
            raise self.error(
                field,
                value,
                "must be 2-1224 characters of letters, digits and _+=,.@:/- (the AssumeRole rule)",
                line_of(key),
            )
        return value

    def string_list(self, doc: dict[str, Any], key: str) -> list[str] | None:
        value = doc.get(key)
        if value is None:
            return None
        line = self.where.top(key)
        if not isinstance(value, list):
            raise self.error(
                key,
                value,
                f'must be an array of strings, e.g. {key} = ["{value}"]'
                if isinstance(value, str)
                else f"must be an array of strings, not {_TOML_TYPES.get(type(value), 'that')}",
                line,
            )
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.type_error(f"{key}[{i}]", item, str, self.where.item(line, str(item)))
        return value

    def regions(self, doc: dict[str, Any]) -> tuple[str, ...] | None:
        items = self.string_list(doc, "regions")
        if items is None:
            return None
        line = self.where.top("regions")
        if not items:
            raise self.error("regions", items, "empty: leave regions out for every region", line)
        if items == ["all"]:
            return all_regions()
        if items == ["discover"]:
            return DISCOVER_REGIONS
        for i, item in enumerate(items):
            problem = region_problem(item)
            if problem is not None:
                raise self.error(
                    f"regions[{i}]",
                    item,
                    f"{problem}; leave regions out for all of them",
                    self.where.item(line, item),
                )
        return parse_regions(items, "regions")

    def account_id(self, value: object, field: str, line: int | None) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            raise self.error(
                field,
                value,
                f'must be a string of 12 digits: quote it, id = "{value:012d}" '
                "(account ids may start with zeros, which an integer loses)",
                line,
            )
        if not isinstance(value, str):
            raise self.type_error(field, value, str, line)
        if not _ACCOUNT_ID.fullmatch(value):
            raise self.error(field, value, "must be exactly 12 digits", line)
        return value

    def role_arn(self, value: object, field: str, line: int | None) -> re.Match[str]:
        if not isinstance(value, str):
            raise self.type_error(field, value, str, line)
        found = _ROLE_ARN.fullmatch(value)
        if found is None:
            raise self.error(
                field,
                value,
                "not an IAM role ARN: expected arn:aws:iam::<12-digit account>:role/<name>",
                line,
            )
        return found

    def org(
        self,
        doc: dict[str, Any],
        enabled: bool,
        role_name: str | None,
        external_id: str | None,
    ) -> OrgDiscovery | None:
        ous = self.string_list(doc, "org_ous")
        skip = self.string_list(doc, "skip_accounts")
        management = doc.get("management_role_arn")
        line = self.where.top("org_ous")
        for i, ou in enumerate(ous or ()):
            if not _OU_OR_ROOT.fullmatch(ou):
                raise self.error(
                    f"org_ous[{i}]",
                    ou,
                    "not an organizational unit id (ou-xxxx-xxxxxxxx) or root id (r-xxxx)",
                    self.where.item(line, ou),
                )
        line = self.where.top("skip_accounts")
        for i, account_id in enumerate(skip or ()):
            self.account_id(account_id, f"skip_accounts[{i}]", self.where.item(line, account_id))
        if management is not None:
            self.role_arn(management, "management_role_arn", self.where.top("management_role_arn"))
        management_external_id = self.external_id(
            doc.get("management_external_id"), "management_external_id", self.where.top
        )
        if management_external_id is not None and management is None:
            raise self.error(
                "management_external_id",
                management_external_id,
                "sent with AssumeRole of management_role_arn, which is not set; "
                "set management_role_arn or remove it",
                self.where.top("management_external_id"),
            )
        if not enabled:
            if doc.get("org", False) is False:  # the file itself does not ask for discovery
                for key in _ORG_ONLY_KEYS:
                    if key in doc:
                        raise self.error(
                            key,
                            doc[key],
                            "only used with org = true (Organizations discovery); "
                            "set org = true or remove it",
                            self.where.top(key),
                        )
            return None
        if role_name is None:
            raise self.error(
                "role_name",
                None,
                "missing: org = true needs role_name, the role to assume in each "
                "discovered account",
                self.where.top("org"),
            )
        return OrgDiscovery(
            role_name=role_name,
            external_id=external_id,
            ous=tuple(dict.fromkeys(ous or ())),
            skip=tuple(dict.fromkeys(skip or ())),
            management_role_arn=management,
            management_external_id=management_external_id,
        )

    def accounts(
        self,
        doc: dict[str, Any],
        role_name: str | None,
        external_id: str | None,
        org: OrgDiscovery | None,
    ) -> tuple[Account, ...]:
        raw = doc.get("accounts", [])
        if isinstance(raw, dict):
            raise self.error(
                "accounts",
                raw,
                "must be an array of tables: write [[accounts]] (two brackets) above each account",
                self.where.top("accounts") or self._table_header_line("accounts"),
            )
        if not isinstance(raw, list):
            raise self.error(
                "accounts",
                raw,
                "must be an array of tables: an [[accounts]] block for each account",
                self.where.top("accounts"),
            )
        seen: dict[str, tuple[int, int | None]] = {}
        out: list[Account] = []
        for index, entry in enumerate(raw):
            prefix = f"accounts[{index}]"

            def line_of(key: str | None, index: int = index) -> int | None:
                return self.where.account(index, key)

            if not isinstance(entry, dict):
                raise self.error(
                    prefix,
                    entry,
                    "must be a table with an id: an [[accounts]] block",
                    line_of(None),
                )
            self.unknown_keys(entry, ACCOUNT_KEYS, f"{prefix}.", line_of, account_block=True)
            if "id" not in entry:
                raise self.error(
                    f"{prefix}.id",
                    None,
                    "missing: every account needs its 12-digit id",
                    line_of(None),
                )
            account_id = self.account_id(entry["id"], f"{prefix}.id", line_of("id"))
            if account_id in seen:
                first, first_line = seen[account_id]
                at = f" (line {first_line})" if first_line is not None else ""
                raise self.error(
                    f"{prefix}.id",
                    account_id,
                    f"duplicate: already listed as accounts[{first}].id{at}",
                    line_of("id"),
                )
            seen[account_id] = (index, line_of("id"))
            if org is not None and account_id in org.skip:
                raise self.error(
                    f"{prefix}.id",
                    account_id,
                    f"also in skip_accounts (line {self.where.top('skip_accounts')}): "
                    "list it or skip it, not both",
                    line_of("id"),
                )
            name = entry.get("name")
            if name is not None:
                if not isinstance(name, str):
                    raise self.type_error(f"{prefix}.name", name, str, line_of("name"))
                if not name.strip():
                    raise self.error(
                        f"{prefix}.name", name, "empty: leave name out for none", line_of("name")
                    )
            if "role_arn" in entry:
                found = self.role_arn(entry["role_arn"], f"{prefix}.role_arn", line_of("role_arn"))
                if found["account"] != account_id:
                    raise self.error(
                        f"{prefix}.role_arn",
                        entry["role_arn"],
                        f"the role belongs to account {found['account']}, not {account_id}: "
                        "its credentials would see that account's services and store them "
                        "under this id; fix the id or the ARN",
                        line_of("role_arn"),
                    )
                role_arn = found.string
            elif role_name is not None:
                role_arn = role_arn_for(account_id, role_name)
            else:
                raise self.error(
                    f"{prefix}.role_arn",
                    None,
                    "missing: set role_arn for this account or role_name at the top of the "
                    "file (to inventory only the account of your own credentials, run "
                    "without --config)",
                    line_of(None),
                )
            own_external_id = self.external_id(
                entry.get("external_id"), f"{prefix}.external_id", line_of
            )
            out.append(
                Account(
                    id=account_id,
                    name=name,
                    role_arn=role_arn,
                    external_id=own_external_id if own_external_id is not None else external_id,
                )
            )
        return tuple(out)

    def _table_header_line(self, name: str) -> int | None:
        pattern = re.compile(rf"\s*\[\s*{re.escape(name)}\s*\]")
        for i, line in enumerate(self.where.lines):
            if pattern.match(line):
                return i + 1
        return None
