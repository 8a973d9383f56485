"""`inventory doctor`: is everything in place for a collect? If not, which policy fixes it.

    report = await diagnose(plan, sample=3)
    print(render(report)); exit(0 if report.ok else 1)

Checks, in order (a failed step that later ones depend on stops them):
1. the base credentials: found in the standard chain, and GetCallerIdentity answers (the
   identity is printed);
2. with `--regions discover`: Lightsail GetRegions; with `org = true`: Organizations lists
   the accounts (plan/discovery.py);
3. AssumeRole in a sample of the accounts (the first `sample` in the file's order, then
   discovered ones; 0 = every account), through the engine collect uses (as in 4); without
   an accounts file, the caller's own account;
4. GetContainerServices in every region, with each sampled account whose role was assumed,
   through the engine collect uses (`options.engine`: the lean request path by default,
   the aiobotocore client with `--engine botocore`), so that a setup doctor passes is one
   collect can use: same endpoint, same signer, same HTTP client.

Each problem comes with what fixes it: the IAM policy snippet (docs/iam.md; its statements
from inventory/iam.py, the one list of actions per feature) filled in with
this setup's role name, hub principal and ExternalId. No credential is ever printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from botocore.credentials import ReadOnlyCredentials

from inventory import iam
from inventory.aws import credentials as creds_mod
from inventory.aws.session import (
    SharedCredentialsSession,
    client_config,
    client_kwargs,
    home_region,
)
from inventory.model import Account, Plan
from inventory.plan.config import DISCOVER_REGIONS
from inventory.plan.discovery import (
    DOCS,
    CallFailed,
    Calls,
    DiscoveryFailed,
    lightsail_regions,
    list_org_accounts,
    merge_accounts,
)
from inventory.plan.regions import all_regions
from inventory.terminal import plural, visible

__all__ = ["Check", "Report", "diagnose", "render"]

DEFAULT_SAMPLE = 3
CONCURRENCY = 16


@dataclass
class Check:
    """One line of the report."""

    step: str  # credentials | identity | regions | organizations | assume-role | region
    subject: str  # what was checked: an account, a region, an identity
    ok: bool
    detail: str
    fix: str | None = None  # key into Report.fixes


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    fixes: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (what, how)
    identity: str | None = None  # the base identity's ARN
    skipped: list[str] = field(default_factory=list)  # steps not run, and why
    warnings: list[str] = field(default_factory=list)  # worth fixing, but a collect works
    org_id: str | None = None  # the organization (o-...), when Organizations listed it

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and not self.skipped

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def fix(self, key: str, what: str, how: str) -> str:
        self.fixes.setdefault(key, (what, how))
        return key


# ---------------------------------------------------------------------------- policies


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)}, indent=2)


def trust_principal(arn: str | None) -> str:
    """The principal a trust policy names for the identity `arn` (a role for an
    assumed-role session, as IAM wants it)."""
    if not arn:
        return "arn:aws:iam::<hub-account-id>:role/<hub-role>"
    m = re.fullmatch(r"arn:(aws[-a-z]*):sts::(\d{12}):assumed-role/([^/]+)/.+", arn)
    if m:
        return f"arn:{m[1]}:iam::{m[2]}:role/{m[3]}"
    return arn


EXTERNAL_ID_PLACEHOLDER = "<choose-a-long-random-string>"


def reader_trust_policy(hub_arn: str | None, external_id: str | None) -> str:
    """The reader role's trust policy: the hub as principal, always with the `sts:ExternalId`
    condition (a placeholder when none is configured: then set `external_id` too)."""
    return _policy(
        {
            "Effect": "Allow",
            "Principal": {"AWS": trust_principal(hub_arn)},
            "Action": "sts:AssumeRole",
            "Condition": {
                "StringEquals": {"sts:ExternalId": external_id or EXTERNAL_ID_PLACEHOLDER}
            },
        }
    )


def hub_assume_policy(role_arns: list[str], org_id: str | None = None) -> str:
    """The hub's permission to assume the reader roles; restricted to roles of the
    organization (`aws:ResourceOrgID`) when it is known."""
    names = {arn.split(":role/", 1)[-1] for arn in role_arns}
    if len(names) == 1 and len(role_arns) > 1:
        resource: Any = f"arn:aws:iam::*:role/{names.pop()}"
    else:
        resource = sorted(set(role_arns)) if len(set(role_arns)) > 1 else role_arns[0]
    condition = {"StringEquals": {"aws:ResourceOrgID": org_id}} if org_id else None
    return _policy(iam.policy_statement(iam.HUB, "collect", resource, condition))


def reader_policy() -> str:
    """What `collect` needs in a member account (doctor checks GetContainerServices only)."""
    return _policy(iam.policy_statement(iam.READER, "collect"))


def org_policy(management_role: bool) -> str:
    """The Organizations listing, for the management role when one is configured, else
    for the hub."""
    return _policy(iam.policy_statement(iam.MANAGEMENT if management_role else iam.HUB, "org"))


def management_assume_policy(management_role_arn: str) -> str:
    """The hub's permission to assume `management_role_arn` (for `--org`)."""
    return _policy(iam.policy_statement(iam.HUB, "org-management-role", management_role_arn))


