"""config.py: the accounts file and flags become one frozen, validated Plan."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from inventory.errors import ConfigError, UsageError
from inventory.model import Account, Options, OrgDiscovery, Plan
from inventory.plan.config import load_plan, role_arn_for, validate_options
from inventory.plan.regions import all_regions


def write(tmp_path: Path, text: str, name: str = "accounts.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def fails(path: Path, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_plan(path, options=Options(), **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert isinstance(err, UsageError) and err.exit_code == 2
    assert str(err).startswith(str(path))
    return err


GOOD = """
role_name = "LightsailInventoryReader"
external_id = "fleet-secret-1"
session_name = "nightly.inventory"
regions = ["us-east-1", "eu-west-2"]

[[accounts]]
id = "111111111111"
name = "prod"

[[accounts]]
id = "012345678901"
role_arn = "arn:aws:iam::012345678901:role/Other"
external_id = "override-2"

[[accounts]]
id = "333333333333"
name = "staging"
"""


def test_good_file_round_trips_to_the_exact_plan(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    options = Options(concurrency=32, rate=50.0)
    plan = load_plan(path, options=options)
    assert plan == Plan(
        accounts=(
            Account(
                id="111111111111",
                name="prod",
                role_arn="arn:aws:iam::111111111111:role/LightsailInventoryReader",
                external_id="fleet-secret-1",
            ),
            Account(
                id="012345678901",
                name=None,
                role_arn="arn:aws:iam::012345678901:role/Other",
                external_id="override-2",
            ),
            Account(
                id="333333333333",
                name="staging",
                role_arn="arn:aws:iam::333333333333:role/LightsailInventoryReader",
                external_id="fleet-secret-1",
            ),
        ),
        regions=("us-east-1", "eu-west-2"),
        options=dataclasses.replace(options, session_name="nightly.inventory"),
        source=str(path),
        own_account=False,
        org=None,
    )
    assert plan.targets == 6
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.accounts = ()  # type: ignore[misc]


def test_without_a_file_the_plan_is_the_callers_own_account() -> None:
    plan = load_plan(None, options=Options())
    assert plan == Plan(accounts=(), regions=all_regions(), options=Options(), own_account=True)
    assert load_plan(None, regions="eu-west-1", options=Options()).regions == ("eu-west-1",)


def test_minimal_file_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[accounts]]
        id = "000000000001"
        role_arn = "arn:aws-cn:iam::000000000001:role/path/Reader"
        """,
    )
    plan = load_plan(path)
    assert plan.regions == all_regions()
    assert plan.options == Options()
    assert plan.accounts == (
        Account(id="000000000001", role_arn="arn:aws-cn:iam::000000000001:role/path/Reader"),
    )


def test_role_name_with_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, 'role_name = "ops/Reader"\n[[accounts]]\nid = "111111111111"\n')
    assert load_plan(path).accounts[0].role_arn == "arn:aws:iam::111111111111:role/ops/Reader"
    assert (
        role_arn_for("111111111111", "/ops/Reader") == "arn:aws:iam::111111111111:role/ops/Reader"
    )


def test_cli_regions_win_over_the_files(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert load_plan(path, regions="ap-south-1,us-west-2").regions == ("ap-south-1", "us-west-2")
    assert load_plan(path, regions="all").regions == all_regions()


def test_unknown_cli_region_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--regions.*'mars-north-1'"):
        load_plan(write(tmp_path, GOOD), regions="us-east-1,mars-north-1")
    with pytest.raises(UsageError, match="mars-north-1"):
        load_plan(None, regions="mars-north-1")


def test_unknown_region_in_the_file_names_value_field_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        role_name = "R"
        regions = [
            "us-east-1",
            "us-east-9",
        ]
        [[accounts]]
        id = "111111111111"
        """,
    )
    err = fails(path)
    assert err.field == "regions[1]" and err.value == "us-east-9" and err.line == 4
    assert f"{path}:4: regions[1] = 'us-east-9': unknown Lightsail region" in str(err)
    # The command line's regions replace the file's, but the file is still checked.
    fails(path, regions="us-east-1")


def test_integer_id_is_refused_with_a_hint_to_quote_it(tmp_path: Path) -> None:
    path = write(tmp_path, 'role_name = "R"\n\n[[accounts]]\nname = "x"\nid = 11111111111\n')
    err = fails(path)
    assert err.field == "accounts[0].id" and err.value == 11111111111 and err.line == 5
    assert 'quote it, id = "011111111111"' in str(err)


def test_integer_id_with_leading_zero_is_a_toml_error_with_the_same_hint(tmp_path: Path) -> None:
    path = write(tmp_path, 'role_name = "R"\n[[accounts]]\nid = 011111111111\n')
    err = fails(path)
    assert err.line == 3 and err.field == "syntax"
    assert "quote them" in str(err)


@pytest.mark.parametrize("bad", ["11111111111", "1111111111111", "11111111111a", " 111111111111"])
def test_id_must_be_12_digits(tmp_path: Path, bad: str) -> None:
    path = write(
        tmp_path,
        f'role_name = "R"\n[[accounts]]\nid = "111111111111"\n[[accounts]]\nid = "{bad}"\n',
    )
    err = fails(path)
    assert (err.field, err.value, err.line) == ("accounts[1].id", bad, 5)
    assert "12 digits" in str(err)


def test_missing_id(tmp_path: Path) -> None:
    err = fails(write(tmp_path, 'role_name = "R"\n[[accounts]]\nname = "x"\n'))
    assert (err.field, err.line) == ("accounts[0].id", 2)


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        role_name = "R"
        [[accounts]]
        id = "111111111111"
        [[accounts]]
        id = "222222222222"
        [[accounts]]
        name = "again"
        id = "111111111111"
        """,
    )
    err = fails(path)
    assert (err.field, err.value, err.line) == ("accounts[2].id", "111111111111", 8)
    assert "already listed as accounts[0].id (line 3)" in str(err)
    assert str(err).startswith(f"{path}:8: accounts[2].id = '111111111111'")


