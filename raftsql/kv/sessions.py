"""The leader's session timers. A session with a TTL lives while it is renewed; the leader
alone keeps the clocks, and when one runs out it proposes the session's destruction, so the
expiry is an entry of the log and every node releases (or deletes) the same keys at the same
index. Renewals only reset the leader's clock: they write nothing.

A new leader gives every session a fresh TTL (as Consul does), so a leader change never
expires a live session early; it may expire late, by up to the time the election took, which
the TTL's contract allows (Consul: the TTL is a lower bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("raftsql.kv")

TICK = 0.1  # seconds between two looks at the clocks


class SessionTimers:
    def __init__(self, *, leading: Callable[[], int | None],
                 live: Callable[[], Awaitable[list[tuple[str, int]]]],
                 expire: Callable[[str], Awaitable[None]],
                 clock: Callable[[], float] = time.monotonic):
        """`leading()`: the term this node leads in, or None; `live()`: every session with a
        TTL, (id, ttl_ms), once this node has applied all its predecessors committed;
        `expire(id)`: propose its destruction."""
        self._leading = leading
        self._live = live
        self._expire = expire
        self._clock = clock
        self._deadlines: dict[str, tuple[float, int]] = {}  # id -> (deadline, ttl_ms)
        self._term: int | None = None  # the term the clocks were started in
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kv-sessions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def renew(self, sid: str, ttl_ms: int) -> None:
        """A session was created or renewed on this leader: its clock starts again."""
        if ttl_ms:  # also while the clocks start: a session created meanwhile counts too
            self._deadlines[sid] = (self._clock() + ttl_ms / 1000, ttl_ms)

    def count(self) -> int:
        return len(self._deadlines)

    def forget(self, sid: str) -> None:
        self._deadlines.pop(sid, None)

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a lost leadership mid-step: the next look sorts it out
                log.info("session timers: %s", e)
            await asyncio.sleep(TICK)

    async def _step(self) -> None:
        term = self._leading()
        if term is None:
            self._term = None
            self._deadlines.clear()
            return
        if term != self._term:
            sessions = await self._live()
            if self._leading() != term:
                return
            now = self._clock()
            for sid, ttl in sessions:  # a full TTL each, or more if renewed meanwhile
                if ttl and self._deadlines.get(sid, (0.0, 0))[0] < now + ttl / 1000:
                    self._deadlines[sid] = (now + ttl / 1000, ttl)
            self._term = term
            return
        now = self._clock()
        for sid in [s for s, (deadline, _) in self._deadlines.items() if deadline <= now]:
            self._deadlines.pop(sid, None)
            log.info("session %s expired", sid)
            await self._expire(sid)
