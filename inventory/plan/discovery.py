"""What to inventory, found at run time: the organization's accounts and today's regions.

    found = await resolve(plan)      # plan.org set, or plan.regions == DISCOVER_REGIONS
    plan, calls = found.plan, found.api_calls

- Organizations (`collect --org`, `org = true`): the ACTIVE accounts of the organization
  (`ListAccounts`, paginated by NextToken), or only those under `org_ous` (recursively:
  `ListAccountsForParent` + `ListOrganizationalUnitsForParent`), minus `skip_accounts`.
  Each becomes `Account(id, name=its Organizations name, role_arn=arn:aws:iam::{id}:role/
  {role_name}, external_id)`. Accounts the file lists are kept as written and come first;
  a discovered account with the same id is dropped. The calls are made with the base
  credentials (standard chain), or with `management_role_arn` assumed first.
- Regions (`--regions discover`): Lightsail `GetRegions`, asked with the base credentials,
  names the regions that exist today, so a region newer than the installed SDK is not
  missed. Known regions keep the usual order; new ones follow, sorted.

Every call is retried like the collector's (retry.classify, Budget, Backoff) and counted,
so the run's `api_calls` and `retries` include them. A failure that retrying cannot fix
raises `DiscoveryFailed` (exit status 1): it names the operation, AWS's error code and the
permission or setting that fixes it. `run_collect` records it as a failed run (a `runs`
row and an `errors` row, `record_failure`) before the message reaches the user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiobotocore.session import AioSession
from botocore.credentials import ReadOnlyCredentials

from inventory import iam, logs
from inventory.aws.credentials import assume_role_params, from_sts
from inventory.aws.retry import CallFailed, Calls
from inventory.aws.session import base_credentials, client_kwargs, home_region
from inventory.errors import InventoryError
from inventory.model import Account, Options, OrgDiscovery, Plan
from inventory.plan.config import DISCOVER_REGIONS, role_arn_for
from inventory.plan.regions import all_regions

__all__ = [
    "DISCOVER_REGIONS",
    "Calls",
    "DiscoveryFailed",
    "OrgListing",
    "Resolved",
    "lightsail_regions",
    "list_org_accounts",
    "merge_accounts",
    "resolve",
]

log = logging.getLogger("inventory.plan.discovery")

DOCS = "docs/iam.md"
_REGION_NAME = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
ORG_PERMISSIONS = iam.ORGANIZATIONS  # exactly the calls _org_entries makes


class DiscoveryFailed(InventoryError):
    """Organizations or GetRegions could not tell what to inventory: the run cannot start."""

    exit_code = 1

    def __init__(
        self,
        operation: str,
        error_code: str,
        message: str,
        fix: str,
        *,
        attempts: int = 1,
        account_id: str | None = None,
    ):
        self.operation, self.error_code, self.detail, self.fix = operation, error_code, message, fix
        self.attempts = attempts
        self.account_id = account_id  # the identity's account, when known
        self.api_calls = 0
        self.retries = 0
        self.run_id: str | None = None  # set once recorded as a failed run
        super().__init__()

    def __str__(self) -> str:
        text = f"{self.operation} failed: {self.error_code}"
        if self.detail:
            text += f": {self.detail.rstrip('.')}"
        text += f". {self.fix}"
        if self.run_id:
            text += f" (recorded as failed run {self.run_id})"
        return text


async def whoami(
    session: AioSession, creds: ReadOnlyCredentials, calls: Calls
) -> tuple[str, str] | None:
    """(account, arn) of `creds` (GetCallerIdentity), or None when that fails too."""
    try:
        async with session.create_client(
            "sts", region_name=home_region(session), **client_kwargs(calls.options, creds)
        ) as sts:
            answer = await calls("GetCallerIdentity", sts.get_caller_identity)
    except CallFailed:
        return None
    return str(answer["Account"]), str(answer["Arn"])


# ---------------------------------------------------------------------------- Organizations


# An account's ARN: arn:aws:organizations::<management-account>:account/<org-id>/<account-id>
_ORG_ID_IN_ARN = re.compile(r":account/(o-[a-z0-9]{10,32})/")


@dataclass
class OrgListing:
    """What Organizations said: the accounts to inventory and what was left out."""

    accounts: list[Account]
    suspended: int = 0  # not ACTIVE (SUSPENDED, PENDING_CLOSURE, ...)
    skipped: int = 0  # in skip_accounts
    identity: str | None = None  # the management role assumed, if any
    org_id: str | None = None  # the organization's id (o-...), from the accounts' ARNs


def _org_fix(operation: str, code: str, who: str, org: OrgDiscovery, ou: str | None) -> str:
    if code == "AWSOrganizationsNotInUseException":
        return (
            f"{who} is not in an organization: run from the management account or a delegated "
            "administrator, set management_role_arn to a role there, or list the accounts in "
            "the file instead of org = true"
        )
    if code == "ParentNotFoundException" and ou is not None:
        return f"org_ous: {ou!r} is not a root or OU of this organization; fix org_ous"
    if code in ("AccessDeniedException", "AccessDenied", "AccessDeniedForDependencyException"):
        return (
            f"allow {who} organizations:{operation} (policy: {', '.join(ORG_PERMISSIONS)}; "
            f"see {DOCS}); it must be the management account or a delegated administrator"
        )
    if code in ("Timeout", "ConnectionError"):
        return (
            "the Organizations endpoint did not answer: check the network, a proxy, or "
            "AWS_ENDPOINT_URL_ORGANIZATIONS"
        )
    return f"check {who}'s access to Organizations ({', '.join(ORG_PERMISSIONS)}; see {DOCS})"


def _state(entry: dict[str, Any]) -> str:
    return str(entry.get("State") or entry.get("Status") or "")


async def _pages(
    calls: Calls, operation: str, fn: Callable[..., Awaitable[Any]], key: str, **params: Any
) -> list[dict[str, Any]]:
    """Every item of a NextToken-paginated list operation."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = await calls(operation, fn, **params, **({"NextToken": token} if token else {}))
        items.extend(page.get(key) or [])
        token = page.get("NextToken")
        if not token:
            return items