def test_unknown_top_level_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, 'rolename = "R"\n[[accounts]]\nid = "111111111111"\n')
    err = fails(path)
    assert (err.field, err.value, err.line) == ("rolename", "R", 1)
    assert "did you mean 'role_name'?" in str(err)
    assert "allowed here: role_name, external_id" in str(err)


def test_unknown_account_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, 'role_name = "R"\n[[accounts]]\nid = "111111111111"\nrole_ar = "x"\n')
    err = fails(path)
    assert (err.field, err.line) == ("accounts[0].role_ar", 4)
    assert "did you mean 'role_arn'?" in str(err)


def test_top_level_key_written_below_an_accounts_block_is_explained(tmp_path: Path) -> None:
    path = write(tmp_path, '[[accounts]]\nid = "111111111111"\nrole_name = "R"\n')
    err = fails(path)
    assert (err.field, err.line) == ("accounts[0].role_name", 3)
    assert "move it above the first [[accounts]]" in str(err)


def test_malformed_toml_keeps_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'role_name = "R"\n[[accounts]]\nid = \n')
    err = fails(path)
    assert err.line == 3 and err.field == "syntax" and err.value == "id ="
    assert "(at line 3, column" in str(err)
    assert str(err).startswith(f"{path}:3:")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    err = fails(path)
    assert "no such file" in str(err) and err.value == str(path)


def test_directory_and_non_utf8(tmp_path: Path) -> None:
    assert "directory" in str(fails(tmp_path))
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'role_name = "R"\nname = "caf\xe9"\n')
    err = fails(path)
    assert err.line == 2 and "UTF-8" in str(err)


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ('role_name = "R"\n[[accounts]]\nid = "111111111111"\nname = 7\n', "accounts[0].name", "must be a string, not an integer"),
        ('role_name = "R"\nregions = "us-east-1"\n[[accounts]]\nid = "111111111111"\n', "regions", "array of strings"),
        ('role_name = "R"\nregions = []\n[[accounts]]\nid = "111111111111"\n', "regions", "empty"),
        ('role_name = "R"\nregions = [1]\n[[accounts]]\nid = "111111111111"\n', "regions[0]", "must be a string"),
        ('role_name = "R"\norg = "yes"\n[[accounts]]\nid = "111111111111"\n', "org", "must be a boolean"),
        ('role_name = "R"\nsession_name = "x"\n[[accounts]]\nid = "111111111111"\n', "session_name", "2-64"),
        ('role_name = "R"\nsession_name = "has space"\n[[accounts]]\nid = "111111111111"\n', "session_name", "2-64"),
        ('role_name = "bad name"\n[[accounts]]\nid = "111111111111"\n', "role_name", "IAM role name"),
        ('role_name = "R"\nexternal_id = "x"\n[[accounts]]\nid = "111111111111"\n', "external_id", "2-1224"),
        ('[[accounts]]\nid = "111111111111"\nrole_arn = "arn:aws:iam::111111111111:user/bob"\n', "accounts[0].role_arn", "not an IAM role ARN"),
        ('[[accounts]]\nid = "111111111111"\nrole_arn = "arn:aws:iam::222222222222:role/R"\n', "accounts[0].role_arn", "belongs to account 222222222222"),
        ('[[accounts]]\nid = "111111111111"\n', "accounts[0].role_arn", "role_name at the top"),
        ('role_name = "R"\n', "accounts", "no accounts"),
        ('role_name = "R"\naccounts = []\n', "accounts", "no accounts"),
        ('role_name = "R"\n[accounts]\nid = "111111111111"\n', "accounts", "two brackets"),
        ('role_name = "R"\norg_ous = ["ou-abcd-12345678"]\n[[accounts]]\nid = "111111111111"\n', "org_ous", "only used with org = true"),
        ('role_name = "R"\norg = true\norg_ous = ["ou-nope"]\n', "org_ous[0]", "organizational unit"),
        ('role_name = "R"\norg = true\nskip_accounts = [222222222222]\n', "skip_accounts[0]", "quote it"),
        ('org = true\n', "role_name", "org = true needs role_name"),
        ('role_name = "R"\norg = true\nmanagement_role_arn = "nope"\n', "management_role_arn", "IAM role ARN"),
        ('role_name = "R"\norg = true\nskip_accounts = ["111111111111"]\n[[accounts]]\nid = "111111111111"\n', "accounts[0].id", "also in skip_accounts"),
    ],
)  # fmt: skip
def test_bad_values_name_file_field_and_value(
    tmp_path: Path, text: str, field: str, needle: str
) -> None:
    path = write(tmp_path, text)
    err = fails(path)
    assert err.field == field
    assert needle in str(err)
    assert f"{field} = {err.value!r}" in str(err)


