"""Consul's config store API (docs/config-store.md) against a running one-node server.

One test per query parameter and verb, each against Consul's documented semantics; every
refused request is checked to have written nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
import yarl

from raftsql.cli.launcher import free_ports
from raftsql.server import KvLimits, NodeConfig, Server, ServerConfig
from tests.inprocess import start_servers, wait_for

MAX_VALUE = 1024
MAX_OPS = 8


class Api:
    """A client of one running server: `call` answers (status, headers, body bytes)."""

    def __init__(self, server: Server, session: aiohttp.ClientSession):
        self.server = server
        self.http = session
        self.url = server.config.node.api_url

    async def call(self, method: str, path: str, body: bytes | str | Any = None,
                   ) -> tuple[int, Any, bytes]:
        headers = {}
        if body is not None and not isinstance(body, (bytes, str)):
            body, headers = json.dumps(body), {"Content-Type": "application/json"}
        url = yarl.URL(self.url + path, encoded=True)  # sent as written: bad bytes too
        async with self.http.request(method, url, data=body, headers=headers) as resp:
            return resp.status, resp.headers, await resp.read()

    async def json(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, _, data = await self.call(method, path, body)
        assert got == status, data
        return json.loads(data)

    async def put(self, key: str, value: bytes | str = b"v", query: str = "") -> Any:
        return await self.json("PUT", f"/v1/kv/{key}{query}", value)

    async def get(self, key: str, query: str = "") -> Any:
        return await self.json("GET", f"/v1/kv/{key}{query}")

    async def entry(self, key: str) -> dict[str, Any] | None:
        status, _, data = await self.call("GET", f"/v1/kv/{key}")
        if status == 404:
            return None
        assert status == 200, data
        (e,) = json.loads(data)
        return e

    async def sql(self, query: str) -> dict[str, Any]:
        (result,) = (await self.json("GET", "/db/query?q=" + _quote(query)))["results"]
        return result

    async def session(self, **fields: Any) -> str:
        return (await self.json("PUT", "/v1/session/create", fields))["ID"]

    async def index_of(self, method: str, path: str, body: Any = None) -> int:
        """X-Consul-Index of the answer."""
        _, headers, _ = await self.call(method, path, body)
        return int(headers["X-Consul-Index"])

    def last_index(self) -> int:
        """The node's last log index: what was proposed, refused requests included."""
        return self.server.node.status()["raft"]["last_log_index"]

    async def tables(self) -> list[str]:
        rows = (await self.sql("SELECT name FROM sqlite_master WHERE type = 'table' "
                               "ORDER BY name")).get("values")
        return [r[0] for r in rows or []]


def _quote(text: str) -> str:
    from urllib.parse import quote
    return quote(text, safe="")


def b64(value: bytes | str) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


async def start(tmp_path, name: str = "n1", **config: Any) -> Server:
    (port,) = free_ports(1)
    server = Server(ServerConfig(
        NodeConfig(node_id="n1", data_dir=str(tmp_path / name), http_addr=f"127.0.0.1:{port}",
                   heartbeat_ms=20, election_ms=200),
        kv_limits=KvLimits(max_value_bytes=MAX_VALUE, max_txn_ops=MAX_OPS), **config))
    await server.start()
    await wait_for(lambda: server.node.is_leader)
    return server


@pytest.fixture
async def api(tmp_path):
    server = await start(tmp_path)
    async with aiohttp.ClientSession() as http:
        yield Api(server, http)
    await server.stop(transfer=False)



# ---- GET /v1/kv/<key> -----------------------------------------------------------------


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


# ---- blocking queries ------------------------------------------------------------------


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


# ---- PUT /v1/kv/<key> -----------------------------------------------------------------


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


# ---- DELETE /v1/kv/<key> ----------------------------------------------------------------


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


# ---- PUT /v1/txn ----------------------------------------------------------------------


def kv(verb: str, key: str, **fields: Any) -> dict[str, Any]:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


async def txn(api: Api, ops: list[Any], status: int = 200) -> Any:
    return await api.json("PUT", "/v1/txn", ops, status)


async def test_txn_set(api: Api) -> None:
    out = await txn(api, [kv("set", "a", Value=b64("1"), Flags=3), kv("set", "b", Value=b64("2"))])
    assert out["Errors"] is None
    (ra, rb) = [r["KV"] for r in out["Results"]]
    assert ra["Key"] == "a" and ra["Flags"] == 3 and ra["Value"] is None  # no values, as Consul
    assert ra["ModifyIndex"] == rb["ModifyIndex"]  # one entry
    assert (await api.entry("a"))["Value"] == b64("1")
    assert (await api.entry("b"))["Value"] == b64("2")


