"""Futures that the node's loop completes: when time runs out, or when an index is applied."""

from __future__ import annotations

import asyncio
from typing import Any


class Deadlines:
    """Request timeouts, checked on every tick: cheaper than a timer per request (a request
    may time out up to one heartbeat interval late)."""

    def __init__(self) -> None:
        self._items: list[tuple[float, asyncio.Future[Any]]] = []

    def add(self, fut: asyncio.Future[Any], timeout: float) -> asyncio.Future[Any]:
        self._items.append((fut.get_loop().time() + timeout, fut))
        return fut

    def expire(self, now: float) -> None:
        """Fail the futures whose time is up with TimeoutError; forget the completed ones."""
        keep = []
        for item in self._items:
            when, fut = item
            if fut.done():
                continue
            if when <= now:
                fut.set_exception(TimeoutError())
            else:
                keep.append(item)
        self._items = keep


class Waiters:
    """Futures keyed by log index, completed as the applied index passes them."""

    def __init__(self) -> None:
        self._items: list[tuple[int, asyncio.Future[None]]] = []

    def add(self, index: int) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self._items.append((index, fut))
        return fut

    def release(self, applied: int) -> None:
        keep = []
        for index, fut in self._items:
            if index <= applied:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((index, fut))
        self._items = keep

    def fail(self, exc: Exception) -> None:
        for _, fut in self._items:
            if not fut.done():
                fut.set_exception(exc)
        self._items = []
