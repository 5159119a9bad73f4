"""Futures that the node's loop completes: when time runs out, or when an index is applied."""

from __future__ import annotations

import asyncio
from typing import Any

from raftsql.errors import RequestTimeoutError
from raftsql.node.clock import Clock


class Deadlines:
    """Request timeouts, checked on every tick: cheaper than a timer per request (a request
    may time out up to one heartbeat interval late)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._items: list[tuple[float, asyncio.Future[Any]]] = []

    def add(self, fut: asyncio.Future[Any], timeout: float) -> asyncio.Future[Any]:
        self._items.append((self._clock.now() + timeout, fut))
        return fut

    def expire(self) -> None:
        """Fail the futures whose time is up; forget the completed ones."""
        now = self._clock.now()
        keep = []
        for item in self._items:
            when, fut = item
            if fut.done():
                continue
            if when <= now:
                fut.set_exception(RequestTimeoutError())
            else:
                keep.append(item)
        self._items = keep


class Applied:
    """The index the state machine has applied, and futures waiting for it to pass one."""

    def __init__(self) -> None:
        self.index = 0
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    def wait(self, index: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if index <= self.index:
            fut.set_result(None)
        else:
            self._waiting.append((index, fut))
        return fut

    def set(self, index: int) -> None:
        self.index = index
        keep = []
        for at, fut in self._waiting:
            if at <= index:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((at, fut))
        self._waiting = keep

    def fail(self, exc: Exception) -> None:
        for _, fut in self._waiting:
            if not fut.done():
                fut.set_exception(exc)
        self._waiting = []
