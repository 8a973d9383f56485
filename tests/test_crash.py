"""Crash safety.

A collect stopped at any point (SIGKILL at each step of a run, SIGINT / SIGTERM, an
exception while writing) leaves every earlier run intact and readable; the latest_* views never show
an unfinished run; the next collect succeeds and marks the interrupted one 'failed'.
Ctrl-C and SIGTERM end cleanly: what was collected is kept as a 'partial' run, the rest is
recorded as 'Interrupted', and the process exits 130 / 143.

The collects here are real `python -m inventory collect` processes against the simulator
(served from this test process). Nothing waits for a guessed moment: a collect is killed
where it stopped itself (the test hook INVENTORY_TEST_PAUSE_AT, inventory/testhook.py), or
interrupted while the simulator holds its calls open (the hang fault).
"""

from __future__ import annotations

import asyncio
import os
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
from helpers import rows, stopped_at

from inventory import testhook
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
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """A collect process (`env`: more variables, e.g. the test hook's)."""
        cmd = [sys.executable, "-m", "inventory", "collect", "--config", str(self.config)]
        cmd += ["--db", str(self.db), "--parquet-dir", str(self.lake), "--concurrency", "2"]
        cmd += ["--workers", "1", *extra]
        proc = subprocess.Popen(
            cmd,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def run_here(self) -> str:
        """A whole collect in this process (same plan, same store); returns its status."""
        plan = load_plan(self.config, options=Options(concurrency=2, workers=1))
        summary = asyncio.run(run_collect(plan, self.db, str(self.lake)))
        return summary.status


@pytest.fixture
def collects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Collects]:
    fleet = Fleet(6, seed=31, regions=REGIONS)
    sim = Simulator(fleet, Faults(seed=31)).start()
    try:
        c = Collects(sim, tmp_path, fleet)
        for name in UNSET_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in c.env.items():
            if name.startswith(("AWS_", "INVENTORY_")):
                monkeypatch.setenv(name, value)
        yield c
    finally:
        for p in c.procs:  # one a failed test left stopped or running
            if p.poll() is None:
                p.kill()
                p.communicate()
        sim.stop()


