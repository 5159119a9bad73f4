"""The rqlite data API in-process, against a FakeNode (a real Database, always leader).

Every exchange of rqlite-api.md §1.8 is here byte for byte (ignoring `time` values), and
every malformed request is checked to leave the database exactly as it was.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest

from raftsql.errors import LeadershipLostError, RequestTimeoutError
from tests.fakes import FakeNode, fake_app

JSON = "application/json"


@pytest.fixture
async def client(node, aiohttp_client):
    return await aiohttp_client(fake_app(node))


async def call(client, method: str, path: str, body: Any = None, content_type: str | None = JSON):
    data = body if isinstance(body, bytes) or body is None else (
        body.encode() if isinstance(body, str) else orjson.dumps(body))
    headers = {"Content-Type": content_type} if content_type and data is not None else {}
    resp = await client.request(method, path, data=data, headers=headers, allow_redirects=False)
    return resp.status, resp.headers, await resp.read()


def untimed(body: bytes) -> bytes:
    """The body with every "time" value replaced by 0, to compare bytes."""
    return re.sub(rb'"time":[0-9.e+-]+', b'"time":0', body)


def db_state(node: FakeNode) -> tuple[Any, ...]:
    tables = node.database.query(["SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'raftsql%' ORDER BY name"])[0].rows
    contents = [node.database.query([f'SELECT * FROM "{name}" ORDER BY rowid'])[0].rows for name, _ in tables]
    return node.raft_index, tables, contents


async def setup_foo(client) -> None:
    await call(client, "POST", "/db/execute",
               ["CREATE TABLE foo (id INTEGER NOT NULL PRIMARY KEY, name TEXT, age INTEGER)"])
    await call(client, "POST", "/db/execute",
               [["INSERT INTO foo(name,age) VALUES(?,?)", "fiona", 20], ["INSERT INTO foo(name) VALUES(:n)", {"n": "declan"}]])


# ---- rqlite-api.md §1.8, in order -------------------------------------------------------


async def test_doc_examples_in_order(client, node) -> None:
    async def ex(method, path, body, status, expected, content_type=JSON):
        got_status, headers, got = await call(client, method, path, body, content_type)
        assert got_status == status, got
        assert untimed(got) == expected
        return headers, got

    await ex("POST", "/db/execute",
             b'["CREATE TABLE foo (id INTEGER NOT NULL PRIMARY KEY, name TEXT, age INTEGER)"]',
             200, b'{"results":[{}]}')
    _, body = await ex("POST", "/db/execute?timings",
                       b'[["INSERT INTO foo(name,age) VALUES(?,?)","fiona",20],["INSERT INTO foo(name) VALUES(:n)",{"n":"declan"}]]',
                       200, b'{"results":[{"last_insert_id":1,"rows_affected":1,"time":0},'
                            b'{"last_insert_id":2,"rows_affected":1,"time":0}],"time":0}')
    times = json.loads(body)
    assert times["time"] > 0 and all(r["time"] > 0 for r in times["results"])
    await ex("GET", "/db/query?q=SELECT+*+FROM+foo", None, 200,
             b'{"results":[{"columns":["id","name","age"],"types":["integer","text","integer"],'
             b'"values":[[1,"fiona",20],[2,"declan",null]]}]}')
    await ex("GET", "/db/query?q=SELECT+*+FROM+foo+WHERE+0", None, 200,
             b'{"results":[{"columns":["id","name","age"],"types":["integer","text","integer"]}]}')
    await ex("GET", "/db/query?associative&q=SELECT+id,name+FROM+foo+WHERE+id=1", None, 200,
             b'{"results":[{"types":{"id":"integer","name":"text"},"rows":[{"id":1,"name":"fiona"}]}]}')
    bad_then_good = b'["INSERT INTO nonsense VALUES(1)", "INSERT INTO foo(name) VALUES(\'x\')"]'
    await ex("POST", "/db/execute", bad_then_good, 200,
             b'{"results":[{"error":"no such table: nonsense"},{"last_insert_id":3,"rows_affected":1}]}')
    before = db_state(node)
    await ex("POST", "/db/execute?transaction", bad_then_good, 200,
             b'{"results":[{"error":"no such table: nonsense"}]}')
    assert db_state(node)[1:] == before[1:]  # stopped and rolled back: nothing written
    await ex("POST", "/db/request?associative",
             b'[["INSERT INTO foo(name) VALUES(?)","z"],["SELECT COUNT(*) AS n FROM foo"],["SELECT * FROM bar"]]',
             200, b'{"results":[{"last_insert_id":4,"rows_affected":1,"rows":null},'
                  b'{"types":{"n":"integer"},"rows":[{"n":4}]},{"rows":[],"error":"no such table: bar"}]}')
    await ex("POST", "/db/execute", b'["INSERT INTO foo(id,name) VALUES(9,\'q\') RETURNING *"]', 200,
             b'{"results":[{"columns":["id","name","age"],"types":["integer","text","integer"],"values":[[9,"q",null]]}]}')
    before = db_state(node)
    # rqlite answers 200 here, which clients that read only per-statement errors take for
    # success: raftsql says 400 (refused, nothing applied), with rqlite's body.
    await ex("POST", "/db/execute", b'["PRAGMA journal_mode=DELETE"]', 400,
             b'{"results":[],"error":"disallowed pragma"}')
    assert db_state(node) == before
    _, body = await ex("POST", "/db/execute?queue&wait", b'[["INSERT INTO foo(name) VALUES(?)","q1"]]', 200,
                       untimed(await _queued_shape(client)))
    assert json.loads(body)["sequence_number"] > 1_600_000_000 * 10**9  # seeded with start-up ns
    status, _, got = await call(client, "GET", "/db/query?q=SELECT+name+FROM+foo+WHERE+name='q1'")
    assert json.loads(got)["results"][0]["values"] == [["q1"]]


async def _queued_shape(client) -> bytes:
    """What a queued write answers, with this server's next sequence number."""
    from raftsql.http.state import STATE
    seq = client.server.app[STATE].queue.sequence_number + 1
    return b'{"results":[],"sequence_number":%d}' % seq


