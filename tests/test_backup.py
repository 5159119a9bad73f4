"""GET /db/backup and `raftsql backup`: a SQLite file or an SQL dump of the user's database,
from the leader (a follower streams the leader's) or, with ?noleader, from the node asked."""

from __future__ import annotations

import asyncio
import gzip
import os
import sqlite3
import sys

import apsw
import pytest

from raftsql.sql import backup, load
from tests.fakes import FakeFollower, FakeNode, Member, fake_app

SCHEMA = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, score REAL, data BLOB)",
    "CREATE TABLE \"odd name\"(\"select\" TEXT)",
    "CREATE INDEX t_name ON t(name)",
    "CREATE VIEW v AS SELECT name FROM t",
    "CREATE TRIGGER trg AFTER INSERT ON t BEGIN INSERT INTO \"odd name\" VALUES(new.name); END",
]
ROWS = [
    ["INSERT INTO t(name, score, data) VALUES(?, ?, ?)", "it's", 0.1, None],
    ["INSERT INTO t(name, score, data) VALUES(?, ?, x'00ff')", None, 1e300],
    ["INSERT INTO t(name, score, data) VALUES(?, ?, ?)", "ünï\ncode", -3, ""],
]


class Pair:
    def __init__(self, leader: FakeNode, follower: FakeFollower, lc, fc, lurl: str, furl: str):
        self.leader, self.follower, self.lc, self.fc = leader, follower, lc, fc
        self.lurl, self.furl = lurl, furl


@pytest.fixture
async def pair(tmp_path, aiohttp_server, aiohttp_client):
    leader = FakeNode(tmp_path / "l")
    follower = FakeFollower(tmp_path / "f", leader)
    lserver = await aiohttp_server(fake_app(leader))
    fserver = await aiohttp_server(fake_app(follower))
    leader.api_url = str(lserver.make_url("")).rstrip("/")
    follower.api_url = str(fserver.make_url("")).rstrip("/")
    leader.peers = [Member(follower.node_id, follower.api_url, follower.raft_addr)]
    yield Pair(leader, follower, await aiohttp_client(lserver), await aiohttp_client(fserver),
               leader.api_url, follower.api_url)
    leader.close()
    follower.close()


@pytest.fixture(autouse=True)
def _dirs(tmp_path):
    (tmp_path / "l").mkdir()
    (tmp_path / "f").mkdir()


async def fill(client) -> None:
    resp = await client.post("/db/execute", json=SCHEMA + ROWS)
    assert resp.status == 200 and "error" not in await resp.text()


def contents(path: str) -> tuple[list, dict]:
    """The schema and every row of each table of the database at `path`."""
    db = apsw.Connection(path)
    try:
        schema = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        rows = {name: db.execute(f'SELECT * FROM "{name}"').fetchall()
                for kind, name, _ in schema if kind == "table"}
        return schema, rows
    finally:
        db.close()


async def test_a_file_backup_is_the_users_database_and_nothing_else(pair, tmp_path) -> None:
    await fill(pair.lc)
    resp = await pair.lc.get("/db/backup")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/octet-stream"
    data = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(data)
    assert data.startswith(b"SQLite format 3\x00")
    path = str(tmp_path / "b.db")
    with open(path, "wb") as f:
        f.write(data)
    assert contents(path) == contents(pair.leader.database.path)
    db = apsw.Connection(path)
    assert db.execute("PRAGMA application_id").get == 0  # raftsql's applied index: not there
    assert db.execute("PRAGMA journal_mode").get == "delete"  # one file, opens anywhere
    assert db.execute("PRAGMA integrity_check").get == "ok"
    db.close()
    assert not [n for n in os.listdir(tmp_path / "l") if ".backup-" in n]  # staging is gone


async def test_a_follower_streams_the_leaders_backup(pair) -> None:
    await fill(pair.lc)  # the follower's own database stays empty
    direct = await (await pair.lc.get("/db/backup")).read()
    resp = await pair.fc.get("/db/backup")
    assert resp.status == 200
    forwarded = await resp.read()
    assert len(forwarded) == len(direct) == int(resp.headers["Content-Length"])
    assert ("barrier:linearizable", None) in pair.leader.calls  # the leader made it consistent


async def test_noleader_backs_up_the_node_asked_at_once(pair, tmp_path) -> None:
    await fill(pair.lc)
    resp = await pair.fc.get("/db/backup?noleader")
    assert resp.status == 200
    path = str(tmp_path / "mine.db")
    with open(path, "wb") as f:
        f.write(await resp.read())
    assert contents(path) == ([], {})  # the follower's copy, which has nothing
    assert not any(c[0].startswith("barrier") for c in pair.follower.calls)


async def test_a_dump_loads_into_sqlite_as_the_same_database(pair, tmp_path) -> None:
    await fill(pair.lc)
    resp = await pair.fc.get("/db/backup?fmt=sql")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/sql"
    script = await resp.text()
    assert script.startswith("BEGIN TRANSACTION;\n") and script.endswith("COMMIT;\n")
    path = str(tmp_path / "loaded.db")
    db = apsw.Connection(path)
    db.execute(script)
    db.close()
    assert contents(path) == contents(pair.leader.database.path)


