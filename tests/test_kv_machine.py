"""The config store's state machine (raftsql/kv/machine.py) inside the database: what every node
must agree on, however its batches are cut, after crashes, and through snapshots."""

from __future__ import annotations

import apsw
import pytest

from raftsql.kv import model
from raftsql.kv.book import Book
from raftsql.kv.machine import KvMachine
from raftsql.kv.model import Session
from raftsql.sql.command import Command, Op
from raftsql.sql.database import Database
from tests.test_sqlite import T0, user_schema

KV_ROWS = "SELECT * FROM raftsql_kv ORDER BY key"


def kv(index: int, *ops: dict, tx: bool = False, time_ms: int = T0) -> tuple[int, bytes]:
    return index, Command(Op.KV, list(ops), tx, time_ms, 0).encode()


def setk(key: str, value: bytes = b"v", **kw) -> dict:
    return model.op("set", key, value=value, **kw)


def session(sid: str, *, behavior: str = "release", lock_delay_ms: int = 0) -> dict:
    return Session(sid, "s", "n1", 10_000, behavior, lock_delay_ms, ("serfHealth",), 0).op()


def open_db(path, *, history: int = 100) -> tuple[Database, KvMachine, list]:
    machine = KvMachine(history=history)
    seen: list = []
    machine.notify = lambda index, keys: seen.append((index, keys))
    db = Database(str(path), extension=machine)
    db.recover(10_000)
    return db, machine, seen


def kv_rows(db: Database) -> list:
    (result,) = db.query([KV_ROWS])
    assert result.error is None, result.error
    return result.rows


def book_rows(path, live: bool = False) -> list:
    """The sidecar's KV tables (`live`: without the rows marked gone, as a snapshot has them)."""
    conn = apsw.Connection(str(path) + "-keys", flags=apsw.SQLITE_OPEN_READONLY)
    where = " WHERE gone IS NULL" if live else ""
    try:
        return [conn.execute(f"SELECT * FROM {t}{w} ORDER BY rowid").fetchall()
                for t, w in (("kv_sessions", where), ("kv_lock_delays", where),
                             ("kv_changes", ""))]
    finally:
        conn.close()


SCRIPT = [
    kv(1, setk("a/1", b"one")),
    kv(2, setk("a/2", b"two", flags=3)),
    kv(3, model.op("cas", "a/1", value=b"uno", index=1)),
    kv(4, model.op("cas", "a/1", value=b"stale", index=1)),  # false: nothing changes
    kv(5, session("s1", lock_delay_ms=5_000)),
    kv(6, model.op("lock", "lock", value=b"me", session="s1")),
    kv(7, model.op("lock", "lock", value=b"again", session="s1")),  # a re-acquire
    kv(8, setk("t/x"), model.op("get", "missing"), tx=True),  # rolled back whole
    kv(9, {"v": "session-destroy", "s": "s1"}, time_ms=T0 + 1_000),
    kv(10, session("s2"), time_ms=T0 + 2_000),
    kv(11, model.op("lock", "lock", session="s2"), time_ms=T0 + 2_000),  # in the lock delay
    kv(12, model.op("lock", "lock", session="s2"), time_ms=T0 + 7_000),  # after it
    kv(13, model.op("delete-tree", "a/")),
]


def test_outcomes_of_every_kind_of_entry(tmp_path):
    db, _, _ = open_db(tmp_path / "db.sqlite")
    with db:
        out = db.apply(SCRIPT)
        assert out[:5] == [True, True, True, False, {"ID": "s1"}]
        assert out[5:8] == [True, True, {"errors": [
            {"OpIndex": 1, "What": "key \"missing\" doesn't exist"}]}]
        assert out[8:] == [True, {"ID": "s2"}, False, True, True]
        # LockIndex counts acquisitions (1 by s1, its re-acquire does not count, 1 by s2).
        assert kv_rows(db) == [("lock", b"", 0, 6, 12, 2, "s2")]


def test_every_cut_of_the_batches_gives_the_same_state(tmp_path):
    """Followers cut the log into batches their own way: the keys and the bookkeeping must
    come out identical."""
    states = []
    for cut in ([len(SCRIPT)], [1] * len(SCRIPT), [4, 1, 3, 5]):
        path = tmp_path / f"cut{len(states)}" / "db.sqlite"
        path.parent.mkdir()
        db, _, _ = open_db(path)
        with db:
            pos = 0
            for size in cut:
                db.apply(SCRIPT[pos:pos + size])
                pos += size
            states.append((kv_rows(db), book_rows(path)))
    assert states[0] == states[1] == states[2]


