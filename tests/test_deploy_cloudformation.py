"""deploy/cloudformation/: every template passes cfn-lint, and the IAM actions have one source.

inventory/iam.py lists the permission statements per identity and feature; docs/iam.md (its
JSON policies, its table, every action it names), the templates and `inventory doctor`'s
printed fix snippets must say exactly the same, statement by statement (matched by Sid).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from cfnlint.api import lint_file
from cfnlint.decode import decode
from helpers import policies
from typer.testing import CliRunner

from inventory import iam
from inventory.cli import app
from inventory.model import Options, OrgDiscovery
from inventory.plan import discovery
from inventory.simulator import Faults, Fleet, Simulator

MakeSimulator = Callable[..., Simulator]

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "deploy" / "cloudformation"
IDENTITY_OF = {
    "reader-role.yaml": iam.READER,
    "hub-role.yaml": iam.HUB,
    "management-role.yaml": iam.MANAGEMENT,
}
# Statements of the deployment's own plumbing (the task's execution role, the scheduler's
# role): not the collector's, so not in inventory/iam.py.
PLUMBING = {"ReadFingerprintKey", "RunTheTask", "PassTheTaskRoles"}
# `service:Name` tokens in prose that are no permission to grant: a condition key, and the
# call IAM cannot deny
NOT_GRANTED = {"sts:ExternalId", "sts:GetCallerIdentity"}
# an action (CamelCase, perhaps a wildcard), not an ARN's region or a placeholder like sns:ARN
ACTION_TOKEN = re.compile(r"\b(lightsail|organizations|sts|s3|sns):([A-Z][a-z][A-Za-z]*\*?|\*)")


def templates() -> list[Path]:
    return sorted(TEMPLATES.glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    template, errors = decode(str(path))
    assert not errors and template is not None, errors
    return template


def branches(item: Any, condition: str | None = None) -> Iterator[tuple[str | None, Any]]:
    """(condition, statement) for a statement list's item: an Fn::If yields both branches
    (an AWS::NoValue branch yields nothing)."""
    if isinstance(item, dict) and set(item) == {"Fn::If"}:
        name, yes, no = item["Fn::If"]
        yield from branches(yes, name)
        yield from branches(no, f"!{name}")
    elif isinstance(item, dict) and item != {"Ref": "AWS::NoValue"}:
        yield condition, item


def documents(node: Any, key: str) -> Iterator[dict[str, Any]]:
    """Every policy document under `key` (PolicyDocument, AssumeRolePolicyDocument) in a
    template, wherever it is."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, dict):
                yield v
            else:
                yield from documents(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from documents(v, key)


def statements_of(template: dict[str, Any], key: str = "PolicyDocument") -> list[dict[str, Any]]:
    """Every statement (each branch of a conditional one) of the template's `key` documents,
    with the condition that includes it as "_condition"."""
    found = []
    for doc in documents(template["Resources"], key):
        for item in doc["Statement"]:
            found += [{**s, "_condition": c} for c, s in branches(item)]
    return found


def as_list(action: Any) -> list[str]:
    return [action] if isinstance(action, str) else list(action)


def check_statement(statement: dict[str, Any], identity: str | None = None) -> str:
    """The statement's Sid, after checking its actions are iam.py's for that Sid (of
    `identity`, or of any identity holding that Sid)."""
    sid = statement.get("Sid")
    assert sid, f"a permission statement without a Sid: {statement}"
    holders = [s for s in iam.STATEMENTS if s.sid == sid and identity in (None, s.identity)]
    assert holders, f"{sid} is not a statement of {identity or 'inventory/iam.py'}"
    assert statement["Effect"] == "Allow"
    for s in holders:
        assert as_list(statement["Action"]) == list(s.actions), sid
    return str(sid)


# ---------------------------------------------------------------------------- cfn-lint


@pytest.mark.parametrize("path", templates(), ids=lambda p: p.name)
def test_template_passes_cfn_lint(path: Path) -> None:
    matches = lint_file(path)
    assert not matches, "\n".join(str(m) for m in matches)


def test_cfn_lint_catches_a_wrong_property_and_a_warning(tmp_path: Path) -> None:
    """The lint test can fail: a misspelt property of the same template is an error, an
    unused parameter a warning."""
    text = (TEMPLATES / "fargate-schedule.yaml").read_text(encoding="utf-8")
    assert "FlexibleTimeWindow:" in text and "\nParameters:\n" in text
    bad = tmp_path / "bad.yaml"
    text = text.replace("FlexibleTimeWindow:", "FlexibleWindow:")
    bad.write_text(text.replace("\nParameters:\n", "\nParameters:\n  Unused:\n    Type: String\n"))
    found = {m.rule.id: str(m) for m in lint_file(bad)}
    assert "FlexibleWindow" in found.get("E3002", "") and "Unused" in found.get("W2001", "")


def test_the_expected_templates_exist() -> None:
    assert {p.name for p in templates()} == {*IDENTITY_OF, "fargate-schedule.yaml"}


# ---------------------------------------------------------------------------- one source


def test_iam_actions_exist_in_botocore_and_discovery_uses_them() -> None:
    """Every Lightsail and Organizations action names an operation of botocore's model (for
    these services the IAM action is the operation's name), and discovery's error messages
    name exactly iam.py's Organizations actions."""
    session = botocore.session.get_session()
    models = {s: session.get_service_model(s) for s in ("lightsail", "organizations")}
    for s in iam.STATEMENTS:
        for action in s.actions:
            service, name = action.split(":")
            if service in models:
                assert name in models[service].operation_names, action
    assert discovery.ORG_PERMISSIONS == iam.ORGANIZATIONS
    assert iam.actions(iam.READER) == [
        "lightsail:GetContainerServices",
        "lightsail:GetContainerServiceDeployments",
        "lightsail:GetContainerImages",
        "lightsail:GetContainerServicePowers",
        "lightsail:GetContainerServiceMetricData",
    ]
    assert iam.actions(iam.READER, "collect") == ["lightsail:GetContainerServices"]
    assert iam.actions(iam.HUB, "org") == iam.actions(iam.MANAGEMENT, "org")
    with pytest.raises(KeyError, match="no permission statement for reader nope"):
        iam.actions(iam.READER, "nope")


async def test_organizations_actions_are_the_calls_discovery_makes(
    make_simulator: MakeSimulator,
) -> None:
    """Listing the whole organization and listing under an OU call, between them, exactly
    the Organizations operations iam.py grants (against the simulator, over HTTP)."""
    fleet = Fleet(8, seed=2)
    sim = make_simulator(fleet=fleet)
    options = Options(timeout=5.0, max_attempts=2)
    await discovery.list_org_accounts(OrgDiscovery("R"), options)
    await discovery.list_org_accounts(OrgDiscovery("R", ous=(fleet.root_id,)), options)
    names = [a.split(":")[1] for a in iam.ORGANIZATIONS]
    model = botocore.session.get_session().get_service_model("organizations")
    called = [op for op in model.operation_names if sim.operation_stats(op)["calls"]]
    assert sorted(called) == sorted(names)


def test_templates_agree_with_iam() -> None:
    for name, identity in IDENTITY_OF.items():
        found = statements_of(load(TEMPLATES / name))
        sids = [check_statement(s, identity) for s in found]
        assert sorted(sids) == sorted(s.sid for s in iam.statements(identity)), name
    plumbing = statements_of(load(TEMPLATES / "fargate-schedule.yaml"))
    assert {s["Sid"] for s in plumbing} == PLUMBING


def test_reader_features_are_switched_by_parameters() -> None:
    """collect's statement always; --deep's and --usage's only when switched on."""
    template = load(TEMPLATES / "reader-role.yaml")
    when = {s["Sid"]: s["_condition"] for s in statements_of(template)}
    assert when == {
        "ReadContainerServices": None,
        "ReadDeploymentsAndImages": "Deep",
        "ReadUsage": "Usage",
    }
    conditions = template["Conditions"]
    assert conditions["Deep"] == {"Fn::Equals": [{"Ref": "EnableDeep"}, "true"]}
    assert conditions["Usage"] == {"Fn::Equals": [{"Ref": "EnableUsage"}, "true"]}
    assert template["Parameters"]["EnableDeep"]["Default"] == "false"


def json_blocks(text: str) -> list[dict[str, Any]]:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, flags=re.S)]


