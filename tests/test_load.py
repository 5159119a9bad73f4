"""Loading a SQLite file through the log in chunks (raftsql/sql/load.py): every node replaces
its database at the last chunk's entry, and every failure is an error result that changes
nothing."""

from __future__ import annotations

import os

import apsw
import pytest

from raftsql.sql import load
from raftsql.sql.command import Command, Op
from raftsql.sql.database import Database
from tests.test_sqlite import one, rows, user_schema


def source_file(tmp_path, n: int = 300) -> str:
    path = str(tmp_path / "source.sqlite")
    conn = apsw.Connection(path)
    conn.execute("CREATE TABLE src (id INTEGER PRIMARY KEY, pad TEXT)")
    with conn:
        for i in range(n):
            conn.execute("INSERT INTO src(pad) VALUES (?)", ("p" * 500 + str(i),))
    conn.close()
    return path


def chunks_of(path: str, load_id: str) -> list[load.Chunk]:
    with open(path, "rb") as f:
        return list(load.chunks(f, load_id, *load.checksum(path)))


def entries(path: str, load_id: str = "L1", first: int = 10) -> list[tuple[int, bytes]]:
    return [(first + i, Command(Op.LOAD, chunk.statements(), payload=chunk.data).encode())
            for i, chunk in enumerate(chunks_of(path, load_id))]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(load, "CHUNK_BYTES", 32 * 1024)


def test_the_last_chunk_replaces_the_database(tmp_path, small_chunks):
    src = source_file(tmp_path)
    chunks = entries(src)
    assert len(chunks) > 3
    with Database(str(tmp_path / "db.sqlite")) as db:
        one(db, 9, ["CREATE TABLE old (x)"])
        results = db.apply(chunks[:-1])
        assert results == [[]] * (len(chunks) - 1)
        assert rows(db, "SELECT name FROM sqlite_master") == [("old",)]  # not yet
        assert db.apply(chunks[-1:]) == [[]]
        assert db.applied_index() == chunks[-1][0]
        assert rows(db, "SELECT count(*) FROM src") == [(300,)]
        assert user_schema(db.path)[0] == [("table", "src")]  # nothing of the load shows
        one(db, chunks[-1][0] + 1, ["INSERT INTO src(pad) VALUES ('after')"])
        assert rows(db, "SELECT count(*) FROM src") == [(301,)]


def test_a_load_survives_a_restart_and_a_snapshot_mid_way(tmp_path, small_chunks):
    src = source_file(tmp_path)
    chunks = entries(src)
    half = len(chunks) // 2
    with Database(str(tmp_path / "a.sqlite")) as a:
        a.apply(chunks[:half])
        a.snapshot(str(tmp_path / "snap.sqlite"))
    with Database(str(tmp_path / "a.sqlite")) as a:  # restarted
        a.recover(chunks[-1][0])
        assert a.apply(chunks[half:]) == [[]] * (len(chunks) - half)
        assert rows(a, "SELECT count(*) FROM src") == [(300,)]
    with Database(str(tmp_path / "b.sqlite")) as b:  # a new node, from the snapshot
        b.restore(str(tmp_path / "snap.sqlite"), chunks[half - 1][0])
        assert b.apply(chunks[half:])[-1] == []
        assert rows(b, "SELECT count(*) FROM src") == [(300,)]


def test_a_snapshot_by_size_waits_while_a_load_is_under_way(tmp_path, small_chunks):
    """The chunks so far are in the bookkeeping: a snapshot would copy them, and the next
    one again. Not for a load cut short and left behind, nor once it ended."""
    chunks = entries(source_file(tmp_path))
    with Database(str(tmp_path / "db.sqlite")) as db:
        assert not db.snapshot_deferred()
        db.apply(chunks[:2])
        assert db.snapshot_deferred()
        later = chunks[1][0] + load.IDLE_ENTRIES
        one(db, later, ["CREATE TABLE t (x)"])  # the leader that loaded is gone, say
        assert not db.snapshot_deferred()
    with Database(str(tmp_path / "db2.sqlite")) as db:
        db.apply(chunks[:-1])
        assert db.snapshot_deferred()
        db.apply(chunks[-1:])
        assert not db.snapshot_deferred()  # done: the snapshot may come