def test_an_entry_over_the_loops_budget_is_undone_whole_and_redone(tmp_path):
    db, _, seen = open_db(tmp_path / "db.sqlite")
    with db:
        db.apply(SCRIPT[:3])
        # A tree's deletion cannot be interrupted: it never runs inside the loop's budget.
        assert db.apply_within([kv(4, model.op("delete-tree", ""))], 1.0) is None
        assert [r[0] for r in kv_rows(db)] == ["a/1", "a/2"]
        assert seen == [(1, ["a/1"]), (2, ["a/2"]), (3, ["a/1"])]  # nothing told for it
        assert db.apply([kv(4, model.op("delete-tree", ""))]) == [True]
        assert kv_rows(db) == [] and seen[-1] == (4, ["a/1", "a/2"])


def test_watchers_hear_of_a_change_only_once_it_is_committed(tmp_path):
    db, machine, seen = open_db(tmp_path / "db.sqlite")
    with db:
        db.apply([kv(1, setk("k")), kv(2, setk("t"), model.op("get", "no"), tx=True)])
        assert seen == [(1, ["k"])]  # the rolled-back transaction changed nothing
        assert machine.visible == 2


def test_sql_reads_the_keys_and_may_not_write_them(tmp_path):
    db, _, _ = open_db(tmp_path / "db.sqlite")
    with db:
        db.apply([kv(1, setk("k", b"\x00\xff"))])
        for i, sql in enumerate(["INSERT INTO raftsql_kv(key) VALUES ('x')",
                                 "UPDATE raftsql_kv SET value = 1", "DELETE FROM raftsql_kv",
                                 "DROP TABLE raftsql_kv", "ALTER TABLE raftsql_kv ADD c",
                                 "CREATE INDEX i ON raftsql_kv(flags)",
                                 "CREATE TRIGGER tr AFTER INSERT ON raftsql_kv BEGIN "
                                 "SELECT 1; END"]):
            [[result]] = db.apply([(2 + i, Command(Op.EXECUTE, [sql]).encode())])
            assert result.error and "config store" in result.error, sql
        # A trigger elsewhere may not write it either.
        db.apply([(20, Command(Op.EXECUTE, [
            "CREATE TABLE t (a)", "CREATE TRIGGER w AFTER INSERT ON t BEGIN "
            "DELETE FROM raftsql_kv; END"]).encode())])
        [[result]] = db.apply([(21, Command(Op.EXECUTE, ["INSERT INTO t VALUES (1)"]).encode())])
        assert kv_rows(db) == [("k", b"\x00\xff", 0, 1, 1, 0, None)]
    # The one product table shows; the bookkeeping does not.
    names = {name for _, name in user_schema(str(tmp_path / "db.sqlite"))[0]}
    assert {n for n in names if n.startswith("raftsql")} == {"raftsql_kv"}


def test_a_database_that_never_used_the_store_has_no_table_of_it(tmp_path):
    db, _, _ = open_db(tmp_path / "db.sqlite")
    with db:
        db.apply([(1, Command(Op.EXECUTE, ["CREATE TABLE t (a)"]).encode())])
    assert user_schema(str(tmp_path / "db.sqlite"))[0] == [("table", "t")]


def test_a_snapshot_carries_sessions_lock_delays_and_history(tmp_path):
    (tmp_path / "a").mkdir()
    src, _, _ = open_db(tmp_path / "a" / "db.sqlite")
    with src:
        src.apply(SCRIPT[:10])
        src.snapshot(str(tmp_path / "snap.sqlite"))
        expected = (kv_rows(src), book_rows(tmp_path / "a" / "db.sqlite", live=True))
    (tmp_path / "b").mkdir()
    dst, machine, seen = open_db(tmp_path / "b" / "db.sqlite")
    with dst:
        dst.restore(str(tmp_path / "snap.sqlite"), 10)
        assert (kv_rows(dst), book_rows(tmp_path / "b" / "db.sqlite")) == expected
        assert expected[1][0][0][0] == "s2"  # s1 was destroyed: not carried
        assert seen[-1] == (10, None) and machine.visible == 10  # every watcher looks again
        # ...and goes on as the source would: s2's lock waits out s1's lock delay.
        assert dst.apply(SCRIPT[10:12]) == [False, True]
    names = {name for _, name in user_schema(str(tmp_path / "b" / "db.sqlite"))[0]}
    assert {n for n in names if n.startswith("raftsql")} == {"raftsql_kv"}


