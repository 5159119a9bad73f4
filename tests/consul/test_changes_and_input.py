"""/v1/changes (every change in order, resumable, compacted), bad input that writes
nothing, and the keys as the SQL table raftsql_kv."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.consul.helpers import (
    BAD_PUTS,
    WRITES,
    Api,
    _quote,
    b64,
    changes,
    kv,
    start,
)
from tests.inprocess import wait_for


async def test_changes_are_every_change_in_log_order_with_prev(api: Api) -> None:
    i1 = await api.index_of("PUT", "/v1/kv/app/a?flags=1", b"1")
    i2 = await api.index_of("PUT", "/v1/kv/app/b", b"2")
    await api.put("other")
    i3 = await api.index_of("PUT", "/v1/kv/app/a", b"3")
    i4 = await api.index_of("DELETE", "/v1/kv/app/b")
    got, index = await changes(api, "app/?recurse&index=0")
    assert index == i4
    assert [(c["Index"], c["Key"], c["Op"]) for c in got] == [
        (i1, "app/a", "set"), (i2, "app/b", "set"), (i3, "app/a", "set"), (i4, "app/b", "delete")]
    first, _, third, deleted = got
    assert first["Prev"] is None and (first["Value"], first["Flags"]) == (b64("1"), 1)
    assert (first["CreateIndex"], first["ModifyIndex"], first["LockIndex"]) == (i1, i1, 0)
    assert third["Value"] == b64("3") and third["CreateIndex"] == i1 and third["ModifyIndex"] == i3
    assert third["Prev"]["Value"] == b64("1") and third["Prev"]["ModifyIndex"] == i1
    assert deleted["Prev"]["Value"] == b64("2") and deleted["Prev"]["ModifyIndex"] == i2
    one, _ = await changes(api, "app/a?index=0")  # one key: its changes only
    assert [c["Index"] for c in one] == [i1, i3]


async def test_changes_resume_from_the_answers_index(api: Api) -> None:
    await api.put("a", b"1")
    await api.put("a", b"2")
    got, index = await changes(api, "?recurse&index=0")
    assert len(got) == 2
    again, same = await changes(api, f"?recurse&index={index}&wait=50ms")  # nothing new
    assert again == [] and same == index
    written = await api.index_of("PUT", "/v1/kv/b", b"3")
    more, latest = await changes(api, f"?recurse&index={index}")
    assert [(c["Index"], c["Key"]) for c in more] == [(written, "b")] and latest == written


async def test_changes_block_until_a_change(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/a", b"1")
    read = asyncio.create_task(changes(api, f"a?index={index}&wait=10s"))
    await wait_for(lambda: len(api.server.kv.watchers) == 1)
    await api.put("b")
    written = await api.index_of("PUT", "/v1/kv/a", b"2")
    got, through = await read
    assert [c["Index"] for c in got] == [written] and through == written


async def test_changes_limit_keeps_whole_entries(api: Api) -> None:
    i1 = await api.index_of("PUT", "/v1/kv/a", b"1")
    status, headers, _ = await api.call("PUT", "/v1/txn", [kv("set", f"t{i}") for i in range(3)])
    i2 = int(headers["X-Consul-Index"])
    i3 = await api.index_of("PUT", "/v1/kv/z", b"1")
    got, index = await changes(api, "?recurse&index=0&limit=1")
    assert [c["Index"] for c in got] == [i1] and index == i1
    got, index = await changes(api, f"?recurse&index={index}&limit=1")
    assert [(c["Index"], c["Key"]) for c in got] == [(i2, "t0"), (i2, "t1"), (i2, "t2")]
    assert index == i2
    got, index = await changes(api, f"?recurse&index={index}&limit=1")
    assert [c["Index"] for c in got] == [i3] and index == i3


async def test_changes_without_an_index_answer_nothing_and_where_to_watch_from(api: Api
                                                                             ) -> None:
    written = await api.index_of("PUT", "/v1/kv/a", b"1")
    got, index = await changes(api, "?recurse")
    assert got == [] and index >= written
    await api.put("a", b"2")
    got, _ = await changes(api, f"?recurse&index={index}")
    assert [c["Value"] for c in got] == [b64("2")]


async def test_changes_older_than_the_history_are_410(tmp_path) -> None:
    server = await start(tmp_path, "small", kv_history=5)
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(server, http)
            indexes = [await api.index_of("PUT", f"/v1/kv/k{i}", b"v") for i in range(8)]
            status, headers, body = await api.call("GET", "/v1/changes/?recurse&index=0")
            assert status == 410 and b"compacted" in body
            floor = int(headers["X-Raftsql-Compact-Index"])
            assert indexes[0] <= floor < indexes[-1]
            got, through = await changes(api, f"?recurse&index={floor}")
            assert [c["Index"] for c in got] == [i for i in indexes if i > floor]
            assert len(got) <= 5 and through == indexes[-1]
            status, _, _ = await api.call("GET", f"/v1/changes/k7?index={floor - 1}")
            assert status == 410
    finally:
        await server.stop(transfer=False)


@pytest.mark.parametrize("path,message", BAD_PUTS)
async def test_a_bad_put_is_4xx_with_a_message_and_writes_nothing(api: Api, path: str,
                                                                  message: str) -> None:
    await api.put("before")
    before, rows = api.last_index(), await api.sql("SELECT * FROM raftsql_kv")
    status, _, body = await api.call("PUT", path, b"value")
    assert 400 <= status < 500 and message.lower() in body.decode().lower(), body
    assert len(body.strip().splitlines()) == 1
    assert api.last_index() == before and await api.sql("SELECT * FROM raftsql_kv") == rows


async def test_flags_take_63_bits(api: Api) -> None:
    assert await api.put("k", b"v", f"?flags={2**63 - 1}") is True
    assert (await api.entry("k"))["Flags"] == 2**63 - 1


async def test_a_key_of_512_bytes_is_fine(api: Api) -> None:
    key = "é" * 256  # 512 bytes of UTF-8
    assert await api.put(_quote(key), b"v") is True
    assert (await api.get("", "?keys")) == [key]
    status, _, _ = await api.call("PUT", "/v1/kv/" + _quote(key + "x"), b"v")
    assert status == 400


@pytest.mark.parametrize("path", ["/v1/kv/%FF", "/v1/kv/" + "k" * 513, "/v1/kv/k?index=x",
                                  "/v1/changes/%FF?index=0", "/v1/changes/k?index=-1",
                                  "/v1/changes/k?index=0&limit=x", "/v1/kv/?raw"])
async def test_a_bad_read_is_400(api: Api, path: str) -> None:
    status, _, body = await api.call("GET", path)
    assert status == 400 and body.strip(), body


@pytest.mark.parametrize("path", ["/v1/kv/", "/v1/kv/%FF", "/v1/kv/k?cas=x",
                                  "/v1/kv/k?cas=9223372036854775808",
                                  "/v1/kv/" + "k" * 513 + "?recurse"])
async def test_a_bad_delete_is_400_and_deletes_nothing(api: Api, path: str) -> None:
    await api.put("k")
    before = api.last_index()
    status, _, body = await api.call("DELETE", path)
    assert status == 400 and body.strip(), body
    assert api.last_index() == before and await api.entry("k") is not None


async def test_sql_reads_the_keys(api: Api) -> None:
    sid = await api.session(LockDelay="0s")
    i1 = await api.index_of("PUT", "/v1/kv/app/url?flags=3", b"postgres://db1")
    i2 = await api.index_of("PUT", f"/v1/kv/leader?acquire={sid}", b"web-1")
    result = await api.sql("SELECT key, CAST(value AS TEXT), flags, create_index, modify_index, "
                           "lock_index, session FROM raftsql_kv ORDER BY key")
    assert result["values"] == [["app/url", "postgres://db1", 3, i1, i1, 0, None],
                                ["leader", "web-1", 0, i2, i2, 1, sid]]


@pytest.mark.parametrize("sql", WRITES)
async def test_sql_may_not_write_the_keys(api: Api, sql: str) -> None:
    await api.put("k", b"v")
    await api.json("POST", "/db/execute", ["CREATE TABLE t (x)"])
    schema = await api.sql("SELECT name, sql FROM sqlite_master ORDER BY name")
    rows = await api.sql("SELECT * FROM raftsql_kv")
    out = await api.json("POST", "/db/execute", [sql])
    (result,) = out["results"]
    assert "only the KV API" in result.get("error", ""), out
    out = await api.json("POST", "/db/execute?transaction", ["INSERT INTO t VALUES (1)", sql])
    assert "only the KV API" in json.dumps(out)
    assert await api.sql("SELECT * FROM raftsql_kv") == rows
    assert await api.sql("SELECT name, sql FROM sqlite_master ORDER BY name") == schema
    assert (await api.sql("SELECT count(*) FROM t"))["values"] == [[0]]
    assert (await api.entry("k"))["Value"] == b64("v")


async def test_raftsql_kv_appears_only_once_a_key_is_written(api: Api) -> None:
    assert "raftsql_kv" not in await api.tables()
    status, _, _ = await api.call("GET", "/v1/kv/a")
    assert status == 404
    await api.json("POST", "/db/execute", ["CREATE TABLE t (x)"])
    assert await api.tables() == ["t"]
    await api.put("k")
    assert await api.tables() == ["raftsql_kv", "t"]


@pytest.mark.parametrize("method,path,body", [
    ("DELETE", "/v1/kv/missing", None),
    ("DELETE", "/v1/kv/?recurse", None),
    ("PUT", "/v1/kv/k?cas=5", b"v"),
    ("PUT", "/v1/txn", [kv("get-tree", "")]),
    ("PUT", "/v1/txn", [kv("check-not-exists", "k")]),
    ("PUT", "/v1/txn", [kv("set", "k"), kv("get", "missing")]),
    ("PUT", "/v1/session/create", {"Name": "s"}),
])
async def test_no_key_written_no_raftsql_kv(api: Api, method: str, path: str, body: Any
                                            ) -> None:
    status, _, answer = await api.call(method, path, body)
    assert status in (200, 409), answer
    assert await api.tables() == []


async def test_sessions_and_history_never_show_in_sql(api: Api) -> None:
    sid = await api.session(LockDelay="1s")
    await api.put("k", b"v", f"?acquire={sid}")
    await api.json("PUT", f"/v1/session/destroy/{sid}")
    await api.put("k", b"w")
    assert await api.tables() == ["raftsql_kv"]
    for table in ("kv_sessions", "kv_lock_delays", "kv_changes", "raftsql_kv_sessions"):
        (result,) = (await api.json("GET", "/db/query?q=" + _quote(f"SELECT * FROM {table}")
                                    ))["results"]
        assert "no such table" in result.get("error", ""), result
    listed = await api.sql("SELECT name FROM pragma_table_list ORDER BY name")
    assert "kv_sessions" not in json.dumps(listed) and "kv_changes" not in json.dumps(listed)