async def test_txn_cas(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/a", b"old")
    out = await txn(api, [kv("cas", "a", Index=index, Value=b64("new")),
                          kv("cas", "fresh", Index=0, Value=b64("made"))])
    assert [r["KV"]["Key"] for r in out["Results"]] == ["a", "fresh"]
    assert (await api.entry("a"))["Value"] == b64("new")
    assert (await api.entry("fresh"))["Value"] == b64("made")


async def test_txn_lock_and_unlock(api: Api) -> None:
    sid = await api.session(LockDelay="0s")
    out = await txn(api, [kv("lock", "l", Session=sid, Value=b64("held"))])
    assert out["Results"][0]["KV"]["LockIndex"] == 1
    e = await api.entry("l")
    assert (e["Session"], e["LockIndex"], e["Value"]) == (sid, 1, b64("held"))
    out = await txn(api, [kv("unlock", "l", Session=sid, Value=b64("free"))])
    assert "Session" not in out["Results"][0]["KV"]
    e = await api.entry("l")
    assert (e.get("Session"), e["LockIndex"], e["Value"]) == (None, 1, b64("free"))


async def test_txn_get_and_get_tree_answer_values(api: Api) -> None:
    for key in ("app/a", "app/b", "apple"):
        await api.put(key, key)
    out = await txn(api, [kv("get", "apple"), kv("get-tree", "app/")])
    assert [(r["KV"]["Key"], r["KV"]["Value"]) for r in out["Results"]] == [
        ("apple", b64("apple")), ("app/a", b64("app/a")), ("app/b", b64("app/b"))]


async def test_txn_check_index(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/a", b"v")
    out = await txn(api, [kv("check-index", "a", Index=index), kv("set", "b", Value=b64("x"))])
    assert out["Results"][0]["KV"]["ModifyIndex"] == index
    assert await api.entry("b") is not None


async def test_txn_check_session(api: Api) -> None:
    sid = await api.session(LockDelay="0s")
    await api.put("l", b"v", f"?acquire={sid}")
    out = await txn(api, [kv("check-session", "l", Session=sid), kv("set", "b")])
    assert out["Results"][0]["KV"]["Session"] == sid
    assert await api.entry("b") is not None


async def test_txn_check_not_exists(api: Api) -> None:
    out = await txn(api, [kv("check-not-exists", "nothing"), kv("set", "b")])
    assert out["Errors"] is None and [r["KV"]["Key"] for r in out["Results"]] == ["b"]


async def test_txn_delete(api: Api) -> None:
    await api.put("a")
    out = await txn(api, [kv("delete", "a"), kv("delete", "never")])
    assert out == {"Results": [], "Errors": None}
    assert await api.entry("a") is None


async def test_txn_delete_tree(api: Api) -> None:
    for key in ("app/a", "app/b/c", "apple"):
        await api.put(key)
    await txn(api, [kv("delete-tree", "app/")])
    assert await api.get("", "?keys") == ["apple"]


async def test_txn_delete_cas(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/a", b"v")
    await txn(api, [kv("delete-cas", "a", Index=index)])
    assert await api.entry("a") is None


ROLLBACKS = [
    (kv("cas", "a", Index=1, Value=b64("x")), "index is stale"),
    (kv("check-index", "a", Index=1), "modify index"),
    (kv("check-not-exists", "a"), "exists"),
    (kv("check-index", "missing", Index=1), "doesn't exist"),
    (kv("delete-cas", "a", Index=1), "index is stale"),
    (kv("get", "missing"), "doesn't exist"),
]


@pytest.mark.parametrize("failing,what", ROLLBACKS)
async def test_txn_rolls_back_at_the_first_failure(api: Api, failing: dict, what: str) -> None:
    await api.put("a", b"before")
    before = await api.get("", "?recurse")
    status, _, body = await api.call("PUT", "/v1/txn", [
        kv("set", "a", Value=b64("changed")), kv("set", "new", Value=b64("x")), failing,
        kv("set", "after", Value=b64("y"))])
    assert status == 409
    out = json.loads(body)
    assert out["Results"] is None
    (error,) = out["Errors"]
    assert error["OpIndex"] == 2 and what in error["What"]
    assert await api.get("", "?recurse") == before


async def test_txn_lock_held_by_another_rolls_back(api: Api) -> None:
    s1, s2 = await api.session(LockDelay="0s"), await api.session(LockDelay="0s")
    await api.put("l", b"v", f"?acquire={s1}")
    before = await api.get("", "?recurse")
    out = await txn(api, [kv("set", "x"), kv("lock", "l", Session=s2)], status=409)
    assert out["Errors"][0]["OpIndex"] == 1 and "held" in out["Errors"][0]["What"]
    out = await txn(api, [kv("set", "x"), kv("check-session", "l", Session=s2)], status=409)
    assert out["Errors"][0]["OpIndex"] == 1
    assert await api.get("", "?recurse") == before


async def test_txn_over_the_op_limit_is_413_and_proposes_nothing(api: Api) -> None:
    out = await txn(api, [kv("set", f"k{i}") for i in range(MAX_OPS)])
    assert len(out["Results"]) == MAX_OPS
    before = api.last_index()
    status, _, body = await api.call("PUT", "/v1/txn", [kv("set", f"x{i}")
                                                        for i in range(MAX_OPS + 1)])
    assert status == 413 and b"too many operations" in body
    assert api.last_index() == before and await api.entry("x0") is None


@pytest.mark.parametrize("body", [
    b"", b"not json", b"{}", b'{"KV": {"Verb": "set", "Key": "a"}}', b"[1]", b'["set"]',
    b'[{"KV": {"Verb": "frob", "Key": "a"}}]', b'[{"KV": {"Key": "a"}}]',
    b'[{"Node": {"Verb": "set", "Node": {"Node": "n1"}}}]',
    b'[{"Service": {"Verb": "get", "Node": "n1"}}]',
    b'[{"KV": {"Verb": "set", "Key": "a"}, "Check": {}}]',
    b'[{"KV": {"Verb": "set", "Key": ""}}]',
    b'[{"KV": {"Verb": "set", "Key": "a", "Value": "%%%"}}]',
    b'[{"KV": {"Verb": "set", "Key": "a", "Flags": -1}}]',
    b'[{"KV": {"Verb": "cas", "Key": "a", "Index": "3"}}]',
    b'[{"KV": {"Verb": "lock", "Key": "a"}}]',
    b'[{"KV": {"Verb": "set", "Key": "ok"}}, {"KV": {"Verb": "nope", "Key": "a"}}]',
])
async def test_txn_bad_body_is_400_and_proposes_nothing(api: Api, body: bytes) -> None:
    await api.put("a")
    before = api.last_index()
    status, _, answer = await api.call("PUT", "/v1/txn", body)
    assert status == 400 and answer.strip(), answer
    assert api.last_index() == before and await api.entry("ok") is None


async def test_txn_field_names_are_matched_without_regard_to_case(api: Api) -> None:
    out = await txn(api, [{"kv": {"verb": "set", "key": "a", "value": b64("v"), "flags": 2}}])
    assert out["Results"][0]["KV"]["Flags"] == 2
    assert (await api.entry("a"))["Value"] == b64("v")


# ---- /v1/session -----------------------------------------------------------------------


async def info(api: Api, sid: str) -> list[dict[str, Any]]:
    return await api.json("GET", f"/v1/session/info/{sid}")


async def test_session_create_keeps_its_fields(api: Api) -> None:
    status, headers, body = await api.call("PUT", "/v1/session/create", {
        "Name": "web-leader", "TTL": "15s", "Behavior": "delete", "LockDelay": "2s"})
    assert status == 200
    sid = json.loads(body)["ID"]
    (s,) = await info(api, sid)
    assert (s["ID"], s["Name"], s["TTL"], s["Behavior"], s["LockDelay"], s["Node"]) == (
        sid, "web-leader", "15s", "delete", 2_000_000_000, "n1")
    assert s["CreateIndex"] == int(headers["X-Consul-Index"])


async def test_session_create_defaults(api: Api) -> None:
    status, _, body = await api.call("PUT", "/v1/session/create", b"")
    assert status == 200
    (s,) = await info(api, json.loads(body)["ID"])
    assert (s["Name"], s["TTL"], s["Behavior"], s["LockDelay"], s["NodeChecks"]) == (
        "", "", "release", 15_000_000_000, ["serfHealth"])


@pytest.mark.parametrize("ttl,ok", [("10s", True), ("86400s", True), ("24h", True),
                                    ("1m30s", True), ("9s", False), ("9999ms", False),
                                    ("86401s", False), ("25h", False), ("soon", False),
                                    ("-10s", False)])
async def test_session_ttl_is_10s_to_24h(api: Api, ttl: str, ok: bool) -> None:
    before = api.last_index()
    status, _, body = await api.call("PUT", "/v1/session/create", {"TTL": ttl})
    if ok:
        assert status == 200
        (s,) = await info(api, json.loads(body)["ID"])
        assert s["TTL"] != ""
    else:
        assert status == 400 and body.strip(), body
        assert api.last_index() == before
        assert await api.json("GET", "/v1/session/list") == []


@pytest.mark.parametrize("behavior,ok", [("release", True), ("delete", True), ("", True),
                                         ("destroy", False), ("Release!", False)])
async def test_session_behavior(api: Api, behavior: str, ok: bool) -> None:
    status, _, body = await api.call("PUT", "/v1/session/create", {"Behavior": behavior})
    assert status == (200 if ok else 400), body
    if ok:
        (s,) = await info(api, json.loads(body)["ID"])
        assert s["Behavior"] == (behavior or "release")
    else:
        assert await api.json("GET", "/v1/session/list") == []


@pytest.mark.parametrize("delay,ns", [("1s", 10**9), ("250ms", 250 * 10**6), (5, 5 * 10**9),
                                      (0, 0), ("0s", 0), (2_000_000_000, 2 * 10**9)])
async def test_session_lock_delay(api: Api, delay: Any, ns: int) -> None:
    (s,) = await info(api, await api.session(LockDelay=delay))
    assert s["LockDelay"] == ns


async def test_session_fields_are_matched_without_regard_to_case(api: Api) -> None:
    sid = await api.session(name="x", ttl="20s", behavior="delete", lockdelay="1s", NODE="n1")
    (s,) = await info(api, sid)
    assert (s["Name"], s["TTL"], s["Behavior"], s["LockDelay"]) == ("x", "20s", "delete", 10**9)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"Name": 3}',
                                  b'{"Checks": ["service:web"]}', b'{"LockDelay": "x"}',
                                  b'{"LockDelay": -1}'])
