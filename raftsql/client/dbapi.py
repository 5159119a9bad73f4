"""PEP 249 (DB-API 2.0) over a raftsql cluster; also `raftsql.dbapi` (docs/client.md).

    conn = raftsql.dbapi.connect("http://h1:4001,http://h2:4001")
    cur = conn.execute("SELECT name FROM users WHERE id = ?", (1,))

Each statement is one request to `/db/request`: the server asks SQLite whether it reads
(served at the connection's consistency level) or writes (through the Raft log). There are
no client-side transactions, as with pyrqlite: every statement commits on its own, so
`commit()` and `rollback()` do nothing. What must be atomic goes in one request:
`executemany`, or the writes of a `with conn.batch():` block.

Writes carry an idempotency key and are resent through a failover (raftsql.client.http):
a retried write is applied at most once and returns the first outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from raftsql.client.errors import (
    DatabaseError,
    DataError,
    Error,
    ExceptionsAsAttributes,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
    check_results,
    unavailable_error,
)
from raftsql.client.http import LEVELS, Cluster, Unavailable
from raftsql.client.values import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
    is_dml,
    is_insert,
    is_read,
    row,
    statement,
)

__all__ = [
    "apilevel", "threadsafety", "paramstyle", "connect", "Connection", "Cursor", "Batch",
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
    "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
    "STRING", "BINARY", "NUMBER", "DATETIME", "ROWID", "Date", "Time", "Timestamp",
    "DateFromTicks", "TimeFromTicks", "TimestampFromTicks", "Binary",
]

apilevel = "2.0"
threadsafety = 2  # threads may share a connection (a lock serialises it), not cursors
paramstyle = "qmark"  # and a mapping for :name, @name, $name

Parameters = Sequence[Any] | Mapping[str, Any] | None


def connect(urls: str | Sequence[str] | None = None, *, consistency: str | None = None,
            timeout: float = 10.0, auth: tuple[str, str] | str | None = None,
            idempotency_keys: bool = True) -> Connection:
    """A connection to the cluster reached through `urls` (one or more seeds, "a,b" or a
    list; RAFTSQL_URL or http://127.0.0.1:4001 when none). `consistency`: the read level
    (none, weak, linearizable, strong; the cluster's default when None). `timeout`: seconds
    a request may take, failovers included. `auth`: (user, password), "user:password", or
    the URLs' userinfo. `idempotency_keys`: send a key with every write, so that it can be
    resent through a failover and still apply once (False: faster writes, but a write whose
    outcome is unknown raises OperationalError instead). Nothing is sent until the first
    statement."""
    return Connection(urls, consistency=consistency, timeout=timeout, auth=auth,
                      idempotency_keys=idempotency_keys)


class Connection(ExceptionsAsAttributes):
    def __init__(self, urls: str | Sequence[str] | None = None, *,
                 consistency: str | None = None, timeout: float = 10.0,
                 auth: tuple[str, str] | str | None = None, idempotency_keys: bool = True):
        if consistency is not None and consistency not in LEVELS:
            raise ProgrammingError(f"consistency must be one of {', '.join(LEVELS)} or None, "
                                   f"not {consistency!r}")
        try:
            self._cluster = Cluster(urls, timeout=timeout, auth=auth,
                                    idempotent_writes=idempotency_keys)
        except ValueError as e:
            raise InterfaceError(str(e)) from None
        self.consistency = consistency
        self._lock = threading.RLock()  # the Cluster is not thread-safe
        self._batches: dict[int, Batch] = {}  # a batch collects only its own thread's writes
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def cursor(self) -> Cursor:
        self._check_open()
        return Cursor(self)

    def execute(self, sql: str, parameters: Parameters = ()) -> Cursor:
        """A new cursor that has executed `sql` (as sqlite3's shortcut)."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Parameters]) -> Cursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    def commit(self) -> None:
        """Nothing to do: every statement was committed when it returned."""
        self._check_open()

    def rollback(self) -> None:
        """Nothing to undo: there are no open transactions (each statement, executemany and
        batch commits as it returns); use a batch to make writes all-or-nothing."""
        self._check_open()

    def batch(self) -> Batch:
        """`with conn.batch() as b:` defers the writes executed inside and sends them as one
        atomic request when the block ends without an exception (see Batch)."""
        self._check_open()
        return Batch(self)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._cluster.close()

    def __enter__(self) -> Connection:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        # Closes, unlike sqlite3's (which commits): there is no transaction to end.
        self.close()

    # ---- used by cursors and batches

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed connection.")

    def _current_batch(self) -> Batch | None:
        return self._batches.get(threading.get_ident())

    def _send(self, statements: list[Any], *, writes: bool = False,
              transaction: bool = False) -> list[dict[str, Any]]:
        """One request; its per-statement results, or the mapped error of the first failure.
        `writes`: to /db/execute (through the log) rather than /db/request."""
        with self._lock:
            self._check_open()
            try:
                if writes:
                    response = self._cluster.execute(statements, transaction=transaction)
                else:
                    response = self._cluster.request(statements, level=self.consistency,
                                                     transaction=transaction)
            except Unavailable as e:
                raise unavailable_error(e) from None
        return check_results(response, len(statements))


class Cursor:
    """Results are read whole with each statement's answer; fetching only walks them."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.arraysize = 1
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None  # as sqlite3: None until an INSERT succeeds
        self._rows: list[tuple[Any, ...]] = []
        self._pos = 0
        self._closed = False

    def execute(self, sql: str, parameters: Parameters = ()) -> Cursor:
        self._check_open()
        stmt = statement(sql, parameters)
        batch = self.connection._current_batch()
        if batch is not None and not is_read(sql):
            batch._add(sql, [stmt])
            self._forget()
            return self
        [result] = self.connection._send([stmt])
        self._take(sql, result)
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Parameters]) -> Cursor:
        """All in ONE request, applied as one transaction (one Raft entry): every row or
        none; the first failing statement's error is raised."""
        self._check_open()
        if is_read(sql):
            raise ProgrammingError("executemany() can only execute DML statements.")
        stmts = [statement(sql, p) for p in seq_of_parameters]
        self._forget()
        batch = self.connection._current_batch()
        if batch is not None:
            batch._add(sql, stmts)
            return self
        results = self.connection._send(stmts, writes=True, transaction=True) if stmts else []
        self.rowcount = sum(r.get("rows_affected", 0) for r in results)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        self._check_open()
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        self._check_open()
        n = self.arraysize if size is None else size
        out = self._rows[self._pos:self._pos + max(n, 0)]
        self._pos += len(out)
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._check_open()
        out = self._rows[self._pos:]
        self._pos = len(self._rows)
        return out

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self

    def __next__(self) -> tuple[Any, ...]:
        r = self.fetchone()
        if r is None:
            raise StopIteration
        return r

    def setinputsizes(self, sizes: Any) -> None:
        """Nothing to prepare: parameters travel as JSON."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """Nothing to prepare: values come back whole."""

    def close(self) -> None:
        self._closed = True
        self._rows = []

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        self.connection._check_open()

    def _forget(self) -> None:
        self.description = None
        self.rowcount = -1
        self._rows, self._pos = [], 0

    def _take(self, sql: str, result: dict[str, Any]) -> None:
        self._forget()
        if "columns" in result:
            types = result.get("types") or [""] * len(result["columns"])
            self.description = tuple((name, t, None, None, None, None, None)
                                     for name, t in zip(result["columns"], types, strict=False))
            self._rows = [row(v) for v in result.get("values") or []]
            return
        if is_dml(sql):
            self.rowcount = result.get("rows_affected", 0)  # zero values are omitted
        if is_insert(sql):
            self.lastrowid = result.get("last_insert_id", 0)


class Batch:
    """Writes collected in a `with conn.batch() as b:` block, sent together as one atomic
    `/db/execute?transaction` request (one Raft entry) when the block ends.

    - Only this thread's writes on this connection are collected; reads run at once and do
      not see the pending writes (they have not been sent).
    - If the block raises, nothing is sent. If a statement fails, its mapped error is raised
      and none of the batch is applied.
    - Afterwards `b.results` holds (rowcount, lastrowid) per statement, in order.
    """

    def __init__(self, connection: Connection):
        self.connection = connection
        self.results: list[tuple[int, int | None]] = []
        self._sqls: list[str] = []
        self._statements: list[Any] = []

    def execute(self, sql: str, parameters: Parameters = ()) -> Cursor:
        return self.connection.execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Parameters]) -> Cursor:
        return self.connection.executemany(sql, seq_of_parameters)

    def __enter__(self) -> Batch:
        me = threading.get_ident()
        with self.connection._lock:
            if me in self.connection._batches:
                raise ProgrammingError("a batch is already open on this connection")
            self.connection._batches[me] = self
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        with self.connection._lock:
            self.connection._batches.pop(threading.get_ident(), None)
        if exc_type is not None or not self._statements:
            return
        results = self.connection._send(self._statements, writes=True, transaction=True)
        self.results = [_outcome(sql, r) for sql, r in zip(self._sqls, results, strict=True)]

    def _add(self, sql: str, statements: list[Any]) -> None:
        self._sqls.extend([sql] * len(statements))
        self._statements.extend(statements)


def _outcome(sql: str, result: dict[str, Any]) -> tuple[int, int | None]:
    rowcount = result.get("rows_affected", 0) if is_dml(sql) else -1
    return rowcount, (result.get("last_insert_id", 0) if is_insert(sql) else None)