def snapshot(db: Path) -> dict[str, Any]:
    """Everything a reader can see of the finished runs, to compare before and after."""
    con = duckdb.connect(str(db), read_only=True)
    try:

        def q(sql: str) -> list[tuple[Any, ...]]:
            return con.execute(sql).fetchall()

        return {
            "runs": q("select * from runs where status <> 'running'"),
            "counts": {  # of the finished runs (the next collect empties a killed one)
                t: q(
                    f"select run_id, count(*) from {t} where run_id in "
                    "(select run_id from runs where status <> 'running') group by 1 order by 1"
                )
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

# Where each SIGKILL lands (the collect stops itself there: inventory/testhook.py), and what
# the store then shows of the killed run: its status (None: no runs row at all) and how many
# of its 12 targets have scans rows (the first batch holds all 12, or fewer when the
# machine is so slow that the 5-second flush comes first).
KILL_POINTS = (
    ("store-opened", None, range(0, 1)),  # the lock held, the store migrated, nothing begun
    ("run-begun", "running", range(0, 1)),
    ("append-uncommitted", "running", range(0, 1)),  # its batch inserted, never committed
    ("batch-appended", "running", range(1, 13)),  # its first batch written, not finished
    ("run-finished", "complete", range(12, 13)),  # stored, visible; not exported yet
)


def test_sigkill_at_each_step_never_damages_the_store(collects: Collects) -> None:
    assert collects.run_here() == "complete"
    baseline = snapshot(collects.db)
    (baseline_run,) = baseline["runs"]
    before = baseline
    killed: dict[str, str] = {}  # point -> the run it killed
    for point, status, scans in KILL_POINTS:
        proc = collects.start(env={testhook.ENV: point})
        stopped_at(proc.pid, proc.poll)
        proc.send_signal(signal.SIGKILL)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert f"test hook {testhook.ENV}={point}:" in err

        # every earlier run intact and readable; the views show finished runs only
        after = snapshot(collects.db)
        assert set(before["runs"]) <= set(after["runs"])
        for t, counts in before["counts"].items():
            assert set(counts) <= set(after["counts"][t]), t
        assert after["leaks"] == 0, "a latest_* view shows an unfinished run"
        check_lake_files_are_whole(collects.lake)
        before = after

        # the killed run is exactly as far as the point it was killed at
        new = rows(
            collects.db,
            f"select run_id, status from runs where run_id not in {(*killed.values(), '')!r}"
            f" and run_id <> '{baseline_run[0]}'",
        )
        if status is None:
            assert new == [], point
            continue
        assert [n["status"] for n in new] == [status], point
        run_id = killed[point] = new[0]["run_id"]
        scanned = rows(collects.db, f"select * from scans where run_id = '{run_id}'")
        assert len(scanned) in scans and all(s["status"] == "ok" for s in scanned), point
        # the inventory rows of exactly the targets scanned: whole batches only
        services = rows(
            collects.db, f"select count(*) as n from container_services where run_id = '{run_id}'"
        )
        fleet = collects.fleet
        assert services[0]["n"] == sum(
            len(fleet.services(s["account_id"], s["region"])) for s in scanned
        ), point
        assert not list(collects.lake.rglob(f"{run_id}*")), point  # not exported

    # the next collect succeeds and marks every killed run that was still running failed
    assert collects.run_here() == "complete"
    runs = {r["run_id"]: r["status"] for r in rows(collects.db, "select * from runs")}
    assert {killed[p]: runs[killed[p]] for p in killed} == {
        killed["run-begun"]: "failed",
        killed["append-uncommitted"]: "failed",
        killed["batch-appended"]: "failed",
        killed["run-finished"]: "complete",  # it had finished: the kill cost only its export
    }
    (last,) = set(runs) - set(killed.values()) - {baseline_run[0]}
    assert runs[baseline_run[0]] == runs[last] == "complete"
    failed = tuple(r for r, status in runs.items() if status == "failed")
    for t in INVENTORY:  # a failed run keeps no inventory rows
        n = rows(collects.db, f"select count(*) as n from {t} where run_id in {failed!r}")
        assert n[0]["n"] == 0
        latest = rows(collects.db, f"select distinct run_id from latest_{t}")
        assert latest == [{"run_id": last}]


# --------------------------------------------------------------------------- SIGINT / SIGTERM

# The first two accounts answer; every call of the others is held open (the simulator's
# hang fault), so a collect with two calls at a time stops with 4 targets done, 8 not.
DONE = 4


def hang_after_two_accounts(collects: Collects) -> None:
    collects.sim.faults.hang_regions = {
        (a, r) for a in collects.fleet.account_ids[2:] for r in REGIONS
    }


def wait_for_hanging(collects: Collects, proc: subprocess.Popen[str], n: int) -> None:
    """Until `n` calls of `proc` are held open and every role was assumed: the collect can
    go no further (or the process ended: a failure). Counted since `reset_stats`, so calls
    an earlier process left hanging do not count."""
    deadline = time.monotonic() + 60
    sim = collects.sim
    while (
        sim.operation_stats("GetContainerServices")["hung"] < n
        or sim.operation_stats("AssumeRole")["calls"] < 6
    ):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the collect never reached the held calls"
        time.sleep(0.01)


def interrupt(collects: Collects, signum: int) -> dict[str, Any]:
    """Start a collect, send `signum` once it is stuck on held calls; the run's row."""
    collects.sim.reset_stats()
    hang_after_two_accounts(collects)
    proc = collects.start()
    wait_for_hanging(collects, proc, 2)
    proc.send_signal(signum)
    at_signal = collects.sim.total_requests
    _out, err = proc.communicate(timeout=30)
    collects.sim.faults.hang_regions = set()
    assert proc.returncode == 128 + signum, err  # 130 for SIGINT, 143 for SIGTERM
    assert "Traceback" not in err
    # 6 AssumeRole, 4 answers, 2 held: no call started after the signal
    assert collects.sim.total_requests == at_signal == 6 + DONE + 2
    run = rows(collects.db, "select * from runs order by started_at desc limit 1")[0]
    assert run["api_calls"] == at_signal  # every call counted, the cancelled ones too
    return run


def test_ctrl_c_and_sigterm_keep_what_was_collected_as_a_partial_run(
    collects: Collects,
) -> None:
    assert collects.run_here() == "complete"
    baseline = rows(collects.db, "select run_id from runs")[0]["run_id"]
    answered = {(a, r) for a in collects.fleet.account_ids[:2] for r in REGIONS}

    interrupted = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        run = interrupt(collects, signum)
        interrupted.append(run["run_id"])
        assert run["status"] == "partial"
        assert (run["targets"], run["targets_ok"], run["targets_failed"]) == (12, DONE, 8)
        scans = rows(collects.db, f"select * from scans where run_id = '{run['run_id']}'")
        assert {(s["account_id"], s["region"]) for s in scans if s["status"] == "ok"} == answered
        assert [s["error_code"] for s in scans if s["status"] == "failed"] == ["Interrupted"] * 8
        errors = rows(collects.db, f"select * from errors where run_id = '{run['run_id']}'")
        assert len(errors) == 8
        name = signal.Signals(signum).name
        assert all(f"collect was stopped ({name})" in e["message"] for e in errors)

        # the views: this run's collected targets, the baseline's for the interrupted ones
        latest = rows(collects.db, "select account_id, region, run_id from latest_scans")
        assert len(latest) == 12
        for r in latest:
            expected = run["run_id"] if (r["account_id"], r["region"]) in answered else baseline
            assert r["run_id"] == expected, r
        assert snapshot(collects.db)["leaks"] == 0
        assert list(collects.lake.rglob(f"{run['run_id']}*.parquet"))  # exported like any run

    assert collects.run_here() == "complete"
    statuses = {r["run_id"]: r["status"] for r in rows(collects.db, "select * from runs")}
    assert [statuses.pop(r) for r in interrupted] == ["partial", "partial"]
    assert sorted(statuses.values()) == ["complete", "complete"]


def test_ctrl_c_with_workers_keeps_a_partial_run(collects: Collects) -> None:
    """The parent forwards the interrupt to its worker processes; they stop like one."""
    assert collects.run_here() == "complete"
    collects.sim.reset_stats()
    hang_after_two_accounts(collects)
    # the accounts are dealt round-robin: each worker answers one account, then is held
    # on its next (one call at a time each: --concurrency 2 shared by 2)
    proc = collects.start("--workers", "2")  # the last --workers wins
    wait_for_hanging(collects, proc, 2)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    collects.sim.faults.hang_regions = set()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run = rows(collects.db, "select * from runs order by started_at desc limit 1")[0]
    assert run["status"] == "partial"
    assert (run["targets_ok"], run["targets_failed"]) == (DONE, 8)
    scans = rows(collects.db, f"select * from scans where run_id = '{run['run_id']}'")
    assert len(scans) == 12  # every target accounted for, from both workers
    assert [s["error_code"] for s in scans if s["status"] == "failed"] == ["Interrupted"] * 8
    assert collects.run_here() == "complete"  # and nothing was left 'running'
    statuses = [r["status"] for r in rows(collects.db, "select status from runs")]
    assert sorted(statuses) == ["complete", "complete", "partial"]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except FileNotFoundError:  # that thread ended meanwhile
            continue
        out += [int(c) for c in text]
    return out


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return "gone"


def _pending(pid: int, signum: int) -> bool:
    """`signum` sent to process `pid` and not delivered yet (blocked, or it is stopped)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    raise AssertionError(f"/proc/{pid}/status has no ShdPnd")


def test_ctrl_c_while_workers_start_is_still_clean(collects: Collects) -> None:
    """A signal that reaches the workers before they install their handlers (their
    signals blocked, as while they import) does not kill them outright: each worker stops
    itself at its start (the test hook), Ctrl-C reaches the parent, which forwards SIGTERM;
    only once both workers hold it pending do they go on. They call no one."""
    proc = collects.start("--workers", "2", env={testhook.ENV: "worker-start"})
    deadline = time.monotonic() + 60
    while len(workers := [c for c in _children(proc.pid) if _state(c) == "T"]) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the workers never reached their start"
        time.sleep(0.01)
    requests = collects.sim.total_requests
    proc.send_signal(signal.SIGINT)
    while not all(_pending(w, signal.SIGTERM) for w in workers):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the parent never forwarded the interrupt"
        time.sleep(0.01)
    for w in workers:
        os.kill(w, signal.SIGCONT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "WorkerFailed" not in err
    assert err.count(f"test hook {testhook.ENV}=worker-start:") == 2
    assert collects.sim.total_requests == requests  # stopped before their first call
    run = rows(collects.db, "select * from runs order by started_at desc limit 1")[0]
    assert (run["status"], run["targets_ok"], run["targets_failed"]) == ("failed", 0, 12)
    scans = rows(collects.db, f"select * from scans where run_id = '{run['run_id']}'")
    assert [s["error_code"] for s in scans] == ["Interrupted"] * 12  # every target accounted for
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