async def test_a_dump_of_some_tables(pair) -> None:
    await fill(pair.lc)
    script = await (await pair.lc.get("/db/backup?fmt=sql&tables=odd name")).text()
    assert 'CREATE TABLE "odd name"' in script and "CREATE TABLE t(" not in script
    db = apsw.Connection(":memory:")
    db.execute(script)
    assert db.execute('SELECT * FROM "odd name" ORDER BY 1').fetchall() == [
        (None,), ("it's",), ("ünï\ncode",)]  # as the trigger wrote them


async def test_the_config_stores_table_is_in_a_file_backup_not_in_a_dump(tmp_path) -> None:
    db_path = str(tmp_path / "kv.db")
    db = apsw.Connection(db_path)
    db.execute("CREATE TABLE raftsql_kv(key TEXT PRIMARY KEY, value BLOB); "
               "INSERT INTO raftsql_kv VALUES('a', x'01'); CREATE TABLE mine(x)")
    db.close()
    out = tmp_path / "dump.sql"
    backup.dump_to(db_path, str(out))
    assert "raftsql_kv" not in out.read_text() and "CREATE TABLE mine(x);" in out.read_text()
    backup.copy(db_path, str(tmp_path / "copy.db"))
    assert contents(str(tmp_path / "copy.db"))[1]["raftsql_kv"] == [("a", b"\x01")]


async def test_compressed_backups_are_gzip_of_the_same_bytes(pair) -> None:
    await fill(pair.lc)
    plain = await (await pair.lc.get("/db/backup?fmt=sql")).read()
    resp = await pair.fc.get("/db/backup?fmt=sql&compress")
    assert resp.status == 200
    assert gzip.decompress(await resp.read()) == plain
    binary = await (await pair.lc.get("/db/backup?compress&vacuum")).read()
    assert gzip.decompress(binary).startswith(b"SQLite format 3\x00")


@pytest.mark.parametrize("query, message", [
    ("fmt=xml", "invalid backup format 'xml': binary, delete or sql"),
    ("tables=t", "tables is only for fmt=sql"),
    ("fmt=sql&tables=t,nope", "no such table: nope"),
    ("timeout=soon", "timeout is not a valid duration"),
])
async def test_bad_backup_requests_are_400s(pair, query: str, message: str) -> None:
    await fill(pair.lc)
    for client in (pair.lc, pair.fc):
        resp = await client.get(f"/db/backup?{query}")
        assert (resp.status, await resp.text()) == (400, message + "\n")


async def test_stale_staging_files_are_removed_when_a_node_starts(tmp_path) -> None:
    node = FakeNode(tmp_path / "l")
    stale = backup.temp_path(node.database.path, "left-by-a-crash")
    open(stale, "wb").close()
    fake_app(node)
    assert not os.path.exists(stale)
    node.close()


async def raftsql(*args: str) -> tuple[int, str]:
    """Run the `raftsql` command; its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "raftsql", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert out == b""
    return proc.returncode or 0, err.decode()


async def test_the_backup_command_writes_the_file_whole(pair, tmp_path) -> None:
    await fill(pair.lc)
    out = str(tmp_path / "cli.db")
    assert await raftsql("backup", f"127.0.0.1:1,{pair.furl}", out) == (0, "")  # quiet
    assert contents(out) == contents(pair.leader.database.path)
    assert not os.path.exists(out + ".part")
    dump = str(tmp_path / "cli.sql.gz")
    assert await raftsql("backup", pair.lurl, dump, "--sql", "--compress") == (0, "")
    with gzip.open(dump, "rt") as f:
        assert "CREATE TABLE t(" in f.read()


async def test_the_backup_command_says_what_failed(pair, tmp_path) -> None:
    out = str(tmp_path / "never.db")
    code, err = await raftsql("backup", "127.0.0.1:1", out)
    assert code == 1 and "no node answered: http://127.0.0.1:1:" in err
    code, err = await raftsql("backup", pair.lurl, str(tmp_path / "no/dir/x"))
    assert code == 1 and "No such file or directory" in err
    assert not os.path.exists(out)


# ---- POST /db/load and `raftsql restore` ----------------------------------------------


def sqlite3_dump(tmp_path) -> str:
    """What sqlite3's .dump writes of a database made outside raftsql."""
    path = str(tmp_path / "outside.db")
    db = sqlite3.connect(path)
    db.executescript(";".join(SCHEMA[:2] + ["INSERT INTO t(name, score) VALUES('a;b', 2.5)",
                                            "INSERT INTO t(name, data) VALUES(NULL, x'01')"]))
    db.commit()
    script = "PRAGMA foreign_keys=OFF;\n" + "\n".join(db.iterdump()) + "\n"
    db.close()
    return script


async def test_a_dump_loads_through_a_follower_as_one_transaction(pair, tmp_path) -> None:
    script = sqlite3_dump(tmp_path)
    assert script.startswith("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;")
    resp = await pair.fc.post("/db/load", data=script.encode())
    assert resp.status == 200 and "error" not in await resp.text()
    assert contents(pair.leader.database.path) == contents(str(tmp_path / "outside.db"))


