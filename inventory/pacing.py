"""The global rate limit, which backs off as a whole when AWS throttles (AIMD).

asyncio-throttle does the pacing. Its `acquire()` polls every `retry_interval`; with
hundreds of waiting tasks that polling alone costs real CPU, so one lock lets a single
task poll at a time while the others wait on the lock without waking.
"""

from __future__ import annotations

import asyncio
import time

from asyncio_throttle import Throttler


class Pacer:
    """A rate limit of `rate` calls/s that halves on throttling and creeps back on success.

    Additive increase: +`rate`/50 per successful call, at most the configured rate.
    Multiplicative decrease: ×0.5 on a throttled answer, at most once per `cooldown` s
    (a burst of throttles from calls already in flight counts as one signal).
    """

    def __init__(self, rate: float, *, floor: float = 1.0, cooldown: float = 0.5):
        self.max_rate = float(rate)
        self.floor = min(floor, self.max_rate)
        self.cooldown = cooldown
        self.rate = self.max_rate
        self.decreases = 0
        self._last_decrease = 0.0
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

    async def acquire(self) -> None:
        async with self._lock:
            await self._throttler.acquire()

    def on_success(self) -> None:
        if self.rate < self.max_rate:
            self.rate = min(self.max_rate, self.rate + self.max_rate / 50)
            self._apply()

    def on_throttle(self) -> None:
        now = time.monotonic()
        if now - self._last_decrease < self.cooldown:
            return
        self._last_decrease = now
        self.decreases += 1
        self.rate = max(self.floor, self.rate * 0.5)
        self._apply()