async def test_session_create_with_a_bad_body_is_400(api: Api, body: bytes) -> None:
    before = api.last_index()
    status, _, answer = await api.call("PUT", "/v1/session/create", body)
    assert status == 400 and answer.strip()
    assert api.last_index() == before


async def test_session_renew(api: Api) -> None:
    sid = await api.session(TTL="30s")
    (s,) = await api.json("PUT", f"/v1/session/renew/{sid}")
    assert s["ID"] == sid and s["TTL"] == "30s"
    status, _, body = await api.call("PUT", "/v1/session/renew/no-such-session")
    assert status == 404 and b"not found" in body


async def test_session_destroy(api: Api) -> None:
    sid = await api.session()
    assert await api.json("PUT", f"/v1/session/destroy/{sid}") is True
    assert await info(api, sid) == []
    assert await api.json("GET", "/v1/session/list") == []
    status, _, _ = await api.call("PUT", f"/v1/session/renew/{sid}")
    assert status == 404


async def test_session_info_of_an_unknown_session_is_empty(api: Api) -> None:
    status, headers, body = await api.call("GET", "/v1/session/info/no-such-session")
    assert status == 200 and json.loads(body) == [] and "X-Consul-Index" in headers


async def test_session_list(api: Api) -> None:
    assert await api.json("GET", "/v1/session/list") == []
    a, b = await api.session(Name="a"), await api.session(Name="b")
    listed = await api.json("GET", "/v1/session/list")
    assert sorted((s["ID"], s["Name"]) for s in listed) == sorted([(a, "a"), (b, "b")])