def test_bookkeeping_of_entries_the_database_lost_is_undone(tmp_path):
    """A crash between the bookkeeping's commit and the database's: the sidecar holds a
    session and changes of an entry the database will apply again."""
    path = tmp_path / "db.sqlite"
    db, _, _ = open_db(path)
    with db:
        db.apply(SCRIPT[:4])
    book = apsw.Connection(str(path) + "-keys")
    book.execute("INSERT INTO kv_sessions (id, entry) VALUES ('ghost', 5)")
    book.execute("INSERT INTO kv_changes (entry, key, op) VALUES (5, 'ghost', 'set')")
    book.execute("UPDATE state SET value = 5 WHERE name = 'through'")
    book.close()
    db, _, _ = open_db(path)
    with db:
        assert db.apply(SCRIPT[4:6]) == [{"ID": "s1"}, True]
        sessions, _, changes = book_rows(path)
        assert [s[0] for s in sessions] == ["s1"]
        assert "ghost" not in {c[1] for c in changes}


def test_bookkeeping_behind_the_database_starts_it_over(tmp_path):
    """A power cut that took the sidecar's last commits but not the database's: the sessions
    of applied entries are lost, so the database starts over from the snapshot and the log."""
    path = tmp_path / "db.sqlite"
    db, _, _ = open_db(path)
    with db:
        db.apply(SCRIPT[:6])
    book = apsw.Connection(str(path) + "-keys")
    book.execute("DELETE FROM kv_sessions")
    book.execute("UPDATE state SET value = 4 WHERE name = 'through'")
    book.close()
    machine = KvMachine()
    with Database(str(path), extension=machine) as db:
        db.recover(6, lambda after: [e for e in SCRIPT[:6] if e[0] > after])
        assert db.applied_index() == 0  # the driver restores the snapshot, replays the log
        db.apply(SCRIPT[:6])
        assert kv_rows(db)[-1][0] == "lock" and book_rows(path)[0][0][0] == "s1"


def test_the_history_is_bounded_and_says_where_it_starts(tmp_path):
    path = tmp_path / "db.sqlite"
    db, _, _ = open_db(path, history=3)
    with db:
        db.apply([kv(i, setk(f"k{i}")) for i in range(1, 6)]
                 + [kv(6, setk("x"), setk("y"), tx=True)])
        book = Book(str(path) + "-keys")
        assert book.floor() == 4  # the newest 3 rows are kept: entry 5's, entry 6's two
        changes, through, floor = book.changes("", True, 4, 100)
        assert [(c["Index"], c["Key"]) for c in changes] == [(5, "k5"), (6, "x"), (6, "y")]
        assert through == 6 and floor == 4
        # An answer is cut between entries, never inside one.
        changes, through, _ = book.changes("", True, 4, 2)
        assert [c["Index"] for c in changes] == [5] and through == 5
        book.close()


def test_changes_tell_the_previous_state(tmp_path):
    path = tmp_path / "db.sqlite"
    db, _, _ = open_db(path)
    with db:
        db.apply([kv(1, setk("k", b"a", flags=1)), kv(2, setk("k", b"b")),
                  kv(3, model.op("delete", "k"))])
        book = Book(str(path) + "-keys")
        first, second, third = book.changes("k", False, 0, 10)[0]
        book.close()
    assert first["Op"] == "set" and first["Prev"] is None and first["Flags"] == 1
    assert second["Value"] == model.encode_value(b"b")
    assert second["Prev"]["Value"] == model.encode_value(b"a")
    assert second["Prev"]["ModifyIndex"] == 1
    assert third["Op"] == "delete" and third["Value"] is None
    assert third["Prev"]["ModifyIndex"] == 2


@pytest.mark.parametrize("op, error", [
    ({"v": "nope", "k": "k"}, "unknown operation"),
    ({"v": "set", "k": ""}, "missing key"),
    ({"v": "set", "k": "x" * 513}, "key too long"),
    ({"v": "lock", "k": "k"}, "missing session"),
    ({"v": "lock", "k": "k", "s": "nobody"}, "invalid session"),
    ({"v": "set", "k": "k", "d": "not base64!"}, "base64"),
    ({"v": "session-create", "s": "x", "ttl": "soon"}, "invalid entry"),
    ({"v": "set", "k": "k", "f": -1}, "flags"),
])
def test_a_bad_entry_is_an_error_the_same_everywhere(tmp_path, op, error):
    db, _, _ = open_db(tmp_path / "db.sqlite")
    with db:
        [out] = db.apply([kv(1, op)])
        assert error in out["error"]


def test_a_first_entry_that_fails_leaves_the_store_usable(tmp_path):
    """The table is made by the first entry: undone with it when it fails, made again next."""
    db, _, _ = open_db(tmp_path / "db.sqlite")
    with db:
        [failed, ok] = db.apply([kv(1, setk("a"), model.op("get", "b"), tx=True),
                                 kv(2, setk("c"))])
        assert "errors" in failed and ok is True
        assert [r[0] for r in kv_rows(db)] == ["c"]