def get_regions_policy() -> str:
    return _policy(iam.policy_statement(iam.HUB, "regions-discover"))


# ---------------------------------------------------------------------------- checks


async def diagnose(plan: Plan, sample: int = DEFAULT_SAMPLE) -> Report:
    """Run the checks for `plan` (as load_plan made it). Never raises for an AWS error."""
    from aiobotocore.session import AioSession

    report = Report()
    options = plan.options
    calls = Calls(options)
    session = AioSession()
    found = await session.get_credentials()
    if found is None:
        report.add(
            Check(
                "credentials",
                "standard chain",
                False,
                "no AWS credentials found",
                report.fix(
                    "credentials",
                    "No base credentials.",
                    "Give the collector an identity through the standard AWS chain: "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE (aws sso login), a "
                    "web identity token, or an instance / task role.",
                ),
            )
        )
        return report
    base = await found.get_frozen_credentials()
    report.add(Check("credentials", "standard chain", True, f"found (source: {found.method})"))
    async with session.create_client(
        "sts", region_name=home_region(session), **client_kwargs(options, base)
    ) as sts:
        try:
            me = await calls("GetCallerIdentity", sts.get_caller_identity)
        except CallFailed as exc:
            report.add(
                Check(
                    "identity",
                    "GetCallerIdentity",
                    False,
                    f"{exc.failure.code}: {exc.failure.message}",
                    report.fix(
                        "identity",
                        "The base credentials are not accepted by STS.",
                        "They are invalid, expired (aws sso login again) or for another "
                        "partition; or AWS_ENDPOINT_URL_STS points somewhere wrong.",
                    ),
                )
            )
            return report
        hub_arn, hub_account = str(me["Arn"]), str(me["Account"])
        report.identity = hub_arn
        report.add(
            Check("identity", "GetCallerIdentity", True, f"{hub_arn} (account {hub_account})")
        )

        regions = plan.regions
        if regions == DISCOVER_REGIONS:
            regions = await _check_regions(report, plan, calls)

        accounts = list(plan.accounts)
        if plan.org is not None:
            try:
                listing = await list_org_accounts(plan.org, options, calls)
            except DiscoveryFailed as exc:
                report.add(
                    Check(
                        "organizations",
                        exc.operation,
                        False,
                        f"{exc.error_code}: {exc.detail}",
                        report.fix(
                            "organizations",
                            f"Organizations cannot list the accounts: {exc.fix}.",
                            _org_policy_fix(exc.operation, plan.org.management_role_arn, hub_arn),
                        ),
                    )
                )
            else:
                accounts = list(merge_accounts(plan.accounts, listing.accounts))
                report.org_id = listing.org_id
                report.add(
                    Check(
                        "organizations",
                        "ListAccounts" if not plan.org.ous else ", ".join(plan.org.ous),
                        True,
                        f"{len(listing.accounts)} ACTIVE accounts ({listing.suspended} not "
                        f"ACTIVE, {listing.skipped} skipped)",
                    )
                )

        missing = [a.id for a in accounts if a.role_arn is not None and not a.external_id]
        if missing:
            report.warnings.append(
                f"no ExternalId configured for the member roles of {plural(len(missing), 'account')} "
                f"(e.g. {missing[0]}): set external_id in the accounts file and require it in "
                f"each reader role's trust policy ({DOCS})"
            )
        if plan.own_account:
            chosen = [(Account(id=hub_account), base)]
            report.add(Check("assume-role", hub_account, True, "own account: no role to assume"))
        else:
            picked = accounts if sample <= 0 else accounts[:sample]
            if not picked:
                report.skipped.append("assume-role: no account to try")
            verify = session.get_config_variable("ca_bundle")
            chosen = await _check_roles(report, plan, picked, sts, calls, hub_arn, base, verify)

    if not chosen:
        report.skipped.append("regions: no account's role could be assumed")
        return report
    await _check_lightsail(report, chosen, regions, calls, plan.own_account)
    return report