async def test_session_node(api: Api) -> None:
    a = await api.session(Name="a")
    b = await api.session(Name="b", Node="elsewhere")
    assert [s["ID"] for s in await api.json("GET", "/v1/session/node/n1")] == [a]
    assert [s["ID"] for s in await api.json("GET", "/v1/session/node/elsewhere")] == [b]
    assert await api.json("GET", "/v1/session/node/nobody") == []


@pytest.mark.parametrize("verb", ["acquire", "release"])
async def test_an_unknown_session_in_acquire_or_release_is_refused(api: Api, verb: str) -> None:
    await api.put("k", b"before")
    status, _, body = await api.call("PUT", f"/v1/kv/k?{verb}=no-such-session", b"after")
    assert (status == 200 and json.loads(body) is False) or (400 <= status < 500 and body)
    e = await api.entry("k")
    assert e["Value"] == b64("before") and "Session" not in e
    status, _, body = await api.call("PUT", f"/v1/kv/fresh?{verb}=no-such-session", b"x")
    assert await api.entry("fresh") is None


async def test_a_destroyed_session_cannot_acquire(api: Api) -> None:
    sid = await api.session()
    await api.json("PUT", f"/v1/session/destroy/{sid}")
    status, _, body = await api.call("PUT", f"/v1/kv/k?acquire={sid}", b"x")
    assert (status == 200 and json.loads(body) is False) or (400 <= status < 500 and body)
    assert await api.entry("k") is None


