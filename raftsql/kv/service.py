"""The config store's service on one node: KV reads at a consistency level, blocking queries,
writes and transactions through the log, sessions, and the ordered change history.

Reads of the keys go through the SQL service's read path (the same levels as /db/query), on
`raftsql_kv`; writes are Op.KV commands through the log (raftsql/kv/machine.py applies them),
with an idempotency key when the client sent one.

X-Consul-Index, for an answer about a key or prefix: the newest index at which it changed,
never above what the answer shows (the index readers are known to see, read before the
data), so a blocking query given it back misses no change.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from raftsql.kv import model
from raftsql.kv.book import Book
from raftsql.kv.machine import KvMachine
from raftsql.kv.model import COLUMNS, Entry, KvError, Session, entry_of
from raftsql.kv.sessions import SessionTimers
from raftsql.kv.watch import Watchers
from raftsql.sql.command import Op, ReadOptions
from raftsql.sql.service import Level, SqlService

T = TypeVar("T")
DEFAULT_WAIT = 300.0  # seconds a blocking query waits, unless told (Consul's 5 minutes)
MAX_WAIT = 600.0
_NO_TABLE = "no such table: raftsql_kv"  # no key was ever written
_READ = ReadOptions(transaction=True)


class KvNode(Protocol):
    """What the service needs of the driver (raftsql.node.Node)."""

    node_id: str
    is_leader: bool
    term: int

    async def read_barrier(self, linearizable: bool, timeout: float = 10.0) -> None: ...


@dataclass(frozen=True)
class KvLimits:
    max_value_bytes: int = model.MAX_VALUE_BYTES
    max_txn_ops: int = model.MAX_TXN_OPS


class KvService:
    def __init__(self, node: KvNode, sql: SqlService, machine: KvMachine, book_path: str, *,
                 limits: KvLimits = KvLimits()):
        self._node = node
        self._sql = sql
        self._machine = machine
        self.book = Book(book_path)
        self.limits = limits
        self.watchers = Watchers()
        self.timers = SessionTimers(leading=self._leading, live=self._live_sessions,
                                    expire=self._expire)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def notify(index: int, keys: Sequence[str] | None) -> None:  # on the apply thread
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                loop.call_soon_threadsafe(self.watchers.changed, index, keys)

        self._machine.notify = notify
        self.timers.start()

    async def stop(self) -> None:
        self._machine.notify = None
        await self.timers.stop()
        self.book.close()

    def status(self) -> dict[str, Any]:
        """This node's view, for /status: what operators watch."""
        return {"visible_index": self._machine.visible, "sessions": len(self.book.sessions()),
                "history_floor": self.book.floor(), "history_limit": self._machine.history,
                "blocking_queries": len(self.watchers),
                "session_timers": self.timers.count() if self._node.is_leader else 0,
                "max_value_bytes": self.limits.max_value_bytes,
                "max_txn_ops": self.limits.max_txn_ops}

    # ---- reads

    async def get(self, key: str, *, prefix: bool, level: Level, timeout: float = 10.0
                  ) -> tuple[list[Entry], int]:
        """The entry of `key` (or every entry under the prefix, in key order), and the index
        that goes with the answer."""
        visible = self._machine.visible  # first: the data read next shows at least this
        if prefix:
            low, high = model.prefix_range(key)
            sql = f"SELECT {COLUMNS} FROM raftsql_kv WHERE key >= ?"
            stmt: list[Any] = [sql + (" AND key < ?" if high else "") + " ORDER BY key", low]
            if high:
                stmt.append(high)
        else:
            stmt = [f"SELECT {COLUMNS} FROM raftsql_kv WHERE key = ?", key]
        results, _ = await self._sql.read([stmt], level=level, voter=lambda: True,
                                          options=_READ, timeout=timeout,
                                          linearizable_timeout=timeout)
        result = results[0]
        if result.error is not None and _NO_TABLE not in result.error:
            raise RuntimeError(f"reading raftsql_kv: {result.error}")
        entries = [entry_of(r) for r in result.rows] if result.error is None else []
        index = min(self.book.last_change(key, prefix), visible)
        index = max([index, 1, *(e.modify_index for e in entries)])
        return entries, index

    async def blocking(self, key: str, prefix: bool, after: int | None, wait: float | None,
                       read: Callable[[], Awaitable[tuple[T, int]]]) -> tuple[T, int]:
        """Consul's blocking query: `read()` now, and again each time the key (or a key under
        the prefix) changes, until its index passes `after` or the wait (with Consul's jitter,
        up to wait/16) ends. No `after` (or 0): at once."""
        if not after:
            return await read()
        wait = min(DEFAULT_WAIT if wait is None else wait, MAX_WAIT)
        wait += random.uniform(0, wait / 16)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            with self.watchers.waiting(key, prefix) as changed:
                answer, index = await read()
                remaining = deadline - loop.time()
                if index > after or remaining <= 0:
                    return answer, index
                try:
                    async with asyncio.timeout(remaining):
                        await changed.wait()
                except TimeoutError:
                    pass

    async def barrier(self, level: Level, timeout: float = 10.0) -> None:
        """What a read of the bookkeeping needs first, at `level` (as the SQL reads)."""
        if level in (Level.WEAK, Level.LINEARIZABLE, Level.STRONG):
            await self._node.read_barrier(level is not Level.WEAK, timeout)

    async def changes(self, key: str, prefix: bool, after: int | None, *, wait: float | None,
                      limit: int, level: Level) -> tuple[list[dict[str, Any]], int]:
        """Every change after index `after`, in log order (see Book.changes); without `after`,
        none, and the index to watch from. KvError(410) when `after` is compacted away."""
        async def read() -> tuple[list[dict[str, Any]], int]:
            await self.barrier(level)
            if after is None:
                return [], max(self._machine.visible, 1)
            rows, through, floor = self.book.changes(key, prefix, after, limit)
            if after < floor:
                raise Compacted(after, floor)
            return rows, through

        if after is None:
            return await read()
        return await self.blocking(key, prefix, after, wait, read)

    # ---- writes

    async def write(self, ops: list[dict[str, Any]], *, transaction: bool = False,
                    timeout: float = 30.0, idempotency_key: str | None = None
                    ) -> tuple[Any, int]:
        """Through the log, on the leader (NotLeaderError elsewhere): the outcome, and the
        entry's index."""
        outcome, index = await self._sql.execute(ops, op=Op.KV, transaction=transaction,
                                                 timeout=timeout, key=idempotency_key)
        if isinstance(outcome, dict) and "error" in outcome:
            raise KvError(outcome["error"])
        return outcome, index

    # ---- sessions

    async def create_session(self, session: Session, *, timeout: float = 30.0,
                             idempotency_key: str | None = None) -> tuple[str, int]:
        """Create `session` (its id fresh from the caller); its id and entry."""
        outcome, index = await self.write([session.op()], timeout=timeout,
                                          idempotency_key=idempotency_key)
        sid = outcome["ID"]
        self.timers.renew(sid, session.ttl_ms)
        return sid, index

    async def destroy_session(self, sid: str, *, timeout: float = 30.0) -> int:
        _, index = await self.write([{"v": "session-destroy", "s": sid}], timeout=timeout)
        self.timers.forget(sid)
        return index

    async def renew_session(self, sid: str) -> Session | None:
        """On the leader only (its clocks): None for a session that does not exist."""
        if not self._node.is_leader:
            await self._node.read_barrier(False)  # raises NotLeaderError
        session = self.book.session(sid)
        if session is not None:
            self.timers.renew(sid, session.ttl_ms)
        return session

    async def sessions(self, level: Level, *, sid: str | None = None, node: str | None = None
                       ) -> tuple[list[Session], int]:
        await self.barrier(level)
        index = max(self._machine.visible, 1)
        if sid is not None:
            session = self.book.session(sid)
            return ([session] if session else []), index
        return self.book.sessions(node), index

    def _leading(self) -> int | None:
        return self._node.term if self._node.is_leader else None

    async def _live_sessions(self) -> list[tuple[str, int]]:
        await self._node.read_barrier(True)  # everything the last leader committed is applied
        return [(s.id, s.ttl_ms) for s in self.book.sessions()]

    async def _expire(self, sid: str) -> None:
        # NotLeaderError ends the timers' step: the next leader starts every clock afresh.
        await self.write([{"v": "session-destroy", "s": sid}], timeout=10.0)


class Compacted(KvError):
    def __init__(self, index: int, floor: int):
        super().__init__(f"index {index} is compacted: changes are kept after index {floor}",
                         410)
        self.floor = floor
