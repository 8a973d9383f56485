"""The command line: bad input ends with exit 2 and a message that names the file, field
and value; query / runs / export against a store a real collect wrote; help with examples.

Messages are checked as a user sees them on a non-terminal stderr (80 columns): a path
or value must not be broken across lines or eaten as terminal markup.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import datetime as dt
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
import typer
from conftest import use_simulator_env
from typer.testing import CliRunner

from inventory.cli import app
from inventory.plan.config import load_plan
from inventory.run.pipeline import run_collect
from inventory.simulator import Faults, Fleet, Simulator
from inventory.storage import schema

WriteAccounts = Callable[..., Path]
R2 = ("us-east-1", "ap-southeast-2")
SIX = tuple(schema.TABLES)  # every table (six, and the three of collect --deep)


def invoke(*args: str) -> Any:
    """`inventory ARGS` in this process; a crash is a failure, not an exit status."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def error_line(result: Any) -> str:
    """The error message: on stderr, nothing on stdout, and on ONE line."""
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(autouse=True)
def narrow_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


# --------------------------------------------------------------------------- bad input: exit 2
def test_account_id_not_12_digits(tmp_path: Path, write_accounts: WriteAccounts) -> None:
    config = write_accounts(tmp_path / "accounts.toml", ["111111111111", "12345"])
    line = error_line(invoke("collect", "--config", str(config), "--db", str(tmp_path / "x")))
    assert f"{config}:" in line
    assert "accounts[1].id" in line and "'12345'" in line and "12 digits" in line
    assert not (tmp_path / "x").exists()


def test_unknown_region_flag(tmp_path: Path) -> None:
    result = invoke("collect", "--regions", "us-east-1,us-east-9", "--db", str(tmp_path / "x"))
    assert result.exit_code == 2
    line = error_line(result)
    assert "--regions" in line and "'us-east-9'" in line


def test_unknown_region_in_the_file(tmp_path: Path, write_accounts: WriteAccounts) -> None:
    config = write_accounts(tmp_path / "a.toml", ["111111111111"], regions=["eu-west-9"])
    result = invoke("collect", "--config", str(config), "--db", str(tmp_path / "x"))
    assert result.exit_code == 2
    line = error_line(result)
    assert str(config) in line and "regions" in line and "'eu-west-9'" in line


def test_region_without_a_lightsail_endpoint(tmp_path: Path, write_accounts: WriteAccounts) -> None:
    """us-west-1 is in the API's RegionName enum, but botocore's endpoint data gives
    Lightsail no endpoint there: a usage error that says so, from the flag or the file."""
    result = invoke("collect", "--regions", "us-east-1,us-west-1", "--db", str(tmp_path / "x"))
    assert result.exit_code == 2
    line = error_line(result)
    assert "--regions 'us-west-1'" in line and "Lightsail has no endpoint in us-west-1" in line
    config = write_accounts(tmp_path / "a.toml", ["111111111111"], regions=["us-west-1"])
    result = invoke("collect", "--config", str(config), "--db", str(tmp_path / "x"))
    assert result.exit_code == 2
    line = error_line(result)
    assert f"{config}:" in line and "regions[0] = 'us-west-1'" in line
    assert "Lightsail has no endpoint in us-west-1" in line
    assert not (tmp_path / "x").exists()


def test_malformed_toml(tmp_path: Path) -> None:
    config = tmp_path / "accounts.toml"
    config.write_text('role_name = "Reader"\n\n[[accounts]]\nid = 011111111111\n')
    result = invoke("collect", "--config", str(config), "--db", str(tmp_path / "x"))
    assert result.exit_code == 2
    line = error_line(result)
    assert f"{config}:4:" in line and "not valid TOML" in line
    assert "id = 011111111111" in line and "quote them" in line


def test_malformed_toml_text_is_shown_as_written(tmp_path: Path) -> None:
    """The offending line is quoted literally, brackets included."""
    config = tmp_path / "accounts.toml"
    config.write_text('role_name = "Reader"\n[[accounts]]\nid = "111111111111"\n[bad]]\n')
    result = invoke("collect", "--config", str(config), "--db", str(tmp_path / "x"))
    assert result.exit_code == 2
    line = error_line(result)
    assert f"{config}:4:" in line and "'[bad]]'" in line


def test_unknown_key(tmp_path: Path, write_accounts: WriteAccounts) -> None:
    config = write_accounts(tmp_path / "a.toml", ["111111111111"])
    config.write_text(config.read_text() + 'nmae = "prod"\n')
    result = invoke("collect", "--config", str(config), "--db", str(tmp_path / "x"))
    assert result.exit_code == 2
    line = error_line(result)
    assert f"{config}:" in line and "accounts[0].nmae" in line and "'prod'" in line
    assert "unknown key" in line and "did you mean 'name'" in line


