"""The IAM permissions each feature needs: the one list that `doctor`'s fix snippets,
`docs/iam.md` and the CloudFormation templates in `deploy/cloudformation/` are written from
(tests/test_deploy_cloudformation.py checks that all of them agree with this module).

Three identities:
- the reader role, in every member account: exactly the Lightsail calls the collector makes
  there (`collect`; `--deep`; `--usage`);
- the hub, the identity `collect` runs as: AssumeRole on the reader roles, and what a feature
  asks of the hub itself (GetRegions for `--regions discover`, the Organizations listing for
  `--org` unless a management role does it, the lake and the accounts file on S3, SNS for
  `--notify sns:ARN`);
- the management role (`management_role_arn`): with it, `--org` lists the accounts as that
  role (plan/discovery.py assumes it first), so the Organizations actions go there and the
  hub only needs AssumeRole on it.

Every permission statement is named by its Sid, the same everywhere it is written, so a
policy in any of those places can be checked statement by statement. GetCallerIdentity,
which doctor and discovery call, needs no permission (IAM cannot deny it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

READER, HUB, MANAGEMENT = "reader", "hub", "management"

# The Organizations calls plan/discovery.py makes: ListAccounts for the whole organization;
# for `org_ous`, ListAccountsForParent and ListOrganizationalUnitsForParent (recursively).
ORGANIZATIONS: Final = (
    "organizations:ListAccounts",
    "organizations:ListAccountsForParent",
    "organizations:ListOrganizationalUnitsForParent",
)


@dataclass(frozen=True)
class Statement:
    """One permission statement: which identity holds it, for which feature, its actions."""

    sid: str
    identity: str  # READER | HUB | MANAGEMENT
    feature: str
    actions: tuple[str, ...]


STATEMENTS: Final[tuple[Statement, ...]] = (
    Statement("ReadContainerServices", READER, "collect", ("lightsail:GetContainerServices",)),
    Statement(
        "ReadDeploymentsAndImages",
        READER,
        "deep",
        ("lightsail:GetContainerServiceDeployments", "lightsail:GetContainerImages"),
    ),
    Statement(
        "ReadUsage",
        READER,
        "usage",
        ("lightsail:GetContainerServicePowers", "lightsail:GetContainerServiceMetricData"),
    ),
    Statement("AssumeReaderRoles", HUB, "collect", ("sts:AssumeRole",)),
    Statement("ListLightsailRegions", HUB, "regions-discover", ("lightsail:GetRegions",)),
    Statement("ListOrganizationAccounts", HUB, "org", ORGANIZATIONS),
    Statement("AssumeManagementRole", HUB, "org-management-role", ("sts:AssumeRole",)),
    Statement(
        "WriteTheLake",
        HUB,
        "lake",
        ("s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"),
    ),
    Statement("ListTheLake", HUB, "lake", ("s3:ListBucket",)),
    Statement("ReadTheAccountsFile", HUB, "config-s3", ("s3:GetObject",)),
    Statement("PublishNotifications", HUB, "notify-sns", ("sns:Publish",)),
    Statement("ListOrganizationAccounts", MANAGEMENT, "org", ORGANIZATIONS),
)


def statements(identity: str, feature: str | None = None) -> list[Statement]:
    """The statements of `identity` (for `feature` only, when given), in their fixed order."""
    found = [
        s
        for s in STATEMENTS
        if s.identity == identity and (feature is None or s.feature == feature)
    ]
    if not found:
        raise KeyError(f"no permission statement for {identity} {feature or ''}".rstrip())
    return found


def actions(identity: str, *features: str) -> list[str]:
    """The actions `identity` needs for `features` (all of its features when none is named),
    each once, in a stable order."""
    chosen = [s for f in features for s in statements(identity, f)] or statements(identity)
    return list(dict.fromkeys(a for s in chosen for a in s.actions))


def by_sid(identity: str, sid: str) -> Statement:
    """The statement named `sid` of `identity` (KeyError when there is none)."""
    for s in STATEMENTS:
        if s.identity == identity and s.sid == sid:
            return s
    raise KeyError(f"{identity} has no permission statement {sid!r}")


def policy_statement(
    identity: str, feature: str, resource: Any = "*", condition: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The one statement of `identity` for `feature` as a policy document's JSON object."""
    (s,) = statements(identity, feature)
    out: dict[str, Any] = {
        "Sid": s.sid,
        "Effect": "Allow",
        "Action": list(s.actions),
        "Resource": resource,
    }
    if condition:
        out["Condition"] = condition
    return out