async def test_behavior_delete_deletes_the_held_keys(api: Api) -> None:
    sid = await api.session(Behavior="delete", LockDelay="0s")
    for key in ("a", "b"):
        assert await api.put(key, b"v", f"?acquire={sid}") is True
    await api.put("c")
    await api.json("PUT", f"/v1/session/destroy/{sid}")
    assert await api.get("", "?keys") == ["c"]


async def test_behavior_release_releases_the_held_keys(api: Api) -> None:
    sid = await api.session(LockDelay="0s")
    assert await api.put("a", b"v", f"?acquire={sid}") is True
    before = await api.entry("a")
    index = await api.index_of("PUT", f"/v1/session/destroy/{sid}")
    e = await api.entry("a")
    assert "Session" not in e and e["Value"] == b64("v")
    assert e["LockIndex"] == before["LockIndex"] and e["ModifyIndex"] == index


# ---- GET /v1/changes/<key> -------------------------------------------------------------


async def changes(api: Api, query: str) -> tuple[list[dict[str, Any]], int]:
    status, headers, body = await api.call("GET", "/v1/changes/" + query)
    assert status == 200, body
    return json.loads(body), int(headers["X-Consul-Index"])


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


# ---- bad input ------------------------------------------------------------------------

BAD_PUTS = [
    ("/v1/kv/", "missing key name"),
    ("/v1/kv/" + "k" * 513, "too long"),
    ("/v1/kv/%FF%FEkey", "UTF-8"),
    ("/v1/kv/ok%C3", "UTF-8"),
    ("/v1/kv/ok?flags=abc", "flags"),
    ("/v1/kv/ok?flags=-1", "flags"),
    ("/v1/kv/ok?flags=18446744073709551616", "flags"),
    ("/v1/kv/ok?flags=9223372036854775808", "flags"),  # SQLite's INTEGER: 63 bits, not 64
    ("/v1/kv/ok?cas=9223372036854775808", "cas"),
    ("/v1/kv/ok?cas=x", "cas"),
    ("/v1/kv/ok?cas=-1", "cas"),
    ("/v1/kv/ok?cas=1.5", "cas"),
    ("/v1/kv/ok?acquire=", "session"),
    ("/v1/kv/ok?cas=0&acquire=s", "Conflicting"),
]


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


# ---- the keys are SQL -----------------------------------------------------------------


async def test_sql_reads_the_keys(api: Api) -> None:
    sid = await api.session(LockDelay="0s")
    i1 = await api.index_of("PUT", "/v1/kv/app/url?flags=3", b"postgres://db1")
    i2 = await api.index_of("PUT", f"/v1/kv/leader?acquire={sid}", b"web-1")
    result = await api.sql("SELECT key, CAST(value AS TEXT), flags, create_index, modify_index, "
                           "lock_index, session FROM raftsql_kv ORDER BY key")
    assert result["values"] == [["app/url", "postgres://db1", 3, i1, i1, 0, None],
                                ["leader", "web-1", 0, i2, i2, 1, sid]]


WRITES = [
    "INSERT INTO raftsql_kv(key, value) VALUES ('x', 'y')",
    "INSERT OR REPLACE INTO raftsql_kv(key, value) VALUES ('k', 'y')",
    "UPDATE raftsql_kv SET value = 'hacked'",
    "DELETE FROM raftsql_kv",
    "DROP TABLE raftsql_kv",
    "ALTER TABLE raftsql_kv ADD COLUMN extra",
    "ALTER TABLE raftsql_kv RENAME TO mine",
    "CREATE INDEX kv_value ON raftsql_kv(value)",
    "CREATE TRIGGER kv_t AFTER INSERT ON raftsql_kv BEGIN SELECT 1; END",
    "CREATE TEMP TRIGGER kv_tt AFTER UPDATE ON raftsql_kv BEGIN SELECT 1; END",
    "WITH x AS (SELECT 1) DELETE FROM raftsql_kv",
]


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