def _org_policy_fix(operation: str, management_role_arn: str | None, hub_arn: str) -> str:
    """Which policy to attach where when Organizations discovery failed: the hub's right to
    assume the management role when that failed, else the listing, on the identity that
    lists (the management role, or the hub)."""
    if management_role_arn and operation == "AssumeRole":
        return f"Attach to {trust_principal(hub_arn)}:\n" + management_assume_policy(
            management_role_arn
        )
    return f"Attach to {management_role_arn or hub_arn}:\n" + org_policy(
        management_role_arn is not None
    )


async def _check_regions(report: Report, plan: Plan, calls: Calls) -> tuple[str, ...]:
    try:
        listing = await lightsail_regions(plan.options, calls)
    except DiscoveryFailed as exc:
        report.add(
            Check(
                "regions",
                "GetRegions",
                False,
                f"{exc.error_code}: {exc.detail}",
                report.fix(
                    "get-regions",
                    "--regions discover: GetRegions is not allowed.",
                    f"Attach to {report.identity}:\n" + get_regions_policy(),
                ),
            )
        )
        return all_regions()
    new = f"; new: {', '.join(listing.new)}" if listing.new else ""
    report.add(Check("regions", "GetRegions", True, f"{len(listing.regions)} regions{new}"))
    return listing.regions