async def test_a_dump_that_fails_changes_nothing(pair, tmp_path) -> None:
    await fill(pair.lc)
    before = contents(pair.leader.database.path)
    script = sqlite3_dump(tmp_path)  # its tables exist: the first CREATE fails
    resp = await pair.lc.post("/db/load", data=script.encode())
    assert resp.status == 200
    assert (await resp.json())["results"] == [{"error": 'table "odd name" already exists'}]
    assert contents(pair.leader.database.path) == before


async def test_a_backup_dump_round_trips_through_load(pair, tmp_path, aiohttp_server,
                                                      aiohttp_client) -> None:
    await fill(pair.lc)
    script = await (await pair.lc.get("/db/backup?fmt=sql")).read()
    fresh = FakeNode(tmp_path / "f", node_id="n9")
    client = await aiohttp_client(await aiohttp_server(fake_app(fresh)))
    resp = await client.post("/db/load", data=script)
    assert resp.status == 200 and "error" not in await resp.text()
    assert contents(fresh.database.path) == contents(pair.leader.database.path)
    fresh.close()


@pytest.mark.parametrize("body, status, message", [
    (b"SQLite format 3\x00" + bytes(100), 400, "not a SQLite database: "),
    (b"\xff\xfe", 400, "the body is neither a SQLite file nor SQL text (UTF-8)"),
    (b"  \n", 400, "empty SQL dump"),
    (b"BEGIN TRANSACTION;\nCOMMIT;\n", 400, "empty SQL dump"),
])
async def test_loads_that_are_refused_say_why(pair, body: bytes, status: int,
                                              message: str) -> None:
    resp = await pair.fc.post("/db/load", data=body)
    assert resp.status == status and message in await resp.text()
    assert contents(pair.leader.database.path) == ([], {})


async def test_a_sqlite_file_loads_through_a_follower_in_chunks(pair, tmp_path,
                                                                monkeypatch) -> None:
    monkeypatch.setattr(load, "CHUNK_BYTES", 16 * 1024)
    await fill(pair.lc)  # replaced whole
    path = str(tmp_path / "outside.db")
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE big (id INTEGER PRIMARY KEY, pad TEXT);"
                     "CREATE INDEX big_pad ON big(pad);")
    db.executemany("INSERT INTO big(pad) VALUES (?)", [(f"{i:06d}" * 50,) for i in range(500)])
    db.commit()
    db.close()
    assert os.path.getsize(path) > 10 * 16 * 1024
    with open(path, "rb") as f:
        resp = await pair.fc.post("/db/load", data=f)
    assert resp.status == 200, await resp.text()
    assert (await resp.json()) == {"results": []}
    assert contents(pair.leader.database.path) == contents(path)
    resp = await pair.fc.post("/db/load", data=b"SQLite format 3\x00" + os.urandom(5000))
    assert resp.status == 400 and "not a SQLite database" in await resp.text()
    assert contents(pair.leader.database.path) == contents(path)


async def test_a_resent_load_with_its_key_applies_once(pair, tmp_path) -> None:
    headers = {"X-Raftsql-Idempotency-Key": "load-1"}
    script = sqlite3_dump(tmp_path).encode()
    first = await pair.lc.post("/db/load", data=script, headers=headers)
    again = await pair.fc.post("/db/load", data=script, headers=headers)
    assert first.status == again.status == 200
    assert await first.read() == await again.read()  # the first outcome, not "already exists"
    assert again.headers["X-Raftsql-Idempotent-Replay"] == "true"


async def test_the_restore_command_loads_a_dump_or_says_why_not(pair, tmp_path) -> None:
    dump = tmp_path / "in.sql"
    dump.write_text(sqlite3_dump(tmp_path))
    assert await raftsql("restore", f"127.0.0.1:1,{pair.furl}", str(dump)) == (0, "")
    assert contents(pair.leader.database.path) == contents(str(tmp_path / "outside.db"))
    code, err = await raftsql("restore", pair.lurl, str(dump))
    assert (code, err) == (1, "raftsql restore: the dump was not loaded (nothing of it was "
                              "applied): table \"odd name\" already exists\n")
    code, err = await raftsql("restore", pair.lurl, str(tmp_path / "missing.sql"))
    assert code == 1 and "missing.sql: No such file or directory" in err


async def test_an_upload_the_disk_cannot_hold_is_refused(pair, monkeypatch) -> None:
    import shutil

    from raftsql.http.rqlite import db as routes

    usage = shutil.disk_usage("/")
    monkeypatch.setattr(routes.shutil, "disk_usage",
                        lambda path: usage._replace(free=routes.DISK_RESERVE + 1000))
    resp = await pair.lc.post("/db/load", data=b"SQLite format 3\x00" + bytes(10_000))
    assert resp.status == 507 and "free disk space" in await resp.text()
    assert contents(pair.leader.database.path) == ([], {})
