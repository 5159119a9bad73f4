"""raftsql.dbapi against PEP 249, and against sqlite3 where PEP 249 leaves a choice, on one
real node (started once for the module)."""

from __future__ import annotations

import datetime
import threading

import pytest

import raftsql
import raftsql.client.dbapi
from raftsql import dbapi
from raftsql.client.errors import http_error, sql_error
from raftsql.client.http import IDEMPOTENCY_HEADER, Response

from .client_node import single_node, table_name


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    yield from single_node(tmp_path_factory)


@pytest.fixture
def conn(url):
    c = dbapi.connect(url, consistency="strong")
    yield c
    c.close()


@pytest.fixture
def table(conn) -> str:
    name = table_name()
    conn.execute(f"CREATE TABLE {name}(id INTEGER PRIMARY KEY, u TEXT UNIQUE, n INTEGER)")
    return name


def count(conn, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# ---- the module


def test_globals_and_short_names():
    assert (dbapi.apilevel, dbapi.threadsafety, dbapi.paramstyle) == ("2.0", 2, "qmark")
    assert dbapi is raftsql.client.dbapi  # one module under two names
    assert raftsql.connect is dbapi.connect


def test_exception_hierarchy_is_pep_249s():
    assert issubclass(dbapi.Warning, Exception)
    assert issubclass(dbapi.Error, Exception)
    assert not issubclass(dbapi.Warning, dbapi.Error)
    assert issubclass(dbapi.InterfaceError, dbapi.Error)
    assert not issubclass(dbapi.InterfaceError, dbapi.DatabaseError)
    assert issubclass(dbapi.DatabaseError, dbapi.Error)
    for name in ("DataError", "OperationalError", "IntegrityError", "InternalError",
                 "ProgrammingError", "NotSupportedError"):
        cls = getattr(dbapi, name)
        assert cls.__bases__ == (dbapi.DatabaseError,), name
        assert getattr(dbapi.Connection, name) is cls  # the optional extension
    assert dbapi.Connection.Error is dbapi.Error and dbapi.Connection.Warning is dbapi.Warning


def test_type_objects_follow_sqlite_affinity():
    assert dbapi.STRING == "TEXT" and dbapi.STRING == "VARCHAR(20)"
    assert "clob" == dbapi.STRING  # noqa: SIM300 - the reflected comparison works too
    assert dbapi.NUMBER == "INTEGER" and dbapi.NUMBER == "BIGINT" and dbapi.NUMBER == "REAL"
    assert dbapi.NUMBER == "DOUBLE PRECISION" and dbapi.NUMBER == "DECIMAL(10,2)"
    assert dbapi.BINARY == "BLOB" and dbapi.BINARY == ""  # no declared type: BLOB affinity
    assert dbapi.DATETIME == "DATETIME" and dbapi.DATETIME == "DATE"
    assert dbapi.DATETIME == "TIMESTAMP"
    assert dbapi.ROWID == "INTEGER"
    # first rule wins: CHARINT is INTEGER, FLOATING POINT is INTEGER ("INT" in "POINT")
    assert dbapi.NUMBER == "CHARINT" and dbapi.STRING != "CHARINT"
    assert dbapi.NUMBER == "FLOATING POINT" and dbapi.STRING != "FLOATING POINT"
    assert dbapi.STRING != "BLOB" and dbapi.BINARY != "TEXT" and dbapi.DATETIME != "TEXT"
    assert dbapi.ROWID != "BIGINT" and dbapi.NUMBER != "TEXT" and dbapi.STRING != dbapi.BINARY


def test_constructors():
    assert dbapi.Date(2024, 2, 29) == datetime.date(2024, 2, 29)
    assert dbapi.Time(1, 2, 3) == datetime.time(1, 2, 3)
    assert dbapi.Timestamp(2024, 2, 29, 1, 2, 3) == datetime.datetime(2024, 2, 29, 1, 2, 3)
    ticks = 1_700_000_000.5
    local = datetime.datetime.fromtimestamp(ticks)
    assert dbapi.DateFromTicks(ticks) == local.date()
    assert dbapi.TimeFromTicks(ticks) == local.time().replace(microsecond=0)
    assert dbapi.TimestampFromTicks(ticks) == local.replace(microsecond=0)
    assert dbapi.Binary(b"\x00\x01") == b"\x00\x01"


def test_connect_checks_its_arguments():
    with pytest.raises(dbapi.ProgrammingError, match="consistency"):
        dbapi.connect("http://127.0.0.1:1", consistency="eventual")
    with pytest.raises(dbapi.InterfaceError):
        dbapi.connect("ftp://example.com")


# ---- cursors


def test_description_rowcount_lastrowid(conn, table):
    cur = conn.cursor()
    assert (cur.description, cur.rowcount, cur.lastrowid, cur.arraysize) == (None, -1, None, 1)
    assert cur.connection is conn
    assert cur.execute(f"INSERT INTO {table}(u, n) VALUES (?, ?)", ("a", 1)) is cur
    assert (cur.description, cur.rowcount, cur.lastrowid) == (None, 1, 1)
    cur.execute(f"INSERT INTO {table}(u, n) VALUES ('b', 2), ('c', 3)")
    assert (cur.rowcount, cur.lastrowid) == (2, 3)
    cur.execute(f"UPDATE {table} SET n = n + 1 WHERE n >= 2")
    assert (cur.rowcount, cur.lastrowid) == (2, 3)  # lastrowid: only INSERTs change it
    cur.execute(f"DELETE FROM {table} WHERE u = 'nobody'")
    assert cur.rowcount == 0
    cur.execute(f"SELECT id, u, n, n * 1.5 AS half FROM {table} ORDER BY id")
    assert cur.rowcount == -1
    assert cur.description == (("id", "INTEGER", None, None, None, None, None),
                               ("u", "TEXT", None, None, None, None, None),
                               ("n", "INTEGER", None, None, None, None, None),
                               ("half", "", None, None, None, None, None))
    assert cur.description[0][1] == dbapi.ROWID and cur.description[1][1] == dbapi.STRING
    cur.execute(f"SELECT u FROM {table} WHERE 0")
    assert cur.description[0][0] == "u" and cur.fetchall() == []
    cur.execute(f"CREATE INDEX {table}_n ON {table}(n)")
    assert (cur.description, cur.rowcount) == (None, -1)


def test_fetch_and_arraysize(conn, table):
    conn.executemany(f"INSERT INTO {table}(n) VALUES (?)", [(i,) for i in range(7)])
    cur = conn.execute(f"SELECT n FROM {table} ORDER BY n")
    assert cur.fetchone() == (0,)
    assert cur.fetchmany() == [(1,)]  # arraysize is 1
    cur.arraysize = 2
    assert cur.fetchmany() == [(2,), (3,)]
    assert cur.fetchmany(1) == [(4,)]
    assert cur.fetchall() == [(5,), (6,)]
    assert cur.fetchone() is None and cur.fetchmany() == [] and cur.fetchall() == []
    assert list(conn.execute(f"SELECT n FROM {table} WHERE n < 3 ORDER BY n")) == [
        (0,), (1,), (2,)]
    cur.setinputsizes([None])
    cur.setoutputsize(10)
    assert conn.cursor().fetchone() is None  # nothing executed yet: no rows, as sqlite3


def test_closed_cursor_and_connection_refuse_use(url, table):
    c = dbapi.connect(url)
    cur = c.cursor()
    cur.close()
    for call in (lambda: cur.execute("SELECT 1"), cur.fetchone, cur.fetchall,
                 lambda: cur.executemany("INSERT INTO x VALUES (?)", [(1,)])):
        with pytest.raises(dbapi.ProgrammingError, match="closed cursor"):
            call()
    live = c.cursor()
    with c:
        c.execute("SELECT 1")
    assert c.closed  # leaving the block closes the connection
    c.close()  # twice is fine
    for call in (c.cursor, lambda: c.execute("SELECT 1"), c.commit, c.rollback, c.batch,
                 live.fetchone, lambda: live.execute("SELECT 1")):
        with pytest.raises(dbapi.ProgrammingError, match="closed connection"):
            call()


def test_commit_and_rollback_do_nothing(conn, table):
    conn.execute(f"INSERT INTO {table}(u) VALUES ('kept')")
    conn.rollback()  # statements autocommit: nothing to undo
    conn.commit()
    assert count(conn, table) == 1


def test_executemany_is_one_atomic_request(conn, table):
    cur = conn.executemany(f"INSERT INTO {table}(u, n) VALUES (?, ?)",
                           iter([("a", 1), ("b", 2), ("c", 3)]))
    assert cur.rowcount == 3
    with pytest.raises(dbapi.IntegrityError, match="UNIQUE"):
        conn.executemany(f"INSERT INTO {table}(u) VALUES (?)", [("d",), ("a",), ("e",)])
    assert count(conn, table) == 3  # "d" was not kept: all or nothing
    cur = conn.executemany(f"UPDATE {table} SET n = n * 10 WHERE u = ?", [("a",), ("c",)])
    assert cur.rowcount == 2  # summed
    assert conn.executemany(f"INSERT INTO {table}(u) VALUES (?)", []).rowcount == 0
    with pytest.raises(dbapi.ProgrammingError, match="DML"):
        conn.executemany("SELECT ?", [(1,)])


def test_executemany_sends_one_request(conn, table, monkeypatch):
    sent = []
    real = conn._cluster.send
    monkeypatch.setattr(conn._cluster, "send", lambda *a, **k: sent.append(a) or real(*a, **k))
    conn.executemany(f"INSERT INTO {table}(n) VALUES (?)", [(i,) for i in range(50)])
    assert [(method, path) for method, path, *_ in sent] == [("POST", "/db/execute")]
    assert "transaction" in sent[0][2]
    assert count(conn, table) == 50


def test_writes_carry_an_idempotency_key(conn, table, monkeypatch):
    seen = []
    real = conn._cluster._roundtrip
    monkeypatch.setattr(conn._cluster, "_roundtrip",
                        lambda url, m, t, d, headers, to: seen.append(dict(headers))
                        or real(url, m, t, d, headers, to))
    conn.execute(f"INSERT INTO {table}(n) VALUES (1)")
    conn.executemany(f"INSERT INTO {table}(n) VALUES (?)", [(2,)])
    keys = [h.get(IDEMPOTENCY_HEADER) for h in seen if IDEMPOTENCY_HEADER in h]
    assert len(keys) == 2 and len(set(keys)) == 2 and all(keys)


def test_keys_can_be_left_out(conn, table, monkeypatch):
    plain = raftsql.dbapi.connect(conn._cluster.seeds, idempotency_keys=False)
    seen = []
    real = plain._cluster._roundtrip
    monkeypatch.setattr(plain._cluster, "_roundtrip",
                        lambda url, m, t, d, headers, to: seen.append(dict(headers))
                        or real(url, m, t, d, headers, to))
    plain.execute(f"INSERT INTO {table}(n) VALUES (1)")
    assert seen and not any(IDEMPOTENCY_HEADER in h for h in seen)
    plain.close()


# ---- batches


def test_batch_sends_writes_at_the_end_and_reads_at_once(conn, table):
    cur = conn.cursor()
    with conn.batch() as b:
        cur.execute(f"INSERT INTO {table}(u, n) VALUES (?, ?)", ("a", 1))
        conn.execute(f"INSERT INTO {table}(u, n) VALUES ('b', 2)")
        b.executemany(f"INSERT INTO {table}(u, n) VALUES (?, ?)", [("c", 3), ("d", 4)])
        conn.execute(f"UPDATE {table} SET n = 0 WHERE u = 'a'")
        assert count(conn, table) == 0  # a read runs now and does not see pending writes
        assert conn.execute(f"WITH x AS (SELECT 1) SELECT count(*) FROM {table}").fetchone() \
            == (0,)
        assert conn.execute(f"PRAGMA table_info({table})").fetchall()  # a read too
    assert b.results == [(1, 1), (1, 2), (1, 3), (1, 4), (1, None)]
    assert conn.execute(f"SELECT u, n FROM {table} ORDER BY id").fetchall() == [
        ("a", 0), ("b", 2), ("c", 3), ("d", 4)]


def test_batch_sends_nothing_when_the_block_raises(conn, table):
    with pytest.raises(RuntimeError), conn.batch() as b:
        conn.execute(f"INSERT INTO {table}(u) VALUES ('a')")
        raise RuntimeError("changed my mind")
    assert b.results == [] and count(conn, table) == 0


def test_batch_applies_nothing_when_a_statement_fails(conn, table):
    conn.execute(f"INSERT INTO {table}(u) VALUES ('taken')")
    with pytest.raises(dbapi.IntegrityError, match="UNIQUE"), conn.batch():
        conn.execute(f"INSERT INTO {table}(u) VALUES ('new')")
        conn.execute(f"INSERT INTO {table}(u) VALUES ('taken')")
        conn.execute(f"INSERT INTO {table}(u) VALUES ('newer')")
    assert conn.execute(f"SELECT u FROM {table}").fetchall() == [("taken",)]
    with pytest.raises(dbapi.ProgrammingError, match="already open"), conn.batch(), \
            conn.batch():
        pass


def test_batch_collects_only_its_own_threads_writes(conn, table):
    with conn.batch() as b:
        conn.execute(f"INSERT INTO {table}(u) VALUES ('mine')")
        t = threading.Thread(target=conn.execute,
                             args=(f"INSERT INTO {table}(u) VALUES ('theirs')",))
        t.start()
        t.join()
        assert conn.execute(f"SELECT u FROM {table}").fetchall() == [("theirs",)]
    assert len(b.results) == 1 and count(conn, table) == 2


def test_threads_share_a_connection(conn, table):
    errors = []

    def insert(k: int) -> None:
        try:
            for i in range(10):
                conn.execute(f"INSERT INTO {table}(u) VALUES (?)", (f"{k}-{i}",))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=insert, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and count(conn, table) == 40


# ---- errors


@pytest.mark.parametrize(("sql", "params", "cls", "match"), [
    ("SELEC 1", (), dbapi.OperationalError, "syntax error"),
    ("SELECT * FROM no_such_table", (), dbapi.OperationalError, "no such table"),
    ("SELECT ?, ?", (1,), dbapi.ProgrammingError, "args"),
    ("SELECT ?", (object(),), dbapi.ProgrammingError,
     "Error binding parameter 1: type 'object' is not supported"),
    ("SELECT :a", {"a": {1, 2}}, dbapi.ProgrammingError, "parameter :a: type 'set'"),
    ("SELECT ?", (2**63,), dbapi.DataError, "too large"),
    ("SELECT ?", (float("inf"),), dbapi.DataError, "infinite"),
    ("SELECT ?", "abc", dbapi.ProgrammingError, "unsupported type"),
    ("SELECT zeroblob(2000000000)", (), dbapi.DataError, "too big"),
])
def test_errors_are_mapped(conn, sql, params, cls, match):
    with pytest.raises(cls, match=match) as info:
        conn.execute(sql, params)
    assert type(info.value) is cls


def test_constraint_errors_are_integrity_errors(conn, table):
    conn.execute(f"INSERT INTO {table}(u) VALUES ('a')")
    with pytest.raises(dbapi.IntegrityError, match="UNIQUE constraint failed"):
        conn.execute(f"INSERT INTO {table}(u) VALUES ('a')")
    with pytest.raises(dbapi.OperationalError, match="already exists"):
        conn.execute(f"CREATE TABLE {table}(x)")
    strict = table_name()
    conn.execute(f"CREATE TABLE {strict}(a INTEGER NOT NULL, b INTEGER CHECK (b > 0)) STRICT")
    for values in ("(NULL, 1)", "(1, 0)", "('x', 1)"):
        with pytest.raises(dbapi.IntegrityError):
            conn.execute(f"INSERT INTO {strict} VALUES {values}")


def test_message_mapping_as_sqlite3_maps_codes():
    cases = {
        "FOREIGN KEY constraint failed": dbapi.IntegrityError,
        "datatype mismatch": dbapi.IntegrityError,
        "string or blob too big": dbapi.DataError,
        "database disk image is malformed": dbapi.DatabaseError,
        "file is not a database": dbapi.DatabaseError,
        "interrupted": dbapi.OperationalError,
        "query timeout": dbapi.OperationalError,
        "not enough args to execute query: want 2 got 1": dbapi.ProgrammingError,
    }
    assert {m: type(sql_error(m)) for m in cases} == cases


def test_refused_requests_are_mapped():
    def answer(status: int, body: bytes) -> dbapi.Error:
        return http_error(Response(status, {}, body, "http://x"))

    assert type(answer(400, b"invalid JSON body\n")) is dbapi.ProgrammingError
    e = answer(401, b'{"results":[],"error":"unauthorized"}')
    assert type(e) is dbapi.OperationalError and "authentication" in str(e)
    assert "unauthorized" in str(e)
    assert type(answer(403, b"forbidden")) is dbapi.OperationalError
    assert type(answer(413, b"too large")) is dbapi.DataError
    assert type(answer(500, b"boom")) is dbapi.InternalError


def test_unavailable_cluster_is_operational_error():
    c = dbapi.connect("http://127.0.0.1:9", timeout=0.5)  # discard port: nobody listens
    with pytest.raises(dbapi.OperationalError, match="unavailable") as info:
        c.execute("INSERT INTO t VALUES (1)")
    assert info.value.maybe_applied is False  # refused connections: certainly not sent


# ---- values


def test_parameters_qmark_and_named(conn):
    assert conn.execute("SELECT ?, ?", [1, "x"]).fetchone() == (1, "x")
    assert conn.execute("SELECT :a, @b, $c", {"a": 1, "b": 2, "c": 3}).fetchone() == (1, 2, 3)
    assert conn.execute("SELECT :a", {":a": 5}).fetchone() == (5,)  # a prefixed name too
    assert conn.execute("SELECT 7", None).fetchone() == (7,)


@pytest.mark.parametrize("value", [
    None, 0, 1, -1, 2**63 - 1, -(2**63), 3.0, -0.5, 1e308, 5e-324, "", "text",
    "unicode: é ✓ 😀", "nul\x00inside", b"", b"\x00", b"\x00\xff\x00", bytes(range(256)),
])
def test_values_round_trip_in_every_kind_of_column(conn, value):
    name = table_name()
    conn.execute(f"CREATE TABLE {name}(untyped, b BLOB, t TEXT)")
    conn.execute(f"INSERT INTO {name} VALUES (?, ?, ?)", (value,) * 3)
    untyped, blob, text = conn.execute(f"SELECT * FROM {name}").fetchone()
    assert type(untyped) is type(value) and untyped == value
    assert type(blob) is type(value) and blob == value
    # TEXT affinity turns numbers into text (SQLite's spelling, not Python's repr); text,
    # blobs and NULL stay as they are
    if isinstance(value, float):
        assert type(text) is str and float(text) == value
    else:
        expected = str(value) if isinstance(value, int) else value
        assert type(text) is type(expected) and text == expected


def test_other_parameter_types_are_adapted(conn):
    cur = conn.execute("SELECT ?, ?, ?, ?, ?, ?", (
        True, False, bytearray(b"\x01\x02"), memoryview(b"\x03"),
        datetime.date(2024, 2, 29), datetime.datetime(2024, 2, 29, 13, 14, 15, 123456)))
    assert cur.fetchone() == (1, 0, b"\x01\x02", b"\x03", "2024-02-29",
                              "2024-02-29 13:14:15.123456")
    assert conn.execute("SELECT ?", (datetime.datetime(2024, 1, 2, 3, 4, 5),)).fetchone() \
        == ("2024-01-02 03:04:05",)


def test_declared_types_come_back_as_written(conn):
    name = table_name()
    conn.execute(f"CREATE TABLE {name}(a varchar(10), b Decimal(5,2), c DATETIME, d)")
    cur = conn.execute(f"SELECT * FROM {name}")
    assert [d[1] for d in cur.description] == ["varchar(10)", "Decimal(5,2)", "DATETIME", ""]
    assert [d[1] == dbapi.DATETIME for d in cur.description] == [False, False, True, False]


def test_hex_shaped_text_is_bound_as_a_blob(conn):
    # The documented limitation (rqlite's parameter rule): not what sqlite3 would do.
    assert conn.execute("SELECT typeof(?)", ("x'00ff'",)).fetchone() == ("blob",)
