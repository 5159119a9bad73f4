"""The database's read side: a pool of read-only connections, used from any thread."""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any

import apsw

from raftsql.errors import NodeStoppedError
from raftsql.sql.command import ReadOptions, StatementResult
from raftsql.sql.session import Session, run_reads


class Readers:
    """Up to `size` read-only connections to the database at `path`, opened as needed.
    `fk`: they report foreign_keys as this node's --fk says."""

    def __init__(self, path: str, size: int, fk: bool) -> None:
        self._path = path
        self._fk = fk
        self._free: queue.SimpleQueue[Session] = queue.SimpleQueue()
        self._count = 0
        self._size = size
        self._lock = threading.Lock()
        self._closed = False

    def query(self, stmts: list[Any], options: ReadOptions) -> list[StatementResult]:
        """Run reads on a connection of the pool, waiting for one if all are busy.

        A statement that writes fails with rqlite's "attempt to change database via query
        operation". With `transaction` the reads share one snapshot and stop at the first error.
        """
        session = self._acquire(wait=True)
        assert session is not None
        try:
            return run_reads(session, stmts, options)
        finally:
            self._release(session)

    def query_within(self, stmts: list[Any], options: ReadOptions, seconds: float
                     ) -> list[StatementResult] | None:
        """query(), for a caller that must not be held up longer than `seconds` (an event
        loop): None if it would take longer, or if no read connection is free right now."""
        session = self._acquire(wait=False)
        if session is None:
            return None
        budget = session.limits
        budget.start(seconds)
        try:
            results = run_reads(session, stmts, options)
            return None if budget.spent else results  # spent: a statement was interrupted
        finally:
            budget.stop()
            self._release(session)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._free.get_nowait().conn.close()

    def _acquire(self, wait: bool) -> Session | None:
        if self._closed:
            raise NodeStoppedError("store not open")
        with contextlib.suppress(queue.Empty):
            return self._free.get_nowait()
        with self._lock:
            grow = self._count < self._size
            self._count += grow
        if not grow:
            return self._free.get() if wait else None
        try:
            return self._open()
        except BaseException:
            with self._lock:
                self._count -= 1
            raise

    def _open(self) -> Session:
        conn = apsw.Connection(self._path, flags=apsw.SQLITE_OPEN_READONLY)
        if self._fk:
            conn.execute("PRAGMA foreign_keys=ON")  # so that reading the pragma says so
        return Session(conn, writer=False)

    def _release(self, session: Session) -> None:
        if self._closed:
            session.conn.close()
        else:
            self._free.put(session)
