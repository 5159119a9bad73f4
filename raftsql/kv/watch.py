"""Waking blocking queries: a waiter names a key (or a prefix) and is woken when an applied
entry changed it; nothing else wakes it (unlike Consul, whose query on a missing key wakes on
any write to the store, hashicorp/consul#9449)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class _Waiter:
    __slots__ = ("key", "prefix", "event")

    def __init__(self, key: str, prefix: bool):
        self.key = key
        self.prefix = prefix
        self.event = asyncio.Event()

    def matches(self, keys: Sequence[str]) -> bool:
        if self.prefix:
            return any(k.startswith(self.key) for k in keys)
        return self.key in keys


class Watchers:
    """On the event loop. `changed` is what the state machine's notify calls (through
    call_soon_threadsafe: it applies on a thread)."""

    def __init__(self) -> None:
        self._waiters: set[_Waiter] = set()

    @contextmanager
    def waiting(self, key: str, prefix: bool) -> Iterator[asyncio.Event]:
        """Register before reading, then wait on the event: a change between the read and
        the wait is not missed."""
        w = _Waiter(key, prefix)
        self._waiters.add(w)
        try:
            yield w.event
        finally:
            self._waiters.discard(w)

    def changed(self, index: int, keys: Sequence[str] | None) -> None:
        """Entry `index` changed `keys` (None: anything, after a snapshot was installed)."""
        for w in self._waiters:
            if keys is None or w.matches(keys):
                w.event.set()

    def __len__(self) -> int:
        return len(self._waiters)
