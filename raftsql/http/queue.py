"""Queued writes: `/db/execute?queue` (rqlite-api.md §2.2).

A queued request is answered at once with a sequence number. A background flusher merges
queued requests into one execute (when `batch_size` statements' worth of requests are
waiting, or `timeout` after the first one arrived), forwards it to the leader when this
node does not lead, and retries every second until it is accepted. `wait` blocks until
the flush that holds a given sequence number is done. A 200 means "queued", not
"committed": what is queued when the process dies is lost, as in rqlite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from raftsql.errors import NotLeaderError, RaftSQLError
from raftsql.http.respond import FORWARDED_HEADER
from raftsql.sql.service import SqlService

log = logging.getLogger("raftsql.http.queue")


class WriteQueue:
    """`client()` is the HTTP session to forward to the leader with; `node_id` names this
    node in forwarded requests."""

    def __init__(
        self, sql: SqlService, node_id: str, client: Callable[[], aiohttp.ClientSession], *,
        capacity: int = 1024, batch_size: int = 128, timeout: float = 0.05,
        retry_interval: float = 1.0, transaction: bool = False,
        member_headers: dict[str, str] | None = None,
    ) -> None:
        self._sql = sql
        self._member_headers = member_headers or {}  # let through the leader's auth
        self._node_id = node_id
        self._client = client
        self.capacity = capacity
        self.batch_size = batch_size
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.transaction = transaction
        self._items: list[tuple[int, list[Any]]] = []
        self._seq = time.time_ns()  # rqlite seeds the counter with the start-up time
        self.flushed = self._seq  # the last sequence number whose batch was written
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = {"batches": 0, "statements": 0, "failures": 0}

    @property
    def sequence_number(self) -> int:
        return self._seq

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="write-queue")

    async def close(self, flush_timeout: float = 2.0) -> None:
        """Flush what is queued (bounded by flush_timeout), then stop the flusher."""
        if self._items and self._task is not None:
            async with self._changed:
                self._closing = True
                self._changed.notify_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_flushed(self._seq), flush_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def put(self, statements: list[Any]) -> int:
        """Queue one request's statements (possibly none: a flush barrier); its number."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._items) < self.capacity)
            self._seq += 1
            self._items.append((self._seq, statements))
            self._changed.notify_all()
            return self._seq

    async def wait_flushed(self, seq: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.flushed >= seq)

    async def _run(self) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._items))
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(self.timeout), self._changed:
                    await self._changed.wait_for(self._batch_full)
            batch = self._take()
            statements = [s for _, stmts in batch for s in stmts]
            if statements:
                await self._write(statements)
            async with self._changed:
                self.flushed = batch[-1][0]
                self._changed.notify_all()

    def _batch_full(self) -> bool:
        return self._closing or sum(len(s) for _, s in self._items) >= self.batch_size

    def _take(self) -> list[tuple[int, list[Any]]]:
        n, count = 0, 0
        while n < len(self._items) and (n == 0 or count + len(self._items[n][1]) <= self.batch_size):
            count += len(self._items[n][1])
            n += 1
        batch, self._items = self._items[:n], self._items[n:]
        return batch

    async def _write(self, statements: list[Any]) -> None:
        """Write one batch, retrying until the leader accepts it."""
        while True:
            try:
                results = await self._execute(statements)
            except Exception as e:  # the flusher must outlive any failure: log, wait, retry
                self.stats["failures"] += 1
                log.warning("queued write of %d statements failed, retrying: %s",
                            len(statements), str(e) or type(e).__name__)
                await asyncio.sleep(self.retry_interval)
                continue
            self.stats["batches"] += 1
            self.stats["statements"] += len(statements)
            errors = [r for r in results if r]
            if errors:  # as in rqlite, SQL errors of queued writes only reach the log
                log.info("queued write: %d statement errors, first: %s", len(errors), errors[0])
            return

    async def _execute(self, statements: list[Any]) -> list[str | None]:
        try:
            results, _ = await self._sql.execute(statements, transaction=self.transaction)
            return [r.error for r in results]
        except NotLeaderError as e:
            if not e.leader_url:
                raise
            return await self._forward(e.leader_url, statements)

    async def _forward(self, leader_url: str, statements: list[Any]) -> list[str | None]:
        url = leader_url.rstrip("/") + "/db/execute" + ("?transaction" if self.transaction else "")
        headers = {"Content-Type": "application/json",
                   FORWARDED_HEADER: self._node_id, **self._member_headers}
        async with self._client().post(
            url, data=orjson.dumps(statements), headers=headers,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RaftSQLError(f"leader answered {resp.status}: {body[:200]!r}")
        reply = orjson.loads(body)
        if reply.get("error"):
            raise RaftSQLError(str(reply["error"]))
        return [r.get("error") for r in reply.get("results", [])]
