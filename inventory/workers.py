"""`collect --workers N`: N processes, each with its own event loop, split the accounts.

One asyncio process saturates one core long before the network does (ENGINEERING.md),
so on a multi-core machine the accounts are dealt round-robin to N spawned workers. Each
runs its own Collector (its own clients, its own AssumeRole per account of its share, its
share of --concurrency and --rate) and its own RunBuilder, and sends finished Arrow
batches to the parent, which alone writes the store: one writer, one run.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import queue
import signal
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pyarrow as pa

from inventory.errors import InventoryError
from inventory.flatten import Flattener
from inventory.model import Account, Plan

POLL_SECONDS = 0.5


class WorkerFailed(InventoryError):
    """A worker process died or raised; the run cannot be complete."""


def share_options(plan: Plan, workers: int) -> Plan:
    """The plan each worker runs: the same regions, a 1/N share of concurrency and rate."""
    o = plan.options
    return replace(
        plan,
        options=replace(
            o,
            concurrency=max(1, math.ceil(o.concurrency / workers)),
            rate=o.rate / workers,
            workers=1,
        ),
    )


def _worker_main(
    q: Any, plan: Plan, accounts: list[Account], run_id: str, key: bytes | None, index: int
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    from inventory.pipeline import tune_gc_for_collect

    tune_gc_for_collect()
    try:
        asyncio.run(_work(q, plan, accounts, run_id, key, index))
    except BaseException:
        q.put(("error", index, traceback.format_exc(limit=8)))


async def _work(
    q: Any, plan: Plan, accounts: list[Account], run_id: str, key: bytes | None, index: int
) -> None:
    from inventory.collect import Collector
    from inventory.pipeline import RunBuilder, collect_into, fingerprinter

    builder = RunBuilder(run_id, Flattener(fingerprinter(key)))

    async def send(tables: dict[str, pa.Table]) -> None:
        if tables:
            q.put(("tables", index, tables))

    async with Collector(plan.options, plan.regions) as collector:
        await collect_into(
            builder, collector, accounts, send, on_result=lambda ok: q.put(("result", index, ok))
        )
    q.put(("done", index, builder.tally))


async def collect_in_workers(
    plan: Plan,
    accounts: list[Account],
    run_id: str,
    key: bytes | None,
    workers: int,
    sink: Callable[[dict[str, pa.Table]], Awaitable[None]],
    on_result: Callable[[bool], None] | None = None,
) -> Any:
    """Collect `accounts` in `workers` processes; write their batches through `sink`."""
    from inventory.pipeline import Tally

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    shared = share_options(plan, workers)
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(q, shared, accounts[i::workers], run_id, key, i),
            name=f"inventory-worker-{i}",
            daemon=True,
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    tally = Tally()
    finished: set[int] = set()
    try:
        while len(finished) < workers:
            try:
                kind, index, payload = await asyncio.to_thread(q.get, True, POLL_SECONDS)
            except queue.Empty:
                for i, p in enumerate(procs):
                    if i not in finished and p.exitcode is not None:
                        raise WorkerFailed(
                            f"worker {i} (pid {p.pid}) ended with exit code {p.exitcode} "
                            "before finishing its accounts"
                        ) from None
                continue
            if kind == "result":
                if on_result:
                    on_result(payload)
            elif kind == "tables":
                await sink(payload)
            elif kind == "done":
                tally.merge(payload)
                finished.add(index)
            elif kind == "error":
                raise WorkerFailed(f"worker {index} failed:\n{payload}")
    finally:
        for p in procs:
            if p.is_alive() and len(finished) < workers:
                p.terminate()
        for p in procs:
            p.join(timeout=10)
        q.close()
    return tally
