"""raftsql.aio: the DB-API's behaviour through asyncio, on one real node (started once for
the module). Each connection's calls run on a worker thread of its own."""

from __future__ import annotations

import asyncio
import threading

import pytest

import raftsql
import raftsql.client.aio
from raftsql import aio

from .client_node import single_node, table_name


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    yield from single_node(tmp_path_factory)


@pytest.fixture
async def conn(url):
    c = await aio.connect(url, consistency="strong")
    yield c
    await c.close()


@pytest.fixture
async def table(conn) -> str:
    name = table_name()
    await conn.execute(f"CREATE TABLE {name}(id INTEGER PRIMARY KEY, u TEXT UNIQUE, b BLOB)")
    return name


async def count(conn, table: str) -> int:
    cur = await conn.execute(f"SELECT count(*) FROM {table}")
    return (await cur.fetchone())[0]


def test_short_name():
    assert aio is raftsql.client.aio and raftsql.aio is aio
    assert aio.Error is raftsql.dbapi.Error and aio.Connection.IntegrityError is \
        raftsql.dbapi.IntegrityError


async def test_connect_by_await_and_by_async_with(url):
    c = await aio.connect(url)
    assert await (await c.execute("SELECT 1")).fetchone() == (1,)
    await c.close()
    assert c.closed
    with pytest.raises(aio.ProgrammingError, match="closed"):
        await c.execute("SELECT 1")
    async with aio.connect(url) as c2:
        assert await (await c2.execute("SELECT 2")).fetchall() == [(2,)]
    assert c2.closed
    with pytest.raises(aio.ProgrammingError, match="consistency"):
        await aio.connect(url, consistency="sometimes")


async def test_calls_run_on_the_connections_own_thread(conn, monkeypatch):
    threads = set()
    real = conn.sync._send
    monkeypatch.setattr(conn.sync, "_send", lambda *a, **k: threads.add(
        threading.current_thread().name) or real(*a, **k))
    await asyncio.gather(*(conn.execute("SELECT ?", (i,)) for i in range(5)))
    assert len(threads) == 1 and threading.current_thread().name not in threads


async def test_execute_fetch_and_attributes(conn, table):
    cur = await conn.execute(f"INSERT INTO {table}(u, b) VALUES (?, ?)", ("a", b"\x00\xff"))
    assert (cur.rowcount, cur.lastrowid, cur.description) == (1, 1, None)
    cur = await conn.executemany(f"INSERT INTO {table}(u) VALUES (?)", [("b",), ("c",), ("d",)])
    assert cur.rowcount == 3
    cur = await conn.execute(f"SELECT u, b FROM {table} ORDER BY id")
    assert cur.rowcount == -1
    assert [d[:2] for d in cur.description] == [("u", "TEXT"), ("b", "BLOB")]
    assert await cur.fetchone() == ("a", b"\x00\xff")
    cur.arraysize = 2
    assert await cur.fetchmany() == [("b", None), ("c", None)]
    assert await cur.fetchall() == [("d", None)]
    assert await cur.fetchone() is None
    await cur.close()
    with pytest.raises(aio.ProgrammingError, match="closed cursor"):
        await cur.fetchone()


async def test_async_for_and_cursor_context(conn, table):
    await conn.executemany(f"INSERT INTO {table}(u) VALUES (?)", [(str(i),) for i in range(600)])
    async with conn.execute(f"SELECT u FROM {table} ORDER BY id") as cur:
        rows = [r async for r in cur]  # more rows than one worker hop fetches
    assert rows == [(str(i),) for i in range(600)]
    with pytest.raises(aio.ProgrammingError, match="closed cursor"):
        await cur.fetchone()
    async with conn.cursor() as cur2:
        assert await (await cur2.execute("SELECT 3")).fetchone() == (3,)


async def test_errors_are_the_dbapis(conn, table):
    await conn.execute(f"INSERT INTO {table}(u) VALUES ('a')")
    with pytest.raises(aio.IntegrityError, match="UNIQUE"):
        await conn.execute(f"INSERT INTO {table}(u) VALUES ('a')")
    with pytest.raises(aio.OperationalError, match="no such table"):
        await conn.execute("SELECT * FROM nowhere")
    with pytest.raises(aio.IntegrityError):
        await conn.executemany(f"INSERT INTO {table}(u) VALUES (?)", [("x",), ("a",)])
    assert await count(conn, table) == 1  # executemany: all or nothing


async def test_batch(conn, table):
    async with conn.batch() as b:
        await conn.execute(f"INSERT INTO {table}(u) VALUES ('a')")
        await b.executemany(f"INSERT INTO {table}(u) VALUES (?)", [("b",), ("c",)])
        assert await count(conn, table) == 0  # reads do not see pending writes
    assert b.results == [(1, 1), (1, 2), (1, 3)]
    assert await count(conn, table) == 3

    with pytest.raises(RuntimeError):
        async with conn.batch():
            await conn.execute(f"INSERT INTO {table}(u) VALUES ('d')")
            raise RuntimeError("no")
    with pytest.raises(aio.IntegrityError):
        async with conn.batch():
            await conn.execute(f"INSERT INTO {table}(u) VALUES ('e')")
            await conn.execute(f"INSERT INTO {table}(u) VALUES ('a')")
    assert await count(conn, table) == 3  # neither block applied anything


async def test_commit_rollback_and_close_twice(url):
    c = await aio.connect(url)
    await c.commit()
    await c.rollback()
    await c.close()
    await c.close()