def test_docs_agree_with_iam() -> None:
    text = (ROOT / "docs" / "iam.md").read_text(encoding="utf-8")
    sids = set()
    for policy in json_blocks(text):
        for statement in policy["Statement"]:
            if "Principal" not in statement:  # a trust policy's statement is no permission
                sids.add(check_statement(statement))
    assert sids == {s.sid for s in iam.STATEMENTS}
    rows = re.findall(r"^\| (reader|hub|management) \|[^|]*\|([^|]*)\|([^|]*)\|$", text, re.M)
    assert len(rows) >= len(iam.STATEMENTS) - 1  # the lake's two statements share a row
    for identity, sid_cell, action_cell in rows:
        named = [iam.by_sid(identity, sid) for sid in re.findall(r"`(\w+)`", sid_cell)]
        actions = re.findall(r"`([a-z0-9]+:\w+)`", action_cell)
        if actions:  # "as the hub's above" repeats none
            assert actions == [a for s in named for a in s.actions], sid_cell


@pytest.mark.parametrize(
    "doc", ["docs/iam.md", "README.md", "deploy/cloudformation/README.md"], ids=str
)
def test_prose_names_only_real_actions(doc: str) -> None:
    """An action named in prose is one iam.py grants (no stale or wildcard action)."""
    known = {a for s in iam.STATEMENTS for a in s.actions} | NOT_GRANTED
    text = (ROOT / doc).read_text(encoding="utf-8")
    named = {m.group(0) for m in ACTION_TOKEN.finditer(text)}
    assert named - known == set()


