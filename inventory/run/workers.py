"""`collect --workers N`: N processes, each with its own event loop, split the accounts.

One asyncio process saturates one core long before the network does,
so on a multi-core machine the accounts are dealt round-robin to N spawned workers. Each
runs its own Collector (its own clients, its own AssumeRole per account of its share, its
share of --concurrency and --rate) and its own RunBuilder, and sends finished Arrow
batches to the parent, which alone writes the store: one writer, one run. The parent keeps
the run's one `UnknownMember` anomaly per member path: the first a worker sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import queue
import signal
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pyarrow as pa

from inventory import testhook
from inventory.errors import InventoryError
from inventory.model import Account, Plan
from inventory.storage.flatten import UNKNOWN_MEMBER, Flattener

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


_stop_requested: str | None = None  # a SIGTERM that arrived before the collector existed


def _early_stop(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = signal.Signals(signum).name


def _worker_main(
    q: Any, plan: Plan, accounts: list[Account], run_id: str, key: bytes | None, index: int
) -> None:
    testhook.pause_at("worker-start")  # its signals still blocked, as while importing
    # Ctrl-C reaches the whole process group: the parent decides, and forwards SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _early_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    from inventory.run.builder import tune_gc_for_collect, tune_memory_for_collect

    tune_gc_for_collect()
    tune_memory_for_collect()
    try:
        asyncio.run(_work(q, plan, accounts, run_id, key, index))
    except BaseException:
        q.put(("error", index, traceback.format_exc(limit=8)))


async def _work(
    q: Any, plan: Plan, accounts: list[Account], run_id: str, key: bytes | None, index: int
) -> None:
    from inventory.run.builder import RunBuilder, collect_into, fingerprinter
    from inventory.run.collect import Collector

    builder = RunBuilder(run_id, Flattener(fingerprinter(key)))

    async def send(tables: dict[str, pa.Table]) -> None:
        if tables:
            q.put(("tables", index, tables))

    async with Collector(plan.options, plan.regions) as collector:
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGTERM, collector.stop, "interrupted (the parent was signalled)"
        )
        if _stop_requested is not None:
            collector.stop("interrupted (the parent was signalled)")
        await collect_into(
            builder, collector, accounts, send, on_result=lambda ok: q.put(("result", index, ok))
        )
    q.put(("done", index, builder.tally))


def drop_repeated_unknown_members(tables: dict[str, pa.Table], seen: set[str]) -> int:
    """Remove from `tables['errors']` the UnknownMember rows whose message (its member path)
    is in `seen`, adding the others to it; returns how many were removed."""
    errors = tables.get("errors")
    if errors is None:
        return 0
    keep = []
    for code, message in zip(
        errors.column("error_code").to_pylist(), errors.column("message").to_pylist(), strict=True
    ):
        repeated = code == UNKNOWN_MEMBER and message in seen
        if code == UNKNOWN_MEMBER:
            seen.add(message)
        keep.append(not repeated)
    dropped = keep.count(False)
    if dropped:
        tables["errors"] = errors.filter(pa.array(keep, pa.bool_()))
    return dropped


class WorkerPool:
    """`workers` spawned processes sharing `accounts`; the parent writes what they send.

    `stop()` (from pipeline.Interrupts on Ctrl-C / SIGTERM) forwards SIGTERM to every
    worker: each stops its collector, records its unfinished targets as 'Interrupted' and
    still sends what it collected, so the run ends as it does in one process.
    """

    def __init__(
        self,
        plan: Plan,
        accounts: list[Account],
        run_id: str,
        key: bytes | None,
        workers: int,
    ):
        ctx = mp.get_context("spawn")
        self._q = ctx.Queue()
        shared = share_options(plan, workers)
        self._procs = [
            ctx.Process(
                target=_worker_main,
                args=(self._q, shared, accounts[i::workers], run_id, key, i),
                name=f"inventory-worker-{i}",
                daemon=True,
            )
            for i in range(workers)
        ]
        self.stop_reason: str | None = None

    def stop(self, reason: str = "interrupted") -> None:
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        for p in self._procs:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    async def run(
        self,
        sink: Callable[[dict[str, pa.Table]], Awaitable[None]],
        on_result: Callable[[bool], None] | None = None,
    ) -> Any:
        """Start the workers, feed `sink` with their batches; return the summed Tally."""
        from inventory.run.builder import Tally

        # Workers install their signal handlers only once started; until then Ctrl-C (sent
        # to the whole process group) or our own SIGTERM would kill them outright. The mask
        # is inherited: they start with both blocked, pending, and unblock them when ready.
        stopping = {signal.SIGINT, signal.SIGTERM}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
        try:
            for p in self._procs:
                p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        workers = len(self._procs)
        tally = Tally()
        finished: set[int] = set()
        unknown_members: set[str] = set()
        repeated = 0
        try:
            while len(finished) < workers:
                try:
                    kind, index, payload = await asyncio.to_thread(self._q.get, True, POLL_SECONDS)
                except queue.Empty:
                    for i, p in enumerate(self._procs):
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
                    repeated += drop_repeated_unknown_members(payload, unknown_members)
                    await sink(payload)
                elif kind == "done":
                    tally.merge(payload)
                    finished.add(index)
                elif kind == "error":
                    raise WorkerFailed(f"worker {index} failed:\n{payload}")
        finally:
            for p in self._procs:
                if p.is_alive() and len(finished) < workers:
                    p.terminate()
            for p in self._procs:
                p.join(timeout=10)
            self._q.close()
        tally.anomalies -= repeated
        if tally.lowest_rate is not None:  # each worker paced 1/N of --rate (share_options)
            tally.lowest_rate *= workers
        return tally
