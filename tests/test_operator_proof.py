"""Operator-proof: every flag has bounds and every bad input a one-line error (exit 2), a
night always ends (--run-deadline), ad-hoc SQL reads the store and nothing else, failures
and logs read well off a terminal. Each test drives the `inventory` command as a user does,
against the bundled simulator, and reads back the DuckDB file it wrote."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import use_simulator_env
from helpers import rows
from typer.testing import CliRunner

from inventory import logs
from inventory.aws.pacing import Pacer
from inventory.cli import app
from inventory.simulator import UNSET_ENV, Faults, Fleet, Simulator

WriteAccounts = Callable[..., Path]
MakeSimulator = Callable[..., Simulator]
R2 = ("us-east-1", "ap-southeast-2")
EXTERNAL_ID = "operator-proof-external-id"  # set: no no_external_id warning in the logs


def invoke(*args: str) -> Any:
    """`inventory ARGS` in this process; a crash (a traceback) is a failure."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def error_line(result: Any) -> str:
    """The one-line error on stderr (nothing on stdout)."""
    assert result.stdout == "", result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(autouse=True)
def narrow_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Fleet]]:
    """One `inventory collect` (4 accounts × 2 regions) into a store and a lake."""
    tmp = tmp_path_factory.mktemp("operator")
    fleet = Fleet(4, seed=3, regions=R2)
    config = tmp / "accounts.toml"
    config.write_text(
        f'role_name = "R"\nexternal_id = "{EXTERNAL_ID}"\nregions = {list(R2)!r}\n'
        + "".join(f'[[accounts]]\nid = "{a}"\n' for a in fleet.account_ids)
    )
    db, lake = tmp / "inv.duckdb", tmp / "lake"
    with Simulator(fleet, Faults()) as sim, pytest.MonkeyPatch.context() as mp:
        use_simulator_env(mp, sim)
        mp.setenv("INVENTORY_FINGERPRINT_KEY", "operator-proof-fingerprint-key-0123456789abcdef")
        result = invoke(
            "collect", "--config", str(config), "--db", str(db), "--parquet-dir", str(lake)
        )
    assert result.exit_code == 0, result.output
    yield db, lake, fleet