# ---------------------------------------------------------------------------- doctor


def doctor(*args: str) -> str:
    return CliRunner().invoke(app, ["doctor", *args]).stdout


def write_accounts(path: Path, ids: list[str], extra: str = "") -> Path:
    lines = ['role_name = "LightsailInventoryReader"', 'external_id = "ext-42"', extra]
    for a in ids:
        lines += ["[[accounts]]", f'id = "{a}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_doctor_snippets_agree_with_iam(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    """Every fix snippet doctor prints (AssumeRole, GetContainerServices and GetRegions
    denied; Organizations denied to the management role; the management role not
    assumable) holds iam.py's statements."""
    fleet = Fleet(4, seed=1, regions=["us-east-1", "eu-west-2"])
    members = list(fleet.account_ids)
    make_simulator(
        fleet=fleet,
        faults=Faults(
            external_id="ext-42",
            denied_accounts={members[0]},
            denied_regions={("*", "us-east-1")},  # GetRegions is asked in us-east-1 too
        ),
    )
    outs = [
        doctor("-c", str(write_accounts(tmp_path / "a.toml", members)), "--regions", "discover")
    ]
    for i, account in enumerate(members[:2]):  # role not assumable; assumed, org denied
        org = f'org = true\nmanagement_role_arn = "arn:aws:iam::{account}:role/Org"'
        org += '\nmanagement_external_id = "ext-42"'
        outs.append(doctor("-c", str(write_accounts(tmp_path / f"o{i}.toml", [], org))))
    assert "AssumeRole" in outs[1] and "organizations ListAccounts" in " ".join(outs[2].split())
    seen = set()
    for out in outs:
        for policy in policies(out):
            for statement in policy["Statement"]:
                if "Principal" not in statement:
                    seen.add(check_statement(statement))
    assert seen == {
        "ReadContainerServices",
        "AssumeReaderRoles",
        "ListLightsailRegions",
        "ListOrganizationAccounts",
        "AssumeManagementRole",
    }


# ---------------------------------------------------------------------------- trust, wildcards


def test_reader_trust_requires_external_id_and_names_only_the_hub() -> None:
    template = load(TEMPLATES / "reader-role.yaml")
    (statement,) = statements_of(template, "AssumeRolePolicyDocument")
    assert statement["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${HubAccountId}:role/${HubRoleName}"}
    }
    assert statement["Action"] == "sts:AssumeRole" and statement["_condition"] is None
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}}
    external_id = template["Parameters"]["ExternalId"]
    assert external_id["NoEcho"] is True and "Default" not in external_id


def test_management_trust_names_only_the_hub() -> None:
    template = load(TEMPLATES / "management-role.yaml")
    (statement,) = statements_of(template, "AssumeRolePolicyDocument")
    assert statement["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${HubAccountId}:role/${HubRoleName}"}
    }
    assert statement["Condition"]["Fn::If"][0] == "HasExternalId"


@pytest.mark.parametrize("path", templates(), ids=lambda p: p.name)
def test_no_wildcard_actions(path: Path) -> None:
    template = load(path)
    every = statements_of(template) + statements_of(template, "AssumeRolePolicyDocument")
    assert every
    for statement in every:
        assert "NotAction" not in statement and "NotResource" not in statement
        for action in as_list(statement["Action"]):
            assert "*" not in action and "?" not in action, (path.name, action)
