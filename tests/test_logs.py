"""`--log-format json|text`: structured lines on stderr, with no secret in them."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from inventory import logs
from inventory.aws.pacing import Pacer
from inventory.cli import app
from inventory.errors import UsageError
from inventory.simulator import BASE_SECRET_KEY, Faults, Fleet, Simulator

MakeSimulator = Callable[..., Simulator]
R3 = ("us-east-1", "eu-west-2", "ap-northeast-1")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line must be one JSON object."""
    out = []
    for line in text.splitlines():
        if line.strip():
            obj = json.loads(line)
            assert isinstance(obj, dict), line
            out.append(obj)
    return out


def write_accounts(path: Path, ids: list[str], external_id: str | None = None) -> Path:
    lines = ['role_name = "LightsailInventoryReader"']
    if external_id:
        lines.append(f'external_id = "{external_id}"')
    for a in ids:
        lines += ["[[accounts]]", f'id = "{a}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with logs.configured("json"):
        logs.event(logging.getLogger("inventory.x"), logging.INFO, "thing", "hello", n=1, r=None)
        logging.getLogger("inventory.x").debug("not shown at INFO")
    logging.getLogger("inventory.x").warning("not shown once the block is over")
    (line,) = json_lines(capsys.readouterr().err)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("ts"))
    assert line == {
        "level": "info",
        "logger": "inventory.x",
        "event": "thing",
        "message": "hello",
        "n": 1,
        "r": None,
    }
    with logs.configured("text"):
        logging.getLogger("inventory.y").warning("plain %s", "words")
    err = capsys.readouterr().err
    assert re.fullmatch(r"\S+Z WARNING plain words\n", err), err
    with pytest.raises(UsageError, match="--log-format 'xml'"):
        logs.check_format("xml")


def test_storm_watch_logs_rate_decreases(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inventory")
    pacer = Pacer(100.0)
    watch = logs.StormWatch(pacer, "run-1")
    watch.check()
    assert caplog.records == []
    pacer.on_throttle()
    watch.check()
    watch.check()  # no new decrease: nothing new
    (storm,) = caplog.records
    assert storm.event == "retry_storm"  # type: ignore[attr-defined]
    assert storm.fields["rate"] == 50.0 and storm.fields["previous_rate"] == 100.0  # type: ignore[attr-defined]
    while pacer.rate < pacer.max_rate:
        pacer.on_success()
    watch.check()
    assert [r.event for r in caplog.records] == ["retry_storm", "retry_storm_over"]  # type: ignore[attr-defined]


def test_collect_json_logs_have_no_secrets(
    tmp_path: Path, make_simulator: MakeSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with a denied account, a denied region and throttling, logged as JSON: run
    start, each failure, the retry storm and run end, all parseable, none with a secret
    (even with --include-env-values, which stores values in the database)."""
    fleet = Fleet(6, seed=1, regions=R3)
    accounts = list(fleet.account_ids)
    denied_account, denied_region = accounts[2], R3[1]
    sim = make_simulator(
        fleet=fleet,
        faults=Faults(
            denied_accounts={denied_account},
            denied_regions={("*", denied_region)},
            throttle_rate=0.3,
            external_id="ext-secretish",
            seed=3,
        ),
    )
    config = write_accounts(tmp_path / "a.toml", accounts, external_id="ext-secretish")
    db = tmp_path / "j.duckdb"
    monkeypatch.setenv("INVENTORY_FINGERPRINT_KEY", "fingerprint-key-secret-0123456789abcdef")

    result = CliRunner().invoke(
        app,
        ["collect", "-c", str(config), "--regions", ",".join(R3), "--db", str(db),
         "--no-parquet", "--log-format", "json", "--include-env-values"],
    )  # fmt: skip

    assert result.exit_code == 3, result.output
    lines = json_lines(result.stderr)
    events = [line["event"] for line in lines]
    assert events[0] == "run_start" and events[-1] == "run_end"
    start, end = lines[0], lines[-1]
    con = duckdb.connect(str(db), read_only=True)
    run = dict(
        zip(
            ["run_id", "accounts", "targets", "targets_ok", "targets_failed", "api_calls",
             "retries", "services", "status"],
            con.execute(
                "select run_id, accounts, targets, targets_ok, targets_failed, api_calls, "
                "retries, services, status from runs"
            ).fetchone() or (),
            strict=True,
        )
    )  # fmt: skip
    errors = con.execute(
        "select account_id, region, operation, error_code, attempts from errors"
    ).fetchall()
    con.close()
    assert start["run_id"] == run["run_id"] and start["accounts"] == 6
    assert start["targets"] == 18 and start["regions"] == list(R3)
    for key, value in run.items():
        assert end[key] == value, key
    assert end["exit_code"] == 3 and run["retries"] > 0

    failed = [
        (e["account_id"], e["region"], e["operation"], e["error_code"], e["attempts"])
        for e in lines
        if e["event"] == "target_failed"
    ]
    assert sorted(failed, key=str) == sorted(errors, key=str)  # one line per errors row
    assert (denied_account, None, "AssumeRole", "AccessDenied", 1) in failed
    assert sum(1 for f in failed if f[1] == denied_region) == 5
    assert "retry_storm" in events
    storm = next(e for e in lines if e["event"] == "retry_storm")
    assert storm["rate"] < storm["previous_rate"] and storm["run_id"] == run["run_id"]

    secrets = {BASE_SECRET_KEY, "fingerprint-key-secret-0123456789abcdef"}
    secrets |= fleet.secrets()
    for cred in sim.issued_credentials():
        secrets |= {cred.secret_access_key, cred.session_token}
    assert len(secrets) > 20
    for text in (result.stderr, result.stdout):
        leaked = [s for s in secrets if s in text]
        assert leaked == []


def test_fatal_error_is_a_json_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('role_name = "R"\n[[accounts]]\nid = "12"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["collect", "-c", str(bad), "--log-format", "json"])
    assert result.exit_code == 2
    (line,) = json_lines(result.stderr)
    assert line["event"] == "fatal" and line["exit_code"] == 2
    assert "accounts[0].id = '12'" in line["message"]


def test_no_progress_bar_with_json_even_on_a_terminal(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    """stderr is a terminal (a pty): with --log-format json, still nothing but JSON lines."""
    fleet = Fleet(2, seed=1, regions=R3[:1])
    sim = make_simulator(fleet=fleet, set_env=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(sim.env())
    config = write_accounts(tmp_path / "a.toml", list(fleet.account_ids))
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "inventory", "collect", "-c", str(config), "--db",
             str(tmp_path / "t.duckdb"), "--no-parquet", "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=slave, env=env, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(slave)
        reader.join(10)
        os.close(master)
    err = b"".join(chunks).decode()
    assert proc.returncode == 0, err
    lines = json_lines(err.replace("\r", ""))
    # the accounts file sets no external_id: one warning says so
    assert [e["event"] for e in lines] == ["run_start", "no_external_id", "run_end"]
    assert "\x1b" not in err  # no terminal control codes: no progress bar
