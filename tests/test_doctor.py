"""`inventory doctor` against the simulator: what it checks, what it names, what it prints."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import policies
from typer.testing import CliRunner

from inventory.answers.doctor import trust_principal
from inventory.cli import app
from inventory.simulator import BASE_SECRET_KEY, HUB_ACCOUNT_ID, Faults, Fleet, Simulator

MakeSimulator = Callable[..., Simulator]
R3 = ("us-east-1", "eu-west-2", "ap-northeast-1")
ROLE = "LightsailInventoryReader"
HUB_ARN = f"arn:aws:iam::{HUB_ACCOUNT_ID}:user/simulator"


def write_accounts(path: Path, ids: list[str], extra: str = "") -> Path:
    lines = [f'role_name = "{ROLE}"', 'external_id = "ext-42"', extra]
    for a in ids:
        lines += ["[[accounts]]", f'id = "{a}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["doctor", *args])
    return result.exit_code, result.stdout


def line_of(text: str, *words: str) -> str:
    """The one check line holding all `words`."""
    checks = [ln for ln in text.splitlines() if ln.startswith(("  ok ", "  FAIL "))]
    (hit,) = [ln for ln in checks if all(w in ln for w in words)]
    return hit


def test_all_good(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    fleet = Fleet(5, seed=1, regions=R3)
    sim = make_simulator(fleet=fleet, faults=Faults(external_id="ext-42"))
    config = write_accounts(tmp_path / "a.toml", list(fleet.account_ids))

    code, out = doctor("-c", str(config), "--regions", ",".join(R3))

    assert code == 0, out
    assert "All good" in out and "FAIL" not in out
    assert HUB_ARN in line_of(out, "identity")
    for a in fleet.account_ids[:3]:  # the default sample: the first three
        assert line_of(out, "assume-role", a).split()[0] == "ok"
    assert fleet.account_ids[3] not in out
    for r in R3:
        assert re.search(rf"ok +region +{r}: ok in 3 accounts", out)
    assert sim.operation_stats("AssumeRole")["ok"] == 3
    assert sim.operation_stats("GetContainerServices")["ok"] == 3 * len(R3)


def test_denied_account_and_region(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    fleet = Fleet(5, seed=1, regions=R3)
    accounts = list(fleet.account_ids)
    denied_account, denied_region = accounts[1], R3[2]
    sim = make_simulator(
        fleet=fleet,
        faults=Faults(
            external_id="ext-42",
            denied_accounts={denied_account},
            denied_regions={("*", denied_region)},
        ),
    )
    config = write_accounts(tmp_path / "a.toml", accounts)

    code, out = doctor("-c", str(config), "--regions", ",".join(R3), "--sample", "3")

    assert code == 1, out
    hit = line_of(out, "assume-role", denied_account)
    assert hit.split()[0] == "FAIL" and "AccessDenied" in hit
    hit = line_of(out, "region", f"{denied_region}:")
    assert hit.split()[0] == "FAIL" and "AccessDeniedException" in hit
    assert accounts[0] in hit and accounts[2] in hit  # both assumed accounts tried it
    for r in R3[:2]:
        assert line_of(out, "region", f"{r}:").split()[0] == "ok"
    assert "2 problems found" in out
    assert f"The role could not be assumed in {denied_account}." in out
    assert f"lightsail:GetContainerServices is denied in {denied_region}." in out

    trust, hub, reader = policies(out)
    (t,) = trust["Statement"]
    assert t["Principal"] == {"AWS": HUB_ARN} and t["Action"] == "sts:AssumeRole"
    assert t["Condition"] == {"StringEquals": {"sts:ExternalId": "ext-42"}}
    (h,) = hub["Statement"]
    assert h["Resource"] == f"arn:aws:iam::{denied_account}:role/{ROLE}"
    (r,) = reader["Statement"]
    assert r["Action"] == ["lightsail:GetContainerServices"] and r["Effect"] == "Allow"

    secrets = {BASE_SECRET_KEY} | {c.secret_access_key for c in sim.issued_credentials()}
    secrets |= {c.session_token for c in sim.issued_credentials()}
    assert len(secrets) == 5 and not [s for s in secrets if s in out]


def test_own_account_and_regions_discover(make_simulator: MakeSimulator) -> None:
    """No accounts file: the base identity in every region GetRegions names; GetRegions
    denied: named, with the policy, and every known region is still checked."""
    sim = make_simulator(fleet=Fleet(1, seed=1, regions=["us-east-1", "ap-east-9"]))

    code, out = doctor("--regions", "discover")
    assert code == 0, out
    assert "GetRegions: 2 regions; new: ap-east-9" in out
    assert "own account: no role to assume" in out
    assert line_of(out, "region", "ap-east-9:").split()[0] == "ok"

    sim.faults = Faults(denied_regions={("*", "us-east-1")})
    code, out = doctor("--regions", "discover")
    assert code == 1
    assert line_of(out, "regions", "GetRegions").split()[0] == "FAIL"
    assert f"the base identity ({HUB_ARN})" in out  # whom to attach the reader policy to
    actions = [s["Action"] for p in policies(out) for s in p["Statement"]]
    assert ["lightsail:GetRegions"] in actions and ["lightsail:GetContainerServices"] in actions


def test_org_denied(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    fleet = Fleet(3, seed=1, regions=R3[:1])
    make_simulator(fleet=fleet)
    member = fleet.account_ids[0]
    config = write_accounts(
        tmp_path / "o.toml", [], f'org = true\nmanagement_role_arn = "arn:aws:iam::{member}:role/O"'
    )
    code, out = doctor("-c", str(config))
    assert code == 1
    assert line_of(out, "organizations").split()[0] == "FAIL"
    assert "AccessDeniedException" in out
    (policy,) = policies(out)
    assert "organizations:ListAccounts" in policy["Statement"][0]["Action"]
    assert "SKIP" in out  # no account to try the role in


def test_management_role_not_assumable(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    """AssumeRole of management_role_arn refused: the fix is the hub's right to assume it
    (on the hub), not the Organizations listing."""
    fleet = Fleet(3, seed=1, regions=R3[:1])
    make_simulator(fleet=fleet, faults=Faults(denied_accounts={fleet.account_ids[0]}))
    arn = f"arn:aws:iam::{fleet.account_ids[0]}:role/O"
    config = write_accounts(tmp_path / "o.toml", [], f'org = true\nmanagement_role_arn = "{arn}"')
    code, out = doctor("-c", str(config))
    assert code == 1
    assert line_of(out, "organizations", "AssumeRole").split()[0] == "FAIL"
    assert f"Attach to {HUB_ARN}:" in out
    (policy,) = policies(out)
    (statement,) = policy["Statement"]
    assert statement["Sid"] == "AssumeManagementRole" and statement["Resource"] == arn
    assert statement["Action"] == ["sts:AssumeRole"]


def test_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)  # fmt: skip
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, out = doctor("--regions", "us-east-1")
    assert code == 1
    assert "no AWS credentials found" in out and "AWS_PROFILE" in out


def test_trust_principal() -> None:
    assert (
        trust_principal("arn:aws:sts::123456789012:assumed-role/Hub/ci-run-7")
        == "arn:aws:iam::123456789012:role/Hub"
    )
    assert trust_principal(HUB_ARN) == HUB_ARN


def test_doctor_checks_the_engine_collect_uses(
    tmp_path: Path, make_simulator: MakeSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault only the lean engine (collect's default) has, here a signature the simulator
    refuses, shows in doctor; `--engine botocore` checks the aiobotocore client instead."""
    import inventory.aws.lean

    fleet = Fleet(3, seed=1, regions=R3[:2])
    sim = make_simulator(fleet=fleet, faults=Faults(external_id="ext-42"))
    config = write_accounts(tmp_path / "a.toml", list(fleet.account_ids))
    monkeypatch.setattr(inventory.aws.lean, "BODY_SHA256", "0" * 64)  # signs another body

    code, out = doctor("-c", str(config), "--regions", ",".join(R3[:2]))
    assert code == 1, out
    for r in R3[:2]:
        hit = line_of(out, "region", f"{r}:")
        assert hit.split()[0] == "FAIL" and "InvalidSignatureException" in hit
    assert "Lightsail refused the requests' signature." in out
    bad = sim.operation_stats("GetContainerServices")["bad_signature"]
    assert bad == 3 * len(R3[:2])

    code, out = doctor("-c", str(config), "--regions", ",".join(R3[:2]), "--engine", "botocore")
    assert code == 0, out
    assert sim.operation_stats("GetContainerServices")["bad_signature"] == bad  # none more
    code, out = doctor("-c", str(config), "--engine", "fast")
    assert code == 2


