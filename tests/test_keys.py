"""Idempotency keys (raftsql/sql/keys.py): a keyed write applies at most once within the
window, a repeat gives the first outcome, identically on every node however batches are cut,
across restarts, crashes between the two commits, and snapshots."""

from __future__ import annotations

import apsw
import pytest

from raftsql.sql.command import Command, Replayed
from raftsql.sql.database import Database
from raftsql.sql.keys import TABLE, KeyStore, decode_results, encode_results, valid_key
from raftsql.sql.sidecar import Sidecar
from tests.test_sqlite import SLOW, T0, dump, outcome, rows, user_schema

WINDOW = 60_000


def keyed(index: int, stmts: list, key: str | None, *, time_ms: int = T0, capacity: int = 100,
          tx: bool = False) -> tuple[int, bytes]:
    return index, Command("execute", stmts, tx, time_ms, 7, key=key, key_window_ms=WINDOW,
                          key_capacity=capacity).encode()


INSERT = ["INSERT INTO t(v) VALUES ('x') RETURNING id, v"]


@pytest.fixture
def db(tmp_path):
    d = Database(str(tmp_path / "db.sqlite"))
    d.apply([(1, Command("execute", ["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]).encode())])
    yield d
    d.close()


def test_a_repeat_applies_nothing_and_gives_the_first_outcome(db):
    [first] = db.apply([keyed(2, INSERT, "k1")])
    [again] = db.apply([keyed(3, INSERT, "k1")])
    assert not isinstance(first, Replayed) and isinstance(again, Replayed)
    assert outcome([again]) == outcome([first])
    assert first[0].rows == [(1, "x")]
    [other] = db.apply([keyed(4, INSERT, "k2")])
    assert other[0].rows == [(2, "x")]
    assert rows(db, "SELECT count(*) FROM t") == [(2,)]


def test_a_repeat_in_the_same_batch_too(db):
    results = db.apply([keyed(2, INSERT, "k"), keyed(3, INSERT, "k"), keyed(4, INSERT, None)])
    assert [isinstance(r, Replayed) for r in results] == [False, True, False]
    assert rows(db, "SELECT id FROM t ORDER BY id") == [(1,), (2,)]


def test_errors_are_outcomes_too(db):
    stmts = ["INSERT INTO t(id, v) VALUES (1, 'a')", "INSERT INTO t(id, v) VALUES (1, 'b')"]
    [first] = db.apply([keyed(2, stmts, "k")])
    [again] = db.apply([keyed(3, stmts, "k")])
    assert [r.error for r in again] == [None, "UNIQUE constraint failed: t.id"]
    assert outcome([again]) == outcome([first])


def test_the_window_is_the_entries_time(db):
    db.apply([keyed(2, INSERT, "k", time_ms=T0)])
    [inside] = db.apply([keyed(3, INSERT, "k", time_ms=T0 + WINDOW)])
    [after] = db.apply([keyed(4, INSERT, "k", time_ms=T0 + WINDOW + 1)])
    assert isinstance(inside, Replayed) and not isinstance(after, Replayed)
    assert rows(db, "SELECT count(*) FROM t") == [(2,)]


def test_keys_of_the_last_capacity_entries_are_kept(db):
    db.apply([keyed(i, INSERT, f"k{i}", capacity=3) for i in (2, 3, 4)])
    # entry 5 keeps entries 3..5: k2 is forgotten, k4 is not
    [k2, k4] = db.apply([keyed(5, INSERT, "k2", capacity=3), keyed(6, INSERT, "k4", capacity=3)])
    assert not isinstance(k2, Replayed) and isinstance(k4, Replayed)
    assert db._keys.count() == 2  # k4 (entry 4) and k2 (entry 5); k3 went at entry 6


def test_however_batched_every_node_gives_the_same(tmp_path):
    # keys expire by time (a later leader's clock may run behind) and by count, within batches
    script = [keyed(1, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"], None)]
    times = [T0, T0 + 10, T0 + WINDOW + 5, T0 + 3, T0 + 2 * WINDOW, T0 + 2 * WINDOW]
    for i, key in enumerate(["a", "b", "a", "c", "b", "b", "a", "d", "a", "b"]):
        script.append(keyed(i + 2, INSERT, key, time_ms=times[i % len(times)], capacity=3))
    outcomes, dumps = [], []
    for n, cuts in enumerate(([], [3, 5, 9], list(range(1, len(script))))):
        d = Database(str(tmp_path / f"n{n}.sqlite"))
        out, start = [], 0
        for cut in [*cuts, len(script)]:
            batch = d.apply(script[start:cut])
            out += [(isinstance(r, Replayed), outcome([r])) for r in batch]
            start = cut
        outcomes.append(out)
        dumps.append(dump(d.path))
        d.close()
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert dumps[0] == dumps[1] == dumps[2]
    replayed = [r for r, _ in outcomes[0]]
    assert any(replayed) and replayed.count(False) > 5  # repeats, and keys forgotten


def test_keys_survive_a_restart(tmp_path):
    path = str(tmp_path / "db.sqlite")
    with Database(path) as d:
        d.apply([keyed(1, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"], None)])
        d.apply([keyed(2, INSERT, "k")])
    with Database(path) as d:
        d.recover(2)
        [again] = d.apply([keyed(3, INSERT, "k")])
        assert isinstance(again, Replayed) and again[0].rows == [(1, "x")]


def test_keys_of_entries_the_database_lost_are_forgotten(tmp_path):
    """A crash between the keys' commit and the database's: the keys hold an entry the
    database does not, and must not make its replay a no-op."""
    path = str(tmp_path / "db.sqlite")
    with Database(path) as d:
        d.apply([keyed(1, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"], None)])
    book = Sidecar(path + "-keys", [TABLE])
    KeyStore(book).record("k", 2, T0, [])
    book.commit(2)
    book.close()
    with Database(path) as d:
        d.recover(2)
        [replayed] = d.apply([keyed(2, INSERT, "k")])
        assert not isinstance(replayed, Replayed) and replayed[0].rows == [(1, "x")]
        assert rows(d, "SELECT count(*) FROM t") == [(1,)]


def test_keys_forgotten_by_entries_the_database_lost_are_remembered_again(tmp_path):
    """A power cut can take the database's last commits (not fsynced: the log replays them)
    but not the keys' (fsynced): what those entries forgot must come back, or their replay
    would apply a repeat that the first run recognised."""
    path = str(tmp_path / "db.sqlite")
    script = [keyed(1, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"], None),
              keyed(2, INSERT, "k2", capacity=3), keyed(3, INSERT, "k3", capacity=3),
              keyed(4, INSERT, "k2", capacity=3),   # a repeat: replayed
              keyed(5, INSERT, "k5", capacity=3)]   # forgets entry 2's key
    with Database(path) as d:
        d.apply(script[:3])
    with open(path, "rb") as f:
        at_3 = f.read()
    with Database(path) as d:
        first = d.apply(script[3:])
    assert isinstance(first[0], Replayed)
    with open(path, "wb") as f:  # the database is back at entry 3; the keys file is not
        f.write(at_3)
    with Database(path) as d:
        d.recover(5)
        again = d.apply(script[3:])
        assert [isinstance(r, Replayed) for r in again] == [True, False]
        assert outcome(again) == outcome(first) and rows(d, "SELECT count(*) FROM t") == [(3,)]


def test_forgotten_keys_go_for_good_once_the_database_is_durable(db):
    db.apply([keyed(i, INSERT, f"k{i}", capacity=2) for i in range(2, 12)])
    stored = db._keys._conn.execute("SELECT count(*) FROM keys").fetchall()[0][0]
    assert stored == 10 and db._keys.count() == 2
    db.checkpoint()
    assert db._keys._conn.execute("SELECT count(*) FROM keys").fetchall()[0][0] == 2


def test_a_batch_undone_takes_its_keys_with_it(db):
    # ON CONFLICT ROLLBACK ends SQLite's transaction: the segment is redone (database.py)
    db.apply([(2, Command("execute", ["CREATE TABLE u (x UNIQUE ON CONFLICT ROLLBACK)",
                                      "INSERT INTO u VALUES (1)"]).encode())])
    results = db.apply([keyed(3, INSERT, "k"), keyed(4, ["INSERT INTO u VALUES (1)"], "r"),
                        keyed(5, INSERT, "k")])
    assert [isinstance(r, Replayed) for r in results] == [False, False, True]
    assert results[1][0].error is not None
    assert rows(db, "SELECT count(*) FROM t") == [(1,)] and db._keys.count() == 2


def test_a_keyed_batch_over_budget_leaves_no_key_behind(db):
    db.apply([(2, Command("execute", ["CREATE TABLE log (n)"]).encode())])
    batch = [keyed(3, INSERT, "k"), keyed(4, [SLOW], "slow")]
    assert db.apply_within(batch, 0.01) is None
    assert rows(db, "SELECT count(*) FROM t") == [(0,)] and db._keys.count() == 0
    first, slow = db.apply(batch)
    assert not isinstance(first, Replayed) and db._keys.count() == 2
    [inline] = db.apply_within([keyed(5, INSERT, "k")], 1.0)
    assert isinstance(inline, Replayed) and outcome([inline]) == outcome([first])


def _stored(script):
    def stored_after(index):
        return [(i, data) for i, data in script if i > index]
    return stored_after


def test_keys_lost_by_a_power_cut_make_the_database_start_over(tmp_path):
    """The keys file lost commits the database kept: the database cannot tell a repeat from
    a new write for those entries, so it starts over and replays the log."""
    path = str(tmp_path / "db.sqlite")
    script = [keyed(1, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"], None),
              keyed(2, INSERT, "a"), keyed(3, INSERT, "b"), keyed(4, INSERT, "a")]
    with Database(path) as d:
        d.apply(script[:2])
    with open(path + "-keys", "rb") as f:
        keys_at_2 = f.read()
    with Database(path) as d:
        first = d.apply(script[2:])
    with open(path + "-keys", "wb") as f:
        f.write(keys_at_2)  # the keys are back at entry 2, the database is not
    with Database(path) as d:
        d.recover(4, _stored(script))
        assert d.applied_index() == 0 and user_schema(path)[0] == []
        again = d.apply(script)
        assert outcome(again[2:]) == outcome(first) and isinstance(again[3], Replayed)
        assert rows(d, "SELECT count(*) FROM t") == [(2,)]


def test_keys_behind_only_by_unkeyed_entries_are_fine(tmp_path):
    path = str(tmp_path / "db.sqlite")
    script = [keyed(1, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"], None),
              keyed(2, INSERT, "a"), keyed(3, INSERT, None), keyed(4, INSERT, None)]
    with Database(path) as d:
        d.apply(script[:2])
        d.apply(script[2:])
    with Database(path) as d:
        d.recover(4, _stored(script))
        assert d.applied_index() == 4
        [r] = d.apply([keyed(5, INSERT, "a")])
        assert isinstance(r, Replayed)
        d.apply([keyed(6, INSERT, None)])
    with Database(path) as d:
        d.recover(6, lambda index: None)  # entries after the keys' stamp compacted away
        assert d.applied_index() == 0


def test_snapshots_carry_the_keys_and_restores_take_them_out(db, tmp_path):
    db.apply([keyed(2, [["INSERT INTO t(v) VALUES (?)", [0, 255]]], "k", capacity=3)])
    db.apply([keyed(i, INSERT, f"x{i}", capacity=3) for i in (3, 4, 5)])
    db.apply([keyed(6, INSERT, "k", capacity=3)])  # k (entry 2) was forgotten: applied
    snap = str(tmp_path / "snap.sqlite")
    assert db.snapshot(snap) == 6
    with Database(str(tmp_path / "other.sqlite")) as other:
        other.restore(snap, 6)
        assert user_schema(other.path)[0] == [("table", "t")]
        a = db.apply([keyed(7, INSERT, "x5", capacity=3), keyed(8, INSERT, "new", capacity=3)])
        b = other.apply([keyed(7, INSERT, "x5", capacity=3), keyed(8, INSERT, "new", capacity=3)])
        assert [isinstance(r, Replayed) for r in b] == [True, False]
        assert outcome(a) == outcome(b) and dump(db.path) == dump(other.path)
        assert other._keys.count() == db._keys.count() == 2  # entries 6 and 8


def test_a_loaded_file_without_keys_clears_them(db, tmp_path):
    db.apply([keyed(2, INSERT, "k")])
    plain = str(tmp_path / "plain.sqlite")
    conn = apsw.Connection(plain)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    conn.close()
    db.restore(plain, 3)
    assert db._keys.count() == 0
    [r] = db.apply([keyed(4, INSERT, "k")])
    assert not isinstance(r, Replayed)


def test_user_sql_may_not_take_raftsql_names(db):
    [r] = db.apply([(2, Command("execute", ["CREATE TABLE raftsql_keys (x)"]).encode())])
    assert r[0].error and "reserved" in r[0].error
    [r] = db.apply([(3, Command("execute", ["CREATE INDEX Raftsql_i ON t(v)"]).encode())])
    assert r[0].error and "reserved" in r[0].error


def test_results_round_trip_and_keys_are_checked():
    from raftsql.sql.command import StatementResult

    results = [StatementResult(["a", "b"], ["BLOB", None], [(b"\x00\xff", 1.5), (None, "t")],
                               3, 1, None, 0.25), StatementResult(error="boom")]
    assert decode_results(encode_results(results)) == results
    assert valid_key("0f8fad5b-d9cb-469f-a165-70867728950e")
    assert not valid_key("") and not valid_key("x" * 129) and not valid_key("é") \
        and not valid_key("a\nb")


def test_forgetting_is_bounded_per_entry_and_never_late(db):
    db.apply([keyed(i, INSERT, f"k{i}", capacity=1000) for i in range(2, 202)])
    later = T0 + WINDOW + 1  # every key so far is out of the window now
    [r] = db.apply([keyed(202, INSERT, "k150", time_ms=later, capacity=1000)])
    assert not isinstance(r, Replayed)  # judged by the window, marked or not
    db.apply([keyed(i, INSERT, f"n{i}", time_ms=later, capacity=1000) for i in (203, 204, 205)])
    marked = dict(db._keys._conn.execute(
        "SELECT forgotten, count(*) FROM keys WHERE forgotten IS NOT NULL GROUP BY forgotten"))
    # 64 of the oldest per keyed entry, and k150's first row when k150 came again
    assert marked == {202: 65, 203: 64, 204: 64, 205: 7}
    assert db._keys.count() == 4
