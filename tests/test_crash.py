"""Crash safety.

A collect stopped at any point (SIGKILL at random moments, SIGINT / SIGTERM, an exception
while writing) leaves every earlier run intact and readable; the latest_* views never show
an unfinished run; the next collect succeeds and marks the interrupted one 'failed'.
Ctrl-C and SIGTERM end cleanly: what was collected is kept as a 'partial' run, the rest is
recorded as 'Interrupted', and the process exits 130 / 143.

The collects here are real `python -m inventory collect` processes against the simulator
(served from this test process, with latency so that a run lasts a while).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from helpers import rows

from inventory.model import Account, Options, Plan
from inventory.plan.config import load_plan
from inventory.run import builder
from inventory.run.pipeline import run_collect
from inventory.simulator import UNSET_ENV, Faults, Fleet, Simulator
from inventory.storage.store import Store

REGIONS = ("us-east-1", "eu-west-2")
INVENTORY = ("container_services", "deployments", "containers")


def write_accounts(path: Path, fleet: Fleet) -> Path:
    path.write_text(
        f'role_name = "InventoryReader"\nregions = {list(REGIONS)!r}\n'.replace("'", '"')
        + "".join(f'[[accounts]]\nid = "{a}"\n' for a in fleet.account_ids)
    )
    return path


class Collects:
    """`inventory collect` against one simulator and one database: as a real process (to
    be killed or interrupted), or in this process (the runs before and after, quicker)."""

    def __init__(self, sim: Simulator, tmp: Path, fleet: Fleet):
        self.sim = sim
        self.fleet = fleet
        self.db = tmp / "inv.duckdb"
        self.lake = tmp / "lake"
        self.config = write_accounts(tmp / "accounts.toml", fleet)
        self.env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}
        self.env.update(sim.env())
        self.env["INVENTORY_FINGERPRINT_KEY"] = "crash-test-fingerprint-key-0123456789abcd"

    def start(self, *extra: str) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "inventory", "collect", "--config", str(self.config)]
        cmd += ["--db", str(self.db), "--parquet-dir", str(self.lake), "--concurrency", "2"]
        cmd += ["--workers", "1", *extra]
        return subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run_here(self) -> str:
        """A whole collect in this process (same plan, same store); returns its status."""
        plan = load_plan(self.config, options=Options(concurrency=2, workers=1))
        summary = asyncio.run(run_collect(plan, self.db, str(self.lake)))
        return summary.status

    def wait_for_requests(self, n: int, proc: subprocess.Popen[str]) -> None:
        """Until the simulator has seen `n` requests in all (or the process ended)."""
        deadline = time.monotonic() + 30
        while self.sim.total_requests < n and proc.poll() is None:
            assert time.monotonic() < deadline, "the collect never called the simulator"
            time.sleep(0.01)


@pytest.fixture
def collects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Collects]:
    fleet = Fleet(6, seed=31, regions=REGIONS)
    # 200 ms a request, 2 at a time: the 12 targets take over a second (roles are assumed
    # ahead of them, so a target holds one round trip)
    sim = Simulator(fleet, Faults(latency_ms=200, seed=31)).start()
    try:
        c = Collects(sim, tmp_path, fleet)
        for name in UNSET_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in c.env.items():
            if name.startswith(("AWS_", "INVENTORY_")):
                monkeypatch.setenv(name, value)
        yield c
    finally:
        sim.stop()


def snapshot(db: Path) -> dict[str, Any]:
    """Everything a reader can see of the finished runs, to compare before and after."""
    con = duckdb.connect(str(db), read_only=True)
    try:

        def q(sql: str) -> list[tuple[Any, ...]]:
            return con.execute(sql).fetchall()

        return {
            "runs": q("select * from runs where status <> 'running' order by run_id"),
            "counts": {
                t: q(f"select run_id, count(*) from {t} group by 1 order by 1")
                for t in (*INVENTORY, "scans", "errors")
            },
            "latest": {
                t: q(f"select count(*), count(distinct run_id) from latest_{t}") for t in INVENTORY
            },
            "leaks": sum(
                q(
                    f"select count(*) from latest_{t} l join runs r using (run_id) "
                    "where r.status not in ('complete', 'partial')"
                )[0][0]
                for t in INVENTORY
            ),
        }
    finally:
        con.close()


def check_lake_files_are_whole(lake: Path) -> None:
    for f in lake.rglob("*.parquet"):
        pq.read_table(f)  # raises on a half-written file


# --------------------------------------------------------------------------- SIGKILL


def test_sigkill_at_random_moments_never_damages_the_store(collects: Collects) -> None:
    assert collects.run_here() == "complete"
    before = snapshot(collects.db)
    assert len(before["runs"]) == 1

    rng = random.Random(5)
    killed, moments = 0, []
    for i in range(4):
        requests = collects.sim.total_requests
        proc = collects.start()
        if i == 0:  # anywhere from start-up on (imports, opening the store, ...)
            time.sleep(rng.uniform(0.0, 1.5))
        elif i == 3:  # after its last request: its last writes, finish_run, the export
            collects.wait_for_requests(requests + 18, proc)
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # somewhere in the collect and its writes
            collects.wait_for_requests(requests + 1, proc)
            time.sleep(rng.uniform(0.0, 1.2))
        moments.append(collects.sim.total_requests - requests)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        killed += proc.returncode == -signal.SIGKILL

        # every earlier run intact and readable; the views show finished runs only
        after = snapshot(collects.db)
        assert after["runs"][: len(before["runs"])] == before["runs"]
        for t, counts in before["counts"].items():
            assert set(counts) <= set(after["counts"][t]), t
        assert after["leaks"] == 0, "a latest_* view shows an unfinished run"
        check_lake_files_are_whole(collects.lake)
        before = after
    assert killed >= 3, "the collects ended before they could be killed"
    # (the last may have finished before its kill: then it is simply complete)

    # the next collect succeeds and marks every killed run that had begun as failed
    assert collects.run_here() == "complete"
    runs = rows(collects.db, "select run_id, status from runs order by run_id")
    assert runs[0]["status"] == "complete" and runs[-1]["status"] == "complete"
    assert [r["status"] for r in runs].count("failed") >= 2  # a kill in start-up leaves no run
    assert not [r for r in runs if r["status"] == "running"]
    failed = [r["run_id"] for r in runs if r["status"] == "failed"]
    for t in INVENTORY:  # a failed run keeps no inventory rows
        n = rows(
            collects.db, f"select count(*) as n from {t} where run_id in {tuple(failed) or ('',)!r}"
        )
        assert n[0]["n"] == 0
        latest = rows(collects.db, f"select distinct run_id from latest_{t}")
        assert latest == [{"run_id": runs[-1]["run_id"]}]
    print(f"\nSIGKILL after {moments} simulator requests; runs: {[r['status'] for r in runs]}")


# --------------------------------------------------------------------------- SIGINT / SIGTERM


def interrupt(collects: Collects, signum: int) -> dict[str, Any]:
    """Start a collect, send `signum` mid-collect, check the process; the run's row."""
    requests = collects.sim.total_requests
    proc = collects.start()
    # 6 AssumeRole, then a few GetContainerServices answered: mid-collect
    collects.wait_for_requests(requests + 6 + 4, proc)
    assert proc.poll() is None, "the collect ended before the signal"
    proc.send_signal(signum)
    at_signal = collects.sim.total_requests
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err  # 130 for SIGINT, 143 for SIGTERM
    assert "Traceback" not in err
    # no new call started after the signal (the two in flight were already counted)
    assert collects.sim.total_requests <= at_signal + 2
    run = rows(collects.db, "select * from runs order by run_id desc limit 1")[0]
    assert run["api_calls"] == collects.sim.total_requests - requests  # every call counted
    return run