# ---- results and encoding through the API ---------------------------------------------------


async def test_ddl_gives_empty_object_and_execute_ignores_select_rows(client) -> None:
    status, _, body = await call(client, "POST", "/db/execute", ["CREATE TABLE t(x)", "SELECT 1"])
    assert body == b'{"results":[{},{}]}'


async def test_write_sent_to_query_fails_per_statement(client, node) -> None:
    await setup_foo(client)
    before = db_state(node)
    for method, path, body in [
        ("POST", "/db/query", ["INSERT INTO foo(name) VALUES('w')"]),
        ("GET", "/db/query?q=DELETE+FROM+foo", None),
        ("POST", "/db/query?level=none", ["UPDATE foo SET age=1"]),
        ("POST", "/db/query?level=strong", ["DROP TABLE foo"]),
    ]:
        status, _, got = await call(client, method, path, body)
        assert status == 200
        assert json.loads(got) == {"results": [{"error": "attempt to change database via query operation"}]}
    assert db_state(node)[1:] == before[1:]


async def test_sql_errors_pass_through_per_statement(client) -> None:
    await setup_foo(client)
    _, _, body = await call(client, "POST", "/db/execute",
                            ["CREATE TABLE u(x UNIQUE)", "INSERT INTO u VALUES(1)", "INSERT INTO u VALUES(1)", "blah"])
    assert json.loads(body)["results"][2:] == [
        {"error": "UNIQUE constraint failed: u.x"}, {"error": 'near "blah": syntax error'}]


async def test_types_values_and_quirks(client) -> None:
    await call(client, "POST", "/db/execute", [
        "CREATE TABLE q (id INTEGER PRIMARY KEY, r REAL, v VARCHAR(255), b BLOB, d DATETIME, t TIMESTAMP,"
        " dt DATE, ok BOOLEAN, u)",
        ["INSERT INTO q VALUES(1, 3.0, 'x', x'00ff10', '2004-02-14 07:15:00.500000', 1076742900, '2004-02-14', 1, x'414243')"],
        ["INSERT INTO q VALUES(2, 0.5, NULL, NULL, 'junk', NULL, NULL, 0, 7)"],
    ])
    _, _, body = await call(client, "GET", "/db/query?q=SELECT+*+FROM+q+ORDER+BY+id")
    assert body == (
        b'{"results":[{"columns":["id","r","v","b","d","t","dt","ok","u"],'
        b'"types":["integer","real","varchar(255)","blob","datetime","timestamp","date","boolean","text"],'
        b'"values":[[1,3,"x","AP8Q","2004-02-14T07:15:00.5Z","2004-02-14T07:15:00Z","2004-02-14T00:00:00Z",true,"ABC"],'
        b'[2,0.5,null,null,"0001-01-01T00:00:00Z",null,null,false,7]]}]}')
    _, _, body = await call(client, "GET", "/db/query?blob_array&q=SELECT+b,+x'0102'+AS+e,+NULL+AS+n+FROM+q+WHERE+id=1")
    assert body == b'{"results":[{"columns":["b","e","n"],"types":["blob","text",""],"values":[[[0,255,16],"\\u0001\\u0002",null]]}]}'


