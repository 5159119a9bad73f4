"""The read path: ReadIndex barriers (batched) and queries on the state machine's read side.

Reads do not go through the log. A linearizable read asks the leader's core for a read index
(one request for every read that arrived meanwhile) and waits until it is applied; the query
then runs on the loop when it is quick, else on a read thread. What a query is, the driver
does not know: its arguments go to the state machine's `query_within(*request, seconds)` and
`query(*request)` as they came.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raftsql.errors import RaftSQLError
from raftsql.node.applier import INLINE_BACKOFF, INLINE_BUDGET, StateMachine
from raftsql.node.waiting import Applied, Deadlines
from raftsql.raft.core import Raft
from raftsql.raft.messages import ReadState

_QUERY_THREADS = 4  # read threads (the state machine keeps as many read connections)
_QUERY_SLICE = 0.002  # seconds a read thread works on a batch before sharing the rest

Call = Callable[[Callable[[Raft], None]], None]


class Reads:
    """One node's read path: its ReadIndex requests, read threads and query backlog.

    `call(fn)` runs `fn(raft)` on the Raft loop; `not_leader()` is the error for a read this
    node cannot serve."""

    def __init__(self, sm: StateMachine, *, name: str, call: Call,
                 not_leader: Callable[[], Exception], deadlines: Deadlines,
                 applied: Applied) -> None:
        self._sm = sm
        self._call = call
        self._not_leader = not_leader
        self._deadlines = deadlines
        self._applied = applied
        self._waiters: list[asyncio.Future[int]] = []  # for the next ReadIndex request
        self._pending: dict[bytes, list[asyncio.Future[int]]] = {}  # ReadIndex context -> waiters
        self.seq = 0
        self.inline_off_until = 0.0  # loop time until which no query runs inline
        self._pool = ThreadPoolExecutor(_QUERY_THREADS, thread_name_prefix=f"query-{name}")
        self._backlog: collections.deque[tuple[tuple[Any, ...], asyncio.Future[Any]]] = (
            collections.deque())
        self._jobs = 0  # read threads working through the backlog
        self._start_scheduled = False
        self._closed = False

    # ---- ReadIndex ----------------------------------------------------------------

    async def barrier(self, timeout: float) -> None:
        """ReadIndex, then wait for apply (the node has checked that it leads).

        Every read that arrives before the loop next runs shares one ReadIndex request:
        each of them arrived before the read index was taken, which is all that
        linearizability asks (dissertation §6.4).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fut: asyncio.Future[int] = loop.create_future()
        if not self._waiters:
            self._call(self._request_read_index)
        self._waiters.append(fut)
        index = await self._deadlines.add(fut, timeout)
        if self._applied.index < index:
            await self._deadlines.add(self._applied.wait(index), deadline - loop.time())

    def _request_read_index(self, raft: Raft) -> None:
        waiters, self._waiters = self._waiters, []
        self.seq += 1
        ctx = self.seq.to_bytes(8, "big")
        if raft.read_index(ctx):
            self._pending[ctx] = waiters
            return
        exc = self._not_leader()
        for fut in waiters:
            _set_exception(fut, exc)

    def on_read_states(self, read_states: Iterable[ReadState]) -> None:
        for rs in read_states:
            for fut in self._pending.pop(rs.context, ()):
                if not fut.done():
                    fut.set_result(rs.index)

    def fail(self, exc: Exception) -> None:
        """Fail the reads waiting for a read index (leadership was lost)."""
        for waiters in [self._waiters, *self._pending.values()]:
            for fut in waiters:
                _set_exception(fut, exc)
        self._waiters = []
        self._pending.clear()

    # ---- queries ------------------------------------------------------------------

    async def query(self, *request: Any) -> Any:
        """Run a read on the state machine's read connections.

        On the loop itself when it finishes within INLINE_BUDGET (as for applying, see
        Applier._apply_inline); otherwise on a read thread. Queries that wait for a thread
        together go to it together: one thread hop for the batch, not one per query. A thread
        that has spent `_QUERY_SLICE` seconds on its batch lets another thread take the rest,
        so a slow query holds up few others.
        """
        loop = asyncio.get_running_loop()
        query_within = getattr(self._sm, "query_within", None)
        if query_within is not None and loop.time() >= self.inline_off_until:
            # Most queries take microseconds: run them here, unless it takes longer (or no
            # read connection is free right now: then only the threads are waited for).
            started = loop.time()
            results = query_within(*request, INLINE_BUDGET)
            if results is not None:
                return results
            if loop.time() - started >= INLINE_BUDGET:
                self.inline_off_until = loop.time() + INLINE_BACKOFF
        fut: asyncio.Future[Any] = loop.create_future()
        self._backlog.append((request, fut))
        if not self._start_scheduled:
            self._start_scheduled = True
            loop.call_soon(self._start_jobs)
        return await fut

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)
        for _, fut in self._backlog:
            _set_exception(fut, RaftSQLError("node stopped"))
        self._backlog.clear()

    def _start_jobs(self) -> None:
        self._start_scheduled = False
        if self._backlog and self._jobs < _QUERY_THREADS and not self._closed:
            self._jobs += 1
            loop = asyncio.get_running_loop()
            # Through the loop, not the pool itself: the simulator's loop runs it in turn.
            loop.run_in_executor(self._pool, self._run_queries, loop)

    def _run_queries(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a read thread: run queued queries until none is left."""
        query = self._sm.query  # type: ignore[attr-defined]
        backlog = self._backlog
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        started = time.monotonic()
        try:
            while backlog:
                try:
                    request, fut = backlog.popleft()
                except IndexError:
                    break
                if fut.done():
                    continue  # its client went away
                try:
                    done.append((fut, query(*request), None))
                except Exception as e:
                    done.append((fut, None, e))
                if backlog and time.monotonic() - started > _QUERY_SLICE:
                    loop.call_soon_threadsafe(self._queries_done, done, False)
                    done, started = [], time.monotonic()
        finally:
            loop.call_soon_threadsafe(self._queries_done, done, True)

    def _queries_done(self, done: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
                      finished: bool) -> None:
        for fut, result, exc in done:
            if fut.done():
                continue
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)
        if finished:
            self._jobs -= 1
        self._start_jobs()


def _set_exception(fut: asyncio.Future[Any], exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)
