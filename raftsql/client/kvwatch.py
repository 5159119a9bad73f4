"""Every change of a key or prefix, in log order, from `/v1/changes` (docs/config-store.md):
`ConfigStore.watch` (a blocking iterator) and `ConfigStore.awatch` (an async one).

A watch remembers the index through which it has handed out every change (`Watch.index`)
and asks for the changes after it, from whichever node answers: the history is replicated
state, so after a leader change another node resumes it where it was, and nothing is missed
or repeated. Unavailability (no leader yet, every node down) is waited out, not raised.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from raftsql.client.http import Cluster, Unavailable
from raftsql.client.kvtypes import Change, Compacted, change_of, index_of, refused

COMPACT_HEADER = "x-raftsql-compact-index"
RETRY_PAUSE = 0.5  # seconds between attempts while the cluster is unavailable
_Item = tuple[Change | None, int | None, BaseException | None]  # a change, the index after it


class Watch(Iterator[Change]):
    """Blocking iterator of `Change`s after `index` (None: from now). Each request waits up to
    `wait` seconds on the server for a change, then asks again; iterate it from one thread."""

    def __init__(self, make_cluster: Callable[[float], Cluster], key: str, *, prefix: bool,
                 start_index: int | None, wait: float = 60.0, limit: int | None = None):
        self.key = key
        self.prefix = prefix
        self.index = start_index  # every change up to here has been handed out
        self.wait = wait
        self.limit = limit
        self._cluster = make_cluster(wait * 17 / 16)  # the server adds up to wait/16
        self._buffer: deque[Change] = deque()
        self._through = start_index or 0  # where the buffered answer is complete
        self._closed = False

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Change:
        while not self._buffer:
            if self._closed:
                raise StopIteration
            self._fetch()
        change = self._buffer.popleft()
        if not self._buffer:
            self.index = self._through
        elif self._buffer[0].index != change.index:  # that entry's changes are all out
            self.index = change.index
        return change

    def close(self) -> None:
        """Stop: the iteration ends (after the request under way, if another thread is in
        one)."""
        self._closed = True
        self._cluster.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch(self) -> None:
        """One answer into the buffer (or none when the wait ended without a change)."""
        params: dict[str, Any] = {"recurse": self.prefix}
        if self.index is not None:
            params["index"] = self.index
            params["wait"] = f"{self.wait:g}s"
        if self.limit:
            params["limit"] = self.limit
        try:
            response = self._cluster.send("GET", "/v1/changes/" + urllib.parse.quote(self.key, safe="/"), params)
        except Unavailable:
            if not self._closed:
                time.sleep(RETRY_PAUSE)
            return
        if response.status == 410:
            floor = int(response.headers.get(COMPACT_HEADER, "0") or 0)
            raise Compacted(f"changes after index {self.index} are compacted: the history "
                            f"keeps those after index {floor}; read the current state and "
                            "watch from its index", self.index or 0, floor)
        if response.status != 200:
            raise refused(response)
        after = self.index or 0
        through = index_of(response, after)
        changes = [change_of(d) for d in response.json()]
        if self.index is None:
            self.index = through
        self._buffer.extend(c for c in changes if c.index > after)
        self._through = max(through, after)
        if not self._buffer:
            self.index = self._through


class AsyncWatch(AsyncIterator[Change]):
    """The async twin of `Watch`: the same watch, run on a daemon thread of its own, so the
    event loop never waits on the network; `aclose()` (or leaving `async with`) ends it."""

    def __init__(self, watch: Watch, backlog: int = 1000):
        self._watch = watch
        self._backlog = backlog
        self._queue: asyncio.Queue[_Item] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def index(self) -> int | None:
        """Where to resume: every change up to it has been handed out (by `__anext__`)."""
        return self._handed

    _handed: int | None = None

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Change:
        if self._queue is None:
            self._start()
        assert self._queue is not None
        change, index, error = await self._queue.get()
        if error is not None:
            raise error
        if change is None:
            raise StopAsyncIteration
        self._handed = index
        return change

    async def aclose(self) -> None:
        self._stop.set()
        self._watch._closed = True

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue(
            self._backlog)
        self._queue = queue
        self._handed = self._watch.index

        def put(item: _Item) -> bool:
            if self._stop.is_set():
                return False
            try:
                asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            except RuntimeError:  # the loop is gone
                return False
            return True

        def run() -> None:
            try:
                for change in self._watch:
                    if not put((change, self._watch.index, None)):
                        return
            except Exception as e:  # handed to the consumer, raised there
                put((None, None, e))
                return
            put((None, None, None))

        self._thread = threading.Thread(target=run, name="raftsql-awatch", daemon=True)
        self._thread.start()
