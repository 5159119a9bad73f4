"""The driver's clock, injected: real time in production, a hand-wound one in tests.

Everything in the driver that waits on time (the Raft ticks, request deadlines, retry
back-offs, last contact with the leader) asks a Clock, so that tests can run nodes without
sleeping: `ManualClock.advance(seconds)` wakes what was due.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds, monotonic."""

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """Time moves only when `advance()` says so."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(seconds, 0.0), next(self._seq), fut))
        await fut

    async def advance(self, seconds: float, step: float = 0.01) -> None:
        """Move time on by `seconds`, `step` at a time, letting the woken run in between."""
        end = self._now + seconds
        while self._now < end:
            self._now = min(end, self._now + step)
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, fut = heapq.heappop(self._sleepers)
                if not fut.done():
                    fut.set_result(None)
            for _ in range(20):  # let woken tasks, and what they wake, run
                await asyncio.sleep(0)