async def _org_entries(org_client: Any, calls: Calls, ous: tuple[str, ...]) -> list[dict[str, Any]]:
    """Account entries of the whole organization, or of everything under `ous`."""
    if not ous:
        return await _pages(calls, "ListAccounts", org_client.list_accounts, "Accounts")
    entries: list[dict[str, Any]] = []
    for top in ous:
        stack, seen = [top], set()
        while stack:
            parent = stack.pop()
            if parent in seen:
                continue
            seen.add(parent)
            try:
                entries += await _pages(
                    calls,
                    "ListAccountsForParent",
                    org_client.list_accounts_for_parent,
                    "Accounts",
                    ParentId=parent,
                )
                children = await _pages(
                    calls,
                    "ListOrganizationalUnitsForParent",
                    org_client.list_organizational_units_for_parent,
                    "OrganizationalUnits",
                    ParentId=parent,
                )
            except CallFailed as exc:
                exc.ou = top
                raise
            stack.extend(reversed([str(c["Id"]) for c in children]))
    return entries


async def list_org_accounts(
    org: OrgDiscovery, options: Options, calls: Calls | None = None
) -> OrgListing:
    """The ACTIVE accounts Organizations names (under `org.ous`), minus `org.skip`.

    Raises DiscoveryFailed naming the operation and the fix.
    """

    calls = calls or Calls(options)
    base, session = await base_credentials()
    creds, who = base, "the base identity"
    async with contextlib.AsyncExitStack() as stack:
        if org.management_role_arn is not None:
            who = org.management_role_arn
            sts = await stack.enter_async_context(
                session.create_client(
                    "sts", region_name=home_region(session), **client_kwargs(options, base)
                )
            )
            try:
                answer = await calls(
                    "AssumeRole",
                    sts.assume_role,
                    **assume_role_params(
                        org.management_role_arn,
                        options.session_name,
                        org.management_external_id,
                    ),
                )
            except CallFailed as exc:
                raise DiscoveryFailed(
                    "AssumeRole",
                    exc.failure.code,
                    exc.failure.message,
                    f"management_role_arn {org.management_role_arn}: allow the base identity "
                    "sts:AssumeRole on it, and let that role's trust policy trust the base "
                    f"identity (see {DOCS})",
                    attempts=exc.attempts,
                    account_id=org.management_role_arn.split(":")[4],
                ) from None
            creds = from_sts(answer)
        client = await stack.enter_async_context(
            session.create_client(
                "organizations", region_name=home_region(session), **client_kwargs(options, creds)
            )
        )
        try:
            entries = await _org_entries(client, calls, org.ous)
        except CallFailed as exc:
            me = await whoami(session, creds, calls)
            if me is not None and org.management_role_arn is None:
                who = me[1]
            raise DiscoveryFailed(
                exc.operation,
                exc.failure.code,
                exc.failure.message,
                _org_fix(exc.operation, exc.failure.code, who, org, exc.ou),
                attempts=exc.attempts,
                account_id=me[0] if me else None,
            ) from None
    listing = OrgListing([], identity=org.management_role_arn)
    seen: set[str] = set()
    skip = set(org.skip)
    for entry in entries:
        account_id = str(entry.get("Id") or "")
        if not account_id or account_id in seen:
            continue
        seen.add(account_id)
        if listing.org_id is None:
            m = _ORG_ID_IN_ARN.search(str(entry.get("Arn") or ""))
            listing.org_id = m[1] if m else None
        if _state(entry) != "ACTIVE":
            listing.suspended += 1
        elif account_id in skip:
            listing.skipped += 1
        else:
            listing.accounts.append(
                Account(
                    id=account_id,
                    name=entry.get("Name") or None,
                    role_arn=role_arn_for(account_id, org.role_name),
                    external_id=org.external_id,
                )
            )
    return listing