async def _check_roles(
    report: Report,
    plan: Plan,
    accounts: list[Account],
    sts: Any,
    calls: Calls,
    hub_arn: str,
    base: ReadOnlyCredentials,
    verify: bool | str | None = None,
) -> list[tuple[Account, ReadOnlyCredentials]]:
    """AssumeRole in each of `accounts` with the base credentials, through the engine collect
    uses (the lean engine's LeanSTSClient at `sts`'s endpoint, or `sts` itself)."""
    from inventory.aws.lean import USER_AGENT, LeanHTTP, LeanSTSClient

    limit = asyncio.Semaphore(CONCURRENCY)
    options = plan.options

    async def one(client: Any, account: Account) -> ReadOnlyCredentials | CallFailed:
        assert account.role_arn is not None
        params = creds_mod.assume_role_params(
            account.role_arn, options.session_name, account.external_id
        )
        async with limit:
            try:
                answer = await calls("AssumeRole", client.assume_role, **params)
            except CallFailed as exc:
                return exc
        return creds_mod.from_sts(answer)

    async with contextlib.AsyncExitStack() as stack:
        client = sts
        if options.engine == "lean":  # as collect: botocore resolves the endpoint
            http = await stack.enter_async_context(
                LeanHTTP(
                    limit=CONCURRENCY,
                    timeout=options.timeout,
                    verify=verify,
                    max_answer_bytes=options.max_answer_bytes,
                )
            )
            client = LeanSTSClient(http, sts.meta.endpoint_url, sts.meta.region_name, USER_AGENT)
        with creds_mod.use(base):
            answers = await asyncio.gather(*(one(client, a) for a in accounts))
    ok: list[tuple[Account, ReadOnlyCredentials]] = []
    denied: list[Account] = []
    for account, answer in zip(accounts, answers, strict=True):
        label = account.id + (f" ({account.name})" if account.name else "")
        if isinstance(answer, CallFailed):
            code = answer.failure.code
            fix = None
            if code.startswith("AccessDenied"):
                denied.append(account)
                fix = "assume-role"
            elif code in ("Timeout", "ConnectionError"):
                fix = report.fix(
                    "sts-network",
                    "STS did not answer.",
                    "Check the network, a proxy, or AWS_ENDPOINT_URL_STS.",
                )
            report.add(Check("assume-role", label, False, f"{code}: {answer.failure.message}", fix))
        else:
            ok.append((account, answer))
            report.add(Check("assume-role", label, True, f"assumed {account.role_arn}"))
    if denied:
        # one trust policy per distinct ExternalId, each with its condition
        by_external_id: dict[str | None, list[Account]] = {}
        for a in denied:
            by_external_id.setdefault(a.external_id, []).append(a)
        ids = ", ".join(a.id for a in denied)
        trust = []
        for external_id, group in by_external_id.items():
            where = (
                "In each of those accounts"
                if len(by_external_id) == 1
                else f"In {', '.join(a.id for a in group)}"
            )
            note = (
                ""
                if external_id
                else " (no ExternalId is configured: choose one, set external_id in the "
                "accounts file, and use it here)"
            )
            trust.append(
                f"{where}, create the role ({DOCS}) with this trust policy{note}:\n"
                + reader_trust_policy(hub_arn, external_id)
            )
        report.fix(
            "assume-role",
            f"The role could not be assumed in {ids}.",
            f"Either the role does not exist there, its trust policy does not trust {hub_arn}"
            " with this ExternalId, or the hub may not assume it.\n"
            + "\n".join(trust)
            + f"\nand allow the hub identity ({trust_principal(hub_arn)}) to assume it:\n"
            + hub_assume_policy([a.role_arn for a in denied if a.role_arn], report.org_id),
        )
    return ok


async def _check_lightsail(
    report: Report,
    chosen: list[tuple[Account, ReadOnlyCredentials]],
    regions: tuple[str, ...],
    calls: Calls,
    own_account: bool = False,
) -> None:
    from inventory.aws.lean import USER_AGENT, LeanHTTP, LeanLightsailClient

    session = SharedCredentialsSession()
    limit = asyncio.Semaphore(CONCURRENCY)
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, Any] = {
            r: await stack.enter_async_context(
                session.create_client(
                    "lightsail", region_name=r, config=client_config(calls.options, CONCURRENCY)
                )
            )
            for r in regions
        }
        if calls.options.engine == "lean":  # as collect: botocore resolves the endpoint
            http = await stack.enter_async_context(
                LeanHTTP(
                    limit=CONCURRENCY,
                    timeout=calls.options.timeout,
                    verify=session.get_config_variable("ca_bundle"),
                )
            )
            clients = {
                r: LeanLightsailClient(http, r, c.meta.endpoint_url, USER_AGENT)
                for r, c in clients.items()
            }

        async def one(
            account: Account, creds: ReadOnlyCredentials, region: str
        ) -> dict[str, Any] | CallFailed:
            async with limit:
                with creds_mod.use(creds):
                    try:
                        return await calls(
                            "GetContainerServices", clients[region].get_container_services
                        )
                    except CallFailed as exc:
                        return exc

        jobs = [(a, c, r) for r in regions for a, c in chosen]
        answers = await asyncio.gather(*(one(*job) for job in jobs))
    by_region: dict[str, list[tuple[Account, dict[str, Any] | CallFailed]]] = {}
    for (account, _, region), answer in zip(jobs, answers, strict=True):
        by_region.setdefault(region, []).append((account, answer))
    denied: list[str] = []
    for region in regions:
        results = by_region.get(region, [])
        failed = [(a, x) for a, x in results if isinstance(x, CallFailed)]
        if not failed:
            services = sum(
                len(x.get("containerServices") or []) for _, x in results if isinstance(x, dict)
            )
            report.add(
                Check("region", region, True, f"ok in {plural(len(results), 'account')} "
                      f"({plural(services, 'service')})")
            )  # fmt: skip
            continue
        by_code: dict[str, list[Account]] = {}
        message: dict[str, str] = {}
        for a, x in failed:
            by_code.setdefault(x.failure.code, []).append(a)
            message.setdefault(x.failure.code, x.failure.message)
        parts = []
        if len(failed) < len(results):
            parts.append(f"ok in {len(results) - len(failed)} of {plural(len(results), 'account')}")
        for code, accounts in sorted(by_code.items()):
            parts.append(
                f"{code} in {', '.join(a.id for a in accounts)}"
                + (f" ({message[code]})" if message[code] else "")
            )
        report.add(Check("region", region, False, "; ".join(parts), _region_fix(report, by_code)))
        if report.checks[-1].fix == "lightsail-denied":
            denied.append(region)
    if denied:
        whom = (
            f"the base identity ({report.identity})"
            if own_account
            else "the reader role in each member account"
        )
        report.fixes["lightsail-denied"] = (
            f"lightsail:GetContainerServices is denied in {', '.join(denied)}.",
            f"Attach this policy to {whom} (if it is already there, a service control policy "
            f"or a permissions boundary denies the region; see {DOCS}):\n" + reader_policy(),
        )


