"""The state machine: deterministic apply (DESIGN.md §3), rqlite statement semantics, snapshots.

The central claim: the same entries applied to two databases, however they are cut into
batches, give identical user tables and identical results.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import apsw
import pytest

from raftsql.errors import RaftSQLError, StorageError
from raftsql.sql.command import Command, ReadOptions, StatementResult
from raftsql.sql.database import (
    QUERY_WRITE_ERROR,
    BadStatementError,
    Database,
    disallowed_pragma,
    resolve_index,
    stored_index,
    validate_statements,
)

T0 = 1_700_000_000_123  # 2023-11-14 22:13:20.123 UTC


def entry(index: int, stmts: list, *, tx: bool = False, time_ms: int = T0, seed: int = 1,
          op: str = "execute") -> tuple[int, bytes]:
    return index, Command(op, stmts, tx, time_ms, seed).encode()


def numbered(commands: list[dict], first: int = 1) -> list[tuple[int, bytes]]:
    return [entry(first + i, **c) for i, c in enumerate(commands)]


def dump(path: str) -> list:
    """Every user table, schema and rows (rowid first), each value tagged with its type."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        out = []
        tables = conn.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'table' "
                              "AND name NOT LIKE 'raftsql_%' ORDER BY name").fetchall()
        for name, sql in tables:
            rows = conn.execute(f'SELECT rowid, * FROM "{name}" ORDER BY rowid').fetchall()
            out.append((name, sql, [[(type(v).__name__, v) for v in row] for row in rows]))
        return out
    finally:
        conn.close()


def outcome(results: list) -> list:
    """Results without timings, comparable across databases."""
    return [None if r is None else [(s.columns, s.decltypes, s.rows, s.last_insert_id,
                                     s.rows_affected, s.error) for s in r] for r in results]


def one(db: Database, index: int, stmts: list, **kw) -> list[StatementResult]:
    return db.apply([entry(index, stmts, **kw)])[0]


def rows(db: Database, sql: str) -> list[tuple]:
    (result,) = db.query([sql])
    assert result.error is None, result.error
    return result.rows


@pytest.fixture
def db(tmp_path):
    with Database(str(tmp_path / "db.sqlite")) as d:
        yield d


# ---- determinism ------------------------------------------------------------------------

NONDETERMINISTIC = [
    {"stmts": ["CREATE TABLE t (id INTEGER PRIMARY KEY, r INTEGER, b BLOB, now TEXT, "
               "ts TEXT DEFAULT CURRENT_TIMESTAMP, d TEXT DEFAULT CURRENT_DATE, j REAL)",
               "CREATE TABLE shuffled (x)", "CREATE TABLE log (v)"]},
    {"stmts": ["INSERT INTO t(r, b, now, j) VALUES(random(), randomblob(16), datetime('now'), "
               "julianday('now'))"] * 3, "seed": 7},
    {"stmts": [["INSERT INTO t(r, b) VALUES(?, randomblob(?))", 5, 8]], "time_ms": T0 + 86_400_000},
    {"stmts": ["WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) "
               "INSERT INTO shuffled SELECT i FROM n ORDER BY random()"], "seed": 99},
    {"stmts": ["UPDATE t SET r = abs(random()) % 1000 WHERE id % 2 = 0",
               "DELETE FROM shuffled WHERE x IN (SELECT x FROM shuffled ORDER BY random() LIMIT 5)"],
     "seed": -3},
    {"stmts": ["INSERT INTO log VALUES(changes()), (last_insert_rowid()), (total_changes())",
               "INSERT INTO t(r) VALUES(random())", "INSERT INTO nonsense VALUES(1)"]},
    {"stmts": ["INSERT INTO log SELECT unixepoch('now', 'subsec')", "INSERT INTO t(r) VALUES(1)"],
     "tx": True, "seed": 5},
    {"stmts": ["INSERT INTO log VALUES(changes()), (last_insert_rowid()), (total_changes())"]},
]


def apply_in_batches(path: str, entries: list, cuts: list[int]) -> list:
    results = []
    with Database(path) as d:
        bounds = [0, *cuts, len(entries)]
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            results.extend(d.apply(entries[lo:hi]))
    return results


def test_same_entries_give_identical_databases_however_batched(tmp_path):
    entries = numbered(NONDETERMINISTIC)
    one_batch = apply_in_batches(str(tmp_path / "a.sqlite"), entries, [])
    expected = dump(str(tmp_path / "a.sqlite"))
    rng = random.Random(0)
    for k in range(6):
        cuts = sorted(rng.sample(range(1, len(entries)), rng.randint(0, len(entries) - 1)))
        path = str(tmp_path / f"b{k}.sqlite")
        assert outcome(apply_in_batches(path, entries, cuts)) == outcome(one_batch)
        assert dump(path) == expected
    assert all(r is not None for r in one_batch)


def test_different_seeds_give_different_databases(tmp_path):
    entries = numbered(NONDETERMINISTIC)
    reseeded = numbered([{**c, "seed": c.get("seed", 1) + 1000} for c in NONDETERMINISTIC])
    apply_in_batches(str(tmp_path / "a.sqlite"), entries, [])
    apply_in_batches(str(tmp_path / "b.sqlite"), reseeded, [])
    a, b = dump(str(tmp_path / "a.sqlite")), dump(str(tmp_path / "b.sqlite"))
    assert a != b
    by_name = {name: table_rows for name, _, table_rows in b}
    for name, _, table_rows in a:
        if name in ("t", "shuffled"):
            assert table_rows != by_name[name], name


def test_order_by_random_shuffles_per_row_and_deterministically(db):
    one(db, 1, ["CREATE TABLE s (x)", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                "FROM n WHERE i < 100) INSERT INTO s SELECT i FROM n ORDER BY random()"], seed=42)
    order = [x for (x,) in rows(db, "SELECT x FROM s ORDER BY rowid")]
    assert sorted(order) == list(range(1, 101)) and order != sorted(order)
    again = one(db, 2, ["SELECT x FROM s ORDER BY random()"] * 2, op="request", seed=42)
    other = one(db, 3, ["SELECT x FROM s ORDER BY random()"], op="request", seed=42)
    assert again[0].rows == other[0].rows != again[1].rows  # reseeded per entry, drawn per row