async def test_native_values_are_what_sqlite_holds(client) -> None:
    """?native (raftsql's clients): no driver conversions, BLOBs never mistaken for TEXT."""
    await call(client, "POST", "/db/execute", [
        "CREATE TABLE nv (r REAL, d DATETIME, ok BOOLEAN, u)",
        ["INSERT INTO nv VALUES(3.0, '2004-02-14 07:15:00', 1, x'00ff')"],
    ])
    _, _, body = await call(client, "GET", "/db/query?native&q=SELECT+*,+x'41'+AS+e+FROM+nv")
    assert body == (b'{"results":[{"columns":["r","d","ok","u","e"],'
                    b'"types":["REAL","DATETIME","BOOLEAN","",""],'
                    b'"values":[[3.0,"2004-02-14 07:15:00",1,[0,255],[65]]]}]}')


async def test_expression_types_are_inferred(client) -> None:
    _, _, body = await call(client, "GET", "/db/query?q=SELECT+1,+2.5,+'a',+NULL,+3.0")
    assert json.loads(body)["results"][0]["types"] == ["integer", "real", "text", "", "real"]
    assert json.loads(body)["results"][0]["values"] == [[1, 2.5, "a", None, 3]]


async def test_duplicate_column_names(client) -> None:
    _, _, body = await call(client, "GET", "/db/query?q=SELECT+1+AS+a,+2+AS+a")
    assert body == b'{"results":[{"columns":["a","a"],"types":["integer","integer"],"values":[[1,2]]}]}'


async def test_returning_associative_empty(client) -> None:
    await call(client, "POST", "/db/execute", ["CREATE TABLE r(id INTEGER PRIMARY KEY, v TEXT)"])
    _, _, body = await call(client, "POST", "/db/execute?associative",
                            ["DELETE FROM r WHERE id=5 RETURNING id, v"])
    assert body == b'{"results":[{"types":{"id":"integer","v":"text"},"rows":[]}]}'


async def test_parameters(client) -> None:
    await call(client, "POST", "/db/execute", ["CREATE TABLE p(a, b, c BLOB, d BLOB)"])
    _, _, body = await call(client, "POST", "/db/execute", [
        ["INSERT INTO p VALUES(?, ?, ?, ?)", 9223372036854775807, True, "x'0aff'", [1, 2]],
        ["INSERT INTO p VALUES(:a, @b, $c, :d)", {"a": 1.5, "b": None, "c": "plain", "d": "X'00'"}],
        ["INSERT INTO p VALUES(?, ?, ?, ?)", 1],
    ])
    results = json.loads(body)["results"]
    assert results[0] == {"last_insert_id": 1, "rows_affected": 1}
    assert results[2]["error"].startswith("not enough args to execute query")
    _, _, body = await call(client, "GET", "/db/query?q=SELECT+a,+typeof(a),+b,+c,+typeof(c),+d+FROM+p")
    assert json.loads(body)["results"][0]["values"] == [
        [9223372036854775807, "integer", 1, "Cv8=", "blob", "AQI="],
        [1.5, "real", None, "plain", "text", "AA=="],
    ]


async def test_text_plain_bodies(client) -> None:
    status, _, body = await call(client, "POST", "/db/execute",
                                 "CREATE TABLE tp(x); INSERT INTO tp VALUES(1); INSERT INTO tp VALUES(2)",
                                 content_type="text/plain")
    assert status == 200 and json.loads(body)["results"][0]["last_insert_id"] == 2
    _, _, body = await call(client, "POST", "/db/query", "SELECT 1; SELECT x FROM tp ORDER BY x",
                            content_type="text/plain; charset=utf-8")
    assert json.loads(body)["results"][0]["values"] == [[1], [2]]
    # /db/request takes JSON only
    status, _, body = await call(client, "POST", "/db/request", "SELECT 1", content_type="text/plain")
    assert (status, body) == (400, b"invalid JSON body\n")


async def test_form_content_type_is_parsed_as_json(client) -> None:
    status, _, body = await call(client, "POST", "/db/execute", b'["CREATE TABLE f(x)"]',
                                 content_type="application/x-www-form-urlencoded")
    assert (status, body) == (200, b'{"results":[{}]}')