def _region_fix(report: Report, by_code: dict[str, list[Account]]) -> str:
    codes = set(by_code)
    if any(c.startswith("AccessDenied") for c in codes):
        return "lightsail-denied"  # its text names every denied region: set by the caller
    if codes & {"UnrecognizedClientException", "InvalidClientTokenId"}:
        return report.fix(
            "region-disabled",
            "Some regions do not accept the account's credentials.",
            "The region is not enabled for the account (an opt-in region): enable it, or "
            "leave it out with --regions / regions in the accounts file.",
        )
    if codes & {"InvalidSignatureException", "SignatureDoesNotMatch"}:
        return report.fix(
            "lightsail-signature",
            "Lightsail refused the requests' signature.",
            "Check the clock of this machine (AWS allows 5 minutes of skew) and that nothing "
            "on the way (a proxy, the gateway AWS_ENDPOINT_URL_LIGHTSAIL points at) changes "
            "the request; if `--engine botocore` passes where the default engine does not, "
            "collect with --engine botocore.",
        )
    if codes & {"Timeout", "ConnectionError"}:
        return report.fix(
            "lightsail-network",
            "Some regions' Lightsail endpoints did not answer.",
            "Check the network, a proxy, or AWS_ENDPOINT_URL_LIGHTSAIL; leave the region out "
            "with --regions if it cannot be reached from here.",
        )
    return report.fix(
        "lightsail-other", "Lightsail answered with an error.", "See the error code above."
    )


# ---------------------------------------------------------------------------- output


def render(report: Report) -> str:
    """The report as plain text: one line per check, then the problems and their fixes
    (each line through terminal.visible: details quote AWS's messages)."""
    lines = ["inventory doctor", ""]
    width = max((len(c.step) for c in report.checks), default=8)
    for c in report.checks:
        mark = "ok  " if c.ok else "FAIL"
        lines.append(f"  {mark}  {c.step:<{width}}  {c.subject}: {c.detail}")
    for why in report.skipped:
        lines.append(f"  SKIP  {why}")
    for warning in report.warnings:
        lines.append(f"  WARN  {warning}")
    lines.append("")
    problems = report.problems
    if report.ok:
        lines.append("All good: a collect with these settings should work.")
        return "\n".join(map(visible, lines)) + "\n"
    n = len(problems)
    skipped = f" ({plural(len(report.skipped), 'check')} skipped)" if report.skipped else ""
    lines.append(f"{plural(n, 'problem')} found{skipped}. What fixes {'them' if n != 1 else 'it'}:")
    used = [key for key in dict.fromkeys(c.fix for c in problems) if key in report.fixes]
    for i, key in enumerate(used, 1):
        what, how = report.fixes[key]
        lines += ["", f"{i}. {what}", *(f"   {line}" for line in how.splitlines())]
    return "\n".join(map(visible, lines)) + "\n"