# --------------------------------------------------------------------------- bounds
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--timeout", "1e9"),
        ("--max-attempts", "1000000"),
        ("--rate", "1e12"),
        ("--target-deadline", "1e9"),
        ("--run-deadline", "1e12"),
        ("--run-deadline", "0"),
    ],
)
def test_collect_flags_have_upper_bounds(tmp_path: Path, flag: str, value: str) -> None:
    db = tmp_path / "inv.duckdb"
    result = invoke("collect", flag, value, "--db", str(db))
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert flag in line and "must be" in line
    assert not db.exists()  # refused before anything started


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line must be one JSON object."""
    out = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(o, dict) for o in out), text
    return out


def test_run_deadline_ends_a_night_with_a_hung_region(
    tmp_path: Path, make_simulator: MakeSimulator, write_accounts: WriteAccounts
) -> None:
    """us-east-1 accepts every call and never answers; with a long --timeout only the run
    deadline can end the night: its targets fail 'RunDeadline', the rest is kept, exit 3.
    The stopped targets are logged as one line per (region, error), and with --log-format
    json stdout is one JSON object too: the run_end event."""
    sim = make_simulator(
        3, regions=R2, faults=Faults(hang_regions={("*", "us-east-1")}, hang_max_s=120)
    )
    config = write_accounts(
        tmp_path / "a.toml", sim.fleet.account_ids, regions=list(R2), external_id=EXTERNAL_ID
    )
    db = tmp_path / "inv.duckdb"
    result = invoke(
        "collect", "--config", str(config), "--db", str(db), "--no-parquet",
        "--timeout", "300", "--run-deadline", "2", "--log-format", "json",
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    [run] = rows(db, "select * from runs")
    assert run["status"] == "partial"
    scans = rows(db, "select region, status, error_code from scans order by all")
    assert {(s["region"], s["status"], s["error_code"]) for s in scans} == {
        ("ap-southeast-2", "ok", None),
        ("us-east-1", "failed", "RunDeadline"),
    }
    errors = rows(db, "select account_id, region, error_code, message from errors")
    assert len(errors) == 3
    assert all(
        e["error_code"] == "RunDeadline" and "2s run deadline" in e["message"] for e in errors
    )
    got = rows(db, "select count(*) as n from latest_container_services")[0]["n"]
    assert got == sum(len(sim.fleet.services(a, "ap-southeast-2")) for a in sim.fleet.account_ids)

    logged = json_lines(result.stderr)
    assert [e["event"] for e in logged] == ["run_start", "targets_stopped", "run_end"]
    stopped = logged[1]
    assert (stopped["region"], stopped["error_code"], stopped["count"]) == (
        "us-east-1",
        "RunDeadline",
        3,
    )
    assert set(stopped["accounts"]) == {e["account_id"] for e in errors}
    [summary] = json_lines(result.stdout)
    end = logged[-1]
    assert summary.keys() == end.keys()
    assert {k: v for k, v in summary.items() if k != "ts"} == {
        k: v for k, v in end.items() if k != "ts"
    }
    assert summary["run_id"] == run["run_id"] and summary["exit_code"] == 3
    assert summary["failures"] == [
        {
            "region": "us-east-1",
            "operation": "GetContainerServices",
            "error_code": "RunDeadline",
            "count": 3,
            "accounts": summary["failures"][0]["accounts"],
            "message": errors[0]["message"],
        }
    ]


def test_inputs_that_raised_tracebacks_are_usage_errors(
    store: tuple[Path, Path, Fleet], tmp_path: Path
) -> None:
    db, _, _ = store
    cases = [
        (("query", "", "--db", str(db)), ("''", "no SQL statement")),
        (("query", "  ;  ", "--db", str(db)), ("no SQL statement",)),
        (("prune", "--keep-days", "99999999999", "--db", str(db)), ("--keep-days 99999999999",)),
        (("prune", "--keep-days", "999999", "--db", str(db)), ("--keep-days 999999",)),
        (("demo", "--accounts", "-3", "--db", str(tmp_path / "d.duckdb")), ("--accounts -3",)),
        (("report", "--html", "", "--db", str(db)), ("--html ''",)),
    ]
    for args, wanted in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        line = error_line(result)
        assert all(w in line for w in wanted), (args, line)
    assert not (tmp_path / "d.duckdb").exists()


def test_report_to_stdout(
    store: tuple[Path, Path, Fleet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _, _ = store
    monkeypatch.chdir(tmp_path)
    result = invoke("report", "--html", "-", "--db", str(db))
    assert result.exit_code == 0, result.output
    assert result.stdout.lstrip().lower().startswith("<!doctype html")
    assert result.stdout.rstrip().endswith("</html>")
    assert "standard output" in result.stderr and "0 failures" in result.stderr
    assert not (tmp_path / "-").exists()


# --------------------------------------------------------------------------- query
def test_ad_hoc_sql_cannot_write_or_read_files(
    store: tuple[Path, Path, Fleet], tmp_path: Path
) -> None:
    db, lake, _ = store
    secret = tmp_path / "secret.csv"
    secret.write_text("name\nhunter2-not-for-sql\n")
    out = tmp_path / "out.csv"
    for where in (("--db", str(db)), ("--lake", str(lake))):
        for sql in (
            f"copy runs to '{out}'",
            f"select * from read_csv('{secret}')",
            f"attach '{tmp_path / 'other.duckdb'}' as other",
            "set enable_external_access = true",
            f"set allowed_paths = ['{secret}']",
        ):
            result = invoke("query", sql, *where)
            assert result.exit_code == 2, (where, sql, result.output)
            assert "hunter2" not in result.output
        assert not out.exists() and not (tmp_path / "other.duckdb").exists()


def test_named_queries_still_read_their_price_list(store: tuple[Path, Path, Fleet]) -> None:
    db, lake, fleet = store
    services = sum(len(fleet.services(a, r)) for a in fleet.account_ids for r in R2)
    for where in (("--db", str(db)), ("--lake", str(lake))):
        result = invoke("query", "monthly_cost", *where, "--format", "csv")
        assert result.exit_code == 0, result.output
        got = list(csv.DictReader(io.StringIO(result.stdout)))
        assert len(got) == services
        assert all(r["usd_per_node_month"] not in ("", None) for r in got)


def test_several_statements_are_an_error_not_the_last_result(
    store: tuple[Path, Path, Fleet],
) -> None:
    db, _, _ = store
    result = invoke("query", "select 1 as a; select 2 as b", "--db", str(db))
    assert result.exit_code == 2
    assert "2 statements" in error_line(result)


def test_csv_booleans_are_true_and_false_like_json(store: tuple[Path, Path, Fleet]) -> None:
    db, _, _ = store
    sql = "select true as yes, false as no, null::boolean as unknown"
    result = invoke("query", sql, "--db", str(db), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["yes,no,unknown", "true,false,"]
    result = invoke("query", sql, "--db", str(db), "--format", "json")
    assert json.loads(result.stdout) == [{"yes": True, "no": False, "unknown": None}]


# --------------------------------------------------------------------------- failures
def test_failures_off_a_terminal_are_whole_and_grouped(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stdout is not a terminal (CliRunner, like cron): each (region, error) is one line
    with its count, example accounts whole, the region whole and AWS's message whole; the
    groups not shown are counted, and the errors table is named."""
    regions = ("us-east-1", "ap-southeast-2", "eu-west-2")
    fleet = Fleet(8, seed=4, regions=regions)
    denied = fleet.account_ids[5]
    make_simulator(
        fleet=fleet,
        faults=Faults(
            denied_regions={("*", "ap-southeast-2"), ("*", "eu-west-2")},
            denied_accounts={denied},
        ),
    )
    config = write_accounts(tmp_path / "a.toml", fleet.account_ids, regions=list(regions))
    monkeypatch.setattr("inventory.render.FAILURE_GROUPS_SHOWN", 2)
    db = tmp_path / "inv.duckdb"
    result = invoke("collect", "--config", str(config), "--db", str(db), "--no-parquet")
    assert result.exit_code == 3, result.output
    out = result.stdout
    [run] = rows(db, "select run_id, targets_failed from runs")
    assert run["targets_failed"] == 7 + 7 + 3
    assert "failures: 17 targets failed, 3 groups by region and error" in out
    lines = out.splitlines()
    message = "User is not authorized to perform: lightsail:GetContainerServices in"
    for region in ("ap-southeast-2", "eu-west-2"):
        [line] = [x for x in lines if x.startswith(f"  {region}  ")]
        assert "GetContainerServices  AccessDeniedException  7 targets  (" in line
        assert line.endswith(f"{message} {region}")
        examples = line.split("(", 1)[1].split(")", 1)[0]
        ids = examples.split(" and ")[0].split(", ")
        assert len(ids) == 3 and set(ids) <= set(fleet.account_ids) and denied not in ids
        assert examples.endswith(" and 4 more")
    assert "and 1 more group (3 more failed targets), not shown" in out  # the AssumeRole group
    assert f"select * from errors where run_id = '{run['run_id']}'" in out
    assert max(len(x) for x in lines) > 80  # whole, not cut to 80 columns


