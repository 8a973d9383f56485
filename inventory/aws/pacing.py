"""The global rate limit, which backs off as a whole when AWS throttles (AIMD).

asyncio-throttle does the pacing. Its `acquire()` polls every `retry_interval`; with
hundreds of waiting tasks that polling alone costs real CPU, so one lock lets a single
task poll at a time while the others wait on the lock without waking.

Time a call spends queued here does not count against its target's deadline (run/collect.py):
that is the run slowing down as a whole, not the target being slow. It stays bounded:
the rate never falls below `floor`, and every target makes a bounded number of calls.
"""

from __future__ import annotations

import asyncio
import time

from asyncio_throttle import Throttler

FLOOR_FRACTION = 1 / 16  # the rate never falls below this share of the configured one


def default_floor(rate: float) -> float:
    """The lowest rate a Pacer of `rate` calls/s comes down to: 1/16 of it, at least 1/s."""
    return min(float(rate), max(1.0, rate * FLOOR_FRACTION))


class Pacer:
    """A rate limit of `rate` calls/s that halves on throttling and creeps back on success.

    Additive increase: +`rate`/50 per successful call, at most the configured rate.
    Multiplicative decrease: ×0.5 on a throttled answer, at most once per `cooldown` s
    (a burst of throttles from calls already in flight counts as one signal), never below
    `floor` (default: 1/16 of the configured rate, at least 1 call/s).
    """

    def __init__(self, rate: float, *, floor: float | None = None, cooldown: float = 0.5):
        self.max_rate = float(rate)
        self.floor = default_floor(rate) if floor is None else min(floor, self.max_rate)
        self.cooldown = cooldown
        self.rate = self.max_rate
        self.min_rate = self.max_rate  # the lowest rate this run came down to
        self.decreases = 0
        self.throttles = 0  # throttled answers seen
        self.waited = 0.0  # seconds callers spent queued here, summed
        self._last_decrease = -float("inf")
        # since the last `take_drop()`: the rate before the first decrease, the lowest after
        self._drop: tuple[float, float] | None = None
        self._lock = asyncio.Lock()
        self._throttler = Throttler(rate_limit=1, period=1.0, retry_interval=0.005)
        self._apply()

    def _apply(self) -> None:
        # A window of 1/10 s keeps bursts small at high rates; below 10/s one call per window.
        if self.rate >= 10:
            self._throttler.period = 0.1
            self._throttler.rate_limit = max(1, round(self.rate / 10))
        else:
            self._throttler.period = 1.0 / self.rate
            self._throttler.rate_limit = 1

    async def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        t0 = time.monotonic()
        async with self._lock:
            await self._throttler.acquire()
        waited = time.monotonic() - t0
        self.waited += waited
        return waited

    def on_success(self) -> None:
        if self.rate < self.max_rate:
            self.rate = min(self.max_rate, self.rate + self.max_rate / 50)
            self._apply()

    def on_throttle(self) -> None:
        self.throttles += 1
        now = time.monotonic()
        if now - self._last_decrease < self.cooldown:
            return
        self._last_decrease = now
        self.decreases += 1
        before = self.rate
        self.rate = max(self.floor, self.rate * 0.5)
        self.min_rate = min(self.min_rate, self.rate)
        drop = self._drop
        self._drop = (before, self.rate) if drop is None else (drop[0], min(drop[1], self.rate))
        self._apply()

    def take_drop(self) -> tuple[float, float] | None:
        """(rate before, lowest rate) of the decreases since the last call; None if none."""
        drop, self._drop = self._drop, None
        return drop