async def test_empty_statements_are_skipped(client) -> None:
    _, _, body = await call(client, "POST", "/db/execute", ["", ["CREATE TABLE e(x)"], [""]])
    assert body == b'{"results":[{}]}'


async def test_missing_q_and_post_query(client) -> None:
    assert (await call(client, "GET", "/db/query"))[2] == b'{"results":[]}'
    _, _, body = await call(client, "POST", "/db/query", [["SELECT ? + 1 AS v", 41]])
    assert body == b'{"results":[{"columns":["v"],"types":["integer"],"values":[[42]]}]}'


async def test_request_all_reads_follow_the_read_path(client, node) -> None:
    await setup_foo(client)
    index = node.raft_index
    _, _, body = await call(client, "POST", "/db/request", [["SELECT COUNT(*) AS n FROM foo"], "SELECT 2"])
    assert body == (b'{"results":[{"columns":["n"],"types":["integer"],"values":[[2]]},'
                    b'{"columns":["2"],"types":["integer"],"values":[[2]]}]}')
    assert node.raft_index == index  # served by ReadIndex + local read, no log entry
    assert ("barrier:linearizable", None) in node.calls


async def test_request_with_a_write_goes_through_raft(client, node) -> None:
    _, _, body = await call(client, "POST", "/db/request",
                            ["CREATE TABLE rq(x)", "INSERT INTO rq VALUES(5)", "SELECT x FROM rq"])
    assert body == (b'{"results":[{},{"last_insert_id":1,"rows_affected":1},'
                    b'{"columns":["x"],"types":["integer"],"values":[[5]]}]}')
    assert node.calls[-1][0] == "request"
    # the table exists now: a later read-only request is classified as such
    _, _, body = await call(client, "POST", "/db/request?associative", ["SELECT x FROM rq"])
    assert body == b'{"results":[{"types":{"x":"integer"},"rows":[{"x":5}]}]}'
    assert node.calls[-1][0] == "local-query"


async def test_request_associative_write_error_shape(client) -> None:
    _, _, body = await call(client, "POST", "/db/request?associative",
                            ["CREATE TABLE ra(x UNIQUE)", "INSERT INTO ra VALUES(1)", "INSERT INTO ra VALUES(1)"])
    assert json.loads(body)["results"] == [
        {"rows": None}, {"last_insert_id": 1, "rows_affected": 1, "rows": None},
        {"error": "UNIQUE constraint failed: ra.x", "rows": None}]


# ---- flags --------------------------------------------------------------------------------


async def test_transaction_flag_by_presence(client, node) -> None:
    await setup_foo(client)
    before = db_state(node)
    for flag in ["transaction=false", "transaction=0", "transaction"]:
        _, _, body = await call(client, "POST", f"/db/execute?{flag}",
                                ["INSERT INTO foo(name) VALUES('t')", "INSERT INTO nope VALUES(1)"])
        assert json.loads(body)["results"] == [{"last_insert_id": 3, "rows_affected": 1},
                                               {"error": "no such table: nope"}]
        assert db_state(node)[1:] == before[1:]


async def test_pretty(client) -> None:
    await setup_foo(client)
    _, headers, body = await call(client, "GET", "/db/query?pretty=false&q=SELECT+id+FROM+foo+WHERE+id=1")
    assert body == (b'{\n    "results": [\n        {\n            "columns": [\n                "id"\n            ],\n'
                    b'            "types": [\n                "integer"\n            ],\n'
                    b'            "values": [\n                [\n                    1\n                ]\n'
                    b'            ]\n        }\n    ]\n}')
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    _, _, body = await call(client, "POST", "/db/execute?pretty", ["PRAGMA synchronous=OFF"])
    assert body == b'{\n    "results": [],\n    "error": "disallowed pragma"\n}'


async def test_timings(client) -> None:
    await setup_foo(client)
    _, _, body = await call(client, "GET", "/db/query?timings=no&q=SELECT+1")
    d = json.loads(body)
    assert list(d) == ["results", "time"] and d["time"] > 0
    assert list(d["results"][0]) == ["columns", "types", "values", "time"]
    _, _, body = await call(client, "GET", "/db/query?q=SELECT+1")
    assert b'"time"' not in body


