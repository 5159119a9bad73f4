"""pyrqlite, unmodified, against the API on a real port (rqlite-api.md §4.1).

pyrqlite is synchronous (http.client), so it runs in a thread while the server runs on
the test's event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from tests.fakes import FakeFollower, FakeNode, fake_app

pyrqlite = pytest.importorskip("pyrqlite.dbapi2")


async def in_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


def connect(server, **kw):
    return pyrqlite.connect(host=server.host, port=server.port, **kw)


async def test_pyrqlite_round_trip(node, aiohttp_server) -> None:
    server = await aiohttp_server(fake_app(node))

    def session() -> None:
        conn = connect(server)
        cur = conn.cursor()
        cur.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, "
                    "born DATETIME, seen TIMESTAMP, day DATE, photo BLOB, score REAL)")
        cur.execute("INSERT INTO people(name, age, born, seen, day, photo, score) VALUES(?, ?, ?, ?, ?, ?, ?)",
                    ("O'Brien", 42, dt.datetime(2004, 2, 14, 7, 15, 0, 500000),
                     dt.datetime(2001, 1, 1, 12, 0, 0, 250), dt.date(1999, 12, 31), b"\x00\xffbin", 2.5))
        assert cur.lastrowid == 1
        cur.executemany("INSERT INTO people(name, age) VALUES(?, ?)", [("b", 1), ("c", 2)])
        cur.execute("SELECT id, name, age, born, seen, day, photo, score FROM people WHERE id = ?", (1,))
        assert [d[0] for d in cur.description] == ["id", "name", "age", "born", "seen", "day", "photo", "score"]
        row = cur.fetchone()
        assert tuple(row) == (1, "O'Brien", 42, "2004-02-14 07:15:00.5", dt.datetime(2001, 1, 1, 12, 0, 0, 250),
                              dt.date(1999, 12, 31), b"\x00\xffbin", 2.5)
        cur.execute("UPDATE people SET age = age + 1 WHERE age < 10")
        assert cur.rowcount == 2
        cur.execute("SELECT name FROM people WHERE age = 3")
        assert [tuple(r) for r in cur.fetchall()] == [("c",)]
        cur.execute("SELECT COUNT(*) FROM people WHERE 0")
        cur.execute("SELECT name FROM people WHERE 0")
        assert cur.description is not None and cur.fetchall() == []  # columns without rows
        cur.execute("DELETE FROM people WHERE name = 'b'")
        assert cur.rowcount == 1
        with pytest.raises(pyrqlite.Error):
            cur.execute("INSERT INTO nope VALUES(1)")
        cur.execute("SELECT x'414243' AS raw")  # the untyped-BLOB-as-text quirk
        assert cur.fetchone()[0] == "ABC"
        conn.close()

    await in_thread(session)


async def test_pyrqlite_detect_types_and_levels(node, aiohttp_server) -> None:
    server = await aiohttp_server(fake_app(node))

    def session() -> None:
        conn = connect(server, detect_types=pyrqlite.PARSE_DECLTYPES)
        cur = conn.cursor()
        cur.execute("CREATE TABLE ev (id INTEGER PRIMARY KEY, at TIMESTAMP, d DATE, dt DATETIME)")
        when = dt.datetime(2020, 5, 17, 1, 2, 3, 400000)
        cur.execute("INSERT INTO ev(at, d, dt) VALUES(?, ?, ?)", (when, when.date(), when))
        for level in ("none", "weak", "linearizable", "strong"):
            cur.execute("SELECT at, d, dt FROM ev", consistency=level)
            at, d, dtv = cur.fetchone()
            assert (at, d, dtv) == (when, when.date(), "2020-05-17 01:02:03.4")
        cur.execute("INSERT INTO ev(at) VALUES('2021-01-01 00:00:00')", queue=True, wait=True)
        cur.execute("SELECT COUNT(*) FROM ev")
        assert cur.fetchone()[0] == 2
        conn.close()

    await in_thread(session)


async def test_pyrqlite_follows_a_redirect_from_a_follower(tmp_path, aiohttp_server) -> None:
    leader = FakeNode(tmp_path, "n1")
    lserver = await aiohttp_server(fake_app(leader))
    leader.api_url = str(lserver.make_url("")).rstrip("/")
    follower = FakeFollower(tmp_path, leader, "n2")
    fserver = await aiohttp_server(fake_app(follower))

    def session() -> None:
        conn = connect(fserver)  # forwarded transparently: pyrqlite never sees the follower
        cur = conn.cursor()
        cur.execute("CREATE TABLE f(x)")
        cur.execute("INSERT INTO f VALUES(1)")
        cur.execute("SELECT x FROM f")
        assert cur.fetchall()[0][0] == 1
        conn.close()

    await in_thread(session)
    assert leader.database.query(["SELECT x FROM f"])[0].rows == [(1,)]
    leader.close()
    follower.close()
