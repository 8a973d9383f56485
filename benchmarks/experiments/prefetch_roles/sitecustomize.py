"""Experiment: assume roles ahead of the region calls (at most 8 AssumeRole in flight).

Today a worker that takes an account's first region waits for its AssumeRole, and with
account-major ordering the other workers on that account's regions wait too: a target holds
a slot for about two round trips. Prefetching the roles lets a slot hold one.
"""

import asyncio
import contextlib

import inventory.run.collect as _collect

_original_results = _collect.Collector.results
PREFETCH_IN_FLIGHT = 8


async def _results(self, accounts):
    accounts = list(accounts)
    gate = asyncio.Semaphore(PREFETCH_IN_FLIGHT)

    async def assume(account):
        # A failure is left for the target's own call to report.
        async with gate:
            with contextlib.suppress(Exception):
                await self.broker.get(account)

    jobs = [asyncio.ensure_future(assume(a)) for a in accounts]
    try:
        async for result in _original_results(self, accounts):
            yield result
    finally:
        for job in jobs:
            job.cancel()


_collect.Collector.results = _results