def test_ctrl_c_and_sigterm_keep_what_was_collected_as_a_partial_run(
    collects: Collects,
) -> None:
    assert collects.run_here() == "complete"
    baseline = rows(collects.db, "select run_id from runs")[0]["run_id"]

    for signum in (signal.SIGINT, signal.SIGTERM):
        run = interrupt(collects, signum)
        assert run["status"] == "partial"
        assert run["targets"] == 12 and run["targets_ok"] + run["targets_failed"] == 12
        assert run["targets_ok"] >= 1 and run["targets_failed"] >= 1
        scans = rows(collects.db, f"select * from scans where run_id = '{run['run_id']}'")
        assert len(scans) == 12
        assert {s["error_code"] for s in scans if s["status"] == "failed"} == {"Interrupted"}
        errors = rows(collects.db, f"select * from errors where run_id = '{run['run_id']}'")
        assert len(errors) == run["targets_failed"]
        name = signal.Signals(signum).name
        assert all(f"collect was stopped ({name})" in e["message"] for e in errors)

        # the views: this run's collected targets, the earlier ones' for the interrupted
        ok = {(s["account_id"], s["region"]) for s in scans if s["status"] == "ok"}
        latest = rows(collects.db, "select account_id, region, run_id from latest_scans")
        assert len(latest) == 12
        for r in latest:
            if (r["account_id"], r["region"]) in ok:
                assert r["run_id"] == run["run_id"]
            else:
                assert r["run_id"] < run["run_id"]  # an earlier run's, still there
        assert snapshot(collects.db)["leaks"] == 0
        assert list(collects.lake.rglob(f"{run['run_id']}*.parquet"))  # exported like any run
        assert baseline in {r["run_id"] for r in latest} or signum == signal.SIGTERM

    assert collects.run_here() == "complete"
    statuses = [r["status"] for r in rows(collects.db, "select status from runs order by run_id")]
    assert statuses == ["complete", "partial", "partial", "complete"]


