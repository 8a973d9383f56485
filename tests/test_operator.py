"""Operator-proof, through the `inventory` CLI as a user runs it,
against the simulator, real DuckDB files and a real Parquet lake (local, and S3 on moto):

1. a damaged store is refused before any call, left byte for byte as it was, and every read
   command ends in one line; `inventory rebuild` makes a store from the lake that answers
   every named query as the original did;
4. what can be checked is checked before the first call (the Parquet destination, the run
   id); an export that fails after collecting keeps the run, prints the summary, logs
   run_end, records the failure in `errors` and exits 3;
5. a lost fingerprint key is not silently replaced, and diff does not report every
   environment value as changed between runs whose key or env mode differ;
6. `report` of a failed or killed run says so, and why.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import WriteAccounts
from helpers import rows
from typer.testing import CliRunner

from inventory.cli import app
from inventory.simulator import Faults, Fleet, Simulator
from inventory.storage import lake
from inventory.storage.fingerprint import key_path

MakeSimulator = Callable[..., Simulator]
REGIONS = ("us-east-1", "eu-west-2")


def invoke(*args: str) -> Any:
    """`inventory ARGS` in this process; a crash (a traceback) fails the test."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result


def error_line(result: Any) -> str:
    """The one-line error on stderr."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.delenv("INVENTORY_FINGERPRINT_KEY", raising=False)


class Night:
    """A simulator fleet, an accounts file, a store and a local lake under tmp."""

    def __init__(self, sim: Simulator, fleet: Fleet, tmp: Path, write_accounts: WriteAccounts):
        self.sim, self.fleet, self.tmp = sim, fleet, tmp
        self.config = write_accounts(tmp / "accounts.toml", list(fleet.account_ids))
        self.db = tmp / "inv.duckdb"
        self.lake = tmp / "lake"

    def collect(self, *extra: str, db: Path | None = None) -> Any:
        return invoke(
            "collect",
            "--config",
            str(self.config),
            "--regions",
            ",".join(REGIONS),
            "--db",
            str(db or self.db),
            "--parquet-dir",
            str(self.lake),
            *extra,
        )


@pytest.fixture
def night(tmp_path: Path, make_simulator: MakeSimulator, write_accounts: WriteAccounts) -> Night:
    fleet = Fleet(4, seed=21, regions=REGIONS)
    return Night(make_simulator(fleet=fleet), fleet, tmp_path, write_accounts)


def two_nights(night: Night, make_simulator: MakeSimulator) -> None:
    """A night, then the fleet a day later (known changes) with one region denied: partial."""
    assert night.collect().exit_code == 0
    later = night.fleet.evolve(seed=5)
    denied = {(night.fleet.account_ids[0], "eu-west-2")}
    night.sim = make_simulator(fleet=later, faults=Faults(denied_regions=denied))
    assert night.collect().exit_code == 3


# --------------------------------------------------------------------------- 1. damage


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


# A DuckDB file: a 12 KiB header, then 256 KiB blocks, each checksummed over the bytes it
# uses (damage in a block's unused tail is harmless and goes unnoticed, rightly).
HEADER, BLOCK = 3 * 4096, 256 * 1024


def overwrite_middle(data: bytes) -> bytes:
    """8 KiB of junk at the start of the middle block: where its data is."""
    at = HEADER + (len(data) - HEADER) // BLOCK // 2 * BLOCK
    return data[:at] + bytes(range(256)) * 32 + data[at + 8192 :]


@pytest.mark.parametrize("damage", [truncate, overwrite_middle], ids=["truncated", "overwritten"])
def test_a_damaged_store_is_refused_before_any_call_and_left_as_it_is(
    night: Night, damage: Callable[[bytes], bytes]
) -> None:
    assert night.collect().exit_code == 0
    night.db.write_bytes(damage(night.db.read_bytes()))
    before = night.db.read_bytes()
    requests = night.sim.total_requests

    result = night.collect()
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert str(night.db) in line and "damaged" in line and "inventory rebuild" in line
    assert night.sim.total_requests == requests  # refused before the first call
    assert night.db.read_bytes() == before  # byte for byte
    assert not Path(str(night.db) + ".wal").exists()

    # every read command: its answer, or one line (exit 2 when it meets the damage)
    for args in (
        ("runs",),
        ("query", "select count(*) from containers"),
        ("query", "monthly_cost"),
        ("diff",),
        ("report", "--html", str(night.tmp / "r.html")),
        ("prune", "--keep-runs", "1"),
    ):
        got = invoke(*args, "--db", str(night.db))
        if got.exit_code != 0:
            assert got.exit_code == 2, (args, got.output)
            assert "damaged" in error_line(got), args
    assert night.db.read_bytes() == before
    if damage is truncate:  # nothing of a half file can be read
        for args in (("runs",), ("diff",), ("query", "select * from containers")):
            got = invoke(*args, "--db", str(night.db))
            assert got.exit_code == 2 and "damaged" in error_line(got), args


def named_queries() -> list[str]:
    listed = invoke("query", "--list", "--format", "json")
    return [q["name"] for q in json.loads(listed.stdout)]


def answers(db: Path) -> dict[str, str]:
    """What the store answers: every named query, runs, diff, the views (as CSV / JSON)."""
    out = {}
    account = rows(db, "select min(account_id) as a from scans")[0]["a"]
    for name in named_queries():
        params = ["--param", f"account={account}"] if name == "services_in_account" else []
        got = invoke("query", name, "--db", str(db), "--format", "csv", *params)
        assert got.exit_code == 0, (name, got.output)
        out[name] = got.stdout
    for args in (("runs", "--format", "json"), ("diff", "--format", "json")):
        got = invoke(*args, "--db", str(db))
        assert got.exit_code == 0, got.output
        out[args[0]] = got.stdout
    for view in ("latest_container_services", "latest_deployments", "latest_containers"):
        got = invoke("query", f"select * from {view} order by all", "--db", str(db), "-f", "csv")
        out[view] = got.stdout
    return out


def test_rebuild_from_the_lake_answers_as_the_original(
    night: Night, make_simulator: MakeSimulator
) -> None:
    two_nights(night, make_simulator)
    new = night.tmp / "rebuilt" / "inv.duckdb"
    result = invoke("rebuild", "--from-lake", str(night.lake), "--db", str(new))
    assert result.exit_code == 0, result.output
    assert f"rebuilt {new} from {night.lake}: 2 runs" in result.stdout
    original, rebuilt = answers(night.db), answers(new)
    assert rebuilt == original
    assert json.loads(original["diff"])["changes"]  # the comparison compared something
    for table in ("runs", "scans", "errors", "containers", "container_services"):
        q = f"select * from {table} order by all"
        assert rows(new, q) == rows(night.db, q), table
    assert sorted(p.name for p in new.parent.iterdir()) == ["inv.duckdb"]  # no leftovers

    # never over an existing file; a folder without a lake is a usage error
    again = invoke("rebuild", "--from-lake", str(night.lake), "--db", str(night.db))
    assert again.exit_code == 2 and "already exists" in error_line(again)
    nothing = invoke(
        "rebuild", "--from-lake", str(night.tmp / "none"), "--db", str(night.tmp / "x")
    )
    assert nothing.exit_code == 2 and "--from-lake" in error_line(nothing)
    assert not (night.tmp / "x").exists()


@pytest.fixture
def bucket(night: Night, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on moto (AWS_ENDPOINT_URL_S3), beside the simulator's endpoints."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"lake-{os.getpid()}-{time.monotonic_ns()}"
    client.create_bucket(Bucket=name)
    return name


def test_rebuild_from_an_s3_lake(night: Night, bucket: str) -> None:
    dest = f"s3://{bucket}/nightly"
    assert night.collect("--parquet-dir", dest).exit_code == 0
    new = night.tmp / "from-s3.duckdb"
    result = invoke("rebuild", "--from-lake", dest, "--db", str(new))
    assert result.exit_code == 0, result.output
    assert answers(new) == answers(night.db)


# --------------------------------------------------------------------------- 4. preflight


def test_an_unwritable_parquet_dir_is_refused_before_any_call(night: Night) -> None:
    blocker = night.tmp / "a-file"
    blocker.write_text("not a folder\n")
    result = night.collect("--parquet-dir", str(blocker / "lake"))
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert f"--parquet-dir {blocker / 'lake'}" in line
    assert night.sim.total_requests == 0
    assert rows(night.db, "select count(*) as n from runs") == [{"n": 0}]


def test_a_missing_bucket_is_refused_before_any_call(night: Night, bucket: str) -> None:
    result = night.collect("--parquet-dir", f"s3://{bucket}-missing/x")
    assert result.exit_code == 2, result.output
    assert f"s3://{bucket}-missing/x" in error_line(result) and "NoSuchBucket" in result.stderr
    assert night.sim.total_requests == 0


def test_a_run_id_already_stored_is_a_usage_error(night: Night) -> None:
    run_id = "20261127T053650Z-3f9a1c"
    assert night.collect("--run-id", run_id).exit_code == 0
    before = rows(night.db, "select * from runs")
    requests = night.sim.total_requests
    result = night.collect("--run-id", run_id)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert f"--run-id {run_id}" in line and "already holds that run" in line
    assert "could not be marked failed" not in result.output
    assert night.sim.total_requests == requests
    assert rows(night.db, "select * from runs") == before


def test_an_export_that_fails_after_collecting_keeps_the_run_and_exits_3(
    night: Night, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = lake._write_local
    calls = []

    def disk_full_once(*args: Any, **kwargs: Any) -> int:
        calls.append(args[1])
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(lake, "_write_local", disk_full_once)
    result = night.collect("--log-format", "json")
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)  # the summary, as the run_end object (JSON logs)
    assert summary["status"] == "partial" and summary["targets_ok"] == summary["targets"]
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (end,) = [e for e in events if e["event"] == "run_end"]
    assert end["status"] == "partial" and end["exit_code"] == 3
    (run,) = rows(night.db, "select * from runs")
    assert run["status"] == "partial" and run["targets_failed"] == 0
    assert run["services"] == rows(night.db, "select count(*) as n from container_services")[0]["n"]
    assert run["services"] > 0
    (err,) = rows(night.db, "select * from errors")
    assert err["operation"] == "ExportParquet" and err["error_code"] == "ENOSPC"
    assert f"inventory export --run {run['run_id']}" in err["message"]
    assert run["run_id"] in rows(night.db, "select run_id from latest_scans limit 1")[0]["run_id"]


# --------------------------------------------------------------------------- 5. fingerprints


def env_value_changes(db: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    got = invoke("diff", "--db", str(db), "--format", "json")
    assert got.exit_code == 0, got.output
    data = json.loads(got.stdout)
    return [c for c in data["changes"] if c["kind"] == "env_value"], data


def test_a_lost_fingerprint_key_is_not_replaced_silently(night: Night) -> None:
    assert night.collect().exit_code == 0
    key_file = key_path(night.db)
    (run,) = rows(night.db, "select fingerprint_key_id, env_values from runs")
    kid = hmac.new(key_file.read_bytes(), b"key-id", hashlib.sha256).hexdigest()[:16]
    assert run == {"fingerprint_key_id": kid, "env_values": False}

    key_file.rename(night.tmp / "kept-key")  # the store moved without its key
    requests = night.sim.total_requests
    result = night.collect()
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert str(key_file) in line and run["fingerprint_key_id"] in line
    assert "--new-fingerprint-key" in line and "INVENTORY_FINGERPRINT_KEY" in line
    assert not key_file.exists() and night.sim.total_requests == requests

    # another key in the environment is refused too; the old one back is fine
    os.environ["INVENTORY_FINGERPRINT_KEY"] = "some-other-fingerprint-key-0123456789abcdef"
    try:
        other = night.collect()
    finally:
        del os.environ["INVENTORY_FINGERPRINT_KEY"]
    assert other.exit_code == 2 and "INVENTORY_FINGERPRINT_KEY" in error_line(other)

    # accepted explicitly: a new key, and diff does not report every value as changed
    result = night.collect("--new-fingerprint-key")
    assert result.exit_code == 0, result.output
    changes, data = env_value_changes(night.db)
    assert changes == []
    (note,) = data["env_values_not_compared"]
    assert "different keys" in note["reason"]
    table = invoke("diff", "--db", str(night.db))
    text = " ".join(table.stdout.split())
    assert text.count("environment values not compared") == 1

    # the same key again: values compare (the fleet did not change: nothing changed)
    assert night.collect().exit_code == 0
    changes, data = env_value_changes(night.db)
    assert changes == [] and data["env_values_not_compared"] == []


def test_switching_include_env_values_is_not_a_change_of_every_value(night: Night) -> None:
    assert night.collect().exit_code == 0
    assert night.collect("--include-env-values").exit_code == 0
    runs = rows(night.db, "select fingerprint_key_id, env_values from runs order by started_at")
    assert [r["env_values"] for r in runs] == [False, True]
    assert runs[1]["fingerprint_key_id"] is None
    changes, data = env_value_changes(night.db)
    assert changes == []
    (note,) = data["env_values_not_compared"]
    assert "values" in note["reason"]
    csv_out = invoke("diff", "--db", str(night.db), "--format", "csv")
    assert "environment values not compared" in csv_out.stderr


# --------------------------------------------------------------------------- 6. report


def page_of(db: Path, run_id: str, out: Path) -> str:
    result = invoke("report", "--html", str(out), "--db", str(db), "--run", run_id)
    assert result.exit_code == 0, result.output
    return " ".join(out.read_text().split())


def test_report_of_a_failed_run_says_it_failed_and_why(
    tmp_path: Path, make_simulator: MakeSimulator, write_accounts: WriteAccounts
) -> None:
    fleet = Fleet(2, seed=4, regions=REGIONS)
    night = Night(
        make_simulator(fleet=fleet, faults=Faults(denied_accounts=set(fleet.account_ids))),
        fleet,
        tmp_path,
        write_accounts,
    )
    assert night.collect().exit_code == 1
    (run,) = rows(night.db, "select run_id, status from runs")
    page = page_of(night.db, run["run_id"], tmp_path / "failed.html")
    assert 'data-status="failed"' in page
    assert "Failed: every account × region failed" in page
    assert "every account and region answered" not in page
    assert "AccessDenied" in page


def test_report_of_a_killed_run_says_it_did_not_finish(
    tmp_path: Path, make_simulator: MakeSimulator, write_accounts: WriteAccounts
) -> None:
    fleet = Fleet(2, seed=4, regions=REGIONS)
    hung = Faults(hang_regions={("*", r) for r in REGIONS})
    night = Night(make_simulator(fleet=fleet, faults=hung), fleet, tmp_path, write_accounts)
    cmd = [sys.executable, "-m", "inventory", "collect", "--config", str(night.config)]
    cmd += ["--regions", ",".join(REGIONS), "--db", str(night.db), "--no-parquet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while night.sim.total_requests < 3:  # the role, then calls that hang: it has begun
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    (run,) = rows(night.db, "select run_id, status from runs")
    assert run["status"] == "running"
    page = page_of(night.db, run["run_id"], tmp_path / "killed.html")
    assert "Not finished" in page and "no scans" in page
    assert "every account and region answered" not in page

    # the next collect marks it failed; its report says what happened
    night.sim.faults.hang_regions.clear()
    assert night.collect().exit_code == 0
    status = rows(night.db, f"select status from runs where run_id = '{run['run_id']}'")
    assert status == [{"status": "failed"}]
    page = page_of(night.db, run["run_id"], tmp_path / "failed.html")
    assert 'data-status="failed"' in page
    assert "the process ended (killed, or the machine stopped) after 0 of 4" in page
    assert "no scans" in page and "every account and region answered" not in page


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("status", "scans", "interrupted", "run_errors", "errors", "says"),
    [
        ("complete", 8, 0, [], 0, "Complete: every account × region answered."),
        ("partial", 8, 0, [], 1, "Partial: 1 of 8 account × region failed."),
        ("partial", 8, 3, [], 3, "Partial: interrupted (Ctrl-C or SIGTERM); 3 account"),
        ("partial", 8, 0, [("ExportParquet", "ENOSPC", "disk full")], 1, "but ExportParquet"),
        ("failed", 8, 0, [], 8, "Failed: every account × region failed"),
        ("failed", 0, 0, [("ListAccounts", "AccessDenied", "no")], 1, "stopped by an error"),
        ("failed", 3, 0, [], 0, "the process ended (killed, or the machine stopped) after 3"),
        ("running", 0, 0, [], 0, "Not finished"),
    ],
)
def test_why_it_ended(
    status: str,
    scans: int,
    interrupted: int,
    run_errors: list[tuple[str, str, str]],
    errors: int,
    says: str,
) -> None:
    from inventory.answers.report import why_it_ended

    failed = {"partial": 1 if not interrupted else 3, "failed": 8}.get(status, 0)
    if run_errors and status == "partial":
        failed = 0
    run = {"status": status, "targets": 8, "targets_failed": failed}
    text = why_it_ended(run, scans, interrupted, run_errors, errors)
    assert says in text
    assert ("no scans" in text) == (scans == 0)
    assert ("recorded no errors" in text) == (errors == 0 and status != "complete")


def test_env_values_compare_only_with_the_same_key_and_mode() -> None:
    from inventory.answers.diff import _env_incomparable

    fp_a, fp_b, values, old = ("a", False), ("b", False), (None, True), (None, None)
    assert _env_incomparable(fp_a, fp_a) is None
    assert _env_incomparable(values, values) is None
    assert _env_incomparable(old, fp_a) is None  # a run from before schema 3: as before
    assert _env_incomparable(None, fp_a) is None
    assert "different keys" in (_env_incomparable(fp_a, fp_b) or "")
    assert "values" in (_env_incomparable(fp_a, values) or "")
    assert "fingerprints" in (_env_incomparable(values, fp_a) or "")