async def test_raft_index_flag(client, node) -> None:
    _, _, body = await call(client, "POST", "/db/execute?raft_index", ["CREATE TABLE ri(x)"])
    assert json.loads(body) == {"results": [{}], "raft_index": node.raft_index}
    _, _, body = await call(client, "POST", "/db/execute", ["CREATE TABLE ri2(x)"])
    assert b"raft_index" not in body
    # as in rqlite: a strong read is an entry of the log and has an index; other reads none
    _, _, body = await call(client, "GET", "/db/query?raft_index&level=strong&q=SELECT+1")
    assert json.loads(body)["raft_index"] == node.raft_index == 3
    _, _, body = await call(client, "GET", "/db/query?raft_index&q=SELECT+1")
    assert b"raft_index" not in body


async def test_db_timeout_interrupts_long_statements(client, node) -> None:
    slow = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000000) "
            "SELECT count(*) FROM n")
    status, _, body = await call(client, "POST", "/db/query?db_timeout=50ms", ["SELECT 1", slow])
    assert status == 200 and [r.get("error") for r in json.loads(body)["results"]] == [
        None, "query timeout"]
    await call(client, "POST", "/db/execute", ["CREATE TABLE big (x)"])
    long_write = slow.replace("SELECT count(*) FROM n", "INSERT INTO big SELECT i FROM n")
    status, _, body = await call(client, "POST", "/db/execute?db_timeout=50ms", [long_write])
    assert (status, json.loads(body)["results"]) == (200, [{"error": "execute timeout"}])
    _, _, body = await call(client, "GET", "/db/query?q=SELECT+count(*)+FROM+big")
    assert json.loads(body)["results"][0]["values"] == [[0]]
    status, _, body = await call(client, "POST", "/db/execute?db_timeout=bogus", ["SELECT 1"])
    assert (status, body) == (400, b"db_timeout is not a valid duration\n")


async def test_qualify_columns(client) -> None:
    await setup_foo(client)
    _, _, body = await call(client, "GET", "/db/query?qualify_columns&q=SELECT+a.id,+b.name,+1+AS+one"
                            "+FROM+foo+a+JOIN+foo+b+ON+a.id=b.id+WHERE+a.id=1")
    assert json.loads(body)["results"][0]["columns"] == ["foo.id", "foo.name", "one"]
    _, _, body = await call(client, "POST", "/db/request?qualify_columns&level=strong",
                            ["SELECT id FROM foo WHERE id = 1"])
    assert json.loads(body)["results"][0]["columns"] == ["foo.id"]


async def test_pragmas_that_read_are_queries(client) -> None:
    await setup_foo(client)
    _, _, body = await call(client, "GET", "/db/query?q=PRAGMA+journal_mode")
    assert body == b'{"results":[{"columns":["journal_mode"],"types":["text"],"values":[["wal"]]}]}'
    for pragma in ["PRAGMA table_info(foo)", "PRAGMA index_list(foo)", "PRAGMA foreign_keys",
                   "PRAGMA user_version"]:
        for path in ["/db/query", "/db/request"]:
            status, _, body = await call(client, "POST", path, [pragma])
            assert status == 200 and "error" not in json.loads(body)["results"][0], (path, body)
    _, _, body = await call(client, "POST", "/db/query", ["PRAGMA user_version=3"])
    assert json.loads(body)["results"] == [{"error": "attempt to change database via query operation"}]
    _, _, body = await call(client, "GET", "/db/query")  # no q at all: nothing to run
    assert body == b'{"results":[]}'


async def test_levels_reach_the_node(client, node) -> None:
    await setup_foo(client)
    node.calls.clear()
    for query, expected in [
        ("", "barrier:linearizable"), ("level=linearizable", "barrier:linearizable"),
        ("level=weak", "barrier:weak"), ("level=WEAK", "barrier:weak"), ("level=bogus", "barrier:weak"),
        ("level=auto", "barrier:weak"), ("level=strong", "query"), ("level=none", "local-query"),
    ]:
        node.calls.clear()
        status, _, body = await call(client, "GET", f"/db/query?{query}&q=SELECT+COUNT(*)+FROM+foo")
        assert status == 200 and json.loads(body)["results"][0]["values"] == [[2]]
        assert node.calls[0][0] == expected, query


async def test_leader_ignores_freshness(client, node) -> None:
    node.contact = None
    _, _, body = await call(client, "GET", "/db/query?level=none&freshness=1ns&q=SELECT+1")
    assert json.loads(body)["results"][0]["values"] == [[1]]


# ---- whole-request errors -----------------------------------------------------------------