class _AgentRecorder(Simulator):
    """Records the User-Agent of every STS AssumeRole request."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.assume_role_agents: list[str] = []

    async def _handle(self, request: Any) -> Any:
        body = await request.read()
        if body.startswith(b"Action=AssumeRole&"):
            self.assume_role_agents.append(request.headers.get("User-Agent", ""))
        return await super()._handle(request)


@pytest.mark.parametrize("engine", ["lean", "botocore"])
def test_doctor_assumes_roles_through_the_engine_collect_uses(
    tmp_path: Path, sim_env: Any, engine: str
) -> None:
    """AssumeRole, like GetContainerServices, goes through the engine collect uses: the lean
    path by default (its User-Agent), aiobotocore with `--engine botocore`."""
    from inventory.aws.lean import USER_AGENT

    fleet = Fleet(3, seed=1, regions=R3[:2])
    sim = sim_env(_AgentRecorder(fleet, Faults(external_id="ext-42")))
    config = write_accounts(tmp_path / "a.toml", list(fleet.account_ids))
    code, out = doctor("-c", str(config), "--regions", ",".join(R3[:2]), "--engine", engine)
    assert code == 0, out
    for account in fleet.account_ids:
        assert line_of(out, "assume-role", account).split()[0] == "ok"
    agents = sim.assume_role_agents
    assert len(agents) == len(fleet.account_ids)
    if engine == "lean":
        assert set(agents) == {USER_AGENT}
    else:
        assert all(a.startswith(("Botocore/", "aiobotocore/")) for a in agents), agents
    assert sim.operation_stats("AssumeRole")["bad_signature"] == 0