def test_top_level_key_below_an_accounts_header(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('role_name = "R"\n[[accounts]]\nid = "111111111111"\nregions = ["x"]\n')
    result = invoke("collect", "--config", str(config), "--db", str(tmp_path / "x"))
    assert result.exit_code == 2
    line = error_line(result)
    assert "accounts[0].regions" in line and "[[accounts]]" in line  # not eaten as markup


def test_a_value_that_looks_like_markup_is_shown_not_interpreted(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('role_name = "R"\nfoo = "[/] [bold]x[/bold]"\n[[accounts]]\nid = "1"\n')
    result = invoke("collect", "--config", str(config), "--db", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "'[/] [bold]x[/bold]'" in error_line(result)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = invoke("collect", "--config", str(missing), "--db", str(tmp_path / "x"))
    assert result.exit_code == 2
    line = error_line(result)
    assert str(missing) in line and "no such file" in line


def test_bad_flag_values(tmp_path: Path) -> None:
    for flag, value in (("--concurrency", "0"), ("--rate", "-1"), ("--timeout", "0")):
        result = invoke("collect", flag, value, "--db", str(tmp_path / "x"))
        assert result.exit_code == 2, (flag, result.output)
        line = error_line(result)
        assert flag in line and value in line


# --------------------------------------------------------------------------- a real store
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Fleet]]:
    """One collect (4 accounts × 2 regions, one account id starting with 0) for the module."""
    tmp = tmp_path_factory.mktemp("cli-store")
    fleet = Fleet(4, seed=2, regions=R2)
    assert any(a.startswith("0") for a in fleet.account_ids)
    config = tmp / "accounts.toml"
    config.write_text(
        f'role_name = "R"\nregions = {list(R2)!r}\n'
        + "".join(
            f'[[accounts]]\nid = "{a}"\nname = "acct-{i}"\n'
            for i, a in enumerate(fleet.account_ids)
        )
    )
    db = tmp / "inv.duckdb"
    with Simulator(fleet, Faults()) as sim, pytest.MonkeyPatch.context() as mp:
        use_simulator_env(mp, sim)
        mp.setenv("INVENTORY_FINGERPRINT_KEY", "cli-test-fingerprint-key-0123456789abcdef")
        summary = asyncio.run(run_collect(load_plan(config), db, None))
    assert summary.status == "complete"
    yield db, summary.run_id, fleet


def truth_services(fleet: Fleet) -> list[tuple[str, str, dict[str, Any]]]:
    return [(a, r, s) for a in fleet.account_ids for r in R2 for s in fleet.services(a, r)]


def test_named_query_as_json(store: tuple[Path, str, Fleet]) -> None:
    db, _, fleet = store
    result = invoke("query", "services_by_state", "--db", str(db), "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    want = collections.Counter((a, r, s["state"]) for a, r, s in truth_services(fleet))
    assert {(x["account_id"], x["region"], x["state"]): x["services"] for x in rows} == want


def test_sql_as_csv_keeps_ids_and_empty_values(store: tuple[Path, str, Fleet]) -> None:
    db, run_id, fleet = store
    sql = (
        "select run_id, account_id, region, service_name, scale, state_detail_code "
        "from container_services order by all"
    )
    result = invoke("query", sql, "--db", str(db), "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    want = sorted(
        (
            run_id,
            a,
            r,
            s["containerServiceName"],
            str(s["scale"]),
            (s.get("stateDetail") or {}).get("code", ""),
        )
        for a, r, s in truth_services(fleet)
    )
    assert sorted(tuple(row.values()) for row in rows) == want
    # ids are strings: leading zeros kept
    result = invoke("query", "select distinct account_id from scans", "--db", str(db), "-f", "csv")
    assert result.exit_code == 0, result.output
    ids = [row["account_id"] for row in csv.DictReader(io.StringIO(result.stdout))]
    assert sorted(ids) == sorted(fleet.account_ids) and any(i.startswith("0") for i in ids)


def test_sql_as_json_with_maps_lists_and_timestamps(store: tuple[Path, str, Fleet]) -> None:
    db, _, fleet = store
    sql = (
        "select account_id, region, service_name, created_at, tags, public_domain_names "
        "from latest_container_services"
    )
    result = invoke("query", sql, "--db", str(db), "-f", "json")
    assert result.exit_code == 0, result.output
    got = {(x["account_id"], x["region"], x["service_name"]): x for x in json.loads(result.stdout)}
    truth = truth_services(fleet)
    assert len(got) == len(truth)
    for a, r, s in truth:
        row = got[(a, r, s["containerServiceName"])]
        created = dt.datetime.fromisoformat(row["created_at"])
        assert created.utcoffset() == dt.timedelta(0)
        assert abs(created.timestamp() - s["createdAt"]) < 1e-3
        tags = s.get("tags")
        assert row["tags"] == (None if tags is None else {t["key"]: t.get("value") for t in tags})
        assert row["public_domain_names"] == s.get("publicDomainNames")


def test_table_output_shows_values_literally(store: tuple[Path, str, Fleet]) -> None:
    db, _, _ = store
    result = invoke("query", "select '[/]' as a, '[bold]b[/bold]' as b", "--db", str(db))
    assert result.exit_code == 0, result.output
    assert "[/]" in result.stdout and "[bold]b[/bold]" in result.stdout


def test_bad_sql_and_unknown_query_name(store: tuple[Path, str, Fleet]) -> None:
    db, _, _ = store
    result = invoke("query", "selec 1 from runs", "--db", str(db))
    assert result.exit_code in (1, 2)
    assert "selec" in result.stderr and "syntax error" in result.stderr.lower()
    result = invoke("query", "no_such_query", "--db", str(db))
    assert result.exit_code == 2
    assert "'no_such_query'" in error_line(result)


def test_runs(store: tuple[Path, str, Fleet], monkeypatch: pytest.MonkeyPatch) -> None:
    db, run_id, fleet = store
    result = invoke("runs", "--db", str(db), "--format", "json")
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.stdout)
    assert run["run_id"] == run_id and run["status"] == "complete"
    assert run["targets"] == len(fleet.account_ids) * len(R2) == run["targets_ok"]
    assert run["services"] == len(truth_services(fleet))
    monkeypatch.setenv("COLUMNS", "250")
    result = invoke("runs", "--db", str(db))
    assert result.exit_code == 0 and run_id in result.stdout and "complete" in result.stdout


def test_export_writes_the_layout_and_replaces_on_reexport(
    store: tuple[Path, str, Fleet], tmp_path: Path
) -> None:
    db, run_id, _ = store
    dest = tmp_path / "lake"
    with duckdb.connect(str(db), read_only=True) as con:
        started = con.execute("select started_at from runs where run_id = ?", [run_id]).fetchone()
        counts = {
            t: con.execute(f"select count(*) from {t} where run_id = ?", [run_id]).fetchone()
            for t in SIX
        }
    assert started is not None
    day = started[0].astimezone(dt.UTC).date().isoformat()
    for _ in range(2):
        result = invoke("export", "--run", run_id, "--to", str(dest), "--db", str(db))
        assert result.exit_code == 0, result.output
        files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
        assert files == sorted(f"{t}/run_date={day}/{run_id}.parquet" for t in SIX)
        for t in SIX:
            table = pq.read_table(dest / t / f"run_date={day}" / f"{run_id}.parquet")
            assert (table.num_rows,) == counts[t], t
    result = invoke(
        "export", "--run", "20990101T000000Z-000000", "--to", str(dest), "--db", str(db)
    )
    assert result.exit_code == 2  # a usage error, naming the flag and the value
    assert "--run '20990101T000000Z-000000'" in error_line(result)


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "inv.duckdb"
    for args in (("query", "select 1"), ("runs",), ("export", "--run", "x", "--to", str(tmp_path))):
        result = invoke(*args, "--db", str(missing))
        assert result.exit_code == 2, (args, result.output)  # a bad --db: a usage error
        line = error_line(result)
        assert str(missing) in line and "inventory collect" in line
    assert not missing.parent.exists()  # a reader creates nothing


# --------------------------------------------------------------------------- help
def command_names() -> list[str]:
    commands = getattr(typer.main.get_command(app), "commands", {})
    return sorted(commands)


def test_help_of_every_command_has_an_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    names = command_names()
    assert {"collect", "query", "runs", "export", "demo"} <= set(names)
    for args in ([], *([n] for n in names)):
        result = invoke(*args, "--help")
        assert result.exit_code == 0, (args, result.output)
        assert "Example" in result.stdout, (args, result.stdout)


def test_python_dash_m_inventory() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "inventory", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "collect" in proc.stdout and "Example" in proc.stdout


def test_conflicting_or_unknown_collect_flags_are_usage_errors(tmp_path: Path) -> None:
    db = str(tmp_path / "inv.duckdb")
    result = invoke("collect", "--db", db, "--parquet-dir", "lake", "--no-parquet")
    assert result.exit_code == 2
    assert "--parquet-dir 'lake' and --no-parquet" in error_line(result)
    result = invoke("collect", "--db", db, "--engine", "fast")
    assert result.exit_code == 2
    assert "fast" in result.output and "lean" in result.output  # the choices are named
    assert not (tmp_path / "inv.duckdb").exists()  # nothing was started