@pytest.mark.parametrize("pragma", [
    "PRAGMA journal_mode=DELETE", "pragma main.journal_mode = wal", "PRAGMA wal_autocheckpoint=0",
    "PRAGMA wal_checkpoint(TRUNCATE)", "  PRAGMA synchronous=OFF", "PRAGMA query_only=1",
])
async def test_disallowed_pragmas_refuse_the_whole_request(client, node, pragma: str) -> None:
    await setup_foo(client)
    before = db_state(node)
    for path in ["/db/execute", "/db/execute?queue", "/db/query", "/db/request"]:
        status, _, body = await call(client, "POST", path, ["INSERT INTO foo(name) VALUES('p')", pragma])
        assert (status, body) == (400, b'{"results":[],"error":"disallowed pragma"}')
    assert db_state(node) == before
    _, _, body = await call(client, "GET", "/db/query?q=PRAGMA+synchronous")  # reading one is fine
    assert json.loads(body)["results"][0]["columns"] == ["synchronous"]


async def test_leadership_lost_and_timeouts_are_503_never_200(client, node) -> None:
    # rqlite answers these 200 with a top-level error, which pyrqlite reports as success.
    node.fail_execute = LeadershipLostError()
    status, headers, body = await call(client, "POST", "/db/execute", ["CREATE TABLE ll(x)"])
    assert (status, body) == (503, b'{"results":[],"error":"leadership lost while committing '
                                   b'log; the request may have been applied"}')
    assert headers["Retry-After"] == "1"
    node.fail_execute = RequestTimeoutError()
    status, _, body = await call(client, "POST", "/db/execute", ["CREATE TABLE ll(x)"])
    assert (status, json.loads(body)["error"]) == (
        503, "timeout waiting for commit; the request may have been applied")
    node.fail_barrier = RequestTimeoutError()
    status, _, body = await call(client, "GET", "/db/query?q=SELECT+1")
    assert (status, body) == (503, b'{"results":[],"error":"timeout waiting for fsm"}')
    node.fail_barrier = LeadershipLostError()
    status, _, body = await call(client, "GET", "/db/query?level=weak&q=SELECT+1")
    assert (status, body) == (503, b'{"results":[],"error":"leadership lost while committing log"}')


async def test_unexpected_exception_is_a_logged_500(client, node) -> None:
    node.fail_execute = RuntimeError("boom")
    status, headers, body = await call(client, "POST", "/db/execute", ["CREATE TABLE x(y)"])
    assert (status, body) == (500, b"internal error: RuntimeError: boom\n")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"


# ---- bad input: 4xx, one shape, database untouched --------------------------------------------

BAD_REQUESTS = [
    ("POST", "/db/execute", b"{", 400, b"invalid JSON body\n"),
    ("POST", "/db/execute", b'["a",', 400, b"invalid JSON body\n"),
    ("POST", "/db/execute", b"INSERT INTO foo(name) VALUES('x')", 400, b"invalid JSON body\n"),
    ("POST", "/db/execute", b'{"sql":"x"}', 400, b"invalid request\n"),
    ("POST", "/db/execute", b"[1]", 400, b"invalid request\n"),
    ("POST", "/db/execute", b'[["INSERT INTO foo(name) VALUES(?)", "ok"], 5]', 400, b"invalid request\n"),
    ("POST", "/db/execute", b"[]", 400, b"no statements\n"),
    ("POST", "/db/execute", b"", 400, b"no statements\n"),
    ("POST", "/db/execute", b'[["INSERT INTO foo(name) VALUES(?)", {"a": {"b": 1}}]]', 400, b"unsupported type\n"),
    ("POST", "/db/execute", b'[["INSERT INTO foo(name) VALUES(?)", [1, 2, 300]]]', 400, b"unsupported type\n"),
    ("POST", "/db/execute?queue", b"[]", 400, b"no statements\n"),
    ("POST", "/db/execute?queue", b"{", 400, b"invalid JSON body\n"),
    ("POST", "/db/query", b"[", 400, b"invalid JSON body\n"),
    ("POST", "/db/request", b'[{"a":1}]', 400, b"invalid request\n"),
    ("POST", "/db/execute?timeout=soon", b'["INSERT INTO foo(name) VALUES(1)"]', 400, b"timeout is not a valid duration\n"),
    ("POST", "/db/execute?retries=many", b'["INSERT INTO foo(name) VALUES(1)"]', 400, b"retries is not a valid integer\n"),
    ("GET", "/db/query?level=none&freshness=5&q=SELECT+1", None, 400, b"freshness is not a valid duration\n"),
    ("GET", "/db/query?freshness_strict&q=SELECT+1", None, 400, b"freshness_strict requires freshness\n"),
    ("GET", "/db/query?q=", None, 400, b"query parameter not set\n"),
    ("POST", "/db/execute?q=", b'["INSERT INTO foo(name) VALUES(1)"]', 400, b"query parameter not set\n"),
    ("GET", "/db/execute", None, 405, b""),
    ("PUT", "/db/query", b"[]", 405, b""),
    ("DELETE", "/db/request", None, 405, b""),
    ("GET", "/db/nothing", None, 404, b""),
    ("POST", "/nope", b"[]", 404, b""),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "expected"), BAD_REQUESTS)