def test_lines_of_top_level_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path, '# c\nrole_name = "R"\n\nsession_name = "x"\n[[accounts]]\nid = "111111111111"\n'
    )
    assert fails(path).line == 4


def test_org_discovery(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        role_name = "OrgMemberReader"
        external_id = "ext-1"
        org = true
        org_ous = ["ou-abcd-12345678", "r-ab12"]
        skip_accounts = ["222222222222"]
        management_role_arn = "arn:aws:iam::999999999999:role/OrgReader"

        [[accounts]]
        id = "111111111111"
        name = "outside the org"
        """,
    )
    plan = load_plan(path)
    assert plan.org == OrgDiscovery(
        role_name="OrgMemberReader",
        external_id="ext-1",
        ous=("ou-abcd-12345678", "r-ab12"),
        skip=("222222222222",),
        management_role_arn="arn:aws:iam::999999999999:role/OrgReader",
    )
    assert [a.id for a in plan.accounts] == ["111111111111"]
    assert not plan.own_account
    # Discovery alone needs no listed account; the command line can turn it off.
    alone = write(tmp_path, 'role_name = "R"\norg = true\n', "org.toml")
    assert load_plan(alone).accounts == () and load_plan(alone).org is not None
    assert load_plan(path, org=False).org is None
    with pytest.raises(ConfigError, match="no accounts"):
        load_plan(alone, org=False)
    with pytest.raises(UsageError, match="--org"):
        load_plan(None, org=True)


def test_inline_accounts_array(tmp_path: Path) -> None:
    path = write(tmp_path, 'role_name = "R"\naccounts = [{id = "111111111111"}, {id = "12"}]\n')
    err = fails(path)
    assert (err.field, err.line) == ("accounts[1].id", 2)


def test_multiline_string_does_not_confuse_line_finding(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'role_name = "R"\n[[accounts]]\nid = "111111111111"\nname = """\n[[accounts]]\nid = "x"\n"""\n'
        '[[accounts]]\nid = "bad"\n',
    )
    assert fails(path).line == 9


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (Options(concurrency=0), "--concurrency 0: must be at least 1"),
        (Options(concurrency=10_001), "--concurrency 10001: must be at most 10,000"),
        (Options(rate=0), "--rate 0: must be"),
        (Options(rate=float("nan")), "--rate nan"),
        (Options(timeout=-1), "--timeout -1: must be"),
        (Options(max_attempts=0), "--max-attempts 0: must be at least 1"),
        (Options(workers=-1), "--workers -1"),
        (Options(target_deadline=0), "--target-deadline 0"),
        (Options(session_name="a b"), "session_name 'a b'"),
    ],
)
def test_bad_options_name_the_flag(options: Options, message: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        validate_options(options)
    assert str(info.value).startswith(message)
    assert info.value.exit_code == 2
    with pytest.raises(UsageError):
        load_plan(None, options=options)
    with pytest.raises(UsageError):
        load_plan(
            write(tmp_path, GOOD.replace('session_name = "nightly.inventory"', "")), options=options
        )


def test_good_options_pass() -> None:
    options = Options(concurrency=10_000, rate=0.5, timeout=0.1, max_attempts=1)
    assert validate_options(options) is options


def test_quote_hint_only_for_unquoted_ids(tmp_path: Path) -> None:
    assert "quote them" not in str(fails(write(tmp_path, 'role_name = "R"\nid = "1\n')))
    path = write(tmp_path, 'role_name = "R"\norg = true\nskip_accounts = ["1", 0123]\n')
    assert "quote them" in str(fails(path))
