"""`--workers N` stores exactly what one process stores; memory stays bounded by the batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from inventory.model import Account, Options, Plan
from inventory.run import builder, pipeline
from inventory.run.pipeline import run_collect
from inventory.simulator import Fleet

CONTENT = {
    "container_services": "account_id, region, service_name, arn, state, scale, tags",
    "deployments": "account_id, region, service_name, slot, version, state",
    "containers": "account_id, region, service_name, slot, container_name, image, environment",
    "scans": "account_id, region, status, services",
}


def _plan(fleet: Fleet, regions: tuple[str, ...], **opts: object) -> Plan:
    accounts = tuple(
        Account(id=a, name=f"n{a[-3:]}", role_arn=f"arn:aws:iam::{a}:role/Reader")
        for a in fleet.account_ids
    )
    return Plan(accounts=accounts, regions=regions, options=Options(**opts))  # type: ignore[arg-type]


def _rows(db: Path, table: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return sorted(con.execute(f"select {CONTENT[table]} from {table}").fetchall(), key=repr)
    finally:
        con.close()


def test_two_workers_store_what_one_process_stores(make_simulator, tmp_path, monkeypatch):
    monkeypatch.setenv("INVENTORY_FINGERPRINT_KEY", "shared-fingerprint-key-0123456789abcdef")
    sim = make_simulator(accounts=8, seed=4)
    regions = ("us-east-1", "eu-west-2", "eu-north-1", "ap-southeast-3")
    one = asyncio.run(
        run_collect(_plan(sim.fleet, regions, workers=1), tmp_path / "a.duckdb", None)
    )
    two = asyncio.run(
        run_collect(_plan(sim.fleet, regions, workers=2), tmp_path / "b.duckdb", None)
    )
    assert (one.workers, two.workers) == (1, 2)
    assert one.status == two.status == "complete"
    assert two.tally.targets_ok == 8 * len(regions)
    assert (two.tally.services, two.tally.containers) == (one.tally.services, one.tally.containers)
    expected = sum(len(sim.fleet.services(a, r)) for a in sim.fleet.account_ids for r in regions)
    assert two.tally.services == expected > 0
    for table in CONTENT:
        assert _rows(tmp_path / "a.duckdb", table) == _rows(tmp_path / "b.duckdb", table), table
    # each account assumed once in all, never once per worker or per region
    assert sim.operation_stats("AssumeRole")["calls"] == 2 * 8


def test_memory_is_bounded_by_the_batch_not_the_fleet(make_simulator, tmp_path, monkeypatch):
    """Rows are released after each write: what is held never grows with the fleet."""
    monkeypatch.setattr(builder, "FLUSH_ROWS", 50)
    monkeypatch.setattr(builder, "FLUSH_TARGETS", 40)
    regions = ("us-east-1", "eu-west-2", "eu-north-1")
    peaks: dict[int, tuple[int, int]] = {}
    for accounts in (30, 120):
        sim = make_simulator(accounts=accounts, seed=9)
        held: list[int] = []
        arrow: list[int] = []
        real_add = builder.RunBuilder.add

        def add(self: builder.RunBuilder, result, _held=held, _arrow=arrow, _real=real_add):
            _real(self, result)
            _held.append(sum(self.flattener.rows.values()) + len(self._scans))
            _arrow.append(pa.total_allocated_bytes())

        monkeypatch.setattr(builder.RunBuilder, "add", add)
        summary = asyncio.run(
            run_collect(
                _plan(sim.fleet, regions, workers=1), tmp_path / f"m{accounts}.duckdb", None
            )
        )
        assert summary.status == "complete"
        assert summary.tally.targets_ok == accounts * len(regions)
        peaks[accounts] = (max(held), max(arrow))
        monkeypatch.setattr(builder.RunBuilder, "add", real_add)
    # pending rows never exceed one batch plus one target's worth (≤ 20 services × 3 rows)
    for held_peak, _ in peaks.values():
        assert held_peak <= 50 + 40 + 20 * 7
    # four times the fleet: the Arrow memory held at the peak does not grow with it
    assert peaks[120][1] <= max(2 * peaks[30][1], 1 << 20)


def test_a_collect_allocates_arrow_memory_from_the_system_allocator() -> None:
    """tune_memory_for_collect: Arrow's buffers come from (and go back to) malloc, not
    pyarrow's default pool, which keeps freed memory (benchmarks/README.md, memory)."""
    before = pa.default_memory_pool()
    try:
        builder.tune_memory_for_collect()
        assert pa.default_memory_pool().backend_name == "system"
        held = pa.system_memory_pool().bytes_allocated()
        column = pa.array(range(1_000_000), pa.int64())
        assert pa.system_memory_pool().bytes_allocated() - held >= column.nbytes
    finally:
        pa.set_memory_pool(before)


def test_default_workers_need_enough_accounts() -> None:
    assert pipeline.default_workers(10) == 1
    assert pipeline.default_workers(99) == 1
    import os

    assert pipeline.default_workers(10_000) == (os.cpu_count() or 1)


@pytest.mark.parametrize("workers", [3])
def test_more_workers_than_accounts_is_fine(make_simulator, tmp_path, workers):
    sim = make_simulator(accounts=2, seed=2)
    s = asyncio.run(
        run_collect(_plan(sim.fleet, ("us-east-1",), workers=workers), tmp_path / "w.duckdb", None)
    )
    assert s.workers == 2 and s.status == "complete" and s.tally.targets_ok == 2


async def test_credentials_kept_follow_the_accounts_in_flight(make_simulator) -> None:
    """Roles are assumed ahead of the targets, but at most PREFETCH_AHEAD accounts ahead,
    and an account's credentials are dropped once its last target is done."""
    from inventory.run import collect
    from inventory.run.collect import Collector

    sim = make_simulator(accounts=150, seed=6)
    plan = _plan(sim.fleet, ("us-east-1", "eu-west-2"), concurrency=8)
    kept: list[int] = []
    async with Collector(plan.options, plan.regions) as c:
        assert c.broker is not None
        async for _ in c.results(plan.accounts):
            kept.append(len(c.broker._cache))
        assert (len(c.broker._cache), len(c.broker._locks)) == (0, 0)
    assert len(kept) == 300
    assert max(kept) <= collect.PREFETCH_AHEAD + 8  # ahead of the workers + in flight
    assert sim.operation_stats("AssumeRole")["calls"] == 150  # still once per account


def test_prefetch_keeps_ahead_of_the_workers() -> None:
    """The prefetch makes twice as many AssumeRole calls at once as the workers start
    accounts per round trip (concurrency / regions), within [8, PREFETCH_AHEAD]."""
    from inventory.run.collect import PREFETCH_AHEAD, prefetch_in_flight

    assert prefetch_in_flight(256, 15) == 36  # 18 accounts per round trip
    assert prefetch_in_flight(64, 15) == 10
    assert prefetch_in_flight(8, 2) == 8  # at least 8
    assert prefetch_in_flight(256, 1) == PREFETCH_AHEAD  # at most that many ahead
    assert prefetch_in_flight(16, 0) == 32  # no regions: no division by zero