def test_random_is_signed_64_bit_and_randomblob_has_sqlite_lengths(db):
    (r,) = one(db, 1, ["WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                       "WHERE i < 200) SELECT random() FROM n"], op="request")
    values = [v for (v,) in r.rows]
    assert all(-(1 << 63) <= v < (1 << 63) for v in values)
    assert min(values) < 0 < max(values) and len(set(values)) == 200
    (b,) = one(db, 2, ["SELECT length(randomblob(16)), length(randomblob(0)), "
                       "length(randomblob(-5)), length(randomblob('3')), typeof(randomblob(2))"],
               op="request")
    assert b.rows == [(16, 1, 1, 3, "blob")]


def test_now_is_the_entry_time(db):
    when = dt.datetime.fromtimestamp(T0 / 1000, dt.UTC)
    one(db, 1, ["CREATE TABLE t (ts DEFAULT CURRENT_TIMESTAMP, d DEFAULT CURRENT_DATE, "
                "tm DEFAULT CURRENT_TIME, x)", "INSERT INTO t(x) VALUES(1)"])
    (r,) = one(db, 2, ["SELECT datetime('now'), date('now'), time('now'), unixepoch('now'), "
                       "strftime('%Y-%m-%d %H:%M:%f', 'now'), unixepoch('now', 'subsec'), "
                       "julianday('now'), CURRENT_TIMESTAMP"], op="request")
    stamp = when.strftime("%Y-%m-%d %H:%M:%S")
    assert r.rows[0][:6] == (stamp, when.strftime("%Y-%m-%d"), when.strftime("%H:%M:%S"),
                             T0 // 1000, stamp + ".123", T0 / 1000)
    assert r.rows[0][6] == pytest.approx(2440587.5 + T0 / 86_400_000, abs=1e-9)
    assert r.rows[0][7] == stamp
    assert rows(db, "SELECT ts, d, tm FROM t") == [(stamp, when.strftime("%Y-%m-%d"),
                                                    when.strftime("%H:%M:%S"))]
    (epoch,) = one(db, 3, ["SELECT datetime('now')"], op="request", time_ms=0)
    (again,) = one(db, 4, ["SELECT datetime('now')"], op="request")  # a cached statement
    assert (epoch.rows, again.rows) == ([("1970-01-01 00:00:00",)], [(stamp,)])


def test_reads_use_the_real_clock(db):
    (r,) = db.query(["SELECT unixepoch('now')"])
    assert abs(r.rows[0][0] - dt.datetime.now(dt.UTC).timestamp()) < 60


# ---- restart, applied index, bookkeeping ---------------------------------------------------


def test_restart_replays_only_later_entries(tmp_path):
    path = str(tmp_path / "db.sqlite")
    entries = numbered([{"stmts": ["CREATE TABLE t (x)"]}] +
                       [{"stmts": [["INSERT INTO t VALUES(?)", i]]} for i in range(4)])
    with Database(path) as d:
        d.apply(entries[:3])
        assert d.applied_index() == 3
    with Database(path) as d:
        assert d.applied_index() == 3
        results = d.apply(entries)
        assert results[:3] == [None, None, None]
        assert [r[0].last_insert_id for r in results[3:]] == [3, 4]
        assert rows(d, "SELECT x FROM t ORDER BY rowid") == [(0,), (1,), (2,), (3,)]
        assert d.apply(entries) == [None] * 5
        assert d.applied_index() == 5


def test_mark_applied_is_folded_into_the_next_commit(tmp_path):
    path = str(tmp_path / "db.sqlite")
    with Database(path) as d:
        d.apply([entry(1, ["CREATE TABLE t (x)"])])
        d.mark_applied(2)
        d.mark_applied(1)  # never backwards
        assert d.applied_index() == 2
        assert d.apply([entry(2, ["INSERT INTO t VALUES(1)"])]) == [None]
        d.apply([entry(3, ["INSERT INTO t VALUES(2)"])])
        d.mark_applied(5)
    with Database(path) as d:  # close() stored the pending mark
        assert d.applied_index() == 5
        assert rows(d, "SELECT x FROM t") == [(2,)]


def test_counters_count_from_the_start_of_each_command(tmp_path):
    """last_insert_rowid(), changes(), total_changes() and the reported last_insert_id and
    rows_affected start from zero with every command: whatever came before (other batches,
    a restart, a snapshot), every node reports the same."""
    path = str(tmp_path / "db.sqlite")
    counters = "SELECT changes(), total_changes(), last_insert_rowid()"
    with Database(path) as d:
        one(d, 1, ["CREATE TABLE t (x)", "INSERT INTO t VALUES(1), (2), (3)"])
        (r,) = one(d, 2, [counters], op="request")
        assert r.rows == [(0, 0, 0)]
        (ddl,) = one(d, 3, ["CREATE TABLE u (y)"])
        assert (ddl.last_insert_id, ddl.rows_affected) == (0, 0)
        ins, ddl, r = one(d, 4, ["INSERT INTO t VALUES(4), (5)", "CREATE TABLE v (z)", counters],
                          op="request")
        # within a command, as in rqlite: DDL reports what the last DML left
        assert (ins.last_insert_id, ins.rows_affected) == (5, 2)
        assert (ddl.last_insert_id, ddl.rows_affected) == (5, 2)
        assert r.rows == [(2, 2, 5)]
        none, r = one(d, 5, ["UPDATE t SET x = 0 WHERE 0", counters], op="request")
        assert none.rows_affected == 0 and r.rows == [(0, 0, 0)]
    with Database(path) as d:  # a restarted node sees what the others see
        (w,) = one(d, 6, ["UPDATE t SET x = x + 1 WHERE x > 1"])
        assert (w.last_insert_id, w.rows_affected) == (0, 4)
        (r,) = one(d, 7, [counters], op="request")
        assert r.rows == [(0, 0, 0)]


def user_schema(path: str) -> list:
    """What a client can learn of the schema, through every way SQLite offers."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [conn.execute(sql).fetchall() for sql in (
            "SELECT type, name FROM sqlite_master ORDER BY name",
            "SELECT type, name FROM sqlite_schema ORDER BY name",
            "SELECT schema, name FROM pragma_table_list ORDER BY schema, name",
        )]
    finally:
        conn.close()


def test_the_schema_is_exactly_the_users(tmp_path):
    path = str(tmp_path / "db.sqlite")
    expected = [[("table", "t")], [("table", "t")],
                [("main", "sqlite_schema"), ("main", "t"), ("temp", "sqlite_temp_schema")]]
    with Database(path) as d:
        assert user_schema(path)[0] == []
        one(d, 1, ["CREATE TABLE t (x)"])
        d.mark_applied(2)
        assert user_schema(path) == expected
        # the write connection too (a strong read, or /db/request with a write, run on it)
        (master, tables) = one(d, 3, ["SELECT name FROM sqlite_master",
                                      "SELECT schema, name FROM pragma_table_list"], op="query")
        assert master.rows == [("t",)] and ("temp", "sqlite_temp_schema") in tables.rows
        assert [r for r in tables.rows if "raftsql" in r[1]] == []
        d.snapshot(str(tmp_path / "snap.sqlite"))
    # A snapshot also carries the idempotency keys (raftsql/sql/keys.py), under names user SQL
    # may not create; restoring takes them out again (below).
    snap = user_schema(str(tmp_path / "snap.sqlite"))
    assert snap[0] == [("table", "raftsql_keys"), ("table", "raftsql_load_chunks"), ("table", "t")]
    with Database(path) as d:
        assert d.applied_index() == 3 and user_schema(path) == expected
    with Database(str(tmp_path / "b.sqlite")) as b:
        b.restore(str(tmp_path / "snap.sqlite"), 3)
        assert b.applied_index() == 3 and user_schema(b.path) == expected


def test_application_id_holds_the_index_and_users_cannot_touch_it(db):
    one(db, 1, ["CREATE TABLE t (x)"])
    errors = [r.error for r in one(db, 2, [
        "PRAGMA application_id", "PRAGMA application_id = 7",
        "SELECT * FROM pragma_application_id"], op="request")]
    assert all(e.startswith("PRAGMA application_id is reserved") for e in errors), errors
    assert db.query(["PRAGMA application_id"])[0].error.startswith("PRAGMA application_id is")
    trigger, fire = one(db, 3, [  # a trigger body is authorized when the trigger fires
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT * FROM pragma_application_id; END",
        "INSERT INTO t VALUES(1)"])
    assert trigger.error is None and fire.error.startswith("PRAGMA application_id is")
    assert db.applied_index() == 3
    conn = apsw.Connection(db.path, flags=apsw.SQLITE_OPEN_READONLY)
    assert conn.execute("PRAGMA application_id").fetchall() == [(3,)]
    conn.close()


@pytest.mark.parametrize("index", [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, 3 * 2**32 + 1])
def test_the_applied_index_is_stored_modulo_2_32_and_resolved_against_the_log(tmp_path, index):
    assert resolve_index(stored_index(index), index) == index
    for log_end in (index + 1, index + 1000, index + 2**32 - 1):
        assert resolve_index(stored_index(index), log_end) == index  # the log ran further
    path = str(tmp_path / "db.sqlite")
    with Database(path) as d:
        d.apply([entry(index or 1, ["CREATE TABLE t (x)"])])
    with Database(path) as d:
        d.recover((index or 1) + 77)
        assert d.applied_index() == (index or 1)
        assert d.apply([entry(index or 1, ["CREATE TABLE t (x)"])]) == [None]  # not again


def test_a_database_ahead_of_the_log_is_refused(tmp_path):
    path = str(tmp_path / "db.sqlite")
    with Database(path) as d:
        d.apply([entry(9, ["CREATE TABLE t (x)"])])
    with Database(path) as d, pytest.raises(StorageError, match="does not belong with this"):
        d.recover(3)
    with Database(path) as d:
        d.recover(9)
        assert d.applied_index() == 9


# ---- statement semantics ------------------------------------------------------------------


def test_errors_are_per_statement_and_later_entries_still_apply(db):
    results = db.apply(numbered([
        {"stmts": ["CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"]},
        {"stmts": ["INSERT INTO nonsense VALUES(1)", "INSERT INTO foo(name) VALUES('x')",
                   "blah", "INSERT INTO foo(name) VALUES('x')"]},
        {"stmts": ["INSERT INTO foo(name) VALUES('y')"]},
    ]))
    assert [r.error for r in results[1]] == [
        "no such table: nonsense", None, 'near "blah": syntax error',
        "UNIQUE constraint failed: foo.name"]
    assert (results[1][1].last_insert_id, results[1][1].rows_affected) == (1, 1)
    assert results[2][0].last_insert_id == 2


def test_transaction_stops_at_first_error_and_rolls_back(db):
    one(db, 1, ["CREATE TABLE foo (name TEXT)"])
    body = ["INSERT INTO foo VALUES('a')", "INSERT INTO nonsense VALUES(1)",
            "INSERT INTO foo VALUES('b')"]
    with_tx = one(db, 2, body, tx=True)
    assert [r.error for r in with_tx] == [None, "no such table: nonsense"]
    assert with_tx[0].last_insert_id == 1  # reported, then rolled back (as rqlite)
    assert rows(db, "SELECT name FROM foo") == []
    without = one(db, 3, body)
    assert [r.error for r in without] == [None, "no such table: nonsense", None]
    assert rows(db, "SELECT name FROM foo ORDER BY rowid") == [("a",), ("b",)]
    ok = one(db, 4, ["INSERT INTO foo VALUES('c')", "INSERT INTO foo VALUES('d')"], tx=True)
    assert [r.error for r in ok] == [None, None] and len(rows(db, "SELECT * FROM foo")) == 4


ROLLBACK_CONFLICTS = [
    {"stmts": ["CREATE TABLE u (x UNIQUE, r)", "CREATE TABLE log (v)",
               "CREATE TABLE g (x UNIQUE ON CONFLICT ROLLBACK)",
               "CREATE TRIGGER no_neg BEFORE INSERT ON log WHEN new.v < 0 "
               "BEGIN SELECT RAISE(ROLLBACK, 'negative'); END"]},
    {"stmts": ["INSERT INTO u VALUES(1, random())", "INSERT INTO g VALUES(1)"]},
    {"stmts": ["INSERT INTO u VALUES(2, random())",
               "INSERT OR ROLLBACK INTO u VALUES(3, random()), (1, random())",
               "INSERT INTO u VALUES(4, random())", "INSERT INTO g VALUES(1)",
               "INSERT INTO log VALUES(-1)", "INSERT INTO u VALUES(5, random())",
               "INSERT INTO log VALUES(changes()), (last_insert_rowid()), (total_changes())"]},
    {"stmts": ["INSERT INTO u VALUES(6, 0)", "INSERT INTO log VALUES(-2)",
               "INSERT INTO u VALUES(7, 0)"], "tx": True},
    {"stmts": ["INSERT INTO log VALUES(changes()), (last_insert_rowid()), (total_changes())"]},
]


def test_rollback_conflicts_undo_one_statement_not_the_batch(tmp_path):
    """ON CONFLICT ROLLBACK and RAISE(ROLLBACK) end SQLite's transaction, i.e. the whole batch:
    every node must still end as if the statement had failed alone, as under autocommit."""
    entries = numbered(ROLLBACK_CONFLICTS)
    together = apply_in_batches(str(tmp_path / "a.sqlite"), entries, [])
    apart = apply_in_batches(str(tmp_path / "b.sqlite"), entries, [1, 2, 3, 4])
    assert outcome(together) == outcome(apart)
    assert dump(str(tmp_path / "a.sqlite")) == dump(str(tmp_path / "b.sqlite"))
    assert [r.error for r in together[2]] == [
        None, "UNIQUE constraint failed: u.x", None, "UNIQUE constraint failed: g.x",
        "negative", None, None]
    assert [r.error for r in together[3]] == [None, "negative"]
    with Database(str(tmp_path / "a.sqlite")) as d:
        assert [x for (x,) in rows(d, "SELECT x FROM u ORDER BY x")] == [1, 2, 4, 5]
        assert d.applied_index() == 5


def test_returning_gives_rows_on_the_write_path(db):
    one(db, 1, ["CREATE TABLE foo (id INTEGER NOT NULL PRIMARY KEY, name TEXT, age INTEGER)"])
    ret, select, delete = one(db, 2, ["INSERT INTO foo(id, name) VALUES(9, 'q') RETURNING *",
                                      "SELECT * FROM foo",
                                      "DELETE FROM foo WHERE id = 1 RETURNING id"])
    assert (ret.columns, ret.decltypes, ret.rows) == (
        ["id", "name", "age"], ["INTEGER", "TEXT", "INTEGER"], [(9, "q", None)])
    assert select.columns is None and (select.last_insert_id, select.rows_affected) == (9, 1)
    assert (delete.columns, delete.rows) == (["id"], [])
    (req,) = one(db, 3, ["SELECT name FROM foo"], op="request")
    assert (req.columns, req.rows) == (["name"], [("q",)])


def test_zero_row_results_keep_columns_and_decltypes(db):
    one(db, 1, ["CREATE TABLE foo (id INTEGER PRIMARY KEY, name VARCHAR(255), x)"])
    (r,) = db.query(["SELECT * FROM foo WHERE 0"])
    assert (r.columns, r.decltypes, r.rows) == (["id", "name", "x"],
                                                ["INTEGER", "VARCHAR(255)", None], [])
    (s,) = one(db, 2, ["SELECT id, 1 AS one FROM foo"], op="query")
    assert (s.columns, s.decltypes, s.rows) == (["id", "one"], ["INTEGER", None], [])


def test_multi_statement_string_reports_the_last_statement(db):
    one(db, 1, ["CREATE TABLE t (x); INSERT INTO t VALUES(1); INSERT INTO t VALUES(2)"])
    (r,) = db.query(["SELECT 1 AS a; SELECT x FROM t ORDER BY x"])
    assert (r.columns, r.rows) == (["x"], [(1,), (2,)])
    (w,) = one(db, 2, ["INSERT INTO t VALUES(3); INSERT INTO t VALUES(4), (5)"])
    assert (w.last_insert_id, w.rows_affected) == (5, 2)


def test_corrupt_entries_are_error_results(db):
    results = db.apply([(1, b"not json"), (2, b'{"v": 99}'),
                        entry(3, ["CREATE TABLE t (x)"], op="bogus"),
                        (4, b'{"v":1,"op":"execute","stmts":"x","tx":false,"t":0,"r":0}'),
                        entry(5, [42, {"a": 1}, ["SELECT 1", {"a": {"b": 1}}]]),
                        entry(6, ["CREATE TABLE t (x)"])])
    assert all(r[0].error.startswith("invalid command") for r in results[:4])
    assert [r.error for r in results[4]] == ["invalid request", "invalid request",
                                             "unsupported type"]
    assert results[5][0].error is None and db.applied_index() == 6


@pytest.mark.parametrize("sql, error", [
    ("BEGIN", "explicit transaction control"), ("COMMIT", "explicit transaction control"),
    ("ROLLBACK", "explicit transaction control"), ("SAVEPOINT a", "explicit transaction control"),
    ("RELEASE a", "explicit transaction control"), ("END", "explicit transaction control"),
    ("ATTACH ':memory:' AS other", "ATTACH and DETACH are not supported"),
    ("DETACH other", "ATTACH and DETACH are not supported"),
    ("VACUUM INTO '/tmp/raftsql-escape.db'", "cannot VACUUM from within a transaction"),
    ("VACUUM; VACUUM INTO '/tmp/raftsql-escape.db'", "cannot VACUUM from within a transaction"),
    ("PRAGMA foreign_keys = ON", "PRAGMA foreign_keys cannot be set"),
    ("PRAGMA main.recursive_triggers(1)", "PRAGMA recursive_triggers cannot be set"),
    ("PRAGMA optimize", "PRAGMA optimize is not deterministic"),
    ("PRAGMA journal_mode = DELETE", "disallowed pragma"),
    ("PRAGMA wal_checkpoint(TRUNCATE)", "disallowed pragma"),
    ("SELECT 1; BEGIN", "explicit transaction control"),
])
def test_sql_that_would_break_determinism_is_refused(db, sql, error):
    (r,) = one(db, 1, [sql])
    assert r.error is not None and r.error.startswith(error), r.error
    assert db.applied_index() == 1
    assert not os.path.exists("/tmp/raftsql-escape.db")
    (after,) = one(db, 2, ["CREATE TABLE t (x)"])  # the batch transaction is intact
    assert after.error is None


def test_harmless_pragmas_still_work(db):
    create, user_version, read, info = one(db, 1, [
        "CREATE TABLE t (a, b)", "PRAGMA user_version = 7", "PRAGMA foreign_keys",
        "PRAGMA table_info(t)"], op="request")
    assert user_version.error is None and read.rows == [(0,)] and len(info.rows) == 2
    assert rows(db, "PRAGMA user_version") == [(7,)]


def test_pragmas_that_only_read_work_on_the_read_path(db):
    one(db, 1, ["CREATE TABLE p (id INTEGER PRIMARY KEY, v TEXT UNIQUE)",
                "CREATE INDEX pv ON p(v, id)", "PRAGMA user_version = 3"])
    for sql, expected in [
        ("PRAGMA journal_mode", [("wal",)]), ("PRAGMA main.journal_mode", [("wal",)]),
        ("PRAGMA foreign_keys", [(0,)]), ("PRAGMA user_version", [(3,)]),
        ("PRAGMA synchronous", None), ("PRAGMA table_info(p)", None),
        ("PRAGMA main.table_info('p')", None), ("PRAGMA index_list(p)", None),
        ("PRAGMA index_info(pv)", None), ("PRAGMA foreign_key_list(p)", []),
        ("PRAGMA integrity_check", [("ok",)]), ("PRAGMA quick_check(p)", [("ok",)]),
        ("PRAGMA table_list", None), ("SELECT name FROM pragma_table_info('p')", None),
        ("PRAGMA compile_options", None), ("PRAGMA page_count", None),
    ]:
        (r,) = db.query([sql])
        assert r.error is None, (sql, r.error)
        assert expected is None or r.rows == expected, (sql, r.rows)
    # a setting would change a pooled connection, or the file: refused as any write is
    for sql in ["PRAGMA user_version = 4", "PRAGMA cache_size = 10", "PRAGMA main.cache_size(10)",
                "PRAGMA busy_timeout = 1", "PRAGMA incremental_vacuum", "PRAGMA foreign_keys = 1"]:
        (r,) = db.query([sql])
        assert r.error is not None, sql
    assert db.query(["PRAGMA cache_size"])[0].rows == db.query(["PRAGMA cache_size"])[0].rows
    assert rows(db, "PRAGMA user_version") == [(3,)]


def test_spent_autoincrement_is_an_sql_error_not_a_disk_failure(db):
    one(db, 1, ["CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, x)",
                "INSERT INTO t VALUES(9223372036854775807, 1)"])
    (r,) = one(db, 2, ["INSERT INTO t(x) VALUES(2)"])
    assert r.error == "database or disk is full"
    assert db.applied_index() == 2


def test_vacuum_runs_when_it_starts_a_command(db):
    one(db, 1, ["CREATE TABLE t (x)", "INSERT INTO t VALUES(1)"])
    results = db.apply([entry(2, ["INSERT INTO t VALUES(2)"]), entry(3, ["VACUUM", "VACUUM"]),
                        entry(4, ["INSERT INTO t VALUES(3)"])])
    assert [r.error for r in results[1]] == [None, "cannot VACUUM from within a transaction"]
    assert rows(db, "SELECT x FROM t ORDER BY x") == [(1,), (2,), (3,)]
    assert db.applied_index() == 4


# ---- time budgets (apply_within, query_within) ---------------------------------------------

# ~0.2 s: far over a budget of 0.01 s, and still quick to run for real.
SLOW = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) "
        "INSERT INTO log SELECT count(*) FROM n")


def test_apply_within_budget_is_apply(tmp_path):
    entries = numbered(NONDETERMINISTIC)
    expected = apply_in_batches(str(tmp_path / "a.sqlite"), entries, [])
    with Database(str(tmp_path / "b.sqlite")) as d:
        results = d.apply_within(entries, 60.0)
        assert d.applied_index() == len(entries)
    assert outcome(results) == outcome(expected)
    assert dump(str(tmp_path / "b.sqlite")) == dump(str(tmp_path / "a.sqlite"))


def test_a_batch_over_budget_leaves_no_trace(tmp_path):
    # The second batch runs out of time in its last entry, after a rollback conflict was
    # replayed and random() drawn: apply() then gives exactly what a database that never
    # tried gives, counters included.
    first = numbered(NONDETERMINISTIC)
    second = numbered([
        {"stmts": ["CREATE TABLE u (k INTEGER PRIMARY KEY ON CONFLICT ROLLBACK)",
                   "INSERT INTO u VALUES(1)", "INSERT INTO u VALUES(1)",
                   "INSERT INTO t(r) VALUES(random())"], "seed": 11},
        {"stmts": ["INSERT INTO log VALUES(changes()), (last_insert_rowid()), (total_changes())",
                   SLOW]},
        {"stmts": ["INSERT INTO log VALUES(changes()), (last_insert_rowid()), (total_changes())"]},
    ], first=len(first) + 1)
    with Database(str(tmp_path / "a.sqlite")) as a, Database(str(tmp_path / "b.sqlite")) as b:
        a.apply(first)
        b.apply(first)
        assert b.apply_within(second, 0.01) is None
        assert b.applied_index() == len(first)
        assert dump(str(tmp_path / "b.sqlite")) == dump(str(tmp_path / "a.sqlite"))
        assert outcome(b.apply(second)) == outcome(a.apply(second))
    assert dump(str(tmp_path / "b.sqlite")) == dump(str(tmp_path / "a.sqlite"))


def test_apply_within_leaves_vacuum_to_apply(db):
    one(db, 1, ["CREATE TABLE t (x)"])
    assert db.apply_within([entry(2, ["INSERT INTO t VALUES(1)"]), entry(3, ["VACUUM"])],
                           60.0) is None
    assert db.applied_index() == 1
    assert rows(db, "SELECT count(*) FROM t") == [(0,)]


def test_query_within_budget(db):
    one(db, 1, ["CREATE TABLE t (x)", "INSERT INTO t VALUES(1)"])
    (r,) = db.query_within(["SELECT x FROM t"], ReadOptions(), 60.0)
    assert r.rows == [(1,)]
    slow = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000000) "
            "SELECT count(*) FROM n")
    assert db.query_within(["SELECT x FROM t", slow], ReadOptions(True), 0.01) is None
    assert db.query_within(["SELECT x FROM t"], ReadOptions(True), 60.0)[0].rows == [(1,)]


def test_the_wal_is_checkpointed_by_apply_not_apply_within(db):
    one(db, 1, ["CREATE TABLE t (x)"])
    blob = "x" * 3000
    index = 2
    while not db.checkpoint_due():
        assert db.apply_within([entry(index, [["INSERT INTO t VALUES(?)", blob]])], 60.0)
        index += 1
    db.checkpoint()
    assert not db.checkpoint_due()
    for _ in range(index):
        one(db, index, [["INSERT INTO t VALUES(?)", blob]])
        index += 1
    assert not db.checkpoint_due()  # apply() checkpoints as it goes, as SQLite would


# ---- parameters ------------------------------------------------------------------------


def typed(db: Database, index: int, value) -> tuple:
    (r,) = one(db, index, [["SELECT typeof(?1), ?1", value]], op="request")
    assert r.error is None, r.error
    return r.rows[0]


@pytest.mark.parametrize("value, expected", [
    (20, ("integer", 20)), (-(1 << 63), ("integer", -(1 << 63))),
    ((1 << 63) - 1, ("integer", (1 << 63) - 1)), (1 << 63, ("real", float(1 << 63))),
    (1.5, ("real", 1.5)), (3.0, ("real", 3.0)), (True, ("integer", 1)), (False, ("integer", 0)),
    (None, ("null", None)), ("fiona", ("text", "fiona")), ("", ("text", "")),
    ([0, 1, 255], ("blob", b"\x00\x01\xff")), ([], ("blob", b"")),
    ("x'00ff'", ("blob", b"\x00\xff")), ("X'53514C697465'", ("blob", b"SQLite")),
    (" x'0A' ", ("blob", b"\n")), ("x''", ("blob", b"")), ("x'0'", ("text", "x'0'")),
    ("x'zz'", ("text", "x'zz'")), ("it's", ("text", "it's")),
])
def test_parameter_decoding(db, value, expected):
    assert typed(db, 1, value) == expected


def test_named_parameters_bind_every_prefix(db):
    one(db, 1, ["CREATE TABLE foo (name TEXT, age INTEGER)"])
    results = one(db, 2, [["INSERT INTO foo VALUES(:name, :age)", {"name": "fiona", "age": 20}],
                          ["INSERT INTO foo VALUES(@name, $age)", {"name": "declan", "age": 3}],
                          ["SELECT :a, :a, $b", {"a": 1, "b": 2}],
                          # Three names, one value: Go's driver counts parameters first.
                          ["SELECT :a, @a, $a", {"a": 1}]], op="request")
    assert [r.error for r in results] == [None, None, None,
                                          "not enough args to execute query: want 3 got 1"]
    assert results[2].rows == [(1, 1, 2)]
    assert rows(db, "SELECT * FROM foo ORDER BY rowid") == [("fiona", 20), ("declan", 3)]


def test_wrong_parameter_counts(db):
    one(db, 1, ["CREATE TABLE foo (a, b)"])
    results = one(db, 2, [
        ["INSERT INTO foo VALUES(?, ?)", 1],
        "INSERT INTO foo VALUES(?, ?)",
        ["INSERT INTO foo VALUES(:a, :b)", {"a": 1}],
        ["INSERT INTO foo VALUES(?, ?)", 1, 2, 3],  # extra values are ignored, as in Go's driver
        ["INSERT INTO foo VALUES(:a, :b)", {"a": 1, "c": 2}],  # enough values: :b is NULL
        ["INSERT INTO foo VALUES(?, :b)", 1, {"b": 2}],
    ])
    assert [r.error for r in results] == [
        "not enough args to execute query: want 2 got 1",
        "not enough args to execute query: want 2 got 0",
        "not enough args to execute query: want 2 got 1",
        None, None, "mixing positional and named parameters is not supported"]
    assert rows(db, "SELECT * FROM foo ORDER BY rowid") == [(1, 2), (1, None)]


def test_empty_statements_are_skipped_silently(db):
    results = one(db, 1, ["", "CREATE TABLE t (x)", [""], ["", 1]])
    assert len(results) == 1 and results[0].error is None
    assert db.query(["", "SELECT 1"])[0].rows == [(1,)]
    assert len(db.query([""])) == 0


def test_validate_statements():
    validate_statements(["SELECT 1", ["SELECT ?", 1, 2.5, None, True, "s", [1, 2]],
                         ["SELECT :a", {"a": [0, 255]}], ["SELECT 1"]])
    for bad, message in [
        ({"a": 1}, "invalid request"), ("SELECT 1", "invalid request"), ([], "no statements"),
        ([1], "invalid request"), ([{}], "invalid request"), ([[]], "invalid request"),
        ([[1, 2]], "invalid request"), ([["SELECT ?", {"a": {"b": 1}}]], "unsupported type"),
        ([["SELECT ?", [1, 256]]], "unsupported type"), ([["SELECT ?", [1.0]]], "unsupported type"),
        ([["SELECT ?", [True]]], "unsupported type"), ([["SELECT ?", {"a": [-1]}]], "unsupported type"),
    ]:
        with pytest.raises(BadStatementError) as info:
            validate_statements(bad)
        assert str(info.value) == message, bad


def test_disallowed_pragma():
    for sql in ["PRAGMA journal_mode=DELETE", "pragma main.journal_mode = wal",
                "  PRAGMA wal_autocheckpoint=10", "PRAGMA wal_checkpoint", "PRAGMA wal_checkpoint(FULL)",
                "PRAGMA synchronous=OFF", "PRAGMA main.query_only = 1", ["PRAGMA synchronous=0"]]:
        assert disallowed_pragma(["SELECT 1", sql]), sql
    for sql in ["PRAGMA journal_mode", "PRAGMA synchronous", "PRAGMA table_info(foo)",
                "SELECT 'PRAGMA journal_mode=DELETE'", ["PRAGMA query_only"]]:
        assert not disallowed_pragma([sql]), sql


# ---- reads ------------------------------------------------------------------------------


def test_writes_through_query_fail_with_rqlite_text(db):
    one(db, 1, ["CREATE TABLE foo (x)"])
    results = db.query(["INSERT INTO foo VALUES(1)", "CREATE TABLE bar (y)",
                        "PRAGMA user_version = 3", "SELECT count(*) FROM foo",
                        "CREATE TEMP TABLE tmp (z)"])
    assert [r.error for r in results] == [QUERY_WRITE_ERROR] * 3 + [None, QUERY_WRITE_ERROR]
    strong = one(db, 2, ["SELECT count(*) FROM foo", "INSERT INTO foo VALUES(1)"], op="query")
    assert [r.error for r in strong] == [None, QUERY_WRITE_ERROR]
    assert strong[0].rows == [(0,)]
    assert db.query(["BEGIN"])[0].error.startswith("explicit transaction control")


def test_query_transaction_stops_at_first_error(db):
    one(db, 1, ["CREATE TABLE foo (x)", "INSERT INTO foo VALUES(1)"])
    results = db.query(["SELECT x FROM foo", "SELECT * FROM nonsense", "SELECT 2"],
                       ReadOptions(transaction=True))
    assert [r.error for r in results] == [None, "no such table: nonsense"]
    assert len(db.query(["SELECT x FROM foo", "SELECT * FROM nonsense", "SELECT 2"])) == 3
    assert db.query(["SELECT x FROM foo"])[0].rows == [(1,)]  # the connection is usable again


def test_reads_run_concurrently_with_apply(db):
    one(db, 1, ["CREATE TABLE t (x)"])
    stop = threading.Event()

    def reader() -> int:
        n = 0
        while not stop.is_set():
            (r,) = db.query(["SELECT count(*) FROM t"])
            assert r.error is None
            n += 1
        return n

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(reader) for _ in range(4)]
        for i in range(2, 200):
            db.apply([entry(i, [["INSERT INTO t VALUES(?)", i]])])
        stop.set()
        assert all(f.result() > 0 for f in futures)
    assert rows(db, "SELECT count(*) FROM t") == [(198,)]


def test_query_after_close_is_refused(tmp_path):
    d = Database(str(tmp_path / "db.sqlite"))
    d.close()
    d.close()
    with pytest.raises(RaftSQLError, match="store not open"):
        d.query(["SELECT 1"])


# ---- snapshots ------------------------------------------------------------------------------


def test_snapshot_restore_round_trip(tmp_path):
    entries = numbered(NONDETERMINISTIC)
    later = numbered([{"stmts": ["INSERT INTO log VALUES(changes()), (last_insert_rowid()), "
                                 "(total_changes())", "INSERT INTO t(r) VALUES(random())"]}],
                     first=len(entries) + 2)
    source = Database(str(tmp_path / "a.sqlite"))
    source.apply(entries)
    source.mark_applied(len(entries) + 1)  # e.g. a no-op entry after the last command
    snap = str(tmp_path / "snap.sqlite")
    assert source.snapshot(snap) == len(entries) + 1
    with open(snap, "rb") as f:
        assert f.read(16) == b"SQLite format 3\x00"
    with Database(str(tmp_path / "b.sqlite")) as target:
        target.apply([entry(1, ["CREATE TABLE junk (x)"])])
        target.restore(snap, len(entries) + 1)
        assert target.applied_index() == len(entries) + 1
        assert target.apply(entries) == [None] * len(entries)
        assert outcome(target.apply(later)) == outcome(source.apply(later))
    source.close()
    assert dump(str(tmp_path / "a.sqlite")) == dump(str(tmp_path / "b.sqlite"))


def test_restore_converts_page_size_and_takes_an_index(tmp_path):
    foreign = str(tmp_path / "foreign.sqlite")
    conn = apsw.Connection(foreign)
    conn.execute("PRAGMA page_size = 1024; CREATE TABLE t (x); INSERT INTO t VALUES('kept')")
    conn.close()
    with Database(str(tmp_path / "db.sqlite")) as d:
        d.apply([entry(1, ["CREATE TABLE old (x)"])])
        d.restore(foreign, applied_index=7)
        assert d.applied_index() == 7
        assert rows(d, "SELECT x FROM t") == [("kept",)]
        assert rows(d, "SELECT name FROM sqlite_schema WHERE name = 'old'") == []
        (r,) = one(d, 8, ["INSERT INTO t VALUES('more')"])
        assert r.error is None
    with Database(str(tmp_path / "db.sqlite")) as d:
        assert d.applied_index() == 8


def test_restore_refuses_what_is_not_a_database(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not a database" * 100)
    with Database(str(tmp_path / "db.sqlite")) as d:
        d.apply([entry(1, ["CREATE TABLE t (x)"])])
        with pytest.raises(ValueError, match="not a SQLite database"):
            d.restore(str(junk), 5)
        assert d.applied_index() == 1 and rows(d, "SELECT count(*) FROM t") == [(0,)]


# ---- foreign keys (--fk), db_timeout, qualify_columns -------------------------------------

FK = [
    {"stmts": ["CREATE TABLE parent (id INTEGER PRIMARY KEY)",
               "CREATE TABLE child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id))",
               "INSERT INTO parent VALUES(1)"]},
    {"stmts": ["INSERT INTO child VALUES(1, 1)", "INSERT INTO child VALUES(2, 99)",
               "DELETE FROM parent WHERE id = 1"], "fk": True},
    {"stmts": ["INSERT INTO child VALUES(3, 98)"]},  # a leader without --fk: not enforced
    {"stmts": ["INSERT INTO child VALUES(4, 97)", "PRAGMA foreign_keys"], "fk": True,
     "op": "request"},
]


def test_foreign_keys_are_enforced_as_the_entry_says_however_batched(tmp_path):
    entries = [(i, Command("request" if c.get("op") else "execute", c["stmts"], False, T0, 1,
                           fk=c.get("fk", False)).encode()) for i, c in enumerate(FK, 1)]
    together = apply_in_batches(str(tmp_path / "a.sqlite"), entries, [])
    apart = apply_in_batches(str(tmp_path / "b.sqlite"), entries, [1, 2, 3])
    assert outcome(together) == outcome(apart)
    assert dump(str(tmp_path / "a.sqlite")) == dump(str(tmp_path / "b.sqlite"))
    assert [r.error for r in together[1]] == [None, "FOREIGN KEY constraint failed",
                                              "FOREIGN KEY constraint failed"]
    assert together[2][0].error is None
    assert together[3][0].error == "FOREIGN KEY constraint failed"
    assert together[3][1].rows == [(1,)]
    with Database(str(tmp_path / "a.sqlite"), fk=True) as d:  # what a node with --fk reads
        assert rows(d, "PRAGMA foreign_keys") == [(1,)]
        assert rows(d, "SELECT id FROM child ORDER BY id") == [(1,), (3,)]


def test_foreign_keys_switch_leaves_apply_within_to_apply(db):
    one(db, 1, FK[0]["stmts"])
    fk_entry = (2, Command("execute", ["INSERT INTO child VALUES(1, 5)"], False, T0, 1,
                           fk=True).encode())
    assert db.apply_within([fk_entry], 60.0) is None  # the switch commits: not undoable
    assert db.apply([fk_entry])[0][0].error == "FOREIGN KEY constraint failed"


LONG_WRITE = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) "
              "INSERT INTO t SELECT i FROM n")


def test_db_timeout_stops_a_write_at_the_same_step_on_every_node(tmp_path):
    def commands(max_steps):
        return [(1, Command("execute", ["CREATE TABLE t (x)"], False, T0, 1).encode()),
                (2, Command("execute", ["INSERT INTO t VALUES(0)", LONG_WRITE, "INSERT INTO t "
                                        "VALUES(changes())"], False, T0, 1,
                            max_steps=max_steps).encode()),
                (3, Command("execute", ["INSERT INTO t VALUES(-1)"], False, T0, 1).encode())]

    entries = commands(50_000)
    together = apply_in_batches(str(tmp_path / "a.sqlite"), entries, [])
    apart = apply_in_batches(str(tmp_path / "b.sqlite"), entries, [1, 2])
    assert outcome(together) == outcome(apart)
    assert dump(str(tmp_path / "a.sqlite")) == dump(str(tmp_path / "b.sqlite"))
    assert [r.error for r in together[1]] == [None, "execute timeout", None]
    with Database(str(tmp_path / "a.sqlite")) as d:
        assert rows(d, "SELECT count(*) FROM t") == [(3,)]  # the long insert left nothing
    free = apply_in_batches(str(tmp_path / "c.sqlite"), commands(0), [])
    assert [r.error for r in free[1]] == [None, None, None]


def test_db_timeout_on_reads_is_a_time(db):
    slow = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000000) "
            "SELECT count(*) FROM n")
    fast, late = db.query(["SELECT 1", slow], ReadOptions(db_timeout=0.05))
    assert (fast.rows, late.error) == ([(1,)], "query timeout")
    assert db.query(["SELECT 2"])[0].rows == [(2,)]  # the connection is usable, unlimited


def test_qualify_columns_names_table_columns(db):
    one(db, 1, ["CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT)",
                "CREATE TABLE titles (id INTEGER PRIMARY KEY, contact_id INTEGER, title TEXT)",
                "INSERT INTO contacts VALUES(1, 'alice')", "INSERT INTO titles VALUES(1, 1, 'eng')"])
    join = "SELECT *, 1 AS one FROM contacts AS c JOIN titles ON c.id = titles.contact_id"
    (plain,) = db.query([join])
    (qualified,) = db.query([join], ReadOptions(qualify=True))
    assert plain.columns == ["id", "name", "id", "contact_id", "title", "one"]
    assert qualified.columns == ["contacts.id", "contacts.name", "titles.id",
                                 "titles.contact_id", "titles.title", "one"]
    assert qualified.rows == plain.rows
    (strong,) = db.apply([(2, Command("query", [join], False, T0, 1, qualify=True).encode())])[0]
    assert strong.columns == qualified.columns


@pytest.mark.parametrize("stmt", [
    ["SELECT ?", {"a": 1}], ["SELECT ?, :a", {"a": 1}], ["SELECT :a", 1, 2], ["SELECT ?5", 1],
    ["SELECT ?, ?", {"a": 1}], ["SELECT 1", 7], ["SELECT :a, ?", 1], "SELECT ?",
])
def test_binding_errors_are_in_sql_words(db, stmt):
    (r,) = one(db, 1, [stmt], op="request")
    error = r.error or ""
    for leak in ("apsw", "Binding", "supplied", "Python", "dict", "offset"):
        assert leak not in error, error
    if r.error is None:
        assert stmt in (["SELECT :a", 1, 2], ["SELECT 1", 7])  # extra values are ignored