def test_a_chunk_out_of_order_ends_the_load_and_changes_nothing(tmp_path, small_chunks):
    chunks = entries(source_file(tmp_path))
    with Database(str(tmp_path / "db.sqlite")) as db:
        one(db, 9, ["CREATE TABLE old (x)"])
        skipped = chunks[:2] + [(chunks[2][0], chunks[3][1])] + chunks[4:]
        results = db.apply(skipped)
        assert "does not follow" in results[2][0].error
        assert all(r[0].error for r in results[3:])  # the rest of that load is refused too
        assert rows(db, "SELECT name FROM sqlite_master") == [("old",)]
        # A new load starts afresh.
        fresh = entries(str(tmp_path / "source.sqlite"), "L2", first=100)
        assert db.apply(fresh)[-1] == []
        assert rows(db, "SELECT count(*) FROM src") == [(300,)]


def test_a_file_that_is_not_a_database_is_an_error_on_every_node(tmp_path, small_chunks):
    junk = tmp_path / "junk"
    junk.write_bytes(b"SQLite format 3\x00" + b"\xff" * 100_000)
    with Database(str(tmp_path / "db.sqlite")) as db:
        one(db, 9, ["CREATE TABLE old (x)"])
        results = db.apply(entries(str(junk)))
        assert "nothing loaded" in results[-1][0].error
        assert rows(db, "SELECT name FROM sqlite_master") == [("old",)]
        one(db, 1000, ["INSERT INTO old VALUES (1)"])  # the node goes on


def test_a_wrong_checksum_is_refused(tmp_path, small_chunks):
    chunks = [load.Chunk(c.load, c.seq, c.total, c.size, c.crc ^ 1, c.data)
              for c in chunks_of(source_file(tmp_path), "L1")]
    with Database(str(tmp_path / "db.sqlite")) as db:
        results = db.apply([(10 + i, Command(Op.LOAD, c.statements(), payload=c.data).encode())
                            for i, c in enumerate(chunks)])
        assert "CRC" in results[-1][0].error
        assert rows(db, "SELECT count(*) FROM sqlite_master") == [(0,)]


def file_with(tmp_path, name: str, script: str, page_size: int = 4096) -> str:
    path = str(tmp_path / name)
    conn = apsw.Connection(path)
    conn.execute(f"PRAGMA page_size={page_size}; {script}")
    conn.close()
    return path


def test_a_file_holding_raftsqls_bookkeeping_is_refused(tmp_path, small_chunks):
    path = file_with(tmp_path, "snap.db", "CREATE TABLE raftsql_load_chunks(a); "
                     "CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    with Database(str(tmp_path / "db.sqlite")) as db:
        one(db, 9, ["CREATE TABLE old (x)"])
        results = db.apply(entries(path))
        assert "raftsql's bookkeeping (raftsql_load_chunks)" in results[-1][0].error
        assert rows(db, "SELECT name FROM sqlite_master") == [("old",)]
        one(db, 1000, ["INSERT INTO old VALUES (1)"])  # the node goes on


def test_a_file_this_node_cannot_copy_is_an_error_not_a_failure(tmp_path, small_chunks):
    # Another page size makes the copy VACUUM, which needs the index's unknown collation.
    maker = apsw.Connection(str(tmp_path / "odd.db"))
    maker.execute("PRAGMA page_size=8192")
    maker.create_collation("odd", lambda a, b: (a > b) - (a < b))
    maker.execute("CREATE TABLE t(x TEXT); CREATE INDEX t_x ON t(x COLLATE odd); "
                  "INSERT INTO t VALUES ('a')")
    maker.close()
    with Database(str(tmp_path / "db.sqlite")) as db:
        one(db, 9, ["CREATE TABLE old (x)"])
        results = db.apply(entries(str(tmp_path / "odd.db")))
        assert "cannot copy" in results[-1][0].error and "nothing loaded" in results[-1][0].error
        assert rows(db, "SELECT name FROM sqlite_master") == [("old",)]


def test_a_crash_while_the_database_is_replaced_is_finished_at_start(tmp_path, small_chunks,
                                                                      monkeypatch):
    chunks = entries(source_file(tmp_path))
    path = str(tmp_path / "db.sqlite")
    db = Database(path)
    one(db, 9, ["CREATE TABLE old (x)"])
    db.apply(chunks[:-1])

    def dies(self, source, index):
        raise KeyboardInterrupt  # the process dies once the file and its marker are durable

    monkeypatch.setattr(Database, "restore_from", dies)
    with pytest.raises(KeyboardInterrupt):
        db.apply(chunks[-1:])
    monkeypatch.undo()
    db._writer.conn.close()  # no clean close: the process is gone
    with Database(path) as again:
        again.recover(chunks[-1][0])
        assert again.applied_index() == chunks[-1][0]
        assert rows(again, "SELECT count(*) FROM src") == [(300,)]
        assert user_schema(path)[0] == [("table", "src")]
    assert not os.path.exists(path + ".load-index") and not os.path.exists(path + ".load")