def merge_accounts(listed: tuple[Account, ...], found: list[Account]) -> tuple[Account, ...]:
    """The file's accounts as written, then the discovered ones it does not list."""
    ids = {a.id for a in listed}
    return listed + tuple(a for a in found if a.id not in ids)


# ---------------------------------------------------------------------------- regions


@dataclass(frozen=True)
class RegionListing:
    regions: tuple[str, ...]  # to inventory, known ones in the usual order, then new ones
    new: tuple[str, ...]  # not in the installed SDK's list
    gone: tuple[str, ...]  # in the SDK's list, but GetRegions did not name them


async def lightsail_regions(options: Options, calls: Calls | None = None) -> RegionListing:
    """The Lightsail regions that exist today (GetRegions, with the base credentials)."""

    calls = calls or Calls(options)
    base, session = await base_credentials()
    async with session.create_client(
        "lightsail", region_name=home_region(session), **client_kwargs(options, base)
    ) as client:
        try:
            answer = await calls("GetRegions", client.get_regions, includeAvailabilityZones=False)
        except CallFailed as exc:
            me = await whoami(session, base, calls)
            who = me[1] if me else "the base identity"
            raise DiscoveryFailed(
                "GetRegions",
                exc.failure.code,
                exc.failure.message,
                f"allow {who} lightsail:GetRegions (see {DOCS}), or name the regions: "
                "--regions all or --regions a,b",
                attempts=exc.attempts,
                account_id=me[0] if me else None,
            ) from None
    names = []
    for entry in answer.get("regions") or []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and _REGION_NAME.fullmatch(name):
            names.append(name)
        else:
            logs.event(
                log,
                logging.WARNING,
                "region_ignored",
                f"GetRegions named a region that is not a region name: {name!r:.64} (left out)",
                name=str(name)[:64],
            )
    if not names:
        raise DiscoveryFailed(
            "GetRegions",
            "NoRegions",
            "the answer named no region",
            "name the regions instead: --regions all or --regions a,b",
        )
    known = all_regions()
    regions = tuple(r for r in known if r in names) + tuple(
        sorted({r for r in names if r not in known})
    )
    return RegionListing(
        regions=regions,
        new=tuple(r for r in regions if r not in known),
        gone=tuple(r for r in known if r not in names),
    )


# ---------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Resolved:
    """The plan with discovered accounts and regions filled in, and what finding them cost."""

    plan: Plan
    api_calls: int = 0
    retries: int = 0


def needs_discovery(plan: Plan) -> bool:
    return plan.org is not None or plan.regions == DISCOVER_REGIONS


async def resolve(plan: Plan) -> Resolved:
    """Fill in `plan`'s discovered accounts (plan.org) and regions (DISCOVER_REGIONS)."""
    if not needs_discovery(plan):
        return Resolved(plan)
    calls = Calls(plan.options)
    try:
        regions = plan.regions
        if regions == DISCOVER_REGIONS:
            found = await lightsail_regions(plan.options, calls)
            regions = found.regions
            logs.event(
                log,
                logging.INFO,
                "regions_discovered",
                f"GetRegions: {len(regions)} Lightsail regions"
                + (f" (new: {', '.join(found.new)})" if found.new else ""),
                regions=list(regions),
                new=list(found.new),
                gone=list(found.gone),
            )
        accounts = plan.accounts
        if plan.org is not None:
            listing = await list_org_accounts(plan.org, plan.options, calls)
            accounts = merge_accounts(plan.accounts, listing.accounts)
            logs.event(
                log,
                logging.INFO,
                "org_discovered",
                f"Organizations: {len(listing.accounts)} ACTIVE accounts to inventory "
                f"({len(plan.accounts)} listed in the file; {listing.suspended} not ACTIVE "
                f"and {listing.skipped} skipped left out)",
                discovered=len(listing.accounts),
                listed=len(plan.accounts),
                accounts=len(accounts),
                not_active=listing.suspended,
                skipped=listing.skipped,
                ous=list(plan.org.ous),
            )
            if not accounts:
                where = (
                    f"under {', '.join(plan.org.ous)}" if plan.org.ous else "in the organization"
                )
                raise DiscoveryFailed(
                    "ListAccounts" if not plan.org.ous else "ListAccountsForParent",
                    "NoAccounts",
                    f"no ACTIVE account {where} after skip_accounts",
                    "check org_ous and skip_accounts",
                )
    except DiscoveryFailed as exc:
        exc.api_calls, exc.retries = calls.counter.api_calls, calls.counter.retries
        raise
    return Resolved(
        dataclasses.replace(plan, accounts=accounts, regions=regions),
        calls.counter.api_calls,
        calls.counter.retries,
    )