async def test_bad_requests(client, node, method, path, body, status, expected) -> None:
    await setup_foo(client)
    before = db_state(node)
    got_status, headers, got = await call(client, method, path, body)
    assert (got_status, got) == (status, expected)
    if got:
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["X-RQLITE-VERSION"].startswith("raftsql/")
    assert db_state(node) == before


async def test_oversize_body_is_413(node, aiohttp_client) -> None:
    client = await aiohttp_client(fake_app(node, max_body_bytes=1000))
    await setup_foo(client)
    before = db_state(node)
    big = orjson.dumps([f"INSERT INTO foo(name) VALUES('{'x' * 2000}')"])
    status, _, body = await call(client, "POST", "/db/execute", big)
    assert (status, body) == (413, b"request body too large\n")

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b" " * 200
        yield b'["SELECT 1"]'

    resp = await client.post("/db/execute", data=chunks(), headers={"Content-Type": JSON})
    assert resp.status == 413
    assert db_state(node) == before
    status, _, _ = await call(client, "POST", "/db/execute", ["INSERT INTO foo(name) VALUES('small')"])
    assert status == 200


# ---- headers and the odd paths --------------------------------------------------------------


async def test_every_response_has_version_and_cors_headers(client) -> None:
    for method, path in [("GET", "/db/query?q=SELECT+1"), ("GET", "/status"), ("GET", "/missing"),
                         ("OPTIONS", "/db/execute"), ("GET", "/"), ("POST", "/db/execute")]:
        resp = await client.request(method, path, allow_redirects=False)
        assert resp.headers["X-RQLITE-VERSION"] == "raftsql/0.1.0"
        assert resp.headers["Access-Control-Allow-Methods"] == "OPTIONS, GET, POST"
        assert resp.headers["Access-Control-Allow-Headers"] == "Content-Type"
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_failures_close_the_connection(client) -> None:
    """pyrqlite leaves a non-200 answer unread and would send its next request twice on the
    same connection; a closed one makes it reconnect."""
    for method, path, body, status in [
        ("POST", "/db/execute", b"{", 400), ("GET", "/missing", None, 404),
        ("POST", "/db/execute", b'["PRAGMA synchronous=OFF"]', 400),
    ]:
        resp = await client.request(method, path, data=body, allow_redirects=False)
        assert (resp.status, resp.headers.get("Connection")) == (status, "close"), path
    resp = await client.get("/db/query?q=SELECT+1")
    assert resp.status == 200 and resp.headers.get("Connection") != "close"


async def test_allow_origin(node, aiohttp_client) -> None:
    client = await aiohttp_client(fake_app(node, allow_origin="https://example.com"))
    resp = await client.get("/db/query?q=SELECT+1")
    assert resp.headers["Access-Control-Allow-Origin"] == "https://example.com"


async def test_options_and_root(client) -> None:
    for path in ["/db/execute", "/anything/at/all", "/status"]:
        status, _, body = await call(client, "OPTIONS", path)
        assert (status, body) == (200, b"")
    status, headers, body = await call(client, "GET", "/")
    assert (status, headers["Location"], body) == (302, "/console/", b'<a href="/console/">Found</a>.\n\n')


async def test_served_by_header(client, node) -> None:
    _, headers, _ = await call(client, "GET", "/db/query?q=SELECT+1")
    assert headers["X-RQLITE-SERVED-BY"] == "127.0.0.1:4001"


# ---- one error shape, and no input that makes a node fail ----------------------------------