def test_ctrl_c_with_workers_keeps_a_partial_run(collects: Collects) -> None:
    """The parent forwards the interrupt to its worker processes; they stop like one."""
    assert collects.run_here() == "complete"
    requests = collects.sim.total_requests
    proc = collects.start("--workers", "2")  # the last --workers wins
    collects.wait_for_requests(requests + 6 + 4, proc)
    assert proc.poll() is None, "the collect ended before the signal"
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run = rows(collects.db, "select * from runs order by started_at desc limit 1")[0]
    assert run["status"] == "partial"
    assert run["targets_ok"] >= 1 and run["targets_failed"] >= 1
    scans = rows(collects.db, f"select * from scans where run_id = '{run['run_id']}'")
    assert len(scans) == 12  # every target accounted for, from both workers
    assert {s["error_code"] for s in scans if s["status"] == "failed"} == {"Interrupted"}
    assert collects.run_here() == "complete"  # and nothing was left 'running'
    statuses = [r["status"] for r in rows(collects.db, "select status from runs")]
    assert "running" not in statuses and "failed" not in statuses


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except FileNotFoundError:  # that thread ended meanwhile
            continue
        out += [int(c) for c in text]
    return out


def test_ctrl_c_while_workers_start_is_still_clean(collects: Collects) -> None:
    """Signals sent while the workers are still importing do not kill them outright."""
    proc = collects.start("--workers", "2")
    deadline = time.monotonic() + 30
    while len(_children(proc.pid)) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no worker processes appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)  # the workers exist, and have not called anyone yet
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "WorkerFailed" not in err
    run = rows(collects.db, "select * from runs order by started_at desc limit 1")[0]
    assert run["status"] in ("failed", "partial")  # 'failed' when no target had finished
    scans = rows(collects.db, f"select * from scans where run_id = '{run['run_id']}'")
    assert len(scans) == 12  # every target accounted for
    assert collects.run_here() == "complete"


# --------------------------------------------------------------------------- write failure


async def test_an_exception_while_writing_leaves_earlier_runs_intact(
    make_simulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet(3, seed=32, regions=REGIONS)
    make_simulator(fleet=fleet)
    db = tmp_path / "inv.duckdb"
    plan = Plan(
        tuple(Account(id=a, role_arn=f"arn:aws:iam::{a}:role/R") for a in fleet.account_ids),
        REGIONS,
        Options(concurrency=2, workers=1),
    )
    good = await run_collect(plan, db, None)
    assert good.status == "complete"
    before = snapshot(db)

    monkeypatch.setattr(builder, "FLUSH_TARGETS", 2)  # write every second target
    calls = 0
    real_append = Store.append

    def failing_append(self: Store, run_id: str, tables: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        return real_append(self, run_id, tables)

    monkeypatch.setattr(Store, "append", failing_append)
    with pytest.raises(OSError, match="No space left"):
        await run_collect(plan, db, None)
    monkeypatch.setattr(Store, "append", real_append)

    # the broken run is marked failed at once (not left 'running'), with an errors row
    # saying why; the views never show it, and the earlier run is intact
    after = snapshot(db)
    assert after["latest"] == before["latest"] and after["leaks"] == 0
    earlier = {r[0] for r in before["runs"]}
    assert [r for r in after["runs"] if r[0] in earlier] == before["runs"]
    broken = [r for r in rows(db, "select run_id, status from runs") if r["run_id"] not in earlier]
    assert [b["status"] for b in broken] == ["failed"]
    why = rows(db, f"select * from errors where run_id = '{broken[0]['run_id']}'")
    assert [(e["operation"], e["error_code"]) for e in why] == [("Collect", "OSError")]
    assert all(
        rows(db, f"select count(*) as n from {t} where run_id = '{broken[0]['run_id']}'")[0]["n"]
        == 0
        for t in INVENTORY
    )
    assert (
        rows(db, f"select count(*) as n from scans where run_id = '{broken[0]['run_id']}'")[0]["n"]
        == 4
    )

    nxt = await run_collect(plan, db, None)
    assert nxt.status == "complete"
    status = rows(db, f"select status from runs where run_id = '{broken[0]['run_id']}'")
    assert status == [{"status": "failed"}]
    for t in INVENTORY:
        n = rows(db, f"select count(*) as n from {t} where run_id = '{broken[0]['run_id']}'")
        assert n[0]["n"] == 0
