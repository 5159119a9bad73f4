"""Consul's KV reads and writes (docs/config-store.md): GET with every parameter, blocking
queries, PUT and DELETE, each against Consul's documented semantics."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest

from tests.consul.helpers import (
    MAX_VALUE,
    Api,
    b64,
)
from tests.inprocess import start_servers, wait_for


async def test_get_answers_a_list_of_consul_entries(api: Api) -> None:
    _, headers, _ = await api.call("PUT", "/v1/kv/app/url?flags=7", b"postgres://db1")
    index = int(headers["X-Consul-Index"])
    status, headers, body = await api.call("GET", "/v1/kv/app/url")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == [{"Key": "app/url", "Flags": 7, "Value": b64("postgres://db1"),
                                 "CreateIndex": index, "ModifyIndex": index, "LockIndex": 0}]
    assert int(headers["X-Consul-Index"]) == index


async def test_get_gives_null_for_an_empty_value(api: Api) -> None:
    assert await api.put("empty", b"") is True
    (e,) = await api.get("empty")
    assert e["Value"] is None and "Session" not in e


async def test_get_shows_the_session_only_while_it_holds_the_key(api: Api) -> None:
    sid = await api.session(LockDelay="0s")
    assert await api.put("lock", b"me", f"?acquire={sid}") is True
    assert (await api.entry("lock"))["Session"] == sid
    assert await api.put("lock", b"me", f"?release={sid}") is True
    assert "Session" not in await api.entry("lock")


async def test_get_raw_answers_the_bytes(api: Api) -> None:
    value = bytes(range(256))
    assert await api.put("bin", value) is True
    status, headers, body = await api.call("GET", "/v1/kv/bin?raw")
    assert status == 200 and body == value
    assert "X-Consul-Index" in headers


async def test_get_recurse_answers_the_prefix_in_key_order(api: Api) -> None:
    for key in ("app/b", "apple", "app/a/deep", "app/a", "ap", "app/c"):
        assert await api.put(key, key) is True
    entries = await api.get("app/", "?recurse")
    assert [e["Key"] for e in entries] == ["app/a", "app/a/deep", "app/b", "app/c"]
    assert [base64.b64decode(e["Value"]).decode() for e in entries] == [
        "app/a", "app/a/deep", "app/b", "app/c"]
    everything = await api.get("", "?recurse")
    assert [e["Key"] for e in everything] == sorted(["app/b", "apple", "app/a/deep", "app/a",
                                                     "ap", "app/c"])


async def test_get_recurse_index_is_the_newest_change_under_the_prefix(api: Api) -> None:
    await api.put("app/a")
    written = await api.index_of("PUT", "/v1/kv/app/b", b"v")
    await api.put("other")  # outside the prefix: not counted
    assert await api.index_of("GET", "/v1/kv/app/?recurse") == written
    deleted = await api.index_of("DELETE", "/v1/kv/app/b")
    await api.put("other")
    assert deleted > written
    status, headers, body = await api.call("GET", "/v1/kv/app/?recurse")
    assert [e["Key"] for e in json.loads(body)] == ["app/a"]
    assert int(headers["X-Consul-Index"]) == deleted  # deletions count


async def test_get_keys_answers_the_keys_only(api: Api) -> None:
    for key in ("app/b", "app/a/x", "app/a/y", "app/c/d/e", "apple"):
        await api.put(key)
    assert await api.get("app/", "?keys") == ["app/a/x", "app/a/y", "app/b", "app/c/d/e"]
    assert await api.get("", "?keys") == ["app/a/x", "app/a/y", "app/b", "app/c/d/e", "apple"]


async def test_get_keys_with_a_separator_answers_one_level(api: Api) -> None:
    for key in ("app/b", "app/a/x", "app/a/y", "app/c/d/e", "apple"):
        await api.put(key)
    assert await api.get("app/", "?keys&separator=/") == ["app/a/", "app/b", "app/c/"]
    assert await api.get("", "?keys&separator=/") == ["app/", "apple"]


@pytest.mark.parametrize("query", ["", "?recurse", "?keys", "?raw"])
async def test_get_of_nothing_is_404_with_an_index(api: Api, query: str) -> None:
    await api.put("elsewhere")
    status, headers, body = await api.call("GET", "/v1/kv/missing/" + query)
    assert status == 404 and body == b""
    assert int(headers["X-Consul-Index"]) >= 1


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/kv/k"), ("GET", "/v1/kv/missing"), ("GET", "/v1/kv/?recurse"),
    ("PUT", "/v1/kv/k2"), ("GET", "/v1/session/list"), ("GET", "/v1/changes/k?index=0"),
])
async def test_answers_say_the_leader_is_known_and_its_last_contact(api: Api, method: str,
                                                                   path: str) -> None:
    await api.put("k")
    status, headers, _ = await api.call(method, path, b"v" if method == "PUT" else None)
    assert status in (200, 404)
    assert headers["X-Consul-KnownLeader"] == "true"
    assert headers["X-Consul-LastContact"] == "0"  # this node leads


@pytest.mark.parametrize("query", ["?stale", "?consistent", "?stale=", "?consistent=1"])
async def test_get_at_each_consistency_mode(api: Api, query: str) -> None:
    index = await api.index_of("PUT", "/v1/kv/k", b"v")
    status, headers, body = await api.call("GET", "/v1/kv/k" + query)
    assert status == 200 and json.loads(body)[0]["Value"] == b64("v")
    assert int(headers["X-Consul-Index"]) == index


async def test_get_stale_and_consistent_together_is_400(api: Api) -> None:
    await api.put("k")
    status, _, body = await api.call("GET", "/v1/kv/k?stale&consistent")
    assert status == 400 and b"conflicting" in body


async def test_a_follower_answers_stale_itself_and_forwards_the_rest(tmp_path) -> None:
    servers = await start_servers(tmp_path, 3, heartbeat_ms=20, election_ms=200)
    try:
        await wait_for(lambda: any(s.node.is_leader for s in servers))
        follower = next(s for s in servers if not s.node.is_leader)
        async with aiohttp.ClientSession() as http:
            api = Api(follower, http)
            written = await api.index_of("PUT", "/v1/kv/k", b"v")  # forwarded to the leader
            for query in ("", "?consistent"):
                status, headers, body = await api.call("GET", "/v1/kv/k" + query)
                assert status == 200 and json.loads(body)[0]["ModifyIndex"] == written
                assert headers["X-Consul-KnownLeader"] == "true"
            await wait_for(lambda: follower.node.applied_index >= written)
            status, headers, body = await api.call("GET", "/v1/kv/k?stale")
            assert status == 200 and json.loads(body)[0]["Value"] == b64("v")
            assert headers["X-Consul-KnownLeader"] == "true"
            assert int(headers["X-Consul-LastContact"]) >= 0  # ms since the leader was heard
    finally:
        for s in servers:
            await s.stop(transfer=False)


async def test_blocking_get_returns_when_the_key_changes(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/k", b"old")
    read = asyncio.create_task(api.call("GET", f"/v1/kv/k?index={index}&wait=10s"))
    await wait_for(lambda: len(api.server.kv.watchers) == 1)
    await api.put("other")
    written = await api.index_of("PUT", "/v1/kv/k", b"new")
    status, headers, body = await read
    assert status == 200 and json.loads(body)[0]["Value"] == b64("new")
    assert int(headers["X-Consul-Index"]) == written > index


async def test_blocking_get_returns_the_same_at_the_end_of_the_wait(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/k", b"v")
    _, _, before = await api.call("GET", "/v1/kv/k")
    status, headers, body = await api.call("GET", f"/v1/kv/k?index={index}&wait=100ms")
    assert status == 200 and body == before
    assert int(headers["X-Consul-Index"]) == index


async def test_blocking_get_of_a_missing_key_ignores_other_keys(api: Api, monkeypatch) -> None:
    _, headers, _ = await api.call("GET", "/v1/kv/missing")
    index = int(headers["X-Consul-Index"])
    kv, reads = api.server.kv, []
    get = kv.get

    async def counted(key: str, **kw: Any) -> Any:
        reads.append(key)
        return await get(key, **kw)

    monkeypatch.setattr(kv, "get", counted)
    read = asyncio.create_task(api.call("GET", f"/v1/kv/missing?index={index}&wait=300ms"))
    await wait_for(lambda: len(api.server.kv.watchers) == 1)
    for i in range(3):
        await api.put(f"unrelated/{i}")
        await api.put(f"missing-not/{i}")
    status, headers, _ = await read
    assert status == 404 and int(headers["X-Consul-Index"]) == index
    assert api.last_index() > index  # the store moved on; this key did not
    assert reads == ["missing", "missing"]  # read at the start and at the end: never woken


async def test_blocking_get_of_a_missing_key_is_woken_by_that_key(api: Api) -> None:
    _, headers, _ = await api.call("GET", "/v1/kv/missing")
    index = int(headers["X-Consul-Index"])
    read = asyncio.create_task(api.call("GET", f"/v1/kv/missing?index={index}&wait=10s"))
    await wait_for(lambda: len(api.server.kv.watchers) == 1)
    await api.put("unrelated")
    written = await api.index_of("PUT", "/v1/kv/missing", b"here")
    status, headers, body = await read
    assert status == 200 and json.loads(body)[0]["Value"] == b64("here")
    assert int(headers["X-Consul-Index"]) == written


async def test_blocking_recurse_is_woken_by_a_write_under_the_prefix(api: Api) -> None:
    await api.put("app/a")
    index = await api.index_of("GET", "/v1/kv/app/?recurse")
    read = asyncio.create_task(api.call("GET", f"/v1/kv/app/?recurse&index={index}&wait=10s"))
    await wait_for(lambda: len(api.server.kv.watchers) == 1)
    await api.put("apple")
    written = await api.index_of("PUT", "/v1/kv/app/b", b"v")
    status, headers, body = await read
    assert status == 200 and [e["Key"] for e in json.loads(body)] == ["app/a", "app/b"]
    assert int(headers["X-Consul-Index"]) == written


@pytest.mark.parametrize("wait", ["50ms", "0.05s", "1", "1s", "1m"])
async def test_wait_takes_durations_and_seconds(api: Api, wait: str) -> None:
    index = await api.index_of("PUT", "/v1/kv/k", b"v")
    read = asyncio.create_task(api.call("GET", f"/v1/kv/k?index={index}&wait={wait}"))
    await asyncio.sleep(0)
    if wait not in ("50ms", "0.05s"):  # woken by a write, not to wait a second
        await wait_for(lambda: len(api.server.kv.watchers) == 1)
        await api.put("k", b"w")
    status, _, _ = await read
    assert status == 200


@pytest.mark.parametrize("query", ["index=1&wait=abc", "index=1&wait=-1s", "index=1&wait=10x",
                                   "index=1&wait=1.5.2s", "index=x&wait=1s", "index=-1"])
async def test_a_bad_wait_or_index_is_400(api: Api, query: str) -> None:
    await api.put("k")
    status, _, body = await api.call("GET", f"/v1/kv/k?{query}")
    assert status == 400 and body.strip()


async def test_put_stores_the_body_exactly(api: Api) -> None:
    value = bytes(range(256)) * 3 + b"\x00\r\n"
    assert await api.put("bin", value) is True
    _, _, body = await api.call("GET", "/v1/kv/bin?raw")
    assert body == value
    assert base64.b64decode((await api.entry("bin"))["Value"]) == value
    rows = await api.sql("SELECT hex(value) FROM raftsql_kv WHERE key = 'bin'")
    assert rows["values"] == [[value.hex().upper()]]


async def test_put_flags_are_kept(api: Api) -> None:
    assert await api.put("k", b"v", "?flags=42") is True
    assert (await api.entry("k"))["Flags"] == 42
    assert await api.put("k", b"w") is True  # a PUT without flags sets them to 0, as Consul
    assert (await api.entry("k"))["Flags"] == 0


async def test_put_cas_0_only_creates(api: Api) -> None:
    assert await api.put("k", b"first", "?cas=0") is True
    assert await api.put("k", b"second", "?cas=0") is False
    assert (await api.entry("k"))["Value"] == b64("first")


async def test_put_cas_n_writes_only_at_that_index(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/k", b"v1")
    assert await api.put("k", b"v2", f"?cas={index + 100}") is False
    assert await api.put("k", b"v2", f"?cas={index - 1}") is False
    assert (await api.entry("k"))["ModifyIndex"] == index
    assert await api.put("k", b"v2", f"?cas={index}") is True
    e = await api.entry("k")
    assert e["Value"] == b64("v2") and e["ModifyIndex"] > index == e["CreateIndex"]
    assert await api.put("k", b"v3", f"?cas={index}") is False  # stale now


async def test_put_acquire_and_release_count_lock_index(api: Api) -> None:
    s1, s2 = await api.session(LockDelay="0s"), await api.session(LockDelay="0s")
    assert await api.put("lock", b"one", f"?acquire={s1}") is True
    e = await api.entry("lock")
    assert (e["LockIndex"], e["Session"], e["Value"]) == (1, s1, b64("one"))
    assert await api.put("lock", b"again", f"?acquire={s1}") is True  # held: only the value
    e = await api.entry("lock")
    assert (e["LockIndex"], e["Session"], e["Value"]) == (1, s1, b64("again"))
    assert await api.put("lock", b"two", f"?acquire={s2}") is False  # held by another
    assert await api.put("lock", b"two", f"?release={s2}") is False  # not the holder
    assert await api.entry("lock") == e
    assert await api.put("lock", b"free", f"?release={s1}") is True
    e = await api.entry("lock")
    assert (e["LockIndex"], e.get("Session"), e["Value"]) == (1, None, b64("free"))
    assert await api.put("lock", b"free", f"?release={s1}") is False  # not held any more
    assert await api.put("lock", b"two", f"?acquire={s2}") is True
    e = await api.entry("lock")
    assert (e["LockIndex"], e["Session"], e["Value"]) == (2, s2, b64("two"))


async def test_put_acquire_waits_out_the_lock_delay_of_an_ended_session(api: Api) -> None:
    s1 = await api.session(LockDelay="1s")
    s2 = await api.session(LockDelay="0s")
    assert await api.put("lock", b"one", f"?acquire={s1}") is True
    assert await api.json("PUT", f"/v1/session/destroy/{s1}") is True
    assert "Session" not in await api.entry("lock")
    assert await api.put("lock", b"two", f"?acquire={s2}") is False  # within s1's delay
    assert (await api.entry("lock"))["Value"] == b64("one")
    acquired: list[bool] = []

    async def acquire() -> bool:
        acquired.append(await api.put("lock", b"two", f"?acquire={s2}"))
        return acquired[-1]

    async def eventually() -> None:
        while not await acquire():
            await asyncio.sleep(0.1)

    await asyncio.wait_for(eventually(), 10)
    e = await api.entry("lock")
    assert (e["Session"], e["LockIndex"], e["Value"]) == (s2, 2, b64("two"))


async def test_put_of_a_value_over_the_limit_is_413_and_writes_nothing(api: Api) -> None:
    assert await api.put("max", b"x" * MAX_VALUE) is True
    before = api.last_index()
    status, _, body = await api.call("PUT", "/v1/kv/big", b"x" * (MAX_VALUE + 1))
    assert status == 413 and b"too large" in body
    assert await api.entry("big") is None and api.last_index() == before
    status, _, _ = await api.call("PUT", "/v1/kv/max", b"y" * (MAX_VALUE * 4))
    assert status == 413 and (await api.entry("max"))["Value"] == b64(b"x" * MAX_VALUE)


async def test_delete_removes_the_key(api: Api) -> None:
    await api.put("k")
    await api.put("k/child")
    assert await api.json("DELETE", "/v1/kv/k") is True
    assert await api.entry("k") is None and await api.entry("k/child") is not None
    assert await api.json("DELETE", "/v1/kv/k") is True  # nothing there: still true


async def test_delete_recurse_removes_the_prefix(api: Api) -> None:
    for key in ("app/a", "app/b/c", "apple", "ap"):
        await api.put(key)
    assert await api.json("DELETE", "/v1/kv/app/?recurse") is True
    assert await api.get("", "?keys") == ["ap", "apple"]
    assert await api.json("DELETE", "/v1/kv/?recurse") is True  # an empty prefix: everything
    status, _, _ = await api.call("GET", "/v1/kv/?recurse")
    assert status == 404


async def test_delete_cas_deletes_only_at_that_index(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/k", b"v")
    assert await api.json("DELETE", f"/v1/kv/k?cas={index + 1}") is False
    assert await api.entry("k") is not None
    assert await api.json("DELETE", f"/v1/kv/k?cas={index}") is True
    assert await api.entry("k") is None
    assert await api.json("DELETE", f"/v1/kv/k?cas={index}") is False  # gone


async def test_delete_cas_0_never_deletes(api: Api) -> None:
    await api.put("k")
    assert await api.json("DELETE", "/v1/kv/k?cas=0") is False
    assert await api.entry("k") is not None
    assert await api.json("DELETE", "/v1/kv/missing?cas=0") is False

