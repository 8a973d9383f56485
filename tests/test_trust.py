"""Least-privilege trust: the policies `doctor` suggests always require the ExternalId (one
trust policy per distinct id) and restrict the hub to the organization when it is known; a
missing ExternalId is warned about once; the management role accepts an ExternalId; the role
session name carries the run id within STS's 64 characters (the simulator checks it as STS
does)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from helpers import policies
from typer.testing import CliRunner

from inventory.cli import app
from inventory.simulator import HUB_ACCOUNT_ID, Faults, Fleet, Simulator

MakeSimulator = Callable[..., Simulator]
ROLE = "LightsailInventoryReader"
RUN_ID = "20261127T053650Z-3f9a1c"


def accounts_file(path: Path, head: str, accounts: dict[str, str | None]) -> Path:
    """An accounts file: `head` lines, then one [[accounts]] per id (its own external_id)."""
    lines = [f'role_name = "{ROLE}"', head]
    for account_id, external_id in accounts.items():
        lines += ["", "[[accounts]]", f'id = "{account_id}"']
        if external_id is not None:
            lines.append(f'external_id = "{external_id}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_doctor_prints_one_trust_policy_per_external_id_always_with_the_condition(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    from inventory.answers.doctor import EXTERNAL_ID_PLACEHOLDER

    fleet = Fleet(3, seed=1, regions=["us-east-1"])
    make_simulator(fleet=fleet, faults=Faults(external_id="the-right-one"))
    a, b, c = fleet.account_ids
    config = accounts_file(tmp_path / "a.toml", "", {a: "wrong-a", b: "wrong-b", c: None})

    result = CliRunner().invoke(app, ["doctor", "-c", str(config), "--sample", "0"])

    out = result.stdout
    assert result.exit_code == 1, out
    trust = [p for p in policies(out) if p["Statement"][0].get("Principal")]
    conditions = [p["Statement"][0].get("Condition") for p in trust]
    assert conditions == [
        {"StringEquals": {"sts:ExternalId": "wrong-a"}},
        {"StringEquals": {"sts:ExternalId": "wrong-b"}},
        {"StringEquals": {"sts:ExternalId": EXTERNAL_ID_PLACEHOLDER}},
    ]
    assert f"In {a}, create the role" in out and f"In {c}, create the role" in out
    warnings = [ln for ln in out.splitlines() if ln.startswith("  WARN")]
    assert len(warnings) == 1 and "no ExternalId" in warnings[0] and c in warnings[0]


def test_doctor_restricts_the_hub_to_the_organization(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(3, seed=1, regions=["us-east-1"])
    make_simulator(fleet=fleet, faults=Faults(external_id="the-right-one"))
    config = accounts_file(tmp_path / "o.toml", 'external_id = "wrong"\norg = true', {})

    result = CliRunner().invoke(app, ["doctor", "-c", str(config), "--sample", "2"])

    out = result.stdout
    assert result.exit_code == 1, out
    hub = [p for p in policies(out) if p["Statement"][0].get("Sid") == "AssumeReaderRoles"]
    (statement,) = hub[0]["Statement"]
    assert statement["Condition"] == {"StringEquals": {"aws:ResourceOrgID": fleet.org_id}}
    assert not [ln for ln in out.splitlines() if ln.startswith("  WARN")]  # ids configured


def test_docs_iam_restricts_the_hub_to_the_organization() -> None:
    text = (Path(__file__).parent.parent / "docs" / "iam.md").read_text(encoding="utf-8")
    assert '"aws:ResourceOrgID"' in text and '"sts:ExternalId"' in text


def _org_collect(tmp_path: Path, management_external_id: str | None) -> Any:
    head = [
        'external_id = "ext-1"',
        "org = true",
        f'management_role_arn = "arn:aws:iam::{HUB_ACCOUNT_ID}:role/OrgReader"',
    ]
    if management_external_id is not None:
        head.append(f'management_external_id = "{management_external_id}"')
    config = accounts_file(tmp_path / "org.toml", "\n".join(head), {})
    return CliRunner().invoke(
        app,
        ["collect", "-c", str(config), "--regions", "us-east-1", "--db",
         str(tmp_path / "org.duckdb"), "--no-parquet"],
    )  # fmt: skip


def test_management_role_is_assumed_with_its_external_id(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(3, seed=1, regions=["us-east-1"])
    sim = make_simulator(fleet=fleet, faults=Faults(external_id="ext-1"))

    result = _org_collect(tmp_path, "ext-1")

    assert result.exit_code == 0, result.output
    issued = [c.role_arn for c in sim.issued_credentials()]
    assert issued[0] == f"arn:aws:iam::{HUB_ACCOUNT_ID}:role/OrgReader"
    assert {arn.split(":")[4] for arn in issued[1:]} >= set(fleet.active_account_ids)
    # without it, the management role refuses: the run fails naming it
    (tmp_path / "again").mkdir()
    result = _org_collect(tmp_path / "again", None)
    assert result.exit_code == 1, result.output
    assert "management_role_arn" in result.output and "AccessDenied" in result.output


def test_management_external_id_needs_the_management_role(tmp_path: Path) -> None:
    config = accounts_file(tmp_path / "m.toml", 'org = true\nmanagement_external_id = "ext-1"', {})
    result = CliRunner().invoke(app, ["collect", "-c", str(config), "--no-parquet"])
    assert result.exit_code == 2
    assert "management_external_id" in result.output and "management_role_arn" in result.output


@pytest.mark.parametrize("configured", ["lightsail-inventory", "x" * 64])
def test_session_name_carries_the_run_id(
    configured: str, tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(2, seed=1, regions=["us-east-1"])
    sim = make_simulator(fleet=fleet, faults=Faults(external_id="ext-1"))
    config = accounts_file(
        tmp_path / "a.toml",
        f'external_id = "ext-1"\nsession_name = "{configured}"',
        dict.fromkeys(fleet.account_ids),
    )

    result = CliRunner().invoke(
        app,
        ["collect", "-c", str(config), "--run-id", RUN_ID, "--db", str(tmp_path / "s.duckdb"),
         "--no-parquet"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    names = {c.session_name for c in sim.issued_credentials()}
    keep = min(len(configured), 64 - 1 - len(RUN_ID))
    assert names == {f"{configured[:keep]}@{RUN_ID}"}
    assert all(len(n) <= 64 for n in names)
    assert "no ExternalId" not in result.stderr


def test_run_session_name_never_cuts_the_run_id() -> None:
    from inventory.aws.credentials import run_session_name

    longest = "20261127T053650Z-" + "a" * 32  # the longest run id check_run_id accepts
    name = run_session_name("n" * 64, longest)
    assert len(name) == 64 and name.endswith("@" + longest)
    assert run_session_name("ci", RUN_ID) == f"ci@{RUN_ID}"


def test_collect_warns_once_without_external_id(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(3, seed=1, regions=["us-east-1"])
    make_simulator(fleet=fleet)
    config = accounts_file(tmp_path / "a.toml", "", dict.fromkeys(fleet.account_ids))

    result = CliRunner().invoke(
        app, ["collect", "-c", str(config), "--db", str(tmp_path / "w.duckdb"), "--no-parquet"]
    )

    assert result.exit_code == 0, result.output
    warned = [ln for ln in result.stderr.splitlines() if "no ExternalId" in ln]
    assert len(warned) == 1 and "3 of 3 accounts" in warned[0]


@pytest.mark.parametrize(
    ("session", "problem"),
    [
        ("x" * 65, "length less than or equal to 64"),
        ("sessión", "regular expression pattern"),
        ("has space", "regular expression pattern"),
    ],
)
def test_simulator_validates_role_session_name_as_sts(
    session: str, problem: str, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(1, seed=1, regions=["us-east-1"])
    sim = make_simulator(fleet=fleet)
    sts = boto3.session.Session().client("sts", region_name="us-east-1")  # today's env
    role = f"arn:aws:iam::{fleet.account_ids[0]}:role/{ROLE}"

    with pytest.raises(ClientError) as err:
        sts.assume_role(RoleArn=role, RoleSessionName=session)

    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert problem in err.value.response["Error"]["Message"]
    ok = sts.assume_role(RoleArn=role, RoleSessionName="a_B+=,.@-" + "9" * 55)
    assert ok["AssumedRoleUser"]["Arn"].endswith("/a_B+=,.@-" + "9" * 55)
    assert len(sim.issued_credentials()) == 1
