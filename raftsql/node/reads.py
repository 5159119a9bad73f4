"""The read path: ReadIndex barriers (batched) and queries on the state machine's read side.

Reads do not go through the log. A linearizable read asks the leader's core for a read index
(one request for every read that arrived meanwhile) and waits until it is applied; the query
then runs on the loop when it is quick, else on a read thread.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from raftsql.errors import RaftSQLError
from raftsql.node.applier import INLINE_BACKOFF, INLINE_BUDGET
from raftsql.node.waiting import Waiters
from raftsql.raft.messages import ReadState
from raftsql.sql.command import ReadOptions, StatementResult

if TYPE_CHECKING:
    from raftsql.node.node import Node

_QUERY_THREADS = 4  # read threads (the state machine keeps as many read connections)
_QUERY_SLICE = 0.002  # seconds a read thread works on a batch before sharing the rest


class Reads:
    """One node's read path: its ReadIndex requests, read threads and query backlog."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.applied_waiters = Waiters()
        self._waiters: list[asyncio.Future[int]] = []  # for the next ReadIndex request
        self._pending: dict[bytes, list[asyncio.Future[int]]] = {}  # ReadIndex context -> waiters
        self.seq = 0
        self.inline_off_until = 0.0  # loop time until which no query runs inline
        self._pool = ThreadPoolExecutor(_QUERY_THREADS, thread_name_prefix=f"query-{node.node_id}")
        self._backlog: collections.deque[tuple[list[Any], ReadOptions, asyncio.Future[Any]]] = (
            collections.deque())
        self._jobs = 0  # read threads working through the backlog
        self._start_scheduled = False

    # ---- ReadIndex ----------------------------------------------------------------

    async def barrier(self, timeout: float) -> None:
        """ReadIndex, then wait for apply (the node has checked that it leads).

        Every read that arrives before the loop next runs shares one ReadIndex request:
        each of them arrived before the read index was taken, which is all that
        linearizability asks (dissertation §6.4).
        """
        node = self._node
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fut: asyncio.Future[int] = loop.create_future()
        if not self._waiters:
            node._call(self._request_read_index)
        self._waiters.append(fut)
        index = await node._deadlines.add(fut, timeout)
        if node.applied_index < index:
            await node._deadlines.add(self.applied_waiters.add(index), deadline - loop.time())

    def _request_read_index(self) -> None:
        node = self._node
        assert node._raft is not None
        waiters, self._waiters = self._waiters, []
        self.seq += 1
        ctx = self.seq.to_bytes(8, "big")
        if node._raft.read_index(ctx):
            self._pending[ctx] = waiters
            return
        exc = node._not_leader()
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

    async def query(self, statements: list[Any], options: ReadOptions) -> list[StatementResult]:
        """Run read-only statements on the state machine's read connections.

        On the loop itself when they finish within INLINE_BUDGET (as for applying, see
        Applier._apply_inline); otherwise on a read thread. Queries that wait for a thread
        together go to it together: one thread hop for the batch, not one per query. A thread
        that has spent `_QUERY_SLICE` seconds on its batch lets another thread take the rest,
        so a slow query holds up few others.
        """
        loop = asyncio.get_running_loop()
        query_within = getattr(self._node._sm, "query_within", None)
        if query_within is not None and loop.time() >= self.inline_off_until:
            # Most queries take microseconds: run them here, unless it takes longer (or no
            # read connection is free: then only the threads are waited for).
            started = loop.time()
            results = query_within(statements, options, INLINE_BUDGET)
            if results is not None:
                return results  # type: ignore[no-any-return]
            if loop.time() - started >= INLINE_BUDGET:
                self.inline_off_until = loop.time() + INLINE_BACKOFF
        fut: asyncio.Future[list[StatementResult]] = loop.create_future()
        self._backlog.append((statements, options, fut))
        if not self._start_scheduled:
            self._start_scheduled = True
            loop.call_soon(self._start_jobs)
        return await fut

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for _, _, fut in self._backlog:
            _set_exception(fut, RaftSQLError("node stopped"))
        self._backlog.clear()

    def _start_jobs(self) -> None:
        self._start_scheduled = False
        if self._backlog and self._jobs < _QUERY_THREADS and not self._node._stopping:
            self._jobs += 1
            self._pool.submit(self._run_queries, asyncio.get_running_loop())

    def _run_queries(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a read thread: run queued queries until none is left."""
        assert self._node._sm is not None
        query = self._node._sm.query  # type: ignore[attr-defined]
        backlog = self._backlog
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        started = time.monotonic()
        try:
            while backlog:
                try:
                    statements, options, fut = backlog.popleft()
                except IndexError:
                    break
                if fut.done():
                    continue  # its client went away
                try:
                    done.append((fut, query(statements, options), None))
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
