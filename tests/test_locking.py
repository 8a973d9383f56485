"""One writer at a time.

While a real `inventory collect` process has a run going (it stopped itself just after
beginning its run: the test hook INVENTORY_TEST_PAUSE_AT, inventory/testhook.py): a second
collect on the same database fails at once with a message naming the other process; `runs`
and `query` open the database read-only and work; a collect with `--wait` queues behind the
first (it stops itself where it starts to wait) and then succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import pause_env, stopped_at
from typer.testing import CliRunner

from inventory.cli import app
from inventory.simulator import UNSET_ENV, Faults, Fleet, Simulator
from inventory.storage.store import LockHolder, Store

REGIONS = ("us-east-1", "eu-west-2")


@pytest.fixture
def busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    fleet = Fleet(6, seed=41, regions=REGIONS)
    sim = Simulator(fleet, Faults(seed=41)).start()
    config = tmp_path / "accounts.toml"
    config.write_text(
        'role_name = "InventoryReader"\nregions = ["us-east-1", "eu-west-2"]\n'
        + "".join(f'[[accounts]]\nid = "{a}"\n' for a in fleet.account_ids)
    )
    env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}
    env.update(sim.env())
    env["INVENTORY_FINGERPRINT_KEY"] = "locking-test-fingerprint-key-0123456789ab"
    for name in UNSET_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith(("AWS_", "INVENTORY_")):
            monkeypatch.setenv(name, value)
    db = tmp_path / "inv.duckdb"
    args = ["--config", str(config), "--db", str(db), "--no-parquet", "--workers", "1"]
    procs: list[subprocess.Popen[str]] = []

    def start(*extra: str, pause_at: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-m", "inventory", "collect", *args, *extra],
            env=pause_env(env, pause_at),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        return p

    try:
        yield {"sim": sim, "db": db, "args": args, "start": start}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
        sim.stop()


def test_one_writer_at_a_time_while_readers_keep_working(busy: dict[str, Any]) -> None:
    db: Path = busy["db"]
    first = busy["start"]("--concurrency", "1", pause_at="run-begun")
    stopped_at(first.pid, first.poll)  # its run begun, the writer lock held
    holder = LockHolder.read(db.with_name(db.name + ".lock"))
    assert holder is not None and holder.pid == first.pid
    runner = CliRunner()

    # a second collect on the same database: refused at once, naming the other process
    second = runner.invoke(app, ["collect", *busy["args"]])
    assert second.exit_code == 1, second.output
    text = " ".join(second.output.split())
    assert f"PID {first.pid}" in text
    assert "being written by another collect" in text and "--wait" in text
    assert first.poll() is None  # it answered while the first still held its run

    # readers open the database read-only and work while it is being written
    runs = runner.invoke(app, ["runs", "--db", str(db), "--format", "csv"])
    assert runs.exit_code == 0, runs.output
    assert ",running," in runs.output
    query = runner.invoke(
        app, ["query", "select status, targets from runs", "--db", str(db), "--format", "json"]
    )
    assert query.exit_code == 0, query.output
    assert '"status": "running"' in query.output and '"targets": 12' in query.output

    # a collect with --wait queues behind the first (it stops where it would wait), then runs
    waiting = busy["start"]("--concurrency", "4", "--wait", pause_at="lock-wait")
    stopped_at(waiting.pid, waiting.poll)
    assert busy["sim"].lightsail_calls() == {}  # neither has called Lightsail yet
    first.send_signal(signal.SIGCONT)
    _out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    waiting.send_signal(signal.SIGCONT)
    _out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err

    store = Store.open(db, read_only=True)
    try:
        runs_rows = store.runs()
        _cols, spans = store.query_rows(
            "select run_id, min(started_at), max(finished_at) from scans group by 1 order by 2"
        )
    finally:
        store.close()
    assert [r["status"] for r in runs_rows] == ["complete", "complete"]  # the refused one left none
    (first_run, _, first_end), (second_run, second_start, _) = spans
    assert first_run != second_run
    assert second_start >= first_end  # the waiting collect called nothing until its turn
