"""asyncio over the DB-API, in the manner of aiosqlite; also `raftsql.aio` (docs/client.md).

    async with raftsql.aio.connect("http://h1:4001,http://h2:4001") as conn:
        cur = await conn.execute("SELECT name FROM users WHERE id = ?", (1,))
        print(await cur.fetchone())

Each connection runs the blocking DB-API connection (and its HTTP core) on one worker
thread of its own, so the event loop never waits on the network, and calls are served in
the order they were made. There is no second HTTP implementation: failover, idempotency
keys and error mapping are the DB-API's.

Tasks sharing one connection share its worker: a `batch()` open on it collects the writes
of every task that uses the connection meanwhile. Give a task its own connection when that
matters.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from raftsql.client import dbapi
from raftsql.client.dbapi import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    Parameters,
    ProgrammingError,
    Warning,
)
from raftsql.client.errors import ExceptionsAsAttributes

__all__ = ["connect", "Connection", "Cursor", "Batch", "Warning", "Error", "InterfaceError",
           "DatabaseError", "DataError", "OperationalError", "IntegrityError", "InternalError",
           "ProgrammingError", "NotSupportedError"]

T = TypeVar("T")
_FETCH_CHUNK = 256  # rows fetched per worker hop by `async for`


class _Pending(Generic[T]):
    """Something to `await`, or to use in `async with` (closed at the end), as aiosqlite's
    `connect()` and `execute()` are."""

    def __init__(self, make: Callable[[], Awaitable[T]]):
        self._make = make
        self._obj: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._make().__await__()

    async def __aenter__(self) -> T:
        self._obj = await self._make()
        return self._obj

    async def __aexit__(self, *exc: object) -> None:
        if self._obj is not None:
            await self._obj.close()  # type: ignore[attr-defined]


def connect(urls: str | Sequence[str] | None = None, *, consistency: str | None = None,
            timeout: float = 10.0, auth: tuple[str, str] | str | None = None,
            idempotency_keys: bool = True) -> _Pending[Connection]:
    """`conn = await connect(...)` or `async with connect(...) as conn:`; the arguments are
    those of raftsql.dbapi.connect."""

    async def make() -> Connection:
        conn = Connection()
        try:
            await conn._run(conn._open, urls, consistency, timeout, auth, idempotency_keys)
        except BaseException:
            conn._executor.shutdown(wait=False)  # no thread left behind by a failed connect
            raise
        return conn

    return _Pending(make)


class Connection(ExceptionsAsAttributes):
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raftsql-aio")
        self._conn: dbapi.Connection | None = None
        self._closed = False

    def _open(self, urls: Any, consistency: str | None, timeout: float, auth: Any,
              idempotency_keys: bool) -> None:
        self._conn = dbapi.connect(urls, consistency=consistency, timeout=timeout, auth=auth,
                                   idempotency_keys=idempotency_keys)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on this connection's worker thread."""
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed connection.")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    @property
    def sync(self) -> dbapi.Connection:
        """The DB-API connection underneath (use it only from the worker, through _run)."""
        if self._conn is None:
            raise ProgrammingError("the connection is not open")
        return self._conn

    @property
    def consistency(self) -> str | None:
        return self.sync.consistency

    @property
    def closed(self) -> bool:
        return self._closed

    def cursor(self) -> _Pending[Cursor]:
        async def make() -> Cursor:
            return Cursor(self, await self._run(self.sync.cursor))

        return _Pending(make)

    def execute(self, sql: str, parameters: Parameters = ()) -> _Pending[Cursor]:
        async def make() -> Cursor:
            return Cursor(self, await self._run(self.sync.execute, sql, parameters))

        return _Pending(make)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Parameters]
                    ) -> _Pending[Cursor]:
        async def make() -> Cursor:
            seq = list(seq_of_parameters)  # an iterator is drained here, not on the worker
            return Cursor(self, await self._run(self.sync.executemany, sql, seq))

        return _Pending(make)

    async def commit(self) -> None:
        await self._run(self.sync.commit)

    async def rollback(self) -> None:
        await self._run(self.sync.rollback)

    def batch(self) -> Batch:
        return Batch(self)

    async def close(self) -> None:
        if self._closed:
            return
        if self._conn is not None:
            await self._run(self._conn.close)
        self._closed = True
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Cursor:
    def __init__(self, connection: Connection, cursor: dbapi.Cursor):
        self.connection = connection
        self._cursor = cursor

    # plain attributes: set on the worker by the call that was awaited, read here after it

    @property
    def description(self) -> tuple[tuple[Any, ...], ...] | None:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Parameters = ()) -> Cursor:
        await self.connection._run(self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Parameters]) -> Cursor:
        seq = list(seq_of_parameters)
        await self.connection._run(self._cursor.executemany, sql, seq)
        return self

    async def fetchone(self) -> tuple[Any, ...] | None:
        return await self.connection._run(self._cursor.fetchone)

    async def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        return await self.connection._run(self._cursor.fetchmany, size)

    async def fetchall(self) -> list[tuple[Any, ...]]:
        return await self.connection._run(self._cursor.fetchall)

    def __aiter__(self) -> AsyncIterator[tuple[Any, ...]]:
        return self._rows()

    async def _rows(self) -> AsyncIterator[tuple[Any, ...]]:
        while rows := await self.fetchmany(max(self.arraysize, _FETCH_CHUNK)):
            for r in rows:
                yield r

    async def close(self) -> None:
        if not self.connection.closed:
            await self.connection._run(self._cursor.close)

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Batch:
    """`async with conn.batch() as b:` — raftsql.dbapi.Batch on the worker: the writes
    executed on this connection inside the block are sent as one atomic request at its end
    (nothing if it raises); reads run at once and do not see them."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self._batch: dbapi.Batch | None = None

    @property
    def results(self) -> list[tuple[int, int | None]]:
        return self._batch.results if self._batch is not None else []

    def execute(self, sql: str, parameters: Parameters = ()) -> _Pending[Cursor]:
        return self.connection.execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Parameters]
                    ) -> _Pending[Cursor]:
        return self.connection.executemany(sql, seq_of_parameters)

    async def __aenter__(self) -> Batch:
        self._batch = await self.connection._run(self.connection.sync.batch)
        await self.connection._run(self._batch.__enter__)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._batch is not None
        # On the worker, the thread whose writes the batch collected.
        await self.connection._run(self._batch.__exit__, exc_type, exc, tb)