async def test_one_error_shape_everywhere(client, node) -> None:
    """Transport errors: a one-line plain-text message (or nothing); whole-request failures of
    the data routes: {"results":[],"error":...}, never with status 200."""
    await setup_foo(client)
    node.peers = []
    failing = [
        ("POST", "/db/execute", b"{"), ("POST", "/db/query?timeout=x", b"[]"), ("GET", "/db/query?q=", None),
        ("POST", "/db/request", b"[]"), ("DELETE", "/remove", b"{}"), ("DELETE", "/remove", b'{"id":"zz"}'),
        ("POST", "/leader", b"{"), ("POST", "/leader", None), ("GET", "/status?retries=x", None),
        ("GET", "/nodes?timeout=x", None), ("GET", "/readyz?timeout=1", None), ("GET", "/x", None),
        ("PATCH", "/db/execute", None),
    ]
    for method, path, body in failing:
        status, headers, got = await call(client, method, path, body)
        assert status >= 400, (method, path)
        if got:
            assert headers["Content-Type"] == "text/plain; charset=utf-8", path
            assert got.endswith(b"\n") and got.count(b"\n") == 1, (path, got)
    for method, path, body in [("POST", "/db/execute", ["PRAGMA synchronous=OFF"]),
                               ("POST", "/db/query", ["PRAGMA query_only=1"])]:
        status, headers, got = await call(client, method, path, body)
        assert status == 400 and headers["Content-Type"] == "application/json; charset=utf-8"
        d = json.loads(got)
        assert list(d) == ["results", "error"] and d["results"] == [] and isinstance(d["error"], str)


def _random_json(rng, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, 2**63, 1.5, 1e300, -0.0])
    if kind in (3, 4, 5):
        return rng.choice(["SELECT 1", "", "x'00'", "INSERT INTO foo(name) VALUES(?)", "é\u0000", ";", "SELECT ?"])
    if kind in (6, 7):
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "n", ""]): _random_json(rng, depth + 1) for _ in range(rng.randrange(3))}


async def test_random_bodies_never_fail_the_node(client, node) -> None:
    import random
    rng = random.Random(7)
    await setup_foo(client)
    for i in range(300):
        value = _random_json(rng)
        body = orjson.dumps(value) if rng.random() < 0.9 else orjson.dumps(value)[: rng.randrange(1, 8)]
        path = rng.choice(["/db/execute", "/db/query", "/db/request", "/db/execute?transaction",
                           "/db/query?level=strong&associative", "/db/request?associative&blob_array"])
        status, _, got = await call(client, "POST", path, body)
        assert status in (200, 400), (i, path, body, got)
        if status == 200:
            assert "results" in json.loads(got)
    status, _, got = await call(client, "GET", "/db/query?q=SELECT+COUNT(*)+FROM+foo")
    assert status == 200


async def test_a_write_with_an_idempotency_key_applies_once(client, node) -> None:
    await call(client, "POST", "/db/execute", ["CREATE TABLE ik (id INTEGER PRIMARY KEY, v)"])
    key = {"X-Raftsql-Idempotency-Key": "3b241101-e2bb-4255-8caf-4136c566a962",
           "Content-Type": JSON}
    body = orjson.dumps([["INSERT INTO ik(v) VALUES(?)", "a"]])
    first = await client.post("/db/execute", data=body, headers=key)
    again = await client.post("/db/request", data=body, headers=key)
    assert first.status == again.status == 200
    assert "X-Raftsql-Idempotent-Replay" not in first.headers
    assert again.headers["X-Raftsql-Idempotent-Replay"] == "true"
    assert untimed(await again.read()) == untimed(await first.read()) == \
        b'{"results":[{"last_insert_id":1,"rows_affected":1}]}'
    _, _, rows = await call(client, "GET", "/db/query?q=SELECT+count(*)+FROM+ik")
    assert json.loads(rows)["results"][0]["values"] == [[1]]
    before = db_state(node)
    bad = await client.post("/db/execute", data=body,
                            headers={**key, "X-Raftsql-Idempotency-Key": "x" * 129})
    assert bad.status == 400 and b"Idempotency-Key" in await bad.read()
    assert db_state(node) == before


async def test_bodies_larger_than_one_read_arrive_whole(client) -> None:
    """A body that is all received but not yet all read is not over (at_eof, not is_eof):
    bodies over 64 KiB were cut short and refused as invalid JSON."""
    await call(client, "POST", "/db/execute", ["CREATE TABLE big (v TEXT)"])
    rows = [["INSERT INTO big VALUES(?)", "x" * 1000 + str(i)] for i in range(300)]
    status, _, body = await call(client, "POST", "/db/execute?transaction", rows)
    assert status == 200, body
    _, _, body = await call(client, "GET", "/db/query?q=SELECT+count(*),+sum(length(v))+FROM+big")
    assert json.loads(body)["results"][0]["values"] == [[300, 300 * 1000 + 10 + 90 * 2 + 200 * 3]]
