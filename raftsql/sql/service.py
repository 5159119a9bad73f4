"""The SQL service of a node: writes through the log, reads at rqlite's consistency levels.

The driver replicates opaque commands and knows nothing of SQL; this is where a request
becomes a `Command` (the leader fixes its time, seed, foreign keys and step limit, so apply
is deterministic) and where a read level becomes a barrier on the driver, then a query on
the database's read connections (rqlite-api.md §2.1).
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from raftsql.errors import RequestError, StaleReadError
from raftsql.sql import backup, load
from raftsql.sql.classify import Classifier
from raftsql.sql.command import Command, Op, ReadOptions, StatementResult
from raftsql.sql.database import Database
from raftsql.sql.session import steps_for

KEY_WINDOW = 600.0  # seconds an idempotency key is remembered...
KEY_CAPACITY = 100_000  # ...and for how many log entries, at most
_LOAD_WINDOW = 4  # chunks of a load in flight


class Level(enum.StrEnum):
    NONE = "none"
    WEAK = "weak"
    LINEARIZABLE = "linearizable"
    STRONG = "strong"
    AUTO = "auto"  # weak on a voter, none on a read replica


class Replicator(Protocol):
    """What the service needs of the driver (raftsql.node.Node)."""

    is_leader: bool

    async def propose(self, data: bytes, timeout: float = 30.0) -> tuple[Any, int]: ...
    async def read_barrier(self, linearizable: bool, timeout: float = 10.0) -> None: ...
    async def query(self, *request: Any) -> Any: ...
    def last_contact(self) -> float | None: ...
    def status(self) -> dict[str, Any]: ...


class SqlService:
    def __init__(self, node: Replicator, database: Database, *, fk: bool = False,
                 key_window: float = KEY_WINDOW, key_capacity: int = KEY_CAPACITY) -> None:
        """`key_window` (seconds) and `key_capacity`: how long, and how many, idempotency
        keys are remembered (raftsql/sql/keys.py); each keyed command carries them."""
        self._node = node
        self.database = database
        self._fk = fk
        self._key_window_ms = int(key_window * 1000)
        self._key_capacity = key_capacity
        self._classifier = Classifier(database.path)
        backup.remove_stale(database.path)

    def close(self) -> None:
        self._classifier.close()

    async def execute(self, statements: list[Any], *, op: Op = Op.EXECUTE,
                      transaction: bool = False, timeout: float = 30.0,
                      db_timeout: float = 0.0, qualify: bool = False, key: str | None = None,
                      payload: bytes = b"") -> tuple[list[StatementResult], int]:
        """Through the log, on the leader (NotLeaderError, with nothing proposed, elsewhere):
        the results and the entry's index. With an idempotency `key`, applied at most once
        within the window: a repeat's results are the first's (a `Replayed` list)."""
        keyed = {} if key is None else {"key": key, "key_window_ms": self._key_window_ms,
                                        "key_capacity": self._key_capacity}
        command = Command.new(op, statements, transaction, fk=self._fk,
                              max_steps=steps_for(db_timeout), qualify=qualify,
                              payload=payload, **keyed)
        result, index = await self._node.propose(command.encode(), timeout)
        if isinstance(result, Exception):
            raise result
        return result, index

    async def read(self, statements: list[Any], *, level: Level, voter: Callable[[], bool],
                   options: ReadOptions, timeout: float, linearizable_timeout: float,
                   freshness: float = 0.0, freshness_strict: bool = False,
                   ) -> tuple[list[StatementResult], int]:
        """Reads at `level`; with them, the Raft index of a strong read's entry (else 0).

        none: this node's copy, refused as `stale read` when `freshness` is set and the leader
        was last heard from longer ago (the leader itself ignores freshness); weak: the node
        must believe it leads; linearizable: ReadIndex, then wait until applied; strong:
        through the log; auto: weak on a voter, none on a read replica (`voter()` says).
        """
        if level is Level.AUTO:
            level = Level.WEAK if voter() else Level.NONE
        if level is Level.NONE:
            if freshness > 0 and not self._node.is_leader and self._stale(freshness,
                                                                          freshness_strict):
                raise StaleReadError()
            return await self._node.query(statements, options), 0
        if level is Level.STRONG:
            return await self.execute(statements, op=Op.QUERY, transaction=options.transaction,
                                      timeout=timeout, db_timeout=options.db_timeout,
                                      qualify=options.qualify)
        linearizable = level is Level.LINEARIZABLE
        await self._node.read_barrier(linearizable, linearizable_timeout if linearizable
                                      else timeout)
        return await self._node.query(statements, options), 0

    def _stale(self, freshness: float, strict: bool) -> bool:
        """rqlite's freshness test on a node that does not lead: the leader was heard from
        longer than `freshness` ago; or, with `strict`, this node has not applied all it
        knows to be committed and what it applied last was written by the leader longer ago
        than that (leader's clock against ours, as in rqlite)."""
        contact = self._node.last_contact()
        if contact is None or contact > freshness:
            return True
        if not strict:
            return False
        raft = self._node.status()["raft"]
        if raft["applied_index"] >= raft["commit_index"]:
            return False
        written = self.database.applied_time_ms
        return written is None or time.time() - written / 1000 > freshness

    async def load_file(self, path: str, *, timeout: float) -> int:
        """Replace the database with the SQLite file at `path` through the log, a chunk per
        entry (raftsql/sql/load.py), read from disk a chunk at a time: the index of the last
        chunk's entry, at which every node replaced its database. RequestError (400, nothing
        changed) when the nodes refuse the file; NotLeaderError / LeadershipLostError if
        leadership moves (the chunks proposed so far are dropped by the next load)."""
        size, crc = await asyncio.to_thread(load.checksum, path)
        load_id = uuid.uuid4().hex
        window: list[asyncio.Task[tuple[list[StatementResult], int]]] = []
        index = 0
        try:
            with open(path, "rb") as f:
                for chunk in load.chunks(f, load_id, size, crc):
                    # A few chunks in flight: proposed in order, so logged in order.
                    window.append(asyncio.ensure_future(self.execute(
                        chunk.statements(), op=Op.LOAD, timeout=timeout, payload=chunk.data)))
                    if len(window) >= _LOAD_WINDOW:
                        index = self._loaded(await window.pop(0))
                while window:
                    index = self._loaded(await window.pop(0))
        finally:
            for task in window:
                task.cancel()
        return index

    @staticmethod
    def _loaded(outcome: tuple[list[StatementResult], int]) -> int:
        results, index = outcome
        if results:
            raise RequestError(400, results[0].error or "load refused")
        return index

    async def backup(self, path: str, *, dump: bool, tables: list[str] | None = None,
                     vacuum: bool = False, local: bool = False, timeout: float = 10.0) -> None:
        """Stage a backup at `path`: a SQLite file, or with `dump` an SQL script (of `tables`
        only, if given; KeyError names one that does not exist). On the leader after a
        linearizable barrier (NotLeaderError elsewhere), so it holds every write acknowledged
        before the call; with `local`, this node's copy as it is."""
        if not local:
            await self._node.read_barrier(True, timeout)
        db = self.database.path
        if dump:
            await asyncio.to_thread(backup.dump_to, db, path, tables)
        else:
            await asyncio.to_thread(backup.copy, db, path, vacuum=vacuum)

    # ---- reads or writes ----------------------------------------------------------

    def all_reads(self, statements: list[Any]) -> bool:
        """Whether every statement only reads (as SQLite says): /db/request then reads."""
        return self._classifier.all_reads(statements)

    def looks_like_read(self, stmt: Any) -> bool:
        return self._classifier.looks_like_read(stmt)