def test_plurals_in_one_failure_and_one_run(
    store: tuple[Path, Path, Fleet], tmp_path: Path
) -> None:
    db, _, _ = store
    result = invoke("prune", "--keep-runs", "0", "--db", str(db), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1 older run kept" in result.stdout and "1 runs" not in result.stdout
    result = invoke("report", "--html", str(tmp_path / "r.html"), "--db", str(db))
    assert result.exit_code == 0, result.output
    assert "0 failures" in result.stdout and "1 failures" not in result.stdout


# --------------------------------------------------------------------------- logs
def test_routine_throttling_is_info_and_never_from_x_to_x(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pacer halved and recovered between two checks: the line says what happened
    (from 100 down to 50), at INFO; a storm that reaches the floor is one WARNING."""
    caplog.set_level(logging.INFO, logger="inventory")
    pacer = Pacer(100.0, cooldown=0.0)
    watch = logs.StormWatch(pacer, "run-1")
    pacer.on_throttle()
    while pacer.rate < pacer.max_rate:
        pacer.on_success()
    watch.check()
    [storm] = caplog.records
    assert storm.levelno == logging.INFO
    assert storm.getMessage() == "AWS is throttling: rate lowered from 100.0 to 50.0 calls/s"
    caplog.clear()
    while pacer.rate > pacer.floor:  # 50, 25, 12.5, 6.25 (the floor)
        pacer.on_throttle()
        watch.check()
    levels = [r.levelno for r in caplog.records]
    assert levels.count(logging.WARNING) == 1 and levels[-1] == logging.WARNING
    assert "floor" in caplog.records[-1].getMessage()
    pacer.on_throttle()  # at the floor already
    watch.check()
    assert caplog.records[-1].levelno == logging.INFO
    assert caplog.records[-1].getMessage() == (
        "AWS is throttling: rate held at its floor of 6.2 calls/s"
    )
    for r in caplog.records:
        words = r.getMessage().split()
        if "from" in words:
            assert words[words.index("from") + 1] != words[words.index("from") + 3]


def test_quiet_and_log_level(
    tmp_path: Path, make_simulator: MakeSimulator, write_accounts: WriteAccounts
) -> None:
    sim = make_simulator(3, regions=R2, faults=Faults(throttle_rate=0.3, seed=5))
    config = write_accounts(
        tmp_path / "a.toml", sim.fleet.account_ids, regions=list(R2), external_id=EXTERNAL_ID
    )
    db = str(tmp_path / "inv.duckdb")
    base = ("collect", "--config", str(config), "--db", db, "--no-parquet")
    result = invoke(*base, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == ""  # a complete run: nothing to say
    result = invoke(*base, "--log-level", "warning", "--log-format", "json")
    assert result.exit_code == 0, result.output
    assert json_lines(result.stderr) == []  # start, storms and end are INFO
    [summary] = json_lines(result.stdout)
    assert summary["event"] == "run_end" and summary["status"] == "complete"
    result = invoke(*base, "--log-level", "debug")
    assert result.exit_code == 0, result.output
    assert "INFO    run " in result.stderr
    result = invoke(*base, "--quiet", "--log-level", "info")
    assert result.exit_code == 2
    assert "--quiet and --log-level info" in error_line(result)
    assert len(rows(Path(db), "select * from runs")) == 3


# --------------------------------------------------------------------------- README
def test_simulator_prints_an_accounts_file_collect_reads(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    """`python -m inventory.simulator --print-accounts` writes the accounts file of the
    fleet the same flags serve; `inventory collect --config` collects every account."""
    proc = subprocess.run(
        [sys.executable, "-m", "inventory.simulator", "--accounts", "3", "--seed", "8",
         "--print-accounts"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = tmp_path / "accounts.toml"
    config.write_text(proc.stdout)
    fleet = Fleet(3, seed=8)
    sim = make_simulator(fleet=fleet)
    db = tmp_path / "inv.duckdb"
    result = invoke(
        "collect", "--config", str(config), "--db", str(db), "--no-parquet",
        "--regions", "us-east-1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "started: 3 accounts × 1 region = 3 targets" in result.stderr  # plurals right
    got = rows(db, "select account_id from scans where status = 'ok'")
    assert sorted(r["account_id"] for r in got) == sorted(sim.fleet.account_ids)
    names = rows(db, "select distinct account_id, account_name from container_services")
    index = {a: i for i, a in enumerate(sim.fleet.account_ids)}
    assert names and all(r["account_name"] == f"team-{index[r['account_id']]:02d}" for r in names)


def test_ctrl_c_logs_one_line_per_region_and_error(tmp_path: Path) -> None:
    """A real process interrupted mid-collect: the unfinished targets are logged as one
    `stopped:` line per (region, error code), whose counts add up to the failed targets,
    never one line per target."""
    fleet = Fleet(8, seed=31, regions=R2)
    # the first two accounts answer, every call of the other six is held open: interrupted
    # while two calls hang, 4 targets are done and 12 stopped (6 in each region)
    held = {(a, r) for a in fleet.account_ids[2:] for r in R2}
    with Simulator(fleet, Faults(hang_regions=held, seed=31)) as sim:
        config = tmp_path / "a.toml"
        config.write_text(
            f'role_name = "R"\nexternal_id = "{EXTERNAL_ID}"\nregions = {list(R2)!r}\n'.replace(
                "'", '"'
            )
            + "".join(f'[[accounts]]\nid = "{a}"\n' for a in fleet.account_ids)
        )
        env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}
        env.update(
            sim.env(), INVENTORY_FINGERPRINT_KEY="operator-proof-fingerprint-key-0123456789abcdef"
        )
        db = tmp_path / "inv.duckdb"
        proc = subprocess.Popen(
            [sys.executable, "-m", "inventory", "collect", "--config", str(config), "--db",
             str(db), "--no-parquet", "--concurrency", "2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while sim.hanging < 2 or sim.operation_stats("AssumeRole")["calls"] < 8:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the collect never reached the held calls"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    [run] = rows(db, "select targets_failed from runs")
    assert run["targets_failed"] == 12
    assert not [line for line in err.splitlines() if "failed:" in line]
    stopped = [line for line in err.splitlines() if " stopped: " in line]
    regions = [line.split(" in ", 1)[1].split(":", 1)[0] for line in stopped]
    assert sorted(regions) == sorted(R2)  # one line per region
    counts = [int(line.split(" stopped: ", 1)[1].split()[0]) for line in stopped]
    assert counts == [6, 6]
    assert all(": Interrupted (" in line for line in stopped)


def test_demo_says_how_to_run_inventory_again(tmp_path: Path) -> None:
    """After `make demo` (`.venv-runtime/bin/inventory demo`, that venv not on PATH) the hint at the
    end names the command that works: that path, not a bare `inventory`."""
    exe = Path(sys.executable).with_name("inventory")
    env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}
    env["PATH"] = "/usr/bin:/bin"
    proc = subprocess.run(
        [str(exe), "demo", "--accounts", "2", "--latency-ms", "0", "--db",
         str(tmp_path / "d.duckdb"), "--parquet-dir", str(tmp_path / "lake")],
        capture_output=True, text=True, env=env, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"Ask it more: {exe} query --db {tmp_path / 'd.duckdb'} " in proc.stdout
